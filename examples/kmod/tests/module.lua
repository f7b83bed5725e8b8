-- provium_kv as a module: concurrent users, its log, unloading and reloading.
local pkv = require("lib.pkv")

test("two workers using the device at once leave it consistent", function()
  local vm = provium.fixture("kmod")
  local a, b = vm:spawn(), vm:spawn()
  local loop = "i=0; while [ $i -lt 300 ]; do echo %s-$i > /dev/provium_kv; cat /dev/provium_kv > /dev/null; i=$((i+1)); done"
  local ja, jb = a:background(loop:format("a")), b:background(loop:format("b"))
  local ra, rb = a:job_wait(ja, 120), b:job_wait(jb, 120)
  assert_eq(0, ra.exit_code, ra.stderr.value)
  assert_eq(0, rb.exit_code, rb.stderr.value)
  local last = vm:read_file(pkv.DEVICE)
  assert(last == "a-299\n" or last == "b-299\n", "the last write won whole: " .. last)
  -- ioctls from both workers at once: each sets its own keys
  local fa, fb = pkv.open(a), pkv.open(b)
  for key = 0, 7 do
    assert_eq(0, a:ioctl(fa, pkv.SET, pkv.entry(key, key)))
    assert_eq(0, b:ioctl(fb, pkv.SET, pkv.entry(key + 8, key)))
  end
  assert_eq(16, provium.unpack("u64", select(2, vm:ioctl(pkv.open(vm), pkv.COUNT, provium.pack("u64", 0)))))
end)

test("the module logs what it does", function()
  local vm = provium.fixture("kmod")
  assert_contains(vm:dmesg("provium_kv"), "provium_kv: loaded")
  vm:ioctl(pkv.open(vm), pkv.SET, pkv.entry(7, 1))
  vm:write_file(pkv.DEVICE, "12345")
  local log = vm:dmesg("provium_kv:")
  assert_contains(log, "provium_kv: set key 7")
  assert_contains(log, "provium_kv: stored a blob of 5 bytes")
end)

test("unload and reload", function()
  local vm = provium.fixture("kmod")
  local unloaded = vm:exec("rmmod provium_kv")
  assert(unloaded.ok, unloaded.stderr.value)
  assert(not vm:exec("test -e /dev/provium_kv").ok, "the device node is gone")
  assert_contains(vm:dmesg("provium_kv"), "provium_kv: unloaded")
  assert(vm:exec("insmod /root/provium_kv.ko").ok)
  vm:wait_until(function() return vm:exec("test -c /dev/provium_kv").ok end, {timeout = 5, interval = 0.05})
  local fd = pkv.open(vm)
  assert_eq(0, provium.unpack("u64", select(2, vm:ioctl(fd, pkv.COUNT, provium.pack("u64", 9)))),
    "a reloaded module starts empty")
end)

-- Reloads the module with its deliberately broken debug ioctls answered; returns an open fd.
local function with_debug_ioctls(vm)
  local reloaded = vm:exec("rmmod provium_kv && insmod /root/provium_kv.ko debug_ioctls=1")
  assert(reloaded.ok, reloaded.stderr.value)
  vm:wait_until(function() return vm:exec("test -c /dev/provium_kv").ok end, {timeout = 5, interval = 0.05})
  return pkv.open(vm)
end

test("debug ioctls are refused unless the module is loaded with debug_ioctls=1", function()
  local vm = provium.fixture("kmod")
  assert_eq(-pkv.EPERM, vm:ioctl(pkv.open(vm), pkv.DEBUG_WARN, 1))
end)

test("a kernel warning this test provokes on purpose", {allow_warnings = true}, function()
  local vm = provium.fixture("kmod")
  local fd = with_debug_ioctls(vm)
  assert_eq(0, vm:ioctl(fd, pkv.DEBUG_WARN, 0))
  assert_eq("", vm:dmesg("WARNING:"), "WARN_ON(0) is silent")
  assert_eq(0, vm:ioctl(fd, pkv.DEBUG_WARN, 1))
  assert_contains(vm:dmesg("WARNING:"), "pkv_ioctl")
end)
