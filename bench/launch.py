#!/usr/bin/env python3
"""Per-launch cost of a stockade run, against a bare spawn and raw bubblewrap.

    sudo .venv/bin/python bench/launch.py [--n 150] [--quick] [--json]

Prints one table per command (``/bin/true`` and ``/usr/bin/python3 -c
pass``), each row a way of running it, timed from a Python loop:

* ``bare``: ``subprocess.run(cmd)``.
* ``raw bwrap + filter``: the same work done by hand: ``bwrap`` started by
  ``subprocess.run`` with stockade's namespaces and mount view, and a seccomp
  filter of the same size built from stockade's tables (``--seccomp FD``).
* ``stockade strict / moderate / permissive``, ``moderate + allowlist``:
  ``SandboxManager(...).execute(cmd, cwd=workspace)``.
* ``moderate, prewarmed``: ``SandboxManager(config, prewarm=N)`` where this
  checkout has it; after a pause that lets the pool refill, and back to back.
* ``1 GiB caller``: ``bare`` and ``moderate`` from a process holding 1 GiB
  (a helper process that allocates and touches it, driven in the same
  round-robin).

Variants run round-robin, in a new shuffled order each round (so that they all
see the same machine load and none always follows the same one), after
warm-up rounds that are thrown away. Then: runs per second with N concurrent
``execute_async`` calls against ``asyncio.create_subprocess_exec``; the
launcher's memory per concurrent run; the issue's targets, judged on the same
figures. ``--json`` prints the same figures as JSON.

As root, the workspace is handed to the sandbox uid (``run_as_uid``) so that
no idmapped mount is needed (``--idmap`` keeps it root-owned), and the raw
bubblewrap baseline runs as that uid too, as stockade's does.

Exit status: 0 when every variant ran (targets missed or not), 1 when a
variant failed, 2 when the raw baseline cannot be set up.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import inspect
import json
import logging
import mmap
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "src"))

from stockade import SandboxConfig, SandboxManager  # noqa: E402
from stockade.linux import seccomp as _seccomp  # noqa: E402
from stockade.linux import syscall_groups as _groups  # noqa: E402
from stockade.linux.client import shared_launcher  # noqa: E402

COMMANDS: dict[str, list[str]] = {
    "/bin/true": ["/bin/true"],
    "python3 -c pass": ["/usr/bin/python3", "-c", "pass"],
}
GIB = 1 << 30

# Row names, in the order printed.
BARE = "bare"
RAW = "raw bwrap + filter"
STRICT = "stockade strict"
MODERATE = "stockade moderate"
PERMISSIVE = "stockade permissive"
ALLOWLIST = "stockade moderate + allowlist"
PREWARM_PAUSED = "stockade moderate, prewarmed (paused)"
PREWARM_B2B = "stockade moderate, prewarmed (back-to-back)"
BIG_BARE = "bare, 1 GiB caller"
BIG_MODERATE = "stockade moderate, 1 GiB caller"
# --diagnose only: where the difference to the raw baseline comes from
RAW_NO_FILTER = "raw bwrap, no filter"
RAW_AS_ROOT = "raw bwrap + filter, run as root"
DISABLED = "stockade disabled (launcher only)"
FORK = "bare, forking (preexec_fn)"
BIG_FORK = "bare, forking (preexec_fn), 1 GiB caller"
ROWS = (BARE, RAW, STRICT, MODERATE, PERMISSIVE, ALLOWLIST, PREWARM_PAUSED, PREWARM_B2B,
        BIG_BARE, BIG_MODERATE, RAW_NO_FILTER, RAW_AS_ROOT, DISABLED, FORK, BIG_FORK)


def progress(message: str) -> None:
    print(f"[launch.py] {message}", file=sys.stderr, flush=True)


# -- the machine ------------------------------------------------------------


def _first_line(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, cwd=REPO)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if out.returncode == 0 and text else "unknown"


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith(("model name", "Model")):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    distro = "unknown"
    try:
        with open("/etc/os-release") as fh:
            for line in fh:
                if line.startswith("PRETTY_NAME="):
                    distro = line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    commit = _first_line(["git", "rev-parse", "--short", "HEAD"])
    try:
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10, cwd=REPO,
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        dirty = ""
    if commit != "unknown" and dirty:
        commit += " (with uncommitted changes)"
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "distro": distro,
        "bwrap": _first_line(["bwrap", "--version"]).replace("bubblewrap", "").strip(),
        "python_caller": platform.python_version(),
        "python_sandbox": _first_line(["/usr/bin/python3", "--version"]).replace("Python", "").strip(),
        "cgroup": "v2" if os.path.exists("/sys/fs/cgroup/cgroup.controllers") else "v1",
        "uid": os.geteuid(),
        "stockade_commit": commit,
    }


# -- samples ----------------------------------------------------------------


@dataclass
class Row:
    name: str
    samples: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    unavailable: str | None = None
    pooled: int = 0             # results that said they came from the pool
    pool_known: bool = False    # whether results say so at all
    pool_evidence: dict[bool, str] = field(default_factory=dict)  # what said so, first seen
    phases: dict[str, list[float]] = field(default_factory=dict)

    @property
    def median(self) -> float | None:
        return statistics.median(self.samples) if self.samples else None

    def add_phases(self, timings: dict[str, float], wall_ms: float) -> None:
        prepare = timings.get("prepare_ms")
        launch = timings.get("launch_ms")
        run = timings.get("run_ms")
        if prepare is None or launch is None or run is None:
            return
        parts = {
            "caller prepare": prepare,
            "launcher: spec to exec(bwrap)": launch,
            "bwrap set-up, program, exit": run - launch,
            "rest (hand-over, result)": wall_ms - prepare - run,
        }
        for key, value in parts.items():
            self.phases.setdefault(key, []).append(value)

    def summary(self, bare: float | None, raw: float | None) -> dict[str, Any]:
        out: dict[str, Any] = {"n": len(self.samples)}
        if self.unavailable:
            out["unavailable"] = self.unavailable
        if self.failures:
            out["failures"] = len(self.failures)
            out["first_failure"] = self.failures[0]
        if self.samples:
            med = statistics.median(self.samples)
            out.update(
                median_ms=round(med, 3),
                min_ms=round(min(self.samples), 3),
                max_ms=round(max(self.samples), 3),
                vs_bare=round(med / bare, 3) if bare else None,
                vs_raw=round(med / raw, 3) if raw else None,
            )
        if self.pool_known:
            out["pooled"] = self.pooled
            out["pool_evidence"] = {
                ("pooled" if k else "not pooled"): v for k, v in self.pool_evidence.items()
            }
        if self.phases:
            out["phases_median_ms"] = {
                k: round(statistics.median(v), 3) for k, v in self.phases.items()
            }
        return out


_NOT_POOLED_WORDS = ("not pooled", "empty", "cold", "miss", "unavailable", "fell back", "no pool")


def was_pooled(result: Any) -> tuple[bool | None, str]:
    """Whether a result says it came from the prewarmed pool (None: it does
    not say), and what said so. A boolean field wins; otherwise a note that
    mentions the pool, read as "not pooled" when it also says empty, cold..."""
    for attr in ("pooled", "prewarmed", "from_pool"):
        value = getattr(result, attr, None)
        if isinstance(value, bool):
            return value, f"result.{attr}"
    for note in getattr(result, "notes", []) or []:
        text = note.lower()
        if "pool" in text or "prewarm" in text:
            return not any(word in text for word in _NOT_POOLED_WORDS), note
    return None, ""


# -- the raw baseline -------------------------------------------------------


def baseline_filter(config: SandboxConfig) -> bytes:
    """stockade's seccomp filter for this policy, compiled without the two
    calls it always sends to its supervisor (execve, execveat): with no
    listener they would fail with ENOSYS and nothing could start. Everything
    else is stockade's own table, so the program has the same size and shape;
    denied calls get ENOSYS (a notification nobody listens to)."""
    saved = _groups.NOTIFIED_ALWAYS
    _groups.NOTIFIED_ALWAYS = ()
    try:
        flt = _seccomp.SyscallFilter(
            config.mode.value,
            network=_seccomp.network_policy(config),
            disk_budget=config.disk_mb is not None,
        )
        return flt.compile().bpf
    finally:
        _groups.NOTIFIED_ALWAYS = saved


class RawBwrap:
    """bubblewrap invoked by hand with stockade's namespaces and mount view."""

    def __init__(self, workspace: str, config: SandboxConfig) -> None:
        full_help = subprocess.run(["bwrap", "--help"], capture_output=True, text=True).stdout
        size = str(config.disk_mb * 1024 * 1024) if config.disk_mb else None
        sized = ["--size", size] if size and "--size" in full_help else []
        args = [
            "bwrap",
            "--unshare-user", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
            "--unshare-net", "--unshare-cgroup",
            "--die-with-parent", "--new-session", "--cap-drop", "ALL",
        ]
        if "--disable-userns" in full_help:
            args.append("--disable-userns")
        for path in ("/usr", "/etc", "/opt"):  # moderate's read-only system trees
            if os.path.isdir(path):
                args += ["--ro-bind", path, path]
        for path in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
            if os.path.islink(path):
                args += ["--symlink", os.readlink(path), path]
            elif os.path.isdir(path):
                args += ["--ro-bind", path, path]
        args += ["--proc", "/proc", "--dev", "/dev"]
        for path in ("/tmp", "/var/tmp", "/dev/shm"):
            args += ["--perms", "1777", *sized, "--tmpfs", path]
        args += ["--perms", "0700", *sized, "--tmpfs", "/home/sandbox"]
        args += ["--bind", workspace, workspace, "--remount-ro", "/", "--chdir", workspace]
        self.bpf = baseline_filter(config)
        self.fd = os.memfd_create("bench-seccomp")
        os.write(self.fd, self.bpf)
        self.args = args
        # as stockade: a root caller's sandbox runs as run_as_uid
        self.creds: dict[str, Any] = {}
        if os.geteuid() == 0:
            self.creds = {"user": config.run_as_uid, "group": config.run_as_gid, "extra_groups": []}
        self.env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/home/sandbox"}

    def run(
        self, cmd: list[str], *, seccomp: bool = True, as_root: bool = False, **kwargs: Any
    ) -> subprocess.CompletedProcess[bytes]:
        args = self.args
        if seccomp:
            os.lseek(self.fd, 0, os.SEEK_SET)  # bubblewrap reads the filter from the offset
            args = [*args, "--seccomp", str(self.fd)]
            kwargs["pass_fds"] = [self.fd]
        creds = {} if as_root else self.creds
        return subprocess.run([*args, "--", *cmd], env=self.env, **creds, **kwargs)

    def check(self) -> None:
        """The baseline must run both commands, under the filter."""
        for name, cmd in COMMANDS.items():
            done = self.run(cmd, capture_output=True)
            assert done.returncode == 0, f"raw bwrap + filter: {name} exited {done.returncode}: {done.stderr!r}"
        probe = (
            "import errno, socket\n"
            "try:\n    socket.socket()\nexcept OSError as e:\n"
            "    raise SystemExit(0 if e.errno == errno.ENOSYS else 3)\n"
            "raise SystemExit(4)\n"
        )
        done = self.run(["/usr/bin/python3", "-c", probe], capture_output=True)
        assert done.returncode == 0, (
            f"raw bwrap + filter: the filter does not seem to be in force (probe exited "
            f"{done.returncode}: {done.stderr!r})"
        )


