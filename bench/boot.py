"""Cold boot benchmark: Vm.boot() until the first exec result, medians over cold boots.

Run: python bench/boot.py [--runs N]. Configurations are interleaved run by
run, so machine drift hits each alike. The clock starts before boot() (which
includes looking up the cached images and starting QEMU) and stops when the
first `exec("true")` has answered.
"""

import argparse
import statistics
import time

from provium import config
from provium.cache import Cache
from provium.vm import Vm, accelerator

TARGET = 2.5
CONFIGS = [("256M, 1 vCPU", "256M", 1), ("256M, 2 vCPUs", "256M", 2), ("1G, 2 vCPUs", "1G", 2)]


def cold_boot(profile, cache, memory, cpus):
    vm = Vm(profile, cache)
    started = time.monotonic()
    try:
        vm.boot(memory=memory, cpus=cpus)
        ready = time.monotonic()
        assert vm.exec("true").ok
        done = time.monotonic()
    finally:
        vm.shutdown()
    return ready - started, done - started


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args(argv)
    profile = config.load().profile("minimal")
    cache = Cache()
    accel, _ = accelerator()
    cold_boot(profile, cache, "256M", 1)  # builds and caches the images; not measured
    samples = {name: [] for name, _, _ in CONFIGS}
    for _ in range(args.runs):
        for name, memory, cpus in CONFIGS:
            samples[name].append(cold_boot(profile, cache, memory, cpus))
    print(f"cold boot -> first exec result, {args.runs} runs each, accel={accel}, kernel {profile.kernel.name}")
    print(f"{'configuration':<16} {'agent ready':>12} {'first exec':>11} {'min':>7} {'max':>7} {'vs target ' + str(TARGET) + ' s':>18}")
    for name, runs in samples.items():
        ready = statistics.median(r for r, _ in runs)
        first = [e for _, e in runs]
        median = statistics.median(first)
        print(f"{name:<16} {ready:>10.3f} s {median:>9.3f} s {min(first):>5.2f} s {max(first):>5.2f} s "
              f"{TARGET / median:>16.2f}x")


if __name__ == "__main__":
    main()
