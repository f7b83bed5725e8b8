"""Cutting a console into kernel findings (provium.findings) and reading kmemleak's report (provium.kmemleak).

The logs in tests/data/debug-6.12 are real: the consoles of examples/kmod's broken
ioctls on the kernel built from Debian's 6.12 source with the minimal and debug
fragments.
"""

import pytest

from conftest import REPO
from provium import findings, kmemleak

LOGS = REPO / "tests" / "data" / "debug-6.12"


@pytest.mark.parametrize("log, kind, title, first, last", [
    ("use_after_free", findings.KASAN, "KASAN: slab-use-after-free in pkv_debug_use_after_free+0x9c/0xc0 [provium_kv]",
     "=" * 66, "=" * 66),
    ("lock_order", findings.LOCKDEP, "possible circular locking dependency detected", "=" * 54, " </TASK>"),
    ("warn", findings.KERNEL_WARNING, "WARNING: CPU: 0 PID: 29 at /tmp/xdg-base/provium/builds/"
     "cb2d9a3d8c33146a37fcc422dc8b3ac0/provium_kv.c:117 pkv_ioctl+0x319/0x400 [provium_kv]",
     "------------[ cut here ]------------", "---[ end trace 0000000000000000 ]---"),
    ("sleep_in_atomic", findings.KERNEL_BUG, "BUG: sleeping function called from invalid context at "
     "include/linux/sched/mm.h:321", "BUG: sleeping function called from invalid context at "
     "include/linux/sched/mm.h:321", " </TASK>"),
    ("refcount", findings.CORRUPTION, "refcount_t: addition on 0; use-after-free.",
     "------------[ cut here ]------------", "---[ end trace 0000000000000000 ]---"),
    ("index", findings.UBSAN, "UBSAN: array-index-out-of-bounds in /tmp/xdg-base/provium/builds/"
     "cb2d9a3d8c33146a37fcc422dc8b3ac0/provium_kv.c:97:27",
     "------------[ cut here ]------------", "---[ end trace ]---"),
    ("list", findings.CORRUPTION, "list_add corruption. next->prev should be prev (ffff888006b97c20), but was "
     "ffff888006b97c60. (next=ffff888006b97c40).", "------------[ cut here ]------------",
     "---[ end trace 0000000000000000 ]---"),
])
def test_each_report_of_the_debug_kernel_is_one_finding_from_its_first_line_to_its_last(log, kind, title, first, last):
    console = (LOGS / f"{log}.log").read_text()
    (located,) = findings.scan(console)
    finding = located.finding
    assert (finding.kind, finding.title, finding.fatal, located.complete) == (kind, title, False, True)
    lines = finding.report.splitlines()
    assert (lines[0], lines[-1]) == (first, last)
    assert console[located.start:located.end].splitlines()[-1].endswith(last)
    assert "[    " not in finding.report, "printk times are taken off"


def test_findings_are_named_as_a_failure_shows_them():
    kasan = findings.scan((LOGS / "use_after_free.log").read_text())[0].finding
    lockdep = findings.scan((LOGS / "lock_order.log").read_text())[0].finding
    assert kasan.name == "KASAN: slab-use-after-free in pkv_debug_use_after_free+0x9c/0xc0 [provium_kv]"
    assert lockdep.name == "lockdep report: possible circular locking dependency detected"
    sleep = findings.scan((LOGS / "sleep_in_atomic.log").read_text())[0].finding
    assert sleep.name == "BUG: sleeping function called from invalid context at include/linux/sched/mm.h:321"


def test_reports_one_after_another_are_found_in_order_and_a_scan_can_start_after_the_first():
    logs = [(LOGS / f"{name}.log").read_text() for name in ("warn", "use_after_free", "lock_order")]
    console = "boot line\n" + "".join(logs)
    found = findings.scan(console)
    assert [f.finding.kind for f in found] == [findings.KERNEL_WARNING, findings.KASAN, findings.LOCKDEP]
    assert [f.finding.kind for f in findings.scan(console, found[0].end)] == [findings.KASAN, findings.LOCKDEP]
    # a headline past `end` is left for the next scan; a report begun before it is read to its end
    (only,) = findings.scan(console, 0, found[1].start + 1)
    assert only.finding.kind == findings.KERNEL_WARNING


