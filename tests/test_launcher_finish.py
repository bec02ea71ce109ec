"""When the launcher may report a run before the sandbox's pid 1 is reaped
(``Run._init_alone``): only when pid 1 has no child left, and only when the
run's CPU time comes from a cgroup."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest

from stockade.linux import cgroups
from stockade.linux.launcher import Run


def _run_for(init: subprocess.Popen, *, cgroup=True, monitor=False) -> Run:
    run = Run.__new__(Run)
    run.init_pid = init.pid
    run.init_pidfd = os.pidfd_open(init.pid)
    run.spec = {"monitor": True} if monitor else {}
    run.cgroup = SimpleNamespace(dirs={cgroups.CPUACCT: "/nonexistent"}) if cgroup else None
    run.launcher = SimpleNamespace(cgroups=object())
    return run


def _wait_until(predicate, seconds=5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


@pytest.fixture
def init_with_child():
    """A stand-in for pid 1: a process with one child, which it reaps once
    its stdin is closed."""
    proc = subprocess.Popen(
        [sys.executable, "-c",
         "import os, sys\n"
         "pid = os.fork()\n"
         "if pid == 0:\n"
         "    sys.stdin.read(); os._exit(0)\n"
         "print(pid, flush=True)\n"
         "os.waitpid(pid, 0)\n"
         "print('reaped', flush=True)\n"
         "sys.stdin.read()\n"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
    )
    child = int(proc.stdout.readline())
    yield proc, child
    proc.kill()
    proc.wait()


def test_not_alone_while_a_child_exists_zombie_or_not(init_with_child):
    proc, child = init_with_child
    run = _run_for(proc)
    try:
        assert not run._init_alone()
        os.kill(child, signal.SIGSTOP)
        assert not run._init_alone()
        os.kill(child, signal.SIGKILL)
        assert _wait_until(lambda: proc.stdout.readline() == b"reaped\n")
        assert run._init_alone()
    finally:
        os.close(run.init_pidfd)


def test_never_alone_without_a_cgroup_counting_cpu_or_in_the_second_tier(init_with_child):
    proc, child = init_with_child
    os.kill(child, signal.SIGKILL)
    assert proc.stdout.readline() == b"reaped\n"
    for run in (_run_for(proc, cgroup=False), _run_for(proc, monitor=True)):
        try:
            assert not run._init_alone()
        finally:
            os.close(run.init_pidfd)
    run = _run_for(proc)
    run.cgroup.dirs = {cgroups.MEMORY: "/nonexistent"}
    try:
        assert not run._init_alone()
    finally:
        os.close(run.init_pidfd)
    run = _run_for(proc)
    run.launcher.cgroups = None
    try:
        assert not run._init_alone()
    finally:
        os.close(run.init_pidfd)


def test_a_zombie_child_still_counts():
    """A child that exited but is not reaped is still listed: pid 1's
    namespace is not empty until pid 1 reaps it."""
    proc = subprocess.Popen(
        [sys.executable, "-c",
         "import os, signal, sys\n"
         "pid = os.fork()\n"
         "if pid == 0:\n"
         "    os._exit(0)\n"
         "print(pid, flush=True)\n"
         "sys.stdin.read()\n"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
    )
    try:
        child = int(proc.stdout.readline())
        assert _wait_until(lambda: _state(child) == "Z")
        run = _run_for(proc)
        try:
            assert not run._init_alone()
        finally:
            os.close(run.init_pidfd)
    finally:
        proc.kill()
        proc.wait()


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return ""


def test_a_pid_1_already_reaped_is_alone():
    """Reaped by its parent (bubblewrap's monitor) means it exited, which pid
    1 of a namespace does only once the namespace is empty."""
    proc = subprocess.Popen(["sleep", "30"])
    run = _run_for(proc)
    try:
        proc.kill()
        proc.wait()
        assert run._init_alone()
    finally:
        os.close(run.init_pidfd)


def _exit_line_run(proc: subprocess.Popen, **state) -> tuple[Run, list[bool]]:
    run = _run_for(proc)
    run.finished = False
    run.status = None
    run.killed = None
    run.errsock = None
    run.exec_done = True
    run.dispatched = False
    run.init_lingers = run.monitor_lingers = False
    for key, value in state.items():
        setattr(run, key, value)
    calls: list[bool] = []
    run.finish = lambda: calls.append(True)  # type: ignore[method-assign]
    return run, calls


@pytest.mark.parametrize(
    "state",
    [
        {"killed": "timeout"},
        {"exec_done": False},
        {"errsock": object()},
        {"status": 0},
        {"finished": True},
        {"spec": {"pool": {"slot": 9}}},
        {"cgroup": None},
    ],
    ids=lambda s: next(iter(s)),
)
def test_the_exit_line_ends_only_a_natural_end_with_a_cgroup(state):
    proc = subprocess.Popen(["sleep", "30"])
    try:
        run, calls = _exit_line_run(proc, **state)
        try:
            run._finish_at_exit_line()
            assert calls == []
            time.sleep(0.05)
            assert proc.poll() is None  # not even killed
        finally:
            os.close(run.init_pidfd)
    finally:
        proc.kill()
        proc.wait()


def test_the_exit_line_ends_a_run_whose_pid_1_is_alone():
    proc = subprocess.Popen(["sleep", "30"])
    try:
        run, calls = _exit_line_run(proc, spec={"pool": {"slot": 9}}, dispatched=True)
        try:
            run._finish_at_exit_line()
            assert calls == [True]
            assert run.init_lingers and run.monitor_lingers
            assert proc.wait(timeout=5) == -signal.SIGKILL  # pid 1 killed first
        finally:
            os.close(run.init_pidfd)
    finally:
        proc.kill()
        proc.wait()
