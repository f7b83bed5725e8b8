"""Profiles as files: profiles/NAME.yaml beside provium.toml's [profiles.NAME], and `provium profiles`."""

import os

import pytest

from provium import config
from provium.config import newest_host_kernel

HOST_KERNEL, HOST_MODULES = newest_host_kernel()
RELEASE = HOST_MODULES.name


def test_a_yaml_profile_and_a_toml_profile_boot_in_one_suite(suite):
    suite.write("provium.toml", '[profiles.small]\nmemory = "256M"\n')
    suite.write("profiles/wide.yaml", """\
        # two vCPUs and a module at boot
        cpus: 2
        memory: 384M
        modules:
          - dummy
        """)
    suite.write("t.lua", """\
        local function mem_kib(vm)
          return tonumber(vm:exec("sed -n 's/^MemTotal: *\\\\([0-9]*\\\\) kB/\\\\1/p' /proc/meminfo").stdout.trim())
        end
        test("the TOML profile", function()
          local vm = provium.create("small")
          vm:boot()
          assert_eq("1", vm:exec("nproc").stdout.trim())
          assert(mem_kib(vm) < 256 * 1024, "256M guest")
        end)
        test("the YAML profile", function()
          local vm = provium.create("wide")
          vm:boot()
          assert_eq("2", vm:exec("nproc").stdout.trim())
          local kib = mem_kib(vm)
          assert(kib > 256 * 1024 and kib < 384 * 1024, "384M guest: " .. kib)
          assert(vm:exec("grep -q '^dummy ' /proc/modules").ok, "dummy loaded at boot")
        end)
        """)
    result = suite.run("run", "t.lua")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[-1] == "2 passed, 0 failed, 0 skipped"
    assert suite.qemu_pids() == []


def test_paths_in_a_profile_file_resolve_against_the_suite_root(tmp_path):
    (tmp_path / "provium.toml").write_text("")
    (tmp_path / "kernels").mkdir()
    os.symlink(HOST_KERNEL, tmp_path / "kernels" / "vmlinuz")
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "mine.yml").write_text("kernel: kernels/vmlinuz\nmodules_dir: " + str(HOST_MODULES) + "\n")
    profile = config.load(tmp_path / "profiles").profile("mine")
    assert profile.kernel == tmp_path / "kernels" / "vmlinuz"
    assert profile.where("kernel") == f"{tmp_path}/profiles/mine.yml:1: profile 'mine': key 'kernel'"


ALLOWED = ("allow_warnings, available_modules, build, cmdline, cpus, debug_symbols, initrd, kconfig, kernel, "
           "kernel_source, leak_check, memory, modules, modules_dir, qemu_args")


