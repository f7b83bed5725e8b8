"""Tasks that fail, time out or are only listed, in real guests: what the report says and what is left."""

import re

SHARED = 'local vm = provium.create("minimal")\nvm:boot{memory = "256M"}\n'


def test_an_error_in_a_task_fails_the_test_at_its_line_and_cancels_the_others(suite):
    suite.write("fails.lua", SHARED + """\
        test("one task fails while another is blocked", function()
          local blocked, failing = vm:spawn(), vm:spawn()
          provium.all(
            function() blocked:exec("sleep 60") end,
            function()
              provium.sleep(0.3)
              failing:read_file("/no/such/file")
            end)
        end)
        test("the VM is clean after it", function()
          assert_eq("", vm:exec("ps -o args | grep '^sleep 60' || true").stdout.value)
          assert_eq("ok", vm:exec("echo ok").stdout.trim())
        end)
        """)
    result = suite.run("run", "fails.lua")
    out = result.stdout
    assert result.returncode == 1, out
    assert re.search(r"ERROR one task fails while another is blocked \((\d+\.\d+) s\)\n"
                     r" +fails\.lua:9: read_file /no/such/file: No such file or directory", out), out
    assert "the failing task was started at fails.lua:5" in out, out
    assert "cancelled (not resumed again): the tasks started at fails.lua:5" in out, out
    assert re.search(r'vm:exec\("sleep 60"\) did not end within 2 s of the cancel: worker \d+ was killed', out), out
    assert re.search(r"ok +the VM is clean after it", out), out
    assert suite.qemu_pids() == []


def test_a_failing_assertion_in_a_task_shows_both_values(suite):
    suite.write("assert.lua", """\
        test("compares in a task", function()
          provium.all(function() provium.sleep(0.1) end, function() assert_eq(1, 2, "in task two") end)
        end)
        """)
    result = suite.run("run", "assert.lua")
    assert result.returncode == 1
    assert re.search(r"FAIL  compares in a task \(\d+\.\d+ s\)\n +assert\.lua:2: assert_eq failed: in task two\n"
                     r" +expected: 1\n +actual: +2", result.stdout), result.stdout


def test_tasks_past_the_test_deadline_fail_it_naming_the_op_of_the_first_task(suite):
    # task 2's op is queued first and both are stuck: the report names task 1's, whichever noticed first
    suite.write("slow.lua", SHARED + """\
        test("stuck", {timeout = 2}, function()
          local a, b = vm:spawn(), vm:spawn()
          provium.all(
            function() provium.sleep(0.2) a:exec("sleep 50") end,
            function() b:exec("sleep 40") end)
        end)
        test("the VM it was stuck in is gone", function() vm:exec("true") end)
        """)
    result = suite.run("run", "slow.lua")
    out = result.stdout
    assert result.returncode == 1, out
    assert re.search(r"ERROR stuck \(\d+\.\d+ s\)\n +slow\.lua:6: test 'stuck' timed out after \d+ s "
                     r'in vm:exec\("sleep 50"\)', out), out
    assert "slow.lua:9: VM 'minimal' was killed when test 'stuck' timed out in it" in out, out
    assert suite.qemu_pids() == []


def test_lua_code_of_a_task_past_the_deadline_is_stopped(suite):
    suite.write("spin.lua", """\
        test("spins", {timeout = 1}, function()
          provium.all(function() provium.sleep(30) end, function() while true do end end)
        end)
        """)
    result = suite.run("run", "spin.lua")
    assert result.returncode == 1
    assert re.search(r"spin\.lua:2: test 'spins' timed out after \d+ s in Lua code", result.stdout), result.stdout


def test_tasks_that_wait_for_each_other_fail_at_once(suite):
    suite.write("cycle.lua", """\
        test("cycle", function()
          local first
          local second = provium.go(function() provium.sleep(0.1) first:wait() end)
          first = provium.go(function() second:wait() end)
          first:wait()
        end)
        """)
    result = suite.run("run", "cycle.lua")
    assert result.returncode == 1
    assert "every task is waiting for another task to end" in result.stdout, result.stdout


def test_wrong_arguments_are_named(suite):
    suite.write("args.lua", """\
        test("all", function() provium.all(function() end, 42) end)
        test("go", function() provium.go("f") end)
        test("sleep", function() provium.sleep(-1) end)
        test("wait", function() local t = provium.go(function() end) t.wait() end)
        """)
    out = suite.run("run", "args.lua").stdout
    assert "args.lua:1: provium.all: argument 2 (fn) must be a function, got number" in out, out
    assert "args.lua:2: provium.go: argument 1 (fn) must be a function, got string" in out, out
    assert "args.lua:3: provium.sleep: seconds must be 0 or more, got -1" in out, out
    assert "args.lua:4: t:wait: call it with ':' on a task (t:wait())" in out, out


def test_listing_runs_no_op_and_lists_the_tests(suite):
    suite.write("listed.lua", SHARED + """\
        local r = provium.all(function() return vm:exec("echo a").stdout.value end, function() return 2 end)
        test("first", function() provium.all(function() error("not run") end) end)
        test("second " .. r[2][1], function() end)
        """)
    result = suite.run("run", "--list", "listed.lua")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines() == ["listed.lua::first", "listed.lua::second 2"]
    assert suite.qemu_pids() == []
