"""Presets on both tiers, with the network off: pip installs a wheel built
here, npm installs a package packed here, git commits as the caller.

The caller's home is a temporary directory (``HOME``), so the presets'
``~/.cache/pip`` and ``~/.npm`` are checked on the host without touching the
real ones.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from fsutil import PY, TIERS, manager, write

from stockade.fs import presets

NPM = shutil.which("npm")


@pytest.fixture
def home(monkeypatch) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="stockade-test-home-", dir="/var/tmp"))
    monkeypatch.setenv("HOME", str(path))
    presets.git_identity.cache_clear()
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def build_wheel(directory: Path, name: str = "greeting", version: str = "0.1") -> Path:
    """A pure-Python wheel, written by hand: no build tool, no index."""
    files = {
        f"{name}/__init__.py": b"def hello():\n    return 'hello from a local wheel'\n",
        f"{name}-{version}.dist-info/METADATA": (
            f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode()
        ),
        f"{name}-{version}.dist-info/WHEEL": (
            b"Wheel-Version: 1.0\nGenerator: stockade-tests\nRoot-Is-Purelib: true\n"
            b"Tag: py3-none-any\n"
        ),
    }
    record = []
    path = directory / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        for member, data in files.items():
            wheel.writestr(member, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(
                b"="
            )
            record.append(f"{member},sha256={digest.decode()},{len(data)}")
        record.append(f"{name}-{version}.dist-info/RECORD,,")
        wheel.writestr(f"{name}-{version}.dist-info/RECORD", "\n".join(record) + "\n")
    os.chmod(path, 0o644)
    return path


@pytest.mark.parametrize("fields", TIERS)
def test_python_preset_pip_installs_a_local_wheel(fields, workspace, home):
    wheel = build_wheel(workspace)
    script = (
        f"{PY} -m venv --without-pip --system-site-packages venv && "
        f"venv/bin/python -m pip install --no-index {wheel.name} && "
        "venv/bin/python -c 'import greeting; print(greeting.hello())' && "
        "venv/bin/python -m pip cache dir"
    )
    result = manager(fields, presets=["python"]).execute(
        ["sh", "-c", script], cwd=workspace
    )
    out = result.stdout.decode()
    assert result.exit_code == 0, result.stderr.decode()
    assert "hello from a local wheel" in out
    assert out.strip().splitlines()[-1] == str(home / ".cache" / "pip")
    assert (home / ".cache" / "pip").is_dir()


@pytest.mark.parametrize("fields", TIERS)
def test_python_preset_makes_the_active_virtualenv_writable(
    fields, workspace, home, monkeypatch
):
    venv = home / "venvs" / "tool"
    subprocess.run(
        [PY, "-m", "venv", "--without-pip", "--system-site-packages", str(venv)],
        check=True,
    )
    wheel = build_wheel(workspace)
    monkeypatch.setenv("VIRTUAL_ENV", str(venv))
    monkeypatch.setenv("PATH", f"{venv}/bin:/usr/bin:/bin")
    site = venv / "lib" / "python3.11" / "site-packages"
    command = ["python", "-m", "pip", "install", "--no-index", str(wheel)]

    # without the preset the environment is read-only: pip fails, or falls
    # back to a user installation in the private HOME
    without = manager(fields).execute(command, cwd=workspace)
    assert without.exit_code != 0 or b"user installation" in without.stdout
    assert not (site / "greeting").exists()

    result = manager(fields, presets=["python"]).execute(command, cwd=workspace)
    assert result.exit_code == 0, result.stderr.decode()
    assert (site / "greeting" / "__init__.py").exists()
    assert any(f"virtual environment {venv} writable" in n for n in result.notes)


@pytest.mark.skipif(NPM is None, reason="npm is not installed")
@pytest.mark.parametrize("fields", TIERS)
def test_node_preset_npm_installs_a_local_package(fields, workspace, home):
    lib = workspace / "greeter"
    write(
        lib / "package.json",
        json.dumps({"name": "local-greeter", "version": "1.0.0", "main": "index.js"}),
    )
    write(lib / "index.js", "module.exports = () => 'hello from a local package';\n")
    write(
        workspace / "app" / "package.json",
        json.dumps({"name": "app", "version": "1.0.0", "private": True}),
    )
    script = (
        "set -e; cd greeter; npm pack --silent; cd ../app; "
        "npm install --no-audit --no-fund ../greeter/local-greeter-1.0.0.tgz; "
        "node -e 'console.log(require(\"local-greeter\")())'"
    )
    result = manager(fields, presets=["node"]).execute(
        ["sh", "-c", script], cwd=workspace
    )
    assert result.exit_code == 0, result.stderr.decode()
    assert "hello from a local package" in result.stdout.decode()
    assert (workspace / "app" / "node_modules" / "local-greeter" / "index.js").exists()
    assert (home / ".npm" / "_cacache").is_dir()


@pytest.mark.parametrize("fields", TIERS)
def test_git_preset_brings_the_identity_and_nothing_else_of_home(
    fields, workspace, home
):
    git_env = {"HOME": str(home), "PATH": "/usr/bin:/bin"}
    for key, value in (("user.name", "Ada Host"), ("user.email", "ada@example.org")):
        subprocess.run(
            ["git", "config", "--global", key, value], env=git_env, check=True
        )
    write(home / ".git-credentials", "https://user:token@example.org\n", 0o644)
    os.chmod(home, 0o755)
    subprocess.run(["git", "init", "-q", str(workspace)], env=git_env, check=True)
    script = (
        "set -e; echo a > a; git add a; git commit -qm first; "
        "git log --format='%an <%ae>'; "
        f"cat {home}/.gitconfig || echo no-gitconfig; "
        f"cat {home}/.git-credentials || echo no-credentials"
    )
    fields = {
        **fields,
        "allow_degraded": [*fields.get("allow_degraded", []), "protected_paths"],
    }
    result = manager(fields, presets=["git"]).execute(
        ["sh", "-c", script], cwd=workspace
    )
    out = result.stdout.decode()
    assert result.exit_code == 0, result.stderr.decode()
    assert "Ada Host <ada@example.org>" in out
    assert "no-gitconfig" in out and "no-credentials" in out
    assert "token" not in out
    log = subprocess.run(
        ["git", "log", "--format=%an"],
        cwd=workspace,
        env=git_env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "Ada Host" in log.stdout


def test_git_preset_without_an_identity_says_so(workspace, home):
    result = manager({}, presets=["git"]).execute(["true"], cwd=workspace)
    assert any("no user.name/user.email" in note for note in result.notes)
