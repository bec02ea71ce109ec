"""Text and Markdown views of the syscall filters, made from the data.

``stockade filters show`` prints ``render_text``/``SyscallFilter.describe``;
``stockade filters doc`` prints ``render_markdown``, the generated part of
docs/filters.md (a test fails when the committed page is stale).
"""

from __future__ import annotations

from ..network.policy import allowed_socket_families
from . import syscall_groups as data
from .seccomp import SyscallFilter

BEGIN = "<!-- BEGIN GENERATED: stockade filters doc --write docs/filters.md -->"
END = "<!-- END GENERATED -->"


def _cell(group: data.Group, mode: str) -> str:
    if mode in group.allowed_in:
        return "allow"
    return group.deny


def _args_cell(text: str) -> str:
    return text.replace("|", "\\|")


def _family_names(network: str) -> list[str]:
    names = {1: "AF_UNIX", 2: "AF_INET", 10: "AF_INET6", 16: "AF_NETLINK"}
    return [names.get(f, str(f)) for f in sorted(allowed_socket_families(network))]


def render_markdown() -> str:
    """The generated section of docs/filters.md (between BEGIN and END)."""
    lines = [BEGIN, ""]
    lines += [
        "### Groups",
        "",
        "`allow`: the mode allows the group's calls; otherwise what a call "
        "gets: an errno, or `kill` (the calling process is killed). Every "
        "denial is reported by name in the result's `violations`, but for "
        "bubblewrap's set-up patterns of `mount` (and in strict two "
        "`socket` calls), below.",
        "",
        "| group | what | strict | moderate | permissive | why denied | calls |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for group in data.GROUPS:
        cells = [_cell(group, mode) for mode in data.MODES]
        calls = " ".join(f"`{c}`" for c in group.calls)
        lines.append(
            f"| {group.name} | {group.summary} | {' | '.join(cells)} | "
            f"{group.why or '-'} | {calls} |"
        )
    lines += [
        "",
        "### Calls allowed with some arguments only",
        "",
        "A call whose arguments match none of the allowed patterns is denied "
        "(and named, with the arguments that made it denied).",
        "",
        "| calls | strict | moderate | permissive | otherwise | why |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for calls, per_mode in data.ARGUMENT_RULES.items():
        errname, why = data.ARGUMENT_RULE_WHY[calls]
        cells = [_args_cell(per_mode[mode]) for mode in data.MODES]
        lines.append(f"| {calls} | {' | '.join(cells)} | {errname} | {why} |")
    lines += _self_only_markdown()
    lines += _setup_patterns_markdown()
    lines += [
        "",
        "### Special cases",
        "",
        "| calls | what the filter does | why |",
        "| --- | --- | --- |",
        f"| {', '.join(data.ENOSYS_IN_FILTER)} | ENOSYS, answered in the filter, "
        "not reported | their flags and mode live in memory the filter cannot "
        "read; libc falls back to clone/openat, whose arguments it checks |",
        f"| {', '.join(data.NOTIFIED_ALWAYS)} | always reported to the supervisor, "
        "always continue | the first one marks the program's start |",
        f"| {', '.join(data.LAUNCHER_NEEDS)} | always allowed | the launcher "
        "child sends the filter's listener before exec |",
        "| x32 calls (nr with bit 0x40000000), i386 `int 0x80` calls | kill, "
        "reported as `x32:<name>` / `i386:<name>` | foreign ABIs bypass "
        "per-number rules |",
        "| any call the tables do not know | ENOSYS | newer than this filter: "
        "programs fall back as on an older kernel |",
        "",
        "Network policies and sockets (moderate and permissive; strict "
        "creates no sockets): "
        + ", ".join(
            f"`{name}`: {', '.join(_family_names(name))}" for name in data.NETWORK_MODES
        )
        + ".",
        "",
        "### Compatibility matrix",
        "",
        "Measured by `tests/test_seccomp_compat.py` on the real kernel through "
        "the real sandbox, in both tiers (bubblewrap's namespaces and the "
        "Landlock tier); a cell that stops matching fails the suite.",
        "",
        "| program | strict | moderate | permissive |",
        "| --- | --- | --- | --- |",
    ]
    for _key, (label, cells) in data.COMPATIBILITY.items():
        lines.append(f"| {label} | {' | '.join(cells[m] for m in data.MODES)} |")
    lines += ["", END]
    return "\n".join(lines) + "\n"


def _self_only_markdown() -> list[str]:
    errname, why = data.SELF_ONLY_WHY
    lines = [
        "",
        "### Second tier: other processes by pid",
        "",
        "In the second tier (no pid namespace) these calls, where the mode or "
        "the policy allows them at all, are allowed on the caller itself only, "
        "named by 0; any other target is refused with "
        f"{errname} and named (`detail`: the pid, `PRIO_USER`, ...): {why}. "
        "The first tier allows them as the mode says (its pids are the "
        "sandbox's own).",
        "",
        "| calls | allowed | otherwise |",
        "| --- | --- | --- |",
    ]
    for calls, text in data.SELF_ONLY_TEXT.items():
        lines.append(f"| {calls} | {text} | {errname} |")
    return lines


def _pattern_cell(flt: SyscallFilter, pattern: data.SetupPattern) -> str:
    for rule, _decision, answer in flt.bwrap_patterns():
        if rule is pattern:
            return answer
    return "allowed"


def _setup_patterns_markdown() -> list[str]:
    filters = [SyscallFilter(mode) for mode in data.MODES]
    lines = [
        "",
        "### Refused without a name: bubblewrap's set-up patterns",
        "",
        "In the first tier bubblewrap builds the sandbox under the filter, "
        "with calls the program is denied. The filter lets these argument "
        "patterns of its 28 to 48 `mount` calls per launch (and in strict "
        "two sockets) through, so that they cost no round trip to the "
        "supervisor, and bubblewrap installs a second filter right before it "
        "execs the program (`--add-seccomp-fd`), which refuses the same "
        "patterns to the program and all its descendants with the answer "
        "below. These refusals are **not named** in `violations` (that filter "
        "has no listener); every other pattern of these calls is refused and "
        "named as above, and so are `pivot_root`, `umount2` and `unshare`, "
        "which bubblewrap makes twice each: the supervisor lets bubblewrap's "
        "continue and refuses the program's. `allowed`: the mode allows the "
        "pattern anyway (network policy `none` shown). Without "
        "`--add-seccomp-fd` (bubblewrap before 0.5) nothing here applies and "
        "every set-up call is notified; the Landlock tier has no bubblewrap "
        "and no such patterns.",
        "",
        "| call | arguments | strict | moderate | permissive | bubblewrap's step |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for pattern in data.BWRAP_SETUP:
        cells = [_pattern_cell(flt, pattern) for flt in filters]
        lines.append(
            f"| {pattern.call} | {_args_cell(pattern.arguments)} | "
            f"{' | '.join(cells)} | {pattern.why} |"
        )
    return lines


def replace_generated(text: str) -> str:
    """``text`` with its generated section replaced by the current one.

    Raises:
        ValueError: the markers are missing.
    """
    start = text.find(BEGIN)
    end = text.find(END)
    if start < 0 or end < 0 or end < start:
        raise ValueError("the page lacks the generated-section markers")
    return text[:start] + render_markdown() + text[end + len(END) + 1 :]


def render_text(flt: SyscallFilter) -> str:
    """``stockade filters show --mode M``: what one filter allows and denies."""
    described = flt.describe()
    lines = [
        f"mode {flt.mode}, network {flt.network}, {flt.machine}: "
        f"{len(described['allowed'])} calls allowed",
        "",
    ]
    by_group: dict[str, list[str]] = {}
    denied_by_group: dict[str, list[str]] = {}
    for decision in flt.decisions():
        if decision.in_filter:
            continue
        target = by_group if decision.action == "allow" else denied_by_group
        label = decision.name
        if decision.action == "allow" and decision.conditions:
            label += "*"
        target.setdefault(decision.group, []).append(label)
    lines.append("allowed (* = some arguments only):")
    for group, names in by_group.items():
        lines.append(f"  {group}: {' '.join(sorted(names))}")
    lines += ["", "allowed with some arguments only:"]
    for calls, per_mode in data.ARGUMENT_RULES.items():
        lines.append(f"  {calls}: {per_mode[flt.mode]}")
    if flt.host_pids:
        lines += ["", "second tier, on the caller itself (0) only:"]
        for calls, text in data.SELF_ONLY_TEXT.items():
            lines.append(f"  {calls}: {text}")
    lines += ["", "denied (answer; why):"]
    groups = {g.name: g for g in data.GROUPS}
    for group, names in denied_by_group.items():
        info = groups.get(group)
        answer = info.deny if info else "EPERM"
        why = info.why if info else "denied by the policy"
        lines.append(f"  {group} ({answer}; {why}): {' '.join(sorted(names))}")
    patterns = flt.bwrap_patterns()
    if patterns:
        lines += ["", "refused without a name in the first tier (bubblewrap's set-up "
                  "patterns, refused by the filter bubblewrap installs before exec):"]
        for pattern, _decision, answer in patterns:
            lines.append(f"  {pattern.call} {pattern.arguments}: {answer}")
    lines += [
        "",
        f"answered ENOSYS in the filter: {' '.join(data.ENOSYS_IN_FILTER)}",
        "foreign ABIs (x32, i386): kill; unknown calls: ENOSYS",
    ]
    for warning in flt.warnings:
        lines.append(f"warning: {warning}")
    return "\n".join(lines) + "\n"


def render_overview() -> str:
    """``stockade filters show`` without a mode: groups by mode."""
    width = max(len(g.name) for g in data.GROUPS)
    # each column as wide as its longest cell, plus two spaces
    widths = [
        max(len(mode), *(len(_cell(g, mode)) for g in data.GROUPS)) + 2
        for mode in data.MODES
    ]
    header = f"{'group':<{width}}  " + "".join(
        f"{mode:<{w}}" for mode, w in zip(data.MODES, widths)
    )
    lines = [header + "calls"]
    for group in data.GROUPS:
        cells = "".join(f"{_cell(group, m):<{w}}" for m, w in zip(data.MODES, widths))
        lines.append(f"{group.name:<{width}}  {cells}{len(group.calls)}")
    lines += ["", "allowed with some arguments only:"]
    for calls, per_mode in data.ARGUMENT_RULES.items():
        lines.append(f"  {calls}:")
        for mode in data.MODES:
            lines.append(f"    {mode}: {per_mode[mode]}")
    lines.append("")
    lines.append("`stockade filters show --mode M` lists the calls of one mode.")
    return "\n".join(lines) + "\n"
