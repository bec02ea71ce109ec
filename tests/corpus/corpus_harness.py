"""Run one acceptance-corpus case against the real stockade CLI.

The corpus (``../shared/corpus`` next to this repository, or ``$STOCKADE_CORPUS``)
is product-independent: each case describes its policy in words, a payload
that runs inside the sandbox, a fixture on the host, a launch mode and host
checks. This module does the product-independent half of the work, the way
the corpus's own ``lib/run_case.py`` does it, with three differences:

* the fixture lives under /var/tmp (``fixture.py start --root``): the sandbox
  has a private /tmp, so a workspace under the host's /tmp would be hidden;
* the payload is copied into the workspace (``{payload}``), the only place
  the mount view shows that the corpus does not also write to;
* a case can run as root or as an unprivileged caller (``tests/_unpriv.py``);
  for the latter the fixture is started as that user too, so that its files
  and its victim process belong to the caller, as they would in real use, and
  only the sandbox (not file permissions) stands between them and the payload.

``corpus_map.py`` holds the product-specific half: which stockade options a
case's policy means, and how its ``check`` text is judged.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CORPUS_ENV = "STOCKADE_CORPUS"
REPO = Path(__file__).resolve().parents[2]
DEFAULT_CORPUS = REPO.parent / "shared" / "corpus"

# Name of the payload's copy in the workspace (no "corpus-" prefix: the
# fixture's globs and process tags all start with it).
PAYLOAD_NAME = ".case-payload.py"
FIXTURE_LIFETIME_S = 120
VERDICT = re.compile(r"^(ESCAPED|CONTAINED|INCONCLUSIVE|PASS|FAIL):")
HOSTLINE = re.compile(r"^(HOST-[A-Z-]+)")
CLI_EXIT_TIMEOUT = 124
# Options that would run a payload without the sandbox: never in this harness.
UNSANDBOXED_OPTIONS = ("--mode=disabled", "--config")


class CaseFailed(AssertionError):
    """The case's own check failed (as opposed to a harness error)."""


def locate_corpus() -> tuple[Path | None, str]:
    """Find the corpus: ``$STOCKADE_CORPUS``, else ``<repo>/../shared/corpus``.

    Returns:
        (path, "") or (None, the reason it is not available).
    """
    named = os.environ.get(CORPUS_ENV)
    path = Path(named) if named else DEFAULT_CORPUS
    if not (path / "cases").is_dir():
        if named:
            return None, f"{CORPUS_ENV}={named} has no cases/ directory"
        return None, (
            f"acceptance corpus not found at {path} (a plain clone has none); "
            f"set {CORPUS_ENV} to its directory to run these tests"
        )
    return path, ""


def discover(corpus: Path) -> list[Path]:
    """Every case directory, by name (cases are added over time)."""
    return sorted(p for p in (corpus / "cases").glob("[0-9]*") if p.is_dir())


@dataclass(frozen=True)
class Case:
    dir: Path
    data: dict[str, Any]

    @classmethod
    def load(cls, case_dir: Path) -> Case:
        with open(case_dir / "case.json", encoding="utf-8") as fh:
            return cls(case_dir, json.load(fh))

    @property
    def id(self) -> str:
        return str(self.data["id"])

    @property
    def category(self) -> str:
        return str(self.data["category"])

    @property
    def launch(self) -> dict[str, Any]:
        return self.data.get("launch") or {}

    @property
    def limits(self) -> dict[str, Any]:
        return self.data.get("limits") or {}

    @property
    def payload(self) -> Path:
        return self.dir / self.data.get("payload", "payload.py")


# -- the fixture -----------------------------------------------------------------


