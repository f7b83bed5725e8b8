"""`provium report merge`: the --json files of a sharded run, merged, against one unsharded run of the same suite;
missing, repeated and incomplete shards; files that are not event files.

One suite is run once unsharded and once per shard (module fixture): its files are pure Lua but for one that boots a
guest and fails with a console tail. A second suite passes throughout, so that a status of 1 can only come from the
shards themselves.
"""

import io
import json
import re
import shutil
import signal
import time
import xml.etree.ElementTree as ET

import pytest
from conftest import Suite

from provium.report import JsonEventsReport
from provium.report_merge import read
from provium.results import Outcome, TestResult

FILES = {
    "alpha.lua": """\
        test("alpha passes", function() assert_eq(2, 1 + 1) end)
        test("alpha is not ready", function() todo("waiting on alpha") end)
        test("alpha passes again", function() end)
        """,
    "beta.lua": """\
        test("beta passes", function() end)
        test("beta compares", function()
          print("beta was here")
          assert_eq(1, 2)
        end)
        """,
    "gamma.lua": """\
        local function deeper() error("x") end
        test("gamma errors", function() deeper() end)
        test("gamma passes", function() end)
        """,
    "delta.lua": """\
        test("delta passes", function() end)
        test("delta skips", function() todo("later") end)
        """,
    "epsilon.lua": """\
        test("epsilon looks for a needle", function() assert_contains("haystack", "needle") end)
        test("epsilon passes", function() end)
        """,
    "zeta.lua": """\
        test("zeta passes", function() print("zeta") end)
        """,
    "vm_console.lua": """\
        test("the guest says something and fails", function()
          local vm = provium.create("minimal")
          vm:boot{memory = "256M"}
          vm:exec("echo '<2>provium-merge-marker' > /dev/kmsg")
          assert_eq("a", "b")
        end)
        test("vm_console passes", function() end)
        """,
}
PASSING = {
    "ok_a.lua": 'test("ok_a passes", function() end)\n',
    "ok_b.lua": 'test("ok_b passes", function() end)\ntest("ok_b skips", function() todo("not yet") end)\n',
    "ok_c.lua": 'test("ok_c passes", function() end)\n',
}
CLOSING = re.compile(r"\d+ passed, \d+ failed, \d+ skipped$")


class Runs:
    """The suite, its unsharded run and the --json files of its shards."""

    def __init__(self, suite):
        self.suite = suite
        self.root = suite.root
        self.whole = suite.run("run", *FILES, "--json", "all.json", "--junit", "all.xml", "--ktap", "all.ktap")
        self.shards = {k: suite.run("run", *FILES, "--shard", f"{k}/3", "--json", f"s{k}.json") for k in (1, 2, 3)}
        self.passing_whole = suite.run("run", *PASSING, "--json", "p.json")
        self.passing = {k: suite.run("run", *PASSING, "--shard", f"{k}/2", "--json", f"p{k}.json") for k in (1, 2)}
        for result, status in [(self.whole, 1), *((shard, 1) for shard in self.shards.values()),
                               (self.passing_whole, 0), *((shard, 0) for shard in self.passing.values())]:
            assert result.returncode == status, f"{result.args}:\n{result.stdout}{result.stderr}"

    def merge(self, *args):
        return self.suite.run("report", "merge", *args, timeout=60)

    def run_start(self, name):
        return json.loads((self.root / name).read_text().splitlines()[0])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    suite = Suite(tmp_path_factory.mktemp("merge"))
    for name, text in {**FILES, **PASSING}.items():
        suite.write(name, text)
    return Runs(suite)


def blocks(stdout):
    """{file: the lines printed for it} of a run's standard output, in the order printed."""
    out, current = {}, None
    for line in stdout.splitlines():
        if line.startswith("provium:") or CLOSING.fullmatch(line):
            current = None
        elif not line.startswith(" "):
            current = out.setdefault(line, [])
        elif current is not None:
            current.append(line)
    return out


def outcome_lines(stdout):
    """(file, the test's line without its duration) for every test printed."""
    return [(file, re.sub(r" \(\d+\.\d+ s\)$", "", line)) for file, lines in blocks(stdout).items()
            for line in lines if re.match(r"  (ok|FAIL|ERROR|SKIP) ", line)]


def junit_cases(path):
    root = ET.parse(path).getroot()
    cases = []
    for suite in root.findall("testsuite"):
        for case in suite.findall("testcase"):
            status = next((child.tag for child in case if child.tag in ("failure", "error", "skipped")), "passed")
            cases.append((suite.get("name"), case.get("name"), status))
    return root, cases


