"""VMBus ring: exact byte layout, signalling rules, full ring, and every malicious ring state of
threat-model §2, through both the pure-Python path and the C batch path."""
from __future__ import annotations

import mmap
import struct

import pytest

from tests.vmbus.ring_paths import PATHS, new_ring, read, write
from vmbus.ring import (
    CONTROL_SIZE,
    IncomingRing,
    OutgoingRing,
    Packet,
    PacketTooLarge,
    RingCorrupt,
    RingError,
    RingFull,
    init_ring,
    packet_size,
)

both = pytest.mark.parametrize("path", PATHS)
pairs = pytest.mark.parametrize("wpath,rpath", [(w, r) for w in PATHS for r in PATHS])


def control(buf) -> tuple[int, int, int, int, int]:
    """(write_index, read_index, interrupt_mask, pending_send_sz, feature_bits)"""
    return struct.unpack_from("<IIII", buf, 0) + struct.unpack_from("<I", buf, 64)


def poke(buf, offset: int, fmt: str, value: int) -> None:
    struct.pack_into("<" + fmt, buf, offset, value)


# -- layout ----------------------------------------------------------------------------------


@both
def test_image_of_two_packets_is_hyperv_layout(path):
    buf = new_ring(128, fill=0xEE)
    out = OutgoingRing(buf)
    write(path, out, [b"\x01\x02\x03"], packet_type=6, flags=1, trans_ids=[0x1122334455667788])
    write(path, out, [b"ABCDEFGHI"], packet_type=0xB, trans_ids=[5])

    data = bytes.fromhex(
        # packet 1 at 0: type 6, offset8 2, len8 3, flags 1, trans_id; payload padded; trailer 0<<32
        "0600 0200 0300 0100 8877665544332211"
        "0102030000000000"
        "0000000000000000"
        # packet 2 at 32: type 0xB, offset8 2, len8 4, flags 0, trans_id 5; 9 bytes + 7 zero; 32<<32
        "0b00 0200 0400 0000 0500000000000000"
        "4142434445464748 4900000000000000"
        "0000000020000000"
    )
    assert bytes(buf[CONTROL_SIZE : CONTROL_SIZE + 72]) == data
    assert bytes(buf[CONTROL_SIZE + 72 :]) == b"\xee" * 56  # never touched beyond write_index
    assert control(buf) == (72, 0, 0, 0, 1)
    assert bytes(buf[16:64]) == bytes(48)
    assert bytes(buf[68:CONTROL_SIZE]) == bytes(CONTROL_SIZE - 68)


@pairs
def test_wrap_splits_descriptor_and_trailer_holds_start(wpath, rpath):
    buf = new_ring(64, fill=0xEE)
    out, inc = OutgoingRing(buf), IncomingRing(buf)
    assert write(wpath, out, [b""], packet_type=1, trans_ids=[0xA1])[0] == 1  # 24 bytes at 0
    assert write(wpath, out, [b"PAYLOAD2"], flags=1, trans_ids=[0xB2])[0] == 1  # 32 bytes at 24
    packets, _ = read(rpath, inc)
    assert [p.trans_id for p in packets] == [0xA1, 0xB2]
    assert control(buf)[:2] == (56, 56)
    # 32 bytes at 56: descriptor half at the end, half (trans_id) at 0, then payload, trailer.
    assert write(wpath, out, [b"\xff" * 5], packet_type=0xB, trans_ids=[0x0C0D0E0F10111213])[0] == 1

    assert bytes(buf[CONTROL_SIZE:]) == bytes.fromhex(
        "131211100f0e0d0c"  # 0: packet 3's trans_id
        "ffffffffff000000"  # 8: packet 3's payload
        "0000000038000000"  # 16: packet 3's trailer, 56 << 32
        "0600 0200 0300 0100 b200000000000000"  # 24: packet 2
        "5041594c4f414432"
        "0000000018000000"  # 48: packet 2's trailer, 24 << 32
        "0b00 0200 0300 0000"  # 56: packet 3's descriptor, first half
    )
    assert control(buf)[:2] == (24, 56)
    packets, _ = read(rpath, inc)
    assert packets == [Packet(0xB, 0, 0x0C0D0E0F10111213, b"\xff" * 5 + bytes(3), 2, 3)]
    assert control(buf)[:2] == (24, 24)


