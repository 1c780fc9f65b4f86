"""The virtual switch: learning, ageing, flooding, VLAN isolation, switch types, bounds, hostile frames."""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.device import ManualContext
from drivers.network import frames
from drivers.network.vswitch import SwitchSettings, VirtualSwitch, VlanConfig, VlanMode
from drivers.network.netstack import NetStack

MS = 1_000_000
SECOND = 1_000_000_000
TEST_TYPE = 0x88B5  # IEEE local experimental EtherType: payloads no stack interprets


def mac(i: int) -> str:
    return f"02:00:00:00:00:{i:02x}"


class Recorder(list):
    """A port's receiver that keeps every frame."""

    def __call__(self, frame: bytes) -> None:
        self.append(frame)


def make_switch(kind="private", **overrides):
    ctx = ManualContext()
    return ctx, VirtualSwitch("sw", kind, now=ctx.now, settings=SwitchSettings(**overrides))


def raw_port(switch, name, i, vlan=None, spoofing=False):
    received = Recorder()
    return switch.add_port(name, received, mac=mac(i), vlan=vlan, allow_mac_spoofing=spoofing), received


def frame(dst, src, payload=b"payload", vlan=None):
    dst = frames.BROADCAST if dst == "broadcast" else frames.mac_bytes(dst)
    return frames.build(dst, frames.mac_bytes(src), TEST_TYPE, payload, vlan=vlan)


def vm(switch, ctx, name, i, address, vlan=None, stack_vlan=None, gateway=None):
    """A VM adapter: a port with a guest network stack behind it."""
    port = switch.add_port(name, mac=mac(i), vlan=vlan)
    stack = NetStack(mac=mac(i), address=address, gateway=gateway, vlan=stack_vlan,
                     transmit=port.send, clock=ctx)
    port.attach(stack.receive)
    return port, stack


# --- VMs on one VLAN, and on different ones ------------------------------------------------------

def test_ping_and_udp_between_two_vms_on_one_vlan():
    ctx, switch = make_switch()
    port_a, a = vm(switch, ctx, "a", 1, "10.0.10.2/24", VlanConfig.access(10))
    port_b, b = vm(switch, ctx, "b", 2, "10.0.10.3/24", VlanConfig.access(10))
    ping = a.ping("10.0.10.3", count=3)
    ctx.advance(4 * SECOND)
    assert ping.done and [(r.seq, r.lost) for r in ping.results] == [(1, False), (2, False), (3, False)]

    server, client = b.udp_socket(7), a.udp_socket()
    for i in range(5):
        client.sendto(b"request %d" % i, ("10.0.10.3", 7))
    requests = [server.recvfrom() for _ in range(5)]
    assert [data for data, _ in requests] == [b"request %d" % i for i in range(5)]
    assert {sender for _, sender in requests} == {("10.0.10.2", client.port)}
    server.sendto(b"reply", ("10.0.10.2", client.port))
    assert client.recvfrom() == (b"reply", ("10.0.10.3", 7))
    assert server.recvfrom() is None
    assert port_a.stats.rx_dropped == port_b.stats.rx_dropped == 0
    assert a.stats["rx_malformed"] == b.stats["rx_malformed"] == 0


def test_no_traffic_across_vlans():
    ctx, switch = make_switch()
    _, a = vm(switch, ctx, "a", 1, "10.0.10.2/24", VlanConfig.access(10))
    port_b, b = vm(switch, ctx, "b", 2, "10.0.10.3/24", VlanConfig.access(20))
    port_c, c = vm(switch, ctx, "c", 3, "10.0.10.4/24", VlanConfig.access(10))
    ping = a.ping("10.0.10.3", count=2)
    sock = a.udp_socket()
    b_sock = b.udp_socket(9)
    sock.sendto(b"hello?", ("10.0.10.3", 9))
    ctx.advance(10 * SECOND)
    assert ping.done and all(r.lost for r in ping.results)
    assert a.stats["arp_failed"] == 1 and a.stats["arp_requests"] == 3
    # B's port never saw a frame, not even A's broadcast ARP requests.
    assert port_b.stats.tx_frames == 0 and b.stats["rx_frames"] == 0 and b_sock.recvfrom() is None
    # C shares A's VLAN: the broadcasts reached it.
    assert port_c.stats.tx_frames == 3 and c.stats["arp_not_for_us"] == 3


