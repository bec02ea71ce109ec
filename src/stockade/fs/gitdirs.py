"""Git directories in a writable place beyond its root's ``.git``.

Git on the host runs code named by more git directories than the one at the
root of the workspace:

* **nested repositories the index references** (gitlinks, mode 160000: a
  submodule, or a repository ``git add``-ed as one): ``git status`` at the
  root recurses into each and reads its config (``core.fsmonitor``);
  their git directory is ``P/.git``, or the directory a ``P/.git`` *file*
  names (``gitdir: ../.git/modules/P``);
* **submodules' git directories** under ``.git/modules`` (names may hold
  slashes; nested submodules under ``.git/modules/A/modules``), which
  ``git submodule update`` reuses;
* **linked worktrees' directories** ``.git/worktrees/NAME``, whose
  ``commondir`` and ``config.worktree`` git reads in that worktree;
* **the writable place itself laid out as a bare repository** (a valid
  ``HEAD``, ``objects`` and ``refs``): git 2.39 uses it from any command run
  there (``safe.bareRepository`` defaults to ``all``).

``scan`` finds them without walking the tree: one ``lstat`` per candidate,
the index file of each repository (searched for the gitlink mode first, and
parsed only when it may hold one), and listings of ``.git/modules`` and
``.git/worktrees``. It walks with descriptors and never follows a symbolic
link in the writable place, except the index file itself (git follows it).
The policy protects what exists at launch (``policy.py``); the guard scans
again after the run and checks what was not protected then (``guard.py``).

Git run *inside* a repository the index does not reference uses it too (an
untracked ``sub/.git``, ``git init --bare sub.git``, a gitlink only in a
commit on another branch, any directory laid out as a git directory). The
scan cannot find those without walking, so after the run the guard also
calls ``walk``: one walk of the place's directories by descriptor (no link
followed, one file system, never into a git directory's ``objects``), which
adds the git directories, ``.git`` files and links, and links under
``modules`` and ``worktrees``, that changed at or after the run's start.

TODO(#6): past the walk's bounds (``MAX_WALKED`` directories,
``MAX_WALK_DEPTH`` levels) and on another file system mounted in the place,
repositories are not found; the guard reports that, and the docs tell the
user to review such repositories before running git in them.
"""

from __future__ import annotations

import os
import re
import stat
import struct
from dataclasses import dataclass, field

GITLINK = 0o160000
# An index larger than this is not read (one is about 100 bytes per file:
# 64 MiB is over half a million files).
MAX_INDEX_BYTES = 64 * 1024 * 1024
# Bounds of one scan: nested repositories followed, git directories found,
# directories listed under .git/modules, and how deep repositories nest.
MAX_NESTED = 256
MAX_GITDIRS = 128
MAX_LISTED = 256
MAX_DEPTH = 4
# Bounds of the walk after the run (``walk``): directories opened, and how
# deep it goes below the writable place.
MAX_WALKED = 50_000
MAX_WALK_DEPTH = 128
# Names whose change (ctime) makes a git directory the walk finds count as
# touched by the run, besides the directory itself and the protected names.
TOUCH_NAMES = ("HEAD", "commondir", "config", "config.worktree", "hooks")
_LISTABLE = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_MODE = struct.pack(">I", GITLINK)
_TOO_BIG = b"\0too big"  # a sentinel, compared by identity
_HEX = re.compile(rb"^(?:[0-9a-f]{40}|[0-9a-f]{64})\s*$")

Parts = tuple[str, ...]


@dataclass
class Found:
    """What one scan found, as parts relative to the writable place.

    Attributes:
        gitdirs: git directories (``()`` is the place itself, laid out as a
            bare repository) with their kind: ``nested``, ``module``,
            ``worktree``, ``bare`` or ``root`` (the target of the root's own
            ``.git`` file when it lies inside).
        gitfiles: ``.git`` files of nested repositories, with the git
            directory each names when that lies inside the place (None:
            outside it, or unreadable).
        others: a nested repository's ``.git`` that is neither a directory
            nor a regular file (a symbolic link: git would follow it).
        links: symbolic links the walk found under a git directory's
            ``modules`` or ``worktrees`` (git follows them), made or changed
            since the walk's ``since``.
        walked: what the walk added (``gitdirs`` it found touched since
            ``since``, ``gitfiles`` and ``others`` made or changed since).
        incomplete: what a bound or an unreadable index left unscanned.
    """

    gitdirs: dict[Parts, str] = field(default_factory=dict)
    gitfiles: dict[Parts, Parts | None] = field(default_factory=dict)
    others: list[Parts] = field(default_factory=list)
    links: list[Parts] = field(default_factory=list)
    walked: set[Parts] = field(default_factory=set)
    incomplete: list[str] = field(default_factory=list)


