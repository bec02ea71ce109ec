"""Cgroups for the whole process tree of a run: limits, usage, kill, removal.

Per-process rlimits are no budget: eight children under a per-process cap
take eight times the memory. A cgroup holds every process and thread of a
run, whatever the tree looks like, and the kernel accounts and limits them
together. This module is the small layer over both cgroup hierarchies:

* cgroup v2 (the unified tree): one directory per run. The kernel gives a
  child cgroup controllers only when its parent holds no processes (the
  "no internal processes" rule; the root cgroup is exempt), so the parent of
  the runs is the caller's own cgroup when that is the root, else the
  caller's parent cgroup when that one is delegated to the caller (systemd
  ``Delegate=yes`` with ``DelegateSubgroup=``, which leaves the delegated
  cgroup itself empty). Nothing else is ever used.
* cgroup v1 (one hierarchy per controller, as on hosts in systemd's "hybrid"
  mode): one directory per run in each hierarchy that has memory, pids, cpu
  or cpuacct, beneath the cgroup the caller is in there.

Who does what. The caller's process (``manager.py``) calls ``probe()`` and
``Probe.choose()`` to learn before a run whether the policy's limits can be
enforced (fail closed otherwise). The launcher owns the cgroups' lifecycle:
``RunCgroups`` creates them (keeping one set made ahead of time so that
``mkdir`` is off the launch path), sets the limits, hands the files to join
to the launcher's child (it writes ``0`` there before it drops privileges and
execs, so no code of the program ever runs outside), polls the counters
while the run lasts, reads usage at the end, kills whatever remains and
removes the directories. Names are ``stockade-<pid namespace>-<launcher
pid>-<n>``: a launcher that starts removes what a dead launcher of its pid
namespace left behind, and never touches anything else.

Joining costs. Moving a whole process between cgroups (``cgroup.procs``)
takes a global lock whose write side waits for an RCU grace period when no
move happened in the last few tens of milliseconds: 5 to 20 ms measured.
Moving a single thread does not take it (Linux 5.17+), and the launcher's
child is single threaded, so on v1 it joins through the ``tasks`` files
(about 70 us per hierarchy). cgroup v2 moves a thread of a domain cgroup
only as a whole process, so v2 joins pay that wait unless the hierarchy is
mounted with ``favordynmods``. TODO(#4): join v2 cgroups with clone3
(CLONE_INTO_CGROUP) or a child made ahead of time; meanwhile v2 launches
after an idle spell take 5-20 ms longer.

Stdlib only, no dataclasses or regular expressions: the launcher imports
this module at every start.
"""

from __future__ import annotations

import errno
import os
import signal
import time
from typing import Any

MEMORY = "memory"
PIDS = "pids"
CPU = "cpu"          # the CPU quota (cpu_cores)
CPUACCT = "cpuacct"  # CPU usage; on v2 the core file cpu.stat, always there
CONTROLLERS = (MEMORY, PIDS, CPU, CPUACCT)

NAME_PREFIX = "stockade-"
CPU_PERIOD_US = 100_000

# How often the launcher reads a run's counters when a limit must act on
# them (OOM kill, refused fork), and the bounds of the adaptive CPU-time poll.
LIMIT_POLL_SEC = 0.05
CPU_POLL_MIN_SEC = 0.005
CPU_POLL_MAX_SEC = 0.5

_PROC_CGROUP = "/proc/self/cgroup"
_PROC_MOUNTINFO = "/proc/self/mountinfo"


class CgroupUnavailable(Exception):
    """The limits asked for cannot be enforced with the host's cgroups.

    Attributes:
        missing: the controllers that are not usable.
        reason: what the probe found, per controller.
        fix: what to change on the host or in the policy.
    """

    def __init__(self, missing: list[str], reason: str, fix: str):
        super().__init__(f"{reason}. Fix: {fix}")
        self.missing = missing
        self.reason = reason
        self.fix = fix


# -- probing -------------------------------------------------------------------


class Backend:
    """Where runs get their cgroups in one hierarchy version.

    Attributes:
        version: 1 or 2.
        parents: controller -> the directory in which run cgroups are made.
        problems: controller -> why it is not usable (for messages).
        swap_accounting: whether swap can be limited (v1 memsw, v2 swap.max).
    """

    __slots__ = ("version", "parents", "problems", "swap_accounting")

    def __init__(
        self,
        version: int,
        parents: dict[str, str],
        problems: dict[str, str],
        swap_accounting: bool,
    ) -> None:
        self.version = version
        self.parents = parents
        self.problems = problems
        self.swap_accounting = swap_accounting

    def covers(self, controllers: set[str] | frozenset[str]) -> bool:
        return all(c in self.parents for c in controllers)

    def describe(self) -> str:
        names = ", ".join(c for c in CONTROLLERS if c in self.parents)
        return f"cgroup v{self.version} ({names})"

    def __repr__(self) -> str:
        return f"Backend(v{self.version}, {self.parents!r}, {self.problems!r})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "parents": dict(self.parents),
            "problems": dict(self.problems),
            "swap_accounting": self.swap_accounting,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Backend:
        return cls(int(data["version"]), dict(data["parents"]), dict(data["problems"]),
                   bool(data["swap_accounting"]))


