"""Watching, on the host, the paths the first tier's mounts sit on.

A mount over a path inside a visible place (the stand-in over a hidden
file, the read-only mount of ``.git/config``, a pinned ``.git``) sits on
that path's directory entry on the host. Linux lazily detaches a mount in
every other mount namespace when that entry is removed or renamed over
(``detach_mounts``, Linux 3.18+), and a mount whose entry is moved away
moves with it, leaving the name free. So a host ``mv new .env``, ``sed -i``
on a read-only file, or a host ``git config`` (it writes ``config.lock`` and
renames it over ``config``) during a run takes the sandbox's mount away:
the program then reads the new hidden content, or writes the new
``.git/config``. The sandbox itself cannot do this (in its own namespace a
mount point cannot be renamed or removed: ``EBUSY``).

So while such a run lives, its caller watches those paths (``MountWatch``):
one inotify instance per run, one watch per directory that holds a watched
name, events filtered by name. Watched are the *destinations* the policy
places over a host path (``mounts.Mount.watch``: hidden stand-ins, read-only
paths inside writable places, protected paths, pinned directories) and every
directory between the top of the mount they lie in and them (a host ``mv
/etc/ssh /etc/ssh.old`` takes the stand-in over ``/etc/ssh/key`` along, and a
new ``/etc/ssh`` would be shown). When one is removed, renamed over or moved
away, the run is ended (``_io.RunIO``) with a violation naming the path.

What no watch can close: the time between the host's rename and the kill
(the event's delivery, the caller waking, the launcher killing the tree).
TODO(#6): meanwhile the program can read or write the new file for that
moment (up to about 10 ms measured; docs/filesystem.md, known
limitations); the check after the run (``guard.py``) treats a protected
path whose identity changed like one the run created, and what was read
stays read.

Set up before the program starts (``SandboxManager._submit``), so every
change after the mounts exist is seen; a prepared sandbox (``pool.py``) has
one watch of its own from before its mounts were made, read when a run
takes it. A policy without such destinations has no watch at all.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
import threading
from collections.abc import Iterable
from dataclasses import dataclass

from ..errors import SandboxUnavailableError

_libc = ctypes.CDLL(None, use_errno=True)

IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_DELETE = 0x00000200
IN_UNMOUNT = 0x00002000
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_DONT_FOLLOW = 0x02000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC
# A name leaves the directory (removed, renamed over, moved away). A name
# arriving (IN_MOVED_TO) is a rename over the watched entry.
_MASK = IN_MOVED_FROM | IN_MOVED_TO | IN_DELETE | IN_ONLYDIR | IN_DONT_FOLLOW
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then the name
_READ_BYTES = 64 * 1024


@dataclass(frozen=True)
class Destination:
    """A host path a mount sits on, and the identity it had at resolution.

    Attributes:
        path: canonical host path.
        ident: (st_dev, st_ino) when the policy was resolved.
        what: ``hidden``, ``read-only``, ``protected`` or ``pinned`` (a
            directory bound onto itself above a read-only or hidden path).
    """

    path: str
    ident: tuple[int, int] | None
    what: str


@dataclass(frozen=True)
class Trip:
    """A watched path that changed on the host: which, and how."""

    path: str
    what: str
    how: str

    def describe(self) -> str:
        return f"{self.path} ({self.what}) was {self.how} on the host"


class MountWatch:
    """The inotify watch of one run's (or one pool's) destinations.

    Args:
        watched: every (directory, name) pair to watch, with the
            destination each one protects (``chain``).

    Raises:
        SandboxUnavailableError: inotify cannot be set up (the caller's
            inotify instances or watches are used up).
    """

    def __init__(self, watched: Iterable[tuple[str, str, Destination]]) -> None:
        self._names: dict[int, dict[str, Destination]] = {}
        self._dirs: dict[int, str] = {}
        self.tripped: list[Trip] = []
        # a pool's watch is read by the threads of the runs taking from it:
        # one reads and records at a time, so none checks before another's
        # trip is recorded
        self._lock = threading.Lock()
        self._pid = os.getpid()
        fd = _take_instance()
        self._fd = fd
        try:
            by_dir: dict[str, dict[str, Destination]] = {}
            for directory, name, dest in watched:
                by_dir.setdefault(directory, {}).setdefault(name, dest)
            for directory, names in by_dir.items():
                wd = _libc.inotify_add_watch(fd, os.fsencode(directory), _MASK)
                if wd < 0:
                    code = ctypes.get_errno()
                    if code in (errno.ENOENT, errno.ENOTDIR):
                        # gone between the resolution and now: the mount
                        # cannot be made over it either; the run fails
                        # its own checks, or the directory's parent trips
                        for dest in names.values():
                            self.tripped.append(Trip(dest.path, dest.what, "gone"))
                        continue
                    _unavailable(f"inotify_add_watch({directory!r})", code, directory)
                self._dirs[wd] = directory
                self._names.setdefault(wd, {}).update(names)
        except BaseException:
            self.close()
            raise

    def fileno(self) -> int:
        return self._fd

    def read(self) -> list[Trip]:
        """Read the events waiting; returns the new trips (also kept in
        ``tripped``). A lost event (queue overflow) trips every path."""
        with self._lock:
            return self._read()

    def _read(self) -> list[Trip]:
        new: list[Trip] = []
        while self._fd >= 0:
            try:
                data = os.read(self._fd, _READ_BYTES)
            except BlockingIOError:
                break
            except OSError as err:
                if err.errno == errno.EINTR:
                    continue
                raise
            if not data:
                break
            new += self._parse(data)
        self.tripped += new
        return new

    def _parse(self, data: bytes) -> list[Trip]:
        out: list[Trip] = []
        offset = 0
        while offset + _EVENT.size <= len(data):
            wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
            offset += _EVENT.size
            name = os.fsdecode(data[offset : offset + length].rstrip(b"\0"))
            offset += length
            if mask & IN_Q_OVERFLOW:
                # events were dropped: any of them could be ours
                out += [
                    Trip(dest.path, dest.what, "possibly replaced (events were lost)")
                    for names in self._names.values()
                    for dest in names.values()
                ]
                continue
            names = self._names.get(wd)
            if names is None:
                continue
            if mask & (IN_IGNORED | IN_UNMOUNT):
                # the directory itself went away (removed, or its file
                # system unmounted): so did what it held
                out += [Trip(d.path, d.what, "gone") for d in names.values()]
                self._names.pop(wd, None)
                continue
            dest = names.get(name)
            if dest is None:
                continue
            how = {
                IN_MOVED_TO: "renamed over",
                IN_MOVED_FROM: "moved away",
                IN_DELETE: "removed",
            }.get(mask & (IN_MOVED_TO | IN_MOVED_FROM | IN_DELETE), "changed")
            entry = os.path.join(self._dirs[wd], name)
            if entry != dest.path:
                how = f"{how} ({entry}, a directory above it)"
            out.append(Trip(dest.path, dest.what, how))
        return out

    def close(self) -> None:
        with self._lock:
            if self._fd < 0:
                return
            if os.getpid() != self._pid:
                # a forked child's copy: removing watches would remove the
                # parent's (the instance is shared); only drop the copy
                os.close(self._fd)
            else:
                _give_back(self._fd, list(self._dirs))
            self._fd = -1

    def __enter__(self) -> MountWatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def chain(
    dest: Destination, tops: Iterable[str]
) -> list[tuple[str, str, Destination]]:
    """The (directory, name) pairs to watch for ``dest``: each component
    from the nearest of ``tops`` above it (a mount that does not sit on a
    host path the run sees) down to ``dest`` itself."""
    top = max(
        (t for t in tops if dest.path.startswith(t.rstrip("/") + "/")),
        key=len,
        default=os.path.dirname(dest.path),
    )
    out = []
    current = dest.path
    while current != top and current != "/":
        parent = os.path.dirname(current)
        out.append((parent, os.path.basename(current), dest))
        current = parent
    return out


# Closing an inotify instance that had watches waits for the kernel's
# fsnotify grace period (synchronize_srcu): measured here 0.1 ms median and
# 7.7 ms at the 90th percentile, on every run. Removing the watches and
# keeping the instance for the next run costs about 10 us. A forked child
# gets copies of the parent's instances: it must not share their events.
MAX_IDLE = 16
_idle: list[int] = []
_idle_pid = os.getpid()
_idle_lock = threading.Lock()


def _take_instance() -> int:
    global _idle_pid
    with _idle_lock:
        if _idle_pid != os.getpid():
            for fd in _idle:
                os.close(fd)  # the parent's: dropping a copy waits for nothing
            _idle.clear()
            _idle_pid = os.getpid()
        if _idle:
            return _idle.pop()
    fd = _libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
    if fd < 0:
        _unavailable("inotify_init1(IN_NONBLOCK|IN_CLOEXEC)", ctypes.get_errno())
    return fd


def _give_back(fd: int, wds: list[int]) -> None:
    for wd in wds:
        _libc.inotify_rm_watch(fd, wd)
    try:
        while os.read(fd, _READ_BYTES):
            pass  # the removed watches' IN_IGNORED, and anything left
    except OSError:
        pass
    with _idle_lock:
        if _idle_pid == os.getpid() and len(_idle) < MAX_IDLE:
            _idle.append(fd)
            return
    os.close(fd)


def _unavailable(call: str, code: int, directory: str | None = None) -> None:
    if code == errno.EMFILE:
        why = (
            "the caller's inotify instances are used up "
            "(fs.inotify.max_user_instances)"
        )
        fix = (
            "raise it (sysctl -w fs.inotify.max_user_instances=1024), or run fewer "
            "runs with hidden, read-only or protected paths at once"
        )
    elif code == errno.ENOSPC:
        why = "the caller's inotify watches are used up (fs.inotify.max_user_watches)"
        fix = "raise it (sysctl -w fs.inotify.max_user_watches=524288)"
    elif code == errno.EACCES and directory is not None:
        why = f"the caller may not read {directory}"
        fix = (
            "let the caller read that directory, or drop the hidden or read-only "
            "rules below it"
        )
    else:
        why = os.strerror(code)
        fix = "check that the kernel has inotify (CONFIG_INOTIFY_USER)"
    raise SandboxUnavailableError(
        "path_rules",
        f"{call} failed: {why}; without it a host rename over a hidden, read-only "
        f"or protected path during the run would undo the sandbox's mount over it",
        fix,
    )
