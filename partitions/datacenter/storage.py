"""Shared storage of a datacenter: a SAN location (iSCSI or Fibre Channel) several hosts reach
over links of their own, whose disks are each owned by one host at a time (docs/datacenter.md,
"Shared storage").

    san = dc.storage["san"]
    san.owner("db.vhd")                    # "host-a": the host of the VM that uses it
    san.transfer("db.vhd", to="host-b")    # ownership moves (logged); refused while a VM uses it
    san.links["host-a"].busy_until         # the host's link: its I/O and a migration's memory queue on it

A disk is on a storage when its path lies under the storage's directory. The host that builds a
VM with such a disk takes it (`HostStorage.attach`): a second host is refused with
StorageOwnershipError until the disk is transferred to it. Every request of a disk on a storage
crosses its host's link before its medium (drivers/storage/vsp.py, native/storvsp.c: the same
hv_storage_link_cross), and so does whatever else a host sends to the storage (a quick
migration's memory, partitions/datacenter/quick.py): one queue per host and storage.

Invariants: a disk has at most one owner; the owner changes only through `transfer`, and never
while a VM of the owner still has the disk open; every change is in `transfers` and the event log.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from hypervisor._binding import StorageLink
from partitions.config_schema import StorageConfig


class StorageOwnershipError(RuntimeError):
    """A host opened, or a transfer named, a disk of a shared storage it may not have now."""


class Storage:
    """Storage `config` of a datacenter: its directory (made if need be), one StorageLink per host
    it is linked to, and who owns each disk. `clock()` is the simulated time changes are logged
    at; `in_use(host, vm)` says whether VM `vm` still holds its disks open on `host`."""

    def __init__(self, config: StorageConfig, *, clock: Callable[[], int] = lambda: 0, event_log=None,
                 in_use: Callable[[str, str], bool] = lambda host, vm: False) -> None:
        self.config = config
        self.name, self.kind, self.directory = config.name, config.kind, Path(config.directory)
        self.links: dict[str, StorageLink] = {c.host: StorageLink(c.bandwidth, c.latency) for c in config.links}
        self._owners: dict[Path, tuple[str, str | None]] = {}   # disk -> (owning host, VM using it or None)
        self.transfers: list[dict[str, Any]] = []
        self._clock, self._log, self._in_use = clock, event_log, in_use
        self.directory.mkdir(parents=True, exist_ok=True)

    # ---- disks -----------------------------------------------------------------------------------
    def path(self, disk: str | os.PathLike) -> Path:
        """`disk` as an absolute path on this storage: relative paths are relative to its directory."""
        p = Path(os.path.abspath(self.directory / disk))
        if not p.is_relative_to(self.directory):
            raise StorageOwnershipError(f"{disk} is not on storage {self.name!r} (its files are under "
                                        f"{self.directory})")
        return p

    def holds(self, path: str | os.PathLike) -> bool:
        return Path(os.path.abspath(path)).is_relative_to(self.directory)

    def owner(self, disk: str | os.PathLike) -> str | None:
        """The host that owns `disk`, or None if no host has opened it yet."""
        entry = self._owners.get(self.path(disk))
        return entry[0] if entry is not None else None

    def open(self, disk: str | os.PathLike, host: str, vm: str | None = None) -> StorageLink:
        """Host `host` opens `disk` for VM `vm`: it takes a disk no host owns; a disk another
        host owns is refused (StorageOwnershipError), so two hosts never write one disk. Returns
        the host's link, which the disk's requests cross."""
        p = self.path(disk)
        link = self.links.get(host)
        if link is None:
            raise StorageOwnershipError(f"host {host!r} has no link to storage {self.name!r} (a [[link]] with hosts = "
                                        f'["{host}", "{self.name}"]), so it cannot open {p.name}')
        entry = self._owners.get(p)
        if entry is not None and entry[0] != host:
            raise StorageOwnershipError(
                f"disk {self._show(p)} on storage {self.name!r} is owned by host {entry[0]!r}"
                + (f" (VM {entry[1]!r} uses it)" if entry[1] else "")
                + f"; host {host!r} cannot open it until it is transferred "
                f"(datacenter.storage[{self.name!r}].transfer({self._show(p)!r}, to={host!r}))")
        self._owners[p] = (host, vm)
        return link

    def transfer(self, disk: str | os.PathLike, *, to: str) -> None:
        """Ownership of `disk` moves to host `to` (logged as storage.transfer). Refused when `to`
        has no link to this storage, or a VM of the owner still holds the disk open (save or stop
        it, or move it, first)."""
        p = self.path(disk)
        if to not in self.links:
            raise StorageOwnershipError(f"host {to!r} has no link to storage {self.name!r}: {self._show(p)} cannot "
                                        f"move to it")
        old, vm = self._owners.get(p, (None, None))
        if old == to:
            return
        if old is not None and vm is not None and self._in_use(old, vm):
            raise StorageOwnershipError(f"disk {self._show(p)} on storage {self.name!r} is in use by VM {vm!r} on "
                                        f"host {old!r}: save, stop or move the VM first")
        self._owners[p] = (to, None)
        record = {"time_ns": self._clock(), "storage": self.name, "disk": self._show(p), "from": old, "to": to}
        self.transfers.append(record)
        if self._log is not None:
            self._log.event("storage.transfer", **{k: v for k, v in record.items() if k != "time_ns"})

    def _show(self, p: Path) -> str:
        return p.relative_to(self.directory).as_posix()

    # ---- what it shows ---------------------------------------------------------------------------
    def summary(self, elapsed_ns: int) -> dict[str, Any]:
        """Each host's link (requests, bytes, time queued, share of `elapsed_ns` it was sending),
        each disk's owner, and the ownership transfers."""
        return {"name": self.name, "kind": self.kind, "directory": str(self.directory),
                "links": [{"host": host, "bandwidth_bps": link.bandwidth, "latency_ns": link.latency,
                           "requests": link.requests, "bytes": link.bytes, "queued_ns": link.queued_ns,
                           "utilisation": round(min(1.0, link.busy_ns / elapsed_ns), 6) if elapsed_ns else 0.0}
                          for host, link in self.links.items()],
                "owners": {self._show(p): host for p, (host, _) in sorted(self._owners.items())},
                "transfers": list(self.transfers)}


class HostStorage:
    """What one host sees of the datacenter's storages: ManagedHost asks it, for each disk of a VM
    it builds, for the link the disk's requests cross (None: a disk of the host's own), taking
    the disk for the host on the way (Storage.open)."""

    def __init__(self, host: str, storages: dict[str, Storage]) -> None:
        self.host, self.storages = host, storages

    def on(self, path: str | os.PathLike) -> Storage | None:
        """The storage `path` is on, or None."""
        return next((s for s in self.storages.values() if s.holds(path)), None)

    def attach(self, vm: str, paths: list) -> list[StorageLink | None] | None:
        """Open each of VM `vm`'s disks that is on a storage for this host: their links, by disk
        (None for a host's own disk), or None when none is on a storage. StorageOwnershipError
        if another host owns one (nothing is taken then)."""
        on = [self.on(p) for p in paths]
        if not any(on):
            return None
        for p, storage in zip(paths, on):   # check all first: a refusal takes nothing
            if storage is not None:
                owner = storage.owner(p)
                if owner not in (None, self.host) or self.host not in storage.links:
                    storage.open(p, self.host, vm)   # raises, naming the owner (or the missing link)
        return [storage.open(p, self.host, vm) if storage is not None else None for p, storage in zip(paths, on)]
