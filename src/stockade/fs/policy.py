"""Path rules: what of the host a run sees, and how.

A policy names paths in four ways: the workspace (writable), ``writable``,
``read_only`` and ``hidden``, plus presets that add writable paths, and the
mode's system directories (read-only). One rule decides what a path gets:

    **the most specific rule wins**: the rule on the path itself, else the
    rule on its nearest ancestor; when two rules name the same path, the
    more restrictive one wins (hidden, then read-only, then writable).

A path no rule covers is not there (first tier) or not accessible (second
tier). ``resolve`` turns the policy into an ``FsPlan`` once per run:

1. expand ``~`` (the caller's home), relative paths (against the workspace)
   and globs (``*``, ``?``, ``[...]`` in any component, never ``**``): each
   wildcard component lists the directories the components before it
   matched, at most ``MAX_GLOB_ENTRIES`` entries in all, for at most
   ``MAX_GLOB_MATCHES`` matches, else the glob is refused;
2. refuse a path that, as written, lies in a writable place but leads
   through a symbolic link out of it (a run could have planted the link);
   then check existence as each field documents: ``read_only`` must exist,
   ``writable`` is created as a directory, ``hidden`` is skipped when
   missing unless it would lie in a writable place (then it is an error,
   since the run could create it);
3. resolve symlinks (``realpath``) once; from here on every rule is a
   canonical path with the identity (device, inode) it had, which the
   launcher checks again when it opens the path;
4. find the protected paths (``protected``) inside every writable place:
   those that exist become read-only rules; those that do not are watched
   and checked after the run (``guard.py``); on the second tier a policy
   may accept checking instead of read-only (``allow_degraded``
   ``protected_paths``), so git can still commit there;
5. refuse what the rules cannot keep: a read-only or hidden file with other
   hard links (another name could change or show it), and so a file directly
   in a protected directory, or in a hidden one inside a writable place; a
   writable system directory; rules over ``/``, ``/proc``, ``/dev`` or the
   sandbox's private areas.
"""

from __future__ import annotations

import enum
import fnmatch
import functools
import glob
import os
import stat
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..errors import CommandError, PolicyError
from ..linux.bwrap import PRIVATE_AREAS, forbidden_workspace, home_directories
from . import gitdirs
from . import presets as _presets
from .guard import Guard, open_nofollow
from .metadata import Metadata
from .watch import Destination, chain

if TYPE_CHECKING:
    from ..config import SandboxConfig

# At most this many rules per run (each is a mount, or a few Landlock rules):
# enough for real policies, and a bound on set-up time and descriptors.
MAX_RULES = 512
# A glob's cost is bounded: what it may match, and how many directory
# entries its wildcard components may examine to find them (listing them
# costs about 1 us each, on every run).
MAX_GLOB_MATCHES = 256
MAX_GLOB_ENTRIES = 4096

class Access(enum.IntEnum):
    """What a rule grants; lower is more restrictive (ties go to the lower)."""

    HIDDEN = 0
    READ_ONLY = 1
    WRITABLE = 2


@dataclass(frozen=True)
class PathRule:
    """One rule on one canonical host path.

    Attributes:
        path: canonical absolute path (symlinks resolved).
        access: hidden, read-only or writable.
        origin: where the rule comes from: ``workspace``, ``read_only``,
            ``writable``, ``hidden``, ``protected``, ``preset python``,
            ``installation`` (an interpreter the command needs) or
            ``system``.
        is_dir: the path is a directory.
        ident: (st_dev, st_ino) at resolution; None for system directories.
    """

    path: str
    access: Access
    origin: str
    is_dir: bool = True
    ident: tuple[int, int] | None = None

    @property
    def depth(self) -> int:
        return 0 if self.path == "/" else self.path.count("/")


