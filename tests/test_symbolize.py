"""provium.symbolize against real objects: a tiny "vmlinux" (ET_EXEC, built from a fake kernel
tree) and "fake-mod.ko" (a relocatable object, as a module is), both compiled with gcc -g -O2.

Offsets come from the objects themselves (readelf for symbols, objdump for call instructions),
and the expected lines from markers in the C source.
"""

import random
import re
import subprocess
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

from provium.symbolize import Symbols, decode

FAKE_C = textwrap.dedent("""\
    volatile int sink;

    __attribute__((noinline)) int leaf(int x)
    {
    \tsink = x; /* MARK:leaf */
    \treturn sink * 2;
    }

    static inline __attribute__((always_inline)) int helper(int x)
    {
    \treturn leaf(x * 3) + 1; /* MARK:helper */
    }

    __attribute__((noinline, section(".text.unlikely"))) int cold_path(int x)
    {
    \tleaf(x); /* MARK:cold_call */
    \tsink = 7;
    \treturn sink;
    }

    int outer(int x) /* MARK:outer_start */
    {
    \tint y = helper(x); /* MARK:inlined */
    \tleaf(y); /* MARK:call */
    \tsink = 5;
    \treturn cold_path(y) + sink;
    } /* MARK:outer_end */
    """)

# The kernel's start_kernel is in init/main.c: symbolize finds the tree's root by it. This
# leaf is a second symbol named leaf, of another size.
MAIN_C = textwrap.dedent("""\
    extern volatile int sink;
    int outer(int x);

    static __attribute__((noinline)) int leaf(int x)
    {
    \tsink = x + 1; /* MARK:main_leaf */
    \tsink = sink * 5 + x;
    \tsink = sink ^ (x << 3);
    \treturn sink - 3;
    }

    __attribute__((noinline)) void start_kernel(void)
    {
    \tsink = outer(leaf(sink));
    }

    void entry(void)
    {
    \tstart_kernel();
    \tfor (;;)
    \t\t;
    }
    """)


def line_of(source, mark):
    return next(n for n, text in enumerate(source.splitlines(), 1) if f"MARK:{mark} " in text)


FAKE = {mark: line_of(FAKE_C, mark) for mark in re.findall(r"MARK:(\w+)", FAKE_C)}


@dataclass
class Built:
    vmlinux: Path
    module: Path
    modules: Path   # the directory to search for it
    module_source: Path


def function_symbols(obj):
    """name -> [(value, size)] of FUNC symbols, from readelf."""
    found = {}
    out = subprocess.run(["readelf", "--wide", "--symbols", obj], capture_output=True, text=True, check=True).stdout
    for value, size, name in re.findall(r"^\s*\d+:\s+([0-9a-f]+)\s+(\d+)\s+FUNC\s.*\s(\S+)$", out, re.M):
        found.setdefault(name, []).append((int(value, 16), int(size)))
    return found


def symbol(obj, name):
    (found,) = function_symbols(obj)[name]
    return found


def calls(obj, name):
    """(call offset, return offset) of each call instruction in the function, in order, from objdump."""
    value, size = symbol(obj, name)
    out = subprocess.run(["objdump", "-d", "--no-show-raw-insn", f"--disassemble={name}", obj],
                         capture_output=True, text=True, check=True).stdout
    addresses = [(int(a, 16), insn) for a, insn in re.findall(r"^\s*([0-9a-f]+):\s+(\S+)", out, re.M)]
    return [(address - value, following - value)
            for (address, insn), (following, _) in zip(addresses, addresses[1:]) if insn.startswith("call")]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("symbolize")
    tree = root / "linux"
    (tree / "init").mkdir(parents=True)
    (tree / "kernel").mkdir()
    (tree / "init/main.c").write_text(MAIN_C)
    (tree / "kernel/fake.c").write_text(FAKE_C)
    (root / "boot").mkdir()
    vmlinux = root / "boot/vmlinux"
    subprocess.run(["gcc", "-g", "-O2", "-no-pie", "-nostdlib", "-Wl,-e,entry", "-o", vmlinux,
                    tree / "init/main.c", tree / "kernel/fake.c"], check=True)
    source = root / "src/fake.c"
    source.parent.mkdir()
    source.write_text(FAKE_C)
    modules = root / "modules"
    (modules / "a").mkdir(parents=True)
    (modules / "a/fake_mod.ko.xz").write_bytes(b"\xfd7zXZ\x00 not readable by addr2line")
    (modules / "extra").mkdir()
    module = modules / "extra/fake-mod.ko"
    subprocess.run(["gcc", "-g", "-O2", "-c", "-o", module, source], check=True)
    return Built(vmlinux, module, modules, source)


def frame(obj, name, offset, size=None, suffix=""):
    return f"{name}+{offset:#x}/{(size or symbol(obj, name)[1]):#x}{suffix}"


