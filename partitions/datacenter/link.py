"""A network link between two hosts of a datacenter, and the messages it carries: each direction
sends one message at a time at the link's bandwidth (FIFO), and a message arrives the link's
latency after its last bit left.

    link = Link("a", "b", bandwidth=10 * 10**9, latency=50_000)
    arrival = link.transmit(message)     # sets message.start_ns and message.arrival_ns

A message sent at t arrives at t + queueing + size/bandwidth + latency, where queueing is the time
the messages sent before it in the same direction still hold the link. The link is full duplex:
the two directions do not queue behind each other.
"""
from __future__ import annotations

from dataclasses import dataclass, field

#: Nanoseconds in a second: bandwidths are bits per second, times are ns.
_NS = 1_000_000_000


def transmission_ns(size: int, bandwidth: int) -> int:
    """Time to put `size` bytes on a link of `bandwidth` bits per second, rounded up to the next
    nanosecond (a message is not there before its last bit is)."""
    return -(-size * 8 * _NS // bandwidth)


@dataclass
class Message:
    """One message from host `src` to host `dst`: `kind` picks the receiver's handler, `payload`
    is its data (bytes, so that it can cross to another process), `size` the bytes it occupies on
    the link (at least the payload; larger to stand for bulk data not materialised)."""
    src: str
    dst: str
    kind: str
    payload: bytes
    size: int
    sent_ns: int                     # the sender's time when it was sent
    seq: int                         # the sender's count of messages sent before it
    start_ns: int | None = None      # when its first bit went on the link (after the queue)
    arrival_ns: int | None = None    # when the receiver has it whole

    def record(self) -> tuple:
        """The message as plain data, for the datacenter's trace digest."""
        return (self.src, self.dst, self.kind, self.size, self.sent_ns, self.seq, self.start_ns, self.arrival_ns,
                self.payload)


@dataclass
class Direction:
    """Traffic one way on a link: messages and bytes sent, the time the link is busy until."""
    messages: int = 0
    bytes: int = 0
    busy_until: int = 0              # ns: the end of the last transmission
    busy_ns: int = 0                 # ns spent transmitting
    queued_ns: int = 0               # ns messages waited for the link, summed


@dataclass
class Link:
    """A full-duplex link between hosts `a` and `b` (`bandwidth` bits per second, `latency` ns)."""
    a: str
    b: str
    bandwidth: int
    latency: int
    traffic: dict[str, Direction] = field(default_factory=dict)   # sending host -> its direction

    def __post_init__(self) -> None:
        if self.a == self.b:
            raise ValueError(f"a link joins two different hosts, not {self.a!r} to itself")
        if self.bandwidth <= 0 or self.latency <= 0:
            raise ValueError(f"a link needs a positive bandwidth and latency, got {self.bandwidth} bit/s, "
                             f"{self.latency} ns")
        self.traffic = {self.a: Direction(), self.b: Direction()}

    @property
    def name(self) -> str:
        return f"{self.a}<->{self.b}"

    def joins(self, x: str, y: str) -> bool:
        return {x, y} == {self.a, self.b}

    def transmit(self, message: Message) -> int:
        """Put `message` on the link in its sender's direction, behind what that direction is
        still sending; returns (and sets) its arrival time. Messages of one direction must be
        given in the order they were sent."""
        way = self.traffic[message.src]
        if message.dst not in (self.a, self.b) or message.dst == message.src:
            raise ValueError(f"message from {message.src!r} to {message.dst!r} does not travel on link {self.name}")
        start = max(message.sent_ns, way.busy_until)
        busy = transmission_ns(message.size, self.bandwidth)
        way.busy_until = start + busy
        way.messages += 1
        way.bytes += message.size
        way.busy_ns += busy
        way.queued_ns += start - message.sent_ns
        message.start_ns = start
        message.arrival_ns = start + busy + self.latency
        return message.arrival_ns

    def summary(self, elapsed_ns: int) -> dict:
        """Traffic each way: messages, bytes, utilisation (share of `elapsed_ns` spent sending)."""
        return {"hosts": [self.a, self.b], "bandwidth_bps": self.bandwidth, "latency_ns": self.latency,
                "directions": [{"from": src, "to": self.b if src == self.a else self.a, "messages": d.messages,
                                "bytes": d.bytes, "queued_ns": d.queued_ns,
                                "utilisation": round(min(1.0, d.busy_ns / elapsed_ns), 6) if elapsed_ns else 0.0}
                               for src, d in self.traffic.items()]}
