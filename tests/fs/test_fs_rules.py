"""Every path rule kind, on both tiers, on the real kernel.

Each test runs ``fs_probe.py`` in the sandbox, which tries reads, writes,
creations, renames and links, and then checks the host side too: a refused
write must leave the host file as it was, an allowed one must reach it.
"""

from __future__ import annotations

import os

import pytest
from fsutil import TIERS, is_second, manager, probe, write

from stockade import PolicyError


@pytest.mark.parametrize("fields", TIERS)
def test_read_only_outside_the_workspace_is_readable_not_writable(
    fields, workspace, outside
):
    data = write(outside / "data.txt", "host data\n")
    (outside / "sub").mkdir()
    answers, result = probe(
        manager(fields, read_only=[str(outside)]),
        workspace,
        [
            ["read", "read", str(data)],
            ["list", "list", str(outside)],
            ["append", "append", str(data)],
            ["create", "create", str(outside / "new.txt")],
            ["unlink", "unlink", str(data)],
            ["rename", "rename", str(data), str(outside / "moved.txt")],
            ["mkdir", "mkdir", str(outside / "sub" / "d")],
        ],
    )
    assert answers["read"] == "ok:host data"
    assert answers["list"] == "ok:data.txt,sub"
    for label in ("append", "create", "unlink", "rename", "mkdir"):
        assert answers[label] in ("EROFS", "EACCES", "EXDEV"), (label, answers)
    assert sorted(os.listdir(outside)) == ["data.txt", "sub"]
    assert data.read_text() == "host data\n"
    assert not os.listdir(outside / "sub")
    assert result.timings_ms["fs_policy_ms"] >= 0


@pytest.mark.parametrize("fields", TIERS)
def test_writable_outside_the_workspace_reaches_the_host(fields, workspace, outside):
    answers, _ = probe(
        manager(fields, writable=[str(outside)]),
        workspace,
        [
            ["create", "create", str(outside / "made.txt")],
            ["mkdir", "mkdir", str(outside / "d")],
        ],
    )
    assert answers == {"create": "ok", "mkdir": "ok"}
    assert (outside / "made.txt").read_text() == "new\n"
    assert (outside / "d").is_dir()


@pytest.mark.parametrize("fields", TIERS)
def test_missing_writable_path_is_created(fields, workspace, outside):
    target = outside / "cache" / "deep"
    answers, result = probe(
        manager(fields, writable=[str(target)]),
        workspace,
        [["create", "create", str(target / "f")]],
    )
    assert answers == {"create": "ok"}
    assert (target / "f").exists()
    assert any("created" in note for note in result.notes)


@pytest.mark.parametrize("fields", TIERS)
def test_hidden_file_and_directory_inside_the_workspace(fields, workspace):
    write(workspace / "ok.txt", "fine\n")
    secret = write(workspace / "secrets" / "a.env", "TOKEN=1\n")
    write(workspace / "secrets" / "visible.txt", "visible\n")
    private = workspace / "private"
    write(private / "secret.txt", "private\n")
    os.chmod(private, 0o777)
    answers, _ = probe(
        manager(fields, hidden=["secrets/a.env", str(private)]),
        workspace,
        [
            ["ok", "read", str(workspace / "ok.txt")],
            ["visible", "read", str(workspace / "secrets" / "visible.txt")],
            ["read_file", "read", str(secret)],
            ["append_file", "append", str(secret)],
            ["unlink_file", "unlink", str(secret)],
            ["rename_file", "rename", str(secret), str(workspace / "stolen")],
            ["link_file", "link", str(secret), str(workspace / "linked")],
            ["read_dir_file", "read", str(private / "secret.txt")],
            ["write_dir", "create", str(private / "new.txt")],
            ["rmdir", "rename", str(private), str(workspace / "p2")],
            ["list_dir", "list", str(private)],
            ["list_ws", "list", str(workspace)],
        ],
    )
    assert answers["ok"] == "ok:fine"
    assert answers["visible"] == "ok:visible"
    for label in (
        "read_file",
        "append_file",
        "unlink_file",
        "rename_file",
        "link_file",
        "read_dir_file",
        "write_dir",
        "rmdir",
    ):
        assert not answers[label].startswith("ok"), (label, answers)
    if is_second(fields):
        # second tier: names inside a hidden directory stay listable (their
        # contents do not), docs/filesystem.md "differences between the tiers"
        assert answers["list_dir"] == "ok:secret.txt"
    else:
        assert answers["list_dir"] == "EACCES"
    assert answers["list_ws"].startswith("ok:") and "secrets" in answers["list_ws"]
    # nothing landed anywhere: not on the host, not silently in a tmpfs
    assert sorted(os.listdir(private)) == ["secret.txt"]
    assert secret.read_text() == "TOKEN=1\n"
    assert not (workspace / "stolen").exists() and not (workspace / "linked").exists()


