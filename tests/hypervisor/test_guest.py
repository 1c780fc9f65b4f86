"""Python guests on VPs: compute, halt, sleep, hypercall costs, errors, and determinism."""
import pytest

from hypervisor import CallCode, Host, HvStatus, control
from hypervisor.guest import GuestContext, GuestError
from partitions.worker import VmSpec, VmWorker

US, MS = 1_000, 1_000_000


def child(host, name="g", vps=1, start=False):
    p = VmWorker(host, VmSpec(name, memory="2MiB", processors=vps)).build()
    if start:
        host.root.resume_partition(p)
    return p


def test_compute_spends_exactly_the_time_asked_and_time_only_moves_by_run():
    host = Host(logical_processors=1, memory="32MiB", seed=1)
    p = child(host)
    seen = []

    async def guest(ctx):
        seen.append(ctx.now)
        await ctx.compute("3ms")
        seen.append(ctx.now)
        await ctx.compute(500 * US)
        seen.append(ctx.now)

    p.vp(0).run(guest)
    host.root.resume_partition(p)
    assert host.now == 0 and seen == []
    host.run("10ms")
    assert seen == [0, 3 * MS, 3 * MS + 500 * US]
    assert host.introspect.run_time_ns(p) == 3 * MS + 500 * US
    assert p.vp(0).info()["exec"] == 3  # the guest ended: its VP halts


def test_sleep_costs_no_cpu_and_wakes_on_time():
    host = Host(logical_processors=1, memory="32MiB", seed=1)
    p = child(host)
    wakes = []

    async def guest(ctx):
        for _ in range(3):
            w = await ctx.sleep("7ms")
            wakes.append((ctx.now, w.reason))

    p.vp(0).run(guest)
    host.root.resume_partition(p)
    host.run("1s")
    assert wakes == [(7 * MS, "timeout"), (14 * MS, "timeout"), (21 * MS, "timeout")]
    assert host.introspect.run_time_ns(p) == 0


def test_halt_with_timeout_and_without_interrupts_times_out():
    host = Host(logical_processors=1, memory="32MiB", seed=1)
    p = child(host)
    out = []

    async def guest(ctx):
        w = await ctx.halt(timeout="2ms")
        out.append((ctx.now, w.reason, w.sints))

    p.vp(0).run(guest)
    host.root.resume_partition(p)
    host.run("5ms")
    assert out == [(2 * MS, "timeout", 0)]


def test_hypercalls_cost_the_calling_vp_cpu_time():
    host = Host(logical_processors=1, memory="32MiB", seed=1, costs={"hypercall": "3us"})
    p = child(host)
    statuses = []

    async def guest(ctx):
        for _ in range(10):
            statuses.append(ctx.hypercall(control(CallCode.GET_PARTITION_ID)).status)
        await ctx.compute(0)

    p.vp(0).run(guest)
    host.root.resume_partition(p)
    host.run("1ms")
    assert statuses == [HvStatus.SUCCESS] * 10
    assert host.introspect.run_time_ns(p) == 30 * US


def test_parent_work_costs_parent_cpu_time():
    host = Host(logical_processors=2, memory="32MiB", seed=1)

    async def worker(ctx):
        await ctx.compute("4ms")

    host.root.vp(1).run(worker)
    host.run("10ms")
    assert host.introspect.run_time_ns(host.root) == 4 * MS


def test_vps_share_lps_and_wait_their_turn():
    host = Host(logical_processors=1, memory="32MiB", seed=1)
    p = child(host, vps=2)
    done = {}

    def make(i):
        async def guest(ctx):
            await ctx.compute("25ms")
            done[i] = ctx.now
        return guest

    for i in range(2):
        p.vp(i).run(make(i))
    host.root.resume_partition(p)
    host.run("1s")
    # One LP, 10 ms slices, round robin: the two finish at 45 and 50 ms.
    assert sorted(done.values()) == [45 * MS, 50 * MS]


