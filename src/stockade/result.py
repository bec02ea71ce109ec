"""What a run returns: SandboxResult and its parts."""

from __future__ import annotations

import base64
import enum
import json
import math
import signal as _signal
from dataclasses import asdict, dataclass, field
from typing import Any

from ._text import printable

# characters of the summary line that summary() keeps
SUMMARY_CHARS = 16384


class Termination(str, enum.Enum):
    """Why a run ended. Exactly one per run.

    Limits come before ``signaled``: a process killed by SIGXCPU after its
    RLIMIT_CPU ran out is ``cpu_limit``, not merely ``signaled``, but only
    with evidence that the limit acted (the run's CPU usage reached
    ``cpu_time_sec``; the supervisor's kill for ``syscall_denied``): the
    sandbox reports "killed by signal N" and "exited 128+N" alike, so a
    status alone blames no limit. They also
    come before ``exited``: a run in which the OOM killer acted or a fork was
    refused at the process cap is ``memory_limit`` / ``pids_limit`` even if
    its main process then exited by itself (``exit_code`` keeps its status);
    so is ``disk_limit`` for a run whose private tmpfs area was full at its
    end or whose workspace was past its budget.
    """

    EXITED = "exited"                    # the program exited by itself
    SIGNALED = "signaled"                # killed by a signal we did not send for a limit
    TIMEOUT = "timeout"                  # wall-clock limit; whole tree killed
    CPU_LIMIT = "cpu_limit"              # CPU time of the tree (or RLIMIT_CPU)
    MEMORY_LIMIT = "memory_limit"        # the OOM killer acted in the run's cgroup
    FILE_SIZE_LIMIT = "file_size_limit"  # RLIMIT_FSIZE (SIGXFSZ, when the policy sets a size)
    PIDS_LIMIT = "pids_limit"            # a fork or thread was refused at the cap
    DISK_LIMIT = "disk_limit"            # the workspace's budget ran out, or a private tmpfs was full
    SYSCALL_DENIED = "syscall_denied"    # killed by the syscall filter's supervisor
    OUTPUT_LIMIT = "output_limit"        # captured output past max_output_bytes
    CANCELLED = "cancelled"              # the caller cancelled the run
    SANDBOX_ERROR = "sandbox_error"      # the sandbox could not be set up, or kept


# A note naming a PYTHONPATH entry made visible read-only; the summary line
# lists these entries too (a host path shown because of a variable).
PYTHONPATH_NOTE = "PYTHONPATH: "

@dataclass(frozen=True)
class Usage:
    """Resources used by the program's own process tree.

    ``source`` says where the figures come from. With a cgroup (the normal
    case) they cover every process and thread of the tree, including those
    still running when the run ended, e.g. ``"cgroup v1 (memory, pids,
    cpuacct)"``: CPU user and system seconds of the tree, its peak memory
    (anonymous memory, page cache, tmpfs and kernel memory charged to it) and
    the most tasks it had at once. Without one, ``"rusage of reaped
    processes"``: CPU of the processes that were reaped, the largest single
    process's RSS as the peak, and no process count.

    ``peak_processes`` counts processes and threads; None when unknown.
    """

    cpu_user_sec: float = 0.0
    cpu_system_sec: float = 0.0
    peak_memory_mb: float = 0.0
    peak_processes: int | None = None
    source: str = ""

    @property
    def cpu_total_sec(self) -> float:
        return self.cpu_user_sec + self.cpu_system_sec


@dataclass(frozen=True)
class Violation:
    """Something the policy denied, with how often it happened."""

    mechanism: str          # "seccomp", "landlock", "network", ...
    what: str               # e.g. the syscall name
    action: str             # "errno:EPERM", "kill", ...
    count: int = 1
    detail: str = ""        # e.g. the arguments that made it denied: "AF_INET x2"


@dataclass(frozen=True)
class Connection:
    """One destination the program asked the network proxy for (mode allow).

    ``decision`` is "allowed" or "denied" by the policy; ``rule`` is the
    allow entry that matched, or the rule that refused ("default-deny",
    "non-public-address", ...) with ``reason`` saying why. ``error`` is set
    when an allowed connection still failed (name not resolved, refused).
    Bytes are counted from the program's side: ``bytes_sent`` went to the
    destination, ``bytes_received`` came back (HTTP heads included).
    """

    host: str
    port: int
    protocol: str           # "http" (forwarded request), "connect", "socks5"
    decision: str           # "allowed" or "denied"
    rule: str
    reason: str = ""
    address: str | None = None
    bytes_sent: int = 0
    bytes_received: int = 0
    error: str | None = None

    @property
    def allowed(self) -> bool:
        return self.decision == "allowed"


@dataclass(frozen=True)
class Protection:
    """One protection of the policy and whether it was in force for the run."""

    name: str
    status: str             # "enforced", "degraded", "unavailable" (the host lacks it), "off"
    detail: str = ""
    required: bool = True   # the policy asks for it (False: e.g. Landlock in the namespace tier)


