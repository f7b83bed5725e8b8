"""Op latency against the guest's own limits: each op's median beside the floor it cannot beat.

Run: python bench/ops.py [--iterations N]. One booted VM; the ops and their
limits are measured interleaved round by round, so machine drift hits each
alike; each op is called once untimed before it is timed, so that it does not
pay for what the guest still does after the op before (a ping right after an
exec takes 2-3x its time):
- a raw syscall against a `ping` the router answers itself (the channel's
  round trip, no worker);
- exec("true") against the guest starting `/bin/sh -c true` and reaping it,
  timed inside the guest by bench/guest_floor.c (vfork + execve + waitpid,
  the fastest honest way; posix_spawn's figure beside it);
- read_file/write_file of 16 MiB against a plain stream of as many bytes
  through a second virtio-serial port of the same guest (dd in the guest, a
  socket on the host);
and the host CPU that provium spends per op (its process CPU clock over many
ops), from Python and from Lua, against a bare client's (one frame sent, one
reply received and unpacked, on the same socket).
"""

import argparse
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import msgpack

from provium import config, protocol
from provium.cache import Cache
from provium.lua_runtime import LuaFile

MIB = 1024 * 1024
SYS_GETPID = 39
FLOOR_SOURCE = Path(__file__).with_name("guest_floor.c")
FLOOR_BATCH = 20          # spawns timed in the guest per sample
STREAM_PORT = "bench.raw"
STREAM_TIMEOUT = 60  # seconds a stream may stall before the run fails instead of hanging
CPU_TARGET = 50e-6


def build_floor(workdir: Path) -> bytes:
    binary = workdir / "guest_floor"
    subprocess.run(["cc", "-static", "-O2", "-o", str(binary), str(FLOOR_SOURCE)], check=True)
    return binary.read_bytes()


def boot_from_lua(socket_path: Path):
    """A VM with a second port (STREAM_PORT, QEMU listening on socket_path), booted by a Lua runtime,
    and Lua functions making n syscalls and n execs on it."""
    cfg = config.load()
    cfg.raw_profiles["bench-stream"] = {"qemu_args": [
        "-chardev", f"socket,id=raw,path={socket_path},server=on,wait=off",
        "-device", f"virtserialport,chardev=raw,name={STREAM_PORT}"]}
    lua = LuaFile("bench.lua", "bench.lua", cfg, Cache(), on_test=lambda _: None)
    syscalls, execs = lua.runtime.execute(b"""
        vm = provium.create("bench-stream")
        vm:boot{memory = "256M"}
        return function(n) for _ = 1, n do vm:syscall(39) end end,
               function(n) for _ = 1, n do vm:exec("true") end end
    """)
    vm, = lua.vms.values()
    return vm, syscalls, execs


class RawPort:
    """The host end of the guest's second virtio-serial port: 16 MiB each way, first byte to last."""

    def __init__(self, vm, socket_path: Path):
        self.vm = vm
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(str(socket_path))
        self.sock.settimeout(STREAM_TIMEOUT)
        self.buf = bytearray(MIB)
        self.device = vm.exec(
            f"for d in /sys/class/virtio-ports/*; do [ \"$(cat $d/name)\" = {STREAM_PORT} ] && "
            "echo /dev/${d##*/}; done").stdout.decode().strip()
        assert self.device, "the guest has no second port"

    def _receive(self, count: int) -> float:
        """Seconds from the first of `count` bytes to the last."""
        got = self.sock.recv_into(self.buf)
        first = time.perf_counter()
        while got < count:
            got += self.sock.recv_into(self.buf)
        return time.perf_counter() - first

    def from_guest(self, size: int) -> float:
        job = self.vm.background(f"dd if=/dev/zero of={self.device} bs=64k count={size // 65536} 2>/dev/null")
        elapsed = self._receive(size)
        assert self.vm.job_wait(job.id, 30).exit_code == 0
        return elapsed

    def to_guest(self, size: int) -> float:
        # busybox head reads 16 MiB from a port at 22 MiB/s; dd in 64 KiB blocks at ~500 MiB/s
        # The port stays open from the first mark to the last: bytes that reach a closed port are dropped,
        # so a reader that closed and reopened it could miss the start of the stream and wait forever.
        job = self.vm.background(f"exec 3<>{self.device}; echo >&3; dd of=/dev/null bs=64k "
                                 f"count={size // 65536} iflag=fullblock <&3 2>/dev/null; echo >&3")
        self.sock.recv(1)  # the reader is there
        started = time.perf_counter()
        self.sock.sendall(b"\x5a" * size)
        self.sock.recv(1)  # ... and has read them all
        elapsed = time.perf_counter() - started
        assert self.vm.job_wait(job.id, 30).exit_code == 0
        return elapsed

    def close(self):
        self.sock.close()


