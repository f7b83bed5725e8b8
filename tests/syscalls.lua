-- Raw syscalls and ioctls against the real guest kernel (x86-64 numbers).
local SYS = {read = 0, write = 1, close = 3, lseek = 8, readv = 19, writev = 20, socket = 41,
             uname = 63, pipe2 = 293, memfd_create = 319}
local EBADF, ENOTTY = 9, 25

local vm = provium.create("minimal")
vm:boot{memory = "256M"}

test("memfd_create, write, lseek and read through buffers", function()
  local fd = vm:syscall_buf(SYS.memfd_create, 0, "provium\0", 0, 0)
  assert(fd >= 0, "memfd_create: " .. fd)
  assert_eq(11, vm:syscall_buf(SYS.write, 1, "hello world", fd, 0, 11))
  assert_eq(6, vm:syscall(SYS.lseek, fd, 6, 0))
  local n, buf = vm:syscall_bufs(SYS.read, {[1] = string.rep("\0", 16)}, fd, 0, 16)
  assert_eq(5, n)
  assert_eq("world", buf:sub(1, 5))
  -- state persists: the same fd is still open for the next call
  assert_eq(0, vm:syscall(SYS.lseek, fd, 0, 0))
  assert_eq(0, vm:syscall(SYS.close, fd))
  assert_eq(-EBADF, vm:syscall(SYS.close, fd))
end)

test("uname and pipe2 fill output buffers", function()
  local ret, uts = vm:syscall_bufs(SYS.uname, {[0] = string.rep("\0", 390)}, 0)
  assert_eq(0, ret)
  assert_eq("Linux", uts:sub(1, 5))
  assert_eq(vm:exec("uname -r").stdout.trim(), uts:sub(131, 195):match("^[^%z]+"))
  local r, fds = vm:syscall_bufs(SYS.pipe2, {[0] = provium.pack("i32 i32", -1, -1)}, 0, 0)
  assert_eq(0, r)
  local rfd, wfd = provium.unpack("i32 i32", fds)
  assert(rfd >= 0 and wfd >= 0 and rfd ~= wfd)
  assert_eq(3, vm:syscall_buf(SYS.write, 1, "abc", wfd, 0, 3))
  local _, got = vm:syscall_bufs(SYS.read, {[1] = "\0\0\0"}, rfd, 0, 3)
  assert_eq("abc", got)
end)

test("writev and readv through iovec pointer specs", function()
  local fd = vm:syscall_buf(SYS.memfd_create, 0, "iov\0", 0, 0)
  -- struct iovec { void *base; size_t len; } x 2: pointers patched at offsets 0 and 16
  local iov = provium.pack("u64 u64 u64 u64", 0, 5, 0, 6)
  local ret = vm:syscall_ptr(SYS.writev, {[1] = iov}, {
    {buf_idx = 1, ptr_offset = 0, data_len = 5, data = "hello"},
    {buf_idx = 1, ptr_offset = 16, data_len = 6, data = " there"},
  }, fd, 0, 2)
  assert_eq(11, ret)
  vm:syscall(SYS.lseek, fd, 0, 0)
  local n, iov_out, first, second = vm:syscall_ptr(SYS.readv, {[1] = provium.pack("u64 u64 u64 u64", 0, 4, 0, 7)}, {
    {buf_idx = 1, ptr_offset = 0, data_len = 4, output = true},
    {buf_idx = 1, ptr_offset = 16, data_len = 7, output = true},
  }, fd, 0, 2)
  assert_eq(11, n)
  assert_eq("hell", first)
  assert_eq("o there", second)
  local base = provium.unpack("u64", iov_out)
  assert(base ~= 0, "the pointer was patched into the iovec")
end)

