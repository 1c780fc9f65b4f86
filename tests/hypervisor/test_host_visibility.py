"""Host visibility: HvCallModifySparseGpaPageHostVisibility (0x00DB) from a child, and the parent's
access to the pages it shows (copies and views), their revocation and their accounting."""
from __future__ import annotations

import struct

import pytest

from hypervisor import HvError, HvStatus
from hypervisor.abi import PARTITION_ID_SELF, CallCode, HostVisibility, control
from hypervisor.grants import MAX_VISIBILITY_REPS, modify_host_visibility
from hypervisor.testing.invariants import check_all
from tests.hypervisor.conftest import expect, make_child, new_host

CODE = CallCode.MODIFY_SPARSE_GPA_PAGE_HOST_VISIBILITY
RO, RW, NONE = HostVisibility.READ_ONLY, HostVisibility.READ_WRITE, HostVisibility.NONE
S = HvStatus


def block(pages, visibility=RW, *, pid=PARTITION_ID_SELF, reserved=0) -> bytes:
    """The input block as Linux's hv_mark_gpa_visibility lays it out: partition id, visibility,
    reserved, then the GPA page numbers."""
    return struct.pack(f"<QII{len(pages)}Q", pid, visibility, reserved, *pages)


def call(vp, pages, visibility=RW, status=S.SUCCESS, *, start=0, count=None, reps=None, **kw):
    ctl = control(CODE, rep_count=len(pages) if count is None else count, rep_start=start)
    return expect(vp, ctl, block(pages, visibility, **kw), status, reps=reps)


@pytest.fixture
def host():
    return new_host()


@pytest.fixture
def child(host):
    return make_child(host, pool=4, map_pages=16)  # GPA pages 0..15; VP 0 uses pages 0 and 1


def test_the_call_is_in_the_dispatch_table_as_the_tlfs_lays_it_out():
    from hypervisor import _binding
    shape = _binding.hv_call_shape(0x00DB)
    assert CODE == 0x00DB and _binding.hv_call_name(0x00DB) == "ModifySparseGpaPageHostVisibility"
    assert (shape["header_size"], shape["in_elem_size"], shape["rep"], shape["privilege"]) == (16, 8, True, 0)
    assert MAX_VISIBILITY_REPS == 510  # Linux's HV_MAX_MODIFY_GPA_REP_COUNT


def test_a_child_shows_pages_read_write_read_only_and_hides_them_again(host, child):
    vp = child.vp(0)
    call(vp, [4, 5], RW, reps=2)
    call(vp, [6], RO, reps=1)
    assert host.grants.host_visible(child) == {4: RW, 5: RW, 6: RO}
    call(vp, [5, 6], NONE, reps=2)
    assert host.grants.host_visible(child) == {4: RW}
    check_all(host)


@pytest.mark.parametrize("visibility, reserved", [
    (2, 0),                 # 2 is no visibility
    (RW | 1 << 2, 0),       # bits 31:2 are reserved
    (RO | 1 << 31, 0),
    (RW, 1),                # the reserved u32
])
def test_bad_visibility_or_reserved_fields_are_invalid_parameter_and_change_nothing(host, child, visibility, reserved):
    call(child.vp(0), [4], visibility, S.INVALID_PARAMETER, reserved=reserved, reps=0)
    assert host.grants.host_visible(child) == {}


def test_a_page_the_caller_does_not_map_fails_the_whole_batch(host, child):
    vp = child.vp(0)
    call(vp, [2], RW)
    # Page 40 is not mapped; 1 << 40 is past any GPA space. Pages before it in the batch stay as they were.
    for bad in (40, 1 << 40, 2**64 - 1):
        call(vp, [3, 4, bad, 5], RW, S.INVALID_PARAMETER, reps=0)
        call(vp, [2, bad], NONE, S.INVALID_PARAMETER, reps=0)
    assert host.grants.host_visible(child) == {2: RW}