def test_packet_fields_and_padding_as_read():
    buf = new_ring(256)
    OutgoingRing(buf).write(b"hello", packet_type=9, flags=1, trans_id=2**64 - 1)
    packet = IncomingRing(buf).read()
    assert packet == Packet(9, 1, 2**64 - 1, b"hello\0\0\0", 2, 3)
    assert packet.completion_requested


@both
def test_reader_honours_longer_header(path):
    # offset8 > 2: bytes between descriptor and offset8*8 are header, not payload.
    buf = new_ring(128)
    buf[CONTROL_SIZE : CONTROL_SIZE + 40] = (
        struct.pack("<HHHHQ", 9, 3, 4, 0, 77) + b"HDRHDRHD" + b"payload!" + struct.pack("<Q", 0)
    )
    poke(buf, 0, "I", 40)
    packets, _ = read(path, IncomingRing(buf))
    assert packets == [Packet(9, 0, 77, b"payload!", 3, 4, b"HDRHDRHD")]


@both
def test_writer_counts_a_header_in_offset8(path):
    # A GPA-direct packet's range list lies before offset8*8 (Linux's
    # vmbus_sendpacket_mpb_desc: dataoffset8 = descriptor size / 8); the reader gets it back apart.
    buf = new_ring(256)
    OutgoingRing(buf).write(b"vstor", packet_type=9, trans_id=5, header=b"R" * 24)
    raw = bytes(buf[CONTROL_SIZE : CONTROL_SIZE + 16])
    assert struct.unpack("<HHHHQ", raw) == (9, 5, 6, 0, 5)
    packets, _ = read(path, IncomingRing(buf))
    assert packets == [Packet(9, 0, 5, b"vstor\0\0\0", 5, 6, b"R" * 24)]


def test_writer_refuses_a_header_that_is_not_8_aligned():
    buf = new_ring(256)
    with pytest.raises(ValueError, match="multiple of 8"):
        OutgoingRing(buf).write(b"x", header=b"abc")
    assert struct.unpack_from("<I", buf, 0)[0] == 0  # nothing written


def test_ring_works_over_mmap_and_memoryview():
    with mmap.mmap(-1, CONTROL_SIZE + 4096) as mem:
        init_ring(mem)
        assert OutgoingRing(mem).write(b"x" * 100)
        assert IncomingRing(memoryview(mem)).read().payload[:100] == b"x" * 100


# -- signalling ------------------------------------------------------------------------------


@both
def test_writer_signals_only_on_empty_to_nonempty(path):
    buf = new_ring(4096)
    out, inc = OutgoingRing(buf), IncomingRing(buf)
    assert write(path, out, [b"a", b"b"]) == (2, True)
    assert write(path, out, [b"c"]) == (1, False)  # already non-empty
    read(path, inc, max_packets=1)
    assert write(path, out, [b"d"]) == (1, False)  # still non-empty
    read(path, inc)
    assert write(path, out, [b"e"]) == (1, True)  # drained -> empty again


@both
def test_masked_reader_gets_no_signal_and_polls_on_unmask(path):
    buf = new_ring(4096)
    out, inc = OutgoingRing(buf), IncomingRing(buf)
    inc.mask_interrupts()
    assert control(buf)[2] == 1
    assert write(path, out, [b"a"]) == (1, False)
    assert inc.unmask_interrupts() is True  # data arrived unsignalled: poll now
    read(path, inc)
    assert inc.unmask_interrupts() is False
    assert write(path, out, [b"b"]) == (1, True)


def fill_ring(path, buf, payload_len: int) -> int:
    out = OutgoingRing(buf)
    n, _ = write(path, out, [bytes(payload_len)] * 10_000)
    return n


