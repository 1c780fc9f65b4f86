"""A guest stack with several interfaces (one per network adapter): routing by destination, the
source address of the interface a packet leaves by, sockets bound on every interface, the strong
host model on receive, and interfaces coming and going."""
import errno
import ipaddress

import pytest

from drivers.device import ManualContext
from drivers.network import frames
from drivers.network.netstack import PROTO_UDP, NetStack, arp_packet, ip_packet, udp_datagram

US = 1_000
MS = 1_000_000


class Wires:
    """A multi-homed guest stack `g`, each of its interfaces cabled to a peer stack of its own."""

    def __init__(self, *links):
        self.ctx = ManualContext()
        self.g = NetStack(clock=self.ctx)
        self.peers, self.frames = {}, []
        for i, (ours, theirs, gateway) in enumerate(links):
            peer_box = {}

            def to_peer(frame, i=i, box=peer_box):
                self.frames.append((i, "out", frame))
                self.ctx.call_later(10 * US, lambda: box["peer"].receive(frame))

            iface = self.g.add_interface(mac=f"02:00:00:00:0{i}:01", address=ours, gateway=gateway,
                                         transmit=to_peer, name=f"eth{i}")

            def to_guest(frame, i=i, iface=iface):
                self.frames.append((i, "in", frame))
                self.ctx.call_later(10 * US, lambda: iface.receive(frame))

            peer_box["peer"] = NetStack(mac=f"02:00:00:00:0{i}:02", address=theirs, transmit=to_guest, clock=self.ctx)
            self.peers[i] = peer_box["peer"]

    def run(self, ns=5 * MS):
        self.ctx.advance(ns)


def source_of(frame: bytes) -> str:
    _, _, inner = frames.untag(frame)
    return ".".join(str(b) for b in inner[14 + 12:14 + 16])


def test_each_destination_leaves_by_the_interface_on_its_network_with_that_address():
    w = Wires(("10.0.1.1/24", "10.0.1.2/24", None), ("10.0.2.1/24", "10.0.2.2/24", None))
    got = {0: [], 1: []}
    for i, peer in w.peers.items():
        peer.udp_socket(7, on_datagram=lambda data, addr, i=i: got[i].append((data, addr)))
    sock = w.g.udp_socket(4000)
    sock.sendto(b"to one", ("10.0.1.2", 7))
    sock.sendto(b"to two", ("10.0.2.2", 7))
    w.run()
    assert got == {0: [(b"to one", ("10.0.1.1", 4000))], 1: [(b"to two", ("10.0.2.1", 4000))]}
    ip_frames = [(i, source_of(f)) for i, d, f in w.frames if d == "out" and f[12:14] == b"\x08\x00"]
    assert ip_frames == [(0, "10.0.1.1"), (1, "10.0.2.1")]
    assert w.g.route("10.0.2.77").name == "eth1" and w.g.connected("10.0.2.77").name == "eth1"


def test_one_socket_hears_every_interface_and_answers_by_the_right_one():
    w = Wires(("10.0.1.1/24", "10.0.1.2/24", None), ("10.0.2.1/24", "10.0.2.2/24", None))
    server = w.g.udp_socket(5000, on_datagram=lambda data, addr: server.sendto(data.upper(), addr))
    answers = {0: [], 1: []}
    for i, peer in w.peers.items():
        s = peer.udp_socket(6000, on_datagram=lambda data, addr, i=i: answers[i].append((data, addr)))
        s.sendto(f"from {i}".encode(), (f"10.0.{i + 1}.1", 5000))
    w.run()
    assert answers == {0: [(b"FROM 0", ("10.0.1.1", 5000))], 1: [(b"FROM 1", ("10.0.2.1", 5000))]}


def test_off_network_traffic_goes_to_the_first_gateway():
    w = Wires(("10.0.1.1/24", "10.0.1.2/24", None), ("10.0.2.1/24", "10.0.2.2/24", "10.0.2.2"))
    w.g.udp_socket(4000).sendto(b"far", ("192.168.7.7", 9))
    w.run()
    iface, hop = w.g._route(ipaddress.IPv4Address("192.168.7.7"))
    assert iface.name == "eth1" and str(hop) == "10.0.2.2"
    assert w.g.connected("192.168.7.7") is None
    assert [i for i, d, f in w.frames if d == "out"] and all(i == 1 for i, d, f in w.frames if d == "out")


def test_the_longest_prefix_wins_then_the_first_interface():
    w = Wires(("10.0.0.1/16", "10.0.0.2/16", None), ("10.0.5.1/24", "10.0.5.2/24", None),
              ("10.0.9.1/16", "10.0.9.2/16", None))
    assert w.g.route("10.0.5.9").name == "eth1"
    assert w.g.route("10.0.77.1").name == "eth0"   # eth0 and eth2 share 10.0/16: the first added


def test_an_address_is_taken_only_on_its_own_interface():
    w = Wires(("10.0.1.1/24", "10.0.1.2/24", None), ("10.0.2.1/24", "10.0.2.2/24", None))
    heard = []
    w.g.udp_socket(9, on_datagram=lambda *a: heard.append(a))
    eth0, eth1 = w.g.interfaces
    peer0 = w.peers[0]
    # From eth0's wire: an ARP request for eth1's address, and a datagram to it.
    who_has = frames.build(frames.BROADCAST, peer0.mac, frames.ETHERTYPE_ARP,
                           arp_packet(1, peer0.mac, peer0.ip, bytes(6), eth1.ip))
    datagram = ip_packet(peer0.ip, eth1.ip, PROTO_UDP, udp_datagram(peer0.ip, eth1.ip, 1234, 9, b"x"), 1, 64)
    eth0.receive(who_has)
    eth0.receive(frames.build(eth0.mac, peer0.mac, frames.ETHERTYPE_IPV4, datagram))
    w.run()
    assert w.g.stats["arp_not_for_us"] == 1 and w.g.stats["ip_not_for_us"] == 1 and heard == []
    eth1.receive(frames.build(eth1.mac, w.peers[1].mac, frames.ETHERTYPE_IPV4, datagram))  # its own wire
    assert heard == [(b"x", ("10.0.1.2", 1234))]


def test_interfaces_come_and_go():
    w = Wires(("10.0.1.1/24", "10.0.1.2/24", None))
    with pytest.raises(ValueError, match="already on another interface"):
        w.g.add_interface(mac="02:00:00:00:09:01", address="10.0.1.1/16", transmit=lambda f: None)
    eth0 = w.g.interfaces[0]
    w.g.remove_interface(eth0)
    with pytest.raises(OSError) as err:
        w.g.udp_socket(0).sendto(b"x", ("10.0.1.2", 7))
    assert err.value.errno == errno.ENETUNREACH
    eth0.receive(b"\xff" * 60)            # a frame for an interface no longer there is counted, dropped
    assert w.g.stats["rx_no_interface"] == 1
    with pytest.raises(AttributeError):
        w.g.ip                            # a stack without interfaces has no first address


def test_a_stack_needs_all_of_its_first_interface_or_none():
    with pytest.raises(ValueError, match="needs a mac, an address and a transmit"):
        NetStack(clock=ManualContext(), mac="02:00:00:00:00:01", address="10.0.0.1/24")
