"""SandboxManager: policy -> launch -> supervise -> result.

``execute`` and ``execute_async`` take the same arguments and return the
same ``SandboxResult``; many ``execute_async`` runs proceed concurrently on
one event loop, and ``execute`` may be called from many threads.
"""

from __future__ import annotations

import io as _stdio
import json
import logging
import os
import resource
import shlex
import shutil
import signal as _signal
import socket
import sys
import tempfile
import threading
import time
import uuid
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any

from . import _io
from . import pool as _pool
from .audit import ExecutionLog, resolve_log_path
from .config import MIB, SandboxConfig, SandboxMode, check_timeout
from .errors import CommandError, PolicyError, SandboxUnavailableError
from .fs import policy as _fs
from .fs import run as _fsrun
from .linux import bwrap as _bwrap
from .linux import landlock as _landlock
from .linux import limits as _limits
from .linux import seccomp as _seccomp
from .linux import tiers as _tiers
from .linux.client import shared_launcher
from .linux import waiter as _waiter
from .linux.launcher import FD_FIRST_BIND, FD_JSON_STATUS, remove_tree
from .linux.resolve import Resolution, resolve_command
from .network import policy as _netpolicy
from .result import PYTHONPATH_NOTE, Protection, SandboxResult, Termination, Violation

if TYPE_CHECKING:  # imported when a run first needs the proxy: it pulls in asyncio
    from .network.proxy import NetworkProxy, RunTraffic

log = logging.getLogger(__name__)

# Variables taken from the caller's environment by default. Everything else
# must be named (SandboxConfig.env_passthrough) or given (env=...).
ENV_ALLOWLIST = ("PATH", "LANG", "LANGUAGE", "TERM", "TZ")
ENV_ALLOWLIST_PREFIXES = ("LC_",)
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"

StdinArg = bytes | str | int | IO[Any] | None


@dataclass
class _Prepared:
    run_id: str
    command: list[str]
    config: SandboxConfig
    spec: dict[str, Any]
    cwd: str
    protections: list[Protection]
    limits: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    cleanup: list[str] = field(default_factory=list)
    tier: str = _tiers.TIER_NONE
    t0: float = 0.0
    prepare_ms: float = 0.0
    uses_proxy: bool = False
    traffic: RunTraffic | None = None
    fs: _fs.FsPlan | None = None
    timings: dict[str, float] = field(default_factory=dict)
    overhead_tasks: int = 0
    syscall_filter: _seccomp.SyscallFilter | None = None
    use_filter: bool = False
    pooled: bool = False
    pool_note: str | None = None
    # what holds the private tmpfs areas to disk_mb (limits.TMPFS_*)
    tmpfs: str = _limits.TMPFS_NONE
    bwrap_version: str = ""


# How long ``SandboxManager.start(wait=True)`` waits for prepared sandboxes.
PREWARM_WAIT_SEC = 30.0


