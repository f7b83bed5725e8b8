-- The Lua face of Provium: the provium table, VM objects, test(), todo(),
-- the assertions, and the sandbox every test file runs in. Python hands in
-- `bridge` (provium/bridge.py), a table of functions that return
-- (true, results...) or (false, message, kind, errno, detail); everything
-- users see is defined here so that errors carry the test file's own
-- file:line. The guest ops (vm:exec, vm:read_file, ...) are made from the
-- bridge's op table (bridge.guest_ops). Test files never see this chunk's
-- globals: each runs in its own environment over a read-only base (see the end).
local bridge = ...

-- The harness's own references, taken before anything is hidden.
local getmt, sethook, gethook, traceback, getinfo =
  debug.getmetatable, debug.sethook, debug.gethook, debug.traceback, debug.getinfo
local HARNESS = getinfo(1, "S").source -- this chunk: the hooks never stop the harness's own code
local raw_load, raw_rawset, raw_open, raw_lines = load, rawset, io.open, io.lines
local co_create, co_resume = coroutine.create, coroutine.resume
local HOOK_EVERY = 1000000
getmt("").__metatable = false -- the string library is reachable only read-only

local function where(level)
  local info = getinfo(level + 1, "Sl")
  if info and info.currentline and info.currentline > 0 then
    return info.short_src .. ":" .. info.currentline
  end
  return "?"
end

local Todo = {__metatable = false}
local Cancelled = setmetatable({}, {__metatable = false}) -- raised in a task whose scope failed

