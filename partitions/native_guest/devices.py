"""The intercept bus of a VM: the emulated devices that answer its port I/O and MMIO, what each
access costs, and how many accesses each device took.

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

MMIO works the same way for guest-physical ranges that are not the VM's RAM: a device claims whole
pages (the emulator maps pages, so a page belongs to one device or none), the claim is refused if it
overlaps the VM's RAM or another claim, and a load or store there costs what a port access costs.
Unlike a port, a GPA no device claims is not floating bus: it is nothing at all, and an access there
faults the VP (`mmio_read`/`mmio_write` raise MmioUnclaimed).

Containment: a device model is parent code, and a bug in it (an exception out of its read, write
or busy_ns) must not take the host down nor pass for the guest's own failure. The bus turns it into
DeviceFailed naming the device, records it (`failed`), tells `on_failure` (the VM worker crashes
that VM), and from then on every access to that device raises DeviceFailed again, so a guest that
swallows the first one does not run on against a broken device.

Interrupts: a device asserts and deasserts an interrupt line (`raise_irq(device, line)`,
`lower_irq(device, line)`), level-triggered: the line stays up until the device's cause is cleared
(by the guest, through the device's registers). The routing is a PC's legacy one, fixed and kept
simple: ISA IRQ n (0-15) is vector IRQ_VECTOR_BASE + n (0x20 + n, where a legacy OS programs its
PIC or IOAPIC), delivered to VP 0; the IDE disk uses IRQ 14 (vector 0x2E), the legacy NIC IRQ 11
(0x2B). A line going up is the parent's device model asserting the interrupt with a hypercall
(HvCallAssertVirtualInterrupt on Hyper-V: ASSERT_NS, the cost model's 1 us, the parent's CPU,
counted in `parent_ns` under the device) and tells the core (hv_vp_device_interrupt), which
charges the VP the cost model's interrupt (1 us) and wakes it if it is halted. A native guest takes the vector through its
IDT when IF is set (cpu.py) and ends it with an APIC EOI (a write to the x2APIC EOI MSR, 0x80B);
a Python guest waits with `await ctx.wait_irq(line)`, which charges the same EOI. The APIC is the
hypervisor's, so the EOI is an exit handled there (EOI_NS, the cost model's 1 us), not the
parent's: it counts in `eois` and `hypervisor_ns`, not in `parent_ns`.
"""
from __future__ import annotations

import weakref
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable

from hypervisor import _binding
from hypervisor.guest import INTERCEPTS

#: The cost model's exit that goes out to the parent (cost-model.md §1): 4 us.
PARENT_EXIT_NS = 4000
#: An APIC EOI: an exit the hypervisor handles itself (cost-model.md §1: 1 us), not the parent.
EOI_NS = 1000
#: The parent asserting a line into its child: a simple hypercall (cost-model.md §1: 1 us).
ASSERT_NS = 1000
#: Legacy interrupt routing: ISA IRQ n is vector IRQ_VECTOR_BASE + n on VP IRQ_VP.
IRQ_LINES, IRQ_VECTOR_BASE, IRQ_VP = 16, 0x20, 0
IDE_IRQ, NIC_IRQ = 14, 11
NO_DEVICE = "none"   # the name unclaimed accesses are counted under
MMIO_PAGE = 0x1000   # MMIO claims are whole pages of this size
GPA_LIMIT = 1 << 52  # the guest-physical address space (52-bit, as x86-64's)


class MmioUnclaimed(LookupError):
    """A guest touched a GPA that is neither its RAM nor a device's: its VP faults."""


