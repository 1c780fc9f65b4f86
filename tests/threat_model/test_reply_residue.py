"""Threat model case 29 (no stale residue in replies): every byte a VSP sends a guest was written
for that request. storvsp's completions are compared byte for byte between a fresh device and one
that has just answered errors with sense data, VPD pages, REPORT LUNS and reads of other blocks:
a completion depends only on its request (and the disk), and its reserved bytes and unused union
bytes are zero. The same for netvsp's NVSP completions and RNDIS answers and for every integration
service's messages (below)."""
from __future__ import annotations

import struct

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


# ---- netvsp: NVSP completions and RNDIS messages ---------------------------------------------------
#
# What netvsp sends a guest is an NVSP message in a completion packet, or a transfer-page packet
# naming a range of the guest's receive buffer that holds one RNDIS message. A reply is everything
# the guest is given to read: the packet's type, payload and header, and the bytes of each range.
# Two things may differ with the history and carry nothing: the transfer id (an opaque counter the
# guest completes by) and which free section a message went to (its offset); they are left out.

from drivers.network import protocol as n  # noqa: E402
from drivers.network.vsp import QUERY_OIDS  # noqa: E402
from tests.drivers.network.test_nvsp import Lan, inband  # noqa: E402


def recorder(adapter) -> list:
    """Record what the VSP gives the guest: (packet type, payload, [range bytes]) per packet, the
    transfer-page header reduced to its range lengths; every transfer is completed, as a guest must."""
    seen: list = []

    def on_signal():
        for packet in adapter.guest_end.receive():
            ranges = []
            header = bytes(packet.header)
            if packet.type == n.PKT_DATA_USING_XFER_PAGES:
                pageset, spans = n.decode_transfer_pages(header, 8)
                view = adapter.vsp.receive.view
                ranges = [bytes(view[offset:offset + count]) for offset, count in spans]
                # the header's own bytes, reserved ones included, with the offsets zeroed
                header = bytearray(header)
                for i in range(len(spans)):
                    struct.pack_into("<I", header, 8 + 8 * i + 4, 0)
                adapter.guest_end.send(n.encode_nvsp(n.RndisPacketComplete(1)), packet_type=PKT_COMP,
                                       trans_id=packet.trans_id)
            seen.append((packet.type, bytes(packet.payload), bytes(header), ranges))
    adapter.guest_end.on_signal = lambda: adapter.lan.queue.append(on_signal)
    return seen


def _rndis(message) -> bytes:
    return inband(n.encode_rndis(message))


# The probed requests: an answer is expected for each (a completion, an RNDIS answer or both).
NET_PROBES = {
    "init again": n.encode_nvsp(n.Init(n.NVSP_VERSION_61, n.NVSP_VERSION_61)),
    "query supported list": _rndis(n.RndisQuery(7, n.OID_GEN_SUPPORTED_LIST)),
    "query mac": _rndis(n.RndisQuery(8, n.OID_802_3_CURRENT_ADDRESS)),
    "query refused oid": _rndis(n.RndisQuery(9, 0xFFFFFFFF)),
    "query with an information buffer": _rndis(n.RndisQuery(10, n.OID_GEN_MAXIMUM_FRAME_SIZE, b"\xEE" * 64)),
    "set filter": _rndis(n.RndisSet(11, n.OID_GEN_CURRENT_PACKET_FILTER,
                                    struct.pack("<I", n.FILTER_DIRECTED | n.FILTER_BROADCAST | n.FILTER_ALL_MULTICAST))),
    "set refused": _rndis(n.RndisSet(12, n.OID_GEN_CURRENT_PACKET_FILTER, b"\1\0")),
    "keepalive": _rndis(n.RndisKeepalive(13)),
    "bad section": n.encode_nvsp(n.SendRndisPacket(0, 0xFFFF, 64)),
    "second receive buffer": n.encode_nvsp(n.SendReceiveBuffer(0xDEAD, 1)),
    "second send buffer": n.encode_nvsp(n.SendSendBuffer(0xDEAD, 2)),
}


