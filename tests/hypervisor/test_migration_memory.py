"""What live migration needs from the core: the parent's batched copies of a child's pages
(native/migration.c) and absent pages fetched at first touch by the parent's pager, for post-copy
(native/pager.c). docs/dirty-log.md describes both.

Layout (tests/hypervisor/test_synic.py's guest): a child with 32 mapped GPA pages; VP 0's
hypercall input and output pages are 0 and 1, its SIM page 16 and its SIEF page 17.
"""
from __future__ import annotations

import array

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from hypervisor import Host, HvError, HvStatus
from hypervisor.abi import MAX_GPA_PAGES, PAGE_SIZE

from .conftest import new_host, unchanged
from .test_synic import new_guest, wire

S = HvStatus
PAGES = 32


@pytest.fixture
def host():
    return new_host()


@pytest.fixture
def child(host):
    c = new_guest(host)
    wire(host, c)
    return c


def page_of(gpa_page: int, salt: int = 0) -> bytes:
    """A page whose bytes say which page it is (and which version, `salt`)."""
    return bytes((gpa_page * 7 + salt + i) % 251 for i in range(PAGE_SIZE))


def fill(child, pages) -> dict[int, bytes]:
    """Store a distinct page into each of `pages` with the guest's own stores."""
    out = {}
    for p in pages:
        out[p] = page_of(p)
        child.write(p * PAGE_SIZE, out[p])
    return out


# ---- batched reads and writes -------------------------------------------------------------------

def test_read_pages_returns_what_the_guest_reads_in_the_order_asked(host, child):
    fill(child, [3, 4, 9])
    order = [9, 3, 20, 4, 3]
    data = host.root.read_pages(child, order)
    assert data == b"".join(child.read(p * PAGE_SIZE, PAGE_SIZE) for p in order)
    assert data[2 * PAGE_SIZE:3 * PAGE_SIZE] == bytes(PAGE_SIZE)  # page 20: never written
    assert host.root.read_pages(child, array.array("Q", order)) == data
    assert host.root.read_pages(child, []) == b""


def test_read_range_is_read_pages_of_the_range(host, child):
    fill(child, [5, 6, 31])
    assert host.root.read_range(child, 4, 28) == host.root.read_pages(child, list(range(4, 32)))


def test_reading_into_a_buffer_given(host, child):
    fill(child, [7])
    buf = bytearray(2 * PAGE_SIZE)
    assert host.root.read_pages(child, [7, 8], out=buf) is buf
    assert bytes(buf[:PAGE_SIZE]) == page_of(7) and bytes(buf[PAGE_SIZE:]) == bytes(PAGE_SIZE)
    with pytest.raises(ValueError):
        host.root.read_pages(child, [7], out=bytearray(10))


def test_write_pages_stores_what_the_guest_then_reads(host, child):
    root = host.root
    root.write_pages(child, [12, 10], page_of(12) + page_of(10))
    assert child.read(10 * PAGE_SIZE, PAGE_SIZE) == page_of(10)
    assert child.read(12 * PAGE_SIZE, PAGE_SIZE) == page_of(12)
    root.write_range(child, 13, page_of(13) + page_of(14))
    assert root.read_range(child, 13, 2) == page_of(13) + page_of(14)
    with pytest.raises(ValueError):
        root.write_pages(child, [12], b"short")


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(writes=st.lists(st.tuples(st.integers(2, PAGES - 1), st.integers(0, PAGE_SIZE - 1), st.binary(min_size=1,
                                                                                                     max_size=64)),
                       max_size=12),
       order=st.lists(st.integers(0, PAGES - 1), max_size=40))
def test_round_trips_against_the_guests_own_loads(host, child, writes, order):
    for page, off, data in writes:
        child.write(page * PAGE_SIZE + off, data[:PAGE_SIZE - off])
    data = host.root.read_pages(child, order)
    assert data == b"".join(child.read(p * PAGE_SIZE, PAGE_SIZE) for p in order)
    # and back: what was read, written in the reverse order (a page named twice gets its last)
    host.root.write_pages(child, list(reversed(order)), data)
    last = {p: data[i * PAGE_SIZE:(i + 1) * PAGE_SIZE] for i, p in enumerate(reversed(order))}
    for p, page in last.items():
        assert child.read(p * PAGE_SIZE, PAGE_SIZE) == page


