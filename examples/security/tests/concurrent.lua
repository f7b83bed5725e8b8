-- Restricted and unrestricted workers acting at the same time (provium.all): a
-- Landlock domain or a seccomp filter stays with the process (or thread) it was
-- applied in while another one makes the same calls in between.
local sys = require("lib.sys")
local landlock = require("lib.landlock")
local bpf = require("lib.bpf")
local A = landlock.ACCESS

local vm = provium.create("security")
vm:boot()
vm:write_file("/tmp/allowed.txt", "readable")
vm:exec("mkdir -p /srv/secret && echo hidden > /srv/secret/data")

local ROUNDS = 250
local SECRET = "/srv/secret/data"

-- Evidence of overlap: the unrestricted side writes its round number into a file
-- of /tmp (8 digits, in place) each round, and the restricted side reads it each
-- round: seeing the number move while it runs means the two really interleaved.
local function progress_writer(w)
  local fd = sys.openat(w, "/tmp/progress", sys.O_WRONLY | sys.O_CREAT, 420)
  assert(fd >= 0, "open /tmp/progress: " .. fd)
  assert_eq(8, w:syscall_buf(sys.nr.pwrite64, 1, "00000000", fd, 0, 8, 0))
  return function(round)
    local ret = w:syscall_buf(sys.nr.pwrite64, 1, ("%08d"):format(round), fd, 0, 8, 0)
    assert_eq(8, ret, "pwrite /tmp/progress")
  end
end

local function progress_reader(w)
  local fd = sys.openat(w, "/tmp/progress", sys.O_RDONLY)
  assert(fd >= 0, "open /tmp/progress: " .. fd)
  local seen = {}
  return function()
    local n, data = w:syscall_bufs(sys.nr.pread64, {[1] = string.rep("\0", 8)}, fd, 0, 8, 0)
    assert_eq(8, n, "pread /tmp/progress")
    seen[tonumber(data)] = true
  end, function()
    local distinct = 0
    for _ in pairs(seen) do distinct = distinct + 1 end
    return distinct
  end
end

-- Opens, reads and closes SECRET in `w`; its content.
local function read_secret(w)
  local fd = sys.openat(w, SECRET, sys.O_RDONLY)
  assert(fd >= 0, "open " .. SECRET .. ": " .. fd)
  local n, data = w:syscall_bufs(sys.nr.read, {[1] = string.rep("\0", 16)}, fd, 0, 16)
  assert_eq(0, w:syscall(sys.nr.close, fd))
  return data:sub(1, math.max(n, 0))
end

-- Runs `restricted` and `free` (each called with the round number) ROUNDS times
-- at once, each in a task of its own, `free` advancing the progress file after
-- each round; returns how many of its rounds the restricted side saw.
local function race(restricted_w, free_w, restricted, free)
  local write_progress = progress_writer(free_w)
  local read_progress, distinct = progress_reader(restricted_w)
  provium.all(function()
    for round = 1, ROUNDS do
      restricted(round)
      read_progress()
    end
  end, function()
    for round = 1, ROUNDS do
      free(round)
      write_progress(round)
    end
  end)
  return distinct()
end

test("a Landlock-restricted worker is denied while an unrestricted one reads the same file at once", function()
  local restricted, free = vm:spawn(), vm:spawn()
  landlock.restrict(restricted, A.READ_FILE | A.WRITE_FILE | A.MAKE_REG,
    {["/tmp"] = A.READ_FILE | A.WRITE_FILE | A.MAKE_REG})
  local denied, allowed, contents = 0, 0, 0
  local seen = race(restricted, free, function(round)
    local fd = sys.openat(restricted, SECRET, sys.O_RDONLY)
    assert_eq(-sys.errno.EACCES, fd, ("round %d: the restricted worker opens %s"):format(round, SECRET))
    denied = denied + 1
    local ok = sys.openat(restricted, "/tmp/allowed.txt", sys.O_RDONLY)
    assert(ok >= 0, ("round %d: the restricted worker opens /tmp/allowed.txt: %d"):format(round, ok))
    assert_eq(0, restricted:syscall(sys.nr.close, ok))
    allowed = allowed + 1
  end, function(round)
    local data = read_secret(free)
    assert_eq("hidden\n", data, ("round %d: the unrestricted worker reads %s"):format(round, SECRET))
    contents = contents + 1
  end)
  assert_eq(ROUNDS, denied)
  assert_eq(ROUNDS, allowed)
  assert_eq(ROUNDS, contents)
  assert(seen >= 10, ("the restricted worker saw the other at %d round(s) only: they did not overlap"):format(seen))
  -- after the race: the domain stayed with its worker
  assert_eq(-sys.errno.EACCES, sys.openat(restricted, SECRET, sys.O_RDONLY))
  assert_eq("hidden\n", read_secret(vm))
end)

test("a seccomp-filtered worker gets the filter's errno while an unfiltered one calls the same syscall at once", function()
  local filtered, free = vm:spawn(), vm:spawn()
  local filter, count = bpf.errno_filter({[sys.nr.getppid] = sys.errno.EXDEV})
  assert_eq(0, bpf.install(filtered, filter, count))
  local ppid = free:syscall(sys.nr.getppid)
  assert(ppid > 0, "getppid: " .. ppid)
  local seen = race(filtered, free, function(round)
    local ret = filtered:syscall(sys.nr.getppid)
    assert_eq(-sys.errno.EXDEV, ret, ("round %d: the filtered worker's getppid"):format(round))
  end, function(round)
    local ret = free:syscall(sys.nr.getppid)
    assert_eq(ppid, ret, ("round %d: the unfiltered worker's getppid"):format(round))
  end)
  assert(seen >= 10, ("the filtered worker saw the other at %d round(s) only: they did not overlap"):format(seen))
end)

test("two thread workers of one process: the Landlock-restricted thread is denied while the other reads", function()
  local restricted, free = vm:spawn{thread = true}, vm:spawn{thread = true}
  assert_eq(restricted.pid, free.pid, "thread workers share their process")
  landlock.restrict(restricted, A.READ_FILE | A.WRITE_FILE | A.MAKE_REG,
    {["/tmp"] = A.READ_FILE | A.WRITE_FILE | A.MAKE_REG})
  local seen = race(restricted, free, function(round)
    local fd = sys.openat(restricted, SECRET, sys.O_RDONLY)
    assert_eq(-sys.errno.EACCES, fd, ("round %d: the restricted thread opens %s"):format(round, SECRET))
  end, function(round)
    local data = read_secret(free)
    assert_eq("hidden\n", data, ("round %d: the other thread reads %s"):format(round, SECRET))
  end)
  assert(seen >= 10, ("the restricted thread saw the other at %d round(s) only: they did not overlap"):format(seen))
end)
