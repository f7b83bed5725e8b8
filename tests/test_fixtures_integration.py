"""Fixtures: built once, snapshotted, resumed as independent clones; rebuilt when inputs change."""

import json
import re
import shutil
import signal
import time
import uuid

import pytest

from provium.cache import default_root
from provium.config import newest_host_kernel


@pytest.fixture(autouse=True)
def remove_new_entries(tmp_path):
    """Each test's fixtures are unique to it: drop the cache entries it made (~100 MB each), and only
    those: the entries of the fixtures its suite defines, never a build in progress (another provium
    process may share the cache)."""
    root = default_root() / "fixtures"
    before = set(root.glob("*/*"))
    yield
    names = {path.stem for path in tmp_path.rglob("fixtures/*.lua")}
    for path in set(root.glob("*/*")) - before:
        if path.parent.name in names and not path.name.startswith(".build-"):
            shutil.rmtree(path, ignore_errors=True)


def unique(text):
    """Fixture source made unique to this test run, so its cache key is new."""
    return f"-- {uuid.uuid4()}\n{text}"


def entries(name, cache=None):
    """Paths and creation times of the complete cache entries (KEY/VARIANT) of fixture `name`."""
    base = (cache or default_root()) / "fixtures" / name
    return {(str(p.parent.relative_to(base)), json.loads(p.read_text())["created"])
            for p in base.glob("*/*/manifest.json")}


BASE = """\
local vm = provium.create("minimal")
vm:boot{memory = "256M"}
vm:write_file("/tmp/prepared", "by the fixture")
vm:exec("cat /proc/sys/kernel/random/boot_id > /tmp/boot_id")
vm:background("sleep 1000")
return vm
"""


def copy_host_module(suite, name):
    """A module of the guest's kernel (the built-in profile's) copied into the suite; its file name."""
    _, modules = newest_host_kernel()
    found = next(modules.rglob(f"{name}.ko"))
    shutil.copy(found, suite.root / f"{name}.ko")
    return f"{name}.ko"


def test_state_survives_and_clones_are_independent(suite):
    copy_host_module(suite, "dummy")
    suite.write("fixtures/state_base.lua", unique(BASE.replace('vm:boot{memory = "256M"}', """\
vm:boot{memory = "256M", files = {["/tmp/dummy.ko"] = "../dummy.ko"}}
assert(vm:exec("insmod /tmp/dummy.ko").ok)""")))
    suite.write("fixtures/state_derived.lua", unique("""\
        local vm = provium.fixture("state_base")
        vm:write_file("/tmp/derived", "on top")
        """))
    suite.write("t.lua", """\
        test("state is there after resume", function()
          local vm = provium.fixture("state_base")
          assert_eq("by the fixture", vm:read_file("/tmp/prepared"))
          assert(vm:exec("ps | grep -q '[s]leep 1000'").ok, "the background process survives")
          assert_contains(vm:read_file("/proc/modules"), "dummy ")
          assert(vm:exec("ip link add d0 type dummy").ok, "the loaded module works")
          local now = tonumber(vm:exec("date +%s").stdout.trim())
          assert(math.abs(now - os.time()) <= 2, "the clock is set from the host")
        end)
        test("two resumes in one test are independent", function()
          local a, b = provium.fixture("state_base"), provium.fixture("state_base")
          a:write_file("/tmp/prepared", "changed by a")
          assert_eq("by the fixture", b:read_file("/tmp/prepared"))
          assert(a:exec("true").ok and b:syscall(39) > 0)
          local w = b:spawn()
          assert_eq("by the fixture", w:read_file("/tmp/prepared"))
        end)
        test("what one test changed, the next does not see", function()
          local vm = provium.fixture("state_base")
          assert_eq("by the fixture", vm:read_file("/tmp/prepared"))
        end)
        test("a fixture built on another fixture", function()
          local vm = provium.fixture("state_derived")
          assert_eq("on top", vm:read_file("/tmp/derived"))
          assert_eq("by the fixture", vm:read_file("/tmp/prepared"))
        end)
        """)
    result = suite.run("run", "t.lua")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[-1] == "4 passed, 0 failed, 0 skipped"
    assert suite.qemu_pids() == []


def test_a_fixture_with_disks(suite):
    (suite.root / "fixtures").mkdir()
    (suite.root / "fixtures" / "data.img").write_bytes(bytes(4 * 1024 * 1024))
    suite.write("fixtures/with_disk.lua", unique("""\
        local vm = provium.create("minimal")
        vm:boot{memory = "256M", disks = {{path = "data.img", format = "raw"}}}
        assert(vm:exec("printf fixture-data | dd of=/dev/vda conv=fsync 2>/dev/null").ok)
        return vm
        """))
    suite.write("t.lua", """\
        test("disk content comes back, each clone writes its own overlay", function()
          local a = provium.fixture("with_disk")
          assert_eq("fixture-data", a:exec("head -c 12 /dev/vda").stdout.value)
          assert(a:exec("printf clone-a!!!!! | dd of=/dev/vda conv=fsync 2>/dev/null").ok)
          local b = provium.fixture("with_disk")
          assert_eq("fixture-data", b:exec("head -c 12 /dev/vda").stdout.value)
          assert_eq("clone-a!!!!!", a:exec("head -c 12 /dev/vda").stdout.value)
        end)
        """)
    result = suite.run("run", "t.lua")
    assert result.returncode == 0, result.stdout + result.stderr
    assert (suite.root / "fixtures" / "data.img").read_bytes() == bytes(4 * 1024 * 1024), "the image is never written"


