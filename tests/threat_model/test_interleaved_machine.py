"""Threat model case 47 (long random interleavings across every interface never crash the core):
one state machine that interleaves, in one host, everything the isolation machine does
(partition and memory management, raw hypercalls, ports, messages and events, grants, host
visibility) with a VMBus ring in a child's pages, written by the parent through its grant and
read by the child through its own view, each packet by the pure-Python ring or the core's batch
path, with hostile stores into the ring by the child; a save and a restore of a child's state at
the hypervisor's interface (suspend, registers, memory out and wiped, then back); and the
hypercall page placed, moved and taken away. The core's invariants (check_all, with INV-MSG,
INV-QUEUE and INV-ACCOUNT) are checked after every step by the machine it extends; the ring's
packets and a restored child's state are checked against a model as well.

The budget here is small, so that the whole suite stays short; run it longer with
`run_state_machine_as_test(InterleavedMachine, settings=...)`, or under ASan/UBSan with
`make sanitize ARGS=tests/threat_model/test_interleaved_machine.py`."""
from __future__ import annotations

from collections import deque

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import initialize, precondition, rule

from hypervisor import HvError, Register
from hypervisor.abi import PAGE_SIZE, MapFlags, PartitionState
from hypervisor.grants import own_view, release_view, view
from hypervisor.testing import strategies as hs
from hypervisor.testing.invariants import InvariantViolation
from hypervisor.testing.machine import HypervisorMachine
from vmbus.ring import IncomingRing, OutgoingRing, RingError, init_ring, packet_size

RING_GRANT = 0x7000   # the base machine's grants use ids 0..5
RING_VIEW = 0x7001
RING_PAGES = 2        # the control page and one data page
RING_BYTES = 4096 + 512   # the ring uses 512 bytes of its data page, so that packets wrap often
SAVED_REGISTERS = [Register.RAX, Register.RBX, Register.R15, Register.RIP, Register.RFLAGS, Register.CR0,
                   Register.CR3, Register.CR4, Register.GUEST_OS_ID]


def _violation(name: str, message: str) -> InvariantViolation:
    return InvariantViolation(name, message)


class Ring:
    """A ring in RING_PAGES pages of one child: the parent's writing end over its grant's view,
    the child's reading end over its own view, and the packets written and not yet read."""

    def __init__(self, child, pages):
        self.child, self.pages = child, pages
        self.writer: OutgoingRing | None = None
        self.reader: IncomingRing | None = None
        self.unread: deque[bytes] = deque()
        self.tampered = False   # someone else wrote into the ring: no model from here on
        self.image = b""        # the ring's bytes as this machine's ring rules last left them

    def bytes_now(self) -> bytes:
        return bytes(view(self.child, RING_VIEW))

    def check_untouched(self) -> None:
        """Any store into the ring between two ring steps (the child's, a save's, a restore's)
        ends the model: the ring may then be broken, never anything worse."""
        if self.bytes_now() != self.image:
            self.tampered = True

    def settle(self) -> None:
        self.image = self.bytes_now()


