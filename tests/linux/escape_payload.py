"""Runs INSIDE the sandbox: tries each escape and prints what happened as JSON.

Argument: a JSON object with ``outside`` (a directory the run must not
touch), ``port`` (a TCP listener of the host on 127.0.0.1), ``victim`` (a host
process's pid), ``abstract`` (an abstract unix socket name of the host),
``tmp_name`` (a file name to try in the host's /tmp). Each attempt's value
is "ok" or "errno:NAME".
"""

import errno
import json
import os
import signal
import socket
import sys

args = json.loads(sys.argv[1])
outside = args["outside"]
out = {}


def attempt(name, fn):
    try:
        fn()
        out[name] = "ok"
    except OSError as err:
        out[name] = "errno:" + errno.errorcode.get(err.errno or 0, str(err.errno))


def write(path, mode="w"):
    with open(path, mode) as fh:
        fh.write("escaped\n")


def read(path):
    with open(path, "rb") as fh:
        fh.read()


def tcp_connect():
    socket.create_connection(("127.0.0.1", args["port"]), timeout=3).close()


def tcp_bind():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))


def abstract():
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect("\0" + args["abstract"])


write("moved.txt")
attempt("write_existing", lambda: write(os.path.join(outside, "secret.txt"), "a"))
attempt("create", lambda: write(os.path.join(outside, "new.txt")))
attempt("unlink", lambda: os.unlink(os.path.join(outside, "secret.txt")))
attempt("mkdir", lambda: os.mkdir(os.path.join(outside, "dir")))
attempt("symlink", lambda: os.symlink("/etc/passwd", os.path.join(outside, "link")))
attempt(
    "rename_out", lambda: os.rename("moved.txt", os.path.join(outside, "moved.txt"))
)
attempt("truncate", lambda: os.truncate(os.path.join(outside, "secret.txt"), 0))
attempt("host_tmp_write", lambda: write(os.path.join("/tmp", args["tmp_name"])))
attempt("read_secret", lambda: read(os.path.join(outside, "secret.txt")))
attempt("list_outside", lambda: os.listdir(outside))
attempt("tcp_connect", tcp_connect)
attempt("tcp_bind", tcp_bind)
attempt("signal", lambda: os.kill(args["victim"], signal.SIGUSR1))
attempt("abstract", abstract)
attempt("victim_environ", lambda: read(f"/proc/{args['victim']}/environ"))
# what must keep working
attempt("workspace_write", lambda: write("ok.txt"))
attempt("home_write", lambda: write(os.path.join(os.environ["HOME"], "h.txt")))
attempt(
    "tmpdir_write",
    lambda: write(os.path.join(os.environ.get("TMPDIR", "/tmp"), "t.txt")),
)
attempt("system_read", lambda: read("/etc/passwd"))
# 0: no seccomp filter on this process, 2: filtered; says whose refusals these are
with open("/proc/self/status") as fh:
    out["seccomp"] = next(
        line.split()[1] for line in fh if line.startswith("Seccomp:")
    )
print(json.dumps(out))
