"""How a command's path is resolved and what of it the mount view needs."""

from __future__ import annotations

import os

from stockade.linux.resolve import resolve_command


def _visible_under(*roots: str):
    def visible(path: str) -> bool:
        path = os.path.normpath(path)
        return any(path == r or path.startswith(r + "/") for r in roots)

    return visible


def test_each_hidden_hop_of_a_link_chain_is_recreated_with_an_absolute_target(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    program = real / "prog"
    program.write_text("\x7fELF")
    program.chmod(0o755)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "tool").symlink_to("../real/prog")
    (tmp_path / "via").symlink_to(tmp_path / "b")
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "tool").symlink_to("../via/tool")

    resolution = resolve_command(
        [str(tmp_path / "a" / "tool")], cwd="/", search_path="/usr/bin", visible=_visible_under("/usr")
    )

    b_tool = str(tmp_path.resolve() / "b" / "tool")
    assert resolution.path == str(tmp_path / "a" / "tool")
    # the link through the linked directory 'via' is written with 'via'
    # resolved: the mount view has no 'via'
    assert resolution.links == [
        (str(tmp_path / "a" / "tool"), b_tool),
        (b_tool, str(program.resolve())),
    ]
    # only the file at the end is bound, never a link's directory
    assert resolution.read_only == [str(program.resolve())]


def test_a_visible_link_is_not_recreated(tmp_path):
    (tmp_path / "mycat").symlink_to("/usr/bin/cat")
    resolution = resolve_command(
        [str(tmp_path / "mycat")], cwd="/", search_path="/usr/bin",
        visible=_visible_under("/usr", str(tmp_path)),
    )
    assert resolution.links == [] and resolution.read_only == []
