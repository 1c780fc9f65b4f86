"""Isolation invariants of the core, recounted independently from introspection.

Each check raises `InvariantViolation` with a message saying which invariant broke and where.
They are the threat model's INV-OWN, INV-REACH-CHILD, INV-REACH-PARENT (without grants, which
arrive with VMBus GPADLs) and INV-HV, computed from the raw owner table and reach sets rather than
from the core's own counters, so a bookkeeping bug in the core cannot hide itself.
"""
from __future__ import annotations

from collections import Counter

from hypervisor.abi import OWNER_FREE, OWNER_HV
from hypervisor.host import Host


class InvariantViolation(AssertionError):
    """An isolation invariant does not hold."""


def _fail(name: str, message: str) -> None:
    raise InvariantViolation(f"{name}: {message}")


def check_ownership(host: Host) -> None:
    """INV-OWN: every SPA page has exactly one owner (free, the hypervisor or one live
    partition), the core's per-owner counts match a recount, and the totals are conserved."""
    codes = host.introspect.owner_codes()
    totals = host.introspect.totals()
    if len(codes) != totals["pages"] or totals["pages"] != host.pages:
        _fail("INV-OWN", f"owner table covers {len(codes)} pages, host has {host.pages}")
    by_code = Counter(codes.tolist())
    infos = {pid: host.introspect.partition_info(pid) for pid in host.introspect.partition_ids()}
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


def check_reach(host: Host) -> None:
    """INV-REACH-CHILD, INV-REACH-PARENT and INV-HV: a child reaches exactly the pages it owns,
    each at one GPA; the root reaches exactly its own pages plus the pages its children granted
    it (live grants, each page the granting child's); no partition reaches a hypervisor page."""
    codes = host.introspect.owner_codes()
    root_id = host.root.id
    slots = {host.introspect.partition_info(pid)["slot"]: pid for pid in host.introspect.partition_ids()}
    granted: dict[int, int] = {}  # pfn -> granting child's slot
    for pid in host.introspect.partition_ids():
        if pid == root_id:
            continue
        slot = host.introspect.partition_info(pid)["slot"]
        own = {pfn for pfn, _ in host.introspect.reach(pid).values()}
        for pfn in host.grants.granted_pages(pid):
            if pfn not in own:
                _fail("INV-REACH-PARENT", f"partition {pid} granted page {pfn}, which it does not reach")
            granted[pfn] = slot
    for pid in host.introspect.partition_ids():
        info = host.introspect.partition_info(pid)
        reach = host.introspect.reach(pid)
        pfns = [pfn for pfn, _ in reach.values()]
        if len(set(pfns)) != len(pfns):
            _fail("INV-REACH", f"partition {pid} reaches some SPA page at two GPAs")
        for gpa, (pfn, _) in reach.items():
            owner = codes[pfn]
            if owner == OWNER_HV:
                _fail("INV-HV", f"partition {pid} reaches hypervisor page {pfn} at GPA page {gpa}")
            if owner == info["slot"]:
                continue
            if pid == root_id and granted.get(pfn) == owner:
                continue
            _fail("INV-REACH-CHILD" if pid != root_id else "INV-REACH-PARENT",
                  f"partition {pid} reaches page {pfn} owned by {slots.get(owner, owner)}")
        expected = info["pages_owned"] + (len(granted) if pid == root_id else 0)
        if len(pfns) != expected:
            _fail("INV-REACH-CHILD" if pid != root_id else "INV-REACH-PARENT",
                  f"partition {pid} should reach {expected} pages, reaches {len(pfns)}")
        if pid != root_id and info["gpa_mapped"] != len(pfns):
            _fail("INV-REACH-CHILD", f"partition {pid}: core counts {info['gpa_mapped']} mapped GPA pages, "
                                     f"its map holds {len(pfns)}")


def check_all(host: Host) -> None:
    """Every invariant above."""
    check_ownership(host)
    check_reach(host)