def test_a_guest_that_raises_stops_its_vp_with_a_clear_error():
    host = Host(logical_processors=1, memory="32MiB", seed=1)
    p = child(host)

    async def guest(ctx):
        await ctx.compute("1ms")
        raise KeyError("oops")

    p.vp(0).run(guest)
    host.root.resume_partition(p)
    with pytest.raises(GuestError, match="KeyError"):
        host.run("5ms")
    assert p.vp(0).info()["exec"] == 3
    host.run("10ms")  # the host goes on


def test_with_a_guest_error_handler_the_failing_vp_stops_and_the_run_goes_on():
    host = Host(logical_processors=2, memory="32MiB", seed=1)
    bad, good = child(host, "bad", vps=2), child(host, "good")
    ticks = {"bad1": 0, "good": 0}

    async def crash(ctx):
        await ctx.compute("1ms")
        1 / 0

    def ticker(name):
        async def guest(ctx):
            while True:
                await ctx.compute("1ms")
                ticks[name] += 1
                await ctx.sleep("1ms")
        return guest

    bad.vp(0).run(crash)
    bad.vp(1).run(ticker("bad1"))
    good.vp(0).run(ticker("good"))
    for p in (bad, good):
        host.root.resume_partition(p)
    seen = []
    host.on_guest_error = lambda pid, vp, exc: seen.append((pid, vp, exc.detail, host.now))
    assert host.run("20ms") == 20 * MS
    assert seen == [(bad.id, 0, "ZeroDivisionError: division by zero", 1 * MS)]
    assert bad.vp(0).info()["exec"] == 3                  # stopped
    assert ticks["good"] == 10 and ticks["bad1"] == 10    # the others ran on, the crashed VM's other VP too


def test_a_guest_error_handler_may_delete_the_partition_of_the_failing_vp():
    host = Host(logical_processors=1, memory="32MiB", seed=1)
    w = VmWorker(host, VmSpec("bad", memory="2MiB", processors=2))
    bad = w.build()

    async def crash(ctx):
        await ctx.compute("1ms")
        raise KeyError("oops")

    async def spin(ctx):
        while True:
            await ctx.compute("1ms")

    bad.vp(0).run(crash)
    bad.vp(1).run(spin)
    host.root.resume_partition(bad)

    def handler(pid, vp, exc):
        host._guests.detach(pid)
        w.destroy()

    host.on_guest_error = handler
    host.run("10ms")
    assert host.introspect.partition_ids() == [host.root.id]


def test_awaiting_something_else_is_a_clear_error():
    import asyncio
    host = Host(logical_processors=1, memory="32MiB", seed=1)
    p = child(host)

    async def guest(ctx):
        await asyncio.sleep(0)

    p.vp(0).run(guest)
    host.root.resume_partition(p)
    with pytest.raises(GuestError, match="awaited"):
        host.run("1ms")


def workload(seed, weights, duration="300ms", first_ms=3):
    host = Host(logical_processors=2, memory="64MiB", seed=seed)
    for i, w in enumerate(weights):
        p = VmWorker(host, VmSpec(f"d{i}", memory="2MiB", cpu_weight=w)).build()

        async def guest(ctx, i=i):
            while True:
                await ctx.compute(f"{(i % 3 + 1) * first_ms}ms")
                await ctx.sleep("1ms")

        p.vp(0).run(guest)
        host.root.resume_partition(p)
    host.run(duration)
    return host.trace_digest(), [host.introspect.run_time_ns(p) for p in host.partitions()]


def test_same_configuration_and_seed_give_the_same_trace():
    assert workload(7, [100, 300, 200]) == workload(7, [100, 300, 200])


def test_a_different_workload_gives_a_different_trace():
    assert workload(7, [100, 300, 200])[0] != workload(7, [100, 300, 200], first_ms=4)[0]
    assert workload(7, [100, 300, 200])[0] != workload(7, [100, 300, 200, 100])[0]
    assert workload(7, [100, 300, 200])[0] != workload(7, [100, 300, 200], "301ms")[0]



