"""A debug kernel's findings fail tests: examples/kmod's broken ioctls on the kernel built with `debug`.

The profile kmod-debug builds Debian's 6.12 source with provium's minimal and
debug fragments (KASAN, lockdep, kmemleak, UBSAN, ...): minutes, once per cache.
"""

import json
import re

import pytest
from test_examples import EXAMPLES, clean_copy, count_tests

pytestmark = pytest.mark.kbuild

BROKEN = """\
local pkv = require("lib.pkv")

-- a fresh clone of the fixture with the module reloaded to answer its broken ioctls
local function debug_fd()
  local vm = provium.fixture("kmod")
  assert(vm:exec("rmmod provium_kv && insmod /root/provium_kv.ko debug_ioctls=1").ok)
  vm:wait_until(function() return vm:exec("test -c /dev/provium_kv").ok end, {timeout = 5, interval = 0.05})
  return vm, pkv.open(vm)
end

test("use after free", function()
  local vm, fd = debug_fd()
  vm:ioctl(fd, pkv.DEBUG_UAF)
end)
test("lock order", function()
  local vm, fd = debug_fd()
  vm:ioctl(fd, pkv.DEBUG_ABBA)
end)
test("warn", function()
  local vm, fd = debug_fd()
  vm:ioctl(fd, pkv.DEBUG_WARN, 1)
end)
test("sleep in atomic", function()
  local vm, fd = debug_fd()
  vm:ioctl(fd, pkv.DEBUG_SLEEP)
end)
test("refcount", function()
  local vm, fd = debug_fd()
  vm:ioctl(fd, pkv.DEBUG_REFCOUNT)
end)
test("index", function()
  local vm, fd = debug_fd()
  vm:ioctl(fd, pkv.DEBUG_INDEX, 4)
end)
test("list", function()
  local vm, fd = debug_fd()
  vm:ioctl(fd, pkv.DEBUG_LIST)
end)
test("leak checked", {leak_check = true}, function()
  local vm, fd = debug_fd()
  assert_eq(0, vm:ioctl(fd, pkv.DEBUG_LEAK, 200))
end)
test("leak unchecked", function()
  local vm, fd = debug_fd()
  assert_eq(0, vm:ioctl(fd, pkv.DEBUG_LEAK, 200))
end)
test("no leak checked", {leak_check = true}, function()
  local vm, fd = debug_fd()
  assert_eq(0, vm:ioctl(fd, pkv.DEBUG_INDEX, 3))
end)
local shared, shared_fd = debug_fd()
test("fails after leaking", {leak_check = true}, function()
  shared:ioctl(shared_fd, pkv.DEBUG_LEAK, 100)
  error("a failure of its own")
end)
test("the next test on that VM is not charged with it", function()
  assert_eq(0, shared:ioctl(shared_fd, pkv.DEBUG_INDEX, 0))
end)
"""

# test name -> (the line it fails at, the finding's name, the function a decoded frame names)
EXPECTED = {
    "use after free": (13, r"KASAN: slab-use-after-free in pkv_debug_use_after_free\+0x[0-9a-f]+/0x[0-9a-f]+ "
                           r"\[provium_kv\]", "pkv_debug_use_after_free"),
    "lock order": (17, r"lockdep report: possible circular locking dependency detected", "pkv_debug_lock_order"),
    "warn": (21, r"kernel warning: WARNING: CPU: \d+ PID: \d+ at \S*provium_kv\.c:\d+ pkv_\w+", "pkv_\\w*ioctl"),
    "sleep in atomic": (25, r"BUG: sleeping function called from invalid context at \S+",
                        "pkv_debug_sleep_in_atomic"),
    "refcount": (29, r"data corruption: refcount_t: addition on 0; use-after-free\.", "pkv_debug_refcount"),
    "index": (33, r"UBSAN: array-index-out-of-bounds in \S*provium_kv\.c:\d+:\d+", "pkv_debug_index"),
    "list": (37, r"data corruption: list_add corruption\. next->prev should be prev", "pkv_debug_list"),
}


def test_each_broken_ioctl_fails_its_test_named_with_a_decoded_line_of_the_module(suite):
    copy = clean_copy(suite, "kmod")
    (copy / "tests" / "broken.lua").write_text(BROKEN)
    artifacts = suite.root / "artifacts"
    result = suite.run("run", "--matrix", "kmod=kmod-debug", "--artifacts", str(artifacts), "tests/broken.lua",
                       cwd=copy, timeout=2400)
    out = result.stdout
    assert result.returncode == 1, out + result.stderr
    assert out.splitlines()[-1] == "3 passed, 9 failed, 0 skipped", out
    blocks = [b.strip() for b in re.split(r"\n(?=  \S|\S)", out)]  # a test's line and its indented message
    for name, (line, title, function) in EXPECTED.items():
        block = next(b for b in blocks if re.match(rf"(FAIL|ERROR) {re.escape(name)} \(", b))
        assert re.search(rf"tests/broken\.lua:{line}: VM 'kmod': {title}", block), block
        # the module's function decoded to its line in provium_kv.c: its frame, or the frame of what it inlined
        assert re.search(rf"{function}(?:\+0x[0-9a-f]+/0x[0-9a-f]+ \[provium_kv\])? \(\S*provium_kv\.c:\d+", block), block
    leak = next(b for b in blocks if b.startswith("ERROR leak checked ("))
    assert re.search(r"memory leak: unreferenced object 0x[0-9a-f]+ of 256 bytes allocated by "
                     r"pkv_debug_leak\+0x[0-9a-f]+/0x[0-9a-f]+ \[provium_kv\]", leak), leak
    assert re.search(r"inlined by pkv_debug_leak \(\S*provium_kv\.c:\d+", leak), leak
    assert re.search(r"ok +leak unchecked", out) and re.search(r"ok +no leak checked", out)
    assert re.search(r"ok +the next test on that VM is not charged with it", out), out
    # --artifacts keeps each report as printed and decoded
    kept = json.loads(next(artifacts.glob("*use_after_free*/failure.json")).read_text())
    finding = kept["findings"][0]
    assert finding["kind"] == "KASAN report"
    raw = (next(artifacts.glob("*use_after_free*")) / finding["report"]).read_text()
    decoded = (next(artifacts.glob("*use_after_free*")) / finding["decoded"]).read_text()
    assert "BUG: KASAN: slab-use-after-free" in raw and "provium_kv.c:" not in raw.split("\n", 2)[1]
    assert re.search(r"provium_kv\.c:\d+", decoded)
    assert suite.qemu_pids() == []


