"""Events a deleted partition left in the queue (a halted VP's timeout, a running VP's slice end)
must not touch a VP of a partition created later in the same slot: their guards come from one
host-wide sequence, not from per-VP counters that start again at 0."""
from hypervisor import Host

MS = 1_000_000
HALTED = 3  # enum hv_vp_exec


def child_with_vp(host):
    root = host.root
    child = root.create_partition()
    root.deposit_memory(child, host.root_memory.allocate(8))
    root.initialize_partition(child)
    root.create_vp(child, 0)
    root.map_gpa_pages(child, 0, host.root_memory.allocate(4))
    return child


def slot_of(host, p):
    return host.introspect.partition_info(p)["slot"]


def retire(host, p):
    host.root.finalize_partition(p)
    host.root.delete_partition(p)


def test_a_deleted_partitions_timeout_does_not_wake_the_next_vp_in_its_slot():
    host = Host(logical_processors=1, memory="32MiB", seed=1)
    old = child_with_vp(host)

    async def sleeper(ctx):
        await ctx.sleep("10ms")  # its timeout event stays queued after the partition is gone

    old.vp(0).run(sleeper)
    host.root.resume_partition(old)
    host.run(1 * MS)
    assert host.introspect.vp_info(old, 0)["exec"] == HALTED
    old_slot = slot_of(host, old)
    retire(host, old)

    new = child_with_vp(host)
    assert slot_of(host, new) == old_slot
    woken = []

    async def waiter(ctx):
        woken.append((await ctx.halt()).reason)  # only an interrupt may wake it: none comes

    new.vp(0).run(waiter)
    host.root.resume_partition(new)
    host.run(50 * MS)
    assert woken == []
    assert host.introspect.vp_info(new, 0)["exec"] == HALTED


def burn_schedule(*, old_ran: bool):
    """When the new partition's burning VP goes on and off its LP, relative to its start; the
    slot's previous partition either ran a burning VP (its slice end still queued) or never ran."""
    host = Host(logical_processors=1, memory="32MiB", seed=1)
    old = child_with_vp(host)
    old.vp(0).run_builtin("burn")
    if old_ran:
        host.root.resume_partition(old)
    host.run(1 * MS)
    retire(host, old)
    new = child_with_vp(host)
    assert slot_of(host, new) == 1
    new.vp(0).run_builtin("burn")
    host.introspect.record_scheduling()
    start = host.now
    host.root.resume_partition(new)
    host.run(60 * MS)
    records, dropped = host.introspect.take_scheduling()
    assert dropped == 0
    return [(t - start, *rest) for t, *rest in records], host.introspect.vp_info(new, 0)["run_time_ns"]


def test_a_deleted_partitions_slice_end_does_not_cut_the_next_vps_slice():
    assert burn_schedule(old_ran=True) == burn_schedule(old_ran=False)
