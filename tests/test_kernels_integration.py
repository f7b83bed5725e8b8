"""One suite across kernels: profiles prepared on first use, --matrix, per-kernel build outputs,
tests that need kernel options."""

import json
import re


def test_a_test_needing_options_the_kernel_lacks_is_skipped_with_their_names(suite):
    suite.write("t.lua", """\
        local shared = provium.create("minimal")
        shared:boot{memory = "256M"}
        test("needs landlock, which the stock kernel has", {kconfig = {"SECURITY_LANDLOCK"}}, function()
          assert(shared:exec("true").ok)
        end)
        test("needs KASAN, on the file's VM", {kconfig = {"KASAN", "CONFIG_SECURITY_LANDLOCK"}}, function()
          error("must not run")
        end)
        test("needs KASAN, in a VM of its own", {kconfig = {"CONFIG_KASAN"}}, function()
          local vm = provium.create("minimal")
          error("must not get here")
        end)
        test("runs after", function() assert(true) end)
        """)
    result = suite.run("run", "t.lua", "--json", "events.json")
    assert result.returncode == 0, result.stdout + result.stderr
    ends = {e["test"]: e for e in map(json.loads, (suite.root / "events.json").read_text().splitlines())
            if e["event"] == "test_end"}
    assert ends["needs landlock, which the stock kernel has"]["outcome"] == "passed"
    for name in ("needs KASAN, on the file's VM", "needs KASAN, in a VM of its own"):
        assert ends[name]["outcome"] == "skipped"
        assert re.fullmatch(r"needs kernel options that \S+ lacks: CONFIG_KASAN", ends[name]["message"])
    assert ends["runs after"]["outcome"] == "passed"
    assert suite.qemu_pids() == []


def test_a_matrix_labels_every_run_and_maps_the_name(suite):
    suite.write("provium.toml", """\
        [profiles.small]
        memory = "256M"
        [profiles.large]
        memory = "384M"
        [matrix]
        machine = ["small", "large"]
        """)
    suite.write("t.lua", """\
        test("the name stands for the cell's profile", function()
          local vm = provium.create("machine")
          vm:boot()
          local kib = tonumber(vm:exec("sed -n 's/MemTotal: *\\\\([0-9]*\\\\) kB/\\\\1/p' /proc/meminfo").stdout.trim())
          print(kib)
          assert(kib > 200 * 1024)
        end)
        """)
    listed = suite.run("run", "--list", "t.lua")
    assert listed.stdout.splitlines() == ["t.lua[small]::the name stands for the cell's profile",
                                          "t.lua[large]::the name stands for the cell's profile"]
    result = suite.run("run", "t.lua", "--ktap", "-", "--json", "events.json")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "# Subtest: t.lua[small]" in result.stdout and "# Subtest: t.lua[large]" in result.stdout
    memory = {e["file"]: int(e["output"]) for e in map(json.loads, (suite.root / "events.json").read_text().splitlines())
              if e["event"] == "test_end"}
    assert memory["t.lua[small]"] < 256 * 1024 < memory["t.lua[large]"], memory
    overridden = suite.run("run", "--list", "--matrix", "machine=large", "t.lua")
    assert overridden.stdout.splitlines() == ["t.lua[large]::the name stands for the cell's profile"]
    bad = suite.run("run", "--matrix", "machine=large,huge", "t.lua")
    assert bad.returncode == 2
    assert bad.stderr == "provium: --matrix: unknown profile 'huge' (known: large, minimal, small)\n"
    assert suite.qemu_pids() == []


def test_preparing_a_profile_does_not_count_against_the_test_deadline(suite):
    """A build step (or a kernel fetched or built) on first use takes what it takes; the test's own
    deadline starts again after it. The build runs once however many tests ask."""
    suite.write("provium.toml", """\
        [run]
        tcg_slowdown = 1
        [profiles.slow]
        memory = "256M"
        build = "sleep 4; echo built >> $PROVIUM_BUILD_DIR/log"
        """)
    suite.write("t.lua", """\
        test("boots after a slow build", {timeout = 3}, function()
          local vm = provium.create("slow")
          vm:boot()
          assert(vm:exec("true").ok)
        end)
        test("the build ran once, into the profile's build directory", function()
          local log = io.open(provium.path("@build", "slow") .. "/log"):read("a")
          assert_eq("built\\n", log)
        end)
        test("a test that is slow itself still times out", {timeout = 1}, function()
          provium.create("slow")
          while true do end
        end)
        """)
    result = suite.run("run", "t.lua")
    out = result.stdout
    assert result.returncode == 1, out + result.stderr
    assert re.search(r"ok +boots after a slow build", out), out
    assert re.search(r"ok +the build ran once", out), out
    assert "test 'a test that is slow itself still times out' timed out after 1 s in Lua code" in out
    assert out.count("building profile 'slow'") == 1
