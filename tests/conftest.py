"""Shared fixtures: a workspace directory and a manager on the real kernel."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from stockade import SandboxConfig, SandboxManager


@pytest.fixture
def workspace() -> Iterator[Path]:
    """A fresh directory to serve as the run's writable workspace.

    Made under /var/tmp rather than pytest's tmp_path (also under /tmp) so
    that the host's /tmp stays distinguishable from the sandbox's private one.
    """
    path = Path(tempfile.mkdtemp(prefix="stockade-test-ws-", dir="/var/tmp"))
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def manager() -> SandboxManager:
    return SandboxManager(SandboxConfig(execution_log=False))


# -- running stockade as an unprivileged caller -----------------------------

NOBODY = 65534


@pytest.fixture
def nobody_workspace() -> Iterator[Path]:
    """A workspace owned by uid 65534, for runs by an unprivileged caller."""
    path = Path(tempfile.mkdtemp(prefix="stockade-test-nobody-ws-", dir="/var/tmp"))
    os.chown(path, NOBODY, NOBODY)
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def nobody_python():
    """Run a Python snippet as uid 65534 with stockade importable.

    The venv's interpreter lives under /root (0700 on the CI machine), so the
    system python3 runs it, with this checkout's src and the venv's
    site-packages on PYTHONPATH (same Python minor version).
    """
    import subprocess
    import sys
    import sysconfig

    if os.geteuid() != 0:
        pytest.skip("needs root to switch to uid 65534")
    system_python = "/usr/bin/python3"
    version = subprocess.run(
        [system_python, "-c", "import sys; print(sys.version_info[:2])"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    same_minor = version == str(sys.version_info[:2])
    if not same_minor:
        pytest.skip("/usr/bin/python3 is not the venv's Python version")
    src = str(Path(__file__).resolve().parent.parent / "src")
    site = sysconfig.get_paths()["purelib"]

    def run(code: str, *args: str, cwd: str | os.PathLike[str], timeout: float = 120):
        return subprocess.run(
            ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
             system_python, "-c", code, *args],
            cwd=cwd,
            env={
                "PATH": "/usr/bin:/bin",
                "PYTHONPATH": f"{src}:{site}",
                "LANG": "C.UTF-8",
            },
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    return run
