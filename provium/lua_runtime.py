"""One Lua runtime per test file: the prelude, the bridge to the Python core, and the file's VMs.

The Lua side (provium/lua/prelude.lua) defines everything a test author sees.
It reaches Python only through the bridge (bridge.py: the guest op table and
the guard that turns errors into Lua failures). LuaFile composes the parts of
a file's run: its sandbox on the host (host_files.py), its VMs and workers by
handle, and each test's lifecycle (test_run.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import lupa.lua54 as lua

from . import deadline
from .bridge import Bridge, text
from .errors import ProviumError, VmStateError
from .fixtures import BuildResult
from .guest import GuestOps, Worker
from .host_files import HostFiles, display_name
from .profile_build import Prepared, Preparer
from .results import DETAIL_KEYS, Outcome, TestResult
from .test_run import TestRun, TestSpec
from .config import RunSettings
from .vm import Disk, Timeouts, Vm, accelerator, format_console_tail

PRELUDE_NAME = b"provium"
PRELUDE = resources.files("provium").joinpath("lua/prelude.lua").read_text()
LUA_MAX_MEMORY = 1 << 30  # per test file: a runaway string.rep fails in Lua instead of exhausting the host


@dataclass(frozen=True)
class FileOptions:
    """How the runner wants a file run. Deadlines are in seconds, already scaled for the accelerator;
    the default is RunSettings' (provium.toml's [run] defaults) for the accelerator in use."""

    timeouts: Timeouts | None = None  # None: from RunSettings, as test_timeout and file_timeout
    test_timeout: float | None = None
    file_timeout: float | None = None
    slowdown: float | None = None  # applied to a test's own {timeout = N}
    keyword: str | None = None  # run only tests whose name (or file name) contains it
    collect_only: bool = False  # record test names, boot nothing, run no test body
    artifacts: Path | None = None
    # asked before each test the keyword selects: False skips it (the run stopped early, --fail-fast; pytest
    # asks for another test). It may wait until the test's turn comes (the pytest plugin).
    runs_now: Callable[[str], bool] = lambda name: True
    scratch: Path | None = None  # the run's scratch directory: provium.path("@tmp"), where files may write
    preparer: Preparer | None = None  # the run's; None: one of the file's own
    aliases: tuple = ()  # (NAME, PROFILE) pairs: provium.create(NAME) boots PROFILE (a --matrix cell)
    # called with a failed test's result, once reported, and the VM or worker it last used (None: it used
    # none), before the test's VMs stop (--shell-on-failure)
    on_failure: Callable[[TestResult, GuestOps | None], None] | None = None

    def __post_init__(self):
        for name, value in _deadlines(RunSettings()).items():  # each one not given
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)

    @classmethod
    def for_run(cls, run: RunSettings, accel: str | None = None, **options) -> FileOptions:
        """The options of a suite whose [run] is `run`, under `accel` (None: the accelerator in use)."""
        return cls(**{**_deadlines(run, accel), **options})


def _deadlines(run: RunSettings, accel: str | None = None) -> dict:
    """FileOptions' deadlines from `run`, scaled for `accel` (None: the accelerator in use)."""
    factor = run.slowdown(accel or accelerator()[0])
    return {"timeouts": Timeouts.from_settings(run, accel), "slowdown": factor,
            "test_timeout": run.test_timeout * factor, "file_timeout": run.file_timeout * factor}


def _no_attributes(obj, name, is_setting):
    """lupa's attribute filter: Lua code reaches no attribute of any Python object."""
    raise AttributeError("Python objects are not reachable from test files")


@dataclass(frozen=True)
class Evaluated:
    """A chunk typed at a prompt, run (LuaFile.evaluate)."""

    values: tuple[str, ...] = ()  # each value it returned, shown as assertions show values
    failure: TestResult | None = None  # why it stopped: an error or an assertion, with its file:line and values
    output: str = ""  # what it printed


