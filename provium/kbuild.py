"""Kernels built from source: a profile's `kernel_source` configured with its `kconfig` fragments.

The source is a tree the user owns (a path, never written: the build is out of
tree, `make O=`) or a distribution source package (`apt:linux-source-6.12`,
fetched with `apt-get download` and unpacked into the cache once per version).
The configuration is `make ARCH=x86_64 tinyconfig`, the fragments merged over
it and `make olddefconfig`; an option a fragment asked for that Kconfig dropped
is an error before anything compiles.

Cache layout (under the provium cache root):
  ksource/KEY/tree     an unpacked source package (KEY: package and version)
  kbuild/KEY/build     the `O=` build directory of one source location and one
                       list of fragment names: rebuilt incrementally when the tree
                       or a fragment changes
  kernels/KEY/         a finished kernel: vmlinux, config, release, System.map and
                       modules/lib/modules/RELEASE (whose `build` links to the build
                       directory). KEY covers the source's identity, the .config
                       and the toolchain, so an unchanged kernel is never rebuilt.
  kconfigs/KEY/kernel  which kernels/ key a (source identity, fragments, toolchain)
                       gave last time: a repeated request runs no make at all.

No key holds the cache's location, and the links between these entries are
relative (the build directory's `source` and the Makefile that includes the
source tree's, the modules' `build`), re-pointed whenever a kernel is handed
out, so a cache restored elsewhere still builds modules against its kernels.
The absolute paths that stay are inside build products (DWARF comp_dir, the
.cmd files): harmless, since decoding finds the kernel root in the line table
(symbolize.py) and make only re-runs commands after a change of input.
"""

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from . import kconfig
from .cache import Cache, digest, locked
from .errors import ConfigError, ImageError
from .kernels import KernelTree

ARCH = "x86_64"
APT_PREFIX = "apt:"
PROGRESS_EVERY = 15.0
# Bump when the layout of a finished kernel or the way it is configured changes.
_FORMAT = 1
# Variables of the caller's environment that would change what kbuild does behind the key's back.
_KBUILD_ENV = ("ARCH", "SRCARCH", "CROSS_COMPILE", "O", "KBUILD_OUTPUT", "KCONFIG_CONFIG", "KCONFIG_ALLCONFIG",
               "CC", "LD", "LLVM", "LOCALVERSION", "INSTALL_MOD_PATH", "INSTALL_MOD_STRIP", "MAKEFLAGS", "MFLAGS",
               "MAKELEVEL")
_TOOLS = {"make": "make", "gcc": "gcc", "flex": "flex", "bison": "bison", "bc": "bc", "depmod": "kmod",
          "dpkg-deb": "dpkg", "xz": "xz-utils"}
_STEP = re.compile(r"^\s{2}([A-Z0-9_]+)\s+(\S+)")
_ERROR = re.compile(r"error|Error \d|\*\*\*|undefined reference|not found|No rule to make", re.IGNORECASE)
_ERROR_LINES = 15
_TAIL_LINES = 30


@dataclass(frozen=True)
class _Source:
    tree: Path      # the kernel source tree (srctree)
    identity: str   # what its content is: a package version, a git state, a listing


Report = Callable[[str], None]