def _signalled_at(host, target, at_ns, sint=2):
    """A root VP that signals flag 1 of `target`'s SINT `sint` (VP 0) at `at_ns`; returns what the
    target's guest calls to turn its SynIC on, and the list of the times it signalled."""
    from hypervisor import Register
    from hypervisor.synic import PortType, siefp_value, sint_value
    root, sent = host.root, []
    root.deposit_memory(target, host.root_memory.allocate(1))   # the port
    root.deposit_memory(None, host.root_memory.allocate(1))     # the connection
    root.create_port(target, 0x300, port_type=PortType.EVENT, target_sint=sint, target_vp=0,
                     base_flag=0, flag_count=16, connection_partition=root)
    root.connect_port(None, 0x301, target, 0x300, port_type=PortType.EVENT)

    async def signaller(ctx):
        await ctx.sleep(at_ns)
        root.signal_event(0x301, 1, via=ctx.vp)
        sent.append(ctx.now)

    root.vp(0).run(signaller)
    return (lambda ctx: ctx.vp.set_registers({Register.SIEFP: siefp_value(9), Register.SCONTROL: 1,
                                              Register.SINT0 + sint: sint_value(0x32)})), sent


# 1 ns each, so that the times below are exact: enabling the SynIC is one hypercall (1 ns of
# debt, spent first), the signal costs the child an event and an interrupt (2 ns).
FREE = {"hypercall": 1, "message": 1, "event": 1, "interrupt": 1}


def test_an_interrupt_ends_an_interruptible_compute_early_with_the_work_left():
    host = Host(logical_processors=2, memory="32MiB", seed=1, costs=FREE)
    p = child(host)
    enable, sent = _signalled_at(host, p, 10 * MS)
    out = []

    async def guest(ctx):
        enable(ctx)
        w = await ctx.compute_interruptible("50ms")
        out.append((ctx.now, w.reason, w.raised(2), w.work_left, ctx.take_sint(2), ctx.take_sint(2)))
        w = await ctx.compute_interruptible(w.work_left)
        out.append((ctx.now, w.reason, w.work_left))

    p.vp(0).run(guest)
    host.root.resume_partition(p)
    host.run("100ms")
    (t,) = sent
    (at, reason, raised, left, taken, again), end = out
    assert (at, reason, raised, taken, again) == (t, "interrupt", True, True, False)
    assert 40 * MS - 10 <= left <= 40 * MS + 10
    assert end == (50 * MS + 3, "step", 0)   # the rest, and the 3 ns of costs: as without the interrupt
    assert host.introspect.run_time_ns(p) == 50 * MS + 3   # nothing lost, nothing spent twice


def test_a_plain_compute_runs_to_its_end_and_the_interrupt_waits():
    host = Host(logical_processors=2, memory="32MiB", seed=1, costs=FREE)
    p = child(host)
    enable, sent = _signalled_at(host, p, 10 * MS)
    out = []

    async def guest(ctx):
        enable(ctx)
        w = await ctx.compute("50ms")
        out.append((ctx.now, w.reason, w.raised(2), w.work_left))
        w = await ctx.compute_interruptible("5ms")   # the interrupt was reported: nothing pending
        out.append((ctx.now, w.reason))

    p.vp(0).run(guest)
    host.root.resume_partition(p)
    host.run("100ms")
    assert sent and out == [(50 * MS + 3, "step", True, 0), (55 * MS + 3, "step")]