class SandboxManager:
    """Runs commands under one policy.

    Args:
        config: the policy; ``SandboxConfig()`` (moderate, default limits)
            when omitted.
        prewarm: keep this many sandboxes of the policy prepared ahead of
            time (``stockade.pool``), so that a run pays little more than
            the exec of its program. Each still serves one run only. They
            are prepared for ``config.workspace`` at once, or else for the
            workspace of the first run; ``close()`` ends them.
        **overrides: fields replacing those of ``config``, validated.

    Raises:
        PolicyError: on an invalid override, or ``prewarm`` out of range or
            with mode ``disabled``.
        SandboxUnavailableError: ``prewarm`` without a system ``python3``
            (the prepared sandboxes' waiter).
    """

    def __init__(
        self, config: SandboxConfig | None = None, *, prewarm: int = 0, **overrides: Any
    ) -> None:
        config = config or SandboxConfig()
        if overrides:
            config = config.with_changes(**overrides)
        self.config = config
        self._prewarm = self._check_prewarm(prewarm, config)
        self._pool: _pool.PreparedPool | None = None
        self._pool_lock = threading.Lock()
        self._pool_holder: list[_pool.PreparedPool] = []
        self._pool_closed = False
        # the stand-in bound over hidden files, one for all runs (same mount
        # view each run, which a prewarmed sandbox needs); removed with us
        self._shared_files: list[str] = []
        self._empty_file = _fsrun.EmptyFile(self._shared_files)
        weakref.finalize(self, _remove_all, self._shared_files)
        if self._prewarm:
            # the pool's sandboxes end with the manager, closed or not
            weakref.finalize(self, _close_pools, self._pool_holder)
        log_path = resolve_log_path(config.execution_log)
        self._log = ExecutionLog(log_path) if log_path else None
        self._launcher = shared_launcher()
        self._proxy: NetworkProxy | None = None
        self._proxy_lock = threading.Lock()
        self._allowlist = (
            config.network.allowlist() if config.network.mode is _netpolicy.NetworkMode.ALLOW else None
        )
        # the last tier decision and protection rows, with what they were
        # computed from (see ``decide`` and ``_protections``)
        self._decided: tuple[Any, SandboxConfig, _tiers.Decision] | None = None
        self._protected: tuple[Any, ...] | None = None
        if config.mode is SandboxMode.DISABLED:
            log.warning(
                "stockade mode 'disabled': commands run WITHOUT namespaces, a mount view or "
                "a syscall filter (the host's files and network are reachable); what applies: "
                "the timeout, the cgroup limits of the whole tree (memory, processes, CPU), "
                "rlimits (file size, open files, CPU), the workspace's disk budget (not /tmp "
                "or HOME), the sandbox uid for a root caller, the scrubbed environment and "
                "the execution log"
            )
        if self._prewarm and config.workspace is not None:
            self._start_pool(os.fspath(config.workspace))

    @staticmethod
    def _check_prewarm(prewarm: int, config: SandboxConfig) -> int:
        if isinstance(prewarm, bool) or not isinstance(prewarm, int):
            raise PolicyError(f"prewarm = {prewarm!r}: must be an integer", key="prewarm", value=prewarm)
        if not 0 <= prewarm <= _pool.MAX_PREWARM:
            raise PolicyError(
                f"prewarm = {prewarm}: must be between 0 and {_pool.MAX_PREWARM}",
                key="prewarm",
                value=prewarm,
            )
        if prewarm and config.mode is SandboxMode.DISABLED:
            raise PolicyError(
                "prewarm: mode 'disabled' has no sandbox to prepare; use prewarm=0",
                key="prewarm",
                value=prewarm,
            )
        if prewarm and _waiter.interpreter() is None:
            raise SandboxUnavailableError(
                "prewarm",
                f"no python3 in {_waiter.SEARCH_PATH} to wait in the prepared sandboxes",
                "install the system's python3 package, or use prewarm=0",
            )
        return prewarm

    # -- public API ----------------------------------------------------------

    def start(self, cwd: str | os.PathLike[str] | None = None, *, wait: bool = False) -> int:
        """Start the launcher now instead of on the first run; with
        ``prewarm``, also prepare the sandboxes for runs in ``cwd`` (its
        workspace), unless they are already being prepared.

        Args:
            cwd: where the runs will be (default: the policy's workspace,
                else the current directory).
            wait: block until all ``prewarm`` sandboxes are ready (at most
                ``PREWARM_WAIT_SEC``); a run that finds none ready goes cold.

        Returns:
            how many prepared sandboxes are ready now.

        Raises:
            CommandError, PolicyError: as ``execute`` would for ``cwd``.
        """
        self._launcher.ensure_started()
        if self._prewarm and self._pool is None and not self._pool_closed:
            self._start_pool(os.fspath(cwd) if cwd is not None else (
                os.fspath(self.config.workspace) if self.config.workspace else os.getcwd()
            ))
        pool = self._pool
        if pool is None:
            return 0
        if wait:
            return pool.wait(pool.size, PREWARM_WAIT_SEC)
        return pool.available()

    def close(self) -> None:
        """End the prepared sandboxes and stop the network proxy, if any.
        Idempotent."""
        with self._pool_lock:
            pool, self._pool = self._pool, None
            self._pool_holder.clear()
            self._pool_closed = True
        if pool is not None:
            pool.close()
        with self._proxy_lock:
            proxy, self._proxy = self._proxy, None
        if proxy is not None:
            proxy.close()

    def __enter__(self) -> SandboxManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> SandboxManager:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def execute(
        self,
        command: Sequence[str] | str,
        cwd: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
        stdin: StdinArg = None,
        capture_output: bool = True,
        timeout: float | None = None,
    ) -> SandboxResult:
        """Run a command in the sandbox and wait for it.

        Args:
            command: argv list; a string is split with ``shlex.split`` (it is
                not given to a shell).
            cwd: working directory; it is the writable workspace unless the
                policy names one (cwd must then lie inside it).
            env: variables added to the scrubbed environment.
            stdin: bytes or str to feed, an open file (with a real
                descriptor) or an int fd to read from, an ``io.BytesIO`` or
                ``io.StringIO`` whose content from its current position is
                fed as data, or None for /dev/null. Anything else (a closed
                descriptor, a bool, an object without ``fileno()``) is a
                CommandError.
            capture_output: capture stdout/stderr into the result (capped at
                ``max_output_bytes`` each); False passes them through to this
                process's stdout/stderr.
            timeout: wall-clock seconds, overriding ``timeout_sec``.

        Raises:
            CommandError, PolicyError, SandboxUnavailableError: before
            anything runs. Failures during the run are results.
        """
        stdin = _check_stdin(stdin, command)
        prepared = self._prepare(command, cwd, env, timeout)
        io: _io.RunIO | None = None
        try:
            io = self._submit(prepared, stdin, capture_output)
            _io.drive_sync(io)
        except BaseException:
            if io is not None:  # it started: check what it may have planted
                _fsrun.check_interrupted(prepared.fs, prepared.run_id, over=io.event is not None)
            raise
        finally:
            self._cleanup(prepared)
            if prepared.uses_proxy and self._proxy is not None:
                prepared.traffic = self._proxy.end_run(prepared.run_id)
        return self._finish(prepared, io)

    async def execute_async(
        self,
        command: Sequence[str] | str,
        cwd: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
        stdin: StdinArg = None,
        capture_output: bool = True,
        timeout: float | None = None,
    ) -> SandboxResult:
        """The asyncio form of ``execute``, same arguments and result.

        Cancelling the awaiting task kills the run.
        """
        stdin = _check_stdin(stdin, command)
        prepared = self._prepare(command, cwd, env, timeout)
        io: _io.RunIO | None = None
        try:
            io = self._submit(prepared, stdin, capture_output)
            await _io.drive_async(io)
        except BaseException:
            if io is not None:  # it started: check what it may have planted
                _fsrun.check_interrupted(prepared.fs, prepared.run_id, over=io.event is not None)
            raise
        finally:
            self._cleanup(prepared)
            if prepared.uses_proxy and self._proxy is not None:
                prepared.traffic = await self._proxy.end_run_async(prepared.run_id)
        return self._finish(prepared, io)

    # -- policy -> spec --------------------------------------------------------

    def _prepare(
        self,
        command: Sequence[str] | str,
        cwd: str | os.PathLike[str] | None,
        env: Mapping[str, str] | None,
        timeout: float | None,
    ) -> _Prepared:
        t0 = time.monotonic()
        config = self.config
        if isinstance(command, str):
            try:
                argv = shlex.split(command)
            except ValueError as err:  # an unbalanced quote
                raise CommandError(f"cannot split the command {command!r}: {err}") from err
        else:
            argv = [
                os.fsdecode(a) if isinstance(a, bytes) else str(a) for a in command
            ]
        if not argv or not argv[0]:
            raise CommandError("empty command: nothing to run", command=argv)
        for i, arg in enumerate(argv):
            if "\0" in arg:
                # execve cannot pass it: say so before anything starts
                raise CommandError(f"command argument {i} contains a NUL byte: {arg!r}", command=argv)
        if timeout is not None:
            timeout = check_timeout(timeout)
        _check_open_files(config.max_open_files)

        run_cwd, workspace = self._directories(cwd)
        run_env = self._environment(env)
        caller_is_root = os.geteuid() == 0
        run_id = uuid.uuid4().hex[:16]

        limits = {
            "timeout_sec": timeout if timeout is not None else config.timeout_sec,
            "cpu_time_sec": config.cpu_time_sec,
            "memory_mb": config.memory_mb,
            "max_processes": config.max_processes,
            "cpu_cores": config.cpu_cores,
            "disk_mb": config.disk_mb,
            "file_size_mb": config.file_size_mb,
            "max_open_files": config.max_open_files,
            "max_output_bytes": config.max_output_bytes,
        }
        # tree limits first: a limit the host cannot enforce fails closed here,
        # judged by what the launcher (which makes the cgroups) may do
        self._launcher.ensure_started()
        limit_plan = _limits.plan(config, workspace=workspace)
        spec: dict[str, Any] = {
            "run_id": run_id,
            "timeout": limits["timeout_sec"],
            "rlimits": limit_plan.rlimits,
        }
        if limit_plan.cgroup is not None:
            spec["cgroup"] = limit_plan.cgroup
        if limit_plan.disk_budget is not None:
            spec["disk_budget"] = limit_plan.disk_budget
        prepared = _Prepared(
            run_id=run_id,
            command=argv,
            config=config,
            spec=spec,
            cwd=run_cwd,
            protections=[],
            limits=limits,
            t0=t0,
        )
        if caller_is_root:
            spec["creds"] = {"uid": config.run_as_uid, "gid": config.run_as_gid}

        if config.mode is SandboxMode.DISABLED:
            _fsrun.check_disabled(config, run_env)
            self._prepare_disabled(prepared, argv, run_env, caller_is_root)
        else:
            # The same decision `stockade doctor` prints; it refuses the run
            # when a protection the policy needs is missing.
            decision = self.decide()
            decision.raise_if_blocked()
            prepared.tier = decision.tier
            # a policy may accept running without the filter where the host
            # cannot give it (allow_degraded); then none is installed
            filter_row = decision.row("syscall_filter")
            prepared.use_filter = filter_row.status == _tiers.ENFORCED
            second = decision.tier == _tiers.TIER_LANDLOCK
            # looked at once per run: the same view feeds the path rules and
            # bubblewrap's options (which add to a copy's lists)
            base = _bwrap.base_plan(config.mode, workspace)
            prepared.fs = _fsrun.plan_run(
                config,
                workspace=workspace,
                cwd=run_cwd,
                system=list(base.visible_ro),
                env=run_env,
                second_tier=second,
            )
            if second:
                self._prepare_landlock(prepared, argv, run_env, workspace, caller_is_root, decision)
            else:
                self._prepare_bwrap(prepared, argv, run_env, workspace, caller_is_root, plan=base)
            prepared.notes.extend(prepared.fs.notes)
            prepared.timings["fs_policy_ms"] = prepared.fs.elapsed_ms
            prepared.protections = self._protections(
                decision, caller_is_root, prepared.syscall_filter
            )
            prepared.protections += _fsrun.protection_rows(prepared.fs, second_tier=second)
        limit_rows = _limits.merge_protections(limit_plan.protections, self._disk_rows(prepared, workspace))
        prepared.protections = _limits.merge_protections(prepared.protections, limit_rows)
        prepared.overhead_tasks = _limits.finalize(prepared.spec, config)
        prepared.prepare_ms = (time.monotonic() - t0) * 1000
        return prepared

    def _disk_rows(self, prepared: _Prepared, workspace: str) -> list[Protection]:
        """The ``disk`` row as this run's sandbox enforces it."""
        config = self.config
        if not config.disk_mb:
            return []
        unbudgeted = []
        if prepared.fs is not None:
            inside = workspace.rstrip("/") + "/"
            unbudgeted = [
                rule.path
                for rule in prepared.fs.writable_roots()
                if rule.path != workspace and not rule.path.startswith(inside)
            ]
        status, detail = _limits.disk_status(
            config, prepared.tmpfs, bwrap_version=prepared.bwrap_version, unbudgeted=unbudgeted
        )
        return [Protection("disk", status, detail)]

    def decide(self) -> _tiers.Decision:
        """The tier and protections this manager's policy gets on this host.

        Probes the host once per process (see ``linux/probe.py``). The
        decision is a function of that probe and the policy alone (both
        immutable): it is computed again only when either is another object
        (a new probe, ``self.config`` replaced).
        """
        config = self.config
        probe = _tiers.probe_for(config)
        cached = self._decided
        if cached is not None and cached[0] is probe and cached[1] is config:
            return cached[2]
        decision = _tiers.decide(probe, config)
        self._decided = (probe, config, decision)
        return decision

    def _directories(self, cwd: str | os.PathLike[str] | None) -> tuple[str, str]:
        config = self.config
        if cwd is not None:
            try:
                cwd = os.fsdecode(cwd)
            except TypeError as err:
                raise CommandError(f"cwd must be a path (str, bytes or os.PathLike), not {cwd!r}") from err
        workspace = None
        if config.workspace:
            given_ws = os.fspath(config.workspace)
            workspace = os.path.realpath(given_ws)
            if not os.path.isdir(workspace):
                message = f"workspace = {given_ws!r}: not an existing directory"
                if not os.path.isabs(given_ws):
                    message += (
                        f" (a relative workspace is resolved against your current directory, "
                        f"{os.getcwd()!r})"
                    )
                raise PolicyError(message, key="workspace", value=given_ws)
        base = cwd if cwd is not None else (workspace or os.getcwd())
        run_cwd = os.path.realpath(base)
        if not os.path.isdir(run_cwd):
            message = f"cwd {base!r} is not an existing directory"
            if cwd is not None and not os.path.isabs(cwd) and workspace:
                # relative paths are the caller's (as in subprocess), which a
                # caller naming a directory of the workspace may not expect
                message += f" (a relative cwd is resolved against your current directory, {os.getcwd()!r})"
                candidate = os.path.join(workspace, cwd)
                if os.path.isdir(candidate):
                    message += f"; did you mean {os.path.normpath(candidate)!r}?"
            raise CommandError(message)
        workspace = workspace or run_cwd
        if run_cwd != workspace and not run_cwd.startswith(workspace.rstrip("/") + "/"):
            raise PolicyError(
                f"cwd {run_cwd!r} lies outside the workspace {workspace!r}",
                key="workspace",
                value=workspace,
            )
        if config.mode is not SandboxMode.DISABLED:
            why = _bwrap.forbidden_workspace(workspace, os.path.expanduser("~"))
            if why:
                raise PolicyError(
                    f"refusing {workspace!r} as the writable workspace: {why}. Run from a "
                    f"project directory, or name one (CLI --workspace DIR, API workspace=DIR)",
                    key="workspace",
                    value=workspace,
                )
        return run_cwd, workspace

    def _environment(self, extra: Mapping[str, str] | None) -> dict[str, str]:
        config = self.config
        env: dict[str, str] = {}
        for name, value in os.environ.items():
            if name in ENV_ALLOWLIST or name.startswith(ENV_ALLOWLIST_PREFIXES):
                env[name] = value
        for name in config.env_passthrough:
            if name in os.environ:
                env[name] = os.environ[name]
        env.update(config.env)
        if extra:
            for name, value in extra.items():
                if not name or "=" in name or "\0" in name:
                    raise PolicyError(
                        f"env: invalid variable name {name!r} (empty, or with '=' or a NUL byte)",
                        key=f"env.{name}",
                        value=value,
                    )
                if "\0" in str(value):
                    raise PolicyError(
                        f"env: the value of {name!r} contains a NUL byte: {str(value)!r}",
                        key=f"env.{name}",
                        value=value,
                    )
                env[name] = str(value)
        env.setdefault("PATH", DEFAULT_PATH)
        env["PATH"] = _dedupe_path(env["PATH"])
        env["HOME"] = _bwrap.HOME_IN_SANDBOX
        return env

    def _prepare_bwrap(
        self,
        prepared: _Prepared,
        argv: list[str],
        env: dict[str, str],
        workspace: str,
        caller_is_root: bool,
        *,
        plan: _bwrap.MountPlan | None = None,
    ) -> None:
        config = self.config
        info = _bwrap.find_bwrap(str(config.bwrap_path) if config.bwrap_path else None)

        if plan is None:
            plan = _bwrap.base_plan(config.mode, workspace)
        fs = prepared.fs
        assert fs is not None
        resolution, extra_ro = _resolve_visible(argv, prepared, env, fs)
        mounts = _fsrun.mounts_for(fs, extra_ro, prepared.cleanup, self._empty_file)
        links = _command_links(resolution, fs, argv, prepared.notes)

        args = _bwrap.build_args(
            config,
            plan,
            workspace=workspace,
            cwd=prepared.cwd,
            mounts=mounts,
            info=info,
            fd_first_bind=FD_FIRST_BIND,
            fd_json_status=FD_JSON_STATUS,
            command_links=links,
        )
        spec = prepared.spec
        if self._allowlist is not None:
            # the proxy's listener: made by the launcher inside the sandbox's
            # namespace; bubblewrap holds the program until it exists
            self._network_proxy()
            block_slot = FD_FIRST_BIND + len(plan.bind_paths)
            args += ["--block-fd", str(block_slot)]
            spec["net_bridge"] = {"port": _netpolicy.PROXY_PORT, "block_slot": block_slot}
            env.update(_netpolicy.proxy_environment())
            prepared.uses_proxy = True
        syscall_filter: _seccomp.SyscallFilter | None = None
        inner_slot: int | None = None
        if prepared.use_filter:
            syscall_filter = _seccomp.filter_for_config(
                config, bwrap_setup=info.has_add_seccomp_fd
            )
            if syscall_filter is not None and syscall_filter.compile().inner_bpf:
                # the filter bubblewrap installs right before it execs the
                # program (seccomp.py): a memfd in the last descriptor slot
                inner_slot = FD_FIRST_BIND + len(plan.bind_paths) + (1 if "net_bridge" in spec else 0)
                args += ["--add-seccomp-fd", str(inner_slot)]
        if len(args) + len(argv) + 4 > _bwrap.MAX_ARGS:
            raise CommandError(
                f"{len(argv)} arguments: bubblewrap accepts at most {_bwrap.MAX_ARGS} in all "
                f"(its options included, {len(args)} here); pass long lists through a file "
                f"or stdin",
                command=argv[:3],
            )
        prepared.bwrap_version = info.version
        prepared.tmpfs = _limits.TMPFS_CAPPED if info.has_size else _limits.TMPFS_UNCAPPED
        if config.disk_mb and info.has_size:
            # the launcher looks at them when the run ends: a full one is disk_limit
            spec["tmpfs_areas"] = {"paths": list(_bwrap.WRITABLE_TMPFS), "bytes": config.disk_mb * MIB}
        spec.update(
            path=info.path,
            argv=["bwrap", "--args", "3", "--", resolution.path, *argv[1:]],
            args_data=args,
            json_status=True,
            bind_paths=plan.bind_paths,
            bind_ids=plan.bind_ids,
            cwd="/",
            env=env,
        )
        if prepared.use_filter:
            self._install_filter(prepared, syscall_filter, trust_monitor=True)
            if inner_slot is not None:
                spec["seccomp"]["inner_slot"] = inner_slot
        if caller_is_root:
            self._add_root_idmaps(prepared, workspace, extra_ro, fs)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("bwrap %s", shlex.join(args))

    @staticmethod
    def _install_filter(
        prepared: _Prepared, syscall_filter: _seccomp.SyscallFilter | None, *, trust_monitor: bool
    ) -> None:
        """Put the mode's seccomp filter into the run's spec (both tiers).

        ``trust_monitor``: bubblewrap's monitor, outside the sandbox, makes
        calls the program may not; in the second tier there is no such
        process and the launcher child's own exec starts the program phase.
        """
        if syscall_filter is None:
            return
        prepared.spec["seccomp"] = syscall_filter.launcher_spec(trust_monitor=trust_monitor)
        prepared.spec["no_new_privs"] = True
        prepared.syscall_filter = syscall_filter
        prepared.notes.extend(syscall_filter.warnings)

    def _add_root_idmaps(
        self, prepared: _Prepared, workspace: str, read_only: Sequence[str], fs: Any
    ) -> None:
        idmaps = self._root_idmaps(workspace, read_only, fs)
        if idmaps:
            prepared.spec["idmaps"] = idmaps
            prepared.notes.extend(m["why"] for m in idmaps)

    def _prepare_landlock(
        self,
        prepared: _Prepared,
        argv: list[str],
        env: dict[str, str],
        workspace: str,
        caller_is_root: bool,
        decision: _tiers.Decision,
    ) -> None:
        """The second tier: the program is exec'd directly, under a Landlock
        ruleset, by a child of the run's monitor (``linux/reaper.py``).

        There is no mount namespace, hence no private tmpfs: HOME and TMPDIR
        point into a per-run directory (0700, owned by the sandbox uid,
        writable by the ruleset, removed after the run), and the host's /tmp
        is not writable.
        """
        config = self.config
        fs = prepared.fs
        assert fs is not None
        resolution, extra_ro = _resolve_visible(argv, prepared, env, fs)
        grants = _fsrun.grants_for(fs, extra_ro)

        run_dir = tempfile.mkdtemp(prefix="stockade-run-")
        home, tmp = os.path.join(run_dir, "home"), os.path.join(run_dir, "tmp")
        try:
            for path in (home, tmp):
                os.mkdir(path, 0o700)
            if caller_is_root:
                for path in (run_dir, home, tmp):
                    os.chown(path, config.run_as_uid, config.run_as_gid)
        except OSError:
            shutil.rmtree(run_dir, ignore_errors=True)
            raise
        prepared.cleanup.append(run_dir)
        # removed by the launcher when the run ends, even if we are gone by then
        prepared.spec["remove_after"] = [run_dir]
        prepared.tmpfs = _limits.TMPFS_RUN_DIR
        env = dict(env, HOME=home, TMPDIR=tmp)

        rules = _landlock.second_tier_rules(
            mode=config.mode.value,
            system=[],
            read_only=[],
            workspace=None,
            run_dir=run_dir,
            paths=grants,
        )
        spec = prepared.spec
        spec.update(
            path=resolution.path,
            argv=argv,
            env=env,
            cwd=prepared.cwd,
            monitor=True,
            json_status=True,
            no_new_privs=True,
            landlock=_landlock.ruleset_spec(abi=decision.landlock_abi, rules=rules, deny_network=True),
        )
        # Cgroups (issue #4) need nothing of their own here: spec["cgroup_procs"]
        # is joined before the monitor forks, so the monitor and the whole tree
        # are in the run's cgroups.
        # The program shares the host's network namespace here: the filter
        # refuses inet, netlink and packet sockets whatever the network
        # policy, and socket(AF_UNIX) below Landlock ABI 9 (socketpair stays).
        # The launcher child execs the program itself: its exec starts the
        # program phase (trust_monitor False).
        if prepared.use_filter:
            syscall_filter = _seccomp.filter_for_config(
                config, tier=decision.tier, landlock_abi=decision.landlock_abi
            )
            self._install_filter(prepared, syscall_filter, trust_monitor=False)
        if caller_is_root:
            # The program itself runs in the launcher child's mount namespace
            # here, so the idmapped ancestors are what it traverses; the
            # ruleset still allows only the paths listed above.
            self._add_root_idmaps(prepared, workspace, extra_ro, fs)
        prepared.notes.append(
            f"tier landlock: HOME={home}, TMPDIR={tmp} (removed after the run); the host's "
            "/tmp is not writable"
        )
        log.debug("landlock ruleset %s", spec["landlock"])

    def _network_proxy(self) -> NetworkProxy:
        """The manager's proxy, started on first use.

        Raises:
            SandboxUnavailableError: it cannot start; the run does not start.
        """
        with self._proxy_lock:
            if self._proxy is None or not self._proxy.running:
                from .network.proxy import NetworkProxy

                proxy = NetworkProxy()
                try:
                    proxy.start()
                except OSError as err:
                    raise SandboxUnavailableError(
                        "network",
                        f"the allowlist proxy cannot start ({err})",
                        "check the process's thread and descriptor limits, or use network "
                        "'none' or 'loopback'",
                    ) from err
                self._proxy = proxy
                # a manager dropped without close() must not leave the
                # proxy's thread, loop and listeners behind; the finalizer
                # holds the proxy, not the manager
                weakref.finalize(self, proxy.close)
            return self._proxy

    def _root_idmaps(
        self, workspace: str, read_only: Sequence[str], fs: _fs.FsPlan
    ) -> list[dict[str, Any]]:
        """Idmapped mounts a root caller needs, deepest path first.

        The program runs as ``run_as_uid``, not as the workspace's owner, so
        a workspace it does not own is idmapped: its owner's files appear as
        the sandbox uid's, and what the sandbox writes belongs to the owner.
        Directories on the way to a bind source that the sandbox uid may not
        traverse (``/root`` is 0700) are idmapped the same way in the
        launcher's private mount namespace, only so that bubblewrap, already
        running as the sandbox uid, can reach the source; only the sources
        themselves are mounted into the sandbox.
        """
        uid, gid = self.config.run_as_uid, self.config.run_as_gid
        maps: dict[str, dict[str, Any]] = {}

        def idmap(path: str, why: str) -> None:
            st = os.stat(path)
            maps.setdefault(path, {
                "path": path,
                "owner": st.st_uid,
                "uid_map": f"{st.st_uid} {uid} 1\n",
                "gid_map": f"{st.st_gid} {gid} 1\n",
                "why": why,
            })

        st = os.stat(workspace)
        if (st.st_uid, st.st_gid) != (uid, gid):
            idmap(
                workspace,
                f"workspace owned by uid {st.st_uid}: idmapped to the sandbox uid {uid}; "
                f"files it writes belong to uid {st.st_uid}",
            )
        # the policy's other writable directories, the outermost of each tree
        for rule in fs.writable_roots():
            path = rule.path
            cover = fs.rule_for(path, strict=True)
            inside = cover is not None and cover.access is rule.access
            if path == workspace or not rule.is_dir or inside:
                continue
            st = os.stat(path)
            if (st.st_uid, st.st_gid) != (uid, gid):
                idmap(path, f"{path} owned by uid {st.st_uid}: idmapped to uid {uid}")
        hidden = _fs.Access.HIDDEN
        sources = [r.path for r in fs.rules.values() if r.access is not hidden]
        for path in dict.fromkeys((workspace, *read_only, *sources)):
            parent = os.path.dirname(path)
            while parent not in ("/", ""):
                if not _may_traverse(os.stat(parent), uid, gid):
                    idmap(parent, f"{parent} idmapped in the launcher only, so that uid {uid} reaches {path}")
                parent = os.path.dirname(parent)
        return sorted(maps.values(), key=lambda m: m["path"].count("/"), reverse=True)

    def _prepare_disabled(
        self,
        prepared: _Prepared,
        argv: list[str],
        env: dict[str, str],
        caller_is_root: bool,
    ) -> None:
        resolution = resolve_command(argv, cwd=prepared.cwd, search_path=env["PATH"], visible=lambda _p: True)
        home = tempfile.mkdtemp(prefix="stockade-home-")
        if caller_is_root:
            os.chown(home, self.config.run_as_uid, self.config.run_as_gid)
        prepared.cleanup.append(home)
        prepared.spec["remove_after"] = [home]
        env = dict(env, HOME=home)
        prepared.spec.update(
            path=resolution.path,
            argv=argv,
            env=env,
            cwd=prepared.cwd,
            new_session=True,
        )
        uid = self.config.run_as_uid if caller_is_root else os.getuid()
        prepared.protections = [
            Protection("namespaces", "off", "mode disabled"),
            Protection("mount_view", "off", "mode disabled: the whole host file system is visible"),
            Protection("syscall_filter", "off", "mode disabled"),
            Protection("network", "off", "mode disabled: the host network is reachable"),
            Protection("environment", "enforced", "scrubbed to an allowlist"),
            Protection("never_root", "enforced" if uid != 0 else "off", f"runs as uid {uid}"),
        ]

    def _protections(
        self,
        decision: _tiers.Decision,
        caller_is_root: bool,
        syscall_filter: _seccomp.SyscallFilter | None = None,
    ) -> list[Protection]:
        # a function of its arguments, the policy and the caller's uid: the
        # last rows serve again while all of them are the same (a new list:
        # the caller extends it)
        uid = self.config.run_as_uid if caller_is_root else os.getuid()
        objects, values = (decision, syscall_filter, self.config), (caller_is_root, uid)
        cached = self._protected
        if (
            cached is not None
            and all(x is y for x, y in zip(cached[0], objects))
            and cached[1] == values
        ):
            return list(cached[2])
        rows = self._protection_rows(decision, caller_is_root, syscall_filter, uid)
        self._protected = (objects, values, tuple(rows))
        return rows

    def _protection_rows(
        self,
        decision: _tiers.Decision,
        caller_is_root: bool,
        syscall_filter: _seccomp.SyscallFilter | None,
        uid: int,
    ) -> list[Protection]:
        rows = [
            Protection(
                row.name,
                _RESULT_STATUS[row.status],
                row.detail + (" (accepted by the policy)" if row.accepted else ""),
                required=row.required,
            )
            for row in decision.rows
        ]
        if decision.tier == _tiers.TIER_LANDLOCK:
            caps = "none held: non-root uid, ambient set cleared, no_new_privs"
        else:
            caps = "all dropped"
            # the namespace tier's network row: what the network policy allows
            rows = [
                Protection(r.name, r.status, _netpolicy.describe(self.config.network), r.required)
                if r.name == "network" and r.status == "enforced" else r
                for r in rows
            ]
        if syscall_filter is not None:
            # the filter's own line: mode, calls allowed, sockets, size
            rows = [
                Protection(
                    r.name, r.status, syscall_filter.protection_detail(), r.required
                )
                if r.name == "syscall_filter" and r.status == "enforced"
                else r
                for r in rows
            ]
        return [
            *rows,
            Protection("environment", "enforced", "scrubbed to an allowlist"),
            Protection("never_root", "enforced", f"runs as host uid {uid}"),
            Protection("capabilities", "enforced", caps),
        ]

    # -- launch ----------------------------------------------------------------

    def _submit(self, prepared: _Prepared, stdin: StdinArg, capture_output: bool) -> _io.RunIO:
        opened: list[int] = []
        ours: dict[str, int | None] = {"stdout": None, "stderr": None, "stdin": None}
        stdin_data: bytes | None = None
        # before anything starts: a host rename over a path a mount sits on,
        # from here on, ends the run (fs/watch.py)
        watch = _fsrun.start_watch(prepared.fs) if "args_data" in prepared.spec else None
        try:
            stdin_child = self._stdin_fd(stdin, opened, ours)
            if isinstance(stdin, str):
                stdin_data = stdin.encode()
            elif isinstance(stdin, bytes):
                stdin_data = stdin
            if capture_output:
                out_r, out_w = os.pipe2(os.O_CLOEXEC)
                err_r, err_w = os.pipe2(os.O_CLOEXEC)
                opened += [out_w, err_w]
                ours["stdout"], ours["stderr"] = out_r, err_r
            else:
                for stream in (sys.stdout, sys.stderr):
                    try:
                        stream.flush()
                    except (AttributeError, ValueError, OSError):
                        pass
                out_w = _fileno(sys.stdout, 1)
                err_w = _fileno(sys.stderr, 2)
            report = None
            if self._prewarm:
                report = self._submit_pooled(prepared, stdin_child, out_w, err_w)
            if report is None:
                report = self._launcher.submit(prepared.spec, stdin_child, out_w, err_w)
                if self._prewarm:
                    self._after_cold_run(prepared)
            on_message = None
            if prepared.uses_proxy:
                on_message = self._bridge_handler(prepared.run_id)
        except BaseException:
            for fd in ours.values():
                if fd is not None:
                    os.close(fd)
            if watch is not None:
                watch.close()
            raise
        finally:
            for fd in opened:
                os.close(fd)
        return _io.RunIO(
            report,
            stdout_fd=ours["stdout"],
            stderr_fd=ours["stderr"],
            stdin_fd=ours["stdin"],
            stdin_data=stdin_data,
            cap=self.config.max_output_bytes,
            on_message=on_message,
            kill_at_cap=self.config.output_limit_action == "kill",
            watch=watch,
        )

    # -- prewarmed sandboxes ---------------------------------------------------

    def _poolable(self, prepared: _Prepared) -> str | None:
        """Why this run cannot use a prepared sandbox (None: it can)."""
        if prepared.tier != _tiers.TIER_NAMESPACES or "args_data" not in prepared.spec:
            return f"the {prepared.tier} tier has no prepared sandboxes"
        if prepared.uses_proxy:
            return "network allowlist runs get their proxy bridge at start"
        return None

    def _submit_pooled(
        self, prepared: _Prepared, stdin_fd: int, out_w: int, err_w: int
    ) -> Any:
        """Give the run to a prepared sandbox; None: run it cold (the reason
        is in ``prepared.pool_note``)."""
        why = self._poolable(prepared)
        if why is not None:
            prepared.pool_note = f"not pooled: {why}"
            return None
        key, chdir = _pool.shape(prepared.spec)
        with self._pool_lock:
            pool = self._pool
            if pool is not None and (pool.pid != os.getpid() or pool.closed):
                pool.close()  # inherited through fork: the parent's
                self._pool = pool = None
                self._pool_holder.clear()
        if pool is None:
            prepared.pool_note = (
                "not pooled: the manager was closed" if self._pool_closed
                else "not pooled: the pool is being prepared"
            )
            return None
        if pool.broken:
            prepared.pool_note = f"not pooled: the pool stopped ({pool.broken})"
            return None
        if pool.key != key:
            prepared.pool_note = (
                f"not pooled: the prepared sandboxes are for another mount view "
                f"(workspace {pool.workspace}; this run needs other paths visible)"
            )
            return None
        stale = self._pool_stale(pool, prepared)
        if stale is not None:
            # their mounts may be undone: none of them may serve a run. A
            # new pool is prepared after this (cold) run.
            with self._pool_lock:
                if self._pool is pool:
                    self._pool = None
                    self._pool_holder.clear()
            pool.close()
            prepared.pool_note = (
                f"not pooled: {stale}; the prepared sandboxes were discarded and "
                f"are prepared again"
            )
            log.info("stockade: prewarm pool discarded: %s", stale)
            return None
        spec = prepared.spec
        request = {
            "op": "go",
            "run_id": prepared.run_id,
            "timeout": spec.get("timeout"),
            "path": spec["argv"][4],
            "argv": spec["argv"][4:],
            # as bubblewrap's --chdir does for a cold run
            "env": {**spec["env"], "PWD": chdir or prepared.cwd},
            "cwd": chdir or prepared.cwd,
        }
        payload = json.dumps(request).encode()
        if len(payload) > _waiter.MAX_REQUEST:
            prepared.pool_note = "not pooled: argv and environment too large for a prepared sandbox"
            return None
        sock = pool.take()
        if sock is None:
            prepared.pool_note = f"not pooled: none of the {pool.size} prepared sandboxes was ready"
            return None
        try:
            socket.send_fds(sock, [payload], [stdin_fd, out_w, err_w])
        except OSError as err:
            sock.close()
            prepared.pool_note = f"not pooled: the prepared sandbox was gone ({err.strerror})"
            return None
        prepared.pooled = True
        return sock

    @staticmethod
    def _pool_stale(pool: _pool.PreparedPool, prepared: _Prepared) -> str | None:
        """Why the pool's sandboxes may no longer keep the run's path rules,
        or None. Called after the run's own watch exists, so that a change
        from here on trips that one: a host rename over a path their mounts
        sit on, since the pool's watch was set up (before their mounts were
        made), or a destination that is no longer the file the pool's
        template was resolved against."""
        if pool.watch is not None:
            pool.watch.read()
            if pool.watch.tripped:
                return f"{pool.watch.tripped[0].describe()} after the sandboxes were prepared"
        if prepared.fs is not None:
            dest = _fsrun.stale_destinations(pool.destinations, prepared.fs.destinations)
            if dest is not None:
                return (
                    f"{dest.path} ({dest.what}) is not the file it was when the sandboxes "
                    f"were prepared"
                )
        return None

    def _after_cold_run(self, prepared: _Prepared) -> None:
        """The first run of a manager without a workspace tells the pool's."""
        if self._pool is None and not self._pool_closed and self._poolable(prepared) is None:
            workspace = (prepared.spec.get("disk_budget") or {}).get("path") or prepared.cwd
            try:
                self._start_pool(prepared.cwd, expect=_pool.shape(prepared.spec)[0])
            except (PolicyError, CommandError, SandboxUnavailableError) as err:
                log.warning("stockade: no prewarm pool for %s: %s", workspace, err)

    def _start_pool(self, cwd: str, expect: Any = None) -> None:
        """Prepare ``prewarm`` sandboxes for runs in ``cwd``'s workspace."""
        python = _waiter.interpreter()
        assert python is not None
        template = self._prepare(_waiter.argv(python, 0), cwd, None, None)
        why = self._poolable(template)
        if why is not None:
            self._cleanup(template)
            log.warning("stockade: prewarm does nothing here: %s", why)
            return
        spec = template.spec
        slot = FD_FIRST_BIND + len(spec.get("bind_paths") or [])
        if (spec.get("seccomp") or {}).get("inner_slot") is not None:
            slot += 1  # after bubblewrap's second filter
        spec["argv"][-1] = str(slot)
        spec["pool"] = {"slot": slot}
        spec["timeout"] = None
        spec["rlimits"] = _waiter.pooled_cpu_limit(spec.get("rlimits") or [])
        spec["run_id"] = f"pool-{template.run_id}"
        key, _chdir = _pool.shape(spec)
        if expect is not None and key != expect:
            # the runs' command needs more visible than the waiter: a pool of
            # this shape would never fit them
            self._cleanup(template)
            log.info("stockade: prewarm: the runs' mount view differs from a prepared one")
            return
        with self._pool_lock:
            if self._pool is not None or self._pool_closed:
                self._cleanup(template)
                return
            # watched from before the launcher makes the sandboxes' mounts,
            # read when a run takes one (_pool_stale)
            watch = _fsrun.start_watch(template.fs)
            try:
                self._pool = _pool.PreparedPool(
                    self._launcher.open_pool,
                    spec,
                    key,
                    self._prewarm,
                    template.cleanup,
                    _remove_tree,
                    watch=watch,
                    destinations=list(template.fs.destinations) if template.fs else [],
                )
            except BaseException:
                if watch is not None:
                    watch.close()
                raise
            self._pool_holder.append(self._pool)

    def _bridge_handler(self, run_id: str) -> Any:
        """Hands the run's listener (from the launcher) to the proxy."""

        def on_message(data: dict[str, Any], fds: list[int]) -> None:
            if data.get("event") == "net_listener" and fds and self._proxy is not None:
                assert self._allowlist is not None
                self._proxy.attach(run_id, self._allowlist, fds[0])
                fds = fds[1:]
            for fd in fds:
                os.close(fd)

        return on_message

    @staticmethod
    def _stdin_fd(stdin: StdinArg, opened: list[int], ours: dict[str, int | None]) -> int:
        if stdin is None:
            fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
            opened.append(fd)
            return fd
        if isinstance(stdin, (bytes, str)):
            r, w = os.pipe2(os.O_CLOEXEC)
            opened.append(r)
            ours["stdin"] = w
            return r
        if isinstance(stdin, int):
            return stdin
        return stdin.fileno()

    def _cleanup(self, prepared: _Prepared) -> None:
        for path in prepared.cleanup:
            _remove_tree(path)

    # -- event -> result -------------------------------------------------------

    def _finish(self, prepared: _Prepared, io: _io.RunIO) -> SandboxResult:
        event = io.event or {"event": "lost"}
        wall = time.monotonic() - prepared.t0
        stdout, stderr = io.out.value(), io.err.value()
        config = prepared.config

        exit_code, sig, termination, error = _outcome(event, prepared, stderr)
        termination = _limits.refine_termination(termination, event)
        usage = _limits.usage(event, prepared.overhead_tasks)
        termination = _rlimit_termination(termination, sig, usage, config)
        # TODO(#2): the second tier's monitor (linux/reaper.py) sees the real
        # wait status and could tell "exited 152" from SIGXCPU; meanwhile
        # both tiers report a status 129-192 as its signal, with this note.
        if termination is Termination.SIGNALED and sig is not None and prepared.spec.get("json_status"):
            prepared.notes.append(
                f"status {128 + sig}: the sandbox reports a program killed by signal {sig} "
                f"and one that exited {128 + sig} alike; reported as signal {sig}"
            )

        violations = [
            Violation(
                v["mechanism"],
                v["what"],
                v["action"],
                int(v["count"]),
                v.get("detail", ""),
            )
            for v in event.get("violations") or []
        ]
        traffic = prepared.traffic
        if traffic is not None:
            for target, count in sorted(traffic.denied.items()):
                violations.append(Violation("network", target, "denied", count))
            if traffic.dropped_records:
                prepared.notes.append(
                    f"network: {traffic.dropped_records} more connections than the "
                    f"{len(traffic.connections)} listed (denials still counted in violations)"
                )
        trips = io.trips
        if trips:
            found, notes = _fsrun.trip_report(trips, killed=event.get("killed") == _io.FS_REPLACED)
            violations += found
            prepared.notes += notes
            if event.get("killed") == _io.FS_REPLACED:
                termination = Termination.SANDBOX_ERROR
                error = (
                    f"the run was ended: {trips[0].describe()} during the run, which undoes "
                    f"the sandbox's mount over it (docs/filesystem.md)"
                )
        if prepared.fs is not None and prepared.fs.checked_after():
            found, notes, guard_ms = _fsrun.after_run(prepared.fs, prepared.run_id)
            violations += found
            prepared.notes += notes
            prepared.timings["fs_guard_ms"] = guard_ms
        prepared.notes += _pool_notes(prepared, event)
        unchecked = (event.get("disk") or {}).get("tmpfs_problems")
        if unchecked and termination is not Termination.SANDBOX_ERROR:
            prepared.notes.append(
                "disk: the private tmpfs areas were not looked at when the run ended ("
                + "; ".join(unchecked)
                + "): their cap still applied, but a full one is not reported as disk_limit"
            )
        times = event.get("times") or {}
        timings = {"prepare_ms": round(prepared.prepare_ms, 3)}
        for key, value in prepared.timings.items():
            timings[key] = round(value, 3)
        for key, value in times.items():
            timings[key] = round(float(value), 3)

        result = SandboxResult(
            run_id=prepared.run_id,
            command=prepared.command,
            termination=termination,
            exit_code=exit_code,
            signal=sig,
            stdout=stdout,
            stderr=stderr,
            wall_time_sec=wall,
            usage=usage,
            mode=config.mode.value,
            tier=prepared.tier,
            limits=prepared.limits,
            protections=prepared.protections,
            violations=violations,
            stdout_truncated=io.out.truncated,
            stderr_truncated=io.err.truncated,
            error=error,
            notes=prepared.notes,
            timings_ms=timings,
            connections=list(traffic.connections) if traffic is not None else [],
            pooled=prepared.pooled,
        )
        if self._log is not None:
            self._log.record(result, cwd=prepared.cwd)
        return result


