"""The Python core of a guest: boot it, run ops in it, shut it down.

This layer knows nothing of Lua: the Lua binding, the runner and any Python
user drive guests through Vm. Ops run on an agent channel (the VM's main
worker is channel 1); guest.GuestOps holds them so that workers (guest.Worker) share them.
"""

import functools
import os
import shlex
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from . import agent_build, deadline, findings, images, protocol, qemu, resources, symbolize
from .agent_client import AgentClient, ConnectionLost
from .errors import ProtocolError
from .config import parse_memory
from .errors import AgentError, BootError, ConfigError, DeadlineError, ImageError, VmStateError
from .findings import Finding
from .guest import GuestOps, Worker

SHUTDOWN_TIMEOUT = 10.0
CONSOLE_TAIL_LINES = 25

REPORT_SETTLE = 2.0  # seconds to wait for the rest of a kernel report still being printed


@dataclass(frozen=True)
class Timeouts:
    """Seconds a boot and an agent op may take (before any test deadline clamps them)."""

    boot: float = 60.0
    op: float = 120.0

    @classmethod
    def from_settings(cls, run, accel):
        factor = run.tcg_slowdown if accel == "tcg" else 1.0
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
    """A guest booted from a profile. States: created → running → stopped."""

    def __init__(self, profile, cache, name=None, snapshot_dir=None, timeouts=Timeouts()):
        self.profile = profile
        self.cache = cache
        self.timeouts = timeouts
        self.crash = None  # the GuestCrash of a fatal finding: every later op raises it again
        self.allow_warnings = False  # kernel warnings on the console fail the op or test that sees them
        self.symbols = symbolize.Symbols(None)  # where the frames of its kernel's reports are decoded
        self.reported: list[tuple[Finding, str]] = []  # findings raised so far, with their decoded report
        self.leak_since: int | None = None  # the guest's jiffies when the leak check was armed (kmemleak.arm)
        self._console_seen = 0  # where the next scan starts: after the last whole line scanned
        self._console_size = 0  # the log's size at the last scan
        self._reserved = 0
        self.name = name or profile.name
        self.snapshot_dir = Path(snapshot_dir) if snapshot_dir else None
        self.spec = None
        self.disk_backings = ()  # (image, format) under each disk's overlay, when started for a snapshot
        self.state = "created"
        self.machine = None
        self.client = None

    def __repr__(self):
        return f"<Vm {self.name} {self.state}>"

    def boot(self, memory=None, cpus=None, files=None, disks=()):
        """Start the guest and wait until its agent answers.

        files: {guest path: host Path} copied in after boot (parents created,
        host mode kept). disks: Disk images attached in order. A Vm made with
        snapshot_dir keeps its RAM in a file there and writes its disks to
        overlays there, so that snapshot() can save it.
        """
        if self.state != "created":
            raise VmStateError(f"VM {self.name!r} cannot boot: it is {self.state}")
        memory_mib = self.profile.memory_mib if memory is None else parse_memory(memory, "boot option memory")
        if cpus is None:
            cpus = self.profile.cpus
        if not isinstance(cpus, int) or isinstance(cpus, bool) or not 1 <= cpus <= 64:
            raise ConfigError(f"boot option cpus must be an integer from 1 to 64, not {cpus!r}")
        disks = list(disks)
        check_disks(disks)
        boot_files = read_boot_files(files or {})
        timeout = deadline.clamp(self.timeouts.boot)
        started = time.monotonic()
        boot_images = images.prepare(self.profile, self.cache)
        accel, _ = accelerator()
        tsc = host_tsc_khz(agent_build.build(self.cache))
        ram_file = None
        if self.snapshot_dir is not None:
            self.snapshot_dir.mkdir(parents=True, exist_ok=True)
            ram_file = self.snapshot_dir / SNAPSHOT_RAM
            self.disk_backings = tuple((d.path, d.format) for d in disks)
            disks = [Disk(_overlay(self.snapshot_dir / f"disk{i}.qcow2", d.path, d.format), "qcow2", d.readonly)
                     for i, d in enumerate(disks)]
        self.spec = SnapshotSpec(
            profile=self.profile.name, vmlinux=str(boot_images.vmlinux), initrd=str(boot_images.initrd),
            cmdline=qemu.kernel_cmdline(accel, tsc, self.profile.cmdline), memory_mib=memory_mib,
            cpus=cpus, accel=accel, disks=tuple((d.format, d.readonly) for d in disks),
            qemu_args=self.profile.qemu_args)
        self._reserved = resources.host_memory.reserve(memory_mib, f"VM {self.name!r}")
        self.machine = qemu.QemuMachine(
            vmlinux=boot_images.vmlinux, initrd=boot_images.initrd, cmdline=self.spec.cmdline,
            memory_mib=memory_mib, cpus=cpus, accel=accel, disks=disks, name=self.name, ram_file=ram_file,
            extra_args=self.profile.qemu_args)
        self.state = "running"
        try:
            self.client = AgentClient(self.machine.launch(timeout), watch=self.check_console)
            if self.snapshot_dir is None:
                self.machine.release_qmp()
            remaining = timeout - (time.monotonic() - started)
            self.client.wait_hello(remaining)
            self.client.handshake(max(1.0, timeout - (time.monotonic() - started)))
        except (ConnectionLost, DeadlineError) as exc:
            what = "did not boot" if isinstance(exc, ConnectionLost) else f"did not boot within {timeout:.0f} s"
            raise BootError(f"VM {self.name!r} {what}: {self._explain()}") from None
        except BaseException:
            self.kill()
            raise
        if boot_files:
            self._copy_in(boot_files)
            self.symbols = self.symbols.with_modules((files or {}).values())

    def _copy_in(self, boot_files):
        parents = sorted({str(Path(p).parent) for p in boot_files})
        made = self.exec("mkdir -p " + " ".join(shlex.quote(p) for p in parents))
        if not made.ok:
            raise AgentError(f"boot option files: mkdir failed: {made.stderr.decode(errors='replace').strip()}")
        for guest, (data, mode) in boot_files.items():
            self.write_file(guest, data, mode)

    def _request(self, op, timeout=None, /, **fields):
        return self._call(protocol.MAIN_CHANNEL, op, timeout, **fields)

    def _call(self, channel, op, timeout, /, **fields):
        """An op on a channel: timeout None is the VM's op timeout; the thread's deadline clamps it."""
        if self.crash:
            raise GuestCrash(self.name, self.crash.findings, self.crash.decoded)
        if self.state != "running":
            raise VmStateError(f"VM {self.name!r} is not running ({self.state}): cannot {op}")
        try:
            reply = self.client.request(channel, op, deadline.clamp(self.timeouts.op if timeout is None else timeout),
                                        **fields)
        except ConnectionLost:
            raise AgentError(f"{op}: VM {self.name!r} died: {self._explain()}") from None
        except ProtocolError as exc:
            self.kill()  # a guest that talks garbage is not trusted with another request
            raise AgentError(f"{op}: VM {self.name!r} stopped: {exc}") from None
        self.check_console()  # what the kernel printed while the op ran fails the op, at the caller's line
        return reply

    def check_console(self):
        """Raise GuestCrash for the kernel's reports on the console not reported yet (warnings only where
        not allowed). A fatal one (a panic, an oops) is raised again by every later op."""
        if self.crash or self.machine is None:
            return
        self.machine.sync_console()
        try:
            size = self.machine.console_path.stat().st_size
        except OSError:
            return
        if size == self._console_size:
            return  # nothing new
        if size < self._console_size:
            self._console_seen = 0  # the log was trimmed (a flooding guest)
        self._console_size = size
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
        raised = tuple(located.finding for located in found
                       if not (located.finding.kind == findings.KERNEL_WARNING and self.allow_warnings))
        if raised:
            crash = self.crash_for(raised)
            if any(finding.fatal for finding in raised):
                self.crash = crash
            raise crash

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
    def resume(cls, profile, cache, spec, entry, name=None, snapshot_dir=None, timeouts=Timeouts()):
        """A running clone of the snapshot in directory `entry` (made by snapshot()).

        The clone maps the snapshot's RAM file copy-on-write and writes its disks
        to overlays of its own. With snapshot_dir, the clone gets a private copy
        of the RAM file there instead, so that it can be snapshotted in turn.
        """
        vm = cls(profile, cache, name, snapshot_dir, timeouts)
        vm.spec = spec
        timeout = deadline.clamp(timeouts.boot)
        workdir = qemu.make_workdir()
        disk_dir = vm.snapshot_dir or workdir
        ram_file, shared = Path(entry) / SNAPSHOT_RAM, False
        if vm.snapshot_dir is not None:
            vm.snapshot_dir.mkdir(parents=True, exist_ok=True)
            ram_file, shared = vm.snapshot_dir / SNAPSHOT_RAM, True
            subprocess.run(["cp", "--sparse=always", str(Path(entry) / SNAPSHOT_RAM), str(ram_file)], check=True)
        frozen = [Path(entry) / f"disk{i}.qcow2" for i in range(len(spec.disks))]
        if vm.snapshot_dir is not None:
            vm.disk_backings = tuple((path, "qcow2") for path in frozen)
        disks = [Disk(_overlay(disk_dir / f"disk{i}.qcow2", path, "qcow2"), "qcow2", readonly)
                 for i, (path, (_, readonly)) in enumerate(zip(frozen, spec.disks))]
        # a clone shares the snapshot's pages until it writes: reserve a quarter of its RAM
        vm._reserved = resources.host_memory.reserve(spec.memory_mib // 4, f"VM {vm.name!r}")
        vm.machine = qemu.QemuMachine(
            vmlinux=spec.vmlinux, initrd=spec.initrd, cmdline=spec.cmdline, memory_mib=spec.memory_mib,
            cpus=spec.cpus, accel=spec.accel, disks=disks, name=vm.name, ram_file=ram_file,
            ram_shared=shared, incoming=Path(entry) / SNAPSHOT_STATE, workdir=workdir, extra_args=spec.qemu_args)
        vm.state = "running"
        try:
            vm.client = AgentClient(vm.machine.launch(timeout), watch=vm.check_console)
            vm.machine.resume_incoming(timeout)
            if vm.snapshot_dir is None:
                vm.machine.release_qmp()
            vm.client.handshake(timeout)
            vm.client.request(protocol.ROUTER_CHANNEL, "set_clock", timeout, realtime_ns=time.time_ns())
        except (ConnectionLost, DeadlineError) as exc:
            raise BootError(f"VM {vm.name!r} did not resume: {exc}: {vm._explain()}") from None
        except BaseException:
            vm.kill()
            raise
        return vm

    def snapshot(self):
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

    def spawn(self, thread=False):
        """A new worker: a forked copy of the VM's main worker process, or a thread of it."""
        reply = self._call(protocol.ROUTER_CHANNEL, "spawn", None, thread=bool(thread))
        return Worker(self, reply["channel"], reply["pid"], reply["tid"], bool(thread))

    def console_text(self):
        """Everything the guest printed on its console (kept after it stops)."""
        return self.machine.console_text() if self.machine is not None else ""

    def console_tail(self, lines=CONSOLE_TAIL_LINES):
        return "\n".join(self.console_text().splitlines()[-lines:])

    def shutdown(self, timeout=SHUTDOWN_TIMEOUT):
        """Power the guest off; force-kill QEMU if it has not exited after `timeout`."""
        if self.state != "running":
            return
        try:
            self.client.request(protocol.ROUTER_CHANNEL, "poweroff", min(timeout, 5.0))
        except (ConnectionLost, DeadlineError, AgentError):
            pass
        self.machine.wait(timeout)
        self.kill()

    def kill(self):
        """Terminate QEMU at once. Safe in any state."""
        if self.client is not None:
            self.client.close()
        if self.machine is not None:
            self.machine.kill()
        if self._reserved:
            resources.host_memory.release(self._reserved)
            self._reserved = 0
        if self.state != "created":
            self.state = "stopped"


def format_console_tail(console, at=None, lines=CONSOLE_TAIL_LINES):
    """The last console lines, or those around offset `at` (where a panic starts)."""
    if at is None:
        shown, title = console.splitlines()[-lines:], "console tail"
    else:
        first = max(0, console.count("\n", 0, at) - 5)
        shown, title = console.splitlines()[first:first + lines], "console around the failure"
    if not shown:
        return "--- console: (empty) ---"
    return f"--- {title} ---\n" + "\n".join(shown)