def scan(root_fd: int, root: str) -> Found:
    """Find the git directories of the writable place ``root`` (open as
    ``root_fd``, reached without following links)."""
    found = Found()
    if is_gitdir(root_fd, ()):
        found.gitdirs[()] = "bare"
        _inside_gitdir(root_fd, (), found)
    nested = [0]
    _repository(root_fd, root, (), found, depth=0, nested=nested)
    return found


def _repository(
    root_fd: int, root: str, worktree: Parts, found: Found, *, depth: int, nested: list[int]
) -> None:
    dotgit = worktree + (".git",)
    st = _lstat(root_fd, dotgit)
    if st is None:
        return
    index: tuple[int, str] | None = None  # (dir fd or -1, path)
    gitdir: Parts | None = None
    if stat.S_ISDIR(st.st_mode):
        gitdir = dotgit
        if worktree:
            _add(found, gitdir, "nested")
    elif stat.S_ISREG(st.st_mode):
        target = _gitfile(root_fd, root, dotgit)
        if worktree:
            found.gitfiles[dotgit] = target[0] if target else None
        if target is None:
            return
        gitdir, absolute = target
        if gitdir is None:
            # outside the place (the workspace is a linked worktree or a
            # submodule checkout): only its index is read
            index = (-1, os.path.join(absolute, "index"))
        else:
            _add(found, gitdir, "nested" if worktree else "root")
    else:
        if worktree:
            found.others.append(dotgit)
        return
    if gitdir is not None:
        _inside_gitdir(root_fd, gitdir, found)
        index = (-2, "/".join(gitdir + ("index",)))
    if depth >= MAX_DEPTH:
        found.incomplete.append(f"{'/'.join(worktree) or '.'}: nested deeper than {MAX_DEPTH}")
        return
    assert index is not None
    data = _read_index(root_fd, index)
    if data is _TOO_BIG:
        found.incomplete.append(
            f"{index[1]}: larger than {MAX_INDEX_BYTES // 1024 // 1024} MiB, not read"
        )
        return
    if data is None or (_MODE not in data and b"link" not in data):
        return  # no gitlink, and not split: the common case, at memchr speed
    links = gitlinks(data, lambda oid: _shared_index(root_fd, index, oid))
    if links is None:
        found.incomplete.append(f"{index[1]}: not an index this check can read")
        return
    for path in links:
        parts = tuple(path.split("/"))
        if any(p in ("", ".", "..") for p in parts):
            continue  # git refuses such paths too
        nested[0] += 1
        if nested[0] > MAX_NESTED:
            found.incomplete.append(f"more than {MAX_NESTED} nested repositories")
            return
        _repository(root_fd, root, worktree + parts, found, depth=depth + 1, nested=nested)


def _add(found: Found, gitdir: Parts, kind: str) -> bool:
    if gitdir in found.gitdirs:
        return False
    if len(found.gitdirs) >= MAX_GITDIRS:
        found.incomplete.append(f"more than {MAX_GITDIRS} git directories")
        return False
    found.gitdirs[gitdir] = kind
    return True


def _inside_gitdir(root_fd: int, gitdir: Parts, found: Found) -> None:
    """Submodules' git directories under ``modules`` (names may nest) and
    linked worktrees' directories under ``worktrees``."""
    listed = [0]

    def modules(base: Parts, depth: int) -> None:
        for name in _subdirs(root_fd, base, listed, found):
            here = base + (name,)
            if is_gitdir(root_fd, here):
                if _add(found, here, "module"):
                    _inside_gitdir(root_fd, here, found)
            elif depth < MAX_DEPTH:
                modules(here, depth + 1)

    modules(gitdir + ("modules",), 0)
    for name in _subdirs(root_fd, gitdir + ("worktrees",), listed, found):
        here = gitdir + ("worktrees", name)
        if is_gitdir(root_fd, here):
            _add(found, here, "worktree")


