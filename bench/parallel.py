"""Parallel run benchmark: 4 files x 3 tests through the CLI, -j1 against -j2, interleaved.

Run: python bench/parallel.py [--runs N]. Each file boots its own VM and runs
three tests on it; the clock covers the whole `provium run` process.
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FIXTURE = """\
local vm = provium.create("minimal")
vm:boot{memory = "256M"}
vm:write_file("/tmp/prepared", "yes")
return vm
"""

FIXTURE_FILE = """\
for i = 1, 4 do
  test("fixture test " .. i, function()
    local vm = provium.fixture("bench")
    assert(vm:read_file("/tmp/prepared") == "yes")
    assert(vm:exec("true").ok)
  end)
end
"""

FILE = """\
local vm = provium.create("minimal")
vm:boot{memory = "256M"}
test("exec", function() assert(vm:exec("true").ok) end)
test("files", function() vm:write_file("/tmp/x", "y"); assert(vm:read_file("/tmp/x") == "y") end)
test("work", function() assert(vm:exec("i=0; while [ $i -lt 2000 ]; do i=$((i+1)); done").ok) end)
"""


def timed_run(suite, jobs, expected):
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "provium", "run", f"-j{jobs}", "tests"], cwd=suite,
                            capture_output=True, text=True)
    elapsed = time.monotonic() - started
    if result.returncode != 0 or not result.stdout.rstrip().endswith(f"{expected} passed, 0 failed, 0 skipped"):
        raise SystemExit(f"the benchmark suite failed:\n{result.stdout}{result.stderr}")
    return elapsed


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)
    booting = Path(tempfile.mkdtemp(prefix="provium-bench-"))
    (booting / "tests").mkdir()
    for i in range(4):
        (booting / "tests" / f"file{i}.lua").write_text(FILE)
    with_fixture = Path(tempfile.mkdtemp(prefix="provium-bench-"))
    (with_fixture / "tests").mkdir()
    (with_fixture / "fixtures").mkdir()
    (with_fixture / "provium.toml").write_text("")
    (with_fixture / "fixtures" / "bench.lua").write_text(FIXTURE + f"-- {with_fixture}\n")
    for i in range(5):
        (with_fixture / "tests" / f"file{i}.lua").write_text(FIXTURE_FILE)
    suites = {"4 files x 3 tests, a VM booted per file": (booting, 12),
              "5 files x 4 tests, a fixture clone per test": (with_fixture, 20)}
    targets = {"4 files x 3 tests, a VM booted per file": " (target >= 1.6x)"}
    for suite, expected in suites.values():
        timed_run(suite, 2, expected)  # warm the caches, build the fixture
    samples = {(name, jobs): [] for name in suites for jobs in (1, 2)}
    for _ in range(args.runs):
        for name, (suite, expected) in suites.items():
            for jobs in (1, 2):
                samples[name, jobs].append(timed_run(suite, jobs, expected))
    print(f"provium run, whole process, {args.runs} runs each, interleaved, {os.cpu_count()} cores")
    print(f"{'suite':<46} {'jobs':<5} {'median':>9} {'min':>8} {'max':>8}")
    for (name, jobs), runs in samples.items():
        print(f"{name:<46} -j{jobs:<3} {statistics.median(runs):>7.2f} s {min(runs):>6.2f} s {max(runs):>6.2f} s")
    for name in suites:
        one, two = statistics.median(samples[name, 1]), statistics.median(samples[name, 2])
        print(f"speed-up -j2 over -j1, {name}: {one / two:.2f}x{targets.get(name, '')}")
    for suite, _ in suites.values():
        shutil.rmtree(suite, ignore_errors=True)


if __name__ == "__main__":
    main()
