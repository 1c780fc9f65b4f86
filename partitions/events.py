"""What a managed host writes to its event log (docs/events.md lists every event and its fields):
its own events, and what the parent's VMBus service, the devices' VSPs and the guests' VMBus
stacks log, renamed into the log's families and carrying the VM's name.

Names are dotted: `vm.*`, `disk.*`, `checkpoint.*`, `savedstate.*`, `hypercall.*`, `driver.*` for
the management's own events; `channel.broken` and `device.failed` for a failure contained to one
channel; `vmbus.<event>` for the parent's channel manager; `device.<device>.<event>` for what a
VSP logs through its context (a plugin's too); `guest.<event>` for the guest's VMBus stack and its
VSCs. A device's or guest's own event text becomes `<event>` in lower case with every run of other
characters than letters and digits turned into one `_` ("storvsp cannot complete" ->
`storvsp_cannot_complete`).

Bounds: what guests and devices log is what a guest can make happen, so each (VM, event) of those
families is written at most LIMIT times; the next one writes one `log.suppressed` instead.
"""
from __future__ import annotations

import enum
import pathlib
import re
import uuid
from typing import Any, Callable

#: Lines one VM may cause per event name of the vmbus, device and guest families.
LIMIT = 100

# Fields the log itself or the forwarding sets; a device's own field of that name is kept as `_name`.
_OURS = frozenset({"event", "t_ns", "vm", "device", "relid"})


class HostEvents:
    """The event log of one managed host. `log` is an EventLog or None (then nothing is done);
    `vm_name(partition_id)` names the VM of a partition (None for the root)."""

    def __init__(self, log, vm_name: Callable[[int], str | None], vmbus=None):
        self.log = log
        self._vm_name = vm_name
        self._vmbus = vmbus
        self._counts: dict[tuple[str | None, str], int] = {}
        self._failed: dict[int, int] = {}   # partition id -> failed hypercalls already reported

    @property
    def enabled(self) -> bool:
        return self.log is not None

    def emit(self, name: str, **fields: Any) -> None:
        """One of the host's own events."""
        if self.log is not None:
            self.log.event(name, **fields)

    # ---- forwarded ------------------------------------------------------------------------------
    def from_vmbus(self, partition_id: int, event: str, fields: dict, device: str | None) -> None:
        """An entry of the parent's VMBus service log (its ParentVmbus.on_log)."""
        if self.log is None:
            return
        vm = self._vm_name(partition_id)
        out = _own(fields)
        if event in ("channel broken", "device failed"):
            name = "channel.broken" if event == "channel broken" else "device.failed"
            self._bounded(vm, name, device=device, **out)
            return
        if device is not None:
            self._bounded(vm, f"device.{device}.{slug(event)}", device=device, **out)
            return
        relid = fields.get("relid")
        known = self._device_of(partition_id, relid) if relid is not None else None
        if known is not None:
            out["device"] = known
        self._bounded(vm, f"vmbus.{slug(event)}", **out)

    def from_guest(self, vm: str, event: str, fields: dict) -> None:
        """What a guest's VMBus stack or one of its VSCs logged."""
        if self.log is not None:
            self._bounded(vm, f"guest.{slug(event)}", **_own(fields))

    def hypercalls(self, introspect, root_id: int) -> None:
        """`hypercall.failed` for each partition whose count of failed hypercalls grew since the
        last call (the management calls it once per progress step)."""
        if self.log is None:
            return
        for pid in introspect.partition_ids():
            total = introspect.partition_info(pid)["hypercalls_failed"]
            before = self._failed.get(pid, 0)
            if total > before:
                self.emit("hypercall.failed", vm=None if pid == root_id else self._vm_name(pid), partition=pid,
                          count=total - before, total=total)
            self._failed[pid] = total

    # ---- helpers ----------------------------------------------------------------------------------
    def _bounded(self, vm: str | None, name: str, **fields: Any) -> None:
        key = (vm, name)
        n = self._counts.get(key, 0) + 1
        self._counts[key] = n
        if n <= LIMIT:
            self.log.event(name, vm=vm, **fields)
        elif n == LIMIT + 1:
            self.log.event("log.suppressed", vm=vm, name=name, after=LIMIT)

    def _device_of(self, partition_id: int, relid: Any) -> str | None:
        child = getattr(self._vmbus, "children", {}).get(partition_id)
        channel = child.channels.get(relid) if child is not None and isinstance(relid, int) else None
        return channel.device.name if channel is not None else None


def slug(text: str) -> str:
    """An event name part from a device's or guest's own event text."""
    return re.sub(r"[^a-z0-9]+", "_", str(text).lower()).strip("_") or "event"


def _own(fields: dict) -> dict:
    """A device's fields, safe to write: names the log uses are kept as `_name`, values the log
    cannot write deterministically become their type's name in angle brackets."""
    return {(f"_{k}" if k in _OURS and k != "relid" else str(k)): _value(v) for k, v in fields.items()}


def _value(v: Any) -> Any:
    if v is None or isinstance(v, (bool, int, float, str, bytes, bytearray, enum.Enum, uuid.UUID, pathlib.PurePath)):
        return v
    if isinstance(v, (list, tuple)):
        return [_value(x) for x in v]
    if isinstance(v, (set, frozenset)):
        return sorted(str(x) for x in v)
    if isinstance(v, dict):
        return {str(k): _value(x) for k, x in v.items()}
    return f"<{type(v).__name__}>"
