"""The pytest plugin (entry point pytest11): a Provium suite's Lua test files as pytest items, and the
`provium` fixture, which gives Python tests guests of their own.

Each *.lua file under a provium.toml, outside fixtures/ and lib/, is collected as one pytest item per test()
it defines (found as `provium run --list` finds them: nothing boots), named `file.lua::test name`, or
`test name[PROFILE]` per profile of the suite's [matrix]. The file runs as `provium run` runs it, test by test
as pytest asks for them (paced.py), so pytest's selection (-k, --lf), -x and timings hold. A todo() is a skip
with its reason, an assertion or a Lua error a failure showing the file:line and the values; what the test
printed is its captured stdout and each VM's console tail a report section. Under pytest-xdist a file's tests
go to one worker, so its top-level code runs once; a fixture is built once whichever workers ask for it (the
cache's file lock). Nothing of provium is imported until pytest meets a Lua file or the fixture: the plugin
costs other projects' test runs nothing.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

CONFIG_NAME = "provium.toml"  # config.CONFIG_NAME, without importing it
_SUITES = pytest.StashKey()
_interrupted = threading.Event()  # Ctrl-C: Lua code stops and ops are abandoned


def _suites(config: pytest.Config):
    """The session's Suites (paced.py), made on first use."""
    if _SUITES not in config.stash:
        from .paced import Suites
        config.stash[_SUITES] = Suites(lambda line: print(f"provium: {line}", file=sys.stderr, flush=True),
                                       interrupted=_interrupted.is_set)
    return config.stash[_SUITES]


def _suite_root(path: Path) -> Path | None:
    return next((d for d in path.parents if (d / CONFIG_NAME).is_file()), None)


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    if file_path.suffix != ".lua":
        return None
    root = _suite_root(file_path.resolve())
    if root is None:
        return None
    from .runner import NOT_TEST_DIRS
    if NOT_TEST_DIRS & set(file_path.resolve().relative_to(root).parts[:-1]):
        return None
    return LuaTestFile.from_parent(parent, path=file_path)


class LuaFailure(Exception):
    """A Lua test's failure: its TestResult (where, message, values, traceback)."""

    def __init__(self, result):
        super().__init__(result.message)
        self.result = result


class LuaTestFile(pytest.File):
    """A Lua test file: its tests as items, and its runs (one per matrix cell), started by the first test
    asked for and ended at the file's teardown."""

    def collect(self) -> Iterator[pytest.Item]:
        from . import runner
        from .errors import ProviumError
        from .report import failure_lines
        suites = _suites(self.config)
        try:
            config = suites.config(self.path)
            self.runs = {}
            for item in runner.items([str(self.path)], {str(self.path): config}):
                tests, failure = suites.tests(item, config)
                if failure is not None:
                    raise self.CollectError("\n".join(failure_lines(failure)))
                self.runs[item] = None
                cell = "".join(f"[{profile}]" for _, profile in item.aliases)
                for name, where in tests:
                    yield LuaTest.from_parent(self, name=name + cell, test=name, where=where, run=item,
                                              suite=config)
        except ProviumError as exc:
            raise self.CollectError(f"provium: {exc}") from None

    def paced(self, item, config):
        """The run of matrix cell `item`, started when first needed; the file's other runs end first (one
        cell's VMs at a time)."""
        for other, paced in self.runs.items():
            if other != item and paced is not None:
                self._end(other)
        if self.runs[item] is None:
            self.runs[item] = _suites(self.config).paced(item, config)
        return self.runs[item]

    def _end(self, item) -> None:
        paced, self.runs[item] = self.runs[item], None
        failure = paced.close()
        if failure is not None:
            raise LuaFailure(failure)
        if paced.error is not None:
            raise paced.error

    def teardown(self) -> None:
        for item in [i for i, paced in getattr(self, "runs", {}).items() if paced is not None]:
            self._end(item)


class LuaTest(pytest.Item):
    """One test() of a Lua file."""

    def __init__(self, *, test: str, where: str, run, suite, **kwargs):
        super().__init__(**kwargs)
        self.test, self.where, self.run, self.suite = test, where, run, suite

    def runtest(self) -> None:
        from _pytest.outcomes import Skipped
        from .results import Outcome, TestResult
        paced = self.parent.paced(self.run, self.suite)
        result = paced.ask(self.test)
        if result is None:
            if paced.error is not None:
                raise paced.error
            result = paced.take_failure() or TestResult(
                self.run.name, self.test, Outcome.ERROR, where=self.where,
                message=f"{self.run.name} ended without reaching test {self.test!r} (it was listed without "
                        f"booting anything: is the test defined only on some guests?)")
            raise LuaFailure(result)
        if result.output:
            self.add_report_section("call", "stdout", result.output)
        for vm, tail in result.consoles.items():
            self.add_report_section("call", f"console of {vm}", tail)
        if result.outcome == Outcome.SKIPPED:
            raise Skipped(result.message, _use_item_location=True)
        if result.outcome.failed:
            raise LuaFailure(result)

    def reportinfo(self):
        line = self.where.rpartition(":")[2]
        # the domain (a failure's headline) is not the end of the node id: pytest -v would show its dots as ::
        return self.path, int(line) - 1 if line.isdigit() else None, f"{self.name} ({self.where})"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """A LuaFailure shows as the Lua file shows it (file:line, message, values, traceback), in the test's
    call or, for an error in a file's code after its last test, in its teardown."""
    report = (yield).get_result()
    if call.excinfo is not None and isinstance(call.excinfo.value, LuaFailure):
        from dataclasses import replace
        from .report import failure_lines
        report.longrepr = "\n".join(failure_lines(replace(call.excinfo.value.result, output="", consoles={})))


@pytest.fixture
def provium(request: pytest.FixtureRequest):
    """A Harness (harness.py) of the suite the test file is in: provium.create(PROFILE) gives a VM to boot,
    provium.fixture(NAME) a running clone; every VM is stopped at the test's end, and a kernel report still
    on a console fails the test's teardown. The test runs under the suite's test deadline."""
    from . import deadline
    from .harness import Harness
    suites = _suites(request.config)
    config = suites.config(request.path)
    options, fixtures = suites.cell(config)
    harness = Harness(config, suites.cache(config), options, fixtures)
    with deadline.until(time.monotonic() + options.test_timeout):
        try:
            yield harness
        finally:
            harness.close()


def pytest_report_header(config: pytest.Config) -> str | None:
    if _SUITES in config.stash and config.stash[_SUITES].notice:
        return f"provium: {config.stash[_SUITES].notice}"
    return None


def pytest_keyboard_interrupt(excinfo) -> None:
    from . import qemu
    _interrupted.set()
    qemu.terminate_all()  # unblocks every file thread waiting on its guest


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    if _SUITES in config.stash:
        config.stash[_SUITES].close()


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """Under `-n N` (xdist's --dist load), a Lua file's tests go to one worker, as one unit; everything else
    is sent test by test, as with load."""
    if config.getvalue("dist") != "load":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class LuaFileScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            file = nodeid.split("::", 1)[0]
            return file if file.endswith(".lua") else nodeid

    return LuaFileScheduling(config, log)
