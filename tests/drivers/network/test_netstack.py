"""The guest network stack: ARP, IPv4, ICMP echo, UDP sockets, and what it does with hostile frames."""
import errno
import ipaddress
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.device import ManualContext
from drivers.network import frames
from drivers.network.frames import BROADCAST, ETHERTYPE_ARP, ETHERTYPE_IPV4
from drivers.network import netstack as ns
from drivers.network.netstack import NetStack, StackSettings

SECOND = 1_000_000_000
US = 1_000
MAC_A, MAC_B, MAC_EVIL = (frames.mac_bytes(m) for m in ("02:00:00:00:00:0a", "02:00:00:00:00:0b", "02:00:00:00:00:66"))
IP_A, IP_B = ipaddress.IPv4Address("10.0.0.1"), ipaddress.IPv4Address("10.0.0.2")


class Cable:
    """Two stacks joined by a cable with a fixed latency; keeps every frame sent, in order."""

    def __init__(self, latency_ns: int = 0, **stack_settings) -> None:
        self.ctx = ManualContext()
        self.latency = latency_ns
        self.sent: list[tuple[str, bytes]] = []
        self.ends: dict[str, NetStack] = {}
        settings_ = StackSettings(**stack_settings)
        self.a = self._end("a", MAC_A, "10.0.0.1/24", settings_)
        self.b = self._end("b", MAC_B, "10.0.0.2/24", settings_)

    def _end(self, name, mac, address, settings_):
        other = "b" if name == "a" else "a"

        def transmit(frame):
            self.sent.append((name, frame))
            self.ctx.call_later(self.latency, lambda: self.ends[other].receive(frame))

        stack = self.ends[name] = NetStack(mac=mac, address=address, transmit=transmit, clock=self.ctx,
                                           settings=settings_)
        return stack


def lone_stack(**kwargs):
    """A stack whose frames go nowhere but into a list."""
    ctx, sent = ManualContext(), []
    settings_ = StackSettings(**kwargs.pop("settings", {}))
    stack = NetStack(mac=MAC_A, address=kwargs.pop("address", "10.0.0.1/24"), transmit=sent.append,
                     clock=ctx, settings=settings_, **kwargs)
    return stack, sent, ctx


def raw(dst: bytes, src: bytes, ethertype: int, payload: bytes) -> bytes:
    """A frame exactly as given: no padding."""
    return dst + src + struct.pack("!H", ethertype) + payload


def arp(op, sha, spa, tha, tpa, dst=BROADCAST):
    return frames.build(dst, sha, ETHERTYPE_ARP, ns.arp_packet(op, sha, ipaddress.IPv4Address(spa), tha,
                                                               ipaddress.IPv4Address(tpa)))


def ip_raw(payload, proto=ns.PROTO_UDP, src=IP_B, dst=IP_A, *, vihl=0x45, total=None, flags=0x4000,
           checksum=None, options=b""):
    """An IPv4 packet with any header field chosen; the checksum is right unless given."""
    total = 20 + len(options) + len(payload) if total is None else total
    header = struct.pack("!BBHHHBBH4s4s", vihl, 0, total, 7, flags, 64, proto, 0, src.packed, dst.packed) + options
    if checksum is None:
        checksum = ns.internet_checksum(header)
    return header[:10] + struct.pack("!H", checksum) + header[12:] + payload


def udp_frame(data=b"hello", sport=4000, dport=9, src=IP_B, dst=IP_A, **ip_fields):
    return frames.build(MAC_A, MAC_B, ETHERTYPE_IPV4, ip_raw(ns.udp_datagram(src, dst, sport, dport, data),
                                                             src=src, dst=dst, **ip_fields))


# --- ping ------------------------------------------------------------------------------------

def test_ping_counts_sequences_from_one_and_measures_rtt_in_simulated_time():
    cable = Cable(latency_ns=50 * US)
    seen = []
    ping = cable.a.ping("10.0.0.2", count=3, callback=seen.append)
    cable.ctx.advance(4 * SECOND)
    assert ping.done and seen == ping.results
    # The first echo waits for ARP: request + reply + echo + reply; the others cross twice.
    assert [(r.seq, r.rtt_ns, r.ttl) for r in ping.results] == [(1, 200 * US, 64), (2, 100 * US, 64), (3, 100 * US, 64)]
    assert cable.b.stats["icmp_echo_replies_sent"] == 3 and cable.b.stats["rx_malformed"] == 0
    kinds = [(who, frames.parse(f).ethertype) for who, f in cable.sent]
    assert kinds == [("a", ETHERTYPE_ARP), ("b", ETHERTYPE_ARP)] + [("a", ETHERTYPE_IPV4), ("b", ETHERTYPE_IPV4)] * 3


