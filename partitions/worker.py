"""The VM worker: the parent-side object that builds one child partition through hypercalls and
carries out its lifecycle (one per child, as on Hyper-V)."""
from __future__ import annotations

from dataclasses import dataclass

from hypervisor import Host, Partition, PartitionProperty
from hypervisor.abi import MAP_RWX, PAGE_SIZE, PARTITION_INIT_PAGES, VP_PAGES
from hypervisor.quantities import parse_size

LEAF_PAGES = 512  # GPA pages one hypervisor leaf table covers


@dataclass
class VmSpec:
    name: str
    memory: int | str = "64MiB"
    processors: int = 1
    cpu_reserve: int = 0
    cpu_limit: int = 100
    cpu_weight: int = 100


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
        self._ram_pages: list[int] = []
        self._pool_pages: list[int] = []

    def pool_pages_needed(self) -> int:
        pages = self.memory_bytes // PAGE_SIZE
        return PARTITION_INIT_PAGES + VP_PAGES * self.spec.processors + -(-pages // LEAF_PAGES)

    def build(self) -> Partition:
        root, spec = self.host.root, self.spec
        pages = self.memory_bytes // PAGE_SIZE
        needed = pages + self.pool_pages_needed()
        if needed > self.host.root_memory.available:
            raise MemoryError(f"vm {spec.name!r} needs {needed} pages; the root has "
                              f"{self.host.root_memory.available} free")
        child = root.create_partition()
        self.partition = child
        root.set_partition_property(child, PartitionProperty.CPU_RESERVE, spec.cpu_reserve)
        root.set_partition_property(child, PartitionProperty.CPU_CAP, spec.cpu_limit)
        root.set_partition_property(child, PartitionProperty.CPU_WEIGHT, spec.cpu_weight)
        self._pool_pages = self.host.root_memory.allocate(self.pool_pages_needed())
        root.deposit_memory(child, self._pool_pages)
        root.initialize_partition(child)
        self._ram_pages = self.host.root_memory.allocate(pages)
        root.map_gpa_pages(child, 0, self._ram_pages, MAP_RWX)
        for i in range(spec.processors):
            root.create_vp(child, i)
        return child

    def destroy(self) -> None:
        """Finalize and delete the partition; its memory returns to the root."""
        if self.partition is None:
            return
        root = self.host.root
        root.finalize_partition(self.partition)
        root.delete_partition(self.partition)
        self.host.root_memory.release(self._ram_pages + self._pool_pages)
        self.partition, self._ram_pages, self._pool_pages = None, [], []
