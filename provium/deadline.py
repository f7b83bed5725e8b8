"""The deadline of the work the current thread is doing (a test, a file, a fixture build).

The runner sets it; every wait in the core (boot, each agent op) is clamped to
it, so a stuck test ends at its deadline wherever it is stuck.
"""

import threading
import time
from contextlib import contextmanager

_local = threading.local()


@contextmanager
def until(when):
    """Within the block, waits end no later than monotonic time `when` (nested: the earlier wins)."""
    outer = getattr(_local, "when", None)
    _local.when = when if outer is None else min(outer, when)
    try:
        yield
    finally:
        _local.when = outer


def clamp(timeout):
    """`timeout` seconds, or less if the current deadline comes first (never negative)."""
    when = getattr(_local, "when", None)
    if when is None:
        return timeout
    return max(0.0, min(timeout, when - time.monotonic()))


def expired():
    when = getattr(_local, "when", None)
    return when is not None and time.monotonic() >= when
