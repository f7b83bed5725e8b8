"""The deadline of the work the current thread is doing (a test, a file, a fixture build).

The runner sets it; every wait in the core (boot, each agent op) is clamped to
it, so a stuck test ends at its deadline wherever it is stuck. Work that is not
the test's own (fetching or building a kernel on first use) runs suspended():
unclamped, and every deadline of the thread moves later by the time it took.
"""

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

_local = threading.local()


def _stack() -> list[float]:
    """The thread's active deadlines, innermost last (each already the earliest of those around it)."""
    if not hasattr(_local, "stack"):
        _local.stack = []
    return _local.stack


@contextmanager
def until(when: float) -> Iterator[None]:
    """Within the block, waits end no later than monotonic time `when` (nested: the earlier wins)."""
    stack = _stack()
    stack.append(when if not stack else min(stack[-1], when))
    try:
        yield
    finally:
        stack.pop()


class Suspension:
    """How long a suspended() block took: what every deadline of the thread moved by."""

    seconds: float = 0.0


@contextmanager
def suspended() -> Iterator[Suspension]:
    """Within the block nothing is clamped; afterwards the thread's deadlines are later by its duration."""
    stack = _stack()
    saved, stack[:] = list(stack), []
    started = time.monotonic()
    suspension = Suspension()
    try:
        yield suspension
    finally:
        suspension.seconds = time.monotonic() - started
        stack[:] = [when + suspension.seconds for when in saved]
        _local.suspended = suspended_seconds() + suspension.seconds


def suspended_seconds() -> float:
    """How long this thread has spent in suspended() blocks: what its deadlines moved by so far."""
    return getattr(_local, "suspended", 0.0)


def current() -> float | None:
    """The monotonic time the current deadline ends at (None: no deadline), to carry to another thread."""
    stack = _stack()
    return stack[-1] if stack else None


def clamp(timeout: float) -> float:
    """`timeout` seconds, or less if the current deadline comes first (never negative)."""
    stack = _stack()
    if not stack:
        return timeout
    return max(0.0, min(timeout, stack[-1] - time.monotonic()))


def expired() -> bool:
    stack = _stack()
    return bool(stack) and time.monotonic() >= stack[-1]
