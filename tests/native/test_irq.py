"""Interrupts from emulated devices (partitions/native_guest/devices.py): the bus's lines and their
routing, the IDE drive's IRQ 14 and the 21140's IRQ 11, a native kernel taking them through its IDT
with an APIC EOI, a Python guest's ctx.wait_irq, and a line that is up across save and restore."""
import pytest

from drivers.network import frames
from drivers.network.vswitch import VirtualSwitch
from drivers.storage.vhd import VirtualDisk
from hypervisor.host import Host
from partitions.native_guest import ide
from partitions.native_guest import tulip as t
from partitions.native_guest.cpu import check_state
from partitions.native_guest.devices import ASSERT_NS, EOI_NS, IoBus, bus_of
from partitions.native_guest.tulip_driver import TulipDriver
from partitions.worker import VmSpec, VmWorker
from tests.native.kernels import HALT_FOREVER, Booted, build

MS = 1_000_000


@pytest.fixture
def vhd(tmp_path):
    disk = VirtualDisk.create(tmp_path / "ide.vhd", 2 << 20, "dynamic", created_at=0)
    yield disk
    disk.close()


# ---- the bus -----------------------------------------------------------------------------------
def test_lines_are_level_one_device_each_and_routed_to_0x20_plus_the_irq():
    bus, told = IoBus(), []
    bus.on_irq = told.append
    bus.raise_irq("nic", 11)
    bus.raise_irq("nic", 11)                 # up already: nothing new
    assert bus.asserted(11) and bus.asserted_lines() == [11] and told == [11] and bus.interrupts["nic"] == 1
    with pytest.raises(ValueError, match="IRQ 11 is 'nic'"):
        bus.raise_irq("disk", 11)
    with pytest.raises(ValueError, match="IRQ line 16"):
        bus.raise_irq("nic", 16)
    bus.lower_irq("disk", 11)                # not its line: stays up
    assert bus.asserted(11)
    bus.lower_irq("nic", 11)
    assert not bus.asserted(11)
    assert bus.vector(14) == 0x2E and bus.line_of(0x2B) == 11 and bus.line_of(0x40) is None
    assert bus.eoi(11) == EOI_NS and bus.eois["nic"] == 1 and bus.hypervisor_ns["nic"] == EOI_NS
    assert bus.parent_ns["nic"] == ASSERT_NS  # the parent asserted the line; the EOI is the hypervisor's


def test_the_ide_drive_raises_irq14_when_a_command_needs_the_guest_unless_nien(vhd):
    bus, dev = IoBus(), ide.IdeDisk(vhd)
    bus.attach(dev)
    bus.port_out(0x1F6, 1, 0xE0)
    bus.port_out(0x1F7, 1, ide.IDENTIFY)
    assert bus.asserted(14) and dev.intrq
    bus.port_in(0x3F6, 1)                    # the alternate status does not acknowledge
    assert bus.asserted(14)
    bus.port_in(0x1F7, 1)                    # the status does
    assert not bus.asserted(14) and not dev.intrq
    bus.port_out(0x1F7, 1, 0x99)             # an unknown command aborts: an interrupt too
    assert bus.asserted(14)
    bus.port_out(0x3F6, 1, ide.NIEN)         # masked: the line drops, INTRQ stays
    assert not bus.asserted(14) and dev.intrq
    bus.port_out(0x3F6, 1, 0)
    assert bus.asserted(14)
    bus.port_in(0x1F7, 1)
    bus.port_out(0x3F6, 1, ide.NIEN)
    bus.port_out(0x1F7, 1, ide.IDENTIFY)     # with nIEN a guest polls: no line
    assert not bus.asserted(14) and bus.port_in(0x1F7, 1)[0] & ide.DRQ


def test_an_ide_write_interrupts_when_its_last_word_is_on_the_disk(vhd):
    bus, dev = IoBus(), ide.IdeDisk(vhd)
    bus.attach(dev)
    bus.port_out(0x1F6, 1, 0xE0)
    bus.port_out(0x1F2, 1, 1)
    bus.port_out(0x1F7, 1, ide.WRITE)
    assert not bus.asserted(14)              # PIO data-out: the first block is asked for without one
    for _ in range(255):
        bus.port_out(0x1F0, 2, 0xABCD)
    assert not bus.asserted(14)
    bus.port_out(0x1F0, 2, 0xABCD)
    assert bus.asserted(14) and dev.completed["write"] == 1