def test_ping_to_nobody_times_out_after_arp_gives_up():
    stack, sent, ctx = lone_stack()
    ping = stack.ping("10.0.0.9", count=2, timeout_ns=SECOND)
    ctx.advance(10 * SECOND)
    assert ping.done and [(r.seq, r.lost) for r in ping.results] == [(1, True), (2, True)]
    assert stack.stats["arp_requests"] == 3 and stack.stats["arp_failed"] == 1
    assert stack.stats["arp_unresolved_dropped"] == 2
    requests = [frames.parse(f) for f in sent]
    assert all(r.dst == BROADCAST and r.ethertype == ETHERTYPE_ARP for r in requests) and len(requests) == 3
    assert requests[0].payload[:28] == ns.arp_packet(ns.ARP_REQUEST, MAC_A, IP_A, frames.ZERO_MAC,
                                                      ipaddress.IPv4Address("10.0.0.9"))


def test_a_late_reply_is_not_counted():
    cable = Cable(latency_ns=SECOND)                       # a round trip takes 2 s, the timeout is 1 s
    first = cable.a.ping("10.0.0.2", count=1, timeout_ns=SECOND)
    cable.ctx.advance(10 * SECOND)
    second = cable.a.ping("10.0.0.2", count=1, timeout_ns=SECOND)   # ARP is cached now
    cable.ctx.advance(10 * SECOND)
    assert first.results[0].lost and second.results[0].lost
    assert cable.b.stats["icmp_echo_replies_sent"] == 2 and cable.a.stats["icmp_unmatched"] == 2


def test_ping_to_itself_goes_through_loopback():
    stack, sent, ctx = lone_stack()
    ping = stack.ping("10.0.0.1", count=2)
    ctx.advance(3 * SECOND)
    assert ping.received == 2 and sent == []


def test_broadcast_echo_requests_are_not_answered():
    stack, sent, ctx = lone_stack()
    stack.receive(frames.build(BROADCAST, MAC_B, ETHERTYPE_IPV4, ip_raw(
        ns.icmp_echo(ns.ICMP_ECHO_REQUEST, 1, 1, b"x"), ns.PROTO_ICMP, dst=ipaddress.IPv4Address("10.0.0.255"))))
    assert sent == [] and stack.stats["icmp_broadcast_echo"] == 1


# --- ARP -------------------------------------------------------------------------------------

def test_packets_wait_for_arp_then_leave_in_order_and_the_wait_is_bounded():
    stack, sent, ctx = lone_stack(settings={"arp_queue": 4})
    sock = stack.udp_socket()
    for i in range(6):
        sock.sendto(b"%d" % i, ("10.0.0.2", 9))
    assert len(sent) == 1 and stack.stats["arp_queue_full"] == 2
    stack.receive(arp(ns.ARP_REPLY, MAC_B, IP_B, MAC_A, IP_A, dst=MAC_A))
    out = [frames.parse(f) for f in sent[1:]]
    assert [f.dst for f in out] == [MAC_B] * 4
    assert [f.payload[28:29] for f in out] == [b"2", b"3", b"4", b"5"]  # the oldest two were dropped
    assert stack.arp_cache() == {"10.0.0.2": frames.mac_text(MAC_B)}


def test_arp_cache_entries_expire():
    stack, sent, ctx = lone_stack(settings={"arp_cache_ns": 10 * SECOND})
    sock = stack.udp_socket()
    sock.sendto(b"1", ("10.0.0.2", 9))
    stack.receive(arp(ns.ARP_REPLY, MAC_B, IP_B, MAC_A, IP_A, dst=MAC_A))
    ctx.advance(10 * SECOND - 1)
    sock.sendto(b"2", ("10.0.0.2", 9))
    assert stack.stats["arp_requests"] == 1
    ctx.advance(1)
    assert stack.arp_cache() == {}
    sock.sendto(b"3", ("10.0.0.2", 9))
    assert stack.stats["arp_requests"] == 2