def test_broadcast_and_unknown_unicast_flood_only_inside_the_vlan():
    ctx, switch = make_switch()
    a, got_a = raw_port(switch, "a", 1, VlanConfig.access(10))
    b, got_b = raw_port(switch, "b", 2, VlanConfig.access(10))
    c, got_c = raw_port(switch, "c", 3, VlanConfig.access(20))
    d, got_d = raw_port(switch, "d", 4)                     # the untagged network
    t, got_t = raw_port(switch, "t", 5, VlanConfig.trunk({10, 30}, native=None))
    broadcast = frame("broadcast", mac(1))
    unknown = frame(mac(99), mac(1))
    assert a.send(broadcast) and a.send(unknown)
    assert got_b == [broadcast, unknown]
    assert got_t == [frames.tag(broadcast, 10), frames.tag(unknown, 10)]
    assert got_a == got_c == got_d == []
    assert switch.stats.flooded == 2


def test_unicast_to_a_learned_mac_goes_to_its_port_only():
    ctx, switch = make_switch()
    a, got_a = raw_port(switch, "a", 1)
    b, got_b = raw_port(switch, "b", 2)
    c, got_c = raw_port(switch, "c", 3)
    b.send(frame("broadcast", mac(2)))                      # the switch learns B
    got_a.clear(), got_c.clear()
    a.send(frame(mac(2), mac(1), b"for b"))
    assert got_b == [frame(mac(2), mac(1), b"for b")] and got_c == []
    # A frame for a MAC on the port it came from goes nowhere.
    a.send(frame(mac(1), mac(1)))
    assert switch.stats.filtered == 1 and len(got_b) == 1 and got_c == []


# --- trunks and tags ---------------------------------------------------------------------------

def test_a_trunk_port_sees_tags():
    ctx, switch = make_switch()
    a, got_a = raw_port(switch, "a", 1, VlanConfig.access(10))
    b, got_b = raw_port(switch, "b", 2, VlanConfig.access(20))
    u, got_u = raw_port(switch, "u", 3)
    t, got_t = raw_port(switch, "t", 4, VlanConfig.trunk({10, 20}))
    a.send(frame("broadcast", mac(1), b"from 10"))
    b.send(frame("broadcast", mac(2), b"from 20"))
    u.send(frame("broadcast", mac(3), b"untagged"))
    assert [frames.parse(f).vlan for f in got_t] == [10, 20, None]
    assert [frames.parse(f).payload[:8] for f in got_t] == [b"from 10\0", b"from 20\0", b"untagged"]
    # What the trunk sends tagged reaches that VLAN untagged, and only it.
    t.send(frame(mac(2), mac(4), b"to 20", vlan=20))
    assert got_b[-1] == frame(mac(2), mac(4), b"to 20") and got_a == [] and len(got_u) == 0
    # A VLAN outside the allowed set is dropped.
    t.send(frame("broadcast", mac(4), vlan=30))
    assert t.stats.dropped_vlan == 1 and got_a == [] and len(got_b) == 1


def test_trunk_native_vlan_is_carried_untagged():
    ctx, switch = make_switch()
    a, got_a = raw_port(switch, "a", 1, VlanConfig.access(10))
    u, got_u = raw_port(switch, "u", 3)
    t, got_t = raw_port(switch, "t", 4, VlanConfig.trunk({20}, native=10))
    a.send(frame("broadcast", mac(1)))
    assert got_t == [frame("broadcast", mac(1))]            # VLAN 10 leaves the trunk untagged
    t.send(frame("broadcast", mac(4), b"untagged"))
    t.send(frame("broadcast", mac(4), b"priority", vlan=0))  # a priority tag joins the native VLAN
    assert [frames.parse(f).payload[:8] for f in got_a] == [b"untagged", b"priority"]
    assert got_u == []                                       # the untagged network is not on this trunk


