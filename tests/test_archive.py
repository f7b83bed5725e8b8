"""provium.archive: the Depends walk on Debian and Ubuntu layouts, and real fetches from the apt archive."""

import os
import re
import shutil
import subprocess
import time

import pytest
from conftest import build_hello, vermagic

from provium import archive
from provium.cache import Cache
from provium.errors import ConfigError

HAS_APT = all(shutil.which(tool) for tool in ("apt-get", "apt-cache", "dpkg-deb"))
needs_apt = pytest.mark.skipif(not HAS_APT, reason="apt-get, apt-cache and dpkg-deb are needed to fetch "
                                                   "archive kernels (a Debian or Ubuntu host)")


# apt-cache show stanzas (trimmed to the fields fetch reads), as Debian 12 and Ubuntu 22.04/24.04 publish them.
DEBIAN_612 = """\
Package: linux-image-6.12.117+deb12-cloud-amd64-unsigned
Version: 6.12.117-1~deb12u1
Depends: kmod, initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool
Pre-Depends: linux-base (>= 4.12~)
Size: 34304772

Package: linux-headers-6.12.117+deb12-cloud-amd64
Version: 6.12.117-1~deb12u1
Depends: linux-base (>= 4.12~), linux-headers-6.12.117+deb12-common (= 6.12.117-1~deb12u1),
 linux-image-6.12.117+deb12-cloud-amd64 (= 6.12.117-1~deb12u1) | linux-image-6.12.117+deb12-cloud-amd64-unsigned
 (= 6.12.117-1~deb12u1), linux-kbuild-6.12.117+deb12, gcc-12
Size: 2931728

Package: linux-headers-6.12.117+deb12-common
Version: 6.12.117-1~deb12u1
Size: 11400576

Package: linux-kbuild-6.12.117+deb12
Version: 6.12.117-1~deb12u1
Depends: libc6 (>= 2.34), libelf1 (>= 0.144), libssl3 (>= 3.0.0), zlib1g (>= 1:1.2.3.3), pahole
Size: 1959272

Package: linux-image-6.12.117+deb12-cloud-amd64
Version: 6.12.117-1~deb12u1
Depends: kmod, initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool
Size: 34395060
"""

# An older 6.1 ABI: linux-kbuild-6.1 has moved on to 6.1.192-2, its relation names the kernel's version.
DEBIAN_61 = """\
Package: linux-image-6.1.0-47-cloud-amd64-unsigned
Version: 6.1.170-3
Depends: kmod, linux-base (>= 4.3~), initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool
Size: 26431404

Package: linux-headers-6.1.0-47-cloud-amd64
Version: 6.1.170-3
Depends: linux-headers-6.1.0-47-common (= 6.1.170-3), linux-kbuild-6.1 (>= 6.1.170-3), linux-compiler-gcc-12-x86
Size: 1407332

Package: linux-headers-6.1.0-47-common
Version: 6.1.170-3
Size: 10333216

Package: linux-kbuild-6.1
Version: 6.1.192-2
Depends: libc6 (>= 2.34), libelf1 (>= 0.142), libssl3 (>= 3.0.0)
Size: 1568188

Package: linux-compiler-gcc-12-x86
Version: 6.1.192-2
Depends: gcc-12
Size: 1309580
"""

