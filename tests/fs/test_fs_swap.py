"""Paths changed on the host while a run lives (or while a sandbox waits).

The attack (issue 6): Linux detaches a mount in other mount namespaces when
the path it sits on is removed or renamed over on the host. An editor's
atomic save, ``sed -i`` or a host ``git config`` during a run would take the
sandbox's stand-in over a hidden file, or its read-only mount of
``.git/config``, away: the program then reads the new secret, or plants
``core.fsmonitor`` in the new config for host git to run. On the first tier
the caller watches those paths and ends the run; afterwards protected paths
that are other files than at launch are checked like ones the run created.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
import subprocess
import threading
import time
from pathlib import Path

import pytest
from fsutil import PY, SECOND_TIER, git, manager, needs_second_tier, write

from stockade import SandboxConfig, SandboxManager, SandboxUnavailableError, Termination
from stockade.fs import run as fsrun
from stockade.fs import watch as fswatch

FIRST_TIER = {"tier": "namespaces"}

# Runs INSIDE the sandbox: says it is ready, then polls TARGET for the host's
# new content; if it sees it, prints it and appends PLANT (when given).
WATCHER = r"""
import os, sys, time
target, plant = sys.argv[1], sys.argv[2]
open(os.path.join("run", "ready"), "w").close()
end = time.time() + 10
while time.time() < end:
    try:
        with open(target) as fh:
            data = fh.read()
    except OSError:
        data = ""
    if "NEW" in data:
        print("saw:" + data.strip(), flush=True)
        if plant:
            try:
                with open(target, "a") as fh:
                    fh.write(plant)
                print("planted", flush=True)
            except OSError as err:
                print("plant failed:", err.strerror, flush=True)
        sys.exit(0)
    time.sleep(0.1)
print("timeout", flush=True)
"""


def run_while(fields, workspace: Path, target: Path, on_host, *, plant="", **more):
    """Run WATCHER on ``target``; once it is ready, call ``on_host()``."""
    (workspace / "run").mkdir(exist_ok=True)
    os.chmod(workspace / "run", 0o777)
    (workspace / "run" / "ready").unlink(missing_ok=True)
    write(workspace / "run" / "watcher.py", WATCHER)
    mgr = manager(fields, **more)
    out = {}

    def go():
        out["result"] = mgr.execute(
            [PY, "run/watcher.py", str(target), plant], cwd=workspace
        )

    thread = threading.Thread(target=go)
    thread.start()
    ready = workspace / "run" / "ready"
    deadline = time.monotonic() + 20
    while not ready.exists() and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert ready.exists(), out
    on_host()
    thread.join(30)
    assert not thread.is_alive()
    return out["result"]


def replace(path: Path, text: str) -> None:
    """An atomic save, as editors and ``sed -i`` do: write aside, rename over."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.chmod(tmp, 0o666)
    os.rename(tmp, path)


def fs_violations(result):
    return [v for v in result.violations if v.mechanism == "filesystem"]


def test_a_host_rename_over_a_hidden_file_ends_the_run(workspace):
    env = write(workspace / ".env", "OLD\n")
    result = run_while(
        FIRST_TIER, workspace, env, lambda: replace(env, "NEW\n"), hidden=[".env"]
    )
    assert result.termination is Termination.SANDBOX_ERROR, result.stdout
    assert b"saw:" not in result.stdout
    assert f"{env} (hidden) was renamed over on the host" in (result.error or "")
    assert [v.what for v in fs_violations(result)] == [
        f"{env}: hidden; renamed over on the host"
    ]
    assert fs_violations(result)[0].action == "run ended"
    assert result.wall_time_sec < 8
    row = next(p for p in result.protections if p.name == "path_rules")
    assert "a host rename over one ends the run" in row.detail


def test_sed_i_on_a_read_only_file_ends_the_run(workspace):
    cfg = write(workspace / "setup.cfg", "orig\n")

    def sed():
        subprocess.run(["sed", "-i", "s/orig/NEW/", str(cfg)], check=True)

    result = run_while(
        FIRST_TIER, workspace, cfg, sed, plant="sandbox-wrote\n", read_only=["setup.cfg"]
    )
    assert result.termination is Termination.SANDBOX_ERROR, result.stdout
    assert b"planted" not in result.stdout
    assert cfg.read_text() == "NEW\n"
    assert "setup.cfg: read-only; renamed over" in fs_violations(result)[0].what


