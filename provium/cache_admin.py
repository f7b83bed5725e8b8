"""`provium cache info` and `provium cache prune`: what the cache holds, and trimming it to a size.

The cache (see cache.py) holds kinds of entries: KIND/KEY/ directories, and for
fixtures fixtures/NAME/KEY/VARIANT/. Sizes are what the files really occupy on
disk (allocated blocks: a fixture's sparse RAM file counts for the pages it has,
and a file hard-linked several times counts once). What is not an entry (lock
files, the kernel index, temporary names of builds in progress) counts in its
kind's size but is never pruned.

prune removes whole entries, least recently used first, until the cache fits
the size: never one that a running provium process uses or builds (it holds a
lock on it: see cache.claimed), and never a temporary build. Last use is the
time an entry was last handed to a provium process (Cache.use), a fixture's
last resume, or a build step's last run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import config as config_mod
from .cache import Cache, claimed, last_used
from .errors import ConfigError

EXIT_OK = 0
_NESTED = {"fixtures": 3}  # kinds whose entries lie deeper than KIND/KEY: fixtures/NAME/KEY/VARIANT
_INDEXES = {"kernel-index"}  # notes about other entries (provium kernel list), not entries themselves


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The actions of `provium cache`, added to its parser."""
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    actions.add_parser("info", help="where the cache is, what each kind of entry holds and occupies",
                       description="Where the cache is and which setting put it there, and for each kind of "
                                   "entry its count, size on disk and last use.")
    prune = actions.add_parser("prune", help="trim the cache to a size, least recently used entries first",
                               description="Remove least recently used entries until the cache occupies at most "
                                           "SIZE on disk; entries in use by a running provium process stay.")
    prune.add_argument("--max-size", metavar="SIZE",
                       help='the most the cache may occupy, such as "5G" or "500M" (default: provium.toml '
                            '[cache] max_size)')


@dataclass
class Entry:
    kind: str
    path: Path
    name: str                      # relative to the cache root, as printed
    last_used: float
    links: dict[tuple[int, int], int] = field(default_factory=dict)  # inode -> its links inside the entry


@dataclass
class Kind:
    name: str
    entries: int = 0
    bytes: int = 0
    last_used: float = 0.0


@dataclass
class Scan:
    """The cache as found on disk: its entries, and every inode once (blocks, links left)."""

    root: Path
    entries: list[Entry] = field(default_factory=list)
    kinds: dict[str, Kind] = field(default_factory=dict)
    blocks: dict[tuple[int, int], int] = field(default_factory=dict)   # inode -> bytes allocated
    remaining: dict[tuple[int, int], int] = field(default_factory=dict)  # inode -> links not yet removed

    @property
    def total(self) -> int:
        return sum(self.blocks.values())

    def _add(self, st: os.stat_result, kind: Kind, entry: Entry | None) -> None:
        inode = (st.st_dev, st.st_ino)
        if inode not in self.blocks:
            self.blocks[inode] = st.st_blocks * 512
            self.remaining[inode] = st.st_nlink if not stat.S_ISDIR(st.st_mode) else 1
            kind.bytes += self.blocks[inode]
        if entry is not None:
            entry.links[inode] = entry.links.get(inode, 0) + 1

    def _walk(self, top: Path, kind: Kind, entry: Entry | None, skip: frozenset[str] = frozenset()) -> None:
        """Every file, link and directory under `top` (itself included), without following links, and
        not below the directories in `skip`."""
        try:
            self._add(os.lstat(top), kind, entry)
        except OSError:
            return
        for directory, dirnames, filenames in os.walk(top):
            dirnames[:] = [name for name in dirnames if os.path.join(directory, name) not in skip]
            for name in dirnames + filenames:
                try:
                    self._add(os.lstat(os.path.join(directory, name)), kind, entry)
                except OSError:
                    pass  # removed while we looked

    def remove(self, entry: Entry) -> int:
        """Delete the entry; the bytes that freed (inodes with no link left)."""
        shutil.rmtree(entry.path, ignore_errors=True)
        freed = 0
        for inode, count in entry.links.items():
            self.remaining[inode] -= count
            if self.remaining[inode] <= 0 and inode in self.blocks:
                freed += self.blocks.pop(inode)
        return freed


def scan(root: Path) -> Scan:
    """What the cache at `root` holds: each kind's entries and sizes (each inode counted once)."""
    found = Scan(root)
    if not root.is_dir():
        return found
    top = Kind("")
    found._add(os.lstat(root), top, None)
    for kind_dir in sorted(root.iterdir()):
        kind = found.kinds.setdefault(kind_dir.name, Kind(kind_dir.name))
        if not kind_dir.is_dir() or kind_dir.is_symlink():
            found._add(os.lstat(kind_dir), kind, None)  # a lock file, or something not provium's
            continue
        entries = [] if kind.name in _INDEXES else _entry_dirs(kind_dir, _NESTED.get(kind.name, 1))
        for path in entries:
            entry = Entry(kind.name, path, str(path.relative_to(root)), last_used(path))
            found._walk(path, kind, entry)
            found.entries.append(entry)
            kind.entries += 1
            kind.last_used = max(kind.last_used, entry.last_used)
        found._walk(kind_dir, kind, None, frozenset(map(str, entries)))  # the rest: locks, indexes, temporary
    if found.kinds:
        first = next(iter(found.kinds.values()))
        first.bytes += top.bytes  # the root directory's own block
    return found


