"""The launcher: a small single-threaded process that starts and watches runs.

Why a separate process: everything that must happen between fork and exec
(joining the run's cgroup, rlimits, dropping from root to the sandbox uid,
idmapping a root-owned workspace, installing the seccomp filter and keeping
its listener) needs a fork. Forking the caller costs time proportional to its
memory and is unsafe when it has threads; this process is small and has one
thread, so its fork stays cheap whatever the caller holds. It is started once
per caller process (see ``client.py``), then forks once per run and execs
bubblewrap (or, in the modes without bubblewrap, the program itself).

Protocol. The caller sends each run on the control socket (SOCK_SEQPACKET) as
one message: a JSON spec plus four descriptors (stdin, stdout, stderr, and
the run's report socket). The launcher answers on the report socket with one
JSON ``exit`` event when the run is over; in network allowlist mode it first
sends ``{"event": "net_listener"}`` carrying the proxy's listener, made
inside the sandbox's network namespace (see ``netbridge.py``). The caller may send ``{"op":
"kill", "reason": ...}`` on the report socket; closing it also kills the run.
When the control socket closes (the caller died) every run is killed and the
launcher exits.

The launcher is a child subreaper: when bubblewrap's monitor exits, the
sandbox's pid 1 is reparented here, so its rusage (which holds every process
the sandbox reaped) reaches us. This is the only way to see the program's
usage without cgroups: ``wait4`` on bubblewrap alone reports bubblewrap's.

Stdlib only; imported by a fresh interpreter on every launcher start.
"""

from __future__ import annotations

import base64
import errno
import fcntl
import json
import os
import resource
import selectors
import signal
import socket
import sys
import time
import traceback
from typing import Any

from . import _sys, netbridge, reaper
from . import landlock as _landlock  # before any fork: children do no import work
from .cgroups import CgroupUnavailable, Probe, RunCgroup, RunCgroups, probe
from .diskbudget import DiskBudget
from .supervise import Supervisor

MAX_MESSAGE = 1 << 20
EXIT_SETUP_FAILED = 125

# Fixed descriptor layout seen by the exec'd program (bubblewrap): the manager
# writes these numbers into bubblewrap's arguments.
FD_ARGS = 3
FD_JSON_STATUS = 4
FD_FIRST_BIND = 5

_RLIMITS = {
    "RLIMIT_CPU": resource.RLIMIT_CPU,
    "RLIMIT_FSIZE": resource.RLIMIT_FSIZE,
    "RLIMIT_NOFILE": resource.RLIMIT_NOFILE,
    "RLIMIT_CORE": resource.RLIMIT_CORE,
    "RLIMIT_DATA": resource.RLIMIT_DATA,
    "RLIMIT_NPROC": resource.RLIMIT_NPROC,
}

# Marks seccomp notification callbacks in the event loop (see serve), and
# how long housekeeping may wait while only notifications arrive.
_NOTIFY = "notify"
TICK_AFTER_NOTIFY_SEC = 0.005
_LISTENER_MESSAGE = [b'{"listener": true}']

# Dispositions the launcher's interpreter set to "ignore" (SIGPIPE, SIGINT by
# the launcher, SIGXFSZ by Python at start-up). An ignored signal stays
# ignored across execve, so the program would, for one, not die of SIGPIPE
# in a pipeline, or of SIGXFSZ at its file size limit.
_RESET_SIGNALS = (signal.SIGPIPE, signal.SIGINT, signal.SIGXFSZ)

# How long to wait for the sandbox's pid 1 to be reparented and reaped after
# bubblewrap's monitor exited, before reporting without its usage.
INIT_REAP_GRACE_SEC = 2.0

# How often a workspace's disk budget is checked (one statvfs).
LIMIT_POLL_SEC = 0.05


def _rusage_dict(ru: Any) -> dict[str, float]:
    return {"utime": ru.ru_utime, "stime": ru.ru_stime, "maxrss_kb": ru.ru_maxrss}


