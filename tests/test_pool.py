"""Prewarmed sandboxes (issue #8): each run still gets a fresh sandbox.

What a pooled run must share with a cold one (isolation, limits, results)
is also checked by running tests/test_run.py both ways (its ``flavour``
fixture); these tests cover what only a pool has: that nothing of one run
reaches the next, that the pool is bounded and refills, that it ends with
its manager, and that runs which do not fit go cold and say why.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import shutil
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from stockade import PolicyError, SandboxConfig, SandboxManager, Termination
from stockade.linux.client import shared_launcher


def _config(**overrides):
    overrides.setdefault("execution_log", False)
    return SandboxConfig(**overrides)


def _py(code: str) -> list[str]:
    return ["python3", "-c", textwrap.dedent(code)]


def _wait_ready(manager: SandboxManager, count: int, timeout: float = 10.0) -> None:
    """Until the manager's pool holds ``count`` ready sandboxes."""
    ready = manager.start(wait=True) if count == manager._prewarm else 0
    deadline = time.monotonic() + timeout
    while ready < count and time.monotonic() < deadline:
        time.sleep(0.02)
        ready = manager._pool.available() if manager._pool is not None else 0
    pool = manager._pool
    assert ready >= count, f"{ready} < {count} ready sandboxes after {timeout}s: {pool and pool.broken}"


def _settle(count: int, timeout: float = 5.0) -> int:
    """The number of idle waiters once it stops changing towards ``count``."""
    deadline = time.monotonic() + timeout
    seen = _idle_waiters()
    while seen != count and time.monotonic() < deadline:
        time.sleep(0.05)
        seen = _idle_waiters()
    return seen


def _launcher_descendants() -> list[tuple[int, str]]:
    """(pid, cmdline) of every process below this process's launcher."""
    root = shared_launcher().pid()
    assert root is not None
    children: dict[int, list[int]] = {}
    cmdlines: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                stat = fh.read()
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                cmd = fh.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
        cmdlines[int(entry)] = cmd
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        for child in children.get(pid, []):
            found.append((child, cmdlines.get(child, "")))
            todo.append(child)
    return found


def _idle_waiters() -> int:
    # bubblewrap's monitor and init carry the same command line: count the
    # waiters themselves (the exec'd interpreter)
    return sum(
        1 for _pid, cmd in _launcher_descendants()
        if "recv_fds" in cmd and not cmd.startswith("bwrap")
    )


@pytest.fixture
def pooled(workspace):
    managers = []

    def make(size: int = 2, **overrides) -> SandboxManager:
        manager = SandboxManager(_config(workspace=str(workspace), **overrides), prewarm=size)
        managers.append(manager)
        return manager

    yield make
    for manager in managers:
        manager.close()


def test_pooled_run_reports_like_a_cold_one(pooled, workspace):
    manager = pooled()
    _wait_ready(manager, 2)
    result = manager.execute(
        ["sh", "-c", "echo out; echo err >&2; read line; echo got $line; exit 3"],
        cwd=workspace,
        stdin=b"hello\n",
    )
    assert result.pooled, result.notes
    assert result.termination is Termination.EXITED and result.exit_code == 3
    assert result.stdout_text == "out\ngot hello\n"
    assert result.stderr_text == "err\n"
    assert any(n.startswith("pooled:") for n in result.notes)
    # the waiter's start is not the program's usage
    assert result.usage.cpu_total_sec < 0.02, result.usage


def test_nothing_of_one_run_reaches_the_next(pooled, workspace):
    manager = pooled(size=2)
    _wait_ready(manager, 2)
    first = manager.execute(
        [
            "sh", "-c",
            "echo secret > /tmp/left; echo secret > /dev/shm/left; echo secret > $HOME/left; "
            "echo secret > /var/tmp/left; "
            "setsid sleep 300 >/dev/null 2>&1 < /dev/null & "
            "true",
        ],
        cwd=workspace,
        env={"FIRST_RUN_ONLY": "1"},
    )
    assert first.pooled and first.success, (first.notes, first.stderr_text)
    second = manager.execute(
        _py("""
            import os
            print(sorted(os.listdir("/tmp")), sorted(os.listdir("/dev/shm")))
            print(sorted(os.listdir(os.environ["HOME"])), sorted(os.listdir("/var/tmp")))
            procs = [p for p in os.listdir("/proc") if p.isdigit()]
            names = [open(f"/proc/{p}/comm").read().strip() for p in procs]
            print(names)
            print("FIRST_RUN_ONLY" in os.environ)
            import hashlib
            print(hashlib.md5(open("/proc/self/cgroup", "rb").read()).hexdigest())
        """),
        cwd=workspace,
    )
    assert second.pooled and second.success, (second.notes, second.stderr_text)
    lines = second.stdout_text.splitlines()
    assert lines[0] == "[] []"
    assert "left" not in lines[1], lines[1]  # /var/tmp holds the workspace only
    assert "sleep" not in lines[2] and "sh" not in lines[2], lines[2]
    assert lines[3] == "False"
    # its own cgroup: the first run's daemon is not counted
    assert second.usage.peak_processes == 1, second.usage