def test_rebuilt_when_source_or_profile_changes_and_only_then(suite):
    source = unique(BASE)
    suite.write("fixtures/rebuild.lua", source)
    suite.write("t.lua", 'test("x", function() assert(provium.fixture("rebuild"):exec("true").ok) end)\n')
    before = entries("rebuild")
    assert suite.run("run", "t.lua").returncode == 0
    first = entries("rebuild")
    assert len(first - before) == 1
    assert suite.run("run", "t.lua").returncode == 0
    assert entries("rebuild") == first, "unchanged inputs: no rebuild"
    suite.write("fixtures/rebuild.lua", source + "-- changed\n")
    assert suite.run("run", "t.lua").returncode == 0
    after_source = entries("rebuild")
    assert len(after_source - first) == 1, "a changed source rebuilds"
    suite.write("provium.toml", '[profiles.minimal]\ncmdline = "loglevel=4"\n')
    assert suite.run("run", "t.lua").returncode == 0
    after_toml = entries("rebuild")
    assert len(after_toml - after_source) == 1, "a changed profile rebuilds"
    suite.write("profiles/big.yaml", "memory: 1G\n")
    assert suite.run("run", "t.lua").returncode == 0
    suite.write("profiles/big.yaml", "memory: 2G\n")
    assert suite.run("run", "t.lua").returncode == 0
    assert len(entries("rebuild") - after_toml) == 2, "a new or changed profile file rebuilds"


def test_a_corrupt_entry_is_rebuilt(suite):
    suite.write("fixtures/corrupt.lua", unique(BASE))
    suite.write("t.lua", 'test("x", function() assert_eq("by the fixture", provium.fixture("corrupt"):read_file("/tmp/prepared")) end)\n')
    assert suite.run("run", "t.lua").returncode == 0
    entry = next((default_root() / "fixtures" / "corrupt").glob("*/*/state"))
    entry.write_bytes(b"garbage" * 100)
    result = suite.run("run", "t.lua")
    assert result.returncode == 0, result.stdout + result.stderr


def test_errors_name_the_fixture_script(suite):
    suite.write("fixtures/broken.lua", 'local vm = provium.create("minimal")\nerror("cannot prepare")\n')
    suite.write("t.lua", """\
        test("one", function() provium.fixture("broken") end)
        test("two", function() provium.fixture("broken") end)
        test("missing", function() provium.fixture("absent") end)
        """)
    result = suite.run("run", "t.lua")
    out = result.stdout
    assert result.returncode == 1
    assert out.count("fixture 'broken' failed to build: fixtures/broken.lua:2: cannot prepare") == 2
    assert "fixture 'absent' not found: no file" in out and "fixtures/absent.lua" in out


def test_two_processes_on_a_cold_cache_build_once(suite):
    suite.write("fixtures/shared.lua", unique(BASE))
    suite.write("t.lua", 'test("x", function() print(provium.fixture("shared"):read_file("/tmp/boot_id")); assert(false) end)\n')
    before = entries("shared")
    first, second = suite.popen("run", "t.lua"), suite.popen("run", "t.lua")
    outs = [p.communicate(timeout=300)[0] for p in (first, second)]
    boot_ids = [line.strip() for out in outs for line in out.splitlines() if len(line.strip()) == 36]
    assert len(boot_ids) == 2 and boot_ids[0] == boot_ids[1], outs
    assert len(entries("shared") - before) == 1


def test_a_build_killed_midway_leaves_nothing_trusted(suite):
    suite.write("fixtures/slow.lua", unique("""\
        local vm = provium.create("minimal")
        vm:boot{memory = "256M"}
        vm:write_file("/tmp/prepared", "complete")
        if os.getenv("SLOW_FIXTURE") then vm:exec("sleep 60") end
        return vm
        """))
    suite.write("t.lua", 'test("x", function() assert_eq("complete", provium.fixture("slow"):read_file("/tmp/prepared")) end)\n')
    before = entries("slow")
    slow = suite.popen("run", "t.lua", env={"SLOW_FIXTURE": "1"})
    builds = default_root() / "fixtures" / "slow"
    deadline = time.monotonic() + 60
    while not list(builds.glob(".build-*/vm*/ram")) and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(3)  # booted, and sleeping in the fixture script
    slow.send_signal(signal.SIGKILL)
    slow.wait()
    assert list(builds.glob(".build-*")), "the build was under way"
    assert entries("slow") == before
    result = suite.run("run", "t.lua")
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(entries("slow") - before) == 1
    assert not list(builds.glob(".build-*")), "the dead build was swept"
    assert suite.qemu_pids() == []