class Probe:
    """What the host offers this process: a v1 and a v2 backend, if any."""

    __slots__ = ("v1", "v2")

    def __init__(self, v1: Backend | None, v2: Backend | None) -> None:
        self.v1 = v1
        self.v2 = v2

    def to_dict(self) -> dict[str, Any]:
        return {
            "v1": self.v1.to_dict() if self.v1 else None,
            "v2": self.v2.to_dict() if self.v2 else None,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Probe:
        v1, v2 = data.get("v1"), data.get("v2")
        return cls(Backend.from_dict(v1) if v1 else None, Backend.from_dict(v2) if v2 else None)

    def choose(
        self,
        required: set[str] | frozenset[str],
        version: int | None = None,
    ) -> Backend:
        """The backend that enforces every required controller.

        v2 is preferred when it has them all; else v1; among those that do,
        the one that also offers more of the others (usage figures).

        Args:
            required: controllers the policy's limits need.
            version: 1 or 2 to insist on one hierarchy.

        Raises:
            CgroupUnavailable: no backend has them all.
        """
        candidates = [b for b in (self.v2, self.v1) if b is not None]
        if version is not None:
            candidates = [b for b in candidates if b.version == version]
        usable = [b for b in candidates if b.covers(required)]
        if usable:
            return max(usable, key=lambda b: len(b.parents))
        raise _unavailable(required, candidates, version)


def _unavailable(
    required: set[str] | frozenset[str], candidates: list[Backend], version: int | None
) -> CgroupUnavailable:
    reasons = []
    missing: set[str] = set()
    for backend in candidates:
        lacking = [c for c in sorted(required) if c not in backend.parents]
        missing.update(lacking)
        by_problem: dict[str, list[str]] = {}
        for c in lacking:
            by_problem.setdefault(backend.problems.get(c, "not available"), []).append(c)
        why = "; ".join(f"{', '.join(cs)}: {text}" for text, cs in by_problem.items())
        reasons.append(f"cgroup v{backend.version}: {why}")
    if not candidates:
        reasons.append(
            "no cgroup hierarchy is mounted"
            if version is None
            else f"no cgroup v{version} hierarchy is mounted"
        )
        missing.update(required)
    reason = "no usable cgroup for the limits asked for (" + " | ".join(reasons) + ")"
    fix = (
        "run the caller as root (the program still runs as an unprivileged uid; "
        "on a cgroup v2 host with systemd as PID 1 and systemd-run installed, the "
        "launcher then gets a delegated scope of its own), "
        "or on a cgroup v2 host run it inside a cgroup delegated to its user "
        "(systemd: Delegate=yes with DelegateSubgroup=, which keeps the delegated "
        "cgroup free of processes), or drop the limits that need cgroups, or "
        "accept per-process rlimits in the policy (allow_degraded)"
    )
    return CgroupUnavailable(sorted(missing), reason, fix)


_cached_probe: Probe | None = None

# The leaf a launcher moves itself into when its own v2 cgroup is delegated
# to it (see ``probe(leave_delegated=True)``). Not a run name: never removed
# as stale.
LAUNCHER_LEAF = "launcher"


def probe(
    refresh: bool = False, *, leave_delegated: bool = False, scope: str | None = None
) -> Probe:
    """Read this process's cgroups and what it may do with them (cached).

    Args:
        refresh: probe again instead of using the cached answer.
        leave_delegated: the launcher only. When this process sits alone in a
            cgroup v2 delegated to it (``systemd-run [--user] --scope -p
            Delegate=yes``, see ``client.py``), move it into a leaf beneath,
            so that the delegated cgroup is empty and may give controllers to
            the runs' cgroups made beside the leaf. Only this process moves.
        scope: the launcher only: the name of the systemd scope it was
            started in with ``Delegate=yes`` (``<unit>.scope``). A cgroup of
            that name counts as delegated: a root caller owns every cgroup,
            so ownership cannot tell, and older systemd sets no
            ``trusted.delegate`` attribute.
    """
    global _cached_probe
    if _cached_probe is None or refresh:
        if leave_delegated:
            _leave_delegated_cgroup(_PROC_MOUNTINFO, _PROC_CGROUP, os.geteuid(), scope)
        _cached_probe = _probe(_PROC_MOUNTINFO, _PROC_CGROUP, os.geteuid(), scope)
    return _cached_probe


def use_probe(found: Probe) -> None:
    """Install a probe made elsewhere: the caller adopts its launcher's view,
    since the launcher, not the caller, makes the runs' cgroups."""
    global _cached_probe
    _cached_probe = found


def _probe(mountinfo: str, proc_cgroup: str, euid: int, scope: str | None = None) -> Probe:
    mounts = _cgroup_mounts(mountinfo)
    paths = _cgroup_paths(proc_cgroup)
    return Probe(_probe_v1(mounts, paths), _probe_v2(mounts, paths, euid, scope))


def _leave_delegated_cgroup(
    mountinfo: str, proc_cgroup: str, euid: int, scope: str | None = None
) -> str | None:
    """Move this process into a leaf of its own delegated v2 cgroup, if it is
    that cgroup's only process. Returns the leaf's path, or None."""
    path = _cgroup_paths(proc_cgroup).get("")
    if path is None:
        return None
    for fstype, mount, root, _options in _cgroup_mounts(mountinfo):
        if fstype != "cgroup2":
            continue
        own = _inside(mount, root, path)
        if own is None or _is_v2_root(own) or not _delegated(own, euid, scope):
            return None
        members = _read(os.path.join(own, "cgroup.procs")).split()
        if members != [str(os.getpid())]:
            return None
        leaf = os.path.join(own, LAUNCHER_LEAF)
        try:
            os.makedirs(leaf, exist_ok=True)
            _write(os.path.join(leaf, "cgroup.procs"), "0")
        except OSError:
            return None
        return leaf
    return None


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo
    if "\\" not in field:
        return field
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def _cgroup_mounts(mountinfo: str) -> list[tuple[str, str, str, set[str]]]:
    """(fstype, mount point, root in the hierarchy, v1 controllers) per mount."""
    mounts = []
    try:
        with open(mountinfo, encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return []
    for line in lines:
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields = left.split()
        rest = right.split()
        if len(fields) < 5 or len(rest) < 3 or rest[0] not in ("cgroup", "cgroup2"):
            continue
        options = set(rest[2].split(","))
        mounts.append((rest[0], _unescape(fields[4]), _unescape(fields[3]), options))
    return mounts


def _cgroup_paths(proc_cgroup: str) -> dict[str, str]:
    """controller -> this process's cgroup path; "" is the v2 hierarchy."""
    paths: dict[str, str] = {}
    try:
        with open(proc_cgroup, encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return paths
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if parts[0] == "0" and parts[1] == "":
            paths[""] = parts[2]
        else:
            for name in parts[1].split(","):
                paths[name] = parts[2]
    return paths


def _inside(mount: str, root: str, path: str) -> str | None:
    """The directory of cgroup ``path`` under a mount of hierarchy ``root``."""
    if root == "/":
        rel = path
    elif path == root or path.startswith(root.rstrip("/") + "/"):
        rel = path[len(root) :]
    else:
        return None
    return os.path.normpath(mount + "/" + rel.lstrip("/"))


def _probe_v1(mounts: list[tuple[str, str, str, set[str]]], paths: dict[str, str]) -> Backend | None:
    parents: dict[str, str] = {}
    problems: dict[str, str] = {}
    seen = False
    for fstype, mount, root, options in mounts:
        if fstype != "cgroup":
            continue
        for controller in (MEMORY, PIDS, CPU, CPUACCT):
            if controller not in options or controller in parents:
                continue
            seen = True
            path = paths.get(controller)
            where = _inside(mount, root, path) if path is not None else None
            if where is None or not os.path.isdir(where):
                problems[controller] = f"this process's cgroup is not visible under {mount}"
            elif not os.access(where, os.W_OK):
                problems[controller] = (
                    f"{where} is not writable by uid {os.geteuid()} (cgroup v1 "
                    f"hierarchies are not delegated to users)"
                )
            else:
                parents[controller] = where
                problems.pop(controller, None)
    if not seen:
        return None
    for controller in (MEMORY, PIDS, CPU, CPUACCT):
        if controller not in parents:
            problems.setdefault(controller, "no cgroup v1 hierarchy has it")
    swap = MEMORY in parents and os.path.exists(os.path.join(parents[MEMORY], "memory.memsw.limit_in_bytes"))
    return Backend(1, parents, problems, swap)


def _probe_v2(
    mounts: list[tuple[str, str, str, set[str]]],
    paths: dict[str, str],
    euid: int,
    scope: str | None = None,
) -> Backend | None:
    for fstype, mount, root, _options in mounts:
        if fstype != "cgroup2":
            continue
        path = paths.get("")
        own = _inside(mount, root, path) if path is not None else None
        if own is None or not os.path.isdir(own):
            problem = f"this process's cgroup is not visible under {mount}"
            return Backend(2, {}, {c: problem for c in CONTROLLERS}, False)
        parent, problem = _v2_parent(own, mount, euid, scope)
        if parent is None:
            return Backend(2, {}, {c: problem for c in CONTROLLERS}, False)
        available = set(_read(os.path.join(parent, "cgroup.controllers")).split())
        parents: dict[str, str] = {CPUACCT: parent}  # cpu.stat is core
        problems: dict[str, str] = {}
        for controller in (MEMORY, PIDS, CPU):
            if controller in available:
                parents[controller] = parent
            else:
                problems[controller] = (
                    f"not available in {parent} (cgroup.controllers: "
                    f"{' '.join(sorted(available)) or 'none'}; on a hybrid host it "
                    f"is bound to a v1 hierarchy)"
                )
        swap = MEMORY in parents and _has_swap_max(parent)
        return Backend(2, parents, problems, swap)
    return None


def _has_swap_max(parent: str) -> bool:
    # memory.swap.max exists in every non-root cgroup when swap accounting is
    # on; the root has none, so look at the parent's own file or any child's
    if os.path.exists(os.path.join(parent, "memory.swap.max")):
        return True
    return os.path.exists("/proc/swaps") and _is_v2_root(parent) and _kernel_swapaccount()


def _kernel_swapaccount() -> bool:
    return "swapaccount=0" not in _read("/proc/cmdline")


def _is_v2_root(directory: str) -> bool:
    # only non-root cgroups have cgroup.type (and cgroup.events, cgroup.kill)
    return not os.path.exists(os.path.join(directory, "cgroup.type"))


def _v2_parent(own: str, mount: str, euid: int, scope: str | None = None) -> tuple[str | None, str]:
    """The v2 directory where this process may make cgroups with controllers."""
    if _is_v2_root(own):
        if os.access(own, os.W_OK):
            return own, ""
        return None, f"the root cgroup {own} is not writable by uid {euid}"
    parent = os.path.dirname(own)
    if (
        own != mount
        and _delegated(parent, euid, scope)
        and not _read(os.path.join(parent, "cgroup.procs")).strip()
    ):
        if os.access(parent, os.W_OK):
            return parent, ""
    problem = (
        f"this process's cgroup {own} holds processes, so cgroup v2 cannot give "
        f"controllers to cgroups beneath it (no internal processes rule), and its "
        f"parent is not an empty cgroup delegated to uid {euid}"
    )
    return None, problem


def _delegated(directory: str, euid: int, scope: str | None = None) -> bool:
    """Whether ``directory`` is a cgroup delegated to this process: systemd's
    attribute on it, the name of the scope this launcher was started in
    (``scope``), or, for a non-root uid, owning its control files."""
    if scope and os.path.basename(directory) == scope:
        return True
    for name in ("trusted.delegate", "user.delegate"):
        try:
            if os.getxattr(directory, name).strip(b"\0") == b"1":
                return True
        except OSError:
            pass
    if euid == 0:
        return False
    try:
        procs = os.stat(os.path.join(directory, "cgroup.procs"))
        subtree = os.stat(os.path.join(directory, "cgroup.subtree_control"))
    except OSError:
        return False
    return procs.st_uid == euid and subtree.st_uid == euid


def _read(path: str) -> str:
    try:
        with open(path, encoding="ascii") as fh:
            return fh.read()
    except (OSError, UnicodeDecodeError):
        return ""


def _write(path: str, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    except OSError as err:
        raise OSError(err.errno, f"write {value!r} to {path}: {err.strerror}") from None
    finally:
        os.close(fd)


def _keyed(text: str) -> dict[str, int]:
    """Parse "key value" lines (memory.events, cpu.stat, pids.events, ...)."""
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        try:
            out[key] = int(value)
        except ValueError:
            pass
    return out


# -- one run's cgroup ------------------------------------------------------------


class RunCgroup:
    """The cgroup (one directory per hierarchy) of one run.

    ``apply`` sets the limits and decides which directories the run joins;
    ``join_paths`` are the files the launcher's child writes ``0`` to;
    ``check`` reads the counters while the run lasts; ``usage`` at the end;
    ``kill`` and ``remove`` afterwards.
    """

    def __init__(self, name: str, version: int, dirs: dict[str, str]) -> None:
        self.name = name
        self.version = version
        self.dirs = dirs  # controller -> directory (several may be equal)
        self.join_paths: list[str] = []
        self.limits: dict[str, Any] = {}
        self._fds: dict[str, int] = {}
        self.pids_samples_peak = 0
        self.cpu_rate = float(len(os.sched_getaffinity(0)) or 1)
        # a prepared sandbox's waiter ran here before the program: its CPU
        # time is subtracted and the memory peak restarts (set_baseline)
        self.base_cpu: dict[str, float] = {}
        self.peak_reset: bool | None = None
        self.base_memory: int | None = None
        self._peak_fd: int | None = None

    # -- set-up ----------------------------------------------------------------

    def apply(self, limits: dict[str, Any]) -> None:
        """Set the limits of a run and choose the directories it joins.

        Args:
            limits: ``memory_bytes``, ``pids_max``, ``cpu_cores``,
                ``cpu_time_ns`` (each may be missing or None).

        Raises:
            OSError: a write failed; the message names the file.
        """
        self.limits = dict(limits)
        memory = limits.get("memory_bytes")
        pids = limits.get("pids_max")
        cores = limits.get("cpu_cores")
        # cpu even without a quota: the run is then one scheduling group, so
        # the launcher (and the rest of the host) competes with the run as a
        # whole, not with each of its busy processes, and polls on time
        used = [c for c in (MEMORY, PIDS, CPUACCT, CPU) if c in self.dirs]
        if self.version == 2:
            self._apply_v2(memory, pids, cores)
            self.join_paths = [os.path.join(self.dirs[CPUACCT], "cgroup.procs")]
        else:
            self._apply_v1(memory, pids, cores)
            seen: list[str] = []
            for controller in used:
                if self.dirs[controller] not in seen:
                    seen.append(self.dirs[controller])
            # tasks, not cgroup.procs: see the module docstring (joining costs)
            self.join_paths = [os.path.join(d, "tasks") for d in seen]
        if cores:
            self.cpu_rate = min(self.cpu_rate, float(cores))
        self._open_counters()

    def _apply_v1(self, memory: int | None, pids: int | None, cores: float | None) -> None:
        if memory is not None:
            d = self.dirs[MEMORY]
            memsw = os.path.join(d, "memory.memsw.limit_in_bytes")
            has_memsw = os.path.exists(memsw)
            try:
                _write(os.path.join(d, "memory.limit_in_bytes"), str(memory))
            except OSError as err:
                if not (has_memsw and err.errno == errno.EINVAL):
                    raise
                # raising a limit set before (a cgroup made ahead): memory +
                # swap may not be below memory, so it goes first
                _write(memsw, str(memory))
                _write(os.path.join(d, "memory.limit_in_bytes"), str(memory))
            if has_memsw:
                _write(memsw, str(memory))  # memory + swap: no swap for the run
            else:
                # without swap accounting, keep reclaim from swapping the run
                _write(os.path.join(d, "memory.swappiness"), "0")
        if pids is not None:
            _write(os.path.join(self.dirs[PIDS], "pids.max"), str(pids))
        if cores:
            d = self.dirs[CPU]
            _write(os.path.join(d, "cpu.cfs_period_us"), str(CPU_PERIOD_US))
            _write(os.path.join(d, "cpu.cfs_quota_us"), str(max(1000, int(cores * CPU_PERIOD_US))))

    def _apply_v2(self, memory: int | None, pids: int | None, cores: float | None) -> None:
        d = self.dirs[CPUACCT]
        if memory is not None:
            _write(os.path.join(d, "memory.max"), str(memory))
            if os.path.exists(os.path.join(d, "memory.swap.max")):
                _write(os.path.join(d, "memory.swap.max"), "0")
            # one OOM kill takes the whole run, as the limit is for the tree
            _write(os.path.join(d, "memory.oom.group"), "1")
        if pids is not None:
            _write(os.path.join(d, "pids.max"), str(pids))
        if cores:
            quota = max(1000, int(cores * CPU_PERIOD_US))
            _write(os.path.join(d, "cpu.max"), f"{quota} {CPU_PERIOD_US}")

    def _counter_files(self) -> dict[str, str]:
        files = {}
        if self.version == 2:
            d = self.dirs[CPUACCT]
            files["cpu"] = os.path.join(d, "cpu.stat")
            if MEMORY in self.dirs:
                files["memory_events"] = os.path.join(d, "memory.events")
            if PIDS in self.dirs:
                files["pids_events"] = os.path.join(d, "pids.events")
                files["pids_current"] = os.path.join(d, "pids.current")
        else:
            if CPUACCT in self.dirs:
                files["cpu"] = os.path.join(self.dirs[CPUACCT], "cpuacct.usage")
            if MEMORY in self.dirs:
                files["memory_events"] = os.path.join(self.dirs[MEMORY], "memory.oom_control")
            if PIDS in self.dirs:
                files["pids_events"] = os.path.join(self.dirs[PIDS], "pids.events")
                files["pids_current"] = os.path.join(self.dirs[PIDS], "pids.current")
        return files

    def _open_counters(self) -> None:
        wanted = set()
        if self.limits.get("memory_bytes") is not None:
            wanted.add("memory_events")
        if self.limits.get("pids_max") is not None:
            wanted.add("pids_events")
        if self.limits.get("cpu_time_ns") is not None:
            wanted.add("cpu")
        for key, path in self._counter_files().items():
            if key in wanted:
                try:
                    self._fds[key] = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                except OSError:
                    pass

    def _counter(self, key: str) -> str:
        fd = self._fds.get(key)
        if fd is not None:
            try:
                return os.pread(fd, 4096, 0).decode("ascii", "replace")
            except OSError:
                return ""
        path = self._counter_files().get(key)
        return _read(path) if path else ""

    # -- while the run lasts -------------------------------------------------------

    def cpu_ns(self) -> int | None:
        text = self._counter("cpu")
        if not text:
            return None
        base = int(self.base_cpu.get("total", 0.0) * 1e9)
        if self.version == 2:
            usec = _keyed(text).get("usage_usec")
            return None if usec is None else max(0, usec * 1000 - base)
        try:
            return max(0, int(text.strip()) - base)
        except ValueError:
            return None

    def set_baseline(self) -> None:
        """Count usage from now on: a prepared sandbox's program starts after
        its waiter (``waiter.py``) did. The CPU time so far is subtracted
        from what ``usage`` and the CPU limit see; the memory peak restarts
        where the kernel allows it (v1 always; v2 from Linux 6.12, where a
        write to ``memory.peak`` restarts the peak seen through that file
        descriptor), else ``peak_reset`` stays False and the peak includes
        the waiter."""
        before = self.usage(cpu_only=True)
        self.base_cpu = {
            key: float(before.get(f"cpu_{key}_sec") or 0.0) for key in ("user", "system", "total")
        }
        if MEMORY not in self.dirs:
            return
        current = "memory.current" if self.version == 2 else "memory.usage_in_bytes"
        directory = self.dirs[CPUACCT] if self.version == 2 else self.dirs[MEMORY]
        value = _read(os.path.join(directory, current)).strip()
        self.base_memory = int(value) if value.isdigit() else None
        try:
            if self.version == 2:
                fd = os.open(os.path.join(self.dirs[CPUACCT], "memory.peak"), os.O_RDWR | os.O_CLOEXEC)
                try:
                    os.write(fd, b"reset")
                except OSError:
                    os.close(fd)
                    raise
                self._peak_fd = fd
            else:
                _write(os.path.join(self.dirs[MEMORY], "memory.max_usage_in_bytes"), "0")
            self.peak_reset = True
        except OSError:
            self.peak_reset = False

    def check(self) -> tuple[str | None, float | None]:
        """Read the counters a limit acts on.

        Returns:
            (reason, delay): the limit that was hit ("memory_limit": the OOM
            killer acted; "pids_limit": a fork or clone was refused;
            "cpu_limit": the tree's CPU time reached the limit) or None, and
            seconds until the next check (None: no need to check again).
        """
        delay: float | None = None
        if "memory_events" in self._fds:
            if self.oom_kills() > 0:
                return "memory_limit", None
            delay = LIMIT_POLL_SEC
        if "pids_events" in self._fds:
            if self.pids_limit_hits() > 0:
                return "pids_limit", None
            delay = LIMIT_POLL_SEC
            current = _read(self._counter_files()["pids_current"]).strip()
            if current.isdigit():
                self.pids_samples_peak = max(self.pids_samples_peak, int(current))
        limit = self.limits.get("cpu_time_ns")
        if limit is not None:
            used = self.cpu_ns()
            if used is not None:
                if used >= limit:
                    return "cpu_limit", None
                # the tree cannot burn more than cpu_rate CPU-s per second, so
                # checking again after remaining/rate never overshoots by more
                # than one poll of CPU_POLL_MIN_SEC
                wait = (limit - used) / 1e9 / self.cpu_rate
                wait = min(max(wait, CPU_POLL_MIN_SEC), CPU_POLL_MAX_SEC)
                delay = wait if delay is None else min(delay, wait)
        return None, delay

    def oom_kills(self) -> int:
        """OOM kills in the run's cgroup (v1 ``memory.oom_control``, v2
        ``memory.events``): ``oom_kill``, or v2's ``oom_group_kill`` when
        only that one counted the kill of the whole group."""
        events = _keyed(self._counter("memory_events"))
        return events.get("oom_kill", 0) or events.get("oom_group_kill", 0)

    def pids_limit_hits(self) -> int:
        return _keyed(self._counter("pids_events")).get("max", 0)

    # -- the end -------------------------------------------------------------------

    def usage(self, cpu_only: bool = False) -> dict[str, Any]:
        """Usage of the run's tree, as JSON-ready numbers (None: unknown).

        ``cpu_only``: the CPU figures alone, before any baseline."""
        out: dict[str, Any] = {"version": self.version, "name": self.name}
        if self.version == 2:
            stat = _keyed(_read(os.path.join(self.dirs[CPUACCT], "cpu.stat")))
            out["cpu_user_sec"] = stat.get("user_usec", 0) / 1e6
            out["cpu_system_sec"] = stat.get("system_usec", 0) / 1e6
            out["cpu_total_sec"] = stat.get("usage_usec", 0) / 1e6
        elif CPUACCT in self.dirs:
            d = self.dirs[CPUACCT]
            user = _read(os.path.join(d, "cpuacct.usage_user")).strip()
            system = _read(os.path.join(d, "cpuacct.usage_sys")).strip()
            total = _read(os.path.join(d, "cpuacct.usage")).strip()
            out["cpu_user_sec"] = int(user) / 1e9 if user.isdigit() else None
            out["cpu_system_sec"] = int(system) / 1e9 if system.isdigit() else None
            out["cpu_total_sec"] = int(total) / 1e9 if total.isdigit() else None
        user, system, total = out.get("cpu_user_sec"), out.get("cpu_system_sec"), out.get("cpu_total_sec")
        if user is not None and system is not None and total and user + system > 0:
            # the user/system split is sampled (ticks), the total is exact:
            # scale the split so that it adds up to the total
            scale = total / (user + system)
            out["cpu_user_sec"], out["cpu_system_sec"] = user * scale, system * scale
        if cpu_only:
            return out
        base = self.base_cpu
        if base:
            for key in ("user", "system", "total"):
                value = out.get(f"cpu_{key}_sec")
                if value is not None:
                    out[f"cpu_{key}_sec"] = max(0.0, value - base[key])
            out["baseline"] = {
                "cpu_total_sec": base["total"],
                "peak_reset": self.peak_reset,
                "memory_bytes": self.base_memory,
            }

        mem = pids = ""
        if self.version == 2:
            d = self.dirs[CPUACCT]
            if MEMORY in self.dirs:
                if self._peak_fd is not None:
                    try:
                        mem = os.pread(self._peak_fd, 64, 0).decode().strip()
                    except OSError:
                        mem = ""
                else:
                    mem = _read(os.path.join(d, "memory.peak")).strip()
            pids = _read(os.path.join(d, "pids.peak")).strip() if PIDS in self.dirs else ""
        else:
            if MEMORY in self.dirs:
                mem = _read(os.path.join(self.dirs[MEMORY], "memory.max_usage_in_bytes")).strip()
            pids = _read(os.path.join(self.dirs[PIDS], "pids.peak")).strip() if PIDS in self.dirs else ""
        out["memory_peak_bytes"] = int(mem) if mem.isdigit() else None
        if pids.isdigit():
            out["pids_peak"] = int(pids)
        elif PIDS in self.dirs and self.pids_samples_peak:
            out["pids_peak"] = self.pids_samples_peak
            out["pids_peak_sampled"] = True
        else:
            out["pids_peak"] = None
        out["oom_kills"] = self.oom_kills() if MEMORY in self.dirs else 0
        out["pids_limit_hits"] = self.pids_limit_hits() if PIDS in self.dirs else 0
        return out

    def procs(self) -> list[int]:
        d = self.dirs.get(CPUACCT) if self.version == 2 else self._any_dir()
        if d is None:
            return []
        return [int(p) for p in _read(os.path.join(d, "cgroup.procs")).split() if p.isdigit()]

    def _any_dir(self) -> str | None:
        for controller in (MEMORY, PIDS, CPUACCT, CPU):
            if controller in self.dirs:
                return self.dirs[controller]
        return None

    def kill(self) -> bool:
        """SIGKILL every process in the cgroup. Returns True if it was empty.

        v2 (5.14+) has ``cgroup.kill``, which the kernel applies to every
        process atomically. Otherwise each listed process is opened as a
        pidfd and signalled only if it is still in this cgroup, so that a pid
        reused by an unrelated process is never hit; a fork racing with this
        pass is caught by the next one (the launcher repeats until empty).
        """
        pids = self.procs()
        if not pids:
            return True
        if self.version == 2:
            kill_file = os.path.join(self.dirs[CPUACCT], "cgroup.kill")
            if os.path.exists(kill_file):
                try:
                    _write(kill_file, "1")
                    return False
                except OSError:
                    pass
        for pid in pids:
            _kill_member(pid, self.name)
        return False

    def close_counters(self) -> None:
        for fd in self._fds.values():
            try:
                os.close(fd)
            except OSError:
                pass
        self._fds.clear()
        if self._peak_fd is not None:
            os.close(self._peak_fd)
            self._peak_fd = None

    def remove(self) -> bool:
        """Remove the directories. Returns False while some are still busy."""
        self.close_counters()
        done = True
        for d in sorted(set(self.dirs.values())):
            try:
                os.rmdir(d)
            except FileNotFoundError:
                pass
            except OSError:
                done = False
        return done


def _kill_member(pid: int, name: str) -> None:
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return
    try:
        # the pidfd pins the process; check it is (still) one of ours
        if "/" + name not in _read(f"/proc/{pid}/cgroup"):
            return
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    except OSError:
        pass
    finally:
        os.close(pidfd)


# -- the launcher's side -------------------------------------------------------------


def pid_namespace_id() -> int:
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return 0


def _is_live_launcher(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return b"stockade.linux.launcher" in fh.read()
    except OSError:
        return False


class RunCgroups:
    """The launcher's cgroups: made ahead of time, handed to runs, removed.

    Args:
        probe_result: the host's cgroups as this process sees them.
        pid: the launcher's pid (part of every name).
    """

    def __init__(self, probe_result: Probe, pid: int | None = None) -> None:
        self.probe = probe_result
        self.pid = os.getpid() if pid is None else pid
        self.ns = pid_namespace_id()
        self.seq = 0
        self.spare: dict[int, RunCgroup] = {}  # version -> made ahead
        self.last_limits: dict[int, dict[str, Any]] = {}  # version -> the last run's
        self.pending: list[RunCgroup] = []     # to kill and remove
        self.enabled_v2 = False
        self.next_retry: float | None = None

    def backends(self) -> list[Backend]:
        return [b for b in (self.probe.v1, self.probe.v2) if b is not None and b.parents]

    def clean_stale(self) -> list[str]:
        """Remove cgroups left by dead launchers of this pid namespace.

        Returns:
            the directories removed.
        """
        removed = []
        for backend in self.backends():
            for parent in sorted(set(backend.parents.values())):
                try:
                    names = os.listdir(parent)
                except OSError:
                    continue
                for name in names:
                    if not name.startswith(NAME_PREFIX):
                        continue
                    parts = name.split("-")
                    if len(parts) != 4 or not all(p.isdigit() for p in parts[1:]):
                        continue
                    ns, pid = int(parts[1]), int(parts[2])
                    if ns != self.ns:
                        continue  # another pid namespace: not ours to judge
                    if pid != self.pid and _is_live_launcher(pid):
                        continue
                    path = os.path.join(parent, name)
                    stale = RunCgroup(name, backend.version, {CPUACCT: path} if backend.version == 2 else {MEMORY: path})
                    for _ in range(20):
                        if stale.kill():
                            break
                        time.sleep(0.005)
                    try:
                        os.rmdir(path)
                        removed.append(path)
                    except OSError:
                        pass
        return removed

    def _backend(self, version: int) -> Backend:
        for backend in self.backends():
            if backend.version == version:
                return backend
        raise OSError(2, f"no usable cgroup v{version} hierarchy for the launcher")

    def _make(self, version: int) -> RunCgroup:
        backend = self._backend(version)
        if version == 2 and not self.enabled_v2:
            self._enable_v2(backend)
        for _attempt in range(100):
            name = f"{NAME_PREFIX}{self.ns}-{self.pid}-{self.seq}"
            self.seq += 1
            dirs: dict[str, str] = {}
            made: dict[str, str] = {}
            try:
                for controller, parent in backend.parents.items():
                    path = made.get(parent)
                    if path is None:
                        path = os.path.join(parent, name)
                        try:
                            os.mkdir(path)
                        except OSError as err:
                            raise OSError(err.errno, f"mkdir {path}: {err.strerror}") from None
                        made[parent] = path
                    dirs[controller] = path
            except OSError as err:
                for path in made.values():
                    try:
                        os.rmdir(path)
                    except OSError:
                        pass
                if isinstance(err, FileExistsError):
                    continue  # a name of this pid still in use: take the next
                raise
            return RunCgroup(name, version, dirs)
        raise OSError(17, f"no free cgroup name for {NAME_PREFIX}{self.ns}-{self.pid}-*")

    def _enable_v2(self, backend: Backend) -> None:
        parent = backend.parents[CPUACCT]
        enabled = set(_read(os.path.join(parent, "cgroup.subtree_control")).split())
        wanted = [c for c in (MEMORY, PIDS, CPU) if c in backend.parents and c not in enabled]
        if wanted:
            _write(os.path.join(parent, "cgroup.subtree_control"), " ".join("+" + c for c in wanted))
        self.enabled_v2 = True

    def take(self, version: int, limits: dict[str, Any]) -> RunCgroup:
        """A cgroup for a run, with its limits set.

        Raises:
            OSError: it could not be made or limited (the run must not start).
        """
        cgroup = self.spare.pop(version, None) or self._make(version)
        self.last_limits[version] = dict(limits)
        if cgroup.limits == limits and cgroup.join_paths:
            return cgroup  # set when it was made ahead (refill)
        cgroup.close_counters()  # set ahead for other limits: set again
        try:
            cgroup.apply(limits)
        except OSError:
            self.release(cgroup)
            raise
        return cgroup

    def refill(self, version: int) -> None:
        """Make the next run's cgroup now, off its launch path."""
        if version in self.spare:
            return
        try:
            cgroup = self._make(version)
        except OSError:
            return
        limits = self.last_limits.get(version)
        if limits is not None:
            # most runs of a caller share their limits: set the last ones now
            try:
                cgroup.apply(limits)
            except OSError:
                cgroup.limits, cgroup.join_paths = {}, []  # take() tries again
        self.spare[version] = cgroup

    def release(self, cgroup: RunCgroup) -> None:
        """Kill what remains in a run's cgroup and remove it (now or later)."""
        cgroup.kill()
        if not cgroup.remove():
            self.pending.append(cgroup)
            if self.next_retry is None:
                self.next_retry = time.monotonic() + 0.01

    def retry(self, now: float) -> None:
        """Another pass over cgroups that were still busy."""
        if self.next_retry is None or now < self.next_retry:
            return
        still = []
        for cgroup in self.pending:
            cgroup.kill()
            if not cgroup.remove():
                still.append(cgroup)
        self.pending = still
        self.next_retry = now + 0.05 if still else None

    def close(self, wait: float = 2.0) -> None:
        """Remove every cgroup of this launcher (at its exit)."""
        for cgroup in self.spare.values():
            self.pending.append(cgroup)
        self.spare.clear()
        deadline = time.monotonic() + wait
        while self.pending and time.monotonic() < deadline:
            self.next_retry = 0.0
            self.retry(time.monotonic())
            if self.pending:
                time.sleep(0.01)
