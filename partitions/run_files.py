"""The disk files of a run: the configuration's disks checked before anything is made, then the
ones that do not exist yet created, and each VM's own working disks made afresh in the run
directory.

A run never writes the disks a configuration names (its "base" disks): each disk of a VM runs on
a differencing disk over its base, in the run directory, made anew at every run; checkpoints fork
those (partitions/checkpoints.py), so their files are in the run directory too. So running a
configuration again starts from the same disks, whatever the last run wrote or forked, and what a
run wrote is left in its run directory for a look (or to become the base of another run).

    <workdir>/<vm>/disk<i>.vhd          the VM's disk i as it runs (differencing over disks[i].path)
    <workdir>/<vm>/disk<i>-ckpt<n>.vhd  what the disk forked into at checkpoints, applies and so on
    <workdir>/<vm>/ide.vhd              the VM's emulated IDE disk as it runs (differencing over ide's path)

Files of that shape left in `<workdir>/<vm>/` by an earlier run are removed when the host is
built (they belong to that run's checkpoints, which live only as long as the run); nothing else
there is touched.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from drivers.storage.vhd import VhdError, VirtualDisk
from partitions.config_schema import Config, ConfigError, DiskConfig, format_size_exact

#: The files of a VM's run directory that a run makes (and the next run of the same host removes).
RUN_DISK = re.compile(r"(disk\d+(-ckpt\d+)?|ide)\.vhd")


@dataclass(frozen=True)
class DiskPlan:
    """One disk of a VM: its base (as configured), whether the base must be created first, and
    the run disk the VM will write."""
    vm: str
    key: str                 # "vm[0].disks[1]", for messages
    base: DiskConfig
    create: bool             # the base does not exist yet: created as configured
    run_path: Path
    ide: bool = False        # the VM's emulated IDE disk (last of its plans), not a LUN of its storage


def vm_directory(workdir: Path, vm: str) -> Path:
    return Path(workdir) / vm


def plan_disks(config: Config, workdir: Path, file: str) -> dict[str, list[DiskPlan]]:
    """Check every disk of every VM and where its run files go, changing nothing; ConfigError
    (naming `file` and the key) for the first problem. Returns the disks by VM."""
    planned = {d.path for vm in config.vms for d in _disks(vm)}
    run_dirs = {Path(os.path.abspath(vm_directory(workdir, vm.name))) for vm in config.vms if _disks(vm)}
    plans: dict[str, list[DiskPlan]] = {}
    for i, vm in enumerate(config.vms):
        out = plans[vm.name] = []
        if _disks(vm):
            _check_directory(vm_directory(workdir, vm.name), file, f"vm[{i}]")
            _check_not_in_use(vm_directory(workdir, vm.name), file, f"vm[{i}]")
        for j, disk in enumerate(_disks(vm)):
            ide = j == len(vm.disks)
            key = f"vm[{i}].ide" if ide else f"vm[{i}].disks[{j}]"
            for name, path in (("path", disk.path), ("parent", disk.parent)):
                if path is not None and path.parent in run_dirs and RUN_DISK.fullmatch(path.name):
                    raise ConfigError(file, f"{key}.{name}", "a file that is not one of the files a run makes afresh "
                                      "(<workdir>/<vm>/disk<i>.vhd and their checkpoint forks)", str(path))
            exists = disk.path.exists()
            if exists:
                _check_existing(disk, file, key)
            else:
                if disk.type != "differencing" and disk.size is None:
                    raise ConfigError(file, f"{key}.size", f"a size, since {disk.path} does not exist yet", "nothing")
                if disk.type == "differencing" and not (disk.parent is not None and
                                                        (disk.parent.exists() or disk.parent in planned)):
                    raise ConfigError(file, f"{key}.parent", "an existing VHD or another disk of this configuration",
                                      str(disk.parent))
                _check_directory(disk.path.parent, file, f"{key}.path")
            run = vm_directory(workdir, vm.name) / ("ide.vhd" if ide else f"disk{j}.vhd")
            out.append(DiskPlan(vm.name, key, disk, not exists, run, ide))
    _creation_order([p for ps in plans.values() for p in ps], file)
    return plans


def _disks(vm) -> list[DiskConfig]:
    """A VM's disk files: its storage's LUNs in order, then its emulated IDE disk (if any)."""
    return [*vm.disks, *([vm.ide] if vm.ide is not None else [])]


def make_disks(plans: dict[str, list[DiskPlan]], workdir: Path,
               event: Callable[..., None] = lambda name, **fields: None) -> None:
    """Create what plan_disks found missing (bases in an order where parents come first), clear
    the earlier run's disks from each VM's run directory, and make the run disks."""
    everything = [p for ps in plans.values() for p in ps]
    for plan in _creation_order(everything, "(configuration)"):
        base = plan.base
        base.path.parent.mkdir(parents=True, exist_ok=True)
        VirtualDisk.create(str(base.path), base.size, base.type,
                           parent=str(base.parent) if base.parent else None).close()
        event("disk.created", vm=plan.vm, path=str(base.path), size=base.size, type=base.type)
    for vm, disks in plans.items():
        if not disks:
            continue
        directory = vm_directory(workdir, vm)
        directory.mkdir(parents=True, exist_ok=True)
        stale = sorted(p for p in directory.iterdir() if RUN_DISK.fullmatch(p.name) and p.is_file())
        for path in stale:
            path.unlink()
        if stale:
            event("disk.discarded", vm=vm, paths=[str(p) for p in stale], why="left by an earlier run")
        for plan in disks:
            VirtualDisk.create(str(plan.run_path), None, "differencing", parent=str(plan.base.path)).close()
            event("disk.created", vm=vm, path=str(plan.run_path), type="differencing", parent=str(plan.base.path))


def _check_existing(disk: DiskConfig, file: str, key: str) -> None:
    try:
        with VirtualDisk.open(str(disk.path), read_only=True) as vhd:
            size = vhd.size
    except (VhdError, OSError) as exc:
        raise ConfigError(file, f"{key}.path", "a VHD file hvsim can open", f"{disk.path}: {exc}") from None
    if disk.size is not None and disk.size != size:
        raise ConfigError(file, f"{key}.size", f"the size of the existing {disk.path} "
                          f"({format_size_exact(size)})", format_size_exact(disk.size))


def _check_not_in_use(directory: Path, file: str, key: str) -> None:
    """That no open disk holds a run file the build would replace: the VSPs of another run of
    this host in the same run directory (or of this process) lock theirs, and removing those
    under them would leave that run writing files nobody can see."""
    import fcntl
    if not directory.is_dir():
        return
    for path in sorted(p for p in directory.iterdir() if RUN_DISK.fullmatch(p.name) and p.is_file()):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        except OSError:
            continue     # gone, or unreadable: make_disks reports what it cannot remove
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise ConfigError(file, key, f"a run directory no other run is using ({directory})",
                              f"{path}, which an open disk holds (another run of this host?)") from None
        finally:
            os.close(fd)


def _check_directory(path: Path, file: str, key: str) -> None:
    """That `path` is a directory files can be made in, or can be made one."""
    existing = Path(os.path.abspath(path))
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(file, key, f"a place for its files in {path}", f"{existing}, which is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(file, key, f"a place for its files in {path}", f"{existing}, which is not writable")


def _creation_order(plans: list[DiskPlan], file: str) -> list[DiskPlan]:
    """The plans whose base is to be created, each after the one its parent is (if any)."""
    todo = [p for p in plans if p.create]
    made: set[Path] = set()
    order: list[DiskPlan] = []
    while todo:
        ready = [p for p in todo if p.base.parent is None or p.base.parent not in {q.base.path for q in todo}]
        if not ready:
            raise ConfigError(file, f"{todo[0].key}.parent", "a chain of differencing disks that ends in a disk "
                              "with no parent", f"a loop through {todo[0].base.path}")
        for p in ready:
            made.add(p.base.path)
            order.append(p)
        todo = [p for p in todo if p not in ready]
    return order
