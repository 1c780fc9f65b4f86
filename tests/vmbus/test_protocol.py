"""VMBus channel-management messages: the table against reference/hyperv-abi.md §3, byte-exact
encodings written out by hand, round trips, hostile bytes (only ProtocolError escapes), and GPADL
range splitting and reassembly."""
from __future__ import annotations

import dataclasses
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmbus import protocol as p
from vmbus.protocol import (
    GpadlAssembler,
    GpadlBody,
    GpadlError,
    GpadlHeader,
    GpaRange,
    ProtocolError,
    decode,
    split_gpadl,
)

STORVSC = uuid.UUID("ba6163d9-04a1-4d29-b605-72e2ffb1dc7f")
INSTANCE = uuid.UUID("00112233-4455-6677-8899-aabbccddeeff")


def h(text: str) -> bytes:
    """Hex with spaces and line breaks for readability."""
    return bytes.fromhex("".join(text.split()))


# -- the table -----------------------------------------------------------------------------------

EXPECTED = {  # id: (name, direction, fixed size) from the reference
    1: ("OfferChannel", p.H2G, 196),
    2: ("RescindChannelOffer", p.H2G, 12),
    3: ("RequestOffers", p.G2H, 8),
    4: ("AllOffersDelivered", p.H2G, 8),
    5: ("OpenChannel", p.G2H, 148),
    6: ("OpenResult", p.H2G, 20),
    7: ("CloseChannel", p.G2H, 12),
    8: ("GpadlHeader", p.G2H, 20),
    9: ("GpadlBody", p.G2H, 16),
    10: ("GpadlCreated", p.H2G, 20),
    11: ("GpadlTeardown", p.G2H, 16),
    12: ("GpadlTorndown", p.H2G, 12),
    13: ("RelidReleased", p.G2H, 12),
    14: ("InitiateContact", p.G2H, 40),
    15: ("VersionResponse", p.H2G, 16),
    16: ("Unload", p.G2H, 8),
    17: ("UnloadResponse", p.H2G, 8),
    22: ("ModifyChannel", p.G2H, 16),
    24: ("ModifyChannelResponse", p.H2G, 16),
}


def test_table_matches_the_reference():
    assert {s.id: (s.name, s.direction, s.size) for s in p.MESSAGES} == EXPECTED
    assert p.OfferChannel.spec.min_version == p.VERSION_WS2008
    assert p.UnloadResponse.spec.min_version == p.VERSION_WIN7
    assert p.InitiateContact.spec.min_version == p.VersionResponse.spec.min_version == 0


def test_versions_and_transport_constants():
    assert [hex(v) for v in p.SUPPORTED_VERSIONS] == [
        "0x50003", "0x50002", "0x50001", "0x50000", "0x40001", "0x40000", "0x30000", "0x20004"]
    assert (p.VERSION_WS2008, p.VERSION_WIN7) == (0xD, 0x10001)
    assert p.message_connection_id(p.VERSION_WIN10_V5) == 4
    assert p.message_connection_id(p.VERSION_WIN10_V4_1) == 1
    assert (p.VMBUS_MESSAGE_SINT, p.VMBUS_MESSAGE_TYPE, p.MAX_MESSAGE_SIZE) == (2, 1, 240)
    assert (p.GPADL_HEADER_MAX_WORDS - 1, p.GPADL_BODY_MAX_WORDS) == (26, 28)  # PFNs


# -- byte-exact encodings ------------------------------------------------------------------------


def test_offer_channel_bytes():
    msg = p.OfferChannel(STORVSC, INSTANCE, child_relid=5, flags=0x0004, mmio_megabytes=2,
                         user_def=b"\x04", sub_channel_index=1, monitor_id=9,
                         monitor_allocated=True, is_dedicated_interrupt=True,
                         connection_id=0x2005)
    expected = (
        h("01000000 00000000")  # type 1, padding
        + h("d96361ba a104 294d b605 72e2ffb1dc7f")  # class GUID, mixed-endian
        + h("33221100 5544 7766 8899 aabbccddeeff")  # instance GUID
        + bytes(16)  # reserved @40
        + h("0400 0200")  # flags @56, mmio MiB @58
        + b"\x04" + bytes(119)  # user_def @60
        + h("0100 0000")  # sub_channel_index @180, reserved @182
        + h("05000000 09 01 0100 05200000")  # relid, monitor id, allocated, dedicated, conn id
    )
    assert len(expected) == 196
    assert msg.encode() == expected
    assert decode(expected) == msg


