"""Isolation invariants of the core, recounted independently from introspection.

Each check raises `InvariantViolation` with a message saying which invariant broke and where.
They are the threat model's INV-OWN, INV-REACH-CHILD, INV-REACH-PARENT (grants included) and
INV-HV, computed from the raw owner table and reach sets rather than from the core's own counters,
so a bookkeeping bug in the core cannot hide itself; and INV-QUEUE, INV-TEARDOWN and INV-ACCOUNT
for ports, connections and message queues (`check_messages`).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from itertools import compress
from typing import Iterable, Mapping

from hypervisor import _binding
from hypervisor.abi import OWNER_FREE, OWNER_HV, PARTITION_INIT_PAGES, VP_PAGES, PartitionState
from hypervisor.host import Host


class InvariantViolation(AssertionError):
    """An isolation invariant does not hold."""


def _fail(name: str, message: str) -> None:
    raise InvariantViolation(f"{name}: {message}")


class Tables:
    """The core's tables as one round of checks reads them: the live partitions, their info, the
    owner table and each partition's reach, each read from the core at most once however many
    checks use it (reading, not judging, is what a round of checks spends its time on). Checks
    only read, so the tables cannot change under a round; the next round needs new Tables."""

    def __init__(self, host: Host):
        self.host = host
        self.ids = host.introspect.partition_ids()
        self._infos: dict[int, dict | None] = {}
        self._reach: dict[int, tuple[list[int], list[int], list[int]]] = {}
        self._maps: dict[int, dict[int, tuple[int, int]]] = {}
        self._codes: list[int] | None = None

    def info(self, pid: int) -> dict | None:
        if pid not in self._infos:
            self._infos[pid] = self.host.introspect.partition_info(pid)
        return self._infos[pid]

    @property
    def codes(self) -> list[int]:
        """The owner code of every SPA page."""
        if self._codes is None:
            self._codes = self.host.introspect.owner_codes().tolist()
        return self._codes

    def reach(self, pid: int) -> tuple[list[int], list[int], list[int]]:
        """(GPA pages, SPA frames, rights) of every page the partition reaches."""
        if pid not in self._reach:
            self._reach[pid] = self.host.introspect.reach_columns(pid)
        return self._reach[pid]

    def reach_map(self, pid: int) -> dict[int, tuple[int, int]]:
        """The same as `Introspection.reach`: {GPA page: (SPA frame, rights)}."""
        if pid not in self._maps:
            gpas, pfns, rights = self.reach(pid)
            self._maps[pid] = dict(zip(gpas, zip(pfns, rights)))
        return self._maps[pid]


def check_ownership(host: Host, tables: Tables | None = None) -> None:
    """INV-OWN: every SPA page has exactly one owner (free, the hypervisor or one live
    partition), the core's per-owner counts match a recount, and the totals are conserved."""
    t = tables or Tables(host)
    codes = t.codes
    totals = host.introspect.totals()
    if len(codes) != totals["pages"] or totals["pages"] != host.pages:
        _fail("INV-OWN", f"owner table covers {len(codes)} pages, host has {host.pages}")
    by_code = Counter(codes)
    infos = {pid: t.info(pid) for pid in t.ids}
    slots = {info["slot"]: pid for pid, info in infos.items()}
    for code, n in by_code.items():
        if code not in (OWNER_FREE, OWNER_HV) and code not in slots:
            _fail("INV-OWN", f"{n} pages belong to owner code {code}, which is no live partition")
    for pid, info in infos.items():
        if by_code.get(info["slot"], 0) != info["pages_owned"]:
            _fail("INV-OWN", f"partition {pid} owns {by_code.get(info['slot'], 0)} pages by recount, "
                             f"the core says {info['pages_owned']}")
    if by_code.get(OWNER_HV, 0) != totals["hv_pages"]:
        _fail("INV-OWN", f"hypervisor owns {by_code.get(OWNER_HV, 0)} pages by recount, core says {totals['hv_pages']}")
    if sum(by_code.values()) != host.pages:
        _fail("INV-OWN", "owners do not add up to the host's pages")
    for pid, info in infos.items():
        pool = host.introspect.pool_pages(pid)
        if len(pool) != info["pool_free"] + info["pool_used"] or len(set(pool)) != len(pool):
            _fail("INV-OWN", f"partition {pid}'s pool lists {len(pool)} pages, counts say "
                             f"{info['pool_free']}+{info['pool_used']}")
        for pfn in pool:
            if codes[pfn] != OWNER_HV:
                _fail("INV-OWN", f"pool page {pfn} of partition {pid} is not hypervisor-owned")


