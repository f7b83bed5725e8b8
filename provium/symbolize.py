"""Kernel reports with their stack frames decoded to source file:line, like the kernel's
scripts/decode_stacktrace.sh, with binutils (readelf, addr2line) and no kernel tree.

A frame is `func+0xOFF/0xSIZE`, followed by `[module]` when it is in a module: the
lines of a call trace (`? ` ones too), `RIP:`, the `in`/`at` of KASAN, WARNING and
lockdep headers. As scripts/faddr2line does, `func` is looked up in the symbol table
of vmlinux, or of the first NAME.ko under `Symbols.module_dirs` (`-` and `_` alike),
taking the symbol whose size is SIZE; its value plus OFF goes to addr2line, relative to
the symbol's section in a .ko (a relocatable object). `RIP:` and `WARNING:` print the
instruction that trapped and are looked up as they are; every other frame is a return
address or a call site, looked up at OFF - 1 so that the line is the call's.

The place is appended to the frame, and when the compiler inlined functions there, the
innermost function is named after its line and each caller it was inlined into follows
on a line of its own, under the frame:

    [   12.345678] RIP: 0010:outer+0x10/0x28 (kernel/fake.c:25)
    [   12.345680]  cold_path+0x5/0x16 [fake_mod] (/src/fake.c:16)
    [   12.345681]  ? outer+0x8/0x28 [fake_mod] (/src/fake.c:11 helper)
                        inlined by outer (/src/fake.c:23)
    [   12.345683]  outer+0x10/0x99

Kernel paths are shown relative to the kernel tree (the directory in which vmlinux's line
table has init/main.c), in module frames too (the kernel's headers a module inlines); a
module's own paths as its line table has them. A frame that
cannot be placed (no object, no debug info, no symbol of that size) stays as it is.

One addr2line runs per object and section in a decode; the symbol tables and the module
directory listings are cached for the life of the process.
"""

import bisect
import functools
import math
import os
import re
import subprocess
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path

_TIMEOUT = 120  # seconds, for one readelf or addr2line over a debug vmlinux (80-600 MB)

_FRAME = re.compile(r"(?<![\w.$])(?P<func>[A-Za-z_.$][\w.$]*)\+0x(?P<offset>[0-9a-f]+)/0x(?P<size>[0-9a-f]+)"
                    r"(?: \[(?P<module>[\w-]+)(?: [0-9a-f]+)?\])?")  # `[module]` or `[module build-id]`
_EXACT = re.compile(r"\b(?:RIP|WARNING): ")
_TYPE = re.compile(r"^\s*Type:\s+(\S+)", re.M)
_SECTION = re.compile(r"^\s*\[\s*(\d+)\]\s+(\S+)", re.M)
_FUNCTION = re.compile(r"^\s*\d+:\s+([0-9a-fA-F]+)\s+(\S+)\s+FUNC\s+\S+\s+\S+\s+(?:\[[^\]\n]*\]\s+)?(\d+)\s+(\S+)",
                       re.M)
_ADDRESS = re.compile(r"0x[0-9a-f]+: (.*)")
_INLINED = " (inlined by) "
_PLACED = re.compile(r".+:[1-9]\d*(?: \(discriminator \d+\))?")
_KERNEL_ROOT_FILE = "init/main.c"  # where start_kernel is


@dataclass(frozen=True)
class Symbols:
    """Where a guest kernel's objects with line tables are."""
    vmlinux: Path | None                 # ELF vmlinux with DWARF line info (kernel frames), or None
    module_dirs: tuple[Path, ...] = ()   # searched, in order and recursively, for NAME.ko (module frames)

    def with_modules(self, files: Iterable[Path]) -> "Symbols":
        """These symbols, with the directories of these .ko files searched too."""
        found = (Path(f).parent for f in files if str(f).endswith(".ko"))
        return replace(self, module_dirs=tuple(dict.fromkeys((*self.module_dirs, *found))))