# -- the 1 GiB caller -------------------------------------------------------


def rss_kib(pid: int | str = "self") -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _rollup(pid: int | str) -> dict[str, int]:
    out = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh.read().splitlines()[1:]:
                key, value = line.split(":", 1)
                out[key] = int(value.split()[0])
    except (OSError, ValueError):
        pass
    return out


def pss_kib(pid: int | str = "self") -> int | None:
    """Proportional set size: shared pages divided among their users."""
    return _rollup(pid).get("Pss")


def uss_kib(pid: int | str = "self") -> int | None:
    """Unique set size: pages of this process alone (unmoved by other processes)."""
    rollup = _rollup(pid)
    if "Private_Clean" not in rollup:
        return None
    return rollup["Private_Clean"] + rollup["Private_Dirty"]


def _no_op() -> None:
    pass


def big_caller_worker(workspace: str) -> None:
    """Serve timed runs from a process that holds 1 GiB (touched, one byte a page)."""
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    ballast = bytearray(GIB)
    for i in range(0, GIB, mmap.PAGESIZE):
        ballast[i] = 1
    manager = SandboxManager(SandboxConfig(mode="moderate", execution_log=False))
    manager.start()
    proto.write(json.dumps({"ready": True, "rss_kib": rss_kib()}) + "\n")
    for line in sys.stdin:
        request = json.loads(line)
        cmd = request["cmd"]
        reply: dict[str, Any] = {}
        t0 = time.perf_counter()
        if request["variant"] in ("bare", "fork"):
            # a preexec_fn makes subprocess fork instead of vfork
            hook = _no_op if request["variant"] == "fork" else None
            code = subprocess.run(cmd, cwd=workspace, preexec_fn=hook).returncode
            reply["ms"] = (time.perf_counter() - t0) * 1000
            if code != 0:
                reply["error"] = f"exited {code}"
        else:
            result = manager.execute(cmd, cwd=workspace)
            reply["ms"] = (time.perf_counter() - t0) * 1000
            reply["timings"] = result.timings_ms
            if not result.success:
                reply["error"] = result.summary()
        proto.write(json.dumps(reply) + "\n")
    del ballast


