"""Partition hypercalls: CreatePartition, InitializePartition, FinalizePartition, DeletePartition,
Get/SetPartitionProperty, GetPartitionId, GetNextChildPartition: each one's success path (checked
through introspection) and every error the core can return for it. Also Host's own argument
checks."""
from __future__ import annotations

import struct

import pytest

from hypervisor import CallCode, Host, HvStatus, PartitionProperty, PartitionState, Privilege, control
from hypervisor.abi import (MAX_VPS, PARTITION_ID_SELF, PRIVILEGES_GUEST_DEFAULT, PRIVILEGES_ROOT,
                            PRIVILEGES_ROOT_ONLY)
from hypervisor.introspect import HYPERVISOR

from .conftest import (check_conservation, create_partition_in, expect, get_property_in, info, make_child,
                       next_child_in, pid_in, rejected, set_property_in, unchanged)

UNKNOWN_ID = 0x1234_5678
UNKNOWN_PROPERTIES = (0, 0x00010001, 0x0002FFFF, 0x00FF0000, 0xFFFFFFFF)


def bit(p: Privilege) -> int:
    return 1 << int(p)


# ---- the unchanged() helper itself ----------------------------------------------------------------

def test_unchanged_helper_detects_a_change(host, root):
    with pytest.raises(AssertionError, match="changed"):
        with unchanged(host):
            root.create_partition()
    with pytest.raises(AssertionError, match="expected INVALID_PARAMETER"):
        with rejected(HvStatus.INVALID_PARAMETER, root):
            root.initialize_partition(UNKNOWN_ID)  # ...wrong status


# ---- CreatePartition ------------------------------------------------------------------------------

def test_create_partition(host, root):
    before = check_conservation(host)
    a = root.create_partition()
    b = root.create_partition()
    assert (a.id, b.id) == (2, 3)
    ia = info(host, a)
    assert ia["state"] == PartitionState.CREATED
    assert ia["parent_id"] == root.id
    assert ia["privileges"] == PRIVILEGES_GUEST_DEFAULT
    assert (ia["cpu_reserve"], ia["cpu_cap"], ia["cpu_weight"]) == (0, 100, 100)
    assert (ia["pages_owned"], ia["pool_free"], ia["pool_used"], ia["gpa_mapped"], ia["vp_mask"]) == (0, 0, 0, 0, 0)
    assert host.introspect.partition_ids() == [root.id, a.id, b.id]
    assert host.introspect.totals()["partitions"] == 3
    assert check_conservation(host) == before  # creating costs no pages


def test_create_partition_raw_output(root):
    r = expect(root.vp(0), control(CallCode.CREATE_PARTITION), create_partition_in())
    assert struct.unpack("<Q", r.output)[0] == 2


def test_create_partition_ignores_compat_and_disabled_features(host, root):
    expect(root.vp(0), control(CallCode.CREATE_PARTITION),
           create_partition_in(compat=7, disabled=b"\xff" * 16, xsave=0xFF))
    assert len(host.introspect.partition_ids()) == 2


@pytest.mark.parametrize("field", ["flags", "padding", "rsvdz"])
@pytest.mark.parametrize("value", [1, 1 << 31])
def test_create_partition_nonzero_reserved_fields(root, field, value):
    expect(root.vp(0), control(CallCode.CREATE_PARTITION), create_partition_in(**{field: value}),
           status=HvStatus.INVALID_PARAMETER)


@pytest.mark.parametrize("value", [1, 0x8000_0000_0000_0000, 0xFFFF_FFFF])
def test_create_partition_proximity_domain(root, value):
    expect(root.vp(0), control(CallCode.CREATE_PARTITION), create_partition_in(proximity=value),
           status=HvStatus.INVALID_PROXIMITY_DOMAIN_INFO)


def test_create_partition_by_child_is_denied(host, child):
    with rejected(HvStatus.ACCESS_DENIED, child):
        child.create_partition()


