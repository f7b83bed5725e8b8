"""Kernels built from source (provium.kbuild) with Kconfig fragments (provium.kconfig).

Tests marked `kbuild` fetch linux-source-6.12 through apt and build it (3-4
minutes on 2 cores, once per session, in a cache of their own); the others
need no kernel tree.
"""

import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import build_hello, vermagic

from provium import kbuild, kconfig
from provium.cache import Cache
from provium.errors import ConfigError, ImageError

APT_SOURCE = "apt:linux-source-6.12"



def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def one_line_error(excinfo):
    message = str(excinfo.value)
    assert "\n" not in message, message
    return message


# ---- errors found before anything is fetched or built ----

def test_unknown_builtin_fragment_names_the_known_ones(tmp_path):
    with pytest.raises(ConfigError) as excinfo:
        kbuild.build(APT_SOURCE, ["minimall"], Cache(tmp_path / "cache"), print, tmp_path)
    message = one_line_error(excinfo)
    assert "'minimall'" in message and "debug, minimal" in message


def test_missing_fragment_file_is_named(tmp_path):
    with pytest.raises(ConfigError) as excinfo:
        kbuild.build(APT_SOURCE, ["minimal", "fragments/nope.config"], Cache(tmp_path / "cache"), print, tmp_path)
    message = one_line_error(excinfo)
    assert "fragments/nope.config" in message and "not found" in message


def test_fragment_with_a_bad_line_gives_file_and_line(tmp_path):
    write(tmp_path / "fragments/bad.config", "CONFIG_NET=y\nNET=y\n")
    with pytest.raises(ConfigError) as excinfo:
        kbuild.build(APT_SOURCE, ["fragments/bad.config"], Cache(tmp_path / "cache"), print, tmp_path)
    assert "bad.config:2: not a Kconfig line" in one_line_error(excinfo)


def test_missing_source_path(tmp_path):
    with pytest.raises(ConfigError) as excinfo:
        kbuild.build("linux", ["minimal"], Cache(tmp_path / "cache"), print, tmp_path)
    message = one_line_error(excinfo)
    assert "no such directory" in message and str(tmp_path / "linux") in message


def test_tree_built_in_place_is_refused_with_the_fix(tmp_path):
    for name in ("Makefile", "Kconfig", ".config"):
        write(tmp_path / "linux" / name, "")
    with pytest.raises(ConfigError) as excinfo:
        kbuild.build("linux", ["minimal"], Cache(tmp_path / "cache"), print, tmp_path)
    assert "make mrproper" in one_line_error(excinfo)


def test_unknown_apt_package(tmp_path):
    with pytest.raises(ConfigError) as excinfo:
        kbuild.build("apt:linux-source-0.0-provium-none", ["minimal"], Cache(tmp_path / "cache"), print, tmp_path)
    assert "apt knows no package 'linux-source-0.0-provium-none'" in one_line_error(excinfo)


# ---- fragments and Kconfig, on small made-up trees ----

def test_merge_later_fragments_win_and_unset_lines_count(tmp_path):
    write(tmp_path / "a.config", "CONFIG_A=y\nCONFIG_B=y\n")
    write(tmp_path / "b.config", "# CONFIG_A is not set\nCONFIG_C=\"x\"\n")
    fragments = kconfig.resolve(["a.config", "b.config"], tmp_path)
    merged = kconfig.merge("CONFIG_A=m\n# CONFIG_B is not set\nCONFIG_D=y\n", fragments)
    assert merged == "# CONFIG_A is not set\nCONFIG_B=y\nCONFIG_D=y\nCONFIG_C=\"x\"\n"
    assert kconfig.requested(fragments) == {"CONFIG_A": ("n", "b.config"), "CONFIG_B": ("y", "a.config"),
                                            "CONFIG_C": ('"x"', "b.config")}


def test_builtin_fragments_parse_and_ask_for_what_the_guest_needs():
    fragments = kconfig.resolve(["minimal", "debug"], Path("."))
    wanted = kconfig.requested(fragments)
    for name in ("VIRTIO_MMIO", "VIRTIO_CONSOLE", "DEVTMPFS", "TMPFS", "UNIX98_PTYS", "MODULES", "BUG",
                 "SECURITY_LANDLOCK", "SECCOMP_FILTER", "KASAN", "PROVE_LOCKING", "DEBUG_KMEMLEAK"):
        assert wanted[f"CONFIG_{name}"][0] == "y", name
    assert wanted["CONFIG_DEBUG_KMEMLEAK_AUTO_SCAN"] == ("n", "debug")


