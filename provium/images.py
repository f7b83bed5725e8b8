"""Boot images for a profile: the PVH vmlinux and the initramfs, both cached.

Each artifact is keyed by the content of everything it is made from (kernel
image, agent, busybox, modules, the format version), so changing any input
rebuilds it and nothing else does.
"""

import functools
from dataclasses import dataclass
from pathlib import Path

from . import agent_build, initramfs, kernel
from .cache import digest
from .errors import ImageError
from .protocol import PROTO_VERSION

# Bump when the layout of the initramfs changes in a way its inputs do not show.
_INITRAMFS_FORMAT = 1
# Modules the guest needs to reach the agent port and attach disks (microvm: virtio-mmio).
BASE_MODULES = ("virtio_mmio", "virtio_console", "virtio_blk")


@dataclass(frozen=True)
class BootImages:
    vmlinux: Path
    initrd: Path
    release: str


def _vmlinux(profile, cache):
    key = digest(profile.kernel)

    def extract(out):
        try:
            image = profile.kernel.read_bytes()
        except OSError as exc:
            raise ImageError(f"cannot read kernel {profile.kernel}: {exc.strerror}") from None
        try:
            out.write_bytes(kernel.extract_vmlinux(image))
        except ImageError as exc:
            raise ImageError(f"{profile.kernel}: {exc}") from None

    vmlinux = cache.get_or_build("vmlinux", key, "vmlinux", extract)
    release_file = cache.get_or_build(
        "vmlinux", key, "release", lambda out: out.write_text(kernel.release_of(vmlinux.read_bytes())))
    return vmlinux, release_file.read_text()


def modules_dir(profile, release):
    """Where the profile's kernel modules are: its modules_dir, else /lib/modules/RELEASE."""
    return profile.modules_dir or Path("/lib/modules") / release


def _modules(profile, release):
    directory = modules_dir(profile, release)
    if not directory.is_dir():
        if profile.modules:
            raise ImageError(f"profile {profile.name!r}: modules {list(profile.modules)} requested "
                             f"but {directory} does not exist (set modules_dir)")
        return None, []
    tree = kernel.ModuleTree(directory)
    return tree, tree.load_order([*BASE_MODULES, *profile.modules])


@functools.lru_cache(maxsize=None)
def prepare(profile, cache):
    """The vmlinux, initramfs and kernel release that boot `profile`.

    Hashing the inputs costs ~50 ms, so it is done once per profile and process.
    """
    vmlinux, release = _vmlinux(profile, cache)
    agent = agent_build.build(cache)
    busybox = initramfs.find_busybox()
    tree, order = _modules(profile, release)
    module_files = [tree.directory / rel for rel in order]
    key = digest(_INITRAMFS_FORMAT, PROTO_VERSION, release, agent, busybox, *order, *module_files)

    def build(out):
        modules = [(rel, tree.module_bytes(rel)) for rel in order]
        out.write_bytes(initramfs.build(agent, busybox, modules, release))

    initrd = cache.get_or_build("initramfs", key, "initramfs.cpio", build)
    if profile.initrd:
        own = initrd
        initrd = cache.get_or_build(
            "initramfs", digest(profile.initrd, own), "combined.cpio",
            lambda out: out.write_bytes(profile.initrd.read_bytes() + own.read_bytes()))
    return BootImages(vmlinux=vmlinux, initrd=initrd, release=release)