def _check_open_files(wanted: int) -> None:
    """Refuse, before anything runs, an RLIMIT_NOFILE this process could not
    set in the run (setrlimit would fail with EPERM in the launcher child).

    Raises:
        PolicyError: ``wanted`` is above the caller's hard limit and the caller
            may not raise it (no CAP_SYS_RESOURCE), or above fs.nr_open.
    """
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or wanted <= hard:
        return
    if _has_cap_sys_resource():
        nr_open = _nr_open()
        if nr_open is None or wanted <= nr_open:
            return
        ceiling, why = nr_open, f"fs.nr_open is {nr_open}, the most even a privileged caller may set"
        fix = "raise fs.nr_open (sysctl) or lower max_open_files"
    else:
        ceiling, why = hard, f"this process's RLIMIT_NOFILE hard limit is {hard}, and it may not raise it"
        fix = (
            "lower max_open_files (CLI: --config), or start stockade with a higher "
            "hard limit (ulimit -Hn, LimitNOFILE= of a systemd unit)"
        )
    message = f"max_open_files = {wanted}: above {ceiling}: {why}; {fix}"
    raise PolicyError(message, key="max_open_files", value=wanted)


def _has_cap_sys_resource() -> bool:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) & (1 << _CAP_SYS_RESOURCE))
    except (OSError, ValueError):
        pass
    return False


