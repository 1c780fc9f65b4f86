"""A child's dirty log (native/dirty.c): SetPartitionProperty(GPA_PAGE_ACCESS_TRACKING) turns it on
and off, HvCallGetGpaPagesAccessStates (0x00C9) reads and clears it. Every kind of write the core
makes into the child's memory marks exactly its pages; pinned writable views read dirty while they
live and once after; privileges, bad ids, bad ranges and bad flags fail and change nothing.

Layout (tests/hypervisor/test_synic.py's guest): a child with 32 mapped GPA pages; VP 0's
hypercall input and output pages are 0 and 1, its SIM page 16 and its SIEF page 17.
"""
from __future__ import annotations

import struct

import pytest
from hypothesis import settings, strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, initialize, invariant, rule

from hypervisor import HvError, HvStatus, Privilege
from hypervisor.abi import MAX_GPA_PAGES, PAGE_SIZE, CallCode, HostVisibility, PartitionProperty, control
from hypervisor.dirty import CLEAR_DIRTY, SET_DIRTY, DirtyLog
from hypervisor.grants import modify_host_visibility, own_view, release_view
from hypervisor.testing.invariants import check_all

from .conftest import expect, new_host, unchanged
from .test_synic import EVENT_CONN, new_guest, post, siefp_gpfn, simp_gpfn, wire

S = HvStatus
CODE = CallCode.GET_GPA_PAGES_ACCESS_STATES
TRACKING = PartitionProperty.GPA_PAGE_ACCESS_TRACKING
PAGES = 32


@pytest.fixture
def host():
    return new_host()


@pytest.fixture
def child(host):
    c = new_guest(host)
    wire(host, c)
    return c


@pytest.fixture
def log(host, child) -> DirtyLog:
    log = host.dirty_log(child)
    log.start()
    return log


def header(pid: int, first: int, flags: int = CLEAR_DIRTY) -> bytes:
    return struct.pack("<QQQ", pid, flags, first)


# ---- the call and the property ------------------------------------------------------------------

def test_the_call_is_in_the_dispatch_table_as_linux_lays_it_out():
    from hypervisor import _binding
    shape = _binding.hv_call_shape(0x00C9)
    assert CODE == 0x00C9 and _binding.hv_call_name(0x00C9) == "GetGpaPagesAccessStates"
    assert (shape["header_size"], shape["in_elem_size"], shape["out_size"], shape["out_elem_size"], shape["rep"],
            shape["fast_ok"]) == (24, 0, 0, 1, True, False)
    assert shape["privilege"] == 1 << Privilege.CREATE_PARTITIONS
    assert TRACKING == 0x00050005


def test_tracking_is_off_until_started_and_off_means_no_log(host, child):
    log = host.dirty_log(child)
    assert not log.on
    child.write(5 * PAGE_SIZE, b"before")
    with pytest.raises(HvError) as info:
        log.take(0, PAGES)
    assert info.value.status == S.INVALID_PARTITION_STATE
    log.start()
    assert log.on and log.take(0, PAGES) == []          # starts clean: the write before it is not there
    child.write(6 * PAGE_SIZE, b"during")
    log.start()                                          # on again: keeps what it holds
    assert log.peek(0, PAGES) == [6]
    log.stop()
    assert not log.on
    log.start()
    assert log.take(0, PAGES) == []                      # stopping dropped the log


def test_property_values_other_than_on_and_off_are_refused(host, child):
    for value in (2, 4, 6, 1 << 3, 1 << 63):
        with pytest.raises(HvError) as info:
            host.root.set_partition_property(child, TRACKING, value)
        assert info.value.status == S.PROPERTY_VALUE_OUT_OF_RANGE
    assert not host.dirty_log(child).on


# ---- every kind of write marks exactly its pages ---------------------------------------------------

def test_guest_stores_mark_exactly_the_pages_they_touch_and_take_clears(log, child):
    child.write(3 * PAGE_SIZE + 4000, bytes(200))        # crosses from page 3 into 4
    child.write(9 * PAGE_SIZE, b"x")
    assert log.peek(0, PAGES) == [3, 4, 9]
    assert log.take(4, 10) == [4, 9]                     # only the range asked for is cleared
    assert log.take(0, PAGES) == [3]
    assert log.take(0, PAGES) == []
    child.read(3 * PAGE_SIZE, 100)                       # loads mark nothing
    assert log.take(0, PAGES) == []


def test_a_failed_store_marks_nothing(log, child):
    with pytest.raises(MemoryError):
        child.write(PAGES * PAGE_SIZE - 4, bytes(8))     # its second page is not mapped
    assert log.take(0, PAGES + 1) == []


def test_hypercall_output_marks_the_callers_output_page(log, child):
    assert child.get_partition_id() == child.id
    assert log.take(0, PAGES) == [1]


def test_synic_message_and_event_flag_deliveries_mark_their_pages(host, log, child):
    post(host, b"hello")
    assert log.take(0, PAGES) == [simp_gpfn()]
    host.root.signal_event(EVENT_CONN, 2)
    assert log.take(0, PAGES) == [siefp_gpfn()]