def build(source: str, fragments: Sequence[str], cache: Cache, report: Report, base_dir: Path) -> KernelTree:
    """The kernel `source` gives with `fragments` over tinyconfig, built on first use, then cached.

    source: a path relative to base_dir (the suite root), or "apt:PACKAGE[=VERSION]".
    fragments: Provium's own fragment names ("minimal", "debug") or paths relative to base_dir.
    report(line) tells what is going on (fetching, configuring, building, progress).
    """
    wanted = kconfig.resolve(fragments, base_dir)
    _check_tools(source)
    src = _apt_source(source, cache, report) if source.startswith(APT_PREFIX) else _path_source(source, base_dir)
    toolchain = _toolchain()
    request = digest(_FORMAT, src.identity, toolchain, *(f"{f.label}\0{f.text}" for f in wanted))
    memo = cache.entry("kconfigs", request, "kernel")
    labels = [f.label for f in wanted]
    build_dir = _build_dir(cache, source, src, labels)
    done = _remembered(cache, memo, build_dir, source)
    if done:
        return _settle(cache, done, src, memo)
    with locked(build_dir):
        done = _remembered(cache, memo, build_dir, source)
        if done:
            return _settle(cache, done, src, memo)
        report(f"kbuild: configuring {source}: tinyconfig + {', '.join(f.label for f in wanted)}")
        config = _configure(src.tree, build_dir, wanted)
        key = digest(_FORMAT, src.identity, toolchain, config)
        final = cache.root / "kernels" / key
        stamp = build_dir / ".provium-kernel"
        if not final.is_dir() or _read(stamp) != key:
            stamp.unlink(missing_ok=True)
            targets = ["vmlinux", *(["modules"] if _modular(config) else [])]
            report(f"kbuild: building {source} in {build_dir} (make {' '.join(targets)})")
            started = time.monotonic()
            _make(src.tree, build_dir, targets, "build.log", report)
            report(f"kbuild: built in {time.monotonic() - started:.0f} s")
            stamp.write_text(key)
        if not final.is_dir():
            _install(src.tree, build_dir, final, _modular(config), report)
        _write_atomic(memo, key)
        return _settle(cache, _kernel_tree(final, build_dir, source), src, memo)


def _build_dir(cache: Cache, source: str, src: _Source, labels: list[str]) -> Path:
    """The `O=` directory of one source and one list of fragment names. A source package's is named by its
    identity (its place in the cache moves with the cache), a tree's by its path (one incremental build per
    checkout). A package's directory of an older provium (named by the tree's path) is taken over."""
    if not source.startswith(APT_PREFIX):
        return cache.entry("kbuild", digest(str(src.tree), *labels), "build")
    build_dir = cache.entry("kbuild", digest(src.identity, *labels), "build")
    legacy = cache.entry("kbuild", digest(str(src.tree), *labels), "build")
    if not build_dir.parent.exists() and legacy.is_dir():
        with locked(legacy):
            if not build_dir.parent.exists() and legacy.is_dir():
                os.replace(legacy.parent, build_dir.parent)
    return build_dir


def _settle(cache: Cache, tree: KernelTree, src: _Source, memo: Path) -> KernelTree:
    """The kernel as handed out: its entries marked used (kept from prune while this process lives) and
    the links between them pointing where they are now (relatively within the cache)."""
    for entry in (tree.image.parent, tree.build_dir.parent, memo.parent,
                  *([src.tree.parent] if cache.root in src.tree.parents else [])):
        cache.use(entry)
    _point(tree.build_dir / "source", src.tree, cache)
    makefile = tree.build_dir / "Makefile"
    include = _link_target(src.tree / "Makefile", tree.build_dir, cache)
    text = f"# Automatically generated by provium: don't edit\ninclude {include}\n"
    if makefile.is_file() and _INCLUDE.search(makefile.read_text()) and makefile.read_text() != text:
        _write_atomic(makefile, text)
    for name in ("build", "source"):
        link = tree.modules_dir / name
        if link.is_symlink():
            _point(link, tree.build_dir if name == "build" else src.tree, cache)
    return tree


_INCLUDE = re.compile(r"^include\s+\S+$", re.MULTILINE)


def _link_target(target: Path, directory: Path, cache: Cache) -> str:
    """How `directory` names `target`: relatively when both are in the cache, else by its absolute path."""
    return os.path.relpath(target, directory) if cache.root in target.parents else str(target)


