"""pytest -n 2 (the plugin, pytest-xdist) against provium run -j2 on the same suites, interleaved.

Run: python bench/pytest_xdist.py [--runs N]. The suites are bench/parallel.py's (4 files x 3 tests with a VM
booted per file; 5 files x 4 tests with a fixture clone per test); the clock covers each whole process.
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

from parallel import FILE, FIXTURE, FIXTURE_FILE

COMMANDS = {"provium run -j2": ["-m", "provium", "run", "-j2", "tests"],
            # not hypothesis's plugin, which this venv has for provium's own tests (0.6 s of imports per process)
            "pytest -n 2": ["-m", "pytest", "-q", "-n", "2", "-p", "no:cacheprovider", "-p", "no:hypothesispytest",
                            "tests"]}


def timed(suite, command, expected):
    started = time.monotonic()
    result = subprocess.run([sys.executable, *COMMANDS[command]], cwd=suite, capture_output=True, text=True)
    elapsed = time.monotonic() - started
    last = result.stdout.rstrip().splitlines()[-1] if result.stdout.strip() else ""
    if result.returncode != 0 or not (last == f"{expected} passed, 0 failed, 0 skipped"
                                      or last.strip("= ").startswith(f"{expected} passed in")):
        raise SystemExit(f"{command} failed on the benchmark suite:\n{result.stdout}{result.stderr}")
    return elapsed


def suite(files, fixture=False):
    root = Path(tempfile.mkdtemp(prefix="provium-bench-"))
    (root / "tests").mkdir()
    (root / "provium.toml").write_text("")
    if fixture:
        (root / "fixtures").mkdir()
        (root / "fixtures" / "bench.lua").write_text(FIXTURE + f"-- {root}\n")
    for i in range(files):
        (root / "tests" / f"file{i}.lua").write_text(FIXTURE_FILE if fixture else FILE)
    return root


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)
    suites = {"4 files x 3 tests, a VM booted per file": (suite(4), 12),
              "5 files x 4 tests, a fixture clone per test": (suite(5, fixture=True), 20)}
    for root, expected in suites.values():
        timed(root, "provium run -j2", expected)  # warm the caches, build the fixture
    samples = {(name, command): [] for name in suites for command in COMMANDS}
    for _ in range(args.runs):
        for name, (root, expected) in suites.items():
            for command in COMMANDS:
                samples[name, command].append(timed(root, command, expected))
    print(f"pytest -n 2 against provium run -j2, whole process, {args.runs} runs each, interleaved, "
          f"{os.cpu_count()} cores")
    print(f"{'suite':<46} {'command':<16} {'median':>9} {'min':>8} {'max':>8}")
    for (name, command), runs in samples.items():
        print(f"{name:<46} {command:<16} {statistics.median(runs):>7.2f} s {min(runs):>6.2f} s {max(runs):>6.2f} s")
    for name in suites:
        ratio = statistics.median(samples[name, "pytest -n 2"]) / statistics.median(samples[name, "provium run -j2"])
        print(f"pytest -n 2 / provium run -j2, {name}: {ratio:.2f}x")
    for root, _ in suites.values():
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
