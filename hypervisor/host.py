"""The simulated host: boots the core with a memory size and logical processors, and gives the
root partition, the partitions it creates and the introspection API."""
from __future__ import annotations

from hypervisor import _binding
from hypervisor.abi import PAGE_SIZE
from hypervisor.introspect import Introspection
from hypervisor.partition import Partition, RootMemory, VirtualProcessor
from hypervisor.quantities import parse_size

#: Rep elements one hypercall invocation completes before it returns for continuation. The TLFS
#: asks the hypervisor to return within about 50 us; at the cost model's ~0.2 us per element
#: that is 256 elements.
DEFAULT_REPS_PER_CALL = 256


class Host:
    """A simulated Hyper-V host.

    >>> host = Host(logical_processors=4, memory="64GiB", seed=1)
    >>> host.root.id
    1
    """

    def __init__(self, logical_processors: int = 4, memory: int | str = "4GiB", seed: int = 0, *,
                 smt: int = 1, root_vps: int | None = None, reps_per_call: int = DEFAULT_REPS_PER_CALL):
        memory_bytes = parse_size(memory, "memory")
        if memory_bytes % PAGE_SIZE or memory_bytes < 64 * PAGE_SIZE:
            raise ValueError(f"memory: expected a multiple of 4 KiB of at least 256 KiB, got {memory!r}")
        if not isinstance(logical_processors, int) or not 1 <= logical_processors <= 1024:
            raise ValueError(f"logical_processors: expected 1..1024, got {logical_processors!r}")
        if not isinstance(smt, int) or smt < 1 or logical_processors % smt:
            raise ValueError(f"smt: expected a divisor of logical_processors ({logical_processors}), got {smt!r}")
        root_vps = logical_processors if root_vps is None else root_vps
        if not 1 <= root_vps <= 64:
            raise ValueError(f"root_vps: expected 1..64, got {root_vps!r}")
        if not 1 <= reps_per_call <= 4095:
            raise ValueError(f"reps_per_call: expected 1..4095, got {reps_per_call!r}")
        self.logical_processors = logical_processors
        self.smt = smt
        self.memory_bytes = memory_bytes
        self.seed = seed
        self._h = _binding.hv_host_create(memory_bytes, logical_processors, smt, seed, root_vps, reps_per_call)
        self._partitions: dict[int, Partition] = {}
        self.introspect = Introspection(self)
        root_id = self.introspect.partition_ids()[0]
        self.root = self._partition(root_id)
        # The root's VPs get hypercall pages right after the hypervisor's reserve; its memory
        # manager hands out the pages after those.
        first = self.introspect.totals()["hv_pages"]
        for i in range(root_vps):
            self.root._vps[i] = VirtualProcessor(self.root, i, (first + 2 * i) * PAGE_SIZE,
                                                 (first + 2 * i + 1) * PAGE_SIZE)
        self.root_memory = RootMemory(first + 2 * root_vps, memory_bytes // PAGE_SIZE)

    def __repr__(self) -> str:
        return (f"<Host {self.logical_processors} LPs, {self.memory_bytes // 2**20} MiB, "
                f"{len(self.introspect.partition_ids())} partitions>")

    @property
    def pages(self) -> int:
        return self.memory_bytes // PAGE_SIZE

    def partition(self, partition_id: int) -> Partition:
        """The Partition object for a live partition id."""
        if partition_id not in self.introspect.partition_ids():
            raise LookupError(f"no partition {partition_id} on this host")
        return self._partition(partition_id)

    def partitions(self) -> list[Partition]:
        return [self._partition(pid) for pid in self.introspect.partition_ids()]

    def _partition(self, partition_id: int) -> Partition:
        if partition_id not in self._partitions:
            self._partitions[partition_id] = Partition(self, partition_id)
        return self._partitions[partition_id]

    def _forget(self, partition_id: int) -> None:
        self._partitions.pop(partition_id, None)
