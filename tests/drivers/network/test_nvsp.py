"""netvsp and netvsc without a host: NVSP/RNDIS layouts, version negotiation, the shared buffers,
the RNDIS allow-list, data in both directions, and hostile packets from either side, over
in-process channel pairs whose signals are delivered in order on one manual clock."""
from __future__ import annotations

import struct
from collections import deque
from typing import NamedTuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.device import ManualContext
from drivers.network import frames
from drivers.network import protocol as p
from drivers.network.protocol import NetError, NvspStatus
from drivers.network.vsc import CONTROL_TRANS_ID, NetVsc, State
from drivers.network.vsp import GUEST_RNDIS, QUERY_OIDS, SET_OIDS, NetVsp, RndisState, section_size
from drivers.network.vswitch import VirtualSwitch, VlanConfig
from vmbus.channel import connected_pair
from vmbus.ring import FLAG_COMPLETION_REQUESTED, PKT_COMP, PKT_DATA_INBAND, Packet

MS = 1_000_000
TEST_TYPE = 0x88B5
RECV_PAGES, SEND_PAGES = 64, 32


class GuestMemory(ManualContext):
    """ManualContext with a guest's memory: the VSC's own_view/create_gpadl and the VSP's
    gpadl_view see the same bytearrays. GPADL answers arrive on the next turn of the clock, as
    over VMBus; `grant=False` makes the host refuse them."""

    def __init__(self):
        super().__init__()
        self.pages: dict[tuple[int, ...], bytearray] = {}
        self.gpadls: dict[int, bytearray] = {}
        self.gpadl_pages: dict[int, list[int]] = {}
        self.grant = True
        self._next_gpadl = 0x1000

    def _memory(self, pages) -> bytearray:
        return self.pages.setdefault(tuple(pages), bytearray(4096 * len(pages)))

    def own_view(self, pages):
        return memoryview(self._memory(pages))

    def create_gpadl(self, relid, pages, done):
        gpadl_id, self._next_gpadl = self._next_gpadl, self._next_gpadl + 1
        if self.grant:
            self.gpadls[gpadl_id] = self._memory(pages)
            self.gpadl_pages[gpadl_id] = list(pages)
        ok = self.grant
        self.call_later(0, lambda: done(gpadl_id, ok))
        return gpadl_id

    def gpadl_view(self, gpadl_id):
        memory = self.gpadls.get(gpadl_id)
        return None if memory is None else memoryview(memory)

    def resolve(self, gpadl_id):
        """The parent's resolve_gpadl: (view, guest pages) of a GPADL, or None."""
        view = self.gpadl_view(gpadl_id)
        return None if view is None else (view, self.gpadl_pages[gpadl_id])

    def next_timer(self) -> int | None:
        return self._timers[0][0] if self._timers else None


class Adapter:
    """A VSP and a VSC over one connected pair; signals are queued on the lan and delivered in
    order, so that neither side re-enters the other from inside a send."""

    def __init__(self, lan, index, vlan, vsp_config, vsc_config):
        self.lan = lan
        self.mac = f"00:15:5d:00:00:{index:02x}"
        self.host_end, self.guest_end = connected_pair(16)
        first = 256 * index
        self.vsp = NetVsp(self.host_end, {"switch": lan.switch, "mac": self.mac, "vlan": vlan, "port": f"vm{index}",
                                          "resolve_gpadl": lan.ctx.resolve, **(vsp_config or {})}, lan.ctx)
        self.vsc = NetVsc(self.guest_end, {"address": f"10.0.0.{index}/24", "relid": index,
                                           "buffer_pages": range(first, first + RECV_PAGES + SEND_PAGES),
                                           **(vsc_config or {})}, lan.ctx)
        self.host_end.on_signal = lambda: lan.queue.append(lambda: self.vsp.on_packets(receive_batch(self.host_end)))
        self.guest_end.on_signal = lambda: lan.queue.append(lambda: self.vsc.on_packets(self.guest_end.receive()))
        self.vsp.on_open()

    def guest_sends(self, payload, packet_type=PKT_DATA_INBAND, trans_id=0x77, flags=FLAG_COMPLETION_REQUESTED):
        """A raw packet from the guest (as a hostile guest would write it), then everything it causes."""
        self.guest_end.send(payload, packet_type=packet_type, trans_id=trans_id, flags=flags)
        self.lan.settle()

    def host_sends(self, payload, packet_type=p.PKT_DATA_USING_XFER_PAGES, trans_id=0x99,
                   flags=FLAG_COMPLETION_REQUESTED):
        header = b""
        if isinstance(payload, Xfer):   # the range list goes before offset8
            header, payload = payload
        self.host_end.send(payload, packet_type=packet_type, trans_id=trans_id, flags=flags, header=header)
        self.lan.settle()


def receive_batch(end):
    """What the parent's VMBus service hands a VSP: one read of the ring (a PacketBatch, which
    netvsp may give to the C data plane), signalling the writer if the rules say so."""
    batch, signal = end.incoming.read_batch()
    if signal:
        end._signal()
    return batch


