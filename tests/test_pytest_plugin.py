"""The pytest plugin: a suite's Lua tests as pytest items in real guests, the `provium` fixture for Python
tests, and pytest-xdist spreading the files over workers. Each test runs pytest as a user would, in a process
of its own, and reads what it did from its --junitxml report."""

import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET

from provium.cache import default_root
from test_fixtures_integration import BASE, entries, unique

MIXED = """\
local vm = provium.create("minimal")
vm:boot{memory = "256M"}
test("passes", function() assert_eq("Linux\\n", vm:exec("uname -s").stdout) end)
test("fails", function()
  print("printed by fails")
  local own = provium.create("minimal")  -- a failed test shows the console tails of the VMs it made
  own:boot{memory = "256M"}
  assert_eq("not the kernel", own:exec("uname -s").stdout)
end)
test("errors", function() error("raised by errors") end)
test("later", function() todo("not written yet") end)
test("passes again", function() assert_eq(0, vm:exec("true").exit_code) end)
"""

PYTHON_TEST = """\
def test_a_guest_from_python(provium):
    vm = provium.create("minimal")
    vm.boot(memory="256M", cpus=2)
    assert vm.exec("nproc").stdout == b"2\\n"
    worker = vm.spawn()
    assert worker.exec("uname -s").stdout == b"Linux\\n"
"""


def pytest_run(suite, *args, timeout=600):
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:randomly", *args], cwd=suite.root,
                          env=suite.env(), capture_output=True, text=True, timeout=timeout)


def junit(path):
    """{test node name (classname::name): (outcome, message, text)} and the suite's counts."""
    root = ET.parse(path).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    cases = {}
    for case in suite.iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        assert name not in cases, f"{name} reported twice"
        outcome = next((child for child in case if child.tag in ("failure", "error", "skipped")), None)
        cases[name] = ((outcome.tag if outcome is not None else "passed"),
                       outcome.get("message", "") if outcome is not None else "",
                       (outcome.text or "") if outcome is not None else "",
                       "".join(out.text or "" for out in case.iter("system-out")))
    counts = {key: int(suite.get(key)) for key in ("tests", "failures", "errors", "skipped")}
    return cases, counts


def test_pytest_runs_a_lua_suite_with_pytest_outcomes(suite):
    suite.write("provium.toml", "")
    suite.write("tests/mixed.lua", MIXED)
    suite.write("tests/lib/helper.lua", "return {}\n")  # a module, not a test file
    suite.write("tests/test_guest.py", PYTHON_TEST)
    result = pytest_run(suite, "tests", "--junitxml=report.xml", "-v")
    assert result.returncode == 1, result.stdout + result.stderr
    cases, counts = junit(suite.root / "report.xml")
    assert counts == {"tests": 6, "failures": 2, "errors": 0, "skipped": 1}
    assert {name: case[0] for name, case in cases.items()} == {
        "tests.mixed.lua::passes": "passed", "tests.mixed.lua::fails": "failure",
        "tests.mixed.lua::errors": "failure", "tests.mixed.lua::later": "skipped",
        "tests.mixed.lua::passes again": "passed", "tests.test_guest::test_a_guest_from_python": "passed"}
    assert cases["tests.mixed.lua::later"][1] == "not written yet"
    failed = cases["tests.mixed.lua::fails"][2]
    assert 'tests/mixed.lua:8: assert_eq failed\n  expected: "not the kernel"\n  actual:   "Linux\\\n"' in failed
    assert "tests/mixed.lua:10: raised by errors" in cases["tests.mixed.lua::errors"][2]
    out = result.stdout
    assert "tests/mixed.lua::passes PASSED" in out and "tests/mixed.lua::later SKIPPED (not written yet)" in out
    assert "Captured stdout call" in out and "printed by fails" in out
    assert re.search(r"Captured console of minimal call -+\n\[ *\d+\.\d+\] ", out), out  # the console tail
    assert "2 failed, 3 passed, 1 skipped" in out.splitlines()[-1]
    assert suite.qemu_pids() == []