def test_tagged_frames_from_an_access_port_and_double_tags_are_dropped():
    ctx, switch = make_switch()
    a, got_a = raw_port(switch, "a", 1, VlanConfig.access(10))
    b, got_b = raw_port(switch, "b", 2, VlanConfig.access(20))
    t, got_t = raw_port(switch, "t", 3, VlanConfig.trunk({10}))
    u, got_u = raw_port(switch, "u", 4, VlanConfig.trunk({20}))
    assert not a.send(frame("broadcast", mac(1), vlan=20))
    assert not a.send(frame("broadcast", mac(1), vlan=10))
    # Double tagging: outer 10 (allowed), inner 20; and an 802.1ad outer tag on the untagged network.
    assert not t.send(frames.tag(frame("broadcast", mac(3), vlan=20), 10))
    s_tagged = frames.build(frames.BROADCAST, frames.mac_bytes(mac(3)), 0x88A8, b"\x00\x14" + b"\x81\x00" * 30)
    assert not t.send(s_tagged)
    assert a.stats.dropped_vlan == 2 and t.stats.dropped_vlan == 2
    assert got_a == got_b == got_t == got_u == []


# --- learning, moves, ageing, spoofing -----------------------------------------------------------

def test_a_mac_that_moves_is_relearned_on_its_new_port():
    ctx, switch = make_switch()
    a, got_a = raw_port(switch, "a", 1, spoofing=True)
    b, got_b = raw_port(switch, "b", 2)
    c, got_c = raw_port(switch, "c", 3, spoofing=True)
    roaming = mac(50)
    a.send(frame("broadcast", roaming))
    b.send(frame(roaming, mac(2), b"one"))
    assert len(got_a) == 1 and [frames.parse(f).payload[:3] for f in got_a] == [b"one"] and got_c == [frame("broadcast", roaming)]
    ctx.advance(MS)
    c.send(frame("broadcast", roaming))                     # the MAC now lives behind C
    got_a.clear(), got_c.clear()
    b.send(frame(roaming, mac(2), b"two"))
    assert [frames.parse(f).payload[:3] for f in got_c] == [b"two"] and got_a == []
    assert switch.stats.mac_moves == 1
    assert [(e.mac, e.port) for e in switch.mac_table() if e.mac == roaming] == [(roaming, "c")]


def test_ageing_forgets_a_mac_after_the_ageing_time():
    ctx, switch = make_switch(ageing_ns=5 * SECOND)
    a, got_a = raw_port(switch, "a", 1)
    b, got_b = raw_port(switch, "b", 2)
    c, got_c = raw_port(switch, "c", 3)
    b.send(frame("broadcast", mac(2)))
    got_a.clear(), got_c.clear()
    ctx.advance(5 * SECOND - 1)
    a.send(frame(mac(2), mac(1)))
    assert len(got_b) == 1 and got_c == []                  # still known: unicast
    assert {e.mac: e.age_ns for e in switch.mac_table()}[mac(2)] == 5 * SECOND - 1
    ctx.advance(1)
    assert mac(2) not in {e.mac for e in switch.mac_table()}
    a.send(frame(mac(2), mac(1)))
    assert len(got_b) == 2 and len(got_c) == 1              # forgotten: flooded again
    assert switch.stats.mac_moves == 0


def test_a_vm_cannot_send_from_another_mac():
    ctx, switch = make_switch()
    a, got_a = raw_port(switch, "a", 1)
    b, got_b = raw_port(switch, "b", 2)
    c, got_c = raw_port(switch, "c", 3)
    b.send(frame("broadcast", mac(2)))
    assert not c.send(frame("broadcast", mac(2), b"i am b"))  # C tries to take B's address
    assert c.stats.dropped_spoofed == 1
    a.send(frame(mac(2), mac(1), b"for b"))
    assert [frames.parse(f).payload[:5] for f in got_b] == [b"for b"] and got_c == [frame("broadcast", mac(2))]


