"""Simulation speed: events per wall second of the C run loop (a timer-only workload) and of a
workload of Python guests, each as a ratio to SimPy running the same model in the same process;
and simulated seconds per wall second for a host of 64 LPs running 256 VMs x 2 VPs of mostly idle
guests with 10 ms timers.

The models, as both simulators run them:
- timer-only: V VPs, each with a periodic synthetic timer (10 ms); on each expiry the VP takes
  the interrupt, computes 20 us (an idle kernel's tick) and halts. hvsim: the built-in tick guest
  and SynIC timers, all in C. SimPy: one process per VP, `timeout(period)` then `timeout(work)`.
- Python guests: V VPs on V LPs, each looping "compute 1 ms, sleep 1 ms". hvsim: a Python
  coroutine per VP; SimPy: one process per VP with two timeouts per loop.
Events counted are the simulators' own: hvsim's processed events (run_stats), SimPy's scheduled
events (each timeout is one). Rates are per wall-clock second of the simulation run alone
(building the host is not counted).
"""
from __future__ import annotations

import simpy

from bench.timing import Figure, Goal, wall

from hypervisor import Host
from hypervisor.synic import simp_value, sint_value, stimer_config_value
from hypervisor.abi import Register
from partitions.worker import VmSpec, VmWorker

MS, US = 1_000_000, 1_000


GOAL_TIMERS = Goal(">=", 10, "ratio", ">= 10x SimPy")
GOAL_PYTHON = Goal(">=", 2, "ratio", ">= 2x SimPy")


# ---- timer-only ------------------------------------------------------------------------------
TIMER_SINT = 3


def tick_host(lps: int, vms: int, vps: int, period_ns: int = 10 * MS, work_ns: int = 20 * US) -> Host:
    host = Host(logical_processors=lps, memory=f"{max(64, vms * vps // 2 + 64)}MiB", seed=1)
    for i in range(vms):
        p = VmWorker(host, VmSpec(f"t{i}", memory="64KiB", processors=vps)).build()
        for v in range(vps):
            # What the guest kernel does at boot: SynIC on, message page at GPA page 2v+1,
            # SINT 3 unmasked, synthetic timer 0 periodic on SINT 3.
            host.root.set_vp_registers(p, v, {
                Register.SIMP: simp_value(2 * v + 1), Register.SCONTROL: 1,
                Register.SINT0 + TIMER_SINT: sint_value(0x30),
                Register.STIMER0_CONFIG: stimer_config_value(sint=TIMER_SINT, periodic=True, enable=False),
            })
            host.root.set_vp_registers(p, v, {Register.STIMER0_COUNT: period_ns // 100})
            host.root.set_vp_registers(p, v, {
                Register.STIMER0_CONFIG: stimer_config_value(sint=TIMER_SINT, periodic=True, enable=True)})
            p.vp(v).run_builtin("tick", work=work_ns)
        host.root.resume_partition(p)
    return host


def simpy_ticks(vps: int, until_ns: int, period_ns: int = 10 * MS, work_ns: int = 20 * US) -> int:
    env = simpy.Environment()
    count = [0]

    def vp():
        while True:
            yield env.timeout(period_ns - work_ns)
            yield env.timeout(work_ns)
            count[0] += 2

    for _ in range(vps):
        env.process(vp())
    env.run(until=until_ns)
    return count[0]


def bench_timers(vps: int, sim_ns: int) -> list[Figure]:
    host = tick_host(lps=8, vms=vps // 2, vps=2)
    start_events = host.introspect.run_stats()["events_processed"]
    seconds, _ = wall(lambda: host.run(sim_ns))
    events = host.introspect.run_stats()["events_processed"] - start_events
    sp_seconds, sp_events = wall(lambda: simpy_ticks(vps, sim_ns))
    hv_rate, sp_rate = events / seconds, sp_events / sp_seconds
    baseline = f"SimPy, timer model ({vps} VPs)"
    return [
        Figure(baseline, sp_rate, "events/s", baseline, 1.0),
        Figure(f"hvsim C loop, tick guests + SynIC timers ({vps} VPs)", hv_rate, "events/s", baseline,
               hv_rate / sp_rate, GOAL_TIMERS),
    ]


# ---- Python guests ---------------------------------------------------------------------------
def python_guest_host(vps: int) -> Host:
    host = Host(logical_processors=vps, memory="256MiB", seed=1)
    p = VmWorker(host, VmSpec("py", memory="1MiB", processors=vps)).build()

    async def loop(ctx):
        while True:
            await ctx.compute(MS)
            await ctx.sleep(MS)

    for v in range(vps):
        p.vp(v).run(loop)
    host.root.resume_partition(p)
    return host


def simpy_loops(vps: int, until_ns: int) -> int:
    env = simpy.Environment()
    count = [0]

    def vp():
        while True:
            yield env.timeout(MS)
            yield env.timeout(MS)
            count[0] += 2

    for _ in range(vps):
        env.process(vp())
    env.run(until=until_ns)
    return count[0]


def bench_python_guests(vps: int, sim_ns: int) -> list[Figure]:
    host = python_guest_host(vps)
    seconds, _ = wall(lambda: host.run(sim_ns))
    events = host.introspect.run_stats()["events_processed"]
    sp_seconds, sp_events = wall(lambda: simpy_loops(vps, sim_ns))
    steps = vps * (sim_ns // (2 * MS)) * 2
    baseline = f"SimPy, compute/sleep loop ({vps} VPs)"
    return [
        Figure(baseline, sp_events / sp_seconds, "guest steps/s", baseline, 1.0),
        Figure(f"hvsim, Python guest coroutines ({vps} VPs)", steps / seconds, "guest steps/s", baseline,
               (steps / seconds) / (sp_events / sp_seconds), GOAL_PYTHON,
               extra={"hvsim_events_per_s": events / seconds}),
    ]


# ---- the big idle host -------------------------------------------------------------------------
def bench_big_idle_host(vms: int, sim_ns: int) -> list[Figure]:
    built, host = wall(lambda: tick_host(lps=64, vms=vms, vps=2))
    seconds, _ = wall(lambda: host.run(sim_ns))
    rate = (sim_ns / 1e9) / seconds
    return [Figure(f"64 LPs, {vms} VMs x 2 VPs, idle tick guests with 10 ms timers", rate, "sim s / wall s",
                   "real time", rate, note=f"building the host took {built:.1f} s (not counted)",
                   extra={"events_per_s": host.introspect.run_stats()["events_processed"] / seconds})]


# (timer VPs, timer sim ns, Python-guest VPs, Python-guest sim ns, idle VMs, idle sim ns) per size
PLAN = {"tiny": (4, 20 * MS, 2, 10 * MS, 2, 20 * MS),
        "default": (200, 1_000 * MS, 32, 500 * MS, 256, 500 * MS),
        "long": (200, 4_000 * MS, 32, 2_000 * MS, 256, 2_000 * MS)}


def run(size: str = "default") -> list[Figure]:
    tv, tns, pv, pns, iv, ins = PLAN[size]
    return bench_timers(tv, tns) + bench_python_guests(pv, pns) + bench_big_idle_host(iv, ins)