class Lan:
    def __init__(self, data_plane=None):
        self.ctx = GuestMemory()
        self.switch = VirtualSwitch("sw", now=self.ctx.now, data_plane=data_plane)
        self.queue: deque = deque()

    def adapter(self, index=1, vlan=10, vsp=None, vsc=None, up=True) -> Adapter:
        adapter = Adapter(self, index, vlan, vsp, vsc)
        if up:
            adapter.vsc.on_open()
            self.settle()
        return adapter

    def settle(self, steps=100_000) -> None:
        """Deliver signals and run due timers until nothing is left to do now."""
        for _ in range(steps):
            if self.queue:
                self.queue.popleft()()
            elif self.ctx.next_timer() is not None and self.ctx.next_timer() <= self.ctx.time:
                self.ctx.advance(0)
            else:
                return
        raise AssertionError("the adapters never settled")

    def run(self, ns: int) -> None:
        end = self.ctx.time + ns
        self.settle()
        while self.ctx.next_timer() is not None and self.ctx.next_timer() <= end:
            self.ctx.advance(self.ctx.next_timer() - self.ctx.time)
            self.settle()
        self.ctx.advance(end - self.ctx.time)
        self.settle()


def frame(dst, src, payload=b"payload"):
    return frames.build(frames.mac_bytes(dst), frames.mac_bytes(src), TEST_TYPE, payload)


def raw_port(lan, name="probe", mac="00:15:5d:00:00:fe", vlan=None):
    """A plain switch port on VLAN 10 (or `vlan`) that keeps what it receives."""
    received = []
    port = lan.switch.add_port(name, lambda f: received.append(f) or True, mac=mac,
                               vlan=VlanConfig.access(10 if vlan is None else vlan))
    return port, received


def inband(rndis: bytes, channel=None) -> bytes:
    if channel is None:
        channel = p.CHANNEL_DATA if p.rndis_type(rndis) == p.RndisType.PACKET else p.CHANNEL_CONTROL
    return p.encode_nvsp(p.SendRndisPacket(channel)) + rndis


# -- wire formats -----------------------------------------------------------------------------------

def nvsp(fmt, *values):
    """Linux's struct nvsp_message: the fields, zero padded to its 40 bytes."""
    return struct.pack(fmt, *values).ljust(40, b"\0")


def test_nvsp_layouts_are_linux_byte_for_byte():
    assert p.encode_nvsp(p.Init(p.NVSP_VERSION_61, p.NVSP_VERSION_61)) == nvsp("<III", 1, 0x60001, 0x60001)
    assert p.encode_nvsp(p.InitComplete(0x60001, 0, 1)) == nvsp("<IIII", 2, 0x60001, 0, 1)
    assert p.encode_nvsp(p.SendReceiveBuffer(0x1234, 0xCAFE)) == nvsp("<IIH", 101, 0x1234, 0xCAFE)
    assert p.encode_nvsp(p.ReceiveBufferComplete(1, (p.Section(0, 1728, 151, 1728 * 151),))) == \
        nvsp("<III4I", 102, 1, 1, 0, 1728, 151, 1728 * 151)
    assert p.encode_nvsp(p.SendBufferComplete(1, 1728)) == nvsp("<III", 105, 1, 1728)
    assert p.encode_nvsp(p.SendRndisPacket(1, 7, 300)) == nvsp("<IIII", 107, 1, 7, 300)
    assert p.encode_nvsp(p.SendRndisPacket(0)) == nvsp("<IIII", 107, 0, 0xFFFFFFFF, 0)
    assert p.RNDIS_PKT_MESSAGE_SIZE == p.NVSP_MESSAGE_SIZE == 40
    assert p.encode_nvsp(p.RndisPacketComplete(1)) == nvsp("<II", 108, 1)
    assert p.encode_nvsp(p.SendNdisConfig(1514)) == nvsp("<IIIQ", 125, 1514, 0, 0)
    # A short message from a peer still decodes; nothing follows it.
    assert p.decode_nvsp(struct.pack("<IIII", 2, 0x60001, 0, 1)) == (p.InitComplete(0x60001, 0, 1), b"")


def test_rndis_layouts():
    assert p.encode_rndis(p.RndisInitialize(1, 1, 0, 0x4000)) == struct.pack("<6I", 2, 24, 1, 1, 0, 0x4000)
    # QUERY: the information buffer offset counts from the request id (byte 8): 20 = right after.
    assert p.encode_rndis(p.RndisQuery(5, p.OID_802_3_PERMANENT_ADDRESS, b"\0" * 6)) == \
        struct.pack("<7I", 4, 34, 5, 0x01010101, 6, 20, 0) + b"\0" * 6
    assert p.encode_rndis(p.RndisQueryComplete(5, 0, b"abcdef")) == struct.pack("<6I", 0x80000004, 30, 5, 0, 6, 16) + b"abcdef"
    assert p.encode_rndis(p.RndisSetComplete(9, 0xC00000BB)) == struct.pack("<4I", 0x80000005, 16, 9, 0xC00000BB)
    # A data packet: 8-byte header + 36-byte rndis_packet; data_offset counts from byte 8.
    message = p.encode_packet(b"F" * 60)
    assert message[:16] == struct.pack("<4I", 1, 104, 36, 60) and message[44:] == b"F" * 60
    assert p.encode_rndis(p.RndisPacket(b"F" * 60)) == message
    assert p.decode_rndis(message) == p.RndisPacket(b"F" * 60)
    assert len(p.encode_rndis(p.RndisInitializeComplete(1, 0))) == 52


def test_transfer_page_header_layout():
    header = p.encode_transfer_pages(0xCAFE, [(1728, 104)])
    assert header == struct.pack("<HBBI", 0xCAFE, 0, 0, 1) + struct.pack("<II", 104, 1728)
    assert p.decode_transfer_pages(header, 4) == (0xCAFE, [(1728, 104)])


