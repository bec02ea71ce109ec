"""Run stockade as an unprivileged caller (uid 65534) from a root test run.

Tests as root can hide bugs, so the suite also calls stockade as ``nobody``
through ``setpriv``. The virtual environment's interpreter may live under
``/root`` (0700), so the caller runs a system Python of the same minor
version with the package and the venv's site-packages on PYTHONPATH.
"""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

UNPRIV_UID = 65534
SRC = Path(__file__).resolve().parent.parent / "src"


def _system_python() -> str | None:
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for candidate in (f"/usr/bin/{version}", f"/usr/local/bin/{version}"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def unprivileged_python() -> list[str]:
    """argv prefix running a Python as uid 65534, or skip the test."""
    if os.geteuid() != 0:
        return [sys.executable]
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv (util-linux) is needed to run stockade as an unprivileged caller")
    python = _system_python()
    if python is None:
        pytest.skip(f"no system python{sys.version_info.major}.{sys.version_info.minor} that uid 65534 can run")
    return [setpriv, f"--reuid={UNPRIV_UID}", f"--regid={UNPRIV_UID}", "--clear-groups", python]


def unprivileged_env() -> dict[str, str]:
    paths = [str(SRC), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"], *site.getsitepackages()]
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "PYTHONPATH": os.pathsep.join(dict.fromkeys(paths)),
        "HOME": "/nonexistent",
        "LANG": "C.UTF-8",
    }


def run_unprivileged(args: list[str], *, cwd: str | os.PathLike[str], timeout: float = 120,
                     stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run ``python <args>`` as uid 65534 (or as the current user if not root)."""
    return subprocess.run(
        [*unprivileged_python(), *args],
        cwd=cwd,
        env=unprivileged_env(),
        input=stdin,
        capture_output=True,
        timeout=timeout,
    )


def give_to_unprivileged(path: Path) -> None:
    if os.geteuid() == 0:
        for root, dirs, files in os.walk(path):
            for name in (root, *(os.path.join(root, n) for n in dirs + files)):
                os.chown(name, UNPRIV_UID, UNPRIV_UID)


def run_code_as_nobody(code: str, *, cwd: Path, timeout: float = 120) -> dict:
    """Run Python ``code`` as uid 65534 in ``cwd``; returns its last JSON line."""
    import json

    proc = run_unprivileged(["-c", code], cwd=cwd, timeout=timeout)
    lines = [line for line in proc.stdout.decode().splitlines() if line.startswith("{")]
    assert proc.returncode == 0 and lines, (
        f"rc={proc.returncode}\n{proc.stdout.decode()}\n{proc.stderr.decode()}"
    )
    return json.loads(lines[-1])
