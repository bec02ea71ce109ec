"""bubblewrap's set-up calls: let through by pattern, refused to the program.

The launcher's filter allows the argument patterns of bubblewrap's many
set-up mounts (``syscall_groups.BWRAP_SETUP``), so they cost no supervisor
round trip; a second filter, installed by bubblewrap right before it execs
the program (``--add-seccomp-fd``), refuses the same patterns to the
program. These tests check both halves: no set-up notification but the few
expected (two each of pivot_root, umount2 and unshare, and in strict the
fork of the program), and every pattern still refused inside the sandbox
(not named), every other call and pattern refused and named.

Errnos are chosen so that a call reaching the kernel would answer
differently: the paths do not exist (the kernel says ENOENT for mount and
umount2) and ``--disable-userns`` makes the kernel answer ENOSPC to
``unshare(CLONE_NEWUSER)``. Only ``pivot_root`` gets EPERM from the kernel
too; its count in ``violations`` shows that the supervisor refused it.
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import json
import os
import platform
import shutil
import signal
import tempfile
from pathlib import Path

import pytest

from _unpriv import give_to_unprivileged, run_code_as_nobody
from stockade import SandboxConfig, SandboxManager
from stockade.linux import _sys, seccomp
from stockade.linux import bwrap as _bwrap
from stockade.linux import syscall_groups as data

pytestmark = pytest.mark.skipif(
    platform.machine() != "x86_64", reason="the payload's call numbers are x86_64's"
)

MODES = ("strict", "moderate", "permissive")
MS_BIND, MS_REC, MS_SILENT = 0x1000, 0x4000, 0x8000
MS_NOSUID, MS_NODEV, MS_NOEXEC = 0x2, 0x4, 0x8
MS_MOVE, MS_SHARED, MS_MGC_VAL = 0x2000, 1 << 20, 0xC0ED0000
MNT_DETACH = 2
CLONE_NEWUSER = 0x10000000
AF_UNIX, SOCK_STREAM, SOCK_DGRAM, SOCK_CLOEXEC = 1, 1, 2, 0o2000000

# Runs inside the sandbox: each call, and what it returned. Stdlib only.
PAYLOAD = r"""
import ctypes, errno, json, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
NR = {"mount": 165, "umount2": 166, "pivot_root": 155, "unshare": 272, "socket": 41}
def call(name, *args):
    a = [ctypes.c_char_p(x.encode()) if isinstance(x, str) else ctypes.c_ulong(x) for x in args]
    ctypes.set_errno(0)
    r = libc.syscall(ctypes.c_long(NR[name]), *a)
    return "ok" if r >= 0 else errno.errorcode[ctypes.get_errno()]
out = {key: call(*spec) for key, spec in json.loads(sys.argv[1]).items()}
with open("/proc/self/status") as fh:
    out["filters"] = [l.split()[1] for l in fh if l.startswith("Seccomp_filters:")][0]
