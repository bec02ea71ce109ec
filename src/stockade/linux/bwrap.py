"""bubblewrap: finding it, knowing what it can do, and building its arguments.

The mount view, outermost first (bubblewrap applies them in order; the
system directories of each mode and why each is there are tabled in
docs/architecture.md, "The mount view"):

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
* The path rules, outermost first (``fs/mounts.py``): the workspace,
  writable, at its own path; the policy's read-only, writable and hidden
  paths; protected paths read-only; installations the command needs
  read-only (see ``resolve.py``).
* Symbolic links the command passes through on the way to its file, when
  the view does not show them (``resolve.py``), recreated with the target
  read at resolution.
* Finally the tmpfs root itself is remounted read-only: nothing can be
  written outside the areas above (and their size caps).

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
from typing import TYPE_CHECKING

from ..config import SandboxConfig, SandboxMode
from ..errors import SandboxUnavailableError

if TYPE_CHECKING:
    from ..fs.mounts import Mount

HOME_IN_SANDBOX = "/home/sandbox"
# bubblewrap refuses more arguments than this, its options and the command's
# together (MAX_ARGS in bubblewrap.c).
MAX_ARGS = 9000

_MERGED_USR_LINKS = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
_SYSTEM_RO = {
    SandboxMode.STRICT: ("/usr", "/etc"),
    SandboxMode.MODERATE: ("/usr", "/etc", "/opt"),
    SandboxMode.PERMISSIVE: ("/usr", "/etc", "/opt", "/sys", "/var/lib", "/var/cache"),
}
_PRIVATE_TMPFS = ("/tmp", "/var/tmp", "/dev/shm")
# The private areas the program may write, each a tmpfs of disk_mb.
WRITABLE_TMPFS = (*_PRIVATE_TMPFS, HOME_IN_SANDBOX)
# Size of the empty tmpfs over a hidden directory: it only holds mount points.
HIDDEN_TMPFS_BYTES = 4096
# Directories the sandbox gets fresh and empty: no path rule may cover them.
PRIVATE_AREAS = (*_PRIVATE_TMPFS, HOME_IN_SANDBOX, "/proc", "/dev")

# Paths that must never become the writable workspace.
# Trees the program may never write, whatever the policy or the cwd says:
# their files are run or trusted by the host (a root caller's idmapped
# workspace would even make them root-owned on the host).
_SYSTEM_TREES = (
    "/usr", "/etc", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32",
    "/boot", "/opt", "/proc", "/sys", "/dev", "/run", "/snap", "/var",
)
# /var is refused except below /var/tmp, a place for users' files.
_VAR_TMP = "/var/tmp"
# Directories that hold other people's or other programs' files: never the
# workspace themselves (their subdirectories may be).
_SHARED_TOPS = ("/", "/home", "/root", "/tmp", "/var/tmp", "/mnt", "/media", "/srv")


@dataclass(frozen=True)
class BwrapInfo:
    path: str
    version: str
    has_bind_fd: bool
    has_disable_userns: bool
    has_size: bool
    # --add-seccomp-fd (0.5.0): a filter bubblewrap installs right before it
    # execs the program; without it every set-up call stays notified
    has_add_seccomp_fd: bool = False


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
        has_add_seccomp_fd="--add-seccomp-fd" in helptext,
    )


# Hidden directories of a home that hold only caches tools rebuild: a
# ``writable`` rule (the python and node presets) may name them, the
# workspace may not be one.
HOME_CACHES = (".cache", ".npm", ".m2/repository", ".gradle/caches", ".cargo/registry",
               ".cargo/git", ".yarn/cache", ".pnpm-store")


def forbidden_workspace(path: str, home: str | None, *, cache_ok: bool = False) -> str | None:
    """Why a directory may not be writable in the sandbox (the workspace or a
    ``writable`` rule), or None. ``path`` must already be resolved.

    Refused: system trees and everything below them (but /var/tmp's
    subdirectories); shared top directories themselves (/, /home, /tmp, ...);
    any user's home directory, an ancestor of one, and the hidden entries of
    a home (~/.ssh, ~/.config, ...), where login shells and tools read
    configuration they then act on. With ``cache_ok`` (writable rules, not the
    workspace), the cache directories of ``HOME_CACHES`` are allowed.
    """
    path = os.path.normpath(path)
    homes = home_directories(home)
    if path in homes:
        if home and os.path.normpath(os.path.realpath(home)) == path:
            return f"{path} is your home directory"
        return f"{path} is a user's home directory"
    if path in _SHARED_TOPS:
        return f"{path} is a shared system directory"
    for tree in _SYSTEM_TREES:
        if _under(path, tree) and not (tree == "/var" and _under(path, _VAR_TMP)):
            return f"{path} is in a system directory ({tree}), never writable"
    for user_home in homes:
        if _under(user_home, path):
            return f"{path} contains the home directory {user_home}"
        if _under(path, user_home):
            rest = path[len(user_home):].lstrip("/")
            first = rest.split("/", 1)[0]
            if first.startswith("."):
                if cache_ok and any(_under(rest, cache) for cache in HOME_CACHES):
                    continue
                hidden = os.path.join(user_home, first)
                return f"{path} is in {hidden}, a hidden directory of a home"
    return None


def _under(path: str, tree: str) -> bool:
    return path == tree or path.startswith(tree.rstrip("/") + "/")


@functools.lru_cache(maxsize=4)
def home_directories(home: str | None) -> tuple[str, ...]:
    """Every home directory of the password database, plus the caller's
    (canonical; those inside system trees left out: they are covered)."""
    import pwd

    homes = set()
    try:
        for entry in pwd.getpwall():
            directory = entry.pw_dir
            if directory and directory != "/" and os.path.isabs(directory):
                homes.add(os.path.normpath(os.path.realpath(directory)))
    except OSError:
        pass
    if home:
        homes.add(os.path.normpath(os.path.realpath(home)))
    # system accounts' homes inside system trees are covered already
    return tuple(sorted(h for h in homes if not any(_under(h, t) for t in _SYSTEM_TREES) or _under(h, _VAR_TMP)))


@dataclass
class MountPlan:
    """bubblewrap arguments plus what the launcher must open for them."""

    args: list[str] = field(default_factory=list)
    bind_paths: list[str] = field(default_factory=list)   # opened O_PATH by the launcher
    # [st_dev, st_ino] each bind source must still have when the launcher opens it
    bind_ids: list[list[int] | None] = field(default_factory=list)
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


def mount_args(
    mounts: Sequence[Mount], plan: MountPlan, *, info: BwrapInfo, fd_first_bind: int
) -> list[str]:
    """bubblewrap options for the path rules' mounts.

    Bind sources go through descriptors the launcher opens once
    (``--ro-bind-fd``/``--bind-fd``) when this bubblewrap supports it: the
    path is resolved a single time (and its identity checked), and a root
    caller's launcher can open paths the sandbox uid could not traverse.
    """
    args: list[str] = []
    next_fd = fd_first_bind + len(plan.bind_paths)
    for mount in mounts:
        if mount.kind in ("bind", "ro-bind"):
            assert mount.source is not None
            if mount.kind == "ro-bind" and mount.dest not in plan.visible_ro:
                plan.visible_ro.append(mount.dest)
            if info.has_bind_fd:
                plan.bind_paths.append(mount.source)
                plan.bind_ids.append(list(mount.ident) if mount.ident else None)
                args += [f"--{mount.kind}-fd", str(next_fd), mount.dest]
                next_fd += 1
            else:
                args += [f"--{mount.kind}", mount.source, mount.dest]
        elif mount.kind == "tmpfs":
            args += ["--perms", f"{mount.perms or 0:04o}"]
            if info.has_size:
                args += ["--size", str(HIDDEN_TMPFS_BYTES)]
            args += ["--tmpfs", mount.dest]
        elif mount.kind == "remount-ro":
            args += ["--remount-ro", mount.dest]
        else:  # pragma: no cover - fs/mounts.py makes only the kinds above
            raise ValueError(f"unknown mount kind {mount.kind!r}")
    return args


def build_args(
    config: SandboxConfig,
    plan: MountPlan,
    *,
    workspace: str,
    cwd: str,
    mounts: Sequence[Mount],
    info: BwrapInfo,
    fd_first_bind: int,
    fd_json_status: int,
    command_links: Sequence[tuple[str, str]] = (),
) -> list[str]:
    """bubblewrap's options (without the command), in mount order.

    ``mounts`` are the path rules (``fs/mounts.py``: the workspace, the
    policy's paths, protected paths, installations), applied after the
    system directories and private areas. ``command_links`` are (path, target)
    symbolic links the command needs on its way to its file (``resolve.py``),
    made after the mounts, in the private root or a private area.
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

    args += mount_args(mounts, plan, info=info, fd_first_bind=fd_first_bind)
    for path, target in command_links:
        args += ["--symlink", target, path]
    # bubblewrap builds the view on a tmpfs root; once every mount point
    # exists, make that root read-only (not recursive: the private areas and
    # the workspace keep their own flags), or a program could fill RAM with
    # files outside every size cap.
    args += ["--remount-ro", "/"]
    args += ["--chdir", cwd]
    plan.args = args
    return args
