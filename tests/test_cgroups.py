"""The cgroup layer: probing, the v1 and v2 file protocols, and its lifecycle.

Three kinds of test:

* fake trees in a temporary directory check what is written where and how
  counters are read, for both hierarchy versions, without privileges;
* the host's real cgroup v1 hierarchies (as root) check create, join, limit,
  usage, kill and removal;
* the host's real cgroup v2 hierarchy (this machine mounts one without
  controllers: memory, pids and cpu are bound to v1) checks the v2 core
  protocol for real: create, join through cgroup.procs, CPU usage from
  cpu.stat, cgroup.kill, removal; the v2 limit files are covered by the fake
  tree;
* the probe on a cgroup2 hierarchy freshly mounted in a private mount
  namespace: it reads the controllers the kernel offers there (only hugetlb
  on this host, so it cannot serve the limits either).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from stockade.linux import cgroups
from stockade.linux.cgroups import (
    CPU,
    CPUACCT,
    MEMORY,
    PIDS,
    Backend,
    CgroupUnavailable,
    Probe,
    RunCgroup,
    RunCgroups,
)

MIB = 1024 * 1024

# -- probing from fake /proc files ----------------------------------------------------


def _write_proc(tmp_path: Path, mountinfo: str, proc_cgroup: str) -> tuple[str, str]:
    (tmp_path / "mountinfo").write_text(mountinfo)
    (tmp_path / "cgroup").write_text(proc_cgroup)
    return str(tmp_path / "mountinfo"), str(tmp_path / "cgroup")


def test_probe_v1_finds_the_callers_cgroup_in_each_hierarchy(tmp_path):
    root = tmp_path / "fs"
    for sub in ("memory/app/caller", "pids", "cpu,cpuacct/app"):
        (root / sub).mkdir(parents=True)
    (root / "memory/app/caller/memory.memsw.limit_in_bytes").write_text("0")
    mountinfo = "".join(
        f"{i} 1 0:{i} / {root}/{name} rw - cgroup cgroup rw,{opts}\n"
        for i, (name, opts) in enumerate(
            [("memory", "memory"), ("pids", "pids"), ("cpu,cpuacct", "cpu,cpuacct")], 30
        )
    )
    proc = "5:memory:/app/caller\n4:pids:/\n3:cpu,cpuacct:/app\n0::/\n"
    found = cgroups._probe(*_write_proc(tmp_path, mountinfo, proc), euid=0)
    assert found.v2 is None
    assert found.v1 is not None
    assert found.v1.parents == {
        MEMORY: f"{root}/memory/app/caller",
        PIDS: f"{root}/pids",
        CPU: f"{root}/cpu,cpuacct/app",
        CPUACCT: f"{root}/cpu,cpuacct/app",
    }
    assert found.v1.swap_accounting
    assert found.choose({MEMORY, PIDS, CPU}).version == 1


def test_probe_v1_reports_a_hierarchy_it_cannot_see(tmp_path):
    root = tmp_path / "fs"
    (root / "memory").mkdir(parents=True)
    # the mount shows only /other of the hierarchy; the caller is in /app
    mountinfo = f"30 1 0:30 /other {root}/memory rw - cgroup cgroup rw,memory\n"
    found = cgroups._probe(*_write_proc(tmp_path, mountinfo, "4:memory:/app\n"), euid=0)
    assert MEMORY not in found.v1.parents
    assert "not visible" in found.v1.problems[MEMORY]
    with pytest.raises(CgroupUnavailable) as info:
        found.choose({MEMORY})
    assert info.value.missing == [MEMORY]
    assert "not visible" in info.value.reason
    assert "allow_degraded" in info.value.fix


def test_probe_v2_root_cgroup_offers_its_controllers(tmp_path):
    root = tmp_path / "unified"
    root.mkdir()
    (root / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    mountinfo = f"30 1 0:30 / {root} rw - cgroup2 cgroup2 rw\n"
    found = cgroups._probe(*_write_proc(tmp_path, mountinfo, "0::/\n"), euid=0)
    assert found.v2.parents == {c: str(root) for c in (MEMORY, PIDS, CPU, CPUACCT)}
    assert found.choose({MEMORY, PIDS}).version == 2


def test_probe_v2_uses_an_empty_delegated_parent_but_never_a_busy_cgroup(tmp_path):
    root = tmp_path / "unified"
    own = root / "user.slice/svc.service/main"
    own.mkdir(parents=True)
    for d in (root / "user.slice", root / "user.slice/svc.service", own):
        (d / "cgroup.type").write_text("domain\n")
        (d / "cgroup.controllers").write_text("cpu memory pids\n")
        (d / "cgroup.subtree_control").write_text("")
    (own / "cgroup.procs").write_text("1234\n")            # the caller
    (root / "user.slice/svc.service/cgroup.procs").write_text("")
    mountinfo = f"30 1 0:30 / {root} rw - cgroup2 cgroup2 rw\n"
    proc = _write_proc(tmp_path, mountinfo, "0::/user.slice/svc.service/main\n")

    # not delegated (root caller, no delegate xattr): nothing usable
    found = cgroups._probe(*proc, euid=0)
    assert found.v2.parents == {}
    assert "no internal processes" in found.v2.problems[MEMORY]

    # delegated to the caller's uid (the files are owned by it)
    uid = os.stat(root / "user.slice/svc.service/cgroup.procs").st_uid
    found = cgroups._probe(*proc, euid=uid if uid else 4242)
    if uid == 0:
        assert found.v2.parents == {}  # owned by root, caller 4242: not delegated
    else:
        assert found.v2.parents[MEMORY] == str(root / "user.slice/svc.service")


def test_choose_prefers_v2_and_names_what_is_missing():
    v1 = Backend(1, {MEMORY: "/m", PIDS: "/p", CPU: "/c", CPUACCT: "/c"}, {}, True)
    v2 = Backend(2, {CPUACCT: "/u"}, {MEMORY: "bound to v1", PIDS: "bound to v1"}, False)
    found = Probe(v1, v2)
    assert found.choose({MEMORY}).version == 1
    assert found.choose({CPUACCT}).version == 1  # v1 offers more figures
    assert found.choose(set(), version=2).version == 2
    with pytest.raises(CgroupUnavailable) as info:
        found.choose({MEMORY, PIDS}, version=2)
    assert info.value.missing == [MEMORY, PIDS]
    assert "memory, pids: bound to v1" in info.value.reason


def test_mountinfo_escapes_are_decoded(tmp_path):
    mountinfo = "30 1 0:30 / /sys/fs/cgroup/with\\040space rw - cgroup cgroup rw,pids\n"
    (tmp_path / "m").write_text(mountinfo)
    assert cgroups._cgroup_mounts(str(tmp_path / "m"))[0][1] == "/sys/fs/cgroup/with space"


# -- the file protocols on fake trees ---------------------------------------------------

V2_FILES = {
    "cgroup.procs": "",
    "cgroup.kill": "",
    "memory.max": "max\n",
    "memory.swap.max": "max\n",
    "memory.oom.group": "0\n",
    "memory.events": "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\noom_group_kill 0\n",
    "memory.peak": "0\n",
    "pids.max": "max\n",
    "pids.events": "max 0\n",
    "pids.peak": "0\n",
    "pids.current": "0\n",
    "cpu.max": "max 100000\n",
    "cpu.stat": "usage_usec 0\nuser_usec 0\nsystem_usec 0\n",
}

V1_FILES = {
    MEMORY: {
        "tasks": "",
        "cgroup.procs": "",
        "memory.limit_in_bytes": "9223372036854771712\n",
        "memory.memsw.limit_in_bytes": "9223372036854771712\n",
        "memory.swappiness": "60\n",
        "memory.max_usage_in_bytes": "0\n",
        "memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n",
    },
    PIDS: {
        "tasks": "",
        "cgroup.procs": "",
        "pids.max": "max\n",
        "pids.events": "max 0\n",
        "pids.peak": "0\n",
        "pids.current": "0\n",
    },
    CPU: {"tasks": "", "cgroup.procs": "", "cpu.cfs_period_us": "100000\n", "cpu.cfs_quota_us": "-1\n"},
    CPUACCT: {
        "tasks": "",
        "cgroup.procs": "",
        "cpuacct.usage": "0\n",
        "cpuacct.usage_user": "0\n",
        "cpuacct.usage_sys": "0\n",
    },
}


def _fake_v2(tmp_path: Path) -> RunCgroup:
    d = tmp_path / "stockade-1-2-0"
    d.mkdir()
    for name, text in V2_FILES.items():
        (d / name).write_text(text)
    return RunCgroup(d.name, 2, {c: str(d) for c in (MEMORY, PIDS, CPU, CPUACCT)})


def _fake_v1(tmp_path: Path, *, memsw: bool = True) -> RunCgroup:
    dirs = {}
    for controller, files in V1_FILES.items():
        d = tmp_path / controller / "stockade-1-2-0"
        d.mkdir(parents=True)
        for name, text in files.items():
            if name == "memory.memsw.limit_in_bytes" and not memsw:
                continue
            (d / name).write_text(text)
        dirs[controller] = str(d)
    return RunCgroup("stockade-1-2-0", 1, dirs)


def test_v2_limits_are_written_to_the_v2_files(tmp_path):
    cg = _fake_v2(tmp_path)
    cg.apply({"memory_bytes": 256 * MIB, "pids_max": 66, "cpu_cores": 0.5, "cpu_time_ns": 2 * 10**9})
    d = Path(cg.dirs[CPUACCT])
    assert (d / "memory.max").read_text() == str(256 * MIB)
    assert (d / "memory.swap.max").read_text() == "0"
    assert (d / "memory.oom.group").read_text() == "1"
    assert (d / "pids.max").read_text() == "66"
    assert (d / "cpu.max").read_text() == "50000 100000"
    assert cg.join_paths == [str(d / "cgroup.procs")]
    assert cg.cpu_rate == 0.5


def test_v2_counters_turn_into_limit_reasons_and_usage(tmp_path):
    cg = _fake_v2(tmp_path)
    cg.apply({"memory_bytes": MIB, "pids_max": 10, "cpu_time_ns": 2 * 10**9})
    d = Path(cg.dirs[CPUACCT])
    assert cg.check()[0] is None

    (d / "cpu.stat").write_text("usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\n")
    assert cg.check() == ("cpu_limit", None)
    (d / "pids.events").write_text("max 3\n")
    assert cg.check() == ("pids_limit", None)
    (d / "memory.events").write_text("low 0\nmax 9\noom 1\noom_kill 1\n")
    assert cg.check() == ("memory_limit", None)

    (d / "memory.peak").write_text(str(200 * MIB))
    (d / "pids.peak").write_text("7\n")
    usage = cg.usage()
    assert usage["cpu_user_sec"] == 2.0
    assert usage["cpu_system_sec"] == 0.5
    assert usage["memory_peak_bytes"] == 200 * MIB
    assert usage["pids_peak"] == 7
    assert usage["oom_kills"] == 1
    assert usage["pids_limit_hits"] == 3
    cg.close_counters()


def test_v2_a_group_oom_kill_alone_is_a_memory_limit(tmp_path):
    cg = _fake_v2(tmp_path)
    cg.apply({"memory_bytes": MIB})
    d = Path(cg.dirs[CPUACCT])
    (d / "memory.events").write_text("low 0\nmax 9\noom 1\noom_kill 0\noom_group_kill 1\n")
    assert cg.check() == ("memory_limit", None)
    assert cg.usage()["oom_kills"] == 1
    cg.close_counters()


def test_baseline_subtracts_the_waiters_cpu_and_restarts_the_peak_v2(tmp_path):
    """A prepared sandbox's waiter ran in the cgroup before the program
    (issue #8): its CPU time is not the run's, and the memory peak restarts
    through the file descriptor the reset was written to."""
    cg = _fake_v2(tmp_path)
    cg.apply({"memory_bytes": 64 * MIB, "cpu_time_ns": 10**9})
    d = Path(cg.dirs[CPUACCT])
    (d / "cpu.stat").write_text("usage_usec 40000\nuser_usec 30000\nsystem_usec 10000\n")
    (d / "memory.current").write_text(str(5 * MIB))
    cg.set_baseline()
    assert cg.peak_reset is True
    assert (d / "memory.peak").read_text().startswith("reset")
    (d / "cpu.stat").write_text("usage_usec 1040000\nuser_usec 830000\nsystem_usec 210000\n")
    (d / "memory.peak").write_text(str(7 * MIB))  # what the kernel shows that fd now
    assert cg.check() == ("cpu_limit", None)  # 1.0 s of the program's own
    usage = cg.usage()
    assert usage["cpu_total_sec"] == pytest.approx(1.0)
    assert usage["cpu_user_sec"] + usage["cpu_system_sec"] == pytest.approx(1.0)
    assert usage["memory_peak_bytes"] == 7 * MIB
    assert usage["baseline"] == {"cpu_total_sec": 0.04, "peak_reset": True, "memory_bytes": 5 * MIB}
    cg.close_counters()


def test_baseline_v1_resets_max_usage(tmp_path):
    cg = _fake_v1(tmp_path)
    cg.apply({"memory_bytes": 64 * MIB})
    mem = Path(cg.dirs[MEMORY])
    (mem / "memory.usage_in_bytes").write_text(str(5 * MIB))
    (mem / "memory.max_usage_in_bytes").write_text(str(9 * MIB))
    acct = Path(cg.dirs[CPUACCT])
    (acct / "cpuacct.usage").write_text("30000000\n")
    cg.set_baseline()
    assert (mem / "memory.max_usage_in_bytes").read_text() == "0"
    (acct / "cpuacct.usage").write_text("50000000\n")
    usage = cg.usage()
    assert usage["cpu_total_sec"] == pytest.approx(0.02)
    assert usage["baseline"]["memory_bytes"] == 5 * MIB


def test_cpu_poll_waits_for_what_the_tree_could_burn(tmp_path):
    cg = _fake_v2(tmp_path)
    cg.apply({"cpu_time_ns": 2 * 10**9, "cpu_cores": 1.0})
    d = Path(cg.dirs[CPUACCT])
    (d / "cpu.stat").write_text("usage_usec 1900000\n")
    reason, delay = cg.check()
    assert reason is None
    # 0.1 CPU-s left at 1 core: next look in 0.1 s
    assert delay == pytest.approx(0.1, abs=0.001)
    (d / "cpu.stat").write_text("usage_usec 0\n")
    assert cg.check()[1] == cgroups.CPU_POLL_MAX_SEC
    cg.close_counters()


def test_v2_kill_uses_cgroup_kill(tmp_path):
    cg = _fake_v2(tmp_path)
    d = Path(cg.dirs[CPUACCT])
    assert cg.kill() is True  # empty
    (d / "cgroup.procs").write_text("4242\n")
    assert cg.kill() is False
    assert (d / "cgroup.kill").read_text() == "1"


def test_v1_limits_memsw_and_tasks_files(tmp_path):
    cg = _fake_v1(tmp_path)
    cg.apply({"memory_bytes": 64 * MIB, "pids_max": 9, "cpu_cores": 1.5})
    mem = Path(cg.dirs[MEMORY])
    assert (mem / "memory.limit_in_bytes").read_text() == str(64 * MIB)
    assert (mem / "memory.memsw.limit_in_bytes").read_text() == str(64 * MIB)
    assert (mem / "memory.swappiness").read_text() == "60\n"  # untouched
    assert (Path(cg.dirs[PIDS]) / "pids.max").read_text() == "9"
    assert (Path(cg.dirs[CPU]) / "cpu.cfs_quota_us").read_text() == "150000"
    # tasks, not cgroup.procs: a single thread joins without the RCU wait
    assert sorted(cg.join_paths) == sorted(
        os.path.join(cg.dirs[c], "tasks") for c in (MEMORY, PIDS, CPU, CPUACCT)
    )


def test_v1_without_swap_accounting_sets_swappiness_zero(tmp_path):
    cg = _fake_v1(tmp_path, memsw=False)
    cg.apply({"memory_bytes": 64 * MIB})
    assert (Path(cg.dirs[MEMORY]) / "memory.swappiness").read_text() == "0"
    # no CPU quota asked: the cpu hierarchy is joined all the same (one
    # scheduling group for the run) and its quota left alone
    assert os.path.join(cg.dirs[CPU], "tasks") in cg.join_paths
    assert (Path(cg.dirs[CPU]) / "cpu.cfs_quota_us").read_text() == "-1\n"


def test_v1_counters(tmp_path):
    cg = _fake_v1(tmp_path)
    cg.apply({"memory_bytes": MIB, "pids_max": 5, "cpu_time_ns": 10**9})
    (Path(cg.dirs[CPUACCT]) / "cpuacct.usage").write_text("999999999\n")
    assert cg.check()[0] is None
    (Path(cg.dirs[MEMORY]) / "memory.oom_control").write_text(
        "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n"
    )
    assert cg.check()[0] == "memory_limit"
    (Path(cg.dirs[CPUACCT]) / "cpuacct.usage_user").write_text("1500000000\n")
    (Path(cg.dirs[CPUACCT]) / "cpuacct.usage_sys").write_text("250000000\n")
    (Path(cg.dirs[MEMORY]) / "memory.max_usage_in_bytes").write_text(f"{5 * MIB}\n")
    (Path(cg.dirs[CPUACCT]) / "cpuacct.usage").write_text("3500000000\n")
    usage = cg.usage()
    # the sampled split is scaled to the exact total (3.5 s)
    assert usage["cpu_user_sec"] == pytest.approx(3.0)
    assert usage["cpu_system_sec"] == pytest.approx(0.5)
    assert usage["memory_peak_bytes"] == 5 * MIB
    assert usage["oom_kills"] == 2
    cg.close_counters()


def test_clean_stale_removes_dead_launchers_cgroups_only(tmp_path):
    parent = tmp_path / "pids"
    parent.mkdir()
    ns = cgroups.pid_namespace_id()
    dead = subprocess.Popen(["true"])
    dead.wait()
    names = {
        "dead": f"stockade-{ns}-{dead.pid}-3",
        "mine": f"stockade-{ns}-{os.getpid()}-0",
        "other_ns": f"stockade-{ns + 1}-{dead.pid}-0",
        "foreign": "stockade-notours",
        "unrelated": "system.slice",
    }
    for name in names.values():
        (parent / name).mkdir()
        (parent / name / "cgroup.procs").write_text("")
    for name in ("dead", "mine"):  # rmdir needs empty directories here
        (parent / names[name] / "cgroup.procs").unlink()
    backend = Backend(1, {PIDS: str(parent)}, {}, False)
    owner = RunCgroups(Probe(backend, None))
    removed = owner.clean_stale()
    assert sorted(removed) == sorted(str(parent / names[k]) for k in ("dead", "mine"))
    left = sorted(os.listdir(parent))
    assert left == sorted([names["other_ns"], names["foreign"], names["unrelated"]])


# -- the real hierarchies of this host ----------------------------------------------------

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="writes the host's cgroups: needs root")


@pytest.fixture
def _private_cgroup_names(monkeypatch):
    """The cgroups these tests make are owned by the test process, not by a
    launcher, so a launcher starting meanwhile (another suite on the same
    host) would judge them stale and remove them: give them names no
    launcher's clean-up matches."""
    monkeypatch.setattr(cgroups, "NAME_PREFIX", "stockade-test-")


def _real_backend(version: int) -> Backend:
    found = cgroups.probe(refresh=True)
    backend = found.v1 if version == 1 else found.v2
    if backend is None or not backend.parents:
        pytest.skip(f"no writable cgroup v{version} hierarchy on this host")
    return backend


def _burn_in(join_paths: list[str], seconds: float) -> subprocess.Popen[bytes]:
    code = (
        "import os, sys, time\n"
        "for p in sys.argv[2:]:\n"
        "    fd = os.open(p, os.O_WRONLY); os.write(fd, b'0'); os.close(fd)\n"
        "t = time.process_time()\n"
        "while time.process_time() - t < float(sys.argv[1]): pass\n"
        "time.sleep(30)\n"
    )
    return subprocess.Popen(["python3", "-c", code, str(seconds), *join_paths])


def _wait_for(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


@needs_root
@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.usefixtures("_private_cgroup_names")
def test_real_cgroup_lifecycle(version):
    """create -> limits -> join -> CPU usage -> kill -> remove, on the host's
    real hierarchy. v2 here has no controllers (they are bound to v1), so
    only the core files are exercised: cgroup.procs, cpu.stat, cgroup.kill."""
    backend = _real_backend(version)
    owner = RunCgroups(Probe(backend if version == 1 else None, backend if version == 2 else None))
    limits = {"cpu_time_ns": 10**10}
    if version == 1:
        limits.update(memory_bytes=256 * MIB, pids_max=50)
    cg = owner.take(version, limits)
    dirs = sorted(set(cg.dirs.values()))
    assert all(os.path.isdir(d) for d in dirs)
    proc = _burn_in(cg.join_paths, 0.3)
    try:
        assert _wait_for(lambda: proc.pid in cg.procs())
        assert _wait_for(lambda: (cg.cpu_ns() or 0) >= 0.3e9)
        usage = cg.usage()
        assert 0.3 <= usage["cpu_user_sec"] + usage["cpu_system_sec"] < 5
        if version == 1:
            # pages charged before it joined stay with its old cgroup
            assert usage["memory_peak_bytes"] > 0
            assert usage["pids_peak"] == 1
        owner.release(cg)
        proc.wait(timeout=10)
        assert proc.returncode == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if cg not in owner.pending:
            owner.release(cg)
    assert _wait_for(lambda: (owner.retry(time.monotonic() + 1), not owner.pending)[1])
    assert not any(os.path.exists(d) for d in dirs)


@needs_root
@pytest.mark.usefixtures("_private_cgroup_names")
def test_real_v1_refused_fork_and_oom_are_counted():
    backend = _real_backend(1)
    owner = RunCgroups(Probe(backend, None))
    cg = owner.take(1, {"memory_bytes": 32 * MIB, "pids_max": 3})
    code = (
        "import os, sys, time\n"
        "for p in sys.argv[1:]:\n"
        "    fd = os.open(p, os.O_WRONLY); os.write(fd, b'0'); os.close(fd)\n"
        "kids = []\n"
        "try:\n"
        "    for _ in range(5):\n"
        "        pid = os.fork()\n"
        "        if pid == 0: time.sleep(5); os._exit(0)\n"
        "        kids.append(pid)\n"
        "except OSError as e: print('fork refused', e.errno)\n"
        "x = b'x' * (64 << 20)\n"
    )
    proc = subprocess.run(["python3", "-c", code, *cg.join_paths], capture_output=True, timeout=30)
    try:
        assert b"fork refused 11" in proc.stdout  # EAGAIN at the cap
        assert proc.returncode == -signal.SIGKILL  # the OOM killer
        assert cg.check()[0] in ("memory_limit", "pids_limit")
        usage = cg.usage()
        assert usage["oom_kills"] >= 1
        assert usage["pids_limit_hits"] >= 1
    finally:
        owner.release(cg)
        owner.close()
    assert not owner.pending


_PROBE_FRESH_MOUNT = """
import json, os, sys
from stockade.linux import cgroups
mount = sys.argv[1]
# the v1 hierarchies as they are, and of cgroup2 only the fresh mount
lines = [l for l in open("/proc/self/mountinfo")
         if " - cgroup2 " not in l or l.split()[4] == mount]
with open(mount + ".mountinfo", "w") as fh:
    fh.writelines(lines)
found = cgroups._probe(mount + ".mountinfo", "/proc/self/cgroup", os.geteuid())
own = [l for l in open("/proc/self/cgroup") if l.startswith("0::")][0].strip()
try:
    chosen = found.choose({cgroups.MEMORY, cgroups.PIDS}).version
except cgroups.CgroupUnavailable as err:
    chosen = str(err)
print(json.dumps({
    "controllers": open(os.path.join(mount, "cgroup.controllers")).read().split(),
    "own": own,
    "v2": found.v2.to_dict() if found.v2 else None,
    "chosen": chosen,
}))
"""


@needs_root
def test_the_probe_reads_a_fresh_cgroup2_mount_as_the_kernel_offers_it():
    """stockade's probe on a cgroup2 hierarchy mounted in a private mount
    namespace (the only cgroup2 mount the probe is shown): v2 gets exactly the
    controllers the kernel lists there, the missing ones are named, and the
    choice falls to v1 for what v2 lacks. On this host the mount offers only
    hugetlb: memory, pids and cpu are bound to v1 hierarchies."""
    import json
    import sys

    script = (
        'd=$(mktemp -d) && mount -t cgroup2 none "$d" && "$1" -c "$2" "$d"; '
        'rc=$?; umount "$d"; rm -f "$d.mountinfo"; rmdir "$d"; exit $rc'
    )
    proc = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", sys.executable,
         _PROBE_FRESH_MOUNT],
        capture_output=True, text=True, timeout=30,
    )
    if proc.returncode != 0 and "mount" in proc.stderr:
        pytest.skip(f"cannot mount cgroup2 in a private namespace: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    if data["own"] != "0::/":
        pytest.skip(f"this process is not in the v2 root cgroup ({data['own']})")
    v2 = data["v2"]
    assert v2 is not None
    mount = v2["parents"][CPUACCT]  # cpu.stat is core: always there
    for controller in (MEMORY, PIDS, CPU):
        offered = controller in data["controllers"]
        assert (controller in v2["parents"]) == offered, (controller, data)
        if not offered:
            assert f"cgroup.controllers: {' '.join(sorted(data['controllers'])) or 'none'}" in (
                v2["problems"][controller]
            )
    assert set(v2["parents"].values()) == {mount}
    if not {MEMORY, PIDS} <= set(data["controllers"]):
        found = cgroups.probe(refresh=True)
        if found.v1 is not None and found.v1.covers({MEMORY, PIDS}):
            assert data["chosen"] == 1, data