class BigCaller:
    def __init__(self, workspace: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--big-caller-worker", workspace],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        assert self.proc.stdout is not None
        hello = json.loads(self.proc.stdout.readline() or "{}")
        if not hello.get("ready"):
            raise RuntimeError("the 1 GiB caller did not start")
        self.rss_kib = int(hello["rss_kib"])

    def run(self, variant: str, cmd: list[str]) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"variant": variant, "cmd": cmd}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the 1 GiB caller died")
        return json.loads(line)

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(timeout=30)


# -- prewarm ----------------------------------------------------------------


def prewarm_manager(
    config: SandboxConfig, size: int, workspace: str
) -> tuple[SandboxManager | None, str | None]:
    """A manager with a prewarmed pool for ``workspace``, or None and why not."""
    explicit = "prewarm" in inspect.signature(SandboxManager.__init__).parameters
    as_field = "prewarm" in getattr(SandboxConfig, "model_fields", {})
    if not (explicit or as_field):
        return None, "no prewarm support in this checkout"
    try:
        manager = SandboxManager(config.with_changes(workspace=workspace), prewarm=size)
        if hasattr(manager, "start"):
            manager.start(cwd=workspace, wait=True)
        return manager, None
    except TypeError as err:
        return None, f"SandboxManager(config, prewarm={size}): {err}"


# -- the launch table -------------------------------------------------------


