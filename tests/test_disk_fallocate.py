"""fallocate and the workspace's disk budget.

The budget is measured by polling; fallocate reserves gigabytes between two
polls, so with a budget the filter answers it EOPNOTSUPP (as a file system
without it would) and libc's posix_fallocate falls back to writing, which
the budget sees.
"""

from __future__ import annotations

import os

from stockade import SandboxConfig, SandboxManager, Termination

PROBE = (
    "import ctypes, errno, os\n"
    "libc = ctypes.CDLL(None, use_errno=True)\n"
    "fd = os.open('probe.bin', os.O_CREAT | os.O_WRONLY)\n"
    "r = libc.fallocate(fd, 0, ctypes.c_long(0), ctypes.c_long(1 << 20))\n"
    "print(errno.errorcode.get(ctypes.get_errno(), 'ok') if r else 'ok')\n"
)


def test_fallocate_answers_eopnotsupp_under_a_disk_budget(workspace):
    result = SandboxManager(SandboxConfig(execution_log=False, disk_mb=50)).execute(
        ["python3", "-c", PROBE], cwd=workspace
    )
    # errno 95: EOPNOTSUPP, which Python's errorcode names ENOTSUP
    assert result.stdout_text.strip() in ("EOPNOTSUPP", "ENOTSUP"), result.stderr_text


def test_fallocate_works_without_a_disk_budget(workspace):
    result = SandboxManager(SandboxConfig(execution_log=False, disk_mb=None)).execute(
        ["python3", "-c", PROBE], cwd=workspace
    )
    assert result.stdout_text.strip() == "ok", result.stderr_text


def test_many_preallocated_files_stop_near_the_budget(workspace):
    code = (
        "import os\n"
        "for i in range(150):\n"
        "    fd = os.open(f'g{i}', os.O_CREAT | os.O_WRONLY)\n"
        "    try:\n"
        "        os.posix_fallocate(fd, 0, 20 << 20)\n"
        "    finally:\n"
        "        os.close(fd)\n"
    )
    result = SandboxManager(SandboxConfig(execution_log=False, disk_mb=100, timeout_sec=120)).execute(
        ["python3", "-c", code], cwd=workspace
    )
    used = sum(os.stat(workspace / name).st_blocks * 512 for name in os.listdir(workspace))
    assert result.termination is Termination.DISK_LIMIT, result.summary()
    # measured, not a quota: some overshoot, never the 3 GiB asked for
    assert used < 600 * 1024 * 1024, used
