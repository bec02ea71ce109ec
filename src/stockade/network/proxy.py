"""The allowlist proxy: one per SandboxManager, serving all of its runs.

It runs an asyncio event loop on a thread of its own, so that sync and
asyncio callers share it alike. It never opens a port on the host: each run
hands it a listening socket that the launcher created *inside* that run's
network namespace (see ``linux/netbridge.py``); the proxy accepts the
program's connections there and makes its own from the host's namespace,
after the policy allowed the destination. The listener tells which run a
connection belongs to, so the records of each run are its own.

Lifecycle: ``start()`` (the manager calls it lazily, on the first run that
needs it), then per run ``attach(run_id, allowlist, fd)`` and
``end_run(run_id)`` (or ``end_run_async``), which closes the run's listener
and connections and returns its records; ``close()`` with the manager, or
when the manager is garbage-collected.

Descriptors: the proxy lives in the caller's process and spends the
caller's RLIMIT_NOFILE, two descriptors per connection (the program's end
and the destination's). A program must not be able to starve its caller,
so ``start()`` raises the soft limit toward the hard one and derives a cap
on the connections open across all runs (``max_connections``) that leaves
a reserve for the caller; past the cap, and whenever accept() or socket()
still fail with EMFILE/ENFILE, a connection is refused and recorded as
``connection-limit``, never raised in the caller.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import logging
import os
import resource
import socket
import threading
from dataclasses import dataclass, field

from .._text import printable
from ..result import Connection
from ._exchange import NO_REQUEST, Exchange, Resolver, system_resolver
from .policy import Allowlist, Decision, parse_address

log = logging.getLogger(__name__)

MAX_RECORDS_PER_RUN = 4096  # records kept per run; the rest are counted
MAX_ACTIVE_PER_RUN = 256  # concurrent connections per run
END_GRACE_SEC = 0.5  # for connections still closing at the run's end
START_TIMEOUT_SEC = 10.0
CALL_TIMEOUT_SEC = 30.0

# The soft RLIMIT_NOFILE the proxy raises the caller's to (never above the
# hard limit, never lowered). Not all the way to a hard limit of 2^20: the
# caller's own children inherit it, and some programs close every
# descriptor up to it when they start.
NOFILE_TARGET = 16384
FDS_PER_CONNECTION = 2  # the program's end and the destination's
# Descriptors kept for the caller: a quarter of the limit, at least this
# many more than it had open when the proxy started.
RESERVE_MIN_FDS = 64
ACCEPT_PAUSE_SEC = 0.1  # accept() still failing with EMFILE: wait this long
EMFILE_ERRNOS = (errno.EMFILE, errno.ENFILE)
CONNECTION_LIMIT = "connection-limit"


def raise_nofile_limit() -> int:
    """Raise the soft RLIMIT_NOFILE toward the hard one; the soft limit now.

    The proxy holds two descriptors per connection in the caller's process,
    and the common soft limit of 1024 is low for several runs at once (the
    hard limit is usually much higher).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = NOFILE_TARGET
    if hard != resource.RLIM_INFINITY:
        target = min(hard, NOFILE_TARGET)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as err:
            log.debug(
                "network proxy: RLIMIT_NOFILE stays at %d (raising it to %d: %s)",
                soft,
                target,
                err,
            )
        else:
            log.debug(
                "network proxy: raised the soft RLIMIT_NOFILE from %d to %d (hard %s)",
                soft,
                target,
                "unlimited" if hard == resource.RLIM_INFINITY else hard,
            )
            soft = target
    return NOFILE_TARGET if soft == resource.RLIM_INFINITY else soft


