"""Protected paths checked after a run, on the host.

Most protected paths are made read-only before the run (``policy.py``). Two
kinds cannot be:

* **absent at launch**: ``.git`` of a workspace that is not yet a
  repository (the run may ``git init`` or ``git clone``), ``.git/commondir``
  (git follows it to another config and hooks directory), the workspace's
  ``.stockade.toml``. A read-only mount needs something to mount over, and
  creating placeholders would break ``git init``. So the run may create
  them, and afterwards the guard checks what it created: a new hooks
  directory may hold git's inert ``*.sample`` templates only; a new git
  config may hold plain settings only (no key that names a command, an
  include or another hooks directory); anything else at a protected path
  is moved aside (``NAME.stockade-quarantine-RUNID``), so that git on the
  host never runs it, and the result reports it as a violation.
* **watched by snapshot**: a protected path that is a symbolic link (it
  cannot be mounted over), and, on the second tier when the policy accepts
  ``protected_paths`` degraded, every protected path. The guard records its
  content at launch and, if the run changed it, moves the changed version
  aside and restores the recorded one.

And one kind that is read-only but may not stay so: on the first tier a
host rename over an existing protected path undoes its read-only mount
(``watch.py`` ends the run), so the run may have written the new file. Its
identity is recorded at launch; if it is another file after the run, it is
checked like one the run created (``watch_identity``).

The check runs after the program's whole process tree is gone, as the
caller. Everything it touches lies in directories the program could write,
so it walks with descriptors and never follows a symbolic link: from ``/``
to each writable root (whose identity must not have changed), then component
by component with ``O_NOFOLLOW``; it renames within one directory and
creates with ``O_EXCL``.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import time
from dataclasses import dataclass, field

from ..errors import PolicyError
from . import gitdirs

# A snapshot is kept in memory: bounded, so that a huge protected tree is
# refused up front instead of being copied on every run.
SNAPSHOT_MAX_BYTES = 4 * 1024 * 1024
SNAPSHOT_MAX_ENTRIES = 512
_CONFIG_MAX_BYTES = 64 * 1024

QUARANTINE = ".stockade-quarantine-"
_REALTIME_COARSE = getattr(time, "CLOCK_REALTIME_COARSE", 5)  # Linux's value

# Keys a git config written by the run may hold and stay: what `git init`,
# `git clone` and `git checkout -b` write. Anything else (core.hooksPath,
# core.fsmonitor, core.sshCommand, alias.*, filter.*, include.path, ...) is
# treated as a command the host would run.
_PLAIN_GIT_KEYS = (
    "core.repositoryformatversion",
    "core.filemode",
    "core.bare",
    "core.logallrefupdates",
    "core.ignorecase",
    "core.precomposeunicode",
    "core.symlinks",
    "core.worktree",
    "extensions.objectformat",
    "init.defaultbranch",
    "user.name",
    "user.email",
    "remote.*.url",
    "remote.*.fetch",
    "branch.*.remote",
    "branch.*.merge",
    "submodule.*.url",
    "submodule.*.active",
)
_SECTION = re.compile(r'^\[([A-Za-z0-9-]+)(?:\s+"([^"\\\n]*)")?\]\s*(?:[#;].*)?$')
_KEY = re.compile(r"^([A-Za-z][A-Za-z0-9-]*)\s*(?:=.*)?$")


@dataclass(frozen=True)
class Finding:
    """A protected path the run changed, and what the guard did about it."""

    path: str
    what: str
    action: str


@dataclass
class Snapshot:
    kind: str  # "file", "dir" or "link"
    mode: int
    uid: int
    gid: int
    times: tuple[int, int] = (0, 0)  # atime, mtime in ns, restored too
    data: bytes = b""
    target: str = ""
    children: dict[str, Snapshot] = field(default_factory=dict)


@dataclass
class _Watch:
    root: str
    root_ident: tuple[int, int]
    parts: tuple[str, ...]
    prefix: list[tuple[int, int]]  # identities of the parts that existed
    snapshot: Snapshot | None = None  # None: absent at launch (or ``ident``)
    # existed at launch with this identity, read-only during the run: if it
    # is another file afterwards, it is checked like one the run created
    ident: tuple[int, int] | None = None


@dataclass
class _GitScan:
    root: str
    root_ident: tuple[int, int]
    tails: tuple[str, ...]  # a git directory's protected names
    known: frozenset[str]  # protected at launch: left to the rules and watches
    # when the scan was planned (CLOCK_REALTIME_COARSE, ns: the clock file
    # times are taken from): what the walk finds changed since is the run's
    since: int = 0


class Guard:
    """The protected paths of one run that are checked after it."""

    def __init__(self) -> None:
        self.watches: list[_Watch] = []
        self.scans: list[_GitScan] = []

    def __bool__(self) -> bool:
        return bool(self.watches) or bool(self.scans)

    def scan_git(
        self,
        root: str,
        root_ident: tuple[int, int],
        tails: tuple[str, ...],
        *,
        known: frozenset[str],
    ) -> None:
        """After the run, find the git directories of ``root`` again
        (``gitdirs.scan``) and check each of their protected names
        (``tails``) that was not protected at launch (``known``) like one
        the run created; quarantine ``.git`` files of nested repositories
        that lead outside ``root``. Then walk ``root`` once
        (``gitdirs.walk``) for git directories and ``.git`` entries the
        scan does not reach, and check those the run made or changed the
        same way."""
        since = time.clock_gettime_ns(_REALTIME_COARSE)
        self.scans.append(_GitScan(root, root_ident, tails, known, since))

    def watch_absent(
        self,
        root: str,
        root_ident: tuple[int, int],
        parts: tuple[str, ...],
        *,
        missing_from: int,
    ) -> None:
        """Watch ``root/parts``, whose part ``missing_from`` does not exist."""
        prefix = _identities(root, parts[:missing_from])
        self.watches.append(_Watch(root, root_ident, parts, prefix))

    def watch_identity(
        self,
        root: str,
        root_ident: tuple[int, int],
        parts: tuple[str, ...],
        ident: tuple[int, int],
    ) -> None:
        """Check ``root/parts``, read-only during the run, afterwards only if
        it is no longer the file ``ident`` names: first tier, where a host
        rename over it undoes the read-only mount (``watch.py``), so the run
        may have written the new file. Cost: a walk to it, no read."""
        prefix = _identities(root, parts[:-1])
        self.watches.append(_Watch(root, root_ident, parts, prefix, ident=ident))

    def watch_snapshot(
        self, root: str, root_ident: tuple[int, int], parts: tuple[str, ...]
    ) -> None:
        """Record ``root/parts`` now, to restore it if the run changes it.

        Raises:
            PolicyError: it is larger than the guard keeps, or unreadable.
        """
        path = os.path.join(root, *parts)
        budget = [SNAPSHOT_MAX_BYTES, SNAPSHOT_MAX_ENTRIES]
        try:
            parent = os.open(
                os.path.dirname(path), os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC
            )
            try:
                snap = _snapshot(parent, parts[-1], budget)
            finally:
                os.close(parent)
        except OSError as err:
            raise PolicyError(
                f"protected: cannot record {path} to check it after the run: "
                f"{err.strerror}",
                key="protected",
                value=path,
            ) from err
        if budget[0] < 0 or budget[1] < 0:
            raise PolicyError(
                f"protected: {path} is too large to record and check after the run "
                f"(more than {SNAPSHOT_MAX_BYTES // 1024 // 1024} MiB or "
                f"{SNAPSHOT_MAX_ENTRIES} entries); use the first tier, where it is "
                f"read-only, or remove it from 'protected'",
                key="protected",
                value=path,
            )
        prefix = _identities(root, parts[:-1])
        self.watches.append(_Watch(root, root_ident, parts, prefix, snap))

    def check(self, run_id: str) -> list[Finding]:
        """Check every watched path; quarantine or restore what changed.

        Returns:
            One finding per protected path the run changed.
        """
        findings: list[Finding] = []
        for watch in self.watches:
            try:
                root_fd = open_nofollow(watch.root)
            except OSError:
                findings.append(
                    Finding(
                        watch.root, "writable root gone after the run", "not checked"
                    )
                )
                continue
            try:
                st = os.fstat(root_fd)
                if (st.st_dev, st.st_ino) != watch.root_ident:
                    findings.append(
                        Finding(
                            watch.root,
                            "writable root replaced during the run",
                            "not checked",
                        )
                    )
                    continue
                _check_watch(root_fd, watch, run_id, findings)
            finally:
                os.close(root_fd)
        for scan in self.scans:
            try:
                root_fd = open_nofollow(scan.root)
            except OSError:
                continue  # reported by its watches, if any
            try:
                st = os.fstat(root_fd)
                if (st.st_dev, st.st_ino) == scan.root_ident:
                    _check_scan(root_fd, scan, run_id, findings)
            finally:
                os.close(root_fd)
        return findings


def _check_scan(
    root_fd: int, scan: _GitScan, run_id: str, findings: list[Finding]
) -> None:
    """The git directories of a writable place after the run (``gitdirs``):
    what was not protected at launch is checked like a path the run
    created."""
    found = gitdirs.scan(root_fd, scan.root)
    gitdirs.walk(root_fd, scan.root, found, scan.since, scan.tails)
    for parts, target in found.gitfiles.items():
        path = os.path.join(scan.root, *parts)
        if target is None and path not in scan.known:
            _aside(root_fd, parts, path, "a .git file leading out of the writable "
                   "place (or through a link), made or changed during the run",
                   run_id, findings)
    for parts in found.others:
        path = os.path.join(scan.root, *parts)
        if path not in scan.known:
            _aside(root_fd, parts, path, "a .git that is neither a directory nor a "
                   "file, made during the run", run_id, findings)
    for parts in found.links:
        path = os.path.join(scan.root, *parts)
        if path not in scan.known:
            _aside(root_fd, parts, path, "a symbolic link under a git directory's "
                   "modules or worktrees (git follows it), made during the run",
                   run_id, findings)
    for gitdir, kind in found.gitdirs.items():
        fd = gitdirs.open_dir(root_fd, gitdir)
        if fd is None:
            continue
        try:
            for tail in scan.tails:
                path = os.path.join(scan.root, *gitdir, tail)
                if path in scan.known:
                    continue
                try:
                    st = os.lstat(tail, dir_fd=fd)
                except OSError:
                    continue
                if _inert(fd, tail, st, (*gitdir, tail), git_dir=True, kind=kind):
                    continue
                moved = quarantine(fd, tail, run_id)
                where = {
                    "bare": "the writable place laid out as a bare repository",
                    "module": "a submodule's git directory",
                    "worktree": "a linked worktree's git directory",
                    "tree": "a git directory in the tree that the index does not "
                    "reference",
                }.get(kind, "a nested repository the index references")
                findings.append(
                    Finding(
                        path,
                        f"created or changed during the run ({where})",
                        f"moved to {moved}",
                    )
                )
        finally:
            os.close(fd)
    for why in found.incomplete:
        findings.append(
            Finding(
                scan.root,
                f"git directories not all found after the run: {why}",
                "not checked (TODO(#6))",
            )
        )


def _aside(
    root_fd: int,
    parts: tuple[str, ...],
    path: str,
    what: str,
    run_id: str,
    findings: list[Finding],
) -> None:
    fd = gitdirs.open_dir(root_fd, parts[:-1])
    if fd is None:
        return
    try:
        moved = quarantine(fd, parts[-1], run_id)
    finally:
        os.close(fd)
    findings.append(Finding(path, what, f"moved to {moved}"))


# -- after the run -------------------------------------------------------------------


def _check_watch(
    root_fd: int, watch: _Watch, run_id: str, findings: list[Finding]
) -> None:
    fd = os.dup(root_fd)
    try:
        for index, name in enumerate(watch.parts):
            path = os.path.join(watch.root, *watch.parts[: index + 1])
            last = index == len(watch.parts) - 1
            try:
                st = os.lstat(name, dir_fd=fd)
            except FileNotFoundError:
                # absent, or (``ident``) removed: nothing there to run
                if watch.snapshot is not None:
                    if last:
                        _restore(fd, name, watch.snapshot)
                        findings.append(
                            Finding(path, "removed during the run", "restored")
                        )
                    else:
                        findings.append(
                            Finding(
                                path,
                                "removed during the run",
                                "not restored: its directory is gone",
                            )
                        )
                return
            existed = index < len(watch.prefix)
            if existed and not last:
                if (st.st_dev, st.st_ino) != watch.prefix[index] or not stat.S_ISDIR(
                    st.st_mode
                ):
                    moved = quarantine(fd, name, run_id)
                    findings.append(
                        Finding(path, "replaced during the run", f"moved to {moved}")
                    )
                    return
            elif not last and not stat.S_ISDIR(st.st_mode):
                # created by the run where a directory would be: a `.git` file or
                # link leads git to a directory the run chose
                moved = quarantine(fd, name, run_id)
                findings.append(
                    Finding(path, "created during the run", f"moved to {moved}")
                )
                return
            if last:
                _check_last(fd, name, path, st, watch, run_id, findings)
                return
            next_fd = os.open(
                name,
                os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                dir_fd=fd,
            )
            os.close(fd)
            fd = next_fd
    finally:
        os.close(fd)


def _check_last(
    fd: int,
    name: str,
    path: str,
    st: os.stat_result,
    watch: _Watch,
    run_id: str,
    findings: list[Finding],
) -> None:
    snap = watch.snapshot
    if snap is None:
        what = "created during the run"
        if watch.ident is not None:
            if (st.st_dev, st.st_ino) == watch.ident:
                return
            what = "replaced during the run"
        if _inert(fd, name, st, watch.parts):
            return
        moved = quarantine(fd, name, run_id)
        findings.append(Finding(path, what, f"moved to {moved}"))
        return
    if _same(fd, name, snap):
        return
    moved = quarantine(fd, name, run_id)
    _restore(fd, name, snap)
    findings.append(
        Finding(
            path,
            "changed during the run",
            f"restored; the run's version moved to {moved}",
        )
    )


def _inert(
    fd: int,
    name: str,
    st: os.stat_result,
    parts: tuple[str, ...],
    *,
    git_dir: bool = False,
    kind: str = "",
) -> bool:
    """Whether something the run created at a protected path can run nothing:
    a directory of git's ``*.sample`` hook templates, or a git config of plain
    settings; in a linked worktree's git directory (``kind``), the
    ``commondir`` that ``git worktree add`` writes (``../..``). Everything
    else counts as planted. ``git_dir``: ``fd`` is a git directory other
    than a ``.git`` (``gitdirs.py``)."""
    if stat.S_ISDIR(st.st_mode):
        with _listing(fd, name) as entries:
            return all(
                e.name.endswith(".sample") and e.is_file(follow_symlinks=False)
                for e in entries
            )
    if kind == "worktree" and name == "commondir" and stat.S_ISREG(st.st_mode):
        return _read(fd, name, 64) in (b"../..\n", b"../..")
    is_git_config = (
        (git_dir or (len(parts) >= 2 and parts[-2] == ".git"))
        and name in ("config", "config.worktree")
    )
    if (
        not is_git_config
        or not stat.S_ISREG(st.st_mode)
        or st.st_size > _CONFIG_MAX_BYTES
    ):
        return False
    data = _read(fd, name, _CONFIG_MAX_BYTES)
    return data is not None and git_config_is_plain(data)


def git_config_is_plain(data: bytes) -> bool:
    """Whether a git config holds only keys from ``_PLAIN_GIT_KEYS``.

    Deliberately strict: a line this parser does not understand (line
    continuations, old-style ``[section.sub]`` headers, keys after a header
    on the same line) makes the file not plain.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    section: str | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.endswith("\\"):
            return False
        if line.startswith("["):
            match = _SECTION.match(line)
            if match is None:
                return False
            section = match.group(1).lower() + (
                ".*" if match.group(2) is not None else ""
            )
            continue
        match = _KEY.match(line)
        if match is None or section is None:
            return False
        if f"{section}.{match.group(1).lower()}" not in _PLAIN_GIT_KEYS:
            return False
    return True