class LuaFile:
    """Runs one Lua file: a test file (run) or a fixture script (build_fixture).

    Each test's TestResult goes to `on_test`; `on_test_start` gets each test's name and file:line as it begins
    (or is listed, with collect_only). With snapshot_root, the file is a fixture being built: its
    VMs keep their RAM in files under snapshot_root.
    """

    def __init__(self, path, display, config, cache, on_test: Callable[[TestResult], None],
                 interrupted: Callable[[], bool] = lambda: False, fixtures=None, snapshot_root: Path | None = None,
                 options: FileOptions | None = None, on_test_start: Callable[[str, str], None] = lambda name, where: None):
        self.path = Path(path)
        self.display_name = display
        self.config = config
        self.cache = cache
        self.on_test = on_test
        self.on_test_start = on_test_start
        self.interrupted = interrupted
        self.fixtures = fixtures
        self.snapshot_root = snapshot_root
        self.options = options = options or FileOptions()
        self.fixture_deps = {}
        self.preparer = options.preparer or Preparer(cache)
        self.files = HostFiles(self.path, config.root, options.scratch, fixture=snapshot_root is not None,
                               build_dir=lambda name: self._profile(name).build_dir, listing=options.collect_only)
        self.vms: dict[int, Vm] = {}
        self.workers: dict[int, GuestOps] = {}
        self._next_handle = 1
        self._test: TestRun | None = None
        self._gone: dict[int, str] = {}  # why a VM the file made is no longer its own, by handle
        self._stuck: set[int] = set()  # the handles of the VMs and workers timed-out ops were waiting for
        self._output: list[str] = []
        self.runtime = lua.LuaRuntime(encoding=None, unpack_returned_tuples=True, max_memory=LUA_MAX_MEMORY,
                                      register_eval=False, register_builtins=False,
                                      attribute_filter=_no_attributes)
        self.runtime.globals().python = None
        self.bridge = Bridge(self.runtime, self._target, self._timed_out, interrupted, options.collect_only)
        table = self.bridge.table({
            "create": (self._create, (0,)), "fixture": (self._fixture, (0,)),
            "require_source": (self.files.require_source, None), "path": (self.files.anchor, None),
            "host_path": (self.files.host_path, None), "shutdown_all": (self._shutdown_all, None),
            "vm_boot": (self._boot, ()), "vm_spawn": (self._spawn, (0, 0, 0)), "vm_shutdown": (self._shutdown, ()),
            "vm_kill": (self._kill, ()), "worker_kill": (self._kill, ()),
            "begin_test": (self._begin_test, None), "end_test": (self._end_test, None),
        }, {"output": self._output.append, "expired": self._expired, "now": time.monotonic,
            "max_memory": LUA_MAX_MEMORY})
        boot_prelude = self.runtime.eval(
            "function(src, name, bridge) return assert(load(src, name, 't'))(bridge) end")
        self._run_source, self._evaluate_source = boot_prelude(PRELUDE.encode(), b"=" + PRELUDE_NAME, table)

    # ------------------------------------------------------------ the file

    def _execute(self) -> tuple[TestResult | None, int | None]:
        """Run the file's chunk: (its file-level failure or None, the handle of a VM it returned or None)."""
        started = time.monotonic()
        try:
            source = self.path.read_bytes()
        except OSError as exc:
            return self._file_failure({"message": f"cannot read {self.display_name}: {exc.strerror}"}, started), None
        failure, handle = self._run_source(source, b"@" + display_name(self.path).encode())  # file:line, no [cell]
        return (self._file_failure(dict(failure), started) if failure is not None else None), handle

    def _file_failure(self, reported: dict, started: float) -> TestResult:
        data = {text(k): text(v) for k, v in reported.items()}
        return TestResult(self.display_name, "<file>", Outcome.ERROR, time.monotonic() - started,
                          message=data.get("message") or "", where=data.get("where") or "",
                          traceback=data.get("traceback") or "", output=self._take_output())

    def run(self) -> None:
        """Run the file; a file-level error (syntax, error outside tests) is reported as a result."""
        try:
            with deadline.until(time.monotonic() + self.options.file_timeout):
                failure, _ = self._execute()
            if failure is not None:
                self._report(failure)
        finally:
            self._stop(list(self.vms))
            self.bridge.close()

    def build_fixture(self) -> BuildResult:
        """Run a fixture script; the BuildResult holding the VM to snapshot (still running)."""
        failures = []
        self.on_test = lambda result: failures.append(result) if result.outcome.failed else None
        try:
            failure, handle = self._execute()
            failure = failure or next(iter(failures), None)
            if failure is not None:
                message = f"{failure.where}: {failure.message}" if failure.where else failure.message
                raise ProviumError("\n".join([message, *map(kernel_log_tail, self.vms.values())]).rstrip())
            vm = self.vms.pop(self._returned(handle))
            if vm.state != "running":
                raise ProviumError(f"{self.display_name} returned a VM that is not running ({vm.state})")
            return BuildResult(vm, tuple(self.files.required), dict(self.fixture_deps))
        finally:
            self._stop(list(self.vms))
            self.bridge.close()

    def _returned(self, handle: int | None) -> int:
        """The VM a fixture script returned, or its only running one."""
        if handle is not None:
            return handle
        running = [h for h, vm in self.vms.items() if vm.state == "running"]
        if len(running) != 1:
            raise ProviumError(f"{self.display_name} must return the VM to snapshot "
                               f"(it has {len(running)} running VMs)")
        return running[0]

    def _report(self, result: TestResult) -> None:
        if not self.interrupted():  # else the test did not finish: the run reports the interruption instead
            self.on_test(result)

    def _take_output(self) -> str:
        output, self._output[:] = "".join(map(text, self._output)), []
        return output

    def _timed_out(self, handles: list[int], what: str | None) -> str:
        """The message for a deadline that passed during `what` (an op on the VMs or workers `handles`; None:
        Lua code)."""
        self._stuck.update(handles)
        where = f" in {what}" if what else " in Lua code"
        if self._test is not None and self._test.timed_out():
            return f"test {self._test.spec.name!r} timed out after {self._test.spec.timeout:.0f} s{where}"
        return f"{self.display_name} timed out after {self.options.file_timeout:.0f} s{where}"

    def _expired(self):
        """Why Lua code must stop now (for the Lua hook): the deadline passed or the run was
        interrupted; else nil."""
        if self.interrupted():
            return b"the run was interrupted"
        if deadline.expired():
            return self._timed_out([], None).encode()
        return None

    # ------------------------------------------------------------ a prompt (provium repl)

    def open_session(self, source: str, chunkname: str) -> int | None:
        """Run `source` as the file's chunk; chunks given to evaluate() run in its environment from now on. The
        handle of the VM it returned (None: it returned none); ProviumError with the message of its failure."""
        failure, handle = self._run_source(source.encode(), b"=" + chunkname.encode())
        if failure is not None:
            raise ProviumError(text(failure[b"message"]) or "interrupted")
        return handle

    def evaluate(self, source: str, chunkname: str) -> Evaluated | None:
        """Run a chunk typed at a prompt in open_session's environment, as the standalone `lua` does: as
        `return <chunk>` when that compiles, else as statements. None when the chunk ends before its syntax
        does (more lines may complete it): nothing ran."""
        started = time.monotonic()
        status, answer = self._evaluate_source(source.encode(), b"=" + chunkname.encode())
        if status == b"incomplete":
            return None
        if status == b"values":
            return Evaluated(tuple(text(answer[i]) for i in range(1, len(answer) + 1)), output=self._take_output())
        data = {text(k): text(v) for k, v in answer.items()}
        failure = TestResult(self.display_name, chunkname, Outcome(data.get("outcome", "error")),
                             time.monotonic() - started, message=data.get("message") or "",
                             where=data.get("where") or "", traceback=data.get("traceback") or "",
                             details={k: data[k] for k in DETAIL_KEYS if data.get(k) is not None})
        return Evaluated(failure=failure, output=self._take_output())

    def end_open_test(self, message: str) -> None:
        """End, as an error with `message`, the test the prelude could not end (its Lua was interrupted)."""
        if self._test is not None:
            self._end_test({b"outcome": b"error", b"message": message.encode()})

    def close(self) -> None:
        """Stop every VM the file made and end its lanes (what run() does at its end)."""
        self._stop(list(self.vms))
        self.bridge.close()

    # ------------------------------------------------------------ VMs and workers

    def _target(self, handle: int) -> GuestOps:
        """The VM or worker behind a handle."""
        target = self.vms.get(handle) or self.workers.get(handle)
        if target is None:
            raise VmStateError(self._gone.get(handle, f"no VM with handle {handle}"))
        return target

    def _new_handle(self) -> int:
        handle, self._next_handle = self._next_handle, self._next_handle + 1
        return handle

    def _snapshot_dir(self, handle: int) -> Path | None:
        return self.snapshot_root / f"vm{handle}" if self.snapshot_root else None

    def _profile(self, name: str) -> Prepared:
        """The profile `name` stands for in this run (a --matrix cell maps names), prepared to boot."""
        name = dict(self.options.aliases).get(name, name)
        prepared = self.preparer.prepare(self.config.profile(name))
        self.files.prepared(prepared.build_dir)
        return prepared

    def _add_vm(self, handle: int, vm: Vm) -> int:
        self.vms[handle] = vm
        if self._test is not None:
            self._test.adopt(handle, vm)
        self._allow_warnings([vm])
        return handle

    def _allow_warnings(self, vms) -> None:
        """Kernel warnings are allowed on a VM whose profile allows them, and during a test that does."""
        allowed = self._test is not None and self._test.spec.allow_warnings
        for vm in vms:
            vm.allow_warnings = allowed or vm.profile.allow_warnings

    def _create(self, profile: bytes) -> int:
        handle, prepared = self._new_handle(), self._profile(text(profile))
        vm = Vm(prepared.profile, self.cache, snapshot_dir=self._snapshot_dir(handle), timeouts=self.options.timeouts)
        vm.symbols = prepared.symbols()
        return self._add_vm(handle, vm)

    def _fixture(self, name: bytes) -> int:
        name, handle = text(name), self._new_handle()
        vm = self.fixtures.clone(name, snapshot_dir=self._snapshot_dir(handle))
        if self.snapshot_root:
            self.fixture_deps[name] = self.fixtures.entry(name).identity
        return self._add_vm(handle, vm)

    def _boot(self, handle: int, memory, cpus, files, disks) -> None:
        checked = []
        for index, disk in enumerate((disks[i] for i in range(1, len(disks) + 1)), 1):
            readonly = bool(disk[b"readonly"])
            # a fixture's disks are written through overlays: their images are only read
            written = not readonly and self.snapshot_root is None
            what = f"boot option disks[{index}]" + (" (writable: the guest writes to it)" if written else "")
            checked.append(Disk(self.files.check(disk[b"path"], written, what), text(disk[b"format"]), readonly))
        files = {text(guest): self.files.check(host, False, f"boot option files[{text(guest)!r}]")
                 for guest, host in files.items()}
        self.files.used(*files.values(), *(disk.path for disk in checked))
        vm = self._target(handle)
        vm.boot(memory=text(memory), cpus=cpus, files=files, disks=checked)
        if self._test is not None:
            self._test.arm_leak_check(vm)

    def _spawn(self, handle: int, thread: bool) -> tuple[int, int, int]:
        vm = self._target(handle)
        if not isinstance(vm, Vm):
            raise ProviumError("spawn: only a VM can spawn workers")
        worker = vm.spawn(thread=thread)
        worker_handle = self._new_handle()
        self.workers[worker_handle] = worker
        return worker_handle, worker.pid, worker.tid

    def _shutdown(self, handle: int) -> None:
        self._target(handle).shutdown()

    def _kill(self, handle: int) -> None:
        self._target(handle).kill()

    def _shutdown_all(self) -> None:
        handles = self._test.vms if self._test is not None else list(self.vms)
        self._stop([h for h in handles if h in self.vms])

    def _stop(self, handles) -> None:
        for handle in handles:
            self.vms[handle].shutdown()

    # ------------------------------------------------------------ tests

    def _begin_test(self, name, where, timeout, allow_warnings=False, kconfig=None, leak_check=None):
        """True when the test runs, (True, reason) when it is skipped here, False when it is not run."""
        name = text(name)
        keyword = self.options.keyword
        if (keyword and keyword not in name and keyword not in self.display_name) or not self.options.runs_now(name):
            return False
        if self.options.collect_only:
            self.on_test_start(name, text(where))
            return False
        spec = TestSpec(name, text(where), self.options.test_timeout if timeout is None else
                        timeout * self.options.slowdown, bool(allow_warnings),
                        tuple(text(kconfig[i]) for i in range(1, len(kconfig or {}) + 1)), leak_check)
        self._test = TestRun(spec, self.display_name, self.preparer, self.options.artifacts)
        self._allow_warnings(self.vms.values())
        self._output.clear()
        self._stuck.clear()
        self.bridge.last_handle = None
        self.on_test_start(name, spec.where)
        reason = self._test.begin(list(self.vms.values()))
        return (True, reason) if reason else True

    def _end_test(self, reported) -> None:
        test, self._test = self._test, None
        stuck_vms = {self.vms.get(h) or getattr(self.workers.get(h), "vm", None) for h in self._stuck}
        stuck = [h for h, vm in self.vms.items() if vm in stuck_vms]  # a worker's VM stands for it
        result = test.end(dict(reported), self.vms, self._take_output())
        self._report(result)
        if result.outcome.failed and not test.expired and self.options.on_failure is not None:
            self.options.on_failure(result, self._last_used(test))
        test.release(self.vms, [self.vms[h] for h in stuck])
        killed = stuck if test.expired else []
        for handle in [*test.vms, *killed]:
            vm = self.vms.pop(handle, None)
            if vm is not None:
                self._gone[handle] = (f"VM {vm.name!r} was killed when test {test.spec.name!r} timed out in it"
                                      if handle in killed else
                                      f"VM {vm.name!r} was stopped at the end of test {test.spec.name!r}, which made it")
        self._allow_warnings(self.vms.values())  # the test's allowance ends with it

    def _last_used(self, test: TestRun) -> GuestOps | None:
        """The running VM or worker the test's last op ran on; else a running VM of the test, or of the file."""
        last = self.workers.get(self.bridge.last_handle) or self.vms.get(self.bridge.last_handle)
        if isinstance(last, Worker) and last.killed:
            last = last.vm
        candidates = [last] if last is not None else []
        candidates += [self.vms[h] for h in test.vms if h in self.vms] + list(self.vms.values())
        return next((t for t in candidates if (t.vm if isinstance(t, Worker) else t).state == "running"), None)


