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
and connections and returns its records; ``close()`` with the manager.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import socket
import threading
from dataclasses import dataclass, field

from ..result import Connection
from ._exchange import Exchange, Resolver, system_resolver
from .policy import Allowlist, Decision

log = logging.getLogger(__name__)

MAX_RECORDS_PER_RUN = 4096  # records kept per run; the rest are counted
MAX_ACTIVE_PER_RUN = 256  # concurrent connections per run
END_GRACE_SEC = 0.5  # for connections still closing at the run's end
START_TIMEOUT_SEC = 10.0
CALL_TIMEOUT_SEC = 30.0


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
    # denials per "host:port", counted even past MAX_RECORDS_PER_RUN
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
        self.tasks: set[asyncio.Task[None]] = set()
        self.records: list[_Record] = []
        self.denied: collections.Counter[str] = collections.Counter()
        self.dropped = 0

    def record(
        self, host: str, port: int, protocol: str, decision: Decision
    ) -> _Record:
        record = _Record(
            host, port, protocol, decision.allowed, decision.rule, decision.reason
        )
        if decision.allowed:
            log.debug(
                "run %s: %s %s:%d allowed by %r",
                self.run_id,
                protocol,
                host,
                port,
                decision.rule,
            )
        else:
            target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            self.denied[target] += 1
            log.info(
                "run %s: %s %s denied (%s: %s)",
                self.run_id,
                protocol,
                target,
                decision.rule,
                decision.reason,
            )
        if len(self.records) < MAX_RECORDS_PER_RUN:
            self.records.append(record)
        else:
            self.dropped += 1
        return record

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
    """

    def __init__(self, *, resolver: Resolver | None = None) -> None:
        self._resolver: Resolver = resolver or system_resolver
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._owner = -1
        self._sessions: dict[str, _Session] = {}

    @property
    def running(self) -> bool:
        return (
            self._thread is not None
            and self._thread.is_alive()
            and self._owner == os.getpid()
        )

    def start(self) -> None:
        """Start the proxy's thread and loop (no-op when running).

        Raises:
            OSError: the loop or its thread could not be made.
        """
        with self._lock:
            if self.running:
                return
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
            self._loop, self._thread, self._owner = loop, thread, os.getpid()
            self._sessions = {}
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
        """End every run's traffic and stop the thread. Idempotent."""
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
            if loop is None or thread is None or self._owner != os.getpid():
                return
            if thread.is_alive():
                try:
                    asyncio.run_coroutine_threadsafe(self._end_all(), loop).result(
                        CALL_TIMEOUT_SEC
                    )
                finally:
                    loop.call_soon_threadsafe(loop.stop)
                    thread.join(CALL_TIMEOUT_SEC)
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
                log.warning(
                    "run %s: accept on the proxy listener failed: %s",
                    session.run_id,
                    err,
                )
                return
            if len(session.tasks) >= MAX_ACTIVE_PER_RUN:
                session.record(
                    "",
                    0,
                    "tcp",
                    Decision(
                        False,
                        "connection-limit",
                        f"more than {MAX_ACTIVE_PER_RUN} open connections",
                    ),
                )
                conn.close()
                continue
            conn.setblocking(False)
            task = loop.create_task(self._serve(session, conn))
            session.tasks.add(task)
            task.add_done_callback(session.tasks.discard)

    async def _serve(self, session: _Session, conn: socket.socket) -> None:
        try:
            reader, writer = await asyncio.open_connection(sock=conn, limit=64 * 1024)
        except OSError:
            conn.close()
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
