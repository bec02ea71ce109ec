"""The policy: SandboxConfig, SandboxMode, and loading it from files.

A policy is everything one run is allowed: the mode, the limits, the
workspace and path rules, the environment and the network. ``SandboxConfig``
is its public name (kept from the original request). It is immutable and
validated: unknown keys, wrong types, zero or negative limits and unknown
modes raise ``PolicyError`` naming the key and the value, before anything
runs.
"""

from __future__ import annotations

import enum
import math
import os
import re
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)

from ._text import quoted
from .errors import PolicyError
from .fs.presets import PRESETS
from .network.policy import NetworkPolicy

MIB = 1024 * 1024

# Upper bounds of the limits. A value past one is refused when the policy is
# made, naming the bound, instead of overflowing a kernel interface at launch
# (an rlimit, a tmpfs size, a cgroup file, the launcher's poll timeout).
# None still means "not limited by stockade" wherever a limit is optional.
MAX_TIMEOUT_SEC = 7 * 24 * 3600      # epoll takes whole ms in an int (24.8 days); a week
MAX_CPU_TIME_SEC = 30 * 24 * 3600    # CPU-seconds of the tree, all cores together
MAX_CPU_CORES = 1024
MAX_SIZE_MB = 1 << 24                # 16 TiB: memory, disk, file size; bytes fit a C long
PID_MAX_LIMIT = 1 << 22              # the kernel's most pids (pids.max refuses more)
MAX_PROCESSES = PID_MAX_LIMIT - 2    # bubblewrap's monitor and pid 1 are counted in too
MAX_OPEN_FILES = 1 << 30             # fs.nr_open's own ceiling is 2**31 - 64; the host's
                                     # nr_open and hard limit are checked before each run
# The sandbox's own set-up runs under the run's RLIMIT_NOFILE: bubblewrap
# needs 12 descriptors to start `python3 -c` (11 without the network
# namespace's pieces), the second tier's monitor 7, mode disabled 5; fewer
# fails with EMFILE before the program runs. 32 keeps a margin for other
# bubblewrap versions and for the program's own stdin, stdout and stderr.
MIN_OPEN_FILES = 32
MAX_OUTPUT_BYTES = 1 << 30           # per stream, held in the caller's memory
MAX_ID = 2**32 - 2                   # uid_t/gid_t; 2**32 - 1 is (uid_t) -1, "no id"

# Protections a policy may accept as degraded or missing (``allow_degraded``).
# ``stockade doctor`` shows a row for each but ``protected_paths``, which
# depends on the run's paths (its row is in each run's result, fs/run.py).
DEGRADABLE_PROTECTIONS = (
    "namespaces",
    "mount_view",
    "syscall_filter",
    "network",
    "process_isolation",
    "tree_kill",
    "memory",
    "pids",
    "cpu",
    "protected_paths",
)


# Paths kept read-only inside each writable place (``protected``): git runs
# hooks and config-named commands on the host later; a stockade policy kept
# in the workspace would loosen the next run.
DEFAULT_PROTECTED = (
    ".git/hooks",
    ".git/config",
    ".git/config.worktree",
    ".git/commondir",
    ".stockade.toml",
    ".stockade.yaml",
    ".stockade.yml",
)


class SandboxMode(str, enum.Enum):
    """How tight the syscall filter and the mount view are.

    ``STRICT``: compute and file I/O in the workspace only.
    ``MODERATE`` (default): real tools (shells, git, compilers, Python, Node).
    ``PERMISSIVE``: a denylist of dangerous calls only, wider read access.
    ``DISABLED``: no namespaces and no filter; timeout, limits, usage and the
    execution log still apply. For debugging only.
    """

    STRICT = "strict"
    MODERATE = "moderate"
    PERMISSIVE = "permissive"
    DISABLED = "disabled"


