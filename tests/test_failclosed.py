"""A sandbox that cannot be built never turns into an unsandboxed run."""

from __future__ import annotations

import os
import stat

import pytest

from stockade import (
    CommandError,
    PolicyError,
    SandboxConfig,
    SandboxManager,
    SandboxUnavailableError,
    Termination,
)
from stockade.linux import bwrap as bwrap_mod
from stockade.linux import probe as probe_mod


def test_missing_bwrap_is_an_error_with_the_fix(workspace):
    manager = SandboxManager(SandboxConfig(execution_log=False, bwrap_path="/nonexistent/bwrap"))
    with pytest.raises(SandboxUnavailableError) as info:
        manager.execute(["true"], cwd=workspace)
    assert info.value.protection == "namespaces"
    assert "not executable" in info.value.reason


def test_bwrap_that_cannot_make_namespaces_is_refused(workspace):
    tools = workspace / "tools"
    tools.mkdir()
    fake = tools / "bwrap"
    fake.write_text(
        "#!/bin/sh\n"
        'case "$1" in --version) echo "bubblewrap 0.8.0";; --help) echo "--bind-fd";; '
        '*) echo "bwrap: setting up uid map: Permission denied" >&2; exit 1;; esac\n'
    )
    fake.chmod(0o755)
    bwrap_mod.find_bwrap.cache_clear()
    probe_mod.probe_host.cache_clear()
    manager = SandboxManager(SandboxConfig(execution_log=False, bwrap_path=str(fake)))
    try:
        with pytest.raises(SandboxUnavailableError) as info:
            manager.execute(["true"], cwd=workspace)
    finally:
        bwrap_mod.find_bwrap.cache_clear()
        probe_mod.probe_host.cache_clear()
    assert "setting up uid map: Permission denied" in info.value.reason
    assert info.value.fix


def test_bwrap_setup_failure_is_a_sandbox_error_result(workspace):
    # A bind source that vanishes: bubblewrap fails before the program runs.
    manager = SandboxManager(SandboxConfig(execution_log=False))
    prepared = manager._prepare(["true"], workspace, None, None)
    prepared.spec["args_data"] = [*prepared.spec["args_data"], "--ro-bind", "/nonexistent-src", "/x"]
    io = manager._submit(prepared, None, True)
    from stockade import _io

    _io.drive_sync(io)
    result = manager._finish(prepared, io)
    assert result.termination is Termination.SANDBOX_ERROR
    assert "nonexistent-src" in (result.error or "")
    assert result.exit_code is None


@pytest.mark.parametrize("command", [[], [""]])
def test_empty_command(workspace, command):
    with pytest.raises(CommandError):
        SandboxManager(SandboxConfig(execution_log=False)).execute(command, cwd=workspace)


def test_missing_cwd():
    with pytest.raises(CommandError):
        SandboxManager(SandboxConfig(execution_log=False)).execute(["true"], cwd="/nonexistent-dir")


def test_not_executable(workspace):
    script = workspace / "s.sh"
    script.write_text("echo hi\n")
    with pytest.raises(CommandError, match="not executable"):
        SandboxManager(SandboxConfig(execution_log=False)).execute(["./s.sh"], cwd=workspace)


@pytest.mark.parametrize(
    "path",
    ["/", "/etc", "/home", "/tmp", "/var/tmp", "/usr/local/bin", "/bin", "/var/lib", "/etc/ssh", "/opt", "/srv"],
)
def test_system_directories_cannot_be_the_workspace(path):
    # /bin is a symlink to /usr/bin on merged-usr hosts: judged resolved
    if not os.path.isdir(path):
        pytest.skip(f"{path} does not exist here")
    with pytest.raises(PolicyError, match="workspace"):
        SandboxManager(SandboxConfig(execution_log=False)).execute(["true"], cwd=path)


def test_hidden_directories_of_a_home_cannot_be_the_workspace():
    home = os.path.expanduser("~")
    hidden = os.path.join(home, f".stockade-test-{os.getpid()}")
    os.makedirs(os.path.join(hidden, "sub"))
    try:
        for path in (hidden, os.path.join(hidden, "sub")):
            with pytest.raises(PolicyError, match="hidden directory"):
                SandboxManager(SandboxConfig(execution_log=False)).execute(["true"], cwd=path)
    finally:
        import shutil

        shutil.rmtree(hidden)


def test_home_cannot_be_the_workspace():
    home = os.path.expanduser("~")
    with pytest.raises(PolicyError, match="home"):
        SandboxManager(SandboxConfig(execution_log=False)).execute(["true"], cwd=home)


def test_cwd_outside_the_workspace(workspace, tmp_path):
    manager = SandboxManager(SandboxConfig(execution_log=False, workspace=workspace))
    with pytest.raises(PolicyError, match="outside the workspace"):
        manager.execute(["true"], cwd="/var")


def test_pyenv_shim_is_refused_with_the_fix(workspace, tmp_path):
    shims = tmp_path / ".pyenv" / "shims"
    shims.mkdir(parents=True)
    shim = shims / "python9.9"
    shim.write_text("#!/usr/bin/env bash\nexec pyenv exec python9.9 \"$@\"\n")
    shim.chmod(shim.stat().st_mode | stat.S_IXUSR)
    manager = SandboxManager(SandboxConfig(execution_log=False))
    with pytest.raises(CommandError, match="pyenv which"):
        manager.execute([str(shim)], cwd=workspace)


def test_disabled_mode_still_times_out_and_says_it_is_unprotected(workspace):
    manager = SandboxManager(SandboxConfig(execution_log=False, mode="disabled"))
    result = manager.execute(["sh", "-c", "sleep 30"], cwd=workspace, timeout=0.5)
    assert result.termination is Termination.TIMEOUT
    status = {p.name: p.status for p in result.protections}
    assert status["namespaces"] == "off" and status["syscall_filter"] == "off"
    ok = manager.execute(["sh", "-c", "id -u; echo $HOME"], cwd=workspace)
    assert ok.success
    expected_uid = "65534" if os.geteuid() == 0 else str(os.geteuid())
    assert ok.stdout_text.splitlines()[0] == expected_uid
