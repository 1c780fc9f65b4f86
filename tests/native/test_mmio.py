"""MMIO intercepts (partitions/native_guest/devices.py, cpu.py): a device claims GPA pages that are
not the VM's RAM, a native kernel's loads and stores there reach it at the cost of a port access
(exit to the parent plus the device's time), a Python guest's intercept calls cost the same, and a
GPA nobody claims still faults only that VM."""
import pytest

from partitions.native_guest.devices import PARENT_EXIT_NS, IoBus, MmioScratch, MmioUnclaimed, bus_of
from tests.native.kernels import BESIDE_A_BURNER as CONFIG, HALT_FOREVER, Booted, build

MS = 1_000_000
MMIO = 0x8000_0000          # far above the 4 MiB test VMs' RAM
SCRATCH_NS = 500


def test_claims_are_whole_pages_clear_of_ram_and_of_each_other():
    bus = IoBus()
    bus.is_ram = lambda page: page < 0x400   # 4 MiB of RAM at 0
    bus.attach(MmioScratch(MMIO))
    noop = dict(read=lambda o, s: 0, write=lambda o, s, v: None, access_ns=0)
    with pytest.raises(ValueError, match="GPA 0x80000000 is already 'scratch'"):
        bus.register_mmio("other", MMIO, 0x2000, **noop)
    with pytest.raises(ValueError, match="GPA 0x3ff000 is the VM's RAM"):
        bus.register_mmio("low", 0x3FF000, 0x1000, **noop)
    with pytest.raises(ValueError, match="whole"):
        bus.register_mmio("odd", MMIO + 0x1800, 0x1000, **noop)
    assert bus.devices() == ["scratch"]
    with pytest.raises(MmioUnclaimed, match="0x80001000"):
        bus.mmio_read(MMIO + 0x1000, 4)
    assert not bus.accesses


def test_a_claim_over_a_real_vms_ram_is_refused(tmp_path):
    b = Booted(build(tmp_path, "idle", HALT_FOREVER))    # 4 MiB of RAM from GPA 0
    bus = bus_of(b.child)
    with pytest.raises(ValueError, match="GPA 0x200000 is the VM's RAM"):
        bus.attach(MmioScratch(0x200000))
    bus.attach(MmioScratch(0x400000))                    # the first page past it is free
    assert bus.devices() == ["scratch"]


def test_a_native_kernels_loads_and_stores_reach_the_device_at_the_exit_plus_device_cost(tmp_path):
    # 1-, 2- and 4-byte accesses (unicorn hands an 8-byte one to the device as two 4-byte halves).
    body = (f"  mov ${MMIO:#x}, %rbx\n"
            "  movl $0x55667788, (%rbx)\n  movw $0x3344, 4(%rbx)\n  movb $0x11, 7(%rbx)\n"  # scratch
            "  movl 4(%rbx), %ecx\n  mov %ecx, 0x220000\n"                  # 4-byte load of its top half
            "  movl $40, 8(%rbx)\n"                                         # counter = 40
            "  movl 8(%rbx), %edx\n  movl 8(%rbx), %edx\n  mov %rdx, 0x220008\n"  # 40, then 41
            + HALT_FOREVER)
    b = Booted(build(tmp_path, "mmio", body))
    dev = MmioScratch(MMIO, SCRATCH_NS)
    bus_of(b.child).attach(dev)
    b.run(1 * MS)
    bus = bus_of(b.child)
    assert b.child.read(0x220000, 4) == (0x11003344).to_bytes(4, "little")
    assert b.u64(0x220008) == 41 and dev.counter == 42
    assert dev.scratch == 0x1100334455667788
    assert bus.accesses == {"scratch": 7}
    assert bus.parent_ns == {"scratch": 7 * (PARENT_EXIT_NS + SCRATCH_NS)}
    assert b.cpu.exits["mmio"] == 7
    assert b.child.vp(0).info()["run_time_ns"] == b.cpu.instructions + 7 * (PARENT_EXIT_NS + SCRATCH_NS)


def test_an_unclaimed_gpa_crashes_only_that_vm_even_beside_a_claim(tmp_path):
    from partitions.config import loads
    from partitions.management import ManagedHost
    wild = build(tmp_path, "wild", f"  mov ${MMIO:#x}, %rbx\n  movl $7, (%rbx)\n  mov 0x1000(%rbx), %eax\n"
                 + HALT_FOREVER)
    config = loads(CONFIG.format(kernel=wild.name), base_dir=tmp_path)
    m = ManagedHost(config, workdir=tmp_path / "work")
    m.start()                                 # the partitions exist from here; nothing has run
    dev = MmioScratch(MMIO, SCRATCH_NS)
    bus = bus_of(m.vms["native"].partition)
    bus.attach(dev)
    m.run(50 * MS)
    vms = {v["Name"]: v for v in m.summary()["vms"]}
    assert vms["native"]["State"] == "Off"
    assert "guest crashed" in vms["native"]["Status"]
    assert "read from a GPA outside its memory" in vms["native"]["Status"]
    assert dev.scratch == 7 and bus.accesses == {"scratch": 1}   # the store before it went through
    assert vms["other"]["State"] == "Running"
    assert m.vms["other"].partition.vp(0).info()["run_time_ns"] > 10 * MS   # it ran on
    m.close()



def test_a_python_guests_mmio_calls_cost_what_a_native_access_costs():
    from hypervisor.host import Host
    from partitions.worker import VmSpec, VmWorker
    host = Host(logical_processors=2, memory="256MiB", seed=3)
    child = VmWorker(host, VmSpec("py", memory="4MiB")).build()
    dev = MmioScratch(MMIO, SCRATCH_NS)
    bus_of(child).attach(dev)
    seen = []

    async def guest(ctx):
        start = ctx.now
        await ctx.mmio_write(MMIO, 2, 0x1ABCD)
        seen.append(await ctx.mmio_read(MMIO, 8))
        seen.append(await ctx.mmio_read(MMIO + 8, 4))
        seen.append(ctx.now - start)
        await ctx.halt()

    child.vp(0).run(guest)
    host.root.resume_partition(child)
    host.run(until=1 * MS)
    assert seen == [0xABCD, 0, 3 * (PARENT_EXIT_NS + SCRATCH_NS)]
    assert bus_of(child).accesses == {"scratch": 3}
    assert child.vp(0).info()["run_time_ns"] == 3 * (PARENT_EXIT_NS + SCRATCH_NS)
