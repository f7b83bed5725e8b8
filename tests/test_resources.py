"""The host memory budget: VMs wait for memory held by others, never for themselves."""

import threading
import time

import pytest

from provium import deadline
from provium.errors import DeadlineError
from provium.resources import QEMU_OVERHEAD_MIB, MemoryBudget


def test_a_reservation_waits_until_another_is_released():
    budget = MemoryBudget(total_mib=1000)
    first = budget.reserve(600, "a")
    assert first == 600 + QEMU_OVERHEAD_MIB
    got = []
    waiter = threading.Thread(target=lambda: got.append(budget.reserve(600, "b")))
    waiter.start()
    time.sleep(0.3)
    assert got == [], "the second VM waits while the first holds the memory"
    budget.release(first)
    waiter.join(5)
    assert got == [600 + QEMU_OVERHEAD_MIB]


def test_one_vm_larger_than_the_budget_still_runs():
    budget = MemoryBudget(total_mib=100)
    assert budget.reserve(4096, "big") == 4096 + QEMU_OVERHEAD_MIB


def test_the_wait_ends_at_the_deadline():
    budget = MemoryBudget(total_mib=1000)
    budget.reserve(800, "a")
    with deadline.until(time.monotonic() + 0.3), pytest.raises(DeadlineError, match="no host memory"):
        budget.reserve(800, "b")