@dataclass
class FsPlan:
    """The resolved file-system policy of one run.

    Attributes:
        workspace: canonical workspace path.
        rules: rules by path (workspace, user rules, presets, protected
            paths, installations); ``system`` holds the mode's system
            directories.
        guard: protected paths checked after the run.
        env: variables the presets set.
        protected: protected paths kept read-only by rules.
        guarded: protected paths checked after the run instead.
        notes: what the result should tell the caller.
        elapsed_ms: time spent resolving.
        destinations: first tier: the host paths its mounts sit on that a
            host rename would undo (``watch.py``); set with the mounts.
        metadata: second tier: the named entries' mode, owner, times and
            extended attributes, put back after the run (``metadata.py``).
    """

    workspace: str
    rules: dict[str, PathRule] = field(default_factory=dict)
    system: dict[str, PathRule] = field(default_factory=dict)
    guard: Guard = field(default_factory=Guard)
    env: dict[str, str] = field(default_factory=dict)
    protected: list[str] = field(default_factory=list)
    guarded: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    elapsed_ms: float = 0.0
    destinations: list[Destination] = field(default_factory=list)
    metadata: Metadata = field(default_factory=Metadata)

    def checked_after(self) -> bool:
        """Whether anything is checked after the run (guard, metadata)."""
        return bool(self.guard) or bool(self.metadata)

    def watched(self) -> list[tuple[str, str, Destination]]:
        """The (directory, name) pairs a ``watch.MountWatch`` watches: each
        destination and the directories between it and the top of the
        mount it lies in (a rule no other rule covers)."""
        tops = [
            r.path
            for r in (*self.system.values(), *self.rules.values())
            if self.rule_for(r.path, strict=True) is None
        ]
        return [pair for dest in self.destinations for pair in chain(dest, tops)]

    def rule_for(self, path: str, *, strict: bool = False) -> PathRule | None:
        """The rule that decides ``path`` (the most specific one), or None.

        Args:
            path: absolute, normalized path.
            strict: skip a rule on ``path`` itself (its nearest ancestor's).

        Raises:
            ValueError: ``path`` is relative (no rule can decide it: it
                depends on a working directory).
        """
        if not os.path.isabs(path):
            raise ValueError(f"rule_for needs an absolute path, not {path!r}")
        # normpath keeps a leading "//", whose dirname is "//" again
        current = "/" + os.path.normpath(path).lstrip("/")
        first = True
        while True:
            if not (first and strict):
                rule = self.rules.get(current) or self.system.get(current)
                if rule is not None:
                    return rule
            first = False
            parent = os.path.dirname(current)
            if parent == current:  # "/": nothing above
                return None
            current = parent

    def access_of(self, path: str) -> Access | None:
        """What ``path`` gets, or None when no rule covers it."""
        rule = self.rule_for(os.path.normpath(path))
        return rule.access if rule is not None else None

    def visible(self, path: str) -> bool:
        """Whether the run sees the host path as it is (read-only or writable)."""
        access = self.access_of(path)
        return access is not None and access is not Access.HIDDEN

    def hidden_at(self, path: str) -> PathRule | None:
        """A hidden rule ``path`` lies in or covers, or None: what may not be
        shown on the side (a command's installation, a PYTHONPATH entry),
        since a read-only rule there would undo it. ``path`` is absolute."""
        path = os.path.normpath(path)
        for rule in sorted(self.rules.values(), key=lambda r: r.path):
            if rule.access is Access.HIDDEN and (_under(path, rule.path) or _under(rule.path, path)):
                return rule
        return None

    def add(self, rule: PathRule) -> None:
        """Add a rule; on the same path the more restrictive one stays."""
        old = self.rules.get(rule.path)
        if old is None or rule.access < old.access:
            self.rules[rule.path] = rule

    def add_installation(self, path: str) -> None:
        """A directory the command needs read-only (``resolve.py``).

        Raises:
            CommandError: it is gone or cannot be read (it existed when the
                command was resolved).
        """
        real = os.path.realpath(path)
        if self.visible(real) and self.visible(path):
            return
        try:
            st = os.stat(real)
        except OSError as err:
            raise CommandError(
                f"{path} cannot be made visible read-only for the command: {err.strerror}",
                reason="not_found" if isinstance(err, FileNotFoundError) else "not_executable",
            ) from None
        self.add(
            PathRule(
                real,
                Access.READ_ONLY,
                "installation",
                stat.S_ISDIR(st.st_mode),
                (st.st_dev, st.st_ino),
            )
        )

    def writable_roots(self) -> list[PathRule]:
        return sorted(
            (r for r in self.rules.values() if r.access is Access.WRITABLE),
            key=lambda r: r.path,
        )

    def ordered(self) -> list[PathRule]:
        """Rules outermost first (a mount must precede those beneath it)."""
        return sorted(self.rules.values(), key=lambda r: (r.depth, r.path))

    def summary(self) -> str:
        counts: dict[str, int] = {}
        for rule in self.rules.values():
            if rule.origin in ("workspace", "installation", "protected"):
                continue  # the workspace is implied; protected paths have a row
            name = {
                Access.HIDDEN: "hidden",
                Access.READ_ONLY: "read-only",
                Access.WRITABLE: "writable",
            }[rule.access]
            counts[name] = counts.get(name, 0) + 1
        return ", ".join(f"{n} {name}" for name, n in counts.items()) or "none"


