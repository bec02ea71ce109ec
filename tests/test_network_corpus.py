"""Corpus cases about the network, run through ``stockade run`` as a person would.

010: "network denied" must not reach the host's loopback services (TCP v4,
TCP v6, UDP): run under ``--network none`` and ``--network loopback``.
031: under a tight policy the sandbox's *own* loopback still works: that is
mode ``loopback`` (mode ``none`` refuses inet sockets: the syscall filter).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.corpus

_HERE = Path(__file__).resolve().parent


def _corpus() -> Path | None:
    candidates = [
        os.environ.get("STOCKADE_CORPUS"),
        _HERE.parent.parent / "shared" / "corpus",
        "/work/shared/corpus",
    ]
    for candidate in candidates:
        if candidate and (Path(candidate) / "lib" / "fixture.py").is_file():
            return Path(candidate)
    return None


CORPUS = _corpus()
needs_corpus = pytest.mark.skipif(
    CORPUS is None, reason="shared/corpus not found (set STOCKADE_CORPUS)"
)


def _stockade() -> str:
    return os.path.join(os.path.dirname(sys.executable), "stockade")


class Fixture:
    def __init__(self, features: str) -> None:
        assert CORPUS is not None
        self.fixture = str(CORPUS / "lib" / "fixture.py")
        out = subprocess.check_output(
            [
                sys.executable,
                self.fixture,
                "start",
                "--lifetime",
                "120",
                "--features",
                features,
            ]
        )
        self.data = json.loads(out)
        self.root = self.data["root"]
        self.workspace = Path(self.data["workspace"])

    def payload(self, case: str) -> str:
        assert CORPUS is not None
        (source,) = (CORPUS / "cases").glob(f"{case}-*/payload.py")
        target = self.workspace / f"payload{case}.py"
        shutil.copyfile(source, target)
        os.chmod(target, 0o644)
        return target.name

    def verify(self, case: str) -> str:
        assert CORPUS is not None
        (case_json,) = (CORPUS / "cases").glob(f"{case}-*/case.json")
        proc = subprocess.run(
            [
                sys.executable,
                self.fixture,
                "verify",
                self.root,
                "--expect",
                str(case_json),
            ],
            capture_output=True,
            text=True,
        )
        return proc.stdout

    def stop(self) -> None:
        subprocess.run(
            [sys.executable, self.fixture, "stop", self.root], capture_output=True
        )


def _verdict(stdout: str) -> str:
    lines = [
        line
        for line in stdout.splitlines()
        if line.split(":")[0]
        in ("CONTAINED", "ESCAPED", "PASS", "FAIL", "INCONCLUSIVE")
    ]
    return lines[-1] if lines else "(none)"


@needs_corpus
@pytest.mark.parametrize("network", ["none", "loopback"])
def test_010_host_loopback_unreachable(network):
    fixture = Fixture("tcp,tcp6,udp")
    try:
        payload = fixture.payload("010")
        d = fixture.data
        proc = subprocess.run(
            [
                _stockade(),
                "run",
                "--no-log",
                "--network",
                network,
                "--",
                "python3",
                payload,
                "--tcp-port",
                str(d["tcp_port"]),
                "--tcp6-port",
                str(d["tcp6_port"]),
                "--udp-port",
                str(d["udp_port"]),
            ],
            cwd=fixture.workspace,
            capture_output=True,
            text=True,
            timeout=60,
        )
        host = fixture.verify("010")
    finally:
        fixture.stop()
    assert _verdict(proc.stdout).startswith("CONTAINED"), proc.stdout + proc.stderr
    assert proc.returncode == 0
    assert "HOST-OK" in host, host


@needs_corpus
def test_031_own_loopback_tmp_and_shm_work():
    fixture = Fixture("none")
    try:
        payload = fixture.payload("031")
        proc = subprocess.run(
            [
                _stockade(),
                "run",
                "--no-log",
                "--network",
                "loopback",
                "--",
                "python3",
                payload,
                "--workspace",
                str(fixture.workspace),
            ],
            cwd=fixture.workspace,
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        fixture.stop()
    assert _verdict(proc.stdout).startswith("PASS"), proc.stdout + proc.stderr
    assert proc.returncode == 0
