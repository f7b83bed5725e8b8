"""Reporters: how results are shown and written. None of them runs anything.

The runner calls the live methods as things happen and the ordered ones in a
stable order (see runner.py). The terminal reporter prints one line per test,
failures with their file:line, message, values and console tail, and closes
with `N passed, N failed, N skipped`; on a terminal a status line shows the
run's progress. JUnit XML and KTAP are written at the end, JSON events line
by line.
"""

import json
import sys
import threading
import time
import xml.etree.ElementTree as ET

from .results import Outcome

_LABELS = {Outcome.PASSED: "ok", Outcome.FAILED: "FAIL", Outcome.ERROR: "ERROR", Outcome.SKIPPED: "SKIP"}


class Reporter:
    """Every event, doing nothing: reporters override what they need."""

    def notice(self, text):
        pass

    def live_test_started(self, file, test):
        pass

    def live_test_finished(self, result):
        pass

    def file_started(self, file):
        pass

    def test_started(self, file, test):
        pass

    def test_finished(self, result):
        pass

    def file_finished(self, file):
        pass

    def summary(self, summary):
        pass


class Reporters(Reporter):
    """Several reporters fed the same events."""

    def __init__(self, reporters):
        self.reporters = reporters


def _fan_out(event):
    def forward(self, *args):
        for reporter in self.reporters:
            getattr(reporter, event)(*args)
    return forward


for _event in [name for name in vars(Reporter) if not name.startswith("_")]:
    setattr(Reporters, _event, _fan_out(_event))


def failure_lines(result):
    """What a failed test shows: where, message, values, traceback, output, console tails."""
    head = f"{result.where}: {result.message}" if result.where else result.message
    lines = head.splitlines()
    for key, value in result.details.items():
        lines.append(f"  {key + ':':<9} {value}")
    if result.outcome == Outcome.ERROR and result.traceback.strip():
        lines += [line for line in result.traceback.strip().splitlines()
                  if "[C]: in" not in line and not line.strip().startswith("provium:")]
    if result.output:
        lines.append("output:")
        lines += ["  " + line for line in result.output.rstrip("\n").splitlines()]
    for vm, tail in result.consoles.items():
        lines.append(f"console of {vm} (last lines):")
        lines += ["  " + line for line in tail.splitlines()]
    return lines


class TerminalReporter(Reporter):
    """Plain lines: what CI logs get."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stdout
        self._lock = threading.Lock()

    def _write(self, lines):
        with self._lock:
            for line in lines:
                self.stream.write(line + "\n")
            self.stream.flush()

    def notice(self, text):
        self._write([f"provium: {text}"])

    def file_started(self, file):
        self._write([file])

    def test_finished(self, result):
        label = _LABELS.get(result.outcome, result.outcome.upper())
        suffix = f": {result.message}" if result.outcome == Outcome.SKIPPED and result.message else ""
        lines = [f"  {label:<5} {result.name}{suffix} ({result.duration:.2f} s)"]
        if result.outcome.failed:
            lines += ["        " + line for line in failure_lines(result)]
        self._write(lines)

    def summary(self, summary):
        self._write([f"{summary.passed} passed, {summary.failed} failed, {summary.skipped} skipped"])


class LiveTerminalReporter(TerminalReporter):
    """On a terminal: the plain lines, plus a status line redrawn under them."""

    def __init__(self, stream=None):
        super().__init__(stream)
        self._running = {}
        self._done = {"passed": 0, "failed": 0, "skipped": 0}
        self._started = time.monotonic()

    def _status(self):
        files = ", ".join(sorted(self._running)) or "-"
        return (f"[{time.monotonic() - self._started:5.0f} s] {self._done['passed']} passed, "
                f"{self._done['failed']} failed, {self._done['skipped']} skipped | running: {files}")[:200]

    def _write(self, lines):
        with self._lock:
            self.stream.write("\r\033[K")
            for line in lines:
                self.stream.write(line + "\n")
            self.stream.write(self._status())
            self.stream.flush()

    def live_test_started(self, file, test):
        with self._lock:
            self._running[file] = test
        self._write([])

    def live_test_finished(self, result):
        with self._lock:
            key = "failed" if result.outcome.failed else result.outcome
            self._done[key] = self._done.get(key, 0) + 1

    def file_finished(self, file):
        with self._lock:
            self._running.pop(file, None)

    def summary(self, summary):
        with self._lock:
            self._running.clear()
            self.stream.write("\r\033[K")
        super().summary(summary)


class ListReporter(Reporter):
    """--list: one `file::test` line per test found, nothing run."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stdout

    def test_started(self, file, test):
        self.stream.write(f"{file}::{test}\n")


