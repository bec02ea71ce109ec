"""Limits of a run, on the caller's side: policy -> cgroup request, rlimits,
protections; launcher event -> usage and the limit that ended the run.

The launcher does the work (``cgroups.py``, ``diskbudget.py``); this module
decides what to ask of it, and fails closed before anything runs when the
host cannot enforce a limit the policy asks for.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..config import MIB, SandboxConfig
from ..errors import SandboxUnavailableError
from ..result import Protection, Termination, Usage
from . import cgroups

log = logging.getLogger(__name__)

# bubblewrap's monitor (outside the pid namespace) and its pid 1 (inside)
# are in the run's cgroup too; max_processes is about the program's own.
BWRAP_TASKS = 2


@dataclass
class LimitPlan:
    """What a run asks of the launcher for its limits."""

    cgroup: dict[str, Any] | None
    rlimits: list[list[Any]]
    protections: list[Protection]
    disk_budget: dict[str, Any] | None = None
    tree: dict[str, bool] = field(default_factory=dict)


# protection name (as in config.DEGRADABLE_PROTECTIONS) -> the controllers
# it needs for the whole tree
_NEEDS = {
    "memory": (cgroups.MEMORY,),
    "pids": (cgroups.PIDS,),
    "cpu": (cgroups.CPU, cgroups.CPUACCT),
}


def required_controllers(config: SandboxConfig) -> dict[str, set[str]]:
    """protection name -> the cgroup controllers its tree limits need."""
    required: dict[str, set[str]] = {}
    if config.memory_mb is not None:
        required["memory"] = {cgroups.MEMORY}
    if config.max_processes is not None:
        required["pids"] = {cgroups.PIDS}
    cpu = set()
    if config.cpu_cores is not None:
        cpu.add(cgroups.CPU)
    if config.cpu_time_sec is not None:
        cpu.add(cgroups.CPUACCT)
    if cpu:
        required["cpu"] = cpu
    return required


def _choose(
    config: SandboxConfig, version: int | None, found: cgroups.Probe | None = None
) -> tuple[cgroups.Backend | None, dict[str, str], cgroups.CgroupUnavailable | None]:
    """The backend, the limits it cannot enforce (name -> reason), the error."""
    required = required_controllers(config)
    found = found or cgroups.probe()
    everything = set().union(*required.values()) if required else set()
    try:
        return found.choose(everything, version), {}, None
    except cgroups.CgroupUnavailable as err:
        first = err
    # the most that one backend gives; the rest fall back or fail
    best: cgroups.Backend | None = None
    for candidate in (found.v2, found.v1):
        if candidate is None or (version is not None and candidate.version != version):
            continue
        if best is None or len(candidate.parents) > len(best.parents):
            best = candidate
    if best is not None and not best.parents:
        best = None
    missing = {
        name: "; ".join(
            f"{c}: {(best.problems if best else {}).get(c, first.reason)}"
            for c in sorted(needs)
            if best is None or c not in best.parents
        )
        for name, needs in required.items()
        if best is None or not best.covers(needs)
    }
    return best, missing, first


def plan(
    config: SandboxConfig,
    *,
    workspace: str | None,
    version: int | None = None,
) -> LimitPlan:
    """Turn the policy's limits into a cgroup request, rlimits and protections.

    A tree limit whose controller is not usable fails the run, unless the
    policy names it in ``allow_degraded`` ("memory", "pids", "cpu"): then a
    per-process rlimit stands in (RLIMIT_DATA, RLIMIT_NPROC, RLIMIT_CPU; a
    CPU quota has none) and its protection says ``degraded``.

    Args:
        config: the policy.
        workspace: the writable workspace (for the disk budget), or None.
        version: insist on cgroup v1 or v2 (None: the best the host has).

    Raises:
        SandboxUnavailableError: a tree limit has no usable cgroup and the
            policy does not accept it degraded.
    """
    backend, missing, err = _choose(config, version)
    refused = [name for name in missing if name not in config.allow_degraded]
    if refused and err is not None:
        names = ", ".join(refused)
        fix = err.fix.replace(
            "in the policy (allow_degraded)",
            f"in the policy: allow_degraded = {refused!r} (CLI: --allow-degraded "
            f"{','.join(refused)})",
        )
        raise SandboxUnavailableError(f"{names} (limits of the whole tree)", err.reason, fix)
    if missing:
        # accepted by the policy and reported in the result: not a warning
        log.info(
            "no usable cgroup for %s: per-process rlimits instead, as allow_degraded permits",
            ", ".join(missing),
        )
    tree = {name: name not in missing for name in required_controllers(config)}

    request: dict[str, Any] | None = None
    if backend is not None:
        request = {
            "version": backend.version,
            "required": any(tree.values()),
            "memory_bytes": config.memory_mb * MIB if tree.get("memory") else None,
            "pids_max": config.max_processes if tree.get("pids") else None,
            "cpu_cores": config.cpu_cores if tree.get("cpu") else None,
            "cpu_time_ns": (
                int(config.cpu_time_sec * 1e9)
                if tree.get("cpu") and config.cpu_time_sec
                else None
            ),
        }

    rlimits: list[list[Any]] = [["RLIMIT_CORE", 0, 0]]
    if config.cpu_time_sec is not None:
        seconds = math.ceil(config.cpu_time_sec)
        # with the tree limit, the per-process backstop sits a second later so
        # that the precise tree limit acts first; SIGKILL a second after SIGXCPU
        soft = seconds + 1 if tree.get("cpu") else seconds
        rlimits.append(["RLIMIT_CPU", soft, soft + 1])
    if config.file_size_mb is not None:
        size = config.file_size_mb * MIB
        rlimits.append(["RLIMIT_FSIZE", size, size])
    rlimits.append(["RLIMIT_NOFILE", config.max_open_files, config.max_open_files])
    if config.memory_mb is not None and not tree.get("memory"):
        size = config.memory_mb * MIB
        rlimits.append(["RLIMIT_DATA", size, size])
    if config.max_processes is not None and not tree.get("pids"):
        rlimits.append(["RLIMIT_NPROC", config.max_processes, config.max_processes])

    disk_budget = None
    if config.disk_mb is not None and workspace:
        disk_budget = {"path": workspace, "bytes": config.disk_mb * MIB}

    return LimitPlan(
        cgroup=request,
        rlimits=rlimits,
        protections=[
            Protection(name, status, detail, required)
            for name, status, detail, _fix, required in limit_rows(config, _planned=(backend, missing))
        ],
        disk_budget=disk_budget,
        tree=tree,
    )


def task_overhead(spec: Mapping[str, Any]) -> int:
    """Tasks of ours in the run's cgroup: bubblewrap's monitor and pid 1, or
    the second tier's monitor."""
    if spec.get("args_data"):
        return BWRAP_TASKS
    if spec.get("monitor"):
        return 1
    return 0