def ktap_cases(path):
    lines = path.read_text().splitlines()
    assert lines[0] == "KTAP version 1"
    cases, file, plans = [], None, {}
    for line in lines:
        if match := re.fullmatch(r"  # Subtest: (.*)", line):
            file = match[1]
        elif match := re.fullmatch(r"  1\.\.(\d+)", line):
            plans[file] = int(match[1])
        elif match := re.fullmatch(r"  (ok|not ok) \d+ (.*?)( # SKIP.*)?", line):
            cases.append((file, match[2], "skip" if match[3] else match[1]))
    assert lines[1] == f"1..{len(plans)}"
    assert all(plans[f] == sum(c[0] == f for c in cases) for f in plans), (plans, cases)
    return cases


def notices(stdout):
    return [line for line in stdout.splitlines() if line.startswith("provium:")]


def test_the_shards_are_a_partition_and_none_is_empty(runs):
    parts = [runs.run_start(f"s{k}.json")["runs"] for k in (1, 2, 3)]
    assert all(parts), f"a shard is empty: {parts}; rename the files"
    assert sorted(sum(parts, [])) == sorted(FILES)
    assert [runs.run_start(f"p{k}.json")["runs"] for k in (1, 2)] == [["ok_a.lua"], ["ok_b.lua", "ok_c.lua"]]
    start = runs.run_start("s2.json")
    assert (start["event"], start["shard"], start["suite_runs"]) == ("run_start", "2/3", list(FILES))
    assert runs.run_start("all.json")["shard"] is None


def test_merged_shards_print_report_and_exit_as_the_unsharded_run(runs):
    merged = runs.merge("s1.json", "s2.json", "s3.json", "--junit", "m.xml", "--ktap", "m.ktap")
    assert merged.returncode == 1, merged.stdout + merged.stderr
    assert merged.stderr == "" and notices(merged.stdout) == []
    # the same tests, outcomes, files in the same order and the same closing line as the unsharded run
    assert outcome_lines(merged.stdout) == outcome_lines(runs.whole.stdout)
    assert list(blocks(merged.stdout)) == list(FILES)
    last = merged.stdout.splitlines()[-1]
    assert last == runs.whole.stdout.splitlines()[-1] == "8 passed, 4 failed, 2 skipped"
    # every file's lines exactly as its shard printed them: durations, values, traceback, output, console tail
    printed = {}
    for shard in runs.shards.values():
        printed.update(blocks(shard.stdout))
    assert blocks(merged.stdout) == printed
    vm_lines = "\n".join(blocks(merged.stdout)["vm_console.lua"])
    assert "vm_console.lua:5: assert_eq failed" in vm_lines and 'expected: "a"' in vm_lines
    assert "console of minimal (last lines):" in vm_lines and "provium-merge-marker" in vm_lines
    assert "gamma.lua:1: x" in "\n".join(printed["gamma.lua"])
    assert "needle:" in "\n".join(printed["epsilon.lua"]) and "beta was here" in "\n".join(printed["beta.lua"])

    whole_root, whole_cases = junit_cases(runs.root / "all.xml")
    root, cases = junit_cases(runs.root / "m.xml")
    assert cases == whole_cases and len(set(cases)) == len(cases) == 14
    counts = ("tests", "failures", "errors", "skipped")
    assert [root.get(c) for c in counts] == [whole_root.get(c) for c in counts] == ["14", "3", "1", "2"]
    durations = [json.loads((runs.root / f"s{k}.json").read_text().splitlines()[-1])["duration"] for k in (1, 2, 3)]
    assert root.get("time") == f"{max(durations):.3f}", "the merged duration is the longest shard's"
    assert ktap_cases(runs.root / "m.ktap") == ktap_cases(runs.root / "all.ktap")
    assert len(ktap_cases(runs.root / "m.ktap")) == 14