def test_the_objects_are_what_the_tests_assume(built):
    assert b"\x01" == built.module.read_bytes()[16:17]   # e_type ET_REL
    assert b"\x02" == built.vmlinux.read_bytes()[16:17]  # e_type ET_EXEC
    sections = subprocess.run(["readelf", "--wide", "--symbols", built.module], capture_output=True, text=True).stdout
    assert re.search(r"FUNC\s+GLOBAL\s+DEFAULT\s+(\d+) cold_path$", sections, re.M)[1] != \
        re.search(r"FUNC\s+GLOBAL\s+DEFAULT\s+(\d+) outer$", sections, re.M)[1]
    assert len(calls(built.vmlinux, "outer")) == 3
    assert len(function_symbols(built.vmlinux)["leaf"]) == 2


def test_module_frame_found_under_module_dirs_with_a_dash_in_the_file_name(built):
    _, (_, ret2), _ = calls(built.module, "outer")
    report = (f"Call Trace:\n <TASK>\n {frame(built.module, 'outer', ret2, suffix=' [fake_mod]')}\n"
              f" {frame(built.vmlinux, 'entry', 4)}\n </TASK>")
    out = decode(report, Symbols(None, (built.modules,)))
    lines = out.splitlines()
    where = frame(built.module, "outer", ret2, suffix=" [fake_mod]")
    assert lines[2] == f" {where} ({built.module_source}:{FAKE['call']})"
    assert lines[3:] == report.splitlines()[3:]  # no vmlinux: kernel frames as they are


def test_module_function_in_its_own_section(built):
    ((_, ret),) = calls(built.module, "cold_path")
    line = f" {frame(built.module, 'cold_path', ret, suffix=' [fake_mod]')}"
    assert decode(line, Symbols(None, (built.modules,))) == f"{line} ({built.module_source}:{FAKE['cold_call']})"


def test_kernel_frame_with_inlined_callers_paths_relative_to_the_tree(built):
    (_, ret), _, _ = calls(built.vmlinux, "outer")
    line = f"[   12.345678]  {frame(built.vmlinux, 'outer', ret)}"
    out = decode(line, Symbols(built.vmlinux))
    assert out == (f"{line} (kernel/fake.c:{FAKE['helper']} helper)\n"
                   f"                  inlined by outer (kernel/fake.c:{FAKE['inlined']})")


def test_module_frame_with_inlined_callers(built):
    (_, ret), _, _ = calls(built.module, "outer")
    line = f" ? {frame(built.module, 'outer', ret, suffix=' [fake_mod]')}"
    out = decode(line, Symbols(built.vmlinux, (built.modules,)))
    assert out == (f"{line} ({built.module_source}:{FAKE['helper']} helper)\n"
                   f"     inlined by outer ({built.module_source}:{FAKE['inlined']})")


@pytest.mark.parametrize("obj", ["vmlinux", "module"])
def test_rip_and_warning_are_looked_up_as_they_are_other_frames_one_byte_before(built, obj):
    path = getattr(built, obj)
    _, (_, ret), _ = calls(path, "outer")  # the return address of the call on line MARK:call
    module = " [fake_mod]" if obj == "module" else ""
    where = frame(path, "outer", ret, suffix=module)
    report = "\n".join([f"RIP: 0010:{where}",
                        f"WARNING: CPU: 0 PID: 93 at fake.c:{FAKE['call']} {where}",
                        f" {where}",
                        f"BUG: KASAN: slab-use-after-free in {where}",
                        f"#1 (pkv_b){{+.+.}}-{{3:3}}, at: {where}",
                        f"       {where}"])
    out = decode(report, Symbols(built.vmlinux, (built.modules,))).splitlines()
    decoded = [int(re.search(r"\(\S*fake\.c:(\d+)\)", line)[1]) for line in out]
    assert len(out) == 6
    rip, warning, *returns = decoded
    assert returns == [FAKE["call"]] * 4
    assert rip == warning and FAKE["call"] < rip < FAKE["outer_end"]


def test_duplicate_symbol_names_are_told_apart_by_size(built):
    sizes = sorted(size for _, size in function_symbols(built.vmlinux)["leaf"])  # fake.c's leaf is the smaller
    assert len(set(sizes)) == 2
    out = decode("\n".join(f" leaf+0x1/{size:#x}" for size in sizes), Symbols(built.vmlinux)).splitlines()
    fake, main = (re.fullmatch(rf" leaf\+0x1/{size:#x} \((\S+):(\d+)\)", line).groups()
                  for size, line in zip(sizes, out))
    assert fake[0] == "kernel/fake.c" and FAKE["leaf"] - 2 <= int(fake[1]) <= FAKE["leaf"]
    assert main[0] == "init/main.c" and line_of(MAIN_C, "main_leaf") - 2 <= int(main[1]) <= line_of(MAIN_C, "main_leaf")


def test_a_size_with_the_padding_up_to_the_next_function_matches_as_kallsyms_prints_it(built):
    symbols = function_symbols(built.vmlinux)
    starts = sorted(v for found in symbols.values() for v, _ in found)
    name, (value, size) = next((name, found[0]) for name, found in symbols.items()
                               if len(found) == 1 and found[0][0] < starts[-1])
    following = min(start for start in starts if start > value)
    for printed in (size, following - value):
        assert re.search(r"\(\S+\.c:\d+", decode(f" {name}+0x1/{printed:#x}", Symbols(built.vmlinux)))
    past = f" {name}+0x1/{following - value + 1:#x}"
    assert decode(past, Symbols(built.vmlinux)) == past, "past the next function: another symbol's size"