@dataclass(frozen=True)
class SandboxResult:
    """The outcome of one run.

    ``success`` is true when the program exited by itself with status 0.
    ``exit_code`` is the program's exit status when it exited, else None;
    ``signal`` is the number of the signal that ended it, else None.
    ``tier`` is how the sandbox was built: ``namespaces`` (bubblewrap),
    ``landlock`` (the second tier, for hosts without user namespaces) or
    ``none`` (mode disabled); ``protections`` says what was in force.
    ``pooled`` is true when the run used a sandbox prepared ahead of time
    (``SandboxManager(prewarm=N)``).
    """

    run_id: str
    command: list[str]
    termination: Termination
    exit_code: int | None
    signal: int | None
    stdout: bytes
    stderr: bytes
    wall_time_sec: float
    usage: Usage
    mode: str
    limits: dict[str, Any]
    protections: list[Protection]
    violations: list[Violation] = field(default_factory=list)
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    error: str | None = None
    notes: list[str] = field(default_factory=list)
    timings_ms: dict[str, float] = field(default_factory=dict)
    connections: list[Connection] = field(default_factory=list)
    tier: str = "none"
    pooled: bool = False

    @property
    def success(self) -> bool:
        return self.termination is Termination.EXITED and self.exit_code == 0

    @property
    def timed_out(self) -> bool:
        return self.termination is Termination.TIMEOUT

    @property
    def stdout_text(self) -> str:
        return self.stdout.decode("utf-8", errors="replace")

    @property
    def stderr_text(self) -> str:
        return self.stderr.decode("utf-8", errors="replace")

    @property
    def signal_name(self) -> str | None:
        if self.signal is None:
            return None
        try:
            return _signal.Signals(self.signal).name
        except ValueError:
            return f"SIG{self.signal}"

    def to_dict(self, *, include_output: bool = True) -> dict[str, Any]:
        """A JSON-ready mapping. Output is decoded as UTF-8 with replacement.

        Strict JSON: a float that is not finite (none is expected, limits are
        validated finite) becomes None rather than NaN or Infinity.
        """
        data = asdict(self)
        data["termination"] = self.termination.value
        data["success"] = self.success
        data["signal_name"] = self.signal_name
        data["usage"]["cpu_total_sec"] = self.usage.cpu_total_sec
        if include_output:
            data["stdout"] = self.stdout_text
            data["stderr"] = self.stderr_text
            # text replaces what is not UTF-8; keep such output exactly too
            for name, raw in (("stdout", self.stdout), ("stderr", self.stderr)):
                try:
                    raw.decode("utf-8")
                except UnicodeDecodeError:
                    data[f"{name}_base64"] = base64.b64encode(raw).decode("ascii")
        else:
            del data["stdout"], data["stderr"]
        return json_safe(data)

    def to_json(self, *, include_output: bool = True, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(include_output=include_output), indent=indent, allow_nan=False)

    def summary(self) -> str:
        """One line for humans: how it ended, wall time, CPU, memory, denials."""
        if self.termination is Termination.EXITED:
            how = f"exited {self.exit_code}"
        elif self.termination is Termination.SIGNALED:
            how = f"killed by {self.signal_name}"
        else:
            how = self.termination.value
            if self.signal is not None:
                how += f" ({self.signal_name})"
        parts = [
            how,
            f"wall {self.wall_time_sec:.2f}s",
            f"cpu {self.usage.cpu_total_sec:.2f}s",
            f"peak mem {self.usage.peak_memory_mb:.0f} MiB",
            f"mode {self.mode}",
            f"tier {self.tier}",
        ]
        if self.connections:
            refused = sum(1 for c in self.connections if not c.allowed)
            count = len(self.connections)
            noun = "connection" if count == 1 else "connections"
            parts.append(f"network {count} {noun}, {refused} denied")
        shown = [n[len(PYTHONPATH_NOTE):] for n in self.notes if n.startswith(PYTHONPATH_NOTE)]
        if shown:
            parts.append(PYTHONPATH_NOTE + ", ".join(shown))
        if self.violations:
            denied = ", ".join(f"{v.what} x{v.count}" for v in self.violations)
            parts.append(f"denied: {denied}")
        weaker = [
            f"{p.name} ({p.status})"
            for p in self.protections
            if p.status != "enforced" and p.required
        ]
        if weaker and self.tier != "none":
            parts.append("not fully in force: " + ", ".join(weaker))
        if self.stdout_truncated or self.stderr_truncated:
            parts.append("output truncated")
        if self.error:
            parts.append(f"error: {self.error}")
        # the program chooses paths (so the names in violations) and text an
        # error quotes: the line is escaped, so that no control character
        # reaches the caller's terminal
        return "stockade: " + printable("; ".join(parts), limit=SUMMARY_CHARS)


def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None, so that
    ``json.dumps`` writes standard JSON (it would write NaN and Infinity,
    which JSON parsers in other languages refuse)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    return value
