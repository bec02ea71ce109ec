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
directory). Only spine directories are listed, one level each: nothing
walks a tree.

Rules made from a listing carry the entry's identity (device, inode); the
launcher opens each without following links and skips nothing silently: an
entry replaced since the listing stops the run (``landlock.apply``).
Symbolic links get no rule: Landlock checks the file a link leads to.
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

# A listing-made ruleset stays below this size (each rule is a syscall in the
# launcher child before the program starts).
MAX_LANDLOCK_RULES = 20000


@dataclass
class Grant:
    """One Landlock rule: rights on a path (and its tree)."""

    path: str
    access: list[str]
    ident: tuple[int, int] | None = None


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
        PolicyError: a spine directory cannot be listed, or the ruleset
            would be larger than ``MAX_LANDLOCK_RULES``.
    """
    rules = {**plan.system, **plan.rules}
    out = Translation()
    roots = [r for r in rules.values() if plan.rule_for(r.path, strict=True) is None]
    for root in sorted(roots, key=lambda r: r.path):
        beneath = [r for r in rules.values() if _strictly_under(r.path, root.path)]
        _grant(root.path, RIGHTS[root.access], root.is_dir, root.ident, beneath, out)
    if len(out.grants) > MAX_LANDLOCK_RULES:
        raise PolicyError(
            f"the path rules need {len(out.grants)} Landlock rules on the second tier "
            f"(at most {MAX_LANDLOCK_RULES}): a read-only or hidden path lies in a "
            f"directory with very many entries; move it, or use the first tier",
            key="hidden",
            value=len(out.grants),
        )
    return out


def _strictly_under(path: str, root: str) -> bool:
    return path != root and path.startswith(root.rstrip("/") + "/")


def _top_level(rules: list[PathRule]) -> list[PathRule]:
    paths = {r.path for r in rules}
    return [
        r for r in rules
        if not any(_strictly_under(r.path, p) for p in paths if p != r.path)
    ]


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
    if allowed:
        out.grants.append(Grant(path, sorted(allowed), ident))
    if "create" in rights and "create" not in allowed:
        out.fixed.append(path)

    by_child: dict[str, list[PathRule]] = {}
    prefix = path.rstrip("/") + "/"
    for rule in beneath:
        by_child.setdefault(rule.path[len(prefix):].split("/", 1)[0], []).append(rule)
    try:
        entries = list(os.scandir(path))
    except OSError as err:
        raise PolicyError(
            f"cannot list {path} to express its read-only or hidden entries as Landlock "
            f"rules: {err.strerror}",
            key="hidden",
            value=path,
        ) from err
    for entry in entries:
        child = os.path.join(path, entry.name)
        rules_here = by_child.get(entry.name)
        if rules_here is None:
            if entry.is_symlink():
                continue
            st = entry.stat(follow_symlinks=False)
            out.grants.append(Grant(child, sorted(rights), (st.st_dev, st.st_ino)))
            if len(out.grants) > MAX_LANDLOCK_RULES:
                return
            continue
        own = next((r for r in rules_here if r.path == child), None)
        below = [r for r in rules_here if r.path != child]
        if own is not None:
            _grant(child, RIGHTS[own.access], own.is_dir, own.ident, below, out)
        else:
            st = entry.stat(follow_symlinks=False)
            _grant(child, rights, True, (st.st_dev, st.st_ino), below, out)
