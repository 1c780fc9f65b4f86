"""VMBus channels as a device sees them: what a device offers (OfferSpec), what an open asks of it
(OpenRequest), a channel end (two rings in the ring GPADL's pages plus a signal), and in-process
connected pairs for testing a device without a host.

Ring GPADL layout (reference/hyperv-abi.md §3.4, OpenChannel): one GPADL covers both rings; the
guest->host ("upstream") ring takes pages [0, downstream_page_offset), the host->guest
("downstream") ring the pages from there to the end. Each ring is a 4 KiB control page plus at
least one data page.

This module sits below server and client (it imports neither): `Loopback` drives a server and a
client that the caller builds and attaches, so the control plane can run back to back too.
"""
from __future__ import annotations

import uuid
from collections import deque
from dataclasses import dataclass
from typing import Callable

from vmbus.protocol import (
    PAGE_SIZE,
    STATUS_SUCCESS,
    STATUS_UNSUCCESSFUL,
    USER_DEFINED_SIZE,
    GpaRange,
    OfferChannel,
)
from vmbus.ring import IncomingRing, OutgoingRing, Packet, PacketBatch, init_ring
from vmbus.ring import _DESC

_unpack_desc = _DESC.unpack_from
_new_tuple = tuple.__new__
_STOP_EMPTY, _STOP_CORRUPT = 0, 3  # native/ring.h HV_RING_STOP_*
_ring_send = _ring_receive = None  # hypervisor._binding's, bound by the first general-path call


def _bind_core() -> None:
    """Bind the core's one-packet calls (the first send or receive has loaded the core by then;
    this module itself must not import it)."""
    global _ring_send, _ring_receive
    from hypervisor import _binding

    _ring_send, _ring_receive = _binding.hv_ring_send, _binding.hv_ring_receive

MIN_RING_PAGES = 2  # control page + one data page


@dataclass(frozen=True)
class OfferSpec:
    """What a host-side device offers; the server adds the relid and the connection id."""

    interface_id: uuid.UUID  # device class
    instance_id: uuid.UUID
    user_def: bytes = b""
    flags: int = 0
    mmio_megabytes: int = 0
    sub_channel_index: int = 0
    is_dedicated_interrupt: bool = False
    connection_id: int | None = None  # None: the server picks one from the relid

    def __post_init__(self) -> None:
        if len(self.user_def) > USER_DEFINED_SIZE:
            raise ValueError(f"user_def of {len(self.user_def)} bytes > {USER_DEFINED_SIZE}")

    def to_message(self, relid: int, connection_id: int) -> OfferChannel:
        return OfferChannel(
            self.interface_id, self.instance_id, relid, flags=self.flags,
            mmio_megabytes=self.mmio_megabytes, user_def=self.user_def,
            sub_channel_index=self.sub_channel_index,
            is_dedicated_interrupt=self.is_dedicated_interrupt, connection_id=connection_id,
        )


@dataclass(frozen=True)
class OpenRequest:
    """A guest's OpenChannel after the server checked it against its ring GPADL."""

    relid: int
    open_id: int
    ring_gpadl_id: int
    ring_ranges: tuple[GpaRange, ...]  # whole pages; pfns in GPADL order
    downstream_page_offset: int
    target_vp: int
    user_data: bytes

    @property
    def ring_pfns(self) -> tuple[int, ...]:
        return tuple(p for r in self.ring_ranges for p in r.pfns)


def ring_layout_error(page_count: int, downstream_page_offset: int) -> str | None:
    """Why a ring GPADL of `page_count` pages cannot be split at the offset, or None if it can."""
    if downstream_page_offset < MIN_RING_PAGES:
        return f"upstream ring of {downstream_page_offset} pages < {MIN_RING_PAGES}"
    if page_count - downstream_page_offset < MIN_RING_PAGES:
        return (f"downstream ring of {page_count - downstream_page_offset} pages "
                f"< {MIN_RING_PAGES}")
    return None


