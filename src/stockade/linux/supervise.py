"""Answering seccomp user notifications: how every denial gets its name.

The filter a run is launched with returns SECCOMP_RET_USER_NOTIF for each
call the policy denies. The kernel then parks the calling thread and hands
the call (number, architecture, pid) to whoever holds the filter's listener:
the launcher. The supervisor answers each one with the policy's errno, or
kills the run for calls the policy treats as fatal, and counts it by name.
A denied call never executes: if the launcher dies, the listener closes and
every pending and later notified call fails with ENOSYS.

The filter is installed before bubblewrap starts, because only a process
that installs a filter receives its listener. bubblewrap itself needs some
denied calls (mount, pivot_root, unshare, ...) to build the sandbox, so the
supervisor has two phases:

* set-up: every notification is allowed to continue. Only bubblewrap runs
  now; no code of the program exists yet.
* program: begins at the first execve/execveat that is not bubblewrap's own
  exec. That call is the program's start; it and later execs continue, every
  other notified call is denied.

Calls from bubblewrap's monitor (the launcher's child, outside the sandbox's
pid namespace, unreachable from inside) always continue. Nothing inside the
sandbox is trusted: not even its pid 1, whose memory the program could write.

The kernel guarantees a program cannot override our answers with a filter of
its own: a second listener in the same filter chain is refused (EBUSY), and
SECCOMP_RET_USER_NOTIF outranks SECCOMP_RET_TRACE, LOG and ALLOW.
"""

from __future__ import annotations

import errno
import fcntl
import select
import struct
from collections import Counter
from collections.abc import Callable
from typing import Any

# ioctl numbers: _IOWR('!', 0, struct seccomp_notif) and
# _IOWR('!', 1, struct seccomp_notif_resp); same on x86_64 and aarch64.
SECCOMP_IOCTL_NOTIF_RECV = 0xC0502100
SECCOMP_IOCTL_NOTIF_SEND = 0xC0182101
SECCOMP_IOCTL_NOTIF_SET_FLAGS = 0x40082104
SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP = 1
SECCOMP_USER_NOTIF_FLAG_CONTINUE = 1

_NOTIF = struct.Struct("<QIIiIQ6Q")  # id, pid, flags, nr, arch, ip, args[6]
_RESP = struct.Struct("<QqiI")       # id, val, error, flags
assert _NOTIF.size == 80 and _RESP.size == 24

AUDIT_ARCH_NAMES = {
    0xC000003E: "x86_64",
    0x40000003: "i386",
    0xC00000B7: "aarch64",
    0x40000028: "arm",
}
X32_SYSCALL_BIT = 0x40000000

KILL = "kill"


def action_key(arch: int, nr: int) -> str:
    """How the spec names a (architecture, syscall number) pair."""
    return f"{arch}:{nr}"


class Supervisor:
    """Answers the notifications of one run's filter.

    Spec (from the manager, JSON):
      ``actions``: {"<arch>:<nr>": "kill" | errno}, what to answer in the
      program phase; ``names``: {"<arch>:<nr>": "name"}; ``default``: errno
      for a notified call missing from ``actions``; ``start_calls``: keys of
      execve and execveat, which start the program phase and always continue.
    """

    def __init__(
        self,
        fd: int,
        spec: dict[str, Any],
        *,
        monitor_pid: int | None,
        on_kill: Callable[[str], None],
    ) -> None:
        self.fd = fd
        self.monitor_pid = monitor_pid
        self.on_kill = on_kill
        self.actions: dict[str, Any] = dict(spec.get("actions") or {})
        self.names: dict[str, str] = dict(spec.get("names") or {})
        self.default_errno = int(spec.get("default", errno.EPERM))
        self.start_calls = set(spec.get("start_calls") or ())
        self.program_started = False
        self.closed = False
        self.counts: Counter[tuple[str, str]] = Counter()
        self._buf = bytearray(_NOTIF.size)
        self._poll = select.poll()
        self._poll.register(fd, select.POLLIN)
        try:
            fcntl.ioctl(fd, SECCOMP_IOCTL_NOTIF_SET_FLAGS, SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP)
        except OSError:
            pass  # before Linux 6.6: plain wake-ups, just slower

    def handle_one(self) -> bool:
        """Answer one pending notification. False once the filter is unused."""
        events = self._poll.poll(0)
        if not events:
            return True
        revents = events[0][1]
        if not revents & select.POLLIN:
            # POLLHUP without POLLIN: no task uses the filter any more. A
            # RECV now would block for ever.
            return False

        buf = self._buf
        buf[:] = bytes(_NOTIF.size)  # the kernel insists on a zeroed buffer
        try:
            fcntl.ioctl(self.fd, SECCOMP_IOCTL_NOTIF_RECV, buf, True)
        except OSError as err:
            if err.errno in (errno.ENOENT, errno.EINTR):
                return True  # the caller died while we were waking up
            return False
        notif_id, pid, _flags, nr, arch, _ip, *_args = _NOTIF.unpack(buf)
        key = action_key(arch, nr)

        if pid == self.monitor_pid:
            self._continue(notif_id)
        elif not self.program_started:
            if key in self.start_calls:
                self.program_started = True
            self._continue(notif_id)
        elif key in self.start_calls:
            self._continue(notif_id)
        else:
            self._deny(notif_id, key, arch, nr)
        return True

    def _deny(self, notif_id: int, key: str, arch: int, nr: int) -> None:
        action = self.actions.get(key, self.default_errno)
        name = self.names.get(key) or _fallback_name(arch, nr)
        if action == KILL:
            self.counts[(name, KILL)] += 1
            self.on_kill("syscall_denied")
            self._respond(notif_id, errno.EPERM)
        else:
            code = int(action)
            self.counts[(name, f"errno:{errno.errorcode.get(code, code)}")] += 1
            self._respond(notif_id, code)

    def _continue(self, notif_id: int) -> None:
        resp = _RESP.pack(notif_id, 0, 0, SECCOMP_USER_NOTIF_FLAG_CONTINUE)
        self._send(resp)

    def _respond(self, notif_id: int, code: int) -> None:
        self._send(_RESP.pack(notif_id, 0, -code, 0))

    def _send(self, resp: bytes) -> None:
        try:
            fcntl.ioctl(self.fd, SECCOMP_IOCTL_NOTIF_SEND, bytearray(resp), True)
        except OSError:
            pass  # ENOENT: the task was killed meanwhile

    def violations(self) -> list[dict[str, Any]]:
        return [
            {"mechanism": "seccomp", "what": name, "action": action, "count": count}
            for (name, action), count in sorted(self.counts.items())
        ]

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            import os

            os.close(self.fd)


def _fallback_name(arch: int, nr: int) -> str:
    arch_name = AUDIT_ARCH_NAMES.get(arch, hex(arch))
    if arch == 0xC000003E and nr & X32_SYSCALL_BIT:
        return f"x32:{nr & ~X32_SYSCALL_BIT}"
    return f"{arch_name}:{nr}"
