"""The emulated legacy network adapter (partitions/native_guest/tulip.py) and its guest driver
(tulip_driver.py): CSR behaviour, transmit to the switch and its capture, receive into descriptors,
missed frames, hostile descriptor lists (a fatal bus error for that chip only), saved state in the
middle of traffic, the intercepts each frame costs, and request-response with a netvsc VM."""
import struct
import zlib

import msgpack
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from drivers.network import frames, pcap
from drivers.network.vswitch import VirtualSwitch
from hypervisor.host import Host
from partitions.native_guest import tulip as t
from partitions.native_guest.devices import PARENT_EXIT_NS, bus_of
from partitions.native_guest.tulip_driver import TulipDriver
from partitions.worker import VmSpec, VmWorker

MS = 1_000_000
MAC = bytes.fromhex("02005e000001")
PEER = bytes.fromhex("02005e000002")
RX, TX, BUF = 0x10000, 0x11000, 0x20000     # ring and buffer GPAs of the register-level tests
ETHERTYPE = 0x88B5


class Rig:
    """A VM with a legacy NIC on an internal switch, driven register by register (its bus called
    directly, its memory written as the guest would); the switch's parent port stands for the
    rest of the network."""

    def __init__(self, tmp_path=None, rx_count=4, tx_count=4):
        self.host = Host(logical_processors=2, memory="256MiB", seed=1)
        self.switch = VirtualSwitch("lan", "internal", now=lambda: self.host.now)
        self.vm = VmWorker(self.host, VmSpec("legacy", memory="4MiB")).build()
        self.nic = t.Tulip21140(self.vm, self.switch, mac=MAC)
        self.bus = bus_of(self.vm)
        self.nic.attach(self.bus)
        self.rx_count, self.tx_count = rx_count, tx_count

    def csr(self, n, value=None):
        port = t.BASE + 8 * n
        if value is None:
            return self.bus.port_in(port, 4)[0]
        return self.bus.port_out(port, 4, value)

    def rings(self, start=True):
        for i in range(self.rx_count):
            self.give_rx(i)
        for i in range(self.tx_count):
            self.vm.write(TX + 16 * i, struct.pack("<IIII", 0, t.DES1_END if i == self.tx_count - 1 else 0, 0, 0))
        self.csr(3, RX)
        self.csr(4, TX)
        if start:
            self.csr(6, t.SR | t.ST)

    def give_rx(self, i, size=1536):
        end = t.DES1_END if i == self.rx_count - 1 else 0
        self.vm.write(RX + 16 * i, struct.pack("<IIII", t.OWN, end | size, BUF + 0x800 * i, 0))

    def queue_tx(self, i, frame, control=t.TDES1_FS | t.TDES1_LS | t.TDES1_IC, address=None):
        address = BUF + 0x10000 + 0x800 * i if address is None else address
        if frame:
            self.vm.write(address, frame)
        end = t.DES1_END if i == self.tx_count - 1 else 0
        self.vm.write(TX + 16 * i, struct.pack("<IIII", t.OWN, control | end | len(frame), address, 0))

    def rdes0(self, i):
        return struct.unpack("<I", self.vm.read(RX + 16 * i, 4))[0]

    def rx_frame(self, i):
        length = self.rdes0(i) >> 16 & 0x3FFF
        return self.vm.read(BUF + 0x800 * i, length)


def frame(dst=MAC, src=PEER, n=0, size=60):
    return frames.build(dst, src, ETHERTYPE, bytes([n]) * (size - 14))


# ---- registers ---------------------------------------------------------------------------------