-- file:line of the innermost caller outside this chunk (the test file's own line), or nil.
local function caller_line()
  for level = 3, 200 do
    local info = getinfo(level, "Sl")
    if not info then return nil end
    if info.source ~= HARNESS and info.currentline and info.currentline > 0 then
      return info.short_src .. ":" .. info.currentline
    end
  end
end

-- What an op's error raised into Lua carries besides its text, by the raised string: {errno, detail}.
-- Bounded: the oldest are forgotten first.
local ERRORS_KEPT = 256
local raised_errors, raised_order = {}, {}

local function remember(message, errno, detail)
  if errno == nil and detail == nil then return end
  if raised_errors[message] == nil then
    raised_order[#raised_order + 1] = message
    if #raised_order > ERRORS_KEPT then raised_errors[table.remove(raised_order, 1)] = nil end
  end
  raised_errors[message] = {errno = errno, detail = detail}
end

-- The values of a bridge function's answer (packed) for the API method `method`; raises its error at
-- the test file's line (an argument error names the method), or skips the test when the bridge says it
-- cannot run here.
local function answer(method, result)
  if result[1] then return table.unpack(result, 2, result.n) end
  local message, kind = result[2], result[3]
  if kind == "skip" then error(setmetatable({reason = message}, Todo), 0) end
  if kind == "argument" then message = method .. ": " .. message end
  local line = caller_line()
  if line then message = line .. ": " .. message end
  remember(message, result[4], result[5])
  error(message, 0)
end

-- Calls a bridge function for the API method `method`: its values, or its error raised (see answer).
local function call(method, fn, ...)
  return answer(method, table.pack(fn(...)))
end

-- Guest ops and sleeps: run now, or in a task while others are alive, queued and awaited (see tasks).
local guest, sleep

local function check(method, index, name, value, expected, optional)
  if value == nil and optional then return end
  if type(value) ~= expected then
    error(string.format("%s: argument %d (%s) must be a %s, got %s",
      method, index, name, expected, type(value)), 3)
  end
end

-- Raises at the API caller's line for an option not in `known` ({name = true}).
local function known_options(method, opts, known)
  for key in pairs(opts) do
    if not known[key] then
      local names = {}
      for name in pairs(known) do names[#names + 1] = name end
      table.sort(names)
      error(method .. ": unknown option '" .. tostring(key) .. "' (known: " .. table.concat(names, ", ") .. ")", 3)
    end
  end
end

---------------------------------------------------------------- strings

local StrMeta = {__metatable = false}
StrMeta.__index = StrMeta
StrMeta.__tostring = function(self) return self.value end
StrMeta.__len = function(self) return #self.value end
StrMeta.__concat = function(a, b) return tostring(a) .. tostring(b) end
StrMeta.__eq = function(a, b) return a.value == b.value end

-- Wraps s so that .contains(x) and :contains(x) both work.
local function wrap(s)
  local w = {value = s}
  local function arg(a, b)
    if rawequal(a, w) then return b end
    return a
  end
  w.contains = function(a, b)
    return string.find(w.value, tostring(arg(a, b)), 1, true) ~= nil
  end
  w.starts_with = function(a, b)
    local prefix = tostring(arg(a, b))
    return string.sub(w.value, 1, #prefix) == prefix
  end
  w.trim = function()
    return (string.gsub(w.value, "^%s*(.-)%s*$", "%1"))
  end
  return setmetatable(w, StrMeta)
end

local function plain(v)
  if getmt(v) == StrMeta then return v.value end
  return v
end

bridge.set_wrap(wrap)

---------------------------------------------------------------- VMs

local VM = {__metatable = false}
VM.__index = VM
VM.__tostring = function(self) return "VM<" .. self._name .. ">" end

local function new_vm(handle, name)
  return setmetatable({_h = handle, _name = name}, VM)
end

local Worker = {__metatable = false}
Worker.__index = Worker

local function is_vm(self, method)
  local mt = getmt(self)
  if mt ~= VM and mt ~= Worker then
    error(method .. ": call it with ':' on a VM (vm:" .. method:match("[^:]+$") .. "(...))", 3)
  end
end

function VM:boot(opts)
  is_vm(self, "vm:boot")
  check("vm:boot", 1, "opts", opts, "table", true)
  opts = opts or {}
  known_options("vm:boot", opts, {memory = true, cpus = true, files = true, disks = true})
  check("vm:boot", 1, "opts.memory", opts.memory, "string", true)
  if opts.cpus ~= nil and math.type(opts.cpus) ~= "integer" then
    error("vm:boot: option cpus must be an integer, got " .. type(opts.cpus), 2)
  end
  check("vm:boot", 1, "opts.files", opts.files, "table", true)
  for guest, host in pairs(opts.files or {}) do
    if type(guest) ~= "string" or type(host) ~= "string" then
      error("vm:boot: files must map guest paths (strings) to host paths (strings)", 2)
    end
  end
  check("vm:boot", 1, "opts.disks", opts.disks, "table", true)
  local disks = {}
  for i, disk in ipairs(opts.disks or {}) do
    if type(disk) == "string" then disk = {path = disk} end
    if type(disk) ~= "table" then
      error("vm:boot: disks[" .. i .. "] must be a table {path, format, readonly}", 2)
    end
    local d = {path = disk.path or disk[1], format = disk.format or disk[2] or "raw"}
    local readonly = disk.readonly
    if readonly == nil then readonly = disk[3] end
    d.readonly = readonly == true
    if type(d.path) ~= "string" or type(d.format) ~= "string"
        or (readonly ~= nil and type(readonly) ~= "boolean") then
      error("vm:boot: disks[" .. i .. "] needs path (string), format (string), readonly (boolean)", 2)
    end
    disks[i] = d
  end
  call("vm:boot", bridge.vm_boot, self._h, opts.memory, opts.cpus, opts.files or {}, disks)
  return self
end

-- The guest ops, one method each from the bridge's op table; it checks their arguments.
local function plains(n, a, b, ...)
  if n == 0 then return end
  if n <= 2 then return plain(a), plain(b) end
  return plain(a), plain(b), plains(n - 2, ...)
end

for _, name in ipairs(bridge.guest_ops) do
  local method = "vm:" .. name
  VM[name] = function(self, ...)
    is_vm(self, method)
    return guest(method, name, self._h, plains(select("#", ...), ...))
  end
end

local function exec(method, vm, cmd)
  return guest(method, "exec", vm._h, cmd)
end

local function shell_quote(s)
  return "'" .. string.gsub(s, "'", "'\\''") .. "'"
end

function VM:dmesg(pattern)
  is_vm(self, "vm:dmesg")
  check("vm:dmesg", 1, "pattern", pattern, "string", true)
  local cmd = "dmesg"
  if pattern then cmd = cmd .. " | grep -e " .. shell_quote(pattern) end
  local r = exec("vm:dmesg", self, cmd)
  if r.exit_code > 1 or (r.exit_code == 1 and not pattern) then
    error("vm:dmesg: " .. cmd .. " failed (exit " .. r.exit_code .. "): " .. r.stderr.value, 2)
  end
  return r.stdout.value
end

local VFS = {
  {"proc", "/proc"}, {"sysfs", "/sys"}, {"securityfs", "/sys/kernel/security"}, {"devtmpfs", "/dev"},
}

function VM:mount_vfs()
  is_vm(self, "vm:mount_vfs")
  local steps = {}
  for _, m in ipairs(VFS) do
    steps[#steps + 1] = string.format(
      "{ grep -q '^[^ ]* %s ' /proc/mounts || { mkdir -p %s && mount -t %s %s %s; }; }",
      m[2], m[2], m[1], m[1], m[2])
  end
  local r = exec("vm:mount_vfs", self, table.concat(steps, " && "))
  if not r.ok then
    error("vm:mount_vfs: mounting failed: " .. r.stderr.value, 2)
  end
end

function VM:wait_until(fn, opts)
  is_vm(self, "vm:wait_until")
  check("vm:wait_until", 1, "fn", fn, "function")
  check("vm:wait_until", 2, "opts", opts, "table", true)
  opts = opts or {}
  local timeout, interval, desc = opts.timeout or 10, opts.interval or 0.5, opts.desc or "condition"
  check("vm:wait_until", 2, "opts.timeout", timeout, "number")
  check("vm:wait_until", 2, "opts.interval", interval, "number")
  check("vm:wait_until", 2, "opts.desc", desc, "string")
  local deadline = bridge.now() + timeout
  while true do
    local value = fn()
    if value then return value end
    local remaining = deadline - bridge.now()
    if remaining <= 0 then
      error(string.format("vm:wait_until: %s not met within %g s", desc, timeout), 2)
    end
    sleep("vm:wait_until", math.min(interval, remaining))
  end
end

---------------------------------------------------------------- syscalls

local SYS_IOCTL = 16

-- v as an integer; the error points `level` calls up (default: the API method's caller).
local function integer(method, what, v, level)
  local i = math.tointeger(v)
  if i == nil then
    error(string.format("%s: %s must be an integer, got %s", method, what, math.type(v) or type(v)),
      level or 3)
  end
  return i
end

-- The syscall arguments (...) as integers (their count and the buffer indexes are checked
-- by the bridge, as every other limit of the syscall op).
local function int_args(method, n, ...)
  local args = {}
  for i = 1, n do
    args[i] = integer(method, "argument " .. (i - 1), (select(i, ...)), 4)
  end
  return args
end

-- {[index] = data} with integer indexes and string data.
local function buf_table(method, bufs)
  local out = {}
  for idx, data in pairs(bufs) do
    local i = math.tointeger(idx)
    if i == nil then
      error(method .. ": buffer index " .. tostring(idx) .. " must be an integer", 3)
    end
    data = plain(data)
    if type(data) ~= "string" then
      error(method .. ": buffer " .. i .. " must be a string, got " .. type(data), 3)
    end
    out[i] = data
  end
  return out
end

local function count(t)
  local n = 0
  for _ in pairs(t) do n = n + 1 end
  return n
end

-- Runs the syscall; returns ret, then buffers (index order), then pointer targets.
local function do_syscall(method, self, nr, args, bufs, ptrs)
  return guest(method, "syscall", self._h, nr, args, bufs, ptrs or {})
end

function VM:syscall(nr, ...)
  is_vm(self, "vm:syscall")
  nr = integer("vm:syscall", "nr", nr)
  local ret = do_syscall("vm:syscall", self, nr, int_args("vm:syscall", select("#", ...), ...), {})
  return ret
end

function VM:syscall_buf(nr, index, data, ...)
  is_vm(self, "vm:syscall_buf")
  nr = integer("vm:syscall_buf", "nr", nr)
  index = integer("vm:syscall_buf", "buf_arg_index", index)
  local bufs = buf_table("vm:syscall_buf", {[index] = data})
  local ret = do_syscall("vm:syscall_buf", self, nr, int_args("vm:syscall_buf", select("#", ...), ...), bufs)
  return ret
end

function VM:syscall_bufs(nr, bufs, ...)
  is_vm(self, "vm:syscall_bufs")
  nr = integer("vm:syscall_bufs", "nr", nr)
  check("vm:syscall_bufs", 2, "bufs_table", bufs, "table")
  bufs = buf_table("vm:syscall_bufs", bufs)
  return do_syscall("vm:syscall_bufs", self, nr, int_args("vm:syscall_bufs", select("#", ...), ...), bufs)
end

-- Pointer specs as the bridge wants them: {buf, offset, length, data}.
local function pointer_specs(method, specs, fixed_buf)
  local out = {}
  for i, spec in ipairs(specs) do
    if type(spec) ~= "table" then
      error(string.format("%s: pointer spec %d must be a table", method, i), 3)
    end
    local data = plain(spec.data)
    if data ~= nil and type(data) ~= "string" then
      error(string.format("%s: pointer spec %d: data must be a string", method, i), 3)
    end
    local len = spec.data_len or spec.buf_len or (data and #data)
    if len == nil then
      error(string.format("%s: pointer spec %d needs %s or data", method, i,
        fixed_buf and "buf_len" or "data_len"), 3)
    end
    local what = string.format("pointer spec %d", i)
    out[i] = {
      buf = fixed_buf or integer(method, what .. " buf_idx", spec.buf_idx, 4),
      offset = integer(method, what .. " ptr_offset", spec.ptr_offset, 4),
      length = integer(method, what .. (fixed_buf and " buf_len" or " data_len"), len, 4),
      data = data or "",
    }
  end
  return out
end

function VM:syscall_ptr(nr, bufs, ptrs, ...)
  is_vm(self, "vm:syscall_ptr")
  nr = integer("vm:syscall_ptr", "nr", nr)
  check("vm:syscall_ptr", 2, "bufs_table", bufs, "table")
  check("vm:syscall_ptr", 3, "ptrs_table", ptrs, "table")
  bufs = buf_table("vm:syscall_ptr", bufs)
  return do_syscall("vm:syscall_ptr", self, nr, int_args("vm:syscall_ptr", select("#", ...), ...), bufs,
    pointer_specs("vm:syscall_ptr", ptrs))
end

-- arg: a string (the argument points at a copy of it), an integer (passed as the value), or nil (0).
function VM:ioctl(fd, cmd, arg)
  is_vm(self, "vm:ioctl")
  fd = integer("vm:ioctl", "fd", fd)
  cmd = integer("vm:ioctl", "cmd", cmd)
  arg = plain(arg)
  if type(arg) == "string" then
    return do_syscall("vm:ioctl", self, SYS_IOCTL, {fd, cmd, 0}, {[2] = arg})
  end
  local value = arg == nil and 0 or math.tointeger(arg)
  if value == nil then
    error("vm:ioctl: argument 3 (arg) must be a string or an integer, got " .. (math.type(arg) or type(arg)), 2)
  end
  return (do_syscall("vm:ioctl", self, SYS_IOCTL, {fd, cmd, value}, {})), nil
end

function VM:ioctl_buf(fd, cmd, struct, specs)
  is_vm(self, "vm:ioctl_buf")
  fd = integer("vm:ioctl_buf", "fd", fd)
  cmd = integer("vm:ioctl_buf", "cmd", cmd)
  struct = plain(struct)
  check("vm:ioctl_buf", 3, "struct_data", struct, "string")
  check("vm:ioctl_buf", 4, "specs", specs, "table")
  return do_syscall("vm:ioctl_buf", self, SYS_IOCTL, {fd, cmd, 0}, {[2] = struct},
    pointer_specs("vm:ioctl_buf", specs, 2))
end

---------------------------------------------------------------- workers

function VM:spawn(opts)
  if getmt(self) ~= VM then
    error("spawn: only a VM can spawn workers (call vm:spawn(...))", 2)
  end
  check("vm:spawn", 1, "opts", opts, "table", true)
  opts = opts or {}
  known_options("vm:spawn", opts, {thread = true})
  check("vm:spawn", 1, "opts.thread", opts.thread, "boolean", true)
  local handle, pid, tid = call("vm:spawn", bridge.vm_spawn, self._h, opts.thread == true)
  return setmetatable({_h = handle, _name = self._name .. "/" .. tid, pid = pid, tid = tid}, Worker)
end

function VM:shutdown()
  is_vm(self, "vm:shutdown")
  call("vm:shutdown", bridge.vm_shutdown, self._h)
end

function VM:kill()
  is_vm(self, "vm:kill")
  call("vm:kill", bridge.vm_kill, self._h)
end

for name, fn in pairs(VM) do
  if name ~= "boot" and name ~= "shutdown" and name ~= "spawn" and name ~= "kill"
      and type(fn) == "function" and not name:match("^__") then
    Worker[name] = fn
  end
end
Worker.__tostring = function(self) return "Worker<" .. self._name .. ">" end

function Worker:kill()
  if getmt(self) ~= Worker then
    error("worker:kill: call it with ':' on a worker", 2)
  end
  call("worker:kill", bridge.worker_kill, self._h)
end

---------------------------------------------------------------- provium

provium = {}

function provium.create(profile)
  check("provium.create", 1, "profile", profile, "string")
  local handle = call("provium.create", bridge.create, profile)
  return new_vm(handle, profile)
end

function provium.fixture(name)
  check("provium.fixture", 1, "name", name, "string")
  local handle = call("provium.fixture", bridge.fixture, name)
  return new_vm(handle, name)
end

function provium.shutdown_all()
  call("provium.shutdown_all", bridge.shutdown_all)
end

function provium.path(name, profile)
  check("provium.path", 1, "name", name, "string")
  check("provium.path", 2, "profile", profile, "string", true)
  return call("provium.path", bridge.path, name, profile)
end

-- The errno of a guest op's error as pcall caught it (a failed vm:read_file: 2 for ENOENT); nil for
-- an error that carries none.
function provium.errno(err)
  check("provium.errno", 1, "err", err, "string")
  local info = raised_errors[err]
  return info and info.errno
end

local loaded = {}
local file_env -- the environment of the file being run (set by the runner function below)

-- Module-local require: NAME.lua or NAME/init.lua below the suite root or the file's directory.
function require(name)
  check("require", 1, "name", name, "string")
  if loaded[name] == nil then
    local source, chunkname = call("require", bridge.require_source, name)
    local chunk, message = raw_load(source, chunkname, "t", file_env)
    if not chunk then error(message, 2) end
    local result = chunk(name)
    loaded[name] = result == nil and true or result
  end
  return loaded[name]
end

local PACK_CODES = {u8 = "I1", u16 = "I2", i16 = "i2", u32 = "I4", i32 = "i4", u64 = "I8", i64 = "i8"}

-- The string.pack format for a provium format ("u32 u64" -> "<I4I8") and its type count.
local function pack_format(fn, fmt)
  check(fn, 1, "fmt", fmt, "string")
  local codes, n = {"<"}, 0
  for word in string.gmatch(fmt, "%S+") do
    local code = PACK_CODES[word]
    if not code then
      error(fn .. ": unknown type '" .. word .. "' (known: u8 u16 i16 u32 i32 u64 i64)", 3)
    end
    codes[#codes + 1] = code
    n = n + 1
  end
  return table.concat(codes), n
end

function provium.pack(fmt, ...)
  local format, n = pack_format("provium.pack", fmt)
  local count = select("#", ...)
  if count ~= n then
    error(string.format("provium.pack: format %q has %d types but %d values were given", fmt, n, count), 2)
  end
  local values = table.pack(...)
  for i = 1, n do
    if math.type(values[i]) ~= "integer" then
      error(string.format("provium.pack: value %d must be an integer, got %s", i,
        math.type(values[i]) or type(values[i])), 2)
    end
  end
  local ok, result = pcall(string.pack, format, ...)
  if not ok then
    error("provium.pack: " .. string.gsub(result, "^bad argument #(%d+) to 'string.pack' ", function(i)
      return "value " .. (tonumber(i) - 1) .. ": "
    end), 2)
  end
  return result
end

function provium.unpack(fmt, data)
  local format = pack_format("provium.unpack", fmt)
  data = plain(data)
  check("provium.unpack", 2, "data", data, "string")
  local need = string.packsize(format)
  if #data < need then
    error(string.format("provium.unpack: format %q needs %d bytes, data has %d", fmt, need, #data), 2)
  end
  local values = table.pack(string.unpack(format, data))
  return table.unpack(values, 1, values.n - 1)
end

---------------------------------------------------------------- rendering test values

-- A test value's __tostring runs when a report shows the value, under an instruction
-- budget shared by the whole rendering: one that never returns cannot hold the test.
-- Test code runs under deadline_hook, a rendering under over_budget; a coroutine moving
-- between the two (made in one, resumed in the other) switches hooks.
local BUDGET, BUDGET_STEP = 1000000, 1000
local budget, rendering = 0, false
local over_budget

-- Set once the deadline has passed: from then on the hook runs at every instruction and
-- fails each one of test code (never the harness's own), so a pcall in a loop cannot
-- swallow the deadline.
local expired_message = nil

-- Runs every million Lua instructions inside a test: ends Lua code that outlives the deadline.
local function deadline_hook()
  if rendering then
    sethook(over_budget, "", BUDGET_STEP)
    return over_budget()
  end
  if not expired_message then
    if select(3, gethook()) == 1 then -- a coroutine left over from an expired test
      sethook(deadline_hook, "", HOOK_EVERY)
    end
    expired_message = bridge.expired()
    if not expired_message then return end
    sethook(deadline_hook, "", 1)
  end
  if getinfo(2, "S").source ~= HARNESS then error(expired_message, 2) end
end

-- After a test or the file's top level: the next one starts with the ordinary hook.
local function reset_deadline_hook()
  sethook(deadline_hook, "", HOOK_EVERY)
  expired_message = nil
end

function over_budget()
  if not rendering then
    sethook(deadline_hook, "", HOOK_EVERY)
    return deadline_hook()
  end
  budget = budget - BUDGET_STEP
  if budget <= 0 then
    sethook(over_budget, "", 1) -- every further instruction fails too, also under a pcall
    error("instruction budget exhausted", 0)
  end
end

-- tostring(v), with v's __tostring under the budget; else a note on what went wrong.
local function budgeted_tostring(v, what)
  local mt = getmt(v)
  if mt == nil or rawget(mt, "__tostring") == nil then return tostring(v) end
  local note = "<" .. type(v) .. ": " .. what .. " whose __tostring "
  if budget <= 0 then return note .. "did not finish>" end
  local co = co_create(tostring)
  sethook(co, over_budget, "", BUDGET_STEP)
  local outer = rendering
  rendering = true
  local ok, result = co_resume(co, v)
  rendering = outer
  if ok then return result end
  if budget <= 0 then return note .. "did not finish>" end
  return note .. "failed: " .. (type(result) == "string" and result or type(result)) .. ">"
end

-- Starts a rendering's budget (a rendering inside a __tostring shares the outer one).
local function start_rendering()
  if not rendering then budget = BUDGET end
end

-- tostring(v) for a report (a message, an error value).
local function describe(v, what)
  start_rendering()
  return budgeted_tostring(v, what or "value")
end

-- v as a report shows it. A table's entries come from raw next (never __pairs), numeric
-- keys first in order, then the rest by their rendering; `path` holds the tables being shown.
local function render(v, depth, path)
  v = plain(v)
  if type(v) == "string" then return string.format("%q", v) end
  if type(v) ~= "table" then return budgeted_tostring(v, "value") end
  if path[v] then return "<cycle>" end
  if depth > 2 then return budgeted_tostring(v, "value") end
  path[v] = true
  local entries = {}
  for k, value in next, v do
    entries[#entries + 1] = {number = type(k) == "number" and k or nil, key = render(k, depth + 1, path),
                             value = render(value, depth + 1, path)}
  end
  path[v] = nil
  table.sort(entries, function(a, b)
    if a.number and b.number then return a.number < b.number end
    if a.number or b.number then return a.number ~= nil end
    return a.key < b.key
  end)
  local parts = {}
  for i, entry in ipairs(entries) do parts[i] = "[" .. entry.key .. "] = " .. entry.value end
  return "{" .. table.concat(parts, ", ") .. "}"
end

-- How assertions show a value: tables by content to depth 3, a back reference as <cycle>.
local function show(v)
  start_rendering()
  return render(v, 0, {})
end

---------------------------------------------------------------- assertions

-- Content equality; a pair of tables met again while being compared is assumed equal,
-- so isomorphic cyclic tables compare equal.
local function equal(a, b, seen)
  a, b = plain(a), plain(b)
  if a == b then return true end
  if type(a) ~= "table" or type(b) ~= "table" then return false end
  seen = seen or {}
  seen[a] = seen[a] or {}
  if seen[a][b] then return true end
  seen[a][b] = true
  for k, v in pairs(a) do
    if not equal(v, b[k], seen) then return false end
  end
  for k in pairs(b) do
    if a[k] == nil then return false end
  end
  return true
end

local Failure = {__metatable = false}

local function fail(message, fields)
  fields = fields or {}
  fields.message = message
  fields.where = where(3)
  error(setmetatable(fields, Failure), 0)
end

function assert(cond, message, ...)
  if not cond then
    fail(message ~= nil and describe(message) or "assertion failed!")
  end
  return cond, message, ...
end

function assert_eq(expected, actual, message)
  if not equal(expected, actual) then
    fail(message and ("assert_eq failed: " .. describe(message)) or "assert_eq failed",
      {expected = show(expected), actual = show(actual)})
  end
end

function assert_contains(haystack, needle, message)
  local h, n = plain(haystack), plain(needle)
  if type(h) ~= "string" or type(n) ~= "string" then
    fail("assert_contains: haystack and needle must be strings, got "
      .. type(h) .. " and " .. type(n))
  end
  if not string.find(h, n, 1, true) then
    fail(message and ("assert_contains failed: " .. describe(message)) or "assert_contains failed",
      {haystack = show(h), needle = show(n)})
  end
end

---------------------------------------------------------------- tests

local current_test = nil

function todo(reason)
  if current_test == nil then
    error("todo() must be called inside test()", 2)
  end
  error(setmetatable({reason = reason and describe(reason) or "todo"}, Todo), 0)
end

local function on_error(e)
  if e == Cancelled then return e end
  local trace = traceback("", 2)
  if getmt(e) == Todo then
    return {outcome = "skipped", message = e.reason}
  end
  if getmt(e) == Failure then
    return {outcome = "failed", message = e.message, where = e.where, expected = e.expected,
            actual = e.actual, haystack = e.haystack, needle = e.needle, traceback = trace}
  end
  local message = describe(e, "error value")
  local loc, rest = message:match("^([^:\n]+:%d+): (.*)$")
  local info = type(e) == "string" and raised_errors[e]
  if info and info.detail then -- an internal error: where in provium it happened
    trace = trace .. "\nPython traceback (a bug in provium):\n" .. info.detail
  end
  return {outcome = "error", message = rest or message, where = loc, traceback = trace}
end

-- The result for an error on_error never saw: Lua 5.4 raises "not enough memory" (and
-- "error in error handling") without calling the message handler. Frees what it can.
local function unhandled(e)
  collectgarbage()
  if e == "not enough memory" then
    return {outcome = "error", message = string.format(
      "the Lua memory limit (%g GiB per test file) was reached: not enough memory", bridge.max_memory / 2^30)}
  end
  return {outcome = "error", message = describe(e, "error value")}
end

---------------------------------------------------------------- tasks

-- A test runs as task 1 of a scope of its own (so do the file's top level and a fixture script); its
-- provium.go and provium.all start more tasks in that scope. Each task is a coroutine. A guest op (or
-- provium.sleep) of a task, while other tasks of its scope are alive, is queued on its VM's or worker's
-- lane (bridge.start) and the task yields until the op ends (bridge.collect): ops on different workers
-- and VMs overlap in the guest, ops on one worker run in the order they were queued. With one task alive
-- an op runs at once, as it always did. The first task to fail fails the scope: the others are cancelled
-- (never resumed; their ops in flight get bridge.cancel's grace, then their worker is killed). A scope
-- ends when every task has ended: a test waits for the tasks it started and did not wait for.
local co_yield, co_status, co_close, co_isyieldable = coroutine.yield, coroutine.status, coroutine.close,
  coroutine.isyieldable
local SCHED = {} -- first value of a task's yield to its scheduler (passed up through the test's coroutines)
local Task = {__metatable = false} -- what provium.go returns: a handle with :wait()
Task.__index = Task
local tasks_of = setmetatable({}, {__mode = "k"}) -- handle -> its task (kept out of the test's reach)
Task.__tostring = function(self) return "Task<started at " .. tasks_of[self].started_at .. ">" end

local scope = nil -- the running scope: {tasks, ready, blocked = {[ticket] = task}, live, running, failure}
local task_coroutines = setmetatable({}, {__mode = "k"}) -- only the scheduler resumes or closes these

-- A task: {scope, co, started_at (file:line; nil for task 1), waiters, ticket, done, results}.
local function new_task(fn, started_at)
  local task = {scope = scope, started_at = started_at, waiters = {}}
  task.co = co_create(function(...) return xpcall(fn, on_error, ...) end)
  task_coroutines[task.co] = true
  sethook(task.co, deadline_hook, "", HOOK_EVERY)
  scope.tasks[#scope.tasks + 1] = task
  scope.live = scope.live + 1
  return task
end

local function make_ready(task, values)
  task.scope.ready[#task.scope.ready + 1] = {task = task, values = values or {n = 0}}
end

-- A task's scope fails with `failure` (an on_error table, or an error on_error never saw), unless an
-- earlier task failed it already.
local function fail_scope(task, failure)
  local s = task.scope
  if failure ~= Cancelled and not s.failure then
    s.failure = type(failure) == "table" and failure or unhandled(failure)
    s.failed = task
  end
end

-- resumed: what co_resume answered when the task's coroutine ended (its xpcall's answer inside).
local function finish(task, resumed)
  local s = task.scope
  task.done, s.live = true, s.live - 1
  if not resumed[1] then
    fail_scope(task, resumed[2])
  elseif resumed[2] then
    task.results = table.pack(table.unpack(resumed, 3, resumed.n))
  else
    fail_scope(task, resumed[3])
  end
  for _, waiter in ipairs(task.waiters) do make_ready(waiter) end
end

-- Runs a task until it yields to the scheduler or ends.
local function resume_task(task, ...)
  local s = task.scope
  local outer = s.running
  s.running = task
  local resumed = table.pack(co_resume(task.co, ...))
  s.running = outer
  if co_status(task.co) == "dead" then return finish(task, resumed) end
  local kind, value = resumed[3], resumed[4]
  if resumed[2] ~= SCHED then
    fail_scope(task, {outcome = "error", where = task.started_at,
      message = "coroutine.yield outside a coroutine: a task (and a test) can only yield inside coroutine.create"})
  elseif kind == "op" then
    task.ticket, s.blocked[value] = value, task
  elseif value.done then -- "join" a task that has ended
    make_ready(task)
  else
    value.waiters[#value.waiters + 1] = task
  end
end

-- The tickets of the tasks blocked in an op, in the tasks' order.
local function blocked_tickets(s)
  local tickets = {}
  for _, task in ipairs(s.tasks) do
    if task.ticket and not task.done then tickets[#tickets + 1] = task.ticket end
  end
  return tickets
end

-- After a failure: what the cancelled tasks were, and what had to be killed, for the report.
local function cancel(s)
  local started, tickets = {}, blocked_tickets(s)
  for _, task in ipairs(s.tasks) do
    if not task.done then
      if task ~= s.failed then started[#started + 1] = task.started_at end
      task.done = true
      co_close(task.co)
    end
  end
  local notes = {}
  if s.failed and s.failed.started_at then
    notes[#notes + 1] = "the failing task was started at " .. s.failed.started_at
  end
  if #started > 0 then
    notes[#notes + 1] = "cancelled (not resumed again): the tasks started at " .. table.concat(started, ", ")
  end
  local killed = #tickets > 0 and select(2, bridge.cancel(tickets)) or ""
  if killed ~= "" then notes[#notes + 1] = killed end
  if #notes > 0 then
    s.failure.traceback = (s.failure.traceback or "") .. "\n" .. table.concat(notes, "\n")
  end
end

local function schedule(s)
  while true do
    while #s.ready > 0 and not s.failure do
      local entry = table.remove(s.ready, 1)
      resume_task(entry.task, table.unpack(entry.values, 1, entry.values.n))
    end
    if s.failure or s.live == 0 then return end
    local tickets = blocked_tickets(s)
    if #tickets == 0 then
      s.failure = {outcome = "error",
        message = "every task is waiting for another task to end: they would wait for each other forever"}
      return
    end
    local collected = table.pack(bridge.collect(tickets))
    local task = s.blocked[collected[1]]
    s.blocked[collected[1]], task.ticket = nil, nil
    make_ready(task, table.pack(table.unpack(collected, 2, collected.n)))
  end
end

-- Runs fn as task 1 of a new scope until all its tasks end: true and fn's results, or false and the
-- failure (the report table on_error makes) of the first task that failed.
local function run_scope(fn, ...)
  local outer = scope
  scope = {tasks = {}, ready = {}, blocked = {}, live = 0}
  local s = scope
  local root = new_task(fn, nil)
  make_ready(root, table.pack(...))
  local ok, err = pcall(schedule, s)
  if not ok then s.failure = s.failure or unhandled(err) end
  if s.failure then cancel(s) end
  scope = outer
  if s.failure then return false, s.failure end
  return true, table.unpack(root.results, 1, root.results.n)
end

-- The running task of the running scope, when it may yield to the scheduler; else nil.
local function yielding_task()
  local task = scope and scope.running
  if task and scope.live > 1 and not bridge.listing and co_isyieldable() then return task end
end

-- A task's op queued by bridge.start (answer: true, ticket, what), awaited: its values, or its error.
local function await(method, started)
  if not started[1] then return answer(method, started) end
  return answer(method, table.pack(co_yield(SCHED, "op", started[2])))
end

function guest(method, name, handle, ...)
  if scope and scope.failure then error(Cancelled, 0) end
  if yielding_task() then return await(method, table.pack(bridge.start(name, handle, ...))) end
  return call(method, bridge.guest, name, handle, ...)
end

function sleep(method, seconds)
  if scope and scope.failure then error(Cancelled, 0) end
  if yielding_task() then return await(method, table.pack(bridge.timer(seconds))) end
  return call(method, bridge.sleep, seconds)
end

local function where_called()
  return caller_line() or "?"
end

-- Starts fn in a new task of the running scope and runs it until it first waits; its Task.
local function go(method, fn, ...)
  if not (scope and scope.running) then
    error(method .. ": tasks can only be started by a test, a file's top level or a fixture script", 3)
  end
  local task = new_task(fn, where_called())
  resume_task(task, ...)
  if scope.failure then error(Cancelled, 0) end
  local handle = setmetatable({}, Task)
  tasks_of[handle] = task
  return handle
end

-- The task's results, once it has ended (a task that fails fails the test: its waiters never resume).
function Task:wait()
  local task = getmt(self) == Task and tasks_of[self]
  if not task then error("t:wait: call it with ':' on a task (t:wait())", 2) end
  if task.scope ~= scope then
    error("t:wait: the task was started by another test (a task belongs to the test that started it)", 2)
  end
  if not task.done then
    if scope.running == task then error("t:wait: a task cannot wait for itself", 2) end
    if not co_isyieldable() or not scope.running then
      error("t:wait: cannot wait here (inside a metamethod or a function called by C code)", 2)
    end
    co_yield(SCHED, "join", task)
  end
  return table.unpack(task.results, 1, task.results.n)
end

function provium.go(fn, ...)
  check("provium.go", 1, "fn", fn, "function")
  return go("provium.go", fn, ...)
end

function provium.all(...)
  local n = select("#", ...)
  for i = 1, n do check("provium.all", i, "fn", (select(i, ...)), "function") end
  if n > 0 and not co_isyieldable() then
    error("provium.all: cannot wait here (inside a metamethod or a function called by C code)", 2)
  end
  local tasks, results = {}, {}
  for i = 1, n do tasks[i] = go("provium.all", (select(i, ...))) end
  for i = 1, n do results[i] = table.pack(Task.wait(tasks[i])) end
  return results
end

function provium.sleep(seconds)
  check("provium.sleep", 1, "seconds", seconds, "number")
  if seconds < 0 or seconds ~= seconds then error("provium.sleep: seconds must be 0 or more, got " .. seconds, 2) end
  sleep("provium.sleep", seconds)
end

function test(name, opts, fn)
  local fn_index = 3
  if fn == nil then opts, fn, fn_index = {}, opts, 2 end
  check("test", 1, "name", name, "string")
  check("test", 2, "opts", opts, "table")
  check("test", fn_index, "fn", fn, "function")
  known_options("test", opts, {timeout = true, allow_warnings = true, kconfig = true, leak_check = true})
  check("test", 2, "opts.timeout", opts.timeout, "number", true)
  check("test", 2, "opts.allow_warnings", opts.allow_warnings, "boolean", true)
  check("test", 2, "opts.leak_check", opts.leak_check, "boolean", true)
  check("test", 2, "opts.kconfig", opts.kconfig, "table", true)
  for i, option in ipairs(opts.kconfig or {}) do
    if type(option) ~= "string" then
      error("test: argument 2 (opts.kconfig) must list option names, entry " .. i .. " is a " .. type(option), 2)
    end
  end
  if current_test ~= nil then
    error("test(): cannot nest test '" .. name .. "' inside test '" .. current_test .. "'", 2)
  end
  local started, skip = call("test", bridge.begin_test, name, where(2), opts.timeout, opts.allow_warnings == true,
    opts.kconfig or {}, opts.leak_check)
  if not started then
    return -- deselected, or only listing
  end
  if skip then -- a VM of the file already runs a kernel without the options
    call("test", bridge.end_test, {outcome = "skipped", message = skip})
    return
  end
  current_test = name
  local ok, result = run_scope(fn)
  reset_deadline_hook()
  current_test = nil
  if ok then
    result = {outcome = "passed"}
  elseif type(result) ~= "table" then
    result = unhandled(result)
  end
  call("test", bridge.end_test, result)
end

function print(...)
  local parts = table.pack(...)
  for i = 1, parts.n do parts[i] = tostring(parts[i]) end
  bridge.output(table.concat(parts, "\t", 1, parts.n) .. "\n")
end

---------------------------------------------------------------- the sandbox

-- A read-only view of t: reads go through, writes and metatable changes fail.
local protected = setmetatable({}, {__mode = "k"})
local function readonly(t, name, hidden)
  local view = setmetatable({}, {
    __index = function(_, key)
      if hidden and hidden[key] then
        error(name .. "." .. tostring(key) .. " is not available to test files", 2)
      end
      return t[key]
    end,
    __newindex = function(_, key)
      error(name .. " is read-only (cannot set " .. name .. "." .. tostring(key) .. ")", 2)
    end,
    __pairs = function() return next, t, nil end,
    __len = function() return #t end,
    __metatable = false,
  })
  protected[view] = true
  return view
end

local function only(t, keys)
  local out = {}
  for _, key in ipairs(keys) do out[key] = t[key] end
  return out
end

local function hide(...)
  local set = {}
  for _, key in ipairs{...} do set[key] = true end
  return set
end

-- The host path a test file may open: reads below the suite root or the scratch
-- directory, writes below the scratch directory (provium.path("@tmp")).
local function host_path(fn, path, write)
  check(fn, 1, "path", path, "string")
  return call(fn, bridge.host_path, path, write)
end

local function sandbox_open(path, mode)
  mode = mode or "r"
  check("io.open", 2, "mode", mode, "string")
  return raw_open(host_path("io.open", path, mode:find("[wa+]") ~= nil), mode)
end

local function sandbox_lines(path, ...)
  if path == nil then error("io.lines: reading standard input is not available to test files", 2) end
  return raw_lines(host_path("io.lines", path, false), ...)
end

local function sandbox_write(...)
  local parts = table.pack(...)
  for i = 1, parts.n do parts[i] = tostring(parts[i]) end
  bridge.output(table.concat(parts, "", 1, parts.n))
end

local function sandbox_load(chunk, chunkname, mode, env)
  if mode ~= nil and mode ~= "t" then
    error("load: only text chunks can be loaded (mode 't'), not mode '" .. tostring(mode) .. "'", 2)
  end
  return raw_load(chunk, chunkname, "t", env or file_env)
end

local GC_ALLOWED = {collect = true, count = true, step = true, isrunning = true}
local function sandbox_collectgarbage(opt, ...)
  if opt ~= nil and not GC_ALLOWED[opt] then
    error("collectgarbage('" .. tostring(opt) .. "') is not available to test files", 2)
  end
  return collectgarbage(opt, ...)
end

local function sandbox_rawset(t, key, value)
  if protected[t] then error("rawset: cannot change a harness table", 2) end
  return raw_rawset(t, key, value)
end

-- Coroutines get the deadline hook too, so a loop inside one still ends (one made while
-- rendering a value gets the rendering's budget instead).
local function sandbox_create(fn)
  local co = co_create(fn)
  if rendering then
    sethook(co, over_budget, "", BUDGET_STEP)
  else
    sethook(co, deadline_hook, "", HOOK_EVERY)
  end
  return co
end

-- resume for test files: a task's op inside a coroutine of the test's own yields to the scheduler
-- through it (the coroutine's resumer waits for the op with it), never to its resumer.
local function sandbox_resume(co, ...)
  if task_coroutines[co] then error("coroutine.resume: a task's coroutine is resumed by provium only", 2) end
  local results = table.pack(co_resume(co, ...))
  while results[1] and results[2] == SCHED and co_status(co) == "suspended" do
    results = table.pack(co_resume(co, co_yield(table.unpack(results, 2, results.n))))
  end
  return table.unpack(results, 1, results.n)
end

local function sandbox_wrap(fn)
  local co = sandbox_create(fn)
  return function(...)
    local results = table.pack(sandbox_resume(co, ...))
    if not results[1] then error(results[2], 2) end
    return table.unpack(results, 2, results.n)
  end
end

local coroutine_view = {}
for key, value in pairs(coroutine) do coroutine_view[key] = value end
coroutine_view.create, coroutine_view.wrap, coroutine_view.resume = sandbox_create, sandbox_wrap, sandbox_resume
coroutine_view.close = function(co)
  if task_coroutines[co] then error("coroutine.close: a task's coroutine is closed by provium only", 2) end
  return co_close(co)
end

local string_view = {}
for key, value in pairs(string) do string_view[key] = value end
string_view.dump = nil

local base = {
  _VERSION = _VERSION, assert = assert, error = error, ipairs = ipairs, next = next, pairs = pairs,
  pcall = pcall, xpcall = xpcall, select = select, tonumber = tonumber, tostring = tostring, type = type,
  rawequal = rawequal, rawget = rawget, rawlen = rawlen, rawset = sandbox_rawset,
  setmetatable = setmetatable, getmetatable = getmetatable, collectgarbage = sandbox_collectgarbage,
  load = sandbox_load, print = print, require = require,
  string = readonly(string_view, "string", hide("dump")),
  table = readonly(table, "table"), math = readonly(math, "math"), utf8 = readonly(utf8, "utf8"),
  coroutine = readonly(coroutine_view, "coroutine"),
  os = readonly(only(os, {"time", "clock", "date", "getenv", "difftime"}), "os",
    hide("execute", "exit", "remove", "rename", "tmpname", "setlocale")),
  io = readonly({open = sandbox_open, lines = sandbox_lines, write = sandbox_write, type = io.type}, "io",
    hide("popen", "read", "input", "output", "stdin", "stdout", "stderr", "tmpfile", "close")),
  provium = readonly(provium, "provium"),
  test = test, todo = todo, assert_eq = assert_eq, assert_contains = assert_contains,
}
local FORBIDDEN = hide("debug", "dofile", "loadfile", "package", "python", "loadstring", "module")
local base_meta = {
  __index = function(_, key)
    if FORBIDDEN[key] then error(tostring(key) .. " is not available to test files", 2) end
    return base[key]
  end,
  __metatable = false,
}

-- How the prompt shows a value: a table with a __tostring (a VM, a worker, a task) by it, others as
-- assertions show them.
local function prompt_show(v)
  local mt = getmt(v)
  if type(v) == "table" and mt and mt ~= StrMeta and rawget(mt, "__tostring") ~= nil then return describe(v) end
  return show(v)
end

-- A chunk typed at the prompt, compiled as the standalone `lua` does: as `return <chunk>` when that
-- compiles, else as statements. The first answer is the function, then whether it returns its values packed
-- (the chunk's first argument packs them: a call in the chunk is then no tail call, so errors keep its
-- line); or nil and the syntax error, then whether the chunk ends before its syntax does.
local function compile_typed(source, chunkname)
  local chunk, message = raw_load("return " .. source, chunkname, "t", file_env)
  if chunk then
    local packed = raw_load("return (...)(" .. source .. "\n)", chunkname, "t", file_env)
    return packed or chunk, packed ~= nil
  end
  local as_expression = message
  chunk, message = raw_load(source, chunkname, "t", file_env)
  if chunk then return chunk, false end
  return nil, message, as_expression:sub(-5) == "<eof>" or message:sub(-5) == "<eof>"
end

-- The prompt's evaluator (provium repl): runs a chunk typed at a prompt in the environment of the file
-- run last, as task 1 of a scope. Answers "incomplete" when the chunk ends before its syntax does (more
-- lines may complete it; nothing ran), "values" and a list of each value it returned as the prompt shows
-- it, or "failure" and its report (as a test's).
local function evaluate(source, chunkname)
  local chunk, packed, incomplete = compile_typed(source, chunkname)
  if not chunk then
    if incomplete then return "incomplete", nil end
    return "failure", {outcome = "error", message = packed}
  end
  reset_deadline_hook()
  local results = table.pack(pcall(run_scope, chunk, table.pack))
  sethook()
  -- the prompt is a file's top level: no test and no scope stays open after an interruption
  expired_message, scope, current_test = nil, nil, nil
  if not results[1] then return "failure", unhandled(results[2]) end -- interrupted while cancelling tasks
  if not results[2] then return "failure", results[3] end
  local values = packed and results[3] or table.pack(table.unpack(results, 3, results.n))
  local ok, shown = pcall(function()
    local shown = {}
    for i = 1, values.n do shown[i] = prompt_show(values[i]) end
    return shown
  end)
  if not ok then return "failure", unhandled(shown) end -- say, a string too long to show in memory
  return "values", shown
end

-- Runs a file's source in an environment of its own: a file-level error table or nil,
-- then the handle of a VM it returned. Then the prompt's evaluator.
return function(source, chunkname)
  file_env = setmetatable({}, base_meta)
  raw_rawset(file_env, "_G", file_env)
  local chunk, message = raw_load(source, chunkname, "t", file_env)
  if not chunk then
    return {outcome = "error", message = message}, nil
  end
  reset_deadline_hook()
  local ok, result = run_scope(chunk)
  sethook()
  expired_message = nil
  if not ok then return type(result) == "table" and result or unhandled(result), nil end
  if getmt(result) == VM then return nil, result._h end
  return nil, nil
end, evaluate
