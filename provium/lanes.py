"""Guest ops of concurrent Lua tasks, run off the Lua thread so that they overlap in the guest.

Each target (a VM's main worker or a spawned worker) has a lane: one thread
that runs its ops one at a time, in the order they were started, as the guest
worker serves them. Ops on different lanes run at once. An op runs under the
deadline that was current where it was started; its outcome (a value or the
exception it raised) is collected on the Lua thread by ticket, which is where
it is turned into Lua values.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Callable, Hashable, Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass

from . import deadline


@dataclass(frozen=True)
class Outcome:
    """How an op ended: its value, or the exception it raised."""

    value: object = None
    error: BaseException | None = None


@dataclass(frozen=True)
class InFlight:
    """An op started and not yet collected."""

    lane: Hashable
    what: str  # the call as it reads in Lua


class Lanes:
    def __init__(self) -> None:
        self._lanes: dict[Hashable, ThreadPoolExecutor] = {}
        self._finished: queue.SimpleQueue[tuple[int, Outcome]] = queue.SimpleQueue()
        self._collected: dict[int, Outcome] = {}  # finished ops taken off the queue while waiting for others
        self.in_flight: dict[int, InFlight] = {}
        self._orphans: set[int] = set()  # dropped while still running: nobody collects them
        self._timers: dict[int, float] = {}  # ticket: the monotonic time it ends at (no thread: collect ends it)
        self._next_ticket = 1

    def _ticket(self, lane: Hashable, what: str) -> int:
        ticket, self._next_ticket = self._next_ticket, self._next_ticket + 1
        self.in_flight[ticket] = InFlight(lane, what)
        return ticket

    def timer(self, seconds: float, what: str) -> int:
        """A ticket that finishes (with None) `seconds` from now."""
        ticket = self._ticket(None, what)
        self._timers[ticket] = time.monotonic() + seconds
        return ticket

    def start(self, lane: Hashable, what: str, call: Callable[[], object]) -> int:
        """Queue call() on the lane; its ticket."""
        ticket = self._ticket(lane, what)
        when = deadline.current()

        def run() -> None:
            try:
                with deadline.until(when) if when is not None else nullcontext():
                    outcome = Outcome(call())
            except BaseException as exc:  # noqa: BLE001 - the Lua thread turns it into the op's failure
                outcome = Outcome(error=exc)
            self._finished.put((ticket, outcome))

        if lane not in self._lanes:
            self._lanes[lane] = ThreadPoolExecutor(1, thread_name_prefix=f"provium-lane-{lane}")
        self._lanes[lane].submit(run)
        return ticket

    def collect(self, tickets: Iterable[int], timeout: float) -> tuple[int, Outcome] | None:
        """The first of `tickets` to finish within `timeout` seconds, or None; others that finish meanwhile are
        kept for a later collect."""
        wanted = set(tickets)
        ends = time.monotonic() + timeout
        while True:
            now = time.monotonic()
            for ticket in sorted(wanted & self._timers.keys()):
                if self._timers[ticket] <= now:
                    del self._timers[ticket]
                    self._collected[ticket] = Outcome()
            for ticket in sorted(wanted & self._collected.keys()):
                self.in_flight.pop(ticket, None)
                return ticket, self._collected.pop(ticket)
            due = min((self._timers[t] for t in wanted & self._timers.keys()), default=ends)
            remaining = min(ends, due) - now
            if ends <= now:
                return None
            try:
                ticket, outcome = self._finished.get(timeout=max(0.0, remaining))
            except queue.Empty:
                continue
            if ticket in self._orphans:
                self._orphans.discard(ticket)
            else:
                self._collected[ticket] = outcome

    def drop(self, tickets: Iterable[int], grace: float) -> list[InFlight]:
        """Forget `tickets` (their tasks were cancelled): ops get up to `grace` seconds to finish (timers none);
        the ops still running then."""
        timers = set(tickets) & self._timers.keys()
        for ticket in timers:
            del self._timers[ticket], self.in_flight[ticket]
        left = set(tickets) & self.in_flight.keys()
        ends = time.monotonic() + grace
        while left:
            got = self.collect(left, max(0.0, ends - time.monotonic()))
            if got is None:
                break
            left.discard(got[0])
        self._orphans |= left
        return [self.in_flight.pop(ticket) for ticket in sorted(left)]

    def close(self) -> None:
        """End the lanes' threads once their ops are done (their VMs are stopped by then)."""
        for executor in self._lanes.values():
            executor.shutdown(wait=False)
        self._lanes.clear()
