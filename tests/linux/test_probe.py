"""The host probe on this machine, and its failure paths with real binaries."""

from __future__ import annotations

import json
import os
import stat

import pytest

from stockade import SandboxConfig
from stockade.linux import tiers
from stockade.linux.bwrap import find_bwrap
from stockade.linux.landlock import abi_version
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
    assert probe.landlock.abi == abi_version()[0]
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


@pytest.mark.skipif(abi_version()[0] < 1, reason="no Landlock on this kernel")
def test_landlock_abi_is_reported():
    abi, error = abi_version()
    assert abi >= 1 and error is None
