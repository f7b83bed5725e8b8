-- provium_kv under concurrent users: tasks (provium.all) drive fork workers at
-- once, each with its own open file, so their ioctls overlap in the guest and a
-- waiter blocked in the kernel is woken by another process.
local pkv = require("lib.pkv")

local RACE_KEY, SET_KEY = 5, 9
local ROUNDS = 2000     -- XCHGs per worker
local SET_EVERY = 16    -- and a SET on SET_KEY every this many rounds
local BASE = 1000000    -- worker w writes w * BASE + round: unique values
local SYS_clock_gettime, CLOCK_MONOTONIC = 228, 1 -- x86_64

-- PKV_WAIT on `fd` of `vm` (a VM or a worker): its result, and the generation it
-- returned (nil on an error such as -EAGAIN).
local function gen_of(vm, fd)
  local ret, out = vm:ioctl(fd, pkv.WAIT, provium.pack("u64", 0))
  return ret, ret == 0 and provium.unpack("u64", out) or nil
end

-- CLOCK_MONOTONIC in the guest, seen by `vm` (a VM or a worker), in seconds.
local function monotonic(vm)
  local ret, ts = vm:syscall_bufs(SYS_clock_gettime, {[1] = provium.pack("i64 i64", 0, 0)}, CLOCK_MONOTONIC, 0)
  assert_eq(0, ret, "clock_gettime")
  local sec, nsec = provium.unpack("i64 i64", ts)
  return sec + nsec / 1e9
end

-- What worker `w` is blocked in, from /proc/PID/task/TID/syscall: the syscall
-- number and its first three arguments, then the line. (An idle worker waits for
-- its next request in poll(2) with no timeout: compare the arguments too.)
local function blocked_in(vm, w)
  local line = vm:read_file(("/proc/%d/task/%d/syscall"):format(w.pid, w.tid))
  local nr, a1, a2, a3 = line:match("^(%-?%d+) 0x(%x+) 0x(%x+) 0x(%x+)")
  if not nr then return nil, nil, nil, nil, line end
  return tonumber(nr), tonumber(a1, 16), tonumber(a2, 16), tonumber(a3, 16), line
end

-- Waits until worker `w` is blocked in the syscall `want` ({nr, arg1, arg2, arg3},
-- nil for any argument), as read from /proc by `vm`, or until returned() is true.
local function until_blocked(vm, w, want, desc, returned)
  vm:wait_until(function()
    if returned() then return true end
    local got = table.pack(blocked_in(vm, w))
    for i = 1, 4 do
      if want[i] ~= nil and got[i] ~= want[i] then return false end
    end
    return true
  end, {timeout = 10, interval = 0.05, desc = desc})
end

-- Whether returned() becomes true within 5 s: the waiter was woken.
local function woken(vm, returned)
  return (pcall(vm.wait_until, vm, returned, {timeout = 5, interval = 0.05}))
end

-- Worker `w` opens the device itself (its own file) and swaps unique values into
-- RACE_KEY ROUNDS times; returns the old values it got back, in order, and the
-- last value it SET on SET_KEY.
local function hammer(w, id)
  local fd = pkv.open(w)
  local olds, last_set = {}, nil
  for i = 1, ROUNDS do
    local ret, out = w:ioctl(fd, pkv.XCHG, pkv.entry(RACE_KEY, id * BASE + i))
    assert_eq(0, ret, ("worker %d round %d: XCHG"):format(id, i))
    olds[i] = select(2, pkv.unpack_entry(out))
    if i % SET_EVERY == 0 then
      last_set = id * BASE + i
      assert_eq(0, w:ioctl(fd, pkv.SET, pkv.entry(SET_KEY, last_set)))
    end
  end
  return olds, last_set
end