def test_one_port_cannot_fill_the_mac_table_for_the_others():
    ctx, switch = make_switch(max_macs_per_port=8)
    a, got_a = raw_port(switch, "a", 1, spoofing=True)
    b, got_b = raw_port(switch, "b", 2)
    c, got_c = raw_port(switch, "c", 3)
    b.send(frame("broadcast", mac(2)))
    for i in range(100, 200):
        a.send(frame("broadcast", mac(i)))
    assert switch.stats.learn_refused == 100 - 8
    assert sum(e.port == "a" for e in switch.mac_table()) == 8
    got_b.clear(), got_c.clear()
    a.send(frame(mac(2), mac(100)))
    assert len(got_b) == 1 and got_c == []                  # B's entry survived
    # Once A's entries age out, A can have new ones.
    ctx.advance(300 * SECOND)
    a.send(frame("broadcast", mac(250)))
    assert [e.mac for e in switch.mac_table() if e.port == "a"] == [mac(250)]


# --- switch types --------------------------------------------------------------------------------

def test_private_switch_has_no_parent_or_external_port():
    ctx, switch = make_switch("private")
    assert switch.parent is None and switch.external is None
    a, _ = raw_port(switch, "a", 1)
    assert [p.kind for p in switch.ports] == ["vm"]


def test_internal_switch_parent_port_talks_to_vms():
    ctx, switch = make_switch("internal")
    assert switch.external is None and switch.parent.kind == "parent"
    _, guest = vm(switch, ctx, "vm1", 1, "192.168.0.2/24")
    parent = NetStack(mac=mac(200), address="192.168.0.1/24", transmit=switch.parent.send, clock=ctx)
    switch.parent.attach(parent.receive)
    ping = parent.ping("192.168.0.2", count=2)
    sock = guest.udp_socket(53)
    parent.udp_socket(1000).sendto(b"query", ("192.168.0.2", 53))
    ctx.advance(3 * SECOND)
    assert ping.received == 2 and sock.recvfrom() == (b"query", ("192.168.0.1", 1000))
    with pytest.raises(ValueError):
        switch.add_port("parent", Recorder())


def test_external_switch_endpoint_sends_and_receives():
    ctx, switch = make_switch("external")
    ext = switch.external
    a, got_a = raw_port(switch, "a", 1, VlanConfig.access(10))
    b, got_b = raw_port(switch, "b", 2)
    assert ext.send(frame("broadcast", mac(77), b"from outside", vlan=10))
    assert got_a == [frame("broadcast", mac(77), b"from outside")] and got_b == []
    assert switch.parent.received() == []                   # the parent is on the untagged network
    a.send(frame(mac(77), mac(1), b"reply"))
    assert ext.received() == [frame(mac(77), mac(1), b"reply", vlan=10)] and ext.receive() is None
    b.send(frame("broadcast", mac(2), b"untagged"))
    assert ext.receive() == frame("broadcast", mac(2), b"untagged")
    assert switch.parent.receive() == frame("broadcast", mac(2), b"untagged")


def test_an_endpoint_inbox_is_bounded():
    ctx, switch = make_switch("internal")
    switch.parent.inbox_frames = 3
    a, _ = raw_port(switch, "a", 1)
    for _ in range(5):
        a.send(frame("broadcast", mac(1)))
    assert len(switch.parent.inbox) == 3 and switch.parent.stats.dropped_refused == 2


# --- bounds: rate, queues, broken receivers -------------------------------------------------------

