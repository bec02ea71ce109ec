"""Paths a run shows or writes besides its rules: PYTHONPATH entries and a
command's installation are checked like rules (and more), and the caller's
own Python installation stays read-only inside writable places. Both tiers,
the real sandbox."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from _unpriv import run_unprivileged
from fsutil import TIERS, is_second, manager, write

from stockade.errors import CommandError, PolicyError

REPO_SRC = Path(__file__).resolve().parents[2] / "src"


@pytest.fixture
def library() -> Iterator[Path]:
    """A module directory outside the workspace, the private areas and any
    home: where a PYTHONPATH entry may lead."""
    path = Path(tempfile.mkdtemp(prefix="stockade-test-lib-", dir="/srv"))
    os.chmod(path, 0o755)
    write(path / "helper_mod.py", "VALUE = 42\n", 0o644)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def home_dot_dir() -> Iterator[Path]:
    """A hidden directory of the caller's home (like ~/.ssh)."""
    path = Path.home() / f".stockade-test-{uuid.uuid4().hex[:8]}"
    path.mkdir(mode=0o755)
    write(path / "id_test", "PRIVATE KEY\n", 0o644)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _entries(home_dot: Path) -> list[str]:
    return ["/", "/proc", "/sys", "/run", "/var/run", "/tmp", "/var/tmp", "/dev/shm",
            str(Path.home()), str(home_dot)]


@pytest.mark.parametrize("fields", TIERS)
def test_pythonpath_entries_the_sandbox_must_not_show_are_refused(fields, workspace, home_dot_dir):
    mgr = manager(fields)
    for entry in _entries(home_dot_dir):
        with pytest.raises(PolicyError) as info:
            mgr.execute(
                ["sh", "-c", "touch ran"], cwd=workspace, env={"PYTHONPATH": f"src:{entry}"}
            )
        message = str(info.value)
        assert "PYTHONPATH" in message and entry in message, message
        assert "package directory itself" in message, message
        assert not (workspace / "ran").exists(), entry


@pytest.mark.parametrize("fields", TIERS)
def test_pythonpath_entry_shown_read_only_and_named_in_the_summary(fields, workspace, library):
    mgr = manager(fields)
    code = (
        "import helper_mod; print(helper_mod.VALUE)\n"
        "try:\n"
        f"    open('{library}/new', 'w')\n"
        "except OSError:\n"
        "    print('read-only')\n"
    )
    result = mgr.execute(
        ["python3", "-c", code], cwd=workspace, env={"PYTHONPATH": str(library)}
    )
    assert result.success and result.stdout_text.split() == ["42", "read-only"], result.summary()
    assert f"PYTHONPATH: {library} visible read-only" in result.summary()
    assert not (library / "new").exists()


@pytest.mark.parametrize("fields", TIERS)
def test_command_installation_in_run_is_refused(fields, workspace):
    root = Path(tempfile.mkdtemp(prefix="stockade-test-inst-", dir="/run"))
    try:
        os.chmod(root, 0o755)
        write(root / "bin" / "tool", "#!/bin/sh\necho tool\n", 0o755)
        (root / "lib").mkdir()
        with pytest.raises(CommandError) as info:
            manager(fields).execute([str(root / "bin" / "tool")], cwd=workspace)
        assert f"{root}/bin" in str(info.value) and "/run" in str(info.value)
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.parametrize("fields", TIERS)
def test_unprivileged_caller_pythonpath_refused(fields, workspace):
    os.chown(workspace, 65534, 65534)
    proc = run_unprivileged(
        ["-m", "stockade.cli", "run", "--no-log", "--tier", fields["tier"],
         "--allow-degraded", "memory,pids,cpu", "--env", "PYTHONPATH=/tmp",
         "--", "touch", "ran"],
        cwd=workspace,
    )
    stderr = proc.stderr.decode()
    assert proc.returncode != 0 and "PYTHONPATH" in stderr and "/tmp" in stderr, stderr
    assert not (workspace / "ran").exists()


# -- the caller's own installation ------------------------------------------------

_PLANT = """
import json, sys
from stockade import SandboxConfig, SandboxManager
from stockade.errors import PolicyError
ws, tier, site = sys.argv[1], sys.argv[2], sys.argv[3]
mgr = SandboxManager(SandboxConfig(execution_log=False, tier=tier))
script = (
    f"echo 'import os' > {site}/zz_stockade_test.pth || echo venv-ro; "
    "echo x > src/stockade/zz_stockade_test.py || echo package-ro; "
    "echo x > .venv/pyvenv.cfg || echo cfg-ro; "
    "echo x > other/ok.txt && echo other-rw"
)
result = mgr.execute(["sh", "-c", script], cwd=ws)
try:
    mgr.execute(["true"], cwd=ws + "/src/stockade")
    inside = "ran"
except PolicyError as err:
    inside = str(err)
print(json.dumps({"stdout": result.stdout_text, "notes": result.notes, "inside": inside,
                  "summary": result.summary()}))
"""


