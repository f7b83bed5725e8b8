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
import tempfile
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from pathlib import Path

from . import config as config_mod
from .errors import ConfigError
from .fixtures import Fixtures
from .lua_runtime import FileOptions, LuaFile, build_fixture, display_name

@dataclass
class TestResult:
    file: str
    name: str
    outcome: str
    duration: float
    message: str = ""
    where: str = ""
    details: dict = field(default_factory=dict)
    traceback: str = ""
    output: str = ""
    consoles: dict = field(default_factory=dict)


@dataclass
class Summary:
    results: list = field(default_factory=list)
    duration: float = 0.0
    files: list = field(default_factory=list)

    def count(self, *outcomes):
        return sum(r.outcome in outcomes for r in self.results)

    @property
    def passed(self):
        return self.count("passed")

    @property
    def failed(self):
        return self.count("failed", "error")

    @property
    def skipped(self):
        return self.count("skipped")


_NOT_TESTS = {"fixtures", "lib"}  # fixture scripts and helper modules live here, not tests


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
                                if not _NOT_TESTS & set(p.relative_to(match).parts[:-1]))
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


def shard(files, k, n):
    """The files of shard K of N: a stable partition by each file's name, not by the list it came in."""
    return [f for f in files if int(hashlib.sha256(display_name(f).encode()).hexdigest(), 16) % n == k - 1]


_DETAIL_KEYS = ("expected", "actual", "haystack", "needle")


def _result(file, data):
    return TestResult(
        file=file, name=data["name"], outcome=data.get("outcome", "error"),
        duration=data.get("duration", 0.0), message=data.get("message") or "",
        where=data.get("where") or "", traceback=data.get("traceback") or "",
        output=data.get("output") or "",
        details={k: data[k] for k in _DETAIL_KEYS if data.get(k) is not None},
        consoles={str(k): str(v) for k, v in dict(data.get("consoles") or {}).items()},
    )


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


def run(files, configs, cache, reporter, options_for=lambda config: FileOptions(), jobs=1, fail_fast=False,
        interrupted=lambda: False):
    """Run the files on `jobs` threads; returns the Summary. Results are in file order.

    configs: {file: Config} (see suites()); options_for(config) gives a suite's FileOptions.
    """
    summary = Summary(files=[display_name(f) for f in files])
    started = time.monotonic()
    scratch = Path(tempfile.mkdtemp(prefix="provium-run-"))
    per_suite = {}
    for config in configs.values():
        if config.root not in per_suite:
            options = replace(options_for(config), scratch=scratch)
            per_suite[config.root] = (options, Fixtures(config, cache, build_fixture, options))
    names = {f: display_name(f) for f in files}
    ordered = _InOrder([names[f] for f in files], reporter)
    lock = threading.Lock()
    stop = threading.Event()

    def stopped():
        return stop.is_set() or interrupted()

    def run_file(path):
        name = names[path]
        if stopped():
            ordered.finish(name)
            return
        ordered.add(name, "file_started", name)

        def on_test_start(test):
            reporter.live_test_started(name, test)
            ordered.add(name, "test_started", name, test)

        def on_test(data):
            result = _result(name, data)
            with lock:
                summary.results.append(result)
            reporter.live_test_finished(result)
            ordered.add(name, "test_finished", result)
            if fail_fast and result.outcome in ("failed", "error"):
                stop.set()

        options, fixtures = per_suite[configs[path].root]
        try:
            LuaFile(path, name, configs[path], cache, on_test, interrupted, fixtures=fixtures,
                    options=replace(options, should_stop=stopped), on_test_start=on_test_start).run()
        finally:
            ordered.add(name, "file_finished", name)
            ordered.finish(name)

    try:
        with ThreadPoolExecutor(max_workers=max(1, jobs), thread_name_prefix="provium-file") as pool:
            pending = {pool.submit(run_file, f) for f in files}
            while pending:
                done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
                for future in done:
                    future.result()
    finally:
        for _, fixtures in per_suite.values():
            fixtures.close()
        shutil.rmtree(scratch, ignore_errors=True)
    order = {name: i for i, name in enumerate(summary.files)}
    summary.results.sort(key=lambda r: order[r.file])  # stable: tests keep their order within a file
    summary.duration = time.monotonic() - started
    return summary
