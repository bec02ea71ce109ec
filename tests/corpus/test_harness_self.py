"""The corpus harness can fail: an unsandboxed runner is caught, and the
case-specific checks reject the outcomes their case's check text rejects."""

from __future__ import annotations

import dataclasses
import shutil
import sys
from pathlib import Path

import _unpriv
import corpus_map
import pytest
from corpus_harness import (
    Case,
    CaseFailed,
    Outcome,
    discover,
    execute,
    judge,
    locate_corpus,
)

pytestmark = pytest.mark.corpus

CORPUS, MISSING = locate_corpus()
FAKE_CLI = Path(__file__).with_name("fake_cli.py")


def _case(case_id: str) -> Case:
    if CORPUS is None:
        pytest.skip(MISSING)
    for case_dir in discover(CORPUS):
        if case_dir.name.startswith(case_id + "-"):
            return Case.load(case_dir)
    pytest.skip(f"corpus has no case {case_id}")


# One case per launch mode / host check: pty, leaked fds, secret environment,
# plain verdict, host listener markers.
@pytest.mark.parametrize("case_id", ["001", "005", "017", "006", "010"])
def test_an_unsandboxed_runner_fails_the_case(case_id):
    case = _case(case_id)
    assert case.data.get("safe_unsandboxed") is True
    caller = dataclasses.replace(
        _unpriv.get_or_skip("root"), cli=(sys.executable, str(FAKE_CLI))
    )
    plan = corpus_map.MAPPING[case_id].runs[""]
    base = _unpriv.caller_dir(caller, prefix=f"stockade-corpus-self-{case_id}-")
    try:
        outcome = execute(CORPUS, case, plan, caller, base)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    with pytest.raises(
        CaseFailed, match="ESCAPED|HOST-VIOLATION|HOST-TTY-INPUT-INJECTED"
    ):
        judge(case, plan, outcome)


def _outcome(**fields) -> Outcome:
    base = dict(
        argv=["stockade"],
        rc=0,
        stdout="",
        stderr="stockade: exited 0; wall 0.1s",
        wall_s=0.5,
    )
    base.update(fields)
    return Outcome(**base)


def _judge(case_id: str, outcome: Outcome, label: str = "") -> None:
    case = _case(case_id)
    judge(case, corpus_map.MAPPING[case_id].runs[label], outcome)


def test_025_rejects_a_late_return_and_a_surviving_grandchild():
    ok = dict(rc=124, stderr="stockade: timeout (SIGKILL); wall 2.0s", host=["HOST-OK"])
    _judge("025", _outcome(wall_s=2.3, **ok))
    with pytest.raises(CaseFailed, match="returned after 4.10s"):
        _judge("025", _outcome(wall_s=4.1, **ok))
    with pytest.raises(CaseFailed, match="HOST-VIOLATION"):
        _judge(
            "025",
            _outcome(
                wall_s=2.3,
                rc=124,
                stderr=ok["stderr"],
                host=["HOST-VIOLATION: process still running: corpus-grandchild-025"],
            ),
        )
    with pytest.raises(CaseFailed, match="exit status 0"):
        _judge("025", _outcome(wall_s=2.3, rc=0, host=["HOST-OK"]))


def test_027_rejects_heartbeats_after_the_kill():
    _judge("027", _outcome(rc=0, host=["HOST-OK"]))
    with pytest.raises(CaseFailed, match="heartbeats still advancing"):
        _judge(
            "027",
            _outcome(
                rc=1,
                host=["HOST-VIOLATION: heartbeats still advancing 2-5 s after SIGKILL"],
            ),
        )


def test_028_rejects_silent_truncation():
    cut = [
        "INFO: stdout truncated: 1048576 of 273678336 bytes "
        "(acceptable only if the sandbox reports the truncation)"
    ]
    result = {
        "termination": "exited",
        "stdout_truncated": True,
        "stderr_truncated": False,
        "limits": {"max_output_bytes": 1048576},
        "stdout": "",
        "stderr": "",
    }
    _judge("028", _outcome(host=["HOST-OK"], host_info=cut, result=result), "cap")
    with pytest.raises(CaseFailed, match="stdout_truncated not set"):
        _judge(
            "028",
            _outcome(
                host=["HOST-OK"],
                host_info=cut,
                result=dict(result, stdout_truncated=False),
            ),
            "cap",
        )
    with pytest.raises(CaseFailed, match="passthrough"):
        _judge("028", _outcome(host=["HOST-OK"], host_info=cut))
    with pytest.raises(CaseFailed, match="no corpus-output-summary"):
        _judge(
            "028",
            _outcome(
                host=[
                    "HOST-VIOLATION: no corpus-output-summary.txt "
                    "(payload did not finish)"
                ]
            ),
        )


def test_resource_checks_follow_the_case_text():
    contained = "CONTAINED: MemoryError after 224 MiB (limit 256)"
    _judge("021", _outcome(stdout=f"INFO: holding 224 MiB\n{contained}\n"))
    killed = dict(rc=137, stderr="stockade: memory_limit (SIGKILL); wall 1s")
    _judge("021", _outcome(stdout="INFO: holding 288 MiB\n", **killed))
    with pytest.raises(CaseFailed, match="held 352 MiB"):
        _judge("021", _outcome(stdout="INFO: holding 352 MiB\n", **killed))
    with pytest.raises(CaseFailed, match="expected 'memory_limit'"):
        _judge(
            "021",
            _outcome(
                stdout="INFO: holding 96 MiB\n",
                rc=137,
                stderr="stockade: killed by SIGKILL; wall 1s",
            ),
        )
    with pytest.raises(CaseFailed, match="more than 72"):
        _judge(
            "020",
            _outcome(stdout="CONTAINED: fork refused after 90 children (EAGAIN)\n"),
        )
    with pytest.raises(CaseFailed, match="fill files left"):
        _judge(
            "023",
            _outcome(
                stdout="CONTAINED: ok\n",
                facts={
                    "workspace_files": ["corpus-fill-1"],
                    "free_before": 1,
                    "free_after": 1,
                },
            ),
        )
    with pytest.raises(CaseFailed, match="WARN lines"):
        _judge(
            "005", _outcome(stdout="WARN: regular file fd 5 leaked\nCONTAINED: fine\n")
        )
