"""Answering seccomp user notifications: how every denial gets its name.

The filter a run is launched with (``seccomp.py``) returns
SECCOMP_RET_USER_NOTIF for each call the policy denies. The kernel then
parks the calling thread and hands the call (number, architecture, pid,
arguments) to whoever holds the filter's listener: the launcher. The
supervisor answers each one with the policy's errno, or kills the calling
process for calls the policy treats as fatal, and counts it by name. A
denied call never executes: if the launcher dies, the listener closes and
every pending and later notified call fails with ENOSYS.

The filter is installed before bubblewrap starts, because only a process
that installs a filter receives its listener. bubblewrap itself needs some
denied calls (mount, pivot_root, umount2, unshare, ...) to build the
sandbox. Its dozens of mounts never reach the supervisor: the filter allows
the argument patterns bubblewrap uses, and a second filter without a
listener, which bubblewrap installs right before it execs the program,
refuses those patterns to the program, unnamed (see seccomp.py). For what is
still notified (pivot_root, umount2, unshare, and in strict the fork of the
program) the supervisor has two phases:

* set-up: every notification is allowed to continue. Only bubblewrap runs
  now; no code of the program exists yet.
* program: begins at the first execve/execveat that is not made by
  bubblewrap's monitor. That call is the program's start (its pid is the
  program's); it and later execs continue, every other notified call is
  denied.

Without bubblewrap (``monitor_pid`` None) the launcher child's own exec of
the program is the start. Calls from bubblewrap's monitor (the launcher's
child, outside the sandbox's pid namespace, unreachable from inside) always
continue. Nothing inside the sandbox is trusted: not even its pid 1, whose
memory the program could write.

Kill means the calling process, as SECCOMP_RET_KILL_PROCESS would do: the
supervisor opens a pidfd of the waiting thread, checks that the
notification is still pending (so the pid cannot have been reused), and
sends SIGKILL. When that process is the program itself (not one of its
children) the whole run ends with termination ``syscall_denied``.

Calls of a foreign ABI (x32 numbers, 32-bit calls) fail the filter's
architecture check, reach the supervisor in both phases alike, and are
killed in the program phase.

The kernel guarantees a program cannot override our answers with a filter of
its own: a second listener in the same filter chain is refused (EBUSY), and
SECCOMP_RET_USER_NOTIF outranks SECCOMP_RET_TRACE, LOG and ALLOW.

Stdlib only: runs inside the launcher.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import select
import signal
import struct
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from . import syscall_groups as data

# ioctl numbers: _IOWR('!', 0, struct seccomp_notif),
# _IOWR('!', 1, struct seccomp_notif_resp), _IOW('!', 2, __u64),
# _IOW('!', 4, __u64); the same on x86_64 and aarch64.
SECCOMP_IOCTL_NOTIF_RECV = 0xC0502100
SECCOMP_IOCTL_NOTIF_SEND = 0xC0182101
SECCOMP_IOCTL_NOTIF_ID_VALID = 0x40082102
SECCOMP_IOCTL_NOTIF_SET_FLAGS = 0x40082104
SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP = 1
SECCOMP_USER_NOTIF_FLAG_CONTINUE = 1
PIDFD_THREAD = os.O_EXCL  # Linux 6.9: a pidfd for one thread

_NOTIF = struct.Struct("<QIIiIQ6Q")  # id, pid, flags, nr, arch, ip, args[6]
_RESP = struct.Struct("<QqiI")       # id, val, error, flags
_U64 = struct.Struct("<Q")
assert _NOTIF.size == 80 and _RESP.size == 24

AUDIT_ARCH_NAMES = {
    0xC000003E: "x86_64",
    0x40000003: "i386",
    0xC00000B7: "aarch64",
    0x40000028: "arm",
}
AUDIT_ARCH_X86_64 = 0xC000003E
AUDIT_ARCH_X32 = 0x4000003E  # libseccomp's token for the x32 ABI
X32_SYSCALL_BIT = 0x40000000

KILL = "kill"

_MAX_DETAILS = 4


def action_key(arch: int, nr: int) -> str:
    """How the spec names a (architecture, syscall number) pair."""
    return f"{arch}:{nr}"


class Supervisor:
    """Answers the notifications of one run's filter.

    Spec (from ``SyscallFilter.launcher_spec``, JSON):
      ``arch``: the native audit architecture; anything else is a foreign
      ABI and killed. ``actions``: {"<arch>:<nr>": "kill" | errno}, what to
      answer in the program phase; ``default``: errno for a notified call
      missing from ``actions``; ``names``: {"<arch>:<nr>": "name"} for calls
      libseccomp cannot name; ``start_calls``: keys of execve and execveat,
      which start the program phase and always continue;
      ``sync_wake_up``: "setup" (default: during bubblewrap's set-up only),
      "always" or "never", for measurements.
    """

    def __init__(
        self,
        fd: int,
        spec: dict[str, Any],
        *,
        monitor_pid: int | None,
        on_kill: Callable[[str], None],
        on_program: Callable[[int], None] | None = None,
    ) -> None:
        self.fd = fd
        self.monitor_pid = monitor_pid
        self.on_kill = on_kill
        # called with the program's pid at its start, while its execve still
        # waits for our answer: no code of the program has run yet
        self.on_program = on_program
        self.arch = int(spec.get("arch") or AUDIT_ARCH_X86_64)
        self.actions: dict[str, Any] = dict(spec.get("actions") or {})
        self.names: dict[str, str] = dict(spec.get("names") or {})
        self.default_errno = int(spec.get("default", errno.ENOSYS))
        self.start_calls = set(spec.get("start_calls") or ())
        self.program_started = False
        self.t_program: float | None = None
        self.program_pid: int | None = None
        # set-up notifications by call number: each costs a round trip
        self.setup_calls: Counter[int] = Counter()
        self.closed = False
        self.counts: Counter[tuple[str, str]] = Counter()
        self.details: dict[tuple[str, str], Counter[str]] = {}
        self._buf = bytearray(_NOTIF.size)
        self._poll = select.poll()
        self._poll.register(fd, select.POLLIN)
        self._sync_mode = spec.get("sync_wake_up", "setup")
        self._sync = False
        if self._sync_mode == "always":
            self._set_sync(True)

    def handle_one(self) -> bool:
        """Answer one pending notification. False once the filter is unused."""
        events = self._poll.poll(0)
        if not events:
            return True
        if not events[0][1] & select.POLLIN:
            # POLLHUP without POLLIN: no task uses the filter any more. A
            # RECV now would block for ever.
            return False
        return self._receive_and_answer()

    def _receive_and_answer(self) -> bool:
        buf = self._buf
        buf[:] = bytes(_NOTIF.size)  # the kernel insists on a zeroed buffer
        try:
            fcntl.ioctl(self.fd, SECCOMP_IOCTL_NOTIF_RECV, buf, True)
        except OSError as err:
            # ENOENT: the caller died while we were waking up
            return err.errno in (errno.ENOENT, errno.EINTR)
        notif_id, pid, _flags, nr, arch, _ip, *args = _NOTIF.unpack(buf)
        key = action_key(arch, nr)
        x32 = arch == AUDIT_ARCH_X86_64 and bool(nr & X32_SYSCALL_BIT)
        foreign = arch != self.arch or x32

        if pid == self.monitor_pid and not foreign:
            self._continue(notif_id)
            if not self.program_started and self._sync_mode == "setup":
                self._set_sync(True)
        elif not self.program_started:
            if key in self.start_calls:
                self.program_started = True
                self.program_pid = pid
                self.t_program = time.monotonic()
                if self._sync_mode == "setup":
                    self._set_sync(False)
                if self.on_program is not None:
                    self.on_program(pid)
            else:
                self.setup_calls[nr] += 1
            self._continue(notif_id)
        elif key in self.start_calls:
            self._continue(notif_id)
        elif foreign:
            self._kill(notif_id, pid, _foreign_name(arch, nr))
        else:
            self._deny(notif_id, pid, key, arch, nr, args)
        return True

    def _deny(
        self, notif_id: int, pid: int, key: str, arch: int, nr: int, args: list[int]
    ) -> None:
        action = self.actions.get(key, self.default_errno)
        name = self.names.get(key) or _syscall_name(arch, nr)
        detail = _detail(name, args)
        if action == KILL:
            self._kill(notif_id, pid, name, detail)
            return
        code = int(action)
        self._count(name, f"errno:{errno.errorcode.get(code, code)}", detail)
        self._respond(notif_id, code)

    def _kill(self, notif_id: int, pid: int, name: str, detail: str = "") -> None:
        """Kill the process that made the call (all its threads)."""
        self._count(name, KILL, detail)
        tgid = _thread_group(pid)
        pidfd = _pidfd_for_thread(pid, tgid)
        try:
            if pidfd is not None and self._id_valid(notif_id):
                # Still waiting for our answer: the pidfd is the caller's.
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        except OSError:
            pass
        finally:
            if pidfd is not None:
                os.close(pidfd)
        if tgid is not None and tgid == self.program_pid:
            self.on_kill("syscall_denied")
        # Answer too, in case the kill failed: the call must not run.
        self._respond(notif_id, errno.EPERM)

    def _set_sync(self, on: bool) -> None:
        """Synchronous wake-ups: the notifying task hands its CPU to us and
        we hand it back. Worth it for a burst of notifications (bubblewrap's
        set-up: measured 15 us instead of 60 us each in isolation, and about
        half the filter's cost per launch). Off outside the burst, so that
        the program's rare notifications (its execs, its denials) do not
        pull it onto the launcher's CPU."""
        if on == self._sync:
            return
        try:
            flags = SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP if on else 0
            fcntl.ioctl(self.fd, SECCOMP_IOCTL_NOTIF_SET_FLAGS, flags)
            self._sync = on
        except OSError:
            self._sync_mode = "never"  # before Linux 6.6

    def _count(self, name: str, action: str, detail: str) -> None:
        key = (name, action)
        self.counts[key] += 1
        if detail:
            self.details.setdefault(key, Counter())[detail] += 1

    def _id_valid(self, notif_id: int) -> bool:
        try:
            request = bytearray(_U64.pack(notif_id))
            fcntl.ioctl(self.fd, SECCOMP_IOCTL_NOTIF_ID_VALID, request, True)
        except OSError:
            return False
        return True

    def _continue(self, notif_id: int) -> None:
        self._send(_RESP.pack(notif_id, 0, 0, SECCOMP_USER_NOTIF_FLAG_CONTINUE))

    def _respond(self, notif_id: int, code: int) -> None:
        self._send(_RESP.pack(notif_id, 0, -code, 0))

    def _send(self, resp: bytes) -> None:
        try:
            fcntl.ioctl(self.fd, SECCOMP_IOCTL_NOTIF_SEND, bytearray(resp), True)
        except OSError:
            pass  # ENOENT: the task was killed meanwhile

    def violations(self) -> list[dict[str, Any]]:
        out = []
        for (name, action), count in sorted(self.counts.items()):
            details = self.details.get((name, action))
            text = ""
            if details:
                parts = [
                    f"{d} x{n}" if n > 1 else d
                    for d, n in details.most_common(_MAX_DETAILS)
                ]
                if len(details) > _MAX_DETAILS:
                    parts.append("...")
                text = ", ".join(parts)
            out.append(
                {"mechanism": "seccomp", "what": name, "action": action, "count": count,
                 "detail": text}
            )
        return out

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            os.close(self.fd)


# -- naming --------------------------------------------------------------------

_names: dict[tuple[int, int], str] = {}
_libseccomp: Any = None
_libc = ctypes.CDLL(None)


def _syscall_name(arch: int, nr: int) -> str:
    """The call's name from libseccomp's tables, or "<arch>:<nr>"."""
    global _libseccomp
    cached = _names.get((arch, nr))
    if cached is not None:
        return cached
    name = None
    try:
        if _libseccomp is None:
            # Loaded on the first denial only; the launcher starts without it.
            _libseccomp = ctypes.CDLL("libseccomp.so.2")
            resolve = _libseccomp.seccomp_syscall_resolve_num_arch
            resolve.argtypes = (ctypes.c_uint32, ctypes.c_int)
            resolve.restype = ctypes.c_void_p
        ptr = _libseccomp.seccomp_syscall_resolve_num_arch(arch, nr)
        if ptr:
            name = ctypes.string_at(ptr).decode()
            _libc.free(ctypes.c_void_p(ptr))
    except (OSError, AttributeError):
        name = None
    if not name:
        name = f"{AUDIT_ARCH_NAMES.get(arch, hex(arch))}:{nr}"
    _names[(arch, nr)] = name
    return name


def _foreign_name(arch: int, nr: int) -> str:
    if arch == AUDIT_ARCH_X86_64 and nr & X32_SYSCALL_BIT:
        name = _syscall_name(AUDIT_ARCH_X32, nr)
        if name.startswith("0x") or ":" in name:
            name = str(nr & ~X32_SYSCALL_BIT)
        return f"x32:{name}"
    label = AUDIT_ARCH_NAMES.get(arch, hex(arch))
    name = _syscall_name(arch, nr)
    return name if name.startswith(f"{label}:") else f"{label}:{name}"


_FAMILIES = {
    1: "AF_UNIX", 2: "AF_INET", 10: "AF_INET6", 16: "AF_NETLINK", 17: "AF_PACKET",
    3: "AF_AX25", 4: "AF_IPX", 5: "AF_APPLETALK", 9: "AF_X25", 15: "AF_KEY",
    29: "AF_CAN", 30: "AF_TIPC", 31: "AF_BLUETOOTH", 38: "AF_ALG", 40: "AF_VSOCK",
    44: "AF_XDP", 45: "AF_MCTP",
}
_IOCTLS = {value: name for name, value in data.IOCTL_DENIED.items()}
_NS_FLAGS = {
    0x00020000: "CLONE_NEWNS",
    0x02000000: "CLONE_NEWCGROUP",
    0x04000000: "CLONE_NEWUTS",
    0x08000000: "CLONE_NEWIPC",
    0x10000000: "CLONE_NEWUSER",
    0x20000000: "CLONE_NEWPID",
    0x40000000: "CLONE_NEWNET",
    0x00000080: "CLONE_NEWTIME",  # unshare only: in clone's flags it is CSIGNAL
}
_MODE_ARG = {
    "chmod": 1, "fchmod": 1, "fchmodat": 2, "fchmodat2": 2, "creat": 1, "mkdir": 1,
    "mkdirat": 2, "mknod": 1, "mknodat": 2, "open": 2, "openat": 3,
}


# the second tier's calls on other processes (syscall_groups.SELF_ONLY_BY_PID)
_PRIO_WHICH = {0: "PRIO_PROCESS", 1: "PRIO_PGRP", 2: "PRIO_USER"}
_IOPRIO_WHO = {1: "IOPRIO_WHO_PROCESS", 2: "IOPRIO_WHO_PGRP", 3: "IOPRIO_WHO_USER"}
_BY_PID = frozenset(data.SELF_ONLY_BY_PID) - {"setpriority", "ioprio_set"}


def _detail(name: str, args: list[int]) -> str:
    """A short note on the arguments that made a call denied."""
    if name in ("socket", "socketpair"):
        family = args[0] & 0xFFFFFFFF
        return _FAMILIES.get(family, f"family {family}")
    if name == "ioctl":
        request = args[1] & 0xFFFFFFFF
        return _IOCTLS.get(request, f"request {request:#x}")
    if name in ("clone", "unshare"):
        flags = args[0] & 0xFFFFFFFF
        names = [
            n for bit, n in _NS_FLAGS.items()
            if flags & bit and (name == "unshare" or bit != 0x80)
        ]
        if names:
            return "|".join(names)
        return "new process" if name == "clone" else f"flags {flags:#x}"
    if name == "personality":
        return f"{args[0] & 0xFFFFFFFF:#x}"
    if name in ("setpriority", "ioprio_set"):
        which, who = args[0] & 0xFFFFFFFF, args[1] & 0xFFFFFFFF
        kinds = _PRIO_WHICH if name == "setpriority" else _IOPRIO_WHO
        kind = kinds.get(which, f"which {which}")
        return kind if who == 0 else f"{kind} {who}"
    if name in _BY_PID:
        pid = args[0] & 0xFFFFFFFF
        return f"pid {pid}" if pid else ""
    index = _MODE_ARG.get(name)
    if index is not None:
        mode = args[index] & 0o7777
        if mode & 0o6000:
            return f"mode {mode:04o}"
    return ""


def _thread_group(tid: int) -> int | None:
    try:
        with open(f"/proc/{tid}/status", "rb") as fh:
            for line in fh:
                if line.startswith(b"Tgid:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def _pidfd_for_thread(tid: int, tgid: int | None) -> int | None:
    for target, flags in ((tid, PIDFD_THREAD), (tgid, 0)):
        if target is None:
            continue
        try:
            return os.pidfd_open(target, flags)
        except OSError:
            continue
    return None
