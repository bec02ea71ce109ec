"""Git directories beyond the workspace's ``.git`` (``fs/gitdirs.py``).

Two holes a fresh-user trial found: a repository the run made in a
subdirectory and ``git add``-ed (a gitlink), whose planted
``core.fsmonitor`` the host's ``git status`` at the root ran; and the
workspace laid out as a bare repository, whose config any git command run
there reads. Plus the submodules' git directories under ``.git/modules``.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
from fsutil import TIERS, git, is_second, manager, probe, write

from stockade.fs import gitdirs

IDENTITY = "-c user.name=a -c user.email=a@b"
GIT_ENV = {
    "GIT_AUTHOR_NAME": "Sandbox",
    "GIT_AUTHOR_EMAIL": "sandbox@example.org",
    "GIT_COMMITTER_NAME": "Sandbox",
    "GIT_COMMITTER_EMAIL": "sandbox@example.org",
}


def sh(fields: dict, workspace: Path, script: str, **more):
    return manager(fields, **more).execute(
        ["sh", "-c", script], cwd=workspace, env=GIT_ENV
    )


def host_git(cwd: Path, *args: str, tty: bool = False) -> subprocess.CompletedProcess:
    """git on the host, as the user would run it, with a timeout."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(cwd), "GIT_CONFIG_NOSYSTEM": "1"}
    command = ["git", *args]
    if tty:  # a pager only runs on a terminal
        command = ["script", "-qc", " ".join(command), "/dev/null"]
    return subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, timeout=30, check=False
    )


def moved(result) -> set[str]:
    return {
        v.what.split(": ")[0] for v in result.violations if v.mechanism == "filesystem"
    }


@pytest.mark.parametrize("fields", TIERS)
def test_nested_repository_added_as_gitlink_loses_planted_config(
    fields, workspace, outside
):
    git(workspace, "init", "-q")
    git(workspace, "commit", "-q", "--allow-empty", "-m", "init")
    marker = outside / "pwned_fsmon"
    script = (
        f"set -e; mkdir sub && cd sub && git init -q && "
        f"git {IDENTITY} commit -q --allow-empty -m s && "
        f"git config core.fsmonitor 'touch {marker}; false' && cd .. && git add sub"
    )
    # the second tier keeps the root's .git closed to new entries unless the
    # policy accepts protected paths checked instead (git add needs index.lock)
    more = {"allow_degraded": ["protected_paths"]} if is_second(fields) else {}
    result = sh(fields, workspace, script, **more)
    assert result.exit_code == 0, result.stderr
    assert moved(result) == {f"{workspace}/sub/.git/config"}
    assert not (workspace / "sub" / ".git" / "config").exists()
    assert any(
        n.startswith("config.stockade-quarantine-")
        for n in os.listdir(workspace / "sub" / ".git")
    )
    # the host's git still sees the gitlink and runs nothing planted
    status = host_git(workspace, "status", "--short")
    assert b"sub" in status.stdout, status
    assert not marker.exists()


@pytest.mark.parametrize("fields", TIERS)
def test_bare_repository_workspace_loses_planted_config(fields, workspace, outside):
    marker = outside / "pwn_bare"
    first = sh(
        fields,
        workspace,
        f"git init -q --bare . && git config core.pager 'touch {marker}; cat'",
    )
    assert first.exit_code == 0, first.stderr
    assert moved(first) == {f"{workspace}/config"}
    assert not (workspace / "config").exists()
    assert (workspace / "hooks").is_dir()  # git's samples stay
    # a later run finds a bare repository: its hooks are read-only, a config
    # it writes is checked again
    second = sh(
        fields,
        workspace,
        "t=$(git mktree </dev/null); c=$(git commit-tree -m x $t); "
        "git update-ref refs/heads/master $c; "
        f"git config core.pager 'touch {marker}; cat'; "
        "echo '#!/bin/sh' > hooks/post-update",
    )
    assert not (workspace / "hooks" / "post-update").exists()
    assert not (workspace / "config").exists()
    if not is_second(fields):
        assert moved(second) == {f"{workspace}/config"}
        assert host_git(workspace, "log", "--format=%s").stdout == b"x\n"
    host_git(workspace, "log", tty=True)
    assert not marker.exists()


