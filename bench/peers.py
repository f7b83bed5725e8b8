"""Peers, measured by this benchmark on the same kernel: the QEMU guest agent and virtme-ng.

Run: python bench/peers.py [--runs N] [--vng PATH]. QGA (Debian's qemu-ga, with
its libraries copied into the guest) runs beside provium's agent in one guest,
on a second virtio-serial port, so both answer through the same QEMU:
guest-exec + guest-exec-status polling against vm:exec, and
guest-file-open/read/close against vm:read_file, interleaved. virtme-ng boots
the same kernel for one command (`vng --run KERNEL --disable-kvm --exec
'uname -r'`) against `provium run` of one test doing the same, both whole
processes, alternating; and the same 20 commands as one script in one vng boot
(`vng --exec 'sh script'`) against provium's file of 20 tests, one command each,
on one VM. A peer that cannot run here is reported with the reason.
"""

import argparse
import base64
import dataclasses
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from provium import config
from provium.cache import Cache
from provium.vm import Vm

QGA_PORT = "org.qemu.guest_agent.0"
MIB = 1024 * 1024


def qga_files():
    """{guest path: host path} for qemu-ga and every library it loads (same paths in the guest)."""
    binary = shutil.which("qemu-ga") or "/usr/sbin/qemu-ga"
    if not Path(binary).exists():
        raise RuntimeError("qemu-ga is not installed (apt-get install qemu-guest-agent)")
    files = {"/usr/sbin/qemu-ga": Path(binary)}
    for line in subprocess.run(["ldd", binary], capture_output=True, text=True, check=True).stdout.splitlines():
        parts = line.split()
        path = parts[2] if "=>" in parts and len(parts) > 2 else parts[0]
        if path.startswith("/"):
            files[path] = Path(os.path.realpath(path))
    return files


class Qga:
    """A minimal QGA client: JSON commands over the socket QEMU serves for the port."""

    def __init__(self, path, timeout=30):
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX)
                self.sock.connect(str(path))
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self.reader = self.sock.makefile("rb")
        sync_id = 4242
        while True:  # qemu-ga may still be starting: sync until it answers
            self.sock.settimeout(1)
            try:
                if self.cmd("guest-sync", id=sync_id) == sync_id:
                    break
            except (socket.timeout, ValueError):
                if time.monotonic() > deadline:
                    raise RuntimeError("qemu-ga did not answer guest-sync") from None
        self.sock.settimeout(timeout)

    def cmd(self, name, **arguments):
        self.sock.sendall(json.dumps({"execute": name, "arguments": arguments}).encode() + b"\n")
        reply = json.loads(self.reader.readline())
        if "error" in reply:
            raise RuntimeError(f"qga {name}: {reply['error']}")
        return reply["return"]

    def exec(self, path):
        pid = self.cmd("guest-exec", path=path, **{"capture-output": True})["pid"]
        while True:
            status = self.cmd("guest-exec-status", pid=pid)
            if status["exited"]:
                return status

    def read_file(self, path):
        handle = self.cmd("guest-file-open", path=path, mode="r")
        data = []
        while True:
            chunk = self.cmd("guest-file-read", handle=handle, count=4 * MIB)
            data.append(base64.b64decode(chunk["buf-b64"]))
            if chunk["eof"]:
                break
        self.cmd("guest-file-close", handle=handle)
        return b"".join(data)


def median_ms(samples):
    return statistics.median(samples) * 1000


def qga_rows(runs):
    workdir = Path(tempfile.mkdtemp(prefix="provium-qga-"))
    sock = workdir / "qga"
    profile = dataclasses.replace(config.load().profile("minimal"), qemu_args=(
        "-chardev", f"socket,id=qga,path={sock},server=on,wait=off",
        "-device", f"virtserialport,chardev=qga,name={QGA_PORT}"))
    vm = Vm(profile, Cache())
    vm.boot(memory="256M", files=qga_files())
    try:
        port = vm.exec(f"grep -l '^{QGA_PORT}$' /sys/class/virtio-ports/*/name").stdout.decode().split("/")[4]
        vm.background(f"qemu-ga -m virtio-serial -p /dev/{port} -t /tmp")
        qga = Qga(sock)
        vm.write_file("/tmp/one-mib", os.urandom(MIB))
        assert qga.read_file("/tmp/one-mib") == vm.read_file("/tmp/one-mib")
        assert qga.exec("/bin/true")["exitcode"] == 0
        samples = {"exec": ([], []), "read": ([], [])}
        for _ in range(runs):
            for name, ours, theirs in (("exec", lambda: vm.exec("true"), lambda: qga.exec("/bin/true")),
                                       ("read", lambda: vm.read_file("/tmp/one-mib"),
                                        lambda: qga.read_file("/tmp/one-mib"))):
                for target, fn in zip(samples[name], (ours, theirs)):
                    started = time.perf_counter()
                    fn()
                    target.append(time.perf_counter() - started)
    finally:
        vm.kill()
        shutil.rmtree(workdir, ignore_errors=True)
    return [("exec true", "guest-exec + status polls", *samples["exec"], 20.0),
            ("read_file 1 MiB", "guest-file-open/read/close", *samples["read"], None)]


