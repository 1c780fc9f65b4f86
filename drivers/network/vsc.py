"""netvsc, the guest side of the synthetic network adapter: negotiate NVSP (newest version first,
as Linux), share a receive and a send buffer from the guest's own pages, bring RNDIS up (initialize,
query the MAC address, MTU, link state and speed, set the packet filter), then carry frames between
the guest's network stack and the host.

Config: {"address": "10.0.10.2/24" (the interface's; without it there is no stack), "gateway": optional,
"netstack": the guest's NetStack, shared by its adapters (optional: without it this adapter gets a
stack of its own), "interface": the interface's name in it (default "eth<n>"),
"relid": the channel's relid, "buffer_pages": guest page numbers for the buffers (the first
"receive_pages" (default 64) for the receive buffer, the next "send_pages" (default 32) for the
send buffer), "cpu_per_frame" (default "1us" of guest CPU), "tx_queue" (frames waiting for room,
default 256), "versions" (NVSP versions to try, default protocol.VERSIONS), "init_timeout"
(default "1s")}.
N.B. the device contract gives a VSC neither its relid nor a page allocator; until it does, both
come from the config.

Once `ready`, `vsc.stack` is a drivers.network.netstack.NetStack and `vsc.interface` this
adapter's interface in it, on the MAC the host reported (a stack of its own has the device context
as its clock); the interface's frames go out through `transmit(frame)`: as an RNDIS data
message in a free send-buffer section, or in-band after the 40-byte NVSP message when none is free
(hvsim's own: Linux would name the frame's pages in a GPA-direct packet, and the parent may read
only granted pages); frames wait (at most tx_queue) when the ring is full. RNDIS control messages
go as Linux sends them, in a GPA-direct packet (type 9) whose page buffers name where the message
lies: here a send-buffer section, so the pages are granted. Received frames arrive in
transfer-page packets; the ranges (before offset8) must lie inside the header offset8 counts, as
Linux's netvsc_receive demands, and each is checked against the receive buffer, copied out, handed to `interface.receive`, and the
packet is completed by its transaction id (always: the host frees the section on it). The host is
not trusted either: what fails a check is refused, counted in `refused[reason]`, and dropped.
"""
from __future__ import annotations

import enum
import struct
from collections import Counter, deque

from drivers.device import Vsc
from drivers.network import protocol as p
from drivers.network.frames import HEADER_LEN, MTU, TAG_LEN, mac_text
from drivers.network.protocol import NetError, NvspStatus
from hypervisor.quantities import parse_duration
from drivers.network.netstack import Interface, NetStack, StackSettings
from vmbus.ring import FLAG_COMPLETION_REQUESTED, PKT_COMP, PKT_DATA_INBAND, Packet, RingError, RingFull

CONTROL_TRANS_ID = (1 << 64) - 3   # NVSP init requests (Linux's VMBUS_RQST_INIT): never an I/O id
MAX_RANGES = 64                    # transfer-page ranges per packet this side accepts
PACKET_FILTER = p.FILTER_DIRECTED | p.FILTER_BROADCAST | p.FILTER_ALL_MULTICAST  # as Linux
MAX_COMPLETION_BACKLOG = 4096
_U32 = struct.Struct("<I")


class State(enum.Enum):
    NEGOTIATING = "negotiating"     # NVSP INIT
    BUFFERS = "buffers"             # receive then send buffer
    RNDIS = "rndis"                 # RNDIS initialize, queries, packet filter
    READY = "ready"
    FAILED = "failed"
    CLOSED = "closed"


