"""The runner for CI: deadlines, crash detection, reports, selection, sharding, ordering."""

import json
import re
import xml.etree.ElementTree as ET

from provium.runner import RunItem, parse_shard, shard

SHARED = 'local vm = provium.create("minimal")\nvm:boot{memory = "256M"}\n'


def test_a_kernel_panic_fails_the_test_within_seconds(suite):
    suite.write("panic.lua", SHARED + """\
        test("panics", {timeout = 300}, function()
          vm:exec("echo 1 > /proc/sys/kernel/sysrq; echo c > /proc/sysrq-trigger")
        end)
        test("next", function() assert(true) end)
        """)
    result = suite.run("run", "panic.lua")
    assert result.returncode == 1
    match = re.search(r"ERROR panics \((\d+\.\d+) s\)", result.stdout)
    assert match and float(match.group(1)) < 10, result.stdout
    assert "kernel panic: Kernel panic - not syncing: sysrq triggered crash" in result.stdout
    assert re.search(r"ok +next", result.stdout)


def test_a_bug_report_that_does_not_panic_fails_the_test(suite):
    # An oops or KASAN report leaves the kernel running: the console watch names it. The
    # report is printed at KERN_ALERT through /dev/kmsg, as the kernel prints its own.
    suite.write("oops.lua", SHARED + """\
        test("reports a bug", function()
          vm:exec("echo '<1>BUG: KASAN: slab-out-of-bounds in provium_test+0x10/0x20' > /dev/kmsg")
          vm:exec("sleep 1")
        end)
        test("the VM is shut down after it", function() assert(true) end)
        """)
    result = suite.run("run", "oops.lua")
    assert result.returncode == 1
    assert re.search(r"ERROR reports a bug \(\d\.\d+ s\)", result.stdout), result.stdout
    assert "VM 'minimal': KASAN: slab-out-of-bounds in provium_test+0x10/0x20" in result.stdout
    assert "--- KASAN report ---" in result.stdout
    assert re.search(r"ok +the VM is shut down after it", result.stdout)


def test_a_report_that_arrives_while_no_op_waits_fails_the_test_that_was_running(suite):
    # printed by a background job while the test computes in Lua: the test's end finds it
    rule = "=" * 66
    lines = [rule, "BUG: KASAN: slab-use-after-free in late_bug+0x1/0x2", "Read of size 8", rule]
    printf = "; ".join(f"echo '<1>{line}' > /dev/kmsg" for line in lines)
    suite.write("late.lua", SHARED + f"""\
        test("computes while the kernel reports", function()
          vm:background("sleep 1; {printf}")
          local started = os.clock()
          while os.clock() - started < 4 do end
        end)
        test("the next test on the VM", function() assert(vm:exec("true").ok) end)
        """)
    result = suite.run("run", "late.lua")
    out = result.stdout
    assert result.returncode == 1, out
    assert re.search(r"ERROR computes while the kernel reports \(\d+\.\d+ s\)\n.*late\.lua:\d+: "
                     r"VM 'minimal': KASAN: slab-use-after-free in late_bug\+0x1/0x2\n", out), out
    assert "Read of size 8" in out
    assert re.search(r"ok +the next test on the VM", out), "reported once, to the test that was running"


def test_a_hung_exec_fails_at_its_deadline_and_the_next_test_runs(suite):
    suite.write("hang.lua", """\
        test("hangs", {timeout = 3}, function()
          local vm = provium.create("minimal")
          vm:boot{memory = "256M"}
          vm:exec("sleep 600")
        end)
        test("loops in Lua", {timeout = 1}, function()
          while true do end
        end)
        test("still runs", function() assert(true) end)
        """)
    suite.write("provium.toml", "[run]\ntcg_slowdown = 1\n")
    result = suite.run("run", "hang.lua", timeout=120)
    out = result.stdout
    assert result.returncode == 1
    assert "test 'hangs' timed out after 3 s in vm:exec(\"sleep 600\")" in out
    assert "test 'loops in Lua' timed out after 1 s in Lua code" in out
    assert re.search(r"ok +still runs", out)
    assert suite.qemu_pids() == []


RESULTS = """\
test("passes", function() assert(true) end)
test("fails", function() assert_eq(1, 2) end)
test("errors", function() error("boom") end)
test("skips", function() todo("later") end)
"""