@pytest.mark.parametrize("fields", TIERS)
def test_read_only_inside_the_workspace(fields, workspace):
    cfg = write(workspace / "setup.cfg", "[tool]\n")
    vendor = workspace / "vendor"
    write(vendor / "lib.py", "x = 1\n")
    answers, _ = probe(
        manager(fields, read_only=["setup.cfg", "vendor"]),
        workspace,
        [
            ["read", "read", str(cfg)],
            ["append", "append", str(cfg)],
            ["unlink", "unlink", str(cfg)],
            ["vendor_read", "read", str(vendor / "lib.py")],
            ["vendor_write", "append", str(vendor / "lib.py")],
            ["vendor_create", "create", str(vendor / "new.py")],
            ["vendor_rename", "rename", str(vendor), str(workspace / "v2")],
            ["sub_create", "mkdir", str(workspace / "build")],
        ],
    )
    assert answers["read"] == "ok:[tool]"
    assert answers["vendor_read"] == "ok:x = 1"
    for label in ("append", "unlink", "vendor_write", "vendor_create", "vendor_rename"):
        assert not answers[label].startswith("ok"), (label, answers)
    # the rest of the workspace stays writable (first tier); on the second
    # its root accepts no new entries (it holds read-only paths)
    assert answers["sub_create"] == ("EACCES" if is_second(fields) else "ok")
    assert cfg.read_text() == "[tool]\n"
    assert sorted(os.listdir(vendor)) == ["lib.py"]


@pytest.mark.parametrize("fields", TIERS)
def test_most_specific_rule_wins(fields, workspace, outside):
    """writable > read-only > writable > hidden > read-only, nested."""
    top = outside / "top"
    write(top / "a.txt", "a\n")
    write(top / "cache" / "c.txt", "c\n")
    write(top / "cache" / "keys" / "k.txt", "k\n")
    write(top / "cache" / "keys" / "public" / "p.txt", "p\n")
    answers, _ = probe(
        manager(
            fields,
            read_only=[str(top), str(top / "cache" / "keys" / "public")],
            writable=[str(top / "cache")],
            hidden=[str(top / "cache" / "keys")],
        ),
        workspace,
        [
            ["top_read", "read", str(top / "a.txt")],
            ["top_write", "append", str(top / "a.txt")],
            ["cache_write", "append", str(top / "cache" / "c.txt")],
            ["cache_create", "create", str(top / "cache" / "n.txt")],
            ["keys_read", "read", str(top / "cache" / "keys" / "k.txt")],
            ["public_read", "read", str(top / "cache" / "keys" / "public" / "p.txt")],
            [
                "public_write",
                "append",
                str(top / "cache" / "keys" / "public" / "p.txt"),
            ],
        ],
    )
    assert answers["top_read"] == "ok:a"
    assert answers["top_write"] in ("EROFS", "EACCES")
    assert answers["cache_write"] == "ok"
    if is_second(fields):
        assert answers["cache_create"] == "EACCES"  # cache holds a hidden path
    else:
        assert answers["cache_create"] == "ok"
    assert answers["keys_read"] in ("EACCES", "ENOENT")
    assert answers["public_read"] == "ok:p"
    assert answers["public_write"] in ("EROFS", "EACCES")
    assert (top / "cache" / "c.txt").read_text() == "c\nx\n"


