"""Memory: resident set size per idle VM with every integration service, a disk and a NIC, and
of a large simulated host, each measured in a fresh process (so that nothing an earlier benchmark
allocated is counted or reused).

Per VM: a host of N idle one-VP VMs, built and booted until every device of every VM is up (each
integration service negotiated, the disk and NIC ready), then run for a second, less the same host
with no VMs, over N. RSS counts a page once per mapping, and the parent maps a guest's ring pages
a second time (its views of the rings); PSS, also given, counts each page once. Host: a 64 GiB host at boot, then one 1 GiB partition built, then every
page of it written: simulated memory costs real memory only once touched.
"""
from __future__ import annotations

import multiprocessing
import tempfile
from pathlib import Path

from bench.timing import Figure, Goal, scratch_dir

MS = 1_000_000
MIB = 1024 * 1024
VMS = {"tiny": 2, "default": 64, "long": 256}
GOAL = Goal("<=", 1.0, "value", "<= 1 MiB per idle VM")


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def _pss_mib() -> float | None:
    """This process's proportional set size (each page once), None where the kernel lacks it."""
    try:
        with open("/proc/self/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _booted(managed, settle_ms: int = 1000) -> None:
    """Run until every device of every VM is up (100 ms steps, 10 s at most), then `settle_ms`
    more: the VM's steady state, not its boot."""
    from bench.host import devices_up
    up, total = devices_up(managed)
    while up < total and managed.host.now < 10_000 * MS:
        managed.run(managed.host.now + 100 * MS)
        up, total = devices_up(managed)
    if up < total:
        raise RuntimeError(f"{total - up} of {total} devices not up after 10 s")
    managed.run(managed.host.now + settle_ms * MS)


def _idle_vms(n: int, root: str) -> tuple[float, float, float | None, float | None]:
    """(RSS MiB of the host with no VMs, RSS MiB with n booted idle VMs, the same two as PSS), in
    this process."""
    from bench.host import many
    from partitions.config import from_dict
    from partitions.management import ManagedHost
    with tempfile.TemporaryDirectory(dir=root, prefix="hvsim-bench-") as tmp:
        tmp = Path(tmp)
        cfg = many(n, tmp, busy=False)
        empty = ManagedHost(from_dict({**cfg, "vm": []}, base_dir=tmp), workdir=tmp)
        empty.start()
        _booted(empty)
        base, base_pss = _rss_mib(), _pss_mib()
        empty.close()
        del empty
        managed = ManagedHost(from_dict(cfg, base_dir=tmp), workdir=tmp)
        managed.start()
        _booted(managed)
        full, full_pss = _rss_mib(), _pss_mib()
        managed.close()
        return base, full, base_pss, full_pss


def _big_host(gib: int) -> tuple[float, float, float, float]:
    """RSS MiB: before, after booting a 64 GiB host, after building a `gib` GiB partition, after
    writing every page of it."""
    from hypervisor import Host
    from hypervisor.abi import PAGE_SIZE
    from partitions.worker import VmSpec, VmWorker
    before = _rss_mib()
    big = Host(logical_processors=64, memory="64GiB", seed=1)
    booted = _rss_mib()
    part = VmWorker(big, VmSpec("touched", memory=f"{gib}GiB")).build()
    built = _rss_mib()
    page = b"\xa5" * 8
    for gpa in range(0, gib << 30, PAGE_SIZE):
        part.write(gpa, page)
    return before, booted, built, _rss_mib()


def _fresh(fn, *args):
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(fn, args)


def run(size: str = "default") -> list[Figure]:
    root, where = scratch_dir()
    n = VMS[size]
    base, full, base_pss, full_pss = _fresh(_idle_vms, n, root)
    per_vm = (full - base) / n
    gib = 1 if size != "tiny" else 0
    figures = [
        Figure(f"RSS per idle VM ({n} VMs, ICs + disk + NIC, devices up)", per_vm, "MiB", "host with no VMs",
               full / base, GOAL, note=f"host with no VMs: {base:.0f} MiB, with {n}: {full:.0f} MiB; disks in {where}"),
    ]
    if base_pss is not None and full_pss is not None:
        figures.append(Figure(f"PSS per idle VM ({n} VMs, each page counted once)", (full_pss - base_pss) / n, "MiB",
                              "host with no VMs", full_pss / base_pss,
                              note=f"host with no VMs: {base_pss:.0f} MiB, with {n}: {full_pss:.0f} MiB"))
    if gib:
        before, booted, built, touched = _fresh(_big_host, gib)
        figures += [
            Figure("RSS: 64 GiB host at boot", booted - before, "MiB"),
            Figure("RSS: + a 1 GiB partition built (mapped, untouched)", built - before, "MiB"),
            Figure("RSS: + every page of that 1 GiB written", touched - before, "MiB", "1 GiB written",
                   (touched - built) / 1024),
        ]
    return figures