def test_junit_ktap_and_json_reports(suite):
    suite.write("a.lua", RESULTS)
    suite.write("b.lua", 'test("b passes", function() print("out") end)\n')
    result = suite.run("run", "a.lua", "b.lua", "--junit", "r.xml", "--ktap", "r.ktap", "--json", "r.json")
    assert result.returncode == 1
    root = ET.parse(suite.root / "r.xml").getroot()
    assert (root.get("tests"), root.get("failures"), root.get("errors"), root.get("skipped")) == ("5", "1", "1", "1")
    suites = root.findall("testsuite")
    assert [s.get("name") for s in suites] == ["a.lua", "b.lua"]
    cases = suites[0].findall("testcase")
    assert [c.get("name") for c in cases] == ["passes", "fails", "errors", "skips"]
    assert cases[1].find("failure").get("message") == "assert_eq failed"
    assert "expected: 1" in cases[1].find("failure").text
    assert cases[2].find("error") is not None and cases[3].find("skipped").get("message") == "later"
    assert suites[1].find("testcase/system-out").text == "out\n"

    ktap = (suite.root / "r.ktap").read_text().splitlines()
    assert ktap[:5] == ["KTAP version 1", "1..2", "  KTAP version 1", "  # Subtest: a.lua", "  1..4"]
    assert "  ok 1 passes" in ktap and "  not ok 2 fails" in ktap and "  not ok 3 errors" in ktap
    assert "  ok 4 skips # SKIP later" in ktap
    assert "not ok 1 a.lua" in ktap and ktap[-1] == "ok 2 b.lua"
    assert any(line.startswith("  # a.lua:2: assert_eq failed") for line in ktap)

    events = [json.loads(line) for line in (suite.root / "r.json").read_text().splitlines()]
    kinds = [e["event"] for e in events]
    assert kinds[0] == "run_start" and "file_start" in kinds and kinds[-1] == "summary"
    assert kinds.count("test_start") == 5 and kinds.count("test_end") == 5
    ends = {e["test"]: e for e in events if e["event"] == "test_end"}
    assert ends["fails"]["outcome"] == "failed" and ends["fails"]["details"]["expected"] == "1"
    assert events[-1]["passed"] == 2 and events[-1]["failed"] == 2 and events[-1]["skipped"] == 1


def test_ktap_to_standard_output(suite):
    suite.write("a.lua", RESULTS)
    result = suite.run("run", "a.lua", "--ktap", "-")
    assert result.stdout.startswith("KTAP version 1\n1..1\n")
    assert "1 passed, 2 failed, 1 skipped" in result.stderr


def test_selection_list_and_fail_fast(suite):
    suite.write("one.lua", RESULTS)
    suite.write("two.lua", 'test("two: fine", function() end)\n')
    listed = suite.run("run", "--list", ".")
    assert listed.returncode == 0
    assert listed.stdout.splitlines() == ["one.lua::passes", "one.lua::fails", "one.lua::errors",
                                          "one.lua::skips", "two.lua::two: fine"]
    picked = suite.run("run", "-k", "err", ".")
    assert re.search(r"ERROR errors", picked.stdout) and "passes" not in picked.stdout
    assert picked.stdout.splitlines()[-1] == "0 passed, 1 failed, 0 skipped"
    by_file = suite.run("run", "-k", "two", ".")
    assert by_file.stdout.splitlines()[-1] == "1 passed, 0 failed, 0 skipped"
    fast = suite.run("run", "-j1", "--fail-fast", ".")
    assert fast.stdout.splitlines()[-1] == "1 passed, 1 failed, 0 skipped"


def test_shards_cover_every_run_exactly_once():
    files = [RunItem(f"suite/dir{i % 3}/test_{i}.lua", (("kernel", p),) if i % 2 else ())
             for i, p in zip(range(40), ["a", "b"] * 20)]
    for n in (1, 2, 3, 7):
        parts = [shard(files, k, n) for k in range(1, n + 1)]
        assert sorted(f.name for part in parts for f in part) == sorted(f.name for f in files)
        assert sum(len(p) for p in parts) == len(files)
    assert shard(files[::-1], 2, 3) == shard(files, 2, 3)[::-1], "membership does not depend on order"
    assert parse_shard("2/4") == (2, 4)


def test_parallel_runs_report_in_file_order(suite):
    for name, delay in (("a", 2), ("b", 0), ("c", 1)):
        suite.write(f"{name}.lua", f"""\
            test("{name} boots", function()
              local vm = provium.create("minimal")
              vm:boot{{memory = "256M"}}
              vm:exec("sleep {delay}")
            end)
            """)
    result = suite.run("run", "-j3", "a.lua", "b.lua", "c.lua")
    assert result.returncode == 0, result.stdout + result.stderr
    files = [line for line in result.stdout.splitlines() if line.endswith(".lua")]
    assert files == ["a.lua", "b.lua", "c.lua"]
    assert suite.qemu_pids() == []


def test_artifacts_keep_consoles_and_a_record_of_each_failure(suite):
    suite.write("art.lua", """\
        test("fails with a VM", function()
          local vm = provium.create("minimal")
          vm:boot{memory = "256M"}
          vm:exec("echo '<2>provium-artifact-marker' > /dev/kmsg")
          assert_eq("a", "b")
        end)
        test("passes", function() end)
        """)
    result = suite.run("run", "art.lua", "--artifacts", "out")
    assert result.returncode == 1
    records = list((suite.root / "out").glob("*/failure.json"))
    assert len(records) == 1
    record = json.loads(records[0].read_text())
    assert record["test"] == "fails with a VM" and record["where"] == "art.lua:5"
    assert record["expected"] == '"a"' and record["actual"] == '"b"'
    console, = record["consoles"].values()
    assert "provium-artifact-marker" in (records[0].parent / console).read_text()


def test_bad_options_exit_2(suite):
    suite.write("a.lua", RESULTS)
    for args, message in ((["--shard", "3/2"], "K must be between 1 and N"), (["-j", "0"], "must be at least 1"),
                          (["--shard", "x"], "expected K/N")):
        result = suite.run("run", *args, "a.lua")
        assert result.returncode == 2 and message in result.stderr
