"""The guest kernel and the parent's VMBus service are interrupt-driven: they read SynIC message
slots and event flags only when the core reported the SINT raised, a workload's computation is one
step that an interrupt ends early, and the parent's event flags are enough for any number of
channels (spread over the SINTs of its VP, then shared)."""
from drivers.example import DEVICE as ECHO
from drivers.registry import discover
from hypervisor import Host
from hypervisor.synic import interrupt_count
from hypervisor.testing.invariants import check_all
from partitions.kernel import kernel_main
from partitions.vmbus_guest import GuestVmbus
from partitions.vmbus_parent import FLAGS_PER_SINT, ParentVmbus
from partitions.worker import VmSpec, VmWorker
from vmbus.protocol import VMBUS_MESSAGE_SINT

US, MS, S = 1_000, 1_000_000, 1_000_000_000


def host_and_parent(lps=2):
    host = Host(logical_processors=lps, memory="256MiB", seed=11)
    return host, ParentVmbus(host, vp_index=1)


def vm(host, parent, name="guest", *, devices=1, workload=None, memory="2MiB"):
    child = VmWorker(host, VmSpec(name, memory=memory)).build()
    parent.attach(child, [(ECHO, {})] * devices)
    stack = GuestVmbus(child, discover())
    child.vp(0).run(lambda ctx: kernel_main(ctx, stack, workload))
    host.root.resume_partition(child)
    return child, stack


def reads(stack, parent):
    return stack.slot_reads, stack.flag_scans, parent.slot_reads, parent.flag_scans


def test_an_idle_guest_and_service_read_no_slot_and_no_flags():
    host, parent = host_and_parent()
    child, stack = vm(host, parent)
    host.run(100 * MS)
    assert stack.devices["echo"].ready
    before = reads(stack, parent)
    host.run(1 * S + 100 * MS)
    assert reads(stack, parent) == before


def test_a_computation_without_io_is_one_step_and_reads_nothing():
    done = []

    async def workload(ctx):
        await ctx.device("echo")
        await ctx.sleep("100ms")
        start = ctx.now
        await ctx.compute("500ms")
        done.append((start, ctx.now))

    host, parent = host_and_parent()
    child, stack = vm(host, parent, workload=workload)
    host.run(150 * MS)
    before = reads(stack, parent)
    steps = host.introspect.vp_info(child, 0)
    host.run(1 * S)
    ((start, end),) = done
    assert end - start < 501 * MS      # its own CPU time, and what the kernel's steps cost
    assert reads(stack, parent) == before   # 500 polls of the slot and the flags, once
    assert host.introspect.vp_info(child, 0)["run_time_ns"] - steps["run_time_ns"] < 501 * MS


def test_slot_reads_and_flag_scans_follow_the_interrupts_not_the_time():
    # A workload computing 10 ms at a time and sending one echo between two: the stack reads the
    # slot and the flags about once per interrupt of its SINT, not once per millisecond.
    async def workload(ctx):
        vsc = await ctx.device("echo")
        for i in range(20):
            vsc.echo(b"x" * 16)
            await ctx.compute("10ms")

    host, parent = host_and_parent()
    child, stack = vm(host, parent, workload=workload)
    host.run(20 * MS)
    interrupts = interrupt_count(child, 0, VMBUS_MESSAGE_SINT)
    before = stack.slot_reads + stack.flag_scans
    host.run(400 * MS)
    assert len(stack.devices["echo"].replies) == 20
    raised = interrupt_count(child, 0, VMBUS_MESSAGE_SINT) - interrupts
    assert 0 < raised <= 2 * 20   # a reply's signal each (some before the 20 ms mark), a few more
    # each interrupt: the slot read until empty (once, the flags' interrupts) and the flags once
    assert stack.slot_reads + stack.flag_scans - before <= 3 * raised


def test_a_reply_arriving_mid_computation_is_served_at_once():
    # The echo goes out just before a 50 ms computation: its reply comes back within
    # microseconds, and the kernel serves it then, not when the computation ends (nor at the
    # next millisecond).
    seen = []

    async def workload(ctx):
        vsc = await ctx.device("echo")
        sent = ctx.now
        vsc.echo(b"ping")
        await ctx.compute("50ms")
        seen.append((sent, ctx.now))

    host, parent = host_and_parent()
    child, stack = vm(host, parent, workload=workload)
    answered = []
    stack.on_poll = lambda s: (not answered and s.devices.get("echo") is not None
                               and s.devices["echo"].replies and answered.append(host.now))
    host.run(200 * MS)
    ((sent, end),) = seen
    (at,) = answered
    assert at - sent < 100 * US
    assert end - sent >= 50 * MS   # and the computation still got all its time


