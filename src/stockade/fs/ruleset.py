"""The path rules as a Landlock ruleset (second tier).

Landlock rules only grant, and a right granted on a directory holds in its
whole tree. So "writable, except this read-only file inside" cannot be one
rule on the directory plus one on the file. Instead, each directory above
an exception (up to the rule that covers it), its **spine**, is granted only
what the exceptions beneath it may have, and each of its other entries gets
the covering rule's rights by a rule of its own:

* above a read-only path: read, list, execute;
* above a hidden path: list only (names stay visible, contents do not);
* every other entry of a spine directory: the covering rule's rights.

The cost is in what the spine directories themselves lose: no entry can be
created, removed or renamed directly in them (``docs/filesystem.md``
lists this as a difference between the tiers; the result notes each such
directory).

The entries of a spine directory are listed by the launcher child just
before it applies the ruleset (``landlock.apply``), not here: the spec stays
small whatever the directory holds, and the listing is as fresh as it can
be. The child opens each entry without following links and skips, by
identity (device, inode), every entry that has rules of its own, so a hidden
directory renamed to another name, or a hidden file's second hard link in
the same directory, gets no grant. Symbolic links get no rule: Landlock
checks the file a link leads to. Nothing walks a tree: one listing per spine
directory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from ..errors import PolicyError
from .policy import Access, FsPlan, PathRule

# Fine-grained right names of ``linux/landlock.py`` (ACCESS_NAMES).
_READ = frozenset({"read_file", "list", "exec"})
_WRITE = _READ | {"write", "create", "unix"}
RIGHTS = {Access.HIDDEN: frozenset(), Access.READ_ONLY: _READ, Access.WRITABLE: _WRITE}
_LIST = frozenset({"list"})


@dataclass
class Grant:
    """One Landlock rule: rights on a path (and its tree).

    Attributes:
        path: the path.
        access: rights on it (fine names of ``linux/landlock.py``).
        ident: (st_dev, st_ino) it must still have; None for system paths.
        each: for a spine directory, the rights each of its entries gets
            (None: not a spine directory).
        skip: identities of entries that have rules of their own.
    """

    path: str
    access: list[str]
    ident: tuple[int, int] | None = None
    each: list[str] | None = None
    skip: list[tuple[int, int]] = field(default_factory=list)

    def spec(self) -> dict[str, object]:
        """The rule as ``landlock.ruleset_spec`` carries it."""
        out: dict[str, object] = {"path": self.path, "access": self.access}
        if self.ident is not None:
            out["id"] = list(self.ident)
        if self.each is not None:
            out["each"] = self.each
            out["skip"] = [list(i) for i in self.skip]
        return out


@dataclass
class Translation:
    grants: list[Grant] = field(default_factory=list)
    # spine directories that lost the right to create entries
    fixed: list[str] = field(default_factory=list)


def ancestor_rights(rule: PathRule) -> frozenset[str]:
    """The rights a directory above ``rule`` may have without widening it.

    For a file, rights that only concern directories (listing) do not reach
    it, but write, create and remove do (a writable parent could delete and
    replace it), so only its own read rights and listing remain.
    """
    own = RIGHTS[rule.access]
    if rule.is_dir:
        # A hidden directory's names may be listed from above (its contents
        # stay unreadable): otherwise the workspace itself could not be
        # listed. docs/filesystem.md lists this tier difference.
        return own | _LIST if rule.access is Access.HIDDEN else own
    return (own & {"read_file", "exec"}) | _LIST


def translate(plan: FsPlan) -> Translation:
    """Landlock grants for the plan's rules and the mode's system paths.

    Raises:
        PolicyError: a spine directory cannot be examined.
    """
    rules = {**plan.system, **plan.rules}
    out = Translation()
    roots = [r for r in rules.values() if plan.rule_for(r.path, strict=True) is None]
    for root in sorted(roots, key=lambda r: r.path):
        beneath = [r for r in rules.values() if _strictly_under(r.path, root.path)]
        _grant(root.path, RIGHTS[root.access], root.is_dir, root.ident, beneath, out)
    return out


def _strictly_under(path: str, root: str) -> bool:
    return path != root and path.startswith(root.rstrip("/") + "/")


def _top_level(rules: list[PathRule]) -> list[PathRule]:
    paths = {r.path for r in rules}
    return [
        r
        for r in rules
        if not any(_strictly_under(r.path, p) for p in paths if p != r.path)
    ]


def _identity(path: str) -> tuple[int, int]:
    try:
        st = os.lstat(path)
    except OSError as err:
        raise PolicyError(
            f"cannot examine {path} to express the read-only or hidden paths "
            f"beneath it as Landlock rules: {err.strerror}",
            key="hidden",
            value=path,
        ) from err
    return (st.st_dev, st.st_ino)


def _grant(
    path: str,
    rights: frozenset[str],
    is_dir: bool,
    ident: tuple[int, int] | None,
    beneath: list[PathRule],
    out: Translation,
) -> None:
    constraining = [r for r in beneath if not RIGHTS[r.access] >= rights]
    if not constraining or not is_dir:
        if rights:
            out.grants.append(Grant(path, sorted(rights), ident))
        for rule in _top_level(beneath):
            below = [r for r in beneath if _strictly_under(r.path, rule.path)]
            _grant(rule.path, RIGHTS[rule.access], rule.is_dir, rule.ident, below, out)
        return

    allowed = rights
    for rule in constraining:
        allowed = allowed & ancestor_rights(rule)
    if "create" in rights and "create" not in allowed:
        out.fixed.append(path)

    # entries of this directory that have rules of their own, or hold some
    by_child: dict[str, list[PathRule]] = {}
    prefix = path.rstrip("/") + "/"
    for rule in beneath:
        by_child.setdefault(rule.path[len(prefix) :].split("/", 1)[0], []).append(rule)
    grant = Grant(path, sorted(allowed), ident or _identity(path), each=sorted(rights))
    out.grants.append(grant)
    for name, rules_here in sorted(by_child.items()):
        child = prefix + name
        own = next((r for r in rules_here if r.path == child), None)
        below = [r for r in rules_here if r.path != child]
        if own is not None:
            grant.skip.append(own.ident or _identity(child))
            _grant(child, RIGHTS[own.access], own.is_dir, own.ident, below, out)
        else:
            child_ident = _identity(child)
            grant.skip.append(child_ident)
            _grant(child, rights, True, child_ident, below, out)