def test_arp_requests_are_answered_for_its_own_address_only():
    stack, sent, ctx = lone_stack()
    stack.receive(arp(ns.ARP_REQUEST, MAC_B, IP_B, frames.ZERO_MAC, "10.0.0.77"))
    assert sent == [] and stack.stats["arp_not_for_us"] == 1 and stack.arp_cache() == {}
    stack.receive(arp(ns.ARP_REQUEST, MAC_B, IP_B, frames.ZERO_MAC, IP_A))
    (reply,) = [frames.parse(f) for f in sent]
    assert reply.dst == MAC_B and reply.src == MAC_A and reply.ethertype == ETHERTYPE_ARP
    assert reply.payload[:28] == ns.arp_packet(ns.ARP_REPLY, MAC_A, IP_A, MAC_B, IP_B)
    assert stack.arp_cache() == {"10.0.0.2": frames.mac_text(MAC_B)}   # the asker will talk to us


def test_unsolicited_arp_replies_and_claims_on_its_address_are_not_believed():
    stack, sent, ctx = lone_stack()
    stack.receive(arp(ns.ARP_REPLY, MAC_EVIL, "10.0.0.2", MAC_A, IP_A, dst=MAC_A))
    stack.receive(arp(ns.ARP_REPLY, MAC_EVIL, IP_A, MAC_A, IP_A, dst=MAC_A))
    assert stack.arp_cache() == {} and stack.stats["arp_unsolicited"] == 1 and stack.stats["arp_conflict"] == 1
    # A reply whose sender hardware address is not the frame's source is not believed either.
    stack.udp_socket().sendto(b"x", ("10.0.0.2", 9))
    stack.receive(frames.build(MAC_A, MAC_EVIL, ETHERTYPE_ARP, ns.arp_packet(ns.ARP_REPLY, MAC_B, IP_B, MAC_A, IP_A)))
    assert stack.arp_cache() == {} and stack.stats["arp_bad_sender"] == 1


# --- UDP ---------------------------------------------------------------------------------------

def test_udp_sockets_bind_send_and_receive():
    cable = Cable()
    server = cable.b.udp_socket(53)
    client = cable.a.udp_socket()
    assert client.port == 49152 and cable.a.udp_socket().port == 49153
    with pytest.raises(OSError) as exc:
        cable.b.udp_socket(53)
    assert exc.value.errno == errno.EADDRINUSE
    client.sendto(b"query", ("10.0.0.2", 53))
    cable.ctx.advance(0)
    assert server.pending == 1 and server.recvfrom() == (b"query", ("10.0.0.1", 49152))
    got = []
    client.on_datagram = lambda data, sender: got.append((data, sender))
    server.sendto(b"answer", ("10.0.0.1", 49152))
    cable.ctx.advance(0)
    assert got == [(b"answer", ("10.0.0.2", 53))] and client.recv() is None
    client.close()
    with pytest.raises(OSError) as exc:
        client.sendto(b"x", ("10.0.0.2", 53))
    assert exc.value.errno == errno.EBADF
    server.sendto(b"to nobody", ("10.0.0.1", 49152))
    cable.ctx.advance(0)
    assert cable.a.stats["udp_no_socket"] == 1


def test_udp_queues_are_bounded():
    cable = Cable(udp_queue=4)
    server, client = cable.b.udp_socket(9), cable.a.udp_socket()
    for i in range(10):
        client.sendto(b"%d" % i, ("10.0.0.2", 9))
    cable.ctx.advance(0)
    assert [server.recv() for _ in range(5)] == [b"0", b"1", b"2", b"3", None]
    assert server.dropped == 6 and cable.b.stats["udp_queue_full"] == 6


