"""The SCSI target behind storvsp: direct-access logical units (a subset of SBC-3/SPC-3), each
with a VirtualDisk of 512-byte blocks as its medium, and REPORT LUNS, which the target answers for
all of them.

Each command is decoded first and executed second, as the core's hypercalls are: `decode(cdb,
buffer_length)` checks everything (opcode, fields, LBA range, the buffer the initiator gave) and
returns either a `ScsiResult` saying why not, or a `Command` whose `execute(buffer)` can fail only
on the medium. The transport (storvsp) uses the Command to know how many bytes will move which
way, and when the medium is involved, before anything moves.

Commands: TEST UNIT READY; INQUIRY (standard data, VPD 0x00 supported pages, 0x80 unit serial
number, 0x83 device identification); READ CAPACITY (10) and (16) (SERVICE ACTION IN 0x9E/0x10);
READ and WRITE (10) and (16); SYNCHRONIZE CACHE (10) and (16), which make every completed write
durable. The medium has a volatile write cache (`VirtualDisk`): a WRITE completes once the file
system has it, and is durable after the next SYNCHRONIZE CACHE, or at once with the FUA bit (a
FUA write flushes the whole cache, which SBC allows: more than that write becomes durable).
The target (`report_luns`): REPORT LUNS, addressed to any LUN, present or not (SPC-4 6.33).

Errors are CHECK CONDITION with fixed-format sense (the SRB status is chosen as OpenVMM's
storvsp does: ILLEGAL REQUEST -> INVALID_REQUEST, anything else -> ERROR):
  - LBA + length beyond the capacity          -> ILLEGAL REQUEST / LBA OUT OF RANGE (0x21)
  - an opcode this target does not implement  -> ILLEGAL REQUEST / INVALID COMMAND OPERATION CODE (0x20)
  - a reserved/unsupported field, a CDB shorter than its opcode needs, an unknown VPD page or
    service action                            -> ILLEGAL REQUEST / INVALID FIELD IN CDB (0x24)
  - a WRITE on a read-only disk               -> DATA PROTECT / WRITE PROTECTED (0x27)
  - the file failing underneath               -> MEDIUM ERROR / UNRECOVERED READ ERROR (0x11) or
                                                 WRITE ERROR (0x0C)
Buffers: a command that returns at most an allocation length of data (INQUIRY, READ CAPACITY
(16)) transfers min(allocation length, data, buffer) bytes and succeeds, as SPC allows
truncation. A command whose transfer the CDB fixes (READ/WRITE: blocks x 512; READ CAPACITY
(10): 8) and that does not fit the initiator's buffer is refused before any byte moves, with SRB
status DATA_OVERRUN *and* CHECK CONDITION / ILLEGAL REQUEST / INVALID FIELD IN CDB (what OpenVMM
reports for an overrun): the transport-level status tells storvsc the buffer was short, the
sense tells the SCSI midlayer the command was not executed. A longer buffer is fine;
`transferred` says how much moved.
"""
from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import Callable

from drivers.storage.protocol import (
    BLOCK_SIZE, SA_READ_CAPACITY_16, Asc, Op, ScsiStatus, SenseKey, SrbStatus, lun_entry, sense_fixed,
)
from drivers.storage.vhd import VhdError, VirtualDisk

VENDOR = "Msft"          # what Hyper-V's virtual disks report
PRODUCT = "Virtual Disk"
REVISION = "1.0"

SYNCHRONIZE_CACHE_16 = 0x91
FUA = 0x08              # byte 1 of READ/WRITE (10)/(16): force unit access
_CDB_LENGTH = {Op.TEST_UNIT_READY: 6, Op.INQUIRY: 6, Op.READ_CAPACITY_10: 10, Op.READ_10: 10,
               Op.WRITE_10: 10, Op.SYNCHRONIZE_CACHE_10: 10, Op.READ_16: 16, Op.WRITE_16: 16,
               Op.SERVICE_ACTION_IN_16: 16, SYNCHRONIZE_CACHE_16: 16}
