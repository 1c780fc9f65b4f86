"""The isolation invariants themselves: each check fires when the property it guards is broken.

A broken core is simulated by `Doctored` tables: the core's own tables as `Tables` reads them, with
one fact changed (a page's owner, a partition's reach or its counts), which is what the checks
would read had the core that bug. Every check reads the core through `Tables` only, so a check
that stopped judging some page or partition would let one of these pass. `Tables` itself must
read what introspection reads."""
import pytest

from hypervisor import _binding
from hypervisor.abi import OWNER_HV
from hypervisor.testing.invariants import (InvariantViolation, Tables, check_all, check_messages, check_ownership,
                                           check_reach)
from hypervisor.testing.machine import MessagingMachine
from tests.hypervisor.conftest import make_child, new_host


class Doctored(Tables):
    """`Tables` with changes applied to what it reads: `codes(list)`, `info(pid, dict)` and
    `reach(pid, gpas, pfns, rights)` edit copies in place."""

    def __init__(self, host, *, codes=None, info=None, reach=None):
        super().__init__(host)
        self._edit_codes, self._edit_info, self._edit_reach = codes, info, reach

    @property
    def codes(self):
        codes = list(super().codes)
        if self._edit_codes:
            self._edit_codes(codes)
        return codes

    def info(self, pid):
        info = super().info(pid)
        if info is None or not self._edit_info:
            return info
        info = dict(info)
        self._edit_info(pid, info)
        return info

    def reach(self, pid):
        gpas, pfns, rights = (list(c) for c in super().reach(pid))
        if self._edit_reach:
            self._edit_reach(pid, gpas, pfns, rights)
        return gpas, pfns, rights


@pytest.fixture
def busy():
    """A root, two children with memory (one with ports-free pool pages) and a live grant."""
    host = new_host(memory="4MiB")
    a = make_child(host, pool=6, map_pages=8)
    b = make_child(host, pool=6, map_pages=8)
    host.grants.create(a, 7, [1, 2])
    return host, a, b


def pfns_of(host, p):
    return host.introspect.reach_columns(p)[1]


def fires(name, check, *args, **kw):
    with pytest.raises(InvariantViolation) as err:
        check(*args, **kw)
    assert str(err.value).startswith(name + ":"), err.value
    return str(err.value)


def test_the_untouched_tables_pass_every_check(busy):
    host, _, _ = busy
    check_all(host)
    t = Doctored(host)
    check_ownership(host, t)
    check_reach(host, t)
    check_messages(host, tables=t)


def test_tables_read_what_introspection_reads(busy):
    host, a, b = busy
    t = Tables(host)
    assert t.ids == host.introspect.partition_ids()
    assert t.codes == host.introspect.owner_codes().tolist()
    ffi, lib = _binding.ffi, _binding.lib
    for pid in t.ids:
        assert t.info(pid) == host.introspect.partition_info(pid)
        assert t.reach_map(pid) == host.introspect.reach(pid)
        # element by element, the way the binding once converted the core's arrays
        n = lib.hv_partition_reach(host._h, pid, ffi.NULL, ffi.NULL, ffi.NULL, 0)
        gpas, pfns, rights = ffi.new("uint64_t[]", n), ffi.new("uint64_t[]", n), ffi.new("uint32_t[]", n)
        lib.hv_partition_reach(host._h, pid, gpas, pfns, rights, n)
        assert list(zip(*t.reach(pid))) == [(gpas[i], pfns[i], rights[i]) for i in range(n)]
        assert n > 0


# ---- INV-OWN ----------------------------------------------------------------------------------

def test_inv_own_fires_on_a_page_owned_by_no_live_partition(busy):
    host, a, _ = busy
    victim = pfns_of(host, a)[3]
    fires("INV-OWN", check_ownership, host, Doctored(host, codes=lambda c: c.__setitem__(victim, 250)))


def test_inv_own_fires_when_a_partitions_count_disagrees_with_the_recount(busy):
    host, a, _ = busy
    edit = lambda pid, info: info.__setitem__("pages_owned", info["pages_owned"] + (pid == a.id))
    message = fires("INV-OWN", check_ownership, host, Doctored(host, info=edit))
    assert f"partition {a.id} owns" in message


def test_inv_own_fires_on_a_pool_page_the_hypervisor_does_not_own(busy, monkeypatch):
    host, a, _ = busy
    pool_page = host.introspect.pool_pages(a)[0]
    slot = host.introspect.partition_info(a)["slot"]
    # The page recounted as the child's, and every count made to agree with that, so that only
    # the pool's own check is left to notice.
    edit = lambda pid, info: info.__setitem__("pages_owned", info["pages_owned"] + (pid == a.id))
    tables = Doctored(host, codes=lambda c: c.__setitem__(pool_page, slot), info=edit)
    totals = host.introspect.totals()
    monkeypatch.setattr(host.introspect, "totals", lambda: dict(totals, hv_pages=totals["hv_pages"] - 1))
    message = fires("INV-OWN", check_ownership, host, tables)
    assert f"pool page {pool_page} of partition {a.id}" in message