def test_no_fragmentation_oversize_datagrams_are_refused_and_counted():
    cable = Cable()
    server, client = cable.b.udp_socket(9), cable.a.udp_socket()
    client.sendto(b"x" * 1472, ("10.0.0.2", 9))           # 1472 + 8 + 20 = the MTU
    with pytest.raises(OSError) as exc:
        client.sendto(b"x" * 1473, ("10.0.0.2", 9))
    assert exc.value.errno == errno.EMSGSIZE and cable.a.stats["tx_oversize"] == 1
    cable.ctx.advance(0)
    assert server.recv() == b"x" * 1472 and server.recv() is None
    with pytest.raises(ValueError):
        cable.a.ping("10.0.0.2", size=1473)
    # Fragments that arrive are dropped, not reassembled.
    stack, sent, ctx = lone_stack()
    sock = stack.udp_socket(9)
    stack.receive(udp_frame(flags=0x2000))                 # more fragments
    stack.receive(udp_frame(flags=0x0010))                 # a later fragment
    assert stack.stats["ip_fragment"] == 2 and sock.recv() is None


def test_routing_off_link_goes_through_the_gateway_or_fails():
    stack, sent, ctx = lone_stack(gateway="10.0.0.254")
    sock = stack.udp_socket()
    sock.sendto(b"far", ("192.0.2.7", 9))
    (request,) = [frames.parse(f) for f in sent]
    assert request.payload[24:28] == ipaddress.IPv4Address("10.0.0.254").packed   # asks for the gateway
    gw_mac = frames.mac_bytes("02:00:00:00:00:fe")
    stack.receive(arp(ns.ARP_REPLY, gw_mac, "10.0.0.254", MAC_A, IP_A, dst=MAC_A))
    out = frames.parse(sent[-1])
    assert out.dst == gw_mac and out.payload[16:20] == ipaddress.IPv4Address("192.0.2.7").packed
    alone, _, _ = lone_stack()
    with pytest.raises(OSError) as exc:
        alone.udp_socket().sendto(b"far", ("192.0.2.7", 9))
    assert exc.value.errno == errno.ENETUNREACH
    with pytest.raises(OSError):
        alone.ping("192.0.2.7")


def test_broadcast_datagrams_need_no_arp():
    cable = Cable()
    server = cable.b.udp_socket(67)
    cable.a.udp_socket(68).sendto(b"anyone?", ("255.255.255.255", 67))
    cable.a.udp_socket(69).sendto(b"subnet", ("10.0.0.255", 67))
    cable.ctx.advance(0)
    assert [server.recv(), server.recv()] == [b"anyone?", b"subnet"] and cable.a.stats["arp_requests"] == 0


def test_a_stack_on_a_vlan_tags_what_it_sends_and_takes_only_its_vlan():
    stack, sent, ctx = lone_stack(vlan=10)
    sock = stack.udp_socket(9)
    sock.sendto(b"x", ("10.0.0.255", 9))
    assert frames.parse(sent[0]).vlan == 10
    stack.receive(udp_frame(b"untagged"))
    stack.receive(frames.tag(udp_frame(b"vlan 20"), 20))
    stack.receive(frames.tag(udp_frame(b"vlan 10"), 10))
    assert stack.stats["eth_other_vlan"] == 2 and sock.recv() == b"vlan 10" and sock.recv() is None


def test_link_padding_and_ip_options_are_handled():
    stack, sent, ctx = lone_stack()
    sock = stack.udp_socket(9)
    stack.receive(udp_frame(b"hi") + b"\xee" * 20)            # bytes past the IP total length
    stack.receive(frames.build(MAC_A, MAC_B, ETHERTYPE_IPV4,
                               ip_raw(ns.udp_datagram(IP_B, IP_A, 1, 9, b"opts"), vihl=0x46, options=b"\x01" * 4)))
    datagram = ns.udp_datagram(IP_B, IP_A, 1, 9, b"no checksum")
    stack.receive(frames.build(MAC_A, MAC_B, ETHERTYPE_IPV4, ip_raw(datagram[:6] + b"\0\0" + datagram[8:])))
    assert [sock.recv() for _ in range(3)] == [b"hi", b"opts", b"no checksum"]
    assert stack.stats["rx_malformed"] == 0


# --- hostile frames ----------------------------------------------------------------------------

def _udp(data=b"hi"):
    return ns.udp_datagram(IP_B, IP_A, 4000, 9, data)


def _eth(payload, ethertype=ETHERTYPE_IPV4):
    return raw(MAC_A, MAC_B, ethertype, payload)


GOOD_UDP = _udp()
GOOD_ICMP = ns.icmp_echo(ns.ICMP_ECHO_REQUEST, 1, 1, b"ping")
GOOD_ARP = ns.arp_packet(ns.ARP_REQUEST, MAC_B, IP_B, frames.ZERO_MAC, IP_A)

