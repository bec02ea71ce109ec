"""The syscall filter probed from inside the real sandbox.

Each always-denied call is made with harmless arguments by
tests/payloads/syscall_probe.py inside a run; the test checks what the call
returned (the documented errno, or the probe process killed) and that the
result names the denial with its action and count.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
from pathlib import Path

import pytest

from stockade import SandboxConfig, SandboxManager, Termination
from stockade.linux import landlock, seccomp

pytestmark = pytest.mark.skipif(
    platform.machine() != "x86_64", reason="probe numbers and ABIs are x86_64's"
)

PAYLOAD = Path(__file__).parent / "payloads" / "syscall_probe.py"
X32 = 0x40000000
O_CREAT_WRONLY = 0o101
NO_FILE = "s:/nonexistent-stockade"

EPERM = "errno:EPERM"
NOFAMILY = "errno:EAFNOSUPPORT"
KILLED = "killed:SIGKILL"


def nr(name: str) -> int:
    number = seccomp.SyscallFilter("moderate").number(name)
    assert number is not None, name
    return number


# (probe id, syscall name, args, outcome, violation name or None, action)
ALWAYS_DENIED = [
    ("mount", "mount", ["s:none", NO_FILE, "s:tmpfs", 0, 0], EPERM),
    ("mount-bind", "mount", [NO_FILE, NO_FILE, 0, 0x1000, 0], EPERM),  # MS_BIND
    ("mount-silent-move", "mount", [NO_FILE, NO_FILE, 0, 0x8000 | 0x2000, 0], EPERM),
    ("umount2", "umount2", [NO_FILE, 0], EPERM),
    # bubblewrap makes these two each per launch too; the supervisor lets
    # its own continue and names the program's
    ("umount2-detach", "umount2", [NO_FILE, 2], EPERM),
    ("pivot_root", "pivot_root", [NO_FILE, NO_FILE], EPERM),
    ("chroot", "chroot", [NO_FILE], EPERM),
    ("fsopen", "fsopen", ["s:tmpfs", 0], EPERM),
    ("open_tree", "open_tree", [-100, NO_FILE, 0], EPERM),
    ("move_mount", "move_mount", [-1, "s:", -1, "s:", 0], EPERM),
    ("unshare", "unshare", [0x20000], EPERM),  # CLONE_NEWNS
    ("unshare-newuser", "unshare", [0x10000000], EPERM),  # what `unshare -U` makes
    ("unshare-newnet", "unshare", [0x40000000], EPERM),
    ("setns", "setns", [-1, 0], EPERM),
    ("clone-newnet", "clone", [0x40000000 | 17, 0, 0, 0, 0], EPERM),
    ("ptrace", "ptrace", [2, 1, 0, 0], EPERM),
    ("process_vm_readv", "process_vm_readv", [1, 0, 0, 0, 0, 0], EPERM),
    ("process_vm_writev", "process_vm_writev", [1, 0, 0, 0, 0, 0], EPERM),
    ("bpf", "bpf", [9999, 0, 0], EPERM),
    ("perf_event_open", "perf_event_open", [0, 0, -1, -1, 0], EPERM),
    ("keyctl", "keyctl", [0, -3, 0], EPERM),
    ("add_key", "add_key", [0, 0, 0, 0, 0], EPERM),
    ("request_key", "request_key", [0, 0, 0, 0], EPERM),
    ("userfaultfd", "userfaultfd", [0o2000000], EPERM),
    ("io_uring_setup", "io_uring_setup", [1, "buf:120"], EPERM),
    ("io_uring_enter", "io_uring_enter", [-1, 0, 0, 0, 0, 0], EPERM),
    ("io_uring_register", "io_uring_register", [-1, 0, 0, 0], EPERM),
    ("name_to_handle_at", "name_to_handle_at",
     [-100, "s:/", "buf:136", "buf:4", 0], EPERM),
    ("open_by_handle_at", "open_by_handle_at", [-1, "buf:136", 0], KILLED),
    ("acct", "acct", [0], EPERM),
    ("syslog", "syslog", [10, 0, 0], EPERM),
    ("quotactl", "quotactl", [0, 0, 0, 0], EPERM),
    ("sethostname", "sethostname", ["s:x", 1], EPERM),
    ("settimeofday", "settimeofday", [0, 0], EPERM),
    ("clock_settime", "clock_settime", [0, 0], EPERM),
    ("adjtimex", "adjtimex", ["buf:208"], EPERM),
    ("clock_adjtime", "clock_adjtime", [0, "buf:208"], EPERM),
    ("personality", "personality", [0x0400000], EPERM),
    ("setuid", "setuid", [-1], EPERM),
    ("setgid", "setgid", [-1], EPERM),
    ("setreuid", "setreuid", [-1, -1], EPERM),
    ("setregid", "setregid", [-1, -1], EPERM),
    ("setresuid", "setresuid", [-1, -1, -1], EPERM),
    ("setresgid", "setresgid", [-1, -1, -1], EPERM),
    ("setfsuid", "setfsuid", [-1], EPERM),
    ("setfsgid", "setfsgid", [-1], EPERM),
    ("setgroups", "setgroups", [0, 0], EPERM),
    ("reboot", "reboot", [0, 0, 0, 0], KILLED),
    ("kexec_load", "kexec_load", [0, 0, 0, 0], KILLED),
    ("kexec_file_load", "kexec_file_load", [-1, -1, 0, "s:", 0], KILLED),
    ("init_module", "init_module", [0, 0, "s:"], KILLED),
    ("finit_module", "finit_module", [-1, "s:", 0], KILLED),
    ("delete_module", "delete_module", ["s:stockade-none", 0o4000], KILLED),
    ("swapon", "swapon", [NO_FILE, 0], KILLED),
    ("swapoff", "swapoff", [NO_FILE], KILLED),
    ("iopl", "iopl", [0], KILLED),
    ("ioperm", "ioperm", [0, 0, 0], KILLED),
    ("tiocsti", "ioctl", [0, 0x5412, "s:x"], EPERM),
    # CVE-2019-7303: the kernel ignores the high 32 bits of the request
    ("tiocsti-high-bits", "ioctl", [0, 0xFFFFFFFF00005412, "s:x"], EPERM),
    ("tioclinux", "ioctl", [0, 0x541C, "buf:8"], EPERM),
    # terminal requests whose effect outlives the run (syscall_groups.IOCTL_DENIED)
    ("tiocsetd", "ioctl", [0, 0x5423, "buf:8"], EPERM),
    ("tiocsetd-high-bits", "ioctl", [0, 0xFFFFFFFF00005423, "buf:8"], EPERM),
    ("tiocsctty", "ioctl", [0, 0x540E, 0], EPERM),
    ("tiocvhangup", "ioctl", [0, 0x5437, 0], EPERM),
    ("tioccons", "ioctl", [0, 0x541D, 0], EPERM),
    ("tiocexcl", "ioctl", [0, 0x540C, 0], EPERM),
    ("socket-inet", "socket", [2, 1, 0], NOFAMILY),
    ("socket-inet6", "socket", [10, 2, 0], NOFAMILY),
    ("socket-packet", "socket", [17, 3, 0], NOFAMILY),
    ("socket-vsock", "socket", [40, 1, 0], NOFAMILY),
    ("chmod-suid", "chmod", ["s:probe-file", 0o4755], EPERM),
    ("fchmod-sgid", "fchmod", ["fd:probe-file", 0o2755], EPERM),
    ("fchmodat-suid", "fchmodat", [-100, "s:probe-file", 0o4755, 0], EPERM),
    ("fchmodat2-suid", "fchmodat2", [-100, "s:probe-file", 0o4755, 0], EPERM),
    ("open-creat-suid", "open", ["s:new-suid-1", O_CREAT_WRONLY, 0o4755], EPERM),
    ("openat-creat-suid", "openat",
     [-100, "s:new-suid-2", O_CREAT_WRONLY, 0o4755], EPERM),
    ("creat-suid", "creat", ["s:new-suid-3", 0o4755], EPERM),
    ("mkdir-sgid", "mkdir", ["s:new-dir-1", 0o2755], EPERM),
    ("mkdirat-sgid", "mkdirat", [-100, "s:new-dir-2", 0o2755], EPERM),
    ("mknod-suid", "mknod", ["s:new-node-1", 0o100000 | 0o4755, 0], EPERM),
    ("mknodat-suid", "mknodat", [-100, "s:new-node-2", 0o100000 | 0o4755, 0], EPERM),
]

# bubblewrap's set-up mount patterns (syscall_groups.BWRAP_SETUP): in the
# first tier refused to the program by the filter bubblewrap installs before
# exec, so not named; the Landlock tier has no such patterns and names them.
REFUSED_UNNAMED = [
    ("mount-silent-bind", "mount", [NO_FILE, NO_FILE, 0, 0x8000 | 0x1000 | 0x4000, 0], EPERM),
]

# Calls that must keep working (or fail only as the kernel makes them fail).
STILL_ALLOWED = [
    ("tcgets", "ioctl", [0, 0x5401, "buf:64"], "errno:ENOTTY"),
    ("tcgets-high-bits", "ioctl", [0, 0xFFFFFFFF00005401, "buf:64"], "errno:ENOTTY"),
    ("personality-query", "personality", [0xFFFFFFFF], "ok"),
    ("chmod-plain", "chmod", ["s:probe-file", 0o755], "ok"),
    ("openat-create-plain", "openat",
     [-100, "s:new-plain", O_CREAT_WRONLY, 0o644], "ok"),
    ("open-no-creat-odd-mode", "open", ["s:probe-file", 0, 0o4755], "ok"),
    ("mkdir-plain", "mkdir", ["s:new-dir-plain", 0o755], "ok"),
]

# Answered ENOSYS in the filter itself; not violations.
ENOSYS_PROBES = [
    ("clone3", "clone3", [0, 0], "errno:ENOSYS"),
    ("openat2", "openat2", [-100, "s:probe-file", "buf:24", 24], "errno:ENOSYS"),
]

SOCKETS_ALLOWED = [
    ("socket-unix", "socket", [1, 1, 0], "ok"),
    ("socketpair-unix", "socketpair", [1, 1, 0, "buf:8"], "ok"),
    ("socket-netlink-route", "socket", [16, 3, 0], "ok"),
]


def _probe(pid: str, name: str, args: list) -> dict:
    probe = {"id": pid, "nr": nr(name), "args": args}
    returns_fd = (
        "userfaultfd", "socket-unix", "socket-netlink-route", "openat-create-plain"
    )
    if pid in returns_fd:
        probe["close_result"] = True
    return probe


FOREIGN = [
    ({"id": "x32-getpid", "nr": X32 | 39, "args": []}, "x32:getpid"),
    ({"id": "x32-keyctl", "nr": X32 | 250, "args": [0, -3, 0]}, "x32:keyctl"),
    ({"id": "int80-getpid", "nr": 20, "args": [], "abi": "int80"}, "i386:getpid"),
]


def _workspace_files(workspace: Path) -> None:
    shutil.copy(PAYLOAD, workspace / "syscall_probe.py")
    (workspace / "probe-file").write_text("x")


def _run_probes(
    manager: SandboxManager, workspace: Path, probes: list[dict], in_process=False
):
    _workspace_files(workspace)
    argv = ["python3", "syscall_probe.py", json.dumps(probes)]
    if in_process:
        argv.append("--in-process")
    result = manager.execute(argv, cwd=workspace)
    outcomes: dict[str, str] = {}
    for line in result.stdout_text.splitlines():
        outcomes.update(json.loads(line))
    return result, outcomes


def _seccomp_violations(result) -> dict[str, tuple[str, int]]:
    out = {}
    for v in result.violations:
        if v.mechanism == "seccomp":
            assert v.what not in out, f"{v.what} listed twice: {result.violations}"
            out[v.what] = (v.action, v.count)
    return out


def _expected_violations(table) -> dict[str, tuple[str, int]]:
    expected: dict[str, tuple[str, int]] = {}
    for _pid, name, _args, outcome in table:
        if outcome not in (EPERM, NOFAMILY, KILLED):
            continue  # allowed, or answered by the kernel or in the filter
        action = "kill" if outcome == KILLED else outcome
        old = expected.get(name, (action, 0))
        assert old[0] == action, name
        expected[name] = (action, old[1] + 1)
    return expected


_TIER_OK: dict[str, str | None] = {}


def _skip_unless_tier(tier: str) -> None:
    if tier not in _TIER_OK:
        decision = SandboxManager(SandboxConfig(tier=tier, execution_log=False)).decide()
        _TIER_OK[tier] = None if decision.ok else str(decision.error())
    if _TIER_OK[tier]:
        pytest.skip(f"this host cannot run tier {tier}: {_TIER_OK[tier]}")


def _sockets(mode: str, tier: str) -> list[tuple[str, str, list, str]]:
    """SOCKETS_ALLOWED with what this mode and tier answer."""
    if mode == "strict":
        return [(pid, name, args, NOFAMILY) for pid, name, args, _ in SOCKETS_ALLOWED]
    if tier == "landlock":
        # the host's network namespace: no netlink, and unix sockets only
        # where Landlock confines their paths (socketpair stays)
        unix = "ok" if landlock.abi_version()[0] >= seccomp.LANDLOCK_ABI_UNIX_PATHS else NOFAMILY
        answers = {"socket-unix": unix, "socketpair-unix": "ok", "socket-netlink-route": NOFAMILY}
        return [(pid, name, args, answers[pid]) for pid, name, args, _ in SOCKETS_ALLOWED]
    return SOCKETS_ALLOWED


@pytest.mark.parametrize("tier", ["namespaces", "landlock"])
@pytest.mark.parametrize("mode", ["strict", "moderate", "permissive"])
def test_always_denied_calls_get_documented_answer_and_are_named(mode, tier, workspace):
    """Every always-denied call, in every mode and tier. strict has no fork,
    so its probes run in the probing process itself and the calls that kill
    are left to test_every_killing_call_kills_a_strict_program."""
    _skip_unless_tier(tier)
    config = SandboxConfig(
        mode=mode, tier=tier, execution_log=False, env={"PATH": "/usr/bin:/bin"}
    )
    manager = SandboxManager(config)
    strict = mode == "strict"
    denied = [row for row in ALWAYS_DENIED if not (strict and row[3] == KILLED)]
    table = denied + STILL_ALLOWED + ENOSYS_PROBES + _sockets(mode, tier)
    # the Landlock tier has no bubblewrap and no set-up patterns: named there
    named = table + (REFUSED_UNNAMED if tier == "landlock" else [])
    foreign = [] if strict else FOREIGN
    probes = [_probe(pid, name, args) for pid, name, args, _ in table + REFUSED_UNNAMED]
    probes += [probe for probe, _name in foreign]

    result, outcomes = _run_probes(manager, workspace, probes, in_process=strict)

    why = (result.summary(), result.stderr_text)
    assert result.termination is Termination.EXITED, why
    assert result.exit_code == 0, result.stderr_text
    wrong = {
        pid: (outcomes.get(pid), want)
        for pid, _name, _args, want in table + REFUSED_UNNAMED
        if outcomes.get(pid) != want
    }
    assert not wrong, wrong
    for probe, _name in foreign:
        assert outcomes[probe["id"]] == KILLED, (probe, outcomes[probe["id"]])

    expected = _expected_violations(named)
    for _probe_spec, name in foreign:
        action, count = expected.get(name, ("kill", 0))
        expected[name] = ("kill", count + 1)
    assert _seccomp_violations(result) == expected
    # the audit's case: every unshare and umount2 counted, pivot_root named
    assert expected["unshare"] == ("errno:EPERM", 3)
    assert expected["umount2"] == ("errno:EPERM", 2)
    assert expected["pivot_root"] == ("errno:EPERM", 1)
    assert "denied: " in result.summary()
    assert "unshare x3" in result.summary() and "pivot_root x1" in result.summary()


_KILLING = [
    ({"id": pid, "nr": nr(name), "args": args}, name)
    for pid, name, args, outcome in ALWAYS_DENIED
    if outcome == KILLED
] + FOREIGN


@pytest.mark.parametrize(
    "probe, name", _KILLING, ids=[probe["id"] for probe, _name in _KILLING]
)
def test_every_killing_call_kills_a_strict_program(probe, name, workspace):
    """strict cannot fork a child to survive the kill: one run per call."""
    manager = SandboxManager(SandboxConfig(mode="strict", execution_log=False))
    result, outcomes = _run_probes(manager, workspace, [probe], in_process=True)
    assert result.termination is Termination.SYSCALL_DENIED, result.summary()
    assert probe["id"] not in outcomes  # the call never returned
    assert _seccomp_violations(result) == {name: ("kill", 1)}


def test_denial_names_carry_the_arguments_that_made_them(manager, workspace):
    probes = [
        _probe("a", "socket", [2, 1, 0]),
        _probe("b", "socket", [2, 1, 0]),
        _probe("c", "socket", [10, 1, 0]),
        _probe("d", "ioctl", [0, 0x5412, "s:x"]),
        _probe("g", "ioctl", [0, 0x5423, "buf:8"]),
        _probe("e", "chmod", ["s:probe-file", 0o4755]),
        _probe("f", "clone", [0x10000000 | 17, 0, 0, 0, 0]),
    ]
    result, _ = _run_probes(manager, workspace, probes)
    details = {v.what: v.detail for v in result.violations}
    assert details["socket"] == "AF_INET x2, AF_INET6"
    assert details["ioctl"] == "TIOCSTI, TIOCSETD"
    assert details["chmod"] == "mode 4755"
    assert details["clone"] == "CLONE_NEWUSER"


def test_strict_refuses_sockets_and_processes_but_keeps_threads(workspace):
    manager = SandboxManager(SandboxConfig(mode="strict", execution_log=False))
    table = [
        ("socket-unix", "socket", [1, 1, 0], NOFAMILY),
        ("socketpair-unix", "socketpair", [1, 1, 0, "buf:8"], NOFAMILY),
        ("socket-netlink", "socket", [16, 3, 0], NOFAMILY),
        ("fork", "fork", [], EPERM),
        ("vfork", "vfork", [], EPERM),
        ("clone-process", "clone", [17, 0, 0, 0, 0], EPERM),
        ("tiocsti", "ioctl", [0, 0x5412, "s:x"], EPERM),
        ("keyctl", "keyctl", [0, -3, 0], EPERM),
        ("mount", "mount", ["s:none", NO_FILE, "s:tmpfs", 0, 0], EPERM),
        ("clone3", "clone3", [0, 0], "errno:ENOSYS"),
    ]
    probes = [_probe(pid, name, args) for pid, name, args, _ in table]
    result, outcomes = _run_probes(manager, workspace, probes, in_process=True)
    assert result.success, (result.summary(), result.stderr_text)
    assert outcomes == {pid: want for pid, _n, _a, want in table}
    assert _seccomp_violations(result) == _expected_violations(table)

    threads = manager.execute(
        ["python3", "-c", "import threading as t; "
         "x = t.Thread(target=print, args=(7,)); x.start(); x.join()"],
        cwd=workspace,
    )
    assert threads.success and threads.stdout == b"7\n", threads.summary()


@pytest.mark.parametrize(
    "probe, name",
    [
        ({"id": "x32", "nr": X32 | 39, "args": []}, "x32:getpid"),
        ({"id": "int80", "nr": 20, "args": [], "abi": "int80"}, "i386:getpid"),
        ({"id": "iopl", "nr": 172, "args": [0]}, "iopl"),
        ({"id": "handle", "nr": 304, "args": [-1, "buf:136", 0]}, "open_by_handle_at"),
    ],
)
@pytest.mark.parametrize("mode", ["strict", "moderate"])
def test_kill_of_the_program_ends_the_run_as_syscall_denied(
    mode, probe, name, workspace
):
    manager = SandboxManager(SandboxConfig(mode=mode, execution_log=False))
    result, outcomes = _run_probes(manager, workspace, [probe], in_process=True)
    assert result.termination is Termination.SYSCALL_DENIED, result.summary()
    assert probe["id"] not in outcomes  # the call never returned
    assert _seccomp_violations(result) == {name: ("kill", 1)}
    assert f"{name} x1" in result.summary()


@pytest.mark.parametrize("mode", ["moderate", "permissive"])
def test_loopback_network_policy_allows_inet_sockets(mode, workspace):
    """'Network denied' with the sandbox's own loopback working is network
    "loopback": inet sockets must then pass the filter (corpus case 031)."""
    config = SandboxConfig(mode=mode, network="loopback", execution_log=False)
    manager = SandboxManager(config)
    code = (
        "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(); "
        "c = socket.create_connection(s.getsockname()); a, _ = s.accept(); "
        "c.sendall(b'hi'); print(a.recv(2).decode())"
    )
    result = manager.execute(["python3", "-c", code], cwd=workspace)
    assert result.success, (result.summary(), result.stderr_text)
    assert result.stdout == b"hi\n"
    assert not result.violations


def test_network_none_refuses_inet_even_on_loopback(manager, workspace):
    code = "import socket\ntry:\n socket.socket()\nexcept OSError as e: print(e.errno)"
    result = manager.execute(["python3", "-c", code], cwd=workspace)
    assert result.stdout == b"97\n", result.summary()  # EAFNOSUPPORT
    assert [(v.what, v.action, v.detail) for v in result.violations] == [
        ("socket", "errno:EAFNOSUPPORT", "AF_INET")
    ]


def test_strict_refuses_inet_sockets_whatever_the_network_policy(workspace):
    config = SandboxConfig(mode="strict", network="loopback", execution_log=False)
    code = "import socket\ntry:\n socket.socket()\nexcept OSError as e: print(e.errno)"
    result = SandboxManager(config).execute(["python3", "-c", code], cwd=workspace)
    assert result.stdout == b"97\n", result.summary()


def test_setuid_bit_cannot_be_planted_in_a_root_owned_workspace(manager, workspace):
    """The idmapped workspace case: the file stays without set-user-ID."""
    if os.geteuid() != 0:
        pytest.skip("needs a root caller: the workspace is idmapped only then")
    os.chmod(workspace, 0o755)  # owned by root, not by the sandbox uid
    result = manager.execute(
        ["sh", "-c", "echo x > f; chmod 4755 f; chmod g+s f; chmod 755 f; ls -ln f"],
        cwd=workspace,
    )
    st = os.stat(workspace / "f")
    assert st.st_uid == 0
    assert not st.st_mode & 0o6000
    assert {v.what for v in result.violations} == {"fchmodat"}


def test_a_program_hammering_a_denied_call_is_still_timed_out(workspace):
    """Every denial is a round trip through the launcher; a flood of them must
    neither stall the launcher's other duties (the timeout) nor lose counts."""
    manager = SandboxManager(SandboxConfig(timeout_sec=1.5, execution_log=False))
    code = (
        "import ctypes, sys\n"
        "libc = ctypes.CDLL(None)\n"
        "n = 0\n"
        "while True:\n"
        "    libc.syscall(250, 0, -3, 0)\n"  # keyctl
        "    n += 1\n"
        "    if n % 1000 == 0:\n"
        "        print(n, flush=True)\n"
    )
    result = manager.execute(["python3", "-c", code], cwd=workspace)
    assert result.termination is Termination.TIMEOUT, result.summary()
    [violation] = result.violations
    assert (violation.what, violation.action) == ("keyctl", "errno:EPERM")
    printed = int(result.stdout_text.split()[-1])
    assert printed <= violation.count <= printed + 1000
    assert violation.count > 1000


@pytest.mark.parametrize("mode", ["strict", "moderate"])
def test_a_call_the_tables_do_not_know_gets_enosys_named_by_number(mode, workspace):
    """Number 500 is no system call yet: newer than every table, it gets
    ENOSYS (programs fall back as on an older kernel) and is named by
    number; uselib, which the tables know as obsolete, is named by name."""
    flt = seccomp.SyscallFilter(mode)
    assert 500 not in {d.number for d in flt.decisions()}
    manager = SandboxManager(SandboxConfig(mode=mode, execution_log=False))
    probes = [
        {"id": "nr-500", "nr": 500, "args": []},
        {"id": "uselib", "nr": nr("uselib"), "args": [NO_FILE]},
    ]
    result, outcomes = _run_probes(manager, workspace, probes, in_process=True)
    assert result.success, (result.summary(), result.stderr_text)
    assert outcomes == {"nr-500": "errno:ENOSYS", "uselib": "errno:ENOSYS"}
    assert _seccomp_violations(result) == {
        "x86_64:500": ("errno:ENOSYS", 1),
        "uselib": ("errno:ENOSYS", 1),
    }
    assert "x86_64:500 x1" in result.summary()
