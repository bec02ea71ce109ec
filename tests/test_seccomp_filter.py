"""The syscall filter's tables, builder and policy handling.

Pure checks of the data and the compiled filter come first; then the
policy-facing behaviour through the real sandbox (custom sets, disabled
mode, the Landlock-tier spec without bubblewrap, an unprivileged caller).
"""

from __future__ import annotations

import json
import logging
import os
import platform
import random
import shutil
import tempfile
from pathlib import Path

import pyseccomp
import pytest
from _unpriv import UNPRIV_UID, run_unprivileged

from stockade import PolicyError, SandboxConfig, SandboxManager, Termination
from stockade import cli
from stockade.linux import seccomp
from stockade.linux import syscall_groups as data

PAYLOAD = Path(__file__).parent / "payloads" / "syscall_probe.py"
x86_64_only = pytest.mark.skipif(
    platform.machine() != "x86_64", reason="x86_64 numbers"
)

# The always-denied list of issue #3, by call name.
ISSUE_ALWAYS_DENIED = """
mount umount2 pivot_root reboot kexec_load kexec_file_load init_module
finit_module delete_module ptrace process_vm_readv process_vm_writev bpf
perf_event_open keyctl add_key request_key userfaultfd io_uring_setup
io_uring_enter io_uring_register unshare setns open_by_handle_at acct swapon
swapoff syslog settimeofday clock_settime adjtimex clock_adjtime iopl ioperm
quotactl setuid setgid setreuid setregid setresuid setresgid setfsuid setfsgid
setgroups
""".split()


# -- the tables ------------------------------------------------------------------


@x86_64_only
def test_every_call_libseccomp_knows_is_classified():
    known = set()
    for number in range(1024):
        try:
            known.add(pyseccomp.resolve_syscall(pyseccomp.Arch.X86_64, number).decode())
        except ValueError:
            pass
    classified = {c for g in data.GROUPS for c in g.calls} | set(data.ENOSYS_IN_FILTER)
    assert known - classified == set()


def test_no_call_is_in_two_groups_and_every_name_exists():
    names = [c for g in data.GROUPS for c in g.calls]
    assert len(names) == len(set(names))
    flt = seccomp.SyscallFilter("moderate")
    assert [n for n in names if not flt._exists_anywhere(n)] == []


@pytest.mark.parametrize("mode", data.MODES)
def test_always_denied_calls_are_denied_in_every_mode(mode):
    flt = seccomp.SyscallFilter(mode)
    allowed = [
        n for n in ISSUE_ALWAYS_DENIED if flt.decision(n).action == seccomp.ALLOW
    ]
    assert allowed == []


@pytest.mark.parametrize("mode", data.MODES)
def test_launcher_calls_pass_and_exec_is_always_notified(mode):
    flt = seccomp.SyscallFilter(mode)
    for name in data.LAUNCHER_NEEDS:
        decision = flt.decision(name)
        assert decision.action == seccomp.ALLOW and not decision.conditions
    compiled = flt.compile()
    execs = {f"{flt.arch}:{flt.decision(n).number}" for n in data.NOTIFIED_ALWAYS}
    assert set(compiled.start_calls) == execs
    for name in data.ENOSYS_IN_FILTER:
        assert flt.decision(name).in_filter


def test_strict_is_a_subset_of_moderate_which_is_a_subset_of_permissive():
    strict, moderate, permissive = (
        set(seccomp.SyscallFilter(m).allowed) for m in data.MODES
    )
    assert strict < moderate < permissive


def test_filter_is_compiled_once_per_policy():
    first = seccomp.filter_for("moderate")
    again = seccomp.filter_for("moderate")
    assert first is again and first.compile() is again.compile()
    assert seccomp.filter_for("moderate", "loopback") is not first


