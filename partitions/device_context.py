"""The device context a VMBus endpoint (the parent's service, a guest's stack) gives its device
sides: simulated time, timers run from the endpoint's own VP loop, and CPU time charged to it.

Timers belong to a group (the parent's service makes one per child VM). A group can be held:
while a VM is quiesced for a save, time stands still for its devices' timers, and when it is
resumed each timer is due as far in the future as it was when held. So a disk request 40 us from
completion when the VM was saved completes 40 us after the restore, and an exchange's timeout
does not expire while the guest could not answer.
"""
from __future__ import annotations

import heapq
from typing import Any, Callable, Hashable

from drivers.device import DeviceContext


class TimerQueue:
    """Timers of one endpoint loop, run in (due time, arming order).

    Invariant: a timer is either in the heap (due at an absolute time) or held with its group
    (as the time it had left), never both; held timers never run.
    """

    def __init__(self, host):
        self._host = host
        self._heap: list[tuple[int, int, Hashable, Callable[[], None]]] = []   # (due, seq, group, fn)
        self._held: dict[Hashable, list[tuple[int, int, Callable[[], None]]]] = {}  # group -> (left, seq, fn)
        self._seq = 0

    def add(self, delay_ns: int, fn: Callable[[], None], group: Hashable = None) -> None:
        self._seq += 1
        delay = max(0, int(delay_ns))
        held = self._held.get(group)
        if held is not None:  # armed while held: it counts from the release
            held.append((delay, self._seq, fn))
        else:
            heapq.heappush(self._heap, (self._host.now + delay, self._seq, group, fn))

    def hold(self, group: Hashable) -> None:
        """Stop `group`'s timers (and any it arms meanwhile) until release(group)."""
        if group in self._held:
            return
        now = self._host.now
        taken = [(max(0, due - now), seq, fn) for due, seq, g, fn in self._heap if g == group]
        if taken:
            self._heap = [entry for entry in self._heap if entry[2] != group]
            heapq.heapify(self._heap)
        self._held[group] = taken

    def release(self, group: Hashable) -> None:
        """Put `group`'s held timers back, each due the time it had left from now."""
        now = self._host.now
        for left, seq, fn in self._held.pop(group, ()):
            heapq.heappush(self._heap, (now + left, seq, group, fn))

    def drop(self, group: Hashable) -> None:
        """Forget `group`'s timers, held or not (its VM is gone)."""
        self._held.pop(group, None)
        before = len(self._heap)
        self._heap = [entry for entry in self._heap if entry[2] != group]
        if len(self._heap) != before:
            heapq.heapify(self._heap)

    def held(self, group: Hashable) -> bool:
        return group in self._held

    def run_due(self) -> bool:
        """Run every timer due now; True if any ran."""
        ran = False
        while self._heap and self._heap[0][0] <= self._host.now:
            fn = heapq.heappop(self._heap)[3]
            fn()
            ran = True
        return ran

    def next_timeout(self) -> int | None:
        """ns until the next timer that can run, or None if there is none."""
        return max(1, self._heap[0][0] - self._host.now) if self._heap else None

    def next_due(self) -> int | None:
        """When the next timer that can run is due (ns, simulated time; it may be past), or None."""
        return self._heap[0][0] if self._heap else None


class EndpointContext(DeviceContext):
    def __init__(self, host, log: Callable[[str, dict], None], *, gpadl_view=None, create_gpadl=None,
                 own_view=None, timers: TimerQueue | None = None, group: Hashable = None):
        self._host = host
        self._log = log
        self._gpadl_view, self._create_gpadl, self._own_view = gpadl_view, create_gpadl, own_view
        self.timers = timers if timers is not None else TimerQueue(host)
        self.group = group   # the timer group this context arms its timers in
        self.pending_ns = 0  # CPU time charged and not yet spent by the loop

    def now(self) -> int:
        return self._host.now

    def call_later(self, delay_ns: int, fn: Callable[[], None]) -> None:
        self.timers.add(delay_ns, fn, self.group)

    def charge(self, ns: int) -> None:
        self.pending_ns += max(0, int(ns))

    def log(self, event: str, **fields: Any) -> None:
        self._log(event, fields)

    def gpadl_view(self, gpadl_id: int):
        return self._gpadl_view(gpadl_id) if self._gpadl_view else None

    def create_gpadl(self, relid: int, pages: list[int], done) -> int:
        if not self._create_gpadl:
            raise NotImplementedError("this endpoint does not create GPADLs")
        return self._create_gpadl(relid, pages, done)

    def own_view(self, pages: list[int]):
        if not self._own_view:
            raise NotImplementedError("this endpoint has no own memory")
        return self._own_view(pages)

    def run_due(self) -> bool:
        """Run every timer of this context's queue due now; True if any ran."""
        return self.timers.run_due()

    def next_timeout(self) -> int | None:
        """ns until the next timer of this context's queue, or None if there is none."""
        return self.timers.next_timeout()

    def take_pending(self) -> int:
        ns, self.pending_ns = self.pending_ns, 0
        return ns
