"""What the manager calls for the file-system policy, once per run.

``plan_run`` before the launch (resolve the rules, set the presets'
variables), then ``mounts_for`` (first tier) or ``grants_for`` (second
tier), ``protection_rows`` for the result, ``after_run`` once the program's
tree is gone (the guard); ``check_disabled`` for mode ``disabled``.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from ..errors import PolicyError
from ..result import Protection, Violation
from . import presets as _presets
from .mounts import Mount, plan_mounts
from .policy import FsPlan, own_installation, resolve
from .ruleset import translate
from .watch import Destination, MountWatch, Trip

if TYPE_CHECKING:
    from ..config import SandboxConfig

log = logging.getLogger(__name__)


def plan_run(
    config: SandboxConfig,
    *,
    workspace: str,
    cwd: str,
    system: Iterable[str],
    env: dict[str, str],
    second_tier: bool,
) -> FsPlan:
    """Resolve the run's path rules and add the presets' variables to ``env``
    (the policy's and the call's own variables win).

    Raises:
        PolicyError: a rule cannot be kept, or it hides the working directory.
    """
    plan = resolve(
        config,
        workspace=workspace,
        system=system,
        home=os.path.expanduser("~"),
        environ=os.environ,
        guard_protected=second_tier and "protected_paths" in config.allow_degraded,
        check_replaced=not second_tier,
        own=own_installation(),
    )
    if not plan.visible(cwd):
        raise PolicyError(
            f"cwd {cwd!r} is hidden by the path rules", key="hidden", value=cwd
        )
    if second_tier:
        t0 = time.monotonic()
        _record_metadata(plan)
        plan.elapsed_ms += (time.monotonic() - t0) * 1000
    for key, value in plan.env.items():
        env.setdefault(key, value)
    return plan


# Rules whose entries the second tier records (metadata.py): those the
# policy names, not the system's or an installation's (root's own files,
# which the sandbox uid cannot change).
_RECORDED_ORIGINS = ("read_only", "hidden", "protected")


def _record_metadata(plan: FsPlan) -> None:
    """Second tier: record the mode, owner, times and xattrs of each
    read-only, hidden and protected path, and of the direct entries of each
    protected directory (one listing; a file there made executable is
    moved aside after the run, like a planted hook)."""
    for rule in plan.rules.values():
        if rule.origin not in _RECORDED_ORIGINS:
            continue
        plan.metadata.record(rule.path)
        if rule.origin == "protected" and rule.is_dir:
            try:
                with os.scandir(rule.path) as entries:
                    names = [e.path for e in entries]
            except OSError:
                continue
            for path in names:
                plan.metadata.record(path, hook=True)


def mounts_for(
    plan: FsPlan,
    installations: Iterable[str],
    cleanup: list[str],
    empty_file: EmptyFile | None = None,
) -> list[Mount]:
    """First tier: the mounts of the rules, with the installations the
    command needs (``resolve.py``) added read-only. ``empty_file``: the
    hidden files' stand-in to reuse (a manager keeps one, so that its runs'
    mount views stay alike); else one is made for this run."""
    t0 = time.monotonic()
    for path in installations:
        plan.add_installation(path)
    mounts = plan_mounts(plan, empty_file=empty_file or EmptyFile(cleanup))
    plan.destinations = [
        Destination(m.dest, _dest_ident(plan, m), m.watch)
        for m in mounts
        if m.watch is not None
    ]
    plan.elapsed_ms += (time.monotonic() - t0) * 1000
    return mounts


def _dest_ident(plan: FsPlan, mount: Mount) -> tuple[int, int] | None:
    # a hidden file's mount carries the stand-in's identity, not its own
    rule = plan.rules.get(mount.dest)
    return rule.ident if rule is not None else mount.ident


def start_watch(plan: FsPlan | None) -> MountWatch | None:
    """First tier: watch the host paths the run's mounts sit on, before the
    run starts (``watch.py``); None when the policy places no such mount.

    Raises:
        SandboxUnavailableError: inotify cannot be set up.
    """
    if plan is None or not plan.destinations:
        return None
    return MountWatch(plan.watched())


def stale_destinations(
    prepared: list[Destination], now: list[Destination]
) -> Destination | None:
    """A destination whose identity differs between a prepared sandbox's
    plan and a run's (the path was replaced in between), or None."""
    before = {d.path: d.ident for d in prepared}
    for dest in now:
        if dest.path not in before or before[dest.path] != dest.ident:
            return dest
    return None


def grants_for(plan: FsPlan, installations: Iterable[str]) -> list[dict[str, object]]:
    """Second tier: the rules as ``landlock.ruleset_spec`` items."""
    t0 = time.monotonic()
    for path in installations:
        plan.add_installation(path)
    translation = translate(plan)
    plan.notes.extend(
        f"tier landlock: {path} accepts no new entries: it holds a read-only or "
        "hidden path, and Landlock rights cover whole trees (docs/filesystem.md)"
        for path in translation.fixed
    )
    plan.elapsed_ms += (time.monotonic() - t0) * 1000
    return [grant.spec() for grant in translation.grants]