def _repo(workspace: Path) -> Path:
    git(workspace, "init", "-q")
    return workspace / ".git" / "config"


def test_a_host_git_config_during_the_run_ends_it_and_keeps_the_plain_config(
    workspace,
):
    config = _repo(workspace)

    def host_git_config():
        git(workspace, "config", "user.name", "NEW host")

    result = run_while(
        FIRST_TIER,
        workspace,
        config,
        host_git_config,
        plant="[core]\n\tfsmonitor = touch fsmonitor-ran\n",
    )
    assert result.termination is Termination.SANDBOX_ERROR, result.stdout
    assert b"planted" not in result.stdout
    assert [v.what for v in fs_violations(result)] == [
        f"{config}: protected; renamed over on the host"
    ]
    # the host's own change holds plain settings only: it stays
    assert "NEW host" in config.read_text()
    assert "fsmonitor" not in config.read_text()
    git(workspace, "status")
    assert not (workspace / "fsmonitor-ran").exists()


def test_a_protected_file_replaced_during_the_run_is_checked_like_a_new_one(
    workspace,
):
    """What the run may have written in the moment between the host's rename
    and the kill does not stay: the replaced config is checked afterwards."""
    config = _repo(workspace)
    planted = config.read_text() + "[core]\n\tfsmonitor = touch fsmonitor-ran\n# NEW\n"
    result = run_while(
        FIRST_TIER, workspace, config, lambda: replace(config, planted)
    )
    whats = [v.what for v in fs_violations(result)]
    assert f"{config}: protected; renamed over on the host" in whats
    assert f"{config}: replaced during the run" in whats
    assert not config.exists()
    assert any(
        n.startswith("config.stockade-quarantine-") for n in os.listdir(config.parent)
    )
    git(workspace, "status")
    assert not (workspace / "fsmonitor-ran").exists()


def test_a_hooks_directory_replaced_during_the_run_is_moved_aside(workspace):
    _repo(workspace)
    hooks = workspace / ".git" / "hooks"

    def swap_hooks():
        new = workspace / ".git" / "hooks.new"
        write(new / "pre-commit", "#!/bin/sh\ntouch hook-ran\n# NEW\n", 0o755)
        old = workspace / ".git" / "hooks.old"
        os.rename(hooks, old)
        os.rename(new, hooks)

    result = run_while(FIRST_TIER, workspace, hooks / "pre-commit", swap_hooks)
    assert result.termination is Termination.SANDBOX_ERROR, result.stdout
    whats = [v.what for v in fs_violations(result)]
    assert f"{hooks}: protected; moved away on the host" in whats
    assert f"{hooks}: replaced during the run" in whats
    assert not hooks.exists()
    git(workspace, "commit", "-q", "--allow-empty", "-m", "host")
    assert not (workspace / "hook-ran").exists()


def test_a_directory_above_a_hidden_file_moved_on_the_host_ends_the_run(
    workspace, outside
):
    """The stand-in moves with its directory: a new directory of that name
    would show the new file."""
    data = outside / "data"
    key = write(data / "sub" / "key", "OLD\n")

    def move_parent():
        os.rename(data / "sub", data / "sub.old")
        write(data / "sub" / "key", "NEW\n")

    result = run_while(
        FIRST_TIER,
        workspace,
        key,
        move_parent,
        read_only=[str(data)],
        hidden=[str(key)],
    )
    assert result.termination is Termination.SANDBOX_ERROR, result.stdout
    assert b"saw:" not in result.stdout
    assert fs_violations(result)[0].what == (
        f"{key}: hidden; moved away ({data / 'sub'}, a directory above it) on the host"
    )


def test_a_host_rename_of_another_file_does_not_end_the_run(workspace):
    """Events are filtered by name: the run's neighbours may change."""
    write(workspace / ".env", "secret\n")
    other = write(workspace / "notes.txt", "OLD\n")
    result = run_while(
        FIRST_TIER, workspace, other, lambda: replace(other, "NEW\n"), hidden=[".env"]
    )
    assert result.termination is Termination.EXITED, result.error
    assert b"saw:NEW" in result.stdout
    assert not fs_violations(result)


