"""The cpio writer, checked by an independent reader (busybox cpio)."""

import shutil
import subprocess

import pytest

from provium.initramfs import CpioWriter, is_static_elf

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
