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
    overhead_tasks: int = 0
    notes: list[str] = field(default_factory=list)


def required_controllers(config: SandboxConfig) -> set[str]:
    """The cgroup controllers the policy's tree limits need."""
    required = set()
    if config.memory_mb is not None:
        required.add(cgroups.MEMORY)
    if config.max_processes is not None:
        required.add(cgroups.PIDS)
    if config.cpu_cores is not None:
        required.add(cgroups.CPU)
    if config.cpu_time_sec is not None:
        required.add(cgroups.CPUACCT)
    return required


def plan(
    config: SandboxConfig,
    *,
    uses_bwrap: bool,
    workspace: str | None,
    version: int | None = None,
) -> LimitPlan:
    """Turn the policy's limits into a cgroup request, rlimits and protections.

    Args:
        config: the policy.
        uses_bwrap: the run goes through bubblewrap (two extra tasks).
        workspace: the writable workspace (for the disk budget), or None.
        version: insist on cgroup v1 or v2 (None: the best the host has).

    Raises:
        SandboxUnavailableError: a tree limit needs a cgroup the host does
            not give this caller, and ``allow_rlimit_fallback`` is off.
    """
    required = required_controllers(config)
    found = cgroups.probe()
    backend: cgroups.Backend | None
    try:
        backend = found.choose(required, version)
    except cgroups.CgroupUnavailable as err:
        if required and not config.allow_rlimit_fallback:
            what = "cgroup " + ", ".join(err.missing) + " (tree limits)"
            raise SandboxUnavailableError(what, err.reason, err.fix) from None
        backend = None
        if required:
            log.warning(
                "no usable cgroup (%s): per-process rlimits instead, as "
                "allow_rlimit_fallback permits",
                err.reason,
            )
        else:
            try:
                backend = found.choose(set(), version)
            except cgroups.CgroupUnavailable:
                backend = None

    overhead = BWRAP_TASKS if uses_bwrap else 0
    request: dict[str, Any] | None = None
    if backend is not None:
        request = {
            "version": backend.version,
            "required": bool(required),
            "memory_bytes": config.memory_mb * MIB if config.memory_mb else None,
            "pids_max": config.max_processes + overhead if config.max_processes else None,
            "cpu_cores": config.cpu_cores,
            "cpu_time_ns": int(config.cpu_time_sec * 1e9) if config.cpu_time_sec else None,
        }
    tree = backend is not None and backend.covers(required)

    rlimits: list[list[Any]] = [["RLIMIT_CORE", 0, 0]]
    if config.cpu_time_sec is not None:
        seconds = math.ceil(config.cpu_time_sec)
        # with the tree limit, the per-process backstop sits a second later so
        # that the precise tree limit acts first; SIGKILL a second after SIGXCPU
        soft = seconds + 1 if tree else seconds
        rlimits.append(["RLIMIT_CPU", soft, soft + 1])
    if config.file_size_mb is not None:
        size = config.file_size_mb * MIB
        rlimits.append(["RLIMIT_FSIZE", size, size])
    rlimits.append(["RLIMIT_NOFILE", config.max_open_files, config.max_open_files])
    if not tree and config.memory_mb is not None:
        size = config.memory_mb * MIB
        rlimits.append(["RLIMIT_DATA", size, size])
    if not tree and config.max_processes is not None:
        count = config.max_processes + overhead
        rlimits.append(["RLIMIT_NPROC", count, count])

    disk_budget = None
    if config.disk_mb is not None and workspace:
        disk_budget = {"path": workspace, "bytes": config.disk_mb * MIB}

    return LimitPlan(
        cgroup=request,
        rlimits=rlimits,
        protections=_protections(config, backend if tree else None, uses_bwrap),
        disk_budget=disk_budget,
        overhead_tasks=overhead,
    )


def _protections(
    config: SandboxConfig, backend: cgroups.Backend | None, uses_bwrap: bool
) -> list[Protection]:
    out = [
        Protection(
            "timeout", "enforced" if config.timeout_sec else "off", "kills the whole tree"
        )
    ]
    where = backend.describe() if backend else ""
    if config.memory_mb:
        if backend:
            swap = (
                "swap disabled for the run"
                if backend.swap_accounting
                else "no swap accounting on this host: swap not limited "
                "(v1: memory.swappiness 0 for the run)"
            )
            out.append(
                Protection(
                    "memory",
                    "enforced",
                    f"{config.memory_mb} MiB for the whole tree, {where}; {swap}",
                )
            )
        else:
            out.append(
                Protection(
                    "memory",
                    "degraded",
                    f"RLIMIT_DATA {config.memory_mb} MiB per process (no usable cgroup; "
                    f"allow_rlimit_fallback): not a budget for the tree",
                )
            )
    if config.max_processes:
        if backend:
            out.append(
                Protection(
                    "processes",
                    "enforced",
                    f"{config.max_processes} processes and threads for the whole tree, {where}",
                )
            )
        else:
            out.append(
                Protection(
                    "processes",
                    "degraded",
                    f"RLIMIT_NPROC {config.max_processes}: counts every process of the "
                    f"sandbox's uid on the host (no usable cgroup; allow_rlimit_fallback)",
                )
            )
    if config.cpu_cores:
        if backend:
            out.append(
                Protection("cpu_quota", "enforced", f"{config.cpu_cores} cores, {where}")
            )
        else:
            out.append(
                Protection(
                    "cpu_quota",
                    "off",
                    "no usable cgroup cpu controller (allow_rlimit_fallback)",
                )
            )
    if config.cpu_time_sec:
        if backend:
            out.append(
                Protection(
                    "cpu_time",
                    "enforced",
                    f"{config.cpu_time_sec} CPU-s for the whole tree, {where}; "
                    f"RLIMIT_CPU per process as a backstop",
                )
            )
        else:
            out.append(
                Protection(
                    "cpu_time",
                    "degraded",
                    f"RLIMIT_CPU {math.ceil(config.cpu_time_sec)} s per process (no usable "
                    f"cgroup; allow_rlimit_fallback)",
                )
            )
    if config.disk_mb:
        tmpfs = "private tmpfs areas capped at that size each; " if uses_bwrap else ""
        out.append(
            Protection(
                "disk",
                "enforced",
                f"{config.disk_mb} MiB: {tmpfs}workspace growth measured, run ended past it",
            )
        )
    if config.file_size_mb:
        out.append(
            Protection("file_size", "enforced", f"RLIMIT_FSIZE {config.file_size_mb} MiB")
        )
    return out


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

    The launcher ends the run at an OOM kill or a refused fork; when the
    program ended first (between two polls), the cgroup's counters still
    show it.
    """
    if termination not in (Termination.EXITED, Termination.SIGNALED):
        return termination
    cg = event.get("cgroup") or {}
    if cg.get("oom_kills"):
        return Termination.MEMORY_LIMIT
    if cg.get("pids_limit_hits"):
        return Termination.PIDS_LIMIT
    return termination
