"""The second tier's monitor: one subreaper per run, so the tree dies whole.

Without a pid namespace there is no pid 1 whose death takes every process of
the run with it, and a process group is no boundary: one ``setsid`` and a
grandchild has left it. So in the second tier the launcher child forks once
more before it restricts itself:

* the parent becomes the run's *monitor*: a child subreaper
  (PR_SET_CHILD_SUBREAPER), outside the run's Landlock domain, keeping the
  launcher's credentials. Every process of the run that loses its parent is
  reparented to it, whatever session or group it made for itself;
* the child goes on to drop privileges, restrict itself and exec the
  program.

When the program exits, or the launcher asks (SIGTERM: timeout, output
limit, cancel), or the launcher dies (the monitor's parent-death signal is
SIGTERM too), the monitor kills its children with SIGKILL, reaps them, and
repeats until it has none: a killed process's children are reparented to the
monitor before the killed one can be reaped, so each round finds the next
generation and nothing is missed. No process of the run can create a child
outside this tree. Processes that some other host service starts on the
program's behalf (``systemd-run --user``, ``at``) are not descendants; the
ruleset and the filter have to keep the program away from such services.

The monitor speaks bubblewrap's ``--json-status-fd`` protocol to the
launcher, so the launcher treats it like bubblewrap's own monitor: one line
``{"child-pid": N}`` when the program's process exists, one line
``{"exit-code": N}`` (128+signal when it was killed) when it is gone. Its own
exit status carries nothing. Because the monitor reaps every process of the
run, ``wait4`` on the monitor reports the usage of the whole tree.

It is the launcher's own code in a forked copy of the launcher (no new
interpreter), asleep in ``sigwaitinfo`` for the whole run.

Stdlib only: the launcher imports this module before it forks.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import time
from collections.abc import Callable

from . import _sys

_Reaped = Callable[[int, int], None]

PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4

_WAKE = {signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP, signal.SIGINT}


def split(json_w: int) -> int:
    """Fork the monitor off the launcher child. Returns only in the child.

    Called in the launcher child after it joined the run's cgroups and
    before it drops privileges. The monitor (the parent) never returns.

    Args:
        json_w: the write end of the run's status pipe (the launcher reads
            the other end).

    Returns:
        The monitor's pid, in the child that will exec the program.
    """
    launcher = os.getppid()
    os.setsid()  # no controlling terminal, and a group of our own
    _sys.prctl(_sys.PR_SET_CHILD_SUBREAPER, 1)
    _sys.prctl(_sys.PR_SET_PDEATHSIG, signal.SIGTERM)
    # Blocked before the fork, so that no SIGCHLD or SIGTERM can be taken by
    # the launcher's inherited handler before sigwaitinfo waits for it.
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _WAKE)
    pid = os.fork()
    if pid == 0:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        return os.getppid()
    code = 0
    try:
        _monitor(pid, json_w, launcher)
    except BaseException:  # noqa: BLE001 - the monitor must always end its tree
        code = 1
        _kill_tree(lambda _pid, _status: None)
    os._exit(code)


def bind_to_monitor(monitor_pid: int) -> None:
    """In the program's process, after the privilege drop: die with the monitor.

    The parent-death signal is reset by a change of credentials, hence
    after the drop. Ambient capabilities (a caller that holds some) would
    survive exec for a non-root uid; they are cleared.

    Raises:
        OSError: the monitor is already gone.
    """
    _sys.prctl(_sys.PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != monitor_pid:
        raise OSError(
            errno.ESRCH, "the run's monitor exited before the program started"
        )
    try:
        _sys.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    except OSError as err:
        if err.errno != errno.EINVAL:  # EINVAL: kernel without ambient capabilities
            raise


def _monitor(child: int, json_w: int, launcher: int) -> None:
    signal.set_wakeup_fd(-1)
    # Keep only the status pipe: the launcher's sockets, other runs' report
    # sockets and listeners must not stay open in a process that lives as
    # long as this run.
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.dup2(json_w, 3, inheritable=False)
    _sys.close_range(4)
    status_fd = 3
    _send(status_fd, {"child-pid": child})

    status: int | None = None

    def on_reap(pid: int, wait_status: int) -> None:
        nonlocal status
        if pid == child:
            status = wait_status

    stop = os.getppid() != launcher
    while status is None and not stop:
        info = signal.sigwaitinfo(_WAKE)
        if info.si_signo != signal.SIGCHLD:
            stop = True
        _reap_ready(on_reap)
    if status is None:
        try:
            os.kill(child, signal.SIGKILL)
        except ProcessLookupError:
            pass
    _kill_tree(on_reap)
    if status is not None:
        if os.WIFSIGNALED(status):
            code = 128 + os.WTERMSIG(status)
        else:
            code = os.WEXITSTATUS(status)
        _send(status_fd, {"exit-code": code})


def _reap_ready(on_reap: _Reaped) -> bool:
    """Reap every child that has exited. False once there are no children."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return False
        if pid == 0:
            return True
        on_reap(pid, status)


def _kill_tree(on_reap: _Reaped) -> None:
    """SIGKILL every child, reap, repeat until no child is left.

    A killed process's children are reparented to us before the killed
    process becomes reapable, so once a round's victims are reaped, the next
    scan sees their orphans.
    """
    me = os.getpid()
    while _reap_ready(on_reap):
        children = children_of(me)
        for pid in children:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if children:
            try:
                pid, status = os.waitpid(-1, 0)
            except ChildProcessError:
                return
            on_reap(pid, status)
        else:
            # A child we have but did not see yet: reparented during the scan.
            time.sleep(0.001)


def children_of(parent: int) -> list[int]:
    """Pids whose parent is ``parent``, from /proc/<pid>/stat.

    /proc/<pid>/task/<tid>/children would be cheaper, but it needs
    CONFIG_PROC_CHILDREN, which many kernels (this project's CI among them)
    are built without.
    """
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        fields = stat_fields(int(name))
        if fields is not None and len(fields) > 1 and int(fields[1]) == parent:
            found.append(int(name))
    return found


def stat_fields(pid: int) -> list[bytes] | None:
    """The fields of /proc/<pid>/stat after the command name (state, ppid,
    ...), or None when the process is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
    except OSError:
        return None
    # "pid (comm) state ppid ...": comm may itself contain ") "
    return data[data.rfind(b")") + 2 :].split()


def _send(fd: int, message: dict[str, int]) -> None:
    try:
        os.write(fd, json.dumps(message).encode() + b"\n")
    except OSError:
        pass  # the launcher is gone; the tree is being killed anyway
