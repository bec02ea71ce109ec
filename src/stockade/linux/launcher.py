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
launcher exits once they have ended. The spec's ``remove_after`` names
directories of the run (the second tier's HOME and TMPDIR) that the launcher
removes when the run has ended, so that a caller's death leaves none behind.

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
import shutil
import signal
import socket
import sys
import time
import traceback
from typing import Any

from . import _sys, netbridge, reaper
from . import landlock as _landlock  # before any fork: children do no import work
from .cgroups import CPUACCT, CgroupUnavailable, Probe, RunCgroup, RunCgroups, probe
from .diskbudget import DiskBudget, TmpfsAreas
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

# How long a pool waits, after giving a sandbox a program, before preparing
# its replacement while that program still runs (see Pool.on_dispatched).
REFILL_DELAY_SEC = 0.02

# How long after a spare child was taken the next one is forked, so that the
# run that took it gets on first (see Spare).
SPARE_DELAY_SEC = 0.003
# Specs above this size reach a spare child in a memfd.
SPARE_INLINE_MAX = 64 * 1024
# the keys of spec["seccomp"] a spare child needs
_SPARE_SECCOMP_KEYS = ("bpf", "listener", "inner_slot")

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
            waiter = spec.get("pool")
            if waiter and waiter.get("slot") != len(slots) + len(extra_fds) - 1:
                raise OSError(errno.EINVAL, f"waiter slot {waiter.get('slot')} is not last")
            slots += extra_fds
            inner_slot = (spec.get("seccomp") or {}).get("inner_slot")
            expected = len(slots) - (2 if waiter else 1)  # before the waiter's socket
            if inner_slot is not None and inner_slot != expected:
                # bubblewrap would read another descriptor as the filter
                raise OSError(errno.EINVAL, f"--add-seccomp-fd slot {inner_slot} != {expected}")
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


def remove_tree(path: str) -> None:
    """Remove a run's directory, also what its program made unreadable.

    A tree already gone is no error, and nothing above ``path`` is ever
    touched. An unprivileged owner may need to give itself back the rights a
    program took away (``chmod 000`` on a directory) before it can remove
    it; root needs no such chmod, and does none: a chmod follows a symbolic
    link that some other process of the sandbox uid could put in its way.
    """
    root = os.path.normpath(path)

    def inside(name: str) -> bool:
        return name == root or name.startswith(root + os.sep)

    def retry(func: Any, failed: str, exc_info: Any) -> None:
        failed = os.path.normpath(failed)
        if isinstance(exc_info[1], FileNotFoundError) or not inside(failed):
            return
        if os.geteuid() == 0:
            return
        try:
            parent = os.path.dirname(failed)
            if inside(parent):
                os.chmod(parent, 0o700)
            if os.path.isdir(failed) and not os.path.islink(failed):
                os.chmod(failed, 0o700)
                shutil.rmtree(failed, ignore_errors=True)
            else:
                func(failed)
        except OSError:
            pass

    shutil.rmtree(root, onerror=retry)


def spec_message(spec: dict[str, Any], inline_max: int) -> tuple[bytes, int | None]:
    """A spec as one SEQPACKET message: inline, or (a long argv or
    environment: one message holds only about 200 KiB) a memfd to attach,
    with ``{"spec_in_fd": true}`` as the message. The caller closes the fd."""
    payload = json.dumps(spec).encode()
    if len(payload) <= inline_max:
        return payload, None
    return b'{"spec_in_fd": true}', _memfd("stockade-spec", payload)


def _memfd(name: str, data: bytes) -> int:
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    try:
        os.write(fd, data)
        os.lseek(fd, 0, os.SEEK_SET)
    except OSError:
        os.close(fd)
        raise
    return fd


class Spare:
    """A child forked ahead of time, waiting for the run it will become.

    Forking the launcher (a Python process of some 16 MiB) and the first
    writes of the child to its copied pages cost about 2 ms, which a run would
    otherwise pay between its request and bubblewrap's start. The launcher
    keeps one spare child forked while it has nothing else to do (see
    ``Launcher.maybe_spare``). Right after the fork the spare closes every
    descriptor but its command socket, so it holds nothing of any run; it
    then waits for one message: the run's spec (JSON, inline or in a memfd)
    with the run's descriptors attached, and goes on exactly as a freshly
    forked child would (``_child_setup``). Runs that need idmapped mounts
    (root callers with a root-owned workspace) are forked as before: their
    user namespaces are descriptors the spare does not have.
    """

    SLOT = 3  # the command socket, in the spare

    def __init__(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            pid = os.fork()
        except OSError:
            ours.close()
            theirs.close()
            raise
        if pid == 0:  # pragma: no cover - child
            try:
                _spare_main(theirs)
            except BaseException:  # noqa: BLE001 - say why on stderr, then go
                traceback.print_exc()
            finally:
                os._exit(EXIT_SETUP_FAILED)
        theirs.close()
        self.pid = pid
        self.sock = ours

    def hand_over(self, spec: dict[str, Any], fds: list[int]) -> None:
        """Send the run; raises OSError if the spare is gone."""
        payload, memfd = spec_message(spec, SPARE_INLINE_MAX)
        try:
            socket.send_fds(self.sock, [payload], fds + ([memfd] if memfd is not None else []))
        finally:
            if memfd is not None:
                os.close(memfd)
            self.sock.close()

    def discard(self) -> None:
        self.sock.close()  # the spare exits when its socket closes


def _spare_main(sock: socket.socket) -> None:
    """The spare child's life: drop every descriptor of the launcher, wait
    for a run, become it."""
    os.dup2(sock.fileno(), Spare.SLOT, inheritable=False)
    _sys.close_range(Spare.SLOT + 1)
    signal.set_wakeup_fd(-1)
    _sys.prctl(_sys.PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() == 1:
        os._exit(0)  # the launcher is already gone
    cmd = socket.socket(fileno=Spare.SLOT)
    msg, fds, _flags, _addr = socket.recv_fds(cmd, MAX_MESSAGE, 64)
    if not msg:
        os._exit(0)
    spec = json.loads(msg)
    if spec.get("spec_in_fd"):
        with os.fdopen(fds.pop(), "rb") as fh:
            spec = json.loads(fh.read())
    cmd.detach()
    os.close(Spare.SLOT)
    layout = spec.pop("_spare_fds")
    stdio = fds[: layout["stdio"]]
    at = layout["stdio"]
    errsock = socket.socket(fileno=fds[at])
    at += 1
    json_w = None
    if layout["json_w"]:
        json_w = fds[at]
        at += 1
    extra_fds = fds[at:]
    seccomp = spec.get("seccomp")
    if seccomp:
        flags = _sys.SECCOMP_FILTER_FLAG_NEW_LISTENER if seccomp.get("listener") else 0
        try:
            seccomp["program"] = _sys.SeccompProgram(base64.b64decode(seccomp["bpf"]), flags)
        except (OSError, ValueError) as err:
            payload = json.dumps({"error": f"seccomp: {err}", "step": "seccomp", "errno": getattr(err, "errno", None)})
            os.write(errsock.fileno(), payload.encode())
            os._exit(EXIT_SETUP_FAILED)
    _child_setup(spec, stdio, errsock, json_w, _UsernsCache(), extra_fds)


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
        # the sandbox's size-capped tmpfs areas, opened at the program's
        # start and looked at when it ends: a full one is disk_limit
        self.areas: TmpfsAreas | None = None
        self.next_poll: float | None = None
        self.limit_error: dict[str, Any] | None = None
        # a prepared sandbox of a pool (stockade.pool): its waiter's socket,
        # and what the waiter's own start used (subtracted from the usage)
        self.pool: Pool | None = None
        self.waiter: socket.socket | None = None
        self.waiter_ready = False
        self.waiter_cpu: tuple[float, float] | None = None
        self.dispatched = False
        self.refills: Pool | None = None  # refilled when this run ends
        self.caller_end: socket.socket | None = None  # until announced
        self.t_go: float | None = None
        self.t_handed: float | None = None
        self.t_json_exit: float | None = None
        self.t_limits: float | None = None
        self.t_forked: float | None = None
        # the run was reported while the sandbox's pid 1, alone, was still
        # exiting (``_init_alone``): it is reaped, and the cgroup removed, later
        self.init_lingers = False
        # reported at bubblewrap's exit-code line, before its monitor was
        # reaped (``_finish_at_exit_line``)
        self.monitor_lingers = False
        # the second tier's monitor died without killing the run's tree
        self.monitor_died = False
        if spec.get("pool"):
            self.deadline = None  # the clock starts when a program is given

    # -- start ---------------------------------------------------------------

    def start(self) -> None:
        self._start_limits()
        self.t_limits = time.monotonic()
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
            # program (--add-seccomp-fd), read to its end
            extra_fds.append(_memfd("stockade-inner-filter", base64.b64decode(seccomp["inner_bpf"])))
        waiter_child = None
        if self.spec.get("pool"):
            # a prepared sandbox's waiter socket: the last slot
            self.waiter, waiter_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            extra_fds.append(waiter_child.fileno())
        spare = None if self.spec.get("idmaps") else self.launcher.take_spare()
        try:
            pid = -1
            if spare is not None:
                fds = [*self.stdio, child_sock.fileno()]
                if json_w is not None:
                    fds.append(json_w)
                fds += extra_fds
                sent = dict(self.spec)
                if "seccomp" in sent:
                    # what the child reads (_spare_main, _child_setup): the
                    # supervisor's tables and the inner filter (a memfd by
                    # now) would only be encoded and decoded once more
                    sent["seccomp"] = {k: v for k, v in sent["seccomp"].items() if k in _SPARE_SECCOMP_KEYS}
                sent["_spare_fds"] = {"stdio": len(self.stdio), "json_w": json_w is not None}
                try:
                    spare.hand_over(sent, fds)
                    pid = spare.pid
                except OSError:
                    # the spare is gone (killed from outside): fork instead
                    try:
                        os.kill(spare.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                    spare = None
            if pid < 0:
                pid = os.fork()
        except OSError:
            for fd in (*extra_fds, json_w):
                if fd is not None:
                    os.close(fd)
            parent_sock.close()
            child_sock.close()
            if self.waiter is not None:
                self.waiter.close()
                self.waiter = None
            raise
        if pid == 0:  # pragma: no cover - child
            parent_sock.close()
            _child_setup(self.spec, self.stdio, child_sock, json_w, self.launcher.userns, extra_fds)
        self.t_forked = time.monotonic()
        self.pid = pid
        child_sock.close()
        if json_w is not None:
            os.close(json_w)
        if waiter_child is not None:
            waiter_child.detach()  # closed with extra_fds
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
        if self.waiter is not None:
            sel.register(self.waiter, selectors.EVENT_READ, (self.on_waiter, None))
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
        areas = self.spec.get("tmpfs_areas")
        if areas:
            self.areas = TmpfsAreas(list(areas["paths"]), int(areas["bytes"]))
        if self.spec.get("pool"):
            return  # the rest starts with the program (on_go)
        budget = self.spec.get("disk_budget")
        if budget:
            self.disk = DiskBudget(budget["path"], int(budget["bytes"]), self.tree_pids)
        if self.cgroup is not None or self.disk is not None:
            self.next_poll = time.monotonic()

    def tree_pids(self) -> list[int] | None:
        """The run's processes: its cgroup's, else the descendants of the
        launcher's child (a process that left that tree is not among them).
        None when they cannot be listed."""
        if self.cgroup is not None:
            return self.cgroup.procs()
        if self.pid <= 0:
            return []
        found, todo = [], [self.pid]
        while todo:
            pid = todo.pop()
            found.append(pid)
            try:
                tasks = os.listdir(f"/proc/{pid}/task")
            except FileNotFoundError:
                continue
            except OSError:
                return None
            for tid in tasks:
                try:
                    with open(f"/proc/{pid}/task/{tid}/children", encoding="ascii") as fh:
                        todo += [int(c) for c in fh.read().split()]
                except FileNotFoundError:
                    continue
                except OSError:
                    return None
        return found

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
        areas = self.areas
        if areas is not None and not areas.opened and self.supervisor is None:
            # no filter, so no exec is seen: open the areas once bubblewrap's
            # view is finished (its root remounted read-only, its last step)
            if self.init_pid is not None:
                try:
                    areas.open(self.init_pid, wait_for_view=True)
                except OSError as err:
                    areas.problems.append(str(err))
                    areas.opened = True
            if not areas.opened:
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
                on_program=self.on_program if self.areas is not None else None,
            )
            callback = (self.on_notify, _NOTIFY)
            self.launcher.sel.register(fds[0], selectors.EVENT_READ, callback)
            for extra in fds[1:]:
                os.close(extra)
        elif "error" in data:
            self.setup_error = data
            for fd in fds:
                os.close(fd)

    def on_program(self, pid: int) -> None:
        """The program's execve is seen (it waits for our answer): the mount
        view is complete and none of its code has run. Open the tmpfs areas."""
        areas = self.areas
        if areas is None or areas.opened:
            return
        try:
            areas.open(pid)
        except OSError as err:
            areas.problems.append(str(err))
            areas.opened = True

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
                self.t_json_exit = time.monotonic()
                self._finish_at_exit_line()

    def _finish_at_exit_line(self) -> None:
        """Report the run at bubblewrap's exit-code line, without waiting for
        its monitor's exit and reaping, when nothing of the program is left.

        The monitor writes the line and exits: it is bubblewrap's code,
        outside the sandbox, and its status means nothing here (the line
        has the program's). Pid 1 is killed first (as the monitor's exit
        would, --die-with-parent), then must be alone (``_init_alone``). A
        run killed by us, one not yet exec'd, and a prepared sandbox's
        waiter not yet given a program end as before.
        """
        if (
            self.finished
            or self.status is not None
            or self.killed is not None
            or self.errsock is not None
            or not self.exec_done
            or (self.spec.get("pool") and not self.dispatched)
            or not self._may_end_before_init()
        ):
            return
        try:
            signal.pidfd_send_signal(self.init_pidfd, signal.SIGKILL)
        except OSError:
            pass  # already reaped: _init_alone tells
        if self._init_alone():
            self.init_lingers = True
            self.monitor_lingers = True
            self.finish()

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
        fds: list[int] = []
        try:
            msg, fds, _flags, _addr = socket.recv_fds(self.report, MAX_MESSAGE, 3)
        except OSError:
            msg = b""
        if not msg:
            for fd in fds:
                os.close(fd)
            # The caller went away (cancelled, or died): end the run.
            self.launcher.sel.unregister(self.report)
            self.kill("cancelled")
            return
        try:
            data = json.loads(msg)
        except ValueError:
            data = {}
        if data.get("op") == "go" and self.spec.get("pool") and not self.dispatched:
            self.on_go(data, fds)
            return
        for fd in fds:
            os.close(fd)
        if data.get("op") == "kill":
            self.kill(str(data.get("reason") or "cancelled"))

    # -- prepared sandboxes (pool) -------------------------------------------

    def on_waiter(self, _arg: Any) -> None:
        """The waiter's messages: ``ready`` once, then EOF at its exec."""
        assert self.waiter is not None
        try:
            msg = self.waiter.recv(4096)
        except OSError:
            msg = b""
        if not msg:
            self.launcher.sel.unregister(self.waiter)
            self.waiter.close()
            self.waiter = None
            if self.dispatched:
                self.t_handed = time.monotonic()  # the waiter is about to exec
            return
        try:
            data = json.loads(msg)
        except ValueError:
            return
        ready = data.get("ready")
        if isinstance(ready, list) and len(ready) == 2 and not self.waiter_ready:
            self.waiter_ready = True
            self.waiter_cpu = (float(ready[0]), float(ready[1]))
            if self.cgroup is not None:
                # the waiter's start is not the program's: count from here
                self.cgroup.set_baseline()
            if self.pool is not None:
                self.pool.announce(self)

    def on_go(self, data: dict[str, Any], fds: list[int]) -> None:
        """A program for this prepared sandbox: hand it to the waiter."""
        self.dispatched = True
        now = time.monotonic()
        self.t_go = now
        self.run_id = str(data.get("run_id") or self.run_id)
        timeout = data.get("timeout")
        self.deadline = now + float(timeout) if timeout else None
        if self.pool is not None:
            self.pool.on_dispatched(self)
        request = {k: data.get(k) for k in ("path", "argv", "env", "cwd")}
        try:
            if self.waiter is None or len(fds) != 3 or self.status is not None:
                raise OSError(errno.ESRCH, "the prepared sandbox is gone")
            socket.send_fds(self.waiter, [json.dumps(request).encode()], fds)
        except OSError as err:
            if self.setup_error is None:
                self.setup_error = {
                    "error": f"prepared sandbox: {err}",
                    "step": "pool",
                    "errno": err.errno,
                }
            self.kill("sandbox_error")
        finally:
            for fd in fds:
                os.close(fd)
        budget = self.spec.get("disk_budget")
        if budget:
            self.disk = DiskBudget(budget["path"], int(budget["bytes"]), self.tree_pids)
        if self.cgroup is not None or self.disk is not None:
            self.next_poll = now

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
            if self.spec.get("monitor") and not (
                os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
            ):
                # The second tier's monitor died (killed, or failed) without
                # killing the run's tree: its orphans, setsid'ed ones included,
                # were reparented here (we are a subreaper) before its exit
                # was reported. Without a cgroup nothing else would end them.
                # The program's process dies of its parent-death signal just
                # after: its children are swept when it is reaped.
                self.monitor_died = True
                self.launcher.sweep_orphans()
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
            if self.monitor_died:
                self.launcher.sweep_orphans()
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
                if not self._init_alone():
                    return
                self.init_lingers = True
        self.finish()

    def _may_end_before_init(self) -> bool:
        """The run has a bubblewrap pid 1 we can check, and a cgroup that
        counts its CPU time (see ``_init_alone``)."""
        return not (
            self.init_pid is None
            or self.init_pidfd is None
            or self.spec.get("monitor")
            or self.cgroup is None
            or CPUACCT not in self.cgroup.dirs
            or self.launcher.cgroups is None
        )

    def _init_alone(self) -> bool:
        """True when the sandbox's pid 1 (bubblewrap's init, killed by the
        caller of this) is all that is left of the run.

        Every process of the sandbox's pid namespace descends from its pid 1
        and an orphan is reparented to it, so with no child (zombies count)
        no process of the program exists any more; killed, pid 1 can start
        none (a fork checks for the pending SIGKILL under the lock the
        signal takes). What remains is its own exit, whose teardown of the
        mount namespace (about 1 ms) need not delay the report: bubblewrap
        run by hand does not wait for it either. The run is then reported
        at once; its cgroup is removed once pid 1 is reaped.

        Only with a cgroup that counts CPU time: without one the run's CPU
        time is the rusage of pid 1 and the monitor, known when reaped.
        """
        if not self._may_end_before_init():
            return False
        assert self.init_pidfd is not None
        try:
            signal.pidfd_send_signal(self.init_pidfd, 0)
        except ProcessLookupError:
            # reaped (by the monitor, its parent until it exits): pid 1
            # became a zombie only once its namespace was empty
            return True
        except OSError:
            return False
        try:
            with open(f"/proc/{self.init_pid}/task/{self.init_pid}/children", "rb") as fh:
                # Read while pid 1 exists, alive or a zombie: its pid is not
                # free. Had its parent reaped it since, the pid could name
                # another process: a child listed means "wait" (safe); none
                # listed is right anyway, since pid 1 was then gone.
                return not fh.read().strip()
        except OSError:
            return False

    def finish(self) -> None:
        self.finished = True
        self.t_finish = time.monotonic()
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
        if self.pool is not None:
            self.pool.on_finished(self)
        if self.waiter_cpu is not None and self.init_rusage is not None:
            # the waiter ran as the program's process: its start is not the
            # program's usage (it is in the sandbox init's children)
            user, system = self.waiter_cpu
            self.init_rusage["utime"] = max(0.0, self.init_rusage["utime"] - user)
            self.init_rusage["stime"] = max(0.0, self.init_rusage["stime"] - system)
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
        # The run's own directories (the second tier's HOME and TMPDIR): no
        # process of the run is left to write there, and the caller may be
        # gone (SIGKILLed), so they are removed here rather than only by it.
        # TODO(#5): a launcher SIGKILLed itself leaves them; nothing sweeps
        # stale ones at the next start meanwhile (docs/hosts.md).
        for path in self.spec.get("remove_after") or []:
            remove_tree(path)
        disk: dict[str, Any] | None = None
        if self.disk is not None:
            # past the budget at the end: the program ended by itself, so it
            # keeps its exit status and the caller reports disk_limit
            over = self.killed == "disk_limit" or (
                self.killed is None and self.disk.check(time.monotonic(), final=True)
            )
            disk = {
                "measured_bytes": self.disk.measured,
                "limit_bytes": self.disk.limit,
                "walks": self.disk.walks,
                "inodes": self.disk.inodes,
                "inode_charge_bytes": self.disk.unit,
                "over": over,
            }
            if over:
                violations.append({
                    "mechanism": "disk",
                    "what": "workspace",
                    "action": "disk_limit",
                    "count": 1,
                    "detail": (
                        f"{self.disk.measured >> 20} MiB added"
                        f" ({self.disk.inodes} inodes, each at least"
                        f" {self.disk.unit} bytes),"
                        f" budget {self.disk.limit >> 20} MiB"
                    ),
                })
        if self.areas is not None:
            full = self.areas.full()
            disk = dict(disk or {}, tmpfs_full=full, tmpfs_problems=list(self.areas.problems))
            if not self.areas.opened:
                disk["tmpfs_problems"].append("the program's start was not seen")
            for area in full:
                violations.append({
                    "mechanism": "disk",
                    "what": str(area["area"]),
                    "action": "errno:ENOSPC",
                    "count": 1,
                    "detail": (
                        "tmpfs area "
                        + (
                            "out of inodes"
                            if area["free_inodes"] == 0 and int(area["free_bytes"]) > 0
                            else "full"
                        )
                        + f" ({int(area['size_bytes']) >> 20} MiB)"
                    ),
                })
            self.areas.close()
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
            "times": self._times(),
        }
        if self.spec.get("pool"):
            event["pooled"] = {
                "dispatched": self.dispatched,
                "waiter_ready": self.waiter_ready,
                "waiter_cpu_sec": sum(self.waiter_cpu) if self.waiter_cpu else None,
            }
        try:
            self.report.send(json.dumps(event).encode())
        except OSError:
            pass
        self.close()
        if self.refills is not None:
            self.refills.refill_at = None
            self.refills.fill()
        if self.cgroup is not None and self.launcher.cgroups is not None:
            lingering = [self.pid] if self.monitor_lingers else []
            if self.init_lingers and self.init_pid is not None and self.init_rusage is None:
                lingering.append(self.init_pid)
            if lingering:
                # pid 1 or the monitor may still be in it: removed when one
                # of them is reaped (or retried, if the other is still there)
                for pid in lingering:
                    self.launcher.lingering[pid] = self.cgroup
            else:
                # after the event: removal is off the caller's path
                self.launcher.cgroups.release(self.cgroup)
            self.cgroup = None

    def _times(self) -> dict[str, float]:
        end = self.t_exit or time.monotonic()
        if self.t_go is None:
            start = self.t_start
            times = {
                "launch_ms": ((self.t_exec or start) - start) * 1000,
                "run_ms": max(0.0, end - start) * 1000,
            }
            # where the launch went (from the run's arrival): limits set up,
            # child forked or spare given the run, program's exec seen by the
            # supervisor, bubblewrap's exit-code seen, report sent
            marks = {
                "limits_ms": self.t_limits,
                "forked_ms": self.t_forked,
                "program_exec_ms": self.supervisor.t_program if self.supervisor else None,
                "exit_seen_ms": self.t_json_exit,
                "finish_ms": getattr(self, "t_finish", None),
            }
            for key, mark in marks.items():
                if mark is not None:
                    times[key] = (mark - start) * 1000
            times["report_ms"] = (time.monotonic() - start) * 1000
            return times
        # a prepared sandbox: from the moment it was given the program
        start = self.t_go
        times = {
            "launch_ms": (max(start, self.t_handed or start) - start) * 1000,
            "run_ms": max(0.0, end - start) * 1000,
        }
        if self.t_json_exit is not None:
            times["exit_seen_ms"] = (self.t_json_exit - start) * 1000
        times["finish_ms"] = (self.t_finish - start) * 1000
        times["report_ms"] = (time.monotonic() - start) * 1000
        return times

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
        for obj in (self.report, self.json_r, self.waiter):
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
        if self.areas is not None:
            self.areas.close()
        if self.block_w is not None:
            os.close(self.block_w)
            self.block_w = None
        if self.waiter is not None:
            self.waiter.close()
            self.waiter = None
        self.launcher.by_pid.pop(self.pid, None)
        if self.init_pid is not None:
            self.launcher.by_pid.pop(self.init_pid, None)
        self.launcher.runs.discard(self)


class Pool:
    """A caller's pool of prepared sandboxes, all from one template spec.

    The caller opens it with ``{"op": "pool", "size": N, "template": spec}``
    on the control socket and one descriptor, the pool's socket. The launcher
    keeps ``size`` sandboxes prepared and not yet given a program: when one
    is ready (its waiter said so) it sends ``{"event": "prepared"}`` on the
    pool's socket with the caller's end of that sandbox's report socket
    attached. The caller gives it a
    program with ``{"op": "go", ...}`` on that report socket (``Run.on_go``);
    from then on it is an ordinary run, and the launcher prepares a
    replacement. A sandbox that ends before it was given a program stops the
    refilling (``{"event": "broken", "error": ...}``): a template that cannot
    start would otherwise be retried without end. Closing the pool's socket
    ends every sandbox not yet given a program.
    """

    def __init__(self, launcher: Launcher, sock: socket.socket, size: int, template: dict[str, Any]):
        self.launcher = launcher
        self.sock = sock
        self.size = max(0, int(size))
        self.template = template
        self.idle: set[Run] = set()
        self.closed = False
        self.broken = False
        self.serial = 0
        self.refill_at: float | None = None
        launcher.sel.register(sock, selectors.EVENT_READ, (self.on_sock, None))

    def fill(self) -> None:
        while not self.closed and not self.broken and len(self.idle) < self.size:
            if not self.prepare_one():
                return

    def prepare_one(self) -> bool:
        self.serial += 1
        spec = dict(self.template)
        if "seccomp" in spec:
            spec["seccomp"] = dict(spec["seccomp"])  # Run.start adds the program
        spec["run_id"] = f"{self.template.get('run_id', 'pool')}-{self.serial}"
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        stdio = [null, os.dup(null), os.dup(null)]
        run = Run(self.launcher, spec, stdio, ours)
        run.pool = self
        run.caller_end = theirs
        self.launcher.runs.add(run)
        self.idle.add(run)
        try:
            run.start()
        except (_SetupFailed, OSError) as err:
            for fd in run.stdio:
                os.close(fd)
            run.stdio = []
            if run.setup_error is None:
                run.setup_error = {"error": f"fork: {err}", "step": "fork", "errno": getattr(err, "errno", None)}
            run.status = EXIT_SETUP_FAILED << 8
            run.finish()  # -> on_finished: broken
            return False
        return True

    def announce(self, run: Run) -> None:
        """A sandbox's waiter is ready: hand the caller its report socket."""
        end, run.caller_end = run.caller_end, None
        if end is None or self.closed:
            return
        try:
            socket.send_fds(self.sock, [b'{"event": "prepared"}'], [end.fileno()])
        except OSError:
            self.close()
        finally:
            end.close()

    def on_dispatched(self, run: Run) -> None:
        """A sandbox was given a program. Its replacement is prepared when
        that run ends, or after REFILL_DELAY_SEC if it runs on: preparing
        one (a fork, bubblewrap's set-up) in the middle of a short run
        would delay that run's end on a small machine."""
        self.idle.discard(run)
        run.pool = None
        run.refills = self
        self.refill_at = min(self.refill_at or float("inf"), time.monotonic() + REFILL_DELAY_SEC)

    def refill_due(self, now: float) -> None:
        if self.refill_at is not None and now >= self.refill_at:
            self.refill_at = None
            self.fill()

    def on_finished(self, run: Run) -> None:
        """A sandbox of this pool ended before it was given a program."""
        self.idle.discard(run)
        if run.caller_end is not None:
            run.caller_end.close()
            run.caller_end = None
        if self.closed or run.killed == "cancelled":
            return  # the caller let it go
        self.broken = True
        error = (run.setup_error or {}).get("error") or f"ended before use (status {run.status})"
        try:
            self.sock.send(json.dumps({"event": "broken", "error": error}).encode())
        except OSError:
            pass

    def on_sock(self, _arg: Any) -> None:
        try:
            msg = self.sock.recv(4096)
        except OSError:
            msg = b""
        if not msg:
            self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self.launcher.sel.unregister(self.sock)
        except (KeyError, ValueError):
            pass
        self.sock.close()
        for run in list(self.idle):
            run.kill("cancelled")
        self.idle.clear()
        self.launcher.pools.discard(self)


class _SetupFailed(Exception):
    """Run.start found a set-up error before forking."""


class Launcher:
    """Args:
        control: the caller's control socket.
        scope: the systemd scope (``<unit>.scope``) ``client.py`` started
            this process in with ``Delegate=yes``, or None.
    """

    def __init__(self, control: socket.socket, scope: str | None = None):
        self.control = control
        self.scope = scope
        # poll(2), not epoll: a seccomp notification wakes a poll() waiter
        # directly on the notifying task's CPU (SYNC_WAKE_UP, see
        # supervise.py); through epoll the wake-up takes a detour via its
        # callback and another CPU. A launcher watches few descriptors.
        self.sel = selectors.PollSelector()
        self._last_tick = 0.0
        self.runs: set[Run] = set()
        self.pools: set[Pool] = set()
        self.by_pid: dict[int, Run] = {}
        self.userns = _UsernsCache()
        self.stopping = False
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.cgroups: RunCgroups | None = None
        self.cgroup_problem: str | None = None
        # hierarchy versions runs asked for: one cgroup each is made ahead
        self.cgroup_versions: set[int] = set()
        # a child forked ahead of the next run (Spare), and when to fork one
        self.spare: Spare | None = None
        # STOCKADE_SPARE=0 turns spares off (for comparisons in bench/)
        self.spare_at: float | None = None if os.environ.get("STOCKADE_SPARE") == "0" else 0.0
        self.spare_pids: set[int] = set()
        # finished runs' cgroups, by the pid of their sandbox's pid 1, which
        # was still exiting when the run was reported (Run._init_alone)
        self.lingering: dict[int, RunCgroup] = {}
        # what a dead second-tier monitor left, killed here and not yet
        # reaped (``sweep_orphans``)
        self.orphans: set[int] = set()

    def _setup_cgroups(self, found: Probe | None = None) -> None:
        """Probe the cgroups, remove what dead launchers left, make the first
        run's cgroup ahead of time."""
        try:
            self.cgroups = RunCgroups(found or probe(leave_delegated=True, scope=self.scope))
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
                try:
                    current = self.sel.get_map().get(key.fileobj)
                except ValueError:
                    continue  # closed by an earlier callback (fileno -1)
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
            self.cgroups.pending += {id(cg): cg for cg in self.lingering.values()}.values()
            self.lingering.clear()
            self.cgroups.close()
        os._exit(0)

    def take_spare(self) -> Spare | None:
        spare, self.spare = self.spare, None
        if spare is not None:
            self.spare_pids.discard(spare.pid)
        self.spare_at = time.monotonic() + SPARE_DELAY_SEC
        return spare

    def _busy(self) -> bool:
        """A run is starting or running (prepared sandboxes waiting for a
        program do not count): forking now would delay its events."""
        return any(
            not run.finished and (not run.spec.get("pool") or run.dispatched) and run.status is None
            for run in self.runs
        )

    def maybe_spare(self, now: float) -> None:
        """Fork a spare child if none is waiting, it is time, and no run is
        under way (the fork takes the launcher away from it for ~1 ms)."""
        if self.spare is not None or self.spare_at is None or now < self.spare_at or self.stopping:
            return
        if self._busy():
            return  # retried on the next tick (each run's end is one)
        self.spare_at = None
        try:
            self.spare = Spare()
        except OSError:
            self.spare = None
            return
        self.spare_pids.add(self.spare.pid)

    def _next_timeout(self) -> float | None:
        now = time.monotonic()
        times = []
        if self.spare is None and self.spare_at is not None and not self._busy():
            times.append(self.spare_at)
        for run in self.runs:
            if run.deadline is not None and run.killed is None:
                times.append(run.deadline)
            if run.finish_deadline is not None and not run.finished:
                times.append(run.finish_deadline)
            if run.next_poll is not None and not run.finished:
                times.append(run.next_poll)
        if self.cgroups is not None and self.cgroups.next_retry is not None:
            times.append(self.cgroups.next_retry)
        for pool in self.pools:
            if pool.refill_at is not None:
                times.append(pool.refill_at)
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
        for pool in list(self.pools):
            pool.refill_due(now)
        self.maybe_spare(now)
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
            if spec.get("spec_in_fd") and len(fds) in (2, 5):
                # too large for one message (long argv or environment): the
                # spec came in a memfd
                with os.fdopen(fds.pop(), "rb") as fh:
                    spec = json.loads(fh.read())
            if spec.get("op") == "pool" and len(fds) == 1:
                self.open_pool(spec, socket.socket(fileno=fds[0]))
                return
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

    def open_pool(self, request: dict[str, Any], sock: socket.socket) -> None:
        template = request.get("template") or {}
        if template.get("cgroup"):
            self.cgroup_versions.add(int(template["cgroup"]["version"]))
        pool = Pool(self, sock, int(request.get("size") or 0), template)
        self.pools.add(pool)
        pool.fill()

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
            elif pid in self.orphans:
                # an orphan of a dead monitor, killed: its own children were
                # reparented here before it could be reaped
                self.orphans.discard(pid)
                self.sweep_orphans()
            lingering = self.lingering.pop(pid, None)
            if lingering is not None:
                for other in [p for p, cg in self.lingering.items() if cg is lingering]:
                    del self.lingering[other]
                if self.cgroups is not None:
                    self.cgroups.release(lingering)

    def sweep_orphans(self) -> None:
        """SIGKILL what a dead second-tier monitor left behind.

        Every process of a second-tier run descends from its monitor, a
        subreaper; when the monitor dies before it has killed its tree (it
        was killed, or failed), the survivors are reparented to the launcher,
        which is a subreaper too. They are the launcher's children that are
        not its own: not a run's process (``by_pid``), not a spare, not in
        the launcher's session (its helpers are: a run's processes are in
        the session their monitor made, or in one of their own) and not in
        another pid namespace (a bubblewrap sandbox's pid 1, reparented here
        when its monitor exits, ends with it: ``--die-with-parent``). Called
        again at each such orphan's reaping, when its own children have been
        reparented here, until none is left.
        """
        me, own_sid = os.getpid(), os.getsid(0)
        for pid in reaper.children_of(me):
            if pid in self.by_pid or pid in self.spare_pids:
                continue
            try:
                if os.getsid(pid) == own_sid or not _same_pid_namespace(pid):
                    continue
                os.kill(pid, signal.SIGKILL)  # our child: the pid is not reused
            except (ProcessLookupError, PermissionError):
                continue
            self.orphans.add(pid)

    def _shutdown(self) -> None:
        self.stopping = True
        try:
            self.sel.unregister(self.control)
        except (KeyError, ValueError):
            pass
        for pool in list(self.pools):
            pool.close()
        if self.spare is not None:
            self.spare.discard()
            self.spare = None
        self.spare_at = None
        for run in list(self.runs):
            run.kill("cancelled")


def _same_pid_namespace(pid: int) -> bool:
    """True when ``pid`` has one pid only (``NSpid``): it lives in the pid
    namespace of this /proc, ours, not in a sandbox's below it."""
    try:
        with open(f"/proc/{pid}/status", "rb") as fh:
            for line in fh:
                if line.startswith(b"NSpid:"):
                    return len(line.split()) == 2
    except OSError:
        return False
    return True


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv if argv is None else argv
    control = socket.socket(fileno=int(argv[1]))
    # argv[2]: the delegated systemd scope it was started in (client.py)
    scope = argv[2] if len(argv) > 2 and argv[2] else None
    Launcher(control, scope).serve()


if __name__ == "__main__":  # pragma: no cover
    main()
