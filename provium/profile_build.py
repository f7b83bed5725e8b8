"""Preparing a profile for a run: its kernel, fetched or built on first use, then its build step.

A kernel-module suite builds its modules against the guest kernel in a
profile's `build` step: a shell command run in the suite root through /bin/sh,
with the kernel described in PROVIUM_* variables and an output directory of its
own per profile and kernel (PROVIUM_BUILD_DIR), so that a matrix never boots one
kernel's module on another. A profile is prepared once per run, on its first
use, however many files ask at once; the time it takes is not a test's (see
deadline.suspended). A failure is remembered and fails every later use.
"""

import os
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import deadline, images, kernels
from .cache import Cache, digest, locked
from .config import Profile
from .errors import ConfigError, ProviumError
from .kernels import KernelTree
from .symbolize import Symbols

BUILD_TIMEOUT = 900.0


@dataclass(frozen=True)
class Prepared:
    """A profile ready to boot: its kernel and the directory its build step wrote to."""

    profile: Profile
    kernel: KernelTree
    build_dir: Path

    def symbols(self) -> Symbols:
        """Where its guests' kernel reports are decoded: the kernel's line tables, and the modules its
        build step built and the kernel's own."""
        module_dirs = [self.build_dir] + ([self.kernel.debug_modules] if self.kernel.debug_modules else [])
        return Symbols(self.kernel.vmlinux, tuple(module_dirs))


class Preparer:
    """Prepares profiles for one run (one per run: a build step runs once in it)."""

    def __init__(self, cache: Cache, report: Callable[[str], None] = lambda line: None):
        self.cache = cache
        self.report = report
        self._done: dict[Profile, Prepared | ProviumError] = {}
        self._locks: dict[Profile, threading.Lock] = {}
        self._lock = threading.Lock()

    def prepare(self, profile: Profile) -> Prepared:
        """The profile ready to boot, its kernel fetched or built and its build step run (once)."""
        with self._lock:
            lock = self._locks.setdefault(profile, threading.Lock())
        with lock:
            if profile not in self._done:
                try:
                    with deadline.suspended():
                        self._done[profile] = self._prepare(profile)
                except ProviumError as exc:
                    self._done[profile] = exc
            done = self._done[profile]
        if isinstance(done, ProviumError):
            raise done
        return done

    def build_dirs(self) -> dict[str, Path]:
        """The build directory of each profile prepared so far, by profile name."""
        with self._lock:
            return {profile.name: done.build_dir for profile, done in list(self._done.items())
                    if isinstance(done, Prepared)}

    def _prepare(self, profile):
        where = profile.where()
        try:
            tree = kernels.resolve(profile, self.cache, self.report)
        except ConfigError:
            raise
        except ProviumError as exc:
            raise ConfigError(f"{where}: kernel: {exc}") from None
        if not profile.kernel_at_hand:  # module names could not be checked before the kernel was here
            images.check_modules(profile, tree.modules_dir, self.cache)
        # a kernel the cache holds is named by its place in the cache, which travels with it
        image = tree.image.relative_to(self.cache.root) if tree.image.is_relative_to(self.cache.root) else tree.image
        build_dir = self.cache.root / "builds" / digest(str(profile.root), profile.name, tree.release, str(image))
        build_dir.mkdir(parents=True, exist_ok=True)
        self.cache.use(build_dir)
        if profile.build:
            with locked(build_dir):  # another provium process may build the same
                self._run_build(profile, tree, build_dir, where)
        return Prepared(profile, tree, build_dir)

    def _run_build(self, profile, tree, build_dir, where):
        self.report(f"building profile {profile.name!r} for {tree.release}: {profile.build}")
        env = {
            **os.environ,
            "PROVIUM_PROFILE": profile.name,
            "PROVIUM_ROOT": str(profile.root),
            "PROVIUM_KERNEL": str(tree.image),
            "PROVIUM_KERNEL_RELEASE": tree.release,
            "PROVIUM_MODULES_DIR": str(tree.modules_dir),
            "PROVIUM_BUILD_DIR": str(build_dir),
        }
        try:
            result = subprocess.run(profile.build, shell=True, cwd=profile.root, capture_output=True, text=True,
                                    env=env, timeout=BUILD_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise ConfigError(f"{where}: build did not finish within {BUILD_TIMEOUT:.0f} s: "
                              f"{profile.build}") from None
        if result.returncode != 0:
            output = "\n".join((result.stdout + result.stderr).strip().splitlines()[-40:])
            raise ConfigError(f"{where}: build failed (exit {result.returncode}): {profile.build}\n{output}")
