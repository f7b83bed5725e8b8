"""Guest ops end to end through Lua: binary safety, size, exit codes, errors."""

import re

OPS = """\
local vm = provium.create("minimal")
vm:boot{memory = "256M"}

test("stdout is binary safe", function()
  local r = vm:exec("printf 'a\\\\0b\\\\0c'; printf '\\\\377' >&2")
  assert_eq(5, #r.stdout.value)
  assert_eq("a\\0b\\0c", r.stdout.value)
  assert_eq("\\255", r.stderr.value)
end)

test("2 MB of output arrive intact", function()
  local r = vm:exec("yes 0123456789abcde | head -c 2000000")
  assert_eq(0, r.exit_code)
  assert_eq(2000000, #r.stdout.value)
  assert(r.stdout.value == string.rep("0123456789abcde\\n", 125000), "output differs")
end)

test("a 1 MiB binary file round-trips", function()
  local parts = {}
  for i = 0, 1048575 do parts[#parts + 1] = string.char((i * 7 + (i >> 8)) % 256) end
  local data = table.concat(parts)
  vm:write_file("/tmp/blob", data)
  assert_eq("1048576", vm:exec("wc -c < /tmp/blob").stdout.trim())
  local back = vm:read_file("/tmp/blob")
  assert_eq(#data, #back)
  assert(back == data, "contents differ")
  vm:write_file("/tmp/blob", "")
  assert_eq("", vm:read_file("/tmp/blob"))
end)

test("an unknown command exits 127", function()
  local r = vm:exec("no-such-command-anywhere")
  assert_eq(127, r.exit_code)
  assert_eq(false, r.ok)
  assert_contains(r.stderr, "not found")
end)

test("a command killed by a signal reports 128+signal", function()
  assert_eq(137, vm:exec("kill -9 $$").exit_code)
end)

test("reading a missing file names the path", function()
  local ok, err = pcall(vm.read_file, vm, "/no/such/file")
  assert_eq(false, ok)
  assert_contains(err, "/no/such/file")
  assert_contains(err, "No such file or directory")
end)

test("a background child holding stdout does not hang exec", function()
  local r = vm:exec("sleep 30 & echo started")
  assert_eq("started", r.stdout.trim())
end)

test("the guest survives a shell that exits PID-wise", function()
  assert_eq(0, vm:exec("exit 0").exit_code)
  assert_eq("1", vm:exec("cat /proc/1/status | grep -c '^Pid:.*1$'").stdout.trim())
end)
"""


def test_guest_ops(suite):
    suite.write("ops.lua", OPS)
    result = suite.run("run", "ops.lua")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[-1] == "8 passed, 0 failed, 0 skipped"


def test_shutdown_and_kill_make_later_calls_fail_clearly(suite):
    suite.write("life.lua", """\
        test("shutdown", function()
          local vm = provium.create("minimal")
          vm:boot{memory = "256M"}
          vm:shutdown()
          local ok, err = pcall(vm.exec, vm, "true")
          assert(not ok)
          assert_contains(err, "is not running (stopped)")
        end)
        test("kill and shutdown_all", function()
          local a, b = provium.create("minimal"), provium.create("minimal")
          a:boot{memory = "256M"}
          a:kill()
          b:boot{memory = "256M"}
          provium.shutdown_all()
          assert(not pcall(b.exec, b, "true"))
          assert(not pcall(a.boot, a))
        end)
        """)
    result = suite.run("run", "life.lua")
    assert result.returncode == 0, result.stdout + result.stderr
    assert suite.qemu_pids() == []


def test_kernel_panics_are_named_with_the_console_tail(suite):
    suite.write("provium.toml", '[profiles.noinit]\ncmdline = "rdinit=/no/such/init"\n')
    suite.write("panic.lua", """\
        test("boot", function()
          provium.create("noinit"):boot{memory = "256M"}
        end)
        test("crash", function()
          local vm = provium.create("minimal")
          vm:boot{memory = "256M"}
          vm:exec("echo 1 > /proc/sys/kernel/sysrq; echo c > /proc/sysrq-trigger")
        end)
        """)
    result = suite.run("run", "panic.lua")
    out = result.stdout
    assert result.returncode == 1
    assert "panic.lua:2: VM 'noinit' did not boot: kernel panic: Kernel panic - not syncing" in out
    assert "panic.lua:7: exec: VM 'minimal' died: kernel panic: Kernel panic - not syncing: sysrq triggered crash" in out
    assert "--- console around the failure ---" in out
    assert re.search(r"--- console around the failure ---\n(.*\n){0,5}.*sysrq triggered crash", out)
    assert out.count("--- console") == 2
    assert out.splitlines()[-1] == "0 passed, 2 failed, 0 skipped"
    assert suite.qemu_pids() == []
