"""The on-disk cache: content-addressed entries, written atomically, built once.

Entries live under $XDG_CACHE_HOME/provium (default ~/.cache/provium). A
builder writes to a temporary name in the same directory and the entry appears
by rename, so a reader never sees a partial file; a file lock per entry makes
concurrent provium processes build it once.
"""

import fcntl
import hashlib
import os
from contextlib import contextmanager
from pathlib import Path


def default_root():
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "provium"


def digest(*parts):
    """A hex key over strings, bytes and files (Path) in order."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, Path):
            with open(part, "rb") as f:
                h.update(hashlib.file_digest(f, "sha256").digest())
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


class Cache:
    def __init__(self, root=None):
        self.root = Path(root) if root else default_root()

    def entry(self, kind, key, name):
        """Path of the cached file `name` for (kind, key); may not exist yet."""
        return self.root / kind / key / name

    def get_or_build(self, kind, key, name, build):
        """The entry's path, calling build(tmp_path) once to create it if missing."""
        final = self.entry(kind, key, name)
        if final.exists():
            return final
        with locked(final):
            if final.exists():
                return final
            tmp = final.with_name(f".{name}.{os.getpid()}.tmp")
            try:
                build(tmp)
                os.replace(tmp, final)
            finally:
                tmp.unlink(missing_ok=True)
        return final
