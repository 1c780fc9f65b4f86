"""Memory hypercalls: DepositMemory, WithdrawMemory, GetMemoryBalance, MapGpaPages, UnmapGpaPages:
success paths checked through introspection, every error the core returns for them, rep
continuation, and page ownership (moves, zeroing, conservation)."""
from __future__ import annotations


import pytest

from hypervisor import CallCode, HvStatus, MapFlags, PartitionState, control
from hypervisor.abi import MAX_GPA_PAGES, PAGE_SIZE, PARTITION_ID_SELF
from hypervisor.introspect import HYPERVISOR

from .conftest import (balance_in, check_conservation, deposit_in, expect, info, make_child, map_in, new_host,
                       rejected, unmap_in, withdraw_in)

UNKNOWN_ID = 0x1234_5678


def reachable_by_anyone(host, pfn: int) -> bool:
    return any(pfn in host.introspect.reachable_pages(pid) for pid in host.introspect.partition_ids())


# ---- DepositMemory ---------------------------------------------------------------------------------

def test_deposit_memory(host, root):
    c = root.create_partition()
    root_before = info(host, root)["pages_owned"]
    pages = host.root_memory.allocate(5)
    root.write(pages[0] * PAGE_SIZE, b"root data")
    root.deposit_memory(c, pages)
    i = info(host, c)
    assert (i["pool_free"], i["pool_used"], i["pages_owned"]) == (5, 0, 0)
    assert host.introspect.pool_pages(c) == pages
    assert info(host, root)["pages_owned"] == root_before - 5
    for pfn in pages:
        assert host.introspect.owner_of(pfn) == HYPERVISOR
        assert not reachable_by_anyone(host, pfn)
        with pytest.raises(MemoryError):
            root.read(pfn * PAGE_SIZE, 8)
    assert root.get_memory_balance(c) == (5, 0)
    check_conservation(host)
    # withdrawn again, the page the root wrote comes back zeroed
    back = root.withdraw_memory(c, 5)
    assert sorted(back) == sorted(pages)
    assert root.read(pages[0] * PAGE_SIZE, PAGE_SIZE) == bytes(PAGE_SIZE)


def test_deposit_into_own_pool(host, root):
    pages = host.root_memory.allocate(2)
    root.deposit_memory(None, pages)
    assert root.get_memory_balance(None) == (2, 0)
    assert info(host, root)["pool_free"] == 2
    assert sorted(root.withdraw_memory(None, 2)) == sorted(pages)
    check_conservation(host)


def test_deposit_into_any_state(host, root, child):
    root.finalize_partition(child)
    before = info(host, child)["pool_free"]
    root.deposit_memory(child, host.root_memory.allocate(2))
    assert info(host, child)["pool_free"] == before + 2


@pytest.mark.parametrize("what", ["reserved", "last_reserved", "beyond", "far_beyond", "deposited", "mapped"])
def test_deposit_page_the_root_does_not_own(host, root, what):
    c = make_child(host)
    page = {"reserved": 0, "last_reserved": 15, "beyond": host.pages, "far_beyond": 1 << 52,
            "deposited": host.introspect.pool_pages(c)[0] if what == "deposited" else None,
            "mapped": host.introspect.reach(c)[0][0]}[what]
    good = host.root_memory.allocate(2)
    with rejected(HvStatus.INVALID_PARAMETER, root):
        root.deposit_memory(c, [good[0], page, good[1]])  # the good ones are not deposited either


@pytest.mark.parametrize("order", [[0, 0], [0, 1, 0], [1, 2, 3, 1]])
def test_deposit_duplicates(host, root, order):
    c = root.create_partition()
    pages = host.root_memory.allocate(4)
    with rejected(HvStatus.INVALID_PARAMETER, root):
        root.deposit_memory(c, [pages[i] for i in order])


@pytest.mark.parametrize("pid", [UNKNOWN_ID, 0])
def test_deposit_bad_partition(host, root, pid):
    with rejected(HvStatus.INVALID_PARTITION_ID, root):
        root.deposit_memory(pid, host.root_memory.allocate(1))


def test_deposit_into_deleted_partition(host, root):
    c = root.create_partition()
    root.delete_partition(c)
    with rejected(HvStatus.INVALID_PARTITION_ID, root):
        root.deposit_memory(c.id, host.root_memory.allocate(1))


