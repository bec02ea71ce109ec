"""The second tier, for real: Landlock on this kernel, forced by the policy.

The same escape contract runs against both tiers: writes and reads outside
the workspace, a TCP listener of the host on 127.0.0.1, a host process to
signal, a host abstract unix socket, and a setsid grandchild at the timeout.
The attempts come from ``escape_payload.py`` (inside the sandbox); the host
side checks that nothing happened.
"""

from __future__ import annotations

import json
import errno
import os
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from proctree import alive_with as _alive_with
from proctree import gone as _gone
from stockade import SandboxConfig, SandboxManager, Termination
from stockade.linux import probe as _probe
from stockade.linux.landlock import abi_version

HERE = Path(__file__).resolve().parent
NOBODY = 65534
# The system interpreter: the venv's lives under /root, out of the sandbox
# uid's reach, and both tiers run the program as uid 65534.
PY = "/usr/bin/python3"

ABI, _WHY = abi_version()
needs_landlock = pytest.mark.skipif(
    ABI < 6, reason=f"needs Landlock ABI 6+ (have {ABI}: {_WHY})"
)
pytestmark = needs_landlock

# Refused in every tier. Writing /tmp and binding a TCP port succeed in the
# first tier, harmlessly: its /tmp and its loopback are private (the host
# checks below see nothing); the second tier refuses both.
ESCAPES = (
    "write_existing",
    "create",
    "unlink",
    "mkdir",
    "symlink",
    "rename_out",
    "truncate",
    "read_secret",
    "list_outside",
    "tcp_connect",
    "signal",
    "abstract",
    "victim_environ",
)
MUST_WORK = ("workspace_write", "home_write", "tmpdir_write", "system_read")

# The network policy is "none": the second tier enforces that in full here
# (the filter refuses the sockets), so nothing needs accepting.
SECOND_TIER = {"tier": "landlock"}
_HOST = _probe.probe_host(None, NOBODY if os.geteuid() == 0 else None)
# (tier, policy fields) for the contract both tiers must keep
TIERS = [
    pytest.param(
        "namespaces",
        {"tier": "namespaces"},
        id="namespaces",
        marks=pytest.mark.skipif(
            not _HOST.namespaces_work,
            reason=f"no namespaces on this host: {_HOST.userns.error}",
        ),
    ),
    pytest.param("landlock", SECOND_TIER, id="landlock"),
]


def manager(**fields) -> SandboxManager:
    return SandboxManager(SandboxConfig(execution_log=False, **fields))


# -- host-side fixtures ------------------------------------------------------------


@pytest.fixture
def outside() -> Iterator[Path]:
    """A directory the sandbox uid could write by file permissions alone."""
    path = Path(tempfile.mkdtemp(prefix="stockade-test-outside-", dir="/var/tmp"))
    (path / "secret.txt").write_text("secret\n")
    if os.geteuid() == 0:
        os.chown(path, NOBODY, NOBODY)
        os.chown(path / "secret.txt", NOBODY, NOBODY)
    os.chmod(path, 0o777)
    os.chmod(path / "secret.txt", 0o666)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    sock.setblocking(False)
    try:
        yield sock
    finally:
        sock.close()


@pytest.fixture
def abstract_listener() -> Iterator[tuple[str, socket.socket]]:
    name = f"stockade-test-{uuid.uuid4().hex[:12]}"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind("\0" + name)
    sock.listen(8)
    sock.setblocking(False)
    try:
        yield name, sock
    finally:
        sock.close()


@pytest.fixture
def victim(tmp_path) -> Iterator[tuple[subprocess.Popen, Path]]:
    """A host process of the sandbox's own uid that records any SIGUSR1."""
    marker = tmp_path / "victim-signalled"
    os.chmod(tmp_path, 0o777)
    code = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGUSR1, lambda *a: open(sys.argv[1], "
        "'w').write('hit'))\n"
        "print('ready', flush=True)\n"
        "time.sleep(120)\n"
    )
    kwargs = (
        {"user": NOBODY, "group": NOBODY, "extra_groups": []}
        if os.geteuid() == 0
        else {}
    )
    proc = subprocess.Popen(
        [PY, "-c", code, str(marker)],
        stdout=subprocess.PIPE,
        env={"VICTIM_SECRET": "hunter2"},
        **kwargs,
    )
    assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
    try:
        yield proc, marker
    finally:
        proc.kill()
        proc.wait()


