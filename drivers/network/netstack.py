"""The network stack of a synthetic guest: Ethernet (with an optional 802.1Q tag), ARP with a
cache, IPv4 without fragmentation, ICMP echo and UDP sockets, over one or more interfaces.

It is transport-agnostic: frames leave through the `transmit(frame)` callable it is given and come
in through `stack.receive(frame)`; timers go through a clock with the shape of
`drivers.device.DeviceContext` (`now()`, `call_later(delay_ns, fn)`), so it runs the same behind a
netvsc adapter, straight on a switch port, or on a test's manual clock. Times are simulated ns.
`transmit` may bring frames back into `receive` before it returns (a switch with no latency):
the stack's state is complete before every transmit.

What workloads use:
    stack = NetStack(mac="02:00:00:00:10:02", address="10.0.10.2/24", gateway="10.0.10.1",
                     transmit=port.send, clock=context)   # or NetStack.from_config(...)
    ping = stack.ping("10.0.10.3", count=3)             # ping.results, ping.done, callback=
    sock = stack.udp_socket(5000)
    sock.sendto(b"hello", ("10.0.10.3", 5000))
    sock.recvfrom()                                      # (data, (ip, port)) or None; or on_datagram=

Interfaces. A guest with several network adapters has one stack and one interface per adapter
(`stack.add_interface(...)`, each with its MAC, address, optional gateway and VLAN, its own ARP
cache, and the `transmit` of its adapter; frames it receives come in through `iface.receive`).
Routing, as a host with several interfaces does it: a destination in a network an interface is on
goes out of that interface (the longest prefix first, then the first interface added), anything
else goes to the gateway of the first interface that has one; a datagram leaves with the address
of the interface it leaves by. Sockets are bound on every interface. A frame is taken only for the
address of the interface it came in on (the strong host model), and ARP answers only for it.
`stack.mac`, `stack.ip`, `stack.network`, `stack.gateway` and `stack.vlan` are the first interface's.

Every received frame is checked (lengths, checksums, header fields) before anything acts on it; a
frame that fails is counted in `stats` under its reason and under "rx_malformed" and dropped, and
`receive` never raises for what a frame contains. Frames that are well formed but not for this
stack (another MAC, another VLAN, no socket on the port) count under their reason and
"rx_ignored". Every queue is bounded: packets waiting for ARP per address, datagrams per socket,
entries in the ARP cache.

Deliberate limits: no fragmentation or reassembly (oversize packets are refused and counted,
fragments dropped); no IP options sent (received ones are skipped); no ICMP errors sent
(FUTURE: port unreachable); a broadcast echo request is not answered (as Linux by default).
"""
from __future__ import annotations

import errno
import ipaddress
import struct
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from drivers.network import frames
from drivers.network.frames import BROADCAST, ETHERTYPE_ARP, ETHERTYPE_IPV4, ZERO_MAC, FrameError

SECOND = 1_000_000_000
IPv4 = ipaddress.IPv4Address
LIMITED_BROADCAST = IPv4("255.255.255.255")

PROTO_ICMP, PROTO_UDP = 1, 17
ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST = 0, 8
ARP_REQUEST, ARP_REPLY = 1, 2
EPHEMERAL_PORTS = range(49152, 65536)

_ARP = struct.Struct("!HHBBH6s4s6s4s")     # 28 bytes, Ethernet/IPv4 only
_IP = struct.Struct("!BBHHHBBH4s4s")       # 20 bytes without options
_ICMP_ECHO = struct.Struct("!BBHHH")       # type, code, checksum, identifier, sequence
_UDP = struct.Struct("!HHHH")              # source port, destination port, length, checksum
_PSEUDO = struct.Struct("!4s4sBBH")        # UDP checksum pseudo-header
_DF = 0x4000


class Clock(Protocol):
    def now(self) -> int: ...
    def call_later(self, delay_ns: int, fn: Callable[[], None]) -> None: ...


