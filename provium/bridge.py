"""The boundary between a test file's Lua and the Python core: one table of guest ops, one guard.

Lua reaches Python only through the `bridge` table built here (VMs are
integer handles). Every bridge function answers (true, values...) or
(false, message, kind, errno, detail): the prelude raises the message at the
test file's own line, remembers the errno for provium.errno(err), and adds a
Python traceback (detail) to an internal error's report.

A guest op (what the agent serves: docs/protocol.md) is one row of GUEST_OPS:
its name, its handler (the guest.GuestOps method), its parameters (checked
here, before anything runs), what it answers while only listing tests, and
how its result reaches Lua. The prelude makes `vm:NAME` (and the worker
method) of every row marked `method`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass

import lupa.lua54 as lua

from . import deadline
from .errors import AgentError, ArgumentError, DeadlineError, ProviumError
from .guest import ExecResult, GuestOps, Job, JobResult, Pointer, SyscallResult, Worker
from .lanes import Lanes

# Kinds of a failure as the prelude sees them.
ERROR, ARGUMENT, SKIP, INTERNAL = b"error", b"argument", b"skip", b"internal"


class NotHere(ProviumError):
    """The test cannot run on this kernel (it lacks options the test needs): the test is skipped."""


def lua_type(value: object) -> str:
    """The Lua type name of a value as lupa hands it to Python."""
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "float"
    if isinstance(value, bytes):
        return "string"
    return lua.lua_type(value) or "userdata"


def text(value: object) -> object:
    """A Lua string as Python text (bytes that are not UTF-8 kept by surrogateescape)."""
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value


@dataclass(frozen=True)
class Param:
    """A parameter of a guest op: `kind` is the check and conversion of its Lua value."""

    name: str
    kind: Callable[[object], object]  # the value as Python wants it; raises TypeError(what it must be)
    optional: bool = False

    def convert(self, index: int, value: object) -> object:
        if value is None and self.optional:
            return None
        try:
            return self.kind(value)
        except TypeError as exc:
            got = lua_type(value)
            got = "number" if got in ("integer", "float") and "integer" not in str(exc) else got
            raise ArgumentError(f"argument {index} ({self.name}) must be {exc}, got {got}") from None


def string(value: object) -> bytes:
    if not isinstance(value, bytes):
        raise TypeError("a string")
    return value


def integer(value: object) -> int:
    """An integer, or a float with an integral value (as Lua's math.tointeger)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise TypeError("an integer")


def number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError("a number")
    return value


def job(value: object) -> int:
    """The id in the table vm:background returned."""
    job_id = value[b"id"] if lua_type(value) == "table" else None
    if not isinstance(job_id, int) or isinstance(job_id, bool):
        raise TypeError("the table vm:background returned")
    return job_id


def table(value: object) -> object:
    if lua.lua_type(value) != "table":
        raise TypeError("a table")
    return value


def sequence(value) -> list:
    """A Lua array (1..n) as a list."""
    return [value[i] for i in range(1, len(value) + 1)]


# The syscall op's tables, made by the prelude's syscall methods (their values already checked there).

def integers(value) -> list[int]:
    """args: {1..n} integers."""
    return [integer(v) for v in sequence(table(value))]


def buffers(value) -> dict[int, bytes]:
    """bufs: {[index] = data}."""
    return {integer(k): string(v) for k, v in table(value).items()}


def pointers(value) -> list[Pointer]:
    """ptrs: {{buf, offset, length, data}}."""
    return [Pointer(p[b"buf"], p[b"offset"], p[b"length"], p[b"data"]) for p in sequence(table(value))]


class LuaValues:
    """How results reach Lua: plain values as they are, result objects as tables."""

    def __init__(self, runtime: lua.LuaRuntime, wrap: Callable[[bytes], object]):
        self.runtime = runtime
        self.wrap = wrap  # the prelude's string wrapper (:contains, :starts_with, :trim)

    def values(self, result) -> tuple:
        return () if result is None else (result,)

    def record(self, result) -> tuple:
        """A result object as a table of its fields and properties; its bytes as wrapped strings."""
        fields = {key: getattr(result, name) for name, key in _record_names(type(result))}
        return (self.runtime.table_from({k: self.wrap(v) if isinstance(v, bytes) else v
                                         for k, v in fields.items()}),)

    def syscall(self, result) -> tuple:
        """ret, then every buffer after the call (index order), then every pointer target."""
        return (result.ret, *result.bufs, *result.ptrs)

    def json(self, value) -> tuple:
        """Decoded JSON: objects and arrays as tables (arrays 1-based), strings as Lua strings."""
        return (self.runtime.table_from({b"v": _json_to_lua(value)}, recursive=True)[b"v"],)


@functools.cache
def _record_names(cls: type) -> tuple[tuple[str, bytes], ...]:
    """(name, Lua key) of each field and property of a result class."""
    names = list(getattr(cls, "_fields", None) or (f.name for f in dataclasses.fields(cls)))
    names += [name for name, v in vars(cls).items() if isinstance(v, property)]
    return tuple((name, name.encode()) for name in names)


def _json_to_lua(value):
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, list):
        return [_json_to_lua(v) for v in value]
    if isinstance(value, dict):
        return {k.encode(): _json_to_lua(v) for k, v in value.items()}
    return value


