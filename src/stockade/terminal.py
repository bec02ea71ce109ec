"""Put the caller's terminal back as it was before a run.

A program that gets the caller's terminal (``stockade run`` passes its
stdin, stdout and stderr through) may change its settings: ``stty -echo``,
raw mode, another window size, non-blocking mode on the shared open file.
The syscall filter refuses the requests whose effect no restore can undo or
that have no use in a run (``syscall_groups.IOCTL_DENIED``); the others stay
allowed, since interactive programs need them, and ``preserved`` restores
what they change once the run is over.

The CLI uses ``preserved`` around every run. The Python API leaves the
caller's terminal to the caller: a caller that passes a terminal to
``SandboxManager.execute`` (``stdin=sys.stdin``, or inherits one) can wrap the
call the same way::

    from stockade.terminal import preserved

    with preserved():
        result = manager.execute(["python3", "game.py"], stdin=sys.stdin)
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import struct
import termios
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

TIOCGETD = 0x5424
TIOCSETD = 0x5423
N_TTY = 0


@dataclass
class _Saved:
    fd: int
    attrs: list | None
    winsize: bytes | None
    ldisc: int | None
    flags: int | None


def _save(fd: int) -> _Saved | None:
    try:
        if not os.isatty(fd):
            return None
    except OSError:
        return None

    def attempt(get):  # type: ignore[no-untyped-def]
        try:
            return get()
        except (OSError, termios.error):
            return None

    return _Saved(
        fd,
        attempt(lambda: termios.tcgetattr(fd)),
        attempt(lambda: fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8)),
        attempt(lambda: struct.unpack("i", fcntl.ioctl(fd, TIOCGETD, b"\0" * 4))[0]),
        attempt(lambda: fcntl.fcntl(fd, fcntl.F_GETFL)),
    )


def _restore(saved: _Saved) -> None:
    fd = saved.fd

    def attempt(put):  # type: ignore[no-untyped-def]
        with contextlib.suppress(OSError, termios.error):
            put()

    if saved.ldisc is not None:
        # TIOCSETD is refused in the sandbox; a disabled-mode run may have used it
        current = None
        with contextlib.suppress(OSError):
            current = struct.unpack("i", fcntl.ioctl(fd, TIOCGETD, b"\0" * 4))[0]
        if current is not None and current != saved.ldisc:
            attempt(lambda: fcntl.ioctl(fd, TIOCSETD, struct.pack("i", saved.ldisc)))
    # output suspended with tcflow(TCOOFF) would stop the CLI's summary line
    attempt(lambda: termios.tcflow(fd, termios.TCOON))
    if saved.attrs is not None:
        # TCSANOW: TCSADRAIN would wait for output a stopped terminal never
        # sends, TCSAFLUSH would drop what the user typed ahead
        attempt(lambda: termios.tcsetattr(fd, termios.TCSANOW, saved.attrs))
    if saved.winsize is not None:
        current = None
        with contextlib.suppress(OSError):
            current = fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8)
        if current != saved.winsize:
            attempt(lambda: fcntl.ioctl(fd, termios.TIOCSWINSZ, saved.winsize))
    if saved.flags is not None:
        # O_NONBLOCK set on the open file the caller's shell shares
        attempt(lambda: fcntl.fcntl(fd, fcntl.F_SETFL, saved.flags))


def save(fds: Iterable[int] = (0, 1, 2)) -> list[_Saved]:
    """The settings of each of ``fds`` that is a terminal."""
    return [s for s in (_save(fd) for fd in fds) if s is not None]


def restore(saved: list[_Saved]) -> None:
    """Put back what ``save`` read: line discipline, flow, termios settings,
    window size (when it changed) and file status flags. Errors are ignored
    (a terminal that is gone has nothing to restore). SIGTTOU is ignored
    meanwhile, so that a CLI in a background job is not stopped by it."""
    if not saved:
        return
    try:
        previous = signal.signal(signal.SIGTTOU, signal.SIG_IGN)
    except ValueError:  # not the main thread: the signal cannot be changed
        previous = None
    try:
        for item in saved:
            _restore(item)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTTOU, previous)


@contextlib.contextmanager
def preserved(fds: Iterable[int] = (0, 1, 2)) -> Iterator[None]:
    """Restore the terminal settings of ``fds`` when the block ends, however
    it ends (an exception, KeyboardInterrupt, the CLI's SIGTERM)."""
    saved = save(fds)
    try:
        yield
    finally:
        restore(saved)