def test_exclusion_patterns_match_everything_but_the_excluded():
    excluded = list(data.IOCTL_DENIED.values())
    patterns = seccomp.exclusion_patterns(excluded)

    def allowed(value: int) -> bool:
        low = value & 0xFFFFFFFF  # the kernel looks at the low 32 bits only
        return any(low & mask == want for mask, want in patterns)

    rng = random.Random(3)
    samples = list(range(0x5400, 0x5500)) + [rng.getrandbits(64) for _ in range(5000)]
    for value in samples:
        assert allowed(value) == ((value & 0xFFFFFFFF) not in excluded), hex(value)
    for value in excluded:
        assert not allowed(value | 0xFFFFFFFF00000000)


def test_unknown_network_policy_is_refused():
    with pytest.raises(PolicyError) as err:
        seccomp.SyscallFilter("moderate", network="sometimes")
    assert "sometimes" in str(err.value)


@pytest.mark.parametrize(
    "network, inet", [("none", False), ("loopback", True), ("allow", True)]
)
def test_socket_families_follow_the_network_policy(network, inet):
    rule = seccomp.SyscallFilter("moderate", network=network).decision("socket")
    families = {alt[0][2] for alt in rule.conditions}
    assert (2 in families and 10 in families) is inet
    assert rule.denied_action == "EAFNOSUPPORT"


# -- custom sets -------------------------------------------------------------------


def test_unknown_names_in_a_custom_set_are_an_error_naming_them():
    with pytest.raises(PolicyError) as err:
        seccomp.SyscallFilter("moderate", allow=("read", "frobnicate", "xyzzy"))
    assert "frobnicate" in str(err.value) and "xyzzy" in str(err.value)
    assert err.value.key == "syscalls_allow"


def test_unknown_names_of_both_fields_are_one_error_naming_each_with_its_field():
    with pytest.raises(PolicyError) as err:
        seccomp.SyscallFilter(
            "moderate", allow=("read", "xyzzy"), deny=("frobnicate", "mkdir", "nosuchcall")
        )
    message = str(err.value)
    assert "syscalls_allow: xyzzy;" in message, message
    assert "syscalls_deny: frobnicate, nosuchcall;" in message, message
    assert err.value.key == "syscalls_allow" and err.value.value == ["read", "xyzzy"]

    with pytest.raises(PolicyError) as err:
        seccomp.SyscallFilter("moderate", deny=("frobnicate",))
    assert err.value.key == "syscalls_deny" and "syscalls_deny: frobnicate" in str(err.value)


@x86_64_only
def test_a_name_refused_is_not_also_reported_ignored(caplog):
    """oldstat does not exist on x86_64 and is always denied where it does:
    the set is refused, and no warning calls it (or anything) ignored."""
    caplog.set_level(logging.WARNING, logger="stockade")
    config = SandboxConfig(syscalls_allow=("fcntl64", "oldstat", "set_tls"))
    with pytest.raises(PolicyError, match="oldstat is always denied"):
        seccomp.filter_for_config(config)
    assert "ignored" not in caplog.text, caplog.text

    # without the refused name the others are ignored, with the warning
    flt = seccomp.SyscallFilter("moderate", allow=("fcntl64", "set_tls"))
    [warning] = flt.warnings
    assert "ignored: fcntl64, set_tls" in warning and "oldstat" not in warning


def test_unknown_names_fail_the_run_before_it_starts(workspace):
    config = SandboxConfig(syscalls_deny=("nosuchcall",), execution_log=False)
    manager = SandboxManager(config)
    with pytest.raises(PolicyError, match="nosuchcall"):
        manager.execute(["/bin/true"], cwd=workspace)


@x86_64_only
def test_names_absent_on_this_architecture_warn_and_never_weaken(caplog, workspace):
    caplog.set_level(logging.WARNING, logger="stockade")
    # fcntl64 and _llseek exist on 32-bit architectures only
    config = SandboxConfig(syscalls_allow=("fcntl64", "_llseek"), execution_log=False)
    result = SandboxManager(config).execute(["/bin/true"], cwd=workspace)
    assert result.success
    assert any("fcntl64" in n and "_llseek" in n for n in result.notes), result.notes
    assert "fcntl64" in caplog.text
    plain = seccomp.SyscallFilter("moderate")
    custom = seccomp.SyscallFilter("moderate", allow=("fcntl64", "_llseek"))
    assert custom.allowed == plain.allowed


