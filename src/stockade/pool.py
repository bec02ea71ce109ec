"""Prewarmed sandboxes: the caller's side of a launcher pool.

``SandboxManager(config, prewarm=N)`` keeps N sandboxes of its policy
prepared ahead of time: bubblewrap has made the namespaces and the mount
view, the run's cgroup exists with its limits, the rlimits and the seccomp
filter are in force, and a waiter (``linux/waiter.py``) sits where the
program will be. A run that fits such a sandbox only sends its program,
environment, working directory and stdio to it; the waiter execs the
program in place. Each prepared sandbox serves one run and is then gone, so
nothing of a run (its /tmp, HOME, processes, cgroup, environment) is ever
seen by the next. The launcher prepares a replacement as soon as one is
taken, in its own process, so the caller pays nothing for the refill; the
pool never holds more than N sandboxes not yet given a program.

Which runs fit. A pool is made for one *shape*: the mount view and
everything else bubblewrap was given (the workspace, extra read-only
installations, idmaps), which all runs of a manager share except when the
command or PYTHONPATH needs an installation made visible, or the working
directory lies in another workspace. A run of another shape, a run in
network allowlist mode (its proxy bridge is made per run), on the second
tier (no bubblewrap) or with a very large argv or environment runs cold,
as without a pool; its result says why in ``notes``.

A host rename over a path a prepared sandbox's mounts sit on (a hidden
file, ``.git/config``; ``fs/watch.py``) undoes that mount while the sandbox
waits. So the pool watches those paths from before its first sandbox is
made, and a run that takes one first checks that watch and that each path
still has the identity the pool's template was resolved against: if not,
the whole pool is discarded, the run goes cold (saying why), and a new pool
is prepared.
"""

from __future__ import annotations

import collections
import errno
import json
import logging
import os
import select
import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .fs.watch import Destination, MountWatch

log = logging.getLogger(__name__)

MAX_PREWARM = 32


def shape(spec: dict[str, Any]) -> tuple[Any, str | None]:
    """The part of a run's spec a prepared sandbox fixes, and its chdir.

    bubblewrap's options except ``--chdir`` (the waiter changes directory
    itself), the bind sources and their identities, the idmaps and the
    bubblewrap binary. Limits, filter, credentials and environment of the
    sandbox come from the manager's policy, the same for every run.
    """
    args = spec.get("args_data") or []
    kept: list[str] = []
    chdir = None
    i = 0
    while i < len(args):
        if args[i] == "--chdir" and i + 1 < len(args):
            chdir = args[i + 1]
            i += 2
            continue
        kept.append(args[i])
        i += 1
    key = (
        spec.get("path"),
        tuple(kept),
        tuple(spec.get("bind_paths") or ()),
        json.dumps(spec.get("bind_ids")),
        json.dumps(spec.get("idmaps"), sort_keys=True),
    )
    return key, chdir


class PreparedPool:
    """N prepared sandboxes of one shape, kept full by the launcher.

    Args:
        send: sends the pool request and the launcher's end of the pool's
            socket (``LauncherClient.open_pool``).
        template: the spec a prepared sandbox is started from (the waiter
            as its program).
        key: the shape it serves.
        size: how many the launcher keeps prepared.
        cleanup: files the template's sandboxes use, removed by ``close``.
        remove: how to remove them.
        watch: the host paths the sandboxes' mounts sit on, watched since
            before the first was prepared (``fs/watch.py``); the manager
            reads it when a run takes one. Closed by ``close``.
        destinations: those paths with the identities the template was
            resolved against.
    """

    def __init__(
        self,
        send: Callable[[dict[str, Any], int], None],
        template: dict[str, Any],
        key: Any,
        size: int,
        cleanup: list[str],
        remove: Callable[[str], None],
        *,
        watch: MountWatch | None = None,
        destinations: list[Destination] | None = None,
    ) -> None:
        self.key = key
        self.watch = watch
        self.destinations = destinations or []
        self.size = size
        self.pid = os.getpid()
        self.broken: str | None = None
        self.workspace = (template.get("disk_budget") or {}).get("path")
        self._cleanup = cleanup
        self._remove = remove
        self._ready: collections.deque[socket.socket] = collections.deque()
        self._lock = threading.Lock()
        self._closed = False
        self._received = 0
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            send({"op": "pool", "size": size, "template": template}, theirs.fileno())
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        ours.setblocking(False)
        self._sock = ours

    def take(self) -> socket.socket | None:
        """The report socket of a ready sandbox, or None if none is ready
        (the run then goes cold: waiting for one that is still being
        prepared would take longer).

        Sandboxes that ended unused (their exit event is already waiting)
        are skipped.
        """
        with self._lock:
            if self._closed:
                return None
            self._drain()
            while self._ready:
                sock = self._ready.popleft()
                if _alive(sock):
                    return sock
                sock.close()
            return None

    def _drain(self) -> None:
        while True:
            try:
                msg, fds, _flags, _addr = socket.recv_fds(self._sock, 65536, 1)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as err:
                msg, fds = b"", []
                self.broken = self.broken or f"pool socket: {err}"
            if not msg:
                for fd in fds:
                    os.close(fd)
                self.broken = self.broken or "the launcher closed the pool"
                return
            try:
                event = json.loads(msg)
            except ValueError:
                event = {}
            if event.get("event") == "prepared" and fds:
                self._received += 1
                self._ready.append(socket.socket(fileno=fds[0]))
                for fd in fds[1:]:
                    os.close(fd)
                continue
            for fd in fds:
                os.close(fd)
            if event.get("event") == "broken":
                self.broken = str(event.get("error") or "a prepared sandbox failed")
                log.warning("stockade: prewarm pool stopped: %s", self.broken)

    def wait(self, count: int, timeout: float) -> int:
        """Block until ``count`` sandboxes are ready, the pool stops, or
        ``timeout`` seconds pass; returns how many are ready."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while not self._closed:
                self._drain()
                left = deadline - time.monotonic()
                if len(self._ready) >= count or self.broken or left <= 0:
                    break
                # poll, not select: the network proxy raises the soft
                # RLIMIT_NOFILE, so this socket's number may be past 1023
                waiting = select.poll()
                waiting.register(self._sock, select.POLLIN)
                waiting.poll(left * 1000)
            return len(self._ready)

    def available(self) -> int:
        """How many prepared sandboxes the launcher has handed over and no
        run has taken yet (some may still be starting)."""
        with self._lock:
            if not self._closed:
                self._drain()
            return len(self._ready)

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """End every sandbox not yet given a program; idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self.watch is not None:
                self.watch.close()
            if os.getpid() != self.pid:
                # a forked child: these descriptors are copies; the parent's
                # pool lives on. Drop ours without touching its files.
                for sock in self._ready:
                    sock.close()
                self._sock.close()
                return
            self._sock.close()  # the launcher ends the unused sandboxes
            for sock in self._ready:
                sock.close()
            self._ready.clear()
        for path in self._cleanup:
            self._remove(path)


def _alive(sock: socket.socket) -> bool:
    try:
        data = sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return True
    except OSError as err:
        return err.errno == errno.EAGAIN
    return False  # an exit event (or EOF) is waiting: it ended unused