def test_parent_copies_into_host_visible_pages_mark_the_pages_written(host, log, child):
    modify_host_visibility(child, [8, 9, 10], HostVisibility.READ_WRITE)
    log.take(0, PAGES)                                   # the hypercall's input page
    host.grants.write_visible(child, [8, 9, 10], PAGE_SIZE - 3, b"abcdef")   # the end of 8, the start of 9
    assert log.take(0, PAGES) == [8, 9]
    host.grants.read_visible(child, [8, 9, 10], 0, 3 * PAGE_SIZE)
    assert log.take(0, PAGES) == []


def test_a_new_mapping_reads_dirty_once(host, log, child):
    host.root.map_gpa_pages(child, 40, host.root_memory.allocate(2))
    assert log.take(0, 64) == [40, 41]
    assert log.take(0, 64) == []
    host.root.unmap_gpa_pages(child, 40, 2)              # an unmapped page has nothing to send
    assert log.take(0, 64) == []


def test_a_grant_reads_dirty_while_it_lives_and_once_after(host, log, child):
    grant = host.grants.create(child, 7, [20, 21])
    host.root.write(grant.pfns[0] * PAGE_SIZE, b"parent copy")   # the parent's copy into the child
    grant.view[PAGE_SIZE:PAGE_SIZE + 3] = b"dma"                   # a store the core does not see
    assert log.take(0, PAGES) == [20, 21]
    assert log.take(0, PAGES) == [20, 21]                          # every read while it lives
    assert log.take(21, 1) == [21]
    grant.revoke()
    assert log.take(0, PAGES) == [20, 21]                          # once more for the stores before
    assert log.take(0, PAGES) == []


def test_an_own_view_reads_dirty_while_it_lives_and_once_after(log, child):
    view = own_view(child, 3, [12, 14])
    view[0:4] = b"ring"
    assert log.take(0, PAGES) == [12, 14]
    assert log.take(13, 1) == []                                   # not a page of the view
    release_view(child, 3)
    assert log.take(0, PAGES) == [12, 14]
    assert log.take(0, PAGES) == []


def test_a_read_only_visible_view_marks_nothing_and_a_read_write_one_does(host, log, child):
    modify_host_visibility(child, [8, 9], HostVisibility.READ_WRITE)
    log.take(0, PAGES)
    ro = host.grants.visible_view(child, 1, [8])
    assert log.take(0, PAGES) == []
    rw = host.grants.visible_view(child, 2, [9], writable=True)
    assert log.take(0, PAGES) == [9] and log.take(0, PAGES) == [9]
    ro.release()
    rw.release()
    assert log.take(0, PAGES) == [9]
    assert log.take(0, PAGES) == []


def test_set_dirty_marks_the_mapped_pages_of_the_range(log, child):
    log.mark(30, 4)                                      # 32 and 33 are not mapped
    assert log.take(0, 40) == [30, 31]


def test_logs_of_two_children_do_not_mix(host, log, child):
    other = new_guest(host)
    other_log = host.dirty_log(other)
    other_log.start()
    other.write(5 * PAGE_SIZE, b"other")
    child.write(6 * PAGE_SIZE, b"child")
    assert (log.take(0, PAGES), other_log.take(0, PAGES)) == ([6], [5])


def test_a_long_range_goes_in_several_invocations(host, log, child):
    host.root.map_gpa_pages(child, 5000, host.root_memory.allocate(1))
    assert log.take(0, 6000) == [5000]                   # 6000 pages: two blocks, each in several reps


def test_deleting_a_tracked_child_frees_its_log(host, log, child):
    child.write(0, b"x")
    root = host.root
    root.finalize_partition(child)
    root.delete_partition(child)
    check_all(host)


# ---- privileges and errors: decode fully, then apply ---------------------------------------------

def _refused(vp, data: bytes, status: HvStatus, log: DirtyLog, *, count: int = 4):
    # Pages 0 and 1 are left out: a child caller's own store of its input block marks page 0.
    before = log.peek(2, PAGES - 2)
    assert before == [3]
    expect(vp, control(CODE, rep_count=count), data, status)
    assert log.peek(2, PAGES - 2) == before, "a failed call changed the log"


def test_a_child_calling_gets_access_denied(host, log, child):
    child.write(3 * PAGE_SIZE, b"x")
    _refused(child.vp(0), header(child.id, 0), S.ACCESS_DENIED, log)


def test_bad_partition_ids(host, log, child):
    child.write(3 * PAGE_SIZE, b"x")
    root = host.root
    for pid in (0, root.id, 0xFFFFFFFFFFFFFFFF, child.id + 100):
        _refused(root.vp(0), header(pid, 0), S.INVALID_PARTITION_ID, log)


