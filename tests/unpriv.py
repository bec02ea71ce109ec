"""Run stockade as an unprivileged caller (uid 65534) from a root test.

/root is 0700, so the venv's interpreter is out of reach for ``nobody``:
the system Python runs with this worktree's ``src`` and the venv's
site-packages on PYTHONPATH (same Python minor). The snippet prints a JSON
line that the test reads back.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

import pytest

NOBODY = 65534
SRC = str(Path(__file__).resolve().parent.parent / "src")
SYSTEM_PYTHON = "/usr/bin/python3"


def available() -> str | None:
    """Why unprivileged runs cannot be tested here, or None."""
    if os.geteuid() != 0:
        return "needs root to switch to uid 65534"
    if not shutil.which("setpriv"):
        return "setpriv (util-linux) is not installed"
    if not os.path.exists(SYSTEM_PYTHON):
        return f"{SYSTEM_PYTHON} is missing"
    probe = subprocess.run(
        [SYSTEM_PYTHON, "-c", "import sys; print(sys.version_info[:2])"],
        capture_output=True,
        text=True,
    )
    if probe.stdout.strip() != str(tuple(sys.version_info[:2])):
        return (
            f"{SYSTEM_PYTHON} is not Python {sys.version_info[0]}.{sys.version_info[1]}"
        )
    return None


skip_unless_available = pytest.mark.skipif(
    available() is not None, reason=str(available())
)


def nobody_workspace() -> Path:
    """A fresh directory under /var/tmp owned by 65534 (its HOME and workspace)."""
    base = Path(tempfile.mkdtemp(prefix="stockade-test-nobody-", dir="/var/tmp"))
    (base / "ws").mkdir()
    for path in (base, base / "ws"):
        os.chown(path, NOBODY, NOBODY)
        os.chmod(path, 0o755)
    return base


def run_as_nobody(code: str, base: Path, timeout: float = 120) -> dict:
    """Run ``code`` as uid 65534 with cwd ``base/ws``; returns its last JSON line."""
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": str(base),
        "PYTHONPATH": os.pathsep.join([SRC, sysconfig.get_paths()["purelib"]]),
        "LC_ALL": "C.UTF-8",
    }
    proc = subprocess.run(
        [
            "setpriv",
            f"--reuid={NOBODY}",
            f"--regid={NOBODY}",
            "--clear-groups",
            SYSTEM_PYTHON,
            "-c",
            code,
        ],
        cwd=base / "ws",
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert proc.returncode == 0 and lines, (
        f"rc={proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    )
    return json.loads(lines[-1])
