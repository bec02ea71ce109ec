"""Unprivileged callers: the launcher in a delegated systemd scope (cgroup v2).

This host has no systemd, so ``systemd-run`` is played by a stand-in that
does what matters here (exec the command); the delegation itself is played
by a real cgroup v2 directory given to uid 65534, as systemd's
``Delegate=yes`` would.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from _unpriv import UNPRIV_UID, unprivileged_env, unprivileged_python
from stockade import SandboxConfig, SandboxManager
from stockade.linux import client as client_mod

UNIFIED = Path("/sys/fs/cgroup/unified")


def _fake_systemd_run(directory: Path, *, works: bool) -> Path:
    tool = directory / "systemd-run"
    if works:
        body = 'while [ "$1" != "--" ]; do shift; done; shift; exec "$@"\n'
    else:
        body = 'echo "Failed to connect to bus: No medium found" >&2; exit 1\n'
    tool.write_text("#!/bin/sh\n" + body)
    tool.chmod(0o755)
    return tool


def _manager_with(client: client_mod.LauncherClient) -> SandboxManager:
    manager = SandboxManager(SandboxConfig(execution_log=False))
    manager._launcher = client
    return manager


def test_launcher_started_through_systemd_run(workspace, monkeypatch):
    tool = _fake_systemd_run(workspace, works=True)
    calls: list[list[str]] = []

    def prefix() -> list[str]:
        calls.append([str(tool), "--"])
        return [str(tool), "--user", "--scope", "-p", "Delegate=yes", "--"]

    monkeypatch.setattr(client_mod, "systemd_scope_prefix", prefix)
    client = client_mod.LauncherClient()
    try:
        result = _manager_with(client).execute(["sh", "-c", "echo ok"], cwd=workspace)
        assert result.success and result.stdout == b"ok\n"
        assert calls, "the launcher was not started through systemd-run"
        assert client.hello.get("hello") == 1 and "cgroups" in client.hello
    finally:
        client.stop()


def test_failing_systemd_run_falls_back_to_a_direct_launcher(workspace, monkeypatch, caplog):
    tool = _fake_systemd_run(workspace, works=False)
    monkeypatch.setattr(client_mod, "systemd_scope_prefix", lambda: [str(tool), "--"])
    client = client_mod.LauncherClient()
    try:
        with caplog.at_level(logging.WARNING, logger="stockade.linux.client"):
            result = _manager_with(client).execute(["true"], cwd=workspace)
        assert result.success
        assert "starting it directly" in caplog.text
    finally:
        client.stop()


def test_scope_is_only_for_unprivileged_callers_on_v2_with_a_user_manager(monkeypatch, tmp_path):
    runtime = tmp_path / "run"
    (runtime / "systemd").mkdir(parents=True)
    (runtime / "systemd" / "private").touch()
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    monkeypatch.setattr(client_mod.shutil, "which", lambda name: f"/usr/bin/{name}")
    real_exists = os.path.exists
    monkeypatch.setattr(
        client_mod.os.path,
        "exists",
        lambda p: True if p == "/sys/fs/cgroup/cgroup.controllers" else real_exists(p),
    )
    monkeypatch.setattr(client_mod.os, "geteuid", lambda: 1000)
    prefix = client_mod.systemd_scope_prefix()
    assert prefix is not None and prefix[:3] == ["/usr/bin/systemd-run", "--user", "--scope"]
    assert "Delegate=yes" in prefix and prefix[-1] == "--"

    monkeypatch.setenv("STOCKADE_SYSTEMD_SCOPE", "0")
    assert client_mod.systemd_scope_prefix() is None
    monkeypatch.delenv("STOCKADE_SYSTEMD_SCOPE")
    monkeypatch.setattr(client_mod.os, "geteuid", lambda: 0)
    assert client_mod.systemd_scope_prefix() is None
    monkeypatch.setattr(client_mod.os, "geteuid", lambda: 1000)
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    assert client_mod.systemd_scope_prefix() is None


@pytest.mark.skipif(os.geteuid() != 0 or not (UNIFIED / "cgroup.procs").exists(),
                    reason="needs root and a cgroup v2 tree at /sys/fs/cgroup/unified to play the delegation")
def test_launcher_leaves_its_delegated_cgroup_for_a_leaf(workspace):
    delegated = UNIFIED / f"stockade-test-delegated-{uuid.uuid4().hex[:8]}"
    delegated.mkdir()
    try:
        for name in ("", "cgroup.procs", "cgroup.subtree_control", "cgroup.threads"):
            os.chown(delegated / name if name else delegated, UNPRIV_UID, UNPRIV_UID)
        code = (
            "import json; from stockade.linux import cgroups\n"
            "found = cgroups.probe(leave_delegated=True)\n"
            "print(json.dumps({'cgroup': open('/proc/self/cgroup').read(),"
            " 'v2': found.v2.to_dict() if found.v2 else None}))\n"
        )
        python = unprivileged_python()
        script = f'echo $$ > {delegated}/cgroup.procs && exec "$@"'
        proc = subprocess.run(
            ["sh", "-c", script, "sh", *python, "-c", code],
            cwd=workspace, env=unprivileged_env(), capture_output=True, timeout=60,
        )
        assert proc.returncode == 0, proc.stderr.decode()
        data = json.loads(proc.stdout)
        assert f"0::/{delegated.name}/launcher" in data["cgroup"]
        assert data["v2"]["parents"]["cpuacct"] == str(delegated)
    finally:
        for leaf in delegated.iterdir() if delegated.exists() else []:
            if leaf.is_dir():
                leaf.rmdir()
        delegated.rmdir()
