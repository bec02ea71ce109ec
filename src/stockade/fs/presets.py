"""Presets: small policy includes that make common tools work.

Each preset adds path rules and variables to a policy; it never widens
anything else. ``~`` in a preset means the caller's home on the host, and the
variables point the tool there, because the program's own HOME is private
(``/home/sandbox`` in the first tier, a per-run directory in the second).

``python``
    ``~/.cache/pip`` writable (created if missing) and ``PIP_CACHE_DIR``
    pointing to it; pip's version check and prompts off. When the caller has
    a virtual environment active (``VIRTUAL_ENV``), it becomes writable and
    stays active inside, so ``pip install`` installs into it. Code installed
    there runs when you use that environment later: activate the preset for
    environments you would let the program change.
``node``
    ``~/.npm`` writable (created if missing) and ``npm_config_cache``
    pointing to it; the update notifier, audit and funding calls off (they
    need the registry).
``git``
    The caller's git identity (``user.name``, ``user.email`` from the
    caller's global git config) as ``GIT_AUTHOR_*``/``GIT_COMMITTER_*``
    variables, and no terminal prompts. Nothing of the home directory
    becomes visible: not ``~/.gitconfig`` (it may hold tokens), not
    ``~/.ssh``.

Stdlib only: ``config.py`` imports the preset names from here.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Preset:
    """One preset: what it adds to the policy.

    Attributes:
        summary: one line for docs and ``--help``.
        writable: paths made writable (created as directories if missing).
        env: variables set for the run unless the policy or the call sets
            them; a value starting with ``~`` is expanded on the host.
    """

    summary: str
    writable: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)


PRESETS: dict[str, Preset] = {
    "python": Preset(
        summary="writable pip cache (~/.cache/pip) and active virtual environment",
        writable=("~/.cache/pip",),
        env={
            "PIP_CACHE_DIR": "~/.cache/pip",
            "PIP_DISABLE_PIP_VERSION_CHECK": "1",
            "PIP_NO_INPUT": "1",
        },
    ),
    "node": Preset(
        summary="writable npm cache (~/.npm)",
        writable=("~/.npm",),
        env={
            "npm_config_cache": "~/.npm",
            "npm_config_update_notifier": "false",
            "npm_config_audit": "false",
            "npm_config_fund": "false",
        },
    ),
    "git": Preset(
        summary="your git identity (name and email), nothing else of home",
        env={"GIT_TERMINAL_PROMPT": "0"},
    ),
}


@dataclass
class Expansion:
    """What a list of presets adds: writable paths, variables, notes."""

    writable: list[tuple[str, str]] = field(default_factory=list)  # (path, preset)
    env: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def expand(
    names: tuple[str, ...], *, home: str, environ: Mapping[str, str]
) -> Expansion:
    """The rules and variables of the named presets, for this caller.

    Args:
        names: preset names (validated by the policy).
        home: the caller's home directory (``~``).
        environ: the caller's environment (``VIRTUAL_ENV``, git's HOME).

    Returns:
        The expansion; paths are absolute host paths, not yet checked.
    """
    out = Expansion()
    for name in dict.fromkeys(names):
        preset = PRESETS[name]
        for path in preset.writable:
            out.writable.append((_home(path, home), name))
        for key, value in preset.env.items():
            out.env[key] = _home(value, home)
        if name == "python":
            venv = environ.get("VIRTUAL_ENV", "")
            if venv and os.path.isabs(venv) and os.path.isdir(venv):
                out.writable.append((venv, name))
                out.env["VIRTUAL_ENV"] = venv
                out.notes.append(f"preset python: virtual environment {venv} writable")
        if name == "git":
            identity = git_identity(
                environ.get("HOME", home), environ.get("GIT_CONFIG_GLOBAL")
            )
            if identity:
                out.env.update(identity)
            else:
                out.notes.append(
                    "preset git: no user.name/user.email in your global git config; "
                    "commits in the sandbox need an identity "
                    "(git config --global user.name ...)"
                )
    return out


def _home(value: str, home: str) -> str:
    if value == "~":
        return home
    if value.startswith("~/"):
        return os.path.join(home, value[2:])
    return value


@functools.lru_cache(maxsize=8)
def git_identity(home: str, config_global: str | None = None) -> dict[str, str]:
    """``GIT_AUTHOR_*``/``GIT_COMMITTER_*`` from the caller's global git
    config, or an empty mapping when git or the identity is missing.

    Cached per process: it runs ``git config`` on the host (a few ms).
    """
    git = shutil.which("git")
    if git is None:
        return {}
    env = {"HOME": home, "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    if config_global:
        env["GIT_CONFIG_GLOBAL"] = config_global
    values: dict[str, str] = {}
    for key in ("user.name", "user.email"):
        try:
            proc = subprocess.run(
                [git, "config", "--global", "--get", key],
                capture_output=True,
                text=True,
                env=env,
                timeout=10,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired):
            return {}
        value = proc.stdout.strip()
        if proc.returncode != 0 or not value or "\0" in value:
            return {}
        values[key] = value
    name, email = values["user.name"], values["user.email"]
    return {
        "GIT_AUTHOR_NAME": name,
        "GIT_AUTHOR_EMAIL": email,
        "GIT_COMMITTER_NAME": name,
        "GIT_COMMITTER_EMAIL": email,
    }
