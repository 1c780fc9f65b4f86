"""A hypothesis state machine over the hypervisor: random partition management by the root,
random raw hypercalls (valid and malformed) from random partitions, unprivileged children
included, and the isolation invariants checked after every step.

Use it as it is (`TestHypervisor = HypervisorMachine.TestCase`) or subclass it to add rules of
your own; every rule you add is followed by the same invariant checks.
"""
from __future__ import annotations

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from hypervisor import _binding
from hypervisor.abi import MAP_RWX, Control, MapFlags, PartitionProperty
from hypervisor.host import Host
from hypervisor.partition import Partition
from hypervisor.status import HvError, HvStatus
from hypervisor.testing import strategies as hs
from hypervisor.testing.invariants import check_all

MAX_CHILDREN = 4


def well_formed(ctl_word: int) -> bool:
    """True if the control word passes the entry point's encoding checks (so a privilege check
    is the next thing that can fail)."""
    ctl = Control.decode(ctl_word)
    shape = _binding.hv_call_shape(ctl.code)
    if shape is None or ctl.reserved or ctl.nested or ctl.varhead_qwords:
        return False
    if shape["rep"]:
        return ctl.rep_count > 0 and ctl.rep_start < ctl.rep_count
    return ctl.rep_count == 0 and ctl.rep_start == 0