def test_create_partition_when_every_slot_is_taken(host, root):
    vp = root.vp(0)
    n = 0
    while True:
        r = vp.hypercall(control(CallCode.CREATE_PARTITION), create_partition_in())
        if not r.ok:
            break
        n += 1
    assert r.status == HvStatus.INSUFFICIENT_MEMORY
    assert n == 2047  # HV_MAX_PARTITIONS slots, the root holds one
    expect(vp, control(CallCode.CREATE_PARTITION), create_partition_in(), status=HvStatus.INSUFFICIENT_MEMORY)
    # deleting one frees a slot; ids are never reused
    last = max(host.introspect.partition_ids())
    root.delete_partition(5)
    assert root.create_partition().id == last + 1


# ---- InitializePartition ------------------------------------------------------------------------

def test_initialize_partition(host, root):
    c = root.create_partition()
    pages = host.root_memory.allocate(3)
    root.deposit_memory(c, pages)
    root.initialize_partition(c)
    i = info(host, c)
    assert i["state"] == PartitionState.INITIALIZED
    assert (i["pool_free"], i["pool_used"]) == (2, 1)
    assert root.get_memory_balance(c) == (2, 1)
    assert sorted(host.introspect.pool_pages(c)) == sorted(pages)
    check_conservation(host)


@pytest.mark.parametrize("pid", [UNKNOWN_ID, 0, PARTITION_ID_SELF, 1])
def test_initialize_partition_bad_id(host, root, pid):
    # 1 is the root itself: not a child of the caller
    with rejected(HvStatus.INVALID_PARTITION_ID, root):
        root.initialize_partition(pid)


def test_initialize_deleted_partition(host, root):
    c = root.create_partition()
    root.delete_partition(c)
    with rejected(HvStatus.INVALID_PARTITION_ID, root):
        root.initialize_partition(c.id)


def test_initialize_partition_wrong_state(host, root):
    c = make_child(host, map_pages=0)
    root.deposit_memory(c, host.root_memory.allocate(2))
    with rejected(HvStatus.INVALID_PARTITION_STATE, root):
        root.initialize_partition(c)  # already initialized
    root.finalize_partition(c)
    with rejected(HvStatus.INVALID_PARTITION_STATE, root):
        root.initialize_partition(c)  # finalized


def test_initialize_partition_needs_a_pool_page(host, root):
    c = root.create_partition()
    with rejected(HvStatus.INSUFFICIENT_MEMORY, root):
        root.initialize_partition(c)
    assert c.state == PartitionState.CREATED
    root.deposit_memory(c, host.root_memory.allocate(1))
    root.initialize_partition(c)  # exactly one page is enough
    assert root.get_memory_balance(c) == (0, 1)


def test_initialize_partition_by_child_is_denied(host, root, child):
    other = root.create_partition()
    root.deposit_memory(other, host.root_memory.allocate(1))
    with rejected(HvStatus.ACCESS_DENIED, child):
        child.initialize_partition(other)


# ---- FinalizePartition ---------------------------------------------------------------------------

def test_finalize_partition(host, root, child):
    before = info(host, child)
    root.finalize_partition(child)
    after = info(host, child)
    assert after["state"] == PartitionState.FINALIZED
    for k in ("pages_owned", "pool_free", "pool_used", "gpa_mapped", "vp_mask"):
        assert after[k] == before[k]


@pytest.mark.parametrize("pid", [UNKNOWN_ID, PARTITION_ID_SELF, 1, 0])
def test_finalize_partition_bad_id(root, pid):
    with rejected(HvStatus.INVALID_PARTITION_ID, root):
        root.finalize_partition(pid)


