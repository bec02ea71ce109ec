"""Which tier runs, and what each protection amounts to on this host.

``decide(probe, policy)`` is the one place that knows. The manager calls it
before every run and refuses the run when it says so; ``stockade doctor``
prints the same rows; so the two cannot disagree.

Tiers:

* ``namespaces`` (first tier): bubblewrap builds user, pid, ipc, uts, net
  and cgroup namespaces and a mount view (system read-only, workspace
  writable, private /tmp and HOME, nothing else).
* ``landlock`` (second tier, for hosts without user namespaces): the
  program is exec'd directly under a Landlock ruleset (system read-only,
  workspace and a per-run HOME/TMPDIR writable, everything else denied; TCP
  denied with the network off; abstract unix sockets and signals scoped),
  no_new_privs, rlimits, and a per-run monitor that kills the whole tree.
  Used only when the policy forces it (``tier = "landlock"``) or accepts it
  (``allow_degraded`` names ``namespaces``).
* ``none``: mode ``disabled``.

Each protection gets a row: ``enforced``, ``degraded`` (in force, but weaker
than the first tier's), ``unavailable`` (the host cannot give it) or ``off``
(the policy does not ask for it, or this tier does not use it), with the
reason and the fix. A row *blocks* the run when the policy needs it, it is
not enforced, and the policy did not accept that: through
``allow_degraded``, or, for what the second tier lacks by design (the
namespaces themselves, the mount view, the host's pid space), by
choosing the second tier.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any

from ..config import DEGRADABLE_PROTECTIONS, SandboxConfig, SandboxMode
from ..errors import SandboxUnavailableError
from ..network.policy import NetworkMode
from . import landlock as _landlock
from . import probe as _probe
from .probe import HostProbe

ENFORCED = "enforced"
DEGRADED = "degraded"
UNAVAILABLE = "unavailable"
OFF = "off"

TIER_NAMESPACES = "namespaces"
TIER_LANDLOCK = "landlock"
TIER_NONE = "none"

# Both tiers install the mode's syscall filter (linux/seccomp.py). Kept as a
# switch so that the rows below say what a tier without one would lack.
SECCOMP_FILTER_BUILT = True

_FIX_LANDLOCK = (
    "a kernel with Landlock: Linux 5.13+ built with CONFIG_SECURITY_LANDLOCK and "
    "'landlock' in the lsm= boot parameter (e.g. add lsm=landlock,lockdown,yama,"
    "integrity,apparmor,bpf to GRUB_CMDLINE_LINUX and reboot)"
)
# Rows that the first tier would give in full point to the namespaces row for
# the fix instead of repeating it; ``Decision.error`` spells it out.
_SEE_NAMESPACES = "see the namespaces row"
_FIX_TIER2_BY_USERNS = (
    f"the first tier, once the host can create namespaces ({_SEE_NAMESPACES})"
)


@dataclass(frozen=True)
class ProtectionStatus:
    """One protection as the host and the policy leave it.

    Attributes:
        name: protection name (``config.DEGRADABLE_PROTECTIONS`` plus
            ``landlock``).
        status: ``enforced``, ``degraded``, ``unavailable`` or ``off``.
        detail: what is in force, or why not.
        fix: what would give the full protection on this host ("" if none
            is needed).
        required: the policy needs this protection.
        accepted: it is not enforced, and the policy accepts that.
    """

    name: str
    status: str
    detail: str
    fix: str = ""
    required: bool = False
    accepted: bool = False

    @property
    def blocking(self) -> bool:
        return self.required and self.status != ENFORCED and not self.accepted


@dataclass(frozen=True)
class Decision:
    """The tier for a policy on a host, and every protection's row."""

    tier: str
    why: str
    rows: tuple[ProtectionStatus, ...]
    landlock_abi: int = 0

    @property
    def ok(self) -> bool:
        return not self.blocking()

    def blocking(self) -> list[ProtectionStatus]:
        return [row for row in self.rows if row.blocking]

    def row(self, name: str) -> ProtectionStatus:
        for row in self.rows:
            if row.name == name:
                return row
        raise KeyError(name)

    def error(self) -> SandboxUnavailableError:
        """The error for a refused run: the first blocking row's reason and fix."""
        rows = self.blocking()
        if not rows:
            raise ValueError("the decision does not block the run")
        first = rows[0]
        reason = first.detail
        if len(rows) > 1:
            reason += (
                f" (not enforceable either: {', '.join(r.name for r in rows[1:])})"
            )
        fix = first.fix or "none known on this host"
        if _SEE_NAMESPACES in fix:
            namespaces_fix = self.row("namespaces").fix
            if namespaces_fix:
                fix = fix.replace(_SEE_NAMESPACES, namespaces_fix)
        if first.name in DEGRADABLE_PROTECTIONS and first.name != "namespaces":
            names = ", ".join(
                repr(r.name) for r in rows if r.name in DEGRADABLE_PROTECTIONS
            )
            fix += f"; or accept it in the policy: allow_degraded = [{names}]"
        return SandboxUnavailableError(first.name, reason, fix)

    def raise_if_blocked(self) -> None:
        """Raises:
        SandboxUnavailableError: a protection the policy needs is missing."""
        if not self.ok:
            raise self.error()

    def to_dict(self) -> dict[str, Any]:
        return {
            "tier": self.tier,
            "why": self.why,
            "ok": self.ok,
            "landlock_abi": self.landlock_abi,
            "rows": [dict(asdict(row), blocking=row.blocking) for row in self.rows],
        }


