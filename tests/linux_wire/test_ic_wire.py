"""The heartbeat and time-sync ICs against a guest that handles them as Linux's hv_utils does
(drivers/hv/hv_util.c, drivers/hv/channel_mgmt.c vmbus_prep_negotiate_resp): message bodies
have Linux's sizes, so Linux's length checks keep every message."""
import struct

import pytest

from drivers.ic import HEARTBEAT, TIMESYNC
from drivers.ic.heartbeat.vsp import HeartbeatStatus
from tests.drivers.ic.harness import S
from drivers.device import ManualContext
from vmbus.channel import connected_pair

ICMSG_HDR = 28                  # sizeof(struct vmbuspipe_hdr) + sizeof(struct icmsg_hdr)
HEARTBEAT_MSG_DATA = 40         # struct heartbeat_msg_data: seq_num u64, reserved u32[8]
ICTIMESYNC_REF_DATA = 22        # struct ictimesync_ref_data (v4), packed
ICTIMESYNC_DATA = 25            # struct ictimesync_data (v3 and older), packed
FW_VERSIONS = [(3, 0), (1, 0)]  # UTIL_FW_VERSION, UTIL_WS2K8_FW_VERSION
SERVICE_VERSIONS = {1: [(3, 0), (1, 0)], 4: [(4, 0), (3, 0), (1, 0)]}   # hb_versions, ts_versions
TRANSACTION, RESPONSE = 1, 4


class LinuxUtil:
    """One hv_util service: answers negotiations as vmbus_prep_negotiate_resp does, and handles
    service messages as heartbeat_onchannelcallback / timesync_onchannelcallback do, including
    their length checks (a message that fails one is dropped, not answered)."""

    def __init__(self, service: int):
        self.service = service
        self.version = None
        self.dropped: list[str] = []
        self.messages: list[tuple[int, bytes]] = []   # (icmsgsize, body) of each service message

    def handle(self, end, packet) -> None:
        buf = bytearray(packet.payload)
        recvlen = len(buf)                            # vmbus_recvpacket's bytes, padded to 8
        if recvlen < ICMSG_HDR:
            self.dropped.append("short header")
            return
        msgtype, = struct.unpack_from("<H", buf, 12)
        icmsgsize, = struct.unpack_from("<H", buf, 18)
        if msgtype == 0:
            self._negotiate(buf)
        elif msgtype == self.service:
            need = {1: HEARTBEAT_MSG_DATA,
                    4: ICTIMESYNC_REF_DATA if self.version == (4, 0) else ICTIMESYNC_DATA}[msgtype]
            if recvlen < ICMSG_HDR + need:
                self.dropped.append(f"{recvlen} bytes < {ICMSG_HDR} + {need}")
                return
            self.messages.append((icmsgsize, bytes(buf[ICMSG_HDR:ICMSG_HDR + icmsgsize])))
            if msgtype == 1:
                seq, = struct.unpack_from("<Q", buf, ICMSG_HDR)
                struct.pack_into("<Q", buf, ICMSG_HDR, seq + 1)
        buf[25] = TRANSACTION | RESPONSE              # icflags
        end.send(bytes(buf), trans_id=packet.trans_id)  # the whole buffer back, recvlen bytes

    def _negotiate(self, buf: bytearray) -> None:
        fw_count, srv_count = struct.unpack_from("<HH", buf, ICMSG_HDR)
        listed = [struct.unpack_from("<HH", buf, ICMSG_HDR + 8 + 4 * i) for i in range(fw_count + srv_count)]
        fw = next((v for v in FW_VERSIONS if v in listed[:fw_count]), None)
        srv = next((v for v in SERVICE_VERSIONS[self.service] if v in listed[fw_count:]), None)
        struct.pack_into("<H", buf, 18, 0x10)        # icmsgsize
        if fw and srv:
            struct.pack_into("<HH", buf, ICMSG_HDR, 1, 1)
            struct.pack_into("<HHHH", buf, ICMSG_HDR + 8, *fw, *srv)
            self.version = srv
        else:
            struct.pack_into("<HH", buf, ICMSG_HDR, 0, 0)


def linux_guest(device, host=None):
    ctx = ManualContext()
    host_end, guest_end = connected_pair(device.ring_pages)
    vsp = device.vsp(host_end, host or {}, ctx)
    util = LinuxUtil(1 if device is HEARTBEAT else 4)
    host_end.on_signal = lambda: vsp.on_packets(host_end.receive())
    guest_end.on_signal = lambda: [util.handle(guest_end, pk) for pk in guest_end.receive()]
    vsp.on_open()
    return vsp, util, ctx


def test_linux_keeps_every_heartbeat_and_the_host_sees_the_answers():
    vsp, util, ctx = linux_guest(HEARTBEAT)
    ctx.advance(10 * S)
    assert util.dropped == []
    assert [size for size, _ in util.messages] == [HEARTBEAT_MSG_DATA] * len(util.messages)
    assert len(util.messages) >= 5 and vsp.status is HeartbeatStatus.OK and vsp.rejected == 0


@pytest.mark.parametrize("versions, size", [(None, ICTIMESYNC_REF_DATA), (["3.0"], ICTIMESYNC_DATA)])
def test_time_messages_have_linux_sizes(versions, size):
    vsp, util, ctx = linux_guest(TIMESYNC, {"versions": versions} if versions else None)
    ctx.advance(12 * S)
    assert util.dropped == [] and util.messages
    assert {icmsgsize for icmsgsize, _ in util.messages} == {size}