def payload_args(outside: Path, listener, abstract_listener, victim) -> dict:
    return {
        "outside": str(outside),
        "port": listener.getsockname()[1],
        "victim": victim[0].pid,
        "abstract": abstract_listener[0],
        "tmp_name": f"stockade-escape-{uuid.uuid4().hex[:8]}",
    }


def assert_host_untouched(
    args: dict, outside: Path, listener, abstract_listener, victim
) -> None:
    assert sorted(os.listdir(outside)) == ["secret.txt"]
    assert (outside / "secret.txt").read_text() == "secret\n"
    assert not os.path.exists(os.path.join("/tmp", args["tmp_name"]))
    with pytest.raises(BlockingIOError):
        listener.accept()
    with pytest.raises(BlockingIOError):
        abstract_listener[1].accept()
    proc, marker = victim
    assert proc.poll() is None, "the victim was killed"
    assert not marker.exists(), "the victim received a signal"


def check_attempts(out: dict) -> None:
    escaped = [name for name in ESCAPES if out.get(name) == "ok"]
    assert not escaped, f"escaped: {escaped} ({out})"
    broken = [name for name in MUST_WORK if out.get(name) != "ok"]
    assert not broken, f"should work: {broken} ({out})"


# -- the escape contract, both tiers, root caller ------------------------------------


@pytest.mark.parametrize(("tier", "fields"), TIERS)
def test_escapes_fail_and_the_host_is_untouched(
    tier, fields, workspace, outside, listener, abstract_listener, victim
):
    shutil.copy(HERE / "escape_payload.py", workspace / "payload.py")
    args = payload_args(outside, listener, abstract_listener, victim)
    result = manager(**fields).execute(
        [PY, "payload.py", json.dumps(args)], cwd=workspace
    )
    assert result.success, (result.summary(), result.stderr_text)
    assert result.tier == tier
    check_attempts(json.loads(result.stdout))
    assert_host_untouched(args, outside, listener, abstract_listener, victim)


def test_second_tier_denials_are_landlock_ones(
    workspace, outside, listener, abstract_listener, victim
):
    """Not merely "failed": refused by the ruleset (EACCES), scoping (EPERM) or
    the syscall filter (EAFNOSUPPORT: the socket itself, before Landlock sees a
    bind or connect)."""
    shutil.copy(HERE / "escape_payload.py", workspace / "payload.py")
    args = payload_args(outside, listener, abstract_listener, victim)
    result = manager(**SECOND_TIER).execute(
        [PY, "payload.py", json.dumps(args)], cwd=workspace
    )
    out = json.loads(result.stdout)
    assert out["seccomp"] == "2", "the syscall filter was not installed"
    for name in (
        "write_existing",
        "create",
        "unlink",
        "truncate",
        "read_secret",
        "list_outside",
        "host_tmp_write",
        "victim_environ",
    ):
        assert out[name] == "errno:EACCES", (name, out)
    assert out["signal"] == "errno:EPERM", out
    # below Landlock ABI 9 the filter refuses socket(AF_UNIX) too
    for name in ("tcp_connect", "tcp_bind", "abstract"):
        assert out[name] == "errno:EAFNOSUPPORT", (name, out)
    denied = {(v.what, v.detail) for v in result.violations}
    assert denied == {("socket", "AF_INET x2, AF_UNIX")}, denied


# -- Landlock's own network rules and scoping, without the syscall filter ---------
#
# With the filter installed, socket() itself is refused (EAFNOSUPPORT) before
# Landlock sees a bind or connect, so the runs above cannot tell whether the
# ruleset denies TCP or scopes abstract sockets. Here the host is taken as
# one whose kernel has no seccomp user notification: the decision then
# installs no filter (the policy accepts that, and the network gaps it
# leaves: UDP, unix socket paths), and the launcher applies exactly the
# second tier's ruleset, nothing else, before it execs the payload.


