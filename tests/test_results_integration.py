"""What `provium run` reports: outcomes, file:line, both values, the closing line, exit status."""

import re

from conftest import REPO

RESULTS = """\
test("adds numbers", function()
  assert_eq(4, 2 + 2)
end)

test("runs a command in a real guest", function()
  local vm = provium.create("minimal")
  vm:boot{memory = "256M"}
  local r = vm:exec("echo hi")
  assert_eq("hi", r.stdout:trim())
  assert(r.stdout.starts_with("h") and r.stdout:contains("i"))
end)

test("compares numbers", function()
  assert_eq(5, 2 + 2)
end)

test("finds text", function()
  assert_contains("hello world", "planet")
end)

test("future work", function()
  todo("waiting on feature X")
  error("not reached")
end)
"""


def test_two_pass_two_fail_one_todo(suite):
    suite.write("results.lua", RESULTS)
    result = suite.run("run", "results.lua")
    out = result.stdout
    assert result.returncode == 1, out + result.stderr
    assert re.search(r"ok +adds numbers", out)
    assert re.search(r"ok +runs a command in a real guest", out)
    assert re.search(r"FAIL +compares numbers", out)
    assert "results.lua:14: assert_eq failed" in out
    assert re.search(r"expected: +5\n", out) and re.search(r"actual: +4\n", out)
    assert "results.lua:18: assert_contains failed" in out
    assert '"planet"' in out and '"hello world"' in out
    assert re.search(r"SKIP +future work: waiting on feature X", out)
    assert out.rstrip("\n").splitlines()[-1] == "2 passed, 2 failed, 1 skipped"
    assert suite.qemu_pids() == []


def test_a_lua_syntax_error_names_file_and_line_and_other_files_still_run(suite):
    suite.write("a_broken.lua", "test('x', function()\n  local = 1\nend)\n")
    suite.write("b_fine.lua", "test('fine', function() assert(true) end)\n")
    result = suite.run("run", ".")
    assert result.returncode == 1
    assert re.search(r"a_broken.lua:2: .*near '='", result.stdout)
    assert re.search(r"ok +fine", result.stdout)
    assert result.stdout.splitlines()[-1] == "1 passed, 1 failed, 0 skipped"


def test_api_errors_point_at_the_callers_line(suite):
    suite.write("api.lua", """\
        test("wrong argument type", function()
          local vm = provium.create("minimal")
          vm:exec(42)
        end)
        test("unknown profile", function()
          provium.create("nope")
        end)
        test("not booted", function()
          local vm = provium.create("minimal")
          vm:exec("true")
        end)
        """)
    result = suite.run("run", "api.lua")
    out = result.stdout
    assert "api.lua:3: vm:exec: argument 1 (cmd) must be a string, got number" in out
    assert "api.lua:6: unknown profile 'nope' (known: minimal)" in out
    assert re.search(r"api.lua:10: VM 'minimal' is not running \(created\)", out)
    assert out.splitlines()[-1] == "0 passed, 3 failed, 0 skipped"


def test_examples_pass_with_no_configuration(suite):
    result = suite.run("run", str(REPO / "examples"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"^\d+ passed, 0 failed, 0 skipped$", result.stdout.splitlines()[-1])


def test_usage_and_configuration_errors_exit_2(suite):
    missing = suite.run("run", "nothing-here.lua")
    assert missing.returncode == 2
    assert missing.stderr.strip() == "provium: no such file or directory: nothing-here.lua"
    suite.write("t.lua", "test('x', function() end)\n")
    suite.write("provium.toml", "[profiles.x]\nmemory = \n")
    broken = suite.run("run", "t.lua")
    assert broken.returncode == 2
    assert len(broken.stderr.strip().splitlines()) == 1
    assert "provium.toml: syntax error" in broken.stderr and "line 2" in broken.stderr


def test_version():
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-m", "provium", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and re.fullmatch(r"provium \d+\.\d+\.\d+\n", out.stdout)
