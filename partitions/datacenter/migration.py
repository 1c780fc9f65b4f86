"""Live migration of a running VM between two hosts of a datacenter, pre-copy and post-copy, as a
versioned protocol of link messages between the two hosts (docs/migration.md).

    record = dc.move("cache", to="host-b", kind="live")     # or kind="post-copy"
    dc.run("3s")
    record.summary()   # kind, rounds, pages per round, bytes, downtime, total time, outcome

Each host has a MigrationService (HostNode.migrations): the source's side drives a migration, the
target's side builds the VM, writes what arrives and resumes it. The two halves share no object:
every payload is a msgpack map of plain data, so the same bytes can go over TCP between processes,
and the source's memory is reachable from the target only through messages (post-copy's page
fetches included).

Invariants:
- Nothing here lets an exception reach the run loop: a failure before the target resumed aborts
  the migration (the source VM is thawed and runs on unchanged, the target's half-built VM is torn
  down), and is logged with the VM's name.
- A round is over when its last message has left the link (the source is the only sender in its
  direction, so it knows when: HostNode.link_free), and pre-copy reads the dirty log then; acks
  only keep at most a window of page messages in flight (the link's bandwidth-delay product, at
  least WINDOW), so the source never holds a round in memory.
- Pre-copy reads a page's bytes when its message is sent, after the round's read of the dirty log:
  a store after that read is caught by the next read, so the blackout's last read misses nothing.
- A message's size on the link is its payload's length: the bytes a real stream of this protocol
  carries. Zero pages travel as runs of page numbers, not as 4 KiB of zeros.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable

import msgpack

from hypervisor.abi import PAGE_SIZE
from partitions.config_schema import StopRules  # noqa: F401 (re-exported: migration's rules)
from partitions.datacenter.link import transmission_ns

#: The protocol's version: a message of another version is refused (the migration aborts).
PROTOCOL_VERSION = 2
#: Every message kind of the protocol is this prefix and its op.
KIND = "migration."
SOURCE_OPS = ("begin", "pages", "state", "page", "abort")            # source -> target
TARGET_OPS = ("ready", "failed", "ack", "resumed", "fetch", "done", "reconnected")   # target -> source
#: The one synchronous exchange (HostNode.call): a post-copy target reads a page of the frozen
#: source. Its answer cannot depend on when it is asked (nothing changes a frozen VM's memory).
READ = "read"
KINDS = ("live", "post-copy")

#: Pages per "pages" message (1 MiB of data at most): small enough that the link interleaves
#: other traffic, large enough that a round of a 4 GiB VM is a few thousand messages.
CHUNK_PAGES = 256
#: "pages" messages in flight before the source waits for an ack, at least: enough to keep a
#: 10 Gbit/s link with 50 us latency busy (its bandwidth-delay product is ~125 KB), few enough that
#: the source holds little in its outbox. A link with a larger bandwidth-delay product gets a
#: larger window (window()), or the push of a 2 ms link would send a few messages per round trip.
WINDOW = 4
#: Post-copy's background push sends smaller messages, so that a demand fetch's page (FIFO behind
#: them on the link) waits little: a window of 32-page messages (~105 us at 10 Gbit/s for 4).
PUSH_CHUNK_PAGES = 32

#: Pages one message names at most, zero pages included (a zero page costs its page number).
MAX_MESSAGE_PAGES = 16 * CHUNK_PAGES

_ZERO_PAGE = bytes(PAGE_SIZE)


@dataclass(frozen=True)
class BlackoutCosts:
    """What the two parents spend in a blackout besides the link, in simulated ns (defaults from
    /work/shared/reference/cost-model.md, docs/migration.md): downtime runs from the freeze to the
    target's VM running, these included.

    Source: each VP exits to the parent to stop (`stop_vp_ns`, the cost model's exit to the
    parent), its registers are read (`vp_state_ns`, a get-registers hypercall), each device's
    record is saved (`device_ns`, one SynIC message's worth of work), and each page sent in the
    blackout is read at the memory copy rate. Target: each page written at that rate, each VP's
    registers set and each device record loaded at the same costs, and each VP started
    (`resume_vp_ns`, an exit to the parent). The guest's VMBus reconnect is not here: it runs
    after the resume in the guest's own simulated time, and the summary reports it apart."""
    stop_vp_ns: int = 4_000
    vp_state_ns: int = 1_000
    device_ns: int = 1_000
    copy_bytes_per_s: int = 15 * 10**9    # memcpy, one core, from DRAM
    resume_vp_ns: int = 4_000

    def pages_ns(self, pages: int) -> int:
        """Copying `pages` pages at the memory copy rate (rounded up)."""
        return -(-pages * PAGE_SIZE * 10**9 // self.copy_bytes_per_s)

    def stop_ns(self, vps: int, devices: int) -> int:
        """The source's work from the freeze to its VM's state in hand."""
        return vps * (self.stop_vp_ns + self.vp_state_ns) + devices * self.device_ns

    def start_ns(self, vps: int, devices: int) -> int:
        """The target's work from the state in hand to its VM running."""
        return vps * (self.vp_state_ns + self.resume_vp_ns) + devices * self.device_ns


#: How often the target looks whether its guest's devices are all open again after a resume: every
#: RECONNECT_POLL_NS at first, then every 1/64 of the time since the resume (the reconnect time it
#: reports is late by at most that: 5 us, or 1.6 %), and for RECONNECT_LIMIT_NS at most. A guest
#: that never opens a device costs a few hundred wake-ups, not one every 5 us.
RECONNECT_POLL_NS = 5_000
RECONNECT_LIMIT_NS = 5_000_000_000


def window(bandwidth: int, latency: int, pages: int) -> int:
    """Messages of `pages` pages in flight that keep a link of `bandwidth` bit/s and `latency` ns
    sending until the first one's ack is back (a round trip and the message itself): the
    bandwidth-delay product in messages, plus one, and never fewer than WINDOW."""
    bdp = bandwidth * 2 * latency // (8 * 10**9)     # bytes on the link in a round trip
    return max(WINDOW, -(-bdp // (pages * PAGE_SIZE)) + 1)
_ZERO_CHUNK = bytes(CHUNK_PAGES * PAGE_SIZE)


class MigrationError(RuntimeError):
    """A migration that cannot start or goes wrong (the message names the VM)."""


class ProtocolError(MigrationError):
    """A message that is not of this protocol: wrong version, unknown op, missing fields."""


# ---- the wire ---------------------------------------------------------------------------------------
def encode(op: str, mid: str, **fields: Any) -> bytes:
    """One message's payload: {"v": version, "op": op, "id": migration id, ...fields}."""
    return msgpack.packb({"v": PROTOCOL_VERSION, "op": op, "id": mid, **fields}, use_bin_type=True)


#: The fields each op must carry, with their types (bool is not an int here).
_FIELDS: dict[str, dict[str, tuple]] = {
    "begin": {"vm": (str,), "kind": (str,), "pages": (int,), "memory_bytes": (int,), "config": (dict,)},
    "ready": {}, "failed": {"reason": (str,)}, "abort": {"reason": (str,)},
    "pages": {"round": (int,), "seq": (int,), "zero": (list,), "gpas": (list,), "data": (bytes,)},
    "ack": {"seq": (int,)},
    "state": {"image": (dict,), "freeze_ns": (int,)},
    "resumed": {"resume_ns": (int,), "start_ns": (int,)},
    "reconnected": {"devices_ns": (int,)},
    "fetch": {"gpa": (int,)}, "page": {"gpa": (int,), "data": (bytes,)}, "read": {"gpa": (int,)},
    "done": {"fetches": (int,), "stall_ns": (int,), "late_ns": (int,)},
}


def decode(payload: bytes, op: str | None = None) -> dict:
    """A message's payload as a map, checked: this protocol's version, a known op (`op` if given),
    an id, and the op's fields with their types. Anything else is a ProtocolError."""
    try:
        m = msgpack.unpackb(payload, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several types for truncated or corrupt input
        raise ProtocolError(f"not a migration message ({type(exc).__name__}: {exc})") from None
    if not isinstance(m, dict) or m.get("v") != PROTOCOL_VERSION:
        got = m.get("v") if isinstance(m, dict) else type(m).__name__
        raise ProtocolError(f"expected a migration message of protocol version {PROTOCOL_VERSION}, got version {got!r}")
    if m.get("op") not in _FIELDS or (op is not None and m["op"] != op) or not isinstance(m.get("id"), str):
        raise ProtocolError(f"expected op {op or 'of the protocol'!r} with an id, got op {m.get('op')!r}")
    for name, types in _FIELDS[m["op"]].items():
        value = m.get(name)
        if not isinstance(value, types) or isinstance(value, bool):
            raise ProtocolError(f"{m['op']} message: field {name!r} missing or not {types[0].__name__}")
    if m["op"] == "pages":
        _check_pages(m)
    return m


def _check_pages(m: dict) -> None:
    ok = all(isinstance(r, list) and len(r) == 2 and all(_is_count(x) for x in r) for r in m["zero"])
    if not ok or not all(_is_count(g) for g in m["gpas"]) or len(m["data"]) != len(m["gpas"]) * PAGE_SIZE:
        raise ProtocolError("pages message: expected zero runs [first, count], page numbers, and 4 KiB of data "
                            "for each page number")


def _is_count(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def runs(pages: list[int]) -> list[tuple[int, int]]:
    """Sorted page numbers as (first, count) runs of consecutive pages."""
    if not pages:
        return []
    # The runs start where a page does not follow the one before it: one comparison per page in
    # a comprehension, not a tuple per page (a 4 GiB VM has a million pages).
    starts = [0] + [i for i, (a, b) in enumerate(zip(pages, pages[1:]), 1) if b != a + 1] + [len(pages)]
    return [(pages[i], j - i) for i, j in zip(starts, starts[1:])]


def read_pages(vm, gpas: list[int]) -> bytes:
    """The 4 KiB of each GPA page of `gpas` of `vm`'s partition, back to back: the parent's bulk
    read (one crossing into the core)."""
    return vm.host.root.read_pages(vm.partition, gpas) if gpas else b""


def split_zero(gpas: list[int], data: bytes) -> tuple[list[list[int]], list[int], bytes]:
    """(runs of zero pages, the other pages, their data) of pages `gpas` holding `data`."""
    if len(data) == len(_ZERO_CHUNK) and data == _ZERO_CHUNK:   # most chunks of a big, idle VM
        return [list(r) for r in runs(gpas)], [], b""
    zero, full, parts = [], [], []
    for i, gpa in enumerate(gpas):
        page = data[i * PAGE_SIZE:(i + 1) * PAGE_SIZE]
        if page == _ZERO_PAGE:
            zero.append(gpa)
        else:
            full.append(gpa)
            parts.append(page)
    return [list(r) for r in runs(zero)], full, b"".join(parts)


# ---- what a migration reports ------------------------------------------------------------------------
@dataclass
class Round:
    """One round of pages: pre-copy's rounds (0 is the whole memory), the blackout's last pages,
    post-copy's background push. `end_ns` is when its last message has left the link (the
    source's HostNode.link_free): pre-copy reads the dirty log then."""
    number: int
    start_ns: int
    pages: int = 0
    zero_pages: int = 0
    bytes: int = 0
    messages: int = 0
    end_ns: int | None = None
    blackout: bool = False


@dataclass
class MigrationRecord:
    """One migration as the source sees it; `summary()` is its plain-data report."""
    id: str
    vm: str
    kind: str
    source: str
    target: str
    started_ns: int
    outcome: str = "running"          # running | completed | aborted
    reason: str | None = None         # why it aborted, or which stop rule ended pre-copy
    rounds: list[Round] = field(default_factory=list)
    freeze_ns: int | None = None
    resume_ns: int | None = None
    ended_ns: int | None = None
    bytes: int = 0                    # every message of the migration, both ways
    messages: int = 0
    fetches: int = 0                  # post-copy: pages pulled on demand
    fetch_wait_ns: int = 0            # post-copy: time the target's VPs waited for them, summed
    fetch_late_ns: int = 0            # post-copy: how much later than charged their pages arrived, summed
    stop_rule: str | None = None
    stop_ns: int = 0                  # the source's work in the blackout (BlackoutCosts.stop_ns, page reads)
    start_ns: int = 0                 # the target's: page writes not done when the state came, state, start
    devices_ns: int | None = None     # when the guest's devices were all open again on the target

    @property
    def reconnect_ns(self) -> int | None:
        """From the VM running on the target to its guest's devices all open again."""
        return None if self.devices_ns is None or self.resume_ns is None else self.devices_ns - self.resume_ns

    @property
    def downtime_ns(self) -> int | None:
        return None if self.freeze_ns is None or self.resume_ns is None else self.resume_ns - self.freeze_ns

    @property
    def total_ns(self) -> int | None:
        return None if self.ended_ns is None else self.ended_ns - self.started_ns

    def summary(self) -> dict[str, Any]:
        precopy = [r for r in self.rounds if not r.blackout]
        return {"id": self.id, "vm": self.vm, "kind": self.kind, "from": self.source, "to": self.target,
                "outcome": self.outcome, "reason": self.reason, "stop_rule": self.stop_rule,
                "rounds": len(precopy) if self.kind == "live" else 0,
                "pages_per_round": [r.pages for r in self.rounds],
                "rounds_detail": [dataclasses.asdict(r) for r in self.rounds],
                "bytes": self.bytes, "messages": self.messages,
                "pages_sent": sum(r.pages for r in self.rounds),
                "started_ns": self.started_ns, "freeze_ns": self.freeze_ns, "resume_ns": self.resume_ns,
                "downtime_ns": self.downtime_ns, "total_ns": self.total_ns,
                "blackout_stop_ns": self.stop_ns, "blackout_start_ns": self.start_ns,
                "devices_back_ns": self.devices_ns, "reconnect_ns": self.reconnect_ns,
                "devices_away_ns": None if self.devices_ns is None or self.freeze_ns is None
                else self.devices_ns - self.freeze_ns,
                "fetches": self.fetches, "fetch_wait_ns": self.fetch_wait_ns, "fetch_late_ns": self.fetch_late_ns}

    def slices(self) -> list[tuple[int, int, str, dict, str]]:
        """(start, end, name, args, track) for the source host's trace (partitions.perfetto.Slice):
        each round of pages on one track, the blackout on another (post-copy's push goes on
        after it ends)."""
        rounds = f"{self.vm}: migration to {self.target}"
        out = [(r.start_ns, r.end_ns,
                "blackout pages" if r.blackout else "push" if self.kind == "post-copy" else f"round {r.number}",
                {"pages": r.pages, "zero_pages": r.zero_pages, "bytes": r.bytes}, rounds)
               for r in self.rounds if r.end_ns is not None]
        if self.freeze_ns is not None and self.resume_ns is not None:
            out.append((self.freeze_ns, self.resume_ns, "blackout", {"downtime_ns": self.downtime_ns},
                        f"{self.vm}: blackout"))
        return out


# ---- one host's side --------------------------------------------------------------------------------
class MigrationService:
    """The migrations of one host (`node`, a HostNode): those it sends (`outgoing`, by id) and
    receives (`incoming`, by id). `records` keeps every migration this host started, in order;
    `on_moved(vm, target)` is called when a VM has arrived on this host (the datacenter gives it
    its `move`)."""

    def __init__(self, node, *, rules: StopRules = StopRules(), costs: BlackoutCosts = BlackoutCosts()) -> None:
        self.node = node
        self.rules = rules
        self.costs = costs
        self.outgoing: dict[str, _Source] = {}
        self.incoming: dict[str, _Target] = {}
        self.records: list[MigrationRecord] = []
        self.on_arrived: Callable[[Any], None] | None = None
        self._count = 0
        for op in SOURCE_OPS:
            node.handle(KIND + op, self._to_target)
        for op in TARGET_OPS:
            node.handle(KIND + op, self._to_source)
        node.answer(KIND + READ, self._read)

    def log(self, name: str, **fields: Any) -> None:
        if self.node.log is not None:
            self.node.log.event(name, **fields)

    def move(self, vm, to: str, kind: str = "live", *, rules: StopRules | None = None) -> MigrationRecord:
        """Start moving `vm` (a VirtualMachine of this host) to host `to`; returns its record,
        which the run fills in. What cannot even start (a kind that does not exist, a host with no
        link) raises MigrationError here and changes nothing."""
        if kind not in KINDS:
            raise MigrationError(f"move of vm {vm.name!r}: kind expected one of {', '.join(KINDS)}, got {kind!r}")
        if to not in self.node.neighbours:
            raise MigrationError(f"move of vm {vm.name!r}: host {self.node.name!r} has no link to {to!r}")
        if any(s.vm is vm for s in self.outgoing.values()):
            raise MigrationError(f"move of vm {vm.name!r}: it is already moving")
        if vm.state.value not in ("Running", "Paused"):
            raise MigrationError(f"move of vm {vm.name!r}: it is {vm.state.value}; only a Running or Paused VM moves")
        self._count += 1
        mid = f"{self.node.name}/{self._count}"
        record = MigrationRecord(mid, vm.name, kind, self.node.name, to, self.node.now)
        self.records.append(record)
        source = _Source(self, record, vm, rules or self.rules)
        self.outgoing[mid] = source
        source.start()
        return record

    # Messages are decoded before anything is done with them; one that is not of the protocol,
    # or of no migration this host knows, is logged and dropped (a stale message of an aborted
    # migration is the ordinary case).
    def _to_target(self, message) -> None:
        try:
            m = decode(message.payload, message.kind[len(KIND):])
        except ProtocolError as exc:
            return self._bad(message, exc)
        if m["op"] == "begin":
            if m["id"] in self.incoming:
                return self._bad(message, ProtocolError(f"migration {m['id']} began twice"))
            self.incoming[m["id"]] = _Target(self, message.src, m)
            self.incoming[m["id"]].begin(m)
            return
        target = self.incoming.get(m["id"])
        if target is None or target.source != message.src:
            return self._bad(message, ProtocolError(f"no migration {m['id']} from {message.src!r} here"))
        target.receive(m, message)

    def _to_source(self, message) -> None:
        try:
            m = decode(message.payload, message.kind[len(KIND):])
        except ProtocolError as exc:
            return self._bad(message, exc)
        if m["op"] == "reconnected":
            # It comes after the resume, when a live migration has ended here: its record takes it.
            record = next((r for r in self.records if r.id == m["id"] and r.target == message.src), None)
            if record is None or record.resume_ns is None or m["devices_ns"] < record.resume_ns:
                return self._bad(message, ProtocolError(f"no resumed migration {m['id']} to {message.src!r} here"))
            record.devices_ns = m["devices_ns"]
            record.bytes += message.size
            record.messages += 1
            return
        source = self.outgoing.get(m["id"])
        if source is None or source.record.target != message.src:
            return self._bad(message, ProtocolError(f"no migration {m['id']} to {message.src!r} here"))
        source.receive(m, message)

    def _read(self, src: str, payload: bytes) -> bytes:
        """A post-copy target's synchronous read of a frozen source page (HostNode.call)."""
        m = decode(payload, READ)
        source = self.outgoing.get(m["id"])
        if source is None or source.record.target != src:
            raise ProtocolError(f"no migration {m['id']} to {src!r} here")
        return encode("page", m["id"], gpa=m["gpa"], data=source.serve(m["gpa"]))

    def _bad(self, message, exc: Exception) -> None:
        self.log("migration.message_dropped", src=message.src, kind=message.kind, error=str(exc))


class _Source:
    """The source's half: drives the rounds, the blackout and the post-copy push."""

    def __init__(self, service: MigrationService, record: MigrationRecord, vm, rules: StopRules) -> None:
        self.service, self.record, self.vm, self.rules = service, record, vm, rules
        self.node = service.node
        self.to = record.target
        self.dirty = None             # the VM's dirty log (pre-copy)
        self.pages: list[int] = []    # the VM's RAM, GPA pages in order
        self.page_runs: list[tuple[int, int]] = []   # the same as runs
        self.queue: list[int] = []    # pages of the current round (sorted); those from `cursor` on not sent yet
        self.cursor = 0
        self.inflight = 0             # "pages" messages not acknowledged yet
        self.leaving = False          # the round's pages are all sent: waiting for the last to leave the link
        self.seq = 0
        self.frozen = False
        self.resumed = False          # the target runs the VM: no abort any more
        self.sent: set[int] | None = None   # post-copy: pages the target has (pushed or fetched)
        self.nonzero: set[int] | None = None   # round 0 and the push: pages that may hold data
        self.cleanup_errors: list[str] = []    # what failed while letting go (dirty log, thaw)

    # -- sending --
    def _send(self, op: str, *, at: int | None = None, **fields) -> None:
        payload = encode(op, self.record.id, **fields)
        self.node.send(self.to, KIND + op, payload, at=at)
        self.record.bytes += len(payload)
        self.record.messages += 1

    def start(self) -> None:
        vm = self.vm
        try:
            self.pages = sorted(vm.memory_pages())
            self.page_runs = runs(self.pages)
            config = vm.config_data()
            self.service.log("migration.begin", vm=vm.name, id=self.record.id, to=self.to, kind=self.record.kind,
                             pages=len(self.pages))
            self._send("begin", vm=vm.name, kind=self.record.kind, pages=len(self.pages),
                       memory_bytes=len(self.pages) * PAGE_SIZE, config=config)
        except Exception as exc:  # noqa: BLE001 - a migration never raises into the run loop
            self.abort(f"{type(exc).__name__}: {exc}", tell=False)

    def receive(self, m: dict, message) -> None:
        self.record.bytes += message.size
        self.record.messages += 1
        op = m["op"]
        try:
            if op == "failed":
                return self.abort(f"the target failed: {m['reason']}", tell=False)
            if op == "ready":
                return self._ready()
            if op == "ack":
                return self._acked()
            if op == "resumed":
                return self._resumed(m["resume_ns"], m["start_ns"])
            if op == "fetch":
                return self._fetch(m["gpa"])
            if op == "done":
                self.record.fetches, self.record.fetch_wait_ns = m["fetches"], m["stall_ns"]
                self.record.fetch_late_ns = m["late_ns"]
                return self._finish()
        except Exception as exc:  # noqa: BLE001
            self.abort(f"{type(exc).__name__}: {exc}")

    # -- pre-copy --
    def _ready(self) -> None:
        if self.record.kind == "post-copy":
            return self._blackout_postcopy()
        self.dirty = self.vm.host.dirty_log(self.vm.partition)
        self.dirty.start()
        self._whole_memory()

    def _whole_memory(self) -> None:
        """A round of every page (pre-copy's round 0, post-copy's push). Pages the core never
        wrote are known zero without reading them: a big idle VM costs page numbers, not reads."""
        root, part = self.vm.host.root, self.vm.partition
        self.nonzero = {g for first, count in self.page_runs for g in root.nonzero_pages(part, first, count)}
        self._round(list(self.pages))

    def _round(self, pages: list[int]) -> None:
        self.record.rounds.append(Round(len(self.record.rounds), self.node.now))
        self.queue, self.cursor = pages, 0
        self.leaving = False
        self._pump()

    def _pump(self) -> None:
        """Send the round's pages while fewer than `window` messages are unacknowledged."""
        link = self.node.links.get(self.to)
        limit = WINDOW if link is None else window(*link, PUSH_CHUNK_PAGES if self.sent is not None else CHUNK_PAGES)
        while self.cursor < len(self.queue) and self.inflight < limit:
            batch = self._batch()
            if self.sent is not None:     # post-copy: skip what a fetch already brought
                batch = [p for p in batch if p not in self.sent]
                self.sent.update(batch)
                if not batch:
                    continue
            self._send_pages(batch, self.record.rounds[-1])
            self.inflight += 1
        if self.cursor >= len(self.queue) and not self.leaving:
            # Every page of the round is on its way: the round is over when its last message has
            # left the link (this host knows when: HostNode.link_free), and the log is read then.
            self.leaving = True
            rnd = self.record.rounds[-1]
            self.node.at(max(self.node.now, self.node.link_free.get(self.to, 0)), lambda: self._round_left(rnd))

    def _round_left(self, rnd: Round) -> None:
        if self.record.outcome != "running" or rnd is not self.record.rounds[-1]:
            return
        self.leaving = False
        self.nonzero = None
        try:
            self._round_done()
        except Exception as exc:  # noqa: BLE001 - a migration never raises into the run loop
            self.abort(f"{type(exc).__name__}: {exc}")

    def _batch(self) -> list[int]:
        """The next pages of the round for one message: up to CHUNK_PAGES (post-copy's push:
        PUSH_CHUNK_PAGES) pages that may hold data, and zero pages known as such (they cost a page
        number each) up to MAX_MESSAGE_PAGES in all."""
        limit = PUSH_CHUNK_PAGES if self.sent is not None else CHUNK_PAGES
        queue, first, nonzero = self.queue, self.cursor, self.nonzero
        if nonzero is None:
            end = min(len(queue), first + limit)
        else:
            end, full, stop = first, 0, min(len(queue), first + MAX_MESSAGE_PAGES)
            while end < stop:
                if queue[end] in nonzero:
                    if full == limit:
                        break
                    full += 1
                end += 1
        self.cursor = end
        return queue[first:end]

    def _send_pages(self, gpas: list[int], rnd: Round, at: int | None = None) -> None:
        if self.nonzero is not None:   # the core never wrote the others: they are zero, unread
            maybe = [g for g in gpas if g in self.nonzero]
            zero_known = [g for g in gpas if g not in self.nonzero]
        else:
            maybe, zero_known = gpas, []
        zero, full, data = split_zero(maybe, read_pages(self.vm, maybe))
        if zero_known:
            zero = [list(r) for r in runs(sorted(zero_known + [p for a, n in zero for p in range(a, a + n)]))]
        payload = encode("pages", self.record.id, round=rnd.number, seq=self.seq, zero=zero, gpas=full, data=data)
        self.seq += 1
        self.node.send(self.to, KIND + "pages", payload, at=at)
        rnd.pages += len(gpas)
        rnd.zero_pages += len(gpas) - len(full)
        rnd.bytes += len(payload)
        rnd.messages += 1
        self.record.bytes += len(payload)
        self.record.messages += 1

    def _acked(self) -> None:
        self.inflight -= 1
        if self.frozen and self.sent is None:   # the blackout's pages: not windowed, their acks only count
            return
        self._pump()

    def _round_done(self) -> None:
        rnd = self.record.rounds[-1]
        rnd.end_ns = self.node.now
        self.service.log("migration.round", vm=self.vm.name, id=self.record.id, round=rnd.number, pages=rnd.pages,
                         zero_pages=rnd.zero_pages, bytes=rnd.bytes, start_ns=rnd.start_ns, end_ns=rnd.end_ns)
        if self.sent is not None:      # post-copy's push is done: the target says when it has every page
            return
        dirty = self._take()
        sent = sum(r.pages for r in self.record.rounds)
        rules = self.rules
        rule = ("fewer than min_pages dirty" if len(dirty) < rules.min_pages else
                "max_rounds reached" if len(self.record.rounds) >= rules.max_rounds else
                "max_factor of memory sent" if sent >= rules.max_factor * len(self.pages) else None)
        if rule is None:
            return self._round(dirty)
        self.record.stop_rule = rule
        self._blackout_precopy(dirty)

    def _take(self) -> list[int]:
        out: list[int] = []
        for first, count in self.page_runs:
            out += self.dirty.take(first, count)
        return out

    def _freeze(self) -> int:
        """Freeze the VM; returns when the source has its state in hand (its VPs stopped, their
        registers and the device records read: BlackoutCosts.stop_ns), when its messages can go."""
        self.vm.freeze()
        self.frozen = True
        self.record.freeze_ns = self.node.now
        self.service.log("migration.blackout", vm=self.vm.name, id=self.record.id, kind=self.record.kind)
        return self.node.now + self.service.costs.stop_ns(len(self.vm.partition.vps), len(self.vm.devices))

    def _blackout_precopy(self, dirty: list[int]) -> None:
        """Stop and copy: freeze, then the pages the last read found (`dirty`, which decided to
        stop: that read cleared them) and those written since, then the VM's state."""
        ready = self._freeze()
        last = sorted(set(dirty).union(self._take()))
        rnd = Round(len(self.record.rounds), self.node.now, blackout=True)
        self.record.rounds.append(rnd)
        # Each chunk leaves once it has been read (at the memory copy rate, after the stop); the
        # frozen memory does not change, so reading it now gives the same bytes.
        for i in range(0, len(last), CHUNK_PAGES):
            chunk = last[i:i + CHUNK_PAGES]
            ready += self.service.costs.pages_ns(len(chunk))
            self._send_pages(chunk, rnd, at=ready)
            self.inflight += 1
        self.record.stop_ns = ready - self.record.freeze_ns
        rnd.end_ns = max(ready, self.node.link_free.get(self.to, 0))   # when its last page has left
        self._send("state", at=ready, image=self.vm.capture(), freeze_ns=self.record.freeze_ns)

    # -- post-copy --
    def _blackout_postcopy(self) -> None:
        """Freeze, send the VM's state at once, then push every page in order (the target
        fetches the ones it touches first)."""
        ready = self._freeze()
        self.record.stop_ns = ready - self.record.freeze_ns
        self._send("state", at=ready, image=self.vm.capture(), freeze_ns=self.record.freeze_ns)
        self.sent = set()
        self._pageset = frozenset(self.pages)
        self.node.at(ready, self._push)

    def _push(self) -> None:
        """The push starts once the state has gone (a wake-up then)."""
        if self.record.outcome != "running":
            return
        try:
            self._whole_memory()
        except Exception as exc:  # noqa: BLE001 - a migration never raises into the run loop
            self.abort(f"{type(exc).__name__}: {exc}")

    def serve(self, gpa: int) -> bytes:
        """A post-copy target's read of page `gpa` (MigrationService's answer to READ). It changes
        nothing here: it may come at any point of this host's window, and only the frozen VM's
        memory, which nothing changes, is read."""
        if self.sent is None or not self.frozen or gpa not in self._pageset:
            raise MigrationError(f"vm {self.vm.name!r}: page {gpa} read, but it is no page of the frozen VM")
        return read_pages(self.vm, [gpa])

    def _fetch(self, gpa: int) -> None:
        """A page the target's guest touched: the page goes now, ahead of the push's queue (behind
        the push messages already on the link), and the push skips it."""
        if self.sent is None or gpa not in self._pageset:
            raise MigrationError(f"the target fetched page {gpa}, which is no page of vm {self.vm.name!r}")
        self.sent.add(gpa)
        self._send("page", gpa=gpa, data=read_pages(self.vm, [gpa]))

    # -- the end --
    def _resumed(self, resume_ns: int, start_ns: int) -> None:
        self.resumed = True
        self.record.resume_ns, self.record.start_ns = resume_ns, start_ns
        self.service.log("migration.resumed", vm=self.vm.name, id=self.record.id, to=self.to,
                         downtime_ns=self.record.downtime_ns)
        if self.record.kind == "live":
            self._finish()

    def _finish(self) -> None:
        """The target has the whole VM: the source lets go of its copy."""
        if self.dirty is not None:
            self._quietly(self.dirty.stop)
        self.vm.release(f"migrated to host {self.to!r}")
        self._end("completed")

    def _end(self, outcome: str, reason: str | None = None) -> None:
        rec = self.record
        rec.outcome, rec.ended_ns = outcome, self.node.now
        if reason is not None:
            rec.reason = reason
        self.service.outgoing.pop(rec.id, None)
        self.service.log("migration.end", vm=rec.vm, id=rec.id, outcome=outcome, reason=reason, kind=rec.kind,
                         to=self.to, rounds=len(rec.rounds), bytes=rec.bytes, downtime_ns=rec.downtime_ns,
                         total_ns=rec.total_ns, cleanup_errors=self.cleanup_errors)

    def abort(self, reason: str, *, tell: bool = True) -> None:
        """Give up: the VM runs on here unchanged. After the target resumed there is no going back
        (post-copy's weakness): the failure is logged and the migration ends as aborted, the VM
        left where it is."""
        if self.record.outcome != "running":
            return
        if tell:
            self._quietly(lambda: self._send("abort", reason=reason))
        if self.dirty is not None:
            self._quietly(self.dirty.stop)
        if self.frozen and not self.resumed:
            self._quietly(self.vm.thaw)
        self.service.log("migration.abort", vm=self.vm.name, id=self.record.id, reason=reason)
        self._end("aborted", reason)

    def _quietly(self, fn) -> None:
        """Clean up with fn(); a failure is kept for migration.end's `cleanup_errors`, not raised
        into the run loop."""
        try:
            fn()
        except Exception as exc:  # noqa: BLE001
            self.cleanup_errors.append(f"{type(exc).__name__}: {exc}")


class _Target:
    """The target's half: builds the VM from the source's configuration, writes the pages that
    arrive, resumes the VM from its state, and (post-copy) serves its guest's first touch of each
    page not here yet."""

    def __init__(self, service: MigrationService, source: str, begin: dict) -> None:
        self.service, self.source, self.id = service, source, begin["id"]
        self.node = service.node
        self.kind = begin["kind"]
        self.name = begin["vm"]
        self.vm = None
        self.resumed = False
        self.pages: list[int] = []
        self.absent: set[int] = set()     # post-copy: pages not here yet
        self.fetched: dict[int, int] = {} # post-copy: page fetched -> when its page should arrive
        self.fetches = self.stall_ns = self.late_ns = 0
        self.fetch_free = 0                # post-copy: when the last fetch's page is due
        self.costs = service.costs
        self.busy = 0                      # when the pages that arrived so far are written (copy rate)

    def _send(self, op: str, **fields) -> None:
        self.node.send(self.source, KIND + op, encode(op, self.id, **fields))

    def begin(self, m: dict) -> None:
        try:
            if m["kind"] not in KINDS:
                raise ProtocolError(f"kind {m['kind']!r} is not one of {', '.join(KINDS)}")
            self.vm = self.node.managed.incoming(m["config"])
            self.pages = sorted(self.vm.memory_pages())
            if len(self.pages) != m["pages"]:
                raise MigrationError(f"vm {self.name!r} has {m['pages']} pages on the source and "
                                     f"{len(self.pages)} here")
            self.service.log("migration.incoming", vm=self.name, id=self.id, src=self.source, kind=self.kind)
            self._send("ready")
        except Exception as exc:  # noqa: BLE001
            self.fail(f"{type(exc).__name__}: {exc}")

    def receive(self, m: dict, message) -> None:
        op = m["op"]
        try:
            if op == "abort":
                return self._torn_down(f"the source aborted: {m['reason']}")
            if op == "pages":
                self._pages(m)
                return self._send("ack", seq=m["seq"])
            if op == "state":
                return self._state(m)
            if op == "page":
                return self._page(m["gpa"], m["data"])
            raise ProtocolError(f"op {op!r} does not go to a target")
        except Exception as exc:  # noqa: BLE001
            self.fail(f"{type(exc).__name__}: {exc}")

    def _pages(self, m: dict) -> None:
        gpas, data = m["gpas"], m["data"]
        zero = [p for first, count in m["zero"] for p in range(first, first + count)]
        if self.kind == "post-copy":
            # Only pages still absent: one fetched on demand may have been written here since.
            keep = [i for i, g in enumerate(gpas) if g in self.absent]
            if len(keep) < len(gpas):
                data = b"".join(data[i * PAGE_SIZE:(i + 1) * PAGE_SIZE] for i in keep)
                gpas = [gpas[i] for i in keep]
            zero = [p for p in zero if p in self.absent]
            self._supply(gpas, data)
            self._supply(zero, bytes(len(zero) * PAGE_SIZE))
            return
        if gpas:
            self.vm.write_pages(gpas, data)
        # Round 0 lands in fresh (zero) RAM; a later zero page may overwrite one sent before.
        if zero and m["round"] > 0:
            self.vm.write_pages(zero, bytes(len(zero) * PAGE_SIZE))
        written = len(gpas) + (len(zero) if m["round"] > 0 else 0)
        # One writer: the blackout's last pages may still be being written when the state comes.
        self.busy = max(self.busy, self.node.now) + self.costs.pages_ns(written)

    def _state(self, m: dict) -> None:
        vm = self.vm
        if self.kind == "post-copy":
            # Every page absent before the guest can touch one: its first touch calls _fault.
            root, part = vm.host.root, vm.partition
            for first, count in runs(self.pages):
                root.set_absent(part, first, count)
            self.absent = set(self.pages)
            vm.host.set_pager(part, self._fault)
        image = m["image"]
        if not isinstance(image.get("vps"), list) or not isinstance(image.get("devices"), dict):
            raise ProtocolError("state message: the image has no vps list or devices map")
        # The VM runs once the pages still being written are, its VPs' registers are set, its
        # device records loaded and its VPs started (BlackoutCosts.start_ns).
        arrived = self.node.now
        at = max(arrived, self.busy) + self.costs.start_ns(len(image["vps"]), len(image["devices"]))
        self.node.at(at, lambda: self._resume(image, m["freeze_ns"], arrived))

    def _resume(self, image: dict, freeze_ns: int, arrived: int) -> None:
        if self.service.incoming.get(self.id) is not self or self.vm is None or self.resumed:
            return                      # aborted meanwhile
        try:
            vm = self.vm
            vm.resume_from(image)
            self.resumed = True
            self.service.log("migration.resumed_here", vm=self.name, id=self.id, src=self.source,
                             downtime_ns=self.node.now - freeze_ns)
            self._send("resumed", resume_ns=self.node.now, start_ns=self.node.now - arrived)
            if self.service.on_arrived is not None:
                self.service.on_arrived(vm)
            if self.kind == "live":
                self.service.incoming.pop(self.id, None)
            self._reconnected(vm, self.node.now)
        except Exception as exc:  # noqa: BLE001
            self.fail(f"{type(exc).__name__}: {exc}")

    def _reconnected(self, vm, resumed: int) -> None:
        """Look (every RECONNECT_POLL_NS) whether the resumed guest has every device open again,
        and tell the source when it has: the devices' time away, which the downtime leaves out."""
        if vm.state.value != "Running" or self.node.now - resumed > RECONNECT_LIMIT_NS:
            return
        if all(vm.device_vsc(slot.name) is not None for slot in vm.devices):
            self._send("reconnected", devices_ns=self.node.now)
            return
        wait = max(RECONNECT_POLL_NS, (self.node.now - resumed) // 64)
        self.node.at(self.node.now + wait, lambda: self._reconnected(vm, resumed))

    # -- post-copy --
    def _fault(self, gpa: int) -> tuple[bytes, int]:
        """The core's pager: the guest (or the core on its behalf) touched absent page `gpa`. A
        real fetch is a request to the source and the page back: the faulting VP is charged that
        round trip and the page's transmission on an idle link. The bytes come from a read of the
        frozen source (HostNode.call), and the request goes as a message too, so that the source
        skips the page in its push and sends it back on the link, which carries (and is busy
        with) what a real fetch moves; when the push holds the link, that page arrives later than
        charged, and the summary says by how much (fetch_late_ns)."""
        reply = decode(self.node.call(self.source, KIND + READ, encode(READ, self.id, gpa=gpa)), "page")
        data = reply["data"]
        if reply["gpa"] != gpa or len(data) != PAGE_SIZE:
            raise ProtocolError(f"read of page {gpa}: the source answered for page {reply['gpa']} "
                                f"with {len(data)} bytes")
        fetch = encode("fetch", self.id, gpa=gpa)
        bandwidth, latency = self.node.links[self.source]
        trip = (2 * latency + transmission_ns(len(fetch), bandwidth)
                + transmission_ns(len(encode("page", self.id, gpa=gpa, data=data)), bandwidth))
        # A burst of faults in one step of a VP's code (its loop over its pages) is one fetch after
        # another: the core adds each one's stall to the VP's, and each request leaves when the
        # one before it has come back. A later request is sent by a wake-up at its time, not
        # handed to the link now dated then: the link carries a host's messages in the order they
        # are handed over, so a request dated far ahead (a burst of 2048 faults over a 200 us
        # link is 0.8 s of round trips) would hold every ack sent behind it, and the push, which
        # waits for its acks, would stop until the burst's end.
        start = max(self.node.now, self.fetch_free)
        self.fetch_free = start + trip
        if start == self.node.now:
            self.node.send(self.source, KIND + "fetch", fetch)
        else:
            self.node.at(start, lambda: self._request(fetch))
        self.fetched[gpa] = start + trip
        self.fetches += 1
        self.stall_ns += trip
        self.absent.discard(gpa)
        return data, trip

    def _request(self, fetch: bytes) -> None:
        """A fetch request's wake-up: it leaves now (unless the migration is over here)."""
        if self.service.incoming.get(self.id) is self:
            self.node.send(self.source, KIND + "fetch", fetch)

    def _page(self, gpa: int, data: bytes) -> None:
        """A fetched page's message: what the link carried for a fetch served already."""
        if len(data) != PAGE_SIZE:
            raise ProtocolError(f"page message for page {gpa}: expected 4 KiB, got {len(data)} bytes")
        due = self.fetched.pop(gpa, None)
        if due is not None:
            self.late_ns += max(0, self.node.now - due)
        self._check_done()

    def _supply(self, gpas: list[int], data: bytes) -> None:
        if gpas:
            self.vm.host.root.write_pages(self.vm.partition, gpas, data)
            self.absent.difference_update(gpas)
        self._check_done()

    def _check_done(self) -> None:
        """Every page here and every fetched page's message in: the source may let go."""
        if self.resumed and not self.absent and not self.fetched and self.kind == "post-copy":
            self.vm.host.set_pager(self.vm.partition, None)
            self._send("done", fetches=self.fetches, stall_ns=self.stall_ns, late_ns=self.late_ns)
            self.service.incoming.pop(self.id, None)

    # -- failure --
    def fail(self, reason: str) -> None:
        """Something went wrong here: before the VM resumed, tear down what was built and tell the
        source (which thaws its VM); after, the VM is here and only the log can say so."""
        self.service.log("migration.target_failed", vm=self.name, id=self.id, error=reason, resumed=self.resumed)
        if self.resumed:
            return
        self._send("failed", reason=reason)
        self._torn_down(reason)

    def _torn_down(self, reason: str) -> None:
        self.service.incoming.pop(self.id, None)
        if self.vm is not None and not self.resumed:
            try:
                if self.kind == "post-copy" and self.vm.partition is not None:
                    self.vm.host.set_pager(self.vm.partition, None)   # its partition goes: so does its pager
                self.vm.release(f"incoming migration abandoned: {reason}")
            except Exception as exc:  # noqa: BLE001 - never into the run loop
                self.service.log("migration.target_failed", vm=self.name, id=self.id, resumed=False,
                                 error=f"tearing down: {type(exc).__name__}: {exc}")
            self.vm = None