@pytest.fixture
def no_filter_host(monkeypatch):
    import dataclasses

    real = _probe.probe_host(None, NOBODY if os.geteuid() == 0 else None)
    unfiltered = dataclasses.replace(
        real, seccomp=dataclasses.replace(real.seccomp, user_notif=False)
    )
    monkeypatch.setattr(_probe, "probe_host", lambda *a, **k: unfiltered)
    return {
        "tier": "landlock",
        "allow_degraded": ["syscall_filter", "network"],
    }


def test_landlock_alone_denies_tcp_and_scopes_abstract_sockets_and_signals(
    no_filter_host, workspace, outside, listener, abstract_listener, victim
):
    shutil.copy(HERE / "escape_payload.py", workspace / "payload.py")
    args = payload_args(outside, listener, abstract_listener, victim)
    result = manager(**no_filter_host).execute(
        [PY, "payload.py", json.dumps(args)], cwd=workspace
    )
    assert result.success, (result.summary(), result.stderr_text)
    out = json.loads(result.stdout)
    assert out["seccomp"] == "0", "a syscall filter was installed after all"
    assert result.violations == []
    # Landlock ABI 4: TCP connect and bind with no port granted
    assert out["tcp_connect"] == "errno:EACCES", out
    assert out["tcp_bind"] == "errno:EACCES", out
    # Landlock ABI 6: scoping, for abstract unix sockets and for signals
    assert out["abstract"] == "errno:EPERM", out
    assert out["signal"] == "errno:EPERM", out
    assert_host_untouched(args, outside, listener, abstract_listener, victim)
    rows = {p.name: p for p in result.protections}
    # the host lacks it and the policy accepted that: not "off"
    assert rows["syscall_filter"].status == "unavailable"
    assert "syscall_filter (unavailable)" in result.summary()
    assert "TCP bind/connect denied (Landlock)" in rows["network"].detail
    assert "abstract unix sockets scoped" in rows["network"].detail


def test_second_tier_spec_carries_the_network_and_scope_settings(workspace):
    """What the manager hands the launcher for a second-tier run."""
    mgr = manager(**SECOND_TIER)
    prepared = mgr._prepare(["true"], workspace, None, None)
    try:
        ruleset = prepared.spec["landlock"]
        assert ruleset["abi"] == ABI
        assert ruleset["deny_network"] is True
        assert ruleset["scope"] is True
        assert prepared.spec["no_new_privs"] is True
        assert prepared.spec["monitor"] is True
    finally:
        mgr._cleanup(prepared)


# argv: seconds to sleep, a token. The grandchild leaves the session and is
# orphaned; its command line carries the token so that the host can find it
# whatever pid namespace it lived in.
TREE = r"""
import os, sys, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        loop = "while :; do echo . >> heartbeat; sleep 0.05; done # " + sys.argv[2]
        os.execv("/bin/sh", ["sh", "-c", loop])
    os._exit(0)
while not os.path.exists("heartbeat"):
    time.sleep(0.01)
time.sleep(float(sys.argv[1]))
"""


def tree(seconds: float) -> tuple[list[str], str]:
    token = f"stockade-tree-{uuid.uuid4().hex[:12]}"
    return [PY, "tree.py", str(seconds), token], token


@pytest.mark.parametrize(("tier", "fields"), TIERS)
def test_timeout_ends_the_tree_setsid_grandchild_included(tier, fields, workspace):
    (workspace / "tree.py").write_text(TREE)
    argv, token = tree(60)
    result = manager(**fields).execute(argv, cwd=workspace, timeout=1.5)
    assert result.termination is Termination.TIMEOUT, result.summary()
    assert _alive_with(token) == [], "the setsid grandchild outlived the run"
    size = (workspace / "heartbeat").stat().st_size
    time.sleep(0.3)
    assert (workspace / "heartbeat").stat().st_size == size


@pytest.mark.parametrize(("tier", "fields"), TIERS)
def test_program_exit_ends_what_it_left_behind(tier, fields, workspace):
    (workspace / "tree.py").write_text(TREE)
    argv, token = tree(0.2)
    result = manager(**fields).execute(argv, cwd=workspace)
    assert result.success, result.summary()
    assert _alive_with(token) == []


