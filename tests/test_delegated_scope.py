"""The launcher in a delegated systemd scope (cgroup v2), for unprivileged
and root callers.

This host has no systemd, so ``systemd-run`` is played by a stand-in that
does what matters here (exec the command; for root, also make the scope's
cgroup in the real v2 hierarchy and move itself in, as systemd does); the
delegation to a user is played by a real cgroup v2 directory given to uid
65534, as systemd's ``Delegate=yes`` would. Which route is taken is decided
from fake cgroup v2 trees in a temporary directory.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from _unpriv import UNPRIV_UID, unprivileged_env, unprivileged_python
from stockade import SandboxConfig, SandboxManager
from stockade.linux import cgroups
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


def test_scope_for_unprivileged_callers_needs_v2_and_a_user_manager(monkeypatch, tmp_path):
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
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    assert client_mod.systemd_scope_prefix() is None


def _fake_v2_tree(tmp_path: Path, own: str) -> cgroups.Probe:
    """A cgroup v2 host as a root caller in cgroup ``own`` sees it: the root
    cgroup with every controller, a session scope holding a process."""
    unified = tmp_path / "unified"
    scope = unified / "user.slice" / "session-1.scope"
    scope.mkdir(parents=True)
    for directory in (unified, unified / "user.slice", scope):
        (directory / "cgroup.controllers").write_text("cpu memory pids\n")
        (directory / "cgroup.procs").write_text("")
        (directory / "cgroup.subtree_control").write_text("")
        if directory != unified:
            (directory / "cgroup.type").write_text("domain\n")  # only non-root cgroups
    (scope / "cgroup.procs").write_text("1234\n")
    (tmp_path / "mountinfo").write_text(f"30 1 0:30 / {unified} rw - cgroup2 cgroup2 rw\n")
    (tmp_path / "cgroup").write_text(f"0::{own}\n")
    return cgroups._probe(str(tmp_path / "mountinfo"), str(tmp_path / "cgroup"), 0)


def test_root_in_a_busy_v2_cgroup_gets_a_scope_of_the_system_manager(monkeypatch, tmp_path):
    systemd = {"/run/systemd/system": True}
    real_exists, real_isdir = os.path.exists, os.path.isdir
    monkeypatch.setattr(
        client_mod.os.path,
        "exists",
        lambda p: True if p == "/sys/fs/cgroup/cgroup.controllers" else real_exists(p),
    )
    monkeypatch.setattr(
        client_mod.os.path, "isdir", lambda p: systemd[p] if p in systemd else real_isdir(p)
    )
    monkeypatch.setattr(client_mod.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(client_mod.os, "geteuid", lambda: 0)
    monkeypatch.delenv("STOCKADE_SYSTEMD_SCOPE", raising=False)

    busy = _fake_v2_tree(tmp_path / "busy", "/user.slice/session-1.scope")
    assert busy.v2 is not None and not busy.v2.parents  # refused on its own
    prefix = client_mod.systemd_scope_prefix(busy)
    assert prefix is not None and prefix[:2] == ["/usr/bin/systemd-run", "--scope"]
    assert "--user" not in prefix and "Delegate=yes" in prefix and prefix[-1] == "--"
    assert client_mod.scope_name(prefix).startswith("stockade-launcher-")
    assert client_mod.scope_name(prefix).endswith(".scope")

    # in the root cgroup its own cgroup serves: no scope
    top = _fake_v2_tree(tmp_path / "top", "/")
    assert top.v2 is not None and top.v2.parents
    assert client_mod.systemd_scope_prefix(top) is None
    # systemd is not the system manager: no scope
    systemd["/run/systemd/system"] = False
    assert client_mod.systemd_scope_prefix(busy) is None


def _fake_system_scope_run(directory: Path) -> Path:
    """systemd-run --scope as the system manager does it, for what matters:
    the scope's cgroup made in the v2 hierarchy, the command moved into it."""
    tool = directory / "systemd-run"
    tool.write_text(
        "#!/bin/sh\n"
        'unit=""\n'
        'for a; do case "$a" in --unit=*) unit="${a#--unit=}";; --) break;; esac; done\n'
        'while [ "$1" != "--" ]; do shift; done; shift\n'
        f'mkdir "{UNIFIED}/$unit.scope" && echo $$ > "{UNIFIED}/$unit.scope/cgroup.procs" || exit 1\n'
        'exec "$@"\n'
    )
    tool.chmod(0o755)
    return tool


@pytest.mark.skipif(os.geteuid() != 0 or not (UNIFIED / "cgroup.procs").exists(),
                    reason="needs root and a cgroup v2 tree at /sys/fs/cgroup/unified to play systemd")
def test_root_launcher_in_a_system_scope_makes_the_runs_cgroups_there(workspace, monkeypatch):
    """A root launcher owns every cgroup, so only the scope's name tells it
    the scope is its own: it leaves it for a leaf and makes the runs' v2
    cgroups beside the leaf; the program finds itself there."""
    import functools

    import stockade.manager as manager_mod
    from stockade.linux import limits as limits_mod

    tool = _fake_system_scope_run(workspace)
    unit = f"stockade-launcher-test-{uuid.uuid4().hex[:8]}"
    scope = UNIFIED / f"{unit}.scope"
    monkeypatch.setattr(
        client_mod, "systemd_scope_prefix",
        lambda: [str(tool), "--scope", "-p", "Delegate=yes", f"--unit={unit}", "--"],
    )
    # this host's v2 hierarchy has no controllers: only the CPU-time budget
    # (cpu.stat is core) can use it, so the run insists on v2
    monkeypatch.setattr(manager_mod._limits, "plan", functools.partial(limits_mod.plan, version=2))
    client = client_mod.LauncherClient()
    try:
        manager = SandboxManager(SandboxConfig(
            execution_log=False, mode="disabled", memory_mb=None, max_processes=None, cpu_time_sec=5,
        ))
        manager._launcher = client
        result = manager.execute(["cat", "/proc/self/cgroup"], cwd=workspace)
        assert result.success, result.summary() + result.stderr_text
        assert client.hello["cgroups"]["v2"]["parents"] == {"cpuacct": str(scope)}
        line = [x for x in result.stdout.decode().splitlines() if x.startswith("0::")][0]
        assert line.startswith(f"0::/{unit}.scope/stockade-"), line
        launcher_cgroup = Path(f"/proc/{client.pid()}/cgroup").read_text()
        assert f"0::/{unit}.scope/launcher" in launcher_cgroup
    finally:
        client.stop()
        if scope.exists():
            for child in scope.iterdir():
                if child.is_dir():
                    _rmdir_when_empty(child)
            _rmdir_when_empty(scope)


def _rmdir_when_empty(path: Path) -> None:
    """Remove a cgroup the test made once its last process is gone: the
    launcher is reaped by stop(), but its spare child, killed when the
    launcher dies, may still be exiting in it (EBUSY meanwhile)."""
    deadline = time.monotonic() + 10
    while True:
        try:
            path.rmdir()
            return
        except OSError as err:
            if err.errno != errno.EBUSY or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


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
                _rmdir_when_empty(leaf)
        _rmdir_when_empty(delegated)