test("XCHGs racing on one key from two workers lose and duplicate no value", function()
  local vm = provium.fixture("kmod")
  local a, b = vm:spawn(), vm:spawn()
  -- a file of the VM's counts the device's changes across the race
  local watch = pkv.open(vm, pkv.O_NONBLOCK)
  assert_eq(-pkv.EAGAIN, gen_of(vm, watch), "nothing changed since the open")
  assert_eq(0, vm:ioctl(watch, pkv.SET, pkv.entry(RACE_KEY, 0))) -- the first value: 0
  local ret, gen_before = gen_of(vm, watch)
  assert_eq(0, ret)

  local results = provium.all(function() return hammer(a, 1) end, function() return hammer(b, 2) end)
  local olds = {results[1][1], results[2][1]}
  local last_sets = {results[1][2], results[2][2]}
  local ret_after, gen_after = gen_of(vm, watch)
  assert_eq(0, ret_after)
  assert_eq(2 * (ROUNDS + ROUNDS // SET_EVERY), gen_after - gen_before, "changes counted during the race")

  -- the value left in the key, swapped out by the VM (a value no worker writes)
  local ctl = pkv.open(vm)
  local _, out = vm:ioctl(ctl, pkv.XCHG, pkv.entry(RACE_KEY, 0))
  local final = select(2, pkv.unpack_entry(out))

  -- Every XCHG replaces exactly one value: the values got back (and the one left)
  -- are the initial 0 and every value written, each exactly once.
  local got = {[final] = 1}
  for w = 1, 2 do
    for _, v in ipairs(olds[w]) do got[v] = (got[v] or 0) + 1 end
  end
  local lost, twice = {}, {}
  local function expect_once(v)
    local n = got[v] or 0
    if n == 0 and #lost < 10 then lost[#lost + 1] = v end
    if n > 1 and #twice < 10 then twice[#twice + 1] = v .. " x" .. n end
    got[v] = nil
  end
  expect_once(0)
  for w = 1, 2 do for i = 1, ROUNDS do expect_once(w * BASE + i) end end
  local stray = {}
  for v in pairs(got) do if #stray < 10 then stray[#stray + 1] = v end end
  assert_eq({}, lost, "values written but never swapped out (lost updates)")
  assert_eq({}, twice, "values swapped out more than once (a stale read)")
  assert_eq({}, stray, "values swapped out that nobody wrote")

  -- The swaps form one chain 0 -> v1 -> v2 -> ... -> final (each op's new value
  -- follows the old one it got), and it runs through each worker's values in the
  -- order that worker wrote them: the device's order is one interleaving.
  local next_of = {}
  for w = 1, 2 do
    for i, old in ipairs(olds[w]) do next_of[old] = w * BASE + i end
  end
  local position, steps, handoffs, v = {}, 0, 0, 0
  while next_of[v] do
    local nv = next_of[v]
    steps = steps + 1
    position[nv] = steps
    if v ~= 0 and v // BASE ~= nv // BASE then handoffs = handoffs + 1 end
    v = nv
  end
  assert_eq(2 * ROUNDS, steps, "the chain of swaps from the initial 0 covers every XCHG")
  assert_eq(final, v, "the chain ends at the value left in the key")
  for w = 1, 2 do
    for i = 2, ROUNDS do
      assert(position[w * BASE + i] > position[w * BASE + i - 1],
        ("worker %d's round %d took effect before its round %d"):format(w, i, i - 1))
    end
  end

  -- The workers really interleaved: each got back values the other had written,
  -- and the key changed hands between them many times (once if they had run one
  -- after the other; thousands of times in 4000 swaps, measured under TCG).
  local from_other = {0, 0}
  for w = 1, 2 do
    for _, old in ipairs(olds[w]) do
      if old // BASE == 3 - w then from_other[w] = from_other[w] + 1 end
    end
  end
  print(("handoffs between the workers: %d; values from the other worker: a %d, b %d")
    :format(handoffs, from_other[1], from_other[2]))
  assert(from_other[1] > 0 and from_other[2] > 0 and handoffs >= 10,
    ("the workers did not interleave: a got %d of b's values, b got %d of a's, the key changed hands %d time(s)")
      :format(from_other[1], from_other[2], handoffs))

  -- Last write wins whole on SET_KEY, and two keys hold a value.
  local _, set_out = vm:ioctl(ctl, pkv.XCHG, pkv.entry(SET_KEY, 0))
  local set_final = select(2, pkv.unpack_entry(set_out))
  assert(set_final == last_sets[1] or set_final == last_sets[2],
    ("SET_KEY holds %d, not a worker's last SET (%d, %d)"):format(set_final, last_sets[1], last_sets[2]))
  assert_eq(2, provium.unpack("u64", select(2, vm:ioctl(ctl, pkv.COUNT, provium.pack("u64", 0)))))
end)

test("poll blocks until another worker's SET, then reports POLLIN", {timeout = 30}, function()
  local vm = provium.fixture("kmod")
  local a, b = vm:spawn(), vm:spawn()
  local fa, fb = pkv.open(a), pkv.open(b) -- each worker's own file, opened after the spawn
  local n, revents = pkv.poll(a, fa, 0)
  assert_eq(0, n, "nothing new since the open: revents " .. revents)

  local returned = false
  local results = provium.all(function()
    local t0 = monotonic(a)
    local n, revents = pkv.poll(a, fa, 20000)
    returned = true
    return n, revents, monotonic(a) - t0
  end, function()
    until_blocked(vm, a, {pkv.SYS.poll, nil, 1, 20000}, "worker a in its poll(2)", function() return returned end)
    assert(not returned, "poll returned before any SET: it did not block")
    provium.sleep(0.5)
    local nr, _, nfds, timeout, line = blocked_in(vm, a)
    assert_eq({pkv.SYS.poll, 1, 20000}, {nr, nfds, timeout}, "worker a is still in its poll(2) when b sets: " .. line)
    assert_eq(0, b:ioctl(fb, pkv.SET, pkv.entry(1, 42)))
    assert(woken(vm, function() return returned end), "poll was not woken within 5 s of the SET")
  end)
  local n, revents, waited = table.unpack(results[1], 1, 3)
  assert_eq(1, n, "poll reports one ready fd")
  assert_eq(pkv.POLLIN, revents & pkv.POLLIN, "revents " .. revents)
  assert(waited >= 0.4, ("poll returned after %.3f s, before the SET: it did not block"):format(waited))
  -- poll does not consume the change; PKV_WAIT does, for that file only
  assert_eq(1, (pkv.poll(a, fa, 0)))
  assert_eq(1, (pkv.poll(b, fb, 0)), "b's own SET is new to b's file too")
  assert_eq(0, (gen_of(a, fa)))
  assert_eq(0, (pkv.poll(a, fa, 0)))
  assert_eq(1, (pkv.poll(b, fb, 0)))
end)

test("PKV_WAIT blocks until another worker's SET and returns its generation", {timeout = 30}, function()
  local vm = provium.fixture("kmod")
  local a, b = vm:spawn(), vm:spawn()
  local fa = pkv.open(a)
  local fb = pkv.open(b, pkv.O_NONBLOCK)
  assert_eq(-pkv.EAGAIN, gen_of(b, fb), "an O_NONBLOCK file does not wait")

  local returned = false
  local results = provium.all(function()
    local t0 = monotonic(a)
    local ret, gen = gen_of(a, fa)
    returned = true
    return ret, gen, monotonic(a) - t0
  end, function()
    until_blocked(vm, a, {pkv.SYS.ioctl, fa, pkv.WAIT}, "worker a in ioctl(fa, PKV_WAIT)", function() return returned end)
    assert(not returned, "PKV_WAIT returned before any SET: it did not block")
    provium.sleep(0.5)
    local nr, fd, cmd, _, line = blocked_in(vm, a)
    assert_eq({pkv.SYS.ioctl, fa, pkv.WAIT}, {nr, fd, cmd}, "worker a is still in ioctl(fa, PKV_WAIT) when b sets: " .. line)
    assert_eq(-pkv.EAGAIN, gen_of(b, fb), "still nothing new before the SET")
    assert_eq(0, b:ioctl(fb, pkv.SET, pkv.entry(2, 7)))
    assert(woken(vm, function() return returned end), "PKV_WAIT was not woken within 5 s of the SET")
    local ret, gen = gen_of(b, fb)
    assert_eq(0, ret)
    return gen
  end)
  local ret, gen, waited = table.unpack(results[1], 1, 3)
  assert_eq(0, ret, "PKV_WAIT")
  assert_eq(results[2][1], gen, "the waiter got the generation of b's SET")
  assert(waited >= 0.4, ("PKV_WAIT returned after %.3f s, before the SET: it did not block"):format(waited))
  local nonblocking = pkv.open(a, pkv.O_NONBLOCK)
  assert_eq(-pkv.EAGAIN, gen_of(a, nonblocking), "the generation a got is the newest")
end)
