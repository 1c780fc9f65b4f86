"""The guest SDK's C (native/guest/ring.c, vmbus.c) built for the host and held to the bytes of
vmbus/ring.py and vmbus/protocol.py: the same ring contents, indices and signals after every
operation, the same channel-management messages, and the client's exchanges with a host."""
from __future__ import annotations

import struct
import subprocess
import uuid
from pathlib import Path

import pytest
from cffi import FFI
from hypothesis import given, settings, strategies as st

from vmbus import protocol as p
from vmbus.ring import (CONTROL_SIZE, IncomingRing, OutgoingRing, PacketTooLarge, RingCorrupt,
                        RingFull, init_ring)

GUEST = Path(__file__).resolve().parents[2] / "native" / "guest"

CDEF = """
typedef uint8_t u8; typedef uint16_t u16; typedef uint32_t u32; typedef uint64_t u64;
struct hvg_ring { u8 *base; u32 dsize; u32 own; u32 cursor; u8 adopted; u8 requested; u8 broken; };
struct hvg_packet { u16 type, flags, offset8, len8; u64 trans_id; u32 header_len; u32 payload_len; };
struct hvg_offer { u8 interface_id[16]; u8 instance_id[16]; u32 relid; u32 connection_id; u16 flags; };
struct hvg_vmbus { u32 version; u32 msg_conn_id; u32 next_gpadl; u32 offer_count;
                   struct hvg_offer offers[16]; u32 messages_ignored; };
struct hvg_channel { u32 relid, connection_id, gpadl_id; struct hvg_ring out; struct hvg_ring in; };
int hvg_ring_attach(struct hvg_ring *ring, void *mem, u32 size);
int hvg_ring_write(struct hvg_ring *ring, u16 type, u16 flags, u64 trans_id, const void *header,
                   u32 header_len, const void *payload, u32 len, int request_space, int *signal);
int hvg_ring_read(struct hvg_ring *ring, struct hvg_packet *pkt, void *buf, u32 cap);
int hvg_ring_commit(struct hvg_ring *ring);
u32 hvg_msg_initiate_contact(u8 *buf, u32 version, u32 target_vcpu, u32 msg_sint);
u32 hvg_msg_request_offers(u8 *buf);
u32 hvg_msg_gpadl(u8 *buf, u32 index, u32 relid, u32 gpadl_id, const u64 *pfns, u32 npfns);
u32 hvg_msg_open_channel(u8 *buf, u32 relid, u32 open_id, u32 gpadl_id, u32 target_vp,
                         u32 downstream_page_offset, const u8 *user_data, u32 user_len);
u32 hvg_msg_close_channel(u8 *buf, u32 relid);
u32 hvg_msg_gpadl_teardown(u8 *buf, u32 relid, u32 gpadl_id);
int hvg_channel_send(struct hvg_channel *ch, const void *payload, u32 len, u64 trans_id, u16 flags);
int hvg_channel_recv(struct hvg_channel *ch, struct hvg_packet *pkt, void *buf, u32 cap);
void hosted_reset(void);
int hosted_deliver(u32 type, const u8 *payload, u32 size);
u32 hosted_posted(u32 i, u32 *connection_id, u32 *type, u8 *payload);
u32 hosted_posted_count(void);
u32 hosted_signal_count(void);
int hosted_connect(struct hvg_vmbus *bus);
int hosted_request_offers(struct hvg_vmbus *bus);
int hosted_open(struct hvg_vmbus *bus, const struct hvg_offer *offer, struct hvg_channel *ch,
                void *mem, u32 pages, u32 downstream, u32 *status);
"""
OK, EMPTY, FULL, TOOBIG, CORRUPT, PROTOCOL, STARVED = 0, -1, -2, -3, -4, -5, -100

ffi = FFI()
ffi.cdef(CDEF)


@pytest.fixture(scope="module")
def sdk(tmp_path_factory):
    """ring.c and vmbus.c with the hosted shim, as a shared library."""
    lib = tmp_path_factory.mktemp("guest-sdk") / "libhvguest.so"
    sources = [GUEST / "hosted.c", GUEST / "ring.c", GUEST / "vmbus.c"]
    # UndefinedBehaviorSanitizer: an overflow or misaligned access in the ring code aborts the test.
    subprocess.run(["gcc", "-std=gnu11", "-O1", "-Wall", "-Wextra", "-Werror", "-fPIC", "-shared",
                    "-fsanitize=undefined", "-fno-sanitize-recover=all",
                    "-DHVG_HOSTED", f"-I{GUEST}", *map(str, sources), "-o", str(lib)], check=True)
    return ffi.dlopen(str(lib))


