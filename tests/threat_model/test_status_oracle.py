"""Threat model case 11 (A10, the status-code oracle): a child that names a partition it may not
see, through any hypercall that takes a partition id, learns nothing about whether that partition
exists, what state it is in or whose it is: the status, the bytes in its output page and the
hypervisor's state are the same for the root, a sibling in any state, a deleted sibling and an id
that was never used."""
from __future__ import annotations

import struct

import pytest

from hypervisor import CallCode, Host, PartitionProperty, Register, control
from hypervisor.abi import PAGE_SIZE, PARTITION_ID_SELF, PRIVILEGES_GUEST_DEFAULT, PRIVILEGES_ROOT, PRIVILEGES_ROOT_ONLY
from hypervisor.synic import PortType
from hypervisor.testing.strategies import (connect_port_block, create_port_block, delete_port_block,
                                           disconnect_port_block)

# every privilege a root may give a child; the default set is the other end
PRIVILEGE_SETS = {"guest-default": PRIVILEGES_GUEST_DEFAULT, "all-a-child-may-have": PRIVILEGES_ROOT & ~PRIVILEGES_ROOT_ONLY}
PORT_ID, CONN_ID = 0x55, 0x66
NEVER_USED = (0x1234_5678, 0xFFFF_FFFF, 0x7FFF_FFFF_FFFF_FFFF)


def _child(host: Host, *, privileges: int | None = None, initialize: bool = True, vp: bool = True):
    root = host.root
    child = root.create_partition()
    if privileges is not None:
        root.set_partition_property(child, PartitionProperty.PRIVILEGE_FLAGS, privileges)
    root.deposit_memory(child, host.root_memory.allocate(4))
    if initialize:
        root.initialize_partition(child)
        if vp:
            root.create_vp(child, 0)
            root.map_gpa_pages(child, 0, host.root_memory.allocate(4))
    return child


def world(privileges: int):
    """A host with the probing child A and every kind of partition A must not see: the root,
    sibling B (running, with a port and a connection), C (created only), F (finalized), and the
    id of a deleted sibling D. Returns (host, A, {label: id})."""
    host = Host(logical_processors=2, memory="16MiB", seed=1)
    root = host.root
    a = _child(host, privileges=privileges)
    b = _child(host)
    c = _child(host, initialize=False)
    f = _child(host, vp=False)
    root.finalize_partition(f)
    d = _child(host, initialize=False)
    root.delete_partition(d)
    # B holds a port that only the root may connect to, and a connection to the root's port:
    # the same ids A probes with
    root.create_port(b, PORT_ID, port_type=PortType.MESSAGE, target_sint=2, target_vp=0, connection_partition=root)
    root.deposit_memory(root, host.root_memory.allocate(2))  # a port costs its owner a pool page
    root.deposit_memory(b, host.root_memory.allocate(1))     # and a connection its sender one
    root.create_port(None, PORT_ID, port_type=PortType.MESSAGE, target_sint=2, target_vp=0, connection_partition=b)
    root.connect_port(b, CONN_ID, root, PORT_ID)
    hidden = {"root": root.id, "sibling": b.id, "created": c.id, "finalized": f.id, "deleted": d.id}
    hidden.update({f"never-used-{i:#x}": i for i in NEVER_USED})
    return host, a, hidden