def test_only_the_caller_itself_may_be_named(host, child):
    other = make_child(host, pool=4, map_pages=4)
    vp = child.vp(0)
    call(vp, [4], RW, pid=child.id, reps=1)                                    # its own id: as SELF
    call(vp, [4], RW, S.INVALID_PARTITION_ID, pid=other.id, reps=0)            # a sibling
    call(vp, [4], RW, S.INVALID_PARTITION_ID, pid=host.root.id, reps=0)        # its parent
    call(vp, [4], RW, S.INVALID_PARTITION_ID, pid=0, reps=0)
    # The parent cannot show (or hide) its child's pages: visibility is the owner's choice.
    call(host.root.vp(0), [4], NONE, S.ACCESS_DENIED, pid=child.id, reps=0)
    # The root is the host: it has nobody to show its own pages to.
    call(host.root.vp(0), [host.root_memory.allocate(1)[0]], RW, S.ACCESS_DENIED, reps=0)
    assert host.grants.host_visible(child) == {4: RW}


def test_entry_point_encoding_rules_apply(host, child):
    vp = child.vp(0)
    expect(vp, control(CODE), block([]), S.INVALID_HYPERCALL_INPUT)                         # rep count 0
    expect(vp, control(CODE, rep_count=2, rep_start=2), block([4, 5]), S.INVALID_HYPERCALL_INPUT)
    expect(vp, control(CODE, rep_count=1, fast=True), block([4])[:16], S.INVALID_HYPERCALL_INPUT)
    # 511 pages do not fit in a page after the 16-byte header.
    expect(vp, control(CODE, rep_count=511), block([4] * 511), S.INVALID_ALIGNMENT)
    assert host.grants.host_visible(child) == {}


def test_a_full_block_of_510_pages_goes_in_one_call():
    host = new_host(reps_per_call=4095)
    child = make_child(host, pool=4, map_pages=520)
    call(child.vp(0), list(range(2, 512)), RO, reps=510)
    assert len(host.grants.host_visible(child)) == 510


def test_rep_calls_complete_in_batches_and_resume_where_they_stopped():
    host = new_host(reps_per_call=3)
    child = make_child(host, pool=4, map_pages=16)
    vp = child.vp(0)
    pages = [4, 5, 6, 7, 8, 9, 10]
    call(vp, pages, RW, reps=3)
    assert set(host.grants.host_visible(child)) == {4, 5, 6}
    call(vp, pages, RW, start=3, reps=6)
    call(vp, pages, RW, start=6, reps=7)
    assert set(host.grants.host_visible(child)) == set(pages)
    # A bad page in a later batch: the earlier batch stays done, the failing one completes nothing.
    bad = [11, 12, 13, 14, 99]
    call(vp, bad, RW, reps=3)
    call(vp, bad, RW, S.INVALID_PARAMETER, start=3, reps=3)
    assert set(host.grants.host_visible(child)) == set(pages) | {11, 12, 13}
    # The typed wrapper resumes by itself.
    modify_host_visibility(child, pages + [11, 12, 13], NONE)
    assert host.grants.host_visible(child) == {}
    assert host.introspect.counters(child)["reps"] == 7 + 3 + 10


def test_the_parent_reaches_visible_pages_with_the_access_shown_and_nothing_else(host, child):
    root = host.root
    before = host.introspect.reach(root)
    reach = host.introspect.reach(child)
    modify_host_visibility(child, [4], RW)
    modify_host_visibility(child, [5], RO)
    after = host.introspect.reach(root)
    assert after.keys() - before.keys() == {reach[4][0], reach[5][0]}
    assert after[reach[4][0]][1] == 3 and after[reach[5][0]][1] == 1  # R|W, R
    check_all(host)
    child.write(4 * 4096, b"rw page")
    child.write(5 * 4096 + 10, b"ro page")
    assert host.grants.read_visible(child, [4, 5], 0, 7) == b"rw page"
    assert host.grants.read_visible(child, [4, 5], 4096 + 10, 7) == b"ro page"
    host.grants.write_visible(child, [4], 100, b"from the host")
    assert child.read(4 * 4096 + 100, 13) == b"from the host"
    # A read-only page is not written; a hidden page is neither read nor written.
    with pytest.raises(HvError) as err:
        host.grants.write_visible(child, [4, 5], 4000, bytes(200))  # crosses into page 5
    assert err.value.status == S.ACCESS_DENIED and "0x5 " in str(err.value)
    assert child.read(4 * 4096 + 4000, 96) == bytes(96)  # nothing of it was stored
    for page in (6, 40):
        with pytest.raises(HvError) as err:
            host.grants.read_visible(child, [4, page], 0, 8192)
        assert err.value.status == S.ACCESS_DENIED and f"{page:#x}" in str(err.value)
    with pytest.raises(HvError) as err:
        host.grants.read_visible(child, [4], 1, 4096)  # past the pages listed
    assert err.value.status == S.INVALID_PARAMETER
    assert host.grants.check_visible(child, [4, 5]) is None
    assert host.grants.check_visible(child, [4, 5], writable=True) == 5