class LaunchBench:
    def __init__(self, opts: argparse.Namespace, workspace: str) -> None:
        self.opts = opts
        self.ws = workspace
        base = SandboxConfig(mode="moderate", execution_log=False)
        self.raw = RawBwrap(workspace, base)
        self.managers = {
            STRICT: SandboxManager(SandboxConfig(mode="strict", execution_log=False)),
            MODERATE: SandboxManager(base),
            PERMISSIVE: SandboxManager(SandboxConfig(mode="permissive", execution_log=False)),
            ALLOWLIST: SandboxManager(
                SandboxConfig(mode="moderate", network=["example.org"], execution_log=False)
            ),
        }
        self.pool, self.pool_missing = prewarm_manager(base, opts.prewarm, workspace)
        self.disabled: SandboxManager | None = None
        if opts.diagnose:
            logging.getLogger("stockade.manager").setLevel(logging.ERROR)  # its loud warning
            self.disabled = SandboxManager(SandboxConfig(mode="disabled", execution_log=False))
        self.big: BigCaller | None = None
        if not opts.no_big_caller:
            progress("starting the 1 GiB caller")
            self.big = BigCaller(workspace)
        self.rows = {name: {cmd: Row(name) for cmd in COMMANDS} for name in ROWS}
        if self.pool is None:
            for cmd in COMMANDS:
                self.rows[PREWARM_PAUSED][cmd].unavailable = self.pool_missing
                self.rows[PREWARM_B2B][cmd].unavailable = self.pool_missing
        if self.big is None:
            for name in (BIG_BARE, BIG_MODERATE):
                for cmd in COMMANDS:
                    self.rows[name][cmd].unavailable = "skipped: --no-big-caller"

    # each step runs one variant once (a burst for back-to-back) into its row
    def _bare(self, cmd: list[str], row: Row, keep: bool, fork: bool = False) -> None:
        t0 = time.perf_counter()
        code = subprocess.run(cmd, cwd=self.ws, preexec_fn=_no_op if fork else None).returncode
        ms = (time.perf_counter() - t0) * 1000
        self._record(row, keep, ms, None if code == 0 else f"exited {code}")

    def _raw(self, cmd: list[str], row: Row, keep: bool, **how: bool) -> None:
        t0 = time.perf_counter()
        code = self.raw.run(cmd, **how).returncode
        ms = (time.perf_counter() - t0) * 1000
        self._record(row, keep, ms, None if code == 0 else f"exited {code}")

    def _stockade(self, manager: SandboxManager, cmd: list[str], row: Row, keep: bool) -> Any:
        t0 = time.perf_counter()
        result = manager.execute(cmd, cwd=self.ws)
        ms = (time.perf_counter() - t0) * 1000
        self._record(row, keep, ms, None if result.success else result.summary())
        if keep and result.success:
            row.add_phases(result.timings_ms, ms)
        return result

    def _pooled(self, cmd: list[str], row: Row, keep: bool, burst: int) -> None:
        assert self.pool is not None
        pause = self.opts.pause_ms / 1000
        time.sleep(pause)  # not counted: lets the pool refill
        self._refilled()
        for _ in range(burst):
            result = self._stockade(self.pool, cmd, row, keep)
            flag, evidence = was_pooled(result)
            if flag is not None:
                row.pool_known = True
                row.pool_evidence.setdefault(bool(flag), evidence)
                if keep and flag:
                    row.pooled += 1
        # let it refill before another variant is timed
        time.sleep(pause * (1 + (burst > 1) * self.opts.prewarm))
        self._refilled()

    def _refilled(self) -> None:
        """Not counted: wait until the pool is full again (``start(wait=True)``)."""
        assert self.pool is not None
        start = getattr(self.pool, "start", None)
        if start is not None:
            try:
                start(cwd=self.ws, wait=True)
            except TypeError:
                pass  # an older start() without wait

    def _big(self, variant: str, cmd: list[str], row: Row, keep: bool) -> None:
        assert self.big is not None
        reply = self.big.run(variant, cmd)
        self._record(row, keep, reply["ms"], reply.get("error"))
        if keep and "timings" in reply and "error" not in reply:
            row.add_phases(reply["timings"], reply["ms"])

    @staticmethod
    def _record(row: Row, keep: bool, ms: float, error: str | None) -> None:
        if error is not None:
            row.failures.append(error)
        elif keep:
            row.samples.append(ms)

    def steps(self) -> list[tuple[str, Callable[[list[str], Row, bool], None]]]:
        steps: list[tuple[str, Callable[[list[str], Row, bool], None]]] = [
            (BARE, self._bare),
            (RAW, self._raw),
        ]
        if self.opts.diagnose:
            steps.append((RAW_NO_FILTER, lambda c, r, k: self._raw(c, r, k, seccomp=False)))
            if os.geteuid() == 0:
                steps.append((RAW_AS_ROOT, lambda c, r, k: self._raw(c, r, k, as_root=True)))
            steps.append((DISABLED, lambda c, r, k: self._stockade(self.disabled, c, r, k)))
            steps.append((FORK, lambda c, r, k: self._bare(c, r, k, fork=True)))
            if self.big is not None:
                steps.append((BIG_FORK, lambda c, r, k: self._big("fork", c, r, k)))
        for name, manager in self.managers.items():
            steps.append((name, lambda c, r, k, m=manager: self._stockade(m, c, r, k)))
        if self.pool is not None:
            steps.append((PREWARM_PAUSED, lambda c, r, k: self._pooled(c, r, k, 1)))
            steps.append((PREWARM_B2B, lambda c, r, k: self._pooled(c, r, k, self.opts.burst)))
        if self.big is not None:
            steps.append((BIG_BARE, lambda c, r, k: self._big("bare", c, r, k)))
            steps.append((BIG_MODERATE, lambda c, r, k: self._big("moderate", c, r, k)))
        return steps

    @property
    def active(self) -> set[str]:
        return {name for name, _ in self.steps()}

    def run(self) -> None:
        steps = self.steps()
        total = self.opts.warmup + self.opts.n
        progress(f"{len(steps)} variants x {len(COMMANDS)} commands, {self.opts.warmup} warm-up "
                 f"+ {self.opts.n} measured rounds")
        started = time.monotonic()
        rng = random.Random(self.opts.seed)
        for i in range(total):
            keep = i >= self.opts.warmup
            for cmd_name, cmd in COMMANDS.items():
                # a new order each time: a run pays part of the previous
                # sandbox's teardown (namespaces are freed asynchronously), so
                # no variant may always follow the same one
                order = rng.sample(steps, len(steps))
                for name, step in order:
                    row = self.rows[name][cmd_name]
                    if len(row.failures) >= 3:
                        continue  # broken: stop spending time on it
                    try:
                        step(cmd, row, keep)
                    except Exception as err:  # noqa: BLE001 - reported in the row
                        row.failures.append(f"{type(err).__name__}: {err}")
            if i == self.opts.warmup - 1 or (keep and (i - self.opts.warmup + 1) % 25 == 0):
                progress(f"round {i + 1}/{total}, {time.monotonic() - started:.0f} s")

    def close(self) -> None:
        for manager in self.managers.values():
            manager.close()
        if self.pool is not None:
            self.pool.close()
        if self.disabled is not None:
            self.disabled.close()
        if self.big is not None:
            self.big.close()