def _small_tree(root):
    write(root / "Kconfig", """\
        config ALPHA
        \tbool "alpha"

        source "sub/Kconfig"
        """)
    write(root / "sub/Kconfig", """\
        menu "things"
        \tdepends on ALPHA

        if BETA

        config GAMMA
        \tbool "gamma"
        \tdepends on ALPHA && \\
        \t\t!DELTA
        \tselect OMEGA
        \thelp
        \t  depends on NOTHING: help text is not a condition
        \t  config NOT_A_SYMBOL

        endif

        config OMEGA
        \tbool
        endmenu
        """)
    return root


def test_kconfig_explains_a_dropped_option_with_its_conditions(tmp_path):
    tree = kconfig.KconfigTree(_small_tree(tmp_path / "tree"))
    assert "NOT_A_SYMBOL" not in tree.entries
    line = tree.explain("CONFIG_GAMMA", "y", "fragments/g.config", {"CONFIG_ALPHA": "y"})
    assert line.startswith("kconfig: CONFIG_GAMMA=y from fragment 'fragments/g.config' was dropped by Kconfig: ")
    assert "sub/Kconfig:6: depends on ALPHA && !DELTA" in line
    assert "inside 'if BETA' (sub/Kconfig:4)" in line
    assert "inside a menu that depends on ALPHA (sub/Kconfig:2)" in line
    assert "NOTHING" not in line


def test_kconfig_names_what_selects_an_option_a_fragment_turned_off(tmp_path):
    tree = kconfig.KconfigTree(_small_tree(tmp_path / "tree"))
    line = tree.explain("CONFIG_OMEGA", "n", "mine", {"CONFIG_GAMMA": "y", "CONFIG_OMEGA": "y"})
    assert "changed to CONFIG_OMEGA=y" in line and line.endswith("selected by GAMMA")


def test_kconfig_says_when_an_option_does_not_exist(tmp_path):
    tree = kconfig.KconfigTree(_small_tree(tmp_path / "tree"))
    assert "no 'config NOPE'" in tree.explain("CONFIG_NOPE", "y", "mine", {})


# ---- what identifies a source tree ----

def test_plain_tree_identity_follows_edits(tmp_path):
    write(tmp_path / "t/a.c", "int a;\n")
    before = kbuild._listing_identity(tmp_path / "t")
    assert kbuild._listing_identity(tmp_path / "t") == before
    write(tmp_path / "t/sub/b.c", "int b;\n")
    assert kbuild._listing_identity(tmp_path / "t") != before


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_git_identity_covers_diff_and_untracked_but_not_ignored_files(tmp_path):
    tree = tmp_path / "t"
    write(tree / "a.c", "int a;\n")
    write(tree / ".gitignore", "*.o\n")
    git = ["git", "-C", str(tree), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "one"], check=True)
    clean = kbuild._git_identity(tree)
    write(tree / "a.o", "object")
    assert kbuild._git_identity(tree) == clean
    write(tree / "new.c", "int n;\n")
    untracked = kbuild._git_identity(tree)
    assert untracked != clean
    write(tree / "new.c", "int m;\n")
    assert kbuild._git_identity(tree) != untracked
    (tree / "new.c").unlink()
    write(tree / "a.c", "int b;\n")
    assert kbuild._git_identity(tree) not in (clean, untracked)


# ---- real builds ----

@pytest.fixture(scope="session")
def kernel_cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("kbuild-cache")
    yield Cache(root)
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def minimal_kernel(kernel_cache, tmp_path_factory):
    lines = []
    started = time.monotonic()
    tree = kbuild.build(APT_SOURCE, ["minimal"], kernel_cache, lines.append, tmp_path_factory.mktemp("suite"))
    return tree, lines, time.monotonic() - started


@pytest.mark.kbuild
def test_minimal_kernel_builds_with_everything_a_profile_needs(minimal_kernel):
    tree, lines, _ = minimal_kernel
    assert any(line.startswith("kbuild: built in") for line in lines), lines
    assert tree.image.read_bytes()[:4] == b"\x7fELF"
    assert tree.release == (tree.build_dir / "include/config/kernel.release").read_text().strip()
    assert tree.release.startswith("6.12.")
    assert tree.modules_dir == tree.image.parent / "modules/lib/modules" / tree.release
    assert (tree.modules_dir / "modules.dep").is_file()
    assert "kernel/drivers/virtio/virtio_mmio.ko" in (tree.modules_dir / "modules.builtin").read_text()
    assert (tree.modules_dir / "build").resolve() == tree.build_dir.resolve()
    config = kconfig.parse(tree.config.read_text())
    assert config["CONFIG_VIRTIO_MMIO"] == "y" and config["CONFIG_64BIT"] == "y"
    assert tree.source == APT_SOURCE