def test_the_roots_own_hypercalls_may_read_a_visible_page_but_write_only_a_read_write_one(host, child):
    root_vp = host.root.vp(0)
    reach = host.introspect.reach(child)
    modify_host_visibility(child, [6], RO)
    modify_host_visibility(child, [7], RW)
    ro, rw = reach[6][0] * 4096, reach[7][0] * 4096
    get_id = control(CallCode.GET_PARTITION_ID)
    expect(root_vp, get_id, output_gpa=ro, status=S.INVALID_ALIGNMENT)  # output to a read-only page
    expect(root_vp, get_id, output_gpa=rw)
    assert struct.unpack("<Q", host.grants.read_visible(child, [7], 0, 8))[0] == host.root.id
    modify_host_visibility(child, [7], NONE)
    expect(root_vp, get_id, output_gpa=rw, status=S.INVALID_ALIGNMENT)


def test_views_of_visible_pages_and_revocation_when_the_child_hides_one(host, child):
    modify_host_visibility(child, [8, 9, 10], RW)
    usage = host.grants.usage(child)
    v = host.grants.visible_view(child, 1, [8, 10], writable=True)
    assert host.grants.usage(child)["pages"] == usage["pages"] + 2
    mem = v.view
    mem[4096:4096 + 5] = b"hello"
    assert child.read(10 * 4096, 5) == b"hello"
    child.write(8 * 4096, b"guest")
    assert bytes(mem[:5]) == b"guest"
    with pytest.raises(HvError) as err:
        host.root.unmap_gpa_pages(child, 8, 1)
    assert err.value.status == S.OBJECT_IN_USE  # pinned while the view lives
    check_all(host)
    # The child hides page 10: the view is revoked at once, whatever still holds its memoryview.
    modify_host_visibility(child, [10], NONE)
    assert not v.alive and host.grants.visible_view_ids(child) == []
    assert bytes(mem[4096:4096 + 5]) == bytes(5)
    mem[0:5] = b"stale"
    assert child.read(8 * 4096, 5) == b"guest"
    with pytest.raises(LookupError):
        v.view
    assert host.grants.usage(child) == usage  # pages and mappings given back
    host.root.unmap_gpa_pages(child, 8, 1)  # no longer pinned; the page leaves visible no more
    assert host.grants.host_visible(child) == {9: RW}
    check_all(host)


def test_read_only_views(host, child):
    modify_host_visibility(child, [8], RO)
    modify_host_visibility(child, [9], RW)
    with pytest.raises(HvError) as err:
        host.grants.visible_view(child, 1, [9, 8], writable=True)
    assert err.value.status == S.ACCESS_DENIED and "GPA page 0x8 " in str(err.value)
    assert host.grants.visible_view_ids(child) == []
    child.write(8 * 4096, b"shown")
    v = host.grants.visible_view(child, 1, [8, 9])
    mem = v.view
    assert mem.readonly and bytes(mem[:5]) == b"shown"
    with pytest.raises(TypeError):
        mem[0:1] = b"x"
    w = host.grants.visible_view(child, 2, [9], writable=True)
    # Read-write to read-only: the writable view goes, the read-only one stays.
    modify_host_visibility(child, [9], RO)
    assert not w.alive and v.alive
    modify_host_visibility(child, [9], RW)  # more access takes nothing away
    assert v.alive
    v.release()
    with pytest.raises(HvError) as err:
        v.release()
    assert err.value.status == S.INVALID_PARAMETER
    check_all(host)