def _nr_open() -> int | None:
    try:
        with open("/proc/sys/fs/nr_open", encoding="ascii") as fh:
            return int(fh.read())
    except (OSError, ValueError):
        return None


# capability number (linux/capability.h): may raise hard rlimits
_CAP_SYS_RESOURCE = 24


def _remove_all(paths: list[str]) -> None:
    for path in paths:
        shutil.rmtree(path, ignore_errors=True)
    paths.clear()


def _close_pools(holder: list[_pool.PreparedPool]) -> None:
    for pool in holder:
        pool.close()
    holder.clear()


def _pool_notes(prepared: _Prepared, event: Mapping[str, Any]) -> list[str]:
    if not prepared.pooled:
        return [prepared.pool_note] if prepared.pool_note else []
    notes = ["pooled: ran in a sandbox prepared ahead of time (prewarm)"]
    baseline = (event.get("cgroup") or {}).get("baseline") or {}
    held = baseline.get("memory_bytes")
    size = f"{held / (1 << 20):.1f} MiB" if held else "some MiB"
    notes.append(
        f"pooled: peak memory counts the {size} the sandbox's waiter held when the "
        f"program was exec'd; its CPU time is not counted"
    )
    return notes


def _may_traverse(st: os.stat_result, uid: int, gid: int) -> bool:
    if st.st_uid == uid:
        return bool(st.st_mode & 0o100)
    if st.st_gid == gid:
        return bool(st.st_mode & 0o010)
    return bool(st.st_mode & 0o001)