def test_finalize_partition_wrong_state(host, root):
    c = root.create_partition()
    with rejected(HvStatus.INVALID_PARTITION_STATE, root):
        root.finalize_partition(c)  # created
    root.deposit_memory(c, host.root_memory.allocate(1))
    root.initialize_partition(c)
    root.finalize_partition(c)
    with rejected(HvStatus.INVALID_PARTITION_STATE, root):
        root.finalize_partition(c)  # finalized


def test_finalize_partition_by_child_is_denied(host, root, child):
    with rejected(HvStatus.ACCESS_DENIED, child):
        child.finalize_partition(PARTITION_ID_SELF)
    with rejected(HvStatus.ACCESS_DENIED, child):
        child.finalize_partition(child)


# ---- DeletePartition -------------------------------------------------------------------------------

def test_delete_created_partition(host, root):
    initial = check_conservation(host)
    c = root.create_partition()
    root.deposit_memory(c, host.root_memory.allocate(5))
    assert check_conservation(host)[HYPERVISOR] == initial[HYPERVISOR] + 5
    root.delete_partition(c)
    assert c.id not in host.introspect.partition_ids()
    assert host.introspect.partition_info(c.id) is None
    assert check_conservation(host) == initial


def test_delete_finalized_partition_returns_everything(host, root):
    initial = check_conservation(host)
    c = make_child(host, pool=6, map_pages=8, vps=(0, 1))
    c.write(0x100, b"secret")
    pool = host.introspect.pool_pages(c)
    mapped = [pfn for pfn, _ in host.introspect.reach(c).values()]
    root.finalize_partition(c)
    root.delete_partition(c)
    assert check_conservation(host) == initial
    for pfn in pool + mapped:
        assert host.introspect.owner_of(pfn) == root.id
        assert root.read(pfn * 4096, 4096) == bytes(4096)  # zeroed, leaf tables included


def test_delete_partition_bad_id(host, root):
    for pid in (UNKNOWN_ID, PARTITION_ID_SELF, root.id, 0):
        with rejected(HvStatus.INVALID_PARTITION_ID, root):
            root.delete_partition(pid)
    c = root.create_partition()
    root.delete_partition(c)
    with rejected(HvStatus.INVALID_PARTITION_ID, root):
        root.delete_partition(c.id)  # twice


def test_delete_initialized_partition_is_refused(host, root, child):
    with rejected(HvStatus.INVALID_PARTITION_STATE, root):
        root.delete_partition(child)
    assert child.state == PartitionState.INITIALIZED


def test_delete_partition_by_child_is_denied(host, root, child):
    other = root.create_partition()
    with rejected(HvStatus.ACCESS_DENIED, child):
        child.delete_partition(other)


# ---- GetPartitionProperty ------------------------------------------------------------------------

def test_get_partition_property(host, root, child):
    assert root.get_partition_property(child, PartitionProperty.PRIVILEGE_FLAGS) == PRIVILEGES_GUEST_DEFAULT
    assert root.get_partition_property(child, PartitionProperty.CPU_RESERVE) == 0
    assert root.get_partition_property(child, PartitionProperty.CPU_CAP) == 100
    assert root.get_partition_property(child, PartitionProperty.CPU_WEIGHT) == 100
    assert root.get_partition_property(None, PartitionProperty.PRIVILEGE_FLAGS) == PRIVILEGES_ROOT
    assert root.get_partition_property(root, PartitionProperty.CPU_CAP) == 100
    # a child reads its own, by SELF or by its id, without any privilege
    assert child.get_partition_property(None, PartitionProperty.PRIVILEGE_FLAGS) == PRIVILEGES_GUEST_DEFAULT
    assert child.get_partition_property(child, PartitionProperty.CPU_WEIGHT) == 100


def test_get_partition_property_unknown(root, child):
    for code in UNKNOWN_PROPERTIES:
        with rejected(HvStatus.UNKNOWN_PROPERTY, root):
            root.get_partition_property(child, code)


