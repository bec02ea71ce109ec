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
