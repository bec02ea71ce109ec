"""The launcher's spare child (forked ahead of the next run): it holds none
of the launcher's descriptors, and a run still starts when it is gone."""

from __future__ import annotations

import os
import signal
import time

from stockade import SandboxConfig, SandboxManager
from stockade.linux.client import shared_launcher


def _spares() -> list[int]:
    """Children of the launcher still running the launcher's own program."""
    launcher = shared_launcher().pid()
    assert launcher is not None
    with open(f"/proc/{launcher}/cmdline", "rb") as fh:
        own = fh.read()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{name}/cmdline", "rb") as fh:
                cmd = fh.read()
        except OSError:
            continue
        if ppid == launcher and cmd == own:
            found.append(int(name))
    return found


def _wait_for_spare(timeout: float = 5.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        spares = _spares()
        if spares:
            return spares[0]
        time.sleep(0.02)
    raise AssertionError("no spare child")


def test_spare_holds_only_its_command_socket(workspace):
    manager = SandboxManager(SandboxConfig(execution_log=False))
    # keep a run going while the spare exists: its descriptors must not leak
    assert manager.execute(["true"], cwd=workspace).success
    spare = _wait_for_spare()
    fds = sorted(int(fd) for fd in os.listdir(f"/proc/{spare}/fd"))
    assert fds == [0, 1, 2, 3], fds
    assert os.readlink(f"/proc/{spare}/fd/3").startswith("socket:")


def test_run_starts_when_the_spare_was_killed(workspace):
    manager = SandboxManager(SandboxConfig(execution_log=False))
    assert manager.execute(["true"], cwd=workspace).success
    spare = _wait_for_spare()
    os.kill(spare, signal.SIGKILL)
    time.sleep(0.1)
    result = manager.execute(["sh", "-c", "echo ok"], cwd=workspace)
    assert result.success and result.stdout_text == "ok\n", result.summary()


def test_spares_are_used_and_replaced(workspace):
    if os.geteuid() == 0:
        os.chown(workspace, 65534, 65534)  # no idmapped mounts: those runs fork
    manager = SandboxManager(SandboxConfig(execution_log=False))
    assert manager.execute(["true"], cwd=workspace).success
    first = _wait_for_spare()
    assert manager.execute(["true"], cwd=workspace).success
    second = _wait_for_spare()
    assert second != first  # the first became that run, a new one waits
    assert not os.path.exists(f"/proc/{first}/cmdline") or _spares() == [second]


def test_a_large_spec_reaches_the_spare_in_a_memfd(workspace):
    if os.geteuid() == 0:
        os.chown(workspace, 65534, 65534)  # no idmapped mounts: the spare takes it
    manager = SandboxManager(SandboxConfig(execution_log=False))
    assert manager.execute(["true"], cwd=workspace).success
    spare = _wait_for_spare()
    big = "x" * 100_000  # past the inline limit of a message to the spare
    result = manager.execute(["sh", "-c", 'printf %s "$BIG" | wc -c'], cwd=workspace, env={"BIG": big})
    assert result.success, result.summary()
    assert result.stdout_text.strip() == "100000"
    assert not os.path.exists(f"/proc/{spare}") or _spares() != [spare]  # it took the run
