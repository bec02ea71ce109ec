"""SyscallFilter: the graded seccomp filters, compiled once per policy.

How a filter works (see ``syscall_groups.py`` for what it contains):

* The BPF program, compiled by libseccomp (through pyseccomp), ALLOWs the
  calls the mode allows, some of them only with some arguments. Everything
  else returns SECCOMP_RET_USER_NOTIF: the launcher's supervisor
  (``supervise.py``) then answers with the errno this module chose for the
  call, or kills the calling process, and counts the denial by name. So
  every denial is named, EPERM and kill alike, and a denied call never
  executes.
* Calls of foreign ABIs (x32 numbers and 32-bit ``int 0x80`` calls on
  x86_64, 32-bit ARM calls on aarch64) fail the filter's architecture check
  and are notified too; the supervisor names and kills them.
* ``clone3`` and ``openat2`` answer ENOSYS in the filter itself: their flags
  live in memory the filter cannot read, and libc falls back to ``clone`` and
  ``openat``, whose arguments the filter checks. They are not denials.
* ``execve``/``execveat`` are always notified and always continue: the first
  one the program makes marks its start (bubblewrap's own set-up calls
  before it are allowed to continue).
* In the first tier (``bwrap_setup``) the filter also ALLOWs the set-up
  calls bubblewrap makes by the dozen (its ``mount`` calls; in strict two
  sockets) by their argument patterns (``syscall_groups.BWRAP_SETUP``), so
  that they cost no round trip, and a second, inner filter, which
  bubblewrap installs right before it execs the program
  (``--add-seccomp-fd``), refuses exactly those patterns to the program with
  the call's answer (SECCOMP_RET_ERRNO or SECCOMP_RET_KILL_PROCESS) and
  allows everything else, leaving the decision to the first filter. Those
  refusals are not named: the inner filter has no listener. bubblewrap's
  few other set-up calls (``pivot_root``, ``umount2``, ``unshare``) are
  notified, continued before the program's start and named after it.

The default answer to a notified call the tables do not know (a system call
newer than this module) is ENOSYS, so that programs fall back as they would
on an older kernel.

Compilation costs a few milliseconds; ``filter_for`` caches one compiled
filter per (mode, network, custom allow, custom deny, tier variant) for the
life of the process.

In the second tier (no pid namespace) the calls that change another process
by pid (prlimit64, setpriority, sched_setaffinity, ...) are allowed with the
caller's own 0 only (``syscall_groups.SELF_ONLY_BY_PID``).
"""

from __future__ import annotations

import base64
import errno
import functools
import logging
import os
import platform
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import PolicyError, SandboxUnavailableError
from ..network.policy import allowed_socket_families
from . import syscall_groups as data

if TYPE_CHECKING:
    from ..config import SandboxConfig

log = logging.getLogger(__name__)

# Audit architecture numbers (linux/audit.h) of the architectures stockade
# filters natively.
AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
# Landlock ABI from which unix socket paths obey the ruleset (see landlock.py)
LANDLOCK_ABI_UNIX_PATHS = 9
DEFAULT_ERRNO = errno.ENOSYS
ALLOW = "allow"

# libseccomp architecture tokens, used to tell a name that exists somewhere
# (but not here) from a name that exists nowhere.
_ARCH_TOKENS = {
    "x86_64": 0xC000003E,
    "x86": 0x40000003,
    "x32": 0x4000003E,
    "aarch64": 0xC00000B7,
    "arm": 0x40000028,
    "riscv64": 0xC00000F3,
    "ppc64le": 0xC0000015,
    "s390x": 0x80000016,
    "mips64": 0x80000008,
}