# -- throughput -------------------------------------------------------------


async def _throughput_once(one: Callable[[], Any], concurrency: int, total: int) -> float:
    remaining = total

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await one()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return total / (time.perf_counter() - t0)


async def throughput(opts: argparse.Namespace, workspace: str) -> list[dict[str, Any]]:
    manager = SandboxManager(SandboxConfig(mode="moderate", execution_log=False))
    cmd = ["/bin/true"]
    failures: list[str] = []

    async def stockade_one() -> None:
        result = await manager.execute_async(cmd, cwd=workspace)
        if not result.success:
            failures.append(result.summary())

    async def bare_one() -> None:
        proc = await asyncio.create_subprocess_exec(*cmd, cwd=workspace)
        if await proc.wait() != 0:
            failures.append(f"bare exited {proc.returncode}")

    for _ in range(3):  # warm up
        await stockade_one()
        await bare_one()
    levels = [int(x) for x in opts.concurrency.split(",") if x.strip()]
    rates: dict[int, dict[str, list[float]]] = {n: {"bare": [], "stockade": []} for n in levels}
    for _ in range(opts.throughput_rounds):  # interleaved, as the launch table
        for n in levels:
            total = max(opts.throughput_runs, 3 * n)
            rates[n]["bare"].append(await _throughput_once(bare_one, n, total))
            rates[n]["stockade"].append(await _throughput_once(stockade_one, n, total))
    manager.close()
    out = []
    for n in levels:
        bare = statistics.median(rates[n]["bare"])
        ours = statistics.median(rates[n]["stockade"])
        out.append({
            "concurrency": n,
            "bare_runs_per_sec": round(bare, 1),
            "stockade_moderate_runs_per_sec": round(ours, 1),
            "ratio": round(ours / bare, 3),
        })
    if failures:
        out.append({"failures": len(failures), "first_failure": failures[0]})
    return out


# -- launcher memory --------------------------------------------------------


