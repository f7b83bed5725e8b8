"""Start-up benchmark: `provium run` of a one-test file on a cached fixture, as a whole process.

Run: python bench/startup.py [--runs N]. A temporary suite holds a fixture
(minimal, 256M) and tests/one.lua, whose one test takes the fixture and runs
`true`; the fixture is built once before measuring. Each round runs, in turn,
the interpreter alone, the import of the command line, `provium run --list`
(discovery, configuration, the Lua file) and the whole run, and one process
that times the run's phases itself. Bytecode is cached (in a temporary
directory), as for an installed package, whatever PYTHONDONTWRITEBYTECODE says.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET = 0.35

FIXTURE = """\
local vm = provium.create("minimal")
vm:boot{memory = "256M"}
return vm
"""

TEST = """\
test("true", function()
  local vm = provium.fixture("base")
  assert(vm:exec("true").ok)
end)
"""

# The phases of one run, in the order the run goes through them, timed in one fresh process.
PHASES = """\
import json, sys, time
started = time.monotonic()
marks = {}
def mark(name):
    global started
    now = time.monotonic()
    marks[name] = now - started
    started = now
from provium import cli, config
from provium.cache import Cache
from provium.fixtures import Fixtures
from provium.lua_runtime import FileOptions, build_fixture
from provium.test_run import stop
mark("imports (provium.cli)")
cfg = config.load()
cache = Cache.for_suite(cfg)
fixtures = Fixtures(cfg, cache, build_fixture, FileOptions.for_run(cfg.run))
mark("configuration")
fixtures.entry("base")
mark("fixture lookup (keys, boot images)")
vm = fixtures.clone("base")
mark("QEMU start + incoming migration")
vm.exec("true")
mark("first command on the clone")
stop(vm, clone=True)
fixtures.close()
mark("stopping the clone")
print(json.dumps(marks))
"""


def timed(suite, env, *args):
    started = time.monotonic()
    result = subprocess.run([sys.executable, *args], cwd=suite, env=env, capture_output=True, text=True)
    elapsed = time.monotonic() - started
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{result.stdout}{result.stderr}")
    return elapsed, result.stdout


def row(name, runs, note=""):
    print(f"{name:<44} {statistics.median(runs):>7.3f} s {min(runs):>6.3f} s {max(runs):>6.3f} s{note}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args(argv)
    suite = Path(tempfile.mkdtemp(prefix="provium-bench-"))
    bytecode = Path(tempfile.mkdtemp(prefix="provium-bench-pyc-"))
    (suite / "fixtures").mkdir()
    (suite / "tests").mkdir()
    (suite / "provium.toml").write_text("")
    (suite / "fixtures" / "base.lua").write_text(FIXTURE + f"-- {suite}\n")
    (suite / "tests" / "one.lua").write_text(TEST)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(bytecode)
    checkout = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [checkout, env.get("PYTHONPATH")]))
    try:
        build, _ = timed(suite, env, "-m", "provium", "fixtures", "build", "base")
        timed(suite, env, "-m", "provium", "run", "tests/one.lua")  # warm the bytecode and the page cache
        commands = {"interpreter (python -c pass)": ("-c", "pass"),
                    "+ imports (python -c 'import provium.cli')": ("-c", "import provium.cli"),
                    "+ discovery, config, Lua (run --list)": ("-m", "provium", "run", "--list", "tests/one.lua"),
                    "provium run tests/one.lua": ("-m", "provium", "run", "tests/one.lua")}
        samples = {name: [] for name in commands}
        phases = []
        for _ in range(args.runs):
            for name, command in commands.items():
                samples[name].append(timed(suite, env, *command)[0])
            phases.append(json.loads(timed(suite, env, "-c", PHASES)[1]))
    finally:
        shutil.rmtree(suite, ignore_errors=True)
        shutil.rmtree(bytecode, ignore_errors=True)
    whole = statistics.median(samples["provium run tests/one.lua"])
    print(f"start-up, whole process, {args.runs} runs each, interleaved, {os.cpu_count()} cores, TCG "
          f"(fixture built once in {build:.2f} s)")
    print(f"{'measure':<44} {'median':>9} {'min':>8} {'max':>8}")
    for name, runs in samples.items():
        row(name, runs, f"  (target <= {TARGET:.2f} s)" if name.startswith("provium run") else "")
    print("phases of one run, timed in one process:")
    for name in phases[0]:
        row(f"  {name}", [p[name] for p in phases])
    print(f"whole run vs target {TARGET:.2f} s: {TARGET / whole:.2f}x")


if __name__ == "__main__":
    main()