def test_page_buffer_header_layout():
    header = p.encode_page_buffers([(100, 4000, [0x12, 0x13]), (8, 0, [0x20])])
    assert header == struct.pack("<IIIIQQIIQ", 0, 2, 100, 4000, 0x12, 0x13, 8, 0, 0x20)
    assert p.decode_page_buffers(header, 4) == [(100, 4000, (0x12, 0x13)), (8, 0, (0x20,))]
    for bad in (header[:-8], struct.pack("<II", 0, 0), struct.pack("<IIIIQ", 0, 1, 0, 0, 1),
                struct.pack("<IIIIQ", 0, 1, 8, 4096, 1)):
        with pytest.raises(NetError):
            p.decode_page_buffers(bad, 4)


NVSP_MESSAGES = st.one_of(
    st.builds(p.Init, st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)),
    st.builds(p.InitComplete, st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), st.integers(0, 7)),
    st.builds(p.SendReceiveBuffer, st.integers(0, 2**32 - 1), st.integers(0, 0xFFFF)),
    st.builds(p.ReceiveBufferComplete, st.integers(0, 7),
              st.lists(st.builds(p.Section, *[st.integers(0, 2**32 - 1)] * 4), max_size=3).map(tuple)),
    st.builds(p.SendBufferComplete, st.integers(0, 7), st.integers(0, 2**32 - 1)),
    st.builds(p.SendRndisPacket, st.integers(0, 1), st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)),
    st.builds(p.RndisPacketComplete, st.integers(0, 7)),
    st.builds(p.SendNdisConfig, st.integers(0, 2**32 - 1), st.just(0), st.integers(0, 2**64 - 1)),
    st.builds(p.RevokeReceiveBuffer, st.sampled_from([p.RECEIVE_BUFFER_ID, 1])),
    st.builds(p.RevokeSendBuffer, st.sampled_from([p.SEND_BUFFER_ID, 1])),
    st.builds(p.SendSendBuffer, st.integers(0x1000, 0x1003), st.integers(0, 0xFFFF)),
    st.builds(p.SendNdisVersion, st.integers(0, 9), st.integers(0, 99)),
)
RNDIS_MESSAGES = st.one_of(
    st.builds(p.RndisInitialize, st.integers(0, 2**32 - 1), st.integers(0, 9), st.integers(0, 9), st.integers(0, 2**32 - 1)),
    st.builds(p.RndisQuery, st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), st.binary(max_size=40)),
    st.builds(p.RndisSet, st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), st.binary(max_size=40)),
    st.builds(p.RndisQueryComplete, st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), st.binary(max_size=40)),
    st.builds(p.RndisPacket, st.binary(min_size=1, max_size=200), st.binary(max_size=24)),
    st.builds(p.RndisIndicateStatus, st.integers(0, 2**32 - 1), st.binary(max_size=16)),
    st.builds(p.RndisKeepalive, st.integers(0, 2**32 - 1)),
    st.builds(p.RndisHalt, st.integers(0, 2**32 - 1)),
)


@settings(max_examples=200, deadline=None)
@given(NVSP_MESSAGES, st.binary(max_size=16))
def test_nvsp_round_trips(message, trailer):
    assert p.decode_nvsp(p.encode_nvsp(message) + trailer) == (message, trailer)


@settings(max_examples=200, deadline=None)
@given(RNDIS_MESSAGES, st.binary(max_size=16))
def test_rndis_round_trips(message, padding):
    assert p.decode_rndis(p.encode_rndis(message) + padding) == message


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=120))
def test_decoders_refuse_garbage_with_net_error_only(blob):
    for decode in (p.decode_nvsp, p.decode_rndis, lambda b: p.decode_transfer_pages(b, 8),
                   lambda b: p.decode_page_buffers(b, 8)):
        try:
            decode(blob)
        except NetError as exc:
            assert exc.reason and isinstance(exc, ValueError)


@settings(max_examples=200, deadline=None)
@given(RNDIS_MESSAGES, st.data())
def test_every_cut_or_stretched_rndis_length_is_refused(message, data):
    encoded = p.encode_rndis(message)
    cut = data.draw(st.integers(0, len(encoded) - 1))
    with pytest.raises(NetError):
        p.decode_rndis(encoded[:cut])                                   # fewer bytes than msg_len says
    stretched = struct.pack("<I", len(encoded) + data.draw(st.integers(1, 64)))
    with pytest.raises(NetError):
        p.decode_rndis(encoded[:4] + stretched + encoded[8:])           # msg_len past the bytes


# -- negotiation and buffers --------------------------------------------------------------------------

def test_bring_up_negotiates_the_newest_version_and_queries_what_a_guest_needs():
    lan = Lan()
    a = lan.adapter()
    vsc, vsp = a.vsc, a.vsp
    assert vsc.state is State.READY and vsc.version == p.NVSP_VERSION_61 == vsp.version
    assert vsc.mac == frames.mac_bytes(a.mac) and vsc.mtu == 1500
    assert vsc.link_up and vsc.link_speed == 10_000_000_000
    assert vsp.packet_filter == p.FILTER_DIRECTED | p.FILTER_BROADCAST | p.FILTER_ALL_MULTICAST
    assert vsp.ndis_version == p.NDIS_VERSION and vsp.guest_mtu == 1514
    assert vsp.rndis is RndisState.INITIALIZED
    size = section_size(1500)
    assert size == 1728
    assert vsp.receive.count == RECV_PAGES * 4096 // size and vsp.send.count == SEND_PAGES * 4096 // size
    assert len(vsc._send_free) == vsp.send.count
    assert vsc.stack.mac == vsc.mac and str(vsc.stack.ip) == "10.0.0.1"
    assert vsp.refusals == vsc.refusals == 0
    assert lan.switch.port("vm1").connected


