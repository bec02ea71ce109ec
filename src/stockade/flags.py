"""Feature-flag integration kept from the original request."""

from __future__ import annotations

import os
from pathlib import Path

from .config import _read_mapping, config_from_feature_flags
from .manager import SandboxManager

DEFAULT_FLAGS_PATH = Path("config/feature_flags.yaml")


def create_sandbox_from_feature_flags(path: str | os.PathLike[str] | None = None) -> SandboxManager:
    """A SandboxManager configured from the host application's flag file.

    Args:
        path: the YAML file; ``config/feature_flags.yaml`` under the current
            directory when omitted.

    Raises:
        PolicyError: the file is missing, unreadable or invalid. A missing
            ``security`` section means the defaults (moderate mode).
    """
    file = Path(path) if path is not None else DEFAULT_FLAGS_PATH
    data = _read_mapping(file)
    if "security" not in data:
        data = {"security": {}}
    return SandboxManager(config_from_feature_flags(data, source=str(file)))
