"""The cpio writer and the archive's layout, checked by an independent reader (busybox cpio)."""

import shutil
import subprocess
from pathlib import Path

import pytest

from provium.initramfs import CpioWriter, build, is_static_elf

busybox = shutil.which("busybox")


@pytest.mark.skipif(busybox is None, reason="busybox is not installed")
def test_archive_lists_and_extracts_with_busybox_cpio(tmp_path):
    cpio = CpioWriter()
    cpio.file("etc/provium/modules", b"/lib/a.ko\n")
    cpio.file("init", b"\x7fELF\x00binary\xff", 0o755)
    cpio.symlink("bin/sh", "/bin/busybox")
    cpio.char_device("dev/console", 5, 1)
    archive = bytes(cpio)
    assert len(archive) % 512 == 0
    listing = subprocess.run([busybox, "cpio", "-t", "-v"], input=archive, capture_output=True, check=True).stdout.decode()
    lines = {line.split()[-1] if "->" not in line else line.split()[-3]: line.split()[0] for line in listing.splitlines()}
    assert lines == {"etc": "drwxr-xr-x", "etc/provium": "drwxr-xr-x", "etc/provium/modules": "-rw-r--r--",
                     "init": "-rwxr-xr-x", "bin": "drwxr-xr-x", "bin/sh": "lrwxrwxrwx",
                     "dev": "drwxr-xr-x", "dev/console": "crw-------"}
    extract = tmp_path / "root"
    extract.mkdir()
    regular = CpioWriter()
    regular.file("etc/provium/modules", b"/lib/a.ko\n")
    regular.file("init", b"\x7fELF\x00binary\xff", 0o755)
    subprocess.run([busybox, "cpio", "-i", "-d"], input=bytes(regular), cwd=extract, check=True, capture_output=True)
    assert (extract / "init").read_bytes() == b"\x7fELF\x00binary\xff"
    assert (extract / "etc/provium/modules").read_text() == "/lib/a.ko\n"


def test_static_elf_detection():
    assert not is_static_elf(b"#!/bin/sh\n")
    assert not is_static_elf(open("/bin/ls", "rb").read())
    if busybox:
        assert is_static_elf(open(shutil.which("busybox"), "rb").read())


@pytest.mark.skipif(busybox is None, reason="busybox is not installed")
def test_the_module_tree_and_the_load_list(tmp_path):
    agent = tmp_path / "agent"
    agent.write_bytes(b"\x7fELF agent")
    modules = {"kernel/v/virtio.ko": b"virtio", "kernel/n/dummy.ko.xz": b"xz", "modules.dep": b"deps\n"}
    archive = build(agent, Path(shutil.which("busybox")).resolve(), "6.9.0-test", modules, ["kernel/v/virtio.ko"])
    root = tmp_path / "root"
    root.mkdir()
    subprocess.run([busybox, "cpio", "-i", "-d"], input=archive, cwd=root, check=True, capture_output=True)
    tree = root / "lib/modules/6.9.0-test"
    assert {str(p.relative_to(tree)): p.read_bytes() for p in tree.rglob("*") if p.is_file()} == modules
    assert (root / "etc/provium/modules").read_text() == "/lib/modules/6.9.0-test/kernel/v/virtio.ko\n"
    assert (root / "init").read_bytes() == b"\x7fELF agent"
    assert (root / "sbin/modprobe").readlink() == Path("/bin/busybox")