# ---- INV-REACH, INV-HV ------------------------------------------------------------------------

def test_inv_hv_fires_when_a_child_reaches_a_hypervisor_page(busy):
    host, a, _ = busy
    hv_page = host.introspect.pool_pages(a)[0]
    assert host.introspect.owner_codes(hv_page, 1)[0] == OWNER_HV

    def reach(pid, gpas, pfns, rights):
        if pid == a.id:
            pfns[-1] = hv_page
    fires("INV-HV", check_reach, host, Doctored(host, reach=reach))


def test_inv_reach_child_fires_when_a_child_reaches_another_childs_page(busy):
    host, a, b = busy
    theirs = pfns_of(host, b)[5]

    def reach(pid, gpas, pfns, rights):
        if pid == a.id:
            pfns[4] = theirs
    message = fires("INV-REACH-CHILD", check_reach, host, Doctored(host, reach=reach))
    assert f"partition {a.id} reaches page {theirs} owned by {b.id}" in message


def test_inv_reach_fires_on_one_page_at_two_gpas(busy):
    host, a, _ = busy

    def reach(pid, gpas, pfns, rights):
        if pid == a.id:
            pfns[6] = pfns[5]  # pages the grant does not cover
    fires("INV-REACH", check_reach, host, Doctored(host, reach=reach))


def test_inv_reach_child_fires_on_a_mapped_count_the_map_does_not_hold(busy):
    host, a, _ = busy
    edit = lambda pid, info: info.__setitem__("gpa_mapped", info["gpa_mapped"] + (pid == a.id))
    fires("INV-REACH-CHILD", check_reach, host, Doctored(host, info=edit))


def test_inv_reach_parent_fires_when_the_root_reaches_an_ungranted_child_page(busy):
    host, a, _ = busy
    granted = host.grants.granted_pages(a)
    ungranted = next(p for p in pfns_of(host, a) if p not in granted)

    def reach(pid, gpas, pfns, rights):
        if pid == host.root.id:
            gpas.append(ungranted)
            pfns.append(ungranted)
            rights.append(rights[0])
    message = fires("INV-REACH-PARENT", check_reach, host, Doctored(host, reach=reach))
    assert f"reaches page {ungranted} owned by {a.id}" in message


def test_inv_reach_parent_fires_when_the_root_loses_a_granted_page(busy):
    host, a, _ = busy
    granted = sorted(host.grants.granted_pages(a))

    def reach(pid, gpas, pfns, rights):
        if pid == host.root.id:
            i = pfns.index(granted[0])
            del gpas[i], pfns[i], rights[i]
    message = fires("INV-REACH-PARENT", check_reach, host, Doctored(host, reach=reach))
    assert "should reach" in message


# ---- INV-ACCOUNT (through the same tables) ------------------------------------------------------

def test_inv_account_fires_on_a_pool_page_used_for_nothing(busy):
    host, a, _ = busy
    edit = lambda pid, info: info.__setitem__("pool_used", info["pool_used"] + (pid == a.id))
    message = fires("INV-ACCOUNT", check_messages, host, tables=Doctored(host, info=edit))
    assert f"partition {a.id} uses" in message


def test_inv_account_counts_a_childs_gpa_leaf_tables_from_its_reach(busy):
    host, a, _ = busy

    def reach(pid, gpas, pfns, rights):
        if pid == a.id:
            gpas[-1] += 4096  # a mapping in another 512-page region: one more leaf table
    fires("INV-ACCOUNT", check_messages, host, tables=Doctored(host, reach=reach))


# ---- the machine reads the tables once per round of checks --------------------------------------

def test_the_machines_message_checks_read_fresh_tables_each_round_and_still_catch_a_stray_message():
    machine = MessagingMachine()
    machine.root_synic()
    machine.start()
    machine.create_guest(None, vps=1, create_port=False, connect_port=False, no_post=False, no_signal=False)
    machine.messages_hold()
    assert machine._tables is None  # the rules never see a round's tables
    child = machine.children[0]
    simp, _ = machine.child_synic_pages[child.id, 0]
    # a message in a trusted slot that no port delivered (what a core bug writing there would do)
    child.write(simp * 4096 + 2 * 256, (0x1234).to_bytes(4, "little") + bytes([5, 0, 0, 0]) + bytes(8) + b"stray")
    with pytest.raises(InvariantViolation, match="^INV-MSG: .*no port of the partition delivered there"):
        machine.messages_hold()
    assert machine._tables is None


def test_a_reach_larger_than_the_first_room_is_read_whole(busy, monkeypatch):
    host, a, _ = busy
    whole = {pid: host.introspect.reach_columns(pid) for pid in host.introspect.partition_ids()}
    monkeypatch.setattr(host, "memory_bytes", 3 * 4096)  # the first walk's room: 3 pages, less than any reach
    for pid, columns in whole.items():
        assert host.introspect.reach_columns(pid) == columns
        assert len(columns[0]) > 3
