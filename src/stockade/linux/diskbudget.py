"""The workspace's disk budget: how much a run may add to it, measured.

The workspace is a directory of the host's file system, bound writable into
the sandbox, and Linux has no per-directory byte quota short of project
quotas (which need a file system set up for them). So the budget is
measured, by the launcher, while the run lasts:

* Inodes are disk too: an empty file, a directory, a symlink or a fifo
  allocates nothing to itself (``st_blocks`` 0 for most) yet takes one of
  the file system's inodes, of which there is a fixed number on ext4. So
  every inode counted is charged at least one block of the file system
  (``statvfs`` ``f_frsize``, 4 KiB on ext4), the *unit*:
  ``max(st_blocks * 512, unit)`` (``inode_charge``). A budget of N MiB
  thus holds at most N * 256 new inodes on ext4; files of a block or more
  cost what they did.
* Trigger: every poll reads the free space and the free inodes of the
  workspace's file system (one ``statvfs``: ``f_bavail``, ``f_favail``).
  The drop since the run started is the drop in free bytes plus the drop
  in free inodes times the unit; only when it is more than the budget can
  the run have exceeded it (a new inode adds its blocks to the first and
  one to the second, never less than its charge).
* Count: then the workspace is walked (without following symlinks, without
  crossing into other file systems) and the charge (above: the allocated
  size, ``st_blocks``, so sparse files count what they really use, and
  ``fallocate`` counts at once, but at least one unit) of every inode whose
  ctime is at or after the run's start, plus what the workspace directory
  itself grew by (it grows with the entries made in it; its size at the
  start is the caller's), is summed, each inode
  once. ctime cannot be set back by the program: any write, truncate,
  chmod, rename or link of a file (and any entry made in or removed from a
  directory) moves it to the present. Directories the walk cannot read are charged at the
  full drop (bytes and inodes, as for the trigger).
* Files the run deleted but still holds (open, or mapped), which no walk
  finds yet which still take space: with the walk, the descriptors of the
  run's processes (``/proc/<pid>/fd``) and their mappings of deleted files
  (``/proc/<pid>/maps``, sized through ``/proc/<pid>/map_files``) are
  looked at; each regular file on the workspace's file system with no link
  left and a ctime at or after the start is added (its charge), once.
  What cannot be looked at (a process whose descriptors the launcher may
  not read, a mapping it cannot size) makes the walk incomplete: charged
  at the full drop.
* Over the budget the launcher ends the run with ``disk_limit``.

Other writers on the same file system only cause extra walks (at most one
per max(0.2 s, 20 times the last walk's duration)). What the walk counts is
a superset of the run's growth: a pre-existing file the run appended to
counts whole. Deleted files count nothing once no process of the run holds
them (their space is free again). TODO(#4): a deleted file whose only
reference is a descriptor in flight in a unix socket (sent with SCM_RIGHTS
and not yet received) is not seen; meanwhile it escapes the budget until
it is received. TODO(#4): a file system that keeps no inode count
(``statvfs`` ``f_files`` 0: btrfs, some network and FUSE file systems)
shows no inode drop, so the trigger sees only the bytes; meanwhile empty
files there are charged only once a byte drop makes a walk happen (btrfs
takes their metadata from chunks of 256 MiB or more, which show as a drop
only when one is allocated). Overshoot is what the program can write
until a walk has counted it: a poll (``LIMIT_POLL_SEC``) starts a walk, and
walks are rate-limited in proportion to their own duration, so it grows with
the tree (docs/limits.md gives measured cases); single files are held to the size
cap exactly by RLIMIT_FSIZE (EFBIG), and the private tmpfs areas by their
size (ENOSPC).

The private tmpfs areas (``TmpfsAreas``) are capped by their size, which the
kernel enforces with ENOSPC; the launcher only needs to see afterwards that
one was full, to report ``disk_limit``. Their inodes are not disk: bubblewrap
mounts them with ``size=`` only (it has no option for ``nr_inodes``), so
each has the kernel's default inode count (half the RAM's pages), and an
empty file or directory there takes no block of the size. What a tmpfs
inode takes is kernel memory (inode and dentry, about 0.5 KiB), charged to
the run's memory cgroup: ``memory_mb`` bounds them (the run ends with
``memory_limit``), not ``disk_mb``. An area out of inodes (ENOSPC too)
counts as full.

Stdlib only; used by the launcher.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable

from . import _sys

_CLOCK_REALTIME_COARSE = getattr(time, "CLOCK_REALTIME_COARSE", 5)

# The unit when the file system reports no block size.
DEFAULT_UNIT = 4096


def inode_charge(st_blocks: int, unit: int) -> int:
    """What one counted inode costs the budget: its allocated size, but at
    least one block of the file system (``unit``), since it takes one of the
    file system's inodes even when empty."""
    return max(st_blocks * 512, unit)

# A tmpfs area with at most this many blocks (pages) free counts as full: a
# writer stopped by ENOSPC leaves less than the block it asked for, and most
# write whole pages.
FULL_SLACK_BLOCKS = 2


