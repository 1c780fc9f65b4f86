"""DeletePartition's work is linear in what the partition owns (issue 11, defect 6): its ports,
the connections to them, its own connections, its grants and pool pages. Measured with the core's
teardown work counter (table entries visited), never with wall time."""
from __future__ import annotations

from hypervisor import Host
from hypervisor.synic import PortType, connection_target, port_counts
from hypervisor.testing.invariants import check_all
from partitions.worker import VmSpec, VmWorker

from .conftest import check_conservation

SINT = 2


def build(n: int):
    """A host with a bystander child and a child holding n message ports (each connected from
    the root), n connections to event ports of the root, and n one-page grants."""
    host = Host(logical_processors=1, memory="64MiB", seed=1)
    root = host.root
    bystander = VmWorker(host, VmSpec("bystander", memory="256KiB")).build()
    c = VmWorker(host, VmSpec("c", memory=f"{4 * n}KiB")).build()
    # Every port costs its owner a pool page, every connection its sender one.
    root.deposit_memory(c, host.root_memory.allocate(2 * n))
    root.deposit_memory(bystander, host.root_memory.allocate(1))
    root.deposit_memory(None, host.root_memory.allocate(1 + 2 * n))
    root.create_port(None, 0xB000, port_type=PortType.EVENT, target_sint=SINT, target_vp=0,
                     flag_count=1, connection_partition=bystander)
    root.connect_port(bystander, 0xB000, None, 0xB000, port_type=PortType.EVENT)
    for i in range(n):
        root.create_port(c, 1 + i, port_type=PortType.MESSAGE, target_sint=SINT, target_vp=0,
                         connection_partition=root)
        root.connect_port(None, 0x1000 + i, c, 1 + i)
        root.create_port(None, 0x2000 + i, port_type=PortType.EVENT, target_sint=SINT, target_vp=0,
                         flag_count=1, connection_partition=c)
        root.connect_port(c, 0x3000 + i, None, 0x2000 + i, port_type=PortType.EVENT)
        host.grants.create(c, 1 + i, [i])
    host.grants.create(bystander, 1, [0, 1])
    return host, c, bystander


def delete_work(n: int) -> int:
    host, c, bystander = build(n)
    root = host.root
    root.finalize_partition(c)
    before = host.introspect.teardown_visits()
    root.delete_partition(c)
    work = host.introspect.teardown_visits() - before
    # ... and it did it all: the root's connections to the child's ports dangle, the root's ports
    # for the child are left alone, the bystander keeps its port, connection and grant.
    assert port_counts(root) == (n + 1, n)
    assert all(connection_target(root, 0x1000 + i) is None for i in range(n))
    assert connection_target(bystander, 0xB000) == (root.id, 0xB000)
    assert host.grants.ids(bystander) == [1] and host.grants.ids(c.id) == []
    check_conservation(host)
    check_all(host)
    return work


def test_delete_partition_work_grows_linearly_with_its_ports_and_connections():
    small, large = delete_work(150), delete_work(300)
    assert small > 0
    # Twice the ports, connections and grants: twice the work (it used to be four times).
    assert 1.8 <= large / small <= 2.2, (small, large)