def check_reach(host: Host, tables: Tables | None = None) -> None:
    """INV-REACH-CHILD, INV-REACH-PARENT and INV-HV: a child reaches exactly the pages it owns,
    each at one GPA; the root reaches exactly its own pages plus the pages its children granted
    it (live grants, each page the granting child's) plus the pages its children made host-visible,
    with no more access than that visibility gives; no partition reaches a hypervisor page."""
    t = tables or Tables(host)
    codes = t.codes
    root_id = host.root.id
    slots = {t.info(pid)["slot"]: pid for pid in t.ids}
    granted: dict[int, int] = {}  # pfn -> granting child's slot
    visible: dict[int, int] = {}  # pfn -> rights the root has on a host-visible page of a child
    for pid in t.ids:
        if pid == root_id:
            continue
        slot = t.info(pid)["slot"]
        own = set(t.reach(pid)[1])
        for pfn in host.grants.granted_pages(pid):
            if pfn not in own:
                _fail("INV-REACH-PARENT", f"partition {pid} granted page {pfn}, which it does not reach")
            granted[pfn] = slot
        shown = host.grants.host_visible(pid)
        by_gpa = t.reach_map(pid) if shown else {}
        for gpa, vis in shown.items():
            if gpa not in by_gpa:
                _fail("INV-REACH-PARENT", f"partition {pid} shows GPA page {gpa}, which it does not map")
            visible[by_gpa[gpa][0]] = _VISIBLE_RIGHTS[vis]
    for pid in t.ids:
        info = t.info(pid)
        gpas, pfns, rights = t.reach(pid)
        if len(set(pfns)) != len(pfns):
            _fail("INV-REACH", f"partition {pid} reaches some SPA page at two GPAs")
        # Most pages are the partition's own: only those that are not are judged one by one (the
        # selection runs in C), each exactly as every page once was.
        foreign = map(info["slot"].__ne__, map(codes.__getitem__, pfns))
        for gpa, pfn, right in compress(zip(gpas, pfns, rights), foreign):
            owner = codes[pfn]
            if owner == OWNER_HV:
                _fail("INV-HV", f"partition {pid} reaches hypervisor page {pfn} at GPA page {gpa}")
            if owner == info["slot"]:
                continue
            if pid == root_id and granted.get(pfn) == owner:
                continue
            if pid == root_id and pfn in visible:
                if right != visible[pfn]:
                    _fail("INV-REACH-PARENT", f"the root has rights {right} on host-visible page {pfn} of "
                                              f"{slots.get(owner, owner)}, which shows it with rights {visible[pfn]}")
                continue
            _fail("INV-REACH-CHILD" if pid != root_id else "INV-REACH-PARENT",
                  f"partition {pid} reaches page {pfn} owned by {slots.get(owner, owner)}")
        expected = info["pages_owned"] + (len(granted.keys() | visible.keys()) if pid == root_id else 0)
        if len(pfns) != expected:
            _fail("INV-REACH-CHILD" if pid != root_id else "INV-REACH-PARENT",
                  f"partition {pid} should reach {expected} pages, reaches {len(pfns)}")
        if pid != root_id and info["gpa_mapped"] != len(pfns):
            _fail("INV-REACH-CHILD", f"partition {pid}: core counts {info['gpa_mapped']} mapped GPA pages, "
                                     f"its map holds {len(pfns)}")


_c = _binding.constant
# Rights the root has on a child's page that is host-visible but not granted, by visibility.
_VISIBLE_RIGHTS = {_c("HV_HOST_VISIBILITY_READ_ONLY"): _c("HV_MAP_GPA_READABLE"),
                   _c("HV_HOST_VISIBILITY_READ_WRITE"): _c("HV_MAP_GPA_READABLE") | _c("HV_MAP_GPA_WRITABLE")}
PORT_BUFFERS = _c("HV_PORT_MESSAGE_BUFFERS")
SINT_COUNT = _c("HV_SYNIC_SINT_COUNT")
STIMER_COUNT = _c("HV_SYNIC_STIMER_COUNT")
MAX_PORTS = _c("HV_MAX_PORTS_PER_PARTITION")
MAX_CONNECTIONS = _c("HV_MAX_CONNECTIONS_PER_PARTITION")
LEAF_ENTRIES = 4096 // 8  # a GPA-map leaf table: one page of 8-byte entries


@dataclass(frozen=True)
class PortFacts:
    """What a test knows about one of its ports from the CreatePort it issued (introspection can
    look a port up by id but tells neither its type nor its target)."""

    port_type: int
    vp: int
    sint: int


def _vps(info: dict) -> list[int]:
    return [i for i in range(64) if info["vp_mask"] >> i & 1]