HOSTILE = {
    "eth_short": b"\x02" * 13,
    "eth_short ": frames.tag(_eth(b""), 10)[:16],                         # a tag cut short
    "eth_bad_source": raw(MAC_A, b"\x01" + MAC_B[1:], ETHERTYPE_IPV4, ip_raw(GOOD_UDP)),
    "eth_oversize": _eth(ip_raw(GOOD_UDP) + b"\0" * 1500),
    "arp_short": _eth(GOOD_ARP[:27], ETHERTYPE_ARP),
    "arp_header": _eth(struct.pack("!H", 6) + GOOD_ARP[2:], ETHERTYPE_ARP),
    "arp_header ": _eth(GOOD_ARP[:6] + struct.pack("!H", 9) + GOOD_ARP[8:], ETHERTYPE_ARP),
    "ip_short": _eth(ip_raw(GOOD_UDP)[:19]),
    "ip_version": _eth(ip_raw(GOOD_UDP, vihl=0x65)),
    "ip_header_length": _eth(ip_raw(GOOD_UDP, vihl=0x44)),
    "ip_header_length ": _eth(ip_raw(b"", vihl=0x4F)),                   # 60-byte header, 20 there
    "ip_total_length": _eth(ip_raw(GOOD_UDP, total=200)),
    "ip_total_length ": _eth(ip_raw(GOOD_UDP, total=19)),
    "ip_checksum": _eth(ip_raw(GOOD_UDP, checksum=0x1234)),
    "ip_reserved_flag": _eth(ip_raw(GOOD_UDP, flags=0xC000)),
    "ip_bad_source": _eth(ip_raw(GOOD_UDP, src=ipaddress.IPv4Address("255.255.255.255"))),
    "icmp_short": _eth(ip_raw(GOOD_ICMP[:7], ns.PROTO_ICMP)),
    "icmp_checksum": _eth(ip_raw(GOOD_ICMP[:-1] + b"!", ns.PROTO_ICMP)),
    "udp_short": _eth(ip_raw(GOOD_UDP[:7])),
    "udp_length": _eth(ip_raw(GOOD_UDP[:4] + struct.pack("!H", 200) + GOOD_UDP[6:])),
    "udp_length ": _eth(ip_raw(GOOD_UDP[:4] + struct.pack("!H", 7) + GOOD_UDP[6:])),
    "udp_checksum": _eth(ip_raw(GOOD_UDP[:-1] + b"!")),
    "udp_port": _eth(ip_raw(ns.udp_datagram(IP_B, IP_A, 4000, 0, b"hi"))),
}


@pytest.mark.parametrize("reason", sorted(HOSTILE))
def test_hostile_frames_are_counted_and_dropped(reason):
    stack, sent, ctx = lone_stack()
    sock = stack.udp_socket(9)
    stack.receive(HOSTILE[reason])
    assert stack.stats[reason.strip()] == 1 and stack.stats["rx_malformed"] == 1
    assert sent == [] and sock.recv() is None and stack.arp_cache() == {}
    # The same stack still works: the good version of the frame goes through.
    stack.receive(_eth(ip_raw(GOOD_UDP)))
    assert sock.recv() == b"hi"


IGNORED = {
    "eth_not_for_us": raw(MAC_EVIL, MAC_B, ETHERTYPE_IPV4, ip_raw(GOOD_UDP)),
    "eth_unknown_type": _eth(b"\0" * 46, 0x86DD),
    "ip_not_for_us": _eth(ip_raw(GOOD_UDP, dst=ipaddress.IPv4Address("10.0.0.3"))),
    "ip_unknown_protocol": _eth(ip_raw(b"\0" * 20, 6)),
    "icmp_other": _eth(ip_raw(ns.icmp_echo(13, 1, 1, b""), ns.PROTO_ICMP)),
    "icmp_unmatched": _eth(ip_raw(ns.icmp_echo(ns.ICMP_ECHO_REPLY, 99, 1, b""), ns.PROTO_ICMP)),
    "udp_no_socket": _eth(ip_raw(ns.udp_datagram(IP_B, IP_A, 4000, 10, b"hi"))),
}


