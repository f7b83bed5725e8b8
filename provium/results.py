"""What a run produces: each test's typed outcome and result, and the run's summary.

The test lifecycle (test_run.py) makes a TestResult; the runner collects them
into a Summary; reporters (report.py) only read them.
"""

from dataclasses import dataclass, field
from enum import StrEnum


class Outcome(StrEnum):
    """A test's outcome. Error is any failure other than an assertion; both count as failed."""

    PASSED = "passed"
    FAILED = "failed"
    ERROR = "error"
    SKIPPED = "skipped"

    @property
    def failed(self) -> bool:
        return self in (Outcome.FAILED, Outcome.ERROR)


DETAIL_KEYS = ("expected", "actual", "haystack", "needle")  # the values an assertion shows


@dataclass
class TestResult:
    """One test's result. `file` is the run's name of the file (file.lua, or file.lua[PROFILE])."""

    __test__ = False  # not a pytest test class

    file: str
    name: str
    outcome: Outcome
    duration: float = 0.0
    message: str = ""
    where: str = ""  # file:line of the failure (of the test, when nothing more precise is known)
    details: dict[str, str] = field(default_factory=dict)
    traceback: str = ""
    output: str = ""  # what the test printed
    consoles: dict[str, str] = field(default_factory=dict)  # VM name -> console tail, for a failure


@dataclass
class Summary:
    results: list[TestResult] = field(default_factory=list)
    duration: float = 0.0
    files: list[str] = field(default_factory=list)

    def count(self, *outcomes: Outcome) -> int:
        return sum(r.outcome in outcomes for r in self.results)

    @property
    def passed(self) -> int:
        return self.count(Outcome.PASSED)

    @property
    def failed(self) -> int:
        return self.count(Outcome.FAILED, Outcome.ERROR)

    @property
    def skipped(self) -> int:
        return self.count(Outcome.SKIPPED)