class _UsernsCache:
    """User namespaces used as idmaps, one per mapping, made once."""

    def __init__(self) -> None:
        self._fds: dict[tuple[str, str], int] = {}

    def get(self, uid_map: str, gid_map: str) -> int:
        key = (uid_map, gid_map)
        fd = self._fds.get(key)
        if fd is None:
            fd = self._make(uid_map, gid_map)
            self._fds[key] = fd
        return fd

    @staticmethod
    def _make(uid_map: str, gid_map: str) -> int:
        ready_r, ready_w = os.pipe()
        go_r, go_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the helper child
            try:
                os.close(ready_r)
                os.close(go_w)
                _sys.unshare(_sys.CLONE_NEWUSER)
                os.write(ready_w, b"1")
                os.read(go_r, 1)
            finally:
                os._exit(0)
        os.close(ready_w)
        os.close(go_r)
        try:
            if os.read(ready_r, 1) != b"1":
                raise OSError(errno.EPERM, "unshare(CLONE_NEWUSER) for the idmap failed")
            with open(f"/proc/{pid}/uid_map", "w") as fh:
                fh.write(uid_map)
            with open(f"/proc/{pid}/setgroups", "w") as fh:
                fh.write("deny")
            with open(f"/proc/{pid}/gid_map", "w") as fh:
                fh.write(gid_map)
            return os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
        finally:
            os.close(go_w)
            os.close(ready_r)
            os.waitpid(pid, 0)


