"""Suite root discovery, provium.toml parsing and profile validation.

A profile names the kernel and the guest's shape. The built-in profile
`minimal` needs no file at all; a [profiles.NAME] table in provium.toml or a
file profiles/NAME.yaml (provium/profile_files.py) may override it and add
more. Every error here is a ConfigError with a one-line message naming the
file (and line, where it is known), the profile and the key.
"""

import dataclasses
import glob
from importlib import resources
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    import tomli as tomllib

from . import profile_files
from .errors import ConfigError
from .profile_files import ProfileOrigin

CONFIG_NAME = "provium.toml"
BUILTIN_PROFILE = "minimal"
DEFAULT_MEMORY = "512M"
DEFAULT_CPUS = 1

_SIZE = re.compile(r"^\s*(\d+)\s*([KMGT]?)i?B?\s*$", re.IGNORECASE)
_PROFILE_KEYS = {
    "build": str,
    "kernel": str,
    "initrd": str,
    "modules_dir": str,
    "cmdline": str,
    "memory": str,
    "cpus": int,
    "modules": list,
    "available_modules": list,
    "qemu_args": list,
    "allow_warnings": bool,
    "kernel_source": str,
    "kconfig": list,
    "debug_symbols": bool,
    "leak_check": bool,
}
ARCHIVE = "apt:"  # kernel = "apt:PACKAGE", kernel_source = "apt:PACKAGE": from the distribution's archive
FRAGMENTS = resources.files("provium") / "kconfig"  # provium's own kconfig fragments: NAME.config


def parse_memory(value, what="memory"):
    """Mebibytes in a size such as "512M" or "1G"; ConfigError otherwise."""
    match = _SIZE.match(str(value)) if isinstance(value, str) else None
    if not match:
        raise ConfigError(f"{what} {value!r} is not a size like \"512M\" or \"1G\"")
    number, unit = int(match.group(1)), match.group(2).upper()
    mib = {"K": number / 1024, "": number / (1024 * 1024), "M": number,
           "G": number * 1024, "T": number * 1024 * 1024}[unit]
    if not unit and number >= 64:
        raise ConfigError(f"{what} {value!r} is {number} bytes: give a unit (\"{number}M\" for MiB)")
    if mib < 64 or mib != int(mib):
        raise ConfigError(f"{what} {value!r} must be a whole number of MiB, at least 64M")
    return int(mib)


@dataclass(frozen=True)
class Profile:
    """A validated profile: where the kernel is and how the guest looks."""

    name: str
    kernel: Path | None      # a kernel file; None when provium fetches or builds it (see kernel_package, kernel_source)
    initrd: Path | None
    modules_dir: Path | None
    cmdline: str
    memory_mib: int
    cpus: int
    modules: tuple = ()
    available_modules: tuple = ()
    origin: ProfileOrigin = ProfileOrigin()
    build: str | None = None
    qemu_args: tuple = ()
    allow_warnings: bool = False  # kernel WARNING splats do not fail tests on this profile
    kernel_package: str | None = None  # kernel = "apt:PACKAGE": an image package from the archive
    kernel_source: str | None = None   # a kernel tree (absolute path) or "apt:SOURCE-PACKAGE" to build
    kconfig: tuple = ()                # fragments for kernel_source: provium's names or absolute paths
    debug_symbols: bool = False        # with kernel_package: fetch its debug-symbol package too
    leak_check: bool = False           # kmemleak checks each test for leaks (on kernels that have it)
    root: Path | None = None           # the suite root

    def where(self, key: str | None = None) -> str:
        """How an error about this profile (and its `key`) begins: its file, line, name and key."""
        return self.origin.where(self.name, key)

    @property
    def kernel_at_hand(self) -> bool:
        """True when the kernel is a file already there; False when provium fetches or builds it."""
        return self.kernel is not None


DEFAULT_FIXTURE_CACHE_LIMIT = "8G"
_BYTE_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*$", re.IGNORECASE)


def parse_size(value, what="size"):
    """Bytes in a size such as "5G", "500M", "1.5T" or "0" (units of 1024); ConfigError otherwise."""
    match = _BYTE_SIZE.match(value) if isinstance(value, str) else None
    if not match:
        raise ConfigError(f"{what} {value!r} is not a size like \"5G\" or \"500M\"")
    unit = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}[match.group(2).upper()]
    return int(float(match.group(1)) * unit)


@dataclass(frozen=True)
class RunSettings:
    """Deadlines in seconds as written; under TCG each is multiplied by tcg_slowdown."""

    test_timeout: float = 120.0
    file_timeout: float = 1200.0
    boot_timeout: float = 30.0
    op_timeout: float = 60.0
    tcg_slowdown: float = 2.0

    def slowdown(self, accel: str) -> float:
        """What every deadline is multiplied by under `accel` ("kvm" or "tcg")."""
        return self.tcg_slowdown if accel == "tcg" else 1.0


