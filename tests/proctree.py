"""Host processes seen from /proc, for tests that check what a run left."""

from __future__ import annotations

import os


def alive_with(token: str) -> list[int]:
    """Host pids of live processes whose command line holds the token."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as fh:
                cmdline = fh.read()
        except OSError:
            continue
        if token.encode() in cmdline and not gone(int(name)):
            found.append(int(name))
    return found


def gone(pid: int) -> bool:
    """The process has exited (reaped, or a zombie)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True