def test_an_interrupt_raised_before_an_interruptible_compute_is_taken_ends_it_at_once():
    # The root rings its own doorbell (an event port on its own VP) and then computes: the SINT
    # was raised after its last wakeup, so the compute ends before it starts.
    from hypervisor import Register
    from hypervisor.synic import PortType, siefp_value, sint_value
    host = Host(logical_processors=1, memory="32MiB", seed=1, costs=FREE)
    root = host.root
    root.deposit_memory(None, host.root_memory.allocate(2))
    root.create_port(None, 0x400, port_type=PortType.EVENT, target_sint=3, target_vp=0,
                     base_flag=0, flag_count=1, connection_partition=root)
    root.connect_port(None, 0x401, None, 0x400, port_type=PortType.EVENT)
    siefp = host.root_memory.allocate(1)[0]
    out = []

    async def guest(ctx):
        ctx.vp.set_registers({Register.SIEFP: siefp_value(siefp), Register.SCONTROL: 1,
                              Register.SINT0 + 3: sint_value(0x33)})
        await ctx.compute("1ms")
        root.signal_event(0x401, 0, via=ctx.vp)
        w = await ctx.compute_interruptible("5ms")
        out.append((ctx.now, w.reason, w.raised(3), w.work_left))

    root.vp(0).run(guest)
    host.run("100ms")
    assert out == [(1 * MS + 1, "interrupt", True, 5 * MS)]


def test_an_interrupted_compute_waiting_for_an_lp_leaves_the_run_queue():
    # One LP, taken by a root VP that computes: the child's work waits in the run queue when its
    # interrupt comes, and is ended there.
    host = Host(logical_processors=1, root_vps=2, memory="32MiB", seed=1, costs=FREE)
    p = child(host)
    enable, sent = _signalled_at(host, p, 2 * MS)
    out = []

    async def hog(ctx):
        await ctx.compute("30ms")

    async def guest(ctx):
        enable(ctx)
        w = await ctx.compute_interruptible("5ms")
        out.append((w.reason, w.work_left))

    host.root.vp(1).run(hog)
    p.vp(0).run(guest)
    host.root.resume_partition(p)
    host.run("100ms")
    assert out == [("interrupt", 5 * MS)]   # none of it done: the hog had the LP
    assert host.introspect.run_time_ns(p) == 0


def test_a_batch_of_more_guest_steps_than_one_pack_reaches_each_vp_with_its_own_step():
    # 2 partitions x 50 VPs all wake at the same instant: one batch of 100 steps, packed for the
    # core in more than one piece; each VP's compute must land on that VP and no other.
    host = Host(logical_processors=4, memory="64MiB", seed=1)
    parts = [child(host, f"b{k}", vps=50) for k in range(2)]

    def guest(us):
        async def run(ctx):
            await ctx.sleep("1ms")
            await ctx.compute(us * US)
            await ctx.sleep("1ms")
        return run

    for k, p in enumerate(parts):
        for v in range(50):
            p.vp(v).run(guest(1 + 50 * k + v))
    for p in parts:
        host.root.resume_partition(p)
    host.run("1s")
    for k, p in enumerate(parts):
        assert [p.vp(v).info()["run_time_ns"] for v in range(50)] == [(1 + 50 * k + v) * US for v in range(50)]


def test_wakeups_say_why_each_step_ended_and_a_kept_one_does_not_change():
    host = Host(logical_processors=1, memory="32MiB", seed=1)
    p = child(host)
    seen = []

    async def guest(ctx):
        for _ in range(2):
            seen.append(await ctx.compute("1ms"))
            seen.append(await ctx.sleep("1ms"))
            seen.append(await ctx.halt("1ms"))

    p.vp(0).run(guest)
    host.root.resume_partition(p)
    host.run("20ms")
    assert [(w.reason, w.sints, w.work_left) for w in seen] == [("step", 0, 0), ("timeout", 0, 0),
                                                               ("timeout", 0, 0)] * 2
    assert p.vp(0).info()["exec"] == 3  # the guest returned: its VP stopped


def test_awaiting_something_else_after_a_step_is_a_clear_error_and_stops_only_that_vp():
    import asyncio
    host = Host(logical_processors=2, memory="32MiB", seed=1)
    p = child(host, vps=2)
    ticks = []

    async def bad(ctx):
        await ctx.compute("1ms")
        await asyncio.sleep(0)

    async def good(ctx):
        while True:
            await ctx.compute("1ms")
            ticks.append(ctx.now)

    p.vp(0).run(bad)
    p.vp(1).run(good)
    host.root.resume_partition(p)
    errors = []
    host.on_guest_error = lambda pid, vp, exc: errors.append((vp, exc.detail.split(";")[0]))
    host.run("5ms")
    assert len(errors) == 1 and errors[0][0] == 0 and errors[0][1].startswith("awaited")
    assert p.vp(0).info()["exec"] == 3
    assert ticks == [n * MS for n in range(1, 6)]