def _subdirs(root_fd: int, parts: Parts, listed: list[int], found: Found) -> list[str]:
    fd = open_dir(root_fd, parts, listable=True)
    if fd is None:
        return []
    listed[0] += 1
    if listed[0] > MAX_LISTED:
        os.close(fd)
        found.incomplete.append(f"more than {MAX_LISTED} directories under modules")
        return []
    try:
        with os.scandir(fd) as it:
            return sorted(e.name for e in it if e.is_dir(follow_symlinks=False))
    except OSError:
        return []
    finally:
        os.close(fd)


def is_gitdir(root_fd: int, parts: Parts) -> bool:
    """Git's own test (``is_git_directory``): a valid ``HEAD``, and
    ``objects`` and ``refs`` directories, or a ``commondir`` file."""
    fd = open_dir(root_fd, parts)
    if fd is None:
        return False
    try:
        return _is_gitdir_fd(fd)
    finally:
        os.close(fd)


def _is_gitdir_fd(fd: int) -> bool:
    try:
        st = os.lstat("HEAD", dir_fd=fd)
    except OSError:
        return False
    if stat.S_ISLNK(st.st_mode):
        if not os.readlink("HEAD", dir_fd=fd).startswith("refs/"):
            return False
    else:
        head = read_file(fd, "HEAD", 256)
        if head is None:
            return False
        if not (
            re.match(rb"^ref:\s*refs/", head) or _HEX.match(head)
        ):
            return False
    if _exists(fd, "commondir"):
        return True
    return all(_isdir(fd, name) for name in ("objects", "refs"))


def _exists(fd: int, name: str) -> bool:
    try:
        os.lstat(name, dir_fd=fd)
        return True
    except OSError:
        return False


def _isdir(fd: int, name: str) -> bool:
    try:
        return stat.S_ISDIR(os.stat(name, dir_fd=fd).st_mode)  # git follows links
    except OSError:
        return False


def _gitfile(root_fd: int, root: str, parts: Parts) -> tuple[Parts | None, str] | None:
    """The git directory a ``.git`` file names: (parts inside the place or
    None, absolute path); None when the file is not a gitfile."""
    fd = open_dir(root_fd, parts[:-1])
    if fd is None:
        return None
    try:
        data = read_file(fd, parts[-1], 4096)
    finally:
        os.close(fd)
    if data is None or not data.startswith(b"gitdir: "):
        return None
    try:
        target = data[len(b"gitdir: ") :].splitlines()[0].decode()
    except (UnicodeDecodeError, IndexError):
        return None
    if not target or "\0" in target:
        return None
    # the directories up to the .git file were reached without following a
    # link, so resolving ".." lexically matches the kernel
    absolute = os.path.normpath(os.path.join(root, *parts[:-1], target))
    rel = os.path.relpath(absolute, root)
    if rel == "." or rel.startswith(".."):
        return None, absolute
    return tuple(rel.split("/")), absolute


# -- the walk after the run ----------------------------------------------------------


def walk(
    root_fd: int, root: str, found: Found, since: int, tails: tuple[str, ...]
) -> int:
    """One bounded walk of the writable place after the run, adding to
    ``found`` (a ``scan``'s) what git may use and the scan does not reach:

    * every directory laid out as a git directory (git's test: ``HEAD``,
      ``objects``, ``refs``), a ``.git`` directory or any other, that the run
      touched: the directory itself, or one of ``TOUCH_NAMES`` / ``tails``
      (or an entry of one that is a directory), changed at or after
      ``since`` (ctime, ns);
    * every ``.git`` file (``gitfiles``) and ``.git`` that is neither a
      file nor a directory (``others``) changed at or after ``since``;
    * symbolic links under a git directory's ``modules`` or ``worktrees``
      changed at or after ``since`` (``links``).

    It opens each directory by descriptor without following a link, stays
    on the place's file system, never enters a git directory's ``objects``,
    and stops after ``MAX_WALKED`` directories or below ``MAX_WALK_DEPTH``
    (reported in ``incomplete``). Returns the number of directories opened.
    """
    try:
        top = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=root_fd)
    except OSError:
        found.incomplete.append("the writable place could not be listed")
        return 0
    touch = tuple(dict.fromkeys(TOUCH_NAMES + tails))
    state = _Walk(root_fd, root, found, since, touch, os.fstat(top).st_dev)
    try:
        _visit(top, (), False, state)
    finally:
        os.close(top)
    return state.opened


@dataclass
class _Walk:
    root_fd: int
    root: str
    found: Found
    since: int
    touch: tuple[str, ...]
    dev: int
    opened: int = 1
    stopped: bool = False
    deep: bool = False


