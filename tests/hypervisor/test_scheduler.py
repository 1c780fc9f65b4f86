"""The VP scheduler: Hyper-V's CPU controls (weight, reserve, limit) under the classic policy,
the core policy's SMT rule, and what halted VPs cost."""
import pytest

from hypervisor import Host, HvStatus
from hypervisor.status import HvError
from partitions.worker import VmSpec, VmWorker

MS = 1_000_000
WINDOW = 100 * MS


def vm(host, name, *, vps=1, weight=100, reserve=0, limit=100, guest="burn", start=True):
    w = VmWorker(host, VmSpec(name, memory="2MiB", processors=vps, cpu_weight=weight,
                              cpu_reserve=reserve, cpu_limit=limit))
    p = w.build()
    for i in range(vps):
        p.vp(i).run_builtin(guest)
    if start:
        host.root.resume_partition(p)
    return p


def share(host, p, total_ns):
    return host.introspect.run_time_ns(p) / total_ns


def test_weights_share_one_lp_in_proportion():
    host = Host(logical_processors=1, memory="64MiB", seed=1)
    vms = [vm(host, f"w{w}", weight=w) for w in (100, 200, 700)]
    host.run("1s")
    shares = [share(host, p, 10**9) for p in vms]
    for got, want in zip(shares, (0.10, 0.20, 0.70)):
        assert abs(got - want) <= 0.02, shares
    assert sum(shares) == pytest.approx(1.0, abs=1e-9)  # the LP never idles with work queued


def test_equal_weights_on_two_lps_split_evenly_between_three_vms():
    host = Host(logical_processors=2, memory="64MiB", seed=1)
    vms = [vm(host, f"e{i}") for i in range(3)]
    host.run("3s")
    for p in vms:
        assert abs(share(host, p, 3 * 10**9) - 2 / 3) <= 0.02


def test_reserve_is_honoured_in_every_window_under_contention():
    host = Host(logical_processors=1, memory="64MiB", seed=1)
    reserved = vm(host, "reserved", weight=1, reserve=40)  # tiny weight: only the reserve helps it
    hogs = [vm(host, f"hog{i}", weight=10000) for i in range(2)]
    last = 0
    for window in range(1, 11):
        host.run(window * WINDOW)
        now = host.introspect.run_time_ns(reserved)
        assert now - last >= 0.40 * WINDOW, f"window {window}: reserved VM ran {(now - last) / MS} ms"
        last = now
    assert all(host.introspect.run_time_ns(h) > 0 for h in hogs)


def test_unmeetable_reserve_is_refused_and_the_vm_does_not_start():
    host = Host(logical_processors=2, memory="64MiB", seed=1)
    vm(host, "big", vps=2, reserve=60)          # 120% of one LP reserved
    late = vm(host, "late", vps=1, reserve=90, start=False)  # 120 + 90 > 200
    with pytest.raises(HvError) as err:
        host.root.resume_partition(late)
    assert err.value.status == HvStatus.NO_RESOURCES
    assert not host.introspect.partition_info(late)["started"]
    host.run("200ms")
    assert host.introspect.run_time_ns(late) == 0
    ok = vm(host, "fits", vps=1, reserve=80)     # 120 + 80 <= 200
    assert host.introspect.partition_info(ok)["started"]


def test_raising_a_reserve_past_capacity_is_refused_while_running():
    from hypervisor import PartitionProperty
    host = Host(logical_processors=1, memory="64MiB", seed=1)
    a = vm(host, "a", reserve=50)
    b = vm(host, "b", reserve=40)
    with pytest.raises(HvError) as err:
        host.root.set_partition_property(b, PartitionProperty.CPU_RESERVE, 60)
    assert err.value.status == HvStatus.NO_RESOURCES
    assert host.root.get_partition_property(b, PartitionProperty.CPU_RESERVE) == 40
    assert host.introspect.partition_info(a)["started"]


@pytest.mark.parametrize("limit", [5, 30, 75])
def test_limit_is_never_exceeded_in_any_window(limit):
    host = Host(logical_processors=1, memory="64MiB", seed=1)
    capped = vm(host, "capped", limit=limit, weight=10000)
    vm(host, "other", weight=1)
    last = 0
    for window in range(1, 16):
        host.run(window * WINDOW)
        now = host.introspect.run_time_ns(capped)
        assert now - last <= limit * WINDOW // 100, f"window {window}: {(now - last) / MS} ms > {limit}%"
        last = now
    # And it does get its limit when it wants more: the cap binds, not the competition.
    assert last == 15 * limit * WINDOW // 100


