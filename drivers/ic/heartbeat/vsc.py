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

    def handle(self, body: bytes) -> Answer:
        sequence, _ = p.parse(body)
        self.beats += 1
        return Answer(f.HV_S_OK, p.message(sequence + 1, self.state))
