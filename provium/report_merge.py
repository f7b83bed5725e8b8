"""`provium report merge`: the `--json` event files of the N shards of one run, read back as one run.

The merge prints what `provium run` would have printed for the whole suite, exits with its status and writes one
JUnit and one KTAP report, through the same reporters. Runs come in the order of the whole suite's run list; the
merged duration is the longest shard's (the shards ran in parallel). A missing, repeated or incomplete shard, or
shards of different N or of different suites, are named in a `provium: ...` line and make the status 1; everything
that was given is still printed and written. A file that is not a provium JSON event file is a usage error.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from . import runner
from .errors import ConfigError
from .report import JUnitReport, KtapReport, Reporter, Reporters, TerminalReporter
from .results import Outcome, Summary, TestResult

EXIT_OK, EXIT_FAILED = 0, 1
INTERRUPTED = "interrupted"  # the notice provium run gives when it was interrupted (cli.cmd_run)
_SHARD = re.compile(r"([1-9][0-9]*)/([1-9][0-9]*)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", metavar="FILE", help="the --json event files of the shards")
    parser.add_argument("--junit", metavar="FILE", help="write a JUnit XML report of the merged run")
    parser.add_argument("--ktap", metavar="FILE", help="write a KTAP report of the merged run (- for standard output)")


@dataclass
class ShardEvents:
    """What one `--json` file says: its shard, its runs, the results of each run, whether the run ended."""

    path: str
    shard: tuple[int, int] | None  # (K, N); None: the run was not sharded
    runs: list[str]  # the run names this shard had, in order
    suite_runs: list[str]  # those of the whole suite, unsharded
    started: set[str] = field(default_factory=set)  # runs with a file_start
    finished: set[str] = field(default_factory=set)  # runs with a file_end
    cut: set[str] = field(default_factory=set)  # runs with a test that started and never ended
    results: dict[str, list[TestResult]] = field(default_factory=dict)  # run name -> its tests, in order
    summary: dict | None = None  # the summary event; None when the run never got to it
    interrupted: bool = False  # the run was interrupted (Ctrl-C, SIGTERM): its summary covers part of it
    first_time: float = 0.0
    last_time: float = 0.0
    torn: bool = False  # the last line was cut off mid-write

    @property
    def name(self) -> str:
        return f"shard {self.shard[0]}/{self.shard[1]}" if self.shard else "the unsharded run"

    @property
    def label(self) -> str:
        return f"{self.name} ({self.path})"

    @property
    def complete(self) -> bool:
        return self.summary is not None and not self.interrupted

    @property
    def duration(self) -> float:
        """The run's own duration; for a run that never got to its summary, up to its last event."""
        if self.summary is not None:
            return float(self.summary["duration"])
        return max(0.0, self.last_time - self.first_time)


class Merged(NamedTuple):
    summary: Summary  # every run's results, in the suite's order; files: the runs the shards had
    started: set[str]  # the runs that started (got a file_start)
    problems: list[str]  # one line each: what is wrong with the set of shards


class _Bad(Exception):
    """A line that is not what a provium JSON event file holds."""


def _field(event: dict, key: str, kind: type | tuple[type, ...]) -> object:
    value = event.get(key)
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        what = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise _Bad(f"{event['event']} event: {key!r} is not a {what}")
    return value


def _strings(event: dict, key: str) -> list[str]:
    value = _field(event, key, list)
    if not all(isinstance(item, str) for item in value):
        raise _Bad(f"{event['event']} event: {key!r} is not a list of strings")
    return value


def _string_map(event: dict, key: str) -> dict[str, str]:
    value = _field(event, key, dict)
    if not all(isinstance(item, str) for item in value.values()):
        raise _Bad(f"{event['event']} event: {key!r} is not an object of strings")
    return value


def result_of(event: dict) -> TestResult:
    """The TestResult a test_end event was written from (report.JsonEventsReport)."""
    try:
        outcome = Outcome(event.get("outcome"))
    except ValueError:
        raise _Bad(f"test_end event: unknown outcome {event.get('outcome')!r}") from None
    return TestResult(file=_field(event, "file", str), name=_field(event, "test", str), outcome=outcome,
                      duration=float(_field(event, "duration", (int, float))), message=_field(event, "message", str),
                      where=_field(event, "where", str), details=_string_map(event, "details"),
                      traceback=_field(event, "traceback", str), output=_field(event, "output", str),
                      consoles=_string_map(event, "consoles"))


