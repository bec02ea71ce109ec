"""What this host can enforce: a cheap probe, cached per process.

The probe only gathers facts; it decides nothing. ``tiers.decide`` turns a
probe and a policy into the tier to run and the status of each protection,
for the manager and for ``stockade doctor`` alike. Because a probe is plain
data (``HostProbe.to_dict`` / ``HostProbe.from_dict``), a probe recorded on
another host (Ubuntu 24.04 with its AppArmor rule, a container, a systemd
host with a delegated cgroup) can be loaded as a JSON fixture and the
decision tested against it.

What is probed, and how:

* kernel release and architecture (``os.uname``);
* bubblewrap: found, version, options (``bwrap.find_bwrap``), and whether it
  can really create the user, pid and network namespaces: one real launch of
  ``bwrap --unshare-all -- /bin/true`` as the uid the program will run as.
  On failure the last line bubblewrap printed is kept, with the sysctls that
  usually explain it (``kernel.unprivileged_userns_clone``,
  ``user.max_user_namespaces``,
  ``kernel.apparmor_restrict_unprivileged_userns``) and signs of a container;
* seccomp: the actions the kernel offers (``user_notif`` among them) and
  whether this process already runs under a filter (a container's profile);
* Landlock: the ABI version (0 when the kernel lacks it or it is disabled at
  boot), through the landlockpy adapter;
* cgroups: the layout (v2, v1, hybrid), the controllers, the caller's own
  cgroup and whether the caller may create child cgroups there.

Costs about 10 ms once per process (three short bubblewrap runs).
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import SandboxUnavailableError
from . import bwrap as _bwrap
from . import landlock as _landlock

PROBE_FORMAT = 1

_SYSCTLS = {
    "unprivileged_userns_clone": "/proc/sys/kernel/unprivileged_userns_clone",
    "max_user_namespaces": "/proc/sys/user/max_user_namespaces",
    "apparmor_restrict_unprivileged_userns": (
        "/proc/sys/kernel/apparmor_restrict_unprivileged_userns"
    ),
}


@dataclass(frozen=True)
class BwrapFacts:
    """bubblewrap on this host. ``path`` is None when it was not found."""

    path: str | None = None
    version: str | None = None
    has_bind_fd: bool = False
    has_disable_userns: bool = False
    has_size: bool = False
    error: str | None = None


@dataclass(frozen=True)
class UsernsFacts:
    """Whether bubblewrap could create its namespaces, and the usual suspects.

    ``works`` is None when it was not tried (no bubblewrap). ``error`` is the
    last line bubblewrap printed. Sysctl values are the raw text, None when
    the file does not exist on this kernel.
    """

    works: bool | None = None
    error: str | None = None
    tested_as_uid: int | None = None
    unprivileged_userns_clone: str | None = None
    max_user_namespaces: str | None = None
    apparmor_restrict_unprivileged_userns: str | None = None


@dataclass(frozen=True)
class SeccompFacts:
    """``actions``: /proc/sys/kernel/seccomp/actions_avail. ``mode``: the
    Seccomp field of /proc/self/status (2: this process is already filtered,
    as in most containers)."""

    available: bool = False
    user_notif: bool = False
    actions: list[str] = field(default_factory=list)
    mode: int = 0
    filters: int = 0


@dataclass(frozen=True)
class LandlockFacts:
    """``abi`` 0 means no Landlock: ``error`` says why."""

    abi: int = 0
    error: str | None = None


@dataclass(frozen=True)
class CgroupV1Controller:
    mount: str
    own: str
    writable: bool


@dataclass(frozen=True)
class CgroupFacts:
    """The cgroup hierarchies and what the caller may do in them.

    ``layout``: "v2" (unified only), "v1", "hybrid" (both) or "none".
    ``v2_own``: the caller's own cgroup directory in the v2 tree;
    ``v2_controllers``: the controllers available there (its
    ``cgroup.controllers``); ``v2_writable``: the caller may create a child
    cgroup in it (write access to the directory on a writable mount);
    ``v2_kill``: ``cgroup.kill`` exists (Linux 5.14+). ``v1``: per controller,
    its mount, the caller's own cgroup there and whether it is writable.
    """

    layout: str = "none"
    v2_mount: str | None = None
    v2_own: str | None = None
    v2_controllers: list[str] = field(default_factory=list)
    v2_writable: bool = False
    v2_kill: bool = False
    v1: dict[str, CgroupV1Controller] = field(default_factory=dict)


@dataclass(frozen=True)
class HostProbe:
    """Everything stockade knows about the host, as plain data.

    ``note`` says where a recorded probe comes from (empty for a live probe).
    """

    kernel: str
    arch: str
    euid: int
    container: str | None
    no_new_privs: bool
    bwrap: BwrapFacts
    userns: UsernsFacts
    seccomp: SeccompFacts
    landlock: LandlockFacts
    cgroup: CgroupFacts
    format: int = PROBE_FORMAT
    note: str = ""

    @property
    def namespaces_work(self) -> bool:
        return self.bwrap.path is not None and bool(self.userns.works)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HostProbe:
        """Load a probe recorded with ``to_dict`` (unknown keys are refused)."""
        cgroup = dict(data["cgroup"])
        cgroup["v1"] = {
            name: CgroupV1Controller(**item)
            for name, item in (cgroup.get("v1") or {}).items()
        }
        return cls(
            kernel=data["kernel"],
            arch=data["arch"],
            euid=int(data["euid"]),
            container=data.get("container"),
            no_new_privs=bool(data.get("no_new_privs", False)),
            bwrap=BwrapFacts(**data["bwrap"]),
            userns=UsernsFacts(**data["userns"]),
            seccomp=SeccompFacts(**data["seccomp"]),
            landlock=LandlockFacts(**data["landlock"]),
            cgroup=CgroupFacts(**cgroup),
            format=int(data.get("format", PROBE_FORMAT)),
            note=data.get("note", ""),
        )


@functools.lru_cache(maxsize=8)
def probe_host(bwrap_path: str | None = None, as_uid: int | None = None) -> HostProbe:
    """Probe this host; cached per process and per arguments.

    Args:
        bwrap_path: an explicit bubblewrap binary; None: found on PATH.
        as_uid: the uid the namespace check runs as (the sandbox uid when
            the caller is root); None: the caller's own.
    """
    uname = os.uname()
    bwrap_facts = _probe_bwrap(bwrap_path)
    return HostProbe(
        kernel=uname.release,
        arch=uname.machine,
        euid=os.geteuid(),
        container=_container(),
        no_new_privs=_status_field("NoNewPrivs") == "1",
        bwrap=bwrap_facts,
        userns=_probe_userns(bwrap_facts.path, as_uid),
        seccomp=_probe_seccomp(),
        landlock=_probe_landlock(),
        cgroup=_probe_cgroups(),
    )


def _probe_bwrap(explicit: str | None) -> BwrapFacts:
    try:
        info = _bwrap.find_bwrap(explicit)
    except SandboxUnavailableError as err:
        return BwrapFacts(error=err.reason)
    return BwrapFacts(
        path=info.path,
        version=info.version,
        has_bind_fd=info.has_bind_fd,
        has_disable_userns=info.has_disable_userns,
        has_size=info.has_size,
    )


def _probe_userns(bwrap: str | None, as_uid: int | None) -> UsernsFacts:
    sysctls = {name: _read(path) for name, path in _SYSCTLS.items()}
    if bwrap is None:
        return UsernsFacts(**sysctls)
    works, error = _namespace_launch(bwrap, as_uid)
    return UsernsFacts(works=works, error=error, tested_as_uid=as_uid, **sysctls)


def _namespace_launch(bwrap: str, as_uid: int | None) -> tuple[bool, str | None]:
    """One real bubblewrap launch with every namespace stockade uses."""
    argv = [
        bwrap,
        "--unshare-all",
        "--die-with-parent",
        "--ro-bind",
        "/",
        "/",
        "--",
        "/bin/true",
    ]
    kwargs: dict[str, Any] = {}
    if as_uid is not None and os.geteuid() == 0:
        kwargs = {"user": as_uid, "group": as_uid, "extra_groups": []}
    try:
        proc = subprocess.run(
            argv, capture_output=True, text=True, timeout=20, **kwargs
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        return False, f"bwrap did not run: {err}"
    if proc.returncode == 0:
        return True, None
    text = proc.stderr.strip()
    return False, text.splitlines()[
        -1
    ] if text else f"bwrap exited with status {proc.returncode}"


def _probe_seccomp() -> SeccompFacts:
    actions_text = _read("/proc/sys/kernel/seccomp/actions_avail")
    actions = actions_text.split() if actions_text else []
    mode = _status_field("Seccomp")
    filters = _status_field("Seccomp_filters")
    return SeccompFacts(
        available=bool(actions) or mode is not None,
        user_notif="user_notif" in actions,
        actions=actions,
        mode=int(mode) if mode and mode.isdigit() else 0,
        filters=int(filters) if filters and filters.isdigit() else 0,
    )


def _probe_landlock() -> LandlockFacts:
    abi, error = _landlock.abi_version()
    return LandlockFacts(abi=abi, error=error)


def _probe_cgroups() -> CgroupFacts:
    mounts = _cgroup_mounts()
    own = _own_cgroups()
    v2_mount = mounts.get("cgroup2")
    v1: dict[str, CgroupV1Controller] = {}
    for name, mount in mounts.items():
        if name == "cgroup2":
            continue
        path = own.get(name)
        if path is None:
            continue
        directory = os.path.normpath(os.path.join(mount, path.lstrip("/")))
        v1[name] = CgroupV1Controller(
            mount=mount, own=directory, writable=_writable_dir(directory)
        )
    v2_own = v2_controllers = None
    v2_writable = v2_kill = False
    if v2_mount is not None and "" in own:
        v2_own = os.path.normpath(os.path.join(v2_mount, own[""].lstrip("/")))
        text = _read(os.path.join(v2_own, "cgroup.controllers"))
        v2_controllers = text.split() if text else []
        v2_writable = _writable_dir(v2_own)
        v2_kill = os.path.exists(os.path.join(v2_own, "cgroup.kill"))
    if v2_mount and v1:
        layout = "hybrid"
    elif v2_mount:
        layout = "v2"
    elif v1:
        layout = "v1"
    else:
        layout = "none"
    return CgroupFacts(
        layout=layout,
        v2_mount=v2_mount,
        v2_own=v2_own,
        v2_controllers=v2_controllers or [],
        v2_writable=v2_writable,
        v2_kill=v2_kill,
        v1=v1,
    )


def _cgroup_mounts() -> dict[str, str]:
    """{"cgroup2": mount} and {controller: mount} for v1 hierarchies."""
    found: dict[str, str] = {}
    try:
        with open("/proc/self/mountinfo", encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return found
    for line in lines:
        left, _, right = line.partition(" - ")
        parts = left.split()
        fields = right.split()
        if len(parts) < 5 or len(fields) < 3:
            continue
        mount, fstype, options = parts[4], fields[0], fields[2].split(",")
        if fstype == "cgroup2":
            found.setdefault("cgroup2", mount)
        elif fstype == "cgroup":
            for option in options:
                if (
                    option in ("rw", "ro")
                    or "=" in option
                    and not option.startswith("name=")
                ):
                    continue
                found.setdefault(option, mount)
    return found


def _own_cgroups() -> dict[str, str]:
    """The caller's cgroup per v1 controller, and under "" its v2 cgroup."""
    own: dict[str, str] = {}
    text = _read("/proc/self/cgroup") or ""
    for line in text.splitlines():
        _hid, controllers, path = line.split(":", 2)
        if not controllers:
            own[""] = path
        for name in controllers.split(","):
            if name:
                own[name] = path
    return own


def _writable_dir(path: str) -> bool:
    # access(2) also reports a read-only mount (EROFS), as containers often
    # mount /sys/fs/cgroup.
    return os.path.isdir(path) and os.access(path, os.W_OK | os.X_OK)


def _container() -> str | None:
    """The container runtime this process seems to run in, with the evidence.

    Markers only: a VM built from a container image may keep /.dockerenv.
    The decision uses this only to explain a namespace failure.
    """
    if os.path.exists("/.dockerenv"):
        return "docker (/.dockerenv)"
    if os.path.exists("/run/.containerenv"):
        return "podman (/run/.containerenv)"
    environ = _read("/proc/1/environ")
    if environ:
        for item in environ.split("\0"):
            if item.startswith("container="):
                name = item.partition("=")[2] or "unknown"
                return f"{name} (container= in pid 1's environment)"
    cgroups = _read("/proc/1/cgroup") or ""
    for marker in ("docker", "kubepods", "lxc", "containerd"):
        if marker in cgroups:
            return f"{marker} (pid 1's cgroup)"
    return None


def _status_field(name: str) -> str | None:
    text = _read("/proc/self/status") or ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key == name:
            return value.strip()
    return None


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.read().strip()
    except OSError:
        return None