def udp_throughput(flood: bool) -> tuple[int, object, object]:
    """A sends B 20 datagrams per simulated ms for 5 ms; optionally F floods broadcasts meanwhile."""
    ctx, switch = make_switch(max_frames_per_window=100, window_ns=MS)
    _, a = vm(switch, ctx, "a", 1, "10.0.0.1/24")
    port_b, b = vm(switch, ctx, "b", 2, "10.0.0.2/24")
    flooder, _ = raw_port(switch, "f", 3)
    sender, receiver = a.udp_socket(), b.udp_socket(9, on_datagram=lambda data, addr: None)
    for ms in range(5):
        for i in range(2000 if flood else 0):
            flooder.send(frame("broadcast", mac(3), b"flood"))
            if i % 100 == 0:
                sender.sendto(b"x" * 100, ("10.0.0.2", 9))
        if not flood:
            for _ in range(20):
                sender.sendto(b"x" * 100, ("10.0.0.2", 9))
        ctx.advance(MS)
    return receiver.received, flooder.stats, port_b.stats


def test_a_flooding_port_is_rate_bounded_and_the_others_keep_their_throughput():
    baseline, _, _ = udp_throughput(flood=False)
    delivered, flooder, port_b = udp_throughput(flood=True)
    assert baseline == delivered == 100
    assert flooder.rx_frames == 5 * 100 and flooder.dropped_rate == 5 * 2000 - 500
    assert port_b.tx_frames <= 500 + 100 + 2                 # flood share + A's datagrams + ARP


def test_frames_waiting_for_one_port_are_bounded():
    ctx, switch = make_switch(queue_frames=16)
    a, got_a = raw_port(switch, "a", 1)
    c, got_c = raw_port(switch, "c", 3)

    def chatty(received_frame):                             # answers each frame with 50 frames
        for _ in range(50):
            b.send(frame(mac(1), mac(2)))

    b = switch.add_port("b", chatty, mac=mac(2))
    a.send(frame("broadcast", mac(1)))                       # learns A; B answers from its callback
    assert len(got_a) == 16 and a.stats.dropped_queue == 50 - 16
    assert len(got_c) == 1                                   # C got the broadcast, nothing else


def test_a_receiver_that_raises_breaks_only_its_port():
    ctx, switch = make_switch()
    a, got_a = raw_port(switch, "a", 1)
    c, got_c = raw_port(switch, "c", 3)

    def broken(_frame):
        raise RuntimeError("driver bug")

    b = switch.add_port("b", broken, mac=mac(2))
    assert a.send(frame("broadcast", mac(1)))
    assert a.send(frame("broadcast", mac(1)))
    assert isinstance(b.error, RuntimeError) and b.stats.dropped_refused == 2 and b.stats.tx_frames == 0
    assert len(got_c) == 2


def test_a_disconnected_port_gets_nothing_and_is_forgotten():
    ctx, switch = make_switch()
    a, got_a = raw_port(switch, "a", 1)
    b, got_b = raw_port(switch, "b", 2)
    b.send(frame("broadcast", mac(2)))
    b.disconnect()
    assert not b.connected and not b.send(frame("broadcast", mac(2)))
    assert [e.port for e in switch.mac_table()] == []
    a.send(frame(mac(2), mac(1)))
    assert got_b == [] and [p.name for p in switch.ports] == ["a"]


def test_hostile_frames_are_counted_and_dropped():
    ctx, switch = make_switch(mtu=1500)
    a, got_a = raw_port(switch, "a", 1, spoofing=True)
    t, got_t = raw_port(switch, "t", 2, VlanConfig.trunk({10}))
    b, got_b = raw_port(switch, "b", 3)
    hostile = [
        b"",
        b"\xff" * 13,                                                   # shorter than a header
        frames.build(frames.BROADCAST, frames.mac_bytes(mac(1)), TEST_TYPE, b"x" * 1501),   # over the MTU
        frame("broadcast", "01:00:5e:00:00:01"),                        # multicast source
        frame("broadcast", "00:00:00:00:00:00"),                        # zero source
    ]
    for bad in hostile:
        assert not a.send(bad)
    assert not t.send(frame("broadcast", mac(2), vlan=10)[:17])         # a tag cut short
    assert a.stats.dropped_malformed == len(hostile) and t.stats.dropped_malformed == 1
    assert got_a == got_b == got_t == [] and switch.stats.forwarded == 0 and switch.mac_table() == []
    # The largest legal frames pass, tagged or not (the trunk carries the untagged network too).
    assert a.send(frames.build(frames.BROADCAST, frames.mac_bytes(mac(1)), TEST_TYPE, b"x" * 1500))
    assert t.send(frames.build(frames.BROADCAST, frames.mac_bytes(mac(2)), TEST_TYPE, b"x" * 1500, vlan=10))
    assert len(got_b) == 1 and len(got_t) == 1