@pairs
def test_full_ring_sets_pending_and_reader_signals_on_crossing(wpath, rpath):
    buf = new_ring(4096)
    out, inc = OutgoingRing(buf), IncomingRing(buf)
    assert fill_ring(wpath, buf, 32) == 73  # 73 * 56 = 4088 bytes, as DPDK on one data page
    big = bytes(200)  # 224 ring bytes
    assert write(wpath, out, [big], set_pending_send_sz=True) == (0, False)
    assert out.pending_send_sz == 224 and control(buf)[3] == 224
    # free = 8 + 56k after k packets; crossing 224 happens at k = 4 (free 232), once.
    signals = [read(rpath, inc, max_packets=1)[1] for _ in range(6)]
    assert signals == [False, False, False, True, False, False]
    assert write(wpath, out, [big]) == (1, False)
    assert out.pending_send_sz == 0  # the request was used up


@both
def test_reader_signal_across_a_batch(path):
    buf = new_ring(4096)
    out, inc = OutgoingRing(buf), IncomingRing(buf)
    fill_ring(path, buf, 32)
    out.set_pending_send_sz(1000)
    assert read(path, inc, max_packets=10)[1] is False  # free 568
    assert read(path, inc, max_packets=10)[1] is True  # free 1128: crossed 1000 in this batch
    assert read(path, inc, max_packets=10)[1] is False
    assert out.pending_send_sz == 1000  # an explicit request stays until cleared
    write(path, out, [b"x"])
    assert out.pending_send_sz == 1000
    out.clear_pending_send_sz()
    assert control(buf)[3] == 0


@both
def test_no_reader_signal_without_feature_bit_or_pending(path):
    for features, pending in ((0, 1000), (1, 0), (1, 7)):  # 7: below the 8 bytes always free
        buf = new_ring(4096, feature_bits=features)
        out, inc = OutgoingRing(buf), IncomingRing(buf)
        fill_ring(path, buf, 32)
        out.set_pending_send_sz(pending)
        assert not any(read(path, inc, max_packets=5)[1] for _ in range(20))


@both
def test_pending_of_ring_size_minus_one_means_signal_when_empty(path):
    buf = new_ring(4096)
    out, inc = OutgoingRing(buf), IncomingRing(buf)
    fill_ring(path, buf, 32)
    out.set_pending_send_sz(4095)  # masked to 4088: free must exceed it, i.e. the ring is empty
    signals = [read(path, inc, max_packets=8)[1] for _ in range(10)]
    assert signals == [False] * 9 + [True]


# -- capacity --------------------------------------------------------------------------------


@both
def test_capacity_is_data_size_minus_eight(path):
    buf = new_ring(256)
    out = OutgoingRing(buf)
    largest = 256 - 8 - 16 - 8
    assert out.free_bytes == 248 == packet_size(largest)
    with pytest.raises(PacketTooLarge):
        write(path, out, [bytes(largest + 1)])
    assert control(buf)[0] == 0  # nothing written
    assert write(path, out, [bytes(largest)]) == (1, True)
    assert out.free_bytes == 0 and control(buf)[0] == 248
    assert write(path, out, [b""]) == (0, False)  # full: even the smallest packet waits


def test_write_raises_ring_full_and_leaves_ring_unchanged():
    buf = new_ring(64)
    out = OutgoingRing(buf)
    out.write(bytes(16))  # 40 bytes
    before = bytes(buf)
    with pytest.raises(RingFull):
        out.write(bytes(1))  # 32 bytes > 24 free
    assert bytes(buf) == before


def test_batch_rejects_too_large_payload_before_writing_anything():
    buf = new_ring(256)
    with pytest.raises(PacketTooLarge):
        OutgoingRing(buf).write_batch([b"a", bytes(1000)])
    assert control(buf)[0] == 0


def test_len8_limit_of_a_descriptor():
    buf = bytearray(CONTROL_SIZE + (1 << 20))
    init_ring(buf)
    out = OutgoingRing(buf)
    limit = 0xFFFF * 8 - 16  # largest payload a u16 len8 can describe
    with pytest.raises(PacketTooLarge):
        out.write(bytes(limit + 1))
    with pytest.raises(PacketTooLarge):
        out.write_batch([bytes(limit + 1)])
    assert out.write_batch([bytes(limit)]) == (1, True)
    packets, _ = IncomingRing(buf).read_batch()
    assert packets[0].len8 == 0xFFFF and len(packets[0].payload) == limit


