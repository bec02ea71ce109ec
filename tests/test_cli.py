"""The CLI's exit statuses and output, through a real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


def cli(*args: str, cwd, stdin: bytes | None = None, env=None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "stockade.cli", *args],
        cwd=cwd,
        input=stdin,
        env=env,
        capture_output=True,
        timeout=120,
    )


def test_exit_status_is_the_programs(workspace):
    proc = cli("run", "--no-log", "--", "sh", "-c", "echo out; exit 7", cwd=workspace)
    assert proc.returncode == 7
    assert proc.stdout == b"out\n"
    assert b"stockade: exited 7" in proc.stderr


def test_signal_gives_128_plus_n(workspace):
    proc = cli("run", "--no-log", "--", "sh", "-c", "kill -TERM $$", cwd=workspace)
    assert proc.returncode == 128 + 15


def test_timeout_gives_124(workspace):
    proc = cli("run", "--no-log", "--timeout", "0.5", "--", "sleep", "30", cwd=workspace)
    assert proc.returncode == 124
    assert b"timeout" in proc.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["run", "--no-log", "--config", "/nonexistent-policy.yaml", "--", "true"],
        ["run", "--no-log", "--cwd", "/nonexistent-dir", "--", "true"],
    ],
)
def test_sandbox_errors_give_125(workspace, args):
    proc = cli(*args, cwd=workspace)
    assert proc.returncode == 125, proc.stderr
    assert proc.stderr.startswith(b"stockade: ")


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--timeout", "inf", b"timeout_sec = inf"),
        ("--timeout", "nan", b"timeout_sec = nan"),
        ("--cpu-time", "1e400", b"cpu_time_sec = inf"),
        ("--cpu-time", "1e20", b"cpu_time_sec = 1e+20: must be at most 2592000"),
        ("--disk", str(10**15), b"disk_mb = 1000000000000000: must be at most 16777216"),
        ("--pids", str(2**40), b"max_processes = 1099511627776: must be at most"),
    ],
)
def test_non_finite_or_huge_limits_are_refused_before_the_run(workspace, option, value, message):
    proc = cli("run", "--no-log", option, value, "--", "true", cwd=workspace)
    assert proc.returncode == 2, proc.stderr
    assert b"Traceback" not in proc.stderr
    assert proc.stderr.startswith(b"stockade: command line: ") and message in proc.stderr, proc.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--timeout", "0"], b"stockade: command line: timeout_sec = 0.0: "),
        (["--memory", "0"], b"stockade: command line: memory_mb = 0: "),
        (["--env", "A"], b"--env 'A': expected NAME=VALUE"),
        (["--no-such-option"], b"unrecognized arguments"),
        # path rules are checked when the run is prepared; an option's is
        # still a bad option value
        (["--hide", "/"], b"stockade: hidden: / (given as '/'): a rule on /"),
        (["--rw", "/etc/x"], b"stockade: writable: /etc/x (given as '/etc/x'): "),
        (["--ro", "/nonexistent-stockade"], b"read_only: /nonexistent-stockade does not exist"),
    ],
)
def test_usage_errors_and_bad_option_values_give_2(workspace, args, message):
    proc = cli("run", "--no-log", *args, "--", "true", cwd=workspace)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and b"Traceback" not in proc.stderr, proc.stderr


def test_not_executable_gives_126(workspace):
    (workspace / "script.sh").write_text("echo hi\n")
    proc = cli("run", "--no-log", "--", "./script.sh", cwd=workspace)
    assert proc.returncode == 126
    assert b"not executable" in proc.stderr


def test_json_result(workspace):
    proc = cli("run", "--no-log", "--json", "--", "sh", "-c", "echo hi; echo oops >&2; exit 3", cwd=workspace)
    assert proc.returncode == 3
    data = json.loads(proc.stdout)
    assert data["exit_code"] == 3 and data["stdout"] == "hi\n" and data["stderr"] == "oops\n"
    assert data["termination"] == "exited"


def test_stdin_passes_through(workspace):
    proc = cli("run", "--no-log", "--", "wc", "-c", cwd=workspace, stdin=b"12345")
    assert proc.stdout.strip() == b"5"


def test_stdin_reaches_the_program_with_json(workspace):
    proc = cli("run", "--no-log", "--json", "--", "cat", cwd=workspace, stdin=b"hello\n")
    data = json.loads(proc.stdout)
    assert data["stdout"] == "hello\n", data


def test_denied_write_example_as_the_readme_runs_it(workspace, tmp_path):
    # README: stockade run --workspace DIR -- python3 - /etc/hostname "$HOME/.bashrc" < examples/denied_write.py
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    home = tmp_path / "home"  # a stand-in for the caller's home, with a .bashrc
    home.mkdir()
    bashrc = home / ".bashrc"
    bashrc.write_text("# the caller's shell start-up\n")
    hostname = Path("/etc/hostname").read_bytes()
    script = (repo / "examples" / "denied_write.py").read_bytes()

    proc = cli("run", "--no-log", "--workspace", str(workspace), "--", "python3", "-",
               "/etc/hostname", str(bashrc), cwd=workspace, stdin=script,
               env={**os.environ, "HOME": str(home)})

    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.decode().splitlines()
    assert lines[0] in ("refused: /etc/hostname: Permission denied",
                        "refused: /etc/hostname: Read-only file system"), lines
    assert lines[1] == f"refused: {bashrc}: No such file or directory", lines
    assert b"stockade: exited 0" in proc.stderr
    assert Path("/etc/hostname").read_bytes() == hostname
    assert bashrc.read_text() == "# the caller's shell start-up\n"


def test_env_option(workspace):
    proc = cli("run", "--no-log", "--env", "GREETING=hello", "--", "sh", "-c", "echo $GREETING", cwd=workspace)
    assert proc.stdout == b"hello\n"


def test_version():
    proc = subprocess.run([sys.executable, "-m", "stockade.cli", "--version"], capture_output=True)
    assert proc.returncode == 0 and proc.stdout.startswith(b"stockade ")


def test_execution_log_records_runs(workspace, tmp_path):
    log = tmp_path / "runs.jsonl"
    policy = tmp_path / "policy.yaml"
    policy.write_text(f"execution_log: {log}\n")
    cli("run", "--config", str(policy), "--", "sh", "-c", "exit 4", cwd=workspace)
    cli("run", "--config", str(policy), "--", "true", cwd=workspace)
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [entry["exit_code"] for entry in lines] == [4, 0]
    first = lines[0]
    assert first["command"] == ["sh", "-c", "exit 4"] and first["mode"] == "moderate"
    assert first["termination"] == "exited" and "usage" in first and first["cwd"] == str(workspace)


def test_command_not_found_gives_127(workspace):
    proc = cli("run", "--no-log", "--", "no-such-command-anywhere", cwd=workspace)
    assert proc.returncode == 127
    assert b"command not found" in proc.stderr


def test_a_limit_the_program_survived_is_not_exit_0(workspace):
    # The program's forks are refused at the process limit; it shrugs and
    # exits 0 at once (os._exit right after the refusal). The launcher also
    # ends the run when it sees the refusal (a poll every 50 ms), so on a
    # loaded host it may kill the program first: then the status is 128+9.
    # Each attempt must map its own outcome correctly; at least one of them
    # must be the program's own exit 0, which must give 3, never 0.
    code = (
        "import os, time\n"
        "for i in range(20):\n"
        "    try:\n"
        "        if os.fork() == 0:\n"
        "            time.sleep(3); os._exit(0)\n"
        "    except OSError:\n"
        "        os._exit(0)\n"
    )
    outcomes = []
    for _attempt in range(5):
        proc = cli("run", "--no-log", "--pids", "8", "--timeout", "30", "--json", "--",
                   "python3", "-c", code, cwd=workspace)
        data = json.loads(proc.stdout)
        assert data["termination"] == "pids_limit", data["termination"]
        if data["exit_code"] == 0:
            assert proc.returncode == 3
            return
        # killed by the launcher before it exited
        assert (data["exit_code"], data["signal"]) == (None, 9), data
        assert proc.returncode == 128 + 9
        outcomes.append(data["signal"])
    pytest.fail(f"the program never exited by itself before the kill: {outcomes}")


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGHUP", "SIGINT"])
def test_signal_to_the_cli_stops_the_run_and_checks_protected_paths(workspace, signame):
    import signal
    import time

    tag = f"stockade-cli-signal-{os.getpid()}-{signame}"
    cli_proc = subprocess.Popen(
        [sys.executable, "-m", "stockade.cli", "run", "--no-log", "--", "bash", "-c",
         f"git init -q && git config core.fsmonitor 'touch {workspace}/PLANTED' && exec -a {tag} sleep 60"],
        cwd=workspace, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    config = workspace / ".git" / "config"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not (config.exists() and "fsmonitor" in config.read_text()):
        time.sleep(0.05)
    assert config.exists(), "the run did not start"
    time.sleep(0.3)
    cli_proc.send_signal(getattr(signal, signame))
    out, err = cli_proc.communicate(timeout=60)
    assert cli_proc.returncode == 128 + getattr(signal, signame), err.decode()
    assert b"Traceback" not in err
    assert f"{signame}: the run was stopped".encode() in err
    # the planted config did not stay where git would act on it
    assert not config.exists() or "fsmonitor" not in config.read_text()
    leftovers = [p for p in os.listdir("/proc") if p.isdigit() and _cmdline_has(p, tag)]
    assert leftovers == []


def _cmdline_has(pid: str, tag: str) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return tag.encode() in fh.read()
    except OSError:
        return False


def test_json_keeps_binary_output_exactly(workspace):
    import base64

    proc = cli("run", "--no-log", "--json", "--", "printf", "\\377\\376ok", cwd=workspace)
    data = json.loads(proc.stdout)
    assert base64.b64decode(data["stdout_base64"]) == b"\xff\xfeok"
    assert "stderr_base64" not in data


def test_limits_take_none(workspace):
    proc = cli("run", "--no-log", "--json", "--memory", "none", "--cpu-time", "none", "--", "true", cwd=workspace)
    data = json.loads(proc.stdout)
    assert data["limits"]["memory_mb"] is None and data["limits"]["cpu_time_sec"] is None


def test_python_dash_m_stockade(workspace):
    proc = subprocess.run([sys.executable, "-m", "stockade", "--version"], capture_output=True)
    assert proc.returncode == 0 and proc.stdout.startswith(b"stockade ")


PROBE = os.path.join(os.path.dirname(__file__), "payloads", "syscall_probe.py")


def _summary_denied(stderr: bytes) -> str:
    """The ``denied:`` part of the summary line ``stockade run`` prints last."""
    line = stderr.decode().rstrip("\n").splitlines()[-1]
    assert line.startswith("stockade: "), stderr
    [part] = [p for p in line.split("; ") if p.startswith("denied: ")]
    return part


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="the probe's call numbers are x86_64's")
def test_run_names_each_denied_call_with_its_count_on_stderr(workspace):
    import shutil

    shutil.copy(PROBE, workspace / "syscall_probe.py")
    probes = [
        {"id": "keyctl", "nr": 250, "args": [0, -3, 0]},
        {"id": "ptrace", "nr": 101, "args": [2, 1, 0, 0]},
        {"id": "inet-1", "nr": 41, "args": [2, 1, 0]},
        {"id": "inet-2", "nr": 41, "args": [10, 1, 0]},
        {"id": "newuser", "nr": 272, "args": [0x10000000]},  # unshare(CLONE_NEWUSER)
        {"id": "pivot", "nr": 155, "args": ["s:/nonexistent", "s:/nonexistent"]},
    ]
    proc = cli("run", "--no-log", "--", "python3", "syscall_probe.py", json.dumps(probes),
               cwd=workspace)
    assert proc.returncode == 0, proc.stderr
    outcomes = {}
    for line in proc.stdout.decode().splitlines():
        outcomes.update(json.loads(line))
    assert set(outcomes.values()) == {"errno:EPERM", "errno:EAFNOSUPPORT"}, outcomes
    assert _summary_denied(proc.stderr) == (
        "denied: keyctl x1, pivot_root x1, ptrace x1, socket x2, unshare x1"
    )


def test_run_counts_every_unshare_of_a_shell_script(workspace):
    """The audit's case: three unshare(1) calls, three denials named."""
    import shutil

    if not shutil.which("unshare"):
        pytest.skip("util-linux's unshare is not installed")
    proc = cli("run", "--no-log", "--", "sh", "-c",
               "unshare -U true; unshare -r true; unshare -n true", cwd=workspace)
    assert proc.stderr.count(b"unshare failed: Operation not permitted") == 3, proc.stderr
    assert _summary_denied(proc.stderr) == "denied: unshare x3"


