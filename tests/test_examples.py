"""The examples users copy: the first file, the kernel-module suite and the security suite."""

import re
import shutil
import xml.etree.ElementTree as ET

from conftest import REPO

EXAMPLES = REPO / "examples"


def count_tests(root):
    files = [p for p in root.rglob("*.lua") if not {"fixtures", "lib"} & set(p.relative_to(root).parts[:-1])]
    return sum(len(re.findall(r"^test\(", p.read_text(), re.M)) for p in files)


def test_every_example_passes_from_the_repository_root(suite):
    """`provium run examples/` runs three suites: examples/kmod and examples/security with their own
    provium.toml, and examples/hello.lua in the repository's."""
    result = suite.run("run", "examples/", cwd=REPO, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[-1] == f"{count_tests(EXAMPLES)} passed, 0 failed, 0 skipped"
    assert re.search(r"building profile 'kmod' for \S+: make -s -C module", result.stdout), result.stdout
    assert suite.qemu_pids() == []


def test_the_module_suite_runs_on_two_kernels_through_a_matrix(suite):
    """The stock kernel and Debian's 6.12 cloud kernel from the archive: a .ko built for each."""
    kmod = EXAMPLES / "kmod"
    result = suite.run("run", "--matrix", "kmod=kmod,kmod-6.12", "--junit", str(suite.root / "junit.xml"),
                       str(kmod / "tests"), cwd=REPO, timeout=1200)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    per_kernel = count_tests(kmod)
    assert out.splitlines()[-1] == f"{2 * per_kernel} passed, 0 failed, 0 skipped"
    for profile in ("kmod", "kmod-6.12"):
        assert re.search(rf"^examples/kmod/tests/ioctls\.lua\[{re.escape(profile)}\]$", out, re.M), out
    releases = set(re.findall(r"building profile 'kmod(?:-6\.12)?' for (\S+):", out))
    assert len(releases) == 2 and any(r.startswith("6.12.") for r in releases), releases
    suites = ET.parse(suite.root / "junit.xml").getroot().findall("testsuite")
    assert sorted(s.get("name") for s in suites) == sorted(
        f"examples/kmod/tests/{f.name}[{p}]" for f in (kmod / "tests").glob("*.lua") for p in ("kmod", "kmod-6.12"))
    assert suite.qemu_pids() == []


def test_the_security_suite_runs_on_the_stock_an_archive_and_a_built_kernel(suite):
    """The built kernel comes from Debian's 6.12 source with provium's minimal fragment (minutes, once)."""
    security = EXAMPLES / "security"
    cells = ("security", "security-6.12", "security-tiny")
    result = suite.run("run", "--matrix", f"security={','.join(cells)}", str(security / "tests"), cwd=REPO,
                       timeout=1800)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert out.splitlines()[-1] == f"{3 * count_tests(security)} passed, 0 failed, 0 skipped"
    for cell in cells:
        assert f"examples/security/tests/landlock.lua[{cell}]" in out
    assert suite.qemu_pids() == []


def test_the_lua_suite_passes_on_the_built_minimal_kernel_and_debian_6_12(suite):
    """The repository's own suite on two more kernels, with its own profiles (profiles/tiny.yaml,
    profiles/debian-6.12.yaml) standing in for the built-in "minimal" its tests boot."""
    files = sorted((REPO / "tests").glob("*.lua"))
    result = suite.run("run", "--matrix", "minimal=tiny,debian-6.12", *(str(p.relative_to(REPO)) for p in files),
                       cwd=REPO, timeout=1800)
    expected = 2 * sum(len(re.findall(r"^test\(", p.read_text(), re.M)) for p in files)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[-1] == f"{expected} passed, 0 failed, 0 skipped"
    for cell in ("tiny", "debian-6.12"):
        assert re.search(rf"^tests/api\.lua\[{re.escape(cell)}\]$", result.stdout, re.M), result.stdout
    assert suite.qemu_pids() == []


def test_a_module_that_does_not_compile_fails_the_tests_that_use_it_with_the_compiler_output(suite):
    copy = suite.root / "kmod"
    shutil.copytree(EXAMPLES / "kmod", copy, ignore=shutil.ignore_patterns("*.ko", "*.o", "*.mod*", ".*.cmd"))
    source = copy / "module" / "provium_kv.c"
    source.write_text(source.read_text().replace("static DEFINE_MUTEX(pkv_lock);", "static DEFINE_MUTEX(pkv_lock)"))
    (copy / "tests" / "other.lua").write_text('test("a test on another profile runs", function()\n'
                                               '  assert(provium.create("minimal"))\nend)\n')
    result = suite.run("run", "tests/", "--json", "events.json", cwd=copy, timeout=300)
    out = result.stdout
    assert result.returncode == 1
    assert out.count("building profile 'kmod'") == 1, "built once, however many tests ask"
    assert "profile 'kmod': build failed (exit 2): make -s -C module" in out
    assert re.search(r"provium_kv\.c:\d+:\d+: error", out), out
    assert re.search(r"ok +a test on another profile runs", out)
    tests = count_tests(copy)
    assert out.splitlines()[-1] == f"1 passed, {tests - 1} failed, 0 skipped"
    assert (copy / "events.json").read_text().splitlines()[-1].startswith('{"time"'), "the reports are written"
    assert suite.qemu_pids() == []


def clean_copy(suite, name):
    """The example as a fresh clone has it: no build outputs."""
    copy = suite.root / name
    shutil.copytree(EXAMPLES / name, copy, ignore=shutil.ignore_patterns("*.ko", "*.o", "*.mod*", ".*.cmd",
                                                                           "Module.symvers", "modules.order"))
    return copy


def test_fixtures_build_on_a_clean_checkout_runs_the_profile_build_first(suite):
    """Warming the fixture cache as a CI step of its own: the module must be built for it."""
    copy = clean_copy(suite, "kmod")
    cache = {"XDG_CACHE_HOME": str(suite.root / "cache")}
    built = suite.run("fixtures", "build", cwd=copy, env=cache, timeout=600)
    assert built.returncode == 0, built.stdout + built.stderr
    assert re.search(r"provium: building profile 'kmod' for \S+: make -s -C module", built.stderr), built.stderr
    assert re.search(r"^kmod: [0-9a-f]{32}/[0-9a-f]{32} \(\d+\.\d+ s\)$", built.stdout, re.M), built.stdout
    run = suite.run("run", "tests/", "-k", "SET then", cwd=copy, env=cache, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    listed = suite.run("fixtures", "list", cwd=copy, env=cache)
    assert len([line for line in listed.stdout.splitlines() if line.startswith("kmod ")]) == 1, "no rebuild"
    assert suite.qemu_pids() == []


def test_two_checkouts_of_a_suite_boot_their_own_module_from_one_cache(suite):
    """The fixture's .ko comes from each checkout's own build directory: its entry records it by the
    profile's build directory, not by that directory's place in the cache (which depends on the suite)."""
    first, second = clean_copy(suite, "kmod"), suite.root / "second"
    shutil.copytree(first, second)
    source = second / "module" / "provium_kv.c"
    source.write_text(source.read_text().replace('"provium_kv: loaded\\n"', '"provium_kv: loaded, second\\n"'))
    check = ('test("loaded", function()\n'
             '  print(provium.fixture("kmod"):dmesg("provium_kv: loaded"))\n  error("show")\nend)\n')
    cache = {"XDG_CACHE_HOME": str(suite.root / "cache")}
    for copy, expected in ((first, "provium_kv: loaded\n"), (second, "provium_kv: loaded, second"),
                           (first, "provium_kv: loaded\n")):
        (copy / "tests" / "loaded.lua").write_text(check)
        out = suite.run("run", "tests/loaded.lua", cwd=copy, env=cache, timeout=600).stdout
        assert expected in out and ("second" in out) == ("second" in expected), out
    assert suite.qemu_pids() == []


def test_a_kernel_warning_fails_the_test_that_provoked_it(suite):
    copy = clean_copy(suite, "kmod")
    (copy / "tests" / "warn.lua").write_text("""\
local pkv = require("lib.pkv")
local function debug_fd(vm)
  assert(vm:exec("rmmod provium_kv && insmod /root/provium_kv.ko debug_ioctls=1").ok)
  vm:wait_until(function() return vm:exec("test -c /dev/provium_kv").ok end, {timeout = 5, interval = 0.05})
  return pkv.open(vm)
end
local shared = provium.fixture("kmod")
local fd = debug_fd(shared)
test("warns", function()
  shared:ioctl(fd, pkv.DEBUG_WARN, 1)
  shared:exec("true")
end)
test("the same VM serves the next test", function()
  assert_eq(0, shared:ioctl(fd, pkv.DEBUG_WARN, 0))
end)
test("allowed here", {allow_warnings = true}, function()
  assert_eq(0, shared:ioctl(fd, pkv.DEBUG_WARN, 1))
end)
test("not allowed again", function()
  shared:ioctl(fd, pkv.DEBUG_WARN, 1)
end)
""")
    result = suite.run("run", "tests/warn.lua", cwd=copy, timeout=600)
    out = result.stdout
    assert result.returncode == 1, out + result.stderr
    assert out.splitlines()[-1] == "2 passed, 2 failed, 0 skipped", out
    assert re.search(r"ERROR warns \(\d+\.\d+ s\)\n *tests/warn\.lua:10: .*kernel warning: WARNING: CPU: \d+ PID: \d+ "
                     r"at \S*provium_kv\.c:\d+ pkv_ioctl", out), out
    assert re.search(r"--- kernel warning ---\n *------------\[ cut here \]------------\n *WARNING: CPU", out), out
    assert re.search(r"ok +the same VM serves the next test", out)
    assert re.search(r"ok +allowed here", out)
    assert re.search(r"ERROR not allowed again", out)
    assert suite.qemu_pids() == []
