"""Landlock rulesets: our small adapter over landlockpy.

Used on both sides of the launch:

* the manager builds a ruleset *spec* (plain JSON, see ``ruleset_spec``) for
  the second tier, from the paths the mode shows and the ABI the host probe
  found;
* the launcher child calls ``apply(spec)`` just before exec: it creates the
  ruleset, adds one rule per path, and restricts itself (with
  no_new_privs). The launcher imports this module before it forks, so the
  child does no import work.

What a spec handles is denied unless a rule grants it:

* every file-system right the ABI knows (ABI 1: read, write, exec, make and
  remove; 2: moving files between directories; 3: truncate; 5: ioctl on
  devices; 9: connecting to pathname unix sockets);
* with the network off, TCP bind and connect (ABI 4) and UDP (ABI 10), with
  no port granted;
* scoping (ABI 6): abstract unix sockets and signals stop at the sandbox's
  own processes.

The adapter is strict: ``apply`` fails if the running kernel offers less
than the ABI the spec was built for, so a run never gets a weaker ruleset
than the host probe (and the result) promised.

Stdlib plus landlockpy only: the launcher imports this module. Without
landlockpy, ``abi_version`` reports 0 with the reason and ``apply`` fails.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
from typing import Any

try:  # pragma: no branch - landlockpy is a declared dependency
    import landlockpy as _ll
    from landlockpy import _syscall as _ll_syscall
    from landlockpy.flags import LATEST_ABI as _LATEST_ABI

    _IMPORT_ERROR: str | None = None
except ImportError as _err:  # pragma: no cover - depends on the installation
    _ll = None  # type: ignore[assignment]
    _LATEST_ABI = 0
    _IMPORT_ERROR = f"landlockpy is not importable ({_err})"
else:
    # landlockpy (0.2.0, pinned) finds libc lazily with
    # ctypes.util.find_library, which runs `ldconfig -p` in a subprocess: in
    # the launcher child, between fork and exec, that would be a fork of its
    # own and a SIGCHLD after the descriptors are closed. Hand it the libc
    # this process has already loaded, set up the way it sets up its own.
    if getattr(_ll_syscall, "_libc", None) is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.syscall.restype = ctypes.c_long
        _libc.prctl.restype = ctypes.c_int
        _ll_syscall._libc = _libc

# Rights by name, as the spec carries them. Each name maps to the landlockpy
# flag names it covers; flags the ABI lacks are dropped when masking.
ACCESS_NAMES: dict[str, tuple[str, ...]] = {
    "read": ("READ_FILE", "READ_DIR"),
    "exec": ("EXECUTE",),
    "write": ("WRITE_FILE", "TRUNCATE"),
    "create": (
        "MAKE_REG",
        "MAKE_DIR",
        "MAKE_SYM",
        "MAKE_FIFO",
        "MAKE_SOCK",
        "REMOVE_FILE",
        "REMOVE_DIR",
        "REFER",
    ),
    "unix": ("RESOLVE_UNIX",),
    # finer names for the path rules' spine directories (fs/ruleset.py)
    "read_file": ("READ_FILE",),
    "list": ("READ_DIR",),
}

# Shorthands used by the manager's plan.
READ_EXEC = ["read", "exec"]
READ_ONLY = ["read"]
READ_WRITE = ["read", "write"]
WRITABLE = ["read", "write", "exec", "create", "unix"]
SHARED_MEMORY = ["read", "write", "create"]

# ABI versions that added what the second tier relies on.
ABI_NET_TCP = 4
ABI_SCOPE = 6
ABI_RESOLVE_UNIX = 9
ABI_NET_UDP = 10


def abi_version() -> tuple[int, str | None]:
    """The kernel's Landlock ABI as landlockpy can use it, and why it is 0.

    Returns:
        (abi, error): abi 0 with a reason when Landlock cannot be used. An
        ABI newer than landlockpy knows is capped to what it knows.
    """
    if _ll is None:
        return 0, _IMPORT_ERROR
    try:
        abi = _ll.abi_version()
    except OSError as err:
        return 0, f"landlock_create_ruleset: {os.strerror(err.errno or 0)}"
    if abi == 0:
        return 0, (
            "the kernel has no Landlock (Linux 5.13+ built with "
            "CONFIG_SECURITY_LANDLOCK) or it is not enabled at boot (lsm= must "
            "list landlock)"
        )
    return min(abi, _LATEST_ABI), None


# What the second tier grants of /proc, which is the host's there (no pid
# namespace): the program's own entries, and the system-wide figures that
# runtimes read (CPU count and features, memory, load, uptime, kernel
# tunables). Not /proc itself: a run cannot list the host's processes, nor
# open another's entries (command lines included). "/proc/self" is resolved
# when the ruleset is applied, in the program's process (its pid survives the
# exec); a process the program starts has a pid of its own, and so no
# entries of its own to read (docs/hosts.md).
PROC_GRANTS = (
    "/proc/self",
    "/proc/cpuinfo",
    "/proc/meminfo",
    "/proc/stat",
    "/proc/loadavg",
    "/proc/uptime",
    "/proc/version",
    "/proc/filesystems",
    "/proc/swaps",
    "/proc/vmstat",
    "/proc/sys",
)

# Devices the second tier grants, like the first tier's minimal /dev.
_DEVICES_RW = ("/dev/null", "/dev/zero", "/dev/full", "/dev/tty")
_DEVICES_RO = ("/dev/random", "/dev/urandom")


def second_tier_rules(
    *,
    mode: str,
    system: list[str],
    read_only: list[str],
    workspace: str | None,
    run_dir: str,
    paths: list[dict[str, Any]] | None = None,
) -> list[Any]:
    """The second tier's file-system rules: the first tier's mount view as
    a ruleset.

    Args:
        mode: the policy's mode name (strict, moderate, permissive).
        system: the system directories the mode shows (``bwrap.base_plan``).
        read_only: installations the command needs (``resolve.py``).
        workspace: the writable workspace (None: it is in ``paths``).
        run_dir: the run's own directory (HOME and TMPDIR live in it).
        paths: the path rules as spec items (``fs/ruleset.py``), added as
            they are.

    Returns:
        (path, access names) pairs and spec items for ``ruleset_spec``.

    ``/proc`` is the host's (no pid namespace): only ``PROC_GRANTS`` are
    readable, the program's own entries and system-wide figures; the host's
    processes cannot be listed and their entries not opened. ``/dev/shm`` is the
    host's and writable in moderate and permissive, where POSIX semaphores
    (Python's multiprocessing) need it.
    """
    rules: list[Any] = [(path, READ_EXEC) for path in system]
    rules += [(path, READ_EXEC) for path in read_only]
    rules += list(paths or [])
    rules += [(path, READ_ONLY) for path in PROC_GRANTS]
    rules += [(path, READ_WRITE) for path in _DEVICES_RW]
    rules += [(path, READ_ONLY) for path in _DEVICES_RO]
    if mode != "strict":
        rules.append(("/dev/shm", SHARED_MEMORY))
    if workspace is not None:
        rules.append((workspace, WRITABLE))
    rules.append((run_dir, WRITABLE))
    return rules


def ruleset_spec(
    *,
    abi: int,
    rules: list[Any],
    deny_network: bool,
) -> dict[str, Any]:
    """The JSON spec ``apply`` enforces.

    Args:
        abi: the Landlock ABI the decision was made for (from the probe).
        rules: (path, access names) pairs, or items ``{"path", "access",
            "id", "each", "skip"}``; a directory covers its subtree. A rule
            with an identity ``id`` (st_dev, st_ino) is opened without
            following a final symbolic link and must still be that file. A
            rule with ``each`` also grants each entry of the directory those
            rights, except symbolic links and the entries whose identity is
            in ``skip`` (the path rules' spine directories, fs/ruleset.py).
        deny_network: handle TCP (ABI 4+) and UDP (ABI 10+) with no port
            granted.

    Returns:
        ``{"abi", "rules": [...], "deny_network", "scope"}``.
    """
    out = []
    for rule in rules:
        if isinstance(rule, dict):
            item = dict(rule)
        else:
            item = {"path": rule[0], "access": list(rule[1])}
        for names in (item["access"], item.get("each") or []):
            unknown = [name for name in names if name not in ACCESS_NAMES]
            if unknown:
                raise ValueError(f"unknown Landlock access names {unknown}")
        out.append(item)
    return {
        "abi": abi,
        "rules": out,
        "deny_network": deny_network,
        "scope": abi >= ABI_SCOPE,
    }


def apply(spec: dict[str, Any]) -> None:
    """Enforce a ruleset spec on the calling process (the launcher child).

    Paths that do not exist, or that the process cannot reach (EACCES on a
    directory above them), get no rule: the process could not use them
    either way, so nothing is granted or lost by skipping them. A rule with
    an identity is opened without following a final symbolic link; if the
    path now leads to another file (replaced since the policy was
    resolved), the run stops rather than grant that file the rule's rights.

    Raises:
        OSError: the kernel offers less than ``spec["abi"]``, a path was
            replaced (ESTALE), or a Landlock call failed (errno and the
            call in the message).
    """
    if _ll is None:
        raise OSError(errno.ENOSYS, _IMPORT_ERROR or "landlockpy missing")
    want = int(spec["abi"])
    have, why = abi_version()
    if have < want:
        raise OSError(
            errno.ENOSYS,
            f"Landlock ABI {have} on this kernel, the run was prepared for ABI {want}"
            + (f" ({why})" if why else ""),
        )
    handled_fs = _ll.fs_for_abi(want)
    handled_net = _ll.AccessNet.NONE
    if spec.get("deny_network"):
        handled_net = _ll.net_for_abi(want)
    scoped = _ll.scope_for_abi(want) if spec.get("scope") else _ll.Scope.NONE
    with _ll.Ruleset(
        handled_fs=handled_fs,
        handled_net=handled_net,
        scoped=scoped,
        best_effort=False,
    ) as ruleset:
        file_rights = _file_rights() & handled_fs
        for rule in spec.get("rules") or []:
            access = _access_flags(rule["access"]) & handled_fs
            try:
                if "each" in rule:
                    _allow_entries(ruleset, rule, access, handled_fs, file_rights)
                    continue
                if "id" in rule:
                    _allow_identified(ruleset, rule, access, file_rights)
                    continue
                if not os.path.isdir(rule["path"]):
                    # the kernel refuses directory rights on other files
                    access &= file_rights
                ruleset.allow_path(rule["path"], access)
            except OSError as err:
                if err.errno in (errno.ENOENT, errno.EACCES, errno.ENOTDIR):
                    continue
                if err.errno == errno.ESTALE:
                    raise
                raise OSError(
                    err.errno, f"landlock_add_rule({rule['path']!r}): {err.strerror}"
                ) from None
        ruleset.restrict(no_new_privs=True)


def _allow_identified(
    ruleset: Any, rule: dict[str, Any], access: Any, file_rights: Any
) -> None:
    """Add a rule on the file the path names now, if it is still the one the
    policy was resolved against (``rule["id"]``)."""
    assert _ll is not None
    fd = os.open(rule["path"], os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if [st.st_dev, st.st_ino] != list(rule["id"]) or stat.S_ISLNK(st.st_mode):
            raise OSError(
                errno.ESTALE,
                f"{rule['path']!r} was replaced between policy resolution and the "
                f"ruleset; run again",
            )
        if not stat.S_ISDIR(st.st_mode):
            access &= file_rights
        _add_fd(ruleset, fd, access)
    finally:
        os.close(fd)


def _allow_entries(
    ruleset: Any, rule: dict[str, Any], access: Any, handled_fs: Any, file_rights: Any
) -> None:
    """A spine directory: its own (reduced) rights, and a rule for each of
    its entries, listed now, except links and the entries in ``skip``."""
    assert _ll is not None
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    dir_fd = os.open(rule["path"], flags)
    try:
        st = os.fstat(dir_fd)
        if "id" in rule and [st.st_dev, st.st_ino] != list(rule["id"]):
            raise OSError(
                errno.ESTALE,
                f"{rule['path']!r} was replaced between policy resolution and the "
                f"ruleset; run again",
            )
        if access:
            _add_fd(ruleset, dir_fd, access)
        each = _access_flags(rule["each"]) & handled_fs
        skip = {tuple(ident) for ident in rule.get("skip") or []}
        for name in os.listdir(dir_fd):
            try:
                fd = os.open(
                    name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd
                )
            except FileNotFoundError:
                continue
            try:
                entry = os.fstat(fd)
                if stat.S_ISLNK(entry.st_mode) or (entry.st_dev, entry.st_ino) in skip:
                    continue
                is_dir = stat.S_ISDIR(entry.st_mode)
                _add_fd(ruleset, fd, each if is_dir else each & file_rights)
            finally:
                os.close(fd)
    finally:
        os.close(dir_fd)


def _add_fd(ruleset: Any, fd: int, access: Any) -> None:
    if access:
        attr = _ll_syscall.PathBeneathAttr(allowed_access=int(access), parent_fd=fd)
        _ll_syscall.add_path_beneath(ruleset.fileno(), attr)


def _file_rights() -> Any:
    assert _ll is not None
    fs = _ll.AccessFS
    return fs.EXECUTE | fs.WRITE_FILE | fs.READ_FILE | fs.TRUNCATE | fs.IOCTL_DEV


def _access_flags(names: list[str]) -> Any:
    assert _ll is not None
    flags = _ll.AccessFS.NONE
    for name in names:
        for flag_name in ACCESS_NAMES[name]:
            flags |= getattr(_ll.AccessFS, flag_name)
    return flags


# Combinations fs/ruleset.py makes for spine directories and their entries.
_SPINE = (
    ["list"],
    ["exec", "list", "read_file"],
    ["create", "exec", "list", "read_file", "unix", "write"],
)


def _warm_flag_cache() -> None:
    """Compute every flag combination ``apply`` uses, once, here.

    landlockpy's flags are IntFlag values, and Python creates each new
    combination on first use (a few microseconds each, dozens per ruleset).
    Made in the launcher before it forks, they are shared with every child
    instead of being rebuilt in each one.
    """
    if _ll is None:
        return
    file_rights = _file_rights()
    for abi in range(1, _LATEST_ABI + 1):
        handled = _ll.fs_for_abi(abi)
        _ll.net_for_abi(abi)
        _ll.scope_for_abi(abi)
        _ll.restrict_for_abi(abi)
        shorthands = (READ_EXEC, READ_ONLY, READ_WRITE, WRITABLE, SHARED_MEMORY)
        for names in (*shorthands, *_SPINE):
            access = _access_flags(names) & handled
            access & file_rights & handled  # noqa: B018 - creates the pseudo-member


_warm_flag_cache()
