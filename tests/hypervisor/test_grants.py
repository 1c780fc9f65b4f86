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


def _process_mappings() -> tuple[int, int]:
    """(mappings, bytes of address space) of this process, from /proc/self/maps."""
    count = size = 0
    with open("/proc/self/maps") as f:
        for line in f:
            lo, hi = line.split(None, 1)[0].split("-")
            count += 1
            size += int(hi, 16) - int(lo, 16)
    return count, size


def test_revoking_a_grant_gives_back_its_address_space(host):
    """1000 create/view/revoke cycles leave the process's mappings where they were: a revoked
    grant's view is unmapped once nothing holds it (it used to stay mapped as zero pages)."""
    c = child(host)
    pages = list(range(0, 32, 2))                  # 16 pages, not contiguous: 16 runs
    g = host.grants.create(c, 1, pages)            # warm up whatever the first grant allocates
    g.view[0:1] = b"x"
    g.revoke()
    del g
    count0, size0 = _process_mappings()
    for i in range(1000):
        g = host.grants.create(c, 2 + i, pages)
        view = g.view
        view[0:4] = b"ring"
        g.revoke()
        del view, g
    count1, size1 = _process_mappings()
    # 1000 leaked 64 KiB views would be 64 MiB; allow the interpreter a few arenas of its own.
    assert size1 - size0 < 4 << 20, f"address space grew by {(size1 - size0) >> 10} KiB"
    assert count1 - count0 < 16, f"{count1 - count0} more mappings"


def test_a_stale_view_held_past_the_revoke_stays_harmless_until_dropped(host):
    c = child(host)
    c.write(3 * 4096, b"secret")
    g = host.grants.create(c, 1, [3, 5])
    view = g.view
    g.revoke()
    assert bytes(view[0:6]) == bytes(6)            # zeros, not the child's page
    view[0:4] = b"late"                            # goes nowhere
    assert c.read(3 * 4096, 6) == b"secret"
    size_held = _process_mappings()[1]
    del view
    assert _process_mappings()[1] <= size_held - 2 * 4096   # dropping it unmaps it


def test_contiguous_pages_cost_one_mapping_and_scattered_pages_one_each(host):
    c = child(host)
    assert host.grants.usage(c)["mappings"] == 0
    host.grants.create(c, 1, list(range(16)))          # one run of SPA pages
    assert host.grants.usage(c)["mappings"] == 1
    host.grants.create(c, 2, list(range(20, 40, 2)))   # ten runs
    usage = host.grants.usage(c)
    assert (usage["mappings"], usage["pages"], usage["host_mappings"]) == (11, 26, 11)
    host.grants.get(c, 1).revoke()
    assert host.grants.usage(c)["mappings"] == 10


def test_a_childs_mappings_are_limited_and_the_refusal_says_so():
    """A child granting scattered pages can no longer use up the process's memory mappings: past
    its own limit it is refused with NO_RESOURCES naming that limit, and another child's GPADLs
    and views are still mapped."""
    from hypervisor.grants import own_view
    host = Host(logical_processors=1, memory="16MiB", seed=1, grant_limits={"mappings_per_child": 8})
    a, b = child(host, "a"), child(host, "b")
    host.grants.create(a, 1, [0, 2, 4, 6, 8])          # 5 mappings
    before = host.introspect.digest()
    with pytest.raises(HvError) as err:
        host.grants.create(a, 2, [10, 12, 14, 16])     # 5 + 4 > 8
    assert err.value.status == HvStatus.NO_RESOURCES
    assert (f"partition {a.id}'s grants and views cost 5 memory mappings and this one needs 4 more; "
            "the limit is 8 (grant_mappings_per_child)") in str(err.value)
    assert "pool" not in str(err.value)
    assert host.introspect.digest() == before          # the refusal changed nothing
    host.grants.create(a, 3, [20, 21, 22, 23])         # contiguous: one more mapping still fits
    host.grants.create(b, 1, [0, 2, 4, 6, 8])          # the other child has its own budget
    assert len(own_view(b, 1, [30, 31])) == 2 * 4096


def test_a_childs_granted_pages_are_limited():
    host = Host(logical_processors=1, memory="16MiB", seed=1, grant_limits={"pages_per_child": 10})
    c = child(host)
    host.grants.create(c, 1, list(range(6)))
    with pytest.raises(HvError) as err:
        host.grants.create(c, 2, list(range(6, 11)))
    assert err.value.status == HvStatus.NO_RESOURCES
    assert f"child {c.id} has 6 pages granted and asks for 5 more; the limit is 10" in str(err.value)
    host.grants.create(c, 2, list(range(6, 10)))


def test_all_partitions_together_are_limited_too():
    host = Host(logical_processors=1, memory="16MiB", seed=1,
                grant_limits={"mappings_per_child": 8, "mappings_per_host": 10})
    a, b = child(host, "a"), child(host, "b")
    host.grants.create(a, 1, [0, 2, 4, 6, 8, 10])
    with pytest.raises(HvError) as err:
        host.grants.create(b, 1, [0, 2, 4, 6, 8])
    assert "the grants and views of all partitions cost 6 memory mappings" in str(err.value)
    assert "the limit is 10 (grant_mappings_per_host)" in str(err.value)
    host.grants.get(a, 1).revoke()                     # a revoke gives the budget back
    host.grants.create(b, 1, [0, 2, 4, 6, 8])


@pytest.mark.parametrize("limits", [{"mappings_per_child": 0}, {"pages": 5}, {"mappings_per_host": "8"}])
def test_bad_grant_limits_are_refused(limits):
    with pytest.raises(ValueError, match="grant_limits"):
        Host(logical_processors=1, memory="16MiB", seed=1, grant_limits=limits)


def test_a_view_the_process_cannot_map_is_refused_as_such(tmp_path):
    """When mmap itself fails (here: an address-space rlimit in a child process) the refusal
    says the process is out of memory mappings, not that some pool is short of pages."""
    import subprocess
    import sys
    import textwrap
    script = textwrap.dedent("""
        import resource
        from hypervisor import Host
        from hypervisor.status import HvError
        from partitions.worker import VmSpec, VmWorker
        host = Host(logical_processors=1, memory="64MiB", seed=1)
        c = VmWorker(host, VmSpec("c", memory="32MiB")).build()
        with open("/proc/self/status") as f:
            vm = next(int(line.split()[1]) for line in f if line.startswith("VmSize:")) * 1024
        resource.setrlimit(resource.RLIMIT_AS, (vm + (8 << 20), resource.RLIM_INFINITY))
        try:
            host.grants.create(c, 1, list(range(0, 8192)))     # a 32 MiB view: no room for it
        except HvError as exc:
            print(exc)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert "NO_RESOURCES" in out.stdout, out.stdout + out.stderr
    assert "the process is out of memory mappings" in out.stdout
