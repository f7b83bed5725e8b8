"""One QEMU process: its command line, its life, its QMP monitor and console log.

The fastest reliable configuration measured on TCG hosts (docs in
../shared/DESIGN.md and the README): microvm, PVH boot of the uncompressed
vmlinux, a trimmed kernel command line and the host TSC frequency handed to the
guest. QEMU connects to three unix sockets this module listens on: the QMP
monitor (through qemu.qmp), the agent's virtio-serial port and the serial
console (copied into a log file of bounded size).

QEMU never outlives the harness: it is started through `setpriv --pdeathsig
KILL` (the kernel kills it when the thread that started it dies, SIGKILL of
provium included), in its own process group, and every live machine is killed
at interpreter exit.
"""

from __future__ import annotations

import atexit
import logging
import os
import select
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from qemu.qmp.legacy import QEMUMonitorProtocol

from . import tempdirs
from .errors import ConfigError, QemuError

if TYPE_CHECKING:
    from .vm import Disk

QEMU_BINARY = "qemu-system-x86_64"
CONSOLE_LOG_MAX = 8 * 1024 * 1024
CONSOLE_LOG_HEAD = 256 * 1024

# Each entry was measured to shorten a TCG boot (see the README's Performance section).
FAST_CMDLINE = (
    "quiet cryptomgr.notests rodata=off init_on_alloc=0 no_timer_check "
    "ipv6.disable=1 pnpacpi=off 8250.nr_uarts=1 audit=0 "
    "initcall_blacklist=crypto_kdf108_init,init_kprobe_trace,cubictcp_register,"
    "tcp_congestion_default,bpf_rstat_kfunc_init,bpf_key_sig_kfuncs_init,kfunc_init,"
    "bpf_prog_test_run_init,init_trace_printk_function_export,init_blk_tracer,"
    "load_system_certificate_list,init_graph_tracefs,init_encrypted,snapshot_device_init,"
    "vga_arb_device_init,ged_driver_init,blake2s_mod_init,acpi_thermal_init,cxl_core_init,"
    "bpf_tcp_ca_kfunc_init"
)

# After `quiet`: the console shows warnings too (a `WARNING:` splat fails a test), not notices or info.
CONSOLE_LOGLEVEL = "loglevel=5"

# A guest that powers off closes QMP under qemu.qmp's reader, which logs that as an error; it is expected.
logging.getLogger("qemu.qmp").addHandler(logging.NullHandler())
logging.getLogger("qemu.qmp").propagate = False

_live = set()
_live_lock = threading.Lock()


def find_qemu() -> str:
    path = shutil.which(QEMU_BINARY)
    if path is None:
        raise ConfigError(f"{QEMU_BINARY} not found (install it: apt-get install qemu-system-x86)")
    return path


def kvm_unusable_reason() -> str | None:
    """Why KVM cannot be used here, or None when it can.

    An openable /dev/kvm is not enough: nested guests without vmx/svm in the
    CPU flags hang, so the flags are checked too.
    """
    try:
        os.close(os.open("/dev/kvm", os.O_RDWR))
    except OSError as exc:
        return f"/dev/kvm: {exc.strerror}"
    with open("/proc/cpuinfo") as f:
        flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    if "vmx" not in flags and "svm" not in flags:
        return "the CPU has no vmx/svm flag (nested virtualization without hardware support)"
    return None


def choose_accel() -> tuple[str, str | None]:
    """("kvm"|"tcg", notice or None); PROVIUM_ACCEL=kvm|tcg overrides the probe."""
    forced = os.environ.get("PROVIUM_ACCEL")
    if forced:
        if forced not in ("kvm", "tcg"):
            raise ConfigError(f"PROVIUM_ACCEL={forced!r}: must be 'kvm' or 'tcg'")
        return forced, None
    reason = kvm_unusable_reason()
    if reason:
        return "tcg", f"KVM not used: {reason}; running under TCG"
    return "kvm", None


