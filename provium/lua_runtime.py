"""One Lua runtime per test file, bound to the Python core through a bridge.

The Lua side (provium/lua/prelude.lua) defines everything a test author sees.
It reaches Python only through `bridge`: functions taking and returning plain
values (VMs are integer handles), each answering (true, results...) or
(false, message) so that errors surface at the test file's own line.
"""

import json
import time
from importlib import resources
from pathlib import Path

import lupa.lua54 as lua

from .errors import ProviumError
from .vm import Disk, Pointer, Vm

PRELUDE_NAME = b"provium"
PRELUDE = resources.files("provium").joinpath("lua/prelude.lua").read_text()


class Interrupted(BaseException):
    """Raised through Lua when the user interrupts the run."""


def _lua_value(value):
    if isinstance(value, str):
        return value.encode()
    return value


def _snippet(text, limit=200):
    text = " ".join(text.split())
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _to_lua(value):
    """JSON data with every string as bytes, as the Lua runtime (encoding=None) wants."""
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, list):
        return [_to_lua(v) for v in value]
    if isinstance(value, dict):
        return {k.encode(): _to_lua(v) for k, v in value.items()}
    return value


def _text(value):
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value


class LuaFile:
    """Runs one test file; reports each test through `on_test(result_dict)`."""

    def __init__(self, path, display_name, config, cache, on_test, interrupted=lambda: False):
        self.path = Path(path)
        self.display_name = display_name
        self.config = config
        self.cache = cache
        self.on_test = on_test
        self.interrupted = interrupted
        self._vms = {}
        self._workers = {}
        self._next_handle = 1
        self._test = None
        self._output = []
        self.runtime = lua.LuaRuntime(encoding=None, unpack_returned_tuples=True,
                                      register_eval=False, register_builtins=False)
        self.runtime.globals().python = None
        bridge = self.runtime.table_from({
            name.encode(): self._guarded(getattr(self, f"_op_{name}"))
            for name in ("create", "shutdown_all", "vm_boot", "vm_exec", "vm_json", "vm_read_file",
                         "vm_write_file", "vm_shutdown", "vm_kill", "vm_syscall", "vm_background",
                         "vm_job_wait", "vm_job_kill", "vm_spawn", "worker_kill", "begin_test", "end_test")
        })
        bridge[b"output"] = self._op_output
        bridge[b"now"] = time.monotonic
        bridge[b"sleep"] = time.sleep
        boot_prelude = self.runtime.eval(
            "function(src, name, bridge) return assert(load(src, name, 't'))(bridge) end")
        self._run_source = boot_prelude(PRELUDE.encode(), b"=" + PRELUDE_NAME, bridge)

    def _guarded(self, fn):
        def guarded(*args):
            if self.interrupted():
                raise Interrupted()
            try:
                result = fn(*args)
            except ProviumError as exc:
                return False, str(exc).encode()
            if not isinstance(result, tuple):
                result = () if result is None else (result,)
            return (True, *map(_lua_value, result))
        return guarded

    def run(self):
        """Run the file; a file-level error (syntax, error outside tests) is reported as a result."""
        try:
            source = self.path.read_bytes()
        except OSError as exc:
            self._report({"outcome": "error", "message": f"cannot read {self.display_name}: {exc.strerror}"},
                         name="<file>", duration=0.0)
            return
        started = time.monotonic()
        try:
            failure = self._run_source(source, b"@" + self.display_name.encode())
            if failure is not None:
                self._report(dict(failure), name="<file>", duration=time.monotonic() - started)
        finally:
            self._stop_vms(self._vms)

    def _report(self, data, name, duration):
        if self.interrupted():
            return  # the test did not finish: the run reports the interruption instead
        data = {_text(k): _text(v) for k, v in data.items()}
        data.update(name=name, duration=duration, output="".join(self._output))
        self._output = []
        self.on_test(data)

    # ---------------------------------------------------------------- bridge ops

    def _vm(self, handle):
        """The Vm or Worker behind a handle."""
        target = self._vms.get(handle) or self._workers.get(handle)
        if target is None:
            raise ProviumError(f"no VM with handle {handle}")
        return target

    def _new_handle(self):
        handle = self._next_handle
        self._next_handle += 1
        return handle

    def _op_create(self, profile):
        vm = Vm(self.config.profile(_text(profile)), self.cache)
        handle = self._new_handle()
        self._vms[handle] = vm
        if self._test is not None:
            self._test["vms"].append(handle)
        return handle

    def _op_shutdown_all(self):
        handles = self._test["vms"] if self._test is not None else list(self._vms)
        self._stop_vms({h: self._vms[h] for h in handles if h in self._vms})

    def _host_path(self, value):
        """A host path named in a test file: relative ones are relative to the file."""
        return self.path.parent / _text(value)

    def _op_vm_boot(self, handle, memory, cpus, files, disks):
        self._vm(handle).boot(
            memory=_text(memory), cpus=cpus,
            files={_text(guest): self._host_path(host) for guest, host in files.items()},
            disks=[Disk(self._host_path(d[b"path"]), _text(d[b"format"]), bool(d[b"readonly"]))
                   for d in disks.values()])

    def _op_vm_json(self, handle, cmd):
        cmd = _text(cmd)
        result = self._vm(handle).exec(cmd)
        out = result.stdout.decode("utf-8", "replace")
        if not result.ok:
            raise ProviumError(f"vm:json: {cmd!r} failed (exit {result.exit_code}): "
                               f"{_snippet(result.stderr.decode('utf-8', 'replace') or out)}")
        try:
            value = json.loads(out)
        except json.JSONDecodeError as exc:
            raise ProviumError(f"vm:json: {cmd!r} printed invalid JSON ({exc.msg} at line {exc.lineno} "
                               f"column {exc.colno}): {_snippet(out)}") from None
        return self.runtime.table_from({b"v": _to_lua(value)}, recursive=True)[b"v"]

    def _op_vm_exec(self, handle, cmd):
        result = self._vm(handle).exec(_text(cmd))
        return result.exit_code, result.stdout, result.stderr

    def _op_vm_read_file(self, handle, path):
        return self._vm(handle).read_file(_text(path))

    def _op_vm_write_file(self, handle, path, data):
        self._vm(handle).write_file(_text(path), bytes(data))

    def _op_vm_syscall(self, handle, nr, args, bufs, ptrs):
        pointers = [Pointer(p[b"buf"], p[b"offset"], p[b"length"], bytes(p[b"data"]))
                    for p in (ptrs[i] for i in range(1, len(ptrs) + 1))]
        ret, buffers, targets = self._vm(handle).syscall(
            nr, [args[i] for i in range(1, len(args) + 1)], {i: bytes(d) for i, d in bufs.items()}, pointers)
        return (ret, *buffers, *targets)

    def _op_vm_background(self, handle, cmd):
        return self._vm(handle).background(_text(cmd))

    @staticmethod
    def _job(result):
        return result.running, result.exit_code, result.stdout, result.stderr, result.truncated

    def _op_vm_job_wait(self, handle, job, timeout):
        return self._job(self._vm(handle).job_wait(job, timeout))

    def _op_vm_job_kill(self, handle, job):
        return self._job(self._vm(handle).job_kill(job))

    def _op_vm_spawn(self, handle, thread):
        vm = self._vm(handle)
        if not isinstance(vm, Vm):
            raise ProviumError("spawn: only a VM can spawn workers")
        worker = vm.spawn(thread=thread)
        worker_handle = self._new_handle()
        self._workers[worker_handle] = worker
        return worker_handle, worker.pid, worker.tid

    def _op_worker_kill(self, handle):
        self._vm(handle).kill()

    def _op_vm_shutdown(self, handle):
        self._vm(handle).shutdown()

    def _op_vm_kill(self, handle):
        self._vm(handle).kill()

    def _op_begin_test(self, name, where):
        self._test = {"name": _text(name), "where": _text(where), "started": time.monotonic(), "vms": []}
        self._output = []

    def _op_end_test(self, result):
        test, self._test = self._test, None
        data = dict(result)
        if data.get(b"outcome") in (b"failed", b"error") and b"--- console" not in (data.get(b"message") or b""):
            tails = {self._vms[h].name: self._vms[h].console_tail() for h in test["vms"] if h in self._vms}
            data[b"consoles"] = {name: tail for name, tail in tails.items() if tail.strip()}
        self._stop_vms({h: self._vms.pop(h) for h in test["vms"] if h in self._vms})
        if data.get(b"where") is None and data.get(b"outcome") != b"passed":
            data[b"where"] = test["where"]
        self._report(data, name=test["name"], duration=time.monotonic() - test["started"])

    def _op_output(self, text):
        self._output.append(_text(text))

    @staticmethod
    def _stop_vms(vms):
        for vm in vms.values():
            vm.shutdown()
