"""The VM worker: the parent-side object that builds one child partition through hypercalls and
carries out its lifecycle (one per child, as on Hyper-V)."""
from __future__ import annotations

import functools
import struct
import sys
from array import array
from dataclasses import dataclass

from hypervisor import CallCode, Host, HvStatus, Partition, PartitionProperty, _binding, control
from hypervisor.abi import MAP_RWX, PAGE_SIZE, PARTITION_INIT_PAGES, VP_PAGES
from hypervisor.quantities import parse_size
from hypervisor.status import error_for

LEAF_PAGES = 512  # GPA pages one hypervisor leaf table covers
MAP_HEADER = struct.Struct("<QQII")  # HvMapGpaPages: target, first GPA page, flags, padding
MAP_PER_CALL = (PAGE_SIZE - MAP_HEADER.size) // 8  # source pages one input page holds


@dataclass
class VmSpec:
    name: str
    memory: int | str = "64MiB"
    processors: int = 1
    cpu_reserve: int = 0
    cpu_limit: int = 100
    cpu_weight: int = 100


@functools.lru_cache(maxsize=64)
def _map_control(count: int, start: int) -> int:
    return control(CallCode.MAP_GPA_PAGES, rep_count=count, rep_start=start)


@functools.lru_cache(maxsize=16)
def _ramp(n: int) -> tuple[int, int]:
    """(0, 1, ..., n-1) and (1, 1, ..., 1) as n little-endian 64-bit lanes of one integer."""
    ones = int.from_bytes(b"\x01\0\0\0\0\0\0\0" * n, "little")
    return int.from_bytes(array("Q", range(n)).tobytes() if sys.byteorder == "little"
                          else b"".join(i.to_bytes(8, "little") for i in range(n)), "little"), ones


def _run_bytes(run: range) -> bytes:
    """The pages of a run as little-endian 64-bit page numbers, without a Python int per page:
    lanes (0..n-1) plus start in every lane, in one big-integer addition (no lane carries, as
    every page number is below 2**64)."""
    ramp, ones = _ramp(len(run))
    return (ramp + run.start * ones).to_bytes(8 * len(run), "little")


