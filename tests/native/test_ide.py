"""The emulated IDE disk (partitions/native_guest/ide.py): IDENTIFY's fields, PIO reads and writes
against the VHD file behind it, aborted commands, reset, and a native kernel reading through it."""
import struct

import pytest

from drivers.storage.vhd import VirtualDisk
from partitions.native_guest import ide
from partitions.native_guest.devices import ASSERT_NS, PARENT_EXIT_NS, IoBus
from tests.native.kernels import HALT_FOREVER, build

MS = 1_000_000
DISK = 2 * 1024 * 1024     # 4096 sectors


@pytest.fixture
def vhd(tmp_path):
    disk = VirtualDisk.create(tmp_path / "ide.vhd", DISK, "dynamic", created_at=0)
    yield disk
    disk.close()


def _bus(disk) -> tuple[IoBus, ide.IdeDisk]:
    bus, dev = IoBus(), ide.IdeDisk(disk)
    bus.attach(dev)
    return bus, dev


def _command(bus, command: int, lba: int = 0, count: int = 1) -> int:
    bus.port_out(0x1F6, 1, 0xE0 | lba >> 24 & 0x0F)      # master, LBA mode
    bus.port_out(0x1F2, 1, count & 0xFF)
    for i in range(3):
        bus.port_out(0x1F3 + i, 1, lba >> 8 * i & 0xFF)
    bus.port_out(0x1F7, 1, command)
    return bus.port_in(0x1F7, 1)[0]


def _words(bus, n: int) -> bytes:
    return b"".join(bus.port_in(0x1F0, 2)[0].to_bytes(2, "little") for _ in range(n))


def test_identify_names_the_disk_its_lba28_capacity_and_sums_to_zero(vhd):
    bus, _ = _bus(vhd)
    status = _command(bus, ide.IDENTIFY)
    assert status & (ide.DRQ | ide.DRDY | ide.BSY | ide.ERR) == ide.DRQ | ide.DRDY
    data = _words(bus, 256)
    assert bus.port_in(0x1F7, 1)[0] & ide.DRQ == 0          # all 256 words taken: done
    w = struct.unpack("<256H", data)
    assert w[0] == 0x0040 and w[49] & 0x0200                 # an ATA disk that does LBA
    assert w[60] | w[61] << 16 == DISK // 512
    assert w[83] & 1 << 10 == 0                              # no LBA48: 28-bit only
    model = b"".join(struct.pack(">H", x) for x in w[27:47]).decode().strip()
    serial = b"".join(struct.pack(">H", x) for x in w[10:20]).decode().strip()
    assert (model, serial) == ("hvsim emulated IDE disk", "HVSIM0001")
    assert data[510] == 0xA5 and sum(data) % 256 == 0


def test_written_sectors_land_in_the_vhd_and_read_back(vhd, tmp_path):
    bus, dev = _bus(vhd)
    payload = bytes((i * 7 + 3) & 0xFF for i in range(3 * 512))
    lba = 0x0ABC                                            # spans the LBA low and mid registers
    assert _command(bus, ide.WRITE, lba, 3) & ide.DRQ
    for i in range(0, len(payload), 2):
        bus.port_out(0x1F0, 2, int.from_bytes(payload[i:i + 2], "little"))
    assert bus.port_in(0x1F7, 1)[0] & (ide.DRQ | ide.ERR | ide.BSY) == 0
    assert vhd.read(lba * 512, len(payload)) == payload          # in the file itself
    vhd.write(100 * 512, b"from the host side".ljust(512, b"."))
    assert _command(bus, ide.READ, 100, 1) & ide.DRQ
    assert _words(bus, 256) == b"from the host side".ljust(512, b".")
    assert dev.completed == {"identify": 0, "read": 1, "write": 1, "aborted": 0}


def test_a_count_of_zero_moves_256_sectors(vhd):
    bus, _ = _bus(vhd)
    vhd.write(0, bytes(range(256)) * 2 * 256)
    assert _command(bus, ide.READ, 0, 0) & ide.DRQ
    assert _words(bus, 256 * 256) == bytes(range(256)) * 2 * 256


