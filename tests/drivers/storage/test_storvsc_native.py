"""storvsc's one-crossing path (native/storvsc.c) against its pure-Python reference (config
native=False): the same packets on the wire byte for byte, the same guest-visible results, the
same handling of hostile completions, and a corrupt ring that breaks its own channel only."""
import dataclasses
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.storage import protocol as p
from drivers.storage.protocol import NtStatus, Operation, ScsiRequest
from drivers.storage.vhd import VirtualDisk
from drivers.storage.vsc import INIT_TRANS_ID, Completions, State
from hypervisor import _binding
from tests.drivers.storage.test_storvsp import MS, Rig
from vmbus.ring import PKT_COMP, IncomingRing, OutgoingRing, RingCorrupt

DISK = 1 << 20   # 2048 blocks


def _rig(path, native: bool, **kw) -> Rig:
    VirtualDisk.create(path, DISK, "dynamic", write_barriers=False).close()
    disk = VirtualDisk.open(path, write_barriers=False)
    return Rig(disk, vsc={"native": native, **kw.pop("vsc", {})}, **kw)


def _seen(request) -> tuple:
    """What a guest sees of a request."""
    return (request.kind, request.lun, request.lba, request.count, request.done, request.ok, request.data,
            request.error, request.srb_status, request.scsi_status, request.sense, request.transferred)


def _issue(vsc, op) -> object:
    kind, lba, count, fill = op
    count = min(count, vsc.max_blocks)
    lba = min(lba, vsc.capacity - count)
    if kind == "read":
        return vsc.read(lba, count)
    if kind == "peek":
        return vsc.read(lba, count, copy=False)
    if kind == "write":
        return vsc.write(lba, bytes([fill]) * (512 * count))
    if kind == "flush":
        return vsc.flush()
    if kind == "past":                  # beyond the disk: CHECK CONDITION with sense
        return vsc.execute(p.cdb_rw(False, vsc.capacity + lba, 1), data_in=512)
    return vsc.execute(p.cdb_inquiry(96), data_in=96)


OPS = st.lists(st.tuples(st.sampled_from(["read", "peek", "write", "flush", "past", "inquiry"]),
                         st.integers(0, 2047), st.integers(1, 80), st.integers(0, 255)),
               min_size=1, max_size=24)


def _run(path, native, batches, **kw):
    rig = _rig(path, native, **kw).open()
    calls = []
    rig.vsc._send_reference = _counting(rig.vsc._send_reference, calls)
    requests = []
    for batch in batches:
        requests += [_issue(rig.vsc, op) for op in batch]
        rig.run(2 * MS)
    rig.run(50 * MS)
    return rig, requests, calls


def _counting(fn, calls):
    def counted(request, pages, trans_id):
        calls.append(not pages or pages[-1] - pages[0] == len(pages) - 1)
        return fn(request, pages, trans_id)
    return counted


@settings(max_examples=40, deadline=None)
@given(batches=st.lists(OPS, min_size=1, max_size=3), ring_pages=st.sampled_from([2, 16]),
       max_outstanding=st.sampled_from([1, 3, 64]))
def test_the_native_path_sends_and_completes_exactly_as_the_reference(tmp_path_factory, batches, ring_pages,
                                                                       max_outstanding):
    """Random mixes of I/O, with rings small enough to fill and bounds that queue: every packet
    the host receives is the reference's byte for byte, and every request ends the same."""
    d = tmp_path_factory.mktemp("pair")
    kw = {"ring_pages": ring_pages, "vsc": {"max_outstanding": max_outstanding}}
    ref, ref_requests, _ = _run(d / "ref.vhd", False, batches, **kw)
    new, new_requests, fallback = _run(d / "new.vhd", True, batches, **kw)
    assert new.vsc._native is not None and ref.vsc._native is None
    assert new.to_host == ref.to_host           # Packet: type, flags, trans_id, payload, header
    assert new.to_guest == ref.to_guest
    assert [_seen(r) for r in new_requests] == [_seen(r) for r in ref_requests]
    assert bytes(new.pool.memory) == bytes(ref.pool.memory)   # the bounce pages too
    # The reference path ran only for bounce pages that are not consecutive, or where the ring
    # was full (it asks the host for room).
    assert ring_pages == 2 or all(not consecutive for consecutive in fallback)


