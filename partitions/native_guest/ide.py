"""An emulated IDE disk: the primary channel's master drive, answering ATA PIO on ports
0x1F0-0x1F7 and 0x3F6 from a VM's virtual disk (drivers/storage/vhd.py), as Virtual Server's
emulated IDE controller did.

What it does (ATA/ATAPI-6's PIO data-in and data-out protocols, 28-bit LBA only):
IDENTIFY DEVICE (0xEC), READ SECTORS (0x20/0x21) and WRITE SECTORS (0x30/0x31); a sector count of
0 means 256. Every 16-bit word of a sector goes through the data port, one intercept each: that is
why the emulated path is slow. Anything else (another command, CHS addressing, the slave drive's
commands) aborts: ERR in the status, ABRT in the error register; an LBA range past the disk's end
sets IDNF and ABRT. Device control's SRST holds the drive BSY until it is cleared, then leaves the
reset signature in the registers.

Interrupts: the drive's INTRQ is IRQ 14 on the intercept bus (vector 0x2E, devices.py). As ATA's PIO
protocols have it, it is set when a command reaches the guest's turn: a read's or IDENTIFY's data
is ready (DRQ), a write's last word is on the disk, a command aborted. Reading the status register
(not the alternate status at 0x3F6) or writing a command clears it, and the line is up while INTRQ
is set and device control's nIEN is clear; so a guest that sets nIEN, or never waits for the line,
polls the status as before.

Time: the medium's time for a command (the cost model's disk service time: latency plus bytes over
bandwidth, the same storvsp charges) is spent on the access that makes the drive work -- the
command write for a read, the last data word of a write -- through busy_ns(), on top of every
access's exit and device time (devices.py). So the guest sees BSY only around a reset: when the
access that started the work returns, the work is done and DRQ or DRDY is up.
"""
from __future__ import annotations

import struct

from partitions.native_guest.devices import IDE_IRQ

SECTOR = 512
DATA, ERROR, COUNT, LBA0, LBA1, LBA2, DRIVE, STATUS = range(8)   # offsets from 0x1F0 (ERROR reads, FEATURES writes)
PRIMARY_BASE, PRIMARY_CONTROL = 0x1F0, 0x3F6
# Status bits and error bits.
BSY, DRDY, DF, DSC, DRQ, ERR = 0x80, 0x40, 0x20, 0x10, 0x08, 0x01
ABRT, IDNF = 0x04, 0x10
SRST, NIEN = 0x04, 0x02                     # device control bits
IDENTIFY, READ, READ_NR, WRITE, WRITE_NR = 0xEC, 0x20, 0x21, 0x30, 0x31
MAX_LBA28 = 0x0FFF_FFFF
#: The device's own time per register access (a register read or write in the worker's model).
ACCESS_NS = 200
LATENCY_NS, BANDWIDTH = 100_000, 500_000_000   # the cost model's disk: 100 us + size / 500 MB/s
STATE_FORMAT = 1                            # of IdeDisk.save_state()'s record
COMPLETED = ("identify", "read", "write", "aborted")   # the commands a drive counts


def _ata_string(text: str, words: int) -> list[int]:
    """An IDENTIFY string field: ASCII, space padded, the first character of each pair in the
    word's high byte (ATA's byte order for strings)."""
    raw = text.encode("ascii").ljust(2 * words)[:2 * words]
    return [raw[i] << 8 | raw[i + 1] for i in range(0, len(raw), 2)]


