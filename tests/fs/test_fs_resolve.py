"""Resolution, precedence, mount plans, Landlock translation and the guard,
without running a sandbox (the rules' effects are tested in the other
``test_fs_*`` files)."""

from __future__ import annotations

import glob
import os
from pathlib import Path

import pytest
from fsutil import write

from stockade import PolicyError, SandboxConfig
from stockade.fs import guard as _guard
from stockade.fs import policy as _policy
from stockade.fs.mounts import plan_mounts
from stockade.fs.policy import Access, resolve
from stockade.fs.ruleset import translate

SYSTEM = ["/usr", "/etc"]


def plan_for(workspace: Path, home: Path | None = None, environ=None, **fields):
    config = SandboxConfig(execution_log=False, **fields)
    return resolve(
        config,
        workspace=str(workspace),
        system=SYSTEM,
        home=str(home or workspace),
        environ=environ or {},
    )


# -- precedence (the table in docs/filesystem.md) ---------------------------------


def test_precedence_table(workspace, outside):
    for rel in (
        "src/app.py",
        "vendor/lib/x.py",
        "vendor/lib/cache/c",
        "secrets/k",
        "secrets/public/p",
        ".env",
    ):
        write(workspace / rel, "x\n")
    write(outside / "data" / "d.csv", "d\n")
    plan = plan_for(
        workspace,
        read_only=["vendor", "secrets/public", str(outside / "data")],
        writable=["vendor/lib/cache"],
        hidden=["secrets", ".env", "vendor"],
        protected=[],
    )
    ws = str(workspace)
    expect = {
        f"{ws}/src/app.py": Access.WRITABLE,  # workspace
        f"{ws}/vendor/lib/x.py": Access.HIDDEN,  # vendor: hidden beats read-only
        f"{ws}/vendor/lib/cache/c": Access.WRITABLE,  # deeper rule wins
        f"{ws}/secrets/k": Access.HIDDEN,
        f"{ws}/secrets/public/p": Access.READ_ONLY,  # deeper rule wins
        f"{ws}/.env": Access.HIDDEN,
        f"{outside}/data/d.csv": Access.READ_ONLY,
        f"{outside}/other": None,  # no rule: not there
        "/usr/bin/env": Access.READ_ONLY,  # system directory
    }
    assert {path: plan.access_of(path) for path in expect} == expect


def test_relative_paths_use_the_workspace_and_tilde_the_home(workspace, outside):
    write(workspace / "rel" / "f", "f\n")
    write(outside / "in-home" / "g", "g\n")
    plan = plan_for(
        workspace, home=outside, read_only=["rel", "~/in-home"], protected=[]
    )
    assert plan.rules[str(workspace / "rel")].access is Access.READ_ONLY
    assert plan.rules[str(outside / "in-home")].origin == "read_only"


def test_symlinks_are_resolved_once_with_their_identity(workspace):
    write(workspace / "real" / "f", "f\n")
    os.symlink("real", workspace / "alias")
    plan = plan_for(workspace, hidden=["alias"], protected=[])
    rule = plan.rules[str(workspace / "real")]
    st = os.stat(workspace / "real")
    assert rule.access is Access.HIDDEN and rule.ident == (st.st_dev, st.st_ino)
    assert str(workspace / "alias") not in plan.rules


def test_glob_bounds(workspace):
    for i in range(3):
        write(workspace / "d" / f"{i}.env", "x\n")
    plan = plan_for(workspace, hidden=["d/*.env"], protected=[])
    assert sum(r.access is Access.HIDDEN for r in plan.rules.values()) == 3
    with pytest.raises(PolicyError, match=r"\*\*"):
        plan_for(workspace, hidden=["**/*.env"])
    plan = plan_for(workspace, read_only=["d/*.nothing"], protected=[])
    assert any("matches nothing" in n for n in plan.notes)


def _counting_scandir(monkeypatch):
    """Count the directory entries os.scandir yields while resolving."""
    seen = [0]
    real = os.scandir

    class Counted:
        def __init__(self, path):
            self._it = real(path)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self._it.close()

        def __iter__(self):
            for entry in self._it:
                seen[0] += 1
                yield entry

    monkeypatch.setattr(_policy.os, "scandir", Counted)
    return seen


def test_a_costly_glob_is_refused_after_a_bounded_number_of_entries(
    workspace, monkeypatch
):
    """Each wildcard level lists every directory the level before matched:
    16 x 16 x 16 directories make '*/*/*/*.nomatch' list 4368 entries, and
    the listing stops at the bound instead of finishing first."""
    tree = workspace / "tree"
    for a in range(16):
        for b in range(16):
            for c in range(16):
                os.makedirs(tree / f"a{a}" / f"b{b}" / f"c{c}")
    seen = _counting_scandir(monkeypatch)
    with pytest.raises(PolicyError, match="more than 4096 directory entries") as err:
        plan_for(workspace, hidden=["tree/*/*/*/*.nomatch"], protected=[])
    assert err.value.key == "hidden" and err.value.value == "tree/*/*/*/*.nomatch"
    assert seen[0] == _policy.MAX_GLOB_ENTRIES + 1
    seen[0] = 0
    with pytest.raises(PolicyError, match="matches more than 256 paths"):
        plan_for(workspace, hidden=["tree/*/*/*"], protected=[])
    # 16 + 256 entries for the first two levels, then the 257th match
    assert seen[0] <= 16 + 256 + _policy.MAX_GLOB_MATCHES + 1


