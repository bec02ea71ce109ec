"""Protected paths: git works, planted hooks and config do not survive.

The attack (corpus case 015): a program with a writable workspace writes
``.git/hooks/pre-commit`` or points ``core.hooksPath`` somewhere it wrote, and
the user's next ``git commit`` on the host runs it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from fsutil import (
    SECOND_TIER,
    TIERS,
    git,
    is_second,
    manager,
    needs_second_tier,
    probe,
    write,
)

from stockade import PolicyError, SandboxConfig

HOOK = "#!/bin/sh\ntouch planted-hook-ran\n"

# git inside the sandbox: an identity, no global config
GIT_ENV = {
    "GIT_AUTHOR_NAME": "Sandbox",
    "GIT_AUTHOR_EMAIL": "sandbox@example.org",
    "GIT_COMMITTER_NAME": "Sandbox",
    "GIT_COMMITTER_EMAIL": "sandbox@example.org",
}
WORKFLOW = (
    "set -e; git checkout -q -b feature; echo b > b; git add b; git commit -qm b; "
    "git checkout -q -; echo c > c; git add c; git commit -qm c; "
    "git merge -q --no-edit feature; git log --format=%s"
)


def repo(workspace: Path) -> dict[str, str]:
    git(workspace, "init", "-q")
    write(workspace / "a", "a\n")
    git(workspace, "add", "a")
    git(workspace, "commit", "-qm", "a")
    return snapshot(workspace)


def snapshot(workspace: Path) -> dict[str, str]:
    """The host's hooks and config, to compare after the run."""
    out = {"config": (workspace / ".git" / "config").read_text()}
    hooks = workspace / ".git" / "hooks"
    for name in sorted(os.listdir(hooks)) if hooks.is_dir() else []:
        out[f"hooks/{name}"] = (hooks / name).read_text()
    return out


def sh(fields: dict, workspace: Path, script: str, **more):
    result = manager(fields, **more).execute(
        ["sh", "-c", script], cwd=workspace, env=GIT_ENV
    )
    return result


@pytest.mark.parametrize("fields", TIERS)
def test_planting_hooks_and_config_fails(fields, workspace):
    before = repo(workspace)
    hooks = workspace / ".git" / "hooks"
    answers, result = probe(
        manager(fields),
        workspace,
        [
            ["hook", "create", str(hooks / "pre-commit"), HOOK],
            ["sample", "append", str(hooks / "pre-commit.sample")],
            [
                "config",
                "append",
                str(workspace / ".git" / "config"),
                "[core]\n\thooksPath = h\n",
            ],
            ["alias", "symlink", str(hooks), str(workspace / "sub-alias")],
            [
                "via_alias",
                "create",
                str(workspace / "sub-alias" / "post-checkout"),
                HOOK,
            ],
            [
                "move_git",
                "rename",
                str(workspace / ".git"),
                str(workspace / ".git-old"),
            ],
            ["move_hooks", "rename", str(hooks), str(workspace / ".git" / "h2")],
            [
                "commondir",
                "create",
                str(workspace / ".git" / "commondir"),
                "../elsewhere\n",
            ],
        ],
    )
    for label in ("hook", "sample", "config", "via_alias", "move_git", "move_hooks"):
        assert not answers[label].startswith("ok"), (label, answers)
    # .git/commondir does not exist at launch: the run may create it on the
    # first tier, and the guard moves it aside afterwards
    assert snapshot(workspace) == before
    assert not (workspace / ".git" / "commondir").exists()
    row = next(p for p in result.protections if p.name == "protected_paths")
    assert row.status == "enforced" and ".git/hooks" in row.detail


def test_git_workflow_works_while_hooks_stay_read_only(workspace):
    before = repo(workspace)
    result = sh(
        {"tier": "namespaces"}, workspace, WORKFLOW + "; echo x > .git/hooks/pre-commit"
    )
    assert result.stdout.decode().split()[:3] == ["Merge", "branch", "'feature'"], (
        result.stderr
    )
    assert b"Read-only file system" in result.stderr
    assert snapshot(workspace) == before
    log = git(workspace, "log", "--format=%an %s")
    assert "Sandbox c" in log and "Sandbox b" in log