@pytest.mark.parametrize("host_versions, expected", [
    ((p.NVSP_VERSION_4, p.NVSP_VERSION_2), p.NVSP_VERSION_4),
    ((p.NVSP_VERSION_1,), p.NVSP_VERSION_1),
])
def test_the_guest_walks_down_its_versions(host_versions, expected):
    lan = Lan()
    a = lan.adapter(vsp={"versions": host_versions})
    assert a.vsc.ready and a.vsc.version == a.vsp.version == expected
    assert a.vsp.stats["init_rejected"] == p.VERSIONS.index(expected)
    assert (a.vsp.guest_mtu is None) == (expected < p.NVSP_VERSION_2)   # SEND_NDIS_CONFIG needs NVSP 2


def test_no_common_version_fails_the_guest_cleanly():
    lan = Lan()
    a = lan.adapter(vsp={"versions": (0x00070000,)})
    assert a.vsc.state is State.FAILED and "no NVSP version" in a.vsc.error
    assert a.vsp.version is None


@pytest.mark.parametrize("versions, status", [
    ((1, 1), NvspStatus.PROTOCOL_TOO_OLD),
    ((0x00100000, 0x00200000), NvspStatus.PROTOCOL_TOO_NEW),
    ((0x00050001, 0x00050002), NvspStatus.PROTOCOL_UNSUPPORTED),
])
def test_init_statuses(versions, status):
    lan = Lan()
    a = lan.adapter(up=False)
    replies = []
    a.guest_end.on_signal = lambda: replies.extend(a.guest_end.receive())
    a.guest_sends(p.encode_nvsp(p.Init(*versions)), trans_id=CONTROL_TRANS_ID)
    (reply,) = replies
    assert reply.type == PKT_COMP and reply.trans_id == CONTROL_TRANS_ID
    assert p.decode_nvsp(reply.payload)[0] == p.InitComplete(0, 0, status)


def test_a_refused_gpadl_fails_the_guest_and_everything_before_init_is_refused():
    lan = Lan()
    lan.ctx.grant = False
    a = lan.adapter()
    assert a.vsc.state is State.FAILED and "GPADL" in a.vsc.error
    b = lan.adapter(2, up=False)
    b.guest_sends(p.encode_nvsp(p.SendReceiveBuffer(0x1000, p.RECEIVE_BUFFER_ID)))
    b.guest_sends(inband(p.encode_packet(frame("ff:ff:ff:ff:ff:ff", b.mac))))
    assert b.vsp.refused["nvsp_state"] == 2 and b.vsp.receive is None


def test_the_host_never_answering_times_the_guest_out():
    lan = Lan()
    a = lan.adapter(up=False)
    a.host_end.on_signal = lambda: None                 # the host is deaf
    a.vsc.on_open()
    lan.run(2_000 * MS)
    assert a.vsc.state is State.FAILED and "did not finish" in a.vsc.error


# -- RNDIS and the allow-list ---------------------------------------------------------------------------

def host_answers(adapter):
    """Collect the RNDIS messages the host indicates to the guest (instead of the VSC), completing
    each transfer as a guest must."""
    answers = []

    def on_signal():
        for packet in adapter.guest_end.receive():
            if packet.type == p.PKT_DATA_USING_XFER_PAGES:
                _, ranges = p.decode_transfer_pages(packet.header, 8)
                view = adapter.vsp.receive.view
                for offset, count in ranges:
                    answers.append(p.decode_rndis(bytes(view[offset:offset + count])))
                adapter.guest_end.send(p.encode_nvsp(p.RndisPacketComplete(1)), packet_type=PKT_COMP,
                                       trans_id=packet.trans_id)
            else:
                answers.append(p.decode_nvsp(packet.payload)[0])
    adapter.guest_end.on_signal = lambda: adapter.lan.queue.append(on_signal)
    return answers


def test_queries_answer_the_allowed_oids_and_refuse_the_rest():
    lan = Lan()
    a = lan.adapter()
    answers = host_answers(a)
    for req, oid in enumerate(QUERY_OIDS, start=100):
        a.guest_sends(inband(p.encode_rndis(p.RndisQuery(req, oid))))
    got = {m.req_id: m for m in answers if isinstance(m, p.RndisQueryComplete)}
    assert all(got[100 + i].status == p.RNDIS_STATUS_SUCCESS for i in range(len(QUERY_OIDS)))
    assert got[100 + QUERY_OIDS.index(p.OID_802_3_CURRENT_ADDRESS)].info == frames.mac_bytes(a.mac)
    assert got[100 + QUERY_OIDS.index(p.OID_GEN_MAXIMUM_FRAME_SIZE)].info == struct.pack("<I", 1500)
    supported = got[100 + QUERY_OIDS.index(p.OID_GEN_SUPPORTED_LIST)].info
    assert set(struct.unpack(f"<{len(supported) // 4}I", supported)) == set(QUERY_OIDS)

    answers.clear()
    for req, oid in enumerate((p.OID_SWITCH_NIC_REQUEST, p.OID_TCP_OFFLOAD_PARAMETERS, 0xFFFFFFFF), start=200):
        a.guest_sends(inband(p.encode_rndis(p.RndisQuery(req, oid))))
    a.guest_sends(inband(p.encode_rndis(p.RndisSet(300, p.OID_SWITCH_NIC_REQUEST, b"\xde\xad\xbe\xef" * 8))))
    a.guest_sends(inband(p.encode_rndis(p.RndisSet(301, p.OID_GEN_CURRENT_PACKET_FILTER, struct.pack("<I", 0x8000)))))
    a.guest_sends(inband(p.encode_rndis(p.RndisSet(302, p.OID_GEN_CURRENT_PACKET_FILTER, b"\1\0"))))
    statuses = {m.req_id: m.status for m in answers if hasattr(m, "req_id")}
    assert statuses == {200: p.RNDIS_STATUS_NOT_SUPPORTED, 201: p.RNDIS_STATUS_NOT_SUPPORTED,
                        202: p.RNDIS_STATUS_NOT_SUPPORTED, 300: p.RNDIS_STATUS_NOT_SUPPORTED,
                        301: p.RNDIS_STATUS_NOT_SUPPORTED, 302: p.RNDIS_STATUS_INVALID_LENGTH}
    assert a.vsp.refused["oid"] == 4 and a.vsp.refused["oid_value"] == 2
    assert a.vsp.packet_filter == p.FILTER_DIRECTED | p.FILTER_BROADCAST | p.FILTER_ALL_MULTICAST
    assert SET_OIDS == (p.OID_GEN_CURRENT_PACKET_FILTER,)


