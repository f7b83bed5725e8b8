"""The guest's initramfs: a newc cpio archive written in Python.

It holds /init (the agent), a static busybox with its applet links, a module
tree in /lib/modules/RELEASE (modules and the lists modprobe reads) and
/etc/provium/modules (what PID 1 loads at boot, in order).
Writing the archive here needs no root (device nodes are just headers) and no
cpio binary.
"""

import shutil
import stat
import struct
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from .errors import ImageError

_TRAILER = "TRAILER!!!"
_ELF_PT_INTERP = 3


class CpioWriter:
    """Accumulates newc entries; bytes() gives the finished archive."""

    def __init__(self):
        self._parts = []
        self._ino = 1
        self._dirs = set()

    def _entry(self, name, mode, data=b"", rdev=(0, 0)):
        encoded = name.encode() + b"\0"
        fields = (self._ino, mode, 0, 0, 2 if stat.S_ISDIR(mode) else 1, 0, len(data),
                  0, 0, rdev[0], rdev[1], len(encoded), 0)
        self._ino += 1
        header = b"070701" + b"".join(b"%08X" % f for f in fields)
        self._parts += [header, encoded, b"\0" * (-(len(header) + len(encoded)) % 4),
                        data, b"\0" * (-len(data) % 4)]

    def directory(self, name):
        """Add `name` and its missing parents as 0755 directories."""
        parts = Path(name).parts
        for i in range(1, len(parts) + 1):
            path = "/".join(parts[:i])
            if path not in self._dirs:
                self._dirs.add(path)
                self._entry(path, stat.S_IFDIR | 0o755)

    def _parents(self, name):
        parent = str(Path(name).parent)
        if parent != ".":
            self.directory(parent)

    def file(self, name, data, mode=0o644):
        self._parents(name)
        self._entry(name, stat.S_IFREG | mode, data)

    def symlink(self, name, target):
        self._parents(name)
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def char_device(self, name, major, minor, mode=0o600):
        self._parents(name)
        self._entry(name, stat.S_IFCHR | mode, rdev=(major, minor))

    def __bytes__(self):
        self._entry(_TRAILER, 0)
        archive = b"".join(self._parts)
        return archive + b"\0" * (-len(archive) % 512)


def find_busybox():
    """Path of a statically linked busybox; ImageError with the fix otherwise."""
    path = shutil.which("busybox")
    if path is None:
        raise ImageError("busybox not found (install it: apt-get install busybox-static)")
    path = Path(path).resolve()
    if not is_static_elf(path.read_bytes()):
        raise ImageError(f"{path} is dynamically linked (install busybox-static)")
    return path


def is_static_elf(data):
    """True when `data` is a 64-bit ELF without a program interpreter."""
    if data[:4] != b"\x7fELF" or data[4] != 2:
        return False
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    return all(struct.unpack_from("<I", data, phoff + i * phentsize)[0] != _ELF_PT_INTERP
               for i in range(phnum))


def busybox_applets(busybox):
    """Guest paths of busybox's applets ("usr/bin/awk", ...), /init excluded."""
    out = subprocess.run([str(busybox), "--list-full"], capture_output=True, text=True, check=True).stdout
    return [line for line in out.split() if line not in ("linuxrc", "sbin/init")]


def build(agent: Path, busybox: Path, release: str, modules: Mapping[str, bytes], load: Sequence[str]) -> bytes:
    """The archive bytes.

    agent, busybox: host paths of static binaries. modules: the guest's
    /lib/modules/RELEASE as {path relative to it: contents}. load: paths
    (relative to it too) that PID 1 loads at boot, in order.
    """
    cpio = CpioWriter()
    for directory in ("dev", "proc", "sys", "tmp", "run", "root", "etc/provium",
                      "bin", "sbin", "usr/bin", "usr/sbin"):
        cpio.directory(directory)
    cpio.char_device("dev/console", 5, 1)
    cpio.file("init", agent.read_bytes(), 0o755)
    cpio.file("bin/busybox", busybox.read_bytes(), 0o755)
    for applet in busybox_applets(busybox):
        if applet != "bin/busybox":
            cpio.symlink(applet, "/bin/busybox")
    tree = f"lib/modules/{release}"
    cpio.directory(tree)
    for relative, data in modules.items():
        cpio.file(f"{tree}/{relative}", data)
    cpio.file("etc/provium/modules", "".join(f"/{tree}/{p}\n" for p in load).encode())
    return bytes(cpio)
