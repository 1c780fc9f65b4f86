"""VMBus ring buffers in Hyper-V's layout, byte for byte: the writing and the reading end of one
ring held in any writable buffer (bytearray, mmap, memoryview of granted guest pages).

Layout (reference/hyperv-abi.md §4; little-endian):

    control page, 4096 bytes               data area, dsize = len(buffer) - 4096 bytes
      0  write_index      u32  writer        packets back to back, wrapping at dsize:
      4  read_index       u32  reader          descriptor 16 | payload | zero pad to 8 | trailer 8
      8  interrupt_mask   u32  reader        descriptor: type u16, offset8 u16, len8 u16,
     12  pending_send_sz  u32  writer                    flags u16, trans_id u64
     64  feature_bits     u32  writer        trailer: u64, the packet's start offset << 32

Invariants of a valid ring: both indices are multiples of 8 and < dsize; write_index ==
read_index means empty, and the writer never makes them equal by writing, so 8 bytes always stay
free (a ring holds at most dsize - 8 bytes of packets).

Sizes: Hyper-V maps rings as whole pages, but this module accepts any data area that is a
multiple of 8 between MIN_DATA_SIZE and MAX_DATA_SIZE, so that tests can wrap tiny rings; the
channel layer, which builds rings from GPADL pages, is where page multiples are enforced.

Payloads: a packet's payload is bytes [offset8*8, len8*8) of the packet, so it comes back padded
with zeros to a multiple of 8, exactly as a Hyper-V reader sees it; protocols above carry their
own lengths. The bytes between the descriptor and offset8*8 are the packet's header extension:
the range list of a GPA-direct (type 9) or transfer-page (type 7) packet sits there, and offset8
counts it, as Linux computes it ((descriptor + range header + PFNs) / 8). write() takes it as
`header` and a Packet carries it as `header`.

Each end treats the other as hostile. Every shared field is loaded once per use and validated; a
packet is copied out of the ring before it is parsed and every field returned comes from that one
copy. The first inconsistency marks the ring broken: RingCorrupt is raised, and every later call
raises it again. Nothing but a RingError (or a ValueError/TypeError for a caller's own bad
arguments) leaves this module.

`write`/`read` are the pure-Python reference, one packet at a time; `write_packet` (one packet)
and `write_batch`/`read_batch` (many) do the same through the C fast path (native/ring.c), which
follows this module check for check, in one crossing per call, copying each payload once into
the ring and once out of it. `write_call`/`read_call` wrap a device's own C call built on those
ring calls (storvsc's, which packs or decodes its packets in the same crossing) in the same
checks and bookkeeping.
"""
from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import NamedTuple

CONTROL_SIZE = 4096
MIN_DATA_SIZE = 32  # the smallest packet (24 bytes) plus the 8 bytes that always stay free
MAX_DATA_SIZE = 1 << 31  # keeps index + packet length inside a u32
DESC_SIZE = 16
TRAILER_SIZE = 8
ALIGN = 8
MAX_LEN8 = 0xFFFF  # len8 is a u16: a packet (without trailer) is at most 524280 bytes

FEAT_PENDING_SEND_SZ = 1  # feature_bits bit 0
PKT_DATA_INBAND = 6
PKT_COMP = 0xB
FLAG_COMPLETION_REQUESTED = 1

# Control page offsets.
_WRITE_INDEX = 0
_READ_INDEX = 4
_INTERRUPT_MASK = 8
_PENDING_SEND_SZ = 12
_FEATURE_BITS = 64

_U32 = struct.Struct("<I")
_DESC = struct.Struct("<HHHHQ")  # type, offset8, len8, flags, trans_id
_TRAILER = struct.Struct("<Q")


class RingError(Exception):
    """Base class of everything this module raises about a ring."""


class RingFull(RingError):
    """The packet does not fit now; it will once the reader consumes enough."""


class PacketTooLarge(RingError, ValueError):
    """The packet can never fit in this ring (or in a descriptor's u16 len8)."""