def test_the_21140_line_follows_csr5_and_csr7_and_a_csr5_write_clears_it():
    bus = IoBus()
    nic = t.Tulip21140(None, None, mac=bytes.fromhex("02005e000001"))
    nic.attach(bus)
    nic.write(7 * t.CSR_STRIDE, 4, t.NIS | t.RI)
    nic.csr5 |= t.TI                          # TI is not enabled: no interrupt
    nic.write(7 * t.CSR_STRIDE, 4, t.NIS | t.RI)
    assert not bus.asserted(t.NIC_IRQ)
    nic.write(7 * t.CSR_STRIDE, 4, t.NIS | t.RI | t.TI)
    assert bus.asserted(11) and nic.interrupt
    nic.write(5 * t.CSR_STRIDE, 4, t.TI)
    assert not bus.asserted(11)


# ---- a native kernel ---------------------------------------------------------------------------
def _gate(vector: int, handler: str = "handler") -> str:
    at = 16 * vector
    return f'''
  lea idt(%rip), %rax
  lea {handler}(%rip), %rbx
  mov %bx, {at}(%rax)
  movw $0x08, {at + 2}(%rax)
  movb $0x8e, {at + 5}(%rax)       # present, interrupt gate
  shr $16, %rbx
  mov %bx, {at + 6}(%rax)
  shr $16, %rbx
  mov %ebx, {at + 8}(%rax)
  lidt idtr(%rip)
'''


_IDT = '''
.data
.balign 16
idtr: .word 4095
      .quad idt
.balign 4096
idt: .fill 4096, 1, 0
'''
_EOI = "  mov $0x80B, %ecx; xor %eax, %eax; xor %edx, %edx; wrmsr\n"

# Three IDENTIFY commands, each waited for with `sti; hlt`; the handler (vector 0x2E) reads the
# status (which acknowledges the drive), counts at 0x220000, keeps the status at 0x220008, EOIs.
IDE_KERNEL = _gate(0x2E) + '''
  mov $3, %r12
2: cli
  mov $0x1F6, %dx; mov $0xE0, %al; out %al, %dx
  mov $0x1F7, %dx; mov $0xEC, %al; out %al, %dx
  sti
  hlt
  dec %r12
  jnz 2b
  cli
''' + HALT_FOREVER + '''
handler:
  push %rax; push %rcx; push %rdx
  mov $0x1F7, %dx; in %dx, %al
  movzbq %al, %rax; mov %rax, 0x220008
  incq 0x220000
''' + _EOI + '''
  pop %rdx; pop %rcx; pop %rax
  iretq
''' + _IDT


def _booted_with_ide(tmp_path, vhd, body: str, name: str) -> tuple[Booted, ide.IdeDisk]:
    dev = ide.IdeDisk(vhd)
    b = Booted.__new__(Booted)
    from partitions.native_guest.cpu import Uart16550, native_guest
    from partitions.native_guest.loader import load_elf
    b.host = Host(logical_processors=2, memory="256MiB", seed=3)
    b.child = VmWorker(b.host, VmSpec("n", memory="4MiB")).build()
    bus_of(b.child).attach(dev)
    b.uart, b._cpus = Uart16550(), []
    b.child.vp(0).run(native_guest(load_elf(build(tmp_path, name, body)), uart=b.uart, on_start=b._cpus.append))
    b.host.root.resume_partition(b.child)
    return b, dev


def test_a_native_kernel_takes_irq14_through_its_idt_and_ends_it_with_an_eoi(tmp_path, vhd):
    b, dev = _booted_with_ide(tmp_path, vhd, IDE_KERNEL, "ideirq")
    b.run(5 * MS)
    bus = bus_of(b.child)
    assert b.u64(0x220000) == 3 and dev.completed["identify"] == 3
    assert b.u64(0x220008) & ide.DRQ          # the handler ran with the data ready
    assert b.cpu.exits["interrupt"] == 3 and b.cpu.exits["eoi"] == 3 and b.cpu.in_service == []
    assert bus.interrupts["ide"] == 3 and bus.eois["ide"] == 3 and bus.hypervisor_ns["ide"] == 3 * EOI_NS
    assert not bus.asserted(14)


# The handler of vector 0x25 counts and, while 0x220010 is 0, EOIs; it never clears the cause (the
# test holds the line itself).
HELD_KERNEL = _gate(0x25) + '''
  sti
''' + HALT_FOREVER + '''
handler:
  push %rax; push %rcx; push %rdx
  incq 0x220000
  cmpq $0, 0x220010
  jne 1f
''' + _EOI + '''
1: pop %rdx; pop %rcx; pop %rax
  iretq
''' + _IDT


