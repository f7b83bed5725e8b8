"""Debug kernel benchmark: boot, resume and a test's time on the minimal kernel and the debug one, and the leak check.

Run: python bench/debug.py [--runs N | --quick]. Two kernels built from Debian's
6.12 source: provium's minimal fragment, and minimal plus debug (KASAN,
lockdep, kmemleak, UBSAN, line tables). Both are built first (not timed here:
the build times are those of the first time, from the cache's kernel index).
Per round and kernel: a cold boot to the first exec, a fixture resume to the
first exec, and a test (a resumed clone, 30 ops: exec, write and read a file,
getpid; then shutdown). On the debug kernel, the same test with the leak check
after it (provium.kmemleak: arm, two scans, the wait for kmemleak's minimum
age), and one kmemleak scan alone. 512M, 1 vCPU, as examples/kmod's kmod-debug.
"""

import statistics
import time

from kernel_suite import cold_boot, first_exec, kernel_suite, rounds
from provium import kernels, kmemleak

SUITE = """
[profiles.minimal]
kernel_source = "apt:linux-source-6.12"
kconfig = ["minimal"]
memory = "512M"

[profiles.debug]
kernel_source = "apt:linux-source-6.12"
kconfig = ["minimal", "debug"]
memory = "512M"
"""
GETPID = 39


def a_test(fixtures, leak_check=False):
    """Seconds a test takes: resume a clone, 30 ops, (the leak check,) shut it down."""
    started = time.monotonic()
    vm = fixtures.resume("k")
    if leak_check:
        kmemleak.arm(vm)
    for i in range(10):
        assert vm.exec(f"echo {i} > /tmp/n").ok
        vm.write_file("/tmp/data", b"x" * 4096)
        assert vm.read_file("/tmp/data") == b"x" * 4096
    for _ in range(10):
        vm.syscall(GETPID, [])
    if leak_check:
        assert kmemleak.check([vm]) == {vm: []}
    vm.shutdown()
    return time.monotonic() - started


def one_scan(fixtures):
    """Seconds one kmemleak scan takes in a resumed clone of the debug kernel."""
    vm = fixtures.resume("k")
    started = time.monotonic()
    assert vm.exec(f"echo scan > {kmemleak.KMEMLEAK}").ok
    elapsed = time.monotonic() - started
    vm.shutdown()
    return elapsed


def main(argv=None):
    runs = rounds(argv, __doc__.splitlines()[0])
    names = ["minimal", "debug"]
    with kernel_suite(SUITE, names) as (cache, prepared, fixtures):
        times = {(name, what): [] for name in names for what in ("cold", "resume", "test")}
        checked, scans = [], []
        for _ in range(runs):
            for name in names:
                times[name, "cold"].append(first_exec(lambda name=name: cold_boot(prepared[name].profile, cache)))
                times[name, "resume"].append(first_exec(lambda name=name: fixtures[name].resume("k")))
                times[name, "test"].append(a_test(fixtures[name]))
            checked.append(a_test(fixtures["debug"], leak_check=True))
            scans.append(one_scan(fixtures["debug"]))
        index = {record["source"]: record for record in kernels.cached(cache)}
        median = {key: statistics.median(values) for key, values in times.items()}
        print(f"debug kernel: {runs} runs each, interleaved, 512M, 1 vCPU, medians")
        print(f"{'kernel':<8} {'build':>8} {'vmlinux':>8} {'cold boot':>10} {'resume':>8} {'a test':>8}")
        for name in names:
            record = index.get(kernels.origin(prepared[name].profile))
            built = f"{record['seconds']:.0f} s" if record else "-"
            size = prepared[name].kernel.image.stat().st_size / 2**20
            print(f"{name:<8} {built:>8} {size:>6.0f} MB {median[name, 'cold']:>8.3f} s "
                  f"{median[name, 'resume']:>6.3f} s {median[name, 'test']:>6.3f} s")
        print(f"debug/minimal: cold boot {median['debug', 'cold'] / median['minimal', 'cold']:.2f}x, "
              f"resume {median['debug', 'resume'] / median['minimal', 'resume']:.2f}x, "
              f"a test {median['debug', 'test'] / median['minimal', 'test']:.2f}x")
        with_check = statistics.median(checked)
        print(f"leak check: a test {with_check:.3f} s with it, {median['debug', 'test']:.3f} s without: "
              f"+{with_check - median['debug', 'test']:.3f} s per test; one kmemleak scan "
              f"{statistics.median(scans):.3f} s; kmemleak's minimum age {kmemleak.MIN_AGE} s")

if __name__ == "__main__":
    main()
