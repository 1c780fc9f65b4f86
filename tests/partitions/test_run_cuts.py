"""A host's trace does not depend on where its runs are cut: `run(t1); run(t2)` is `run(t2)`.

ManagedHost.run advances in pieces (`step`), a datacenter advances each host in windows of its
smallest link latency, and a save or a pause may come at any instant; each piece's end is only
where its caller looks. These tests run the same host whole and in pieces, cut at random or at
fixed steps, and compare what the core folded into its trace digest (every event and every
dispatch), its state digest and every partition's CPU time.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from partitions.config import default_config
from partitions.config_schema import (
    AtConfig, Config, CpuBurnWorkload, CpuConfig, DiskConfig, DiskIoWorkload, HostConfig, NetRequestResponseWorkload,
    NicConfig, SwitchConfig, VmConfig, generated_mac,
)
from partitions.management import ManagedHost

MS, US = 1_000_000, 1_000
MIB = 1024**2


def observed(config: Config, cuts, until: int, *, step: int | None = None) -> tuple:
    """Run `config` to `until`, stopping first at each of `cuts` (ManagedHost.run with `step`,
    default: no step of its own), and return what a run shows."""
    managed = ManagedHost(config, seed=7, workdir=".")
    try:
        for t in [*cuts, until]:
            managed.run(t, step=step or until)
        intro = managed.host.introspect
        cpu = {pid: intro.run_time_ns(pid) for pid in intro.partition_ids()}
        return (managed.host.now, managed.host.trace_digest().hex(), intro.digest(memory=False).hex(), cpu,
                {name: sw.stats for name, sw in managed.switches.items()})
    finally:
        managed.close()


cpu_controls = st.builds(CpuConfig, reserve=st.sampled_from([0, 0, 10, 25]), limit=st.sampled_from([100, 100, 30, 50, 75]),
                         weight=st.sampled_from([100, 50, 200, 300, 7]))


@st.composite
def hosts(draw) -> Config:
    """Two or three VMs on one to three LPs: a requester that also burns CPU, a server with an
    optional disk, an optional capped burner; CPU controls on each; pauses and a checkpoint."""
    lan = dict(switch="lan", vlan=draw(st.sampled_from([0, 10])))
    lps = draw(st.integers(1, 3))
    scheduler = draw(st.sampled_from(["classic", "core"]))
    smt = 1 if lps == 3 else draw(st.sampled_from([1, lps]))
    client = VmConfig(
        "client", processors=2, memory=64 * MIB, cpu=draw(cpu_controls),
        nics=(NicConfig(mac=generated_mac("client", 0), ip="10.0.0.2/24", **lan),),
        workloads=(CpuBurnWorkload(duty=draw(st.sampled_from([0.2, 0.6, 1.0])),
                                   period=draw(st.integers(1, 12)) * MS),
                   NetRequestResponseWorkload(peer="server", port=5000, size=draw(st.sampled_from([64, 700])),
                                              interval=draw(st.integers(300, 6000)) * US)))
    disk = draw(st.booleans())
    server = VmConfig(
        "server", processors=draw(st.integers(1, 2)), memory=64 * MIB, cpu=draw(cpu_controls),
        disks=(DiskConfig(Path("server.vhd").absolute(), 16 * MIB, "dynamic"),) if disk else (),
        nics=(NicConfig(mac=generated_mac("server", 0), ip="10.0.0.3/24", **lan),),
        workloads=(DiskIoWorkload(queue_depth=draw(st.integers(1, 4))),) if disk else ())
    vms = [client, server]
    if draw(st.booleans()):
        vms.append(VmConfig("burner", processors=2, memory=32 * MIB, cpu=draw(cpu_controls),
                            workloads=(CpuBurnWorkload(duty=1.0),)))
    timeline = []
    if draw(st.booleans()):
        who = draw(st.sampled_from([vm.name for vm in vms]))
        at = draw(st.integers(20, 100)) * MS
        timeline += [AtConfig(at, "pause", who), AtConfig(at + draw(st.integers(1, 40)) * MS, "resume", who)]
    if disk and draw(st.booleans()):   # (a checkpoint needs a disk to fork)
        timeline.append(AtConfig(draw(st.integers(20, 140)) * MS, "checkpoint", "server", "c1"))
    # Reserves are admitted per VP against the LPs: keep the draw within what the host admits.
    reserved = sum(vm.cpu.reserve * vm.processors for vm in vms)
    if reserved > 100 * lps:
        vms = [dataclasses.replace(vm, cpu=CpuConfig(0, vm.cpu.limit, vm.cpu.weight)) for vm in vms]
    return Config(HostConfig(logical_processors=lps, smt=smt, memory=1024 * MIB, scheduler=scheduler),
                  tuple(vms), (SwitchConfig("lan"),), tuple(timeline))


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(config=hosts(), cuts=st.lists(st.integers(1, 150 * MS - 1), min_size=1, max_size=8, unique=True),
       step=st.sampled_from([None, 7 * MS, 1_234_567, 50 * US]))
def test_a_host_cut_anywhere_runs_as_it_does_whole(config, cuts, step):
    until = 150 * MS
    whole = observed(config, [], until)
    assert observed(config, sorted(cuts), until, step=step) == whole


def test_the_default_host_gives_one_trace_whatever_its_step():
    """The default host (CPU controls, network traffic, disk I/O) in ManagedHost.run's 100 ms
    pieces, in a datacenter's 7 ms and 50 us windows and in steps that divide nothing."""
    config = default_config(".")
    until = 400 * MS
    whole = observed(config, [], until)
    for step in (100 * MS, 7 * MS, 50 * US, 999_983, 3_333_333):
        assert observed(config, [], until, step=step) == whole, f"step {step} ns"
    # A single cut where a capped VP is in the middle of its slice (the first run that told).
    assert observed(config, [40 * MS], until) == whole