def connection_cap(nofile: int, open_now: int) -> tuple[int, int]:
    """(connections the proxy may hold open, descriptors kept for the caller)."""
    reserve = max(nofile // 4, open_now + RESERVE_MIN_FDS)
    return max(0, (nofile - reserve) // FDS_PER_CONNECTION), reserve


def _open_fds() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return RESERVE_MIN_FDS


@dataclass
class _Record:
    host: str
    port: int
    protocol: str
    allowed: bool
    rule: str
    reason: str = ""
    address: str | None = None
    bytes_sent: int = 0
    bytes_received: int = 0
    error: str | None = None

    def __post_init__(self) -> None:
        # hosts and reasons come from the program's request (a SOCKS name is
        # any 255 bytes): escaped once, here, before the log, the 403 body,
        # the result and the execution log see them
        self.host = printable(self.host)
        self.rule = printable(self.rule)
        self.reason = printable(self.reason, limit=1024)

    def fail(self, error: str) -> None:
        """An allowed connection that still failed: why (escaped)."""
        self.error = printable(error, limit=1024)

    def refuse(self, decision: Decision) -> None:
        """Turn an allowed record into a refusal (the proxy ran out of descriptors)."""
        self.allowed = False
        self.rule = printable(decision.rule)
        self.reason = printable(decision.reason, limit=1024)

    def result(self) -> Connection:
        return Connection(
            host=self.host,
            port=self.port,
            protocol=self.protocol,
            decision="allowed" if self.allowed else "denied",
            rule=self.rule,
            reason=self.reason,
            address=self.address,
            bytes_sent=self.bytes_sent,
            bytes_received=self.bytes_received,
            error=self.error,
        )


@dataclass
class RunTraffic:
    """What the proxy saw of one run."""

    connections: list[Connection] = field(default_factory=list)
    # denials per "host:port", or per label when the host was not what was
    # refused ("connection-limit", "bad-request", "no-request", "socks5 UDP
    # ASSOCIATE"); counted even past MAX_RECORDS_PER_RUN
    denied: dict[str, int] = field(default_factory=dict)
    dropped_records: int = 0
    attached: bool = False


class _Session:
    """One run's listener, connections and records (proxy thread only)."""

    def __init__(
        self, run_id: str, allowlist: Allowlist, listener: socket.socket
    ) -> None:
        self.run_id = run_id
        self.allowlist = allowlist
        self.listener = listener
        try:
            # the listener's address inside the sandbox (127.0.0.1:3128)
            self.listen_host, self.listen_port = listener.getsockname()[:2]
        except OSError:
            self.listen_host, self.listen_port = "127.0.0.1", 0
        self.tasks: set[asyncio.Task[None]] = set()
        self.records: list[_Record] = []
        self.denied: collections.Counter[str] = collections.Counter()
        self.dropped = 0
        self.paused = False  # accept() failed with EMFILE: reader off for a while

    def record(
        self,
        host: str,
        port: int,
        protocol: str,
        decision: Decision,
        *,
        label: str | None = None,
    ) -> _Record:
        """Record one destination asked for, and count it when refused.

        Args:
            host, port: the destination as the program asked for it (``host``
                is escaped by the record).
            label: what the refusal is counted under in ``violations`` when
                it is not the destination that was refused (the default is
                ``host:port``).
        """
        record = _Record(
            host, port, protocol, decision.allowed, decision.rule, decision.reason
        )
        if decision.allowed:
            log.debug(
                "run %s: %s %s:%d allowed by %r",
                self.run_id,
                protocol,
                record.host,
                port,
                record.rule,
            )
        else:
            self._count_denied(record, label)
        if len(self.records) < MAX_RECORDS_PER_RUN:
            self.records.append(record)
        else:
            self.dropped += 1
        return record

    def refuse(self, record: _Record, decision: Decision, *, label: str) -> None:
        """Turn a record made as allowed into a refusal, counted under ``label``."""
        record.refuse(decision)
        self._count_denied(record, label)

    def refuse_unread(self, reason: str) -> None:
        """Record a connection closed before its request was read."""
        self.refuse_request("tcp", CONNECTION_LIMIT, reason)

    def refuse_request(self, protocol: str, rule: str, reason: str) -> _Record:
        """Record a connection refused before a destination was known
        (``connection-limit``, ``bad-request``, ``no-request``): the record
        names the run's listener, and the refusal is counted under ``rule``."""
        return self.record(
            self.listen_host,
            self.listen_port,
            protocol,
            Decision(False, rule, reason),
            label=rule,
        )

    def _count_denied(self, record: _Record, label: str | None) -> None:
        host = record.host
        address = parse_address(host)
        if address is not None and address.version == 6:
            host = f"[{host}]"
        target = f"{host}:{record.port}"
        self.denied[label or target] += 1
        log.info(
            "run %s: %s %s denied (%s: %s)",
            self.run_id,
            record.protocol,
            target,
            record.rule,
            record.reason,
        )

    def traffic(self) -> RunTraffic:
        return RunTraffic(
            connections=[r.result() for r in self.records],
            denied=dict(self.denied),
            dropped_records=self.dropped,
            attached=True,
        )


class NetworkProxy:
    """The host-side proxy of one SandboxManager.

    Args:
        resolver: ``(name, port) -> addresses``, sync or async; the host's
            getaddrinfo by default. Tests replace it; names pinned in the
            policy's ``hosts`` never reach it.

    ``max_connections`` (set by ``start()``) caps the connections open
    across all runs; ``MAX_ACTIVE_PER_RUN`` caps each run's.
    """

    def __init__(self, *, resolver: Resolver | None = None) -> None:
        self._resolver: Resolver = resolver or system_resolver
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._owner = -1
        self._sessions: dict[str, _Session] = {}
        self.max_connections = 0
        self.nofile = 0
        self.reserve = 0
        self._active = 0  # connections being served, all runs (proxy thread only)
        # a descriptor kept free so that accept() can still take (and close)
        # a connection when the process is out of descriptors
        self._spare: int | None = None

    @property
    def running(self) -> bool:
        return (
            self._thread is not None
            and self._thread.is_alive()
            and self._owner == os.getpid()
        )

    @property
    def thread(self) -> threading.Thread | None:
        """The proxy's thread while it runs (for tests that check it ends)."""
        return self._thread

    def start(self) -> None:
        """Start the proxy's thread and loop (no-op when running).

        Raises the process's soft RLIMIT_NOFILE toward the hard limit and
        sets ``max_connections`` from it.

        Raises:
            OSError: the loop or its thread could not be made.
        """
        with self._lock:
            if self.running:
                return
            self.nofile = raise_nofile_limit()
            # TODO(#7): the cap is not recomputed when the caller lowers its
            # RLIMIT_NOFILE or opens many descriptors later; meanwhile an
            # EMFILE in accept() or socket() is a connection-limit refusal
            self.max_connections, self.reserve = connection_cap(
                self.nofile, _open_fds()
            )
            if self.max_connections < MAX_ACTIVE_PER_RUN:
                log.warning(
                    "network proxy: RLIMIT_NOFILE %d leaves room for %d open connections "
                    "(%d descriptors each, %d kept for this process); more are refused as %s. "
                    "Raise the limit (ulimit -n) for more",
                    self.nofile,
                    self.max_connections,
                    FDS_PER_CONNECTION,
                    self.reserve,
                    CONNECTION_LIMIT,
                )
            else:
                log.debug(
                    "network proxy: at most %d open connections (RLIMIT_NOFILE %d, %d kept)",
                    self.max_connections,
                    self.nofile,
                    self.reserve,
                )
            loop = asyncio.new_event_loop()
            ready = threading.Event()

            def main() -> None:
                asyncio.set_event_loop(loop)
                loop.call_soon(ready.set)
                try:
                    loop.run_forever()
                finally:
                    loop.close()

            thread = threading.Thread(
                target=main, name="stockade-network-proxy", daemon=True
            )
            try:
                thread.start()
            except RuntimeError as err:
                loop.close()
                raise OSError(0, f"cannot start the proxy thread: {err}") from err
            if not ready.wait(START_TIMEOUT_SEC):
                raise OSError(0, "the proxy's event loop did not start")
            self._spare = _open_spare()
            self._loop, self._thread, self._owner = loop, thread, os.getpid()
            self._sessions = {}
            self._active = 0
            log.debug("network proxy started")

    # -- runs ------------------------------------------------------------------

    def attach(self, run_id: str, allowlist: Allowlist, fd: int) -> None:
        """Serve a run's listener; takes ownership of ``fd``. Any thread."""
        loop = self._loop
        if not self.running or loop is None:
            os.close(fd)
            log.warning(
                "run %s: network proxy not running; its listener is closed", run_id
            )
            return
        try:
            loop.call_soon_threadsafe(self._attach, run_id, allowlist, fd)
        except RuntimeError:  # loop closed meanwhile
            os.close(fd)

    def end_run(self, run_id: str) -> RunTraffic:
        """Close a run's listener and connections; its records. Any thread but the proxy's."""
        if not self.running or self._loop is None:
            return RunTraffic()
        future = asyncio.run_coroutine_threadsafe(self._end(run_id), self._loop)
        return future.result(CALL_TIMEOUT_SEC)

    async def end_run_async(self, run_id: str) -> RunTraffic:
        """``end_run`` for a caller on another event loop."""
        if not self.running or self._loop is None:
            return RunTraffic()
        future = asyncio.run_coroutine_threadsafe(self._end(run_id), self._loop)
        return await asyncio.wait_for(asyncio.wrap_future(future), CALL_TIMEOUT_SEC)

    def close(self) -> None:
        """End every run's traffic and stop the thread. Idempotent; any thread.

        Also what the manager's finalizer calls when it is garbage-collected
        without ``close()``; that can happen on the proxy's own thread (the
        collector runs wherever it is triggered), where waiting for the loop
        would wait for itself, so there the loop is only told to stop.
        """
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
            if loop is None or thread is None or self._owner != os.getpid():
                return
            if threading.current_thread() is thread:
                loop.create_task(self._end_all_and_stop(loop))
                return
            if thread.is_alive():
                try:
                    asyncio.run_coroutine_threadsafe(self._end_all(), loop).result(
                        CALL_TIMEOUT_SEC
                    )
                finally:
                    loop.call_soon_threadsafe(loop.stop)
                    thread.join(CALL_TIMEOUT_SEC)
            self._close_spare()
            log.debug("network proxy stopped")

    # -- on the proxy's thread -------------------------------------------------

    def _attach(self, run_id: str, allowlist: Allowlist, fd: int) -> None:
        listener = socket.socket(fileno=fd)
        listener.setblocking(False)
        session = _Session(run_id, allowlist, listener)
        self._sessions[run_id] = session
        asyncio.get_running_loop().add_reader(listener.fileno(), self._accept, session)

    def _accept(self, session: _Session) -> None:
        loop = asyncio.get_running_loop()
        for _ in range(64):
            try:
                conn, _addr = session.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as err:
                if err.errno in EMFILE_ERRNOS:
                    self._shed(session, err)
                    return
                log.warning(
                    "run %s: accept on the proxy listener failed: %s",
                    session.run_id,
                    err,
                )
                return
            refusal = self._over_limit(session)
            if refusal is not None:
                session.refuse_unread(refusal)
                conn.close()
                continue
            conn.setblocking(False)
            task = loop.create_task(self._serve(session, conn))
            session.tasks.add(task)
            self._active += 1
            task.add_done_callback(lambda done: self._served(session, done))

    def _over_limit(self, session: _Session) -> str | None:
        """Why one more connection of this run is refused, or None."""
        if len(session.tasks) >= MAX_ACTIVE_PER_RUN:
            return (
                f"this run already has {MAX_ACTIVE_PER_RUN} open connections, the most a "
                "run may have; closed before its request was read"
            )
        if self._active >= self.max_connections:
            return (
                f"the proxy already holds {self._active} open connections of all runs, the "
                f"most that RLIMIT_NOFILE {self.nofile} allows ({FDS_PER_CONNECTION} "
                f"descriptors each, {self.reserve} kept for the caller); closed before its "
                "request was read"
            )
        return None

    def _served(self, session: _Session, task: asyncio.Task[None]) -> None:
        session.tasks.discard(task)
        self._active -= 1

    def _shed(self, session: _Session, err: OSError) -> None:
        """accept() failed with EMFILE/ENFILE: take one pending connection
        with the spare descriptor and close it, recorded as a refusal.

        Without this the pending connection would stay queued, the listener
        readable, and the loop would call ``_accept`` again at once, forever.
        """
        name = errno.errorcode.get(err.errno or 0, str(err.errno))
        reason = (
            f"accept() failed with {name} ({os.strerror(err.errno or 0)}): the caller's "
            f"process is out of descriptors; closed before its request was read"
        )
        self._close_spare()
        try:
            conn, _addr = session.listener.accept()
        except OSError:
            conn = None
        if conn is not None:
            conn.close()
            session.refuse_unread(reason)
        self._spare = _open_spare()
        if conn is None or self._spare is None:
            # still out of descriptors: stop reading the listener for a while
            # rather than spin on it; its connections wait in the backlog
            self._pause(session)

    def _pause(self, session: _Session) -> None:
        if session.paused:
            return
        loop = asyncio.get_running_loop()
        loop.remove_reader(session.listener.fileno())
        session.paused = True
        log.warning(
            "run %s: the process is out of descriptors; the proxy stops accepting for %.1f s",
            session.run_id,
            ACCEPT_PAUSE_SEC,
        )

        def resume() -> None:
            session.paused = False
            if self._sessions.get(session.run_id) is session:
                if self._spare is None:
                    self._spare = _open_spare()
                loop.add_reader(session.listener.fileno(), self._accept, session)

        loop.call_later(ACCEPT_PAUSE_SEC, resume)

    def _close_spare(self) -> None:
        if self._spare is not None:
            os.close(self._spare)
            self._spare = None

    async def _serve(self, session: _Session, conn: socket.socket) -> None:
        try:
            reader, writer = await asyncio.open_connection(sock=conn, limit=64 * 1024)
        except OSError as err:
            conn.close()
            session.refuse_request(
                "tcp", NO_REQUEST, f"the proxy could not take the connection: {err}"
            )
            return
        try:
            await Exchange(session, reader, writer, self._resolver).serve()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("run %s: proxy connection failed", session.run_id)
        finally:
            writer.close()

    async def _end(self, run_id: str) -> RunTraffic:
        session = self._sessions.pop(run_id, None)
        if session is None:
            return RunTraffic()
        if not session.paused:
            self._accept(session)  # connections still queued get served and recorded
            asyncio.get_running_loop().remove_reader(session.listener.fileno())
        session.listener.close()
        tasks = set(session.tasks)
        if tasks:
            # the sandbox is gone, so its ends are closed: most finish at once
            await asyncio.wait(tasks, timeout=END_GRACE_SEC)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        return session.traffic()

    async def _end_all(self) -> None:
        for run_id in list(self._sessions):
            await self._end(run_id)

    async def _end_all_and_stop(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            await self._end_all()
        finally:
            self._close_spare()
            loop.stop()


def _open_spare() -> int | None:
    try:
        return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
