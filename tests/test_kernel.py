"""vmlinux extraction from each compression, release parsing, module order."""

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
