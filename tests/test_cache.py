"""The cache as a whole: one setting places it, it travels (copied elsewhere, it still hits and names no
absolute path of where it was built), and `provium cache info|prune` report and trim it."""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time

import pytest

from provium import cache_admin, config, kbuild
from provium.cache import ENV, Cache, default_root
from provium.errors import ConfigError

# ---- one setting places the whole cache ----


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def test_the_suite_setting_places_the_cache_and_the_environment_wins(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    write(tmp_path / "suite/provium.toml", '[cache]\ndir = "../shared/cache"\n')
    suite = config.load(tmp_path / "suite")
    cache = Cache.for_suite(suite)
    assert cache.root == tmp_path / "shared/cache"  # relative to the suite root
    assert cache.setting == f"{tmp_path / 'suite/provium.toml'} [cache] dir"
    assert Cache().root == default_root() == tmp_path / "xdg/provium"  # no suite known: the default
    monkeypatch.setenv(ENV, str(tmp_path / "env"))
    assert Cache.for_suite(suite).root == Cache().root == default_root() == tmp_path / "env"
    assert Cache.for_suite(suite).setting == f"environment variable {ENV}"
    monkeypatch.delenv(ENV)
    plain = config.load(tmp_path / "other")  # no provium.toml: the default
    assert Cache.for_suite(plain).root == tmp_path / "xdg/provium"


@pytest.mark.parametrize("table, message", [
    ('[cache]\ndir = 3\n', "[cache]: key 'dir': must be a string, not an integer"),
    ('[cache]\ndir = ""\n', "[cache]: key 'dir': must not be empty"),
    ('[cache]\nmax = "5G"\n', "[cache]: unknown key 'max' (allowed: dir, max_size)"),
    ('[cache]\nmax_size = "5X"\n', "[cache]: max_size '5X' is not a size like \"5G\" or \"500M\""),
    ('cache = "x"\n', "'cache' must be a table"),
])
def test_a_bad_cache_table_is_one_line_naming_file_and_key(tmp_path, table, message):
    path = write(tmp_path / "provium.toml", table)
    with pytest.raises(ConfigError) as error:
        config.load(tmp_path)
    assert str(error.value) == f"{path}: {message}"


# ---- a fixture cache travels ----

BASE = """\
local vm = provium.create("minimal")
vm:boot{memory = "256M", disks = {{path = "data.img", format = "raw"}}}
assert(vm:exec("printf base-data | dd of=/dev/vda conv=fsync 2>/dev/null").ok)
assert(vm:exec("cat /proc/sys/kernel/random/uuid > /tmp/token").ok)
return vm
"""

DERIVED = """\
local vm = provium.fixture("base")
assert(vm:exec("printf derived | dd of=/dev/vda bs=1 seek=16 conv=fsync,notrunc 2>/dev/null").ok)
vm:write_file("/tmp/derived", "on top")
return vm
"""

TEST = """\
test("the fixture comes back as it was built", function()
  local vm = provium.fixture("derived")
  assert_eq("on top", vm:read_file("/tmp/derived"))
  assert_eq("base-data", vm:exec("head -c 9 /dev/vda").stdout.value)
  assert_eq("derived", vm:exec("dd if=/dev/vda bs=1 skip=16 count=7 2>/dev/null").stdout.value)
end)
test("which boot it is", function()
  todo("TOKEN=" .. provium.fixture("derived"):read_file("/tmp/token"))  -- shown with the skip
end)
"""


def fixture_entries(cache_root):
    """(fixture/KEY/VARIANT, created) of every fixture entry: a rebuild changes one or adds one."""
    return {(str(p.parent.relative_to(cache_root / "fixtures")), json.loads(p.read_text())["created"])
            for p in (cache_root / "fixtures").glob("*/*/*/manifest.json")}


def token(result):
    found = re.findall(r"TOKEN=([0-9a-f-]{36})", result.stdout + result.stderr)
    assert len(found) == 1, result.stdout + result.stderr
    return found[0]


def naming(root, text):
    """Files under root whose bytes contain `text`, and symlinks under it with an absolute target."""
    grep = subprocess.run(["grep", "-rl", "--binary-files=text", "-F", text, str(root)], capture_output=True,
                          text=True)
    links = [str(p) for p in root.rglob("*") if p.is_symlink() and os.readlink(p).startswith("/")]
    return grep.stdout.split() + links


def test_a_copied_fixture_cache_hits_elsewhere_and_names_no_path_of_where_it_was(suite, monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    suite.write("provium.toml", '[cache]\ndir = "cache-a"\n')
    (suite.root / "fixtures").mkdir()
    (suite.root / "fixtures/data.img").write_bytes(bytes(1024 * 1024))
    suite.write("fixtures/base.lua", BASE)
    suite.write("fixtures/derived.lua", DERIVED)
    suite.write("t.lua", TEST)
    original = suite.root / "cache-a"
    xdg = {"XDG_CACHE_HOME": str(suite.root / "xdg")}  # where the cache would be without the settings

    started = time.monotonic()
    first = suite.run("run", "t.lua", env=xdg)
    print(f"first run, building both fixtures: {time.monotonic() - started:.1f} s")
    assert first.returncode == 0, first.stdout + first.stderr
    built = fixture_entries(original)
    assert {entry.split("/")[0] for entry, _ in built} == {"base", "derived"}  # in the provium.toml setting's
    # the derived fixture's disk is backed by the base's, in the cache: named relative to it
    derived_disk = next((original / "fixtures/derived").glob("*/*/disk0.qcow2"))
    header = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(derived_disk)],
                                       capture_output=True, text=True, check=True).stdout)
    assert not header["backing-filename"].startswith("/"), header

    moved = suite.root.parent / "elsewhere" / "moved-cache"
    moved.parent.mkdir()
    subprocess.run(["cp", "-a", str(original), str(moved)], check=True)
    shutil.rmtree(original)
    # what was exercised names no path of the old place
    assert {"agent", "vmlinux", "initramfs", "fixtures"} <= {p.name for p in moved.iterdir()}
    assert naming(moved, str(original)) == []

    started = time.monotonic()
    second = suite.run("run", "t.lua", env={**xdg, ENV: str(moved)})
    print(f"second run, from the moved copy: {time.monotonic() - started:.1f} s")
    assert second.returncode == 0, second.stdout + second.stderr
    assert second.stdout.splitlines()[-1] == "1 passed, 0 failed, 1 skipped"
    assert token(second) == token(first)  # the guest that was built, not a new boot
    assert fixture_entries(moved) == built  # no entry rebuilt, none added
    assert not original.exists()  # PROVIUM_CACHE_DIR won over provium.toml's [cache] dir
    assert not (suite.root / "xdg").exists()  # and neither run used the default
    assert naming(moved, str(original)) == []