# -- second tier specifics ----------------------------------------------------------


def test_result_says_which_tier_ran_and_what_was_in_force(workspace):
    result = manager(**SECOND_TIER).execute(["true"], cwd=workspace)
    assert result.success and result.tier == "landlock"
    status = {p.name: p.status for p in result.protections}
    assert status["landlock"] == "enforced"
    assert status["tree_kill"] == "enforced"
    assert status["namespaces"] == "off"
    assert status["mount_view"] == "degraded"
    # the filter closes what Landlock ABI 7 leaves open: UDP, unix paths
    assert status["network"] == "enforced"
    assert status["syscall_filter"] == "enforced"
    assert "tier landlock" in result.summary()


def test_home_and_tmpdir_are_per_run_and_removed(workspace):
    code = (
        "import os, json\n"
        "home, tmp = os.environ['HOME'], os.environ['TMPDIR']\n"
        "st = os.stat(os.path.dirname(home))\n"
        "open(os.path.join(tmp, 'x'), 'w').write('x')\n"
        "print(json.dumps([home, tmp, st.st_uid, oct(st.st_mode & 0o777)]))\n"
    )
    result = manager(**SECOND_TIER).execute([PY, "-c", code], cwd=workspace)
    home, tmp, uid, mode = json.loads(result.stdout)
    assert os.path.dirname(home) == os.path.dirname(tmp)
    assert uid == (NOBODY if os.geteuid() == 0 else os.getuid()) and mode == "0o700"
    assert not os.path.exists(os.path.dirname(home)), (
        "the run directory was left behind"
    )


