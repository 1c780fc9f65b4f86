"""Fixtures and helpers for the per-hypercall tests (test_hypercall_decode, test_partition_calls,
test_memory_calls, test_vp_calls).

* `host`: a small host (2 LPs, 16 MiB, seed 1).
* `make_child(host, ...)`: create a child, deposit a few root pages, initialize it, create VP 0
  and map some memory at GPA 0 (VP i's hypercall input/output pages are GPA pages 2i, 2i+1).
* `unchanged(host, ...)`: a failed hypercall changes nothing: the full state digest (memory
  included) is the same before and after. The caller's hypercall input page is a scratch page the
  guest itself stores the input block into, so it is reset to zeros (a guest store) on both sides.
* `rejected(status, caller)`: a typed wrapper raises HvError with that status, and changes nothing.
* `expect(vp, control_word, data, status, ...)`: a raw hypercall returns that status; when it is an
  error, it changes nothing.
* `check_conservation(host)`: every SPA page has exactly one owner and the totals add up.
* Input-block builders for the raw calls (TLFS layouts, little-endian).
"""
from __future__ import annotations

import struct
from contextlib import contextmanager

import pytest

from hypervisor import Host, HvError, HvStatus
from hypervisor.abi import MAP_RWX, PAGE_SIZE, PARTITION_ID_SELF
from hypervisor.introspect import HYPERVISOR

HOST_PAGES = 4096  # 16 MiB


def new_host(**kw) -> Host:
    args = dict(logical_processors=2, memory="16MiB", seed=1)
    args.update(kw)
    return Host(**args)


@pytest.fixture
def host() -> Host:
    return new_host()


@pytest.fixture
def root(host):
    return host.root


def make_child(host: Host, *, pool: int = 4, map_pages: int = 4, vps=(0,), initialize: bool = True,
               flags: int = MAP_RWX, gpa_base: int = 0):
    """A child of the root: `pool` pages deposited, initialized (1 pool page), VPs created (1 pool
    page each) and `map_pages` root pages mapped at GPA page `gpa_base` (1 pool page per leaf)."""
    root = host.root
    child = root.create_partition()
    if pool:
        root.deposit_memory(child, host.root_memory.allocate(pool))
    if not initialize:
        return child
    root.initialize_partition(child)
    for i in vps:
        root.create_vp(child, i)
    if map_pages:
        root.map_gpa_pages(child, gpa_base, host.root_memory.allocate(map_pages), flags)
    return child


@pytest.fixture
def child(host):
    return make_child(host)


def _scrub(host: Host, scratch) -> None:
    for part, gpa in scratch:
        try:
            part.write(gpa & ~(PAGE_SIZE - 1), bytes(PAGE_SIZE))
        except MemoryError:
            pass  # not writable by the guest: the hypercall could not have read it either


@contextmanager
def unchanged(host: Host, *scratch):
    """Assert the body changes no state. `scratch` are (partition, gpa) input pages to reset;
    by default the root's VP 0 input page."""
    scratch = scratch or ((host.root, host.root.vp(0).input_gpa),)
    _scrub(host, scratch)
    before = host.introspect.digest()
    yield
    _scrub(host, scratch)
    after = host.introspect.digest()
    assert after == before, "a failed hypercall changed the hypervisor state"


@contextmanager
def rejected(status: HvStatus, caller, *, vp=None):
    """The typed wrapper call in the body, issued by `caller` (through `vp`, default VP 0), fails
    with `status` and changes nothing."""
    vp = vp or caller.vp(0)
    with unchanged(caller.host, (caller, vp.input_gpa)):
        with pytest.raises(HvError) as info:
            yield info
    assert info.value.status == status, f"expected {status.name}, got {info.value.status!r}"