def test_get_partition_property_nonzero_padding(root, child):
    expect(root.vp(0), control(CallCode.GET_PARTITION_PROPERTY),
           get_property_in(child.id, PartitionProperty.CPU_CAP, padding=1), status=HvStatus.INVALID_PARAMETER)


def test_get_partition_property_bad_id(host, root, child):
    other = make_child(host)
    for caller, target in ((root, UNKNOWN_ID), (root, 0), (child, root.id), (child, other.id), (child, UNKNOWN_ID)):
        with rejected(HvStatus.INVALID_PARTITION_ID, caller):
            caller.get_partition_property(target, PartitionProperty.CPU_CAP)


# ---- SetPartitionProperty ------------------------------------------------------------------------

@pytest.mark.parametrize("prop,field,good,bad", [
    (PartitionProperty.CPU_RESERVE, "cpu_reserve", [0, 1, 50, 100], [101, 1 << 32, 2**64 - 1]),
    (PartitionProperty.CPU_CAP, "cpu_cap", [1, 50, 100], [0, 101, 1 << 32]),
    (PartitionProperty.CPU_WEIGHT, "cpu_weight", [1, 5000, 10000], [0, 10001, 1 << 32]),
])
def test_set_cpu_property_bounds(host, root, prop, field, good, bad):
    c = make_child(host)
    for v in good:
        root.set_partition_property(c, prop, v)
        assert info(host, c)[field] == v
        assert root.get_partition_property(c, prop) == v
    for v in bad:
        with rejected(HvStatus.PROPERTY_VALUE_OUT_OF_RANGE, root):
            root.set_partition_property(c, prop, v)
        assert info(host, c)[field] == good[-1]


def test_set_cpu_property_in_any_state(host, root):
    c = root.create_partition()
    root.set_partition_property(c, PartitionProperty.CPU_WEIGHT, 7)
    root.deposit_memory(c, host.root_memory.allocate(1))
    root.initialize_partition(c)
    root.set_partition_property(c, PartitionProperty.CPU_CAP, 8)
    root.finalize_partition(c)
    root.set_partition_property(c, PartitionProperty.CPU_RESERVE, 9)
    i = info(host, c)
    assert (i["cpu_weight"], i["cpu_cap"], i["cpu_reserve"]) == (7, 8, 9)


def test_set_privileges_before_initialize(host, root):
    c = root.create_partition()
    flags = PRIVILEGES_GUEST_DEFAULT | bit(Privilege.ACCESS_VP_REGISTERS) | bit(Privilege.CREATE_PORT)
    root.set_partition_property(c, PartitionProperty.PRIVILEGE_FLAGS, flags)
    assert info(host, c)["privileges"] == flags
    root.set_partition_property(c, PartitionProperty.PRIVILEGE_FLAGS, 0)
    assert info(host, c)["privileges"] == 0


def test_removed_privilege_takes_effect(host, root):
    c = root.create_partition()
    root.set_partition_property(c, PartitionProperty.PRIVILEGE_FLAGS,
                                PRIVILEGES_GUEST_DEFAULT & ~bit(Privilege.ACCESS_PARTITION_ID))
    root.deposit_memory(c, host.root_memory.allocate(3))
    root.initialize_partition(c)
    root.create_vp(c, 0)
    root.map_gpa_pages(c, 0, host.root_memory.allocate(2))
    with rejected(HvStatus.ACCESS_DENIED, c):
        c.get_partition_id()


def test_set_privileges_after_initialize(host, root, child):
    for flags in (PRIVILEGES_GUEST_DEFAULT, 0):
        with rejected(HvStatus.INVALID_PARTITION_STATE, root):
            root.set_partition_property(child, PartitionProperty.PRIVILEGE_FLAGS, flags)
    root.finalize_partition(child)
    with rejected(HvStatus.INVALID_PARTITION_STATE, root):
        root.set_partition_property(child, PartitionProperty.PRIVILEGE_FLAGS, 0)