# The same 20 commands for both: each a test of its own in provium, one line of a script for vng.
COMMANDS = ["uname -r", "true", "echo hello", "id -u", "cat /proc/version", "ls /", "cat /proc/meminfo",
            "cat /proc/cpuinfo", "mount", "ls /proc", "head -c 4096 /dev/urandom | wc -c", "cat /proc/uptime",
            "dmesg | tail -n 3", "ls /sys/class", "cat /proc/cmdline", "sort /proc/filesystems",
            "grep -c . /proc/kallsyms", "ls -l /dev", "cat /proc/self/status", "sh -c 'exit 0'"]


def one_boot_suites(suite: Path) -> tuple[Path, Path]:
    """(a Lua file running uname -r in a fresh VM, a Lua file running COMMANDS as 20 tests on one VM)."""
    (suite / "uname.lua").write_text(
        'test("uname", function()\n  local vm = provium.create("minimal")\n  vm:boot()\n'
        '  assert(vm:exec("uname -r").ok)\nend)\n')
    tests = "".join(f"test({json.dumps(cmd)}, function() assert(vm:exec({json.dumps(cmd)}).ok) end)\n"
                    for cmd in COMMANDS)
    (suite / "twenty.lua").write_text('vm = provium.create("minimal")\nvm:boot()\n' + tests)
    (suite / "twenty.sh").write_text("set -e\n" + "".join(f"{cmd} >/dev/null\n" for cmd in COMMANDS))
    return suite / "uname.lua", suite / "twenty.lua"


def one_command_rows(runs, vng):
    suite = Path(tempfile.mkdtemp(prefix="provium-one-"))
    one_boot_suites(suite)
    kernel = str(config.load().profile("minimal").kernel)
    measures = {  # name: (provium's file, what vng runs)
        "uname -r in a fresh VM": ("uname.lua", "uname -r"),
        "20 commands, one VM": ("twenty.lua", f"sh {suite / 'twenty.sh'}"),
    }
    ours = {name: [] for name in measures}
    theirs = {name: [] for name in measures}
    reason = None
    for _ in range(runs):
        for name, (lua_file, command) in measures.items():
            started = time.monotonic()
            result = subprocess.run([sys.executable, "-m", "provium", "run", "-j1", lua_file], cwd=suite,
                                    capture_output=True, text=True)
            ours[name].append(time.monotonic() - started)
            assert result.returncode == 0, result.stdout + result.stderr
            if vng is None:
                reason = "virtme-ng is not installed (pip install virtme-ng; vng must be on PATH)"
                continue
            started = time.monotonic()
            result = subprocess.run([vng, "--run", kernel, "--disable-kvm", "--exec", command], cwd=suite,
                                    capture_output=True, text=True, timeout=600,
                                    env={**os.environ, "PATH": f"{Path(vng).parent}:{os.environ['PATH']}"})
            if result.returncode != 0:
                reason = f"vng failed (exit {result.returncode}): {(result.stderr or result.stdout).strip()[-200:]}"
                continue
            theirs[name].append(time.monotonic() - started)
    shutil.rmtree(suite, ignore_errors=True)
    return [("uname -r in a fresh VM", "vng --run --exec (9p root)", ours["uname -r in a fresh VM"],
             theirs["uname -r in a fresh VM"], 8.0),
            ("20 commands, one VM", "vng --exec of a 20-line script", ours["20 commands, one VM"],
             theirs["20 commands, one VM"], None)], reason


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30, help="interleaved rounds for the QGA rows")
    parser.add_argument("--vng-runs", type=int, default=3, help="alternating runs for the virtme-ng row")
    beside = Path(sys.executable).parent / "vng"
    parser.add_argument("--vng", default=shutil.which("vng") or (str(beside) if beside.exists() else None),
                        help="the vng command (default: from PATH or beside this Python)")
    args = parser.parse_args(argv)
    print("peers on the same kernel, TCG; ratio = peer median / provium median")
    print(f"{'measure':<24} {'provium':>11} {'peer':<28} {'peer median':>12} {'ratio':>8} {'target':>8}")
    rows, notes = [], []
    try:
        rows += qga_rows(args.runs)
    except Exception as exc:  # noqa: BLE001 - the row stays, with the reason
        notes.append(f"QEMU guest agent rows not measured: {exc}")
    one, reason = one_command_rows(args.vng_runs, args.vng)
    rows += one
    if reason:
        notes.append(f"virtme-ng row not measured: {reason}")
    for name, peer, ours, theirs, target in rows:
        ours_text = f"{median_ms(ours):9.1f} ms" if ours else "-"
        theirs_text = f"{median_ms(theirs):9.1f} ms" if theirs else "-"
        ratio = statistics.median(theirs) / statistics.median(ours) if ours and theirs else None
        print(f"{name:<24} {ours_text:>11} {peer:<28} {theirs_text:>12} "
              f"{(f'{ratio:.1f}x' if ratio else '-'):>8} {(f'>= {target:g}x' if target else '-'):>8}")
    for note in notes:
        print(note)


if __name__ == "__main__":
    main()
