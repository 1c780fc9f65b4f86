"""Checkpoints of a VM: Hyper-V's production checkpoints (the default since 2016): a
data-consistent point of the VM's disks, taken with the guest's writes frozen through the backup
(VSS) integration service when the guest offers it, without memory state. Checkpoints form a tree;
disks fork through differencing VHDs, every disk of the VM at once (one file per disk per point).

    base.vhd <- base-ckpt1.vhd (checkpoint "a" froze base.vhd; the VM now writes base-ckpt1.vhd)
    apply "a": the VM (Off) gets a fresh differencing disk on base.vhd; base-ckpt1.vhd is discarded
    delete "a": the disk frozen by "a" absorbs its one child's changes, which then goes

New disk files go beside the live disk they fork (a run's disks live in its run directory: see
partitions/management.py), named `<stem>-ckpt<n>.vhd` with the first n not taken.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from drivers.storage.vhd import VhdError, VirtualDisk


class CheckpointError(RuntimeError):
    """A checkpoint operation that cannot be done; the message says why."""


@dataclass
class Checkpoint:
    name: str
    parent: str | None          # the checkpoint it was taken after, on the same branch
    disks: list[str]            # the disk files frozen at this point (read-only from then on), by LUN
    created_ns: int
    consistent: bool            # the guest froze its writes for it (VSS)

    @property
    def disk(self) -> str:
        """The first disk's frozen file."""
        return self.disks[0]


@dataclass
class CheckpointTree:
    """One VM's checkpoints and its live disks (the files "Now" writes, one per disk, by LUN).
    Every disk forks at every point, so all disks have the same tree of files."""

    vm: str
    live_disks: list[str] | str
    checkpoints: dict[str, Checkpoint] = field(default_factory=dict)
    current: str | None = None  # the checkpoint "Now" descends from
    parents: dict[str, str | None] = field(default_factory=dict)  # disk file -> its parent file
    _serial: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.live_disks, (str, os.PathLike)):
            self.live_disks = [self.live_disks]
        self.live_disks = [str(d) for d in self.live_disks]
        if not self.live_disks:
            raise ValueError(f"vm {self.vm!r}: a checkpoint tree needs at least one disk")
        # Read once, while nothing holds the files open; the tree keeps them up to date after that.
        for disk in self.live_disks:
            self.parents.setdefault(disk, _parent_of(disk))

    @property
    def live_disk(self) -> str:
        """The first disk's live file."""
        return self.live_disks[0]

    def _new_disk_paths(self) -> list[str]:
        """A file name for each disk's next fork, with one serial number not taken by any."""
        while True:
            self._serial += 1
            paths = []
            for live in self.live_disks:
                base = Path(live)
                stem = base.stem.split(".")[0].rsplit("-ckpt", 1)[0]
                paths.append(str(base.with_name(f"{stem}-ckpt{self._serial}.vhd")))
            if not any(os.path.exists(p) for p in paths) and len(set(paths)) == len(paths):
                return paths

    def children_of_disk(self, disk: str) -> list[str]:
        """Disks whose parent is `disk`: checkpoint disks and the live one."""
        return [d for d, parent in self.parents.items() if parent == disk and os.path.exists(d)]

    def take(self, name: str, now_ns: int, *, consistent: bool, serving=None) -> Checkpoint:
        """Freeze the live disks as checkpoint `name` and continue on a differencing child of
        each. `serving`: the storage VSP serving the live disks, one per LUN (its disks are
        swapped in place). All or nothing: if one disk cannot fork, the ones forked already go
        back to their file and no checkpoint is taken."""
        if name in self.checkpoints:
            raise CheckpointError(f"vm {self.vm!r} already has a checkpoint named {name!r}")
        frozen = list(self.live_disks)
        children = self._new_disk_paths()
        done: list[int] = []
        try:
            for lun, (parent, child_path) in enumerate(zip(frozen, children)):
                _fork(parent, child_path, serving, lun)
                done.append(lun)
        except (OSError, VhdError) as exc:
            for lun in reversed(done):
                _unfork(frozen[lun], children[lun], serving, lun)
            raise CheckpointError(f"vm {self.vm!r}: checkpoint {name!r} not taken: disk {len(done)} "
                                  f"({frozen[len(done)]}) could not fork: {exc}") from exc
        for parent, child in zip(frozen, children):
            self.parents[child] = parent
        cp = Checkpoint(name, self.current, frozen, now_ns, consistent)
        self.checkpoints[name] = cp
        self.current = name
        self.live_disks = children
        return cp

    def apply(self, name: str) -> None:
        """Make the VM (which must be Off) continue from checkpoint `name`."""
        cp = self._get(name)
        old_live = list(self.live_disks)
        fresh = self._new_disk_paths()
        made: list[str] = []
        try:
            for parent, path in zip(cp.disks, fresh):
                VirtualDisk.create(path, None, "differencing", parent=parent).close()
                made.append(path)
        except (OSError, VhdError) as exc:
            for path in made:
                os.remove(path)
            raise CheckpointError(f"vm {self.vm!r}: checkpoint {name!r} not applied: {exc}") from exc
        for parent, path in zip(cp.disks, fresh):
            self.parents[path] = parent
        self.live_disks = fresh
        self.current = name
        for old in old_live:
            if not self.children_of_disk(old) and not any(old in c.disks for c in self.checkpoints.values()):
                os.remove(old)  # what "Now" had since the last checkpoint is discarded, as on Hyper-V
                self.parents.pop(old, None)

    def delete(self, name: str, *, serving=None) -> None:
        """Delete checkpoint `name`: each frozen disk absorbs its single child's changes (the
        merge), and the children go. Checkpoints with more than one branch below them cannot be
        deleted until all but one branch are."""
        cp = self._get(name)
        children = []
        for frozen in cp.disks:   # every disk has the same tree: check them all before any merge
            kids = self.children_of_disk(frozen)
            if len(kids) != 1:
                raise CheckpointError(f"checkpoint {name!r} of vm {self.vm!r} has {len(kids)} branches below it; "
                                      "delete all but one first")
            if self.children_of_disk(kids[0]):
                raise CheckpointError(f"checkpoint {name!r} of vm {self.vm!r}: the disk after it has checkpoints "
                                      "of its own; delete those first (newest first)")
            children.append(kids[0])
        live = children[0] in self.live_disks
        for lun, (frozen, child) in enumerate(zip(cp.disks, children)):
            disk = serving.lun_disk(lun) if live and serving is not None else None
            if disk is not None:
                disk.flush()
                disk.close()
            _merge(child, frozen)
            os.remove(child)
            self.parents.pop(child, None)
            if disk is not None:
                serving.replace_disk(VirtualDisk.open(frozen, write_barriers=_barriers(serving)), lun)
        for other in self.checkpoints.values():
            if other.parent == name:
                other.parent = cp.parent
        del self.checkpoints[name]
        if live:
            self.live_disks = list(cp.disks)
            self.current = cp.parent
        else:  # the children were another checkpoint's frozen disks: that checkpoint now freezes cp's
            for other in self.checkpoints.values():
                if other.disks == children:
                    other.disks = list(cp.disks)

    def _get(self, name: str) -> Checkpoint:
        try:
            return self.checkpoints[name]
        except KeyError:
            raise CheckpointError(f"vm {self.vm!r} has no checkpoint named {name!r} "
                                  f"(it has: {', '.join(self.checkpoints) or 'none'})") from None


