"""Documentation claims that the code decides, checked against the code."""

from __future__ import annotations

import re
from pathlib import Path

from stockade.config import SandboxMode
from stockade.linux import bwrap

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_architecture_lists_exactly_the_system_directories_of_each_mode():
    text = (DOCS / "architecture.md").read_text(encoding="utf-8")
    section = text.split("## The mount view", 1)[1].split("\n## ", 1)[0]
    modes = [SandboxMode.STRICT, SandboxMode.MODERATE, SandboxMode.PERMISSIVE]
    documented: dict[SandboxMode, set[str]] = {mode: set() for mode in modes}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) != 5 or not cells[0].startswith("`/"):
            continue
        paths = re.findall(r"`(/[^`]*)`", cells[0])
        for mode, cell in zip(modes, cells[1:4]):
            assert cell in ("yes", "no"), line
            if cell == "yes":
                documented[mode].update(paths)
    for mode in modes:
        expected = set(bwrap._SYSTEM_RO[mode]) | set(bwrap._MERGED_USR_LINKS)
        assert documented[mode] == expected, mode


README = DOCS.parent / "README.md"


def test_readme_says_a_refused_fork_ends_the_run():
    # the launcher kills the tree at the first refused fork it sees
    # (cgroups.check -> "pids_limit"); only an exit before that keeps status 0
    from stockade.linux import cgroups, limits

    assert limits.KILL_REASONS["pids_limit"].value == "pids_limit"
    text = " ".join(README.read_text(encoding="utf-8").split())
    assert "even if the program carried on" not in text
    assert "at the first fork refused at `pids_limit`" in text
    assert f"every {int(cgroups.LIMIT_POLL_SEC * 1000)} ms" in text


def test_known_limitations_warn_that_env_values_are_in_bubblewraps_environ():
    text = " ".join((DOCS / "known-limitations.md").read_text(encoding="utf-8").split())
    assert "`/proc/PID/environ`" in text and "65534" in text and "Do not pass secrets" in text


def test_readme_lists_exactly_the_limits_a_flag_file_accepts():
    from stockade.config import FLAG_LIMIT_KEYS

    text = " ".join(README.read_text(encoding="utf-8").split())
    sentence = text.split("`sandbox_resource_limits` holds only the limits of", 1)[1].split(". ", 1)[0]
    assert set(re.findall(r"`(\w+)`", sentence)) == set(FLAG_LIMIT_KEYS)
    limits = " ".join((DOCS / "limits.md").read_text(encoding="utf-8").split())
    assert all(f"`{key}`" in limits for key in FLAG_LIMIT_KEYS)