def test_a_message_arriving_mid_computation_is_served_at_once():
    # The host offers a second device while the guest computes: the offer (a message) is taken
    # while the computation goes on, not when it ends (nor at the next millisecond).
    async def workload(ctx):
        await ctx.device("echo")
        await ctx.compute("100ms")

    host, parent = host_and_parent()
    child, stack = vm(host, parent, workload=workload)
    host.run(20 * MS)
    offered_at = host.now
    relid = parent.offer(child, ECHO)
    host.run(60 * MS)
    (at,) = [t for t, event, fields in stack.log_entries if event == "offer" and fields["relid"] == relid]
    assert at - offered_at < 100 * US


def test_the_same_seed_gives_the_same_trace():
    def run():
        async def workload(ctx):
            vsc = await ctx.device("echo")
            for _ in range(5):
                vsc.echo(b"abc")
                await ctx.compute("3ms")
        host, parent = host_and_parent()
        vm(host, parent, workload=workload)
        vm(host, parent, "other")
        host.run(100 * MS)
        return host.trace_digest()

    assert run() == run()


def _echo_everywhere(stacks, rounds=1):
    """On every channel of every stack: `rounds` echoes (guest -> host -> guest)."""
    for stack in stacks:
        for vsc in stack.devices.values():
            for _ in range(rounds):
                vsc.echo(b"hello")


def test_more_channels_than_one_sints_flags_all_signal_both_ways():
    # 2,100 channels over 21 VMs: past SINT 2's 2,047 flags the service's channels take SINT 3's.
    host, parent = host_and_parent(lps=4)
    vms = [vm(host, parent, f"vm{i}", devices=100, memory="4MiB") for i in range(21)]
    host.run(300 * MS)
    stacks = [stack for _, stack in vms]
    assert sum(len(s.devices) for s in stacks) == 2100 > FLAGS_PER_SINT
    assert {ch.flag[0] for c in parent.children.values() for ch in c.channels.values()} == {2, 3}
    _echo_everywhere(stacks)
    host.run(400 * MS)
    assert all(vsc.replies == [b"hello"] for s in stacks for vsc in s.devices.values())
    check_all(host)


def test_with_every_flag_taken_channels_share_flags_and_still_signal_both_ways():
    host, parent = host_and_parent()
    for sint, free in parent._free_flags.items():   # as if every other flag were taken
        del free[:-2 if sint == 2 else len(free)]
    child, stack = vm(host, parent, devices=6)
    host.run(100 * MS)
    flags = [ch.flag for ch in parent.children[child.id].channels.values()]
    assert len(set(flags)) < len(flags)   # shared
    _echo_everywhere([stack], rounds=3)
    host.run(200 * MS)
    assert sorted(stack.devices) == ["echo", "echo1", "echo2", "echo3", "echo4", "echo5"]
    assert all(vsc.replies == [b"hello"] * 3 for vsc in stack.devices.values())
    parent.detach(child)   # a shared flag is free again only once its last channel is gone
    assert sum(map(len, parent._free_flags.values())) == len(set(flags))


def test_a_message_that_came_while_the_vm_was_paused_is_taken_once_it_runs_again():
    # The core forgets the SINTs raised while a partition is suspended: the kernel reads its slot
    # and flags when it runs again all the same.
    host, parent = host_and_parent()
    child, stack = vm(host, parent)
    host.run(20 * MS)
    host.root.suspend_partition(child)
    relid = parent.offer(child, ECHO)
    host.run(30 * MS)
    offers = lambda: [t for t, event, f in stack.log_entries if event == "offer" and f["relid"] == relid]
    assert offers() == []
    host.root.resume_partition(child)
    host.run(40 * MS)
    assert len(offers()) == 1


def test_a_computation_cut_by_a_pause_goes_on_after_it():
    done = []

    async def workload(ctx):
        await ctx.device("echo")
        await ctx.sleep("10ms")
        start = ctx.now
        await ctx.compute("50ms")
        done.append((start, ctx.now))

    host, parent = host_and_parent()
    child, stack = vm(host, parent, workload=workload)
    host.run(30 * MS)
    host.root.suspend_partition(child)
    host.run(50 * MS)
    host.root.resume_partition(child)
    host.run(200 * MS)
    ((start, end),) = done
    assert end - start >= 50 * MS + 20 * MS   # all of its 50 ms, and the 20 ms it was paused