def test_deposit_by_child_is_denied(host, root, child):
    page = host.introspect.reach(child)[3][0]  # GPA page 3, not a hypercall page
    with rejected(HvStatus.ACCESS_DENIED, child):
        child.deposit_memory(None, [3])
    with rejected(HvStatus.ACCESS_DENIED, child):
        child.deposit_memory(None, [page])


def test_deposit_failure_in_a_later_batch_keeps_the_earlier_one():
    host = new_host(reps_per_call=4)
    root, vp = host.root, host.root.vp(0)
    c = root.create_partition()
    pages = host.root_memory.allocate(10)
    pages[6] = 0  # the hypervisor's
    data = deposit_in(c.id, pages)
    expect(vp, control(CallCode.DEPOSIT_MEMORY, rep_count=10), data, reps=4)
    assert host.introspect.pool_pages(c) == pages[:4]
    expect(vp, control(CallCode.DEPOSIT_MEMORY, rep_count=10, rep_start=4), data,
           status=HvStatus.INVALID_PARAMETER, reps=4)
    assert host.introspect.pool_pages(c) == pages[:4]
    check_conservation(host)


# ---- WithdrawMemory --------------------------------------------------------------------------------

def test_withdraw_memory(host, root):
    c = root.create_partition()
    pages = host.root_memory.allocate(6)
    root.deposit_memory(c, pages)
    root_before = info(host, root)["pages_owned"]
    got = root.withdraw_memory(c, 4)
    assert got == pages[::-1][:4]  # most recently deposited first
    assert host.introspect.pool_pages(c) == pages[:2]
    assert info(host, root)["pages_owned"] == root_before + 4
    for pfn in got:
        assert host.introspect.owner_of(pfn) == root.id
    assert root.get_memory_balance(c) == (2, 0)
    check_conservation(host)


def test_withdraw_takes_only_free_pool_pages(host, root):
    c = make_child(host, pool=5, map_pages=2)  # uses 3: init, VP 0, one leaf
    assert root.get_memory_balance(c) == (2, 3)
    with rejected(HvStatus.INSUFFICIENT_MEMORY, root):
        root.withdraw_memory(c, 3)
    got = root.withdraw_memory(c, 2)
    assert len(got) == 2 and all(host.introspect.owner_of(p) == root.id for p in got)
    assert root.get_memory_balance(c) == (0, 3)
    with rejected(HvStatus.INSUFFICIENT_MEMORY, root):
        root.withdraw_memory(c, 1)
    check_conservation(host)


def test_withdraw_returns_zeroed_leaf_tables(host, root):
    c = make_child(host, pool=3, map_pages=1, gpa_base=1000)  # one leaf table, in region 1
    leaf_user = info(host, c)["pool_used"]
    root.unmap_gpa_pages(c, 1000, 1)  # region empty: its leaf table goes back to the free pool
    assert info(host, c)["pool_used"] == leaf_user - 1
    pfn = root.withdraw_memory(c, 1)[0]
    assert root.read(pfn * PAGE_SIZE, PAGE_SIZE) == bytes(PAGE_SIZE)


def test_withdraw_resumes_across_invocations():
    host = new_host(reps_per_call=4)
    root = host.root
    c = root.create_partition()
    pages = host.root_memory.allocate(10)
    root.deposit_memory(c, pages)
    before = host.introspect.counters(root)["hypercalls"]
    assert root.withdraw_memory(c, 10) == pages[::-1]
    assert host.introspect.counters(root)["hypercalls"] == before + 3


def test_withdraw_proximity_domain(host, root):
    c = root.create_partition()
    root.deposit_memory(c, host.root_memory.allocate(2))
    expect(root.vp(0), control(CallCode.WITHDRAW_MEMORY, rep_count=1), withdraw_in(c.id, proximity=1),
           status=HvStatus.INVALID_PROXIMITY_DOMAIN_INFO)


@pytest.mark.parametrize("pid", [UNKNOWN_ID, 0])
def test_withdraw_bad_partition(host, root, pid):
    with rejected(HvStatus.INVALID_PARTITION_ID, root):
        root.withdraw_memory(pid, 1)


def test_withdraw_by_child_is_denied(host, root, child):
    for target in (None, child):
        with rejected(HvStatus.ACCESS_DENIED, child):
            child.withdraw_memory(target, 1)


# ---- GetMemoryBalance ------------------------------------------------------------------------------