def _entry_dirs(kind_dir: Path, depth: int) -> list[Path]:
    """The entry directories `depth` levels below the kind's: none whose name starts with "." (a build in
    progress or a temporary name)."""
    level = [kind_dir]
    for _ in range(depth):
        level = [child for parent in level for child in _children(parent)
                 if child.is_dir() and not child.is_symlink() and not child.name.startswith(".")]
    return level


def _children(directory: Path) -> list[Path]:
    try:
        return sorted(directory.iterdir())
    except OSError:
        return []


def human(size: float) -> str:
    """A byte count as 512B, 1.5K, 12.3M, 4.0G."""
    for unit in ("B", "K", "M", "G", "T"):
        if size < 1024 or unit == "T":
            return f"{size:.0f}{unit}" if unit == "B" else f"{size:.1f}{unit}"
        size /= 1024
    return f"{size:.1f}T"


def _when(stamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(stamp)) if stamp else "-"


def info(cache: Cache) -> str:
    """The text of `provium cache info`."""
    found = scan(cache.root)
    lines = [f"cache: {cache.root}", f"set by: {cache.setting}"]
    if not cache.root.is_dir():
        return "\n".join([*lines, "empty: the directory does not exist yet"])
    lines.append(f"{'KIND':<14} {'ENTRIES':>7} {'SIZE':>9}  LAST USED")
    for kind in found.kinds.values():
        entries = "-" if kind.name in _INDEXES else str(kind.entries)
        lines.append(f"{kind.name:<14} {entries:>7} {human(kind.bytes):>9}  {_when(kind.last_used)}")
    lines.append(f"{'total':<14} {len(found.entries):>7} {human(found.total):>9}")
    return "\n".join(lines)


@dataclass
class PruneResult:
    before: int
    after: int
    removed: list[tuple[Entry, int]]  # (entry, bytes it freed)
    in_use: list[Entry]               # what would have gone but a provium process holds


def prune(cache: Cache, limit: int) -> PruneResult:
    """Remove least recently used entries until the cache occupies at most `limit` bytes; an entry a
    provium process uses or builds stays (and is reported)."""
    found = scan(cache.root)
    before = total = found.total
    removed, in_use = [], []
    for entry in sorted(found.entries, key=lambda e: e.last_used):
        if total <= limit:
            break
        with claimed(entry.path) as free:
            if not free:
                in_use.append(entry)
                continue
            freed = found.remove(entry)
        total -= freed
        removed.append((entry, freed))
        _remove_empty_parents(entry.path.parent, cache.root / entry.kind)
    if removed:
        _drop_stale_index(cache)
    return PruneResult(before, total, removed, in_use)


def _remove_empty_parents(directory: Path, stop: Path) -> None:
    """fixtures/NAME/KEY and fixtures/NAME once their last entry went (lock files are left alone)."""
    while directory != stop and stop in directory.parents:
        try:
            directory.rmdir()
        except OSError:
            return
        directory = directory.parent


def _drop_stale_index(cache: Cache) -> None:
    """Notes of the kernel index whose kernel was removed (provium kernel list hides them anyway)."""
    for note in (cache.root / "kernel-index").glob("*.json"):
        try:
            image = json.loads(note.read_text()).get("image", "")
        except (OSError, ValueError):
            continue
        if image and not (cache.root / image).exists():
            note.unlink(missing_ok=True)


def main(args: argparse.Namespace) -> int:
    """`provium cache info` or `provium cache prune`; ConfigError (exit status 2) for a bad size."""
    config = config_mod.load()
    cache = Cache.for_suite(config)
    if args.action == "info":
        print(info(cache))
        return EXIT_OK
    if args.max_size is not None:
        limit = config_mod.parse_size(args.max_size, "--max-size")
    elif config.cache_max_size is not None:
        limit = config_mod.parse_size(config.cache_max_size, f"{config.path}: [cache] max_size")
    else:
        raise ConfigError("cache prune: give --max-size SIZE (such as 5G), or set max_size in "
                          "provium.toml's [cache] table")
    result = prune(cache, limit)
    for entry, freed in result.removed:
        print(f"removed {entry.name} ({human(freed)}, last used {_when(entry.last_used)})")
    for entry in result.in_use:
        print(f"kept {entry.name}: in use by a running provium process")
    print(f"cache {cache.root}: {human(result.before)} before, {human(result.after)} after "
          f"(limit {human(limit)}; {len(result.removed)} entries removed)")
    if result.after > limit:
        print("still over the limit: the rest is in use, being built, or not an entry (locks, indexes)")
    return EXIT_OK
