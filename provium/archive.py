"""Kernels from the distribution's archive: a profile's `kernel = "apt:PACKAGE"`.

fetch() downloads the image package, its headers and the packages built with
them (found through their Depends: Debian's -common headers and linux-kbuild,
Ubuntu's linux-modules and base headers) with `apt-get download`, unpacks them
with `dpkg-deb -x` into one root in the cache (nothing is installed) and makes
that root usable where it lies: absolute symlinks and the headers' absolute
Makefile include become relative, and modules.dep is written when the package
ships none. An entry is keyed by the package's name and version, so a package
is fetched once and a newer version is a new entry.

With debug_symbols, fetch() also downloads the image's debug-symbol package
(Debian's `linux-image-RELEASE-dbg`, Ubuntu's `-dbgsym` from ddebs.ubuntu.com:
~300 MB, ~1.8 GB unpacked) into an entry of its own, keeping only the ELF
vmlinux and the modules' .ko files, which have DWARF line tables.

Module builds against a tree whose kernel has BTF for modules need `pahole`
(Debian and Ubuntu package `dwarves`); fetch() says so when it is missing.
"""

import os
import re
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from .cache import Cache, digest
from .errors import ConfigError, ImageError
from .kernels import KernelTree

# Bump when the layout of an entry changes.
_FORMAT = 1
_NAME = re.compile(r"[a-z0-9][a-z0-9+.-]+")
_RELATION = re.compile(r"\s*([a-z0-9][a-z0-9+.-]*)(?::[a-z0-9-]+)?\s*(?:\(\s*[<>=]+\s*([^)\s]+)\s*\))?")
_INCLUDE = re.compile(r"^(\s*-?include\s+)(/\S+)", re.MULTILINE)
_SBIN = "/usr/sbin:/sbin"
_DEBUG = "usr/lib/debug"  # where a debug-symbol package puts boot/vmlinux-RELEASE and lib/modules/RELEASE


@dataclass(frozen=True)
class Package:
    """The candidate version of a binary package, as `apt-cache show` describes it."""

    name: str
    version: str
    depends: str    # its Pre-Depends and Depends, comma-separated
    size: int       # bytes to download


Lookup = Callable[[Iterable[str]], dict[str, Package]]


def parse_packages(text: str) -> dict[str, Package]:
    """The stanzas of `apt-cache show` output by package name."""
    packages = {}
    for stanza in text.split("\n\n"):
        fields = dict(re.findall(r"^([A-Za-z0-9-]+):[ \t]*(.*(?:\n[ \t].*)*)", stanza, re.MULTILINE))
        if "Package" in fields and "Version" in fields:
            depends = ", ".join(fields[f] for f in ("Pre-Depends", "Depends") if fields.get(f))
            packages[fields["Package"]] = Package(fields["Package"], fields["Version"],
                                                  " ".join(depends.split()), int(fields.get("Size", 0)))
    return packages


def parse_relations(field: str) -> list[list[tuple[str, str | None]]]:
    """A Depends field as groups of alternatives: (name, the version its constraint names, if any)."""
    groups = []
    for group in field.split(","):
        matches = [_RELATION.match(alternative) for alternative in group.split("|")]
        alternatives = [(m.group(1), m.group(2)) for m in matches if m]
        if alternatives:
            groups.append(alternatives)
    return groups


def companions(roots: list[Package], lookup: Lookup) -> list[Package]:
    """The roots and the packages built with them that they depend on, transitively.

    A dependency is built with the package that needs it when its relation
    names that package's version (Debian's `linux-headers-6.1.0-56-common
    (= 6.1.192-2)`, `linux-kbuild-6.1 (>= 6.1.192-2)`), or names no version and
    its candidate has that version (`linux-kbuild-6.12.117+deb12`, Ubuntu's
    `linux-modules-6.8.0-45-generic`). Host tools (kmod, gcc-12, linux-base)
    have versions of their own and are left out. A group of alternatives that a
    chosen package satisfies is skipped.
    """
    chosen = {package.name: package for package in roots}
    layer = list(roots)
    while layer:
        groups = [(package, group) for package in layer for group in parse_relations(package.depends)
                  if not any(name in chosen for name, _ in group)]
        known = lookup(sorted({name for package, group in groups for name, pinned in group
                               if pinned in (None, package.version)}))
        layer = []
        for package, group in groups:
            if any(name in chosen for name, _ in group):
                continue
            found = next((known[name] for name, pinned in group if name in known and package.version
                          == (pinned or known[name].version)), None)
            if found:
                chosen[found.name] = found
                layer.append(found)
    return list(chosen.values())


