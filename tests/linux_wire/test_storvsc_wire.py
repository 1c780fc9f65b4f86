"""storvsp against the bytes Linux's storvsc sends (drivers/scsi/storvsc_drv.c over
drivers/hv/channel.c), its data in pages the guest made host-visible as an isolated Linux guest
does (arch/x86/hyperv/ivm.c), and hvsim's storvsc framing its packets as Linux does."""
import struct

import pytest

from drivers.device import ManualContext
from drivers.storage import protocol as p
from drivers.storage.protocol import NtStatus, Operation, ScsiRequest, SrbStatus
from drivers.storage.vhd import VirtualDisk
from drivers.storage.vsc import StorVsc
from drivers.storage.vsp import StorVsp
from hypervisor import Host, HvStatus
from hypervisor.abi import HostVisibility
from hypervisor.grants import VisibleMemory, modify_host_visibility, own_view
from partitions.worker import VmSpec, VmWorker
from tests.linux_wire import linux
from vmbus.channel import connected_pair

MS = 1_000_000
INIT_ID = 2**64 - 3   # storvsc's VMBUS_RQST_INIT
HVCALL_MODIFY_SPARSE_GPA_PAGE_HOST_VISIBILITY = 0x00DB
HV_PARTITION_ID_SELF = 2**64 - 1
VMBUS_PAGE_VISIBLE_READ_WRITE = 3   # include/linux/hyperv.h: HV_MAP_GPA_READABLE | HV_MAP_GPA_WRITABLE


def vstor(operation, body=b"", flags=p.REQUEST_COMPLETION_FLAG):
    """storvsc_drv.c struct vstor_packet, packed: operation, flags, status, 52-byte union."""
    return struct.pack("<III", operation, flags, 0) + body.ljust(52, b"\0")


def srb(cdb: bytes, data_in: int, length: int) -> bytes:
    """storvsc_drv.c storvsc_queuecommand's vmscsi_request (Win8 layout, 52 bytes): length
    0x34, target/LUN 0, cdb_length, sense_info_length 0x14, data_in, data_transfer_length, cdb."""
    body = struct.pack("<HBBBBBBBBBBI", 0x34, 0, 0, 0, 0, 0, 0, len(cdb), 0x14, data_in, 0, length)
    return vstor(Operation.EXECUTE_SRB, body + cdb.ljust(20, b"\0") + bytes(16))


def mark_gpa_visibility(vp, pfns: list[int], visibility: int) -> int:
    """arch/x86/hyperv/ivm.c hv_mark_gpa_visibility: the per-CPU input page holds struct
    hv_gpa_range_for_visibility (partition_id HV_PARTITION_ID_SELF, host_visibility:2 with
    reserved0:30 zero, reserved1 zero, then gpa_page_list[count]), issued through
    include/asm-generic/mshyperv.h hv_do_rep_hypercall, which re-issues the call with the reps
    completed as the start index until all are done or a status other than SUCCESS comes back.
    Returns that status."""
    block = struct.pack(f"<QII{len(pfns)}Q", HV_PARTITION_ID_SELF, visibility & 3, 0, *pfns)
    start = 0
    while True:
        control = (HVCALL_MODIFY_SPARSE_GPA_PAGE_HOST_VISIBILITY | len(pfns) << 32 | start << 48)
        result = vp.hypercall(control, block)
        if result.status != HvStatus.SUCCESS or result.reps_completed >= len(pfns):
            return result.status
        start = result.reps_completed


@pytest.fixture
def rig(tmp_path):
    """A child with 1 MiB of memory and a storvsp that reaches what the child shows it."""
    host = Host(logical_processors=1, memory="16MiB", seed=1)
    child = VmWorker(host, VmSpec("linux", memory="1MiB")).build()
    ring = linux.LinuxRing()
    with VirtualDisk.create(tmp_path / "d.vhd", 4 << 20, "dynamic", write_barriers=False) as disk:
        ctx = ManualContext()
        vsp = StorVsp(ring.host, {"disk": disk, "guest_memory": VisibleMemory(host, child)}, ctx)
        ring.host.on_signal = lambda: vsp.on_packets(ring.host.receive())
        vsp.on_open()
        yield ring, vsp, ctx, child


def complete(ring, ctx):
    ctx.advance(1 * MS)
    return {pk.trans_id: pk for pk in ring.read()}


def srb_status(packet) -> int:
    return ScsiRequest.decode(p.decode_packet(packet.payload).body).srb_status & p.SRB_STATUS_MASK


