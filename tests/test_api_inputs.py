"""Bad arguments to SandboxManager.execute / execute_async are the call's own
CommandError or PolicyError, raised before anything reaches the launcher; they
never disturb other runs on the same manager (real sandbox)."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import socket

import pytest

from stockade import SandboxConfig, SandboxManager, Termination
from stockade.errors import CommandError, PolicyError
from stockade.linux.client import shared_launcher


def _closed_fd() -> int:
    """A descriptor number that was open and is now closed; high, so that
    the run's own pipes do not take it again."""
    r, w = os.pipe()
    fd = os.dup2(r, 900)
    for n in (r, w, fd):
        os.close(n)
    return fd


@pytest.mark.parametrize("bad", ["closed", -1, 12345], ids=["closed", "minus1", "12345"])
def test_bad_stdin_fd_fails_that_call_only(manager, workspace, caplog, bad):
    if bad == "closed":
        bad = _closed_fd()

    async def main():
        other = asyncio.ensure_future(
            manager.execute_async(["sh", "-c", "sleep 1.5; echo survived"], cwd=workspace)
        )
        await asyncio.sleep(0.5)
        with pytest.raises(CommandError, match="not an open descriptor"):
            await manager.execute_async(["cat"], cwd=workspace, stdin=bad)
        return await other

    with caplog.at_level(logging.WARNING):
        result = asyncio.run(main())
    assert result.termination is Termination.EXITED, result
    assert result.stdout == b"survived\n"
    assert "launcher connection lost" not in caplog.text
    # the manager still runs things
    assert manager.execute(["echo", "ok"], cwd=workspace).stdout == b"ok\n"


@pytest.mark.parametrize("bad", [True, False], ids=["True", "False"])
def test_bool_stdin_refused(manager, workspace, bad):
    with pytest.raises(CommandError, match="not a descriptor"):
        manager.execute(["cat"], cwd=workspace, stdin=bad)


def test_object_without_fileno_refused(manager, workspace):
    with pytest.raises(CommandError, match="unsupported type object.*bytes or str"):
        manager.execute(["cat"], cwd=workspace, stdin=object())


def test_file_without_descriptor_refused(manager, workspace):
    class NoFd(io.RawIOBase):
        pass  # fileno() raises io.UnsupportedOperation

    with pytest.raises(CommandError, match="no usable descriptor"):
        manager.execute(["cat"], cwd=workspace, stdin=NoFd())
    closed = open(os.devnull, "rb")
    closed.close()
    with pytest.raises(CommandError, match="no usable descriptor"):
        manager.execute(["cat"], cwd=workspace, stdin=closed)


def test_bytesio_and_stringio_fed_as_data(manager, workspace):
    data = io.BytesIO(b"skip-fed bytes")
    data.seek(5)
    assert manager.execute(["cat"], cwd=workspace, stdin=data).stdout == b"fed bytes"
    assert manager.execute(["cat"], cwd=workspace, stdin=io.StringIO("text")).stdout == b"text"


def test_real_file_and_fd_still_work(manager, workspace):
    path = workspace / "in.txt"
    path.write_bytes(b"from a file")
    with open(path, "rb") as f:
        assert manager.execute(["cat"], cwd=workspace, stdin=f).stdout == b"from a file"
    fd = os.open(path, os.O_RDONLY)
    try:
        assert manager.execute(["cat"], cwd=workspace, stdin=fd).stdout == b"from a file"
    finally:
        os.close(fd)


def test_launcher_send_ebadf_keeps_connection(workspace):
    """A descriptor that goes bad after the checks (sendmsg EBADF) fails
    that run only: the launcher is not restarted."""
    launcher = shared_launcher()
    manager = SandboxManager(SandboxConfig(execution_log=False))
    manager.execute(["true"], cwd=workspace)
    pid = launcher.pid()
    with pytest.raises(CommandError, match=r"stdin \(fd"):
        launcher.submit({"argv": ["true"]}, _closed_fd(), 1, 2)
    assert launcher.pid() == pid
    assert manager.execute(["echo", "ok"], cwd=workspace).stdout == b"ok\n"
    assert launcher.pid() == pid


def test_bytes_cwd(manager, workspace):
    result = manager.execute(["pwd"], cwd=os.fsencode(workspace))
    assert result.termination is Termination.EXITED
    assert result.stdout == os.fsencode(workspace) + b"\n"


def test_unbalanced_quote_is_command_error(manager, workspace):
    with pytest.raises(CommandError, match=r"""cannot split the command "echo 'x": No closing quotation"""):
        manager.execute("echo 'x", cwd=workspace)


def test_relative_missing_workspace_named(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    manager = SandboxManager(SandboxConfig(workspace="relative", execution_log=False))
    with pytest.raises(PolicyError, match="workspace = 'relative': not an existing directory.*relative workspace is resolved against your current directory") as info:
        manager.execute(["true"])
    assert info.value.key == "workspace"


def test_path_has_no_duplicates(workspace, monkeypatch):
    monkeypatch.setenv("PATH", "/usr/bin:/bin:/usr/bin:/usr/local/bin:/bin")
    manager = SandboxManager(SandboxConfig(execution_log=False))
    result = manager.execute(["sh", "-c", 'printf %s "$PATH"'], cwd=workspace)
    assert result.stdout == b"/usr/bin:/bin:/usr/local/bin"
