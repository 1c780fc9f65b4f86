"""Introspection: what the host's owner (tests, the management layer) may see of the core and no
partition can: page owners, each partition's reachable pages, pools, counters, a state digest."""
from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from hypervisor import _binding
from hypervisor.abi import OWNER_FREE, OWNER_HV

if TYPE_CHECKING:
    from hypervisor.host import Host
    from hypervisor.partition import Partition

FREE = "free"
HYPERVISOR = "hypervisor"


def _pid(p: Partition | int) -> int:
    return p if isinstance(p, int) else p.id


class Introspection:
    def __init__(self, host: Host):
        self._host = host

    def totals(self) -> dict:
        """pages, hv_pages, free_pages, partition_pages, partitions."""
        return _binding.hv_host_totals(self._host._h)

    def partition_ids(self) -> list[int]:
        return _binding.hv_host_partitions(self._host._h)

    def partition_info(self, p: Partition | int) -> dict | None:
        """State, privileges, CPU controls, pages owned, pool free/used, GPA pages mapped, VP
        mask and counters (hypercalls, hypercalls_failed, reps, messages_dropped) of one partition."""
        return _binding.hv_partition_info(self._host._h, _pid(p))

    def counters(self, p: Partition | int) -> dict:
        info = self.partition_info(p)
        return {k: info[k] for k in ("hypercalls", "hypercalls_failed", "reps", "messages_dropped")}

    def owner_codes(self, first: int = 0, count: int | None = None) -> memoryview:
        """Raw owner code per SPA page (a partition's slot, OWNER_FREE or OWNER_HV)."""
        total = self.totals()["pages"]
        return _binding.hv_page_owners(self._host._h, first, total - first if count is None else count)

    def page_owners(self) -> dict[str | int, int]:
        """Pages per owner: {"free": n, "hypervisor": n, partition_id: n, ...}."""
        slots = {self.partition_info(pid)["slot"]: pid for pid in self.partition_ids()}
        by_code = Counter(self.owner_codes().tolist())
        return {FREE if code == OWNER_FREE else HYPERVISOR if code == OWNER_HV else slots.get(code, code): n
                for code, n in by_code.items()}

    def owner_of(self, pfn: int) -> str | int:
        code = self.owner_codes(pfn, 1)[0]
        if code == OWNER_FREE:
            return FREE
        if code == OWNER_HV:
            return HYPERVISOR
        for pid in self.partition_ids():
            if self.partition_info(pid)["slot"] == code:
                return pid
        raise AssertionError(f"SPA page {pfn} has owner code {code}, which names no partition")

    def reach(self, p: Partition | int) -> dict[int, tuple[int, int]]:
        """{gpa_page: (spa_pfn, rights)} for every page the partition can reach."""
        gpas, pfns, rights = self.reach_columns(p)
        return dict(zip(gpas, zip(pfns, rights)))

    def reach_columns(self, p: Partition | int) -> tuple[list[int], list[int], list[int]]:
        """The same as three lists: GPA pages, SPA frames, rights (no per-page objects, for checks
        that read every partition's reach after every step)."""
        return _binding.hv_partition_reach_columns(self._host._h, _pid(p), self._host.pages)

    def reachable_pages(self, p: Partition | int) -> set[int]:
        return set(self.reach_columns(p)[1])

    def pool_pages(self, p: Partition | int) -> list[int]:
        return _binding.hv_pool_pages(self._host._h, _pid(p))

    def digest(self, *, memory: bool = True) -> bytes:
        """A 16-byte digest of the whole core state (with memory contents unless memory=False).
        Statistics such as hypercall counters are not state and are left out."""
        return _binding.hv_state_digest(self._host._h, memory)

    # ---- scheduling ------------------------------------------------------------------------
    def run_stats(self) -> dict:
        """now, events_processed, events_pending, runnable."""
        return _binding.hv_run_stats(self._host._h)

    def vp_info(self, p: Partition | int, vp_index: int) -> dict | None:
        return _binding.hv_vp_info(self._host._h, _pid(p), vp_index)

    def lp_busy_ns(self, lp: int) -> int:
        """Time LP `lp` has spent running VPs."""
        return _binding.hv_lp_busy(self._host._h, lp)

    def lp_running(self, lp: int) -> tuple[int, int] | None:
        """(partition id, VP index) running on LP `lp` now, or None."""
        return _binding.hv_lp_running(self._host._h, lp)

    def run_time_ns(self, p: Partition | int) -> int:
        return self.partition_info(p)["run_time_ns"]

    def record_scheduling(self, capacity: int = 1 << 20) -> None:
        """Start recording every VP dispatch and undispatch (for traces); 0 stops."""
        _binding.hv_sched_log_enable(self._host._h, capacity)

    def take_scheduling(self) -> tuple[list[tuple[int, int, int, int, str]], int]:
        """The records since the last call: [(time_ns, partition_id, lp, vp_index, "run"|"stop")],
        and how many records were dropped because the buffer was full."""
        records, dropped = _binding.hv_sched_log_take(self._host._h)
        return [(t, pid, lp, vp, "run" if kind == 1 else "stop") for t, pid, lp, vp, kind in records], dropped

    # ---- costs ---------------------------------------------------------------------------------
    def teardown_visits(self) -> int:
        """Table entries partition teardown has visited since boot (ports, connections, grants,
        pool pages, queued messages): a deterministic measure of DeletePartition's work."""
        return _binding.hv_teardown_visits(self._host._h)

    def grant_usage(self, p: Partition | int) -> dict | None:
        """What a partition's grants and own views cost (pages, mappings) and the limits."""
        return _binding.hv_grant_usage(self._host._h, _pid(p))