def test_all_shards_passing_exit_0_and_a_missing_shard_exits_1(runs):
    whole = runs.merge("p1.json", "p2.json", "--ktap", "-")
    assert whole.returncode == 0, whole.stdout + whole.stderr
    assert whole.stderr.splitlines()[-1] == "3 passed, 0 failed, 1 skipped"
    assert "  ok 2 ok_b skips # SKIP not yet" in whole.stdout.splitlines()

    missing = runs.merge("p1.json", "--junit", "p.xml")
    assert missing.returncode == 1, missing.stdout + missing.stderr
    assert notices(missing.stdout) == ["provium: shard 2/2 is missing: it should have run ok_b.lua, ok_c.lua"]
    assert missing.stdout.splitlines()[-1] == "1 passed, 0 failed, 0 skipped"
    assert junit_cases(runs.root / "p.xml")[1] == [("ok_a.lua", "ok_a passes", "passed")]

    two_of_three = runs.merge("s3.json", "s1.json")
    assert two_of_three.returncode == 1
    assert notices(two_of_three.stdout) == ["provium: shard 2/3 is missing: it should have run vm_console.lua"]
    assert list(blocks(two_of_three.stdout)) == [f for f in FILES if f != "vm_console.lua"]


def test_a_repeated_shard_is_flagged_and_its_tests_count_once(runs):
    shutil.copy(runs.root / "s2.json", runs.root / "s2-again.json")
    merged = runs.merge("s1.json", "s2.json", "s3.json", "s2-again.json", "--junit", "d.xml")
    assert merged.returncode == 1
    assert notices(merged.stdout) == [
        "provium: shard 2/3 is given twice: s2.json and s2-again.json; the results of s2.json are kept"]
    assert outcome_lines(merged.stdout) == outcome_lines(runs.whole.stdout)
    assert junit_cases(runs.root / "d.xml")[1] == junit_cases(runs.root / "all.xml")[1]

    # one run reported by two files: the unsharded run of the passing suite with one of its shards
    overlap = runs.merge("p.json", "p2.json")
    assert overlap.returncode == 1, "every test passed: the status comes from the repeated runs"
    assert notices(overlap.stdout) == [
        "provium: shards of different N: the unsharded run (p.json), shard 2/2 (p2.json)",
        "provium: shard 2/2 (p2.json) repeats runs of the unsharded run (p.json): ok_b.lua, ok_c.lua; "
        "the results of p.json are kept"]
    assert overlap.stdout.splitlines()[-1] == "3 passed, 0 failed, 1 skipped"