# -- argument errors -------------------------------------------------------------------------


def test_buffer_shape_errors():
    for size in (CONTROL_SIZE, CONTROL_SIZE + 24, CONTROL_SIZE + 36, 100):
        with pytest.raises(ValueError):
            OutgoingRing(bytearray(size))
    with pytest.raises(TypeError):
        IncomingRing(bytes(CONTROL_SIZE + 64))
    OutgoingRing(bytearray(CONTROL_SIZE + 32))  # the smallest accepted


@both
def test_field_range_errors(path):
    buf = new_ring(256)
    out = OutgoingRing(buf)
    for kw in ({"packet_type": 1 << 16}, {"flags": -1}):
        with pytest.raises(ValueError):
            write(path, out, [b"x"], **kw)
    with pytest.raises(ValueError):
        write(path, out, [b"x"], trans_ids=[1 << 64])
    with pytest.raises((ValueError, TypeError)):
        write(path, out, [memoryview(b"abcd").cast("I")])
    assert control(buf)[0] == 0


# -- malicious ring states (threat-model §2) -------------------------------------------------


def ring_with_packets(n: int = 2, dsize: int = 256) -> bytearray:
    buf = new_ring(dsize)
    for i in range(n):
        OutgoingRing(buf).write(bytes([i]) * 8, trans_id=i)
    return buf


def corrupt_cases():
    """(name, expected kind, mutate(buf)) for a ring holding two 32-byte packets at 0 and 32."""
    return [
        ("write_index beyond data", "write_index", lambda b: poke(b, 0, "I", 256)),
        ("write_index huge", "write_index", lambda b: poke(b, 0, "I", 0xFFFFFFF8)),
        ("write_index unaligned", "write_index", lambda b: poke(b, 0, "I", 60)),
        ("read_index unaligned", "read_index", lambda b: poke(b, 4, "I", 4)),
        ("read_index beyond data", "read_index", lambda b: poke(b, 4, "I", 4096)),
        ("offset8 below header", "descriptor", lambda b: poke(b, CONTROL_SIZE + 2, "H", 1)),
        ("offset8 zero", "descriptor", lambda b: poke(b, CONTROL_SIZE + 2, "H", 0)),
        ("offset8 beyond len8", "descriptor", lambda b: poke(b, CONTROL_SIZE + 2, "H", 4)),
        ("len8 below header", "descriptor", lambda b: poke(b, CONTROL_SIZE + 4, "H", 1)),
        ("len8 zero", "descriptor", lambda b: poke(b, CONTROL_SIZE + 4, "H", 0)),
        ("packet longer than published", "truncated", lambda b: poke(b, CONTROL_SIZE + 4, "H", 8)),
        ("packet longer than ring", "truncated", lambda b: poke(b, CONTROL_SIZE + 4, "H", 0xFFFF)),
        ("trailer not published", "truncated", lambda b: poke(b, 0, "I", 24)),
        ("less than a descriptor", "truncated", lambda b: poke(b, 0, "I", 16)),
    ]


@both
@pytest.mark.parametrize("name,kind,mutate", corrupt_cases(), ids=[c[0] for c in corrupt_cases()])
def test_corrupt_ring_is_reported_then_dead(path, name, kind, mutate):
    buf = ring_with_packets()
    mutate(buf)
    inc = IncomingRing(buf)
    with pytest.raises(RingCorrupt) as err:
        read(path, inc)
    assert err.value.kind == kind
    assert inc.broken
    # Dead: every call raises RingCorrupt again, whatever the ring now holds.
    buf[:] = ring_with_packets()
    calls = (inc.read, inc.commit, inc.read_batch, inc.mask_interrupts, lambda: inc.available_bytes)
    for call in calls:
        with pytest.raises(RingCorrupt):
            call()