# ---- refusals ------------------------------------------------------------------------------------

@pytest.mark.parametrize("pages", [[3, PAGES], [PAGES + 100], [MAX_GPA_PAGES], [2**64 - 1]])
def test_a_page_the_child_does_not_map_refuses_the_whole_call(host, child, pages):
    root = host.root
    data = b"\x55" * (PAGE_SIZE * len(pages))
    for call in (lambda: root.read_pages(child, pages), lambda: root.write_pages(child, pages, data)):
        with unchanged(host):
            with pytest.raises(HvError) as e:
                call()
        assert e.value.status == S.INVALID_PARAMETER and f"{pages[-1]:#x}" in str(e.value)


def test_a_range_past_the_map_or_the_gpa_space_is_refused(host, child):
    root = host.root
    for first, count in [(30, 3), (MAX_GPA_PAGES - 1, 2), (MAX_GPA_PAGES, 1)]:
        with unchanged(host):
            with pytest.raises(HvError) as e:
                root.read_range(child, first, count)
            assert e.value.status == S.INVALID_PARAMETER
            with pytest.raises(HvError):
                root.write_range(child, first, bytes(count * PAGE_SIZE))


def test_only_the_childs_parent_may_copy(host, child):
    other = new_guest(host)
    data = bytes(PAGE_SIZE)
    for caller, target in [(other, child), (child, child), (host.root, host.root), (child, host.root)]:
        for call in (lambda: caller.read_pages(target, [3]), lambda: caller.write_pages(target, [3], data),
                     lambda: caller.nonzero_pages(target, 0, PAGES), lambda: caller.set_absent(target, 3, 1)):
            with unchanged(host):
                with pytest.raises(HvError) as e:
                    call()
            assert e.value.status == S.INVALID_PARTITION_ID


# ---- the dirty log and zero pages ------------------------------------------------------------------

def test_write_pages_sets_the_dirty_log_like_any_write(host, child):
    log = host.dirty_log(child)
    log.start()
    host.root.write_pages(child, [9, 4], page_of(9) + bytes(PAGE_SIZE))  # page 4: zeros onto zeros
    host.root.write_range(child, 20, page_of(20))
    assert log.take(0, PAGES) == [4, 9, 20]
    host.root.read_pages(child, [9, 20])                                 # reads mark nothing
    assert log.take(0, PAGES) == []


def test_nonzero_pages_finds_exactly_the_pages_with_a_byte_set(host, child):
    root = host.root
    child.write(5 * PAGE_SIZE + 4095, b"\1")
    child.write(7 * PAGE_SIZE, b"\1")
    child.write(7 * PAGE_SIZE, b"\0")          # written, but all zeros again
    root.write_pages(child, [30], page_of(30))
    found = root.nonzero_pages(child, 0, 1 << 20)             # unmapped pages are not there to send
    assert found == [p for p in range(PAGES) if any(child.read(p * PAGE_SIZE, PAGE_SIZE))]
    assert 5 in found and 30 in found and 7 not in found
    assert root.nonzero_pages(child, 6, 20) == []
    assert root.nonzero_pages(child, 0, 0) == []


def test_the_dirty_log_sees_a_view_made_after_a_read(host, child):
    # The log's reads index the child's writable views; a view made after one read is in the next.
    from hypervisor.grants import own_view, release_view
    log = host.dirty_log(child)
    log.start()
    assert log.take(0, PAGES) == []
    own_view(child, 5, [21, 23])
    assert log.take(0, PAGES) == [21, 23]
    assert log.peek(22, 10) == [23]
    release_view(child, 5)
    assert log.take(0, PAGES) == [21, 23]     # once more after the release
    assert log.take(0, PAGES) == []


def test_a_log_read_running_past_the_gpa_space_is_refused_before_any_block_is_read(host, child):
    top = MAX_GPA_PAGES - 4990
    host.root.map_gpa_pages(child, top, host.root_memory.allocate(1))
    log = host.dirty_log(child)
    log.start()
    child.write(top * PAGE_SIZE, b"x")
    with pytest.raises(HvError) as e:
        log.take(MAX_GPA_PAGES - 5000, 10000)   # the first block is in the space, the second runs past it
    assert e.value.status == S.INVALID_PARAMETER
    assert log.peek(top, 1) == [top]           # nothing was cleared