def probe_for(config: SandboxConfig) -> HostProbe:
    """This host's probe as a run under ``config`` needs it (cached).

    The namespace check runs as the uid the program will run as: the
    policy's ``run_as_uid`` when the caller is root.
    """
    caller_is_root = os.geteuid() == 0
    return _probe.probe_host(
        str(config.bwrap_path) if config.bwrap_path else None,
        config.run_as_uid if caller_is_root else None,
    )


def decide(probe: HostProbe, config: SandboxConfig) -> Decision:
    """The tier and the protections a policy gets on the probed host.

    Args:
        probe: a live ``probe_host()`` result or a recorded one.
        config: the policy.

    Returns:
        The decision; ``decision.ok`` is False when the run must be refused
        (``decision.error()`` says why and how to fix it).
    """
    allowed = set(config.allow_degraded)
    if config.mode is SandboxMode.DISABLED:
        return _disabled(probe, config)

    ns_ok = probe.namespaces_work
    if config.tier == TIER_LANDLOCK:
        tier, why = TIER_LANDLOCK, "forced by the policy (tier = 'landlock')"
    elif config.tier == TIER_NAMESPACES:
        tier, why = TIER_NAMESPACES, "forced by the policy (tier = 'namespaces')"
    elif ns_ok:
        tier, why = TIER_NAMESPACES, "the host can create the namespaces"
    elif "namespaces" in allowed:
        tier, why = (
            TIER_LANDLOCK,
            (
                "the host cannot create namespaces and allow_degraded accepts the "
                "second tier"
            ),
        )
    else:
        tier, why = (
            TIER_NAMESPACES,
            "the host cannot create namespaces; the policy accepts no other tier",
        )

    if tier == TIER_NAMESPACES:
        rows = _namespaces_rows(probe, config, allowed)
    else:
        rows = _landlock_rows(probe, config, allowed)
    rows += [
        _filter_row(probe, config, allowed, tier),
        *_limit_rows(probe, config, allowed),
    ]
    order = {name: i for i, name in enumerate(ROW_ORDER)}
    rows.sort(key=lambda row: order.get(row.name, len(order)))
    return Decision(
        tier=tier, why=why, rows=tuple(rows), landlock_abi=probe.landlock.abi
    )


ROW_ORDER = (
    "namespaces",
    "mount_view",
    "landlock",
    "syscall_filter",
    "network",
    "process_isolation",
    "tree_kill",
    "memory",
    "pids",
    "cpu",
)