def _process_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command name) of every process."""
    table = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as fh:
                text = fh.read()
            comm = text[text.index("(") + 1: text.rindex(")")]
            table[int(name)] = (int(text.rsplit(")", 1)[1].split()[1]), comm)
        except (OSError, ValueError, IndexError):
            continue
    return table


def _bwrap_under(launcher: int) -> tuple[int, list[int]]:
    """How many runs the launcher has (its direct children), and every bwrap
    process below it (each run's monitor and the sandbox's pid 1)."""
    table = _process_table()
    children = [pid for pid, (ppid, _) in table.items() if ppid == launcher]
    bwraps = []
    for pid, (ppid, comm) in table.items():
        if comm != "bwrap":
            continue
        seen = 0
        while ppid > 1 and seen < 8:  # walk up to the launcher
            if ppid == launcher:
                bwraps.append(pid)
                break
            ppid = table.get(ppid, (0, ""))[0]
            seen += 1
    return len(children), bwraps


async def launcher_memory(opts: argparse.Namespace, workspace: str) -> dict[str, Any]:
    manager = SandboxManager(SandboxConfig(mode="moderate", execution_log=False))
    for _ in range(3):  # warm up: whatever the launcher keeps after a run
        await manager.execute_async(["/bin/true"], cwd=workspace)
    launcher = shared_launcher().pid()
    assert launcher is not None
    await asyncio.sleep(0.2)
    idle_rss, idle_uss = rss_kib(launcher), uss_kib(launcher)
    caller_idle = rss_kib()
    k = opts.memory_runs
    tasks = [
        asyncio.ensure_future(manager.execute_async(["sleep", str(opts.memory_sleep)], cwd=workspace))
        for _ in range(k)
    ]
    # (runs, launcher rss, launcher uss, caller rss, pss of the runs' bwrap processes)
    samples: list[tuple[int, int, int, int, int]] = []
    while not all(t.done() for t in tasks):
        running, bwraps = _bwrap_under(launcher)
        samples.append((
            running, rss_kib(launcher), uss_kib(launcher) or 0, rss_kib(),
            sum(pss_kib(pid) or 0 for pid in bwraps),
        ))
        await asyncio.sleep(0.05)
    most = max((s[0] for s in samples), default=0)
    busy = [s for s in samples if s[0] == most] or [(0, idle_rss, idle_uss or 0, caller_idle, 0)]
    peak = {
        "running": most,
        "rss": max(s[1] for s in busy),
        "uss": max(s[2] for s in busy),
        "caller": max(s[3] for s in busy),
        "bwrap_pss": max(s[4] for s in busy),
    }
    results = await asyncio.gather(*tasks)
    manager.close()
    failed = [r.summary() for r in results if not r.success]
    out: dict[str, Any] = {
        "runs": k,
        "all_running_seen": peak["running"] >= k,
        "most_running_seen": peak["running"],
        "launcher_pid": launcher,
        "launcher_rss_idle_kib": idle_rss,
        "launcher_rss_busy_kib": peak["rss"],
        "launcher_rss_per_run_kib": round((peak["rss"] - idle_rss) / k, 1),
        "caller_rss_idle_kib": caller_idle,
        "caller_rss_busy_kib": peak["caller"],
        "caller_rss_per_run_kib": round((peak["caller"] - caller_idle) / k, 1),
        "bwrap_pss_per_run_kib": round(peak["bwrap_pss"] / k, 1),
    }
    if idle_uss is not None:
        out.update(
            launcher_uss_idle_kib=idle_uss,
            launcher_uss_busy_kib=peak["uss"],
            launcher_uss_per_run_kib=round((peak["uss"] - idle_uss) / k, 1),
        )
    if failed:
        out["failures"] = len(failed)
        out["first_failure"] = failed[0]
    return out


# -- targets ----------------------------------------------------------------


def _interval(a: list[float], b: list[float], value: Callable[[float, float], float],
              rounds: int = 1000) -> tuple[float, float]:
    """95% bootstrap interval of value(median(a), median(b))."""
    rng = random.Random(0)
    got = sorted(
        value(statistics.median(rng.choices(a, k=len(a))), statistics.median(rng.choices(b, k=len(b))))
        for _ in range(rounds)
    )
    return got[int(0.025 * rounds)], got[int(0.975 * rounds) - 1]


def targets(rows: dict[str, dict[str, Row]]) -> list[dict[str, Any]]:
    """The issue's targets, judged on the medians of this run.

    Each gets a 95% bootstrap interval of the judged figure: when the limit
    lies inside it, the verdict is within this run's noise and says so.
    """
    out: list[dict[str, Any]] = []

    def judge(what: str, a: str, b: str, cmd: str, kind: str, limit: float) -> None:
        ra, rb = rows[a][cmd], rows[b][cmd]
        if not ra.samples or not rb.samples:
            why = ra.unavailable or rb.unavailable or "no figures"
            out.append({"target": what, "status": "n/a", "detail": why})
            return
        ma, mb = statistics.median(ra.samples), statistics.median(rb.samples)
        if kind == "ratio":  # median(a) <= limit x median(b)
            def fig(x: float, y: float) -> float:
                return x / y
            over_ms = ma - limit * mb
            detail = f"{ma:.2f} vs {limit:.2f} x {mb:.2f} = {limit * mb:.2f} ms: ratio {ma / mb:.3f}"
        else:  # median(a) - median(b) <= limit
            def fig(x: float, y: float) -> float:
                return x - y
            over_ms = ma - mb - limit
            detail = f"{ma:.2f} - {mb:.2f} = {ma - mb:+.2f} ms"
        value = fig(ma, mb)
        lo, hi = _interval(ra.samples, rb.samples, fig)
        met = value <= limit
        status = "met" if met else f"MISSED by {over_ms:.2f} ms"
        unit = "" if kind == "ratio" else " ms"
        detail += f", 95% interval {lo:.3f}..{hi:.3f}{unit}"
        if lo <= limit <= hi:
            status += " (within noise)"
        out.append({
            "target": what, "status": status, "met": met, "detail": detail,
            "value": round(value, 3), "limit": limit,
            "interval": [round(lo, 3), round(hi, 3)], "within_noise": lo <= limit <= hi,
        })

    for cmd in COMMANDS:
        judge(f"moderate <= 1.15 x raw bwrap+filter ({cmd})", MODERATE, RAW, cmd, "ratio", 1.15)
    for cmd in COMMANDS:
        judge(f"strict <= moderate ({cmd})", STRICT, MODERATE, cmd, "diff", 0.0)
    for cmd in COMMANDS:
        # about growth: a big caller that happens to be faster meets it
        judge(f"1 GiB caller moderate <= 1.10 x small caller ({cmd})", BIG_MODERATE, MODERATE, cmd,
              "ratio", 1.10)
    for cmd in COMMANDS:
        judge(f"prewarmed moderate < 1 ms over bare ({cmd})", PREWARM_PAUSED, BARE, cmd, "diff", 1.0)
    return out


# -- output -----------------------------------------------------------------


def print_report(report: dict[str, Any]) -> None:
    m = report["machine"]
    print(f"stockade launch cost, {m['date']}")
    print(f"machine: {m['cpu']}, {m['cores']} cores, kernel {m['kernel']}, {m['distro']}, "
          f"cgroup {m['cgroup']}")
    print(f"bwrap {m['bwrap']}, caller Python {m['python_caller']}, sandbox /usr/bin/python3 "
          f"{m['python_sandbox']}, stockade {m['stockade_commit']}, caller uid {m['uid']}")
    p = report["params"]
    print(f"{p['n']} measured rounds after {p['warmup']} warm-up, variants round-robin in a "
          f"shuffled order (seed {p['seed']}); "
          f"workspace {p['workspace_owner']}; times are wall ms of one call from Python")
    if report.get("big_caller_rss_kib"):
        print(f"1 GiB caller: a helper process, RSS {report['big_caller_rss_kib'] / 1024:.0f} MiB")
    print()
    for cmd, rows in report["launch"].items():
        width = max(len(r) for r in rows)
        print(f"{cmd}")
        print(f"  {'variant':<{width}}  {'median':>8}  {'min-max ms':>17}  {'x bare':>7}  "
              f"{'x raw':>6}  {'n':>4}  note")
        for name, row in rows.items():
            if "median_ms" not in row:
                why = (
                    f"n/a ({row['unavailable']})" if row.get("unavailable")
                    else f"failed: {row.get('first_failure', '?')}"
                )
                print(f"  {name:<{width}}  {why}")
                continue
            notes = []
            if row.get("failures"):
                notes.append(f"{row['failures']} failed: {row['first_failure'][:60]}")
            if "pooled" in row:
                notes.append(f"pooled {row['pooled']}/{row['n']}")
            span = f"{row['min_ms']:.2f}-{row['max_ms']:.2f}"
            vs_bare = f"{row['vs_bare']:.2f}" if row.get("vs_bare") else "-"
            vs_raw = f"{row['vs_raw']:.2f}" if row.get("vs_raw") else "-"
            print(f"  {name:<{width}}  {row['median_ms']:8.2f}  {span:>17}  {vs_bare:>7}  "
                  f"{vs_raw:>6}  {row['n']:>4}  {'; '.join(notes)}")
        phases = rows.get(MODERATE, {}).get("phases_median_ms")
        if phases:
            text = ", ".join(f"{k} {v:.2f}" for k, v in phases.items())
            print(f"  moderate, phases (median ms): {text}")
        print()
    print("  x bare, x raw: median over the small caller's bare / raw bwrap + filter median")
    print()
    tp = report.get("throughput")
    if tp:
        print("throughput, /bin/true, N concurrent runs on one asyncio loop (runs/s, median "
              f"of {p['throughput_rounds']} rounds)")
        print(f"  {'N':>3}  {'bare':>8}  {'moderate':>8}  ratio")
        for entry in tp:
            if "concurrency" in entry:
                print(f"  {entry['concurrency']:>3}  {entry['bare_runs_per_sec']:8.1f}  "
                      f"{entry['stockade_moderate_runs_per_sec']:8.1f}  {entry['ratio']:.2f}")
            else:
                print(f"  {entry['failures']} failed: {entry['first_failure']}")
        print()
    mem = report.get("memory")
    if mem:
        seen = "" if mem["all_running_seen"] else f" (only {mem['most_running_seen']} seen at once)"
        print(f"memory, {mem['runs']} concurrent `sleep {p['memory_sleep']}` runs{seen}")
        print(f"  launcher RSS: idle {mem['launcher_rss_idle_kib']} KiB, busy "
              f"{mem['launcher_rss_busy_kib']} KiB: {mem['launcher_rss_per_run_kib']} KiB per run")
        if "launcher_uss_idle_kib" in mem:
            print(f"  launcher USS: idle {mem['launcher_uss_idle_kib']} KiB, busy "
                  f"{mem['launcher_uss_busy_kib']} KiB: {mem['launcher_uss_per_run_kib']} KiB per run "
                  f"(private pages only)")
        print(f"  caller RSS:   idle {mem['caller_rss_idle_kib']} KiB, busy "
              f"{mem['caller_rss_busy_kib']} KiB: {mem['caller_rss_per_run_kib']} KiB per run")
        print(f"  (each run's bwrap processes, monitor and sandbox pid 1, as with raw bwrap: "
              f"PSS {mem['bwrap_pss_per_run_kib']} KiB per run)")
        if mem.get("failures"):
            print(f"  {mem['failures']} failed: {mem['first_failure']}")
        print()
    print("targets")
    width = max(len(t["target"]) for t in report["targets"])
    for t in report["targets"]:
        print(f"  {t['target']:<{width}}  {t['status']}" + (f"  ({t['detail']})" if t.get("detail") else ""))


# -- main -------------------------------------------------------------------


def parse(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=None, help="measured rounds (default 150; --quick 5)")
    ap.add_argument("--warmup", type=int, default=None, help="warm-up rounds thrown away (default 3)")
    ap.add_argument("--quick", action="store_true", help="a smoke run: few rounds, small phases")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON instead")
    ap.add_argument("--prewarm", type=int, default=4, help="pool size of the prewarmed manager")
    ap.add_argument("--seed", type=int, default=8, help="seed of the per-round variant order")
    ap.add_argument("--burst", type=int, default=4, help="back-to-back runs per prewarmed burst")
    ap.add_argument("--pause-ms", type=float, default=20.0,
                    help="uncounted pause that lets the pool refill (default 20)")
    ap.add_argument("--concurrency", default=None, help="throughput levels (default 1,4,16)")
    ap.add_argument("--throughput-runs", type=int, default=None,
                    help="runs per throughput measurement (default 48)")
    ap.add_argument("--throughput-rounds", type=int, default=None, help="default 3")
    ap.add_argument("--memory-runs", type=int, default=None, help="concurrent runs (default 32)")
    ap.add_argument("--memory-sleep", type=float, default=None, help="their sleep (default 2 s)")
    ap.add_argument("--no-big-caller", action="store_true", help="skip the 1 GiB caller rows")
    ap.add_argument("--diagnose", action="store_true",
                    help="add rows that explain the difference: raw bwrap without the filter "
                    "and as root, stockade mode disabled (the launcher's fork and exec alone), "
                    "a bare spawn that forks (preexec_fn) from the small and the 1 GiB caller")
    ap.add_argument("--idmap", action="store_true",
                    help="as root, keep the workspace root-owned (stockade idmaps it)")
    ap.add_argument("--big-caller-worker", metavar="WORKSPACE", help=argparse.SUPPRESS)
    opts = ap.parse_args(argv)
    quick = opts.quick
    defaults = {
        "n": 5 if quick else 150,
        "warmup": 1 if quick else 3,
        "concurrency": "1,4" if quick else "1,4,16",
        "throughput_runs": 12 if quick else 48,
        "throughput_rounds": 1 if quick else 3,
        "memory_runs": 8 if quick else 32,
        "memory_sleep": 1.0 if quick else 2.0,
    }
    for key, value in defaults.items():
        if getattr(opts, key) is None:
            setattr(opts, key, value)
    return opts


def main(argv: list[str]) -> int:
    opts = parse(argv)
    if opts.big_caller_worker:
        big_caller_worker(opts.big_caller_worker)
        return 0
    started = time.monotonic()
    config = SandboxConfig(mode="moderate", execution_log=False)
    workspace = tempfile.mkdtemp(prefix="stockade-bench-", dir="/var/tmp")
    os.chmod(workspace, 0o755)
    owner = f"owned by uid {os.geteuid()}"
    if os.geteuid() == 0 and not opts.idmap:
        os.chown(workspace, config.run_as_uid, config.run_as_gid)
        owner = f"owned by the sandbox uid {config.run_as_uid} (no idmap)"
    elif os.geteuid() == 0:
        owner += " (idmapped for the sandbox uid)"
    report: dict[str, Any] = {
        "machine": machine(),
        "params": {
            "n": opts.n, "warmup": opts.warmup, "seed": opts.seed, "prewarm": opts.prewarm, "burst": opts.burst,
            "pause_ms": opts.pause_ms, "concurrency": opts.concurrency,
            "throughput_runs": opts.throughput_runs, "throughput_rounds": opts.throughput_rounds,
            "memory_runs": opts.memory_runs, "memory_sleep": opts.memory_sleep,
            "workspace_owner": owner,
        },
    }
    bench = None
    try:
        try:
            raw = RawBwrap(workspace, config)
            raw.check()
        except (AssertionError, OSError) as err:
            print(f"launch.py: the raw bubblewrap baseline does not run here: {err}", file=sys.stderr)
            return 2
        report["params"]["raw_filter_instructions"] = len(raw.bpf) // 8
        report["params"]["stockade_filter_instructions"] = (
            _seccomp.filter_for_config(config).compile().instructions  # type: ignore[union-attr]
        )
        os.close(raw.fd)
        bench = LaunchBench(opts, workspace)
        if bench.big is not None:
            report["big_caller_rss_kib"] = bench.big.rss_kib
        bench.run()
        launch: dict[str, dict[str, Any]] = {}
        for cmd in COMMANDS:
            bare = bench.rows[BARE][cmd].median
            raw_med = bench.rows[RAW][cmd].median
            launch[cmd] = {
                name: bench.rows[name][cmd].summary(bare, raw_med)
                for name in ROWS
                if name in bench.active or bench.rows[name][cmd].unavailable
            }
        report["launch"] = launch
        report["targets"] = targets(bench.rows)
        bench.close()
        bench = None
        progress("throughput")
        report["throughput"] = asyncio.run(throughput(opts, workspace))
        progress("launcher memory")
        report["memory"] = asyncio.run(launcher_memory(opts, workspace))
    finally:
        if bench is not None:
            bench.close()
        shutil.rmtree(workspace, ignore_errors=True)
    report["elapsed_sec"] = round(time.monotonic() - started, 1)
    if opts.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)
        print(f"\n({report['elapsed_sec']:.0f} s)")
    failed = any(
        row.get("failures") for rows in report["launch"].values() for row in rows.values()
    ) or any("failures" in e for e in report["throughput"]) or "failures" in report["memory"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
