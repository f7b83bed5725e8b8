"""One test's life on the host: begin, (the Lua body runs), end, outcome.

begin() opens the test's deadline and charges the file's VMs to it; the
prelude calls the test's function; end() turns what Lua reported into a
TestResult: the test's own outcome, then what the kernel says on top (findings
its ops raised that its code caught, kmemleak's leaks, reports still on a
console), then, for a failure, the console tails and artifacts, and last the
VMs the test made are stopped (killed when it timed out).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

from . import artifacts, deadline, kernels, kmemleak
from .bridge import NotHere, text
from .errors import AgentError
from .profile_build import Preparer
from .results import DETAIL_KEYS, Outcome, TestResult
from .vm import GuestCrash, Vm

_SECTION = re.compile(r"^ *--- .+ ---$", re.M)  # a console tail or a kernel report already in a message


@dataclass(frozen=True)
class TestSpec:
    """What test(name, opts, fn) asked for."""

    name: str
    where: str  # file:line of the test() call
    timeout: float  # seconds, already scaled for TCG
    allow_warnings: bool = False
    kconfig: tuple[str, ...] = ()
    leak_check: bool | None = None  # None: the profile's key decides


class TestRun:
    """A running test: its deadline, the VMs it made, what it is charged with."""

    def __init__(self, spec: TestSpec, file_name: str, preparer: Preparer, artifacts_dir: Path | None):
        self.spec = spec
        self.file_name = file_name
        self.preparer = preparer
        self.artifacts_dir = artifacts_dir
        self.started = time.monotonic()
        self.vms: list[int] = []  # handles of the VMs the test made
        self.expired = False  # it ran out of time (known at its end)
        self._suspended = deadline.suspended_seconds()
        self._scope = deadline.until(self.started + spec.timeout)

    # ------------------------------------------------------------ begin

    def begin(self, file_vms: list[Vm]) -> str | None:
        """Open the deadline and take charge of the file's VMs; why the test cannot run here, or None."""
        self._scope.__enter__()
        for vm in file_vms:  # the file's own VMs are already running some kernel
            reason = self.lacks(vm)
            if reason:
                return reason
        for vm in file_vms:
            vm.reported.clear()  # what a test's artifacts keep: its own findings
            self.arm_leak_check(vm)
        return None

    def adopt(self, handle: int, vm: Vm) -> None:
        """A VM the test made: it stops with the test; NotHere when its kernel lacks what the test needs."""
        self.vms.append(handle)
        reason = self.lacks(vm)
        if reason:
            raise NotHere(reason)
        self.arm_leak_check(vm)

    def lacks(self, vm: Vm) -> str | None:
        """Why the test cannot run on the VM's kernel (options it needs are off), or None."""
        if not self.spec.kconfig:
            return None
        tree = self.preparer.prepare(vm.profile).kernel
        missing = kernels.missing_options(tree, list(self.spec.kconfig))
        return missing and f"needs kernel options that {tree.release} lacks: {', '.join(missing)}"

    def arm_leak_check(self, vm: Vm) -> None:
        """Charge the VM's leaks from now on to the test, if it checks leaks and the VM runs a kernel
        with kmemleak (the test option wins over the profile's key)."""
        wanted = self.spec.leak_check
        if not (vm.profile.leak_check if wanted is None else wanted) or vm.state != "running":
            return
        if not kernels.missing_options(self.preparer.prepare(vm.profile).kernel, ["DEBUG_KMEMLEAK"]):
            kmemleak.arm(vm)

    # ------------------------------------------------------------ deadline

    def deadline(self) -> float:
        """The test's deadline, moved by the time spent preparing profiles since it began."""
        return self.started + self.spec.timeout + deadline.suspended_seconds() - self._suspended

    def timed_out(self) -> bool:
        return self.deadline() <= time.monotonic() + 0.001

    # ------------------------------------------------------------ end

    def end(self, reported: dict, vms: dict[int, Vm], output: str) -> TestResult:
        """The test's result from what Lua reported (`vms`: the file's, by handle). Its VMs still run: release
        stops them."""
        self.expired = self.deadline() <= time.monotonic()
        self._scope.__exit__(None, None, None)
        result = self.charge_findings(self.result_of(reported, output), vms.values(), check_leaks=not self.expired)
        result.where = result.where or ("" if result.outcome == Outcome.PASSED else self.spec.where)
        if result.outcome.failed:
            self.explain(result, vms)
        result.duration = time.monotonic() - self.started
        return result

    def release(self, vms: dict[int, Vm], stuck: list[Vm]) -> None:
        """Stop the VMs the test made; after a timeout the guests are in an unknown state: kill them, and
        those the test was stuck in (`stuck`)."""
        mine = [vms[h] for h in self.vms if h in vms]
        if self.expired:
            for vm in mine + stuck:
                vm.kill()
        for vm in mine:
            vm.shutdown()

    def charge_findings(self, result: TestResult, vms, check_leaks: bool) -> TestResult:
        """The result with what the kernel says on top of the test's own outcome: a passed or skipped test
        with findings is an error, a failed one carries them after its message."""
        found = findings_at_end(vms, passed=result.outcome == Outcome.PASSED, check_leaks=check_leaks)
        if not found:
            return result
        if result.outcome.failed:
            result.message = f"{result.message}\n{found}"
            return result
        return TestResult(self.file_name, self.spec.name, Outcome.ERROR, message=found, output=result.output)

    def explain(self, result: TestResult, vms: dict[int, Vm]) -> None:
        """A failure's console tails (unless its message already holds a console or a kernel report), and
        its artifacts."""
        if not _SECTION.search(result.message):
            tails = {vms[h].name: vms[h].console_tail() for h in self.vms if h in vms}
            result.consoles = {name: tail for name, tail in tails.items() if tail.strip()}
        if self.artifacts_dir:
            result.duration = time.monotonic() - self.started
            artifacts.keep(self.artifacts_dir / artifacts.slug(self.file_name, self.spec.name), result,
                           vms, self.vms)

    def result_of(self, reported: dict, output: str) -> TestResult:
        """The test's own outcome, as the prelude reported it."""
        data = {text(k): text(v) for k, v in reported.items()}
        return TestResult(
            file=self.file_name, name=self.spec.name, outcome=Outcome(data.get("outcome", "error")),
            message=data.get("message") or "", where=data.get("where") or "",
            details={k: data[k] for k in DETAIL_KEYS if data.get(k) is not None},
            traceback=data.get("traceback") or "", output=output)


