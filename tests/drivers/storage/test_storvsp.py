"""storvsp and storvsc over an in-process channel with manual clocks: the vstor wire layouts byte
for byte, the negotiation, data through host-visible guest pages, completions, bounds, timing, and
hostile packets that are refused while the channel keeps working."""
import dataclasses
import struct
from typing import NamedTuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.device import ManualContext
from drivers.storage import DEVICE
from drivers.storage import protocol as p
from drivers.storage.protocol import NtStatus, Operation, ScsiRequest, SrbStatus, StorError
from drivers.storage.vhd import VirtualDisk
from drivers.storage.vsc import INIT_TRANS_ID, State, StorVsc
from drivers.storage.vsp import StorVsp
from hypervisor import HvStatus
from hypervisor.status import error_for
from vmbus.channel import connected_pair
from vmbus.protocol import GpaRange
from vmbus.ring import PKT_COMP

US, MS = 1_000, 1_000_000
SIZE = 4 << 20
GPA_DIRECT = 9


RO, RW = 1, 3  # host visibility: read-only, read-write


class Pool:
    """The guest's memory as both sides see it: its bounce pages (`pfns`, their bytes `memory`),
    which storvsc's `share_pages` hook makes host-visible read-write as the guest stack does with
    HvCallModifySparseGpaPageHostVisibility, and any other page of the guest, anywhere, that a
    test shows (`show`). It is storvsp's `guest_memory`: check/read/write by visibility, as
    hypervisor.grants.VisibleMemory does over the core."""

    def __init__(self, pages: int, first: int = 0x100):
        self.pfns = list(range(first, first + pages))
        self.memory = bytearray(pages * 4096)
        self.view = memoryview(self.memory)
        self.visible: dict[int, int] = {}          # GPA page -> RO or RW
        self.elsewhere: dict[int, bytearray] = {}  # pages outside the bounce pages

    def share_pages(self, count):
        for pfn in self.pfns[:count]:
            self.visible[pfn] = RW
        return self.pfns[:count], self.view

    def show(self, pfn: int, visibility: int = RW) -> memoryview:
        """Make guest page `pfn` host-visible (0 hides it); its bytes."""
        if visibility:
            self.visible[pfn] = visibility
        else:
            self.visible.pop(pfn, None)
        return self.page(pfn)

    def page(self, pfn: int) -> memoryview:
        if pfn in self.pfns:
            at = self.pfns.index(pfn) * 4096
            return self.view[at:at + 4096]
        return memoryview(self.elsewhere.setdefault(pfn, bytearray(4096)))

    def check(self, pfns, writable=False):
        for pfn in pfns:
            if self.visible.get(pfn, 0) & (RW if writable else RO) != (RW if writable else RO):
                return pfn
        return None

    def _touched(self, pfns, offset, length, writable):
        pages = list(pfns)[offset // 4096:(offset + length + 4095) // 4096]
        bad = self.check(pages, writable)
        if bad is not None:
            raise error_for(HvStatus.ACCESS_DENIED, "test", f"GPA page {bad:#x} is not visible")
        return pages

    def read(self, pfns, offset, length):
        pages = self._touched(pfns, offset, length, False)
        data = b"".join(bytes(self.page(pfn)) for pfn in pages)
        return data[offset % 4096:offset % 4096 + length]

    def write(self, pfns, offset, data):
        pages = self._touched(pfns, offset, len(data), True)
        data, at = bytes(data), offset % 4096
        for i, pfn in enumerate(pages):
            chunk = data[max(0, i * 4096 - at):(i + 1) * 4096 - at]
            start = at if i == 0 else 0
            self.page(pfn)[start:start + len(chunk)] = chunk


class Rig:
    """A storvsp and a storvsc on one channel; every packet each side received is recorded."""

    def __init__(self, disk, vsp=None, vsc=None, ring_pages=16, pool_pages=16):
        self.host_ctx, self.guest_ctx = ManualContext(), ManualContext()
        self.pool = Pool(pool_pages)
        self.host_end, self.guest_end = connected_pair(ring_pages)
        _sending_gpa(self.guest_end)
        self.vsp = StorVsp(self.host_end, {"disk": disk, "guest_memory": self.pool, **(vsp or {})},
                           self.host_ctx)
        self.vsc = StorVsc(self.guest_end, {"share_pages": self.pool.share_pages, "pool_pages": pool_pages,
                                            **(vsc or {})}, self.guest_ctx)
        self.to_host, self.to_guest = [], []
        self.host_end.on_signal = self.host_signalled
        self.guest_end.on_signal = self.guest_signalled

    def host_signalled(self):
        packets = self.host_end.receive()
        self.to_host += packets
        self.vsp.on_packets(packets)

    def guest_signalled(self):
        packets = self.guest_end.receive()
        self.to_guest += packets
        self.vsc.on_packets(packets)

    def open(self):
        self.vsc.on_open()
        self.run(1 * MS)
        assert self.vsc.ready, self.vsc.error
        return self

    def run(self, ns):
        self.host_ctx.advance(ns)

    def reply(self, trans_id):
        """The one completion the host sent for trans_id: (vstor packet, vmscsi_request)."""
        (packet,) = [pk for pk in self.to_guest if pk.trans_id == trans_id]
        assert packet.type == PKT_COMP
        vp = p.decode_packet(packet.payload)
        assert vp.operation == Operation.COMPLETE_IO
        return vp, ScsiRequest.decode(vp.body)


@pytest.fixture
def disk(tmp_path):
    with VirtualDisk.create(tmp_path / "d.vhd", SIZE, "dynamic", write_barriers=False) as vd:
        yield vd


def srb(cdb, data_in, transfer, **fields):
    """An EXECUTE_SRB vstor_packet as storvsc builds it, with any field overridden."""
    request = dataclasses.replace(ScsiRequest.for_cdb(cdb, data_in, transfer), **fields)
    return p.VstorPacket(Operation.EXECUTE_SRB, p.REQUEST_COMPLETION_FLAG, 0, request.encode()).encode()


class Gpa(NamedTuple):
    """A GPA-direct packet to send: its range list (before offset8) and its vstor_packet."""
    header: bytes
    packet: bytes


def gpa(ranges, packet):
    return Gpa(p.encode_gpa_direct(ranges), packet)


def _sending_gpa(end):
    """Let `end.send` take a Gpa as its payload: the range list goes in as the packet header."""
    send = end.send

    def send_any(payload, **kw):
        if isinstance(payload, Gpa):
            return send(payload.packet, header=payload.header, **kw)
        return send(payload, **kw)

    end.send = send_any
    return end


def op_of(packet):
    """The vstor operation of a packet the guest sent."""
    return p.decode_packet(packet.payload).operation


# -- wire layouts --------------------------------------------------------------------------------


def test_vstor_packet_and_vmscsi_request_layouts_are_byte_exact():
    request = ScsiRequest(cdb_length=10, data_in=1, data_transfer_length=0x11223344,
                          payload=bytes(range(0xA0, 0xB4)), length=0x34, srb_status=0x81,
                          scsi_status=0x02, port=3, path_id=4, target_id=5, lun=6,
                          sense_info_length=0x14, srb_flags=0x55667788, time_out_value=0x99AABBCC,
                          queue_tag=0x21, queue_action=0x22, queue_sort_key=0xDDEEFF00)
    body = request.encode()
    assert len(body) == 52 == p.REQUEST_SIZE
    raw = p.VstorPacket(Operation.EXECUTE_SRB, 1, 0xC0000001, body).encode()
    assert len(raw) == 64 == p.PACKET_SIZE
    assert struct.unpack_from("<III", raw) == (3, 1, 0xC0000001)
    b = raw[12:]
    assert struct.unpack_from("<H", b, 0)[0] == 0x34
    assert (b[2], b[3], b[4], b[5], b[6], b[7]) == (0x81, 0x02, 3, 4, 5, 6)
    assert (b[8], b[9], b[10], b[11]) == (10, 0x14, 1, 0)
    assert struct.unpack_from("<I", b, 12)[0] == 0x11223344
    assert b[16:36] == bytes(range(0xA0, 0xB4))
    assert struct.unpack_from("<HBBIII", b, 36) == (0, 0x21, 0x22, 0x55667788, 0x99AABBCC, 0xDDEEFF00)
    assert ScsiRequest.decode(body) == request
    assert request.cdb == bytes(range(0xA0, 0xAA)) and request.sense == bytes(range(0xA0, 0xB4))


def test_a_linux_style_read_request_in_hex():
    # READ(10) of 8 blocks at LBA 0x20, as storvsc builds it.
    raw = srb(p.cdb_rw(False, 0x20, 8), p.DATA_IN, 4096)
    assert raw.hex() == (
        "03000000" "01000000" "00000000"                  # EXECUTE_SRB, REQUEST_COMPLETION, status
        "3400" "00" "00" "00000000" "0a" "14" "01" "00"   # length, srb/scsi status, port..lun, cdb/sense len, data_in
        "00100000"                                        # data_transfer_length 4096
        "2800000000200000" "0800" + "00" * 10 +           # the CDB, padded to 20
        "0000" "00" "00" "48000000" "3c000000" "00000000")  # srb_flags DATA_IN|DISABLE_SYNCH, 60 s


def test_channel_properties_and_version_layouts():
    props = p.ChannelProperties(max_channel_count=7, flags=1, max_transfer_bytes=0x40000).encode()
    assert len(props) == 24
    assert struct.unpack("<IHHIIQ", props) == (0, 7, 0, 1, 0x40000, 0)
    assert p.ChannelProperties.decode(props.ljust(52, b"\0")).max_transfer_bytes == 0x40000
    assert p.encode_version(p.VERSION_WIN10) == b"\x02\x06\x00\x00"
    assert (p.VERSION_WIN8, p.VERSION_WIN8_1, p.VERSION_WIN10) == (0x0501, 0x0600, 0x0602)
    assert not hasattr(p, "encode_pool") and 0x100 not in set(Operation)  # hvsim's old private step is gone
    assert p.CLASS_ID == DEVICE.class_id and str(DEVICE.class_id) == "ba6163d9-04a1-4d29-b605-72e2ffb1dc7f"


def test_gpa_direct_header_layout():
    rng = GpaRange(5000, 100, (0x1234, 0x1235))
    header = p.encode_gpa_direct([rng])
    assert struct.unpack("<IIIIQQ", header) == (0, 1, 5000, 100, 0x1234, 0x1235)
    assert p.decode_gpa_direct(header) == (rng,)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_gpa_direct_decode_takes_any_bytes(data):
    try:
        ranges = p.decode_gpa_direct(data)
    except StorError:
        return
    assert ranges and sum(8 + 8 * len(r.pfns) for r in ranges) + 8 <= len(data)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 20000), st.integers(0, 4095)), min_size=1, max_size=4))
