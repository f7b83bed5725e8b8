"""One Lua runtime per test file, bound to the Python core through a bridge.

The Lua side (provium/lua/prelude.lua) defines everything a test author sees.
It reaches Python only through `bridge`: functions taking and returning plain
values (VMs are integer handles), each answering (true, results...) or
(false, message) so that errors surface at the test file's own line.
"""

import json
import os
import re
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import lupa.lua54 as lua

from . import deadline, kernels, kmemleak
from .errors import AgentError, DeadlineError, ProviumError
from .fixtures import BuildResult
from .profile_build import Preparer
from .guest import Pointer
from .vm import Disk, GuestCrash, Timeouts, Vm, format_console_tail

PRELUDE_NAME = b"provium"
PRELUDE = resources.files("provium").joinpath("lua/prelude.lua").read_text()


class Interrupted(BaseException):
    """Raised through Lua when the user interrupts the run."""


class NotHere(ProviumError):
    """The test cannot run on this kernel (it lacks options the test needs): the test is skipped."""


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


def display_name(path):
    """How a file is named in reports: relative to the current directory when below it."""
    relative = os.path.relpath(path)
    return relative if not relative.startswith("..") else os.path.abspath(path)


_MODULE_PART = re.compile(r"^[A-Za-z0-9_-]+$")
_SECTION = re.compile(r"^ *--- .+ ---$", re.M)  # a console tail or a kernel report in a failure's message


@dataclass(frozen=True)
class FileOptions:
    """How the runner wants a file run. Deadlines are in seconds, already scaled for TCG."""

    timeouts: Timeouts = Timeouts()
    test_timeout: float = 240.0
    file_timeout: float = 2400.0
    slowdown: float = 1.0       # applied to a test's own {timeout = N}
    keyword: str | None = None  # run only tests whose name (or file name) contains it
    collect_only: bool = False  # record test names, boot nothing, run no test body
    artifacts: Path | None = None
    should_stop: object = lambda: False  # true once the run stops early (--fail-fast): skip the rest
    scratch: Path | None = None  # the run's scratch directory: provium.path("@tmp"), where files may write
    preparer: Preparer | None = None  # the run's; None: one of the file's own
    aliases: tuple = ()  # (NAME, PROFILE) pairs: provium.create(NAME) boots PROFILE (a --matrix cell)


# What bridge ops answer while only listing (nothing boots); the default is no values.
_INERT = {
    "create": (0,), "fixture": (0,), "vm_exec": (0, b"", b""), "vm_read_file": (b"",),
    "vm_syscall": (0,), "vm_background": (0, 0), "vm_job_wait": (False, 0, b"", b"", False),
    "vm_job_kill": (False, 0, b"", b"", False), "vm_spawn": (0, 0, 0),
}
_KEEP_WHEN_LISTING = {"begin_test", "end_test", "require_source", "shutdown_all", "path", "host_path"}
LUA_MAX_MEMORY = 1 << 30  # per test file: a runaway string.rep fails in Lua instead of exhausting the host


def _no_attributes(obj, name, is_setting):
    """lupa's attribute filter: Lua code reaches no attribute of any Python object."""
    raise AttributeError("Python objects are not reachable from test files")


def _describe(name, args):
    """How a bridge call reads in Lua: vm:exec("sleep 600")."""
    lua_name = f"vm:{name[3:]}" if name.startswith("vm_") else f"provium.{name}"
    shown = []
    for arg in args[1:] if name.startswith("vm_") else args:
        if isinstance(arg, bytes):
            text = arg.decode("utf-8", "replace")
            shown.append(json.dumps(text if len(text) <= 60 else text[:57] + "..."))
        elif isinstance(arg, (int, float)) and not isinstance(arg, bool):
            shown.append(str(arg))
    return f"{lua_name}({', '.join(shown)})"