def test_open_channel_bytes():
    msg = p.OpenChannel(child_relid=3, open_id=3, ring_gpadl_id=0xE1E10, target_vp=1,
                        downstream_page_offset=16, user_data=b"ud")
    expected = (
        h("05000000 00000000 03000000 03000000 101e0e00 01000000 10000000")
        + b"ud" + bytes(118)
    )
    assert len(expected) == 148
    assert msg.encode() == expected


def test_initiate_contact_bytes_before_and_from_5_0():
    win8 = p.InitiateContact.for_version(p.VERSION_WIN8, 0, interrupt_page=0x12345000,
                                         monitor_page1=0x1000, monitor_page2=0x2000)
    assert win8.encode() == h(
        "0e000000 00000000 04000200 00000000 00503412 00000000"
        "00100000 00000000 00200000 00000000")
    v53 = p.InitiateContact.for_version(p.VERSION_WIN10_V5_3, 1)
    assert v53.encode() == h(
        "0e000000 00000000 03000500 01000000 02 00 0000 00000000" + "00" * 16)
    assert (v53.msg_sint, v53.msg_vtl, v53.feature_flags) == (2, 0, 0)
    assert win8.msg_sint == p.VMBUS_MESSAGE_SINT  # before 5.0 the field is the interrupt page


def test_version_response_and_small_messages_bytes():
    assert p.VersionResponse(True, msg_conn_id=1).encode() == h("0f000000 00000000 01 00 0000 01000000")
    assert p.VersionResponse(False, p.ConnectionState.FAILED_UNKNOWN_FAILURE).encode() == h(
        "0f000000 00000000 00 02 0000 00000000")
    assert p.RequestOffers().encode() == h("03000000 00000000")
    assert p.AllOffersDelivered().encode() == h("04000000 00000000")
    assert p.Unload().encode() == h("10000000 00000000")
    assert p.UnloadResponse().encode() == h("11000000 00000000")
    assert p.RescindChannelOffer(7).encode() == h("02000000 00000000 07000000")
    assert p.CloseChannel(7).encode() == h("07000000 00000000 07000000")
    assert p.RelidReleased(7).encode() == h("0d000000 00000000 07000000")
    assert p.OpenResult(7, 7, 0xC0000001).encode() == h("06000000 00000000 07000000 07000000 010000c0")
    assert p.GpadlCreated(7, 0xE1E10, 0).encode() == h("0a000000 00000000 07000000 101e0e00 00000000")
    assert p.GpadlTeardown(7, 0xE1E10).encode() == h("0b000000 00000000 07000000 101e0e00")
    assert p.GpadlTorndown(0xE1E10).encode() == h("0c000000 00000000 101e0e00")


def test_gpadl_header_and_body_bytes():
    header = GpadlHeader(1, 0xE1E10, range_buflen=24, rangecount=1,
                         data=GpaRange(0x2000, 0, (0x64, 0x65)).words())
    assert header.encode() == h(
        "08000000 00000000 01000000 101e0e00 1800 0100"
        "00200000 00000000"  # byte_count 0x2000, byte_offset 0
        "64000000 00000000 65000000 00000000")
    assert GpadlBody(2, 0xE1E10, (0x66,)).encode() == h(
        "09000000 00000000 02000000 101e0e00 66000000 00000000")


def test_guid_is_microsoft_mixed_endian():
    raw = p.OfferChannel(STORVSC, INSTANCE, 1).encode()
    assert raw[8:24] == STORVSC.bytes_le != STORVSC.bytes
    assert raw[8:12] == bytes.fromhex("d96361ba")


# -- decoding hostile bytes ----------------------------------------------------------------------