def test_reset_values_the_station_address_rom_and_unused_csrs():
    rig = Rig()
    assert rig.csr(0) == t.CSR0_RESET and rig.csr(5) == 0 and rig.csr(6) == 0
    rig.csr(9, 0)
    assert bytes(rig.csr(9) for _ in range(6)) == MAC
    assert rig.csr(9) == MAC[0]                       # the pointer cycles
    rig.csr(9, 0)                                     # a write resets it
    assert rig.csr(9) == MAC[0]
    assert bytes(rig.csr(9) for _ in range(24))[-6:] == MAC[1:] + MAC[:1]
    assert t.check_state(rig.nic.save_state(), MAC) is None    # the pointer stays one of the six
    rig.csr(11, 0x1234)
    assert rig.csr(11) == 0 and rig.csr(15) == 0


def test_csr5_is_write_one_to_clear_and_its_summaries_follow_csr7():
    rig = Rig()
    rig.rings()
    rig.queue_tx(0, frame(PEER, MAC))
    rig.csr(1, 0)                                     # sends it: TI (IC was set), then TU (suspended)
    status = rig.csr(5)
    assert status & (t.TI | t.TU) == t.TI | t.TU
    assert not status & (t.NIS | t.AIS)               # nothing enabled in CSR7: no summaries
    assert status >> t.TS_SHIFT & 7 == t.TS_SUSPENDED and status >> t.RS_SHIFT & 7 == t.RS_WAITING
    rig.csr(7, t.TI)
    assert rig.csr(5) & t.NIS and not rig.nic.interrupt   # the summary, but NIE (bit 16) is off
    rig.csr(7, t.TI | t.NIE)
    assert rig.nic.interrupt
    rig.csr(5, t.TU)                                  # clears TU only
    assert rig.csr(5) & (t.TI | t.TU) == t.TI
    rig.bus.port_out(t.BASE + 8 * 5, 1, t.TI)         # a byte write clears that byte's ones
    assert rig.csr(5) & (t.TI | t.TU | t.NIS) == 0 and not rig.nic.interrupt


def test_csr6_stops_and_starts_the_processes():
    rig = Rig()
    rig.rings()
    rig.csr(6, t.SR)                                  # transmit stopped: TPS
    status = rig.csr(5)
    assert status & t.TPS and status >> t.TS_SHIFT & 7 == t.TS_STOPPED
    rig.queue_tx(0, frame(PEER, MAC))
    rig.csr(1, 0)                                     # a poll demand to a stopped process: nothing
    assert rig.nic.stats["tx_frames"] == 0
    rig.csr(6, t.SR | t.ST)                           # starting it looks at the list
    assert rig.nic.stats["tx_frames"] == 1
    rig.csr(6, 0)
    assert rig.csr(5) & t.RPS
    assert rig.switch.parent.send(frame()) and rig.nic.stats["rx_frames"] == 0
    assert rig.csr(8) == 1                            # stopped receive misses it
    rig.csr(0, t.SWR)
    assert rig.csr(3) == 0 and rig.csr(5) == 0 and rig.csr(0) == t.CSR0_RESET


# ---- transmit and receive ------------------------------------------------------------------------

def test_transmitted_frames_reach_the_switch_its_capture_and_give_the_descriptors_back(tmp_path):
    rig = Rig()
    rig.switch.capture(tmp_path / "lan.pcap")
    rig.rings()
    sent = [frame(PEER, MAC, n, 60 + 500 * n) for n in range(3)]
    for i, f in enumerate(sent):
        rig.queue_tx(i, f)
    rig.csr(1, 0)
    assert rig.switch.parent.received() == sent
    assert [struct.unpack("<I", rig.vm.read(TX + 16 * i, 4))[0] for i in range(3)] == [0, 0, 0]
    assert rig.nic.stats["tx_frames"] == 3
    assert rig.switch.stop_capture() == 3
    assert [r.data for r in pcap.read(tmp_path / "lan.pcap").records] == sent
    short = frames.build(PEER, MAC, ETHERTYPE, b"hi")
    rig.queue_tx(3, short)
    rig.csr(1, 0)                                     # the chip pads a short frame to 60 bytes
    assert rig.switch.parent.received() == [short.ljust(60, b"\0")]