class DeviceFailed(RuntimeError):
    """An emulated device's own code raised while it served an access: the device's fault, not
    the guest's. Raised out of the access (so the guest's VP stops) and kept on the bus."""

    def __init__(self, device: str, detail: str):
        super().__init__(f"emulated device {device!r} failed: {detail}")
        self.device, self.detail = device, detail


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
        self._mmio: list[Claim] = []              # by base, never overlapping
        self._mmio_page: dict[int, Claim] = {}    # GPA page number -> its claim
        # Whether a GPA page is the VM's RAM (set by bus_of): MMIO claims must stay clear of it.
        self.is_ram: Callable[[int], bool] = lambda page: False
        self.failed: DeviceFailed | None = None   # the first device failure, kept
        #: on_failure(DeviceFailed): told once, at the first device failure (the VM worker crashes the VM)
        self.on_failure: Callable[[DeviceFailed], None] | None = None
        # Interrupt lines: line -> the device holding it up (one device a line: no sharing).
        self._lines: dict[int, str] = {}
        self._owners: dict[int, str] = {}         # line -> the device that last raised it
        self.irq_seq = 0                          # rises of any line so far (an executor looks for news)
        self.interrupts: Counter[str] = Counter()     # rises per device
        self.eois: Counter[str] = Counter()           # EOIs per device (the interrupts the guest ended)
        self.hypervisor_ns: Counter[str] = Counter()  # the EOI exits' time, per device
        #: on_irq(line): told when a line goes up (bus_of: the core charges and wakes the VP)
        self.on_irq: Callable[[int], None] | None = None

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
        (name, base, count, read, write, access_ns). A device with an interrupt line is told its
        bus (`device.connect(bus)`) so it can raise it."""
        connect = getattr(device, "connect", None)
        if connect is not None:
            connect(self)
        for name, base, count, read, write, access_ns in device.claims():
            self.register(name, base, count, read=read, write=write, access_ns=access_ns, device=device)
        # A device with registers in memory names them the same way: (name, gpa, size, read,
        # write, access_ns).
        for name, gpa, size, read, write, access_ns in getattr(device, "mmio_claims", lambda: ())():
            self.register_mmio(name, gpa, size, read=read, write=write, access_ns=access_ns, device=device)

    def register_mmio(self, name: str, gpa: int, size: int, *, read: Callable[[int, int], int],
                      write: Callable[[int, int, int], None], access_ns: int, device: Any = None) -> Claim:
        """Claim the GPA range [gpa, gpa + size) (whole pages) for a device. Refused (ValueError,
        nothing claimed) if it is not page-aligned, leaves the address space, or overlaps the VM's
        RAM or another device's range."""
        if size <= 0 or gpa < 0 or gpa % MMIO_PAGE or size % MMIO_PAGE or gpa + size > GPA_LIMIT:
            raise ValueError(f"device {name!r}: MMIO range {gpa:#x}+{size:#x} is not whole "
                             f"{MMIO_PAGE:#x}-byte pages inside the guest-physical address space")
        pages = range(gpa // MMIO_PAGE, (gpa + size) // MMIO_PAGE)
        for page in pages:
            other = self._mmio_page.get(page)
            if other is not None:
                raise ValueError(f"device {name!r}: GPA {page * MMIO_PAGE:#x} is already {other.name!r}'s")
            if self.is_ram(page):
                raise ValueError(f"device {name!r}: GPA {page * MMIO_PAGE:#x} is the VM's RAM")
        claim = Claim(name, gpa, size, read, write, access_ns, device)
        self._mmio.append(claim)
        self._mmio.sort(key=lambda c: c.base)
        for page in pages:
            self._mmio_page[page] = claim
        return claim

    def mmio_claims(self) -> list[Claim]:
        """The MMIO claims, by address (the emulator maps each range once)."""
        return list(self._mmio)

    def mmio_read(self, gpa: int, size: int) -> tuple[int, int]:
        """(value, ns the access cost) of loading `size` bytes (1, 2, 4 or 8) at `gpa`."""
        claim = self._mmio_claim(gpa, size)
        value = self._guarded(claim, claim.read, gpa - claim.base, size) & ((1 << 8 * size) - 1)
        return value, self._count(claim.name, claim.access_ns, self._guarded(claim, claim.busy))

    def mmio_write(self, gpa: int, size: int, value: int) -> int:
        """The ns storing `value` (`size` bytes) at `gpa` cost."""
        claim = self._mmio_claim(gpa, size)
        self._guarded(claim, claim.write, gpa - claim.base, size, value & ((1 << 8 * size) - 1))
        return self._count(claim.name, claim.access_ns, self._guarded(claim, claim.busy))

    def _mmio_claim(self, gpa: int, size: int) -> Claim:
        if size not in (1, 2, 4, 8):
            raise ValueError(f"an MMIO access is 1, 2, 4 or 8 bytes, not {size}")
        claim = self._mmio_page.get(gpa // MMIO_PAGE)
        if claim is None or gpa + size > claim.base + claim.count:
            raise MmioUnclaimed(f"no device claims GPA {gpa:#x}+{size} (and it is not the VM's RAM)")
        return claim

    # ---- interrupt lines ---------------------------------------------------------------------------
    def raise_irq(self, device: str, line: int) -> None:
        """`device` asserts IRQ `line` (level: it stays up until lower_irq). Raising a line that is
        up already changes nothing; a line another device holds is refused (no sharing)."""
        holder = self._lines.get(self._check_line(line))
        if holder is not None:
            if holder != device:
                raise ValueError(f"device {device!r}: IRQ {line} is {holder!r}'s")
            return
        self._lines[line] = self._owners[line] = device
        self.irq_seq += 1
        self.interrupts[device] += 1
        self.parent_ns[device] += ASSERT_NS
        if self.on_irq is not None:
            self.on_irq(line)

    def lower_irq(self, device: str, line: int) -> None:
        """`device` deasserts IRQ `line` (its cause was cleared)."""
        if self._lines.get(self._check_line(line)) == device:
            del self._lines[line]

    @staticmethod
    def _check_line(line: int) -> int:
        if not (isinstance(line, int) and 0 <= line < IRQ_LINES):
            raise ValueError(f"IRQ line {line!r}: expected 0-{IRQ_LINES - 1}")
        return line

    def asserted(self, line: int) -> bool:
        return line in self._lines

    def asserted_lines(self) -> list[int]:
        return sorted(self._lines)

    @staticmethod
    def vector(line: int) -> int:
        """The vector IRQ `line` is routed to."""
        return IRQ_VECTOR_BASE + line

    @staticmethod
    def line_of(vector: int) -> int | None:
        """The IRQ line routed to `vector`, or None if none is."""
        line = vector - IRQ_VECTOR_BASE
        return line if 0 <= line < IRQ_LINES else None

    def eoi(self, line: int | None) -> int:
        """The guest ended the interrupt of `line` (None: no device's) with an APIC EOI: the ns
        that exit costs (the hypervisor's, counted under the line's device)."""
        name = self._owners.get(line, NO_DEVICE) if line is not None else NO_DEVICE
        self.eois[name] += 1
        self.hypervisor_ns[name] += EOI_NS
        return EOI_NS

    def claimed(self, port: int) -> bool:
        return port in self._by_port

    def devices(self) -> list[str]:
        return [c.name for c in self._claims + self._mmio]

    def port_in(self, port: int, size: int) -> tuple[int, int]:
        """(value, ns the access cost) of reading `size` bytes (1, 2 or 4) at `port`."""
        claim = self._by_port.get(port)
        if claim is None:
            return (1 << 8 * size) - 1, self._count(NO_DEVICE, 0, 0)
        value = self._guarded(claim, claim.read, port - claim.base, size) & ((1 << 8 * size) - 1)
        return value, self._count(claim.name, claim.access_ns, self._guarded(claim, claim.busy))

    def port_out(self, port: int, size: int, value: int) -> int:
        """The ns writing `value` (`size` bytes) to `port` cost."""
        claim = self._by_port.get(port)
        if claim is None:
            return self._count(NO_DEVICE, 0, 0)
        self._guarded(claim, claim.write, port - claim.base, size, value & ((1 << 8 * size) - 1))
        return self._count(claim.name, claim.access_ns, self._guarded(claim, claim.busy))

    def _guarded(self, claim: Claim, call, *args):
        """`call(*args)` of the device behind `claim`; whatever it raises becomes DeviceFailed
        naming the device (recorded, and told to on_failure the first time). A device that
        failed once fails every later access."""
        failed = self.failed
        if failed is not None and failed.device == claim.name:
            raise failed
        try:
            return call(*args)
        except Exception as exc:  # noqa: BLE001 - any bug of a device model is that device's failure
            failure = DeviceFailed(claim.name, f"{type(exc).__name__}: {exc}")
            if self.failed is None:
                self.failed = failure
                if self.on_failure is not None:
                    self.on_failure(failure)
            raise failure from exc

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
        # Weak: the bus is the value of a weak-keyed entry, and must not keep its key alive.
        ref = weakref.ref(partition)

        def is_ram(page: int) -> bool:
            p = ref()
            return p is not None and page in set(p.host.introspect.reach_columns(p)[0])
        bus.is_ram = is_ram

        def on_irq(line: int) -> None:
            p = ref()
            if p is not None:
                _binding.hv_vp_device_interrupt(p.host._h, p.id, IRQ_VP)
        bus.on_irq = on_irq
    return bus


class MmioScratch:
    """A test device with registers in memory: one page at `gpa`. Offset 0 is a scratch register
    (reads give back what was last written, at any size), offset 8 a counter (each read returns
    how many reads it had before; a write sets it). Each access takes `access_ns` of the parent."""

    def __init__(self, gpa: int, access_ns: int = 500, name: str = "scratch"):
        self.gpa, self.access_ns, self.name = gpa, access_ns, name
        self.scratch = 0
        self.counter = 0

    def mmio_claims(self):
        yield (self.name, self.gpa, MMIO_PAGE, self._read, self._write, self.access_ns)

    def claims(self):
        return ()

    def _read(self, offset: int, size: int) -> int:
        if offset == 8:
            self.counter += 1
            return self.counter - 1
        return self.scratch >> 8 * offset if offset < 8 else 0

    def _write(self, offset: int, size: int, value: int) -> None:
        if offset == 8:
            self.counter = value
        elif offset < 8:
            mask = ((1 << 8 * size) - 1) << 8 * offset
            self.scratch = (self.scratch & ~mask | value << 8 * offset) & 0xFFFF_FFFF_FFFF_FFFF
