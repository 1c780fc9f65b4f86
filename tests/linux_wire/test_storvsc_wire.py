"""storvsp against the bytes Linux's storvsc sends (drivers/scsi/storvsc_drv.c over
drivers/hv/channel.c), and hvsim's storvsc framing its packets as Linux does."""
import struct

import pytest

from drivers.device import ManualContext
from drivers.storage import protocol as p
from drivers.storage.protocol import NtStatus, Operation, ScsiRequest, SrbStatus
from drivers.storage.vhd import VirtualDisk
from drivers.storage.vsc import StorVsc
from drivers.storage.vsp import StorVsp
from tests.linux_wire import linux
from vmbus.channel import connected_pair

MS = 1_000_000
POOL_GPADL, POOL_FIRST, POOL_PAGES = 0xE1E11, 0x300, 8
INIT_ID = 2**64 - 3   # storvsc's VMBUS_RQST_INIT


def vstor(operation, body=b"", flags=p.REQUEST_COMPLETION_FLAG):
    """storvsc_drv.c struct vstor_packet, packed: operation, flags, status, 52-byte union."""
    return struct.pack("<III", operation, flags, 0) + body.ljust(52, b"\0")


def srb(cdb: bytes, data_in: int, length: int) -> bytes:
    """storvsc_drv.c storvsc_queuecommand's vmscsi_request (Win8 layout, 52 bytes): length
    0x34, target/LUN 0, cdb_length, sense_info_length 0x14, data_in, data_transfer_length, cdb."""
    body = struct.pack("<HBBBBBBBBBBI", 0x34, 0, 0, 0, 0, 0, 0, len(cdb), 0x14, data_in, 0, length)
    return vstor(Operation.EXECUTE_SRB, body + cdb.ljust(20, b"\0") + bytes(16))


@pytest.fixture
def rig(tmp_path):
    pool = bytearray(POOL_PAGES * 4096)
    pfns = list(range(POOL_FIRST, POOL_FIRST + POOL_PAGES))
    ring = linux.LinuxRing()
    with VirtualDisk.create(tmp_path / "d.vhd", 4 << 20, "dynamic", write_barriers=False) as disk:
        resolve = lambda gid: (memoryview(pool), pfns) if gid == POOL_GPADL else None  # noqa: E731
        ctx = ManualContext()
        vsp = StorVsp(ring.host, {"disk": disk, "resolve_gpadl": resolve}, ctx)
        ring.host.on_signal = lambda: vsp.on_packets(ring.host.receive())
        vsp.on_open()
        yield ring, vsp, ctx, pool


def complete(ring, ctx):
    ctx.advance(1 * MS)
    return {pk.trans_id: pk for pk in ring.read()}


def test_storvsp_takes_linux_srbs_with_the_range_list_in_offset8(rig):
    ring, vsp, ctx, pool = rig
    # storvsc_channel_init: each step an in-band vstor_packet (vmbus_sendpacket).
    steps = [vstor(Operation.BEGIN_INITIALIZATION),
             vstor(Operation.QUERY_PROTOCOL_VERSION, struct.pack("<HH", p.VERSION_WIN10, 0)),
             vstor(Operation.QUERY_PROPERTIES),
             vstor(Operation.ANNOUNCE_IO_POOL, p.encode_pool(POOL_GPADL)),   # hvsim's own step
             vstor(Operation.END_INITIALIZATION)]
    for step in steps:
        ring.write(linux.inband(step, INIT_ID))
        (reply,) = complete(ring, ctx).values()
        assert p.decode_packet(reply.payload).status == NtStatus.SUCCESS
    # A one-sector write from pool page 2, offset 512, then the read back to page 5.
    pool[2 * 4096 + 512: 2 * 4096 + 1024] = b"L" * 512
    write = srb(p.cdb_rw(True, 7, 1), p.DATA_OUT, 512)
    packet = linux.mpb_desc([(512, 512, [POOL_FIRST + 2])], write, trans_id=1)
    assert struct.unpack_from("<HHH", packet) == (9, (16 + 8 + 8 + 8) // 8, (40 + 64) // 8)
    ring.write(packet)
    read = srb(p.cdb_rw(False, 7, 1), p.DATA_IN, 512)
    ring.write(linux.mpb_desc([(512, 0, [POOL_FIRST + 5])], read, trans_id=2))
    replies = complete(ring, ctx)
    for trans_id in (1, 2):
        vp = p.decode_packet(replies[trans_id].payload)
        assert vp.status == NtStatus.SUCCESS
        assert ScsiRequest.decode(vp.body).srb_status & p.SRB_STATUS_MASK == SrbStatus.SUCCESS
    assert pool[5 * 4096: 5 * 4096 + 512] == b"L" * 512
    assert vsp.refused == 0


def test_storvsc_frames_its_srbs_as_linux_does(tmp_path):
    """hvsim's storvsc: each data SRB is byte for byte what vmbus_sendpacket_mpb_desc makes of
    its ranges and its vstor_packet."""
    host_end, guest_end = connected_pair(16)
    pool = bytearray(16 * 4096)
    pfns = list(range(0x100, 0x110))
    sent = []
    with VirtualDisk.create(tmp_path / "d.vhd", 4 << 20, "dynamic", write_barriers=False) as disk:
        vsp = StorVsp(host_end, {"disk": disk, "resolve_gpadl": lambda g: (memoryview(pool), pfns)},
                      ManualContext())
        guest_ctx = ManualContext()
        vsc = StorVsc(guest_end, {"grant_pages": lambda n, done: done(0xE1E11, pfns[:n], memoryview(pool)),
                                  "pool_pages": 16}, guest_ctx)

        def host_signalled():
            packets = host_end.receive()
            sent.extend(packets)
            vsp.on_packets(packets)

        host_end.on_signal = host_signalled
        guest_end.on_signal = lambda: vsc.on_packets(guest_end.receive())
        vsc.on_open()
        vsp.context.advance(1 * MS)
        assert vsc.ready, vsc.error
    data = [pk for pk in sent if pk.type == linux.VM_PKT_DATA_USING_GPA_DIRECT]
    assert data
    for pk in data:
        raw = struct.pack("<HHHHQ", pk.type, pk.offset8, pk.len8, pk.flags, pk.trans_id) + pk.header + pk.payload
        _, count = struct.unpack_from("<II", pk.header)
        length, offset = struct.unpack_from("<II", pk.header, 8)
        npfn = (len(pk.header) - 16) // 8
        pfn_list = list(struct.unpack_from(f"<{npfn}Q", pk.header, 16))
        assert count == 1
        assert raw == linux.mpb_desc([(length, offset, pfn_list)], pk.payload[:64], pk.trans_id)
