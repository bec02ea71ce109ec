"""The acceptance corpus against the real sandbox, as root and as uid 65534.

Select or leave out with ``-m corpus`` / ``-m "not corpus"``. Cases are found
by directory; their policies are mapped in ``corpus_map.py``; the fixture,
launch modes and host checks are in ``corpus_harness.py``. Without the corpus
(a plain clone) every test here is skipped, saying so.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
from pathlib import Path

import _unpriv
import pytest
from corpus_harness import Case, CaseFailed, discover, execute, judge, locate_corpus
from corpus_map import KNOWN_RUN_OPTIONS, MAPPING

pytestmark = pytest.mark.corpus

CORPUS, MISSING = locate_corpus()


def _case_id(case_dir: Path) -> str:
    return case_dir.name.split("-", 1)[0]


def _params() -> list[object]:
    if CORPUS is None:
        return [
            pytest.param(
                None,
                "",
                "",
                id="corpus-missing",
                marks=pytest.mark.skip(reason=MISSING),
            )
        ]
    params = []
    for case_dir in discover(CORPUS):
        case_id = _case_id(case_dir)
        entry = MAPPING.get(case_id)
        if entry is None:
            params.append(pytest.param(case_dir, "", "root", id=f"{case_id}-unmapped"))
            continue
        for label in entry.runs:
            for caller in entry.callers:
                marks = []
                todo = entry.todo_for(label)
                if todo is not None:
                    marks.append(
                        pytest.mark.xfail(strict=True, raises=CaseFailed, reason=todo.reason)
                    )
                if entry.slow:
                    marks.append(pytest.mark.slow)
                name = "-".join(part for part in (case_id, label, caller) if part)
                params.append(
                    pytest.param(case_dir, label, caller, id=name, marks=marks)
                )
    return params


@pytest.mark.parametrize(("case_dir", "label", "caller_name"), _params())
def test_case(case_dir: Path, label: str, caller_name: str) -> None:
    assert CORPUS is not None
    case = Case.load(case_dir)
    entry = MAPPING.get(case.id)
    if entry is None:
        pytest.fail(
            f"corpus case {case.id} ({case_dir.name}) has no policy mapping: add "
            f"an entry to tests/corpus/corpus_map.py that maps its policy "
            f"{case.data.get('policy')!r} to stockade options and judges its check "
            f"{case.data.get('check')!r}",
            pytrace=False,
        )
    caller = _unpriv.get_or_skip(caller_name)
    plan = entry.runs[label]
    base = _unpriv.caller_dir(caller, prefix=f"stockade-corpus-{case.id}-")
    try:
        if not _caller_has_cgroups(caller, base):
            if case.id in TREE_LIMIT_CASES:
                _assert_refused_without_cgroups(case, plan, caller, base)
                return
            # the default policy's tree limits are incidental to this case
            plan = dataclasses.replace(plan, options=(*plan.options, *ACCEPT_RLIMITS))
        outcome = execute(CORPUS, case, plan, caller, base)
        judge(case, plan, outcome)
    finally:
        shutil.rmtree(base, ignore_errors=True)


# Cases whose policy is a limit of the whole tree (issue #4): a caller without
# a usable cgroup (uid 65534 on a cgroup v1 host) must be refused, not run
# with per-process rlimits it did not accept.
TREE_LIMIT_CASES = {"020", "021", "024"}
ACCEPT_RLIMITS = ("--allow-degraded", "memory,pids,cpu")


def _caller_has_cgroups(caller: object, base: Path) -> bool:
    """Whether the default policy's tree limits can be enforced for this
    caller (one `stockade run -- true`, cached per caller)."""
    key = getattr(caller, "name", "")
    if key in _CGROUPS:
        return _CGROUPS[key]
    proc = subprocess.run(
        caller.stockade("run", "--no-log", "--workspace", str(base), "--", "true"),  # type: ignore[attr-defined]
        env=caller.env,  # type: ignore[attr-defined]
        cwd=base,
        capture_output=True,
        text=True,
        timeout=120,
    )
    refused = proc.returncode == 125 and "limits of the whole tree" in proc.stderr
    _CGROUPS[key] = not refused
    return _CGROUPS[key]


_CGROUPS: dict[str, bool] = {}


def _assert_refused_without_cgroups(case: Case, plan: object, caller: object, base: Path) -> None:
    cli = caller.stockade(  # type: ignore[attr-defined]
        "run", "--no-log", "--workspace", str(base), *plan.options, "--", "true"  # type: ignore[attr-defined]
    )
    proc = subprocess.run(cli, env=caller.env, cwd=base, capture_output=True, text=True, timeout=120)  # type: ignore[attr-defined]
    assert proc.returncode == 125, (case.id, proc.returncode, proc.stderr)
    assert "limits of the whole tree" in proc.stderr and "--allow-degraded" in proc.stderr


def test_mapping_names_only_existing_cases() -> None:
    if CORPUS is None:
        pytest.skip(MISSING)
    present = {_case_id(d) for d in discover(CORPUS)}
    stale = sorted(set(MAPPING) - present)
    assert not stale, (
        f"tests/corpus/corpus_map.py maps cases the corpus no longer has: {stale}"
    )


def test_cli_options_are_all_known() -> None:
    """A new `stockade run` option may be the one a pending case waits for
    (perhaps under another name than the mapping expects): review the mapping,
    then add the option to KNOWN_RUN_OPTIONS."""
    if CORPUS is None:
        pytest.skip(MISSING)
    caller = (
        _unpriv.get_or_skip("root")
        if _unpriv.os.geteuid() == 0
        else _unpriv.unprivileged_or_skip()
    )
    proc = subprocess.run(
        caller.stockade("run", "--help"),
        env=caller.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    options = set(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", proc.stdout))
    new = sorted(options - KNOWN_RUN_OPTIONS)
    waiting = {cid: e.todo.reason for cid, e in MAPPING.items() if e.todo is not None}
    assert not new, (
        f"`stockade run` has options the corpus mapping was not reviewed "
        f"against: {new}. Check whether a pending case can now use one "
        f"({waiting}), update tests/corpus/corpus_map.py, then add them to "
        f"KNOWN_RUN_OPTIONS."
    )