FAKE_SUMMARY = "\x1b[2K\rstockade: exited 0 (all fine)"


def test_a_path_the_program_named_is_escaped_in_the_summary(workspace):
    """A directory named with terminal controls, whose git config the
    program changes (quarantined, and named in ``denied:``), cannot erase
    the summary line and draw a fake one."""
    import shutil

    if not shutil.which("git"):
        pytest.skip("git is not installed")
    script = 'mkdir -p "$1" && cd "$1" && git init -q . && git config core.fsmonitor x'
    proc = cli("run", "--no-log", "--", "sh", "-c", script, "sh", FAKE_SUMMARY, cwd=workspace)
    line = proc.stderr.decode().rstrip("\n").splitlines()[-1]
    assert line.startswith("stockade: "), proc.stderr
    assert "\x1b" not in line and "\r" not in line, line
    assert "/\\x1b[2K\\x0dstockade: exited 0 (all fine)/.git/config" in _summary_denied(proc.stderr)


@pytest.mark.parametrize("control", ["\x1bc", "\r", "\x9b2K", "\u202e", "\x07"])
def test_cli_error_messages_escape_control_characters(workspace, control):
    proc = cli("run", "--no-log", "--ro", f"/nonexistent{control}dir", "--", "true",
               cwd=workspace)
    assert proc.returncode == 2, proc.stderr
    text = proc.stderr.decode()
    assert text.startswith("stockade: ") and text.count("\n") == 1, text
    assert control not in text
    assert "/nonexistent\\" in text and "dir does not exist" in text