def test_get_memory_balance(host, root, child):
    i = info(host, child)
    assert root.get_memory_balance(child) == (i["pool_free"], i["pool_used"]) == (1, 3)
    assert root.get_memory_balance() == (0, 0)
    assert root.get_memory_balance(root) == (0, 0)


def test_get_memory_balance_errors(host, root, child):
    vp = root.vp(0)
    expect(vp, control(CallCode.GET_MEMORY_BALANCE), balance_in(child.id, proximity=2),
           status=HvStatus.INVALID_PROXIMITY_DOMAIN_INFO)
    expect(vp, control(CallCode.GET_MEMORY_BALANCE), balance_in(UNKNOWN_ID), status=HvStatus.INVALID_PARTITION_ID)
    with rejected(HvStatus.ACCESS_DENIED, child):
        child.get_memory_balance()


# ---- MapGpaPages -----------------------------------------------------------------------------------

def test_map_gpa_pages(host, root):
    c = make_child(host, pool=4, map_pages=0)
    used = info(host, c)["pool_used"]
    root_before = info(host, root)["pages_owned"]
    pages = host.root_memory.allocate(6)
    root.map_gpa_pages(c, 10, pages[:3], MapFlags.READABLE | MapFlags.WRITABLE)
    root.map_gpa_pages(c, 20, pages[3:], MapFlags.READABLE)
    reach = host.introspect.reach(c)
    assert reach == {10: (pages[0], 3), 11: (pages[1], 3), 12: (pages[2], 3),
                     20: (pages[3], 1), 21: (pages[4], 1), 22: (pages[5], 1)}
    i = info(host, c)
    assert (i["gpa_mapped"], i["pages_owned"], i["pool_used"]) == (6, 6, used + 1)  # one leaf for region 0
    assert info(host, root)["pages_owned"] == root_before - 6
    for pfn in pages:
        assert host.introspect.owner_of(pfn) == c.id
        assert pfn not in host.introspect.reachable_pages(root)
    # rights are enforced on the child's own accesses
    c.write(10 * PAGE_SIZE, b"hello")
    assert c.read(10 * PAGE_SIZE, 5) == b"hello"
    assert c.read(20 * PAGE_SIZE, 4) == bytes(4)
    with pytest.raises(MemoryError):
        c.write(20 * PAGE_SIZE, b"x")
    check_conservation(host)


def test_map_a_second_region_takes_a_leaf(host, root):
    c = make_child(host, pool=5, map_pages=1)
    used = info(host, c)["pool_used"]
    root.map_gpa_pages(c, 511, host.root_memory.allocate(1))  # same region as GPA 0
    assert info(host, c)["pool_used"] == used
    root.map_gpa_pages(c, 512, host.root_memory.allocate(1))  # region 1
    assert info(host, c)["pool_used"] == used + 1
    root.map_gpa_pages(c, MAX_GPA_PAGES - 1, host.root_memory.allocate(1))  # the last GPA page
    assert info(host, c)["pool_used"] == used + 2
    check_conservation(host)


@pytest.mark.parametrize("flags", range(8))
def test_map_every_valid_flag_combination(host, root, flags):
    c = make_child(host, map_pages=0)
    page = host.root_memory.allocate(1)[0]
    root.map_gpa_pages(c, 5, [page], flags)
    assert host.introspect.reach(c) == {5: (page, flags)}


@pytest.mark.parametrize("flags", [8, 0x10, 0xF, 0x8000_0000])
def test_map_bad_flags(host, root, child, flags):
    with rejected(HvStatus.INVALID_PARAMETER, root):
        root.map_gpa_pages(child, 8, host.root_memory.allocate(1), flags)


def test_map_nonzero_padding(host, root, child):
    expect(root.vp(0), control(CallCode.MAP_GPA_PAGES, rep_count=1), map_in(child.id, 8, host.root_memory.allocate(1),
                                                                           padding=1),
           status=HvStatus.INVALID_PARAMETER)


@pytest.mark.parametrize("base,count", [(MAX_GPA_PAGES, 1), (MAX_GPA_PAGES - 1, 2), (1 << 40, 1), (2**64 - 1, 1)])
def test_map_outside_the_gpa_space(host, root, child, base, count):
    pages = host.root_memory.allocate(count)
    expect(root.vp(0), control(CallCode.MAP_GPA_PAGES, rep_count=count), map_in(child.id, base, pages),
           status=HvStatus.INVALID_PARAMETER)


