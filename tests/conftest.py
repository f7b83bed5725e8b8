"""Shared helpers: run the provium command on Lua files written for a test."""

import os
import shutil
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


HELLO_C = """\
#include <linux/init.h>
#include <linux/module.h>

static int __init hello_init(void) { pr_info("hello\\n"); return 0; }
static void __exit hello_exit(void) { }
module_init(hello_init);
module_exit(hello_exit);
MODULE_LICENSE("GPL");
"""


def build_hello(kdir, directory):
    """A hello-world module built out of tree against the kbuild tree `kdir`; the .ko's path."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "hello.c").write_text(HELLO_C)
    (directory / "Kbuild").write_text("obj-m := hello.o\n")
    result = subprocess.run(["make", "-C", str(kdir), f"M={directory}", "modules"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return directory / "hello.ko"


def vermagic(module):
    """The vermagic a module was built with (what the kernel checks when it loads it)."""
    modinfo = shutil.which("modinfo", path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin")
    assert modinfo, "modinfo (package kmod) is not installed"
    return subprocess.run([modinfo, "-F", "vermagic", str(module)], capture_output=True, text=True,
                          check=True).stdout.rstrip("\n")