def test_i_o_takes_one_crossing_each_way(tmp_path, monkeypatch):
    rig = _rig(tmp_path / "d.vhd", True).open()
    counts = {"submit": 0, "complete": 0, "other ring calls": 0}
    for name, attr in (("submit", "hv_storvsc_submit"), ("complete", "hv_storvsc_complete")):
        monkeypatch.setattr(_binding, attr, _counting_any(getattr(_binding, attr), counts, name))
    mine = (rig.guest_end.outgoing, rig.guest_end.incoming)
    for cls, attr in ((OutgoingRing, "write_packet"), (OutgoingRing, "write"), (IncomingRing, "read_batch"),
                      (IncomingRing, "read")):
        monkeypatch.setattr(cls, attr, _counting_mine(getattr(cls, attr), counts, mine))
    reqs = [rig.vsc.write(8, b"x" * 4096), rig.vsc.read(8, 8), rig.vsc.flush()]
    rig.run(5 * MS)
    assert all(r.ok for r in reqs) and reqs[1].data == b"x" * 4096
    assert counts["submit"] == 3 and 1 <= counts["complete"] <= 3 and counts["other ring calls"] == 0


def _counting_any(fn, counts, name):
    def counted(*args, **kw):
        counts[name] += 1
        return fn(*args, **kw)
    return counted


def _counting_mine(fn, counts, mine):
    def counted(self, *args, **kw):
        counts["other ring calls"] += any(self is ring for ring in mine)
        return fn(self, *args, **kw)
    return counted


def test_a_read_without_copy_leaves_the_data_in_the_bounce_pages(tmp_path):
    rig = _rig(tmp_path / "d.vhd", True).open()
    vsc = rig.vsc
    assert vsc.write(16, bytes(range(256)) * 16).done is False
    rig.run(2 * MS)
    done = []
    peek = vsc.read(16, 8, done.append, copy=False)
    rig.run(2 * MS)
    assert done == [peek] and peek.ok and peek.data is None and peek.transferred == 4096
    assert bytes(rig.pool.memory[:4096]) == bytes(range(256)) * 16   # the first bounce page


def _completion(trans_id, srb_status, scsi_status, transferred, sense=b"", sense_len=None, op=Operation.COMPLETE_IO,
                status=0):
    srb = dataclasses.replace(ScsiRequest.for_cdb(p.cdb_rw(False, 0, 1), p.DATA_IN, transferred),
                              srb_status=srb_status, scsi_status=scsi_status, payload=sense[:20],
                              sense_info_length=len(sense) if sense_len is None else sense_len)
    return p.VstorPacket(op, 0, status, srb.encode()).encode()


HOSTILE = st.lists(st.tuples(
    st.sampled_from([PKT_COMP, 6, 9]),
    st.sampled_from([1, 2, 3, 4, 99, 0, INIT_TRANS_ID, 2**64 - 1]),
    st.one_of(
        st.binary(max_size=80),
        st.builds(_completion, st.just(0), st.sampled_from([0, 1, 4, 0x81, 0x84, 0xC1, 0x3F]),
                  st.sampled_from([0, 2, 8]), st.sampled_from([0, 1, 512, 4096, 2**32 - 1]),
                  st.sampled_from([b"", p.sense_fixed(5, 0x21), b"\x72\x03\x11\x00", b"\x7f" * 20]),
                  st.sampled_from([None, 0, 3, 200]),
                  st.sampled_from([Operation.COMPLETE_IO, Operation.ENUMERATE_BUS, 0x77]),
                  st.sampled_from([0, NtStatus.UNSUCCESSFUL])))), max_size=10)


@settings(max_examples=120, deadline=None)
@given(replies=HOSTILE)
def test_hostile_completions_end_requests_as_the_reference_does(tmp_path_factory, replies):
    """A host that answers with anything: statuses with and without sense, short, long and
    unknown transfers, unknown and repeated ids, other operations, bytes that are no packet."""
    d = tmp_path_factory.mktemp("hostile")
    results = []
    for native in (False, True):
        rig = _rig(d / f"{native}.vhd", native).open()
        rig.host_end.on_signal = None                   # the test answers, not storvsp
        vsc = rig.vsc
        reqs = [vsc.read(0, 1), vsc.read(1, 8), vsc.write(2, b"w" * 512), vsc.flush()]
        for kind, trans_id, payload in replies:             # ids 1-4 are the requests'
            rig.host_end.send(payload, packet_type=kind, trans_id=trans_id)
        results.append(([_seen(r) for r in reqs], vsc.state, vsc.error, sorted(vsc.outstanding),
                        [r.id for r in vsc.completed], list(rig.to_guest)))
    assert results[0] == results[1]