def test_steps_given_as_strings_and_out_of_range_values_are_checked_as_before():
    host = Host(logical_processors=1, memory="32MiB", seed=1)
    p = child(host)
    ctx = GuestContext(p.vp(0))
    assert (ctx.compute("2ms").arg, ctx.compute(5).arg, ctx.sleep(0).arg, ctx.halt().arg,
            ctx.halt(0).arg, ctx.compute_interruptible("1us").arg) == (2 * MS, 5, 1, 0, 1, US)
    for bad in (-1, True, 1.5, "soon"):
        with pytest.raises(ValueError):
            ctx.compute(bad)
        with pytest.raises(ValueError):
            ctx.sleep(bad)


def test_step_makers_give_each_duration_its_own_step_beyond_the_shared_ones():
    # Steps of whole ns are shared per (op, duration) up to a bound; past it each is made anew.
    host = Host(logical_processors=1, memory="32MiB", seed=1)
    ctx = GuestContext(child(host).vp(0))
    n = 5000
    assert [ctx.compute(d).arg for d in range(n)] == list(range(n))
    assert [ctx.compute_interruptible(d).arg for d in range(n)] == list(range(n))
    assert [ctx.sleep(d).arg for d in range(1, n)] == [ctx.halt(d).arg for d in range(1, n)] == list(range(1, n))
    assert {ctx.compute(d).op for d in range(n)} == {ctx.compute(d).op for d in range(n - 1, -1, -1)}
    assert (ctx.compute(7).op, ctx.compute_interruptible(7).op, ctx.sleep(7).op, ctx.halt(7).op) == (
        ctx.compute("7ns").op, ctx.compute_interruptible("7ns").op, ctx.sleep("7ns").op, ctx.halt("7ns").op)


def test_a_step_of_any_64_bit_duration_reaches_the_core_whole():
    # Each step crosses as an (op, arg) pair of 64-bit words: a timeout past 2**61 ns is the one
    # the guest asked for, so the VP stays halted (and an interrupt still wakes it).
    host = Host(logical_processors=1, memory="32MiB", seed=1)
    p = child(host)
    seen = []

    async def guest(ctx):
        seen.append((await ctx.halt(2**63 + 5)).reason)
        seen.append((await ctx.sleep(3 * MS)).reason)

    p.vp(0).run(guest)
    host.root.resume_partition(p)
    host.run("1s")
    assert seen == [] and p.vp(0).info()["exec"] == 3


def test_a_guest_replaced_while_its_vp_steps_in_the_same_batch_starts_afresh():
    # VP 0's guest puts a new guest on VP 1 at the instant VP 1's old guest is due: the old one
    # never runs again (its coroutine is closed) and the new one starts, whatever order the
    # batch has them in.
    host = Host(logical_processors=2, memory="32MiB", seed=1)
    p = child(host, vps=2)
    seen = []

    async def old(ctx):
        try:
            while True:
                await ctx.sleep(MS)
                seen.append(("old", ctx.now))
        finally:
            seen.append(("old closed", ctx.now))

    async def new(ctx):
        seen.append(("new", ctx.now))
        await ctx.sleep(MS)
        seen.append(("new", ctx.now))

    async def replacer(ctx):
        await ctx.sleep(2 * MS)
        p.vp(1).run(new)

    p.vp(0).run(replacer)
    p.vp(1).run(old)
    host.root.resume_partition(p)
    host.run("10ms")
    olds = [t for what, t in seen if what == "old"]
    assert olds and max(olds) <= 2 * MS
    assert ("old closed", 2 * MS) in seen
    news = [t for what, t in seen if what == "new"]
    assert len(news) == 2 and news[0] >= 2 * MS and news[1] == news[0] + MS