class RingCorrupt(RingError):
    """The ring's shared state is inconsistent; the ring is dead from now on.

    `kind` names what was wrong: "write_index" or "read_index" (unaligned or >= data size),
    "descriptor" (offset8 < 2 or offset8 > len8), "truncated" (a packet longer than the bytes
    published), or "tampered" (the peer rewrote the index this end owns).
    """

    def __init__(self, kind: str, detail: str):
        super().__init__(f"ring corrupt ({kind}): {detail}")
        self.kind = kind
        self.detail = detail


class Packet(NamedTuple):
    """One packet as read: descriptor fields and the (8-byte padded) payload."""

    type: int
    flags: int
    trans_id: int
    payload: bytes
    offset8: int  # header length in 8-byte units (2 for a bare descriptor)
    len8: int  # packet length in 8-byte units, trailer excluded
    header: bytes = b""  # bytes [16, offset8*8): a GPA-direct or transfer-page range list

    @property
    def completion_requested(self) -> bool:
        return bool(self.flags & FLAG_COMPLETION_REQUESTED)


def _same(b: bytes) -> bytes:
    return b


class PacketBatch(Sequence):
    """The packets one read_batch() copied out, as a read-only sequence of Packet.

    All of them sit in one buffer that C filled (one copy per packet, out of the ring), which
    belongs to this batch alone. A Packet is parsed from it only when it is looked at; its
    payload and header are bytes, copied from the buffer then. payload_views() hands out the
    payloads as read-only memoryviews of the buffer instead, for a reader that wants no second
    copy. Records were checked by C before they were copied (offset8 >= 2, offset8 <= len8,
    inside the bytes published).
    """

    __slots__ = ("_records", "_count", "_starts")

    def __init__(self, records, count: int):
        self._records = records  # bytes or a read-only memoryview; each record: descriptor |
        # header | payload, len8 * 8 bytes
        self._count = count
        self._starts: list[int] | None = None  # record offsets, built on first indexing

    def __len__(self) -> int:
        return self._count

    def __iter__(self):
        records, pos = self._records, 0
        unpack, new_packet = _DESC.unpack_from, tuple.__new__  # hot loop: skip Packet.__new__
        as_bytes = bytes if type(records) is memoryview else _same
        for _ in range(self._count):
            ptype, offset8, len8, flags, trans_id = unpack(records, pos)
            start, end = pos + offset8 * ALIGN, pos + len8 * ALIGN
            yield new_packet(Packet, (ptype, flags, trans_id, as_bytes(records[start:end]),
                                      offset8, len8, as_bytes(records[pos + DESC_SIZE : start])))
            pos = end

    def payload_views(self):
        """Each packet's payload as a read-only memoryview of the batch's buffer (no copy)."""
        records, pos = memoryview(self._records), 0
        unpack = _DESC.unpack_from
        for _ in range(self._count):
            _, offset8, len8, _, _ = unpack(records, pos)
            end = pos + len8 * ALIGN
            yield records[pos + offset8 * ALIGN : end]
            pos = end

    def __getitem__(self, index):
        if isinstance(index, slice):
            return list(self)[index]
        if self._starts is None:
            starts, pos = [], 0
            for _ in range(self._count):
                starts.append(pos)
                pos += _DESC.unpack_from(self._records, pos)[2] * ALIGN
            self._starts = starts
        pos = self._starts[index]
        ptype, offset8, len8, flags, trans_id = _DESC.unpack_from(self._records, pos)
        start, end = pos + offset8 * ALIGN, pos + len8 * ALIGN
        return Packet(ptype, flags, trans_id, bytes(self._records[start:end]), offset8, len8,
                      bytes(self._records[pos + DESC_SIZE : start]))  # bytes of bytes: no copy

    def __eq__(self, other) -> bool:
        if isinstance(other, (PacketBatch, list, tuple)):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"PacketBatch({list(self)!r})"


def packet_size(payload_len: int) -> int:
    """Ring bytes one packet takes: descriptor, payload padded to 8, trailer."""
    return DESC_SIZE + _pad8(payload_len) + TRAILER_SIZE