def test_globs_match_like_the_shell(workspace):
    for name in ("a1/x.key", "a1/.y.key", "a2/z.key", "b1/x.key", ".h/x.key", "f"):
        write(workspace / "g" / name, "k\n")
    base = str(workspace / "g")
    for pattern in ("*/*.key", "a?/.*", "[ab]1/*", ".*/*", "*", "a1/x.key", "*/nope"):
        expected = sorted(os.path.normpath(p) for p in glob.glob(f"{base}/{pattern}"))
        assert sorted(_policy._glob(base, pattern, pattern, "hidden")) == expected, pattern


# -- protected paths ---------------------------------------------------------------


def test_protected_paths_existing_absent_and_pinned(workspace):
    os.makedirs(workspace / ".git" / "hooks")
    write(workspace / ".git" / "config", "[core]\n")
    plan = plan_for(workspace)
    ws = str(workspace)
    assert plan.rules[f"{ws}/.git/hooks"].origin == "protected"
    assert plan.rules[f"{ws}/.git/config"].access is Access.READ_ONLY
    assert f"{ws}/.git/commondir" in plan.guarded
    assert f"{ws}/.stockade.toml" in plan.guarded
    mounts = plan_mounts(plan, empty_file=lambda: ("/nonexistent", (0, 0)))
    dests = [(m.kind, m.dest) for m in mounts]
    # the workspace first, .git pinned onto itself before what it holds
    assert dests.index(("bind", ws)) < dests.index(("bind", f"{ws}/.git"))
    assert dests.index(("bind", f"{ws}/.git")) < dests.index(
        ("ro-bind", f"{ws}/.git/hooks")
    )


def test_protected_paths_in_every_writable_place(workspace, outside):
    cache = outside / "cache"
    os.makedirs(cache / ".git" / "hooks")
    plan = plan_for(workspace, writable=[str(cache)])
    assert plan.rules[str(cache / ".git" / "hooks")].origin == "protected"


def test_guard_mode_watches_instead_of_read_only(workspace):
    os.makedirs(workspace / ".git" / "hooks")
    config = SandboxConfig(execution_log=False)
    plan = resolve(
        config,
        workspace=str(workspace),
        system=SYSTEM,
        home=str(workspace),
        environ={},
        guard_protected=True,
    )
    assert str(workspace / ".git" / "hooks") in plan.guarded
    assert str(workspace / ".git" / "hooks") not in plan.rules


# -- mounts and Landlock rules -----------------------------------------------------


def test_mount_plan_hides_with_tmpfs_and_empty_files(workspace):
    write(workspace / "private" / "s", "s\n")
    write(workspace / "private" / "out" / "o", "o\n")
    write(workspace / "a.env", "a\n")
    plan = plan_for(
        workspace, hidden=["private", "a.env"], writable=["private/out"], protected=[]
    )
    mounts = plan_mounts(plan, empty_file=lambda: ("/empty", (1, 2)))
    kinds = [(m.kind, m.dest, m.perms) for m in mounts]
    ws = str(workspace)
    assert ("tmpfs", f"{ws}/private", 0o111) in kinds
    assert ("ro-bind", f"{ws}/a.env", None) in kinds
    assert kinds[-1] == ("remount-ro", f"{ws}/private", None)
    assert kinds.index(("tmpfs", f"{ws}/private", 0o111)) < kinds.index(
        ("bind", f"{ws}/private/out", None)
    )
    # a writable directory inside the writable workspace is not mounted again
    plan = plan_for(workspace, writable=["private/out"], protected=[])
    assert [m.dest for m in plan_mounts(plan, empty_file=lambda: ("", (0, 0)))] == [ws]


def test_landlock_spine(workspace):
    write(workspace / "keep.txt", "k\n")
    write(workspace / "secrets" / "a.env", "a\n")
    write(workspace / "secrets" / "b.txt", "b\n")
    plan = plan_for(workspace, hidden=["secrets/a.env"], protected=[])
    translation = translate(plan)
    grants = {g.path: g for g in translation.grants}
    ws = str(workspace)
    writable = ["create", "exec", "list", "read_file", "unix", "write"]
    # the workspace and secrets/ only list; each other entry gets the
    # workspace's rights, listed by the launcher child
    assert (grants[ws].access, grants[ws].each) == (["list"], writable)
    assert grants[ws].skip == [_ident(workspace / "secrets")]
    assert (grants[f"{ws}/secrets"].access, grants[f"{ws}/secrets"].each) == (
        ["list"],
        writable,
    )
    assert grants[f"{ws}/secrets"].skip == [_ident(workspace / "secrets" / "a.env")]
    assert f"{ws}/secrets/a.env" not in grants
    assert (
        grants["/usr"].access == ["exec", "list", "read_file"]
        and grants["/usr"].each is None
    )
    assert translation.fixed == [ws, f"{ws}/secrets"]