def _stderr_on_a_terminal(*args: str, cwd) -> bytes:
    """``stockade`` with its stderr on a pseudo-terminal: what it wrote there."""
    import pty

    master, slave = pty.openpty()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "stockade.cli", *args],
            cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=slave,
            timeout=120,
        )
        os.close(slave)
        slave = -1
        out = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the slave side is closed
                break
            if not chunk:
                break
            out += chunk
    finally:
        if slave >= 0:
            os.close(slave)
        os.close(master)
    assert proc.returncode == 0, out
    return out


def test_on_a_terminal_the_summary_starts_with_an_sgr_reset(workspace):
    # the program leaves the terminal drawing hidden text (SGR 8)
    out = _stderr_on_a_terminal("run", "--no-log", "--", "sh", "-c", "printf 'x\\033[8m' >&2",
                                cwd=workspace)
    assert out.startswith(b"x\x1b[8m"), out
    assert b"\x1b[8m\x1b[0mstockade: exited 0" in out, out


def test_not_on_a_terminal_the_summary_has_no_sgr_reset(workspace):
    proc = cli("run", "--no-log", "--", "true", cwd=workspace)
    assert proc.stderr.startswith(b"stockade: exited 0"), proc.stderr
    assert b"\x1b" not in proc.stderr


@pytest.mark.parametrize(("script", "status"), [("true", 0), ("exit 5", 5)])
def test_json_to_a_reader_that_is_gone_exits_quietly_with_the_runs_status(workspace, script, status):
    # `stockade run --json ... | true`: the pipe's reader exits first
    r, w = os.pipe()
    os.close(r)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "stockade.cli", "run", "--no-log", "--json", "--", "sh", "-c", script],
            cwd=workspace, stdin=subprocess.DEVNULL, stdout=w, stderr=subprocess.PIPE, timeout=120,
        )
    finally:
        os.close(w)
    assert proc.returncode == status, proc.stderr
    assert b"Traceback" not in proc.stderr and b"BrokenPipeError" not in proc.stderr, proc.stderr


