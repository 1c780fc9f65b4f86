"""netvsp, the parent side of a VM's synthetic network adapter: NVSP negotiation, the receive and
send buffers the guest shares through GPADLs, RNDIS control, and frames between the guest and its
port on a virtual switch.

Config: {"switch": VirtualSwitch, "mac": "00:15:5d:..", "vlan": 10 or a VlanConfig (default:
the untagged network), "port": name (default "netvsp-<mac>"), "versions": NVSP versions offered
(default protocol.VERSIONS), "link_speed": bits/s (default 10 Gbit/s)}. The port is added on open
and disconnected on close.

Data paths. Guest -> switch: SEND_RNDIS_PKT with the RNDIS message in a send-buffer section, or
(section index NO_SECTION) in the guest pages a GPA-direct packet names, as Linux sends RNDIS
control messages and frames outside the send buffer (hvsim's rule that a parent touches only pages
the child granted holds: each page must be one of the receive or send buffer's, whose PFNs the
`resolve_gpadl` config callable gives), or in-band after the 40-byte NVSP message (hvsim's own
netvsc, without ranges); the frame goes into the port and the request is completed by
transaction id. Switch -> guest: the RNDIS message is copied
into a free receive-buffer section and announced with a transfer-page packet (type 7) naming that
range; the guest's completion of that transaction id frees the section. With no free section (or
a full ring) the frame is refused and the switch counts it against this port only. RNDIS control
responses travel the same way and wait (at most MAX_CONTROL_BACKLOG) for a section.

With the switch's C data plane (netplane.py) the receive sections live in C, and a batch the
parent read from the ring goes to C first: runs of data frames (RNDIS PACKET in a send section
or in-band, to a learned MAC behind another netvsp or flooded to a VLAN of netvsps only) and of
receive completions are
handled there in one crossing; the first packet of any other kind, and any the C path would
have to refuse, drop or queue, is handled by the code below, and C takes over again after it.
The code below is the reference: both paths leave the same bytes in every guest's memory.

The guest is not trusted. Allow-lists (CVE-2021-28476 was an OID reserved for the host, passed
through from a guest):
  - VMBus packets: in-band (6) requests, GPA-direct (9) SEND_RNDIS_PKT requests and completions
    (0xB); nothing else.
  - NVSP from the guest: INIT, SEND_NDIS_VER, SEND_NDIS_CONFIG (NVSP 2+), SEND_RECV_BUF,
    REVOKE_RECV_BUF, SEND_SEND_BUF, REVOKE_SEND_BUF, SEND_RNDIS_PKT; completions only as
    SEND_RNDIS_PKT_COMPLETE of a transfer this VSP has outstanding.
  - RNDIS messages (GUEST_RNDIS): PACKET on the data channel; INITIALIZE, HALT, QUERY, SET,
    KEEPALIVE on the control channel. RESET, INDICATE_STATUS, completions and unknown types are
    refused.
  - OIDs: queries of QUERY_OIDS, sets of SET_OIDS (the packet filter only, with known bits);
    anything else is answered RNDIS_STATUS_NOT_SUPPORTED.
Every length is checked against the buffer it claims (RNDIS message and data lengths, send
section indexes and sizes, GPADL sizes); anything outside is refused. Buffers are any GPADL of
this guest's (gpadl_view cannot tell which channel it came with), so a guest that names its own
ring GPADL as a buffer corrupts only its own channel. Every refusal is counted in
`refused[reason]` and the first of each reason is logged; hostile content never raises out of
on_packets. (A ring the guest corrupted raises RingCorrupt from a reply, which the parent's VMBus
service turns into breaking this channel alone.)

FUTURE: restore from a saved record (save() writes one), multiple RNDIS messages per packet,
VLAN and checksum per-packet info.
"""
from __future__ import annotations

import enum
import struct
from collections import Counter, deque
from dataclasses import dataclass

from drivers.device import Vsp
from drivers.network import netplane
from drivers.network import protocol as p
from drivers.network.frames import BROADCAST, HEADER_LEN, MTU, TAG_LEN, mac_bytes, mac_text
from drivers.network.protocol import NetError, NvspStatus
from drivers.network.vswitch import VirtualSwitch, VlanConfig
from vmbus.ring import FLAG_COMPLETION_REQUESTED, PKT_COMP, PKT_DATA_INBAND, Packet, PacketBatch, RingCorrupt, RingFull

