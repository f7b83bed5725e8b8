"""`provium repl`: a Lua prompt in the test sandbox, with a booted guest bound to `vm`.

Lines are evaluated as the standalone `lua` does them: `return <line>` first, else the line as statements;
a chunk whose syntax ends early gets a continuation prompt. Values are shown as assertions show them.
An error is shown and the prompt comes back. Ctrl-C clears the line at the prompt and stops the Lua code
while it runs; Ctrl-D (or `exit`) leaves, and the guest is stopped. Lines are kept in a history file.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
from dataclasses import replace
from pathlib import Path

from .interactive import Evaluation, Guest, Terminated, add_guest_arguments
from .report import TerminalReporter, failure_lines
from .results import TestResult

PROMPT, CONTINUATION = "lua> ", "...> "
CHUNK_NAME = "stdin"  # how errors name a typed chunk: stdin:1: ...
LEAVE = ("exit", "quit")
HISTORY_LINES = 1000
EXIT_OK, EXIT_INTERRUPTED = 0, 130
# traceback lines that say nothing a typed chunk's error does not: the chunk itself, tail calls, C functions, the
# harness
_PLAIN_FRAME = re.compile(r"in main chunk$|\(\.\.\.tail calls\.\.\.\)|\[C\]: in|^\s*provium:")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_guest_arguments(parser)


class _CtrlC:
    """SIGINT: while Lua code runs, a request to stop it; else KeyboardInterrupt (at the prompt: the line is
    dropped)."""

    def __init__(self) -> None:
        self.pressed = False
        self.guest: Guest | None = None

    def __call__(self, signum, frame) -> None:
        if self.guest is not None and self.guest.busy:
            self.pressed = True
            return
        raise KeyboardInterrupt


def main(args: argparse.Namespace) -> int:
    """Run the prompt until Ctrl-D; the exit status (130 when interrupted while the guest was starting,
    128 + the signal when SIGTERM or SIGHUP ended it)."""
    ctrl_c = _CtrlC()
    guest = ctrl_c.guest = Guest(args, interrupted=lambda: ctrl_c.pressed)
    previous = signal.signal(signal.SIGINT, ctrl_c)
    for stream in (sys.stdout, sys.stderr):
        stream.reconfigure(errors="surrogateescape")  # the bytes of Lua strings, as they are
    history = _history_file() if sys.stdin.isatty() else None
    try:
        with guest:
            print(_banner(guest), flush=True)
            _prompt(guest, ctrl_c)
    except KeyboardInterrupt:  # while the guest was starting
        print("provium: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Terminated as exc:
        return exc.status
    finally:
        signal.signal(signal.SIGINT, previous)
        if history is not None:
            _save_history(history)
    return EXIT_OK


def _banner(guest: Guest) -> str:
    vm = guest.vm
    release = guest.lua.preparer.prepare(vm.profile).kernel.release
    how = f"resumed from fixture {guest.args.fixture}" if guest.args.fixture else "booted"
    return (f"vm is VM {vm.name!r} (profile {vm.profile.name}, kernel {release}), {how}. "
            f"Ctrl-D leaves and stops it.")


def _prompt(guest: Guest, ctrl_c: _CtrlC) -> None:
    lines: list[str] = []  # the chunk being typed
    while True:
        try:
            line = input(CONTINUATION if lines else PROMPT)
            if not lines and line.strip() in LEAVE:
                return
            if not lines and not line.strip():
                continue
            lines.append(line)
            source = "\n".join(lines)
            if source.startswith("="):  # =expr, as Lua 5.1's prompt took it
                source = "return " + source[1:]
            ctrl_c.pressed = False
            evaluation = guest.run(source, CHUNK_NAME)
            if not evaluation.incomplete:
                lines = []
                _show(evaluation)
        except KeyboardInterrupt:  # at the prompt: the line, and the chunk it continued, are dropped
            print()
            lines = []
        except EOFError:
            print()
            return


def _show(evaluation: Evaluation) -> None:
    """What a chunk printed, the tests it ran, then its values (tab-separated) or why it stopped."""
    out = sys.stdout
    if evaluation.output:
        out.write(evaluation.output if evaluation.output.endswith("\n") else evaluation.output + "\n")
    for result in evaluation.tests:
        TerminalReporter(out).test_finished(result)
    if evaluation.values and not evaluation.interrupted:
        out.write("\t".join(evaluation.values) + "\n")
    out.flush()
    if evaluation.interrupted:
        problem = ["interrupted", *evaluation.notes]
    else:
        problem = _failure_lines(evaluation.failure) if evaluation.failure else []
    for line in problem:
        print(line, file=sys.stderr)
    sys.stderr.flush()


def _failure_lines(failure: TestResult) -> list[str]:
    """As a test's failure shows, with its traceback only when it goes deeper than the typed chunk."""
    deeper = [line for line in failure.traceback.splitlines()
              if line.strip() not in ("", "stack traceback:") and not _PLAIN_FRAME.search(line)]
    return failure_lines(failure if deeper else replace(failure, traceback=""))


def _history_file() -> Path:
    """The history file (under $XDG_STATE_HOME, else ~/.local/state), read into readline's history."""
    import readline  # here: importing it changes how input() reads, which only a prompt on a terminal wants

    state = os.environ.get("XDG_STATE_HOME", "")
    path = Path(state if os.path.isabs(state) else Path.home() / ".local" / "state") / "provium" / "repl_history"
    try:
        readline.read_history_file(path)
    except OSError:
        pass  # none yet
    return path


def _save_history(path: Path) -> None:
    import readline

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        readline.set_history_length(HISTORY_LINES)
        readline.write_history_file(path)
    except OSError as exc:
        print(f"provium: cannot save the prompt's history in {path}: {exc.strerror}", file=sys.stderr)