def test_a_relative_cwd_missing_here_but_in_the_workspace_is_pointed_out(workspace, tmp_path):
    (workspace / "sub").mkdir()
    proc = cli("run", "--no-log", "--workspace", str(workspace), "--cwd", "sub", "--", "pwd",
               cwd=tmp_path)
    assert proc.returncode == 125, proc.stderr
    text = proc.stderr.decode()
    assert "resolved against your current directory" in text, text
    assert f"did you mean '{os.path.realpath(workspace)}/sub'?" in text, text
    # from the workspace itself the same option works
    proc = cli("run", "--no-log", "--workspace", str(workspace), "--cwd", "sub", "--", "pwd",
               cwd=workspace)
    assert proc.returncode == 0 and proc.stdout.strip().endswith(b"/sub"), proc.stderr


def test_a_path_rule_of_the_policy_file_still_gives_125(workspace):
    policy = workspace / "policy.yaml"
    policy.write_text("hidden: ['/']\n")
    proc = cli("run", "--no-log", "--config", str(policy), "--", "true", cwd=workspace)
    assert proc.returncode == 125, proc.stderr
    assert b"a rule on / would cover" in proc.stderr


def test_an_empty_workspace_option_is_a_usage_error(workspace):
    proc = cli("run", "--no-log", "--workspace", "", "--", "true", cwd=workspace)
    assert proc.returncode == 2, proc.stderr
    assert b"workspace = '': " in proc.stderr and b"empty" in proc.stderr


