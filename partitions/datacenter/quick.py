"""Quick migration (Hyper-V on Windows Server 2008): a VM saved to shared storage on its host, the
ownership of its disks and saved state moved to another host, and the VM restored there
(docs/datacenter.md, "Quick migration").

    move = quick_move(dc, "db", to="host-b")   # at the source host's time: the save happens now
    dc.run("20s")
    move.downtime_ns, move.outcome             # e.g. 8_100_..., "completed"

The steps, in simulated time (t0 is when quick_move is called, on the VM's host):

1. t0, source: the VM is saved (VirtualMachine.save) to `<storage directory>/<vm>.hvsav` and
   leaves the source. Its whole memory crosses the source's link to the storage (Hyper-V writes
   all of it; the file itself holds only the pages that are not zero): the save ends at t1, when
   the last byte reached the storage, queued behind the host's other traffic on that link.
2. t2 = t1 + failover: the cluster moves the storage resource (FAILOVER_NS) and hands the VM to
   the target, a message posted through the datacenter (Datacenter.post). There the disks and the
   saved state are transferred to the target (Storage.transfer, logged).
3. The memory crosses the target's link back (t2 to t3), and at t3 the target builds the VM
   (ManagedHost.incoming, which takes its disks for the target) and restores the file into it:
   the VM runs again on the target. Downtime is t3 - t0.

A save that fails changes nothing: the VM runs on where it was (QuickMigrationError). A restore
that fails on the target leaves nothing there, and the cluster fails the VM back: ownership
returns to the source after another failover, the source reads the same file over its own link
and restores it (outcome "failed back"; downtime counts to that restore). If that fails too, the
VM stays saved in its file on the storage, on no host (outcome "failed", logged).
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import msgpack

from partitions.datacenter.link import Message

#: The cluster's move of the storage resource between the save and the restore: the source takes
#: its disk resource offline (the volume dismounted, its SCSI-3 persistent reservation released),
#: the target brings it online (registers, reserves, mounts). Microsoft's KB 171277 says only that
#: resources come online "very quickly" to "several seconds" by type; the 2006 quick-migration
#: table this reproduces is an exact multiple of memory over bandwidth in every entry, which
#: leaves at most ~0.2 s at its smallest (512 MB over 4 Gb FC, 2 s). 100 ms is an assumption
#: within that bound, not a measured figure; quick_move takes another with failover_ns.
FAILOVER_NS = 100_000_000

#: Message kinds on the hosts (HostNode.handle): the hand-off to the host that restores, and the
#: restore itself once the memory has crossed that host's link.
_HANDOFF, _RESTORE = "quick-move", "quick-move.restore"


class QuickMigrationError(RuntimeError):
    """A quick migration that cannot start (the VM stays where it is, as it was)."""


@dataclass
class QuickMigration:
    """One quick migration, as it goes. Times are simulated ns; None until reached."""
    vm: str
    source: str
    target: str
    storage: str
    path: str                        # the saved-state file, on the storage
    memory_bytes: int                # what crosses each link (the VM's whole memory)
    file_bytes: int                  # what the file holds (pages that are not zero, and the state)
    disks: list[str]                 # the VM's disks on the storage (relative to its directory)
    failover_ns: int
    started_ns: int                  # t0: the save
    saved_ns: int                    # t1: the memory is on the storage
    owned_ns: int | None = None      # t2: the target owns the disks
    restored_ns: int | None = None   # t3: the VM runs again
    restored_on: str | None = None
    outcome: str = "pending"         # "completed", "failed back", "failed"
    error: str | None = None         # why the target's restore failed
    steps: list[dict[str, Any]] = field(default_factory=list)

    @property
    def downtime_ns(self) -> int | None:
        return None if self.restored_ns is None else self.restored_ns - self.started_ns

    def record(self) -> dict[str, Any]:
        """As plain data, for the summary."""
        return {**asdict(self), "kind": "quick", "downtime_ns": self.downtime_ns}


def _node_of(dc, vm: str):
    for node in dc.hosts.values():
        managed = getattr(node, "managed", None)
        if managed is not None and vm in managed.vms:
            return node
    raise QuickMigrationError(f"no host of the datacenter has a VM named {vm!r}")


def quick_move(datacenter, vm, to: str, *, failover_ns: int = FAILOVER_NS) -> QuickMigration:
    """Quick-migrate `vm` (a name or a VirtualMachine of `datacenter`) to host `to`: saved now on
    its host, restored on `to` when the memory has crossed both hosts' links to the storage and
    the cluster has moved the storage (see the module's docstring). Returns the migration's
    record, which fills in as the datacenter runs (it is also in `datacenter.quick_migrations`
    and the summary). Everything is checked before the save: QuickMigrationError, and the VM
    runs on; a save that fails raises it too, the VM running on as it was."""
    from partitions.vm import VmState
    name = vm if isinstance(vm, str) else vm.name
    source = _node_of(datacenter, name)
    machine = source.managed.vms[name]
    target = datacenter.hosts.get(to)
    if target is None or getattr(target, "managed", None) is None:
        raise QuickMigrationError(f"quick migration of VM {name!r}: no host {to!r} in this process to move it to")
    if target is source:
        raise QuickMigrationError(f"quick migration of VM {name!r}: it is on host {to!r} already")
    if name in target.managed.vms:
        raise QuickMigrationError(f"quick migration of VM {name!r}: host {to!r} has a VM of that name")
    if machine.state not in (VmState.RUNNING, VmState.PAUSED):
        raise QuickMigrationError(f"quick migration of VM {name!r}: it is {machine.state.value}; a quick migration "
                                  "saves a VM that is Running or Paused")
    storage, disks = _storage_of(datacenter, source.name, to, name, machine)
    path = storage.path(f"{name}.hvsav")
    t0 = source.now
    try:
        machine.save(path)
    except Exception as exc:
        _log(datacenter, source, "migration.quick_failed", vm=name, to=to, error=f"{type(exc).__name__}: {exc}")
        raise QuickMigrationError(f"quick migration of VM {name!r}: the save failed, it runs on on host "
                                  f"{source.name!r}: {exc}") from exc
    storage.open(path, source.name)        # the saved state is the source's until the hand-off
    memory = machine.worker.memory_bytes if machine.worker is not None else machine.spec.memory
    # The VM is saved: its partition goes (its VSPs let go of its disks) and it leaves the source.
    machine.turn_off()
    machine.off_reason = f"quick-migrated to {to}"
    if machine.on_release is not None:
        machine.on_release(machine, f"quick migration to {to}")
    t1 = storage.links[source.name].cross(t0, memory)
    move = QuickMigration(name, source.name, to, storage.name, str(path), memory, os.path.getsize(path),
                          disks, failover_ns, t0, t1)
    move.steps.append({"time_ns": t0, "host": source.name, "step": "save", "until_ns": t1})
    datacenter.quick_migrations.append(move)
    _log(datacenter, source, "migration.quick_saved", vm=name, to=to, memory_bytes=memory,
         file_bytes=move.file_bytes, saved_ns=t1)
    _hand_off(datacenter, move, source, target, t1 + failover_ns)
    return move


def _storage_of(dc, source: str, target: str, vm: str, machine) -> tuple[Any, list[str]]:
    """The storage the VM's saved state goes to, and its disks there: every disk of the VM must be
    on one storage both hosts reach (the VM's own disks may be none: then the one storage both
    hosts reach)."""
    paths = [d.path for d in machine.config.disks] if getattr(machine, "config", None) is not None else []
    both = [s for s in dc.storage.values() if source in s.links and target in s.links]
    on = {s.name for p in paths for s in dc.storage.values() if s.holds(p)}
    for p in paths:
        if not any(s.holds(p) for s in dc.storage.values()):
            raise QuickMigrationError(f"quick migration of VM {vm!r}: its disk {p} is on host {source!r} alone, not "
                                      "on a shared storage the target can take over")
    candidates = [s for s in both if not on or s.name in on]
    if len(on) > 1 or not candidates or (not on and len(candidates) > 1):
        reach = ", ".join(sorted(s.name for s in both)) or "none"
        raise QuickMigrationError(f"quick migration of VM {vm!r}: it needs one storage that hosts {source!r} and "
                                  f"{target!r} both have a link to and that holds all its disks (its disks are on "
                                  f"{', '.join(sorted(on)) or 'no storage'}; both hosts reach: {reach})")
    storage = candidates[0]
    return storage, [storage._show(storage.path(p)) for p in paths]


def _hand_off(dc, move: QuickMigration, frm, to, arrival: int) -> None:
    """The cluster hands the VM to host `to` at `arrival`: a message posted through the datacenter."""
    to.handle(_HANDOFF, lambda m: _arrive(dc, m))
    to.handle(_RESTORE, lambda m: _restore(dc, m))
    payload = msgpack.packb({"index": dc.quick_migrations.index(move)})
    message = Message(frm.name, to.name, _HANDOFF, payload, len(payload), frm.now, frm.sent, frm.now, arrival)
    frm.sent += 1
    dc.post(message)


def _arrive(dc, message: Message) -> None:
    """On the host that restores, at the hand-off: the storage is its now; the memory crosses its link."""
    move = dc.quick_migrations[msgpack.unpackb(message.payload)["index"]]
    node = dc.hosts[message.dst]
    storage = dc.storage[move.storage]
    now = node.now
    if move.owned_ns is None:
        move.owned_ns = now
    for disk in move.disks + [storage._show(Path(move.path))]:
        storage.transfer(disk, to=node.name)
    done = storage.links[node.name].cross(now, move.memory_bytes)
    move.steps.append({"time_ns": now, "host": node.name, "step": "read", "until_ns": done})
    payload = msgpack.packb({"index": dc.quick_migrations.index(move)})
    node.accept([Message(node.name, node.name, _RESTORE, payload, len(payload), now, node.sent, now, done)])
    node.sent += 1


def _restore(dc, message: Message) -> None:
    """At the end of the read: the VM is built on this host and its saved state restored."""
    from partitions.savedstate import SavedStateReader
    move = dc.quick_migrations[msgpack.unpackb(message.payload)["index"]]
    node = dc.hosts[message.dst]
    managed = node.managed
    try:
        with SavedStateReader(move.path, kind="saved-state") as reader:
            config = reader.load("config")
        vm = managed.incoming(config)
        vm.turn_off()                      # the shell incoming built goes: restore builds its own from the file
        managed.restore_vm(move.path)
    except Exception as exc:
        vm = managed.vms.get(move.vm)
        if vm is not None:                 # nothing of the VM stays on a host that could not restore it
            if vm.partition is not None:
                vm.turn_off()
            if vm.on_release is not None:
                vm.on_release(vm, "quick migration: restore failed")
        why = f"{type(exc).__name__}: {exc}"
        move.steps.append({"time_ns": node.now, "host": node.name, "step": "restore failed", "error": why})
        _log(dc, node, "migration.quick_restore_failed", vm=move.vm, error=why)
        if node.name == move.target:
            move.error = why
            _hand_off(dc, move, node, dc.hosts[move.source], node.now + move.failover_ns)   # fail back
        else:
            move.outcome = "failed"
            _log(dc, node, "migration.quick_failed", vm=move.vm, error=why, saved_in=move.path)
        return
    move.restored_ns, move.restored_on = node.now, node.name
    move.outcome = "completed" if node.name == move.target else "failed back"
    move.steps.append({"time_ns": node.now, "host": node.name, "step": "restored"})
    _log(dc, node, "migration.quick", vm=move.vm, source=move.source, target=move.target, outcome=move.outcome,
         downtime_ns=move.downtime_ns, memory_bytes=move.memory_bytes, file_bytes=move.file_bytes)


def _log(dc, node, event: str, **fields) -> None:
    log = getattr(node, "log", None)
    if log is not None:
        log.event(event, **fields)
