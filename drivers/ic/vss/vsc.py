"""The VSS IC's guest side: on FREEZE it calls `freeze()` from its config (True: its disk writes
are now held; False or an exception: it refuses, answered E_FAIL; no callback: it always
succeeds), on THAW `thaw()`. A guest never stays frozen for ever: it thaws by itself after
`max_frozen` (default 10 s, as Windows VSS holds writes at most that long) or when the channel
closes."""
from __future__ import annotations

from drivers.ic import framing as f
from drivers.ic.vsc import Answer, IcVsc
from drivers.ic.vss import protocol as p
from hypervisor.quantities import parse_duration


class VssVsc(IcVsc):
    MSGTYPE = f.VSS
    VERSIONS = p.GUEST_VERSIONS
    FRAMEWORKS = p.GUEST_FRAMEWORKS

    def __init__(self, channel, config=None, context=None):
        super().__init__(channel, config, context)
        self.max_frozen = parse_duration(self.config.get("max_frozen", "10s"), "max_frozen")
        self.frozen = False
        self.events: list[tuple[int, str]] = []   # (simulated time, what the guest did)
        self._freezes = 0                          # identifies a freeze for its auto-thaw timer

    def handle(self, body: bytes) -> Answer:
        op, _ = p.parse(body)
        if op == p.FREEZE:
            return Answer(f.HV_S_OK if self._freeze() else f.HV_E_FAIL)
        if op == p.THAW:
            self._thaw("thawed")
            return Answer(f.HV_S_OK)
        if op == p.HOT_BACKUP:
            return Answer(f.HV_S_OK, p.message(op, p.NO_AUTO_RECOVERY))
        return Answer(f.HV_ERROR_NOT_SUPPORTED)

    def _freeze(self) -> bool:
        if self.frozen:
            return True
        fn = self.config.get("freeze")
        if fn is not None and not self.guest_call("freeze", fn, default=False):
            self.events.append((self.context.now(), "freeze refused"))
            return False
        self.frozen = True
        self._freezes += 1
        self.events.append((self.context.now(), "frozen"))
        self.context.call_later(self.max_frozen, lambda token=self._freezes: self._auto_thaw(token))
        return True

    def _auto_thaw(self, token: int) -> None:
        if self._freezes == token:  # still the same freeze
            self._thaw("auto-thawed")

    def _thaw(self, why: str) -> None:
        if self.frozen:
            self.frozen = False
            self.guest_call("thaw", self.config.get("thaw"))
            self.events.append((self.context.now(), why))

    def on_close(self) -> None:
        self._thaw("thawed: channel closed")