def _child_setup(
    spec: dict[str, Any],
    stdio: list[int],
    errsock: socket.socket,
    json_w: int | None,
    userns: _UsernsCache,
    extra_fds: list[int],
) -> None:
    """Runs in the forked child: prepare, then exec. Never returns normally.

    Steps, in this order because each needs the one before:
      1. new session (modes without bubblewrap, so the group can be killed)
      2. idmapped mounts for a root-owned workspace (needs root)
      3. O_PATH descriptors for bind sources (needs the caller's rights),
         each checked against the identity the policy was resolved with
      4. join the run's cgroups (needs write access to cgroup.procs)
      4b. second tier: fork the run's monitor (``reaper.py``), which stays
         here with the launcher's credentials; the child goes on
      5. drop from root to the sandbox uid (second tier: then die with the
         monitor, ambient capabilities cleared)
      6. cwd, descriptors into their fixed slots (``extra_fds``, such as
         bubblewrap's --block-fd pipe and then its --add-seccomp-fd memfd,
         after the bind sources), all others closed
      7. default dispositions for the signals this process ignores, then
         rlimits (after fds: RLIMIT_NOFILE may be below our slot numbers)
      8. no_new_privs, Landlock ruleset, seccomp filter (its listener is
         sent to the launcher before exec)
      9. exec
    """
    step = "start"
    report_fd = errsock.fileno()
    try:
        if spec.get("new_session"):
            step = "setsid"
            os.setsid()

        step = "idmap"
        idmaps = spec.get("idmaps") or []
        if idmaps:
            _sys.unshare(_sys.CLONE_NEWNS)
            _sys.mount(None, "/", None, _sys.MS_REC | _sys.MS_SLAVE)
            # Deepest paths first: an idmapped mount cannot be idmapped again,
            # so an ancestor's idmap covers only its own mount (submounts,
            # cloned along, keep theirs).
            for item in idmaps:
                ns_fd = userns.get(item["uid_map"], item["gid_map"])
                tree = _sys.open_tree(
                    item["path"],
                    _sys.OPEN_TREE_CLONE | _sys.OPEN_TREE_CLOEXEC | _sys.AT_RECURSIVE,
                )
                _sys.mount_setattr_idmap(tree, ns_fd, _sys.MOUNT_ATTR_NOSUID | _sys.MOUNT_ATTR_NODEV)
                _sys.move_mount(tree, item["path"])
                os.close(tree)

        step = "open bind sources"
        bind_fds = []
        bind_ids = spec.get("bind_ids") or []
        for index, path in enumerate(spec.get("bind_paths") or []):
            try:
                bind_fds.append(os.open(path, os.O_PATH | os.O_CLOEXEC))
            except OSError as err:
                raise OSError(err.errno, f"open({path!r}, O_PATH): {err.strerror}") from None
            # resolved once: the file the policy was resolved against, or no run
            want = bind_ids[index] if index < len(bind_ids) else None
            st = os.fstat(bind_fds[-1])
            if want is not None and [st.st_dev, st.st_ino] != want:
                raise OSError(
                    errno.ESTALE, f"{path!r} was replaced after the policy was resolved"
                )

        for procs in spec.get("cgroup_procs") or []:
            step = f"join cgroup ({procs})"
            fd = os.open(procs, os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.write(fd, b"0")
            finally:
                os.close(fd)

        monitor_pid = None
        if spec.get("monitor"):
            step = "fork the run's monitor"
            assert json_w is not None
            monitor_pid = reaper.split(json_w)

        creds = spec.get("creds")
        if creds:
            step = f"drop to uid {creds['uid']} gid {creds['gid']}"
            os.setgroups([])
            os.setresgid(creds["gid"], creds["gid"], creds["gid"])
            os.setresuid(creds["uid"], creds["uid"], creds["uid"])
            if os.getuid() == 0 or os.geteuid() == 0:
                raise OSError(errno.EPERM, "still uid 0 after setresuid")

        if monitor_pid is not None:
            step = "bind to the monitor"
            reaper.bind_to_monitor(monitor_pid)

        step = f"chdir({spec['cwd']!r})"
        os.chdir(spec["cwd"])

        step = "arrange descriptors"
        slots = list(stdio)
        args_data = spec.get("args_data")
        if args_data is not None:
            # bubblewrap's layout: FD_ARGS, FD_JSON_STATUS, then bind sources
            args_fd = os.memfd_create("stockade-bwrap-args", 0)
            os.write(args_fd, b"".join(os.fsencode(a) + b"\0" for a in args_data))
            os.lseek(args_fd, 0, os.SEEK_SET)
            assert json_w is not None
            slots += [args_fd, json_w, *bind_fds]
            bridge = spec.get("net_bridge")
            if bridge and bridge.get("block_slot") != len(slots):
                # bubblewrap would read another descriptor and not wait
                raise OSError(errno.EINVAL, f"--block-fd slot {bridge.get('block_slot')} != {len(slots)}")
            slots += extra_fds
            inner_slot = (spec.get("seccomp") or {}).get("inner_slot")
            if inner_slot is not None and inner_slot != len(slots) - 1:
                # bubblewrap would read another descriptor as the filter
                raise OSError(errno.EINVAL, f"--add-seccomp-fd slot {inner_slot} != {len(slots) - 1}")
        # Lift every source above the slots first, so that a dup2 into a slot
        # never clobbers a source still needed.
        high = 64 + len(slots)
        lifted = [_dupfd_above(fd, high) for fd in slots]
        report_src = _dupfd_above(errsock.fileno(), high)
        for slot, fd in enumerate(lifted):
            os.dup2(fd, slot, inheritable=True)
        report_fd = len(slots)
        os.dup2(report_src, report_fd, inheritable=False)
        _sys.close_range(report_fd + 1)

        step = "signal dispositions"
        for signum in _RESET_SIGNALS:
            signal.signal(signum, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, [])

        step = "rlimits"
        for name, soft, hard in spec.get("rlimits") or []:
            resource.setrlimit(_RLIMITS[name], (_limit(soft), _limit(hard)))

        if spec.get("no_new_privs"):
            step = "prctl(PR_SET_NO_NEW_PRIVS)"
            _sys.prctl(_sys.PR_SET_NO_NEW_PRIVS, 1)

        landlock_spec = spec.get("landlock")
        if landlock_spec:
            step = "landlock"
            _landlock.apply(landlock_spec)

        seccomp = spec.get("seccomp")
        if seccomp:
            step = "seccomp"
            # prepared by the launcher before the fork (Run.start): nothing
            # may be imported here (the stdlib may be unreadable after the
            # drop), and every object touched now costs a page copy
            listener = seccomp["program"].install()
            if seccomp.get("listener"):
                # Only sendmsg, close and execve follow: every mode's filter
                # must let sendmsg and close through without notification.
                sock = socket.socket(fileno=report_fd)
                socket.send_fds(sock, _LISTENER_MESSAGE, [listener])
                sock.detach()
                os.close(listener)

        step = f"execve({spec['path']!r})"
        os.execve(spec["path"], spec["argv"], spec["env"])
    except BaseException as exc:  # noqa: BLE001 - report anything, then exit
        code = exc.errno if isinstance(exc, OSError) else None
        message = f"{step}: {exc}"
        payload = json.dumps({"error": message, "step": step, "errno": code}).encode()
        try:
            os.write(report_fd, payload)
        except OSError:
            os.write(2, f"stockade launcher: {message}\n".encode())
        os._exit(EXIT_SETUP_FAILED)


def _memfd(name: str, data: bytes) -> int:
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    try:
        os.write(fd, data)
        os.lseek(fd, 0, os.SEEK_SET)
    except OSError:
        os.close(fd)
        raise
    return fd


def _dupfd_above(fd: int, minimum: int) -> int:
    return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, minimum)


