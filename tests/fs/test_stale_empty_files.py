"""The hidden-file stand-in's directory of a caller killed with SIGKILL is
removed by the next caller that makes one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time

from stockade.fs import run as fsrun
from stockade.linux.cgroups import pid_namespace_id


def _make(base, name, files=("hidden",)):
    path = os.path.join(base, name)
    os.mkdir(path)
    for f in files:
        open(os.path.join(path, f), "w").close()
    return path


def test_only_directories_of_dead_owners_are_removed(tmp_path):
    ns = pid_namespace_id()
    me = os.getpid()
    started = fsrun._start_time(me)
    base = str(tmp_path)
    dead = _make(base, f"stockade-fs-{ns}-{me}-1-abcd1234")  # pid reused: another start
    gone = _make(base, f"stockade-fs-{ns}-{2**22 + 5}-77-abcd1234", files=())
    alive = _make(base, f"stockade-fs-{ns}-{me}-{started}-abcd1234")
    other_ns = _make(base, f"stockade-fs-{ns + 1}-{2**22 + 5}-77-abcd1234")
    old_style = _make(base, "stockade-fs-abcd1234")
    extra = _make(base, f"stockade-fs-{ns}-{2**22 + 6}-77-abcd1234", files=("hidden", "x"))

    removed = fsrun.remove_stale_empty_files(base)

    assert sorted(removed) == sorted([dead, gone])
    for kept in (alive, other_ns, old_style, extra):
        assert os.path.isdir(kept), kept


def _own(pid):
    tmp = tempfile.gettempdir()
    return [n for n in os.listdir(tmp) if n.startswith("stockade-fs-")
            and n.split("-")[3:4] == [str(pid)]]


def test_a_cli_killed_with_sigkill_leaves_nothing_after_the_next_run(workspace):
    (workspace / "secret").write_text("x")
    args = [sys.executable, "-m", "stockade.cli", "run", "--no-log", "--hide", "secret", "--"]
    proc = subprocess.Popen([*args, "sleep", "60"], cwd=workspace,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not _own(proc.pid):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert _own(proc.pid)

    done = subprocess.run([*args, "true"], cwd=workspace, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert not _own(proc.pid)