class NetVsc(Vsc):
    def __init__(self, channel, config=None, context=None):
        super().__init__(channel, config, context)
        cfg = self.config
        self.state = State.NEGOTIATING
        self.error: str | None = None
        self.version: int | None = None
        self.mac: bytes | None = None
        self.mtu = MTU
        self.link_up = False
        self.link_speed = 0               # bits/s
        self.stack: NetStack | None = None
        self.interface: Interface | None = None   # this adapter's interface in the stack
        self.stats: Counter[str] = Counter()
        self.refused: Counter[str] = Counter()
        self.tx_queue, self.cpu_per_frame, self._init_timeout = 256, 1_000, 1_000_000_000
        self._relid, self._pages = 0, ([], [])
        self._offered = list(p.VERSIONS)
        try:
            self.tx_queue = int(cfg.get("tx_queue", 256))
            self.cpu_per_frame = parse_duration(cfg.get("cpu_per_frame", "1us"), "cpu_per_frame")
            self._init_timeout = parse_duration(cfg.get("init_timeout", "1s"), "init_timeout")
            self._offered = [int(v) for v in cfg.get("versions", p.VERSIONS)]
            if not self._offered:
                raise ValueError("versions must not be empty")
            pages = [int(page) for page in cfg.get("buffer_pages", ())]
            receive, send = int(cfg.get("receive_pages", 64)), int(cfg.get("send_pages", 32))
            if "relid" not in cfg or receive < 1 or send < 1 or len(pages) < receive + send:
                raise ValueError(f"it needs a relid and {receive + send} buffer_pages")
            self._relid = int(cfg["relid"])
            self._pages = (pages[:receive], pages[receive:receive + send])   # (receive buffer, send buffer)
        except (TypeError, ValueError) as exc:   # the guest stack builds this side: never raise
            self.state, self.error = State.FAILED, f"netvsc configuration: {exc}"
        self._awaiting: type | None = None          # the NVSP completion the state machine waits for
        self._recv_view: memoryview | None = None
        self._send_view: memoryview | None = None
        self._send_section = 0
        self._send_free: deque[int] = deque()
        self._next_id = 1
        self._outstanding: dict[int, int | None] = {}  # trans_id -> send section (None: in-band)
        self._backlog: deque[bytes] = deque()          # frames waiting for room
        self._completions: deque[tuple[int, int]] = deque()  # (trans_id, status) waiting for ring space
        self._rndis_steps: list = []                   # RNDIS requests still to make
        self._rndis_pending: tuple[int, object] | None = None  # (req_id, request) awaiting its answer
        self._req_id = 0

    @property
    def ready(self) -> bool:
        return self.state is State.READY

    @property
    def refusals(self) -> int:
        return sum(self.refused.values())

    @property
    def tx_waiting(self) -> int:
        """Frames accepted by transmit() and waiting for room in the ring."""
        return len(self._backlog)

    # -- bring-up ---------------------------------------------------------------------------------

    def on_open(self) -> None:
        if self.state is State.FAILED:
            self.context.log("netvsc failed", error=self.error)
            return
        self.context.call_later(self._init_timeout, self._init_deadline)
        self._send_init()

    def _fail(self, why: str) -> None:
        if self.state not in (State.FAILED, State.CLOSED):
            self.state, self.error = State.FAILED, why
            self.context.log("netvsc failed", error=why)

    def _init_deadline(self) -> None:
        if self.state in (State.NEGOTIATING, State.BUFFERS, State.RNDIS):
            self._fail(f"the host did not finish bringing the adapter up ({self.state.value})")

    def _control(self, message, *, completion: type | None) -> None:
        """An NVSP init-time message; `completion` is the reply type it asks for (None: none)."""
        self._awaiting = completion  # before sending: the reply may arrive before send() returns
        flags = FLAG_COMPLETION_REQUESTED if completion else 0
        try:
            self.channel.send(p.encode_nvsp(message), trans_id=CONTROL_TRANS_ID, flags=flags)
        except RingError as exc:
            self._fail(f"cannot send {type(message).__name__}: {exc}")

    def _send_init(self) -> None:
        version = self._offered[0]
        self._control(p.Init(version, version), completion=p.InitComplete)

    def _negotiated(self, message: p.InitComplete) -> None:
        if message.status == NvspStatus.SUCCESS and message.version == self._offered[0]:
            self.version = message.version
            self.state = State.BUFFERS
            major, minor = p.NDIS_VERSION
            self._control(p.SendNdisVersion(major, minor), completion=None)
            if self.version >= p.NVSP_VERSION_2:
                self._control(p.SendNdisConfig(self.mtu + HEADER_LEN), completion=None)
            self._share_receive_buffer()
        elif len(self._offered) > 1:
            self._offered.pop(0)
            self._send_init()
        else:
            self._fail(f"no NVSP version in common (last status {message.status})")

    def _share_receive_buffer(self) -> None:
        receive, send = self._pages
        try:
            self._recv_view = memoryview(self.context.own_view(receive)).cast("B")
            self._send_view = memoryview(self.context.own_view(send)).cast("B")
        except Exception as exc:  # the guest's own memory manager said no  # noqa: BLE001
            self._fail(f"cannot map the buffer pages: {exc}")
            return
        self._awaiting = p.ReceiveBufferComplete
        self._create_gpadl(receive, self._receive_gpadl)

    def _create_gpadl(self, pages: list[int], done) -> None:
        try:
            self.context.create_gpadl(self._relid, pages, done)
        except Exception as exc:  # a wrong relid in the config, say  # noqa: BLE001
            self._fail(f"cannot create a buffer GPADL on relid {self._relid}: {exc}")

    def _receive_gpadl(self, gpadl_id: int, ok: bool) -> None:
        if self.state is not State.BUFFERS:
            return
        if not ok:
            self._fail("the host refused the receive buffer GPADL")
            return
        self._control(p.SendReceiveBuffer(gpadl_id, p.RECEIVE_BUFFER_ID), completion=p.ReceiveBufferComplete)

    def _receive_buffer_done(self, message: p.ReceiveBufferComplete) -> None:
        size = len(self._recv_view)
        if message.status != NvspStatus.SUCCESS or not message.sections:
            self._fail(f"the host refused the receive buffer (status {message.status})")
            return
        s = message.sections[0]
        if (s.sub_alloc_size < p.PACKET_HEADER_SIZE + HEADER_LEN or s.num_sub_allocs == 0
                or s.offset + s.sub_alloc_size * s.num_sub_allocs > size):
            self._fail(f"receive buffer section {s} does not fit the {size}-byte buffer")
            return
        self._awaiting = p.SendBufferComplete
        self._create_gpadl(self._pages[1], self._send_gpadl)

    def _send_gpadl(self, gpadl_id: int, ok: bool) -> None:
        if self.state is not State.BUFFERS:
            return
        if not ok:
            self._fail("the host refused the send buffer GPADL")
            return
        self._control(p.SendSendBuffer(gpadl_id, p.SEND_BUFFER_ID), completion=p.SendBufferComplete)

    def _send_buffer_done(self, message: p.SendBufferComplete) -> None:
        size = len(self._send_view)
        if message.status != NvspStatus.SUCCESS or not 0 < message.section_size <= size:
            self._fail(f"the host refused the send buffer (status {message.status}, "
                       f"section size {message.section_size})")
            return
        self._send_section = message.section_size
        self._send_free = deque(range(size // message.section_size))
        self.state = State.RNDIS
        self._rndis_steps = [
            lambda r: p.RndisInitialize(r, max_transfer_size=self._send_section),
            lambda r: p.RndisQuery(r, p.OID_802_3_PERMANENT_ADDRESS),
            lambda r: p.RndisQuery(r, p.OID_GEN_MAXIMUM_FRAME_SIZE),
            lambda r: p.RndisQuery(r, p.OID_GEN_MEDIA_CONNECT_STATUS),
            lambda r: p.RndisQuery(r, p.OID_GEN_LINK_SPEED),
            lambda r: p.RndisSet(r, p.OID_GEN_CURRENT_PACKET_FILTER, _U32.pack(PACKET_FILTER)),
        ]
        self._next_rndis()

    def _next_rndis(self) -> None:
        if not self._rndis_steps:
            self._up()
            return
        self._req_id += 1
        request = self._rndis_steps.pop(0)(self._req_id)
        self._rndis_pending = (self._req_id, request)
        message = p.encode_rndis(request)
        if not self._send_free or len(message) > self._send_section:
            self._fail(f"no send section for RNDIS {type(request).__name__}")
            return
        section = self._send_free.popleft()
        start = section * self._send_section
        self._send_view[start:start + len(message)] = message
        header = p.encode_page_buffers(self._page_buffers(start, len(message)))
        if not self._send(p.encode_nvsp(p.SendRndisPacket(p.CHANNEL_CONTROL)), section, header=header):
            self._send_free.appendleft(section)
            self._fail(f"no ring space for RNDIS {type(request).__name__}")

    def _page_buffers(self, start: int, length: int) -> list[tuple[int, int, list[int]]]:
        """Send-buffer bytes [start, start + length) as Linux's page buffers: one (byte_count,
        byte_offset, [pfn]) per page they touch."""
        pages, out = self._pages[1], []
        while length:
            index, offset = divmod(start, 4096)
            n = min(length, 4096 - offset)
            out.append((n, offset, [pages[index]]))
            start, length = start + n, length - n
        return out

    def _rndis_answer(self, message) -> None:
        pending = self._rndis_pending
        if pending is None or getattr(message, "req_id", None) != pending[0]:
            self.refused["rndis_unexpected"] += 1
            return
        request = pending[1]
        self._rndis_pending = None
        ok = message.status == p.RNDIS_STATUS_SUCCESS
        if isinstance(request, p.RndisInitialize):
            if not isinstance(message, p.RndisInitializeComplete) or not ok:
                self._fail(f"RNDIS initialize failed: {message}")
                return
        elif isinstance(request, p.RndisQuery):
            if not isinstance(message, p.RndisQueryComplete):
                self._fail(f"RNDIS query answered with {type(message).__name__}")
                return
            if not self._queried(request.oid, message.info if ok else None):
                return
        elif not isinstance(message, p.RndisSetComplete) or not ok:
            self._fail(f"the host refused the packet filter: {message}")
            return
        self._next_rndis()

    def _queried(self, oid: int, info: bytes | None) -> bool:
        """Take a query's answer (None: the host refused it); False if the adapter cannot go on."""
        value = _U32.unpack_from(info)[0] if info is not None and len(info) >= 4 else None
        if oid == p.OID_802_3_PERMANENT_ADDRESS:
            if info is None or len(info) != 6 or info[0] & 1 or info == bytes(6):
                self._fail(f"the host reported no usable MAC address ({info!r})")
                return False
            self.mac = bytes(info)
        elif oid == p.OID_GEN_MAXIMUM_FRAME_SIZE:
            self.mtu = value if value is not None and 68 <= value <= 9000 else MTU
        elif oid == p.OID_GEN_MEDIA_CONNECT_STATUS:
            self.link_up = value != p.MEDIA_DISCONNECTED
        elif oid == p.OID_GEN_LINK_SPEED:
            self.link_speed = 100 * (value or 0)
        return True

    def _up(self) -> None:
        self.state = State.READY
        address = self.config.get("address")
        if address is not None:
            shared = self.config.get("netstack")
            try:
                if shared is None:
                    stack = NetStack(clock=self.context, settings=StackSettings(mtu=self.mtu))
                else:
                    stack = shared
                self.interface = stack.add_interface(mac=self.mac, address=address,
                                                     gateway=self.config.get("gateway"), transmit=self.transmit,
                                                     name=self.config.get("interface"))
                self.stack = stack
            except (ValueError, AttributeError) as exc:
                self._fail(f"network stack: {exc}")
                return
        self.context.log("netvsc ready", mac=mac_text(self.mac), mtu=self.mtu, version=hex(self.version),
                         interface=self.interface.name if self.interface else None)

    # -- sending ----------------------------------------------------------------------------------

    def transmit(self, frame: bytes) -> bool:
        """Send one Ethernet frame; False if it was dropped (adapter not ready, oversize, or the
        queue of frames waiting for room is full)."""
        if self.state is not State.READY:
            self.stats["tx_not_ready"] += 1
            return False
        if not HEADER_LEN <= len(frame) <= HEADER_LEN + TAG_LEN + self.mtu:
            self.stats["tx_bad_size"] += 1
            return False
        if self._backlog or not self._send_frame(frame):
            if len(self._backlog) >= self.tx_queue:
                self.stats["tx_dropped"] += 1
                return False
            self._backlog.append(bytes(frame))
        return True

    def _send_frame(self, frame: bytes) -> bool:
        message = p.encode_packet(frame)
        if self._send_free and len(message) <= self._send_section:
            section = self._send_free.popleft()
            start = section * self._send_section
            self._send_view[start:start + len(message)] = message
            payload = p.encode_nvsp(p.SendRndisPacket(p.CHANNEL_DATA, section, len(message)))
        else:
            section = None
            payload = p.encode_nvsp(p.SendRndisPacket(p.CHANNEL_DATA)) + message
        if not self._send(payload, section):
            if section is not None:
                self._send_free.appendleft(section)
            return False
        self.stats["tx_frames"] += 1
        self.context.charge(self.cpu_per_frame)
        return True

    def _send(self, payload: bytes, section: int | None, header: bytes = b"") -> bool:
        """One SEND_RNDIS_PKT with a fresh transaction id; False if the ring is full (the host is
        asked to signal once there is room)."""
        trans_id = self._next_id
        self._next_id = self._next_id + 1 if self._next_id < CONTROL_TRANS_ID - 1 else 1
        self._outstanding[trans_id] = section  # before sending: the completion may beat send()
        try:
            kind = p.PKT_DATA_USING_GPA_DIRECT if header else PKT_DATA_INBAND
            self.channel.send(payload, trans_id=trans_id, flags=FLAG_COMPLETION_REQUESTED,
                              set_pending_send_sz=True, packet_type=kind, header=header)
        except RingFull:
            del self._outstanding[trans_id]
            return False
        except RingError as exc:
            del self._outstanding[trans_id]
            self._fail(f"ring: {exc}")
            return False
        return True

    def _pump(self) -> None:
        """Send what waited for room: completions first (they free the host's sections)."""
        # Each item leaves its queue before it is sent: sending may re-enter this side.
        while self._completions:
            trans_id, status = self._completions.popleft()
            if not self._complete_now(trans_id, status):
                self._completions.appendleft((trans_id, status))
                return
        while self._backlog and self.state is State.READY:
            frame = self._backlog.popleft()
            if not self._send_frame(frame):
                self._backlog.appendleft(frame)
                return

    # -- receiving --------------------------------------------------------------------------------

    def on_packets(self, packets: list[Packet]) -> None:
        for packet in packets:
            if packet.type == PKT_COMP:
                self._completion(packet)
            elif packet.type == p.PKT_DATA_USING_XFER_PAGES:
                self._transfer(packet)
            else:
                self.refused["packet_type"] += 1
        self._pump()

    def _completion(self, packet: Packet) -> None:
        try:
            message, _ = p.decode_nvsp(packet.payload)
        except NetError as exc:
            self.refused[exc.reason] += 1
            return
        if packet.trans_id == CONTROL_TRANS_ID:
            if self._awaiting is not type(message):
                self.refused["completion"] += 1
                return
            self._awaiting = None
            if isinstance(message, p.InitComplete):
                self._negotiated(message)
            elif isinstance(message, p.ReceiveBufferComplete):
                self._receive_buffer_done(message)
            else:
                self._send_buffer_done(message)
            return
        if not isinstance(message, p.RndisPacketComplete) or packet.trans_id not in self._outstanding:
            self.refused["completion"] += 1      # each id completes at most once
            return
        section = self._outstanding.pop(packet.trans_id)
        if section is not None:
            self._send_free.append(section)
        if message.status != NvspStatus.SUCCESS:
            self.stats["tx_failed"] += 1

    def _transfer(self, packet: Packet) -> None:
        status = NvspStatus.SUCCESS
        try:
            pageset, ranges = p.decode_transfer_pages(packet.header, MAX_RANGES)
            if self._recv_view is None or pageset != p.RECEIVE_BUFFER_ID:
                raise NetError("xfer_pageset", f"transfer page set {pageset:#x}")
            message, _ = p.decode_nvsp(packet.payload)
            if not isinstance(message, p.SendRndisPacket):
                raise NetError("nvsp_type", f"{type(message).__name__} in a transfer-page packet")
            size = len(self._recv_view)
            for offset, count in ranges:   # every range checked before any is used
                if count < 8 or offset + count > size:
                    raise NetError("xfer_range", f"{count} bytes at {offset} of a {size}-byte receive buffer")
            for offset, count in ranges:
                self._from_host(bytes(self._recv_view[offset:offset + count]))
        except NetError as exc:
            self.refused[exc.reason] += 1
            status = NvspStatus.FAIL
        if self._completions or not self._complete_now(packet.trans_id, status):
            if len(self._completions) < MAX_COMPLETION_BACKLOG:
                self._completions.append((packet.trans_id, status))
            else:
                self.stats["completion_dropped"] += 1

    def _complete_now(self, trans_id: int, status: int) -> bool:
        try:
            self.channel.send(p.encode_nvsp(p.RndisPacketComplete(status)), packet_type=PKT_COMP,
                              trans_id=trans_id, set_pending_send_sz=True)
        except RingFull:
            return False
        except RingError as exc:
            self._fail(f"ring: {exc}")
            return True  # nothing more will go out; do not keep it
        return True

    def _from_host(self, data: bytes) -> None:
        try:
            message = p.decode_rndis(data)
        except NetError as exc:
            self.refused[exc.reason] += 1
            return
        if isinstance(message, p.RndisPacket):
            if self.state is not State.READY:
                self.refused["rndis_state"] += 1
                return
            self.stats["rx_frames"] += 1
            self.context.charge(self.cpu_per_frame)
            if self.interface is not None:
                self.interface.receive(message.data)
        elif isinstance(message, p.RndisIndicateStatus):
            if message.status in (p.RNDIS_STATUS_MEDIA_CONNECT, p.RNDIS_STATUS_MEDIA_DISCONNECT):
                self.link_up = message.status == p.RNDIS_STATUS_MEDIA_CONNECT
        elif isinstance(message, (p.RndisInitializeComplete, p.RndisQueryComplete, p.RndisSetComplete,
                                  p.RndisKeepaliveComplete)):
            self._rndis_answer(message)
        else:
            self.refused["rndis_type"] += 1

    def on_close(self) -> None:
        self.state = State.CLOSED
        if self.stack is not None and self.interface is not None:
            self.stack.remove_interface(self.interface)
        self._outstanding.clear()
        self._backlog.clear()
        self._completions.clear()
        self._send_free.clear()
