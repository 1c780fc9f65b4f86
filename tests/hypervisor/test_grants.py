"""Grants: the only cross-partition memory access (the core's half of a VMBus GPADL)."""
import pytest

from hypervisor import Host, HvStatus
from hypervisor.status import HvError
from hypervisor.testing.invariants import check_all
from partitions.worker import VmSpec, VmWorker


@pytest.fixture
def host():
    return Host(logical_processors=1, memory="16MiB", seed=1)


def child(host, name="c"):
    return VmWorker(host, VmSpec(name, memory="256KiB")).build()


def test_a_grant_makes_exactly_those_child_pages_reachable_by_the_parent(host):
    c = child(host)
    before = host.introspect.reachable_pages(host.root)
    g = host.grants.create(c, 0xE1E10, [10, 11, 12])
    pfns = g.pfns
    assert len(pfns) == 3
    assert host.introspect.reachable_pages(host.root) == before | set(pfns)
    assert all(host.introspect.owner_of(p) == c.id for p in pfns)  # still the child's
    check_all(host)
    g.revoke()
    assert host.introspect.reachable_pages(host.root) == before
    check_all(host)


def test_the_view_is_the_childs_memory_in_place(host):
    c = child(host)
    c.write(11 * 4096 + 100, b"from the child")
    g = host.grants.create(c, 1, [10, 11])
    view = g.view
    assert bytes(view[4096 + 100:4096 + 114]) == b"from the child"
    view[0:9] = b"from root"
    assert c.read(10 * 4096, 9) == b"from root"
    g.revoke()
    # A stale view can no longer reach the pages: it reads zeros, its writes go nowhere.
    assert bytes(view[0:9]) == bytes(9)
    view[0:4] = b"late"
    assert c.read(10 * 4096, 9) == b"from root"


def test_granted_pages_are_pinned(host):
    c = child(host)
    host.grants.create(c, 1, [5])
    with pytest.raises(HvError) as err:
        host.root.unmap_gpa_pages(c, 5, 1)
    assert err.value.status == HvStatus.OBJECT_IN_USE
    host.root.unmap_gpa_pages(c, 6, 1)  # an ungranted page still moves
    host.grants.get(c, 1).revoke()
    host.root.unmap_gpa_pages(c, 5, 1)
    check_all(host)


@pytest.mark.parametrize("pages, status", [
    ([], HvStatus.INVALID_PARAMETER),               # nothing
    ([3, 3], HvStatus.INVALID_PARAMETER),           # a page twice
    ([10_000], HvStatus.INVALID_PARAMETER),         # not mapped in the child
])
def test_bad_grants_are_refused_and_change_nothing(host, pages, status):
    c = child(host)
    before = host.introspect.digest()
    with pytest.raises(HvError) as err:
        host.grants.create(c, 7, pages)
    assert err.value.status == status
    assert host.introspect.digest() == before


def test_a_grant_id_is_unique_per_child_and_meaningless_for_another(host):
    a, b = child(host, "a"), child(host, "b")
    host.grants.create(a, 1, [1])
    with pytest.raises(HvError):
        host.grants.create(a, 1, [2])
    host.grants.create(b, 1, [1])                  # the same id in another child is its own
    assert host.grants.get(a, 1).pfns != host.grants.get(b, 1).pfns
    with pytest.raises(HvError) as err:
        host.grants.create(host.root, 2, [1])      # the root grants to nobody
    assert err.value.status == HvStatus.INVALID_PARTITION_ID


def test_deleting_a_child_ends_its_grants_and_zeroes_its_pages(host):
    c = child(host)
    c.write(0, b"secret")
    g = host.grants.create(c, 1, [0])
    pfn = g.pfns[0]
    root = host.root
    root.finalize_partition(c)
    root.delete_partition(c)
    assert host.grants.ids(c.id) == []
    assert host.introspect.owner_of(pfn) == root.id
    assert root.read(pfn * 4096, 6) == bytes(6)
    check_all(host)


def test_the_root_cannot_put_its_synic_pages_on_a_granted_child_page(host):
    """A granted page is the child's: the hypervisor must never deliver the root's messages (or
    event flags) into it, or another child's message to the root would land in this child."""
    from hypervisor import Register
    from hypervisor.synic import simp_value, siefp_value
    c = child(host)
    pfn = host.grants.create(c, 1, [4]).pfns[0]
    for register, value in ((Register.SIMP, simp_value(pfn)), (Register.SIEFP, siefp_value(pfn))):
        with pytest.raises(HvError) as err:
            host.root.set_vp_registers(host.root, 0, {register: value})
        assert err.value.status == HvStatus.INVALID_PARAMETER
    own = host.root_memory.allocate(1)[0]
    host.root.set_vp_registers(host.root, 0, {Register.SIMP: simp_value(own)})  # its own page: fine