def test_a_frame_over_chained_descriptors_is_sent_whole():
    rig = Rig()
    rig.rings()
    f = frame(PEER, MAC, 7, 1000)
    a, b = TX + 0x100, TX + 0x200                      # chained: word 3 is the next descriptor
    rig.vm.write(BUF, f[:400])
    rig.vm.write(BUF + 0x1000, f[400:])
    rig.vm.write(a, struct.pack("<IIII", t.OWN, t.TDES1_FS | t.DES1_CHAINED | 400, BUF, b))
    rig.vm.write(b, struct.pack("<IIII", t.OWN, t.TDES1_LS | t.DES1_CHAINED | 600, BUF + 0x1000, TX))
    rig.csr(4, a)
    rig.csr(1, 0)
    assert rig.switch.parent.received() == [f] and not rig.nic.fatal


def test_received_frames_land_in_descriptors_with_length_crc_and_flags():
    rig = Rig()
    rig.rings()
    f = frame(n=5, size=200)
    assert rig.switch.parent.send(f)
    rdes0 = rig.rdes0(0)
    assert not rdes0 & t.OWN and rdes0 & t.RDES0_FS and rdes0 & t.RDES0_LS and not rdes0 & t.RDES0_MF
    assert rdes0 >> 16 & 0x3FFF == 204                # the frame and its FCS
    data = rig.rx_frame(0)
    assert data[:200] == f and data[200:] == zlib.crc32(f).to_bytes(4, "little")
    assert rig.csr(5) & t.RI
    assert rig.switch.parent.send(frame(frames.BROADCAST, n=6))
    assert rig.rdes0(1) & t.RDES0_MF
    assert rig.switch.parent.send(frame(dst=bytes.fromhex("020000000099")))   # another's: filtered
    assert rig.rdes0(2) & t.OWN and rig.nic.stats["filtered"] == 1
    assert rig.nic.port.stats.dropped_refused == 0    # filtered is taken, not refused (as netvsp)


def test_a_setup_frame_replaces_the_filter():
    rig = Rig()
    rig.rings()
    other = bytes.fromhex("020000000077")
    table = b"".join(struct.pack("<III", *(a[k] | a[k + 1] << 8 for k in (0, 2, 4))) for a in [other] * 16)
    rig.queue_tx(0, table, t.TDES1_FS | t.TDES1_LS | t.TDES1_SET)
    rig.csr(1, 0)
    assert rig.nic.stats["setup_frames"] == 1 and rig.switch.parent.received() == []   # not on the wire
    rig.switch.parent.send(frame(dst=MAC))
    assert rig.nic.stats["rx_frames"] == 0            # no longer in the filter
    rig.csr(6, t.SR | t.ST | t.PR)                    # promiscuous takes it all
    rig.switch.parent.send(frame(dst=MAC))
    assert rig.nic.stats["rx_frames"] == 1


def test_frames_with_no_free_descriptor_are_dropped_and_counted_until_the_guest_gives_some_back():
    rig = Rig(rx_count=2)
    rig.rings()
    for n in range(5):
        rig.switch.parent.send(frame(n=n))
    assert [rig.rx_frame(i)[14] for i in range(2)] == [0, 1]
    status = rig.csr(5)
    assert status & t.RU and status >> t.RS_SHIFT & 7 == t.RS_SUSPENDED
    assert rig.nic.stats["missed"] == 3
    assert rig.csr(8) == 3 and rig.csr(8) == 0         # the read clears it
    rig.give_rx(0)
    rig.give_rx(1)
    rig.csr(2, 0)                                     # receive poll demand
    assert rig.csr(5) >> t.RS_SHIFT & 7 == t.RS_WAITING
    rig.switch.parent.send(frame(n=9))
    assert rig.rx_frame(0)[14] == 9 and rig.nic.stats["rx_frames"] == 3


# ---- hostile descriptor lists --------------------------------------------------------------------

