"""A guest for a person at a terminal: a VM booted from a profile (or resumed from a fixture) in the test
sandbox, bound to `vm` in a Lua environment of its own, and stopped however the session ends.

Shared by the commands that hand a guest to a person (`provium repl`). No deadline applies: a person takes
the time they take. Lua code still stops when the person interrupts it (the `interrupted` callable): the
Lua hook and the bridge consult it, and the ops in flight are abandoned (the host stops waiting for them).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from . import config as config_mod, protocol, qemu, tempdirs
from .cache import Cache
from .errors import AgentError, ConfigError, DeadlineError, ProviumError
from .fixtures import FixtureError, Fixtures
from .lua_runtime import FileOptions, LuaFile, build_fixture
from .profile_build import Preparer
from .results import TestResult
from .vm import DISK_FORMATS, Vm, accelerator

DISPLAY_NAME = "<interactive>"  # the virtual file's name in reports
SETUP_CHUNK = "provium"  # the setup's chunk name
WATCH_STEP = 0.05  # seconds between looks at the interrupt while Lua runs
SETTLE_GRACE = 2.0  # seconds an abandoned op has to end before its worker is killed (or its VM named busy)
PING_FLOOR = 0.2  # the shortest wait for an answer from each further worker once the grace has passed
BOOT_OPTIONS = {"memory": "--memory", "cpus": "--cpus", "files": "--file", "disks": "--disk"}  # by argument name
_DISK_FORMAT = re.compile(r"^[a-z0-9]+$")


def add_guest_arguments(parser: argparse.ArgumentParser) -> None:
    """The guest's arguments: a profile to boot, or a fixture to resume, and the boot options of vm:boot."""
    which = parser.add_mutually_exclusive_group()
    which.add_argument("profile", nargs="?", default=config_mod.BUILTIN_PROFILE,
                       help=f"the profile to boot (default: {config_mod.BUILTIN_PROFILE}, the built-in one)")
    which.add_argument("--fixture", metavar="NAME",
                       help="resume the suite's fixture fixtures/NAME.lua instead of booting a profile")
    boot = parser.add_argument_group("boot options (as vm:boot takes them; not with --fixture)")
    boot.add_argument("--memory", metavar="SIZE", help="guest memory, such as 512M or 1G (default: the profile's)")
    boot.add_argument("--cpus", metavar="N", type=int, help="virtual CPUs (default: the profile's)")
    boot.add_argument("--file", metavar="GUEST=HOST", action="append", dest="files", default=[],
                      help="copy host file HOST to guest path GUEST after boot (repeatable)")
    boot.add_argument("--disk", metavar="PATH[:FORMAT][:ro]", action="append", dest="disks", default=[],
                      help=f"attach an image as /dev/vda, /dev/vdb, ... in order; FORMAT is "
                           f"{' or '.join(DISK_FORMATS)} (default raw); ro: read-only (repeatable)")


class Terminated(BaseException):
    """SIGTERM or SIGHUP (the terminal closed) ended the session; `status` is the exit status it calls for."""

    def __init__(self, signum: int):
        super().__init__(f"terminated by signal {signum}")
        self.status = 128 + signum


@dataclass(frozen=True)
class Evaluation:
    """What Guest.run did with a chunk. With `incomplete`, nothing ran: the chunk ends before its syntax does,
    so more lines may complete it."""

    incomplete: bool = False
    values: tuple[str, ...] = ()  # each value the chunk returned, shown as assertions show values
    failure: TestResult | None = None  # why it stopped: an error or an assertion, with its file:line and values
    output: str = ""  # what it printed (print, io.write)
    tests: tuple[TestResult, ...] = ()  # the tests it ran (test() at the prompt), in order
    interrupted: bool = False  # the person stopped it
    notes: tuple[str, ...] = ()  # what the interruption left behind: workers killed, a VM still busy


