"""The synthetic network end to end on a simulated host: VMs whose netvsc adapters reach a virtual
switch in the parent through netvsp over VMBus. Two VMs on VLAN 10 ping and exchange UDP; a third
on VLAN 20 reaches neither; a hostile third VM (malformed NVSP/RNDIS, OIDs outside the allow-list,
send sections outside its buffer, a flood) is refused and counted on its own adapter while the
other two keep their throughput; a capture of the traffic decodes in tshark."""
from __future__ import annotations

import struct

from drivers.network import DEVICE as NETWORK
from drivers.network import frames
from drivers.network import protocol as p
from drivers.network.vswitch import VirtualSwitch
from drivers.registry import discover
from hypervisor import Host
from hypervisor.testing.invariants import check_all
from partitions.worker import VmSpec, VmWorker
from tests.drivers.network.test_pcap import tshark
from partitions.vmbus_guest import GuestVmbus
from partitions.vmbus_parent import ParentVmbus
from vmbus.ring import FLAG_COMPLETION_REQUESTED, RingFull

US, MS = 1_000, 1_000_000
REGISTRY = discover()
BUFFER_PAGES = range(64, 160)          # the adapter's receive (64) and send (32) buffers; rings below


class Vm:
    """One child with a network adapter on `switch` and a workload called on every poll of its
    VMBus stack (so that timers it sets run on the guest's own loop)."""

    def __init__(self, host, parent, switch, index, vlan, workload=None):
        self.name = f"vm{index}"
        self.mac = f"00:15:5d:00:0a:{index:02x}"
        self.address = f"10.0.10.{index}"
        self.child = VmWorker(host, VmSpec(self.name, memory="1MiB")).build()
        manager = parent.attach(self.child, [(NETWORK, {"switch": switch, "mac": self.mac, "vlan": vlan,
                                                        "port": self.name})])
        (self.relid,) = manager.relids
        self.parent = parent
        self.workload = workload
        self.stack = GuestVmbus(self.child, REGISTRY, ring_pages=(16, 48), on_poll=self._poll, configs={
            "network": {"address": f"{self.address}/24", "relid": self.relid, "buffer_pages": BUFFER_PAGES}})
        self.child.vp(0).run(self.stack.run)
        host.root.resume_partition(self.child)

    def _poll(self, stack):
        vsc = stack.devices.get("network")
        if self.workload is not None and vsc is not None and vsc.ready:
            self.workload(self, vsc)

    @property
    def vsc(self):
        return self.stack.devices["network"]

    @property
    def vsp(self):
        return self.parent.vsp(self.child, self.relid)


def lan(workloads=(None, None, None), vlans=(10, 10, 20)):
    host = Host(logical_processors=4, memory="64MiB", seed=7)
    parent = ParentVmbus(host, vp_index=1)
    switch = VirtualSwitch("lan", now=lambda: host.now)
    vms = [Vm(host, parent, switch, i + 1, vlan, work) for i, (vlan, work) in enumerate(zip(vlans, workloads))]
    host.run(2 * MS)
    assert all(vm.vsc.ready for vm in vms), [(vm.vsc.state, vm.vsc.error) for vm in vms]
    return host, parent, switch, vms


class UdpStream:
    """A workload: `count` datagrams of `size` bytes to `target`:5000, one every `interval_ns`,
    started at `start_ns` of simulated time and paced by the guest's own timers."""

    def __init__(self, target, count, size=512, interval_ns=20 * US, start_ns=3 * MS):
        self.target, self.count, self.size, self.interval, self.start = target, count, size, interval_ns, start_ns
        self.sent = 0
        self.armed = False

    def __call__(self, vm, vsc):
        if self.armed:
            return
        self.armed = True
        sock = vsc.stack.udp_socket(5001)
        vsc.stack.ping(self.target)   # resolves the target's address before the stream starts

        def tick():
            # On a fixed schedule (not `interval` after the last send), so that how late the guest
            # woke does not change the offered rate.
            sock.sendto(struct.pack("<Q", vsc.context.now()) + bytes(self.size - 8), (self.target, 5000))
            self.sent += 1
            if self.sent < self.count:
                vsc.context.call_later(self.start + self.sent * self.interval - vsc.context.now(), tick)
        vsc.context.call_later(self.start - vsc.context.now(), tick)


