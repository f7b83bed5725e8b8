"""Kernel findings on a guest's console: where a report starts, what it is called, where it ends.

The kernel prints every bug it detects as a report on its console: a KASAN
report between two `=====` rules, a WARNING or an oops between `cut here` and
`---[ end trace ]---`, a lockdep or might-sleep report up to the end of its
stack dump. `scan` cuts a console text into Findings, each named by its
headline the way the kernel words it ("KASAN: slab-use-after-free in
pkv_ioctl+0x4e/0x3a0 [provium_kv]", "possible circular locking dependency
detected", "refcount_t: addition on 0; use-after-free.").
"""

import re
from dataclasses import dataclass

# Kinds: what a test, a profile key and a report call a finding.
KASAN = "KASAN report"
LOCKDEP = "lockdep report"
UBSAN = "UBSAN report"
KERNEL_WARNING = "kernel warning"
KERNEL_BUG = "kernel BUG"
OOPS = "kernel oops"
PANIC = "kernel panic"
CORRUPTION = "data corruption"

MAX_REPORT_LINES = 400

_PREFIX = re.compile(r"^(?:\[\s*\d+\.\d+\](?:\[\s*[TC]\d+\])? ?|\[\s*[TC]\d+\] ?)")  # printk time, caller
_CUT_HERE = "------------[ cut here ]------------"
_END_TRACE = re.compile(r"---\[ end (?:trace|Kernel panic)")
_RULE = re.compile(r"={20,}$")
_TASK_END = "</TASK>"

# (kind, headline pattern, fatal): the first that matches names the line. Fatal findings leave the
# kernel unable to go on (the task that hit them died): every later op of the VM fails too.
_HEADLINES = [
    (PANIC, re.compile(r"Kernel panic - not syncing: .*"), True),
    (KASAN, re.compile(r"BUG: KASAN: .*"), False),
    (OOPS, re.compile(r"BUG: (?:kernel NULL pointer dereference|unable to handle).*|Oops: .*"
                      r"|general protection fault.*|kernel BUG at .*"), True),
    (KERNEL_BUG, re.compile(r"BUG: .*"), False),
    (UBSAN, re.compile(r"UBSAN: .*"), False),
    (CORRUPTION, re.compile(r"refcount_t: .*|list_(?:add|del) (?:corruption|double add).*"
                            r"|hlist_(?:add|del) corruption.*"), False),
    (KERNEL_WARNING, re.compile(r"WARNING: CPU: \d+ PID: \d+ at .*"), False),
    (LOCKDEP, re.compile(r"WARNING: .*"), False),
]


@dataclass(frozen=True)
class Finding:
    """One bug the kernel reported: its kind, headline and report."""

    kind: str
    title: str        # the headline, without "BUG: " before a sanitizer's name
    report: str       # the report's lines as printed (from its first rule or `cut here` on)
    fatal: bool = False

    @property
    def name(self) -> str:
        """How a failure names it: "KASAN: slab-use-after-free in f+0x1/0x2", "BUG: sleeping function
        called from invalid context at ...", "lockdep report: ..." (the kind where the title lacks it)."""
        named = self.title.startswith(self.kind.split()[0]) or self.kind == KERNEL_BUG
        return self.title if named else f"{self.kind}: {self.title}"


@dataclass(frozen=True)
class Located:
    """A finding on a console: the offsets of its report's first character and of the end of its
    last line, and whether its end marker was seen (a report still being printed is not complete)."""

    finding: Finding
    start: int
    end: int
    complete: bool


def headline(line: str) -> tuple[str, bool] | None:
    """The kind of finding a console line (without its printk prefix) starts, and whether it is fatal."""
    for kind, pattern, fatal in _HEADLINES:
        if pattern.fullmatch(line):
            return kind, fatal
    return None


def scan(console: str, start: int = 0, end: int | None = None) -> list[Located]:
    """The findings whose headline lies in console[start:end] (whole lines). A report may run past
    `end` (its last lines are read from what follows); one cut short by the end of the text is
    returned with complete=False."""
    end = len(console) if end is None else end
    lines = _lines(console, start)
    found = []
    index = 0
    while index < len(lines) and lines[index][0] < end:
        named = headline(lines[index][2])
        if named is None:
            index += 1
            continue
        kind, fatal = named
        first = _opening(lines, index)
        last, complete = _closing(lines, index, kind, opener=lines[first][2])
        kind, title = _name(lines, index, kind)
        report = "\n".join(text for _, _, text in lines[first:last + 1])
        found.append(Located(Finding(kind, title, report, fatal), lines[first][0], lines[last][1], complete))
        index = last + 1
    return found


def _lines(console, start):
    """(offset, end, text without printk prefix or carriage return) of each whole line from `start`;
    a last line without its newline is left out (it is still being printed)."""
    result = []
    offset = start
    while (newline := console.find("\n", offset)) >= 0:
        result.append((offset, newline + 1, _PREFIX.sub("", console[offset:newline].rstrip("\r"), count=1)))
        offset = newline + 1
    return result


def _opening(lines, index):
    """The index of the line a report starts at: the `cut here` or rule a few lines above its
    headline, or the headline itself."""
    for back in range(index - 1, max(-1, index - 4), -1):
        text = lines[back][2]
        if text == _CUT_HERE or _RULE.match(text):
            return back
        if headline(text) is not None:
            break
    return index


def _closing(lines, index, kind, opener):
    """The index of the report's last line and whether its end marker was seen. A `cut here` report
    (a WARNING, an oops, UBSAN) ends at `end trace`; a report between rules (KASAN, KFENCE) at the
    rule that closes it; the others (lockdep, might_sleep) after their stack dump's </TASK>."""
    cut = opener == _CUT_HERE
    between_rules = bool(_RULE.match(opener)) and kind != LOCKDEP
    limit = min(len(lines), index + MAX_REPORT_LINES)
    for i in range(index + 1, limit):
        text = lines[i][2]
        if _END_TRACE.match(text) or (between_rules and _RULE.match(text)):
            return i, True
        if not cut and not between_rules and text.strip() == _TASK_END:
            return i, True
    return limit - 1, limit - index >= MAX_REPORT_LINES


def _name(lines, index, kind):
    """The finding's kind and title. A sanitizer's "BUG: " and lockdep's "WARNING: " are dropped; a
    WARN() with a message is named by it too."""
    text = lines[index][2]
    if kind == LOCKDEP:
        return kind, text.removeprefix("WARNING: ")
    if kind != KERNEL_WARNING:
        return kind, text[5:] if text.startswith(("BUG: KASAN", "BUG: KFENCE")) else text
    message = []
    for back in range(index - 1, max(-1, index - 6), -1):
        if lines[back][2] == _CUT_HERE:
            break
        message.insert(0, lines[back][2])
    else:
        message = []
    return kind, f"{text}: {' '.join(message)}" if message else text