@both
def test_good_packets_before_a_corrupt_one_are_delivered(path):
    buf = ring_with_packets(3)
    poke(buf, CONTROL_SIZE + 64 + 2, "H", 9)  # third packet: offset8 > len8
    inc = IncomingRing(buf)
    if path == "py":
        assert [inc.read().trans_id, inc.read().trans_id] == [0, 1]
    else:
        packets, _ = inc.read_batch()
        assert [p.trans_id for p in packets] == [0, 1]
    with pytest.raises(RingCorrupt, match="descriptor"):
        read(path, inc)


@both
def test_reader_detects_its_index_moved_by_peer(path):
    buf = ring_with_packets(3)
    inc = IncomingRing(buf)
    read(path, inc, max_packets=2)
    poke(buf, 4, "I", 0)  # moved backwards: would re-deliver packets 0 and 1
    with pytest.raises(RingCorrupt) as err:
        read(path, inc)
    assert err.value.kind == "tampered"


@both
def test_writer_detects_its_index_moved_by_peer(path):
    buf = ring_with_packets(1)
    out = OutgoingRing(buf)
    write(path, out, [b"x"])
    poke(buf, 0, "I", 8)
    with pytest.raises(RingCorrupt, match="tampered"):
        write(path, out, [b"y"])
    with pytest.raises(RingCorrupt):
        out.free_bytes


@both
@pytest.mark.parametrize("bad_read_index,kind", [(3, "read_index"), (4096, "read_index")])
def test_writer_rejects_invalid_read_index(path, bad_read_index, kind):
    buf = new_ring(256)
    poke(buf, 4, "I", bad_read_index)
    out = OutgoingRing(buf)
    with pytest.raises(RingCorrupt) as err:
        write(path, out, [b"x"])
    assert err.value.kind == kind and control(buf)[0] == 0


@both
@pytest.mark.parametrize("read_index", [0, 8, 32, 40, 64, 72, 248])
def test_writer_treats_odd_read_index_as_less_space(path, read_index):
    # Two packets written (w = 64), then the peer moves read_index anywhere (backwards, past
    # write_index). The writer may only write into what that read_index leaves free.
    buf = ring_with_packets(2)
    out = OutgoingRing(buf)
    out.free_bytes  # adopt write_index 64
    poke(buf, 4, "I", read_index)
    before = bytes(buf[CONTROL_SIZE:])
    n, _ = write(path, out, [bytes([0xAB]) * 8] * 20)
    w = control(buf)[0]
    free_arc = {(64 + i) % 256 for i in range((read_index - 64 - 8) % 256)}
    changed = {i for i in range(256) if buf[CONTROL_SIZE + i] != before[i]}
    assert changed <= free_arc
    free = (read_index - 64) % 256 or 256  # 64: empty
    assert n == (free - 8) // 32
    assert (w - 64) % 256 == 32 * n


def test_double_fetch_uses_first_snapshot(monkeypatch):
    # The peer rewrites the descriptor right after the reader copied it: the packet returned
    # and the cursor must follow the copy, not the rewrite.
    buf = ring_with_packets(2)
    inc = IncomingRing(buf)
    original = IncomingRing._copy_out

    def racing_copy_out(self, pos, n):
        data = original(self, pos, n)
        poke(buf, CONTROL_SIZE + pos + 4, "H", 0xFFFF)  # len8 now huge
        poke(buf, CONTROL_SIZE + pos + 8, "Q", 0xBAD)
        return data

    monkeypatch.setattr(IncomingRing, "_copy_out", racing_copy_out)
    assert inc.read() == Packet(6, 0, 0, bytes(8), 2, 3)
    monkeypatch.undo()
    assert control(buf)[1] == 0 and inc.commit() is False and control(buf)[1] == 32


def test_all_ring_errors_share_a_base():
    assert issubclass(RingFull, RingError) and issubclass(RingCorrupt, RingError)
    assert issubclass(PacketTooLarge, RingError) and issubclass(PacketTooLarge, ValueError)