_RUN_KEYS = {f.name for f in dataclasses.fields(RunSettings)}


@dataclass
class Config:
    """The suite's configuration: its root, its profiles, run settings and the fixture cache limit."""

    root: Path
    path: Path | None
    raw_profiles: dict[str, dict] = field(default_factory=dict)         # name -> its keys as written
    origins: dict[str, ProfileOrigin] = field(default_factory=dict)     # name -> where it is defined
    fixture_cache_limit: str = DEFAULT_FIXTURE_CACHE_LIMIT
    run: RunSettings = field(default_factory=RunSettings)
    matrix: dict = field(default_factory=dict)  # [matrix] NAME = [PROFILE, ...]: the default --matrix
    cache_dir: Path | None = None       # [cache] dir, absolute (see cache.Cache.for_suite); None: not set
    cache_max_size: str | None = None   # [cache] max_size: what `provium cache prune` trims to by default

    @property
    def files(self) -> list[Path]:
        """The files that define the suite: provium.toml and the profile files."""
        return sorted({*([self.path] if self.path else []),
                       *(origin.path for origin in self.origins.values() if origin.path)})

    def profile_names(self):
        return sorted({BUILTIN_PROFILE, *self.raw_profiles})

    def profile(self, name):
        """The validated profile `name`; ConfigError naming the known ones."""
        if not isinstance(name, str) or (name != BUILTIN_PROFILE and name not in self.raw_profiles):
            known = ", ".join(self.profile_names())
            raise ConfigError(f"unknown profile {name!r} (known: {known})")
        return _build_profile(name, self.raw_profiles.get(name, {}), self)


def find_root(start=None):
    """The nearest directory from `start` upward holding provium.toml, else `start`."""
    start = Path(start or os.getcwd()).resolve()
    return _config_dir(start) or start


def _config_dir(start):
    for directory in (start, *start.parents):
        if (directory / CONFIG_NAME).is_file():
            return directory
    return None


def suite_root_of(test_file, default_root):
    """The suite a test file belongs to: the nearest provium.toml above it, else the default root."""
    return _config_dir(Path(test_file).resolve().parent) or default_root


def load(start=None):
    """The configuration of the suite that contains `start` (default: cwd): provium.toml, if there is
    one, and the profile files under profiles/."""
    root = find_root(start)
    path = root / CONFIG_NAME
    config = _from_toml(root, path) if path.is_file() else Config(root=root, path=None)
    for file in profile_files.files(root):
        name = file.stem
        table, origin = profile_files.read(file)
        if name in config.origins:
            first = config.origins[name].path
            defined = f"{first} [profiles.{name}]" if first == config.path else str(first)
            raise ConfigError(f"profile {name!r} is defined twice: in {defined} and in {file}")
        config.raw_profiles[name] = table
        config.origins[name] = origin
    for name, table in config.raw_profiles.items():
        _check_keys(name, table, config)
    return config


def _from_toml(root, path):
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: syntax error: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    unknown = sorted(set(data) - {"cache", "profiles", "fixtures", "run", "matrix"})
    if unknown:
        raise ConfigError(f"{path}: unknown top-level key {unknown[0]!r} "
                          f"(allowed: cache, fixtures, matrix, profiles, run)")
    matrix = data.get("matrix", {})
    if not isinstance(matrix, dict) or len(matrix) > 1 or not all(
            isinstance(v, list) and v and all(isinstance(p, str) and p for p in v) for v in matrix.values()):
        raise ConfigError(f"{path}: [matrix] takes one key, NAME = [\"PROFILE\", ...] (the profiles NAME "
                          f"stands for, one run each)")
    run = data.get("run", {})
    if not isinstance(run, dict):
        raise ConfigError(f"{path}: 'run' must be a table")
    for key, value in run.items():
        if key not in _RUN_KEYS:
            raise ConfigError(f"{path}: [run]: unknown key {key!r} (allowed: {', '.join(sorted(_RUN_KEYS))})")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise ConfigError(f"{path}: [run]: key {key!r}: must be a positive number of seconds, not {value!r}")
    profiles = data.get("profiles", {})
    if not isinstance(profiles, dict):
        raise ConfigError(f"{path}: 'profiles' must be a table of [profiles.NAME] tables")
    for name, table in profiles.items():
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: profile {name!r} must be a table")
    fixtures = data.get("fixtures", {})
    if not isinstance(fixtures, dict) or set(fixtures) - {"cache_limit"}:
        raise ConfigError(f"{path}: [fixtures] takes one key, cache_limit (a size like \"8G\")")
    limit = fixtures.get("cache_limit", DEFAULT_FIXTURE_CACHE_LIMIT)
    try:
        parse_memory(limit, "cache_limit")
    except ConfigError as exc:
        raise ConfigError(f"{path}: [fixtures]: {exc}") from None
    cache_dir, cache_max_size = _cache_table(root, path, data.get("cache", {}))
    return Config(root=root, path=path, raw_profiles=profiles, origins={name: ProfileOrigin(path) for name in profiles},
                  fixture_cache_limit=limit, run=RunSettings(**{k: float(v) for k, v in run.items()}), matrix=matrix,
                  cache_dir=cache_dir, cache_max_size=cache_max_size)


