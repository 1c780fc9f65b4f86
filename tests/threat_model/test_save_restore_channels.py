"""Threat model case 40: save → restore gives back exactly what the VM had, channel by channel:
both rings of every channel (indices, interrupt mask, pending_send_sz and the packets waiting in
them), the parent's channel manager and every VSP's state, the messages the parent holds for the
child or from it, the hypervisor's message queues and undelivered port buffers on both sides, the
VP registers the save records, the partition's privilege mask and its memory. Saves are taken at
moments when devices are being offered and opened and when heartbeats and KVP traffic are in
flight."""
from __future__ import annotations

import pytest

from drivers.example import DEVICE as ECHO
from drivers.ic import DEVICES as IC_DEVICES
from drivers.registry import discover
from hypervisor import Host, Register
from hypervisor.synic import port_undelivered, queue_length
from hypervisor.testing.invariants import check_all
from partitions.vm import DeviceSlot, VirtualMachine, VmState
from partitions.vmbus_parent import CHILD_MESSAGE_PORT, ParentVmbus
from partitions.worker import VmSpec

US, MS = 1_000, 1_000_000
SYNIC_REGISTERS = [Register.SIMP, Register.SIEFP, Register.SCONTROL] + [Register.SINT0 + i for i in range(16)]


async def echo_traffic(ctx):
    """Bursts of echo requests of several sizes between short computations, so that at most
    moments something is in a ring or in flight."""
    echo = await ctx.device("echo")
    n = 0
    while True:
        for size in (1, 40, 300, 1500):
            if len(echo.outstanding) < 12:  # the ring has room for these
                echo.echo(bytes([n % 251]) * size)
                n += 1
        await ctx.compute("30us")
        await ctx.sleep("70us")


def rings(vm: VirtualMachine, vmbus: ParentVmbus) -> dict:
    """Both rings of every open channel of the VM, as the host sees them (control page and data)."""
    child = vmbus.children[vm.partition.id]
    return {relid: (bytes(ch.end.outgoing._mem), bytes(ch.end.incoming._mem))
            for relid, ch in sorted(child.channels.items()) if ch.end is not None}


def unread(found: dict) -> bool:
    """Whether some ring holds packets its reader has not taken (write_index != read_index)."""
    return any(ring[0:4] != ring[4:8] for pair in found.values() for ring in pair)


def facts(vm: VirtualMachine, vmbus: ParentVmbus) -> dict:
    """Everything of the VM's VMBus and SynIC state that a save must carry, read from outside."""
    part, root = vm.partition, vm.host.root
    child = vmbus.children[part.id]
    return {
        "memory": vm.memory_digest(),
        "rings": rings(vm, vmbus),
        "channel states": {relid: child.manager.channel_state(relid) for relid in child.manager.relids},
        "manager": child.manager.save(),
        "vsps": {relid: ch.vsp.save() for relid, ch in sorted(child.channels.items()) if ch.vsp is not None},
        "broken": {relid: ch.broken for relid, ch in child.channels.items()},
        "outbox": list(child.outbox),
        "held": list(child.held_in),
        "signals held": list(child.held_signals_out),
        "child queues": {(vp.index, sint): queue_length(part, vp.index, sint) for vp in part.vps for sint in range(16)},
        "child port": port_undelivered(part, CHILD_MESSAGE_PORT),
        "root ports": {port: port_undelivered(root, port) for port in child.msg_ports},
        "registers": [root.get_vp_registers(part, vp.index, SYNIC_REGISTERS) for vp in part.vps],
        "privileges": part.privileges,
    }


def new_vm(processors: int = 2):
    host = Host(logical_processors=2, memory="128MiB", seed=3)
    vmbus = ParentVmbus(host, vp_index=1)
    vm = VirtualMachine(host, vmbus, discover(), VmSpec("vm", memory="4MiB", processors=processors),
                        devices=[DeviceSlot(d) for d in (*IC_DEVICES, ECHO)], workload=echo_traffic)
    vm.start()
    return host, vmbus, vm


@pytest.mark.parametrize("at,in_flight", [(1 * MS + 300 * US, False), (16 * MS, False), (45 * MS, False),
                                          (300 * MS + 7 * US, False),
                                          (16 * MS, True), (30 * MS, True)])
def test_save_then_restore_gives_back_every_channels_rings_queues_and_state(tmp_path, at, in_flight):
    host, vmbus, vm = new_vm()
    host.run(at)
    if in_flight:  # step on to a moment when a ring holds packets not yet read
        for _ in range(500):
            if unread(rings(vm, vmbus)):
                break
            host.run(host.now + 5 * US)
        assert unread(rings(vm, vmbus))
    assert vm.state is VmState.RUNNING
    before = facts(vm, vmbus)
    path = tmp_path / "vm.hvsav"
    vm.save(path)
    host.run(50 * MS)
    vm.restore(path)
    after = facts(vm, vmbus)
    assert after.keys() == before.keys()
    for key in before:
        assert after[key] == before[key], key
    check_all(host)
    host.run(100 * MS)  # and it carries on
    assert vm.state is VmState.RUNNING and not vm.device_vsc("echo").failed
    assert all(ch.broken is None for ch in vmbus.children[vm.partition.id].channels.values())


def test_the_facts_see_a_channel_move():
    """The comparison is sharp: while the devices open and start working, the rings, the
    devices' state and the memory all change."""
    host, vmbus, vm = new_vm()
    host.run(1 * MS + 300 * US)
    before = facts(vm, vmbus)
    host.run(45 * MS)
    after = facts(vm, vmbus)
    for key in ("rings", "vsps", "memory"):
        assert after[key] != before[key], key
