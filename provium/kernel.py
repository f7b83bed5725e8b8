"""Kernel artifacts: the uncompressed vmlinux for PVH boot, its release, modules.

QEMU boots an ELF vmlinux through its PVH entry point, which under TCG saves
seconds against a bzImage (no real-mode setup, no in-guest decompression).
Distribution kernels ship only the bzImage, so the compressed payload inside it
is found and unpacked here (xz, zstd, gzip or lz4).
"""

import gzip
import lzma
import re
import zlib
from pathlib import Path

import lz4.block
import zstandard

from .errors import ImageError

ELF_MAGIC = b"\x7fELF"
_LZ4_LEGACY_MAGIC = b"\x02\x21\x4c\x18"
_LZ4_LEGACY_BLOCK = 8 * 1024 * 1024


def _xz(data):
    return lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(data)


def _gzip(data):
    return zlib.decompressobj(wbits=31).decompress(data)


def _zstd(data):
    return zstandard.ZstdDecompressor().decompressobj().decompress(data)


def _lz4_legacy(data):
    """The kernel's lz4 format: magic, then blocks of (u32 size, lz4 block)."""
    out, pos = bytearray(), len(_LZ4_LEGACY_MAGIC)
    while pos + 4 <= len(data):
        size = int.from_bytes(data[pos:pos + 4], "little")
        if size == 0 or size == int.from_bytes(_LZ4_LEGACY_MAGIC, "little") or pos + 4 + size > len(data):
            break
        try:
            out += lz4.block.decompress(data[pos + 4:pos + 4 + size], uncompressed_size=_LZ4_LEGACY_BLOCK)
        except lz4.block.LZ4BlockError:
            break
        pos += 4 + size
    return bytes(out)


_CODECS = (
    (b"\xfd7zXZ\x00", _xz),
    (b"\x28\xb5\x2f\xfd", _zstd),
    (b"\x1f\x8b\x08", _gzip),
    (_LZ4_LEGACY_MAGIC, _lz4_legacy),
)


def extract_vmlinux(image):
    """The uncompressed ELF kernel inside `image` (bytes of a bzImage or an ELF)."""
    if image.startswith(ELF_MAGIC):
        return image
    for magic, decompress in _CODECS:
        start = image.find(magic)
        while start != -1:
            try:
                payload = decompress(image[start:])
            except (lzma.LZMAError, zlib.error, zstandard.ZstdError, EOFError, gzip.BadGzipFile):
                payload = b""
            if payload.startswith(ELF_MAGIC):
                return payload
            start = image.find(magic, start + 1)
    raise ImageError("no compressed ELF kernel (xz, zstd, gzip or lz4) found in the kernel image")


def release_of(vmlinux):
    """The kernel release ("6.1.0-56-amd64") from the vmlinux banner."""
    match = re.search(rb"Linux version (\S+) \(", vmlinux)
    if not match:
        raise ImageError("no 'Linux version' banner in the kernel")
    return match.group(1).decode(errors="replace")


def _module_name(path):
    name = Path(path).name
    return name.split(".ko")[0].replace("-", "_")


class ModuleTree:
    """The modules of one kernel release: /lib/modules/VERSION."""

    def __init__(self, directory):
        self.directory = Path(directory)
        self._deps = {}
        self._paths = {}
        dep_file = self.directory / "modules.dep"
        try:
            lines = dep_file.read_text().splitlines()
        except OSError as exc:
            raise ImageError(f"cannot read {dep_file}: {exc.strerror}") from None
        for line in lines:
            module, _, deps = line.partition(":")
            name = _module_name(module)
            self._paths[name] = module
            self._deps[name] = [_module_name(d) for d in deps.split()]
        builtin = self.directory / "modules.builtin"
        self._builtin = {_module_name(line) for line in builtin.read_text().split()} if builtin.exists() else set()

    def load_order(self, names):
        """Relative module paths to load, dependencies first; built-ins skipped."""
        order, seen = [], set()

        def visit(name, wanted_by):
            name = name.replace("-", "_")
            if name in seen or name in self._builtin:
                return
            if name not in self._paths:
                raise ImageError(f"kernel module {name!r}{wanted_by} not found in {self.directory}")
            seen.add(name)
            for dep in reversed(self._deps[name]):
                visit(dep, f" (needed by {name})")
            order.append(self._paths[name])

        for name in names:
            visit(name, "")
        return order

    def module_bytes(self, relative):
        """The uncompressed contents of a module file."""
        data = (self.directory / relative).read_bytes()
        if relative.endswith(".xz"):
            return _xz(data)
        if relative.endswith(".zst"):
            return _zstd(data)
        if relative.endswith(".gz"):
            return gzip.decompress(data)
        return data