def _visit(fd: int, parts: Parts, meta: bool, w: _Walk) -> None:
    """``fd``: the directory ``parts``, open for listing. ``meta``: it lies
    under a git directory's ``modules`` or ``worktrees``."""
    try:
        with os.scandir(fd) as it:
            entries = [
                (e.name, e.is_dir(follow_symlinks=False), e.is_symlink()) for e in it
            ]
    except OSError:
        return
    names = {e[0] for e in entries}
    is_git = "HEAD" in names and (
        "commondir" in names or ("objects" in names and "refs" in names)
    ) and _is_gitdir_fd(fd)
    found = w.found
    # the root's own .git: the policy's rules and watches (and the scan's
    # ``known``) cover it
    if is_git and parts not in found.gitdirs and parts != (".git",) and _touched(fd, w):
        if _add(found, parts, "tree"):
            found.walked.add(parts)
    for name, is_dir, is_link in entries:
        child = parts + (name,)
        if name == ".git" and not is_dir:
            if child in found.gitfiles or child in found.others:
                continue  # the scan's
            if not _changed(fd, name, w.since):
                continue
            found.walked.add(child)
            if is_link:
                found.others.append(child)
                continue
            target = _gitfile(w.root_fd, w.root, child)
            if target is not None:
                inside = target[0]
                if inside is not None:
                    probe = open_dir(w.root_fd, inside)
                    if probe is None:
                        inside = None  # behind a link, or not there: moved aside
                    else:
                        os.close(probe)
                found.gitfiles[child] = inside
            continue
        if is_link and meta and _changed(fd, name, w.since):
            found.links.append(child)
            found.walked.add(child)
            continue
        if not is_dir or (is_git and name == "objects") or w.stopped:
            continue
        if len(child) > MAX_WALK_DEPTH:
            if not w.deep:
                w.deep = True
                found.incomplete.append(
                    f"directories deeper than {MAX_WALK_DEPTH} not walked"
                )
            continue
        if w.opened >= MAX_WALKED:
            w.stopped = True
            found.incomplete.append(
                f"more than {MAX_WALKED} directories: the rest not walked"
            )
            continue
        try:
            sub = os.open(name, _LISTABLE, dir_fd=fd)
        except OSError:
            continue
        w.opened += 1
        try:
            if os.fstat(sub).st_dev != w.dev:
                continue  # another file system mounted here
            _visit(sub, child, meta or (is_git and name in ("modules", "worktrees")), w)
        finally:
            os.close(sub)


def _changed(fd: int, name: str, since: int) -> bool:
    try:
        return os.lstat(name, dir_fd=fd).st_ctime_ns >= since
    except OSError:
        return False


def _touched(fd: int, w: _Walk) -> bool:
    """Whether a git directory, or one of its names that make git run
    something, changed at or after ``since``."""
    if os.fstat(fd).st_ctime_ns >= w.since:
        return True
    for name in w.touch:
        try:
            st = os.lstat(name, dir_fd=fd)
        except OSError:
            continue
        if st.st_ctime_ns >= w.since:
            return True
        if stat.S_ISDIR(st.st_mode):
            try:
                sub = os.open(name, _LISTABLE, dir_fd=fd)
            except OSError:
                return True
            try:
                with os.scandir(sub) as it:
                    for n, e in enumerate(it):
                        ctime = e.stat(follow_symlinks=False).st_ctime_ns
                        if n >= MAX_LISTED or ctime >= w.since:
                            return True
            except OSError:
                return True
            finally:
                os.close(sub)
    return False


# -- the index -----------------------------------------------------------------------


def _read_index(root_fd: int, index: tuple[int, str]) -> bytes | None:
    kind, path = index
    if kind == -1:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return None
        return _read_fd(fd, MAX_INDEX_BYTES, big=_TOO_BIG)
    parts = tuple(path.split("/"))
    dfd = open_dir(root_fd, parts[:-1])
    if dfd is None:
        return None
    try:
        # git follows a link at the index itself: so does this read
        fd = os.open(parts[-1], os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dfd)
    except OSError:
        return None
    finally:
        os.close(dfd)
    return _read_fd(fd, MAX_INDEX_BYTES, big=_TOO_BIG)


def _shared_index(root_fd: int, index: tuple[int, str], oid: str) -> bytes | None:
    kind, path = index
    shared = os.path.join(os.path.dirname(path), f"sharedindex.{oid}")
    return _read_index(root_fd, (kind, shared))


