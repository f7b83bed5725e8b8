"""A Lua test file run at its caller's pace, test by test (the pytest plugin's runs), and what such runs share.

The file runs as under `provium run`: one Lua runtime, on a thread of its own. But before each test() it
waits until the caller asks for a test, then runs the test asked for and skips over any other: a caller asks
in the file's order, so a test reached while another is asked for is one the caller will not ask for
(deselected). The wait does not count against the file's deadline. Suites holds what a session's files
share: each suite's Config and Cache, and per matrix cell its FileOptions and Fixtures.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from . import config as config_mod, deadline, tempdirs
from .cache import Cache
from .config import Config
from .fixtures import Fixtures
from .lua_runtime import FileOptions, LuaFile, build_fixture
from .profile_build import Preparer
from .results import Outcome, TestResult
from .runner import RunItem
from .vm import accelerator


class PacedFile:
    """One run of a Lua file, each test run when ask() names it; close() lets it run to its end."""

    def __init__(self, item: RunItem, config: Config, cache: Cache, options: FileOptions, fixtures: Fixtures,
                 interrupted: Callable[[], bool]):
        self.item = item
        self._start = lambda: LuaFile(item.path, item.name, config, cache, self._finished, interrupted,
                                      fixtures=fixtures, options=replace(options, runs_now=self._runs_now)).run()
        self._cond = threading.Condition()
        self._asked: str | None = None  # the test the caller waits for, until the file begins it
        self._running = False  # a test the caller asked for has begun and not ended
        self._result: TestResult | None = None  # of the test asked for
        self._failure: TestResult | None = None  # the file's own (outside its tests), until take_failure()
        self._stopping = self._ended = False
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None  # what ended the thread other than the file (a provium bug)

    def ask(self, test: str) -> TestResult | None:
        """Run the test named `test` (the file first runs on to it); its result, or None when the file ended
        without reaching it (see take_failure() and `error` for why)."""
        with self._cond:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=f"provium-{self.item.name}", daemon=True)
                self._thread.start()
            self._asked, self._result = test, None
            self._cond.notify_all()
            self._cond.wait_for(lambda: self._result is not None or self._ended)
            self._asked = None
            return self._result

    def take_failure(self) -> TestResult | None:
        """The file's own failure (a syntax error, an error outside every test), once."""
        with self._cond:
            failure, self._failure = self._failure, None
            return failure

    def close(self) -> TestResult | None:
        """Let the file run to its end, beginning no other test; its failure no ask() has shown, if any."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()
        return self.take_failure()

    def _run(self) -> None:
        try:
            self._start()
        except BaseException as exc:
            self.error = exc
        finally:
            with self._cond:
                self._ended = True
                self._cond.notify_all()

    def _runs_now(self, test: str) -> bool:
        """FileOptions.runs_now, on the file's thread: wait for the caller to ask for a test; True when it is
        this one."""
        with deadline.suspended(), self._cond:
            self._cond.wait_for(lambda: self._stopping or self._asked is not None)
            self._running = not self._stopping and self._asked == test
            if self._running:
                self._asked = None
            return self._running

    def _finished(self, result: TestResult) -> None:
        with self._cond:
            if self._running:
                self._running, self._result = False, result
            else:
                self._failure = result
            self._cond.notify_all()


class Suites:
    """What a session's files share: each suite's Config and Cache, per matrix cell its FileOptions and
    Fixtures (built once per suite and kernel), and one scratch directory. close() ends them."""

    def __init__(self, report: Callable[[str], None], interrupted: Callable[[], bool]):
        self.report = report
        self.interrupted = interrupted
        self.accel, self.notice = accelerator()
        self._scratch: Path | None = None
        self._configs: dict[Path, Config] = {}
        self._preparers: dict[Path, Preparer] = {}
        self._cells: dict[tuple[Path, tuple], tuple[FileOptions, Fixtures]] = {}
        self._lock = threading.Lock()

    def config(self, path: Path) -> Config:
        """The suite of a file: the nearest provium.toml above it (else its directory, with the built-in
        profile); ConfigError when that file or a profile file is broken."""
        root = config_mod.find_root(Path(path).parent)
        with self._lock:
            if root not in self._configs:
                self._configs[root] = config_mod.load(root)
            return self._configs[root]

    def cache(self, config: Config) -> Cache:
        return Cache.for_suite(config)

    def cell(self, config: Config, aliases: tuple = ()) -> tuple[FileOptions, Fixtures]:
        """The FileOptions and Fixtures of the suite's files when NAME boots PROFILE for each (NAME, PROFILE)
        in `aliases` (a matrix cell)."""
        with self._lock:
            key = (config.root, aliases)
            if key not in self._cells:
                cache = self.cache(config)
                if self._scratch is None:
                    self._scratch = tempdirs.make("run")
                preparer = self._preparers.setdefault(cache.root, Preparer(cache, self.report))
                options = FileOptions.for_run(config.run, self.accel, scratch=self._scratch, preparer=preparer,
                                              aliases=aliases)
                self._cells[key] = (options, Fixtures(config, cache, build_fixture, options))
            return self._cells[key]

    def tests(self, item: RunItem, config: Config) -> tuple[list[tuple[str, str]], TestResult | None]:
        """The tests a file defines, as (name, file:line), found as `provium run --list` finds them (nothing
        boots); and its failure, when it fails before defining them all."""
        options, fixtures = self.cell(config, item.aliases)
        found, failed = [], []
        LuaFile(item.path, item.name, config, self.cache(config), failed.append, fixtures=fixtures,
                options=replace(options, collect_only=True),
                on_test_start=lambda name, where: found.append((name, where))).run()
        return found, next((r for r in failed if r.outcome == Outcome.ERROR), None)

    def paced(self, item: RunItem, config: Config) -> PacedFile:
        options, fixtures = self.cell(config, item.aliases)
        return PacedFile(item, config, self.cache(config), options, fixtures, self.interrupted)

    def close(self) -> None:
        for _, fixtures in self._cells.values():
            fixtures.close()
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