@pytest.mark.parametrize("reason", sorted(IGNORED))
def test_frames_not_for_the_stack_are_counted_and_ignored(reason):
    stack, sent, ctx = lone_stack()
    stack.udp_socket(9)
    stack.receive(IGNORED[reason])
    assert stack.stats[reason] == 1 and stack.stats["rx_ignored"] == 1 and stack.stats["rx_malformed"] == 0
    assert sent == []


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_are_received_without_raising(blob):
    stack, sent, ctx = lone_stack()
    stack.udp_socket(9)
    stack.receive(blob)
    stack.receive(MAC_A + MAC_B + b"\x08\x00" + blob)       # as IPv4 for us
    stack.receive(MAC_A + MAC_B + b"\x08\x06" + blob)       # as ARP for us
    assert stack.stats["rx_frames"] == 3


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=0, max_size=64), st.data())
def test_a_mutated_frame_never_raises_and_a_corrupt_datagram_is_never_delivered(data, draw):
    stack, sent, ctx = lone_stack()
    sock = stack.udp_socket(9)
    good = bytearray(_eth(ip_raw(_udp(data))))
    where = draw.draw(st.integers(14, len(good) - 1))
    good[where] = draw.draw(st.integers(0, 255).filter(lambda v: v != good[where]))
    stack.receive(bytes(good))
    # One changed byte always changes a one's-complement sum (only 0x0000 <-> 0xffff in a whole
    # word would not), so the IP or UDP checksum catches every change that matters.
    delivered = sock.recvfrom()
    assert delivered is None or delivered == (data, (str(IP_B), 4000))


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=1472), st.integers(1, 65535), st.integers(1, 65535))
def test_any_datagram_crosses_a_cable_intact(data, sport, dport):
    cable = Cable()
    server = cable.b.udp_socket(dport)
    client = cable.a.udp_socket(sport)
    client.sendto(data, ("10.0.0.2", dport))
    cable.ctx.advance(0)
    assert server.recvfrom() == (data, ("10.0.0.1", sport))
    assert cable.b.stats["rx_malformed"] == 0


@given(st.binary(max_size=300))
def test_a_checksummed_header_sums_to_zero(data):
    packet = ns.ip_packet(IP_A, IP_B, ns.PROTO_UDP, data, 1, 64)
    assert ns.internet_checksum(packet[:20]) == 0
    message = ns.icmp_echo(ns.ICMP_ECHO_REQUEST, 1, 2, data)
    assert ns.internet_checksum(message) == 0


# --- configuration and determinism --------------------------------------------------------------

def test_configuration_is_checked():
    ctx = ManualContext()
    make = lambda **c: NetStack.from_config(c, transmit=lambda f: None, clock=ctx)  # noqa: E731
    stack = make(mac="02:00:00:00:00:01", address="10.0.10.2/24", gateway="10.0.10.1")
    assert str(stack.ip) == "10.0.10.2" and str(stack.network) == "10.0.10.0/24" and str(stack.gateway) == "10.0.10.1"
    for bad in ({"address": "10.0.10.2/24"},                                       # no MAC
                {"mac": "02:00:00:00:00:01", "address": "10.0.10.2"},              # no prefix
                {"mac": "02:00:00:00:00:01", "address": "10.0.10.0/24"},           # the network's address
                {"mac": "02:00:00:00:00:01", "address": "10.0.10.2/24", "gateway": "10.0.11.1"},
                {"mac": "01:00:00:00:00:01", "address": "10.0.10.2/24"},
                {"mac": "02:00:00:00:00:01", "address": "10.0.10.2/24", "vlan": 5000},
                {"mac": "02:00:00:00:00:01", "address": "10.0.10.2/24", "mtu": 9000}):
        with pytest.raises(ValueError):
            make(**bad)


def test_the_same_scenario_gives_the_same_frames():
    def run():
        cable = Cable(latency_ns=30 * US)
        cable.a.ping("10.0.0.2", count=3)
        server, client = cable.b.udp_socket(9), cable.a.udp_socket()
        for i in range(5):
            client.sendto(b"%d" % i, ("10.0.0.2", 9))
            cable.ctx.advance(100 * US)
        cable.ctx.advance(5 * SECOND)
        assert [server.recv() for _ in range(5)] == [b"%d" % i for i in range(5)]
        return cable.sent, dict(cable.a.stats), dict(cable.b.stats)

    assert run() == run()
