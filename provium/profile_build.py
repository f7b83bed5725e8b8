"""Profile build steps: the `build` command of a profile, run once before any VM boots.

A kernel-module suite builds its modules against the guest kernel here. The
command runs in the suite root through /bin/sh with the guest kernel described
in PROVIUM_* variables; a failure stops the run with the command's output.
"""

import os
import subprocess

from . import images
from .errors import ConfigError, ImageError

BUILD_TIMEOUT = 900.0


def build_environment(config, profile, cache):
    boot = images.prepare(profile, cache)
    return {
        **os.environ,
        "PROVIUM_PROFILE": profile.name,
        "PROVIUM_ROOT": str(config.root),
        "PROVIUM_KERNEL": str(profile.kernel),
        "PROVIUM_KERNEL_RELEASE": boot.release,
        "PROVIUM_MODULES_DIR": str(images.modules_dir(profile, boot.release)),
    }


def run_builds(config, cache, report):
    """Run the build command of every profile of the suite that has one; report(line) says what runs."""
    for name in sorted(config.raw_profiles):
        profile = config.profile(name)
        if not profile.build:
            continue
        report(f"building profile {name!r}: {profile.build}")
        try:
            env = build_environment(config, profile, cache)
        except ImageError as exc:
            raise ConfigError(f"{config.path}: profile {name!r}: {exc}") from None
        try:
            result = subprocess.run(profile.build, shell=True, cwd=config.root, capture_output=True, text=True,
                                    env=env, timeout=BUILD_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise ConfigError(f"{config.path}: profile {name!r}: build did not finish within "
                              f"{BUILD_TIMEOUT:.0f} s: {profile.build}") from None
        if result.returncode != 0:
            output = "\n".join((result.stdout + result.stderr).strip().splitlines()[-40:])
            raise ConfigError(f"{config.path}: profile {name!r}: build failed (exit {result.returncode}): "
                              f"{profile.build}\n{output}")