def test_pool_is_bounded_refills_and_ends_with_the_manager(pooled, workspace):
    assert _settle(0) == 0  # other tests' sandboxes are gone
    manager = pooled(size=3)
    _wait_ready(manager, 3)
    assert _settle(3) == 3
    pooled_runs = 0
    for _ in range(6):
        result = manager.execute(["true"], cwd=workspace)
        assert result.success, result.summary()
        pooled_runs += result.pooled
        time.sleep(0.1)
    assert pooled_runs >= 5  # refilled in the background
    _wait_ready(manager, 3)
    time.sleep(0.3)
    assert _idle_waiters() == 3  # never more than prewarm unused sandboxes
    manager.close()
    assert _settle(0) == 0


def test_pool_ends_when_the_manager_is_dropped(workspace):
    assert _settle(0) == 0
    manager = SandboxManager(_config(workspace=str(workspace)), prewarm=2)
    _wait_ready(manager, 2)
    del manager
    gc.collect()
    assert _settle(0) == 0


def test_a_run_that_does_not_fit_runs_cold_and_says_why(pooled, workspace):
    manager = pooled(size=1)
    _wait_ready(manager, 1)
    # an absolute PYTHONPATH entry outside the system directories is made
    # visible read-only: another mount view than the prepared sandboxes'
    # (not in a private area such as /var/tmp: such entries are refused)
    library = Path(tempfile.mkdtemp(prefix="stockade-test-lib-", dir="/srv"))
    try:
        os.chmod(library, 0o755)
        (library / "helper_mod.py").write_text("VALUE = 42\n")
        os.chmod(library / "helper_mod.py", 0o644)
        result = manager.execute(
            _py("import helper_mod; print(helper_mod.VALUE)"),
            cwd=workspace,
            env={"PYTHONPATH": str(library)},
        )
    finally:
        shutil.rmtree(library, ignore_errors=True)
    assert result.success and result.stdout_text == "42\n", result.summary()
    assert not result.pooled
    assert any(n.startswith("not pooled: the prepared sandboxes are for another mount view") for n in result.notes), result.notes
    # the pool still serves runs that fit
    again = manager.execute(["true"], cwd=workspace)
    assert again.pooled, again.notes


def test_timeout_and_limits_apply_to_pooled_runs(pooled, workspace):
    manager = pooled(size=2, memory_mb=64, timeout_sec=60)
    _wait_ready(manager, 2)
    started = time.monotonic()
    slow = manager.execute(["sleep", "30"], cwd=workspace, timeout=0.5)
    assert slow.pooled and slow.termination is Termination.TIMEOUT
    assert time.monotonic() - started < 10
    big = manager.execute(_py("b = bytearray(200 << 20); print(len(b))"), cwd=workspace)
    assert big.pooled and big.termination is Termination.MEMORY_LIMIT, big.summary()


def test_denied_calls_are_named_in_pooled_runs(pooled, workspace):
    manager = pooled(size=1)
    _wait_ready(manager, 1)
    result = manager.execute(
        _py("""
            import socket
            try:
                socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            except OSError as err:
                print("refused", err.errno)
        """),
        cwd=workspace,
    )
    assert result.pooled and result.success, result.summary()
    assert "refused" in result.stdout_text
    assert [(v.what, v.count) for v in result.violations if v.mechanism == "seccomp"] == [("socket", 1)]


def test_environment_of_a_pooled_run_equals_a_cold_one(pooled, workspace):
    code = _py("import os, json; print(json.dumps(dict(os.environ), sort_keys=True)); print(os.getcwd())")
    sub = workspace / "sub"
    sub.mkdir()
    os.chmod(sub, 0o777)
    cold = SandboxManager(_config(workspace=str(workspace))).execute(code, cwd=sub, env={"EXTRA": "x y"})
    manager = pooled(size=1)
    _wait_ready(manager, 1)
    warm = manager.execute(code, cwd=sub, env={"EXTRA": "x y"})
    assert warm.pooled and not cold.pooled
    assert warm.stdout_text == cold.stdout_text, (warm.stdout_text, cold.stdout_text)
    assert warm.stdout_text.splitlines()[1] == str(sub)