def test_limit_holds_for_python_guests_computing_in_odd_chunks():
    host = Host(logical_processors=1, memory="64MiB", seed=1)
    p = vm(host, "py", limit=25, guest="idle", start=False)

    async def busy(ctx):
        while True:
            await ctx.compute("7ms")

    p.vp(0).run(busy)
    host.root.resume_partition(p)
    last = 0
    for window in range(1, 11):
        host.run(window * WINDOW)
        now = host.introspect.run_time_ns(p)
        assert now - last <= 25 * MS
        last = now
    assert last >= 10 * 24 * MS


def test_halted_vps_consume_nothing():
    host = Host(logical_processors=2, memory="64MiB", seed=1)
    idle = vm(host, "idle", vps=2, guest="idle")
    busy = vm(host, "busy", vps=1)
    host.run("1s")
    assert host.introspect.run_time_ns(idle) == 0
    assert host.introspect.run_time_ns(busy) == 10**9
    for i in range(2):
        assert idle.vp(i).info()["exec"] == 3  # halted


def test_suspended_partition_does_not_run_and_resumes_where_it_was():
    host = Host(logical_processors=1, memory="64MiB", seed=1)
    p = vm(host, "p")
    host.run("100ms")
    assert host.introspect.run_time_ns(p) == 100 * MS
    host.root.suspend_partition(p)
    host.run("300ms")
    assert host.introspect.run_time_ns(p) == 100 * MS
    host.root.resume_partition(p)
    host.run("400ms")
    assert host.introspect.run_time_ns(p) == 200 * MS


def sample_cores(host, steps, step_ns, smt):
    """Run in small steps; after each, which partition runs on each LP."""
    violations = 0
    mixed_seen = False
    for k in range(1, steps + 1):
        host.run(k * step_ns)
        running = [host.introspect.lp_running(lp) for lp in range(host.logical_processors)]
        for core in range(host.logical_processors // smt):
            parts = {r[0] for r in running[core * smt:(core + 1) * smt] if r}
            if len(parts) > 1:
                violations += 1
                mixed_seen = True
    return violations, mixed_seen


def test_core_scheduler_never_runs_two_vms_on_one_core():
    host = Host(logical_processors=4, smt=2, memory="64MiB", seed=1, scheduler="core")
    vms = [vm(host, f"c{i}", vps=2, weight=w) for i, w in enumerate((100, 150, 300))]
    violations, _ = sample_cores(host, 800, 1_250_000, smt=2)
    assert violations == 0
    host.run("3s")
    # Whole cores change hands, so every VM gets CPU, roughly in proportion to its weight.
    times = [host.introspect.run_time_ns(p) for p in vms]
    assert all(t > 0 for t in times)
    assert times[0] < times[1] < times[2]


def test_core_scheduler_leaves_a_sibling_idle_rather_than_mix():
    host = Host(logical_processors=2, smt=2, memory="64MiB", seed=1, scheduler="core")
    vms = [vm(host, f"s{i}") for i in range(3)]
    violations, _ = sample_cores(host, 400, 2_500_000, smt=2)
    assert violations == 0
    total = sum(host.introspect.run_time_ns(p) for p in vms)
    # One single-VP VM at a time on the core: one LP's worth of CPU in all, shared evenly.
    assert total == host.now
    for p in vms:
        assert abs(host.introspect.run_time_ns(p) / total - 1 / 3) < 0.02


def test_classic_scheduler_does_mix_vms_on_a_core():
    # The same load under classic runs two VMs on the sibling LPs: the core tests can fail.
    host = Host(logical_processors=2, smt=2, memory="64MiB", seed=1, scheduler="classic")
    vms = [vm(host, f"s{i}") for i in range(3)]
    violations, mixed = sample_cores(host, 400, 2_500_000, smt=2)
    assert mixed and violations > 300
    assert sum(host.introspect.run_time_ns(p) for p in vms) == 2 * host.now


def test_unknown_scheduler_is_a_clear_error():
    with pytest.raises(ValueError, match="scheduler"):
        Host(logical_processors=1, memory="1MiB", scheduler="fifo")


def test_scheduling_records_pair_up_and_account_for_all_run_time():
    host = Host(logical_processors=2, memory="64MiB", seed=1)
    host.introspect.record_scheduling()
    vms = [vm(host, f"r{i}", weight=w) for i, w in enumerate((100, 300, 600))]
    host.run("300ms")
    records, dropped = host.introspect.take_scheduling()
    assert dropped == 0
    open_slices, ran = {}, {}
    for t, pid, lp, vp, kind in records:
        if kind == "run":
            assert lp not in open_slices          # one VP per LP at a time
            open_slices[lp] = (t, pid)
        else:
            start, owner = open_slices.pop(lp)
            assert owner == pid and t >= start
            ran[pid] = ran.get(pid, 0) + t - start
    for lp, (start, pid) in open_slices.items():   # still running at the end of the run
        ran[pid] = ran.get(pid, 0) + host.now - start
    assert ran == {p.id: host.introspect.run_time_ns(p) for p in vms}
