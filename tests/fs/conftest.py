"""Fixtures for the file-system policy tests."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def outside() -> Iterator[Path]:
    """A directory outside the workspace, writable by the sandbox uid by
    file permissions alone (only the sandbox stands in the way)."""
    path = Path(tempfile.mkdtemp(prefix="stockade-test-fs-out-", dir="/var/tmp"))
    os.chmod(path, 0o777)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