@pytest.mark.parametrize("kind", sorted(set(p.RndisType) - GUEST_RNDIS[0] - GUEST_RNDIS[1]) + [0x12345678])
def test_rndis_messages_outside_the_allow_list_are_refused(kind):
    lan = Lan()
    a = lan.adapter()
    answers = host_answers(a)
    for channel in (p.CHANNEL_DATA, p.CHANNEL_CONTROL):
        a.guest_sends(inband(struct.pack("<III", kind, 12, 1), channel))
    assert a.vsp.refused["rndis_type"] == 2
    assert answers == [p.RndisPacketComplete(NvspStatus.INVALID_RNDIS_PKT)] * 2


def test_messages_on_the_wrong_channel_are_refused():
    lan = Lan()
    a = lan.adapter()
    a.guest_sends(inband(p.encode_rndis(p.RndisQuery(1, p.OID_GEN_LINK_SPEED)), p.CHANNEL_DATA))
    a.guest_sends(inband(p.encode_packet(frame("ff:ff:ff:ff:ff:ff", a.mac)), p.CHANNEL_CONTROL))
    a.guest_sends(inband(p.encode_packet(frame("ff:ff:ff:ff:ff:ff", a.mac)), 9))
    assert a.vsp.refused["rndis_type"] == 2 and a.vsp.refused["rndis_channel"] == 1
    assert a.vsp.stats["tx_frames"] == 0


def test_halt_stops_traffic_and_queries_need_initialize():
    lan = Lan()
    a = lan.adapter()
    port, received = raw_port(lan)
    answers = host_answers(a)
    a.guest_sends(inband(p.encode_rndis(p.RndisHalt(1))))
    assert a.vsp.rndis is RndisState.HALTED and a.vsp.packet_filter == 0
    port.send(frame(a.mac, "00:15:5d:00:00:fe"))                     # nothing reaches a halted adapter
    a.guest_sends(inband(p.encode_packet(frame("00:15:5d:00:00:fe", a.mac))))   # nor leaves it
    a.guest_sends(inband(p.encode_rndis(p.RndisQuery(9, p.OID_GEN_LINK_SPEED))))
    assert a.vsp.stats["rx_not_ready"] == 1 and received == []
    assert [m for m in answers if hasattr(m, "req_id")] == [p.RndisQueryComplete(9, p.RNDIS_STATUS_FAILURE)]
    assert a.vsp.refused["rndis_state"] == 2


# -- data -----------------------------------------------------------------------------------------------

def test_frames_flow_both_ways_through_the_switch():
    lan = Lan()
    a, b = lan.adapter(1), lan.adapter(2)
    ping = a.vsc.stack.ping("10.0.0.2", count=3, interval_ns=MS)
    lan.run(10 * MS)
    assert ping.received == 3
    sock_b = b.vsc.stack.udp_socket(5000)
    sock_a = a.vsc.stack.udp_socket(5001)
    for i in range(100):
        sock_a.sendto(bytes([i]) * 1000, ("10.0.0.2", 5000))
    lan.run(MS)
    got = [sock_b.recv() for _ in range(100)]
    assert got == [bytes([i]) * 1000 for i in range(100)]
    # Every section came back: nothing in flight once the traffic stopped.
    for x in (a, b):
        assert x.vsp._sections.free_count() == x.vsp.receive.count and not x.vsp._sections.in_flight()
        assert len(x.vsc._send_free) == x.vsp.send.count and not x.vsc._outstanding
    # a sent an ARP request, 3 echo requests and 100 datagrams (b learnt a's address from its request).
    assert a.vsp.stats["tx_frames"] == a.vsc.stats["tx_frames"] == 104
    assert lan.switch.port("vm2").stats.tx_frames == b.vsp.stats["rx_frames"] == 104


def test_sends_fall_back_in_band_when_the_send_sections_run_out():
    lan = Lan()
    a = lan.adapter()
    port, received = raw_port(lan)
    sections = a.vsp.send.count
    # Everything is sent before any completion can come back (signals wait in the lan's queue).
    sent = [frame("00:15:5d:00:00:fe", a.mac, bytes([i]) * 1000) for i in range(sections + 20)]
    assert all(a.vsc.transmit(f) for f in sent)
    assert not a.vsc._send_free
    inband_ids = [t for t, section in a.vsc._outstanding.items() if section is None]
    assert len(inband_ids) == 20
    lan.settle()
    assert received == sent
    assert len(a.vsc._send_free) == sections


