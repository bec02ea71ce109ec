"""One connection from the sandbox to the proxy: HTTP or SOCKS5, then a relay.

The first byte tells the protocol: 0x05 is SOCKS5, 0x04 SOCKS4 (refused),
anything else an HTTP request head.

* ``CONNECT host:port``: a tunnel, answered ``200`` once the destination is
  connected.
* ``GET http://host/...`` (any method, absolute URI): one request forwarded
  with ``Connection: close`` both ways, so that a client reusing its proxy
  connection for another host opens a new connection (and gets a new
  decision) instead of sending that request to the first host.
* SOCKS5 ``CONNECT`` with a domain name (remote resolution), an IPv4 or an
  IPv6 address; no authentication, or a user name and password that are
  accepted and ignored (some clients can only send those).

A refused HTTP request gets ``403`` with an ``X-Stockade-Denied`` header and
a body naming the refusing rule; SOCKS5 gets reply 0x02 ("not allowed by
ruleset"). Every destination asked for becomes a record, and so does every
connection that never named one: ``bad-request`` for a request that could
not be understood (answered 400 or 431, or a SOCKS5 refusal), ``no-request``
for one closed, stalled or cut off by the run's end before a complete
request. Those records name the run's listener (the destination is unknown).
"""

from __future__ import annotations

import asyncio
import errno
import inspect
import logging
import os
import socket
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any

from .._text import printable
from .policy import (
    Decision,
    IPAddress,
    normalize_name,
    parse_address,
)

if TYPE_CHECKING:
    from .proxy import _Record, _Session

log = logging.getLogger("stockade.network.proxy")

HEAD_LIMIT = 64 * 1024  # bytes of one request or response head
HEAD_TIMEOUT_SEC = 30.0  # for the client's request head
CONNECT_TIMEOUT_SEC = 15.0  # per upstream address
RESOLVE_TIMEOUT_SEC = 15.0
CHUNK = 64 * 1024

# Resolver: name, port -> addresses (text or ipaddress objects), sync or async.
Resolver = Callable[[str, int], "Iterable[Any] | Awaitable[Iterable[Any]]"]

_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "proxy-authenticate",
    "te",
    "trailer",
    "upgrade",
}


BAD_REQUEST = "bad-request"  # the request could not be understood
NO_REQUEST = "no-request"  # no complete request before the connection ended


class BadRequest(Exception):
    """The client's request cannot be understood; answered 400."""


