"""The leak check: after a test, a debug kernel's kmemleak names the objects the test allocated and lost.

A VM is armed when it enters a test that checks leaks: its jiffies then are the
test's start. After the test, kmemleak scans twice (`echo scan`), its report is
read and cleared (`echo clear`: what was reported is not reported again).
Objects allocated before the VM was armed (its boot, its fixture's build) are
left out, so each test is charged with its own leaks only.

kmemleak reports an object only when two scans found it unreferenced and
unchanged, and only once it is MIN_AGE old: the check's cost is a scan, then
what remains of MIN_AGE since it began, then a second scan.
"""

import re

from .errors import AgentError
from .findings import Finding

KMEMLEAK = "/sys/kernel/debug/kmemleak"
MIN_AGE = 5.1  # mm/kmemleak.c: MSECS_MIN_AGE (5000 ms) before an object can be reported, and a tick
_UPTIME = "cut -d' ' -f1 /proc/uptime"
LEAK = "memory leak"

# the scheduler's debug file (SCHED_DEBUG, which DEBUG_KERNEL turns on) or timer_list (tickless kernels) shows it
_JIFFIES = "cat /sys/kernel/debug/sched/debug /proc/timer_list 2>/dev/null | grep -m1 '^jiffies'"
_OBJECT = re.compile(r"^unreferenced object (0x[0-9a-f]+) \(size (\d+)\):\n"
                     r"  comm \"(.*)\", pid (\d+), jiffies (\d+)", re.M)
# Frames of the allocator itself: the leak is named by the first frame after them.
_ALLOCATOR = re.compile(r"(?:kmemleak_|__?kmalloc|kmalloc|__?kmem_cache|kmem_cache|slab_|__slab|kvmalloc|kvzalloc"
                        r"|krealloc|__do_kmalloc|kzalloc|__alloc|alloc_pages|kmemdup|kstrdup)")


def jiffies(vm) -> int:
    """The guest kernel's jiffies now (an object's allocation time in kmemleak's report)."""
    result = vm.exec(_JIFFIES)
    if not result.ok:
        raise AgentError(f"leak check: VM {vm.name!r} shows no jiffies in /sys/kernel/debug/sched/debug or "
                         f"/proc/timer_list (its kernel needs SCHED_DEBUG or NO_HZ)")
    return int(result.stdout.rpartition(b":")[2])


def arm(vm) -> None:
    """Start charging leaks to the current test: only objects allocated from now on count."""
    vm.leak_since = jiffies(vm)


def check(vms) -> dict:
    """{vm: [Finding]}: the leaks of each armed VM (all running). kmemleak reports an object when two
    scans find it unreferenced and unchanged, once it is MIN_AGE old by the guest's clock (which runs
    behind the host's under a loaded TCG): the first scan runs at once, the second once MIN_AGE of the
    guest's time has passed since the first began (every op of the test came before it)."""
    began = {vm: float(_run(vm, f"{_UPTIME}; echo scan > {KMEMLEAK}")) for vm in vms}
    found = {}
    for vm in vms:
        rest = MIN_AGE - (float(_run(vm, _UPTIME)) - began[vm])
        found[vm] = leaks(_run(vm, f"sleep {max(rest, 0):.2f}; echo scan > {KMEMLEAK} && cat {KMEMLEAK} && "
                                   f"echo clear > {KMEMLEAK}"), vm.leak_since)
    return found


def _run(vm, command):
    result = vm.exec(command)
    if not result.ok:
        raise AgentError(f"leak check: kmemleak cannot scan in VM {vm.name!r} (off, or disabled itself: "
                         f"see its kernel log): {result.stderr.decode(errors='replace').strip()}")
    return result.stdout.decode(errors="replace")


def leaks(report: str, since: int) -> list[Finding]:
    """The objects of a kmemleak report allocated at jiffies `since` or later, one Finding each."""
    starts = list(_OBJECT.finditer(report))
    found = []
    for index, match in enumerate(starts):
        address, size, comm, pid, allocated = match.groups()
        if int(allocated) < since:
            continue
        end = starts[index + 1].start() if index + 1 < len(starts) else len(report)
        text = report[match.start():end].rstrip("\n")
        frames = [line.strip() for line in text.split("backtrace", 1)[-1].splitlines()[1:]]
        culprit = next((f for f in frames if f and not _ALLOCATOR.match(f)), "an unknown caller")
        found.append(Finding(LEAK, f"unreferenced object {address} of {size} bytes allocated by {culprit} "
                                   f"(comm \"{comm}\", pid {pid})", text))
    return found
