"""DepositMemory and MapGpaPages refuse a page named twice among the elements one invocation
completes: the status and reps of random page lists (ascending, shuffled, with and without
duplicates, pages the caller does not own, resumed from a start index, cut by the per-call
budget) agree with a simple model, and a refused call changes nothing."""
from __future__ import annotations

import struct

from hypothesis import HealthCheck, given, settings, strategies as st

from hypervisor import CallCode, HvStatus, control
from hypervisor.abi import MAP_RWX

from .conftest import expect, make_child, new_host

POOL = 48  # root pages the lists are drawn from
FOREIGN = 8  # the last FOREIGN of them are deposited into the child first: not the root's any more
GPA_BASE = 512  # where MapGpaPages maps, far from the child's own mapped pages


@st.composite
def calls(draw):
    picks = draw(st.lists(st.integers(0, POOL - 1), min_size=1, max_size=60))
    shape = draw(st.sampled_from(["as drawn", "ascending", "descending", "ascending, one repeated"]))
    if shape == "ascending":
        picks = sorted(set(picks))
    elif shape == "descending":
        picks = sorted(set(picks), reverse=True)
    elif shape == "ascending, one repeated":
        picks = sorted(set(picks))
        picks.insert(draw(st.integers(0, len(picks))), draw(st.sampled_from(picks)))
    start = draw(st.integers(0, len(picks) - 1))
    per_call = draw(st.integers(1, len(picks) + 1))
    return picks, start, per_call


def model(pfns, owned, start, per_call):
    """(status, reps completed) of one invocation over elements [start, min(n, start + per_call))."""
    end = min(len(pfns), start + per_call)
    batch = pfns[start:end]
    if any(p not in owned for p in batch) or len(set(batch)) != len(batch):
        return HvStatus.INVALID_PARAMETER, start
    return HvStatus.SUCCESS, end


def setup(per_call):
    host = new_host(reps_per_call=per_call)
    child = make_child(host, pool=8, map_pages=4)
    pages = host.root_memory.allocate(POOL)
    host.root.deposit_memory(child, pages[POOL - FOREIGN:])
    return host, child, pages, set(pages[:POOL - FOREIGN])


SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(calls())
def test_deposit_memory_agrees_with_the_model(call):
    picks, start, per_call = call
    host, child, pages, owned = setup(per_call)
    pfns = [pages[i] for i in picks]
    status, reps = model(pfns, owned, start, per_call)
    before = host.root.get_memory_balance(child)[0]
    ctl = control(CallCode.DEPOSIT_MEMORY, rep_count=len(pfns), rep_start=start)
    data = struct.pack("<Q", child.id) + struct.pack(f"<{len(pfns)}Q", *pfns)
    expect(host.root.vp(0), ctl, data, status=status, reps=reps)  # a refusal changes nothing
    assert host.root.get_memory_balance(child)[0] == before + reps - start


@SETTINGS
@given(calls())
def test_map_gpa_pages_agrees_with_the_model(call):
    picks, start, per_call = call
    host, child, pages, owned = setup(per_call)
    pfns = [pages[i] for i in picks]
    status, reps = model(pfns, owned, start, per_call)
    ctl = control(CallCode.MAP_GPA_PAGES, rep_count=len(pfns), rep_start=start)
    data = struct.pack("<QQII", child.id, GPA_BASE, int(MAP_RWX), 0) + struct.pack(f"<{len(pfns)}Q", *pfns)
    expect(host.root.vp(0), ctl, data, status=status, reps=reps)  # a refusal changes nothing
    reach = host.introspect.reach(child)
    assert [reach[GPA_BASE + i][0] for i in range(start, reps)] == pfns[start:reps]
    assert not any(GPA_BASE + i in reach for i in range(len(pfns)) if not start <= i < reps)