# ---- a built kernel travels (a fake kernel tree: make's runs are counted) ----

FAKE_MAKEFILE = """\
KCONFIG_CONFIG ?= .config
tinyconfig:
\t@printf 'CONFIG_64BIT=y\\n# CONFIG_MODULES is not set\\n' > $(O)/$(KCONFIG_CONFIG)
olddefconfig:
\t@true
vmlinux:
\t@mkdir -p $(O)/include/config
\t@echo 6.12.0-fake > $(O)/include/config/kernel.release
\t@printf '\\177ELF' > $(O)/vmlinux
\t@touch $(O)/System.map
\t@echo built >> $(FAKE_BUILDS)
"""


def test_a_moved_kernel_cache_runs_no_make_and_its_links_follow(tmp_path, monkeypatch):
    (tmp_path / "linux").mkdir()
    (tmp_path / "linux/Makefile").write_text(FAKE_MAKEFILE)
    (tmp_path / "linux/Kconfig").write_text("config 64BIT\n\tbool\n")
    (tmp_path / "fake.config").write_text("CONFIG_64BIT=y\n")
    monkeypatch.setenv("FAKE_BUILDS", str(tmp_path / "builds"))
    first = kbuild.build("linux", ["fake.config"], Cache(tmp_path / "a"), print, tmp_path)
    assert not os.readlink(first.modules_dir / "build").startswith("/")
    os.rename(tmp_path / "a", tmp_path / "b")
    again = kbuild.build("linux", ["fake.config"], Cache(tmp_path / "b"), print, tmp_path)
    assert (tmp_path / "builds").read_text() == "built\n"  # make ran once, before the move
    assert (again.modules_dir / "build").resolve() == again.build_dir.resolve()
    assert str(tmp_path / "a") not in str(again)