class HypervisorMachine(RuleBasedStateMachine):
    """Random hypercalls against a small host, checking INV-OWN, INV-REACH, INV-HV, INV-PRIV and
    INV-ATOMIC (a failed hypercall leaves the state digest unchanged) after every step."""

    #: Host settings; a small rep budget makes rep calls continue often.
    host_memory = "2MiB"
    reps_per_call = 5

    def __init__(self) -> None:
        super().__init__()
        self.host = Host(logical_processors=2, memory=self.host_memory, seed=0,
                         reps_per_call=self.reps_per_call)
        self.root = self.host.root
        self.children: list[Partition] = []

    # ---- helpers ------------------------------------------------------------------------------
    def _live(self) -> list[Partition]:
        ids = set(self.host.introspect.partition_ids())
        self.children = [c for c in self.children if c.id in ids]
        return self.children

    def _try(self, fn, *args, **kw):
        """Run a typed wrapper; an HvError is a legitimate outcome of a random operation."""
        try:
            return fn(*args, **kw)
        except HvError:
            return None

    # ---- root-side management -------------------------------------------------------------------
    @initialize()
    def start(self) -> None:
        check_all(self.host)

    @precondition(lambda self: len(self._live()) < MAX_CHILDREN)
    @rule()
    def create_child(self) -> None:
        self.children.append(self.root.create_partition())

    @precondition(lambda self: self._live())
    @rule(data=st.data(), n=st.integers(1, 12))
    def deposit(self, data, n: int) -> None:
        child = data.draw(st.sampled_from(self.children))
        if self.host.root_memory.available >= n:
            # Pages a refused deposit leaves with the root are simply not handed out again.
            self._try(self.root.deposit_memory, child, self.host.root_memory.allocate(n))

    @precondition(lambda self: self._live())
    @rule(data=st.data())
    def initialize_child(self, data) -> None:
        self._try(self.root.initialize_partition, data.draw(st.sampled_from(self.children)))

    @precondition(lambda self: self._live())
    @rule(data=st.data(), index=st.integers(0, 3))
    def create_vp(self, data, index: int) -> None:
        self._try(self.root.create_vp, data.draw(st.sampled_from(self.children)), index)

    @precondition(lambda self: self._live())
    @rule(data=st.data(), gpa=st.integers(0, 1100), n=st.integers(1, 24),
          flags=st.sampled_from([MAP_RWX, MapFlags.READABLE, MapFlags.READABLE | MapFlags.WRITABLE]))
    def map_pages(self, data, gpa: int, n: int, flags: int) -> None:
        child = data.draw(st.sampled_from(self.children))
        if self.host.root_memory.available >= n:
            self._try(self.root.map_gpa_pages, child, gpa, self.host.root_memory.allocate(n), flags)

    @precondition(lambda self: self._live())
    @rule(data=st.data())
    def unmap_pages(self, data) -> None:
        child = data.draw(st.sampled_from(self.children))
        reach = sorted(self.host.introspect.reach(child))
        if reach:
            start = data.draw(st.sampled_from(reach))
            self._try(self.root.unmap_gpa_pages, child, start, data.draw(st.integers(1, 8)))

    @precondition(lambda self: self._live())
    @rule(data=st.data(), n=st.integers(1, 4))
    def withdraw(self, data, n: int) -> None:
        pages = self._try(self.root.withdraw_memory, data.draw(st.sampled_from(self.children)), n)
        if pages:
            self.host.root_memory.release(pages)

    @precondition(lambda self: self._live())
    @rule(data=st.data(), finalize_first=st.booleans())
    def delete_child(self, data, finalize_first: bool) -> None:
        child = data.draw(st.sampled_from(self.children))
        if finalize_first:
            self._try(self.root.finalize_partition, child)
        self._try(self.root.delete_partition, child)

    @precondition(lambda self: self._live())
    @rule(data=st.data(), prop=st.sampled_from(list(PartitionProperty)), value=st.integers(0, 12000))
    def set_property(self, data, prop: int, value: int) -> None:
        self._try(self.root.set_partition_property, data.draw(st.sampled_from(self.children)), prop, value)

    @precondition(lambda self: self._live())
    @rule(data=st.data(), gpa=st.integers(0, 1100), payload=st.binary(min_size=1, max_size=64))
    def child_writes_memory(self, data, gpa: int, payload: bytes) -> None:
        child = data.draw(st.sampled_from(self.children))
        try:
            child.write(gpa * 4096 + 8, payload)
        except MemoryError:
            pass

    # ---- grants (the core's half of VMBus GPADLs) --------------------------------------------------
    @precondition(lambda self: self._live())
    @rule(data=st.data(), grant_id=st.integers(0, 5), n=st.integers(1, 6))
    def grant_pages(self, data, grant_id: int, n: int) -> None:
        child = data.draw(st.sampled_from(self.children))
        mapped = sorted(self.host.introspect.reach(child))
        pool = mapped + [data.draw(st.integers(0, 2000))]  # sometimes a page it does not have
        pages = data.draw(st.lists(st.sampled_from(pool), min_size=1, max_size=n))
        before = self.host.introspect.digest()
        try:
            self.host.grants.create(child, grant_id, pages)
        except HvError:
            assert self.host.introspect.digest() == before, "INV-ATOMIC: a refused grant changed the state"

    @precondition(lambda self: self._live())
    @rule(data=st.data())
    def revoke_grant(self, data) -> None:
        child = data.draw(st.sampled_from(self.children))
        ids = self.host.grants.ids(child)
        if ids:
            self.host.grants.get(child, data.draw(st.sampled_from(ids))).revoke()

    # ---- raw hypercalls from anyone ---------------------------------------------------------------
    @rule(data=st.data())
    def raw_hypercall(self, data) -> None:
        callers = [self.root] + [c for c in self._live() if self.host.introspect.partition_info(c)["vp_mask"]
                                 and self.host.introspect.partition_info(c)["state"] == 2]
        caller = data.draw(st.sampled_from(callers), label="caller")
        vp = data.draw(st.sampled_from(caller.vps), label="vp")
        ctl = data.draw(hs.control_words(), label="control")
        decoded = Control.decode(ctl)
        ids = [p.id for p in self.host.partitions()]
        pages = list(range(0, self.host.pages, 7))
        inp = data.draw(hs.call_inputs(decoded.code, partition_ids=ids, pages=pages,
                                       rep_count=decoded.rep_count), label="input")
        if not decoded.fast:
            vp.store_input(inp)  # the guest's own stores: not part of the hypercall
        before = self.host.introspect.digest()
        result = vp.hypercall(ctl, inp if decoded.fast else b"")
        if not result.ok:
            assert self.host.introspect.digest() == before, (
                f"INV-ATOMIC: a failed hypercall ({result.status!r}) changed the state")
        shape = _binding.hv_call_shape(decoded.code)
        if well_formed(ctl) and shape["privilege"] and not caller.privileges & shape["privilege"]:
            assert result.status == HvStatus.ACCESS_DENIED, (
                f"INV-PRIV: a call without its privilege returned {result.status!r}")

    # ---- after every step ---------------------------------------------------------------------------
    @invariant()
    def isolation_holds(self) -> None:
        check_all(self.host)

