"""Guests for Python code: VMs booted from a suite's profiles or resumed from its fixtures, all stopped at close.

What the pytest plugin's `provium` fixture gives a Python test. The VMs are the Python core's own (vm.py's
Vm: boot, exec, syscall, spawn, read_file, ...); a Harness only makes them as a Lua file's provium.create and
provium.fixture do, and at close reports the kernel findings still on their consoles, then stops them.
"""

from __future__ import annotations

from .cache import Cache
from .config import BUILTIN_PROFILE, Config
from .errors import ProviumError
from .fixtures import Fixtures
from .lua_runtime import FileOptions
from .profile_build import Preparer
from .test_run import findings_at_end
from .vm import Vm


class Harness:
    """VMs of one suite for one test: create(profile) and fixture(name) make them, close() stops them."""

    def __init__(self, config: Config, cache: Cache, options: FileOptions, fixtures: Fixtures):
        self.config = config
        self.cache = cache
        self.options = options
        self.fixtures = fixtures
        self.preparer = options.preparer or Preparer(cache)
        self.vms: list[Vm] = []

    def create(self, profile: str = BUILTIN_PROFILE) -> Vm:
        """A VM of the suite's profile `profile`, not booted yet: vm.boot(memory="1G", cpus=2) starts it."""
        prepared = self.preparer.prepare(self.config.profile(profile))
        vm = Vm(prepared.profile, self.cache, timeouts=self.options.timeouts)
        vm.symbols = prepared.symbols()
        self.vms.append(vm)
        return vm

    def fixture(self, name: str) -> Vm:
        """A running clone of the suite's fixture fixtures/NAME.lua, built first when it is not cached."""
        vm = self.fixtures.clone(name)
        self.vms.append(vm)
        return vm

    def close(self) -> None:
        """Stop every VM; ProviumError when a kernel report (an oops, a KASAN report, a warning the profile
        does not allow) is on a console that no op raised."""
        try:
            problems = findings_at_end([vm for vm in self.vms if vm.state == "running"], passed=False,
                                       check_leaks=False)
        finally:
            for vm in self.vms:
                vm.shutdown()
        if problems:
            raise ProviumError(problems)