def test_bad_commands_abort_and_change_nothing(vhd):
    bus, dev = _bus(vhd)
    assert _command(bus, 0xC8) & ide.ERR                       # READ DMA: not this device
    assert bus.port_in(0x1F1, 1)[0] == ide.ABRT
    assert _command(bus, ide.WRITE, DISK // 512 - 1, 2) & ide.ERR   # runs past the end
    assert bus.port_in(0x1F1, 1)[0] == ide.IDNF | ide.ABRT
    assert bus.port_in(0x1F0, 2)[0] == 0xFFFF                  # no data phase after an abort
    bus.port_out(0x1F6, 1, 0xA0)                               # CHS addressing: not supported
    bus.port_out(0x1F7, 1, ide.READ)
    assert bus.port_in(0x1F7, 1)[0] & ide.ERR and bus.port_in(0x1F1, 1)[0] == ide.ABRT
    assert dev.completed["aborted"] == 3 and vhd.read(0, 512) == bytes(512)
    assert _command(bus, ide.READ, 0, 1) & ide.DRQ and not bus.port_in(0x1F1, 1)[0]   # ERR clears on the next


def test_reset_holds_bsy_and_leaves_the_ata_signature(vhd):
    bus, _ = _bus(vhd)
    _command(bus, ide.IDENTIFY)
    bus.port_out(0x3F6, 1, ide.SRST)
    assert bus.port_in(0x3F6, 1)[0] == ide.BSY
    bus.port_out(0x1F7, 1, ide.IDENTIFY)                       # ignored while busy
    bus.port_out(0x3F6, 1, 0)
    assert bus.port_in(0x1F7, 1)[0] & (ide.BSY | ide.DRQ | ide.DRDY) == ide.DRDY
    assert [bus.port_in(p, 1)[0] for p in (0x1F2, 0x1F3, 0x1F4, 0x1F5)] == [1, 1, 0, 0]
    bus.port_out(0x1F6, 1, 0xF0)                               # the slave: absent, reads 0
    assert bus.port_in(0x1F7, 1)[0] == 0


def test_each_access_costs_the_exit_plus_the_device_and_reads_the_medium_time(vhd):
    bus, dev = _bus(vhd)
    _, ns = bus.port_in(0x1F7, 1)
    assert ns == PARENT_EXIT_NS + ide.ACCESS_NS
    bus.port_out(0x1F6, 1, 0xE0)
    bus.port_out(0x1F2, 1, 8)
    for p in (0x1F3, 0x1F4, 0x1F5):
        bus.port_out(p, 1, 0)
    # The command's access waits out the medium: latency plus 4 KiB at the bandwidth.
    assert bus.port_out(0x1F7, 1, ide.READ) == PARENT_EXIT_NS + ide.ACCESS_NS + ide.LATENCY_NS + 4096 * 10**9 // ide.BANDWIDTH
    assert bus.accesses["ide"] == 7                    # the status read, the task file, the command


def _pio_read_kernel(lba: int, sectors: int, dest: int) -> str:
    """Assembly: READ SECTORS `sectors` at `lba` into `dest` by polling and `inw`, then halt."""
    return f"""
  mov $0x1f6, %dx
  mov $0xe0, %al
  out %al, %dx
  mov $0x1f2, %dx
  mov ${sectors}, %al
  out %al, %dx
  mov $0x1f3, %dx
  mov ${lba & 0xFF}, %al
  out %al, %dx
  mov $0x1f4, %dx
  mov ${lba >> 8 & 0xFF}, %al
  out %al, %dx
  mov $0x1f5, %dx
  mov ${lba >> 16 & 0xFF}, %al
  out %al, %dx
  mov $0x1f7, %dx
  mov $0x20, %al
  out %al, %dx
1: in %dx, %al
  test $0x80, %al
  jnz 1b
  test $0x08, %al
  jz 3f
  mov $0x1f0, %dx
  mov ${dest}, %rdi
  mov ${sectors * 256}, %rcx
2: in %dx, %ax
  mov %ax, (%rdi)
  add $2, %rdi
  dec %rcx
  jnz 2b
3:
""" + HALT_FOREVER


def test_a_native_kernel_reads_the_disk_through_port_io(tmp_path, vhd):
    vhd.write(7 * 512, b"sector seven".ljust(1024, b"#"))
    elf = build(tmp_path, "pio", _pio_read_kernel(7, 2, 0x220000))
    from hypervisor.host import Host
    from partitions.native_guest.cpu import native_guest
    from partitions.native_guest.devices import bus_of
    from partitions.native_guest.loader import load_elf
    from partitions.worker import VmSpec, VmWorker
    host = Host(logical_processors=2, memory="256MiB", seed=3)
    child = VmWorker(host, VmSpec("n", memory="4MiB")).build()
    dev = ide.IdeDisk(vhd)
    bus_of(child).attach(dev)
    child.vp(0).run(native_guest(load_elf(elf)))
    host.root.resume_partition(child)
    host.run(until=50 * MS)
    assert child.read(0x220000, 1024) == b"sector seven".ljust(1024, b"#")
    assert bus_of(child).accesses["ide"] == 6 + 1 + 512      # task file and command, one status poll, 512 words
    assert dev.completed["read"] == 1


def test_the_medium_time_is_waited_but_is_not_parent_cpu(vhd):
    bus, _ = _bus(vhd)
    _command(bus, ide.READ, 0, 8)
    assert bus.accesses["ide"] == 7 and bus.interrupts["ide"] == 1
    # The exits and the device's time, and the parent asserting IRQ 14 once (data ready).
    assert bus.parent_ns["ide"] == 7 * (PARENT_EXIT_NS + ide.ACCESS_NS) + ASSERT_NS
    assert bus.medium_ns["ide"] == ide.LATENCY_NS + 4096 * 10**9 // ide.BANDWIDTH
