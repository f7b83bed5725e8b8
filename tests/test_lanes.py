"""Lanes: ops of concurrent Lua tasks on threads, one per target, collected by ticket."""

import threading
import time

from provium import deadline
from provium.lanes import Lanes

T = 10.0


def collect_all(lanes, tickets):
    """{ticket: outcome} of every ticket, in the order they finished."""
    done = {}
    while len(done) < len(tickets):
        got = lanes.collect([t for t in tickets if t not in done], T)
        assert got is not None, "an op did not finish"
        done[got[0]] = got[1]
    return done


def test_ops_on_one_lane_run_in_order_and_other_lanes_overlap_them():
    lanes, order = Lanes(), []
    started_b = threading.Event()

    def a1():
        assert started_b.wait(T), "lane b runs while lane a's first op waits for it"
        order.append("a1")

    def b():
        started_b.set()
        order.append("b")
    tickets = [lanes.start("a", "a1", a1), lanes.start("a", "a2", lambda: order.append("a2")),
               lanes.start("b", "b", b)]
    collect_all(lanes, tickets)
    assert order.index("a1") < order.index("a2")
    assert order.index("b") < order.index("a1")
    lanes.close()


def test_an_op_ends_with_its_value_or_its_exception():
    lanes = Lanes()
    ok = lanes.start(1, "ok", lambda: 42)
    bad = lanes.start(2, "bad", lambda: 1 / 0)
    done = collect_all(lanes, [ok, bad])
    assert done[ok].value == 42 and done[ok].error is None
    assert isinstance(done[bad].error, ZeroDivisionError)
    lanes.close()


def test_an_op_runs_under_the_deadline_that_was_current_where_it_started():
    lanes = Lanes()
    ends = time.monotonic() + 60
    with deadline.until(ends):
        ticket = lanes.start(1, "seen", deadline.current)
    assert collect_all(lanes, [ticket])[ticket].value == ends
    lanes.close()


def test_a_timer_ends_after_its_time_and_collect_waits_no_longer_than_asked():
    lanes = Lanes()
    timer = lanes.timer(0.3, "provium.sleep(0.3)")
    assert lanes.collect([timer], 0.05) is None
    started = time.monotonic()
    ticket, outcome = lanes.collect([timer], T)
    assert ticket == timer and outcome.value is None
    assert time.monotonic() - started < T


def test_an_op_finished_while_collecting_others_is_kept_for_later():
    lanes = Lanes()
    early = lanes.start(1, "early", lambda: "e")
    release = threading.Event()
    late = lanes.start(2, "late", lambda: release.wait(T) and "l")
    time.sleep(0.1)
    release.set()
    assert lanes.collect([late], T)[1].value == "l"
    assert lanes.collect([early], T)[1].value == "e"
    lanes.close()


def test_dropped_ops_get_a_grace_and_those_still_running_are_named():
    lanes = Lanes()
    release = threading.Event()
    quick = lanes.start(1, "quick", lambda: None)
    stuck = lanes.start(2, 'vm:exec("sleep 60")', lambda: release.wait(T))
    timer = lanes.timer(60, "provium.sleep(60)")
    still = lanes.drop([quick, stuck, timer], 0.2)
    assert [(op.lane, op.what) for op in still] == [(2, 'vm:exec("sleep 60")')]
    assert lanes.in_flight == {}
    release.set()
    other = lanes.start(3, "other", lambda: "o")
    assert lanes.collect([stuck, other], T)[0] == other, "a dropped op is never collected"
    lanes.close()