# Ubuntu 22.04: the image holds no modules (linux-modules-R does, and depends back on the image);
# the flavour's headers depend on the base headers; there is no kbuild package.
UBUNTU_JAMMY = """\
Package: linux-image-unsigned-5.15.0-91-generic
Source: linux
Version: 5.15.0-91.101
Depends: linux-base (>= 4.5ubuntu1~16.04.1), linux-modules-5.15.0-91-generic
Recommends: grub-pc | grub-efi-amd64 | grub-efi-ia32 | grub | lilo, initramfs-tools | linux-initramfs-tool
Suggests: fdutils, linux-doc | linux-source-5.15.0, linux-tools, linux-headers-5.15.0-91-generic
Conflicts: linux-image-5.15.0-91-generic
Size: 11809504

Package: linux-modules-5.15.0-91-generic
Source: linux
Version: 5.15.0-91.101
Depends: linux-image-5.15.0-91-generic | linux-image-unsigned-5.15.0-91-generic
Size: 22841250

Package: linux-headers-5.15.0-91-generic
Source: linux
Version: 5.15.0-91.101
Depends: linux-headers-5.15.0-91, libc6 (>= 2.34), libelf1 (>= 0.142), libssl3 (>= 3.0.0), zlib1g (>= 1:1.2.3.3)
Size: 2905542

Package: linux-headers-5.15.0-91
Architecture: all
Version: 5.15.0-91.101
Depends: coreutils
Size: 12657034

Package: linux-image-5.15.0-91-generic
Source: linux-signed
Version: 5.15.0-91.101
Depends: linux-base (>= 4.5ubuntu1~16.04.1), linux-modules-5.15.0-91-generic
Size: 11872730
"""

# Ubuntu 24.04, signed image: linux-modules no longer depends back on the image.
UBUNTU_NOBLE = """\
Package: linux-image-6.8.0-45-generic
Source: linux-signed
Version: 6.8.0-45.45
Depends: linux-base (>= 4.5ubuntu1~16.04.1), linux-modules-6.8.0-45-generic
Recommends: grub-pc | grub-efi-amd64 | grub-efi-ia32 | grub | lilo, initramfs-tools | linux-initramfs-tool
Size: 14866672

Package: linux-modules-6.8.0-45-generic
Source: linux
Version: 6.8.0-45.45
Depends: linux-base (>= 4.5ubuntu1~16.04.1)
Size: 39430474

Package: linux-headers-6.8.0-45-generic
Source: linux
Version: 6.8.0-45.45
Depends: linux-headers-6.8.0-45, libc6 (>= 2.38), libelf1t64 (>= 0.144), libssl3t64 (>= 3.0.0), zlib1g (>= 1:1.2.3.3)
Size: 3786632

Package: linux-headers-6.8.0-45
Architecture: all
Version: 6.8.0-45.45
Depends: coreutils
Size: 14005350
"""

# The host tools the kernel packages name, with versions of their own.
HOST_TOOLS = """\
Package: kmod
Version: 30+20221128-1

Package: initramfs-tools
Version: 0.142+deb12u3

Package: linux-base
Version: 4.12.1~deb12u1

Package: gcc-12
Version: 12.2.0-14+deb12u1

Package: pahole
Version: 1.24-4.1

Package: libc6
Version: 2.36-9+deb12u14

Package: coreutils
Version: 9.4-3ubuntu6
"""


class FakeArchive:
    """A lookup over stanzas that records which names it was asked for."""

    def __init__(self, *texts):
        self.packages = archive.parse_packages("\n".join(texts))
        self.asked = []

    def __call__(self, names):
        names = list(names)
        self.asked.append(names)
        return {name: self.packages[name] for name in names if name in self.packages}

    def walk(self, *roots):
        return [p.name for p in archive.companions([self.packages[name] for name in roots], self)]


def test_parse_packages_reads_versions_continued_depends_and_pre_depends():
    packages = archive.parse_packages(DEBIAN_612)
    image = packages["linux-image-6.12.117+deb12-cloud-amd64-unsigned"]
    assert image.version == "6.12.117-1~deb12u1"
    assert image.size == 34304772
    assert image.depends == ("linux-base (>= 4.12~), kmod, initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool")
    headers = packages["linux-headers-6.12.117+deb12-cloud-amd64"]
    assert "linux-image-6.12.117+deb12-cloud-amd64-unsigned (= 6.12.117-1~deb12u1), linux-kbuild" in headers.depends
    assert packages["linux-headers-6.12.117+deb12-common"].depends == ""


def test_parse_relations_keeps_alternatives_and_the_version_named():
    assert archive.parse_relations("a (>= 1.0), b | c (= 2~x), python3:any, d") == [
        [("a", "1.0")], [("b", None), ("c", "2~x")], [("python3", None)], [("d", None)]]
    assert archive.parse_relations("") == []