def test_run_directory_is_removed_when_the_cli_is_sigkilled(workspace):
    """The caller cannot clean up after SIGKILL; the launcher, which ends
    the run when the caller's socket closes, removes the directory then."""
    import sys

    cli = str(Path(sys.executable).with_name("stockade"))
    proc = subprocess.Popen(
        [cli, "run", "--no-log", "--tier", "landlock", "--workspace", str(workspace),
         "--", "sh", "-c", 'echo "$TMPDIR"; touch "$HOME/h" "$TMPDIR/t"; sleep 60'],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None
        run_dir = os.path.dirname(proc.stdout.readline().decode().strip())
        assert os.path.basename(run_dir).startswith("stockade-run-"), run_dir
        deadline = time.monotonic() + 10
        while not os.path.exists(os.path.join(run_dir, "tmp", "t")):
            assert time.monotonic() < deadline, "the program never wrote its TMPDIR"
            time.sleep(0.02)
    finally:
        proc.kill()
        proc.wait()
    deadline = time.monotonic() + 10
    while os.path.exists(run_dir) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not os.path.exists(run_dir), "the run directory outlived the SIGKILLed CLI"


def test_removing_a_run_directory_twice_touches_nothing_above_it(tmp_path):
    """The launcher removes the run directory, then the caller tries again:
    a tree already gone is no error, and its parent keeps its mode."""
    from stockade.linux.launcher import remove_tree
    from stockade.manager import _remove_tree as callers_cleanup

    os.chmod(tmp_path, 0o755)
    run_dir = tmp_path / "stockade-run-test"
    (run_dir / "home").mkdir(parents=True)
    remove_tree(str(run_dir))
    callers_cleanup(str(run_dir))
    assert not run_dir.exists()
    assert stat.S_IMODE(tmp_path.stat().st_mode) == 0o755


def test_mktemp_and_pipes_work(workspace):
    result = manager(**SECOND_TIER).execute(
        [
            "sh",
            "-c",
            "f=$(mktemp) && echo hi > $f && cat $f | tr a-z A-Z && yes | head -n 2",
        ],
        cwd=workspace,
    )
    assert result.success, result.stderr_text
    assert result.stdout == b"HI\ny\ny\n"
    assert result.stderr == b"", "SIGPIPE must end `yes` quietly"


def test_exit_status_and_signals_are_the_programs(workspace):
    mgr = manager(**SECOND_TIER)
    assert mgr.execute(["sh", "-c", "exit 3"], cwd=workspace).exit_code == 3
    killed = mgr.execute(["sh", "-c", "kill -TERM $$"], cwd=workspace)
    assert (
        killed.termination is Termination.SIGNALED and killed.signal == signal.SIGTERM
    )


def test_usage_counts_the_whole_tree(workspace):
    code = (
        "import os, time\n"
        "if os.fork() == 0:\n"
        "    end = time.process_time() + 0.4\n"
        "    while time.process_time() < end: pass\n"
        "    os._exit(0)\n"
        "os.wait()\n"
    )
    result = manager(**SECOND_TIER).execute([PY, "-c", code], cwd=workspace)
    assert result.success
    assert result.usage.cpu_total_sec >= 0.35, result.usage


def test_no_process_is_left_with_the_launcher(workspace):
    mgr = manager(**SECOND_TIER)
    (workspace / "tree.py").write_text(TREE)
    for _ in range(3):
        mgr.execute(tree(0.1)[0], cwd=workspace)
    mgr.execute(tree(30)[0], cwd=workspace, timeout=0.5)
    launcher = mgr._launcher.pid()
    assert launcher is not None
    children = [
        name
        for name in os.listdir("/proc")
        if name.isdigit() and _ppid(name) == launcher and not _gone(int(name))
        and not _is_spare(int(name), launcher)
    ]
    assert children == []


def _is_spare(pid: int, launcher: int) -> bool:
    """The launcher's spare child (forked ahead of the next run, not yet
    exec'd): it runs the launcher's own program."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as a, open(f"/proc/{launcher}/cmdline", "rb") as b:
            return a.read() == b.read()
    except OSError:
        return False


def _ppid(pid: str) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return int(fh.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def test_launch_forks_the_launcher_not_the_caller_and_starts_no_interpreter(workspace):
    """The program's parent is the run's monitor, a fork of the long-lived
    launcher (same executable and command line: no interpreter started for
    the run); the launcher is the caller's only child, and the same one for
    every run."""
    import threading

    mgr = manager(**SECOND_TIER)
    mgr.start()
    launcher = mgr._launcher.pid()
    assert launcher is not None and _ppid(str(launcher)) == os.getpid()
    argv = ["sh", "-c", 'echo $$ > pid.tmp && mv pid.tmp pid && exec sleep 30']
    result: list = []
    thread = threading.Thread(
        target=lambda: result.append(mgr.execute(argv, cwd=workspace)), daemon=True
    )
    thread.start()
    deadline = time.monotonic() + 20
    while not (workspace / "pid").exists():
        assert time.monotonic() < deadline, "the program never started"
        time.sleep(0.02)
    program = int((workspace / "pid").read_text())
    try:
        monitor = _ppid(str(program))
        assert monitor is not None and monitor != launcher
        assert _ppid(str(monitor)) == launcher
        sleep = os.path.realpath(shutil.which("sleep") or "sleep")
        # the pid file is there before the shell's exec of sleep: wait for it
        while os.path.realpath(f"/proc/{program}/exe") != sleep:
            assert time.monotonic() < deadline, os.path.realpath(f"/proc/{program}/exe")
            time.sleep(0.01)
        assert os.readlink(f"/proc/{monitor}/exe") == os.readlink(f"/proc/{launcher}/exe")
        with open(f"/proc/{monitor}/cmdline", "rb") as a, open(
            f"/proc/{launcher}/cmdline", "rb"
        ) as b:
            assert a.read() == b.read()
        ours = [
            int(name) for name in os.listdir("/proc")
            if name.isdigit() and _ppid(name) == os.getpid() and not _gone(int(name))
        ]
        assert ours == [launcher], "the caller has children other than the launcher"
    finally:
        os.kill(program, signal.SIGKILL)
        thread.join(30)
    assert result and result[0].termination is Termination.SIGNALED
    assert mgr.execute(["true"], cwd=workspace).success
    assert mgr._launcher.pid() == launcher, "a launcher was started for the next run"


async def test_async_runs_use_the_second_tier_too(workspace):
    result = await manager(**SECOND_TIER).execute_async(
        ["sh", "-c", "echo async"], cwd=workspace
    )
    assert result.success and result.stdout == b"async\n" and result.tier == "landlock"


def test_strict_mode_has_no_dev_shm_but_moderate_does(workspace):
    name = f"/dev/shm/stockade-test-{uuid.uuid4().hex[:8]}"
    code = f"import os; open({name!r}, 'w').close(); os.unlink({name!r})"
    strict = manager(mode="strict", **SECOND_TIER).execute(
        [PY, "-c", code], cwd=workspace
    )
    assert not strict.success and b"Permission denied" in strict.stderr
    moderate = manager(**SECOND_TIER).execute(
        [PY, "-c", code],
        cwd=workspace,
    )
    assert moderate.success, moderate.stderr_text


def test_a_ruleset_the_kernel_cannot_give_fails_the_run(monkeypatch, workspace):
    """A probe claiming more than the kernel has: the child refuses to exec."""
    real = _probe.probe_host(None, NOBODY if os.geteuid() == 0 else None)
    import dataclasses

    fake = dataclasses.replace(
        real, landlock=dataclasses.replace(real.landlock, abi=ABI + 1)
    )
    monkeypatch.setattr(_probe, "probe_host", lambda *a, **k: fake)
    result = manager(**SECOND_TIER).execute(["true"], cwd=workspace)
    assert result.termination is Termination.SANDBOX_ERROR
    assert f"Landlock ABI {ABI} on this kernel" in (result.error or "")


# -- what the syscall filter adds in the second tier, and known gaps ----------------


def test_udp_to_the_host_is_blocked(workspace):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind(("127.0.0.1", 0))
        udp.settimeout(2)
        port = udp.getsockname()[1]
        code = (
            "import socket\n"
            "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            f"s.sendto(b'x', ('127.0.0.1', {port}))\n"
        )
        manager(**SECOND_TIER).execute([PY, "-c", code], cwd=workspace)
        with pytest.raises(TimeoutError):
            udp.recvfrom(16)


def test_host_unix_socket_by_path_is_blocked(workspace, outside):
    path = str(outside / "host.sock")
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(path)
        os.chmod(path, 0o777)
        server.listen(1)
        server.settimeout(2)
        code = f"import socket; socket.socket(socket.AF_UNIX).connect({path!r})"
        manager(**SECOND_TIER).execute([PY, "-c", code], cwd=workspace)
        with pytest.raises(TimeoutError):
            server.accept()


def test_host_processes_cannot_be_listed_or_read_in_proc(workspace, victim):
    """Without a pid namespace /proc is the host's: Landlock grants only the
    program's own entries and system-wide figures, so the host's processes
    can be neither listed nor opened, command lines included."""
    proc, _marker = victim
    code = (
        "import os, sys\n"
        "def tryit(f):\n"
        "    try:\n"
        "        return repr(f())[:60]\n"
        "    except OSError as e:\n"
        "        return 'refused ' + str(e.errno)\n"
        "print(tryit(lambda: os.listdir('/proc')))\n"
        f"print(tryit(lambda: open('/proc/{proc.pid}/cmdline', 'rb').read()))\n"
        "print(tryit(lambda: open('/proc/1/cmdline', 'rb').read()))\n"
        "print(tryit(lambda: open('/proc/self/status').read().startswith('Name:')))\n"
        "print(tryit(lambda: len(os.listdir('/proc/self/fd')) > 0))\n"
        "print(tryit(lambda: 'MemTotal' in open('/proc/meminfo').read()))\n"
        "print(tryit(lambda: 'processor' in open('/proc/cpuinfo').read()))\n"
    )
    result = manager(**SECOND_TIER).execute([PY, "-c", code], cwd=workspace)
    assert result.success, result.stderr_text
    lines = result.stdout_text.splitlines()
    assert lines[:3] == [f"refused {errno.EACCES}"] * 3, lines
    assert lines[3:] == ["True"] * 4, lines


def test_known_limitation_a_child_has_no_proc_entries_of_its_own(workspace):
    """/proc/self is granted to the program's own process only: a process it
    starts gets a pid, and entries, that the ruleset does not name."""
    script = (
        "read first < /proc/self/status && echo \"own: $first\"; "
        "cat /proc/self/status >/dev/null 2>&1 || echo child-refused; "
        "cat /proc/meminfo | head -1 | cut -d: -f1"
    )
    result = manager(**SECOND_TIER).execute(["sh", "-c", script], cwd=workspace)
    assert result.success, result.stderr_text
    assert result.stdout_text.splitlines() == ["own: Name:\tsh", "child-refused", "MemTotal"], (
        result.stdout_text
    )


# -- unprivileged caller --------------------------------------------------------------

NOBODY_DRIVER = r"""
import json, sys
from stockade import SandboxConfig, SandboxManager
# uid 65534 has no usable cgroup on a cgroup v1 host: rlimits stand in (#4)
config = SandboxConfig(execution_log=False, tier="landlock",
                       allow_degraded=["memory", "pids", "cpu"])
mgr = SandboxManager(config)
escape = mgr.execute(["/usr/bin/python3", "payload.py", sys.argv[1]])
tree = mgr.execute(["/usr/bin/python3", "tree.py", "60", sys.argv[2]], timeout=1.5)
locked = mgr.execute(["sh", "-c", "mkdir $TMPDIR/d && touch $TMPDIR/d/f && "
                     "chmod 000 $TMPDIR/d && dirname $TMPDIR"])
print(json.dumps({
    "tier": escape.tier, "escape": escape.stdout_text, "escape_err": escape.stderr_text,
    "tree": tree.termination.value, "run_dir": locked.stdout_text.strip(),
}))
"""


def test_unprivileged_caller_second_tier(
    nobody_python, nobody_workspace, outside, listener, abstract_listener, victim
):
    """The caller is uid 65534 and so is the victim: only Landlock stands
    between them."""
    shutil.copy(HERE / "escape_payload.py", nobody_workspace / "payload.py")
    (nobody_workspace / "tree.py").write_text(TREE)
    args = payload_args(outside, listener, abstract_listener, victim)
    token = tree(60)[1]
    proc = nobody_python(NOBODY_DRIVER, json.dumps(args), token, cwd=nobody_workspace)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["tier"] == "landlock"
    check_attempts(json.loads(report["escape"]))
    assert_host_untouched(args, outside, listener, abstract_listener, victim)
    assert report["tree"] == "timeout"
    assert _alive_with(token) == []
    assert report["run_dir"].startswith("/tmp/stockade-run-")
    assert not os.path.exists(report["run_dir"]), "a locked run directory was left"


def test_launcher_killed_the_monitor_ends_the_tree(workspace):
    """SIGKILL of the launcher: each monitor's parent-death signal ends its tree."""
    import threading

    mgr = manager(**SECOND_TIER)
    mgr.start()
    (workspace / "tree.py").write_text(TREE)
    argv, token = tree(60)
    done = threading.Event()
    thread = threading.Thread(
        target=lambda: (mgr.execute(argv, cwd=workspace), done.set()), daemon=True
    )
    thread.start()
    deadline = time.monotonic() + 30
    while not _alive_with(token) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _alive_with(token), "the grandchild never started"
    launcher = mgr._launcher.pid()
    assert launcher is not None
    os.kill(launcher, signal.SIGKILL)
    while _alive_with(token) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _alive_with(token) == []
    assert done.wait(30), "execute() did not return after the launcher died"


def test_second_tier_program_holds_no_privilege(workspace):
    """What the capabilities and never_root rows claim for the second tier."""
    code = (
        "import os\n"
        "fields = dict(line.split(':\\t') for line in open('/proc/self/status').read()"
        ".splitlines() if ':\\t' in line)\n"
        "print(os.getuid(), os.geteuid(), fields['CapInh'], fields['CapPrm'], "
        "fields['CapEff'], fields['CapAmb'], fields['NoNewPrivs'])\n"
    )
    result = manager(**SECOND_TIER).execute([PY, "-c", code], cwd=workspace)
    assert result.success, result.stderr_text
    uid, euid, inh, prm, eff, amb, nnp = result.stdout.split()
    assert int(uid) != 0 and int(euid) != 0
    assert {inh, prm, eff, amb} == {b"0000000000000000"}
    assert nnp == b"1"
    status = {p.name: p.status for p in result.protections}
    assert status["capabilities"] == status["never_root"] == "enforced"
