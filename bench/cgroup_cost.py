#!/usr/bin/env python3
"""Per-launch cost of the run's cgroup: the same launch with and without it.

Part 1 runs ``/bin/true`` N times with the default tree limits (memory,
processes, CPU time: a cgroup per run) and N times with no cgroup at all,
interleaved so that both see the same machine state, and prints the
launcher's ``launch_ms`` (from the run's arrival to the program's exec:
everything on the launch path, cgroup set-up and join included) and the
whole wall time per run, median / mean / p90, with the difference.

Part 2 times the cgroup steps alone, on this host's hierarchy: setting the
limits of a cgroup made ahead of time (on the launch path), joining it from
a fresh child (on the launch path), making the next one ahead and removing
a used one (both off the path), and, for comparison, joining a whole process
through ``cgroup.procs`` after an idle spell (the RCU wait the ``tasks``
join avoids on cgroup v1).

    python bench/cgroup_cost.py [--runs 200] [--mode moderate|disabled]

Needs a caller with usable cgroups (root on a cgroup v1 host).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

from stockade import SandboxConfig, SandboxManager  # noqa: E402
from stockade.linux import cgroups  # noqa: E402
from stockade.linux import limits as limits_mod  # noqa: E402


def _stats(values: list[float]) -> str:
    ordered = sorted(values)
    p90 = ordered[int(0.9 * (len(ordered) - 1))]
    return f"median {statistics.median(ordered):7.3f}  mean {statistics.fmean(ordered):7.3f}  p90 {p90:7.3f}"


def _without_cgroup(plan):
    def wrapped(*args, **kwargs):
        result = plan(*args, **kwargs)
        result.cgroup = None
        return result

    return wrapped


def launches(runs: int, mode: str, workspace: str) -> None:
    with_cg = SandboxManager(SandboxConfig(execution_log=False, mode=mode))
    without = SandboxManager(
        SandboxConfig(
            execution_log=False, mode=mode, memory_mb=None, max_processes=None, cpu_time_sec=None
        )
    )
    original = limits_mod.plan
    samples: dict[str, dict[str, list[float]]] = {
        "cgroup": {"launch": [], "wall": []},
        "none": {"launch": [], "wall": []},
    }
    for _ in range(5):  # warm up: launcher start, caches
        with_cg.execute(["/bin/true"], cwd=workspace)
    for i in range(2 * runs):
        use_cgroup = i % 2 == 0
        if use_cgroup:
            limits_mod.plan = original
            manager, key = with_cg, "cgroup"
        else:
            limits_mod.plan = _without_cgroup(original)
            manager, key = without, "none"
        result = manager.execute(["/bin/true"], cwd=workspace)
        assert result.success, result.summary()
        assert (result.usage.source.startswith("cgroup")) == use_cgroup, result.usage.source
        samples[key]["launch"].append(result.timings_ms["launch_ms"])
        samples[key]["wall"].append(result.wall_time_sec * 1000)
    limits_mod.plan = original

    print(f"part 1: {runs} launches of /bin/true each, mode {mode}, times in ms")
    for key in ("none", "cgroup"):
        print(f"  {key:7s} launch_ms {_stats(samples[key]['launch'])}")
        print(f"  {key:7s} wall_ms   {_stats(samples[key]['wall'])}")
    for what in ("launch", "wall"):
        diff = statistics.median(samples["cgroup"][what]) - statistics.median(samples["none"][what])
        print(f"  cgroup adds (median {what}): {diff:+.3f} ms")


def steps(runs: int) -> None:
    found = cgroups.probe(refresh=True)
    backend = found.choose({cgroups.MEMORY, cgroups.PIDS, cgroups.CPUACCT})
    owner = cgroups.RunCgroups(found)
    limits = {"memory_bytes": 512 << 20, "pids_max": 514, "cpu_time_ns": 300 * 10**9}
    t_make, t_apply, t_join, t_release = [], [], [], []
    for _ in range(runs):
        t0 = time.perf_counter()
        owner.refill(backend.version)
        t1 = time.perf_counter()
        cg = owner.take(backend.version, limits)
        t2 = time.perf_counter()
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            start = time.perf_counter()
            for path in cg.join_paths:
                fd = os.open(path, os.O_WRONLY)
                os.write(fd, b"0")
                os.close(fd)
            os.write(w, str(time.perf_counter() - start).encode())
            os._exit(0)
        os.close(w)
        joined = float(os.read(r, 64))
        os.close(r)
        os.waitpid(pid, 0)
        t3 = time.perf_counter()
        owner.release(cg)
        t4 = time.perf_counter()
        t_make.append((t1 - t0) * 1000)
        t_apply.append((t2 - t1) * 1000)
        t_join.append(joined * 1000)
        t_release.append((t4 - t3) * 1000)
    owner.close()

    print(f"part 2: cgroup steps on {backend.describe()}, {runs} runs, times in ms")
    print(f"  on the launch path: set limits  {_stats(t_apply)}")
    print(f"  on the launch path: child joins {_stats(t_join)}  ({len(cg.join_paths)} files)")
    print(f"  off the path: make the next     {_stats(t_make)}")
    print(f"  off the path: kill and remove   {_stats(t_release)}")

    if backend.version == 1:
        # a whole-process join through cgroup.procs after 100 ms idle
        slow, fast = [], []
        for _ in range(min(runs, 10)):
            cg = owner.take(1, limits)
            for files, out in ((["cgroup.procs"], slow), (["tasks"], fast)):
                time.sleep(0.1)
                r, w = os.pipe()
                pid = os.fork()
                if pid == 0:
                    start = time.perf_counter()
                    for path in cg.join_paths:
                        fd = os.open(os.path.join(os.path.dirname(path), files[0]), os.O_WRONLY)
                        os.write(fd, b"0")
                        os.close(fd)
                    os.write(w, str(time.perf_counter() - start).encode())
                    os._exit(0)
                os.close(w)
                out.append(float(os.read(r, 64)) * 1000)
                os.close(r)
                os.waitpid(pid, 0)
            owner.release(cg)
        owner.close()
        print("  after 100 ms idle, joining through cgroup.procs: " + _stats(slow))
        print("  after 100 ms idle, joining through tasks:        " + _stats(fast))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--mode", default="moderate", choices=["strict", "moderate", "permissive", "disabled"])
    parser.add_argument("--workspace", default=None)
    args = parser.parse_args()
    workspace = args.workspace or tempfile.mkdtemp(prefix="stockade-bench-", dir="/var/tmp")
    try:
        cgroups.probe(refresh=True).choose({cgroups.MEMORY, cgroups.PIDS, cgroups.CPUACCT})
    except cgroups.CgroupUnavailable as err:
        sys.exit(f"no usable cgroups for this caller: {err}")
    launches(args.runs, args.mode, workspace)
    steps(min(args.runs, 100))


if __name__ == "__main__":
    main()