class Sink:
    """A workload: a UDP socket on port 5000 that records when each datagram arrived."""

    def __init__(self):
        self.arrivals: list[tuple[int, int]] = []   # (sent, arrived), simulated ns
        self.bound = False

    def __call__(self, vm, vsc):
        if not self.bound:
            self.bound = True
            vsc.stack.udp_socket(5000, on_datagram=self._arrived)
            self.clock = vsc.context

    def _arrived(self, data, sender):
        self.arrivals.append((struct.unpack_from("<Q", data)[0] if len(data) >= 8 else 0, self.clock.now()))


def test_ping_and_udp_between_two_vms_and_none_across_vlans():
    sink = Sink()
    host, parent, switch, (a, b, c) = lan((None, sink, None))
    assert a.vsc.mac == frames.mac_bytes(a.mac) and a.vsc.mtu == 1500 and a.vsc.link_up
    assert a.vsp.version == a.vsc.version == p.NVSP_VERSION_61
    ping = a.vsc.stack.ping(b.address, count=3, interval_ns=MS)
    lost = c.vsc.stack.ping(b.address, count=2, interval_ns=MS, timeout_ns=2 * MS)
    host.run_for(10 * MS)
    assert [r.lost for r in ping.results] == [False] * 3
    assert all(0 < r.rtt_ns < MS for r in ping.results)
    assert lost.done and lost.received == 0          # VLAN 20 reaches nobody on VLAN 10

    sock = a.vsc.stack.udp_socket(5001)
    for i in range(20):
        sock.sendto(f"datagram {i}".encode(), (b.address, 5000))
    c.vsc.stack.udp_socket(5002).sendto(b"from vlan 20", (b.address, 5000))
    host.run_for(5 * MS)
    assert len(sink.arrivals) == 20
    # What crossed: the switch saw c's frames only on c's VLAN and delivered none of them to a or b.
    assert switch.port("vm3").stats.tx_frames == 0
    assert c.vsc.stack.stats["rx_frames"] == 0
    assert a.vsp.refusals == b.vsp.refusals == c.vsp.refusals == 0
    assert a.vsc.refusals == b.vsc.refusals == 0
    check_all(host)


def test_capture_of_the_traffic_decodes_in_tshark(tmp_path):
    host, parent, switch, (a, b, c) = lan()
    path = tmp_path / "lan.pcap"
    switch.capture(path)
    ping = a.vsc.stack.ping(b.address, count=3, interval_ns=MS)
    c.vsc.stack.ping(b.address, count=1, timeout_ns=3 * MS)   # one ARP request, on VLAN 20 only
    host.run_for(5 * MS)
    written = switch.stop_capture()
    assert ping.received == 3
    # a: ARP request, 3 echo requests; b: ARP reply, 3 echo replies; c: one ARP request.
    assert written == 9
    out = tshark("-r", str(path), "-T", "fields", "-e", "vlan.id", "-e", "eth.src", "-e", "_ws.col.Protocol")
    rows = [line.split("\t") for line in out.splitlines()]
    assert len(rows) == 9
    assert sorted(r[0] for r in rows) == ["10"] * 8 + ["20"]
    assert [r[2] for r in rows if r[0] == "10"].count("ICMP") == 6
    assert {r[1] for r in rows if r[0] == "20"} == {c.mac}


# -- a hostile VM ---------------------------------------------------------------------------------

def inband(message) -> bytes:
    """An NVSP SEND_RNDIS_PKT with the RNDIS message in-band, on the channel its type belongs to."""
    channel = p.CHANNEL_DATA if p.rndis_type(message) == p.RndisType.PACKET else p.CHANNEL_CONTROL
    return p.encode_nvsp(p.SendRndisPacket(channel)) + message