def init_ring(buffer, *, feature_bits: int = FEAT_PENDING_SEND_SZ) -> None:
    """Zero a ring's control page (empty ring, interrupts unmasked, no pending send) and set its
    feature bits. The data area is left as it is: an empty ring's data is never read."""
    mem = _as_ring_memory(buffer)
    mem[:CONTROL_SIZE] = bytes(CONTROL_SIZE)
    _U32.pack_into(mem, _FEATURE_BITS, feature_bits)


def _pad8(n: int) -> int:
    return (n + ALIGN - 1) & ~(ALIGN - 1)


def _as_ring_memory(buffer) -> memoryview:
    mem = memoryview(buffer)
    if mem.readonly:
        raise TypeError("a ring needs a writable buffer")
    mem = mem.cast("B")
    dsize = len(mem) - CONTROL_SIZE
    if not MIN_DATA_SIZE <= dsize <= MAX_DATA_SIZE or dsize % ALIGN:
        raise ValueError(
            f"ring buffer of {len(mem)} bytes: need {CONTROL_SIZE} + a data area that is a "
            f"multiple of {ALIGN} in [{MIN_DATA_SIZE}, {MAX_DATA_SIZE}]"
        )
    return mem


def _check_u(name: str, value: int, bits: int) -> None:
    if not 0 <= value < 1 << bits:
        raise ValueError(f"{name} {value!r} is not a u{bits}")


_binding = None


def _core():
    """hypervisor._binding, imported on first use: the pure-Python reference in this module must
    not need the core."""
    global _binding
    if _binding is None:
        from hypervisor import _binding as binding

        _binding = binding
    return _binding


def _read_records(ring, capacity: int, max_packets: int):
    """hv_ring_read_records as IncomingRing.read_call takes a reader: its result is (records,
    count), what read_batch makes its PacketBatch of."""
    count, signal, index, records = _binding.hv_ring_read_records(ring, capacity, max_packets)
    return count, signal, index, (records, count)


class _RingEnd:
    """What both ends share: the memory, index checks, wrapped copies, breaking the ring."""

    __slots__ = ("_mem", "_data", "_dsize", "_broken", "_pinned")

    def __init__(self, buffer):
        self._mem = _as_ring_memory(buffer)
        self._data = self._mem[CONTROL_SIZE:]
        self._dsize = len(self._data)
        self._broken: tuple[str, str] | None = None
        self._pinned = None  # what the C path is given: see _ring()

    def _ring(self):
        """The ring as the C path takes it: pinned once (binding.ring_pin) when its memory
        allows, so that a call need not export the memoryview again; else the memoryview."""
        pinned = self._pinned
        if pinned is None:
            pinned = self._pinned = _core().ring_pin(self._mem) or self._mem
        return pinned

    @property
    def data_size(self) -> int:
        return self._dsize

    @property
    def broken(self) -> bool:
        return self._broken is not None

    @property
    def feature_bits(self) -> int:
        self._alive()
        return self._load(_FEATURE_BITS)

    def _load(self, offset: int) -> int:
        return _U32.unpack_from(self._mem, offset)[0]

    def _store(self, offset: int, value: int) -> None:
        _U32.pack_into(self._mem, offset, value)

    def _alive(self) -> None:
        if self._broken is not None:
            raise RingCorrupt(*self._broken)

    def _break(self, kind: str, detail: str) -> RingCorrupt:
        self._broken = (kind, detail)
        return RingCorrupt(kind, detail)

    def _index(self, offset: int, kind: str) -> int:
        """Load an index once and validate it; the caller uses only the returned value."""
        value = self._load(offset)
        if value >= self._dsize or value % ALIGN:
            raise self._break(kind, f"{kind} {value} is unaligned or >= data size {self._dsize}")
        return value

    def _used(self, w: int, r: int) -> int:
        return (w - r) % self._dsize

    def _copy_in(self, pos: int, data: bytes) -> None:
        first = self._dsize - pos
        if len(data) <= first:
            self._data[pos : pos + len(data)] = data
        else:
            view = memoryview(data)
            self._data[pos:] = view[:first]
            self._data[: len(data) - first] = view[first:]

    def _copy_out(self, pos: int, n: int) -> bytes:
        end = pos + n
        if end <= self._dsize:
            return bytes(self._data[pos:end])
        return bytes(self._data[pos:]) + bytes(self._data[: end - self._dsize])


