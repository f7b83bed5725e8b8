"""Ops that run in a guest process reached through one agent channel: the Python face of the agent's
op table (docs/protocol.md), shared by a VM's main worker (Vm) and the workers it spawns (Worker)."""

from dataclasses import dataclass

from . import protocol
from .errors import ConfigError, VmStateError


@dataclass(frozen=True)
class ExecResult:
    exit_code: int
    stdout: bytes
    stderr: bytes

    @property
    def ok(self):
        return self.exit_code == 0


@dataclass(frozen=True)
class JobResult:
    running: bool
    exit_code: int | None
    stdout: bytes
    stderr: bytes
    truncated: bool


@dataclass(frozen=True)
class Pointer:
    """A guest buffer of `length` bytes (`data` first, zeros after) whose address
    is written as a little-endian u64 into syscall buffer `buf` at `offset`."""

    buf: int
    offset: int
    length: int
    data: bytes = b""


MAX_SYSCALL_ARGS = 6


def check_syscall(args, bufs, ptrs):
    """Raise ConfigError for arguments the agent would refuse, before anything runs."""
    if len(args) > MAX_SYSCALL_ARGS:
        raise ConfigError(f"a syscall takes at most {MAX_SYSCALL_ARGS} arguments, not {len(args)}")
    for index in bufs:
        if not 0 <= index < MAX_SYSCALL_ARGS:
            raise ConfigError(f"buffer argument index {index} is outside 0..{MAX_SYSCALL_ARGS - 1}")
    for n, ptr in enumerate(ptrs, 1):
        if ptr.buf not in bufs:
            raise ConfigError(f"pointer spec {n}: buf_idx {ptr.buf} names no buffer argument")
        if ptr.offset < 0 or ptr.offset + 8 > len(bufs[ptr.buf]):
            raise ConfigError(f"pointer spec {n}: ptr_offset {ptr.offset} does not leave 8 bytes "
                              f"in buffer {ptr.buf} of {len(bufs[ptr.buf])} bytes")
        if ptr.length < 0 or len(ptr.data) > ptr.length:
            raise ConfigError(f"pointer spec {n}: data_len {ptr.length} is negative or shorter "
                              f"than its data ({len(ptr.data)} bytes)")


class GuestOps:
    """Ops that run in a guest process reached through one agent channel."""

    def _request(self, op, timeout=None, /, **fields):
        raise NotImplementedError

    def syscall(self, nr, args=(), bufs=None, ptrs=()):
        """Raw syscall: (return value, buffers after the call in index order, pointer targets in order).

        bufs: {argument index: bytes}, each replacing that argument with a pointer to a copy.
        """
        bufs = dict(bufs or {})
        args = list(args) + [0] * (max(bufs, default=-1) + 1 - len(args))
        check_syscall(args, bufs, ptrs)
        order = sorted(bufs)
        reply = self._request(
            "syscall", nr=nr, args=args, bufs=[[i, bufs[i]] for i in order],
            ptrs=[[p.buf, p.offset, p.length, p.data] for p in ptrs])
        return reply["ret"], reply["bufs"], reply["ptrs"]

    def background(self, cmd: str | bytes) -> tuple[int, int]:
        """Start `sh -c cmd` in the background: (job id, pid). Bytes reach the guest unchanged."""
        reply = self._request("background", cmd=cmd)
        return reply["job"], reply["pid"]

    def job_wait(self, job, timeout=None):
        """The job's output so far and its state; waits up to `timeout` seconds (None: until it ends)."""
        fields = {} if timeout is None else {"timeout_ms": max(0, int(timeout * 1000))}
        op_timeout = None if timeout is None else timeout + 60.0
        return self._job_result(self._request("job_wait", op_timeout, job=job, **fields))

    def job_kill(self, job):
        """Kill the job's process group; its final result."""
        return self._job_result(self._request("job_kill", job=job))

    @staticmethod
    def _job_result(reply):
        return JobResult(reply["running"], reply.get("exit_code"), reply.get("stdout", b""),
                         reply.get("stderr", b""), reply.get("truncated", False))

    def exec(self, cmd: str | bytes) -> "ExecResult":
        """Run `sh -c cmd`; an ExecResult with binary stdout and stderr. Bytes reach the guest unchanged."""
        reply = self._request("exec", cmd=cmd)
        return ExecResult(reply["exit_code"], reply.get("stdout", b""), reply.get("stderr", b""))

    def read_file(self, path: str | bytes) -> bytes:
        return self._request("read_file", path=path).get("data", b"")

    def write_file(self, path: str | bytes, data: bytes, mode: int = 0o644) -> None:
        chunks = [data[i:i + protocol.CHUNK] for i in range(0, len(data), protocol.CHUNK)] or [b""]
        for index, chunk in enumerate(chunks):
            self._request("write_file", path=path, data=chunk, append=index > 0, mode=mode)


class Worker(GuestOps):
    """A guest process (or thread) of its own, created by Vm.spawn."""

    def __init__(self, vm, channel, pid, tid, thread):
        self.vm, self.channel, self.pid, self.tid, self.thread = vm, channel, pid, tid, thread
        self.killed = False

    def __repr__(self):
        return f"<Worker {'thread' if self.thread else 'process'} {self.tid} of {self.vm.name}>"

    def _request(self, op, timeout=None, /, **fields):
        if self.killed:
            raise VmStateError(f"worker {self.tid} was killed: cannot {op}")
        return self.vm._call(self.channel, op, timeout, **fields)

    def kill(self):
        """End the worker (a thread worker ends when it next waits for a request)."""
        if not self.killed and self.vm.state == "running":
            self.vm._call(protocol.ROUTER_CHANNEL, "kill_worker", None, channel=self.channel)
        self.killed = True