def test_a_report_still_being_printed_is_incomplete_and_an_unfinished_line_is_not_read():
    console = (LOGS / "use_after_free.log").read_text()
    cut = console.index("Freed by task")
    (partial,) = findings.scan(console[:cut])
    assert not partial.complete and partial.finding.kind == findings.KASAN
    assert findings.scan("[    1.0] BUG: KASAN: use-after-free in f+0x1/0x2") == []  # no newline yet


def test_fatal_findings_panic_and_oops_and_a_warn_with_its_message():
    console = """\
[    1.000000][    T1] ------------[ cut here ]------------
[    1.000001][    T1] pkv: bad state 3
[    1.000002][    T1] WARNING: CPU: 1 PID: 1 at drivers/x.c:10 f+0x1/0x2
[    1.000003][    T1] ---[ end trace 0000000000000000 ]---
BUG: kernel NULL pointer dereference, address: 0000000000000008
#PF: supervisor read access in kernel mode
Oops: Oops: 0000 [#1] PREEMPT SMP KASAN
---[ end trace 0000000000000000 ]---
Kernel panic - not syncing: Fatal exception
---[ end Kernel panic - not syncing: Fatal exception ]---
"""
    warn, oops, panic = (f.finding for f in findings.scan(console))
    assert (warn.kind, warn.title, warn.fatal) == (
        findings.KERNEL_WARNING, "WARNING: CPU: 1 PID: 1 at drivers/x.c:10 f+0x1/0x2: pkv: bad state 3", False)
    assert (oops.kind, oops.fatal, oops.report.count("\n")) == (findings.OOPS, True, 3), "the Oops line is its own"
    assert (panic.kind, panic.title, panic.fatal) == (findings.PANIC, "Kernel panic - not syncing: Fatal exception",
                                                      True)


def test_ordinary_lines_are_no_findings():
    console = "a WARNING: in the middle\nBUGS: none\n WARNING: indented by a program\nUBSAN is off\n"
    assert findings.scan(console) == []


KMEMLEAK_REPORT = """\
unreferenced object 0xffff88800500ae00 (size 256):
  comm "init", pid 29, jiffies 4294893344
  hex dump (first 32 bytes):
    6b 6b 6b 6b 6b 6b 6b 6b 6b 6b 6b 6b 6b 6b 6b 6b  kkkkkkkkkkkkkkkk
  backtrace (crc b761ae4f):
    __kmalloc_noprof+0x23a/0x4b0
    pkv_debug_leak+0x23/0x50 [provium_kv]
    pkv_ioctl+0x332/0x400 [provium_kv]
unreferenced object 0xffff888005123400 (size 64):
  comm "swapper/0", pid 1, jiffies 4294892000
  hex dump (first 32 bytes):
    00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00  ................
  backtrace (crc 0):
    kmemleak_alloc+0x4a/0x80
    kmalloc_trace+0x26/0x60
    acpi_os_allocate_zeroed+0x10/0x20
"""


def test_kmemleak_objects_allocated_since_the_test_began_are_its_leaks_named_by_their_allocator():
    (leak,) = kmemleak.leaks(KMEMLEAK_REPORT, since=4294893000)
    assert leak.kind == kmemleak.LEAK
    assert leak.title == ('unreferenced object 0xffff88800500ae00 of 256 bytes allocated by '
                          'pkv_debug_leak+0x23/0x50 [provium_kv] (comm "init", pid 29)')
    assert leak.report.startswith("unreferenced object 0xffff88800500ae00") and "0xffff888005123400" not in leak.report
    both = kmemleak.leaks(KMEMLEAK_REPORT, since=0)
    assert [f.title.split(" allocated by ")[1].split(" (")[0] for f in both] == [
        "pkv_debug_leak+0x23/0x50 [provium_kv]", "acpi_os_allocate_zeroed+0x10/0x20"]
    assert kmemleak.leaks("", since=0) == []