def test_debian_612_walk_takes_common_headers_and_kbuild_and_leaves_host_tools():
    apt = FakeArchive(DEBIAN_612, HOST_TOOLS)
    assert apt.walk("linux-image-6.12.117+deb12-cloud-amd64-unsigned", "linux-headers-6.12.117+deb12-cloud-amd64") == [
        "linux-image-6.12.117+deb12-cloud-amd64-unsigned", "linux-headers-6.12.117+deb12-cloud-amd64",
        "linux-headers-6.12.117+deb12-common", "linux-kbuild-6.12.117+deb12"]
    asked = {name for names in apt.asked for name in names}
    assert "linux-image-6.12.117+deb12-cloud-amd64" not in asked      # its group is satisfied by the unsigned image
    assert "libc6" not in asked                                         # a version that is not the kernel's


def test_debian_61_walk_follows_a_relation_naming_the_kernels_version():
    apt = FakeArchive(DEBIAN_61, HOST_TOOLS)
    assert apt.walk("linux-image-6.1.0-47-cloud-amd64-unsigned", "linux-headers-6.1.0-47-cloud-amd64") == [
        "linux-image-6.1.0-47-cloud-amd64-unsigned", "linux-headers-6.1.0-47-cloud-amd64",
        "linux-headers-6.1.0-47-common", "linux-kbuild-6.1"]


def test_ubuntu_walk_takes_the_modules_and_base_headers():
    apt = FakeArchive(UBUNTU_JAMMY, HOST_TOOLS)
    assert apt.walk("linux-image-unsigned-5.15.0-91-generic", "linux-headers-5.15.0-91-generic") == [
        "linux-image-unsigned-5.15.0-91-generic", "linux-headers-5.15.0-91-generic",
        "linux-modules-5.15.0-91-generic", "linux-headers-5.15.0-91"]
    assert "linux-image-5.15.0-91-generic" not in {name for names in apt.asked for name in names}


def test_ubuntu_signed_image_walk():
    apt = FakeArchive(UBUNTU_NOBLE, HOST_TOOLS)
    assert apt.walk("linux-image-6.8.0-45-generic", "linux-headers-6.8.0-45-generic") == [
        "linux-image-6.8.0-45-generic", "linux-headers-6.8.0-45-generic",
        "linux-modules-6.8.0-45-generic", "linux-headers-6.8.0-45"]


def test_a_walk_of_a_package_without_depends_asks_nothing():
    apt = FakeArchive(DEBIAN_612)
    assert apt.walk("linux-headers-6.12.117+deb12-common") == ["linux-headers-6.12.117+deb12-common"]
    assert not any(apt.asked)


def test_a_meta_package_stands_for_the_newest_versioned_image():
    packages = archive.parse_packages("""\
Package: linux-image-6.12-cloud-amd64
Version: 6.12.117-1~deb12u1
Depends: linux-image-6.12.117+deb12-cloud-amd64 (= 6.12.117-1~deb12u1)

Package: linux-image-6.12.117+deb12-cloud-amd64
Version: 6.12.117-1~deb12u1
Depends: kmod, linux-base (>= 4.12~), initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool

Package: linux-modules-6.8.0-45-generic
Version: 6.8.0-45.45
Depends: linux-image-6.8.0-45-generic | linux-image-unsigned-6.8.0-45-generic

Package: linux-image-6.8.0-45-generic
Version: 6.8.0-45.45
Depends: linux-modules-6.8.0-45-generic
""")
    lookup = lambda names: {name: packages[name] for name in names if name in packages}  # noqa: E731
    assert archive.image_of(packages["linux-image-6.12-cloud-amd64"], lookup).name == "linux-image-6.12.117+deb12-cloud-amd64"
    versioned = packages["linux-image-6.12.117+deb12-cloud-amd64"]
    assert archive.image_of(versioned, lookup) is versioned
    ubuntu = packages["linux-image-6.8.0-45-generic"]
    assert archive.image_of(ubuntu, lookup) is ubuntu