def resolve(
    config: SandboxConfig,
    *,
    workspace: str,
    system: Iterable[str],
    home: str,
    environ: Mapping[str, str],
    guard_protected: bool = False,
    check_replaced: bool = False,
    own: Sequence[tuple[str, str]] = (),
) -> FsPlan:
    """Resolve the policy's path rules for one run (steps in the module doc).

    Args:
        config: the policy.
        workspace: canonical workspace directory.
        system: the mode's system directories (``bwrap.base_plan``).
        home: the caller's home (``~``).
        environ: the caller's environment (presets read ``VIRTUAL_ENV``).
        guard_protected: keep protected paths writable during the run and
            check them after it (the second tier, when the policy accepts
            ``protected_paths`` degraded) instead of making them read-only.
        check_replaced: check existing protected paths after the run if
            they are other files then (the first tier: a host rename undoes
            a read-only mount; ``guard.Guard.watch_identity``).
        own: (canonical path, what it is) of the caller's own installation
            (``own_installation``): kept read-only inside writable places,
            whatever ``protected`` says.

    Returns:
        The plan; writable paths that did not exist have been created.

    Raises:
        PolicyError: a path the rules cannot keep, naming the field, the
            path and what to change.
    """
    t0 = time.monotonic()
    plan = FsPlan(workspace=workspace)
    for path in system:
        plan.system[path] = PathRule(path, Access.READ_ONLY, "system")
    st = os.stat(workspace)
    plan.add(
        PathRule(workspace, Access.WRITABLE, "workspace", True, (st.st_dev, st.st_ino))
    )

    expansion = _presets.expand(config.presets, home=home, environ=environ)
    plan.env.update(expansion.env)
    plan.notes.extend(expansion.notes)
    wanted: list[tuple[str, Access, str]] = [
        (path, Access.WRITABLE, f"preset {name}") for path, name in expansion.writable
    ]
    wanted += [(p, Access.READ_ONLY, "read_only") for p in config.read_only]
    wanted += [(p, Access.WRITABLE, "writable") for p in config.writable]
    wanted += [(p, Access.HIDDEN, "hidden") for p in config.hidden]

    expanded = [
        (given, path, access, origin)
        for given, access, origin in wanted
        for path in _expand(
            given, origin, workspace=workspace, home=home, notes=plan.notes
        )
    ]
    places = [workspace] + [
        os.path.realpath(path) for _g, path, access, _o in expanded
        if access is Access.WRITABLE
    ]
    missing_hidden: list[tuple[str, str]] = []
    for given, path, access, origin in expanded:
        _check_redirect(given, path, origin, places)
        if not os.path.lexists(path):
            if access is Access.HIDDEN:
                missing_hidden.append((given, path))
                continue
            if access is Access.READ_ONLY:
                raise PolicyError(
                    f"read_only: {path} does not exist (given as {given!r}); "
                    f"create it or drop the rule",
                    key="read_only",
                    value=given,
                )
            why = _refused(os.path.realpath(path), access, home)
            if why:
                raise PolicyError(
                    f"{origin}: {path} (given as {given!r}): {why}",
                    key=_key(origin),
                    value=given,
                )
            _create_dir(path, given, origin)
            plan.notes.append(f"{origin}: created {path}")
        plan.add(_rule(path, access, origin, given, home))

    workspace_rule = plan.rules[workspace]
    if workspace_rule.access is Access.HIDDEN:
        raise PolicyError(
            f"hidden: {workspace} is the workspace; a run cannot work in a hidden "
            f"directory",
            key="hidden",
            value=workspace,
        )
    for given, path in missing_hidden:
        _missing_hidden(plan, given, path)

    _protect_own(plan, own)
    _protect(
        plan,
        config.protected,
        guard_protected=guard_protected,
        check_replaced=check_replaced,
    )
    _check_links(plan)
    if len(plan.rules) > MAX_RULES:
        raise PolicyError(
            f"{len(plan.rules)} path rules: at most {MAX_RULES} per run (each is a "
            f"mount); name directories instead of many files, or narrow the globs",
            key="read_only",
            value=len(plan.rules),
        )
    plan.elapsed_ms = (time.monotonic() - t0) * 1000
    return plan


# -- expansion and checks -------------------------------------------------------


def _expand(
    given: str, origin: str, *, workspace: str, home: str, notes: list[str]
) -> list[str]:
    """Absolute, normalized paths for one entry (several for a glob).

    Only the entry as written may hold wildcards: the workspace's and the
    home's own names are taken literally.
    """
    pattern = given
    base = ""
    if pattern == "~" or pattern.startswith("~/"):
        base, pattern = home, pattern[2:]
    elif pattern.startswith("~"):
        expanded = os.path.expanduser(pattern)
        if expanded != pattern:
            base, pattern = expanded, ""
    elif not os.path.isabs(pattern):
        base = workspace
    path = os.path.normpath(os.path.join(base, pattern) if base else pattern)
    if not glob.has_magic(pattern):
        return [path]
    if "**" in pattern:
        raise PolicyError(
            f"{origin}: {given!r}: '**' would walk whole trees on every run; name "
            f"the directories, or use '*' within one",
            key=_key(origin),
            value=given,
        )
    matches = sorted(_glob(base or "/", pattern, given, origin))
    if not matches:
        notes.append(f"{origin}: {given!r} matches nothing at launch")
    return matches


def _glob(base: str, pattern: str, given: str, origin: str) -> list[str]:
    """The paths matching ``pattern`` below ``base`` (taken literally), with
    a bounded cost: at most ``MAX_GLOB_MATCHES`` matches and
    ``MAX_GLOB_ENTRIES`` directory entries examined, else a PolicyError.

    Each wildcard component lists the directories the components before it
    matched, so ``/usr/*/*/*`` would otherwise list every directory three
    levels down on every run (shell rules: ``*`` and ``?`` skip names
    starting with a dot unless the component starts with one).
    """
    parts = [p for p in pattern.split("/") if p and p != "."]
    examined = 0
    current = [base]
    for index, part in enumerate(parts):
        last = index == len(parts) - 1
        found: list[str] = []
        if not glob.has_magic(part):
            for directory in current:
                path = os.path.join(directory, part)
                if os.path.lexists(path) if last else os.path.isdir(path):
                    found.append(path)
        else:
            dots = part.startswith(".")
            for directory in current:
                try:
                    with os.scandir(directory) as it:
                        for entry in it:
                            examined += 1
                            if examined > MAX_GLOB_ENTRIES:
                                _glob_too_costly(given, origin, "entries")
                            if entry.name.startswith(".") and not dots:
                                continue
                            if not fnmatch.fnmatchcase(entry.name, part):
                                continue
                            if not last and not entry.is_dir():
                                continue
                            found.append(os.path.join(directory, entry.name))
                            if last and len(found) > MAX_GLOB_MATCHES:
                                _glob_too_costly(given, origin, "matches")
                except (NotADirectoryError, FileNotFoundError, PermissionError):
                    continue
        current = found
        if not current:
            break
    return [os.path.normpath(p) for p in current]


def _glob_too_costly(given: str, origin: str, bound: str) -> None:
    if bound == "matches":
        message = (
            f"{origin}: {given!r} matches more than {MAX_GLOB_MATCHES} paths; name "
            f"their directory instead"
        )
    else:
        message = (
            f"{origin}: {given!r} examines more than {MAX_GLOB_ENTRIES} directory "
            f"entries (each wildcard component lists every directory the ones before "
            f"it matched, on every run); put literal names before the wildcards, or "
            f"name the directories"
        )
    raise PolicyError(message, key=_key(origin), value=given)


def _check_redirect(given: str, path: str, origin: str, places: list[str]) -> None:
    """Refuse a rule whose path, as written, lies in a writable place but
    leads through a symbolic link out of it (step 3): a run may have made
    that link (``ws/cache -> /data/sub``), and the rule would follow it to
    wherever the run chose (``--rw cache`` making ``/data/sub`` writable)."""
    real = os.path.realpath(path)
    if real == path:
        return
    for place in places:
        if _under(path, place) and not _under(real, place):
            flag = _FLAGS.get(origin, origin)
            message = (
                f"{origin}: {given!r} ({path}) lies in the writable place {place} "
                f"but leads through a symbolic link to {real}, outside it; a run "
                f"can make such a link, so it may not move the rule. If you mean "
                f"{real}, name it ({flag} {real}); otherwise remove the link"
            )
            raise PolicyError(message, key=_key(origin), value=given)


_FLAGS = {"read_only": "--ro", "writable": "--rw", "hidden": "--hide"}


def _key(origin: str) -> str:
    return "presets" if origin.startswith("preset") else origin


def _create_dir(path: str, given: str, origin: str) -> None:
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
    except OSError as err:
        raise PolicyError(
            f"{origin}: cannot create {path} (given as {given!r}): {err.strerror}",
            key=_key(origin),
            value=given,
        ) from err


def _rule(path: str, access: Access, origin: str, given: str, home: str) -> PathRule:
    real = os.path.realpath(path)
    try:
        st = os.stat(real)
    except OSError as err:
        raise PolicyError(
            f"{origin}: cannot use {real} (given as {given!r}): {err.strerror}",
            key=_key(origin),
            value=given,
        ) from err
    why = _refused(real, access, home)
    if why:
        raise PolicyError(
            f"{origin}: {real} (given as {given!r}): {why}",
            key=_key(origin),
            value=given,
        )
    return PathRule(
        real, access, origin, stat.S_ISDIR(st.st_mode), (st.st_dev, st.st_ino)
    )


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _refused(path: str, access: Access, home: str) -> str | None:
    """Why no rule of this kind may name ``path``, or None."""
    if path == "/":
        return "a rule on / would cover the whole mount view; name directories"
    for area in ("/proc", "/dev"):
        if _under(path, area):
            return f"{area} is the sandbox's own; no rule may change it"
    if access is Access.HIDDEN:
        return None
    for area in PRIVATE_AREAS:
        if _under(area, path):
            return (
                f"it would cover {area}, which the sandbox gets fresh and private; "
                f"name the directories beside it"
            )
    if access is Access.WRITABLE:
        why = forbidden_workspace(path, home, cache_ok=True)
        if why:
            return f"{why}; it may not be writable"
    return None


# Host trees a path the run did not name as a rule (a PYTHONPATH entry, a
# command's installation) may never show: the host's devices, processes,
# sockets and services (/run/user/UID/bus, /run/docker.sock).
_HOST_TREES = ("/sys", "/run")


# Hidden directories of a home where tools and interpreters are installed: a
# command's installation may lie in them (``~/.local/bin/tool``, a pyenv
# Python, a virtual environment, a cargo or nvm tool). Any other hidden
# directory of a home (``~/.ssh``, ``~/.gnupg``, ``~/.aws``, ``~/.config``,
# ...) holds keys, tokens or configuration: never shown on the side.
TOOL_HOMES = (
    ".local", ".pyenv", ".venv", ".venvs", ".virtualenvs", ".conda", ".cache",
    ".cargo", ".rustup", ".nvm", ".volta", ".deno", ".bun", ".rbenv", ".asdf",
    ".sdkman", ".nix-profile",
)


def exposure_refused(path: str, home: str, *, private: bool = True) -> str | None:
    """Why a path the policy does not name may not be made visible read-only
    on the side (``manager._resolve_visible``), or None. ``path`` must be
    canonical (``realpath``).

    Refused: what a ``read_only`` rule may not name (``_refused``: /, /proc,
    /dev, a directory holding a private area), /sys and /run and anything in
    them, a home directory or one holding it; with ``private`` (a PYTHONPATH
    entry) also anything in a private area (/tmp, /var/tmp, /dev/shm: other
    programs' sockets, such as tmux's or X's) and anything in a hidden
    directory of a home (``~/.ssh``, ``~/.gnupg``, ``~/.aws``, ``~/.config``:
    the entries ``forbidden_workspace`` refuses). A command's installation
    (``private`` False) may lie in a private area, and in the hidden
    directories of a home where tools are installed (``TOOL_HOMES``:
    ``~/.local/bin/tool``, ``~/.pyenv``, a virtual environment): it is only
    its ``bin``, ``lib``... beside the program; in any other hidden
    directory of a home it is refused too.
    """
    why = _refused(path, Access.READ_ONLY, home)
    if why:
        return why
    areas = _HOST_TREES + (PRIVATE_AREAS if private else ())
    for area in areas:
        if _under(path, area):
            return f"it lies in {area}, which the sandbox never shows from the host"
        if _under(area, path):
            return f"it would show {area}, which the sandbox never shows from the host"
    for user_home in home_directories(home):
        if _under(user_home, path):
            return f"it would show the whole home directory {user_home}"
        if _under(path, user_home):
            first = path[len(user_home):].lstrip("/").split("/", 1)[0]
            if first.startswith(".") and (private or first not in TOOL_HOMES):
                return (
                    f"it lies in {os.path.join(user_home, first)}, a hidden directory "
                    f"of a home (keys, tokens, configuration)"
                )
    return None


def _missing_hidden(plan: FsPlan, given: str, path: str) -> None:
    """A hidden path that does not exist: an error where the run could
    create it, otherwise nothing to hide."""
    parent = path
    while not os.path.lexists(parent):
        parent = os.path.dirname(parent)
    real = os.path.realpath(parent)
    if plan.access_of(real) is Access.WRITABLE:
        raise PolicyError(
            f"hidden: {path} does not exist, and it lies in a writable place ({real}) "
            f"where the run could create it; create it (an empty directory or file) "
            f"or drop the rule",
            key="hidden",
            value=given,
        )
    plan.notes.append(f"hidden: {path} does not exist; nothing to hide")


# -- protected paths -------------------------------------------------------------


def _protect(
    plan: FsPlan,
    entries: tuple[str, ...],
    *,
    guard_protected: bool,
    check_replaced: bool,
) -> None:
    """Protected paths inside each writable root (module doc, step 4)."""
    for root in plan.writable_roots():
        if not root.is_dir:
            continue
        for entry in entries:
            if os.path.isabs(entry):
                entry = os.path.normpath(entry)
                if not _under(entry, root.path) or entry == root.path:
                    continue
                rel = os.path.relpath(entry, root.path)
            else:
                rel = os.path.normpath(entry)
            parts = tuple(p for p in rel.split("/") if p not in ("", "."))
            if parts:
                _protect_one(
                    plan,
                    root,
                    parts,
                    guard_protected=guard_protected,
                    check_replaced=check_replaced,
                )
        tails = git_tails(entries)
        if tails:
            _protect_git_dirs(
                plan,
                root,
                tails,
                guard_protected=guard_protected,
                check_replaced=check_replaced,
            )


@functools.cache
def own_installation() -> tuple[tuple[str, str], ...]:
    """The caller's own Python installation, which the host runs as the
    caller: the virtual environment stockade runs from (``sys.prefix``), the
    directory of the imported ``stockade`` package (an editable install's
    ``src/stockade``) and the interpreter's installation
    (``sys.base_prefix``). Canonical paths, each with what it is; the same
    for the life of the process."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    own = []
    if sys.prefix != sys.base_prefix:
        own.append((sys.prefix, "the Python environment stockade runs from"))
    own.append((package, "the stockade package the caller imports"))
    own.append((sys.base_prefix, "the Python installation stockade runs with"))
    seen: dict[str, str] = {}
    for path, what in own:
        seen.setdefault(os.path.realpath(path), what)
    return tuple(seen.items())


def _protect_own(plan: FsPlan, own: Sequence[tuple[str, str]]) -> None:
    """Keep the caller's own installation read-only inside writable places
    (a run could otherwise plant a ``.pth`` file or a module that the host
    runs as the caller the next time it runs stockade). Not configurable:
    ``protected`` does not change it. A writable place inside such a path
    is refused."""
    roots = plan.writable_roots()
    for path, what in own:
        for root in roots:
            if _under(root.path, path):
                raise PolicyError(
                    f"{root.origin}: {root.path} lies in {path}, {what}; a run there "
                    f"could change code the host runs as you. Choose a writable "
                    f"place outside it",
                    key=_key(root.origin),
                    value=root.path,
                )
            if (
                root.is_dir
                and _under(path, root.path)
                and os.path.exists(path)
                and plan.access_of(path) is Access.WRITABLE
            ):
                _make_read_only(
                    plan, path, root, None, guard_protected=False, check_replaced=False
                )
                plan.notes.append(
                    f"protected: {path} read-only ({what}, in the writable place "
                    f"{root.path})"
                )


def git_tails(entries: tuple[str, ...]) -> tuple[str, ...]:
    """The protected names of a git directory (``.git/X`` entries): they
    apply to every git directory the guard finds too (``gitdirs.py``)."""
    out = []
    for entry in entries:
        parts = os.path.normpath(entry).split("/")
        if len(parts) == 2 and parts[0] == ".git" and not os.path.isabs(entry):
            out.append(parts[1])
    return tuple(dict.fromkeys(out))


def _protect_git_dirs(
    plan: FsPlan,
    root: PathRule,
    tails: tuple[str, ...],
    *,
    guard_protected: bool,
    check_replaced: bool,
) -> None:
    """The other git directories of a writable place (``gitdirs.scan``:
    nested repositories its index references, submodules' and worktrees'
    directories, the place itself laid out as a bare repository): their
    protected names that exist become read-only like ``.git``'s, and so do
    nested repositories' ``.git`` files. The guard scans again after the
    run and checks what was not protected now."""
    assert root.ident is not None
    try:
        fd = open_nofollow(root.path)
    except OSError:
        return
    try:
        found = gitdirs.scan(fd, root.path)
    finally:
        os.close(fd)
    known: set[str] = set()
    for gitdir in found.gitdirs:
        for tail in tails:
            path = os.path.join(root.path, *gitdir, tail)
            if os.path.lexists(path):
                _protect_one(
                    plan,
                    root,
                    gitdir + (tail,),
                    guard_protected=guard_protected,
                    check_replaced=check_replaced,
                )
                known.add(path)
    for gitfile in found.gitfiles:
        path = os.path.join(root.path, *gitfile)
        _make_read_only(
            plan,
            path,
            root,
            gitfile,
            guard_protected=guard_protected,
            check_replaced=check_replaced,
        )
        known.add(path)
    # protected now (read-only, or recorded and restored): the guard's
    # scan after the run leaves them to the rules and watches
    known = {
        p for p in known if p in plan.guarded or plan.access_of(p) is not Access.WRITABLE
    }
    plan.notes.extend(
        f"protected: git directories of {root.path} not all found: {why} (TODO(#6))"
        for why in found.incomplete
    )
    plan.guard.scan_git(
        root.path,
        root.ident,
        tails,
        known=frozenset(known),
    )


def _protect_one(
    plan: FsPlan,
    root: PathRule,
    parts: tuple[str, ...],
    *,
    guard_protected: bool,
    check_replaced: bool,
) -> None:
    current = root.path
    for index, name in enumerate(parts):
        path = os.path.join(current, name)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            # Not there yet: the run may create it; checked after the run.
            if plan.access_of(current) is Access.WRITABLE:
                assert root.ident is not None
                plan.guard.watch_absent(
                    root.path, root.ident, parts, missing_from=index
                )
                plan.guarded.append(os.path.join(root.path, *parts))
            return
        except OSError:
            return
        last = index == len(parts) - 1
        if stat.S_ISLNK(st.st_mode):
            # A link cannot be mounted over; it is checked after the run,
            # and what it points to is kept read-only when it is writable.
            if plan.access_of(current) is Access.WRITABLE:
                assert root.ident is not None
                plan.guard.watch_snapshot(root.path, root.ident, parts[: index + 1])
                plan.guarded.append(path)
                plan.notes.append(
                    f"protected: {path} is a symbolic link; it is checked after the "
                    f"run (a link cannot be made read-only)"
                )
                target = os.path.realpath(path)
                if os.path.exists(target) and plan.access_of(target) is Access.WRITABLE:
                    _make_read_only(
                        plan,
                        target,
                        root,
                        None,
                        guard_protected=False,
                        check_replaced=False,
                    )
            return
        if last or not stat.S_ISDIR(st.st_mode):
            # the path itself, or a file where a directory was expected
            # (``.git`` of a worktree names the real git directory)
            _make_read_only(
                plan,
                path,
                root,
                parts[: index + 1],
                guard_protected=guard_protected,
                check_replaced=check_replaced,
            )
            return
        current = path


def _make_read_only(
    plan: FsPlan,
    path: str,
    root: PathRule,
    parts: tuple[str, ...] | None,
    *,
    guard_protected: bool,
    check_replaced: bool,
) -> None:
    if plan.access_of(path) is not Access.WRITABLE:
        return  # already read-only or hidden by a rule
    if guard_protected and parts is not None:
        assert root.ident is not None
        plan.guard.watch_snapshot(root.path, root.ident, parts)
        plan.guarded.append(path)
        return
    st = os.stat(path)
    if check_replaced and parts is not None:
        assert root.ident is not None
        plan.guard.watch_identity(root.path, root.ident, parts, (st.st_dev, st.st_ino))
    plan.add(
        PathRule(
            path,
            Access.READ_ONLY,
            "protected",
            stat.S_ISDIR(st.st_mode),
            (st.st_dev, st.st_ino),
        )
    )
    plan.protected.append(path)


# -- hard links --------------------------------------------------------------------


def _check_links(plan: FsPlan) -> None:
    """A read-only or hidden file that has another name is refused (step 5):
    another name could change it or show it. Files are refused whatever
    covers them, since the other name may lie anywhere (a writable place
    where an earlier run made it, or one a later rule makes visible).

    Directories are not walked. TODO(#6): meanwhile a second name, in a
    writable place, for a file deeper in a hidden directory or anywhere in
    a read-only one is not seen and defeats the rule (docs: known
    limitations). One level is checked where it is cheap and needed: the
    files directly in a protected directory (``.git/hooks`` is flat), and
    directly in a hidden directory inside a writable place (on the second
    tier a grant on the other name reaches the file by its hidden path too:
    Landlock rules attach to inodes).
    """
    for rule in list(plan.rules.values()):
        if rule.access is Access.WRITABLE or rule.origin not in _LINKED_ORIGINS:
            continue
        if not rule.is_dir:
            _one_link(rule.path, rule.access, rule.origin)
            continue
        cover = plan.rule_for(rule.path, strict=True)
        in_writable = cover is not None and cover.access is Access.WRITABLE
        if rule.origin == "protected" or (rule.access is Access.HIDDEN and in_writable):
            try:
                with os.scandir(rule.path) as it:
                    entries = list(it)
            except OSError:
                continue
            for entry in entries:
                if entry.is_file(follow_symlinks=False):
                    _one_link(entry.path, rule.access, rule.origin, within=rule.path)


# Rules whose files must have one name: the policy's own (system
# directories and the command's installations are the host's).
_LINKED_ORIGINS = ("read_only", "hidden", "protected")


def _one_link(
    path: str, access: Access, origin: str, *, within: str | None = None
) -> None:
    try:
        links = os.lstat(path).st_nlink
    except OSError:
        return
    if links <= 1:
        return
    read_only = access is Access.READ_ONLY
    harm = "change it" if read_only else "show its content"
    state = "read-only" if read_only else "hidden"
    where = f" (in the {state} directory {within})" if within else ""
    raise PolicyError(
        f"{origin}: {path}{where} has {links} hard links (st_nlink {links}): another "
        f"name for the same file could {harm} while this one is {state}. "
        f"Give it a name of its own (cp -p {path} {path}.new && mv {path}.new {path}) "
        f"or drop the rule",
        key="protected" if origin == "protected" else origin,
        value=path,
    )
