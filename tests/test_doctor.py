"""`stockade doctor`, and runs refused or degraded by the tier decision.

Forced probe results (recorded JSON fixtures) stand in for hosts this
machine is not; the runs that the decision lets through then run for real
on this kernel, with the ruleset the forced probe allows.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from stockade import SandboxConfig, SandboxManager, SandboxUnavailableError
from stockade.cli import main
from stockade.linux import probe as _probe
from stockade.linux.landlock import abi_version
from stockade.linux.probe import HostProbe

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "probes"
STOCKADE = str(Path(sys.executable).with_name("stockade"))
ABI = abi_version()[0]
_HOST = _probe.probe_host(None, 65534 if os.geteuid() == 0 else None)
needs_namespaces = pytest.mark.skipif(
    not _HOST.namespaces_work,
    reason=f"bubblewrap cannot create namespaces here: {_HOST.userns.error}",
)


def load(name: str) -> HostProbe:
    return HostProbe.from_dict(json.loads((FIXTURES / f"{name}.json").read_text()))


@pytest.fixture
def forced_probe(monkeypatch):
    """Make this process believe it runs on the host of a recorded probe."""

    def force(name: str) -> HostProbe:
        probe = load(name)
        monkeypatch.setattr(_probe, "probe_host", lambda *a, **k: probe)
        return probe

    return force


# -- doctor -------------------------------------------------------------------------


@needs_namespaces
def test_doctor_json_on_this_host():
    proc = subprocess.run(
        [STOCKADE, "doctor", "--json"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["ok"] is True and data["decision"]["tier"] == "namespaces"
    assert data["host"]["landlock"]["abi"] == ABI
    assert data["second_tier"]["tier"] == "landlock"
    names = [row["name"] for row in data["decision"]["rows"]]
    for name in (
        "namespaces",
        "mount_view",
        "syscall_filter",
        "landlock",
        "memory",
        "pids",
        "cpu",
        "network",
    ):
        assert name in names


@needs_namespaces
def test_doctor_text_on_this_host():
    proc = subprocess.run(
        [STOCKADE, "doctor"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert "-> tier namespaces" in proc.stdout
    assert "second tier" in proc.stdout
    assert "verdict: runs under this policy use tier namespaces." in proc.stdout


@pytest.mark.skipif(ABI < 6, reason=f"needs Landlock ABI 6+, have {ABI}")
def test_doctor_exit_status_follows_the_policy_options(forced_probe, capsys):
    # Landlock ABI 4: signals are not scoped, only consent lets the tier run
    forced_probe("ubuntu-24.04-apparmor")
    assert main(["doctor", "--tier", "landlock"]) == 1
    out = capsys.readouterr().out
    assert "REFUSED" in out and "process_isolation" in out
    # the recorded host has no cgroup for the tree limits either (issue #4)
    accept = "process_isolation,memory,pids,cpu"
    assert main(
        ["doctor", "--tier", "landlock", "--allow-degraded", accept]
    ) == 0, capsys.readouterr().out
    bad = subprocess.run(
        [STOCKADE, "doctor", "--allow-degraded", "nonsense"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "nonsense" in bad.stderr


def test_doctor_on_ubuntu_with_apparmor_says_why_and_how(forced_probe, capsys):
    forced_probe("ubuntu-24.04-apparmor")
    assert main(["doctor"]) == 1
    out = capsys.readouterr().out
    assert "namespaces         unavailable (BLOCKS)" in out
    assert "apparmor_restrict_unprivileged_userns=1" in out
    assert "apparmor_parser -r /etc/apparmor.d/bwrap" in out
    assert "would also need allow_degraded to name: process_isolation" in out
    assert "REFUSED" in out


def test_doctor_json_on_a_container(forced_probe, capsys):
    forced_probe("container-docker-no-userns")
    assert main(["doctor", "--json", "--allow-degraded", "namespaces"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["decision"]["tier"] == "landlock"
    blocking = [row["name"] for row in data["decision"]["rows"] if row["blocking"]]
    # Landlock ABI 3 denies no network, the syscall filter does; and no
    # cgroup for the tree limits (issue #4)
    assert blocking == ["process_isolation", "memory", "pids", "cpu"]
    assert "seccomp=unconfined" in data["decision"]["rows"][0]["fix"]


# -- runs refused before they start ---------------------------------------------


def test_run_needing_namespaces_is_refused_with_reason_and_fix(forced_probe, workspace):
    forced_probe("ubuntu-24.04-apparmor")
    mgr = SandboxManager(SandboxConfig(execution_log=False))
    with pytest.raises(SandboxUnavailableError) as info:
        mgr.execute(["touch", "must-not-exist"], cwd=workspace)
    err = info.value
    assert err.protection == "namespaces"
    assert "AppArmor" in err.reason and "setting up uid map" in err.reason
    assert "apparmor_parser" in err.fix and "allow_degraded" in err.fix
    assert not (workspace / "must-not-exist").exists()


def test_cli_run_refused_exits_125_with_the_fix(forced_probe, workspace, capsys):
    forced_probe("container-docker-no-userns")
    code = main(["run", "--no-log", "--workspace", str(workspace), "--", "true"])
    assert code == 125
    err = capsys.readouterr().err
    assert "cannot enforce namespaces" in err and "seccomp=unconfined" in err


def test_second_tier_needs_landlock(forced_probe, workspace, monkeypatch):
    probe = forced_probe("container-docker-no-userns")
    import dataclasses

    none = dataclasses.replace(
        probe, landlock=dataclasses.replace(probe.landlock, abi=0, error="no Landlock")
    )
    monkeypatch.setattr(_probe, "probe_host", lambda *a, **k: none)
    every = ["namespaces", "mount_view", "network", "process_isolation"]
    with pytest.raises(SandboxUnavailableError) as info:
        SandboxManager(
            SandboxConfig(execution_log=False, allow_degraded=every)
        ).execute(["true"], cwd=workspace)
    assert info.value.protection == "landlock" and "lsm=" in info.value.fix


# -- accepted degradation runs for real, with exactly what the decision promised -------


@pytest.mark.skipif(ABI < 4, reason=f"needs Landlock ABI 4+, this kernel has {ABI}")
def test_accepted_second_tier_on_ubuntu_runs_with_an_abi4_ruleset(
    forced_probe, workspace
):
    forced_probe("ubuntu-24.04-apparmor")
    config = SandboxConfig(
        execution_log=False,
        # the recorded host has no cgroup for the tree limits (issue #4)
        allow_degraded=["namespaces", "process_isolation", "memory", "pids", "cpu"],
    )
    name = f"stockade-test-{uuid.uuid4().hex[:12]}"
    with socket.socket(socket.AF_UNIX) as server, socket.socket() as tcp:
        server.bind("\0" + name)
        server.listen(1)
        tcp.bind(("127.0.0.1", 0))
        tcp.listen(1)
        code = (
            "import errno, socket\n"
            "for family in (socket.AF_UNIX, socket.AF_INET):\n"
            "    try:\n"
            "        socket.socket(family)\n"
            "        print('created')\n"
            "    except OSError as err:\n"
            "        print(errno.errorcode[err.errno])\n"
        )
        result = SandboxManager(config).execute(
            ["/usr/bin/python3", "-c", code], cwd=workspace
        )
    assert result.success, result.stderr_text
    assert result.tier == "landlock"
    # ABI 4 scopes no abstract unix sockets: below ABI 9 the syscall filter
    # refuses socket(AF_UNIX) itself, and inet sockets always, as the
    # network row said.
    assert result.stdout == b"EAFNOSUPPORT\nEAFNOSUPPORT\n"
    rows = {p.name: p for p in result.protections}
    assert rows["landlock"].detail.startswith("ABI 4:")
    assert rows["network"].status == "enforced"
    assert "socket(AF_UNIX) refused by the syscall filter" in rows["network"].detail
    assert rows["syscall_filter"].status == "enforced"


@pytest.mark.skipif(ABI < 6, reason=f"needs Landlock ABI 6+, have {ABI}")
def test_cli_run_forced_second_tier_says_so(workspace):
    proc = subprocess.run(
        [
            STOCKADE,
            "run",
            "--no-log",
            "--json",
            "--tier",
            "landlock",
            "--workspace",
            str(workspace),
            "--",
            "sh",
            "-c",
            "echo hi",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["tier"] == "landlock" and data["stdout"] == "hi\n"
    summary = subprocess.run(
        [
            STOCKADE,
            "run",
            "--no-log",
            "--tier",
            "landlock",
            "--workspace",
            str(workspace),
            "--",
            "true",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "tier landlock" in summary.stderr
    assert "network (degraded)" not in summary.stderr  # the filter closes it


def test_cli_run_refuses_forced_second_tier_without_consent(
    forced_probe, workspace, capsys
):
    forced_probe("ubuntu-24.04-apparmor")  # Landlock ABI 4: no signal scoping
    argv = ["run", "--no-log", "--tier", "landlock", "--workspace", str(workspace)]
    assert main([*argv, "--", "true"]) == 125
    err = capsys.readouterr().err
    assert "cannot enforce process_isolation" in err
    assert "allow_degraded = ['process_isolation'" in err


@pytest.mark.skipif(ABI < 6, reason=f"needs Landlock ABI 6+, have {ABI}")
def test_policy_file_can_accept_the_second_tier(tmp_path, workspace):
    policy = tmp_path / "policy.toml"
    policy.write_text(
        'tier = "landlock"\nexecution_log = false\n'
    )
    proc = subprocess.run(
        [
            STOCKADE,
            "run",
            "--config",
            str(policy),
            "--json",
            "--workspace",
            str(workspace),
            "--",
            "true",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["tier"] == "landlock"
    os.remove(policy)


# -- a network policy the second tier cannot give (issue 7 meets tier 2) ----------

# What the program reports: the proxy variables it got, and whether it can
# make an inet socket and bind its "own" loopback.
NET_PROBE = (
    "import errno, json, os, socket\n"
    "out = {'proxy': sorted(k for k in os.environ if k.lower().endswith('_proxy'))}\n"
    "try:\n"
    "    socket.socket().bind(('127.0.0.1', 0))\n"
    "    out['inet'] = 'ok'\n"
    "except OSError as err:\n"
    "    out['inet'] = errno.errorcode[err.errno]\n"
    "print(json.dumps(out))\n"
)
SECOND_TIER_NETWORKS = [
    pytest.param(["--network", "loopback"], id="loopback"),
    pytest.param(["--allow", "pypi.test"], id="allowlist"),
]


@pytest.mark.skipif(ABI < 6, reason=f"needs Landlock ABI 6+, have {ABI}")
@pytest.mark.parametrize("network", SECOND_TIER_NETWORKS)
def test_cli_run_refuses_a_network_the_second_tier_cannot_give(network, workspace):
    proc = subprocess.run(
        [STOCKADE, "run", "--no-log", "--tier", "landlock", *network,
         "--workspace", str(workspace), "--", "touch", "must-not-exist"],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 125, proc.stderr
    assert "cannot enforce network" in proc.stderr
    assert "the second tier has none" in proc.stderr
    assert "network = 'none'" in proc.stderr
    assert "allow_degraded = ['network']" in proc.stderr
    assert not (workspace / "must-not-exist").exists()


@pytest.mark.skipif(ABI < 6, reason=f"needs Landlock ABI 6+, have {ABI}")
@pytest.mark.parametrize("network", SECOND_TIER_NETWORKS)
def test_accepted_network_gap_runs_with_no_network_as_the_row_says(network, workspace):
    proc = subprocess.run(
        [STOCKADE, "run", "--no-log", "--json", "--tier", "landlock", *network,
         "--allow-degraded", "network", "--workspace", str(workspace), "--",
         "/usr/bin/python3", "-c", NET_PROBE],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["tier"] == "landlock"
    assert json.loads(data["stdout"]) == {"proxy": [], "inet": "EAFNOSUPPORT"}
    row = next(p for p in data["protections"] if p["name"] == "network")
    assert row["status"] == "degraded"
    assert "no network at all" in row["detail"]
    assert "accepted by the policy" in row["detail"]


@pytest.mark.skipif(ABI < 6, reason=f"needs Landlock ABI 6+, have {ABI}")
def test_doctor_shows_the_second_tier_network_row_blocking(capsys):
    assert main(["doctor", "--tier", "landlock", "--network", "loopback"]) == 1
    out = capsys.readouterr().out
    assert "network            degraded (BLOCKS)" in out
    assert "cannot enforce network" in out
    assert main(
        ["doctor", "--tier", "landlock", "--network", "loopback",
         "--allow-degraded", "network"]
    ) == 0
    assert "network            degraded (accepted)" in capsys.readouterr().out