class InterleavedMachine(HypervisorMachine):
    """`HypervisorMachine` with rings, hypervisor-level save/restore and the hypercall page."""

    host_memory = "3MiB"

    def __init__(self) -> None:
        super().__init__()
        self.ring: Ring | None = None
        self.saved: dict[int, tuple[dict, dict, dict]] = {}  # child id -> (registers, memory, reach)
        self.ring_packets = self.ring_reads = self.restores = 0

    # ---- the ring ------------------------------------------------------------------------------
    def _ring_alive(self) -> bool:
        """Whether the ring's grant and view still stand (a deleted child, a revoked grant: the
        ring goes, and a new one may be made)."""
        r = self.ring
        if r is None:
            return False
        if (r.child.id not in {c.id for c in self._live()} or self.host.grants.get(r.child, RING_GRANT) is None
                or view(r.child, RING_VIEW) is None):
            if r.child.id in {c.id for c in self._live()}:
                for undo in (lambda: self.host.grants.get(r.child, RING_GRANT).revoke(),
                             lambda: release_view(r.child, RING_VIEW)):
                    try:
                        undo()
                    except (HvError, AttributeError):
                        pass
            self.ring = None
            return False
        return True

    @initialize(data=st.data())
    def a_guest_with_a_ring(self, data) -> None:
        """Start with a ready guest (the base machine's create_guest) and a ring in two of its
        pages that nothing else uses."""
        self.create_guest(data, vps=1, create_port=False, connect_port=False, no_post=False, no_signal=False)
        if self.children:
            self._make_ring(self.children[-1], [24, 25])

    @precondition(lambda self: self._live())
    @rule(data=st.data())
    def make_ring(self, data) -> None:
        """A new ring in any two pages of a child (its SIM page, a hypercall block page: all the
        same to the ring, which then finds itself tampered with)."""
        if self._ring_alive():
            return
        child = data.draw(st.sampled_from(self.children), label="ring child")
        rw = sorted(g for g, (_, rights) in self.host.introspect.reach(child).items()
                    if rights & (MapFlags.READABLE | MapFlags.WRITABLE) == MapFlags.READABLE | MapFlags.WRITABLE)
        if len(rw) < RING_PAGES:
            return
        self._make_ring(child, data.draw(st.lists(st.sampled_from(rw), min_size=RING_PAGES, max_size=RING_PAGES,
                                                  unique=True), label="ring pages"))

    def _make_ring(self, child, pages: list[int]) -> None:
        try:
            grant = self.host.grants.create(child, RING_GRANT, pages)
        except HvError:
            return
        try:
            mine = own_view(child, RING_VIEW, pages)
        except HvError:
            grant.revoke()
            return
        ring = Ring(child, pages)
        init_ring(grant.view[:RING_BYTES])
        ring.writer, ring.reader = OutgoingRing(grant.view[:RING_BYTES]), IncomingRing(mine[:RING_BYTES])
        self.untrusted[child.id].update(pages)   # ring bytes, never a SIM slot to judge
        ring.settle()
        self.ring = ring

    @precondition(lambda self: self.ring is not None)
    @rule(payloads=st.lists(st.binary(min_size=0, max_size=200), min_size=1, max_size=6), batch=st.booleans())
    def parent_writes_ring(self, payloads, batch: bool) -> None:
        """The parent writes packets, one by one through the Python ring or as one batch through
        the core's fast path."""
        if not self._ring_alive():
            return
        r = self.ring
        r.check_untouched()
        try:
            if batch:
                n, _ = r.writer.write_batch(payloads)
            else:
                n = 0
                for p in payloads:
                    if packet_size(len(p)) > r.writer.free_bytes:
                        break
                    r.writer.write(p)
                    n += 1
        except RingError:
            if not r.tampered:
                raise _violation("RING", "a ring nobody tampered with refused a write")
            return
        finally:
            r.settle()
        r.unread.extend(p + bytes(-len(p) % 8) for p in payloads[:n])
        self.ring_packets += n

    @precondition(lambda self: self.ring is not None)
    @rule(batch=st.booleans(), limit=st.integers(1, 8))
    def child_reads_ring(self, batch: bool, limit: int) -> None:
        """The child reads what is there, by the Python ring or the core's batch path: in order and
        byte for byte what the parent wrote, unless the ring was tampered with, when a RingError
        (the ring broken) is the only other outcome."""
        if not self._ring_alive():
            return
        r = self.ring
        r.check_untouched()
        try:
            if batch:
                got = [p.payload for p in r.reader.read_batch(limit)[0]]
            else:
                got = []
                while len(got) < limit:
                    packet = r.reader.read()
                    if packet is None:
                        break
                    got.append(packet.payload)
                r.reader.commit()
        except RingError:
            if not r.tampered:
                raise _violation("RING", "a ring nobody tampered with reported itself corrupt")
            return
        finally:
            r.settle()
        self.ring_reads += len(got)
        if r.tampered:
            return
        want = [r.unread.popleft() for _ in range(min(len(got), len(r.unread)))]
        if [bytes(g) for g in got] != want:
            raise _violation("RING", f"the child read {len(got)} packets that are not the {len(want)} written first")
        if len(got) < limit and r.unread:
            raise _violation("RING", f"{len(r.unread)} packets written were not there to read")

    @precondition(lambda self: self.ring is not None)
    @rule(ops=st.lists(st.tuples(st.booleans(), st.booleans(), st.integers(24, 200)), min_size=8, max_size=24),
          fill=st.integers(0, 255))
    def ring_traffic(self, ops, fill: int) -> None:
        """Writes and reads in a row, each by the Python ring or the core's batch path: many
        times round the ring's 512 bytes."""
        for i, (write, batch, size) in enumerate(ops):
            if write:
                self.parent_writes_ring([bytes([(fill + i + k) & 0xFF for k in range(size)])], batch)
            else:
                self.child_reads_ring(batch, 3)

    @precondition(lambda self: self._saveable())
    @rule(data=st.data())
    def save_then_restore(self, data) -> None:
        """A save and its restore in one step (apart, other rules run in between)."""
        before = set(self.saved)
        self.save_child(data)
        (pid,) = set(self.saved) - before
        self._restore(pid)

    @precondition(lambda self: self.ring is not None)
    @rule(offset=st.sampled_from([0, 4, 8, 12, 64]), value=st.integers(0, 2**32 - 1) | st.sampled_from([0, 8, 4088]))
    def child_scribbles_on_the_ring(self, offset: int, value: int) -> None:
        """A hostile guest stores into the ring's control page (an index, the mask, pending_send_sz,
        the feature bits)."""
        if not self._ring_alive():
            return
        r = self.ring
        try:
            r.child.write(r.pages[0] * PAGE_SIZE + offset, value.to_bytes(4, "little"))
        except MemoryError:
            pass

    # ---- save and restore of a child's state, at the hypervisor's interface -----------------------
    def _saveable(self):
        return [c for c in self._live() if c.id not in self.saved and c.vps
                and self._info(c)["state"] == PartitionState.INITIALIZED]

    @precondition(lambda self: self._saveable())
    @rule(data=st.data())
    def save_child(self, data) -> None:
        """As the VM worker saves: suspend the child, read its VPs' registers and every page it can
        read, then wipe every page it can write (its memory lives in the saved state now)."""
        child = data.draw(st.sampled_from(self._saveable()), label="saved child")
        self._try(self.root.suspend_partition, child)
        registers = {}
        for vp in child.vps:
            values = self._try(self.root.get_vp_registers, child, vp.index, SAVED_REGISTERS)
            if values is not None:
                registers[vp.index] = dict(zip(SAVED_REGISTERS, values))
        reach = self.host.introspect.reach(child)
        memory = {}
        for gpa, (_, rights) in reach.items():
            if rights & MapFlags.READABLE:
                memory[gpa] = child.read(gpa * PAGE_SIZE, PAGE_SIZE)
            if rights & MapFlags.WRITABLE:
                try:
                    child.write(gpa * PAGE_SIZE, bytes(PAGE_SIZE))
                except MemoryError:
                    pass   # the hypercall page: nothing of the guest's is there to wipe
                self.untrusted[child.id].add(gpa)
        self.saved[child.id] = (registers, memory, reach)

    @precondition(lambda self: self.saved)
    @rule(data=st.data())
    def restore_child(self, data) -> None:
        """Write the saved memory and registers back and resume. Where nothing changed the
        child's map meanwhile, it reads exactly what was saved and its registers are as saved."""
        live = {c.id: c for c in self._live()}
        for gone in [pid for pid in self.saved if pid not in live]:
            del self.saved[gone]
        if not self.saved:
            return
        self._restore(data.draw(st.sampled_from(sorted(self.saved)), label="restored child"))

    def _restore(self, pid: int) -> None:
        registers, memory, reach = self.saved.pop(pid)
        child = self.host.partition(pid)
        for gpa, data_ in memory.items():
            try:
                child.write(gpa * PAGE_SIZE, data_)
            except MemoryError:
                pass
            self.untrusted[pid].add(gpa)
        for index, values in registers.items():
            if self._has_vp(pid, index):
                self._try(self.root.set_vp_registers, child, index, values)
        self._try(self.root.resume_partition, child)
        self.restores += 1
        if self.host.introspect.reach(child) != reach:
            return  # its map changed while it was saved: what comes back is what still fits
        overlay = _overlay_page(self, child)
        for gpa, data_ in memory.items():
            if gpa != overlay and reach[gpa][1] & MapFlags.WRITABLE and child.read(gpa * PAGE_SIZE, PAGE_SIZE) != data_:
                raise _violation("RESTORE", f"partition {pid} GPA page {gpa:#x} is not what was saved")
        for index, values in registers.items():
            if self._has_vp(pid, index):
                now = self.root.get_vp_registers(child, index, list(values))
                if now != list(values.values()):
                    raise _violation("RESTORE", f"partition {pid} VP {index}: registers {now} are not the saved "
                                                f"{list(values.values())}")

    # ---- the hypercall page ------------------------------------------------------------------------
    @rule(data=st.data(), enable=hs.rarely(4).map(lambda off: not off))
    def place_hypercall_page(self, data, enable: bool) -> None:
        """A guest sets its guest OS id and puts its hypercall page on one of its pages (not one
        the machine's hypercall blocks or SynIC pages use), moves it, or takes it away; a store
        there then faults and leaves the page as it was."""
        part = data.draw(st.sampled_from(self._callers()), label="partition")
        vp = part.vps[0]
        busy = set(self._scratch(part.id)) | {g for (pid, _), ps in self.child_synic_pages.items()
                                              if pid == part.id for g in ps}
        if part.is_root:
            busy |= {g for ps in self.root_synic_pages.values() for g in ps}
            pages = self._root_pages(1) or []
        else:
            pages = [g for g in sorted(self.host.introspect.reach(part)) if g not in busy]
        if self.ring is not None and self.ring.child.id == part.id:
            pages = [g for g in pages if g not in self.ring.pages]
        if not pages:
            return
        gpfn = data.draw(st.sampled_from(pages), label="page")
        self._try(vp.set_registers, {Register.GUEST_OS_ID: 1 << 63 | 0x1 << 56})
        self._try(vp.set_registers, {Register.HYPERCALL: gpfn << 12 | int(enable)})
        self.untrusted[part.id].add(gpfn)
        overlay = _overlay_page(self, part)
        if overlay is not None:
            before = part.read(overlay * PAGE_SIZE, PAGE_SIZE)
            try:
                part.write(overlay * PAGE_SIZE + 64, b"\x90" * 8)
            except MemoryError:
                pass
            else:
                raise _violation("OVERLAY", f"partition {part.id} wrote its hypercall page")
            if part.read(overlay * PAGE_SIZE, PAGE_SIZE) != before or before[:4] != b"\x0f\x01\xc1\xc3":
                raise _violation("OVERLAY", f"partition {part.id}'s hypercall page changed")


def _overlay_page(machine: InterleavedMachine, part) -> int | None:
    from hypervisor import _binding
    gpa = _binding.hv_partition_overlay_gpa(machine.host._h, part.id)
    return None if gpa is None else gpa // PAGE_SIZE


TestInterleaved = InterleavedMachine.TestCase
TestInterleaved.settings = settings(max_examples=20, stateful_step_count=30, deadline=None,
                                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def test_a_long_run_interleaves_every_interface():
    """The machine really mixes them: one fixed, seeded run of many steps makes ring packets, reads
    them back, restores children and passes the invariants throughout."""
    from hypothesis.stateful import run_state_machine_as_test
    totals = {"packets": 0, "reads": 0, "restores": 0}

    class Counted(InterleavedMachine):
        def teardown(self) -> None:
            totals["packets"] += self.ring_packets
            totals["reads"] += self.ring_reads
            totals["restores"] += self.restores

    run_state_machine_as_test(Counted, settings=settings(max_examples=20, stateful_step_count=50, deadline=None,
                                                         derandomize=True, database=None,
                                                         suppress_health_check=list(HealthCheck)))
    assert totals["packets"] > 0 and totals["reads"] > 0 and totals["restores"] > 0, totals