@pytest.mark.parametrize("image, headers", [
    ("linux-image-6.12.117+deb12-cloud-amd64-unsigned", "linux-headers-6.12.117+deb12-cloud-amd64"),
    ("linux-image-6.1.0-56-amd64", "linux-headers-6.1.0-56-amd64"),
    ("linux-image-unsigned-5.15.0-91-generic", "linux-headers-5.15.0-91-generic"),
    ("linux-image-6.8.0-45-generic", "linux-headers-6.8.0-45-generic"),
])
def test_headers_package_is_named_after_the_release(image, headers):
    assert archive.headers_package(image) == headers


# The debug-symbol packages of the kernels above: Debian's -dbg in the main archive, Ubuntu's -dbgsym
# in ddebs.ubuntu.com, one for the unsigned image (which holds the files) and one for the signed.
DEBUG_STANZAS = """\
Package: linux-image-6.12.117+deb12-cloud-amd64-dbg
Source: linux-6.12
Version: 6.12.117-1~deb12u1
Size: 317861800

Package: linux-image-6.1.0-47-cloud-amd64-dbg
Source: linux
Version: 6.1.170-4

Package: linux-image-unsigned-6.8.0-45-generic-dbgsym
Source: linux
Version: 6.8.0-45.45

Package: linux-image-6.8.0-45-generic-dbgsym
Source: linux-signed
Version: 6.8.0-45.45

Package: linux-image-5.15.0-91-generic-dbgsym
Source: linux-signed
Version: 5.15.0-91.101
"""


@pytest.mark.parametrize("image, names", [
    ("linux-image-6.12.117+deb12-cloud-amd64-unsigned", ["linux-image-6.12.117+deb12-cloud-amd64-dbg",
                                                         "linux-image-unsigned-6.12.117+deb12-cloud-amd64-dbgsym",
                                                         "linux-image-6.12.117+deb12-cloud-amd64-dbgsym"]),
    ("linux-image-6.8.0-45-generic", ["linux-image-6.8.0-45-generic-dbg",
                                      "linux-image-unsigned-6.8.0-45-generic-dbgsym",
                                      "linux-image-6.8.0-45-generic-dbgsym"]),
    ("linux-image-unsigned-5.15.0-91-generic", ["linux-image-5.15.0-91-generic-dbg",
                                                "linux-image-unsigned-5.15.0-91-generic-dbgsym",
                                                "linux-image-5.15.0-91-generic-dbgsym"]),
])
def test_debug_packages_are_named_after_the_release(image, names):
    assert archive.debug_packages(image) == names


@pytest.mark.parametrize("stanzas, image, debug", [
    (DEBIAN_612, "linux-image-6.12.117+deb12-cloud-amd64", "linux-image-6.12.117+deb12-cloud-amd64-dbg"),
    (DEBIAN_612, "linux-image-6.12.117+deb12-cloud-amd64-unsigned", "linux-image-6.12.117+deb12-cloud-amd64-dbg"),
    (UBUNTU_NOBLE, "linux-image-6.8.0-45-generic", "linux-image-unsigned-6.8.0-45-generic-dbgsym"),
    (UBUNTU_JAMMY, "linux-image-5.15.0-91-generic", "linux-image-5.15.0-91-generic-dbgsym"),
    (DEBIAN_61, "linux-image-6.1.0-47-cloud-amd64-unsigned", None),   # its -dbg is of another version, 6.1.170-4
])
def test_the_debug_package_has_the_images_version(stanzas, image, debug):
    apt = FakeArchive(stanzas, DEBUG_STANZAS)
    found = archive.debug_package(apt.packages[image], apt)
    assert (found.name if found else None) == debug