def test_a_halted_native_kernel_is_woken_by_a_line_and_level_semantics_hold(tmp_path):
    b = Booted(build(tmp_path, "held", HELD_KERNEL)).run(1 * MS)
    bus = bus_of(b.child)
    assert b.u64(0x220000) == 0 and b.child.vp(0).info()["run_time_ns"] < 100_000   # halted
    bus.raise_irq("test", 5)                 # from outside the VP's step: the core wakes it
    b.run(1 * MS + 200_000)
    taken = b.u64(0x220000)
    assert taken > 1                         # EOI'd but still up: taken again and again (level)
    bus.lower_irq("test", 5)
    b.run(2 * MS)
    assert b.u64(0x220000) in (taken, taken + 1)
    # Without the EOI the vector stays in service: the held line is taken once only.
    b.child.write(0x220010, (1).to_bytes(8, "little"))
    before = b.u64(0x220000)
    bus.raise_irq("test", 5)
    b.run(3 * MS)
    assert b.u64(0x220000) == before + 1 and b.cpu.in_service == [0x25]
    record = b.cpu.save_state()
    assert record["in_service"] == [0x25] and check_state(record) is None
    assert "in_service" in check_state(dict(record, in_service=[0x99]))
    assert "in_service" in check_state(dict(record, in_service=[0x25, 0x25]))


def test_a_native_cpu_restored_with_a_vector_in_service_waits_for_its_eoi(tmp_path):
    b = Booted(build(tmp_path, "held", HELD_KERNEL)).run(1 * MS)
    b.child.write(0x220010, (1).to_bytes(8, "little"))
    bus = bus_of(b.child)
    bus.raise_irq("test", 5)
    b.run(2 * MS)
    record = b.cpu.save_state()
    from partitions.native_guest.cpu import NativeCpu
    cpu = NativeCpu.from_state(b.child.vp(0), record, b.cpu.image, bus=bus)
    assert cpu.in_service == [0x25] and cpu.device_vectors() == []   # the line is up, in service
    cpu.in_service.clear()
    assert cpu.device_vectors() == [0x25]


# ---- a Python guest ----------------------------------------------------------------------------
def test_a_python_guest_waits_for_irq14_and_pays_the_eoi(vhd):
    host = Host(logical_processors=2, memory="256MiB", seed=1)
    vm = VmWorker(host, VmSpec("legacy", memory="4MiB")).build()
    bus = bus_of(vm)
    bus.attach(ide.IdeDisk(vhd))
    seen = {}

    async def guest(ctx):
        seen["early"] = await ctx.wait_irq(14, timeout=100_000)      # nothing asked: times out
        await ctx.port_out(0x1F6, 1, 0xE0)
        await ctx.port_out(0x1F7, 1, ide.IDENTIFY)
        t0 = ctx.now
        seen["up"] = await ctx.wait_irq(14)
        seen["took"] = ctx.now - t0
        seen["status"] = await ctx.port_in(0x1F7, 1)
        seen["after"] = bus.asserted(14)
        await ctx.halt()

    vm.vp(0).run(guest)
    host.root.resume_partition(vm)
    host.run(until=10 * MS)
    assert seen["early"] is False and seen["up"] is True and seen["status"] & ide.DRQ and not seen["after"]
    assert seen["took"] >= EOI_NS and bus.eois["ide"] == 1


def _legacy_pair(interrupts: bool):
    host = Host(logical_processors=2, memory="256MiB", seed=1)
    switch = VirtualSwitch("lan", "internal", now=lambda: host.now)
    vm = VmWorker(host, VmSpec("legacy", memory="4MiB")).build()
    nic = t.Tulip21140(vm, switch, mac=bytes.fromhex("02005e000001"))
    nic.attach(bus_of(vm))
    parent_mac = bytes.fromhex("02005e0000fe")
    # The parent answers each frame 50 us later (the guest halts meanwhile).
    pending = []
    switch.parent.attach(lambda f: pending.append(f[6:12] + parent_mac + f[12:]))
    out = {}

    async def guest(ctx):
        d = TulipDriver(ctx, interrupts=interrupts)
        mac = await d.open()
        got = []
        for n in range(5):
            await d.send(frames.build(parent_mac, mac, 0x88B5, bytes([n]) * 46))
            got.append((await d.receive())[14])
        out.update(got=got, stats=dict(d.stats))
        await ctx.halt()

    vm.vp(0).run(guest)
    host.root.resume_partition(vm)
    until = 0
    while until < 20 * MS:
        until += 50_000
        host.run(until=until)
        while pending:
            switch.parent.send(pending.pop(0))
    return out, bus_of(vm), vm