def test_a_full_ring_queues_frames_and_drains_them_in_order():
    lan = Lan()
    a = lan.adapter(vsc={"tx_queue": 10_000})
    port, received = raw_port(lan)
    sent = [frame("00:15:5d:00:00:fe", a.mac, struct.pack("<I", i) * 375) for i in range(400)]
    assert all(a.vsc.transmit(f) for f in sent)
    assert len(a.vsc._backlog) > 0                        # the ring filled
    lan.settle()
    assert received == sent and not a.vsc._backlog


def test_the_tx_queue_is_bounded():
    lan = Lan()
    a = lan.adapter(vsc={"tx_queue": 5})
    sent = [a.vsc.transmit(frame("00:15:5d:00:00:fe", a.mac, b"x" * 1400)) for _ in range(300)]
    assert sent.count(False) == a.vsc.stats["tx_dropped"] > 0
    assert len(a.vsc._backlog) == 5


def test_the_packet_filter_decides_what_the_guest_sees():
    lan = Lan()
    a = lan.adapter()
    port, _ = raw_port(lan)
    for dst in (a.mac, "ff:ff:ff:ff:ff:ff", "01:00:5e:00:00:01", "00:15:5d:00:00:77"):
        port.send(frame(dst, "00:15:5d:00:00:fe"))
    lan.settle()
    assert a.vsc.stats["rx_frames"] == 3                  # directed, broadcast, all-multicast
    assert a.vsp.stats["rx_filtered"] == 1                # unicast to another MAC, flooded by the switch


def test_no_free_receive_section_refuses_the_frame_at_the_switch():
    lan = Lan()
    a = lan.adapter()
    a.guest_end.on_signal = lambda: None                  # the guest stops reading its ring
    port, _ = raw_port(lan)
    for i in range(a.vsp.receive.count + 30):
        port.send(frame(a.mac, "00:15:5d:00:00:fe", b"%d" % i))
    stats = lan.switch.port("vm1").stats
    delivered = stats.tx_frames
    assert 0 < delivered <= a.vsp.receive.count
    assert stats.dropped_refused == a.vsp.receive.count + 30 - delivered
    assert a.vsp.stats["rx_no_buffer"] + a.vsp.stats["rx_ring_full"] == stats.dropped_refused


def test_replies_that_find_the_ring_full_wait_and_are_retried():
    lan = Lan()
    a = lan.adapter()
    a.guest_end.on_signal = lambda: None                  # the guest does not read for a while
    port, received = raw_port(lan)
    payload = inband(p.encode_packet(frame("00:15:5d:00:00:fe", a.mac, b"z" * 100)))
    n = 1800                                              # more completions (64 ring bytes each) than
    for i in range(n):                                    # its ring holds, fewer than ring + backlog
        a.guest_sends(payload, trans_id=i + 1)
    assert len(received) == n and len(a.vsp._replies) > 0
    completed = []
    while len(completed) < n:
        batch = [pk.trans_id for pk in a.guest_end.receive() if pk.type == PKT_COMP]
        assert batch, "the VSP stopped retrying"
        completed += batch
        lan.run(MS)                                       # the VSP's retry timer
    assert completed == list(range(1, n + 1))             # every one, once, in order
    assert not a.vsp._replies


def test_close_disconnects_the_port_and_fails_nothing_later():
    lan = Lan()
    a = lan.adapter()
    a.vsp.on_close()
    a.vsc.on_close()
    assert not lan.switch._ports.get("vm1")
    assert not a.vsc.transmit(frame("ff:ff:ff:ff:ff:ff", a.mac))
    lan.run(10 * MS)


# -- a hostile guest ---------------------------------------------------------------------------------

def test_bad_rndis_lengths_and_send_sections_are_refused_and_counted():
    lan = Lan()
    a = lan.adapter()
    port, received = raw_port(lan)
    answers = host_answers(a)
    good = p.encode_packet(frame("00:15:5d:00:00:fe", a.mac))
    send = a.vsp.send
    cases = {
        "rndis_length": [
            inband(good[:4] + struct.pack("<I", len(good) + 8) + good[8:]),        # msg_len past the bytes
            inband(good[:4] + struct.pack("<I", 7) + good[8:]),                    # msg_len inside the header
            inband(good[:12] + struct.pack("<I", 1 << 31) + good[16:]),            # data_len past msg_len
            inband(good[:8] + struct.pack("<I", 4) + good[12:]),                   # data inside the header
            inband(good[:8] + struct.pack("<II", 36, 0) + good[16:]),              # no data
            inband(good[:28] + struct.pack("<II", 36, 1 << 30) + good[36:]),       # per-packet info outside
            inband(good[:40]),                                                     # truncated
        ],
        "section_index": [p.encode_nvsp(p.SendRndisPacket(0, send.count, 64)),
                          p.encode_nvsp(p.SendRndisPacket(0, 0xFFFFFFFE, 64))],
        "section_size": [p.encode_nvsp(p.SendRndisPacket(0, 0, send.size + 1)),
                         p.encode_nvsp(p.SendRndisPacket(0, 0, 0))],
        "nvsp_length": [struct.pack("<I", 107), b"\x01\x00"],
        "nvsp_type": [struct.pack("<I", 99), p.encode_nvsp(p.InitComplete(1, 1, 1)),
                      p.encode_nvsp(p.RndisPacketComplete(1))],
        "frame_length": [inband(p.encode_packet(b"\0" * 1600))],
    }
    for reason, payloads in cases.items():
        for payload in payloads:
            a.guest_sends(payload)
        assert a.vsp.refused[reason] == len(payloads), (reason, dict(a.vsp.refused))
    assert received == [] and a.vsp.stats["tx_frames"] == 0
    statuses = [m.status for m in answers if isinstance(m, p.RndisPacketComplete)]
    assert statuses.count(NvspStatus.INVALID_RNDIS_PKT) == 8 and statuses.count(NvspStatus.FAIL) == 4
    # A data message in a valid send section goes through.
    a.vsp.send.view[0:len(good)] = good
    a.guest_sends(p.encode_nvsp(p.SendRndisPacket(0, 0, len(good))))
    assert len(received) == 1