def test_debug_symbols_missing_from_the_archive_are_a_one_line_error_before_any_download(tmp_path, monkeypatch):
    apt = FakeArchive(DEBIAN_612, HOST_TOOLS)
    monkeypatch.setattr(archive, "apt_lookup", apt)
    with pytest.raises(ConfigError) as info:
        archive.fetch("linux-image-6.12.117+deb12-cloud-amd64", Cache(tmp_path / "cache"), debug_symbols=True)
    runs = [names for names in apt.asked if names]   # apt_lookup runs apt-cache for a non-empty list only
    assert runs == [["linux-image-6.12.117+deb12-cloud-amd64"],   # the debug packages come with the headers
                    ["linux-headers-6.12.117+deb12-cloud-amd64",
                     *archive.debug_packages("linux-image-6.12.117+deb12-cloud-amd64")]]
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("apt:linux-image-6.12.117+deb12-cloud-amd64: debug_symbols: no "
                              "linux-image-6.12.117+deb12-cloud-amd64-dbg (Debian's) nor ")
    assert "of version 6.12.117-1~deb12u1" in message and "apt-get update" in message
    assert not (tmp_path / "cache").exists()


@needs_apt
def test_only_the_vmlinux_and_the_ko_files_are_unpacked_from_a_debug_package(tmp_path, monkeypatch):
    """A small -dbg package built here, which a stand-in apt-get "downloads"."""
    release = "6.12.117+deb12-cloud-amd64"
    package = tmp_path / "package"
    files = {f"usr/lib/debug/boot/vmlinux-{release}": "vmlinux", f"usr/lib/debug/boot/System.map-{release}": "map",
             f"usr/lib/debug/lib/modules/{release}/kernel/drivers/block/virtio_blk.ko": "ko",
             f"usr/lib/debug/lib/modules/{release}/modules.order": "order",
             "usr/lib/debug/lib/modules/6.1.0-47-cloud-amd64/kernel/other.ko": "another release's",
             "usr/share/doc/linux-image-dbg/changelog.Debian.gz": "doc"}
    for name, text in files.items():
        (package / name).parent.mkdir(parents=True, exist_ok=True)
        (package / name).write_text(text)
    (package / "DEBIAN").mkdir()
    (package / "DEBIAN/control").write_text(f"Package: linux-image-{release}-dbg\nVersion: 1\nArchitecture: all\n"
                                            f"Maintainer: provium\nDescription: test\n")
    deb = tmp_path / "dbg.deb"
    subprocess.run(["dpkg-deb", "--build", "--root-owner-group", str(package), str(deb)], check=True,
                   capture_output=True)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "apt-get").write_text(f"#!/bin/sh\ncp {deb} .\n")
    (bin_dir / "apt-get").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    root = tmp_path / "root"
    lines = []
    archive._unpack_debug(root, archive.Package(f"linux-image-{release}-dbg", "1", "", 317861800), release,
                          lines.append, "apt:x")
    unpacked = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    assert unpacked == [f"usr/lib/debug/boot/vmlinux-{release}",
                        f"usr/lib/debug/lib/modules/{release}/kernel/drivers/block/virtio_blk.ko"]
    assert lines == [f"apt:x: downloading linux-image-{release}-dbg (318 MB) for debug symbols",
                     f"apt:x: extracting vmlinux-{release} and the .ko files from linux-image-{release}-dbg"]


def test_a_name_that_is_no_package_name_is_refused_before_apt_runs(tmp_path):
    with pytest.raises(ConfigError, match=r"apt:-o: not a package name"):
        archive.fetch("-o", Cache(tmp_path / "cache"))


@needs_apt
def test_an_unknown_package_is_a_one_line_error(tmp_path):
    with pytest.raises(ConfigError) as info:
        archive.fetch("linux-image-0.0.0-nosuch-amd64", Cache(tmp_path / "cache"))
    message = str(info.value)
    assert "\n" not in message
    assert "linux-image-0.0.0-nosuch-amd64" in message
    assert "apt-get update" in message and "apt-cache search linux-image" in message
    assert not (tmp_path / "cache" / "archive").exists()


def newest_cloud_612() -> str:
    result = subprocess.run(["apt-cache", "search", "--names-only", r"^linux-image-6\.12\.[0-9]+\+deb12-cloud-amd64-unsigned$"],
                            capture_output=True, text=True, check=True)
    names = [line.split(" - ")[0] for line in result.stdout.splitlines()]
    if not names:
        pytest.skip("apt-cache search finds no linux-image-6.12.*+deb12-cloud-amd64-unsigned "
                    "(not Debian 12 with bookworm-security, or apt-get update has not run)")
    return max(names, key=lambda name: int(re.match(r"linux-image-6\.12\.(\d+)", name).group(1)))


