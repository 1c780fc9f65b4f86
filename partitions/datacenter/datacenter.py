"""A datacenter: hosts advancing in one simulated time, joined by links, run by a conservative
window protocol (see docs/datacenter.md).

    dc = Datacenter(load("two-hosts.toml"), seed=7, workdir="run")
    dc.hosts["b"].handle("ping", lambda m: print("ping at", dc.hosts["b"].now))
    dc.hosts["a"].send("b", "ping", b"hello")
    dc.run("1s")
    dc.trace_digest()

The run loop advances time in windows no longer than the smallest link latency. Within a window
each host runs alone (in name order) to the window's end, stopping only to deliver the messages
that arrive inside it; then the messages sent during the window go onto their links. A message
sent at t arrives no earlier than t + latency >= the window's end, where every host stands at
that moment: it always lands in its receiver's future, so no host ever has to be rolled back,
and the outcome depends neither on the order hosts run in nor on whether they run in one process.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Callable

from hypervisor.quantities import parse_duration
from partitions.config_schema import MIGRATION_ACTIONS, DatacenterConfig
from partitions.datacenter.link import Link, Message
from partitions.datacenter.migration import MigrationError, MigrationRecord, StopRules
from partitions.datacenter.node import HostNode
from partitions.datacenter.storage import HostStorage, Storage
from partitions.datacenter.remote import RemoteHostNode
from partitions.datacenter.wire import WireError

#: The longest window, whatever the links: the run reports progress (and hears Ctrl-C) at least
#: this often, as a single host does.
MAX_WINDOW_NS = 100_000_000


def host_seed(datacenter_seed: int, host: str) -> int:
    """A host's seed derived from the datacenter's: the first 8 bytes (little-endian) of the
    SHA-256 of the datacenter seed in decimal, a NUL byte and the host's name in UTF-8. Two hosts
    of one datacenter get unrelated seeds; the same names and seed give the same ones anywhere."""
    digest = hashlib.sha256(f"{datacenter_seed}\0{host}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


class Datacenter:
    """The hosts of `config`, each a ManagedHost built from its own configuration, and its links.

    The datacenter's seed is `seed` when given (`hvsim run --seed`), else the file's
    `[datacenter] seed`, else 0. A host's seed is its table's `seed` when it sets one and `seed`
    is not given here (the command line wins over the file, as for one host); otherwise
    host_seed(datacenter seed, host name). `event_log` gets every host's events, each with its
    `host` field; the log's clock should read `Datacenter.clock`. `pcap` captures each host's
    switches to PCAP.HOST (PCAP.HOST.SWITCH for a host with several)."""

    def __init__(self, config: DatacenterConfig, *, seed: int | None = None, workdir: Path | str = ".",
                 event_log=None, record_scheduling: bool = False, pcap: Path | str | None = None) -> None:
        self.config = config
        self.seed = seed if seed is not None else config.seed if config.seed is not None else 0
        self.links = [Link(c.hosts[0], c.hosts[1], c.bandwidth, c.latency) for c in config.links]
        self.window_ns = min([MAX_WINDOW_NS] + [link.latency for link in self.links])
        self.now = 0            # the end of the last window: where every host stands between windows
        self.windows = 0
        self._focus: HostNode | None = None   # the host running now (its clock is the log's)
        self.stopped_in: str | None = None    # the host that was running when a run raised
        self._traffic = hashlib.blake2b(digest_size=16)   # every message, as its link carried it
        self.hosts: dict[str, HostNode] = {}
        self.log = event_log
        # Shared storages ([[storage]]): each host reaches them over links of its own, which are
        # not host links (nothing crosses them from host to host) and so do not shorten windows.
        self.storage = {c.name: Storage(c, clock=self.clock, event_log=event_log, in_use=self._holds_disks)
                        for c in config.storage}
        self._posted: list[Message] = []   # cluster messages of this window that travel on no link (post)
        self.quick_migrations: list = []   # partitions.datacenter.quick.QuickMigration, in the order started
        built: list[HostNode] = []
        try:
            for h in sorted(config.hosts, key=lambda h: h.name):
                pinned = h.config.host.seed
                neighbours = {end for link in self.links if h.name in (link.a, link.b)
                              for end in (link.a, link.b) if end != h.name}
                own_seed = pinned if pinned is not None and seed is None else host_seed(self.seed, h.name)
                if h.remote is not None:   # served by `hvsim host serve`, which gets its config at hello
                    links = {link.b if link.a == h.name else link.a: (link.bandwidth, link.latency)
                             for link in self.links if h.name in (link.a, link.b)}
                    node = RemoteHostNode(h.name, h.config, address=h.remote, seed=own_seed, neighbours=neighbours,
                                          links=links, base_dir=config.path.parent if config.path else None,
                                          **({} if h.remote_timeout is None else {"timeout": h.remote_timeout / 1e9}))
                    node.caller = lambda to, kind, payload, src=h.name: self.hosts[to].answered(src, kind, payload)
                    built.append(node)
                    self.hosts[h.name] = node
                    continue
                node = HostNode(h.name, h.config, seed=own_seed, neighbours=neighbours, workdir=workdir,
                                storage=HostStorage(h.name, self.storage) if self.storage else None,
                                event_log=event_log.bind(host=h.name) if event_log is not None else None,
                                record_scheduling=record_scheduling,
                                pcap=f"{pcap}.{h.name}" if pcap is not None and h.config.switches else None)
                built.append(node)
                self.hosts[h.name] = node
        except BaseException:
            for node in built:   # a host that cannot be built: the ones made before it let go of their files
                node.close()
            raise
        # The timeline's moves are the datacenter's (a host's own timeline has the rest): each is
        # carried out between windows, where every host stands at its time.
        self._moves = sorted((at for at in config.timeline if at.action in MIGRATION_ACTIONS), key=lambda a: a.time)
        self._next_move = 0
        for node in self._local():
            for link in self.links:
                if node.name in (link.a, link.b):
                    node.links[link.b if node.name == link.a else link.a] = (link.bandwidth, link.latency)
            node.caller = lambda to, kind, payload, src=node.name: self.hosts[to].answered(src, kind, payload)
            node.migrations.on_arrived = self._adopt
            node.migrations.rules = config.migration
            for vm in node.managed.vms.values():
                self._adopt(vm)

    def clock(self) -> int:
        """The simulated time an event happens at: the running host's inside a window, the
        datacenter's between windows."""
        return self._focus.now if self._focus is not None else self.now

    # ---- messages ---------------------------------------------------------------------------------
    def send(self, src: str, dst: str, kind: str, payload: bytes = b"", *, size: int | None = None) -> Message:
        """Send a message from host `src` to host `dst` over the link joining them (HostNode.send)."""
        return self.hosts[src].send(dst, kind, payload, size=size)

    def post(self, message: Message) -> None:
        """Hand `message` to its receiver at `message.arrival_ns`, which its sender set, without a
        host link: the cluster's own hand-offs through shared storage (a quick migration's
        restore, partitions/datacenter/quick.py). Posted between windows, it is handed over at
        once (every host stands at the datacenter's time); posted inside one, at the window's end
        like any message, and an arrival before that end is moved to it, so that the outcome
        does not depend on the order hosts run in. It goes into the trace digest as a link's
        message does."""
        if message.arrival_ns is None or message.arrival_ns < message.sent_ns:
            raise ValueError(f"a posted message needs its arrival, no earlier than it was sent: {message!r}")
        if self._focus is None:
            message.arrival_ns = max(message.arrival_ns, self.now)
            self._traffic.update(repr(message.record()).encode())
            self.hosts[message.dst].accept([message])
        else:
            self._posted.append(message)

    def _holds_disks(self, host: str, vm: str) -> bool:
        """Whether VM `vm` still has its partition (and so its disks open) on `host`."""
        node = self.hosts.get(host)
        managed = getattr(node, "managed", None)
        found = managed.vms.get(vm) if managed is not None else None
        return found is not None and found.partition is not None

    def link(self, x: str, y: str) -> Link:
        """The link joining hosts x and y."""
        for link in self.links:
            if link.joins(x, y):
                return link
        raise LookupError(f"no link joins host {x!r} and host {y!r}")

    def _exchange(self) -> None:
        """The window's end: every message sent in it goes onto its link, in the order each host
        sent them (one host sends each direction, so each link direction is FIFO), and to its
        receiver, which stands at the window's end, no later than the message's arrival."""
        incoming: dict[str, list[Message]] = {}
        for node in self.hosts.values():
            for m in node.take_outbox():
                self.link(m.src, m.dst).transmit(m)
                # The payload goes in as bytes, not through repr: a migration's are megabytes.
                self._traffic.update(repr(m.record()[:-1]).encode())
                self._traffic.update(len(m.payload).to_bytes(8, "little") + m.payload)
                incoming.setdefault(m.dst, []).append(m)
        posted, self._posted = self._posted, []
        for m in posted:
            m.arrival_ns = max(m.arrival_ns, self.now)
            self._traffic.update(repr(m.record()).encode())
            incoming.setdefault(m.dst, []).append(m)
        for dst, messages in incoming.items():
            self.hosts[dst].accept(messages)   # raises if a message would land in dst's past

    # ---- moving VMs ---------------------------------------------------------------------------------
    def _adopt(self, vm) -> None:
        """`vm` (on some host of this datacenter) can be moved by vm.move(to=..., kind=...)."""
        vm.mover = lambda to, kind, vm=vm: self.move(vm.name, to=to, kind=kind)

    def _adopt_arrivals(self) -> None:
        for node in self._local():
            for vm in node.managed.vms.values():
                if getattr(vm, "mover", None) is None:
                    self._adopt(vm)

    def _local(self) -> list[HostNode]:
        """The hosts this process runs (a remote host's VMs and migrations are its server's)."""
        return [node for node in self.hosts.values() if hasattr(node, "migrations")]

    def where(self, vm: str) -> HostNode:
        """The host VM `vm` runs on (the source, while a migration has not handed it over)."""
        for node in self._local():
            found = node.managed.vms.get(vm)
            if found is not None and found.state.value != "Migrating":
                return node
        for node in self._local():
            if vm in node.managed.vms:
                return node
        raise LookupError(f"no VM named {vm!r} on any host of this datacenter run here")

    def move(self, vm: str, *, to: str, kind: str = "live", rules: StopRules | None = None) -> MigrationRecord:
        """Start moving VM `vm` to host `to`, live ("live": pre-copy, the default; "post-copy")
        or by quick migration ("quick"); the run carries it out. Returns the migration's record
        (partitions.datacenter.migration), which fills in as the run goes. A move that cannot
        start (no such host, no link, a VM that is not running) raises MigrationError. `rules`:
        when pre-copy stops (default StopRules(): Xen's 50 pages, 30 rounds, 3x the memory)."""
        if to not in self.hosts:
            raise MigrationError(f"move of vm {vm!r}: no host named {to!r} (hosts: {', '.join(self.hosts)})")
        node = self.where(vm)
        if kind == "quick":
            return self._quick_move(node, vm, to)
        return node.migrations.move(node.managed.vms[vm], to, kind, rules=rules)

    def _quick_move(self, node: HostNode, vm: str, to: str):
        """Hyper-V 2008's quick migration through shared storage (partitions/datacenter/quick.py);
        its record is a QuickMigration, in `quick_migrations` and the summary."""
        from partitions.datacenter.quick import QuickMigrationError, quick_move
        try:
            return quick_move(self, node.managed.vms[vm], to)
        except QuickMigrationError as exc:
            raise MigrationError(str(exc)) from exc

    def _timeline_moves(self) -> None:
        """The timeline's moves due now. One that cannot start is logged and the run goes on:
        a migration never raises into the run loop."""
        while self._next_move < len(self._moves) and self._moves[self._next_move].time <= self.now:
            at = self._moves[self._next_move]
            self._next_move += 1
            kind = "quick" if at.action == "quick-move" else at.kind or "live"
            try:
                self.move(at.vm, to=at.to, kind=kind)
            except (MigrationError, LookupError) as exc:
                node = next((n for n in self._local() if at.vm in n.managed.vms), None)
                if node is not None and node.log is not None:
                    node.log.event("migration.refused", vm=at.vm, to=at.to, kind=kind, error=str(exc))

    def migrations(self) -> list[MigrationRecord]:
        """Every migration started, in the order they started."""
        records = [r for node in self._local() for r in node.migrations.records]
        return sorted(records, key=lambda r: r.started_ns)

    # ---- running ------------------------------------------------------------------------------------
    def run(self, until: int | str, *, on_progress: Callable[[Datacenter], None] | None = None) -> None:
        """Run every host to `until` in windows of `window_ns`, cut short where a move of the
        timeline is due; `on_progress` after each window."""
        end = parse_duration(until, "until")
        while self.now < end:
            self._timeline_moves()
            window_end = min(end, self.now + self.window_ns)
            if self._next_move < len(self._moves):
                window_end = min(window_end, max(self.now + 1, self._moves[self._next_move].time))
            for node in self.hosts.values():   # name order
                self._focus = node
                try:
                    node.advance(window_end)
                except BaseException as exc:
                    self.stopped_in = node.name
                    if isinstance(exc, WireError):
                        self._host_lost(node.name, str(exc))
                    raise
                finally:
                    self._focus = None
            self.now = window_end
            self.windows += 1
            self._exchange()
            if self.quick_migrations:   # a VM a quick migration restored can move again (vm.move)
                self._adopt_arrivals()
            if on_progress is not None:
                on_progress(self)

    def _host_lost(self, name: str, reason: str) -> None:
        """Host `name`, served in another process, is lost (its connection broke; the run stops
        with the WireError). The migrations between it and the hosts run here abort now, so that
        each VM they were moving runs on where it was, as after a target's failure; the lost host
        stands still from then on and drops what is sent to it (RemoteHostNode), so a run can go
        on without it."""
        why = f"host {name!r} was lost: {reason}"
        for node in self._local():
            service = node.migrations
            for source in [s for s in service.outgoing.values() if s.record.target == name]:
                source.abort(why, tell=False)
            for target in [t for t in service.incoming.values() if t.source == name]:
                target._torn_down(why)

    # ---- what it shows ----------------------------------------------------------------------------
    def trace_digest(self) -> bytes:
        """A digest of the whole datacenter: each host's name, seed and trace digest (in name
        order), then every message its links carried. The same configuration and seed give the
        same digest. N.B. the seeds go in themselves: a host's own digest covers its events and
        scheduling, which today's built-in workloads make the same whatever the seed (it picks
        only disk-io's offsets), and two runs with different seeds are different runs."""
        d = hashlib.blake2b(digest_size=16)
        for name, node in self.hosts.items():
            d.update(name.encode() + b"\0" + node.seed.to_bytes(8, "little") + node.trace_digest())
        d.update(self._traffic.digest())
        return d.digest()

    def summary(self) -> dict[str, Any]:
        return {"simulated_ns": self.now, "seed": self.seed, "window_ns": self.window_ns, "windows": self.windows,
                "hosts": {name: node.summary() for name, node in self.hosts.items()},
                "links": [link.summary(self.now) for link in self.links],
                **({"storage": [s.summary(self.now) for s in self.storage.values()]} if self.storage else {}),
                **({"quick_migrations": [m.record() for m in self.quick_migrations]} if self.quick_migrations else {}),
                "migrations": [r.summary() for r in self.migrations()],
                "trace_digest": self.trace_digest().hex()}

    def close(self) -> None:
        """Every host is done (ManagedHost.close): take the summary first."""
        for node in self.hosts.values():
            node.close()