def gitlinks(data: bytes, shared=None) -> list[str] | None:
    """The paths of gitlink entries (mode 160000) in a git index file
    (versions 2 to 4, SHA-1 or SHA-256), with those of its shared index
    when it is split and ``shared(oid)`` returns it. None: not an index
    this parser understands (git would refuse most such files too)."""
    for hash_len in (20, 32):
        out = _parse(data, hash_len)
        if out is None:
            continue
        links, shared_oid = out
        if shared_oid and shared is not None:
            more = shared(shared_oid)
            if more is not None:
                extra = _parse(more, hash_len)
                if extra is None:
                    return None
                links += extra[0]
        return links
    return None


def _parse(data: bytes, hash_len: int) -> tuple[list[str], str | None] | None:
    if len(data) < 12 + hash_len or data[:4] != b"DIRC":
        return None
    version, count = struct.unpack_from(">II", data, 4)
    if version not in (2, 3, 4):
        return None
    end = len(data) - hash_len
    pos = 12
    links: list[str] = []
    previous = b""
    fixed = 40 + hash_len + 2
    try:
        for _ in range(count):
            if pos + fixed > end:
                return None
            (mode,) = struct.unpack_from(">I", data, pos + 24)
            (flags,) = struct.unpack_from(">H", data, pos + 40 + hash_len)
            start = pos + fixed
            if flags & 0x4000:
                if version < 3:
                    return None
                start += 2
            if version == 4:
                strip, start = _varint(data, start)
                nul = data.index(b"\0", start, end)
                if strip > len(previous):
                    return None
                name = previous[: len(previous) - strip] + data[start:nul]
                pos = nul + 1
            else:
                nul = data.index(b"\0", start, end)
                name = data[start:nul]
                length = flags & 0xFFF
                if length < 0xFFF and length != len(name):
                    return None
                entry = nul - pos
                pos += (entry + 8) & ~7
                if pos > end or data[nul:pos].strip(b"\0"):
                    return None
            previous = name
            if mode == GITLINK:
                links.append(name.decode("utf-8", "surrogateescape"))
        shared_oid = None
        while pos + 8 <= end:
            sig = data[pos : pos + 4]
            (size,) = struct.unpack_from(">I", data, pos + 4)
            if sig == b"link" and size >= hash_len:
                shared_oid = data[pos + 8 : pos + 8 + hash_len].hex()
            pos += 8 + size
        if pos != end:
            return None
    except (ValueError, struct.error):
        return None
    if shared_oid is not None and set(shared_oid) == {"0"}:
        shared_oid = None
    return links, shared_oid


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    c = data[pos]
    pos += 1
    value = c & 127
    while c & 128:
        c = data[pos]
        pos += 1
        value = ((value + 1) << 7) + (c & 127)
    return value, pos


# -- descriptors ---------------------------------------------------------------------


def open_dir(root_fd: int, parts: Parts, *, listable: bool = False) -> int | None:
    """An O_PATH descriptor of ``root/parts`` (O_RDONLY if ``listable``),
    reached without following a link; None if it is not a directory
    reached so."""
    fd = os.dup(root_fd)
    try:
        for index, name in enumerate(parts):
            how = os.O_RDONLY if listable and index == len(parts) - 1 else os.O_PATH
            next_fd = os.open(
                name,
                how | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                dir_fd=fd,
            )
            os.close(fd)
            fd = next_fd
    except OSError:
        os.close(fd)
        return None
    return fd


def _lstat(root_fd: int, parts: Parts) -> os.stat_result | None:
    fd = open_dir(root_fd, parts[:-1])
    if fd is None:
        return None
    try:
        return os.lstat(parts[-1], dir_fd=fd)
    except OSError:
        return None
    finally:
        os.close(fd)


def read_file(dir_fd: int, name: str, limit: int) -> bytes | None:
    """Up to ``limit`` bytes of a regular file, opened without following a
    link or blocking on a FIFO."""
    try:
        fd = os.open(
            name,
            os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
            dir_fd=dir_fd,
        )
    except OSError:
        return None
    return _read_fd(fd, limit)


def _read_fd(fd: int, limit: int, big: bytes | None = None) -> bytes | None:
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        if st.st_size > limit:
            return big
        chunks = []
        left = limit
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    except OSError:
        return None
    finally:
        os.close(fd)
