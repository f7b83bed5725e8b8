"""An interactive shell in a guest: the agent's terminal session (docs/protocol.md, pty_*) joined to the user's
terminal.

The terminal is put in raw mode, so every key (Ctrl-C, Ctrl-Z, Ctrl-D, arrows) reaches the guest's
pseudo-terminal, whose line discipline and shell do what a local terminal would: Ctrl-C interrupts the guest's
foreground job, not provium. The guest's output is written as it comes, bytes unchanged; the window size
follows the terminal's. The session ends when the shell exits, when the VM dies (its report is
shown), or when the terminal goes away.
"""

from __future__ import annotations

import os
import select
import termios
import threading
import tty

from .errors import ProviumError
from .guest import GuestOps
from .vm import GuestCrash

READ_SIZE = 65536
EVENT_WAIT = 0.2  # seconds the output reader waits for an event before looking whether the session ended
SIZE_LOOK = 0.2  # seconds between looks at the window's size


def attach(target: GuestOps, prompt: str, stdin: int = 0, stdout: int = 1) -> int | None:
    """Run an interactive shell in `target` (a VM, or a worker: the shell runs in its context) on the terminal
    `stdin`/`stdout` until it ends; its exit code (None when it did not exit by itself: the VM died or the
    terminal went away)."""
    if not (os.isatty(stdin) and os.isatty(stdout)):
        raise ProviumError("an interactive shell needs a terminal (standard input and output are not one)")
    rows, cols = _size(stdout)
    term = os.environ.get("TERM", "linux")
    target.terminal(rows, cols, term, prompt.encode())
    wake_r, wake_w = os.pipe()
    session = _Output(target, stdout, wake_w)
    saved = termios.tcgetattr(stdin)
    reader = threading.Thread(target=session.run, name="provium-terminal", daemon=True)
    try:
        tty.setraw(stdin)
        reader.start()
        _type(target, stdin, stdout, wake_r, session, (rows, cols))
    finally:
        session.ended.set()
        reader.join()
        try:
            termios.tcsetattr(stdin, termios.TCSAFLUSH, saved)
        except termios.error:  # the terminal is gone
            pass
        os.close(wake_r)
        os.close(wake_w)
        target.terminal_closed()
    if session.error is not None:
        raise session.error
    return session.exit_code


class _Output:
    """The reader thread: the guest's output to the terminal until the shell exits or the VM fails."""

    def __init__(self, target: GuestOps, stdout: int, wake: int):
        self.target, self.stdout, self.wake = target, stdout, wake
        self.ended = threading.Event()
        self.exit_code: int | None = None
        self.error: ProviumError | None = None
        self._shown: GuestCrash | None = None  # both threads may be handed one report

    def run(self) -> None:
        try:
            while not self.ended.is_set():
                try:
                    event = self.target.terminal_event(EVENT_WAIT)
                except GuestCrash as crash:
                    self.show(crash)
                    continue
                if event is None:
                    continue
                if event.get("event") == "pty_output":
                    _write_all(self.stdout, event["data"])
                elif event.get("event") == "pty_exit":
                    self.exit_code = event["exit_code"]
                    break
        except ProviumError as exc:
            self.error = exc
        except OSError:  # the terminal went away
            pass
        finally:
            self.ended.set()
            os.write(self.wake, b"x")

    def show(self, crash: GuestCrash) -> None:
        """A kernel report the session survives (a warning) shown between the guest's output lines; a fatal one
        (a panic, an oops) is raised: the VM is gone."""
        if any(finding.fatal for finding in crash.findings):
            raise crash
        if crash is self._shown:
            return
        self._shown = crash
        _write_all(self.stdout, ("\r\n[provium] " + str(crash).replace("\n", "\r\n") + "\r\n").encode())


def _type(target: GuestOps, stdin: int, stdout: int, wake: int, session: _Output, size: tuple[int, int]) -> None:
    """The keys typed to the guest, and the window's size when it changes (looked at every SIZE_LOOK seconds:
    SIGWINCH reaches only the main thread, and a failed test's shell runs on a file's), until the session ends
    or the terminal goes away."""
    while not session.ended.is_set():
        readable, _, _ = select.select([stdin, wake], [], [], SIZE_LOOK)
        try:
            now = _size(stdout)
        except OSError:  # the terminal closed
            return
        if now != size and not session.ended.is_set():
            size = now
            target.terminal_resize(*size)
        if stdin in readable and not session.ended.is_set():
            try:
                keys = os.read(stdin, READ_SIZE)
            except OSError:
                keys = b""
            if not keys:  # the terminal closed
                return
            try:
                target.terminal_write(keys)
            except GuestCrash as crash:  # raised after the keys were written
                session.show(crash)
            except ProviumError:
                if not session.ended.wait(1.0):  # the reader says why (the shell exited, the VM died)
                    raise


def _size(fd: int) -> tuple[int, int]:
    size = os.get_terminal_size(fd)
    return size.lines, size.columns


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