@dataclass(frozen=True)
class _Object:
    """The function symbols of one ELF object: name -> (value, size, section name, room), where room
    is the distance to the next function of its section (what kallsyms prints as the size)."""
    relocatable: bool
    functions: dict[str, tuple[tuple[int, int, str, float], ...]]


_Place = tuple[str, str]  # (function, "file:line"), as addr2line names them
_Key = tuple[str, str | None, int]  # (object, section for a relocatable object, address)

_module_indexes: dict[Path, dict[str, str]] = {}


def decode(report: str, symbols: Symbols) -> str:
    """The report with every frame it can place followed by its source file:line and inlined callers;
    frames it cannot place (no object, no debug info, size mismatch) stay as they are."""
    lines = report.split("\n")
    rescanned: set[Path] = set()
    frames: list[tuple[int, re.Match[str], list[_Key]]] = []
    batches: dict[tuple[str, str | None], dict[int, None]] = {}
    vmlinux = os.path.abspath(symbols.vmlinux) if symbols.vmlinux else None
    for number, line in enumerate(lines):
        match = _FRAME.search(line)
        if not match:
            continue
        module = match["module"]
        path = _module_path(module.replace("-", "_"), symbols.module_dirs, rescanned) if module else vmlinux
        obj = _object(path) if path else None
        if not path or not obj:
            continue
        keys = _lookups(path, obj, match, exact=bool(_EXACT.search(line, 0, match.start())))
        for _, section, address in keys:
            batches.setdefault((path, section), {})[address] = None
        if keys:
            frames.append((number, match, keys))
    root_key = _root_key(vmlinux, batches)
    places: dict[_Key, tuple[_Place, ...]] = {}
    for (path, section), addresses in batches.items():
        for address, chain in zip(addresses, _addr2line(path, section, list(addresses))):
            places[(path, section, address)] = chain
    root = _kernel_root(places.get(root_key) if root_key else None)
    for number, match, keys in frames:
        chains = {places.get(key) for key in keys}
        chain = chains.pop()
        if chain and not chains:  # placed, and duplicate symbols of that size agree
            # kernel paths relative to the tree, a module's headers from that tree too; its own kept whole
            shorten = functools.partial(_shorten, root) if root or keys[0][0] == vmlinux else str
            lines[number] = _format(lines[number], match, chain, shorten)
    return "\n".join(lines)


def _module_path(name: str, dirs: tuple[Path, ...], rescanned: set[Path]) -> str | None:
    """The first NAME.ko under dirs; a directory whose cached listing lacks it is listed again, once per decode."""
    for directory in dirs:
        index = _module_indexes.get(directory)
        if index is None or (name not in index and directory not in rescanned):
            index = _module_indexes[directory] = _list_modules(directory)
            rescanned.add(directory)
        if name in index:
            return index[name]
    return None


def _list_modules(directory: Path) -> dict[str, str]:
    index: dict[str, str] = {}
    for parent, subdirs, files in os.walk(directory):
        subdirs.sort()
        for file in sorted(files):
            if file.endswith(".ko"):
                index.setdefault(file[:-3].replace("-", "_"), os.path.abspath(os.path.join(parent, file)))
    return index


def _object(path: str) -> _Object | None:
    try:
        stat = os.stat(path)
    except (OSError, ValueError):
        return None
    return _read_object(path, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=8)
def _read_object(path: str, mtime_ns: int, size: int) -> _Object | None:
    """The object's type and function symbols (mtime and size key the cache)."""
    out = _run(["readelf", "--wide", "--file-header", "--section-headers", "--symbols", path])
    kind = _TYPE.search(out) if out else None
    if not out or not kind:
        return None
    sections = {int(number): name for number, name in _SECTION.findall(out)}
    symbols = [(int(value, 16), int(length, 16) if length.startswith("0x") else int(length), sections[int(section)],
                name) for value, length, section, name in _FUNCTION.findall(out) if int(section) in sections]
    starts: dict[str, list[int]] = {}
    for value, _, section, _ in symbols:
        starts.setdefault(section, []).append(value)
    for values in starts.values():
        values.sort()
    functions: dict[str, dict[tuple[int, int, str, float], None]] = {}
    for value, length, section, name in symbols:
        values = starts[section]
        following = bisect.bisect_right(values, value)
        room = values[following] - value if following < len(values) else math.inf
        functions.setdefault(name, {})[(value, length, section, room)] = None
    return _Object(kind[1] == "REL", {name: tuple(found) for name, found in functions.items()})


