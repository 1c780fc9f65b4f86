"""The time-sync IC's parent side: SYNC once negotiated, after each restore (resume()) and on
`resync()`, then a SAMPLE every `sample_period` (default 5 s; 0 turns samples off).

The host's clock is `epoch_ns` (ns since the Unix epoch; a fixed default, never the wall clock,
so runs are reproducible) plus the simulated time. Messages are built when sent, not when
asked for, so a queued one never carries a stale time.
"""
from __future__ import annotations

from drivers.ic import framing as f
from drivers.ic.timesync import protocol as p
from drivers.ic.vsp import Exchange, IcVsp, Negotiation
from hypervisor.quantities import parse_duration


class TimesyncVsp(IcVsp):
    MSGTYPE = f.TIMESYNC
    VERSIONS = p.VERSIONS

    def __init__(self, channel, config=None, context=None):
        super().__init__(channel, config, context)
        self.epoch_ns = int(self.config.get("epoch_ns", p.DEFAULT_EPOCH_NS))
        self.sample_period = parse_duration(self.config.get("sample_period", "5s"), "sample period")
        self.stratum = int(self.config.get("stratum", 2))
        self._last: Exchange | None = None

    def describe(self, request) -> dict:
        return {"kind": "sync" if request == p.SYNC else "sample"}

    def host_time_ns(self) -> int:
        return self.epoch_ns + self.context.now()

    def on_ready(self) -> None:
        self.resync()
        if self.sample_period:
            self._every(self.sample_period, self.sample)

    def resume(self) -> None:
        super().resume()
        if self.negotiation is Negotiation.DONE:
            self.resync()  # the guest's clock stood still while its VM was saved: set it again

    def resync(self, on_done=None) -> Exchange:
        """Tell the guest to set its clock to the host's."""
        return self._send(p.SYNC, on_done)

    def sample(self, on_done=None) -> Exchange | None:
        """A time sample; skipped (None) while the previous message is still unanswered."""
        if self._last is not None and not self._last.done:
            return None
        return self._send(p.SAMPLE, on_done)

    def _send(self, flags: int, on_done) -> Exchange:
        def body() -> bytes:   # built when sent, at the time it is sent
            now = self.context.now()
            return p.encode_now(self.epoch_ns + now, now // 100, flags, self.stratum, self.version)

        self._last = self._submit(f.TIMESYNC, body, request=flags, on_done=on_done)
        return self._last