def kernel_cmdline(accel: str, tsc_khz: int, extra: str = "") -> str:
    words = ["console=ttyS0", "panic=-1", FAST_CMDLINE, CONSOLE_LOGLEVEL]
    if accel == "tcg":
        # microvm under TCG hangs in most boots without these: the guest TSC is the host's.
        words.append(f"tsc_early_khz={tsc_khz} tsc=reliable")
    else:
        # Under TCG, mitigations=off costs ~0.3 s of a 1.3 s boot: with Spectre v2 off the kernel rewrites
        # every retpoline call site, and TCG pays for self-modifying code. Under KVM the rewrite is quick.
        words.append("mitigations=off")
    if extra:
        words.append(extra)
    return " ".join(words)


class QemuMachine:
    """A QEMU process booting `vmlinux` + `initrd` on a microvm machine.

    Its life has phases, as in QEMU's own python/qemu/machine: launch() is _pre_launch (listen on the
    sockets, create the console log and the QMP server), _launch (start the process) and _post_launch
    (accept QEMU's connections); shutdown() is _soft_shutdown (let QEMU exit on its own), _hard_shutdown
    (kill it) and _post_shutdown (release what it held). A launch that fails shuts down what it started.
    """

    def __init__(self, *, vmlinux: str | Path, initrd: str | Path, cmdline: str, memory_mib: int, cpus: int,
                 accel: str, disks: Sequence[Disk] = (), name: str = "vm", ram_file: Path | None = None,
                 ram_shared: bool = True, incoming: Path | None = None, workdir: Path | None = None,
                 extra_args: Sequence[str] = ()) -> None:
        """ram_file: back guest RAM with this file (needed to snapshot or to resume);
        ram_shared=False maps it copy-on-write. incoming: a snapshot's device state
        file to resume from (the VM then waits paused for resume_incoming())."""
        binary = find_qemu()
        self.name = name
        self.workdir = Path(workdir) if workdir else make_workdir()
        self.console_path = self.workdir / "console.log"
        self.console_sock = self.workdir / "console"
        self.agent_path = self.workdir / "agent"
        self.qmp_path = self.workdir / "qmp"
        self._stderr_path = self.workdir / "qemu.stderr"
        self._incoming = incoming
        self.args = [
            binary, "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
            *_memory_args(accel, memory_mib, ram_file, ram_shared), "-smp", str(cpus),
            "-kernel", str(vmlinux), "-initrd", str(initrd), "-append", cmdline,
            *self._socket_args(), *extra_args, *_disk_args(disks),
            *([] if incoming is None else ["-incoming", "defer"]),
        ]
        self.process: subprocess.Popen | None = None
        self.qmp: QEMUMonitorProtocol | None = None
        self._listeners: dict[str, socket.socket] = {}  # while launching
        self._console_log: ConsoleLog | None = None
        self._final_console: str | None = None
        self._final_stderr: str | None = None

    def _socket_args(self) -> list[str]:
        """The console (as the serial port), the agent's virtio-serial port and the QMP monitor: unix sockets
        QEMU connects to."""
        return [
            "-chardev", f"socket,id=console,path={self.console_sock}", "-serial", "chardev:console",
            "-chardev", f"socket,id=agent,path={self.agent_path}",
            "-device", "virtio-serial-device",
            "-device", "virtserialport,chardev=agent,name=provium.agent",
            "-chardev", f"socket,id=qmp,path={self.qmp_path}", "-mon", "chardev=qmp,mode=control",
        ]

    def launch(self, timeout: float) -> socket.socket:
        """Start QEMU; returns the connected agent socket. QemuError on failure, which leaves no process
        and no workdir behind."""
        try:
            self._pre_launch()
            self._launch()
            return self._post_launch(timeout)
        except BaseException:
            self.kill()
            raise
        finally:
            for listener in self._listeners.values():
                listener.close()
            self._listeners = {}

    def _pre_launch(self) -> None:
        """Listen on the agent and console sockets, create the console log and the QMP server."""
        self._listeners["agent"] = _listen(self.agent_path)
        self._listeners["console"] = _listen(self.console_sock)
        self.console_path.touch()
        self.qmp = QEMUMonitorProtocol(str(self.qmp_path), server=True)

    def _launch(self) -> None:
        """Start QEMU under `setpriv --pdeathsig KILL` in a process group of its own; from now on
        kill_all() knows it."""
        with open(self._stderr_path, "wb") as stderr:
            self.process = subprocess.Popen(
                ["setpriv", "--pdeathsig", "KILL", "--", *self.args],
                stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr, process_group=0)
        with _live_lock:
            _live.add(self)

    def _post_launch(self, timeout: float) -> socket.socket:
        """Accept QEMU's connections within `timeout` seconds: the agent's (returned), the monitor's and the
        console's, copied into the console log from now on."""
        deadline = time.monotonic() + timeout
        agent = self._accept_agent(deadline, timeout)
        self._accept_qmp(deadline)
        self._accept_console(deadline)
        return agent

    def _accept_agent(self, deadline: float, timeout: float) -> socket.socket:
        """The agent socket once QEMU connects it; QemuError when QEMU exits or the deadline passes first."""
        listener = self._listeners["agent"]
        listener.settimeout(0.05)
        while True:
            try:
                agent, _ = listener.accept()
            except socket.timeout:
                if self.process.poll() is not None:
                    raise self._error(f"QEMU exited at start: {self.stderr_text() or 'no output'}") from None
                if time.monotonic() > deadline:
                    raise self._error(f"QEMU did not connect to the agent socket within {timeout:.0f} s") from None
                continue
            agent.setblocking(True)
            return agent

    def _accept_qmp(self, deadline: float) -> None:
        try:
            self.qmp.accept(timeout=max(0.1, deadline - time.monotonic()))
        except Exception as exc:  # qemu.qmp raises ConnectError, EOFError, TimeoutError...
            self.wait(1.0)
            detail = self.stderr_text() or f"{type(exc).__name__}: {exc}"
            raise self._error(f"QEMU's monitor did not come up: {detail}") from None
        self.qmp.settimeout(30.0)

    def _accept_console(self, deadline: float) -> None:
        listener = self._listeners["console"]
        listener.settimeout(max(0.1, deadline - time.monotonic()))
        try:
            self._console_log = ConsoleLog(listener.accept()[0], self.console_path)
        except socket.timeout:
            raise self._error("QEMU did not connect to the console socket") from None
        threading.Thread(target=self._console_log.run, name=f"console-{self.name}", daemon=True).start()

    def _error(self, message: str) -> QemuError:
        """A QemuError carrying QEMU's command line, exit status and stderr tail."""
        return QemuError(message, command=self.args, exit_code=self.returncode, stderr=self.stderr_text())

    def _cmd(self, name: str, **args: object) -> object:
        """A QMP command; QemuError (with QEMU's own words) when QEMU fails it or is gone."""
        try:
            return self.qmp.cmd(name, **args)
        except Exception as exc:  # qemu.qmp raises ExecuteError, StateError, EOFError...
            self.wait(0.5)
            raise self._error(f"QMP {name} failed: {self.stderr_text() or exc}") from None

    def _wait_migration(self, query: str, done: Callable[[dict], bool], what: str, timeout: float) -> dict:
        """Poll a QMP query until done(reply) is true; QemuError when it fails or times out."""
        deadline = time.monotonic() + timeout
        while True:
            reply = self._cmd(query)
            if done(reply):
                return reply
            status = reply.get("status")
            if status == "failed" or self.returncode is not None:
                raise self._error(f"{what} failed: {reply.get('error-desc') or self.stderr_text() or status}")
            if time.monotonic() > deadline:
                raise self._error(f"{what} did not finish within {timeout:.0f} s (status {status})")
            time.sleep(0.002)

    def _ignore_shared_ram(self) -> None:
        """Migrate device state only: guest RAM is the shared RAM file."""
        self._cmd("migrate-set-capabilities",
                  capabilities=[{"capability": "x-ignore-shared", "state": True}])

    def _pass_fd(self, fd: int, name: str) -> None:
        self.qmp.send_fd_scm(fd)
        self._cmd("getfd", fdname=name)

    def snapshot(self, state_path: Path, timeout: float = 60.0) -> None:
        """Pause the guest and save its device state to state_path (RAM stays in the RAM file)."""
        self._cmd("stop")
        self._ignore_shared_ram()
        self._cmd("migrate-set-parameters", **{"max-bandwidth": 1 << 40})
        with open(state_path, "wb") as state:
            self._pass_fd(state.fileno(), "snapshot")
            self._cmd("migrate", uri="fd:snapshot")
            self._wait_migration("query-migrate", lambda r: r.get("status") == "completed",
                                 "saving the snapshot", timeout)
            state.flush()
            os.fsync(state.fileno())
        if os.path.getsize(state_path) == 0:
            raise self._error("saving the snapshot wrote no device state")

    def resume_incoming(self, timeout: float = 30.0) -> None:
        """Load the snapshot given as `incoming`, then let the guest run."""
        self._ignore_shared_ram()
        with open(self._incoming, "rb") as state:
            self._pass_fd(state.fileno(), "snapshot")
        self._cmd("migrate-incoming", uri="fd:snapshot")
        self._wait_migration("query-status", lambda r: r.get("status") != "inmigrate",
                             "restoring the snapshot", timeout)
        self._cmd("cont")

    def release_qmp(self) -> None:
        """Close the monitor now, from the thread that opened it: a VM that is never snapshotted
        does not need it, and its event loop belongs to this thread."""
        if self.qmp is not None:
            try:
                self.qmp.close()
            except Exception:  # the monitor may already be gone with QEMU
                pass
            self.qmp = None

    def stderr_text(self) -> str:
        """The tail of what QEMU printed (kept once QEMU is gone), on one line."""
        if self._final_stderr is not None:
            return self._final_stderr
        try:
            return " ".join(self._stderr_path.read_text(errors="replace").split())[-500:]
        except OSError:
            return ""

    def sync_console(self) -> int:
        """Bring the console log up to date with what QEMU has written; the log's size in bytes."""
        return 0 if self._console_log is None else self._console_log.sync()

    def console_text(self) -> str:
        """What the guest printed on its console so far (all of it, once QEMU is gone)."""
        if self._final_console is not None:
            return self._final_console
        self.sync_console()
        try:
            return self.console_path.read_text(errors="replace")
        except OSError:
            return ""

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def wait(self, timeout: float) -> bool:
        """True when QEMU has exited within `timeout` seconds."""
        try:
            self.process.wait(timeout)
            return True
        except subprocess.TimeoutExpired:
            return False

    def shutdown(self, timeout: float | None = None) -> None:
        """Stop QEMU and remove its files; safe to call repeatedly. With `timeout` (the guest was asked
        to power off), QEMU has that many seconds to exit on its own before it is killed."""
        try:
            if timeout is not None:
                self._soft_shutdown(timeout)
            self._hard_shutdown()
        finally:
            self._post_shutdown()

    def kill(self) -> None:
        """Kill QEMU at once and remove its files. Safe to call repeatedly."""
        self.shutdown()

    def _soft_shutdown(self, timeout: float) -> None:
        if self.process is not None:
            self.wait(timeout)

    def _hard_shutdown(self) -> None:
        """SIGKILL QEMU's process group if QEMU still runs, and reap it."""
        if self.process is not None and self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait()

    def _post_shutdown(self) -> None:
        """Release the monitor, keep QEMU's last console and stderr text, remove the workdir."""
        self.release_qmp()
        with _live_lock:
            _live.discard(self)
        if self._final_console is None and self.workdir.exists():
            self._final_console = self.console_text()
            self._final_stderr = self.stderr_text()
        shutil.rmtree(self.workdir, ignore_errors=True)


