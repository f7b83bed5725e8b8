"""Task overlap benchmark: syscalls on two workers of one 2-vCPU VM, one after the other against provium.all.

Run: python bench/overlap.py [--n N] [--rounds N] [--cpus N]. One VM (2 vCPUs) and two fork
workers a and b; for each syscall, "sequential" makes N calls on a then N on b
(a plain loop), "overlapped" the same 2N calls as provium.all(N on a, N on b),
so each worker's ops run on its own lane and the two guest processes serve them
at once. The two are interleaved round by round (their order alternating), so
machine drift hits both alike. A row is the wall time of the 2N calls divided
by 2N (ms per syscall); the overlapped row's ratio is sequential/overlapped
(target >= 1.6x) and its target the time per syscall that would meet it.
Below the table: the host CPU per syscall of provium's process (lanes included)
and of QEMU (the vCPUs), and how busy the host's cores were, others included.

Tasks only run in a scope (a test, a file's top level), so unlike bench/ops.py
the benchmark is a Lua file run as provium runs one (LuaFile.run); its clocks
are Python callbacks the benchmark puts in the provium table (provium.bench)
before the file runs, read outside the measured loops.
"""

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from provium import config
from provium.cache import Cache
from provium.lua_runtime import LuaFile
from provium.vm import accelerator

TARGET = 1.6  # the issue's: provium.all of two workers' ops at least 1.6x the sequential loop
BUFS_READ = 256 * 1024  # read through vm:syscall_bufs: the buffer goes to the guest and back
MEM_READ = 4 * 1024 * 1024  # read into the worker's own memory: guest time only (zeroing 4 MiB)

# Each syscall: a name, then a Lua function (worker, its state) making one call and checking its result.
SYSCALLS = {
    "getpid": "function(w) check(w:syscall(39), w.pid) end",
    # the minimal kernel has no high-resolution timers (HZ=250): the sleep lasts to a tick, about 4 ms
    "nanosleep 1 ms": "function(w) check(w:syscall_buf(35, 0, ONE_MS, 0, 0), 0) end",
    "read 4 MiB /dev/zero to guest mem": "function(w, s) check(w:syscall(0, s.zero, s.mem, MEM_READ), MEM_READ) end",
    "read 256 KiB /dev/zero (bufs)":
        "function(w, s) check((w:syscall_bufs(0, {[1] = ZEROS}, s.zero, 0, BUFS_READ)), BUFS_READ) end",
}

LUA = """\
local bench = provium.bench
local N, ROUNDS, BUFS_READ, MEM_READ = bench.n, bench.rounds, bench.bufs_read, bench.mem_read
local ONE_MS = provium.pack("i64 i64", 0, 1000000) -- struct timespec {0 s, 1 ms}
local ZEROS = string.rep("\\0", BUFS_READ)

local function check(got, want)
  if got ~= want then error("syscall returned " .. tostring(got) .. ", expected " .. tostring(want), 2) end
end

local vm = provium.create("minimal")
vm:boot{memory = "256M", cpus = bench.cpus}
bench.booted(vm._h)
local a, b = vm:spawn(), vm:spawn()
local state = {}
for _, w in ipairs({a, b}) do -- each worker: /dev/zero open, MEM_READ bytes of its own anonymous memory
  local zero = w:syscall_buf(257, 1, "/dev/zero\\0", -100, 0, 0) -- openat(AT_FDCWD, O_RDONLY)
  local mem = w:syscall(9, 0, MEM_READ, 3, 0x22, -1, 0) -- mmap(PROT_READ|WRITE, MAP_PRIVATE|ANONYMOUS)
  assert(zero >= 0 and mem > 0, "worker setup failed")
  state[w] = {zero = zero, mem = mem}
end

local syscalls = {%s}

local function sequential(op, n)
  for _ = 1, n do op(a, state[a]) end
  for _ = 1, n do op(b, state[b]) end
end

local function overlapped(op, n)
  provium.all(function() for _ = 1, n do op(a, state[a]) end end,
              function() for _ = 1, n do op(b, state[b]) end end)
end

local ways = {sequential = sequential, overlapped = overlapped}
for _, entry in ipairs(syscalls) do -- warm the guest's translation cache, and the lanes
  sequential(entry[2], 5)
  overlapped(entry[2], 5)
end
for round = 1, ROUNDS do
  for _, entry in ipairs(syscalls) do
    local order = round %% 2 == 1 and {"sequential", "overlapped"} or {"overlapped", "sequential"}
    for _, way in ipairs(order) do
      local mark = bench.start()
      ways[way](entry[2], N)
      bench.stop(mark, way, entry[1])
    end
  end
end
"""