@dataclass(frozen=True)
class Decision:
    """What a filter does with one system call.

    Attributes:
        name: the call's name.
        number: its number on this architecture.
        group: the group it belongs to (``"custom"`` for policy changes).
        action: ``"allow"`` (possibly only with some arguments, see
            ``conditions``), or what a denied call gets: an errno name or
            ``"kill"``.
        conditions: for calls allowed with some arguments only: the
            alternatives, each a tuple of (argument index, mask, value)
            tests that must all hold, ``(arg & mask) == value``. A call
            matching none is denied with ``denied_action``.
        denied_action: the answer when the call is denied (always set).
        why: why it is denied (empty when allowed).
        in_filter: True when the BPF answers it directly (ENOSYS), without
            the supervisor.
    """

    name: str
    number: int
    group: str
    action: str
    denied_action: str
    why: str = ""
    conditions: tuple[tuple[tuple[int, int, int], ...], ...] = ()
    in_filter: bool = False


@dataclass(frozen=True)
class CompiledFilter:
    """A filter ready for the launcher: BPF bytes and the supervisor's table."""

    bpf: bytes
    arch: int
    actions: dict[str, Any]
    names: dict[str, str]
    start_calls: tuple[str, ...]
    instructions: int
    # bubblewrap's set-up patterns (``bwrap_setup``): the inner filter that
    # refuses them to the program, and how many patterns it holds
    inner_bpf: bytes | None = None
    setup_patterns: int = 0

    @functools.cached_property
    def bpf_b64(self) -> str:
        return _b64(self.bpf)

    @functools.cached_property
    def inner_b64(self) -> str | None:
        return None if self.inner_bpf is None else _b64(self.inner_bpf)