def _limit(value: int | None) -> int:
    return resource.RLIM_INFINITY if value is None else int(value)


class Run:
    """One run as the launcher sees it."""

    def __init__(self, launcher: Launcher, spec: dict[str, Any], stdio: list[int], report: socket.socket):
        self.launcher = launcher
        self.spec = spec
        self.run_id: str = spec["run_id"]
        self.report = report
        self.stdio = stdio
        self.pid = -1
        self.status: int | None = None
        self.rusage: dict[str, float] | None = None
        self.init_pid: int | None = None
        self.init_pidfd: int | None = None
        self.init_rusage: dict[str, float] | None = None
        self.init_status: int | None = None
        self.json_exit_code: int | None = None
        self.json_buf = b""
        self.json_r: int | None = None
        # network bridge: bubblewrap's --block-fd pipe; the program starts
        # when the launcher writes to it (after the proxy's listener exists)
        self.block_w: int | None = None
        self.errsock: socket.socket | None = None
        self.setup_error: dict[str, Any] | None = None
        self.exec_done = False
        self.killed: str | None = None
        self.supervisor: Supervisor | None = None
        self.t_start = time.monotonic()
        self.t_exec: float | None = None
        self.t_exit: float | None = None
        timeout = spec.get("timeout")
        self.deadline = self.t_start + timeout if timeout else None
        self.finish_deadline: float | None = None
        self.finished = False
        # limits of the whole tree (issue #4): the run's cgroup and the
        # workspace's disk budget, read by poll() until the run ends
        self.cgroup: RunCgroup | None = None
        self.disk: DiskBudget | None = None
        self.next_poll: float | None = None
        self.limit_error: dict[str, Any] | None = None

    # -- start ---------------------------------------------------------------

    def start(self) -> None:
        self._start_limits()
        if self.setup_error is not None:
            raise _SetupFailed()
        seccomp = self.spec.get("seccomp")
        if seccomp:
            listener = seccomp.get("listener")
            flags = _sys.SECCOMP_FILTER_FLAG_NEW_LISTENER if listener else 0
            bpf = base64.b64decode(seccomp["bpf"])
            seccomp["program"] = _sys.SeccompProgram(bpf, flags)
        parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        json_w = None
        if self.spec.get("json_status"):
            self.json_r, json_w = os.pipe2(os.O_CLOEXEC)
            os.set_blocking(self.json_r, False)
        extra_fds = []
        if self.spec.get("net_bridge"):
            block_r, self.block_w = os.pipe2(os.O_CLOEXEC)
            extra_fds.append(block_r)
        if seccomp and seccomp.get("inner_slot") is not None:
            # the filter bubblewrap installs right before it execs the
            # program (--add-seccomp-fd), read to its end: the last slot
            extra_fds.append(_memfd("stockade-inner-filter", base64.b64decode(seccomp["inner_bpf"])))
        try:
            pid = os.fork()
        except OSError:
            for fd in (*extra_fds, json_w):
                if fd is not None:
                    os.close(fd)
            parent_sock.close()
            child_sock.close()
            raise
        if pid == 0:  # pragma: no cover - child
            parent_sock.close()
            _child_setup(self.spec, self.stdio, child_sock, json_w, self.launcher.userns, extra_fds)
        self.pid = pid
        child_sock.close()
        if json_w is not None:
            os.close(json_w)
        for fd in extra_fds:
            os.close(fd)
        for fd in self.stdio:
            os.close(fd)
        self.stdio = []
        self.errsock = parent_sock
        sel = self.launcher.sel
        sel.register(parent_sock, selectors.EVENT_READ, (self.on_errsock, None))
        if self.json_r is not None:
            sel.register(self.json_r, selectors.EVENT_READ, (self.on_json, None))
        sel.register(self.report, selectors.EVENT_READ, (self.on_report, None))
        self.launcher.by_pid[pid] = self

    def _start_limits(self) -> None:
        """Make the run's cgroup (its limits set before the child exists) and
        its disk budget. A cgroup the policy needs and cannot get is a
        set-up error: the program never starts unlimited."""
        request = self.spec.get("cgroup")
        if request:
            cgroups = self.launcher.cgroups
            try:
                if cgroups is None:
                    raise OSError(errno.ENOENT, self.launcher.cgroup_problem or "no cgroups")
                self.cgroup = cgroups.take(int(request["version"]), request)
            except OSError as err:
                if request.get("required", True):
                    self.setup_error = {
                        "error": f"cgroup set-up: {err}",
                        "step": "cgroup",
                        "errno": err.errno,
                    }
                    return
            if self.cgroup is not None:
                self.spec["cgroup_procs"] = self.cgroup.join_paths
        budget = self.spec.get("disk_budget")
        if budget:
            self.disk = DiskBudget(budget["path"], int(budget["bytes"]))
        if self.cgroup is not None or self.disk is not None:
            self.next_poll = time.monotonic()

    def poll(self, now: float) -> None:
        """Read the counters the limits act on; end the run at a limit."""
        if self.next_poll is None or now < self.next_poll or self.finished:
            return
        self.next_poll = None
        delays = []
        if self.cgroup is not None and self.killed is None:
            reason, delay = self.cgroup.check()
            if reason is not None:
                self.kill(reason)
                return
            if delay is not None:
                delays.append(delay)
        if self.disk is not None and self.killed is None:
            if self.disk.check(now):
                self.kill("disk_limit")
                return
            delays.append(LIMIT_POLL_SEC)
        if delays:
            self.next_poll = now + min(delays)

    # -- events --------------------------------------------------------------

    def on_errsock(self, _arg: Any) -> None:
        assert self.errsock is not None
        try:
            msg, fds, _flags, _addr = socket.recv_fds(self.errsock, 65536, 4)
        except OSError:
            msg, fds = b"", []
        if not msg and not fds:
            # EOF: the child exec'd (its end was close-on-exec) or died.
            self.launcher.sel.unregister(self.errsock)
            self.errsock.close()
            self.errsock = None
            if self.setup_error is None:
                self.exec_done = True
                self.t_exec = time.monotonic()
            return
        data = json.loads(msg.decode() or "{}")
        if data.get("listener") and fds:
            seccomp = self.spec["seccomp"]
            self.supervisor = Supervisor(
                fds[0],
                seccomp,
                monitor_pid=self.pid if seccomp.get("trust_monitor") else None,
                on_kill=self.kill,
            )
            callback = (self.on_notify, _NOTIFY)
            self.launcher.sel.register(fds[0], selectors.EVENT_READ, callback)
            for extra in fds[1:]:
                os.close(extra)
        elif "error" in data:
            self.setup_error = data
            for fd in fds:
                os.close(fd)

    def on_notify(self, _arg: Any) -> None:
        assert self.supervisor is not None
        if not self.supervisor.handle_one():
            self._close_supervisor()

    def _close_supervisor(self) -> None:
        if self.supervisor is not None and not self.supervisor.closed:
            try:
                self.launcher.sel.unregister(self.supervisor.fd)
            except (KeyError, ValueError):
                pass
            self.supervisor.close()

    def on_json(self, _arg: Any) -> None:
        if self.json_r is None:
            return
        try:
            chunk = os.read(self.json_r, 65536)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            self.launcher.sel.unregister(self.json_r)
            os.close(self.json_r)
            self.json_r = None
            return
        self.json_buf += chunk
        while b"\n" in self.json_buf:
            line, self.json_buf = self.json_buf.split(b"\n", 1)
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except ValueError:
                continue
            if "child-pid" in data and self.init_pid is None:
                self.init_pid = int(data["child-pid"])
                try:
                    self.init_pidfd = os.pidfd_open(self.init_pid)
                except OSError:
                    self.init_pidfd = None
                self.launcher.by_pid[self.init_pid] = self
                if self.killed:
                    self.kill(self.killed)
                elif self.spec.get("net_bridge"):
                    self.open_bridge()
            if "exit-code" in data:
                self.json_exit_code = int(data["exit-code"])

    def open_bridge(self) -> None:
        """Create the proxy's listener in the sandbox, hand it over, start the program.

        On failure the block pipe stays shut and the run is killed: the
        program never starts without its only way out being in place.
        """
        bridge = self.spec["net_bridge"]
        assert self.init_pid is not None and self.block_w is not None
        if bridge.get("_test_delay_sec"):
            # test hook: a slow bridge must delay the program, not race it
            time.sleep(min(float(bridge["_test_delay_sec"]), 2.0))
        try:
            fd = netbridge.open_listener(self.init_pid, self.init_pidfd, int(bridge["port"]))
        except (OSError, ValueError, OverflowError) as err:
            self.setup_error = {
                "error": f"network bridge: {err}",
                "step": "network bridge",
                "errno": getattr(err, "errno", None) or None,
            }
            self.kill("sandbox_error")
            return
        try:
            message = json.dumps({"event": "net_listener", "port": bridge["port"]}).encode()
            socket.send_fds(self.report, [message], [fd])
        except OSError:
            self.kill("cancelled")  # the caller is gone: nobody would serve it
            return
        finally:
            os.close(fd)
        os.write(self.block_w, b"1")
        os.close(self.block_w)
        self.block_w = None

    def on_report(self, _arg: Any) -> None:
        try:
            msg = self.report.recv(65536)
        except OSError:
            msg = b""
        if not msg:
            # The caller went away (cancelled, or died): end the run.
            self.launcher.sel.unregister(self.report)
            self.kill("cancelled")
            return
        try:
            data = json.loads(msg)
        except ValueError:
            return
        if data.get("op") == "kill":
            self.kill(str(data.get("reason") or "cancelled"))

    # -- ending --------------------------------------------------------------

    def kill(self, reason: str) -> None:
        """Kill the whole tree: the sandbox's pid 1 (which takes its pid
        namespace with it), the monitor, and the process group.

        The second tier's monitor gets SIGTERM instead of SIGKILL: it is
        the one that can find and kill the rest of the tree (``reaper.py``).
        """
        if self.killed is None:
            self.killed = reason
        if self.cgroup is not None:
            self.cgroup.kill()
        if self.init_pidfd is not None:
            try:
                signal.pidfd_send_signal(self.init_pidfd, signal.SIGKILL)
            except OSError:
                pass
        if self.status is None and self.pid > 0:
            try:
                os.kill(self.pid, signal.SIGTERM if self.spec.get("monitor") else signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.spec.get("new_session") and self.pid > 0:
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def on_reaped(self, pid: int, status: int, ru: Any) -> None:
        if pid == self.pid:
            self.status = status
            self.rusage = _rusage_dict(ru)
            self.t_exit = time.monotonic()
            if self.spec.get("new_session"):
                # The program's group must not outlive it.
                try:
                    os.killpg(self.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            if self.init_pid is not None and self.init_rusage is None:
                if self._init_is_our_child():
                    # reparented here; --die-with-parent is killing it now
                    self.finish_deadline = time.monotonic() + INIT_REAP_GRACE_SEC
                else:
                    # bubblewrap's monitor reaped it: its usage is in ours
                    self.launcher.by_pid.pop(self.init_pid, None)
                    self.init_pid = None
        elif pid == self.init_pid:
            self.init_status = status
            self.init_rusage = _rusage_dict(ru)
        self.maybe_finish()

    def _init_is_our_child(self) -> bool:
        """True if the sandbox's pid 1 was reparented to us and not yet reaped.

        Checked through its pidfd, so that a reused pid number can never make
        us wait for (or reap) an unrelated process.
        """
        if self.init_pidfd is None:
            return False
        try:
            os.waitid(os.P_PIDFD, self.init_pidfd, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return False
        except OSError:
            return False
        return True

    def maybe_finish(self, now: float | None = None) -> None:
        if self.finished or self.status is None:
            return
        if self.errsock is not None:
            return  # wait for the setup channel to close
        waiting_init = self.init_pid is not None and self.init_rusage is None
        if waiting_init:
            now = time.monotonic() if now is None else now
            if self.finish_deadline is not None and now < self.finish_deadline:
                if self.init_pidfd is not None:
                    try:
                        signal.pidfd_send_signal(self.init_pidfd, signal.SIGKILL)
                    except OSError:
                        pass
                return
        self.finish()

    def finish(self) -> None:
        self.finished = True
        if self.json_r is not None:
            # read whatever is left: bubblewrap writes exit-code before exiting
            try:
                while True:
                    chunk = os.read(self.json_r, 65536)
                    if not chunk:
                        break
                    self.json_buf += chunk
                    self.on_json_lines()
            except (BlockingIOError, OSError):
                pass
        violations = []
        if self.supervisor is not None:
            violations = self.supervisor.violations()
            self._close_supervisor()
        cgroup_usage = None
        if self.cgroup is not None:
            # bubblewrap's pid namespace is gone with its pid 1; this is for
            # the modes without it (a setsid'ed daemon must not outlive us)
            self.cgroup.kill()
            cgroup_usage = self.cgroup.usage()
        disk = None
        if self.disk is not None:
            if self.killed is None and self.disk.check(time.monotonic(), final=True):
                self.killed = "disk_limit"
            disk = {"measured_bytes": self.disk.measured, "walks": self.disk.walks}
        event = {
            "event": "exit",
            "run_id": self.run_id,
            "status": self.status,
            "rusage": self.rusage,
            "init_rusage": self.init_rusage,
            "init_status": self.init_status,
            "json_exit_code": self.json_exit_code,
            "exec_done": self.exec_done,
            "program_started": self.supervisor.program_started if self.supervisor else None,
            "setup_calls": (
                dict(self.supervisor.setup_calls) if self.supervisor else None
            ),
            "setup_error": self.setup_error,
            "killed": self.killed,
            "violations": violations,
            "cgroup": cgroup_usage,
            "disk": disk,
            "times": {
                "launch_ms": ((self.t_exec or self.t_start) - self.t_start) * 1000,
                "run_ms": ((self.t_exit or time.monotonic()) - self.t_start) * 1000,
            },
        }
        try:
            self.report.send(json.dumps(event).encode())
        except OSError:
            pass
        self.close()
        if self.cgroup is not None and self.launcher.cgroups is not None:
            # after the event: removal is off the caller's path
            self.launcher.cgroups.release(self.cgroup)
            self.cgroup = None

    def on_json_lines(self) -> None:
        while b"\n" in self.json_buf:
            line, self.json_buf = self.json_buf.split(b"\n", 1)
            try:
                data = json.loads(line)
            except ValueError:
                continue
            if "exit-code" in data:
                self.json_exit_code = int(data["exit-code"])

    def close(self) -> None:
        sel = self.launcher.sel
        for obj in (self.report, self.json_r):
            if obj is None:
                continue
            try:
                sel.unregister(obj)
            except (KeyError, ValueError):
                pass
        self.report.close()
        if self.json_r is not None:
            os.close(self.json_r)
            self.json_r = None
        if self.init_pidfd is not None:
            os.close(self.init_pidfd)
            self.init_pidfd = None
        if self.block_w is not None:
            os.close(self.block_w)
            self.block_w = None
        self.launcher.by_pid.pop(self.pid, None)
        if self.init_pid is not None:
            self.launcher.by_pid.pop(self.init_pid, None)
        self.launcher.runs.discard(self)


class _SetupFailed(Exception):
    """Run.start found a set-up error before forking."""


class Launcher:
    def __init__(self, control: socket.socket):
        self.control = control
        # poll(2), not epoll: a seccomp notification wakes a poll() waiter
        # directly on the notifying task's CPU (SYNC_WAKE_UP, see
        # supervise.py); through epoll the wake-up takes a detour via its
        # callback and another CPU. A launcher watches few descriptors.
        self.sel = selectors.PollSelector()
        self._last_tick = 0.0
        self.runs: set[Run] = set()
        self.by_pid: dict[int, Run] = {}
        self.userns = _UsernsCache()
        self.stopping = False
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.cgroups: RunCgroups | None = None
        self.cgroup_problem: str | None = None
        # hierarchy versions runs asked for: one cgroup each is made ahead
        self.cgroup_versions: set[int] = set()

    def _setup_cgroups(self, found: Probe | None = None) -> None:
        """Probe the cgroups, remove what dead launchers left, make the first
        run's cgroup ahead of time."""
        try:
            self.cgroups = RunCgroups(found or probe(leave_delegated=True))
            if not self.cgroups.backends():
                self.cgroup_problem = "no writable cgroup hierarchy for this process"
                self.cgroups = None
                return
            self.cgroups.clean_stale()
            try:
                first = self.cgroups.probe.choose(set())
            except CgroupUnavailable:
                return
            self.cgroup_versions.add(first.version)
            self.cgroups.refill(first.version)
        except OSError as err:
            self.cgroup_problem = f"cgroup probe failed: {err}"
            self.cgroups = None

    def serve(self) -> None:
        _sys.prctl(_sys.PR_SET_CHILD_SUBREAPER, 1)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        self.sel.register(self.control, selectors.EVENT_READ, (self.on_control, None))
        self.sel.register(self._wake_r, selectors.EVENT_READ, (self.on_sigchld, None))
        self._setup_cgroups()
        # Tell the caller what this process may do with cgroups: the runs'
        # cgroups are made here, so the caller judges the policy's tree
        # limits by this view, not by its own (they differ when the launcher
        # was started in a delegated systemd scope).
        found = self.cgroups.probe if self.cgroups is not None else probe()
        try:
            self.control.send(json.dumps({"hello": 1, "cgroups": found.to_dict()}).encode())
        except OSError:
            self._shutdown()
        while not (self.stopping and not self.runs):
            timeout = self._next_timeout()
            events = self.sel.select(timeout)
            only_notifications = bool(events)
            for key, _mask in events:
                # An earlier callback of this batch may have unregistered this
                # descriptor (a run finished), and its number may already be
                # reused: dispatch only keys that are still current.
                current = self.sel.get_map().get(key.fileobj)
                if current is not key:
                    continue
                callback, arg = key.data
                only_notifications = only_notifications and arg == _NOTIFY
                try:
                    callback(arg)
                except Exception:  # noqa: BLE001 - one run's bug must not end the others
                    traceback.print_exc()
            # bubblewrap's set-up sends dozens of seccomp notifications in a
            # row; the housekeeping can wait a few milliseconds for them.
            now = time.monotonic()
            if not only_notifications or now - self._last_tick > TICK_AFTER_NOTIFY_SEC:
                self._last_tick = now
                self._tick()
        if self.cgroups is not None:
            self.cgroups.close()
        os._exit(0)

    def _next_timeout(self) -> float | None:
        now = time.monotonic()
        times = []
        for run in self.runs:
            if run.deadline is not None and run.killed is None:
                times.append(run.deadline)
            if run.finish_deadline is not None and not run.finished:
                times.append(run.finish_deadline)
            if run.next_poll is not None and not run.finished:
                times.append(run.next_poll)
        if self.cgroups is not None and self.cgroups.next_retry is not None:
            times.append(self.cgroups.next_retry)
        if self.stopping:
            times.append(now + 0.1)
        if not times:
            return None
        return max(0.0, min(times) - now)

    def _tick(self) -> None:
        now = time.monotonic()
        self.on_sigchld(None)
        for run in list(self.runs):
            if run.deadline is not None and run.killed is None and now >= run.deadline:
                run.kill("timeout")
            run.poll(now)
            if run.status is not None and not run.finished:
                run.maybe_finish(now)
        if self.cgroups is not None:
            self.cgroups.retry(now)
            for version in self.cgroup_versions:
                self.cgroups.refill(version)

    def on_control(self, _arg: Any) -> None:
        try:
            msg, fds, _flags, _addr = socket.recv_fds(self.control, MAX_MESSAGE, 8)
        except OSError:
            msg, fds = b"", []
        if not msg:
            self._shutdown()
            return
        try:
            spec = json.loads(msg)
            if spec.get("spec_in_fd") and len(fds) == 5:
                # too large for one message (long argv or environment): the
                # spec came in a memfd
                with os.fdopen(fds.pop(), "rb") as fh:
                    spec = json.loads(fh.read())
            if len(fds) != 4:
                raise ValueError(f"expected 4 descriptors, got {len(fds)}")
        except ValueError as err:
            for fd in fds:
                os.close(fd)
            sys.stderr.write(f"stockade launcher: bad request: {err}\n")
            return
        report = socket.socket(fileno=fds[3])
        run = Run(self, spec, fds[:3], report)
        self.runs.add(run)
        if spec.get("cgroup"):
            self.cgroup_versions.add(int(spec["cgroup"]["version"]))
        try:
            run.start()
        except _SetupFailed:
            for fd in run.stdio:
                os.close(fd)
            run.stdio = []
            run.status = EXIT_SETUP_FAILED << 8
            run.finish()
        except OSError as err:
            run.setup_error = {"error": f"fork: {err}", "step": "fork", "errno": err.errno}
            run.status = EXIT_SETUP_FAILED << 8
            run.finish()

    def on_sigchld(self, _arg: Any) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass
        while True:
            try:
                pid, status, ru = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            run = self.by_pid.get(pid)
            if run is not None:
                run.on_reaped(pid, status, ru)

    def _shutdown(self) -> None:
        self.stopping = True
        try:
            self.sel.unregister(self.control)
        except (KeyError, ValueError):
            pass
        for run in list(self.runs):
            run.kill("cancelled")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv if argv is None else argv
    control = socket.socket(fileno=int(argv[1]))
    Launcher(control).serve()


if __name__ == "__main__":  # pragma: no cover
    main()