@pytest.mark.parametrize("fields", TIERS)
def test_bare_repository_in_a_subdirectory_is_checked(fields, workspace):
    """A repository the index does not reference, made during the run: the
    walk after the run finds it and checks it like the others."""
    result = sh(fields, workspace, "git init -q --bare sub.git && git -C sub.git config core.pager less")
    assert result.exit_code == 0, result.stderr
    assert moved(result) == {f"{workspace}/sub.git/config"}
    assert not (workspace / "sub.git" / "config").exists()


def _repo(workspace: Path) -> None:
    git(workspace, "init", "-q", "-b", "master")
    (workspace / "src").mkdir()
    (workspace / "src" / "a.txt").write_text("hi\n")
    git(workspace, "add", ".")
    git(workspace, "commit", "-q", "-m", "init")


def _fsmonitor(marker: Path) -> str:
    return f'printf "[core]\\n\\tfsmonitor = \\"echo X >> {marker}; false\\"\\n"'


def _degraded(fields) -> dict:
    return {"allow_degraded": ["protected_paths"]} if is_second(fields) else {}


@pytest.mark.parametrize("fields", TIERS)
def test_a_gitlink_only_on_another_branch_is_checked(fields, workspace, outside):
    """The nested repository's gitlink is in a commit on another branch; the
    index is clean at the end. The host's checkout of that branch and
    ``git status`` would run its planted config."""
    _repo(workspace)
    marker = outside / "MARKER"
    script = (
        f"set -e; mkdir sub; cd sub; git init -q; echo x>f; git add f; git commit -qm s; "
        f"{_fsmonitor(marker)} > .git/config; cd ..; git checkout -qb agent-work; "
        f"git add sub; git commit -qm 'add sub'; git checkout -q master"
    )
    result = sh(fields, workspace, script, **_degraded(fields))
    assert result.exit_code == 0, result.stderr
    assert moved(result) == {f"{workspace}/sub/.git/config"}
    assert host_git(workspace, "checkout", "-q", "agent-work").returncode == 0
    host_git(workspace, "status")
    assert not marker.exists()


@pytest.mark.parametrize("fields", TIERS)
def test_a_module_directory_linked_elsewhere_is_checked(fields, workspace, outside):
    """``.git/modules/sub`` a symbolic link to a git directory elsewhere in
    the workspace: git follows it, the walk moves it aside and checks the
    git directory it led to."""
    _repo(workspace)
    marker = outside / "MARKER"
    script = (
        "set -e; mkdir sub; cd sub; git init -q; echo x>f; git add f; git commit -qm s; cd ..; "
        "mv sub/.git lib_gd; mkdir -p .git/modules; ln -s ../../lib_gd .git/modules/sub; "
        "echo 'gitdir: ../.git/modules/sub' > sub/.git; git add sub; "
        f"{_fsmonitor(marker)} > lib_gd/config"
    )
    result = sh(fields, workspace, script, **_degraded(fields))
    assert result.exit_code == 0, result.stderr
    assert moved(result) >= {
        f"{workspace}/.git/modules/sub",
        f"{workspace}/lib_gd/config",
    }
    host_git(workspace, "status")
    host_git(workspace / "sub", "status")
    host_git(workspace / "lib_gd", "status")
    assert not marker.exists()