@pytest.mark.parametrize("raw,why", [
    (b"", "shorter than the header"),
    (h("01000000 000000"), "shorter than the header"),
    (h("00000000 00000000"), "unknown message type 0"),
    (h("12000000 00000000") + bytes(40), "unknown message type 18"),
    (h("ffffffff 00000000"), "unknown message type"),
    (h("01000000 00000000") + bytes(100), "OfferChannel: 108 bytes, needs 196"),
    (h("05000000 00000000") + bytes(139), "OpenChannel: 147 bytes"),
    (h("0e000000 00000000") + bytes(31), "InitiateContact: 39 bytes"),
    (h("0f000000 00000000 01 00 0000"), "VersionResponse: 12 bytes"),
    (h("02000000 00000000 0000"), "RescindChannelOffer: 10 bytes"),
    (h("03000000 00000000") + bytes(233), "exceeds the 240-byte payload"),
    (h("02000000 00000000 00000000"), "child_relid = 0"),
    (h("07000000 00000000 00080000"), "child_relid = 2048"),
    (h("0d000000 00000000 ffffffff"), "child_relid = 4294967295"),
    (h("0f000000 00000000 01 03 0000 00000000"), "connection_state 3"),
    (h("0e000000 00000000 00000500 00000000 10") + bytes(23), "msg_sint 16"),
])
def test_decode_rejects(raw, why):
    with pytest.raises(ProtocolError, match=why):
        decode(raw)


def test_decode_rejects_out_of_range_monitor_id_only_when_allocated():
    raw = bytearray(p.OfferChannel(STORVSC, INSTANCE, 1).encode())
    raw[188] = 200
    assert decode(bytes(raw)).monitor_id == 200  # not allocated: the id means nothing
    raw[189] = 1
    with pytest.raises(ProtocolError, match="monitor id 200"):
        decode(bytes(raw))


def test_decode_ignores_reserved_bytes_and_reads_only_the_bytes_given():
    raw = bytearray(p.OfferChannel(STORVSC, INSTANCE, 4, monitor_allocated=True).encode())
    raw[4:8] = b"\xff" * 4  # header padding
    raw[40:56] = b"\xee" * 16  # reserved
    raw[189] |= 0xFE  # reserved bits of the monitor_allocated bitfield
    msg = decode(bytes(raw))
    assert msg == p.OfferChannel(STORVSC, INSTANCE, 4, monitor_allocated=True)
    big = bytearray(raw) + b"\x01" * 44  # bytes after the message must not be looked at
    assert decode(memoryview(big)[: len(raw)]) == msg


def test_gpadl_tail_is_whole_words_and_bounded():
    base = GpadlHeader(1, 2, 16, 1).encode()
    assert decode(base + bytes(12)).data == (0,)  # a partial trailing word is padding
    with pytest.raises(ProtocolError, match="27"):
        GpadlHeader(1, 2, 8 * 28, 1, data=[1] * 28)
    with pytest.raises(ProtocolError, match="28"):
        GpadlBody(0, 2, [1] * 29)
    assert len(GpadlBody(0, 2, [1] * 28).encode()) == 240


def test_encode_refuses_values_that_do_not_fit():
    with pytest.raises(ProtocolError):
        p.OpenResult(1, 1 << 32, 0)
    with pytest.raises(ProtocolError):
        p.OfferChannel(STORVSC, INSTANCE, 1, user_def=bytes(121))
    with pytest.raises(ProtocolError):
        p.OfferChannel("not a uuid", INSTANCE, 1)
    with pytest.raises(ProtocolError):
        p.InitiateContact.for_version(p.VERSION_WIN10_V5, msg_sint=16)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=260))
def test_decode_of_arbitrary_bytes_raises_only_protocol_error(raw):
    try:
        msg = decode(raw)
    except ProtocolError:
        return
    assert len(msg.encode()) <= len(raw)  # reserved bytes and partial words are dropped
    assert decode(msg.encode()) == msg


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(sorted(EXPECTED)), st.binary(max_size=240))
def test_decode_of_arbitrary_bodies_of_known_types(msgtype, body):
    raw = (msgtype.to_bytes(4, "little") + bytes(4) + body)[:240]
    try:
        msg = decode(raw)
    except ProtocolError:
        return
    assert msg.spec.id == msgtype
    assert decode(msg.encode()) == msg


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(sorted(EXPECTED)), st.binary(max_size=240))
def test_decode_makes_what_the_constructor_makes(msgtype, body):
    """decode builds a message without its constructor's checks (the wire's values pass them):
    the constructor, given the decoded fields, must accept them and make an equal message whose
    fields are of the same types."""
    raw = (msgtype.to_bytes(4, "little") + bytes(4) + body)[:240]
    try:
        msg = decode(raw)
    except ProtocolError:
        return
    values = {f.name: getattr(msg, f.name) for f in dataclasses.fields(msg)}
    made = type(msg)(**values)
    assert made == msg and made.encode() == msg.encode()
    assert [type(v) for v in values.values()] == [type(getattr(made, n)) for n in values]


# -- round trips ---------------------------------------------------------------------------------

