"""Kconfig fragments: Provium's own and a suite's, merged into a .config and checked against the result.

A fragment is an excerpt of a .config: `CONFIG_NAME=value` and `# CONFIG_NAME
is not set` lines. A profile names Provium's own by name (`minimal`, `debug`:
the .config files beside this module) and its own by path. Fragments are
merged over a base .config in order, the later one winning. Kconfig may then
drop or change what a fragment asked for (an unmet `depends on`, a `select`
from elsewhere); check() finds every such option and explains it from the
tree's own Kconfig files.
"""

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError

BUILTIN_DIR = Path(__file__).resolve().parent
NOT_SET = "n"

_SET = re.compile(r"(CONFIG_[A-Za-z0-9_]+)=(.*)")
_UNSET = re.compile(r"# (CONFIG_[A-Za-z0-9_]+) is not set")
_SYMBOL = re.compile(r"\b[A-Za-z0-9_]*[A-Z][A-Za-z0-9_]*\b")


def builtin_names() -> list[str]:
    return sorted(path.stem for path in BUILTIN_DIR.glob("*.config"))


@dataclass(frozen=True)
class Fragment:
    """One fragment as a profile names it, with its options (value "n" for `is not set`)."""

    label: str
    text: str
    options: Mapping[str, str]


def parse(text: str, where: str = ".config") -> dict[str, str]:
    """{CONFIG_NAME: value} of a .config or fragment; ConfigError for a line that is neither."""
    options = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if match := _SET.fullmatch(line):
            options[match[1]] = match[2]
        elif match := _UNSET.fullmatch(line):
            options[match[1]] = NOT_SET
        elif line and not line.startswith("#"):
            raise ConfigError(f"{where}:{number}: not a Kconfig line "
                              f"(CONFIG_NAME=value or '# CONFIG_NAME is not set'): {line}")
    return options


def resolve(names: Sequence[str], base_dir: Path) -> list[Fragment]:
    """The fragments a profile's `kconfig` list names: built-in names, else paths relative to base_dir."""
    fragments = []
    for name in names:
        if "/" not in name and not name.endswith(".config"):
            path = BUILTIN_DIR / f"{name}.config"
            if not path.is_file():
                raise ConfigError(f"kconfig: unknown fragment {name!r}: Provium's own are "
                                  f"{', '.join(builtin_names())}; a file of yours needs a path "
                                  f"(fragments/{name}.config)")
        else:
            path = base_dir / name
            if not path.is_file():
                raise ConfigError(f"kconfig: fragment file {name!r} not found: {path}")
        text = path.read_text()
        fragments.append(Fragment(name, text, parse(text, str(path))))
    return fragments


def merge(base: str, fragments: Iterable[Fragment]) -> str:
    """The .config text of `base` with every fragment's options set over it, in order."""
    lines, where = [], {}
    for line in base.splitlines():
        match = _SET.fullmatch(line) or _UNSET.fullmatch(line)
        if match:
            where[match[1]] = len(lines)
        lines.append(line)
    for fragment in fragments:
        for name, value in fragment.options.items():
            line = f"# {name} is not set" if value == NOT_SET else f"{name}={value}"
            if name in where:
                lines[where[name]] = line
            else:
                where[name] = len(lines)
                lines.append(line)
    return "\n".join(lines) + "\n"


def requested(fragments: Iterable[Fragment]) -> dict[str, tuple[str, str]]:
    """{CONFIG_NAME: (value, label of the fragment that set it last)}."""
    wanted = {}
    for fragment in fragments:
        for name, value in fragment.options.items():
            wanted[name] = (value, fragment.label)
    return wanted


def check(fragments: Sequence[Fragment], final: Mapping[str, str], tree: Path, arch: str = "x86") -> None:
    """ConfigError, one line per option, for every option the fragments asked for that `final` lacks."""
    wrong = [(name, value, label) for name, (value, label) in requested(fragments).items()
             if final.get(name, NOT_SET) != value]
    if not wrong:
        return
    kconfig = KconfigTree(tree, arch)
    lines = [kconfig.explain(name, value, label, final) for name, value, label in wrong]
    raise ConfigError("\n".join(lines))


def _show(name: str, value: str) -> str:
    return f"'# {name} is not set'" if value == NOT_SET else f"{name}={value}"


@dataclass
class _Entry:
    """One `config NAME` block: where it is, its `depends on` lines, the `if`s and menus around it."""

    file: str
    line: int
    depends: list[str]
    context: list[tuple[str, str]]  # (condition, where it comes from: "if X (file:line)")

    def conditions(self) -> list[str]:
        return self.depends + [expr for expr, _ in self.context]

    def describe(self) -> str:
        parts = [f"depends on {d}" for d in self.depends] + [f"inside {where}" for _, where in self.context]
        return f"{self.file}:{self.line}: " + ("; ".join(parts) or "no 'depends on'")


