"""Parallel run benchmark: 4 files x 3 tests through the CLI, -j1 against -j2, interleaved.

Run: python bench/parallel.py [--runs N]. Each file boots its own VM and runs
three tests on it; the clock covers the whole `provium run` process.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FILE = """\
local vm = provium.create("minimal")
vm:boot{memory = "256M"}
test("exec", function() assert(vm:exec("true").ok) end)
test("files", function() vm:write_file("/tmp/x", "y"); assert(vm:read_file("/tmp/x") == "y") end)
test("work", function() assert(vm:exec("i=0; while [ $i -lt 2000 ]; do i=$((i+1)); done").ok) end)
"""


def timed_run(suite, jobs):
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "provium", "run", f"-j{jobs}", str(suite)],
                            capture_output=True, text=True)
    elapsed = time.monotonic() - started
    if result.returncode != 0 or not result.stdout.rstrip().endswith("12 passed, 0 failed, 0 skipped"):
        raise SystemExit(f"the benchmark suite failed:\n{result.stdout}{result.stderr}")
    return elapsed


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)
    suite = Path(tempfile.mkdtemp(prefix="provium-bench-"))
    for i in range(4):
        (suite / f"file{i}.lua").write_text(FILE)
    timed_run(suite, 2)  # warm the caches
    samples = {1: [], 2: []}
    for _ in range(args.runs):
        for jobs in (1, 2):
            samples[jobs].append(timed_run(suite, jobs))
    one, two = statistics.median(samples[1]), statistics.median(samples[2])
    print(f"provium run, 4 files x 3 tests, {args.runs} runs each, interleaved, {os.cpu_count()} cores")
    print(f"{'jobs':<6} {'median':>9} {'min':>8} {'max':>8}")
    for jobs, runs in samples.items():
        print(f"-j{jobs:<4} {statistics.median(runs):>7.2f} s {min(runs):>6.2f} s {max(runs):>6.2f} s")
    print(f"speed-up -j2 over -j1: {one / two:.2f}x (target >= 1.6x)")


if __name__ == "__main__":
    main()
