"""One IC's VSP and VSC over an in-process channel, sharing one ManualContext clock."""
from __future__ import annotations

from dataclasses import dataclass

from drivers.device import ManualContext
from drivers.ic import framing as f
from vmbus.channel import ChannelEnd, connected_pair

S = 1_000_000_000
MS = 1_000_000


@dataclass
class Pair:
    vsp: object
    vsc: object
    host_end: ChannelEnd
    guest_end: ChannelEnd
    ctx: ManualContext


def connect(device, host: dict | None = None, guest: dict | None = None, *, open: bool = True) -> Pair:
    ctx = ManualContext()
    host_end, guest_end = connected_pair(device.ring_pages)
    vsp = device.vsp(host_end, host or {}, ctx)
    vsc = device.vsc(guest_end, guest or {}, ctx)
    host_end.on_signal = lambda: vsp.on_packets(host_end.receive())
    guest_end.on_signal = lambda: vsc.on_packets(guest_end.receive())
    if open:
        vsc.on_open()
        vsp.on_open()
    return Pair(vsp, vsc, host_end, guest_end, ctx)


def hostile_guest(device, host: dict | None = None) -> tuple[object, ChannelEnd, list]:
    """A VSP whose guest is the test: returns (vsp, the guest's end, what the VSP sent)."""
    ctx = ManualContext()
    host_end, guest_end = connected_pair(device.ring_pages)
    vsp = device.vsp(host_end, host or {}, ctx)
    host_end.on_signal = lambda: vsp.on_packets(host_end.receive())
    sent: list = []
    guest_end.on_signal = lambda: sent.extend(guest_end.receive())
    vsp.on_open()
    return vsp, guest_end, sent


def answer(request_payload: bytes, body: bytes | None = None, status: int = f.HV_S_OK, **changes) -> bytes:
    """A well-formed answer to a request (its header echoed), with `changes` to the header."""
    header, request_body = f.decode(request_payload)
    header = header._replace(**{"flags": f.TRANSACTION | f.RESPONSE, "status": status, **changes})
    return f.encode(header, request_body if body is None else body)


def hostile_host(device, guest: dict | None = None) -> tuple[object, ChannelEnd, list]:
    """A VSC whose host is the test: returns (vsc, the host's end, what the VSC sent)."""
    ctx = ManualContext()
    host_end, guest_end = connected_pair(device.ring_pages)
    vsc = device.vsc(guest_end, guest or {}, ctx)
    guest_end.on_signal = lambda: vsc.on_packets(guest_end.receive())
    sent: list = []
    host_end.on_signal = lambda: sent.extend(host_end.receive())
    vsc.on_open()
    return vsc, host_end, sent


def request(msgtype: int, body: bytes, framework=(3, 0), version=(3, 0), trans_id: int = 1,
            flags: int = f.TRANSACTION | f.REQUEST) -> bytes:
    return f.encode(f.IcHeader(msgtype, f.Version(*framework), f.Version(*version), trans_id, flags), body)


def negotiate(host_end: ChannelEnd, sent: list, frameworks, versions, trans_id: int = 1):
    """Offer versions to a VSC as a host would; returns the guest's answer (header, body)."""
    host_end.send(request(f.NEGOTIATE, f.negotiate_body(f.versions(frameworks), f.versions(versions)),
                          trans_id=trans_id), trans_id=trans_id)
    return f.decode(sent[-1].payload)