def finalize(spec: dict[str, Any], config: SandboxConfig) -> int:
    """Count our own tasks into the process limit, once the run's shape is
    known; returns that count (subtracted again from the reported peak)."""
    overhead = task_overhead(spec)
    if config.max_processes is None:
        return overhead
    count = config.max_processes + overhead
    if spec.get("cgroup") and spec["cgroup"].get("pids_max") is not None:
        spec["cgroup"]["pids_max"] = count
    for item in spec.get("rlimits") or []:
        if item[0] == "RLIMIT_NPROC":
            item[1] = item[2] = count
    return overhead


def limit_rows(
    config: SandboxConfig,
    version: int | None = None,
    *,
    found: cgroups.Probe | None = None,
    _planned: tuple[cgroups.Backend | None, dict[str, str]] | None = None,
) -> list[tuple[str, str, str, str, bool]]:
    """(name, status, detail, fix, required) of each limit for a policy here.

    Status is ``enforced``, ``degraded`` (a per-process rlimit stands in,
    accepted by ``allow_degraded``), ``unavailable`` (refused: no usable
    cgroup) or ``off`` (not in the policy). Used for the result and for
    ``stockade doctor``.
    """
    if _planned is None:
        backend, missing, _err = _choose(config, version, found)
    else:
        backend, missing = _planned
    where = backend.describe() if backend else ""
    fix = (
        "run the caller as root, or in a cgroup v2 subtree delegated to its user "
        "(systemd Delegate=yes with DelegateSubgroup=), or accept per-process "
        "rlimits with allow_degraded"
    )
    rows: list[tuple[str, str, str, str, bool]] = [
        ("timeout", "enforced" if config.timeout_sec else "off", "kills the whole tree", "", False)
    ]

    def row(name: str, limited: bool, enforced: str, degraded: str) -> None:
        if not limited:
            rows.append((name, "off", f"no {name} limit in the policy", "", False))
        elif name not in missing:
            rows.append((name, "enforced", f"{enforced}, {where}", "", True))
        elif name in config.allow_degraded:
            rows.append((name, "degraded", f"{degraded} (no usable cgroup: {missing[name]})", fix, True))
        else:
            rows.append((name, "unavailable", f"no usable cgroup: {missing[name]}", fix, True))

    swap = ""
    if backend is not None and config.memory_mb:
        swap = (
            "; swap disabled for the run"
            if backend.swap_accounting
            else "; no swap accounting on this host: swap not limited"
        )
    row(
        "memory",
        config.memory_mb is not None,
        f"{config.memory_mb} MiB for the whole tree{swap}",
        f"RLIMIT_DATA {config.memory_mb} MiB per process, not a budget for the tree",
    )
    row(
        "pids",
        config.max_processes is not None,
        f"{config.max_processes} processes and threads for the whole tree",
        f"RLIMIT_NPROC {config.max_processes}: every process of the sandbox's uid on the host",
    )
    cpu_parts = []
    if config.cpu_time_sec is not None:
        # :g so that 300 and 300.0 (a policy file, the CLI) read the same
        cpu_parts.append(f"{config.cpu_time_sec:g} CPU-s for the whole tree (RLIMIT_CPU per process as a backstop)")
    if config.cpu_cores is not None:
        cpu_parts.append(f"quota {config.cpu_cores:g} cores")
    degraded_cpu = (
        f"RLIMIT_CPU {math.ceil(config.cpu_time_sec)} s per process"
        if config.cpu_time_sec is not None
        else "nothing"
    ) + ("; CPU quota not enforced" if config.cpu_cores is not None else "")
    row("cpu", bool(cpu_parts), "; ".join(cpu_parts), degraded_cpu)
    if config.disk_mb:
        status, detail = disk_status(config, TMPFS_CAPPED)
        rows.append(("disk", status, detail, "", True))
    if config.file_size_mb:
        rows.append(("file_size", "enforced", f"RLIMIT_FSIZE {config.file_size_mb} MiB", "", True))
    return rows


