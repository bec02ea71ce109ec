#!/usr/bin/env python3
"""Extra cost per launch of network mode ``allow`` over ``none``.

Runs ``/bin/true`` N times under each mode, interleaved so that both see
the same machine state, and prints the wall time per launch (median, mean,
p90) with the difference. ``allow`` adds: the proxy's listener made inside
the sandbox's network namespace (in place as root, a forked helper for
other callers), bubblewrap's wait on --block-fd, handing the listener to
the proxy, and closing it at the end. The proxy itself starts once per
manager; its start is reported apart, not counted per launch.

    python bench/network_cost.py [--runs 200]

Run it as an unprivileged user too (the helper path), e.g. as root:
    setpriv --reuid=65534 --regid=65534 --clear-groups env \
      PYTHONPATH=src:.venv/lib/python3.11/site-packages /usr/bin/python3 \
      bench/network_cost.py --workspace /var/tmp/<dir>/ws  (owned by 65534, not HOME)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(
    0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")
)

from stockade import SandboxConfig, SandboxManager


def _stats(values: list[float]) -> tuple[float, float, float]:
    ordered = sorted(values)
    return (
        statistics.median(ordered),
        statistics.fmean(ordered),
        ordered[int(len(ordered) * 0.9) - 1],
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument(
        "--workspace", help="writable directory (default: a new one under /var/tmp)"
    )
    args = parser.parse_args()
    workspace = args.workspace or tempfile.mkdtemp(
        prefix="stockade-bench-", dir="/var/tmp"
    )

    base = SandboxConfig(execution_log=False, timeout_sec=30)
    none = SandboxManager(base.with_changes(network="none"))
    allow = SandboxManager(base.with_changes(network={"allow": ["pypi.example"]}))
    try:
        for manager in (none, allow):  # warm: launcher, bwrap checks
            manager.execute(["/bin/true"], cwd=workspace)
        t0 = time.perf_counter()
        fresh = SandboxManager(base.with_changes(network={"allow": ["pypi.example"]}))
        fresh._network_proxy()
        proxy_start_ms = (time.perf_counter() - t0) * 1000
        fresh.close()

        walls: dict[str, list[float]] = {"none": [], "allow": []}
        launches: dict[str, list[float]] = {"none": [], "allow": []}
        for _ in range(args.runs):
            for name, manager in (("none", none), ("allow", allow)):
                t0 = time.perf_counter()
                result = manager.execute(["/bin/true"], cwd=workspace)
                walls[name].append((time.perf_counter() - t0) * 1000)
                launches[name].append(result.timings_ms.get("launch_ms", 0.0))
                if not result.success:
                    print(
                        f"run failed under {name}: {result.summary()}", file=sys.stderr
                    )
                    return 1
    finally:
        none.close()
        allow.close()

    who = (
        "root (listener made in place)"
        if os.geteuid() == 0
        else f"uid {os.geteuid()} (listener made by a forked helper)"
    )
    print(f"caller: {who}; {args.runs} launches of /bin/true per mode, interleaved")
    print(f"proxy start (once per manager): {proxy_start_ms:.2f} ms")
    print(f"{'':26}{'median':>10}{'mean':>10}{'p90':>10}")
    for label, data in (
        ("wall per run, none", walls["none"]),
        ("wall per run, allow", walls["allow"]),
    ):
        med, mean, p90 = _stats(data)
        print(f"{label + ' (ms)':26}{med:10.2f}{mean:10.2f}{p90:10.2f}")
    med_n, mean_n, _ = _stats(walls["none"])
    med_a, mean_a, _ = _stats(walls["allow"])
    print(
        f"{'extra cost of allow (ms)':26}{med_a - med_n:10.2f}{mean_a - mean_n:10.2f}"
    )
    print(
        f"{'extra cost (%)':26}{(med_a / med_n - 1) * 100:10.1f}{(mean_a / mean_n - 1) * 100:10.1f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