def test_map_gpa_range_checked_against_the_whole_rep_count():
    # The range check covers every rep, even those a later invocation would do.
    host = new_host(reps_per_call=4)
    c = make_child(host, map_pages=0)
    pages = host.root_memory.allocate(6)
    expect(host.root.vp(0), control(CallCode.MAP_GPA_PAGES, rep_count=6), map_in(c.id, MAX_GPA_PAGES - 5, pages),
           status=HvStatus.INVALID_PARAMETER, reps=0)


@pytest.mark.parametrize("what", ["reserved", "beyond", "deposited", "other_child", "own_mapped"])
def test_map_page_the_caller_does_not_own(host, root, child, what):
    other = make_child(host)
    page = {"reserved": 3, "beyond": host.pages + 7,
            "deposited": host.introspect.pool_pages(other)[0],
            "other_child": host.introspect.reach(other)[2][0],
            "own_mapped": host.introspect.reach(child)[2][0]}[what]
    good = host.root_memory.allocate(2)
    with rejected(HvStatus.INVALID_PARAMETER, root):
        root.map_gpa_pages(child, 8, [good[0], page, good[1]])


@pytest.mark.parametrize("order", [[0, 0], [0, 1, 0], [0, 1, 2, 2]])
def test_map_duplicates_in_one_batch(host, root, child, order):
    pages = host.root_memory.allocate(3)
    with rejected(HvStatus.INVALID_PARAMETER, root):
        root.map_gpa_pages(child, 8, [pages[i] for i in order])


@pytest.mark.parametrize("base,count", [(0, 1), (3, 1), (2, 4), (3, 3)])
def test_map_over_a_mapped_gpa(host, root, child, base, count):
    # the child has GPA pages 0..3 mapped
    with rejected(HvStatus.INVALID_PARAMETER, root):
        root.map_gpa_pages(child, base, host.root_memory.allocate(count))


@pytest.mark.parametrize("state", ["created", "finalized"])
def test_map_wrong_state(host, root, state):
    if state == "created":
        c = root.create_partition()
        root.deposit_memory(c, host.root_memory.allocate(3))
    else:
        c = make_child(host)
        root.finalize_partition(c)
    with rejected(HvStatus.INVALID_PARTITION_STATE, root):
        root.map_gpa_pages(c, 100, host.root_memory.allocate(1))


@pytest.mark.parametrize("pid", [UNKNOWN_ID, PARTITION_ID_SELF, 1, 0])
def test_map_bad_partition(host, root, pid):
    with rejected(HvStatus.INVALID_PARTITION_ID, root):
        root.map_gpa_pages(pid, 100, host.root_memory.allocate(1))


def test_map_needs_a_pool_page_for_a_new_leaf(host, root):
    c = make_child(host, pool=3, map_pages=1)  # init, VP 0, leaf of region 0: the pool is empty
    assert root.get_memory_balance(c) == (0, 3)
    with rejected(HvStatus.INSUFFICIENT_MEMORY, root):
        root.map_gpa_pages(c, 512, host.root_memory.allocate(1))
    # a page in the existing region needs no new leaf
    root.map_gpa_pages(c, 1, host.root_memory.allocate(1))
    # one free page but a range spanning two new regions
    root.deposit_memory(c, host.root_memory.allocate(1))
    with rejected(HvStatus.INSUFFICIENT_MEMORY, root):
        root.map_gpa_pages(c, 1023, host.root_memory.allocate(2))
    root.map_gpa_pages(c, 1024, host.root_memory.allocate(2))
    check_conservation(host)


def test_map_by_child_is_denied(host, root, child):
    other = make_child(host)
    for target in (None, other):
        with rejected(HvStatus.ACCESS_DENIED, child):
            child.map_gpa_pages(target, 100, [3])


# ---- UnmapGpaPages ---------------------------------------------------------------------------------

def test_unmap_gpa_pages(host, root):
    initial = check_conservation(host)
    c = make_child(host, pool=4, map_pages=0)
    pages = host.root_memory.allocate(4)
    root.map_gpa_pages(c, 600, pages)  # region 1
    c.write(600 * PAGE_SIZE, b"\xC3" * (4 * PAGE_SIZE))
    used = info(host, c)["pool_used"]
    root.unmap_gpa_pages(c, 601, 2)
    assert host.introspect.reach(c) == {600: (pages[0], 7), 603: (pages[3], 7)}
    assert info(host, c)["pool_used"] == used  # region 1 still has entries
    for pfn in pages[1:3]:
        assert host.introspect.owner_of(pfn) == root.id
        assert root.read(pfn * PAGE_SIZE, PAGE_SIZE) == bytes(PAGE_SIZE)
    root.unmap_gpa_pages(c, 600, 1)
    root.unmap_gpa_pages(c, 603, 1)
    i = info(host, c)
    assert (i["gpa_mapped"], i["pages_owned"], i["pool_used"]) == (0, 0, used - 1)  # leaf back to the pool
    assert host.introspect.reach(c) == {}
    check_conservation(host)
    root.finalize_partition(c)
    root.delete_partition(c)
    assert check_conservation(host) == initial


