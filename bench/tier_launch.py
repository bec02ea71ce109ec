"""Launch cost of each tier against a bare spawn, measured in the same run.

    .venv/bin/python bench/tier_launch.py [RUNS]

Prints, per way of running `/bin/true` (bare subprocess, first tier, second
tier), the median and 90th percentile wall time of a whole execute() call,
and the second tier's extra processes: the per-run monitor's private memory.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time

from stockade import SandboxConfig, SandboxManager


def timed(fn, runs: int) -> list[float]:
    fn()  # warm up: launcher start, host probe
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def show(name: str, samples: list[float], base: float | None) -> float:
    samples = sorted(samples)
    median = statistics.median(samples)
    p90 = samples[int(len(samples) * 0.9) - 1]
    extra = f"  (+{median - base:.2f} ms over bare spawn)" if base is not None else ""
    print(f"{name:<28} median {median:7.2f} ms   p90 {p90:7.2f} ms{extra}")
    return median


def monitor_private_kib(workspace: str) -> int | None:
    """Private (unshared) memory of a second-tier monitor while its run sleeps."""
    import threading

    mgr = SandboxManager(
        SandboxConfig(execution_log=False, tier="landlock", allow_degraded=["network"])
    )
    mgr.start()
    thread = threading.Thread(
        target=mgr.execute, args=(["sleep", "1"],), kwargs={"cwd": workspace}
    )
    thread.start()
    time.sleep(0.5)
    launcher = mgr._launcher.pid()
    found = None
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            if ppid != launcher:
                continue
            with open(f"/proc/{name}/smaps_rollup") as fh:
                fields = dict(line.split(":", 1) for line in fh.read().splitlines()[1:])
            found = sum(
                int(fields[k].split()[0]) for k in ("Private_Clean", "Private_Dirty")
            )
        except (OSError, ValueError, KeyError):
            continue
    thread.join()
    return found


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    workspace = tempfile.mkdtemp(prefix="stockade-bench-", dir="/var/tmp")
    os.chmod(workspace, 0o755)
    first = SandboxManager(SandboxConfig(execution_log=False))
    second = SandboxManager(
        SandboxConfig(execution_log=False, tier="landlock", allow_degraded=["network"])
    )
    print(
        f"{runs} runs of /bin/true each, kernel {os.uname().release}, caller uid "
        f"{os.geteuid()}"
    )
    base = show(
        "bare subprocess.run",
        timed(lambda: subprocess.run(["/bin/true"], cwd=workspace), runs),
        None,
    )
    show(
        "tier namespaces (bwrap)",
        timed(lambda: first.execute(["/bin/true"], cwd=workspace), runs),
        base,
    )
    show(
        "tier landlock",
        timed(lambda: second.execute(["/bin/true"], cwd=workspace), runs),
        base,
    )
    private = monitor_private_kib(workspace)
    print(f"second-tier monitor, private memory while its run sleeps: {private} KiB")
    os.rmdir(workspace)


if __name__ == "__main__":
    main()
