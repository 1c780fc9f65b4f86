"""The VM worker: a VM's memory is mapped from GPA 0 in the order of the root pages it was given,
as runs of pages (never a Python int per page), in batched MapGpaPages calls that continue
where the hypervisor stopped; destroying the VM gives every page back to the root."""
from __future__ import annotations

import pytest

from hypervisor import Host
from hypervisor.abi import MAP_RWX, PAGE_SIZE
from partitions.worker import MAP_PER_CALL, VmSpec, VmWorker


def reach_in_gpa_order(host: Host, p) -> list[tuple[int, int]]:
    return sorted((g, pfn, r) for g, (pfn, r) in host.introspect.reach(p).items())


def check_mapping(host: Host, w: VmWorker) -> None:
    pages = [page for run in w._ram_runs for page in run]
    assert len(pages) == w.memory_bytes // PAGE_SIZE
    # A new VM reaches only its memory (no grants yet): GPA page i is its i-th page, in order.
    assert [(g, pfn) for g, pfn, _ in reach_in_gpa_order(host, w.partition)] == list(enumerate(pages))
    assert host.introspect.partition_info(w.partition)["gpa_mapped"] == len(pages)


@pytest.mark.parametrize("reps_per_call", [1, 7, 256, 4095])
def test_memory_is_mapped_in_order_whatever_the_reps_per_call(reps_per_call):
    """A rep call returns after the host's reps per call; the worker continues each call (1 rep
    per call: 2 * MAP_PER_CALL + 3 pages take MAP_PER_CALL rounds of continuations)."""
    host = Host(logical_processors=1, memory="64MiB", seed=1, reps_per_call=reps_per_call)
    pages = 2 * MAP_PER_CALL + 3
    w = VmWorker(host, VmSpec("a", memory=pages * PAGE_SIZE))
    free = host.root_memory.available
    w.build()
    check_mapping(host, w)
    assert host.root_memory.available == free - pages - w.pool_pages_needed()   # scratch pages came back


def test_the_scratch_pages_go_back_zero():
    host = Host(logical_processors=1, memory="64MiB", seed=1)
    w = VmWorker(host, VmSpec("a", memory="4MiB"))
    w.build()
    scratch = host.root_memory.allocate(2)   # the pages handed back last: the batch's input pages
    for page in scratch:
        assert host.root.read(page * PAGE_SIZE, PAGE_SIZE) == bytes(PAGE_SIZE)


def test_memory_comes_back_as_runs_and_is_reused_in_pieces():
    """VMs built from the pieces other VMs left behind (runs in any order) map correctly, and
    the root's free list stays a handful of runs, not a list of page numbers."""
    host = Host(logical_processors=1, memory="256MiB", seed=1)
    workers = [VmWorker(host, VmSpec(f"v{i}", memory="4MiB")) for i in range(6)]
    start = host.root_memory.available
    for w in workers:
        w.build()
        assert all(isinstance(r, range) for r in w._ram_runs + w._pool_runs)
        assert len(w._ram_runs) <= 2
    for w in workers[1::2]:
        w.destroy()
    assert len(host.root_memory._returned) <= 1 + 2 * 3   # the scratch run, and memory and pool per VM
    big = VmWorker(host, VmSpec("big", memory="10MiB"))   # more than one piece: a run per piece
    big.build()
    assert len(big._ram_runs) >= 2
    check_mapping(host, big)
    for w in workers[0::2] + [big]:
        w.destroy()
    assert host.root_memory.available == start
    assert host.introspect.partition_ids() == [host.root.id]


def test_a_vm_larger_than_the_roots_free_memory_is_refused_before_anything_is_made():
    host = Host(logical_processors=1, memory="16MiB", seed=1)
    w = VmWorker(host, VmSpec("huge", memory="32MiB"))
    with pytest.raises(MemoryError, match="huge"):
        w.build()
    assert host.introspect.partition_ids() == [host.root.id]


def test_the_mapping_has_full_rights():
    host = Host(logical_processors=1, memory="64MiB", seed=1)
    w = VmWorker(host, VmSpec("a", memory="1MiB"))
    w.build()
    assert {r for _, _, r in reach_in_gpa_order(host, w.partition)} == {MAP_RWX}