# -- rings ---------------------------------------------------------------------------------------

class CRing:
    """Both ends of one ring in C over its own copy of the memory."""

    def __init__(self, lib, size: int):
        self.lib, self.mem = lib, ffi.new("u8[]", size)
        self.out, self.inn = ffi.new("struct hvg_ring *"), ffi.new("struct hvg_ring *")
        assert lib.hvg_ring_attach(self.out, self.mem, size) == OK
        assert lib.hvg_ring_attach(self.inn, self.mem, size) == OK

    def bytes(self) -> bytes:
        return bytes(ffi.buffer(self.mem))

    def load(self, data: bytes) -> None:
        ffi.buffer(self.mem)[:] = data


def py_write(ring: OutgoingRing, op):
    _, ptype, flags, trans_id, header, payload, request = op
    try:
        return OK, ring.write(payload, packet_type=ptype, flags=flags, trans_id=trans_id,
                              set_pending_send_sz=request, header=header)
    except RingFull:
        return FULL, False
    except PacketTooLarge:
        return TOOBIG, False
    except RingCorrupt:
        return CORRUPT, False


def c_write(ring: CRing, op):
    _, ptype, flags, trans_id, header, payload, request = op
    signal = ffi.new("int *")
    rc = ring.lib.hvg_ring_write(ring.out, ptype, flags, trans_id, header, len(header), payload,
                                 len(payload), request, signal)
    return rc, bool(signal[0])


def py_read(ring: IncomingRing):
    try:
        packet = ring.read()
    except RingCorrupt:
        return CORRUPT, None
    if packet is None:
        return EMPTY, None
    return OK, (packet.type, packet.flags, packet.trans_id, packet.offset8, packet.len8,
                packet.header, packet.payload)


def c_read(ring: CRing):
    pkt, buf = ffi.new("struct hvg_packet *"), ffi.new("u8[]", 1 << 16)
    rc = ring.lib.hvg_ring_read(ring.inn, pkt, buf, 1 << 16)
    if rc != OK:
        return rc, None
    data = bytes(ffi.buffer(buf, pkt.header_len + pkt.payload_len))
    return OK, (pkt.type, pkt.flags, pkt.trans_id, pkt.offset8, pkt.len8,
                data[:pkt.header_len], data[pkt.header_len:])


def py_commit(ring: IncomingRing):
    try:
        return int(ring.commit())
    except RingCorrupt:
        return CORRUPT


_u16, _u64 = st.integers(0, 0xFFFF), st.integers(0, (1 << 64) - 1)
writes = st.tuples(st.just("write"), _u16, _u16, _u64,
                   st.sampled_from([b"", bytes(range(8)), bytes(range(16, 40))]),
                   st.one_of(st.binary(max_size=24), st.binary(max_size=300)), st.booleans())
ops = st.lists(st.one_of(
    writes, writes,
    st.tuples(st.just("read")), st.tuples(st.just("commit")),
    st.tuples(st.just("mask"), st.integers(0, 1)),
    # The peer (or a bug) scribbling over a shared field: both ends must judge it alike.
    st.tuples(st.just("poke"), st.sampled_from([0, 4, 12]), st.integers(0, 1 << 12)),
), max_size=40)


