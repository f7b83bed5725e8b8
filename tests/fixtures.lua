-- fixtures/service.lua, resumed: the state it prepared, a service still running,
-- and clones that do not see each other's changes.

test("a clone has the state its fixture prepared", function()
  local vm = provium.fixture("service")
  assert_eq("ready\n", vm:read_file("/srv/state"))
  assert_eq("1000", vm:exec("id -u tester").stdout.trim())
end)

test("the fixture's background service still runs in the clone", function()
  local vm = provium.fixture("service")
  local pid = vm:read_file("/run/service.pid"):gsub("%s+$", "")
  assert(vm:exec("kill -0 " .. pid).ok, "service process " .. pid .. " is alive")
  local first = vm:read_file("/run/service.beat")
  vm:wait_until(function() return vm:read_file("/run/service.beat") ~= first end,
    {timeout = 10, interval = 0.2, desc = "a new beat"})
end)

test("clones are independent", function()
  local a, b = provium.fixture("service"), provium.fixture("service")
  a:write_file("/srv/state", "changed by a\n")
  assert_eq("changed by a\n", a:read_file("/srv/state"))
  assert_eq("ready\n", b:read_file("/srv/state"))
  local built = b:read_file("/srv/boot_id")
  assert_eq(built, a:read_file("/proc/sys/kernel/random/boot_id"), "a resumes the fixture's boot")
  assert_eq(built, b:read_file("/proc/sys/kernel/random/boot_id"), "b resumes the fixture's boot")
end)
