"""The repository is a suite (provium.toml, profiles/, fixtures/, tests/*.lua): its Lua tests exercise the
API against the real guest kernel."""

import re

from conftest import REPO

LUA_TESTS = sorted((REPO / "tests").glob("*.lua"))


def count_lua_tests(files):
    return sum(len(re.findall(r"^test\(", p.read_text(), re.M)) for p in files)


def test_every_lua_test_passes(suite):
    """Run from the repository root, as a developer would: provium run tests/*.lua"""
    expected = count_lua_tests(LUA_TESTS)
    assert expected >= 37, "the 34 tests of tests/lua/ (moved here) and the 3 of tests/fixtures.lua"
    result = suite.run("run", *(str(p.relative_to(REPO)) for p in LUA_TESTS), timeout=600, cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[-1] == f"{expected} passed, 0 failed, 0 skipped"
    assert suite.qemu_pids() == []


def test_boot_files_and_disks(suite):
    (suite.root / "data").mkdir()
    (suite.root / "data" / "tool.sh").write_text("#!/bin/sh\necho tool ran\n")
    (suite.root / "data" / "tool.sh").chmod(0o755)
    (suite.root / "first.img").write_bytes(b"FIRST-DISK" + bytes(1024 * 1024 - 10))
    (suite.root / "second.img").write_bytes(b"SECOND-DISK" + bytes(1024 * 1024 - 11))
    suite.write("boot.lua", """\
        local function copy_to_scratch(name)
          local path = provium.path("@tmp") .. "/" .. name
          local out = io.open(path, "wb")
          out:write(io.open(name, "rb"):read("a"))
          out:close()
          return path
        end
        test("files are copied in with their mode; disks attach in order", function()
          local writable = copy_to_scratch("second.img")
          local vm = provium.create("minimal")
          vm:boot{memory = "256M",
                  files = {["/opt/tools/tool.sh"] = "data/tool.sh"},
                  disks = {{path = "first.img", format = "raw", readonly = true},
                           {writable, "raw", false}}}
          assert_eq("tool ran", vm:exec("/opt/tools/tool.sh").stdout.trim())
          assert_eq("FIRST-DISK", vm:exec("head -c 10 /dev/vda").stdout.value)
          assert_eq("SECOND-DISK", vm:exec("head -c 11 /dev/vdb").stdout.value)
          local w = vm:exec("echo changed | dd of=/dev/vda conv=fsync 2>&1")
          assert(not w.ok, "a write to the read-only disk must fail")
          assert_eq("FIRST-DISK", vm:exec("head -c 10 /dev/vda").stdout.value)
          assert(vm:exec("echo changed | dd of=/dev/vdb conv=fsync").ok)
          vm:shutdown()
          assert_eq("changed\\n", io.open(writable, "rb"):read(8))
        end)
        test("bad boot options are named", function()
          local cases = {
            {{memory = "lots"}, "memory 'lots' is not a size"},
            {{cpus = "2"}, "cpus must be an integer"},
            {{disks = {{path = "missing.img", readonly = true}}}, "disks[1]: file not found"},
            {{disks = {{path = "first.img"}}}, "disks[1] (writable: the guest writes to it) 'first.img' is outside the scratch directory"},
            {{disks = {{path = "/etc/hostname", readonly = true}}}, "disks[1] '/etc/hostname' is outside the suite root"},
            {{files = {["/x"] = "/etc/passwd"}}, "is outside the suite root or the scratch directory"},
            {{disks = {{path = "first.img", format = "vmdk", readonly = true}}}, "format 'vmdk' is not one of raw, qcow2"},
            {{files = {["/x"] = "missing.txt"}}, "cannot read"},
            {{files = {["relative"] = "data/tool.sh"}}, "must be absolute"},
            {{color = "blue"}, "unknown option 'color'"},
          }
          for _, case in ipairs(cases) do
            local ok, err = pcall(provium.create("minimal").boot, provium.create("minimal"), case[1])
            assert(not ok)
            assert_contains(err, case[2])
          end
        end)
        """)
    result = suite.run("run", "boot.lua")
    assert result.returncode == 0, result.stdout + result.stderr
    assert (suite.root / "first.img").read_bytes()[:10] == b"FIRST-DISK"
    assert (suite.root / "second.img").read_bytes()[:11] == b"SECOND-DISK", "only the scratch copy was written"
