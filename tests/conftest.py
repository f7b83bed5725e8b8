"""Shared helpers: run the provium command on Lua files written for a test."""

import fcntl
import os
import pty
import re
import select
import shutil
import signal
import struct
import subprocess
import sys
import termios
import textwrap
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
collect_ignore_glob = ["*.lua"]  # this suite's own Lua files run through `provium run` (test_lua_suite.py)


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

    def terminal(self, *args, cwd=None, env=None, rows=24, cols=80):
        return Terminal(self.command(*args), cwd or self.root, self.env(env), rows, cols)


class Terminal:
    """A command on a pseudo-terminal of its own (its controlling terminal), driven as a person would: type,
    read what it printed, resize the window, close the terminal."""

    def __init__(self, argv, cwd, env, rows, cols):
        self.master, slave = pty.openpty()
        self._size(slave, rows, cols)
        self.proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=slave, stdout=slave, stderr=slave,
                                     start_new_session=True, preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0))
        os.close(slave)
        self.screen = b""  # everything it printed so far
        self.seen = 0  # where the next read_until starts looking

    @staticmethod
    def _size(fd, rows, cols):
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def type(self, keys):
        os.write(self.master, keys.encode() if isinstance(keys, str) else keys)

    def resize(self, rows, cols):
        self._size(self.master, rows, cols)  # the kernel sends SIGWINCH to the terminal's foreground job

    def read_until(self, pattern, timeout=120):
        """The match of regex `pattern` (bytes) in what was printed since the last match; fails the test with
        the screen when it does not come within `timeout` seconds."""
        regex = re.compile(pattern)
        ends = time.monotonic() + timeout
        while (match := regex.search(self.screen, self.seen)) is None:
            left = ends - time.monotonic()
            if left <= 0 or not self._read(left):
                raise AssertionError(f"{pattern!r} did not appear; the screen:\n"
                                     f"{self.screen.decode('utf-8', 'replace')[-3000:]}")
        self.seen = match.end()
        return match

    def _read(self, timeout):
        """Read what is printed within `timeout` seconds; False at the end of output."""
        if select.select([self.master], [], [], min(timeout, 1.0))[0]:
            try:
                data = os.read(self.master, 65536)
            except OSError:  # EIO: every process of the terminal closed it
                return False
            self.screen += data
            return bool(data)
        return True

    def wait(self, timeout=120):
        """The exit status, once the command ended (what it still printed is read)."""
        ends = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < ends:
            self._read(0.2)
        while self._read(0.1) and select.select([self.master], [], [], 0)[0]:
            pass
        return self.proc.wait(max(0.0, ends - time.monotonic()))

    def close(self):
        """Close the terminal (a hangup) and kill what is left of the command."""
        if self.master >= 0:
            os.close(self.master)
            self.master = -1
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


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
