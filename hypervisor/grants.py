"""Grants: a child's pages made reachable by its parent, the core's half of a VMBus GPADL; and
host visibility, the other way a child shows its parent pages of its own.

The parent's VMBus server creates a grant when a child announces a GPADL of its own pages; the
core checks every page is the child's, pins them while the grant lives, and gives the parent a
contiguous view of them (`Grant.view`) that ring code reads and writes in place. What grants cost
the process is bounded per partition and per host (`Host(grant_limits=...)`), and a refusal says
which limit it met.

A child (an isolated guest's bounce buffers) marks pages host-visible, read-only or read-write,
with HvCallModifySparseGpaPageHostVisibility (`modify_host_visibility`, issued from its own VP).
The parent then reaches them, and only them, with the access the child gave: one-off copies
(`Grants.read_visible` / `write_visible`) or a pinned view (`Grants.visible_view`, accounted like a
grant). A page the child makes less visible is out of reach at once: copies are refused naming it
and every view that needed it is revoked (its memoryview reads zeros from then on).
"""
from __future__ import annotations

import os

from dataclasses import dataclass
from typing import TYPE_CHECKING

import struct

from hypervisor import _binding
from hypervisor.abi import PARTITION_ID_SELF, CallCode, HostVisibility
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


    # ---- host-visible pages ----------------------------------------------------------------------
    def host_visible(self, child: Partition | int) -> dict[int, HostVisibility]:
        """{GPA page: visibility} of every page the child shows its parent."""
        cid = _cid(child)
        return {gpa: HostVisibility(v) for gpa, v in _binding.hv_host_visible_pages(self._host._h, cid).items()}

    def check_visible(self, child: Partition | int, gpa_pages, *, writable: bool = False) -> int | None:
        """The first of `gpa_pages` the parent may not read (or write, if `writable`), or None."""
        return _binding.hv_visible_check(self._host._h, _cid(child), list(gpa_pages), _access(writable))

    def read_visible(self, child: Partition | int, gpa_pages, offset: int, length: int) -> bytes:
        """`length` bytes from byte `offset` of the child's GPA pages `gpa_pages` (in list order,
        as a GPA-direct range names them); every page touched must be host-visible."""
        buf = bytearray(length)
        st, bad = _binding.hv_visible_copy(self._host._h, _cid(child), list(gpa_pages), offset, buf, False)
        if st != HvStatus.SUCCESS:
            raise _visibility_error(st, "ReadHostVisible", _cid(child), bad, False)
        return bytes(buf)

    def write_visible(self, child: Partition | int, gpa_pages, offset: int, data) -> None:
        """Store `data` from byte `offset` of the child's pages `gpa_pages`; every page touched must
        be read-write visible, and nothing is stored if one is not."""
        st, bad = _binding.hv_visible_copy(self._host._h, _cid(child), list(gpa_pages), offset, data, True)
        if st != HvStatus.SUCCESS:
            raise _visibility_error(st, "WriteHostVisible", _cid(child), bad, True)

    def visible_view(self, child: Partition | int, view_id: int, gpa_pages, *, writable: bool = False) -> VisibleView:
        """A pinned, contiguous view of host-visible pages of the child (read-only unless
        `writable`), counted against the child's grant limits like a GPADL; refused with
        AccessDenied naming the first page not visible enough."""
        cid = _cid(child)
        st, bad = _binding.hv_visible_view_create(self._host._h, cid, view_id, list(gpa_pages), _access(writable))
        if st == HvStatus.ACCESS_DENIED:
            raise _visibility_error(st, "CreateHostVisibleView", cid, bad, writable)
        if st != HvStatus.SUCCESS:
            raise _refusal(self._host, st, "CreateHostVisibleView")
        return VisibleView(self._host, cid, view_id, writable)

    def visible_view_ids(self, child: Partition | int) -> list[int]:
        return _binding.hv_visible_view_ids(self._host._h, _cid(child))


