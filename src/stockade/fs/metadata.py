"""What the second tier cannot keep read-only: mode, owner, times, xattrs.

Landlock's rights cover reading, writing, creating, removing and renaming,
not ``chmod``, ``chown``, ``utime`` or extended attributes (Linux 6.x, up to
ABI 7). A program that owns a file (a root caller's workspace is idmapped to
the sandbox uid; an unprivileged caller's files are its own) can thus, on the
second tier, ``chmod +x .git/hooks/pre-commit`` (an inert hook becomes one
git runs), ``chmod 666`` a read-only file, or ``touch -d`` a hidden one,
although it can read or write none of them.

So before a second-tier run the entries the policy names are recorded
(``lstat``, no walk): each read-only, hidden and protected path, and the
direct entries of a protected directory (``.git/hooks/*``). After the run,
once its tree is gone, each that is still the same file (device, inode) and
whose mode, owner, modification time or extended attributes changed is put
back as recorded and reported; a hook that became executable is moved aside
instead (``NAME.stockade-quarantine-RUNID``), as a planted one would be.
TODO(#6): entries deeper in a read-only or hidden directory are not
recorded (that would walk the tree), so a ``chmod`` inside a ``--ro``
directory stays (docs/filesystem.md, known limitations).

Access times are not compared (a read changes them) but are put back with
the rest; a directory's times are not compared (the host may add entries
during the run), nor those of a file whose size changed (the host wrote it;
the run has no right to).
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass, field

from .guard import Finding, open_nofollow, quarantine

# A run may name at most 512 rules (policy.MAX_RULES); a protected
# directory adds its entries. Past this many the rest are not recorded.
MAX_RECORDS = 2048
_XATTR_MAX_BYTES = 64 * 1024


@dataclass(frozen=True)
class _Record:
    path: str
    ident: tuple[int, int]
    mode: int
    uid: int
    gid: int
    times: tuple[int, int]  # atime, mtime (ns)
    xattrs: dict[str, bytes] | None  # None: not readable here
    hook: bool
    # a file's size: the run cannot change it here (no write right), so a
    # new size means the host wrote it, and its new times are the host's
    size: int | None


@dataclass
class Metadata:
    """The recorded entries of one second-tier run."""

    records: list[_Record] = field(default_factory=list)
    skipped: int = 0

    def __bool__(self) -> bool:
        return bool(self.records)

    def record(self, path: str, *, hook: bool = False) -> None:
        """Record ``path`` (not following a final link) if it exists."""
        if len(self.records) >= MAX_RECORDS:
            self.skipped += 1
            return
        try:
            st = os.lstat(path)
        except OSError:
            return
        if stat.S_ISLNK(st.st_mode):
            return  # a link's own mode means nothing; its target has a rule
        self.records.append(
            _Record(
                path,
                (st.st_dev, st.st_ino),
                stat.S_IMODE(st.st_mode),
                st.st_uid,
                st.st_gid,
                (st.st_atime_ns, st.st_mtime_ns),
                _xattrs(path, follow=False),
                hook and stat.S_ISREG(st.st_mode),
                st.st_size if stat.S_ISREG(st.st_mode) else None,
            )
        )

    def check(self, run_id: str) -> list[Finding]:
        """Put back what changed; one finding per changed entry."""
        findings: list[Finding] = []
        parents: dict[str, int | None] = {}  # one walk per directory
        try:
            for rec in self.records:
                directory = os.path.dirname(rec.path)
                if directory not in parents:
                    try:
                        parents[directory] = open_nofollow(directory)
                    except OSError:
                        parents[directory] = None  # gone or replaced
                parent = parents[directory]
                if parent is None:
                    continue  # not the file we saw
                try:
                    found = _check_one(rec, parent, run_id)
                except OSError as err:
                    found = Finding(
                        rec.path,
                        "could not be checked after the run",
                        f"not restored ({err.strerror or err})",
                    )
                if found is not None:
                    findings.append(found)
        finally:
            for fd in parents.values():
                if fd is not None:
                    os.close(fd)
        return findings


def _check_one(rec: _Record, parent: int, run_id: str) -> Finding | None:
    name = os.path.basename(rec.path)
    try:
        fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
    except FileNotFoundError:
        return None
    try:
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != rec.ident:
            return None  # another file now: not what the run could touch
        proc = f"/proc/self/fd/{fd}"
        changed = []
        mode = stat.S_IMODE(st.st_mode)
        if mode != rec.mode:
            changed.append(f"mode {rec.mode:04o} -> {mode:04o}")
        if (st.st_uid, st.st_gid) != (rec.uid, rec.gid):
            changed.append(
                f"owner {rec.uid}:{rec.gid} -> {st.st_uid}:{st.st_gid}"
            )
        # A directory's times move when the host adds or removes entries,
        # a file's when the host writes it: only a file of the same size
        # counts (the run cannot write it)
        times = rec.times
        if rec.size is None or rec.size != st.st_size:
            times = (st.st_atime_ns, st.st_mtime_ns)
        elif st.st_mtime_ns != rec.times[1]:
            changed.append("modification time")
        # the descriptor's magic link leads to the file itself
        now = _xattrs(proc, follow=True) if rec.xattrs is not None else None
        if now is not None and now != rec.xattrs:
            changed.append("extended attributes")
        if not changed:
            return None
        what = f"{', '.join(changed)} changed during the run"
        if rec.hook and mode & 0o111 and not rec.mode & 0o111:
            # an inert hook made executable: git would run it
            os.close(fd)
            fd = -1
            moved = quarantine(parent, name, run_id)
            return Finding(
                rec.path, f"hook made executable ({what})", f"moved to {moved}"
            )
        failed = []
        if now is not None and rec.xattrs is not None:
            failed += _put_xattrs(proc, rec.xattrs, now)
        if (st.st_uid, st.st_gid) != (rec.uid, rec.gid):
            try:
                os.chown(proc, rec.uid, rec.gid)
            except OSError as err:
                failed.append(f"owner ({err.strerror})")
        # after chown (which clears set-id bits) and xattrs (an ACL
        # changes the group bits)
        os.chmod(proc, rec.mode)
        os.utime(proc, ns=times)
        if failed:
            return Finding(rec.path, what, f"restored except {', '.join(failed)}")
        return Finding(rec.path, what, "restored")
    finally:
        if fd >= 0:
            os.close(fd)


def _xattrs(path: str, *, follow: bool) -> dict[str, bytes] | None:
    """The extended attributes this process can read, or None where the
    file system has none or they cannot be listed."""
    try:
        names = os.listxattr(path, follow_symlinks=follow)
    except OSError:
        return None
    out: dict[str, bytes] = {}
    for name in names:
        try:
            value = os.getxattr(path, name, follow_symlinks=follow)
        except OSError as err:
            if err.errno in (errno.ENODATA, errno.EPERM, errno.EACCES):
                continue
            return None
        if len(value) <= _XATTR_MAX_BYTES:
            out[name] = value
    return out


def _put_xattrs(
    path: str, before: dict[str, bytes], now: dict[str, bytes]
) -> list[str]:
    """Put the recorded attributes back; returns what could not be."""
    failed = []
    for name in sorted(now.keys() - before.keys()):
        try:
            os.removexattr(path, name)
        except OSError as err:
            failed.append(f"{name} ({err.strerror})")
    for name, value in sorted(before.items()):
        if now.get(name) != value:
            try:
                os.setxattr(path, name, value)
            except OSError as err:
                failed.append(f"{name} ({err.strerror})")
    return failed
