"""bubblewrap: finding it, knowing what it can do, and building its arguments.

The mount view, outermost first (bubblewrap applies them in order):

* ``/usr``, ``/etc`` read-only, plus ``/bin``, ``/sbin``, ``/lib*`` as the
  host has them (symlinks into ``/usr`` on merged-usr systems, else
  read-only binds). ``/etc`` is needed whole: the dynamic loader cache,
  ``/etc/alternatives`` (Debian's program links), certificates, passwd and
  group for name lookups, locale and timezone data. Files in it that only
  root may read stay unreadable: the program never runs as root.
* moderate and permissive add ``/opt`` (vendor tools install there);
  permissive also ``/sys``, ``/var/lib`` and ``/var/cache`` read-only.
* A fresh ``/proc`` for the new pid namespace and a minimal ``/dev``
  (null, zero, full, random, urandom, tty, pts).
* Private, size-capped tmpfs at ``/tmp``, ``/var/tmp``, ``/dev/shm`` (POSIX
  semaphores for multiprocessing) and the private HOME.
* Installations the command needs read-only (see ``resolve.py``).
* The workspace, writable, at its own path.

Nothing else: no ``/home``, ``/root``, ``/run``, ``/var``, ``/mnt``,
``/media``, and none of the host's sockets (they live under ``/run`` and
``/tmp``).
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..config import SandboxConfig, SandboxMode
from ..errors import SandboxUnavailableError

HOME_IN_SANDBOX = "/home/sandbox"

_MERGED_USR_LINKS = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
_SYSTEM_RO = {
    SandboxMode.STRICT: ("/usr", "/etc"),
    SandboxMode.MODERATE: ("/usr", "/etc", "/opt"),
    SandboxMode.PERMISSIVE: ("/usr", "/etc", "/opt", "/sys", "/var/lib", "/var/cache"),
}
_PRIVATE_TMPFS = ("/tmp", "/var/tmp", "/dev/shm")

# Paths that must never become the writable workspace.
_FORBIDDEN_WORKSPACES = (
    "/", "/usr", "/etc", "/bin", "/sbin", "/lib", "/lib64", "/opt", "/var",
    "/proc", "/sys", "/dev", "/run", "/boot", "/home", "/root", "/tmp",
)


@dataclass(frozen=True)
class BwrapInfo:
    path: str
    version: str
    has_bind_fd: bool
    has_disable_userns: bool
    has_size: bool


@functools.lru_cache(maxsize=8)
def find_bwrap(explicit: str | None = None) -> BwrapInfo:
    """Locate bubblewrap and read what it supports.

    Raises:
        SandboxUnavailableError: bwrap is not installed or does not run.
    """
    path = explicit or shutil.which("bwrap") or ""
    if not path or not os.access(path, os.X_OK):
        raise SandboxUnavailableError(
            "namespaces",
            "bubblewrap (bwrap) is not installed" if not explicit else f"{explicit} is not executable",
            "install it: `sudo apt-get install bubblewrap` (Debian/Ubuntu), "
            "`sudo dnf install bubblewrap` (Fedora)",
        )
    try:
        version = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10).stdout.strip()
        helptext = subprocess.run([path, "--help"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired) as err:
        raise SandboxUnavailableError("namespaces", f"{path} does not run: {err}", "reinstall bubblewrap") from err
    return BwrapInfo(
        path=path,
        version=version.replace("bubblewrap", "").strip() or "unknown",
        has_bind_fd="--bind-fd" in helptext,
        has_disable_userns="--disable-userns" in helptext,
        has_size="--size" in helptext,
    )


def forbidden_workspace(path: str, home: str | None) -> str | None:
    """Why a directory may not be the writable workspace, or None."""
    if home and os.path.normpath(home) == path:
        return f"{path} is your home directory"
    if path in _FORBIDDEN_WORKSPACES:
        return f"{path} is a system directory"
    if home and os.path.normpath(home).startswith(path.rstrip("/") + "/"):
        return f"{path} contains your home directory"
    return None


@dataclass
class MountPlan:
    """bubblewrap arguments plus what the launcher must open for them."""

    args: list[str] = field(default_factory=list)
    bind_paths: list[str] = field(default_factory=list)   # opened O_PATH by the launcher
    visible_ro: list[str] = field(default_factory=list)
    writable: list[str] = field(default_factory=list)

    def visible(self, path: str) -> bool:
        """Whether the mount view shows this host path unchanged."""
        path = os.path.normpath(path)
        for root in (*self.visible_ro, *self.writable):
            if path == root or path.startswith(root.rstrip("/") + "/"):
                return True
        return False


def system_paths(mode: SandboxMode) -> tuple[list[str], list[tuple[str, str]]]:
    """Read-only system dirs and (link, target) pairs for this host and mode."""
    binds: list[str] = []
    links: list[tuple[str, str]] = []
    for path in _SYSTEM_RO[mode]:
        if os.path.isdir(path):
            binds.append(path)
    for path in _MERGED_USR_LINKS:
        if os.path.islink(path):
            links.append((path, os.readlink(path)))
        elif os.path.isdir(path):
            binds.append(path)
    return binds, links


def base_plan(mode: SandboxMode, workspace: str) -> MountPlan:
    """What the mount view shows before the command's own needs are added."""
    plan = MountPlan()
    binds, links = system_paths(mode)
    plan.visible_ro.extend(binds)
    plan.visible_ro.extend(link for link, _ in links)
    plan.writable.append(workspace)
    return plan


def build_args(
    config: SandboxConfig,
    plan: MountPlan,
    *,
    workspace: str,
    cwd: str,
    extra_ro: Sequence[str],
    info: BwrapInfo,
    fd_first_bind: int,
    fd_json_status: int,
) -> list[str]:
    """bubblewrap's options (without the command), in mount order.

    User paths (installations, the workspace) are bound through descriptors
    the launcher opens once (``--ro-bind-fd``/``--bind-fd``) when this
    bubblewrap supports it: the path is resolved a single time, and a root
    caller's launcher can open paths the sandbox uid could not traverse.
    """
    args: list[str] = [
        "--unshare-user",
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-net",
        "--unshare-cgroup-try",
        "--die-with-parent",
        "--new-session",
        "--cap-drop", "ALL",
        "--json-status-fd", str(fd_json_status),
    ]
    if info.has_disable_userns:
        args.append("--disable-userns")

    binds, links = system_paths(config.mode)
    for path in binds:
        args += ["--ro-bind", path, path]
    for link, target in links:
        args += ["--symlink", target, link]
    args += ["--proc", "/proc", "--dev", "/dev"]

    size = str(config.disk_mb * 1024 * 1024) if config.disk_mb else None
    for path in _PRIVATE_TMPFS:
        args += ["--perms", "1777"]
        if size and info.has_size:
            args += ["--size", size]
        args += ["--tmpfs", path]
    args += ["--perms", "0700"]
    if size and info.has_size:
        args += ["--size", size]
    args += ["--tmpfs", HOME_IN_SANDBOX]

    plan.visible_ro.extend(p for p in extra_ro if p not in plan.visible_ro)
    next_fd = fd_first_bind
    for path in extra_ro:
        if info.has_bind_fd:
            plan.bind_paths.append(path)
            args += ["--ro-bind-fd", str(next_fd), path]
            next_fd += 1
        else:
            args += ["--ro-bind", path, path]
    if info.has_bind_fd:
        plan.bind_paths.append(workspace)
        args += ["--bind-fd", str(next_fd), workspace]
        next_fd += 1
    else:
        args += ["--bind", workspace, workspace]

    args += ["--chdir", cwd]
    plan.args = args
    return args