def split_rings(memory, downstream_page_offset: int) -> tuple[memoryview, memoryview]:
    """The (upstream, downstream) ring buffers inside a ring GPADL's memory, in GPADL order."""
    mem = memoryview(memory).cast("B")
    pages, rest = divmod(len(mem), PAGE_SIZE)
    problem = "not whole pages" if rest else ring_layout_error(pages, downstream_page_offset)
    if problem:
        raise ValueError(f"ring GPADL of {len(mem)} bytes at offset {downstream_page_offset}: "
                         f"{problem}")
    cut = downstream_page_offset * PAGE_SIZE
    return mem[:cut], mem[cut:]


class ChannelEnd:
    """One end of an open channel: the ring it writes, the ring it reads, and a way to signal
    the other end. send() and receive() signal by the ring rules (ring.py)."""

    def __init__(self, outgoing, incoming, signal: Callable[[], None]):
        self.outgoing = OutgoingRing(outgoing)
        self.incoming = IncomingRing(incoming)
        self._signal = signal
        self.on_signal: Callable[[], None] | None = None  # called when the peer signals
        # A device's own reader (storvsc's one-crossing completions): reader(incoming) ->
        # (packets, signal), `packets` a sequence of Packet; receive() returns it instead.
        self.reader: Callable[[IncomingRing], tuple] | None = None

    @classmethod
    def host(cls, memory, downstream_page_offset: int, signal: Callable[[], None]) -> "ChannelEnd":
        up, down = split_rings(memory, downstream_page_offset)
        return cls(down, up, signal)

    @classmethod
    def guest(cls, memory, downstream_page_offset: int, signal: Callable[[], None]) -> "ChannelEnd":
        up, down = split_rings(memory, downstream_page_offset)
        return cls(up, down, signal)

    def send(self, payload, **kw) -> None:
        """Write one packet (RingFull if it does not fit) and signal if the rules say so."""
        out = self.outgoing
        pin = out._pinned
        # The common send, a bare in-band packet of bytes, in one crossing that also checks the
        # write_index this end published (hv_ring_send, the same packet write_packet writes). It
        # needs the ring pinned, this end's index adopted and no space request outstanding; any
        # refusal changed nothing, and write_packet then decides (and raises) as always.
        if (pin is not None and not kw and type(payload) is bytes and out._broken is None
                and not out._requested and out._w is not None and _ring_send is not None):
            rc = _ring_send(pin.span, out._w, payload, len(payload))
            if rc > 0:
                out._w = rc >> 2
                if rc & 2:
                    self._signal()
                return
        elif _ring_send is None and pin is not None:
            _bind_core()
        if out.write_packet(payload, **kw):
            self._signal()

    def send_call(self, call, *args) -> int:
        """Write one packet with a device's own C writer (OutgoingRing.write_call) and signal if
        the rules say so; returns 1, or 0 if it did not fit (nothing written)."""
        written, signal = self.outgoing.write_call(call, *args)
        if signal:
            self._signal()
        return written

    def receive(self) -> list[Packet]:
        """Every packet available now, copied out in batches by the core's ring fast path (or
        by the device's `reader`); signals the writer if that freed the space it waits for."""
        if self.reader is not None:
            packets, signal = self.reader(self.incoming)
            if signal:
                self._signal()
            return packets
        inc = self.incoming
        pin = inc._pinned
        packets: list[Packet] = []
        signal = False
        # The first batch in one crossing that also checks the read_index this end published
        # (hv_ring_receive, the same records read_batch copies out), into the pin's scratch
        # memory; it needs the ring pinned and nothing read and left uncommitted. One packet (the
        # one-per-call case) is parsed here; more go through PacketBatch; a batch that stopped
        # short of the ring's end (the scratch or the count was full) goes on below.
        if _ring_receive is None and pin is not None:
            _bind_core()
        if pin is not None and inc._broken is None and inc._cursor == inc._published is not None:
            rc = _ring_receive(pin.span, inc._published, 1024)
            if rc >= 0:
                inc._cursor = inc._published = rc >> 32
                records = pin.scratch_bytes
                if rc & 0x7FFFF == 1:  # one packet, ring now empty, no signal
                    ptype, offset8, len8, flags, trans_id = _unpack_desc(records)
                    start = offset8 * 8
                    return [_new_tuple(Packet, (ptype, flags, trans_id, records[start : len8 * 8],
                                                offset8, len8,
                                                records[16:start] if offset8 != 2 else b""))]
                count, stop = rc & 0xFFFF, rc >> 17 & 3
                packets += PacketBatch(records[: rc >> 19 & 0x1FFF], count)
                signal = bool(rc & 0x10000)
                if stop == _STOP_EMPTY or stop == _STOP_CORRUPT:
                    if signal:
                        self._signal()
                    return packets
        while True:
            batch, more_signal = self.incoming.read_batch()
            signal |= more_signal
            packets += batch
            if len(batch) < 1024:
                break
        if signal:
            self._signal()
        return packets

    def signalled(self) -> None:
        if self.on_signal is not None:
            self.on_signal()


