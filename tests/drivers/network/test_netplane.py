"""The network data plane in C (native/netplane.c) against the Python path it stands in for: the
same scenario run both ways delivers the same frames and leaves the same counters, MAC table,
adapter state, pcap bytes and trace digest; the C MAC table and receive sections make the same
decisions as vswitch.py's and vsp.py's, operation for operation."""
from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from drivers.network import netplane
from drivers.network.vswitch import SwitchSettings, VirtualSwitch, VlanConfig
from tests.drivers.network import test_network_e2e as e2e

MS = 1_000_000


def run_lan(monkeypatch, plane: bool, *, capture=None, hostile=True, count=300, until=12 * MS):
    monkeypatch.setenv("HVSIM_NETPLANE", "1" if plane else "0")
    sink, stream = e2e.Sink(), e2e.UdpStream("10.0.10.2", count=count)
    host, parent, switch, vms = e2e.lan((stream, sink, e2e.Hostile() if hostile else None))
    assert (switch._plane is not None) == plane
    if capture is not None:
        host.run(5 * MS)
        switch.capture(capture)      # from the middle of the stream on
        before = switch._plane.handled if plane else 0
    host.run(until)
    if capture is not None:
        switch.stop_capture()
        if plane:   # the frames captured went through C, which handed them to the capture
            assert switch._plane.handled - before > 100
    return host, parent, switch, vms, sink


def observe(host, parent, switch, vms, sink):
    """Everything the two paths must agree on."""
    return {
        "arrivals": sink.arrivals,
        "digest": host.trace_digest(),
        "switch": switch.stats,
        "ports": {port.name: port.stats for port in switch.ports},
        "windows": {port.name: (port._window_start, port._window_count) for port in switch.ports},
        "macs": switch.mac_table(),
        "vsp": [(dict(vm.vsp.stats), dict(vm.vsp.refused), vm.vsp.save(), vm.vsp.counters()) for vm in vms],
        "vsc": [(dict(vm.vsc.stats), vm.vsc.refusals) for vm in vms],
        "broken": [parent.broken(vm.child, vm.relid) for vm in vms],
        # every byte of every guest: rings, receive sections, send buffers, stacks
        "memory": [vm.child.read(0, 1 << 20) for vm in vms],
    }


def test_the_c_path_and_the_python_path_agree_on_a_lan_with_a_hostile_vm(monkeypatch):
    python = observe(*run_lan(monkeypatch, False))
    host, parent, switch, vms, sink = run = run_lan(monkeypatch, True)
    assert switch._plane.handled > 500          # most packets went through C...
    assert observe(*run) == python              # ...to exactly the same end
    assert len(sink.arrivals) == 300
    assert vms[2].vsp.refused["rndis_length"] > 0 and vms[2].vsp.stats["tx_frames"] > 1000


def test_a_capture_started_mid_stream_has_the_same_bytes_either_way(monkeypatch, tmp_path):
    outs = []
    for plane in (False, True):
        path = tmp_path / f"plane{plane}.pcap"
        run = run_lan(monkeypatch, plane, capture=path, hostile=False, count=200)
        outs.append((path.read_bytes(), observe(*run)))
    (python_pcap, python), (c_pcap, c) = outs
    assert len(python_pcap) > 24 + 100 * 16 and c_pcap == python_pcap
    assert c == python


# -- the MAC table ----------------------------------------------------------------------------------

OPS = st.lists(st.tuples(st.sampled_from(["learn", "learn", "lookup", "expire", "expire_all", "forget", "vlan",
                                          "tick"]),
                         st.integers(0, 3), st.integers(0, 5), st.sampled_from([0, 10])), max_size=80)


@settings(max_examples=200, deadline=None)
@given(OPS)
def test_the_c_mac_table_decides_as_the_python_one(ops):
    """Learning (moves, the per-port bound, ageing), lookups, expiry and forgetting, step by step
    on both tables, with the same answers and counters after every step."""
    clock = {"now": 0}
    config = SwitchSettings(ageing_ns=50, max_macs_per_port=3)
    switches = [VirtualSwitch("t", now=lambda: clock["now"], settings=config, data_plane=plane)
                for plane in (False, True)]
    ports = [[sw.add_port(f"p{i}", lambda f: True, allow_mac_spoofing=True) for i in range(4)] for sw in switches]
    for op, port, mac, vlan in ops:
        answers = []
        for sw, ps in zip(switches, ports):
            now, address = clock["now"], bytes([0, 0x15, 0x5D, 0, 0, mac])
            if op == "learn":
                sw._learn(vlan, address, ps[port], now)
            elif op == "lookup":
                found = sw._lookup(vlan, address, now)
                answers.append(None if found is None else found.name)
            elif op == "expire":
                sw._expire(ps[port], now)
            elif op == "expire_all":
                sw._expire(None, now)
            elif op == "forget":
                sw._forget_port(ps[port])
            elif op == "vlan":
                ps[port].set_vlan(VlanConfig.access(vlan))
        if op == "tick":
            clock["now"] += 7 * (mac + 1)
        assert answers[:1] == answers[1:]
        python, c = switches
        assert c.stats == python.stats
        assert c.mac_table() == python.mac_table()


