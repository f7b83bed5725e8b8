"""vmlinux extraction from each compression, release parsing, module order, the guest's module tree."""

import gzip
import lzma

import lz4.block
import pytest
import zstandard

from provium import kernel
from provium.errors import ImageError

VMLINUX = b"\x7fELF" + b"\x02\x01\x01" + b"Linux version 6.9.0-test (gcc) #1 SMP" + bytes(range(256)) * 64


def lz4_legacy(data):
    out = bytearray(b"\x02\x21\x4c\x18")
    for i in range(0, len(data), 8 << 20):
        block = lz4.block.compress(data[i:i + (8 << 20)], store_size=False)
        out += len(block).to_bytes(4, "little") + block
    return bytes(out)


@pytest.mark.parametrize("compress", [
    lambda d: lzma.compress(d, format=lzma.FORMAT_XZ),
    lambda d: zstandard.ZstdCompressor().compress(d),
    gzip.compress,
    lz4_legacy,
], ids=["xz", "zstd", "gzip", "lz4"])
def test_extracts_the_payload_from_a_bzimage(compress):
    # Decoy magic bytes before the real payload must not confuse the search.
    image = b"MZ" + b"\x00" * 500 + b"\xfd7zXZ\x00\x1f\x8b\x08 decoy" + compress(VMLINUX) + b"\x00" * 100
    assert kernel.extract_vmlinux(image) == VMLINUX


def test_an_elf_is_returned_as_it_is():
    assert kernel.extract_vmlinux(VMLINUX) == VMLINUX


def test_no_payload_is_an_error():
    with pytest.raises(ImageError, match="no compressed ELF kernel"):
        kernel.extract_vmlinux(b"MZ" + b"\x00" * 1000)


def test_release_comes_from_the_banner():
    assert kernel.release_of(VMLINUX) == "6.9.0-test"


def test_modules_load_dependencies_first_and_skip_builtins(tmp_path):
    (tmp_path / "modules.dep").write_text(
        "kernel/a/virtio_mmio.ko: kernel/a/virtio_ring.ko kernel/a/virtio.ko\n"
        "kernel/a/virtio_ring.ko: kernel/a/virtio.ko\n"
        "kernel/a/virtio.ko:\n"
        "kernel/b/ext4.ko.xz: kernel/b/jbd2.ko.xz\n"
        "kernel/b/jbd2.ko.xz:\n")
    (tmp_path / "modules.builtin").write_text("kernel/c/virtio_console.ko\n")
    tree = kernel.ModuleTree(tmp_path)
    assert tree.load_order(["virtio-mmio", "virtio_console", "ext4"]) == [
        "kernel/a/virtio.ko", "kernel/a/virtio_ring.ko", "kernel/a/virtio_mmio.ko",
        "kernel/b/jbd2.ko.xz", "kernel/b/ext4.ko.xz"]
    (tmp_path / "kernel/b").mkdir(parents=True)
    (tmp_path / "kernel/b/jbd2.ko.xz").write_bytes(lzma.compress(b"module", format=lzma.FORMAT_XZ))
    assert tree.module_bytes("kernel/b/jbd2.ko.xz") == b"module"
    with pytest.raises(ImageError, match="'nope' not found"):
        tree.load_order(["nope"])


@pytest.fixture
def tree(tmp_path):
    """A small module tree: plain, xz- and zstd-compressed modules, lists, a built-in."""
    files = {
        "kernel/v/virtio.ko": b"virtio",
        "kernel/v/virtio_mmio.ko.xz": lzma.compress(b"virtio_mmio", format=lzma.FORMAT_XZ),
        "kernel/m/mc.ko.zst": zstandard.ZstdCompressor().compress(b"mc"),
        "kernel/m/videodev.ko": b"videodev",
        "kernel/n/dummy.ko": b"dummy",
    }
    for relative, data in files.items():
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_bytes(data)
    (tmp_path / "modules.dep").write_text(
        "kernel/v/virtio.ko:\n"
        "kernel/v/virtio_mmio.ko.xz: kernel/v/virtio.ko\n"
        "kernel/m/mc.ko.zst:\n"
        "kernel/m/videodev.ko: kernel/m/mc.ko.zst\n"
        "kernel/n/dummy.ko:\n")
    (tmp_path / "modules.alias").write_text(
        "# Aliases extracted from modules themselves.\n"
        "alias virtio:d00000003v* virtio_mmio\nalias char-major-81-* videodev\nalias rtnl-link-dummy dummy\n")
    (tmp_path / "modules.symbols").write_text(
        "# Aliases for symbols, used by symbol_request().\nalias symbol:video_ioctl2 videodev\n"
        "alias symbol:media_device_init mc\n")
    (tmp_path / "modules.builtin").write_text("kernel/b/unix.ko\n")
    return kernel.ModuleTree(tmp_path)


