"""The manager keeps the last tier decision and protection rows: what they
are computed from is immutable, and a new object (another policy in
``manager.config``, a new host probe, another filter or caller uid) is never
served the old answer."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from stockade import SandboxConfig, SandboxManager
from stockade.linux import probe as _probe
from stockade.linux import seccomp as _seccomp
from stockade.linux import tiers as _tiers
from stockade.linux.probe import HostProbe

FIXTURES = Path(__file__).parent / "fixtures" / "probes"
_HOST = _probe.probe_host()


def _fixture_probe() -> HostProbe:
    names = sorted(p.stem for p in FIXTURES.glob("*.json"))
    for name in names:
        try:
            return HostProbe.from_dict(json.loads((FIXTURES / f"{name}.json").read_text()))
        except Exception:  # noqa: BLE001 - not a probe fixture
            continue
    pytest.skip("no recorded host probe among the fixtures")


def test_the_decision_is_kept_for_the_same_policy_and_probe():
    manager = SandboxManager(SandboxConfig(execution_log=False))
    first = manager.decide()
    assert manager.decide() is first
    assert first == _tiers.decide(_tiers.probe_for(manager.config), manager.config)


def test_a_replaced_policy_is_decided_again():
    manager = SandboxManager(SandboxConfig(execution_log=False))
    first = manager.decide()
    manager.config = SandboxConfig(execution_log=False, mode="strict", network="loopback")
    second = manager.decide()
    assert second is not first
    assert second == _tiers.decide(_tiers.probe_for(manager.config), manager.config)


def test_a_new_host_probe_is_decided_again(monkeypatch):
    manager = SandboxManager(SandboxConfig(execution_log=False))
    first = manager.decide()
    recorded = _fixture_probe()
    monkeypatch.setattr(_probe, "probe_host", lambda *a, **k: recorded)
    second = manager.decide()
    assert second == _tiers.decide(recorded, manager.config)
    if second != first:
        assert second is not first
    monkeypatch.undo()
    assert manager.decide() == first


def test_protection_rows_follow_their_inputs():
    manager = SandboxManager(SandboxConfig(execution_log=False))
    decision = manager.decide()
    flt = _seccomp.filter_for_config(manager.config)
    rows = manager._protections(decision, False, flt)
    again = manager._protections(decision, False, flt)
    assert again == rows and again is not rows  # a new list: callers extend it
    rows.append("extended by a caller")
    assert manager._protections(decision, False, flt) == again

    as_root = manager._protections(decision, True, flt)
    never_root = {p.name: p.detail for p in as_root}["never_root"]
    assert never_root == f"runs as host uid {manager.config.run_as_uid}"

    without = manager._protections(decision, False, None)
    assert without == manager._protection_rows(decision, False, None, os.getuid())
    assert without != again

    manager.config = SandboxConfig(execution_log=False, network="loopback")
    loopback = {p.name: p.detail for p in manager._protections(manager.decide(), False, flt)}
    assert loopback["network"].startswith("loopback"), loopback["network"]


@pytest.mark.skipif(not _HOST.namespaces_work, reason="bubblewrap cannot create namespaces here")
def test_runs_after_a_policy_change_report_the_new_policy(workspace):
    manager = SandboxManager(SandboxConfig(execution_log=False, network="none"))
    first = manager.execute(["true"], cwd=workspace)
    assert first.success, first.summary()
    rows = {p.name: p.detail for p in first.protections}
    assert rows["network"].startswith("none"), rows
    manager.config = SandboxConfig(execution_log=False, network="loopback", mode="strict")
    second = manager.execute(["true"], cwd=workspace)
    assert second.success, second.summary()
    rows = {p.name: p.detail for p in second.protections}
    assert rows["network"].startswith("loopback"), rows
    assert second.mode == "strict"
    assert "strict" in rows["syscall_filter"], rows["syscall_filter"]