def test_a_log_read_over_many_blocks_finds_every_page():
    host = new_host(memory="64MiB")
    child = host.root.create_partition()
    host.root.deposit_memory(child, host.root_memory.allocate(24))  # 18 leaf tables
    host.root.initialize_partition(child)
    host.root.map_gpa_pages(child, 0, host.root_memory.allocate(9000))
    log = host.dirty_log(child)
    log.start()
    written = [0, 4094, 4095, 4096, 8190, 8191, 8999]
    for p in written:
        child.write(p * PAGE_SIZE + 100, b"x")
    assert log.peek(0, 9000) == written
    assert [p for p in range(9000) if log.states(p, 1)[0]] == written  # the call, one page at a time
    assert log.take(1, 8998) == written[1:-1]
    assert log.take(0, 9000) == [0, 8999]


# ---- absent pages (post-copy) --------------------------------------------------------------------

US, MS = 1_000, 1_000_000
FIRST = 100  # absent pages of a worker-built VM start here (its hypercall pages are 0 and 1)


def vm(host, name="vm"):
    from partitions.worker import VmSpec, VmWorker
    return VmWorker(host, VmSpec(name, memory="2MiB", processors=1)).build()


class Pager:
    """A pager that serves page_of(gpa) (or what `pages` holds), each fetch taking `ns`, and
    records every call."""

    def __init__(self, host, ns: int = 70 * US, pages: dict[int, bytes] | None = None):
        self.host, self.ns, self.pages, self.calls = host, ns, pages or {}, []

    def __call__(self, gpa_page: int):
        self.calls.append(gpa_page)
        return self.pages.get(gpa_page, page_of(gpa_page)), self.ns


def test_a_guests_load_and_store_fetch_an_absent_page_once_and_see_its_data():
    host = Host(logical_processors=1, memory="32MiB", seed=1)
    p = vm(host)
    host.root.set_absent(p, FIRST, 2)
    pager = Pager(host)
    host.set_pager(p, pager)
    seen = []

    async def guest(ctx):
        await ctx.compute(1 * MS)
        seen.append(ctx.now)
        seen.append(ctx.read(FIRST * PAGE_SIZE, PAGE_SIZE))            # a load: fetched
        ctx.write((FIRST + 1) * PAGE_SIZE + 10, b"abc")                 # a store: fetched, then stored
        seen.append(ctx.read(FIRST * PAGE_SIZE, PAGE_SIZE))            # present now: no fetch
        await ctx.compute(1 * MS)
        seen.append(ctx.now)

    p.vp(0).run(guest)
    host.root.resume_partition(p)
    host.run("10ms")
    assert pager.calls == [FIRST, FIRST + 1]
    assert seen[1] == seen[2] == page_of(FIRST)
    expected = bytearray(page_of(FIRST + 1))
    expected[10:13] = b"abc"
    assert p.read((FIRST + 1) * PAGE_SIZE, PAGE_SIZE) == expected
    # the stall: its next step started 140 us later, and the VP did not run meanwhile
    assert seen[0] == 1 * MS and seen[3] == 2 * MS + 2 * pager.ns
    assert host.introspect.run_time_ns(p) == 2 * MS
    stats = host.pager_stats(p)
    assert stats == {"absent": 0, "faults": 2, "failures": 0, "stall_ns": 2 * pager.ns, "unattributed": 0}
    assert host.root.absent_pages(p, 0, 512) == []


def test_an_absent_page_costs_nothing_until_touched_and_others_never_ask():
    host = Host(logical_processors=1, memory="32MiB", seed=1)
    p = vm(host)
    host.root.set_absent(p, FIRST, 4)
    pager = Pager(host)
    host.set_pager(p, pager)
    p.write(50 * PAGE_SIZE, b"present")
    assert p.read(50 * PAGE_SIZE, 7) == b"present" and pager.calls == []
    assert host.root.absent_pages(p, 0, 512) == [FIRST, FIRST + 1, FIRST + 2, FIRST + 3]
    assert host.pager_stats(p)["absent"] == 4


