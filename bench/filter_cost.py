"""Per-launch cost of the seccomp filter: /bin/true with and without it.

Runs ``/bin/true`` N times per variant through the real sandbox, variants
interleaved so that both see the same machine load, and prints the median
wall time of ``execute()`` per variant and the difference. The filter is
compiled once per policy before timing starts (its one-time cost is printed
separately); "no filter" is the same launch with the filter left out.

In the first tier (bubblewrap) the difference includes one supervisor round
trip per call of bubblewrap's set-up that the program is denied and that
the filter does not let through by its arguments (with --add-seccomp-fd
its two pivot_root, two umount2 and two unshare, and in strict the fork of
bubblewrap's pid 1; without it every mount too), plus installing the
second filter that bubblewrap hands
the program; the second tier (Landlock, ``--tier landlock``) has no such
set-up, so it shows the filter's fixed cost: installing it and handing over
its listener.

Usage: python bench/filter_cost.py [N] [--modes strict,moderate,permissive]
       [--tier namespaces|landlock]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time

from stockade import SandboxConfig, SandboxManager
from stockade.linux import bwrap, seccomp


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("n", nargs="?", type=int, default=200)
    parser.add_argument("--modes", default="strict,moderate,permissive")
    parser.add_argument("--tier", default="namespaces", choices=["namespaces", "landlock"])
    args = parser.parse_args()
    modes = args.modes.split(",")

    # the variant the runs use: in the first tier, with bubblewrap's set-up
    # patterns and the inner filter when bubblewrap has --add-seccomp-fd
    setup = args.tier == "namespaces" and bwrap.find_bwrap().has_add_seccomp_fd
    for mode in modes:
        seccomp.filter_for.cache_clear()
        t0 = time.perf_counter()
        flt = seccomp.filter_for(mode, bwrap_setup=setup)
        compile_ms = (time.perf_counter() - t0) * 1000
        compiled = flt.compile()
        inner = ""
        if compiled.inner_bpf:
            inner = f", inner filter {len(compiled.inner_bpf) // 8}"
        print(f"{mode}: filter built and compiled once in {compile_ms:.1f} ms "
              f"({compiled.instructions} BPF instructions{inner})")

    workspace = tempfile.mkdtemp(prefix="stockade-bench-", dir="/var/tmp")
    os.chmod(workspace, 0o755)
    real_filter_for_config = seccomp.filter_for_config
    use_filter = {"on": True}

    def patched(config, **kwargs):
        return real_filter_for_config(config, **kwargs) if use_filter["on"] else None

    seccomp.filter_for_config = patched
    managers = {
        m: SandboxManager(SandboxConfig(mode=m, tier=args.tier, execution_log=False))
        for m in modes
    }
    events: dict[str, list[dict]] = {}
    for manager in managers.values():
        real_finish = manager._finish

        def finish(prepared, io, real_finish=real_finish):
            events.setdefault(prepared.run_id, []).append(io.event or {})
            return real_finish(prepared, io)

        manager._finish = finish  # type: ignore[method-assign]

    times: dict[tuple[str, bool], list[float]] = {}
    notes: dict[str, list[int]] = {}
    last_calls: dict[str, dict[str, int]] = {}
    try:
        for _ in range(5):  # warm-up: launcher start, page cache
            for manager in managers.values():
                manager.execute(["/bin/true"], cwd=workspace)
        for _ in range(args.n):
            for mode, manager in managers.items():
                for on in (True, False):
                    use_filter["on"] = on
                    t = time.perf_counter()
                    result = manager.execute(["/bin/true"], cwd=workspace)
                    elapsed_ms = (time.perf_counter() - t) * 1000
                    times.setdefault((mode, on), []).append(elapsed_ms)
                    if not result.success:
                        raise SystemExit(f"run failed: {result.summary()}")
                    if on:
                        event = events[result.run_id][-1]
                        calls = event.get("setup_calls") or {}
                        notes.setdefault(mode, []).append(sum(calls.values()))
                        last_calls[mode] = calls
    finally:
        seccomp.filter_for_config = real_filter_for_config
        shutil.rmtree(workspace, ignore_errors=True)

    print(f"\n/bin/true, tier {args.tier}, median of {args.n} interleaved runs (ms):")
    header = f"{'mode':<11}{'no filter':>10}{'filter':>10}{'cost':>9}"
    print(header + "   set-up notifications")
    for mode in modes:
        off = statistics.median(times[(mode, False)])
        on = statistics.median(times[(mode, True)])
        n = statistics.median(notes[mode])
        print(f"{mode:<11}{off:>10.3f}{on:>10.3f}{on - off:>+9.3f}   {n:.0f}")
    print("\nset-up notifications of the last run, by call:")
    for mode in modes:
        if not last_calls.get(mode):
            print(f"  {mode}: none")
            continue
        flt = seccomp.filter_for(mode)
        by_name = {d.number: d.name for d in flt.decisions()}
        calls = sorted(last_calls[mode].items(), key=lambda kv: -kv[1])
        text = ", ".join(f"{by_name.get(int(nr), nr)} x{n}" for nr, n in calls)
        print(f"  {mode}: {text}")


if __name__ == "__main__":
    main()