def _gpa_leaves(t: Tables, pid: int) -> int:
    """GPA-map leaf tables a child's map needs: one per 512-page region holding a mapped page."""
    return len({gpa // LEAF_ENTRIES for gpa in t.reach(pid)[0]})


def check_messages(host: Host, *, ids: Iterable[int] | None = None,
                   ports: Mapping[tuple[int, int], PortFacts] | None = None,
                   connections: Mapping[tuple[int, int], tuple[int, int] | None] | None = None,
                   tables: Tables | None = None) -> None:
    """INV-QUEUE, INV-TEARDOWN and INV-ACCOUNT for ports, connections and message queues.

    Introspection finds a port or connection by id but cannot list them, so the check looks up
    `ids` (default `strategies.PORT_IDS`) in every live partition, or, when the test knows them,
    exactly the `ports` {(owner id, port id): PortFacts} and `connections` {(owner id, connection
    id): (port owner id, port id) or None if it dangles} it created; those must then be every live
    port and connection, and the recount is exact.

    - INV-QUEUE: no port holds more than 16 undelivered messages. What waits in a VP's queues is
      its ports' undelivered messages plus its synthetic timers' pending TimerExpired messages:
      per (VP, SINT) exactly when `ports` is given, per partition when the lookup found every
      port, as bounds otherwise.
    - INV-TEARDOWN: every connection of a live partition dangles or leads to a live port of a live
      partition (a deleted partition's ports are gone, and nothing points at them).
    - INV-ACCOUNT: the ports and connections a partition owns stay under hvsim's caps, and its
      pool pages in use are exactly what the core charges: one for initialization, one per VP, one
      per GPA-map leaf table, one per port it owns and one per connection it owns (the root: ports
      and connections only). With `ports` the port count is the model's, else the core's.
    """
    from hypervisor.testing.strategies import PORT_IDS

    t = tables or Tables(host)
    live = t.ids
    live_set = set(live)
    root_id = host.root.id
    infos = {pid: t.info(pid) for pid in live}
    counts = {pid: _binding.hv_port_counts(host._h, pid) for pid in live}
    for pid, (nports, nconns) in counts.items():
        if nports > MAX_PORTS or nconns > MAX_CONNECTIONS:
            _fail("INV-ACCOUNT", f"partition {pid} owns {nports} ports and {nconns} connections, "
                                 f"over the caps {MAX_PORTS}/{MAX_CONNECTIONS}")

    def undelivered(pid: int, port_id: int) -> int | None:
        try:
            return _binding.hv_port_undelivered(host._h, pid, port_id)
        except LookupError:
            return None

    # ---- ports: find them, and their undelivered messages ----
    found: dict[int, dict[int, int]] = {pid: {} for pid in live}
    if ports is not None:
        for (pid, port_id), facts in ports.items():
            if pid not in live_set:
                _fail("INV-TEARDOWN", f"port {port_id:#x} of deleted partition {pid} is still expected")
            n = undelivered(pid, port_id)
            if n is None:
                _fail("INV-ACCOUNT", f"partition {pid} has no port {port_id:#x}, which it created and never deleted")
            found[pid][port_id] = n
        for pid in live:
            if len(found[pid]) != counts[pid][0]:
                _fail("INV-ACCOUNT", f"partition {pid}: the core counts {counts[pid][0]} ports, "
                                     f"the test created {len(found[pid])} that are still live")
    else:
        for pid in live:
            for port_id in set(PORT_IDS if ids is None else ids):
                n = undelivered(pid, port_id)
                if n is not None:
                    found[pid][port_id] = n
            if len(found[pid]) > counts[pid][0]:
                _fail("INV-ACCOUNT", f"partition {pid}: {len(found[pid])} ports found by id, the core counts "
                                     f"{counts[pid][0]}")
    for pid, by_id in found.items():
        for port_id, n in by_id.items():
            if not 0 <= n <= PORT_BUFFERS:
                _fail("INV-QUEUE", f"port {port_id:#x} of partition {pid} holds {n} undelivered messages "
                                   f"(at most {PORT_BUFFERS})")

    # ---- queues: recount from the ports that feed them ----
    for pid in live:
        info = infos[pid]
        queued = {}
        timers = {}
        for vp in _vps(info):
            for sint in range(SINT_COUNT):
                queued[vp, sint] = _binding.hv_synic_queue_length(host._h, pid, vp, sint)
            timers[vp] = sum(_binding.hv_synic_timer_state(host._h, pid, vp, t)["pending"]
                             for t in range(STIMER_COUNT))
        if ports is not None:
            feed = Counter()
            for (owner, port_id), facts in ports.items():
                if owner == pid:
                    feed[facts.vp, facts.sint] += found[pid][port_id]
            for (vp, sint), n in feed.items():
                if n and (vp, sint) not in queued:
                    _fail("INV-QUEUE", f"partition {pid}: {n} undelivered messages for VP {vp}, which is gone")
            for vp in timers:
                extra = [queued[vp, s] - feed[vp, s] for s in range(SINT_COUNT)]
                if min(extra) < 0 or sum(extra) != timers[vp]:
                    bad = [s for s in range(SINT_COUNT) if extra[s] < 0] or list(range(SINT_COUNT))
                    s = bad[0]
                    _fail("INV-QUEUE", f"partition {pid} VP {vp} SINT {s}: {queued[vp, s]} messages queued, its "
                                       f"ports hold {feed[vp, s]} undelivered (timer messages pending on the VP: "
                                       f"{timers[vp]}; queue minus ports per SINT: {extra})")
        else:
            total_q, total_t = sum(queued.values()), sum(timers.values())
            total_u = sum(found[pid].values())
            complete = len(found[pid]) == counts[pid][0]
            if total_q < total_u + total_t or (complete and total_q != total_u + total_t):
                _fail("INV-QUEUE", f"partition {pid}: {total_q} messages queued, its ports hold {total_u} "
                                   f"undelivered and {total_t} timer messages are pending")
            if total_q > PORT_BUFFERS * counts[pid][0] + total_t:
                _fail("INV-QUEUE", f"partition {pid}: {total_q} messages queued for {counts[pid][0]} ports "
                                   f"of {PORT_BUFFERS} buffers and {total_t} timer messages")

    # ---- connections: dangling or leading to a live port ----
    conns: dict[tuple[int, int], tuple[int, int] | None] = {}
    if connections is not None:
        per_owner = Counter()
        for (pid, conn_id), expected in connections.items():
            if pid not in live_set:
                _fail("INV-TEARDOWN", f"connection {conn_id:#x} of deleted partition {pid} is still expected")
            try:
                actual = _binding.hv_connection_target(host._h, pid, conn_id)
            except LookupError:
                _fail("INV-ACCOUNT", f"partition {pid} has no connection {conn_id:#x}, which it made and never "
                                     f"disconnected")
            if actual != (None if expected is None else tuple(expected)):
                _fail("INV-TEARDOWN" if expected is None else "INV-MSG",
                      f"connection {conn_id:#x} of partition {pid} leads to {actual}, expected {expected}")
            conns[pid, conn_id] = actual
            per_owner[pid] += 1
        for pid in live:
            if per_owner[pid] != counts[pid][1]:
                _fail("INV-ACCOUNT", f"partition {pid}: the core counts {counts[pid][1]} connections, "
                                     f"the test made {per_owner[pid]} that are still live")
    else:
        for pid in live:
            n = 0
            for conn_id in set(PORT_IDS if ids is None else ids):
                try:
                    conns[pid, conn_id] = _binding.hv_connection_target(host._h, pid, conn_id)
                    n += 1
                except LookupError:
                    pass
            if n > counts[pid][1]:
                _fail("INV-ACCOUNT", f"partition {pid}: {n} connections found by id, the core counts {counts[pid][1]}")
    for (pid, conn_id), target in conns.items():
        if target is None:
            continue
        owner, port_id = target
        if owner not in live_set:
            _fail("INV-TEARDOWN", f"connection {conn_id:#x} of partition {pid} leads to port {port_id:#x} of "
                                  f"partition {owner}, which is deleted")
        if undelivered(owner, port_id) is None:
            _fail("INV-TEARDOWN", f"connection {conn_id:#x} of partition {pid} leads to port {port_id:#x} of "
                                  f"partition {owner}, which does not exist")

    # ---- pool accounting ----
    for pid in live:
        info = infos[pid]
        if pid == root_id:
            base = 0  # the root's VPs and map are the boot's, not its pool's
        else:
            base = (PARTITION_INIT_PAGES if info["state"] != PartitionState.CREATED else 0) \
                + VP_PAGES * len(_vps(info)) + _gpa_leaves(t, pid)
        nports, nconns = counts[pid]
        if ports is not None:
            nports = sum(1 for (owner, _) in ports if owner == pid)
        if info["pool_used"] != base + nports + nconns:
            _fail("INV-ACCOUNT", f"partition {pid} uses {info['pool_used']} pool pages, the recount says {base} "
                                 f"(initialization, VPs, GPA leaf tables) + {nports} ports + {nconns} connections")


def check_all(host: Host) -> None:
    """Every invariant above, over one reading of the core's tables."""
    tables = Tables(host)
    check_ownership(host, tables)
    check_reach(host, tables)
    check_messages(host, tables=tables)