def _by_file(summary):
    files = {name: [] for name in summary.files}
    for result in summary.results:
        files.setdefault(result.file, []).append(result)
    return files


class JUnitReport(Reporter):
    """JUnit XML as CI systems read it: one testsuite per file, one testcase per test."""

    def __init__(self, path):
        self.path = path

    def summary(self, summary):
        root = ET.Element("testsuites", name="provium", tests=str(len(summary.results)),
                          failures=str(summary.count(Outcome.FAILED)), errors=str(summary.count(Outcome.ERROR)),
                          skipped=str(summary.skipped), time=f"{summary.duration:.3f}")
        for file, results in _by_file(summary).items():
            suite = ET.SubElement(root, "testsuite", name=file, tests=str(len(results)),
                                  failures=str(sum(r.outcome == Outcome.FAILED for r in results)),
                                  errors=str(sum(r.outcome == Outcome.ERROR for r in results)),
                                  skipped=str(sum(r.outcome == Outcome.SKIPPED for r in results)),
                                  time=f"{sum(r.duration for r in results):.3f}")
            for result in results:
                case = ET.SubElement(suite, "testcase", name=result.name, classname=file, file=file,
                                     time=f"{result.duration:.3f}")
                if result.outcome.failed:
                    node = ET.SubElement(case, "failure" if result.outcome == Outcome.FAILED else "error",
                                         message=result.message.splitlines()[0] if result.message else "")
                    node.text = "\n".join(failure_lines(result))
                elif result.outcome == Outcome.SKIPPED:
                    ET.SubElement(case, "skipped", message=result.message)
                if result.output:
                    ET.SubElement(case, "system-out").text = result.output
        ET.indent(root)
        ET.ElementTree(root).write(self.path, encoding="utf-8", xml_declaration=True)


def _ktap_name(text):
    return " ".join(text.replace("#", "\\#").split())


class KtapReport(Reporter):
    """KTAP version 1: one subtest level per file, `# SKIP` for skipped tests."""

    def __init__(self, stream):
        self.stream = stream

    def summary(self, summary):
        files = _by_file(summary)
        lines = ["KTAP version 1", f"1..{len(files)}"]
        for number, (file, results) in enumerate(files.items(), 1):
            lines += ["  KTAP version 1", f"  # Subtest: {_ktap_name(file)}", f"  1..{len(results)}"]
            for index, result in enumerate(results, 1):
                name = _ktap_name(result.name)
                if result.outcome.failed:
                    lines += ["  # " + line for line in failure_lines(result)]
                    lines.append(f"  not ok {index} {name}")
                elif result.outcome == Outcome.SKIPPED:
                    lines.append(f"  ok {index} {name} # SKIP {_ktap_name(result.message)}".rstrip())
                else:
                    lines.append(f"  ok {index} {name}")
            failed = any(r.outcome.failed for r in results)
            skipped = results and all(r.outcome == Outcome.SKIPPED for r in results)
            lines.append(f"{'not ok' if failed else 'ok'} {number} {_ktap_name(file)}" + (" # SKIP" if skipped else ""))
        self.stream.write("\n".join(lines) + "\n")
        self.stream.flush()


class JsonEventsReport(Reporter):
    """One JSON object per line, each with `event` and `time`: run_start (written at once: the shard, its runs
    and the whole suite's), notice, file_start, test_start, test_end (every field of the TestResult, so that a
    reader such as `provium report merge` rebuilds it as it was), file_end, summary."""

    def __init__(self, stream, *, shard: str | None, runs: list[str], suite_runs: list[str]) -> None:
        """shard: "K/N", or None when the run is not sharded; runs: the run names of this run, in order;
        suite_runs: those of the whole suite, unsharded."""
        self.stream = stream
        self._lock = threading.Lock()
        self._event(event="run_start", shard=shard, runs=list(runs), suite_runs=list(suite_runs))

    def _event(self, **event):
        with self._lock:
            self.stream.write(json.dumps({"time": time.time(), **event}) + "\n")
            self.stream.flush()

    def notice(self, text):
        self._event(event="notice", text=text)

    def file_started(self, file):
        self._event(event="file_start", file=file)

    def test_started(self, file, test):
        self._event(event="test_start", file=file, test=test)

    def test_finished(self, result):
        self._event(event="test_end", file=result.file, test=result.name, outcome=result.outcome,
                    duration=result.duration, message=result.message, where=result.where, details=result.details,
                    traceback=result.traceback, output=result.output, consoles=result.consoles)

    def file_finished(self, file):
        self._event(event="file_end", file=file)

    def summary(self, summary):
        self._event(event="summary", passed=summary.passed, failed=summary.failed, skipped=summary.skipped,
                    duration=round(summary.duration, 3))
