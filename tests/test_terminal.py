"""The caller's terminal after a run: a pseudo-terminal as the program's.

The program gets the CLI's stdin, stdout and stderr; when they are a
terminal it may change its settings. What no restore can undo or has no use
in a run is refused by the filter (TIOCSETD...); the CLI puts the rest back.
"""

from __future__ import annotations

import fcntl
import os
import pty
import signal
import struct
import subprocess
import sys
import termios
import threading
import time

import pytest

from stockade import SandboxConfig, SandboxManager
from stockade.terminal import TIOCGETD, preserved

N_TTY = 0


@pytest.fixture
def terminal():
    """(master, slave) of a fresh pty, echo on, 24x80; output drained."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    stop = threading.Event()

    def drain() -> None:
        while not stop.is_set():
            try:
                if not os.read(master, 65536):
                    return
            except OSError:
                return

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        yield master, slave
    finally:
        stop.set()
        os.close(slave)
        os.close(master)


def _cli(*args: str, slave: int, cwd) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "stockade.cli", "run", "--no-log", *args],
        cwd=cwd, stdin=slave, stdout=slave, stderr=slave,
        start_new_session=True,
    )


def _echo(slave: int) -> bool:
    return bool(termios.tcgetattr(slave)[3] & termios.ECHO)


def _winsize(slave: int) -> tuple[int, int]:
    rows, cols, _x, _y = struct.unpack(
        "HHHH", fcntl.ioctl(slave, termios.TIOCGWINSZ, b"\0" * 8)
    )
    return rows, cols


@pytest.mark.parametrize("tier", ["namespaces", "landlock"])
def test_cli_puts_back_termios_settings_and_window_size(tier, terminal, workspace):
    _master, slave = terminal
    before = termios.tcgetattr(slave)
    script = (
        "import fcntl, struct, termios, subprocess; "
        "subprocess.run(['stty', '-echo', 'intr', '^A', 'raw']); "
        "fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack('HHHH', 1, 2, 0, 0)); "
        "a = termios.tcgetattr(0); "
        "print('inside', bool(a[3] & termios.ECHO), a[6][termios.VINTR])"
    )
    proc = _cli("--tier", tier, "--", "python3", "-c", script, slave=slave, cwd=workspace)
    assert proc.wait(timeout=120) == 0
    after = termios.tcgetattr(slave)
    assert _echo(slave)
    assert after[6][termios.VINTR] == before[6][termios.VINTR]
    assert after == before
    assert _winsize(slave) == (24, 80)


def _wait_for_echo_off(slave: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while _echo(slave):
        assert proc.poll() is None, "the run ended before stty"
        assert time.monotonic() < deadline, "stty -echo never took effect"
        time.sleep(0.02)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_cli_puts_back_the_terminal_when_it_is_stopped(signum, terminal, workspace):
    _master, slave = terminal
    proc = _cli("--", "sh", "-c", "stty -echo; exec sleep 60", slave=slave, cwd=workspace)
    try:
        _wait_for_echo_off(slave, proc)
        proc.send_signal(signum)
        assert proc.wait(timeout=60) == 128 + signum
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert _echo(slave)


def test_cli_puts_back_the_terminal_after_a_timeout(terminal, workspace):
    _master, slave = terminal
    proc = _cli("--timeout", "1", "--", "sh", "-c", "stty -echo; exec sleep 60",
                slave=slave, cwd=workspace)
    assert proc.wait(timeout=60) == 124
    assert _echo(slave)


@pytest.mark.parametrize("tier", ["namespaces", "landlock"])
@pytest.mark.parametrize("mode", ["strict", "moderate", "permissive"])
def test_tiocsetd_is_refused_and_named(tier, mode, terminal, workspace):
    _master, slave = terminal
    config = SandboxConfig(mode=mode, tier=tier, execution_log=False)
    manager = SandboxManager(config)
    decision = manager.decide()
    if not decision.ok:
        pytest.skip(f"this host cannot run tier {tier}: {decision.error()}")
    script = (
        "import errno, fcntl, struct\n"
        "try:\n"
        "    fcntl.ioctl(0, 0x5423, struct.pack('i', 27))  # TIOCSETD N_NULL\n"
        "except OSError as err:\n"
        "    raise SystemExit(0 if err.errno == errno.EPERM else err.errno)\n"
        "raise SystemExit(99)\n"
    )
    with os.fdopen(os.dup(slave), "rb", buffering=0) as stdin:
        result = manager.execute(["python3", "-c", script], cwd=workspace, stdin=stdin)
    assert result.exit_code == 0, (result.summary(), result.stderr_text)
    details = {v.what: v.detail for v in result.violations}
    assert details.get("ioctl") == "TIOCSETD", result.violations
    ldisc = struct.unpack("i", fcntl.ioctl(slave, TIOCGETD, b"\0" * 4))[0]
    assert ldisc == N_TTY


def test_preserved_restores_nonblocking_mode_and_settings(terminal):
    _master, slave = terminal
    flags = fcntl.fcntl(slave, fcntl.F_GETFL)
    with preserved([slave]):
        attrs = termios.tcgetattr(slave)
        attrs[3] &= ~termios.ECHO
        termios.tcsetattr(slave, termios.TCSANOW, attrs)
        fcntl.fcntl(slave, fcntl.F_SETFL, flags | os.O_NONBLOCK)
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 3, 4, 0, 0))
    assert _echo(slave)
    assert fcntl.fcntl(slave, fcntl.F_GETFL) == flags
    assert _winsize(slave) == (24, 80)


def test_preserved_ignores_what_is_not_a_terminal(tmp_path):
    with open(tmp_path / "f", "w") as fh, preserved([fh.fileno(), 1000]):
        pass