def _fork(parent: str, child: str, serving, lun: int) -> None:
    """Freeze `parent` under a new differencing `child`; the VSP serving it (if any) moves over."""
    disk = serving.lun_disk(lun) if serving is not None else None
    if disk is None:
        VirtualDisk.create(child, None, "differencing", parent=parent).close()
        return
    disk.flush()
    disk.close()  # the child opens it again, shared and read-only
    try:
        opened = VirtualDisk.create(child, None, "differencing", parent=parent, write_barriers=_barriers(serving))
    except BaseException:
        _reopen(parent, serving, lun)
        raise
    serving.replace_disk(opened, lun)


def _unfork(parent: str, child: str, serving, lun: int) -> None:
    """Undo _fork: the VSP goes back to `parent`, `child` goes (nothing was written to it yet:
    the fork and its undoing happen with no guest step between them)."""
    disk = serving.lun_disk(lun) if serving is not None else None
    if disk is not None:
        disk.close()
        _reopen(parent, serving, lun)
    os.remove(child)


def _reopen(path: str, serving, lun: int) -> None:
    serving.replace_disk(VirtualDisk.open(path, write_barriers=_barriers(serving)), lun)


def _barriers(serving) -> bool:
    """Whether the VSP's disks are written with barriers: a fork is written as its parent was."""
    return bool(serving.config.get("write_barriers", True))


def _merge(child: str, into: str) -> None:
    """Copy what `child` holds into its parent `into` (data before the table entries, as
    VirtualDisk.write does)."""
    with VirtualDisk.open(child, read_only=True) as src:
        delta = [(off, src.read(off, n)) for off, n in src.own_ranges()]
    with VirtualDisk.open(into) as dst:
        for off, data in delta:
            dst.write(off, data)
        dst.flush()


def _parent_of(path: str) -> str | None:
    if not os.path.exists(path):
        return None
    with VirtualDisk.open(path, read_only=True) as d:
        return d.parent.path if d.parent is not None else None
