"""The caller's side of the launcher: start it once, hand it runs.

One launcher serves every SandboxManager of a process. It is started on the
first run (or by ``SandboxManager.start()``), restarted if it died, and
replaced in a child after ``os.fork()``. It exits by itself when this process
exits, because its control socket then closes.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import threading
from typing import Any

from ..errors import SandboxUnavailableError

log = logging.getLogger(__name__)

_PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _launcher_path() -> str:
    """sys.path entries for the launcher, which starts with ``-S`` (no site):
    our package, and landlockpy's installation if it lies elsewhere."""
    entries = [_PACKAGE_PARENT]
    try:
        import importlib.util

        spec = importlib.util.find_spec("landlockpy")
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.origin:
        where = os.path.dirname(os.path.dirname(spec.origin))
        if where not in entries:
            entries.append(where)
    return os.pathsep.join(entries)


class LauncherClient:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._control: socket.socket | None = None
        self._owner = -1

    def _alive(self) -> bool:
        return (
            self._proc is not None
            and self._owner == os.getpid()
            and self._proc.poll() is None
            and self._control is not None
        )

    def ensure_started(self) -> None:
        if self._alive():
            return
        with self._lock:
            if self._alive():
                return
            self._start()

    def _start(self) -> None:
        if self._owner == os.getpid() and self._control is not None:
            self._control.close()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        code = (
            "import sys; sys.path[0:0] = sys.argv[1].split(':'); "
            "from stockade.linux.launcher import main; main(sys.argv[1:])"
        )
        env = {"PATH": os.defpath, "LC_ALL": "C.UTF-8"}
        debug = os.environ.get("STOCKADE_DEBUG_LAUNCHER")
        try:
            proc = subprocess.Popen(
                [sys.executable, "-S", "-c", code, _launcher_path(), str(theirs.fileno())],
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=None if debug else subprocess.DEVNULL,
                start_new_session=True,
                env=env,
                close_fds=True,
            )
        except OSError as err:
            ours.close()
            raise SandboxUnavailableError(
                "launcher", f"cannot start {sys.executable}: {err}", "check the Python installation"
            ) from err
        finally:
            theirs.close()
        self._proc = proc
        self._control = ours
        self._owner = os.getpid()
        log.debug("launcher started, pid %d", proc.pid)

    def submit(self, spec: dict[str, Any], stdin_fd: int, stdout_fd: int, stderr_fd: int) -> socket.socket:
        """Hand a run to the launcher; returns the caller's end of its report socket."""
        payload = json.dumps(spec).encode()
        for attempt in range(2):
            self.ensure_started()
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            try:
                assert self._control is not None
                socket.send_fds(self._control, [payload], [stdin_fd, stdout_fd, stderr_fd, theirs.fileno()])
            except OSError as err:
                ours.close()
                theirs.close()
                if attempt == 0:
                    log.warning("launcher connection lost (%s); restarting it", err)
                    with self._lock:
                        self._start()
                    continue
                raise SandboxUnavailableError("launcher", f"cannot reach the launcher: {err}", "retry") from err
            theirs.close()
            return ours
        raise AssertionError("unreachable")

    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def stop(self) -> None:
        with self._lock:
            if self._control is not None and self._owner == os.getpid():
                self._control.close()
            self._control = None
            if self._proc is not None and self._owner == os.getpid():
                try:
                    self._proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait()
            self._proc = None


_shared = LauncherClient()


def shared_launcher() -> LauncherClient:
    return _shared