def test_gpa_direct_round_trip(shapes):
    ranges = [GpaRange(n, off, tuple(range(7, 7 + (off + n + 4095) // 4096))) for n, off in shapes]
    assert p.decode_gpa_direct(p.encode_gpa_direct(ranges)) == tuple(ranges)


@settings(max_examples=100, deadline=None)
@given(st.builds(ScsiRequest, cdb_length=st.integers(0, 255), data_in=st.integers(0, 255),
                 data_transfer_length=st.integers(0, 2**32 - 1), payload=st.binary(min_size=20, max_size=20),
                 length=st.integers(0, 2**16 - 1), srb_status=st.integers(0, 255),
                 lun=st.integers(0, 255), srb_flags=st.integers(0, 2**32 - 1)))
def test_vmscsi_request_round_trip(request):
    assert ScsiRequest.decode(request.encode()) == request
    assert p.decode_packet(p.VstorPacket(3, 1, 2, request.encode()).encode()).body == request.encode()


@settings(max_examples=200, deadline=None)
@given(cdb=st.binary(min_size=1, max_size=16), data_in=st.integers(0, 255),
       length=st.integers(0, 2**32 - 1), lun=st.integers(0, 255))
def test_the_one_call_srb_request_is_the_dataclasses_bytes(cdb, data_in, length, lun):
    # storvsc packs its per-I/O EXECUTE_SRB in one call: the same bytes as the dataclasses give.
    slow = p.VstorPacket(Operation.EXECUTE_SRB, p.REQUEST_COMPLETION_FLAG, 0,
                         ScsiRequest.for_cdb(cdb, data_in, length, lun=lun).encode()).encode()
    assert p.encode_srb_request(cdb, data_in, length, lun) == slow


def test_the_one_call_srb_request_refuses_what_for_cdb_refuses():
    for cdb in (b"", bytes(17)):
        with pytest.raises(ValueError):
            p.encode_srb_request(cdb, p.DATA_IN, 512, 0)


@settings(max_examples=200, deadline=None)
@given(request=st.builds(ScsiRequest, cdb_length=st.integers(0, 255), data_in=st.integers(0, 255),
                         port=st.integers(0, 255), path_id=st.integers(0, 255), target_id=st.integers(0, 255),
                         lun=st.integers(0, 255), srb_flags=st.integers(0, 2**32 - 1)),
       srb_status=st.integers(0, 0x7F), scsi_status=st.integers(0, 255),
       transferred=st.integers(0, 2**32 - 1), sense=st.binary(max_size=40))
def test_the_one_call_completion_is_the_dataclasses_bytes(request, srb_status, scsi_status, transferred, sense):
    # storvsp's completion, packed in one call, against the ScsiRequest/VstorPacket it replaces.
    status = srb_status | (p.SRB_STATUS_AUTOSENSE_VALID if sense else 0)
    response = ScsiRequest(cdb_length=request.cdb_length, data_in=request.data_in,
                           data_transfer_length=transferred, payload=sense[:p.SENSE_BUFFER_SIZE],
                           srb_status=status, scsi_status=scsi_status, port=request.port,
                           path_id=request.path_id, target_id=request.target_id, lun=request.lun,
                           sense_info_length=min(len(sense), p.SENSE_BUFFER_SIZE))
    slow = p.VstorPacket(Operation.COMPLETE_IO, 0, p.ntstatus_for(status), response.encode()).encode()
    assert p.encode_srb_completion(request, srb_status, scsi_status, transferred, sense) == slow


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 20000), st.integers(0, 4095))
def test_the_one_range_list_is_encode_gpa_direct(n, off):
    pfns = tuple(range(7, 7 + (off + n + 4095) // 4096))
    assert p.encode_gpa_range(n, off, list(pfns)) == p.encode_gpa_direct([GpaRange(n, off, pfns)])


def test_decoded_packets_are_ordinary_frozen_dataclasses():
    # decode fills the frozen dataclasses' fields directly: they compare, hash and refuse
    # assignment as ones built by __init__ do.
    request = ScsiRequest.for_cdb(p.cdb_rw(False, 8, 1), p.DATA_IN, 512, lun=2)
    request = dataclasses.replace(request, payload=request.payload.ljust(p.SENSE_BUFFER_SIZE, b"\0"))
    decoded = ScsiRequest.decode(request.encode())
    assert decoded == request and hash(decoded) == hash(request) and repr(decoded) == repr(request)
    with pytest.raises(dataclasses.FrozenInstanceError):
        decoded.lun = 3
    packet = p.VstorPacket(int(Operation.COMPLETE_IO), 1, 2, request.encode())
    again = p.decode_packet(packet.encode())
    assert again == packet and hash(again) == hash(packet) and repr(again) == repr(packet)
    with pytest.raises(dataclasses.FrozenInstanceError):
        again.status = 0


def test_sense_formats():
    assert p.parse_sense(p.sense_fixed(5, 0x21, 1)) == (5, 0x21, 1)
    assert p.parse_sense(bytes([0x72, 0x05, 0x24, 0x00, 0, 0, 0, 0])) == (5, 0x24, 0)
    with pytest.raises(StorError):
        p.parse_sense(bytes([0x7F, 0, 0, 0]))


# -- negotiation ----------------------------------------------------------------------------------


def test_the_init_sequence(disk):
    rig = Rig(disk).open()
    ops = [op_of(pk) for pk in rig.to_host]
    # Linux's storvsc_channel_init sequence: nothing hvsim-specific.
    assert ops[:4] == [Operation.BEGIN_INITIALIZATION, Operation.QUERY_PROTOCOL_VERSION,
                       Operation.QUERY_PROPERTIES, Operation.END_INITIALIZATION]
    assert ops[4:] == [Operation.EXECUTE_SRB] * 3        # REPORT LUNS, INQUIRY, READ CAPACITY (16)
    assert all(pk.trans_id == INIT_TRANS_ID and pk.completion_requested for pk in rig.to_host[:4])
    assert p.decode_version(p.decode_packet(rig.to_host[1].payload).body) == p.VERSION_WIN10
    # Each answered by a COMPLETE_IO completion with the same transaction id.
    assert [pk.type for pk in rig.to_guest] == [PKT_COMP] * 7
    assert [pk.trans_id for pk in rig.to_guest] == [pk.trans_id for pk in rig.to_host]
    assert all(p.decode_packet(pk.payload).status == NtStatus.SUCCESS for pk in rig.to_guest)
    props = p.ChannelProperties.decode(p.decode_packet(rig.to_guest[2].payload).body)
    assert (props.max_channel_count, props.flags, props.max_transfer_bytes) == (0, 0, 256 * 1024)
    vsc = rig.vsc
    assert vsc.version == rig.vsp.version == p.VERSION_WIN10
    assert vsc.capacity == SIZE // 512 and vsc.block_size == 512
    assert vsc.max_blocks == 16 * 4096 // 512           # the bounce pages are fewer than max transfer
    assert rig.pool.visible == {pfn: RW for pfn in rig.pool.pfns}
    assert vsc.inquiry[8:16] == b"Msft    "


def test_the_vsc_falls_back_to_an_older_version(disk, monkeypatch):
    rig = Rig(disk)
    monkeypatch.setattr(p, "VERSIONS", (p.VERSION_WIN8_1, p.VERSION_WIN8))  # an older host
    rig.open()
    offered = [p.decode_version(p.decode_packet(pk.payload).body) for pk in rig.to_host
               if op_of(pk) == Operation.QUERY_PROTOCOL_VERSION]
    assert offered == [p.VERSION_WIN10, p.VERSION_WIN8_1]
    assert rig.vsc.version == p.VERSION_WIN8_1
    refused = p.decode_packet(rig.to_guest[1].payload)
    assert refused.status == NtStatus.REVISION_MISMATCH


def test_the_vsc_falls_back_to_read_capacity_10(disk):
    rig = Rig(disk)
    decode = rig.vsp.target.decode

    def without_16(cdb, length):  # an older target: SERVICE ACTION IN is an unknown opcode
        return decode(b"\xff" + cdb[1:] if cdb[0] == p.Op.SERVICE_ACTION_IN_16 else cdb, length)

    rig.vsp.target.decode = without_16
    rig.open()
    cdbs = [p.ScsiRequest.decode(p.decode_packet(pk.payload).body).cdb[0]
            for pk in rig.to_host if pk.type == GPA_DIRECT]
    assert cdbs == [p.Op.REPORT_LUNS, p.Op.INQUIRY, p.Op.SERVICE_ACTION_IN_16, p.Op.READ_CAPACITY_10]
    assert rig.vsc.capacity == SIZE // 512


def test_operations_out_of_order_are_refused(disk):
    rig = Rig(disk)
    send = rig.guest_end.send
    send(p.VstorPacket(Operation.QUERY_PROPERTIES, 1).encode(), trans_id=1, flags=1)
    send(srb(p.cdb_test_unit_ready(), p.DATA_UNKNOWN, 0), trans_id=2, flags=1)
    send(p.VstorPacket(Operation.BEGIN_INITIALIZATION, 1).encode(), trans_id=3, flags=1)
    send(p.VstorPacket(Operation.BEGIN_INITIALIZATION, 1).encode(), trans_id=4, flags=1)
    send(p.VstorPacket(Operation.QUERY_PROTOCOL_VERSION, 1, 0, p.encode_version(0x0200)).encode(), trans_id=5)
    statuses = [rig.reply(t)[0].status for t in (1, 2, 3, 4, 5)]
    assert statuses == [NtStatus.INVALID_DEVICE_STATE, NtStatus.INVALID_DEVICE_STATE, NtStatus.SUCCESS,
                        NtStatus.INVALID_DEVICE_STATE, NtStatus.REVISION_MISMATCH]
    assert rig.vsp.state.value == "query_version"


def test_bounce_pages_the_guest_cannot_share_fail_the_device(disk):
    def refuse(count):
        raise MemoryError("no pages")

    rig = Rig(disk, vsc={"share_pages": refuse})
    rig.vsc.on_open()
    assert rig.vsc.state is State.FAILED and "host-visible" in rig.vsc.error and "no pages" in rig.vsc.error
    assert rig.to_host == []                              # nothing was sent
    with pytest.raises(RuntimeError, match="not ready"):
        rig.vsc.read(0, 1)


def test_without_a_share_hook_the_device_fails_cleanly(disk):
    host_end, guest_end = connected_pair()
    vsc = StorVsc(guest_end, {})
    vsc.on_open()
    assert vsc.state is State.FAILED and "share_pages" in vsc.error


def test_the_old_pool_announcement_is_an_unknown_operation(disk):
    """0x100 was hvsim's private ANNOUNCE_IO_POOL; storvsp answers it as any operation it does
    not know, in any state."""
    rig = Rig(disk)
    send = rig.guest_end.send
    send(p.VstorPacket(Operation.BEGIN_INITIALIZATION, 1).encode(), trans_id=1, flags=1)
    send(p.VstorPacket(0x100, 1, 0, struct.pack("<II", 0xE1E11, 0)).encode(), trans_id=2, flags=1)
    assert "operation 256" in rig.vsp.last_refusal
    send(p.VstorPacket(0x55, 1).encode(), trans_id=3, flags=1)
    assert rig.reply(2)[0].status == rig.reply(3)[0].status == NtStatus.INVALID_DEVICE_REQUEST
    assert rig.vsp.state.value == "query_version"


# -- I/O --------------------------------------------------------------------------------------------


def test_data_round_trip(disk):
    rig = Rig(disk).open()
    vsc = rig.vsc
    blobs = {0: b"\x01" * 512, 7: bytes(range(256)) * 32, 100: b"end!" * (vsc.max_blocks * 128)}
    writes = [vsc.write(lba, data) for lba, data in blobs.items()]
    rig.run(5 * MS)
    assert all(w.ok for w in writes)
    reads = {lba: vsc.read(lba, len(data) // 512) for lba, data in blobs.items()}
    rig.run(5 * MS)
    assert {lba: r.data for lba, r in reads.items()} == blobs
    assert disk.read(7 * 512, 8192) == blobs[7]           # it is in the VHD file
    flush = vsc.flush()
    rig.run(1 * MS)
    assert flush.ok and vsc.outstanding == {} and not vsc.pending


def test_scattered_bounce_pages_are_gathered_and_scattered(disk):
    rig = Rig(disk).open()
    pool = rig.pool
    data = bytes(range(251)) * 40                         # 10040 bytes, not a whole block count
    pool.memory[5 * 4096:6 * 4096] = data[:4096]          # a 3-page range over pool pages 5, 2, 9
    pool.memory[2 * 4096:3 * 4096] = data[4096:8192]
    pool.memory[9 * 4096:9 * 4096 + 1848] = data[8192:10040]
    data = data[:10040 // 512 * 512]                      # the write moves 19 whole blocks
    pfns = (pool.pfns[5], pool.pfns[2], pool.pfns[9])
    rig.guest_end.send(gpa([GpaRange(len(data), 0, pfns)], srb(p.cdb_rw(True, 50, 19), p.DATA_OUT, len(data))),
                       packet_type=GPA_DIRECT, trans_id=77, flags=1)
    rig.run(1 * MS)
    assert rig.reply(77)[1].srb_status == SrbStatus.SUCCESS
    assert disk.read(50 * 512, len(data)) == data
    pool.memory[:] = bytes(len(pool.memory))
    rng = GpaRange(len(data), 300, (pool.pfns[8], pool.pfns[3], pool.pfns[12]))   # unaligned start
    rig.guest_end.send(gpa([rng], srb(p.cdb_rw(False, 50, 19), p.DATA_IN, len(data))),
                       packet_type=GPA_DIRECT, trans_id=78, flags=1)
    rig.run(1 * MS)
    _, reply = rig.reply(78)
    assert reply.srb_status == SrbStatus.SUCCESS and reply.data_transfer_length == len(data)
    got = (pool.memory[8 * 4096 + 300:9 * 4096] + pool.memory[3 * 4096:4 * 4096]
           + pool.memory[12 * 4096:12 * 4096 + len(data) - (4096 - 300) - 4096])
    assert got == data


def test_completions_match_transaction_ids(disk):
    rig = Rig(disk).open()
    vsc = rig.vsc
    done = []
    reqs = [vsc.write(i * 8, bytes([i]) * 4096, callback=done.append) for i in range(5)]
    sent = {pk.trans_id for pk in rig.to_host[-5:]}
    rig.run(5 * MS)
    assert done == reqs and list(vsc.completed)[-5:] == reqs
    assert {pk.trans_id for pk in rig.to_guest[-5:]} == sent and all(pk.type == PKT_COMP for pk in rig.to_guest)
    # A completion the guest did not ask for (or a second one for the same id) is dropped.
    before = len(vsc.completed)
    for trans_id in (*sent, 0, 12345, INIT_TRANS_ID):
        rig.host_end.send(rig.to_guest[-1].payload, packet_type=PKT_COMP, trans_id=trans_id)
    assert len(vsc.completed) == before and vsc.state is State.READY


def test_service_time_and_parent_cpu(disk):
    rig = Rig(disk).open()
    vsc, clock = rig.vsc, rig.host_ctx
    start, charged = clock.time, clock.charged
    times = []
    vsc.read(0, 64, callback=lambda r: times.append(clock.time))     # 32 KiB
    vsc.read(0, 8, callback=lambda r: times.append(clock.time))      # 4 KiB, queued behind it
    rig.run(1 * MS)
    first = 100 * US + 32768 * 2        # 100 us + 32 KiB at 500 MB/s (2 ns a byte)
    assert times == [start + first, start + first + 100 * US + 4096 * 2]
    assert clock.charged - charged == 2 * 3 * US
    assert rig.vsp.service_time(0) == 100 * US


def test_service_time_is_set_per_disk(disk):
    rig = Rig(disk, vsp={"latency": "1ms", "bandwidth": "1MB/s"}).open()
    t0 = rig.host_ctx.time
    req = rig.vsc.write(0, b"a" * 512)
    rig.run(1 * MS)
    assert not req.done                                     # 1 ms + 512 us
    rig.run(1 * MS)
    assert req.ok and rig.host_ctx.time - t0 == 2 * MS


def test_the_vsp_refuses_requests_beyond_its_bound(disk):
    rig = Rig(disk, vsp={"max_outstanding": 3}).open()
    pfn = rig.pool.pfns[0]
    for t in range(10, 15):
        rig.guest_end.send(gpa([GpaRange(512, 0, (pfn,))], srb(p.cdb_rw(False, 0, 1), p.DATA_IN, 512)),
                           packet_type=GPA_DIRECT, trans_id=t, flags=1)
    busy = [rig.reply(t) for t in (13, 14)]                # answered at once
    assert all(vp.status == NtStatus.DEVICE_BUSY and r.srb_status == SrbStatus.BUSY and r.scsi_status == 8
               for vp, r in busy)
    rig.run(1 * MS)
    assert [rig.reply(t)[1].srb_status for t in (10, 11, 12)] == [SrbStatus.SUCCESS] * 3
    assert rig.vsp.busy == 2 and rig.vsp.outstanding == {}


def test_the_vsc_queues_beyond_its_bound(disk):
    rig = Rig(disk, vsc={"max_outstanding": 2}).open()
    vsc = rig.vsc
    reqs = [vsc.write(i, bytes([i]) * 512) for i in range(6)]
    assert len(vsc.outstanding) == 2 and len(vsc.pending) == 4
    rig.run(5 * MS)
    assert all(r.ok for r in reqs) and [r.id for r in vsc.completed][-6:] == [r.id for r in reqs]
    assert rig.vsp.busy == 0
    # ...and bounce pages too few for everything at once hold requests back the same way.
    big = [vsc.read(0, vsc.max_blocks) for _ in range(3)]
    assert len(vsc.outstanding) == 1
    rig.run(5 * MS)
    assert all(r.ok for r in big)


def test_scsi_errors_reach_the_guest_with_sense(disk):
    rig = Rig(disk).open()
    vsc = rig.vsc
    past = vsc.read(vsc.capacity, 1)
    odd = vsc.execute(bytes([0xA3]) + bytes(11), data_in=64)     # MAINTENANCE IN: not implemented
    rig.run(1 * MS)
    assert past.done and not past.ok and past.sense == (p.SenseKey.ILLEGAL_REQUEST, p.Asc.LBA_OUT_OF_RANGE, 0)
    assert past.srb_status == SrbStatus.INVALID_REQUEST | p.SRB_STATUS_AUTOSENSE_VALID
    assert odd.sense == (p.SenseKey.ILLEGAL_REQUEST, p.Asc.INVALID_COMMAND_OPERATION_CODE, 0)
    assert vsc.read(0, 1) and vsc.state is State.READY


def test_a_vsp_without_its_disk_reports_no_lun(tmp_path):
    rig = Rig(None, vsp={"disk": None, "path": str(tmp_path / "missing.vhd")})
    rig.vsc.on_open()
    rig.run(1 * MS)
    assert rig.vsc.state is State.FAILED and "INVALID_LUN" in rig.vsc.error
    assert any(event == "storvsp has no disk" for _, event, _ in rig.host_ctx.events)


# -- hostile guests ---------------------------------------------------------------------------------


def _hostile_cases(pool):
    pfn = pool.pfns[0]
    read1 = srb(p.cdb_rw(False, 0, 1), p.DATA_IN, 512)
    write1 = srb(p.cdb_rw(True, 0, 1), p.DATA_OUT, 512)
    one = [GpaRange(512, 0, (pfn,))]

    def with_fields(**fields):
        return srb(p.cdb_rw(True, 0, 1), p.DATA_OUT, 512, **fields)

    return {
        "empty": (b"", 6),
        "short packet": (read1[:40], 6),
        "no GPA header (offset8 2)": (Gpa(b"", write1), GPA_DIRECT),
        "ranges in the payload (offset8 2)": (p.encode_gpa_direct(one) + write1, GPA_DIRECT),
        "zero ranges": (Gpa(struct.pack("<II", 0, 0), write1), GPA_DIRECT),
        "range count past the header": (Gpa(struct.pack("<II", 0, 1000), write1), GPA_DIRECT),
        "range offset past its page": (Gpa(struct.pack("<IIIIQ", 0, 1, 512, 4096, pfn), write1), GPA_DIRECT),
        "PFN not host-visible": (gpa([GpaRange(512, 0, (pool.pfns[-1] + 1,))], write1), GPA_DIRECT),
        "PFN outside the guest": (gpa([GpaRange(512, 0, (1 << 39,))], write1), GPA_DIRECT),
        "visible then not": (gpa([GpaRange(8192, 0, (pfn, 0x42))], srb(p.cdb_rw(True, 0, 16), p.DATA_OUT, 8192)),
                             GPA_DIRECT),
        "read into a read-only page": (gpa([GpaRange(512, 0, (0x30,))], read1), GPA_DIRECT),
        "range shorter than the transfer": (gpa([GpaRange(100, 0, (pfn,))], write1), GPA_DIRECT),
        "two ranges": (gpa(one * 2, write1), GPA_DIRECT),
        "data without a range": (write1, 6),
        "transfer beyond the maximum": (gpa(one, srb(p.cdb_rw(True, 0, 1), p.DATA_OUT, 1 << 30)), GPA_DIRECT),
        "request length": (gpa(one, with_fields(length=36)), GPA_DIRECT),
        "cdb length 0": (gpa(one, with_fields(cdb_length=0)), GPA_DIRECT),
        "cdb length 17": (gpa(one, with_fields(cdb_length=17)), GPA_DIRECT),
        "data_in 7": (gpa(one, srb(p.cdb_rw(True, 0, 1), 7, 512)), GPA_DIRECT),
        "write sent as a read": (gpa(one, srb(p.cdb_rw(True, 0, 1), p.DATA_IN, 512)), GPA_DIRECT),
        "unknown operation": (p.VstorPacket(0x55, 1).encode(), 6),
        "host-only operation": (p.VstorPacket(Operation.ENUMERATE_BUS, 1).encode(), 6),
        "init op with ranges": (gpa(one, p.VstorPacket(Operation.RESET_BUS, 1).encode()), GPA_DIRECT),
        "begin again": (p.VstorPacket(Operation.BEGIN_INITIALIZATION, 1).encode(), 6),
        "a transfer-page packet": (write1, 7),
        "another LUN": (gpa(one, with_fields(lun=1)), GPA_DIRECT),
    }


HOSTILE = sorted(_hostile_cases(Pool(16)))


@pytest.mark.parametrize("case", HOSTILE)
def test_hostile_packets_are_refused_and_the_channel_keeps_working(disk, case):
    rig = Rig(disk).open()
    payload, kind = _hostile_cases(rig.pool)[case]
    rig.pool.memory[:] = b"\xC3" * len(rig.pool.memory)
    rig.pool.show(0x30, RO)[:] = b"\xC3" * 4096
    disk_before = disk.read(0, 8192)
    rig.guest_end.send(payload, packet_type=kind, trans_id=0xBAD, flags=1)
    rig.run(1 * MS)
    vp, reply = rig.reply(0xBAD)
    assert vp.status != NtStatus.SUCCESS
    assert reply.srb_status & p.SRB_STATUS_MASK != SrbStatus.SUCCESS and reply.data_transfer_length == 0
    assert disk.read(0, 8192) == disk_before                 # nothing was written...
    assert rig.pool.memory == b"\xC3" * len(rig.pool.memory)  # ...or read into guest memory
    assert rig.pool.page(0x30) == b"\xC3" * 4096
    # The channel goes on.
    write = rig.vsc.write(3, b"ok" * 256)
    rig.run(1 * MS)
    read = rig.vsc.read(3, 1)
    rig.run(1 * MS)
    assert write.ok and read.data == b"ok" * 256 and rig.vsc.state is State.READY


def test_a_completion_from_the_guest_is_dropped(disk):
    rig = Rig(disk).open()
    refused = rig.vsp.refused
    rig.guest_end.send(p.VstorPacket(Operation.COMPLETE_IO).encode(), packet_type=PKT_COMP, trans_id=5)
    assert [pk for pk in rig.to_guest if pk.trans_id == 5] == [] and rig.vsp.refused == refused + 1


@settings(max_examples=150, deadline=None)
@given(payload=st.one_of(st.binary(max_size=200),
                         st.builds(lambda head, body: head + body,
                                   st.sampled_from([struct.pack("<III", op, 1, 0) for op in range(16)]),
                                   st.binary(min_size=52, max_size=52))),
       kind=st.sampled_from([6, GPA_DIRECT, 7, 2, 0xB]),
       trans_id=st.integers(0, 2**64 - 1))
def test_any_packet_from_a_guest_breaks_nothing(tmp_path_factory, payload, kind, trans_id):
    path = tmp_path_factory.mktemp("fuzz") / "f.vhd"
    with VirtualDisk.create(path, 1 << 20, "dynamic", write_barriers=False) as vd:
        rig = Rig(vd).open()
        rig.guest_end.send(payload, packet_type=kind, trans_id=trans_id, flags=1)
        rig.run(1 * MS)
        write = rig.vsc.write(1, b"w" * 512)
        rig.run(1 * MS)
        assert write.ok and rig.vsc.state is State.READY


@settings(max_examples=100, deadline=None)
@given(during_init=st.booleans(),
       replies=st.lists(st.tuples(
           st.sampled_from([PKT_COMP, 6, 9]),
           st.sampled_from([INIT_TRANS_ID, 0, 1, 2, 3, 2**64 - 1]),
           st.one_of(st.binary(max_size=80),
                     st.builds(lambda status, body: p.VstorPacket(Operation.COMPLETE_IO, 0, status, body).encode(),
                               st.sampled_from([0, NtStatus.REVISION_MISMATCH, 0xC0000001]),
                               st.binary(max_size=52)))), max_size=8))
def test_a_hostile_host_cannot_make_the_vsc_fail_badly(tmp_path_factory, during_init, replies):
    """Bogus completions, during the negotiation or during I/O: the VSC never raises, ends up
    ready or failed, and completes each request exactly once."""
    path = tmp_path_factory.mktemp("host") / "h.vhd"
    with VirtualDisk.create(path, 1 << 20, "dynamic", write_barriers=False) as vd:
        rig = Rig(vd)
        vsc = rig.vsc
        if during_init:
            rig.host_end.on_signal = None           # the host answers with these replies only
            vsc.on_open()
            reqs = []
        else:
            rig.open()
            reqs = [vsc.read(0, 2), vsc.write(1, b"q" * 512), vsc.flush()]
        for kind, trans_id, payload in replies:
            rig.host_end.send(payload, packet_type=kind, trans_id=trans_id)
        rig.run(1 * MS)
        assert vsc.state in (State.NEGOTIATING, State.DISCOVERING, State.READY, State.FAILED)
        ids = [r.id for r in vsc.completed]
        assert len(ids) == len(set(ids))
        assert all(r.done for r in reqs) or vsc.outstanding
        assert all(r.data is None or len(r.data) <= r.length for r in vsc.completed)


def test_pages_hidden_before_execution_fail_the_request_and_touch_nothing(disk):
    rig = Rig(disk).open()
    write = rig.vsc.write(0, b"late" * 128)
    for pfn in rig.pool.pfns:                                 # the guest hides its bounce pages
        rig.pool.show(pfn, 0)
    rig.run(1 * MS)
    assert write.done and not write.ok and write.srb_status == SrbStatus.ERROR
    assert disk.read(0, 512) == bytes(512)
    refused = rig.vsc.write(0, b"x" * 512)                    # and new requests are refused
    rig.run(1 * MS)
    assert refused.srb_status == SrbStatus.INVALID_REQUEST
    assert "is not host-visible" in rig.vsp.last_refusal


def test_a_read_whose_pages_become_read_only_meanwhile_stores_nothing(disk):
    rig = Rig(disk).open()
    disk.write(0, b"disk" * 128)
    read = rig.vsc.read(0, 1)
    for pfn in rig.pool.pfns:
        rig.pool.show(pfn, RO)                                # the host may read them, not write
    rig.run(1 * MS)
    assert read.done and not read.ok and read.srb_status == SrbStatus.ERROR
    assert bytes(rig.pool.memory[:512]) == bytes(512)


def test_ranges_anywhere_in_the_guests_visible_memory_are_served(disk):
    """storvsp takes any host-visible page of the guest, not only storvsc's bounce pages: a range
    over pages far apart, shown read-only for a write to the disk and read-write for a read."""
    rig = Rig(disk).open()
    data = bytes(range(256)) * 24                          # 6144 bytes: 12 blocks over 2 pages
    rig.pool.show(0x7000, RO)[1024:] = data[:3072]
    rig.pool.show(0x20, RO)[:3072] = data[3072:]
    rng = GpaRange(len(data), 1024, (0x7000, 0x20))
    rig.guest_end.send(gpa([rng], srb(p.cdb_rw(True, 40, 12), p.DATA_OUT, len(data))),
                       packet_type=GPA_DIRECT, trans_id=5, flags=1)
    rig.run(1 * MS)
    assert rig.reply(5)[1].srb_status == SrbStatus.SUCCESS and disk.read(40 * 512, len(data)) == data
    # Reading back into those read-only pages is refused; into read-write pages elsewhere, served.
    rig.guest_end.send(gpa([rng], srb(p.cdb_rw(False, 40, 12), p.DATA_IN, len(data))),
                       packet_type=GPA_DIRECT, trans_id=6, flags=1)
    rig.pool.show(0x9000, RW)
    rig.pool.show(0x9002, RW)
    rig.guest_end.send(gpa([GpaRange(len(data), 0, (0x9002, 0x9000))], srb(p.cdb_rw(False, 40, 12), p.DATA_IN,
                                                                           len(data))),
                       packet_type=GPA_DIRECT, trans_id=7, flags=1)
    rig.run(1 * MS)
    assert rig.reply(6)[1].srb_status == SrbStatus.INVALID_REQUEST
    assert rig.vsp.last_refusal == "PFN 0x7000 is not host-visible read-write"
    assert rig.reply(7)[1].srb_status == SrbStatus.SUCCESS
    assert bytes(rig.pool.page(0x9002)) + bytes(rig.pool.page(0x9000)[:2048]) == data


# -- rings full, close ------------------------------------------------------------------------------


def test_completions_wait_while_the_guest_ring_is_full(disk):
    rig = Rig(disk, ring_pages=2).open()
    rig.guest_end.on_signal = None                            # the guest stops reading
    pfn = rig.pool.pfns[0]
    for t in range(1, 60):  # immediate completions (refused LUN), far more than the ring holds
        rig.guest_end.send(gpa([GpaRange(512, 0, (pfn,))], srb(p.cdb_rw(False, 0, 1), p.DATA_IN, 512, lun=2)),
                           packet_type=GPA_DIRECT, trans_id=t, flags=1)
    assert rig.vsp._backlog and rig.vsp.dropped == 0
    rig.run(1 * MS)                                          # retries find the ring still full
    got = set()
    for _ in range(20):                                      # the guest reads now and then
        got |= {pk.trans_id for pk in rig.guest_end.receive()}
        rig.run(100 * MS)
    assert got == set(range(1, 60)) and not rig.vsp._backlog


def test_a_guest_that_never_reads_costs_bounded_host_memory(disk):
    rig = Rig(disk, vsp={"max_outstanding": 4}, ring_pages=2).open()
    rig.guest_end.on_signal = None
    for t in range(1, 200):   # each refused at once: 199 completions for a ring that takes ~46
        rig.guest_end.send(p.VstorPacket(0x77).encode(), trans_id=t)
    rig.run(500 * MS)
    assert len(rig.vsp._backlog) == 2 * 4 and rig.vsp.dropped > 100
    assert len(rig.host_ctx._timers) <= 1                    # one retry, backing off


def test_the_vsc_waits_while_the_host_ring_is_full(disk):
    rig = Rig(disk, ring_pages=2).open()
    rig.host_end.on_signal = None                            # the host is slow to read
    reqs = [rig.vsc.write(i, bytes([i]) * 512) for i in range(40)]
    assert rig.vsc.pending                                   # the ring took what it could
    rig.host_end.on_signal = rig.host_signalled
    rig.host_signalled()                                     # the host reads; the guest is signalled
    for _ in range(40):
        rig.run(1 * MS)
    assert all(r.ok for r in reqs) and not rig.vsc.pending
    assert disk.read(39 * 512, 512) == bytes([39]) * 512


def test_close_fails_outstanding_requests_and_closes_the_file(tmp_path):
    path = tmp_path / "c.vhd"
    VirtualDisk.create(path, SIZE, "dynamic").close()
    rig = Rig(None, vsp={"disk": None, "path": str(path)}).open()
    reqs = [rig.vsc.read(i, 1) for i in range(3)]
    rig.vsc.on_close()
    rig.vsp.on_close()
    rig.run(1 * MS)                                          # the timers find the device closed
    assert [r.error for r in reqs] == ["channel closed"] * 3 and rig.vsc.state is State.CLOSED
    with VirtualDisk.open(path):                             # the lock went with the VSP
        pass


def test_the_device_is_registered_through_the_entry_point_group():
    from drivers.registry import discover
    registry = discover()
    assert registry["storage"] is DEVICE and registry.by_class(p.CLASS_ID) is DEVICE