def test_concurrent_async_runs_share_the_pool(pooled, workspace):
    manager = pooled(size=4)
    _wait_ready(manager, 4)

    async def main():
        return await asyncio.gather(
            *(manager.execute_async(["sh", "-c", f"echo {i}"], cwd=workspace) for i in range(12))
        )

    results = asyncio.run(main())
    assert [r.stdout_text for r in results] == [f"{i}\n" for i in range(12)]
    assert all(r.success for r in results)
    assert sum(r.pooled for r in results) >= 4
    for r in results:
        if not r.pooled:
            assert any(n.startswith("not pooled:") for n in r.notes), r.notes


def test_prewarm_is_validated():
    with pytest.raises(PolicyError):
        SandboxManager(_config(), prewarm=-1)
    with pytest.raises(PolicyError):
        SandboxManager(_config(), prewarm=1000)
    with pytest.raises(PolicyError):
        SandboxManager(_config(mode="disabled"), prewarm=1)


def test_first_run_without_a_workspace_prepares_the_pool(workspace):
    manager = SandboxManager(_config(), prewarm=1)
    try:
        first = manager.execute(["true"], cwd=workspace)
        assert not first.pooled and any("not pooled" in n for n in first.notes)
        _wait_ready(manager, 1)
        second = manager.execute(["true"], cwd=workspace)
        assert second.pooled, second.notes
    finally:
        manager.close()


def test_pooled_runs_as_an_unprivileged_caller(nobody_workspace, nobody_python):
    code = f"""
import json, sys, time
sys.path.insert(0, {str(Path(__file__).resolve().parents[1] / "src")!r})
from stockade import SandboxConfig, SandboxManager
m = SandboxManager(SandboxConfig(execution_log=False, workspace={str(nobody_workspace)!r},
                   allow_degraded=["memory", "pids", "cpu"]), prewarm=1)
time.sleep(1.5)
r = m.execute(["sh", "-c", "id -u; echo hi > f; ls /tmp"], cwd={str(nobody_workspace)!r})
print(json.dumps({{"pooled": r.pooled, "ok": r.success, "out": r.stdout_text, "notes": r.notes, "err": r.stderr_text}}))
m.close()
"""
    proc = nobody_python(code, cwd=nobody_workspace)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    assert data["ok"] and data["pooled"], data
    assert data["out"].split()[0] != "0"
    assert (Path(nobody_workspace) / "f").read_text() == "hi\n"


def test_policies_hiding_files_are_pooled_too(pooled, workspace):
    secret = workspace / "secret.env"
    secret.write_text("TOKEN=1\n")
    os.chmod(secret, 0o644)
    manager = pooled(size=1, hidden=[str(secret)])
    _wait_ready(manager, 1)
    result = manager.execute(["sh", "-c", "cat secret.env; echo rc=$?"], cwd=workspace)
    assert result.pooled, result.notes
    assert "TOKEN" not in result.stdout_text and "rc=1" in result.stdout_text, result.stdout_text
    _wait_ready(manager, 1)
    again = manager.execute(["cat", "secret.env"], cwd=workspace)
    assert again.pooled and not again.success and "TOKEN" not in again.stdout_text


def test_modules_planted_in_the_workspace_do_not_reach_the_waiter(pooled, workspace):
    """The waiter is Python started in the workspace; a run may leave files
    there that the next run's waiter would import if it looked there."""
    manager = pooled(size=1)
    _wait_ready(manager, 1)
    plant = manager.execute(
        ["sh", "-c", "for m in json socket signal os sys; do "
         "echo 'open(\"/tmp/hijacked\", \"w\"); raise SystemExit(\"hijacked\")' > $m.py; done"],
        cwd=workspace,
    )
    assert plant.pooled and plant.success, plant.summary()
    manager.close()
    manager = pooled(size=1)  # a new pool: waiters start with the files there
    _wait_ready(manager, 1)
    result = manager.execute(["sh", "-c", "ls /tmp; echo ok"], cwd=workspace)
    assert result.pooled and result.success, result.summary()
    assert result.stdout_text == "ok\n"
