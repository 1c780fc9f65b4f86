"""The echo device's guest side: negotiates the newest version the VSP accepts, then sends echo
requests and matches each reply to its request by transaction id."""
from __future__ import annotations

from drivers.device import Vsc
from drivers.example import protocol as p
from vmbus.ring import Packet


class EchoVsc(Vsc):
    def __init__(self, channel, config=None, context=None):
        super().__init__(channel, config, context)
        self.version: int | None = None
        self._offered = list(p.VERSIONS)
        self._next_id = 1
        self.outstanding: dict[int, bytes] = {}   # trans_id -> data sent
        self.replies: list[bytes] = []           # data echoed back, in arrival order
        self.failed: list[tuple[int, str]] = []   # (trans_id, why)

    def on_open(self) -> None:
        self._ask_version()

    def _ask_version(self) -> None:
        self.channel.send(p.version_request(self._offered[0]), trans_id=0)

    @property
    def ready(self) -> bool:
        return self.version is not None

    def echo(self, data: bytes) -> int:
        """Send an echo request; returns its transaction id."""
        if not self.ready:
            raise RuntimeError("the echo device has not negotiated a version yet")
        trans_id = self._next_id
        body = p.encode(p.ECHO_REQUEST, p.echo_body(data))
        self._next_id += 1
        # Outstanding before it is sent: the reply may come back before send() returns.
        self.outstanding[trans_id] = data
        try:
            self.channel.send(body, trans_id=trans_id, flags=1)
        except Exception:
            del self.outstanding[trans_id]
            raise
        return trans_id

    def on_packets(self, packets: list[Packet]) -> None:
        for packet in packets:
            try:
                kind, status, body = p.decode(packet.payload)
            except p.EchoProtocolError:
                continue  # the host is not trusted either: ignore what does not parse
            if kind == p.VERSION_RESPONSE and self.version is None:
                version, accepted = p.parse_version(body)
                if accepted and version == self._offered[0]:
                    self.version = version
                elif len(self._offered) > 1:
                    self._offered.pop(0)
                    self._ask_version()
            elif kind == p.ECHO_REPLY and packet.trans_id in self.outstanding:
                sent = self.outstanding.pop(packet.trans_id)
                if status != p.STATUS_OK:
                    self.failed.append((packet.trans_id, f"status {status}"))
                    continue
                try:
                    data = p.parse_echo(body)
                except p.EchoProtocolError as exc:
                    self.failed.append((packet.trans_id, str(exc)))
                    continue
                if data != sent:
                    self.failed.append((packet.trans_id, "reply differs from the request"))
                else:
                    self.replies.append(data)
            # replies to unknown transaction ids are dropped: each id completes at most once

    def on_close(self) -> None:
        for trans_id in sorted(self.outstanding):
            self.failed.append((trans_id, "channel closed"))
        self.outstanding.clear()