@pytest.mark.parametrize("fields", TIERS)
def test_a_subdirectory_laid_out_as_a_git_directory_is_checked(
    fields, workspace, outside
):
    _repo(workspace)
    marker = outside / "MARKER"
    script = (
        "set -e; cd src; mkdir -p objects refs/heads; "
        "echo 'ref: refs/heads/master' > HEAD; "
        'printf "[core]\\n\\tbare = false\\n\\tworktree = ..\\n'
        f'\\tfsmonitor = \\"echo X >> {marker}; false\\"\\n" > config'
    )
    result = sh(fields, workspace, script)
    assert result.exit_code == 0, result.stderr
    assert moved(result) == {f"{workspace}/src/config"}
    host_git(workspace, "status")
    host_git(workspace / "src", "status")
    assert not marker.exists()


@pytest.mark.parametrize("fields", TIERS)
def test_an_untouched_nested_repository_is_left_alone(fields, workspace):
    """A repository of the user's the index does not reference, with a
    config that is not plain: the run does not touch it, nor does the
    guard."""
    _repo(workspace)
    other = workspace / "tools" / "other"
    other.mkdir(parents=True)
    git(other, "init", "-q")
    git(other, "config", "core.fsmonitor", "true")
    git(workspace, "init", "-q", "--bare", "vendor.git")
    git(workspace / "vendor.git", "config", "alias.st", "status")
    before = {
        p: p.read_text()
        for p in (other / ".git" / "config", workspace / "vendor.git" / "config")
    }
    # the guard's start time is the kernel's coarse clock, which may lag a
    # file time by a tick: what changed just before counts as the run's
    time.sleep(0.05)
    result = sh(fields, workspace, "echo x > src/b.txt; mkdir -p tools/new; echo y > tools/other/f")
    assert result.exit_code == 0, result.stderr
    assert not result.violations
    assert {p: p.read_text() for p in before} == before


def test_the_walk_is_bounded(tmp_path, monkeypatch):
    """Past its bound the walk says what it did not check."""
    for n in range(30):
        (tmp_path / f"d{n}" / "e").mkdir(parents=True)
    monkeypatch.setattr(gitdirs, "MAX_WALKED", 10)
    fd = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
    try:
        found = gitdirs.Found()
        opened = gitdirs.walk(fd, str(tmp_path), found, 0, ("config", "hooks"))
    finally:
        os.close(fd)
    assert opened == 10
    assert found.incomplete == ["more than 10 directories: the rest not walked"]


def _superproject(workspace: Path, outside: Path) -> Path:
    """A repository with a real submodule (``libs/up``, its git directory
    in ``.git/modules``) and a nested repository added as a gitlink whose
    config names a command the user set."""
    upstream = outside / "up"
    upstream.mkdir()
    git(upstream, "init", "-q")
    git(upstream, "commit", "-q", "--allow-empty", "-m", "up")
    git(workspace, "init", "-q")
    git(workspace, "commit", "-q", "--allow-empty", "-m", "init")
    git(
        workspace,
        "-c",
        "protocol.file.allow=always",
        "submodule",
        "-q",
        "add",
        str(upstream),
        "libs/up",
    )
    nested = workspace / "own"
    nested.mkdir()
    git(nested, "init", "-q")
    git(nested, "commit", "-q", "--allow-empty", "-m", "own")
    git(nested, "config", "alias.st", "status")  # the user's own, not plain
    git(workspace, "add", "own")
    git(workspace, "commit", "-q", "-m", "subs")
    return workspace / ".git" / "modules" / "libs" / "up"


