"""Probe system calls from inside the sandbox; print one JSON line of outcomes.

Usage: python3 syscall_probe.py '<json list of probes>' [--in-process]

Each probe is {"id": str, "nr": int, "args": [...], "abi": "native"|"int80"}.
An argument is an int, "s:<text>" (a NUL-terminated string), "buf:<n>"
(n zeroed bytes) or "fd:<path>" (a descriptor of path, opened read-only). Each probe runs in a forked child, so a kill only ends the
child; with --in-process they run in this process (strict mode has no fork).

Outcome per probe: "ok" (returned >= 0), "errno:<NAME>", "killed:<SIGNAL>".
Stdlib only: runs under the sandbox's python3.
"""

import ctypes
import errno
import json
import mmap
import os
import signal
import sys

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long


def _arg(value):
    if isinstance(value, int):
        return ctypes.c_long(value) if value < (1 << 63) else ctypes.c_ulong(value)
    kind, _, rest = value.partition(":")
    if kind == "s":
        return ctypes.create_string_buffer(rest.encode())
    if kind == "buf":
        return ctypes.create_string_buffer(int(rest))
    if kind == "fd":
        return ctypes.c_long(os.open(rest, os.O_RDONLY))
    raise ValueError(value)


def _int80(nr, args):
    """Enter the kernel through the 32-bit gate: mov eax, nr; (ebx=args[0]) int 0x80."""
    ebx = args[0] if args else 0
    code = (
        b"\x53"                                   # push rbx
        + b"\xb8" + nr.to_bytes(4, "little")      # mov eax, nr
        + b"\xbb" + ebx.to_bytes(4, "little")     # mov ebx, arg0
        + b"\xcd\x80"                             # int 0x80
        + b"\x5b"                                 # pop rbx
        + b"\xc3"                                 # ret
    )
    page = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    page.write(code)
    addr = ctypes.addressof(ctypes.c_char.from_buffer(page))
    result = ctypes.CFUNCTYPE(ctypes.c_int)(addr)()
    return (result, 0) if result >= 0 else (-1, -result)


def run_probe(probe):
    if probe.get("abi") == "int80":
        return _int80(probe["nr"], probe.get("args") or [])
    args = [_arg(a) for a in probe.get("args") or []]
    ctypes.set_errno(0)
    result = libc.syscall(ctypes.c_long(probe["nr"]), *args)
    err = ctypes.get_errno()
    if result >= 0 and probe.get("close_result") and result < (1 << 20):
        try:
            os.close(result)
        except OSError:
            pass
    return result, err


def outcome(result, err):
    if result >= 0:
        return "ok"
    return "errno:" + errno.errorcode.get(err, str(err))


def in_child(probe):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            result, err = run_probe(probe)
            os.write(w, json.dumps([result, err]).encode())
        finally:
            os._exit(0)
    os.close(w)
    data = b""
    while True:
        chunk = os.read(r, 4096)
        if not chunk:
            break
        data += chunk
    os.close(r)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return "killed:" + signal.Signals(os.WTERMSIG(status)).name
    result, err = json.loads(data.decode())
    return outcome(result, err)


def main():
    probes = json.loads(sys.argv[1])
    in_process = "--in-process" in sys.argv
    results = {}
    for probe in probes:
        if in_process:
            results[probe["id"]] = outcome(*run_probe(probe))
        else:
            results[probe["id"]] = in_child(probe)
        # flush as we go: a probe that kills this process leaves the others
        print(json.dumps({probe["id"]: results[probe["id"]]}), flush=True)


if __name__ == "__main__":
    main()