# ---- cache info and prune ----

def entry(root, kind, key, size=4096, age=0.0, name="data"):
    """An entry KIND/KEY/ holding `name` of `size` bytes, last used `age` seconds ago."""
    path = root / kind / key
    path.mkdir(parents=True, exist_ok=True)
    (path / name).write_bytes(os.urandom(size))
    stamp = time.time() - age
    os.utime(path, (stamp, stamp))
    return path


def admin(*argv, cwd, env=None):
    """`provium cache ARGV`, run in the suite directory `cwd`."""
    return subprocess.run([sys.executable, "-m", "provium", "cache", *argv], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=120)


HOLD = """\
import sys, time
from pathlib import Path
from provium.cache import Cache, locked
cache = Cache(sys.argv[1])
if sys.argv[2] == "use":
    assert cache.use(Path(sys.argv[3]))
    print("held", flush=True)
    time.sleep(60)
else:
    with locked(Path(sys.argv[3]) / "data"):  # a build in progress in it
        print("held", flush=True)
        time.sleep(60)
"""


def hold(root, how, path):
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(root), how, str(path)], stdout=subprocess.PIPE,
                               text=True)
    assert process.stdout.readline().strip() == "held"
    return process


def test_cache_info_counts_entries_and_allocated_blocks_per_kind(tmp_path):
    root = tmp_path / "cache"
    entry(root, "agent", "a1", 8192)
    sparse = entry(root, "fixtures/f/k", "v1", 4096) / "ram"
    with open(sparse, "wb") as f:
        f.truncate(512 * 1024 * 1024)  # 512 MiB apparent, nothing allocated
    linked = entry(root, "archive", "p1", 1024 * 1024)
    os.link(linked / "data", entry(root, "archive", "p2", 0, name="other") / "same")  # one file, two names
    (root / "kernel-index").mkdir()
    (root / "kernel-index/x.json").write_text("{}")
    result = admin("info", cwd=tmp_path, env={ENV: str(root)})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[:2] == [f"cache: {root}", f"set by: environment variable {ENV}"]
    rows = {line.split()[0]: line.split()[1:3] for line in lines[3:]}
    assert rows["agent"][0] == "1" and rows["fixtures"][0] == "1" and rows["archive"][0] == "2"
    assert rows["kernel-index"][0] == "-"
    assert rows["total"][0] == "4"
    fixtures_bytes = float(rows["fixtures"][1][:-1]) * {"K": 1024, "M": 1 << 20}[rows["fixtures"][1][-1]]
    assert fixtures_bytes < 1 << 20  # the sparse RAM file counts for what it occupies
    archive_mb = float(rows["archive"][1][:-1])
    assert rows["archive"][1].endswith("M") and 1.0 <= archive_mb < 1.1  # the hard-linked MiB once
    write(tmp_path / "provium.toml", '[cache]\ndir = "c"\n')
    where = admin("info", cwd=tmp_path).stdout.splitlines()
    assert where[:3] == [f"cache: {tmp_path / 'c'}", f"set by: {tmp_path / 'provium.toml'} [cache] dir",
                         "empty: the directory does not exist yet"]


