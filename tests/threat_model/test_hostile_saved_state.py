"""Threat model case 41, beyond the VP records (tests/partitions/test_restore_validation.py): a
saved state whose digests are all valid but whose memory records or sections are hostile (pages
outside the VM or of the wrong size, addresses of the wrong type or out of range, a page given
twice or changed from what the header's memory digest says, a header time or page count that
cannot be, device records of the wrong form, a section missing) is refused with SavedStateError and changes nothing: the VM stays Saved, its memory as
the save left it, its devices as they were, and the good file still restores."""
from __future__ import annotations

import pytest

from drivers.ic import HEARTBEAT, SHUTDOWN
from drivers.registry import discover
from hypervisor import Host
from hypervisor.testing.invariants import check_all
from partitions.savedstate import SavedStateError, SavedStateReader, SavedStateWriter
from partitions.vm import DeviceSlot, VirtualMachine, VmState
from partitions.vmbus_parent import ParentVmbus
from partitions.worker import VmSpec
from tests.partitions.test_restore_validation import counter   # the same guest: a counter in memory

MS = 1_000_000


@pytest.fixture
def saved(tmp_path):
    """A VM saved to a file: (host, vm, path, its memory digest before the save)."""
    host = Host(logical_processors=2, memory="128MiB", seed=3)
    vm = VirtualMachine(host, ParentVmbus(host, vp_index=1), discover(), VmSpec("vm", memory="2MiB", processors=1),
                        devices=[DeviceSlot(HEARTBEAT), DeviceSlot(SHUTDOWN)], workload=counter)
    vm.start()
    host.run(300 * MS)
    before = vm.memory_digest()
    path = tmp_path / "vm.hvsav"
    vm.save(path)
    return host, vm, path, before


def craft(good, out, *, meta=None, vps=None, devices=None, memory=None, sections=("vps", "devices", "memory")):
    """Copy the saved state `good` to `out` with valid digests; each edit function gets the
    loaded part (meta dict, vps list, devices dict, memory record list) and returns what to write."""
    with SavedStateReader(good, kind="saved-state") as r:
        parts = {"vps": r.load("vps"), "devices": r.load("devices"),
                 "memory": [list(rec) for rec in r.records("memory")]}
        head = dict(r.meta)
    head = meta(head) if meta else head
    for name, edit in (("vps", vps), ("devices", devices), ("memory", memory)):
        if edit:
            parts[name] = edit(parts[name])
    with SavedStateWriter(out, "saved-state", head) as w:
        for name in sections:
            if name == "memory":
                mem = w.stream("memory")
                for record in parts["memory"]:
                    mem.write_record(record)
                mem.close()
            else:
                w.section(name, parts[name])


HOSTILE = {
    # memory records
    "memory record outside the vm": dict(memory=lambda m: m + [[1 << 30, bytes(4096)]]),
    "memory record of a short page": dict(memory=lambda m: m + [[m[0][0], b"\x01" * 100]]),
    "memory gpa not a number": dict(memory=lambda m: m + [["zero", bytes(4096)]]),
    "memory gpa negative": dict(memory=lambda m: m + [[-1, bytes(4096)]]),
    "memory record not a pair": dict(memory=lambda m: m + [[m[0][0]]]),
    "memory page given twice": dict(memory=lambda m: m + [[m[0][0], bytes(4096)]]),
    "memory page changed": dict(memory=lambda m: [[m[0][0], bytes([m[0][1][0] ^ 1]) + m[0][1][1:]]] + m[1:]),
    # the header
    "time not a number": dict(meta=lambda h: {**h, "time_ns": "soon"}),
    "wrong page count": dict(meta=lambda h: {**h, "pages": h["pages"] + 1}),
    # device records
    "device record not a map": dict(devices=lambda d: {**d, "heartbeat": [1, 2]}),
    "device state of the wrong form": dict(devices=lambda d: {**d, "heartbeat": {"saved": 1, "extra": 2}}),
    "device the vm does not have": dict(devices=lambda d: {**d, "storage": {"saved": {}}}),
    "devices not a map": dict(devices=lambda d: ["heartbeat"]),
    # sections
    "no devices section": dict(sections=("vps", "memory")),
    "no memory section": dict(sections=("vps", "devices")),
    "no vps section": dict(sections=("devices", "memory")),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_a_hostile_file_with_valid_digests_is_refused_and_changes_nothing(saved, tmp_path, case):
    host, vm, good, before = saved
    bad = tmp_path / "bad.hvsav"
    craft(good, bad, **HOSTILE[case])
    wiped = vm.memory_digest()
    devices = {slot.name: vm.device_vsp(slot.name).save() for slot in vm.devices}
    with pytest.raises(SavedStateError):
        vm.restore(bad)
    assert vm.state is VmState.SAVED
    assert vm.memory_digest() == wiped
    assert {slot.name: vm.device_vsp(slot.name).save() for slot in vm.devices} == devices
    vm.restore(good)
    assert vm.state is VmState.RUNNING and vm.memory_digest() == before
    host.run(100 * MS)
    check_all(host)


def test_a_faithful_copy_restores(saved, tmp_path):
    """The crafting itself changes nothing that matters: an unedited copy restores."""
    host, vm, good, before = saved
    copy = tmp_path / "copy.hvsav"
    craft(good, copy)
    vm.restore(copy)
    assert vm.state is VmState.RUNNING and vm.memory_digest() == before