_RESULT_STATUS = {
    _tiers.ENFORCED: "enforced",
    _tiers.DEGRADED: "degraded",
    # the host lacks it (and the policy accepted that): not the same as a
    # protection nobody asked for, and the summary says which it was
    _tiers.UNAVAILABLE: "unavailable",
    _tiers.OFF: "off",
}


def _resolve_visible(
    argv: list[str], prepared: _Prepared, env: Mapping[str, str], fs: _fs.FsPlan
) -> tuple[Any, list[str]]:
    """The program's path, and the installations it needs made visible
    read-only (its own, and absolute PYTHONPATH entries).

    Nothing is shown on the side that lies in or holds a path the policy
    hides (a ``hidden`` rule): a read-only rule there would undo it, so the
    run is refused instead (fail closed).

    Raises:
        PolicyError: a PYTHONPATH entry the sandbox may not show
            (``fs.policy.exposure_refused``: /, /sys, /run, the private
            areas, a home or its hidden directories, ...; a hidden path).
        CommandError: the command's installation (or its interpreter's)
            lies where the sandbox may not show it, or in a hidden path.
    """
    home = os.path.expanduser("~")
    visible = fs.visible
    resolution = resolve_command(argv, cwd=prepared.cwd, search_path=env["PATH"], visible=visible)
    for path in resolution.read_only:
        why = _not_shown(path, fs, home, private=False)
        if why:
            raise CommandError(
                f"{argv[0]}: running it would show {path} read-only, but {why}; "
                f"copy the program elsewhere, run it through an interpreter "
                f"the sandbox sees, or name the directory as a rule (--ro DIR)",
                command=list(argv[:3]),
            )
    extra_ro = list(resolution.read_only)
    prepared.notes.extend(resolution.notes)
    for entry in env.get("PYTHONPATH", "").split(os.pathsep):
        if entry and os.path.isabs(entry) and os.path.exists(entry) and not visible(entry):
            why = _not_shown(entry, fs, home, private=True)
            if why:
                real = os.path.realpath(entry)
                shown = entry if real == entry else f"{entry} ({real})"
                raise PolicyError(
                    f"env PYTHONPATH: the entry {shown} would be made visible read-only, "
                    f"but {why}. Point PYTHONPATH at the package directory itself (the "
                    f"directory holding your modules), or, if you mean to show that "
                    f"directory, name it as a rule (--ro DIR, read_only = [DIR]), "
                    f"which is checked like any rule",
                    key="env.PYTHONPATH",
                    value=entry,
                )
            if entry not in extra_ro:
                extra_ro.append(entry)
                prepared.notes.append(f"{PYTHONPATH_NOTE}{entry} visible read-only")
    return resolution, extra_ro