@pytest.mark.parametrize("fields", TIERS)
def test_submodule_and_nested_repository_are_read_only_and_untouched(
    fields, workspace, outside
):
    module = _superproject(workspace, outside)
    before = {
        p: p.read_text()
        for p in (module / "config", workspace / "own" / ".git" / "config",
                  workspace / "libs" / "up" / ".git")
    }
    answers, result = probe(
        manager(fields, allow_degraded=["protected_paths"] if is_second(fields) else []),
        workspace,
        [
            ["module_config", "append", str(module / "config"), "[core]\n\tfsmonitor = x\n"],
            ["module_hook", "create", str(module / "hooks" / "post-checkout"), "#!/bin/sh\n"],
            ["own_config", "append", str(workspace / "own" / ".git" / "config"), "[x]\n"],
            ["gitfile", "append", str(workspace / "libs" / "up" / ".git"), "x\n"],
        ],
    )
    if not is_second(fields):
        assert set(answers.values()) == {"EROFS"}, answers
        assert not result.violations
    else:
        # recorded and restored after the run
        assert moved(result) >= {str(module / "config")}
    assert {p: p.read_text() for p in before} == before
    assert not (module / "hooks" / "post-checkout").exists()
    row = next(p for p in result.protections if p.name == "protected_paths")
    assert "libs/up/config" in row.detail and "own/.git/config" in row.detail
    # the legitimate workflow on the host is unaffected
    # (second tier: restoring the recorded files changes their ctime, which
    # git may report as " M libs/up" until the submodule's index is refreshed)
    status = host_git(workspace, "status", "--porcelain")
    assert status.returncode == 0, status
    if not is_second(fields):
        assert status.stdout == b"?? .fs_probe.py\n", status


def test_a_module_directory_planted_during_the_run_is_checked(workspace, outside):
    _superproject(workspace, outside)
    marker = outside / "ran"
    script = (
        "set -e; git init -q --bare .git/modules/evil && "
        f"git -C .git/modules/evil config core.fsmonitor 'touch {marker}' && "
        "git -C .git/modules/up2 status 2>/dev/null || true"
    )
    result = sh({"tier": "namespaces"}, workspace, script)
    assert result.exit_code == 0, result.stderr
    assert moved(result) == {f"{workspace}/.git/modules/evil/config"}


def test_a_nested_git_file_leading_out_is_moved_aside(workspace, outside):
    git(workspace, "init", "-q")
    git(workspace, "commit", "-q", "--allow-empty", "-m", "init")
    evil = outside / "evil"
    git(outside, "init", "-q", "--bare", str(evil))
    script = (
        f"set -e; mkdir sub && cd sub && git init -q && git {IDENTITY} commit -q "
        f"--allow-empty -m s && cd .. && git add sub && rm -rf sub/.git && "
        f"echo 'gitdir: {evil}' > sub/.git"
    )
    result = sh({"tier": "namespaces"}, workspace, script)
    assert result.exit_code == 0, result.stderr
    assert moved(result) == {f"{workspace}/sub/.git"}
    assert not (workspace / "sub" / ".git").exists()


@pytest.mark.parametrize("version", ["2", "3", "4", "split"])
@pytest.mark.parametrize("fmt", ["sha1", "sha256"])
def test_gitlinks_are_read_from_every_index_version(tmp_path, version, fmt):
    root = tmp_path / "r"
    git(tmp_path, "init", "-q", f"--object-format={fmt}", str(root))
    write(root / "a" / "deep" / "f", "x\n")
    git(root, "add", ".")
    for name in ("sub", "x/y/nested"):
        (root / name).mkdir(parents=True)
        git(root / name, "init", "-q", f"--object-format={fmt}")
        git(root / name, "commit", "-q", "--allow-empty", "-m", "s")
        git(root, "add", name)
    if version == "split":
        git(root, "update-index", "--split-index")
        write(root / "z", "z\n")
        git(root, "add", "z")
    else:
        git(root, "update-index", "--index-version", version)
        if version == "3":
            write(root / "b", "b\n")
            git(root, "add", "--intent-to-add", "b")  # an extended entry
    fd = os.open(root, os.O_PATH | os.O_DIRECTORY)
    try:
        found = gitdirs.scan(fd, str(root))
    finally:
        os.close(fd)
    assert found.gitdirs == {("sub", ".git"): "nested", ("x", "y", "nested", ".git"): "nested"}
    assert not found.incomplete
    assert gitdirs.gitlinks(b"DIRC garbage") is None