def check_disabled(config: SandboxConfig, env: dict[str, str]) -> None:
    """Mode ``disabled`` enforces no path rule: explicit ones are refused;
    presets only set their variables.

    Raises:
        PolicyError: the policy has read_only, writable or hidden paths.
    """
    for key in ("read_only", "writable", "hidden"):
        if getattr(config, key):
            raise PolicyError(
                f"{key}: mode 'disabled' enforces no path rules; use another mode or "
                f"drop the rule",
                key=key,
                value=list(getattr(config, key)),
            )
    expansion = _presets.expand(
        config.presets, home=os.path.expanduser("~"), environ=os.environ
    )
    for key, value in expansion.env.items():
        env.setdefault(key, value)


EMPTY_PREFIX = "stockade-fs-"


def _start_time(pid: int) -> str | None:
    """The process's start time (clock ticks since boot), or None if gone."""
    from ..linux.reaper import stat_fields

    fields = stat_fields(pid)
    return fields[19].decode() if fields is not None and len(fields) > 19 else None


def _owner_tag() -> str:
    from ..linux.cgroups import pid_namespace_id

    pid = os.getpid()
    return f"{pid_namespace_id()}-{pid}-{_start_time(pid) or 0}-"


def remove_stale_empty_files(directory: str | None = None) -> list[str]:
    """Remove the directories of ``EmptyFile`` that a dead process left
    (a caller killed with SIGKILL cleans nothing up).

    A directory's name carries its owner's pid namespace, pid and start
    time; one is stale when that pid, in this pid namespace, is gone or is
    another process now (another start time). Directories of other pid
    namespaces or other users, older names without the owner, and anything
    but the one empty file are left alone.
    """
    from ..linux.cgroups import pid_namespace_id

    directory = directory or tempfile.gettempdir()
    ns = str(pid_namespace_id())
    removed = []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    for name in names:
        if not name.startswith(EMPTY_PREFIX):
            continue
        parts = name[len(EMPTY_PREFIX):].split("-")
        if len(parts) != 4 or not all(p.isdigit() for p in parts[:3]) or parts[0] != ns:
            continue
        pid, started = int(parts[1]), parts[2]
        if _start_time(pid) == started:
            continue  # its owner is alive
        path = os.path.join(directory, name)
        try:
            st = os.lstat(path)
            if st.st_uid != os.geteuid() or not os.path.isdir(path) or os.path.islink(path):
                continue
            entries = os.listdir(path)
            if entries not in ([], ["hidden"]):
                continue
            if entries:
                os.unlink(os.path.join(path, "hidden"))
            os.rmdir(path)
            removed.append(path)
        except OSError:
            continue
    return removed


class EmptyFile:
    """The empty, mode 000 file bound over hidden files on the first tier:
    made on first use, one per run; its directory goes to ``cleanup``.
    The directory's name tells its owner (``remove_stale_empty_files``): the
    first one a process makes removes those of dead owners."""

    _swept = False

    def __init__(self, cleanup: list[str]) -> None:
        self._cleanup = cleanup
        self._made: tuple[str, tuple[int, int]] | None = None

    def __call__(self) -> tuple[str, tuple[int, int]]:
        if self._made is not None:
            path, (dev, ino) = self._made
            try:
                st = os.lstat(path)
                if (st.st_dev, st.st_ino) != (dev, ino) or st.st_size or st.st_mode & 0o777:
                    raise FileNotFoundError(path)
            except OSError:
                self._made = None  # removed or changed behind our back: a new one
        if self._made is None:
            if not EmptyFile._swept:
                EmptyFile._swept = True
                remove_stale_empty_files()
            directory = tempfile.mkdtemp(prefix=EMPTY_PREFIX + _owner_tag())
            self._cleanup.append(directory)
            # bubblewrap, running as the sandbox uid, resolves the source path
            os.chmod(directory, 0o711)
            path = os.path.join(directory, "hidden")
            flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC
            fd = os.open(path, flags, 0o000)
            try:
                st = os.fstat(fd)
            finally:
                os.close(fd)
            self._made = (path, (st.st_dev, st.st_ino))
        return self._made


