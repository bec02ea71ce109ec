"""The waiter: what a prepared sandbox runs until it is given a program.

A prewarmed pool (``stockade.pool``) keeps sandboxes whose namespaces,
mount view, cgroup, rlimits and seccomp filter are already in place. What
bubblewrap exec'd in each is this small program, run by the system's
``python3`` inside the sandbox, under the sandbox's filter and limits. It

1. tells the launcher it is ready, with the CPU time its own start took (the
   launcher subtracts it from the run's usage);
2. waits on its socket (a descriptor slot given as its argument) for one
   message: the program's path, argv, environment and working directory,
   with the run's stdin, stdout and stderr attached;
3. puts those on 0, 1 and 2, closes every other descriptor (its socket
   included), restores the signal dispositions Python changed, and execs the
   program in place. Nothing of the waiter survives the exec but its pid.

An exec that fails is reported the way bubblewrap reports it (``bwrap:
execvp PATH: reason`` on the program's stderr, exit status 1), so a pooled
run that cannot start reads exactly like a cold one.

The code below is passed with ``-c``: keep it small, stdlib only, and valid
on every Python 3 a host may have as ``/usr/bin/python3`` (3.9+, for
``socket.recv_fds``).
"""

from __future__ import annotations

import os
import shutil

# The waiter's message size limit; larger requests go to a cold sandbox.
MAX_REQUEST = 128 * 1024

CODE = """\
import os, sys, json, signal, socket
s = socket.socket(fileno=int(sys.argv[1]))
t = os.times()
s.send(json.dumps({"ready": [t[0], t[1]]}).encode())
m, fds, _f, _a = socket.recv_fds(s, %(max)d, 3)
if not m or len(fds) != 3:
    os._exit(125)
r = json.loads(m)
for i, fd in enumerate(fds):
    os.dup2(fd, i)
for n in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT):
    signal.signal(n, signal.SIG_DFL)
os.closerange(3, 1 << 30)
try:
    os.chdir(r["cwd"])
    os.execve(r["path"], r["argv"], r["env"])
except OSError as e:
    os.write(2, ("bwrap: execvp %%s: %%s\\n" %% (r["argv"][0], e.strerror)).encode("utf-8", "surrogateescape"))
    os._exit(1)
""" % {"max": MAX_REQUEST + 4096}

# Where the waiter's interpreter is looked for: inside the sandbox only the
# system directories are visible, so never the caller's own Python.
SEARCH_PATH = "/usr/bin:/bin"


def interpreter() -> str | None:
    """The system python3 the waiter runs with, or None if there is none."""
    return shutil.which("python3", path=SEARCH_PATH)


def argv(python: str, slot: int) -> list[str]:
    """The waiter's command line: isolated mode, no site, no bytecode."""
    return [python, "-I", "-S", "-B", "-c", CODE, str(slot)]


def pooled_cpu_limit(rlimits: list[list[object]]) -> list[list[object]]:
    """RLIMIT_CPU counts the waiter's start (tens of milliseconds) too:
    a pooled sandbox gets one more second, the unit the limit has."""
    out = []
    for name, soft, hard in rlimits:
        if name == "RLIMIT_CPU":
            soft = None if soft is None else int(soft) + 1  # type: ignore[call-overload]
            hard = None if hard is None else int(hard) + 1  # type: ignore[call-overload]
        out.append([name, soft, hard])
    return out