class ConsoleLog:
    """Copies the guest's serial console into a log file of bounded size.

    A guest that floods its console must not fill the host's disk: past
    CONSOLE_LOG_MAX bytes the log keeps its first CONSOLE_LOG_HEAD bytes (the
    boot) and the newest output, with a line saying how much was dropped.
    sync() copies what QEMU has written so far, so that a scan right after a
    reply sees everything the guest printed before it.
    """

    def __init__(self, sock, path):
        self.sock = sock
        self.path = path
        self._out = open(path, "ab")
        self._size = self._out.tell()
        self._lock = threading.Lock()
        self._open = True

    def run(self):
        try:
            while self._open:
                select.select([self.sock], [], [])
                self.sync()
        finally:
            with self._lock:
                self._out.close()
                self.sock.close()

    def sync(self) -> int:
        """Copy everything the console socket holds now into the log (nothing once QEMU closed it); the log's
        size, which shrinks when the log is trimmed."""
        with self._lock:
            while self._open:
                try:
                    data = self.sock.recv(1 << 16, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    break
                except OSError:
                    data = b""
                if not data:
                    self._open = False  # QEMU went away
                    break
                self._out.write(data)
                self._out.flush()
                self._size = self._out.tell()
                if self._size > CONSOLE_LOG_MAX:
                    self._out.close()
                    self._trim()
                    self._out = open(self.path, "ab")
                    self._size = self._out.tell()
            return self._size

    def _trim(self):
        data = self.path.read_bytes()
        keep_tail = CONSOLE_LOG_MAX // 2
        head, tail = data[:CONSOLE_LOG_HEAD], data[-keep_tail:]
        dropped = len(data) - len(head) - len(tail)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_bytes(head + f"\n[provium: {dropped} bytes of console output dropped]\n".encode() + tail)
        os.replace(tmp, self.path)


_SOCKET_PATH_MAX = 100  # sun_path holds 108 bytes; the longest name here is "console"


def make_workdir() -> Path:
    """A private directory for one QEMU's sockets and logs; under /tmp when TMPDIR is too deep for sockets."""
    workdir = tempdirs.make()
    if len(str(workdir / "console")) > _SOCKET_PATH_MAX:
        workdir.rmdir()
        workdir = tempdirs.make(base="/tmp")
    return workdir


def _qemu_escape(path):
    """A path as a QEMU option value: commas doubled."""
    return str(path).replace(",", ",,")


def _memory_args(accel, memory_mib, ram_file, ram_shared):
    """The machine and its RAM: anonymous memory, or `ram_file` (shared, or mapped copy-on-write)."""
    if ram_file is None:
        return ["-machine", f"microvm,accel={accel}", "-m", str(memory_mib)]
    return [
        "-machine", f"microvm,accel={accel},memory-backend=ram",
        "-object", f"memory-backend-file,id=ram,size={memory_mib}M,"
                   f"mem-path={_qemu_escape(ram_file)},share={'on' if ram_shared else 'off'}",
        "-m", str(memory_mib),
    ]


def _disk_args(disks):
    """Each disk as a virtio-blk device, in order (/dev/vda, /dev/vdb, ...)."""
    args = []
    for index, disk in enumerate(disks):
        args += [
            "-drive", f"file={_qemu_escape(disk.path)},format={disk.format},if=none,id=disk{index},"
                      f"readonly={'on' if disk.readonly else 'off'}",
            "-device", f"virtio-blk-device,drive=disk{index}",
        ]
    return args


def _listen(path):
    """A unix socket listening at `path` for one connection."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.listen(1)
    return sock


def terminate_all() -> None:
    """Ask every QEMU this process started to exit (SIGTERM: QEMU flushes its disks and quits)."""
    with _live_lock:
        machines = list(_live)
    for machine in machines:
        if machine.process is not None and machine.process.poll() is None:
            try:
                os.killpg(machine.process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass


def kill_all() -> None:
    """Kill every QEMU this process started (signal handlers, atexit)."""
    with _live_lock:
        machines = list(_live)
    for machine in machines:
        machine.kill()


atexit.register(kill_all)
