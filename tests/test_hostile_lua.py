"""Test code that turns on the harness: exhausted memory, error values that never render, cyclic
tables, a wrong test() option.

None of these boots a VM: each file is pure Lua, run through the command line.
"""

import json
import signal
import time


def run_json(suite, *files):
    """Run the files with --json; (the process result, {test name: its test_end event})."""
    result = suite.run("run", *files, "--json", "r.json", timeout=120)
    events = [json.loads(line) for line in (suite.root / "r.json").read_text().splitlines()]
    return result, {e["test"]: e for e in events if e["event"] == "test_end"}


def test_the_memory_limit_fails_one_test_and_the_file_goes_on(suite):
    suite.write("mem.lua", """\
        test("fills a table", function()
          local t = {} for i = 1, 1e8 do t[i] = i end
        end)
        test("the memory came back", function()
          assert(collectgarbage("count") < 64 * 1024, "still in use: " .. collectgarbage("count") .. " KiB")
          assert_eq(400 * 2^20, #string.rep("x", 400 * 2^20))
        end)
        """)
    suite.write("top.lua", """\
        local s = "x"
        while true do s = s .. s end
        """)
    result, ends = run_json(suite, "mem.lua", "top.lua")
    assert result.returncode == 1
    assert "internal error" not in result.stdout
    limit = "the Lua memory limit (1 GiB per test file) was reached: not enough memory"
    filled = ends["fills a table"]
    assert (filled["outcome"], filled["message"], filled["where"]) == ("error", limit, "mem.lua:1")
    assert ends["the memory came back"]["outcome"] == "passed"
    top = ends["<file>"]
    assert (top["file"], top["outcome"], top["message"]) == ("top.lua", "error", limit)
    assert result.stdout.splitlines()[-1] == "1 passed, 2 failed, 0 skipped"


HOSTILE_VALUES = """\
local function loops() while true do end end
test("loops in __tostring", {timeout = 60}, function()
  error(setmetatable({}, {__tostring = loops}))
end)
test("loops in __tostring, catching the budget with pcall", {timeout = 60}, function()
  error(setmetatable({}, {__tostring = function() while true do pcall(loops) end end}))
end)
test("loops in a coroutine of __tostring", {timeout = 60}, function()
  error(setmetatable({}, {__tostring = function() coroutine.wrap(loops)() end}))
end)
test("loops in a coroutine the test made before", {timeout = 60}, function()
  local co = coroutine.wrap(loops)
  error(setmetatable({}, {__tostring = function() co() end}))
end)
test("raises in __tostring", function()
  error(setmetatable({}, {__tostring = function() error("no text", 0) end}))
end)
test("returns a table from __tostring", function()
  error(setmetatable({}, {__tostring = function() return {} end}))
end)
test("assert with such a message", {timeout = 60}, function()
  assert(false, setmetatable({}, {__tostring = loops}))
end)
test("assert_eq with such values", {timeout = 60}, function()
  assert_eq({{{setmetatable({}, {__tostring = loops})}}}, setmetatable({a = 1}, {__pairs = loops}))
end)
test("a coroutine made in a __tostring serves the test afterwards", function()
  local co
  assert(not pcall(assert, false, setmetatable({}, {__tostring = function()
    co = coroutine.wrap(function() for _ = 1, 5e6 do end return "done" end)
    return "made"
  end})))
  assert_eq("done", co())
end)
test("runs after them", function() end)
"""


def test_reports_bound_a_test_values_metamethods(suite):
    suite.write("values.lua", HOSTILE_VALUES)
    result, ends = run_json(suite, "values.lua")
    unfinished = "<table: error value whose __tostring did not finish>"
    for name, where in [("loops in __tostring", 2), ("loops in __tostring, catching the budget with pcall", 5),
                        ("loops in a coroutine of __tostring", 8),
                        ("loops in a coroutine the test made before", 11)]:
        event = ends[name]
        assert (event["outcome"], event["message"], event["where"]) == ("error", unfinished, f"values.lua:{where}")
    assert ends["raises in __tostring"]["message"] == "<table: error value whose __tostring failed: no text>"
    assert ends["returns a table from __tostring"]["message"] == \
        "<table: error value whose __tostring failed: '__tostring' must return a string>"
    asserted = ends["assert with such a message"]
    assert (asserted["outcome"], asserted["message"], asserted["where"]) == \
        ("failed", "<table: value whose __tostring did not finish>", "values.lua:22")
    compared = ends["assert_eq with such values"]
    assert (compared["outcome"], compared["where"]) == ("failed", "values.lua:25")
    assert compared["details"]["expected"] == "{[1] = {[1] = {[1] = <table: value whose __tostring did not finish>}}}"
    assert compared["details"]["actual"] == '{["a"] = 1}'
    assert all(e["duration"] < 5 for e in ends.values()), {n: e["duration"] for n, e in ends.items()}
    assert ends["a coroutine made in a __tostring serves the test afterwards"]["outcome"] == "passed"
    assert ends["runs after them"]["outcome"] == "passed"
    assert result.stdout.splitlines()[-1] == "2 passed, 8 failed, 0 skipped"