GUEST_NVSP = frozenset({p.Init, p.SendNdisVersion, p.SendNdisConfig, p.SendReceiveBuffer, p.RevokeReceiveBuffer,
                        p.SendSendBuffer, p.RevokeSendBuffer, p.SendRndisPacket})
GUEST_RNDIS = {
    p.CHANNEL_DATA: frozenset({p.RndisType.PACKET}),
    p.CHANNEL_CONTROL: frozenset({p.RndisType.INITIALIZE, p.RndisType.HALT, p.RndisType.QUERY, p.RndisType.SET,
                                  p.RndisType.KEEPALIVE}),
}
QUERY_OIDS = (
    p.OID_GEN_SUPPORTED_LIST, p.OID_GEN_HARDWARE_STATUS, p.OID_GEN_MEDIA_SUPPORTED, p.OID_GEN_MEDIA_IN_USE,
    p.OID_GEN_MAXIMUM_FRAME_SIZE, p.OID_GEN_LINK_SPEED, p.OID_GEN_CURRENT_PACKET_FILTER,
    p.OID_GEN_MAXIMUM_TOTAL_SIZE, p.OID_GEN_MEDIA_CONNECT_STATUS, p.OID_802_3_PERMANENT_ADDRESS,
    p.OID_802_3_CURRENT_ADDRESS,
)
SET_OIDS = (p.OID_GEN_CURRENT_PACKET_FILTER,)
SUPPORTED_FILTER = (p.FILTER_DIRECTED | p.FILTER_MULTICAST | p.FILTER_ALL_MULTICAST | p.FILTER_BROADCAST
                    | p.FILTER_PROMISCUOUS)

MAX_BUFFER_BYTES = 16 << 20      # a receive or send buffer (Linux's default receive buffer is 16 MiB)
MAX_CONTROL_BACKLOG = 16         # RNDIS responses waiting for a receive section
MAX_REPLY_BACKLOG = 1024         # completions waiting for ring space
MAX_GPA_RANGES = 32              # page buffers per GPA-direct packet (Linux's MAX_PAGE_BUFFER_COUNT)
MAX_GPA_BYTES = 64 << 10         # an RNDIS message gathered from GPA-direct ranges
PAGE_SIZE = 4096
REPLY_RETRY_NS = 50_000          # how soon replies that found the ring full are tried again
_U32 = struct.Struct("<I")


def section_size(mtu: int) -> int:
    """Bytes of one receive or send section: an RNDIS data message with a tagged frame of `mtu`,
    at least Linux's 1728."""
    return max(1728, (p.PACKET_HEADER_SIZE + HEADER_LEN + TAG_LEN + mtu + 63) & ~63)


class RndisState(enum.Enum):
    UNINITIALIZED = "uninitialized"
    INITIALIZED = "initialized"
    HALTED = "halted"


@dataclass
class _Buffer:
    """A guest buffer shared through a GPADL, cut into `count` sections of `size` bytes."""
    gpadl_id: int
    buffer_id: int
    view: memoryview
    size: int
    count: int
    pfns: tuple[int, ...] = ()   # the guest pages, in GPADL order (empty: not known)


def _buffer_record(buffer: _Buffer | None) -> dict | None:
    return None if buffer is None else {"gpadl": buffer.gpadl_id, "id": buffer.buffer_id, "size": buffer.size,
                                        "count": buffer.count}


