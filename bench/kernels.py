"""Kernel benchmark: cold boot and fixture resume to the first exec on the stock, an archive and a built kernel.

Run: python bench/kernels.py [--runs N | --quick]. Profiles, in a temporary
suite: the host's kernel (stock), Debian's 6.12 cloud kernel from the archive
(apt:linux-image-6.12-cloud-amd64) and a kernel built from Debian's 6.12
source with provium's minimal fragment. Each is fetched or built first (not
timed here: the fetch and build times are those of the first time, from the
cache's kernel index), then cold boots and resumes alternate, kernel by kernel,
round by round.
"""

import statistics

from kernel_suite import cold_boot, first_exec, kernel_suite, rounds
from provium import kernels

TARGET_MINIMAL_COLD = 0.6
SUITE = """
[profiles.stock]
memory = "256M"

[profiles.archive-cloud]
kernel = "apt:linux-image-6.12-cloud-amd64"
memory = "256M"

[profiles.built-minimal]
kernel_source = "apt:linux-source-6.12"
kconfig = ["minimal"]
memory = "256M"
"""


def main(argv=None):
    runs = rounds(argv, __doc__.splitlines()[0])
    names = ["stock", "archive-cloud", "built-minimal"]
    with kernel_suite(SUITE, names) as (cache, prepared, fixtures):
        cold = {name: [] for name in names}
        resume = {name: [] for name in names}
        for _ in range(runs):
            for name in names:
                cold[name].append(first_exec(lambda name=name: cold_boot(prepared[name].profile, cache)))
                resume[name].append(first_exec(lambda name=name: fixtures[name].resume("k")))
        index = {record["source"]: record for record in kernels.cached(cache)}
        print(f"kernels: cold boot and fixture resume -> first exec, {runs} runs each, interleaved, 256M, 1 vCPU")
        print(f"{'kernel':<15} {'release':<28} {'fetch/build':>11} {'cold boot':>10} {'resume':>8} "
              f"{'cold vs stock':>14}")
        stock = statistics.median(cold["stock"])
        for name in names:
            record = index.get(kernels.origin(prepared[name].profile))
            made = f"{record['seconds']:.1f} s" if record else "-"
            median = statistics.median(cold[name])
            print(f"{name:<15} {prepared[name].kernel.release:<28} {made:>11} {median:>8.3f} s "
                  f"{statistics.median(resume[name]):>6.3f} s {stock / median:>13.2f}x")
        minimal = statistics.median(cold["built-minimal"])
        print(f"built-minimal cold boot {minimal:.3f} s against the target {TARGET_MINIMAL_COLD} s: "
              f"{TARGET_MINIMAL_COLD / minimal:.2f}x")


if __name__ == "__main__":
    main()