class _Malformed(Exception):
    """A received frame that breaks its format: counted under `reason` and dropped."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


class _Ignored(Exception):
    """A received frame that is well formed but not for this stack."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


# --- wire formats --------------------------------------------------------------------------

def internet_checksum(data: bytes) -> int:
    """RFC 1071: the one's complement of the one's-complement sum of 16-bit words."""
    if len(data) & 1:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def arp_packet(op: int, sha: bytes, spa: IPv4, tha: bytes, tpa: IPv4) -> bytes:
    return _ARP.pack(1, ETHERTYPE_IPV4, 6, 4, op, sha, spa.packed, tha, tpa.packed)


def ip_packet(src: IPv4, dst: IPv4, proto: int, payload: bytes, ident: int, ttl: int) -> bytes:
    header = _IP.pack(0x45, 0, _IP.size + len(payload), ident, _DF, ttl, proto, 0, src.packed, dst.packed)
    checksum = internet_checksum(header)
    return header[:10] + struct.pack("!H", checksum) + header[12:] + payload


def icmp_echo(kind: int, ident: int, seq: int, data: bytes) -> bytes:
    message = _ICMP_ECHO.pack(kind, 0, 0, ident, seq) + data
    return message[:2] + struct.pack("!H", internet_checksum(message)) + message[4:]


def udp_datagram(src: IPv4, dst: IPv4, sport: int, dport: int, data: bytes) -> bytes:
    length = _UDP.size + len(data)
    segment = _UDP.pack(sport, dport, length, 0) + data
    checksum = internet_checksum(_PSEUDO.pack(src.packed, dst.packed, 0, PROTO_UDP, length) + segment)
    return segment[:6] + struct.pack("!H", checksum or 0xFFFF) + segment[8:]  # 0 means "none"


# --- the stack's parts ---------------------------------------------------------------------

@dataclass(frozen=True)
class StackSettings:
    arp_cache_ns: int = 60 * SECOND    # how long a learned address is used
    arp_retry_ns: int = SECOND         # between requests for an unresolved address
    arp_tries: int = 3                 # requests before the queued packets are dropped
    arp_queue: int = 16                # packets waiting per unresolved address (oldest dropped)
    arp_cache_entries: int = 256       # the oldest entry goes when a new one does not fit
    udp_queue: int = 256               # datagrams waiting per socket (new ones dropped)
    ttl: int = 64
    mtu: int = frames.MTU

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"stack setting {name} must be a positive integer, got {value!r}")
        if not 68 <= self.mtu <= 9000 or self.ttl > 255:
            raise ValueError("stack settings: mtu must be in 68..9000 and ttl at most 255")


@dataclass(frozen=True)
class PingResult:
    seq: int
    rtt_ns: int | None      # None: no reply within the timeout
    ttl: int | None = None  # of the reply

    @property
    def lost(self) -> bool:
        return self.rtt_ns is None


class Ping:
    """One `ping` run: `count` echo requests `interval_ns` apart, each waiting `timeout_ns`."""

    def __init__(self, stack: NetStack, target: IPv4, ident: int, count: int, interval_ns: int,
                 timeout_ns: int, data: bytes, callback: Callable[[PingResult], None] | None) -> None:
        self.target, self.identifier, self.count = target, ident, count
        self.callback = callback
        self.sent = 0
        self._stack = stack
        self._interval, self._timeout, self._data = interval_ns, timeout_ns, data
        self._sent_at: dict[int, int] = {}        # seq -> simulated time sent, until answered
        self._results: dict[int, PingResult] = {}

    @property
    def results(self) -> list[PingResult]:
        return [self._results[seq] for seq in sorted(self._results)]

    @property
    def received(self) -> int:
        return sum(not r.lost for r in self._results.values())

    @property
    def done(self) -> bool:
        return len(self._results) == self.count

    def _send_next(self) -> None:
        self.sent += 1
        seq, clock = self.sent, self._stack.clock
        self._sent_at[seq] = clock.now()
        self._stack._send_ip(self.target, PROTO_ICMP,
                             icmp_echo(ICMP_ECHO_REQUEST, self.identifier, seq, self._data))
        clock.call_later(self._timeout, lambda: self._finish(seq, None, None))
        if self.sent < self.count:
            clock.call_later(self._interval, self._send_next)

    def _on_reply(self, seq: int, ttl: int) -> bool:
        sent_at = self._sent_at.get(seq)
        if sent_at is None:
            return False              # late, duplicate, or never sent
        self._finish(seq, self._stack.clock.now() - sent_at, ttl)
        return True

    def _finish(self, seq: int, rtt: int | None, ttl: int | None) -> None:
        if self._sent_at.pop(seq, None) is None:
            return                    # already answered (this is its timeout firing)
        result = self._results[seq] = PingResult(seq, rtt, ttl)
        if self.done:
            self._stack._pings.pop(self.identifier, None)
        if self.callback is not None:
            self.callback(result)


