"""Symbolic links, hard links and swapped paths against the path rules.

Attacks: a link in the workspace to a hidden, outside or read-only place; a
hard link that would give a read-only file a writable name (made during the
run, or left by an earlier one); a path component swapped after the policy
was resolved.
"""

from __future__ import annotations

import os
import shutil

import pytest
from fsutil import PROBE_NAME, PY, TIERS, git, is_second, manager, probe, write

from stockade import PolicyError, Termination


@pytest.mark.parametrize("fields", TIERS)
def test_symlinks_in_the_workspace_do_not_reach_hidden_or_outside_paths(
    fields, workspace, outside
):
    secret = write(outside / "secret.txt", "outside secret\n")
    ro_dir = outside / "ro"
    write(ro_dir / "file.txt", "ro\n")
    private = workspace / "private"
    write(private / "key", "private key\n")
    # links that exist before the run (left by an earlier one)
    os.symlink(secret, workspace / "to-outside")
    os.symlink("private/key", workspace / "to-hidden")
    os.symlink(str(ro_dir), workspace / "to-ro")
    answers, _ = probe(
        manager(fields, hidden=["private"], read_only=[str(ro_dir)]),
        workspace,
        [
            ["outside_old", "read", str(workspace / "to-outside")],
            ["hidden_old", "read", str(workspace / "to-hidden")],
            ["ro_read", "read", str(workspace / "to-ro" / "file.txt")],
            ["ro_write", "append", str(workspace / "to-ro" / "file.txt")],
            ["ro_create", "create", str(workspace / "to-ro" / "new")],
            # links made during the run
            ["mk_abs", "symlink", str(private / "key"), str(workspace / "sub-abs")],
            ["hidden_new", "read", str(workspace / "sub-abs")],
            ["mk_dir", "symlink", str(outside), str(workspace / "dir-link")],
            ["outside_dir", "read", str(workspace / "dir-link" / "secret.txt")],
            ["outside_create", "create", str(workspace / "dir-link" / "planted")],
        ],
    )
    assert answers["outside_old"] in ("ENOENT", "EACCES")
    assert answers["hidden_old"] in ("ENOENT", "EACCES")
    assert answers["ro_read"] == "ok:ro"
    assert answers["ro_write"] in ("EROFS", "EACCES")
    assert answers["ro_create"] in ("EROFS", "EACCES")
    assert answers["hidden_new"] in ("ENOENT", "EACCES")
    assert answers["outside_dir"] in ("ENOENT", "EACCES")
    if is_second(fields):
        assert answers["outside_create"] in ("ENOENT", "EACCES")
    # First tier: `outside` exists in the sandbox only as the private, empty
    # directory bubblewrap made to hold the read-only mount of outside/ro, so
    # a file made through the link lands there; the host sees nothing.
    assert sorted(os.listdir(outside)) == ["ro", "secret.txt"]
    assert (ro_dir / "file.txt").read_text() == "ro\n"
    if not is_second(fields):
        # the workspace root stays writable on the first tier: links were made
        assert answers["mk_abs"] == "ok" and answers["mk_dir"] == "ok"


@pytest.mark.parametrize("fields", TIERS)
def test_a_rule_on_a_symlink_applies_to_its_target(fields, workspace):
    write(workspace / "real" / "token", "t\n")
    os.symlink("real", workspace / "alias")
    answers, _ = probe(
        manager(fields, hidden=["alias"]),
        workspace,
        [
            ["via_real", "read", str(workspace / "real" / "token")],
            ["via_alias", "read", str(workspace / "alias" / "token")],
        ],
    )
    assert answers["via_real"] == "EACCES"
    assert answers["via_alias"] == "EACCES"


@pytest.mark.parametrize("fields", TIERS)
def test_hard_link_made_in_the_run_cannot_make_a_protected_file_writable(
    fields, workspace
):
    git(workspace, "init", "-q")
    config = workspace / ".git" / "config"
    before = config.read_text()
    (workspace / "sub").mkdir()
    ro = write(workspace / "ro.txt", "ro\n")
    answers, _ = probe(
        manager(fields, read_only=["ro.txt"]),
        workspace,
        [
            ["link_config", "link", str(config), str(workspace / "sub" / "x")],
            ["write_x", "append", str(workspace / "sub" / "x")],
            ["link_ro", "link", str(ro), str(workspace / "sub" / "y")],
            ["write_y", "append", str(workspace / "sub" / "y")],
            ["rename_config", "rename", str(config), str(workspace / "sub" / "z")],
        ],
    )
    for label in ("link_config", "link_ro", "rename_config"):
        assert answers[label] in ("EXDEV", "EACCES", "EBUSY"), (label, answers)
    assert config.read_text() == before
    assert ro.read_text() == "ro\n"
    # the appends made new, unrelated files
    assert os.stat(config).st_nlink == 1 and os.stat(ro).st_nlink == 1


