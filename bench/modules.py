"""Module tree benchmark: cold boot -> first exec against the release before it, and initramfs sizes.

Run: python bench/modules.py [--runs N | --quick] [--baseline COMMIT]. Rows:
the baseline release (default fbe0200, the last one without a module tree in
the guest), this tree's default profile, a profile with a few
available_modules and one with the whole tree (available_modules = ["*"]).
Every boot runs in a fresh process that imports provium from the tree under
test (PYTHONPATH), the baseline from a `git archive` of its commit. Rows are
interleaved: one boot of each per round, starting from another row each
round. Each process looks its images up first (timed apart: provium pays it
once per process), then the clock runs as in bench/boot.py.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
BASELINE = "fbe0200"
MEMORY = "512M"  # the profile default; the whole tree does not unpack in 256M
FEW = ["videodev", "vivid", "dummy", "veth", "tun"]
PROFILES = f"""
[profiles.few]
available_modules = {json.dumps(FEW)}

[profiles.whole]
available_modules = ["*"]
"""


def boot_once(profile_name, suite):
    """Driver mode, in the tree under test: look the images up, boot once, print the timings as JSON."""
    from boot import cold_boot
    from provium import config, images
    from provium.cache import Cache

    profile, cache = config.load(suite).profile(profile_name), Cache()
    started = time.monotonic()
    initrd = images.prepare(profile, cache).initrd
    lookup = time.monotonic() - started
    boot = cold_boot(profile, cache, MEMORY, 1)
    print(json.dumps({"lookup": lookup, "ready": boot.ready, "first": boot.first, "initrd": initrd.stat().st_size}))


def run_driver(tree, profile_name, suite):
    env = {**os.environ, "PYTHONPATH": str(tree)}
    result = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--driver", profile_name, str(suite)],
                            cwd=suite, env=env, capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise RuntimeError(f"boot of {profile_name!r} from {tree} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.splitlines()[-1])


def export(commit, into):
    """The tracked files of `commit` under `into` (no worktree left registered in the repository)."""
    archive = subprocess.run(["git", "-C", str(REPO), "archive", commit], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="one round: check that the benchmark works")
    parser.add_argument("--baseline", default=BASELINE, help="the release to compare with (a git commit)")
    parser.add_argument("--driver", nargs=2, metavar=("PROFILE", "SUITE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.driver:
        boot_once(*args.driver)
        return
    if args.quick:
        args.runs = 1
    scratch = Path(tempfile.mkdtemp(prefix="provium-bench-modules-"))
    try:
        baseline, old_suite, suite = scratch / "baseline", scratch / "old-suite", scratch / "suite"
        for directory in (baseline, old_suite, suite):
            directory.mkdir()
        export(args.baseline, baseline)
        (suite / "provium.toml").write_text(PROFILES)
        rows = [(f"release {args.baseline}, default", baseline, "minimal", old_suite),
                ("this tree, default", REPO, "minimal", suite),
                (f"this tree, {len(FEW)} available", REPO, "few", suite),
                ("this tree, whole tree", REPO, "whole", suite)]
        for _, *config in rows:  # builds and caches the images; not measured
            run_driver(*config)
        samples = {name: [] for name, *_ in rows}
        for round_ in range(args.runs):
            start = round_ % len(rows)  # each row takes each place in the round in turn
            for name, *config in rows[start:] + rows[:start]:
                samples[name].append(run_driver(*config))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"module tree in the guest: cold boot -> first exec, {args.runs} runs each, interleaved, "
          f"{MEMORY}, 1 vCPU; {len(FEW)} available = {', '.join(FEW)}")
    print(f"{'configuration':<28} {'initramfs':>10} {'lookup':>8} {'agent ready':>12} {'first exec':>11} "
          f"{'min':>7} {'max':>7} {'vs release':>11}")
    reference = statistics.median(s["first"] for s in samples[rows[0][0]])
    for name, runs in samples.items():
        first = [s["first"] for s in runs]
        median, lookup = statistics.median(first), statistics.median(s["lookup"] for s in runs)
        print(f"{name:<28} {runs[0]['initrd'] / 1048576:>7.1f} MiB {lookup:>6.2f} s "
              f"{statistics.median(s['ready'] for s in runs):>10.3f} s {median:>9.3f} s {min(first):>5.2f} s "
              f"{max(first):>5.2f} s {median - reference:>+9.3f} s")
    print("lookup: finding the cached images, once per provium process (their inputs are hashed)")


if __name__ == "__main__":
    main()
