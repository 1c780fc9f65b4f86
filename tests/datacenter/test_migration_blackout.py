"""A migration's downtime is the freeze to the target's VM running, the parents' work included
(BlackoutCosts: stopping the VPs, reading and writing their state, the device records and the last
pages, starting the VPs), and the guest's devices come back later, when its VMBus has reconnected:
the summary reports that apart (partitions/datacenter/migration.py)."""
import dataclasses

import pytest

from partitions.config import loads
from partitions.datacenter import Datacenter
from partitions.datacenter.migration import RECONNECT_POLL_NS, BlackoutCosts
from tests.datacenter.test_migration import WRITE_HEAVY, two_hosts

IO = ('name = "io"\nmemory = "64MiB"\ndisks = [ { path = "io.vhd", size = "16MiB" } ]\n'
      'workload = { kind = "disk-io", pattern = "random", block_size = "4KiB", queue_depth = 4 }')


def _move(workdir, guest: str, kind: str, source_costs=None, target_costs=None):
    dc = Datacenter(loads(two_hosts(guest)), seed=2, workdir=workdir)
    if source_costs is not None:
        dc.hosts["a"].migrations.costs = source_costs
    if target_costs is not None:
        dc.hosts["b"].migrations.costs = target_costs
    dc.run("300ms")
    name = next(iter(dc.hosts["a"].managed.vms))
    vm = dc.hosts["a"].managed.vms[name]
    shape = len(vm.partition.vps), len(vm.devices)
    record = dc.move(name, to="b", kind=kind)
    while (record.outcome == "running" or record.devices_ns is None) and dc.now < 3_000_000_000:
        dc.run(dc.now + 20_000_000)
    target = dc.hosts["b"].managed.vms[name]
    summary = dc.summary()["migrations"][0]
    back = [target.device_vsc(slot.name) is not None for slot in target.devices]
    dc.close()
    return record, summary, shape, back


@pytest.mark.parametrize("kind", ["live", "post-copy"])
def test_the_downtime_counts_both_parents_work(tmp_path, kind):
    costs = BlackoutCosts()
    record, s, (vps, devices), _ = _move(tmp_path / "x", IO, kind)
    last = record.rounds[-1].pages if kind == "live" else 0       # the blackout's pages (pre-copy)
    assert s["blackout_stop_ns"] == costs.stop_ns(vps, devices) + sum(
        costs.pages_ns(min(256, last - i)) for i in range(0, last, 256))
    assert s["blackout_start_ns"] >= costs.start_ns(vps, devices)
    assert s["downtime_ns"] >= s["blackout_stop_ns"] + s["blackout_start_ns"] + 50_000   # + the link's latency
    # A slower stop on the source: the downtime grows by exactly that (nothing else moved).
    slow = dataclasses.replace(costs, stop_vp_ns=costs.stop_vp_ns + 1_000_000)
    slower, s2, _, _ = _move(tmp_path / "y", IO, kind, source_costs=slow)
    assert slower.freeze_ns == record.freeze_ns
    assert slower.downtime_ns == record.downtime_ns + vps * 1_000_000
    # And a slower start on the target.
    late = dataclasses.replace(costs, resume_vp_ns=costs.resume_vp_ns + 2_000_000)
    later, _, _, _ = _move(tmp_path / "z", IO, kind, target_costs=late)
    assert later.downtime_ns == record.downtime_ns + vps * 2_000_000


@pytest.mark.parametrize("kind", ["live", "post-copy"])
@pytest.mark.parametrize("guest", [IO, WRITE_HEAVY], ids=["disk-io", "counter"])
def test_the_devices_come_back_after_the_resume_and_the_summary_says_when(tmp_path, kind, guest):
    record, s, _, back = _move(tmp_path, guest, kind)
    assert s["reconnect_ns"] == record.devices_ns - record.resume_ns > 0
    assert s["reconnect_ns"] >= RECONNECT_POLL_NS
    assert s["devices_away_ns"] == s["downtime_ns"] + s["reconnect_ns"]
    assert back and all(back)