def test_unknown_and_repeated_completions_and_foreign_packet_types_are_refused():
    lan = Lan()
    a = lan.adapter()
    port, _ = raw_port(lan)
    a.guest_end.on_signal = lambda: None
    port.send(frame(a.mac, "00:15:5d:00:00:fe"))
    (transfer,) = [pk for pk in a.guest_end.receive() if pk.type == p.PKT_DATA_USING_XFER_PAGES]
    done = p.encode_nvsp(p.RndisPacketComplete(1))
    free = a.vsp._sections.free_count()
    a.guest_sends(done, PKT_COMP, trans_id=transfer.trans_id)
    a.guest_sends(done, PKT_COMP, trans_id=transfer.trans_id)           # a second time
    a.guest_sends(done, PKT_COMP, trans_id=0xFFFF_FFFF_FFFF_0000)       # a pointer-like id
    a.guest_sends(p.encode_nvsp(p.Init(2, 2)), PKT_COMP, trans_id=7)    # not a completion message
    for kind in (1, 2, 5, 7, 0xD, 0x3FF):
        a.guest_sends(b"\0" * 24, kind)
    assert a.vsp._sections.free_count() == free + 1
    assert a.vsp.refused["completion"] == 3 and a.vsp.refused["packet_type"] == 6


def test_a_second_buffer_or_a_missing_gpadl_is_refused():
    lan = Lan()
    a = lan.adapter()
    answers = host_answers(a)
    a.guest_sends(p.encode_nvsp(p.SendReceiveBuffer(a.vsp.receive.gpadl_id, 1)))
    a.guest_sends(p.encode_nvsp(p.SendSendBuffer(0xDEAD, 0)))
    b = lan.adapter(2, up=False)
    answers_b = host_answers(b)
    b.guest_sends(p.encode_nvsp(p.Init(p.NVSP_VERSION_61, p.NVSP_VERSION_61)))
    b.guest_sends(p.encode_nvsp(p.SendReceiveBuffer(0xDEAD, 1)))
    assert a.vsp.refused["buffer_state"] == 2 and b.vsp.refused["gpadl"] == 1
    assert answers == [p.ReceiveBufferComplete(NvspStatus.FAIL), p.SendBufferComplete(NvspStatus.FAIL, 0)]
    assert answers_b[-1] == p.ReceiveBufferComplete(NvspStatus.FAIL)


GUEST_PACKETS = st.tuples(
    st.sampled_from([PKT_DATA_INBAND, PKT_DATA_INBAND, PKT_COMP, 7, 9]),
    st.one_of(
        st.binary(max_size=64),
        NVSP_MESSAGES.map(p.encode_nvsp),
        st.tuples(st.integers(0, 2), RNDIS_MESSAGES).map(lambda t: inband(p.encode_rndis(t[1]), t[0])),
        st.tuples(st.integers(0, 40), st.integers(0, 3000)).map(
            lambda t: p.encode_nvsp(p.SendRndisPacket(0, t[0], t[1]))),
    ),
    st.integers(0, 2**64 - 1),
)


@settings(max_examples=60, deadline=None)
@given(st.lists(GUEST_PACKETS, max_size=25), st.lists(st.binary(min_size=2, max_size=100), max_size=5))
def test_a_hostile_guest_never_raises_and_never_breaks_the_bookkeeping(packets, inbound):
    lan = Lan()
    a = lan.adapter()
    port, received = raw_port(lan)
    b, c = lan.adapter(2), lan.adapter(3)
    for kind, payload, trans_id in packets:
        a.guest_sends(payload, kind, trans_id=trans_id)
        for blob in inbound:
            port.send(frames.mac_bytes(a.mac) + frames.mac_bytes("00:15:5d:00:00:fe") + blob)
        lan.settle()
        vsp = a.vsp
        if vsp.receive is not None:
            sections = vsp._sections.free_list() + list(vsp._sections.in_flight().values())
            assert sorted(sections) == list(range(vsp.receive.count))   # each section exactly once
        assert vsp.refusals == sum(vsp.refused.values())
    # The other adapters on the switch are untouched and still work.
    assert b.vsp.refusals == b.vsc.refusals == c.vsp.refusals == c.vsc.refusals == 0
    ping = b.vsc.stack.ping("10.0.0.3")
    lan.run(MS)
    assert ping.received == 1


# -- a hostile host -------------------------------------------------------------------------------------

class Xfer(NamedTuple):
    """A transfer-page packet for host_sends: the range list before offset8, then the NVSP message."""
    header: bytes
    message: bytes


def xfer(offset, count, pageset=p.RECEIVE_BUFFER_ID, message=None, ranges=None):
    message = p.encode_nvsp(p.SendRndisPacket(0)) if message is None else message
    return Xfer(p.encode_transfer_pages(pageset, ranges if ranges is not None else [(offset, count)]), message)