@pytest.mark.parametrize("extra", [Privilege.CREATE_PARTITIONS, Privilege.ACCESS_MEMORY_POOL])
def test_child_never_gets_root_only_privileges(host, root, extra):
    c = root.create_partition()
    with rejected(HvStatus.PROPERTY_VALUE_OUT_OF_RANGE, root):
        root.set_partition_property(c, PartitionProperty.PRIVILEGE_FLAGS, PRIVILEGES_GUEST_DEFAULT | bit(extra))
    with rejected(HvStatus.PROPERTY_VALUE_OUT_OF_RANGE, root):
        root.set_partition_property(c, PartitionProperty.PRIVILEGE_FLAGS, PRIVILEGES_ROOT)
    assert info(host, c)["privileges"] == PRIVILEGES_GUEST_DEFAULT
    assert PRIVILEGES_ROOT_ONLY == bit(Privilege.CREATE_PARTITIONS) | bit(Privilege.ACCESS_MEMORY_POOL)


@pytest.mark.parametrize("b", [7, 8, 10, 11, 12, 16, 31, 35, 43, 48, 63])
def test_child_never_gets_a_privilege_the_root_lacks(root, b):
    assert not PRIVILEGES_ROOT >> b & 1
    c = root.create_partition()
    with rejected(HvStatus.PROPERTY_VALUE_OUT_OF_RANGE, root):
        root.set_partition_property(c, PartitionProperty.PRIVILEGE_FLAGS, PRIVILEGES_GUEST_DEFAULT | 1 << b)


def test_set_partition_property_unknown(host, root):
    c = root.create_partition()
    for code in UNKNOWN_PROPERTIES:
        with rejected(HvStatus.UNKNOWN_PROPERTY, root):
            root.set_partition_property(c, code, 1)


def test_set_partition_property_nonzero_padding(root):
    c = root.create_partition()
    expect(root.vp(0), control(CallCode.SET_PARTITION_PROPERTY),
           set_property_in(c.id, PartitionProperty.CPU_CAP, 50, padding=1), status=HvStatus.INVALID_PARAMETER)


@pytest.mark.parametrize("pid", [UNKNOWN_ID, PARTITION_ID_SELF, 1, 0])
def test_set_partition_property_bad_id(root, pid):
    # SELF and the root's own id: a partition does not set its own properties
    with rejected(HvStatus.INVALID_PARTITION_ID, root):
        root.set_partition_property(pid, PartitionProperty.CPU_CAP, 50)


def test_set_partition_property_by_child_is_denied(host, root, child):
    other = root.create_partition()
    for target in (None, other):
        with rejected(HvStatus.ACCESS_DENIED, child):
            child.set_partition_property(target, PartitionProperty.CPU_CAP, 50)


# ---- GetPartitionId -----------------------------------------------------------------------------------

def test_get_partition_id(host, root, child):
    assert root.get_partition_id() == root.id == 1
    assert child.get_partition_id() == child.id
    assert root.get_partition_id(via=root.vp(1)) == root.id


def test_get_partition_id_needs_access_partition_id(host, root):
    c = root.create_partition()
    root.set_partition_property(c, PartitionProperty.PRIVILEGE_FLAGS, bit(Privilege.ACCESS_VP_INDEX))
    root.deposit_memory(c, host.root_memory.allocate(3))
    root.initialize_partition(c)
    root.create_vp(c, 0)
    root.map_gpa_pages(c, 0, host.root_memory.allocate(2))
    with rejected(HvStatus.ACCESS_DENIED, c):
        c.get_partition_id()


# ---- GetNextChildPartition --------------------------------------------------------------------------

