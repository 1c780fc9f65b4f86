"""netvsp against the bytes Linux's netvsc sends (drivers/net/hyperv/netvsc.c, rndis_filter.c,
hyperv_net.h over drivers/hv/channel.c), the host's packets checked as Linux's netvsc_receive
and netvsc_send_completion check them, and hvsim's netvsc framing its packets as Linux does."""
import struct

from drivers.device import ManualContext
from drivers.network import protocol as p
from drivers.network.vsp import NetVsp
from drivers.network.vswitch import VirtualSwitch
from tests.drivers.network.test_nvsp import Lan
from tests.linux_wire import linux

NVSP_MESSAGE_SIZE = 40          # sizeof(struct nvsp_message) in hyperv_net.h
RQST_INIT = 2**64 - 3           # VMBUS_RQST_INIT
RECV_PFN, RECV_PAGES = 0x1000, 64
SEND_PFN, SEND_PAGES = 0x2000, 16
RECV_GPADL, SEND_GPADL = 0xE1E10, 0xE1E11


def nvsp(fmt: str, *fields) -> bytes:
    """A struct nvsp_message as netvsc.c fills one: header u32 msg_type, the union's fields,
    zeros to its full size; it is always sent whole (vmbus_sendpacket(..., sizeof(struct
    nvsp_message), ...))."""
    return struct.pack("<" + fmt, *fields).ljust(NVSP_MESSAGE_SIZE, b"\0")


def rndis_initialize(req_id: int) -> bytes:
    """rndis_filter.c rndis_filter_init_device: RNDIS_MSG_INIT, msg_len, req_id, major 1,
    minor 0, max_xfer_size 0x4000."""
    return struct.pack("<6I", 2, 24, req_id, 1, 0, 0x4000)


class LinuxGuest:
    def __init__(self):
        self.ctx = ManualContext()
        self.recv = bytearray(RECV_PAGES * 4096)
        self.send = bytearray(SEND_PAGES * 4096)
        gpadls = {RECV_GPADL: (self.recv, list(range(RECV_PFN, RECV_PFN + RECV_PAGES))),
                  SEND_GPADL: (self.send, list(range(SEND_PFN, SEND_PFN + SEND_PAGES)))}
        self.ctx.gpadl_view = lambda gid: memoryview(gpadls[gid][0]) if gid in gpadls else None
        resolve = lambda gid: (memoryview(gpadls[gid][0]), gpadls[gid][1]) if gid in gpadls else None  # noqa: E731
        self.ring = linux.LinuxRing(16)
        self.switch = VirtualSwitch("sw", now=self.ctx.now)
        self.vsp = NetVsp(self.ring.host, {"switch": self.switch, "mac": "00:15:5d:00:00:01",
                                           "resolve_gpadl": resolve}, self.ctx)
        self.ring.host.on_signal = lambda: self.vsp.on_packets(self.ring.host.receive())
        self.vsp.on_open()

    def request(self, packet: bytes):
        self.ring.write(packet)
        return self.ring.read()

    def bring_up(self):
        """netvsc.c netvsc_connect_vsp then netvsc_init_buf, in Linux's order."""
        (done,) = self.request(linux.inband(nvsp("III", 1, p.NVSP_VERSION_61, p.NVSP_VERSION_61), RQST_INIT))
        assert self.request(linux.inband(nvsp("III", 100, 6, 30), RQST_INIT, flags=0)) == []
        assert self.request(linux.inband(nvsp("IIIQ", 125, 1514, 0, 0), RQST_INIT, flags=0)) == []
        (recv_done,) = self.request(linux.inband(nvsp("IIH", 101, RECV_GPADL, 0xCAFE), RQST_INIT))
        (send_done,) = self.request(linux.inband(nvsp("IIH", 104, SEND_GPADL, 0), RQST_INIT))
        return done, recv_done, send_done


def test_every_nvsp_completion_is_a_whole_nvsp_message():
    guest = LinuxGuest()
    for reply in guest.bring_up():
        assert reply.type == linux.VM_PKT_COMP and reply.trans_id == RQST_INIT
        # netvsc_send_completion / netvsc_connect_vsp copy sizeof(struct nvsp_message) out.
        assert (reply.len8 - reply.offset8) * 8 >= NVSP_MESSAGE_SIZE
    assert guest.vsp.version == p.NVSP_VERSION_61 and guest.vsp.send is not None