HOSTILE = {
    "buffer outside RAM": lambda rig: [rig.vm.write(TX, struct.pack(
        "<IIII", t.OWN, t.TDES1_FS | t.TDES1_LS | 60, 0x4000_0000, 0))],
    "buffer running out of RAM": lambda rig: [rig.vm.write(TX, struct.pack(
        "<IIII", t.OWN, t.TDES1_FS | t.TDES1_LS | 600, (4 << 20) - 100, 0))],
    "length 0": lambda rig: rig.queue_tx(0, b""),
    "length over 2 KiB": lambda rig: [rig.vm.write(TX, struct.pack(
        "<IIII", t.OWN, t.TDES1_FS | t.TDES1_LS | 2000 | 2000 << 11, BUF, BUF + 0x1000))],
    "a ring that loops": lambda rig: [rig.vm.write(TX, struct.pack(
        "<IIII", t.OWN, t.TDES1_FS | t.DES1_CHAINED | 100, BUF, TX))],
    "descriptor outside RAM": lambda rig: rig.csr(4, 0x7FFF_0000),
    "misaligned descriptor": lambda rig: setattr(rig.nic, "tx_next", TX + 2),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_hostile_transmit_list_stops_that_chip_with_a_fatal_bus_error(case):
    rig = Rig()
    rig.rings()
    HOSTILE[case](rig)
    rig.csr(1, 0)                                     # never raises into the host
    status = rig.csr(5)
    assert status & t.FBE and rig.nic.fatal
    assert status >> t.TS_SHIFT & 7 == t.TS_STOPPED and status >> t.RS_SHIFT & 7 == t.RS_STOPPED
    assert rig.switch.parent.received() == []
    rig.switch.parent.send(frame())                   # a stopped chip takes nothing more
    assert rig.nic.stats["rx_frames"] == 0 and rig.nic.stats["missed"] == 1
    rig.csr(0, t.SWR)                                 # until a software reset
    rig.rings()
    rig.switch.parent.send(frame())
    assert rig.nic.stats["rx_frames"] == 1 and not rig.csr(5) & t.FBE


@pytest.mark.parametrize("case", ["buffer outside RAM", "no buffer", "a ring that loops"])
def test_a_hostile_receive_list_stops_that_chip_and_nothing_else(case):
    rig = Rig()
    rig.rings()
    other_vm = VmWorker(rig.host, VmSpec("other", memory="4MiB")).build()
    other = t.Tulip21140(other_vm, rig.switch, mac=PEER, name="nic2")
    other.attach(bus_of(other_vm))
    d0 = {"buffer outside RAM": struct.pack("<IIII", t.OWN, 1536, 0x4000_0000, 0),
          "no buffer": struct.pack("<IIII", t.OWN, 0, BUF, 0),
          "a ring that loops": struct.pack("<IIII", t.OWN, t.DES1_CHAINED | 16, BUF, RX)}[case]
    rig.vm.write(RX, d0)
    before = rig.vm.read(BUF, 64)
    rig.switch.parent.send(frame(size=100))
    assert rig.nic.fatal and rig.csr(5) & t.FBE
    assert rig.vm.read(BUF, 64) == before             # decoded first: nothing was written
    # The other chip on the switch goes on: it sends, and the switch and parent see it.
    for i in range(4):
        other_vm.write(RX + 16 * i, struct.pack("<IIII", t.OWN, (t.DES1_END if i == 3 else 0) | 1536, BUF, 0))
    other_vm.write(TX, struct.pack("<IIII", t.OWN, t.TDES1_FS | t.TDES1_LS | t.DES1_END | 60, BUF + 0x4000, 0))
    other_vm.write(BUF + 0x4000, frame(frames.BROADCAST, PEER))
    for n, v in ((3, RX), (4, TX), (6, t.SR | t.ST)):
        bus_of(other_vm).port_out(t.BASE + 8 * n, 4, v)
    assert rig.switch.parent.received() == [frame(frames.BROADCAST, PEER)] and other.fatal is None


# ---- saved state ---------------------------------------------------------------------------------

def test_save_and_load_state_mid_traffic_carry_on_where_the_chip_was():
    rig = Rig(rx_count=4)
    rig.rings()
    rig.csr(7, t.RI | t.NIS)
    rig.switch.parent.send(frame(n=1))
    rig.switch.parent.send(frame(n=2))                # descriptors 0 and 1 used: the next is 2
    rig.queue_tx(0, frame(PEER, MAC, 3))
    rig.csr(1, 0)                                     # transmit at descriptor 1 now
    rig.csr(9, 0)
    rig.csr(9)                                        # the ROM pointer at 1
    rig.nic.quiesce()
    rig.switch.parent.send(frame(n=4))                # held while quiesced
    state = msgpack.unpackb(msgpack.packb(rig.nic.save_state()))
    assert len(state["held"]) == 1 and state["rx_next"] == RX + 32 and state["tx_next"] == TX + 16
    rig.nic.close()
    assert rig.nic.port is None and len(rig.switch.ports) == 1     # only the parent's port is left
    # A new chip (a restored VM's) on the same switch, from the record.
    nic = t.Tulip21140(rig.vm, rig.switch, mac=MAC)
    rig.bus = bus_of(rig.vm)
    rig.bus._claims.clear()
    rig.bus._by_port.clear()
    nic.attach(rig.bus)
    nic.load_state(state)
    assert nic.save_state() == state
    assert rig.csr(9) == MAC[1] and rig.csr(5) & (t.RI | t.NIS) == t.RI | t.NIS
    nic.resume()                                      # the held frame goes to descriptor 2
    rig.switch.parent.send(frame(n=5))
    assert [rig.rx_frame(i)[14] for i in range(4)] == [1, 2, 4, 5]
    rig.queue_tx(1, frame(PEER, MAC, 6))
    rig.csr(1, 0)
    assert [f[14] for f in rig.switch.parent.received()] == [3, 6]
    with pytest.raises(ValueError, match="format"):
        nic.load_state({"format": 99})
    with pytest.raises(ValueError, match="MAC"):
        nic.load_state({**state, "mac": PEER})
    for bad in ({"csr6": -1}, {"held": [b"x"]}, {"rx_suspended": 1}, {"filter": [b"abc"]}, {"stats": {}}):
        assert t.check_state({**state, **bad}, MAC) is not None, bad
        with pytest.raises(ValueError):
            nic.load_state({**state, **bad})
    assert nic.save_state()["rx_next"] == RX     # the refused records changed nothing


# ---- costs ---------------------------------------------------------------------------------------

def test_each_access_costs_the_exit_and_the_device_and_a_transmit_waits_out_the_wire():
    rig = Rig()
    rig.rings()
    assert rig.bus.port_in(t.BASE + 8 * 5, 4)[1] == PARENT_EXIT_NS + t.ACCESS_NS
    rig.queue_tx(0, frame(PEER, MAC, size=1514))
    ns = rig.csr(1, 0)
    assert ns == PARENT_EXIT_NS + t.ACCESS_NS + (1514 + 24) * 80    # 100 Mbit/s: 80 ns a byte
    assert rig.bus.medium_ns["legacy-nic"] == (1514 + 24) * 80
    assert t.wire_ns(10) == (60 + 24) * 80                           # short frames are padded


def _pair(peer_workload):
    host = Host(logical_processors=2, memory="256MiB", seed=3)
    switch = VirtualSwitch("lan", now=lambda: host.now)
    vms = []
    for i, (mac, work) in enumerate(((MAC, None), (PEER, peer_workload))):
        vm = VmWorker(host, VmSpec(f"vm{i}", memory="4MiB")).build()
        t.Tulip21140(vm, switch, mac=mac).attach(bus_of(vm))
        vms.append(vm)
    return host, switch, vms


def test_request_response_between_two_legacy_nics_costs_three_intercepts_a_frame():
    async def echo(ctx):
        d = TulipDriver(ctx)
        mac = await d.open()
        while True:
            f = await d.receive()
            await d.send(f[6:12] + mac + f[12:])

    host, switch, vms = _pair(echo)
    seen = {}

    async def client(ctx):
        d = TulipDriver(ctx)
        mac = await d.open()
        seen["after_open"] = bus_of(vms[0]).accesses["legacy-nic"]
        for n in range(20):
            await d.send(frame(PEER, mac, n))
            answer = await d.receive(timeout_ns=MS)
            seen.setdefault("answers", []).append(answer and answer[14])
        seen["accesses"] = bus_of(vms[0]).accesses["legacy-nic"]
        await ctx.halt()

    vms[0].vp(0).run(client)
    vms[1].vp(0).run(echo)
    for vm in vms:
        host.root.resume_partition(vm)
    host.run(until=50 * MS)
    assert seen["answers"] == list(range(20))
    assert seen["after_open"] == 12
    # Per request and answer: the poll demand that sends, and CSR5's read and acknowledgement.
    assert seen["accesses"] - seen["after_open"] == 20 * 3


def test_a_legacy_nic_talks_to_a_netvsc_vm():
    from bench.emulated import netvsc_pair
    # The netvsc VM answers every frame of the bench's EtherType with its source and destination swapped.
    host, switch, stacks, macs = netvsc_pair(count=1, responder_only=True)
    vm = VmWorker(host, VmSpec("legacy", memory="4MiB")).build()
    t.Tulip21140(vm, switch, mac=MAC).attach(bus_of(vm))
    answers = []

    async def client(ctx):
        d = TulipDriver(ctx)
        mac = await d.open()
        for n in range(5):
            await d.send(frames.build(macs[0], mac, ETHERTYPE, bytes([n]) * 46))
            answer = await d.receive(timeout_ns=5 * MS)
            answers.append(answer and (answer[6:12], answer[14]))
        await ctx.halt()

    vm.vp(0).run(client)
    host.root.resume_partition(vm)
    host.run(until=host.now + 100 * MS)
    assert answers == [(macs[0], n) for n in range(5)]


# ---- any descriptor list ---------------------------------------------------------------------------

_ADDRESSES = st.sampled_from([BUF, BUF + 0x801, 0, (4 << 20) - 64, 4 << 20, 0x4000_0000, 0xFFFF_FFFF])
_BITS = st.sets(st.sampled_from([t.OWN, t.TDES1_FS, t.TDES1_LS, t.TDES1_IC, t.TDES1_SET, t.DES1_END,
                                 t.DES1_CHAINED]))
_DESCRIPTOR = st.tuples(st.booleans(), _BITS, st.integers(0, 2047), st.integers(0, 2047), _ADDRESSES,
                        st.one_of(_ADDRESSES, st.sampled_from([TX, TX + 16, RX, RX + 16, TX + 2])))
# Well-formed ones too, so that lists which work are among those tried.
_GOOD_TX = st.tuples(st.just(True), st.just({t.TDES1_FS, t.TDES1_LS}), st.integers(60, 1514), st.just(0),
                     st.just(BUF), st.just(0))
_GOOD_RX = st.tuples(st.just(True), st.sampled_from([set(), {t.DES1_END}]), st.just(1536), st.just(0),
                     st.just(BUF), st.just(0))


@pytest.fixture(scope="module")
def shared_rig():
    return Rig()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tx=st.lists(st.one_of(_GOOD_TX, _DESCRIPTOR), min_size=1, max_size=4),
       rx=st.lists(st.one_of(_GOOD_RX, _DESCRIPTOR), min_size=1, max_size=4),
       tx_base=st.sampled_from([TX, TX + 4, TX + 2, 0x4000_0000]), sizes=st.lists(st.integers(14, 1514), max_size=3))