class KconfigTree:
    """The `config` blocks and `select`s of a kernel tree's Kconfig files, read from the top `Kconfig`."""

    def __init__(self, tree: Path, arch: str = "x86"):
        self.tree = tree
        self.arch = arch
        self.entries: dict[str, list[_Entry]] = {}
        self.selects: dict[str, list[tuple[str, str]]] = {}
        self._read("Kconfig", [])

    def _read(self, relative: str, outer: list[tuple[str, str]]) -> None:
        path = self.tree / relative
        try:
            text = path.read_text(errors="replace")
        except OSError:
            return
        stack: list[list[tuple[str, str]]] = []  # the conditions each open if/menu/choice block adds
        current: list | None = None              # where a `depends on` line goes
        owner = None                             # the config a `select` line belongs to
        block = "menu"                           # the kind of the innermost open menu or choice
        help_indent: int | None = None
        in_help = False
        logical: list[tuple[int, str]] = []
        pending, start = "", 0
        for number, raw in enumerate(text.splitlines(), 1):
            if not pending:
                start = number
            if raw.endswith("\\"):
                pending += raw[:-1] + " "
                continue
            logical.append((start, pending + raw))
            pending = ""
        for number, raw in logical:
            stripped = raw.strip()
            if in_help:
                indent = len(raw.expandtabs()) - len(raw.expandtabs().lstrip())
                if not stripped:
                    continue
                if help_indent is None:
                    help_indent = indent
                if indent >= help_indent:
                    continue
                in_help = False
            if not stripped or stripped.startswith("#"):
                continue
            word, _, rest = stripped.partition(" ")
            rest = " ".join(rest.split())
            context = outer + [c for conds in stack for c in conds]
            if word in ("config", "menuconfig"):
                entry = _Entry(relative, number, [], context)
                self.entries.setdefault(rest, []).append(entry)
                current, owner = entry.depends, rest
            elif word == "if":
                stack.append([(rest, f"'if {rest}' ({relative}:{number})")])
                current = owner = None
            elif word in ("menu", "choice"):
                stack.append([])
                current, owner, block = stack[-1], None, word
            elif word in ("endif", "endmenu", "endchoice"):
                if stack:
                    stack.pop()
                current = owner = None
            elif word in ("source", "osource", "rsource", "orsource"):
                self._source(relative, word, rest.strip('"'), context)
                current = owner = None
            elif word == "comment":
                current, owner = [], None
            elif word == "depends" and rest.startswith("on ") and current is not None:
                if owner is None:  # a menu's or choice's: it applies to every entry inside
                    current.append((rest[3:], f"a {block} that depends on {rest[3:]} ({relative}:{number})"))
                else:
                    current.append(rest[3:])
            elif word in ("select", "imply") and owner is not None:
                target, _, condition = rest.partition(" if ")
                self.selects.setdefault(target.strip(), []).append((owner, condition.strip()))
            elif word in ("help", "---help---"):
                in_help, help_indent = True, None

    def _source(self, relative: str, keyword: str, name: str, context: list[tuple[str, str]]) -> None:
        name = name.replace("$(SRCARCH)", self.arch)
        if "$(" in name:
            return
        if keyword in ("rsource", "orsource"):
            name = str(Path(relative).parent / name)
        if any(c in name for c in "*?["):
            for path in sorted(self.tree.glob(name)):
                self._read(str(path.relative_to(self.tree)), context)
        else:
            self._read(name, context)

    def explain(self, name: str, value: str, label: str, final: Mapping[str, str]) -> str:
        """One line: what was asked, by which fragment, what Kconfig made of it and why."""
        now = final.get(name, NOT_SET)
        head = f"kconfig: {_show(name, value)} from fragment {label!r}"
        symbol = name.removeprefix("CONFIG_")
        entries = self.entries.get(symbol)
        if not entries:
            return f"{head}: no 'config {symbol}' in {self.tree}'s Kconfig files (misspelt, or gone in this version)"
        verdict = "dropped" if now == NOT_SET else f"changed to {_show(name, now)}"
        line = f"{head} was {verdict} by Kconfig: {' | '.join(e.describe() for e in entries)}"
        symbols = dict.fromkeys(s for e in entries for c in e.conditions() for s in _SYMBOL.findall(c)
                                if s in self.entries)
        if symbols:
            line += " (now " + ", ".join(f"{s}={final.get(f'CONFIG_{s}', NOT_SET)}" for s in symbols) + ")"
        if now != NOT_SET and value == NOT_SET:
            selectors = [s + (f" if {c}" if c else "") for s, c in self.selects.get(symbol, [])
                         if final.get(f"CONFIG_{s}", NOT_SET) != NOT_SET]
            if selectors:
                line += f"; selected by {', '.join(selectors)}"
        return line
