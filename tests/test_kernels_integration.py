"""One suite across kernels: profiles prepared on first use, --matrix, per-kernel build outputs,
tests that need kernel options, and where each kind of kernel keeps the debug symbols that decode
its reports (the test marked `dbgsym` fetches Debian's: ~320 MB, ~1.8 GB unpacked)."""

import json
import re
import shutil
import subprocess
import textwrap
import time

import pytest

from provium import archive, config, kbuild, kernels
from provium.cache import Cache


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


def test_the_host_kernels_debug_symbols_are_found_under_usr_lib_debug(tmp_path, monkeypatch):
    profile = config.load(tmp_path).profile("minimal")
    if profile.kernel is None:
        pytest.skip("no host kernel")
    release = profile.modules_dir.name
    monkeypatch.setattr(kernels, "HOST_DEBUG", tmp_path / "debug")
    tree = kernels.resolve(profile, Cache(tmp_path / "none"))
    assert (tree.vmlinux, tree.debug_modules) == (None, None)
    for vmlinux in (f"lib/modules/{release}/vmlinux", f"boot/vmlinux-{release}"):  # the second wins when both are
        (tmp_path / "debug" / vmlinux).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "debug" / vmlinux).write_bytes(b"\x7fELF")
        tree = kernels.resolve(profile, Cache(tmp_path / vmlinux.replace("/", "-")))
        assert tree.vmlinux == tmp_path / "debug" / vmlinux
        assert tree.debug_modules == tmp_path / "debug/lib/modules" / release


@pytest.mark.parametrize("options, vmlinux, debug_modules", [
    ("CONFIG_MODULES=y\nCONFIG_DEBUG_INFO=y\n", True, True),
    ("# CONFIG_MODULES is not set\nCONFIG_DEBUG_INFO=y\n", True, False),
    ("CONFIG_MODULES=y\n# CONFIG_DEBUG_INFO is not set\n", False, False),    # the minimal fragment alone
])
def test_a_built_kernel_has_debug_symbols_when_its_config_has_debug_info(tmp_path, options, vmlinux, debug_modules):
    (tmp_path / "release").write_text("6.12.117\n")
    (tmp_path / "config").write_text(f"CONFIG_64BIT=y\n{options}")
    tree = kbuild._kernel_tree(tmp_path, tmp_path / "build", "apt:linux-source-6.12")
    assert tree.vmlinux == (tree.image if vmlinux else None)
    assert tree.debug_modules == (tree.modules_dir if debug_modules else None)


CLOUD = "linux-image-6.12-cloud-amd64"


@pytest.fixture(scope="session")
def dbgsym_cache(tmp_path_factory):
    """A cache of its own for the 1.8 GB of debug symbols, removed at the end of the session."""
    root = tmp_path_factory.mktemp("dbgsym-cache")
    yield Cache(root)
    shutil.rmtree(root, ignore_errors=True)


@pytest.mark.dbgsym
def test_an_archive_kernel_with_debug_symbols_has_a_vmlinux_and_modules_with_line_tables(dbgsym_cache, tmp_path):
    if not all(shutil.which(tool) for tool in ("apt-get", "apt-cache", "dpkg-deb", "readelf")):
        pytest.skip("needs apt-get, apt-cache, dpkg-deb and readelf (a Debian host with binutils)")
    if subprocess.run(["apt-cache", "show", CLOUD], capture_output=True).returncode != 0:
        pytest.skip(f"the apt archive has no {CLOUD} (not Debian 12 with bookworm-security, or no apt-get update)")
    (tmp_path / "provium.toml").write_text(textwrap.dedent(f"""\
        [profiles.cloud]
        kernel = "apt:{CLOUD}"
        debug_symbols = true
        """))
    lines = []
    started = time.monotonic()
    tree = kernels.resolve(config.load(tmp_path).profile("cloud"), dbgsym_cache, lines.append)
    print(f"image, headers and debug symbols fetched in {time.monotonic() - started:.1f} s")
    print("\n".join(lines))
    assert any(re.search(rf"downloading linux-image-{re.escape(tree.release)}-dbg \(\d+ MB\)", line)
               for line in lines), lines
    assert tree.vmlinux == tree.debug_modules.parents[2] / "boot" / f"vmlinux-{tree.release}"
    assert tree.vmlinux.is_file() and tree.debug_modules.is_dir()
    assert tree.vmlinux.read_bytes()[:4] == b"\x7fELF"
    assert ".debug_line " in subprocess.run(["readelf", "-S", "-W", str(tree.vmlinux)], capture_output=True,
                                            text=True, check=True).stdout
    [virtio_blk] = tree.debug_modules.rglob("virtio_blk.ko")
    assert ".debug_line " in subprocess.run(["readelf", "-S", "-W", str(virtio_blk)], capture_output=True,
                                            text=True, check=True).stdout
    assert (tree.modules_dir / virtio_blk.relative_to(tree.debug_modules)).with_suffix(".ko.xz").is_file()
    lines = []
    started = time.monotonic()
    assert archive.fetch(CLOUD, dbgsym_cache, lines.append, debug_symbols=True) == tree
    assert time.monotonic() - started < 10 and not [line for line in lines if "downloading" in line], lines
