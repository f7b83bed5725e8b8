"""The on-disk cache: content-addressed entries, written atomically, built once, safe to move.

One directory holds every kind of entry (kernels, boot images, fixtures, build
outputs...): PROVIUM_CACHE_DIR if set, else the suite's `[cache] dir` in
provium.toml (relative to the suite root), else $XDG_CACHE_HOME/provium
(default ~/.cache/provium). Entries are KIND/KEY/ directories (fixtures:
fixtures/NAME/KEY/VARIANT/). Keys are digests of content, never of the
cache's own location, and nothing in an entry names the cache's absolute
path as something to follow (links and backing files are relative), so a
cache restored at another path, or on another machine with the same QEMU and
kernels, still hits.

A builder writes to a temporary name in the same directory and the entry
appears by rename, so a reader never sees a partial file; a file lock per
entry makes concurrent provium processes build it once. A process that uses
an entry marks it (Cache.use): the directory's modification time is its last
use (what `provium cache prune` evicts by), and a shared lock on the
directory, held while the process lives, keeps prune away from it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, TypeVar

if TYPE_CHECKING:
    from .config import Config

ENV = "PROVIUM_CACHE_DIR"
MEMO = "memo"  # the kind of Cache.remember's files: one per question, not entries (prune leaves them)
_SETTLED_NS = 2_000_000_000  # a file changed more recently than this may change again within its timestamp's tick
T = TypeVar("T")


@dataclass(frozen=True)
class Location:
    """Where the cache is and which setting put it there (as `provium cache info` says it)."""

    path: Path
    setting: str


def locate(configured: Path | None = None, configured_by: str = "provium.toml [cache] dir") -> Location:
    """The cache directory: PROVIUM_CACHE_DIR, else `configured` (a suite's [cache] dir, already absolute),
    else $XDG_CACHE_HOME/provium, else ~/.cache/provium."""
    env = os.environ.get(ENV)
    if env:
        return Location(Path(os.path.abspath(os.path.expanduser(env))), f"environment variable {ENV}")
    if configured is not None:
        return Location(Path(os.path.abspath(configured)), configured_by)
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Location(Path(os.path.abspath(xdg)) / "provium", "environment variable XDG_CACHE_HOME (+ /provium)")
    return Location(Path(os.path.expanduser("~")) / ".cache" / "provium", "the default, ~/.cache/provium")


def default_root() -> Path:
    """The cache directory when no suite is known: PROVIUM_CACHE_DIR, else the XDG default."""
    return locate().path


def digest(*parts):
    """A hex key over strings, bytes and files (Path) in order."""
    return _digest(parts, _file_sha256)


def _file_sha256(path: Path) -> bytes:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").digest()


def _digest(parts, file_sha256: Callable[[Path], bytes]) -> str:
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, Path):
            h.update(file_sha256(part))
        elif isinstance(part, bytes):
            h.update(hashlib.sha256(part).digest())
        else:
            h.update(hashlib.sha256(str(part).encode()).digest())
    return h.hexdigest()[:32]


@contextmanager
def locked(path):
    """Hold an exclusive lock tied to `path` (a sibling .lock file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{path}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


# entry directory -> an fd holding a shared lock on it for the life of the process (see Cache.use)
_held: dict[str, int] = {}
_held_lock = threading.Lock()


def _lock_nowait(stack: ExitStack, path: Path, directory: bool = False) -> bool:
    """Take an exclusive lock on `path` if nobody holds one (False when somebody does); a missing file
    counts as free. The fd is closed, and the lock let go, when `stack` closes."""
    try:
        fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    except FileNotFoundError:
        return not directory
    stack.callback(os.close, fd)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return os.fstat(fd).st_nlink > 0


@contextmanager
def claimed(entry: Path) -> Iterator[bool]:
    """True while this process holds every lock of the entry directory `entry`: no provium process is
    using it (Cache.use) or building in it (its sibling KEY.lock and the NAME.lock files in it). False,
    at once, when one is: the caller must leave it alone. Deleting it is safe while True."""
    with ExitStack() as stack:
        free = _lock_nowait(stack, entry, directory=True) and _lock_nowait(stack, Path(f"{entry}.lock"))
        if free:
            try:
                inner = [p for p in entry.iterdir() if p.name.endswith(".lock")]
            except OSError:
                inner = []
            free = all(_lock_nowait(stack, p) for p in inner)
        yield free


def last_used(entry: Path) -> float:
    """When the entry was last used: its directory's modification time (Cache.use sets it), its lock
    file's (a build step takes it on every run), or a fixture's last-used file, whichever is latest."""
    times = []
    for path in (entry, Path(f"{entry}.lock"), entry / "last-used"):
        try:
            times.append(path.stat().st_mtime)
        except OSError:
            pass
    return max(times, default=0.0)


def _stamp(path: Path) -> list[int]:
    st = os.stat(path)
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


class Cache:
    """The cache directory (`root`) and how it was chosen (`setting`, for `provium cache info`).

    Cache() is the cache when no suite is known (PROVIUM_CACHE_DIR, else the XDG default);
    Cache.for_suite(config) honours the suite's `[cache] dir` too; Cache(path) is that directory.
    """

    def __init__(self, root: str | os.PathLike | None = None, setting: str | None = None) -> None:
        if root is None:
            location = locate()
            root, setting = location.path, location.setting
        self.root = Path(os.path.abspath(root))
        self.setting = setting or "given"

    @classmethod
    def for_suite(cls, config: Config) -> Cache:
        """The cache of the suite `config`: PROVIUM_CACHE_DIR, else its provium.toml [cache] dir, else the
        XDG default."""
        location = locate(config.cache_dir, f"{config.path} [cache] dir")
        return cls(location.path, location.setting)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Cache) and other.root == self.root

    def __hash__(self) -> int:
        return hash(self.root)

    def __repr__(self) -> str:
        return f"Cache({str(self.root)!r})"

    def entry(self, kind, key, name):
        """Path of the cached file `name` for (kind, key); may not exist yet."""
        return self.root / kind / key / name

    def use(self, entry: Path) -> bool:
        """Mark the entry directory `entry` used by this process: its modification time is set to now (its
        last use, what prune evicts by) and a shared lock on it is held until the process ends (prune
        never removes an entry in use). Once per entry and process. False when it does not exist (or
        was removed while this waited for prune to finish with it)."""
        key = os.path.abspath(entry)
        with _held_lock:
            fd = _held.get(key)
            if fd is not None:
                if os.fstat(fd).st_nlink > 0:
                    return True
                del _held[key]  # removed (say, a broken fixture entry) and maybe made again: lock the new one
                os.close(fd)
        try:
            fd = os.open(key, os.O_RDONLY | os.O_DIRECTORY)
        except (FileNotFoundError, NotADirectoryError):
            return False
        fcntl.flock(fd, fcntl.LOCK_SH)  # waits only while a prune is deleting it
        if os.fstat(fd).st_nlink == 0:
            os.close(fd)
            return False
        try:
            os.utime(fd)
        except OSError:
            pass  # a read-only cache is still usable: its LRU order just does not move
        with _held_lock:
            if key in _held:
                os.close(fd)
            else:
                _held[key] = fd
        return True

    def remember(self, question: str, files: Sequence[Path], answer: Callable[[], T]) -> T:
        """answer() (a JSON value worked out from `files`), remembered across runs until one of the files
        changes, as git's index does: by each file's stat stamp (device, inode, size, modification and
        change times). A file changed in the last 2 s may change again within one tick of its clock, so what
        is worked out from it is not remembered yet."""
        now, stamps = time.time_ns(), [_stamp(path) for path in files]
        memo = self.root / MEMO / f"{digest(question, *map(os.path.abspath, files))}.json"
        try:
            known = json.loads(memo.read_text())
            if known["stamps"] == stamps:
                return known["value"]
        except (OSError, ValueError, KeyError, TypeError):
            pass  # none yet, or unreadable: worked out again
        value = answer()
        if all(now - max(stamp[3:]) > _SETTLED_NS for stamp in stamps):
            tmp = memo.with_name(f".{memo.name}.{os.getpid()}.{threading.get_ident()}.tmp")
            try:
                memo.parent.mkdir(parents=True, exist_ok=True)
                tmp.write_text(json.dumps({"question": question, "stamps": stamps, "value": value}))
                os.replace(tmp, memo)
            except OSError:  # a read-only cache: worked out on every run
                with suppress(OSError):
                    tmp.unlink(missing_ok=True)
        return value

    def digest(self, *parts) -> str:
        """digest(), with each file's content hash remembered by its stat stamp (see remember())."""
        return _digest(parts, lambda path: bytes.fromhex(
            self.remember("sha256", [path], lambda: _file_sha256(path).hex())))

    def get_or_build(self, kind, key, name, build):
        """The entry's path, calling build(tmp_path) once to create it if missing."""
        final = self.entry(kind, key, name)
        if final.exists() and self.use(final.parent) and final.exists():
            return final
        with locked(final):
            if not final.exists():
                tmp = final.with_name(f".{name}.{os.getpid()}.tmp")
                try:
                    build(tmp)
                    os.replace(tmp, final)
                finally:
                    tmp.unlink(missing_ok=True)
        self.use(final.parent)
        return final
