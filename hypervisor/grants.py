"""Grants: a child's pages made reachable by its parent, the core's half of a VMBus GPADL.

The parent's VMBus server creates a grant when a child announces a GPADL of its own pages; the
core checks every page is the child's, pins them while the grant lives, and gives the parent a
contiguous view of them (`Grant.view`) that ring code reads and writes in place. What grants cost
the process is bounded per partition and per host (`Host(grant_limits=...)`), and a refusal says
which limit it met.
"""
from __future__ import annotations

import os

from dataclasses import dataclass
from typing import TYPE_CHECKING

from hypervisor import _binding
from hypervisor.status import HvError, HvStatus, error_for

if TYPE_CHECKING:
    from hypervisor.host import Host
    from hypervisor.partition import Partition


@dataclass
class Grant:
    host: Host
    child_id: int
    id: int

    @property
    def view(self) -> memoryview:
        """The granted pages, contiguous and writable (zeros once revoked)."""
        view = _binding.hv_grant_view(self.host._h, self.child_id, self.id)
        if view is None:
            raise LookupError(f"grant {self.id:#x} of partition {self.child_id} is gone")
        return view

    @property
    def pfns(self) -> list[int]:
        return _binding.hv_grant_pages(self.host._h, self.child_id, self.id)

    def revoke(self) -> None:
        st = _binding.hv_grant_revoke(self.host._h, self.child_id, self.id)
        if st != HvStatus.SUCCESS:
            raise error_for(st, "RevokeGrant")


def _refusal(host: Host, status: int, call: str) -> HvError:
    """The error for a refused grant or view; for NO_RESOURCES it says exactly what ran out."""
    detail = None
    r = _binding.hv_grant_last_refusal(host._h) if status == HvStatus.NO_RESOURCES else None
    if r is not None:
        pid, have, want, limit = r["partition_id"], r["have"], r["want"], r["max"]
        if r["limit"] == "grant_pages_per_child":
            detail = (f"child {pid} has {have} pages granted and asks for {want} more; "
                      f"the limit is {limit} (grant_pages_per_child)")
        elif r["limit"] == "grant_mappings_per_child":
            detail = (f"partition {pid}'s grants and views cost {have} memory mappings and this one needs "
                      f"{want} more; the limit is {limit} (grant_mappings_per_child)")
        elif r["limit"] == "grant_mappings_per_host":
            detail = (f"the grants and views of all partitions cost {have} memory mappings and partition "
                      f"{pid}'s needs {want} more; the limit is {limit} (grant_mappings_per_host)")
        else:
            detail = (f"the process is out of memory mappings: mapping partition {pid}'s view of "
                      f"{want} runs failed ({os.strerror(r['error'])}; see vm.max_map_count)")
    return error_for(status, call, detail)


class Grants:
    """host.grants: create and find grants (the parent's view of its children's GPADLs)."""

    def __init__(self, host: Host):
        self._host = host

    def create(self, child: Partition | int, grant_id: int, gpa_pages: list[int]) -> Grant:
        cid = child if isinstance(child, int) else child.id
        st = _binding.hv_grant_create(self._host._h, cid, grant_id, gpa_pages)
        if st != HvStatus.SUCCESS:
            raise _refusal(self._host, st, "CreateGrant")
        return Grant(self._host, cid, grant_id)

    def get(self, child: Partition | int, grant_id: int) -> Grant | None:
        cid = child if isinstance(child, int) else child.id
        return Grant(self._host, cid, grant_id) if grant_id in self.ids(cid) else None

    def ids(self, child: Partition | int) -> list[int]:
        return _binding.hv_grant_ids(self._host._h, child if isinstance(child, int) else child.id)

    def usage(self, child: Partition | int) -> dict:
        """What a partition's grants and views cost now, with the limits: pages (granted to its
        parent), mappings (memory mappings of its grants and own views), host_mappings (all
        partitions'), each with its `_limit`."""
        cid = child if isinstance(child, int) else child.id
        usage = _binding.hv_grant_usage(self._host._h, cid)
        if usage is None:
            raise LookupError(f"no partition {cid} on this host")
        return usage

    def granted_pages(self, child: Partition | int) -> set[int]:
        cid = child if isinstance(child, int) else child.id
        return {pfn for gid in self.ids(cid) for pfn in _binding.hv_grant_pages(self._host._h, cid, gid)}


def own_view(partition: Partition, view_id: int, gpa_pages: list[int]) -> memoryview:
    """A contiguous, writable view of some of a partition's own pages (pinned until released):
    what a guest kernel's ring code works in."""
    st = _binding.hv_view_create(partition.host._h, partition.id, view_id, gpa_pages)
    if st != HvStatus.SUCCESS:
        raise _refusal(partition.host, st, "CreateView")
    return _binding.hv_view_ptr(partition.host._h, partition.id, view_id)


def release_view(partition: Partition, view_id: int) -> None:
    st = _binding.hv_view_release(partition.host._h, partition.id, view_id)
    if st != HvStatus.SUCCESS:
        raise error_for(st, "ReleaseView")


def view(partition: Partition, view_id: int) -> memoryview | None:
    """The memoryview of one of a partition's own views, or None."""
    return _binding.hv_view_ptr(partition.host._h, partition.id, view_id)
