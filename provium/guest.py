"""Ops that run in a guest process reached through one agent channel: the Python face of the agent's
op table (docs/protocol.md), shared by a VM's main worker (Vm) and the workers it spawns (Worker)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

from . import protocol
from .agent_client import ConnectionLost
from .errors import AgentError, ArgumentError, VmStateError

if TYPE_CHECKING:
    from .vm import Vm


@dataclass(frozen=True)
class ExecResult:
    exit_code: int
    stdout: bytes
    stderr: bytes

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


class Job(NamedTuple):
    """A background job: its id in the worker that runs it, and the pid of its shell."""

    id: int
    pid: int


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


class SyscallResult(NamedTuple):
    ret: int  # the kernel's raw result: a negative errno on failure
    bufs: tuple[bytes, ...]  # every buffer after the call, in argument index order
    ptrs: tuple[bytes, ...]  # every pointer target after the call, in spec order


def check_syscall(args: list[int], bufs: dict[int, bytes], ptrs: list[Pointer]) -> None:
    """Raise ArgumentError for arguments the agent would refuse, before anything runs."""
    limit = protocol.SYSCALL_MAX_ARGS
    for index in bufs:
        if not 0 <= index < limit:
            raise ArgumentError(f"buffer index {index} must be an integer from 0 to {limit - 1}")
    if len(args) > limit:
        raise ArgumentError(f"at most {limit} syscall arguments, got {len(args)}")
    for n, ptr in enumerate(ptrs, 1):
        if ptr.buf not in bufs:
            raise ArgumentError(f"pointer spec {n}: buf_idx {ptr.buf} names no buffer argument")
        if ptr.offset < 0 or ptr.offset + 8 > len(bufs[ptr.buf]):
            raise ArgumentError(f"pointer spec {n}: ptr_offset {ptr.offset} does not leave 8 bytes "
                                f"in buffer {ptr.buf} of {len(bufs[ptr.buf])} bytes")
        if ptr.length < 0 or len(ptr.data) > ptr.length:
            raise ArgumentError(f"pointer spec {n}: data_len {ptr.length} is negative or shorter "
                                f"than its data ({len(ptr.data)} bytes)")


def _snippet(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return repr(text if len(text) <= limit else text[:limit] + "...")


class GuestOps:
    """Ops that run in a guest process reached through one agent channel. Errors are AgentError
    (with the guest's errno when it has one) or ArgumentError (refused before anything runs)."""

    def _request(self, op: str, timeout: float | None = None, /, **fields) -> dict:
        raise NotImplementedError

    def _link(self) -> tuple[Vm, int]:
        """The VM and the agent channel of this process."""
        raise NotImplementedError

    def syscall(self, nr: int, args: list[int] = (), bufs: dict[int, bytes] | None = None,
                ptrs: list[Pointer] = ()) -> SyscallResult:
        """Raw syscall. bufs: {argument index: bytes}, each replacing that argument with a pointer to a copy."""
        args, bufs, ptrs = list(args), dict(bufs) if bufs else {}, list(ptrs)
        check_syscall(args, bufs, ptrs)
        if bufs:
            args += [0] * (max(bufs) + 1 - len(args))
        reply = self._request(
            "syscall", nr=nr, args=args, bufs=[[i, bufs[i]] for i in sorted(bufs)],
            ptrs=[[p.buf, p.offset, p.length, p.data] for p in ptrs])
        return SyscallResult(reply["ret"], tuple(reply["bufs"]), tuple(reply["ptrs"]))

    def background(self, cmd: str | bytes) -> Job:
        """Start `sh -c cmd` in the background. Bytes reach the guest unchanged."""
        reply = self._request("background", cmd=cmd)
        return Job(reply["job"], reply["pid"])

    def job_wait(self, job: int, timeout: float | None = None) -> JobResult:
        """The job's output so far and its state; waits up to `timeout` seconds (None: until it ends)."""
        fields = {} if timeout is None else {"timeout_ms": max(0, int(timeout * 1000))}
        op_timeout = None if timeout is None else timeout + 60.0
        return self._job_result(self._request("job_wait", op_timeout, job=job, **fields))

    def job_kill(self, job: int) -> JobResult:
        """Kill the job's process group; its final result."""
        return self._job_result(self._request("job_kill", job=job))

    @staticmethod
    def _job_result(reply: dict) -> JobResult:
        return JobResult(reply["running"], reply.get("exit_code"), reply.get("stdout", b""),
                         reply.get("stderr", b""), reply.get("truncated", False))

    def exec(self, cmd: str | bytes) -> ExecResult:
        """Run `sh -c cmd`; binary stdout and stderr. Bytes reach the guest unchanged."""
        reply = self._request("exec", cmd=cmd)
        return ExecResult(reply["exit_code"], reply.get("stdout", b""), reply.get("stderr", b""))

    def json(self, cmd: str | bytes) -> object:
        """Run `sh -c cmd` and decode its stdout as JSON; AgentError when it fails or prints no JSON."""
        result = self.exec(cmd)
        shown = cmd.decode("utf-8", "surrogateescape") if isinstance(cmd, bytes) else cmd
        out = result.stdout.decode("utf-8", "replace")
        if not result.ok:
            raise AgentError(f"vm:json: {shown!r} failed (exit {result.exit_code}): "
                             f"{_snippet(result.stderr.decode('utf-8', 'replace') or out)}")
        try:
            return json.loads(out)
        except json.JSONDecodeError as exc:
            raise AgentError(f"vm:json: {shown!r} printed invalid JSON ({exc.msg} at line {exc.lineno} "
                             f"column {exc.colno}): {_snippet(out)}") from None

    def read_file(self, path: str | bytes) -> bytes:
        return self._request("read_file", path=path).get("data", b"")

    def write_file(self, path: str | bytes, data: bytes, mode: int = 0o644) -> None:
        chunks = [data[i:i + protocol.CHUNK] for i in range(0, len(data), protocol.CHUNK)] or [b""]
        for index, chunk in enumerate(chunks):
            self._request("write_file", path=path, data=chunk, append=index > 0, mode=mode)


    def terminal(self, rows: int, cols: int, term: str, prompt: bytes) -> int:
        """Start an interactive shell on a pseudo-terminal of `rows` x `cols` in this process's context (its
        credentials, Landlock domain, seccomp filter, cwd and open descriptors); its pid. Its output and its
        end arrive as terminal_event()s. One at a time per process."""
        vm, channel = self._link()
        if vm.state != "running":
            raise VmStateError(f"VM {vm.name!r} is not running ({vm.state}): cannot open a terminal")
        vm.client.listen(channel)
        try:
            return self._request("pty_open", rows=rows, cols=cols, term=term, prompt=prompt)["pid"]
        except BaseException:
            vm.client.unlisten(channel)
            raise

    def terminal_event(self, timeout: float) -> dict | None:
        """The terminal's next event within `timeout` seconds: {"event": "pty_output", "data": bytes} or
        {"event": "pty_exit", "exit_code": int}; None when none came. What failed the process's ops meanwhile
        (the VM died, a kernel report) is raised."""
        vm, channel = self._link()
        try:
            return vm.client.next_event(channel, timeout)
        except ConnectionLost:
            raise vm._lost("the terminal") from None

    def terminal_write(self, data: bytes) -> None:
        """Type `data` into the terminal."""
        self._request("pty_write", data=data)

    def terminal_resize(self, rows: int, cols: int) -> None:
        self._request("pty_resize", rows=rows, cols=cols)

    def terminal_closed(self) -> None:
        """Stop keeping the terminal's events (after its pty_exit, or when the session is given up)."""
        vm, channel = self._link()
        vm.client.unlisten(channel)


class Worker(GuestOps):
    """A guest process (or thread) of its own, created by Vm.spawn."""

    def __init__(self, vm: Vm, channel: int, pid: int, tid: int, thread: bool):
        self.vm, self.channel, self.pid, self.tid, self.thread = vm, channel, pid, tid, thread
        self.killed = False

    def __repr__(self):
        return f"<Worker {'thread' if self.thread else 'process'} {self.tid} of {self.vm.name}>"

    def _request(self, op: str, timeout: float | None = None, /, **fields) -> dict:
        if self.killed:
            raise VmStateError(f"worker {self.tid} was killed: cannot {op}")
        return self.vm._call(self.channel, op, timeout, **fields)

    def _link(self) -> tuple[Vm, int]:
        return self.vm, self.channel

    def kill(self) -> None:
        """End the worker (a thread worker ends when it next waits for a request). An op on it still in
        flight (in another thread) fails."""
        if not self.killed and self.vm.state == "running":
            self.vm._call(protocol.ROUTER_CHANNEL, "kill_worker", None, channel=self.channel)
            self.vm.client.abandon(self.channel, VmStateError(f"worker {self.tid} was killed while an op ran on it"))
        self.killed = True