def test_get_next_child_partition(host, root):
    assert root.get_next_child_partition() == 0
    kids = [root.create_partition() for _ in range(4)]
    assert [k.id for k in root.children()] == [2, 3, 4, 5]
    assert root.get_next_child_partition(0) == 2
    assert root.get_next_child_partition(kids[1]) == 4
    assert root.get_next_child_partition(kids[3]) == 0
    root.delete_partition(kids[2])
    assert [k.id for k in root.children()] == [2, 3, 5]
    # explicit parent id instead of SELF
    r = expect(root.vp(0), control(CallCode.GET_NEXT_CHILD_PARTITION), next_child_in(root.id, 3))
    assert struct.unpack("<Q", r.output)[0] == 5


def test_get_next_child_partition_bad_ids(host, root):
    a = root.create_partition()
    b = root.create_partition()
    root.delete_partition(b)
    vp = root.vp(0)
    for parent, prev in ((a.id, 0), (UNKNOWN_ID, 0), (0, 0), (PARTITION_ID_SELF, UNKNOWN_ID),
                         (PARTITION_ID_SELF, b.id), (PARTITION_ID_SELF, root.id)):
        expect(vp, control(CallCode.GET_NEXT_CHILD_PARTITION), next_child_in(parent, prev),
               status=HvStatus.INVALID_PARTITION_ID)


def test_get_next_child_partition_by_child_is_denied(child):
    with rejected(HvStatus.ACCESS_DENIED, child):
        child.get_next_child_partition()


# ---- privileged partition calls from a child: ACCESS_DENIED, raw ------------------------------------

@pytest.mark.parametrize("code", [CallCode.CREATE_PARTITION, CallCode.INITIALIZE_PARTITION,
                                  CallCode.FINALIZE_PARTITION, CallCode.DELETE_PARTITION,
                                  CallCode.SET_PARTITION_PROPERTY, CallCode.GET_NEXT_CHILD_PARTITION])
def test_privileged_partition_call_from_child(host, root, child, code):
    other = root.create_partition()
    data = {CallCode.CREATE_PARTITION: create_partition_in(),
            CallCode.SET_PARTITION_PROPERTY: set_property_in(other.id, PartitionProperty.CPU_CAP, 5),
            CallCode.GET_NEXT_CHILD_PARTITION: next_child_in()}.get(code, pid_in(other.id))
    expect(child.vp(0), control(code), data, status=HvStatus.ACCESS_DENIED)


# ---- Host arguments ------------------------------------------------------------------------------------

@pytest.mark.parametrize("kw,match", [
    (dict(memory="lots"), "memory"),
    (dict(memory="16 MiBs"), "memory"),
    (dict(memory="-1GiB"), "memory"),
    (dict(memory=-4096), "memory"),
    (dict(memory="1.5KiB"), "memory"),
    (dict(memory=4096 * 64 + 1), "memory"),
    (dict(memory="128KiB"), "memory"),
    (dict(memory=True), "memory"),
    (dict(logical_processors=6, smt=4), "smt"),
    (dict(logical_processors=3, smt=2), "smt"),
    (dict(smt=0), "smt"),
    (dict(logical_processors=0), "logical_processors"),
    (dict(root_vps=65), "root_vps"),
    (dict(reps_per_call=0), "reps_per_call"),
    (dict(reps_per_call=4096), "reps_per_call"),
])
def test_host_argument_validation(kw, match):
    args = dict(logical_processors=2, memory="16MiB", seed=1)
    args.update(kw)
    with pytest.raises(ValueError, match=match) as exc:
        Host(**args)
    # the message names the offending value
    bad = kw.get(match, next(iter(kw.values())))
    assert repr(bad) in str(exc.value)


def test_host_smt_message_names_the_divisor():
    with pytest.raises(ValueError) as exc:
        Host(logical_processors=6, memory="16MiB", smt=4)
    msg = str(exc.value)
    assert "smt" in msg and "6" in msg and "4" in msg