def test_prune_evicts_least_recently_used_first_within_the_limit_and_skips_what_is_locked(tmp_path):
    root = tmp_path / "cache"
    mib = 1024 * 1024
    oldest = entry(root, "initramfs", "old", mib, age=5000)
    in_use = entry(root, "kernels", "used", mib, age=4000)       # older, but a provium process uses it
    building = entry(root, "kbuild", "busy", mib, age=3500)      # older, but a build holds its lock
    fixture = entry(root, "fixtures/f/key", "variant", mib, age=3000)
    middle = entry(root, "vmlinux", "mid", mib, age=2000)
    touched = entry(root, "agent", "touched", mib, age=6000)     # the oldest, until it is used again
    newest = entry(root, "archive", "new", mib, age=100)
    Cache(root).get_or_build("agent", "touched", "data", lambda out: pytest.fail("it exists"))
    holders = [hold(root, "use", in_use), hold(root, "build", building)]
    for path, age in ((in_use, 4000), (building, 3500)):  # taking the locks was a use: make them old again
        os.utime(path, (time.time() - age, time.time() - age))
    try:
        before = float(admin("info", cwd=tmp_path, env={ENV: str(root)}).stdout.splitlines()[-1].split()[2][:-1])
        result = admin("prune", "--max-size", "4.5M", cwd=tmp_path, env={ENV: str(root)})
    finally:
        for process in holders:
            process.kill()
            process.wait()
    assert result.returncode == 0, result.stderr
    removed = [line.split()[1] for line in result.stdout.splitlines() if line.startswith("removed ")]
    assert removed == ["initramfs/old", "fixtures/f/key/variant", "vmlinux/mid"]  # oldest first, locked ones kept
    kept = [line.split()[1] for line in result.stdout.splitlines() if line.startswith("kept ")]
    assert kept == ["kernels/used:", "kbuild/busy:"]
    assert not oldest.exists() and not fixture.exists() and not (root / "fixtures/f").exists()
    assert not middle.exists() and in_use.exists() and building.exists() and touched.exists() and newest.exists()
    assert re.search(rf"cache {root}: {before}M before, 4\.\dM after \(limit 4\.5M; 3 entries removed\)",
                     result.stdout), result.stdout
    on_disk = int(subprocess.run(["du", "-sk", str(root)], capture_output=True, text=True).stdout.split()[0])
    assert on_disk <= 4.5 * 1024


def test_prune_takes_its_size_from_provium_toml_and_a_bad_size_is_one_line(tmp_path):
    root = tmp_path / "cache"
    entry(root, "agent", "a", 1024 * 1024, age=100)
    write(tmp_path / "provium.toml", '[cache]\ndir = "cache"\nmax_size = "0"\n')
    result = admin("prune", cwd=tmp_path)
    assert result.returncode == 0 and "removed agent/a" in result.stdout, result.stdout + result.stderr
    bad = admin("prune", "--max-size", "5X", cwd=tmp_path)
    assert (bad.returncode, bad.stdout, bad.stderr) == (
        2, "", "provium: --max-size '5X' is not a size like \"5G\" or \"500M\"\n")
    write(tmp_path / "provium.toml", '[cache]\ndir = "cache"\n')
    missing = admin("prune", cwd=tmp_path)
    assert missing.returncode == 2 and len(missing.stderr.splitlines()) == 1
    assert "--max-size" in missing.stderr and "max_size" in missing.stderr


def test_add_arguments_gives_info_and_prune(tmp_path):
    parser = argparse.ArgumentParser(prog="provium cache")
    cache_admin.add_arguments(parser)
    assert parser.parse_args(["prune", "--max-size", "5G"]).max_size == "5G"
    assert parser.parse_args(["info"]).action == "info"
    with pytest.raises(SystemExit):
        parser.parse_args([])


def test_remember_answers_from_memory_until_a_file_changes_and_copes_with_an_unwritable_memory(tmp_path):
    source, other = tmp_path / "source", tmp_path / "other"
    source.write_text("one")
    other.write_text("x")
    time.sleep(2.1)  # remember() keeps nothing about a file changed (its ctime) in the last 2 s
    cache = Cache(tmp_path / "cache")
    calls = []

    def answer():
        calls.append(1)
        return source.read_text()

    assert cache.remember("q", [source], answer) == "one"
    assert cache.remember("q", [source], answer) == "one"
    assert len(calls) == 1  # the second answer came from memory
    source.write_text("two!")
    assert cache.remember("q", [source], answer) == "two!"
    assert len(calls) == 2

    blocked = tmp_path / "blocked"
    blocked.mkdir()
    (blocked / "memo").write_text("a file where the memory's directory would be")
    for _ in range(2):
        assert Cache(blocked).remember("q", [other], lambda: calls.append(1) or 7) == 7
    assert len(calls) == 4  # worked out each time, and no error


def test_remember_does_not_keep_an_answer_about_a_file_changed_just_now(tmp_path):
    cache = Cache(tmp_path / "cache")
    source = tmp_path / "source"
    source.write_text("fresh")
    calls = []
    for _ in range(2):
        assert cache.remember("q", [source], lambda: calls.append(1) or "fresh") == "fresh"
    assert len(calls) == 2  # changed under 2 s ago: the same tick could hide a second change
