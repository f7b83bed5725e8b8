"""Profiles as files: profiles/NAME.yaml, read with PyYAML's safe loader.

A profile file holds the keys of one profile, the same keys as a
[profiles.NAME] table in provium.toml. Reading it keeps the line of each key
so that an error in it names the file, the line and the key. Only reading is
here; the keys are checked with provium.toml's in provium/config.py.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import ConfigError

if TYPE_CHECKING:
    import yaml

DIRECTORY = "profiles"
SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True)
class ProfileOrigin:
    """Where a profile is defined: its file (None for the built-in one) and, for a YAML file, the line
    of each key."""

    path: Path | None = None
    lines: tuple[tuple[str, int], ...] = ()

    def where(self, name: str, key: str | None = None) -> str:
        """How an error about profile `name` (and its `key`) begins: "FILE[:LINE]: profile 'NAME'[: key 'KEY']"."""
        line = dict(self.lines).get(key) if key else None
        origin = "built-in" if self.path is None else f"{self.path}:{line}" if line else str(self.path)
        return f"{origin}: profile {name!r}" + (f": key {key!r}" if key else "")


def files(root: Path) -> list[Path]:
    """The profile files of the suite at `root`, by name."""
    directory = root / DIRECTORY
    if not directory.is_dir():
        return []
    try:
        found = sorted(p for p in directory.iterdir() if p.suffix.lower() in SUFFIXES and not p.name.startswith("."))
    except OSError as exc:
        raise ConfigError(f"{directory}: cannot read: {exc.strerror}") from None
    for path in found:
        if not path.is_file():
            raise ConfigError(f"{path}: not a profile file (a directory, or a link to nothing)")
    return found


def read(path: Path) -> tuple[dict, ProfileOrigin]:
    """The keys of one profile file and where each is; ConfigError naming the file and line if it is
    not YAML or not a mapping of keys. An empty file is a profile with every default."""
    import yaml  # 30 ms: only suites with profile files pay for it
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        text = data.decode()
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}:{_line(data, exc.start)}: not UTF-8 text (byte {data[exc.start]:#04x})") from None
    try:
        loader = yaml.SafeLoader(text)
    except yaml.reader.ReaderError as exc:
        raise ConfigError(f"{path}:{_line(text, exc.position)}: {exc.reason} (U+{exc.character:04X})") from None
    try:
        node = loader.get_single_node()
        if node is None or node.tag == "tag:yaml.org,2002:null":  # nothing, or "---" alone: every default
            return {}, ProfileOrigin(path)
        if not isinstance(node, yaml.MappingNode):
            raise ConfigError(f"{path}:{node.start_mark.line + 1}: a profile file holds the profile's keys "
                              f"(\"memory: 1G\" on its own line, ...), not a {node.id}")
        lines = _key_lines(path, node)
        table = loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        # PyYAML says what it was doing (context: "while parsing a flow sequence", "expected a single
        # document") and what it found (problem: "expected ',' or ']', but got ...", "but found another")
        what = f"{exc.context}{', ' if exc.problem.startswith('but ') else ': '}{exc.problem}" \
            if exc.context else exc.problem
        raise ConfigError(f"{path}:{mark.line + 1}:{mark.column + 1}: YAML syntax error: {what}") from None
    finally:
        loader.dispose()
    return table, ProfileOrigin(path, tuple(lines.items()))


def _key_lines(path: Path, node: "yaml.MappingNode") -> dict[str, int]:
    """The line of each plain key of the file's mapping; ConfigError when one is given twice (YAML keeps
    the last silently, which hides a typo's twin)."""
    lines: dict[str, int] = {}
    for key_node, _ in node.value:
        if key_node.id != "scalar" or key_node.tag != "tag:yaml.org,2002:str":
            continue  # a merge key (<<) or a key that is not a name: checked as an unknown key
        line = key_node.start_mark.line + 1
        if key_node.value in lines:
            raise ConfigError(f"{path}:{line}: profile {path.stem!r}: key {key_node.value!r}: given twice (first on "
                              f"line {lines[key_node.value]})")
        lines[key_node.value] = line
    return lines


def _line(text: str | bytes, offset: int) -> int:
    return text[:offset].count("\n" if isinstance(text, str) else b"\n") + 1