async def system_resolver(name: str, port: int) -> list[IPAddress]:
    """The host's resolver (getaddrinfo), addresses in the order it gives."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(
        name, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )
    out: list[IPAddress] = []
    for info in infos:
        address = parse_address(str(info[4][0]))
        if address is not None and address not in out:
            out.append(address)
    return out


class Exchange:
    """Serves one accepted connection of one run."""

    def __init__(
        self,
        session: _Session,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        resolver: Resolver,
    ) -> None:
        self.session = session
        self.reader = reader
        self.writer = writer
        self.resolver = resolver
        self.upstream: asyncio.StreamWriter | None = None
        self.recorded = False  # this connection has a record
        self.protocol = "tcp"  # until its first byte tells

    def _record(self, *args: Any, **kwargs: Any) -> _Record:
        self.recorded = True
        return self.session.record(*args, **kwargs)

    def _refuse_request(self, rule: str, reason: str) -> _Record:
        """Record this connection as refused before it named a destination."""
        self.recorded = True
        return self.session.refuse_request(self.protocol, rule, reason)

    async def serve(self) -> None:
        started = False  # the first byte came
        # what the connection is recorded as if it ends before any record
        # was made: every accepted connection gets one
        unrecorded = (
            BAD_REQUEST,
            "the proxy failed while reading the request (see the log)",
        )
        try:
            first = await asyncio.wait_for(self.reader.readexactly(1), HEAD_TIMEOUT_SEC)
            started = True
            if first == b"\x05":
                self.protocol = "socks5"
                await self._socks5()
            elif first == b"\x04":
                self.protocol = "socks4"
                await self._socks4()
            else:
                self.protocol = "http"
                await self._http(first)
        except asyncio.CancelledError:
            unrecorded = (
                NO_REQUEST,
                "the run ended before its request was complete"
                if started
                else "sent nothing before the run ended",
            )
            raise
        except (TimeoutError, asyncio.IncompleteReadError, OSError) as err:
            # the client went away or stalled: nothing to answer
            if isinstance(err, TimeoutError):
                why = (
                    f"no complete request within {HEAD_TIMEOUT_SEC:g} s"
                    if started
                    else f"sent nothing within {HEAD_TIMEOUT_SEC:g} s"
                )
            elif isinstance(err, asyncio.IncompleteReadError):
                why = (
                    "closed before its request was complete"
                    if started
                    else "closed before sending anything"
                )
            else:
                why = f"the connection failed before a complete request: {err}"
            unrecorded = (NO_REQUEST, why)
        except BadRequest as err:
            unrecorded = (BAD_REQUEST, str(err))
            reason = printable(str(err), limit=1024)  # as recorded
            await self._reply_http(400, "Bad Request", f"stockade proxy: {reason}\n")
        except asyncio.LimitOverrunError:
            unrecorded = (BAD_REQUEST, f"request head larger than {HEAD_LIMIT // 1024} KiB")
            await self._reply_http(
                431,
                "Request Header Fields Too Large",
                "stockade proxy: head too large\n",
            )
        finally:
            if not self.recorded:
                self._refuse_request(*unrecorded)
            for writer in (self.writer, self.upstream):
                if writer is not None:
                    writer.close()

    # -- decisions -------------------------------------------------------------

    async def _open(
        self, host: str, port: int, protocol: str
    ) -> tuple[_Record, asyncio.StreamReader | None]:
        """Decide, resolve and connect; the record says what happened.

        Returns the record and the upstream reader (None when refused or
        failed); the upstream writer is kept in ``self.upstream``.
        """
        allowlist = self.session.allowlist
        address = parse_address(host)
        candidates: list[IPAddress] = []
        if address is not None:
            shown = str(address)
            decision = allowlist.decide_address(address, port)
            candidates = [address]
        else:
            try:
                name = normalize_name(host)
            except ValueError as err:
                decision = Decision(False, "bad-host", str(err))
                name = host
            else:
                decision = allowlist.decide_name(name, port)
            shown = name
            if decision.allowed:
                try:
                    resolved = await self._resolve(name, port)
                except (TimeoutError, OSError, ValueError) as err:
                    record = self._record(shown, port, protocol, decision)
                    record.fail(f"cannot resolve {name}: {err}")
                    return record, None
                refusal: Decision | None = None
                for candidate in resolved:
                    verdict = allowlist.decide_address(candidate, port, via=name)
                    if verdict.allowed:
                        candidates.append(candidate)
                    elif refusal is None:
                        refusal = verdict
                if not candidates:
                    decision = refusal or Decision(
                        False, "no-address", f"{name} has no address"
                    )
        record = self._record(shown, port, protocol, decision)
        if not decision.allowed:
            return record, None
        errors = []
        for candidate in candidates:
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(str(candidate), port, limit=HEAD_LIMIT),
                    CONNECT_TIMEOUT_SEC,
                )
            except (TimeoutError, OSError) as err:
                if isinstance(err, OSError) and err.errno in (errno.EMFILE, errno.ENFILE):
                    # the caller's process is out of descriptors: not this
                    # destination's fault, and no later address would fare better
                    name = errno.errorcode[err.errno]
                    self.session.refuse(
                        record,
                        Decision(
                            False,
                            "connection-limit",
                            f"socket() failed with {name} ({os.strerror(err.errno)}): the "
                            "caller's process is out of descriptors",
                        ),
                        label="connection-limit",
                    )
                    return record, None
                errors.append(f"{candidate}: {err or type(err).__name__}")
                continue
            record.address = str(candidate)
            self.upstream = writer
            return record, reader
        record.fail("cannot connect: " + "; ".join(errors))
        return record, None

    async def _resolve(self, name: str, port: int) -> list[IPAddress]:
        pinned = self.session.allowlist.pinned(name)
        if pinned is not None:
            return list(pinned)
        answer = self.resolver(name, port)
        if inspect.isawaitable(answer):
            answer = await asyncio.wait_for(answer, RESOLVE_TIMEOUT_SEC)
        out = []
        for item in answer:  # type: ignore[union-attr]
            address = parse_address(str(item))
            if address is None:
                raise ValueError(f"resolver returned {item!r}, not an address")
            out.append(address)
        return out

    # -- HTTP ------------------------------------------------------------------

    async def _http(self, first: bytes) -> None:
        head = first + await asyncio.wait_for(
            self.reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT_SEC
        )
        # tolerate empty lines before the request line (RFC 9112 2.2)
        method, target, version, headers = _parse_request_head(head.lstrip(b"\r\n"))
        if method == "CONNECT":
            host, port = _split_authority(target, None)
            record, upstream = await self._open(host, port, "connect")
            if upstream is None:
                await self._refuse_http(record)
                return
            self.writer.write(
                b"HTTP/1.1 200 Connection established\r\nProxy-Agent: stockade\r\n\r\n"
            )
            await self.writer.drain()
            await self._relay(upstream, record)
            return

        url = urllib.parse.urlsplit(target)
        if url.scheme.lower() != "http" or not url.netloc:
            if url.scheme.lower() == "https":
                raise BadRequest(
                    "https URLs go through CONNECT (set HTTPS_PROXY), not plain forwarding"
                )
            raise BadRequest(
                f"{target[:200]!r} is not an absolute http:// URL; this is a proxy"
            )
        host, port = _split_authority(url.netloc.rpartition("@")[2], 80)
        framing = _body_framing(headers)
        record, upstream = await self._open(host, port, "http")
        if upstream is None:
            await self._refuse_http(record)
            return
        assert self.upstream is not None
        path = url.path or "/"
        if url.query:
            path += "?" + url.query
        out = [f"{method} {path} {version}"]
        for name, value in headers:
            if name.lower() in _HOP_BY_HOP or name.lower() == "host":
                continue
            out.append(f"{name}: {value}")
        out.append(f"Host: {url.netloc.rpartition('@')[2]}")
        out.append("Connection: close")
        data = ("\r\n".join(out) + "\r\n\r\n").encode("latin-1")
        await self._send_up(data, record)
        await self._forward_body(framing, record)
        await self._forward_response(upstream, record)

    async def _send_up(self, data: bytes, record: _Record) -> None:
        assert self.upstream is not None
        self.upstream.write(data)
        record.bytes_sent += len(data)
        await self.upstream.drain()

    async def _forward_body(self, framing: tuple[str, int], record: _Record) -> None:
        kind, length = framing
        if kind == "length":
            left = length
            while left:
                data = await self.reader.read(min(CHUNK, left))
                if not data:
                    raise ConnectionError("client closed during the request body")
                left -= len(data)
                await self._send_up(data, record)
        elif kind == "chunked":
            while True:
                line = await self.reader.readuntil(b"\r\n")
                await self._send_up(line, record)
                try:
                    size = int(line.split(b";", 1)[0].strip(), 16)
                except ValueError:
                    raise ConnectionError(
                        "bad chunk size in the request body"
                    ) from None
                if size == 0:
                    while True:  # trailers up to the empty line
                        trailer = await self.reader.readuntil(b"\r\n")
                        await self._send_up(trailer, record)
                        if trailer == b"\r\n":
                            return
                data = await self.reader.readexactly(size + 2)
                await self._send_up(data, record)

    async def _forward_response(
        self, upstream: asyncio.StreamReader, record: _Record
    ) -> None:
        while True:
            try:
                head = await upstream.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError) as err:
                record.fail(f"bad response head from upstream: {type(err).__name__}")
                await self._reply_http(
                    502, "Bad Gateway", f"stockade proxy: {record.error}\n"
                )
                return
            lines = head.decode("latin-1").split("\r\n")
            parts = lines[0].split(" ", 2)
            if (
                len(parts) < 2
                or not parts[0].startswith("HTTP/")
                or not parts[1].isdigit()
            ):
                record.fail("upstream did not answer HTTP")
                await self._reply_http(
                    502, "Bad Gateway", f"stockade proxy: {record.error}\n"
                )
                return
            status = int(parts[1])
            if 100 <= status < 200 and status != 101:
                await self._send_down(head, record)
                continue
            kept = [
                line
                for line in lines[1:]
                if line
                and line.split(":", 1)[0].strip().lower()
                not in ("connection", "keep-alive", "proxy-connection")
            ]
            rewritten = "\r\n".join([lines[0], *kept, "Connection: close"]) + "\r\n\r\n"
            await self._send_down(rewritten.encode("latin-1"), record)
            break
        while True:
            data = await upstream.read(CHUNK)
            if not data:
                return
            await self._send_down(data, record)

    async def _send_down(self, data: bytes, record: _Record) -> None:
        self.writer.write(data)
        record.bytes_received += len(data)
        await self.writer.drain()

    async def _refuse_http(self, record: _Record) -> None:
        if not record.allowed:
            body = (
                f"stockade network policy refused {record.host}:{record.port}: "
                f"rule '{record.rule}': {record.reason}\n"
            )
            await self._reply_http(
                403,
                "Forbidden",
                body,
                {"X-Stockade-Denied": f"{record.rule}; {record.reason}"},
            )
        else:
            await self._reply_http(
                502, "Bad Gateway", f"stockade proxy: {record.error}\n"
            )

    async def _reply_http(
        self, status: int, text: str, body: str, extra: dict[str, str] | None = None
    ) -> None:
        payload = body.encode("utf-8")
        lines = [
            f"HTTP/1.1 {status} {text}",
            "Content-Type: text/plain; charset=utf-8",
            f"Content-Length: {len(payload)}",
            "Proxy-Agent: stockade",
            "Connection: close",
        ]
        for name, value in (extra or {}).items():
            lines.append(f"{name}: {_header_safe(value)}")
        try:
            self.writer.write(
                ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + payload
            )
            await self.writer.drain()
        except (ConnectionError, OSError):
            pass

    # -- SOCKS -----------------------------------------------------------------

    async def _socks5(self) -> None:
        count = (await self.reader.readexactly(1))[0]
        methods = await self.reader.readexactly(count)
        if 0x00 in methods:
            self.writer.write(b"\x05\x00")
        elif 0x02 in methods:
            # user name/password: accepted whatever they are (RFC 1929)
            self.writer.write(b"\x05\x02")
            await self.writer.drain()
            await self.reader.readexactly(1)
            await self.reader.readexactly((await self.reader.readexactly(1))[0])
            await self.reader.readexactly((await self.reader.readexactly(1))[0])
            self.writer.write(b"\x01\x00")
        else:
            self._refuse_request(
                BAD_REQUEST,
                "SOCKS5 client offered no supported authentication method "
                f"(methods {methods.hex(' ') or 'none'}; only 00 and 02 are)",
            )
            self.writer.write(b"\x05\xff")
            await self.writer.drain()
            return
        await self.writer.drain()
        _version, command, _reserved, kind = await self.reader.readexactly(4)
        if kind == 0x01:
            host = socket.inet_ntop(socket.AF_INET, await self.reader.readexactly(4))
        elif kind == 0x04:
            host = socket.inet_ntop(socket.AF_INET6, await self.reader.readexactly(16))
        elif kind == 0x03:
            raw = await self.reader.readexactly((await self.reader.readexactly(1))[0])
            # any bytes: the record escapes what is not printable, and a byte
            # that is not UTF-8 is shown as itself (\xNN)
            host = raw.decode("utf-8", "surrogateescape")
        else:
            self._refuse_request(
                BAD_REQUEST, f"SOCKS5 address type {kind} is not supported"
            )
            await self._socks5_reply(0x08)
            return
        port = int.from_bytes(await self.reader.readexactly(2), "big")
        if command != 0x01:
            # BIND and UDP ASSOCIATE carry the address the client expects a
            # peer or its datagrams from, not a destination: the command is
            # what is refused, so it is what the refusal is counted under
            what = _SOCKS5_COMMANDS.get(command, f"command {command}")
            self._record(
                host,
                port,
                "socks5",
                Decision(
                    False,
                    "socks-command",
                    f"SOCKS5 {what} is not supported, only CONNECT; the address in the "
                    "request was not decided",
                ),
                label=f"socks5 {what}",
            )
            await self._socks5_reply(0x07)
            return
        record, upstream = await self._open(host, port, "socks5")
        if upstream is None:
            if not record.allowed:
                await self._socks5_reply(0x02)
            elif record.error and record.error.startswith("cannot resolve"):
                await self._socks5_reply(0x04)
            else:
                await self._socks5_reply(0x05)
            return
        await self._socks5_reply(0x00)
        await self._relay(upstream, record)

    async def _socks5_reply(self, code: int) -> None:
        self.writer.write(bytes([0x05, code, 0x00, 0x01, 0, 0, 0, 0, 0, 0]))
        await self.writer.drain()

    async def _socks4(self) -> None:
        data = await self.reader.readexactly(7)
        port = int.from_bytes(data[1:3], "big")
        host = socket.inet_ntop(socket.AF_INET, data[3:7])
        self._record(
            host,
            port,
            "socks4",
            Decision(
                False,
                "unsupported-protocol",
                "SOCKS4 is not supported; use SOCKS5 (socks5h://); the destination was "
                "not decided",
            ),
            label="socks4",
        )
        self.writer.write(b"\x00\x5b" + b"\x00" * 6)
        await self.writer.drain()

    # -- relay -----------------------------------------------------------------

    async def _relay(self, upstream: asyncio.StreamReader, record: _Record) -> None:
        assert self.upstream is not None
        up_writer = self.upstream

        async def pump(
            src: asyncio.StreamReader, dst: asyncio.StreamWriter, sent: bool
        ) -> None:
            try:
                while True:
                    data = await src.read(CHUNK)
                    if not data:
                        break
                    dst.write(data)
                    if sent:
                        record.bytes_sent += len(data)
                    else:
                        record.bytes_received += len(data)
                    await dst.drain()
                if dst.can_write_eof():
                    dst.write_eof()
            except (ConnectionError, OSError):
                # one side is gone: end the other direction too
                self.writer.transport.abort()
                up_writer.transport.abort()

        await asyncio.gather(
            pump(self.reader, up_writer, True),
            pump(upstream, self.writer, False),
        )


_SOCKS5_COMMANDS = {0x02: "BIND", 0x03: "UDP ASSOCIATE"}


def _header_safe(value: str) -> str:
    return "".join(ch if 32 <= ord(ch) < 127 else "?" for ch in value)


def _parse_request_head(head: bytes) -> tuple[str, str, str, list[tuple[str, str]]]:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise BadRequest(f"malformed request line {lines[0][:200]!r}")
    headers = []
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise BadRequest(f"malformed header line {line[:200]!r}")
        headers.append((name, value.strip()))
    return parts[0].upper(), parts[1], parts[2], headers


def _split_authority(text: str, default_port: int | None) -> tuple[str, int]:
    """host and port of ``host:port``, ``[v6]:port`` (port optional with a default)."""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise BadRequest(f"bad address {text!r}")
        host, rest = text[1:end], text[end + 1 :]
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            host, rest = text, ""
        else:
            rest = ":" + port_text
    if rest:
        if (
            not rest.startswith(":")
            or not rest[1:].isdigit()
            or not 0 < int(rest[1:]) < 65536
        ):
            raise BadRequest(f"bad port in {text!r}")
        return host, int(rest[1:])
    if default_port is None:
        raise BadRequest(f"{text!r} needs a port")
    return host, default_port


def _body_framing(headers: list[tuple[str, str]]) -> tuple[str, int]:
    """("none"|"length"|"chunked", length) of a request body (RFC 9112 6)."""
    lengths = {value for name, value in headers if name.lower() == "content-length"}
    codings = [value for name, value in headers if name.lower() == "transfer-encoding"]
    if codings:
        if lengths:
            raise BadRequest("both Transfer-Encoding and Content-Length")
        last = ",".join(codings).split(",")[-1].strip().lower()
        if last != "chunked":
            raise BadRequest(
                "a request body whose length is unknown (Transfer-Encoding without chunked)"
            )
        return "chunked", 0
    if not lengths:
        return "none", 0
    if len(lengths) > 1 or not next(iter(lengths)).isdigit():
        raise BadRequest("invalid Content-Length")
    return "length", int(next(iter(lengths)))
