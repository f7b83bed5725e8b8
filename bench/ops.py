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
    vm, = lua._vms.values()
    return vm, run_syscalls


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=200)
    args = parser.parse_args(argv)
    vm, lua_syscalls = boot_from_lua()
    try:
        vm.write_file("/tmp/one-mib", bytes(range(256)) * 4096)
        one_mib = b"\x5a" * MIB
        ops = {
            "ping (router)": (lambda: vm.client.request(0, "ping", 10), None),
            "raw syscall getpid": (lambda: vm.syscall(SYS_GETPID), 0.6e-3),
            "raw syscall from Lua": (lambda: lua_syscalls(1), 0.6e-3),
            "exec(\"true\")": (lambda: vm.exec("true"), 10e-3),
            "read_file 1 MiB": (lambda: vm.read_file("/tmp/one-mib"), 15e-3),
            "write_file 1 MiB": (lambda: vm.write_file("/tmp/w", one_mib), None),
        }
        for fn, _ in ops.values():  # warm the guest's translation cache
            fn()
        samples = {name: [] for name in ops}
        heavy = max(1, args.iterations // 10)
        for i in range(args.iterations):
            for name, (fn, _) in ops.items():
                if "MiB" in name and i >= heavy:
                    continue
                started = time.perf_counter()
                fn()
                samples[name].append(time.perf_counter() - started)
    finally:
        vm.shutdown()
    print(f"guest op latency, TCG, {args.iterations} iterations ({heavy} for 1 MiB transfers)")
    print(f"{'op':<22} {'median':>10} {'p90':>10} {'target':>10} {'target/median':>14}")
    for name, (_, target) in ops.items():
        runs = sorted(samples[name])
        median = statistics.median(runs)
        p90 = runs[min(len(runs) - 1, int(len(runs) * 0.9))]
        target_text = f"{target * 1000:.1f} ms" if target else "-"
        ratio = f"{target / median:.2f}x" if target else "-"
        print(f"{name:<22} {median * 1000:>7.3f} ms {p90 * 1000:>7.3f} ms {target_text:>10} {ratio:>14}")


if __name__ == "__main__":
    main()