def protection_rows(plan: FsPlan, *, second_tier: bool) -> list[Protection]:
    """Result rows: ``path_rules`` and ``protected_paths``."""
    how = "Landlock rules" if second_tier else "mounts"
    if second_tier and plan.metadata:
        # Landlock does not cover chmod, chown, utime or xattrs (metadata.py)
        how += (
            "; their mode, owner, times and xattrs are not kept during the run, "
            "and put back after it"
        )
    elif not second_tier and plan.destinations:
        how += "; a host rename over one ends the run"
    rows = [Protection("path_rules", "enforced", f"{plan.summary()} ({how})")]

    def short(path: str) -> str:
        inside = path.startswith(plan.workspace + "/")
        return os.path.relpath(path, plan.workspace) if inside else path

    names = [short(p) for p in plan.protected]
    guarded = [short(p) for p in plan.guarded]
    if not names and not guarded:
        rows.append(Protection("protected_paths", "off", "none configured or present"))
        return rows
    parts = []
    if names:
        parts.append(f"read-only: {', '.join(names)}")
    if guarded:
        parts.append(f"checked after the run: {', '.join(guarded)}")
    if plan.guard.scans:
        # gitdirs.py: gitlinks' repositories, .git/modules, a bare layout
        parts.append("other git directories found after the run checked")
    # paths that exist but are only checked after the run (a symbolic link;
    # the second tier when the policy accepts it) are writable during it
    degraded = any(w.snapshot is not None for w in plan.guard.watches)
    detail = "; ".join(parts)
    if degraded:
        detail += " (existing ones writable during the run, restored after it)"
    elif second_tier and names:
        detail += (
            " (their mode, owner and times put back after the run; a file in a "
            "protected directory made executable is moved aside)"
        )
    rows.append(
        Protection("protected_paths", "degraded" if degraded else "enforced", detail)
    )
    return rows


def check_interrupted(plan: FsPlan | None, run_id: str, *, over: bool) -> None:
    """The guard's check for a run the caller interrupted (cancelled task,
    Ctrl-C, a signal to the CLI). The run was killed and its exit awaited
    (``_io.STOP_WAIT_SEC``); when its exit is known (``over``) the check runs
    as after a normal run and each finding is logged, since no result is
    returned. Otherwise checking would prove nothing while its processes may
    still write, so the unchecked paths are named instead.
    """
    if plan is None or not plan.checked_after():
        return
    if not over:
        warn_unchecked(plan)
        return
    _violations, notes, _ms = after_run(plan, run_id)
    for note in notes:
        log.warning("run %s was interrupted; %s", run_id, note)


def warn_unchecked(plan: FsPlan | None) -> None:
    """Name the protected paths of a run whose end could not be awaited.

    TODO(#6): a run the launcher did not report as over within
    ``_io.STOP_WAIT_SEC`` of the kill stays unchecked; this warning says so.
    """
    if plan is None or not plan.checked_after():
        return
    paths = ", ".join(
        [os.path.join(w.root, *w.parts) for w in plan.guard.watches]
        + [r.path for r in plan.metadata.records]
    )
    log.warning(
        "the run was interrupted before it ended; protected paths it "
        "could have created or changed were not checked: %s",
        paths,
    )


def trip_report(
    trips: list[Trip], *, killed: bool
) -> tuple[list[Violation], list[str]]:
    """Violations and notes for watched paths that changed on the host
    during a run (``watch.py``); ``killed``: the run was ended for it."""
    violations, notes = [], []
    seen: set[str] = set()
    action = "run ended" if killed else "reported (the run had ended)"
    for trip in trips:
        if trip.path in seen:
            continue
        seen.add(trip.path)
        what = f"{trip.path}: {trip.what}; {trip.how} on the host"
        violations.append(Violation("filesystem", what, action))
    notes.append(
        "filesystem: a path the policy covers with a mount changed on the host during "
        "the run; that undoes the sandbox's mount over it (the run could then see or "
        "write the new file), so the run was ended. Protected paths were checked after "
        "it as if the run had made them."
        if killed
        else "filesystem: a path the policy covers with a mount changed on the host "
        "as the run ended; protected paths were checked after it as if the run had "
        "made them."
    )
    return violations, notes


def after_run(
    plan: FsPlan | None, run_id: str
) -> tuple[list[Violation], list[str], float]:
    """The guard's check, once the run's processes are gone.

    Returns:
        (violations, notes, milliseconds spent).
    """
    if plan is None or not plan.checked_after():
        return [], [], 0.0
    t0 = time.monotonic()
    violations, notes = [], []
    for found in plan.guard.check(run_id):
        violations.append(
            Violation("filesystem", f"{found.path}: {found.what}", found.action)
        )
        notes.append(f"protected: {found.path} {found.what}; {found.action}")
    for found in plan.metadata.check(run_id):
        violations.append(
            Violation("filesystem", f"{found.path}: {found.what}", found.action)
        )
        notes.append(
            f"tier landlock: {found.path} {found.what} (Landlock does not cover "
            f"chmod, chown, utime or xattrs); {found.action}"
        )
    return violations, notes, (time.monotonic() - t0) * 1000
