"""The echo device's parent side: answers the version negotiation, then echoes every request."""
from __future__ import annotations

from drivers.device import Vsp
from drivers.example import protocol as p
from vmbus.ring import Packet


class EchoVsp(Vsp):
    def __init__(self, channel, config=None, context=None):
        super().__init__(channel, config, context)
        self.version: int | None = None   # negotiated version, None until then
        self.echoed = 0
        self.rejected = 0

    def on_packets(self, packets: list[Packet]) -> None:
        for packet in packets:
            try:
                kind, _, body = p.decode(packet.payload)
                if kind == p.VERSION_REQUEST:
                    wanted, _ = p.parse_version(body)
                    ok = wanted in p.VERSIONS
                    if ok:
                        self.version = wanted
                    self.channel.send(p.version_response(wanted, ok), trans_id=packet.trans_id)
                elif kind == p.ECHO_REQUEST:
                    if self.version is None:
                        self.channel.send(p.encode(p.ECHO_REPLY, status=p.STATUS_NOT_NEGOTIATED),
                                          trans_id=packet.trans_id)
                        continue
                    data = p.parse_echo(body)
                    self.channel.send(p.encode(p.ECHO_REPLY, p.echo_body(data)), trans_id=packet.trans_id)
                    self.echoed += 1
                else:
                    raise p.EchoProtocolError(f"a guest does not send message type {kind}")
            except p.EchoProtocolError:
                # A malformed request breaks nothing: it is refused and counted.
                self.rejected += 1
                self.channel.send(p.encode(p.ECHO_REPLY, status=p.STATUS_BAD_REQUEST), trans_id=packet.trans_id)

    def save(self) -> dict:
        return {"version": self.version, "echoed": self.echoed, "rejected": self.rejected}

    @classmethod
    def restore(cls, channel, state, config=None, context=None):
        vsp = cls(channel, config, context)
        vsp.version, vsp.echoed, vsp.rejected = state["version"], state["echoed"], state["rejected"]
        return vsp
