"""The network bridge: a listening socket inside the sandbox's namespace.

In mode ``allow`` the sandbox still gets an empty network namespace from
bubblewrap (``--unshare-net``). Its one way out is a TCP listener on
``127.0.0.1:<port>`` *inside* that namespace, created by the launcher and
handed to the caller's proxy, which accepts the program's connections on it
and makes its own connections from the host's namespace. No process of ours
runs in the sandbox.

How the socket gets there: a socket belongs to the network namespace of the
thread that created it. The launcher learns the sandbox's pid 1 from
bubblewrap's json status, opens ``/proc/<pid>/ns/net`` and

* as root (CAP_SYS_ADMIN over every namespace): ``setns()`` into it, makes
  the socket, and ``setns()`` back into its own namespace. The launcher is
  single-threaded, so nothing else runs meanwhile.
* as any other user: ``setns(CLONE_NEWNET)`` also needs CAP_SYS_ADMIN in the
  caller's own user namespace, which only the namespace's owner has inside
  it. A short-lived forked helper first joins the user namespace that owns
  the sandbox's network namespace (``NS_GET_USERNS``; created by bubblewrap
  as this same uid, so the helper has every capability there), then the
  network namespace, makes the socket, sends it back and exits. The helper
  exits before the program starts.

The program must not run before the listener exists: bubblewrap's
``--block-fd`` makes the sandbox's pid 1 wait, after its mounts and just
before it starts the program, until the launcher writes to the pipe.
bubblewrap brings ``lo`` up only after the child-pid status line is written,
so the socket is bound with ``IP_FREEBIND``.

Stdlib only: imported by the launcher.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import select
import signal
import socket

CLONE_NEWNET = 0x40000000
CLONE_NEWUSER = 0x10000000
NS_GET_USERNS = 0xB701  # _IO(0xb7, 0x1)
IP_FREEBIND = 15
LISTEN_BACKLOG = 128
HELPER_TIMEOUT_SEC = 10.0

_libc = ctypes.CDLL(None, use_errno=True)
_own_netns: int | None = None


def setns(fd: int, nstype: int) -> None:
    """setns(2), raising OSError that names the call."""
    if _libc.setns(fd, nstype) < 0:
        err = ctypes.get_errno()
        kind = {CLONE_NEWNET: "CLONE_NEWNET", CLONE_NEWUSER: "CLONE_NEWUSER"}.get(
            nstype, hex(nstype)
        )
        raise OSError(err, f"setns({kind}): {os.strerror(err)}")


def open_listener(pid: int, pidfd: int | None, port: int) -> int:
    """A listening TCP socket on 127.0.0.1:port in the network namespace of pid.

    Args:
        pid: the sandbox's pid 1 (host pid).
        pidfd: a pidfd of that process: proves that ``/proc/<pid>`` was still
            the same process when its namespace was opened.
        port: the port to listen on.

    Returns:
        The socket's descriptor (close-on-exec), owned by the caller.

    Raises:
        OSError: naming the call that failed.
    """
    if pidfd is None:
        raise OSError(0, "no pidfd for the sandbox's pid 1 (pidfd_open failed)")
    net_fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        # the pid could have been reused before the open; the pidfd cannot
        signal.pidfd_send_signal(pidfd, 0)
        if os.geteuid() == 0:
            return _listen_in_place(net_fd, port)
        return _listen_via_helper(net_fd, port)
    finally:
        os.close(net_fd)


def _make_listener(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen(LISTEN_BACKLOG)
    except BaseException:
        sock.close()
        raise
    return sock


def _listen_in_place(net_fd: int, port: int) -> int:
    global _own_netns
    if _own_netns is None:
        _own_netns = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    setns(net_fd, CLONE_NEWNET)
    try:
        sock = _make_listener(port)
    finally:
        # Must succeed: every later run would otherwise be created in the
        # wrong namespace. A failure here ends the launcher.
        try:
            setns(_own_netns, CLONE_NEWNET)
        except OSError:
            os._exit(70)
    return sock.detach()


def _listen_via_helper(net_fd: int, port: int) -> int:
    user_fd = fcntl.ioctl(net_fd, NS_GET_USERNS)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the helper
            code = 1
            try:
                ours.close()
                setns(user_fd, CLONE_NEWUSER)
                setns(net_fd, CLONE_NEWNET)
                sock = _make_listener(port)
                socket.send_fds(theirs, [b"ok"], [sock.fileno()])
                code = 0
            except BaseException as exc:  # noqa: BLE001 - reported to the parent
                try:
                    theirs.send(f"{exc}".encode()[:4000] or b"error")
                except OSError:
                    pass
            finally:
                os._exit(code)
        theirs.close()
        try:
            ready, _, _ = select.select([ours], [], [], HELPER_TIMEOUT_SEC)
            if not ready:
                os.kill(pid, signal.SIGKILL)
                raise OSError(0, "network bridge helper did not answer")
            msg, fds, _flags, _addr = socket.recv_fds(ours, 4096, 1)
        finally:
            os.waitpid(pid, 0)
        if msg != b"ok" or not fds:
            for fd in fds:
                os.close(fd)
            raise OSError(
                0, msg.decode("utf-8", "replace") or "network bridge helper failed"
            )
        os.set_inheritable(fds[0], False)
        return fds[0]
    finally:
        ours.close()
        theirs.close()
        os.close(user_fd)
