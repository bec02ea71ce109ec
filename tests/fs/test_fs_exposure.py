"""Paths a run shows besides its rules: PYTHONPATH entries and a command's
installation are checked like rules (and more). Both tiers, the real
sandbox."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from _unpriv import run_unprivileged
from fsutil import TIERS, manager, write

from stockade.errors import CommandError, PolicyError

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