CHECKOUT_FIXTURE = """\
local vm = provium.create("minimal")
vm:boot{memory = "256M", files = {["/root/payload"] = "../build/payload.txt"},
        disks = {{path = "../disk.img", format = "raw"}}}
return vm
"""
CHECKOUT_TEST = """\
test("the fixture holds this checkout's files", function()
  local vm = provium.fixture("checkout")
  print("payload=" .. vm:read_file("/root/payload") .. " disk=" .. vm:exec("head -c 6 /dev/vda").stdout.value)
end)
"""


def checkout(path, payload, disk):
    """A copy of one suite: the same Lua files, its own build output and disk image."""
    (path / "fixtures").mkdir(parents=True)
    (path / "build").mkdir()
    (path / "provium.toml").write_text("# a checkout of one suite\n")
    (path / "fixtures" / "checkout.lua").write_text(CHECKOUT_FIXTURE)
    (path / "t.lua").write_text(CHECKOUT_TEST)
    (path / "build" / "payload.txt").write_text(payload)
    (path / "disk.img").write_bytes(disk.encode() + bytes(1024 * 1024 - len(disk)))
    return path


def seen(suite, path, cache):
    """What the checkout's fixture clone holds, as its test printed it."""
    events = suite.root / "events.json"
    result = suite.run("run", "t.lua", "--json", str(events), cwd=path, env={"XDG_CACHE_HOME": str(cache)})
    assert result.returncode == 0, result.stdout + result.stderr
    end, = (e for e in map(json.loads, events.read_text().splitlines()) if e["event"] == "test_end")
    return end["output"].strip()


def test_two_checkouts_with_different_files_never_share_a_snapshot(suite):
    """Identical Lua, different build output and disk: each checkout boots its own, and both stay cached."""
    cache = suite.root / "cache"
    one = checkout(suite.root / "one", "first checkout", "disk-1")
    two = checkout(suite.root / "two", "second checkout", "disk-2")
    assert seen(suite, one, cache) == "payload=first checkout disk=disk-1"
    assert seen(suite, two, cache) == "payload=second checkout disk=disk-2"
    built = entries("checkout", cache / "provium")
    assert len(built) == 2 and len({path.split("/")[0] for path, _ in built}) == 1, "one key, two variants"
    assert seen(suite, one, cache) == "payload=first checkout disk=disk-1"
    assert seen(suite, two, cache) == "payload=second checkout disk=disk-2"
    assert entries("checkout", cache / "provium") == built, "alternating between the checkouts rebuilds nothing"
    (two / "build" / "payload.txt").write_text("first checkout")
    (two / "disk.img").write_bytes((one / "disk.img").read_bytes())
    assert seen(suite, two, cache) == "payload=first checkout disk=disk-1"
    assert entries("checkout", cache / "provium") == built, "the same content is the same snapshot, wherever it lives"


def test_a_cache_moved_with_its_suite_still_hits(suite):
    cache = suite.root / "cache"
    original = checkout(suite.root / "original", "moved along", "disk-m")
    assert seen(suite, original, cache) == "payload=moved along disk=disk-m"
    built = entries("checkout", cache / "provium")
    moved, moved_cache = suite.root / "elsewhere" / "suite", suite.root / "elsewhere" / "cache"
    moved.parent.mkdir()
    original.rename(moved)
    cache.rename(moved_cache)
    assert seen(suite, moved, moved_cache) == "payload=moved along disk=disk-m"
    assert entries("checkout", moved_cache / "provium") == built, "no rebuild after the move"
    assert suite.qemu_pids() == []


def module_with_a_dependency():
    """A module of the guest's kernel that needs another module (not loaded at boot): (path, its name)."""
    _, modules = newest_host_kernel()
    for line in (modules / "modules.dep").read_text().splitlines():
        module, _, deps = line.partition(":")
        if len(deps.split()) == 1 and "virtio" not in deps and module.endswith(".ko"):
            return modules / module, module.rsplit("/", 1)[1]
    pytest.skip("the guest kernel has no uncompressed module with exactly one dependency")


def test_a_fixture_that_fails_to_build_says_why_from_the_kernel_log(suite):
    path, name = module_with_a_dependency()
    shutil.copy(path, suite.root / name)
    suite.write("fixtures/needs_dep.lua", unique(f"""\
        local vm = provium.create("minimal")
        vm:boot{{memory = "256M", files = {{["/root/{name}"] = "../{name}"}}}}
        local loaded = vm:exec("insmod /root/{name}")
        assert(loaded.ok, "insmod failed: " .. loaded.stderr.value)
        return vm
        """))
    suite.write("t.lua", 'test("x", function() provium.fixture("needs_dep") end)\n')
    result = suite.run("run", "t.lua")
    assert result.returncode == 1
    assert "fixture 'needs_dep' failed to build: fixtures/needs_dep.lua:5: insmod failed" in result.stdout
    assert "--- kernel log of VM 'minimal' (last 20 lines) ---" in result.stdout
    assert re.search(rf"{name.split('.')[0].replace('-', '_')}: Unknown symbol \w+", result.stdout), result.stdout