def test_assert_eq_compares_and_shows_cyclic_tables(suite):
    suite.write("cycles.lua", """\
        local function ring(...)
          local first = {value = select(1, ...)}
          local node = first
          for i = 2, select("#", ...) do
            node.next = {value = select(i, ...)}
            node = node.next
          end
          node.next = first
          return first
        end
        test("isomorphic cycles are equal", function()
          local a, b = {}, {}
          a.self, b.self = a, b
          assert_eq(a, b)
          assert_eq(ring(1, 2, 1, 2), ring(1, 2))
        end)
        test("different cycles are not", function()
          assert_eq(ring(1, 2), ring(1, 3))
        end)
        test("runs after them", function() end)
        """)
    result, ends = run_json(suite, "cycles.lua")
    assert ends["isomorphic cycles are equal"]["outcome"] == "passed"
    different = ends["different cycles are not"]
    assert (different["outcome"], different["message"], different["where"]) == \
        ("failed", "assert_eq failed", "cycles.lua:18")
    assert different["details"]["expected"] == '{["next"] = {["next"] = <cycle>, ["value"] = 2}, ["value"] = 1}'
    assert different["details"]["actual"] == '{["next"] = {["next"] = <cycle>, ["value"] = 3}, ["value"] = 1}'
    assert ends["runs after them"]["outcome"] == "passed"
    assert result.stdout.splitlines()[-1] == "2 passed, 1 failed, 0 skipped"


def test_allow_warnings_is_a_known_boolean_option_of_test(suite):
    suite.write("allowed.lua", 'test("allowed", {allow_warnings = true}, function() end)\n')
    suite.write("wrong.lua", 'test("wrong", {allow_warnings = "yes"}, function() end)\n')
    result, ends = run_json(suite, "allowed.lua", "wrong.lua")
    assert ends["allowed"]["outcome"] == "passed"
    wrong = ends["<file>"]
    assert (wrong["file"], wrong["outcome"], wrong["where"]) == ("wrong.lua", "error", "wrong.lua:1")
    assert wrong["message"] == "test: argument 2 (opts.allow_warnings) must be a boolean, got string"
    assert result.stdout.splitlines()[-1] == "1 passed, 1 failed, 0 skipped"


def test_a_pcall_loop_cannot_swallow_its_deadline(suite):
    suite.write("provium.toml", "[run]\ntcg_slowdown = 1\n")
    suite.write("swallow.lua", """\
        test("swallows its deadline", {timeout = 1}, function()
          while true do pcall(function() while true do end end) end
        end)
        test("nested pcalls and a coroutine", {timeout = 1}, function()
          local co = coroutine.wrap(function() while true do pcall(pcall, function() while true do end end) end end)
          while true do pcall(co) end
        end)
        test("runs next", function() assert(true) end)
        """)
    result, ends = run_json(suite, "swallow.lua")
    assert result.returncode == 1
    for name in ("swallows its deadline", "nested pcalls and a coroutine"):
        assert ends[name]["outcome"] == "error"
        assert ends[name]["message"] == f"test '{name}' timed out after 1 s in Lua code"
        assert ends[name]["duration"] < 5
    assert ends["runs next"]["outcome"] == "passed"


def test_sigterm_stops_a_pcall_loop(suite):
    suite.write("spin.lua", """\
        test("spins", {timeout = 600}, function()
          while true do pcall(function() while true do end end) end
        end)
        """)
    process = suite.popen("run", "spin.lua")
    time.sleep(2)
    process.send_signal(signal.SIGTERM)
    out, _ = process.communicate(timeout=20)
    assert process.returncode == 130, out
    assert "interrupted" in out


def test_a_test_cannot_drive_the_task_scheduler_by_hand(suite):
    suite.write("tasks.lua", """\
        test("resumes a task", function()
          local me = coroutine.running()
          local t = provium.go(function() provium.sleep(0.1) local ok, err = coroutine.resume(me, "fake") error(err) end)
          provium.sleep(0.3)
        end)
        test("closes a task", function() coroutine.close(coroutine.running()) end)
        test("yields in its body", function() coroutine.yield() end)
        test("yields in a task", function() provium.all(function() coroutine.yield(1) end) end)
        test("waits for itself", function()
          local t
          t = provium.go(function() provium.sleep(0.1) t:wait() end)
          t:wait()
        end)
        test("waits in a metamethod", function()
          local x = setmetatable({}, {__tostring = function() provium.all(function() end) return "x" end})
          print(tostring(x))
        end)
        test("still runs tasks", function() assert_eq(200, provium.all(function() return table.unpack({}, 1, 200) end)[1].n) end)
        """)
    result, ends = run_json(suite, "tasks.lua")
    messages = {name: (end["outcome"], end["message"]) for name, end in ends.items()}
    assert messages == {
        "resumes a task": ("error", "coroutine.resume: a task's coroutine is resumed by provium only"),
        "closes a task": ("error", "coroutine.close: a task's coroutine is closed by provium only"),
        "yields in its body": ("error", "coroutine.yield outside a coroutine: a task (and a test) can only yield "
                                        "inside coroutine.create"),
        "yields in a task": ("error", "coroutine.yield outside a coroutine: a task (and a test) can only yield "
                                      "inside coroutine.create"),
        "waits for itself": ("error", "t:wait: a task cannot wait for itself"),
        "waits in a metamethod": ("error", "provium.all: cannot wait here (inside a metamethod or a function called "
                                           "by C code)"),
        "still runs tasks": ("passed", ""),
    }, messages
    assert ends["waits for itself"]["where"] == "tasks.lua:11"