class Fixture:
    """``lib/fixture.py`` for one run: started as the caller, checked as root."""

    def __init__(self, corpus: Path, case: Case, caller: Any, base: Path) -> None:
        self.tool = str(corpus / "lib" / "fixture.py")
        self.case = case
        self.caller = caller
        self.base = base
        self.root = base / "fixture"
        self.state: dict[str, Any] = {}

    def start(self) -> None:
        features = ",".join(self.case.data.get("fixture") or []) or "none"
        argv = self.caller.run_python(
            self.tool,
            "start",
            "--root",
            str(self.root),
            "--features",
            features,
            "--lifetime",
            str(FIXTURE_LIFETIME_S),
        )
        proc = subprocess.run(
            argv,
            env=self.caller.env,
            cwd=self.base,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if proc.returncode != 0:
            raise RuntimeError(
                f"fixture start failed ({proc.returncode}): {proc.stderr.strip()}"
            )
        self.state = json.loads(proc.stdout)

    def run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """A fixture sub-command run by the harness itself (root)."""
        return subprocess.run(
            [sys.executable, self.tool, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def stop(self) -> None:
        if self.state:
            self.run("stop", str(self.root))


# -- one run ---------------------------------------------------------------------


@dataclass
class Outcome:
    """What one run of a case produced, as the checks see it."""

    argv: list[str]
    rc: int | None
    stdout: str
    stderr: str
    wall_s: float
    timed_out: bool = False
    result: dict[str, Any] | None = None  # the CLI's --json result
    host: list[str] = field(default_factory=list)  # HOST-* lines, all sources
    host_info: list[str] = field(default_factory=list)  # INFO lines of host checks
    leftovers: list[str] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)  # measured by the harness

    @property
    def program_output(self) -> str:
        """The payload's stdout and stderr (from the JSON result when captured)."""
        if self.result is not None:
            return f"{self.result.get('stdout', '')}\n{self.result.get('stderr', '')}"
        return f"{self.stdout}\n{self.stderr}"

    @property
    def lines(self) -> list[str]:
        return self.program_output.splitlines()

    @property
    def verdict_lines(self) -> list[str]:
        return [line for line in self.lines if VERDICT.match(line)]

    @property
    def verdict(self) -> str | None:
        lines = self.verdict_lines
        return lines[-1].split(":", 1)[0] if lines else None

    @property
    def exit_status(self) -> int | None:
        """The CLI's exit status; under ptyrun it is reported on a HOST line."""
        for line in self.host:
            if line.startswith("HOST-EXIT-STATUS:"):
                return int(line.split(":", 1)[1])
        return self.rc

    @property
    def termination(self) -> str | None:
        """Why the run ended, as stockade reported it (JSON or summary line)."""
        if self.result is not None:
            return str(self.result.get("termination"))
        for line in reversed(self.stderr.splitlines()):
            if line.startswith("stockade: "):
                how = line[len("stockade: ") :].split(";", 1)[0].strip()
                if how.startswith("exited"):
                    return "exited"
                if how.startswith("killed by"):
                    return "signaled"
                return how.split(" ", 1)[0]
        return None

    def describe(self) -> str:
        def tail(text: str, n: int = 12) -> str:
            lines = [line[:300] for line in text.splitlines()]
            return "\n    ".join(lines[-n:]) or "(empty)"

        parts = [
            "argv: " + " ".join(self.argv),
            (
                f"exit status: {self.exit_status}  wall: {self.wall_s:.2f}s  "
                f"termination: {self.termination}"
                + ("  (harness timeout)" if self.timed_out else "")
            ),
            "verdict: " + (self.verdict_lines[-1] if self.verdict_lines else "(none)"),
            "host: " + ("; ".join(self.host + self.host_info) or "(no host check)"),
        ]
        if self.leftovers:
            parts.append("leftover processes: " + "; ".join(self.leftovers))
        if self.result is not None:
            brief = {
                k: v
                for k, v in self.result.items()
                if k not in ("stdout", "stderr", "protections")
            }
            parts.append("result: " + json.dumps(brief)[:600])
            parts.append("program output (tail):\n    " + tail(self.program_output))
        else:
            parts.append("stdout (tail):\n    " + tail(self.stdout))
            parts.append("stderr (tail):\n    " + tail(self.stderr))
        return "\n  ".join(parts)


Check = Callable[[Case, Outcome], list[str]]


@dataclass(frozen=True)
class RunPlan:
    """How to run a case once (from the mapping): options and checks."""

    options: tuple[str, ...]
    payload_args: tuple[str, ...] = ()
    pipes: bool = False  # capture through pipes instead of files
    checks: tuple[Check, ...] | None = None  # None: the README's verdict convention


def assert_sandboxed(case: Case, options: Sequence[str]) -> None:
    """Refuse option sets that could run a payload without the sandbox.

    Cases marked ``safe_unsandboxed: false`` (fork, memory and disk bombs) must
    never run outside it; no case here has a reason to.
    """
    flat = " ".join(options)
    for bad in UNSANDBOXED_OPTIONS:
        if bad in flat:
            raise RuntimeError(
                f"case {case.id}: option {bad!r} is not allowed in the corpus harness"
            )
    for i, opt in enumerate(options):
        if opt == "--mode" and i + 1 < len(options) and options[i + 1] == "disabled":
            raise RuntimeError(
                f"case {case.id}: --mode disabled would run the payload unsandboxed"
            )


def execute(
    corpus: Path, case: Case, plan: RunPlan, caller: Any, base: Path
) -> Outcome:
    """Run one case once: fixture, launch mode, host checks (no judging).

    Args:
        corpus: the corpus directory (``locate_corpus()``).
        case: the case to run.
        plan: its options and checks from the mapping.
        caller: a ``_unpriv.Caller``; the fixture is started as it, and the
            CLI runs as it.
        base: an empty directory the caller owns; fixture and captured
            output go there (the caller of ``execute`` removes it).

    Returns:
        The outcome, for ``judge``.

    Raises:
        RuntimeError: the fixture did not start, or the options would run
            the payload unsandboxed.
    """
    fixture = Fixture(corpus, case, caller, base)
    fixture.start()
    try:
        return _execute(fixture, case, plan, caller, base)
    finally:
        fixture.stop()


def _execute(
    fixture: Fixture, case: Case, plan: RunPlan, caller: Any, base: Path
) -> Outcome:
    state = fixture.state
    workspace = Path(state["workspace"])
    payload = workspace / PAYLOAD_NAME
    shutil.copyfile(case.payload, payload)
    os.chmod(payload, 0o644)
    subst = dict(state, payload=str(payload), case=str(case.dir))

    def fmt(items: Sequence[str]) -> list[str]:
        return [str(x).format(**subst) for x in items]

    options = fmt(plan.options)
    assert_sandboxed(case, options)
    cli = caller.stockade(
        "run",
        "--no-log",
        "--workspace",
        str(workspace),
        *options,
        "--",
        *fmt(case.data["run"]),
        *fmt(plan.payload_args),
    )
    launch = case.launch
    timeout = float(case.limits.get("wall_timeout_s", 30)) + 15
    argv = list(cli)
    if launch.get("pty"):
        argv = [
            sys.executable,
            str(Path(fixture.tool).with_name("ptyrun.py")),
            "--timeout",
            str(timeout),
            "--",
            *argv,
        ]
    if launch.get("leak_fds") or launch.get("env_secrets"):
        flags = ["--leak-fds"] * bool(launch.get("leak_fds")) + [
            "--env-secrets"
        ] * bool(launch.get("env_secrets"))
        argv = [
            sys.executable,
            fixture.tool,
            "launch",
            str(fixture.root),
            *flags,
            "--",
            *argv,
        ]
    if launch.get("kill_after_s"):
        argv = [
            sys.executable,
            fixture.tool,
            "kill-after",
            str(fixture.root),
            "--after",
            str(launch["kill_after_s"]),
            "--",
            *argv,
        ]
        timeout += 10
    cwd = str(case.data.get("cwd", "{workspace}")).format(**subst)

    # Free space of the workspace's file system, before and after (disk cases).
    facts: dict[str, Any] = {"free_before": _free_bytes(workspace)}
    out_dir = base / "output"
    out_dir.mkdir()
    t0 = time.monotonic()
    if plan.pipes:
        proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env=caller.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        timed_out = False
        try:
            raw_out, raw_err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            _stop(proc)
            raw_out, raw_err = proc.communicate()
        wall = time.monotonic() - t0
        (out_dir / "stdout").write_bytes(raw_out)
        (out_dir / "stderr").write_bytes(raw_err)
    else:
        with open(out_dir / "stdout", "wb") as fo, open(out_dir / "stderr", "wb") as fe:
            proc = subprocess.Popen(
                argv,
                cwd=cwd,
                env=caller.env,
                stdin=subprocess.DEVNULL,
                stdout=fo,
                stderr=fe,
            )
            timed_out = False
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
                _stop(proc)
            wall = time.monotonic() - t0
    stdout = (out_dir / "stdout").read_bytes().decode("utf-8", "replace")
    stderr = (out_dir / "stderr").read_bytes().decode("utf-8", "replace")
    outcome = Outcome(
        argv, proc.returncode, stdout, stderr, wall, timed_out, facts=facts
    )
    if "--json" in options:
        try:
            outcome.result = json.loads(stdout)
        except ValueError:
            outcome.result = None

    if launch.get("pty") or launch.get("kill_after_s"):
        outcome.host += [line for line in stdout.splitlines() if HOSTLINE.match(line)]
    if case.data.get("host_expect"):
        verify = fixture.run(
            "verify", str(fixture.root), "--expect", str(case.dir / "case.json")
        )
        outcome.host += [
            line for line in verify.stdout.splitlines() if HOSTLINE.match(line)
        ]
    if case.data.get("host_check") == "output-check":
        outcome.host += _output_check(fixture, outcome, out_dir)
    facts["free_after"] = _free_bytes(workspace)
    facts["workspace_files"] = sorted(os.listdir(workspace))
    outcome.leftovers = _reap_leftovers(str(payload))
    return outcome


def _output_check(fixture: Fixture, outcome: Outcome, out_dir: Path) -> list[str]:
    """``fixture.py output-check`` on what the caller received.

    In passthrough mode that is the CLI's own stdout/stderr files. With
    ``--json`` the program's streams are inside the result; they are written
    out as files for the same comparison.
    """
    out, err = out_dir / "stdout", out_dir / "stderr"
    if outcome.result is not None:
        out, err = out_dir / "program-stdout", out_dir / "program-stderr"
        out.write_bytes(str(outcome.result.get("stdout", "")).encode())
        err.write_bytes(str(outcome.result.get("stderr", "")).encode())
    check = fixture.run("output-check", str(fixture.root), str(out), str(err))
    lines = check.stdout.splitlines()
    outcome.host_info += [line for line in lines if line.startswith("INFO:")]
    outcome.facts["captured_bytes"] = {
        "stdout": out.stat().st_size,
        "stderr": err.stat().st_size,
    }
    return [line for line in lines if HOSTLINE.match(line)]


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Like ``timeout -k 3``: SIGTERM, then SIGKILL, the direct child only."""
    proc.terminate()
    try:
        proc.wait(timeout=3)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def _reap_leftovers(payload: str, grace_s: float = 3.0) -> list[str]:
    """Processes still running the run's payload after the run: a sandbox
    process outlived the sandbox. Recorded, then killed by pid (only those
    whose command line names this run's own payload copy)."""
    deadline = time.monotonic() + grace_s
    while True:
        found = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as fh:
                    cmd = fh.read().replace(b"\0", b" ").decode("utf-8", "replace")
            except OSError:
                continue
            if payload in cmd:
                found[int(entry)] = cmd.strip()
        if not found or time.monotonic() >= deadline:
            break
        time.sleep(0.1)
    for pid in found:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    return [f"pid {pid}: {cmd[:160]}" for pid, cmd in found.items()]


# -- checks shared by many cases ---------------------------------------------------


def verdict_is(expected: str, exit_status: int = 0) -> Check:
    """The payload's last verdict line is ``expected`` and the CLI exits with
    ``exit_status`` (the program's own status)."""

    def check(case: Case, out: Outcome) -> list[str]:
        problems = []
        if out.verdict != expected:
            problems.append(f"verdict {out.verdict or '(none)'}, expected {expected}")
        if out.exit_status != exit_status:
            problems.append(f"exit status {out.exit_status}, expected {exit_status}")
        return problems

    check.__name__ = f"verdict_is_{expected}"
    return check


def default_verdict(case: Case) -> Check | None:
    """The README's verdict convention by category (robustness: host only)."""
    if case.category in ("escape", "resource"):
        return verdict_is("CONTAINED")
    if case.category == "usability":
        return verdict_is("PASS")
    return None


def host_checks(case: Case, out: Outcome) -> list[str]:
    """Every host-side check the case asks for printed its OK line."""
    problems = []
    launch = case.launch
    bad = [
        line
        for line in out.host
        if line.startswith(("HOST-VIOLATION", "HOST-TTY-INPUT-INJECTED"))
    ]
    problems += bad
    if launch.get("pty") and "HOST-TTY-INPUT-EMPTY" not in out.host:
        problems.append("ptyrun did not report HOST-TTY-INPUT-EMPTY")
    wants_ok = (
        bool(case.data.get("host_expect"))
        + bool(launch.get("kill_after_s"))
        + (case.data.get("host_check") == "output-check")
    )
    if out.host.count("HOST-OK") < wants_ok:
        problems.append(
            f"{wants_ok} host check(s) should print HOST-OK; got {out.host}"
        )
    return problems


def nothing_escaped(case: Case, out: Outcome) -> list[str]:
    """No ESCAPED line anywhere, and no process of the run outlived it."""
    problems = [
        f"escape reported: {line}"
        for line in out.verdict_lines
        if line.startswith("ESCAPED")
    ]
    if out.leftovers:
        problems.append(
            f"processes of the run still alive after it ended: {out.leftovers}"
        )
    if out.timed_out:
        problems.append("the CLI did not return before the harness's own timeout")
    return problems


def no_warn_lines(case: Case, out: Outcome) -> list[str]:
    warns = [line for line in out.lines if line.startswith("WARN:")]
    return [f"WARN lines present: {warns}"] if warns else []


def judge(case: Case, plan: RunPlan, out: Outcome) -> None:
    """Apply the generic checks and the mapping's (or the verdict convention).

    Raises:
        CaseFailed: with every problem found, the case's check text and the
            outcome's details.
        RuntimeError: a robustness case without explicit checks.
    """
    checks: list[Check] = [nothing_escaped, host_checks]
    if plan.checks is not None:
        checks += plan.checks
    else:
        verdict = default_verdict(case)
        if verdict is None:
            raise RuntimeError(
                f"case {case.id} ({case.category}) needs explicit checks in the mapping"
            )
        checks.append(verdict)
    problems = []
    for check in checks:
        problems += check(case, out)
    if problems:
        raise CaseFailed(
            f"case {case.id} failed its check:\n  - "
            + "\n  - ".join(problems)
            + f"\n  check text: {case.data.get('check')}\n  "
            + out.describe()
        )