@dataclass(frozen=True)
class GuestOp:
    """One guest op as Lua sees it."""

    name: str
    handler: Callable[..., object]  # called with the VM or worker and the converted arguments
    params: tuple[Param, ...]
    inert: object = None  # what it answers while only listing tests (nothing boots)
    to_lua: Callable[[LuaValues, object], tuple] = LuaValues.values
    method: bool = True  # vm:NAME and worker:NAME; False: only the prelude's own methods call it


GUEST_OPS: tuple[GuestOp, ...] = (
    GuestOp("exec", GuestOps.exec, (Param("cmd", string),), ExecResult(0, b"", b""), LuaValues.record),
    GuestOp("json", GuestOps.json, (Param("cmd", string),), {}, LuaValues.json),
    GuestOp("read_file", GuestOps.read_file, (Param("path", string),), b""),
    GuestOp("write_file", GuestOps.write_file, (Param("path", string), Param("data", string))),
    GuestOp("background", GuestOps.background, (Param("cmd", string),), Job(0, 0), LuaValues.record),
    GuestOp("job_wait", GuestOps.job_wait, (Param("job", job), Param("timeout", number, optional=True)),
            JobResult(False, 0, b"", b"", False), LuaValues.record),
    GuestOp("job_kill", GuestOps.job_kill, (Param("job", job),), JobResult(False, 0, b"", b"", False),
            LuaValues.record),
    GuestOp("syscall", GuestOps.syscall, (Param("nr", integer), Param("args", integers), Param("bufs", buffers),
                                          Param("ptrs", pointers)), SyscallResult(0, (), ()),
            LuaValues.syscall, method=False),
)


WAIT_STEP = 0.2  # seconds between looks at the deadline and the interrupt while waiting
CANCEL_GRACE = 2.0  # seconds a cancelled task's op in flight has to end before its worker is killed


class Interrupted(BaseException):
    """Raised through Lua when the user interrupts the run."""


def describe_call(name: str, args: tuple) -> str:
    """How a bridge call reads in Lua: vm:exec("sleep 600")."""
    shown = []
    for arg in args:
        if isinstance(arg, bytes):
            value = arg[:240].decode("utf-8", "replace")  # a bounded prefix: a 16 MiB write costs nothing here
            shown.append(json.dumps(value if len(value) <= 60 and len(arg) <= 240 else value[:57] + "..."))
        elif isinstance(arg, (int, float)) and not isinstance(arg, bool):
            shown.append(str(arg))
    return f"{name}({', '.join(shown)})"


