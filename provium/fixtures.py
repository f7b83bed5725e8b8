"""Fixtures: prepared guests built once by fixtures/NAME.lua, snapshotted, resumed as clones.

An entry lives in <cache>/fixtures/NAME/KEY/VARIANT/: the guest's RAM file,
its device state, its frozen disk overlays and manifest.json. KEY is what is
known before the script runs (its source, provium.toml, the agent, the QEMU
version, the accelerator); VARIANT is the content of everything the build
read: the files it required, read or booted with, its profile's boot images,
its disks and the entries of the fixtures it started from. Inputs are recorded
by content and by their place in the suite ("@root/module/x.ko"), never by an
absolute path, so two checkouts of one suite with different files each get
their own variant (both stay cached), and a cache moved along with its suite,
or to another machine with the same kernel and QEMU, still hits. Nothing in an
entry names the cache's absolute path: the manifest's boot images are relative
to the cache root, and a frozen disk whose backing image is in the cache (the
disk of a fixture this one started from) names it relative to itself; one
backed by an image of the suite is pointed at it where it is when loaded.

Entries are built in a temporary directory and renamed into place under a
lock, so a killed build leaves nothing a later run trusts; an entry that fails
to restore is rebuilt once. A size cap evicts the least recently used entries.

Once a fixture has been asked for a second time (the run reuses it), the next
clone of it is resumed and warmed (its first command run, which fills QEMU's
translation cache) ahead of time on a launcher thread that lives as long as
the run, so a test that asks for it again gets a ready clone. A fixture asked
for once costs no clone nobody takes, and no CPU taken from the test that runs.
"""

import dataclasses
import functools
import json
import os
import re
import shutil
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from . import agent_build, images, qemu, tempdirs
from .cache import claimed, digest, last_used, locked
from .config import parse_memory
from .errors import BootError, ProviumError, QemuError
from .profile_build import Preparer
from .vm import SNAPSHOT_RAM, SNAPSHOT_STATE, SnapshotSpec, Vm, accelerator

_FORMAT = 3
MANIFEST = "manifest.json"
LAST_USED = "last-used"
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
SUITE_ANCHOR, CACHE_ANCHOR = "@root/", "@cache/"
BUILD_ANCHOR = "@build:"  # "@build:PROFILE/FILE": in the build directory of the suite's profile PROFILE


class FixtureError(ProviumError):
    """A fixture is missing or could not be built; the message says where and why."""


@dataclasses.dataclass(frozen=True)
class Entry:
    """One cached snapshot of a fixture."""

    name: str
    key: str      # what was known before the script ran: source, provium.toml, agent, QEMU, accelerator
    variant: str  # the content of everything the build read
    path: Path
    spec: SnapshotSpec
    modules: tuple[Path, ...] = ()  # the .ko files its build booted with, its deps' too (to decode reports)

    @property
    def identity(self) -> str:
        return f"{self.key}/{self.variant}"


@dataclasses.dataclass(frozen=True)
class BuildResult:
    """What running a fixture script produced: the VM to snapshot and what it used."""

    vm: Vm
    files: tuple[Path, ...]  # host files the script required, read or booted with
    deps: dict[str, str]     # fixture name -> identity of the entry it started from


def qemu_version(cache) -> str:
    """The first line of `qemu --version`, remembered while the binary stays the same (Cache.remember)."""
    binary = qemu.find_qemu()

    def ask():
        out = subprocess.run([binary, "--version"], capture_output=True, text=True)
        return out.stdout.splitlines()[0] if out.stdout else "unknown"

    return cache.remember("version", [Path(binary)], ask)


def disk_usage(path):
    """Bytes a directory tree really occupies (RAM files are sparse)."""
    return sum(p.stat().st_blocks * 512 for p in Path(path).rglob("*") if p.is_file())