def image_of(package: Package, lookup: Lookup) -> Package:
    """The versioned image package a meta-package stands for (`linux-image-6.12-cloud-amd64` depends
    on `linux-image-6.12.117+deb12-cloud-amd64`, which depends on no other image), else the package:
    a profile can name the meta-package and get the newest kernel of that line."""
    seen = {package.name}
    while True:
        images = [name for group in parse_relations(package.depends) for name, _ in group[:1]
                  if name.startswith("linux-image-") and name not in seen]
        found = lookup(images[:1])
        if not images or images[0] not in found:
            return package
        package = found[images[0]]
        seen.add(package.name)


def _release_of(image_package: str) -> str:
    """The release in an image package's name: Debian's `linux-image-R[-unsigned]`, Ubuntu's
    `linux-image-[unsigned-]R`."""
    return image_package.removeprefix("linux-image-").removeprefix("unsigned-").removesuffix("-unsigned")


def headers_package(image_package: str) -> str:
    """The headers package named after an image package: `linux-headers-R`."""
    return f"linux-headers-{_release_of(image_package)}"


def debug_packages(image_package: str) -> list[str]:
    """The names an image package's debug-symbol package has, in the order they are tried: Debian's
    `linux-image-R-dbg`, Ubuntu's `linux-image-unsigned-R-dbgsym` (which holds the files) and
    `linux-image-R-dbgsym`."""
    release = _release_of(image_package)
    return [f"linux-image-{release}-dbg", f"linux-image-unsigned-{release}-dbgsym", f"linux-image-{release}-dbgsym"]


def debug_package(image: Package, lookup: Lookup) -> Package | None:
    """The debug-symbol package built with `image`: the first of debug_packages() whose candidate
    has the image's version, else None."""
    names = debug_packages(image.name)
    found = lookup(names)
    return next((found[name] for name in names if name in found and found[name].version == image.version), None)


def _command_error(command: list[str], result: subprocess.CompletedProcess) -> ImageError:
    output = "\n".join((result.stdout + result.stderr).strip().splitlines()[-20:])
    return ImageError(f"{' '.join(command)} failed (exit {result.returncode}):\n{output}")


def _run(command: list[str], cwd: Path | None = None) -> None:
    """Run a command; an ImageError with the command and its output if it fails."""
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        raise _command_error(command, result)


def apt_lookup(names: Iterable[str]) -> dict[str, Package]:
    """The candidates of the named packages that the archive knows (`apt-cache show`)."""
    names = list(names)
    if not names:
        return {}
    command = ["apt-cache", "show", "--no-all-versions", *names]
    try:
        result = subprocess.run(command, capture_output=True, text=True)
    except FileNotFoundError:
        raise ConfigError("apt: kernels need apt-cache and apt-get (a Debian or Ubuntu host)") from None
    if result.returncode not in (0, 100):  # 100: none of the names is known
        raise _command_error(command, result)
    return parse_packages(result.stdout)