class Hostile:
    """A workload for a guest that misuses its adapter: once, one of every kind of malformed
    request; then, on every poll, a flood of frames that fills its ring."""

    def __init__(self, start_ns=2 * MS):
        self.start = start_ns
        self.armed = self.started = False
        self.flooded = 0

    def __call__(self, vm, vsc):
        if not self.armed:
            self.armed = True
            vsc.context.call_later(self.start - vsc.context.now(), lambda: None)  # the guest wakes then
        if vsc.context.now() < self.start:
            return
        send = vsc.channel.send
        if not self.started:
            self.started = True
            frame = frames.build(frames.BROADCAST, frames.mac_bytes(vm.mac), 0x88B5, b"x" * 50)
            good = p.encode_packet(frame)
            too_long = struct.pack("<II", p.RndisType.PACKET, len(good) + 100) + good[8:]
            data_outside = good[:12] + struct.pack("<I", len(frame) + 500) + good[16:]
            for payload in (
                inband(too_long),                                                 # msg_len past the data
                inband(data_outside),                                             # data_len past the message
                inband(good[:20]),                                                # a truncated header
                inband(p.encode_rndis(p.RndisQuery(7, p.OID_SWITCH_NIC_REQUEST))),  # CVE-2021-28476's OID
                inband(p.encode_rndis(p.RndisSet(8, p.OID_GEN_RNDIS_CONFIG_PARAMETER, b"\0" * 20))),
                inband(p.encode_rndis(p.RndisIndicateStatus(0))),                 # host-to-guest only
                p.encode_nvsp(p.SendRndisPacket(p.CHANNEL_DATA, 10_000, 64)),     # a section past the buffer
                p.encode_nvsp(p.SendRndisPacket(p.CHANNEL_DATA, 0, 1 << 20)),     # a section too big
                p.encode_nvsp(p.SendReceiveBuffer(0xDEAD, p.RECEIVE_BUFFER_ID)),  # a second receive buffer
            ):
                send(payload, trans_id=0xFFFF_8000_0000_1000, flags=FLAG_COMPLETION_REQUESTED)
            # A transfer-page packet, which only the host sends, naming ranges far outside any buffer.
            send(p.encode_nvsp(p.SendRndisPacket(0)), header=p.encode_transfer_pages(p.RECEIVE_BUFFER_ID, [(1 << 30, 4096)]),
                 packet_type=p.PKT_DATA_USING_XFER_PAGES, trans_id=1)
            # A GPA-direct RNDIS message in a page the guest never shared with the host.
            send(p.encode_nvsp(p.SendRndisPacket(p.CHANNEL_CONTROL)), header=p.encode_page_buffers([(64, 0, [0x10])]),
                 packet_type=p.PKT_DATA_USING_GPA_DIRECT, trans_id=2, flags=FLAG_COMPLETION_REQUESTED)
            # A completion for a transfer never made.
            send(p.encode_nvsp(p.RndisPacketComplete(p.NvspStatus.SUCCESS)), packet_type=0xB, trans_id=0xBAD)
        # Broadcast frames in-band until the ring is full, every time the guest runs.
        frame = frames.build(frames.BROADCAST, frames.mac_bytes(vm.mac), 0x88B5, b"flood" * 10)
        payload = inband(p.encode_packet(frame))
        try:
            for _ in range(2000):
                send(payload, trans_id=0x1_0000_0000 + self.flooded, flags=FLAG_COMPLETION_REQUESTED)
                self.flooded += 1
        except RingFull:
            pass


def throughput(hostile, count=1500, until=36 * MS):
    """vm1 streams `count` datagrams to vm2, 50 000 a second from 3 ms, while vm3 is idle or
    hostile: (datagrams delivered, delivered per simulated second from the first send to the
    last arrival, the lan)."""
    sink, stream = Sink(), UdpStream("10.0.10.2", count=count)
    host, parent, switch, vms = lan((stream, sink, Hostile() if hostile else None))
    host.run(until)
    first_sent, last_arrived = sink.arrivals[0][0], sink.arrivals[-1][1]
    rate = len(sink.arrivals) * 1e9 / (last_arrived - first_sent)
    return len(sink.arrivals), rate, (host, parent, switch, *vms)


def test_a_hostile_vm_is_refused_and_the_others_keep_their_throughput():
    quiet, quiet_rate, _ = throughput(hostile=False)
    loud, loud_rate, (host, parent, switch, a, b, c) = throughput(hostile=True)
    assert quiet == loud == 1500                          # nothing lost...
    assert loud_rate >= 0.95 * quiet_rate, (quiet_rate, loud_rate)   # ...and delivered as fast
    hostile = c.vsp
    for reason in ("rndis_length", "oid", "rndis_type", "section_index", "section_size", "buffer_state",
                   "packet_type", "completion"):
        assert hostile.refused[reason] > 0, (reason, dict(hostile.refused))
    # the flood went into the switch (at its share of the parent's VMBus service: each channel
    # is read 64 packets per pass, in turn)...
    assert hostile.stats["tx_frames"] > 5_000
    assert switch.port("vm3").stats.rx_frames == hostile.stats["tx_frames"]
    assert switch.port("vm1").stats.tx_frames < 10        # ...and reached nobody else
    assert a.vsp.refusals == b.vsp.refusals == 0 and a.vsc.refusals == b.vsc.refusals == 0
    assert parent.broken(c.child, c.relid) is None        # refused, counted, still served
    check_all(host)


def test_same_seed_same_outcome():
    first = throughput(hostile=True, count=200, until=8 * MS)
    second = throughput(hostile=True, count=200, until=8 * MS)
    assert first[:2] == second[:2]
    assert first[2][0].trace_digest() == second[2][0].trace_digest()
