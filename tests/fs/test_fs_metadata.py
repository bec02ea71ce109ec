"""Mode, owner, times and extended attributes of the paths a policy names.

The attack (issue 6): Landlock has no right for chmod, chown, utime or
xattrs, so on the second tier a program that owns a protected, read-only or
hidden file (a root caller's workspace is idmapped to the sandbox uid)
could ``chmod +x .git/hooks/pre-commit`` (a disabled hook that host git then
runs) or change a read-only file's mode and times on the host. The first
tier's read-only mounts refuse these calls (EROFS); the second records the
entries before the run and puts them back after it.
"""

from __future__ import annotations

import os
import threading
import time

import pytest
from fsutil import (
    SECOND_TIER,
    TIERS,
    git,
    is_second,
    manager,
    needs_second_tier,
    probe,
    write,
)

HOOK = "#!/bin/sh\ntouch hook-ran\n"


def _state(path):
    st = os.lstat(path)
    return (st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns)


def _fs(result):
    return {v.what: v.action for v in result.violations if v.mechanism == "filesystem"}


@pytest.mark.parametrize("fields", TIERS)
def test_a_disabled_hook_made_executable_does_not_stay(fields, workspace):
    git(workspace, "init", "-q")
    hook = write(workspace / ".git" / "hooks" / "pre-commit", HOOK, 0o644)
    answers, result = probe(
        manager(fields), workspace, [["chmod", "chmod", str(hook), "755"]]
    )
    if is_second(fields):
        # Landlock lets the call through: the guard moves the hook aside
        assert answers["chmod"] == "ok"
        (what, action), = _fs(result).items()
        assert what == f"{hook}: hook made executable (mode 0644 -> 0755 changed during the run)"
        assert action.startswith("moved to pre-commit.stockade-quarantine-")
        assert not hook.exists()
        row = next(p for p in result.protections if p.name == "protected_paths")
        assert "made executable is moved aside" in row.detail
    else:
        assert answers["chmod"] == "EROFS"
        assert not _fs(result)
        assert os.stat(hook).st_mode & 0o777 == 0o644
    git(workspace, "commit", "-q", "--allow-empty", "-m", "host")
    assert not (workspace / "hook-ran").exists()


@pytest.mark.parametrize("fields", TIERS)
def test_read_only_and_hidden_entries_keep_mode_times_and_xattrs(fields, workspace):
    ro = write(workspace / "ro.txt", "ro\n", 0o644)
    secret = write(workspace / "secret.txt", "s\n", 0o600)
    data = workspace / "data"
    write(data / "d.txt", "d\n")
    os.chmod(data, 0o755)
    before = {p: _state(p) for p in (ro, secret, data)}
    answers, result = probe(
        manager(fields, read_only=["ro.txt", "data"], hidden=["secret.txt"]),
        workspace,
        [
            ["chmod_ro", "chmod", str(ro), "666"],
            ["utime_ro", "utime", str(ro), "1000000"],
            ["xattr_ro", "setxattr", str(ro), "user.planted", "1"],
            ["chmod_hidden", "chmod", str(secret), "644"],
            ["utime_hidden", "utime", str(secret), "1000000"],
            ["chmod_dir", "chmod", str(data), "777"],
        ],
    )
    assert {p: _state(p) for p in before} == before
    assert os.listxattr(ro) == []
    if is_second(fields):
        assert set(answers.values()) == {"ok"}, answers
        found = _fs(result)
        assert found == {
            f"{ro}: mode 0644 -> 0666, modification time, extended attributes "
            "changed during the run": "restored",
            f"{secret}: mode 0600 -> 0644, modification time changed during the run": (
                "restored"
            ),
            f"{data}: mode 0755 -> 0777 changed during the run": "restored",
        }
        row = next(p for p in result.protections if p.name == "path_rules")
        assert "put back after it" in row.detail
    else:
        assert set(answers.values()) == {"EROFS"}, answers
        assert not _fs(result)


@needs_second_tier
def test_a_host_write_during_the_run_is_not_undone(workspace):
    """Only what the run could have done is put back: a read-only file the
    host rewrites meanwhile (new size) keeps the host's times."""
    ro = write(workspace / "ro.txt", "ro\n", 0o644)
    (workspace / "run").mkdir()
    os.chmod(workspace / "run", 0o777)
    mgr = manager(SECOND_TIER, read_only=["ro.txt"])
    out = {}
    script = "touch run/ready; sleep 2"
    thread = threading.Thread(
        target=lambda: out.setdefault(
            "r", mgr.execute(["sh", "-c", script], cwd=workspace)
        )
    )
    thread.start()
    deadline = time.monotonic() + 20
    while not (workspace / "run" / "ready").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    with open(ro, "a") as fh:
        fh.write("host\n")
    after_write = os.stat(ro).st_mtime_ns
    thread.join(30)
    assert out["r"].exit_code == 0
    assert not _fs(out["r"])
    assert ro.read_text() == "ro\nhost\n" and os.stat(ro).st_mtime_ns == after_write