def test_no_watch_without_mounts_over_host_paths(workspace):
    """Off the fast path: a policy that places nothing over a visible host
    path (no rules, no existing protected path) sets up no watch."""
    mgr = manager(FIRST_TIER)
    prepared = mgr._prepare(["true"], workspace, None, None)
    try:
        assert prepared.fs.destinations == []
        assert fsrun.start_watch(prepared.fs) is None
    finally:
        mgr._cleanup(prepared)
    _repo(workspace)
    prepared = mgr._prepare(["true"], workspace, None, None)
    try:
        dests = {d.path: d.what for d in prepared.fs.destinations}
        assert dests == {
            str(workspace / ".git"): "pinned",
            str(workspace / ".git" / "config"): "protected",
            str(workspace / ".git" / "hooks"): "protected",
        }
    finally:
        mgr._cleanup(prepared)


@needs_second_tier
def test_second_tier_needs_no_watch_a_replaced_file_gets_no_grant(workspace):
    """Landlock's grants attach to the inodes the policy saw: a file renamed
    over a hidden or protected one has none, so it stays unreadable or
    read-only and the run goes on (docs/filesystem.md, the two tiers)."""
    env = write(workspace / ".env", "OLD\n")
    result = run_while(
        SECOND_TIER, workspace, env, lambda: replace(env, "NEW\n"), hidden=[".env"]
    )
    assert result.termination is Termination.EXITED
    assert b"timeout" in result.stdout and b"saw:" not in result.stdout
    assert not fs_violations(result)
    config = _repo(workspace)
    result = run_while(
        SECOND_TIER,
        workspace,
        config,
        lambda: git(workspace, "config", "user.name", "NEW host"),
        plant="[core]\n\tfsmonitor = touch fsmonitor-ran\n",
    )
    assert b"plant failed: Permission denied" in result.stdout, result.stdout
    assert "fsmonitor" not in config.read_text()


# -- the watch itself ----------------------------------------------------------


def _dest(path: Path) -> fswatch.Destination:
    st = os.lstat(path)
    return fswatch.Destination(str(path), (st.st_dev, st.st_ino), "hidden")


def test_the_watch_trips_on_its_names_only(workspace):
    target = write(workspace / "a", "a\n")
    write(workspace / "b", "b\n")
    with fswatch.MountWatch([(str(workspace), "a", _dest(target))]) as watch:
        os.rename(workspace / "b", workspace / "c")
        os.unlink(workspace / "c")
        assert watch.read() == []
        os.unlink(target)
        assert [t.how for t in watch.read()] == ["removed"]


def test_a_reused_watch_hears_nothing_of_its_last_run(workspace):
    """Instances are kept for the next run (closing one waits for the
    kernel's grace period): the old watches and events must not leak."""
    a = write(workspace / "a", "a\n")
    b = write(workspace / "b", "b\n")
    first = fswatch.MountWatch([(str(workspace), "a", _dest(a))])
    fd = first.fileno()
    first.close()
    with fswatch.MountWatch([(str(workspace), "b", _dest(b))]) as second:
        assert second.fileno() == fd
        os.unlink(a)
        assert second.read() == []
        os.unlink(b)
        assert [t.path for t in second.read()] == [str(b)]


def test_a_forked_child_closing_a_watch_leaves_the_parents(workspace):
    """A pool inherited through fork is closed by the child (pool.py): the
    inotify instance is shared, so the child must not remove its watches."""
    target = write(workspace / "a", "a\n")
    with fswatch.MountWatch([(str(workspace), "a", _dest(target))]) as watch:
        pid = os.fork()
        if pid == 0:
            try:
                watch.close()
            finally:
                os._exit(0)
        os.waitpid(pid, 0)
        os.unlink(target)
        assert [t.how for t in watch.read()] == ["removed"]


def test_lost_events_trip_every_path(workspace):
    target = write(workspace / "a", "a\n")
    with fswatch.MountWatch([(str(workspace), "a", _dest(target))]) as watch:
        overflow = struct.pack("iIII", -1, fswatch.IN_Q_OVERFLOW, 0, 0)
        trips = watch._parse(overflow)
    assert [t.path for t in trips] == [str(target)]
    assert "events were lost" in trips[0].how