@pytest.mark.parametrize("first, count", [(MAX_GPA_PAGES, 1), (MAX_GPA_PAGES - 2, 4), ((1 << 63), 1)])
def test_a_range_outside_the_gpa_space_is_invalid_parameter(host, log, child, first, count):
    child.write(3 * PAGE_SIZE, b"x")
    _refused(host.root.vp(0), header(child.id, first), S.INVALID_PARAMETER, log, count=count)


@pytest.mark.parametrize("flags", [CLEAR_DIRTY | SET_DIRTY, 0x1, 0x2, 0x10, 1 << 63])
def test_bad_flags_are_invalid_parameter(host, log, child, flags):
    child.write(3 * PAGE_SIZE, b"x")
    _refused(host.root.vp(0), header(child.id, 0, flags), S.INVALID_PARAMETER, log)


def test_a_failed_call_changes_no_state(host, log, child):
    with unchanged(host):
        expect(host.root.vp(0), control(CODE, rep_count=4), header(child.id, 0, 0x10), S.INVALID_PARAMETER)


# ---- a state machine: writes, views and takes against a model of the log ------------------------

class DirtyLogMachine(RuleBasedStateMachine):
    """The model: the set of pages written since their last take, and the live writable views.
    A read returns (written | pages of live views) within its range; a take clears the written
    ones in its range; a released view's pages count as written."""

    views = Bundle("views")

    @initialize()
    def setup(self):
        self.host = new_host()
        self.child = new_guest(self.host, synic=False)
        self.log = self.host.dirty_log(self.child)
        self.log.start()
        self.on = True
        self.written: set[int] = set()
        self.live: dict[int, list[int]] = {}
        self.next_view = 1

    def _pinned(self) -> set[int]:
        return {p for pages in self.live.values() for p in pages}

    @rule(page=st.integers(2, PAGES - 1), offset=st.integers(0, PAGE_SIZE - 1), length=st.integers(1, 6000))
    def write(self, page, offset, length):
        gpa = page * PAGE_SIZE + offset
        length = min(length, PAGES * PAGE_SIZE - gpa)
        self.child.write(gpa, bytes([page]) * length)
        if self.on:
            self.written |= set(range(page, (gpa + length - 1) // PAGE_SIZE + 1))

    @rule(first=st.integers(0, PAGES - 1), count=st.integers(0, PAGES), clear=st.booleans())
    def read(self, first, count, clear):
        count = min(count, PAGES - first)
        if not self.on and count:   # (an empty range makes no call)
            with pytest.raises(HvError):
                self.log.take(first, count)
            return
        span = set(range(first, first + count)) if self.on else set()
        got = self.log.take(first, count) if clear else self.log.peek(first, count)
        assert got == sorted((self.written | self._pinned()) & span)
        if clear:
            self.written -= span

    @rule(target=views, pages=st.lists(st.integers(2, PAGES - 1), min_size=1, max_size=4, unique=True))
    def open_view(self, pages):
        vid = self.next_view
        self.next_view += 1
        own_view(self.child, vid, pages)
        self.live[vid] = pages
        return vid

    @rule(vid=consumes(views))
    def close_view(self, vid):
        release_view(self.child, vid)
        pages = self.live.pop(vid)
        if self.on:
            self.written |= set(pages)

    @rule()
    def toggle(self):
        if self.on:
            self.log.stop()
            self.written = set()
        else:
            self.log.start()
        self.on = not self.on

    @invariant()
    def tracking_matches(self):
        if hasattr(self, "log"):
            assert self.log.on == self.on


DirtyLogMachine.TestCase.settings = settings(max_examples=300, stateful_step_count=30, deadline=None)
test_the_log_follows_the_model = DirtyLogMachine.TestCase


# ---- the memory-counter workload (threat model case 44's guest) -------------------------------------

def test_the_memory_counter_shows_its_pages_dirty_each_pass():
    from drivers.ic import HEARTBEAT
    from drivers.registry import discover
    from hypervisor import Host
    from partitions.vm import DeviceSlot, VirtualMachine
    from partitions.vmbus_parent import ParentVmbus
    from partitions.worker import VmSpec
    from partitions.workloads import memory_counter

    host = Host(logical_processors=2, memory="128MiB", seed=44)
    workload = memory_counter(pages=48, interval="300us", page_work="10us")
    vm = VirtualMachine(host, ParentVmbus(host, vp_index=1), discover(), VmSpec("counter", memory="2MiB", processors=1),
                        devices=[DeviceSlot(HEARTBEAT)], workload=workload)
    vm.start()
    host.run_for(5_000_000)
    log = host.dirty_log(vm.partition)
    log.start()
    region = set(workload.region)
    assert len(region) == 48
    for _ in range(4):
        before = list(workload.written)
        host.run_for(1_000_000)                          # more than one round (48 x 10 us + 300 us)
        assert all(a > b for a, b in zip(workload.written, before))
        dirty = set(log.take(0, 512))
        assert region <= dirty, f"counter pages not in the log: {sorted(region - dirty)}"
        assert len(dirty) < 512                           # the log is not simply everything