# -- receive sections ---------------------------------------------------------------------------------

SECTION_OPS = st.lists(st.tuples(st.sampled_from(["take", "begin", "complete", "put_back", "put_front", "reset"]),
                                 st.integers(0, 12)), max_size=100)


@settings(max_examples=200, deadline=None)
@given(SECTION_OPS)
def test_c_sections_behave_as_the_python_ones(ops):
    class Owner:
        pass

    python, c = netplane.Sections(), netplane.AdapterPlane(Owner())
    for sections in (python, c):
        sections.reset(8)
    taken: list[int] = []
    for op, n in ops:
        if op == "take":
            if python.free_count():
                section = python.take()
                assert c.take() == section
                taken.append(section)
        elif op == "begin" and taken:
            section = taken.pop(0)
            assert c.begin(section) == python.begin(section)
        elif op == "complete":
            trans_id = n if n < 10 else (1 << 64) - 1
            section = python.complete(trans_id)
            assert c.complete(trans_id) == section
            if section is not None:
                taken.append(section)
        elif op in ("put_back", "put_front") and taken:
            section = taken.pop()
            getattr(python, op)(section)
            getattr(c, op)(section)
        elif op == "reset":
            python.reset(n % 9)
            c.reset(n % 9)
            taken.clear()
        assert c.free_list() == python.free_list() and c.in_flight() == python.in_flight()


@pytest.mark.parametrize("plane", [False, True])
def test_the_switch_and_adapters_say_which_path_they_take(monkeypatch, plane):
    monkeypatch.setenv("HVSIM_NETPLANE", "1" if plane else "0")
    assert (VirtualSwitch("x", now=lambda: 0)._plane is not None) == plane
    assert (VirtualSwitch("y", now=lambda: 0, data_plane=not plane)._plane is not None) == (not plane)


class TamperingSink(e2e.Sink):
    """A receiver that, once at `when`, rewrites the write_index of the ring the host writes to it
    (which only the host may write): the host must find its ring tampered with on its next write,
    whichever path makes it, and only this adapter may suffer."""

    def __init__(self, when=6 * MS):
        super().__init__()
        self.when, self.done = when, False

    def __call__(self, vm, vsc):
        super().__call__(vm, vsc)
        if not self.done:
            if vsc.context.now() < self.when:
                vsc.context.call_later(self.when - vsc.context.now(), lambda: None)   # wake then
                return
            self.done = True
            ring = vsc.channel.incoming._mem
            ring[0:4] = (int.from_bytes(ring[0:4], "little") + 64).to_bytes(4, "little")


def test_a_guest_tampering_with_its_receive_ring_breaks_only_itself_either_way(monkeypatch):
    outs = []
    for plane in (False, True):
        monkeypatch.setenv("HVSIM_NETPLANE", "1" if plane else "0")
        sink, stream = TamperingSink(), e2e.UdpStream("10.0.10.2", count=300)
        host, parent, switch, vms = e2e.lan((stream, sink, None))
        host.run(12 * MS)
        assert sink.done
        outs.append(observe(host, parent, switch, vms, sink))
        b = vms[1]
        assert b.vsp.stats["rx_ring_broken"] > 0 or parent.broken(b.child, b.relid) is not None
        assert parent.broken(vms[0].child, vms[0].relid) is None
        if plane:
            assert switch._plane.handled > 100
    assert outs[0] == outs[1]


# -- hostile packets, through both paths ------------------------------------------------------------

from tests.drivers.network import test_nvsp as nvsp   # noqa: E402


