"""The core's structures for hosts of a thousand VMs: partitions found by id in O(1) (a stale id
stays invalid through any churn of creates and deletes), the run queue's heaps (every pick agrees
with a scan of all runnable VPs), and hosts with more LPs than a partition has VPs."""
from __future__ import annotations

import random

import pytest

from hypervisor import Host, HvStatus, PartitionProperty, _binding
from hypervisor.abi import MAX_VPS
from hypervisor.status import HvError
from partitions.worker import VmSpec, VmWorker

MAX_PARTITIONS = 2048  # the core's slots, the root's included


def weight_of(root, pid: int) -> int:
    return root.get_partition_property(pid, PartitionProperty.CPU_WEIGHT)


def mark(pid: int) -> int:
    """A weight that names the partition, so a lookup that finds the wrong partition shows."""
    return pid % 9973 + 1


def assert_stale(root, pid: int) -> None:
    with pytest.raises(HvError) as err:
        root.get_partition_property(pid, PartitionProperty.CPU_WEIGHT)
    assert err.value.status == HvStatus.INVALID_PARTITION_ID


def test_a_deleted_partitions_id_stays_invalid_and_is_never_handed_out_again():
    host = Host(logical_processors=1, memory="16MiB", seed=1)
    root = host.root
    a, b, c = (root.create_partition() for _ in range(3))
    assert (a.id, b.id, c.id) == (2, 3, 4)
    root.delete_partition(b)
    assert_stale(root, b.id)
    assert host.introspect.partition_info(b.id) is None
    d = root.create_partition()   # takes b's slot, not its id
    assert d.id == 5
    assert_stale(root, b.id)
    for p in (a, c, d):
        root.set_partition_property(p, PartitionProperty.CPU_WEIGHT, mark(p.id))
        assert weight_of(root, p.id) == mark(p.id)
    assert sorted(host.introspect.partition_ids()) == [1, 2, 4, 5]   # listed by slot: d is in b's
    for bad in (0, 6, 2**32 + 2, 2**63 + 2, 2**64 - 2):
        assert_stale(root, bad)


def test_partition_lookup_survives_churn_to_every_slot_and_back():
    """Fill every slot, then delete and create at random: each live id finds its own partition
    (its weight says which), each deleted id finds none, creation fails only when the slots are
    full. The id table is at most half full; this drives it there and through many deletions."""
    host = Host(logical_processors=1, memory="16MiB", seed=1)
    root = host.root
    rng = random.Random(12)
    live: list[int] = []
    dead: list[int] = []

    def create() -> None:
        p = root.create_partition()
        root.set_partition_property(p, PartitionProperty.CPU_WEIGHT, mark(p.id))
        live.append(p.id)

    def check() -> None:
        assert sorted(host.introspect.partition_ids()) == [root.id] + sorted(live)
        for pid in rng.sample(live, min(len(live), 200)):
            assert weight_of(root, pid) == mark(pid)
        for pid in rng.sample(dead, min(len(dead), 200)):
            assert_stale(root, pid)

    while len(live) < MAX_PARTITIONS - 1:
        create()
    with pytest.raises(HvError) as err:
        root.create_partition()
    assert err.value.status == HvStatus.INSUFFICIENT_MEMORY
    check()
    for step in range(3000):
        if live and (len(live) == MAX_PARTITIONS - 1 or rng.random() < 0.5):
            pid = live.pop(rng.randrange(len(live)))
            root.delete_partition(pid)
            dead.append(pid)
        else:
            create()
        if step % 500 == 0:
            check()
    while live:
        pid = live.pop()
        root.delete_partition(pid)
        dead.append(pid)
    check()
    assert len(set(dead)) == len(dead)   # no id came back


def random_host(seed: int, scheduler: str) -> tuple[Host, list]:
    rng = random.Random(seed)
    lps = rng.choice([1, 2, 4, 8])
    host = Host(logical_processors=lps, smt=2 if scheduler == "core" and lps > 1 else 1, memory="256MiB",
                seed=seed, scheduler=scheduler)
    _binding.lib.hv_sched_selfcheck(host._h, 1, _binding.ffi.new("uint64_t *"))
    parts = []
    for i in range(rng.randint(2, 24)):
        w = VmWorker(host, VmSpec(f"v{i}", memory="1MiB", processors=rng.randint(1, 4),
                                  cpu_weight=rng.choice([1, 50, 100, 100, 300, 10000]),
                                  cpu_reserve=rng.choice([0, 0, 0, 5, 10]), cpu_limit=rng.choice([100, 100, 30, 5])))
        p = w.build()
        for vp in p.vps:
            vp.run_builtin(rng.choice(["burn", "burn", "tick", "idle"]), work=f"{rng.randint(1, 3000)}us")
        try:
            host.root.resume_partition(p)
        except HvError:
            pass   # a reserve admission refused: it stays suspended
        parts.append(p)
    return host, parts