def test_storvsp_takes_linux_srbs_whose_ranges_lie_in_host_visible_pages_anywhere(rig):
    ring, vsp, ctx, child = rig
    # storvsc_channel_init: each step an in-band vstor_packet (vmbus_sendpacket); nothing else.
    steps = [vstor(Operation.BEGIN_INITIALIZATION),
             vstor(Operation.QUERY_PROTOCOL_VERSION, struct.pack("<HH", p.VERSION_WIN10, 0)),
             vstor(Operation.QUERY_PROPERTIES),
             vstor(Operation.END_INITIALIZATION)]
    for step in steps:
        ring.write(linux.inband(step, INIT_ID))
        (reply,) = complete(ring, ctx).values()
        assert p.decode_packet(reply.payload).status == NtStatus.SUCCESS
    # The guest's swiotlb pages: two far apart in its memory, shown as Linux shows them.
    low, high = 0x21, 0xF3
    assert mark_gpa_visibility(child.vp(0), [low, high], VMBUS_PAGE_VISIBLE_READ_WRITE) == HvStatus.SUCCESS
    # A two-sector write straddling both pages (the range's PFNs in list order, offset 3584).
    child.write(low * 4096 + 3584, b"L" * 512)
    child.write(high * 4096, b"M" * 512)
    write = srb(p.cdb_rw(True, 7, 2), p.DATA_OUT, 1024)
    packet = linux.mpb_desc([(1024, 3584, [low, high])], write, trans_id=1)
    assert struct.unpack_from("<HHH", packet) == (9, (16 + 8 + 8 + 16) // 8, (48 + 64) // 8)
    ring.write(packet)
    # The read back, into the high page.
    read = srb(p.cdb_rw(False, 7, 2), p.DATA_IN, 1024)
    ring.write(linux.mpb_desc([(1024, 1024, [high])], read, trans_id=2))
    replies = complete(ring, ctx)
    for trans_id in (1, 2):
        assert p.decode_packet(replies[trans_id].payload).status == NtStatus.SUCCESS
        assert srb_status(replies[trans_id]) == SrbStatus.SUCCESS
    assert child.read(high * 4096 + 1024, 1024) == b"L" * 512 + b"M" * 512
    assert vsp.refused == 0


def test_storvsp_refuses_a_linux_srb_touching_a_page_the_guest_did_not_show(rig):
    ring, vsp, ctx, child = rig
    for op in (Operation.BEGIN_INITIALIZATION, Operation.QUERY_PROTOCOL_VERSION, Operation.QUERY_PROPERTIES,
               Operation.END_INITIALIZATION):
        body = struct.pack("<HH", p.VERSION_WIN10, 0) if op == Operation.QUERY_PROTOCOL_VERSION else b""
        ring.write(linux.inband(vstor(op, body), INIT_ID))
        complete(ring, ctx)
    shown, hidden = 0x40, 0x41
    assert mark_gpa_visibility(child.vp(0), [shown], VMBUS_PAGE_VISIBLE_READ_WRITE) == HvStatus.SUCCESS
    child.write(hidden * 4096, b"secret" * 16)
    # A read from the disk into a page the guest never showed: refused, nothing stored there.
    ring.write(linux.mpb_desc([(512, 0, [hidden])], srb(p.cdb_rw(False, 0, 1), p.DATA_IN, 512), trans_id=3))
    # A write to the disk from a range that runs on from a shown page into a hidden one.
    ring.write(linux.mpb_desc([(1024, 3584, [shown, hidden])], srb(p.cdb_rw(True, 0, 2), p.DATA_OUT, 1024),
                              trans_id=4))
    # Only those fail: a good request after them is served.
    ring.write(linux.mpb_desc([(512, 0, [shown])], srb(p.cdb_rw(True, 9, 1), p.DATA_OUT, 512), trans_id=5))
    replies = complete(ring, ctx)
    assert [srb_status(replies[t]) for t in (3, 4, 5)] == [SrbStatus.INVALID_REQUEST, SrbStatus.INVALID_REQUEST,
                                                           SrbStatus.SUCCESS]
    assert vsp.refused == 2 and vsp.last_refusal == f"PFN {hidden:#x} is not host-visible"
    assert child.read(hidden * 4096, 96) == b"secret" * 16
    assert vsp.disk.read(0, 1024) == bytes(1024)
    # The guest hides its page again (set_memory_encrypted): the next request to it is refused.
    assert mark_gpa_visibility(child.vp(0), [shown], 0) == HvStatus.SUCCESS
    ring.write(linux.mpb_desc([(512, 0, [shown])], srb(p.cdb_rw(True, 9, 1), p.DATA_OUT, 512), trans_id=6))
    assert srb_status(complete(ring, ctx)[6]) == SrbStatus.INVALID_REQUEST


def test_the_old_pool_announcement_is_refused_as_an_unknown_operation(rig):
    """0x100 (hvsim's former private ANNOUNCE_IO_POOL) is no operation Linux sends."""
    ring, vsp, ctx, child = rig
    ring.write(linux.inband(vstor(Operation.BEGIN_INITIALIZATION), INIT_ID))
    complete(ring, ctx)
    ring.write(linux.inband(vstor(0x100, struct.pack("<II", 0xE1E11, 0)), INIT_ID))
    (reply,) = complete(ring, ctx).values()
    assert p.decode_packet(reply.payload).status == NtStatus.INVALID_DEVICE_REQUEST


def test_storvsc_frames_its_srbs_as_linux_does(tmp_path):
    """hvsim's storvsc: each data SRB is byte for byte what vmbus_sendpacket_mpb_desc makes of
    its ranges and its vstor_packet."""
    host_end, guest_end = connected_pair(16)
    host = Host(logical_processors=1, memory="16MiB", seed=1)
    child = VmWorker(host, VmSpec("c", memory="1MiB")).build()

    def share_pages(n):  # what the guest stack does (partitions/vmbus_guest.py)
        pfns = list(range(0x80, 0x80 + n))
        modify_host_visibility(child, pfns, HostVisibility.READ_WRITE)
        return pfns, own_view(child, 1, pfns)

    sent = []
    with VirtualDisk.create(tmp_path / "d.vhd", 4 << 20, "dynamic", write_barriers=False) as disk:
        vsp = StorVsp(host_end, {"disk": disk, "guest_memory": VisibleMemory(host, child)}, ManualContext())
        guest_ctx = ManualContext()
        vsc = StorVsc(guest_end, {"share_pages": share_pages, "pool_pages": 16}, guest_ctx)

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
