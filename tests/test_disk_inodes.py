"""Inodes and the workspace's disk budget.

An empty file, a directory or a symlink allocates (almost) nothing to
itself yet takes one of the file system's inodes: each inode the run
creates or changes is charged at least one block of the file system, and a
drop of free inodes makes the budget walk the workspace.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from stockade import SandboxConfig, SandboxManager, Termination
from stockade.linux.diskbudget import DiskBudget, TmpfsAreas, inode_charge

KIB = 1024
MIB = 1024 * KIB


def _manager(**overrides) -> SandboxManager:
    return SandboxManager(SandboxConfig(execution_log=False, **overrides))


def _py(code: str) -> list[str]:
    return ["python3", "-c", textwrap.dedent(code)]


# -- on the real sandbox ---------------------------------------------------------------


def test_many_empty_files_past_the_budget_end_with_disk_limit(workspace):
    # 5,000 empty files: no byte of data, 5,000 inodes of the host's file
    # system; at 4 KiB an inode, a 1 MiB budget holds about 256 of them
    result = _manager(disk_mb=1, timeout_sec=120).execute(
        _py("""
            import os
            for i in range(5000):
                os.close(os.open(f"f{i}", os.O_CREAT | os.O_WRONLY))
            print("made them all", flush=True)
        """),
        cwd=workspace,
    )
    assert result.termination is Termination.DISK_LIMIT, result.summary()
    assert b"made them all" not in result.stdout
    over = [v for v in result.violations if v.mechanism == "disk"]
    assert [v.what for v in over] == ["workspace"], result.violations
    assert "inodes" in over[0].detail, over[0].detail
    assert len(os.listdir(workspace)) < 5000


def test_empty_directories_and_symlinks_count_too(workspace):
    result = _manager(disk_mb=1, timeout_sec=120).execute(
        _py("""
            import os
            for i in range(2500):
                os.mkdir(f"d{i}")
                os.symlink("nowhere", f"l{i}")
            print("made them all", flush=True)
        """),
        cwd=workspace,
    )
    assert result.termination is Termination.DISK_LIMIT, result.summary()
    assert b"made them all" not in result.stdout


def test_a_git_commit_of_50_small_files_fits_a_50_mb_budget(workspace):
    if shutil.which("git") is None:
        pytest.skip("no git")
    result = _manager(disk_mb=50, timeout_sec=120).execute(
        ["sh", "-c", textwrap.dedent("""
            set -e
            git init -q -b main .
            git config user.email t@example.invalid && git config user.name t
            for i in $(seq 50); do echo "file $i" > "f$i.txt"; done
            git add . && git commit -qm fifty
            git ls-files | wc -l
        """)],
        cwd=workspace,
    )
    assert result.success, result.summary() + result.stderr_text
    assert result.stdout.split()[-1] == b"50", result.stdout


def test_files_already_in_the_workspace_do_not_count_as_inodes(workspace):
    for i in range(2000):
        (workspace / f"old{i}").touch()
    result = _manager(disk_mb=1).execute(
        ["sh", "-c", "ls | wc -l; touch new1 new2"], cwd=workspace
    )
    assert result.success, result.summary()
    assert result.stdout == b"2000\n"


# -- the charge rule and the trigger, on a real file system ----------------------------


def test_an_inode_costs_at_least_one_block():
    assert inode_charge(0, 4096) == 4096  # empty file, fast symlink, fifo
    assert inode_charge(1, 4096) == 4096
    assert inode_charge(8, 4096) == 4096  # one 4 KiB block
    assert inode_charge(24, 4096) == 12288  # files of a block or more: their size
    assert inode_charge(0, 65536) == 65536


def _settled(path: Path) -> None:
    """Make the directory's recent changes visible to statvfs and st_blocks."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def test_the_walk_charges_every_new_inode_at_least_a_unit(tmp_path):
    (tmp_path / "old").write_bytes(b"x" * 10000)
    os.mkdir(tmp_path / "olddir")
    # a ctime tick apart from the start (the coarse clock)
    time.sleep(0.02)
    budget = DiskBudget(str(tmp_path), 10 * MIB)
    time.sleep(0.02)
    unit = budget.unit
    assert unit == os.statvfs(tmp_path).f_frsize
    (tmp_path / "empty").touch()
    os.mkdir(tmp_path / "dir")
    os.symlink("x", tmp_path / "dir" / "link")
    os.mkfifo(tmp_path / "dir" / "fifo")
    os.link(tmp_path / "empty", tmp_path / "dir" / "hardlink")  # the same inode
    (tmp_path / "data").write_bytes(b"y" * (3 * unit))
    _settled(tmp_path)
    measured, complete = budget.measure()
    assert complete
    blocks = {p: os.lstat(p).st_blocks for p in (tmp_path / "dir", tmp_path / "data")}
    # dir (entries were made in it), empty, link, fifo, data; the top
    # directory counts only what it grew by (nothing: its first block holds
    # these few entries), and is not one of the run's inodes
    assert budget.inodes == 5, budget.inodes
    grown = (os.lstat(tmp_path).st_blocks - budget.top_blocks0) * 512
    want = 3 * unit + sum(inode_charge(b, unit) for b in blocks.values()) + grown
    assert measured == want, (measured, want, blocks)


