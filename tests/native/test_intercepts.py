"""The intercept bus (partitions/native_guest/devices.py): claims, a port without a device, what
each access costs and is counted as, and a Python guest's intercept calls reaching the same devices
at the same cost as a native guest's `in`/`out`."""
import pytest

from partitions.native_guest.cpu import UART_ACCESS_NS
from partitions.native_guest.devices import NO_DEVICE, PARENT_EXIT_NS, IoBus, bus_of
from tests.native.kernels import HALT_FOREVER, Booted, build

MS = 1_000_000


class Latch:
    """A one-register test device: reads give back the last value written, plus one."""

    def __init__(self):
        self.value = 0

    def claims(self):
        yield ("latch", 0x500, 4, lambda off, size: self.value + 1, self._write, 300)

    def _write(self, off, size, value):
        self.value = value


def test_a_port_without_a_device_reads_all_ones_costs_the_exit_and_is_counted():
    bus = IoBus()
    assert bus.port_in(0x80, 1) == (0xFF, PARENT_EXIT_NS)
    assert bus.port_in(0x80, 2) == (0xFFFF, PARENT_EXIT_NS)
    assert bus.port_in(0x80, 4) == (0xFFFF_FFFF, PARENT_EXIT_NS)
    assert bus.port_out(0x80, 1, 0x12) == PARENT_EXIT_NS
    assert bus.accesses == {NO_DEVICE: 4} and bus.parent_ns[NO_DEVICE] == 4 * PARENT_EXIT_NS


def test_claims_do_not_overlap_and_stay_in_the_io_space():
    bus = IoBus()
    bus.attach(Latch())
    with pytest.raises(ValueError, match="port 0x502 is already 'latch'"):
        bus.register("other", 0x502, 1, read=lambda o, s: 0, write=lambda o, s, v: None, access_ns=0)
    with pytest.raises(ValueError, match="outside"):
        bus.register("big", 0xFFFF, 2, read=lambda o, s: 0, write=lambda o, s, v: None, access_ns=0)
    assert bus.devices() == ["latch"]


def test_each_access_costs_the_exit_plus_the_device_and_values_are_masked_to_the_size():
    bus = IoBus(exit_ns=1000)
    latch = Latch()
    bus.attach(latch)
    assert bus.port_out(0x501, 1, 0x1FF) == 1300
    assert latch.value == 0xFF                          # an 8-bit out carries 8 bits
    assert bus.port_in(0x500, 1) == (0x00, 1300)          # 0x100 read back through an 8-bit in
    assert bus.port_in(0x500, 2) == (0x100, 1300)
    assert bus.accesses == {"latch": 3} and bus.parent_ns["latch"] == 3900


def test_a_native_guests_port_io_goes_through_the_vms_bus_and_is_counted_per_device(tmp_path):
    body = ("  mov $0x80, %dx\n  in %dx, %al\n  mov $0x3fd, %dx\n  in %dx, %al\n"
            "  mov $0x501, %dx\n  mov $41, %al\n  out %al, %dx\n  in %dx, %al\n  mov %al, 0x220000\n" + HALT_FOREVER)
    b = Booted(build(tmp_path, "bus", body))
    bus_of(b.child).attach(Latch())
    b.run(1 * MS)
    bus = bus_of(b.child)
    assert b.child.read(0x220000, 1) == b"\x2a"
    assert bus.accesses == {NO_DEVICE: 1, "uart": 1, "latch": 2}
    assert bus.parent_ns == {NO_DEVICE: PARENT_EXIT_NS, "uart": PARENT_EXIT_NS + UART_ACCESS_NS,
                             "latch": 2 * (PARENT_EXIT_NS + 300)}
    assert b.child.vp(0).info()["run_time_ns"] == b.cpu.instructions + sum(bus.parent_ns.values())


def test_a_python_guest_reaches_the_same_devices_through_intercept_calls_at_the_same_cost():
    from hypervisor.host import Host
    from partitions.worker import VmSpec, VmWorker
    host = Host(logical_processors=2, memory="256MiB", seed=3)
    child = VmWorker(host, VmSpec("py", memory="4MiB")).build()
    latch = Latch()
    bus_of(child).attach(latch)
    seen = []

    async def guest(ctx):
        start = ctx.now
        await ctx.port_out(0x500, 1, 9)
        seen.append(await ctx.port_in(0x500, 1))
        seen.append(await ctx.port_in(0x64, 1))     # no device there
        seen.append(ctx.now - start)
        await ctx.halt()

    child.vp(0).run(guest)
    host.root.resume_partition(child)
    host.run(until=1 * MS)
    assert seen == [10, 0xFF, 3 * PARENT_EXIT_NS + 2 * 300]
    assert bus_of(child).accesses == {"latch": 2, NO_DEVICE: 1}
    assert child.vp(0).info()["run_time_ns"] == 3 * PARENT_EXIT_NS + 2 * 300


def test_a_python_guest_of_a_vm_without_emulated_devices_fails_its_intercept_call():
    from hypervisor.guest import GuestError
    from hypervisor.host import Host
    from partitions.worker import VmSpec, VmWorker
    host = Host(logical_processors=2, memory="256MiB", seed=3)
    child = VmWorker(host, VmSpec("bare", memory="4MiB")).build()

    async def guest(ctx):
        await ctx.port_in(0x60, 1)

    child.vp(0).run(guest)
    host.root.resume_partition(child)
    with pytest.raises(GuestError, match="has no emulated devices"):
        host.run(until=1 * MS)
