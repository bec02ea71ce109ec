"""stockade called by an unprivileged user (the caller is not root)."""

from __future__ import annotations

import json
import os

from _unpriv import UNPRIV_UID, give_to_unprivileged, run_unprivileged


def test_unprivileged_caller_runs_a_sandbox(workspace):
    give_to_unprivileged(workspace)
    code = (
        "import json; from stockade import SandboxManager, SandboxConfig\n"
        # no usable cgroup for uid 65534 on a cgroup v1 host (see test_limits_unprivileged)
        "m = SandboxManager(SandboxConfig(execution_log=False, allow_degraded=('memory', 'pids', 'cpu')))\n"
        "r = m.execute(['sh', '-c', 'id -u; echo hi > made.txt; ls -A /root 2>&1 || echo LS-REFUSED;"
        " (echo x > /etc/x) 2>&1 || echo WRITE-REFUSED'])\n"
        "print(json.dumps(r.to_dict()))\n"
    )
    proc = run_unprivileged(["-c", code], cwd=workspace)
    assert proc.returncode == 0, proc.stderr.decode()
    data = json.loads(proc.stdout)
    assert data["termination"] == "exited", data
    lines = data["stdout"].splitlines()
    assert lines[0] == str(UNPRIV_UID)
    # /root is not in the mount view; /etc is read-only
    assert lines[1:] == [
        "ls: cannot access '/root': No such file or directory",
        "LS-REFUSED",
        lines[3],
        "WRITE-REFUSED",
    ], lines
    assert "/etc/x" in lines[3] and ("Read-only file system" in lines[3] or "Permission denied" in lines[3]), lines
    assert not os.path.exists("/etc/x")
    assert (workspace / "made.txt").read_text() == "hi\n"
    assert (workspace / "made.txt").stat().st_uid == UNPRIV_UID
    assert not any(p["status"] == "enforced" and p["name"] == "never_root" and "uid 0" in p["detail"]
                   for p in data["protections"])


def test_unprivileged_cli_timeout_and_exit_codes(workspace):
    give_to_unprivileged(workspace)
    proc = run_unprivileged(["-m", "stockade.cli", "run", "--no-log", "--allow-degraded", "memory,pids,cpu", "--timeout", "0.5", "--", "sleep", "20"],
                            cwd=workspace)
    assert proc.returncode == 124, proc.stderr.decode()
    proc = run_unprivileged(["-m", "stockade.cli", "run", "--no-log", "--allow-degraded", "memory,pids,cpu", "--",
                             "sh", "-c", "exit 9"], cwd=workspace)
    assert proc.returncode == 9, proc.stderr.decode()
