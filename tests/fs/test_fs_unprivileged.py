"""The path rules when stockade itself runs as an unprivileged user, through
the CLI options (``--ro``, ``--rw``, ``--hide``, ``--preset``, ``--protect``,
``--no-protect``), on both tiers."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from _unpriv import give_to_unprivileged, run_unprivileged
from fsutil import TIERS, is_second, write

from stockade.cli import _parser, _path_changes
from stockade.config import SandboxConfig


def _tier_options(fields: dict) -> list[str]:
    # uid 65534 has no usable cgroup on a cgroup v1 host: rlimits stand in (#4)
    out = ["--tier", fields["tier"], "--allow-degraded", "memory,pids,cpu"]
    for name in fields.get("allow_degraded", []):
        out += ["--allow-degraded", name]
    return out


@pytest.mark.parametrize("fields", TIERS)
def test_unprivileged_caller_hidden_read_only_and_protected(fields, workspace, outside):
    subprocess.run(["git", "init", "-q", str(workspace)], check=True)
    write(workspace / "ok.txt", "ok\n")
    write(workspace / "secrets" / "a.env", "TOKEN\n")
    write(workspace / "private" / "p.txt", "p\n")
    write(outside / "ro.txt", "ro\n")
    give_to_unprivileged(workspace)
    give_to_unprivileged(outside)
    script = (
        "cat ok.txt; cat secrets/a.env || echo hidden-file; "
        "cat private/p.txt || echo hidden-dir; "
        "echo x > private/new || echo no-write; "
        f"cat {outside}/ro.txt; echo x >> {outside}/ro.txt || echo ro; "
        "echo x > .git/hooks/pre-commit || echo hooks-protected; "
        "ln .git/config sub-link 2>/dev/null || echo no-link"
    )
    proc = run_unprivileged(
        [
            "-m",
            "stockade.cli",
            "run",
            "--no-log",
            "--json",
            *_tier_options(fields),
            "--hide",
            "secrets/a.env",
            "--hide",
            "private",
            "--ro",
            str(outside),
            "--",
            "sh",
            "-c",
            script,
        ],
        cwd=workspace,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    result = json.loads(proc.stdout)
    out = result["stdout"].split()
    assert out[:3] == ["ok", "hidden-file", "hidden-dir"], result
    assert {"no-write", "ro", "hooks-protected", "no-link"} <= set(out)
    assert "TOKEN" not in result["stdout"]
    assert sorted(os.listdir(workspace / "private")) == ["p.txt"]
    assert (outside / "ro.txt").read_text() == "ro\n"
    assert not (workspace / ".git" / "hooks" / "pre-commit").exists()
    assert result["tier"] == ("landlock" if is_second(fields) else "namespaces")
    assert "fs_policy_ms" in result["timings_ms"]


def test_cli_path_options_extend_the_policy():
    parser = _parser()
    args = parser.parse_args(
        [
            "run",
            "--ro",
            "a",
            "--ro",
            "b",
            "--rw",
            "~/c",
            "--hide",
            "d",
            "--preset",
            "git",
            "--preset",
            "python",
            "--protect",
            "Makefile",
            "--",
            "true",
        ]
    )
    config = SandboxConfig(read_only=("base",), presets=("node",))
    changes = _path_changes(args, config)
    assert changes["read_only"] == ("base", "a", "b")
    assert changes["writable"] == ("~/c",)
    assert changes["hidden"] == ("d",)
    assert changes["presets"] == ("node", "git", "python")
    assert changes["protected"][-1] == "Makefile"
    assert changes["protected"][0] == ".git/hooks"
    args = parser.parse_args(["run", "--no-protect", "--", "true"])
    assert _path_changes(args, config) == {"protected": ()}
    with pytest.raises(SystemExit):
        parser.parse_args(["run", "--preset", "ruby", "--", "true"])


def test_unprivileged_caller_run_ends_when_the_host_renames_a_hidden_file(workspace):
    """The watch needs no privilege: an unprivileged caller's first-tier run
    ends too when a hidden file is renamed over on the host."""
    import time

    from _unpriv import unprivileged_env, unprivileged_python

    env = write(workspace / ".env", "OLD\n")
    (workspace / "run").mkdir()
    give_to_unprivileged(workspace)
    script = "touch run/ready; sleep 10; cat .env"
    proc = subprocess.Popen(
        [
            *unprivileged_python(),
            "-m",
            "stockade.cli",
            "run",
            "--no-log",
            "--json",
            *_tier_options({"tier": "namespaces"}),
            "--hide",
            ".env",
            "--",
            "sh",
            "-c",
            script,
        ],
        cwd=workspace,
        env=unprivileged_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    while not (workspace / "run" / "ready").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    write(workspace / ".env.new", "NEW\n")
    os.rename(workspace / ".env.new", env)
    out, err = proc.communicate(timeout=60)
    result = json.loads(out)
    assert result["termination"] == "sandbox_error", err.decode()
    assert "NEW" not in result["stdout"]
    assert any(
        v["what"] == f"{env}: hidden; renamed over on the host"
        for v in result["violations"]
    )


@pytest.mark.parametrize("fields", TIERS)
def test_unprivileged_caller_read_only_file_keeps_its_mode(fields, workspace, outside):
    """An unprivileged caller's files are the run's own: on the second tier
    chmod succeeds and is put back after the run; on the first it fails."""
    ro = write(outside / "ro.txt", "ro\n", 0o644)
    give_to_unprivileged(workspace)
    give_to_unprivileged(outside)
    proc = run_unprivileged(
        [
            "-m",
            "stockade.cli",
            "run",
            "--no-log",
            "--json",
            *_tier_options(fields),
            "--ro",
            str(ro),
            "--",
            "sh",
            "-c",
            f"chmod 666 {ro} && echo changed || echo refused",
        ],
        cwd=workspace,
    )
    result = json.loads(proc.stdout)
    assert os.stat(ro).st_mode & 0o777 == 0o644
    whats = [v["what"] for v in result["violations"] if v["mechanism"] == "filesystem"]
    if is_second(fields):
        assert result["stdout"].strip() == "changed"
        assert whats == [f"{ro}: mode 0644 -> 0666 changed during the run"]
    else:
        assert result["stdout"].strip() == "refused"
        assert whats == []