def fetch(package: str, cache: Cache, report: Callable[[str], None] = lambda line: None,
          debug_symbols: bool = False) -> KernelTree:
    """The kernel of image package `package` (the profile's `apt:PACKAGE`), downloaded and unpacked
    into the cache the first time this version of it is asked for; with debug_symbols, its
    debug-symbol package too (the tree's vmlinux and debug_modules)."""
    source = f"apt:{package}"
    if not _NAME.fullmatch(package):
        raise ConfigError(f"{source}: not a package name")
    known: dict[str, Package] = {}
    asked: set[str] = set()

    def lookup(names: Iterable[str]) -> dict[str, Package]:
        names = list(names)
        missing = [name for name in names if name not in asked]
        known.update(apt_lookup(missing))
        asked.update(missing)
        return {name: known[name] for name in names if name in known}

    found = lookup([package])
    if package not in found:
        raise ConfigError(f"{source}: no package {package} in the apt archive "
                          f"(run apt-get update, or find one with apt-cache search linux-image)")
    image = image_of(found[package], lookup)
    headers = headers_package(image.name)
    found = lookup([headers, *(debug_packages(image.name) if debug_symbols else [])])  # one apt-cache run
    debug = debug_package(image, lookup) if debug_symbols else None
    if debug_symbols and debug is None:  # known before anything is downloaded
        names = debug_packages(image.name)
        raise ConfigError(f"{source}: debug_symbols: no {names[0]} (Debian's) nor {' or '.join(names[1:])} "
                          f"(Ubuntu's, from ddebs.ubuntu.com) of version {image.version} in the apt archive "
                          f"(run apt-get update)")
    root = _entry(cache, image, lambda tmp: _assemble(tmp, image, found.get(headers), lookup, report, source))
    tree = _tree(root, source)
    if debug:
        symbols = _entry(cache, debug, lambda tmp: _unpack_debug(tmp, debug, tree.release, report, source)) / _DEBUG
        tree = replace(tree, vmlinux=symbols / "boot" / f"vmlinux-{tree.release}",
                       debug_modules=symbols / "lib/modules" / tree.release)
    if _needs_pahole(tree) and not shutil.which("pahole"):
        report(f"{source}: modules built against this kernel need pahole for BTF: install dwarves")
    return tree


def _entry(cache: Cache, package: Package, fill: Callable[[Path], None]) -> Path:
    """The cache entry of this version of `package`, made by fill(tmp) the first time (locked, renamed
    into place when complete)."""
    def build(tmp: Path) -> None:
        _remove_stale(tmp.parent, keep=None)
        try:
            fill(tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _remove_stale(tmp.parent, keep=tmp)

    return cache.get_or_build("archive", digest(_FORMAT, package.name, package.version), "root", build)


def _remove_stale(directory: Path, keep: Path | None) -> None:
    """Remove the temporary roots of killed builds (called under the entry's lock). A killed build's
    dpkg-deb may still be writing for a while, so this runs again once the new entry is built."""
    for stale in directory.glob(".root.*.tmp"):
        if stale != keep:
            shutil.rmtree(stale, ignore_errors=True)


def _assemble(root: Path, image: Package, headers: Package | None, lookup: Lookup,
              report: Callable[[str], None], source: str) -> None:
    """Download, unpack and fix up the image, its headers and their companions in `root`."""
    if headers is None:
        report(f"{source}: the archive has no {headers_package(image.name)}: no kbuild tree for this kernel")
    packages = companions([image, *([headers] if headers else [])], lookup)
    megabytes = sum(p.size for p in packages) / 1e6
    report(f"{source}: downloading {len(packages)} packages ({megabytes:.0f} MB): "
           f"{', '.join(p.name for p in packages)}")
    debs = _download(packages, root / ".debs", source)
    report(f"{source}: extracting {len(packages)} packages")
    _run_all([["dpkg-deb", "-x", str(deb), str(root)] for deb in debs])  # packages never share files
    shutil.rmtree(root / ".debs")
    release = _release(root, source)
    _relative_links(root)
    build_dir = root / "usr/src" / f"linux-headers-{release}"
    if (build_dir / "Makefile").is_file():
        _relative_includes(root, build_dir / "Makefile")
    if not (root / "lib/modules" / release / "modules.dep").exists():
        report(f"{source}: depmod {release}")
        depmod = shutil.which("depmod", path=f"{os.environ.get('PATH', '')}:{_SBIN}")
        if depmod is None:
            raise ImageError(f"{source}: depmod is not installed (package kmod)")
        _run([depmod, "-b", str(root), release])


def _unpack_debug(root: Path, debug: Package, release: str, report: Callable[[str], None], source: str) -> None:
    """Download the debug-symbol package and extract into root its vmlinux and its modules' .ko files."""
    report(f"{source}: downloading {debug.name} ({debug.size / 1e6:.0f} MB) for debug symbols")
    [deb] = _download([debug], root / ".debs", source)
    report(f"{source}: extracting vmlinux-{release} and the .ko files from {debug.name}")
    script = 'dpkg-deb --fsys-tarfile "$1" | tar -x -C "$2" --wildcards "${@:3}"'
    _run_all([["bash", "-o", "pipefail", "-c", script, "extract", str(deb), str(root),
               f"./{_DEBUG}/boot/vmlinux-{release}", f"./{_DEBUG}/lib/modules/{release}/*.ko"]])
    shutil.rmtree(root / ".debs")


def _download(packages: list[Package], directory: Path, source: str) -> list[Path]:
    """`apt-get download` these versions of the packages into a new directory; the .deb files."""
    directory.mkdir(parents=True)
    try:
        _run(["apt-get", "download", *(f"{p.name}={p.version}" for p in packages)], cwd=directory)
    except FileNotFoundError:
        raise ConfigError(f"{source}: apt-get is not installed") from None
    return sorted(directory.glob("*.deb"))


def _run_all(commands: list[list[str]]) -> None:
    """Run the commands all at once, each in a process group of its own so that an interrupted run
    can be stopped whole; an ImageError with the output of one that fails."""
    running = [(command, subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                          start_new_session=True))
               for command in commands]
    try:
        outputs = [(command, process.communicate(), process.returncode) for command, process in running]
    except BaseException:  # interrupted: stop every command with its children before the caller removes root
        for _, process in running:
            if process.returncode is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        raise
    for command, (stdout, stderr), returncode in outputs:
        if returncode != 0:
            raise _command_error(command, subprocess.CompletedProcess(command, returncode, stdout, stderr))


