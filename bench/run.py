"""Every Provium benchmark in one run: python bench/run.py [--quick].

Each section prints its own table of medians and ratios; --quick uses fewer
runs (for a smoke test, not for numbers to quote).
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import boot  # noqa: E402
import debug  # noqa: E402
import fixtures  # noqa: E402
import kernels  # noqa: E402
import modules  # noqa: E402
import ops  # noqa: E402
import overlap  # noqa: E402
import parallel  # noqa: E402
import peers  # noqa: E402
import pytest_xdist  # noqa: E402
import shell  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few runs: check that the benchmarks work")
    quick = parser.parse_args().quick
    boot.main(["--runs", "2" if quick else "7"])
    print()
    modules.main(["--quick"] if quick else ["--runs", "7"])
    print()
    kernels.main(["--quick"] if quick else ["--runs", "7"])
    print()
    debug.main(["--quick"] if quick else ["--runs", "7"])
    print()
    ops.main(["--iterations", "20" if quick else "300"])
    print()
    overlap.main(["--n", "20", "--rounds", "2"] if quick else [])
    print()
    fixtures.main(["--runs", "2" if quick else "9"])
    print()
    parallel.main(["--runs", "1" if quick else "5"])
    print()
    pytest_xdist.main(["--runs", "1" if quick else "5"])
    print()
    shell.main(["--runs", "1" if quick else "5"])
    print()
    peers.main(["--runs", "3", "--vng-runs", "1"] if quick else ["--runs", "30", "--vng-runs", "3"])


if __name__ == "__main__":
    main()
