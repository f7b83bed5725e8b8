"""What the kernel benchmarks share: a temporary suite of profiles, each prepared, with a fixture
"k" (a booted guest) built for each, and the time to a VM's first exec."""

import argparse
import contextlib
import shutil
import tempfile
import time
from pathlib import Path

from provium import config
from provium.cache import Cache
from provium.fixtures import Fixtures
from provium.lua_runtime import FileOptions, build_fixture
from provium.profile_build import Preparer
from provium.vm import Vm

FIXTURE = b'local vm = provium.create("k")\nvm:boot()\nvm:write_file("/tmp/prepared", "yes")\nreturn vm\n'


def rounds(argv, description):
    """The number of rounds the command line asks for: --runs N (7), or --quick (2)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="two rounds: check that the benchmark works")
    args = parser.parse_args(argv)
    return 2 if args.quick else args.runs


def first_exec(start):
    """Seconds from `start` until a VM it returns answers its first exec."""
    started = time.monotonic()
    vm = start()
    assert vm.exec("true").ok
    elapsed = time.monotonic() - started
    vm.shutdown()
    return elapsed


def cold_boot(profile, cache):
    """A VM of the profile, booted."""
    vm = Vm(profile, cache)
    vm.boot()
    return vm


@contextlib.contextmanager
def kernel_suite(toml, names):
    """(cache, {name: Prepared}, {name: Fixtures whose "k" is built on that profile}) for the profiles
    `names` of provium.toml text `toml`; the kernels are fetched or built first if need be."""
    suite = Path(tempfile.mkdtemp(prefix="provium-bench-kernels-"))
    fixtures = {}
    try:
        (suite / "provium.toml").write_text(toml)
        (suite / "fixtures").mkdir()
        (suite / "fixtures" / "k.lua").write_bytes(FIXTURE)
        cfg, cache = config.load(suite), Cache()
        preparer = Preparer(cache, lambda line: print(f"  {line}", flush=True))
        prepared = {name: preparer.prepare(cfg.profile(name)) for name in names}
        for name in names:
            fixtures[name] = Fixtures(cfg, cache, build_fixture,
                                      FileOptions(scratch=suite, preparer=preparer, aliases=(("k", name),)))
            fixtures[name].entry("k")
        yield cache, prepared, fixtures
    finally:
        for f in fixtures.values():
            f.close()
        shutil.rmtree(suite, ignore_errors=True)