@dataclass
class SyscallFilter:
    """The seccomp filter of one policy.

    Args:
        mode: ``"strict"``, ``"moderate"`` or ``"permissive"``.
        network: the network mode (``stockade.network.policy.NetworkMode``):
            ``"none"`` refuses AF_INET/AF_INET6 sockets too; ``"loopback"``
            and ``"allow"`` (whose proxy is reached over the sandbox's
            loopback) allow them.
        allow: extra call names to allow on top of the mode's groups.
        deny: call names to deny (EPERM) although the mode allows them.
        host_network: True when the program shares the host's network and
            pid namespaces (the Landlock tier): inet and netlink sockets are
            then refused whatever ``network`` says (they would reach the
            host's network), and ``socket(AF_UNIX)`` unless
            ``unix_sockets``; the calls that change another process by pid
            (``syscall_groups.SELF_ONLY_BY_PID``: prlimit64, setpriority,
            sched_setaffinity, ...) are allowed on the caller itself (pid 0)
            only, where the mode or the policy allows them at all
            (``host_pids``).
        unix_sockets: with ``host_network``, whether ``socket(AF_UNIX)`` is
            allowed: only when something else confines unix socket paths
            (Landlock ABI 9). ``socketpair(AF_UNIX)`` is always allowed.
        disk_budget: the policy bounds the workspace's growth (``disk_mb``).
            That budget is measured by polling, and ``fallocate`` reserves
            gigabytes between two polls; it then answers EOPNOTSUPP in the
            filter (as on a file system without it), and libc's
            ``posix_fallocate`` falls back to writing, which the budget sees.
        machine: the architecture (``platform.machine()`` when None).
        bwrap_setup: bubblewrap runs under this filter and can install a
            second one (``--add-seccomp-fd``): the filter then allows
            bubblewrap's set-up calls by their argument patterns
            (``syscall_groups.BWRAP_SETUP``) and ``compile`` also builds the
            inner filter that refuses those patterns to the program.

    Raises:
        PolicyError: unknown mode or network policy; names that are no
            system call anywhere; names that may not be changed (always
            denied, filtered by their arguments, needed by the launcher).
        SandboxUnavailableError: the architecture is not supported, or
            libseccomp is missing.
    """

    mode: str
    network: str = "none"
    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()
    host_network: bool = False
    unix_sockets: bool = True
    disk_budget: bool = False
    machine: str | None = None
    bwrap_setup: bool = False
    warnings: list[str] = field(default_factory=list, init=False)
    _decisions: dict[str, Decision] = field(
        default_factory=dict, init=False, repr=False
    )
    _compiled: CompiledFilter | None = field(default=None, init=False, repr=False)
    _allowed: list[str] | None = field(default=None, init=False, repr=False)

    @property
    def host_pids(self) -> bool:
        """The program shares the host's pid space: the tier that shares its
        network (the Landlock tier) has neither namespace."""
        return self.host_network

    def __post_init__(self) -> None:
        if self.mode not in data.MODES:
            raise PolicyError(
                f"mode {self.mode!r} has no syscall filter; choose one of "
                f"{', '.join(data.MODES)}",
                key="mode",
                value=self.mode,
            )
        if self.network not in data.NETWORK_MODES:
            raise PolicyError(
                f"network policy {self.network!r} unknown to the syscall filter; "
                f"choose one of {', '.join(data.NETWORK_MODES)}",
                key="network",
                value=self.network,
            )
        self.machine = self.machine or platform.machine()
        if self.machine not in AUDIT_ARCH:
            raise SandboxUnavailableError(
                "syscall_filter",
                f"no filter tables for architecture {self.machine}",
                "run on x86_64 or aarch64, or use mode 'disabled'",
            )
        self._seccomp = _libseccomp()
        self._check_custom()
        self._decide()

    # -- building the table ---------------------------------------------------

    @property
    def arch(self) -> int:
        return AUDIT_ARCH[str(self.machine)]

    def number(self, name: str) -> int | None:
        """The call's number on this architecture, or None if it has none."""
        newer = data.NEWER_SYSCALLS.get(name)
        if newer is not None:
            nr = newer.get(str(self.machine), newer.get("*"))
            return nr
        nr = self._seccomp.resolve_syscall(self.arch, name)
        return nr if nr >= 0 else None

    def _exists_anywhere(self, name: str) -> bool:
        if name in data.NEWER_SYSCALLS:
            return True
        resolve = self._seccomp.resolve_syscall
        return any(resolve(arch, name) != -1 for arch in _ARCH_TOKENS.values())

    def _check_custom(self) -> None:
        """Check ``allow`` and ``deny`` before anything is built.

        Unknown names in either field are one error naming all of them with
        their field; then names that may not be changed are one error; only
        a set that passes both gets the warning about names this
        architecture lacks, so that no name is reported "ignored" and then
        refused.

        Raises:
            PolicyError: ``key`` is the first field at fault, ``value`` that
                field's list; the message names every name at fault.
        """
        sets = (("syscalls_allow", self.allow), ("syscalls_deny", self.deny))
        unknown = {
            key: sorted({n for n in names if not self._exists_anywhere(n)})
            for key, names in sets
        }
        faulty = [key for key, names in unknown.items() if names]
        if faulty:
            listed = "; ".join(f"{key}: {', '.join(unknown[key])}" for key in faulty)
            message = (
                f"unknown system call names (on every architecture): {listed}; "
                f"`stockade filters show --mode {self.mode}` lists the names"
            )
            raise PolicyError(message, key=faulty[0], value=list(dict(sets)[faulty[0]]))

        always = {c for g in data.ALWAYS_DENIED for c in data.GROUPS_BY_NAME[g].calls}
        argument_ruled = {"clone", "ioctl", "socket", "socketpair", "personality"}
        argument_ruled |= set(data.MODE_ARGUMENT)
        problems: list[tuple[str, str]] = []
        for name in self.allow:
            if name in always:
                why = "is always denied"
            elif name in argument_ruled:
                why = "is allowed by its arguments only"
            elif name in data.ENOSYS_IN_FILTER:
                why = "answers ENOSYS so that libc falls back"
            else:
                continue
            problems.append(("syscalls_allow", f"{name} {why}"))
        for name in self.deny:
            if name in data.LAUNCHER_NEEDS:
                why = "is needed by the launcher before exec"
            elif name in data.NOTIFIED_ALWAYS:
                why = "marks the program's start"
            else:
                continue
            problems.append(("syscalls_deny", f"{name} {why}"))
        if problems:
            key = problems[0][0]
            message = (
                "custom syscall set refused: "
                + "; ".join(f"{field}: {text}" for field, text in problems)
                + "; remove them from the policy"
            )
            raise PolicyError(message, key=key, value=list(dict(sets)[key]))

        for key, names in sets:
            absent = sorted({n for n in names if self.number(n) is None})
            if absent:
                message = (
                    f"{key}: not system calls on {self.machine} (or unknown to this "
                    f"libseccomp), ignored: {', '.join(absent)}; the filter denies "
                    f"what it does not know"
                )
                log.warning("%s", message)
                self.warnings.append(message)

    def _decide(self) -> None:
        mode = self.mode
        decisions: dict[str, Decision] = {}
        for group in data.GROUPS:
            allowed = mode in group.allowed_in
            for name in group.calls:
                nr = self.number(name)
                if nr is None:
                    continue  # not a call on this architecture
                decisions[name] = Decision(
                    name=name,
                    number=nr,
                    group=group.name,
                    action=ALLOW if allowed else group.deny,
                    denied_action="EPERM" if allowed else group.deny,
                    why="" if allowed else group.why,
                )

        for name, conditions in self._argument_rules().items():
            old = decisions.get(name)
            if old is None or old.action != ALLOW:
                continue
            why, errname = _argument_why(name)
            decisions[name] = Decision(
                name=name, number=old.number, group=old.group, action=ALLOW,
                denied_action=errname, why=why, conditions=tuple(conditions),
            )

        for name in self.allow:
            nr = self.number(name)
            if nr is not None:
                decisions[name] = Decision(name, nr, "custom", ALLOW, "EPERM")
        for name in self.deny:
            nr = self.number(name)
            if nr is not None:
                decisions[name] = Decision(
                    name, nr, "custom", "EPERM", "EPERM", why="denied by the policy"
                )

        if self.host_pids:
            errname, why = data.SELF_ONLY_WHY
            for name, alternatives in data.SELF_ONLY_BY_PID.items():
                old = decisions.get(name)
                # what the mode or the policy allows, narrowed to the caller
                if old is None or old.action != ALLOW:
                    continue
                decisions[name] = Decision(
                    name=name, number=old.number, group=old.group, action=ALLOW,
                    denied_action=errname, why=why, conditions=alternatives,
                )

        for name in data.ENOSYS_IN_FILTER:
            nr = self.number(name)
            if nr is not None:
                decisions[name] = Decision(
                    name, nr, "compat", "ENOSYS", "ENOSYS", in_filter=True,
                    why="answered in the filter so that libc falls back",
                )
        if self.disk_budget:
            nr = self.number("fallocate")
            if nr is not None and decisions.get("fallocate", None) is not None:
                if decisions["fallocate"].action == ALLOW:
                    decisions["fallocate"] = Decision(
                        "fallocate", nr, "files", "EOPNOTSUPP", "EOPNOTSUPP", in_filter=True,
                        why="disk budget: reserving space would outrun its measurement; "
                        "libc falls back to writing",
                    )
        for name in data.LAUNCHER_NEEDS:
            assert decisions[name].action == ALLOW and not decisions[name].conditions
        self._decisions = decisions

    def _argument_rules(self) -> dict[str, list[tuple[tuple[int, int, int], ...]]]:
        """Allowed argument patterns of the calls allowed only with some."""
        low32 = 0xFFFFFFFF
        rules: dict[str, list[tuple[tuple[int, int, int], ...]]] = {}

        if self.mode == data.STRICT:
            thread = data.CLONE_NEW_FLAGS | data.CLONE_THREAD
            rules["clone"] = [((0, thread, data.CLONE_THREAD),)]
        else:
            rules["clone"] = [((0, data.CLONE_NEW_FLAGS, 0),)]

        rules["ioctl"] = [
            ((1, mask, value),)
            for mask, value in exclusion_patterns(data.IOCTL_DENIED.values())
        ]

        families: list[tuple[tuple[int, int, int], ...]] = []
        allowed_families = set(allowed_socket_families(self.network))
        if self.host_network:
            allowed_families = {data.AF_UNIX} if self.unix_sockets else set()
        for family in sorted(allowed_families):
            if family == data.AF_NETLINK and self.mode != data.PERMISSIVE:
                route = (2, low32, data.NETLINK_ROUTE)
                families.append(((0, low32, family), route))
            else:
                families.append(((0, low32, family),))
        # An allow rule that never matches: a call with no alternative is
        # denied by the default action (the empty list would mean "allowed
        # without conditions").
        rules["socket"] = families or [((0, low32, 0xFFFFFFFF),)]
        rules["socketpair"] = [((0, low32, data.AF_UNIX),)]

        rules["personality"] = [
            ((0, low32, data.PERSONALITY_QUERY),),
            ((0, low32, data.PER_LINUX),),
        ]

        for name, (mode_arg, flags_arg) in data.MODE_ARGUMENT.items():
            alternatives = [((mode_arg, data.S_ISUID_ISGID, 0),)]
            if flags_arg is not None:
                create = data.O_CREAT | data.O_TMPFILE_BIT
                alternatives.append(((flags_arg, create, 0),))
            rules[name] = alternatives
        return rules

    # -- results --------------------------------------------------------------

    def decisions(self) -> list[Decision]:
        """Every call this architecture has that the tables know, by number."""
        return sorted(self._decisions.values(), key=lambda d: d.number)

    def decision(self, name: str) -> Decision | None:
        return self._decisions.get(name)

    def setup_rules(self) -> list[tuple[data.SetupPattern, Decision, str]]:
        """What ``compile`` lets through for bubblewrap: ``bwrap_patterns()``
        with ``bwrap_setup``, else nothing."""
        return self.bwrap_patterns() if self.bwrap_setup else []

    def bwrap_patterns(self) -> list[tuple[data.SetupPattern, Decision, str]]:
        """bubblewrap's set-up patterns this filter denies, with their answer.

        A pattern applies where the filter denies the call (the answer is the
        call's), or, for a call allowed with some arguments only, where the
        pattern lies wholly outside what it allows (the answer is the
        refused call's). A pattern partly inside is left out: the inner
        filter must never refuse what the mode allows, and the call then
        stays notified during the set-up.
        """
        rules = []
        for pattern in data.BWRAP_SETUP:
            d = self._decisions.get(pattern.call)
            if d is None or d.in_filter or d.name in data.NOTIFIED_ALWAYS:
                continue
            if d.action != ALLOW:
                rules.append((pattern, d, d.action))
            elif d.conditions and _disjoint(pattern.tests, d.conditions):
                rules.append((pattern, d, d.denied_action))
        return rules

    @property
    def allowed(self) -> list[str]:
        if self._allowed is None:  # asked on every run (protection_detail)
            self._allowed = sorted(d.name for d in self._decisions.values() if d.action == ALLOW)
        return list(self._allowed)

    def compile(self) -> CompiledFilter:
        """The BPF program and the supervisor's table (computed once).

        Raises:
            SandboxUnavailableError: libseccomp refused the rules.
        """
        if self._compiled is not None:
            return self._compiled
        sc = self._seccomp
        try:
            flt = sc.SyscallFilter(sc.NOTIFY)
            # Foreign ABIs fail the architecture check: notify, the
            # supervisor names and kills them.
            flt.set_attr(sc.Attr.ACT_BADARCH, sc.NOTIFY)
            flt.set_attr(sc.Attr.CTL_NNP, 0)  # the launcher sets it itself
            try:
                # a binary search over call numbers instead of a linear scan:
                # every system call of the program runs this program
                flt.set_attr(sc.Attr.CTL_OPTIMIZE, 2)
            except OSError:
                pass  # libseccomp < 2.5
            for d in self.decisions():
                if d.in_filter:
                    flt.add_rule(sc.ERRNO(getattr(errno, d.action)), d.number)
                elif d.action != ALLOW or d.name in data.NOTIFIED_ALWAYS:
                    continue  # the default: notify
                elif not d.conditions:
                    flt.add_rule(sc.ALLOW, d.number)
                else:
                    for alternative in d.conditions:
                        args = [
                            sc.Arg(i, sc.MASKED_EQ, m, v) for i, m, v in alternative
                        ]
                        flt.add_rule(sc.ALLOW, d.number, *args)
            setup = self.setup_rules()
            inner = None
            if self.bwrap_setup:
                for pattern, d, _answer in setup:
                    flt.add_rule(sc.ALLOW, d.number, *_args(sc, pattern.tests))
                inner = self._compile_inner(setup)
            bpf = _export(flt)
        except OSError as err:
            raise SandboxUnavailableError(
                "syscall_filter", f"libseccomp cannot compile the filter: {err}",
                "install a libseccomp 2.5 or newer (Debian: libseccomp2)",
            ) from err

        arch = self.arch
        actions: dict[str, Any] = {}
        names: dict[str, str] = {}
        for d in self.decisions():
            key = f"{arch}:{d.number}"
            if d.name in data.NEWER_SYSCALLS:
                names[key] = d.name  # libseccomp cannot name them
            if d.in_filter or d.name in data.NOTIFIED_ALWAYS:
                continue
            if d.action == ALLOW and not d.conditions:
                continue  # never notified
            answer = d.denied_action
            value: Any = answer if answer == data.KILL else getattr(errno, answer)
            if value != DEFAULT_ERRNO:
                actions[key] = value
        start = tuple(
            f"{arch}:{self._decisions[n].number}"
            for n in data.NOTIFIED_ALWAYS
            if n in self._decisions
        )
        self._compiled = CompiledFilter(
            bpf=bpf,
            arch=arch,
            actions=actions,
            names=names,
            start_calls=start,
            instructions=len(bpf) // 8,
            inner_bpf=inner,
            setup_patterns=len(setup),
        )
        log.debug(
            "seccomp filter %s/%s: %d BPF instructions, %d calls allowed",
            self.mode, self.network, len(bpf) // 8, len(self.allowed),
        )
        return self._compiled

    def _compile_inner(
        self, setup: list[tuple[data.SetupPattern, Decision, str]]
    ) -> bytes:
        """The filter bubblewrap installs right before it execs the program.

        It refuses bubblewrap's set-up patterns, which the outer filter
        allows, with the call's answer, and allows everything else: the
        outer filter, evaluated too, still decides about the rest (the
        kernel takes the strictest answer of the two). Foreign ABIs pass
        here and are notified and killed by the outer filter.
        """
        sc = self._seccomp
        flt = sc.SyscallFilter(sc.ALLOW)
        flt.set_attr(sc.Attr.ACT_BADARCH, sc.ALLOW)
        flt.set_attr(sc.Attr.CTL_NNP, 0)
        for pattern, d, answer in setup:
            if answer == data.KILL:
                action = sc.KILL_PROCESS
            else:
                action = sc.ERRNO(getattr(errno, answer))
            flt.add_rule(action, d.number, *_args(sc, pattern.tests))
        return _export(flt)

    def launcher_spec(self, *, trust_monitor: bool = True) -> dict[str, Any]:
        """The ``spec["seccomp"]`` mapping the launcher and supervisor read.

        Args:
            trust_monitor: True when bubblewrap runs between the launcher
                child and the program: calls of bubblewrap's monitor (the
                launcher's child, outside the sandbox) always continue, and
                the program's start is the first exec of another process.
                False when the launcher child execs the program itself (the
                Landlock tier): its own exec is the program's start.
        """
        compiled = self.compile()
        return {
            "bpf": compiled.bpf_b64,
            "listener": True,
            "trust_monitor": trust_monitor,
            "arch": compiled.arch,
            "actions": compiled.actions,
            "names": compiled.names,
            "default": DEFAULT_ERRNO,
            "start_calls": list(compiled.start_calls),
            **({"inner_bpf": compiled.inner_b64} if compiled.inner_bpf else {}),
        }

    def protection_detail(self) -> str:
        """One line for the result's ``syscall_filter`` protection."""
        compiled = self.compile()
        allowed = len(self.allowed)
        sockets = f"network {self.network}"
        if self.host_network:
            unix = "unix" if self.unix_sockets else "no unix"
            sockets = f"host network: no inet sockets, {unix} sockets"
        if self.host_pids:
            sockets += "; other processes' limits and scheduling refused"
        named = "denials named"
        if compiled.inner_bpf is not None:
            named = (
                "denials named but bubblewrap's set-up mount patterns (refused "
                "by a second filter)"
            )
        return (
            f"{self.mode} filter ({allowed} calls allowed, {sockets}, "
            f"{compiled.instructions} BPF instructions); {named}; "
            f"foreign ABIs killed"
        )

    def describe(self) -> dict[str, Any]:
        """A JSON-ready description (``stockade filters show --json``)."""
        denied: dict[str, dict[str, str]] = {}
        conditional: dict[str, dict[str, str]] = {}
        for d in self.decisions():
            if d.action == ALLOW and d.conditions:
                conditional[d.name] = {"denied_action": d.denied_action, "why": d.why}
            elif d.action != ALLOW:
                denied[d.name] = {"action": d.action, "group": d.group, "why": d.why}
        return {
            "mode": self.mode,
            "network": self.network,
            "arch": self.machine,
            "allowed": self.allowed,
            "allowed_with_arguments": conditional,
            "argument_rules": {k: v[self.mode] for k, v in data.ARGUMENT_RULES.items()},
            # second tier (no pid namespace): self only
            "self_only_by_pid": dict(data.SELF_ONLY_TEXT) if self.host_pids else {},
            "denied": denied,
            "notified_always": list(data.NOTIFIED_ALWAYS),
            # first tier: let through for bubblewrap, refused to the program
            # by the filter bubblewrap installs before exec, not named
            "bwrap_setup_patterns": [
                {"call": p.call, "arguments": p.arguments, "answer": answer}
                for p, _d, answer in self.bwrap_patterns()
            ],
            "default_for_unknown_calls": errno.errorcode[DEFAULT_ERRNO],
            "foreign_abis": data.KILL,
            "warnings": list(self.warnings),
        }


