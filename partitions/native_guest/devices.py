"""The intercept bus of a VM: the emulated devices that answer its port I/O, what each access
costs, and how many accesses each device took.

An access to an I/O port is not something the hypervisor answers: the VP exits, the exit goes out
to the parent's VM worker, and the worker's device model answers (the unenlightened path that
Virtual Server and QEMU devices take). So every access costs `exit_ns` (the cost model's
exit-to-parent time) plus the device's own `access_ns`, plus any time the device spends on that
access beyond it (a disk fetching sectors: `busy_ns()`). The VP waits all of it out; the exit and
the device's access time are the parent's CPU (`parent_ns`), the medium's time is not (`medium_ns`). A port no device claims reads all ones (the ISA bus floats high) and still costs the
exit: the parent had to look before it could say nobody is there.

Both kinds of guest use the same bus: a native guest's `in`/`out` (partitions/native_guest/cpu.py)
and a Python guest's `await ctx.port_in(...)` / `ctx.port_out(...)` (hypervisor/guest.py), so an
access costs the same either way. The bus of a partition is found with `bus_of(partition)`.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable

from hypervisor.guest import INTERCEPTS

#: The cost model's exit that goes out to the parent (cost-model.md §1): 4 us.
PARENT_EXIT_NS = 4000
NO_DEVICE = "none"   # the name unclaimed accesses are counted under


@dataclass(frozen=True)
class Claim:
    """A device's port range [base, base + count) and how to reach it."""

    name: str
    base: int
    count: int
    read: Callable[[int, int], int]            # (offset in the range, size in bytes) -> value
    write: Callable[[int, int, int], None]     # (offset, size, value)
    access_ns: int
    device: Any = None

    def busy(self) -> int:
        busy = getattr(self.device, "busy_ns", None)
        return busy() if busy is not None else 0


class IoBus:
    """The port I/O space of one VM: claims by range, and per device the accesses taken, the
    parent CPU time they cost (exit plus device) and the medium time the VP waited on top. Ranges
    do not overlap (register refuses)."""

    def __init__(self, exit_ns: int = PARENT_EXIT_NS):
        self.exit_ns = exit_ns
        self._claims: list[Claim] = []
        self._by_port: dict[int, Claim] = {}
        self.accesses: Counter[str] = Counter()
        self.parent_ns: Counter[str] = Counter()
        self.medium_ns: Counter[str] = Counter()

    def register(self, name: str, base: int, count: int, *, read: Callable[[int, int], int],
                 write: Callable[[int, int, int], None], access_ns: int, device: Any = None) -> Claim:
        if count <= 0 or base < 0 or base + count > 0x10000:
            raise ValueError(f"device {name!r}: ports {base:#x}+{count} are outside the 64 KiB I/O space")
        for port in range(base, base + count):
            other = self._by_port.get(port)
            if other is not None:
                raise ValueError(f"device {name!r}: port {port:#x} is already {other.name!r}'s")
        claim = Claim(name, base, count, read, write, access_ns, device)
        self._claims.append(claim)
        for port in range(base, base + count):
            self._by_port[port] = claim
        return claim

    def attach(self, device) -> None:
        """Register a device that names its own ranges: `device.claims()` yields
        (name, base, count, read, write, access_ns)."""
        for name, base, count, read, write, access_ns in device.claims():
            self.register(name, base, count, read=read, write=write, access_ns=access_ns, device=device)

    def claimed(self, port: int) -> bool:
        return port in self._by_port

    def devices(self) -> list[str]:
        return [c.name for c in self._claims]

    def port_in(self, port: int, size: int) -> tuple[int, int]:
        """(value, ns the access cost) of reading `size` bytes (1, 2 or 4) at `port`."""
        claim = self._by_port.get(port)
        if claim is None:
            return (1 << 8 * size) - 1, self._count(NO_DEVICE, 0, 0)
        value = claim.read(port - claim.base, size) & ((1 << 8 * size) - 1)
        return value, self._count(claim.name, claim.access_ns, claim.busy())

    def port_out(self, port: int, size: int, value: int) -> int:
        """The ns writing `value` (`size` bytes) to `port` cost."""
        claim = self._by_port.get(port)
        if claim is None:
            return self._count(NO_DEVICE, 0, 0)
        claim.write(port - claim.base, size, value & ((1 << 8 * size) - 1))
        return self._count(claim.name, claim.access_ns, claim.busy())

    def _count(self, name: str, device_ns: int, medium_ns: int) -> int:
        cpu = self.exit_ns + device_ns
        self.accesses[name] += 1
        self.parent_ns[name] += cpu
        if medium_ns:
            self.medium_ns[name] += medium_ns
        return cpu + medium_ns


# The bus of each partition that has one, kept where a Python guest's intercept call finds it
# (hypervisor/guest.py, a layer below). Weak: a torn-down partition takes its bus with it.
_BUSES = INTERCEPTS


def bus_of(partition, *, exit_ns: int = PARENT_EXIT_NS) -> IoBus:
    """The partition's intercept bus, made (empty) on first use."""
    bus = _BUSES.get(partition)
    if bus is None:
        bus = _BUSES[partition] = IoBus(exit_ns)
    return bus
