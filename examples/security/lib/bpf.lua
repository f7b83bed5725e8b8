-- A classic-BPF assembler for seccomp filters (linux/filter.h, linux/seccomp.h).
local M = {}

M.LD_W_ABS, M.JMP_JEQ_K, M.RET_K = 0x20, 0x15, 0x06
M.SECCOMP_RET_ALLOW, M.SECCOMP_RET_ERRNO = 0x7fff0000, 0x00050000
M.SECCOMP_MODE_FILTER = 2
M.AUDIT_ARCH_X86_64 = 0xc000003e
M.DATA_NR, M.DATA_ARCH = 0, 4 -- offsets in struct seccomp_data

-- struct sock_filter { u16 code; u8 jt; u8 jf; u32 k; }
function M.insn(code, jt, jf, k) return provium.pack("u16 u8 u8 u32", code, jt, jf, k) end

-- A filter that makes each syscall in `errnos` ({nr = errno}) fail with that errno
-- and allows every other one, for x86-64 only.
function M.errno_filter(errnos)
  local prog = {M.insn(M.LD_W_ABS, 0, 0, M.DATA_ARCH), M.insn(M.JMP_JEQ_K, 1, 0, M.AUDIT_ARCH_X86_64),
                M.insn(M.RET_K, 0, 0, M.SECCOMP_RET_ERRNO | 1), M.insn(M.LD_W_ABS, 0, 0, M.DATA_NR)}
  for nr, errno in pairs(errnos) do
    prog[#prog + 1] = M.insn(M.JMP_JEQ_K, 0, 1, nr)
    prog[#prog + 1] = M.insn(M.RET_K, 0, 0, M.SECCOMP_RET_ERRNO | errno)
  end
  prog[#prog + 1] = M.insn(M.RET_K, 0, 0, M.SECCOMP_RET_ALLOW)
  return table.concat(prog), #prog
end

-- Installs the filter in the calling VM or worker: prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog),
-- with struct sock_fprog { u16 len; (pad); struct sock_filter *filter; } built by syscall_ptr.
function M.install(vm, filter, count)
  local sys = require("lib.sys")
  assert_eq(0, vm:syscall(sys.nr.prctl, sys.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))
  local fprog = provium.pack("u16 u16 u32 u64", count, 0, 0, 0)
  return vm:syscall_ptr(sys.nr.prctl, {[2] = fprog},
    {{buf_idx = 2, ptr_offset = 8, data_len = #filter, data = filter}},
    sys.PR_SET_SECCOMP, M.SECCOMP_MODE_FILTER, 0)
end

return M