@pytest.mark.parametrize(
    "changes, word",
    [
        ({"syscalls_allow": ("ptrace",)}, "always denied"),
        ({"syscalls_allow": ("ioctl",)}, "arguments"),
        ({"syscalls_allow": ("clone3",)}, "ENOSYS"),
        ({"syscalls_deny": ("sendmsg",)}, "launcher"),
        ({"syscalls_deny": ("execve",)}, "start"),
    ],
)
def test_custom_sets_cannot_open_the_always_denied_or_break_the_launch(changes, word):
    with pytest.raises(PolicyError, match=word):
        seccomp.filter_for_config(SandboxConfig(**changes))


def test_custom_deny_is_enforced_and_named(workspace):
    config = SandboxConfig(syscalls_deny=("mkdir", "mkdirat"), execution_log=False)
    result = SandboxManager(config).execute(["mkdir", "newdir"], cwd=workspace)
    assert not result.success
    assert not (workspace / "newdir").exists()
    assert [(v.what, v.action) for v in result.violations] == [("mkdir", "errno:EPERM")]


def test_custom_allow_opens_a_call_strict_denies(workspace):
    code = "import socket; socket.socketpair(); print('ok')"
    strict = SandboxConfig(mode="strict", execution_log=False)
    refused = SandboxManager(strict).execute(["python3", "-c", code], cwd=workspace)
    assert not refused.success
    # socketpair is argument-filtered; the processes group is not
    config = strict.with_changes(syscalls_allow=("fork", "vfork"))
    argv = ["sh", "-c", "/bin/true; echo ok"]
    result = SandboxManager(config).execute(argv, cwd=workspace)
    assert result.success and result.stdout == b"ok\n", result.summary()


# -- protections and modes ---------------------------------------------------------


def test_protection_is_enforced_and_disabled_has_no_filter(workspace):
    moderate = SandboxManager(SandboxConfig(execution_log=False))
    result = moderate.execute(["/bin/true"], cwd=workspace)
    status = {p.name: p for p in result.protections}["syscall_filter"]
    assert status.status == "enforced" and "moderate" in status.detail

    disabled = SandboxManager(SandboxConfig(mode="disabled", execution_log=False))
    prepared = disabled._prepare(["/bin/true"], workspace, None, None)
    assert "seccomp" not in prepared.spec
    assert {p.name: p.status for p in prepared.protections}["syscall_filter"] == "off"


