"""The SCSI target behind storvsp, on small VHD files: every command it implements, every error
it reports (as CHECK CONDITION with fixed-format sense), and decode's promise that nothing moves
before execute."""
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.storage import protocol as p
from drivers.storage.protocol import Asc, Op, ScsiStatus, SenseKey, SrbStatus
from drivers.storage.scsi import Command, Direction, ScsiDisk, ScsiResult
from drivers.storage.vhd import VirtualDisk

SIZE = 2 << 20          # 4096 blocks
BLOCKS = SIZE // 512


@pytest.fixture
def disk(tmp_path):
    with VirtualDisk.create(tmp_path / "d.vhd", SIZE, "dynamic", write_barriers=False) as vd:
        yield vd


@pytest.fixture
def target(disk):
    return ScsiDisk(disk)


def sense_of(result: ScsiResult):
    assert result.scsi_status == ScsiStatus.CHECK_CONDITION
    return p.parse_sense(result.sense)


def rw(op, lba, blocks):
    if op in (Op.READ_10, Op.WRITE_10, Op.SYNCHRONIZE_CACHE_10):
        return struct.pack(">BBIBHB", op, 0, lba, 0, blocks, 0)
    return struct.pack(">BBQIBB", op, 0, lba, blocks, 0, 0)


# -- INQUIRY ---------------------------------------------------------------------------------


def test_standard_inquiry(target):
    buf = bytearray(96)
    result = target.run(p.cdb_inquiry(96), buf)
    assert result.ok and result.transferred == 36
    data = bytes(buf[:36])
    assert data[0] == 0x00                     # connected direct-access block device
    assert data[2] == 0x05 and data[3] & 0x0F == 2 and data[4] == 31
    assert data[8:16] == b"Msft    " and data[16:32] == b"Virtual Disk    " and data[32:36] == b"1.0 "
    assert buf[36:] == bytes(60)               # nothing past the data


def test_inquiry_truncates_to_the_allocation_length(target):
    buf = bytearray(96)
    result = target.run(p.cdb_inquiry(5), buf)
    assert result.ok and result.transferred == 5 and buf[5:] == bytes(91)


def test_vpd_pages(target, disk):
    buf = bytearray(255)
    result = target.run(p.cdb_inquiry(255, page=0x00), buf)
    assert result.ok and bytes(buf[:result.transferred]) == bytes([0, 0, 0, 3, 0x00, 0x80, 0x83])

    result = target.run(p.cdb_inquiry(255, page=0x80), buf)
    serial = disk.info()["uuid"].replace("-", "").encode()
    assert result.ok and buf[1] == 0x80 and buf[3] == len(serial)
    assert bytes(buf[4:4 + len(serial)]) == serial == target.serial.encode()

    result = target.run(p.cdb_inquiry(255, page=0x83), buf)
    assert result.ok and buf[1] == 0x83
    (page_length,) = struct.unpack_from(">H", buf, 2)
    assert result.transferred == 4 + page_length
    code_set, kind, _, length = buf[4:8]
    assert (code_set & 0x0F, kind & 0x0F, kind & 0x30) == (2, 1, 0)   # ASCII, T10 vendor id, LU
    assert bytes(buf[8:8 + length]) == b"Msft    " + serial


def test_the_serial_follows_the_file_not_the_host(tmp_path):
    path = tmp_path / "same.vhd"
    with VirtualDisk.create(path, SIZE, "dynamic") as vd:
        first = ScsiDisk(vd).serial
    with VirtualDisk.open(path) as vd:
        assert ScsiDisk(vd).serial == first


@pytest.mark.parametrize("cdb", [
    bytes([Op.INQUIRY, 1, 0x81, 0, 255, 0]),   # a VPD page it does not have
    bytes([Op.INQUIRY, 0, 0x80, 0, 255, 0]),   # a page code without EVPD
    bytes([Op.INQUIRY, 2, 0, 0, 255, 0]),      # obsolete CmdDt bit
])
def test_inquiry_invalid_fields(target, cdb):
    result = target.run(cdb, bytearray(255))
    assert sense_of(result) == (SenseKey.ILLEGAL_REQUEST, Asc.INVALID_FIELD_IN_CDB, 0)
    assert result.srb_status == SrbStatus.INVALID_REQUEST and result.transferred == 0


