"""The caller's side of the launcher: start it once, hand it runs.

One launcher serves every SandboxManager of a process. It is started on the
first run (or by ``SandboxManager.start()``), restarted if it died, and
replaced in a child after ``os.fork()``. It exits by itself when this process
exits, because its control socket then closes.

Delegated cgroups on systemd hosts. On a cgroup v2 host a caller usually sits
in a cgroup that cannot give its runs controllers: a login session's scope,
which holds processes (cgroup v2's "no internal processes" rule) and, for a
user, is not even writable. The tree limits would then be refused. So the
launcher is started through ``systemd-run --scope -p Delegate=yes`` when
that helps and systemd can do it:

* an unprivileged caller: ``--user``, when its user manager is reachable
  (``$XDG_RUNTIME_DIR/systemd/private``);
* root: the system manager (no ``--user``), when systemd is PID 1
  (``/run/systemd/system`` exists) and root's own v2 cgroup is neither the
  root cgroup nor an empty delegated one (``cgroups.probe()`` finds no
  usable v2 parent); elsewhere root's own cgroup serves.

systemd puts the launcher in a fresh scope, the launcher moves itself into a
leaf of it, and makes the runs' cgroups beside that leaf
(``cgroups.probe(leave_delegated=True)``; the scope's name is passed on, so
that a root launcher, which owns every cgroup, recognises its own). Which
controllers the scope receives is the manager's ``Delegate=`` setting; the
launcher reports what it got in its first message, and the policy is judged
against that. When systemd-run is missing or fails, the launcher starts as a
plain child, and tree limits are judged by what that can do.
``STOCKADE_SYSTEMD_SCOPE=0`` turns the scope off.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import threading
from typing import Any

from ..errors import CommandError, SandboxUnavailableError
from . import cgroups

log = logging.getLogger(__name__)

_PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HELLO_TIMEOUT_SEC = 30.0
# Specs larger than this go in a memfd rather than in the message itself.
INLINE_SPEC_MAX = 64 * 1024


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


def systemd_scope_prefix(found: cgroups.Probe | None = None) -> list[str] | None:
    """argv prefix that starts the launcher in a delegated systemd scope, or None.

    Args:
        found: this process's cgroups (default: ``cgroups.probe()``); a root
            caller needs no scope where its own v2 cgroup is usable.

    See the module docstring for when a scope is used.
    """
    if os.environ.get("STOCKADE_SYSTEMD_SCOPE", "1") == "0":
        return None
    if not os.path.exists("/sys/fs/cgroup/cgroup.controllers"):
        return None  # not a unified (v2) host: v1 serves root, and no user
    systemd_run = shutil.which("systemd-run")
    if not systemd_run:
        return None
    unit = f"--unit=stockade-launcher-{os.getpid()}-{os.urandom(3).hex()}"
    tail = ["--scope", "--quiet", "--collect", "-p", "Delegate=yes", unit, "--"]
    if os.geteuid() == 0:
        if not os.path.isdir("/run/systemd/system"):
            return None  # systemd is not the system manager here
        found = found or cgroups.probe()
        if found.v2 is not None and found.v2.parents:
            return None  # root's own v2 cgroup can hold the runs' cgroups
        return [systemd_run, *tail]
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if not runtime or not os.path.exists(os.path.join(runtime, "systemd", "private")):
        return None
    return [systemd_run, "--user", *tail]


def scope_name(prefix: list[str] | None) -> str:
    """The cgroup name of the scope a prefix asks for ("" without one)."""
    for arg in prefix or []:
        if arg.startswith("--unit="):
            return arg[len("--unit=") :] + ".scope"
    return ""


class LauncherClient:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._control: socket.socket | None = None
        self._owner = -1
        self._scope_failed = False
        # a launcher started by start_soon, not yet handshaken:
        # (the pid that started it, its scope prefix, process, our socket end)
        self._pending: tuple[int, list[str] | None, subprocess.Popen[bytes], socket.socket] | None = None
        self.hello: dict[str, Any] = {}

    def _alive(self) -> bool:
        return (
            self._proc is not None
            and self._owner == os.getpid()
            and self._proc.poll() is None
            and self._control is not None
        )

    def start_soon(self) -> None:
        """Start the launcher without waiting until it is ready.

        The CLI calls this before its own heavy imports, so that the
        launcher's interpreter starts on another core meanwhile; the next
        ``ensure_started`` waits for its first message. Errors are left to
        that call, which starts the launcher again the usual way.
        """
        with self._lock:
            if self._alive() or self._pending is not None:
                return
            prefix = None if self._scope_failed else systemd_scope_prefix()
            try:
                self._pending = (os.getpid(), prefix, *self._launch(prefix))
            except SandboxUnavailableError:
                self._pending = None

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
        pending, self._pending = self._pending, None
        if pending is not None and pending[0] != os.getpid():
            pending[3].close()  # started by the process we were forked from
            pending = None
        if pending is not None:
            _pid, prefix, proc, ours = pending
        else:
            prefix = None if self._scope_failed else systemd_scope_prefix()
        try:
            if pending is None:
                proc, ours = self._launch(prefix)
            self._handshake(proc, ours, prefix)
        except SandboxUnavailableError:
            if prefix is None:
                raise
            log.warning("systemd-run --scope did not start the launcher; starting it directly")
            self._scope_failed = True
            self._handshake(*self._launch(None), None)

    def _launch(self, prefix: list[str] | None) -> tuple[subprocess.Popen[bytes], socket.socket]:
        """Start the launcher's process; returns it and our end of its socket."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        code = (
            "import sys; sys.path[:0] = sys.argv[1].split(':'); "
            "from stockade.linux.launcher import main; main(sys.argv[1:])"
        )
        env = {"PATH": os.defpath, "LC_ALL": "C.UTF-8"}
        for name in ("XDG_RUNTIME_DIR", "DBUS_SESSION_BUS_ADDRESS"):
            if prefix and name in os.environ:
                env[name] = os.environ[name]  # systemd-run needs them; it execs with them
        debug = os.environ.get("STOCKADE_DEBUG_LAUNCHER")
        argv = [
            sys.executable, "-S", "-c", code, _launcher_path(), str(theirs.fileno()),
            scope_name(prefix),
        ]
        try:
            proc = subprocess.Popen(
                [*(prefix or []), *argv],
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
        return proc, ours

    def _handshake(
        self, proc: subprocess.Popen[bytes], ours: socket.socket, prefix: list[str] | None
    ) -> None:
        """Wait for the launcher's first message, which says what it may do
        with cgroups; then it is ours to use."""
        ours.settimeout(HELLO_TIMEOUT_SEC)
        try:
            hello = json.loads(ours.recv(1 << 16) or b"{}")
        except (OSError, ValueError):
            hello = {}
        ours.settimeout(None)
        if not hello.get("hello"):
            ours.close()
            proc.kill()
            proc.wait()
            raise SandboxUnavailableError(
                "launcher",
                "the launcher exited before it was ready",
                "run with STOCKADE_DEBUG_LAUNCHER=1 to see its error output",
            )
        self.hello = hello
        if hello.get("cgroups") is not None:
            cgroups.use_probe(cgroups.Probe.from_dict(hello["cgroups"]))
        self._proc = proc
        self._control = ours
        self._owner = os.getpid()
        log.debug("launcher started, pid %d%s", proc.pid, " in a systemd scope" if prefix else "")

    def submit(self, spec: dict[str, Any], stdin_fd: int, stdout_fd: int, stderr_fd: int) -> socket.socket:
        """Hand a run to the launcher; returns the caller's end of its report socket."""
        from .launcher import spec_message  # the launcher's module is big: not at a CLI's start

        payload, spec_fd = spec_message(spec, INLINE_SPEC_MAX)
        try:
            return self._send(payload, [stdin_fd, stdout_fd, stderr_fd], spec_fd)
        finally:
            if spec_fd is not None:
                os.close(spec_fd)

    def open_pool(self, request: dict[str, Any], pool_fd: int) -> None:
        """Ask the launcher for a pool of prepared sandboxes (``stockade.pool``)."""
        from .launcher import spec_message

        payload, spec_fd = spec_message(request, INLINE_SPEC_MAX)
        try:
            self.ensure_started()
            assert self._control is not None
            fds = [pool_fd] + ([spec_fd] if spec_fd is not None else [])
            try:
                socket.send_fds(self._control, [payload], fds)
            except OSError as err:
                raise SandboxUnavailableError("launcher", f"cannot reach the launcher: {err}", "retry") from err
        finally:
            if spec_fd is not None:
                os.close(spec_fd)

    def _send(self, payload: bytes, stdio: list[int], spec_fd: int | None) -> socket.socket:
        for attempt in range(2):
            self.ensure_started()
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            fds = [*stdio, theirs.fileno()] + ([spec_fd] if spec_fd is not None else [])
            try:
                assert self._control is not None
                socket.send_fds(self._control, [payload], fds)
            except OSError as err:
                ours.close()
                theirs.close()
                bad = _closed_descriptor(stdio, spec_fd)
                if bad is not None:
                    # one of this run's own descriptors (sendmsg EBADF): the
                    # run fails, the connection (and the others' runs) stays
                    raise CommandError(
                        f"cannot pass the run's {bad} to the launcher: {err}; give stdin "
                        f"as an open descriptor (or bytes/str data, or None)"
                    ) from err
                if not _connection_error(err, self._control):
                    raise SandboxUnavailableError(
                        "launcher", f"cannot hand the run to the launcher: {err}", "retry"
                    ) from err
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


def _closed_descriptor(stdio: list[int], spec_fd: int | None) -> str | None:
    """Which of a run's descriptors is not open (None: all are)."""
    names = ("stdin", "stdout", "stderr")
    for i, fd in enumerate([*stdio, *([spec_fd] if spec_fd is not None else [])]):
        try:
            os.fstat(fd)
        except (OSError, OverflowError):
            return f"{names[i]} (fd {fd})" if i < len(names) else f"spec file (fd {fd})"
    return None


def _connection_error(err: OSError, control: socket.socket | None) -> bool:
    """Whether a failed send means the launcher connection is gone (so a
    restart may help), rather than something wrong with this one run."""
    if err.errno in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.ECONNREFUSED):
        return True
    if control is None or control.fileno() < 0:
        return True
    try:
        os.fstat(control.fileno())
    except OSError:
        return True
    return err.errno == errno.EBADF  # the control socket's number reused: start afresh


_shared = LauncherClient()


def shared_launcher() -> LauncherClient:
    return _shared