def hostile_run(data_plane, packets, inbound):
    lan = nvsp.Lan(data_plane=data_plane)
    a = lan.adapter()
    port, received = nvsp.raw_port(lan)
    b = lan.adapter(2)
    b.vsc.transmit(nvsp.frames.BROADCAST + b.vsc.mac + b"\x88\xb5" + bytes(50))   # the switch learns b
    lan.settle()
    for kind, payload, trans_id in [*packets, (None, None, None)]:
        if kind is not None:
            a.guest_sends(payload, kind, trans_id=trans_id)
        # frames from a to b through the switch (C when on), then whatever arrives for a
        if a.vsc.ready:
            for _ in range(3):
                a.vsc.transmit(b.vsc.mac + a.vsc.mac + b"\x88\xb5" + bytes(50))
        for blob in inbound:
            port.send(nvsp.frames.mac_bytes(a.mac) + nvsp.frames.mac_bytes("00:15:5d:00:00:fe") + blob)
        lan.settle()
    vsps = (a.vsp, b.vsp)
    handled = lan.switch._plane.handled if data_plane else 0
    return handled, {
        "vsp": [(dict(v.stats), dict(v.refused), v.save()) for v in vsps],
        "vsc": [(dict(x.vsc.stats), x.vsc.refusals) for x in (a, b)],
        "ports": {p.name: p.stats for p in lan.switch.ports},
        "switch": lan.switch.stats,
        "received": list(received),
        "rings": [bytes(x.host_end.outgoing._mem) + bytes(x.host_end.incoming._mem) for x in (a, b)],
        "buffers": [bytes(v.receive.view) if v.receive is not None else None for v in vsps],
    }


@settings(max_examples=60, deadline=None)
@given(st.lists(nvsp.GUEST_PACKETS, max_size=20), st.lists(st.binary(min_size=2, max_size=100), max_size=3))
def test_hostile_packets_end_the_same_through_c_and_python(packets, inbound):
    assert hostile_run(True, packets, inbound)[1] == hostile_run(False, packets, inbound)[1]


def test_the_hostile_runs_do_take_the_c_path():
    handled, seen = hostile_run(True, [], [])
    assert handled >= 6 and seen["vsp"][1][0]["rx_frames"] == 3   # three frames, and their completions
    assert hostile_run(False, [], [])[1] == seen


def flood_run(data_plane):
    lan = nvsp.Lan(data_plane=data_plane)
    a, b, c = lan.adapter(1), lan.adapter(2), lan.adapter(3)
    d = lan.adapter(4, vlan=20)
    c.vsp.packet_filter = 0   # c takes nothing (a NIC whose filter drops every frame: "filtered")
    if c.vsp._np is not None:
        c.vsp._np.c.packet_filter = 0
    frames_ = nvsp.frames
    # broadcast, multicast, a MAC nobody has, b's MAC before and after b is heard from
    for dst in (frames_.BROADCAST, bytes.fromhex("01005e000001"), bytes.fromhex("00155d0000aa"), b.vsc.mac, None):
        if dst is None:
            b.vsc.transmit(a.vsc.mac + b.vsc.mac + b"\x88\xb5" + bytes(100))
            dst = b.vsc.mac
        for _ in range(20):
            a.vsc.transmit(dst + a.vsc.mac + b"\x88\xb5" + bytes(100))
        lan.settle()
    lan.run(MS)
    return (lan.switch._plane.handled if data_plane else 0), {
        "vsp": [(dict(x.vsp.stats), dict(x.vsp.refused), x.vsp.save()) for x in (a, b, c, d)],
        "vsc": [dict(x.vsc.stats) for x in (a, b, c, d)],
        "ports": {p.name: p.stats for p in lan.switch.ports},
        "switch": lan.switch.stats,
        "rings": [bytes(x.host_end.outgoing._mem) for x in (a, b, c, d)],
    }


def test_floods_to_a_vlan_of_netvsps_go_through_c_as_through_python():
    handled, seen = flood_run(True)
    assert seen == flood_run(False)[1]
    assert seen["switch"].flooded == 80 and seen["switch"].forwarded == 101 and handled >= 100
    # b: broadcast, multicast (ALL_MULTICAST), its own MAC twice; not the MAC nobody has
    assert seen["vsp"][1][0]["rx_frames"] == 80 and seen["vsp"][1][0]["rx_filtered"] == 20
    assert seen["vsp"][2][0]["rx_filtered"] == 80                      # c: the floods, filtered
    assert seen["vsp"][3][0].get("rx_frames", 0) == 0                  # VLAN 20 heard nothing
