"""64 KiB sequential reads through storvsc -> VMBus -> storvsp -> VHD, against raw file I/O of
the same pattern on the same file, measured in the same run.

A managed host runs one VM (1 VP, all integration services) whose disk-io workload keeps four
64 KiB sequential reads in flight on a fixed VHD; after boot (the disk found, the first reads
done) the guest's bytes read per wall second are measured over a stretch of simulated time. The
baseline reads the same VHD file from start to end in 64 KiB os.pread calls (one at a time:
the simulator is one thread too). Both files live on a tmpfs when the machine has one (see the
note), so neither figure is the machine's disk. The guest's run is made twice, once with storvsp's
C data plane (native/storvsp.c, the default) and once with its Python path (the reference), and
each is given against the raw baseline.
"""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from bench.timing import Figure, Goal, rate, scratch_dir
from drivers.storage.vsp import StorVsp
from partitions.config import from_dict
from partitions.management import ManagedHost

BLOCK = 64 * 1024
MS = 1_000_000
# (disk MiB, boot ms, measured ms of simulated time)
PLAN = {"tiny": (4, 20, 5), "default": (64, 100, 200), "long": (64, 100, 1000)}
GOAL = Goal(">=", 0.5, "ratio", ">= 0.5x raw file I/O")


def _raw_rate(path: Path, disk_bytes: int, min_seconds: float) -> float:
    """Bytes per second of sequential 64 KiB preads over the disk's data (wrapping around)."""
    fd = os.open(path, os.O_RDONLY)
    blocks = disk_bytes // BLOCK
    pos = [0]

    def one():
        os.pread(fd, BLOCK, pos[0] * BLOCK)
        pos[0] = (pos[0] + 1) % blocks

    try:
        return rate(one, BLOCK, min_seconds=min_seconds)
    finally:
        os.close(fd)


def _guest_rate(tmp: Path, disk: Path, disk_mib: int, boot_ms: int, span_ms: int) -> tuple[float, float, float]:
    """(bytes per wall second, bytes moved, wall seconds) of the guest's reads after boot."""
    cfg = {"host": {"logical_processors": 2, "memory": "1GiB"},
           "vm": [{"name": "io", "processors": 1, "memory": "64MiB",
                   "disks": [{"path": str(disk), "size": f"{disk_mib}MiB", "type": "fixed"}],
                   "workload": {"kind": "disk-io", "pattern": "sequential", "block_size": BLOCK,
                                "read_fraction": 1.0, "queue_depth": 4}}]}
    managed = ManagedHost(from_dict(cfg, base_dir=tmp), workdir=tmp)
    try:
        managed.start()
        vm = managed.vms["io"]
        managed.run(boot_ms * MS)
        before = vm.measure()["disk_read_bytes"]
        if not before:
            raise RuntimeError(f"the guest read nothing from its disk in {boot_ms} ms of boot")
        start = time.perf_counter()
        managed.run((boot_ms + span_ms) * MS)
        seconds = time.perf_counter() - start
        moved = vm.measure()["disk_read_bytes"] - before
    finally:
        managed.close()
    return moved / seconds, moved, seconds


def run(size: str = "default") -> list[Figure]:
    disk_mib, boot_ms, span_ms = PLAN[size]
    root, where = scratch_dir()
    with tempfile.TemporaryDirectory(dir=root, prefix="hvsim-bench-") as tmp:
        tmp = Path(tmp)
        rates = {}
        for plane in ("python", "c"):
            disk = tmp / plane / "io.vhd"
            disk.parent.mkdir()
            StorVsp.DATA_PLANE, default = plane, StorVsp.DATA_PLANE
            try:
                rates[plane] = _guest_rate(disk.parent, disk, disk_mib, boot_ms, span_ms)
            finally:
                StorVsp.DATA_PLANE = default
        guest, moved, seconds = rates["c"]
        python = rates["python"][0]
        raw = _raw_rate(disk, disk_mib * 1024 * 1024, min_seconds=min(0.2, seconds / 4))
    baseline = "raw file I/O: 64 KiB sequential pread, same file"
    note = f"disk files in {where}; reads only (the guest's queue depth 4, the baseline's 1)"
    return [
        Figure(baseline, raw / 1e6, "MB/s", baseline, 1.0),
        Figure("guest: 64 KiB sequential reads, storvsc -> storvsp (C data plane) -> VHD", guest / 1e6, "MB/s",
               baseline, guest / raw, GOAL, note=note,
               extra={"simulated_MB_per_s": moved / (span_ms / 1000) / 1e6, "over_python_path": guest / python}),
        Figure("guest: the same through storvsp's Python path (the reference)", python / 1e6, "MB/s", baseline,
               python / raw, note=note),
    ]