_REPORT_LUNS_CDB = 12   # the target's command: a logical unit on its own does not know its peers
_VPD_PAGES = (0x00, 0x80, 0x83)


class Direction(enum.Enum):
    NONE = "none"
    IN = "in"     # device -> initiator (a read)
    OUT = "out"   # initiator -> device (a write)


@dataclass(frozen=True)
class ScsiResult:
    scsi_status: int
    srb_status: int                # SrbStatus, without the AUTOSENSE_VALID flag
    transferred: int = 0           # bytes moved through the buffer
    sense: bytes | None = None     # fixed-format sense, with CHECK CONDITION

    @property
    def ok(self) -> bool:
        return self.scsi_status == ScsiStatus.GOOD and self.srb_status == SrbStatus.SUCCESS


GOOD = ScsiResult(ScsiStatus.GOOD, SrbStatus.SUCCESS)


def check_condition(key: int, asc: int, srb_status: int | None = None) -> ScsiResult:
    if srb_status is None:
        srb_status = SrbStatus.INVALID_REQUEST if key == SenseKey.ILLEGAL_REQUEST else SrbStatus.ERROR
    return ScsiResult(ScsiStatus.CHECK_CONDITION, srb_status, 0, sense_fixed(key, asc))


def illegal(asc: int) -> ScsiResult:
    return check_condition(SenseKey.ILLEGAL_REQUEST, asc)


def _overrun() -> ScsiResult:
    """The CDB fixes a transfer longer than the initiator's buffer: refused, nothing moves."""
    return check_condition(SenseKey.ILLEGAL_REQUEST, Asc.INVALID_FIELD_IN_CDB, SrbStatus.DATA_OVERRUN)


@dataclass(frozen=True)
class Command:
    """A CDB that passed decode(): what it moves, and how to carry it out."""

    opcode: int
    direction: Direction
    length: int       # bytes it moves through the buffer
    medium: bool      # it reaches the disk (so the disk's service time applies)
    _run: Callable[[memoryview], ScsiResult]

    def execute(self, buffer) -> ScsiResult:
        """Carry the command out on `buffer` (at least `length` bytes; writable for IN)."""
        return self._run(memoryview(buffer).cast("B"))


