"""VMBus ring properties (hypothesis): random write/read sequences against a deque model through
every writer/reader pairing of the Python and C paths (byte-identical ring images), and
arbitrary ring bytes against both readers and both writers (only RingError escapes, packets are
consistent, nothing outside the free space is written, both paths agree)."""
from __future__ import annotations

import struct
from collections import deque

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.vmbus.ring_paths import PATHS, new_ring, read, write
from vmbus.ring import (
    ALIGN,
    CONTROL_SIZE,
    DESC_SIZE,
    IncomingRing,
    OutgoingRing,
    Packet,
    RingCorrupt,
    RingError,
    packet_size,
)

PAIRS = [(w, r) for w in PATHS for r in PATHS]


class RingModel:
    """What a ring must do, in plain Python: a deque of packets and a byte count."""

    def __init__(self, dsize: int):
        self.dsize = dsize
        self.queue: deque[tuple[int, Packet]] = deque()
        self.used = 0
        self.masked = False
        self.pending = 0
        self.requested = False  # pending was set by a write that found the ring full

    def write(self, payloads, tids, ptype, flags, set_pending) -> tuple[int, bool]:
        was_empty = self.used == 0
        n = 0
        for payload, tid in zip(payloads, tids):
            total = packet_size(len(payload))
            if self.dsize - self.used <= total:  # 8 bytes always stay free
                break
            padded = payload + bytes(-len(payload) % ALIGN)
            self.queue.append((total, Packet(ptype, flags, tid, padded, 2, (total - 8) // 8)))
            self.used += total
            n += 1
        if n and self.requested:
            self.pending, self.requested = 0, False
        if n < len(payloads) and set_pending:
            self.pending, self.requested = packet_size(len(payloads[n])), True
        return n, n > 0 and was_empty and not self.masked

    def read(self, max_packets: int) -> tuple[list[Packet], bool]:
        free_before = self.dsize - self.used
        packets = []
        while self.queue and len(packets) < max_packets:
            total, packet = self.queue.popleft()
            self.used -= total
            packets.append(packet)
        pending = self.pending & ~7
        free_now = self.dsize - self.used
        return packets, bool(packets) and pending != 0 and free_before <= pending < free_now

    def set_pending(self, value: int) -> None:
        self.pending, self.requested = value, False


write_op = st.tuples(
    st.just("write"),
    st.lists(st.tuples(st.binary(max_size=90), st.integers(0, 2**64 - 1)), min_size=1, max_size=6),
    st.sampled_from([6, 7, 9, 0xB, 0xFFFF]),
    st.integers(0, 1),
    st.booleans(),
)
ops = st.lists(
    st.one_of(
        write_op,
        write_op,
        st.tuples(st.just("read"), st.integers(0, 8)),
        st.tuples(st.just("mask"), st.booleans()),
        st.tuples(st.just("pending"), st.integers(0, 400)),
    ),
    max_size=40,
)


@settings(max_examples=250, deadline=None)
@given(dsize=st.integers(4, 48).map(lambda k: k * 8), ops=ops)
def test_random_operations_match_model_on_every_path_pairing(dsize, ops):
    model = RingModel(dsize)
    rings = {}
    for pair in PAIRS:
        buf = new_ring(dsize, fill=0x5A)
        rings[pair] = (buf, OutgoingRing(buf), IncomingRing(buf))

    for op in ops:
        if op[0] == "write":
            _, items, ptype, flags, set_pending = op
            payloads = [p[: dsize - 32] for p, _ in items]  # every packet fits an empty ring
            tids = [t for _, t in items]
            expected = model.write(payloads, tids, ptype, flags, set_pending)
            for (wpath, _), (_, out, _) in rings.items():
                got = write(wpath, out, payloads, trans_ids=tids, packet_type=ptype, flags=flags,
                            set_pending_send_sz=set_pending)
                assert got == expected
        elif op[0] == "read":
            expected = model.read(op[1])
            for (_, rpath), (_, _, inc) in rings.items():
                assert read(rpath, inc, op[1]) == expected
        elif op[0] == "mask":
            model.masked = op[1]
            for _, _, inc in rings.values():
                inc.mask_interrupts() if op[1] else inc.unmask_interrupts()
        else:
            model.set_pending(op[1])
            for _, out, _ in rings.values():
                out.set_pending_send_sz(op[1])

        images = {bytes(buf) for buf, _, _ in rings.values()}
        assert len(images) == 1, "the paths wrote different bytes"
        buf, out, inc = rings[PAIRS[0]]
        assert out.available_bytes == inc.available_bytes == model.used
        assert out.free_bytes == dsize - model.used - 8
        assert struct.unpack_from("<I", buf, 12)[0] == model.pending


# -- arbitrary ring contents -----------------------------------------------------------------


@st.composite
def hostile_rings(draw) -> bytearray:
    """A ring whose control page and data an attacker chose. Mostly it holds a run of
    packet-like records starting at read_index, with small (often valid) descriptor fields and
    write_index at a record boundary, so that checks deep in the reader are reached; sometimes
    the indices are anything at all."""
    dsize = draw(st.integers(4, 40)) * 8
    aligned = st.integers(0, dsize // 8 - 1).map(lambda k: k * 8)
    anything = st.integers(0, 2**32 - 1)

    def mostly(strategy):  # 7 times in 8, else any u32
        return draw(strategy if draw(st.integers(0, 7)) else anything)

    r = mostly(aligned)

    stream, boundaries = b"", []
    while len(stream) < dsize:
        offset8 = draw(st.sampled_from([2, 2, 2, 3, 0, 1, 6]))
        len8 = draw(st.one_of(st.integers(offset8, offset8 + 4), st.integers(0, 12)))
        desc = struct.pack("<HHHHQ", draw(st.integers(0, 0xFFFF)), offset8, len8,
                           draw(st.integers(0, 0xFFFF)), draw(st.integers(0, 2**64 - 1)))
        body = draw(st.binary(min_size=max(len8 * 8 - 16, 0), max_size=max(len8 * 8 - 16, 0)))
        stream += desc + body + draw(st.binary(min_size=8, max_size=8))  # trailer: unchecked
        boundaries.append(len(stream))
    at_boundary = st.sampled_from([b for b in boundaries if b < dsize] or [0]).map(
        lambda n: (r + n) % dsize if r < dsize else n)
    w = mostly(at_boundary if draw(st.integers(0, 3)) else aligned)

    buf = new_ring(dsize)
    start = r % dsize & ~7
    data = stream[:dsize]
    data = data[dsize - start:] + data[: dsize - start]  # the stream begins at read_index
    buf[CONTROL_SIZE:] = data
    struct.pack_into("<IIII", buf, 0, w, r, draw(st.integers(0, 1)), draw(anything))
    struct.pack_into("<I", buf, 64, draw(st.integers(0, 3)))
    return buf


def drain(path: str, buf: bytearray, batches) -> tuple[list[Packet], str | None]:
    """Read until empty or corrupt (committing as it goes): (packets, corruption kind)."""
    inc = IncomingRing(buf)
    packets: list[Packet] = []
    for max_packets in batches:
        try:
            got, _ = read(path, inc, max_packets) if path == "c" else _read_one(inc)
        except RingCorrupt as exc:
            assert inc.broken
            try:
                inc.read()
            except RingCorrupt:
                return packets, exc.kind
            raise AssertionError("a broken ring read again")
        if not got:
            return packets, None
        packets += got
    return packets, None


def _read_one(inc: IncomingRing) -> tuple[list[Packet], bool]:
    packet = inc.read()
    signal = inc.commit()
    return ([] if packet is None else [packet]), signal


@settings(max_examples=400, deadline=None)
@given(ring=hostile_rings(), batches=st.lists(st.integers(1, 4), min_size=60, max_size=60))
def test_readers_survive_any_ring_and_agree(ring, batches):
    dsize = len(ring) - CONTROL_SIZE
    results = {}
    for path in PATHS:
        buf = bytearray(ring)
        results[path] = drain(path, buf, batches if path == "c" else [1] * 60)
        # A reader stores read_index and nothing else.
        assert buf[:4] + buf[8:] == ring[:4] + ring[8:]
        results[path] += (bytes(buf),)

    packets, kind, image = results["py"]
    assert results["c"] == (packets, kind, image)
    for p in packets:
        assert 2 <= p.offset8 <= p.len8
        assert len(p.payload) == (p.len8 - p.offset8) * ALIGN
        assert 0 <= p.type <= 0xFFFF and 0 <= p.flags <= 0xFFFF and 0 <= p.trans_id < 2**64
    assert sum(p.len8 * 8 + 8 for p in packets) < dsize  # never more than was published


@settings(max_examples=300, deadline=None)
@given(
    ring=hostile_rings(),
    payloads=st.lists(st.binary(max_size=40), min_size=1, max_size=8),
    set_pending=st.booleans(),
)
def test_writers_survive_any_ring_and_write_only_free_space(ring, payloads, set_pending):
    dsize = len(ring) - CONTROL_SIZE
    w, r = struct.unpack_from("<II", ring, 0)
    payloads = [p[: dsize - 32] for p in payloads]
    results = {}
    for path in PATHS:
        buf = bytearray(ring)
        try:
            outcome = write(path, OutgoingRing(buf), payloads, set_pending_send_sz=set_pending)
        except RingCorrupt as exc:
            outcome = exc.kind
        results[path] = (outcome, bytes(buf))
        changed = {i for i in range(len(buf)) if buf[i] != ring[i]}
        if isinstance(outcome, str):
            assert outcome in ("write_index", "read_index") and not changed
            continue
        free_arc = {CONTROL_SIZE + (w + i) % dsize for i in range((r - w - 8) % dsize)}
        assert changed <= free_arc | set(range(0, 4)) | set(range(12, 16))
        assert struct.unpack_from("<I", buf, 4)[0] == r  # never the reader's index

    assert results["py"] == results["c"]


@settings(max_examples=100, deadline=None)
@given(ring=hostile_rings(), calls=st.lists(st.sampled_from(
    ["read", "commit", "read_batch", "available", "free", "unmask"]), max_size=8))
def test_reader_api_raises_nothing_but_ring_errors(ring, calls):
    inc = IncomingRing(ring)
    for call in calls:
        try:
            {
                "read": inc.read,
                "commit": inc.commit,
                "read_batch": inc.read_batch,
                "available": lambda: inc.available_bytes,
                "free": lambda: inc.free_bytes,
                "unmask": inc.unmask_interrupts,
            }[call]()
        except RingError:
            pass


def test_model_sanity():
    # The model itself: a 56-byte packet (32-byte payload) fills a 4096-byte ring 73 times.
    model = RingModel(4096)
    assert model.write([bytes(32)] * 80, [0] * 80, 6, 0, False) == (73, True)
    assert DESC_SIZE + 32 + 8 == 56 and model.used == 4088