def test_star_selects_every_module_dependencies_first(tree):
    assert tree.load_order(["*"]) == ["kernel/v/virtio.ko", "kernel/v/virtio_mmio.ko.xz", "kernel/m/mc.ko.zst",
                                      "kernel/m/videodev.ko", "kernel/n/dummy.ko"]
    assert tree.load_order(["unix", "*", "dummy"]) == tree.load_order(["*"])


def test_a_missing_module_is_named_as_written(tree):
    with pytest.raises(ImageError, match=f"kernel module 'no-such' not found in {tree.directory}$"):
        tree.load_order(["dummy", "no-such"])


@pytest.mark.parametrize("relative, boot, available", [
    ("kernel/a/x.ko", "kernel/a/x.ko", "kernel/a/x.ko.xz"),
    ("kernel/a/x.ko.xz", "kernel/a/x.ko", "kernel/a/x.ko.xz"),
    ("kernel/a/x.ko.zst", "kernel/a/x.ko", "kernel/a/x.ko.xz"),
    ("updates/x.y.ko.gz", "updates/x.y.ko", "updates/x.y.ko.xz"),
])
def test_guest_paths(relative, boot, available):
    assert (kernel.boot_path(relative), kernel.available_path(relative)) == (boot, available)


def test_the_guest_tree_lists_exactly_what_it_ships(tree):
    boot = tree.load_order(["virtio_mmio"])
    files = tree.guest_tree(boot, tree.load_order(["videodev"]), compress=True)
    assert files["kernel/v/virtio.ko"] == b"virtio"
    assert files["kernel/v/virtio_mmio.ko"] == b"virtio_mmio", "boot modules are shipped uncompressed"
    assert lzma.decompress(files["kernel/m/mc.ko.xz"]) == b"mc", "available ones xz-compressed"
    assert lzma.decompress(files["kernel/m/videodev.ko.xz"]) == b"videodev"
    assert files["modules.dep"].decode() == (
        "kernel/v/virtio.ko:\n"
        "kernel/v/virtio_mmio.ko: kernel/v/virtio.ko\n"
        "kernel/m/mc.ko.xz:\n"
        "kernel/m/videodev.ko.xz: kernel/m/mc.ko.xz\n")
    assert files["modules.alias"] == b"alias virtio:d00000003v* virtio_mmio\nalias char-major-81-* videodev\n"
    assert files["modules.symbols"] == b"alias symbol:video_ioctl2 videodev\nalias symbol:media_device_init mc\n"
    assert files["modules.builtin"] == b"kernel/b/unix.ko\n"
    assert sorted(files) == sorted(["kernel/v/virtio.ko", "kernel/v/virtio_mmio.ko", "kernel/m/mc.ko.xz",
                                    "kernel/m/videodev.ko.xz", "modules.dep", "modules.alias", "modules.symbols",
                                    "modules.builtin"])


def test_an_xz_module_is_shipped_as_it_is(tree):
    original = (tree.directory / "kernel/v/virtio_mmio.ko.xz").read_bytes()
    assert tree.guest_tree([], tree.load_order(["virtio_mmio"]), compress=True)["kernel/v/virtio_mmio.ko.xz"] == original


def test_named_available_modules_are_shipped_uncompressed(tree):
    """The kernel cannot load an xz module: busybox would try it first, and the log would say
    'Invalid ELF header magic' for every modprobe."""
    files = tree.guest_tree([], tree.load_order(["videodev"]))
    assert (files["kernel/m/mc.ko"], files["kernel/m/videodev.ko"]) == (b"mc", b"videodev")
    assert files["modules.dep"].decode() == "kernel/m/mc.ko:\nkernel/m/videodev.ko: kernel/m/mc.ko\n"


def test_without_alias_lists_the_guest_gets_empty_ones(tree):
    for name in ("modules.alias", "modules.symbols", "modules.builtin"):
        (tree.directory / name).unlink()
    files = kernel.ModuleTree(tree.directory).guest_tree(["kernel/n/dummy.ko"], [])
    assert files == {"kernel/n/dummy.ko": b"dummy", "modules.dep": b"kernel/n/dummy.ko:\n",
                     "modules.alias": b"", "modules.symbols": b"", "modules.builtin": b""}
