-- A first Provium test file. Run it with:  provium run examples/
--
-- provium.create() names a profile; "minimal" is built in: the host's newest
-- kernel with a small busybox userland. A VM created outside any test lives
-- until the end of the file, so the tests below share one boot.
local vm = provium.create("minimal")
vm:boot{memory = "256M"}

test("the guest runs Linux", function()
  local r = vm:exec("uname -s")
  assert(r.ok, "uname failed: " .. r.stderr.value)
  assert_eq("Linux", r.stdout.trim())
end)

test("exit codes and stderr come back separately", function()
  local r = vm:exec("echo out; echo err >&2; exit 3")
  assert_eq(3, r.exit_code)
  assert_eq("out\n", r.stdout.value)
  assert(r.stderr.contains("err"))
end)

test("files go in and come out unchanged", function()
  vm:write_file("/tmp/greeting", "hello from the host\n")
  assert_eq("hello from the host\n", vm:read_file("/tmp/greeting"))
  assert_contains(vm:exec("cat /tmp/greeting").stdout, "from the host")
end)

test("each test can have a VM of its own", function()
  -- Shut down automatically when this test ends, pass or fail.
  local own = provium.create("minimal")
  own:boot{memory = "256M", cpus = 2}
  assert_eq("2", own:exec("nproc").stdout.trim())
end)