@pytest.mark.parametrize(
    ("line", "status", "message"),
    [
        ("/nonexistent/interp", 127, "the interpreter /nonexistent/interp does not exist"),
        ("relative/x", 127, "the interpreter {ws}/relative/x does not exist"),
        ("x", 127, "the interpreter {ws}/x does not exist"),
        ("{ws}/fifo", 126, "the interpreter {ws}/fifo is not a regular file"),
        ("/usr/bin/env stockade-no-such-program", 127, "is not on the sandbox's PATH"),
    ],
)
def test_shebang_naming_what_cannot_run_gives_127_or_126(workspace, line, status, message):
    """A #! interpreter that is missing, relative and missing (resolved
    against the run's directory, as the kernel does; this once spun
    forever), or a FIFO (whose open blocked forever): a clean error, at
    once, with the shells' status."""
    ws = os.path.realpath(workspace)
    os.mkfifo(os.path.join(ws, "fifo"))
    script = os.path.join(ws, "s")
    with open(script, "w") as fh:
        fh.write(f"#!{line.format(ws=ws)}\n")
    os.chmod(script, 0o755)
    proc = subprocess.run(
        [sys.executable, "-m", "stockade.cli", "run", "--no-log", "--", "./s"],
        cwd=ws, capture_output=True, timeout=60,
    )
    text = proc.stderr.decode()
    assert proc.returncode == status, text
    assert message.format(ws=ws) in text and "Traceback" not in text, text


def test_a_policy_field_among_the_flag_limits_gives_125_and_nothing_runs(workspace):
    # the trial's repro: mode disabled hidden under sandbox_resource_limits
    policy = workspace / "rl.yaml"
    policy.write_text(
        "security:\n  sandbox_enabled: true\n  sandbox_mode: strict\n"
        "  sandbox_resource_limits:\n    cpu_time_sec: 60\n    mode: disabled\n    network: loopback\n"
    )
    marker = workspace / "RAN"
    proc = cli("run", "--no-log", "--config", str(policy), "--",
               "sh", "-c", f"touch {marker}; tr '\\0' ' ' </proc/1/cmdline", cwd=workspace)
    assert proc.returncode == 125, proc.stderr
    assert proc.stdout == b""
    assert not marker.exists()
    text = proc.stderr.decode()
    assert text.startswith("stockade: ") and text.count("\n") == 1, text
    assert "security.sandbox_resource_limits.mode" in text and "security.sandbox_policy" in text


def test_a_missing_workspace_option_is_a_usage_error(workspace):
    """--workspace naming a directory that does not exist is an option value
    the policy refuses (2), like --ro of a missing path; a missing --cwd stays
    a sandbox error (125, test_sandbox_errors_give_125)."""
    proc = cli("run", "--no-log", "--workspace", "/nonexistent-dir", "--", "true", cwd=workspace)
    assert proc.returncode == 2, proc.stderr
    assert b"workspace = '/nonexistent-dir': not an existing directory" in proc.stderr
