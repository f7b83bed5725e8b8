"""Boot images for a profile: the PVH vmlinux and the initramfs, both cached.

Each artifact is keyed by the content of everything it is made from (kernel
image, agent, busybox, modules, the format version), so changing any input
rebuilds it and nothing else does. The initramfs ships the modules loaded at
boot and the profile's available_modules, each with its dependencies.
"""

import functools
from dataclasses import dataclass
from pathlib import Path

from . import agent_build, initramfs, kernel, kernels
from .cache import Cache
from .config import Profile
from .errors import ConfigError, ImageError
from .protocol import PROTO_VERSION

# Bump when the layout of the initramfs changes in a way its inputs do not show.
_INITRAMFS_FORMAT = 3
# Modules the guest needs to reach the agent port and attach disks (microvm: virtio-mmio).
BASE_MODULES = ("virtio_mmio", "virtio_console", "virtio_blk")


@dataclass(frozen=True)
class BootImages:
    vmlinux: Path
    initrd: Path
    release: str


def _vmlinux(image_path, cache):
    """The ELF vmlinux in a kernel image (cached by the image's content) and its release."""
    key = cache.digest(image_path)

    def extract(out):
        try:
            image = image_path.read_bytes()
        except OSError as exc:
            raise ImageError(f"cannot read kernel {image_path}: {exc.strerror}") from None
        try:
            out.write_bytes(kernel.extract_vmlinux(image))
        except ImageError as exc:
            raise ImageError(f"{image_path}: {exc}") from None

    vmlinux = cache.get_or_build("vmlinux", key, "vmlinux", extract)
    release_file = cache.get_or_build(
        "vmlinux", key, "release", lambda out: out.write_text(kernel.release_of(vmlinux.read_bytes())))
    return vmlinux, release_file.read_text()


def _tree(directory):
    """The parsed tree, once per process while its modules.dep stays the same (a build step may rewrite it)."""
    dep = directory / "modules.dep"
    return _parsed_tree(directory, dep.stat().st_mtime_ns if dep.exists() else None)


@functools.lru_cache(maxsize=None)
def _parsed_tree(directory, _stamp):
    return kernel.ModuleTree(directory)


def _resolve(tree, profile, key):
    """The load order of the profile's `key`; ConfigError naming provium.toml, the profile and the key."""
    try:
        return tree.load_order(getattr(profile, key))
    except ImageError as exc:
        raise ConfigError(f"{profile.where(key)}: {exc}") from None


def _module_lists(profile, directory):
    """The modules to ship: loaded at boot, and only available (both load orders, relative paths), and the host
    files (str) a guest tree of them is made from."""
    if not directory.is_dir():
        for key in ("modules", "available_modules"):
            if getattr(profile, key):
                raise ConfigError(f"{profile.where(key)}: "
                                  f"{directory} does not exist (set modules_dir)")
        return [], [], []
    tree = _tree(directory)
    boot = list(dict.fromkeys([*tree.load_order(BASE_MODULES), *_resolve(tree, profile, "modules")]))
    loaded = set(boot)
    available = [rel for rel in _resolve(tree, profile, "available_modules") if rel not in loaded]
    return boot, available, [str(path) for path in tree.sources([*boot, *available])]


def _modules(profile, directory, cache):
    """_module_lists(), remembered (Cache.remember) while the directory, its modules.dep and kernel.py's source
    stay the same: parsing modules.dep takes ~40 ms."""
    if not directory.is_dir():
        return _module_lists(profile, directory)
    dep = directory / "modules.dep"
    question = "\0".join(["modules", cache.digest(Path(kernel.__file__)), *BASE_MODULES, "", *profile.modules, "",
                          *profile.available_modules])
    boot, available, sources = cache.remember(question, [directory, dep] if dep.exists() else [directory],
                                              lambda: _module_lists(profile, directory))
    return boot, available, [Path(source) for source in sources]


def check(profile: Profile, cache: Cache) -> None:
    """Raise ConfigError when a kernel at hand is not a kernel, or a module name of the profile is not in
    its tree: cheap (the release is in the image's header), so every such profile is checked before a
    run starts. A kernel provium fetches or builds is checked when it is prepared, on first use."""
    if not profile.kernel_at_hand:
        return
    try:
        tree = kernels.resolve(profile, cache)
    except ImageError as exc:
        raise ConfigError(f"{profile.where('kernel')}: {exc}") from None
    check_modules(profile, tree.modules_dir, cache)


def check_modules(profile: Profile, modules_dir: Path, cache: Cache) -> None:
    """Raise ConfigError when a name in the profile's modules or available_modules is not in the tree."""
    if profile.modules or profile.available_modules:
        _modules(profile, modules_dir, cache)


@functools.lru_cache(maxsize=None)
def prepare(profile, cache):
    """The vmlinux, initramfs and kernel release that boot `profile`.

    Once per profile and process; the files' hashes and the module lists are remembered across runs
    (Cache.remember), which leaves a few stat calls.
    """
    kernel_tree = kernels.resolve(profile, cache)
    vmlinux, release = _vmlinux(kernel_tree.image, cache)
    agent = agent_build.build(cache)
    busybox = initramfs.find_busybox()
    boot, available, sources = _modules(profile, kernel_tree.modules_dir, cache)
    key = cache.digest(_INITRAMFS_FORMAT, PROTO_VERSION, release, agent, busybox, *boot, "", *available, *sources)

    def build(out):
        # Without a tree, an empty modules.dep: modprobe then says what it does not find.
        modules = _tree(kernel_tree.modules_dir).guest_tree(
            boot, available, compress=kernel.ALL_MODULES in profile.available_modules) \
            if kernel_tree.modules_dir.is_dir() else {"modules.dep": b""}
        load = [kernel.boot_path(rel) for rel in boot]
        out.write_bytes(initramfs.build(agent, busybox, release, modules, load))

    initrd = cache.get_or_build("initramfs", key, "initramfs.cpio", build)
    if profile.initrd:
        own = initrd
        initrd = cache.get_or_build(
            "initramfs", cache.digest(profile.initrd, own), "combined.cpio",
            lambda out: out.write_bytes(profile.initrd.read_bytes() + own.read_bytes()))
    return BootImages(vmlinux=vmlinux, initrd=initrd, release=release)