u32 = st.integers(0, 2**32 - 1)
u16 = st.integers(0, 2**16 - 1)
u64 = st.integers(0, 2**64 - 1)
relid = st.integers(1, p.MAX_RELID)
guid = st.uuids()
words = lambda n: st.lists(u64, max_size=n)

messages = st.one_of(
    st.builds(p.OfferChannel, guid, guid, relid, flags=u16, mmio_megabytes=u16,
              user_def=st.binary(max_size=120), sub_channel_index=u16,
              monitor_id=st.integers(0, 127), monitor_allocated=st.booleans(),
              is_dedicated_interrupt=st.booleans(), connection_id=u32),
    st.builds(p.RescindChannelOffer, relid),
    st.builds(p.RequestOffers), st.builds(p.AllOffersDelivered),
    st.builds(p.OpenChannel, relid, u32, u32, u32, u32, st.binary(max_size=120)),
    st.builds(p.OpenResult, relid, u32, u32),
    st.builds(p.CloseChannel, relid),
    st.builds(p.GpadlHeader, relid, u32, u16, u16, words(27)),
    st.builds(p.GpadlBody, u32, u32, words(28)),
    st.builds(p.GpadlCreated, relid, u32, u32),
    st.builds(p.GpadlTeardown, relid, u32),
    st.builds(p.GpadlTorndown, u32),
    st.builds(p.RelidReleased, relid),
    st.builds(p.InitiateContact, st.integers(0, p.VERSION_WIN10_V4_1), u32, u64, u64, u64),
    st.builds(lambda v, vp, sint, m1, m2: p.InitiateContact.for_version(
        v, vp, msg_sint=sint, monitor_page1=m1, monitor_page2=m2),
        st.sampled_from(p.SUPPORTED_VERSIONS), u32, st.integers(0, 15), u64, u64),
    st.builds(p.VersionResponse, st.booleans(), st.integers(0, 2), u32),
    st.builds(p.Unload), st.builds(p.UnloadResponse),
)


@settings(max_examples=500, deadline=None)
@given(messages)
def test_round_trip(msg):
    raw = msg.encode()
    assert msg.spec.size <= len(raw) <= p.MAX_MESSAGE_SIZE
    assert raw[:4] == msg.spec.id.to_bytes(4, "little")
    assert decode(raw) == msg
    assert type(msg).decode(raw) == msg


def test_typed_decode_checks_the_type():
    with pytest.raises(ProtocolError, match="expected OpenResult"):
        p.OpenResult.decode(p.Unload().encode())


# -- GPADL ranges --------------------------------------------------------------------------------


@pytest.mark.parametrize("offset,count,pages", [
    (0, 1, 1), (0, 4096, 1), (0, 4097, 2), (4095, 1, 1), (4095, 2, 2), (100, 8192, 3)])
def test_page_count(offset, count, pages):
    assert p.page_count(offset, count) == pages


@pytest.mark.parametrize("kw,why", [
    (dict(byte_count=0, byte_offset=0, pfns=()), "byte_count"),
    (dict(byte_count=1, byte_offset=4096, pfns=(1, 2)), "byte_offset"),
    (dict(byte_count=4097, byte_offset=0, pfns=(1,)), "needs 2 PFNs, has 1"),
    (dict(byte_count=10, byte_offset=0, pfns=(1, 2)), "needs 1 PFNs, has 2"),
    (dict(byte_count=10, byte_offset=0, pfns=(1 << 40,)), "PFN"),
])
def test_gpa_range_validation(kw, why):
    with pytest.raises(GpadlError, match=why):
        GpaRange(**kw)


@pytest.mark.parametrize("pfns,bodies", [(1, 0), (26, 0), (27, 1), (54, 1), (55, 2), (400, 14)])
def test_split_gpadl_message_counts(pfns, bodies):
    msgs = split_gpadl(1, 7, [GpaRange.whole_pages(range(pfns))])
    assert isinstance(msgs[0], GpadlHeader) and len(msgs) == 1 + bodies
    assert msgs[0].range_buflen == 8 * (1 + pfns) and msgs[0].rangecount == 1
    assert all(isinstance(m, GpadlBody) and m.gpadl_id == 7 for m in msgs[1:])
    assert all(len(m.encode()) <= 240 for m in msgs)
    assert [w for m in msgs for w in m.data] == [pfns * 4096, *range(pfns)]