def init_ring_gpadl(memory, downstream_page_offset: int) -> None:
    """Initialise both rings of a ring GPADL (the guest does this before OpenChannel)."""
    for ring in split_rings(memory, downstream_page_offset):
        init_ring(ring)


def connected_pair(ring_pages: int = 4) -> tuple[ChannelEnd, ChannelEnd]:
    """(host end, guest end) of one channel over a private bytearray, two rings of
    `ring_pages` pages each, signals delivered at once to the other end's on_signal."""
    memory = bytearray(2 * ring_pages * PAGE_SIZE)
    init_ring_gpadl(memory, ring_pages)
    ends: list[ChannelEnd] = []
    host = ChannelEnd.host(memory, ring_pages, lambda: ends[1].signalled())
    guest = ChannelEnd.guest(memory, ring_pages, lambda: ends[0].signalled())
    ends.extend((host, guest))
    return host, guest


# -- the control plane back to back ---------------------------------------------------------------


@dataclass
class _Grant:
    relid: int
    ranges: tuple[GpaRange, ...]


class Loopback:
    """A child's memory and the wiring between a VMBus server and client, without a host.

    `host` is a server notifier and `guest` a client notifier; the messages each side sends go
    into one FIFO that run() delivers in order, one message per step. The host side grants a
    GPADL only if every PFN lies in `memory` (the core's ownership check), and opens a channel
    by building a ChannelEnd over the ring pages, which here must be contiguous since the
    memory is one buffer. The guest allocates and initialises ring pages with alloc_ring().
    Everything both sides did is appended to `events`.
    """

    def __init__(self, pages: int = 64):
        self.pages = pages
        self.memory = bytearray(pages * PAGE_SIZE)
        self.queue: deque[tuple[bool, bytes, int | None]] = deque()  # (to host, message, conn)
        self.grants: dict[int, _Grant] = {}  # gpadl id -> what the host was granted
        self.host_ends: dict[int, ChannelEnd] = {}  # relid -> host end of an open channel
        self.guest_ends: dict[int, ChannelEnd] = {}
        self.events: list[tuple] = []
        self.server = self.client = None
        self.host = _LoopbackHost(self)
        self.guest = _LoopbackGuest(self)
        self._next_free = 0  # bump allocator over memory
        self._rings: dict[int, tuple[memoryview, int]] = {}  # relid -> (ring memory, offset)

    def attach(self, server, client) -> None:
        self.server, self.client = server, client

    def run(self, max_steps: int = 10_000) -> int:
        """Deliver queued messages until none are left; return how many were delivered."""
        steps = 0
        while self.queue:
            if steps == max_steps:
                raise RuntimeError(f"still {len(self.queue)} messages after {max_steps} steps")
            to_host, data, connection = self.queue.popleft()
            if to_host:
                self.server.handle_message(data, connection_id=connection)
            else:
                self.client.handle_message(data)
            steps += 1
        return steps

    def alloc_ring(self, up_pages: int = 2, down_pages: int = 2) -> tuple[list[int], int]:
        """Guest side: contiguous fresh pages for a ring GPADL, both rings initialised;
        returns (pfns, downstream_page_offset) for VmbusClient.open_channel."""
        n = up_pages + down_pages
        if self._next_free + n > self.pages:
            raise MemoryError("loopback memory exhausted")
        pfns = list(range(self._next_free, self._next_free + n))
        self._next_free += n
        init_ring_gpadl(self._pages_of(pfns), up_pages)
        return pfns, up_pages

    def guest_end(self, relid: int) -> ChannelEnd:
        """The guest's end of an open channel."""
        if relid not in self.guest_ends:
            memory, offset = self._rings[relid]
            self.guest_ends[relid] = ChannelEnd.guest(memory, offset, self.host_ends[relid].signalled)
        return self.guest_ends[relid]

    def _pages_of(self, pfns) -> memoryview | None:
        """The memory of contiguous in-range `pfns`, or None."""
        pfns = list(pfns)
        if not pfns or pfns != list(range(pfns[0], pfns[0] + len(pfns))):
            return None
        if pfns[0] < 0 or pfns[-1] >= self.pages:
            return None
        return memoryview(self.memory)[pfns[0] * PAGE_SIZE : (pfns[-1] + 1) * PAGE_SIZE]