# -- the C batch calls themselves --------------------------------------------------------------


def test_c_read_batch_records_and_stop_reasons():
    from hypervisor import _binding

    buf = new_ring(256)
    OutgoingRing(buf).write_batch([b"a" * 8, b"b" * 20, b"c"], trans_ids=[1, 2, 3], flags=1)
    out = bytearray(70)  # room for the first two records (24 + 40), not the third
    result = _binding.hv_ring_read_batch(buf, out, 10)
    stop = _binding.lib
    assert (result.count, result.out_used, result.stop) == (2, 64, stop.HV_RING_STOP_OUT_FULL)
    # Records: each packet as it sits in the ring, descriptor first, trailer dropped.
    assert bytes(out[:64]) == (
        struct.pack("<HHHHQ", 6, 2, 3, 1, 1) + b"a" * 8
        + struct.pack("<HHHHQ", 6, 2, 5, 1, 2) + b"b" * 20 + bytes(4)
    )
    assert result.index == 32 + 48 == control(buf)[1]
    result = _binding.hv_ring_read_batch(buf, out, 0)
    assert (result.count, result.stop) == (0, stop.HV_RING_STOP_MAX)
    result = _binding.hv_ring_read_batch(buf, out, 10)
    assert (result.count, result.stop, result.index) == (1, stop.HV_RING_STOP_EMPTY, 112)

    OutgoingRing(buf).write_batch([b"d", b"e"])
    poke(buf, CONTROL_SIZE + 112 + 32 + 4, "H", 0)  # second packet: len8 0
    result = _binding.hv_ring_read_batch(buf, out, 10)
    assert (result.count, result.stop) == (1, stop.HV_RING_STOP_CORRUPT)
    with pytest.raises(_binding.RingCorruptError) as err:
        _binding.hv_ring_read_batch(buf, out, 10)
    assert err.value.kind == "descriptor" and isinstance(err.value, ValueError)


def test_c_batch_argument_errors():
    from hypervisor import _binding

    buf = new_ring(256)
    with pytest.raises(ValueError):
        _binding.hv_ring_read_batch(bytearray(CONTROL_SIZE + 12), bytearray(64), 1)  # bad ring size
    with pytest.raises(ValueError):
        _binding.hv_ring_write_batch(buf, [bytes(300)])  # can never fit
    with pytest.raises(ValueError):
        _binding.hv_ring_write_batch(buf, [b"x"], trans_ids=[1, 2])
    with pytest.raises(TypeError):
        _binding.hv_ring_read_batch(bytes(buf), bytearray(64), 1)  # read-only ring
    assert control(buf)[0] == 0


# -- the fast paths: one crossing, one copy ------------------------------------------------------


def test_write_packet_writes_the_bytes_write_does():
    ref, fast = new_ring(256), new_ring(256)
    header = struct.pack("<QQ", 7, 9)
    for ring in (ref, fast):
        poke(ring, 0, "I", 200)  # wrap the packets around the end of the data area
        poke(ring, 4, "I", 200)
    kw = dict(packet_type=9, flags=1, trans_id=0xABCDEF, header=header)
    assert OutgoingRing(ref).write(b"payload!x", **kw) == OutgoingRing(fast).write_packet(
        b"payload!x", **kw) is True
    assert fast == ref
    # Payloads that are not bytes objects take the same path with an export.
    out = OutgoingRing(fast)
    out.write_packet(memoryview(bytearray(b"second")), header=bytearray(8))
    OutgoingRing(ref).write(b"second", header=bytes(8))
    assert fast == ref
    (first, second), _ = IncomingRing(fast).read_batch()
    assert (first.payload[:9], first.header, first.trans_id, second.header) == (
        b"payload!x", header, 0xABCDEF, bytes(8))