class UdpSocket:
    """A bound UDP port. Datagrams wait in a bounded queue unless `on_datagram(data, (ip, port))`
    is set; then each goes to it as it arrives."""

    def __init__(self, stack: NetStack, port: int, on_datagram=None) -> None:
        self.stack, self.port = stack, port
        self.on_datagram: Callable[[bytes, tuple[str, int]], None] | None = on_datagram
        self.received = 0
        self.dropped = 0                 # datagrams lost to a full queue
        self._queue: deque[tuple[bytes, tuple[str, int]]] = deque()

    def sendto(self, data: bytes, address: tuple[str, int]) -> int:
        """Send one datagram; returns its size. Raises OSError (EMSGSIZE) when it does not fit the
        MTU, (ENETUNREACH) when no route leads to the address, (EBADF) on a closed socket."""
        if self.stack._udp.get(self.port) is not self:
            raise OSError(errno.EBADF, "the socket is closed")
        ip, port = address
        ip = IPv4(ip)
        if not isinstance(port, int) or not 0 < port < 65536:
            raise ValueError(f"UDP port {port!r} is outside 1..65535")
        data = bytes(data)
        if _IP.size + _UDP.size + len(data) > self.stack.settings.mtu:
            self.stack.stats["tx_oversize"] += 1
            raise OSError(errno.EMSGSIZE, f"{len(data)} bytes do not fit one datagram on an MTU of "
                                          f"{self.stack.settings.mtu} (no fragmentation)")
        route = self.stack._route(ip)   # the interface it leaves by gives the source address
        self.stack._send_ip(ip, PROTO_UDP, udp_datagram(route[0].ip, ip, self.port, port, data), route)
        return len(data)

    def recvfrom(self) -> tuple[bytes, tuple[str, int]] | None:
        """The oldest waiting datagram and its sender, or None."""
        return self._queue.popleft() if self._queue else None

    def recv(self) -> bytes | None:
        item = self.recvfrom()
        return None if item is None else item[0]

    @property
    def pending(self) -> int:
        return len(self._queue)

    def close(self) -> None:
        if self.stack._udp.get(self.port) is self:
            del self.stack._udp[self.port]
        self._queue.clear()

    def _deliver(self, data: bytes, sender: tuple[str, int]) -> None:
        if self.on_datagram is not None:
            self.received += 1
            self.on_datagram(data, sender)
        elif len(self._queue) >= self.stack.settings.udp_queue:
            self.dropped += 1
            self.stack.stats["udp_queue_full"] += 1
        else:
            self.received += 1
            self._queue.append((data, sender))


class _Resolving:
    """An address ARP is asking for, and the IP packets waiting for its answer."""

    def __init__(self) -> None:
        self.tries = 0
        self.queue: deque[bytes] = deque()


