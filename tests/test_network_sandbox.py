"""Network modes through the real sandbox.

Every server is started by the test on the host's loopback; the sandbox
reaches them only through the proxy, by names pinned in the policy (``hosts``)
to 127.0.0.1 or ::1, which the policy then names explicitly. Nothing here
sends a packet to any other address: the only non-loopback destination used
is a UDP ``connect()``, which sends nothing.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from _unpriv import give_to_unprivileged, run_code_as_nobody
from netservers import (
    WHEEL_NAME,
    LoopbackHTTPServer,
    SimpleIndex,
    TCPHolder,
    TCPWitness,
    ipv6_loopback_works,
)

from stockade import SandboxConfig, SandboxManager, SandboxUnavailableError, Termination
from stockade.network import policy as netpolicy
from stockade.network.proxy import NetworkProxy

CURL = shutil.which("curl")
needs_curl = pytest.mark.skipif(
    CURL is None, reason="curl is not installed (apt-get install curl)"
)


def _system_pip() -> bool:
    probe = subprocess.run(
        ["/usr/bin/python3", "-m", "pip", "--version"], capture_output=True
    )
    return probe.returncode == 0


needs_pip = pytest.mark.skipif(
    not _system_pip(),
    reason="/usr/bin/python3 has no pip (apt-get install python3-pip)",
)
needs_ipv6 = pytest.mark.skipif(
    not ipv6_loopback_works(), reason="no IPv6 loopback on this host"
)


@pytest.fixture
def server():
    srv = LoopbackHTTPServer()
    yield srv
    srv.stop()


@pytest.fixture
def allow_manager(server):
    """A manager allowing pypi.test (pinned to 127.0.0.1, named at the server's port)."""
    config = SandboxConfig(
        execution_log=False,
        timeout_sec=60,
        network={
            "allow": ["pypi.test", "rebind.test", f"127.0.0.1:{server.port}"],
            "hosts": {"pypi.test": "127.0.0.1", "rebind.test": "127.0.0.1"},
        },
    )
    manager = SandboxManager(config)
    yield manager
    manager.close()


def _py(code: str) -> list[str]:
    return ["python3", "-c", textwrap.dedent(code)]


# -- allow mode ------------------------------------------------------------------


@needs_curl
def test_curl_allowed_and_refused(allow_manager, server, workspace):
    port = server.port
    script = f"""
        set -u
        curl -sS --max-time 20 http://pypi.test:{port}/plain; echo
        curl -sS --max-time 20 -p http://pypi.test:{port}/tunnel; echo
        curl -sS --max-time 20 -x socks5h://127.0.0.1:3128 http://pypi.test:{port}/socks; echo
        curl -sS --max-time 20 -o /dev/null -w '%{{http_code}}' -D headers http://evil.test:{port}/; echo
        cat headers
        curl -sS --max-time 20 -x socks5h://127.0.0.1:3128 http://evil.test/ 2>&1; echo "socks rc=$?"
    """
    result = allow_manager.execute(["sh", "-c", script], cwd=workspace)
    out = result.stdout_text
    assert result.success, (out, result.stderr_text)
    assert "hello /plain" in out and "hello /tunnel" in out and "hello /socks" in out
    assert "\n403\n" in out
    assert "X-Stockade-Denied: default-deny; no allow entry matches evil.test" in out
    assert "socks rc=97" in out
    assert server.paths == ["/plain", "/tunnel", "/socks"]
    kinds = [(c.host, c.protocol, c.decision) for c in result.connections]
    assert kinds == [
        ("pypi.test", "http", "allowed"),
        ("pypi.test", "connect", "allowed"),
        ("pypi.test", "socks5", "allowed"),
        ("evil.test", "http", "denied"),
        ("evil.test", "socks5", "denied"),
    ]
    assert all(c.bytes_received > 0 for c in result.connections if c.allowed)
    denied = {v.what: v.count for v in result.violations if v.mechanism == "network"}
    assert denied == {f"evil.test:{port}": 1, "evil.test:80": 1}
    assert "network 5 connections, 2 denied" in result.summary()
    protection = {p.name: p for p in result.protections}["network"]
    assert protection.status == "enforced" and protection.detail.startswith("allow:")


def test_python_urllib_allowed_and_refused(allow_manager, server, workspace):
    code = f"""
        import urllib.request, urllib.error
        print(urllib.request.urlopen("http://pypi.test:{server.port}/urllib", timeout=20).read().decode())
        try:
            urllib.request.urlopen("http://evil.test:{server.port}/", timeout=20)
        except urllib.error.HTTPError as err:
            print(err.code, err.headers["X-Stockade-Denied"])
            print(err.read().decode())
    """
    result = allow_manager.execute(_py(code), cwd=workspace)
    assert result.success, result.stderr_text
    lines = result.stdout_text.splitlines()
    assert lines[0] == "hello /urllib"
    assert lines[1].startswith("403 default-deny;")
    assert "stockade network policy refused evil.test" in lines[2]


@needs_pip
def test_pip_download_from_a_local_index(tmp_path, workspace):
    index = SimpleIndex(tmp_path)
    config = SandboxConfig(
        execution_log=False,
        timeout_sec=120,
        network={
            "allow": ["pypi.test", f"127.0.0.1:{index.port}"],
            "hosts": {"pypi.test": "127.0.0.1", "evil.test": "127.0.0.1"},
        },
    )
    pip = [
        "python3",
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--no-cache-dir",
        "--disable-pip-version-check",
        "--retries",
        "0",
        "--timeout",
        "20",
        "-d",
        "dl",
    ]
    env = {"PIP_CONFIG_FILE": "/dev/null"}
    try:
        with SandboxManager(config) as manager:
            ok = manager.execute(
                [
                    *pip,
                    "--index-url",
                    f"http://pypi.test:{index.port}/simple",
                    "--trusted-host",
                    "pypi.test",
                    WHEEL_NAME,
                ],
                cwd=workspace,
                env=env,
            )
            # pip reports an index page's HTTP status only with -vv
            refused = manager.execute(
                [
                    *pip,
                    "-vv",
                    "--index-url",
                    f"http://evil.test:{index.port}/simple",
                    "--trusted-host",
                    "evil.test",
                    WHEEL_NAME,
                ],
                cwd=workspace,
                env=env,
            )
    finally:
        index.stop()
    assert ok.success, ok.stdout_text + ok.stderr_text
    assert (workspace / "dl" / index.wheel_name).is_file()
    assert not refused.success
    assert "403 Client Error: Forbidden" in refused.stdout_text + refused.stderr_text
    assert {c.host for c in refused.connections} == {"evil.test"}
    assert all(c.decision == "denied" for c in refused.connections)
    assert index.paths.count(f"/simple/{WHEEL_NAME}/") == 1


def test_direct_connections_bypassing_the_proxy_fail(allow_manager, workspace):
    witness = TCPWitness("127.0.0.1")
    code = f"""
        import errno, socket
        try:
            socket.create_connection(("127.0.0.1", {witness.port}), timeout=5)
            print("tcp: connected")
        except OSError as err:
            print("tcp:", errno.errorcode.get(err.errno))
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            u.connect(("192.0.2.1", 9))  # UDP connect sends nothing
            print("udp: routed")
        except OSError as err:
            print("udp:", errno.errorcode.get(err.errno))
        print("routes:", len(open("/proc/net/route").read().splitlines()) - 1)
    """
    try:
        result = allow_manager.execute(_py(code), cwd=workspace)
    finally:
        witness.stop()
    assert result.success, result.stderr_text
    assert result.stdout_text.splitlines() == [
        "tcp: ECONNREFUSED",
        "udp: ENETUNREACH",
        "routes: 0",
    ]
    assert witness.count == 0
    assert result.connections == []


def test_name_rebinding_to_loopback_is_refused(allow_manager, server, workspace):
    other = TCPWitness("127.0.0.1")  # 127.0.0.1 is named only with server.port
    code = f"""
        import urllib.request, urllib.error
        try:
            urllib.request.urlopen("http://rebind.test:{other.port}/", timeout=20)
        except urllib.error.HTTPError as err:
            print(err.code, err.headers["X-Stockade-Denied"])
    """
    try:
        result = allow_manager.execute(_py(code), cwd=workspace)
    finally:
        other.stop()
    assert result.success, result.stderr_text
    assert result.stdout_text.startswith(
        "403 non-public-address; rebind.test resolved to 127.0.0.1"
    )
    (record,) = result.connections
    assert record.rule == "non-public-address" and record.decision == "denied"
    assert other.count == 0


@needs_curl
@needs_ipv6
def test_ipv6_literals_through_the_proxy(workspace):
    server = LoopbackHTTPServer("::1")
    witness = TCPWitness("::1")
    config = SandboxConfig(
        execution_log=False,
        network={
            "allow": [f"[::1]:{server.port}", "v6.test"],
            "hosts": {"v6.test": "::1"},
        },
    )
    script = f"""
        # NO_PROXY keeps ::1 inside the sandbox; --noproxy '' sends it to the proxy
        curl -sS --max-time 20 --noproxy '' 'http://[::1]:{server.port}/lit'; echo
        curl -sS --max-time 20 --noproxy '' -x socks5h://127.0.0.1:3128 'http://[::1]:{server.port}/socks'; echo
        curl -sS --max-time 20 http://v6.test:{server.port}/name; echo
        curl -sS --max-time 20 --noproxy '' -o /dev/null -w '%{{http_code}}' 'http://[::1]:{witness.port}/'; echo
        curl -sS --max-time 5 --noproxy '*' 'http://[::1]:{witness.port}/' 2>/dev/null; echo "direct rc=$?"
    """
    try:
        with SandboxManager(config) as manager:
            result = manager.execute(["sh", "-c", script], cwd=workspace)
    finally:
        server.stop()
        witness.stop()
    out = result.stdout_text.splitlines()
    assert out[:4] == ["hello /lit", "hello /socks", "hello /name", "403"], (
        result.stdout_text
    )
    assert out[4] == "direct rc=7"  # the sandbox's own ::1: nothing listens
    assert witness.count == 0
    assert [(c.host, c.decision) for c in result.connections] == [
        ("::1", "allowed"),
        ("::1", "allowed"),
        ("v6.test", "allowed"),
        ("::1", "denied"),
    ]


def test_runs_share_one_lazily_started_proxy(server, workspace):
    config = SandboxConfig(
        execution_log=False,
        network={
            "allow": ["a.test", "b.test", "127.0.0.1"],
            "hosts": {"a.test": "127.0.0.1", "b.test": "127.0.0.1"},
        },
    )
    manager = SandboxManager(config)
    assert manager._proxy is None
    fetch = "import urllib.request as u, sys; print(u.urlopen(sys.argv[1], timeout=20).read().decode())"

    async def both():
        return await asyncio.gather(
            manager.execute_async(
                ["python3", "-c", fetch, f"http://a.test:{server.port}/a"],
                cwd=workspace,
            ),
            manager.execute_async(
                ["python3", "-c", fetch, f"http://b.test:{server.port}/b"],
                cwd=workspace,
            ),
        )

    first, second = asyncio.run(both())
    proxy = manager._proxy
    assert proxy is not None and proxy.running
    third = manager.execute(
        ["python3", "-c", fetch, f"http://a.test:{server.port}/c"], cwd=workspace
    )
    assert manager._proxy is proxy
    thread = proxy.thread
    assert thread in threading.enumerate()
    manager.close()
    assert manager._proxy is None and not proxy.running
    # the thread itself is gone, not only the flag
    assert thread not in threading.enumerate() and not thread.is_alive()
    for result, host, text in (
        (first, "a.test", "hello /a"),
        (second, "b.test", "hello /b"),
        (third, "a.test", "hello /c"),
    ):
        assert result.success, result.stderr_text
        assert result.stdout_text.strip() == text
        assert [c.host for c in result.connections] == [host]


def test_no_proxy_for_modes_without_allow(workspace):
    for network in ("none", "loopback"):
        with SandboxManager(
            SandboxConfig(execution_log=False, network=network)
        ) as manager:
            result = manager.execute(
                ["sh", "-c", "env | grep -ci proxy || true"], cwd=workspace
            )
            assert manager._proxy is None
        assert result.stdout_text.strip() == "0"
        assert result.connections == []


def test_a_proxy_that_cannot_start_stops_the_run_before_it_starts(
    workspace, monkeypatch
):
    def broken(self):
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(NetworkProxy, "start", broken)
    manager = SandboxManager(
        SandboxConfig(execution_log=False, network={"allow": ["pypi.test"]})
    )
    with pytest.raises(SandboxUnavailableError) as info:
        manager.execute(["touch", "ran"], cwd=workspace)
    assert info.value.protection == "network"
    assert not (workspace / "ran").exists()


def test_a_bridge_that_cannot_be_made_fails_the_run_before_the_program(
    workspace, monkeypatch
):
    # a port no socket can bind: the launcher's listener fails inside the namespace
    monkeypatch.setattr(netpolicy, "PROXY_PORT", 70000)
    with SandboxManager(
        SandboxConfig(execution_log=False, network={"allow": ["pypi.test"]})
    ) as manager:
        result = manager.execute(["touch", "ran"], cwd=workspace)
    assert result.termination is Termination.SANDBOX_ERROR
    assert "network bridge" in (result.error or "")
    assert not (workspace / "ran").exists()


def test_listener_is_not_inherited_by_the_program(allow_manager, workspace):
    code = """
        import os
        print(sorted(int(fd) for fd in os.listdir("/proc/self/fd")))
    """
    result = allow_manager.execute(_py(code), cwd=workspace)
    assert result.success, result.stderr_text
    assert json.loads(result.stdout_text)[:3] == [0, 1, 2]
    assert len(json.loads(result.stdout_text)) == 4  # 0-2 and listdir's own fd


# -- loopback and none -------------------------------------------------------------


LOOPBACK_CHECK = """
    import socket, threading
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    def serve():
        conn, _ = srv.accept()
        conn.sendall(conn.recv(100).upper())
        conn.close()
    threading.Thread(target=serve).start()
    client = socket.create_connection(("127.0.0.1", srv.getsockname()[1]), timeout=5)
    client.sendall(b"inside")
    print(client.recv(100).decode())
    for host, port in (("127.0.0.1", {v4}), ("::1", {v6})):
        if not port:
            continue
        try:
            socket.create_connection((host, port), timeout=5)
            print("reached host", host)
        except OSError as err:
            print("host unreachable", host, err.errno)
"""


def test_none_refuses_inet_sockets_and_names_them(workspace):
    code = """
import errno, socket
for family in (socket.AF_INET, socket.AF_INET6):
    try:
        socket.socket(family)
        print("created")
    except OSError as err:
        print(errno.errorcode[err.errno])
"""
    with SandboxManager(SandboxConfig(execution_log=False, network="none")) as manager:
        result = manager.execute(_py(code), cwd=workspace)
    assert result.success, result.stderr_text
    assert result.stdout_text.splitlines() == ["EAFNOSUPPORT", "EAFNOSUPPORT"]
    assert [(v.what, v.detail) for v in result.violations] == [
        ("socket", "AF_INET, AF_INET6")
    ]


@pytest.mark.parametrize("network", ["loopback"])
def test_own_loopback_works_host_loopback_does_not(network, workspace):
    v4 = TCPWitness("127.0.0.1")
    v6 = TCPWitness("::1") if ipv6_loopback_works() else None
    code = LOOPBACK_CHECK.format(v4=v4.port, v6=v6.port if v6 else 0)
    try:
        with SandboxManager(
            SandboxConfig(execution_log=False, network=network)
        ) as manager:
            result = manager.execute(_py(code), cwd=workspace)
    finally:
        v4.stop()
        if v6:
            v6.stop()
    assert result.success, result.stderr_text
    lines = result.stdout_text.splitlines()
    assert lines[0] == "INSIDE"
    assert all(line.startswith("host unreachable") for line in lines[1:])
    assert v4.count == 0 and (v6 is None or v6.count == 0)
    detail = {p.name: p.detail for p in result.protections}["network"]
    assert detail.startswith(network)


# -- CLI and unprivileged callers --------------------------------------------------


@needs_curl
def test_cli_summary_counts_connections(server, workspace):
    stockade = os.path.join(os.path.dirname(sys.executable), "stockade")
    proc = subprocess.run(
        [
            stockade,
            "run",
            "--no-log",
            "--allow",
            "pypi.test",
            "--allow",
            f"127.0.0.1:{server.port}",
            "--resolve",
            "pypi.test=127.0.0.1",
            "--",
            "sh",
            "-c",
            f"curl -sS http://pypi.test:{server.port}/cli; curl -sS http://evil.test/ >/dev/null",
        ],
        cwd=workspace,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "hello /cli"
    assert "network 2 connections, 1 denied; denied: evil.test:80 x1" in proc.stderr
    bad = subprocess.run(
        [stockade, "run", "--no-log", "--allow", "*foo", "--", "true"],
        cwd=workspace,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and "'*foo'" in bad.stderr  # a bad option value: usage error


BAD_REQUESTS = """
    import socket
    for data in (b"BLAH\\r\\n\\r\\n",
                 b"GET /index.html HTTP/1.1\\r\\nHost: 127.0.0.1:8766\\r\\n\\r\\n",
                 b""):
        with socket.create_connection(("127.0.0.1", 3128), timeout=20) as sock:
            if data:
                sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
            print(sock.recv(12).decode() or "closed")
"""


def test_requests_that_name_no_destination_are_recorded_and_counted(workspace):
    # the user trial's case: a malformed request, an origin-form one and a
    # connection closed without a byte each appear in the record and count
    stockade = os.path.join(os.path.dirname(sys.executable), "stockade")
    proc = subprocess.run(
        [stockade, "run", "--no-log", "--allow", "pypi.test", "--", *_py(BAD_REQUESTS)],
        cwd=workspace,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n") == ["HTTP/1.1 400", "HTTP/1.1 400", "closed", ""]
    assert (
        "network 3 connections, 3 denied; denied: bad-request x2, no-request x1"
        in proc.stderr
    ), proc.stderr


def test_cli_refuses_resolve_without_allow(workspace):
    stockade = os.path.join(os.path.dirname(sys.executable), "stockade")
    proc = subprocess.run(
        [stockade, "run", "--no-log", "--resolve", "pypi.test=127.0.0.1", "--", "touch", "ran"],
        cwd=workspace,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "--resolve 'pypi.test=127.0.0.1' needs --allow" in proc.stderr
    assert not (workspace / "ran").exists()


def test_cli_summary_escapes_names_the_program_sent(workspace):
    stockade = os.path.join(os.path.dirname(sys.executable), "stockade")
    code = """
        import socket
        with socket.create_connection(("127.0.0.1", 3128), timeout=20) as sock:
            sock.sendall(b"\\x05\\x01\\x00")
            sock.recv(2)
            name = b"evil\\x1b[2J\\x00\\r\\nstockade: forged.test"
            sock.sendall(b"\\x05\\x01\\x00\\x03" + bytes([len(name)]) + name + b"\\x00\\x50")
            sock.recv(10)
    """
    proc = subprocess.run(
        [stockade, "run", "--no-log", "--allow", "pypi.test", "--", *_py(code)],
        cwd=workspace,
        capture_output=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    summary = proc.stderr.decode("ascii")
    assert "\x1b" not in summary and "\x00" not in summary and "\r" not in summary
    (line,) = summary.splitlines()
    assert "denied: evil\\x1b[2J\\x00\\x0d\\x0astockade: forged.test:80 x1" in line


@needs_curl
def test_unprivileged_caller_allowlist_and_loopback(server, workspace):
    code = textwrap.dedent(f"""
        import json
        from stockade import SandboxConfig, SandboxManager
        # no usable cgroup for uid 65534 on a cgroup v1 host: accept rlimits
        config = SandboxConfig(execution_log=False, allow_degraded=("memory", "pids", "cpu"), network={{
            "allow": ["pypi.test", "127.0.0.1:{server.port}"], "hosts": {{"pypi.test": "127.0.0.1"}}}})
        with SandboxManager(config) as manager:
            allowed = manager.execute(["sh", "-c",
                "curl -sS http://pypi.test:{server.port}/nobody; curl -sS -o /dev/null -w ' %{{http_code}}' http://evil.test/"])
        with SandboxManager(SandboxConfig(execution_log=False, allow_degraded=("memory", "pids", "cpu"),
                                          network="loopback")) as manager:
            own = manager.execute(["python3", "-c",
                "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); s.listen();"
                "c=socket.create_connection(s.getsockname()); print('own loopback ok')"])
        print(json.dumps({{
            "out": allowed.stdout_text, "err": allowed.stderr_text,
            "hosts": [[c.host, c.decision] for c in allowed.connections],
            "own": own.stdout_text, "own_err": own.stderr_text,
        }}))
    """)
    give_to_unprivileged(workspace)
    data = run_code_as_nobody(code, cwd=workspace)
    assert data["out"] == "hello /nobody 403", data["err"]
    assert data["hosts"] == [["pypi.test", "allowed"], ["evil.test", "denied"]]
    assert data["own"].strip() == "own loopback ok", data["own_err"]


@needs_curl
def test_the_listener_exists_before_the_program_starts(
    allow_manager, server, workspace, monkeypatch
):
    # The launcher is made to take 0.3 s longer to create the listener; curl
    # is the program itself (no shell first), connects right after exec and
    # does not retry. Without bubblewrap's --block-fd it gets ECONNREFUSED.
    original = SandboxManager._prepare_bwrap

    def slow_bridge(self, prepared, *args, **kwargs):
        original(self, prepared, *args, **kwargs)
        prepared.spec["net_bridge"]["_test_delay_sec"] = 0.3

    monkeypatch.setattr(SandboxManager, "_prepare_bwrap", slow_bridge)
    for index in range(3):
        result = allow_manager.execute(
            [CURL, "-sS", f"http://pypi.test:{server.port}/{index}"], cwd=workspace
        )
        assert result.success, result.stderr_text
        assert result.stdout_text == f"hello /{index}"


# -- the proxy's lifetime, limits and records ------------------------------------


def test_a_manager_dropped_without_close_stops_its_proxy(server, workspace):
    import gc

    def run_and_drop():
        manager = SandboxManager(
            SandboxConfig(
                execution_log=False,
                network={"allow": [f"127.0.0.1:{server.port}"]},
            )
        )
        result = manager.execute(["true"], cwd=workspace)
        assert result.success, result.stderr_text
        assert manager._proxy is not None
        return manager._proxy.thread

    thread = run_and_drop()
    assert thread is not None
    gc.collect()
    thread.join(10)
    assert thread not in threading.enumerate()


PROCESS_LIST = """
    import json, os, sys, time, urllib.request
    body = urllib.request.urlopen(sys.argv[1], timeout=20).read().decode()
    # the host-side test looks for processes in this network namespace now
    with open("netns.tmp", "w") as out:
        out.write(os.readlink("/proc/self/ns/net"))
    os.rename("netns.tmp", "netns")
    deadline = time.monotonic() + 30
    while not os.path.exists("scanned") and time.monotonic() < deadline:
        time.sleep(0.02)
    procs = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                stat = open(f"/proc/{name}/stat").read()
            except OSError:
                continue
            end = stat.rindex(")")
            procs[name] = [stat[stat.index("(") + 1 : end], int(stat[end + 2 :].split()[1])]
    print(json.dumps({"body": body, "me": os.getpid(), "procs": procs}))
"""


def _processes_in_netns(workspace: Path) -> dict[int, str]:
    """Host pids (and names) of the processes in the sandbox's network
    namespace, once the program has written that namespace's id."""
    marker = workspace / "netns"
    deadline = time.monotonic() + 60
    while not marker.exists():
        assert time.monotonic() < deadline, "the program never wrote its network namespace"
        time.sleep(0.02)
    netns = marker.read_text()
    found = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            if os.readlink(f"/proc/{name}/ns/net") == netns:
                found[int(name)] = Path(f"/proc/{name}/comm").read_text().strip()
        except OSError:
            continue  # gone meanwhile, or a kernel thread
    (workspace / "scanned").touch()
    return found


def _check_only_bwrap_and_the_program(inside: dict, host_side: dict[int, str]) -> None:
    assert inside["body"] == "hello /inside"
    me = str(inside["me"])
    # in the sandbox's pid namespace: bubblewrap's pid 1 and the program, its child
    assert set(inside["procs"]) == {"1", me}, inside["procs"]
    assert inside["procs"]["1"][0] == "bwrap"
    assert inside["procs"][me] == ["python3", 1]
    # from the host: nothing else in the sandbox's network namespace either (no
    # helper, no launcher left there); the proxy's listener is only a socket
    assert sorted(host_side.values()) == ["bwrap", "python3"], host_side


def test_no_process_of_ours_runs_inside_the_sandbox(allow_manager, server, workspace):
    found: dict[int, str] = {}
    scanner = threading.Thread(target=lambda: found.update(_processes_in_netns(workspace)))
    scanner.start()
    try:
        result = allow_manager.execute(
            [*_py(PROCESS_LIST), f"http://pypi.test:{server.port}/inside"], cwd=workspace
        )
    finally:
        scanner.join(60)
    assert result.success, result.stderr_text
    _check_only_bwrap_and_the_program(json.loads(result.stdout_text), found)


def test_no_process_of_ours_runs_inside_the_sandbox_of_an_unprivileged_caller(
    server, workspace
):
    (workspace / "list.py").write_text(textwrap.dedent(PROCESS_LIST))
    code = textwrap.dedent(f"""
        import json
        from stockade import SandboxConfig, SandboxManager
        config = SandboxConfig(execution_log=False, allow_degraded=("memory", "pids", "cpu"),
            network={{"allow": ["pypi.test", "127.0.0.1:{server.port}"],
                      "hosts": {{"pypi.test": "127.0.0.1"}}}})
        with SandboxManager(config) as manager:
            result = manager.execute(["python3", "list.py", "http://pypi.test:{server.port}/inside"])
        print(json.dumps({{"out": result.stdout_text, "err": result.stderr_text}}))
    """)
    give_to_unprivileged(workspace)
    found: dict[int, str] = {}
    scanner = threading.Thread(target=lambda: found.update(_processes_in_netns(workspace)))
    scanner.start()
    try:
        data = run_code_as_nobody(code, cwd=workspace)
    finally:
        scanner.join(60)
    assert data["out"], data["err"]
    _check_only_bwrap_and_the_program(json.loads(data["out"]), found)


def test_execution_log_records_each_connection(server, workspace, tmp_path):
    log_path = tmp_path / "runs.jsonl"
    config = SandboxConfig(
        execution_log=log_path,
        network={
            "allow": ["pypi.test", f"127.0.0.1:{server.port}"],
            "hosts": {"pypi.test": "127.0.0.1"},
        },
    )
    code = f"""
        import socket, urllib.request, urllib.error
        print(urllib.request.urlopen("http://pypi.test:{server.port}/logged", timeout=20).read())
        try:
            urllib.request.urlopen("http://evil.test:{server.port}/", timeout=20)
        except urllib.error.HTTPError as err:
            print(err.code)
        # a SOCKS5 name with a NUL and an escape sequence
        with socket.create_connection(("127.0.0.1", 3128), timeout=20) as sock:
            sock.sendall(b"\\x05\\x01\\x00")
            sock.recv(2)
            name = b"evil\\x00\\x1b[2J.test"
            sock.sendall(b"\\x05\\x01\\x00\\x03" + bytes([len(name)]) + name + b"\\x00\\x50")
            print(sock.recv(10)[1])
    """
    with SandboxManager(config) as manager:
        result = manager.execute(_py(code), cwd=workspace)
    assert result.success, result.stderr_text
    (line,) = log_path.read_text().splitlines()
    assert "\\u001b" not in line and "\\u0000" not in line
    entry = json.loads(line)
    allowed, denied, socks = entry["connections"]
    assert allowed["host"] == "pypi.test" and allowed["port"] == server.port
    assert allowed["decision"] == "allowed" and allowed["rule"] == "pypi.test"
    assert allowed["bytes_sent"] > 0 and allowed["bytes_received"] > len("hello /logged")
    assert (denied["host"], denied["decision"], denied["rule"]) == (
        "evil.test",
        "denied",
        "default-deny",
    )
    assert denied["bytes_sent"] == denied["bytes_received"] == 0
    assert socks["host"] == "evil\\x00\\x1b[2J.test" and socks["rule"] == "bad-host"
    assert {v["what"] for v in entry["violations"]} == {
        f"evil.test:{server.port}",
        "evil\\x00\\x1b[2J.test:80",
    }


FLOOD = """
    import select, socket, time
    socks = [socket.create_connection(("127.0.0.1", 3128), timeout=30) for _ in range(300)]
    poller = select.poll()
    for sock in socks:
        poller.register(sock, select.POLLIN)
    closed = set()
    deadline = time.monotonic() + 15
    while len(closed) < 44 and time.monotonic() < deadline:
        for fd, _ in poller.poll(500):
            if fd not in closed:
                closed.add(fd)
    time.sleep(0.5)  # none of the other 256 is closed meanwhile
    closed.update(fd for fd, _ in poller.poll(0))
    print(len(closed))
"""


def test_a_run_past_256_open_connections_gets_the_rest_refused(allow_manager, workspace):
    result = allow_manager.execute(_py(FLOOD), cwd=workspace)
    assert result.success, result.stderr_text
    assert result.stdout_text.strip() == "44"
    # 44 refused at once; the 256 served never sent a request
    assert len(result.connections) == 300
    limited = [r for r in result.connections if r.rule == "connection-limit"]
    assert len(limited) == 44
    for record in result.connections:
        assert (record.host, record.port, record.protocol) == ("127.0.0.1", 3128, "tcp")
        assert record.decision == "denied"
        if record.rule == "connection-limit":
            assert "already has 256 open connections" in record.reason
        else:
            assert record.rule == "no-request"
    network = [v for v in result.violations if v.mechanism == "network"]
    assert [(v.what, v.count) for v in network] == [
        ("connection-limit", 44),
        ("no-request", 256),
    ]
    assert (
        "network 300 connections, 300 denied; denied: connection-limit x44, no-request x256"
        in result.summary()
    )


def test_connect_to_an_allowed_name_on_another_port_is_refused(server, workspace):
    config = SandboxConfig(
        execution_log=False,
        network={
            "allow": [f"pypi.test:{server.port}", "127.0.0.1"],
            "hosts": {"pypi.test": "127.0.0.1"},
        },
    )
    other = server.port + 1 if server.port < 65535 else 1
    code = f"""
        import socket
        for port in ({server.port}, {other}):
            with socket.create_connection(("127.0.0.1", 3128), timeout=20) as sock:
                sock.sendall(f"CONNECT pypi.test:{{port}} HTTP/1.1\\r\\n\\r\\n".encode())
                head = b""
                while b"\\r\\n\\r\\n" not in head:
                    head += sock.recv(1)
                print(repr(head.decode()))
    """
    with SandboxManager(config) as manager:
        result = manager.execute(_py(code), cwd=workspace)
    assert result.success, result.stderr_text
    tunnel, refused = (eval(line) for line in result.stdout_text.splitlines())
    assert tunnel.startswith("HTTP/1.1 200")
    assert refused.startswith("HTTP/1.1 403 Forbidden")
    assert (
        f"X-Stockade-Denied: default-deny; no allow entry matches pypi.test port {other}"
        in refused
    )
    assert [(c.port, c.decision, c.rule) for c in result.connections] == [
        (server.port, "allowed", f"pypi.test:{server.port}"),
        (other, "denied", "default-deny"),
    ]


HOLD = """
    import os, select, socket, sys, time
    mode, count, marker = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    socks = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", 3128), timeout=30)
        if mode == "tunnels":
            sock.sendall(f"CONNECT 127.0.0.1:{sys.argv[4]} HTTP/1.1\\r\\n\\r\\n".encode())
        socks.append(sock)
    if mode == "tunnels":
        ok = 0
        for sock in socks:
            try:
                ok += sock.recv(12) == b"HTTP/1.1 200"
            except OSError:
                pass  # closed with its request unread: a reset
        print(ok, count - ok, flush=True)
    else:  # idle: each accepted connection holds a descriptor of the proxy
        expected = int(sys.argv[4])
        poller = select.poll()
        for sock in socks:
            poller.register(sock, select.POLLIN)
        closed = set()
        deadline = time.monotonic() + 10
        while len(closed) < expected and time.monotonic() < deadline:
            closed.update(fd for fd, _ in poller.poll(200))
        time.sleep(0.3)  # and no more than those
        closed.update(fd for fd, _ in poller.poll(0))
        print(count - len(closed), len(closed), flush=True)
    open(marker, "w").close()
    deadline = time.monotonic() + 60
    while not os.path.exists("release") and time.monotonic() < deadline:
        time.sleep(0.05)
"""


def test_connections_of_all_runs_are_capped_so_the_caller_keeps_its_descriptors(workspace):
    # The audit's case at a smaller scale: the caller at RLIMIT_NOFILE 512
    # (soft and hard, so the proxy cannot raise it). One run holds 150
    # tunnels (2 descriptors each), then another opens 200 connections and
    # sends nothing (1 each while the proxy waits for their request): each run
    # under the per-run cap of 256, together past what 512 allows. The proxy
    # refuses the surplus as connection-limit, so the caller can still open
    # descriptors of its own and a third run starts and gets a result.
    holder = TCPHolder()
    (workspace / "hold.py").write_text(textwrap.dedent(HOLD))
    code = textwrap.dedent(f"""
        import json, os, resource, threading, time
        resource.setrlimit(resource.RLIMIT_NOFILE, (512, 512))
        from stockade import SandboxConfig, SandboxManager
        config = SandboxConfig(execution_log=False, timeout_sec=120, max_open_files=256,
                               network={{"allow": ["127.0.0.1:{holder.port}"]}})
        manager = SandboxManager(config)
        results = {{}}

        def hold(name, argv):
            results[name] = manager.execute(["python3", "hold.py", *argv])

        def wait_for(path):
            deadline = time.monotonic() + 60
            while not os.path.exists(path):
                assert time.monotonic() < deadline, path
                time.sleep(0.05)

        threads = [threading.Thread(target=hold, args=("a", ["tunnels", "150", "a", "{holder.port}"]))]
        threads[0].start()
        wait_for("a")
        cap = getattr(manager._proxy, "max_connections", None)
        expected = 200 - (cap - 150) if cap is not None else 0
        threads.append(threading.Thread(target=hold, args=("b", ["idle", "200", "b", str(expected)])))
        threads[1].start()
        wait_for("b")
        opened = []
        try:
            while len(opened) < 100:
                opened.append(os.open(os.devnull, os.O_RDONLY))
        except OSError:
            pass
        free = len(opened)
        for fd in opened:
            os.close(fd)
        try:
            third = manager.execute(["python3", "-c",
                "import socket; s = socket.create_connection(('127.0.0.1', 3128), timeout=20);"
                "s.sendall(b'CONNECT 127.0.0.1:{holder.port} HTTP/1.1\\\\r\\\\n\\\\r\\\\n');"
                "print(repr(s.recv(100)))"])
            third = {{"ok": third.termination.value, "err": third.stderr_text,
                      "records": [[c.rule, c.reason] for c in third.connections]}}
        except Exception as exc:
            third = {{"raised": repr(exc)}}
        open("release", "w").close()
        for thread in threads:
            thread.join()
        manager.close()
        print(json.dumps({{
            "cap": cap, "third": third, "free": free,
            "runs": {{name: [r.stdout_text, r.stderr_text,
                            [[c.rule, c.decision] for c in r.connections],
                            [[v.what, v.count] for v in r.violations if v.mechanism == "network"]]
                     for name, r in results.items()}},
        }}))
    """)
    try:
        proc = subprocess.run(
            [sys.executable, "-c", code], cwd=workspace, capture_output=True, text=True,
            timeout=300,
        )
    finally:
        holder.stop()
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout.splitlines()[-1])
    # the caller could still open descriptors of its own meanwhile
    assert data["free"] == 100, data["free"]
    assert data["third"].get("ok") == "exited", data["third"]
    (rule, reason), = data["third"]["records"]
    assert rule == "connection-limit" and "RLIMIT_NOFILE 512" in reason
    cap = data["cap"]
    assert 150 < cap < 350 and cap <= (512 - 128) // 2
    a_out, a_err, a_records, a_denied = data["runs"]["a"]
    b_out, b_err, b_records, b_denied = data["runs"]["b"]
    assert a_out.split() == ["150", "0"], a_err
    assert a_denied == [] and all(decision == "allowed" for _, decision in a_records)
    assert b_out.split() == [str(cap - 150), str(350 - cap)], b_err
    # the served ones never sent a request: no-request
    assert b_denied == [["connection-limit", 350 - cap], ["no-request", cap - 150]]
    assert sorted(b_records) == sorted(
        [["connection-limit", "denied"]] * (350 - cap) + [["no-request", "denied"]] * (cap - 150)
    )