def test_write_packet_errors_are_the_references():
    buf = new_ring(64)
    out = OutgoingRing(buf)
    with pytest.raises(PacketTooLarge):
        out.write_packet(bytes(64))
    with pytest.raises(ValueError):
        out.write_packet(b"x", header=b"odd")
    with pytest.raises(ValueError):
        out.write_packet(b"x", packet_type=1 << 16)
    with pytest.raises(TypeError):
        out.write_packet(memoryview(bytes(8)).cast("I"))  # items are not bytes
    out.write_packet(bytes(16))
    with pytest.raises(RingFull):
        out.write_packet(bytes(16))
    assert control(buf)[:2] == (40, 0)
    # Full, but asking for space: pending_send_sz is set exactly as write() sets it.
    with pytest.raises(RingFull):
        out.write_packet(bytes(16), set_pending_send_sz=True)
    assert control(buf)[3] == packet_size(16)


def test_batch_of_large_payloads_goes_by_pointer_and_matches_write():
    payloads = [bytes([1]) * 5000, bytearray(b"\2" * 3000), memoryview(b"\3" * 4100)]
    ref, fast = new_ring(16384), new_ring(16384)
    for p in payloads:
        OutgoingRing(ref).write(p, trans_id=5)
    assert OutgoingRing(fast).write_batch(payloads, trans_ids=[5, 5, 5]) == (3, True)
    assert fast == ref
    with pytest.raises(TypeError):  # the size check covers the pointer path too
        OutgoingRing(new_ring(16384)).write_batch([memoryview(bytes(4096)).cast("I")] * 2)


@pytest.mark.parametrize("size", [40, 6000])  # the short-read scratch and fresh memory
def test_a_packet_batch_owns_its_memory(size):
    buf = new_ring(16384)
    out, inc = OutgoingRing(buf), IncomingRing(buf)
    out.write_batch([b"a" * size, b"b" * size])
    first, _ = inc.read_batch()
    out.write_batch([b"c" * size, b"d" * size])
    second, _ = inc.read_batch()  # reuses the ring bytes and any scratch memory
    assert [p.payload[:size] for p in first] == [b"a" * size, b"b" * size]
    assert [bytes(v[:size]) for v in second.payload_views()] == [b"c" * size, b"d" * size]
    assert first[1] == list(first)[1] and first[-1].payload[:1] == b"b" and len(first[:1]) == 1
    assert first == list(first) and first != second
    assert all(type(p.payload) is bytes and type(p.header) is bytes for p in first)
    with pytest.raises(TypeError):
        next(second.payload_views())[0] = 0  # the views are read-only


def test_pinned_ring_inside_a_larger_buffer_writes_at_its_own_offset():
    # The C path pins the buffer that owns the memory and points into it: a ring that is a
    # slice of a larger bytearray must be written where the slice is, and nowhere else.
    whole = bytearray(3 * 4096 + 256)
    ring = memoryview(whole)[4096 : 4096 + CONTROL_SIZE + 256]
    init_ring(ring)
    OutgoingRing(ring).write_packet(b"here", trans_id=3)
    OutgoingRing(ring).write_batch([b"and here"])
    ref = new_ring(256)
    OutgoingRing(ref).write(b"here", trans_id=3)
    OutgoingRing(ref).write(b"and here")
    assert bytes(ring) == bytes(ref)
    assert not any(whole[:4096]) and not any(whole[4096 + CONTROL_SIZE + 256 :])
    assert [p.payload[:8] for p in IncomingRing(ring).read_batch()[0]] == [b"here\0\0\0\0", b"and here"]


def test_large_read_memory_is_reused_only_once_nothing_refers_to_it():
    buf = new_ring(65536)
    out, inc = OutgoingRing(buf), IncomingRing(buf)
    out.write_batch([b"a" * 6000])
    first, _ = inc.read_batch()
    view = next(first.payload_views())
    del first
    out.write_batch([b"b" * 6000])
    second, _ = inc.read_batch()
    assert bytes(view[:3]) == b"aaa" and second[0].payload[:3] == b"bbb"  # a view kept it alive
    del view, second
    out.write_batch([b"c" * 6000])
    third, _ = inc.read_batch()
    out.write_batch([b"d" * 6000])
    fourth, _ = inc.read_batch()
    assert third[0].payload[:3] == b"ccc" and fourth[0].payload[:3] == b"ddd"