def net_history(adapter) -> None:
    """What the guest may have asked before: every OID, refused OIDs with long information
    buffers, sets that fail, garbage, and frames in both directions; the packet filter ends where
    a fresh device has it (documented state the probes read)."""
    for req, oid in enumerate(QUERY_OIDS, start=1000):
        adapter.guest_sends(_rndis(n.RndisQuery(req, oid)))
    for req, oid in enumerate((n.OID_SWITCH_NIC_REQUEST, n.OID_TCP_OFFLOAD_PARAMETERS, 0x01010101), start=2000):
        adapter.guest_sends(_rndis(n.RndisQuery(req, oid, b"\xA5" * 200)))
        adapter.guest_sends(_rndis(n.RndisSet(req, oid, b"\x5A" * 300)))
    adapter.guest_sends(_rndis(n.RndisSet(3000, n.OID_GEN_CURRENT_PACKET_FILTER, struct.pack("<I", n.FILTER_PROMISCUOUS))))
    adapter.guest_sends(_rndis(n.RndisQuery(3001, n.OID_GEN_CURRENT_PACKET_FILTER)))
    adapter.guest_sends(b"\xFF" * 37)
    adapter.guest_sends(n.encode_nvsp(n.SendRndisPacket(0, 0, 0)) + b"\xC3" * 100)
    adapter.guest_sends(_rndis(n.RndisSet(3002, n.OID_GEN_CURRENT_PACKET_FILTER,
                                          struct.pack("<I", n.FILTER_DIRECTED | n.FILTER_BROADCAST | n.FILTER_ALL_MULTICAST))))
    adapter.guest_sends(_rndis(n.RndisKeepalive(3003)))
    # every receive section once more, each left holding the longest answer there is, so that the
    # probe's answer goes into a section that held an earlier one
    for req in range(adapter.vsp.receive.count + 1):
        adapter.guest_sends(_rndis(n.RndisQuery(4000 + req, n.OID_GEN_SUPPORTED_LIST)))


def net_reply(adapter, seen, payload) -> list:
    before = len(seen)
    adapter.guest_sends(payload, trans_id=0x42)
    adapter.lan.settle()
    new = seen[before:]
    assert new, "the probe got no answer"
    return new


@pytest.mark.parametrize("name", list(NET_PROBES))
def test_a_netvsp_reply_depends_on_its_request_only(name):
    clean_lan, used_lan = Lan(), Lan()
    clean, used = clean_lan.adapter(), used_lan.adapter()
    clean_seen, used_seen = recorder(clean), recorder(used)
    net_history(used)
    assert used.vsp.refusals > 0   # the history was hostile
    assert net_reply(used, used_seen, NET_PROBES[name]) == net_reply(clean, clean_seen, NET_PROBES[name])


def _canonical_rndis(data: bytes) -> bytes:
    message = n.decode_rndis(data)
    return n.encode_rndis(message) if not isinstance(message, n.RndisPacket) else n.encode_packet(message.data)


@pytest.mark.parametrize("name", list(NET_PROBES))
def test_a_netvsp_reply_has_zero_reserved_and_padding_bytes(name):
    lan = Lan()
    adapter = lan.adapter()
    seen = recorder(adapter)
    net_history(adapter)
    for kind, payload, header, ranges in net_reply(adapter, seen, NET_PROBES[name]):
        # the whole 40-byte nvsp_message is what its fields encode to: padding and reserved zero
        message, rest = n.decode_nvsp(payload)
        assert n.encode_nvsp(message) == payload[:len(payload) - len(rest)] and rest == bytes(len(rest))
        if kind == n.PKT_DATA_USING_XFER_PAGES:
            pageset, spans = n.decode_transfer_pages(header, 8)
            assert n.encode_transfer_pages(pageset, spans) == header   # reserved fields zero
            for data in ranges:
                # every field of the RNDIS message is one the encoder writes (reserved zero), and
                # the range holds that message and nothing after it
                assert _canonical_rndis(data) == data
        else:
            assert kind == PKT_COMP and header == b""


def test_the_netvsp_checks_can_fail():
    """The checks see one stale byte: padding that carries a byte of an earlier answer is not what
    the message's fields encode to, and neither is a range holding a byte past its message."""
    lan = Lan()
    adapter = lan.adapter()
    seen = recorder(adapter)
    (kind, payload, header, ranges), = net_reply(adapter, seen, NET_PROBES["bad section"])
    stale = payload[:-1] + b"\x5A"
    message, rest = n.decode_nvsp(stale)
    assert n.encode_nvsp(message) != stale[:len(stale) - len(rest)]
    (kind, payload, header, ranges), = net_reply(adapter, seen, NET_PROBES["keepalive"])[-1:]
    assert _canonical_rndis(ranges[0] + b"\x5A") != ranges[0] + b"\x5A"