KERNEL_LOG_TAIL_LINES = 20


def kernel_log_tail(vm: Vm) -> str:
    """The last lines of a running guest's kernel log, titled (its console tail when the agent cannot
    answer): why an insmod or a mount in a fixture script failed is usually there."""
    if vm.state != "running":
        return ""
    try:
        log = vm.exec(f"dmesg | tail -n {KERNEL_LOG_TAIL_LINES}").stdout.decode("utf-8", "replace")
    except ProviumError:
        return format_console_tail(vm.console_text(), lines=KERNEL_LOG_TAIL_LINES)
    return f"--- kernel log of VM {vm.name!r} (last {KERNEL_LOG_TAIL_LINES} lines) ---\n{log.rstrip()}"


def build_fixture(fixtures, name: str, path: Path, build_dir: Path) -> BuildResult:
    """Run fixtures/NAME.lua in its own runtime (Fixtures' script runner)."""
    lua = LuaFile(path, display_name(path), fixtures.config, fixtures.cache, on_test=lambda _: None,
                  fixtures=fixtures, snapshot_root=build_dir,
                  options=FileOptions(timeouts=fixtures.timeouts, scratch=fixtures.options.scratch,
                                      preparer=fixtures.preparer, aliases=fixtures.options.aliases))
    return lua.build_fixture()
