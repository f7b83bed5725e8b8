-- Landlock: the ABI, and rulesets that restrict reads and writes inside workers only.
local sys = require("lib.sys")
local landlock = require("lib.landlock")
local A = landlock.ACCESS

local vm = provium.create("security")
vm:boot()
vm:write_file("/tmp/allowed.txt", "readable")
vm:exec("mkdir -p /srv/secret && echo hidden > /srv/secret/data")

test("the kernel offers Landlock ABI 1 or later", function()
  assert(landlock.abi(vm) >= 1, "landlock ABI: " .. landlock.abi(vm))
end)

test("a fork worker restricted to /tmp cannot read or write elsewhere", function()
  local w = vm:spawn()
  landlock.restrict(w, A.READ_FILE | A.WRITE_FILE | A.MAKE_REG,
    {["/tmp"] = A.READ_FILE | A.WRITE_FILE | A.MAKE_REG, ["/dev"] = A.READ_FILE | A.WRITE_FILE,
     ["/bin"] = A.READ_FILE})
  -- inside the domain
  assert(sys.openat(w, "/tmp/allowed.txt", sys.O_RDONLY) >= 0)
  assert(sys.openat(w, "/tmp/new.txt", sys.O_WRONLY | sys.O_CREAT, 420) >= 0)
  assert_eq(-sys.errno.EACCES, sys.openat(w, "/srv/secret/data", sys.O_RDONLY))
  assert_eq(-sys.errno.EACCES, sys.openat(w, "/srv/secret/new", sys.O_WRONLY | sys.O_CREAT, 420))
  -- what the worker starts inherits the domain
  local r = w:exec("cat /srv/secret/data")
  assert_eq(1, r.exit_code)
  assert_contains(r.stderr, "Permission denied")
  -- outside the domain: the VM and a new worker are not restricted
  assert_eq("hidden\n", vm:read_file("/srv/secret/data"))
  assert(sys.openat(vm:spawn(), "/srv/secret/data", sys.O_RDONLY) >= 0)
end)

test("a thread worker's domain is its own thread's", function()
  local t = vm:spawn{thread = true}
  landlock.restrict(t, A.READ_FILE, {["/tmp"] = A.READ_FILE})
  assert_eq(-sys.errno.EACCES, sys.openat(t, "/srv/secret/data", sys.O_RDONLY))
  assert(sys.openat(vm, "/srv/secret/data", sys.O_RDONLY) >= 0, "the VM's thread is not in the domain")
end)