class LuaFile:
    """Runs one Lua file: a test file (run) or a fixture script (build_fixture).

    Test results go to `on_test(result_dict)`. With snapshot_root, the file is a
    fixture being built: its VMs keep their RAM in files under snapshot_root.
    """

    def __init__(self, path, display, config, cache, on_test, interrupted=lambda: False,
                 fixtures=None, snapshot_root=None, options=FileOptions(), on_test_start=lambda name: None):
        self.options = options
        self.on_test_start = on_test_start
        self._test_deadline = None
        self._op = None
        self._stuck_vm = None
        self.path = Path(path)
        self.display_name = display
        self.config = config
        self.cache = cache
        self.on_test = on_test
        self.interrupted = interrupted
        self.fixtures = fixtures
        self.snapshot_root = snapshot_root
        self.required_files = {}
        self.fixture_deps = {}
        self.preparer = options.preparer or Preparer(cache)
        self._build_dirs = set()  # build directories of the profiles this file prepared: readable
        self._vms = {}
        self._workers = {}
        self._next_handle = 1
        self._test = None
        self._output = []
        self.runtime = lua.LuaRuntime(encoding=None, unpack_returned_tuples=True, max_memory=LUA_MAX_MEMORY,
                                      register_eval=False, register_builtins=False,
                                      attribute_filter=_no_attributes)
        self.runtime.globals().python = None
        bridge = self.runtime.table_from({
            name.encode(): self._guarded(name, getattr(self, f"_op_{name}"))
            for name in ("create", "fixture", "require_source", "path", "host_path", "shutdown_all", "vm_boot", "vm_exec", "vm_json", "vm_read_file",
                         "vm_write_file", "vm_shutdown", "vm_kill", "vm_syscall", "vm_background",
                         "vm_job_wait", "vm_job_kill", "vm_spawn", "worker_kill", "begin_test", "end_test")
        })
        bridge[b"output"] = self._op_output
        bridge[b"expired"] = self._op_expired
        bridge[b"now"] = time.monotonic
        bridge[b"sleep"] = time.sleep
        bridge[b"max_memory"] = LUA_MAX_MEMORY
        boot_prelude = self.runtime.eval(
            "function(src, name, bridge) return assert(load(src, name, 't'))(bridge) end")
        self._run_source = boot_prelude(PRELUDE.encode(), b"=" + PRELUDE_NAME, bridge)

    def _guarded(self, name, fn):
        def guarded(*args):
            if self.interrupted():
                raise Interrupted()
            if self.options.collect_only and name not in _KEEP_WHEN_LISTING:
                return (True, *_INERT.get(name, ()))
            self._op = _describe(name, args)
            try:
                result = fn(*args)
            except DeadlineError as exc:
                if not deadline.expired():
                    return False, str(exc).encode()
                if name.startswith("vm_") and args:
                    self._stuck_vm = args[0]
                return False, self._timeout_message().encode()
            except NotHere as exc:
                return False, str(exc).encode(), b"skip"
            except ProviumError as exc:
                return False, str(exc).encode()
            except Exception as exc:  # a bug in provium: say so rather than pass for a test failure
                return False, f"internal error ({type(exc).__name__}): {exc}".encode()
            if not isinstance(result, tuple):
                result = () if result is None else (result,)
            return (True, *map(_lua_value, result))
        return guarded

    def _execute(self):
        """Run the file's chunk: (file-level failure dict or None, handle of a VM it returned or None)."""
        try:
            source = self.path.read_bytes()
        except OSError as exc:
            return {"outcome": "error", "message": f"cannot read {self.display_name}: {exc.strerror}"}, None
        failure, handle = self._run_source(source, b"@" + display_name(self.path).encode())  # file:line, no [cell]
        return (dict(failure) if failure is not None else None), handle

    def run(self):
        """Run the file; a file-level error (syntax, error outside tests) is reported as a result."""
        started = time.monotonic()
        try:
            with deadline.until(started + self.options.file_timeout):
                failure, _ = self._execute()
            if failure is not None:
                self._report(failure, name="<file>", duration=time.monotonic() - started)
        finally:
            self._stop_vms(self._vms)

    def _test_deadline_now(self):
        """The running test's deadline, moved by the time spent preparing profiles since it began."""
        return self._test_deadline + deadline.suspended_seconds() - self._test["suspended"]

    def _timeout_message(self):
        where = f" in {self._op}" if self._op else " in Lua code"
        if self._test is not None and self._test_deadline is not None and \
                self._test_deadline_now() <= time.monotonic() + 0.001:
            return f"test {self._test['name']!r} timed out after {self._test['timeout']:.0f} s{where}"
        return f"{self.display_name} timed out after {self.options.file_timeout:.0f} s{where}"

    def build_fixture(self):
        """Run a fixture script; the BuildResult holding the VM to snapshot (still running)."""
        failures = []
        self.on_test = lambda data: failures.append(data) if data.get("outcome") in ("failed", "error") else None
        try:
            failure, handle = self._execute()
            if failure is None and failures:
                failure = failures[0]
            if failure is not None:
                failure = {_text(k): _text(v) for k, v in failure.items()}
                where = failure.get("where")
                message = f"{where}: {failure.get('message')}" if where else failure.get("message")
                raise ProviumError("\n".join([message, *map(kernel_log_tail, self._vms.values())]).rstrip())
            if handle is None:
                running = [h for h, vm in self._vms.items() if vm.state == "running"]
                if len(running) != 1:
                    raise ProviumError(f"{self.display_name} must return the VM to snapshot "
                                       f"(it has {len(running)} running VMs)")
                handle, = running
            vm = self._vms.pop(handle)
            if vm.state != "running":
                raise ProviumError(f"{self.display_name} returned a VM that is not running ({vm.state})")
            return BuildResult(vm, tuple(self.required_files), dict(self.fixture_deps))
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

    def _snapshot_dir(self, handle):
        return self.snapshot_root / f"vm{handle}" if self.snapshot_root else None

    def _add_vm(self, handle, vm):
        self._vms[handle] = vm
        vm.symbols = self.preparer.prepare(vm.profile).symbols()
        if self._test is not None:
            self._test["vms"].append(handle)
            reason = self._lacks(vm)
            if reason:
                raise NotHere(reason)
            self._arm_leak_check(vm)
        self._allow_warnings([vm])
        return handle

    def _arm_leak_check(self, vm):
        """Charge the VM's leaks from now on to the running test, if it checks leaks and the VM runs
        a kernel with kmemleak (the test option wins over the profile's key)."""
        wanted = self._test["leak_check"]
        if not (vm.profile.leak_check if wanted is None else wanted) or vm.state != "running":
            return
        if not kernels.missing_options(self.preparer.prepare(vm.profile).kernel, ["DEBUG_KMEMLEAK"]):
            kmemleak.arm(vm)

    def _leaks(self, check):
        """Each leaking VM's GuestCrash message for the running test's leaks, when `check` (one wait for
        all its armed VMs); every VM is disarmed either way."""
        armed = [vm for vm in self._vms.values() if vm.leak_since is not None]
        try:
            if not check:
                return []
            with deadline.suspended():
                found = kmemleak.check([vm for vm in armed if vm.state == "running"])
            return [str(vm.crash_for(tuple(leaks))) for vm, leaks in found.items() if leaks]
        finally:
            for vm in armed:
                vm.leak_since = None

    def _lacks(self, vm):
        """Why the running test cannot run on the VM's kernel (options it needs are off), or None."""
        if not self._test["kconfig"]:
            return None
        tree = self.preparer.prepare(vm.profile).kernel
        missing = kernels.missing_options(tree, self._test["kconfig"])
        return missing and f"needs kernel options that {tree.release} lacks: {', '.join(missing)}"

    def _allow_warnings(self, vms):
        """Kernel warnings are allowed on a VM whose profile allows them, and during a test that does."""
        allowed = self._test is not None and self._test["allow_warnings"]
        for vm in vms:
            vm.allow_warnings = allowed or vm.profile.allow_warnings

    def _profile(self, name):
        """The profile `name` stands for in this run (a --matrix cell maps names), prepared to boot."""
        name = dict(self.options.aliases).get(name, name)
        prepared = self.preparer.prepare(self.config.profile(name))
        self._build_dirs.add(Path(os.path.realpath(prepared.build_dir)))
        return prepared

    def _op_create(self, profile):
        handle = self._new_handle()
        return self._add_vm(handle, Vm(self._profile(_text(profile)).profile, self.cache,
                                       snapshot_dir=self._snapshot_dir(handle), timeouts=self.options.timeouts))

    def _op_fixture(self, name):
        name = _text(name)
        handle = self._new_handle()
        vm = self.fixtures.clone(name, snapshot_dir=self._snapshot_dir(handle))
        entry = self.fixtures.entry(name)
        if self.snapshot_root:
            self.fixture_deps[name] = entry.identity
        self._add_vm(handle, vm)
        vm.symbols = vm.symbols.with_modules(entry.modules)  # the .ko its build booted with
        return handle

    def _op_require_source(self, name):
        """The source and chunk name of module `name`, from the suite root or the file's directory."""
        name = _text(name)
        parts = name.split(".")
        if not all(_MODULE_PART.match(part) for part in parts):
            raise ProviumError(f"require: module name {name!r} must be dot-separated plain names "
                               f"(no '/', '..' or absolute paths)")
        tried = []
        for base in dict.fromkeys((self.config.root, self.path.parent.resolve())):
            for candidate in (base.joinpath(*parts[:-1], parts[-1] + ".lua"), base.joinpath(*parts, "init.lua")):
                if candidate.is_file():
                    self.required_files[candidate] = True
                    return candidate.read_bytes(), b"@" + display_name(candidate).encode()
                tried.append(str(candidate))
        raise ProviumError(f"require: module {name!r} not found (tried {', '.join(tried)})")

    def _op_shutdown_all(self):
        handles = self._test["vms"] if self._test is not None else list(self._vms)
        self._stop_vms({h: self._vms[h] for h in handles if h in self._vms})

    def _host_path(self, value, write=False, what="path"):
        """A host path named in a test file, resolved (relative to the file) and checked:
        reads below the suite root or the scratch directory, writes below the scratch directory."""
        text = _text(value)
        if "\0" in text:
            raise ProviumError(f"{what} {text!r} contains a NUL byte")
        path = Path(os.path.realpath(self.path.parent / text))
        scratch = self.options.scratch and Path(os.path.realpath(self.options.scratch))
        root = Path(os.path.realpath(self.config.root))
        allowed = [scratch] if write else [root, scratch, *self._build_dirs]
        if not any(base and (path == base or base in path.parents) for base in allowed):
            where = "the scratch directory (provium.path(\"@tmp\"))" if write else \
                "the suite root or the scratch directory (or a prepared profile's build directory)"
            raise ProviumError(f"{what} {text!r} is outside {where}: {path}")
        return path

    def _op_host_path(self, value, write):
        path = self._host_path(value, bool(write), "io: path")
        if self.snapshot_root and not write and path.is_file():  # a fixture is built from what it reads
            self.required_files[path] = True
        return str(path).encode()

    def _op_path(self, name, profile=None):
        name = _text(name)
        if (profile is None) != (name != "@build"):
            raise ProviumError(f"provium.path: {name!r} takes a profile name only with @build: "
                               f"provium.path(\"@build\", PROFILE)")
        if name == "@tmp" and self.options.scratch:
            return str(self.options.scratch).encode()
        if name == "@root":
            return str(self.config.root).encode()
        if name == "@build":
            if self.options.collect_only:  # listing prepares nothing
                return str(self.config.root / "@build" / _text(profile)).encode()
            return str(self._profile(_text(profile)).build_dir).encode()
        raise ProviumError(f"provium.path: unknown anchor {name!r} (known: @build, @root, @tmp)")

    def _op_vm_boot(self, handle, memory, cpus, files, disks):
        checked = []
        for index, disk in enumerate((disks[i] for i in range(1, len(disks) + 1)), 1):
            readonly = bool(disk[b"readonly"])
            # a fixture's disks are written through overlays: their images are only read
            written = not readonly and self.snapshot_root is None
            what = f"boot option disks[{index}]" + (" (writable: the guest writes to it)" if written else "")
            checked.append(Disk(self._host_path(disk[b"path"], written, what), _text(disk[b"format"]), readonly))
        files = {_text(guest): self._host_path(host, False, f"boot option files[{_text(guest)!r}]")
                 for guest, host in files.items()}
        if self.snapshot_root:  # a fixture depends on what it boots with: its key must see changes to them
            for path in [*files.values(), *(disk.path for disk in checked)]:
                self.required_files[path] = True
        vm = self._vm(handle)
        vm.boot(memory=_text(memory), cpus=cpus, files=files, disks=checked)
        if self._test is not None:
            self._arm_leak_check(vm)

    def _op_vm_json(self, handle, cmd):
        result = self._vm(handle).exec(bytes(cmd))
        cmd = _text(cmd)
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
        result = self._vm(handle).exec(bytes(cmd))
        return result.exit_code, result.stdout, result.stderr

    def _op_vm_read_file(self, handle, path):
        return self._vm(handle).read_file(bytes(path))

    def _op_vm_write_file(self, handle, path, data):
        self._vm(handle).write_file(bytes(path), bytes(data))

    def _op_vm_syscall(self, handle, nr, args, bufs, ptrs):
        pointers = [Pointer(p[b"buf"], p[b"offset"], p[b"length"], bytes(p[b"data"]))
                    for p in (ptrs[i] for i in range(1, len(ptrs) + 1))]
        ret, buffers, targets = self._vm(handle).syscall(
            nr, [args[i] for i in range(1, len(args) + 1)], {i: bytes(d) for i, d in bufs.items()}, pointers)
        return (ret, *buffers, *targets)

    def _op_vm_background(self, handle, cmd):
        return self._vm(handle).background(bytes(cmd))

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

    def _op_expired(self):
        """Why Lua code must stop now (for the Lua hook): the deadline passed or the run was
        interrupted; else nil."""
        if self.interrupted():
            return b"the run was interrupted"
        if deadline.expired():
            self._op = None
            return self._timeout_message().encode()
        return None

    def _op_begin_test(self, name, where, timeout, allow_warnings=False, kconfig=None, leak_check=None):
        name = _text(name)
        keyword = self.options.keyword
        if keyword and keyword not in name and keyword not in self.display_name:
            return False
        if self.options.should_stop():
            return False
        if self.options.collect_only:
            self.on_test_start(name)
            return False
        timeout = self.options.test_timeout if timeout is None else timeout * self.options.slowdown
        started = time.monotonic()
        self._test = {"name": name, "where": _text(where), "started": started, "vms": [], "timeout": timeout,
                      "allow_warnings": bool(allow_warnings), "suspended": deadline.suspended_seconds(),
                      "kconfig": [_text(kconfig[i]) for i in range(1, len(kconfig or {}) + 1)],
                      "leak_check": leak_check}
        self._allow_warnings(self._vms.values())
        self._test_deadline = started + timeout
        self._test_scope = deadline.until(self._test_deadline)
        self._test_scope.__enter__()
        self._output = []
        self._stuck_vm = None
        self.on_test_start(name)
        for vm in self._vms.values():  # the file's own VMs are already running some kernel
            reason = self._lacks(vm)
            if reason:
                return True, reason
        for vm in self._vms.values():
            vm.reported.clear()  # what a test's artifacts keep: its own findings
            self._arm_leak_check(vm)
        return True

    def _op_end_test(self, result):
        timed_out = self._test_deadline_now() <= time.monotonic()
        test, self._test = self._test, None
        self._test_scope.__exit__(None, None, None)
        self._test_deadline = None
        data = {_text(k): _text(v) for k, v in dict(result).items()}
        found = self._findings_at_end(passed=data.get("outcome") == "passed", check_leaks=not timed_out)
        if found and data.get("outcome") in ("passed", "skipped"):
            data = {"outcome": "error", "message": found}
        elif found:
            data["message"] = f"{data.get('message') or ''}\n{found}"
        self._allow_warnings(self._vms.values())  # the test's allowance ends with it
        failed = data.get("outcome") in ("failed", "error")
        if failed and not _SECTION.search(data.get("message") or ""):  # no console or kernel report in it yet
            tails = {self._vms[h].name: self._vms[h].console_tail() for h in test["vms"] if h in self._vms}
            data["consoles"] = {name: tail for name, tail in tails.items() if tail.strip()}
        if failed and self.options.artifacts:
            self._keep_artifacts(test, data)
        mine = {h: self._vms.pop(h) for h in test["vms"] if h in self._vms}
        if timed_out:  # the guests are in an unknown state: kill them, and the one the test was stuck in
            stuck = self._vms.pop(self._stuck_vm, None) or self._workers.get(self._stuck_vm)
            for vm in [*mine.values(), getattr(stuck, "vm", stuck)]:
                if vm is not None:
                    vm.kill()
        self._stop_vms(mine)
        if data.get("where") is None and data.get("outcome") != "passed":
            data["where"] = test["where"]
        self._report(data, name=test["name"], duration=time.monotonic() - test["started"])

    def _findings_at_end(self, passed, check_leaks):
        """What fails the test besides its own failure: in a passed test, the findings its ops raised
        that its code caught (pcall) and its leaks (when it checks them, and there is time); in any
        test, every kernel report on a console not reported yet."""
        problems = [str(GuestCrash(vm.name, *zip(*vm.reported))) for vm in self._vms.values()
                    if passed and vm.reported]
        try:
            problems += self._leaks(passed and check_leaks)
        except AgentError as exc:  # kmemleak could not scan
            problems.append(str(exc))
        for vm in list(self._vms.values()):
            try:
                vm.check_console()
            except GuestCrash as exc:
                problems.append(str(exc))
        return "\n".join(problems)

    def _keep_artifacts(self, test, data):
        """--artifacts: the failed test's record, the full console log of each of its VMs, and each kernel
        finding of the test as the kernel printed it and with its frames decoded."""
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{self.display_name}--{test['name']}").strip("_")
        target = self.options.artifacts / slug
        target.mkdir(parents=True, exist_ok=True)
        consoles, found = {}, []
        for handle, vm in self._vms.items():
            stem = f"{handle}-{re.sub(r'[^A-Za-z0-9_.-]+', '_', vm.name)}"
            if handle in test["vms"]:
                (target / f"console-{stem}.log").write_text(vm.console_text())
                consoles[vm.name] = f"console-{stem}.log"
            for index, (finding, decoded) in enumerate(vm.reported, 1):
                (target / f"finding-{stem}-{index}.txt").write_text(finding.report + "\n")
                (target / f"finding-{stem}-{index}.decoded.txt").write_text(decoded + "\n")
                found.append({"vm": vm.name, "kind": finding.kind, "title": finding.title,
                              "report": f"finding-{stem}-{index}.txt", "decoded": f"finding-{stem}-{index}.decoded.txt"})
        record = {"file": self.display_name, "test": test["name"], "where": data.get("where") or test["where"],
                  "duration": time.monotonic() - test["started"], "consoles": consoles, "findings": found,
                  **{k: v for k, v in data.items() if isinstance(v, str)}}
        (target / "failure.json").write_text(json.dumps(record, indent=1))

    def _op_output(self, text):
        self._output.append(_text(text))

    @staticmethod
    def _stop_vms(vms):
        for vm in vms.values():
            vm.shutdown()


KERNEL_LOG_TAIL_LINES = 20


def kernel_log_tail(vm):
    """The last lines of a running guest's kernel log, titled (its console tail when the agent cannot
    answer): why an insmod or a mount in a fixture script failed is usually there."""
    if vm.state != "running":
        return ""
    try:
        log = vm.exec(f"dmesg | tail -n {KERNEL_LOG_TAIL_LINES}").stdout.decode("utf-8", "replace")
    except ProviumError:
        return format_console_tail(vm.console_text(), lines=KERNEL_LOG_TAIL_LINES)
    return f"--- kernel log of VM {vm.name!r} (last {KERNEL_LOG_TAIL_LINES} lines) ---\n{log.rstrip()}"


def build_fixture(fixtures, name, path, build_dir):
    """Run fixtures/NAME.lua in its own runtime (Fixtures' script runner)."""
    lua = LuaFile(path, display_name(path), fixtures.config, fixtures.cache, on_test=lambda _: None,
                  fixtures=fixtures, snapshot_root=build_dir,
                  options=FileOptions(timeouts=fixtures.timeouts, scratch=fixtures.options.scratch,
                                      preparer=fixtures.preparer, aliases=fixtures.options.aliases))
    return lua.build_fixture()