def userns_diagnosis(probe: HostProbe) -> tuple[str, str]:
    """Why bubblewrap cannot create namespaces here, and the fix.

    Returns:
        (reason, fix); ("", "") when namespaces work.
    """
    bwrap, userns = probe.bwrap, probe.userns
    if bwrap.path is None:
        return (
            bwrap.error or "bubblewrap (bwrap) is not installed",
            "install bubblewrap: `sudo apt-get install bubblewrap` (Debian, Ubuntu), "
            "`sudo dnf install bubblewrap` (Fedora)",
        )
    if userns.works:
        return "", ""
    error = userns.error or "no message"
    who = f" as uid {userns.tested_as_uid}" if userns.tested_as_uid is not None else ""
    reason = f"bubblewrap cannot create namespaces{who} ('{error}')"
    if userns.apparmor_restrict_unprivileged_userns == "1":
        return (
            f"{reason}: AppArmor restricts unprivileged user namespaces "
            "(kernel.apparmor_restrict_unprivileged_userns=1, the default since "
            "Ubuntu 23.10)",
            f"install an AppArmor profile that grants `userns` to {bwrap.path} "
            "(docs/hosts.md shows one: save it as /etc/apparmor.d/bwrap, then "
            "`sudo apparmor_parser -r /etc/apparmor.d/bwrap`), or allow it for every "
            "program: `sudo sysctl -w kernel.apparmor_restrict_unprivileged_userns=0`",
        )
    if userns.unprivileged_userns_clone == "0":
        return (
            f"{reason}: unprivileged user namespaces are disabled "
            "(kernel.unprivileged_userns_clone=0)",
            "`sudo sysctl -w kernel.unprivileged_userns_clone=1` (persist it in "
            "/etc/sysctl.d/)",
        )
    if userns.max_user_namespaces == "0" or "max_" in error:
        return (
            f"{reason}: no user namespaces may be created "
            f"(user.max_user_namespaces={userns.max_user_namespaces})",
            "`sudo sysctl -w user.max_user_namespaces=15000` (persist it in "
            "/etc/sysctl.d/)",
        )
    if probe.container or probe.seccomp.mode == 2:
        where = (
            f"a container ({probe.container})"
            if probe.container
            else "a seccomp-filtered process"
        )
        return (
            f"{reason}: this process runs in {where} whose profile forbids creating "
            "namespaces",
            "run the container with a seccomp profile that allows clone/unshare with "
            "CLONE_NEWUSER (Docker and Podman: `--security-opt seccomp=unconfined` "
            "or a custom profile), or run stockade on the host",
        )
    return (
        reason,
        f"make `{bwrap.path} --unshare-all --ro-bind / / /bin/true` work for this user "
        "(user namespaces, an AppArmor or SELinux policy, the kernel configuration)",
    )


# -- rows per tier ------------------------------------------------------------


def _namespaces_rows(
    probe: HostProbe, config: SandboxConfig, allowed: set[str]
) -> list[ProtectionStatus]:
    reason, fix = userns_diagnosis(probe)
    if not probe.namespaces_work:
        if config.tier != TIER_NAMESPACES and probe.landlock.abi >= 1:
            fix += (
                "; or accept the second tier: allow_degraded = ['namespaces'] "
                "(`stockade doctor` shows what it protects)"
            )
        need = "needs the namespaces, which this host cannot create"
        return [
            _row("namespaces", UNAVAILABLE, reason, fix, True, allowed),
            _row("mount_view", UNAVAILABLE, need, _SEE_NAMESPACES, True, allowed),
            _landlock_unused(probe),
            _row("network", UNAVAILABLE, need, _SEE_NAMESPACES, True, allowed),
            _row(
                "process_isolation", UNAVAILABLE, need, _SEE_NAMESPACES, True, allowed
            ),
            _row("tree_kill", UNAVAILABLE, need, _SEE_NAMESPACES, True, allowed),
        ]
    userns = "user, pid, ipc, uts, net, cgroup"
    if probe.bwrap.has_disable_userns:
        userns += "; nested user namespaces disabled"
    return [
        _row(
            "namespaces",
            ENFORCED,
            f"bubblewrap {probe.bwrap.version}: {userns}",
            required=True,
        ),
        _row(
            "mount_view",
            ENFORCED,
            "system read-only, workspace writable, private /tmp, /dev/shm and HOME, "
            "nothing else",
            required=True,
        ),
        _landlock_unused(probe),
        _row("network", ENFORCED, "none: empty network namespace", required=True),
        _row(
            "process_isolation",
            ENFORCED,
            "own pid namespace: host processes are invisible and out of reach of "
            "signals and ptrace",
            required=True,
        ),
        _row(
            "tree_kill",
            ENFORCED,
            "pid namespace: every process ends with the run",
            required=True,
        ),
    ]