class Bridge:
    """Builds the bridge table and guards every call into Python.

    targets(handle) -> the VM or worker behind a handle. timed_out(handles, what) -> the message for a deadline
    that passed during `what` (an op on those VMs or workers, None: Lua code). While the file is only listed,
    guest ops and the functions given an inert value answer it instead of running.

    A guest op of a Lua task runs on its target's lane (lanes.Lanes) when other tasks are alive: `start` queues
    it and answers its ticket, `collect` waits for the first of the tasks' ops to end and answers its values.
    """

    def __init__(self, runtime: lua.LuaRuntime, targets: Callable[[int], GuestOps],
                 timed_out: Callable[[list[int], str | None], str], interrupted: Callable[[], bool], listing: bool):
        self.runtime = runtime
        self.targets = targets
        self.timed_out = timed_out
        self.interrupted = interrupted
        self.listing = listing
        self.lanes = Lanes()
        self._call: tuple[str, tuple] | None = None  # the call running now (or last): its label and arguments
        self.last_handle: int | None = None  # the VM or worker the last call on one ran on
        self.values: LuaValues | None = None  # set by the prelude's first call (it hands over `wrap`)
        self._ops = {op.name: op for op in GUEST_OPS}
        self._started: dict[int, tuple[GuestOp | None, str]] = {}  # each ticket not collected: (op, the call)
        self._identity = runtime.eval("function(...) return ... end")  # made, so called, on the main thread

    def table(self, functions: dict[str, tuple[Callable, tuple | None]], constants: dict[str, object]):
        """The bridge: `functions` {name: (fn, inert values or None to run it even when listing)}, the
        guest op functions `guest` (run now), `start`, `collect` and `cancel` (run on lanes), the row list
        `guest_ops` and plain `constants`. Every Python function in it is entered through `_in_main_state`."""
        entries = {name: self._guarded(name, fn, inert) for name, (fn, inert) in functions.items()} | {
            "guest": self._guest, "start": self._start, "collect": self._collect,
            "cancel": self._guarded("cancel", self._cancel, None), "sleep": self._guarded("sleep", self._sleep, ()),
            "timer": self._guarded("sleep", self._timer, None), "set_wrap": self._set_wrap,
            "listing": self.listing} | constants
        bridge = self.runtime.table_from({name.encode(): self._in_main_state(value) if callable(value) else value
                                          for name, value in entries.items()})
        bridge[b"guest_ops"] = self.runtime.table_from([op.name.encode() for op in GUEST_OPS if op.method])
        return bridge

    def _in_main_state(self, fn: Callable) -> Callable:
        """fn, called with its Lua tables and functions rebound to the runtime's main Lua thread.

        lupa binds a Lua value handed to Python to the Lua thread that handed it over, and releases it there. A
        test body is a coroutine (a task): once it has ended and been collected, releasing a value it handed over
        touches freed memory, and the harness crashes (lupa issue #84). A value can outlive its call here: in
        the traceback of an error a VM keeps (a kernel finding). Rebound, it is released on the main thread,
        which lives as long as the runtime. All of a call's values are rebound in one Lua call."""
        def entered(*args):
            at = [i for i, value in enumerate(args) if value is not None and not isinstance(value, (bytes, int, float))]
            if at:
                args = list(args)
                rebound = self._identity(*[args[i] for i in at])
                for i, value in zip(at, rebound if len(at) > 1 else (rebound,)):
                    args[i] = value
            return fn(*args)
        return entered

    @property
    def current(self) -> str | None:
        """The call running now (or last), as it reads in Lua."""
        return None if self._call is None else describe_call(*self._call)

    def close(self) -> None:
        self.lanes.close()

    def _set_wrap(self, wrap):
        self.values = LuaValues(self.runtime, wrap)

    def _converted(self, op: GuestOp, args: tuple) -> list:
        """The op's arguments as Python wants them; ArgumentError names a bad one."""
        return [param.convert(i, arg) for i, (param, arg) in
                enumerate(zip(op.params, args + (None,) * (len(op.params) - len(args))), 1)]

    def _guest(self, name, handle, *args):
        """Run a guest op now: its Lua values (its inert value when listing)."""
        op = self._ops[name.decode()]

        def run() -> tuple:
            if self.listing:
                return op.to_lua(self.values, op.inert)
            return op.to_lua(self.values, op.handler(self.targets(handle), *self._converted(op, args)))
        return self._guard(f"vm:{op.name}", args, handle, run)

    def _start(self, name, handle, *args):
        """Queue a guest op on its target's lane: (true, ticket, the call as it reads in Lua)."""
        op = self._ops[name.decode()]

        def start() -> tuple:
            call = functools.partial(op.handler, self.targets(handle), *self._converted(op, args))
            what = describe_call(f"vm:{op.name}", args)
            ticket = self.lanes.start(handle, what, call)
            self._started[ticket] = op, what
            return ticket, what.encode()
        return self._guard(f"vm:{op.name}", args, handle, start)

    def _timer(self, seconds) -> tuple[int, bytes]:
        """provium.sleep in a task: a ticket that ends `seconds` from now, and the call as it reads in Lua."""
        what = describe_call("provium.sleep", (number(seconds),))
        ticket = self.lanes.timer(seconds, what)
        self._started[ticket] = None, what
        return ticket, what.encode()

    def _collect(self, tickets):
        """The first of `tickets` (a Lua array of the blocked tasks' tickets, in the tasks' order) to end:
        (ticket, its guarded values)."""
        wanted = sequence(tickets)
        while True:
            if self.interrupted():
                raise Interrupted()
            got = None if deadline.expired() else self.lanes.collect(wanted, deadline.clamp(WAIT_STEP))
            if deadline.expired():  # none ended in time, or one ended by the deadline
                return self._expired(wanted)
            if got is not None:
                ticket, outcome = got
                op, _ = self._started.pop(ticket)
                if outcome.error is not None:
                    return (ticket, *self._failure(outcome.error, None))
                return (ticket, True, *(op.to_lua(self.values, outcome.value) if op else ()))

    def _expired(self, wanted: list[int]) -> tuple:
        """The deadline passed with every ticket in `wanted` in flight: all are stuck, and the first (in the
        tasks' order: the report does not depend on which op noticed first) fails naming its op."""
        what = self._started[wanted[0]][1]
        stuck = self.lanes.drop(wanted, 0.0)
        for ticket in wanted:
            self._started.pop(ticket, None)
        return wanted[0], False, self.timed_out([op.lane for op in stuck], what).encode(), ERROR, None, None

    def _cancel(self, tickets) -> tuple:
        """Forget the ops of cancelled tasks: each gets CANCEL_GRACE seconds to end, then the worker it runs on
        is killed (a VM's own channel cannot be: the VM is). What was killed, one line each."""
        killed = []
        tickets = sequence(tickets)
        for ticket in tickets:
            self._started.pop(ticket, None)
        for op in self.lanes.drop(tickets, CANCEL_GRACE):
            target = self.targets(op.lane)
            target.kill()
            whose = f"worker {target.tid}" if isinstance(target, Worker) else f"VM {target.name!r}"
            killed.append(f"{op.what} did not end within {CANCEL_GRACE:g} s of the cancel: {whose} was killed")
        return ("\n".join(killed),)

    def _sleep(self, seconds) -> None:
        """Wait `seconds` (DeadlineError when the deadline comes first)."""
        seconds = number(seconds)
        ends = time.monotonic() + seconds
        while (remaining := ends - time.monotonic()) > 0:
            if self.interrupted():
                raise Interrupted()
            if deadline.expired():
                raise DeadlineError(f"provium.sleep({seconds:g}) passed the deadline")
            time.sleep(min(WAIT_STEP, deadline.clamp(remaining)) or WAIT_STEP / 10)

    def _guarded(self, name: str, fn: Callable, inert: tuple | None):
        on_vm = name.startswith("vm_")  # its first argument is a VM's handle
        label = f"vm:{name[3:]}" if on_vm else f"provium.{name}"

        def values(*args) -> tuple:
            result = fn(*args)
            result = () if result is None else result if isinstance(result, tuple) else (result,)
            return tuple(v.encode() if isinstance(v, str) else v for v in result)

        def guarded(*args):
            if self.listing and inert is not None and not self.interrupted():
                return (True, *inert)
            return self._guard(label, args[1:] if on_vm else args, args[0] if on_vm and args else None,
                               lambda: values(*args))
        return guarded

    def _guard(self, label: str, shown: tuple, handle: int | None, call: Callable[[], tuple]) -> tuple:
        """(True, values...) of call(), or its failure: every bridge call goes through here."""
        if self.interrupted():
            raise Interrupted()
        self._call = label, shown
        if handle is not None:
            self.last_handle = handle
        try:
            return (True, *call())
        except Exception as exc:  # noqa: BLE001 - every error becomes a Lua failure, typed
            return self._failure(exc, handle)

    def _failure(self, exc: Exception, handle: int | None) -> tuple:
        """(False, message, kind, errno, detail) for an exception raised by an op."""
        if isinstance(exc, DeadlineError) and deadline.expired():
            return False, self.timed_out([] if handle is None else [handle], self.current).encode(), ERROR, None, None
        if isinstance(exc, NotHere):
            return False, str(exc).encode(), SKIP, None, None
        if isinstance(exc, ArgumentError):
            return False, str(exc).encode(), ARGUMENT, None, None
        if isinstance(exc, ProviumError):
            errno = exc.errno if isinstance(exc, AgentError) else None
            return False, str(exc).encode(), ERROR, errno, None
        detail = "".join(traceback.format_exception(exc)).encode()
        return False, f"internal error ({type(exc).__name__}): {exc}".encode(), INTERNAL, None, detail
