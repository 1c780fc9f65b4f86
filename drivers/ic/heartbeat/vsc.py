"""The heartbeat IC's guest side: answers each heartbeat with its sequence plus one and the
application state from its config ("healthy" unless told otherwise)."""
from __future__ import annotations

from drivers.ic import framing as f
from drivers.ic.heartbeat import protocol as p
from drivers.ic.vsc import Answer, IcVsc


class HeartbeatVsc(IcVsc):
    MSGTYPE = f.HEARTBEAT
    VERSIONS = p.VERSIONS

    def __init__(self, channel, config=None, context=None):
        super().__init__(channel, config, context)
        self.state = int(self.config.get("application_state", p.HEALTHY))
        self.beats = 0  # heartbeats answered

    def handle(self, body: bytes) -> Answer | tuple:
        # p.parse's check and p.message's layout, without the calls (once per heartbeat)
        if len(body) < 8:
            raise f.IcError(f"a heartbeat carries an 8-byte sequence, got {len(body)} bytes")
        self.beats += 1
        return f.HV_S_OK, p.PACK((p.SEQUENCE(body)[0] + 1) & p.MASK, self.state), None