# -- TEST UNIT READY, READ CAPACITY ------------------------------------------------------------


def test_test_unit_ready(target):
    command = target.decode(p.cdb_test_unit_ready(), 0)
    assert isinstance(command, Command) and command.direction is Direction.NONE and not command.medium
    assert command.execute(bytearray()).ok


def test_read_capacity_10(target):
    buf = bytearray(8)
    assert target.run(p.cdb_read_capacity_10(), buf).transferred == 8
    assert struct.unpack(">II", buf) == (BLOCKS - 1, 512)


def test_read_capacity_10_with_a_short_buffer_is_an_overrun(target):
    result = target.run(p.cdb_read_capacity_10(), bytearray(4))
    assert result.srb_status == SrbStatus.DATA_OVERRUN
    assert sense_of(result) == (SenseKey.ILLEGAL_REQUEST, Asc.INVALID_FIELD_IN_CDB, 0)


def test_read_capacity_16(target):
    buf = bytearray(32)
    result = target.run(p.cdb_read_capacity_16(32), buf)
    assert result.ok and result.transferred == 32
    assert struct.unpack_from(">QI", buf) == (BLOCKS - 1, 512) and buf[12:] == bytes(20)
    short = bytearray(32)
    assert target.run(p.cdb_read_capacity_16(12), short).transferred == 12


def test_service_action_in_other_than_read_capacity_is_refused(target):
    cdb = bytearray(p.cdb_read_capacity_16())
    cdb[1] = 0x12  # GET LBA STATUS: not implemented
    assert sense_of(target.run(bytes(cdb), bytearray(32)))[1] == Asc.INVALID_FIELD_IN_CDB


# -- READ / WRITE / SYNCHRONIZE CACHE -----------------------------------------------------------


@pytest.mark.parametrize("read_op,write_op", [(Op.READ_10, Op.WRITE_10), (Op.READ_16, Op.WRITE_16)])
def test_write_then_read(target, disk, read_op, write_op):
    data = bytes(range(256)) * 16  # 8 blocks
    command = target.decode(rw(write_op, 100, 8), len(data))
    assert command.direction is Direction.OUT and command.medium and command.length == len(data)
    assert command.execute(data).transferred == len(data)
    assert disk.read(100 * 512, len(data)) == data
    buf = bytearray(len(data))
    result = target.run(rw(read_op, 100, 8), buf)
    assert result.ok and result.transferred == len(data) and bytes(buf) == data


def test_the_last_block_and_zero_length_transfers(target):
    assert target.run(rw(Op.WRITE_10, BLOCKS - 1, 1), b"z" * 512).ok
    buf = bytearray(512)
    assert target.run(rw(Op.READ_16, BLOCKS - 1, 1), buf).ok and buf == b"z" * 512
    nothing = target.run(rw(Op.READ_10, BLOCKS, 0), bytearray())  # SBC: zero blocks is no error
    assert nothing.ok and nothing.transferred == 0


@pytest.mark.parametrize("op,lba,blocks", [
    (Op.READ_10, BLOCKS, 1),          # just past the end
    (Op.WRITE_10, BLOCKS - 1, 2),     # starts inside, ends outside
    (Op.READ_16, 2**64 - 1, 1),       # no wrap-around
    (Op.WRITE_16, 2**63, 2**32 - 1),
    (Op.READ_10, BLOCKS + 1, 0),
    (Op.SYNCHRONIZE_CACHE_10, BLOCKS, 1),
])
def test_lba_out_of_range(target, disk, op, lba, blocks):
    before = disk.allocated_blocks
    result = target.run(rw(op, lba, blocks), bytearray(512 * min(blocks, 4)))
    assert sense_of(result) == (SenseKey.ILLEGAL_REQUEST, Asc.LBA_OUT_OF_RANGE, 0)
    assert result.srb_status == SrbStatus.INVALID_REQUEST and result.transferred == 0
    assert disk.allocated_blocks == before