class VmWorker:
    """Builds and tears down one child partition: create, set its CPU controls, deposit the pool
    the hypervisor needs for it, initialize, map its memory from GPA 0, create its VPs."""

    def __init__(self, host: Host, spec: VmSpec):
        self.host = host
        self.spec = spec
        self.memory_bytes = parse_size(spec.memory, f"vm {spec.name!r} memory")
        if self.memory_bytes % PAGE_SIZE or self.memory_bytes == 0:
            raise ValueError(f"vm {spec.name!r} memory: expected a non-zero multiple of 4 KiB, got {spec.memory!r}")
        self.partition: Partition | None = None
        # The pages the VM holds, as runs of consecutive root pages (ranges): a 64 MiB VM is one
        # or a few ranges, not 16,384 ints for the garbage collector to walk.
        self._ram_runs: list[range] = []
        self._pool_runs: list[range] = []

    def pool_pages_needed(self) -> int:
        pages = self.memory_bytes // PAGE_SIZE
        return PARTITION_INIT_PAGES + VP_PAGES * self.spec.processors + -(-pages // LEAF_PAGES)

    def build(self) -> Partition:
        root, spec, memory = self.host.root, self.spec, self.host.root_memory
        pages = self.memory_bytes // PAGE_SIZE
        scratch = -(-pages // MAP_PER_CALL)   # input pages of the batched MapGpaPages, given back after
        needed = pages + self.pool_pages_needed()
        if needed + scratch > memory.available:
            raise MemoryError(f"vm {spec.name!r} needs {needed} pages (and {scratch} for a moment); the root has "
                              f"{memory.available} free")
        child = root.create_partition()
        self.partition = child
        root.set_partition_property(child, PartitionProperty.CPU_RESERVE, spec.cpu_reserve)
        root.set_partition_property(child, PartitionProperty.CPU_CAP, spec.cpu_limit)
        root.set_partition_property(child, PartitionProperty.CPU_WEIGHT, spec.cpu_weight)
        self._pool_runs = memory.allocate_runs(self.pool_pages_needed())
        root.deposit_memory(child, [page for run in self._pool_runs for page in run])
        root.initialize_partition(child)
        self._ram_runs = memory.allocate_runs(pages)
        self._map_ram(child)
        for i in range(spec.processors):
            root.create_vp(child, i)
        return child

    def _map_ram(self, child: Partition) -> None:
        """Map the VM's memory at GPA 0 with MapGpaPages calls issued as one batch: the root
        writes every call's input block (header and source pages) into scratch pages of its own
        at once, issues the calls in one crossing, then issues in one more crossing the
        continuations of the calls the hypervisor returned early (a rep call completes at most
        the host's reps per call; each continuation resumes where the last one stopped, as the
        TLFS says), and so on until every call is complete."""
        root = self.host.root
        total = sum(len(run) for run in self._ram_runs)
        calls = [(first, min(MAP_PER_CALL, total - first)) for first in range(0, total, MAP_PER_CALL)]
        image = bytearray(len(calls) * PAGE_SIZE)
        # Each call's source pages are the next `count` pages of the runs, written a piece of a
        # run at a time (small pieces: no transient copy of the whole list).
        runs, run, taken = iter(self._ram_runs), range(0), 0
        for k, (first, count) in enumerate(calls):
            at = k * PAGE_SIZE
            MAP_HEADER.pack_into(image, at, child.id, first, MAP_RWX, 0)
            at += MAP_HEADER.size
            while count:
                if taken == len(run):
                    run, taken = next(runs), 0
                piece = run[taken:taken + count]
                image[at:at + 8 * len(piece)] = _run_bytes(piece)
                at += 8 * len(piece)
                taken += len(piece)
                count -= len(piece)
        scratch = self.host.root_memory.allocate_runs(len(calls))
        gpas = [page * PAGE_SIZE for run in scratch for page in run]
        try:
            self._write_pages(scratch, image)
            vp = root.vp(0)
            started = [0] * len(calls)
            while True:
                todo = [k for k, (_, count) in enumerate(calls) if started[k] < count]
                if not todo:
                    break
                batch = _binding.HypercallBatch(
                    [_map_control(calls[k][1], started[k]) for k in todo],
                    [gpas[k] for k in todo], [vp.output_gpa] * len(todo))
                batch.issue(self.host._h, root.id, vp.index)
                for i, k in enumerate(todo):
                    result = batch.result(i)
                    status, done = result & 0xFFFF, (result >> 32) & 0xFFF
                    if status != HvStatus.SUCCESS:
                        raise error_for(status, "MapGpaPages", f"after {calls[k][0] + done} of {total} pages")
                    if done <= started[k]:
                        raise error_for(int(HvStatus.OPERATION_FAILED), "MapGpaPages", "no progress")
                    started[k] = done
        finally:
            # The scratch pages go back as the root found them: zero.
            self._write_pages(scratch, bytes(len(image)))
            self.host.root_memory.release_runs(scratch)

    def _write_pages(self, runs: list[range], data: bytes | bytearray) -> None:
        view, at = memoryview(data), 0
        for run in runs:
            n = len(run) * PAGE_SIZE
            if not _binding.hv_partition_write(self.host._h, self.host.root.id, run.start * PAGE_SIZE, view[at:at + n]):
                raise MemoryError(f"the root cannot write its pages {run.start}..{run.stop - 1}")
            at += n

    def destroy(self) -> None:
        """Finalize and delete the partition; its memory returns to the root."""
        if self.partition is None:
            return
        root = self.host.root
        root.finalize_partition(self.partition)
        root.delete_partition(self.partition)
        self.host.root_memory.release_runs(self._ram_runs + self._pool_runs)
        self.partition, self._ram_runs, self._pool_runs = None, [], []