def quarantine(fd: int, name: str, run_id: str) -> str:
    """Rename ``name`` aside in the same directory; returns the new name."""
    base = f"{name}{QUARANTINE}{run_id}"
    candidate = base
    for n in range(1, 100):
        try:
            os.lstat(candidate, dir_fd=fd)
        except FileNotFoundError:
            os.rename(name, candidate, src_dir_fd=fd, dst_dir_fd=fd)
            return candidate
        candidate = f"{base}.{n}"
    raise OSError(errno.EEXIST, f"no free quarantine name for {name}")


# -- snapshots -----------------------------------------------------------------------


def _identities(root: str, parts: tuple[str, ...]) -> list[tuple[int, int]]:
    out = []
    current = root
    for name in parts:
        current = os.path.join(current, name)
        st = os.lstat(current)
        out.append((st.st_dev, st.st_ino))
    return out


def _snapshot(dir_fd: int, name: str, budget: list[int]) -> Snapshot:
    st = os.lstat(name, dir_fd=dir_fd)
    budget[1] -= 1
    base = {
        "mode": stat.S_IMODE(st.st_mode),
        "uid": st.st_uid,
        "gid": st.st_gid,
        "times": (st.st_atime_ns, st.st_mtime_ns),
    }
    if stat.S_ISLNK(st.st_mode):
        return Snapshot("link", target=os.readlink(name, dir_fd=dir_fd), **base)
    if stat.S_ISREG(st.st_mode):
        budget[0] -= st.st_size
        data = b"" if budget[0] < 0 else (_read(dir_fd, name, st.st_size) or b"")
        return Snapshot("file", data=data, **base)
    if stat.S_ISDIR(st.st_mode):
        snap = Snapshot("dir", **base)
        sub = os.open(
            name,
            os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
            dir_fd=dir_fd,
        )
        try:
            with _listing(sub, ".") as entries:
                names = [e.name for e in entries]
            for child in names:
                if budget[0] < 0 or budget[1] < 0:
                    break
                snap.children[child] = _snapshot(sub, child, budget)
        finally:
            os.close(sub)
        return snap
    raise OSError(errno.EINVAL, f"{name}: not a file, directory or symbolic link")


