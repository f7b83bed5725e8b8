"""Cold boot benchmark: Vm.boot() until the first exec result, medians over cold boots, and where the time goes.

Run: python bench/boot.py [--runs N]. Configurations are interleaved run by
run, so machine drift hits each alike. The clock starts before boot() (which
includes looking up the cached images and starting QEMU) and stops when the
first command (an echo into the kernel's log) has answered.

The breakdown puts each boot on the host's clock. The kernel log's time stamp
of that first command says when, on the host's clock, the kernel's log clock
read 0; its stamp of "Run /init" then says when /init started; the host saw
the agent's hello. So: boot() called (the images are looked up once per
process: ~0 ms here) -> QEMU and the early kernel until the log clock's 0 ->
the kernel by its log clock -> /init to
the agent's hello -> the first command answered. Under TCG the log clock starts
late and stands still while the kernel patches its own code (alternatives), so
that time falls in the QEMU column: QEMU itself prints a kernel's first line
~0.13 s after it is launched (measured with earlyprintk). One more boot with
`initcall_debug` lists the slowest initcalls and module loads.
"""

import argparse
import dataclasses
import re
import statistics
import time

from provium import config
from provium.cache import Cache
from provium.vm import Vm, accelerator

TARGET = 1.0  # seconds, the stock kernel's cold boot to a first command result (1 vCPU)
CONFIGS = [("256M, 1 vCPU", "256M", 1), ("256M, 2 vCPUs", "256M", 2), ("1G, 2 vCPUs", "1G", 2)]
PHASES = ("QEMU+early", "kernel log", "/init to agent", "first command")
MARK = b"provium-bench-first-command"
RUN_INIT = re.compile(rb"\[\s*(\d+\.\d+)\] Run /init as init process")
INITCALL = re.compile(rb"\[\s*(\d+\.\d+)\] (?:initcall|probe of) (\S+) returned \S+ after (\d+) usecs")


@dataclasses.dataclass
class Boot:
    ready: float     # seconds from boot() to the agent's hello
    first: float     # ... to the first command's answer
    phases: tuple    # seconds per PHASES entry
    dmesg: bytes


def cold_boot(profile, cache, memory, cpus) -> Boot:
    vm = Vm(profile, cache)
    started = time.monotonic()
    try:
        vm.boot(memory=memory, cpus=cpus)
        ready = time.monotonic()
        assert vm.exec(f"echo {MARK.decode()} > /dev/kmsg").ok
        done = time.monotonic()
        dmesg = vm.exec("dmesg").stdout
    finally:
        vm.shutdown()
    # the guest kernel's clock 0 on the host's clock, to the reply's latency
    clock0 = done - float(re.search(rb"\[\s*(\d+\.\d+)\] " + MARK, dmesg).group(1))
    run_init = float(RUN_INIT.search(dmesg).group(1))
    phases = (clock0 - started, run_init, ready - clock0 - run_init, done - ready)
    return Boot(ready - started, done - started, phases, dmesg)


def slowest_initcalls(dmesg: bytes, count: int = 8) -> str:
    calls = sorted(((int(us), name.decode()) for _, name, us in INITCALL.findall(dmesg)), reverse=True)
    return ", ".join(f"{name.split('+')[0]} {us / 1000:.0f} ms" for us, name in calls[:count])


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
    traced = cold_boot(dataclasses.replace(profile, cmdline=f"{profile.cmdline} initcall_debug".strip()),
                       cache, "256M", 1)
    print(f"cold boot -> first command result, {args.runs} runs each, accel={accel}, kernel {profile.kernel.name}")
    print(f"{'configuration':<16} {'agent ready':>12} {'first exec':>11} {'min':>7} {'max':>7} "
          f"{'target':>7} {'ratio':>7}   " + "  ".join(f"{p:>14}" for p in PHASES))
    for name, boots in samples.items():
        first = [b.first for b in boots]
        median = statistics.median(first)
        phases = [statistics.median(b.phases[i] for b in boots) for i in range(len(PHASES))]
        print(f"{name:<16} {statistics.median(b.ready for b in boots):>10.3f} s {median:>9.3f} s "
              f"{min(first):>5.2f} s {max(first):>5.2f} s {TARGET:>5.1f} s {median / TARGET:>6.2f}x   " +
              "  ".join(f"{p:>12.3f} s" for p in phases))
    print(f"slowest initcalls and probes (one boot with initcall_debug, 256M, 1 vCPU, first command "
          f"{traced.first:.3f} s): {slowest_initcalls(traced.dmesg)}")


if __name__ == "__main__":
    main()