def findings_at_end(vms, passed: bool, check_leaks: bool) -> str:
    """What fails a test besides its own failure: in a passed test, the findings its ops raised that its
    code caught (pcall) and its leaks (when it checks them, and there is time); in any test, every kernel
    report on a console not reported yet."""
    vms = list(vms)
    problems = [str(GuestCrash(vm.name, *zip(*vm.reported))) for vm in vms if passed and vm.reported]
    try:
        problems += leaks(vms, passed and check_leaks)
    except AgentError as exc:  # kmemleak could not scan
        problems.append(str(exc))
    for vm in vms:
        try:
            vm.check_console()
        except GuestCrash as exc:
            problems.append(str(exc))
    return "\n".join(problems)


def leaks(vms, check: bool) -> list[str]:
    """Each leaking VM's GuestCrash message for the test's leaks, when `check` (one wait for all its
    armed VMs); every VM is disarmed either way."""
    armed = [vm for vm in vms if vm.leak_since is not None]
    try:
        if not check:
            return []
        with deadline.suspended():
            found = kmemleak.check([vm for vm in armed if vm.state == "running"])
        return [str(vm.crash_for(tuple(found_leaks))) for vm, found_leaks in found.items() if found_leaks]
    finally:
        for vm in armed:
            vm.leak_since = None

