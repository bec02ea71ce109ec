"""The execution log: one JSON line per run.

Default location: ``$XDG_STATE_HOME/stockade/runs.jsonl`` (``XDG_STATE_HOME``
defaults to ``~/.local/state``). Each line holds the run id, time, command,
cwd, mode, limits, termination, exit status, usage, duration, the
violations and the network connections (host, port, decision, bytes); never the program's output or its environment values.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from .result import json_safe

if TYPE_CHECKING:
    from .result import SandboxResult

log = logging.getLogger(__name__)


def default_log_path() -> Path:
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(state) / "stockade" / "runs.jsonl"


def resolve_log_path(setting: Path | bool | None) -> Path | None:
    if setting is True:
        return default_log_path()
    if setting in (False, None):
        return None
    assert isinstance(setting, Path)
    return setting


class ExecutionLog:
    """Appends run records; thread-safe; a failure to write is logged once."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._warned = False

    def record(self, result: SandboxResult, *, cwd: str) -> None:
        entry = {
            "run_id": result.run_id,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": result.command,
            "cwd": cwd,
            "mode": result.mode,
            "tier": result.tier,
            "limits": result.limits,
            "termination": result.termination.value,
            "exit_code": result.exit_code,
            "signal": result.signal,
            "wall_time_sec": round(result.wall_time_sec, 4),
            "usage": {
                "cpu_user_sec": round(result.usage.cpu_user_sec, 4),
                "cpu_system_sec": round(result.usage.cpu_system_sec, 4),
                "peak_memory_mb": round(result.usage.peak_memory_mb, 2),
                "source": result.usage.source,
            },
            "violations": [
                {
                    "mechanism": v.mechanism,
                    "what": v.what,
                    "action": v.action,
                    "count": v.count,
                    "detail": v.detail,
                }
                for v in result.violations
            ],
            "protections": {p.name: p.status for p in result.protections},
            "connections": [
                {
                    "host": c.host,
                    "port": c.port,
                    "decision": c.decision,
                    "rule": c.rule,
                    "bytes_sent": c.bytes_sent,
                    "bytes_received": c.bytes_received,
                }
                for c in result.connections
            ],
            "error": result.error,
        }
        line = json.dumps(json_safe(entry), allow_nan=False) + "\n"
        with self._lock:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with open(self.path, "a", encoding="utf-8") as fh:
                    fh.write(line)
            except OSError as err:
                if not self._warned:
                    self._warned = True
                    log.warning("cannot write the execution log %s: %s", self.path, err)
