"""Interactive benchmark: `provium shell` to its first prompt, cold (a profile booted) and from a fixture
(resumed), and the round trip of a command typed in the shell.

Run: python bench/shell.py [--runs N]. The command runs on a pseudo-terminal of its own, as a person's
terminal; each run is a new `provium` process, so the times include Python's start and the CLI. The
fixture is built once before measuring.
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from conftest import Terminal  # noqa: E402

FIXTURE = """\
local vm = provium.create("minimal")
vm:boot{memory = "256M"}
return vm
"""
PROMPT = rb"(minimal|shell):/# "  # a fixture's VM is named after it


def to_prompt(suite, *args):
    """Seconds from starting `provium shell ARGS` to its first prompt; then the median seconds from typing
    `echo N` (and Enter) to its output, over 10 commands."""
    started = time.monotonic()
    term = Terminal([sys.executable, "-m", "provium", "shell", *args], suite, dict(os.environ), 24, 80)
    try:
        term.read_until(PROMPT, timeout=600)
        ready = time.monotonic() - started
        echoes = []
        for n in range(10):
            typed = time.monotonic()
            term.type(f"echo {n}{n}{n}\r")
            term.read_until(f"\r\n{n}{n}{n}\r\n".encode(), timeout=60)
            echoes.append(time.monotonic() - typed)
        term.type("exit\r")
        term.wait(60)
    finally:
        term.close()
    return ready, statistics.median(echoes)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)
    suite = Path(tempfile.mkdtemp(prefix="provium-bench-shell-"))
    try:
        (suite / "fixtures").mkdir()
        (suite / "fixtures" / "shell.lua").write_text(FIXTURE + f"-- {suite}\n")
        subprocess.run([sys.executable, "-m", "provium", "fixtures", "build", "shell"], cwd=suite, check=True,
                       capture_output=True)
        cold, resumed, echo = [], [], []
        for _ in range(args.runs):
            ready, key = to_prompt(suite)
            cold.append(ready)
            echo.append(key)
            ready, key = to_prompt(suite, "--fixture", "shell")
            resumed.append(ready)
            echo.append(key)
    finally:
        shutil.rmtree(suite, ignore_errors=True)
    cold_s, resumed_s = statistics.median(cold), statistics.median(resumed)
    print(f"provium shell, {args.runs} runs each (medians)")
    print(f"{'cold: provium shell -> first prompt':<48} {cold_s:8.2f} s")
    print(f"{'fixture: provium shell --fixture -> first prompt':<48} {resumed_s:8.2f} s   "
          f"{cold_s / resumed_s:5.1f}x faster")
    print(f"{'echo N typed -> its output':<48} {statistics.median(echo) * 1000:8.1f} ms")


if __name__ == "__main__":
    main()