def qemu_cpu(pid):
    """CPU seconds the QEMU process has used (all its threads: the vCPUs under TCG, I/O)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def host_busy():
    """CPU seconds the whole host (every process, ours and others') has been busy, from /proc/stat."""
    try:
        ticks = [int(field) for field in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except OSError:
        return 0.0
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="syscalls per worker per measurement")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--cpus", type=int, default=2, help="the VM's vCPUs (the comparison is made with 2)")
    args = parser.parse_args(argv)
    started_at = time.perf_counter()
    samples = {}  # (way, syscall): [(wall, host CPU, QEMU CPU) seconds per syscall]
    failures = []
    qemu = {}

    with tempfile.TemporaryDirectory(prefix="provium-bench-") as scratch:
        path = Path(scratch) / "overlap.lua"
        rows = "".join(f"\n  {{\"{name}\", {fn}}}," for name, fn in SYSCALLS.items())
        path.write_text(LUA % rows)
        lua = LuaFile(path, "overlap.lua", config.load(), Cache(),
                      on_test=lambda result: failures.append(result) if result.outcome.failed else None)

        def booted(handle):
            qemu["pid"] = lua.vms[handle].machine.process.pid

        marks = []
        span = {}  # the host's CPU over the measurements: (busy, ours, wall) at the first start and the last stop

        def start():  # the clocks, read last: the reads of /proc are outside the measurement
            busy, qemu_before = host_busy(), qemu_cpu(qemu["pid"])
            marks.append((time.process_time(), qemu_before, time.perf_counter()))
            span.setdefault("first", (busy, marks[-1][0] + qemu_before, marks[-1][2]))
            return len(marks) - 1

        def stop(index, way, name):
            wall = time.perf_counter()
            cpu, qemu_after = time.process_time(), qemu_cpu(qemu["pid"])
            span["last"] = (host_busy(), cpu + qemu_after, wall)
            mark = marks[index]
            calls = 2 * args.n
            samples.setdefault((way.decode(), name.decode()), []).append(
                ((wall - mark[2]) / calls, (cpu - mark[0]) / calls, (qemu_after - mark[1]) / calls))

        lua.runtime.globals().provium[b"bench"] = lua.runtime.table_from({
            b"n": args.n, b"cpus": args.cpus, b"rounds": args.rounds, b"bufs_read": BUFS_READ, b"mem_read": MEM_READ,
            b"booted": booted, b"start": start, b"stop": stop})
        lua.run()
    if failures:
        failure = failures[0]
        raise SystemExit(f"the benchmark file failed: {failure.message}\n{failure.traceback}")

    def median(way, name, column=0):
        return statistics.median(sample[column] for sample in samples[way, name])

    ways = {"sequential": "seq", "overlapped": "ovl"}
    width = max(len(f"{way} {name}") for way in ways for name in SYSCALLS)
    vcpus = f"{args.cpus} vCPU{'s' if args.cpus != 1 else ''}"
    print(f"2 fork workers of one VM ({vcpus}), {accelerator()[0].upper()}, {os.cpu_count()} host cores; "
          f"{args.rounds} rounds, interleaved; a row: wall time of {2 * args.n} syscalls ({args.n} per worker) / "
          f"{2 * args.n}")
    print(f"{'op':<{width}} {'median':>10} {'p90':>10} {'target':>10} {'seq/overlap':>12}")
    for name in SYSCALLS:
        sequential = median("sequential", name)
        for way in ways:
            runs = sorted(sample[0] for sample in samples[way, name])
            p90 = runs[min(len(runs) - 1, int(len(runs) * 0.9))]
            target_text, ratio = "-", "-"
            if way == "overlapped":
                target_text = f"{sequential / TARGET * 1000:.3f} ms"
                ratio = f"{sequential / statistics.median(runs):.2f}x"
            print(f"{way + ' ' + name:<{width}} {statistics.median(runs) * 1000:>7.3f} ms {p90 * 1000:>7.3f} ms "
                  f"{target_text:>10} {ratio:>12}")
    print(f"target: overlapped >= {TARGET}x faster than sequential (the target column: the sequential median / "
          f"{TARGET}, per syscall)")
    for title, column in (("host CPU per op (provium's own process, its lanes' threads included)", 1),
                          ("QEMU CPU per op (the vCPU threads, running the guest under TCG, and QEMU's I/O)", 2)):
        print(f"{title}: " + ", ".join(f"{short} {name} {median(way, name, column) * 1e6:.0f} us"
                                       for name in SYSCALLS for way, short in ways.items()))
    (busy0, ours0, wall0), (busy1, ours1, wall1) = span["first"], span["last"]
    print(f"host CPU over the measurements, in cores: {(busy1 - busy0) / (wall1 - wall0):.2f} busy of "
          f"{os.cpu_count()}, {(ours1 - ours0) / (wall1 - wall0):.2f} of them provium and its QEMU, "
          f"{(busy1 - busy0 - ours1 + ours0) / (wall1 - wall0):.2f} other processes")
    print(f"total {time.perf_counter() - started_at:.1f} s (boot included)")


if __name__ == "__main__":
    main()
