-- The provium_kv device's interface for tests: ioctl numbers (as <linux/ioctl.h>
-- encodes them) and packers for its structs (module/provium_kv.h).
local M = {}

local IOC_WRITE, IOC_READ = 1, 2
local function ioc(dir, type, nr, size)
  return (dir << 30) | (size << 16) | (string.byte(type) << 8) | nr
end

M.SET = ioc(IOC_WRITE, "k", 1, 16)                  -- _IOW: struct pkv_entry
M.COUNT = ioc(IOC_READ, "k", 2, 8)                  -- _IOR: __u64
M.XCHG = ioc(IOC_READ | IOC_WRITE, "k", 3, 16)      -- _IOWR: struct pkv_entry
M.BLOB = ioc(IOC_READ | IOC_WRITE, "k", 4, 16)      -- _IOWR: struct pkv_blob_req (user pointer)
M.WAIT = ioc(IOC_READ, "k", 5, 8)                   -- _IOR: __u64, the new generation
-- the deliberately broken debug ioctls (_IO), answered with debug_ioctls=1 only
M.DEBUG_WARN = ioc(0, "k", 16, 0)                   -- WARN_ON(arg)
M.DEBUG_UAF = ioc(0, "k", 17, 0)                    -- reads freed memory: KASAN
M.DEBUG_LEAK = ioc(0, "k", 18, 0)                   -- loses arg bytes: kmemleak
M.DEBUG_ABBA = ioc(0, "k", 19, 0)                   -- two mutexes in both orders: lockdep
M.DEBUG_SLEEP = ioc(0, "k", 20, 0)                  -- GFP_KERNEL under a spinlock
M.DEBUG_REFCOUNT = ioc(0, "k", 21, 0)               -- refcount_t increment from 0
M.DEBUG_INDEX = ioc(0, "k", 22, 0)                  -- element arg of a u64[4]: UBSAN
M.DEBUG_LIST = ioc(0, "k", 23, 0)                   -- list_add on a corrupted list
M.KEYS, M.BLOB_MAX = 16, 256
M.DEVICE = "/dev/provium_kv"

M.SYS = {read = 0, write = 1, close = 3, poll = 7, lseek = 8, ioctl = 16, openat = 257} -- x86_64
M.EPERM, M.EAGAIN, M.EFAULT, M.EINVAL, M.ENOTTY = 1, 11, 14, 22, 25
M.O_NONBLOCK, M.POLLIN = 0x800, 1

function M.entry(key, value) return provium.pack("u32 u32 u64", key, 0, value) end
function M.unpack_entry(data) local key, _, value = provium.unpack("u32 u32 u64", data) return key, value end
function M.blob_req(buf, len) return provium.pack("u64 u32 u32", buf, len, 0) end
function M.pollfd(fd, events) return provium.pack("i32 i16 i16", fd, events, 0) end

-- poll(2) for POLLIN on one fd of `vm` (a VM or a worker): the result, then revents.
function M.poll(vm, fd, timeout_ms)
  local n, pfd = vm:syscall_bufs(M.SYS.poll, {[0] = M.pollfd(fd, M.POLLIN)}, 0, 1, timeout_ms)
  return n, select(3, provium.unpack("i32 i16 i16", pfd))
end

-- Opens the device in `vm` (a VM or a worker), read-write plus `flags`
-- (M.O_NONBLOCK), and returns the fd.
function M.open(vm, flags)
  local O_RDWR, AT_FDCWD = 2, -100
  local fd = vm:syscall_buf(M.SYS.openat, 1, M.DEVICE .. "\0", AT_FDCWD, 0, O_RDWR | (flags or 0))
  assert(fd >= 0, "open " .. M.DEVICE .. ": " .. fd)
  return fd
end

return M
