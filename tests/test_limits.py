"""Limits of the whole process tree, on this host's real cgroups.

Memory, processes and CPU of every process of a run together; the disk
budget; usage figures from the run's cgroup; no cgroup left behind.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from stockade import SandboxConfig, SandboxManager, Termination
from stockade.linux import cgroups
from stockade.linux import limits as limits_mod
from stockade.linux.client import shared_launcher

MIB = 1024 * 1024


def _usable(required: set[str]) -> bool:
    try:
        cgroups.probe(refresh=True).choose(required)
    except cgroups.CgroupUnavailable:
        return False
    return True


needs_tree_limits = pytest.mark.skipif(
    not _usable({cgroups.MEMORY, cgroups.PIDS, cgroups.CPU, cgroups.CPUACCT}),
    reason="no usable cgroup with memory, pids, cpu and cpuacct for this caller",
)
pytestmark = needs_tree_limits


def _manager(**overrides) -> SandboxManager:
    return SandboxManager(SandboxConfig(execution_log=False, **overrides))


def _py(code: str) -> list[str]:
    return ["python3", "-c", textwrap.dedent(code)]


def _host_is_fine(workspace: Path) -> None:
    """After a limit hit, the launcher and the host still run things."""
    result = _manager().execute(["sh", "-c", "echo alive"], cwd=workspace)
    assert result.success and result.stdout == b"alive\n", result.summary()


def _our_cgroups(pid: int | None = None) -> list[str]:
    """Run cgroups of this pid namespace (of one launcher, if pid given)."""
    ns = cgroups.pid_namespace_id()
    prefix = f"stockade-{ns}-" + (f"{pid}-" if pid is not None else "")
    found = []
    backend = cgroups.probe().choose({cgroups.MEMORY})
    for parent in set(backend.parents.values()):
        found += [os.path.join(parent, n) for n in os.listdir(parent) if n.startswith(prefix)]
    return found


# -- joining before any code runs ------------------------------------------------------


def _without_cgroup_namespace(monkeypatch) -> None:
    """bubblewrap's cgroup namespace shows the run's cgroup as "/" to the
    program: leave it out so that the path itself is visible. Who joins
    when does not change: the launcher's child joins before it execs
    bubblewrap, whose children inherit the cgroup."""
    import stockade.manager as manager_mod

    real = manager_mod._bwrap.build_args

    def build_args(*args, **kwargs):
        return [a for a in real(*args, **kwargs) if a != "--unshare-cgroup-try"]

    monkeypatch.setattr(manager_mod._bwrap, "build_args", build_args)


def _assert_in_the_runs_cgroup(result) -> None:
    """Every limited hierarchy's line of /proc/self/cgroup, as the program
    read it first thing, names one run cgroup of this launcher."""
    assert result.success, result.summary() + result.stderr_text
    backend = cgroups.probe().choose({cgroups.MEMORY, cgroups.PIDS, cgroups.CPU, cgroups.CPUACCT})
    by_controller = {}
    for line in result.stdout.decode().splitlines():
        _num, names, path = line.split(":", 2)
        for name in names.split(",") if names else [""]:
            by_controller[name] = path
    prefix = f"stockade-{cgroups.pid_namespace_id()}-{shared_launcher().pid()}-"
    wanted = [""] if backend.version == 2 else sorted(backend.parents)
    leaves = {os.path.basename(by_controller[c]) for c in wanted}
    assert len(leaves) == 1 and leaves.pop().startswith(prefix), by_controller


def test_the_program_finds_itself_in_its_runs_cgroups_as_its_first_action(workspace, monkeypatch):
    manager = _manager()
    # with bubblewrap's cgroup namespace, the run's cgroup is its root
    inside = manager.execute(["cat", "/proc/self/cgroup"], cwd=workspace)
    assert inside.success, inside.summary()
    assert {line.split(":", 2)[2] for line in inside.stdout.decode().splitlines()} == {"/"}
    _without_cgroup_namespace(monkeypatch)
    _assert_in_the_runs_cgroup(_manager().execute(["cat", "/proc/self/cgroup"], cwd=workspace))


def test_a_prepared_sandboxs_program_is_in_its_runs_cgroups(workspace, monkeypatch):
    _without_cgroup_namespace(monkeypatch)
    manager = SandboxManager(SandboxConfig(execution_log=False, workspace=workspace), prewarm=1)
    try:
        manager.start(wait=True)
        result = manager.execute(["cat", "/proc/self/cgroup"], cwd=workspace)
    finally:
        manager.close()
    assert result.pooled, result.notes
    _assert_in_the_runs_cgroup(result)


def test_the_landlock_tiers_program_is_in_its_runs_cgroups(workspace):
    from stockade.linux.landlock import abi_version

    abi, why = abi_version()
    if abi < 6:
        pytest.skip(f"needs Landlock ABI 6+ (have {abi}: {why})")
    # no cgroup namespace on this tier: the program sees the host's paths
    result = _manager(tier="landlock").execute(["cat", "/proc/self/cgroup"], cwd=workspace)
    assert result.tier == "landlock"
    _assert_in_the_runs_cgroup(result)


# -- memory -------------------------------------------------------------------------


def test_one_process_allocating_past_the_limit_ends_with_memory_limit(workspace):
    result = _manager(memory_mb=128).execute(
        _py("""
            blocks = []
            while True:
                blocks.append(b"x" * (16 << 20))
                print(len(blocks) * 16, flush=True)
        """),
        cwd=workspace,
    )
    assert result.termination is Termination.MEMORY_LIMIT, result.summary()
    held = int(result.stdout.split()[-1])
    assert held <= 128
    assert result.usage.peak_memory_mb <= 128 + 1
    _host_is_fine(workspace)


def test_eight_children_each_under_the_limit_together_over_it(workspace):
    # 8 x 48 MiB = 384 MiB against 256 MiB: each child alone would pass, and
    # would under any per-process limit of 256 MiB
    result = _manager(memory_mb=256).execute(
        _py("""
            import os, time
            kids = []
            for _ in range(8):
                pid = os.fork()
                if pid == 0:
                    block = b"x" * (48 << 20)
                    time.sleep(5)
                    os._exit(0)
                kids.append(pid)
            for pid in kids:
                os.waitpid(pid, 0)
            print("all children done")
        """),
        cwd=workspace,
    )
    assert result.termination is Termination.MEMORY_LIMIT, result.summary()
    # ended at the OOM kill: the surviving children never finished their sleep
    assert b"all children done" not in result.stdout
    _host_is_fine(workspace)


@pytest.mark.parametrize(
    ("area", "memory_mb", "fill_mib"), [("/tmp", 64, 90), ("/dev/shm", 100, 150)]
)
def test_a_tmpfs_area_filled_past_the_memory_limit_is_a_memory_limit(
    workspace, area, memory_mb, fill_mib
):
    # tmpfs pages are charged to the run's cgroup, so the OOM killer may
    # choose bubblewrap itself: no status comes back, yet the end is the
    # memory limit, not a sandbox that failed to start its program
    result = _manager(memory_mb=memory_mb, disk_mb=fill_mib + 50).execute(
        ["sh", "-c", f"echo program-started; head -c {fill_mib}M /dev/zero > {area}/x"],
        cwd=workspace,
    )
    assert result.stdout == b"program-started\n"
    assert result.termination is Termination.MEMORY_LIMIT, result.summary()
    assert result.error is None or "could not start" not in result.error
    _host_is_fine(workspace)


def test_bubblewrap_killed_without_an_oom_kill_is_still_a_sandbox_error():
    from stockade import manager as manager_mod

    class Prepared:
        spec = {"json_status": True}

    event = {"event": "exit", "status": 9, "json_exit_code": None, "cgroup": {"oom_kills": 0}}
    _, _, termination, error = manager_mod._outcome(event, Prepared(), b"")
    assert termination is Termination.SANDBOX_ERROR
    assert error == "bubblewrap could not start the program: bwrap killed by signal 9"
    event["program_started"] = True
    assert manager_mod._outcome(event, Prepared(), b"")[3] == (
        "bubblewrap ended without the program's status: bwrap killed by signal 9"
    )
    event["cgroup"] = {"oom_kills": 1}
    assert manager_mod._outcome(event, Prepared(), b"")[:3] == (
        None, signal.SIGKILL, Termination.MEMORY_LIMIT
    )


def test_memory_limit_applies_without_swap_and_is_reported(workspace):
    # read the run's own cgroup while it runs: the memory limit, and swap
    # held at zero (v1: memory+swap equal to memory; v2: memory.swap.max 0)
    import threading

    launcher = shared_launcher()
    manager = _manager(memory_mb=64)
    assert manager.execute(["true"], cwd=workspace).success  # the launcher is up
    backend = cgroups.probe().choose({cgroups.MEMORY})
    files = {}
    box = {}
    worker = threading.Thread(
        target=lambda: box.setdefault("result", manager.execute(["sleep", "2"], cwd=workspace))
    )
    worker.start()
    try:
        deadline = time.monotonic() + 10
        while not files and time.monotonic() < deadline:
            for path in _our_cgroups(launcher.pid()):
                if os.path.dirname(path) != backend.parents[cgroups.MEMORY]:
                    continue  # another v1 hierarchy
                try:
                    procs = Path(path, "cgroup.procs").read_text().split()
                except FileNotFoundError:
                    continue  # an earlier run's, removed since it was listed
                if not procs:
                    continue  # the one made ahead for the next run
                names = ("memory.limit_in_bytes", "memory.memsw.limit_in_bytes", "memory.swappiness")
                if backend.version == 2:
                    names = ("memory.max", "memory.swap.max")
                files = {n: Path(path, n).read_text().strip() for n in names if Path(path, n).exists()}
            time.sleep(0.02)
    finally:
        worker.join()
    assert files, "the run's cgroup was not found while it ran"
    if backend.version == 2:
        assert files["memory.max"] == str(64 * MIB)
        assert files.get("memory.swap.max", "0") == "0"
    else:
        assert files["memory.limit_in_bytes"] == str(64 * MIB)
        if backend.swap_accounting:
            assert files["memory.memsw.limit_in_bytes"] == str(64 * MIB)
        else:
            assert files["memory.swappiness"] == "0"
    result = box["result"]
    assert result.success, result.summary()
    memory = {p.name: p for p in result.protections}["memory"]
    assert memory.status == "enforced"
    assert "whole tree" in memory.detail and "cgroup v" in memory.detail
    assert ("swap disabled" if backend.swap_accounting else "swap not limited") in memory.detail


def test_peak_memory_of_a_program_touching_200_mib(workspace):
    result = _manager(memory_mb=512).execute(
        _py("""
            block = bytearray(200 << 20)
            for i in range(0, len(block), 4096):
                block[i] = 1
        """),
        cwd=workspace,
    )
    assert result.success, result.summary()
    assert 200 <= result.usage.peak_memory_mb <= 260, result.usage
    assert result.usage.source.startswith("cgroup v")


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_node_with_its_default_heap_runs_under_512_mib(workspace):
    # RLIMIT_AS would break V8 (it reserves far more address space than it
    # uses); the cgroup limit counts memory actually used
    result = _manager(memory_mb=512).execute(
        ["node", "-e", "const a = []; for (let i = 0; i < 20; i++) a.push(new Array(1e6).fill(i));"
                       " console.log('node ok', a.length)"],
        cwd=workspace,
    )
    assert result.success, result.summary() + result.stderr_text
    assert result.stdout == b"node ok 20\n"


# -- processes ------------------------------------------------------------------------


def test_fork_bomb_ends_with_pids_limit(workspace):
    result = _manager(max_processes=32, timeout_sec=30).execute(
        ["sh", "-c", "bomb() { bomb | bomb & }; bomb; sleep 20"],
        cwd=workspace,
    )
    assert result.termination is Termination.PIDS_LIMIT, result.summary()
    assert result.usage.peak_processes is not None
    assert result.usage.peak_processes <= 32
    _host_is_fine(workspace)


def test_threads_count_against_the_process_limit(workspace):
    result = _manager(max_processes=10).execute(
        _py("""
            import threading, time
            started = 0
            try:
                for _ in range(50):
                    threading.Thread(target=time.sleep, args=(3,), daemon=True).start()
                    started += 1
            finally:
                print("threads", started, flush=True)
        """),
        cwd=workspace,
    )
    assert result.termination is Termination.PIDS_LIMIT, result.summary()
    assert int(result.stdout.split()[-1]) <= 9


def test_peak_processes_counts_the_programs_tree(workspace):
    result = _manager().execute(["sh", "-c", "sleep 0.3 & sleep 0.3 & wait"], cwd=workspace)
    assert result.success
    assert result.usage.peak_processes == 3  # sh and two sleeps


# -- CPU ------------------------------------------------------------------------------


def test_cpu_quota_of_half_a_core(workspace):
    result = _manager(cpu_cores=0.5).execute(
        _py("""
            import time
            end = time.monotonic() + 2
            while time.monotonic() < end:
                pass
        """),
        cwd=workspace,
    )
    assert result.success, result.summary()
    share = result.usage.cpu_total_sec / result.wall_time_sec
    assert 0.3 <= share <= 0.65, (result.usage, result.wall_time_sec)


def test_cpu_usage_of_one_second_of_burning(workspace):
    result = _manager().execute(
        _py("""
            import time
            t = time.process_time()
            while time.process_time() - t < 1:
                # mostly user time: each look at the clock is a system call
                sum(range(20000))
        """),
        cwd=workspace,
    )
    assert result.success, result.summary()
    assert 0.9 <= result.usage.cpu_total_sec <= 1.3, result.usage
    assert result.usage.cpu_user_sec > 0.5


def test_cpu_time_is_a_budget_for_the_whole_tree(workspace):
    # four workers ignoring SIGXCPU, each could take 2 s under RLIMIT_CPU
    result = _manager(cpu_time_sec=1.0, timeout_sec=30).execute(
        _py("""
            import os, signal, time
            for _ in range(4):
                if os.fork() == 0:
                    signal.signal(signal.SIGXCPU, signal.SIG_IGN)
                    end = time.monotonic() + 6
                    while time.monotonic() < end:
                        pass
                    os._exit(0)
            while True:
                try:
                    os.wait()
                except ChildProcessError:
                    break
            print("workers finished")
        """),
        cwd=workspace,
    )
    assert result.termination is Termination.CPU_LIMIT, result.summary()
    assert b"workers finished" not in result.stdout
    assert 1.0 <= result.usage.cpu_total_sec <= 1.5, result.usage
    cpu = {p.name: p for p in result.protections}["cpu"]
    assert cpu.status == "enforced" and "whole tree" in cpu.detail


# -- disk -------------------------------------------------------------------------------


def test_one_file_stops_at_the_disk_size_with_efbig(workspace):
    result = _manager(disk_mb=20).execute(
        _py("""
            import errno, signal
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            try:
                with open("big", "wb") as f:
                    for _ in range(40):
                        f.write(b"x" * (1 << 20))
                        f.flush()
            except OSError as e:
                print(errno.errorcode[e.errno])
        """),
        cwd=workspace,
    )
    assert result.stdout == b"EFBIG\n", result.summary() + result.stderr_text
    assert (workspace / "big").stat().st_size == 20 * MIB


def test_private_tmp_stops_at_the_disk_size_with_enospc(workspace):
    result = _manager(disk_mb=100, max_file_size_mb=200).execute(
        ["sh", "-c", "dd if=/dev/zero of=/tmp/fill bs=1M count=150 2>&1 | grep -o 'No space left on device'"],
        cwd=workspace,
    )
    assert b"No space left on device" in result.stdout, result.stdout


@pytest.mark.parametrize("area", ["/tmp", "/var/tmp", "/dev/shm", "$HOME"])
def test_a_full_private_area_ends_the_run_with_disk_limit(workspace, area):
    # the program survives the refused write and exits 0: the result still
    # says the cap acted, and the CLI does not report success
    from stockade.cli import EXIT_LIMIT_SURVIVED, exit_status

    result = _manager(disk_mb=20, max_file_size_mb=100).execute(
        ["sh", "-c", f"head -c 30000000 /dev/zero > {area}/fill; echo written; exit 0"],
        cwd=workspace,
    )
    assert result.termination is Termination.DISK_LIMIT, result.summary() + result.stderr_text
    assert result.exit_code == 0 and result.stdout == b"written\n"
    assert b"No space left on device" in result.stderr
    assert exit_status(result) == EXIT_LIMIT_SURVIVED
    full = [v for v in result.violations if v.mechanism == "disk"]
    expected = "/home/sandbox" if area == "$HOME" else area
    assert [(v.what, v.action) for v in full] == [(expected, "errno:ENOSPC")], result.violations
    assert "20 MiB" in full[0].detail


def test_only_a_full_area_is_a_disk_limit(workspace):
    manager = _manager(disk_mb=20)
    below = manager.execute(
        ["sh", "-c", "head -c 5000000 /dev/zero > /tmp/part; head -c 5000000 /dev/zero > /dev/shm/part"],
        cwd=workspace,
    )
    assert below.success, below.summary() + below.stderr_text
    assert not below.violations
    assert not any("tmpfs" in note for note in below.notes), below.notes
    # the same 20 MiB in one area fills it
    full = manager.execute(
        ["sh", "-c", "head -c 10000000 /dev/zero > /tmp/a; head -c 11000000 /dev/zero > /tmp/b"],
        cwd=workspace,
    )
    assert full.termination is Termination.DISK_LIMIT, full.summary()
    assert full.exit_code == 1  # head's own status: its write was refused


def test_without_a_syscall_filter_a_full_area_is_still_seen(workspace, monkeypatch):
    # no filter, so no exec is seen: the launcher opens the areas once
    # bubblewrap's view is finished
    import stockade.manager as manager_mod

    monkeypatch.setattr(manager_mod._seccomp, "filter_for_config", lambda *a, **k: None)
    result = _manager(disk_mb=20, max_file_size_mb=100).execute(
        ["sh", "-c", "sleep 0.2; head -c 30000000 /dev/zero > /tmp/fill; exit 0"], cwd=workspace
    )
    assert "seccomp" not in {v.mechanism for v in result.violations}
    assert result.termination is Termination.DISK_LIMIT, result.summary() + str(result.notes)
    assert [v.what for v in result.violations if v.mechanism == "disk"] == ["/tmp"]


def test_a_prepared_sandboxs_full_tmp_is_a_disk_limit(workspace):
    # a pooled run: the areas were opened when the sandbox's waiter started
    manager = SandboxManager(
        SandboxConfig(execution_log=False, disk_mb=20, max_file_size_mb=100, workspace=workspace),
        prewarm=1,
    )
    try:
        manager.start(wait=True)
        result = manager.execute(
            ["sh", "-c", "head -c 30000000 /dev/zero > /tmp/fill; exit 0"], cwd=workspace
        )
    finally:
        manager.close()
    assert result.pooled, result.notes
    assert result.termination is Termination.DISK_LIMIT, result.summary() + result.stderr_text
    assert [v.what for v in result.violations if v.mechanism == "disk"] == ["/tmp"]


def test_many_files_past_the_workspace_budget_end_with_disk_limit(workspace):
    result = _manager(disk_mb=30, timeout_sec=60).execute(
        _py("""
            import time
            for i in range(40):
                with open(f"part{i}", "wb") as f:
                    f.write(b"x" * (2 << 20))
                    f.flush()
                    import os; os.fsync(f.fileno())
                time.sleep(0.01)
            print("wrote everything")
        """),
        cwd=workspace,
    )
    assert result.termination is Termination.DISK_LIMIT, result.summary()
    assert b"wrote everything" not in result.stdout
    written = sum(p.stat().st_size for p in workspace.glob("part*"))
    # the budget also counts the directory and a block per new inode, so
    # the run may end with exactly 30 MiB of file contents
    assert 30 * MIB - (1 << 20) < written <= 60 * MIB


def test_past_the_budget_at_the_end_keeps_the_programs_exit_status(workspace):
    # just under the budget, then 3 MB more and exit at once: the last look
    # at the end finds it over (a poll can catch the last write itself, a
    # window of a millisecond or two in 50 ms; then try again)
    manager = _manager(disk_mb=30)
    for attempt in range(4):
        for part in workspace.glob("part*"):
            part.unlink()
        result = manager.execute(
            ["sh", "-c", "head -c 29000000 /dev/zero > part1; sleep 0.2; head -c 3000000 /dev/zero > part2"],
            cwd=workspace,
        )
        assert result.termination is Termination.DISK_LIMIT, result.summary()
        if result.exit_code is not None:
            break
    assert result.exit_code == 0 and result.signal is None, (attempt, result.summary())
    assert [v.what for v in result.violations if v.mechanism == "disk"] == ["workspace"]


def test_deleted_files_held_open_count_against_the_workspace_budget(workspace):
    # 80 MiB in 8 files unlinked while open: no walk finds them, the disk
    # still holds them
    result = _manager(disk_mb=10, timeout_sec=60).execute(
        _py("""
            import os, time
            fds = []
            for i in range(8):
                fds.append(os.open(f"f{i}", os.O_CREAT | os.O_WRONLY))
                os.unlink(f"f{i}")
                for _ in range(10):
                    os.write(fds[-1], b"x" * (1 << 20))
                os.fsync(fds[-1])
            print("wrote", flush=True)
            time.sleep(1.5)
            print("still running")
        """),
        cwd=workspace,
    )
    assert result.termination is Termination.DISK_LIMIT, result.summary()
    assert b"still running" not in result.stdout
    assert [v.what for v in result.violations if v.mechanism == "disk"] == ["workspace"]


def test_deleted_files_held_only_by_a_mapping_count_against_the_budget(workspace):
    result = _manager(disk_mb=10, timeout_sec=60).execute(
        _py("""
            import mmap, os, time
            maps = []
            for i in range(8):
                fd = os.open(f"m{i}", os.O_CREAT | os.O_RDWR)
                os.unlink(f"m{i}")
                os.ftruncate(fd, 8 << 20)
                maps.append(mmap.mmap(fd, 8 << 20))
                os.close(fd)  # only the mapping holds the file now
                for off in range(0, 8 << 20, 4096):
                    maps[-1][off] = 1
                maps[-1].flush()
            print("wrote", flush=True)
            time.sleep(1.5)
            print("still running")
        """),
        cwd=workspace,
    )
    assert result.termination is Termination.DISK_LIMIT, result.summary()
    assert b"still running" not in result.stdout


def test_the_budget_counts_deleted_files_of_the_runs_processes_only(tmp_path):
    from stockade.linux.diskbudget import DiskBudget

    mine: list[int] = []
    budget = DiskBudget(str(tmp_path), 4 * MIB, pids=lambda: mine)
    fd = os.open(tmp_path / "held", os.O_CREAT | os.O_WRONLY)
    try:
        os.unlink(tmp_path / "held")
        os.write(fd, b"x" * (3 * MIB))
        os.fsync(fd)
        # (the directory itself counts only what it grew by)
        tree, complete = budget.measure()
        assert complete and budget.held == 0  # not one of the run's processes
        mine.append(os.getpid())
        measured, complete = budget.measure()
        assert complete and 3 * MIB <= budget.held < 4 * MIB, budget.held
        assert measured == tree + budget.held
    finally:
        os.close(fd)
    assert budget.measure() == (tree, True)  # closed: its space is free again
    assert budget.held == 0


def test_a_file_stopped_at_the_size_cap_is_within_the_workspace_budget(workspace):
    # disk_mb is also each file's size cap (EFBIG): a program that writes one
    # file up to it and carries on is within its budget, polls or not (the
    # workspace directory counts only what it grew by, here nothing)
    result = _manager(disk_mb=8).execute(
        _py("""
            import signal, time
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            try:
                with open("big.bin", "wb") as f:
                    while True:
                        f.write(b"x" * (1 << 20))
                        f.flush()
            except OSError as err:
                print("stopped:", err.strerror)
            time.sleep(0.5)  # several polls, each may walk
            print("done")
        """),
        cwd=workspace,
    )
    assert result.termination is Termination.EXITED, result.summary()
    assert result.stdout_text.split("\n")[:2] == ["stopped: File too large", "done"], result.stdout_text
    assert (workspace / "big.bin").stat().st_size == 8 * MIB


def test_files_already_in_the_workspace_do_not_count(workspace):
    (workspace / "old.bin").write_bytes(b"\0" * (40 * MIB))
    result = _manager(disk_mb=30).execute(
        ["sh", "-c", "dd if=/dev/zero of=new.bin bs=1M count=10 2>/dev/null; cat old.bin >/dev/null"],
        cwd=workspace,
    )
    assert result.success, result.summary()


# -- leftovers --------------------------------------------------------------------------


@pytest.mark.slow
def test_200_runs_killed_by_limits_and_timeouts_leave_no_cgroup(workspace):
    launcher = shared_launcher()
    launcher.stop()  # a fresh launcher: its cgroups are all this test's
    cases = [
        (dict(), ["true"], Termination.EXITED),
        (dict(memory_mb=32), _py("x = b'x' * (64 << 20)"), Termination.MEMORY_LIMIT),
        (dict(max_processes=4), ["sh", "-c", "for i in 1 2 3 4 5 6; do sleep 2 & done; wait"],
         Termination.PIDS_LIMIT),
        (dict(timeout_sec=0.3), ["sleep", "10"], Termination.TIMEOUT),
        (dict(mode="disabled", timeout_sec=0.3), ["sh", "-c", "setsid sleep 30 & sleep 10"],
         Termination.TIMEOUT),
    ]
    managers = [(_manager(**cfg), argv, want) for cfg, argv, want in cases]
    for i in range(200):
        manager, argv, want = managers[i % len(managers)]
        result = manager.execute(argv, cwd=workspace)
        assert result.termination is want, (i, result.summary())
    pid = launcher.pid()
    assert pid is not None
    # while the launcher lives: at most the one made ahead for the next run
    deadline = time.monotonic() + 5
    while len({os.path.basename(p) for p in _our_cgroups(pid)}) > 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len({os.path.basename(p) for p in _our_cgroups(pid)}) <= 1
    launcher.stop()
    assert _our_cgroups(pid) == []


def test_cgroups_of_a_killed_launcher_are_removed_by_the_next(workspace):
    launcher = shared_launcher()
    manager = _manager()
    assert manager.execute(["true"], cwd=workspace).success
    old = launcher.pid()
    assert old is not None and _our_cgroups(old)  # the one made ahead
    os.kill(old, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while os.path.exists(f"/proc/{old}") and time.monotonic() < deadline:
        launcher._proc.poll()  # reap it
        time.sleep(0.02)
    assert _our_cgroups(old)  # left behind by the dead launcher
    assert manager.execute(["true"], cwd=workspace).success  # starts a new one
    assert launcher.pid() != old
    assert _our_cgroups(old) == []


def test_a_run_is_reported_only_once_none_of_its_processes_exists(workspace):
    """The launcher may report a run before the sandbox's pid 1 is reaped
    (its namespace teardown), but only once pid 1 has no child left: a
    process the program left behind is gone when execute() returns, not a
    moment later."""
    manager = _manager()
    for attempt in range(5):
        tag = f"stockade-left-{os.getpid()}-{attempt}-{time.monotonic_ns()}"
        marker = workspace / f"late-{attempt}"
        result = manager.execute(
            ["bash", "-c",
             f"(exec -a {tag} sleep 0.3) >/dev/null 2>&1 </dev/null & "
             f"(sleep 0.2; touch {marker}) >/dev/null 2>&1 </dev/null & exit 3"],
            cwd=workspace,
        )
        leftovers = [p for p in os.listdir("/proc") if p.isdigit() and tag.encode() in _cmdline(p)]
        assert result.exit_code == 3, result.summary()
        assert leftovers == [], result.summary()
        assert result.usage.source.startswith("cgroup"), result.usage
    time.sleep(0.4)
    assert not list(workspace.glob("late-*"))


def test_runs_reported_before_pid_1_is_reaped_leave_no_cgroup(workspace):
    launcher = shared_launcher()
    launcher.stop()  # a fresh launcher: its cgroups are all this test's
    manager = _manager()
    for _ in range(10):
        result = manager.execute(["true"], cwd=workspace)
        assert result.success, result.summary()
        assert result.usage.cpu_user_sec is not None and result.usage.peak_processes is not None
    pid = launcher.pid()
    assert pid is not None
    deadline = time.monotonic() + 5
    while len({os.path.basename(p) for p in _our_cgroups(pid)}) > 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    # at most the one made ahead for the next run
    assert len({os.path.basename(p) for p in _our_cgroups(pid)}) <= 1
    launcher.stop()
    assert _our_cgroups(pid) == []


def _cmdline(pid: str) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def test_disabled_mode_kills_what_escaped_the_process_group(workspace):
    marker = workspace / "still-alive"
    result = _manager(mode="disabled").execute(
        ["sh", "-c", f"setsid sh -c 'sleep 1; touch {marker}' >/dev/null 2>&1 & echo started"],
        cwd=workspace,
    )
    assert result.success
    time.sleep(1.5)
    assert not marker.exists()


# -- policy planning ---------------------------------------------------------------------


def test_no_rlimit_data_when_the_cgroup_limits_memory():
    config = SandboxConfig(memory_mb=100)
    plan = limits_mod.plan(config, workspace=None)
    names = [r[0] for r in plan.rlimits]
    assert "RLIMIT_DATA" not in names and "RLIMIT_NPROC" not in names
    assert plan.cgroup["memory_bytes"] == 100 * MIB
    spec = {"args_data": ["--"], "cgroup": plan.cgroup, "rlimits": plan.rlimits}
    assert limits_mod.finalize(spec, config) == limits_mod.BWRAP_TASKS
    assert plan.cgroup["pids_max"] == 512 + limits_mod.BWRAP_TASKS


def test_the_disk_row_claims_only_what_the_sandbox_enforces():
    config = SandboxConfig(disk_mb=10, memory_mb=64)
    status, detail = limits_mod.disk_status(config, limits_mod.TMPFS_CAPPED)
    assert status == "enforced" and "each private tmpfs area" in detail
    status, detail = limits_mod.disk_status(config, limits_mod.TMPFS_UNCAPPED, bwrap_version="0.4.1")
    assert status == "degraded" and "not capped" in detail and "0.4.1 lacks --size" in detail
    assert "memory_mb (64 MiB)" in detail
    status, detail = limits_mod.disk_status(config, limits_mod.TMPFS_RUN_DIR)
    assert status == "degraded" and "HOME and TMPDIR" in detail and "not capped" in detail
    status, detail = limits_mod.disk_status(config, limits_mod.TMPFS_NONE, unbudgeted=["/x"])
    assert status == "degraded" and "capped" not in detail and "host's /tmp" in detail


def test_disabled_mode_reports_no_tmpfs_cap(workspace, caplog):
    import logging

    with caplog.at_level(logging.WARNING, logger="stockade.manager"):
        manager = _manager(mode="disabled", disk_mb=10)
    warning = caplog.text
    assert "cgroup limits" in warning and "disk budget" in warning, warning
    assert "only the timeout, rlimits" not in warning
    result = manager.execute(["true"], cwd=workspace)
    assert result.success, result.summary()
    disk = {p.name: p for p in result.protections}["disk"]
    assert disk.status == "degraded", disk
    assert "tmpfs area" not in disk.detail and "not budgeted" in disk.detail


def test_without_bubblewraps_size_option_the_disk_row_is_degraded(workspace, monkeypatch):
    import dataclasses

    import stockade.manager as manager_mod

    real = manager_mod._bwrap.find_bwrap
    monkeypatch.setattr(
        manager_mod._bwrap, "find_bwrap", lambda *a: dataclasses.replace(real(*a), has_size=False)
    )
    result = _manager(disk_mb=10).execute(["sh", "-c", "df -k /tmp | tail -1"], cwd=workspace)
    assert result.success, result.summary() + result.stderr_text
    disk = {p.name: p for p in result.protections}["disk"]
    assert disk.status == "degraded" and "lacks --size" in disk.detail, disk
    assert int(result.stdout.split()[1]) > 10 * 1024  # /tmp really is not capped


def test_the_landlock_tiers_disk_row_is_degraded(workspace):
    from stockade.linux.landlock import abi_version

    if abi_version()[0] < 6:
        pytest.skip("needs Landlock ABI 6+")
    result = _manager(tier="landlock", disk_mb=10).execute(["true"], cwd=workspace)
    assert result.success and result.tier == "landlock", result.summary()
    disk = {p.name: p for p in result.protections}["disk"]
    assert disk.status == "degraded" and "HOME and TMPDIR" in disk.detail, disk


def test_writable_paths_outside_the_workspace_are_named_as_unbudgeted(workspace, tmp_path):
    other = Path(tempfile.mkdtemp(prefix="stockade-test-rw-", dir="/var/tmp"))
    try:
        result = _manager(disk_mb=10, writable=[str(other)]).execute(["true"], cwd=workspace)
    finally:
        shutil.rmtree(other, ignore_errors=True)
    assert result.success, result.summary() + result.stderr_text
    disk = {p.name: p for p in result.protections}["disk"]
    assert disk.status == "enforced" and f"not budgeted: {other}" in disk.detail


def test_without_cgroups_a_tree_limit_is_refused_or_degraded(monkeypatch):
    from stockade.errors import SandboxUnavailableError

    nothing = cgroups.Probe(None, cgroups.Backend(2, {}, {c: "not delegated" for c in cgroups.CONTROLLERS}, False))
    monkeypatch.setattr(cgroups, "probe", lambda refresh=False: nothing)
    with pytest.raises(SandboxUnavailableError) as info:
        limits_mod.plan(SandboxConfig(memory_mb=64, max_processes=None, cpu_time_sec=None), workspace=None)
    assert info.value.protection.startswith("memory")
    assert "allow_degraded = ['memory']" in info.value.fix
    config = SandboxConfig(memory_mb=64, max_processes=8, cpu_time_sec=5, allow_degraded=["memory", "pids", "cpu"])
    plan = limits_mod.plan(config, workspace=None)
    assert plan.cgroup is None
    rl = {r[0]: r[1:] for r in plan.rlimits}
    assert rl["RLIMIT_DATA"] == [64 * MIB, 64 * MIB]
    assert rl["RLIMIT_NPROC"] == [8, 8]
    assert rl["RLIMIT_CPU"] == [5, 6]
    assert {p.name: p.status for p in plan.protections}["memory"] == "degraded"


def test_cgroup_v2_end_to_end_on_the_hosts_unified_hierarchy(workspace, monkeypatch):
    """The launcher on cgroup v2 for real: this host's v2 hierarchy has no
    controllers, so only the CPU-time budget (cpu.stat is core) applies;
    create, join through cgroup.procs, poll, cgroup.kill and removal are
    the real kernel's."""
    found = cgroups.probe(refresh=True)
    if found.v2 is None or cgroups.CPUACCT not in found.v2.parents:
        pytest.skip("no writable cgroup v2 hierarchy for this caller")
    import functools

    import stockade.manager as manager_mod

    monkeypatch.setattr(manager_mod._limits, "plan", functools.partial(limits_mod.plan, version=2))
    manager = _manager(memory_mb=None, max_processes=None, cpu_time_sec=0.5)
    result = manager.execute(
        ["sh", "-c", "while :; do :; done & while :; do :; done"], cwd=workspace
    )
    assert result.termination is Termination.CPU_LIMIT, result.summary()
    assert result.usage.source.startswith("cgroup v2 (cpu)")
    assert 0.5 <= result.usage.cpu_total_sec <= 0.9
    cpu = {p.name: p for p in result.protections}["cpu"]
    assert "cgroup v2" in cpu.detail
    unified = found.v2.parents[cgroups.CPUACCT]
    prefix = f"stockade-{cgroups.pid_namespace_id()}-{shared_launcher().pid()}-"
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        names = [n for n in os.listdir(unified) if n.startswith(prefix)]
        if len(names) <= 1:  # at most the one made ahead
            break
        time.sleep(0.05)
    assert len(names) <= 1
