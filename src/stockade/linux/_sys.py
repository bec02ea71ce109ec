"""Thin ctypes wrappers for the Linux calls the standard library lacks.

Only what the launcher needs between fork and exec. Every wrapper raises
``OSError`` with errno and the call's name, so that a set-up failure can be
reported as "the exact call and flags" that failed. Stdlib only: the
launcher imports this module and must start fast.
"""

from __future__ import annotations

import ctypes
import os
import platform

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long

# Syscall numbers that differ between architectures. Calls numbered 424 and
# above are the same on every architecture.
_NR = {
    "x86_64": {"seccomp": 317},
    "aarch64": {"seccomp": 277},
}
NR_OPEN_TREE = 428
NR_MOVE_MOUNT = 429
NR_CLOSE_RANGE = 436
NR_MOUNT_SETATTR = 442

PR_SET_NO_NEW_PRIVS = 38
PR_SET_CHILD_SUBREAPER = 36
PR_SET_PDEATHSIG = 1

SECCOMP_SET_MODE_FILTER = 1
SECCOMP_FILTER_FLAG_NEW_LISTENER = 1 << 3

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
MS_REC = 16384
MS_SLAVE = 1 << 19
OPEN_TREE_CLONE = 1
OPEN_TREE_CLOEXEC = os.O_CLOEXEC
AT_FDCWD = -100
AT_EMPTY_PATH = 0x1000
AT_RECURSIVE = 0x8000
MOVE_MOUNT_F_EMPTY_PATH = 0x4
MOUNT_ATTR_IDMAP = 0x00100000
MOUNT_ATTR_NOSUID = 0x00000002
MOUNT_ATTR_NODEV = 0x00000004


def machine() -> str:
    return platform.machine()


def _check(result: int, call: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{call}: {os.strerror(err)}")
    return result


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    return _check(
        _libc.prctl(option, ctypes.c_ulong(arg2), ctypes.c_ulong(arg3),
                    ctypes.c_ulong(arg4), ctypes.c_ulong(arg5)),
        f"prctl({option})",
    )


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def seccomp_set_filter(bpf: bytes, flags: int) -> int:
    """Install a classic-BPF seccomp filter; returns the listener fd if asked.

    The caller must have set no_new_privs (or hold CAP_SYS_ADMIN).
    """
    numbers = _NR.get(machine())
    if numbers is None:
        raise OSError(38, f"seccomp: architecture {machine()} not supported by stockade")
    if len(bpf) % 8:
        raise ValueError("BPF program length must be a multiple of 8")
    buf = ctypes.create_string_buffer(bpf, len(bpf))
    prog = _SockFprog(len(bpf) // 8, ctypes.addressof(buf))
    flag_text = "NEW_LISTENER" if flags & SECCOMP_FILTER_FLAG_NEW_LISTENER else str(flags)
    return _check(
        _libc.syscall(numbers["seccomp"], SECCOMP_SET_MODE_FILTER, flags, ctypes.byref(prog)),
        f"seccomp(SECCOMP_SET_MODE_FILTER, {flag_text})",
    )


class SeccompProgram:
    """A filter made ready to install before the fork.

    Every Python object the launcher child touches after ``fork()`` costs a
    copy-on-write page fault; building the program structure here, in the
    parent, and making one call in the child measured 150-250 us less per
    launch than building it in the child.
    """

    def __init__(self, bpf: bytes, flags: int) -> None:
        numbers = _NR.get(machine())
        if numbers is None:
            message = f"seccomp: architecture {machine()} not supported by stockade"
            raise OSError(38, message)
        if len(bpf) % 8:
            raise ValueError("BPF program length must be a multiple of 8")
        self._buffer = ctypes.create_string_buffer(bpf, len(bpf))
        self._prog = _SockFprog(len(bpf) // 8, ctypes.addressof(self._buffer))
        nr = numbers["seccomp"]
        self._args = (nr, SECCOMP_SET_MODE_FILTER, flags, ctypes.byref(self._prog))
        self._flags = flags

    def install(self) -> int:
        """Install the filter in the calling thread; the listener fd if asked."""
        result = _libc.syscall(*self._args)
        if result < 0:
            err = ctypes.get_errno()
            listener = self._flags & SECCOMP_FILTER_FLAG_NEW_LISTENER
            flag_text = "NEW_LISTENER" if listener else str(self._flags)
            call = f"seccomp(SECCOMP_SET_MODE_FILTER, {flag_text})"
            raise OSError(err, f"{call}: {os.strerror(err)}")
        return result


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags), f"unshare({flags:#x})")


def mount(source: str | None, target: str, fstype: str | None, flags: int) -> None:
    _check(
        _libc.mount(
            os.fsencode(source) if source else None,
            os.fsencode(target),
            os.fsencode(fstype) if fstype else None,
            ctypes.c_ulong(flags),
            None,
        ),
        f"mount({source!r}, {target!r}, flags={flags:#x})",
    )


def open_tree(path: str, flags: int) -> int:
    return _check(
        _libc.syscall(NR_OPEN_TREE, AT_FDCWD, os.fsencode(path), ctypes.c_uint(flags)),
        f"open_tree({path!r}, {flags:#x})",
    )


class _MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


def mount_setattr_idmap(tree_fd: int, userns_fd: int, extra: int = 0) -> None:
    attr = _MountAttr(MOUNT_ATTR_IDMAP | extra, 0, 0, userns_fd)
    _check(
        _libc.syscall(NR_MOUNT_SETATTR, tree_fd, b"", AT_EMPTY_PATH,
                      ctypes.byref(attr), ctypes.sizeof(attr)),
        "mount_setattr(MOUNT_ATTR_IDMAP)",
    )


def move_mount(tree_fd: int, target: str) -> None:
    _check(
        _libc.syscall(NR_MOVE_MOUNT, tree_fd, b"", AT_FDCWD, os.fsencode(target),
                      MOVE_MOUNT_F_EMPTY_PATH),
        f"move_mount(-> {target!r})",
    )


TMPFS_MAGIC = 0x01021994
ST_RDONLY = 1


class Statfs(ctypes.Structure):
    """struct statfs of the 64-bit ABIs (x86_64, aarch64); os.statvfs has
    no f_type."""

    _fields_ = [
        ("f_type", ctypes.c_long),
        ("f_bsize", ctypes.c_long),
        ("f_blocks", ctypes.c_ulong),
        ("f_bfree", ctypes.c_ulong),
        ("f_bavail", ctypes.c_ulong),
        ("f_files", ctypes.c_ulong),
        ("f_ffree", ctypes.c_ulong),
        ("f_fsid", ctypes.c_int * 2),
        ("f_namelen", ctypes.c_long),
        ("f_frsize", ctypes.c_long),
        ("f_flags", ctypes.c_long),
        ("f_spare", ctypes.c_long * 4),
    ]


def fstatfs(fd: int) -> Statfs:
    """fstatfs(2); works on O_PATH descriptors (Linux 3.12+)."""
    buf = Statfs()
    _check(_libc.fstatfs(fd, ctypes.byref(buf)), f"fstatfs({fd})")
    return buf


def close_range(first: int, last: int = 0xFFFFFFFF) -> None:
    """Close every fd from first to last; falls back to os.closerange."""
    result = _libc.syscall(NR_CLOSE_RANGE, ctypes.c_uint(first), ctypes.c_uint(last), 0)
    if result < 0:
        os.closerange(first, min(last, os.sysconf("SC_OPEN_MAX")) + 1)