def expect(vp, control_word: int, data: bytes = b"", status: HvStatus = HvStatus.SUCCESS, *,
           input_gpa: int | None = None, output_gpa: int | None = None, reps: int | None = None):
    """Issue a raw hypercall on `vp` and check its status (and reps completed if given). An
    error must leave the state unchanged."""
    host = vp.partition.host
    in_gpa = vp.input_gpa if input_gpa is None else input_gpa
    if status == HvStatus.SUCCESS:
        r = vp.hypercall(control_word, data, input_gpa=input_gpa, output_gpa=output_gpa)
    else:
        # the guest's own stores of the input block may touch a second page if it crosses one
        last = in_gpa + max(len(data), 1) - 1
        pages = range(in_gpa // PAGE_SIZE, last // PAGE_SIZE + 1) if last >= in_gpa else [in_gpa // PAGE_SIZE]
        with unchanged(host, *[(vp.partition, pg * PAGE_SIZE) for pg in pages]):
            r = vp.hypercall(control_word, data, input_gpa=input_gpa, output_gpa=output_gpa)
    assert r.status == status, f"expected {status.name}, got {r.status!r}"
    if reps is not None:
        assert r.reps_completed == reps
    return r


def check_conservation(host: Host) -> dict:
    """Every SPA page has one owner; the owner table, the totals and each partition's
    pages_owned agree; pools are hypervisor-owned. Returns page_owners()."""
    intro = host.introspect
    totals = intro.totals()
    owners = intro.page_owners()
    assert sum(owners.values()) == totals["pages"]
    assert totals["hv_pages"] + totals["free_pages"] + totals["partition_pages"] == totals["pages"]
    assert owners.get(HYPERVISOR, 0) == totals["hv_pages"]
    pool_total = 0
    for pid in intro.partition_ids():
        info = intro.partition_info(pid)
        assert owners.get(pid, 0) == info["pages_owned"], f"partition {pid}"
        pool = intro.pool_pages(pid)
        assert len(pool) == info["pool_free"] + info["pool_used"]
        assert all(intro.owner_of(pfn) == HYPERVISOR for pfn in pool)
        pool_total += len(pool)
        if pid != host.root.id:
            # a child's map names exactly the pages it owns
            assert len(intro.reach(pid)) == info["gpa_mapped"] == info["pages_owned"]
    assert totals["hv_pages"] == 16 + pool_total  # the hypervisor's boot reserve and every pool
    return owners


def info(host: Host, p) -> dict:
    return host.introspect.partition_info(p)


# ---- input blocks -----------------------------------------------------------------------------

def pid_in(pid: int) -> bytes:
    return struct.pack("<Q", pid)


def create_partition_in(*, flags=0, proximity=0, compat=0, padding=0, disabled=bytes(16), xsave=0,
                        rsvdz=0) -> bytes:
    return struct.pack("<QQII16sQQ", flags, proximity, compat, padding, disabled, xsave, rsvdz)


def get_property_in(pid: int, code: int, padding: int = 0) -> bytes:
    return struct.pack("<QII", pid, code, padding)


def set_property_in(pid: int, code: int, value: int, padding: int = 0) -> bytes:
    return struct.pack("<QIIQ", pid, code, padding, value)


def next_child_in(parent: int = PARTITION_ID_SELF, previous: int = 0) -> bytes:
    return struct.pack("<QQ", parent, previous)


def deposit_in(pid: int, pages) -> bytes:
    return struct.pack(f"<Q{len(pages)}Q", pid, *pages)


def withdraw_in(pid: int, proximity: int = 0) -> bytes:
    return struct.pack("<QQ", pid, proximity)


balance_in = withdraw_in


def map_in(pid: int, gpa_base: int, pages, flags: int = int(MAP_RWX), padding: int = 0) -> bytes:
    return struct.pack(f"<QQII{len(pages)}Q", pid, gpa_base, int(flags), padding, *pages)


def unmap_in(pid: int, gpa_base: int, flags: int = 0, padding: int = 0) -> bytes:
    return struct.pack("<QQII", pid, gpa_base, flags, padding)


def create_vp_in(pid: int, index: int, *, padding=0, proximity=0, flags=0) -> bytes:
    return struct.pack("<QIIQQ", pid, index, padding, proximity, flags)


def delete_vp_in(pid: int, index: int, padding: int = 0) -> bytes:
    return struct.pack("<QII", pid, index, padding)


def regs_header(pid: int, index: int, *, vtl: int = 0, padding: bytes = bytes(3)) -> bytes:
    return struct.pack("<QIB3s", pid, index, vtl, padding)


def get_regs_in(pid: int, index: int, names, **kw) -> bytes:
    return regs_header(pid, index, **kw) + struct.pack(f"<{len(names)}I", *names)


def reg_assoc(name: int, value: int, *, reserved1=0, reserved2=0, value_high=0) -> bytes:
    return struct.pack("<IIQQQ", name, reserved1, reserved2, value, value_high)
