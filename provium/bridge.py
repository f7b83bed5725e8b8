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
import json
import traceback
from collections.abc import Callable
from dataclasses import dataclass

import lupa.lua54 as lua

from . import deadline
from .errors import AgentError, ArgumentError, DeadlineError, ProviumError
from .guest import ExecResult, GuestOps, Job, JobResult, Pointer, SyscallResult

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
    if lua_type(value) != "table":
        raise TypeError("a table")
    return value


def sequence(value) -> list:
    """A Lua array (1..n) as a list."""
    return [value[i] for i in range(1, len(value) + 1)]


def syscall(target: GuestOps, nr: int, args, bufs, ptrs):
    """The prelude's syscall methods all end here: args {1..n} integers, bufs {[index] = data},
    ptrs {{buf, offset, length, data}} (already converted to integers and strings in Lua)."""
    pointers = [Pointer(p[b"buf"], p[b"offset"], p[b"length"], p[b"data"]) for p in sequence(ptrs)]
    return target.syscall(nr, sequence(args), dict(bufs.items()), pointers)


class LuaValues:
    """How results reach Lua: plain values as they are, result objects as tables."""

    def __init__(self, runtime: lua.LuaRuntime, wrap: Callable[[bytes], object]):
        self.runtime = runtime
        self.wrap = wrap  # the prelude's string wrapper (:contains, :starts_with, :trim)

    def values(self, result) -> tuple:
        return () if result is None else (result,)

    def record(self, result) -> tuple:
        """A result object as a table of its fields and properties; its bytes as wrapped strings."""
        names = list(getattr(result, "_fields", None) or (f.name for f in dataclasses.fields(result)))
        names += [name for name, v in vars(type(result)).items() if isinstance(v, property)]
        fields = {name.encode(): getattr(result, name) for name in names}
        return (self.runtime.table_from({k: self.wrap(v) if isinstance(v, bytes) else v
                                         for k, v in fields.items()}),)

    def syscall(self, result) -> tuple:
        """ret, then every buffer after the call (index order), then every pointer target."""
        return (result.ret, *result.bufs, *result.ptrs)

    def json(self, value) -> tuple:
        """Decoded JSON: objects and arrays as tables (arrays 1-based), strings as Lua strings."""
        return (self.runtime.table_from({b"v": _json_to_lua(value)}, recursive=True)[b"v"],)


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
    GuestOp("syscall", syscall, (Param("nr", integer), Param("args", table), Param("bufs", table),
                                 Param("ptrs", table)), SyscallResult(0, (), ()),
            LuaValues.syscall, method=False),
)


class Interrupted(BaseException):
    """Raised through Lua when the user interrupts the run."""


def describe_call(name: str, args: tuple) -> str:
    """How a bridge call reads in Lua: vm:exec("sleep 600")."""
    shown = []
    for arg in args:
        if isinstance(arg, bytes):
            value = arg.decode("utf-8", "replace")
            shown.append(json.dumps(value if len(value) <= 60 else value[:57] + "..."))
        elif isinstance(arg, (int, float)) and not isinstance(arg, bool):
            shown.append(str(arg))
    return f"{name}({', '.join(shown)})"


class Bridge:
    """Builds the bridge table and guards every call into Python.

    targets(handle) -> the VM or worker behind a handle. timed_out(handle) -> the message for a deadline
    that passed during an op on that handle (None for an op on no VM). While the file is only listed,
    guest ops and the functions given an inert value answer it instead of running.
    """

    def __init__(self, runtime: lua.LuaRuntime, targets: Callable[[int], GuestOps],
                 timed_out: Callable[[int | None], str], interrupted: Callable[[], bool], listing: bool):
        self.runtime = runtime
        self.targets = targets
        self.timed_out = timed_out
        self.interrupted = interrupted
        self.listing = listing
        self.current: str | None = None  # the call running now (or last), as it reads in Lua
        self.values: LuaValues | None = None  # set by the prelude's first call (it hands over `wrap`)

    def table(self, functions: dict[str, tuple[Callable, tuple | None]], constants: dict[str, object]):
        """The bridge: `functions` {name: (fn, inert values or None to run it even when listing)}, the
        guest op dispatcher `guest`, the row list `guest_ops` and plain `constants`."""
        bridge = self.runtime.table_from({
            name.encode(): self._guarded(name, fn, inert) for name, (fn, inert) in functions.items()})
        rows = {op.name: op for op in GUEST_OPS}
        bridge[b"guest"] = self._guarded_guest(rows)
        bridge[b"guest_ops"] = self.runtime.table_from([op.name.encode() for op in GUEST_OPS if op.method])
        bridge[b"set_wrap"] = self._set_wrap
        for name, value in constants.items():
            bridge[name.encode()] = value
        return bridge

    def _set_wrap(self, wrap):
        self.values = LuaValues(self.runtime, wrap)

    def _guarded_guest(self, rows: dict[str, GuestOp]):
        def guest(name, handle, *args):
            op = rows[name.decode()]
            return self._guard(f"vm:{op.name}", args, handle, lambda: self._run(op, handle, args))
        return guest

    def _run(self, op: GuestOp, handle: int, args: tuple) -> tuple:
        """A guest op's Lua values: its arguments checked, its handler called (its inert value when listing)."""
        if self.listing:
            return op.to_lua(self.values, op.inert)
        converted = [param.convert(i, arg) for i, (param, arg) in
                     enumerate(zip(op.params, args + (None,) * (len(op.params) - len(args))), 1)]
        return op.to_lua(self.values, op.handler(self.targets(handle), *converted))

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
        self.current = describe_call(label, shown)
        try:
            return (True, *call())
        except Exception as exc:  # noqa: BLE001 - every error becomes a Lua failure, typed
            return self._failure(exc, handle)

    def _failure(self, exc: Exception, handle: int | None) -> tuple:
        """(False, message, kind, errno, detail) for an exception raised by an op."""
        if isinstance(exc, DeadlineError) and deadline.expired():
            return False, self.timed_out(handle).encode(), ERROR, None, None
        if isinstance(exc, NotHere):
            return False, str(exc).encode(), SKIP, None, None
        if isinstance(exc, ArgumentError):
            return False, str(exc).encode(), ARGUMENT, None, None
        if isinstance(exc, ProviumError):
            errno = exc.errno if isinstance(exc, AgentError) else None
            return False, str(exc).encode(), ERROR, errno, None
        detail = "".join(traceback.format_exception(exc)).encode()
        return False, f"internal error ({type(exc).__name__}): {exc}".encode(), INTERNAL, None, detail
