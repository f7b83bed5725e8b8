-- Tasks: provium.all, provium.go, t:wait and provium.sleep; ops of different workers overlap in the guest.
local SYS = {write = 1, nanosleep = 35, clock_gettime = 228, epoll_wait = 232, epoll_ctl = 233,
             epoll_create1 = 291, pipe2 = 293}
local CLOCK_MONOTONIC, EPOLLIN, EPOLL_CTL_ADD, ENOENT = 1, 1, 1, 2

local vm = provium.create("minimal")
vm:boot{memory = "256M", cpus = 2}

-- The guest's CLOCK_MONOTONIC in seconds, read by `w` (every process of the guest reads the same clock).
local function guest_now(w)
  local ret, ts = w:syscall_bufs(SYS.clock_gettime, {[1] = string.rep("\0", 16)}, CLOCK_MONOTONIC)
  assert_eq(0, ret)
  local sec, nsec = provium.unpack("i64 i64", ts)
  return sec + nsec / 1e9
end

-- nanosleep(1 s) in `w`, between two readings of the guest's clock.
local function sleep_one_second(w)
  local before = guest_now(w)
  assert_eq(0, w:syscall_buf(SYS.nanosleep, 0, provium.pack("i64 i64", 1, 0), 0, 0))
  return before, guest_now(w)
end

test("two tasks blocked 1 s each in the guest are blocked at the same time", function()
  local a, b = vm:spawn(), vm:spawn()
  local r = provium.all(function() return sleep_one_second(a) end, function() return sleep_one_second(b) end)
  local a0, a1, b0, b1 = r[1][1], r[1][2], r[2][1], r[2][2]
  assert(a1 - a0 >= 1 and b1 - b0 >= 1, "each slept a second")
  -- one after the other, one would start after the other ended
  assert(a0 < b1 and b0 < a1, string.format("the sleeps overlap: a %.2f..%.2f, b %.2f..%.2f", a0, a1, b0, b1))
  print(string.format("both sleeps took %.2f s together", math.max(a1, b1) - math.min(a0, b0)))
end)

test("a blocked epoll_wait in one worker is woken by another task's write", function()
  local ret, fds = vm:syscall_bufs(SYS.pipe2, {[0] = string.rep("\0", 8)}, 0, 0)
  assert_eq(0, ret)
  local rfd, wfd = provium.unpack("i32 i32", fds)
  local waiter, writer = vm:spawn(), vm:spawn() -- fork workers: both hold the pipe
  local ep = waiter:syscall(SYS.epoll_create1, 0)
  assert(ep >= 0, "epoll_create1: " .. ep)
  -- struct epoll_event is packed on x86_64: u32 events, u64 data
  assert_eq(0, waiter:syscall_buf(SYS.epoll_ctl, 3, provium.pack("u32 u64", EPOLLIN, 77), ep, EPOLL_CTL_ADD, rfd))
  local woken = provium.go(function()
    local before = guest_now(waiter)
    local n, event = waiter:syscall_bufs(SYS.epoll_wait, {[1] = string.rep("\0", 12)}, ep, 0, 1, 60000)
    return n, event, before, guest_now(waiter)
  end)
  provium.sleep(0.5)
  local wrote_at = guest_now(writer)
  assert_eq(1, writer:syscall_buf(SYS.write, 1, "x", wfd, 0, 1))
  local n, event, before, after = woken:wait()
  assert_eq(1, n)
  assert_eq({EPOLLIN, 77}, {provium.unpack("u32 u64", event)})
  assert(before < wrote_at and wrote_at <= after,
    string.format("epoll_wait (%.2f..%.2f) was waiting when the write came (%.2f)", before, after, wrote_at))
end)

test("ops on one worker run in the order their tasks queued them", function()
  local w = vm:spawn()
  w:exec("rm -f /tmp/order")
  provium.all(
    function() w:exec("sleep 0.3; echo first >> /tmp/order") end,
    function() w:exec("echo second >> /tmp/order") end,
    function() w:exec("echo third >> /tmp/order") end)
  assert_eq("first\nsecond\nthird\n", w:read_file("/tmp/order"))
end)

test("results come back in the order of the functions, whichever ends first", function()
  local r = provium.all(
    function() provium.sleep(0.4) return "slow", 1 end,
    function() return "fast", nil, 3 end,
    function() end)
  assert_eq({{"slow", 1, n = 2}, {"fast", nil, 3, n = 3}, {n = 0}}, r)
  local t = provium.go(function(x, y) provium.sleep(0.1) return x + y end, 40, 2)
  assert_eq(42, t:wait())
  assert_eq(42, t:wait(), "waiting again answers the same")
  assert_eq({}, provium.all())
end)

test("a task's error caught by its own pcall does not fail the test", function()
  local a, b = vm:spawn(), vm:spawn()
  local r = provium.all(function()
    local ok, err = pcall(a.read_file, a, "/no/such/file")
    assert(not ok)
    return provium.errno(err)
  end, function() return b:exec("echo fine").stdout.trim() end)
  assert_eq({{ENOENT, n = 1}, {"fine", n = 1}}, r)
end)

test("a coroutine of the test's own may run ops inside a task", function()
  local w = vm:spawn()
  local lines = coroutine.wrap(function()
    for i = 1, 3 do coroutine.yield(w:exec("echo line" .. i).stdout.trim()) end
  end)
  local other = provium.go(function() return vm:exec("echo other").stdout.trim() end)
  assert_eq({"line1", "line2", "line3"}, {lines(), lines(), lines()})
  assert_eq("other", other:wait())
end)

test("a worker killed by another task ends the op it is blocked in", function()
  local w = vm:spawn()
  local blocked = provium.go(function() return pcall(w.exec, w, "sleep 60") end)
  provium.sleep(0.3)
  w:kill()
  local ok, err = blocked:wait()
  assert(not ok)
  assert_contains(err, "was killed while an op ran on it")
  assert_eq("", vm:exec("ps -o args | grep '^sleep 60' || true").stdout.value, "its command was killed with it")
end)

test("the test waits for tasks nobody waited for", function()
  local w = vm:spawn()
  w:exec("rm -f /tmp/late")
  provium.go(function() provium.sleep(0.3) w:write_file("/tmp/late", "written") end)
end)

test("... and their work is done when it ends", function()
  assert_eq("written", vm:read_file("/tmp/late"))
end)