@pytest.mark.parametrize("fields", TIERS)
def test_a_protected_file_with_another_name_is_refused(fields, workspace):
    """A hard link left by an earlier run (made while .git did not exist yet)
    would let this one change .git/config through the other name."""
    git(workspace, "init", "-q")
    os.link(workspace / ".git" / "config", workspace / "innocent.txt")
    with pytest.raises(PolicyError, match="hard links") as err:
        manager(fields).execute(["true"], cwd=workspace)
    assert "cp -p" in str(err.value)
    write(workspace / "data.txt", "d\n")
    os.link(workspace / "data.txt", workspace / "data-alias.txt")
    os.unlink(workspace / "innocent.txt")
    with pytest.raises(PolicyError, match="hard links"):
        manager(fields, hidden=["data.txt"]).execute(["true"], cwd=workspace)


@pytest.mark.parametrize("fields", TIERS)
def test_a_path_swapped_after_resolution_stops_the_run(fields, workspace, outside):
    """Paths are resolved once: a directory replaced between the policy's
    resolution and the mounts (or ruleset) must not be what the run gets."""
    shown = outside / "shown"
    write(shown / "f.txt", "expected\n")
    decoy = outside / "decoy"
    write(decoy / "f.txt", "decoy\n")
    mgr = manager(fields, read_only=[str(shown)])
    code = f"print(open({str(shown / 'f.txt')!r}).read())"
    prepared = mgr._prepare([PY, "-c", code], workspace, None, None)
    shutil.rmtree(shown)
    os.rename(decoy, shown)
    try:
        from stockade import _io

        io = mgr._submit(prepared, None, True)
        _io.drive_sync(io)
    finally:
        mgr._cleanup(prepared)
    result = mgr._finish(prepared, io)
    assert result.termination is Termination.SANDBOX_ERROR, result.stdout
    assert "replaced" in (result.error or "")
    assert b"decoy" not in result.stdout


@pytest.mark.parametrize("fields", TIERS)
def test_timings_report_policy_set_up(fields, workspace):
    write(workspace / "a.env", "a\n")
    _, result = probe(manager(fields, hidden=["a.env"]), workspace, [])
    assert "fs_policy_ms" in result.timings_ms
    assert (workspace / PROBE_NAME).exists()


@pytest.mark.parametrize("fields", TIERS)
@pytest.mark.parametrize("kind", ["read_only", "hidden"])
def test_a_file_rule_with_a_second_name_is_refused_whatever_covers_it(
    fields, kind, workspace, outside
):
    """A link made before the run in the workspace to a file outside every
    writable place: the rule's own path is covered by nothing, but the other
    name is writable (first tier: the workspace's mount shows the inode)."""
    target = write(outside / "f.txt", "outside\n")
    os.link(target, workspace / "alias.txt")
    with pytest.raises(PolicyError, match=r"has 2 hard links \(st_nlink 2\)") as err:
        manager(fields, **{kind: [str(target)]}).execute(["true"], cwd=workspace)
    assert err.value.key == kind
    assert f"cp -p {target}" in str(err.value)


@pytest.mark.parametrize("fields", TIERS)
def test_a_file_in_a_hidden_directory_with_a_second_name_is_refused(
    fields, workspace
):
    """On the second tier the other name's grant (on the inode) would reach
    the file by its hidden path too; on both, the other name shows it."""
    key = write(workspace / "private" / "key", "secret\n")
    (workspace / "src").mkdir()
    os.link(key, workspace / "src" / "key.bak")
    with pytest.raises(PolicyError, match="in the hidden directory") as err:
        manager(fields, hidden=["private"]).execute(["true"], cwd=workspace)
    assert str(key) in str(err.value) and "st_nlink 2" in str(err.value)
    os.unlink(workspace / "src" / "key.bak")
    result = manager(fields, hidden=["private"]).execute(["true"], cwd=workspace)
    assert result.exit_code == 0


@pytest.mark.parametrize("fields", TIERS)
def test_a_rule_in_the_workspace_may_not_follow_a_link_out_of_it(
    fields, workspace, outside
):
    """An earlier run plants ws/cache -> /data/sub; `--ro /data --rw cache`
    would then make /data/sub writable."""
    data = outside / "data"
    write(data / "sub" / "f.txt", "data\n")
    os.symlink(str(data / "sub"), workspace / "cache")
    with pytest.raises(PolicyError, match="symbolic link") as err:
        manager(fields, read_only=[str(data)], writable=["cache"]).execute(
            ["true"], cwd=workspace
        )
    message = str(err.value)
    assert "'cache'" in message and str(data / "sub") in message
    assert f"--rw {data / 'sub'}" in message
    assert err.value.key == "writable"
    # nothing is created through the link either
    with pytest.raises(PolicyError, match="symbolic link"):
        manager(fields, writable=["cache/new"]).execute(["true"], cwd=workspace)
    assert not (data / "sub" / "new").exists()
    os.symlink(str(outside / "elsewhere"), workspace / "secret")
    with pytest.raises(PolicyError, match="symbolic link"):
        manager(fields, hidden=["secret"]).execute(["true"], cwd=workspace)
    # named explicitly, the target is what the caller means
    answers, _ = probe(
        manager(fields, read_only=[str(data)], writable=[str(data / "sub")]),
        workspace,
        [["write", "append", str(data / "sub" / "f.txt")]],
    )
    assert answers["write"] == "ok"