def probes(pid: int, me: int) -> dict[str, tuple[int, bytes]]:
    """Every hypercall that names a partition, naming `pid` (the caller is `me`)."""
    msg = int(PortType.MESSAGE)
    return {
        "GetPartitionProperty": (control(CallCode.GET_PARTITION_PROPERTY),
                                 struct.pack("<QII", pid, int(PartitionProperty.CPU_CAP), 0)),
        "SetPartitionProperty": (control(CallCode.SET_PARTITION_PROPERTY),
                                 struct.pack("<QIIQ", pid, int(PartitionProperty.CPU_WEIGHT), 0, 100)),
        "InitializePartition": (control(CallCode.INITIALIZE_PARTITION), struct.pack("<Q", pid)),
        "FinalizePartition": (control(CallCode.FINALIZE_PARTITION), struct.pack("<Q", pid)),
        "DeletePartition": (control(CallCode.DELETE_PARTITION), struct.pack("<Q", pid)),
        "GetNextChildPartition": (control(CallCode.GET_NEXT_CHILD_PARTITION), struct.pack("<QQ", pid, 0)),
        "DepositMemory": (control(CallCode.DEPOSIT_MEMORY, rep_count=1), struct.pack("<QQ", pid, 3)),
        "WithdrawMemory": (control(CallCode.WITHDRAW_MEMORY, rep_count=1), struct.pack("<QQ", pid, 0)),
        "GetMemoryBalance": (control(CallCode.GET_MEMORY_BALANCE), struct.pack("<QQ", pid, 0)),
        "MapGpaPages": (control(CallCode.MAP_GPA_PAGES, rep_count=1), struct.pack("<QQIIQ", pid, 8, 7, 0, 3)),
        "UnmapGpaPages": (control(CallCode.UNMAP_GPA_PAGES, rep_count=1), struct.pack("<QQII", pid, 0, 0, 0)),
        "CreateVp": (control(CallCode.CREATE_VP), struct.pack("<QIIQQ", pid, 1, 0, 0, 0)),
        "DeleteVp": (control(CallCode.DELETE_VP), struct.pack("<QII", pid, 0, 0)),
        "GetVpRegisters": (control(CallCode.GET_VP_REGISTERS, rep_count=1),
                           struct.pack("<QIB3sI", pid, 0, 0, bytes(3), int(Register.RAX))),
        "SetVpRegisters": (control(CallCode.SET_VP_REGISTERS, rep_count=1),
                           struct.pack("<QIB3s", pid, 0, 0, bytes(3))
                           + struct.pack("<IIQQQ", int(Register.RAX), 0, 0, 1, 0)),
        "CreatePort(port partition)": (control(CallCode.CREATE_PORT),
                                       create_port_block(pid, 0x77, me, port_type=msg, sint=2, vp=0)),
        "CreatePort(connection partition)": (control(CallCode.CREATE_PORT),
                                             create_port_block(me, 0x78, pid, port_type=msg, sint=2, vp=0)),
        "ConnectPort(port partition)": (control(CallCode.CONNECT_PORT),
                                        connect_port_block(me, 0x79, pid, PORT_ID, port_type=msg)),
        "ConnectPort(connection partition)": (control(CallCode.CONNECT_PORT),
                                              connect_port_block(pid, 0x7A, me, PORT_ID, port_type=msg)),
        "DeletePort": (control(CallCode.DELETE_PORT), delete_port_block(pid, PORT_ID)),
        "DisconnectPort": (control(CallCode.DISCONNECT_PORT), disconnect_port_block(pid, CONN_ID)),
    }


PROBE_NAMES = list(probes(0, 0))


def observe(host: Host, a, call: str, pid: int) -> tuple[str, int, bytes]:
    """What A sees when it makes `call` naming `pid`: the status, reps completed and its whole
    output page (its own memory, which a failed call must leave alone). A failed call must also
    leave the hypervisor's state unchanged."""
    vp = a.vp(0)
    word, block = probes(pid, a.id)[call]
    vp.store_input(block)
    a.write(vp.output_gpa, bytes(PAGE_SIZE))
    before = host.introspect.digest()
    result = vp.hypercall(word, block)
    out = a.read(vp.output_gpa, PAGE_SIZE)
    if not result.ok:
        assert host.introspect.digest() == before, f"failed {call} naming {pid:#x} changed the state"
    return result.status.name, result.reps_completed, out


@pytest.mark.parametrize("privileges", list(PRIVILEGE_SETS), ids=list(PRIVILEGE_SETS))
@pytest.mark.parametrize("call", PROBE_NAMES)
def test_a_child_sees_one_answer_for_every_partition_it_may_not_see(privileges, call):
    seen = {}
    for label in world(PRIVILEGE_SETS[privileges])[2]:
        host, a, hidden = world(PRIVILEGE_SETS[privileges])  # a fresh host per probe: no probe sees another's effect
        seen[label] = observe(host, a, call, hidden[label])
    answers = {(status, reps, out) for status, reps, out in seen.values()}
    assert len(answers) == 1, f"{call}: " + ", ".join(f"{k} -> {v[0]}" for k, v in seen.items())
    status = next(iter(answers))[0]
    assert status != "SUCCESS", f"{call} succeeded on a partition the child may not see"


def test_the_probe_can_tell_a_partition_it_may_see():
    """The probes are sharp: naming itself (by id or as SELF), a child with every privilege it may
    have gets other answers for some calls than for the partitions it may not see."""
    host, a, hidden = world(PRIVILEGE_SETS["all-a-child-may-have"])
    hidden_answer = observe(host, a, "GetVpRegisters", hidden["sibling"])
    assert observe(host, a, "GetVpRegisters", a.id) != hidden_answer
    assert observe(host, a, "GetVpRegisters", PARTITION_ID_SELF)[0] == "SUCCESS"
