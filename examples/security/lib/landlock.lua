-- Landlock rulesets from Lua (include/uapi/linux/landlock.h).
local sys = require("lib.sys")
local M = {}

M.ACCESS = {EXECUTE = 1 << 0, WRITE_FILE = 1 << 1, READ_FILE = 1 << 2, READ_DIR = 1 << 3,
            REMOVE_DIR = 1 << 4, REMOVE_FILE = 1 << 5, MAKE_REG = 1 << 8}
local RULE_PATH_BENEATH, CREATE_RULESET_VERSION = 1, 1

function M.abi(vm)
  return vm:syscall(sys.nr.landlock_create_ruleset, 0, 0, CREATE_RULESET_VERSION)
end

-- Restricts the calling VM or worker: `handled` accesses are denied except below
-- each path of `allow` ({path = accesses}).
function M.restrict(vm, handled, allow)
  local ruleset = vm:syscall_buf(sys.nr.landlock_create_ruleset, 0, provium.pack("u64", handled), 0, 8, 0)
  assert(ruleset >= 0, "landlock_create_ruleset: " .. ruleset)
  for path, access in pairs(allow) do
    local dir = sys.openat(vm, path, sys.O_PATH | sys.O_DIRECTORY)
    assert(dir >= 0, "open " .. path .. ": " .. dir)
    -- struct landlock_path_beneath_attr { u64 allowed_access; s32 parent_fd; } __packed
    local attr = provium.pack("u64 i32", access, dir)
    assert_eq(0, vm:syscall_buf(sys.nr.landlock_add_rule, 2, attr, ruleset, RULE_PATH_BENEATH, 0, 0))
    vm:syscall(sys.nr.close, dir)
  end
  assert_eq(0, vm:syscall(sys.nr.prctl, sys.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))
  assert_eq(0, vm:syscall(sys.nr.landlock_restrict_self, ruleset, 0))
end

return M