def _args(sc: Any, tests: Iterable[tuple[int, int, int]]) -> list[Any]:
    return [sc.Arg(i, sc.MASKED_EQ, m, v) for i, m, v in tests]


def _disjoint(
    tests: tuple[tuple[int, int, int], ...],
    alternatives: tuple[tuple[tuple[int, int, int], ...], ...],
) -> bool:
    """True when no argument vector matching ``tests`` matches any alternative.

    An alternative is ruled out when one of its tests contradicts the
    pattern's on bits both look at: ``(arg & m) == v`` and
    ``(arg & pm) == pv`` cannot both hold when ``(v ^ pv) & m & pm``.
    """
    fixed = {i: (m, v) for i, m, v in tests}
    for alternative in alternatives:
        contradicted = False
        for i, m, v in alternative:
            pm, pv = fixed.get(i, (0, 0))
            if (v ^ pv) & m & pm:
                contradicted = True
                break
        if not contradicted:
            return False
    return True


def _argument_why(name: str) -> tuple[str, str]:
    for key, (errname, why) in data.ARGUMENT_RULE_WHY.items():
        if name in [part.strip() for part in key.split(",")]:
            return why, errname
    return "", "EPERM"


def exclusion_patterns(values: Iterable[int], bits: int = 32) -> list[tuple[int, int]]:
    """Masked-equality patterns that together match every value but ``values``.

    libseccomp can only allow on ``(arg & mask) == value``; to allow "any
    ioctl request but TIOCSTI, TIOCSETD..." we need the complement of a set
    as a union of such patterns. Recursively: a value that differs from all
    the excluded ones in a bit where they agree is allowed (one pattern per
    such bit); the values that agree there are split on a bit where the
    excluded ones differ, and each half is covered the same way. That makes
    about one pattern per bit and excluded value, where trying every
    combination of differing bits grows exponentially with the values. Only
    the low ``bits`` bits are looked at, as the kernel does for ioctl.

    Returns:
        (mask, value) pairs; a value matches one of them exactly when its
        low bits are not in ``values``.
    """
    excluded = sorted({v & ((1 << bits) - 1) for v in values})
    patterns: list[tuple[int, int]] = []

    def cover(mask: int, fixed: int, group: list[int], free: list[int]) -> None:
        if not group:
            patterns.append((mask, fixed))
            return
        first = group[0]
        common = [b for b in free if all((v >> b) & 1 == (first >> b) & 1 for v in group)]
        for b in common:
            patterns.append((mask | 1 << b, fixed | (~first & 1 << b)))
            mask |= 1 << b
            fixed |= first & 1 << b
        free = [b for b in free if b not in common]
        if not free:
            return  # the one value left is excluded
        split = free[0]
        rest = free[1:]
        for bit_value in (0, 1):
            cover(
                mask | 1 << split,
                fixed | bit_value << split,
                [v for v in group if (v >> split) & 1 == bit_value],
                rest,
            )

    if excluded:
        cover(0, 0, excluded, list(range(bits)))
    else:
        patterns.append((0, 0))
    return sorted(patterns)


