"""``stockade doctor``: what this host can enforce, before anything runs.

The report is the tier decision (``linux/tiers.py``) the manager makes
before each run, for a policy (the default one unless told otherwise), plus
the second tier's rows so that a user on a host without user namespaces sees
what accepting it would mean. The manager and the doctor call the same
``decide``; they cannot disagree.
"""

from __future__ import annotations

import shutil
import textwrap
from typing import Any

from .config import SandboxConfig, SandboxMode
from .linux import tiers as _tiers
from .linux.probe import HostProbe


def report(config: SandboxConfig, probe: HostProbe | None = None) -> dict[str, Any]:
    """The doctor's findings as a JSON-ready mapping.

    Args:
        config: the policy to check.
        probe: a probe to use instead of probing this host (tests).

    Returns:
        ``{"host", "policy", "decision", "second_tier", "ok"}``; ``ok`` is
        False when a run under ``config`` would be refused.
    """
    probe = probe if probe is not None else _tiers.probe_for(config)
    decision = _tiers.decide(probe, config)
    second = None
    if (
        config.mode is not SandboxMode.DISABLED
        and decision.tier != _tiers.TIER_LANDLOCK
    ):
        second = _tiers.decide(probe, config.with_changes(tier="landlock")).to_dict()
    return {
        "host": probe.to_dict(),
        "policy": {
            "mode": config.mode.value,
            "tier": config.tier,
            "allow_degraded": list(config.allow_degraded),
        },
        "decision": decision.to_dict(),
        "second_tier": second,
        "ok": decision.ok,
        "error": None if decision.ok else str(decision.error()),
    }


def render(data: dict[str, Any], width: int | None = None) -> str:
    """The report as text: host facts, then one row per protection."""
    width = width or min(max(shutil.get_terminal_size((100, 24)).columns, 80), 120)
    host = data["host"]
    lines = [
        f"stockade doctor: Linux {host['kernel']} {host['arch']}, caller uid "
        f"{host['euid']}"
    ]
    lines += ["  " + fact for fact in _host_facts(host)]
    policy = data["policy"]
    decision = data["decision"]
    allowed = ", ".join(policy["allow_degraded"]) or "nothing"
    lines.append("")
    lines.append(
        f"policy: mode {policy['mode']}, tier {policy['tier']}, accepts degraded: "
        f"{allowed}"
    )
    lines.append(f"-> tier {decision['tier']}: {decision['why']}")
    lines.append("")
    lines += _table(decision["rows"], width)
    if data.get("second_tier"):
        second = data["second_tier"]
        lines.append("")
        lines.append(
            "second tier (tier = 'landlock', or allow_degraded = ['namespaces'] "
            "on a host without user namespaces):"
        )
        lines += _table(second["rows"], width)
        if not second["ok"]:
            names = ", ".join(row["name"] for row in second["rows"] if row["blocking"])
            lines.append(f"  would also need allow_degraded to name: {names}")
    lines.append("")
    if data["ok"]:
        lines.append(f"verdict: runs under this policy use tier {decision['tier']}.")
    else:
        lines.append(
            f"verdict: runs under this policy are REFUSED here: {data['error']}"
        )
    return "\n".join(lines)


def _host_facts(host: dict[str, Any]) -> list[str]:
    facts = []
    bwrap, userns = host["bwrap"], host["userns"]
    if bwrap["path"]:
        how = "work" if userns["works"] else f"FAIL ({userns['error']})"
        who = (
            f" as uid {userns['tested_as_uid']}"
            if userns["tested_as_uid"] is not None
            else ""
        )
        facts.append(
            f"bubblewrap {bwrap['version']} at {bwrap['path']}: namespaces {how}{who}"
        )
    else:
        facts.append(f"bubblewrap: {bwrap['error']}")
    seccomp = host["seccomp"]
    filt = "seccomp filters" if seccomp["available"] else "no seccomp filters"
    if seccomp["user_notif"]:
        filt += " with user notification"
    if seccomp["mode"] == 2:
        filt += f" (this process is already filtered: {seccomp['filters']} filter(s))"
    landlock = host["landlock"]
    ll = (
        f"Landlock ABI {landlock['abi']}"
        if landlock["abi"]
        else f"no Landlock ({landlock['error']})"
    )
    facts.append(f"{filt}; {ll}")
    cgroup = host["cgroup"]
    parts = [f"cgroups {cgroup['layout']}"]
    if cgroup["v2_mount"]:
        ctl = " ".join(cgroup["v2_controllers"]) or "no controllers"
        rw = "writable" if cgroup["v2_writable"] else "not writable"
        parts.append(f"v2 {cgroup['v2_own']} ({ctl}; {rw})")
    if cgroup["v1"]:
        v1 = ", ".join(
            f"{name}{'' if item['writable'] else ' (not writable)'}"
            for name, item in sorted(cgroup["v1"].items())
        )
        parts.append(f"v1 {v1}")
    facts.append("; ".join(parts))
    if host.get("container"):
        facts.append(f"container: {host['container']}")
    if host.get("note"):
        facts.append(f"recorded probe: {host['note']}")
    return facts


def _status_text(row: dict[str, Any]) -> str:
    status = row["status"]
    if row["blocking"]:
        return f"{status} (BLOCKS)"
    if row["accepted"]:
        return f"{status} (accepted)"
    return status


def _table(rows: list[dict[str, Any]], width: int) -> list[str]:
    name_w = max(len(row["name"]) for row in rows) + 2
    status_w = max(len(_status_text(row)) for row in rows) + 2
    text_w = max(width - name_w - status_w - 2, 30)
    pad = " " * (2 + name_w + status_w)
    out = [
        "  " + "PROTECTION".ljust(name_w) + "STATUS".ljust(status_w) + "DETAIL / FIX"
    ]
    for row in rows:
        detail = textwrap.wrap(row["detail"], text_w) or [""]
        out.append(
            "  "
            + row["name"].ljust(name_w)
            + _status_text(row).ljust(status_w)
            + detail[0]
        )
        out += [pad + line for line in detail[1:]]
        if row["fix"] and row["status"] != "enforced":
            fix = textwrap.wrap("fix: " + row["fix"], text_w)
            out += [pad + line for line in fix]
    return out