@pytest.mark.parametrize("fields", TIERS)
def test_equal_paths_the_more_restrictive_rule_wins(fields, workspace, outside):
    write(outside / "f.txt", "f\n")
    answers, _ = probe(
        manager(fields, writable=[str(outside)], read_only=[str(outside)]),
        workspace,
        [
            ["write", "append", str(outside / "f.txt")],
            ["read", "read", str(outside / "f.txt")],
        ],
    )
    assert answers["read"] == "ok:f"
    assert answers["write"] in ("EROFS", "EACCES")


@pytest.mark.parametrize("fields", TIERS)
def test_writable_inside_a_hidden_directory(fields, workspace):
    private = workspace / "private"
    write(private / "secret.txt", "s\n")
    (private / "out").mkdir()
    answers, _ = probe(
        manager(fields, hidden=["private"], writable=["private/out"]),
        workspace,
        [
            ["secret", "read", str(private / "secret.txt")],
            ["out", "create", str(private / "out" / "result.txt")],
            ["beside", "create", str(private / "beside.txt")],
        ],
    )
    assert answers["secret"] in ("EACCES", "ENOENT")
    assert answers["out"] == "ok"
    assert answers["beside"] in ("EACCES", "EROFS")
    assert (private / "out" / "result.txt").exists()
    assert sorted(os.listdir(private)) == ["out", "secret.txt"]


@pytest.mark.parametrize("fields", TIERS)
def test_globs_match_what_exists_at_launch(fields, workspace):
    write(workspace / "conf" / "a.env", "A\n")
    write(workspace / "conf" / "b.env", "B\n")
    write(workspace / "conf" / "c.txt", "C\n")
    answers, result = probe(
        manager(fields, hidden=["conf/*.env"]),
        workspace,
        [
            ["a", "read", str(workspace / "conf" / "a.env")],
            ["b", "read", str(workspace / "conf" / "b.env")],
            ["c", "read", str(workspace / "conf" / "c.txt")],
        ],
    )
    assert answers == {"a": "EACCES", "b": "EACCES", "c": "ok:C"}
    assert "2 hidden" in next(
        p.detail for p in result.protections if p.name == "path_rules"
    )


def test_missing_paths_per_field(workspace, outside):
    with pytest.raises(PolicyError, match="does not exist"):
        manager({}, read_only=[str(outside / "nope")]).execute(["true"], cwd=workspace)
    # a hidden path that the run could create in a writable place
    with pytest.raises(PolicyError, match="could create it"):
        manager({}, hidden=["later.env"]).execute(["true"], cwd=workspace)
    # one in a place the run cannot see or write: nothing to hide
    result = manager({}, hidden=[str(outside / "nope")]).execute(
        ["true"], cwd=workspace
    )
    assert result.exit_code == 0
    assert any("nothing to hide" in note for note in result.notes)


@pytest.mark.parametrize(
    ("field", "path", "message"),
    [
        ("read_only", "/", "whole mount view"),
        ("read_only", "/var", "/var/tmp"),
        ("writable", "/usr/local", "never writable"),
        ("writable", "/etc", "system directory"),
        ("hidden", "/proc/self", "sandbox's own"),
        ("read_only", "/dev/null", "sandbox's own"),
        ("hidden", "conf/**/x", "'\\*\\*'"),
    ],
)
def test_rules_that_cannot_be_kept_are_refused(field, path, message, workspace):
    with pytest.raises(PolicyError, match=message):
        manager({}, **{field: [path]}).execute(["true"], cwd=workspace)


def test_hidden_cwd_and_hidden_workspace_are_refused(workspace):
    (workspace / "private").mkdir()
    with pytest.raises(PolicyError, match="hidden"):
        manager({}, hidden=["private"]).execute(["true"], cwd=workspace / "private")
    with pytest.raises(PolicyError, match="workspace"):
        manager({}, hidden=[str(workspace)]).execute(["true"], cwd=workspace)


def test_mode_disabled_refuses_path_rules(workspace):
    with pytest.raises(PolicyError, match="disabled"):
        manager({}, mode="disabled", hidden=["x"]).execute(["true"], cwd=workspace)