def _landlock_unused(probe: HostProbe) -> ProtectionStatus:
    abi = probe.landlock.abi
    host = (
        f"host: Landlock ABI {abi}"
        if abi
        else f"host: no Landlock ({probe.landlock.error})"
    )
    return _row(
        "landlock",
        OFF,
        f"not used by this tier, the mount view hides the host ({host})",
    )


def _landlock_rows(
    probe: HostProbe, config: SandboxConfig, allowed: set[str]
) -> list[ProtectionStatus]:
    abi = probe.landlock.abi
    reason, fix = userns_diagnosis(probe)
    if probe.namespaces_work:
        ns = _row(
            "namespaces",
            OFF,
            "not used: the policy chose the second tier",
            required=True,
            accepted=True,
        )
    else:
        ns = _row("namespaces", UNAVAILABLE, reason, fix, required=True, accepted=True)
    userns_fix = (
        _FIX_TIER2_BY_USERNS
        if fix
        else "use the first tier (tier = 'auto' or 'namespaces')"
    )

    if abi < 1:
        missing = f"needs Landlock, which this host lacks ({probe.landlock.error})"
        return [
            ns,
            _row(
                "landlock",
                UNAVAILABLE,
                probe.landlock.error or "no Landlock",
                _FIX_LANDLOCK,
                True,
            ),
            _row("mount_view", UNAVAILABLE, missing, _FIX_LANDLOCK, True, allowed),
            _row("network", UNAVAILABLE, missing, _FIX_LANDLOCK, True, allowed),
            _row(
                "process_isolation", UNAVAILABLE, missing, _FIX_LANDLOCK, True, allowed
            ),
            _tree_kill_row(),
        ]

    parts = ["file system ruleset"]
    if abi >= _landlock.ABI_NET_TCP:
        parts.append("TCP bind/connect denied")
    if abi >= _landlock.ABI_SCOPE:
        parts.append("abstract unix sockets and signals scoped to the run")
    landlock_row = _row(
        "landlock", ENFORCED, f"ABI {abi}: " + ", ".join(parts), required=True
    )

    # The file system: what the second tier lacks by design is accepted with
    # the tier; a gap of an old ABI needs its own consent.
    view = (
        "Landlock ruleset instead of a mount view: system directories read-only, the "
        "workspace and a per-run HOME and TMPDIR writable, everything else denied; "
        "host paths keep their names, /tmp is not private (not writable), /dev/shm is "
        "the host's"
    )
    if abi < 3:
        view += "; ABI < 3: truncate() of files outside the ruleset is NOT denied"
        mount_view = _row(
            "mount_view",
            DEGRADED,
            view,
            f"Linux 6.2+ (Landlock ABI 3); or {userns_fix}",
            True,
            allowed,
        )
    else:
        mount_view = _row(
            "mount_view", DEGRADED, view, userns_fix, True, allowed, inherent=True
        )

    filter_ok = (
        SECCOMP_FILTER_BUILT and probe.seccomp.available and probe.seccomp.user_notif
    )
    network = _network_row(abi, allowed, userns_fix, filter_ok)
    if config.network.mode is not NetworkMode.NONE:
        network = _network_not_given(config, network, allowed, userns_fix)

    if abi >= _landlock.ABI_SCOPE:
        process = _row(
            "process_isolation",
            DEGRADED,
            "signals and ptrace stop at the run's own processes, and /proc "
            "shows the program's own entries only (Landlock); but pids are the "
            "host's (a pid's existence, owner and start time can be probed), "
            "/proc/self/net and mountinfo show the host's sockets and mounts, "
            "and the program's children cannot read their own /proc entries",
            userns_fix,
            True,
            allowed,
            inherent=True,
        )
    else:
        process = _row(
            "process_isolation",
            DEGRADED,
            f"ptrace stops at the run's own processes, but on Landlock ABI {abi} "
            "(< 6) signals reach every host process of the same uid, the run's "
            "monitor included; /proc shows the program's own entries only",
            f"Linux 6.12+ (Landlock ABI 6) for signal scoping; or {userns_fix}",
            True,
            allowed,
        )
    return [ns, landlock_row, mount_view, network, process, _tree_kill_row()]


