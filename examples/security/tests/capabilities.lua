-- Capabilities and no_new_privs: dropping a capability in a worker, and the
-- one-way no_new_privs flag.
local sys = require("lib.sys")

local vm = provium.create("security")
vm:boot()

local CAP_V3, CAP_NET_RAW, CAP_SYS_ADMIN = 0x20080522, 13, 21
local AF_INET, SOCK_RAW, IPPROTO_ICMP = 2, 3, 1

-- capget: {effective, permitted, inheritable} as two 32-bit halves each.
local function capget(w)
  local ret, _, data = w:syscall_bufs(sys.nr.capget, {[0] = provium.pack("u32 i32", CAP_V3, 0),
                                                     [1] = string.rep("\0", 24)}, 0, 0)
  assert_eq(0, ret)
  local e0, p0, i0, e1, p1, i1 = provium.unpack("u32 u32 u32 u32 u32 u32", data)
  return {effective = e0 | (e1 << 32), permitted = p0 | (p1 << 32), inheritable = i0 | (i1 << 32)}
end

local function capset(w, caps)
  local lo, hi = function(v) return v & 0xffffffff end, function(v) return (v >> 32) & 0xffffffff end
  local data = provium.pack("u32 u32 u32 u32 u32 u32", lo(caps.effective), lo(caps.permitted), lo(caps.inheritable),
    hi(caps.effective), hi(caps.permitted), hi(caps.inheritable))
  return w:syscall_bufs(sys.nr.capset, {[0] = provium.pack("u32 i32", CAP_V3, 0), [1] = data}, 0, 0)
end

test("root in the guest holds CAP_NET_RAW and CAP_SYS_ADMIN", function()
  local caps = capget(vm)
  assert(caps.effective & (1 << CAP_NET_RAW) ~= 0)
  assert(caps.effective & (1 << CAP_SYS_ADMIN) ~= 0)
end)

test("a worker that drops CAP_NET_RAW cannot open a raw socket; the VM still can", function()
  local w = vm:spawn()
  local caps = capget(w)
  caps.effective = caps.effective & ~(1 << CAP_NET_RAW)
  caps.permitted = caps.permitted & ~(1 << CAP_NET_RAW)
  assert_eq(0, capset(w, caps))
  assert_eq(0, capget(w).effective & (1 << CAP_NET_RAW))
  assert_eq(-sys.errno.EPERM, w:syscall(sys.nr.socket, AF_INET, SOCK_RAW, IPPROTO_ICMP))
  local raw = vm:syscall(sys.nr.socket, AF_INET, SOCK_RAW, IPPROTO_ICMP)
  assert(raw >= 0, "the VM keeps CAP_NET_RAW: " .. raw)
  -- a dropped permitted capability cannot come back
  caps.effective = caps.effective | (1 << CAP_NET_RAW)
  assert_eq(-sys.errno.EPERM, capset(w, caps))
end)

test("no_new_privs is set per worker, inherited, and cannot be cleared", function()
  local w = vm:spawn()
  assert_eq(0, w:syscall(sys.nr.prctl, sys.PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0))
  assert_eq(0, w:syscall(sys.nr.prctl, sys.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))
  assert_eq(1, w:syscall(sys.nr.prctl, sys.PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0))
  assert_contains(w:exec("grep NoNewPrivs: /proc/self/status").stdout, "1")
  assert_eq(-sys.errno.EINVAL, w:syscall(sys.nr.prctl, sys.PR_SET_NO_NEW_PRIVS, 0, 0, 0, 0))
  assert_eq(0, vm:syscall(sys.nr.prctl, sys.PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0))
end)