class OutgoingRing(_RingEnd):
    """The writing end of a ring.

    This end owns write_index and pending_send_sz; it remembers the write_index it published
    and treats any other value found there as tampering. A read_index the peer moved backwards
    or past write_index cannot be told from a valid one; it only shows as less free space, so
    unread bytes are never overwritten.
    """

    __slots__ = ("_w", "_requested")

    def __init__(self, buffer):
        super().__init__(buffer)
        self._w: int | None = None  # write_index as last published by this end (None: adopt)
        self._requested = False  # pending_send_sz was set by a write that found the ring full

    # -- state -------------------------------------------------------------------------------

    @property
    def free_bytes(self) -> int:
        """Ring bytes a packet may take now: a packet fits iff packet_size(len) <= free_bytes."""
        self._alive()
        w = self._own_index()
        r = self._index(_READ_INDEX, "read_index")
        return self._dsize - self._used(w, r) - ALIGN

    @property
    def available_bytes(self) -> int:
        """Bytes written and not yet consumed by the reader (descriptors and trailers included)."""
        self._alive()
        w = self._own_index()
        return self._used(w, self._index(_READ_INDEX, "read_index"))

    @property
    def pending_send_sz(self) -> int:
        self._alive()
        return self._load(_PENDING_SEND_SZ)

    def set_pending_send_sz(self, nbytes: int) -> None:
        """Ask the reader to signal once more than `nbytes` ring bytes are free (0: never).

        The reader honours it only if feature_bits has FEAT_PENDING_SEND_SZ."""
        self._alive()
        _check_u("pending_send_sz", nbytes, 32)
        self._store(_PENDING_SEND_SZ, nbytes)
        self._requested = False

    def clear_pending_send_sz(self) -> None:
        self.set_pending_send_sz(0)

    # -- writing -----------------------------------------------------------------------------

    def write(
        self,
        payload,
        *,
        packet_type: int = PKT_DATA_INBAND,
        flags: int = 0,
        trans_id: int = 0,
        set_pending_send_sz: bool = False,
        header=b"",
    ) -> bool:
        """Append one packet; return whether the reader must be signalled.

        `header` (a multiple of 8 bytes) goes between the descriptor and the payload and is
        counted in offset8, as a GPA-direct or transfer-page packet's range list is.
        Raises RingFull if it does not fit now. With set_pending_send_sz, pending_send_sz is
        first set to the packet's size, so the reader signals once that much is free; the next
        successful write clears it again.
        """
        self._alive()
        _check_u("packet type", packet_type, 16)
        _check_u("flags", flags, 16)
        _check_u("trans_id", trans_id, 64)
        if len(header) % ALIGN:
            raise ValueError(f"a {len(header)}-byte packet header is not a multiple of {ALIGN}")
        total = self._packet_size(len(header) + len(payload))
        w = self._own_index()
        if not self._fits(w, total, set_pending_send_sz):
            raise RingFull(f"{total}-byte packet, {self.free_bytes} bytes free")

        body = total - TRAILER_SIZE
        offset8 = (DESC_SIZE + len(header)) // ALIGN
        packet = b"".join(
            (
                _DESC.pack(packet_type, offset8, body // ALIGN, flags, trans_id),
                header,
                payload,
                bytes(body - DESC_SIZE - len(header) - len(payload)),
                _TRAILER.pack(w << 32),
            )
        )
        if len(packet) != total:  # a memoryview whose items are not bytes
            raise TypeError("payload must be a bytes-like object of bytes")
        self._copy_in(w, packet)
        new_w = (w + total) % self._dsize
        self._store(_WRITE_INDEX, new_w)
        self._after_publish(new_w)
        # Signal only on empty -> non-empty and only if the reader has not masked interrupts
        # (Hyper-V treats other interrupts as abuse). read_index is loaded after publishing: a
        # reader that drained the ring meanwhile and went idle must still be woken.
        return self._load(_INTERRUPT_MASK) == 0 and self._load(_READ_INDEX) == w

    def write_packet(
        self,
        payload,
        *,
        packet_type: int = PKT_DATA_INBAND,
        flags: int = 0,
        trans_id: int = 0,
        set_pending_send_sz: bool = False,
        header=b"",
    ) -> bool:
        """write() through the C path (one crossing, one copy of the payload): the same packet,
        bytes, signalling and errors. Only a packet that fits goes through C; anything else (a
        full ring, a bad argument) is handed to write(), which decides as the reference does."""
        core = _binding or _core()
        try:
            written, signal = self.write_call(core.hv_ring_write_packet, payload, header,
                                              packet_type, flags, trans_id)
        except (ValueError, TypeError):
            written = 0  # C wrote nothing; write() raises the reference's error
        if not written:
            return self.write(payload, packet_type=packet_type, flags=flags, trans_id=trans_id,
                              set_pending_send_sz=set_pending_send_sz, header=header)
        return signal

    def write_call(self, call, *args) -> tuple[int, bool]:
        """write_packet's checks and bookkeeping around a device's own C writer (storvsc's:
        hypervisor._binding.hv_storvsc_submit), which packs its packet and writes it with
        hv_ring_write_packet in the same crossing: call(ring, *args) -> (written, signal,
        write_index). Returns (written, whether the reader must be signalled); on 0 nothing was
        written and the caller takes write() (the reference) for the same packet."""
        if self._broken is not None:
            raise RingCorrupt(*self._broken)
        if _U32.unpack_from(self._mem, _WRITE_INDEX)[0] != self._w:
            self._own_index()  # adopts the first time; else raises (tampered or invalid)
        core = _binding or _core()
        try:
            written, signal, index = call(self._pinned or self._ring(), *args)
        except core.RingCorruptError as exc:
            raise self._break(exc.kind, str(exc)) from None
        if not written:
            return 0, False
        self._after_publish(index)
        return written, signal

    def write_batch(
        self,
        payloads: Sequence,
        *,
        packet_type: int = PKT_DATA_INBAND,
        flags: int = 0,
        trans_ids: Sequence[int] | None = None,
        set_pending_send_sz: bool = False,
    ) -> tuple[int, bool]:
        """Append as many of `payloads` as fit, in order, through the C fast path, publishing
        write_index once; return (number written, whether the reader must be signalled).

        Same packets, bytes and signalling as calling write() for each. With
        set_pending_send_sz, a short write leaves pending_send_sz set to the size of the first
        packet not written. Raises PacketTooLarge (writing nothing) if any can never fit.
        """
        core = _core()
        self._alive()
        _check_u("packet type", packet_type, 16)
        _check_u("flags", flags, 16)
        if trans_ids is not None and len(trans_ids) != len(payloads):
            raise ValueError(f"{len(trans_ids)} trans_ids for {len(payloads)} payloads")

        written, signal = 0, False
        while True:
            self._own_index()  # validates write_index and that the peer left it alone
            rest = payloads[written:] if written else payloads
            ids = None if trans_ids is None else trans_ids[written:]
            try:
                result = core.hv_ring_write_batch(
                    self._ring(), rest, packet_type=packet_type, flags=flags, trans_ids=ids
                )
            except core.RingCorruptError as exc:
                raise self._break(exc.kind, str(exc)) from None
            except ValueError:
                # C checks every length before writing anything: name the one that can never fit.
                for p in rest:
                    self._packet_size(len(p))
                raise
            if result.count:
                self._after_publish(result.index)
                signal |= result.signal
            written += result.count
            if written == len(payloads):
                return written, signal
            total = packet_size(len(payloads[written]))
            if not (set_pending_send_sz and self._fits(self._w, total, True)):
                return written, signal

    # -- internals ---------------------------------------------------------------------------

    def _packet_size(self, payload_len: int) -> int:
        total = packet_size(payload_len)
        if (total - TRAILER_SIZE) // ALIGN > MAX_LEN8 or total > self._dsize - ALIGN:
            raise PacketTooLarge(
                f"a {payload_len}-byte payload needs {total} ring bytes; this ring holds at most "
                f"{self._dsize - ALIGN} and a descriptor {MAX_LEN8 * ALIGN}"
            )
        return total

    def _own_index(self) -> int:
        w = self._index(_WRITE_INDEX, "write_index")
        if self._w is None:
            self._w = w
        elif w != self._w:
            raise self._break("tampered", f"write_index is {w}, this writer published {self._w}")
        return w

    def _fits(self, w: int, total: int, request_space: bool) -> bool:
        # free > total, not >=: the writer must never make write_index == read_index.
        r = self._index(_READ_INDEX, "read_index")
        if self._dsize - self._used(w, r) > total:
            return True
        if not request_space:
            return False
        self._store(_PENDING_SEND_SZ, total)
        self._requested = True
        # Look again after publishing the request: a reader that freed space before it saw the
        # request will not signal, and the writer would wait forever.
        r = self._index(_READ_INDEX, "read_index")
        return self._dsize - self._used(w, r) > total

    def _after_publish(self, new_w: int) -> None:
        """Bookkeeping after write_index was stored (by write() or by the C path)."""
        self._w = new_w
        if self._requested:  # the space this end asked for has been used
            self._store(_PENDING_SEND_SZ, 0)
            self._requested = False


class IncomingRing(_RingEnd):
    """The reading end of a ring.

    Reading is two steps, as in Linux's hv_pkt_iter: read() copies packets out and moves a
    private cursor; commit() publishes the cursor as read_index (freeing the space for the
    writer) and says whether the writer must be signalled. Call commit() after each batch of
    read()s; read_batch() does both. This end owns read_index and interrupt_mask, remembers the
    read_index it published, and treats any other value found there as tampering.
    """

    __slots__ = ("_cursor", "_published")

    def __init__(self, buffer):
        super().__init__(buffer)
        self._cursor: int | None = None  # where the next read() starts
        self._published: int | None = None  # read_index as last stored by this end (None: adopt)

    # -- state -------------------------------------------------------------------------------

    @property
    def available_bytes(self) -> int:
        """Bytes written and not yet read by this end (descriptors and trailers included)."""
        self._alive()
        self._own_index()
        return self._used(self._index(_WRITE_INDEX, "write_index"), self._cursor)

    @property
    def free_bytes(self) -> int:
        """Ring bytes a writer's packet may take now (reads not yet committed count as used)."""
        self._alive()
        r = self._own_index()
        return self._dsize - self._used(self._index(_WRITE_INDEX, "write_index"), r) - ALIGN

    @property
    def interrupt_mask(self) -> bool:
        self._alive()
        return self._load(_INTERRUPT_MASK) != 0

    def mask_interrupts(self) -> None:
        """Tell the writer not to signal (while this end is draining the ring anyway)."""
        self._alive()
        self._store(_INTERRUPT_MASK, 1)

    def unmask_interrupts(self) -> bool:
        """Let the writer signal again; return True if packets arrived while masked, which
        raised no signal and must be read now."""
        self._alive()
        self._store(_INTERRUPT_MASK, 0)
        return self.available_bytes > 0

    # -- reading -----------------------------------------------------------------------------

    def read(self) -> Packet | None:
        """Copy the next packet out and advance the cursor; None when the ring is empty."""
        self._alive()
        self._own_index()
        w = self._index(_WRITE_INDEX, "write_index")
        pos = self._cursor
        avail = self._used(w, pos)
        if avail == 0:
            return None
        if avail < DESC_SIZE + TRAILER_SIZE:
            raise self._break("truncated", f"{avail} bytes published at {pos}, less than a packet")
        # The one snapshot: every check and every returned field comes from these two copies.
        ptype, offset8, len8, flags, trans_id = _DESC.unpack(self._copy_out(pos, DESC_SIZE))
        if offset8 < DESC_SIZE // ALIGN or offset8 > len8:
            raise self._break("descriptor", f"offset8 {offset8}, len8 {len8} at {pos}")
        length = len8 * ALIGN
        if length + TRAILER_SIZE > avail:
            raise self._break("truncated", f"{length}-byte packet at {pos}, {avail} published")
        body = self._copy_out((pos + DESC_SIZE) % self._dsize, length - DESC_SIZE)
        self._cursor = (pos + length + TRAILER_SIZE) % self._dsize
        start = offset8 * ALIGN - DESC_SIZE
        return Packet(ptype, flags, trans_id, body[start:], offset8, len8, body[:start])

    def commit(self) -> bool:
        """Publish what read() consumed as read_index; return whether the writer must be
        signalled (its pending_send_sz request became satisfied)."""
        self._alive()
        r = self._own_index()
        consumed = self._used(self._cursor, r)
        if consumed == 0:
            return False
        self._store(_READ_INDEX, self._cursor)
        self._published = self._cursor
        return self._writer_signal(self._cursor, consumed)

    def read_batch(self, max_packets: int = 1024) -> tuple[PacketBatch, bool]:
        """Read up to max_packets packets through the C fast path and commit them; return
        (packets, whether the writer must be signalled). Same packets and signalling as read()
        repeated then commit(); a corrupt packet after good ones is raised by the next call.

        One crossing into C per call; each packet is copied once, out of the ring into memory
        that belongs to the returned PacketBatch, which parses a packet only when it is looked
        at (see PacketBatch)."""
        if self._broken is not None:
            raise RingCorrupt(*self._broken)
        if not 0 <= max_packets < 1 << 31:
            raise ValueError(f"max_packets {max_packets} out of range")
        _core()
        (records, count), signal = self.read_call(_read_records, max_packets)
        return PacketBatch(records, count), signal

    def read_call(self, call, *args):
        """read_batch through a device's own C reader (storvsc's: hv_storvsc_complete), which
        reads with hv_ring_read_batch and decodes what it read in the same crossing:
        call(ring, capacity, *args) -> (count, signal, read_index, result), `capacity` the bytes
        published, as read_batch computes it. The same checks, commit and errors as read_batch;
        returns (result, whether the writer must be signalled)."""
        if self._broken is not None:
            raise RingCorrupt(*self._broken)
        mem = self._mem
        r = _U32.unpack_from(mem, _READ_INDEX)[0]
        if r != self._published:
            r = self._own_index()  # adopts the first time; else raises (tampered or invalid)
        signal = self.commit() if self._cursor != r else False  # C starts at read_index
        # The records of a batch never take more than the bytes published (each drops its
        # trailer), so that much memory always holds them. An invalid write_index gives 0 here
        # and is reported by C.
        w = _U32.unpack_from(mem, _WRITE_INDEX)[0]
        dsize = self._dsize
        capacity = (w - self._published) % dsize if w < dsize and not w % ALIGN else 0
        core = _binding or _core()
        try:
            count, more_signal, index, result = call(self._pinned or self._ring(), capacity, *args)
        except core.RingCorruptError as exc:
            raise self._break(exc.kind, str(exc)) from None
        self._cursor = self._published = index
        return result, signal or more_signal

    # -- internals ---------------------------------------------------------------------------

    def _own_index(self) -> int:
        r = self._index(_READ_INDEX, "read_index")
        if self._published is None:
            self._published = self._cursor = r
        elif r != self._published:
            raise self._break("tampered", f"read_index is {r}, this reader stored {self._published}")
        return r

    def _writer_signal(self, r: int, consumed: int) -> bool:
        # Only if the writer asked (feature bit + pending_send_sz) and free space crossed it
        # with this commit: free before <= pending < free now. interrupt_mask is not consulted
        # (Linux does not either: it is the reader's own request not to be signalled).
        # N.B. pending is masked to 8 as OpenVMM does (some peers set ring size - 1); since free
        # space is always a multiple of 8 the mask changes no outcome, it only names the intent.
        if not self._load(_FEATURE_BITS) & FEAT_PENDING_SEND_SZ:
            return False
        pending = self._load(_PENDING_SEND_SZ) & ~(ALIGN - 1)
        if pending == 0:
            return False
        # write_index again: the writer may have appended since the reads. An invalid one is
        # left for the next call to report.
        w = self._load(_WRITE_INDEX)
        if w >= self._dsize or w % ALIGN:
            return False
        free_now = self._dsize - self._used(w, r)
        free_before = max(free_now - consumed, 0)
        return free_before <= pending < free_now