def _ident(path: Path) -> tuple[int, int]:
    st = os.lstat(path)
    return (st.st_dev, st.st_ino)


# -- the guard ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "plain"),
    [
        (b"[core]\n\trepositoryformatversion = 0\n\tbare = false\n", True),
        (
            (
                b'[remote "origin"]\n\turl = https://example.org/r.git\n'
                b"\tfetch = +refs/*:refs/*\n"
            ),
            True,
        ),
        (b"[core]\n\thooksPath = .h\n", False),
        (b"[core]\n\tfsmonitor = touch x\n", False),
        (b"[Core]\n\tHooksPath = .h\n", False),
        (b"[alias]\n\tst = !sh -c x\n", False),
        (b"[include]\n\tpath = ../x\n", False),
        (b"[core] hooksPath = x\n", False),
        (b"[core.sub]\n\tbare = true\n", False),
        (b"[core]\n\tbare = \\\nfalse\n", False),
        (b"bare = false\n", False),
    ],
)
def test_git_config_is_plain(text, plain):
    assert _guard.git_config_is_plain(text) is plain


def test_guard_never_follows_a_planted_link(workspace, outside):
    write(outside / "victim.txt", "keep\n")
    st = os.stat(workspace)
    guard = _guard.Guard()
    guard.watch_absent(
        str(workspace), (st.st_dev, st.st_ino), (".git", "hooks"), missing_from=0
    )
    os.symlink(str(outside), workspace / ".git")
    findings = guard.check("r1")
    assert [f.what for f in findings] == ["created during the run"]
    assert os.path.islink(workspace / ".git.stockade-quarantine-r1")
    assert sorted(os.listdir(outside)) == ["victim.txt"]


def test_guard_refuses_a_replaced_root(workspace, outside):
    st = os.stat(workspace)
    guard = _guard.Guard()
    guard.watch_absent(
        str(workspace), (st.st_dev, st.st_ino), (".git",), missing_from=0
    )
    moved = Path(str(workspace) + "-moved")
    os.rename(workspace, moved)
    os.symlink(str(outside), workspace)
    try:
        findings = guard.check("r2")
    finally:
        os.unlink(workspace)
        os.rename(moved, workspace)
    assert [f.action for f in findings] == ["not checked"]


def test_guard_snapshot_restores_files_links_and_directories(workspace):
    hooks = workspace / ".git" / "hooks"
    write(hooks / "pre-commit", "#!/bin/sh\n", 0o755)
    os.symlink("pre-commit", hooks / "alias")
    os.utime(hooks / "pre-commit", ns=(1_000_000_000, 2_000_000_000))
    st = os.stat(workspace)
    guard = _guard.Guard()
    guard.watch_snapshot(str(workspace), (st.st_dev, st.st_ino), (".git", "hooks"))
    (hooks / "pre-commit").write_text("#!/bin/sh\nevil\n")
    os.unlink(hooks / "alias")
    write(hooks / "post-checkout", "evil\n")
    findings = guard.check("r3")
    assert [f.what for f in findings] == ["changed during the run"]
    assert (hooks / "pre-commit").read_text() == "#!/bin/sh\n"
    assert os.stat(hooks / "pre-commit").st_mode & 0o777 == 0o755
    assert os.stat(hooks / "pre-commit").st_mtime_ns == 2_000_000_000
    assert os.readlink(hooks / "alias") == "pre-commit"
    assert sorted(os.listdir(hooks)) == ["alias", "pre-commit"]
    assert guard.check("r4") == []


def test_guard_snapshot_is_bounded(workspace):
    write(workspace / "big", "x" * (_guard.SNAPSHOT_MAX_BYTES + 1))
    st = os.stat(workspace)
    with pytest.raises(PolicyError, match="too large"):
        _guard.Guard().watch_snapshot(str(workspace), (st.st_dev, st.st_ino), ("big",))


def test_wildcards_only_in_the_entry_itself(outside):
    odd = outside / "proj[1]"
    write(odd / "a.env", "a\n")
    write(odd / "b.env", "b\n")
    plan = plan_for(odd, hidden=["a.env", "*.env"], protected=[])
    hidden = sorted(p for p, r in plan.rules.items() if r.access is Access.HIDDEN)
    assert hidden == [str(odd / "a.env"), str(odd / "b.env")]


def test_refused_writable_path_is_not_created(workspace):
    with pytest.raises(PolicyError, match="never writable"):
        plan_for(workspace, writable=["/usr/lib/stockade-test-never"])
    assert not os.path.exists("/usr/lib/stockade-test-never")