class DiskBudget:
    """The measured budget of one run's workspace.

    Args:
        path: the workspace directory (host path).
        limit_bytes: how much the run may add.
        pids: the run's processes now (None: they cannot be listed); their
            deleted files still open or mapped are counted too.
    """

    def __init__(
        self,
        path: str,
        limit_bytes: int,
        pids: Callable[[], list[int] | None] | None = None,
    ) -> None:
        self.path = path
        self.limit = int(limit_bytes)
        self.pids = pids
        self.held = 0  # bytes of deleted files the run held at the last walk
        self.unit = DEFAULT_UNIT  # the charge of an inode; set by _free()
        # the clock file systems stamp ctime with (current_time(): the coarse
        # realtime clock, up to a tick behind time.time_ns()), so that a file
        # changed right after the start is never stamped before it
        self.start_ns = time.clock_gettime_ns(_CLOCK_REALTIME_COARSE)
        try:
            st = os.statvfs(self.path)
        except OSError:
            st = None
        if st is not None and st.f_frsize > 0:
            self.unit = st.f_frsize
        self.free0 = self._free(st)
        try:
            self.top_blocks0 = os.stat(self.path).st_blocks
        except OSError:
            self.top_blocks0 = 0
        self.trigger = self.limit
        self.next_walk = 0.0
        self.measured = 0
        self.inodes = 0  # inodes counted by the last walk
        self.walks = 0

    def _free(self, st: os.statvfs_result | None = None) -> int:
        """Free bytes plus free inodes times the unit (an inode is charged
        at least one unit). Only differences of this are used."""
        if st is None:
            try:
                st = os.statvfs(self.path)
            except OSError:
                return 0
        return st.f_bavail * st.f_frsize + st.f_favail * self.unit

    def check(self, now: float, final: bool = False) -> bool:
        """True when the run has used more than its budget.

        Args:
            now: monotonic time, for rate-limiting walks.
            final: the run is over; walk if the trigger fired, however
                recently the last walk was.
        """
        drop = self.free0 - self._free()
        if drop <= self.trigger:
            return False
        if not final and now < self.next_walk:
            return False
        t0 = time.monotonic()
        measured, complete = self.measure()
        cost = time.monotonic() - t0
        self.next_walk = now + max(0.2, 20 * cost)
        self.walks += 1
        if not complete:
            measured = max(measured, drop)
        self.measured = measured
        if measured > self.limit:
            return True
        # other writers lost the file system that space; fire again once it
        # loses what is left of the budget on top
        self.trigger = drop + (self.limit - measured)
        return False

    def measure(self) -> tuple[int, bool]:
        """The charge (``inode_charge``) of the inodes changed since the
        start (in the tree, and deleted ones the run's processes hold), and
        whether the walk saw everything. Sets ``inodes`` to how many."""
        try:
            top = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            return 0, False
        seen: set[tuple[int, int]] = set()
        total = 0
        inodes = 0
        unit = self.unit
        complete = True
        top_st = os.fstat(top)
        dev = top_st.st_dev
        # the workspace directory itself grows with the entries made in it:
        # what it grew by is the run's (its inode and first block are not)
        seen.add((top_st.st_dev, top_st.st_ino))
        grown = top_st.st_blocks - self.top_blocks0
        if top_st.st_ctime_ns >= self.start_ns and grown > 0:
            total += grown * 512
        # depth first, holding descriptors only along the current path
        first = _entries(top)
        if first is None:
            os.close(top)
            return 0, False
        stack = [(top, iter(first))]
        while stack:
            fd, entries = stack[-1]
            entry = next(entries, None)
            if entry is None:
                os.close(fd)
                stack.pop()
                continue
            name, st = entry
            key = (st.st_dev, st.st_ino)
            if key in seen:
                continue
            seen.add(key)
            if st.st_ctime_ns >= self.start_ns:
                total += inode_charge(st.st_blocks, unit)
                inodes += 1
            if not stat.S_ISDIR(st.st_mode) or st.st_dev != dev:
                continue
            try:
                child = os.open(
                    name,
                    os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                    dir_fd=fd,
                )
                listing = _entries(child)
            except OSError:
                complete = False
                continue
            if listing is None:
                complete = False
                listing = []
            stack.append((child, iter(listing)))
        held, held_inodes, held_complete = self._held_deleted(dev, seen)
        self.held = held
        self.inodes = inodes + held_inodes
        return total + held, complete and held_complete

    def _held_deleted(
        self, dev: int, seen: set[tuple[int, int]]
    ) -> tuple[int, int, bool]:
        """The charge of deleted regular files on ``dev`` that the run's
        processes hold open or mapped, how many they are, and whether every
        process could be looked at."""
        if self.pids is None:
            return 0, 0, True
        pids = self.pids()
        if pids is None:
            return 0, 0, False
        total = 0
        inodes = 0
        complete = True
        wanted = f"{os.major(dev):02x}:{os.minor(dev):02x}"

        def charge(st: os.stat_result) -> None:
            nonlocal total, inodes
            key = (st.st_dev, st.st_ino)
            if (
                stat.S_ISREG(st.st_mode)
                and st.st_nlink == 0
                and st.st_dev == dev
                and st.st_ctime_ns >= self.start_ns
                and key not in seen
            ):
                seen.add(key)
                total += inode_charge(st.st_blocks, self.unit)
                inodes += 1

        for pid in pids:
            fd_dir = f"/proc/{pid}/fd"
            try:
                names = os.listdir(fd_dir)
            except FileNotFoundError:
                continue  # exited meanwhile: its files are closed
            except OSError:
                complete = False
                continue
            for name in names:
                try:
                    charge(os.stat(f"{fd_dir}/{name}"))  # follows the magic link
                except OSError:
                    continue  # closed meanwhile, or not a file
            try:
                with open(f"/proc/{pid}/maps", encoding="utf-8", errors="replace") as fh:
                    maps = fh.read().splitlines()
            except FileNotFoundError:
                continue
            except OSError:
                complete = False
                continue
            for line in maps:
                if not line.endswith(" (deleted)"):
                    continue
                fields = line.split(None, 5)
                if len(fields) < 6 or fields[4] == "0":
                    continue
                try:
                    # map_files needs CAP_SYS_ADMIN (a root launcher)
                    charge(os.stat(f"/proc/{pid}/map_files/{fields[0]}"))
                except FileNotFoundError:
                    continue
                except OSError:
                    if fields[3] == wanted:
                        complete = False  # on the workspace's file system, size unknown
        return total, inodes, complete


