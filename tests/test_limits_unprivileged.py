"""Tree limits for an unprivileged caller.

On this cgroup v1 host uid 65534 has no writable cgroup (v1 hierarchies are
not delegated to users), so a policy with tree limits must fail closed,
naming the missing cgroup feature and the fix, or, when the policy allows
it, fall back to per-process rlimits and say so in the result.
"""

from __future__ import annotations

import os
import textwrap

import pytest
from _unpriv import UNPRIV_UID, give_to_unprivileged, run_code_as_nobody, run_unprivileged

from stockade.linux import cgroups

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="switches to uid 65534: needs root")


def _nobody_has_cgroups() -> bool:
    # the probe checks write access with os.access, i.e. for our real uid;
    # uid 65534 gets a writable cgroup only through delegation (cgroup v2)
    found = cgroups.probe(refresh=True)
    for backend in (found.v1, found.v2):
        if backend is None:
            continue
        for parent in backend.parents.values():
            st = os.stat(parent)
            if st.st_uid == UNPRIV_UID:
                return True
    return False


skip_if_delegated = pytest.mark.skipif(
    _nobody_has_cgroups(), reason="uid 65534 has a delegated cgroup on this host"
)


@skip_if_delegated
def test_tree_limits_fail_closed_without_a_usable_cgroup(workspace):
    give_to_unprivileged(workspace)
    code = textwrap.dedent("""
        import json
        from stockade import SandboxConfig, SandboxManager, SandboxUnavailableError
        try:
            SandboxManager(SandboxConfig(execution_log=False)).execute(["true"])
        except SandboxUnavailableError as err:
            print(json.dumps({"protection": err.protection, "reason": err.reason, "fix": err.fix}))
        else:
            print(json.dumps({"ran": True}))
    """)
    data = run_code_as_nobody(code, cwd=workspace)
    assert "ran" not in data, "a policy with tree limits ran without a cgroup"
    assert data["protection"].startswith("memory, pids, cpu (limits of the whole tree)")
    assert "not writable by uid 65534" in data["reason"]
    assert "allow_degraded = ['memory', 'pids', 'cpu']" in data["fix"]


@skip_if_delegated
def test_cli_fails_closed_with_exit_125(workspace):
    give_to_unprivileged(workspace)
    proc = run_unprivileged(["-m", "stockade.cli", "run", "--no-log", "--", "true"], cwd=workspace)
    assert proc.returncode == 125, proc.stderr.decode()
    assert b"limits of the whole tree" in proc.stderr and b"--allow-degraded" in proc.stderr


@skip_if_delegated
def test_fallback_to_rlimits_when_the_policy_allows_it(workspace):
    give_to_unprivileged(workspace)
    code = textwrap.dedent("""
        import json
        from stockade import SandboxConfig, SandboxManager
        config = SandboxConfig(execution_log=False, allow_degraded=("memory", "pids", "cpu"), memory_mb=64,
                               cpu_cores=0.5)
        r = SandboxManager(config).execute(["python3", "-c",
            "import resource\\n"
            "print(resource.getrlimit(resource.RLIMIT_DATA)[0] >> 20)\\n"
            "try:\\n    x = b'x' * (128 << 20)\\nexcept MemoryError:\\n    print('MemoryError')"])
        print(json.dumps({"out": r.stdout_text, "err": r.stderr_text, "term": r.termination.value,
                          "usage": r.usage.source,
                          "prot": {p.name: [p.status, p.detail] for p in r.protections}}))
    """)
    data = run_code_as_nobody(code, cwd=workspace)
    assert data["term"] == "exited", data
    assert data["out"].split() == ["64", "MemoryError"], data
    prot = data["prot"]
    assert prot["memory"][0] == "degraded" and "RLIMIT_DATA" in prot["memory"][1]
    assert prot["pids"][0] == "degraded" and "RLIMIT_NPROC" in prot["pids"][1]
    assert prot["cpu"][0] == "degraded" and "RLIMIT_CPU" in prot["cpu"][1]
    assert "CPU quota not enforced" in prot["cpu"][1]
    assert data["usage"].startswith("rusage")


@skip_if_delegated
def test_a_policy_without_tree_limits_runs_without_a_cgroup(workspace):
    give_to_unprivileged(workspace)
    code = textwrap.dedent("""
        import json
        from stockade import SandboxConfig, SandboxManager
        config = SandboxConfig(execution_log=False, memory_mb=None, max_processes=None,
                               cpu_time_sec=None)
        r = SandboxManager(config).execute(["sh", "-c", "echo ok"])
        print(json.dumps({"out": r.stdout_text, "term": r.termination.value,
                          "prot": {p.name: p.status for p in r.protections}}))
    """)
    data = run_code_as_nobody(code, cwd=workspace)
    assert data["out"] == "ok\n" and data["term"] == "exited"
    assert data["prot"]["memory"] == "off" and data["prot"]["pids"] == "off"


def test_an_unprivileged_launcher_sees_a_full_private_tmp(workspace):
    # the launcher runs as uid 65534 too; it reaches the sandbox's areas
    # through /proc/<pid>/root as the owner of the sandbox's user namespace
    give_to_unprivileged(workspace)
    code = textwrap.dedent("""
        import json
        from stockade import SandboxConfig, SandboxManager
        config = SandboxConfig(execution_log=False, memory_mb=None, max_processes=None,
                               cpu_time_sec=None, disk_mb=10, max_file_size_mb=50)
        r = SandboxManager(config).execute(["sh", "-c", "head -c 20000000 /dev/zero > /tmp/f; exit 0"])
        print(json.dumps({"term": r.termination.value, "code": r.exit_code, "notes": r.notes,
                          "disk": [v.what for v in r.violations if v.mechanism == "disk"]}))
    """)
    data = run_code_as_nobody(code, cwd=workspace)
    assert data["term"] == "disk_limit" and data["code"] == 0, data
    assert data["disk"] == ["/tmp"], data


def test_an_unprivileged_launcher_counts_deleted_files_held_open(workspace):
    give_to_unprivileged(workspace)
    code = textwrap.dedent("""
        import json
        from stockade import SandboxConfig, SandboxManager
        config = SandboxConfig(execution_log=False, memory_mb=None, max_processes=None,
                               cpu_time_sec=None, disk_mb=10, timeout_sec=60)
        program = (
            "import os, time\\n"
            "fds = []\\n"
            "for i in range(8):\\n"
            "    fds.append(os.open(f'f{i}', os.O_CREAT | os.O_WRONLY)); os.unlink(f'f{i}')\\n"
            "    os.write(fds[-1], b'x' * (10 << 20)); os.fsync(fds[-1])\\n"
            "time.sleep(1.5); print('still running')\\n"
        )
        r = SandboxManager(config).execute(["python3", "-c", program])
        print(json.dumps({"term": r.termination.value, "out": r.stdout_text}))
    """)
    data = run_code_as_nobody(code, cwd=workspace)
    assert data["term"] == "disk_limit" and "still running" not in data["out"], data
