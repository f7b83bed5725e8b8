"""Fixture benchmark: resume -> first exec against cold boot -> first exec, size and memory.

Run: python bench/fixtures.py [--runs N]. Cold boots and resumes alternate run
by run. The fixture is a freshly booted guest with a file written, built once
in a temporary suite before measuring.
"""

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from provium import config
from provium.cache import Cache
from provium.fixtures import Fixtures, disk_usage
from provium.lua_runtime import FileOptions, build_fixture
from provium.vm import Vm

FIXTURE = b"""
local vm = provium.create("minimal")
vm:boot{memory = "256M"}
vm:write_file("/tmp/prepared", "yes")
return vm
"""


def pss_mib(pid):
    """Proportional set size of a process, in MiB (shared pages split among their users)."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=9)
    args = parser.parse_args(argv)
    suite = Path(tempfile.mkdtemp(prefix="provium-bench-"))
    (suite / "fixtures").mkdir()
    (suite / "fixtures" / "bench.lua").write_bytes(FIXTURE + f"-- {suite}\n".encode())
    cfg, cache = config.load(suite), Cache()
    fixtures = Fixtures(cfg, cache, build_fixture, FileOptions(scratch=suite))
    built = time.monotonic()
    entry = fixtures.entry("bench")
    build_seconds = time.monotonic() - built
    profile = cfg.profile("minimal")

    cold, resume, ready, pooled = [], [], [], []
    for _ in range(2):  # a fixture asked for twice: the pool now keeps a warm clone ready
        fixtures.clone("bench").shutdown()
    for _ in range(args.runs):
        started = time.monotonic()
        vm = Vm(profile, cache)
        vm.boot(memory="256M")
        vm.exec("true")
        cold.append(time.monotonic() - started)
        vm.shutdown()

        started = time.monotonic()
        clone = fixtures.resume("bench")
        ready.append(time.monotonic() - started)
        assert clone.exec("cat /tmp/prepared").stdout == b"yes"
        resume.append(time.monotonic() - started)
        clone.shutdown()

        time.sleep(0.3)  # as between two tests: the pool readies the next clone
        started = time.monotonic()
        clone = fixtures.clone("bench")
        assert clone.exec("cat /tmp/prepared").stdout == b"yes"
        pooled.append(time.monotonic() - started)
        clone.shutdown()

    clones = [fixtures.resume("bench") for _ in range(3)]
    for clone in clones:
        clone.exec("true")
    clone_pss = statistics.mean(pss_mib(c.machine.process.pid) for c in clones)
    for clone in clones:
        clone.shutdown()
    booted = Vm(profile, cache)
    booted.boot(memory="256M")
    booted.exec("true")
    boot_pss = pss_mib(booted.machine.process.pid)
    booted.shutdown()
    fixtures.close()
    entry_mib = disk_usage(entry.path) / 1048576
    state_kib = (entry.path / "state").stat().st_size / 1024
    shutil.rmtree(entry.path.parent, ignore_errors=True)
    shutil.rmtree(suite, ignore_errors=True)

    cold_m, resume_m, ready_m, pooled_m = (statistics.median(x) for x in (cold, resume, ready, pooled))
    print(f"fixtures, TCG, 256M guest, {args.runs} runs each, interleaved (built once in {build_seconds:.2f} s)")
    print(f"{'measure':<34} {'median':>10} {'min':>8} {'max':>8}")
    print(f"{'cold boot -> first exec':<34} {cold_m:>8.3f} s {min(cold):>6.3f} s {max(cold):>6.3f} s")
    print(f"{'resume -> agent ready':<34} {ready_m:>8.3f} s {min(ready):>6.3f} s {max(ready):>6.3f} s")
    print(f"{'resume -> first exec':<34} {resume_m:>8.3f} s {min(resume):>6.3f} s {max(resume):>6.3f} s")
    print(f"{'pooled warm clone -> first exec':<34} {pooled_m:>8.3f} s {min(pooled):>6.3f} s {max(pooled):>6.3f} s")
    print(f"resume vs cold boot: {cold_m / resume_m:.1f}x faster (target >= 6x); "
          f"resume -> first exec vs target 0.35 s: {0.35 / resume_m:.2f}x; "
          f"pooled vs target 0.25 s: {0.25 / pooled_m:.1f}x")
    print(f"on disk per fixture: {entry_mib:.1f} MiB (RAM file sparse, device state {state_kib:.0f} KiB)")
    print(f"host memory (PSS) per resumed clone, 3 running: {clone_pss:.1f} MiB; "
          f"per cold-booted VM: {boot_pss:.1f} MiB")


if __name__ == "__main__":
    main()
