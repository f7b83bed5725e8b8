"""Finding test files, selecting them, and running them in parallel, one Lua runtime per file.

The runner prints nothing itself. It hands a reporter two streams of events:
live ones (a test started or finished, as it happens, for a progress display)
and ordered ones (file started, test started, test finished, file finished),
which are held back so that every file's events come out whole and in the
order the files were named, whatever the scheduling.
"""

import glob
import hashlib
import os
import shutil
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, replace
from pathlib import Path

from . import config as config_mod, tempdirs
from .errors import ConfigError
from .fixtures import Fixtures
from .host_files import display_name
from .lua_runtime import FileOptions, LuaFile, build_fixture
from .results import Summary, TestResult

NOT_TEST_DIRS = {"fixtures", "lib"}  # fixture scripts and helper modules live here, not tests


def discover(paths):
    """Test files named by `paths` (files, globs, directories searched for *.lua outside
    fixtures/ and lib/ directories), in order."""
    found = []
    for arg in paths:
        matches = sorted(glob.glob(arg, recursive=True)) if glob.has_magic(arg) else [arg]
        if not matches or not all(os.path.exists(m) for m in matches):
            raise ConfigError(f"no such file or directory: {arg}")
        for match in matches:
            if os.path.isdir(match):
                found += sorted(str(p) for p in Path(match).rglob("*.lua")
                                if not NOT_TEST_DIRS & set(p.relative_to(match).parts[:-1]))
            else:
                found.append(match)
    unique = list(dict.fromkeys(os.path.normpath(p) for p in found))
    if not unique:
        raise ConfigError(f"no test files (*.lua) in {' '.join(paths)}")
    return unique


def parse_shard(text):
    """'K/N' -> (K, N) with 1 <= K <= N."""
    try:
        k, n = (int(part) for part in text.split("/"))
    except ValueError:
        raise ConfigError(f"--shard {text!r}: expected K/N, such as 2/4") from None
    if not 1 <= k <= n:
        raise ConfigError(f"--shard {text!r}: K must be between 1 and N")
    return k, n


@dataclass(frozen=True)
class RunItem:
    """One run of a test file; in a matrix, one per profile the matrix name stands for."""

    path: str
    aliases: tuple = ()  # ((NAME, PROFILE),): provium.create(NAME) boots PROFILE

    @property
    def name(self) -> str:
        """How the run is named in every report: file.lua, or file.lua[PROFILE] in a matrix."""
        return display_name(self.path) + "".join(f"[{profile}]" for _, profile in self.aliases)


def parse_matrix(text):
    """'NAME=P1,P2' -> (NAME, [P1, P2])."""
    name, _, profiles = text.partition("=")
    values = [p for p in profiles.split(",") if p]
    if not name or not values:
        raise ConfigError(f"--matrix {text!r}: expected NAME=PROFILE,PROFILE,... such as kernel=stock,lts")
    return name, values


def items(files, configs, matrix=None):
    """The runs of `files`: one each, or one per profile of the matrix (--matrix, else the file's
    suite's [matrix]); every profile named must exist."""
    out = []
    for path in files:
        config = configs[path]
        name, profiles = matrix or next(iter(config.matrix.items()), (None, None))
        if name is None:
            out.append(RunItem(path))
            continue
        for profile in profiles:
            if profile not in config.profile_names():
                where = "--matrix" if matrix else f"{config.path}: [matrix]"
                raise ConfigError(f"{where}: unknown profile {profile!r} (known: {', '.join(config.profile_names())})")
            out.append(RunItem(path, ((name, profile),)))
    return out


def shard(runs, k, n):
    """The runs of shard K of N: a stable partition by each run's name, not by the list it came in."""
    return [run for run in runs if int(hashlib.sha256(run.name.encode()).hexdigest(), 16) % n == k - 1]


