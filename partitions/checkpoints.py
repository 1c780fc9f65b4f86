"""Checkpoints of a VM: Hyper-V's production checkpoints (the default since 2016): a
data-consistent point of the VM's disks, taken with the guest's writes frozen through the backup
(VSS) integration service when the guest offers it, without memory state. Checkpoints form a tree;
disks fork through differencing VHDs.

    base.vhd <- web-1.vhd (checkpoint "a" froze base.vhd; the VM now writes web-1.vhd)
    apply "a": the VM (Off) gets a fresh differencing disk on base.vhd; web-1.vhd is discarded
    delete "a": the disk frozen by "a" absorbs its one child's changes, which then goes
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from drivers.storage.vhd import VirtualDisk


class CheckpointError(RuntimeError):
    """A checkpoint operation that cannot be done; the message says why."""


@dataclass
class Checkpoint:
    name: str
    parent: str | None          # the checkpoint it was taken after, on the same branch
    disk: str                   # the disk file frozen at this point (read-only from then on)
    created_ns: int
    consistent: bool            # the guest froze its writes for it (VSS)


@dataclass
class CheckpointTree:
    """One VM's checkpoints and its live disk (the file "Now" writes)."""

    vm: str
    live_disk: str
    checkpoints: dict[str, Checkpoint] = field(default_factory=dict)
    current: str | None = None  # the checkpoint "Now" descends from
    parents: dict[str, str | None] = field(default_factory=dict)  # disk file -> its parent file
    _serial: int = 0

    def __post_init__(self) -> None:
        # Read once, while nothing holds the file open; the tree keeps it up to date after that.
        self.parents.setdefault(self.live_disk, _parent_of(self.live_disk))

    def _new_disk_path(self) -> str:
        self._serial += 1
        base = Path(self.live_disk)
        stem = base.stem.split(".")[0].rsplit("-ckpt", 1)[0]
        while True:
            path = base.with_name(f"{stem}-ckpt{self._serial}.vhd")
            if not path.exists():
                return str(path)
            self._serial += 1

    def children_of_disk(self, disk: str) -> list[str]:
        """Disks whose parent is `disk`: checkpoint disks and the live one."""
        return [d for d, parent in self.parents.items() if parent == disk and os.path.exists(d)]

    def take(self, name: str, now_ns: int, *, consistent: bool, serving=None) -> Checkpoint:
        """Freeze the live disk as checkpoint `name` and continue on a differencing child.
        `serving`: the storage VSP serving the live disk (its disk is swapped in place)."""
        if name in self.checkpoints:
            raise CheckpointError(f"vm {self.vm!r} already has a checkpoint named {name!r}")
        frozen = self.live_disk
        child_path = self._new_disk_path()
        if serving is not None and serving.disk is not None:
            serving.disk.flush()
            old = serving.disk
            old.close()  # the child opens it again, shared and read-only
            child = VirtualDisk.create(child_path, None, "differencing", parent=frozen)
            serving.replace_disk(child)
        else:
            VirtualDisk.create(child_path, None, "differencing", parent=frozen).close()
        self.parents[child_path] = frozen
        cp = Checkpoint(name, self.current, frozen, now_ns, consistent)
        self.checkpoints[name] = cp
        self.current = name
        self.live_disk = child_path
        return cp

    def apply(self, name: str) -> None:
        """Make the VM (which must be Off) continue from checkpoint `name`."""
        cp = self._get(name)
        old_live = self.live_disk
        fresh = self._new_disk_path()
        VirtualDisk.create(fresh, None, "differencing", parent=cp.disk).close()
        self.parents[fresh] = cp.disk
        self.live_disk = fresh
        self.current = name
        if not self.children_of_disk(old_live) and not any(c.disk == old_live for c in self.checkpoints.values()):
            os.remove(old_live)  # what "Now" had since the last checkpoint is discarded, as on Hyper-V
            self.parents.pop(old_live, None)

    def delete(self, name: str, *, serving=None) -> None:
        """Delete checkpoint `name`: its frozen disk absorbs its single child's changes (the
        merge), and the child goes. Checkpoints with more than one branch below them cannot be
        deleted until all but one branch are."""
        cp = self._get(name)
        kids = self.children_of_disk(cp.disk)
        if len(kids) != 1:
            raise CheckpointError(f"checkpoint {name!r} of vm {self.vm!r} has {len(kids)} branches below it; "
                                  "delete all but one first")
        child = kids[0]
        grandchildren = self.children_of_disk(child)
        if grandchildren:
            raise CheckpointError(f"checkpoint {name!r} of vm {self.vm!r}: the disk after it has checkpoints "
                                  "of its own; delete those first (newest first)")
        live = child == self.live_disk
        if live and serving is not None and serving.disk is not None:
            serving.disk.flush()
            serving.disk.close()
        # The merge: copy what the child holds into the frozen disk (data before the table
        # entries, as VirtualDisk.write does), then the child file goes.
        with VirtualDisk.open(child, read_only=True) as src:
            delta = [(off, src.read(off, n)) for off, n in src.own_ranges()]
        with VirtualDisk.open(cp.disk) as dst:
            for off, data in delta:
                dst.write(off, data)
            dst.flush()
        os.remove(child)
        self.parents.pop(child, None)
        for other in self.checkpoints.values():
            if other.parent == name:
                other.parent = cp.parent
        del self.checkpoints[name]
        if live:
            self.live_disk = cp.disk
            self.current = cp.parent
            if serving is not None:
                serving.replace_disk(VirtualDisk.open(cp.disk))
        else:  # the child was another checkpoint's frozen disk: that checkpoint now freezes cp.disk
            for other in self.checkpoints.values():
                if other.disk == child:
                    other.disk = cp.disk

    def _get(self, name: str) -> Checkpoint:
        try:
            return self.checkpoints[name]
        except KeyError:
            raise CheckpointError(f"vm {self.vm!r} has no checkpoint named {name!r} "
                                  f"(it has: {', '.join(self.checkpoints) or 'none'})") from None


def _parent_of(path: str) -> str | None:
    if not os.path.exists(path):
        return None
    with VirtualDisk.open(path, read_only=True) as d:
        return d.parent.path if d.parent is not None else None