print(json.dumps(out))
"""

NOPATH = "/nonexistent-stockade"
# (call, args), the answer inside the sandbox, named in the result or not
PROBES: dict[str, tuple[list, str, bool]] = {
    "mount-bind-silent": (
        ["mount", NOPATH, NOPATH, 0, MS_BIND | MS_REC | MS_SILENT, 0], "EPERM", False),
    "mount-remount-silent": (
        ["mount", "none", NOPATH, 0, MS_SILENT | 0x20 | 0x1000 | 0x1 | 0x2, 0], "EPERM", False),
    "mount-tmpfs-flags": (["mount", "tmpfs", NOPATH, "tmpfs", MS_NOSUID | MS_NODEV, 0], "EPERM", False),
    "mount-proc-flags": (
        ["mount", "proc", NOPATH, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, 0], "EPERM", False),
    "mount-devpts-flags": (["mount", "devpts", NOPATH, "devpts", MS_NOSUID | MS_NOEXEC, 0], "EPERM", False),
    "mount-mgc-bind": (
        ["mount", NOPATH, NOPATH, 0, MS_MGC_VAL | MS_SILENT | MS_BIND | MS_REC, 0], "EPERM", False),
    # outside the patterns: named
    "mount-flags-0": (["mount", "tmpfs", NOPATH, "tmpfs", 0, 0], "EPERM", True),
    "mount-bind": (["mount", NOPATH, NOPATH, 0, MS_BIND, 0], "EPERM", True),
    "mount-silent-move": (["mount", NOPATH, NOPATH, 0, MS_SILENT | MS_MOVE, 0], "EPERM", True),
    "mount-silent-shared": (["mount", "none", NOPATH, 0, MS_SILENT | MS_SHARED, 0], "EPERM", True),
    "mount-silent-bind-high-bit": (
        ["mount", NOPATH, NOPATH, 0, (1 << 32) | MS_SILENT | MS_BIND, 0], "EPERM", True),
    "mount-mgc-bind-only": (["mount", NOPATH, NOPATH, 0, MS_MGC_VAL | MS_SILENT | MS_BIND, 0], "EPERM", True),
    "umount2-detach": (["umount2", NOPATH, MNT_DETACH], "EPERM", True),
    "umount2-0": (["umount2", NOPATH, 0], "EPERM", True),
    "pivot_root": (["pivot_root", NOPATH, NOPATH], "EPERM", True),
    "unshare-newuser": (["unshare", CLONE_NEWUSER], "EPERM", True),
}
# strict refuses sockets; bubblewrap's two loopback set-up sockets are patterns
STRICT_PROBES = {
    "socket-unix-dgram-cloexec": (["socket", AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0], "EAFNOSUPPORT", False),
    "socket-unix-stream": (["socket", AF_UNIX, SOCK_STREAM, 0], "EAFNOSUPPORT", True),
}


def _probes(mode: str) -> dict[str, tuple[list, str, bool]]:
    return {**PROBES, **(STRICT_PROBES if mode == "strict" else {})}


def _argv(mode: str) -> list[str]:
    calls = {key: spec for key, (spec, _want, _named) in _probes(mode).items()}
    return ["python3", "-c", PAYLOAD, json.dumps(calls)]


def _expected_named(mode: str) -> dict[tuple[str, str], int]:
    """What the result names: one per probe marked named, by call."""
    named: dict[tuple[str, str], int] = {}
    for spec, want, is_named in _probes(mode).values():
        if is_named:
            key = (spec[0], f"errno:{want}")
            named[key] = named.get(key, 0) + 1
    return named


def execute_with_event(manager: SandboxManager, argv: list[str], cwd) -> tuple:
    """Run, and return the result with the launcher's exit event (its
    ``setup_calls``: notifications before the program's execve, by number)."""
    events: list[dict] = []
    real_finish = manager._finish

    def finish(prepared, io):
        events.append(io.event or {})
        return real_finish(prepared, io)

    manager._finish = finish  # type: ignore[method-assign]
    try:
        result = manager.execute(argv, cwd=cwd)
    finally:
        del manager._finish
    return result, events[-1]


def _named(violations) -> dict[tuple[str, str], int]:
    return {(v.what, v.action): v.count for v in violations if v.mechanism == "seccomp"}


def _expected_setup(mode: str) -> dict[str, int]:
    """Set-up notifications left: bubblewrap's two pivot_root, two
    umount2(MNT_DETACH) and two unshare(CLONE_NEWUSER) (few enough to stay
    notified, so that the program's are named), and in strict the fork with
    which bubblewrap's pid 1 starts the program (libc's fork(), a pattern
    every strict program's fork shares)."""
    flt = seccomp.SyscallFilter(mode)
    calls = {"pivot_root": 2, "umount2": 2, "unshare": 2}
    if mode == "strict":
        calls["clone"] = 1
    return {str(flt.number(name)): count for name, count in calls.items()}


needs_add_seccomp_fd = pytest.mark.skipif(
    not _bwrap.find_bwrap().has_add_seccomp_fd,
    reason="this bubblewrap has no --add-seccomp-fd: every set-up call stays notified",
)