class _Unpooled(Fixtures):
    """Fixtures without the pool of warm clones: a person at a terminal asks for few, and a clone resumed
    in the background only takes the host's memory and CPU from theirs."""

    def clone(self, name, snapshot_dir=None):
        return self.resume(name, snapshot_dir)


class Guest:
    """A booted guest bound to `vm` in a Lua environment at the suite root (the suite found from the current
    directory, as `provium run` finds it), where require, provium.path and every API function work as in a
    test file there.

    `interrupted()` is true once the person wants the Lua code running now stopped (the caller resets it
    before each run). While entered, SIGTERM and SIGHUP end the session: Terminated is raised at once, or
    when the Lua code running has stopped. Leaving stops every VM and removes the scratch directory.
    """

    def __init__(self, args: argparse.Namespace, interrupted: Callable[[], bool]):
        self.args = args
        self.interrupted = interrupted
        self.lua: LuaFile | None = None
        self.vm: Vm | None = None
        self.busy = False  # an interrupt now asks the Lua code running to stop, if any (else it interrupts Python)
        self._lua_running = False
        self._signal: int | None = None  # the SIGTERM or SIGHUP that ends the session
        self._closing = False
        self._handlers: dict[int, object] = {}
        self._tests: list[TestResult] = []
        self._scratch: Path | None = None
        self._fixtures: Fixtures | None = None

    # ------------------------------------------------------------ the session

    def __enter__(self) -> Guest:
        self._handlers = {signum: signal.signal(signum, self._on_signal) for signum in (signal.SIGTERM, signal.SIGHUP)}
        try:
            self._open()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _on_signal(self, signum, frame) -> None:
        self._signal = signum
        if not self.busy and not self._closing:
            raise Terminated(signum)

    def _open(self) -> None:
        args = self.args
        config = config_mod.load()
        qemu.find_qemu()
        given = [option for name, option in BOOT_OPTIONS.items() if getattr(args, name) not in (None, [])]
        if args.fixture and given:
            raise ConfigError(f"--fixture {args.fixture} resumes a guest that is already booted: "
                              f"{', '.join(given)} do not apply")
        if args.memory:
            config_mod.parse_memory(args.memory, "--memory")
        self._scratch = tempdirs.make("run")
        cache = Cache.for_suite(config)
        preparer = Preparer(cache, _notice)
        options = FileOptions.for_run(config.run, scratch=self._scratch, preparer=preparer)
        self._fixtures = _Unpooled(config, cache, build_fixture, options)
        self.lua = LuaFile(config.root / DISPLAY_NAME, DISPLAY_NAME, config, cache, on_test=self._tests.append,
                           interrupted=self._stop_requested, fixtures=self._fixtures, options=options)
        if args.fixture:
            try:
                self._fixtures.source(args.fixture)
            except FixtureError as exc:
                raise ConfigError(str(exc)) from None
            setup = f"vm = provium.fixture({lua_string(args.fixture)})"
        else:
            preparer.prepare(config.profile(args.profile))  # its kernel fetched or built now, and its errors
            setup = f"vm = provium.create({lua_string(args.profile)})\nvm:boot{self._boot_table()}"
        _, notice = accelerator()
        if notice:
            _notice(notice)
        with self._busy():
            handle, stopped = self._run_lua(lambda: self.lua.open_session(setup + "\nreturn vm", SETUP_CHUNK))
        if stopped:
            raise Terminated(self._signal) if self._signal is not None else KeyboardInterrupt()
        self.vm = self.lua.vms[handle]

    def _boot_table(self) -> str:
        """vm:boot's options table, in Lua, from the command line's; the host files checked as the sandbox
        checks them (host paths are relative to the current directory)."""
        args = self.args
        fields = []
        if args.memory:
            fields.append(f"memory = {lua_string(args.memory)}")
        if args.cpus is not None:
            fields.append(f"cpus = {args.cpus}")
        files = []
        for value in args.files:
            guest, equals, host = value.partition("=")
            if not equals or not guest or not host:
                raise ConfigError(f"--file {value!r}: expected GUEST=HOST, such as /root/x.ko=build/x.ko")
            files.append(f"[{lua_string(guest)}] = {lua_string(self._host_file(host, f'--file {value}'))}")
        if files:
            fields.append("files = {" + ", ".join(files) + "}")
        disks = []
        for index, value in enumerate(args.disks):
            path, disk_format, readonly = parse_disk(value)
            path = self._host_file(path, f"--disk {value}")
            if not readonly:
                path, disk_format = self._overlay(path, disk_format, index, f"--disk {value}"), "qcow2"
            disks.append(f"{{path = {lua_string(path)}, format = {lua_string(disk_format)}, "
                         f"readonly = {'true' if readonly else 'false'}}}")
        if disks:
            fields.append("disks = {" + ", ".join(disks) + "}")
        return "{" + ", ".join(fields) + "}"

    def _host_file(self, name: str, what: str) -> str:
        """The absolute path of a host file named on the command line, checked: it exists, and the sandbox
        lets a test file at the suite root read it."""
        path = os.path.abspath(name)
        if not os.path.isfile(path):
            raise ConfigError(f"{what}: file not found: {path}")
        try:
            self.lua.files.check(path, False, what)
        except ProviumError as exc:
            raise ConfigError(str(exc)) from None
        return path

    def _overlay(self, image: str, image_format: str, index: int, what: str) -> str:
        """A qcow2 overlay of `image` in the scratch directory, for a writable disk: the guest writes to it, never
        to the image (as a fixture's disks are written)."""
        overlay = self._scratch / f"disk{index}.qcow2"
        made = subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", image_format, "-b", image,
                               str(overlay)], capture_output=True, text=True)
        if made.returncode != 0:
            raise ConfigError(f"{what}: cannot make an overlay of it: {made.stderr.strip()}")
        return str(overlay)

    def close(self) -> None:
        """Stop every VM and remove the scratch directory (idempotent; an interrupt does not cut it short)."""
        self._closing = True
        with self._busy():
            if self.lua is not None:
                self.lua.close()
            if self._fixtures is not None:
                self._fixtures.close()
            if self._scratch is not None:
                shutil.rmtree(self._scratch, ignore_errors=True)
        for signum, handler in self._handlers.items():
            signal.signal(signum, handler)
        self._handlers = {}

    # ------------------------------------------------------------ running Lua

    def run(self, source: str, chunkname: str) -> Evaluation:
        """Evaluate a chunk in the environment where `vm` is bound (see LuaFile.evaluate); `chunkname` names it
        in errors (stdin:1: ...). Terminated when a signal ended the session meanwhile."""
        with self._busy():
            evaluated, stopped = self._run_lua(lambda: self.lua.evaluate(source, chunkname))
            notes = self._settle() if stopped else []
        if self._signal is not None:
            raise Terminated(self._signal)
        tests, self._tests[:] = tuple(self._tests), []
        if evaluated is None:
            return Evaluation(incomplete=True)
        return Evaluation(values=evaluated.values, failure=evaluated.failure, output=evaluated.output, tests=tests,
                          interrupted=stopped, notes=tuple(notes))

    @contextmanager
    def _busy(self) -> Iterator[None]:
        self.busy = True
        try:
            yield
        finally:
            self.busy = False

    def _stop_requested(self) -> bool:
        """What the Lua hook and the bridge consult: the Lua code running must stop."""
        return self._lua_running and (self._signal is not None or self.interrupted())

    def _run_lua(self, call: Callable[[], object]) -> tuple[object, bool]:
        """call()'s value, and whether the Lua code was asked to stop meanwhile (then the value is None when
        call() failed). While it runs, a watcher abandons the guest ops in flight once it is asked to."""
        finished = threading.Event()
        watcher = threading.Thread(target=self._watch, args=(finished,), name="provium-interrupt", daemon=True)
        self._lua_running = True
        watcher.start()
        try:
            try:
                value = call()
            except ProviumError:  # the setup's failure: one the interruption caused is no failure
                if not self._stop_requested():
                    raise
                value = None
            stopped = self._stop_requested()
        finally:
            self._lua_running = False
            finished.set()
            watcher.join()
        return value, stopped

    def _watch(self, finished: threading.Event) -> None:
        while not finished.wait(WATCH_STEP):
            if self._stop_requested():
                self._abandon_ops()

    def _abandon_ops(self) -> None:
        """Fail every guest op in flight (the waits of the Lua thread and of its tasks' lanes end at once);
        the guest may still be running them."""
        error = AgentError("interrupted")
        workers = list(self.lua.workers.values())
        for vm in list(self.lua.vms.values()):
            client = vm.client
            if vm.state != "running" or client is None:
                continue
            channels = [protocol.ROUTER_CHANNEL, protocol.MAIN_CHANNEL]
            channels += [worker.channel for worker in workers if worker.vm is vm and not worker.killed]
            for channel in channels:
                client.abandon(channel, error)

    def _settle(self) -> list[str]:
        """After an interruption: end the test it left open, kill the workers still running an abandoned op
        and name the VMs whose own process still runs one. What was done, one line each."""
        self.lua.end_open_test("interrupted")
        notes = []
        ends = time.monotonic() + SETTLE_GRACE
        workers = list(self.lua.workers.values())
        for vm in list(self.lua.vms.values()):
            if vm.state != "running":
                continue
            targets = [(protocol.MAIN_CHANNEL, None)]
            targets += [(worker.channel, worker) for worker in workers if worker.vm is vm and not worker.killed]
            for channel, worker in targets:
                if not _still_busy(vm, channel, max(PING_FLOOR, ends - time.monotonic())):
                    continue
                if worker is None:
                    notes.append(f"VM {vm.name!r} is still running an interrupted op in its own process "
                                 "(which cannot be killed alone): its next ops wait until that op ends")
                    continue
                with suppress(ProviumError):  # the VM is gone: its next op says why
                    worker.kill()
                notes.append(f"worker {worker.tid} of VM {vm.name!r} was still running an interrupted op: "
                             "it was killed")
        return notes


