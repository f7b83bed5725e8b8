"""What a test file may reach on the host: paths, modules for require, and provium.path's anchors.

Reads are allowed below the suite root, the run's scratch directory and the
build directories of the profiles the file prepared; writes only below the
scratch directory. A fixture script records every host file it reads or
boots with, so that the fixture's cache key sees changes to them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

from .bridge import text
from .errors import ProviumError

_MODULE_PART = re.compile(r"^[A-Za-z0-9_-]+$")


def display_name(path: str | Path) -> str:
    """How a file is named in reports: relative to the current directory when below it."""
    relative = os.path.relpath(path)
    return relative if not relative.startswith("..") else os.path.abspath(path)


class HostFiles:
    """The host side of one test file's sandbox. `build_dir(profile name)` prepares a profile and gives
    its build directory; `listing`: nothing is prepared (provium.path("@build") only names it)."""

    def __init__(self, path: Path, root: Path, scratch: Path | None, fixture: bool,
                 build_dir: Callable[[str], Path], listing: bool):
        self.path = path
        self.root = root
        self.scratch = scratch
        self.fixture = fixture
        self.listing = listing
        self._build_dir = build_dir
        self.build_dirs: set[Path] = set()  # of the profiles this file prepared: readable
        self.required: dict[Path, bool] = {}  # what a fixture script read or booted with, in order

    def prepared(self, build_dir: Path) -> None:
        """A profile the file uses was prepared: its build directory becomes readable."""
        self.build_dirs.add(Path(os.path.realpath(build_dir)))

    def check(self, value: bytes | str, write: bool = False, what: str = "path") -> Path:
        """A host path named in a test file, resolved (relative to the file) and checked."""
        name = text(value)
        if "\0" in name:
            raise ProviumError(f"{what} {name!r} contains a NUL byte")
        path = Path(os.path.realpath(self.path.parent / name))
        scratch = self.scratch and Path(os.path.realpath(self.scratch))
        root = Path(os.path.realpath(self.root))
        allowed = [scratch] if write else [root, scratch, *self.build_dirs]
        if not any(base and (path == base or base in path.parents) for base in allowed):
            where = "the scratch directory (provium.path(\"@tmp\"))" if write else \
                "the suite root or the scratch directory (or a prepared profile's build directory)"
            raise ProviumError(f"{what} {name!r} is outside {where}: {path}")
        return path

    def used(self, *paths: Path) -> None:
        """A fixture script depends on these files (it read or booted with them)."""
        if self.fixture:
            for path in paths:
                self.required[path] = True

    def host_path(self, value: bytes, write: bool) -> str:
        """io.open and io.lines: the checked path to open."""
        path = self.check(value, bool(write), "io: path")
        if not write and path.is_file():
            self.used(path)
        return str(path)

    def require_source(self, name: bytes) -> tuple[bytes, str]:
        """The source and chunk name of module `name`, from the suite root or the file's directory."""
        name = text(name)
        parts = name.split(".")
        if not all(_MODULE_PART.match(part) for part in parts):
            raise ProviumError(f"require: module name {name!r} must be dot-separated plain names "
                               f"(no '/', '..' or absolute paths)")
        tried = []
        for base in dict.fromkeys((self.root, self.path.parent.resolve())):
            for candidate in (base.joinpath(*parts[:-1], parts[-1] + ".lua"), base.joinpath(*parts, "init.lua")):
                if candidate.is_file():
                    self.required[candidate] = True
                    return candidate.read_bytes(), "@" + display_name(candidate)
                tried.append(str(candidate))
        raise ProviumError(f"require: module {name!r} not found (tried {', '.join(tried)})")

    def anchor(self, name: bytes, profile: bytes | None = None) -> str:
        """provium.path(NAME [, PROFILE]): @root, @tmp, or @build of a profile."""
        name = text(name)
        if (profile is None) != (name != "@build"):
            raise ProviumError(f"provium.path: {name!r} takes a profile name only with @build: "
                               f"provium.path(\"@build\", PROFILE)")
        if name == "@tmp" and self.scratch:
            return str(self.scratch)
        if name == "@root":
            return str(self.root)
        if name == "@build":
            if self.listing:  # listing prepares nothing
                return str(self.root / "@build" / text(profile))
            return str(self._build_dir(text(profile)))
        raise ProviumError(f"provium.path: unknown anchor {name!r} (known: @build, @root, @tmp)")