# -- the filters themselves ------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_patterns_apply_where_the_mode_denies_them(mode):
    flt = seccomp.SyscallFilter(mode, bwrap_setup=True)
    rules = {(p.call, p.arguments): answer for p, _d, answer in flt.setup_rules()}
    calls = {call for call, _ in rules}
    # pivot_root, umount2 and unshare are notified (and named), not patterns
    assert calls == ({"mount", "socket"} if mode == "strict" else {"mount"})
    assert all(rules[key] == "EPERM" for key in rules if key[0] != "socket")
    if mode == "strict":
        assert [a for (c, _), a in rules.items() if c == "socket"] == ["EAFNOSUPPORT"] * 2
    # the plain filter has neither the patterns nor an inner filter
    plain = seccomp.SyscallFilter(mode)
    assert plain.setup_rules() == [] and plain.compile().inner_bpf is None
    compiled = flt.compile()
    assert compiled.inner_bpf and compiled.setup_patterns == len(rules)
    assert "inner_bpf" in flt.launcher_spec() and "inner_bpf" not in plain.launcher_spec()


def test_a_pattern_partly_allowed_is_left_out():
    inside = (((0, 0xFFFFFFFF, AF_UNIX),),)
    assert seccomp._disjoint(((0, 0xFFFFFFFF, 16), (1, 0xFFFFFFFF, 3)), inside)
    assert not seccomp._disjoint(((0, 0xFFFFFFFF, AF_UNIX), (1, 0xFFFFFFFF, 2)), inside)
    # a pattern that does not look at the family overlaps AF_UNIX
    assert not seccomp._disjoint(((1, 0xFFFFFFFF, 2),), inside)


def _in_child(program: bytes, calls: list[tuple[str, list]]) -> tuple[list[str] | None, int]:
    """Install ``program`` in a forked child (after no_new_privs), make the
    calls; returns what each returned and the child's wait status."""
    flt = seccomp.SyscallFilter("moderate")
    prepared = [(flt.number(name), args) for name, args in calls]
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    installer = _sys.SeccompProgram(program, 0)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            os.close(r)
            _sys.prctl(_sys.PR_SET_NO_NEW_PRIVS, 1)
            installer.install()
            out = []
            for nr, args in prepared:
                cargs = [
                    ctypes.c_char_p(a.encode()) if isinstance(a, str) else ctypes.c_ulong(a)
                    for a in args
                ]
                ctypes.set_errno(0)
                res = libc.syscall(ctypes.c_long(nr), *cargs)
                out.append("ok" if res >= 0 else errno.errorcode[ctypes.get_errno()])
                os.write(w, (json.dumps(out) + "\n").encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r) as fh:
        lines = fh.read().splitlines()
    _, status = os.waitpid(pid, 0)
    return (json.loads(lines[-1]) if lines else None), status


@pytest.mark.skipif(os.geteuid() != 0, reason="root shows what the kernel would answer")
@pytest.mark.parametrize("mode", MODES)
def test_inner_filter_refuses_exactly_the_patterns(mode):
    """As root the kernel would run these calls (and fail on the missing
    paths with ENOENT): EPERM proves the inner filter refused them."""
    inner = seccomp.SyscallFilter(mode, bwrap_setup=True).compile().inner_bpf
    assert inner
    calls = [
        ("mount", [NOPATH, NOPATH, 0, MS_BIND | MS_SILENT, 0]),
        ("mount", ["none", NOPATH, 0, MS_SILENT | 0x20 | MS_BIND | 0x1 | MS_NOSUID | 0x400 | (1 << 21), 0]),
        ("mount", [NOPATH, NOPATH, 0, MS_MGC_VAL | MS_SILENT | MS_BIND | MS_REC, 0]),
        ("mount", ["tmpfs", NOPATH, "tmpfs", MS_NOSUID | MS_NODEV, 0]),
        ("mount", ["proc", NOPATH, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, 0]),
        ("mount", ["devpts", NOPATH, "devpts", MS_NOSUID | MS_NOEXEC, 0]),
        # other patterns of the same calls, and the calls that are no
        # pattern any more, pass this filter (the outer one refuses and
        # names them)
        ("mount", ["tmpfs", NOPATH, "tmpfs", 0, 0]),
        ("mount", ["tmpfs", NOPATH, "tmpfs", MS_NOSUID, 0]),
        ("mount", ["tmpfs", NOPATH, "tmpfs", (1 << 32) | MS_NOSUID | MS_NODEV, 0]),
        ("mount", [NOPATH, NOPATH, 0, MS_BIND, 0]),
        ("mount", [NOPATH, NOPATH, 0, MS_SILENT | MS_MOVE, 0]),
        ("mount", [NOPATH, NOPATH, 0, MS_SILENT | MS_SHARED, 0]),
        ("mount", [NOPATH, NOPATH, 0, (1 << 32) | MS_SILENT | MS_BIND, 0]),
        ("mount", [NOPATH, NOPATH, 0, MS_MGC_VAL | MS_SILENT | MS_BIND, 0]),
        ("umount2", [NOPATH, MNT_DETACH]),
        ("umount2", [NOPATH, 0]),
        ("pivot_root", [NOPATH, NOPATH]),
        ("unshare", [0]),
        # last: it succeeds, and the new user namespace would turn the
        # kernel's ENOENT of the calls above into EPERM
        ("unshare", [CLONE_NEWUSER]),
        ("socket", [AF_UNIX, SOCK_DGRAM, 0]),
        ("socket", [AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0]),
    ]
    out, status = _in_child(inner, calls)
    assert os.WIFEXITED(status), status
    socket_pattern = "EAFNOSUPPORT" if mode == "strict" else "ok"
    assert out == ["EPERM"] * 6 + ["ENOENT"] * 11 + ["ok"] * 3 + [socket_pattern], out
    # without it the kernel answers them itself: the test can fail
    without, _ = _in_child(ALLOW_ALL, calls[:6])
    assert without == ["ENOENT"] * 6, without