def _release(root: Path, source: str) -> str:
    """The release of the one kernel image unpacked in root (boot/vmlinuz-RELEASE)."""
    images = sorted(p.name.removeprefix("vmlinuz-") for p in (root / "boot").glob("vmlinuz-*"))
    if len(images) != 1:
        raise ImageError(f"{source}: expected one boot/vmlinuz-* in the package, found {images or 'none'}")
    release = images[0]
    if not (root / "lib/modules" / release).is_dir():
        raise ImageError(f"{source}: the packages hold boot/vmlinuz-{release} but no lib/modules/{release}")
    return release


def _relative_links(root: Path) -> None:
    """Point absolute symlinks whose target is in root (lib/modules/R/build, source) into root, relatively."""
    for directory, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            link = Path(directory, name)
            target = os.readlink(link) if link.is_symlink() else ""
            if target.startswith("/") and os.path.lexists(root / target.lstrip("/")):
                relative = os.path.relpath(root / target.lstrip("/"), link.parent)
                tmp = link.with_name(f".{name}.tmp")
                os.symlink(relative, tmp)
                os.replace(tmp, link)


def _relative_includes(root: Path, makefile: Path) -> None:
    """Make the Makefile's includes of absolute paths in root (Debian's -common Makefile) relative to itself."""
    def rewrite(match: re.Match) -> str:
        target = root / match.group(2).lstrip("/")
        if not target.exists():
            return match.group(0)
        return f"{match.group(1)}$(dir $(lastword $(MAKEFILE_LIST))){os.path.relpath(target, makefile.parent)}"

    makefile.write_text(_INCLUDE.sub(rewrite, makefile.read_text()))


def _tree(root: Path, source: str) -> KernelTree:
    release = _release(root, source)
    build_dir = root / "usr/src" / f"linux-headers-{release}"
    config = root / "boot" / f"config-{release}"
    return KernelTree(image=root / "boot" / f"vmlinuz-{release}", release=release,
                      modules_dir=root / "lib/modules" / release,
                      build_dir=build_dir if (build_dir / "Makefile").is_file() else None,
                      config=config if config.is_file() else None, source=source)


def _needs_pahole(tree: KernelTree) -> bool:
    """Whether module builds run pahole: BTF for modules is on and the headers ship a vmlinux for it."""
    if tree.build_dir is None or tree.config is None or not (tree.build_dir / "vmlinux").is_file():
        return False
    return "\nCONFIG_DEBUG_INFO_BTF_MODULES=y\n" in f"\n{tree.config.read_text()}"