@pytest.mark.parametrize("opcode", [0x03, 0x1A, 0x5A, 0xA0, 0x08, 0xFF])
def test_unknown_opcode(target, opcode):
    result = target.run(bytes([opcode]) + bytes(15), bytearray(64))
    assert sense_of(result) == (SenseKey.ILLEGAL_REQUEST, Asc.INVALID_COMMAND_OPERATION_CODE, 0)
    assert result.srb_status == SrbStatus.INVALID_REQUEST


def test_an_empty_or_truncated_cdb(target):
    assert sense_of(target.run(b"", bytearray()))[1] == Asc.INVALID_COMMAND_OPERATION_CODE
    assert sense_of(target.run(rw(Op.READ_16, 0, 1)[:10], bytearray(512)))[1] == Asc.INVALID_FIELD_IN_CDB


@pytest.mark.parametrize("op", [Op.READ_10, Op.WRITE_16])
def test_a_buffer_too_short_for_the_transfer_is_an_overrun_and_moves_nothing(target, disk, op):
    disk.write(0, b"\x55" * 4096)
    buf = bytearray(b"\xAA" * 1024)
    result = target.run(rw(op, 0, 8), buf)   # 8 blocks into 2 blocks of buffer
    assert result.srb_status == SrbStatus.DATA_OVERRUN and result.transferred == 0
    assert sense_of(result) == (SenseKey.ILLEGAL_REQUEST, Asc.INVALID_FIELD_IN_CDB, 0)
    assert buf == b"\xAA" * 1024 and disk.read(0, 4096) == b"\x55" * 4096


def test_a_longer_buffer_is_fine(target):
    buf = bytearray(4096)
    result = target.run(rw(Op.READ_10, 0, 1), buf)
    assert result.ok and result.transferred == 512


def test_decode_moves_nothing(target, disk):
    command = target.decode(rw(Op.WRITE_10, 0, 1), 512)
    assert isinstance(command, Command)
    assert disk.read(0, 512) == bytes(512) and disk.allocated_blocks == 0   # not executed


def test_write_to_a_read_only_disk(tmp_path):
    path = tmp_path / "ro.vhd"
    VirtualDisk.create(path, SIZE, "dynamic").close()
    with VirtualDisk.open(path, read_only=True) as vd:
        result = ScsiDisk(vd).run(rw(Op.WRITE_10, 0, 1), b"x" * 512)
        assert sense_of(result) == (SenseKey.DATA_PROTECT, Asc.WRITE_PROTECTED, 0)
        assert result.srb_status == SrbStatus.ERROR


def test_synchronize_cache(target, disk):
    command = target.decode(p.cdb_synchronize_cache(), 0)
    assert command.medium and command.length == 0
    assert command.execute(bytearray()).ok


def test_a_failing_file_is_a_medium_error(target, disk):
    read = target.decode(rw(Op.READ_10, 0, 1), 512)
    write = target.decode(rw(Op.WRITE_10, 0, 1), 512)
    disk.close()   # the file goes away between decode and execute
    assert sense_of(read.execute(bytearray(512))) == (SenseKey.MEDIUM_ERROR, Asc.UNRECOVERED_READ_ERROR, 0)
    assert sense_of(write.execute(b"x" * 512)) == (SenseKey.MEDIUM_ERROR, Asc.WRITE_ERROR, 0)
    assert read.execute(bytearray(512)).srb_status == SrbStatus.ERROR


def test_fixed_format_sense_layout(target):
    sense = target.run(bytes([0xFF]) + bytes(9), bytearray()).sense
    assert len(sense) == 18 and sense[0] == 0x70 and sense[7] == 10
    assert (sense[2], sense[12], sense[13]) == (SenseKey.ILLEGAL_REQUEST, 0x20, 0)


# -- any CDB at all ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fuzz_target(tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzz") / "f.vhd"
    with VirtualDisk.create(path, 64 * 512, "dynamic", write_barriers=False) as vd:
        yield ScsiDisk(vd)


