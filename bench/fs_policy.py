"""Cost of the file-system policy, measured in the same run as its baseline.

    .venv/bin/python bench/fs_policy.py [RUNS]

For each tier, runs `/bin/true` in a workspace that is a git repository:

* baseline: ``protected=[]`` and no path rules;
* default: the default protected paths (``.git/hooks`` and ``.git/config``
  read-only, the absent ones checked after the run);
* rules: the default plus 3 hidden files, a hidden directory, a read-only
  directory and a writable one outside the workspace;
* wide (second tier only): one hidden file in a workspace root of 2000
  entries (the ruleset lists the root and grants each entry).

Prints the median and 90th percentile of a whole ``execute()`` and the median
of ``timings_ms["fs_policy_ms"]`` (resolution, mounts or rules) and
``fs_guard_ms`` (the check after the run).
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from stockade import SandboxConfig, SandboxManager

SECOND = {"tier": "landlock", "allow_degraded": ["network"]}


def measure(
    mgr: SandboxManager, workspace: str, runs: int
) -> tuple[list[float], list[dict]]:
    mgr.execute(["/bin/true"], cwd=workspace)  # warm up: launcher, host probe
    walls, timings = [], []
    for _ in range(runs):
        t0 = time.perf_counter()
        result = mgr.execute(["/bin/true"], cwd=workspace)
        walls.append((time.perf_counter() - t0) * 1000)
        assert result.exit_code == 0, (result.error, result.stderr)
        timings.append(result.timings_ms)
    return walls, timings


def show(
    name: str, walls: list[float], timings: list[dict], base: float | None
) -> float:
    walls = sorted(walls)
    median = statistics.median(walls)
    p90 = walls[int(len(walls) * 0.9) - 1]
    policy = statistics.median(t.get("fs_policy_ms", 0.0) for t in timings)
    guard = statistics.median(t.get("fs_guard_ms", 0.0) for t in timings)
    extra = f" (+{median - base:5.2f})" if base is not None else " " * 9
    print(
        f"{name:<22} median {median:6.2f} ms{extra}  p90 {p90:6.2f} ms   "
        f"fs_policy {policy:5.2f} ms  fs_guard {guard:5.2f} ms"
    )
    return median


def workspace_tree(root: str, wide: int = 0) -> str:
    ws = tempfile.mkdtemp(prefix="stockade-bench-fs-", dir=root)
    os.chmod(ws, 0o755)
    subprocess.run(["git", "init", "-q", ws], check=True)
    os.makedirs(os.path.join(ws, "private"))
    for name in ("a.env", "b.env", "c.env", "keep.txt"):
        with open(os.path.join(ws, name), "w") as fh:
            fh.write(name)
    for i in range(wide):
        with open(os.path.join(ws, f"f{i:04d}"), "w") as fh:
            fh.write("x")
    return ws


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    root = tempfile.mkdtemp(prefix="stockade-bench-", dir="/var/tmp")
    os.chmod(root, 0o755)
    ws = workspace_tree(root)
    wide = workspace_tree(root, wide=2000)
    ro = tempfile.mkdtemp(dir=root)
    rw = tempfile.mkdtemp(dir=root)
    rules = {
        "hidden": ["a.env", "b.env", "c.env", "private"],
        "read_only": [ro],
        "writable": [rw],
    }
    try:
        for tier, fields in (
            ("namespaces", {"tier": "namespaces"}),
            ("landlock", SECOND),
        ):
            print(f"-- tier {tier}, {runs} runs of /bin/true")

            def mgr(fields=fields, **more):
                return SandboxManager(
                    SandboxConfig(execution_log=False, **fields, **more)
                )

            base = show("baseline", *measure(mgr(protected=[]), ws, runs), None)
            show("default protected", *measure(mgr(), ws, runs), base)
            show("default + 6 rules", *measure(mgr(**rules), ws, runs), base)
            if tier == "landlock":
                show(
                    "2000-entry root", *measure(mgr(hidden=["a.env"]), wide, runs), base
                )
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