@needs_second_tier
def test_second_tier_keeps_protected_paths_read_only_by_default(workspace):
    """Landlock cannot keep .git/hooks read-only and let the run create
    files in .git: by default the protection wins and commits fail."""
    before = repo(workspace)
    fields = SECOND_TIER
    result = sh(fields, workspace, "git commit -q --allow-empty -m x; echo > new-file")
    assert result.exit_code != 0
    assert b"index.lock" in result.stderr or b"Permission denied" in result.stderr
    assert any(
        str(workspace / ".git") in note and "no new entries" in note
        for note in result.notes
    )
    assert snapshot(workspace) == before


@needs_second_tier
def test_second_tier_accepting_degraded_protection_restores_after_the_run(workspace):
    before = repo(workspace)
    fields = SECOND_TIER
    plant = (
        WORKFLOW + "; printf '#!/bin/sh\\ntouch ran\\n' > .git/hooks/pre-commit; "
        "chmod +x .git/hooks/pre-commit; git config core.hooksPath .h; ln .git/config x"
    )
    result = sh(fields, workspace, plant, allow_degraded=["protected_paths"])
    assert result.exit_code == 0, result.stderr
    assert b"Merge branch" in result.stdout
    assert snapshot(workspace) == before
    assert os.stat(workspace / ".git" / "config").st_nlink == 1
    quarantined = [
        n for n in os.listdir(workspace / ".git") if ".stockade-quarantine-" in n
    ]
    assert sorted(n.split(".")[0] for n in quarantined) == ["config", "hooks"]
    whats = {v.what for v in result.violations if v.mechanism == "filesystem"}
    assert {
        f"{workspace}/.git/hooks: changed during the run",
        f"{workspace}/.git/config: changed during the run",
    } <= whats
    row = next(p for p in result.protections if p.name == "protected_paths")
    assert row.status == "degraded"
    # git on the host runs no planted hook
    git(workspace, "commit", "-q", "--allow-empty", "-m", "host")
    assert not (workspace / "ran").exists()


@pytest.mark.parametrize("fields", TIERS)
def test_repository_created_in_the_run_is_kept_when_plain(fields, workspace):
    write(workspace / "a", "a\n")
    result = sh(fields, workspace, "git init -q && git add a && git commit -qm first")
    assert result.exit_code == 0, result.stderr
    assert not result.violations
    assert git(workspace, "log", "--format=%s").strip() == "first"
    assert (workspace / ".git" / "config").exists()


@pytest.mark.parametrize("fields", TIERS)
def test_repository_created_in_the_run_loses_planted_code(fields, workspace):
    script = (
        "git init -q && git config core.fsmonitor 'touch fsmonitor-ran' && "
        "printf '#!/bin/sh\\ntouch ran\\n' > .git/hooks/pre-commit && "
        "chmod +x .git/hooks/pre-commit"
    )
    result = sh(fields, workspace, script)
    assert result.exit_code == 0, result.stderr
    moved = {v.what.split(": ")[0].rsplit("/", 1)[1] for v in result.violations}
    assert moved == {"hooks", "config"}
    assert not (workspace / ".git" / "hooks").exists()
    assert not (workspace / ".git" / "config").exists()
    # the repository still works on the host, and runs nothing
    git(workspace, "status")
    git(workspace, "commit", "-q", "--allow-empty", "-m", "host")
    assert (
        not (workspace / "ran").exists() and not (workspace / "fsmonitor-ran").exists()
    )


@pytest.mark.parametrize("fields", TIERS)
def test_a_git_file_planted_in_a_new_workspace_is_moved_aside(
    fields, workspace, outside
):
    os.makedirs(outside / "evil" / "hooks")
    result = sh(fields, workspace, f"echo 'gitdir: {outside}/evil' > .git")
    assert result.exit_code == 0
    assert not (workspace / ".git").exists()
    assert [v.what for v in result.violations] == [
        f"{workspace}/.git: created during the run"
    ]


def test_worktree_git_file_is_read_only(workspace, outside):
    main = outside / "main"
    main.mkdir()
    git(main, "init", "-q")
    git(main, "commit", "-q", "--allow-empty", "-m", "root")
    tree = workspace / "wt"
    git(main, "worktree", "add", "-q", str(tree))
    answers, _ = probe(
        manager({"tier": "namespaces"}),
        tree,
        [["retarget", "append", str(tree / ".git"), "gitdir: /elsewhere\n"]],
        cwd=tree,
    )
    assert answers["retarget"] == "EROFS"