def test_second_tier_filter_names_denials_and_refuses_host_sockets(workspace):
    """The Landlock tier execs the program directly (trust_monitor False) and
    shares the host's network namespace: no inet or netlink sockets, and no
    socket(AF_UNIX) below Landlock ABI 9; socketpair keeps working."""
    config = SandboxConfig(tier="landlock", execution_log=False)
    manager = SandboxManager(config)
    decision = manager.decide()
    if not decision.ok:
        pytest.skip(f"this host cannot run the second tier: {decision.error()}")
    flt = seccomp.filter_for("moderate")
    probes = [
        {"id": "keyctl", "nr": flt.number("keyctl"), "args": [0, -3, 0]},
        {"id": "inet", "nr": flt.number("socket"), "args": [2, 1, 0]},
        {"id": "netlink", "nr": flt.number("socket"), "args": [16, 3, 0]},
        {"id": "unix", "nr": flt.number("socket"), "args": [1, 1, 0]},
        {"id": "pair", "nr": flt.number("socketpair"), "args": [1, 1, 0, "buf:8"]},
        {"id": "x32", "nr": 0x40000000 | 39, "args": []},
    ]
    shutil.copy(PAYLOAD, workspace / "syscall_probe.py")
    python = "/usr/bin/python3"  # the caller's PATH may hold pyenv shims
    argv = [python, "syscall_probe.py", json.dumps(probes)]
    result = manager.execute(argv, cwd=workspace)
    assert result.success, (result.summary(), result.stderr_text)
    assert result.tier == "landlock"
    outcomes = {}
    for line in result.stdout_text.splitlines():
        outcomes.update(json.loads(line))
    unix = "ok" if decision.landlock_abi >= 9 else "errno:EAFNOSUPPORT"
    assert outcomes == {
        "keyctl": "errno:EPERM",
        "inet": "errno:EAFNOSUPPORT",
        "netlink": "errno:EAFNOSUPPORT",
        "unix": unix,
        "pair": "ok",
        "x32": "killed:SIGKILL",
    }
    denied = {(v.what, v.action): v.count for v in result.violations}
    assert denied[("keyctl", "errno:EPERM")] == 1
    assert denied[("x32:getpid", "kill")] == 1
    row = {p.name: p for p in result.protections}["syscall_filter"]
    assert row.status == "enforced" and "host network" in row.detail

    iopl = "import ctypes; ctypes.CDLL(None).syscall(172, 0)"
    killed = manager.execute([python, "-c", iopl], cwd=workspace)
    assert killed.termination is Termination.SYSCALL_DENIED, killed.summary()
    assert [(v.what, v.action) for v in killed.violations] == [("iopl", "kill")]


def test_unprivileged_caller_gets_named_denials_and_kills():
    workspace = tempfile.mkdtemp(prefix="stockade-test-nobody-", dir="/var/tmp")
    try:
        if os.geteuid() == 0:
            os.chown(workspace, UNPRIV_UID, UNPRIV_UID)
        shutil.copy(PAYLOAD, os.path.join(workspace, "syscall_probe.py"))
        os.chmod(os.path.join(workspace, "syscall_probe.py"), 0o644)
        probes = [
            {"id": "keyctl", "nr": seccomp.filter_for("moderate").number("keyctl"),
             "args": [0, -3, 0]},
            {"id": "x32", "nr": 0x40000000 | 39, "args": []},
        ]
        code = (
            "import json, sys; from stockade import SandboxManager, SandboxConfig; "
            # an unprivileged caller may have no cgroup for the tree limits
            "c = SandboxConfig(execution_log=False, "
            "allow_degraded=['memory', 'pids', 'cpu']); "
            "r = SandboxManager(c).execute("
            "['python3', 'syscall_probe.py', sys.argv[1]], cwd=sys.argv[2]); "
            "print(json.dumps(r.to_dict()))"
        )
        args = ["-c", code, json.dumps(probes), workspace]
        proc = run_unprivileged(args, cwd=workspace)
        assert proc.returncode == 0, proc.stderr.decode()
        result = json.loads(proc.stdout)
        outcomes = {}
        for line in result["stdout"].splitlines():
            outcomes.update(json.loads(line))
        assert outcomes == {"keyctl": "errno:EPERM", "x32": "killed:SIGKILL"}
        violations = {(v["what"], v["action"]) for v in result["violations"]}
        assert violations == {("keyctl", "errno:EPERM"), ("x32:getpid", "kill")}
    finally:
        shutil.rmtree(workspace, ignore_errors=True)


# -- CLI ---------------------------------------------------------------------------


def test_cli_filters_show(capsys):
    assert cli.main(["filters", "show"]) == 0
    overview = capsys.readouterr().out
    assert "kernel-control" in overview and "kill" in overview

    assert cli.main(["filters", "show", "--mode", "strict", "--json"]) == 0
    described = json.loads(capsys.readouterr().out)
    assert described["mode"] == "strict"
    assert "socket" in described["denied"] and "read" in described["allowed"]

    assert cli.main(["filters", "show", "--mode", "moderate"]) == 0
    assert "ioctl*" in capsys.readouterr().out

    assert cli.main(["filters", "show", "--network", "bogus"]) == cli.EXIT_SANDBOX_ERROR