@pytest.mark.parametrize("damage", ["cut mid-line", "no summary line"])
def test_an_incomplete_shard_is_flagged_and_what_it_has_is_shown(runs, damage):
    text = (runs.root / "s3.json").read_text()
    summary = text.splitlines()[-1]
    assert json.loads(summary)["event"] == "summary"
    kept = text[:-len(summary) - 1] + (summary[:len(summary) // 2] if damage == "cut mid-line" else "")
    (runs.root / "s3-cut.json").write_text(kept)
    merged = runs.merge("s1.json", "s2.json", "s3-cut.json")
    assert merged.returncode == 1
    why = "its last event is cut off and it has no summary" if damage == "cut mid-line" else "it has no summary event"
    assert notices(merged.stdout) == [
        f"provium: shard 3/3 (s3-cut.json) is incomplete: {why} (its run crashed or was killed); "
        "runs it did not finish: none"]
    assert outcome_lines(merged.stdout) == outcome_lines(runs.whole.stdout)

    # a shard that died in the middle of a file: that file's tests so far are shown, the file is named
    lines = text.splitlines(keepends=True)
    cut = next(i for i, line in enumerate(lines) if '"test_end"' in line and "delta.lua" in line)
    (runs.root / "s3-died.json").write_text("".join(lines[:cut + 1]))
    died = runs.merge("s3-died.json")
    assert died.returncode == 1
    assert notices(died.stdout)[-1] == ("provium: shard 3/3 (s3-died.json) is incomplete: it has no summary event "
                                        "(its run crashed or was killed); runs it did not finish: delta.lua")
    assert blocks(died.stdout)["delta.lua"] == blocks(runs.shards[3].stdout)["delta.lua"][:1]


def test_an_interrupted_shard_is_incomplete(runs):
    runs.suite.write("spin.lua", 'test("spins", function() while true do end end)\n')
    proc = runs.suite.popen("run", "ok_a.lua", "spin.lua", "--json", "int.json")
    try:
        ends = time.monotonic() + 60
        while '"spins"' not in ((runs.root / "int.json").read_text() if (runs.root / "int.json").exists() else ""):
            assert time.monotonic() < ends and proc.poll() is None, "spin.lua never started"
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 130
    finally:
        proc.kill()
        proc.wait()
    merged = runs.merge("int.json")
    assert merged.returncode == 1, "every test that ended passed: the status comes from the interruption"
    assert notices(merged.stdout) == ["provium: the unsharded run (int.json) is incomplete: its run was interrupted "
                                      "(Ctrl-C or SIGTERM: a cancelled job); runs it did not finish: spin.lua"]
    assert merged.stdout.splitlines()[-1] == "1 passed, 0 failed, 0 skipped"


BAD = {
    "garbage": (b"hello\nworld\n", "bad.json:1: not a provium JSON event file (from provium run --json): "
                                   "not a JSON line"),
    "not UTF-8": (b'{"event": "run_start"\xff}\n', "bad.json: not a provium JSON event file (from provium run "
                                                  "--json): not UTF-8 text (byte 0xff at offset 21)"),
    "empty": (b"", "bad.json: not a provium JSON event file (from provium run --json): it is empty"),
    "no run_start": (b'{"time": 1, "event": "file_start", "file": "a.lua"}\n',
                     "bad.json:1: not a provium JSON event file (from provium run --json): it starts with a "
                     "file_start event, not run_start (files from a provium without run_start cannot be merged)"),
    "JSON of another kind": (b"[1, 2]\n", "bad.json:1: not a provium JSON event file (from provium run --json): "
                                          'not an event (a JSON object with an "event" name)'),
    "a bad line inside": (None, "bad.json:3: not a provium JSON event file (from provium run --json): "
                                "not a JSON line"),
    "a directory": ("dir", "bad.json: cannot read it: Is a directory"),
    "missing": ("missing", "bad.json: cannot read it: No such file or directory"),
}


@pytest.mark.parametrize("kind", BAD)
def test_a_file_that_is_not_an_event_file_is_a_one_line_error(runs, kind):
    content, message = BAD[kind]
    bad = runs.root / "bad.json"
    if bad.is_dir():
        bad.rmdir()
    bad.unlink(missing_ok=True)
    if content == "dir":
        bad.mkdir()
    elif content is None:
        lines = (runs.root / "s1.json").read_text().splitlines(keepends=True)
        bad.write_text("".join(lines[:2] + ["{not json\n"] + lines[2:]))
    elif content != "missing":
        bad.write_bytes(content)
    merged = runs.merge("s1.json", "bad.json", "--junit", "never.xml")
    assert merged.returncode == 2
    assert merged.stderr == f"provium: {message}\n"
    assert merged.stdout == "" and not (runs.root / "never.xml").exists()


def test_no_file_is_a_usage_error(runs):
    merged = runs.merge()
    assert merged.returncode == 2 and "the following arguments are required: FILE" in merged.stderr


def test_a_test_end_event_gives_back_the_test_result(tmp_path):
    result = TestResult("t.lua[tiny]", "naïve # test", Outcome.ERROR, duration=1.0000001234567, message="boom\nline 2",
                        where="t.lua:7", details={"expected": '"a"', "actual": '{["b"] = 1}'},
                        traceback="stack traceback:\n\tt.lua:7: in function <t.lua:6>",
                        output="a\udcffb\n", consoles={"minimal": "[    1.0] one\n[    1.1] two", "other": "x"})
    stream = io.StringIO()
    report = JsonEventsReport(stream, shard="1/1", runs=["t.lua[tiny]"], suite_runs=["t.lua[tiny]"])
    report.file_started(result.file)
    report.test_started(result.file, result.name)
    report.test_finished(result)
    report.file_finished(result.file)
    events = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [e["event"] for e in events] == ["run_start", "file_start", "test_start", "test_end", "file_end"]
    assert events[3]["details"] == result.details and "expected" not in events[3]
    (tmp_path / "e.json").write_text(stream.getvalue())
    shard = read(str(tmp_path / "e.json"))
    assert shard.results == {"t.lua[tiny]": [result]} and shard.summary is None and shard.shard == (1, 1)


def test_shards_of_another_suite_are_flagged(runs):
    merged = runs.merge("p1.json", "s2.json")
    assert merged.returncode == 1
    assert notices(merged.stdout)[:2] == [
        "provium: shard 2/3 (s2.json) is a shard of another suite than shard 1/2 (p1.json): only it lists "
        + ", ".join(FILES) + "; only the other lists " + ", ".join(PASSING),
        "provium: shards of different N: shard 1/2 (p1.json), shard 2/3 (s2.json)"]
    assert list(blocks(merged.stdout)) == ["ok_a.lua", "vm_console.lua"]