test("FIONREAD and an _IOR ioctl return data", function()
  local _, fds = vm:syscall_bufs(SYS.pipe2, {[0] = provium.pack("i32 i32", -1, -1)}, 0, 0)
  local rfd, wfd = provium.unpack("i32 i32", fds)
  vm:syscall_buf(SYS.write, 1, "12345", wfd, 0, 5)
  local FIONREAD = 0x541B
  local ret, out = vm:ioctl(rfd, FIONREAD, provium.pack("i32", 0))
  assert_eq(0, ret)
  assert_eq(5, provium.unpack("i32", out))
  -- RNDGETENTCNT = _IOR('R', 0x00, int)
  local O_RDONLY = 0
  local urandom = vm:syscall_buf(257, 1, "/dev/urandom\0", -100, 0, O_RDONLY)
  assert(urandom >= 0)
  local r2, count = vm:ioctl(urandom, 0x80045200, provium.pack("i32", -1))
  assert_eq(0, r2)
  assert(provium.unpack("i32", count) >= 0)
  -- no data: the argument is 0 and only the result comes back
  local r3, none = vm:ioctl(rfd, 0x1234)
  assert_eq(-ENOTTY, r3)
  assert_eq(nil, none)
end)

test("an integer ioctl argument is passed as the value itself (TCFLSH)", function()
  local AT_FDCWD, O_RDWR, O_NOCTTY, EINVAL = -100, 2, 0x100, 22
  local ptmx = vm:syscall_buf(257, 1, "/dev/ptmx\0", AT_FDCWD, 0, O_RDWR | O_NOCTTY)
  assert(ptmx >= 0, "openat /dev/ptmx: " .. ptmx)
  local TCFLSH, TCIOFLUSH = 0x540B, 2
  local ret, none = vm:ioctl(ptmx, TCFLSH, TCIOFLUSH)
  assert_eq(0, ret)
  assert_eq(nil, none)
  assert_eq(0, vm:ioctl(ptmx, TCFLSH, 1.0)) -- TCOFLUSH: an integral float is an integer
  assert_eq(-EINVAL, vm:ioctl(ptmx, TCFLSH, 99)) -- no such queue: the kernel saw 99, not a pointer
  local ok, err = pcall(vm.ioctl, vm, ptmx, TCFLSH, 1.5)
  assert(not ok)
  assert_contains(err, "vm:ioctl: argument 3 (arg) must be a string or an integer, got float")
  assert_eq(0, vm:syscall(SYS.close, ptmx))
end)

test("an ioctl whose struct embeds a user pointer (SIOCGIFCONF)", function()
  assert(vm:exec("ip addr add 127.0.0.1/8 dev lo && ip link set lo up").ok)
  local sock = vm:syscall(SYS.socket, 2, 2, 0) -- AF_INET, SOCK_DGRAM
  assert(sock >= 0)
  -- struct ifconf { int ifc_len; (pad) ; char *ifc_buf; }
  local ifc = provium.pack("i32 u32 u64", 400, 0, 0)
  local ret, ifc_out, reqs = vm:ioctl_buf(sock, 0x8912, ifc, {
    {ptr_offset = 8, buf_len = 400, output = true},
  })
  assert_eq(0, ret)
  local len = provium.unpack("i32", ifc_out)
  assert_eq(40, len) -- one struct ifreq
  assert_eq("lo", reqs:sub(1, 2))
end)

test("bad arguments are refused before anything runs", function()
  local ok, err = pcall(vm.syscall_ptr, vm, SYS.writev, {[1] = "short"},
    {{buf_idx = 1, ptr_offset = 0, data_len = 1}}, 1, 0, 1)
  assert(not ok)
  assert_contains(err, "ptr_offset 0 does not leave 8 bytes in buffer 1 of 5 bytes")
  ok, err = pcall(vm.syscall_ptr, vm, SYS.writev, {[1] = string.rep("\0", 16)},
    {{buf_idx = 2, ptr_offset = 0, data_len = 1}}, 1, 0, 1)
  assert_contains(err, "buf_idx 2 names no buffer argument")
  ok, err = pcall(vm.syscall, vm, "one")
  assert_contains(err, "vm:syscall: nr must be an integer, got string")
  ok, err = pcall(vm.syscall, vm, 39, 1, 2, 3, 4, 5, 6, 7)
  assert_contains(err, "at most 6 syscall arguments, got 7")
  ok, err = pcall(vm.syscall_bufs, vm, 0, {[7] = "x"})
  assert_contains(err, "buffer index 7 must be an integer from 0 to 5")
  assert(vm:exec("true").ok, "the agent keeps serving")
end)