def _network_row(
    abi: int, allowed: set[str], userns_fix: str, filter_ok: bool
) -> ProtectionStatus:
    """The second tier's network row: the program shares the host's network
    namespace, so what stops it is Landlock and, where the host allows it,
    the syscall filter (``filter_ok``), which refuses inet, netlink and
    packet sockets and, below Landlock ABI 9, ``socket(AF_UNIX)`` (see
    ``seccomp.filter_for_config``)."""
    blocked, holes = [], []
    if filter_ok:
        blocked.append("inet, netlink and packet sockets refused by the syscall filter")
    else:
        if abi >= _landlock.ABI_NET_TCP:
            blocked.append("TCP bind/connect denied (Landlock)")
        else:
            holes.append("TCP")
        if abi >= _landlock.ABI_NET_UDP:
            blocked.append("UDP denied (Landlock)")
        else:
            holes.append("UDP and other socket families (needs the syscall filter)")
    if filter_ok and abi < _landlock.ABI_RESOLVE_UNIX:
        blocked.append(
            "socket(AF_UNIX) refused by the syscall filter (abstract and path "
            "sockets alike; socketpair allowed)"
        )
    else:
        if abi >= _landlock.ABI_SCOPE:
            blocked.append("abstract unix sockets scoped")
        else:
            holes.append("abstract unix sockets (Landlock ABI 6, Linux 6.12)")
        if abi >= _landlock.ABI_RESOLVE_UNIX:
            blocked.append("unix sockets by path limited to the ruleset")
        else:
            holes.append(
                "unix sockets by path: any socket file the run's uid may write, such "
                "as a session bus (Landlock ABI 9, or the syscall filter)"
            )
    detail = "shares the host's network namespace; " + "; ".join(
        blocked or ["nothing blocked"]
    )
    if holes:
        detail += "; NOT blocked: " + ", ".join(holes)
        status = DEGRADED if blocked else UNAVAILABLE
        return _row("network", status, detail, userns_fix, True, allowed)
    return _row("network", ENFORCED, detail, required=True)


def _network_not_given(
    config: SandboxConfig,
    base: ProtectionStatus,
    allowed: set[str],
    userns_fix: str,
) -> ProtectionStatus:
    """The second tier's network row for a policy of ``loopback`` or an
    allowlist: neither can be given without a network namespace of the run's
    own (a loopback of its own; a namespace whose only way out is the
    proxy). The run would get no network at all instead (``base``: what
    stops it), so the row is not enforced and blocks the run unless
    ``allow_degraded`` names ``network``."""
    if config.network.mode is NetworkMode.LOOPBACK:
        asked = "network 'loopback' (the run's own loopback)"
        missing = "no loopback of its own"
    else:
        count = len(config.network.allow)
        asked = (
            f"an allowlist ({count} {'entry' if count == 1 else 'entries'}) "
            "through the host-side proxy"
        )
        missing = "no proxy and no proxy variables"
    detail = (
        f"the policy asks for {asked}, which needs a network namespace of the run's "
        f"own; the second tier has none. The run gets no network at all instead "
        f"({missing}): "
        + base.detail.removeprefix("shares the host's network namespace; ")
    )
    fix = f"{userns_fix}; or network = 'none' in the policy"
    # TODO(#7): a root launcher could give the run a network namespace of
    # its own (and so loopback and the proxy) without user namespaces;
    # meanwhile such a policy is refused here unless accepted, and then runs
    # with no network. Less than the policy asked for is still not the run
    # it asked for: never reported as enforced.
    status = DEGRADED if base.status == ENFORCED else base.status
    return _row("network", status, detail, fix, True, allowed)


def _tree_kill_row() -> ProtectionStatus:
    return _row(
        "tree_kill",
        ENFORCED,
        "per-run monitor (child subreaper) kills every descendant when the run ends, "
        "setsid and double-forked ones included; should the monitor die first, the "
        "launcher (a subreaper too) kills what it left",
        required=True,
    )


