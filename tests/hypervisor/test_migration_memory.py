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

from hypervisor import HvError, HvStatus
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