def _lookups(path: str, obj: _Object, match: re.Match[str], exact: bool) -> list[_Key]:
    """What to ask addr2line for the frame: one key per symbol of its name and size. The kernel prints
    the distance to the next symbol as the size (alignment padding included): any size from the
    symbol's own to that distance matches."""
    offset, size = int(match["offset"], 16), int(match["size"], 16)
    if not exact and offset:
        offset -= 1
    if offset >= size:
        return []
    return [(path, section if obj.relocatable else None, value + offset)
            for value, length, section, room in obj.functions.get(match["func"], ()) if length <= size <= room]


def _root_key(vmlinux: str | None, batches: dict[tuple[str, str | None], dict[int, None]]) -> _Key | None:
    """start_kernel's address, added to vmlinux's batch when it has one, to find the kernel tree's root."""
    obj = _object(vmlinux) if vmlinux and (vmlinux, None) in batches else None
    start = obj.functions.get("start_kernel") if obj else None
    if not vmlinux or not start:
        return None
    batches[(vmlinux, None)][start[0][0]] = None
    return (vmlinux, None, start[0][0])


def _kernel_root(chain: tuple[_Place, ...] | None) -> str:
    """The prefix of vmlinux's source paths that is the kernel tree: where init/main.c is."""
    file = chain[-1][1].rpartition(":")[0] if chain else ""
    return file[:-len(_KERNEL_ROOT_FILE)] if file.endswith("/" + _KERNEL_ROOT_FILE) else ""


def _shorten(root: str, location: str) -> str:
    """A kernel source location relative to the tree: the root, or leading ./ and ../, taken off."""
    if root and location.startswith(root):
        location = location[len(root):]
    return re.sub(r"^(?:\.\.?/)+", "", location)


def _addr2line(path: str, section: str | None, addresses: list[int]) -> list[tuple[_Place, ...]]:
    """Each address's places, innermost first (empty when unknown); [] when addr2line fails."""
    args = ["addr2line", "--addresses", "--functions", "--inlines", "--pretty-print", "-e", path]
    out = _run([*args, *(["-j", section] if section else [])], "".join(f"{a:#x}\n" for a in addresses))
    chains: list[list[_Place]] = []
    for line in (out or "").splitlines():
        first = _ADDRESS.fullmatch(line)
        if first:
            chains.append(_place(first[1]))
        elif line.startswith(_INLINED) and chains:
            chains[-1] += _place(line[len(_INLINED):]) if chains[-1] else []
        else:
            return []
    return [tuple(chain) for chain in chains] if len(chains) == len(addresses) else []


def _place(text: str) -> list[_Place]:
    function, at, location = text.partition(" at ")
    return [(function, location)] if at and _PLACED.fullmatch(location) else []


def _format(line: str, match: re.Match[str], chain: tuple[_Place, ...], shorten: Callable[[str], str]) -> str:
    (function, location), *callers = chain
    named = f" {function}" if callers else ""
    indent = re.sub(r"[^\t]", " ", line[:match.start()])
    return "\n".join([f"{line[:match.end()]} ({shorten(location)}{named}){line[match.end():]}",
                      *(f"{indent}  inlined by {caller} ({shorten(at)})" for caller, at in callers)])


def _run(args: list[str], stdin: str = "") -> str | None:
    """The command's output, whatever its status (they print what they could); None when it could not run."""
    try:
        done = subprocess.run(args, input=stdin.encode(), capture_output=True, timeout=_TIMEOUT,
                              env={**os.environ, "LC_ALL": "C"})
    except (OSError, ValueError, subprocess.SubprocessError):
        return None
    return done.stdout.decode(errors="replace")