def _not_shown(path: str, fs: _fs.FsPlan, home: str, *, private: bool) -> str | None:
    """Why ``path`` may not be made visible read-only beside the policy's
    rules (a command's installation, a PYTHONPATH entry), or None: it lies
    in or holds a hidden path (a read-only mount there would undo the rule),
    or ``fs.policy.exposure_refused`` refuses it."""
    real = os.path.realpath(path)
    hidden = fs.hidden_at(path) or fs.hidden_at(real)
    if hidden is not None:
        where = "holds" if hidden.path.startswith(real.rstrip("/") + "/") else "lies in"
        return (
            f"it {where} {hidden.path}, which the policy hides ({hidden.origin} rule): "
            f"showing it would undo the rule hiding {hidden.path}"
        )
    return _fs.exposure_refused(real, home, private=private)


def _command_links(
    resolution: Resolution, fs: _fs.FsPlan, argv: Sequence[str], notes: list[str]
) -> list[tuple[str, str]]:
    """The symbolic links of the command to recreate in the mount view.

    Raises:
        CommandError: a link lies in a hidden path (recreating it there would
            undo the rule) or in /proc (the sandbox's own).
    """
    for link, target in resolution.links:
        if fs.access_of(link) is _fs.Access.HIDDEN or link == "/proc" or link.startswith("/proc/"):
            raise CommandError(
                f"{argv[0]}: the command passes through the link {link} -> {target}, "
                f"which lies in a path the run cannot see; run {target} itself or "
                f"move the link",
                command=list(argv[:3]),
            )
    notes.extend(f"{link} -> {target}: link recreated in the sandbox" for link, target in resolution.links)
    return list(resolution.links)