def test_the_legacy_nic_driver_sleeps_until_the_interrupt_and_polled_mode_still_works():
    out, bus, vm = _legacy_pair(interrupts=True)
    assert out["got"] == [0, 1, 2, 3, 4]
    assert out["stats"]["irqs"] == 5 and out["stats"]["rx_polls"] == 0
    assert bus.interrupts["legacy-nic"] == 5 and bus.eois["legacy-nic"] == 5
    assert vm.vp(0).info()["run_time_ns"] < 1 * MS    # halted while waiting, not polling
    polled, pbus, _ = _legacy_pair(interrupts=False)
    assert polled["got"] == [0, 1, 2, 3, 4] and polled["stats"]["irqs"] == 0 and polled["stats"]["rx_polls"] > 0
    assert pbus.interrupts["legacy-nic"] == 0 and pbus.eois["legacy-nic"] == 0


# ---- saved state -------------------------------------------------------------------------------
def test_an_ide_interrupt_pending_when_saved_is_pending_after_the_restore(vhd):
    bus, dev = IoBus(), ide.IdeDisk(vhd)
    bus.attach(dev)
    bus.port_out(0x1F6, 1, 0xE0)
    bus.port_out(0x1F7, 1, ide.IDENTIFY)
    record = dev.save_state()
    assert record["intrq"] is True and ide.check_state(record) is None
    assert "intrq" in ide.check_state(dict(record, intrq="yes"))
    assert "intrq" in ide.check_state(dict(record, status=ide.BSY))
    bus2, dev2 = IoBus(), ide.IdeDisk(vhd)
    bus2.attach(dev2)
    assert not bus2.asserted(14)
    dev2.load_state(record)
    assert bus2.asserted(14)
    old = {k: v for k, v in record.items() if k != "intrq"}    # a record from before interrupts
    assert ide.check_state(old) is None
    dev2.load_state(old)
    assert not bus2.asserted(14)


def test_a_21140_line_up_when_saved_is_up_after_the_restore():
    mac = bytes.fromhex("02005e000001")
    nic = t.Tulip21140(None, None, mac=mac)
    nic.attach(IoBus())
    nic.write(7 * t.CSR_STRIDE, 4, t.NIS | t.RI)
    nic.csr5 |= t.RI
    nic._sync_irq()
    record = nic.save_state()
    bus2 = IoBus()
    nic2 = t.Tulip21140(None, None, mac=mac)
    nic2.attach(bus2)
    assert not bus2.asserted(11)
    nic2.load_state(record)
    assert bus2.asserted(11)


async def irq_holder(ctx):
    """Asks the drive for IDENTIFY and never reads the status, so IRQ 14 stays up; in a shell
    restored from a save it takes the interrupt (ctx.state says it asked already)."""
    if "asked" not in ctx.state:
        await ctx.port_out(0x1F6, 1, 0xE0)
        await ctx.port_out(0x1F7, 1, ide.IDENTIFY)
        ctx.state["asked"] = True
    else:
        ctx.state["took"] = await ctx.wait_irq(ide.IDE_IRQ, timeout="1ms")
        ctx.state["status"] = await ctx.port_in(0x1F7, 1)
    while True:
        await ctx.sleep("10ms")


def test_a_vm_saved_with_irq14_up_has_it_up_after_a_restore_into_a_new_shell(tmp_path):
    from partitions.config import loads
    from partitions.management import ManagedHost
    from tests.partitions.test_emulated_config import host, make_vhd
    make_vhd(tmp_path / "legacy.vhd")
    text = host('''
[[vm]]
name = "p"
memory = "16MiB"
ide = "legacy.vhd"
workload = { kind = "python", target = "tests.native.test_irq:irq_holder" }
''')
    old = ManagedHost(loads(text, base_dir=tmp_path), workdir=tmp_path / "old")
    try:
        old.run(20 * MS)
        vm = old.vms["p"]
        assert bus_of(vm.partition).asserted(14) and vm.workload_states[0]["asked"]
        vm.save(tmp_path / "p.hvsav")
    finally:
        old.close()
    new = ManagedHost(loads(text, base_dir=tmp_path), workdir=tmp_path / "new")
    try:
        vm = new.restore_vm(tmp_path / "p.hvsav")
        assert vm.emulated["ide"].intrq and bus_of(vm.partition).asserted(14)
        new.run(new.host.now + 5 * MS)
        state = vm.workload_states[0]
        assert state["took"] is True and state["status"] & ide.DRQ
        assert not bus_of(vm.partition).asserted(14) and bus_of(vm.partition).eois["ide"] == 1
    finally:
        new.close()