# ---- the integration services: what each VSP sends its guest -------------------------------------
#
# The host starts every IC exchange; the guest answers. What a VSP sends depends on the action it
# was asked for and on its documented state: the negotiated versions, the exchange counter whose
# low byte is the icmsg transaction, the heartbeat sequence and the simulated time a time sample
# carries. The probe is made with that state equal on both devices, after a hostile history on
# one of them: garbage answers, failed exchanges, long keys and values.

from drivers.ic import DEVICES, HEARTBEAT, KVP, SHUTDOWN, TIMESYNC, VSS  # noqa: E402
from drivers.ic import framing as f  # noqa: E402
from drivers.ic.kvp import protocol as kvp  # noqa: E402
from tests.drivers.ic.harness import answer, hostile_guest  # noqa: E402

IC_CONFIG = {"timeout": "1000s", "period": "1000s", "sample_period": 0}
IC_PROBES = {
    "heartbeat": (HEARTBEAT, lambda vsp: vsp._send()),
    "kvp get": (KVP, lambda vsp: vsp.get(kvp.POOL_AUTO, "OSName")),
    "kvp set": (KVP, lambda vsp: vsp.set(kvp.POOL_EXTERNAL, "k", "v")),
    "kvp delete": (KVP, lambda vsp: vsp.delete(kvp.POOL_EXTERNAL, "k")),
    "kvp enumerate": (KVP, lambda vsp: vsp.enumerate(kvp.POOL_GUEST, 0)),
    "shutdown": (SHUTDOWN, lambda vsp: vsp.request_shutdown()),
    "time sync": (TIMESYNC, lambda vsp: vsp.resync()),
    "time sample": (TIMESYNC, lambda vsp: vsp.sample()),
    "vss freeze": (VSS, lambda vsp: vsp.freeze()),
    "vss thaw": (VSS, lambda vsp: vsp.thaw()),
}
IC_HISTORY = {  # by device name
    HEARTBEAT.name: lambda vsp: [vsp._send(), vsp._send()],
    KVP.name: lambda vsp: [vsp.set(kvp.POOL_EXTERNAL, "K" * 250, "V" * 1000), vsp.get(kvp.POOL_AUTO, "L" * 255),
                      vsp.delete(kvp.POOL_GUEST, "M" * 200), vsp.enumerate(kvp.POOL_AUTO, 77)],
    SHUTDOWN.name: lambda vsp: [vsp.request_shutdown(force=True, restart=True, message="R" * 200, timeout_s=5)],
    TIMESYNC.name: lambda vsp: [vsp.resync(), vsp.sample()],
    VSS.name: lambda vsp: [vsp.freeze(), vsp.thaw()],
}


def _negotiated(device):
    vsp, guest_end, sent = hostile_guest(device, dict(IC_CONFIG))
    req = sent[-1]
    header, body = f.decode(req.payload)
    fws, vers = f.parse_negotiate(body)
    guest_end.send(answer(req.payload, f.negotiate_reply(body, fws[:1], vers[:1])[0]), trans_id=req.trans_id)
    assert vsp.version is not None
    del sent[:1]
    _answer(guest_end, sent, garbage=False)   # what the service starts with (a beat, a time sync)
    return vsp, guest_end, sent


def _answer(guest_end, sent, garbage: bool = True) -> None:
    """Answer each request sent (and each one that follows) with garbage if asked, then with an
    error status, which ends it."""
    while sent:
        req = sent.pop(0)
        if garbage:
            guest_end.send(b"\xEE" * 40, trans_id=req.trans_id)
        guest_end.send(answer(req.payload, b"\xDD" * 64, status=f.HV_E_FAIL), trans_id=req.trans_id)


def _ic_pair(name):
    device, probe = IC_PROBES[name]
    clean, _, clean_sent = _negotiated(device)
    used, used_end, used_sent = _negotiated(device)
    IC_HISTORY[device.name](used)
    _answer(used_end, used_sent)
    assert used.rejected > 0 and used._inflight is None
    # the documented state the probe's bytes carry, made equal
    clean._next_id = used._next_id
    if device is HEARTBEAT:
        clean.sequence = used.sequence
    clean.context.time = used.context.time = 5_000_000_000
    clean_sent.clear()
    used_sent.clear()
    probe(clean)
    probe(used)
    (a,), (b,) = clean_sent, used_sent
    return a, b