def test_unmap_in_finalized_state(host, root, child):
    root.finalize_partition(child)
    root.unmap_gpa_pages(child, 0, 4)
    assert info(host, child)["gpa_mapped"] == 0
    check_conservation(host)


@pytest.mark.parametrize("base,count", [(4, 1), (100, 1), (3, 2), (0, 5), (MAX_GPA_PAGES - 1, 1)])
def test_unmap_unmapped_gpa(host, root, child, base, count):
    with rejected(HvStatus.INVALID_PARAMETER, root):
        root.unmap_gpa_pages(child, base, count)
    assert info(host, child)["gpa_mapped"] == 4


def test_unmap_twice(host, root, child):
    root.unmap_gpa_pages(child, 2, 1)
    with rejected(HvStatus.INVALID_PARAMETER, root):
        root.unmap_gpa_pages(child, 2, 1)


@pytest.mark.parametrize("flags,padding", [(1, 0), (0x8000_0000, 0), (0, 1)])
def test_unmap_nonzero_flags_or_padding(root, child, flags, padding):
    expect(root.vp(0), control(CallCode.UNMAP_GPA_PAGES, rep_count=1), unmap_in(child.id, 0, flags, padding),
           status=HvStatus.INVALID_PARAMETER)


@pytest.mark.parametrize("base", [MAX_GPA_PAGES, 2**64 - 1])
def test_unmap_outside_the_gpa_space(root, child, base):
    expect(root.vp(0), control(CallCode.UNMAP_GPA_PAGES, rep_count=1), unmap_in(child.id, base),
           status=HvStatus.INVALID_PARAMETER)


@pytest.mark.parametrize("pid", [UNKNOWN_ID, PARTITION_ID_SELF, 1, 0])
def test_unmap_bad_partition(root, child, pid):
    with rejected(HvStatus.INVALID_PARTITION_ID, root):
        root.unmap_gpa_pages(pid, 0, 1)


def test_unmap_by_child_is_denied(child):
    for target in (None, child):
        with rejected(HvStatus.ACCESS_DENIED, child):
            child.unmap_gpa_pages(target, 3, 1)


# ---- rep continuation ------------------------------------------------------------------------------

def _map_ten(reps_per_call: int, steps):
    host = new_host(reps_per_call=reps_per_call)
    c = make_child(host, map_pages=0)
    pages = host.root_memory.allocate(10)
    data = map_in(c.id, 700, pages)
    for start, done in steps:
        expect(host.root.vp(0), control(CallCode.MAP_GPA_PAGES, rep_count=10, rep_start=start), data, reps=done)
    return host, c, pages


def test_map_rep_continuation_matches_one_call():
    host, c, pages = _map_ten(4, [(0, 4), (4, 8), (8, 10)])
    assert host.introspect.reach(c) == {700 + i: (p, 7) for i, p in enumerate(pages)}
    ref, _, _ = _map_ten(4095, [(0, 10)])
    assert host.introspect.digest() == ref.introspect.digest()
    mine, theirs = host.introspect.counters(host.root), ref.introspect.counters(ref.root)
    assert mine["reps"] == theirs["reps"]  # the same elements were completed...
    assert mine["hypercalls"] == theirs["hypercalls"] + 2  # ...in three invocations instead of one
    check_conservation(host)


def test_map_rep_partial_state_is_the_first_elements():
    host, c, pages = _map_ten(4, [(0, 4)])
    assert host.introspect.reach(c) == {700 + i: (p, 7) for i, p in enumerate(pages[:4])}
    # resuming from a start the hypervisor did not report is the caller's business: it works too
    expect(host.root.vp(0), control(CallCode.MAP_GPA_PAGES, rep_count=10, rep_start=7), map_in(c.id, 700, pages),
           reps=10)
    assert sorted(host.introspect.reach(c)) == [700, 701, 702, 703, 707, 708, 709]