# What holds a run's private tmpfs areas (/tmp, /var/tmp, /dev/shm, HOME) to
# disk_mb, by how the sandbox is built (see disk_status).
TMPFS_CAPPED = "capped"          # bubblewrap --size: ENOSPC at the cap
TMPFS_UNCAPPED = "uncapped"      # bubblewrap without --size (before 0.5.0)
TMPFS_RUN_DIR = "run_dir"        # Landlock tier: HOME and TMPDIR in a host directory
TMPFS_NONE = "none"              # mode disabled: the host's /tmp, a host HOME


def disk_status(
    config: SandboxConfig,
    tmpfs: str,
    *,
    bwrap_version: str = "",
    unbudgeted: list[str] | None = None,
) -> tuple[str, str]:
    """Status and detail of the ``disk`` protection: only what this run's
    sandbox enforces. ``enforced`` needs capped tmpfs areas; otherwise the
    workspace budget and RLIMIT_FSIZE still apply and the row says
    ``degraded``, naming what is not held to ``disk_mb``.

    Args:
        config: the policy (``disk_mb`` set).
        tmpfs: one of the ``TMPFS_*`` values.
        bwrap_version: for the message when bubblewrap lacks ``--size``.
        unbudgeted: writable paths of the policy outside the workspace.
    """
    size = f"{config.disk_mb} MiB"
    workspace = "workspace growth measured (deleted files still held included), run ended past it"
    others = ""
    if unbudgeted:
        others = f"; writable paths outside the workspace not budgeted: {', '.join(unbudgeted)}"
    if tmpfs == TMPFS_CAPPED:
        return "enforced", (
            f"{size}: each private tmpfs area (/tmp, /var/tmp, /dev/shm, HOME) capped at that "
            f"size (ENOSPC; a full one ends the run as disk_limit); {workspace}{others}"
        )
    if tmpfs == TMPFS_UNCAPPED:
        bound = f"memory_mb ({config.memory_mb} MiB)" if config.memory_mb else "nothing"
        return "degraded", (
            f"{size}: {workspace}; the private tmpfs areas are not capped (bubblewrap "
            f"{bwrap_version or '?'} lacks --size, 0.5.0+), only bounded by {bound}{others}"
        )
    if tmpfs == TMPFS_RUN_DIR:
        # TODO(#4): HOME and TMPDIR of the Landlock tier have no cap;
        # the disk row says degraded meanwhile
        return "degraded", (
            f"{size}: {workspace}; no private tmpfs on the Landlock tier: HOME and TMPDIR "
            f"(a per-run directory on the host) are not capped{others}"
        )
    return "degraded", (
        f"{size}: {workspace} only; mode disabled has no private tmpfs: what the program "
        f"writes to the host's /tmp, its HOME or any other path its uid may write is not "
        f"budgeted"
    )


