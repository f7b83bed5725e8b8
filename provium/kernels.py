"""Kernels a profile boots: the host's, one from the distribution's archive, or one built from source.

A profile names where its kernel comes from; getting it (downloading packages,
building a tree) is expensive, so it happens on first use and is cached:
provium/archive.py fetches `apt:` packages, provium/kbuild.py builds
`kernel_source` trees. Either gives a KernelTree: what to boot, its modules,
the kbuild tree out-of-tree modules are built against and, when there are
any, the debug symbols that decode its reports to file:line.
"""

import functools
import json
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from . import kernel
from .cache import Cache, digest
from .config import ARCHIVE, Profile

HOST_DEBUG = Path("/usr/lib/debug")  # where the distribution's -dbg (-dbgsym) packages install a kernel's debug symbols


@dataclass(frozen=True)
class KernelTree:
    """A kernel ready to boot and to build modules against."""

    image: Path              # a bzImage or an ELF vmlinux
    release: str             # what `uname -r` says in the guest
    modules_dir: Path        # its /lib/modules/RELEASE: the modules, modules.dep, and `build`
    build_dir: Path | None   # the kbuild tree: `make -C build_dir M=DIR modules` builds against it
    config: Path | None      # the kernel's .config
    source: str              # where it came from, as the profile says it ("apt:linux-image-...", a path)
    vmlinux: Path | None = None        # an ELF vmlinux with DWARF line info, to decode reports; None if none is known
    debug_modules: Path | None = None  # a tree of its modules as .ko with line info (found by name), or None


_resolved: dict[tuple, KernelTree] = {}
_locks: dict[tuple, threading.Lock] = {}
_locks_lock = threading.Lock()


def resolve(profile: Profile, cache: Cache, report: Callable[[str], None] = lambda line: None) -> KernelTree:
    """The profile's kernel: its file, or fetched or built now (the first time in this process;
    archive.py and kbuild.py cache on disk and lock, so processes share the work)."""
    key = (profile, cache.root)
    with _locks_lock:
        lock = _locks.setdefault(key, threading.Lock())
    with lock:
        if key not in _resolved:
            started = time.monotonic()
            _resolved[key] = _fetch_or_build(profile, cache, report)
            if not profile.kernel_at_hand:
                _remember(cache, origin(profile), _resolved[key], time.monotonic() - started)
        return _resolved[key]


def origin(profile: Profile) -> str:
    """Where the profile's kernel comes from, as `provium kernel list` shows it."""
    if profile.kernel_source:
        return f"{profile.kernel_source} + {','.join(Path(f).name for f in profile.kconfig)}"
    return f"{ARCHIVE}{profile.kernel_package}" if profile.kernel_package else str(profile.kernel)


def known_release(profile: Profile, cache: Cache) -> str | None:
    """The release the profile boots when it is known without fetching or building: its kernel file's,
    or the cached kernel's; None before the first fetch or build."""
    if profile.kernel_at_hand:
        return kernel.image_release(profile.kernel)
    return next((record["release"] for record in cached(cache) if record["source"] == origin(profile)), None)


def _remember(cache, source, tree, seconds):
    """Note a fetched or built kernel in the cache's index, for `provium kernel list`, with the time
    its fetch or build took (kept from the first time this image was seen)."""
    size = tree.image.stat().st_size + sum(p.stat().st_size for p in tree.modules_dir.rglob("*") if p.is_file())
    record = {"source": source, "release": tree.release, "image": str(tree.image.relative_to(cache.root)),
              "bytes": size, "time": time.time(), "seconds": seconds}
    index = cache.root / "kernel-index"
    index.mkdir(parents=True, exist_ok=True)
    try:
        known = json.loads((index / f"{digest(source)}.json").read_text())
        if known.get("image") == record["image"]:
            record["seconds"] = known.get("seconds", seconds)
    except (OSError, ValueError):
        pass
    tmp = index / f".{os.getpid()}.tmp"
    tmp.write_text(json.dumps(record))
    os.replace(tmp, index / f"{digest(source)}.json")


def cached(cache: Cache) -> list[dict]:
    """The fetched and built kernels the cache holds: source, release, image, bytes, time, seconds."""
    records = []
    for path in sorted((cache.root / "kernel-index").glob("*.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # a damaged note hides one row, nothing else
        if (cache.root / record.get("image", "")).is_file():
            records.append(record)
    return records


def _fetch_or_build(profile, cache, report):
    if profile.kernel_package:
        from . import archive  # only a profile that needs it pays for the import
        return archive.fetch(profile.kernel_package, cache, report, profile.debug_symbols)
    if profile.kernel_source:
        from . import kbuild
        return kbuild.build(profile.kernel_source, profile.kconfig, cache, report, profile.root)
    release = kernel.image_release(profile.kernel)
    modules_dir = profile.modules_dir or Path("/lib/modules") / release
    build_dir = modules_dir / "build"
    configs = [profile.kernel.parent / f"config-{release}", build_dir / ".config"]  # /boot's, a tree's
    debug_modules = HOST_DEBUG / "lib/modules" / release
    vmlinuxes = [HOST_DEBUG / "boot" / f"vmlinux-{release}", debug_modules / "vmlinux"]  # where distributions put it
    return KernelTree(image=profile.kernel, release=release, modules_dir=modules_dir,
                      build_dir=build_dir if build_dir.is_dir() else None,
                      config=next((c for c in configs if c.is_file()), None), source=str(profile.kernel),
                      vmlinux=next((v for v in vmlinuxes if v.is_file()), None),
                      debug_modules=debug_modules if debug_modules.is_dir() else None)


def missing_options(tree: KernelTree, wanted: Iterable[str]) -> list[str]:
    """The options of `wanted` ("SECURITY_LANDLOCK" or "CONFIG_...") the kernel has off; built in or a
    module counts as on. None is missing when the kernel's config is unknown."""
    if tree.config is None:
        return []
    enabled = _enabled_options(tree.config)
    names = (option if option.startswith("CONFIG_") else f"CONFIG_{option}" for option in wanted)
    return [name for name in names if name not in enabled]


@functools.lru_cache(maxsize=None)
def _enabled_options(config: Path) -> frozenset[str]:
    lines = config.read_text(errors="replace").splitlines()
    return frozenset(name for name, _, value in (line.partition("=") for line in lines)
                     if name.startswith("CONFIG_") and value and value != "n")