def _remove_tree(path: str) -> None:
    """rmtree that also removes what the program made unreadable (chmod 000),
    which an unprivileged caller could not remove otherwise; a tree the
    launcher already removed is no error (``launcher.remove_tree``)."""
    remove_tree(path)


def _dedupe_path(value: str) -> str:
    """PATH without its repeated entries (the first of each kept, so the
    lookup order is unchanged)."""
    seen: set[str] = set()
    kept = []
    for entry in value.split(os.pathsep):
        if entry not in seen:
            seen.add(entry)
            kept.append(entry)
    return os.pathsep.join(kept)


def _check_stdin(stdin: Any, command: Any) -> bytes | str | int | None:
    """``stdin`` as ``_submit`` takes it (data, an open fd, or None), checked
    before anything is sent to the launcher: a bad descriptor is this call's
    CommandError, never the launcher connection's failure."""
    accepted = (
        "stdin takes bytes or str data, an io.BytesIO/io.StringIO (its content is fed), "
        "a file with a real descriptor, an int fd, or None"
    )
    argv = [command] if isinstance(command, str) else None
    if stdin is None or isinstance(stdin, (bytes, str)):
        return stdin
    if isinstance(stdin, (bytearray, memoryview)):
        return bytes(stdin)
    if isinstance(stdin, (_stdio.BytesIO, _stdio.StringIO)):
        try:
            return stdin.read()
        except ValueError as err:  # closed
            raise CommandError(f"stdin: cannot read {stdin!r}: {err}", command=argv) from err
    if isinstance(stdin, bool):
        raise CommandError(f"stdin={stdin!r} is not a descriptor; {accepted}", command=argv)
    if isinstance(stdin, int):
        fd = stdin
        what = f"stdin={stdin}"
    else:
        fileno = getattr(stdin, "fileno", None)
        if fileno is None:
            raise CommandError(f"stdin: unsupported type {type(stdin).__name__}; {accepted}", command=argv)
        try:
            fd = fileno()
        except (OSError, ValueError) as err:  # io.UnsupportedOperation, a closed file
            raise CommandError(
                f"stdin: {stdin!r} has no usable descriptor ({err or type(err).__name__}); {accepted}",
                command=argv,
            ) from err
        if not isinstance(fd, int) or isinstance(fd, bool):
            raise CommandError(f"stdin: {stdin!r}.fileno() returned {fd!r}; {accepted}", command=argv)
        what = f"stdin {stdin!r} (fd {fd})"
    try:
        os.fstat(fd)
    except (OSError, OverflowError) as err:
        raise CommandError(f"{what} is not an open descriptor ({err}); {accepted}", command=argv) from err
    return fd