def test_rndis_control_in_page_buffers_is_answered_in_a_transfer_page_packet_linux_accepts():
    guest = LinuxGuest()
    guest.bring_up()
    # rndis_filter_send_request: the message goes out in page buffers (netvsc_send_pkt ->
    # vmbus_sendpacket_pagebuffer), section index NETVSC_INVALID_INDEX, size 0. Here it lies
    # across the boundary of send-buffer pages 2 and 3, so it takes two page buffers.
    message = rndis_initialize(7)
    start = 3 * 4096 - 10
    guest.send[start:start + len(message)] = message
    pages = [(10, 4086, SEND_PFN + 2), (len(message) - 10, 0, SEND_PFN + 3)]
    packet = linux.page_buffer(pages, nvsp("III", 107, 1, 0xFFFFFFFF), trans_id=5)
    assert struct.unpack_from("<HH", packet) == (9, (16 + 8 + 2 * 16) // 8)
    replies = guest.request(packet)
    (completion,) = [r for r in replies if r.type == linux.VM_PKT_COMP]
    assert completion.trans_id == 5 and struct.unpack_from("<II", completion.payload) == (108, 1)
    (xfer,) = [r for r in replies if r.type == linux.VM_PKT_DATA_USING_XFER_PAGES]
    # netvsc_receive's checks, on the packet as it lies in the ring.
    pageset, _, _, count = struct.unpack_from("<HBBI", xfer.header)
    assert pageset == 0xCAFE and count >= 1
    assert xfer.offset8 * 8 >= 24 + 8 * count                    # NETVSC_XFER_HEADER_SIZE(count)
    assert len(xfer.payload) >= NVSP_MESSAGE_SIZE
    assert struct.unpack_from("<II", xfer.payload) == (107, 1)  # SEND_RNDIS_PKT on the control channel
    size, offset = struct.unpack_from("<II", xfer.header, 8)
    kind, length, req_id, status = struct.unpack_from("<4I", guest.recv, offset)
    assert (kind, req_id, status) == (0x80000002, 7, 0) and length <= size
    assert guest.vsp.rndis.value == "initialized" and not guest.vsp.refused


def test_page_buffers_outside_the_shared_buffers_are_refused():
    guest = LinuxGuest()
    guest.bring_up()
    packet = linux.page_buffer([(24, 0, 0x5000)], nvsp("III", 107, 1, 0xFFFFFFFF), trans_id=6)
    (completion,) = guest.request(packet)
    assert struct.unpack_from("<II", completion.payload) == (108, p.NvspStatus.INVALID_RNDIS_PKT)
    assert guest.vsp.refused["gpa_page"] == 1 and guest.vsp.rndis.value == "uninitialized"


def test_hvsim_netvsc_sends_what_linux_sends():
    lan = Lan()
    a = lan.adapter(up=False)
    sent = []

    def host_signalled():
        packets = a.host_end.receive()
        sent.extend(packets)
        lan.queue.append(lambda: a.vsp.on_packets(packets))

    a.host_end.on_signal = host_signalled
    a.vsc.on_open()
    lan.settle()
    assert a.vsc.ready, a.vsc.error
    requests = [pk for pk in sent if pk.type != linux.VM_PKT_COMP]
    control = [pk for pk in requests if pk.type == linux.VM_PKT_DATA_INBAND]
    for pk in control:   # INIT, NDIS version and config, the two buffers: whole nvsp_messages
        raw = struct.pack("<HHHHQ", pk.type, pk.offset8, pk.len8, pk.flags, pk.trans_id) + pk.payload
        assert raw == linux.inband(pk.payload[:NVSP_MESSAGE_SIZE], pk.trans_id, pk.flags)
    assert [struct.unpack_from("<I", pk.payload)[0] for pk in control] == [1, 100, 125, 101, 104]
    rndis = [pk for pk in requests if pk.type == linux.VM_PKT_DATA_USING_GPA_DIRECT]
    assert len(rndis) == 6   # initialize, four queries, the packet filter
    for pk in rndis:
        raw = struct.pack("<HHHHQ", pk.type, pk.offset8, pk.len8, pk.flags, pk.trans_id) + pk.header + pk.payload
        _, count = struct.unpack_from("<II", pk.header)
        pages = [struct.unpack_from("<IIQ", pk.header, 8 + 16 * i) for i in range(count)]
        assert pk.payload[:NVSP_MESSAGE_SIZE] == nvsp("III", 107, 1, 0xFFFFFFFF)
        assert raw == linux.page_buffer(pages, pk.payload[:NVSP_MESSAGE_SIZE], pk.trans_id)