@pytest.mark.kbuild
def test_an_unchanged_kernel_runs_no_make(minimal_kernel, kernel_cache, tmp_path):
    first, _, _ = minimal_kernel
    stamps = [p.stat().st_mtime_ns for p in (first.image, first.build_dir / ".config", first.build_dir / "vmlinux")]
    lines = []
    started = time.monotonic()
    again = kbuild.build(APT_SOURCE, ["minimal"], kernel_cache, lines.append, tmp_path)
    assert time.monotonic() - started < 5
    assert again == first
    assert lines == []
    assert stamps == [p.stat().st_mtime_ns for p in (first.image, first.build_dir / ".config",
                                                      first.build_dir / "vmlinux")]


@pytest.mark.kbuild
def test_an_out_of_tree_module_builds_against_the_build_dir(minimal_kernel, tmp_path):
    tree, _, _ = minimal_kernel
    magic = vermagic(build_hello(tree.modules_dir / "build", tmp_path / "hello"))
    assert magic.split()[0] == tree.release
    assert magic.encode() + b"\0" in tree.image.read_bytes()  # the kernel's own VERMAGIC_STRING


@pytest.mark.kbuild
def test_options_kconfig_drops_are_named_before_anything_compiles(minimal_kernel, kernel_cache, tmp_path):
    write(tmp_path / "fragments/gpu.config", """\
        # needs DRM, which neither tinyconfig nor minimal turns on
        CONFIG_DRM_I915=y
        # needs SLUB_TINY off
        CONFIG_KASAN=y
        """)
    lines = []
    with pytest.raises(ConfigError) as excinfo:
        kbuild.build(APT_SOURCE, ["minimal", "fragments/gpu.config"], kernel_cache, lines.append, tmp_path)
    i915, kasan = str(excinfo.value).splitlines()
    assert i915.startswith("kconfig: CONFIG_DRM_I915=y from fragment 'fragments/gpu.config' was dropped")
    assert "drivers/gpu/drm/i915/Kconfig:2: depends on DRM; depends on X86 && PCI" in i915 and "DRM=n" in i915
    assert kasan.startswith("kconfig: CONFIG_KASAN=y from fragment 'fragments/gpu.config' was dropped")
    assert "depends on SYSFS && !SLUB_TINY" in kasan and "SLUB_TINY=y" in kasan
    assert not any("building" in line for line in lines), lines
    # configured (the scratch .config is there), never accepted nor built
    rejected = [d for d in kernel_cache.root.glob("kbuild/*/build") if not (d / ".config").exists()]
    assert len(rejected) == 1 and (rejected[0] / ".provium.config").is_file()
    assert not [o for o in rejected[0].rglob("*.o") if o.relative_to(rejected[0]).parts[0] != "scripts"]


@pytest.mark.kbuild
def test_a_path_source_is_configured_out_of_tree_and_never_written(minimal_kernel, tmp_path):
    tree, _, _ = minimal_kernel
    source = tree.build_dir / "source"  # the unpacked package: a plain tree the user might own
    before = kbuild._listing_identity(source.resolve())
    write(tmp_path / "fragments/gpu.config", "CONFIG_DRM_I915=y\n")
    with pytest.raises(ConfigError) as excinfo:
        kbuild.build(str(source.resolve()), ["minimal", "fragments/gpu.config"], Cache(tmp_path / "cache"),
                     print, tmp_path)
    assert "CONFIG_DRM_I915=y from fragment 'fragments/gpu.config' was dropped" in one_line_error(excinfo)
    assert kbuild._listing_identity(source.resolve()) == before


# ---- caching and locking, on a fake kernel tree whose make only counts builds ----

FAKE_MAKEFILE = """\
KCONFIG_CONFIG ?= .config
tinyconfig:
\t@printf 'CONFIG_64BIT=y\\n# CONFIG_MODULES is not set\\n' > $(O)/$(KCONFIG_CONFIG)
olddefconfig:
\t@true
vmlinux:
\t@echo "  CC      init/main.o"
\t@sleep 1
\t@mkdir -p $(O)/include/config
\t@echo 6.12.0-fake > $(O)/include/config/kernel.release
\t@printf '\\177ELF' > $(O)/vmlinux
\t@touch $(O)/System.map
\t@echo built >> $(FAKE_BUILDS)
"""

