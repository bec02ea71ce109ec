"""Output past the capture cap: end the run (default) or drop the rest and go on.

The second form exists for callers that need the program to finish (corpus
case 028: a capped capture with the truncation reported, the program's own
summary still written).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from stockade import SandboxConfig, SandboxManager, Termination
from stockade.errors import PolicyError

# 256 KiB on stdout, then a line on stderr and a file, both written only if
# the program was not stopped at the cap.
FLOOD = "head -c 262144 /dev/zero; echo finished >&2; echo done > finished.txt"


def _manager(**changes) -> SandboxManager:
    return SandboxManager(
        SandboxConfig(execution_log=False, max_output_bytes=4096, **changes)
    )


def test_default_cap_ends_the_run_with_output_limit(workspace):
    # endless output: only the cap can end it (before the 60 s timeout)
    result = _manager(timeout_sec=60).execute(["yes"], cwd=workspace)
    assert result.termination is Termination.OUTPUT_LIMIT, result.summary()
    assert result.stdout_truncated
    assert result.stdout == b"y\n" * 2048


def test_truncate_keeps_the_first_bytes_and_lets_the_program_finish(workspace):
    result = _manager(output_limit_action="truncate").execute(
        ["sh", "-c", FLOOD], cwd=workspace
    )
    assert result.termination is Termination.EXITED, result.summary()
    assert result.exit_code == 0
    assert result.stdout == b"\0" * 4096
    assert result.stdout_truncated and not result.stderr_truncated
    assert result.stderr == b"finished\n"
    assert (workspace / "finished.txt").read_text() == "done\n"
    assert "output truncated" in result.summary()


async def test_truncate_in_the_async_driver(workspace):
    result = await _manager(output_limit_action="truncate").execute_async(
        ["sh", "-c", FLOOD], cwd=workspace
    )
    assert result.termination is Termination.EXITED, result.summary()
    assert len(result.stdout) == 4096 and result.stdout_truncated
    assert result.stderr == b"finished\n"


def test_unknown_action_is_a_policy_error():
    with pytest.raises(PolicyError) as err:
        SandboxConfig(execution_log=False).with_changes(output_limit_action="ignore")
    assert err.value.key == "output_limit_action"


def test_cli_max_output_and_truncate_output(workspace):
    cmd = [
        sys.executable,
        "-m",
        "stockade.cli",
        "run",
        "--no-log",
        "--json",
        "--max-output",
        "1",
    ]
    flood = "head -c 3145728 /dev/zero; echo finished >&2"
    proc = subprocess.run(
        [*cmd, "--truncate-output", "--", "sh", "-c", flood],
        cwd=workspace,
        capture_output=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["termination"] == "exited"
    assert data["stdout_truncated"] is True and len(data["stdout"]) == 1024 * 1024
    assert data["stderr"] == "finished\n"

    proc = subprocess.run(
        [*cmd, "--timeout", "60", "--", "yes"],
        cwd=workspace,
        capture_output=True,
        timeout=90,
    )
    assert json.loads(proc.stdout)["termination"] == "output_limit"


def test_cli_refuses_a_cap_on_passthrough_output(workspace):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "stockade.cli",
            "run",
            "--no-log",
            "--max-output",
            "1",
            "--",
            "true",
        ],
        cwd=workspace,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "--json" in proc.stderr