def bare_request(sock: socket.socket, request_id: int, op: str, **fields) -> dict:
    """The least a host can do per op: one frame sent, bytes received until the reply's frame is whole, one
    unpack; on the main worker's channel of the VM's own socket (between provium's ops, which read their
    replies themselves, so nothing else reads it meanwhile)."""
    sock.sendall(protocol.encode(1, {"id": request_id, "op": op, **fields}))
    data = sock.recv(1 << 16)
    while len(data) < protocol.HEADER_SIZE or len(data) < protocol.HEADER_SIZE + protocol.decode_header(
            data[:protocol.HEADER_SIZE])[1]:
        data += sock.recv(1 << 16)
    return msgpack.unpackb(data[protocol.HEADER_SIZE:])


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.3f} ms"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=200)
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="provium-bench-ops-"))
    floor = build_floor(workdir)
    vm, lua_syscalls, lua_execs = boot_from_lua(workdir / "raw.sock")
    port = RawPort(vm, workdir / "raw.sock")
    try:
        vm.write_file("/tmp/guest_floor", floor)
        vm.exec("chmod +x /tmp/guest_floor")
        vm.write_file("/tmp/one-mib", bytes(range(256)) * 4096)
        vm.write_file("/tmp/16-mib", bytes(range(256)) * 4096 * 16)
        one_mib, sixteen_mib = b"\x5a" * MIB, b"\x5a" * 16 * MIB

        def job():
            job_id, _ = vm.background("true")
            assert vm.job_wait(job_id, 30).exit_code == 0
            vm.job_kill(job_id)

        def spawn_floor(mode):
            line = vm.exec(f"/tmp/guest_floor {mode} {FLOOR_BATCH}").stdout.decode()
            return float(dict(w.split("=") for w in line.split()[1:])["median_us"]) / 1e6

        timed = {  # name: the op, timed from the host
            "ping (router)": lambda: vm.client.request(0, "ping", 10),
            "raw syscall getpid": lambda: vm.syscall(SYS_GETPID),
            "raw syscall from Lua": lambda: lua_syscalls(1),
            "exec(\"true\")": lambda: vm.exec("true"),
            "exec(\"true\") from Lua": lambda: lua_execs(1),
            "read_file 1 MiB": lambda: vm.read_file("/tmp/one-mib"),
            "write_file 1 MiB": lambda: vm.write_file("/tmp/w", one_mib),
            "read_file 16 MiB": lambda: vm.read_file("/tmp/16-mib"),
            "write_file 16 MiB": lambda: vm.write_file("/tmp/w16", sixteen_mib),
            "job start + wait": job,
        }
        measured = {  # name: a function returning its own measure in seconds
            "sh -c true in the guest": lambda: spawn_floor("spawn"),
            "... with posix_spawn": lambda: spawn_floor("posix_spawn"),
            "port stream 16 MiB out": lambda: port.from_guest(16 * MIB),
            "port stream 16 MiB in": lambda: port.to_guest(16 * MIB),
        }
        heavy_names = {n for n in timed if "MiB" in n or "job" in n}
        for fn in [*timed.values(), *measured.values()]:  # warm the guest's translation cache
            fn()
        samples = {name: [] for name in [*timed, *measured]}
        heavy = max(1, args.iterations // 10)
        for i in range(args.iterations):
            for name, fn in timed.items():
                if name in heavy_names and i >= heavy:
                    continue
                fn()  # untimed: the guest finishes the previous op's leftovers (a shell's exit, reaping) here
                started = time.perf_counter()
                fn()
                samples[name].append(time.perf_counter() - started)
            if i < heavy:
                for name, fn in measured.items():
                    samples[name].append(fn())
        ids = iter(range(1 << 40, 1 << 41))
        sock = vm.client._sock
        cpu_ops = {
            "syscall": lambda: vm.syscall(SYS_GETPID),
            "syscall from Lua": lambda: lua_syscalls(1),
            "syscall, bare client": lambda: bare_request(sock, next(ids), "syscall", nr=SYS_GETPID, args=[],
                                                         bufs=[], ptrs=[]),
            "exec": lambda: vm.exec("true"),
            "exec from Lua": lambda: lua_execs(1),
            "exec, bare client": lambda: bare_request(sock, next(ids), "exec", cmd="true"),
        }
        cpu = {name: [] for name in cpu_ops}
        for _ in range(5):  # rounds of `iterations` ops each, interleaved
            for name, fn in cpu_ops.items():
                started = time.process_time()
                for _ in range(args.iterations):
                    fn()
                cpu[name].append((time.process_time() - started) / args.iterations)
        cpu = {name: statistics.median(runs) for name, runs in cpu.items()}
    finally:
        port.close()
        vm.shutdown()
        shutil.rmtree(workdir, ignore_errors=True)
    median = {name: statistics.median(runs) for name, runs in samples.items()}
    # op: (its limit, the target ratio)
    limits = {
        "raw syscall getpid": ("ping (router)", 1.25),
        "raw syscall from Lua": ("ping (router)", 1.25),
        "exec(\"true\")": ("sh -c true in the guest", 1.2),
        "exec(\"true\") from Lua": ("sh -c true in the guest", 1.2),
        "read_file 16 MiB": ("port stream 16 MiB out", 1.5),
        "write_file 16 MiB": ("port stream 16 MiB in", 1.5),
    }
    print(f"guest ops against the guest's limits, TCG, {args.iterations} rounds ({heavy} for transfers, jobs "
          f"and limits; the spawn floor a median of {FLOOR_BATCH} per round)")
    print(f"{'op':<24} {'median':>10} {'p90':>10}   {'limit':<24} {'limit':>10} {'ratio':>7} {'target':>8}")
    for name, runs in samples.items():
        runs = sorted(runs)
        p90 = runs[min(len(runs) - 1, int(len(runs) * 0.9))]
        line = f"{name:<24} {ms(median[name]):>10} {ms(p90):>10}"
        if name in limits:
            limit, target = limits[name]
            ratio = median[name] / median[limit]
            line += (f"   {limit:<24} {ms(median[limit]):>10} {ratio:>6.2f}x {'<= ' + str(target) + 'x':>8}"
                     f"{'' if ratio <= target else '  missed'}")
        print(line)
    for name in ("port stream 16 MiB out", "port stream 16 MiB in"):
        print(f"{name}: {16 / median[name]:.0f} MiB/s raw; "
              f"{'read_file' if name.endswith('out') else 'write_file'} 16 MiB moves "
              f"{16 / median['read_file 16 MiB' if name.endswith('out') else 'write_file 16 MiB']:.0f} MiB/s")
    print(f"host CPU per op: the process CPU clock over {args.iterations} ops, median of 5 interleaved rounds; "
          f"target <= {CPU_TARGET * 1e6:.0f} us; limit: a bare client on the same socket (send, recv, unpack)")
    for name in ("syscall", "syscall from Lua", "exec", "exec from Lua"):
        limit = cpu[f"{name.split()[0]}, bare client"]
        print(f"  {name:<18} {cpu[name] * 1e6:>6.0f} us   limit {limit * 1e6:>5.0f} us   ratio "
              f"{cpu[name] / limit:>5.2f}x   {'met' if cpu[name] <= CPU_TARGET else 'missed'}")


if __name__ == "__main__":
    main()
