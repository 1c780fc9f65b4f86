"""A duty cycle (the cpu-burn workload) takes the same steps whether the core takes them between
interrupts or Python takes every one: the trace digest, which folds in every step, event and
dispatch, is the same either way, and with the core Python is resumed per interrupt, not twice per
period."""
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st

import partitions.kernel as kernel
from drivers.example import DEVICE as ECHO
from drivers.registry import discover
from hypervisor import Host
from hypervisor.guest import CYCLE_COMPUTE, CYCLE_PLAIN, GuestContext
from partitions.config import from_dict
from partitions.kernel import kernel_main, secondary_main
from partitions.management import ManagedHost
from partitions.vmbus_guest import GuestVmbus
from partitions.vmbus_parent import ParentVmbus
from partitions.workloads import cpu_burn
from partitions.worker import VmSpec, VmWorker

US, MS = 1_000, 1_000_000


def echo_host(duty, period, echo_every, lps, *, secondary_duty=None, side_every=0):
    """A guest burning `duty` of every `period` on VP 0 while its own timer sends an echo every
    `echo_every` ns (each echo's reply is an interrupt); VP 1 burns `secondary_duty` of the same
    period if given, or else, every `side_every` ns, gives VP 0's stack work that no interrupt
    announces: CPU time charged, and a timer armed that charges more when it runs. Returns (host,
    child)."""
    host = Host(logical_processors=lps, memory="256MiB", seed=5)
    parent = ParentVmbus(host, vp_index=1 if lps > 1 else 0)
    child = VmWorker(host, VmSpec("g", memory="2MiB", processors=2)).build()
    parent.attach(child, [(ECHO, {})])
    stack = GuestVmbus(child, discover())
    burn = cpu_burn(duty, period)

    async def workload(ctx):
        vsc = await ctx.device("echo")

        def tick():
            vsc.echo(b"ping")
            ctx.stack.context.call_later(echo_every, tick)

        if echo_every:
            ctx.stack.context.call_later(echo_every, tick)
        await burn(ctx)

    child.vp(0).run(lambda ctx: kernel_main(ctx, stack, workload))
    async def side(ctx):
        while True:
            await ctx.sleep(side_every)
            stack.context.charge(3 * US)
            stack.context.call_later(side_every // 3, lambda: stack.context.charge(2 * US))

    if secondary_duty is not None:
        child.vp(1).run(lambda ctx: secondary_main(ctx, stack, cpu_burn(secondary_duty, period)))
    elif side_every:
        child.vp(1).run(lambda ctx: secondary_main(ctx, stack, side))
    host.root.resume_partition(child)
    return host, child


def run_echo_host(monkeypatch, in_core, until, **kw):
    monkeypatch.setattr(kernel, "CYCLES_IN_CORE", in_core)
    host, child = echo_host(**kw)
    host.run(until)
    times = [host.introspect.vp_info(child, v)["run_time_ns"] for v in range(2)]
    steps = [GuestContext(child.vp(v)).cycle_steps() for v in range(2)]
    return host.trace_digest(), times, steps


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(duty=st.sampled_from([0.0, 0.1, 0.35, 0.5, 0.9, 1.0]), period=st.integers(200 * US, 7 * MS),
       echo_every=st.sampled_from([0, 90 * US, 700 * US, 3 * MS]), lps=st.integers(1, 2),
       secondary_duty=st.sampled_from([None, 0.0, 0.3, 1.0]), side_every=st.sampled_from([0, 250 * US, 1900 * US]))
# A burn on VP 0 whose echo replies come mid-period while VP 1's idle cycle is due at the same
# instant: the core's step for VP 1 must go in after VP 0's guest code of that batch (its signal),
# as Python applies a batch's steps after all of its guests ran.
@example(duty=0.5, period=200_000, echo_every=90_000, lps=2, secondary_duty=0.0, side_every=0)
# Echo replies in every idle stretch: the core has no step to take, and must not be required to.
@example(duty=0.0, period=200_000, echo_every=90_000, lps=2, secondary_duty=1.0, side_every=0)
def test_the_core_takes_the_steps_python_would(monkeypatch, duty, period, echo_every, lps, secondary_duty,
                                               side_every):
    kw = dict(duty=duty, period=period, echo_every=echo_every, lps=lps, secondary_duty=secondary_duty,
              side_every=side_every)
    digest, times, steps = run_echo_host(monkeypatch, True, 120 * MS, **kw)
    reference, ref_times, ref_steps = run_echo_host(monkeypatch, False, 120 * MS, **kw)
    assert (digest, times) == (reference, ref_times)
    assert ref_steps == [0, 0]
    # With periods that pass quietly (no work given to the stack, replies rarer than two periods)
    # the core took steps (the device is ready after a few ms); interrupts in every period can
    # leave it none to take.
    if not side_every and (not echo_every or echo_every > 2 * period):
        assert steps[0] > 0


def test_a_quiet_burn_resumes_python_per_interrupt_not_per_period(monkeypatch):
    resumes = []

    async def counting(ctx):
        original = ctx._ctx.compute_interruptible, ctx._ctx.halt

        def counted(make):
            def step(*args):
                resumes.append(ctx.now)
                return make(*args)
            return step
        ctx._ctx.compute_interruptible, ctx._ctx.halt = map(counted, original)
        await cpu_burn(0.1, "10ms")(ctx)

    host = Host(logical_processors=1, memory="256MiB", seed=5)
    parent = ParentVmbus(host, vp_index=0)
    child = VmWorker(host, VmSpec("g", memory="2MiB")).build()
    parent.attach(child, [])
    stack = GuestVmbus(child, discover())
    child.vp(0).run(lambda ctx: kernel_main(ctx, stack, counting))
    host.root.resume_partition(child)
    host.run(50 * MS)
    before, busy_before = len(resumes), host.introspect.vp_info(child, 0)["run_time_ns"]
    host.run(1050 * MS)
    # 100 periods: 200 steps, taken by the core; the guest's own steps were before.
    assert len(resumes) == before
    assert GuestContext(child.vp(0)).cycle_steps() >= 200
    busy = host.introspect.vp_info(child, 0)["run_time_ns"] - busy_before
    assert 100 * MS <= busy < 101 * MS


def managed_digest(monkeypatch, in_core, config, until):
    monkeypatch.setattr(kernel, "CYCLES_IN_CORE", in_core)
    with tempfile.TemporaryDirectory() as tmp:
        m = ManagedHost(from_dict(config(Path(tmp)), base_dir=Path(tmp)), workdir=Path(tmp))
        m.start()
        m.run(until)
        digest = m.host.trace_digest()
        m.close()
    return digest


def burners(tmp: Path) -> dict:
    """Burners with every integration service, a network between two of them, and a pause, a
    resume and a save/restore of a burner in the middle of its cycle."""
    return {
        "host": {"logical_processors": 2, "smt": 2, "memory": "4GiB"},
        "vm": [
            {"name": "web", "processors": 2, "memory": "64MiB",
             "workload": [{"kind": "cpu-burn", "duty": 0.6, "period": "3ms"},
                          {"kind": "net-request-response", "peer": "peer", "interval": "2ms"}],
             "nics": [{"switch": "lan", "ip": "10.0.0.2/24"}]},
            {"name": "peer", "processors": 1, "memory": "64MiB", "workload": {"kind": "cpu-burn", "duty": 0.3},
             "nics": [{"switch": "lan", "ip": "10.0.0.3/24"}]},
            {"name": "batch", "processors": 2, "memory": "64MiB", "cpu": {"limit": 50},
             "workload": {"kind": "cpu-burn", "duty": 1.0}},
            {"name": "light", "processors": 1, "memory": "64MiB",
             "workload": {"kind": "cpu-burn", "duty": 0.05, "period": "1ms"}},
        ],
        "switch": [{"name": "lan"}],
        "at": [{"time": "150ms", "action": "pause", "vm": "batch"},
               {"time": "181ms", "action": "resume", "vm": "batch"},
               {"time": "203ms", "action": "save", "vm": "light"},
               {"time": "230ms", "action": "restore", "vm": "light"}],
    }


def test_managed_burners_take_the_same_steps_with_the_core(monkeypatch):
    digest = managed_digest(monkeypatch, True, burners, 400 * MS)
    assert digest == managed_digest(monkeypatch, False, burners, 400 * MS)


def test_arming_a_cycle_for_a_vp_not_waiting_for_a_step_is_refused():
    host = Host(logical_processors=1, memory="64MiB", seed=1)
    child = VmWorker(host, VmSpec("g", memory="1MiB")).build()
    with pytest.raises(ValueError, match="not waiting"):
        GuestContext(child.vp(0)).arm_cycle(CYCLE_PLAIN, CYCLE_COMPUTE, MS, MS, MS, MS, 0)
