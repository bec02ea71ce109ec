"""Helpers for the file-system policy tests: both tiers, a probe payload."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from stockade import SandboxConfig, SandboxManager
from stockade.linux import probe as _probe
from stockade.linux.landlock import abi_version

HERE = Path(__file__).resolve().parent
NOBODY = 65534
# The system interpreter: the venv's lives under /root, out of the sandbox
# uid's reach.
PY = "/usr/bin/python3"
PROBE_NAME = ".fs_probe.py"

ABI, _WHY = abi_version()
_HOST = _probe.probe_host(None, NOBODY if os.geteuid() == 0 else None)
SECOND_TIER: dict[str, Any] = {"tier": "landlock"}

needs_second_tier = pytest.mark.skipif(
    ABI < 6, reason=f"needs Landlock ABI 6+ (have {ABI}: {_WHY})"
)
TIERS = [
    pytest.param(
        {"tier": "namespaces"},
        id="namespaces",
        marks=pytest.mark.skipif(
            not _HOST.namespaces_work,
            reason=f"no namespaces here: {_HOST.userns.error}",
        ),
    ),
    pytest.param(
        SECOND_TIER,
        id="landlock",
        marks=pytest.mark.skipif(
            ABI < 6, reason=f"needs Landlock ABI 6+ (have {ABI}: {_WHY})"
        ),
    ),
]


def is_second(fields: dict[str, Any]) -> bool:
    return fields.get("tier") == "landlock"


def manager(fields: dict[str, Any], **more: Any) -> SandboxManager:
    data = dict(fields)
    for key, value in more.items():
        if key == "allow_degraded":
            value = [*data.get("allow_degraded", []), *value]
        data[key] = value
    return SandboxManager(SandboxConfig(execution_log=False, **data))


def probe(
    mgr: SandboxManager,
    workspace: Path,
    ops: list[list[str]],
    *,
    cwd: Path | None = None,
):
    """Run the probe payload in the sandbox; returns (answers, result)."""
    shutil.copy(HERE / "fs_probe.py", workspace / PROBE_NAME)
    result = mgr.execute(
        [PY, str(workspace / PROBE_NAME), json.dumps(ops)], cwd=cwd or workspace
    )
    lines = [
        line for line in result.stdout.decode().splitlines() if line.startswith("{")
    ]
    assert result.exit_code == 0 and lines, (
        f"{result.termination} {result.error}\n"
        f"{result.stdout.decode()}\n{result.stderr.decode()}"
    )
    return json.loads(lines[-1]), result


def write(path: Path, text: str, mode: int = 0o666) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    os.chmod(path, mode)
    return path


def git(cwd: Path, *args: str, home: Path | None = None) -> str:
    import subprocess

    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(home or cwd),
        "GIT_CONFIG_NOSYSTEM": "1",
    }
    env.update(
        GIT_AUTHOR_NAME="Host",
        GIT_AUTHOR_EMAIL="host@example.org",
        GIT_COMMITTER_NAME="Host",
        GIT_COMMITTER_EMAIL="host@example.org",
    )
    proc = subprocess.run(
        ["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout
