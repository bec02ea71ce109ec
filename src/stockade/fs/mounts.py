"""The path rules as bubblewrap mounts (first tier).

After the mode's system directories and private areas (``bwrap.py``), one
mount per rule, outermost first, so that a rule inside another one is
mounted on top of it:

* writable: a bind mount;
* read-only: a read-only bind mount. Inside a writable place this also
  stops hard links and renames across it (``EXDEV``), so ``ln .git/config
  x`` cannot give the file a writable second name;
* hidden directory: an empty tmpfs, mode 000 (or 111 when a rule shows
  something inside it), remounted read-only once everything inside is
  mounted: listing and reading fail, and so does writing (``EACCES`` /
  ``EROFS``) instead of landing silently in a throw-away directory;
* hidden file: an empty, mode 000 file bound read-only over it;
* every directory between a writable place and a read-only or hidden path
  inside it is bound onto itself (**pinned**): a mount point cannot be
  renamed or removed, so the run cannot move ``.git`` aside and make a new
  one with its own hooks.

Bind sources are opened once by the launcher (``--bind-fd``) and checked
against the identity they had when the policy was resolved; bubblewrap
checks that each mount shows the descriptor's file. Rules a covering rule
already gives (a writable directory inside the workspace, a read-only one
in ``/usr``) are not mounted again.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from .policy import Access, FsPlan


@dataclass(frozen=True)
class Mount:
    """One bubblewrap mount operation.

    Attributes:
        kind: ``bind``, ``ro-bind``, ``tmpfs`` or ``remount-ro``.
        dest: path in the sandbox (the host path: paths are the same).
        source: host path to bind (binds only).
        ident: (st_dev, st_ino) the source must still have when opened.
        perms: mode of a tmpfs.
        watch: what the mount keeps (``hidden``, ``read-only``,
            ``protected``, ``pinned``) when it sits on a host path the run
            sees, so that a host rename over that path would undo it
            (``watch.py``); None otherwise.
    """

    kind: str
    dest: str
    source: str | None = None
    ident: tuple[int, int] | None = None
    perms: int | None = None
    watch: str | None = None

    @property
    def depth(self) -> int:
        return self.dest.count("/")


def plan_mounts(
    plan: FsPlan, *, empty_file: Callable[[], tuple[str, tuple[int, int]]]
) -> list[Mount]:
    """The mounts for the plan's rules, in the order bubblewrap applies them.

    Args:
        plan: the resolved rules.
        empty_file: makes (once per run) the empty file bound over hidden
            files; returns its path and identity.
    """
    mounts: list[Mount] = []
    remounts: list[Mount] = []
    pins: dict[str, tuple[int, int]] = {}
    rules = plan.ordered()
    for rule in rules:
        cover = plan.rule_for(rule.path, strict=True)
        if rule.access is Access.HIDDEN:
            if cover is None or cover.access is Access.HIDDEN:
                continue  # not visible in the first place
            if rule.is_dir:
                shows = any(
                    r.access is not Access.HIDDEN and r.path.startswith(rule.path + "/")
                    for r in rules
                )
                mounts.append(
                    Mount(
                        "tmpfs",
                        rule.path,
                        perms=0o111 if shows else 0o000,
                        watch="hidden",
                    )
                )
                remounts.append(Mount("remount-ro", rule.path))
            else:
                source, ident = empty_file()
                mounts.append(
                    Mount("ro-bind", rule.path, source, ident, watch="hidden")
                )
        elif cover is not None and cover.access is rule.access:
            continue  # the covering rule already shows it this way
        else:
            kind = "bind" if rule.access is Access.WRITABLE else "ro-bind"
            watch = None
            if cover is not None and cover.access is Access.WRITABLE:
                # a read-only mount inside a writable place: undone, the
                # path would be writable
                watch = "protected" if rule.origin == "protected" else "read-only"
            mounts.append(Mount(kind, rule.path, rule.path, rule.ident, watch=watch))
        if (
            cover is not None
            and cover.access is Access.WRITABLE
            and rule.access < cover.access
        ):
            _pin_between(cover.path, rule.path, plan, pins)

    mounts += [
        Mount("bind", path, path, ident, watch="pinned") for path, ident in pins.items()
    ]
    mounts.sort(key=lambda m: (m.depth, m.dest))
    return mounts + remounts


def _pin_between(
    outer: str, inner: str, plan: FsPlan, pins: dict[str, tuple[int, int]]
) -> None:
    current = os.path.dirname(inner)
    while current != outer and current.startswith(outer.rstrip("/") + "/"):
        if current not in plan.rules and current not in pins:
            st = os.stat(current)
            pins[current] = (st.st_dev, st.st_ino)
        current = os.path.dirname(current)