def _same(dir_fd: int, name: str, snap: Snapshot) -> bool:
    try:
        st = os.lstat(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return False
    if stat.S_IMODE(st.st_mode) != snap.mode:
        return False
    if snap.kind == "link":
        return (
            stat.S_ISLNK(st.st_mode) and os.readlink(name, dir_fd=dir_fd) == snap.target
        )
    if snap.kind == "file":
        if not stat.S_ISREG(st.st_mode) or st.st_size != len(snap.data):
            return False
        return _read(dir_fd, name, len(snap.data)) == snap.data
    if not stat.S_ISDIR(st.st_mode):
        return False
    sub = os.open(
        name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd
    )
    try:
        with _listing(sub, ".") as entries:
            names = sorted(e.name for e in entries)
        if names != sorted(snap.children):
            return False
        return all(_same(sub, child, snap.children[child]) for child in names)
    finally:
        os.close(sub)


def _restore(dir_fd: int, name: str, snap: Snapshot) -> None:
    owner = os.geteuid() == 0
    if snap.kind == "link":
        os.symlink(snap.target, name, dir_fd=dir_fd)
        if owner:
            os.chown(name, snap.uid, snap.gid, dir_fd=dir_fd, follow_symlinks=False)
        os.utime(name, ns=snap.times, dir_fd=dir_fd, follow_symlinks=False)
        return
    if snap.kind == "file":
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(name, flags, 0o600, dir_fd=dir_fd)
        try:
            os.write(fd, snap.data)
            if owner:
                os.fchown(fd, snap.uid, snap.gid)
            os.fchmod(fd, snap.mode)
            os.utime(fd, ns=snap.times)
        finally:
            os.close(fd)
        return
    os.mkdir(name, 0o700, dir_fd=dir_fd)
    sub = os.open(
        name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd
    )
    try:
        for child, child_snap in snap.children.items():
            _restore(sub, child, child_snap)
        if owner:
            os.fchown(sub, snap.uid, snap.gid)
        os.fchmod(sub, snap.mode)
        os.utime(sub, ns=snap.times)
    finally:
        os.close(sub)


# -- descriptors ---------------------------------------------------------------------


def open_nofollow(path: str) -> int:
    """An O_PATH descriptor of ``path``, reached without following any link."""
    fd = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for name in path.strip("/").split("/"):
            if not name:
                continue
            next_fd = os.open(
                name,
                os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                dir_fd=fd,
            )
            os.close(fd)
            fd = next_fd
            if not stat.S_ISDIR(os.fstat(fd).st_mode):
                raise OSError(errno.ENOTDIR, f"{path}: not a directory")
    except BaseException:
        os.close(fd)
        raise
    return fd


def _read(dir_fd: int, name: str, limit: int) -> bytes | None:
    try:
        fd = os.open(
            name,
            os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK,
            dir_fd=dir_fd,
        )
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        chunks = []
        left = limit
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


class _listing:
    """``os.scandir`` of a directory reached by descriptor (closed after)."""

    def __init__(self, dir_fd: int, name: str) -> None:
        self._fd = os.open(
            name,
            os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
            dir_fd=dir_fd,
        )

    def __enter__(self) -> list[os.DirEntry[str]]:
        with os.scandir(self._fd) as it:
            return list(it)

    def __exit__(self, *exc: object) -> None:
        os.close(self._fd)
