"""The caller's side of one run's I/O: output pipes, stdin, the report socket.

``RunIO`` holds the state and does no waiting; ``drive_sync`` and
``drive_async`` wait on its descriptors, one with ``selectors`` in the
calling thread, the other on the running asyncio loop. Both stop once the
launcher's exit event has arrived and the output pipes reached EOF, or a
short grace after the event: a process that escaped the tree (only possible
in the modes without a pid namespace) cannot keep the caller waiting.
"""

from __future__ import annotations

import errno
import json
import os
import selectors
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .fs.watch import MountWatch, Trip

# The kill reason when a watched mount destination changed on the host
# (fs/watch.py); the result says ``sandbox_error``.
FS_REPLACED = "fs_replaced"

# After the exit event, how long to keep reading pipes that are still open.
EOF_GRACE_SEC = 0.25
_CHUNK = 65536


class OutputBuffer:
    """Keeps the first ``cap`` bytes of a stream and notes what was cut."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.chunks: list[bytes] = []
        self.size = 0
        self.seen = 0
        self.truncated = False

    def feed(self, data: bytes) -> bool:
        """Store data; True the first time the cap is passed."""
        self.seen += len(data)
        room = self.cap - self.size
        if len(data) > room:
            if room > 0:
                self.chunks.append(data[:room])
                self.size += room
            first = not self.truncated
            self.truncated = True
            return first
        self.chunks.append(data)
        self.size += len(data)
        return False

    def value(self) -> bytes:
        return b"".join(self.chunks)


class RunIO:
    def __init__(
        self,
        report: socket.socket,
        *,
        stdout_fd: int | None,
        stderr_fd: int | None,
        stdin_fd: int | None,
        stdin_data: bytes | None,
        cap: int,
        on_message: Callable[[dict[str, Any], list[int]], None] | None = None,
        kill_at_cap: bool = True,
        watch: MountWatch | None = None,
    ) -> None:
        self.report = report
        # The host paths the run's mounts sit on (fs/watch.py): a change ends
        # the run. RunIO owns it and closes it with the rest.
        self.watch = watch
        # Messages before the exit event (the network bridge's listener);
        # the callback owns the descriptors.
        self.on_message = on_message
        self.kill_at_cap = kill_at_cap
        self.out = OutputBuffer(cap)
        self.err = OutputBuffer(cap)
        self.readers: dict[int, OutputBuffer] = {}
        for fd, buf in ((stdout_fd, self.out), (stderr_fd, self.err)):
            if fd is not None:
                os.set_blocking(fd, False)
                self.readers[fd] = buf
        self.stdin_fd = stdin_fd
        self.stdin_data = memoryview(stdin_data) if stdin_data is not None else None
        if stdin_fd is not None:
            os.set_blocking(stdin_fd, False)
        self.event: dict[str, Any] | None = None
        self.event_time: float | None = None
        self.kill_reason: str | None = None
        if watch is not None and watch.tripped:
            # changed before the watch was in place: end the run at once
            self.request_kill(FS_REPLACED)

    # -- callbacks -----------------------------------------------------------

    def on_report(self) -> None:
        try:
            msg, fds, _flags, _addr = socket.recv_fds(self.report, 1 << 20, 4)
        except BlockingIOError:
            return
        except OSError:
            msg, fds = b"", []
        if msg:
            data = json.loads(msg)
            if data.get("event") != "exit":
                if self.on_message is not None:
                    self.on_message(data, fds)
                else:
                    for fd in fds:
                        os.close(fd)
                return
            for fd in fds:
                os.close(fd)
            self.event = data
        else:
            self.event = {"event": "lost"}
        self.event_time = time.monotonic()

    def on_readable(self, fd: int) -> bool:
        """Read what is there; False at EOF (the fd is then closed)."""
        buf = self.readers[fd]
        try:
            data = os.read(fd, _CHUNK)
        except BlockingIOError:
            return True
        except OSError:
            data = b""
        if not data:
            self.close_reader(fd)
            return False
        # Past the cap the buffer drops what it is fed; reading on (instead of
        # killing) keeps the program from blocking on a full pipe.
        if buf.feed(data) and self.kill_at_cap:
            self.request_kill("output_limit")
        return True

    def on_watch(self) -> bool:
        """Read the watch's events; a watched path changed: end the run
        (fail closed). False once the watch is closed."""
        if self.watch is None:
            return False
        if self.watch.read():
            self.request_kill(FS_REPLACED)
        return True

    @property
    def trips(self) -> list[Trip]:
        """Watched paths that changed on the host during the run."""
        return list(self.watch.tripped) if self.watch is not None else []

    def on_writable(self) -> bool:
        """Write more stdin; False when finished (the fd is then closed)."""
        assert self.stdin_fd is not None
        if self.stdin_data is None or not self.stdin_data:
            self.close_stdin()
            return False
        try:
            written = os.write(self.stdin_fd, self.stdin_data[:_CHUNK])
        except BlockingIOError:
            return True
        except OSError as err:
            if err.errno not in (errno.EPIPE, errno.EBADF):
                raise
            self.close_stdin()
            return False
        self.stdin_data = self.stdin_data[written:]
        if not self.stdin_data:
            self.close_stdin()
            return False
        return True

    # -- actions -------------------------------------------------------------

    def request_kill(self, reason: str) -> None:
        if self.kill_reason is not None or self.event is not None:
            return
        self.kill_reason = reason
        try:
            self.report.send(json.dumps({"op": "kill", "reason": reason}).encode())
        except OSError:
            pass

    def close_reader(self, fd: int) -> None:
        if fd in self.readers:
            del self.readers[fd]
            os.close(fd)

    def close_stdin(self) -> None:
        if self.stdin_fd is not None:
            os.close(self.stdin_fd)
            self.stdin_fd = None

    def finished(self, now: float) -> bool:
        if self.event is None:
            return False
        if not self.readers:
            return True
        assert self.event_time is not None
        return now >= self.event_time + EOF_GRACE_SEC

    def close_all(self) -> None:
        for fd in list(self.readers):
            self.close_reader(fd)
        self.close_stdin()
        self.report.close()
        if self.watch is not None:
            # what happened before the run's end but was not read yet
            self.watch.read()
            self.watch.close()


# After the caller is interrupted, how long to wait for the killed run's exit
# event: what runs after (the protected-path check) must see it gone.
STOP_WAIT_SEC = 10.0


def drive_sync(io: RunIO) -> None:
    """Serve the run's descriptors in this thread until it is finished.

    When the wait is interrupted (KeyboardInterrupt, a signal turned into an
    exception), the run is killed and its exit awaited (at most
    ``STOP_WAIT_SEC``) before the exception goes on: ``io.event`` then says
    whether the run is known to be over.
    """
    sel = selectors.DefaultSelector()
    try:
        sel.register(io.report, selectors.EVENT_READ, "report")
        for fd in io.readers:
            sel.register(fd, selectors.EVENT_READ, "out")
        if io.stdin_fd is not None:
            sel.register(io.stdin_fd, selectors.EVENT_WRITE, "in")
        if io.watch is not None:
            sel.register(io.watch.fileno(), selectors.EVENT_READ, "watch")
        try:
            _serve(io, sel, deadline=None)
        except BaseException:
            io.request_kill("cancelled")
            try:
                _serve(io, sel, deadline=time.monotonic() + STOP_WAIT_SEC)
            except BaseException:  # noqa: BLE001 - a second interrupt: stop waiting
                pass
            raise
    finally:
        sel.close()
        io.close_all()


def _serve(io: RunIO, sel: selectors.BaseSelector, *, deadline: float | None) -> None:
    while True:
        now = time.monotonic()
        if io.finished(now) or (deadline is not None and (now >= deadline or io.event is not None)):
            return
        timeout = None if deadline is None else deadline - now
        if io.event_time is not None:
            grace = max(0.0, io.event_time + EOF_GRACE_SEC - now)
            timeout = grace if timeout is None else min(timeout, grace)
        for key, _mask in sel.select(timeout):
            if key.data == "report":
                io.on_report()
                if io.event is not None:
                    sel.unregister(io.report)
            elif key.data == "out":
                fd = key.fd
                if not io.on_readable(fd):
                    sel.unregister(fd)
            elif key.data == "watch":
                io.on_watch()
            else:
                fd = key.fd
                if not io.on_writable():
                    sel.unregister(fd)


async def drive_async(io: RunIO) -> None:
    """Serve the run's descriptors on the running event loop until finished."""
    import asyncio  # here, not at the top: a CLI start need not pay for it

    loop = asyncio.get_running_loop()
    done = loop.create_future()
    registered_r: list[int] = []
    registered_w: list[int] = []
    grace_handle: asyncio.TimerHandle | None = None

    def check() -> None:
        nonlocal grace_handle
        if done.done():
            return
        if io.finished(time.monotonic()):
            done.set_result(None)
        elif io.event is not None and grace_handle is None:
            grace_handle = loop.call_later(EOF_GRACE_SEC, check)

    def on_report() -> None:
        io.on_report()
        if io.event is not None:
            loop.remove_reader(io.report.fileno())
            registered_r.remove(io.report.fileno())
        check()

    def on_out(fd: int) -> None:
        if not io.on_readable(fd):
            loop.remove_reader(fd)
            registered_r.remove(fd)
        check()

    def on_in(fd: int) -> None:
        if not io.on_writable():
            loop.remove_writer(fd)
            registered_w.remove(fd)

    def on_watch() -> None:
        io.on_watch()

    io.report.setblocking(False)
    loop.add_reader(io.report.fileno(), on_report)
    registered_r.append(io.report.fileno())
    for fd in list(io.readers):
        loop.add_reader(fd, on_out, fd)
        registered_r.append(fd)
    if io.stdin_fd is not None:
        loop.add_writer(io.stdin_fd, on_in, io.stdin_fd)
        registered_w.append(io.stdin_fd)
    if io.watch is not None:
        loop.add_reader(io.watch.fileno(), on_watch)
        registered_r.append(io.watch.fileno())
    try:
        # shielded: a cancellation must not cancel ``done``, which the kill
        # below still needs to learn that the run is over
        await asyncio.shield(done)
    except asyncio.CancelledError:
        # kill the run and wait for its exit (bounded), so that what runs
        # after the cancellation sees it gone
        io.request_kill("cancelled")
        if io.event is None:
            stop = loop.create_future()
            waiter = loop.call_later(STOP_WAIT_SEC, lambda: stop.done() or stop.set_result(None))
            done.add_done_callback(lambda _f: stop.done() or stop.set_result(None))
            try:
                await stop
            except asyncio.CancelledError:
                pass
            finally:
                waiter.cancel()
        raise
    finally:
        if grace_handle is not None:
            grace_handle.cancel()
        for fd in registered_r:
            loop.remove_reader(fd)
        for fd in registered_w:
            loop.remove_writer(fd)
        io.close_all()