def _still_busy(vm: Vm, channel: int, timeout: float) -> bool:
    """True when the guest process on `channel` does not answer a ping within `timeout` seconds (its ops run
    one at a time: it is still running one). A VM that is gone is not busy: its next op says why."""
    try:
        vm.client.request(channel, "ping", timeout)
    except DeadlineError:
        return True
    except ProviumError:
        pass
    return False


def parse_disk(value: str) -> tuple[str, str, bool]:
    """--disk PATH[:FORMAT][:ro] as (path, format, readonly); ConfigError for a bad one."""
    parts = value.split(":")
    readonly = len(parts) > 1 and parts[-1] == "ro"
    if readonly:
        parts.pop()
    disk_format = "raw"
    if len(parts) > 1 and _DISK_FORMAT.match(parts[-1]):
        disk_format = parts.pop()
        if disk_format not in DISK_FORMATS:
            raise ConfigError(f"--disk {value!r}: format {disk_format!r} is not one of {', '.join(DISK_FORMATS)}")
    path = ":".join(parts)
    if not path:
        raise ConfigError(f"--disk {value!r}: expected PATH[:FORMAT][:ro], such as disk.img:raw:ro")
    return path, disk_format, readonly


def lua_string(value: str) -> str:
    """A Lua string literal of `value`: printable ASCII as it is, every other byte escaped."""
    escaped = "".join(chr(byte) if 32 <= byte < 127 and chr(byte) not in '"\\' else f"\\{byte:03d}"
                      for byte in value.encode("utf-8", "surrogateescape"))
    return f'"{escaped}"'


def _notice(line: str) -> None:
    print(f"provium: {line}", file=sys.stderr)