@pytest.fixture(scope="module")
def fetched(tmp_path_factory):
    """The newest 6.12 cloud kernel, fetched once into a fresh cache: (package, cache, tree, report lines, seconds)."""
    if not HAS_APT:
        pytest.skip(needs_apt.kwargs["reason"])
    package = newest_cloud_612()
    cache = Cache(tmp_path_factory.mktemp("archive") / "cache")
    lines = []
    start = time.monotonic()
    tree = archive.fetch(package, cache, lines.append)
    return package, cache, tree, lines, time.monotonic() - start


needs_pahole = pytest.mark.skipif(not shutil.which("pahole"), reason="pahole (package dwarves) is needed to build "
                                                                     "modules against 6.12 (BTF for modules)")


def test_fetch_gives_a_bootable_tree(fetched):
    package, cache, tree, lines, _ = fetched
    release = package.removeprefix("linux-image-").removesuffix("-unsigned")
    assert tree.release == release
    assert tree.source == f"apt:{package}"
    assert tree.image == tree.modules_dir.parents[2] / "boot" / f"vmlinuz-{release}"
    assert tree.image.read_bytes()[0x202:0x206] == b"HdrS"    # a bzImage's setup header
    assert tree.modules_dir.name == release
    dep = (tree.modules_dir / "modules.dep").read_text()
    assert "kernel/drivers/virtio/virtio_mmio.ko.xz:" in dep
    assert "CONFIG_VIRTIO_CONSOLE=y" in tree.config.read_text()
    assert (tree.build_dir / "Makefile").is_file() and tree.build_dir.name == f"linux-headers-{release}"
    assert (tree.modules_dir / "build").resolve() == tree.build_dir.resolve()
    assert not os.readlink(tree.modules_dir / "build").startswith("/")
    assert str(cache.root) in str(tree.image)
    assert any(re.search(r"downloading 4 packages .*linux-kbuild-6\.12\.", line) for line in lines), lines
    assert any("extracting" in line for line in lines), lines


@needs_pahole
def test_a_module_builds_against_the_fetched_headers(fetched, tmp_path):
    _, _, tree, _, _ = fetched
    start = time.monotonic()
    module = build_hello(tree.build_dir, tmp_path / "hello")
    print(f"module build: {time.monotonic() - start:.1f} s")
    assert vermagic(module).startswith(f"{tree.release} ")


@needs_pahole
def test_the_tree_works_wherever_the_cache_lies(fetched, tmp_path):
    _, cache, tree, _, _ = fetched
    moved = tmp_path / "moved"
    subprocess.run(["cp", "-al", str(cache.root), str(moved)], check=True)
    module = build_hello(moved / tree.modules_dir.relative_to(cache.root) / "build", tmp_path / "hello")
    assert vermagic(module).startswith(f"{tree.release} ")


def test_a_second_fetch_runs_only_apt_cache_and_warns_without_pahole(fetched, tmp_path, monkeypatch):
    package, cache, tree, _, seconds = fetched
    entry = tree.modules_dir.parents[2]
    before = entry.stat().st_mtime_ns
    only_apt_cache = tmp_path / "bin"
    only_apt_cache.mkdir()
    (only_apt_cache / "apt-cache").symlink_to(shutil.which("apt-cache"))
    monkeypatch.setenv("PATH", str(only_apt_cache))   # apt-get, dpkg-deb and depmod are out of reach
    lines = []
    start = time.monotonic()
    again = archive.fetch(package, cache, lines.append)
    print(f"first fetch {seconds:.1f} s, second {time.monotonic() - start:.2f} s")
    assert again == tree
    assert entry.stat().st_mtime_ns == before
    assert not [line for line in lines if "downloading" in line or "extracting" in line]
    assert [line for line in lines if "need pahole" in line and "install dwarves" in line]   # not on PATH
