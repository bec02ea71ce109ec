"""The allowlist proxy on its own: a listener on the host's loopback stands in
for the one the launcher makes inside a sandbox. Every server is on loopback;
names reach them only through pins or the test resolver."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request

import pytest
from netservers import LoopbackHTTPServer, TCPWitness, ipv6_loopback_works

from stockade.network.policy import Allowlist
from stockade.network.proxy import NetworkProxy


@pytest.fixture
def server():
    srv = LoopbackHTTPServer()
    yield srv
    srv.stop()


class ProxyRun:
    """A started proxy serving one 'run' whose listener is on 127.0.0.1."""

    def __init__(self, allowlist: Allowlist, resolver=None) -> None:
        self.proxy = NetworkProxy(resolver=resolver)
        self.proxy.start()
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        self.port = listener.getsockname()[1]
        self.proxy.attach("run-1", allowlist, listener.detach())

    def opener(self) -> urllib.request.OpenerDirector:
        url = f"http://127.0.0.1:{self.port}"
        return urllib.request.build_opener(
            urllib.request.ProxyHandler({"http": url, "https": url})
        )

    def end(self):
        return self.proxy.end_run("run-1")


@pytest.fixture
def make_run():
    runs = []

    def make(entries, hosts=None, resolver=None):
        run = ProxyRun(Allowlist(entries, hosts), resolver)
        runs.append(run)
        return run

    yield make
    for run in runs:
        run.proxy.close()


def _request(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)


def test_forwarding_allowed_and_denied(make_run, server):
    run = make_run(
        ["pypi.test", f"127.0.0.1:{server.port}"], {"pypi.test": ["127.0.0.1"]}
    )
    opener = run.opener()
    assert (
        opener.open(f"http://pypi.test:{server.port}/a?b=1").read() == b"hello /a?b=1"
    )
    posted = opener.open(
        f"http://pypi.test:{server.port}/echo", data=b"x" * 100_000
    ).read()
    assert posted == b"x" * 100_000
    with pytest.raises(urllib.error.HTTPError) as info:
        opener.open(f"http://evil.test:{server.port}/")
    assert info.value.code == 403
    assert info.value.headers["X-Stockade-Denied"].startswith("default-deny;")
    body = info.value.read().decode()
    assert "evil.test" in body and "default-deny" in body
    traffic = run.end()
    hosts = [(c.host, c.decision, c.protocol) for c in traffic.connections]
    assert hosts == [
        ("pypi.test", "allowed", "http"),
        ("pypi.test", "allowed", "http"),
        ("evil.test", "denied", "http"),
    ]
    first, second = traffic.connections[:2]
    assert first.address == "127.0.0.1" and first.rule == "pypi.test"
    assert second.bytes_sent > 100_000 and second.bytes_received > 100_000
    assert traffic.denied == {f"evil.test:{server.port}": 1}
    assert server.paths == ["/a?b=1", "/echo"]


def test_one_request_per_connection_so_a_second_host_is_decided_again(make_run, server):
    run = make_run(["pypi.test", "127.0.0.1"], {"pypi.test": ["127.0.0.1"]})
    pipelined = (
        f"GET http://pypi.test:{server.port}/one HTTP/1.1\r\nHost: pypi.test\r\n\r\n"
        f"GET http://evil.test:{server.port}/two HTTP/1.1\r\nHost: evil.test\r\n\r\n"
    ).encode()
    answer = _request(run.port, pipelined)
    assert b"hello /one" in answer and b"Connection: close" in answer
    assert b"/two" not in answer
    run.end()
    assert server.paths == ["/one"]


def test_chunked_request_body(make_run, server):
    run = make_run(["127.0.0.1"])
    request = (
        f"POST http://127.0.0.1:{server.port}/c HTTP/1.1\r\nHost: x\r\n"
        "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    ).encode()
    answer = _request(run.port, request)
    assert answer.split(b" ")[1] == b"200"
    assert answer.endswith(b"\r\n\r\nhello world")
    traffic = run.end()
    assert traffic.connections[0].bytes_sent > len(request) - 40


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /relative HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET https://pypi.test/ HTTP/1.1\r\n\r\n",
        b"NONSENSE\r\n\r\n",
        b"POST http://127.0.0.1:1/ HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
    ],
)
def test_bad_requests_get_400_and_are_recorded(make_run, request_bytes):
    run = make_run(["127.0.0.1"])
    assert _request(run.port, request_bytes).startswith(b"HTTP/1.1 400")
    traffic = run.end()
    # no destination could be parsed: the record names the run's listener
    (record,) = traffic.connections
    assert (record.host, record.port, record.protocol) == ("127.0.0.1", run.port, "http")
    assert (record.decision, record.rule) == ("denied", "bad-request")
    assert record.reason and record.bytes_sent == record.bytes_received == 0
    assert traffic.denied == {"bad-request": 1}


def test_bad_request_reasons_are_escaped_and_capped(make_run):
    run = make_run(["127.0.0.1"])
    line = b"GET /\x1b]0;owned\x07\xff" + b"A" * 5000 + b" HTTP/1.1"
    answer = _request(run.port, line + b"\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400")
    assert b"\x1b" not in answer and b"\x07" not in answer
    (record,) = run.end().connections
    assert record.rule == "bad-request"
    assert record.reason.isascii() and record.reason.isprintable()
    assert "is not an absolute http:// URL" in record.reason
    assert record.reason.startswith("'/\\x1b]0;owned\\x07\\xffAAA")
    assert len(record.reason) < 400  # the quoted target is cut
    # the 400 body says what the record says
    assert record.reason.encode() in answer


def test_a_head_too_large_gets_431_and_is_recorded(make_run):
    run = make_run(["127.0.0.1"])
    head = b"GET http://127.0.0.1/ HTTP/1.1\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n"
    with socket.create_connection(("127.0.0.1", run.port), timeout=10) as sock:
        try:
            sock.sendall(head)
        except ConnectionError:
            pass  # the proxy may answer and close before reading it all
        answer = sock.recv(100)
    assert answer.startswith(b"HTTP/1.1 431")
    traffic = run.end()
    (record,) = traffic.connections
    assert (record.rule, record.decision) == ("bad-request", "denied")
    assert "larger than 64 KiB" in record.reason
    assert traffic.denied == {"bad-request": 1}


def test_socks5_requests_that_name_no_destination_are_recorded(make_run):
    run = make_run(["127.0.0.1"])
    # only GSSAPI (01) offered: no acceptable method
    assert _request(run.port, b"\x05\x01\x01") == b"\x05\xff"
    # address type 9 does not exist
    with socket.create_connection(("127.0.0.1", run.port), timeout=10) as sock:
        sock.sendall(b"\x05\x01\x00")
        assert sock.recv(2) == b"\x05\x00"
        sock.sendall(b"\x05\x01\x00\x09")
        assert sock.recv(10)[1] == 0x08
    traffic = run.end()
    methods, kind = traffic.connections
    assert (methods.protocol, methods.rule) == ("socks5", "bad-request")
    assert "no supported authentication method" in methods.reason
    assert "address type 9" in kind.reason and kind.decision == "denied"
    assert traffic.denied == {"bad-request": 2}


def test_connections_that_send_no_complete_request_are_recorded(make_run):
    run = make_run(["127.0.0.1"])
    # connected and closed without a byte
    socket.create_connection(("127.0.0.1", run.port), timeout=10).close()
    # half a request head, then half a SOCKS5 greeting, each then closed
    for partial in (b"GET http://127.0.0.1/ HTTP/1.1\r\nHost: x", b"\x05\x02"):
        with socket.create_connection(("127.0.0.1", run.port), timeout=10) as sock:
            sock.sendall(partial)
            sock.shutdown(socket.SHUT_WR)
            assert sock.recv(100) == b""
    # still connected, silent, when the run ends
    idle = socket.create_connection(("127.0.0.1", run.port), timeout=10)
    try:
        time.sleep(0.2)  # accepted before the run ends
        traffic = run.end()
    finally:
        idle.close()
    records = [(c.protocol, c.rule, c.decision, c.reason) for c in traffic.connections]
    assert sorted(records) == sorted([
        ("tcp", "no-request", "denied", "closed before sending anything"),
        ("http", "no-request", "denied", "closed before its request was complete"),
        ("socks5", "no-request", "denied", "closed before its request was complete"),
        ("tcp", "no-request", "denied", "sent nothing before the run ended"),
    ])
    assert all(c.host == "127.0.0.1" and c.port == run.port for c in traffic.connections)
    assert traffic.denied == {"no-request": 4}


def test_connect_tunnel(make_run, server):
    run = make_run(["pypi.test"], {"pypi.test": ["127.0.0.1"]}, None)
    # pinned to loopback without naming 127.0.0.1: refused (rebinding)
    refused = _request(
        run.port, f"CONNECT pypi.test:{server.port} HTTP/1.1\r\n\r\n".encode()
    )
    assert refused.startswith(b"HTTP/1.1 403")
    assert b"X-Stockade-Denied: non-public-address" in refused
    run2 = make_run(["pypi.test", "127.0.0.1"], {"pypi.test": ["127.0.0.1"]})
    with socket.create_connection(("127.0.0.1", run2.port), timeout=10) as sock:
        sock.sendall(
            f"CONNECT pypi.test:{server.port} HTTP/1.1\r\nHost: pypi.test\r\n\r\n".encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(1)
        assert head.startswith(b"HTTP/1.1 200")
        sock.sendall(b"GET /tunnelled HTTP/1.0\r\n\r\n")
        body = b""
        while chunk := sock.recv(65536):
            body += chunk
    assert body.endswith(b"hello /tunnelled")
    record = run2.end().connections[0]
    assert record.protocol == "connect" and record.bytes_received == len(body)


def _socks5(
    port: int, atyp: int, host: bytes, dest_port: int, methods: bytes = b"\x00"
):
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(b"\x05" + bytes([len(methods)]) + methods)
    choice = sock.recv(2)
    if choice == b"\x05\x02":
        sock.sendall(b"\x01\x04user\x04pass")
        assert sock.recv(2) == b"\x01\x00"
    else:
        assert choice == b"\x05\x00"
    address = bytes([len(host)]) + host if atyp == 3 else host
    sock.sendall(
        b"\x05\x01\x00" + bytes([atyp]) + address + struct.pack(">H", dest_port)
    )
    reply = sock.recv(10)
    return sock, reply[1]


def test_socks5_domain_ipv4_and_refusals(make_run, server):
    run = make_run(
        ["pypi.test", f"127.0.0.1:{server.port}"], {"pypi.test": ["127.0.0.1"]}
    )
    sock, code = _socks5(run.port, 3, b"pypi.test", server.port)
    assert code == 0
    sock.sendall(b"GET /socks HTTP/1.0\r\n\r\n")
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    sock.close()
    assert data.endswith(b"hello /socks")
    sock, code = _socks5(
        run.port, 1, socket.inet_aton("127.0.0.1"), server.port, b"\x02"
    )
    assert code == 0
    sock.close()
    sock, code = _socks5(run.port, 3, b"evil.test", 443)
    assert code == 0x02  # connection not allowed by ruleset
    sock.close()
    sock, code = _socks5(run.port, 1, socket.inet_aton("127.0.0.2"), server.port)
    assert code == 0x02
    sock.close()
    records = run.end().connections
    assert [(c.host, c.decision) for c in records] == [
        ("pypi.test", "allowed"),
        ("127.0.0.1", "allowed"),
        ("evil.test", "denied"),
        ("127.0.0.2", "denied"),
    ]


def test_socks4_is_refused_and_recorded(make_run):
    run = make_run(["127.0.0.1"])
    answer = _request(run.port, b"\x04\x01\x00\x50\x7f\x00\x00\x01user\x00")
    assert answer[:2] == b"\x00\x5b"
    (record,) = run.end().connections
    assert record.rule == "unsupported-protocol" and record.decision == "denied"


@pytest.mark.skipif(not ipv6_loopback_works(), reason="no IPv6 loopback on this host")
def test_ipv6_literals(make_run):
    server = LoopbackHTTPServer("::1")
    try:
        run = make_run([f"[::1]:{server.port}", "v6.test"], {"v6.test": ["::1"]})
        opener = run.opener()
        assert opener.open(f"http://[::1]:{server.port}/lit").read() == b"hello /lit"
        with pytest.raises(urllib.error.HTTPError) as info:
            opener.open(
                f"http://[::1]:{server.port + 1 if server.port < 65535 else 1}/other"
            )
        assert info.value.code == 403
        # a name pinned to ::1 is allowed because [::1]:port is named
        assert (
            opener.open(f"http://v6.test:{server.port}/name").read() == b"hello /name"
        )
        sock, code = _socks5(
            run.port, 4, socket.inet_pton(socket.AF_INET6, "::1"), server.port
        )
        assert code == 0
        sock.close()
        with socket.create_connection(("127.0.0.1", run.port), timeout=10) as tunnel:
            tunnel.sendall(f"CONNECT [::1]:{server.port} HTTP/1.1\r\n\r\n".encode())
            assert tunnel.recv(12) == b"HTTP/1.1 200"
        records = run.end().connections
        assert [c.host for c in records] == ["::1", "::1", "v6.test", "::1", "::1"]
        assert [c.decision for c in records] == [
            "allowed",
            "denied",
            "allowed",
            "allowed",
            "allowed",
        ]
    finally:
        server.stop()


def test_resolver_override_and_rebinding(make_run, server):
    asked = []

    def resolver(name, port):
        asked.append(name)
        return ["127.0.0.1"]

    run = make_run(
        ["rebind.test", "ok.test", f"127.0.0.1:{server.port}"], resolver=resolver
    )
    opener = run.opener()
    assert opener.open(f"http://ok.test:{server.port}/ok").read() == b"hello /ok"
    with pytest.raises(urllib.error.HTTPError) as info:
        # same name and address, another port: 127.0.0.1 is only named with server.port
        opener.open(
            f"http://rebind.test:{server.port + 1 if server.port < 65535 else 1}/"
        )
    assert info.value.code == 403
    assert info.value.headers["X-Stockade-Denied"].startswith("non-public-address;")
    assert "127.0.0.1 (loopback)" in info.value.read().decode()
    with pytest.raises(urllib.error.HTTPError):
        opener.open("http://not-allowed.test/")
    assert asked == ["ok.test", "rebind.test"]  # a refused name is never resolved
    run.end()


def test_async_resolver_and_system_resolver_rebinding(make_run, server):
    async def resolver(name, port):
        await asyncio.sleep(0)
        return ["127.0.0.1"]

    run = make_run([f"127.0.0.1:{server.port}", "a.test"], resolver=resolver)
    assert run.opener().open(f"http://a.test:{server.port}/").read() == b"hello /"
    run.end()
    # the host's resolver: "localhost" comes from /etc/hosts (no DNS traffic)
    run2 = make_run(["localhost"])
    with pytest.raises(urllib.error.HTTPError) as info:
        run2.opener().open(f"http://localhost:{server.port}/")
    assert info.value.code == 403
    assert "loopback" in info.value.headers["X-Stockade-Denied"]
    run2.end()


def test_unreachable_destination_is_an_allowed_connection_with_an_error(make_run):
    witness = TCPWitness()
    port = witness.port
    witness.stop()  # nothing listens there any more
    run = make_run([f"127.0.0.1:{port}"])
    with pytest.raises(urllib.error.HTTPError) as info:
        run.opener().open(f"http://127.0.0.1:{port}/")
    assert info.value.code == 502
    (record,) = run.end().connections
    assert record.decision == "allowed" and "cannot connect" in record.error


def test_end_run_closes_the_listener_and_open_tunnels(make_run, server):
    run = make_run(["127.0.0.1"])
    sock = socket.create_connection(("127.0.0.1", run.port), timeout=10)
    sock.sendall(f"CONNECT 127.0.0.1:{server.port} HTTP/1.1\r\n\r\n".encode())
    assert sock.recv(100).startswith(b"HTTP/1.1 200")
    traffic = run.end()  # the tunnel is idle and open: ended after the grace
    assert len(traffic.connections) == 1
    assert sock.recv(100) == b""
    sock.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", run.port), timeout=5)


def test_close_is_idempotent_and_stops_the_thread():
    proxy = NetworkProxy()
    proxy.start()
    assert proxy.running
    proxy.close()
    proxy.close()
    assert not proxy.running
    assert proxy.end_run("missing").connections == []


def test_socks5_reply_codes_for_unresolvable_and_refused(make_run):
    def resolver(name, port):
        raise OSError(-2, "Name or service not known")

    witness = TCPWitness()
    port = witness.port
    witness.stop()  # nothing listens there any more: the connection is refused
    run = make_run(["gone.test", f"127.0.0.1:{port}"], resolver=resolver)
    sock, code = _socks5(run.port, 3, b"gone.test", 80)
    sock.close()
    assert code == 0x04  # host unreachable: the allowed name does not resolve
    sock, code = _socks5(run.port, 1, socket.inet_aton("127.0.0.1"), port)
    sock.close()
    assert code == 0x05  # connection refused by the allowed destination
    records = run.end().connections
    assert [(c.host, c.decision) for c in records] == [
        ("gone.test", "allowed"),
        ("127.0.0.1", "allowed"),
    ]
    assert records[0].error.startswith("cannot resolve gone.test")
    assert records[1].error.startswith("cannot connect")


def _socks5_command(port: int, command: int, host: bytes, dest_port: int) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"\x05\x01\x00")
        assert sock.recv(2) == b"\x05\x00"
        sock.sendall(
            bytes([5, command, 0, 3, len(host)]) + host + struct.pack(">H", dest_port)
        )
        return sock.recv(10)[1]


def test_socks5_udp_associate_is_refused_as_the_command_not_the_host(make_run):
    run = make_run(["pypi.test"], {"pypi.test": ["127.0.0.1"]})
    assert _socks5_command(run.port, 3, b"pypi.test", 8765) == 0x07
    assert _socks5_command(run.port, 2, b"pypi.test", 8765) == 0x07
    traffic = run.end()
    assert traffic.denied == {"socks5 UDP ASSOCIATE": 1, "socks5 BIND": 1}
    udp, bind = traffic.connections
    assert udp.rule == bind.rule == "socks-command"
    assert "UDP ASSOCIATE is not supported" in udp.reason
    assert "BIND is not supported" in bind.reason


def test_program_supplied_names_are_escaped_before_they_are_recorded(make_run):
    run = make_run(["pypi.test"], {"pypi.test": ["127.0.0.1"]})
    nasty = b"pypi.test\x00\x1b[2J\xff\xe2\x80\xae"
    assert _socks5_command(run.port, 1, nasty, 80) == 0x02
    answer = _request(
        run.port, b"CONNECT evil\x1b]0;owned\x07.test:443 HTTP/1.1\r\n\r\n"
    )
    assert answer.startswith(b"HTTP/1.1 403")
    assert b"\x1b" not in answer
    traffic = run.end()
    socks, connect = traffic.connections
    assert socks.host == "pypi.test\\x00\\x1b[2J\\xff\\u202e"
    assert connect.host == "evil\\x1b]0;owned\\x07.test"
    for text in [*traffic.denied, *(f"{c.host} {c.reason}" for c in traffic.connections)]:
        assert text.isascii() and text.isprintable(), text
    assert set(traffic.denied) == {
        "pypi.test\\x00\\x1b[2J\\xff\\u202e:80",
        "evil\\x1b]0;owned\\x07.test:443",
    }


def test_close_on_the_proxy_thread_stops_it():
    # what the manager's finalizer does when the collector runs on the
    # proxy's own thread: it must not wait for the loop it runs on
    proxy = NetworkProxy()
    proxy.start()
    thread = proxy.thread
    assert thread is not None
    proxy._loop.call_soon_threadsafe(proxy.close)
    thread.join(10)
    assert not thread.is_alive()
    assert not proxy.running


def _run_python(code: str, timeout: float = 60) -> dict:
    """Run ``code`` in a fresh interpreter (its own RLIMIT_NOFILE); its last JSON line."""
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_start_raises_the_soft_nofile_limit_and_caps_connections_from_it():
    data = _run_python(
        """
        import json, logging, resource
        logging.basicConfig(level=logging.DEBUG, format="%(message)s")
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 4096))
        from stockade.network.proxy import NetworkProxy
        proxy = NetworkProxy()
        proxy.start()
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        print(json.dumps({"soft": soft, "cap": proxy.max_connections, "reserve": proxy.reserve}))
        proxy.close()
        """
    )
    assert data["soft"] == 4096
    assert data["reserve"] == 1024
    assert data["cap"] == (4096 - 1024) // 2


def test_running_out_of_descriptors_is_a_connection_limit_refusal():
    # RLIMIT_NOFILE 128 (hard too: the proxy cannot raise it), then every
    # free descriptor taken: accept() and socket() fail with EMFILE in the
    # proxy. Each becomes a recorded refusal; the proxy keeps serving.
    data = _run_python(
        """
        import errno, json, os, resource, socket
        resource.setrlimit(resource.RLIMIT_NOFILE, (128, 128))
        from stockade.network.policy import Allowlist
        from stockade.network.proxy import NetworkProxy

        upstream = socket.socket()
        upstream.bind(("127.0.0.1", 0))
        upstream.listen(16)  # never accepts: connections wait in its backlog
        up_port = upstream.getsockname()[1]
        proxy = NetworkProxy()
        proxy.start()
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        port = listener.getsockname()[1]
        proxy.attach("run", Allowlist(["127.0.0.1"]), listener.detach())
        fillers = []

        def fill():
            while True:
                try:
                    fillers.append(os.open(os.devnull, os.O_RDONLY))
                except OSError as err:
                    assert err.errno == errno.EMFILE
                    return

        def answer(sock):
            sock.settimeout(5)
            data = b""
            try:
                while chunk := sock.recv(4096):
                    data += chunk
            except socket.timeout:
                data += b"<timeout>"
            except ConnectionResetError:
                data += b"<closed>"  # closed with the request unread: a reset
            sock.close()
            return data.decode("latin-1")

        request = f"CONNECT 127.0.0.1:{up_port} HTTP/1.1\\r\\n\\r\\n".encode()
        # 1. no descriptor left: accept() fails in the proxy
        first = socket.socket()
        fill()
        first.connect(("127.0.0.1", port))
        first.sendall(request)
        unread = answer(first)
        # 2. one left: accept() takes it, the upstream socket() fails
        second = socket.socket()
        os.close(fillers.pop())
        second.connect(("127.0.0.1", port))
        second.sendall(request)
        refused = answer(second)
        # 3. descriptors back: served again
        for fd in fillers:
            os.close(fd)
        third = socket.create_connection(("127.0.0.1", port), timeout=5)
        third.sendall(request)
        served = third.recv(12).decode()
        third.close()
        traffic = proxy.end_run("run")
        proxy.close()
        print(json.dumps({
            "unread": unread, "refused": refused, "served": served,
            "records": [[c.host, c.port, c.decision, c.rule, c.reason] for c in traffic.connections],
            "denied": traffic.denied,
        }))
        """
    )
    assert data["unread"] in ("", "<closed>")  # closed at once, not left hanging
    assert data["refused"].startswith("HTTP/1.1 403")
    assert "X-Stockade-Denied: connection-limit; socket() failed with EMFILE" in data["refused"]
    assert data["served"] == "HTTP/1.1 200"
    (h1, p1, d1, r1, why1), (h2, _, d2, r2, why2), (_, _, d3, r3, _) = data["records"]
    assert (h1, p1, d1, r1) == ("127.0.0.1", data["records"][0][1], "denied", "connection-limit")
    assert "accept() failed with EMFILE" in why1
    assert (h2, d2, r2) == ("127.0.0.1", "denied", "connection-limit")
    assert "socket() failed with EMFILE" in why2
    assert (d3, r3) == ("allowed", "127.0.0.1")
    assert data["denied"] == {"connection-limit": 2}
