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


# -- #! lines the kernel would refuse, or that name what must not block ------------

import threading  # noqa: E402

import pytest  # noqa: E402

from stockade.errors import CommandError  # noqa: E402
from stockade.fs.policy import Access, FsPlan, PathRule  # noqa: E402


def _script(path, line: str):
    path.write_text(f"#!{line}\necho hi\n")
    path.chmod(0o755)
    return path


def _in_thread(call, seconds: float = 10.0):
    """``call()``'s result or exception, failing when it does not return
    within ``seconds`` (a hang must fail the test, not freeze it)."""
    box: dict = {}

    def run() -> None:
        try:
            box["value"] = call()
        except BaseException as err:  # noqa: BLE001 - handed to the test
            box["error"] = err

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), "resolution did not return: it blocks or loops"
    if "error" in box:
        raise box["error"]
    return box["value"]


@pytest.mark.parametrize("line", ["relative/x", "x"])
def test_a_relative_interpreter_is_resolved_against_the_cwd(tmp_path, line):
    script = _script(tmp_path / "s", line)
    cwd = tmp_path / "run"
    cwd.mkdir()
    visible = _visible_under("/usr", "/bin", str(tmp_path))
    with pytest.raises(CommandError) as info:
        _in_thread(lambda: resolve_command([str(script)], cwd=str(cwd), search_path="/usr/bin",
                                           visible=visible))
    assert info.value.reason == "not_found"
    assert f"the interpreter {cwd / line} does not exist" in str(info.value)
    # present there, it is what runs (the kernel resolves it against the cwd)
    _script(_mkparent(cwd / line), "/bin/sh")
    resolution = _in_thread(lambda: resolve_command([str(script)], cwd=str(cwd),
                                                    search_path="/usr/bin", visible=visible))
    assert resolution.path == str(script)


def _mkparent(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def test_a_missing_interpreter_is_a_command_error(tmp_path):
    script = _script(tmp_path / "s", "/nonexistent/interp")
    with pytest.raises(CommandError, match="/nonexistent/interp does not exist") as info:
        resolve_command([str(script)], cwd="/", search_path="/usr/bin", visible=_visible_under("/usr"))
    assert info.value.reason == "not_found"


def test_env_naming_a_missing_program_is_not_found(tmp_path):
    script = _script(tmp_path / "s", "/usr/bin/env stockade-no-such-program")
    with pytest.raises(CommandError, match="is not on the sandbox's PATH") as info:
        resolve_command([str(script)], cwd="/", search_path="/usr/bin", visible=_visible_under("/usr"))
    assert info.value.reason == "not_found"


@pytest.mark.parametrize("mode", [0o644, 0o755])
def test_an_interpreter_that_is_not_an_executable_file_is_refused(tmp_path, mode):
    target = tmp_path / "interp"
    if mode == 0o644:
        target.write_text("not a program\n")
        target.chmod(mode)
    else:
        target.mkdir()
    script = _script(tmp_path / "s", str(target))
    with pytest.raises(CommandError, match="the interpreter .* is not") as info:
        resolve_command([str(script)], cwd="/", search_path="/usr/bin", visible=_visible_under("/usr"))
    assert info.value.reason == "not_executable"


def test_a_fifo_as_interpreter_or_command_does_not_block(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    script = _script(tmp_path / "s", str(fifo))
    visible = _visible_under("/usr", str(tmp_path))
    for command in (script, fifo):
        with pytest.raises(CommandError, match="not a regular file") as info:
            _in_thread(lambda c=command: resolve_command([str(c)], cwd="/", search_path="/usr/bin",
                                                         visible=visible))
        assert info.value.reason == "not_executable"


def test_a_fifo_as_pyvenv_cfg_does_not_block(tmp_path):
    root = tmp_path / "env"
    (root / "bin").mkdir(parents=True)
    os.mkfifo(root / "pyvenv.cfg")
    (root / "bin" / "tool").symlink_to("/bin/true")
    resolution = _in_thread(lambda: resolve_command(
        [str(root / "bin" / "tool")], cwd="/", search_path="/usr/bin",
        visible=_visible_under("/usr", "/bin")))
    assert str(root / "bin") in resolution.read_only


def test_a_relative_venv_home_is_ignored(tmp_path):
    root = tmp_path / "env"
    (root / "bin").mkdir(parents=True)
    (root / "pyvenv.cfg").write_text("home = relative/bin\n")
    (root / "bin" / "tool").symlink_to("/bin/true")
    resolution = _in_thread(lambda: resolve_command(
        [str(root / "bin" / "tool")], cwd="/", search_path="/usr/bin",
        visible=_visible_under("/usr", "/bin")))
    assert all(os.path.isabs(p) for p in resolution.read_only)


def test_rule_for_refuses_a_relative_path_and_ends_at_the_root():
    plan = FsPlan(workspace="/w")
    plan.add(PathRule("/w", Access.WRITABLE, "workspace"))
    for path in ("relative/x", "x", ""):
        with pytest.raises(ValueError, match="absolute"):
            _in_thread(lambda p=path: plan.rule_for(p))
    assert _in_thread(lambda: plan.rule_for("//w/x")) is plan.rules["/w"]
    assert _in_thread(lambda: plan.rule_for("//elsewhere")) is None
    assert plan.rule_for("/") is None