def _entries(fd: int) -> list[tuple[str, os.stat_result]] | None:
    """(name, lstat) of a directory's entries, or None if unreadable."""
    try:
        with os.scandir(fd) as it:
            out = []
            for entry in it:
                try:
                    out.append((entry.name, entry.stat(follow_symlinks=False)))
                except OSError:
                    continue
            return out
    except OSError:
        return None


class TmpfsAreas:
    """The sandbox's size-capped tmpfs areas, to tell afterwards whether one
    was full.

    ``open`` is called when the program's execve is seen (before any of its
    code runs; bubblewrap has finished the mount view by then) with the pid
    of a process in the sandbox: each area is opened ``O_PATH`` through
    ``/proc/<pid>/root`` and kept only if it is a tmpfs of the cap's size,
    that is, the area bubblewrap mounted for the run. The descriptor pins
    the superblock, so ``full`` can ``fstatfs`` it after the sandbox is
    gone. A few syscalls per run: one open and one fstatfs per area, one
    fstatfs per area at the end.

    Args:
        paths: the areas' paths inside the sandbox.
        size_bytes: each area's cap (bubblewrap ``--size``).
    """

    def __init__(self, paths: list[str], size_bytes: int) -> None:
        self.paths = list(paths)
        self.size = int(size_bytes)
        self.fds: dict[str, int] = {}
        self.problems: list[str] = []
        self.opened = False

    def open(self, pid: int, *, wait_for_view: bool = False) -> bool:
        """Open the areas as ``pid`` sees them. Returns False only when
        ``wait_for_view`` is set and the mount view is not finished yet
        (its root is not yet bubblewrap's read-only tmpfs): try again later.
        """
        root = f"/proc/{pid}/root"
        if wait_for_view:
            try:
                top = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            except OSError as err:
                self.problems.append(f"{root}: {err.strerror}")
                self.opened = True
                return True
            try:
                st = _sys.fstatfs(top)
            except OSError:
                return False
            finally:
                os.close(top)
            if st.f_type != _sys.TMPFS_MAGIC or not st.f_flags & _sys.ST_RDONLY:
                return False
        for path in self.paths:
            try:
                # O_NOFOLLOW: the area itself, never where a link in it points
                fd = os.open(
                    root + path, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
                )
            except OSError as err:
                self.problems.append(f"{path}: {err.strerror}")
                continue
            try:
                st = _sys.fstatfs(fd)
            except OSError as err:
                os.close(fd)
                self.problems.append(f"{path}: {err}")
                continue
            total = st.f_blocks * st.f_bsize
            if st.f_type != _sys.TMPFS_MAGIC or abs(total - self.size) >= max(st.f_bsize, 1):
                os.close(fd)
                self.problems.append(
                    f"{path}: not the run's tmpfs (type {st.f_type:#x}, {total} bytes)"
                )
                continue
            self.fds[path] = fd
        self.opened = True
        return True

    def full(self) -> list[dict[str, int | str]]:
        """The areas that are full (or within ``FULL_SLACK_BLOCKS``), or
        out of inodes (ENOSPC as well; the kernel's default count is large,
        so ``memory_mb`` usually stops the run first)."""
        out: list[dict[str, int | str]] = []
        for path, fd in self.fds.items():
            try:
                st = _sys.fstatfs(fd)
            except OSError:
                continue
            if st.f_bavail <= FULL_SLACK_BLOCKS or (st.f_files and not st.f_ffree):
                out.append({
                    "area": path,
                    "size_bytes": st.f_blocks * st.f_bsize,
                    "free_bytes": st.f_bavail * st.f_bsize,
                    "free_inodes": st.f_ffree,
                })
        return out

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()