def test_a_synic_message_into_an_absent_sim_page_fetches_it_first(host, child):
    from .test_synic import post, slot
    # The SIM page as the source host left it: SINT 2's slot free, SINT 3's holding a message.
    sim = bytearray(PAGE_SIZE)
    sim[3 * 256:4 * 256] = page_of(16)[:256]
    pager = Pager(host, ns=30 * US, pages={16: bytes(sim)})
    host.set_pager(child, pager)
    host.root.set_absent(child, 16, 2)                                  # VP 0's SIM and SIEF pages
    post(host, b"hello")
    assert pager.calls == [16]
    assert slot(child).payload.startswith(b"hello")
    assert child.read(16 * PAGE_SIZE + 3 * 256, 256) == page_of(16)[:256]  # SINT 3's slot: the pager's
    # the delivery was for the child's VP 0: the fetch stalls it, not the poster
    assert host.pager_stats(child) == {"absent": 1, "faults": 1, "failures": 0, "stall_ns": 30 * US,
                                       "unattributed": 0}


def _tick_guest_acknowledging(absent: bool):
    """A child whose VP 0 runs the built-in tick guest, its SIM page absent (a 500 us fetch) or not;
    the root posts it a message at 0. Returns (host, child, when the slot was seen empty)."""
    from .test_synic import post, slot
    host = new_host()
    child = new_guest(host)
    wire(host, child)
    child.vp(0).run_builtin("tick", work="20us")
    host.root.resume_partition(child)
    if absent:
        host.set_pager(child, Pager(host, ns=500 * US, pages={16: bytes(PAGE_SIZE)}))
        host.root.set_absent(child, 16, 1)
    post(host, b"tick")
    for t in range(10 * US, 2 * MS, 10 * US):
        host.run(t)
        if slot(child).empty:
            return host, child, t
    raise AssertionError("the tick guest never acknowledged the message")


def test_a_tick_guest_waits_out_the_fetch_of_its_sim_page_before_it_handles_the_message():
    # A built-in guest takes no steps: the stall holds its wake-up back instead, off its LP.
    host, child, done = _tick_guest_acknowledging(absent=True)
    _, plain_child, plain_done = _tick_guest_acknowledging(absent=False)
    assert plain_done < 100 * US and done == plain_done + 500 * US
    assert host.introspect.run_time_ns(child) == plain_child.host.introspect.run_time_ns(plain_child)
    assert host.pager_stats(child)["stall_ns"] == 500 * US


def test_hypercall_blocks_in_absent_pages_are_fetched_for_the_calling_vp(host, child):
    from hypervisor import Register
    pager = Pager(host, ns=5 * US)
    host.set_pager(child, pager)
    host.root.set_absent(child, 0, 2)                                   # VP 0's input and output pages
    assert child.vp(0).get_registers([Register.SIMP]) == [(16 << 12) | 1]
    assert pager.calls == [0, 1]
    stats = host.pager_stats(child)
    # the input block's store is the guest's (no guest runs here: nobody to stall); the output page
    # is the core's access for the calling VP
    assert stats["faults"] == 2 and stats["unattributed"] == 1 and stats["stall_ns"] == 5 * US


def test_a_grant_over_absent_pages_fetches_them_before_devices_store_into_it(host, child):
    pager = Pager(host)
    host.set_pager(child, pager)
    host.root.set_absent(child, 20, 3)
    grant = host.grants.create(child, 7, [22, 20])
    assert pager.calls == [22, 20]
    assert bytes(grant.view) == page_of(22) + page_of(20)
    assert host.root.absent_pages(child, 0, PAGES) == [21]
    # a page made host-visible is fetched first too: the parent then reaches it without the core
    from hypervisor.abi import HostVisibility
    from hypervisor.grants import modify_host_visibility
    modify_host_visibility(child, [21], HostVisibility.READ_WRITE)
    assert pager.calls == [22, 20, 21]
    assert host.grants.read_visible(child, [21], 0, 8) == page_of(21)[:8]