def test_frames_it_cannot_place_stay_as_they_are(built, tmp_path):
    _, (_, ret), _ = calls(built.vmlinux, "outer")
    size = symbol(built.vmlinux, "outer")[1]
    report = "\n".join([f" outer+{ret:#x}/{size - 1:#x}",                 # smaller than the symbol
                        f" outer+{size + 4:#x}/{size:#x}",                 # offset past the end
                        " outer+0x3/0x0",
                        " no_such_function+0x3/0x10",
                        " outer+0x3/0x25 [no_such_module]",
                        " entry+0x3/0x10 [fake_mod]",                      # no entry in the module
                        "Modules linked in: fake_mod [last unloaded: fake_mod]",
                        ""])
    assert decode(report, Symbols(built.vmlinux, (built.modules,))) == report
    garbage = tmp_path / "vmlinux"
    garbage.write_bytes(b"\x7fELF" + bytes(range(256)) * 4)
    (tmp_path / "mods").mkdir()
    (tmp_path / "mods/fake_mod.ko").write_text("not an ELF object\n")
    frames = f" {frame(built.vmlinux, 'outer', ret)}\n {frame(built.module, 'outer', ret, suffix=' [fake_mod]')}"
    for symbols in (Symbols(garbage, (tmp_path / "mods",)), Symbols(tmp_path / "missing", (tmp_path / "none",)),
                    Symbols(None)):
        assert decode(frames, symbols) == frames


def test_an_object_without_line_tables_leaves_its_frames(built, tmp_path):
    stripped = tmp_path / "vmlinux"
    subprocess.run(["objcopy", "--strip-debug", built.vmlinux, stripped], check=True)
    _, (_, ret), _ = calls(built.vmlinux, "outer")
    line = f" {frame(built.vmlinux, 'outer', ret)}"
    assert decode(line, Symbols(stripped)) == line


def test_without_binutils_nothing_is_decoded(built, monkeypatch, tmp_path):
    _, (_, ret), _ = calls(built.vmlinux, "outer")
    line = f" {frame(built.vmlinux, 'outer', ret)}"
    monkeypatch.setenv("PATH", str(tmp_path))
    assert decode(line, Symbols(built.vmlinux, (built.modules,))) == line


def test_garbage_does_not_raise(built):
    rng = random.Random(7)
    pieces = [frame(built.vmlinux, "outer", 5), "outer+0x/0x", "outer+0xffffffffffffffffffffffffffff/0x25",
              "[fake_mod", " [fake_mod]", " [fake_mod 0123abcd]", "RIP: 0010:", "\x00", "\udcff", "\ufffd", "\r",
              "\t", "+0x1/0x2", " ? ", "\n", "ą", "x" * 300, "leaf", ".cold", "$"]
    symbols = Symbols(built.vmlinux, (built.modules,))
    for _ in range(200):
        report = "".join(rng.choice(pieces) for _ in range(rng.randrange(12)))
        decorations = r" \([^\n()]*\.c:\d+(?: \w+)?\)|\n[ \t]*inlined by [^\n]*"
        assert re.sub(decorations, "", decode(report, symbols)) == report
    raw = bytes(rng.randrange(256) for _ in range(4000)).decode("utf-8", "surrogateescape")
    assert decode(raw, symbols) == raw


def test_one_addr2line_per_object_and_section_and_one_readelf_per_object(built, monkeypatch):
    report = "\n".join(f" {frame(built.vmlinux, name, ret)}" for name in ("outer", "cold_path")
                       for _, ret in calls(built.vmlinux, name))
    report += "\n" + "\n".join(f" {frame(built.module, 'outer', ret, suffix=' [fake_mod]')}"
                               for _, ret in calls(built.module, "outer"))
    report += "\n" + "\n".join(f" {frame(built.module, 'cold_path', ret, suffix=' [fake_mod]')}"
                               for _, ret in calls(built.module, "cold_path"))
    run = subprocess.run
    commands = []

    def counting(args, *rest, **kwargs):
        commands.append([str(arg) for arg in args])
        return run(args, *rest, **kwargs)

    monkeypatch.setattr(subprocess, "run", counting)
    symbols = Symbols(built.vmlinux, (built.modules,))
    first = decode(report, symbols)
    assert first.count("fake.c:") == report.count("\n") + 1 + first.count("inlined by")
    addr2line = sorted((c[c.index("-e") + 1], c[c.index("-j") + 1] if "-j" in c else None)
                       for c in commands if c[0] == "addr2line")
    assert addr2line == [(str(built.vmlinux), None), (str(built.module), ".text"),
                         (str(built.module), ".text.unlikely")]
    commands.clear()
    assert decode(report, symbols) == first
    assert [c[0] for c in commands] == ["addr2line"] * 3  # the symbol tables are cached