@pytest.mark.parametrize("scheduler", ["classic", "core"])
def test_every_pick_agrees_with_a_scan_of_the_whole_run_queue(scheduler):
    """With the core's check on, each pick of the heaps is compared with the old linear scan
    over every runnable VP, through windows, cap/reserve/weight changes, suspends and resumes
    and tick guests waking."""
    checked = _binding.ffi.new("uint64_t *")
    total = 0
    for seed in range(6):
        rng = random.Random(1000 + seed)
        host, parts = random_host(seed, scheduler)
        for _ in range(25):
            host.run_for(f"{rng.randint(1, 80)}ms")
            p = rng.choice(parts)
            try:
                match rng.randint(0, 5):
                    case 0: host.root.set_partition_property(p, PartitionProperty.CPU_CAP, rng.randint(1, 100))
                    case 1: host.root.set_partition_property(p, PartitionProperty.CPU_WEIGHT, rng.randint(1, 10000))
                    case 2: host.root.set_partition_property(p, PartitionProperty.CPU_RESERVE, rng.choice([0, 5, 20]))
                    case 3: host.root.suspend_partition(p)
                    case _: host.root.resume_partition(p)
            except HvError:
                pass
        mismatches = _binding.lib.hv_sched_selfcheck(host._h, 0, checked)
        assert mismatches == 0, f"seed {seed}: {mismatches} of {checked[0]} picks differ from the scan"
        total += checked[0]
    assert total > 1000   # the check did look at picks


def test_a_host_with_more_lps_than_a_partition_has_vps():
    """The root has a VP per LP up to the core's VPs per partition; more LPs run children."""
    host = Host(logical_processors=128, smt=2, memory="256MiB", seed=1)
    assert len(host.root.vps) == MAX_VPS
    vms = []
    for i in range(3):
        w = VmWorker(host, VmSpec(f"big{i}", memory="1MiB", processors=MAX_VPS))
        p = w.build()
        for vp in p.vps:
            vp.run_builtin("burn")
        host.root.resume_partition(p)
        vms.append(p)
    host.run("1s")
    # 192 burning VPs on 128 LPs: no LP idles, and each VM gets about its 2/3 of an LP per VP.
    assert all(host.introspect.lp_busy_ns(lp) == 10**9 for lp in range(128))
    for p in vms:
        assert host.introspect.run_time_ns(p) == pytest.approx(MAX_VPS * 1e9 * 2 / 3, rel=0.05)
    with pytest.raises(ValueError, match=r"root_vps: expected 1\.\.64"):
        Host(logical_processors=128, memory="256MiB", root_vps=65)


def test_a_managed_host_with_more_lps_than_the_root_has_vps(tmp_path):
    """A configuration may name up to 1,024 LPs; the host builds with a root of 64 VPs, its VMs
    (with every integration service) run, and their heartbeats answer the parent."""
    from partitions.config import ConfigError, from_dict
    from partitions.management import ManagedHost

    config = {"host": {"logical_processors": 128, "smt": 2, "memory": "1GiB"},
              "vm": [{"name": f"vm{i}", "processors": 64 if i == 0 else 2, "memory": "16MiB",
                      "workload": {"kind": "cpu-burn", "duty": 0.5}} for i in range(3)]}
    managed = ManagedHost(from_dict(config, base_dir=tmp_path), workdir=tmp_path)
    try:
        assert len(managed.host.root.vps) == MAX_VPS
        managed.start()
        managed.run("2s")
        rows = managed.get_vm()
        assert [r["State"] for r in rows] == ["Running"] * 3
        assert [r["Status"] for r in rows] == ["Operating normally"] * 3
        assert all(r["CPUUsage(%)"] > 0 for r in rows)
    finally:
        managed.close()
    config["host"]["logical_processors"] = 1025
    with pytest.raises(ConfigError, match=r"host.logical_processors: expected .*1024"):
        from_dict(config, base_dir=tmp_path)
