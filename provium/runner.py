"""Finding test files and running them, one Lua runtime per file.

The runner collects results and hands them to a reporter as events
(file_started, test_finished, file_finished); it prints nothing itself.
"""

import glob
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError
from .fixtures import Fixtures
from .lua_runtime import LuaFile, build_fixture, display_name

OUTCOMES = ("passed", "failed", "error", "skipped")


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


def discover(paths):
    """Test files named by `paths` (files, directories searched for *.lua, globs), in order."""
    found = []
    for arg in paths:
        matches = sorted(glob.glob(arg, recursive=True)) if glob.has_magic(arg) else [arg]
        if not matches or not all(os.path.exists(m) for m in matches):
            raise ConfigError(f"no such file or directory: {arg}")
        for match in matches:
            if os.path.isdir(match):
                found += sorted(str(p) for p in Path(match).rglob("*.lua"))
            else:
                found.append(match)
    unique = list(dict.fromkeys(os.path.normpath(p) for p in found))
    if not unique:
        raise ConfigError(f"no test files (*.lua) in {' '.join(paths)}")
    return unique


_DETAIL_KEYS = ("expected", "actual", "haystack", "needle")


def run(files, config, cache, reporter, interrupted=lambda: False):
    """Run every file in order; returns the Summary."""
    summary = Summary()
    started = time.monotonic()
    fixtures = Fixtures(config, cache, build_fixture)
    for path in files:
        if interrupted():
            break
        name = display_name(path)
        reporter.file_started(name)

        def on_test(data, name=name):
            result = TestResult(
                file=name, name=data["name"], outcome=data.get("outcome", "error"),
                duration=data.get("duration", 0.0), message=data.get("message") or "",
                where=data.get("where") or "", traceback=data.get("traceback") or "",
                output=data.get("output") or "",
                details={k: data[k] for k in _DETAIL_KEYS if data.get(k) is not None},
                consoles={str(k): str(v) for k, v in dict(data.get("consoles") or {}).items()},
            )
            summary.results.append(result)
            reporter.test_finished(result)

        LuaFile(path, name, config, cache, on_test, interrupted, fixtures=fixtures).run()
        reporter.file_finished(name)
    summary.duration = time.monotonic() - started
    return summary
