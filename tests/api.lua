-- The rest of the VM API: json, dmesg, mount_vfs, wait_until, pack/unpack.
local vm = provium.create("minimal")
vm:boot{memory = "256M"}

test("vm:json decodes stdout into tables with 1-based arrays", function()
  local t = vm:json([[echo '{"name": "x", "list": [10, 20, {"deep": true}], "n": 1.5}']])
  assert_eq("x", t.name)
  assert_eq(20, t.list[2])
  assert_eq(true, t.list[3].deep)
  assert_eq(1.5, t.n)
  local ok, err = pcall(vm.json, vm, "echo not-json")
  assert(not ok)
  assert_contains(err, "printed invalid JSON")
  assert_contains(err, "not-json")
  ok, err = pcall(vm.json, vm, "echo oops >&2; exit 2")
  assert_contains(err, "failed (exit 2)")
  assert_contains(err, "oops")
end)

test("provium.errno: a guest op's error carries the guest's errno, other errors none", function()
  local ok, err = pcall(vm.read_file, vm, "/no/such/file")
  assert(not ok)
  assert_eq("string", type(err))
  assert_contains(err, "api.lua:")
  assert_eq(2, provium.errno(err)) -- ENOENT
  ok, err = pcall(vm.write_file, vm, "/", "x")
  assert(not ok)
  assert_eq(21, provium.errno(err)) -- EISDIR
  ok, err = pcall(vm.read_file, vm, 42)
  assert_contains(err, "vm:read_file: argument 1 (path) must be a string, got number")
  assert_eq(nil, provium.errno(err))
  assert_eq(nil, provium.errno("some other error"))
end)

test("vm:dmesg returns the kernel log, filtered with grep semantics", function()
  assert_contains(vm:dmesg(), "Linux version")
  local lines = vm:dmesg("^.*Linux version [0-9]")
  assert_contains(lines, "Linux version")
  assert(not lines:find("Command line"), "only matching lines")
  assert_eq("", vm:dmesg("no such message anywhere"))
  vm:exec("echo provium-marker > /dev/kmsg")
  assert_contains(vm:dmesg("provium-marker"), "provium-marker")
end)

test("vm:mount_vfs mounts securityfs and is idempotent", function()
  vm:mount_vfs()
  vm:mount_vfs()
  local mounts = vm:read_file("/proc/mounts")
  for _, fs in ipairs{"proc /proc", "sysfs /sys", "securityfs /sys/kernel/security", "devtmpfs /dev"} do
    assert_contains(mounts, fs)
  end
  local _, count = mounts:gsub(" /sys/kernel/security ", "")
  assert_eq(1, count)
end)

test("vm:wait_until polls and names the condition on timeout", function()
  vm:exec("(sleep 0.3; touch /tmp/ready) >/dev/null 2>&1 &")
  assert(vm:wait_until(function() return vm:exec("test -f /tmp/ready").ok end,
    {timeout = 10, interval = 0.05, desc = "ready file"}))
  local ok, err = pcall(vm.wait_until, vm, function() return false end,
    {timeout = 0.2, interval = 0.05, desc = "the impossible"})
  assert(not ok)
  assert_contains(err, "the impossible not met within 0.2 s")
end)

test("provium.pack and unpack round-trip every type little-endian", function()
  local data = provium.pack("u8 u16 i16 u32 i32 u64 i64", 255, 65535, -2, 4294967295, -3, -1, -4)
  assert_eq(1 + 2 + 2 + 4 + 4 + 8 + 8, #data)
  assert_eq("\1\0\0\0", provium.pack("u32", 1))
  local a, b, c, d, e, f, g = provium.unpack("u8 u16 i16 u32 i32 u64 i64", data)
  assert_eq({255, 65535, -2, 4294967295, -3, -1, -4}, {a, b, c, d, e, f, g})
  local errors = {
    {function() provium.pack("u9", 1) end, "unknown type 'u9'"},
    {function() provium.pack("u8 u8", 1) end, "has 2 types but 1 values were given"},
    {function() provium.pack("u8", 256) end, "value 1"},
    {function() provium.pack("u8", 1.5) end, "value 1 must be an integer"},
    {function() provium.unpack("u64", "abc") end, "needs 8 bytes, data has 3"},
  }
  for _, case in ipairs(errors) do
    local ok, err = pcall(case[1])
    assert(not ok)
    assert_contains(err, case[2])
  end
end)

test("commands, paths and patterns are bytes: 0xFF reaches the guest unchanged", function()
  local high = "\xff\xfe\x80"
  assert_eq(" ff fe 80\n", vm:exec("printf '%s' '" .. high .. "' | od -An -tx1").stdout.value)
  local path = "/tmp/name-" .. high
  vm:write_file(path, "bytes in the name")
  assert_eq("bytes in the name", vm:read_file(path))
  assert_eq("bytes in the name", vm:exec("cat '" .. path .. "'").stdout.value, "the name holds the very bytes")
  assert_contains(vm:exec("find /tmp -name 'name-*' | od -An -tx1").stdout.value, "ff fe 80")
  local job = vm:background("printf '%s' '" .. high .. "'")
  assert_eq(high, vm:job_wait(job).stdout.value)
  assert_eq({"json"}, vm:json("echo '[\"json\"]' # " .. high))
  vm:exec("echo 'marker-" .. high .. "' > /dev/kmsg")
  assert_contains(vm:dmesg("marker-" .. high), "marker-" .. high)
end)