def test_settings_and_vlan_configs_are_checked():
    with pytest.raises(ValueError):
        SwitchSettings(ageing_ns=0)
    with pytest.raises(ValueError):
        SwitchSettings(mtu=20)
    with pytest.raises(ValueError):
        VlanConfig.access(4095)
    with pytest.raises(ValueError):
        VlanConfig.trunk({0, 10})
    ctx, switch = make_switch()
    with pytest.raises(ValueError):
        switch.add_port("m", Recorder(), mac="01:00:00:00:00:01")
    raw_port(switch, "a", 1)
    with pytest.raises(ValueError):
        raw_port(switch, "a", 2)


# --- a property: whatever is sent, frames stay in their VLAN --------------------------------------

CONFIGS = [VlanConfig.access(0), VlanConfig.access(10), VlanConfig.access(20),
           VlanConfig.trunk({10, 20}), VlanConfig.trunk({20}, native=10), VlanConfig.trunk({10}, native=None)]


def classify(config, sent):
    """The VLAN a frame from a port with `config` joins, or None if it must be dropped (the
    test's own reading of the rules, independent of the switch)."""
    vlan, _, inner = frames.untag(sent)
    if (inner[12] << 8 | inner[13]) in frames.VLAN_TPIDS:
        return None
    if config.mode is VlanMode.ACCESS:
        return config.vlan if vlan is None else None
    if vlan is None or vlan == 0:
        return config.native
    return vlan if config.carries(vlan) else None


def vlan_seen(config, delivered):
    vlan, _, _ = frames.untag(delivered)
    if config.mode is VlanMode.ACCESS:
        assert vlan is None
        return config.vlan
    return config.native if vlan is None else vlan


@settings(max_examples=60, deadline=None)
@given(configs=st.lists(st.sampled_from(CONFIGS), min_size=2, max_size=6),
       sends=st.lists(st.tuples(st.integers(0, 5), st.integers(0, 7), st.integers(0, 7),
                                st.sampled_from([None, 0, 10, 20, 30]), st.booleans(),
                                st.integers(0, 3 * SECOND)), max_size=40))
def test_frames_never_leave_their_vlan_nor_return_to_their_sender(configs, sends):
    ctx, switch = make_switch(ageing_ns=2 * SECOND)
    log = []
    ports = []
    for i, config in enumerate(configs):
        port = switch.add_port(f"p{i}", lambda f, i=i: log.append((i, f)), vlan=config, allow_mac_spoofing=True)
        ports.append(port)
    for number, (who, src, dst, vlan, stacked, wait) in enumerate(sends):
        who %= len(ports)
        ctx.advance(wait)
        sent = frame("broadcast" if dst == 7 else mac(dst + 1), mac(src + 1), number.to_bytes(2, "big"))
        if stacked:
            sent = frames.tag(sent, 20)
        if vlan is not None:
            sent = frames.tag(sent, vlan)
        log.clear()
        accepted = ports[who].send(sent)
        expected_vlan = classify(configs[who], sent)
        assert accepted == (expected_vlan is not None)
        for receiver, delivered in log:
            assert receiver != who
            assert vlan_seen(configs[receiver], delivered) == expected_vlan
            assert frames.untag(delivered)[2] == frames.untag(sent)[2]
        if accepted and dst == 7:                                   # a broadcast reaches every member
            members = {i for i, c in enumerate(configs) if i != who and c.carries(expected_vlan)}
            assert {r for r, _ in log} == members
