"""The host memory budget shared by every VM this process starts.

With several files running at once, a VM waits for memory before it starts
(its declared RAM plus QEMU's own overhead) rather than driving the host into
OOM. A VM never waits when no other VM holds memory, so one large VM still
runs; the wait is bounded by the thread's deadline.
"""

import threading

from . import deadline
from .errors import DeadlineError

QEMU_OVERHEAD_MIB = 128
HOST_RESERVE_MIB = 1024


def available_mib():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) // 1024
    return 0


class MemoryBudget:
    def __init__(self, total_mib=None):
        self._total = total_mib
        self._used = 0
        self._cond = threading.Condition()

    @property
    def total(self):
        if self._total is None:
            self._total = max(available_mib() - HOST_RESERVE_MIB, 512)
        return self._total

    def reserve(self, mib, what):
        """Take `mib` of the budget, waiting while other VMs hold too much. Returns the amount."""
        mib += QEMU_OVERHEAD_MIB
        with self._cond:
            while self._used and self._used + mib > self.total:
                remaining = deadline.clamp(3600.0)
                if remaining <= 0:
                    raise DeadlineError(f"{what}: no host memory for {mib} MiB "
                                        f"({self._used} of {self.total} MiB in use by other VMs)")
                self._cond.wait(min(remaining, 1.0))
            self._used += mib
        return mib

    def release(self, mib):
        with self._cond:
            self._used -= mib
            self._cond.notify_all()


host_memory = MemoryBudget()