class SandboxConfig(BaseModel):
    """The policy of a run.

    Every limit is optional: ``None`` means "not limited by stockade"
    (the host's own limits still apply). Sizes are in MiB, times in seconds.
    Numbers are taken as numbers only: an int or a float (an int also where
    a float is expected), finite, greater than 0 and at most the field's
    bound (``MAX_*`` above); a bool (YAML ``yes``) or a string (``"30"``) is
    refused, never converted.

    Raises:
        PolicyError: on construction, for an invalid field (``key``,
            ``value``; pydantic's ``ValidationError`` is its ``__cause__``).
    """

    model_config = ConfigDict(frozen=True, extra="forbid", use_enum_values=False)

    mode: SandboxMode = SandboxMode.MODERATE

    timeout_sec: float | None = Field(
        default=600.0,
        gt=0,
        le=MAX_TIMEOUT_SEC,
        strict=True,
        allow_inf_nan=False,
        description="Wall-clock limit; the whole process tree is killed at it.",
    )
    cpu_time_sec: float | None = Field(
        default=300,
        gt=0,
        le=MAX_CPU_TIME_SEC,
        strict=True,
        allow_inf_nan=False,
        description=(
            "CPU seconds of the whole process tree (all processes and threads "
            "together), read from the run's cgroup; the tree is killed at it "
            "(termination 'cpu_limit'). RLIMIT_CPU per process is a backstop, "
            "and what stands in when allow_degraded names 'cpu' and no usable "
            "cgroup exists."
        ),
    )
    memory_mb: int | None = Field(
        default=512,
        gt=0,
        le=MAX_SIZE_MB,
        strict=True,
        description=(
            "Memory of the whole process tree (cgroup memory limit, swap "
            "disabled for the run): anonymous memory, page cache, tmpfs files "
            "and kernel memory the tree uses. When the kernel's OOM killer acts "
            "the run ends with termination 'memory_limit'. Without a usable "
            "cgroup the run is refused unless allow_degraded names 'memory' "
            "(then RLIMIT_DATA per process)."
        ),
    )
    max_processes: int | None = Field(
        default=512,
        gt=0,
        le=MAX_PROCESSES,
        strict=True,
        description=(
            "Processes and threads of the whole tree at once (cgroup pids "
            "limit; bubblewrap's own two processes are not counted). A refused "
            "fork or thread ends the run with termination 'pids_limit'. Without "
            "a usable cgroup the run is refused unless allow_degraded names "
            "'pids' (then RLIMIT_NPROC, which counts the uid's processes)."
        ),
    )
    cpu_cores: float | None = Field(
        default=None,
        gt=0,
        le=MAX_CPU_CORES,
        strict=True,
        allow_inf_nan=False,
        description=(
            "CPU bandwidth of the tree in cores (cgroup CPU quota), e.g. 0.5 or "
            "1.5. None: not limited."
        ),
    )
    disk_mb: int | None = Field(
        default=100,
        gt=0,
        le=MAX_SIZE_MB,
        strict=True,
        description=(
            "Disk budget: the size of each private writable tmpfs (/tmp, "
            "/var/tmp, /dev/shm, HOME), the largest file a process may write "
            "(RLIMIT_FSIZE, unless max_file_size_mb says otherwise), and how "
            "much the run may add to the workspace (measured; past it the run "
            "ends with termination 'disk_limit'). See docs/limits.md."
        ),
    )
    max_file_size_mb: int | None = Field(
        default=None,
        gt=0,
        le=MAX_SIZE_MB,
        strict=True,
        description="Largest file a process may write; defaults to disk_mb.",
    )
    max_open_files: int = Field(
        default=1024,
        ge=MIN_OPEN_FILES,
        le=MAX_OPEN_FILES,
        strict=True,
        description=(
            f"RLIMIT_NOFILE of every process, at least {MIN_OPEN_FILES} (the sandbox's own "
            "set-up needs up to 12 descriptors). A value above the hard limit the "
            "caller may set (its own RLIMIT_NOFILE hard limit; fs.nr_open with "
            "CAP_SYS_RESOURCE) is refused before the run."
        ),
    )
    max_output_bytes: int = Field(
        default=8 * MIB,
        gt=0,
        le=MAX_OUTPUT_BYTES,
        strict=True,
        description=(
            "Captured bytes kept per stream; past it the run is ended with "
            "termination 'output_limit'."
        ),
    )
    output_limit_action: Literal["kill", "truncate"] = Field(
        default="kill",
        description=(
            "What passing max_output_bytes does. 'kill': the run ends with "
            "termination 'output_limit'. 'truncate': the program runs on, the rest "
            "of the stream is read and dropped, and the result flags it truncated."
        ),
    )

    workspace: Path | None = Field(
        default=None,
        description=(
            "Writable directory of the run. None: the cwd given to execute() "
            "(or the process's cwd); an empty string is refused."
        ),
    )
    env: dict[str, str] = Field(
        default_factory=dict,
        description="Variables set for every run, on top of the scrubbed base.",
    )
    env_passthrough: tuple[str, ...] = Field(
        default=(),
        description="Names of caller variables passed in as they are.",
    )
    run_as_uid: int = Field(
        default=65534,
        ge=1,
        le=MAX_ID,
        strict=True,
        description=(
            "Host uid the program runs as when the caller is root (the program "
            "never runs as host uid 0). Ignored for other callers, who keep "
            "their own uid."
        ),
    )
    run_as_gid: int = Field(default=65534, ge=1, le=MAX_ID, strict=True)
    syscalls_allow: tuple[str, ...] = Field(
        default=(),
        description=(
            "System calls to allow on top of the mode's filter (names as in "
            "`stockade filters show`). Calls denied in every mode cannot be "
            "allowed; unknown names are an error."
        ),
    )
    syscalls_deny: tuple[str, ...] = Field(
        default=(),
        description=(
            "System calls to deny (EPERM, reported) although the mode allows them."
        ),
    )
    execution_log: Path | None | bool = Field(
        default=True,
        description=(
            "Where each run appends one JSON line. True: "
            "$XDG_STATE_HOME/stockade/runs.jsonl; False or None: no log."
        ),
    )
    network: NetworkPolicy = Field(
        default_factory=NetworkPolicy,
        description=(
            "'none' (default), 'loopback', or an allowlist {allow = [...], hosts = "
            "{...}} enforced by the host-side proxy; see docs/network.md."
        ),
    )
    read_only: tuple[str, ...] = Field(
        default=(),
        description=(
            "Host paths the run sees read-only, at the same path. Relative paths "
            "resolve against the workspace, '~' against the caller's home; globs "
            "(*, ?, [..]; not **) match what exists at launch. A path that does not "
            "exist is an error. See docs/filesystem.md."
        ),
    )
    writable: tuple[str, ...] = Field(
        default=(),
        description=(
            "Host paths the run may change, at the same path, besides the "
            "workspace. A path that does not exist is created as a directory."
        ),
    )
    hidden: tuple[str, ...] = Field(
        default=(),
        description=(
            "Paths the run can neither read nor write, even inside a visible or "
            "writable one (the most specific path wins). A missing path is skipped, "
            "unless it would lie in a writable place: then it is an error."
        ),
    )
    protected: tuple[str, ...] = Field(
        default=DEFAULT_PROTECTED,
        description=(
            "Paths kept read-only inside every writable place (relative to each), "
            "so that the run cannot plant code the host runs later. Default: git "
            "hooks and config and the workspace's own stockade policy. Empty: "
            "nothing protected."
        ),
    )
    presets: tuple[str, ...] = Field(
        default=(),
        description=(
            "Policy includes for common tools: 'python' (writable pip cache and "
            "active virtual environment), 'node' (writable npm cache), 'git' (your "
            "git identity). See docs/filesystem.md."
        ),
    )
    bwrap_path: Path | None = Field(
        default=None, description="bubblewrap binary; None: found on PATH."
    )
    tier: Literal["auto", "namespaces", "landlock"] = Field(
        default="auto",
        description=(
            "How the sandbox is built. 'namespaces': bubblewrap (user, pid, "
            "net... namespaces and a mount view), refused where the host cannot "
            "create them. 'landlock': the second tier for hosts without user "
            "namespaces (Landlock ruleset, per-run monitor), chosen explicitly. "
            "'auto': namespaces, or the second tier when the host cannot create "
            "namespaces and allow_degraded names 'namespaces'."
        ),
    )
    allow_degraded: tuple[str, ...] = Field(
        default=(),
        description=(
            "Protections the caller accepts weaker than in full or missing, by "
            "name (see DEGRADABLE_PROTECTIONS). Empty: every protection the "
            "policy needs must be enforced or the run is refused before it "
            "starts. 'namespaces' accepts the second tier."
        ),
    )

    if not TYPE_CHECKING:  # type checkers keep pydantic's keyword signature

        def __init__(self, **data: Any) -> None:
            try:
                super().__init__(**data)
            except ValidationError as err:
                raise _policy_error(err, "SandboxConfig") from err

    @field_validator("mode", mode="before")
    @classmethod
    def _mode_from_text(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                return SandboxMode(value.lower())
            except ValueError:
                choices = ", ".join(m.value for m in SandboxMode)
                raise ValueError(f"unknown mode {quoted(value)}; choose one of {choices}")
        return value

    @field_validator("allow_degraded", mode="before")
    @classmethod
    def _degradable(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if isinstance(value, (list, tuple)):
            unknown = [name for name in value if name not in DEGRADABLE_PROTECTIONS]
            if unknown:
                choices = ", ".join(DEGRADABLE_PROTECTIONS)
                raise ValueError(f"unknown protection(s) {unknown}; choose from {choices}")
        return value

    @field_validator("read_only", "writable", "hidden", "protected", mode="before")
    @classmethod
    def _path_list(cls, value: Any) -> Any:
        if isinstance(value, (str, os.PathLike)):
            value = [value]
        if isinstance(value, (list, tuple)):
            value = [
                os.fspath(item) if isinstance(item, os.PathLike) else item
                for item in value
            ]
            for item in value:
                if isinstance(item, str) and (not item or "\0" in item):
                    raise ValueError(f"invalid path {quoted(item)}")
        return value

    @field_validator("protected")
    @classmethod
    def _protected_inside(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            if ".." in Path(item).parts:
                raise ValueError(
                    f"protected path {quoted(item)} has '..': name a path inside a "
                    f"writable place, relative to it or absolute, without '..'"
                )
            if os.path.normpath(item).strip("/") in ("", "."):
                # it would lie inside no writable place, or be one: nothing
                # protected, and the default list replaced
                raise ValueError(
                    f"protected path {quoted(item)} names no path inside a writable "
                    f"place (a whole writable place cannot be protected); name one, "
                    f"or give [] to protect nothing"
                )
        return value

    @field_validator("workspace", mode="before")
    @classmethod
    def _workspace_named(cls, value: Any) -> Any:
        if isinstance(value, (str, os.PathLike)) and not os.fspath(value):
            raise ValueError(
                "empty; name a directory, or leave workspace unset for the cwd"
            )
        return value

    @field_validator("presets", mode="before")
    @classmethod
    def _preset_names(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if isinstance(value, (list, tuple)):
            unknown = [name for name in value if name not in PRESETS]
            if unknown:
                choices = ", ".join(PRESETS)
                raise ValueError(f"unknown preset(s) {unknown}; choose from {choices}")
        return value

    @field_validator("env")
    @classmethod
    def _env_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name, text in value.items():
            _check_env_name(name)
            if "\0" in text:
                raise ValueError(f"value of {name} contains a NUL byte")
        return value

    @field_validator("env_passthrough")
    @classmethod
    def _passthrough_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for name in value:
            _check_env_name(name)
        return value

    @property
    def file_size_mb(self) -> int | None:
        """The RLIMIT_FSIZE cap in MiB, or None."""
        if self.max_file_size_mb is not None:
            return self.max_file_size_mb
        return self.disk_mb

    @classmethod
    def from_mapping(cls, data: dict[str, Any], *, source: str = "config") -> SandboxConfig:
        """Validate a plain mapping (a policy file, options).

        Raises:
            PolicyError: naming ``source``, the key and the value.
        """
        for key in data:
            if not isinstance(key, str):
                message = f"{source}: unknown key {quoted(key)} (value {quoted(data[key])})"
                raise PolicyError(message, key=str(key), value=data[key])
        # through the constructor, not model_validate: with our __init__,
        # pydantic would wrap its PolicyError (a ValueError) in a new
        # ValidationError
        try:
            return cls(**data)
        except PolicyError as err:
            if isinstance(err.__cause__, ValidationError):
                raise _policy_error(err.__cause__, source) from err.__cause__
            raise

    def with_changes(self, **changes: Any) -> SandboxConfig:
        """A copy with some fields replaced, validated like the original.

        Raises:
            PolicyError: a replaced field is invalid.
        """
        data = self.model_dump()
        data.update(changes)
        return SandboxConfig.from_mapping(data, source="override")


def check_timeout(value: object, key: str = "timeout") -> float:
    """A per-call wall-clock limit, checked like ``timeout_sec``.

    Returns:
        the seconds as a float.

    Raises:
        PolicyError: not an int or float (a bool or a string is refused),
            not finite, not greater than 0, or above ``MAX_TIMEOUT_SEC``.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        message = (
            f"{key} = {quoted(value)}: must be a number of seconds (int or float), "
            f"not {type(value).__name__}{_number_hint(value)}"
        )
        raise PolicyError(message, key=key, value=value)
    if not math.isfinite(value):
        message = f"{key} = {quoted(value)}: must be a finite number; use None for the policy's timeout_sec"
        raise PolicyError(message, key=key, value=value)
    if value <= 0:
        raise PolicyError(f"{key} = {quoted(value)}: must be greater than 0", key=key, value=value)
    if value > MAX_TIMEOUT_SEC:
        message = f"{key} = {quoted(value)}: must be at most {MAX_TIMEOUT_SEC} seconds (7 days)"
        raise PolicyError(message, key=key, value=value)
    return float(value)


def _check_env_name(name: str) -> None:
    if not name or "=" in name or "\0" in name:
        raise ValueError(f"invalid environment variable name {quoted(name)}")


def _policy_error(err: ValidationError, source: str) -> PolicyError:
    first = err.errors()[0]
    key = ".".join(str(part) for part in first["loc"]) or "<root>"
    value = first.get("input")
    kind = first["type"]
    if kind == "extra_forbidden":
        message = f"{source}: unknown key {quoted(key)} (value {quoted(value)})"
    elif kind in ("less_than_equal", "less_than") and "ctx" in first:
        bound = first["ctx"].get("le", first["ctx"].get("lt"))
        if isinstance(bound, float) and bound.is_integer():
            bound = int(bound)
        word = "at most" if kind == "less_than_equal" else "below"
        hint = _BOUND_HINTS.get(key, "")
        message = f"{source}: {key} = {quoted(value)}: must be {word} {bound}{hint}"
    elif kind == "greater_than_equal" and key in _LOWER_BOUND_HINTS and "ctx" in first:
        bound = first["ctx"].get("ge")
        message = (
            f"{source}: {key} = {quoted(value)}: must be at least {bound}"
            f"{_LOWER_BOUND_HINTS[key]}"
        )
    else:
        message = f"{source}: {key} = {quoted(value)}: {first['msg']}"
        if kind in ("int_type", "float_type", "finite_number"):
            message += _number_hint(value)
    return PolicyError(message, key=key, value=value)


# why the bound is, after "must be at least N"
_LOWER_BOUND_HINTS = {
    "max_open_files": (
        " (the sandbox's own set-up, bubblewrap or the second tier's monitor, "
        "needs up to 12 descriptors under the same limit before the program runs)"
    ),
}


# what the bound is, after "must be at most N"
_BOUND_HINTS = {
    "timeout_sec": " seconds (7 days); None: no timeout",
    "cpu_time_sec": " CPU-seconds (30 days); None: not limited",
    "cpu_cores": " cores; None: not limited",
    "memory_mb": " MiB (16 TiB); None: not limited",
    "disk_mb": " MiB (16 TiB); None: not limited",
    "max_file_size_mb": " MiB (16 TiB); None: disk_mb",
    "max_processes": " (the kernel's most pids, less bubblewrap's 2); None: not limited",
    "max_open_files": " (fs.nr_open cannot be higher)",
    "max_output_bytes": " bytes (1 GiB) per stream",
    "run_as_uid": " (2**32 - 1 is no uid)",
    "run_as_gid": " (2**32 - 1 is no gid)",
}


_YAML_EXPONENT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _number_hint(value: Any) -> str:
    if isinstance(value, bool):
        return "; true/false (YAML also yes/no/on/off) is not a number"
    if isinstance(value, str):
        if _YAML_EXPONENT.fullmatch(value.strip()):
            # YAML 1.1 reads 1e3 as a string: its floats need a dot and a sign
            return "; YAML reads exponent forms such as 1e3 as text: write 1000 or 1.0e+3"
        return "; a number is written without quotes (a string is never converted)"
    if isinstance(value, float) and not math.isfinite(value):
        return "; use None for no limit"
    return ""


# --- files -----------------------------------------------------------------

# What ``security.sandbox_resource_limits`` may hold: the limits of
# docs/limits.md (resources, time, output). Everything else of a policy
# (mode, network, tier, paths, allow_degraded, output_limit_action...) goes
# under ``security.sandbox_policy``.
FLAG_LIMIT_KEYS = (
    "memory_mb",
    "cpu_time_sec",
    "cpu_cores",
    "max_processes",
    "max_file_size_mb",
    "max_open_files",
    "disk_mb",
    "timeout_sec",
    "max_output_bytes",
)


def load_policy_file(path: str | os.PathLike[str]) -> SandboxConfig:
    """Read a policy from YAML or TOML.

    Two shapes are accepted: a mapping of SandboxConfig fields, or the host
    application's feature-flag file (a top-level ``security`` key, see
    ``config_from_feature_flags``).
    """
    data = _read_mapping(Path(path))
    if "security" in data:
        return config_from_feature_flags(data, source=str(path))
    return SandboxConfig.from_mapping(data, source=str(path))


def config_from_feature_flags(data: dict[str, Any], *, source: str = "feature flags") -> SandboxConfig:
    """Build a policy from the feature-flag mapping of the original request.

    ::

        security:
          sandbox_enabled: true
          sandbox_mode: "moderate"
          sandbox_resource_limits: {cpu_time_sec: 300, memory_mb: 512, disk_mb: 100}

    ``sandbox_enabled: false`` means mode ``disabled`` whatever
    ``sandbox_mode`` says. ``sandbox_resource_limits`` holds only the limits
    (``FLAG_LIMIT_KEYS``); any other policy field goes under
    ``sandbox_policy``. A field given in two places (``sandbox_mode`` and
    ``sandbox_policy.mode``; ``sandbox_enabled: false`` and a
    ``sandbox_policy.mode`` other than disabled; a limit in both sections)
    is refused as ambiguous.
    """
    mixed = [key for key in data if isinstance(key, str) and key in SandboxConfig.model_fields]
    if mixed:
        # a plain policy key beside the flag section: one of them would be
        # ignored (a top-level mode: "strict" lost to sandbox_enabled: false)
        raise PolicyError(
            f"{source}: mixes the plain policy format ({', '.join(mixed)}) with the "
            "feature-flag format (security): ambiguous; write the policy in one of them "
            "(plain keys go under security.sandbox_policy in a feature-flag file)",
            key=mixed[0],
            value=data[mixed[0]],
        )
    security = data.get("security")
    if not isinstance(security, dict):
        raise PolicyError(f"{source}: 'security' must be a mapping", key="security", value=security)
    known = {"sandbox_enabled", "sandbox_mode", "sandbox_resource_limits", "sandbox_policy"}
    for key in security:
        if key not in known:
            raise PolicyError(
                f"{source}: unknown key 'security.{key}' (value {quoted(security[key])})",
                key=f"security.{key}",
                value=security[key],
            )

    enabled = security.get("sandbox_enabled", True)
    if not isinstance(enabled, bool):
        raise PolicyError(
            f"{source}: security.sandbox_enabled = {quoted(enabled)}: must be true or false",
            key="security.sandbox_enabled",
            value=enabled,
        )
    limits = security.get("sandbox_resource_limits") or {}
    if not isinstance(limits, dict):
        raise PolicyError(
            f"{source}: security.sandbox_resource_limits must be a mapping",
            key="security.sandbox_resource_limits",
            value=limits,
        )
    for key, value in limits.items():
        where = f"security.sandbox_resource_limits.{key}"
        if key in FLAG_LIMIT_KEYS:
            continue
        if isinstance(key, str) and key in SandboxConfig.model_fields:
            # mode: disabled here used to override sandbox_mode silently
            raise PolicyError(
                f"{source}: '{where}' (value {quoted(value)}) is not a resource limit: "
                f"'{key}' belongs under security.sandbox_policy "
                f"(limits: {', '.join(FLAG_LIMIT_KEYS)})",
                key=where,
                value=value,
            )
        raise PolicyError(
            f"{source}: unknown key '{where}' (value {quoted(value)})", key=where, value=value
        )

    extra = security.get("sandbox_policy") or {}
    if not isinstance(extra, dict):
        raise PolicyError(
            f"{source}: security.sandbox_policy must be a mapping",
            key="security.sandbox_policy",
            value=extra,
        )

    # a field given in two places is ambiguous: refused, never "the later wins"
    def ambiguous(first: str, second: str, why: str) -> PolicyError:
        return PolicyError(
            f"{source}: {first} and {second} {why}: ambiguous; give it in one place",
            key=second,
            value=extra.get(second.rsplit(".", 1)[-1]),
        )

    if "mode" in extra:
        if "sandbox_mode" in security:
            raise ambiguous(
                f"security.sandbox_mode = {quoted(security['sandbox_mode'])}",
                "security.sandbox_policy.mode",
                f"= {quoted(extra['mode'])} both set the mode",
            )
        policy_mode = extra["mode"]
        if isinstance(policy_mode, SandboxMode):
            policy_mode = policy_mode.value
        if not enabled and not (isinstance(policy_mode, str) and policy_mode.lower() == "disabled"):
            raise ambiguous(
                "security.sandbox_enabled = false",
                "security.sandbox_policy.mode",
                f"= {quoted(extra['mode'])} disagree (false means mode disabled)",
            )
    for key in limits:
        if key in extra:
            raise ambiguous(
                f"security.sandbox_resource_limits.{key} = {quoted(limits[key])}",
                f"security.sandbox_policy.{key}",
                f"= {quoted(extra[key])} both set it",
            )

    fields: dict[str, Any] = {}
    fields["mode"] = security.get("sandbox_mode", "moderate") if enabled else "disabled"
    fields.update(limits)
    fields.update(extra)
    return SandboxConfig.from_mapping(fields, source=source)


def _read_mapping(path: Path) -> dict[str, Any]:
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise PolicyError(f"cannot read policy file {path}: {err.strerror}", key="config", value=str(path)) from err
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        message = (
            f"cannot read policy file {path}: not UTF-8 text "
            f"(byte 0x{raw[err.start]:02x} at offset {err.start})"
        )
        raise PolicyError(message, key="config", value=str(path)) from None
    if path.suffix == ".toml":
        parse, errors = tomllib.loads, (tomllib.TOMLDecodeError,)
    else:
        import yaml  # only for YAML files: its import costs a CLI start 40 ms

        parse, errors = _yaml_load, (yaml.YAMLError,)
    try:
        data: Any = parse(text)
    except errors as err:
        raise PolicyError(
            f"cannot parse policy file {path}: {_parse_error_text(err)}", key="config", value=str(path)
        ) from err
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise PolicyError(f"policy file {path} must hold a mapping, not {type(data).__name__}", key="config", value=str(path))
    return data


def _yaml_load(text: str) -> Any:
    """``yaml.safe_load`` without anchors and aliases.

    A policy needs neither, and aliases let a few lines expand into
    gigabytes ("billion laughs": nine levels of ten aliases each), which
    the composer would build and any error message would quote.
    """
    import yaml

    class NoAliasLoader(yaml.SafeLoader):
        def compose_node(self, parent: Any, index: Any) -> Any:
            event = self.peek_event()
            what = None
            if isinstance(event, yaml.AliasEvent):
                what = f"an alias (*{event.anchor})"
            elif getattr(event, "anchor", None) is not None:
                what = f"an anchor (&{event.anchor})"
            if what is not None:
                raise yaml.composer.ComposerError(
                    None, None,
                    f"{what}: YAML anchors and aliases are not accepted in policy files",
                    event.start_mark,
                )
            return super().compose_node(parent, index)

        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            # a key given twice would let the later one win unnoticed
            # (mode: strict ... mode: disabled); merge keys (<<) are
            # flattened first, so a merged key overridden is caught too
            if isinstance(node, yaml.MappingNode):
                self.flatten_mapping(node)
                seen: dict[Any, Any] = {}
                for key_node, _ in node.value:
                    key = self.construct_object(key_node, deep=True)
                    try:
                        first = seen.get(key)
                    except TypeError:
                        continue  # unhashable: the base constructor reports it
                    if first is not None:
                        raise yaml.constructor.ConstructorError(
                            None, None,
                            f"duplicate key {quoted(key)} (first at line {first.line + 1}, "
                            f"column {first.column + 1}): a key may be given once",
                            key_node.start_mark,
                        )
                    seen[key] = key_node.start_mark
            return super().construct_mapping(node, deep=deep)

    loader = NoAliasLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def _parse_error_text(err: Exception) -> str:
    """A parser's error on one line: YAML's spans several (with a snippet)."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None)
    if mark is not None and problem:
        context = getattr(err, "context", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}"
        return f"{where}: {context + ': ' if context else ''}{problem}"
    return " ".join(str(err).split())