# One instruction, BPF_RET|BPF_K SECCOMP_RET_ALLOW: a filter that lets all through
ALLOW_ALL = (0x06).to_bytes(2, "little") + bytes(2) + (0x7FFF0000).to_bytes(4, "little")


@pytest.mark.skipif(os.geteuid() != 0, reason="root shows what the kernel would answer")
def test_inner_filter_kills_where_the_policy_kills():
    flt = seccomp.SyscallFilter("moderate", bwrap_setup=True)
    mount = flt.decision("mount")
    flt._decisions["mount"] = dataclasses.replace(mount, action="kill", denied_action="kill")
    assert ("mount", "kill") in {(p.call, a) for p, _d, a in flt.setup_rules()}
    out, status = _in_child(
        flt.compile().inner_bpf,
        [("umount2", [NOPATH, 0]), ("mount", [NOPATH, NOPATH, 0, MS_BIND | MS_SILENT, 0])],
    )
    assert out == ["ENOENT"]  # the second call never returned
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGSYS, status


# -- through the real sandbox --------------------------------------------------------


@needs_add_seccomp_fd
@pytest.mark.parametrize("mode", MODES)
def test_only_the_expected_set_up_notifications_and_patterns_still_refused(mode, workspace):
    manager = SandboxManager(SandboxConfig(mode=mode, execution_log=False))
    prepared = manager._prepare(["/bin/true"], str(workspace), None, None)
    assert "--add-seccomp-fd" in prepared.spec["args_data"]

    result, event = execute_with_event(manager, ["/bin/true"], workspace)
    assert result.success, result.summary()
    assert event["setup_calls"] == _expected_setup(mode)

    result, event = execute_with_event(manager, _argv(mode), workspace)
    assert result.success, (result.summary(), result.stderr_text)
    out = json.loads(result.stdout_text)
    assert out.pop("filters") == "2"  # the launcher's and bubblewrap's
    assert out == {key: want for key, (_spec, want, _named) in _probes(mode).items()}
    assert _named(result.violations) == _expected_named(mode)
    assert event["setup_calls"] == _expected_setup(mode)
    detail = {p.name: p.detail for p in result.protections}["syscall_filter"]
    assert "second filter" in detail


@needs_add_seccomp_fd
def test_patterns_with_hidden_paths_presets_and_an_allowlist(workspace, monkeypatch, request):
    """More mounts (hidden paths, read-only and writable rules, presets) and
    the network bridge's --block-fd slot before the inner filter's."""
    (workspace / "secret").mkdir()
    (workspace / "secret.txt").write_text("x")
    home = Path(tempfile.mkdtemp(prefix="stockade-test-home-", dir="/var/tmp"))
    request.addfinalizer(lambda: shutil.rmtree(home, ignore_errors=True))
    (home / "data").mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("VIRTUAL_ENV", raising=False)
    config = SandboxConfig(
        mode="moderate",
        execution_log=False,
        hidden=("secret", "secret.txt"),
        read_only=(str(home / "data"),),
        presets=("python", "node"),
        network={"allow": ["example.com"]},
        disk_mb=None,
    )
    manager = SandboxManager(config)
    result, event = execute_with_event(manager, _argv("moderate"), workspace)
    assert result.success, (result.summary(), result.stderr_text)
    assert json.loads(result.stdout_text)["mount-bind-silent"] == "EPERM"
    assert _named(result.violations) == _expected_named("moderate")
    assert event["setup_calls"] == _expected_setup("moderate")


