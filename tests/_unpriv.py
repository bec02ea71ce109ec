"""Run stockade as an unprivileged caller (uid 65534) from a root test run.

Tests as root can hide bugs, so the suite also calls stockade as ``nobody``
through ``setpriv``. The virtual environment's interpreter may live under
``/root`` (0700), so the caller runs a system Python of the same minor
version with the package and the venv's site-packages on PYTHONPATH.
"""

from __future__ import annotations

import functools
import os
import shutil
import site
import subprocess
import sys
import sysconfig
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

UNPRIV_UID = 65534
SRC = Path(__file__).resolve().parent.parent / "src"


def _system_python() -> str | None:
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for candidate in (f"/usr/bin/{version}", f"/usr/local/bin/{version}"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def unprivileged_python() -> list[str]:
    """argv prefix running a Python as uid 65534, or skip the test."""
    if os.geteuid() != 0:
        return [sys.executable]
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv (util-linux) is needed to run stockade as an unprivileged caller")
    python = _system_python()
    if python is None:
        pytest.skip(f"no system python{sys.version_info.major}.{sys.version_info.minor} that uid 65534 can run")
    return [setpriv, f"--reuid={UNPRIV_UID}", f"--regid={UNPRIV_UID}", "--clear-groups", python]


def unprivileged_env() -> dict[str, str]:
    paths = [str(SRC), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"], *site.getsitepackages()]
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "PYTHONPATH": os.pathsep.join(dict.fromkeys(paths)),
        "HOME": "/nonexistent",
        "LANG": "C.UTF-8",
    }


def run_unprivileged(args: list[str], *, cwd: str | os.PathLike[str], timeout: float = 120,
                     stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run ``python <args>`` as uid 65534 (or as the current user if not root)."""
    return subprocess.run(
        [*unprivileged_python(), *args],
        cwd=cwd,
        env=unprivileged_env(),
        input=stdin,
        capture_output=True,
        timeout=timeout,
    )


def give_to_unprivileged(path: Path) -> None:
    if os.geteuid() == 0:
        for root, dirs, files in os.walk(path):
            for name in (root, *(os.path.join(root, n) for n in dirs + files)):
                os.chown(name, UNPRIV_UID, UNPRIV_UID)


def run_code_as_nobody(code: str, *, cwd: Path, timeout: float = 120) -> dict:
    """Run Python ``code`` as uid 65534 in ``cwd``; returns its last JSON line."""
    import json

    proc = run_unprivileged(["-c", code], cwd=cwd, timeout=timeout)
    lines = [line for line in proc.stdout.decode().splitlines() if line.startswith("{")]
    assert proc.returncode == 0 and lines, (
        f"rc={proc.returncode}\n{proc.stdout.decode()}\n{proc.stderr.decode()}"
    )
    return json.loads(lines[-1])


# -- callers as objects: the same two identities, for tests that run both --------
#
#     from _unpriv import caller_dir, get_or_skip
#
#     for name in ("root", "unprivileged"):
#         caller = get_or_skip(name)
#         workspace = caller_dir(caller)          # under /var/tmp, owned by it
#         subprocess.run(caller.stockade("run", "--no-log", "--", "true"),
#                        cwd=workspace, env=caller.env)
#
# When the suite itself runs unprivileged, that user is the unprivileged
# caller (no setpriv) and the root caller is unavailable.

UNPRIV_GID = 65534
SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"


class CallerUnavailable(Exception):
    """This caller cannot be used on this host; the message says why."""


@dataclass(frozen=True)
class Caller:
    """A way to start Python processes as one kind of caller.

    Attributes:
        name: "root" or "unprivileged" (used in test ids).
        uid, gid: who the processes run as.
        python: argv prefix that starts the interpreter as this caller.
        env: the environment those processes need (PATH, PYTHONPATH, ...);
            pass it, possibly extended, as ``env=`` to subprocess.
        cli: argv prefix of the stockade CLI; empty means
            ``python -m stockade.cli``.
    """

    name: str
    uid: int
    gid: int
    python: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict, repr=False)
    cli: tuple[str, ...] = ()

    def run_python(self, *args: str) -> list[str]:
        """argv running ``python ARGS`` as this caller."""
        return [*self.python, *args]

    def stockade(self, *args: str) -> list[str]:
        """argv running the stockade CLI as this caller."""
        if self.cli:
            return [*self.cli, *args]
        return [*self.python, "-m", "stockade.cli", *args]


@functools.lru_cache(maxsize=1)
def root() -> Caller:
    """The suite's own root identity, using the suite's interpreter.

    Raises:
        CallerUnavailable: the suite does not run as root.
    """
    if os.geteuid() != 0:
        raise CallerUnavailable("the test suite is not running as root")
    env = dict(os.environ)
    # The console script of this environment when there is one, so that it is
    # exercised too; the unprivileged caller always uses ``python -m``.
    script = Path(sys.executable).with_name("stockade")
    cli = (str(script),) if os.access(script, os.X_OK) else ()
    if not cli:
        paths = [unprivileged_env()["PYTHONPATH"], env.get("PYTHONPATH", "")]
        env["PYTHONPATH"] = os.pathsep.join(filter(None, paths))
    return Caller("root", 0, 0, (sys.executable,), env, cli)


@functools.lru_cache(maxsize=1)
def unprivileged() -> Caller:
    """An unprivileged caller, checked to be able to import stockade.

    Raises:
        CallerUnavailable: with the reason (no setpriv, no system Python of
            the same minor version, or the checkout not readable by it).
    """
    env = unprivileged_env()
    if os.geteuid() != 0:
        caller = Caller(
            "unprivileged", os.getuid(), os.getgid(), (sys.executable,), env
        )
    else:
        setpriv = shutil.which("setpriv", path=SAFE_PATH)
        if not setpriv:
            raise CallerUnavailable("setpriv (util-linux) is not installed")
        python = _system_python()
        if python is None:
            raise CallerUnavailable(
                f"no system python{sys.version_info.major}.{sys.version_info.minor} "
                f"that uid {UNPRIV_UID} can run"
            )
        prefix = (
            setpriv,
            f"--reuid={UNPRIV_UID}",
            f"--regid={UNPRIV_GID}",
            "--clear-groups",
            python,
        )
        caller = Caller("unprivileged", UNPRIV_UID, UNPRIV_GID, prefix, env)
    probe = (
        "import sys, stockade, pydantic_core, yaml; "
        "print('%d.%d' % sys.version_info[:2])"
    )
    try:
        proc = subprocess.run(
            caller.run_python("-c", probe),
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            cwd="/",
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        raise CallerUnavailable(
            f"cannot start {caller.python[-1]} as uid {caller.uid}: {err}"
        ) from err
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise CallerUnavailable(
            f"{caller.python[-1]} as uid {caller.uid} cannot import stockade "
            f"from {env['PYTHONPATH']}: {last}"
        )
    want = "%d.%d" % sys.version_info[:2]
    if proc.stdout.strip() != want:
        raise CallerUnavailable(
            f"{caller.python[-1]} is Python {proc.stdout.strip()}, "
            f"the venv's packages are for {want}"
        )
    return caller


def get(name: str) -> Caller:
    """``root()`` or ``unprivileged()`` by name."""
    if name == "root":
        return root()
    if name == "unprivileged":
        return unprivileged()
    raise ValueError(f"unknown caller {name!r}")


def get_or_skip(name: str) -> Caller:
    """The named caller, or skip the test with the reason it is unavailable."""
    try:
        return get(name)
    except CallerUnavailable as err:
        pytest.skip(f"{name} caller unavailable: {err}")


def unprivileged_or_skip() -> Caller:
    return get_or_skip("unprivileged")


def caller_dir(
    caller: Caller, prefix: str = "stockade-test-", mode: int = 0o755
) -> Path:
    """A new directory under /var/tmp owned by ``caller`` (remove it yourself).

    /var/tmp rather than /tmp: the sandbox has a private /tmp, and a workspace
    under the host's /tmp would blur which of the two a test looks at.
    """
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/var/tmp"))
    os.chmod(path, mode)
    if os.geteuid() == 0 and caller.uid != 0:
        os.chown(path, caller.uid, caller.gid)
    return path