def test_set_absent_refuses_pages_unmapped_pinned_or_host_visible(host, child):
    from hypervisor.abi import HostVisibility
    from hypervisor.grants import modify_host_visibility
    host.grants.create(child, 1, [24])
    modify_host_visibility(child, [25], HostVisibility.READ_ONLY)
    for first, count, status, bad in [(30, 3, S.INVALID_PARAMETER, 32), (20, 5, S.OBJECT_IN_USE, 24),
                                      (25, 1, S.OBJECT_IN_USE, 25), (MAX_GPA_PAGES, 1, S.INVALID_PARAMETER, None)]:
        with unchanged(host):
            with pytest.raises(HvError) as e:
                host.root.set_absent(child, first, count)
        assert e.value.status == status and (bad is None or f"{bad:#x}" in str(e.value))
    assert host.root.absent_pages(child, 0, PAGES) == []
    before = host.introspect.digest()
    host.root.set_absent(child, 26, 1)      # the marks are state: a refusal above would have shown
    assert host.introspect.digest() != before


def test_the_parent_supplies_pages_without_the_pager_and_reads_through_it(host, child):
    root = host.root
    pager = Pager(host)
    host.set_pager(child, pager)
    root.set_absent(child, 20, 4)
    root.page_in(child, 20, page_of(20, 1))
    root.write_pages(child, [21], page_of(21, 1))
    root.write_range(child, 22, bytes(PAGE_SIZE))                     # zeros are a page's contents too
    assert pager.calls == [] and root.absent_pages(child, 0, PAGES) == [23]
    assert child.read(20 * PAGE_SIZE, PAGE_SIZE) == page_of(20, 1) and child.read(22 * PAGE_SIZE, 4) == bytes(4)
    assert 23 in root.nonzero_pages(child, 0, PAGES)                   # unknown contents: to be sent
    assert root.read_pages(child, [23]) == page_of(23)                 # the parent's read fetches it
    assert pager.calls == [23] and host.pager_stats(child)["unattributed"] == 1


def test_an_unmapped_absent_page_is_forgotten(host, child):
    root = host.root
    root.set_absent(child, 28, 4)
    root.unmap_gpa_pages(child, 28, 2)
    assert host.pager_stats(child)["absent"] == 2 and root.absent_pages(child, 0, PAGES) == [30, 31]


def test_without_a_pager_or_with_one_that_fails_the_access_fails_as_a_bad_gpa(host, child):
    host.root.set_absent(child, 20, 1)
    with pytest.raises(MemoryError):
        child.read(20 * PAGE_SIZE, 1)                                   # no pager
    for bad in (lambda g: 1 / 0, lambda g: b"short", lambda g: (page_of(g), -1), lambda g: None):
        host.set_pager(child, bad)
        with pytest.raises(MemoryError):
            child.write(20 * PAGE_SIZE, b"x")
    assert host.pager_failures[child.id][0] == 20
    assert isinstance(host.pager_failures[child.id][1], TypeError)     # the last one's: None is no page
    assert host.pager_stats(child)["failures"] == 5 and host.root.absent_pages(child, 0, PAGES) == [20]
    host.set_pager(child, Pager(host))
    assert child.read(20 * PAGE_SIZE, 4) == page_of(20)[:4]


def test_a_failing_pager_crashes_only_its_vm():
    host = Host(logical_processors=2, memory="32MiB", seed=1)
    a, b = vm(host, "a"), vm(host, "b")
    host.root.set_absent(a, FIRST, 1)
    host.root.set_absent(b, FIRST, 1)

    def lost(gpa_page):
        raise ConnectionError("the source host is gone")

    host.set_pager(a, lost)
    host.set_pager(b, Pager(host))
    passes = {a.id: 0, b.id: 0}

    async def guest(ctx):
        while True:
            await ctx.compute(100 * US)
            ctx.read(FIRST * PAGE_SIZE, 8)
            passes[ctx.partition.id] += 1

    crashed = []
    host.on_guest_error = lambda pid, vp, err: crashed.append((pid, vp, err.detail))
    for p in (a, b):
        p.vp(0).run(guest)
        host.root.resume_partition(p)
    host.run("10ms")
    assert crashed == [(a.id, 0, crashed[0][2])] and crashed[0][2].startswith("MemoryError")
    assert passes[a.id] == 0 and passes[b.id] >= 90
    assert isinstance(host.pager_failures[a.id][1], ConnectionError)
    assert host.pager_stats(a)["failures"] == 1 and host.pager_stats(b)["failures"] == 0


