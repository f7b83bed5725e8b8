"""Reporters: how results are shown. The terminal reporter writes plain lines.

Each test gets one line; a failure adds its file:line, message, values and the
guest console tail; the last line is `N passed, N failed, N skipped`.
"""

import sys

_LABELS = {"passed": "ok", "failed": "FAIL", "error": "ERROR", "skipped": "SKIP"}


class TerminalReporter:
    def __init__(self, stream=None):
        self.stream = stream or sys.stdout

    def _line(self, text=""):
        self.stream.write(text + "\n")
        self.stream.flush()

    def notice(self, text):
        self._line(f"provium: {text}")

    def file_started(self, name):
        self._line(name)

    def test_finished(self, result):
        label = _LABELS.get(result.outcome, result.outcome.upper())
        suffix = f": {result.message}" if result.outcome == "skipped" and result.message else ""
        self._line(f"  {label:<5} {result.name}{suffix} ({result.duration:.2f} s)")
        if result.outcome in ("failed", "error"):
            for line in self._failure_lines(result):
                self._line("        " + line)

    @staticmethod
    def _failure_lines(result):
        head = f"{result.where}: {result.message}" if result.where else result.message
        lines = head.splitlines()
        for key, value in result.details.items():
            lines.append(f"  {key + ':':<9} {value}")
        if result.outcome == "error" and result.traceback.strip():
            lines += [line for line in result.traceback.strip().splitlines() 
                      if "[C]: in" not in line and not line.strip().startswith("provium:")]
        if result.output:
            lines.append("output:")
            lines += ["  " + line for line in result.output.rstrip("\n").splitlines()]
        for vm, tail in result.consoles.items():
            lines.append(f"console of {vm} (last lines):")
            lines += ["  " + line for line in tail.splitlines()]
        return lines

    def file_finished(self, name):
        pass

    def summary(self, summary):
        self._line(f"{summary.passed} passed, {summary.failed} failed, {summary.skipped} skipped")
