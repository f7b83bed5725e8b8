-- x86-64 syscall numbers, errno values and constants the security tests use.
return {
  nr = {read = 0, write = 1, open = 2, close = 3, pread64 = 17, pwrite64 = 18, socket = 41, getpid = 39,
        getppid = 110, capget = 125, capset = 126, prctl = 157, gettid = 186, openat = 257,
        landlock_create_ruleset = 444, landlock_add_rule = 445, landlock_restrict_self = 446},
  errno = {EPERM = 1, ENOENT = 2, EXDEV = 18, EINVAL = 22, EACCES = 13},
  AT_FDCWD = -100,
  O_RDONLY = 0, O_WRONLY = 1, O_CREAT = 0x40, O_PATH = 0x200000, O_DIRECTORY = 0x10000,
  PR_SET_NO_NEW_PRIVS = 38, PR_GET_NO_NEW_PRIVS = 39, PR_SET_SECCOMP = 22,
  -- openat(path, flags) in a VM or worker; returns the fd or a negative errno
  openat = function(vm, path, flags, mode)
    return vm:syscall_buf(257, 1, path .. "\0", -100, 0, flags, mode or 0)
  end,
}
