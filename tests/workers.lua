-- Workers: forked copies and threads of the agent's syscall process.
local SYS = {lseek = 8, getpid = 39, gettid = 186, prctl = 157, openat = 257, memfd_create = 319,
             exit = 60, landlock_create_ruleset = 444, landlock_add_rule = 445,
             landlock_restrict_self = 446}
local EBADF, EACCES = 9, 13
local AT_FDCWD, O_PATH, O_DIRECTORY = -100, 0x200000, 0x10000
local LANDLOCK_ACCESS_FS_READ_FILE, LANDLOCK_RULE_PATH_BENEATH = 1 << 2, 1
local PR_SET_NO_NEW_PRIVS = 38

local vm = provium.create("minimal")
vm:boot{memory = "256M"}

test("a thread worker sees the VM's fds and pid, a fork worker does not", function()
  local forked = vm:spawn()
  local thread = vm:spawn{thread = true}
  local vm_pid = vm:syscall(SYS.getpid)
  assert_eq(vm_pid, thread:syscall(SYS.getpid))
  assert_eq(thread.tid, thread:syscall(SYS.gettid))
  assert(thread.tid ~= vm_pid)
  assert_eq(forked.pid, forked:syscall(SYS.getpid))
  assert(forked.pid ~= vm_pid)
  -- an fd the VM opens after the spawn
  local fd = vm:syscall_buf(SYS.memfd_create, 0, "late\0", 0, 0)
  assert(fd >= 0)
  assert_eq(0, thread:syscall(SYS.lseek, fd, 0, 0))
  assert_eq(-EBADF, forked:syscall(SYS.lseek, fd, 0, 0))
  -- workers have the VM's other methods
  assert_eq("hi", forked:exec("echo hi").stdout.trim())
  thread:write_file("/tmp/from-thread", "t")
  assert_eq("t", forked:read_file("/tmp/from-thread"))
end)

-- Restricts the calling worker: file reads only beneath /tmp, /dev and /bin (busybox).
local function landlock_reads_to_tmp_and_dev(w)
  local abi = w:syscall(SYS.landlock_create_ruleset, 0, 0, 1) -- LANDLOCK_CREATE_RULESET_VERSION
  assert(abi >= 1, "Landlock ABI: " .. abi)
  local ruleset = w:syscall_buf(SYS.landlock_create_ruleset, 0,
    provium.pack("u64", LANDLOCK_ACCESS_FS_READ_FILE), 0, 8, 0)
  assert(ruleset >= 0, "create_ruleset: " .. ruleset)
  for _, dir in ipairs{"/tmp", "/dev", "/bin"} do
    local fd = w:syscall_buf(SYS.openat, 1, dir .. "\0", AT_FDCWD, 0, O_PATH | O_DIRECTORY)
    assert(fd >= 0)
    -- struct landlock_path_beneath_attr { u64 allowed_access; s32 parent_fd; } (packed)
    local attr = provium.pack("u64 i32", LANDLOCK_ACCESS_FS_READ_FILE, fd)
    assert_eq(0, w:syscall_buf(SYS.landlock_add_rule, 2, attr, ruleset, LANDLOCK_RULE_PATH_BENEATH, 0, 0))
  end
  assert_eq(0, w:syscall(SYS.prctl, PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))
  assert_eq(0, w:syscall(SYS.landlock_restrict_self, ruleset, 0))
end

test("Landlock in a fork worker restricts only that worker and what it starts", function()
  vm:write_file("/tmp/allowed", "yes")
  local w = vm:spawn()
  landlock_reads_to_tmp_and_dev(w)
  assert_eq("yes", w:read_file("/tmp/allowed"))
  local ok, err = pcall(w.read_file, w, "/etc/provium/modules")
  assert(not ok)
  assert_contains(err, "Permission denied")
  assert_eq(-EACCES, w:syscall_buf(SYS.openat, 1, "/etc/provium/modules\0", AT_FDCWD, 0, 0))
  local r = w:exec("cat /etc/provium/modules")
  assert_eq(1, r.exit_code)
  assert_contains(r.stderr, "Permission denied")
  -- the VM and a new worker are not restricted
  local listed = vm:exec("cat /etc/provium/modules")
  assert(listed.ok)
  assert_eq(listed.stdout.value, vm:read_file("/etc/provium/modules"))
  assert(vm:spawn():exec("cat /etc/provium/modules").ok)
end)

test("a killed worker refuses later calls; the VM and other workers carry on", function()
  local a, b = vm:spawn(), vm:spawn{thread = true}
  a:kill()
  local ok, err = pcall(a.exec, a, "true")
  assert(not ok)
  assert_contains(err, "was killed")
  b:kill()
  assert(not pcall(b.exec, b, "true"))
  local c = vm:spawn()
  assert(c:exec("true").ok)
  assert(vm:exec("true").ok)
end)

test("a worker that exits does not take the VM with it", function()
  local w = vm:spawn()
  local ok, err = pcall(w.syscall, w, SYS.exit, 3)
  assert(not ok)
  assert_contains(err, "died")
  assert(vm:exec("true").ok)
  assert(vm:spawn():exec("true").ok)
end)

test("workers cannot boot, shut down or spawn", function()
  local w = vm:spawn()
  assert_eq(nil, w.boot)
  assert_eq(nil, w.shutdown)
  assert_eq(nil, w.spawn)
end)