@pytest.mark.parametrize("name", list(IC_PROBES))
def test_an_ic_message_depends_on_its_request_only(name):
    clean, used = _ic_pair(name)
    assert bytes(used.payload) == bytes(clean.payload)
    assert used.trans_id == clean.trans_id


def _canonical(device, body: bytes, version) -> bytes:
    """The body as its decoded fields encode it: the encoders write zeros into every reserved
    field and the unused tail of every fixed-size field (a KVP key or value, the shutdown text),
    so this equals the body only if nothing else is there."""
    from drivers.ic.heartbeat import protocol as heartbeat
    from drivers.ic.shutdown import protocol as shutdown
    from drivers.ic.timesync import protocol as timesync
    from drivers.ic.vss import protocol as vss
    if device is HEARTBEAT:
        return heartbeat.message(*heartbeat.parse(body))
    if device is KVP:
        return kvp.request(kvp.parse_request(body))
    if device is SHUTDOWN:
        return shutdown.encode(shutdown.parse(body))
    if device is TIMESYNC:
        return timesync.encode(timesync.parse(body, version), version)
    return vss.message(*vss.parse(body))


@pytest.mark.parametrize("name", list(IC_PROBES))
def test_an_ic_message_has_zero_reserved_and_padding_bytes(name):
    device, probe = IC_PROBES[name]
    vsp, guest_end, sent = _negotiated(device)
    IC_HISTORY[device.name](vsp)
    _answer(guest_end, sent)
    sent.clear()
    probe(vsp)
    (packet,) = sent
    payload = bytes(packet.payload)
    header, body = f.decode(payload)
    # the pipe and icmsg headers are what their fields encode to (reserved u16 and icflags' high
    # bits zero), and what pads the packet to 8 bytes after the body is zero
    encoded = f.encode(header, body)
    assert payload[:len(encoded)] == encoded and payload[len(encoded):] == bytes(len(payload) - len(encoded))
    assert _canonical(device, body, vsp.version) == body
    _reserved_zero(device, body, vsp.version)


def _reserved_zero(device, body: bytes, version) -> None:
    """The same, read from the layouts themselves (include/linux/hyperv.h), not through the
    driver's encoders: a residue the encoder itself leaves would survive re-encoding."""
    if device is HEARTBEAT:            # struct heartbeat_msg_data: u64 seq_num, u32 reserved[8]
        assert body[12:40] == bytes(28)   # (the first reserved u32 is OpenVMM's application state)
    elif device is KVP:                # struct hv_kvp_msg: kvp_hdr {u8 operation, u8 pool, u16 pad}
        assert body[2:4] == bytes(2)
        operation = body[0]
        if operation in (kvp.GET, kvp.SET):   # struct hv_kvp_exchg_msg_value
            at = kvp._RECORD_AT[operation]
            key_size, value_size = struct.unpack_from("<II", body, at + 4)
            key = body[at + 12:at + 12 + kvp.MAX_KEY_SIZE]
            value = body[at + 12 + kvp.MAX_KEY_SIZE:at + 12 + kvp.MAX_KEY_SIZE + kvp.MAX_VALUE_SIZE]
            assert key[key_size:] == bytes(len(key) - key_size)
            assert value[value_size:] == bytes(len(value) - value_size)
        elif operation == kvp.DELETE:  # u32 key_size, u8 key[512]
            (key_size,) = struct.unpack_from("<I", body, 4)
            assert body[8 + key_size:8 + kvp.MAX_KEY_SIZE] == bytes(kvp.MAX_KEY_SIZE - key_size)
        else:                          # u32 index, then the record the guest fills in
            assert body[8:] == bytes(len(body) - 8)
    elif device is SHUTDOWN:           # u32 reason, timeout, flags; display_message[2048]: the probe's is empty
        assert body[12:] == bytes(len(body) - 12)
    elif device is TIMESYNC and version.major >= 4:   # ictimesync_ref_data: ..., u8 stratum, u8 reserved[3]
        assert body[19:22] == bytes(3)
    elif device is TIMESYNC:           # ictimesync_data: parenttime, childtime, roundtriptime, flags
        assert body[8:24] == bytes(16)
    elif device is VSS:                # struct hv_vss_hdr: u8 operation, u8 reserved[7]
        assert body[1:8] == bytes(7)