def _post_copy_run(absent: list[int], accesses, ns: int):
    """A VM with `absent` pages (of FIRST..FIRST+15) whose guest makes `accesses` (page, offset,
    data or None for a load) then computes 1 ms; returns (loads seen, pager calls, end time, host, vm)."""
    host = Host(logical_processors=1, memory="32MiB", seed=3)
    p = vm(host)
    for page in range(FIRST, FIRST + 16):
        host.root.write_pages(p, [page], page_of(page, 1))             # what arrived before the switch
    for page in absent:
        host.root.set_absent(p, page, 1)
    pager = Pager(host, ns=ns)
    host.set_pager(p, pager)
    loads, end = [], []

    async def guest(ctx):
        for page, off, data in accesses:
            if data is None:
                loads.append(ctx.read(page * PAGE_SIZE + off, 16))
            else:
                ctx.write(page * PAGE_SIZE + off, data)
        await ctx.compute(1 * MS)
        end.append(ctx.now)

    p.vp(0).run(guest)
    host.root.resume_partition(p)
    host.run("100ms")
    return loads, pager.calls, end[0], host, p


@settings(max_examples=25, deadline=None)
@given(absent=st.sets(st.integers(FIRST, FIRST + 15)),
       accesses=st.lists(st.tuples(st.integers(FIRST, FIRST + 15), st.integers(0, PAGE_SIZE - 16),
                                   st.one_of(st.none(), st.binary(min_size=1, max_size=16))), max_size=30),
       ns=st.integers(0, 200 * US))
def test_every_page_the_guest_sees_is_what_the_pager_supplied(absent, accesses, ns):
    loads, calls, end, host, p = _post_copy_run(sorted(absent), accesses, ns)
    # the model: a present page holds page_of(page, 1), an absent one what the pager supplies (page_of(page))
    memory = {page: bytearray(page_of(page) if page in absent else page_of(page, 1)) for page in range(FIRST, FIRST + 16)}
    first_touch, expected_loads = [], []
    for page, off, data in accesses:
        if page in absent and page not in first_touch:
            first_touch.append(page)
        if data is None:
            expected_loads.append(bytes(memory[page][off:off + 16]))
        else:
            memory[page][off:off + len(data)] = data
    assert loads == expected_loads
    assert calls == first_touch                                         # each absent page once, at first touch
    assert end == 1 * MS + ns * len(first_touch)                        # the stall: every fetch, in full
    assert host.pager_stats(p)["stall_ns"] == ns * len(first_touch)
    assert host.root.absent_pages(p, FIRST, 16) == sorted(absent - set(first_touch))
    for page in range(FIRST, FIRST + 16):
        if page not in absent or page in first_touch:
            assert p.read(page * PAGE_SIZE, PAGE_SIZE) == memory[page]


def test_a_run_with_stalls_is_deterministic():
    accesses = [(FIRST + 3, 0, None), (FIRST + 5, 8, b"x"), (FIRST + 3, 0, None)]
    one = _post_copy_run([FIRST + 3, FIRST + 5], accesses, 40 * US)
    two = _post_copy_run([FIRST + 3, FIRST + 5], accesses, 40 * US)
    none = _post_copy_run([], accesses, 40 * US)
    assert one[3].trace_digest() == two[3].trace_digest() != none[3].trace_digest()
    assert one[2] == none[2] + 80 * US


def test_a_host_with_a_pager_is_still_collected():
    import gc
    import weakref
    from hypervisor import _binding
    host = new_host()
    child = new_guest(host)
    host.set_pager(child, Pager(host))
    gone = weakref.ref(host)
    del host, child
    gc.collect()
    assert gone() is None
    other = new_host()
    other.set_pager(1, lambda g: bytes(PAGE_SIZE))          # and its entry goes at the next install
    assert all(ref() is not None for ref in _binding._PAGERS.values())