class _InOrder:
    """Holds each file's ordered events until every file before it has finished."""

    def __init__(self, files, reporter):
        self._files = files
        self._reporter = reporter
        self._events = {f: [] for f in files}
        self._done = set()
        self._next = 0
        self._lock = threading.Lock()

    def add(self, file, method, *args):
        with self._lock:
            self._events[file].append((method, args))
            self._flush()

    def finish(self, file):
        with self._lock:
            self._done.add(file)
            self._flush()

    def _flush(self):
        while self._next < len(self._files):
            file = self._files[self._next]
            for method, args in self._events[file]:
                getattr(self._reporter, method)(*args)
            self._events[file] = []
            if file not in self._done:
                return
            self._next += 1


def suites(files, default):
    """{test file: its suite's Config}: the nearest provium.toml above each file, else `default`."""
    configs = {default.root: default}
    out = {}
    for path in files:
        root = config_mod.suite_root_of(path, default.root)
        if root not in configs:
            configs[root] = config_mod.load(root)
        out[path] = configs[root]
    return out


def _cells(runs, configs, cache, options_for, scratch):
    """{(suite root, aliases): (FileOptions, Fixtures)}: fixtures are per suite and matrix cell."""
    cells = {}
    for item in runs:
        config = configs[item.path]
        if (config.root, item.aliases) not in cells:
            options = replace(options_for(config), scratch=scratch, aliases=item.aliases)
            cells[config.root, item.aliases] = (options, Fixtures(config, cache, build_fixture, options))
    return cells


class _FileRuns:
    """The files of one run, each run on a pool thread: results into the Summary, events to the reporter."""

    def __init__(self, runs, configs, cache, reporter, cells, fail_fast, interrupted):
        self.configs, self.cache, self.reporter, self.cells = configs, cache, reporter, cells
        self.fail_fast, self.interrupted = fail_fast, interrupted
        self.summary = Summary(files=[item.name for item in runs])
        self.ordered = _InOrder(self.summary.files, reporter)
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def stopped(self) -> bool:
        return self._stop.is_set() or self.interrupted()

    def run_file(self, item: RunItem) -> None:
        name, path = item.name, item.path
        if self.stopped():
            self.ordered.finish(name)
            return
        self.ordered.add(name, "file_started", name)
        options, fixtures = self.cells[self.configs[path].root, item.aliases]
        try:
            LuaFile(path, name, self.configs[path], self.cache, self.on_test, self.interrupted, fixtures=fixtures,
                    options=replace(options, runs_now=lambda test: not self.stopped()),
                    on_test_start=lambda test, where: self.on_test_start(name, test)).run()
        finally:
            self.ordered.add(name, "file_finished", name)
            self.ordered.finish(name)

    def on_test_start(self, file: str, test: str) -> None:
        self.reporter.live_test_started(file, test)
        self.ordered.add(file, "test_started", file, test)

    def on_test(self, result: TestResult) -> None:
        with self._lock:
            self.summary.results.append(result)
        self.reporter.live_test_finished(result)
        self.ordered.add(result.file, "test_finished", result)
        if self.fail_fast and result.outcome.failed:
            self._stop.set()


def run(runs, configs, cache, reporter, options_for=lambda config: FileOptions.for_run(config.run), jobs=1,
        fail_fast=False, interrupted=lambda: False) -> Summary:
    """Run the RunItems on `jobs` threads; returns the Summary. Results are in the order given.

    configs: {file: Config} (see suites()); options_for(config) gives a suite's FileOptions.
    Fixtures are per suite and matrix cell: a fixture is built for each kernel it runs on.
    """
    started = time.monotonic()
    scratch = tempdirs.make("run")
    cells = _cells(runs, configs, cache, options_for, scratch)
    files = _FileRuns(runs, configs, cache, reporter, cells, fail_fast, interrupted)
    try:
        with ThreadPoolExecutor(max_workers=max(1, jobs), thread_name_prefix="provium-file") as pool:
            pending = {pool.submit(files.run_file, item) for item in runs}
            while pending:
                done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
                for future in done:
                    future.result()
    finally:
        for _, fixtures in cells.values():
            fixtures.close()
        shutil.rmtree(scratch, ignore_errors=True)
    summary = files.summary
    order = {name: i for i, name in enumerate(summary.files)}
    summary.results.sort(key=lambda r: order[r.file])  # stable: tests keep their order within a file
    summary.duration = time.monotonic() - started
    return summary