class ScsiDisk:
    """A logical unit over an open VirtualDisk (which the caller owns and closes)."""

    def __init__(self, disk: VirtualDisk, *, serial: str | None = None):
        if disk.size % BLOCK_SIZE:
            raise ValueError(f"{disk.path}: size {disk.size} is not a multiple of {BLOCK_SIZE}")
        self.disk = disk
        # The serial (VPD 0x80) and the identifier (0x83) come from the VHD's unique id, so the
        # same file is the same disk to the guest after a host restart.
        self.serial = serial if serial is not None else disk.info()["uuid"].replace("-", "")[:32]
        self.blocks = disk.size // BLOCK_SIZE

    # -- decode ------------------------------------------------------------------------------

    def decode(self, cdb: bytes, buffer_length: int) -> Command | ScsiResult:
        cdb = bytes(cdb)
        if not cdb:
            return illegal(Asc.INVALID_COMMAND_OPERATION_CODE)
        op = cdb[0]
        need = _CDB_LENGTH.get(op)
        if need is None:
            return illegal(Asc.INVALID_COMMAND_OPERATION_CODE)
        if len(cdb) < need:
            return illegal(Asc.INVALID_FIELD_IN_CDB)
        if op == Op.TEST_UNIT_READY:
            return Command(op, Direction.NONE, 0, False, lambda buf: GOOD)
        if op == Op.INQUIRY:
            return self._decode_inquiry(cdb, buffer_length)
        if op == Op.READ_CAPACITY_10:
            last = min(self.blocks - 1, 0xFFFFFFFF)  # 0xFFFFFFFF: "use READ CAPACITY (16)"
            if buffer_length < 8:  # no allocation length: the 8 bytes are the transfer
                return _overrun()
            return self._data_in(op, struct.pack(">II", last, BLOCK_SIZE), 8, buffer_length)
        if op == Op.SERVICE_ACTION_IN_16:
            if cdb[1] & 0x1F != SA_READ_CAPACITY_16:
                return illegal(Asc.INVALID_FIELD_IN_CDB)
            (alloc,) = struct.unpack_from(">I", cdb, 10)
            data = struct.pack(">QI", self.blocks - 1, BLOCK_SIZE).ljust(32, b"\0")
            return self._data_in(op, data, alloc, buffer_length)
        if op in (Op.READ_10, Op.WRITE_10):
            lba, blocks = struct.unpack_from(">I", cdb, 2)[0], struct.unpack_from(">H", cdb, 7)[0]
            return self._decode_rw(op, lba, blocks, op == Op.WRITE_10, buffer_length, bool(cdb[1] & FUA))
        if op in (Op.READ_16, Op.WRITE_16):
            lba, blocks = struct.unpack_from(">QI", cdb, 2)
            return self._decode_rw(op, lba, blocks, op == Op.WRITE_16, buffer_length, bool(cdb[1] & FUA))
        if op == SYNCHRONIZE_CACHE_16:
            lba, blocks = struct.unpack_from(">QI", cdb, 2)
        else:
            assert op == Op.SYNCHRONIZE_CACHE_10
            lba, blocks = struct.unpack_from(">I", cdb, 2)[0], struct.unpack_from(">H", cdb, 7)[0]
        if lba + blocks > self.blocks:
            return illegal(Asc.LBA_OUT_OF_RANGE)
        return Command(op, Direction.NONE, 0, True, self._flush)

    def _decode_inquiry(self, cdb: bytes, buffer_length: int) -> Command | ScsiResult:
        evpd, page = cdb[1] & 1, cdb[2]
        (alloc,) = struct.unpack_from(">H", cdb, 3)
        if cdb[1] & 0xFE or (not evpd and page):
            return illegal(Asc.INVALID_FIELD_IN_CDB)
        if not evpd:
            data = self._standard_inquiry()
        elif page == 0x00:
            data = bytes([0, 0x00, 0, len(_VPD_PAGES), *_VPD_PAGES])
        elif page == 0x80:
            serial = self.serial.encode("ascii")
            data = bytes([0, 0x80, 0, len(serial)]) + serial
        elif page == 0x83:
            # One designator: T10 vendor ID based (type 1), ASCII, associated with the LU.
            ident = VENDOR.ljust(8).encode("ascii") + self.serial.encode("ascii")
            designator = bytes([0x02, 0x01, 0, len(ident)]) + ident
            data = struct.pack(">BBH", 0, 0x83, len(designator)) + designator
        else:
            return illegal(Asc.INVALID_FIELD_IN_CDB)
        return self._data_in(Op.INQUIRY, data, alloc, buffer_length)

    def _standard_inquiry(self) -> bytes:
        data = bytearray(36)
        data[0] = 0x00            # peripheral qualifier 0, direct-access block device
        data[2] = 0x05            # SPC-3
        data[3] = 0x02            # response data format 2
        data[4] = len(data) - 5   # additional length
        data[7] = 0x02            # CmdQue: tagged queueing
        data[8:16] = VENDOR.ljust(8).encode("ascii")
        data[16:32] = PRODUCT.ljust(16).encode("ascii")
        data[32:36] = REVISION.ljust(4).encode("ascii")
        return bytes(data)

    @staticmethod
    def _data_in(op: int, data: bytes, alloc: int, buffer_length: int) -> Command:
        n = min(len(data), alloc, buffer_length)

        def run(buf: memoryview) -> ScsiResult:
            buf[:n] = data[:n]
            return ScsiResult(ScsiStatus.GOOD, SrbStatus.SUCCESS, n)

        return Command(op, Direction.IN, n, False, run)

    def _decode_rw(self, op: int, lba: int, blocks: int, write: bool,
                   buffer_length: int, fua: bool = False) -> Command | ScsiResult:
        if lba + blocks > self.blocks or (blocks == 0 and lba > self.blocks):
            return illegal(Asc.LBA_OUT_OF_RANGE)
        if write and self.disk.read_only:
            return check_condition(SenseKey.DATA_PROTECT, Asc.WRITE_PROTECTED)
        length = blocks * BLOCK_SIZE
        if length > buffer_length:
            return _overrun()
        offset = lba * BLOCK_SIZE
        if write:
            return Command(op, Direction.OUT, length, True, lambda buf: self.write_blocks(offset, buf[:length], fua))
        # A FUA read reads the medium; the cache never holds anything the file does not, so
        # every read already does.
        return Command(op, Direction.IN, length, True, lambda buf: self._read(offset, buf[:length]))

    # -- execute (only the medium can fail now) ------------------------------------------------

    def _read(self, offset: int, buf: memoryview) -> ScsiResult:
        try:
            if len(buf):
                self.disk.readinto(offset, buf)
        except (OSError, VhdError):
            return check_condition(SenseKey.MEDIUM_ERROR, Asc.UNRECOVERED_READ_ERROR)
        return ScsiResult(ScsiStatus.GOOD, SrbStatus.SUCCESS, len(buf))

    def write_blocks(self, offset: int, buf, fua: bool = False) -> ScsiResult:
        """What a decoded WRITE does on the medium: `buf` (whole blocks) at byte `offset`, then a
        flush with FUA. Also storvsp's C plane's way to the medium when the VHD's tables must
        change (it checked the CDB as decode does)."""
        try:
            self.disk.write(offset, buf)
            if fua:
                self.disk.flush()
        except (OSError, VhdError):
            return check_condition(SenseKey.MEDIUM_ERROR, Asc.WRITE_ERROR)
        return ScsiResult(ScsiStatus.GOOD, SrbStatus.SUCCESS, len(buf))

    def _flush(self, buf: memoryview) -> ScsiResult:
        try:
            self.disk.flush()
        except (OSError, VhdError):
            return check_condition(SenseKey.MEDIUM_ERROR, Asc.WRITE_ERROR)
        return GOOD

    def run(self, cdb: bytes, buffer) -> ScsiResult:
        """decode then execute, on one buffer: what a test or a simple transport calls."""
        view = memoryview(buffer).cast("B")
        command = self.decode(cdb, len(view))
        return command if isinstance(command, ScsiResult) else command.execute(view)


def report_luns(cdb: bytes, luns: list[int], buffer_length: int) -> Command | ScsiResult:
    """REPORT LUNS for a target whose logical units are `luns`: decoded like any command (the CDB
    checked first), answered by the target rather than by one unit. SELECT REPORT 0 and 2 list
    the units, 1 (well-known LUNs only) lists none, as hvsim has no well-known LUNs."""
    cdb = bytes(cdb)
    if len(cdb) < _REPORT_LUNS_CDB or cdb[0] != Op.REPORT_LUNS:
        return illegal(Asc.INVALID_FIELD_IN_CDB)
    select, (alloc,) = cdb[2], struct.unpack_from(">I", cdb, 6)
    if select not in (0, 1, 2) or alloc < 16:   # SPC: an allocation length under 16 is an error
        return illegal(Asc.INVALID_FIELD_IN_CDB)
    listed = [] if select == 1 else sorted(luns)
    data = struct.pack(">II", 8 * len(listed), 0) + b"".join(lun_entry(lun) for lun in listed)
    return ScsiDisk._data_in(Op.REPORT_LUNS, data, alloc, buffer_length)
