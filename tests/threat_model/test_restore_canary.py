"""Threat model case 44 (restore canary): a guest keeps writing an incrementing counter into every
page of a region of its memory (the memory-counter workload) while its VM is saved and restored,
again and again, some saves falling inside a round. Every page must always hold the value the
guest last wrote there: after each restore nothing went back (no lost write), and from one look
to the next every page's value only grows."""
from __future__ import annotations

import pytest

from drivers.ic import HEARTBEAT, SHUTDOWN
from drivers.registry import discover
from hypervisor import Host
from hypervisor.abi import PAGE_SIZE
from hypervisor.testing.invariants import check_all
from partitions.vm import DeviceSlot, VirtualMachine, VmState
from partitions.vmbus_parent import ParentVmbus
from partitions.workloads import memory_counter
from partitions.worker import VmSpec

US, MS, S = 1_000, 1_000_000, 1_000_000_000
PAGES = 48


class LostWrite(AssertionError):
    pass


class Canary:
    """Reads the counter pages back and checks them against what the guest wrote and against
    the previous look."""

    def __init__(self, vm: VirtualMachine, workload):
        self.vm, self.workload = vm, workload
        self.last: list[int] | None = None

    def values(self) -> list[int]:
        return [int.from_bytes(self.vm.partition.read(page * PAGE_SIZE, 8), "little")
                for page in self.workload.region]

    def check(self) -> list[int]:
        now = self.values()
        for i, (value, wrote) in enumerate(zip(now, self.workload.written)):
            if value != wrote:
                raise LostWrite(f"page {self.workload.region[i]:#x} holds {value}, the guest wrote {wrote}")
        if self.last is not None:
            for i, (value, before) in enumerate(zip(now, self.last)):
                if value < before:
                    raise LostWrite(f"page {self.workload.region[i]:#x} went back from {before} to {value}")
        self.last = now
        return now


@pytest.fixture
def vm():
    host = Host(logical_processors=2, memory="128MiB", seed=44)
    vmbus = ParentVmbus(host, vp_index=1)
    workload = memory_counter(pages=PAGES, interval="300us", page_work="10us")
    machine = VirtualMachine(host, vmbus, discover(), VmSpec("canary", memory="2MiB", processors=1),
                             devices=[DeviceSlot(HEARTBEAT), DeviceSlot(SHUTDOWN)], workload=workload)
    machine.start()
    return machine, workload


def _mid_round(vm, workload) -> None:
    """Run until the guest is inside a round: some pages hold the new value, the rest the old."""
    for _ in range(1000):
        vm.host.run_for(37 * US)
        if len(set(workload.written)) == 2:
            return
    raise AssertionError("the guest never was inside a round")


def test_every_page_keeps_its_last_write_across_saves_and_restores(vm, tmp_path):
    machine, workload = vm
    canary = Canary(machine, workload)
    host = machine.host
    host.run_for(20 * MS)
    assert len(workload.region) == PAGES and min(canary.check()) > 10
    for cycle in range(4):
        if cycle % 2 == 0:
            _mid_round(machine, workload)
        else:
            host.run_for(1 * MS + cycle * 71 * US)
        at_save = canary.check()
        path = tmp_path / f"canary{cycle}.hvsav"
        machine.save(path)
        assert machine.state is VmState.SAVED
        host.run_for(5 * MS)                          # nothing of the guest runs while Saved
        machine.restore(path)
        assert machine.state is VmState.RUNNING
        assert canary.check() == at_save          # exactly what was written before the save
        for _ in range(10):                       # and it goes on: every page counts up again
            host.run_for(313 * US)
            canary.check()
        host.run_for(5 * MS)
        after = canary.check()
        assert all(a > b for a, b in zip(after, at_save)), "a page stopped counting after the restore"
    check_all(host)


def test_the_canary_sees_a_lost_write(vm, tmp_path):
    """The check can fail: a restore that brought one page back one round old is caught."""
    machine, workload = vm
    canary = Canary(machine, workload)
    machine.host.run_for(10 * MS)
    canary.check()
    machine.save(tmp_path / "c.hvsav")
    machine.restore(tmp_path / "c.hvsav")
    page = workload.region[PAGES // 2]
    old = int.from_bytes(machine.partition.read(page * PAGE_SIZE, 8), "little") - 1
    machine.partition.write(page * PAGE_SIZE, old.to_bytes(8, "little"))   # the defect, made by hand
    with pytest.raises(LostWrite, match=f"page {page:#x} holds {old}"):
        canary.check()


def test_a_configured_memory_counter_keeps_counting_across_save_and_restore(tmp_path):
    """The workload from a host file: `{ kind = "memory-counter", ... }` on a managed VM."""
    from partitions.config import loads
    from partitions.config_schema import ConfigError, MemoryCounterWorkload
    from partitions.management import ManagedHost
    text = """
[host]
logical_processors = 2
memory = "256MiB"
[[vm]]
name = "canary"
memory = "4MiB"
workload = { kind = "memory-counter", pages = 16, interval = "500us", page_work = "2us" }
integration_services = { kvp = false, vss = false, timesync = false }
"""
    config = loads(text)
    assert config.vms[0].workloads == (MemoryCounterWorkload(16, 500 * US, 2 * US),)
    with pytest.raises(ConfigError, match="pages"):
        loads(text.replace("pages = 16", "pages = 0"))
    managed = ManagedHost(config, workdir=tmp_path)
    managed.run(30 * MS)
    vm = managed.vms["canary"]
    workload = vm.workload
    canary = Canary(vm, workload)
    assert len(workload.region) == 16 and min(canary.check()) > 5
    vm.save(tmp_path / "canary.hvsav")
    at_save = canary.last
    vm.restore(tmp_path / "canary.hvsav")
    assert canary.check() == at_save
    managed.run(managed.host.now + 10 * MS)
    assert all(a > b for a, b in zip(canary.check(), at_save))