def run_script(sdk, dsize: int, start: int, features: int, script) -> list:
    """Run `script` on a C ring and a ring.py ring that start alike; after each step both hold
    the same bytes and gave the same result. Returns the results."""
    size = CONTROL_SIZE + dsize
    ref = bytearray(size)
    init_ring(ref, feature_bits=features)
    struct.pack_into("<II", ref, 0, start % (dsize // 8) * 8, start % (dsize // 8) * 8)
    c = CRing(sdk, size)
    c.load(bytes(ref))
    out, inn = OutgoingRing(ref), IncomingRing(ref)
    results = []
    for op in script:
        if op[0] == "write":
            result = c_write(c, op)
            assert result == py_write(out, op), op
        elif op[0] == "read":
            result = c_read(c)
            assert result == py_read(inn)
        elif op[0] == "commit":
            result = sdk.hvg_ring_commit(c.inn)
            assert result == py_commit(inn)
        elif op[0] == "mask":
            struct.pack_into("<I", ref, 8, op[1])
            ffi.cast("u32 *", c.mem)[2] = result = op[1]
        else:
            struct.pack_into("<I", ref, op[1], op[2])
            ffi.cast("u32 *", c.mem)[op[1] // 4] = result = op[2]
        assert c.bytes() == bytes(ref), op
        results.append(result)
    return results


@settings(max_examples=400, deadline=None)
@given(dsize=st.one_of(st.integers(4, 24), st.integers(4, 96)).map(lambda n: n * 8),
       start=st.integers(0, 95), features=st.integers(0, 1), script=ops)
def test_ring_matches_the_reference_byte_for_byte(sdk, dsize, start, features, script):
    """Any sequence of writes, reads, commits, masks and pokes, from any starting position (so
    packets wrap): after each step the C ring and vmbus/ring.py hold the same bytes and gave the
    same result and signal."""
    run_script(sdk, dsize, start, features, script)


def w(payload: bytes, request: bool = False, trans_id: int = 0):
    return ("write", 6, 0, trans_id, b"", payload, request)


@pytest.mark.parametrize("start", [0, 5])
def test_ring_edges(sdk, start):
    """The edges a random script rarely hits exactly, in a 64-byte ring: a packet that would
    fill the ring to equal indices is refused; a full write's request (pending_send_sz = 40) is
    answered by the commit that frees exactly that much; signals on empty -> non-empty only.
    With start = 5 the ring's indices begin at 40, so packets wrap."""
    results = run_script(sdk, 64, start, 1, [
        w(b""),                      # 24 bytes: empty -> non-empty, signal
        w(bytes(16)),                # 40 bytes would leave 0 free: full
        w(bytes(16), request=True),  # full again, and asks for 40
        ("read",), ("commit",),      # frees 24: free goes 40 -> 64, crossing the 40 asked for
        w(bytes(16), trans_id=5),    # fits now (and wraps when start = 5)
        w(b""),                      # 24 bytes with 24 free: full
        ("read",),                   # the packet of 16, read but not committed: the space
        w(b""),                      # is still the writer's to wait for: full
        ("commit",), w(b""),         # now it fits, into an empty ring: signal
        w(b""),                      # not empty before: no signal
    ])
    assert results[0] == (OK, True)
    assert results[1] == results[2] == (FULL, False)
    assert results[4] == 1
    assert results[5] == (OK, True) and results[6] == results[8] == (FULL, False)
    assert results[7][1][2] == 5 and results[10] == (OK, True) and results[11] == (OK, False)


def test_a_read_into_a_short_buffer_consumes_nothing(sdk):
    ref = bytearray(CONTROL_SIZE + 256)
    init_ring(ref)
    OutgoingRing(ref).write(bytes(range(40)), trans_id=9)
    c = CRing(sdk, len(ref))
    c.load(bytes(ref))
    pkt, buf = ffi.new("struct hvg_packet *"), ffi.new("u8[]", 64)
    assert sdk.hvg_ring_read(c.inn, pkt, buf, 39) == TOOBIG
    assert sdk.hvg_ring_read(c.inn, pkt, buf, 40) == OK
    assert (pkt.trans_id, bytes(ffi.buffer(buf, 40))) == (9, bytes(range(40)))


# -- messages ------------------------------------------------------------------------------------

def c_message(fn, *args) -> bytes:
    buf = ffi.new("u8[240]")
    return bytes(ffi.buffer(buf, fn(buf, *args)))


@pytest.mark.parametrize("version", p.SUPPORTED_VERSIONS)
def test_initiate_contact_and_request_offers(sdk, version):
    assert c_message(sdk.hvg_msg_initiate_contact, version, 0, 2) == \
        p.InitiateContact.for_version(version, 0, msg_sint=2).encode()
    assert c_message(sdk.hvg_msg_request_offers) == p.RequestOffers().encode()


@settings(max_examples=200, deadline=None)
@given(relid=st.integers(1, p.MAX_RELID), gpadl_id=st.integers(0, 0xFFFFFFFF),
       pfns=st.lists(st.integers(0, p.MAX_PFN), min_size=1, max_size=300))
def test_gpadl_messages_split_as_the_reference(sdk, relid, gpadl_id, pfns):
    expected = [m.encode() for m in p.split_gpadl(relid, gpadl_id, [p.GpaRange.whole_pages(pfns)])]
    array = ffi.new("u64[]", pfns)
    got, index = [], 0
    while message := c_message(sdk.hvg_msg_gpadl, index, relid, gpadl_id, array, len(pfns)):
        got.append(message)
        index += 1
    assert got == expected


@settings(max_examples=100, deadline=None)
@given(relid=st.integers(1, p.MAX_RELID), ids=st.tuples(*[st.integers(0, 0xFFFFFFFF)] * 4),
       user=st.binary(max_size=120))
def test_open_close_and_teardown_messages(sdk, relid, ids, user):
    open_id, gpadl_id, vp, offset = ids
    assert c_message(sdk.hvg_msg_open_channel, relid, open_id, gpadl_id, vp, offset, user, len(user)) == \
        p.OpenChannel(relid, open_id, gpadl_id, vp, offset, user).encode()
    assert c_message(sdk.hvg_msg_close_channel, relid) == p.CloseChannel(relid).encode()
    assert c_message(sdk.hvg_msg_gpadl_teardown, relid, gpadl_id) == p.GpadlTeardown(relid, gpadl_id).encode()


# -- the client against scripted host messages ---------------------------------------------------

def deliver(sdk, *messages: p.Message) -> None:
    for m in messages:
        raw = m.encode()
        assert sdk.hosted_deliver(1, raw, len(raw)) == 0


def posted(sdk) -> list[tuple[int, bytes]]:
    out, conn, kind, buf = [], ffi.new("u32 *"), ffi.new("u32 *"), ffi.new("u8[240]")
    for i in range(sdk.hosted_posted_count()):
        size = sdk.hosted_posted(i, conn, kind, buf)
        assert kind[0] == p.VMBUS_MESSAGE_TYPE
        out.append((conn[0], bytes(ffi.buffer(buf, size))))
    return out


def test_connect_tries_versions_newest_first(sdk):
    sdk.hosted_reset()
    bus = ffi.new("struct hvg_vmbus *")
    deliver(sdk, p.VersionResponse(False), p.VersionResponse(False),
            p.VersionResponse(True, p.ConnectionState.SUCCESSFUL, 7))
    assert sdk.hosted_connect(bus) == OK
    versions = p.SUPPORTED_VERSIONS[:3]
    assert posted(sdk) == [(4, p.InitiateContact.for_version(v, 0, msg_sint=2).encode()) for v in versions]
    assert (bus.version, bus.msg_conn_id) == (versions[2], 7)


def test_connect_refused_everywhere_and_a_silent_host(sdk):
    sdk.hosted_reset()
    bus = ffi.new("struct hvg_vmbus *")
    deliver(sdk, *[p.VersionResponse(False)] * len(p.SUPPORTED_VERSIONS))
    assert sdk.hosted_connect(bus) == PROTOCOL
    assert [conn for conn, _ in posted(sdk)] == [4, 4, 4, 4, 1, 1, 1, 1]  # 5.x to 4, older to 1
    sdk.hosted_reset()
    assert sdk.hosted_connect(bus) == STARVED  # it waits (hlt) for an answer that never comes


def test_offers_gpadl_and_open_as_the_python_client_sends_them(sdk):
    sdk.hosted_reset()
    bus = ffi.new("struct hvg_vmbus *")
    deliver(sdk, p.VersionResponse(True, p.ConnectionState.SUCCESSFUL, 5))
    assert sdk.hosted_connect(bus) == OK
    echo = uuid.UUID("6e0d8e9f-5f4c-4d3a-9a0e-8f2b7c1d0e11")
    other = uuid.UUID("ba6163d9-04a1-4d29-b605-72e2ffb1dc7f")
    deliver(sdk, p.OfferChannel(other, uuid.uuid4(), 3, connection_id=0x1003),
            p.GpadlTorndown(1),  # not awaited: ignored
            p.OfferChannel(echo, uuid.uuid4(), 9, connection_id=0x2009), p.AllOffersDelivered())
    assert sdk.hosted_request_offers(bus) == OK
    assert bus.offer_count == 2 and bus.messages_ignored == 1
    offer = bus.offers[1]
    assert bytes(offer.interface_id) == echo.bytes_le and (offer.relid, offer.connection_id) == (9, 0x2009)

    pages, down = 40, 20  # a GPADL of 41 words: a header and a body
    mem = ffi.new("u8[]", (pages + 1) * 4096)
    aligned = ffi.cast("u8 *", (int(ffi.cast("uintptr_t", mem)) + 4095) & ~4095)
    base_pfn = int(ffi.cast("uintptr_t", aligned)) >> 12
    ch, status = ffi.new("struct hvg_channel *"), ffi.new("u32 *")
    gpadl = 0xE1E10
    deliver(sdk, p.GpadlCreated(9, gpadl, 0), p.OpenResult(9, 9, 0))
    assert sdk.hosted_open(bus, bus.offers + 1, ch, aligned, pages, down, status) == OK
    ring = p.GpaRange.whole_pages(range(base_pfn, base_pfn + pages))
    expected = [m.encode() for m in p.split_gpadl(9, gpadl, [ring])]
    expected.append(p.OpenChannel(9, 9, gpadl, 0, down).encode())
    assert posted(sdk)[-len(expected):] == [(5, m) for m in expected]

    # The opened channel's first packet lands in the upstream ring as ring.py reads it, and
    # signals (empty -> non-empty) on the offer's connection.
    assert sdk.hvg_channel_send(ch, b"ping", 4, 77, 1) == OK
    assert sdk.hosted_signal_count() == 1
    upstream = IncomingRing(ffi.buffer(aligned, down * 4096))
    packet = upstream.read()
    assert (packet.trans_id, packet.payload, packet.flags) == (77, b"ping".ljust(8, b"\0"), 1)

    # The host fills the downstream ring until a write finds it full and asks for space; the
    # guest's first receive frees that much and signals the host, later ones do not.
    downstream = OutgoingRing(ffi.buffer(aligned + down * 4096, (pages - down) * 4096))
    sent = []
    while True:
        payload = bytes([len(sent)]) * 4000
        try:
            downstream.write(payload, trans_id=len(sent), set_pending_send_sz=True)
        except RingFull:
            break
        sent.append(payload)
    assert downstream.pending_send_sz == 4024
    pkt, buf = ffi.new("struct hvg_packet *"), ffi.new("u8[]", 4096)
    got = []
    for _ in sent:
        assert sdk.hvg_channel_recv(ch, pkt, buf, 4096) == OK
        got.append(bytes(ffi.buffer(buf, pkt.payload_len))[:4000])
        assert sdk.hosted_signal_count() == 2
    assert got == sent and sdk.hvg_channel_recv(ch, pkt, buf, 4096) == EMPTY


def test_a_refused_gpadl_fails_the_open_with_the_hosts_status(sdk):
    sdk.hosted_reset()
    bus = ffi.new("struct hvg_vmbus *")
    deliver(sdk, p.VersionResponse(True, p.ConnectionState.SUCCESSFUL, 5))
    assert sdk.hosted_connect(bus) == OK
    offer = ffi.new("struct hvg_offer *", {"relid": 4, "connection_id": 0x2004})
    mem = ffi.new("u8[]", 5 * 4096)
    aligned = ffi.cast("u8 *", (int(ffi.cast("uintptr_t", mem)) + 4095) & ~4095)
    ch, status = ffi.new("struct hvg_channel *"), ffi.new("u32 *")
    deliver(sdk, p.GpadlCreated(4, 0xE1E10 + 1, 0),            # another GPADL's: not this one
            p.GpadlCreated(4, 0xE1E10, p.STATUS_UNSUCCESSFUL))
    assert sdk.hosted_open(bus, offer, ch, aligned, 4, 2, status) == PROTOCOL
    assert status[0] == p.STATUS_UNSUCCESSFUL
    assert all(kind != p.OpenChannel.spec.id for kind in
               (struct.unpack_from("<I", m)[0] for _, m in posted(sdk)))
