"""The core run path on the real kernel: isolation, limits, results (issue #2)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import tempfile
import uuid
from pathlib import Path

import pytest

from stockade import SandboxConfig, SandboxManager, Termination

REPO = Path(__file__).resolve().parent.parent

_ColdManager = SandboxManager

# Why a run may go cold although its manager has a pool: its shape differs
# from the prepared sandboxes' (more paths visible), or its argv is too big.
_EXPECTED_COLD = ("not pooled: the prepared sandboxes are for another mount view",
                  "not pooled: argv and environment too large",
                  "not pooled: the landlock tier has no prepared sandboxes")


class _PooledManager(_ColdManager):
    """A manager whose runs use prepared sandboxes (issue #8): each run
    prepares the pool for its directory first, then must be pooled unless
    it cannot fit one."""

    def __init__(self, config=None, **overrides):
        super().__init__(config, prewarm=1, **overrides)

    def _check(self, result, also=()):
        if not result.pooled:
            expected = _EXPECTED_COLD + tuple(also)
            assert any(n.startswith(expected) for n in result.notes), result.notes
        return result

    def execute(self, command, cwd=None, **kwargs):
        self.start(cwd, wait=True)
        result = super().execute(command, cwd=cwd, **kwargs)
        # runs from several threads at once outnumber the pool: some go cold
        busy = ("not pooled: none of the",) if threading.active_count() > 1 else ()
        return self._check(result, also=busy)

    async def execute_async(self, command, cwd=None, **kwargs):
        self.start(cwd, wait=True)
        # concurrent runs outnumber the pool: some go cold
        result = await super().execute_async(command, cwd=cwd, **kwargs)
        return self._check(result, also=("not pooled: none of the",))


@pytest.fixture(params=["cold", "pooled"], autouse=True)
def flavour(request, monkeypatch):
    """Every test here runs twice: in a fresh sandbox launched for the run,
    and in one prepared ahead of time (prewarm): both must isolate alike."""
    if request.param == "pooled":
        monkeypatch.setitem(globals(), "SandboxManager", _PooledManager)
    return request.param


def run(workspace: Path, *argv: str, **config) -> object:
    config.setdefault("execution_log", False)
    return SandboxManager(SandboxConfig(**config)).execute(list(argv), cwd=workspace)


# -- file system -------------------------------------------------------------


def test_workspace_is_writable_and_changes_reach_the_host(workspace):
    result = run(workspace, "sh", "-c", "echo hello > made.txt && cat made.txt")
    assert result.success, result.stderr_text
    assert (workspace / "made.txt").read_text() == "hello\n"


def test_system_directories_are_read_only(workspace):
    before = Path("/etc/hostname").read_bytes()
    result = run(workspace, "sh", "-c", "echo pwned > /etc/hostname; echo pwned > /usr/stockade-probe")
    assert b"Read-only file system" in result.stderr or b"Permission denied" in result.stderr
    assert Path("/etc/hostname").read_bytes() == before
    assert not Path("/usr/stockade-probe").exists()


def test_caller_home_is_invisible_and_unchanged(workspace):
    home = Path(os.path.expanduser("~"))
    marker = home / f".stockade-probe-{uuid.uuid4().hex}"
    result = run(workspace, "sh", "-c", f"ls {home}; echo x > {marker}; echo $HOME; ls -A $HOME")
    assert not marker.exists()
    # the real home is not there; HOME points to a private, empty, writable dir
    assert result.stdout_text.strip().splitlines()[-1:] != [str(home)]
    assert "/home/sandbox" in result.stdout_text
    probe = run(workspace, "sh", "-c", "touch $HOME/.cache-test && ls -A $HOME")
    assert probe.success and ".cache-test" in probe.stdout_text


def test_host_tmp_is_invisible_and_private_tmp_is_thrown_away(workspace):
    token = uuid.uuid4().hex
    host_marker = Path("/tmp") / f"stockade-host-{token}"
    host_marker.write_text("host")
    try:
        result = run(
            workspace,
            "sh",
            "-c",
            f"test -e /tmp/stockade-host-{token} && echo VISIBLE; echo x > /tmp/inside-{token} && echo WROTE",
        )
        assert "VISIBLE" not in result.stdout_text
        assert "WROTE" in result.stdout_text
        assert not Path(f"/tmp/inside-{token}").exists()
    finally:
        host_marker.unlink()


def test_sandbox_root_is_read_only_outside_the_private_areas(workspace):
    result = run(workspace, "sh", "-c", "touch /stockade-probe; mkdir /var/new; echo x > /tmp/ok && echo TMP-OK")
    assert "TMP-OK" in result.stdout_text
    assert result.stderr_text.count("Read-only file system") == 2, result.stderr_text


def test_host_sockets_and_run_are_not_mounted(workspace):
    result = run(workspace, "sh", "-c", "ls -A /run /var/run 2>&1; ls /root 2>&1; ls /home")
    assert "sandbox" in result.stdout_text
    for name in ("docker.sock", "dbus", "systemd"):
        assert name not in result.stdout_text


# -- processes and network ---------------------------------------------------


def test_host_processes_are_invisible(workspace):
    tag = f"stockade-victim-{uuid.uuid4().hex}"
    victim = subprocess.Popen(["bash", "-c", f"exec -a {tag} sleep 60"])
    try:
        result = run(workspace, "sh", "-c", "cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' ' '; ls /proc")
        assert tag not in result.stdout_text
        assert str(victim.pid) not in result.stdout_text.split()
        kill = run(workspace, "kill", "-USR1", str(victim.pid))
        assert kill.exit_code != 0
        assert victim.poll() is None
    finally:
        victim.kill()
        victim.wait()


def test_host_loopback_listener_is_unreachable(workspace):
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.5)
    port = server.getsockname()[1]
    script = (
        "import socket,sys\n"
        "s=socket.socket()\n"
        "s.settimeout(2)\n"
        "try:\n"
        f"    s.connect(('127.0.0.1',{port})); print('CONNECTED')\n"
        "except OSError as e:\n"
        "    print('refused', e)\n"
    )
    try:
        result = run(workspace, "python3", "-c", script)
        assert "CONNECTED" not in result.stdout_text
        with pytest.raises(OSError):
            server.accept()
    finally:
        server.close()


def test_program_never_runs_as_host_root(workspace):
    tag = f"stockade-uid-{uuid.uuid4().hex}"
    found: dict[str, str] = {}

    def watch() -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not found:
            for pid in os.listdir("/proc"):
                if not pid.isdigit():
                    continue
                try:
                    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                    if tag.encode() in cmdline and b"bwrap" not in cmdline:
                        status = Path(f"/proc/{pid}/status").read_text()
                        found["uid"] = next(line for line in status.splitlines() if line.startswith("Uid:"))
                        return
                except OSError:
                    continue
            time.sleep(0.02)

    watcher = threading.Thread(target=watch)
    watcher.start()
    result = run(workspace, "bash", "-c", f"exec -a {tag} sleep 3")
    watcher.join()
    assert result.success
    assert found, "did not see the sandboxed process from the host"
    host_uids = found["uid"].split()[1:]
    expected = "65534" if os.geteuid() == 0 else str(os.geteuid())
    assert host_uids == [expected] * 4


# -- limits and results ------------------------------------------------------


def test_all_capabilities_are_dropped_and_every_namespace_is_new(workspace):
    names = ("ipc", "uts", "net", "pid", "cgroup", "user", "mnt")
    script = "grep '^Cap' /proc/self/status; " + "; ".join(
        f"echo ns {n} $(readlink /proc/self/ns/{n})" for n in names
    )
    result = run(workspace, "sh", "-c", script)
    assert result.success, (result.error, result.stderr_text)
    lines = result.stdout_text.splitlines()
    caps = dict(line.split(":\t") for line in lines if line.startswith("Cap"))
    for name in ("CapEff", "CapPrm", "CapBnd", "CapAmb", "CapInh"):
        assert int(caps[name], 16) == 0, (name, caps)
    inside = {line.split()[1]: line.split()[2] for line in lines if line.startswith("ns ")}
    for name in names:
        host = os.readlink(f"/proc/self/ns/{name}")
        assert inside[name].startswith(f"{name}:[") and inside[name] != host, (name, inside[name], host)


def test_dev_holds_exactly_the_minimal_entries(workspace):
    result = run(workspace, "sh", "-c", "ls -A /dev; echo --; ls -A /dev/pts")
    assert result.success, (result.error, result.stderr_text)
    dev, pts = result.stdout_text.split("--\n")
    # bubblewrap's --dev: the safe character devices, the std* and fd links,
    # a private devpts; /dev/shm is the run's own tmpfs
    assert sorted(dev.split()) == sorted([
        "core", "fd", "full", "null", "ptmx", "pts", "random", "shm",
        "stderr", "stdin", "stdout", "tty", "urandom", "zero",
    ])
    assert pts.split() == ["ptmx"]


def test_open_files_and_core_rlimits_are_in_force(workspace):
    result = run(workspace, "cat", "/proc/self/limits", max_open_files=321)
    assert result.success, (result.error, result.stderr_text)
    rows = {}
    for line in result.stdout_text.splitlines()[1:]:
        words = line.split()
        # "Max open files  321  321  files": the name, soft, hard, unit
        numbers = [i for i, w in enumerate(words) if w.isdigit() or w == "unlimited"]
        if numbers:
            rows[" ".join(words[: numbers[0]])] = words[numbers[0] : numbers[0] + 2]
    assert rows["Max open files"] == ["321", "321"], rows
    assert rows["Max core file size"] == ["0", "0"], rows


def test_timeout_kills_setsid_grandchild_holding_the_pipes(workspace):
    tag = f"stockade-grandchild-{uuid.uuid4().hex}"
    started = time.monotonic()
    result = SandboxManager(SandboxConfig(execution_log=False)).execute(
        ["bash", "-c", f"setsid bash -c 'exec -a {tag} sleep 120' & sleep 120"],
        cwd=workspace,
        timeout=1,
    )
    elapsed = time.monotonic() - started
    assert result.termination is Termination.TIMEOUT
    assert elapsed < 30, "the call waited for the grandchild"
    time.sleep(0.5)
    leftovers = [
        p for p in os.listdir("/proc")
        if p.isdigit() and tag.encode() in _cmdline(p)
    ]
    assert leftovers == []


def _cmdline(pid: str) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def test_busy_loop_ends_with_cpu_limit(workspace):
    result = run(workspace, "python3", "-c", "while True: pass", cpu_time_sec=1, timeout_sec=60)
    assert result.termination is Termination.CPU_LIMIT, result.summary()
    # rusage comes from tick sampling and may fall short of the precise
    # runtime the kernel checks RLIMIT_CPU against; it must not be missing
    assert result.usage.cpu_total_sec >= 0.5, result.usage


def test_big_file_ends_with_file_size_limit(workspace):
    result = run(
        workspace, "sh", "-c", "head -c 3000000 /dev/zero > big.bin", max_file_size_mb=1
    )
    assert result.termination is Termination.FILE_SIZE_LIMIT, result.summary()
    assert (workspace / "big.bin").stat().st_size <= 1024 * 1024


def test_output_flood_ends_with_output_limit(workspace):
    result = run(workspace, "yes", max_output_bytes=100_000, timeout_sec=60)
    assert result.termination is Termination.OUTPUT_LIMIT, result.summary()
    assert result.stdout_truncated
    assert len(result.stdout) == 100_000


def test_unbalanced_output_does_not_deadlock(workspace):
    script = "import sys; sys.stderr.write('e' * (4 << 20)); sys.stdout.write('o' * (3 << 20))"
    result = run(workspace, "python3", "-c", script, timeout_sec=60)
    assert result.success
    assert result.stderr == b"e" * (4 << 20)
    assert result.stdout == b"o" * (3 << 20)


@pytest.mark.parametrize("code", [0, 1, 42, 255])
def test_exit_codes(workspace, code):
    result = run(workspace, "sh", "-c", f"exit {code}")
    assert result.termination is Termination.EXITED
    assert result.exit_code == code
    assert result.success is (code == 0)


def test_signal_is_reported(workspace):
    result = run(workspace, "sh", "-c", "kill -TERM $$")
    assert result.termination is Termination.SIGNALED
    assert result.signal == signal.SIGTERM
    assert result.exit_code is None


def test_environment_is_scrubbed(workspace, monkeypatch):
    monkeypatch.setenv("STOCKADE_TEST_SECRET", "s3cr3t")
    monkeypatch.setenv("LC_ALL", "C.UTF-8")
    manager = SandboxManager(SandboxConfig(execution_log=False, env={"FROM_POLICY": "1"}))
    result = manager.execute(["env"], cwd=workspace, env={"PYTHONPATH": "/nonexistent", "EXPLICIT": "yes"})
    env = dict(line.split("=", 1) for line in result.stdout_text.splitlines() if "=" in line)
    assert "STOCKADE_TEST_SECRET" not in env
    assert "s3cr3t" not in result.stdout_text
    assert env["HOME"] == "/home/sandbox"
    assert env["EXPLICIT"] == "yes" and env["FROM_POLICY"] == "1"
    assert env["PYTHONPATH"] == "/nonexistent"
    assert env["LC_ALL"] == "C.UTF-8"
    assert "PATH" in env
    allowed = {"PATH", "HOME", "PWD", "LC_ALL", "LANG", "TERM", "TZ", "LANGUAGE", "EXPLICIT", "FROM_POLICY", "PYTHONPATH", "SHLVL", "_"}
    assert set(env) <= allowed | {k for k in env if k.startswith("LC_")}


def test_secrets_are_not_in_bwrap_cmdline_or_environ(workspace, monkeypatch):
    monkeypatch.setenv("STOCKADE_TEST_SECRET", "s3cr3t-env")
    result = run(workspace, "sh", "-c", "cat /proc/1/environ /proc/1/cmdline | tr '\\0' '\\n'")
    assert "s3cr3t-env" not in result.stdout_text
    assert "--ro-bind" not in result.stdout_text  # options go through a memfd


def test_stdin_bytes_are_fed(workspace):
    manager = SandboxManager(SandboxConfig(execution_log=False))
    result = manager.execute(["wc", "-c"], cwd=workspace, stdin=b"x" * 300_000)
    assert result.stdout_text.strip() == "300000"


def test_interpreter_outside_system_dirs_is_made_visible(workspace):
    # sys.executable here is a virtual environment; its base Python may live
    # under a home directory (pyenv) that the sandbox does not otherwise show.
    result = run(workspace, sys.executable, "-c", "import sys, json; print(sys.prefix)")
    assert result.success, result.stderr_text + "\n" + "\n".join(result.notes)


def test_concurrent_async_runs(workspace):
    manager = SandboxManager(SandboxConfig(execution_log=False))

    async def main() -> list:
        return await asyncio.gather(
            *(manager.execute_async(["sh", "-c", f"echo {i}"], cwd=workspace) for i in range(20))
        )

    results = asyncio.run(main())
    failed = [f"{r.summary()} {r.stderr_text!r} {r.timings_ms}" for r in results if not r.success]
    assert not failed
    assert sorted(int(r.stdout_text) for r in results) == list(range(20))


def test_threads_can_share_a_manager(workspace):
    manager = SandboxManager(SandboxConfig(execution_log=False))
    outcomes: list[bool] = []

    def one(i: int) -> None:
        outcomes.append(manager.execute(["sh", "-c", f"echo {i}"], cwd=workspace).success)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes == [True] * 8


def test_cancelling_an_async_run_kills_it(workspace):
    tag = f"stockade-cancel-{uuid.uuid4().hex}"
    manager = SandboxManager(SandboxConfig(execution_log=False))

    async def main() -> None:
        task = asyncio.create_task(manager.execute_async(["bash", "-c", f"exec -a {tag} sleep 60"], cwd=workspace))
        await asyncio.sleep(1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if not [p for p in os.listdir("/proc") if p.isdigit() and tag.encode() in _cmdline(p)]:
            break
        time.sleep(0.1)
    else:
        pytest.fail("the cancelled run kept running")


def test_git_script_example(workspace):
    script = (REPO / "examples" / "git_script.py").read_bytes()
    manager = SandboxManager(SandboxConfig(execution_log=False))
    result = manager.execute(["python3", "-"], cwd=workspace, stdin=script)
    assert result.success, result.stderr_text
    assert "Merge branch 'feature'" in result.stdout_text
    assert (workspace / "demo-repo" / "feature.txt").exists()


def test_result_to_dict_is_json_ready(workspace):
    import json

    result = run(workspace, "sh", "-c", "echo hi")
    data = json.loads(result.to_json())
    assert data["success"] is True
    assert data["termination"] == "exited"
    assert data["stdout"] == "hi\n"
    assert {p["name"] for p in data["protections"]} >= {"namespaces", "mount_view", "never_root"}
    assert data["run_id"] == result.run_id


def test_program_outside_system_dirs_exposes_only_itself(workspace):
    outside = Path(tempfile.mkdtemp(prefix="stockade-test-outside-", dir="/var/tmp"))
    try:
        os.chmod(outside, 0o755)
        secret = outside / "secret.txt"
        secret.write_text("host secret\n")
        tool = outside / "mycat"
        tool.write_bytes(Path("/bin/cat").read_bytes())
        tool.chmod(0o755)
        result = run(workspace, str(tool), str(secret))
        assert "host secret" not in result.stdout_text
        ok = run(workspace, str(tool), "/etc/hostname")
        assert ok.success, ok.stderr_text
    finally:
        import shutil

        shutil.rmtree(outside)


@pytest.fixture
def outside():
    """A directory outside the system directories and the workspace."""
    import shutil

    path = Path(tempfile.mkdtemp(prefix="stockade-test-outside-", dir="/var/tmp"))
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path)


def test_command_that_is_a_link_outside_system_dirs_starts(workspace, outside):
    (outside / "t").mkdir()
    link = outside / "t" / "mycat"
    link.symlink_to("/usr/bin/cat")
    secret = outside / "t" / "secret.txt"
    secret.write_text("host secret\n")
    result = run(workspace, str(link), "/etc/hostname")
    assert result.success, (result.error, result.stderr_text)
    assert result.stdout == Path("/etc/hostname").read_bytes()
    # the link is recreated, its directory is not shown
    assert any(f"{link} -> /usr/bin/cat" in note for note in result.notes), result.notes
    denied = run(workspace, str(link), str(secret))
    assert "host secret" not in denied.stdout_text and not denied.success


def test_local_bin_link_to_a_python_outside_system_dirs_starts(workspace, outside):
    # ~/.local/bin/tool -> a link elsewhere (not a bin directory) -> this
    # test's interpreter (a virtual environment's, itself a link to its base)
    local_bin = outside / "home" / ".local" / "bin"
    local_bin.mkdir(parents=True)
    (outside / "pythons").mkdir()
    (outside / "pythons" / "current").symlink_to(sys.executable)
    tool = local_bin / "tool"
    tool.symlink_to(outside / "pythons" / "current")
    code = "import sys; print(sys.prefix); print(sys.argv[0])"
    host = subprocess.run([str(tool), "-c", code], capture_output=True, text=True, check=True)
    result = run(workspace, str(tool), "-c", code)
    assert result.success, (result.error, result.stderr_text, result.notes)
    assert result.stdout_text == host.stdout


def test_chain_of_two_links_outside_system_dirs_starts(workspace, outside):
    for name in ("a", "b"):
        (outside / name).mkdir()
    (outside / "b" / "tool").symlink_to("/usr/bin/cat")
    (outside / "a" / "tool").symlink_to("../b/tool")  # relative, as ln -sr makes
    (outside / "via").symlink_to(outside / "b")       # a linked directory
    expected = Path("/etc/hostname").read_bytes()
    for command in (outside / "a" / "tool", outside / "via" / "tool"):
        result = run(workspace, str(command), "/etc/hostname")
        assert result.success, (command, result.error, result.stderr_text, result.notes)
        assert result.stdout == expected


def test_command_link_in_a_hidden_path_is_refused(workspace, outside):
    from stockade import CommandError

    (outside / "private").mkdir()
    (outside / "private" / "mycat").symlink_to("/usr/bin/cat")
    manager = SandboxManager(SandboxConfig(execution_log=False, hidden=[str(outside / "private")]))
    with pytest.raises(CommandError, match="lies in a path the run cannot see"):
        manager.execute([str(outside / "private" / "mycat"), "/etc/hostname"], cwd=workspace)


def test_large_arguments_and_environment_reach_the_program(workspace):
    # together far more than one launcher message holds (about 200 KiB)
    big = ["x" * 100_000, "y" * 100_000, "z" * 100_000]
    manager = SandboxManager(SandboxConfig(execution_log=False))
    result = manager.execute(
        ["python3", "-c", "import os, sys; print(sum(map(len, sys.argv[1:])), len(os.environ['BIG']))", *big],
        cwd=workspace,
        env={"BIG": "b" * 120_000},
    )
    assert result.success, result.stderr_text
    assert result.stdout_text.split() == ["300000", "120000"]


def test_more_arguments_than_bubblewrap_takes_is_a_clear_error(workspace):
    from stockade import CommandError

    with pytest.raises(CommandError, match="at most 9000"):
        SandboxManager(SandboxConfig(execution_log=False)).execute(["true", *map(str, range(10_000))], cwd=workspace)


def test_nul_bytes_in_arguments_and_environment_are_refused_before_the_run(workspace):
    from stockade import CommandError, PolicyError

    manager = SandboxManager(SandboxConfig(execution_log=False))
    with pytest.raises(CommandError, match="argument 1 contains a NUL byte"):
        manager.execute(["echo", "a\0b"], cwd=workspace)
    with pytest.raises(PolicyError, match="the value of 'K' contains a NUL byte"):
        manager.execute(["true"], cwd=workspace, env={"K": "a\0b"})
    with pytest.raises(PolicyError, match="invalid variable name 'A=B'"):
        manager.execute(["true"], cwd=workspace, env={"A=B": "x"})


@pytest.mark.parametrize("tier", ["namespaces", "landlock"])
def test_workspace_with_a_name_that_is_not_utf8(tier):
    base = tempfile.mkdtemp(prefix="stockade-test-", dir="/var/tmp")
    odd = os.path.join(os.fsencode(base), b"bad\xff\xfe dir")
    os.mkdir(odd)
    os.chmod(base, 0o755)
    try:
        config = {"tier": tier}
        result = run(Path(os.fsdecode(odd)), "sh", "-c", "echo ok > made.txt && cat made.txt", **config)
        assert result.success, (result.error, result.stderr_text)
        assert os.path.exists(os.path.join(odd, b"made.txt"))
    finally:
        import shutil

        shutil.rmtree(base)
