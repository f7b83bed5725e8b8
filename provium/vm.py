"""The Python core of a guest: boot it, run ops in it, shut it down.

This layer knows nothing of Lua: the Lua binding, the runner and any Python
user drive guests through Vm. Ops run on an agent channel (the VM's main
worker is channel 1); guest.GuestOps holds them so that workers (guest.Worker) share them.
"""

from __future__ import annotations

import functools
import os
import shlex
import shutil
import subprocess
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from . import agent_build, deadline, findings, images, protocol, qemu, resources, symbolize
from .agent_client import AgentClient, ConnectionLost
from .config import RunSettings, parse_memory
from .errors import (AgentError, BootError, ConfigError, DeadlineError, ImageError, ProtocolError, ProviumError,
                     VmStateError)
from .findings import Finding, Located
from .guest import GuestOps, Worker

if TYPE_CHECKING:
    from .cache import Cache
    from .config import Profile

SHUTDOWN_TIMEOUT = 10.0
CONSOLE_TAIL_LINES = 25

REPORT_SETTLE = 2.0  # seconds to wait for the rest of a kernel report still being printed


@dataclass(frozen=True)
class Timeouts:
    """Seconds a boot and an agent op may take (before any test deadline clamps them), already scaled
    for the accelerator."""

    boot: float
    op: float

    @classmethod
    def from_settings(cls, run: RunSettings = RunSettings(), accel: str | None = None) -> Timeouts:
        """run's boot and op timeouts (RunSettings' defaults when not given) scaled for `accel` (None: the
        accelerator in use)."""
        factor = run.slowdown(accel or accelerator()[0])
        return cls(boot=run.boot_timeout * factor, op=run.op_timeout * factor)


class GuestCrash(AgentError):
    """The guest kernel reported bugs on its console (a panic, an oops, a BUG, a warning, a sanitizer or
    lockdep report), or kmemleak found leaks: each Finding with its report, frames decoded."""

    def __init__(self, vm_name: str, found: tuple[Finding, ...], decoded: tuple[str, ...]):
        self.vm_name, self.findings, self.decoded = vm_name, found, decoded
        sections = (f"--- {f.kind} ---\n{text}" for f, text in zip(found, decoded))
        super().__init__("\n".join([f"VM {vm_name!r}: {found[0].name}", *sections]))


SNAPSHOT_RAM = "ram"
SNAPSHOT_STATE = "state"


@dataclass(frozen=True)
class SnapshotSpec:
    """What a snapshot's clones must start with: the source's exact machine."""

    profile: str
    vmlinux: str
    initrd: str
    cmdline: str
    memory_mib: int
    cpus: int
    accel: str
    disks: tuple = ()  # (format, readonly) per disk, in order
    qemu_args: tuple = ()


def _overlay(path, backing, backing_format):
    """A new qcow2 overlay at `path` whose writes stay out of `backing`."""
    result = subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", backing_format, "-b", str(Path(backing).resolve()), str(path)],
        capture_output=True, text=True)
    if result.returncode != 0:
        raise ImageError(f"cannot create a disk overlay on {backing}: {result.stderr.strip()}")
    return path


@dataclass(frozen=True)
class Disk:
    """A host image attached as a virtio disk (/dev/vda, /dev/vdb, ... in order)."""

    path: Path
    format: str = "raw"
    readonly: bool = False


DISK_FORMATS = ("raw", "qcow2")


def check_disks(disks):
    for index, disk in enumerate(disks, 1):
        if disk.format not in DISK_FORMATS:
            raise ConfigError(f"boot option disks[{index}]: format {disk.format!r} is not one of {', '.join(DISK_FORMATS)}")
        if not disk.path.is_file():
            raise ConfigError(f"boot option disks[{index}]: file not found: {disk.path}")


def read_boot_files(files):
    """{guest path: (bytes, mode)} for boot option files: {guest path: host Path}."""
    loaded = {}
    for guest, host in files.items():
        if not guest.startswith("/"):
            raise ConfigError(f"boot option files: guest path {guest!r} must be absolute")
        try:
            loaded[guest] = (host.read_bytes(), host.stat().st_mode & 0o777)
        except OSError as exc:
            raise ConfigError(f"boot option files[{guest!r}]: cannot read {host}: {exc.strerror}") from None
    return loaded


@functools.lru_cache(maxsize=None)
def accelerator():
    """("kvm"|"tcg", notice): probed once per process."""
    return qemu.choose_accel()