@pytest.mark.parametrize("mode", MODES)
def test_unprivileged_caller(mode, workspace):
    if not _bwrap.find_bwrap().has_add_seccomp_fd:
        pytest.skip("this bubblewrap has no --add-seccomp-fd")
    give_to_unprivileged(workspace)
    code = (
        "import json\n"
        "from stockade import SandboxConfig, SandboxManager\n"
        # no usable cgroup for uid 65534 on a cgroup v1 host (see test_limits_unprivileged)
        f"m = SandboxManager(SandboxConfig(mode={mode!r}, execution_log=False, "
        "allow_degraded=('memory', 'pids', 'cpu')))\n"
        "events = []\n"
        "real_finish = m._finish\n"
        "m._finish = lambda p, io: (events.append(io.event or {}), real_finish(p, io))[1]\n"
        "true = m.execute(['/bin/true'])\n"
        f"r = m.execute({_argv(mode)!r})\n"
        "print(json.dumps({'true': true.success, 'true_setup': events[0]['setup_calls'], "
        "'setup': events[1]['setup_calls'], 'stdout': r.stdout_text, 'stderr': r.stderr_text, "
        "'violations': [[v.what, v.action, v.count] for v in r.violations if v.mechanism == 'seccomp']}))\n"
    )
    data_out = run_code_as_nobody(code, cwd=workspace)
    assert data_out["true"], data_out
    assert data_out["true_setup"] == _expected_setup(mode)
    assert data_out["setup"] == _expected_setup(mode)
    out = json.loads(data_out["stdout"])
    assert out.pop("filters") == "2"
    assert out == {key: want for key, (_spec, want, _named) in _probes(mode).items()}
    named = {(what, action): count for what, action, count in data_out["violations"]}
    assert named == _expected_named(mode)


def test_without_add_seccomp_fd_every_set_up_call_stays_notified(workspace, monkeypatch):
    """Fail closed: a bubblewrap without --add-seccomp-fd gets the filter that
    notifies every set-up call, and the program's calls are all named."""
    real = _bwrap.find_bwrap()
    monkeypatch.setattr(
        _bwrap, "find_bwrap",
        lambda explicit=None: dataclasses.replace(real, has_add_seccomp_fd=False),
    )
    manager = SandboxManager(SandboxConfig(mode="moderate", execution_log=False))
    prepared = manager._prepare(["/bin/true"], str(workspace), None, None)
    assert "--add-seccomp-fd" not in prepared.spec["args_data"]
    assert "inner_bpf" not in prepared.spec["seccomp"]

    result, event = execute_with_event(manager, _argv("moderate"), workspace)
    assert result.success, (result.summary(), result.stderr_text)
    flt = seccomp.SyscallFilter("moderate")
    by_number = {str(flt.number(n)): n for n in ("mount", "pivot_root", "umount2", "unshare")}
    assert {by_number[nr] for nr in event["setup_calls"]} == set(by_number.values())
    out = json.loads(result.stdout_text)
    assert out.pop("filters") == "1"
    assert set(out.values()) == {"EPERM"}
    # every pattern reached the supervisor and is named
    counts: dict[tuple[str, str], int] = {}
    for spec, _want, _is_named in PROBES.values():
        counts[(spec[0], "errno:EPERM")] = counts.get((spec[0], "errno:EPERM"), 0) + 1
    assert counts[("mount", "errno:EPERM")] == 12
    assert _named(result.violations) == counts


def test_only_the_calls_bubblewrap_makes_by_the_dozen_are_patterns():
    """mount (28 to 48 per launch) and strict's two sockets; pivot_root,
    umount2 and unshare (two each) are notified so that the program's are
    named."""
    assert {p.call for p in data.BWRAP_SETUP} == {"mount", "socket"}