def test_transfer_pages_outside_the_receive_buffer_are_refused_and_still_completed():
    lan = Lan()
    a = lan.adapter()
    size = len(a.vsc._recv_view)
    real = p.encode_packet(frame(a.mac, "00:15:5d:00:00:fe"))
    a.vsp.receive.view[0:len(real)] = real
    before = a.vsp.refused["completion"]
    cases = {
        "xfer_range": [xfer(size - 8, 16), xfer(size, 8), xfer(0, 4), xfer(2**32 - 8, 16),
                       xfer(0, 0, ranges=[]), xfer(0, 0, ranges=[(0, 104)] * 65),
                       xfer(0, 0, ranges=[(0, len(real)), (size - 4, 8)])],
        "xfer_pageset": [xfer(0, len(real), pageset=0xBEEF)],
        # Ranges that offset8 does not cover (Linux: offset8 * 8 < 24 + 8 * range_count), or none at all.
        "xfer_length": [Xfer(struct.pack("<HBBI", 0xCAFE, 0, 0, 3) + b"\0" * 8, p.encode_nvsp(p.SendRndisPacket(0))),
                        Xfer(struct.pack("<HBBI", 0xCAFE, 0, 0, 64), p.encode_nvsp(p.SendRndisPacket(0))),
                        p.encode_transfer_pages(0xCAFE, [(0, 104)]) + p.encode_nvsp(p.SendRndisPacket(0))],
        "nvsp_type": [xfer(0, len(real), message=p.encode_nvsp(p.SendNdisVersion(6, 30)))],
    }
    for reason, payloads in cases.items():
        for payload in payloads:
            a.host_sends(payload)
        assert a.vsc.refused[reason] == len(payloads), (reason, dict(a.vsc.refused))
    assert a.vsc.stats["rx_frames"] == 0                # the good range beside a bad one was not used either
    # Each was completed (the host owns those sections until then): the VSP saw the unknown ids.
    assert a.vsp.refused["completion"] - before == sum(map(len, cases.values()))
    a.host_sends(xfer(0, len(real)))
    assert a.vsc.stats["rx_frames"] == 1


def test_bad_rndis_from_the_host_and_stray_completions_are_refused():
    lan = Lan()
    a = lan.adapter()
    view = a.vsp.receive.view
    bad = p.encode_packet(b"F" * 60)
    bad = bad[:12] + struct.pack("<I", 5000) + bad[16:]          # data_len past the message
    view[0:len(bad)] = bad
    a.host_sends(xfer(0, len(bad)))
    view[0:16] = p.encode_rndis(p.RndisSetComplete(12345, 0))     # an answer to nothing
    a.host_sends(xfer(0, 16))
    query = p.encode_rndis(p.RndisQuery(1, p.OID_GEN_LINK_SPEED))  # a request, host to guest
    view[0:len(query)] = query
    a.host_sends(xfer(0, len(query)))
    a.host_sends(p.encode_nvsp(p.RndisPacketComplete(1)), PKT_COMP, trans_id=424242)
    a.host_sends(p.encode_nvsp(p.InitComplete(1, 0, 1)), PKT_COMP, trans_id=CONTROL_TRANS_ID)
    a.host_sends(b"\0" * 16, PKT_DATA_INBAND)
    assert dict(a.vsc.refused) == {"rndis_length": 1, "rndis_unexpected": 1, "rndis_type": 1,
                                   "completion": 2, "packet_type": 1}
    assert a.vsc.ready
    status = p.encode_rndis(p.RndisIndicateStatus(p.RNDIS_STATUS_MEDIA_DISCONNECT))
    view[0:len(status)] = status
    a.host_sends(xfer(0, len(status)))
    assert not a.vsc.link_up


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([7, 7, PKT_COMP, PKT_DATA_INBAND, 1]), st.binary(max_size=80),
                          st.integers(0, 2**64 - 1)), max_size=20),
       st.binary(max_size=200))
def test_a_hostile_host_never_raises_out_of_the_guest(packets, buffer_bytes):
    lan = Lan()
    a = lan.adapter()
    a.vsp.receive.view[0:len(buffer_bytes)] = buffer_bytes
    for kind, payload, trans_id in packets:
        a.host_end.send(payload, packet_type=kind, trans_id=trans_id)
        lan.settle()
    assert a.vsc.ready
    assert a.vsc.refusals == sum(a.vsc.refused.values())


def test_a_vsp_without_a_switch_or_with_a_bad_mac_refuses_to_start():
    lan = Lan()
    host_end, _ = connected_pair(4)
    no_switch = NetVsp(host_end, {"mac": "00:15:5d:00:00:01"}, lan.ctx)
    no_switch.on_open()
    assert no_switch.error and no_switch.port is None
    bad = NetVsp(host_end, {"switch": lan.switch, "mac": "ff:ff:ff:ff:ff:ff"}, lan.ctx)
    bad.on_open()
    assert bad.error and bad.port is None and lan.switch.ports == ()
    bad.on_packets([Packet(PKT_DATA_INBAND, 0, 1, p.encode_nvsp(p.Init(2, 2)), 2, 4)])
    assert bad.refused["unusable"] == 1 and bad.version is None   # a guest of it times out


@pytest.mark.parametrize("config", [{}, {"relid": 1, "buffer_pages": range(10)}, {"relid": 1, "tx_queue": "x"},
                                    {"relid": 1, "buffer_pages": range(96), "versions": []}])
def test_a_vsc_with_a_bad_config_fails_without_raising(config):
    lan = Lan()
    _, guest_end = connected_pair(4)
    vsc = NetVsc(guest_end, config, lan.ctx)
    vsc.on_open()
    assert vsc.state is State.FAILED and "configuration" in vsc.error
    assert guest_end.outgoing.available_bytes == 0          # it sent nothing
