"""Every Provium benchmark in one run: python bench/run.py [--quick].

Each section prints its own table of medians, limits and ratios. A full run
also writes what it printed into README.md, between the markers of its
"Performance" section, under a line naming the machine; --quick uses fewer
runs (a smoke test, not numbers to quote) and leaves the README alone.
"""

import argparse
import contextlib
import datetime
import io
import os
import platform
import re
import subprocess
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
import startup  # noqa: E402

README = Path(__file__).resolve().parent.parent / "README.md"
BEGIN, END = "<!-- bench/run.py writes from here -->", "<!-- bench/run.py writes up to here -->"


def sections(quick: bool):
    """(benchmark, its arguments) in the order they run."""
    runs = lambda full, short="1": ["--runs", short if quick else full]  # noqa: E731
    return [
        (boot, runs("7", "2")),
        (startup, runs("9", "2")),
        (ops, ["--iterations", "20" if quick else "300"]),
        (fixtures, runs("9", "2")),
        (parallel, runs("5")),
        (pytest_xdist, runs("5")),
        (peers, ["--runs", "3", "--vng-runs", "1"] if quick else ["--runs", "30", "--vng-runs", "3"]),
        (kernels, ["--quick"] if quick else ["--runs", "7"]),
        (modules, ["--quick"] if quick else ["--runs", "7"]),
        (debug, ["--quick"] if quick else ["--runs", "7"]),
        (overlap, ["--n", "20", "--rounds", "2"] if quick else []),
        (shell, runs("5")),
    ]


class Tee(io.TextIOBase):
    """Writes to the terminal and keeps a copy."""

    def __init__(self, terminal):
        self.terminal, self.copy = terminal, io.StringIO()

    def write(self, text):
        self.terminal.write(text)
        self.terminal.flush()
        return self.copy.write(text)


def machine() -> str:
    qemu = subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    return (f"{datetime.date.today()}, {os.cpu_count()} cores, {platform.platform(terse=True)}, "
            f"Python {platform.python_version()}, {qemu}")


def write_readme(output: str) -> None:
    text = README.read_text()
    block = f"{BEGIN}\nOne `python bench/run.py` on {machine()}:\n\n```\n{output.rstrip()}\n```\n{END}"
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.DOTALL)
    if not pattern.search(text):
        raise SystemExit(f"README.md has no {BEGIN} ... {END} block to write into")
    README.write_text(pattern.sub(lambda _: block, text))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few runs: check that the benchmarks work")
    quick = parser.parse_args().quick
    tee = Tee(sys.stdout)
    with contextlib.redirect_stdout(tee):
        for i, (bench, argv) in enumerate(sections(quick)):
            if i:
                print()
            bench.main(argv)
    if not quick:
        write_readme(tee.copy.getvalue())
        print(f"\nwritten into {README}")


if __name__ == "__main__":
    main()