def _backing_file(qcow2: Path) -> str | None:
    """The backing file a qcow2 image names in its header (None when it has none)."""
    with open(qcow2, "rb") as f:
        header = f.read(20)
        offset, size = int.from_bytes(header[8:16], "big"), int.from_bytes(header[16:20], "big")
        if header[:4] != b"QFI\xfb" or not offset:
            return None
        f.seek(offset)
        return os.fsdecode(f.read(size))


def _rebase(qcow2: Path, backing: Path | str | None, backing_format: str) -> None:
    """Point a frozen overlay at `backing` (the same content, found elsewhere now; a relative name is
    relative to the overlay's directory), or, with None, copy its backing's data into it so that it
    stands alone."""
    args = ["-u", "-F", backing_format, "-b", str(backing)] if backing else ["-b", ""]
    result = subprocess.run(["qemu-img", "rebase", "-q", "-f", "qcow2", *args, str(qcow2)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise FixtureError(f"cannot rebase the fixture disk {qcow2}: {result.stderr.strip()}")


def _last_used(path: Path) -> float:
    try:
        return (path / LAST_USED).stat().st_mtime
    except OSError:
        return 0.0


def _backing_name(frozen: Path, backing: Path, anchored: str) -> str:
    """What a frozen overlay's header names its backing image: relative to the overlay's directory when
    the image is in the cache (the cache moves as one), else its absolute path (re-pointed when loaded)."""
    if anchored.startswith(CACHE_ANCHOR):
        return os.path.relpath(backing, frozen.parent)
    return str(backing)


class Fixtures:
    """The fixtures of one suite. run_script(fixtures, name, path, build_dir) -> BuildResult."""

    def __init__(self, config, cache, run_script, options):
        """options: the run's FileOptions; fixture scripts get its timeouts and scratch directory."""
        self.config = config
        self.cache = cache
        self.run_script = run_script
        self.options = options
        self.timeouts = options.timeouts
        self.root = cache.root / "fixtures"
        self.limit = parse_memory(config.fixture_cache_limit, "fixtures.cache_limit") * 1024 * 1024
        self._entries = {}
        self._failed = {}
        self._building_here = threading.local()
        self._pool = {}  # name -> Future of a resumed, warmed clone
        self._asked = {}  # name -> how many clones of it were asked for
        self._pool_lock = threading.Lock()
        self._closing = threading.Event()
        # QEMU dies with the thread that started it: pooled clones start on this long-lived one
        self._launcher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="provium-pool")
        self.preparer = options.preparer or Preparer(cache)

    @property
    def _building(self):
        """The fixtures this thread is building, outermost first (to catch a fixture needing itself)."""
        if not hasattr(self._building_here, "names"):
            self._building_here.names = []
        return self._building_here.names

    # ---------------------------------------------------------------- naming and keys

    def source(self, name):
        """fixtures/NAME.lua under the suite root; FixtureError when it does not exist."""
        if not isinstance(name, str) or not _NAME.match(name):
            raise FixtureError(f"fixture name {name!r} is not a plain name (letters, digits, _ . -)")
        path = self.config.root / "fixtures" / f"{name}.lua"
        if not path.is_file():
            raise FixtureError(f"fixture {name!r} not found: no file {path}")
        return path

    def key(self, name):
        """The key of the fixture's current source and environment (with every file that defines the suite's
        profiles: provium.toml and profiles/*.yaml)."""
        definitions = [part for path in self.config.files
                       for part in (path.relative_to(self.config.root).as_posix(), path)]
        return digest(_FORMAT, self.source(name), *definitions, self._environment, self.options.aliases)

    @functools.cached_property
    def _environment(self):
        """What every key shares: the agent binary, the QEMU version, the accelerator and provium's own
        kernel command line (once per run)."""
        accel = accelerator()[0]
        return digest(agent_build.build(self.cache), qemu_version(self.cache), accel, qemu.kernel_cmdline(accel, 0))

    def _anchor(self, path: Path) -> str | None:
        """How a build input is recorded: by its place in the suite, in a profile's build directory (its
        place in the cache depends on the suite's) or in the cache; None for a file in the run's scratch
        directory (the script made it from recorded inputs)."""
        path = Path(os.path.realpath(path))
        for profile, build_dir in self.preparer.build_dirs().items():
            build_dir = Path(os.path.realpath(build_dir))
            if build_dir in path.parents:
                return f"{BUILD_ANCHOR}{profile}/{path.relative_to(build_dir)}"
        scratch = self.options.scratch
        bases = [(Path(os.path.realpath(base)), anchor) for base, anchor in
                 ((scratch, None), (self.config.root, SUITE_ANCHOR), (self.cache.root, CACHE_ANCHOR)) if base]
        # the innermost base: a cache inside the suite ([cache] dir = "cache") is the cache, not the suite's
        for base, anchor in sorted(bases, key=lambda pair: len(pair[0].parts), reverse=True):
            if base in path.parents:
                return anchor and anchor + str(path.relative_to(base))
        return str(path)

    def _resolve(self, anchored: str) -> Path:
        if anchored.startswith(BUILD_ANCHOR):
            profile, _, rest = anchored[len(BUILD_ANCHOR):].partition("/")
            return self.preparer.prepare(self.config.profile(profile)).build_dir / rest
        for anchor, base in ((SUITE_ANCHOR, self.config.root), (CACHE_ANCHOR, self.cache.root)):
            if anchored.startswith(anchor):
                return Path(base) / anchored[len(anchor):]
        return Path(anchored)

    # ---------------------------------------------------------------- lookup

    def entry(self, name):
        """A valid entry for `name`, built if there is none (once, even across processes)."""
        if name in self._failed:
            raise FixtureError(self._failed[name])
        if name in self._building:
            raise FixtureError(f"fixture {name!r} depends on itself: {' -> '.join([*self._building, name])}")
        key = self.key(name)
        known = self._entries.get(name)
        if known and known.key == key:
            return known
        entry = self._find(name, key)
        while entry is None or not self.cache.use(entry.path):  # use(): marked used, kept from prune
            with locked(self.root / name / key):
                entry = self._find(name, key) or self._build(name, key)
        self._entries[name] = entry
        return entry

    def _find(self, name, key):
        """The valid variant of NAME/KEY for the suite as it is now (most recently used first), or None."""
        variants = sorted((m.parent for m in (self.root / name / key).glob(f"*/{MANIFEST}")),
                          key=_last_used, reverse=True)
        return next(filter(None, (self._load(name, key, path) for path in variants)), None)

    def _load(self, name, key, path):
        """The entry at `path` if it is complete and every input it recorded is unchanged, else None."""
        try:
            manifest = json.loads((path / MANIFEST).read_text())
            spec = SnapshotSpec(**{**manifest["spec"], "disks": tuple(map(tuple, manifest["spec"]["disks"])),
                                    "qemu_args": tuple(manifest["spec"]["qemu_args"])})
            if (path / SNAPSHOT_RAM).stat().st_size != spec.memory_mib * 1024 * 1024:
                return None
            if (path / SNAPSHOT_STATE).stat().st_size == 0:
                return None
            # its build step first: the files checked below may be its outputs
            profile = self.preparer.prepare(self.config.profile(spec.profile)).profile
            boot = images.prepare(profile, self.cache)
            if [str(p.relative_to(self.cache.root)) for p in (boot.vmlinux, boot.initrd)] != manifest["images"]:
                return None
            for file, file_hash in manifest["files"].items():
                if self.cache.digest(self._resolve(file)) != file_hash:
                    return None
            modules = [self._resolve(file) for file in manifest["files"] if file.endswith(".ko")]
            for dep, identity in manifest["deps"].items():
                found = self._find(dep, self.key(dep))
                if found is None or found.identity != identity:
                    return None
                modules += found.modules
            self._attach_disks(path, manifest["disks"])
        except (OSError, ValueError, KeyError, TypeError, ProviumError):
            return None  # missing, partial, corrupt or stale: a miss, never a crash
        spec = dataclasses.replace(spec, vmlinux=str(boot.vmlinux), initrd=str(boot.initrd))
        return Entry(name, key, path.name, path, spec, tuple(dict.fromkeys(modules)))

    def _attach_disks(self, path, disks):
        """Point each frozen disk overlay at its backing image where that is now (a moved suite or cache)."""
        for index, disk in enumerate(disks):
            frozen = path / f"disk{index}.qcow2"
            if not frozen.is_file():
                raise FixtureError(f"{frozen} is missing")
            if disk["backing"] is None:
                continue  # made standalone at build time
            backing = self._resolve(disk["backing"])
            if not backing.is_file():
                raise FixtureError(f"{backing} is missing")
            name = _backing_name(frozen, backing, disk["backing"])
            if _backing_file(frozen) != name:
                with locked(frozen):
                    _rebase(frozen, name, disk["format"])

    # ---------------------------------------------------------------- building

    def _build(self, name, key):
        self.root.mkdir(parents=True, exist_ok=True)
        self._sweep()
        build_dir = self.root / name / f".build-{os.getpid()}-{time.monotonic_ns()}"
        build_dir.mkdir(parents=True)
        try:
            self._building.append(name)
            try:
                result = self.run_script(self, name, self.source(name), build_dir)
            except ProviumError as exc:
                self._failed[name] = f"fixture {name!r} failed to build: {exc}"
                raise FixtureError(self._failed[name]) from None
            finally:
                self._building.pop()
            vm = result.vm
            snapshot_dir, backings = vm.snapshot_dir, vm.disk_backings
            boot = images.prepare(vm.profile, self.cache)
            spec = vm.snapshot()
            disks = []
            for index, (backing, backing_format) in enumerate(backings):
                anchored = self._anchor(backing)
                if anchored is None:  # a scratch image goes away with the run: keep its data in the overlay
                    _rebase(snapshot_dir / f"disk{index}.qcow2", None, backing_format)
                disks.append({"backing": anchored, "format": backing_format})
            files = {anchored: self.cache.digest(path) for path in result.files
                     if (anchored := self._anchor(path)) is not None}
            images_used = [str(p.relative_to(self.cache.root)) for p in (boot.vmlinux, boot.initrd)]
            # the spec's images are found again when loaded (images.prepare): kept relative, as "images"
            spec_as_written = {**dataclasses.asdict(spec), "vmlinux": CACHE_ANCHOR + images_used[0],
                               "initrd": CACHE_ANCHOR + images_used[1]}
            manifest = {"name": name, "key": key, "created": time.time(), "spec": spec_as_written,
                        "images": images_used,
                        "files": dict(sorted(files.items())), "deps": dict(sorted(result.deps.items())),
                        "disks": disks}
            variant = digest(json.dumps({k: manifest[k] for k in ("images", "files", "deps", "disks")}))
            final = self.root / name / key / variant
            for index, disk in enumerate(disks):  # a backing image in the cache: named relative to the entry
                if disk["backing"] and disk["backing"].startswith(CACHE_ANCHOR):
                    _rebase(snapshot_dir / f"disk{index}.qcow2",
                            _backing_name(final / f"disk{index}.qcow2", self._resolve(disk["backing"]),
                                          disk["backing"]), disk["format"])
            (snapshot_dir / MANIFEST).write_text(json.dumps(manifest, indent=1))
            (snapshot_dir / LAST_USED).touch()
            final.parent.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(final, ignore_errors=True)
            os.rename(snapshot_dir, final)
            fd = os.open(final.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        finally:
            shutil.rmtree(build_dir, ignore_errors=True)
        self.cache.use(final)
        self.evict(keep=final)
        modules = [path for path in result.files if path.name.endswith(".ko")]
        modules += [module for dep in result.deps for module in self.entry(dep).modules]
        return Entry(name, key, variant, final, spec, tuple(dict.fromkeys(modules)))

    def _sweep(self):
        """Remove build directories of provium processes that are gone (killed mid-build)."""
        for build in self.root.glob("*/.build-*"):
            pid = build.name.split("-")[1]
            if pid.isdigit() and tempdirs.process_gone(int(pid)):
                shutil.rmtree(build, ignore_errors=True)

    # ---------------------------------------------------------------- clones

    def clone(self, name, snapshot_dir=None):
        """A running, independent clone of fixture `name`: a warm one from the pool when there is one."""
        if snapshot_dir is not None:  # a fixture being built on this one: a private copy, never pooled
            return self.resume(name, snapshot_dir)
        with self._pool_lock:
            pooled = self._pool.get(name)
            if pooled is not None and pooled.done():
                del self._pool[name]
            else:
                pooled = None  # not ready: never wait for it, resume here (in parallel with it)
        vm = None
        if pooled is not None:
            try:
                vm = pooled.result()
            except ProviumError:
                pass  # resume it here instead, where the error reaches the test
        if vm is None or vm.state != "running":
            vm = self.resume(name)
        with self._pool_lock:
            self._asked[name] = self._asked.get(name, 0) + 1
            if name not in self._pool and self._asked[name] > 1 and not self._closing.is_set():
                self._pool[name] = self._launcher.submit(self._warm_clone, name)
        return vm

    def _warm_clone(self, name):
        vm = self.resume(name)
        if not self._closing.is_set():  # else nobody will take it: close() kills it
            vm.exec("true")
        return vm

    def close(self):
        """Stop the pool: kill the clones nobody took."""
        self._closing.set()
        with self._pool_lock:
            pooled, self._pool = list(self._pool.values()), {}
        for future in pooled:
            future.cancel()
        self._launcher.shutdown(wait=True)
        for future in pooled:
            if future.done() and not future.cancelled() and future.exception() is None:
                future.result().kill()

    def resume(self, name, snapshot_dir=None):
        """A clone resumed now (not from the pool), its kernel reports decoded against its kernel and the modules
        its build booted with; with snapshot_dir, one that can be snapshotted."""
        entry = self.entry(name)
        for attempt in (1, 2):
            try:
                vm = Vm.resume(self.config.profile(entry.spec.profile), self.cache, entry.spec, entry.path,
                               name=name, snapshot_dir=snapshot_dir, timeouts=self.timeouts)
                break
            except (BootError, QemuError):
                if attempt == 2:
                    raise
                with locked(entry.path):
                    shutil.rmtree(entry.path, ignore_errors=True)
                self._entries.pop(name, None)
                entry = self.entry(name)
        (entry.path / LAST_USED).touch()
        vm.symbols = self.preparer.prepare(vm.profile).symbols().with_modules(entry.modules)  # its build's .ko too
        return vm

    # ---------------------------------------------------------------- the cache as a whole

    def entries(self):
        """Every complete entry on disk (older layouts too, so that eviction reaches them):
        (name, KEY/VARIANT, path, bytes, last use)."""
        rows = []
        for manifest in sorted(self.root.rglob(MANIFEST)):
            path = manifest.parent
            name, *identity = path.relative_to(self.root).parts
            if name.startswith(".") or any(part.startswith(".build-") for part in identity):
                continue
            rows.append((name, "/".join(identity), path, disk_usage(path), last_used(path)))
        return rows

    def evict(self, keep=None):
        """Delete least recently used entries until the fixture cache fits its limit; an entry in use by a
        provium process (this one's included) or being rebuilt stays."""
        rows = sorted(self.entries(), key=lambda row: row[4])
        total = sum(row[3] for row in rows)
        for _, _, path, size, _ in rows:
            if total <= self.limit:
                break
            if path != keep:
                with claimed(path) as free:
                    if free:
                        shutil.rmtree(path, ignore_errors=True)
                        total -= size

    def clean(self):
        """Delete every fixture entry."""
        shutil.rmtree(self.root, ignore_errors=True)

