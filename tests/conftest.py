"""Shared helpers: run the provium command on Lua files written for a test."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def qemu_pids_under(marker):
    """PIDs of live processes whose command line mentions `marker` (a temp dir)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            state = next(line for line in (entry / "status").read_text().splitlines() if line.startswith("State:"))
        except (OSError, StopIteration):
            continue
        if b"qemu-system" in cmdline and marker.encode() in cmdline and "zombie" not in state:
            pids.append(int(entry.name))
    return pids


class Suite:
    """A throwaway suite directory with its own TMPDIR, so its QEMU processes can be found."""

    def __init__(self, root):
        self.root = root
        self.tmp = root / "tmp"
        self.tmp.mkdir()

    def write(self, name, text):
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
        return path

    def env(self, extra=None):
        return {**os.environ, "TMPDIR": str(self.tmp), **(extra or {})}

    def command(self, *args):
        return [sys.executable, "-m", "provium", *args]

    def run(self, *args, timeout=300, env=None, cwd=None):
        return subprocess.run(self.command(*args), cwd=cwd or self.root, env=self.env(env),
                              capture_output=True, text=True, timeout=timeout)

    def popen(self, *args, env=None):
        return subprocess.Popen(self.command(*args), cwd=self.root, env=self.env(env),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def qemu_pids(self):
        return qemu_pids_under(str(self.tmp))


@pytest.fixture
def suite(tmp_path):
    return Suite(tmp_path)