def _cache_table(root, path, table):
    """[cache] dir = "PATH" (relative to the suite root) and max_size = "SIZE": (absolute dir or None, size or
    None)."""
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: 'cache' must be a table")
    for key, value in table.items():
        if key not in ("dir", "max_size"):
            raise ConfigError(f"{path}: [cache]: unknown key {key!r} (allowed: dir, max_size)")
        if not isinstance(value, str):
            raise ConfigError(f"{path}: [cache]: key {key!r}: must be a string, not "
                              f"{_KINDS.get(type(value), type(value).__name__)}")
        if not value.strip():
            raise ConfigError(f"{path}: [cache]: key {key!r}: must not be empty")
    if "max_size" in table:
        try:
            parse_size(table["max_size"], "max_size")
        except ConfigError as exc:
            raise ConfigError(f"{path}: [cache]: {exc}") from None
    directory = _resolve_dir(root, table["dir"]) if "dir" in table else None
    return directory, table.get("max_size")


def _resolve_dir(root, value):
    path = Path(os.path.expanduser(value))
    return Path(os.path.abspath(path if path.is_absolute() else root / path))


def _where(config, name, key=None):
    return config.origins.get(name, ProfileOrigin()).where(name, key)


_KINDS = {str: "a string", int: "an integer", float: "a number", bool: "true or false", list: "a list",
          dict: "a mapping", type(None): "null"}


def _check_keys(name, table, config):
    for key, value in table.items():
        expected = _PROFILE_KEYS.get(key)
        if expected is None:
            allowed = ", ".join(sorted(_PROFILE_KEYS))
            raise ConfigError(f"{_where(config, name, key)}: unknown key (allowed: {allowed})")
        if not isinstance(value, expected) or (isinstance(value, bool) and expected is not bool):
            raise ConfigError(f"{_where(config, name, key)}: must be {_KINDS[expected]}, "
                              f"not {_KINDS.get(type(value), type(value).__name__)}")
    for key in ("modules", "available_modules"):
        for number, module in enumerate(table.get(key, []), 1):
            if not isinstance(module, str) or not module:
                raise ConfigError(f"{_where(config, name, key)}: entry {number} ({module!r}) is not a module name")
    if "*" in table.get("modules", []):
        raise ConfigError(f"{_where(config, name, 'modules')}: \"*\" (the whole tree) is for available_modules")
    if not all(isinstance(arg, str) for arg in table.get("qemu_args", [])):
        raise ConfigError(f"{_where(config, name, 'qemu_args')}: entries must be strings")
    if table.get("debug_symbols") and not table.get("kernel", "").startswith(ARCHIVE):
        instead = ("a kernel built from kernel_source has line tables when its kconfig asks for them (the \"debug\" "
                   "fragment)" if "kernel_source" in table else "the host kernel's or a kernel file's debug symbols "
                   "are read from /usr/lib/debug, where its -dbg or -dbgsym package installs them")
        raise ConfigError(f"{_where(config, name, 'debug_symbols')}: is for kernel = \"apt:PACKAGE\": {instead}")


def newest_host_kernel(boot="/boot", modules_root="/lib/modules"):
    """The newest /boot/vmlinuz-VERSION that has /lib/modules/VERSION, or None."""
    candidates = []
    for path in glob.glob(os.path.join(boot, "vmlinuz-*")):
        version = os.path.basename(path)[len("vmlinuz-"):]
        if os.path.isdir(os.path.join(modules_root, version)):
            candidates.append((_version_key(version), path, version))
    if not candidates:
        return None
    _, path, version = max(candidates)
    return Path(path), Path(modules_root) / version


def _version_key(version):
    return [int(part) if part.isdigit() else part for part in re.split(r"[.\-+~]", version)]


def _resolve(config, value):
    path = Path(os.path.expanduser(value))
    return path if path.is_absolute() else config.root / path


