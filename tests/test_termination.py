"""Why a run ended: a limit is reported only when evidence backs it (issue #2).

bubblewrap (and the second tier's monitor) report a program killed by
signal N as the status 128+N, so a status alone cannot blame a limit.
"""

from __future__ import annotations

import platform
import signal

import pytest

from _unpriv import give_to_unprivileged, run_unprivileged
from stockade import SandboxConfig, SandboxManager, Termination
from stockade.manager import _rlimit_termination
from stockade.result import Usage


def run(workspace, script: str, **config):
    config.setdefault("execution_log", False)
    return SandboxManager(SandboxConfig(**config)).execute(["sh", "-c", script], cwd=workspace)


@pytest.mark.parametrize(
    ("script", "sig"),
    [
        ("kill -XCPU $$", signal.SIGXCPU),   # 0.01 CPU-s, nowhere near the limit
        ("exit 152", signal.SIGXCPU),        # 128 + 24
        ("exit 159", signal.SIGSYS),         # 128 + 31
        ("kill -SYS $$", signal.SIGSYS),
        ("kill -KILL $$", signal.SIGKILL),
    ],
)
def test_a_status_alone_blames_no_limit(workspace, script, sig):
    result = run(workspace, script)
    assert result.termination is Termination.SIGNALED, result.summary()
    assert (result.signal, result.exit_code) == (sig, None)
    assert result.violations == []
    assert any(f"status {128 + sig}:" in note for note in result.notes), result.notes


@pytest.mark.skipif(platform.machine() != "x86_64", reason="iopl is x86_64's call 172")
def test_syscall_denied_needs_the_supervisors_kill(workspace):
    killed = SandboxManager(SandboxConfig(execution_log=False)).execute(
        ["python3", "-c", "import ctypes; ctypes.CDLL(None).syscall(172, 0)"], cwd=workspace
    )
    assert killed.termination is Termination.SYSCALL_DENIED, killed.summary()
    assert [(v.what, v.action) for v in killed.violations] == [("iopl", "kill")]
    assert run(workspace, "exit 159").termination is Termination.SIGNALED


def test_sigxfsz_is_file_size_limit_only_when_the_policy_sets_one(workspace):
    assert run(workspace, "kill -XFSZ $$", max_file_size_mb=1).termination is Termination.FILE_SIZE_LIMIT
    unlimited = run(workspace, "kill -XFSZ $$", disk_mb=None, max_file_size_mb=None)
    assert unlimited.termination is Termination.SIGNALED, unlimited.summary()
    assert unlimited.signal == signal.SIGXFSZ


def test_rlimit_cpu_kill_is_cpu_limit_and_a_bare_sigxcpu_is_not(workspace):
    # an unprivileged caller on a cgroup v1 host has no cgroup: RLIMIT_CPU
    # is the only CPU limit, and usage comes from rusage (tick-sampled)
    give_to_unprivileged(workspace)
    code = (
        "import json; from stockade import SandboxManager, SandboxConfig\n"
        "m = SandboxManager(SandboxConfig(execution_log=False, cpu_time_sec=1,"
        " allow_degraded=('memory', 'pids', 'cpu')))\n"
        "out = []\n"
        "for argv in (['python3', '-c', 'while True: pass'], ['sh', '-c', 'kill -XCPU $$']):\n"
        "    r = m.execute(argv)\n"
        "    out.append([r.termination.value, r.signal, r.usage.cpu_total_sec, r.usage.source])\n"
        "print(json.dumps(out))\n"
    )
    proc = run_unprivileged(["-c", code], cwd=workspace)
    assert proc.returncode == 0, proc.stderr.decode()
    import json

    (busy, bare) = json.loads(proc.stdout)
    assert busy[:2] == ["cpu_limit", signal.SIGXCPU], busy
    assert bare[:2] == ["signaled", signal.SIGXCPU], bare


def _usage(total: float, source: str) -> Usage:
    return Usage(cpu_user_sec=total, source=source)


@pytest.mark.parametrize(
    ("sig", "total", "source", "limit", "expected"),
    [
        (signal.SIGXCPU, 0.95, "cgroup v1 (cpuacct)", 1, Termination.CPU_LIMIT),
        (signal.SIGXCPU, 0.85, "cgroup v1 (cpuacct)", 1, Termination.SIGNALED),
        (signal.SIGXCPU, 0.85, "rusage of reaped processes", 1, Termination.CPU_LIMIT),
        (signal.SIGXCPU, 0.007, "rusage of reaped processes", 1, Termination.SIGNALED),
        (signal.SIGKILL, 301.0, "cgroup v2 (cpu)", 300, Termination.CPU_LIMIT),
        (signal.SIGKILL, 240.0, "cgroup v2 (cpu)", 300, Termination.SIGNALED),
        (signal.SIGXCPU, 10.0, "cgroup v2 (cpu)", None, Termination.SIGNALED),
        (signal.SIGTERM, 10.0, "cgroup v2 (cpu)", 1, Termination.SIGNALED),
    ],
)
def test_cpu_limit_needs_the_usage_to_reach_it(sig, total, source, limit, expected):
    config = SandboxConfig(cpu_time_sec=limit, execution_log=False)
    assert _rlimit_termination(Termination.SIGNALED, sig, _usage(total, source), config) is expected