def test_a_drop_of_free_inodes_alone_makes_the_budget_walk(tmp_path):
    if os.statvfs(tmp_path).f_files == 0:
        pytest.skip("this file system keeps no inode count")
    # other writers on this file system may make it walk early (the walk
    # finds the budget kept), or free space meanwhile and hide the drop:
    # then try again
    for attempt in range(4):
        where = tmp_path / str(attempt)
        where.mkdir()
        budget = DiskBudget(str(where), 256 * KIB)
        for i in range(10):
            (where / f"e{i}").touch()
        _settled(where)
        assert not budget.check(time.monotonic(), final=True)
        walks = budget.walks
        for i in range(10, 200):
            (where / f"e{i}").touch()
        _settled(where)
        # 200 empty files: no free byte less, 200 inodes of 4 KiB or more
        if budget.check(time.monotonic(), final=True):
            break
    assert budget.walks == walks + 1 and budget.inodes >= 200, attempt
    assert budget.measured >= 200 * budget.unit


def test_held_deleted_empty_files_count_a_unit(tmp_path):
    budget = DiskBudget(str(tmp_path), 10 * MIB, pids=lambda: [os.getpid()])
    fd = os.open(tmp_path, os.O_TMPFILE | os.O_WRONLY)
    try:
        measured, complete = budget.measure()
        assert complete
        assert budget.held == budget.unit
    finally:
        os.close(fd)
    budget.measure()
    assert budget.held == 0


# -- the private tmpfs areas -----------------------------------------------------------


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs: needs root")
def test_a_tmpfs_area_out_of_inodes_is_full():
    where = tempfile.mkdtemp(prefix="stockade-test-inodes-")
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m,nr_inodes=16", "tmpfs", where],
        check=True,
    )
    try:
        areas = TmpfsAreas([where], 1 * MIB)
        assert areas.open(os.getpid())
        assert list(areas.fds) == [where], areas.problems
        assert areas.full() == []
        with pytest.raises(OSError):
            for i in range(32):
                open(os.path.join(where, f"e{i}"), "w").close()
        full = areas.full()
        assert [a["area"] for a in full] == [where]
        assert full[0]["free_inodes"] == 0 and int(full[0]["free_bytes"]) > 0
        areas.close()
    finally:
        subprocess.run(["umount", where], check=True)
        os.rmdir(where)


def test_tmpfs_inodes_are_bounded_by_the_memory_limit(workspace):
    # bubblewrap has no nr_inodes option: a tmpfs area's inodes take no
    # block of its size, but kernel memory charged to the run's cgroup
    from stockade.linux import cgroups

    try:
        cgroups.probe(refresh=True).choose({cgroups.MEMORY})
    except cgroups.CgroupUnavailable:
        pytest.skip("no memory cgroup for this caller")
    result = _manager(disk_mb=10, memory_mb=48, timeout_sec=120).execute(
        _py("""
            import os
            for i in range(400000):
                os.close(os.open(f"/tmp/e{i}", os.O_CREAT | os.O_WRONLY))
            print("made them all", flush=True)
        """),
        cwd=workspace,
    )
    assert result.termination is Termination.MEMORY_LIMIT, result.summary()
    assert b"made them all" not in result.stdout