def _fileno(stream: Any, default: int) -> int:
    try:
        return int(stream.fileno())
    except (AttributeError, ValueError, OSError):
        return default


_KILL_REASONS = {
    "timeout": Termination.TIMEOUT,
    "output_limit": Termination.OUTPUT_LIMIT,
    "syscall_denied": Termination.SYSCALL_DENIED,
    "cancelled": Termination.CANCELLED,
    _io.FS_REPLACED: Termination.SANDBOX_ERROR,
    **_limits.KILL_REASONS,
}


def _outcome(
    event: Mapping[str, Any], prepared: _Prepared, stderr: bytes
) -> tuple[int | None, int | None, Termination, str | None]:
    """exit_code, signal, termination and error from the launcher's event."""
    if event.get("event") != "exit":
        return None, None, Termination.SANDBOX_ERROR, "the launcher exited before the run ended"
    setup_error = event.get("setup_error")
    if setup_error:
        message = f"sandbox set-up failed: {setup_error.get('error')}"
        if setup_error.get("step") == "idmap":
            message += (
                " (idmapped mounts need Linux 5.12+ and a file system that supports "
                "them; or give the workspace to run_as_uid, or set run_as_uid to its owner)"
            )
        return None, None, Termination.SANDBOX_ERROR, message

    killed = event.get("killed")
    status = event.get("status")
    # bubblewrap and the second tier's monitor both report the program's
    # status on the json status pipe; their own exit status means nothing.
    uses_status_pipe = bool(prepared.spec.get("json_status"))

    if uses_status_pipe:
        code = event.get("json_exit_code")
        if code is None:
            if killed in _KILL_REASONS:
                return None, _signal.SIGKILL, _KILL_REASONS[killed], None
            if (event.get("cgroup") or {}).get("oom_kills"):
                # the run's cgroup recorded an OOM kill and no status came:
                # the OOM killer chose bubblewrap (or the monitor) itself,
                # e.g. when tmpfs pages, charged to the run, filled it
                return None, _signal.SIGKILL, Termination.MEMORY_LIMIT, None
            if prepared.spec.get("monitor"):
                # the second tier: no bubblewrap, the launcher's own monitor
                monitor = "the second tier's run monitor (stockade's subreaper)"
                message = (
                    f"the run's monitor ended without the program's status "
                    f"({_status_text(status, monitor)}); the launcher killed what "
                    f"was left of the run"
                )
                return None, None, Termination.SANDBOX_ERROR, message
            message = _bwrap_error(stderr) or _status_text(status)
            if event.get("program_started"):
                # the program did start: bubblewrap ended without its status
                return None, None, Termination.SANDBOX_ERROR, (
                    f"bubblewrap ended without the program's status: {message}"
                )
            return None, None, Termination.SANDBOX_ERROR, f"bubblewrap could not start the program: {message}"
        exit_code, sig = _split_code(int(code))
    else:
        exit_code, sig = _decode_status(status)

    if killed in _KILL_REASONS:
        return None, sig if sig is not None else _signal.SIGKILL, _KILL_REASONS[killed], None
    if sig is None:
        return exit_code, None, Termination.EXITED, None
    # A signal alone blames no limit (``_rlimit_termination`` weighs the
    # evidence). SIGSYS in particular is never ours: the filter's kills are
    # the supervisor's SIGKILL, reported above as killed "syscall_denied";
    # a SIGSYS comes from the program (its own filter, kill -SYS) or is an
    # exit status 159 that bubblewrap cannot tell apart from it.
    return None, sig, Termination.SIGNALED, None


# How far short of the CPU-seconds limit the reported usage may be when a
# per-process RLIMIT_CPU signal ended the run: the cgroup counts in
# nanoseconds; rusage is sampled at ticks and was measured 0.1 s short of a
# 1 s limit on a loaded host.
CPU_LIMIT_SLACK_SEC = 0.1
CPU_LIMIT_SLACK_RUSAGE = 0.1  # and this share of the limit, for rusage


def _rlimit_termination(
    termination: Termination, sig: int | None, usage: Any, config: SandboxConfig
) -> Termination:
    """A signal of a per-process rlimit, blamed on the limit only with evidence.

    bubblewrap and the second tier's monitor report a program killed by
    signal N as the status 128+N, so ``exit 152`` and ``kill -XCPU $$``
    read like SIGXCPU: the signal alone proves nothing.

    * SIGXCPU, or SIGKILL (RLIMIT_CPU's hard limit): ``cpu_limit`` only
      when the policy has ``cpu_time_sec`` and the usage reached it (less
      the slack above). The tree limit's own kill is reported by the
      launcher (killed "cpu_limit") and never reaches here.
    * SIGXFSZ: ``file_size_limit`` when the policy sets a file size
      (RLIMIT_FSIZE); inferred from the signal, see known-limitations.
    * anything else: ``signaled`` with the signal.
    """
    if termination is not Termination.SIGNALED or sig is None:
        return termination
    if sig in (_signal.SIGXCPU, _signal.SIGKILL) and config.cpu_time_sec is not None:
        limit = config.cpu_time_sec
        slack = CPU_LIMIT_SLACK_SEC
        if not usage.source.startswith("cgroup"):
            slack += CPU_LIMIT_SLACK_RUSAGE * limit
        if usage.cpu_total_sec >= limit - slack:
            return Termination.CPU_LIMIT
    if sig == _signal.SIGXFSZ and config.file_size_mb is not None:
        return Termination.FILE_SIZE_LIMIT
    return termination


def _split_code(code: int) -> tuple[int | None, int | None]:
    """bubblewrap reports a program killed by signal N as 128+N."""
    if 128 < code < 128 + 65:
        return None, code - 128
    return code, None


def _decode_status(status: int | None) -> tuple[int | None, int | None]:
    if status is None:
        return None, None
    if os.WIFSIGNALED(status):
        return None, os.WTERMSIG(status)
    if os.WIFEXITED(status):
        return os.WEXITSTATUS(status), None
    return None, None


def _status_text(status: int | None, who: str = "bwrap") -> str:
    exit_code, sig = _decode_status(status)
    if sig is not None:
        return f"{who} killed by signal {sig}"
    if exit_code is None:
        return f"{who}: no exit status"
    return f"{who} exited with status {exit_code}"


def _bwrap_error(stderr: bytes) -> str | None:
    for line in reversed(stderr.decode("utf-8", "replace").splitlines()):
        if line.startswith("bwrap:"):
            return line
    return None