@pytest.mark.parametrize("fields", TIERS)
def test_symlinked_hooks_directory_is_checked_and_its_target_read_only(
    fields, workspace
):
    repo(workspace)
    shared = workspace / "tools" / "hooks"
    write(shared / "pre-commit", "#!/bin/sh\nexit 0\n", 0o755)
    hooks = workspace / ".git" / "hooks"
    for name in os.listdir(hooks):
        os.unlink(hooks / name)
    os.rmdir(hooks)
    os.symlink("../tools/hooks", hooks)
    script = (
        "echo 'touch ran' >> tools/hooks/pre-commit; rm .git/hooks && mkdir .git/hooks"
    )
    result = sh(
        fields,
        workspace,
        script,
        allow_degraded=["protected_paths"] if is_second(fields) else [],
    )
    assert (shared / "pre-commit").read_text() == "#!/bin/sh\nexit 0\n"
    assert os.readlink(hooks) == "../tools/hooks"
    assert any("symbolic link" in note for note in result.notes)


def test_the_protected_list_is_configurable(workspace):
    before = repo(workspace)
    write(workspace / "Makefile", "all:\n")
    fields = {"tier": "namespaces"}
    answers, _ = probe(
        manager(fields, protected=["Makefile"]),
        workspace,
        [
            ["make", "append", str(workspace / "Makefile")],
            ["hook", "create", str(workspace / ".git" / "hooks" / "pre-commit")],
        ],
    )
    assert answers == {"make": "EROFS", "hook": "ok"}
    assert (workspace / ".git" / "hooks" / "pre-commit").exists()
    assert before["config"] == snapshot(workspace)["config"]
    assert SandboxConfig().protected[:2] == (".git/hooks", ".git/config")
    with pytest.raises(PolicyError, match=r"'\.\.'"):
        SandboxConfig.from_mapping({"protected": ["../x"]})


def test_missing_hooks_directory_is_checked_after_the_run(workspace):
    git(workspace, "init", "-q", "--template=")
    assert not (workspace / ".git" / "hooks").exists()
    result = sh(
        {"tier": "namespaces"},
        workspace,
        "mkdir .git/hooks && printf '#!/bin/sh\\n' > .git/hooks/post-checkout",
    )
    assert result.exit_code == 0
    assert not (workspace / ".git" / "hooks").exists()
    assert [v.what for v in result.violations] == [
        f"{workspace}/.git/hooks: created during the run"
    ]


def test_cli_protects_the_policy_file_in_the_workspace(workspace):
    policy = write(workspace / "policy.yaml", "mode: moderate\n")
    from stockade.cli import main

    code = main(
        [
            "run",
            "--no-log",
            "--json",
            "--config",
            str(policy),
            "--workspace",
            str(workspace),
            "--",
            "sh",
            "-c",
            f"echo 'mode: permissive' >> {policy}",
        ]
    )
    assert code != 0
    assert policy.read_text() == "mode: moderate\n"


async def test_a_cancelled_run_is_checked_after_it_was_stopped(workspace, caplog):
    import asyncio
    import logging

    mgr = manager({"tier": "namespaces"})
    script = (
        "git init -q && printf '#!/bin/sh\\ntouch PLANTED\\n' > .git/hooks/pre-commit && "
        "chmod +x .git/hooks/pre-commit && sleep 30"
    )
    task = asyncio.create_task(mgr.execute_async(["sh", "-c", script], cwd=workspace))
    hook = workspace / ".git" / "hooks" / "pre-commit"
    for _ in range(200):
        if hook.exists():
            break
        await asyncio.sleep(0.05)
    assert hook.exists(), "the run did not plant its hook"
    task.cancel()
    with caplog.at_level(logging.WARNING, logger="stockade"):
        with pytest.raises(asyncio.CancelledError):
            await task
    # stopped, awaited, then checked: the planted hook does not stay
    assert not hook.exists()
    assert any("interrupted" in r.getMessage() for r in caplog.records)