def test_the_module_suite_passes_on_the_stock_and_the_debug_kernel_with_no_finding(suite):
    kmod = EXAMPLES / "kmod"
    result = suite.run("run", "--matrix", "kmod=kmod,kmod-debug", str(kmod / "tests"), timeout=2400)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[-1] == f"{2 * count_tests(kmod)} passed, 0 failed, 0 skipped"
    assert "examples/kmod/tests/ioctls.lua[kmod-debug]" in result.stdout
    assert suite.qemu_pids() == []


def test_an_archive_kernel_with_its_debug_symbols_decodes_kernel_and_module_frames(suite):
    """Debian's 6.12 cloud kernel and its -dbg package (318 MB, fetched once per cache)."""
    copy = clean_copy(suite, "kmod")
    with (copy / "provium.toml").open("a") as toml:
        toml.write('\n[profiles.kmod-dbgsym]\nkernel = "apt:linux-image-6.12-cloud-amd64"\ndebug_symbols = true\n'
                   'memory = "256M"\nbuild = "make -s -C module"\n')
    (copy / "tests" / "warn.lua").write_text(BROKEN.split('\ntest("use after free"')[0] + """
test("warn", function()
  local vm, fd = debug_fd()
  vm:ioctl(fd, pkv.DEBUG_WARN, 1)
end)
""")
    result = suite.run("run", "--matrix", "kmod=kmod-dbgsym", "tests/warn.lua", cwd=copy, timeout=1200)
    out = result.stdout
    assert result.returncode == 1, out + result.stderr
    assert re.search(r"pkv_ioctl\+0x[0-9a-f]+/0x[0-9a-f]+ \[provium_kv\] \(\S*provium_kv\.c:\d+", out), out
    assert re.search(r"__x64_sys_ioctl\+0x[0-9a-f]+/0x[0-9a-f]+ \(fs/ioctl\.c:\d+", out), out
    assert suite.qemu_pids() == []


def test_a_module_built_in_the_suite_decodes_in_fixture_clones_and_pcall_does_not_hide_a_finding(suite):
    """The .ko is built in place (M=$PWD/mod), not in the profile's build directory: a fixture clone
    finds it through the fixture's inputs. A finding the test's own code catches still fails it."""
    copy = clean_copy(suite, "kmod")
    mod = copy / "mod"
    mod.mkdir()
    for name in ("provium_kv.c", "provium_kv.h"):
        (mod / name).write_text((copy / "module" / name).read_text())
    (mod / "Makefile").write_text("obj-m := provium_kv.o\n")
    with (copy / "provium.toml").open("a") as toml:
        toml.write('\n[profiles.in-place]\nkernel_source = "apt:linux-source-6.12"\nkconfig = ["minimal", "debug"]\n'
                   'memory = "512M"\nbuild = "make -s -C $PROVIUM_MODULES_DIR/build M=$PWD/mod modules"\n')
    fixture = copy / "fixtures" / "kmod.lua"
    fixture.write_text(fixture.read_text().replace('provium.path("@build", "kmod") .. "/provium_kv.ko"',
                                                   'provium.path("@root") .. "/mod/provium_kv.ko"'))
    (copy / "tests" / "caught.lua").write_text(BROKEN.split('\ntest("use after free"')[0] + """
test("a caught use after free", function()
  local vm, fd = debug_fd()
  local ok, err = pcall(vm.ioctl, vm, fd, pkv.DEBUG_UAF)
  assert(not ok and tostring(err):find("KASAN"), "the op raised it")
end)
""")
    result = suite.run("run", "--matrix", "kmod=in-place", "tests/caught.lua", cwd=copy, timeout=1800)
    out = result.stdout
    assert result.returncode == 1, out + result.stderr
    assert re.search(r"ERROR a caught use after free \(\d+\.\d+ s\)\n.*VM 'kmod': KASAN: slab-use-after-free in "
                     r"pkv_debug_use_after_free", out), out
    assert re.search(r"pkv_debug_use_after_free\+0x[0-9a-f]+/0x[0-9a-f]+ \[provium_kv\] \(\S*/mod/provium_kv\.c:\d+",
                     out), out
    assert suite.qemu_pids() == []