def _run_start(path: str, event: dict) -> ShardEvents:
    shard = _field(event, "shard", (str, type(None)))
    parsed = None
    if shard is not None:
        match = _SHARD.fullmatch(shard)
        if not match or not 1 <= int(match[1]) <= int(match[2]):
            raise _Bad(f"run_start event: shard {shard!r} is not K/N")
        parsed = int(match[1]), int(match[2])
    runs, suite_runs = _strings(event, "runs"), _strings(event, "suite_runs")
    if len(set(runs)) != len(runs) or not set(runs) <= set(suite_runs):
        raise _Bad("run_start event: its runs are not distinct runs of its suite_runs")
    return ShardEvents(path, parsed, runs, suite_runs)


def _take(shard: ShardEvents, event: dict) -> None:
    kind = event["event"]
    if kind in ("file_start", "test_start", "test_end", "file_end"):
        run = _field(event, "file", str)
        if run not in shard.runs:
            raise _Bad(f"{kind} event of {run!r}, which is not among the runs of its run_start")
        if shard.summary is not None:
            raise _Bad(f"{kind} event after the summary")
    if kind == "file_start":
        shard.started.add(run)
    elif kind == "test_start":
        shard.cut.add(run)  # until its test_end
    elif kind == "test_end":
        shard.results.setdefault(run, []).append(result_of(event))
        shard.cut.discard(run)
    elif kind == "file_end":
        shard.finished.add(run)
    elif kind == "notice":
        shard.interrupted |= _field(event, "text", str) == INTERRUPTED
    elif kind == "summary":
        for key in ("passed", "failed", "skipped"):
            _field(event, key, int)
        _field(event, "duration", (int, float))
        shard.summary = event
    elif kind == "run_start":
        raise _Bad("a second run_start event")
    # other events: written by a later provium, and not needed here


def read(path: str) -> ShardEvents:
    """The events of one `--json` file. Raises ConfigError when it is not a provium JSON event file; a last line
    cut off mid-write (the run died writing it) is left out, and the shard is then incomplete."""
    def bad(why: str, line: int | None = None) -> ConfigError:
        where = f"{path}:{line}" if line else path
        return ConfigError(f"{where}: not a provium JSON event file (from provium run --json): {why}")

    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read it: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise bad(f"not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})") from None
    if not text.strip():
        raise bad("it is empty")
    lines = text.split("\n")
    torn = lines[-1] != ""  # every event ends with a newline: what follows the last one was being written
    shard = None
    for number, line in enumerate(lines[:-1] if not torn else lines, 1):
        last = number == len(lines)
        try:
            event = json.loads(line)
        except ValueError:
            if last and shard is not None:
                shard.torn = True
                break
            raise bad("not a JSON line" if line.strip() else "an empty line", number) from None
        try:
            if not isinstance(event, dict) or not isinstance(event.get("event"), str):
                raise _Bad("not an event (a JSON object with an \"event\" name)")
            time = _field(event, "time", (int, float))
            if shard is None:
                if event["event"] != "run_start":
                    raise _Bad(f"it starts with a {event['event']} event, not run_start "
                               "(files from a provium without run_start cannot be merged)")
                shard = _run_start(path, event)
                shard.first_time = time
            else:
                _take(shard, event)
            shard.last_time = time
        except _Bad as exc:
            if last and torn and shard is not None:  # a cut line that happens to parse: still cut
                shard.torn = True
                break
            raise bad(str(exc), number) from None
    if shard is None:
        raise bad("no run_start event")
    return shard


class _Named(NamedTuple):
    name: str  # what runner.shard partitions by: a RunItem's name


def _listed(names: list[str]) -> str:
    return ", ".join(names) if names else "no test files"