def _kernel_file(name, table, config):
    """(kernel file, modules_dir) of a profile that boots a kernel file: its own, else the host's."""
    if "kernel" in table:
        kernel = _resolve(config, table["kernel"])
        modules_dir = None
    else:
        found = newest_host_kernel()
        if found is None:
            raise ConfigError(
                f"{_where(config, name)}: no kernel: no /boot/vmlinuz-VERSION with a matching "
                f"/lib/modules/VERSION (install linux-image-amd64, or set 'kernel')")
        kernel, modules_dir = found
    if not kernel.is_file():
        raise ConfigError(f"{_where(config, name, 'kernel')}: file not found: {kernel}")
    if not os.access(kernel, os.R_OK):
        raise ConfigError(
            f"{_where(config, name, 'kernel')}: {kernel} is not readable by this user "
            f"(Debian and Ubuntu install it mode 0600: sudo chmod 0644 {kernel})")
    if "modules_dir" in table:
        modules_dir = _resolve(config, table["modules_dir"])
        if not modules_dir.is_dir():
            raise ConfigError(f"{_where(config, name, 'modules_dir')}: directory not found: {modules_dir}")
    return kernel, modules_dir


def _kernel_source(name, table, config):
    """(kernel_source, kconfig fragments) as the build wants them: absolute paths or archive names."""
    source = table["kernel_source"]
    if not source.startswith(ARCHIVE):
        tree = _resolve(config, source)
        if not (tree / "Makefile").is_file() or not (tree / "Kconfig").is_file():
            raise ConfigError(f"{_where(config, name, 'kernel_source')}: not a kernel source tree "
                              f"(no Makefile and Kconfig): {tree}")
        source = str(tree)
    elif source == ARCHIVE:
        raise ConfigError(f"{_where(config, name, 'kernel_source')}: name a source package after apt:")
    fragments = []
    for entry in table.get("kconfig", ["minimal"]):
        if not isinstance(entry, str) or not entry:
            raise ConfigError(f"{_where(config, name, 'kconfig')}: entries must be fragment names or files")
        if "/" not in entry and not entry.endswith(".config"):
            if not (FRAGMENTS / f"{entry}.config").is_file():
                known = ", ".join(sorted(p.name[:-len(".config")] for p in FRAGMENTS.iterdir()
                                         if p.name.endswith(".config")))
                raise ConfigError(f"{_where(config, name, 'kconfig')}: no fragment {entry!r} "
                                  f"(provium's own: {known}; a file of the suite needs its path)")
            fragments.append(entry)
            continue
        path = _resolve(config, entry)
        if not path.is_file():
            raise ConfigError(f"{_where(config, name, 'kconfig')}: file not found: {path}")
        fragments.append(str(path))
    return source, tuple(fragments)


def _build_profile(name, table, config):
    kernel = modules_dir = package = source = None
    fragments = ()
    if "kernel" in table and "kernel_source" in table:
        raise ConfigError(f"{_where(config, name, 'kernel_source')}: set either kernel or kernel_source, not both")
    if "kconfig" in table and "kernel_source" not in table:
        raise ConfigError(f"{_where(config, name, 'kconfig')}: fragments are for a kernel built from "
                          f"kernel_source")
    fetched = "kernel_source" in table or table.get("kernel", "").startswith(ARCHIVE)
    if fetched and "modules_dir" in table:
        raise ConfigError(f"{_where(config, name, 'modules_dir')}: a kernel provium fetches or builds "
                          f"brings its own modules")
    if "kernel_source" in table:
        source, fragments = _kernel_source(name, table, config)
    elif fetched:
        package = table["kernel"][len(ARCHIVE):]
        if not package:
            raise ConfigError(f"{_where(config, name, 'kernel')}: name an image package after apt:")
    else:
        kernel, modules_dir = _kernel_file(name, table, config)
    initrd = None
    if "initrd" in table:
        initrd = _resolve(config, table["initrd"])
        if not initrd.is_file():
            raise ConfigError(f"{_where(config, name, 'initrd')}: file not found: {initrd}")
    try:
        memory = parse_memory(table.get("memory", DEFAULT_MEMORY))
    except ConfigError as exc:
        raise ConfigError(f"{_where(config, name, 'memory')}: {exc}") from None
    cpus = table.get("cpus", DEFAULT_CPUS)
    if not 1 <= cpus <= 64:
        raise ConfigError(f"{_where(config, name, 'cpus')}: must be between 1 and 64, not {cpus}")
    return Profile(
        name=name, kernel=kernel, initrd=initrd, modules_dir=modules_dir,
        cmdline=table.get("cmdline", ""), memory_mib=memory, cpus=cpus,
        modules=tuple(table.get("modules", ())),
        available_modules=tuple(table.get("available_modules", ())),
        origin=config.origins.get(name, ProfileOrigin()),
        build=table.get("build"),
        qemu_args=tuple(table.get("qemu_args", ())),
        allow_warnings=table.get("allow_warnings", False),
        kernel_package=package, kernel_source=source, kconfig=fragments, root=config.root,
        debug_symbols=table.get("debug_symbols", False), leak_check=table.get("leak_check", False),
    )