@pytest.mark.parametrize("fields", TIERS)
def test_callers_own_environment_in_the_workspace_stays_read_only(fields, workspace):
    """stockade run from a virtual environment inside the workspace, with
    its package there too (an editable install's src/stockade): the run
    cannot plant a .pth file or a module the host would run as the caller."""
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", "--without-pip", str(workspace / ".venv")], check=True)
    shutil.copytree(REPO_SRC / "stockade", workspace / "src" / "stockade",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (workspace / "other").mkdir()
    python = workspace / ".venv" / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    deps = sysconfig.get_paths()["purelib"]  # the test venv's: pydantic, yaml, ...
    proc = subprocess.run(
        [str(python), "-c", _PLANT, str(workspace), fields["tier"], site],
        cwd=workspace,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{workspace / 'src'}:{deps}", "LANG": "C.UTF-8"},
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.splitlines()[-1])
    said = out["stdout"].split()
    assert {"venv-ro", "package-ro", "cfg-ro"} <= set(said), out
    if not is_second(fields):
        assert "other-rw" in said, out
    assert not Path(site, "zz_stockade_test.pth").exists()
    assert not (workspace / "src" / "stockade" / "zz_stockade_test.py").exists()
    assert any(n.startswith(f"protected: {workspace}/.venv read-only") for n in out["notes"]), out
    assert any(n.startswith(f"protected: {workspace}/src/stockade read-only") for n in out["notes"]), out
    assert "lies in" in out["inside"] and "src/stockade" in out["inside"], out


@pytest.mark.parametrize("fields", TIERS)
def test_other_venvs_can_be_kept_read_only_with_ro(fields, workspace):
    """Another virtual environment in the workspace is writable (known
    limitation); --ro .venv keeps it read-only."""
    write(workspace / ".venv" / "lib" / "site-packages" / "mod.py", "X = 1\n", 0o644)
    script = "echo x > .venv/lib/site-packages/zz.pth || echo ro; cat .venv/lib/site-packages/mod.py"
    result = manager(fields, read_only=[".venv"]).execute(["sh", "-c", script], cwd=workspace)
    assert result.stdout_text.split() == ["ro", "X", "=", "1"], result.summary()
    assert not (workspace / ".venv" / "lib" / "site-packages" / "zz.pth").exists()


# -- a command or interpreter in a hidden path ----------------------------------------


def _hidden_tool(workspace: Path) -> Path:
    write(workspace / "secrets" / "lib" / "key", "TOPKEY\n", 0o644)
    return write(workspace / "secrets" / "bin" / "tool", "#!/bin/sh\ncat secrets/lib/key\nls secrets\n", 0o755)


@pytest.mark.parametrize("fields", TIERS)
def test_command_in_a_hidden_directory_is_refused(fields, workspace):
    _hidden_tool(workspace)
    write(workspace / "via_shebang", f"#!{workspace}/secrets/bin/tool\n", 0o755)
    mgr = manager(fields, hidden=["secrets"])
    for command in ("./secrets/bin/tool", "./via_shebang"):
        with pytest.raises(CommandError) as info:
            mgr.execute([command], cwd=workspace)
        message = str(info.value)
        assert f"{workspace}/secrets" in message and "hides" in message, message
    # a single program there (no installation) is refused as well
    write(workspace / "secrets" / "alone", "#!/bin/sh\ncat secrets/lib/key\n", 0o755)
    with pytest.raises(CommandError, match="which the policy hides"):
        mgr.execute(["./secrets/alone"], cwd=workspace)


@pytest.mark.parametrize("fields", TIERS)
def test_installation_holding_a_hidden_path_is_refused(fields, workspace, outside):
    write(outside / "inst" / "lib" / "private" / "key", "TOPKEY\n", 0o644)
    write(outside / "inst" / "bin" / "tool", "#!/bin/sh\ncat $0/../../lib/private/key\n", 0o755)
    mgr = manager(fields, hidden=[str(outside / "inst" / "lib" / "private")])
    with pytest.raises(CommandError) as info:
        mgr.execute([str(outside / "inst" / "bin" / "tool")], cwd=workspace)
    assert f"holds {outside}/inst/lib/private" in str(info.value), str(info.value)


@pytest.mark.parametrize("fields", TIERS)
def test_pythonpath_entry_in_a_hidden_path_is_refused(fields, workspace, library):
    with pytest.raises(PolicyError, match="undo the rule hiding"):
        manager(fields, hidden=[str(library)]).execute(
            ["python3", "-c", "import helper_mod"], cwd=workspace, env={"PYTHONPATH": str(library)}
        )


@pytest.mark.parametrize("fields", TIERS)
def test_interpreter_in_a_home_config_directory_is_refused(fields, workspace):
    """~/.config/x/bin/tool: its bin and lib would be shown; ~/.config holds
    tokens and configuration (as ~/.ssh, ~/.aws): refused, as for PYTHONPATH."""
    root = Path.home() / ".config" / f"stockade-test-{uuid.uuid4().hex[:8]}"
    try:
        write(root / "lib" / "token", "TOKEN\n", 0o644)
        write(root / "bin" / "tool", "#!/bin/sh\necho ran\n", 0o755)
        write(workspace / "script", f"#!{root}/bin/tool\n", 0o755)
        for command in ([str(root / "bin" / "tool")], ["./script"]):
            with pytest.raises(CommandError) as info:
                manager(fields).execute(command, cwd=workspace)
            assert f"{Path.home()}/.config" in str(info.value), str(info.value)
            assert "hidden directory of a home" in str(info.value)
        # named as a rule, the rule decides
        result = manager(fields, read_only=[str(root)]).execute(["./script"], cwd=workspace)
        assert result.success and result.stdout_text == "ran\n", result.summary()
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.parametrize("fields", TIERS)
def test_tool_in_home_local_bin_still_runs(fields, workspace):
    root = Path.home() / ".local" / "bin"
    root.mkdir(parents=True, exist_ok=True)
    tool = root / f"stockade-test-{uuid.uuid4().hex[:8]}"
    try:
        write(tool, "#!/bin/sh\necho local-ran\n", 0o755)
        result = manager(fields).execute([str(tool)], cwd=workspace)
        assert result.success and result.stdout_text == "local-ran\n", (result.summary(), result.stderr_text)
    finally:
        tool.unlink(missing_ok=True)


# -- #! lines naming what cannot run --------------------------------------------------


@pytest.mark.parametrize("fields", TIERS)
def test_shebang_interpreters_that_cannot_run_are_command_errors(fields, workspace):
    os.mkfifo(workspace / "fifo")
    write(workspace / "missing", "#!/nonexistent/interp\n", 0o755)
    write(workspace / "fifo_script", f"#!{workspace}/fifo\n", 0o755)
    write(workspace / "rel", "#!relative/x\n", 0o755)
    cases = {"./missing": "not_found", "./fifo_script": "not_executable", "./rel": "not_found",
             "./fifo": "not_executable"}
    mgr = manager(fields)
    for command, reason in cases.items():
        with pytest.raises(CommandError) as info:
            mgr.execute([command], cwd=workspace, timeout=10)
        assert info.value.reason == reason, (command, str(info.value))


@pytest.mark.parametrize("fields", TIERS)
def test_relative_shebang_runs_the_interpreter_in_the_cwd(fields, workspace):
    write(workspace / "relative" / "x", "#!/bin/sh\necho rel-ran \"$1\"\n", 0o755)
    write(workspace / "rel", "#!relative/x\n", 0o755)
    result = manager(fields).execute(["./rel"], cwd=workspace)
    assert result.success and result.stdout_text == f"rel-ran {workspace}/rel\n", result.summary()


@pytest.mark.parametrize("fields", TIERS)
def test_unprivileged_caller_unreadable_interpreter_is_126(fields, workspace):
    if os.geteuid() != 0:
        pytest.skip("needs root to make a path the caller cannot read")
    locked = Path(tempfile.mkdtemp(prefix="stockade-test-locked-", dir="/srv"))
    try:
        os.chmod(locked, 0o700)
        write(locked / "bin" / "python3", "#!/bin/sh\n", 0o755)
        write(workspace / "script", f"#!{locked}/bin/python3\n", 0o755)
        os.chown(workspace, 65534, 65534)
        os.chown(workspace / "script", 65534, 65534)
        proc = run_unprivileged(
            ["-m", "stockade.cli", "run", "--no-log", "--tier", fields["tier"],
             "--allow-degraded", "memory,pids,cpu", "--", "./script"],
            cwd=workspace,
        )
        stderr = proc.stderr.decode()
        assert proc.returncode == 126, stderr
        assert "Traceback" not in stderr and "cannot be read" in stderr, stderr
    finally:
        shutil.rmtree(locked, ignore_errors=True)