class Interface:
    """One interface of a stack: an adapter's MAC, its IPv4 address and network, an optional
    gateway and VLAN tag, the `transmit` of the adapter, and the interface's own ARP cache."""

    def __init__(self, stack: NetStack, name: str, *, mac: str | bytes, address: str,
                 transmit: Callable[[bytes], Any], gateway: str | None = None, vlan: int | None = None) -> None:
        self.stack, self.name = stack, name
        self.mac = frames.mac_bytes(mac)
        if self.mac[0] & 1 or self.mac == ZERO_MAC:
            raise ValueError(f"{frames.mac_text(self.mac)} is not a unicast MAC address")
        try:
            if "/" not in str(address):
                raise ValueError("the prefix length is missing")
            self.address = ipaddress.IPv4Interface(address)
        except ValueError as exc:
            raise ValueError(f"address {address!r} is not an IPv4 address with a prefix, like "
                             f"10.0.10.2/24: {exc}") from None
        self.ip, self.network = self.address.ip, self.address.network
        if self.network.prefixlen < 31 and self.ip in (self.network.network_address,
                                                        self.network.broadcast_address):
            raise ValueError(f"address {address!r} is its network's own or broadcast address")
        self.gateway = None if gateway is None else IPv4(gateway)
        if self.gateway is not None and (self.gateway not in self.network or self.gateway == self.ip):
            raise ValueError(f"gateway {gateway} is not another address in {self.network}")
        if vlan is not None and not 1 <= vlan <= frames.VLAN_MAX:
            raise ValueError(f"VLAN {vlan} is outside 1..{frames.VLAN_MAX}")
        self.vlan = vlan                    # tag sent frames with it, accept only frames with it
        self.transmit = transmit
        self._arp: OrderedDict[IPv4, tuple[bytes, int]] = OrderedDict()  # ip -> (mac, expires), oldest first
        self._resolving: dict[IPv4, _Resolving] = {}

    def receive(self, frame: bytes) -> None:
        """One frame from this interface's network. Never raises for what the frame contains."""
        self.stack._receive(self, frame)

    def __repr__(self) -> str:
        return f"<Interface {self.name} {self.address} {frames.mac_text(self.mac)}>"


