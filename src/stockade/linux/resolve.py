"""Find the program to run, and what of it must be visible in the sandbox.

A command such as ``python3`` is looked up the way the sandbox will look it
up: in the sandbox's PATH, among directories the mount view shows. An
interpreter that lives elsewhere (a pyenv or conda Python, a virtual
environment made from one, a tool in ``~/.local``) is made visible
read-only: its installation's ``bin``, ``lib``, ``lib64``, ``libexec`` and a
virtual environment's ``pyvenv.cfg`` and base interpreter; a program outside
any such layout is made visible alone, as a single file, never the
directory it sits in. Shebang scripts are followed to their interpreter.

A command that is a symbolic link (``~/.local/bin/tool -> ...``, a chain of
them) is followed hop by hop, as the kernel does: each link the mount view
does not show is recreated in the sandbox (bubblewrap's ``--symlink``) with
the next hop as its target, written as an absolute path whose directories
are resolved; the file at the end is exposed as above. The links are read
once, here: what the sandbox gets is the text read now, and the file at the
end is bound through a descriptor whose identity the launcher checks
(docs/filesystem.md, "Paths are resolved once"). Running the link rather
than its target keeps ``argv[0]``, which a virtual environment's Python and
multi-call programs depend on.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ..errors import CommandError

_INSTALL_PARTS = ("bin", "sbin", "lib", "lib64", "libexec", "pyvenv.cfg")
_MAX_DEPTH = 6
# symbolic links the kernel follows in one path walk (MAXSYMLINKS)
_MAX_LINKS = 40
# a pyvenv.cfg is a few lines
_MAX_CFG_BYTES = 64 * 1024


@dataclass
class Resolution:
    """Where the program is and what must be mounted read-only to run it."""

    path: str                                   # absolute path to exec
    read_only: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # (link, target): symbolic links to recreate in the mount view, in the
    # order they are met; target is absolute, its directories resolved
    links: list[tuple[str, str]] = field(default_factory=list)

    def add(self, path: str, why: str) -> None:
        if path not in self.read_only:
            self.read_only.append(path)
            self.notes.append(f"{path} visible read-only: {why}")

    def link(self, path: str, target: str) -> None:
        if all(path != known for known, _ in self.links):
            self.links.append((path, target))


def resolve_command(
    argv: Sequence[str],
    *,
    cwd: str,
    search_path: str,
    visible: Callable[[str], bool],
) -> Resolution:
    """Resolve ``argv[0]`` and the installations it needs.

    Args:
        argv: the command.
        cwd: directory a relative command is resolved against (host view;
            paths are the same inside the sandbox).
        search_path: the PATH the program will see.
        visible: whether a host path is shown by the mount view as it is.

    Raises:
        CommandError: empty command, not found, not executable, or a pyenv
            shim (which needs pyenv itself to work); the same for the
            interpreter a ``#!`` line names (a relative one is resolved
            against ``cwd``, as the kernel does).
    """
    if not argv or not argv[0]:
        raise CommandError("empty command: nothing to run", command=list(argv))
    name = argv[0]
    path = _locate(name, cwd=cwd, search_path=search_path, visible=visible, argv=argv)
    result = Resolution(path=path)
    _expose(path, result, visible=visible, search_path=search_path, cwd=cwd, depth=0)
    return result


def _locate(
    name: str,
    *,
    cwd: str,
    search_path: str,
    visible: Callable[[str], bool],
    argv: Sequence[str],
) -> str:
    if "/" in name:
        path = os.path.normpath(os.path.join(cwd, name))
        _check_executable(path, name, argv)
        return path

    dirs = [d for d in search_path.split(os.pathsep) if d and os.path.isabs(d)]
    # The sandbox's own lookup order first: only what it can see.
    for directory in dirs:
        if visible(directory):
            candidate = os.path.join(directory, name)
            if _is_executable_file(candidate):
                return candidate
    for directory in dirs:
        candidate = os.path.join(directory, name)
        if _is_executable_file(candidate):
            return candidate
    raise CommandError(
        f"command not found: {name!r} is in none of the PATH directories "
        f"({search_path or 'empty PATH'})",
        command=list(argv),
        reason="not_found",
    )


def _check_executable(path: str, name: str, argv: Sequence[str]) -> None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise CommandError(
            f"command not found: {path} does not exist", command=list(argv), reason="not_found"
        ) from None
    except OSError as err:
        raise CommandError(
            f"cannot use {path}: {err.strerror}", command=list(argv), reason="not_executable"
        ) from None
    if not stat.S_ISREG(st.st_mode):
        # the kernel execs regular files only (EACCES): as a shell, 126
        raise CommandError(
            f"{path} is not a regular file", command=list(argv), reason="not_executable"
        )
    if not st.st_mode & 0o111:
        raise CommandError(
            f"{path} is not executable (mode {stat.filemode(st.st_mode)}); "
            f"run it through its interpreter or chmod +x it",
            command=list(argv),
            reason="not_executable",
        )


def _is_executable_file(path: str) -> bool:
    try:
        st = os.stat(path)
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and bool(st.st_mode & 0o111)


def _expose(
    path: str,
    result: Resolution,
    *,
    visible: Callable[[str], bool],
    search_path: str,
    cwd: str,
    depth: int,
) -> None:
    if depth > _MAX_DEPTH:
        return
    if "/.pyenv/shims/" in path:
        raise CommandError(
            f"{path} is a pyenv shim, which needs pyenv itself to pick a Python. "
            f"Give the interpreter's real path instead (`pyenv which "
            f"{os.path.basename(path)}`)",
            command=[path],
        )

    hops = _link_chain(path)
    for index, hop in enumerate(hops):
        if visible(hop):
            continue
        if os.path.dirname(hop) == os.path.realpath(os.path.dirname(hop)):
            # an installation is bound at its resolved path: it shows this
            # hop only when no link leads to the hop's directory
            _expose_installation(hop, result, visible)
            if _covered(hop, result):
                continue
        if index + 1 < len(hops):
            # a link (or a path through a linked directory): recreated, not
            # bound, so that its directory stays out of the mount view
            result.link(hop, hops[index + 1])
        else:
            # only the program itself, never the directory it sits in
            # (that may be /tmp with the host's sockets, or Downloads)
            result.add(hop, "the program itself")

    real = hops[-1]
    interpreter = _shebang(real)
    if interpreter is None:
        return
    first = interpreter[0]
    line = f"'#!{' '.join(interpreter)}'"
    if os.path.basename(first) == "env" and len(interpreter) > 1:
        words = [w for w in interpreter[1:] if not w.startswith("-")]
        if not words:
            return
        try:
            target = _locate(words[0], cwd=cwd, search_path=search_path, visible=visible, argv=[words[0]])
        except CommandError:
            raise CommandError(
                f"{path} starts with {line}, and "
                f"{words[0]!r} is not on the sandbox's PATH ({search_path})",
                command=[path],
                reason="not_found",
            ) from None
    else:
        # a relative interpreter is resolved by the kernel against the
        # process's working directory: the run's (the same path inside)
        target = os.path.normpath(os.path.join(cwd, first))
    _check_interpreter(target, path, line)
    _expose(target, result, visible=visible, search_path=search_path, cwd=cwd, depth=depth + 1)


def _check_interpreter(target: str, script: str, line: str) -> None:
    """The interpreter a ``#!`` line names must be what the kernel would
    exec: an executable regular file (as for the command itself).

    Raises:
        CommandError: it does not exist (``not_found``), cannot be read or
            is not an executable regular file (``not_executable``).
    """
    try:
        st = os.stat(target)
    except FileNotFoundError:
        raise CommandError(
            f"{script} starts with {line}, and the interpreter {target} does not exist",
            command=[script],
            reason="not_found",
        ) from None
    except OSError as err:
        raise CommandError(
            f"{script} starts with {line}, and the interpreter {target} cannot be "
            f"read: {err.strerror}",
            command=[script],
            reason="not_executable",
        ) from None
    if not stat.S_ISREG(st.st_mode) or not st.st_mode & 0o111:
        what = "not a regular file" if not stat.S_ISREG(st.st_mode) else (
            f"not executable (mode {stat.filemode(st.st_mode)})"
        )
        raise CommandError(
            f"{script} starts with {line}, and the interpreter {target} is {what}",
            command=[script],
            reason="not_executable",
        )


def _link_chain(path: str) -> list[str]:
    """The hops from ``path`` to the file it names, as the kernel walks them.

    Each hop after the first is absolute with its directories resolved, so
    only its last component may be a link (the next hop). The first hop is
    ``path`` as given; when its directory passes through a link, the next
    hop is the same name in the resolved directory. The last hop is the
    file itself (``os.path.realpath(path)``).
    """
    chain = [path]
    current = path
    for _ in range(_MAX_LINKS):
        directory = os.path.realpath(os.path.dirname(current))
        try:
            target = os.readlink(current)
        except OSError:  # not a link: the file itself
            if directory != os.path.dirname(current):
                chain.append(os.path.join(directory, os.path.basename(current)))
            return chain
        current = _resolved_directory(os.path.join(directory, target))
        chain.append(current)
    # more links than the kernel follows: exec fails with ELOOP, as on the host
    return chain


def _resolved_directory(path: str) -> str:
    """``path`` with its directories resolved and its last component kept."""
    name = os.path.basename(path)
    if name in ("", ".", ".."):
        return os.path.realpath(path)
    return os.path.join(os.path.realpath(os.path.dirname(path)), name)


def _covered(path: str, result: Resolution) -> bool:
    return any(path == p or path.startswith(p.rstrip("/") + "/") for p in result.read_only)


def _expose_installation(executable: str, result: Resolution, visible: Callable[[str], bool]) -> None:
    parent = os.path.dirname(executable)
    if os.path.basename(parent) not in ("bin", "sbin"):
        return
    root = os.path.dirname(parent)
    if root in ("", "/") or visible(root):
        return
    for part in _INSTALL_PARTS:
        candidate = os.path.join(root, part)
        if os.path.lexists(candidate) and not visible(candidate):
            result.add(candidate, f"installation of {executable}")
    cfg = os.path.join(root, "pyvenv.cfg")
    home = _venv_home(cfg)
    if home:
        base = os.path.join(home, "python3")
        probe = base if os.path.exists(base) else os.path.join(home, "python")
        _expose_installation(os.path.normpath(probe), result, visible)


def _venv_home(cfg: str) -> str | None:
    data = _read_head(cfg, _MAX_CFG_BYTES)
    if data is None:
        return None
    for line in data.decode("utf-8", errors="replace").splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "home":
            home = value.strip()
            return home if os.path.isabs(home) else None
    return None


def _read_head(path: str, size: int) -> bytes | None:
    """At most ``size`` bytes from the start of a regular file, else None.

    The files read here (a command, an interpreter, a ``pyvenv.cfg``) may be
    chosen by a program (a script it wrote in the workspace): never block on
    one (a FIFO, a terminal: opened non-blocking, and read only when
    ``fstat`` says it is a regular file, the only kind the kernel execs) and
    never read more than ``size``.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        chunks = []
        left = size
        while left > 0:
            chunk = os.read(fd, left)
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    except OSError:
        return None
    finally:
        os.close(fd)


def _shebang(path: str) -> list[str] | None:
    head = _read_head(path, 256)
    if head is None or not head.startswith(b"#!"):
        return None
    line = head[2:].split(b"\n", 1)[0].decode("utf-8", errors="replace").strip()
    words = line.split()
    return words or None