class IdeDisk:
    """The master drive on the primary channel, backed by `disk` (a VirtualDisk: read(offset,
    length), write(offset, data), size). Counts the commands it completed."""

    def __init__(self, disk, *, serial: str = "HVSIM0001", model: str = "hvsim emulated IDE disk",
                 latency_ns: int = LATENCY_NS, bandwidth: int = BANDWIDTH):
        self.disk = disk
        self.sectors = min(disk.size // SECTOR, MAX_LBA28 + 1)
        self.serial, self.model = serial, model
        self.latency_ns, self.bandwidth = latency_ns, bandwidth
        self.features = self.error = 0
        self.count, self.lba = [0], [0, 0, 0]     # the task file (count is 8 bits: 0 means 256)
        self.drive = 0xA0                         # bits 5 and 7 set, as old drives had them
        self.control = 0
        self.status = DRDY | DSC
        self.buffer = bytearray()                 # the sector(s) in flight, PIO data in or out
        self.pos = 0
        self._write_at: int | None = None         # the LBA of the write in progress
        self._busy = 0
        self.intrq = False                        # ATA INTRQ: the line is up while set and nIEN clear
        self.bus = None                           # the intercept bus of its line (connect)
        self.completed = dict.fromkeys(COMPLETED, 0)
        # Measure-VM's figures of this incarnation (not in save_state: the VM's image carries
        # them in its "measured" section, as it does storvsp's).
        self.measured = {"disk_read_bytes": 0, "disk_written_bytes": 0, "disk_normalized_ios": 0}

    def claims(self):
        yield ("ide", PRIMARY_BASE, 8, self.read, self.write, ACCESS_NS)
        yield ("ide", PRIMARY_CONTROL, 1, self._read_control, self._write_control, ACCESS_NS)

    def busy_ns(self) -> int:
        ns, self._busy = self._busy, 0
        return ns

    def connect(self, bus) -> None:
        """Its interrupt line is on `bus` (IoBus.attach calls this)."""
        self.bus = bus
        self._sync_irq()

    def _interrupt(self, on: bool) -> None:
        self.intrq = on
        self._sync_irq()

    def _sync_irq(self) -> None:
        if self.bus is not None:
            if self.intrq and not self.control & NIEN:
                self.bus.raise_irq("ide", IDE_IRQ)
            else:
                self.bus.lower_irq("ide", IDE_IRQ)

    # ---- registers -------------------------------------------------------------------------------
    def read(self, offset: int, size: int) -> int:
        if offset == DATA:
            return self._data_in(size)
        if self.drive & 0x10:
            return 0          # the slave is absent: the master leaves its registers at 0
        if offset == STATUS:
            if self.intrq:
                self._interrupt(False)                  # reading the status acknowledges INTRQ
            return self.status
        if offset == ERROR:
            return self.error
        if offset == COUNT:
            return self.count[0]
        if offset in (LBA0, LBA1, LBA2):
            return self.lba[offset - LBA0]
        return self.drive     # DRIVE

    def write(self, offset: int, size: int, value: int) -> None:
        if offset == DATA:
            self._data_out(size, value)
        elif offset == ERROR:
            self.features = value & 0xFF
        elif offset == COUNT:
            self.count[0] = value & 0xFF
        elif offset in (LBA0, LBA1, LBA2):
            self.lba[offset - LBA0] = value & 0xFF
        elif offset == DRIVE:
            self.drive = value & 0xFF | 0xA0
        elif offset == STATUS:
            self._command(value & 0xFF)

    def _read_control(self, _offset: int, _size: int) -> int:
        return 0 if self.drive & 0x10 else self.status   # alternate status: no side effects here either

    def _write_control(self, _offset: int, _size: int, value: int) -> None:
        was, self.control = self.control, value & 0xFF
        self._sync_irq()                                # nIEN may have changed
        if self.control & SRST:
            self.status = BSY
            self.buffer, self.pos, self._write_at = bytearray(), 0, None
            self._interrupt(False)
        elif was & SRST:
            # Reset done: the ATA signature of a non-packet device, and ready.
            self.count[0], self.lba, self.drive = 1, [1, 0, 0], 0xA0
            self.error, self.status = 1, DRDY | DSC     # error 01h: diagnostics passed

    # ---- commands --------------------------------------------------------------------------------
    def _command(self, command: int) -> None:
        if self.status & BSY or self.drive & 0x10:
            return            # a busy drive, or the absent slave, ignores commands
        self.error, self.buffer, self.pos, self._write_at = 0, bytearray(), 0, None
        self.intrq = False    # a command write clears INTRQ (the line follows below)
        if command == IDENTIFY:
            self.buffer = bytearray(self.identify())
            self.status = DRDY | DSC | DRQ
            self.completed["identify"] += 1
            return self._interrupt(True)                # data ready
        if command not in (READ, READ_NR, WRITE, WRITE_NR) or not self.drive & 0x40:
            return self._abort(ABRT)                    # unknown command, or CHS addressing
        lba = self.lba[0] | self.lba[1] << 8 | self.lba[2] << 16 | (self.drive & 0x0F) << 24
        count = self.count[0] or 256
        if lba + count > self.sectors:
            return self._abort(IDNF | ABRT)
        if command in (READ, READ_NR):
            self.buffer = bytearray(self.disk.read(lba * SECTOR, count * SECTOR))
            self._busy += self._service(count)
            self.completed["read"] += 1
            self._measure("disk_read_bytes", count * SECTOR)
            self.status = DRDY | DSC | DRQ
            return self._interrupt(True)                # data ready
        self._write_at = lba
        self.buffer = bytearray(count * SECTOR)
        self.status = DRDY | DSC | DRQ
        self._sync_irq()      # PIO data-out: the first block is asked for without an interrupt

    def _abort(self, error: int) -> None:
        self.error, self.status = error, DRDY | DSC | ERR
        self.completed["aborted"] += 1
        self._interrupt(True)

    def _measure(self, what: str, size: int) -> None:
        self.measured[what] += size
        self.measured["disk_normalized_ios"] += -(-size // 8192)   # 8 KiB units, as Hyper-V counts

    def _service(self, sectors: int) -> int:
        return self.latency_ns + -(-sectors * SECTOR * 1_000_000_000 // self.bandwidth)

    def _data_in(self, size: int) -> int:
        if not self.status & DRQ or self._write_at is not None:
            return 0xFFFF if size == 2 else (1 << 8 * size) - 1
        chunk = self.buffer[self.pos:self.pos + size]
        self.pos += size
        if self.pos >= len(self.buffer):
            self.status &= ~DRQ                       # the last word: the command is done
        return int.from_bytes(chunk.ljust(size, b"\xff"), "little")

    def _data_out(self, size: int, value: int) -> None:
        if not self.status & DRQ or self._write_at is None:
            return
        self.buffer[self.pos:self.pos + size] = value.to_bytes(size, "little")
        self.pos += size
        if self.pos >= len(self.buffer):
            self.disk.write(self._write_at * SECTOR, bytes(self.buffer))
            self._busy += self._service(len(self.buffer) // SECTOR)
            self._write_at, self.status = None, DRDY | DSC
            self.completed["write"] += 1
            self._measure("disk_written_bytes", len(self.buffer))
            self._interrupt(True)                       # the write is done

    # ---- its state as data (save, restore, migration) ------------------------------------------------
    def save_state(self) -> dict:
        """The drive's state as plain data: the task file, status and error, device control, the
        PIO buffer and how far the guest got through it, the LBA of a write in progress (its data
        is in the buffer: the VHD gets it only with the last word) and the commands counted. The
        disk's contents are the VHD's, not this record's."""
        return {"format": STATE_FORMAT, "sectors": self.sectors, "features": self.features, "error": self.error,
                "count": self.count[0], "lba": list(self.lba), "drive": self.drive, "control": self.control,
                "status": self.status, "buffer": bytes(self.buffer), "pos": self.pos, "write_at": self._write_at,
                "busy_ns": self._busy, "intrq": self.intrq, "completed": dict(self.completed)}

    def load_state(self, state: dict) -> None:
        """Go on from a save_state() record (check_state first: a bad one raises ValueError and
        changes nothing). A guest saved in the middle of a PIO transfer reads (or writes) on from
        the word it stopped at."""
        problem = check_state(state, self.sectors)
        if problem is not None:
            raise ValueError(f"IDE drive state: {problem}")
        self.features, self.error, self.count[0] = state["features"], state["error"], state["count"]
        self.lba, self.drive, self.control, self.status = list(state["lba"]), state["drive"], state["control"], state["status"]
        self.buffer, self.pos, self._write_at = bytearray(state["buffer"]), state["pos"], state["write_at"]
        self._busy = state["busy_ns"]
        self.completed = dict(state["completed"])
        self.intrq = state.get("intrq", False)
        self._sync_irq()      # an interrupt saved pending is pending again

    def close(self) -> None:
        """The VM is gone: let go of the disk file."""
        self.disk.close()

    def identify(self) -> bytes:
        """IDENTIFY DEVICE's 256 words (ATA-6 layout, the fields a driver reads)."""
        w = [0] * 256
        w[0] = 0x0040                                   # fixed, non-removable ATA device
        cyl = min(self.sectors // (16 * 63), 16383)
        w[1], w[3], w[6] = cyl, 16, 63                  # default CHS geometry (legacy)
        w[10:20] = _ata_string(self.serial, 10)
        w[23:27] = _ata_string("1.0", 4)
        w[27:47] = _ata_string(self.model, 20)
        w[47] = 0x8001                                  # READ/WRITE MULTIPLE: at most 1 sector
        w[49] = 0x0200                                  # LBA supported
        w[53] = 0x0001                                  # words 54-58 are valid
        w[54], w[55], w[56] = cyl, 16, 63
        chs = cyl * 16 * 63
        w[57], w[58] = chs & 0xFFFF, chs >> 16
        w[60], w[61] = self.sectors & 0xFFFF, self.sectors >> 16   # 28-bit LBA capacity
        w[80] = 0x0040                                  # ATA-6
        w[82], w[83], w[84] = 0x4000, 0x4000, 0x4000    # command sets: bit 14 set, nothing else (no LBA48)
        w[85], w[86], w[87] = 0, 0x0000, 0x4000
        data = bytearray(struct.pack("<256H", *w))
        # Word 255: signature A5h and a checksum making the 512 bytes sum to 0 (mod 256).
        data[510] = 0xA5
        data[511] = -sum(data[:511]) & 0xFF
        return bytes(data)


async def pio_reads(ctx, sectors: int = 8, interval: str = "10ms") -> None:
    """A Python guest's driver loop for the drive (a `python` workload: "partitions.native_guest.
    ide:pio_reads"): IDENTIFY once, then every `interval` READ SECTORS of `sectors` at the next
    LBA, a word per intercept, wrapping at the disk's end. Keeps in ctx.state the drive's size
    (`disk_sectors`), the next LBA (`lba`), the reads done (`reads`) and the last status (`status`),
    so a restore into a new shell reads on from there."""
    state = ctx.state
    if "disk_sectors" not in state:
        await ctx.port_out(PRIMARY_BASE + DRIVE, 1, 0xE0)
        await ctx.port_out(PRIMARY_BASE + STATUS, 1, IDENTIFY)
        words = [await ctx.port_in(PRIMARY_BASE + DATA, 2) for _ in range(256)]
        state.update(disk_sectors=words[60] | words[61] << 16, lba=0, reads=0)
    while True:
        lba = state["lba"]
        await ctx.port_out(PRIMARY_BASE + DRIVE, 1, 0xE0 | lba >> 24 & 0x0F)
        await ctx.port_out(PRIMARY_BASE + COUNT, 1, sectors & 0xFF)
        for i in range(3):
            await ctx.port_out(PRIMARY_BASE + LBA0 + i, 1, lba >> 8 * i & 0xFF)
        await ctx.port_out(PRIMARY_BASE + STATUS, 1, READ)
        status = await ctx.port_in(PRIMARY_BASE + STATUS, 1)
        if status & DRQ:
            for _ in range(sectors * SECTOR // 2):
                await ctx.port_in(PRIMARY_BASE + DATA, 2)
        nxt = lba + sectors
        state.update(lba=0 if nxt + sectors > state["disk_sectors"] else nxt, reads=state["reads"] + 1,
                     status=status)
        await ctx.sleep(interval)


def check_state(state, sectors: int | None = None) -> str | None:
    """What is wrong with an IdeDisk.save_state() record (for a drive of `sectors`, if given), or
    None: checked before a restore changes anything."""
    def byte(x) -> bool:
        return isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 256

    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        return f"expected a map with format {STATE_FORMAT}"
    if not (isinstance(state.get("sectors"), int) and 0 < state["sectors"] <= MAX_LBA28 + 1):
        return "sectors: expected the drive's size in sectors"
    if sectors is not None and state["sectors"] != sectors:
        return f"a drive of {state['sectors']} sectors, this one has {sectors} (another disk?)"
    if not all(byte(state.get(k)) for k in ("features", "error", "count", "drive", "control", "status")):
        return "features, error, count, drive, control, status: expected bytes (0-255)"
    if not (isinstance(state.get("lba"), list) and len(state["lba"]) == 3 and all(map(byte, state["lba"]))):
        return "lba: expected three bytes"
    buffer, pos = state.get("buffer"), state.get("pos")
    if not (isinstance(buffer, bytes) and len(buffer) % 2 == 0 and len(buffer) <= 256 * SECTOR):
        return "buffer: expected the bytes of at most 256 sectors"
    if not (isinstance(pos, int) and not isinstance(pos, bool) and 0 <= pos <= len(buffer)):
        return "pos: expected a position in the buffer"
    write_at = state.get("write_at")
    if write_at is not None and not (isinstance(write_at, int) and 0 <= write_at
                                     and write_at + len(buffer) // SECTOR <= state["sectors"]):
        return "write_at: expected None or the LBA of a write that fits the disk"
    if not (isinstance(state.get("busy_ns"), int) and state["busy_ns"] >= 0):
        return "busy_ns: expected a time in ns"
    # (a record from before interrupts were modelled has no "intrq": no interrupt pending)
    if not isinstance(state.get("intrq", False), bool):
        return "intrq: expected a boolean (the drive's interrupt pending)"
    if state.get("intrq") and state["status"] & 0x80:
        return "intrq: a drive in reset (BSY) has no interrupt pending"
    completed = state.get("completed")
    if not (isinstance(completed, dict) and set(completed) == set(COMPLETED)
            and all(isinstance(v, int) and v >= 0 for v in completed.values())):
        return f"completed: expected counts of {', '.join(COMPLETED)}"
    return None
