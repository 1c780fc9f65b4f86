"""The parent's VMBus service looks at its own SynIC pages (its SIM slot and its SINTs' event
flags) in one crossing per pass, hv_service_take, instead of a read of the slot and a read and a
write of each raised SINT's flags; and that call takes exactly the flags that were set."""
from hypervisor import Partition, _binding
from partitions.vmbus_parent import FLAGS_PER_SINT
from tests.partitions.test_interrupt_driven import MS, host_and_parent, vm
from vmbus.protocol import VMBUS_MESSAGE_SINT


def echo_workload(replies: int):
    async def workload(ctx):
        vsc = await ctx.device("echo")
        for _ in range(replies):
            vsc.echo(b"x" * 16)
            await ctx.sleep("1ms")
    return workload


def test_the_service_reads_its_synic_pages_only_through_one_call_per_pass(monkeypatch):
    host, parent = host_and_parent()
    child, stack = vm(host, parent, workload=echo_workload(20))
    host.run(5 * MS)
    root_loads, scans = [], parent.flag_scans
    load = Partition.read

    def counted_load(self, gpa, length):
        if self is host.root:
            root_loads.append(gpa)
        return load(self, gpa, length)

    monkeypatch.setattr(Partition, "read", counted_load)
    host.run(100 * MS)
    assert len(stack.devices["echo"].replies) == 20
    assert parent.flag_scans > scans   # the guest's signals were taken...
    assert root_loads == []            # ...without a load of the slot or the flags of their own


def test_take_returns_the_flags_set_in_order_and_clears_them():
    host, parent = host_and_parent()
    root, siefp = host.root, parent.siefp * 4096
    taker = _binding.ServiceTake(host._h, root.id, parent.simp * 4096 + VMBUS_MESSAGE_SINT * 256, siefp)
    flags = [(3, 0), (2, 5), (3, 2047), (2, 70), (5, 9)]
    for sint, flag in flags:
        gpa = siefp + sint * 256 + flag // 8
        root.write(gpa, bytes([root.read(gpa, 1)[0] | 1 << flag % 8]))
    slot, taken = taker.take(1 << 2 | 1 << 3)       # SINT 5 not asked for: left set
    assert slot == 0
    assert taken == [2 * FLAGS_PER_SINT + 5, 2 * FLAGS_PER_SINT + 70, 3 * FLAGS_PER_SINT, 3 * FLAGS_PER_SINT + 2047]
    assert root.read(siefp + 2 * 256, 512) == bytes(512)
    assert root.read(siefp + 5 * 256 + 1, 1) == bytes([1 << 1])
    assert taker.take(1 << 2 | 1 << 3)[1] == []
    assert taker.take(1 << 5)[1] == [5 * FLAGS_PER_SINT + 9]