def merge(shards: list[ShardEvents]) -> Merged:
    """The shards' results as one run, and what is wrong with the set of shards (in the order found)."""
    problems: list[str] = []
    reference = shards[0]
    suite = list(reference.suite_runs)
    for shard in shards[1:]:
        if set(shard.suite_runs) != set(reference.suite_runs):
            only_here = [r for r in shard.suite_runs if r not in reference.suite_runs]
            only_there = [r for r in reference.suite_runs if r not in shard.suite_runs]
            differences = ([f"only it lists {', '.join(only_here)}"] if only_here else []) + \
                ([f"only the other lists {', '.join(only_there)}"] if only_there else [])
            problems.append(f"{shard.label} is a shard of another suite than {reference.label}: "
                            + "; ".join(differences))
            suite += [r for r in only_here if r not in suite]
    sizes = {shard.shard[1] if shard.shard else 1 for shard in shards}
    if len(sizes) > 1:
        problems.append("shards of different N: " + ", ".join(shard.label for shard in shards))

    owner: dict[str, ShardEvents] = {}  # run name -> the file whose results are kept: the first given with it
    for index, shard in enumerate(shards):
        for earlier in shards[:index]:
            repeated = [run for run in shard.runs if owner.get(run) is earlier]
            if not repeated:
                continue
            if shard.shard == earlier.shard and set(shard.runs) == set(earlier.runs):
                problems.append(f"{earlier.name} is given twice: {earlier.path} and {shard.path}; "
                                f"the results of {earlier.path} are kept")
            else:
                problems.append(f"{shard.label} repeats runs of {earlier.label}: {', '.join(repeated)}; "
                                f"the results of {earlier.path} are kept")
        for run in shard.runs:
            owner.setdefault(run, shard)

    uncovered = [run for run in suite if run not in owner]
    if len(sizes) == 1:
        n = sizes.pop()
        given = {shard.shard[0] if shard.shard else 1 for shard in shards}
        for k in range(1, n + 1):
            if k not in given:
                should = [item.name for item in runner.shard([_Named(run) for run in reference.suite_runs], k, n)]
                problems.append(f"shard {k}/{n} is missing: it should have run {_listed(should)}")
                uncovered = [run for run in uncovered if run not in should]
    if uncovered:
        problems.append(f"no shard given ran {', '.join(uncovered)}")

    for shard in shards:
        if shard.complete:
            continue
        unfinished = [run for run in shard.runs if run not in shard.finished or run in shard.cut]
        why = ("its run was interrupted (Ctrl-C or SIGTERM: a cancelled job)" if shard.interrupted else
               "its last event is cut off and it has no summary (its run crashed or was killed)" if shard.torn else
               "it has no summary event (its run crashed or was killed)")
        problems.append(f"{shard.label} is incomplete: {why}; runs it did not finish: "
                        f"{', '.join(unfinished) or 'none'}")

    files = [run for run in suite if run in owner and (owner[run].complete or run in owner[run].started)]
    results = [result for run in files for result in owner[run].results.get(run, [])]
    started = {run for run in files if run in owner[run].started}
    duration = max(shard.duration for shard in shards)
    return Merged(Summary(results=results, duration=duration, files=files), started, problems)


def replay(merged: Merged, reporter: Reporter) -> None:
    """Hand the merged run to a reporter as the runner hands it a run: file by file, then the summary."""
    by_run: dict[str, list[TestResult]] = {}
    for result in merged.summary.results:
        by_run.setdefault(result.file, []).append(result)
    for run in merged.summary.files:
        if run not in merged.started:
            continue  # never started (--fail-fast): provium run prints nothing for it
        reporter.file_started(run)
        for result in by_run.get(run, []):
            reporter.test_started(run, result.name)
            reporter.test_finished(result)
        reporter.file_finished(run)
    for problem in merged.problems:
        reporter.notice(problem)
    reporter.summary(merged.summary)


def main(args: argparse.Namespace) -> int:
    """Merge args.files; the exit status: 1 when a test failed or a shard is missing, repeated or incomplete,
    else 0. Raises ConfigError (status 2) for a file that is not a provium JSON event file, or an unwritable
    report."""
    shards = [read(path) for path in args.files]  # every file is checked before anything is printed
    merged = merge(shards)
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="surrogateescape")  # what a test printed, bytes as they came
    human = sys.stderr if args.ktap == "-" else sys.stdout
    reporters: list[Reporter] = [TerminalReporter(human)]
    opened = []
    try:
        if args.junit:
            open(args.junit, "w").close()  # an unwritable path fails now, not after the results were printed
            reporters.append(JUnitReport(args.junit))
        if args.ktap:
            # a Lua string that is not UTF-8 is kept by surrogateescape: its bytes go out as they came in
            stream = sys.stdout if args.ktap == "-" else open(args.ktap, "w", encoding="utf-8",
                                                              errors="surrogateescape")
            if stream is not sys.stdout:
                opened.append(stream)
            reporters.append(KtapReport(stream))
        replay(merged, Reporters(reporters))
    except BrokenPipeError:
        raise  # the reader went away: cli.main's to handle
    except OSError as exc:
        raise ConfigError(f"{exc.filename or 'a report'}: cannot write it: {exc.strerror or exc}") from None
    finally:
        for stream in opened:
            stream.close()
    return EXIT_FAILED if merged.summary.failed or merged.problems else EXIT_OK