def _export(flt: Any) -> bytes:
    r, w = os.pipe()
    try:
        with os.fdopen(w, "wb", closefd=True) as fh:
            flt.export_bpf(fh)
        chunks = []
        while True:
            chunk = os.read(r, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(r)
    return b"".join(chunks)


def _b64(blob: bytes) -> str:
    return base64.b64encode(blob).decode("ascii")


@functools.lru_cache(maxsize=1)
def _libseccomp() -> Any:
    try:
        import pyseccomp
    except (ImportError, RuntimeError) as err:
        raise SandboxUnavailableError(
            "syscall_filter",
            f"libseccomp is not usable ({err})",
            "install libseccomp (Debian/Ubuntu: `apt-get install libseccomp2`) and "
            "the pyseccomp package",
        ) from err
    return pyseccomp


@functools.lru_cache(maxsize=64)
def filter_for(
    mode: str,
    network: str = "none",
    allow: tuple[str, ...] = (),
    deny: tuple[str, ...] = (),
    host_network: bool = False,
    unix_sockets: bool = True,
    disk_budget: bool = False,
    bwrap_setup: bool = False,
) -> SyscallFilter:
    """The filter of a policy, built and compiled once per process.

    ``bwrap_setup``: the first tier's variant; ``host_network`` the
    second tier's; see ``SyscallFilter``.

    Raises:
        PolicyError, SandboxUnavailableError: see ``SyscallFilter``.
    """
    flt = SyscallFilter(
        mode,
        network=network,
        allow=allow,
        deny=deny,
        host_network=host_network,
        unix_sockets=unix_sockets,
        disk_budget=disk_budget,
        bwrap_setup=bwrap_setup,
    )
    flt.compile()
    return flt


def network_policy(config: SandboxConfig) -> str:
    """The network mode of a policy (``none``, ``loopback``, ``allow``)."""
    return config.network.mode.value


def filter_for_config(
    config: SandboxConfig,
    *,
    tier: str = "namespaces",
    landlock_abi: int = 0,
    bwrap_setup: bool = False,
) -> SyscallFilter | None:
    """The filter for a policy in a tier, or None in mode ``disabled``.

    Args:
        config: the policy.
        tier: ``"namespaces"`` (bubblewrap: the sandbox has its own network
            and pid namespaces) or ``"landlock"`` (the program shares the
            host's: its sockets and the calls that change other processes by
            pid are narrowed).
        landlock_abi: the second tier's Landlock ABI; from 9 on Landlock
            confines unix socket paths, so ``socket(AF_UNIX)`` may stay.
        bwrap_setup: bubblewrap supports ``--add-seccomp-fd``: allow its
            set-up calls by pattern and build the inner filter (first tier
            only; without bubblewrap there is no set-up to let through).

    Raises:
        PolicyError, SandboxUnavailableError: see ``SyscallFilter``.
    """
    mode = config.mode.value
    if mode == "disabled":
        return None
    host_network = tier == "landlock"
    return filter_for(
        mode,
        network_policy(config),
        tuple(config.syscalls_allow),
        tuple(config.syscalls_deny),
        host_network,
        not host_network or landlock_abi >= LANDLOCK_ABI_UNIX_PATHS,
        config.disk_mb is not None,
        bwrap_setup and not host_network,
    )


def names_for_modes(modes: Sequence[str] = data.MODES) -> dict[str, SyscallFilter]:
    """The default filter of each mode (network none), for documentation."""
    return {mode: filter_for(mode) for mode in modes}
