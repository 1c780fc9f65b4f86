"""Python guests on VPs: compute, halt, sleep, hypercall costs, errors, and determinism."""
import pytest

from hypervisor import CallCode, Host, HvStatus, control
from hypervisor.guest import GuestError
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