@dataclass
class VisibleView:
    """The parent's view of some host-visible pages of a child (Grants.visible_view)."""

    host: Host
    child_id: int
    id: int
    writable: bool

    @property
    def alive(self) -> bool:
        return self.id in _binding.hv_visible_view_ids(self.host._h, self.child_id)

    @property
    def view(self) -> memoryview:
        """The pages, contiguous (read-only unless the view is writable). A memoryview taken
        earlier reads zeros once the view is released or revoked."""
        view = _binding.hv_visible_view(self.host._h, self.child_id, self.id)
        if view is None:
            raise LookupError(f"host-visible view {self.id:#x} of partition {self.child_id} is gone "
                              "(released, or revoked when the child made a page of it less visible)")
        return view

    def release(self) -> None:
        st = _binding.hv_visible_view_release(self.host._h, self.child_id, self.id)
        if st != HvStatus.SUCCESS:
            raise error_for(st, "ReleaseHostVisibleView")


class VisibleMemory:
    """One child's host-visible pages as its parent reaches them, for a VSP that serves GPA-direct
    ranges (storvsp's `guest_memory`): each call checks visibility as it is now."""

    def __init__(self, host: Host, child: Partition | int):
        self._grants, self.child_id = host.grants, _cid(child)

    @property
    def host_handle(self):
        """The core's host handle, for a data plane in C that checks and copies through the core
        (native/storvsp.c) as the calls below do."""
        return self._grants._host._h

    def check(self, gpa_pages, writable: bool = False) -> int | None:
        """The first of `gpa_pages` not host-visible (read-write if `writable`), or None."""
        try:
            return self._grants.check_visible(self.child_id, gpa_pages, writable=writable)
        except LookupError:  # the child is gone: none of its pages is visible
            return next(iter(gpa_pages), 0)

    def read(self, gpa_pages, offset: int, length: int) -> bytes:
        return self._grants.read_visible(self.child_id, gpa_pages, offset, length)

    def write(self, gpa_pages, offset: int, data) -> None:
        self._grants.write_visible(self.child_id, gpa_pages, offset, data)


def _cid(child: Partition | int) -> int:
    return child if isinstance(child, int) else child.id


def _access(writable: bool) -> int:
    return HostVisibility.READ_WRITE if writable else HostVisibility.READ_ONLY


def _visibility_error(status: int, call: str, child_id: int, page: int, writable: bool) -> HvError:
    if status == HvStatus.ACCESS_DENIED:
        need = "read-write" if writable else "readable"
        return error_for(status, call, f"GPA page {page:#x} of partition {child_id} is not {need} host-visible")
    return error_for(status, call)


def modify_host_visibility(partition: Partition, gpa_pages, visibility: int, *, via=None) -> None:
    """HvCallModifySparseGpaPageHostVisibility from `partition`'s own VP (VP 0 unless `via`):
    show `gpa_pages` of its own to its parent with `visibility` (HostVisibility), or hide them
    (NONE). A rep call, split into blocks of at most 510 pages (a page of input, as Linux's
    hv_mark_gpa_visibility does) and resumed where the hypervisor stopped."""
    header = struct.pack("<QII", PARTITION_ID_SELF, int(visibility), 0)
    pages = list(gpa_pages)
    for off in range(0, len(pages), MAX_VISIBILITY_REPS):
        chunk = pages[off:off + MAX_VISIBILITY_REPS]
        partition._rep_call(CallCode.MODIFY_SPARSE_GPA_PAGE_HOST_VISIBILITY, header,
                            [struct.pack("<Q", p) for p in chunk], elem_size=8, via=via,
                            name="ModifySparseGpaPageHostVisibility")


#: Pages one ModifySparseGpaPageHostVisibility block holds: (4096 - 16) / 8 (Linux's
#: HV_MAX_MODIFY_GPA_REP_COUNT).
MAX_VISIBILITY_REPS = (4096 - 16) // 8


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
