"""The device context a VMBus endpoint (the parent's service, a guest's stack) gives its device
sides: simulated time, timers run from the endpoint's own VP loop, and CPU time charged to it."""
from __future__ import annotations

import heapq
from typing import Any, Callable

from drivers.device import DeviceContext


class EndpointContext(DeviceContext):
    def __init__(self, host, log: Callable[[str, dict], None], *, gpadl_view=None, create_gpadl=None,
                 own_view=None):
        self._host = host
        self._log = log
        self._gpadl_view, self._create_gpadl, self._own_view = gpadl_view, create_gpadl, own_view
        self._timers: list[tuple[int, int, Callable[[], None]]] = []
        self._seq = 0
        self.pending_ns = 0  # CPU time charged and not yet spent by the loop

    def now(self) -> int:
        return self._host.now

    def call_later(self, delay_ns: int, fn: Callable[[], None]) -> None:
        self._seq += 1
        heapq.heappush(self._timers, (self._host.now + max(0, int(delay_ns)), self._seq, fn))

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
        """Run every timer due now; True if any ran."""
        ran = False
        while self._timers and self._timers[0][0] <= self._host.now:
            _, _, fn = heapq.heappop(self._timers)
            fn()
            ran = True
        return ran

    def next_timeout(self) -> int | None:
        """ns until the next timer, or None if there is none."""
        return max(1, self._timers[0][0] - self._host.now) if self._timers else None

    def take_pending(self) -> int:
        ns, self.pending_ns = self.pending_ns, 0
        return ns