def test_no_inotify_means_no_run(workspace, monkeypatch):
    """Fail closed: without the watch the mounts could be undone unseen."""
    write(workspace / ".env", "x\n")

    def used_up(_flags):
        ctypes.set_errno(errno.EMFILE)
        return -1

    monkeypatch.setattr(fswatch, "_idle", [])  # no instance kept from a run
    monkeypatch.setattr(fswatch._libc, "inotify_init1", used_up)
    with pytest.raises(SandboxUnavailableError, match="max_user_instances"):
        manager(FIRST_TIER, hidden=[".env"]).execute(["true"], cwd=workspace)


# -- prepared sandboxes (prewarm) ------------------------------------------------


def _pooled(workspace: Path, **more) -> SandboxManager:
    config = SandboxConfig(
        execution_log=False, workspace=workspace, tier="namespaces", **more
    )
    mgr = SandboxManager(config, prewarm=1)
    assert mgr.start(wait=True) == 1
    return mgr


def _read_env(mgr: SandboxManager, workspace: Path):
    return mgr.execute(["sh", "-c", "cat .env; echo rc=$?"], cwd=workspace)


def test_a_prepared_sandbox_is_not_used_after_a_host_rename(workspace):
    env = write(workspace / ".env", "OLD\n")
    with _pooled(workspace, hidden=[".env"]) as mgr:
        replace(env, "NEWSECRET\n")
        result = _read_env(mgr, workspace)
        assert not result.pooled
        assert b"NEWSECRET" not in result.stdout and b"rc=1" in result.stdout
        assert any(
            f"not pooled: {env} (hidden) was renamed over on the host after the "
            "sandboxes were prepared" in n
            for n in result.notes
        ), result.notes
        # a new pool is prepared for the new file, and serves runs again
        assert mgr.start(wait=True) == 1
        again = _read_env(mgr, workspace)
        assert again.pooled and b"NEWSECRET" not in again.stdout


def test_a_prepared_sandbox_checks_identities_at_take_time(workspace):
    """Without the pool's watch (a change it could not see), the identity
    the template was resolved against still decides."""
    env = write(workspace / ".env", "OLD\n")
    with _pooled(workspace, hidden=[".env"]) as mgr:
        mgr._pool.watch.close()
        mgr._pool.watch = None
        replace(env, "NEWSECRET\n")
        result = _read_env(mgr, workspace)
        assert not result.pooled
        assert b"NEWSECRET" not in result.stdout
        assert any(
            f"{env} (hidden) is not the file it was when the sandboxes were prepared"
            in n
            for n in result.notes
        ), result.notes


def test_a_pooled_run_is_watched_too(workspace):
    env = write(workspace / ".env", "OLD\n")
    (workspace / "run").mkdir()
    with _pooled(workspace, hidden=[".env"]) as mgr:
        write(workspace / "run" / "watcher.py", WATCHER)
        os.chmod(workspace / "run", 0o777)
        out = {}
        thread = threading.Thread(
            target=lambda: out.setdefault(
                "r", mgr.execute([PY, "run/watcher.py", str(env), ""], cwd=workspace)
            )
        )
        thread.start()
        deadline = time.monotonic() + 20
        while not (workspace / "run" / "ready").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        replace(env, "NEW\n")
        thread.join(30)
        result = out["r"]
    assert result.pooled
    assert result.termination is Termination.SANDBOX_ERROR, result.stdout
    assert b"saw:" not in result.stdout


async def test_an_async_run_is_watched_too(workspace):
    import asyncio

    env = write(workspace / ".env", "OLD\n")
    (workspace / "run").mkdir()
    os.chmod(workspace / "run", 0o777)
    write(workspace / "run" / "watcher.py", WATCHER)
    mgr = manager(FIRST_TIER, hidden=[".env"])
    task = asyncio.create_task(
        mgr.execute_async([PY, "run/watcher.py", str(env), ""], cwd=workspace)
    )
    for _ in range(400):
        if (workspace / "run" / "ready").exists():
            break
        await asyncio.sleep(0.025)
    replace(env, "NEW\n")
    result = await asyncio.wait_for(task, 30)
    assert result.termination is Termination.SANDBOX_ERROR, result.stdout
    assert b"saw:" not in result.stdout
