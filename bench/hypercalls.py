"""Hypercall throughput and the memory cost of a large simulated host.

Raw hypercalls per wall-clock second (GetPartitionId from a root VP, a memory call that reads
no input and writes 8 bytes of output) issued from Python one at a time through the typed entry
point, and issued as one batch from C, each as a ratio to an empty cffi call measured in the same
run. Then the resident memory of a 64 GiB simulated host at boot and after one 1 GiB partition
has had every page written.
"""
from __future__ import annotations

import resource

from bench.timing import rate
from hypervisor import CallCode, Host, control
from hypervisor import _binding
from hypervisor.abi import PAGE_SIZE
from partitions.worker import VmSpec, VmWorker

MIN_SECONDS = 0.3


def _rate(fn, per_call: int = 1) -> float:
    return rate(fn, per_call, min_seconds=MIN_SECONDS)


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run() -> list[dict]:
    host = Host(logical_processors=4, memory="1GiB", seed=1)
    vp = host.root.vp(0)
    ctl = control(CallCode.GET_PARTITION_ID)
    nop = _rate(_binding.hv_nop, 1)
    one = _rate(lambda: vp.hypercall(ctl), 1)
    raw = _rate(lambda: _binding.hv_hypercall(host._h, host.root.id, 0, ctl, vp.input_gpa, vp.output_gpa), 1)
    n = 10_000
    batch = _binding.HypercallBatch([ctl] * n, [vp.input_gpa] * n, [vp.output_gpa] * n)
    batched = _rate(lambda: batch.issue(host._h, host.root.id, 0), n)
    rows = [
        {"case": "empty cffi call (baseline)", "per_second": nop, "vs_empty_cffi_call": 1.0},
        {"case": "hypercall from Python, one at a time (vp.hypercall)", "per_second": one,
         "vs_empty_cffi_call": one / nop},
        {"case": "hypercall from Python, raw binding call", "per_second": raw, "vs_empty_cffi_call": raw / nop},
        {"case": f"hypercalls batched in C ({n} per crossing)", "per_second": batched,
         "vs_empty_cffi_call": batched / nop},
    ]

    before = _rss_mib()
    big = Host(logical_processors=64, memory="64GiB", seed=1)
    booted = _rss_mib()
    worker = VmWorker(big, VmSpec("touched", memory="1GiB"))
    part = worker.build()
    built = _rss_mib()
    page = b"\xa5" * 8
    for gpa in range(0, 1 << 30, PAGE_SIZE):
        part.write(gpa, page)
    touched = _rss_mib()
    rows += [
        {"case": "RSS: 64 GiB host at boot", "MiB": booted - before},
        {"case": "RSS: + one 1 GiB partition built (memory mapped, untouched)", "MiB": built - before},
        {"case": "RSS: + every page of that 1 GiB written", "MiB": touched - before,
         "vs_touched_bytes": (touched - before) / 1024},
    ]
    del big
    return rows