def test_view_arguments_are_checked(host, child):
    modify_host_visibility(child, [8, 9], RW)
    for pages in ([], [8, 8], [8, 400]):
        with pytest.raises(HvError) as err:
            host.grants.visible_view(child, 1, pages)
        assert err.value.status == S.INVALID_PARAMETER
    assert host.grants.visible_view_ids(child) == []
    host.grants.visible_view(child, 1, [8])
    with pytest.raises(HvError) as err:
        host.grants.visible_view(child, 1, [9])  # the id is in use
    assert err.value.status == S.INVALID_PARAMETER
    with pytest.raises(HvError) as err:
        host.grants.visible_view(host.root, 2, [8])
    assert err.value.status == S.INVALID_PARTITION_ID
    # Grants (GPADL ids) and views keep separate ids.
    g = host.grants.create(child, 1, [9])
    assert host.grants.ids(child) == [1] and host.grants.visible_view_ids(child) == [1]
    g.revoke()
    assert host.grants.visible_view_ids(child) == [1]


def test_visible_views_count_against_the_childs_grant_limit():
    host = new_host(grant_limits={"pages_per_child": 3})
    child = make_child(host, pool=4, map_pages=16)
    modify_host_visibility(child, [4, 5, 6, 7], RW)
    host.grants.create(child, 1, [10, 11])
    with pytest.raises(HvError) as err:
        host.grants.visible_view(child, 1, [4, 5])
    assert err.value.status == S.NO_RESOURCES and "grant_pages_per_child" in str(err.value)
    host.grants.visible_view(child, 1, [4])


def test_deleting_the_child_ends_its_views_and_marks(host, child):
    modify_host_visibility(child, [8, 9], RW)
    v = host.grants.visible_view(child, 7, [8, 9], writable=True)
    mem = v.view
    host.root.finalize_partition(child)
    host.root.delete_partition(child)
    assert bytes(mem[:16]) == bytes(16)
    reach = host.introspect.reach(host.root)
    assert all(rights == 7 for _, rights in reach.values())  # the root's own pages only
    check_all(host)


def test_a_saved_vm_keeps_its_host_visible_pages_and_its_file_records_them(tmp_path):
    from partitions.savedstate import SavedStateError, SavedStateReader
    from tests.partitions.test_save_restore_devices import build, failures

    ms = 1_000_000
    managed = build(tmp_path)
    managed.run(300 * ms)
    vm = managed.vms["a"]
    grants = managed.host.grants
    shown = grants.host_visible(vm.partition)
    bounce = vm.device_vsc("storage")._bounce[0]
    assert shown == {pfn: RW for pfn in bounce}          # storvsc's bounce pages
    vm.save(tmp_path / "a.hvsav")
    with SavedStateReader(tmp_path / "a.hvsav") as saved:
        assert saved.load("host_visibility") == [[pfn, 3] for pfn in sorted(bounce)]
    assert grants.host_visible(vm.partition) == shown   # partition state, kept while Saved
    vm.restore()
    assert grants.host_visible(vm.partition) == shown
    completed = vm.device_vsp("storage").completed
    managed.run(managed.host.now + 100 * ms)
    assert vm.device_vsp("storage").completed > completed and vm.device_vsp("storage").refused == 0
    assert failures(managed) == []
    # A file that disagrees with the partition's marks is refused, and the VM stays Saved.
    vm.save(tmp_path / "b.hvsav")
    modify_host_visibility(vm.partition, bounce[:1], NONE)
    with pytest.raises(SavedStateError, match="host-visible pages"):
        vm.restore()
    assert vm.state.value == "Saved"


def test_show_view_hide_cycles_give_back_the_address_space(host, child):
    """1000 show/view/hide cycles, the view's memoryview dropped after each revocation: the
    process's mappings and the child's grant accounting end where they started."""
    from tests.hypervisor.test_grants import _process_mappings

    pages = [4, 6, 8, 10]                          # not contiguous: 4 runs
    modify_host_visibility(child, pages, RW)
    host.grants.visible_view(child, 1, pages).release()  # warm up what the first view allocates
    usage = host.grants.usage(child)
    count0, size0 = _process_mappings()
    for i in range(1000):
        modify_host_visibility(child, pages, RW)
        v = host.grants.visible_view(child, 2 + i, pages, writable=True)
        mem = v.view
        mem[0:4] = b"ring"
        modify_host_visibility(child, pages[1:2], NONE)  # revokes the view
        del mem, v
    count1, size1 = _process_mappings()
    assert size1 - size0 < 4 << 20, f"address space grew by {(size1 - size0) >> 10} KiB"
    assert count1 - count0 < 16, f"{count1 - count0} more mappings"
    assert host.grants.usage(child) == usage and host.grants.visible_view_ids(child) == []
