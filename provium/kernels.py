"""Kernels a profile boots: the host's, one from the distribution's archive, or one built from source.

A profile names where its kernel comes from; getting it (downloading packages,
building a tree) is expensive, so it happens on first use and is cached:
provium/archive.py fetches `apt:` packages, provium/kbuild.py builds
`kernel_source` trees. Either gives a KernelTree: what to boot, its modules and
the kbuild tree out-of-tree modules are built against.
"""

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class KernelTree:
    """A kernel ready to boot and to build modules against."""

    image: Path              # a bzImage or an ELF vmlinux
    release: str             # what `uname -r` says in the guest
    modules_dir: Path        # its /lib/modules/RELEASE: the modules, modules.dep, and `build`
    build_dir: Path | None   # the kbuild tree: `make -C build_dir M=DIR modules` builds against it
    config: Path | None      # the kernel's .config
    source: str              # where it came from, as the profile says it ("apt:linux-image-...", a path)