class _LoopbackHost:
    """Loopback's server notifier."""

    def __init__(self, loop: Loopback):
        self.loop = loop

    def send(self, message: bytes, target_vp: int, sint: int) -> None:
        self.loop.events.append(("to_guest", message))
        self.loop.queue.append((False, message, None))

    def connect(self, version: int, target_vp: int, sint: int, monitor_pages) -> bool:
        self.loop.events.append(("connect", version))
        return True

    def disconnect(self) -> None:
        self.loop.events.append(("disconnect",))

    def create_gpadl(self, relid: int, gpadl_id: int, ranges) -> int:
        if any(not 0 <= p < self.loop.pages for r in ranges for p in r.pfns):
            return STATUS_UNSUCCESSFUL  # not the child's page: the core refuses the grant
        self.loop.grants[gpadl_id] = _Grant(relid, tuple(ranges))
        return STATUS_SUCCESS

    def teardown_gpadl(self, relid: int, gpadl_id: int) -> None:
        del self.loop.grants[gpadl_id]

    def open_channel(self, request: OpenRequest) -> int:
        memory = self.loop._pages_of(request.ring_pfns)
        if memory is None:
            return STATUS_UNSUCCESSFUL
        relid = request.relid
        self.loop._rings[relid] = (memory, request.downstream_page_offset)
        self.loop.host_ends[relid] = ChannelEnd.host(
            memory, request.downstream_page_offset, lambda: self.loop.guest_end(relid).signalled()
        )
        return STATUS_SUCCESS

    def close_channel(self, relid: int) -> None:
        self.loop.host_ends.pop(relid, None)
        self.loop.guest_ends.pop(relid, None)
        self.loop._rings.pop(relid, None)

    def log(self, event: str, **fields) -> None:
        self.loop.events.append(("host_log", event, fields))


class _LoopbackGuest:
    """Loopback's client notifier."""

    def __init__(self, loop: Loopback):
        self.loop = loop

    def send(self, message: bytes, connection_id: int) -> None:
        self.loop.events.append(("to_host", message))
        self.loop.queue.append((True, message, connection_id))

    def event(self, event) -> None:
        self.loop.events.append(("guest_event", event))

    def log(self, event: str, **fields) -> None:
        self.loop.events.append(("guest_log", event, fields))