class NetStack:
    def __init__(self, *, clock: Clock, mac: str | bytes | None = None, address: str | None = None,
                 transmit: Callable[[bytes], Any] | None = None, gateway: str | None = None,
                 vlan: int | None = None, settings: StackSettings | None = None, name: str = "eth0") -> None:
        """A stack on `clock`; with `mac`, `address` and `transmit`, its first interface (`name`)
        too. Without them it has none until `add_interface`."""
        self.settings = settings or StackSettings()
        self.clock = clock
        self.stats: Counter[str] = Counter()
        self.interfaces: list[Interface] = []
        self._udp: dict[int, UdpSocket] = {}
        self._pings: dict[int, Ping] = {}
        self._next_ident = 1            # IP identification
        self._next_ping = 1             # ICMP echo identifier
        self._next_port = EPHEMERAL_PORTS.start
        if (mac, address, transmit) != (None, None, None):
            if mac is None or address is None or transmit is None:
                raise ValueError("a stack's first interface needs a mac, an address and a transmit")
            self.add_interface(mac=mac, address=address, transmit=transmit, gateway=gateway, vlan=vlan, name=name)

    def add_interface(self, *, mac: str | bytes, address: str, transmit: Callable[[bytes], Any],
                      gateway: str | None = None, vlan: int | None = None, name: str | None = None) -> Interface:
        """Attach another interface (an adapter that came up). Raises ValueError for a bad
        address, gateway, MAC or VLAN, or an address another interface has."""
        iface = Interface(self, name or f"eth{len(self.interfaces)}", mac=mac, address=address,
                          transmit=transmit, gateway=gateway, vlan=vlan)
        if any(other.ip == iface.ip for other in self.interfaces):
            raise ValueError(f"address {iface.ip} is already on another interface")
        self.interfaces.append(iface)
        return iface

    def remove_interface(self, iface: Interface) -> None:
        """Detach an interface (its adapter went away): what waited for its ARP answers is dropped."""
        if iface in self.interfaces:
            self.interfaces.remove(iface)
            iface._resolving.clear()

    def _first(self) -> Interface:
        if not self.interfaces:
            raise AttributeError("this stack has no interface")
        return self.interfaces[0]

    # The first interface's addresses, for a stack with one (most of them).
    mac = property(lambda self: self._first().mac)
    ip = property(lambda self: self._first().ip)
    network = property(lambda self: self._first().network)
    interface = property(lambda self: self._first().address)
    gateway = property(lambda self: self._first().gateway)
    vlan = property(lambda self: self._first().vlan)
    transmit = property(lambda self: self._first().transmit)

    @classmethod
    def from_config(cls, config: dict[str, Any], *, transmit: Callable[[bytes], Any], clock: Clock,
                    settings: StackSettings | None = None) -> NetStack:
        """From a VM network adapter's configuration: `mac`, `address` ("10.0.10.2/24"), and
        optionally `gateway` and `vlan` (set only when the guest tags its own frames)."""
        unknown = set(config) - {"mac", "address", "gateway", "vlan"}
        if unknown:
            raise ValueError(f"network configuration: unknown keys {sorted(unknown)}")
        missing = {"mac", "address"} - set(config)
        if missing:
            raise ValueError(f"network configuration: missing {sorted(missing)}")
        return cls(mac=config["mac"], address=config["address"], gateway=config.get("gateway"),
                   vlan=config.get("vlan"), transmit=transmit, clock=clock, settings=settings)

    # --- what workloads use ----------------------------------------------------------------

    def ping(self, ip: str, count: int = 1, *, interval_ns: int = SECOND, timeout_ns: int = SECOND,
             size: int = 56, callback: Callable[[PingResult], None] | None = None) -> Ping:
        """Send `count` echo requests (sequence numbers from 1); `callback(result)` is called for
        each reply or timeout. RTTs are simulated time, the first one including ARP resolution."""
        target = IPv4(ip)
        if count < 1 or interval_ns < 0 or timeout_ns <= 0:
            raise ValueError("ping needs count >= 1, interval_ns >= 0 and timeout_ns > 0")
        if not 0 <= size <= self.settings.mtu - _IP.size - _ICMP_ECHO.size:
            raise ValueError(f"ping size {size} does not fit the MTU {self.settings.mtu}")
        self._route(target)           # unreachable: raise now rather than time out
        ident = self._next_ping
        self._next_ping = self._next_ping % 0xFFFF + 1
        session = Ping(self, target, ident, count, interval_ns, timeout_ns,
                       bytes(i & 0xFF for i in range(size)), callback)
        self._pings[ident] = session
        session._send_next()
        return session

    def udp_socket(self, port: int = 0, on_datagram=None) -> UdpSocket:
        """Bind a UDP port on every interface (0: the next free ephemeral port). Raises OSError
        (EADDRINUSE)."""
        if port == 0:
            for _ in EPHEMERAL_PORTS:
                candidate = self._next_port
                self._next_port = candidate + 1 if candidate + 1 < EPHEMERAL_PORTS.stop else EPHEMERAL_PORTS.start
                if candidate not in self._udp:
                    port = candidate
                    break
            else:
                raise OSError(errno.EADDRINUSE, "no free ephemeral UDP port")
        if not isinstance(port, int) or not 0 < port < 65536:
            raise ValueError(f"UDP port {port!r} is outside 1..65535")
        if port in self._udp:
            raise OSError(errno.EADDRINUSE, f"UDP port {port} is already bound")
        sock = self._udp[port] = UdpSocket(self, port, on_datagram)
        return sock

    def arp_cache(self) -> dict[str, str]:
        """The live ARP entries of every interface: IP -> MAC."""
        now = self.clock.now()
        return {str(ip): frames.mac_text(mac) for iface in self.interfaces
                for ip, (mac, expires) in iface._arp.items() if expires > now}

    def route(self, ip: str) -> Interface | None:
        """The interface a packet to `ip` would leave by, or None if there is no route."""
        try:
            return self._route(IPv4(ip))[0]
        except OSError:
            return None

    def connected(self, ip: str) -> Interface | None:
        """The interface on `ip`'s own network (no gateway on the way), or None."""
        try:
            iface, hop = self._route(IPv4(ip))
        except OSError:
            return None
        return iface if hop == IPv4(ip) else None

    # --- sending ---------------------------------------------------------------------------

    def _route(self, dst: IPv4) -> tuple[Interface, IPv4 | None]:
        """(the interface, the next hop) for dst; the hop is None for a broadcast."""
        if not self.interfaces:
            raise OSError(errno.ENETUNREACH, f"no route to {dst}: the stack has no interface")
        if dst == LIMITED_BROADCAST:
            return self.interfaces[0], None
        for iface in self.interfaces:
            if dst == iface.ip:
                return iface, dst                      # one of ours: loopback
            if dst == iface.network.broadcast_address:
                return iface, None
        if dst.is_multicast or dst.is_unspecified:
            raise OSError(errno.ENETUNREACH, f"cannot send to {dst}: multicast is not supported")
        on_link = [iface for iface in self.interfaces if dst in iface.network]
        if on_link:   # the most specific network; among equals, the first interface added
            return max(on_link, key=lambda iface: iface.network.prefixlen), dst
        for iface in self.interfaces:
            if iface.gateway is not None:
                return iface, iface.gateway
        raise OSError(errno.ENETUNREACH, f"no route to {dst}: not in "
                                         f"{', '.join(str(i.network) for i in self.interfaces)} and no gateway")

    def _send_ip(self, dst: IPv4, proto: int, payload: bytes,
                 route: tuple[Interface, IPv4 | None] | None = None) -> None:
        iface, hop = route or self._route(dst)
        ident, self._next_ident = self._next_ident, (self._next_ident + 1) & 0xFFFF
        packet = ip_packet(iface.ip, dst, proto, payload, ident, self.settings.ttl)
        if dst == iface.ip:
            # Loopback, on the next turn of the clock so that a reply never recurses into its request.
            self.clock.call_later(0, lambda: self._receive_guarded(lambda p: self._ip_input(iface, p), packet))
            return
        if hop is None:
            self._send_frame(iface, BROADCAST, ETHERTYPE_IPV4, packet)
            return
        mac = self._cached(iface, hop)
        if mac is not None:
            self._send_frame(iface, mac, ETHERTYPE_IPV4, packet)
            return
        waiting = iface._resolving.get(hop)
        if waiting is not None:
            if len(waiting.queue) >= self.settings.arp_queue:
                waiting.queue.popleft()
                self.stats["arp_queue_full"] += 1
            waiting.queue.append(packet)
            return
        waiting = iface._resolving[hop] = _Resolving()
        # Queued before the request goes out: transmit() may bring the answer back before it returns.
        waiting.queue.append(packet)
        self._arp_request(iface, hop, waiting)

    def _send_frame(self, iface: Interface, dst: bytes, ethertype: int, payload: bytes) -> None:
        frame = frames.build(dst, iface.mac, ethertype, payload, vlan=iface.vlan)
        self.stats["tx_frames"] += 1
        self.stats["tx_bytes"] += len(frame)
        iface.transmit(frame)

    def _arp_request(self, iface: Interface, hop: IPv4, waiting: _Resolving) -> None:
        waiting.tries += 1
        self.stats["arp_requests"] += 1
        self._send_frame(iface, BROADCAST, ETHERTYPE_ARP, arp_packet(ARP_REQUEST, iface.mac, iface.ip, ZERO_MAC, hop))
        self.clock.call_later(self.settings.arp_retry_ns, lambda: self._arp_retry(iface, hop, waiting))

    def _arp_retry(self, iface: Interface, hop: IPv4, waiting: _Resolving) -> None:
        if iface._resolving.get(hop) is not waiting:
            return                                    # answered in the meantime (or the interface went)
        if waiting.tries < self.settings.arp_tries:
            self._arp_request(iface, hop, waiting)
            return
        del iface._resolving[hop]
        self.stats["arp_failed"] += 1
        self.stats["arp_unresolved_dropped"] += len(waiting.queue)

    def _cached(self, iface: Interface, ip: IPv4) -> bytes | None:
        entry = iface._arp.get(ip)
        if entry is None:
            return None
        if entry[1] <= self.clock.now():
            del iface._arp[ip]
            return None
        return entry[0]

    def _learn(self, iface: Interface, ip: IPv4, mac: bytes) -> None:
        iface._arp.pop(ip, None)
        if len(iface._arp) >= self.settings.arp_cache_entries:
            iface._arp.popitem(last=False)
            self.stats["arp_evicted"] += 1
        iface._arp[ip] = (mac, self.clock.now() + self.settings.arp_cache_ns)
        waiting = iface._resolving.pop(ip, None)
        if waiting is not None:
            for packet in waiting.queue:
                self._send_frame(iface, mac, ETHERTYPE_IPV4, packet)

    # --- receiving -------------------------------------------------------------------------

    def receive(self, frame: bytes) -> None:
        """One frame from the network of the first interface. Never raises for what the frame
        contains. (A stack with several interfaces takes frames through `iface.receive`.)"""
        self._receive(self._first(), frame)

    def _receive(self, iface: Interface, frame: bytes) -> None:
        self.stats["rx_frames"] += 1
        if iface not in self.interfaces:
            self.stats["rx_no_interface"] += 1
            return
        self._receive_guarded(lambda data: self._ethernet_input(iface, data), frame)

    def _receive_guarded(self, handler: Callable[[bytes], None], data: bytes) -> None:
        try:
            handler(bytes(data))
        except _Malformed as exc:
            self.stats[exc.reason] += 1
            self.stats["rx_malformed"] += 1
        except _Ignored as exc:
            self.stats[exc.reason] += 1
            self.stats["rx_ignored"] += 1

    def _ethernet_input(self, iface: Interface, frame: bytes) -> None:
        try:
            vlan, _, inner = frames.untag(frame)
        except FrameError:
            raise _Malformed("eth_short") from None
        if len(inner) < frames.HEADER_LEN:
            raise _Malformed("eth_short")
        if vlan != iface.vlan and not (iface.vlan is None and vlan == frames.VLAN_NONE):
            raise _Ignored("eth_other_vlan")
        dst, src = inner[:6], inner[6:12]
        if dst != iface.mac and dst != BROADCAST:
            raise _Ignored("eth_not_for_us")
        if src[0] & 1 or src == ZERO_MAC:
            raise _Malformed("eth_bad_source")
        (ethertype,) = struct.unpack_from("!H", inner, 12)
        payload = inner[frames.HEADER_LEN:]
        if len(payload) > self.settings.mtu:
            raise _Malformed("eth_oversize")
        if ethertype == ETHERTYPE_IPV4:
            self._ip_input(iface, payload)
        elif ethertype == ETHERTYPE_ARP:
            self._arp_input(iface, payload, src)
        else:
            raise _Ignored("eth_unknown_type")

    def _arp_input(self, iface: Interface, packet: bytes, frame_src: bytes) -> None:
        if len(packet) < _ARP.size:
            raise _Malformed("arp_short")
        htype, ptype, hlen, plen, op, sha, spa, tha, tpa = _ARP.unpack_from(packet)
        if (htype, ptype, hlen, plen) != (1, ETHERTYPE_IPV4, 6, 4) or op not in (ARP_REQUEST, ARP_REPLY):
            raise _Malformed("arp_header")
        if sha[0] & 1 or sha == ZERO_MAC or sha != frame_src:
            raise _Malformed("arp_bad_sender")
        sender, target = IPv4(spa), IPv4(tpa)
        if sender == iface.ip:
            raise _Ignored("arp_conflict")            # someone else claims our address
        for_us = target == iface.ip
        network = iface.network
        if sender in network and sender != network.broadcast_address and not sender.is_unspecified:
            # RFC 826: refresh what we know or are asking for; add the sender only when it is
            # talking to us. Unsolicited answers about others are not believed.
            if sender in iface._arp or sender in iface._resolving or (for_us and op == ARP_REQUEST):
                self._learn(iface, sender, sha)
            elif op == ARP_REPLY:
                self.stats["arp_unsolicited"] += 1
        if op == ARP_REQUEST:
            if not for_us:
                raise _Ignored("arp_not_for_us")
            self.stats["arp_replies"] += 1
            self._send_frame(iface, sha, ETHERTYPE_ARP, arp_packet(ARP_REPLY, iface.mac, iface.ip, sha, sender))

    def _ip_input(self, iface: Interface, packet: bytes) -> None:
        if len(packet) < _IP.size:
            raise _Malformed("ip_short")
        vihl, _, total, _, fragment, ttl, proto, _, src, dst = _IP.unpack_from(packet)
        if vihl >> 4 != 4:
            raise _Malformed("ip_version")
        header_len = (vihl & 0xF) * 4
        if header_len < _IP.size or header_len > len(packet):
            raise _Malformed("ip_header_length")
        if total < header_len or total > len(packet):
            raise _Malformed("ip_total_length")          # bytes past `total` are link padding
        if internet_checksum(packet[:header_len]) != 0:
            raise _Malformed("ip_checksum")
        if fragment & 0x8000:
            raise _Malformed("ip_reserved_flag")
        if fragment & 0x3FFF:
            raise _Ignored("ip_fragment")                 # more fragments, or not the first one
        source, destination = IPv4(src), IPv4(dst)
        if (source.is_multicast or source.is_unspecified or source == LIMITED_BROADCAST
                or source == iface.network.broadcast_address):
            raise _Malformed("ip_bad_source")
        broadcast = destination in (LIMITED_BROADCAST, iface.network.broadcast_address)
        if destination != iface.ip and not broadcast:
            raise _Ignored("ip_not_for_us")
        payload = packet[header_len:total]
        if proto == PROTO_ICMP:
            self._icmp_input(payload, source, broadcast, ttl)
        elif proto == PROTO_UDP:
            self._udp_input(payload, source, destination)
        else:
            raise _Ignored("ip_unknown_protocol")

    def _icmp_input(self, message: bytes, source: IPv4, broadcast: bool, ttl: int) -> None:
        if len(message) < _ICMP_ECHO.size:
            raise _Malformed("icmp_short")
        if internet_checksum(message) != 0:
            raise _Malformed("icmp_checksum")
        kind, code, _, ident, seq = _ICMP_ECHO.unpack_from(message)
        if kind == ICMP_ECHO_REQUEST and code == 0:
            if broadcast:
                raise _Ignored("icmp_broadcast_echo")
            try:
                self._send_ip(source, PROTO_ICMP, icmp_echo(ICMP_ECHO_REPLY, ident, seq, message[_ICMP_ECHO.size:]))
            except OSError:
                raise _Ignored("icmp_no_route") from None   # an off-link sender and no gateway
            self.stats["icmp_echo_replies_sent"] += 1
        elif kind == ICMP_ECHO_REPLY and code == 0:
            session = self._pings.get(ident)
            if session is None or session.target != source or not session._on_reply(seq, ttl):
                raise _Ignored("icmp_unmatched")
        else:
            raise _Ignored("icmp_other")

    def _udp_input(self, segment: bytes, source: IPv4, destination: IPv4) -> None:
        if len(segment) < _UDP.size:
            raise _Malformed("udp_short")
        sport, dport, length, checksum = _UDP.unpack_from(segment)
        if length < _UDP.size or length > len(segment):
            raise _Malformed("udp_length")
        segment = segment[:length]
        if checksum and internet_checksum(
                _PSEUDO.pack(source.packed, destination.packed, 0, PROTO_UDP, length) + segment) != 0:
            raise _Malformed("udp_checksum")
        if dport == 0:
            raise _Malformed("udp_port")
        sock = self._udp.get(dport)
        if sock is None:
            raise _Ignored("udp_no_socket")
        self.stats["udp_received"] += 1
        sock._deliver(segment[_UDP.size:], (str(source), sport))