class NetVsp(Vsp):
    def save(self) -> dict:
        """The adapter's state as a plain record: NVSP and NDIS versions, buffers (by GPADL),
        RNDIS state, packet filter, addresses, receive sections free and in flight.
        N.B. hvsim's saved VMs keep their device objects, so no restore from it exists yet."""
        return {"version": self.version, "ndis_version": list(self.ndis_version) if self.ndis_version else None,
                "guest_mtu": self.guest_mtu, "receive": _buffer_record(self.receive),
                "send": _buffer_record(self.send), "rndis": self.rndis.name, "packet_filter": self.packet_filter,
                "mac": self.mac.hex(), "vlan": repr(self.vlan), "free_sections": sorted(self._sections.free_list()),
                "in_flight": sorted(self._sections.in_flight())}

    def __init__(self, channel, config=None, context=None):
        super().__init__(channel, config, context)
        cfg = self.config
        # A bad configuration must not raise here (the parent builds this side while opening the
        # channel): it leaves the adapter unusable, says why in `error`, and refuses everything.
        self.error: str | None = None
        self.switch = cfg.get("switch")
        self.mac = b""
        self.vlan = VlanConfig.access()
        self.versions = p.VERSIONS
        self.link_speed = 100_000_000          # OID_GEN_LINK_SPEED units (100 bit/s): 10 Gbit/s
        try:
            self.mac = mac_bytes(cfg["mac"])
            vlan = cfg.get("vlan")
            self.vlan = vlan if isinstance(vlan, VlanConfig) else VlanConfig.access(int(vlan or 0))
            self.versions = tuple(sorted(map(int, cfg.get("versions", p.VERSIONS)), reverse=True))
            self.link_speed = int(cfg.get("link_speed", 10_000_000_000)) // 100
            if not self.versions or self.link_speed <= 0:
                raise ValueError("versions must not be empty and link_speed must be positive")
        except (KeyError, ValueError, TypeError) as exc:
            self.error = f"network adapter configuration: {exc}"
        if self.switch is not None and not isinstance(self.switch, VirtualSwitch):
            self.error, self.switch = f"network adapter configuration: {self.switch!r} is not a VirtualSwitch", None
        self.port_name = cfg.get("port") or f"netvsp-{mac_text(self.mac) if self.mac else '?'}"
        self.mtu = self.switch.settings.mtu if self.switch is not None else MTU
        self.section_size = section_size(self.mtu)
        self.port = None
        self.version: int | None = None      # negotiated NVSP version
        self.ndis_version: tuple[int, int] | None = None
        self.guest_mtu: int | None = None    # from SEND_NDIS_CONFIG
        self.rndis = RndisState.UNINITIALIZED
        self.packet_filter = 0
        self.receive: _Buffer | None = None
        self.send: _Buffer | None = None
        self.stats: Counter[str] = Counter()     # traffic: tx_* from the guest, rx_* to it
        self.refused: Counter[str] = Counter()   # refusals by reason
        # Receive sections (free, and in flight by transfer trans_id): in C when the switch has
        # the C data plane (netplane.AdapterPlane, `_np`), else in Python (netplane.Sections).
        self._np: netplane.AdapterPlane | None = None
        self._sections = netplane.Sections()
        self._control: deque[bytes] = deque()    # RNDIS responses waiting for a section
        self._replies: deque[tuple[bytes, int]] = deque()  # (completion payload, trans_id) waiting for ring space
        self._resolve = cfg.get("resolve_gpadl")  # gpadl id -> (view, pfns), from the parent
        self._pages: dict[int, tuple[memoryview, int]] | None = None  # pfn -> (buffer view, page index)
        self._retry_armed = False
        self._quiesced = False                   # the VM is being saved or is Saved

    @property
    def refusals(self) -> int:
        return sum(self.refused.values())

    def counters(self) -> dict:
        """The adapter's traffic as plain data (what Measure-VM's network figures are made of):
        frames and bytes the guest sent into the switch (out) and the switch delivered to the
        guest (in), frames dropped either way, and refusals."""
        st = self.stats
        return {"mac": mac_text(self.mac) if self.mac else None,
                "switch": self.switch.name if self.switch is not None else None,
                "frames_out": st["tx_frames"], "bytes_out": st["tx_bytes"],
                "frames_in": st["rx_frames"], "bytes_in": st["rx_bytes"],
                "dropped_out": st["tx_dropped"] + st["tx_no_port"],
                "dropped_in": sum(st[k] for k in ("rx_not_ready", "rx_no_buffer", "rx_ring_full", "rx_ring_broken",
                                                  "rx_vm_saved")),
                "refused": self.refusals}

    # -- life ---------------------------------------------------------------------------------

    def on_open(self) -> None:
        if self.error is None and self.switch is None:
            self.error = "network adapter configuration: no switch"
        if self.error is not None:
            self.context.log("netvsp unusable", error=self.error)
            return
        try:
            self.port = self.switch.add_port(self.port_name, self._from_switch, mac=self.mac, vlan=self.vlan)
        except (ValueError, TypeError) as exc:
            self.error = f"switch port: {exc}"
            self.context.log("netvsp unusable", error=self.error)
            return
        plane = self.switch._plane
        if plane is not None and self.port.mac is not None and not self.port.allow_mac_spoofing:
            np = netplane.AdapterPlane(self)
            if np.pin("ring", self.channel.outgoing._mem):
                c = np.c
                c.mac = list(self.mac)
                c.mtu = self.mtu
                np.sync_ring(self.channel.outgoing)
                self._np, self._sections = np, np
                self.port._np_vsp = self
                plane.bind(self.port, np)

    def on_close(self) -> None:
        if self.port is not None:
            self.port.disconnect()
        self.port = None
        self.receive = self.send = None
        self._sections.reset(0)
        self._control.clear()
        self._replies.clear()
        self._set_rndis(RndisState.UNINITIALIZED)
        np, self._np = self._np, None
        if np is not None:
            for field in ("recv", "send", "ring"):
                np.pin(field, None)
            np.c.port = -1

    def _set_rndis(self, state: RndisState) -> None:
        self.rndis = state
        if self._np is not None:
            self._np.c.rndis_ready = state is RndisState.INITIALIZED
            self._np.c.packet_filter = self.packet_filter

    def _set_buffer(self, what: str, buffer: _Buffer | None) -> None:
        """Attach (or drop) the receive or send buffer, in C too when the data plane has it."""
        setattr(self, what, buffer)
        np = self._np
        if np is None:
            return
        field = "recv" if what == "receive" else "send"
        if not np.pin(field, None if buffer is None else buffer.view):
            self._np = None     # memory C cannot hold: this adapter stays on the Python path
            self._sections = _python_sections(np)
            self.switch._plane.bind(self.port, None)
            return
        c = np.c
        if what == "receive":
            c.recv_size, c.recv_count, c.recv_id = (0, 0, 0) if buffer is None else (buffer.size, buffer.count,
                                                                                      buffer.buffer_id)
        else:
            c.send_size, c.send_count = (0, 0) if buffer is None else (buffer.size, buffer.count)

    def _refuse(self, reason: str, detail: str) -> None:
        self.refused[reason] += 1
        if self.refused[reason] == 1:  # one log line per kind: a flood must not grow the log
            self.context.log("netvsp refused", reason=reason, detail=detail)

    # -- from the guest -------------------------------------------------------------------------

    def on_packets(self, packets: list[Packet]) -> None:
        if self.error is not None:
            self.refused["unusable"] += len(packets)   # no port: the guest's bring-up times out
            return
        if self._np is not None and type(packets) is PacketBatch:
            self._packets_via_plane(packets)
        else:
            for packet in packets:
                self._packet(packet)
        self._pump_control()
        self._flush_replies()

    def _packet(self, packet: Packet) -> None:
        try:
            if packet.type == PKT_DATA_INBAND or packet.type == p.PKT_DATA_USING_GPA_DIRECT:
                self._request(packet)
            elif packet.type == PKT_COMP:
                self._completion(packet)
            else:
                raise NetError("packet_type", f"a guest does not send VMBus packets of type {packet.type}")
        except NetError as exc:
            self._refuse(exc.reason, str(exc))

    def _packets_via_plane(self, batch: PacketBatch) -> None:
        """The batch in order: runs of data frames and receive completions in C (netplane.py),
        each packet C leaves through _packet, as above."""
        records, count = batch._records, len(batch)
        offset = done = 0
        while done < count:
            switch = self.switch
            if self._np is not None and not self._replies and self.port is not None and not switch._delivering:
                handled, offset = netplane.forward(self, switch._plane, records, offset, count - done)
                done += handled
                if done == count:
                    return
            packet, offset = netplane.packet_at(records, offset)
            self._packet(packet)
            done += 1

    def _reply_success(self, trans_id: int) -> None:
        """A data packet's completion that the C path could not write (netplane.forward)."""
        self._reply(p.RndisPacketComplete(NvspStatus.SUCCESS), trans_id)

    def _request(self, packet: Packet) -> None:
        message, rest = p.decode_nvsp(packet.payload)
        kind = type(message)
        if kind not in GUEST_NVSP:
            raise NetError("nvsp_type", f"a guest does not send {kind.__name__}")
        if packet.type == p.PKT_DATA_USING_GPA_DIRECT:
            if kind is not p.SendRndisPacket or message.section_index != p.NO_SECTION:
                raise NetError("packet_type", f"a GPA-direct packet carries {kind.__name__}, not an RNDIS "
                                              f"message outside the send buffer")
            if self.version is None:
                raise NetError("nvsp_state", "SendRndisPacket before the NVSP version is negotiated")
            try:   # answered either way: the guest holds its pages until the completion
                data = self._gather(p.decode_page_buffers(packet.header, MAX_GPA_RANGES))
            except NetError as exc:
                self._refuse(exc.reason, str(exc))
                status = NvspStatus.INVALID_RNDIS_PKT
            else:
                status = self._rndis_packet(message, data)
            self._reply(p.RndisPacketComplete(status), packet.trans_id)
            return
        if kind is p.Init:
            self._init(packet, message)
            return
        if self.version is None:
            raise NetError("nvsp_state", f"{kind.__name__} before the NVSP version is negotiated")
        if kind is p.SendRndisPacket:
            self._reply(p.RndisPacketComplete(self._rndis_packet(message, rest)), packet.trans_id)
        elif kind is p.SendNdisVersion:
            self.ndis_version = (message.major, message.minor)
        elif kind is p.SendNdisConfig:
            if self.version < p.NVSP_VERSION_2:
                raise NetError("nvsp_version", "SEND_NDIS_CONFIG needs NVSP 2")
            if not 68 <= message.mtu <= self.mtu + HEADER_LEN:
                raise NetError("nvsp_value", f"guest MTU {message.mtu} is outside 68..{self.mtu + HEADER_LEN}")
            self.guest_mtu = message.mtu
        elif kind is p.SendReceiveBuffer:
            buffer = self._attach(message, "receive")
            if buffer is None:
                self._reply(p.ReceiveBufferComplete(NvspStatus.FAIL), packet.trans_id)
                return
            self._set_buffer("receive", buffer)
            self._sections.reset(buffer.count)
            self._pages = None
            section = p.Section(0, buffer.size, buffer.count, buffer.size * buffer.count)
            self._reply(p.ReceiveBufferComplete(NvspStatus.SUCCESS, (section,)), packet.trans_id)
        elif kind is p.SendSendBuffer:
            buffer = self._attach(message, "send")
            if buffer is None:
                self._reply(p.SendBufferComplete(NvspStatus.FAIL, 0), packet.trans_id)
                return
            self._set_buffer("send", buffer)
            self._pages = None
            self._reply(p.SendBufferComplete(NvspStatus.SUCCESS, buffer.size), packet.trans_id)
        elif kind is p.RevokeReceiveBuffer:
            if self.receive is None or message.buffer_id != self.receive.buffer_id:
                raise NetError("buffer_id", f"no receive buffer {message.buffer_id:#x} to revoke")
            self._set_buffer("receive", None)
            self._pages = None
            self._sections.reset(0)
            self._control.clear()
        else:  # RevokeSendBuffer
            if self.send is None or message.buffer_id != self.send.buffer_id:
                raise NetError("buffer_id", f"no send buffer {message.buffer_id:#x} to revoke")
            self._set_buffer("send", None)
            self._pages = None

    def _init(self, packet: Packet, message: p.Init) -> None:
        if self.version is not None:
            self._refuse("nvsp_state", "INIT after the version was negotiated")
            self._reply(p.InitComplete(self.version, 0, NvspStatus.FAIL), packet.trans_id)
            return
        lo, hi = message.min_version, message.max_version
        chosen = next((v for v in self.versions if lo <= v <= hi), None)   # self.versions is newest first
        if chosen is not None:
            self.version, status = chosen, NvspStatus.SUCCESS
            if self._np is not None:
                self._np.c.version_ok = 1
        elif hi < min(self.versions):
            status = NvspStatus.PROTOCOL_TOO_OLD
        elif lo > max(self.versions):
            status = NvspStatus.PROTOCOL_TOO_NEW
        else:
            status = NvspStatus.PROTOCOL_UNSUPPORTED
        self.stats["init_ok" if chosen else "init_rejected"] += 1
        self._reply(p.InitComplete(chosen or 0, 0, status), packet.trans_id)

    def _attach(self, message, what: str) -> _Buffer | None:
        """The buffer a SEND_RECV_BUF / SEND_SEND_BUF names, or None (refused and counted)."""
        if (self.receive if what == "receive" else self.send) is not None:
            self._refuse("buffer_state", f"a second {what} buffer")
            return None
        view = self.context.gpadl_view(message.gpadl_id)
        if view is None:
            self._refuse("gpadl", f"{what} buffer GPADL {message.gpadl_id:#x} does not exist")
            return None
        view = memoryview(view).cast("B")
        count = len(view) // self.section_size
        if count == 0 or len(view) > MAX_BUFFER_BYTES:
            self._refuse("buffer_size", f"a {what} buffer of {len(view)} bytes")
            return None
        resolved = self._resolve(message.gpadl_id) if self._resolve is not None else None
        pfns = tuple(resolved[1]) if resolved is not None and len(resolved[1]) * PAGE_SIZE == len(view) else ()
        return _Buffer(message.gpadl_id, message.buffer_id, view, self.section_size, count, pfns)

    def _gather(self, ranges) -> bytes:
        """The bytes GPA-direct ranges name, copied out of the shared buffers' pages in order;
        a page that is not one of theirs is refused (the parent sees only granted pages)."""
        if sum(size for size, _, _ in ranges) > MAX_GPA_BYTES:
            raise NetError("gpa_length", f"GPA-direct ranges of more than {MAX_GPA_BYTES} bytes")
        if self._pages is None:
            self._pages = {pfn: (buffer.view, i) for buffer in (self.send, self.receive) if buffer is not None
                           for i, pfn in enumerate(buffer.pfns)}
        parts = []
        for size, offset, pfns in ranges:
            for pfn in pfns:
                where = self._pages.get(pfn)
                if where is None:
                    raise NetError("gpa_page", f"PFN {pfn:#x} is not a page of a buffer shared with this adapter")
                view, index = where
                n = min(size, PAGE_SIZE - offset)
                start = index * PAGE_SIZE + offset
                parts.append(bytes(view[start:start + n]))
                size, offset = size - n, 0
        return b"".join(parts)

    def _rndis_packet(self, message: p.SendRndisPacket, inband: bytes) -> int:
        """Take one RNDIS message from the send buffer or from the packet; the NVSP status."""
        if message.channel_type not in GUEST_RNDIS:
            self._refuse("rndis_channel", f"channel type {message.channel_type}")
            return NvspStatus.INVALID_RNDIS_PKT
        if message.section_index == p.NO_SECTION:
            data = inband
        else:
            send = self.send
            if send is None or message.section_index >= send.count:
                self._refuse("section_index", f"send section {message.section_index} of "
                                              f"{0 if send is None else send.count}")
                return NvspStatus.FAIL
            if not 0 < message.section_size <= send.size:
                self._refuse("section_size", f"{message.section_size} bytes in a {send.size}-byte section")
                return NvspStatus.FAIL
            start = message.section_index * send.size
            data = bytes(send.view[start:start + message.section_size])   # private copy: no double fetch
        try:
            self._rndis(message.channel_type, data)
        except NetError as exc:
            self._refuse(exc.reason, str(exc))
            return NvspStatus.INVALID_RNDIS_PKT
        return NvspStatus.SUCCESS

    def _rndis(self, channel: int, data: bytes) -> None:
        kind = p.rndis_type(data)
        if kind not in GUEST_RNDIS[channel]:
            raise NetError("rndis_type", f"RNDIS message type {kind:#x} on channel {channel}")
        if kind == p.RndisType.PACKET:
            self._data(data)
            return
        message = p.decode_rndis(data)
        if self.receive is None:
            raise NetError("rndis_state", "an RNDIS request before the receive buffer (no way to answer)")
        if isinstance(message, p.RndisInitialize):
            self._set_rndis(RndisState.INITIALIZED)
            self._respond(p.RndisInitializeComplete(message.req_id, p.RNDIS_STATUS_SUCCESS,
                                                    max_transfer_size=self.section_size))
        elif isinstance(message, p.RndisHalt):
            self.packet_filter = 0
            self._set_rndis(RndisState.HALTED)
        elif isinstance(message, p.RndisKeepalive):
            self._respond(p.RndisKeepaliveComplete(message.req_id, p.RNDIS_STATUS_SUCCESS))
        elif self.rndis is not RndisState.INITIALIZED:
            self._refuse("rndis_state", f"{type(message).__name__} while RNDIS is {self.rndis.value}")
            complete = p.RndisQueryComplete if isinstance(message, p.RndisQuery) else p.RndisSetComplete
            self._respond(complete(message.req_id, p.RNDIS_STATUS_FAILURE))
        elif isinstance(message, p.RndisQuery):
            info = self._query(message.oid) if message.oid in QUERY_OIDS else None
            if info is None:
                self._refuse("oid", f"query of OID {message.oid:#010x}")
                self._respond(p.RndisQueryComplete(message.req_id, p.RNDIS_STATUS_NOT_SUPPORTED))
            else:
                self._respond(p.RndisQueryComplete(message.req_id, p.RNDIS_STATUS_SUCCESS, info))
        else:  # RndisSet
            self._respond(p.RndisSetComplete(message.req_id, self._set(message.oid, message.info)))

    def _query(self, oid: int) -> bytes | None:
        u32 = _U32.pack
        connected = self.port is not None and self.port.connected
        values = {
            p.OID_GEN_SUPPORTED_LIST: lambda: b"".join(u32(o) for o in QUERY_OIDS),
            p.OID_GEN_HARDWARE_STATUS: lambda: u32(0),                   # NdisHardwareStatusReady
            p.OID_GEN_MEDIA_SUPPORTED: lambda: u32(p.MEDIUM_802_3),
            p.OID_GEN_MEDIA_IN_USE: lambda: u32(p.MEDIUM_802_3),
            p.OID_GEN_MAXIMUM_FRAME_SIZE: lambda: u32(self.mtu),
            p.OID_GEN_LINK_SPEED: lambda: u32(min(self.link_speed, 0xFFFFFFFF)),
            p.OID_GEN_CURRENT_PACKET_FILTER: lambda: u32(self.packet_filter),
            p.OID_GEN_MAXIMUM_TOTAL_SIZE: lambda: u32(self.mtu + HEADER_LEN),
            p.OID_GEN_MEDIA_CONNECT_STATUS: lambda: u32(p.MEDIA_CONNECTED if connected else p.MEDIA_DISCONNECTED),
            p.OID_802_3_PERMANENT_ADDRESS: lambda: self.mac,
            p.OID_802_3_CURRENT_ADDRESS: lambda: self.mac,
        }
        value = values.get(oid)
        return None if value is None else value()

    def _set(self, oid: int, info: bytes) -> int:
        if oid not in SET_OIDS:
            self._refuse("oid", f"set of OID {oid:#010x}")
            return p.RNDIS_STATUS_NOT_SUPPORTED
        if len(info) != 4:
            self._refuse("oid_value", f"packet filter of {len(info)} bytes")
            return p.RNDIS_STATUS_INVALID_LENGTH
        (value,) = _U32.unpack(info)
        if value & ~SUPPORTED_FILTER:
            self._refuse("oid_value", f"packet filter bits {value:#x}")
            return p.RNDIS_STATUS_NOT_SUPPORTED
        self.packet_filter = value
        if self._np is not None:
            self._np.c.packet_filter = value
        return p.RNDIS_STATUS_SUCCESS

    def _data(self, data: bytes) -> None:
        """A data message: its frame goes into the switch port."""
        if len(data) < p.PACKET_HEADER_SIZE:
            raise NetError("rndis_length", f"a {len(data)}-byte data message")
        _, length = struct.unpack_from("<II", data)
        if not p.PACKET_HEADER_SIZE <= length <= len(data):
            raise NetError("rndis_length", f"message length {length} with {len(data)} bytes available")
        packet = p.decode_packet_body(data[8:length])
        frame = packet.data
        if len(frame) > HEADER_LEN + TAG_LEN + self.mtu:
            raise NetError("frame_length", f"a {len(frame)}-byte frame on an MTU of {self.mtu}")
        if self.rndis is not RndisState.INITIALIZED:
            raise NetError("rndis_state", f"a data packet while RNDIS is {self.rndis.value}")
        if self.port is None:
            self.stats["tx_no_port"] += 1
        elif self.port.send(frame):
            self.stats["tx_frames"] += 1
            self.stats["tx_bytes"] += len(frame)
        else:
            self.stats["tx_dropped"] += 1      # the switch says why, in port.stats

    def _completion(self, packet: Packet) -> None:
        message, _ = p.decode_nvsp(packet.payload)
        if not isinstance(message, p.RndisPacketComplete):
            raise NetError("completion", f"a guest completes transfers with SEND_RNDIS_PKT_COMPLETE, "
                                         f"not {type(message).__name__}")
        section = self._sections.complete(packet.trans_id)
        if section is None:
            raise NetError("completion", f"no transfer {packet.trans_id:#x} is outstanding")
        self._sections.put_back(section)

    # -- to the guest ---------------------------------------------------------------------------

    def quiesce(self) -> None:
        """The VM is being saved: frames the switch brings are refused (its receive buffer is
        wiped while Saved), as an adapter that is off drops them. Transfers the guest has not
        completed yet stay in flight; it completes them after the restore."""
        self._quiesced = True
        if self._np is not None:
            self._np.c.quiesced = 1

    def resume(self) -> None:
        self._quiesced = False
        if self._np is not None:
            self._np.c.quiesced = 0

    def _from_switch(self, frame: bytes) -> bool:
        """The switch's deliver callback: False when the guest cannot take the frame now."""
        if self._quiesced:
            self.stats["rx_vm_saved"] += 1
            return False
        if self.rndis is not RndisState.INITIALIZED or self.receive is None:
            self.stats["rx_not_ready"] += 1
            return False
        if not self._passes_filter(frame):
            self.stats["rx_filtered"] += 1
            return True                          # taken, as a NIC takes what its filter drops
        if not self._sections.free_count():
            self.stats["rx_no_buffer"] += 1
            return False
        try:
            sent = self._indicate(p.encode_packet(frame), p.CHANNEL_DATA)
        except RingCorrupt:
            self._ring_broken()
            self.stats["rx_ring_broken"] += 1
            return False
        self.stats["rx_frames" if sent else "rx_ring_full"] += 1
        if sent:
            self.stats["rx_bytes"] += len(frame)
        return sent

    def _passes_filter(self, frame: bytes) -> bool:
        wanted = self.packet_filter
        if wanted & p.FILTER_PROMISCUOUS:
            return True
        dst = frame[:6]
        if dst == self.mac:
            return bool(wanted & p.FILTER_DIRECTED)
        if dst == BROADCAST:
            return bool(wanted & p.FILTER_BROADCAST)
        if dst[0] & 1:
            return bool(wanted & (p.FILTER_MULTICAST | p.FILTER_ALL_MULTICAST))
        return False

    def _indicate(self, message: bytes, channel: int) -> bool:
        """Copy one RNDIS message into a free receive section and announce it; False if the ring
        is full (the section stays free)."""
        receive = self.receive
        sections = self._sections
        section = sections.take()
        start = section * receive.size
        receive.view[start:start + len(message)] = message
        trans_id = sections.begin(section)   # never 0; used up even if the ring is full
        header = p.encode_transfer_pages(receive.buffer_id, [(start, len(message))])
        try:
            self._send(p.encode_nvsp(p.SendRndisPacket(channel)), packet_type=p.PKT_DATA_USING_XFER_PAGES,
                       trans_id=trans_id, flags=FLAG_COMPLETION_REQUESTED, header=header)
        except RingFull:
            sections.complete(trans_id)
            sections.put_front(section)
            return False
        return True

    def _send(self, payload: bytes, **kw) -> None:
        """channel.send, keeping the C data plane's view of the ring in step."""
        try:
            self.channel.send(payload, **kw)
        except RingCorrupt:
            self._ring_broken()
            raise
        finally:
            if self._np is not None:
                self._np.sync_ring(self.channel.outgoing)

    def _ring_broken(self) -> None:
        if self._np is not None:
            self._np.c.broken = 1

    def _respond(self, message) -> None:
        """Queue an RNDIS response for the guest; it goes out as soon as a section is free."""
        if len(self._control) >= MAX_CONTROL_BACKLOG:
            self._refuse("control_backlog", "RNDIS requests faster than the guest takes the answers")
            return
        self._control.append(p.encode_rndis(message))

    def _pump_control(self) -> None:
        # Each item leaves its queue before it is sent: sending may re-enter this side (a peer
        # answering from inside the signal) and must not find it still queued.
        while self._control and self._sections.free_count() and self.receive is not None:
            message = self._control.popleft()
            if not self._indicate(message, p.CHANNEL_CONTROL):
                self._control.appendleft(message)
                return

    def _reply(self, message, trans_id: int) -> None:
        """Complete a guest request (an NVSP message in a completion packet, by its trans_id).
        Completions are never dropped while there is room to queue them: the guest frees its send
        sections on them."""
        if len(self._replies) >= MAX_REPLY_BACKLOG:
            self.stats["reply_dropped"] += 1
            return
        self._replies.append((p.encode_nvsp(message), trans_id))
        self._flush_replies()

    def _flush_replies(self) -> None:
        while self._replies:
            payload, trans_id = self._replies.popleft()
            try:
                self._send(payload, packet_type=PKT_COMP, trans_id=trans_id)
            except RingFull:
                self._replies.appendleft((payload, trans_id))
                if not self._retry_armed:
                    self._retry_armed = True
                    self.context.call_later(REPLY_RETRY_NS, self._retry)
                return

    def _retry(self) -> None:
        self._retry_armed = False
        try:
            self._pump_control()
            self._flush_replies()
        except RingCorrupt:
            self._ring_broken()
            self.stats["reply_ring_broken"] += 1
            self._replies.clear()


def _python_sections(np: netplane.AdapterPlane) -> netplane.Sections:
    """The same sections, moved from C to Python (an adapter that leaves the C path)."""
    sections = netplane.Sections()
    sections._free = deque(np.free_list())
    sections._in_flight = np.in_flight()
    sections._next = np.c.next_transfer
    return sections