@functools.lru_cache(maxsize=None)
def host_tsc_khz(agent_path):
    out = subprocess.run([str(agent_path), "--tsc-khz"], capture_output=True, text=True, check=True)
    return int(out.stdout)


class Vm(GuestOps):
    """A guest booted from a profile. States: created → running → stopped.

    timeouts: None is RunSettings' defaults for the accelerator in use."""

    def __init__(self, profile: Profile, cache: Cache, name: str | None = None,
                 snapshot_dir: str | Path | None = None, timeouts: Timeouts | None = None) -> None:
        self.profile = profile
        self.cache = cache
        self.timeouts = Timeouts.from_settings() if timeouts is None else timeouts
        self.crash = None  # the GuestCrash of a fatal finding: every later op raises it again
        self.allow_warnings = False  # kernel warnings on the console fail the op or test that sees them
        self.symbols = symbolize.Symbols(None)  # where the frames of its kernel's reports are decoded
        self.reported: list[tuple[Finding, str]] = []  # findings raised so far, with their decoded report
        self.leak_since: int | None = None  # the guest's jiffies when the leak check was armed (kmemleak.arm)
        self._console_seen = 0  # where the next scan starts: after the last whole line scanned
        self._console_size = 0  # the log's size at the last scan
        self._console_lock = threading.Lock()  # ops of several threads scan the console one at a time
        self._stop_lock = threading.Lock()
        self._death_lock = threading.Lock()
        self._death: str | None = None  # why it stopped answering (with its console), once an op found out
        self._reserved = 0
        self.name = name or profile.name
        self.snapshot_dir = Path(snapshot_dir) if snapshot_dir else None
        self._disposable = False  # a clone nothing of which outlives it (see shutdown)
        self.spec: SnapshotSpec | None = None
        self.disk_backings = ()  # (image, format) under each disk's overlay, when started for a snapshot
        self.state = "created"
        self.machine: qemu.QemuMachine | None = None
        self.client: AgentClient | None = None

    def __repr__(self):
        return f"<Vm {self.name} {self.state}>"

    def boot(self, memory: str | None = None, cpus: int | None = None, files: Mapping[str, Path] | None = None,
             disks: Iterable[Disk] = ()) -> None:
        """Start the guest and wait until its agent answers.

        files: {guest path: host Path} copied in after boot (parents created,
        host mode kept). disks: Disk images attached in order. A Vm made with
        snapshot_dir keeps its RAM in a file there and writes its disks to
        overlays there, so that snapshot() can save it.
        """
        if self.state != "created":
            raise VmStateError(f"VM {self.name!r} cannot boot: it is {self.state}")
        memory_mib, cpus, disks, boot_files = self._boot_options(memory, cpus, files, disks)
        timeout = deadline.clamp(self.timeouts.boot)
        started = time.monotonic()
        machine = self._boot_machine(memory_mib, cpus, disks)
        self._start(machine, memory_mib, cold=True, timeout=timeout, started=started)
        if boot_files:
            self._copy_in(boot_files)
            self.symbols = self.symbols.with_modules(files.values())

    def _boot_options(self, memory, cpus, files, disks):
        """(memory in MiB, cpus, disks, {guest path: (bytes, mode)}) from boot()'s options, the profile's
        where not given; ConfigError names a bad one."""
        memory_mib = self.profile.memory_mib if memory is None else parse_memory(memory, "boot option memory")
        if cpus is None:
            cpus = self.profile.cpus
        if not isinstance(cpus, int) or isinstance(cpus, bool) or not 1 <= cpus <= 64:
            raise ConfigError(f"boot option cpus must be an integer from 1 to 64, not {cpus!r}")
        disks = list(disks)
        check_disks(disks)
        return memory_mib, cpus, disks, read_boot_files(files or {})

    def _boot_machine(self, memory_mib, cpus, disks):
        """The QemuMachine that boots the profile's kernel; its machine becomes self.spec."""
        boot_images = images.prepare(self.profile, self.cache)
        accel, _ = accelerator()
        tsc = host_tsc_khz(agent_build.build(self.cache))
        ram_file, disks = self._boot_storage(disks)
        self.spec = SnapshotSpec(
            profile=self.profile.name, vmlinux=str(boot_images.vmlinux), initrd=str(boot_images.initrd),
            cmdline=qemu.kernel_cmdline(accel, tsc, self.profile.cmdline), memory_mib=memory_mib,
            cpus=cpus, accel=accel, disks=tuple((d.format, d.readonly) for d in disks),
            qemu_args=self.profile.qemu_args)
        return self._machine(disks, ram_file=ram_file)

    def _boot_storage(self, disks):
        """(RAM file, disks): none and the disks themselves; with snapshot_dir, a RAM file there and
        overlays there of the disks (which become disk_backings)."""
        if self.snapshot_dir is None:
            return None, disks
        self.snapshot_dir.mkdir(parents=True, exist_ok=True)
        self.disk_backings = tuple((d.path, d.format) for d in disks)
        overlays = [Disk(_overlay(self.snapshot_dir / f"disk{i}.qcow2", d.path, d.format), "qcow2", d.readonly)
                    for i, d in enumerate(disks)]
        return self.snapshot_dir / SNAPSHOT_RAM, overlays

    def _machine(self, disks, **storage):
        """A QemuMachine for self.spec with these disks; storage: QemuMachine's ram_file, ram_shared,
        incoming and workdir."""
        spec = self.spec
        return qemu.QemuMachine(
            vmlinux=spec.vmlinux, initrd=spec.initrd, cmdline=spec.cmdline, memory_mib=spec.memory_mib,
            cpus=spec.cpus, accel=spec.accel, disks=disks, name=self.name, extra_args=spec.qemu_args, **storage)

    def _start(self, machine, reserve_mib, *, cold, timeout, started):
        """Reserve host memory, launch `machine` and shake hands with the guest's agent: a cold boot waits
        for the agent's hello first; a resume loads the snapshot first and sets the guest's clock after.
        BootError when the guest does not come up within `timeout` seconds of `started`; killed on any
        failure."""
        try:
            self._reserved = resources.host_memory.reserve(reserve_mib, f"VM {self.name!r}")
        except BaseException:
            machine.kill()  # it never ran: this removes its workdir
            raise
        self.machine, self.state = machine, "running"
        try:
            self._connect(cold, timeout, started)
        except (ConnectionLost, DeadlineError) as exc:
            raise BootError(f"VM {self.name!r} {_not_started(exc, cold, timeout)}: {self._explain()}") from None
        except GuestCrash as exc:
            if not self.crash:  # a warning while booting fails the boot as it is
                self.kill()
                raise
            # a panic seen on the console before QEMU exited: the same error as when it has exited
            raise BootError(f"VM {self.name!r} {_not_started(exc, cold, timeout)}: {self._explain()}") from None
        except BaseException:
            self.kill()
            raise

    def _connect(self, cold, timeout, started):
        """_start's launch and handshake, the agent's waits bounded by what is left of the boot's time."""
        def left(floor=0.0):
            return max(floor, started + timeout - time.monotonic())

        self.client = AgentClient(self.machine.launch(timeout), watch=self.check_console)
        if not cold:
            self.machine.resume_incoming(timeout)
        if self.snapshot_dir is None:
            self.machine.release_qmp()
        if cold:
            self.client.wait_hello(left())
        self.client.handshake(left(1.0))
        if not cold:
            self.client.request(protocol.ROUTER_CHANNEL, "set_clock", left(1.0), realtime_ns=time.time_ns())

    def _copy_in(self, boot_files):
        parents = sorted({str(Path(p).parent) for p in boot_files})
        made = self.exec("mkdir -p " + " ".join(shlex.quote(p) for p in parents))
        if not made.ok:
            raise AgentError(f"boot option files: mkdir failed: {made.stderr.decode(errors='replace').strip()}")
        for guest, (data, mode) in boot_files.items():
            self.write_file(guest, data, mode)

    def _request(self, op, timeout=None, /, **fields):
        return self._call(protocol.MAIN_CHANNEL, op, timeout, **fields)

    def _link(self):
        return self, protocol.MAIN_CHANNEL

    def _call(self, channel, op, timeout, /, **fields):
        """An op on a channel: timeout None is the VM's op timeout; the thread's deadline clamps it. Ops on
        different channels may run at once from several threads."""
        if self.crash:
            raise GuestCrash(self.name, self.crash.findings, self.crash.decoded)
        if self.state != "running":
            raise VmStateError(f"VM {self.name!r} is not running ({self.state}): cannot {op}")
        try:
            reply = self.client.request(channel, op, deadline.clamp(self.timeouts.op if timeout is None else timeout),
                                        **fields)
        except ConnectionLost:
            raise self._lost(op) from None
        except ProtocolError as exc:
            self.kill()  # a guest that talks garbage is not trusted with another request
            raise AgentError(f"{op}: VM {self.name!r} stopped: {exc}") from None
        self.check_console()  # what the kernel printed while the op ran fails the op, at the caller's line
        return reply

    def _lost(self, op: str) -> ProviumError:
        """The error for an op whose connection was lost: the guest died (explained once, for every op in
        flight), or the VM was stopped from another thread while the op ran."""
        with self._death_lock:
            if self._death is None:
                if self.state != "running":
                    return VmStateError(f"VM {self.name!r} was stopped while {op} ran")
                self._death = self._explain()
        return AgentError(f"{op}: VM {self.name!r} died: {self._death}")

    def check_console(self) -> None:
        """Raise GuestCrash for the kernel's reports on the console not reported yet (warnings only where
        not allowed). A fatal one (a panic, an oops) is raised again by every later op."""
        with self._console_lock:
            if self.crash or self.machine is None or not self._console_grew():
                return
            raised = tuple(located.finding for located in self._scan_console()
                           if not (located.finding.kind == findings.KERNEL_WARNING and self.allow_warnings))
            if not raised:
                return
            crash = self.crash_for(raised)
            if any(finding.fatal for finding in raised):
                self.crash = crash
        raise crash

    def _console_grew(self):
        """True when the console log changed since the last scan (which starts over if it was trimmed)."""
        size = self.machine.sync_console()
        if size == self._console_size:
            return False
        if size < self._console_size:
            self._console_seen = 0  # the log was trimmed (a flooding guest)
        self._console_size = size
        return True

    def _scan_console(self) -> list[Located]:
        """The reports in the console's whole lines not scanned yet; one still being printed is given up to
        REPORT_SETTLE seconds to end."""
        console = self.machine.console_text()
        end = console.rfind("\n") + 1  # whole lines only: an unfinished one is read again next time
        found = findings.scan(console, self._console_seen, end)
        settle = time.monotonic() + REPORT_SETTLE
        while found and not found[-1].complete and time.monotonic() < settle:
            time.sleep(0.05)  # the kernel is still printing it
            self.machine.sync_console()
            console = self.machine.console_text()
            found = findings.scan(console, self._console_seen, end)
        self._console_seen = max([end, *(located.end for located in found)])
        return found

    def crash_for(self, raised: tuple[Finding, ...]) -> GuestCrash:
        """The GuestCrash for findings of this VM, their frames decoded (on the harness's time, not the
        test's); they are kept in `reported` for the test's artifacts."""
        with deadline.suspended():
            decoded = tuple(symbolize.decode(finding.report, self.symbols) for finding in raised)
        self.reported.extend(zip(raised, decoded))
        return GuestCrash(self.name, raised, decoded)

    def _explain(self):
        """Why the guest stopped answering, with the console tail; kills it."""
        machine = self.machine
        if machine.returncode is None:
            machine.wait(1.0)
        code = machine.returncode
        console = machine.console_text()
        self.kill()
        fatal = next((located for located in findings.scan(console) if located.finding.fatal), None)
        if fatal:
            head = fatal.finding.name
        elif code is None:
            head = "the guest stopped answering"
        else:
            head = f"QEMU exited with status {code}" + (f" ({machine.stderr_text()})" if machine.stderr_text() else "")
        return f"{head}\n{format_console_tail(console, fatal.start if fatal else None)}"

    @classmethod
    def resume(cls, profile: Profile, cache: Cache, spec: SnapshotSpec, entry: str | Path, name: str | None = None,
               snapshot_dir: str | Path | None = None, timeouts: Timeouts | None = None) -> Vm:
        """A running clone of the snapshot in directory `entry` (made by snapshot()).

        The clone maps the snapshot's RAM file copy-on-write and writes its disks
        to overlays of its own. With snapshot_dir, the clone gets a private copy
        of the RAM file there instead, so that it can be snapshotted in turn.
        """
        vm = cls(profile, cache, name, snapshot_dir, timeouts)
        vm.spec = spec
        vm._disposable = snapshot_dir is None
        timeout = deadline.clamp(vm.timeouts.boot)
        machine = vm._clone_machine(Path(entry))
        # a clone shares the snapshot's pages until it writes: reserve a quarter of its RAM
        vm._start(machine, spec.memory_mib // 4, cold=False, timeout=timeout, started=time.monotonic())
        return vm

    def _clone_machine(self, entry):
        """The QemuMachine that resumes the snapshot in `entry`."""
        workdir = qemu.make_workdir()
        try:
            ram_file, shared = self._clone_ram(entry)
            disks = self._clone_disks(entry, self.snapshot_dir or workdir)
            return self._machine(disks, ram_file=ram_file, ram_shared=shared, incoming=entry / SNAPSHOT_STATE,
                                 workdir=workdir)
        except BaseException:
            shutil.rmtree(workdir, ignore_errors=True)
            raise

    def _clone_ram(self, entry):
        """(RAM file, shared): the snapshot's, mapped copy-on-write; with snapshot_dir, a private copy there."""
        if self.snapshot_dir is None:
            return entry / SNAPSHOT_RAM, False
        self.snapshot_dir.mkdir(parents=True, exist_ok=True)
        ram_file = self.snapshot_dir / SNAPSHOT_RAM
        subprocess.run(["cp", "--sparse=always", str(entry / SNAPSHOT_RAM), str(ram_file)], check=True)
        return ram_file, True

    def _clone_disks(self, entry, disk_dir):
        """Overlays in disk_dir of the snapshot's frozen disks (with snapshot_dir, these become disk_backings)."""
        frozen = [entry / f"disk{i}.qcow2" for i in range(len(self.spec.disks))]
        if self.snapshot_dir is not None:
            self.disk_backings = tuple((path, "qcow2") for path in frozen)
        return [Disk(_overlay(disk_dir / f"disk{i}.qcow2", path, "qcow2"), "qcow2", readonly)
                for i, (path, (_, readonly)) in enumerate(zip(frozen, self.spec.disks))]

    def snapshot(self) -> SnapshotSpec:
        """Save the running guest into its snapshot_dir and stop it; returns its SnapshotSpec."""
        if self.snapshot_dir is None:
            raise VmStateError(f"VM {self.name!r} was not started for a snapshot")
        if self.state != "running":
            raise VmStateError(f"VM {self.name!r} is not running ({self.state}): cannot snapshot")
        self.machine.snapshot(self.snapshot_dir / SNAPSHOT_STATE)
        self.kill()
        for path in self.snapshot_dir.iterdir():
            with open(path, "rb+") as f:
                os.fsync(f.fileno())
        return self.spec

    def spawn(self, thread: bool = False) -> Worker:
        """A new worker: a forked copy of the VM's main worker process, or a thread of it."""
        reply = self._call(protocol.ROUTER_CHANNEL, "spawn", None, thread=bool(thread))
        return Worker(self, reply["channel"], reply["pid"], reply["tid"], bool(thread))

    def console_text(self) -> str:
        """Everything the guest printed on its console (kept after it stops)."""
        return self.machine.console_text() if self.machine is not None else ""

    def console_tail(self, lines: int = CONSOLE_TAIL_LINES) -> str:
        return "\n".join(self.console_text().splitlines()[-lines:])

    def shutdown(self, timeout: float = SHUTDOWN_TIMEOUT) -> None:
        """Power the guest off; force-kill QEMU if it has not exited after `timeout`. A clone without a
        snapshot_dir is killed at once: nothing of it outlives it (its RAM is a copy-on-write map of the
        snapshot's, its disks are overlays in its work directory), so powering its guest off would only cost
        time (~30 ms under TCG)."""
        if self.state != "running":
            return
        if self._disposable:
            self.kill()
            return
        try:
            self.client.request(protocol.ROUTER_CHANNEL, "poweroff", min(timeout, 5.0))
        except (ConnectionLost, DeadlineError, AgentError):
            pass
        self._stop(timeout)

    def kill(self) -> None:
        """Terminate QEMU at once. Safe in any state."""
        self._stop(None)

    def _stop(self, timeout):
        """Stop QEMU (given `timeout` seconds to exit on its own; None: at once), close the agent connection
        and give back the VM's host memory."""
        with self._stop_lock:
            if self.state != "created":
                self.state = "stopped"
            if self.machine is not None:
                self.machine.shutdown(timeout)
            if self.client is not None:
                self.client.close()
            if self._reserved:
                resources.host_memory.release(self._reserved)
                self._reserved = 0


def _not_started(exc, cold, timeout):
    """How a boot or a resume failed when the agent connection was lost, the kernel crashed or time ran out."""
    if not cold:
        return f"did not resume: {exc}"
    return f"did not boot within {timeout:.0f} s" if isinstance(exc, DeadlineError) else "did not boot"


def format_console_tail(console: str, at: int | None = None, lines: int = CONSOLE_TAIL_LINES) -> str:
    """The last console lines, or those around offset `at` (where a panic starts)."""
    if at is None:
        shown, title = console.splitlines()[-lines:], "console tail"
    else:
        first = max(0, console.count("\n", 0, at) - 5)
        shown, title = console.splitlines()[first:first + lines], "console around the failure"
    if not shown:
        return "--- console: (empty) ---"
    return f"--- {title} ---\n" + "\n".join(shown)
