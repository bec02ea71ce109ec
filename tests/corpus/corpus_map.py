"""How each corpus case's policy maps onto stockade, and how its check is judged.

One explicit entry per case id. A new case in the corpus without an entry
here fails (it is never skipped silently): read its ``policy`` and ``check``
in ``cases/NNN-*/case.json`` and add an entry.

Every run is ``stockade run --no-log --workspace {workspace} OPTIONS -- <the
case's run argv>``, started by the caller under test (root, or uid 65534),
with the launch mode the case asks for. Placeholders such as ``{workspace}``
may be used in options. ``checks`` replace the README's verdict convention
(CONTAINED or PASS, exit 0); the host checks the case names (``fixture.py
verify``, ``output-check``, ptyrun's and kill-after's lines), "no ESCAPED line
anywhere" and "no process of the run outlives it" always apply.

Every run also has a twin on the second tier (``second_tier``: the same
options with ``--tier landlock``, labelled ``landlock`` or
``<label>-landlock``), since the corpus must hold on both tiers.

``todo`` marks a case that fails today because a feature is still being built
on another branch: it is an xfail(strict=True), so it turns into a failure
the day it starts passing and its entry must then be updated. ``run_todos``
does the same for single runs (by label); a ``TierLimit`` there marks a
second-tier twin that meets what that tier cannot give by construction
(documented in docs/hosts.md), not a gap being worked on. Where the
feature needs a CLI option that does not exist yet, the entry already names
it (the CLI rejects it today, which is the expected failure); if the option
lands under another name, ``test_cli_options_are_all_known`` asks for a
review of this file.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import re
from dataclasses import dataclass, field

from corpus_harness import Case, Check, Outcome, RunPlan, no_warn_lines, verdict_is

CALLERS = ("root", "unprivileged")

# Every option of `stockade run` the mapping has been reviewed against.
KNOWN_RUN_OPTIONS = frozenset(
    {
        "-h",
        "--help",
        "--mode",
        "--timeout",
        "--cpu-time",
        "--memory",
        "--disk",
        "--pids",
        "--max-processes",
        "--cpus",
        "--workspace",
        "--cwd",
        "--env",
        "--network",
        "--allow",
        "--resolve",
        "--config",
        "--tier",
        "--allow-degraded",
        "--json",
        "--max-output",
        "--truncate-output",
        "--quiet",
        "-q",
        "--no-log",
        "--ro",
        "--rw",
        "--hide",
        "--protect",
        "--no-protect",
        "--preset",
    }
)

# The second tier, forced (this host has user namespaces). Network 'none' is
# enforced there in full (the filter refuses the sockets, Landlock denies
# TCP); nothing needs accepting for it.
SECOND_TIER = ("--tier", "landlock")
# A policy of network 'loopback' cannot be given without a network namespace:
# on the second tier it is refused unless accepted, and then runs with no
# network at all (docs/hosts.md).
NETWORK_ACCEPTED = ("--allow-degraded", "network")


_HIDE_032 = (
    "--hide",
    "{workspace}/secrets/a.env",
    "--hide",
    "{workspace}/secrets/b.json",
    "--hide",
    "{workspace}/private",
)


@dataclass(frozen=True)
class Todo:
    """A known gap: the issue that closes it and what happens meanwhile."""

    issue: int
    meanwhile: str

    @property
    def reason(self) -> str:
        return f"TODO(#{self.issue}): {self.meanwhile}"


@dataclass(frozen=True)
class TierLimit:
    """A run that cannot pass on the second tier by construction: the case
    tests what only a namespace gives (a pid namespace, a private /tmp, a
    loopback of its own), which that tier exists to do without. Not a gap
    being closed: the tier reports the protection degraded, and runs only
    for a caller who accepted that (``--tier landlock`` or
    ``allow_degraded``). Still a strict xfail, so a run that starts passing
    is noticed."""

    meanwhile: str

    @property
    def reason(self) -> str:
        return f"second-tier limitation (docs/hosts.md): {self.meanwhile}"


@dataclass(frozen=True)
class Entry:
    """The stockade side of one case: its run(s), and a known gap if any.

    ``runs`` maps a label ("" for the plain run) to a plan; a case that the
    check asks to run more than once (028: uncapped and capped) has more.
    """

    runs: dict[str, RunPlan]
    todo: Todo | None = None
    callers: tuple[str, ...] = CALLERS
    slow: bool = False
    run_todos: dict[str, Todo | TierLimit] = field(default_factory=dict)

    def todo_for(self, label: str) -> Todo | TierLimit | None:
        return self.run_todos.get(label, self.todo)


def plain(
    *options: str, checks: tuple[Check, ...] | None = None, **kw: object
) -> dict[str, RunPlan]:
    return {"": RunPlan(options=options, checks=checks, **kw)}  # type: ignore[arg-type]


def second_tier(runs: dict[str, RunPlan]) -> dict[str, RunPlan]:
    """The runs, each followed by its twin on the second tier."""
    out: dict[str, RunPlan] = {}
    for label, plan in runs.items():
        out[label] = plan
        extra = SECOND_TIER
        if _asks_loopback(plan.options):
            extra += NETWORK_ACCEPTED
        twin = "-".join(part for part in (label, "landlock") if part)
        out[twin] = dataclasses.replace(plan, options=(*extra, *plan.options))
    return out


def _asks_loopback(options: tuple[str, ...]) -> bool:
    return any(
        a == "--network" and b == "loopback" for a, b in zip(options, options[1:])
    )


# -- case-specific checks, each as its case.json "check" says ---------------------


def contained_or_killed_for(termination: str, extra: Check | None = None) -> Check:
    """CONTAINED (exit 0), or no verdict and stockade names ``termination``."""

    def check(case: Case, out: Outcome) -> list[str]:
        if out.verdict == "CONTAINED":
            return verdict_is("CONTAINED")(case, out) + (
                extra(case, out) if extra else []
            )
        if out.verdict is None:
            problems = []
            if out.termination != termination:
                problems.append(
                    f"killed without a verdict, but stockade reported "
                    f"{out.termination!r}, expected {termination!r}"
                )
            return problems + (extra(case, out) if extra else [])
        return [f"verdict {out.verdict}, expected CONTAINED or a {termination} kill"]

    return check


def fork_count_at_most(limit: int) -> Check:
    """020: 'fork refused after N children', N <= limit."""

    def check(case: Case, out: Outcome) -> list[str]:
        for line in reversed(out.verdict_lines):
            m = re.search(r"fork refused after (\d+) children", line)
            if m:
                n = int(m.group(1))
                return (
                    []
                    if n <= limit
                    else [f"{n} children before fork failed, more than {limit}"]
                )
        return (
            []
            if out.verdict is None
            else ["no 'fork refused after N children' in the verdict"]
        )

    return check


def held_at_most(mib: int) -> Check:
    """021: the last 'INFO: holding N MiB' is at most ``mib``."""

    def check(case: Case, out: Outcome) -> list[str]:
        held = [
            int(m.group(1))
            for m in (re.match(r"INFO: holding (\d+) MiB", x) for x in out.lines)
            if m
        ]
        if held and held[-1] > mib:
            return [f"held {held[-1]} MiB before the end, more than {mib}"]
        return []

    return check


def disk_unchanged(slack_mib: int) -> Check:
    """023: no corpus-fill-* file left in the workspace, host free space back.

    Other work on the machine moves free space too, so "unchanged" is taken
    as within ``slack_mib``, below the case's 100 MiB budget.
    """

    def check(case: Case, out: Outcome) -> list[str]:
        problems = []
        left = fnmatch.filter(out.facts.get("workspace_files", []), "corpus-fill-*")
        if left:
            problems.append(f"fill files left in the workspace: {left}")
        lost = (out.facts["free_before"] - out.facts["free_after"]) / (1 << 20)
        if lost > slack_mib:
            problems.append(f"host free space dropped by {lost:.0f} MiB during the run")
        return problems

    return check


def exit_status_is(code: int) -> Check:
    def check(case: Case, out: Outcome) -> list[str]:
        return (
            []
            if out.exit_status == code
            else [f"CLI exit status {out.exit_status}, expected {code}"]
        )

    return check


def returned_within(seconds: float) -> Check:
    """025's own criterion: the CLI returns within the case's bound (its wall
    time measured by the harness around the CLI process)."""

    def check(case: Case, out: Outcome) -> list[str]:
        if out.wall_s > seconds:
            return [
                f"the CLI returned after {out.wall_s:.2f}s, the case allows {seconds}s"
            ]
        return []

    return check


def truncation_reported(case: Case, out: Outcome) -> list[str]:
    """028: a stream the caller got short must be flagged by stockade and cut
    at the configured cap, never silently."""
    problems = []
    cap = None
    if out.result is not None:
        cap = out.result.get("limits", {}).get("max_output_bytes")
    for line in out.host_info:
        m = re.match(r"INFO: (stdout|stderr) truncated: (\d+) of (\d+) bytes", line)
        if not m:
            continue
        stream, got = m.group(1), int(m.group(2))
        if out.result is None:
            problems.append(
                f"{stream} truncated in passthrough mode (stockade reports nothing)"
            )
            continue
        if out.result.get(f"{stream}_truncated") is not True:
            problems.append(
                f"{stream} came out short ({got} bytes), {stream}_truncated not set"
            )
        # stderr's comparison drops everything from the payload's summary line on
        if stream == "stdout" and got != cap:
            problems.append(f"stdout cut at {got} bytes, the cap is {cap}")
    return problems


def termination_is(expected: str) -> Check:
    def check(case: Case, out: Outcome) -> list[str]:
        return (
            []
            if out.termination == expected
            else [f"termination {out.termination!r}, expected {expected!r}"]
        )

    return check


# -- the mapping -----------------------------------------------------------------

MAPPING: dict[str, Entry] = {
    # "Interactive terminal, defaults otherwise; no TIOCSTI into the caller's
    # tty." Defaults: stockade passes the terminal through as stdio;
    # bubblewrap's --new-session (always on) starts the program in a session
    # without a controlling terminal, and every mode's syscall filter refuses
    # TIOCSTI and TIOCLINUX outright (EPERM, low 32 bits of the request).
    # Second tier: the run's monitor starts a new session, so the program has
    # no controlling terminal either; the same filter refuses TIOCSTI.
    "001": Entry(second_tier(plain())),
    # "seccomp denies keyctl, add_key, request_key" is part of every enforcing
    # mode's filter; moderate is the default. keyctl gets EPERM natively; a
    # call with the x32 bit fails the filter's architecture check and its
    # process is killed (the probe runs in a forked child). Same filter on
    # the second tier.
    "002": Entry(second_tier(plain())),
    # "Network denied; file system = workspace only": both are stockade's
    # defaults (empty network namespace; {outside} is not in the mount view),
    # and every mode's syscall filter refuses io_uring_setup (EPERM). Second
    # tier: the filter refuses inet sockets and io_uring_setup, the ruleset
    # grants nothing in {outside}.
    "004": Entry(second_tier(plain())),
    # "Only stdin, stdout, stderr pass in": the launcher puts stdio (and
    # bubblewrap's own descriptors, closed before the program runs) in fixed
    # slots and closes everything else; the check also wants no WARN lines.
    # The second tier's launcher child does the same before its exec.
    "005": Entry(second_tier(plain(checks=(verdict_is("CONTAINED"), no_warn_lines)))),
    # "Host processes invisible": always a new pid namespace with its own /proc.
    # Second tier: no pid namespace, /proc is the host's, but Landlock grants
    # only the program's own entries and system-wide figures: /proc cannot
    # be listed, other processes' entries not opened.
    "006": Entry(second_tier(plain())),
    # "Signal only own processes": the host's victim is outside the pid
    # namespace (ESRCH); for the unprivileged caller it has the same uid, so
    # only the namespace protects it. Second tier: Landlock's signal scoping
    # (ABI 6) refuses signals outside the run's domain (EPERM).
    "007": Entry(second_tier(plain())),
    # "Network denied": --network none (the default), an empty network
    # namespace. Also under --network loopback, whose own loopback must not
    # lead to the host's either. Second tier: the filter refuses inet sockets
    # and Landlock denies TCP connect; loopback is accepted degraded there
    # (no network at all).
    "010": Entry(
        second_tier(
            {
                "": RunPlan(("--network", "none")),
                "loopback": RunPlan(("--network", "loopback")),
            }
        )
    ),
    # "Read/write: {workspace}; {outside} denied": the default mount view shows
    # the workspace and system directories only, so links into {outside}
    # dangle; the second tier grants nothing there. "hide" names {outside}
    # explicitly (it is not visible in the first place: nothing to mount).
    "012": Entry(
        second_tier(
            {
                "": RunPlan(()),
                "hide": RunPlan(("--hide", "{outside}")),
            }
        )
    ),
    # "Workspace writable except .git/hooks and .git/config": protected paths
    # by default (issue 6), so no option is needed. First tier: read-only
    # mounts, .git pinned; second tier: Landlock keeps them read-only (the
    # workspace root then accepts no new entries, docs/filesystem.md).
    "015": Entry(second_tier(plain())),
    # "Only PATH, HOME, LANG/LC_*, TERM pass in; secrets invisible also in
    # helpers' environ/cmdline": the default scrubbed environment (PATH,
    # LANG, LANGUAGE, TERM, TZ, LC_*, a private HOME); bubblewrap is exec'd
    # with that environment and reads its options from a memfd (--args), so
    # the sandbox's pid 1 shows neither the caller's variables nor the policy.
    # Second tier: the program is exec'd with the scrubbed environment; the
    # monitor's /proc entries are out of its reach (Landlock's ptrace rule).
    "017": Entry(second_tier(plain())),
    # "No tracing outside": the victim is not in the pid namespace. Second
    # tier: Landlock refuses ptrace of processes outside the run's domain.
    "018": Entry(second_tier(plain())),
    # "Hardened default seccomp profile": the filter's always-denied set, in
    # the default (moderate) mode, on both tiers.
    "019": Entry(second_tier(plain())),
    # "Processes/threads: at most 64 for the whole sandbox; wall 30 s":
    # --pids 64, the run's pids cgroup (issue 4). Never run unsandboxed.
    # Second tier: the same cgroup, joined before the monitor forks.
    "020": Entry(
        second_tier(
            plain(
                "--pids",
                "64",
                "--timeout",
                "30",
                checks=(contained_or_killed_for("pids_limit", fork_count_at_most(72)),),
            )
        ),
    ),
    # "Memory 256 MiB for the whole sandbox; wall 60 s": --memory 256, the
    # run's memory cgroup (issue 4): the OOM killer ends it as memory_limit.
    # Same cgroup on the second tier.
    "021": Entry(
        second_tier(
            plain(
                "--memory",
                "256",
                "--timeout",
                "60",
                checks=(contained_or_killed_for("memory_limit", held_at_most(320)),),
            )
        )
    ),
    # "Disk: at most 100 MiB in the workspace and in the private /tmp (sized
    # mounts, quota or file-size limit); wall 60 s": --disk 100 sizes the
    # private tmpfs areas and sets RLIMIT_FSIZE to 100 MiB (EFBIG in the
    # workspace), and is the measured budget of the workspace as a whole.
    # Second tier: the host's /tmp is not writable at all; RLIMIT_FSIZE and
    # the workspace budget as in the first tier.
    "023": Entry(
        second_tier(
            plain(
                "--disk",
                "100",
                "--timeout",
                "60",
                checks=(verdict_is("CONTAINED"), disk_unchanged(50)),
            )
        )
    ),
    # "CPU time 2 s for the whole sandbox; wall 20 s": --cpu-time 2, the tree's
    # CPU time read from its cgroup (issue 4); the tree is killed at it. Same
    # cgroup on the second tier.
    "024": Entry(
        second_tier(
            plain(
                "--cpu-time",
                "2",
                "--timeout",
                "20",
                checks=(contained_or_killed_for("cpu_limit"),),
            )
        ),
        slow=True,
    ),
    # "Wall timeout 2 s; the timeout ends every process": --timeout 2. The CLI
    # must return within 3 s with the timeout status (124) although a setsid
    # grandchild holds the pipes; the pid namespace ends them all. Second
    # tier: the run's monitor (a child subreaper) kills every descendant.
    "025": Entry(
        second_tier(
            plain(
                "--timeout",
                "2",
                pipes=True,
                checks=(
                    returned_within(3.0),
                    exit_status_is(124),
                    termination_is("timeout"),
                ),
            )
        ),
        slow=True,
    ),
    # "Processes never outlive the CLI, even SIGKILLed; wall 30 s": --timeout 30.
    # The launcher dies with the CLI (its control socket closes; the run's
    # bubblewrap has --die-with-parent), and the pid namespace goes with it.
    # Second tier: each monitor has the launcher as its parent-death signal
    # and kills its tree.
    "027": Entry(second_tier(plain("--timeout", "30", checks=())), slow=True),
    # "Wall 30 s; output uncapped, or capped with an explicit truncation report."
    # Plain run: passthrough (the CLI's stdout/stderr are the program's, not
    # captured, so byte-exact). "cap": --json captures with a cap of 1 MiB per
    # stream, and --truncate-output keeps the program running past it so that
    # it writes its summary; the result flags each cut stream. The payload
    # gets --stdout-mib 256 as the check asks. Output handling is the same on
    # both tiers.
    "028": Entry(
        second_tier(
            {
                "": RunPlan(
                    ("--timeout", "30"), checks=(exit_status_is(0), truncation_reported)
                ),
                "cap": RunPlan(
                    ("--timeout", "30", "--json", "--max-output", "1", "--truncate-output"),
                    payload_args=("--stdout-mib", "256"),
                    checks=(
                        exit_status_is(0),
                        termination_is("exited"),
                        truncation_reported,
                    ),
                ),
            }
        )
    ),
    # "The product's default policy, with a process limit of at least 32":
    # defaults (no process limit today; issue 4's default must stay >= 32).
    # The filter answers clone3 with ENOSYS, so libc falls back to clone, on
    # both tiers.
    "030": Entry(second_tier(plain())),
    # "Network denied; writable workspace and private /tmp", while the
    # sandbox's own loopback must work: that is --network loopback (the host's
    # loopback stays unreachable; 'none' refuses inet sockets in the syscall
    # filter). Workspace and private /tmp are defaults. Second tier: neither
    # a private /tmp nor a loopback of its own (docs/hosts.md, known
    # limitations): the case fails there.
    "031": Entry(
        second_tier(plain("--network", "loopback")),
        run_todos={
            "landlock": TierLimit(
                "no mount or network namespace without user namespaces: no "
                "private /tmp (the host's is not writable; TMPDIR points into "
                "the run's directory) and no loopback of its own (network "
                "'loopback' accepted as degraded runs with no network); the "
                "case fails there",
            )
        },
    ),
    # "Deny 2 files + 1 directory inside the workspace": hidden paths (issue
    # 6). First tier: an empty mode-000 file over each file, an empty
    # read-only mode-000 tmpfs over the directory (writes fail, none lands
    # silently); second tier: no Landlock right on them.
    "032": Entry(second_tier({"": RunPlan(_HIDE_032)})),
}