def test_a_corrupt_ring_breaks_only_that_channel_on_the_native_path(tmp_path):
    rig = _rig(tmp_path / "d.vhd", True).open()
    ring = rig.guest_end.incoming
    struct.pack_into("<I", ring._mem, 0, 12)           # write_index unaligned: the host lied
    with pytest.raises(RingCorrupt):
        rig.guest_end.receive()
    with pytest.raises(RingCorrupt):                   # and it stays broken
        rig.guest_end.receive()
    other = _rig(tmp_path / "e.vhd", True).open()      # another channel is unaffected
    req = other.vsc.read(0, 1)
    other.run(2 * MS)
    assert req.ok and other.vsc.state is State.READY


def test_receive_still_gives_packets_to_callers_that_look_at_them(tmp_path):
    rig = _rig(tmp_path / "d.vhd", True).open()
    rig.host_end.on_signal = None
    rig.guest_end.on_signal = None
    req = rig.vsc.read(0, 1)
    (trans_id,) = rig.vsc.outstanding
    rig.host_end.send(_completion(0, 1, 0, 512), packet_type=PKT_COMP, trans_id=trans_id)
    rig.host_end.send(b"junk", packet_type=PKT_COMP, trans_id=2)
    batch = rig.guest_end.receive()
    assert type(batch) is Completions and [pk.trans_id for pk in batch] == [trans_id, 2]
    assert p.decode_packet(batch[0].payload).operation == Operation.COMPLETE_IO
    rig.vsc.on_packets(batch)
    assert req.ok and req.transferred == 512


def test_the_c_call_refuses_what_it_cannot_send_and_changes_nothing(tmp_path):
    rig = _rig(tmp_path / "d.vhd", True).open()
    vsc = rig.vsc
    before_ring, before_pool = bytes(rig.guest_end.outgoing._mem), bytes(rig.pool.memory)
    ring = rig.guest_end.outgoing._pinned
    bad = [dict(cdb=b""), dict(cdb=bytes(17)), dict(lun=256), dict(first_page=16), dict(length=17 * 4096),
           dict(data=b"x" * 8, length=4)]
    for override in bad:
        args = {"trans_id": 9, "lun": 0, "data_in": p.DATA_OUT, "length": 4096, "first_page": 0,
                "cdb": p.cdb_rw(True, 0, 8), "data": b"y" * 4096, **override}
        with pytest.raises(ValueError):
            _binding.hv_storvsc_submit(ring, vsc._native, **args)
    assert bytes(rig.guest_end.outgoing._mem) == before_ring and bytes(rig.pool.memory) == before_pool


@settings(max_examples=30, deadline=None)
@given(lba=st.integers(0, 2047), count=st.integers(1, 64), write=st.booleans())
def test_a_block_request_is_the_scsi_command_it_stands_for(tmp_path_factory, lba, count, write):
    """Disk reads and writes (built at once when every check passes) put on the wire what the
    same READ/WRITE sent as a raw SCSI command does, and end the same way."""
    rig = _rig(tmp_path_factory.mktemp("cmd") / "d.vhd", True).open()
    vsc = rig.vsc
    count = min(count, vsc.max_blocks, vsc.capacity - lba) or 1
    lba = min(lba, vsc.capacity - count)
    data = bytes([lba & 0xFF]) * (512 * count)
    block = vsc.write(lba, data) if write else vsc.read(lba, count)
    rig.run(2 * MS)
    raw = (vsc.execute(p.cdb_rw(True, lba, count), data_out=data) if write
           else vsc.execute(p.cdb_rw(False, lba, count), data_in=512 * count))
    rig.run(2 * MS)
    sent = rig.to_host[-2:]
    assert [(pk.type, pk.flags, pk.payload, pk.header) for pk in sent[:1]] == \
        [(pk.type, pk.flags, pk.payload, pk.header) for pk in sent[1:]]
    assert _seen(block)[4:] == _seen(raw)[4:] and block.kind == ("write" if write else "read")
    assert (block.lun, block.lba, block.count, block.cdb, block.data_in, block.length) == \
        (0, lba, count, raw.cdb, raw.data_in, raw.length)


def test_after_close_nothing_points_into_the_pages_the_guest_took_back(tmp_path):
    rig = _rig(tmp_path / "d.vhd", True).open()
    assert rig.guest_end.reader is not None
    req = rig.vsc.read(0, 1)
    rig.vsc.on_close()
    assert req.error == "channel closed" and rig.vsc._native is None and rig.guest_end.reader is None
    rig.host_end.send(_completion(0, 1, 0, 512), packet_type=PKT_COMP, trans_id=1)   # read the plain way
    assert rig.to_guest[-1].trans_id == 1 and type(rig.guest_end.receive()) is list
