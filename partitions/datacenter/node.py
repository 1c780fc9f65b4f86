"""One host of a datacenter behind the window seam: a managed host with its inbox of messages to
deliver, its outbox of messages sent, and the handlers that receive messages by kind.

The datacenter reaches a host only through `advance(until)`, `accept(messages)`,
`take_outbox()`, `now`, `trace_digest()` and `summary()`: hosts share no object and interact
only through the messages exchanged at window ends. That is what lets a later version put each
host in its own process (or on a Ray actor) and keep the same protocol and the same digest.
"""
from __future__ import annotations

import heapq
from pathlib import Path
from typing import Any, Callable

from partitions.config_schema import Config
from partitions.datacenter.link import Message, transmission_ns
from partitions.datacenter.migration import MigrationService
from partitions.management import ManagedHost

Handler = Callable[[Message], None]


class HostNode:
    """Host `name`, built from its own `config` as a ManagedHost with `seed`; `neighbours` are the
    hosts a link joins it to (the only ones it can send to)."""

    def __init__(self, name: str, config: Config, *, seed: int, neighbours: set[str], workdir: Path | str,
                 event_log=None, record_scheduling: bool = False, pcap: Path | str | None = None,
                 storage=None) -> None:
        self.name = name
        self.log = event_log
        self.managed = ManagedHost(config, seed=seed, workdir=workdir, event_log=event_log,
                                   record_scheduling=record_scheduling, pcap=pcap, storage=storage)
        self.neighbours = frozenset(neighbours)
        self._handlers: dict[str, Handler] = {}
        # Messages accepted and not delivered yet, by (arrival, sender, sender's sequence): the
        # order of delivery is the same on every run, ties between senders broken by name.
        self._inbox: list[tuple[int, str, int, Message]] = []
        self._outbox: list[Message] = []
        self.sent = 0
        self.delivered = 0
        self.unhandled = 0
        #: peer -> (bandwidth in bit/s, latency in ns) of the link to it (set by the datacenter)
        self.links: dict[str, tuple[int, int]] = {}
        #: how `call` reaches a peer: (peer, kind, payload) -> the answer's bytes (set by the datacenter)
        self.caller: Callable[[str, str, bytes], bytes] | None = None
        self._answers: dict[str, Callable[[str, bytes], bytes]] = {}
        # Wake-ups of this host's own (`at`), by (time, order set); and, for each peer, when the
        # last message sent to it will have left the link: this host is the only sender in its
        # direction, so it knows what the link will do with its messages (Link.transmit, the
        # same rule in the same order).
        self._timers: list[tuple[int, int, Callable[[], None]]] = []
        self._timer_seq = 0
        self.link_free: dict[str, int] = {}
        # Migrations to and from this host: a protocol of messages handled like any other.
        self.migrations = MigrationService(self)

    @property
    def now(self) -> int:
        return self.managed.host.now

    @property
    def seed(self) -> int:
        return self.managed.seed

    # ---- what code on this host uses ------------------------------------------------------------
    def handle(self, kind: str, handler: Handler | None) -> None:
        """Deliver messages of `kind` to `handler(message)`, called at their arrival time on this
        host (None: stop). A message of a kind nobody handles is counted and logged, not lost
        silently."""
        if handler is None:
            self._handlers.pop(kind, None)
        else:
            self._handlers[kind] = handler

    def send(self, to: str, kind: str, payload: bytes = b"", *, size: int | None = None,
             at: int | None = None) -> Message:
        """Send a message to host `to` now: it leaves at the end of this window and arrives after
        the link's queue, its transmission and the link's latency. `size` (default: the payload's
        length) is what it occupies on the link; it may be larger than the payload, to stand for
        data not materialised (memory pages in bulk). `at` (default now, never earlier) is when the
        sender hands it to the link: a sender that queues messages of its own sends them later."""
        if to not in self.neighbours:
            raise LookupError(f"host {self.name!r} has no link to {to!r} (its links reach: "
                              f"{', '.join(sorted(self.neighbours)) or 'no host'})")
        if not isinstance(payload, (bytes, bytearray)):
            raise TypeError(f"a message's payload is bytes (it may cross to another process), not "
                            f"{type(payload).__name__}")
        size = len(payload) if size is None else size
        if not isinstance(size, int) or size < len(payload):
            raise ValueError(f"size: expected an integer of at least the payload's {len(payload)} bytes, got {size!r}")
        if at is not None and (not isinstance(at, int) or at < self.now):
            raise ValueError(f"at: expected a time no earlier than now ({self.now} ns), got {at!r}")
        message = Message(self.name, to, kind, bytes(payload), size, self.now if at is None else at, self.sent)
        if to in self.links:
            self.link_free[to] = max(message.sent_ns, self.link_free.get(to, 0)) + transmission_ns(size, self.links[to][0])
        self.sent += 1
        self._outbox.append(message)
        return message

    def answer(self, kind: str, fn: Callable[[str, bytes], bytes]) -> None:
        """Answer `call`s of `kind` from other hosts with fn(caller, payload) -> bytes."""
        self._answers[kind] = fn

    def call(self, to: str, kind: str, payload: bytes) -> bytes:
        """A synchronous exchange with host `to`, outside simulated time: its answer must not
        depend on when it is asked, nor change anything there (a frozen VM's memory, read for a
        post-copy fault). Everything else goes by `send`."""
        if to not in self.neighbours or self.caller is None:
            raise LookupError(f"host {self.name!r} cannot call {to!r}")
        return self.caller(to, kind, bytes(payload))

    def answered(self, src: str, kind: str, payload: bytes) -> bytes:
        """The answer to a call from host `src` (the other end of `call`)."""
        fn = self._answers.get(kind)
        if fn is None:
            raise LookupError(f"host {self.name!r} answers no call {kind!r}")
        return bytes(fn(src, payload))

    # ---- the window seam ------------------------------------------------------------------------
    def take_outbox(self) -> list[Message]:
        """The messages sent since the last call, in the order they were sent."""
        out, self._outbox = self._outbox, []
        return out

    def accept(self, messages: list[Message]) -> None:
        """Messages for this host, each to be delivered at its arrival time, which is never in
        this host's past (the window protocol's invariant, checked here on the receiving side)."""
        for m in messages:
            if m.dst != self.name or m.arrival_ns is None or m.arrival_ns < self.now:
                raise AssertionError(f"window protocol broken: message {m.kind!r} from {m.src!r} to {m.dst!r} "
                                     f"arriving at {m.arrival_ns} ns reached host {self.name!r} at {self.now} ns")
            heapq.heappush(self._inbox, (m.arrival_ns, m.src, m.seq, m))

    def advance(self, until: int) -> None:
        """Run this host alone to `until`, stopping at each message's arrival to deliver it there,
        and at each wake-up of its own (`at`; before a message arriving at the same time)."""
        inbox, timers = self._inbox, self._timers
        while True:
            if timers and timers[0][0] <= until and (not inbox or timers[0][0] <= inbox[0][0]):
                when, _, fn = heapq.heappop(timers)
                self.managed.run(when)
                fn()
            elif inbox and inbox[0][0] <= until:
                arrival, _, _, message = heapq.heappop(inbox)
                self.managed.run(arrival)
                self._deliver(message)
            else:
                break
        self.managed.run(until)

    def at(self, time: int, fn: Callable[[], None]) -> None:
        """Call fn() on this host when its time reaches `time` (no earlier than now): a wake-up of
        its own, such as a sender's when its message has left the link (`link_free`)."""
        if time < self.now:
            raise ValueError(f"host {self.name!r}: a wake-up at {time} ns is in its past ({self.now} ns)")
        heapq.heappush(self._timers, (time, self._timer_seq, fn))
        self._timer_seq += 1

    def _deliver(self, m: Message) -> None:
        handler = self._handlers.get(m.kind)
        self.delivered += 1
        if self.log is not None:
            self.log.event("link.message", src=m.src, kind=m.kind, size=m.size, sent_ns=m.sent_ns,
                           handled=handler is not None)
        if handler is None:
            self.unhandled += 1
            return
        handler(m)

    # ---- what it shows --------------------------------------------------------------------------
    def pending(self) -> int:
        """Messages accepted and not delivered yet."""
        return len(self._inbox)

    def trace_digest(self) -> bytes:
        return self.managed.host.trace_digest()

    def summary(self) -> dict[str, Any]:
        return {**self.managed.summary(),
                "messages": {"sent": self.sent, "delivered": self.delivered, "unhandled": self.unhandled,
                             "pending": self.pending()}}

    def close(self) -> None:
        self.managed.close()