def _point(link: Path, target: Path, cache: Cache) -> None:
    """Make the symlink `link` (if it is one, or missing) name `target` as _link_target says, atomically."""
    if link.exists() and not link.is_symlink():
        return
    wanted = _link_target(target, link.parent, cache)
    if link.is_symlink() and os.readlink(link) == wanted:
        return
    tmp = link.with_name(f".{link.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    os.symlink(wanted, tmp)
    os.replace(tmp, link)


def _remembered(cache: Cache, memo: Path, build_dir: Path, source: str) -> KernelTree | None:
    """The kernel this very request gave before, if it and its build directory are still there."""
    key = _read(memo)
    final = cache.root / "kernels" / key if key else None
    if final is None or not final.is_dir() or _read(build_dir / ".provium-kernel") != key:
        return None
    return _kernel_tree(final, build_dir, source)


def _kernel_tree(final: Path, build_dir: Path, source: str) -> KernelTree:
    release = (final / "release").read_text().strip()
    modules_dir = final / "modules/lib/modules" / release
    config = (final / "config").read_text()
    debug = _debug_info(config)  # the booted vmlinux and the installed modules keep their DWARF
    return KernelTree(image=final / "vmlinux", release=release, modules_dir=modules_dir,
                      build_dir=build_dir, config=final / "config", source=source,
                      vmlinux=final / "vmlinux" if debug else None,
                      debug_modules=modules_dir if debug and _modular(config) else None)


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _check_tools(source: str) -> None:
    needed = [t for t in _TOOLS if source.startswith(APT_PREFIX) or t not in ("dpkg-deb", "xz")]
    missing = [t for t in needed if shutil.which(t) is None]
    if missing:
        packages = sorted({_TOOLS[t] for t in missing})
        raise ConfigError(f"kernel_source {source!r}: building a kernel needs {', '.join(missing)} "
                          f"(apt-get install {' '.join(packages)}, or run ./setup.sh)")


def _toolchain() -> str:
    """What of the host's tools shows in a .config or a build: compiler, linker, pahole and rustc versions."""
    versions = []
    for tool in ("gcc", "ld", "pahole", "rustc"):
        if shutil.which(tool):
            out = subprocess.run([tool, "--version"], capture_output=True, text=True).stdout
            versions.append(out.splitlines()[0] if out else tool)
    return "\n".join(versions)


# ---- sources ----

def _path_source(source: str, base_dir: Path) -> _Source:
    tree = (base_dir / source).resolve()
    if not tree.is_dir():
        raise ConfigError(f"kernel_source {source!r}: no such directory: {tree}")
    if not (tree / "Makefile").is_file() or not (tree / "Kconfig").is_file():
        raise ConfigError(f"kernel_source {source!r}: {tree} is not a kernel source tree (no Makefile and Kconfig)")
    if any((tree / built).exists() for built in (".config", "include/config", "arch/x86/include/generated")):
        raise ConfigError(f"kernel_source {source!r}: {tree} was configured or built in place, and make O= refuses "
                          f"such a tree: run 'make mrproper' in it, saving its .config first if you need it "
                          f"(Provium builds out of tree and never writes it)")
    return _Source(tree, _git_identity(tree) or _listing_identity(tree))


def _git(tree: Path, *args: str) -> bytes | None:
    result = subprocess.run(["git", "-C", str(tree), *args], capture_output=True)
    return result.stdout if result.returncode == 0 else None


def _git_identity(tree: Path) -> str | None:
    """HEAD, the diff against it and the untracked files that are not ignored; None outside a git work tree."""
    if shutil.which("git") is None:
        return None
    head = _git(tree, "rev-parse", "HEAD")
    if head is None:
        return None
    h = hashlib.sha256(head)
    h.update(_git(tree, "diff", "HEAD", "--binary", "--", ".") or b"")
    for name in sorted((_git(tree, "ls-files", "-z", "--others", "--exclude-standard", "--", ".") or b"").split(b"\0")):
        if name:
            path = tree / os.fsdecode(name)
            h.update(name + b"\0")
            if path.is_file():
                with open(path, "rb") as f:
                    h.update(hashlib.file_digest(f, "sha256").digest())
    return f"git {h.hexdigest()}"  # content only: the same commit and changes elsewhere are the same kernel


def _listing_identity(tree: Path) -> str:
    """A tree outside git: every file's path, size and modification time (an edit changes them)."""
    h = hashlib.sha256()
    stack = [tree]
    while stack:
        directory = stack.pop()
        with os.scandir(directory) as entries:
            for entry in sorted(entries, key=lambda e: e.name):
                st = entry.stat(follow_symlinks=False)
                if entry.is_dir(follow_symlinks=False):
                    stack.append(Path(entry.path))
                else:
                    h.update(f"{os.path.relpath(entry.path, tree)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return f"tree {h.hexdigest()}"


def _apt_source(source: str, cache: Cache, report: Report) -> _Source:
    """A distribution source package, unpacked into the cache once per version."""
    package, _, version = source[len(APT_PREFIX):].partition("=")
    if not package:
        raise ConfigError(f"kernel_source {source!r}: no package name after 'apt:'")
    version = version or _candidate(package, source)
    tree = cache.entry("ksource", digest(package, version), "tree")
    if not tree.is_dir():
        with locked(tree):
            if not tree.is_dir():
                _unpack(package, version, tree, report, source)
    return _Source(tree, f"apt {package}={version}")


def _candidate(package: str, source: str) -> str:
    result = subprocess.run(["apt-cache", "policy", package], capture_output=True, text=True)
    match = re.search(r"^\s*Candidate:\s*(\S+)", result.stdout, re.MULTILINE)
    if not match or match[1] == "(none)":
        raise ConfigError(f"kernel_source {source!r}: apt knows no package {package!r} "
                          f"(apt-get update, or apt-cache search linux-source)")
    return match[1]


_DECOMPRESS = {".xz": "xz -dc", ".gz": "gzip -dc", ".bz2": "bzip2 -dc", ".zst": "zstd -dc"}


def _unpack(package: str, version: str, tree: Path, report: Report, source: str) -> None:
    """apt-get download the package (no install) and unpack the kernel tarball it ships into `tree`."""
    tmp = Path(tempfile.mkdtemp(prefix=".unpack-", dir=tree.parent))
    try:
        report(f"kbuild: fetching {package} {version} (apt-get download)")
        fetched = subprocess.run(["apt-get", "download", f"{package}={version}"], cwd=tmp,
                                 capture_output=True, text=True)
        debs = list(tmp.glob("*.deb"))
        if fetched.returncode != 0 or not debs:
            raise ImageError(f"kernel_source {source!r}: apt-get download {package}={version} failed: "
                             f"{_last_lines(fetched.stdout + fetched.stderr, 5)}")
        listing = subprocess.run(["dpkg-deb", "--contents", str(debs[0])], capture_output=True, text=True).stdout
        tarballs = re.findall(r"(\./usr/src/linux-source-[^/\s]+\.tar(\.\w+)?)$", listing, re.MULTILINE)
        if not tarballs:
            raise ImageError(f"kernel_source {source!r}: {debs[0].name} holds no /usr/src/linux-source-*.tar*")
        member, suffix = tarballs[0]
        report(f"kbuild: unpacking {member[1:]}")
        started = time.monotonic()
        out = tmp / "tree"
        out.mkdir()
        decompress = f"{_DECOMPRESS[suffix]} | " if suffix in _DECOMPRESS else ""
        script = f'dpkg-deb --fsys-tarfile "$1" | tar -xOf - "$2" | {decompress}tar -xf - --strip-components=1 -C "$3"'
        unpacked = subprocess.run(["bash", "-o", "pipefail", "-c", script, "unpack", str(debs[0]), member, str(out)],
                                  capture_output=True, text=True)
        if unpacked.returncode != 0:
            raise ImageError(f"kernel_source {source!r}: unpacking {member} failed: {_last_lines(unpacked.stderr, 5)}")
        os.replace(out, tree)
        report(f"kbuild: unpacked {package} {version} in {time.monotonic() - started:.0f} s")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _last_lines(text: str, count: int) -> str:
    return " | ".join(text.strip().splitlines()[-count:]) or "no output"


# ---- configuring and building ----

_SCRATCH_CONFIG = ".provium.config"


def _configure(tree: Path, build_dir: Path, wanted: Sequence[kconfig.Fragment]) -> str:
    """The .config of tinyconfig + `wanted`, checked; build_dir/.config is rewritten only when it differs.

    Configuring goes to a scratch file, so that a build directory left with a
    rejected configuration still holds the one it was built with.
    """
    build_dir.mkdir(parents=True, exist_ok=True)
    scratch = build_dir / _SCRATCH_CONFIG
    _make(tree, build_dir, ["tinyconfig", f"KCONFIG_CONFIG={_SCRATCH_CONFIG}"], "tinyconfig.log")
    scratch.write_text(kconfig.merge(scratch.read_text(), wanted))
    _make(tree, build_dir, ["olddefconfig", f"KCONFIG_CONFIG={_SCRATCH_CONFIG}"], "olddefconfig.log")
    text = scratch.read_text()
    kconfig.check(wanted, kconfig.parse(text), tree)
    if _read(build_dir / ".config") != text.strip():
        os.replace(scratch, build_dir / ".config")
    return text


def _modular(config: str) -> bool:
    return "\nCONFIG_MODULES=y\n" in f"\n{config}"


def _debug_info(config: str) -> bool:
    return "\nCONFIG_DEBUG_INFO=y\n" in f"\n{config}"


def _environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in _KBUILD_ENV}


def _make(tree: Path, build_dir: Path, args: Sequence[str], log: str, report: Report | None = None) -> None:
    """make ARCH=x86_64 O=build_dir ARGS in `tree`, its output in build_dir/LOG.

    With `report`, a progress line every PROGRESS_EVERY seconds. ImageError ending
    with make's error lines and the tail of its output when it fails.
    """
    jobs = len(os.sched_getaffinity(0))
    command = ["make", "--no-print-directory", "-C", str(tree), f"ARCH={ARCH}", f"O={build_dir}", f"-j{jobs}", *args]
    log_path = build_dir / log
    errors: list[str] = []
    tail: deque[str] = deque(maxlen=_TAIL_LINES)
    compiled, started = 0, time.monotonic()
    last_report = started
    with open(log_path, "w") as out:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   errors="replace", env=_environment(), stdin=subprocess.DEVNULL)
        for line in process.stdout:
            out.write(line)
            line = line.rstrip("\n")
            tail.append(line)
            step = _STEP.match(line)
            if step:
                compiled += step[1] in ("CC", "AS")
                now = time.monotonic()
                if report and now - last_report >= PROGRESS_EVERY:
                    last_report = now
                    report(f"kbuild: {compiled} files compiled in {now - started:.0f} s ({step[1]} {step[2]})")
            elif _ERROR.search(line) and len(errors) < _ERROR_LINES:
                errors.append(line)
        status = process.wait()
    if status != 0:
        shown = [*errors, "--- the end of make's output ---", *tail] if errors else list(tail)
        raise ImageError(f"kernel build failed: make {' '.join(args)} exited with status {status} "
                         f"(in {build_dir}; full output in {log_path})\n" + "\n".join(shown))


def _install(tree: Path, build_dir: Path, final: Path, modular: bool, report: Report) -> None:
    """Copy the finished kernel out of the build directory into `final`, modules installed, atomically."""
    with locked(final):
        if final.is_dir():
            return
        tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            release = (build_dir / "include/config/kernel.release").read_text().strip()
            for name, target in (("vmlinux", "vmlinux"), (".config", "config"), ("System.map", "System.map")):
                shutil.copyfile(build_dir / name, tmp / target)
            (tmp / "release").write_text(release + "\n")
            modules = tmp / "modules/lib/modules" / release
            if modular:
                report(f"kbuild: installing the modules of {release}")
                _make(tree, build_dir, ["modules_install", f"INSTALL_MOD_PATH={tmp / 'modules'}"], "install.log")
            else:
                modules.mkdir(parents=True)
                (modules / "modules.dep").write_text("")
                (modules / "build").symlink_to(build_dir)
            os.replace(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
