"""Packets and ring writes as Linux's Hyper-V guest drivers make them, written from reading the
Linux sources (each function names the file and function it follows), so hvsim's VSPs can be
run against Linux's bytes rather than against hvsim's own VSCs.

Nothing here uses vmbus.ring's writer: LinuxRing puts packets into the guest->host ring the way
drivers/hv/ring_buffer.c hv_ringbuffer_write does, so a packet layout hvsim's writer cannot make
still reaches the VSP."""
from __future__ import annotations

import struct

from vmbus.channel import ChannelEnd, init_ring_gpadl
from vmbus.protocol import PAGE_SIZE

VM_PKT_DATA_INBAND = 6
VM_PKT_DATA_USING_XFER_PAGES = 7
VM_PKT_DATA_USING_GPA_DIRECT = 9
VM_PKT_COMP = 0xB
COMPLETION_REQUESTED = 1

_DESC = struct.Struct("<HHHHQ")   # struct vmpacket_descriptor


def _align8(n: int) -> int:
    return (n + 7) & ~7


def inband(payload: bytes, trans_id: int, flags: int = COMPLETION_REQUESTED,
           kind: int = VM_PKT_DATA_INBAND) -> bytes:
    """drivers/hv/channel.c vmbus_sendpacket (and vmbus_sendpacket_getid): a 16-byte descriptor,
    dataoffset8 = 2, length8 = aligned (16 + bufferlen) / 8, then the buffer, zero padded."""
    total = _align8(16 + len(payload))
    return _DESC.pack(kind, 2, total // 8, flags, trans_id) + payload + bytes(total - 16 - len(payload))


def mpb_desc(ranges: list[tuple[int, int, list[int]]], payload: bytes, trans_id: int) -> bytes:
    """drivers/hv/channel.c vmbus_sendpacket_mpb_desc, as storvsc_drv.c storvsc_queuecommand
    calls it: desc_size = sizeof(struct vmbus_packet_mpb_array) (16 descriptor + reserved u32 +
    rangecount u32 + one hv_mpb_array {len u32, offset u32}) + 8 per PFN; dataoffset8 =
    desc_size / 8; length8 = aligned (desc_size + bufferlen) / 8; COMPLETION_REQUESTED.
    ranges: [(len, offset, pfns)] (storvsc sends one)."""
    head = struct.pack("<II", 0, len(ranges)) + b"".join(
        struct.pack(f"<II{len(pfns)}Q", length, offset, *pfns) for length, offset, pfns in ranges)
    desc_size = 16 + len(head)
    total = _align8(desc_size + len(payload))
    return (_DESC.pack(VM_PKT_DATA_USING_GPA_DIRECT, desc_size // 8, total // 8, COMPLETION_REQUESTED, trans_id)
            + head + payload + bytes(total - desc_size - len(payload)))


def page_buffer(pages: list[tuple[int, int, int]], payload: bytes, trans_id: int) -> bytes:
    """drivers/hv/channel.c vmbus_sendpacket_pagebuffer, as netvsc.c netvsc_send_pkt calls it
    for RNDIS messages outside the send buffer: descsize = sizeof(struct
    vmbus_channel_packet_page_buffer) less the unused hv_page_buffer slots, i.e. 16 + 8 + 16 per
    page {len u32, offset u32, pfn u64}; dataoffset8 = descsize / 8. pages: [(len, offset, pfn)]."""
    head = struct.pack("<II", 0, len(pages)) + b"".join(struct.pack("<IIQ", *page) for page in pages)
    desc_size = 16 + len(head)
    total = _align8(desc_size + len(payload))
    return (_DESC.pack(VM_PKT_DATA_USING_GPA_DIRECT, desc_size // 8, total // 8, COMPLETION_REQUESTED, trans_id)
            + head + payload + bytes(total - desc_size - len(payload)))


class LinuxRing:
    """The guest's end of one channel: a raw guest->host ring written as Linux writes it, the
    host's ChannelEnd over the same memory, and a reader of the host->guest ring."""

    def __init__(self, ring_pages: int = 8):
        self.memory = bytearray(2 * ring_pages * PAGE_SIZE)
        init_ring_gpadl(self.memory, ring_pages)
        self.up = memoryview(self.memory)[: ring_pages * PAGE_SIZE]
        self.signals_to_guest = 0
        self.host = ChannelEnd.host(self.memory, ring_pages, self._guest_signalled)
        self._reader = ChannelEnd.guest(self.memory, ring_pages, self.host.signalled)

    def _guest_signalled(self) -> None:
        self.signals_to_guest += 1

    def write(self, packet: bytes) -> None:
        """drivers/hv/ring_buffer.c hv_ringbuffer_write: copy the packet at write_index (wrapping
        at the data size), then the u64 trailer (old write_index << 32), publish write_index, and
        signal the host only if the ring was empty before (hv_signal_on_write)."""
        data = self.up[PAGE_SIZE:]
        dsize = len(data)
        w, r = struct.unpack_from("<II", self.up, 0)
        blob = packet + struct.pack("<Q", w << 32)
        used = (w - r) % dsize
        assert dsize - used > len(blob), "the test's ring is too small"
        for i, byte in enumerate(blob):
            data[(w + i) % dsize] = byte
        struct.pack_into("<I", self.up, 0, (w + len(blob)) % dsize)
        interrupt_mask = struct.unpack_from("<I", self.up, 8)[0]
        if interrupt_mask == 0 and r == w:
            self.host.signalled()

    def read(self):
        """Every packet the host sent, as hvsim's reader copies them out."""
        return self._reader.receive()
