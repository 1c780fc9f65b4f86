"""A child partition's dirty log as its parent sees it: turn tracking on and off, and read (and
clear) which GPA pages the core saw written, in batches, as live migration's pre-copy rounds do.

Both go through hypercalls the parent issues: SetPartitionProperty with
GPA_PAGE_ACCESS_TRACKING (bit 0: enabled) and HvCallGetGpaPagesAccessStates (0x00C9), a rep call
whose output is one state byte per page (bit 1: dirty). See docs/dirty-log.md.

>>> from hypervisor import Host
>>> host = Host(logical_processors=1, memory="16MiB", seed=1)
>>> child = host.root.create_partition()
>>> host.root.deposit_memory(child, host.root_memory.allocate(4))
>>> host.root.initialize_partition(child)
>>> host.root.map_gpa_pages(child, 0, host.root_memory.allocate(8))
>>> log = host.dirty_log(child)
>>> log.start()
>>> child.write(3 * 4096 + 8, b"hello")
>>> log.take(0, 8)
[3]
>>> log.take(0, 8)
[]
>>> log.stop()
"""
from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from hypervisor import _binding
from hypervisor.abi import MAX_REP_COUNT, PAGE_SIZE, CallCode, PartitionProperty
from hypervisor.status import HvStatus, error_for

if TYPE_CHECKING:
    from hypervisor.partition import Partition, VirtualProcessor

CLEAR_DIRTY = _binding.constant("HV_GPA_ACCESS_CLEAR_DIRTY")
SET_DIRTY = _binding.constant("HV_GPA_ACCESS_SET_DIRTY")
STATE_DIRTY = _binding.constant("HV_GPA_ACCESS_STATE_DIRTY")
#: Pages one invocation reads: the rep count's limit, and one output byte each must fit a page.
PAGES_PER_CALL = min(MAX_REP_COUNT, PAGE_SIZE)


class DirtyLog:
    """The dirty log of `child`, read by its parent `parent` (the partition that created it)."""

    def __init__(self, parent: Partition, child: Partition, *, via: VirtualProcessor | None = None):
        self.parent, self.child, self.via = parent, child, via

    def __repr__(self) -> str:
        return f"DirtyLog(child={self.child.id}, on={self.on})"

    @property
    def on(self) -> bool:
        """Whether the core keeps the child's log now."""
        return bool(self.parent.get_partition_property(self.child, PartitionProperty.GPA_PAGE_ACCESS_TRACKING,
                                                       via=self.via) & 1)

    def start(self) -> None:
        """Turn tracking on (a no-op if it is on): from now every write the core makes into the
        child's memory sets its page's bit. The log starts clean."""
        self.parent.set_partition_property(self.child, PartitionProperty.GPA_PAGE_ACCESS_TRACKING, 1, via=self.via)

    def stop(self) -> None:
        """Turn tracking off: the log and what it held are gone."""
        self.parent.set_partition_property(self.child, PartitionProperty.GPA_PAGE_ACCESS_TRACKING, 0, via=self.via)

    def states(self, first_gpa_page: int, count: int, flags: int = 0) -> bytes:
        """One HV_GPA_PAGE_ACCESS_STATE byte per page of [first_gpa_page, +count), with the call's
        flags (CLEAR_DIRTY: clear what it returns; SET_DIRTY: mark the mapped pages dirty)."""
        if count < 0 or first_gpa_page < 0:
            raise ValueError(f"dirty log: expected a page range, got {first_gpa_page}+{count}")
        out = bytearray()
        for base in range(first_gpa_page, first_gpa_page + count, PAGES_PER_CALL):
            n = min(PAGES_PER_CALL, first_gpa_page + count - base)
            header = struct.pack("<QQQ", self.child.id, flags, base)
            out += self.parent._rep_call(CallCode.GET_GPA_PAGES_ACCESS_STATES, header, n, elem_size=0,
                                         out_elem_size=1, via=self.via, name="GetGpaPagesAccessStates")
        return bytes(out)

    def take(self, first_gpa_page: int, count: int) -> list[int]:
        """The GPA pages of the range written since the last take (or the start), in order; their
        bits are cleared."""
        return self._read(first_gpa_page, count, CLEAR_DIRTY)

    def peek(self, first_gpa_page: int, count: int) -> list[int]:
        """Like take, but leaves the log as it is."""
        return self._read(first_gpa_page, count, 0)

    def mark(self, first_gpa_page: int, count: int) -> None:
        """Mark every mapped page of the range dirty (a round that must resend them)."""
        self._read(first_gpa_page, count, SET_DIRTY)

    def _read(self, first_gpa_page: int, count: int, flags: int) -> list[int]:
        # The same invocations states() issues, made by the core in one crossing (a pre-copy round
        # of a 4 GiB VM is 4,096 of them), returning only the dirty pages' numbers.
        if count < 0 or first_gpa_page < 0:
            raise ValueError(f"dirty log: expected a page range, got {first_gpa_page}+{count}")
        vp = self.via or self.parent.vp(0)
        status, pages = _binding.hv_dirty_log_read(self.parent.host._h, self.parent.id, vp.index, vp.input_gpa,
                                                   vp.output_gpa, self.child.id, first_gpa_page, count, flags)
        if status != HvStatus.SUCCESS:
            raise error_for(status, "GetGpaPagesAccessStates")
        return pages