def test_split_gpadl_refuses_empty_and_oversized():
    with pytest.raises(GpadlError):
        split_gpadl(1, 7, [])
    with pytest.raises(GpadlError, match="u16"):
        split_gpadl(1, 7, [GpaRange.whole_pages(range(8191))])
    assert len(split_gpadl(1, 7, [GpaRange.whole_pages(range(8190))])) == 1 + 292


def assemble(msgs) -> tuple[GpaRange, ...]:
    asm = GpadlAssembler(msgs[0])
    for body in msgs[1:]:
        asm.add(body)
    return asm.ranges()


ranges_st = st.lists(
    st.builds(lambda off, count, base: GpaRange(count, off, range(base, base + p.page_count(off, count))),
              st.integers(0, 4095), st.integers(1, 70 * 4096), st.integers(0, p.MAX_PFN - 80)),
    min_size=1, max_size=5)


@settings(max_examples=200, deadline=None)
@given(ranges_st)
def test_split_then_assemble_gives_the_ranges_back(ranges):
    msgs = split_gpadl(3, 9, ranges)
    assert assemble([decode(m.encode()) for m in msgs]) == tuple(ranges)


def header(buflen: int, count: int, data=()) -> GpadlHeader:
    return GpadlHeader(1, 9, buflen, count, tuple(data))


@pytest.mark.parametrize("hdr,why", [
    (header(16, 0), "rangecount 0"),
    (header(20, 1), "multiple of 8"),
    (header(24, 2), "< 16 \\* 2"),
    (header(16, 1, (4096, 5, 6)), "room for 2"),  # more non-zero words than announced
])
def test_assembler_refuses_inconsistent_headers(hdr, why):
    with pytest.raises(GpadlError, match=why):
        GpadlAssembler(hdr)


def test_assembler_tolerates_zero_padding_but_not_overflow():
    asm = GpadlAssembler(header(24, 1, (8192, 5)))
    assert not asm.complete
    assert asm.add(GpadlBody(1, 9, (6, 0, 0)))  # zero padding after the last word
    assert asm.ranges() == (GpaRange(8192, 0, (5, 6)),)
    with pytest.raises(GpadlError, match="already complete"):
        asm.add(GpadlBody(2, 9, ()))
    asm = GpadlAssembler(header(24, 1, (8192, 5)))
    with pytest.raises(GpadlError, match="room for 1"):
        asm.add(GpadlBody(1, 9, (6, 7)))
    assert GpadlAssembler(header(16, 1, (4096, 5, 0, 0))).complete


@pytest.mark.parametrize("data,count,why", [
    ((4096, 5, 4096, 6), 1, "2 words left"),  # rangecount says 1, buffer holds 2
    ((4096, 5, 8192, 6), 2, "range 1 needs 2 PFNs, 1 words left"),
    ((8192, 5, 6, 7), 1, "1 words left"),  # range needs 2 PFNs, buffer has 3
    ((3 * 4096, 5, 6, 0), 2, "ends before range 1"),  # 3 PFNs claimed, the last word is the next range's
    ((0, 5), 1, "byte_count 0"),
    ((4096 | 4096 << 32, 5, 6), 1, "byte_offset 4096"),
    ((16 * 4096, 5, 6), 1, "needs 16 PFNs"),
])
def test_assembler_refuses_ranges_that_do_not_add_up(data, count, why):
    asm = GpadlAssembler(header(8 * len(data), count, data))
    assert asm.complete
    with pytest.raises(GpadlError, match=why):
        asm.ranges()


def test_assembler_refuses_pfns_beyond_52_bit_addresses():
    asm = GpadlAssembler(header(16, 1, (4096, 1 << 40)))
    with pytest.raises(GpadlError, match="PFN"):
        asm.ranges()


@settings(max_examples=300, deadline=None)
@given(buflen=u16, count=st.integers(0, 4), head=words(27),
       bodies=st.lists(st.lists(st.integers(0, 2**64 - 1) | st.integers(0, 40), max_size=28), max_size=4))
def test_assembler_on_arbitrary_input_raises_only_gpadl_error(buflen, count, head, bodies):
    try:
        asm = GpadlAssembler(header(buflen, count, head))
        for body in bodies:
            asm.add(GpadlBody(0, 9, body))
        ranges = asm.ranges()
    except GpadlError:
        return
    assert p.encode_ranges(ranges) == asm.words
    assert len(asm.words) * 8 == buflen and len(ranges) == count