@pytest.mark.parametrize("files, message", [
    ({"profiles/x.yaml": "memory: 1G\n  cpus: 2\n"},
     "profiles/x.yaml:2:7: YAML syntax error: mapping values are not allowed here"),
    ({"profiles/x.yaml": "modules: [dummy\n"},
     "profiles/x.yaml:2:1: YAML syntax error: while parsing a flow sequence: expected ',' or ']', but got '<stream end>'"),
    ({"profiles/x.yaml": "memory: 1G\nmemroy: 2G\n"},
     f"profiles/x.yaml:2: profile 'x': key 'memroy': unknown key (allowed: {ALLOWED})"),
    ({"profiles/x.yaml": "memory: 1G\ncpus: two\n"},
     "profiles/x.yaml:2: profile 'x': key 'cpus': must be an integer, not a string"),
    ({"profiles/x.yaml": "\n\nmemory: 512\n"},
     "profiles/x.yaml:3: profile 'x': key 'memory': must be a string, not an integer"),
    ({"profiles/x.yaml": "kernel:\n"},
     "profiles/x.yaml:1: profile 'x': key 'kernel': must be a string, not null"),
    ({"profiles/x.yaml": "cpus: 2\nmodules: dummy\n"},
     "profiles/x.yaml:2: profile 'x': key 'modules': must be a list, not a string"),
    ({"profiles/x.yaml": "memory: lots\n"},
     "profiles/x.yaml:1: profile 'x': key 'memory': memory 'lots' is not a size like \"512M\" or \"1G\""),
    ({"profiles/x.yaml": "memory: 1G\ncpus: 2\nmemory: 2G\n"},
     "profiles/x.yaml:3: profile 'x': key 'memory': given twice (first on line 1)"),
    ({"profiles/x.yaml": "memory: 1G\n---\ncpus: 2\n"},
     "profiles/x.yaml:2:1: YAML syntax error: expected a single document in the stream, but found another document"),
    ({"profiles/x.yaml": "memory: '512'\n"},
     "profiles/x.yaml:1: profile 'x': key 'memory': memory '512' is 512 bytes: give a unit (\"512M\" for MiB)"),
    ({"profiles/x.yaml": "kernel: /etc/hostname\n"},
     "profiles/x.yaml:1: profile 'x': key 'kernel': /etc/hostname: no compressed ELF kernel (xz, zstd, gzip or lz4) "
     "found in the kernel image"),
    ({"profiles/x.yaml/keys": "memory: 1G\n"},
     "profiles/x.yaml: not a profile file (a directory, or a link to nothing)"),
    ({"profiles/x.yaml": "- memory: 1G\n"},
     "profiles/x.yaml:1: a profile file holds the profile's keys (\"memory: 1G\" on its own line, ...), not a sequence"),
    ({"profiles/x.yaml": b"cmdline: \"caf\xe9\"\n"},
     "profiles/x.yaml:1: not UTF-8 text (byte 0xe9)"),
    ({"provium.toml": '[profiles.x]\nmemory = "1G"\n', "profiles/x.yaml": "memory: 2G\n"},
     "profile 'x' is defined twice: in {root}/provium.toml [profiles.x] and in {root}/profiles/x.yaml"),
    ({"profiles/x.yaml": "memory: 1G\n", "profiles/x.yml": "memory: 2G\n"},
     "profile 'x' is defined twice: in {root}/profiles/x.yaml and in {root}/profiles/x.yml"),
])
def test_a_malformed_profile_file_is_one_line_naming_file_line_and_key_with_exit_2(suite, files, message):
    for name, content in files.items():
        path = suite.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    suite.write("t.lua", 'test("x", function() error("must not run") end)\n')
    message = message.format(root=suite.root)
    expected = f"provium: {message}\n" if message.startswith("profile ") else f"provium: {suite.root}/{message}\n"
    result = suite.run("run", "t.lua")
    assert (result.returncode, result.stdout, result.stderr) == (2, "", expected)
    listed = suite.run("profiles")  # lists the profiles it can, when the files themselves are sound
    assert (listed.returncode, listed.stderr) == (2, expected)


@pytest.mark.parametrize("text", ["", "# every default\n", "---\n", "---\n# every default\n", "~\n", "{}\n"])
def test_an_empty_profile_file_is_a_profile_with_every_default(tmp_path, text):
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "plain.yaml").write_text(text)
    assert config.load(tmp_path).profile("plain").memory_mib == config.load(tmp_path).profile("minimal").memory_mib


def test_provium_profiles_lists_where_each_is_defined_and_what_it_boots(suite):
    suite.write("provium.toml", '[profiles.small]\nmemory = "256M"\n\n[profiles.debian]\n'
                                'kernel = "apt:linux-image-cloud-amd64"\n')
    suite.write("profiles/wide.yaml", "cpus: 2\nmemory: 2G\nmodules: [dummy]\navailable_modules: [loop, veth]\n")
    suite.write("profiles/tiny.yaml", "kernel_source: apt:linux-source-6.12\nkconfig: [minimal]\n")
    suite.write("profiles/broken.yaml", "kernel: missing/bzImage\n")
    empty_cache = {"XDG_CACHE_HOME": str(suite.root / "cache")}
    result = suite.run("profiles", env=empty_cache)
    assert result.returncode == 2
    rows = [line.split("  ") for line in result.stdout.splitlines()]
    rows = [[cell.strip() for cell in row if cell.strip()] for row in rows]
    assert rows == [
        ["PROFILE", "DEFINED IN", "KERNEL", "RELEASE", "MODULES", "MEMORY", "CPUS"],
        ["broken", "profiles/broken.yaml", "-", "-", "-", "-", "-"],
        ["debian", "provium.toml", "apt:linux-image-cloud-amd64", "(not fetched yet)", "-", "512M", "1"],
        ["minimal", "built-in", str(HOST_KERNEL), RELEASE, "-", "512M", "1"],
        ["small", "provium.toml", str(HOST_KERNEL), RELEASE, "-", "256M", "1"],
        ["tiny", "profiles/tiny.yaml", "apt:linux-source-6.12 + minimal", "(not built yet)", "-", "512M", "1"],
        ["wide", "profiles/wide.yaml", str(HOST_KERNEL), RELEASE, "dummy (available: loop,veth)", "2G", "2"],
    ]
    assert result.stderr == (f"provium: {suite.root}/profiles/broken.yaml:1: profile 'broken': key 'kernel': "
                             f"file not found: {suite.root}/missing/bzImage\n")
    (suite.root / "profiles" / "broken.yaml").unlink()
    assert suite.run("profiles", env=empty_cache).returncode == 0