BUILD_ONCE = """\
import sys
from pathlib import Path
from provium import kbuild
from provium.cache import Cache
tree = kbuild.build("linux", ["fake.config"], Cache(sys.argv[1]), lambda line: None, Path(sys.argv[2]))
print(tree.image)
"""


@pytest.fixture
def fake_tree(tmp_path, monkeypatch):
    write(tmp_path / "linux/Makefile", FAKE_MAKEFILE)
    write(tmp_path / "linux/Kconfig", "config 64BIT\n\tbool\n")
    write(tmp_path / "fake.config", "CONFIG_64BIT=y\n")
    monkeypatch.setenv("FAKE_BUILDS", str(tmp_path / "builds"))
    return tmp_path


def builds(root):
    path = root / "builds"
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_two_processes_asking_at_once_build_once(fake_tree):
    command = [sys.executable, "-c", BUILD_ONCE, str(fake_tree / "cache"), str(fake_tree)]
    both = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    images = [p.communicate(timeout=120)[0].strip() for p in both]
    assert [p.returncode for p in both] == [0, 0]
    assert images[0] == images[1] and Path(images[0]).read_bytes() == b"\x7fELF"
    assert builds(fake_tree) == 1


def test_a_changed_tree_rebuilds_in_its_build_dir_and_a_kernel_without_modules_gets_a_tree(fake_tree):
    cache = Cache(fake_tree / "cache")
    first = kbuild.build("linux", ["fake.config"], cache, print, fake_tree)
    assert (first.modules_dir / "modules.dep").read_text() == ""
    assert (first.modules_dir / "build").resolve() == first.build_dir.resolve()
    assert first.release == "6.12.0-fake" and first.config.read_text().startswith("CONFIG_64BIT=y")
    write(fake_tree / "linux/init/main.c", "int changed;\n")
    second = kbuild.build("linux", ["fake.config"], cache, print, fake_tree)
    assert builds(fake_tree) == 2
    assert second.build_dir == first.build_dir and second.image != first.image
    assert first.image.is_file() and second.image.is_file()
    # back to the first state: its kernel is cached, but the build dir (which out-of-tree modules
    # are built against) holds the second one, so it is brought back, incrementally
    (fake_tree / "linux/init/main.c").unlink()
    assert kbuild.build("linux", ["fake.config"], cache, print, fake_tree) == first
    assert builds(fake_tree) == 3
    assert kbuild.build("linux", ["fake.config"], cache, print, fake_tree) == first
    assert builds(fake_tree) == 3


# ---- make's output: progress and failures ----

FAILING_MAKEFILE = """\
all:
\t@echo "  CC      kernel/fork.o"
\t@echo "  CC      kernel/exit.o"
\t@echo "kernel/exit.c:12:3: error: 'oops' undeclared (first use in this function)"
\t@for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31 32 33 34 35; do \\
\t  echo "  CC      drivers/file$$i.o"; done
\t@exit 2
"""


def test_a_failing_build_ends_with_the_error_lines_then_makes_tail(tmp_path, monkeypatch):
    write(tmp_path / "tree/Makefile", FAILING_MAKEFILE)
    (tmp_path / "build").mkdir()
    monkeypatch.setattr(kbuild, "PROGRESS_EVERY", 0.0)
    lines = []
    with pytest.raises(ImageError) as excinfo:
        kbuild._make(tmp_path / "tree", tmp_path / "build", ["all"], "build.log", lines.append)
    message = str(excinfo.value).splitlines()
    assert message[0].startswith("kernel build failed: make all exited with status 2")
    assert message[1] == "kernel/exit.c:12:3: error: 'oops' undeclared (first use in this function)"
    marker = message.index("--- the end of make's output ---")
    assert message[2:marker] == [message[-1]] and message[-1].startswith("make: *** [")
    assert message[-2] == "  CC      drivers/file35.o"
    assert "  CC      kernel/fork.o" not in message  # the tail only
    assert lines[0].startswith("kbuild: 1 files compiled in") and "(CC kernel/fork.o)" in lines[0]
    assert "kernel/exit.c:12:3: error" in (tmp_path / "build/build.log").read_text()