def test_host_memory_units():
    assert Host(logical_processors=1, memory="16MiB").pages == 4096
    assert Host(logical_processors=1, memory=4_096_000).pages == 1000
    assert Host(logical_processors=1, memory="0.5MiB").pages == 128
    # Hyper-V's 16MB is 16 MiB, the SI's 16,000,000 bytes: refused, with both ways to write it.
    with pytest.raises(ValueError, match='memory: \'16MB\' is ambiguous: write "16MiB" .* or 16000000'):
        Host(logical_processors=1, memory="16MB")
    assert Host(logical_processors=1, memory=1 << 20).pages == 256
    assert Host(logical_processors=4, memory="1MiB", smt=2).introspect.totals()["pages"] == 256


def test_host_64gib_boots():
    host = Host(logical_processors=4, memory="64GiB", seed=1)
    t = host.introspect.totals()
    assert t["pages"] == 16777216 == host.pages
    assert t["hv_pages"] == 16
    assert t["partition_pages"] == 16777216 - 16
    assert t["partitions"] == 1
    assert host.root.get_partition_id() == 1
    # a child in it works as on a small host
    c = make_child(host, map_pages=2)
    assert c.get_partition_id() == 2
    assert host.introspect.totals()["pages"] == 16777216


def test_root_vps(host):
    assert info(host, host.root)["vp_mask"] == 0b11
    h = Host(logical_processors=4, memory="16MiB", root_vps=1)
    assert info(h, h.root)["vp_mask"] == 0b1
    h = Host(logical_processors=64, memory="16MiB")
    assert info(h, h.root)["vp_mask"] == (1 << MAX_VPS) - 1


# ---- the SUSPEND property and CPU admission (scheduling; native/partition.c, run.c) ----------------

SUSPEND = 0x00020000  # HV_PARTITION_PROPERTY_SUSPEND (not in PartitionProperty yet)


def test_suspend_property(host, root):
    c = root.create_partition()
    assert root.get_partition_property(c, SUSPEND) == 1  # children start suspended
    assert root.get_partition_property(None, SUSPEND) == 0  # the root runs
    with rejected(HvStatus.INVALID_PARTITION_STATE, root):
        root.set_partition_property(c, SUSPEND, 0)  # a created partition cannot run
    for v in (2, 1 << 32):
        with rejected(HvStatus.PROPERTY_VALUE_OUT_OF_RANGE, root):
            root.set_partition_property(c, SUSPEND, v)
    root.set_partition_property(c, SUSPEND, 1)  # already suspended: no change
    root.deposit_memory(c, host.root_memory.allocate(2))
    root.initialize_partition(c)
    root.create_vp(c, 0)
    root.set_partition_property(c, SUSPEND, 0)
    assert info(host, c)["started"] and root.get_partition_property(c, SUSPEND) == 0
    root.set_partition_property(c, SUSPEND, 1)
    assert not info(host, c)["started"]
    root.set_partition_property(c, SUSPEND, 0)
    root.finalize_partition(c)  # finalizing stops it
    assert not info(host, c)["started"]
    with rejected(HvStatus.INVALID_PARTITION_STATE, root):
        root.set_partition_property(c, SUSPEND, 0)


def test_cpu_reserve_admission(host, root):
    # 2 LPs = 200% to reserve; the root reserves nothing.
    c = make_child(host, pool=6, vps=(0, 1, 2), map_pages=0)
    root.set_partition_property(c, PartitionProperty.CPU_RESERVE, 70)  # suspended: not checked yet
    with rejected(HvStatus.NO_RESOURCES, root):
        root.set_partition_property(c, SUSPEND, 0)  # 3 x 70% > 200%
    assert not info(host, c)["started"]
    root.set_partition_property(c, PartitionProperty.CPU_RESERVE, 60)
    root.set_partition_property(c, SUSPEND, 0)  # 180% fits
    with rejected(HvStatus.NO_RESOURCES, root):
        root.set_partition_property(c, PartitionProperty.CPU_RESERVE, 70)
    assert info(host, c)["cpu_reserve"] == 60
