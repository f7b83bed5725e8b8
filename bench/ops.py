"""Op latency benchmark: median round trips of guest ops on one booted VM.

Run: python bench/ops.py [--iterations N]. The ops are interleaved round by
round, so machine drift hits each alike; each is measured from the Python core
(Vm) and, for the raw syscall, also from Lua (what test files pay).
"""

import argparse
import statistics
import time

from provium import config
from provium.cache import Cache
from provium.lua_runtime import LuaFile

MIB = 1024 * 1024
SYS_GETPID = 39


def boot_from_lua():
    """A VM booted by a Lua runtime, and a Lua function making n syscalls on it."""
    lua = LuaFile("bench.lua", "bench.lua", config.load(), Cache(), on_test=lambda _: None)
    run_syscalls = lua.runtime.execute(b"""
        vm = provium.create("minimal")
        vm:boot{memory = "256M"}
        return function(n) for _ = 1, n do vm:syscall(39) end end
    """)
    vm, = lua.vms.values()
    return vm, run_syscalls


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=200)
    args = parser.parse_args(argv)
    vm, lua_syscalls = boot_from_lua()
    try:
        vm.write_file("/tmp/one-mib", bytes(range(256)) * 4096)
        vm.write_file("/tmp/16-mib", bytes(range(256)) * 4096 * 16)
        one_mib, sixteen_mib = b"\x5a" * MIB, b"\x5a" * 16 * MIB

        def job():
            job_id, _ = vm.background("true")
            assert vm.job_wait(job_id, 30).exit_code == 0
            vm.job_kill(job_id)

        ops = {
            "ping (router)": (lambda: vm.client.request(0, "ping", 10), None),
            "raw syscall getpid": (lambda: vm.syscall(SYS_GETPID), 0.6e-3),
            "raw syscall from Lua": (lambda: lua_syscalls(1), 0.6e-3),
            "exec(\"true\")": (lambda: vm.exec("true"), 10e-3),
            "read_file 1 MiB": (lambda: vm.read_file("/tmp/one-mib"), 15e-3),
            "write_file 1 MiB": (lambda: vm.write_file("/tmp/w", one_mib), None),
            "read_file 16 MiB": (lambda: vm.read_file("/tmp/16-mib"), None),
            "write_file 16 MiB": (lambda: vm.write_file("/tmp/w16", sixteen_mib), None),
            "job start + wait": (job, None),
        }
        for fn, _ in ops.values():  # warm the guest's translation cache
            fn()
        samples = {name: [] for name in ops}
        heavy = max(1, args.iterations // 10)
        for i in range(args.iterations):
            for name, (fn, _) in ops.items():
                if ("MiB" in name or "job" in name) and i >= heavy:
                    continue
                started = time.perf_counter()
                fn()
                samples[name].append(time.perf_counter() - started)
        # host CPU per op: what provium itself spends (Python, msgpack, lupa), not the guest
        cpu = {}
        for name, fn in (("syscall", lambda: vm.syscall(SYS_GETPID)), ("syscall from Lua", lambda: lua_syscalls(1)),
                         ("exec", lambda: vm.exec("true"))):
            started = time.process_time()
            for _ in range(args.iterations):
                fn()
            cpu[name] = (time.process_time() - started) / args.iterations
    finally:
        vm.shutdown()
    print(f"guest op latency, TCG, {args.iterations} iterations ({heavy} for transfers and jobs)")
    print(f"{'op':<22} {'median':>10} {'p90':>10} {'target':>10} {'target/median':>14}")
    for name, (_, target) in ops.items():
        runs = sorted(samples[name])
        median = statistics.median(runs)
        p90 = runs[min(len(runs) - 1, int(len(runs) * 0.9))]
        target_text = f"{target * 1000:.1f} ms" if target else "-"
        ratio = f"{target / median:.2f}x" if target else "-"
        print(f"{name:<22} {median * 1000:>7.3f} ms {p90 * 1000:>7.3f} ms {target_text:>10} {ratio:>14}")
    print("host CPU per op (provium's own overhead; target <= 100 us): " +
          ", ".join(f"{name} {seconds * 1e6:.0f} us" for name, seconds in cpu.items()))


if __name__ == "__main__":
    main()
