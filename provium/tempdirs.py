"""Temporary directories that outlive no provium process.

Each is named after the process that made it (provium-PID-..., provium-run-PID-...)
and removed by that process when it is done with it. A process killed with
SIGKILL cannot remove its own, so the first directory a process makes starts
with a sweep of those whose process is gone.
"""

import os
import re
import shutil
import tempfile
import threading
from pathlib import Path

_OWNED = re.compile(r"^provium-(?:run-)?(\d+)-")
_swept: set[str] = set()
_lock = threading.Lock()


def make(kind: str = "", base: str | None = None) -> Path:
    """A new private directory provium-[KIND-]PID-XXXX under `base` (default: TMPDIR)."""
    base = base or tempfile.gettempdir()
    with _lock:
        if base not in _swept:
            _swept.add(base)
            _sweep(Path(base))
    return Path(tempfile.mkdtemp(prefix=f"provium-{kind + '-' if kind else ''}{os.getpid()}-", dir=base))


def process_gone(pid: int) -> bool:
    """True when no process `pid` runs (a directory it owned is left over)."""
    return pid != os.getpid() and not Path(f"/proc/{pid}").exists()


def _sweep(base: Path) -> None:
    for path in base.glob("provium-*"):
        owner = _OWNED.match(path.name)
        if not owner or not process_gone(int(owner.group(1))):
            continue
        try:
            mine = path.is_dir() and path.lstat().st_uid == os.getuid()
        except OSError:  # another provium starting now swept it first
            continue
        if mine:
            shutil.rmtree(path, ignore_errors=True)
