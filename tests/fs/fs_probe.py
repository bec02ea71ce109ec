"""Runs INSIDE the sandbox: tries file operations, prints what happened.

argv[1] is a JSON list of ``[label, op, arg...]``; the last stdout line is a
JSON object mapping each label to ``"ok"``, ``"ok:<text>"`` (read, list) or
the errno name of the failure (``"EACCES"``, ``"EROFS"``, ...).
"""

import errno
import json
import os
import sys


def _read(path):
    with open(path) as fh:
        return "ok:" + fh.read(200).strip()


def _list(path):
    return "ok:" + ",".join(sorted(os.listdir(path)))


def _append(path, text="x\n"):
    with open(path, "a") as fh:
        fh.write(text)
    return "ok"


def _create(path, text="new\n"):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    os.write(fd, text.encode())
    os.close(fd)
    return "ok"


def _simple(fn):
    def run(*args):
        fn(*args)
        return "ok"

    return run


OPS = {
    "read": _read,
    "list": _list,
    "append": _append,
    "create": _create,
    "mkdir": _simple(os.mkdir),
    "unlink": _simple(os.unlink),
    "rmdir": _simple(os.rmdir),
    "rename": _simple(os.rename),
    "link": _simple(os.link),
    "symlink": _simple(os.symlink),
    "chmod": _simple(lambda path, mode: os.chmod(path, int(mode, 8))),
    "utime": _simple(lambda path, seconds: os.utime(path, (int(seconds),) * 2)),
    "setxattr": _simple(lambda path, name, value: os.setxattr(path, name, value.encode())),
}


def main():
    out = {}
    for label, op, *args in json.loads(sys.argv[1]):
        try:
            out[label] = OPS[op](*args)
        except OSError as err:
            out[label] = errno.errorcode.get(err.errno, str(err.errno))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
