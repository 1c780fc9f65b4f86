"""Restore checks a saved state's VP records before it changes anything: files with valid digests
but contents the core would refuse (crafted with the saved-state writer) leave the VM Saved, its
memory untouched, and the good file still restores."""
import pytest

from drivers.ic import HEARTBEAT, SHUTDOWN
from drivers.registry import discover
from hypervisor import Host, Register
from hypervisor.testing.invariants import check_all
from partitions.savedstate import SavedStateError, SavedStateReader, SavedStateWriter
from partitions.vm import DeviceSlot, VirtualMachine, VmState
from partitions.vmbus_parent import ParentVmbus
from partitions.worker import VmSpec

MS = 1_000_000


async def counter(ctx):
    n = 0
    while True:
        n += 1
        ctx.partition.write(0x9000, n.to_bytes(8, "little"))
        await ctx.compute("1ms")
        await ctx.sleep("1ms")


@pytest.fixture
def saved(tmp_path):
    """A two-VP VM saved to a file: (host, vm, path, memory digest before the save)."""
    host = Host(logical_processors=2, memory="128MiB", seed=3)
    vm = VirtualMachine(host, ParentVmbus(host, vp_index=1), discover(), VmSpec("vm", memory="2MiB", processors=2),
                        devices=[DeviceSlot(HEARTBEAT), DeviceSlot(SHUTDOWN)], workload=counter)
    vm.start()
    host.run(300 * MS)
    before = vm.memory_digest()
    path = tmp_path / "vm.hvsav"
    vm.save(path)
    return host, vm, path, before


def craft(good, out, edit):
    """Copy the saved state `good` to `out` with valid digests, its "vps" section passed through
    `edit` (which changes the list in place)."""
    with SavedStateReader(good, kind="saved-state") as r:
        vps = r.load("vps")
        edit(vps)
        with SavedStateWriter(out, "saved-state", r.meta) as w:
            w.section("vps", vps)
            w.section("devices", r.load("devices"))
            with w.stream("memory") as mem:
                for record in r.records("memory"):
                    mem.write_record(record)


def set_register(vp: int, name: int, value: int):
    def edit(vps):
        regs = next(v for v in vps if v["index"] == vp)["registers"]
        pair = next(p for p in regs if p[0] == name)
        regs.remove(pair)
        regs.append([name, value])          # last: everything before it would be applied first
    return edit


BAD = {
    "SINT reserved bits": set_register(1, int(Register.SINT15), 1 << 40),
    "SINT vector below 16": set_register(1, int(Register.SINT2), 3),
    "SIMP outside memory": set_register(1, int(Register.SIMP), (1 << 40) | 1),
    "timer direct mode": set_register(1, int(Register.STIMER3_CONFIG), 1 << 12),
    "read-only register": lambda vps: vps[1]["registers"].append([int(Register.VP_INDEX), 0]),
    "unknown register": lambda vps: vps[1]["registers"].append([0x7777, 0]),
    "register given twice": lambda vps: vps[1]["registers"].append(list(vps[1]["registers"][0])),
    "negative value": lambda vps: vps[1]["registers"][-1].__setitem__(1, -1),
    "register not a pair": lambda vps: vps[1]["registers"].append([int(Register.RAX)]),
    "registers not a list": lambda vps: vps[1].__setitem__("registers", {"a": 1}),
    "VP missing": lambda vps: vps.pop(),
    "VP twice": lambda vps: vps.append(vps[0]),
    "vps not a list": lambda vps: (vps.clear(), vps.append("x")),
}


@pytest.mark.parametrize("case", BAD)
def test_a_refused_vp_record_leaves_the_vm_saved_and_the_good_file_restores(saved, case):
    host, vm, path, before = saved
    wiped = vm.memory_digest()
    bad = path.with_name("bad.hvsav")
    craft(path, bad, BAD[case])
    with pytest.raises(SavedStateError, match="bad.hvsav"):
        vm.restore(bad)
    assert vm.state is VmState.SAVED
    assert vm.memory_digest() == wiped                      # nothing of the bad file was applied
    vm.restore(path)
    assert vm.state is VmState.RUNNING
    assert vm.memory_digest() == before
    n = int.from_bytes(vm.partition.read(0x9000, 8), "little")
    host.run(host.now + 100 * MS)
    assert int.from_bytes(vm.partition.read(0x9000, 8), "little") > n
    check_all(host)


def test_the_error_names_the_vm_the_vp_and_what_the_core_refused(saved):
    host, vm, path, before = saved
    bad = path.with_name("bad.hvsav")
    craft(path, bad, set_register(1, int(Register.SINT15), 1 << 40))
    with pytest.raises(SavedStateError, match=r"vm 'vm' VP 1: the saved registers are refused.*INVALID_PARAMETER"):
        vm.restore(bad)


def test_a_crafted_copy_of_the_good_file_restores(saved):
    # The crafting itself changes nothing: the bad cases fail for their edit alone.
    host, vm, path, before = saved
    copy = path.with_name("copy.hvsav")
    craft(path, copy, lambda vps: None)
    vm.restore(copy)
    assert vm.state is VmState.RUNNING and vm.memory_digest() == before