def merge_protections(existing: list[Protection], ours: list[Protection]) -> list[Protection]:
    """Our limit rows replace rows of the same name, the others are appended."""
    by_name = {p.name: p for p in ours}
    merged = [by_name.pop(p.name, p) for p in existing]
    return merged + [p for p in ours if p.name in by_name]


# -- event -> result ----------------------------------------------------------------

KILL_REASONS = {
    "cpu_limit": Termination.CPU_LIMIT,
    "memory_limit": Termination.MEMORY_LIMIT,
    "pids_limit": Termination.PIDS_LIMIT,
    "disk_limit": Termination.DISK_LIMIT,
}


def usage(event: Mapping[str, Any], overhead_tasks: int) -> Usage:
    """The tree's usage: from its cgroup when there was one, else rusage."""
    utime = stime = 0.0
    maxrss = 0
    for part in (event.get("rusage"), event.get("init_rusage")):
        if part:
            utime += float(part["utime"])
            stime += float(part["stime"])
            maxrss = max(maxrss, int(part["maxrss_kb"]))
    rusage_peak = maxrss / 1024.0

    cg = event.get("cgroup")
    if not cg or cg.get("cpu_user_sec") is None:
        return Usage(
            cpu_user_sec=utime,
            cpu_system_sec=stime,
            peak_memory_mb=rusage_peak,
            source="rusage of reaped processes; peak is the largest single process",
        )
    parts = []
    memory = cg.get("memory_peak_bytes")
    peak_mb = memory / MIB if memory is not None else rusage_peak
    if memory is not None:
        parts.append("memory")
    pids = cg.get("pids_peak")
    peak_processes = max(0, int(pids) - overhead_tasks) if pids is not None else None
    if pids is not None:
        parts.append("pids, sampled" if cg.get("pids_peak_sampled") else "pids")
    parts.append("cpu" if cg.get("version") == 2 else "cpuacct")
    source = f"cgroup v{cg.get('version')} ({', '.join(parts)})"
    if memory is None:
        source += "; peak memory: largest single process"
    return Usage(
        cpu_user_sec=float(cg["cpu_user_sec"]),
        cpu_system_sec=float(cg.get("cpu_system_sec") or 0.0),
        peak_memory_mb=peak_mb,
        peak_processes=peak_processes,
        source=source,
    )


def refine_termination(termination: Termination, event: Mapping[str, Any]) -> Termination:
    """A limit that acted outranks how the program's main process ended.

    The launcher ends the run at an OOM kill, a refused fork or the
    workspace budget; when the program ended first (between two polls), the
    cgroup's counters and the launcher's last look at the disk still show
    it. A private tmpfs area that was full at the end means a write was
    refused with ENOSPC at its cap: ``disk_limit`` as well, though the
    program survived it.
    """
    if termination not in (Termination.EXITED, Termination.SIGNALED):
        return termination
    cg = event.get("cgroup") or {}
    if cg.get("oom_kills"):
        return Termination.MEMORY_LIMIT
    if cg.get("pids_limit_hits"):
        return Termination.PIDS_LIMIT
    disk = event.get("disk") or {}
    if disk.get("over") or disk.get("tmpfs_full"):
        return Termination.DISK_LIMIT
    return termination