@settings(max_examples=300, deadline=None)
@given(cdb=st.one_of(st.binary(max_size=16),
                     st.builds(lambda op, rest: bytes([op]) + rest,
                               st.sampled_from(list(Op)), st.binary(min_size=5, max_size=15))),
       buffer_length=st.integers(0, 8192))
def test_any_cdb_decodes_to_a_command_or_a_check_condition(fuzz_target, cdb, buffer_length):
    command = fuzz_target.decode(cdb, buffer_length)
    if isinstance(command, ScsiResult):
        assert command.scsi_status == ScsiStatus.CHECK_CONDITION and command.transferred == 0
        key, asc, _ = p.parse_sense(command.sense)
        assert (key, asc) in {(SenseKey.ILLEGAL_REQUEST, a) for a in Asc} | {
            (SenseKey.DATA_PROTECT, Asc.WRITE_PROTECTED)}
        return
    assert command.length <= buffer_length
    guard = bytearray(b"\xEE" * (buffer_length + 16))
    result = command.execute(memoryview(guard)[:buffer_length])
    assert result.ok and result.transferred <= command.length
    assert guard[buffer_length:] == b"\xEE" * 16   # never past the buffer


# -- the write cache: durability where the initiator asks for it ------------------------------


@pytest.fixture
def durable(tmp_path):
    """A disk with write barriers (fdatasync), block 0 already allocated and flushed."""
    with VirtualDisk.create(tmp_path / "w.vhd", SIZE, "dynamic") as vd:
        vd.write(0, bytes(512))
        vd.flush()
        yield vd


def _sync_cache(op, lba=0, blocks=0):
    if op == Op.SYNCHRONIZE_CACHE_10:
        return struct.pack(">BBIBHB", op, 0, lba, 0, blocks, 0)
    return struct.pack(">BBQIBB", op, 0, lba, blocks, 0, 0)


@pytest.mark.parametrize("write_op", [Op.WRITE_10, Op.WRITE_16])
@pytest.mark.parametrize("sync_op", [Op.SYNCHRONIZE_CACHE_10, 0x91])   # (10) and (16)
def test_writes_are_made_durable_by_synchronize_cache_only(durable, write_op, sync_op):
    target = ScsiDisk(durable)
    before = durable.syncs
    for lba in range(1, 40, 3):
        assert target.run(rw(write_op, lba, 2), b"d" * 1024).ok
    assert durable.syncs == before                      # in the cache, not yet durable
    assert target.run(_sync_cache(sync_op), bytearray()).ok
    assert durable.syncs == before + 1                  # one fdatasync: nothing was held back
    assert target.run(_sync_cache(sync_op), bytearray()).ok
    assert durable.syncs == before + 1                  # nothing written since


@pytest.mark.parametrize("write_op", [Op.WRITE_10, Op.WRITE_16])
def test_a_fua_write_is_durable_when_it_completes(durable, write_op):
    target = ScsiDisk(durable)
    cdb = bytearray(rw(write_op, 5, 1))
    cdb[1] |= 0x08                                      # FUA
    before = durable.syncs
    assert target.run(bytes(cdb), b"f" * 512).ok
    assert durable.syncs == before + 1
    assert durable.read(5 * 512, 512) == b"f" * 512
    read = bytearray(rw(Op.READ_10 if write_op == Op.WRITE_10 else Op.READ_16, 5, 1))
    read[1] |= 0x08                                     # a FUA read is an ordinary read here
    buf = bytearray(512)
    assert target.run(bytes(read), buf).ok and buf == b"f" * 512
    assert durable.syncs == before + 1


def test_synchronize_cache_16_checks_its_range(target):
    assert target.run(_sync_cache(0x91, BLOCKS - 1, 1), bytearray()).ok
    result = target.run(_sync_cache(0x91, BLOCKS, 1), bytearray())
    assert sense_of(result) == (SenseKey.ILLEGAL_REQUEST, Asc.LBA_OUT_OF_RANGE, 0)