def test_any_descriptor_list_sends_receives_or_stops_the_chip_and_never_raises(shared_rig, tx, rx, tx_base, sizes):
    rig = shared_rig
    rig.csr(0, t.SWR)
    rig.switch.parent.received()
    before = dict(rig.nic.stats)
    for base, ring in ((TX, tx), (RX, rx)):
        for i, (own, bits, size1, size2, buf1, word3) in enumerate(ring):
            des1 = sum(bits) & ~t.OWN | size1 | size2 << 11
            rig.vm.write(base + 16 * i, struct.pack("<IIII", t.OWN if own else 0, des1, buf1, word3))
    rig.csr(3, RX)
    rig.csr(4, tx_base)
    rig.csr(6, t.SR | t.ST)                           # starting transmit looks at the list
    for n, size in enumerate(sizes):
        rig.switch.parent.send(frame(n=n, size=size))
    rig.csr(1, 0)
    status = rig.csr(5)
    assert rig.nic.port.error is None                 # the switch's callback never raised
    event(f"fatal={bool(rig.nic.fatal)} sent={rig.nic.stats['tx_frames'] > before['tx_frames']} "
          f"received={rig.nic.stats['rx_frames'] > before['rx_frames']}")
    assert bool(status & t.FBE) == bool(rig.nic.fatal)
    for sent in rig.switch.parent.received():
        assert t.MIN_FRAME <= len(sent) <= t.MAX_FRAME
    if rig.nic.fatal:
        before = dict(rig.nic.stats)
        rig.csr(1, 0)
        rig.switch.parent.send(frame())
        assert rig.nic.stats["tx_frames"] == before["tx_frames"] and rig.nic.stats["rx_frames"] == before["rx_frames"]


