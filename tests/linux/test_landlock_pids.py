"""The second tier shares the host's pid space: calls that change another
process by pid are refused (the syscall filter allows them on the caller
itself, named by 0), and a monitor that dies anyway leaves no survivor.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator

import pytest

from proctree import alive_with as _alive_with
from stockade import SandboxConfig, SandboxManager, Termination
from stockade.linux.landlock import abi_version

NOBODY = 65534
PY = "/usr/bin/python3"
ABI, _WHY = abi_version()
pytestmark = pytest.mark.skipif(ABI < 6, reason=f"needs Landlock ABI 6+ (have {ABI}: {_WHY})")


def manager(**fields) -> SandboxManager:
    return SandboxManager(SandboxConfig(execution_log=False, tier="landlock", **fields))


@pytest.fixture
def host_sleeper() -> Iterator[int]:
    """A host ``sleep`` of the sandbox's uid (65534 for a root caller)."""
    prefix: list[str] = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("setpriv (util-linux) is needed")
        prefix = [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    proc = subprocess.Popen([*prefix, "sleep", "120"])
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # setpriv has exec'd sleep
            with open(f"/proc/{proc.pid}/comm") as fh:
                if fh.read().strip() == "sleep":
                    break
            time.sleep(0.01)
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


ATTACK = r"""
import ctypes, json, os, resource, sys
pid = int(sys.argv[1])
libc = ctypes.CDLL(None, use_errno=True)
out = {}
def attempt(name, fn):
    try:
        fn()
        out[name] = "ok"
    except OSError as err:
        out[name] = f"errno {err.errno}"
def ioprio_set(which, who):
    if libc.syscall(251, which, who, (2 << 13) | 7) != 0:  # x86_64 ioprio_set, best-effort 7
        raise OSError(ctypes.get_errno(), "ioprio_set")
attempt("prlimit_nofile", lambda: resource.prlimit(pid, resource.RLIMIT_NOFILE, (1, 1)))
attempt("prlimit_cpu", lambda: resource.prlimit(pid, resource.RLIMIT_CPU, (0, 0)))
attempt("prlimit_read", lambda: resource.prlimit(pid, resource.RLIMIT_NOFILE))
attempt("setpriority_pid", lambda: os.setpriority(os.PRIO_PROCESS, pid, 19))
attempt("setpriority_user", lambda: os.setpriority(os.PRIO_USER, 0, 19))
attempt("setpriority_pgrp", lambda: os.setpriority(os.PRIO_PGRP, 0, 19))
attempt("affinity", lambda: os.sched_setaffinity(pid, {0}))
attempt("scheduler", lambda: os.sched_setscheduler(pid, os.SCHED_BATCH, os.sched_param(0)))
if os.uname().machine == "x86_64":
    attempt("ioprio_pid", lambda: ioprio_set(1, pid))
    attempt("ioprio_user", lambda: ioprio_set(3, 0))
print(json.dumps(out))
"""


def _limits(pid: int) -> str:
    with open(f"/proc/{pid}/limits") as fh:
        return fh.read()


def _state(pid: int) -> tuple:
    return (
        _limits(pid),
        os.getpriority(os.PRIO_PROCESS, pid),
        os.sched_getaffinity(pid),
        os.sched_getscheduler(pid),
    )


@pytest.mark.parametrize("mode", ["moderate", "strict"])
def test_program_cannot_change_a_host_process_of_its_uid(mode, workspace, host_sleeper):
    (workspace / "attack.py").write_text(ATTACK)
    before = _state(host_sleeper)
    result = manager(mode=mode).execute([PY, "attack.py", str(host_sleeper)], cwd=workspace)
    assert result.tier == "landlock"
    assert result.success, result.summary() + result.stderr_text
    out = json.loads(result.stdout_text)
    eperm = f"errno {1}"
    changed = {k: v for k, v in out.items() if k != "prlimit_read" and v != eperm}
    assert not changed, out
    assert out["prlimit_read"] == "ok"  # reading changes nothing
    assert _state(host_sleeper) == before
    denied = {v.what: v for v in result.violations if v.mechanism == "seccomp"}
    for name in ("prlimit64", "setpriority", "sched_setaffinity", "sched_setscheduler"):
        assert name in denied, result.violations
        assert denied[name].action == "errno:EPERM"
    assert f"pid {host_sleeper}" in denied["prlimit64"].detail
    if mode == "moderate":
        assert "PRIO_USER" in denied["setpriority"].detail


SELF_USE = r"""
import json, os, resource
out = {}
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
out["setrlimit"] = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
out["prlimit0"] = resource.prlimit(0, resource.RLIMIT_NOFILE)[0]
out["nice"] = os.nice(1)
cpu = min(os.sched_getaffinity(0))
os.sched_setaffinity(0, {cpu})
out["affinity"] = sorted(os.sched_getaffinity(0)) == [cpu]
os.setpriority(os.PRIO_PROCESS, 0, 5)
out["setpriority0"] = os.getpriority(os.PRIO_PROCESS, 0)
try:
    resource.prlimit(os.getpid(), resource.RLIMIT_NOFILE, (32, hard))
    out["prlimit_own_pid"] = "ok"
except OSError as err:
    out["prlimit_own_pid"] = err.errno
print(json.dumps(out))
"""


def test_self_use_by_zero_works(workspace):
    (workspace / "self.py").write_text(SELF_USE)
    result = manager().execute([PY, "self.py"], cwd=workspace)
    assert result.success, result.summary() + result.stderr_text
    out = json.loads(result.stdout_text)
    assert out["setrlimit"] == 64 and out["prlimit0"] == 64
    assert out["nice"] >= 1
    assert out["affinity"] is True
    assert out["setpriority0"] == 5
    # the documented cost: naming oneself by pid is refused
    assert out["prlimit_own_pid"] == 1
    assert [v.what for v in result.violations] == ["prlimit64"]


# -- the monitor ------------------------------------------------------------------------

CRIPPLE = r"""
import json, os, resource, subprocess, sys
token = sys.argv[1]
out = {}
m = os.getppid()
for res in ("RLIMIT_NOFILE", "RLIMIT_CPU"):
    try:
        resource.prlimit(m, getattr(resource, res), (0, 0))
        out[res] = "ok"
    except OSError as err:
        out[res] = err.errno
subprocess.Popen(
    ["/usr/bin/python3", "-c",
     "import time; time.sleep(2); open('marker', 'w').write('survived')", token],
    start_new_session=True,
)
for _ in range(300):
    if os.fork() == 0:
        os._exit(0)
print(json.dumps(out), flush=True)
"""

DRIVER = r"""
import json, sys
from stockade import SandboxConfig, SandboxManager
config = SandboxConfig(execution_log=False, tier="landlock",
                       allow_degraded=["memory", "pids", "cpu"])
result = SandboxManager(config).execute(["/usr/bin/python3"] + sys.argv[1:])
print(json.dumps({"termination": result.termination.value, "error": result.error,
                  "stdout": result.stdout_text, "stderr": result.stderr_text,
                  "violations": [v.what for v in result.violations]}))
"""


def test_monitor_crippling_attack_is_refused_and_leaves_no_survivor(
    nobody_python, nobody_workspace
):
    """The security trial's attack, as uid 65534 without a cgroup."""
    (nobody_workspace / "cripple.py").write_text(CRIPPLE)
    token = f"stockade-survivor-{uuid.uuid4().hex[:12]}"
    proc = nobody_python(DRIVER, "cripple.py", token, cwd=nobody_workspace)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["termination"] == "exited", report
    assert json.loads(report["stdout"]) == {"RLIMIT_NOFILE": 1, "RLIMIT_CPU": 1}
    assert "prlimit64" in report["violations"]
    assert _alive_with(token) == []
    time.sleep(2.5)
    assert not (nobody_workspace / "marker").exists(), "a setsid process survived the run"


DIES = r"""
import os, subprocess, sys, time
subprocess.Popen(
    ["/usr/bin/python3", "-c",
     "import time; time.sleep(3); open('marker', 'w').write('survived')", sys.argv[1]],
    start_new_session=True,
)
open("monitor.pid", "w").write(str(os.getppid()))
time.sleep(60)
"""


def test_a_dead_monitor_leaves_no_survivor_without_a_cgroup(nobody_python, nobody_workspace):
    """However the monitor dies (here: SIGKILL from the host), the launcher
    kills what it left, setsid'ed processes included, and the result does
    not blame bubblewrap."""
    (nobody_workspace / "dies.py").write_text(DIES)
    token = f"stockade-survivor-{uuid.uuid4().hex[:12]}"
    box: dict = {}
    thread = threading.Thread(
        target=lambda: box.setdefault(
            "proc", nobody_python(DRIVER, "dies.py", token, cwd=nobody_workspace)
        ),
        daemon=True,
    )
    thread.start()
    pid_file = nobody_workspace / "monitor.pid"
    deadline = time.monotonic() + 30
    while not (pid_file.exists() and pid_file.read_text() and _alive_with(token)):
        assert time.monotonic() < deadline, "the program never started"
        time.sleep(0.05)
    os.kill(int(pid_file.read_text()), signal.SIGKILL)
    thread.join(60)
    proc = box["proc"]
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["termination"] == "sandbox_error", report
    assert "bwrap" not in report["error"]
    assert "monitor" in report["error"]
    assert _alive_with(token) == []
    time.sleep(3.5)
    assert not (nobody_workspace / "marker").exists(), "a setsid process survived the monitor"


def test_second_tier_filter_is_compiled_once_per_policy():
    from stockade.linux import seccomp

    config = SandboxConfig(execution_log=False, tier="landlock")
    first = seccomp.filter_for_config(config, tier="landlock", landlock_abi=ABI)
    again = seccomp.filter_for_config(config, tier="landlock", landlock_abi=ABI)
    assert first is again
    assert first.host_pids and first.decision("prlimit64").conditions
    inner = seccomp.filter_for_config(config, tier="namespaces")
    assert not inner.host_pids and not inner.decision("prlimit64").conditions

