"""stockade: run commands nobody has reviewed in a Linux sandbox.

Public API::

    from stockade import SandboxManager, SandboxConfig, SandboxMode
    result = SandboxManager(SandboxConfig(mode="moderate")).execute(["python3", "job.py"], cwd="work")
    print(result.termination, result.exit_code, result.usage)

Names are imported lazily so that ``import stockade`` (and the launcher,
which lives in this package) stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "CommandError",
    "PolicyError",
    "Protection",
    "SandboxConfig",
    "SandboxManager",
    "SandboxMode",
    "SandboxResult",
    "SandboxUnavailableError",
    "StockadeError",
    "SyscallFilter",
    "Termination",
    "Usage",
    "Violation",
    "create_sandbox_from_feature_flags",
    "__version__",
]

_WHERE = {
    "SandboxConfig": "config",
    "SandboxMode": "config",
    "SandboxManager": "manager",
    "SandboxResult": "result",
    "Termination": "result",
    "Usage": "result",
    "Violation": "result",
    "Protection": "result",
    "StockadeError": "errors",
    "PolicyError": "errors",
    "CommandError": "errors",
    "SandboxUnavailableError": "errors",
    "create_sandbox_from_feature_flags": "flags",
    "SyscallFilter": "linux.seccomp",
}

if TYPE_CHECKING:
    from .config import SandboxConfig, SandboxMode
    from .errors import CommandError, PolicyError, SandboxUnavailableError, StockadeError
    from .flags import create_sandbox_from_feature_flags
    from .linux.seccomp import SyscallFilter
    from .manager import SandboxManager
    from .result import Protection, SandboxResult, Termination, Usage, Violation


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'stockade' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
