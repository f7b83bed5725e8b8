"""Kernels a profile boots: the host's, one from the distribution's archive, or one built from source.

A profile names where its kernel comes from; getting it (downloading packages,
building a tree) is expensive, so it happens on first use and is cached:
provium/archive.py fetches `apt:` packages, provium/kbuild.py builds
`kernel_source` trees. Either gives a KernelTree: what to boot, its modules and
the kbuild tree out-of-tree modules are built against.
"""

import functools
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from . import kernel
from .cache import Cache
from .config import Profile


@dataclass(frozen=True)
class KernelTree:
    """A kernel ready to boot and to build modules against."""

    image: Path              # a bzImage or an ELF vmlinux
    release: str             # what `uname -r` says in the guest
    modules_dir: Path        # its /lib/modules/RELEASE: the modules, modules.dep, and `build`
    build_dir: Path | None   # the kbuild tree: `make -C build_dir M=DIR modules` builds against it
    config: Path | None      # the kernel's .config
    source: str              # where it came from, as the profile says it ("apt:linux-image-...", a path)


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
            _resolved[key] = _fetch_or_build(profile, cache, report)
        return _resolved[key]


def _fetch_or_build(profile, cache, report):
    if profile.kernel_package:
        from . import archive  # only a profile that needs it pays for the import
        return archive.fetch(profile.kernel_package, cache, report)
    if profile.kernel_source:
        from . import kbuild
        return kbuild.build(profile.kernel_source, profile.kconfig, cache, report, profile.root)
    release = kernel.image_release(profile.kernel)
    modules_dir = profile.modules_dir or Path("/lib/modules") / release
    build_dir = modules_dir / "build"
    configs = [profile.kernel.parent / f"config-{release}", build_dir / ".config"]  # /boot's, a tree's
    return KernelTree(image=profile.kernel, release=release, modules_dir=modules_dir,
                      build_dir=build_dir if build_dir.is_dir() else None,
                      config=next((c for c in configs if c.is_file()), None), source=str(profile.kernel))


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
