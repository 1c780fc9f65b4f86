"""The simulated host: boots the core with a memory size and logical processors, and gives the
root partition, the partitions it creates and the introspection API."""
from __future__ import annotations

from typing import Callable

from hypervisor import _binding
from hypervisor.abi import MAX_VPS, PAGE_SIZE
from hypervisor.dirty import DirtyLog
from hypervisor.grants import Grants
from hypervisor.guest import GuestError, GuestRunner
from hypervisor.introspect import Introspection
from hypervisor.partition import Partition, RootMemory, VirtualProcessor
from hypervisor.quantities import parse_duration, parse_size

#: Scheduling policies: Hyper-V classic (fair share, any VP on any LP) and Hyper-V core (SMT
#: siblings never run VPs of two different partitions at once).
SCHEDULERS = {"classic": 0, "core": 1}

#: Simulated costs and periods a host can set (durations); unset ones take the cost model's
#: defaults (../shared/reference/cost-model.md §1).
COSTS = {"hypercall": "hypercall_ns", "parent_exit": "parent_exit_ns", "message": "message_ns",
         "event": "event_ns", "interrupt": "interrupt_ns", "time_slice": "time_slice_ns",
         "window": "window_ns", "stimer_min_period": "stimer_min_period_ns"}

#: What children's grants (GPADLs) and own views may cost the process (host settings): pages one
#: child may have granted at once, and memory mappings (runs of contiguous pages, of which a
#: process has vm.max_map_count) per partition and for all partitions together. Defaults in
#: native/grant.c: 327,680 pages (1,280 MiB), 1,024 and 32,768 mappings.
GRANT_LIMITS = {"pages_per_child": "grant_pages_per_child", "mappings_per_child": "grant_mappings_per_child",
                "mappings_per_host": "grant_mappings_per_host"}

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
                 smt: int = 1, root_vps: int | None = None, reps_per_call: int = DEFAULT_REPS_PER_CALL,
                 scheduler: str = "classic", costs: dict[str, int | str] | None = None,
                 grant_limits: dict[str, int] | None = None):
        memory_bytes = parse_size(memory, "memory")
        if memory_bytes % PAGE_SIZE or memory_bytes < 64 * PAGE_SIZE:
            raise ValueError(f"memory: expected a multiple of 4 KiB of at least 256 KiB, got {memory!r}")
        if not isinstance(logical_processors, int) or not 1 <= logical_processors <= 1024:
            raise ValueError(f"logical_processors: expected 1..1024, got {logical_processors!r}")
        if not isinstance(smt, int) or smt < 1 or logical_processors % smt:
            raise ValueError(f"smt: expected a divisor of logical_processors ({logical_processors}), got {smt!r}")
        # The root has a VP per LP, up to the core's VPs per partition (HV_MAX_VPS, 64): on a
        # larger host the other LPs run only children's VPs.
        root_vps = min(logical_processors, MAX_VPS) if root_vps is None else root_vps
        if not isinstance(root_vps, int) or not 1 <= root_vps <= MAX_VPS:
            raise ValueError(f"root_vps: expected 1..{MAX_VPS} (the core's VPs per partition), got {root_vps!r}")
        if not 1 <= reps_per_call <= 4095:
            raise ValueError(f"reps_per_call: expected 1..4095, got {reps_per_call!r}")
        if scheduler not in SCHEDULERS:
            raise ValueError(f"scheduler: expected one of {', '.join(SCHEDULERS)}, got {scheduler!r}")
        core_costs = {}
        for key, value in (costs or {}).items():
            if key not in COSTS:
                raise ValueError(f"costs: unknown cost {key!r}; known: {', '.join(COSTS)}")
            ns = parse_duration(value, f"costs.{key}")
            if ns <= 0:
                raise ValueError(f"costs.{key}: expected a positive duration, got {value!r}")
            core_costs[COSTS[key]] = ns
        core_limits = {}
        for key, value in (grant_limits or {}).items():
            if key not in GRANT_LIMITS:
                raise ValueError(f"grant_limits: unknown limit {key!r}; known: {', '.join(GRANT_LIMITS)}")
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 0xFFFFFFFF:
                raise ValueError(f"grant_limits.{key}: expected an integer 1..4294967295, got {value!r}")
            core_limits[GRANT_LIMITS[key]] = value
        self.scheduler = scheduler
        self.logical_processors = logical_processors
        self.smt = smt
        self.memory_bytes = memory_bytes
        self.seed = seed
        self._h = _binding.hv_host_create(memory_bytes, logical_processors, smt, seed, root_vps, reps_per_call,
                                          SCHEDULERS[scheduler], core_costs, core_limits)
        self._now = _binding.hv_now_reader(self._h)  # read on every guest's hot path
        self._partitions: dict[int, Partition] = {}
        self._guests = GuestRunner(self)
        #: on_guest_error(partition_id, vp_index, error): called when a Python guest raises (its
        #: VP is stopped; the run goes on). None: run() raises the GuestError, ending the run.
        self.on_guest_error: Callable[[int, int, GuestError], None] | None = None
        self.introspect = Introspection(self)
        self.grants = Grants(self)
        root_id = self.introspect.partition_ids()[0]
        self.root = self._partition(root_id)
        # The root's VPs get hypercall pages right after the hypervisor's reserve; its memory
        # manager hands out the pages after those.
        first = self.introspect.totals()["hv_pages"]
        for i in range(root_vps):
            self.root._vps[i] = VirtualProcessor(self.root, i, (first + 2 * i) * PAGE_SIZE,
                                                 (first + 2 * i + 1) * PAGE_SIZE)
        self.root_memory = RootMemory(first + 2 * root_vps, memory_bytes // PAGE_SIZE)
        self._pagers: dict[int, Callable] = {}
        #: child id -> (GPA page, exception) of the last fetch its pager failed (set_pager).
        self.pager_failures: dict[int, tuple[int, BaseException]] = {}

    def __repr__(self) -> str:
        return (f"<Host {self.logical_processors} LPs, {self.memory_bytes // 2**20} MiB, "
                f"{len(self.introspect.partition_ids())} partitions>")

    # ---- simulated time ------------------------------------------------------------------------
    @property
    def now(self) -> int:
        """Simulated time, ns."""
        return self._now()

    def run(self, until: int | str) -> int:
        """Run the simulation until simulated time `until` (ns, or a duration such as "1.5s",
        measured from boot). Returns the new `now`."""
        self._guests.run(parse_duration(until, "until"))
        return self.now

    def run_for(self, duration: int | str) -> int:
        """Run for `duration` more simulated time."""
        return self.run(self.now + parse_duration(duration, "duration"))

    def trace_digest(self) -> bytes:
        """A digest of every event processed and every scheduling decision so far: the same
        configuration and seed give the same digest."""
        return _binding.hv_trace_digest(self._h)

    @property
    def pages(self) -> int:
        return self.memory_bytes // PAGE_SIZE

    def partition(self, partition_id: int) -> Partition:
        """The Partition object for a live partition id."""
        if partition_id not in self.introspect.partition_ids():
            raise LookupError(f"no partition {partition_id} on this host")
        return self._partition(partition_id)

    def dirty_log(self, child: Partition | int) -> DirtyLog:
        """The dirty log of a child of the root (hypervisor/dirty.py): start, take, stop."""
        return DirtyLog(self.root, child if isinstance(child, Partition) else self.partition(child))

    # ---- absent pages (post-copy): the parent's pager -------------------------------------------
    def set_pager(self, child: Partition | int, fn: Callable[[int], object] | None) -> None:
        """Serve the first access to each absent page of `child` (Partition.set_absent) with
        `fn(gpa_page)`, which returns the page's 4096 bytes and how long fetching it took in
        simulated ns, as `(data, ns)` (bare bytes: 0 ns), or raises. The VP the access was for
        waits that long before its next step; a fetch that raises (or returns anything else) fails
        the access as an unmapped GPA would: the child's guest sees MemoryError, the host runs on.
        `fn` must not call into the core (it runs in the middle of an access). None: no pager."""
        child_id = child if isinstance(child, int) else child.id
        if fn is None:
            self._pagers.pop(child_id, None)
            return
        if not self._pagers:
            _binding.hv_pager_install(self._h, self._serve_page)
        self._pagers[child_id] = fn

    def pager_stats(self, child: Partition | int) -> dict:
        """{absent, faults, failures, stall_ns, unattributed} of a partition (docs/dirty-log.md)."""
        stats = _binding.hv_pager_stats(self._h, child if isinstance(child, int) else child.id)
        if stats is None:
            raise LookupError(f"no partition {child} on this host")
        return stats

    def _serve_page(self, partition_id: int, gpa_page: int, vp_index: int | None):
        """The core's absent-page fault: (data, ns, VP index or None), or None if it failed."""
        fn = self._pagers.get(partition_id)
        if fn is None:
            return None
        try:
            got = fn(gpa_page)
            data, ns = (got, 0) if isinstance(got, (bytes, bytearray, memoryview)) else got
            if len(data) != PAGE_SIZE or type(ns) is not int or ns < 0:
                raise ValueError(f"a pager returns (4096 bytes, ns >= 0), got {len(data)} bytes and {ns!r}")
        except Exception as exc:  # noqa: BLE001 - the fetch fails; the access fails for that child only
            self.pager_failures[partition_id] = (gpa_page, exc)
            return None
        if vp_index is None:  # a load or store of its guest's code: the guest running now
            vp_index = self._guests.running_vp(partition_id)
        return data, ns, vp_index

    def partitions(self) -> list[Partition]:
        return [self._partition(pid) for pid in self.introspect.partition_ids()]

    def _partition(self, partition_id: int) -> Partition:
        if partition_id not in self._partitions:
            self._partitions[partition_id] = Partition(self, partition_id)
        return self._partitions[partition_id]

    def _forget(self, partition_id: int) -> None:
        self._partitions.pop(partition_id, None)
