"""The host probe on this machine, and its failure paths with real binaries."""

from __future__ import annotations

import ctypes
import errno
import json
import os
import re
import stat

import pytest

from stockade import SandboxConfig
from stockade.linux import tiers
from stockade.linux.bwrap import find_bwrap
from landlockpy.flags import LATEST_ABI
from stockade.linux.probe import HostProbe, probe_host

AS_UID = 65534 if os.geteuid() == 0 else None


def test_probe_is_cached_and_serialisable():
    first = probe_host(None, AS_UID)
    assert probe_host(None, AS_UID) is first
    assert HostProbe.from_dict(json.loads(first.to_json())) == first


def test_probe_matches_the_kernel_and_bubblewrap():
    probe = probe_host(None, AS_UID)
    assert probe.kernel == os.uname().release and probe.arch == os.uname().machine
    assert probe.euid == os.geteuid()
    info = find_bwrap()
    assert probe.bwrap.path == info.path and probe.bwrap.version == info.version
    assert probe.userns.tested_as_uid == AS_UID


def test_seccomp_facts():
    probe = probe_host(None, AS_UID)
    with open("/proc/sys/kernel/seccomp/actions_avail") as fh:
        actions = fh.read().split()
    assert probe.seccomp.actions == actions
    assert probe.seccomp.user_notif == ("user_notif" in actions)


def test_cgroup_facts_match_mountinfo():
    probe = probe_host(None, AS_UID)
    with open("/proc/self/mountinfo") as fh:
        text = fh.read()
    assert (probe.cgroup.v2_mount is not None) == (" - cgroup2 " in text)
    assert bool(probe.cgroup.v1) == (" - cgroup " in text)
    for item in probe.cgroup.v1.values():
        assert item.own.startswith(item.mount)
        assert item.writable == os.access(item.own, os.W_OK)


def _fake_bwrap(tmp_path, message: str, code: int) -> str:
    """A stand-in that answers --version/--help and fails every launch."""
    path = tmp_path / "bwrap"
    path.write_text(
        "#!/bin/sh\n"
        'case "$1" in\n'
        '  --version) echo "bubblewrap 9.9.9"; exit 0;;\n'
        '  --help) echo "--bind-fd"; exit 0;;\n'
        "esac\n"
        f"echo '{message}' >&2\nexit {code}\n"
    )
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    os.chmod(tmp_path, 0o755)
    return str(path)


def test_a_bwrap_that_cannot_create_namespaces_is_diagnosed(tmp_path):
    fake = _fake_bwrap(tmp_path, "bwrap: setting up uid map: Permission denied", 1)
    probe = probe_host(fake, None)
    assert probe.bwrap.version == "9.9.9"
    assert probe.userns.works is False
    assert probe.userns.error == "bwrap: setting up uid map: Permission denied"
    decision = tiers.decide(probe, SandboxConfig(bwrap_path=fake, execution_log=False))
    assert not decision.ok
    assert "setting up uid map" in decision.error().reason


def test_a_missing_bwrap_asks_for_the_package():
    probe = probe_host("/nonexistent/bwrap", None)
    assert probe.bwrap.path is None and probe.userns.works is None
    err = tiers.decide(probe, SandboxConfig(execution_log=False)).error()
    assert err.protection == "namespaces" and "apt-get install bubblewrap" in err.fix


# -- Landlock's ABI, asked of the kernel without landlockpy ------------------------

# landlock_create_ruleset: the same number on every architecture (added after
# the syscall tables were unified, Linux 5.13)
_SYS_LANDLOCK_CREATE_RULESET = 444
_LANDLOCK_CREATE_RULESET_VERSION = 1

# The first mainline release of each ABI (Documentation/userspace-api/landlock.rst)
_ABI_SINCE = ((7, (6, 15)), (6, (6, 12)), (5, (6, 10)), (4, (6, 7)), (3, (6, 2)),
              (2, (5, 19)), (1, (5, 13)))


def _raw_abi() -> tuple[int, int]:
    """(ABI, errno): the kernel's answer to landlock_create_ruleset(NULL, 0,
    LANDLOCK_CREATE_RULESET_VERSION), through libc's syscall()."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    result = libc.syscall(
        _SYS_LANDLOCK_CREATE_RULESET,
        None,
        ctypes.c_size_t(0),
        ctypes.c_uint32(_LANDLOCK_CREATE_RULESET_VERSION),
    )
    return (0, ctypes.get_errno()) if result < 0 else (int(result), 0)


def _mainline_abi(release: str) -> int:
    match = re.match(r"(\d+)\.(\d+)", release)
    assert match, release
    version = (int(match.group(1)), int(match.group(2)))
    return next((abi for abi, since in _ABI_SINCE if version >= since), 0)


def test_probe_reports_the_abi_the_kernel_answers():
    probe = probe_host(None, AS_UID)
    raw, err = _raw_abi()
    # capped at what landlockpy knows, as the adapter says
    assert probe.landlock.abi == min(raw, LATEST_ABI)
    if raw == 0:
        assert err in (errno.ENOSYS, errno.EOPNOTSUPP), err
        assert probe.landlock.error, "an ABI of 0 must say why"
    else:
        assert probe.landlock.error is None


def test_kernel_offers_at_least_its_mainline_abi():
    """A kernel with Landlock enabled has at least the ABI of the mainline
    release it is based on (distributions may backport more, never less)."""
    raw, err = _raw_abi()
    if raw == 0:
        pytest.skip(f"Landlock not enabled here (errno {errno.errorcode.get(err, err)})")
    expected = _mainline_abi(os.uname().release)
    assert raw >= expected, (os.uname().release, raw)
    assert probe_host(None, AS_UID).landlock.abi >= min(expected, LATEST_ABI)