def test_unmap_rep_continuation():
    host, c, pages = _map_ten(4, [(0, 4), (4, 8), (8, 10)])
    vp = host.root.vp(0)
    for start, done in ((0, 4), (4, 8), (8, 10)):
        expect(vp, control(CallCode.UNMAP_GPA_PAGES, rep_count=10, rep_start=start), unmap_in(c.id, 700), reps=done)
    assert host.introspect.reach(c) == {}
    assert all(host.introspect.owner_of(p) == host.root.id for p in pages)
    check_conservation(host)


def test_wrapper_continues_rep_calls():
    host = new_host(reps_per_call=4)
    c = make_child(host, map_pages=0)
    before = host.introspect.counters(host.root)
    pages = host.root_memory.allocate(10)
    host.root.map_gpa_pages(c, 0, pages)
    after = host.introspect.counters(host.root)
    assert after["hypercalls"] - before["hypercalls"] == 3
    assert after["reps"] - before["reps"] == 10
    assert host.introspect.reach(c) == {i: (p, 7) for i, p in enumerate(pages)}


# ---- ownership -------------------------------------------------------------------------------------

def test_page_ownership_lifecycle(host, root):
    intro = host.introspect
    initial = check_conservation(host)
    a, b = root.create_partition(), root.create_partition()
    pool = host.root_memory.allocate(8)
    root.deposit_memory(a, pool[:4])
    root.deposit_memory(b, pool[4:])
    owners = check_conservation(host)
    assert owners[HYPERVISOR] == initial[HYPERVISOR] + 8
    assert not any(reachable_by_anyone(host, p) for p in pool)
    for p in (a, b):
        root.initialize_partition(p)
        root.create_vp(p, 0)
    check_conservation(host)

    # map moves pages root -> child
    mem = host.root_memory.allocate(6)
    root.map_gpa_pages(a, 0, mem)
    owners = check_conservation(host)
    assert owners[a.id] == 6 and owners[root.id] == initial[root.id] - 14
    assert intro.reachable_pages(a) == set(mem)

    # the child writes a pattern; root unmaps: pages come back zeroed
    a.write(2 * PAGE_SIZE, b"\x5A" * (4 * PAGE_SIZE))
    root.unmap_gpa_pages(a, 2, 4)
    owners = check_conservation(host)
    assert owners[a.id] == 2
    for pfn in mem[2:]:
        assert intro.owner_of(pfn) == root.id
        assert root.read(pfn * PAGE_SIZE, PAGE_SIZE) == bytes(PAGE_SIZE)

    # root writes into them and maps them into b: b reads zeros
    root.write(mem[2] * PAGE_SIZE, b"root was here")
    root.map_gpa_pages(b, 0, mem[2:])
    check_conservation(host)
    assert b.read(0, 4 * PAGE_SIZE) == bytes(4 * PAGE_SIZE)
    assert intro.reachable_pages(b) == set(mem[2:])
    assert not intro.reachable_pages(a) & intro.reachable_pages(b)

    # withdraw gives pool pages back to the root
    free_a = root.get_memory_balance(a)[0]
    got = root.withdraw_memory(a, free_a)
    assert all(intro.owner_of(p) == root.id for p in got)
    check_conservation(host)

    # delete returns everything to the root
    for p in (a, b):
        root.finalize_partition(p)
        root.delete_partition(p)
    assert check_conservation(host) == initial
    assert all(intro.owner_of(p) == root.id for p in pool + mem)
    assert intro.totals()["partitions"] == 1


def test_failed_map_moves_nothing(host, root, child):
    initial = check_conservation(host)
    pages = host.root_memory.allocate(3)
    with rejected(HvStatus.INVALID_PARAMETER, root):
        root.map_gpa_pages(child, 10, [pages[0], pages[1], 0])
    assert check_conservation(host) == initial
    assert all(host.introspect.owner_of(p) == root.id for p in pages)


def test_child_cannot_reach_hypervisor_or_root_pages(host, root, child):
    assert child.state == PartitionState.INITIALIZED
    reach = host.introspect.reachable_pages(child)
    assert reach.isdisjoint(host.introspect.pool_pages(child))
    assert reach.isdisjoint(range(16))
    assert all(host.introspect.owner_of(p) == child.id for p in reach)
    with pytest.raises(MemoryError):
        child.read(4 * PAGE_SIZE, 1)  # GPA page 4 is not mapped
