"""Threat model case 29 (no stale residue in replies): every byte a VSP sends a guest was written
for that request. storvsp's completions are compared byte for byte between a fresh device and one
that has just answered errors with sense data, VPD pages, REPORT LUNS and reads of other blocks:
a completion depends only on its request (and the disk), and its reserved bytes and unused union
bytes are zero."""
from __future__ import annotations

import pytest

from drivers.storage import protocol as p
from drivers.storage.vhd import VirtualDisk
from vmbus.ring import PKT_COMP

from tests.drivers.storage.test_storvsp import MS, SIZE, Rig

DATA = bytes(range(256)) * 2


def requests(vsc):
    """The probed requests: a read, a read past the end (sense), INQUIRY, TEST UNIT READY, an
    unknown opcode (sense), READ CAPACITY and a data-in command given a larger buffer than the
    answer fills."""
    return {
        "read": lambda: vsc.read(0, 1),
        "read past the end": lambda: vsc.read(vsc.capacity, 1),
        "inquiry": lambda: vsc.execute(p.cdb_inquiry(96), data_in=96),
        "test unit ready": lambda: vsc.execute(p.cdb_test_unit_ready()),
        "unknown opcode": lambda: vsc.execute(bytes([0xA3]) + bytes(11), data_in=64),
        "read capacity": lambda: vsc.execute(p.cdb_read_capacity_10(), data_in=8),
        "long buffer": lambda: vsc.execute(p.cdb_inquiry(255), data_in=255),
    }


def history(vsc):
    """What a device may have answered before: errors with other sense data, VPD pages, REPORT
    LUNS, READ CAPACITY(16), reads and writes of other blocks."""
    return [vsc.execute(bytes([0xA3]) + bytes(11), data_in=64),
            vsc.read(vsc.capacity, 1),
            vsc.execute(p.cdb_inquiry(255, page=0x80), data_in=255),
            vsc.execute(p.cdb_inquiry(255, page=0x83), data_in=255),
            vsc.execute(p.cdb_report_luns(256), data_in=256),
            vsc.execute(p.cdb_read_capacity_16(32), data_in=32),
            vsc.write(9, b"\xEE" * 1024),
            vsc.read(9, 2),
            vsc.execute(bytes([0x12, 1, 0x99, 0, 255, 0]), data_in=255)]  # an unknown VPD page


def completion(rig, make) -> bytes:
    """Submit one request and return the payload of the one completion it got."""
    before = len(rig.to_guest)
    request = make()
    rig.run(1 * MS)
    assert request.done
    new = [pk for pk in rig.to_guest[before:] if pk.type == PKT_COMP]
    assert len(new) == 1, new
    return bytes(new[0].payload[:p.PACKET_SIZE])


def fresh_rig(tmp_path, name):
    disk = VirtualDisk.create(tmp_path / f"{name}.vhd", SIZE, "dynamic", write_barriers=False)
    disk.write(0, DATA)
    return disk, Rig(disk).open()


@pytest.mark.parametrize("name", list(requests(None)))
def test_a_storvsp_completion_depends_on_its_request_only(tmp_path, name):
    disk1, clean = fresh_rig(tmp_path, "clean")
    disk2, used = fresh_rig(tmp_path, "used")
    try:
        history(used.vsc)
        used.run(5 * MS)
        assert completion(used, requests(used.vsc)[name]) == completion(clean, requests(clean.vsc)[name])
    finally:
        disk1.close()
        disk2.close()


@pytest.mark.parametrize("name", list(requests(None)))
def test_a_storvsp_completion_has_zero_reserved_and_unused_bytes(tmp_path, name):
    disk, rig = fresh_rig(tmp_path, "d")
    try:
        history(rig.vsc)
        rig.run(5 * MS)
        raw = completion(rig, requests(rig.vsc)[name])
        packet = p.decode_packet(raw)
        assert packet.encode() == raw
        reply = p.ScsiRequest.decode(packet.body)
        # the encoder writes zeros into every reserved field and the union's tail: re-encoding
        # the decoded fields gives the same bytes only if the VSP left nothing else there
        assert reply.encode() + bytes(p.UNION_SIZE - p.REQUEST_SIZE) == packet.body
        if reply.srb_status & p.SRB_STATUS_AUTOSENSE_VALID:
            # sense data fills sense_info_length bytes of the union; the rest is zero
            assert reply.payload[reply.sense_info_length:] == bytes(len(reply.payload) - reply.sense_info_length)
    finally:
        disk.close()