_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-1, 1 << 33), st.binary(max_size=8), st.text(max_size=4),
                    st.lists(st.binary(min_size=6, max_size=6), max_size=3))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(changes=st.dictionaries(st.sampled_from(["format", "mac", "csr0", "csr5", "csr6", "missed", "missed_overflow",
                                                "rx_next", "rom", "filter", "fatal", "stats", "work_ns", "held",
                                                "tx_suspended"]), _VALUES, max_size=3))
def test_a_state_record_is_checked_whole_before_it_changes_anything(shared_rig, changes):
    nic = shared_rig.nic
    good = nic.save_state()
    record = {**good, **changes}
    problem = t.check_state(record, MAC)
    if problem is None:
        nic.load_state(record)
        assert nic.save_state() == record
        nic.load_state(good)
    else:
        with pytest.raises(ValueError):
            nic.load_state(record)
        assert nic.save_state() == good


def test_a_native_kernel_reads_the_mac_and_sends_a_frame_with_in_and_out(tmp_path):
    from partitions.native_guest.cpu import native_guest
    from partitions.native_guest.loader import load_elf
    from tests.native.kernels import HALT_FOREVER, build
    csr = lambda n: t.BASE + 8 * n   # noqa: E731
    body = f"""
  mov ${csr(9)}, %dx
  xor %eax, %eax
  out %eax, %dx
  mov $0x220000, %rdi
  mov $6, %rcx
1: in %dx, %eax
  mov %al, (%rdi)
  inc %rdi
  dec %rcx
  jnz 1b
  mov ${csr(4)}, %dx
  mov ${TX}, %eax
  out %eax, %dx
  mov ${csr(6)}, %dx
  mov ${t.ST}, %eax
  out %eax, %dx
""" + HALT_FOREVER
    rig = Rig()
    rig.queue_tx(0, frame(PEER, MAC, 42), control=t.TDES1_FS | t.TDES1_LS | t.DES1_END)
    rig.vm.vp(0).run(native_guest(load_elf(build(tmp_path, "tulip", body))))
    rig.host.root.resume_partition(rig.vm)
    rig.host.run(until=5 * MS)
    assert rig.vm.read(0x220000, 6) == MAC
    assert rig.switch.parent.received() == [frame(PEER, MAC, 42)]
    assert rig.bus.accesses["legacy-nic"] == 1 + 6 + 2
    assert rig.bus.medium_ns["legacy-nic"] == t.wire_ns(60)     # the CSR6 write that sent it waited the wire