def _filter_row(
    probe: HostProbe, config: SandboxConfig, allowed: set[str], tier: str
) -> ProtectionStatus:
    seccomp = probe.seccomp
    host = "host: seccomp filters " + (
        "with user notification"
        if seccomp.user_notif
        else "without user notification"
        if seccomp.available
        else "unavailable"
    )
    if not SECCOMP_FILTER_BUILT:
        return _row("syscall_filter", OFF, f"no syscall filter; {host}")
    if not seccomp.available:
        return _row(
            "syscall_filter",
            UNAVAILABLE,
            "the kernel has no seccomp filters",
            "a kernel built with CONFIG_SECCOMP_FILTER",
            True,
            allowed,
        )
    if not seccomp.user_notif:
        # Every denial is answered (and named) by the launcher through a
        # user notification: without it the filter cannot deny at all.
        return _row(
            "syscall_filter",
            UNAVAILABLE,
            "the kernel has no seccomp user notification",
            "Linux 5.5 or newer (SECCOMP_RET_USER_NOTIF with CONTINUE)",
            True,
            allowed,
        )
    return _row(
        "syscall_filter",
        ENFORCED,
        f"mode {config.mode.value} filter; {host}",
        required=True,
    )


def _limit_rows(
    probe: HostProbe, config: SandboxConfig, allowed: set[str]
) -> list[ProtectionStatus]:
    """memory, pids and cpu: limits of the whole tree through the run's cgroup
    (``limits.py``); a per-process rlimit stands in where ``allow_degraded``
    accepts it."""
    from . import limits as _limits  # the manager's side of issue #4

    rows = []
    found = _cgroup_probe(probe)
    for name, status, detail, fix, required in _limits.limit_rows(config, found=found):
        if name not in ("memory", "pids", "cpu"):
            continue
        rows.append(
            _row(
                name,
                {"enforced": ENFORCED, "degraded": DEGRADED, "unavailable": UNAVAILABLE}.get(status, OFF),
                detail,
                fix,
                required,
                allowed,
                # degraded only where the policy's allow_degraded accepts it
                accepted=status == "degraded",
            )
        )
    return rows


def _cgroup_probe(probe: HostProbe) -> Any:
    """The host probe's cgroup facts as ``cgroups.Probe`` (for recorded hosts)."""
    from . import cgroups as _cgroups

    facts = probe.cgroup
    parents: dict[str, str] = {}
    problems: dict[str, str] = {}
    for controller in (_cgroups.MEMORY, _cgroups.PIDS, _cgroups.CPU, _cgroups.CPUACCT):
        v1 = facts.v1.get(controller)
        if v1 is not None and v1.writable:
            parents[controller] = v1.own
        else:
            problems[controller] = "no writable cgroup v1 hierarchy for it"
    v1_backend = _cgroups.Backend(1, parents, problems, True) if facts.v1 else None
    v2_backend = None
    if facts.v2_own is not None:
        v2_parents: dict[str, str] = {}
        v2_problems: dict[str, str] = {}
        if facts.v2_writable:
            v2_parents[_cgroups.CPUACCT] = facts.v2_own
        for controller in (_cgroups.MEMORY, _cgroups.PIDS, _cgroups.CPU):
            if facts.v2_writable and controller in facts.v2_controllers:
                v2_parents[controller] = facts.v2_own
            else:
                v2_problems[controller] = "not available in a writable cgroup v2 directory"
        v2_backend = _cgroups.Backend(2, v2_parents, v2_problems, True)
    return _cgroups.Probe(v1_backend, v2_backend)


def _disabled(probe: HostProbe, config: SandboxConfig) -> Decision:
    off = "mode disabled"
    rows = (
        _row("namespaces", OFF, off),
        _row("mount_view", OFF, f"{off}: the whole host file system is visible"),
        _row("landlock", OFF, off),
        _row("syscall_filter", OFF, off),
        _row("network", OFF, f"{off}: the host network is reachable"),
        _row("process_isolation", OFF, off),
        _row(
            "tree_kill",
            DEGRADED,
            f"{off}: the process group is killed; setsid escapes it",
        ),
        *_limit_rows(probe, config, set()),
    )
    return Decision(tier=TIER_NONE, why=off, rows=rows, landlock_abi=probe.landlock.abi)


def _row(
    name: str,
    status: str,
    detail: str,
    fix: str = "",
    required: bool = False,
    allowed: set[str] | None = None,
    *,
    accepted: bool = False,
    inherent: bool = False,
) -> ProtectionStatus:
    """A row; ``inherent``: a weakness of the second tier by design, accepted
    with the tier itself."""
    if status != ENFORCED and (inherent or (allowed is not None and name in allowed)):
        accepted = True
    return ProtectionStatus(name, status, detail, fix, required, accepted)