def test_k_x_and_lf_select_and_stop_as_in_pytest(suite):
    suite.write("provium.toml", "")
    suite.write("tests/mixed.lua", MIXED)
    selected = pytest_run(suite, "tests", "-k", "passes and not again", "--junitxml=k.xml")
    assert selected.returncode == 0, selected.stdout
    assert list(junit(suite.root / "k.xml")[0]) == ["tests.mixed.lua::passes"]
    stopped = pytest_run(suite, "tests", "-x", "--junitxml=x.xml")
    assert stopped.returncode == 1
    assert {name: case[0] for name, case in junit(suite.root / "x.xml")[0].items()} == {
        "tests.mixed.lua::passes": "passed", "tests.mixed.lua::fails": "failure"}
    assert "stopping after 1 failures" in stopped.stdout
    last_failed = pytest_run(suite, "tests", "--lf", "--junitxml=lf.xml")
    assert last_failed.returncode == 1 and "run-last-failure: rerun previous 1 failure" in last_failed.stdout
    assert list(junit(suite.root / "lf.xml")[0]) == ["tests.mixed.lua::fails"]  # -x stopped before `errors`
    assert suite.qemu_pids() == []


def test_a_broken_file_is_a_collection_error_naming_its_line(suite):
    suite.write("provium.toml", "")
    suite.write("tests/broken.lua", 'test("x", function() end\n')
    result = pytest_run(suite, "tests")
    assert result.returncode == 2
    assert "ERROR collecting tests/broken.lua" in result.stdout
    assert "tests/broken.lua:2: ')' expected (to close '(' at line 1)" in result.stdout


def test_an_error_after_the_last_test_fails_its_teardown(suite):
    suite.write("provium.toml", "")
    suite.write("tests/late.lua", """\
        local vm = provium.create("minimal")
        vm:boot{memory = "256M"}
        test("first", function() end)
        if vm:exec("echo booted").stdout.contains("booted") then error("raised after the tests") end  -- not when listing
        """)
    result = pytest_run(suite, "tests", "--junitxml=late.xml")
    assert result.returncode == 1, result.stdout
    assert "ERROR at teardown of first" in result.stdout and "tests/late.lua:4: raised after the tests" in result.stdout


def test_xdist_runs_each_file_on_one_worker_and_builds_the_fixture_once(suite):
    """Four files at -n 2: every test reported once, the fixture built once for both workers (every
    clone has the build's boot id) and cached as one entry."""
    suite.write("provium.toml", "")
    suite.write("fixtures/shared.lua", unique(BASE))
    for index in range(4):
        suite.write(f"tests/f{index}.lua", f"""\
            local vm = provium.fixture("shared")
            vm:write_file("/tmp/mark", "file {index}")
            test("boot id {index}", function() print(vm:read_file("/tmp/boot_id")) end)
            test("same vm {index}", function() assert_eq("by the fixture", vm:read_file("/tmp/prepared")) end)
            test("marked {index}", function() assert_eq("file {index}", vm:read_file("/tmp/mark")) end)
            """)
    before = entries("shared")
    try:
        result = pytest_run(suite, "-n", "2", "-v", "tests", "--junitxml=xdist.xml", "-o", "junit_logging=system-out")
        built = entries("shared") - before
    finally:
        for key, _ in entries("shared") - before:  # ~100 MB, unique to this test
            shutil.rmtree(default_root() / "fixtures" / "shared" / key)
    assert result.returncode == 0, result.stdout + result.stderr
    cases, counts = junit(suite.root / "xdist.xml")
    assert counts["tests"] == 12 and sorted(cases) == sorted(
        f"tests.f{i}.lua::{name} {i}" for i in range(4) for name in ("boot id", "same vm", "marked"))
    boot_ids = [re.findall(r"^[0-9a-f-]{36}$", case[3], re.M) for name, case in cases.items() if "boot id" in name]
    assert len(boot_ids) == 4 and all(ids == boot_ids[0] and len(ids) == 1 for ids in boot_ids), cases
    assert len(built) == 1
    workers = {}  # test file -> the workers that ran its tests
    for worker, file in re.findall(r"^\[(gw\d)\] .* (tests/f\d\.lua)::", result.stdout, re.M):
        workers.setdefault(file, set()).add(worker)
    assert len(workers) == 4 and all(len(ran) == 1 for ran in workers.values()), result.stdout
    assert set.union(*workers.values()) == {"gw0", "gw1"}, result.stdout
    assert suite.qemu_pids() == []
