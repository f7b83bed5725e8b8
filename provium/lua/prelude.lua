-- The Lua face of Provium: the provium table, VM objects, test(), todo() and
-- the assertions. Python hands in `bridge`, a table of functions that return
-- (true, results...) or (false, message); everything users see is defined here
-- so that errors carry the test file's own file:line.
local bridge = ...

local function where(level)
  local info = debug.getinfo(level + 1, "Sl")
  if info and info.currentline and info.currentline > 0 then
    return info.short_src .. ":" .. info.currentline
  end
  return "?"
end

-- Calls a bridge function; raises its error message at the API caller's line.
local function call(fn, ...)
  local result = table.pack(fn(...))
  if not result[1] then
    error(result[2], 3)
  end
  return table.unpack(result, 2, result.n)
end

local function check(method, index, name, value, expected, optional)
  if value == nil and optional then return end
  if type(value) ~= expected then
    error(string.format("%s: argument %d (%s) must be a %s, got %s",
      method, index, name, expected, type(value)), 3)
  end
end

---------------------------------------------------------------- strings

local StrMeta = {}
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
  if getmetatable(v) == StrMeta then return v.value end
  return v
end

---------------------------------------------------------------- VMs

local VM = {}
VM.__index = VM
VM.__tostring = function(self) return "VM<" .. self._name .. ">" end

local function new_vm(handle, name)
  return setmetatable({_h = handle, _name = name}, VM)
end

local function is_vm(self, method)
  if getmetatable(self) ~= VM then
    error(method .. ": call it with ':' on a VM (vm:" .. method:match("[^:]+$") .. "(...))", 3)
  end
end

function VM:boot(opts)
  is_vm(self, "vm:boot")
  check("vm:boot", 1, "opts", opts, "table", true)
  opts = opts or {}
  for key in pairs(opts) do
    if key ~= "memory" and key ~= "cpus" then
      error("vm:boot: unknown option '" .. tostring(key) .. "' (known: memory, cpus)", 2)
    end
  end
  check("vm:boot", 1, "opts.memory", opts.memory, "string", true)
  if opts.cpus ~= nil and math.type(opts.cpus) ~= "integer" then
    error("vm:boot: option cpus must be an integer, got " .. type(opts.cpus), 2)
  end
  call(bridge.vm_boot, self._h, opts.memory, opts.cpus)
  return self
end

function VM:exec(cmd)
  is_vm(self, "vm:exec")
  check("vm:exec", 1, "cmd", cmd, "string")
  local code, out, err = call(bridge.vm_exec, self._h, cmd)
  return {ok = code == 0, exit_code = code, stdout = wrap(out), stderr = wrap(err)}
end

function VM:read_file(path)
  is_vm(self, "vm:read_file")
  check("vm:read_file", 1, "path", path, "string")
  return call(bridge.vm_read_file, self._h, path)
end

function VM:write_file(path, data)
  is_vm(self, "vm:write_file")
  check("vm:write_file", 1, "path", path, "string")
  data = plain(data)
  check("vm:write_file", 2, "data", data, "string")
  call(bridge.vm_write_file, self._h, path, data)
end

function VM:shutdown()
  is_vm(self, "vm:shutdown")
  call(bridge.vm_shutdown, self._h)
end

function VM:kill()
  is_vm(self, "vm:kill")
  call(bridge.vm_kill, self._h)
end

---------------------------------------------------------------- provium

provium = {}

function provium.create(profile)
  check("provium.create", 1, "profile", profile, "string")
  local handle = call(bridge.create, profile)
  return new_vm(handle, profile)
end

function provium.shutdown_all()
  call(bridge.shutdown_all)
end

---------------------------------------------------------------- assertions

local function show(v, depth)
  v = plain(v)
  depth = depth or 0
  if type(v) == "string" then return string.format("%q", v) end
  if type(v) ~= "table" or depth > 2 then return tostring(v) end
  local keys = {}
  for k in pairs(v) do keys[#keys + 1] = k end
  table.sort(keys, function(a, b) return tostring(a) < tostring(b) end)
  local parts = {}
  for _, k in ipairs(keys) do
    parts[#parts + 1] = "[" .. show(k, depth + 1) .. "] = " .. show(v[k], depth + 1)
  end
  return "{" .. table.concat(parts, ", ") .. "}"
end

local function equal(a, b)
  a, b = plain(a), plain(b)
  if a == b then return true end
  if type(a) ~= "table" or type(b) ~= "table" then return false end
  for k, v in pairs(a) do
    if not equal(v, b[k]) then return false end
  end
  for k in pairs(b) do
    if a[k] == nil then return false end
  end
  return true
end

local Failure = {}

local function fail(message, fields)
  fields = fields or {}
  fields.message = message
  fields.where = where(3)
  error(setmetatable(fields, Failure), 0)
end

function assert(cond, message, ...)
  if not cond then
    fail(message ~= nil and tostring(message) or "assertion failed!")
  end
  return cond, message, ...
end

function assert_eq(expected, actual, message)
  if not equal(expected, actual) then
    fail(message and ("assert_eq failed: " .. tostring(message)) or "assert_eq failed",
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
    fail(message and ("assert_contains failed: " .. tostring(message)) or "assert_contains failed",
      {haystack = show(h), needle = show(n)})
  end
end

---------------------------------------------------------------- tests

local Todo = {}
local current_test = nil

function todo(reason)
  if current_test == nil then
    error("todo() must be called inside test()", 2)
  end
  error(setmetatable({reason = reason and tostring(reason) or "todo"}, Todo), 0)
end

local function on_error(e)
  local traceback = debug.traceback("", 2)
  if getmetatable(e) == Todo then
    return {outcome = "skipped", message = e.reason}
  end
  if getmetatable(e) == Failure then
    return {outcome = "failed", message = e.message, where = e.where, expected = e.expected,
            actual = e.actual, haystack = e.haystack, needle = e.needle, traceback = traceback}
  end
  local message = tostring(e)
  local loc, rest = message:match("^([^:\n]+:%d+): (.*)$")
  return {outcome = "error", message = rest or message, where = loc, traceback = traceback}
end

function test(name, fn)
  check("test", 1, "name", name, "string")
  check("test", 2, "fn", fn, "function")
  if current_test ~= nil then
    error("test(): cannot nest test '" .. name .. "' inside test '" .. current_test .. "'", 2)
  end
  current_test = name
  call(bridge.begin_test, name, where(2))
  local ok, result = xpcall(fn, on_error)
  current_test = nil
  if ok then result = {outcome = "passed"} end
  call(bridge.end_test, result)
end

function print(...)
  local parts = table.pack(...)
  for i = 1, parts.n do parts[i] = tostring(parts[i]) end
  bridge.output(table.concat(parts, "\t", 1, parts.n) .. "\n")
end

-- Runs a test file's source; returns nil or a file-level error table.
return function(source, chunkname)
  local chunk, message = load(source, chunkname, "t")
  if not chunk then
    return {outcome = "error", message = message}
  end
  local ok, result = xpcall(chunk, on_error)
  if not ok then return result end
end
