"""VirtualDisk behaviour: round trips, differencing chains, crash ordering, corrupt files."""
from __future__ import annotations

import itertools
import os
import re
import shutil
import struct
import tempfile
import uuid
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from drivers.storage import vhd_format
from drivers.storage.vhd import (
    VhdCorruptError, VhdError, VhdInUseError, VhdParentError, VhdRangeError, VirtualDisk,
)
from drivers.storage.vhd_format import DiskType, DynamicHeader, Footer, checksum
from tests.drivers.storage.vhd_samples import ODD_SIZE, SMALL_BLOCK, WRITES, apply, make, pattern

MiB = 1024 * 1024


# --- round trips -------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["fixed", "dynamic", "differencing"])
@pytest.mark.parametrize("block_size", [SMALL_BLOCK, 2 * MiB])
def test_writes_read_back_before_and_after_reopening(tmp_path, kind, block_size):
    model = bytearray(ODD_SIZE)
    parent = None
    if kind == "differencing":
        parent = tmp_path / "parent.vhd"
        with make(parent, "dynamic", block_size=block_size) as base:
            apply(base, model, [(0, 3 * MiB), (3 * MiB, ODD_SIZE - 3 * MiB)])
    kw = {} if kind == "fixed" else {"block_size": block_size}
    path = tmp_path / "disk.vhd"
    with make(path, kind, parent=parent, **kw) as disk:
        assert disk.kind == kind and disk.size == ODD_SIZE
        apply(disk, model)
        assert disk.read(0, ODD_SIZE) == model
        for offset, length in WRITES:
            assert disk.read(offset, length) == model[offset:offset + length]
        disk.flush()
    with VirtualDisk.open(path) as disk:
        assert disk.read(0, ODD_SIZE) == model
        buf = bytearray(4097)
        assert disk.readinto(SMALL_BLOCK - 2000, buf) == 4097
        assert buf == model[SMALL_BLOCK - 2000:SMALL_BLOCK + 2097]


def test_unwritten_parts_of_a_dynamic_disk_read_as_zeros_and_take_no_space(tmp_path):
    path = tmp_path / "d.vhd"
    with make(path, "dynamic", size=8 * MiB) as disk:
        assert disk.read(0, 8 * MiB) == bytes(8 * MiB)
        disk.write(SMALL_BLOCK * 3 + 1000, b"x" * 10)
        assert disk.allocated_blocks == 1
        got = disk.read(SMALL_BLOCK * 3, SMALL_BLOCK)
        assert got == bytes(1000) + b"x" * 10 + bytes(SMALL_BLOCK - 1010)
        assert disk.info()["allocated_blocks"] == 1
    assert os.path.getsize(path) < 200 * 1024


def test_create_is_reproducible_with_injected_time_and_id(tmp_path):
    kw = dict(created_at=vhd_format.VHD_EPOCH + 1234, unique_id=uuid.UUID(int=0x42))
    for name in ("a.vhd", "b.vhd"):
        make(tmp_path / name, "dynamic", **kw).close()
    assert (tmp_path / "a.vhd").read_bytes() == (tmp_path / "b.vhd").read_bytes()
    with VirtualDisk.open(tmp_path / "a.vhd", read_only=True) as disk:
        info = disk.info()
    assert info["timestamp"] == 1234 and info["uuid"] == str(uuid.UUID(int=0x42))
    assert info["creator_app"] == "win " and info["creator_host_os"] == "Wi2k"
    assert info["geometry"] == dict(zip(("cylinders", "heads", "sectors_per_track"),
                                        vhd_format.geometry_for(ODD_SIZE)))


def test_fixed_disk_is_the_data_followed_by_one_footer(tmp_path):
    path = tmp_path / "f.vhd"
    with make(path, "fixed") as disk:
        disk.write(10, b"hello")
    raw = path.read_bytes()
    assert len(raw) == ODD_SIZE + 512 and raw[10:15] == b"hello"
    assert Footer.unpack(raw[-512:], "f").disk_type is DiskType.FIXED


def test_largest_disk_is_accepted_and_one_sector_more_is_not(tmp_path):
    with make(tmp_path / "big.vhd", "dynamic", size=2040 * 1024**3, block_size=None) as disk:
        disk.write(disk.size - 3, b"end")
        assert disk.read(disk.size - 3, 3) == b"end"
    with pytest.raises(VhdError, match="2040 GiB"):
        make(tmp_path / "bigger.vhd", "dynamic", size=2040 * 1024**3 + 512)


@pytest.mark.parametrize("size, kind, parent, complaint", [
    (1000, "dynamic", None, "not a multiple of 512 bytes .nearest: 512 or 1024"),
    (0, "fixed", None, "not between"),
    (-512, "dynamic", None, "not between"),
    (1.5, "fixed", None, "integer"),
    (MiB, "sparse", None, "kind 'sparse'"),
    (MiB, "dynamic", "p.vhd", "parent is required for, and only for"),
    (None, "differencing", None, "parent is required"),
])
def test_create_refuses_bad_arguments(tmp_path, size, kind, parent, complaint):
    with pytest.raises(VhdError, match=complaint):
        VirtualDisk.create(tmp_path / "x.vhd", size, kind, parent=parent)
    assert list(tmp_path.iterdir()) == []  # nothing left behind, not even a temporary file


def test_create_never_replaces_an_existing_file(tmp_path):
    path = tmp_path / "x.vhd"
    path.write_bytes(b"precious")
    with pytest.raises(FileExistsError):
        make(path, "dynamic")
    assert path.read_bytes() == b"precious"
    assert [p.name for p in tmp_path.iterdir()] == ["x.vhd"]


def test_new_files_get_the_umask_mode(tmp_path):
    old = os.umask(0o022)
    try:
        make(tmp_path / "m.vhd", "dynamic").close()
    finally:
        os.umask(old)
    assert (tmp_path / "m.vhd").stat().st_mode & 0o777 == 0o644


# --- bounds, modes, locks ----------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["fixed", "dynamic"])
def test_io_outside_the_disk_is_refused(tmp_path, kind):
    with make(tmp_path / "d.vhd", kind) as disk:
        for offset, length in [(ODD_SIZE - 1, 2), (-1, 1), (ODD_SIZE, 1), (0, -1)]:
            with pytest.raises(VhdRangeError, match="outside the disk"):
                disk.read(offset, length)
        with pytest.raises(IndexError):
            disk.write(ODD_SIZE - 2, b"abc")
        assert disk.read(ODD_SIZE, 0) == b""
        assert disk.allocated_blocks == 0


def test_read_only_disks_refuse_writes(tmp_path):
    path = tmp_path / "d.vhd"
    make(path, "dynamic").close()
    before = path.read_bytes()
    with VirtualDisk.open(path, read_only=True) as disk:
        with pytest.raises(VhdError, match="read-only"):
            disk.write(0, b"x")
    assert path.read_bytes() == before


def test_closed_disks_refuse_io(tmp_path):
    disk = make(tmp_path / "d.vhd", "dynamic")
    disk.close()
    disk.close()
    with pytest.raises(VhdError, match="closed"):
        disk.read(0, 1)


def test_a_file_has_one_writer_and_a_parent_no_writer(tmp_path):
    parent, child = tmp_path / "p.vhd", tmp_path / "c.vhd"
    with make(parent, "dynamic") as writer:
        with pytest.raises(VhdInUseError):
            VirtualDisk.open(parent)
        with pytest.raises(VhdInUseError):
            VirtualDisk.open(parent, read_only=True)
    make(child, "differencing", parent=parent).close()
    with VirtualDisk.open(child), VirtualDisk.open(parent, read_only=True):
        with pytest.raises(VhdInUseError):
            VirtualDisk.open(parent)
    with VirtualDisk.open(parent) as writer:
        writer.write(0, b"y")


# --- differencing ------------------------------------------------------------------------------

def test_differencing_reads_fall_through_per_sector_and_never_write_the_parent(tmp_path):
    parent, child = tmp_path / "p.vhd", tmp_path / "c.vhd"
    base = pattern(99, ODD_SIZE)
    with make(parent, "dynamic") as disk:
        disk.write(0, base)
    parent_bytes, parent_mtime = parent.read_bytes(), parent.stat().st_mtime_ns
    with make(child, "differencing", parent=parent) as disk:
        assert disk.read(0, ODD_SIZE) == base
        disk.write(1000, b"A" * 30)  # inside sectors 1 and 2 of block 0
        expected = bytearray(base)
        expected[1000:1030] = b"A" * 30
        assert disk.read(0, SMALL_BLOCK) == expected[:SMALL_BLOCK]
        assert disk.allocated_blocks == 1
        disk.write(SMALL_BLOCK * 2 - 10, b"B" * 20)  # straddles blocks 1 and 2
        expected[SMALL_BLOCK * 2 - 10:SMALL_BLOCK * 2 + 10] = b"B" * 20
        assert disk.read(0, ODD_SIZE) == expected
    assert parent.read_bytes() == parent_bytes and parent.stat().st_mtime_ns == parent_mtime
    with VirtualDisk.open(child, read_only=True) as disk:
        assert disk.read(0, ODD_SIZE) == expected
        info = disk.info()
    with VirtualDisk.open(parent, read_only=True) as disk:
        assert info["parent_uuid"] == disk.info()["uuid"]
    assert info["parent_path"] == str(parent)
    assert info["parent_locators"] == {"W2ru": ".\\p.vhd", "W2ku": str(parent)}


def test_differencing_sector_bitmap_marks_exactly_the_written_sectors(tmp_path):
    parent, child = tmp_path / "p.vhd", tmp_path / "c.vhd"
    make(parent, "fixed").close()
    with make(child, "differencing", parent=parent) as disk:
        disk.write(3 * 512 + 5, b"z" * 1100)  # bytes 1541..2640: sectors 3, 4 and 5
    raw = child.read_bytes()
    header = DynamicHeader.unpack(raw[512:1536], "c")
    entry, = struct.unpack_from(">I", raw, header.table_offset)
    bits = vhd_format.bitmap_from_disk(raw[entry * 512:entry * 512 + 512])
    assert bits == 0b111000


def test_a_chain_of_differencing_disks_reads_through_every_level(tmp_path):
    names = [tmp_path / f"level{i}.vhd" for i in range(4)]
    expected = bytearray(ODD_SIZE)
    with make(names[0], "fixed") as disk:
        apply(disk, expected, [(0, ODD_SIZE)])
    for i in range(1, 4):
        with make(names[i], "differencing", parent=names[i - 1]) as disk:
            apply(disk, expected, [(i * 100_000 + 3, 70_000)])
    with VirtualDisk.open(names[-1], read_only=True) as disk:
        assert disk.read(0, ODD_SIZE) == expected


def test_parent_is_found_relative_then_absolute(tmp_path):
    parent, child = tmp_path / "p.vhd", tmp_path / "c.vhd"
    with make(parent, "dynamic") as disk:
        disk.write(0, b"parent data")
    make(child, "differencing", parent=parent).close()
    moved = tmp_path / "moved"
    moved.mkdir()
    # Both moved together: the relative locator finds the parent.
    for path in (parent, child):
        path.rename(moved / path.name)
    with VirtualDisk.open(moved / "c.vhd") as disk:
        assert disk.read(0, 11) == b"parent data"
        assert disk.info()["parent_path"] == str(moved / "p.vhd")
    # Parent back in its old place, child still moved: the absolute locator finds it.
    (moved / "p.vhd").rename(parent)
    with VirtualDisk.open(moved / "c.vhd") as disk:
        assert disk.read(0, 11) == b"parent data"
        assert disk.info()["parent_path"] == str(parent)
    # Parent somewhere neither locator points: refused, naming every place tried.
    parent.rename(tmp_path / "elsewhere.vhd")
    with pytest.raises(VhdParentError, match=r"not found; tried: .*moved/p\.vhd .*; .*/p\.vhd "):
        VirtualDisk.open(moved / "c.vhd")


def test_a_replaced_parent_is_refused_with_both_ids(tmp_path):
    parent, child = tmp_path / "p.vhd", tmp_path / "c.vhd"
    make(parent, "dynamic").close()
    make(child, "differencing", parent=parent).close()
    parent.unlink()
    make(parent, "dynamic", unique_id=uuid.UUID(int=7)).close()
    with pytest.raises(VhdParentError, match=f"unique id {uuid.UUID(int=7)}"):
        VirtualDisk.open(child)


def test_a_missing_parent_is_refused(tmp_path):
    parent, child = tmp_path / "p.vhd", tmp_path / "c.vhd"
    make(parent, "dynamic").close()
    make(child, "differencing", parent=parent).close()
    parent.unlink()
    with pytest.raises(VhdParentError, match=r"c\.vhd: parent .* not found"):
        VirtualDisk.open(child)


def test_a_differencing_disk_takes_its_parents_size(tmp_path):
    make(tmp_path / "p.vhd", "dynamic").close()
    with pytest.raises(VhdError, match="differs from the parent's size"):
        VirtualDisk.create(tmp_path / "c.vhd", 2 * MiB, "differencing", parent=tmp_path / "p.vhd")
    with VirtualDisk.create(tmp_path / "c.vhd", ODD_SIZE, "differencing", parent=tmp_path / "p.vhd") as disk:
        assert disk.size == ODD_SIZE


# --- crash consistency -------------------------------------------------------------------------

def _record_io(monkeypatch) -> list:
    """Record each file write and barrier a VirtualDisk makes (the writes still happen)."""
    log: list = []
    real_pwrite = VirtualDisk._pwrite

    def pwrite(self, view, at):
        log.append((at, bytes(view)))
        real_pwrite(self, view, at)

    monkeypatch.setattr(VirtualDisk, "_pwrite", pwrite)
    monkeypatch.setattr(VirtualDisk, "_barrier", lambda self: log.append("barrier"))
    monkeypatch.setattr(VirtualDisk, "_sync", lambda self: log.append("barrier"))
    return log


def _crash_images(before: bytes, log: list):
    """Every file the disk could hold after a crash: all writes before the last barrier that
    completed, plus any subset of the writes after it (the OS may reorder them freely)."""
    epochs = [[]]
    for item in log:
        if item == "barrier":
            epochs.append([])
        else:
            epochs[-1].append(item)
    for done in range(len(epochs)):
        settled = [w for epoch in epochs[:done] for w in epoch]
        pending = epochs[done]
        for picked in itertools.product((False, True), repeat=len(pending)):
            image = bytearray(before)
            for at, data in settled + [w for w, keep in zip(pending, picked) if keep]:
                if len(image) < at + len(data):
                    image.extend(bytes(at + len(data) - len(image)))
                image[at:at + len(data)] = data
            yield bytes(image)


@pytest.mark.parametrize("kind", ["dynamic", "differencing"])
@pytest.mark.parametrize("offsets", [
    [SMALL_BLOCK + 512],                    # a new block
    [7],                                    # an allocated one (new sectors of it, if differencing)
    [7, SMALL_BLOCK + 512, 2 * SMALL_BLOCK - 700],  # both, then across a block boundary
])
def test_every_crash_state_of_a_write_reads_old_or_new_sectors(tmp_path, monkeypatch, kind, offsets):
    parent = tmp_path / "p.vhd"
    old = bytearray(ODD_SIZE)
    with make(parent, "dynamic") as disk:
        apply(disk, old, [(0, ODD_SIZE)])
    path = tmp_path / "d.vhd"
    with make(path, kind, parent=parent if kind == "differencing" else None) as disk:
        if kind == "dynamic":
            old = bytearray(ODD_SIZE)
        disk.write(0, b"\1" * 512)  # block 0 allocated, sectors 1.. of it still inherited
        old[0:512] = b"\1" * 512
    before = path.read_bytes()
    new = bytearray(old)
    log = _record_io(monkeypatch)
    with VirtualDisk.open(path) as disk:  # closing flushes: the writes become durable
        for i, offset in enumerate(offsets):
            disk.write(offset, bytes([2 + i]) * 1500)
            new[offset:offset + 1500] = bytes([2 + i]) * 1500
    monkeypatch.undo()
    assert log[-1] == "barrier"
    touched = sorted({s for offset in offsets for s in range(offset // 512, (offset + 1500 - 1) // 512 + 1)})
    states = 0
    images = list(_crash_images(before, log))
    for image in images:
        crashed = tmp_path / "crashed.vhd"
        crashed.write_bytes(image)
        with VirtualDisk.open(crashed, read_only=True) as disk:
            for sector in touched:
                got = disk.read(sector * 512, 512)
                assert got in (old[sector * 512:sector * 512 + 512], new[sector * 512:sector * 512 + 512])
        crashed.unlink()
        states += 1
    assert states >= 2
    # After the flush's last barrier nothing is left to lose: the last image is the new disk.
    assert images[-1] == path.read_bytes()
    with VirtualDisk.open(path, read_only=True) as disk:
        assert disk.read(0, ODD_SIZE) == new


def test_a_crash_before_a_flush_loses_only_unflushed_writes(tmp_path, monkeypatch):
    """With nothing flushed after the writes, every crash state reads as before them or after."""
    parent = tmp_path / "p.vhd"
    with make(parent, "dynamic") as disk:
        disk.write(0, pattern(9, ODD_SIZE))
    path = tmp_path / "d.vhd"
    make(path, "differencing", parent=parent).close()
    before = path.read_bytes()
    log = _record_io(monkeypatch)
    disk = VirtualDisk.open(path)
    disk.write(SMALL_BLOCK + 7, b"\3" * 3000)
    disk.write(512, b"\4" * 512)
    with VirtualDisk.open(parent, read_only=True) as base:
        old = base.read(0, ODD_SIZE)
    new = disk.read(0, ODD_SIZE)
    log_before_close = list(log)
    disk.close()
    monkeypatch.undo()
    # One barrier per block allocated (the footer moved), none for the writes themselves.
    assert log_before_close.count("barrier") == 2
    for image in _crash_images(before, log_before_close):
        crashed = tmp_path / "crashed.vhd"
        crashed.write_bytes(image)
        with VirtualDisk.open(crashed, read_only=True) as disk:
            got = disk.read(0, ODD_SIZE)
            for s in range(0, ODD_SIZE, 512):
                assert got[s:s + 512] in (old[s:s + 512], new[s:s + 512])
        crashed.unlink()


# --- the write cache: syncs only where durability is asked for ---------------------------------

@pytest.fixture
def fdatasyncs(monkeypatch) -> list:
    calls: list = []
    real = os.fdatasync

    def counted(fd):
        calls.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fdatasync", counted)
    return calls


@pytest.mark.parametrize("kind", ["fixed", "dynamic", "differencing"])
def test_writes_without_a_flush_sync_only_when_a_block_is_allocated(tmp_path, fdatasyncs, kind):
    parent = tmp_path / "p.vhd"
    if kind == "differencing":
        make(parent, "dynamic").close()
    path = tmp_path / "d.vhd"
    with make(path, kind, parent=parent if kind == "differencing" else None) as disk:
        if kind != "fixed":
            disk.write(0, bytes(512))   # block 0 allocated (sector 0 present if differencing): a barrier
        fdatasyncs.clear()
        # 200 writes inside block 0, each to sectors not yet present in a differencing disk
        # (a bitmap change each): no sync at all.
        for i in range(200):
            disk.write((i * 512 * 7) % (SMALL_BLOCK - 1024), b"x" * 700)
        assert fdatasyncs == []
        assert disk.syncs == (0 if kind == "fixed" else 1)
        # New blocks cost one barrier each (the footer moves to the new end first).
        if kind != "fixed":
            for block in range(1, 5):
                disk.write(block * SMALL_BLOCK + 512, b"y" * 512)
            assert len(fdatasyncs) == 4
        fdatasyncs.clear()
        disk.flush()
        # The flush: one barrier, and one more when metadata was held back for it.
        assert len(fdatasyncs) == (1 if kind == "fixed" else 2)
        fdatasyncs.clear()
        disk.flush()  # nothing written since: nothing to sync
        assert fdatasyncs == []


def test_flush_writes_the_held_back_metadata_and_close_flushes(tmp_path, fdatasyncs):
    parent = tmp_path / "p.vhd"
    make(parent, "dynamic").close()
    path = tmp_path / "d.vhd"
    disk = make(path, "differencing", parent=parent)
    disk.write(SMALL_BLOCK + 1024, b"z" * 512)
    # Not yet on the file: a reader of the bytes sees block 1 unallocated.
    raw_bat_entry = lambda: struct.unpack_from(">I", path.read_bytes(), _bat_offset(path) + 4)[0]
    assert raw_bat_entry() == 0xFFFF_FFFF
    disk.flush()
    assert raw_bat_entry() != 0xFFFF_FFFF
    disk.write(SMALL_BLOCK + 2048, b"w" * 512)  # a new sector of an allocated block: bit held back
    fdatasyncs.clear()
    disk.close()
    assert len(fdatasyncs) == 2
    with VirtualDisk.open(path, read_only=True) as again:
        assert again.read(SMALL_BLOCK + 1024, 512) == b"z" * 512
        assert again.read(SMALL_BLOCK + 2048, 512) == b"w" * 512


def test_without_write_barriers_only_a_flush_syncs(tmp_path, fdatasyncs):
    path = tmp_path / "d.vhd"
    with make(path, "dynamic", write_barriers=False) as disk:
        for block in range(4):
            disk.write(block * SMALL_BLOCK + 3, b"q" * 4096)
        assert disk.syncs == 0
        disk.flush()
        assert disk.syncs == 1
    assert len(fdatasyncs) == 1
    with VirtualDisk.open(path, read_only=True) as again:
        assert again.read(3 * SMALL_BLOCK + 3, 4096) == b"q" * 4096


def _bat_offset(path: Path) -> int:
    raw = path.read_bytes()
    return DynamicHeader.unpack(raw[512:1536], str(path)).table_offset


# --- corrupt files -----------------------------------------------------------------------------

@pytest.fixture
def dynamic_file(tmp_path) -> Path:
    path = tmp_path / "d.vhd"
    with make(path, "dynamic") as disk:
        disk.write(0, b"a" * 1000)
        disk.write(3 * SMALL_BLOCK, b"b" * 1000)
    return path


def _edit(path: Path, at: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(at)
        f.write(data)


def _reseal(path: Path) -> None:
    """Recompute the checksums of both footers and the header after an edit."""
    raw = bytearray(path.read_bytes())
    for start, size, field in ((0, 512, 64), (len(raw) - 512, 512, 64), (512, 1024, 36)):
        piece = raw[start:start + size]
        struct.pack_into(">I", raw, start + field, checksum(piece, field))
    path.write_bytes(raw)


def _bat_offset(path: Path) -> int:
    return DynamicHeader.unpack(path.read_bytes()[512:1536], "d").table_offset


@pytest.mark.parametrize("at, complaint", [
    (-512 + 64, "footer checksum"),  # trailing footer
    (64, "footer copy at offset 0: footer checksum"),
    (512 + 36, "dynamic header checksum"),
    (-512, "footer cookie"),
    (512, "dynamic header cookie"),
])
def test_a_flipped_byte_in_metadata_is_reported(dynamic_file, at, complaint):
    size = dynamic_file.stat().st_size
    raw = dynamic_file.read_bytes()
    position = at % size
    _edit(dynamic_file, position, bytes([raw[position] ^ 0x55]))
    with pytest.raises(VhdCorruptError, match=f"{dynamic_file.name}.*{complaint}"):
        VirtualDisk.open(dynamic_file)


def test_a_bat_entry_past_the_end_of_the_file_is_reported(dynamic_file):
    _edit(dynamic_file, _bat_offset(dynamic_file) + 4, struct.pack(">I", 0x00FFFFFF))
    with pytest.raises(VhdCorruptError, match=r"block 1 .* past the end of the"):
        VirtualDisk.open(dynamic_file)


def test_a_bat_entry_onto_the_metadata_is_reported(dynamic_file):
    _edit(dynamic_file, _bat_offset(dynamic_file) + 8, struct.pack(">I", 2))  # sector 2: the header
    with pytest.raises(VhdCorruptError, match=r"overlaps"):
        VirtualDisk.open(dynamic_file)


def test_two_bat_entries_sharing_a_block_are_reported(dynamic_file):
    bat = _bat_offset(dynamic_file)
    first = dynamic_file.read_bytes()[bat:bat + 4]
    _edit(dynamic_file, bat + 4 * 5, first)
    with pytest.raises(VhdCorruptError, match=r"block . .*overlaps block "):
        VirtualDisk.open(dynamic_file)


@pytest.mark.parametrize("cut", [1, 512, 600, SMALL_BLOCK])
def test_a_truncated_dynamic_file_is_reported(dynamic_file, cut):
    os.truncate(dynamic_file, dynamic_file.stat().st_size - cut)
    with pytest.raises(VhdCorruptError, match="truncated"):
        VirtualDisk.open(dynamic_file)


def test_a_truncated_fixed_file_is_reported(tmp_path):
    path = tmp_path / "f.vhd"
    make(path, "fixed").close()
    footer = path.read_bytes()[-512:]
    os.truncate(path, ODD_SIZE - 512)
    with open(path, "ab") as f:
        f.write(footer)  # a valid footer, but the data before it is one sector short
    with pytest.raises(VhdCorruptError, match="truncated"):
        VirtualDisk.open(path)


@pytest.mark.parametrize("content", [b"", b"conectix", bytes(4096)])
def test_files_that_are_not_vhds_are_reported(tmp_path, content):
    path = tmp_path / "x.vhd"
    path.write_bytes(content)
    with pytest.raises(VhdCorruptError, match=re.escape(str(path))):
        VirtualDisk.open(path)


@pytest.mark.parametrize("field_at, value, complaint", [
    (48, struct.pack(">Q", 3 * 1024**4), "current size"),  # 3 TiB: larger than any VHD
    (48, struct.pack(">Q", 64 * MiB), "BAT has 49 entries"),  # more than the BAT covers
])
def test_absurd_sizes_are_reported(dynamic_file, field_at, value, complaint):
    size = dynamic_file.stat().st_size
    _edit(dynamic_file, field_at, value)
    _edit(dynamic_file, size - 512 + field_at, value)
    _reseal(dynamic_file)
    with pytest.raises(VhdCorruptError, match=complaint):
        VirtualDisk.open(dynamic_file)


def test_footer_copies_that_disagree_are_reported(dynamic_file):
    _edit(dynamic_file, 68, b"\xee" * 16)  # unique id of the copy at offset 0
    _reseal(dynamic_file)
    with pytest.raises(VhdCorruptError, match="disagrees .* on unique_id"):
        VirtualDisk.open(dynamic_file)


def test_a_differencing_chain_that_loops_is_reported(tmp_path):
    parent, child = tmp_path / "p.vhd", tmp_path / "c.vhd"
    make(parent, "dynamic").close()
    make(child, "differencing", parent=parent).close()
    # Make the child its own parent: same name in the locators, its own unique id.
    raw = bytearray(child.read_bytes())
    own_id = raw[68:84]
    for loc_at in range(512 + 576, 512 + 576 + 8 * 24, 24):
        raw[loc_at:loc_at + 4] = bytes(4)
    raw[512 + 40:512 + 56] = own_id
    name = "c.vhd".encode("utf-16-be")
    raw[512 + 64:512 + 576] = name + bytes(512 - len(name))
    child.write_bytes(raw)
    _reseal(child)
    with pytest.raises(VhdParentError, match="loop"):
        VirtualDisk.open(child)


# --- properties --------------------------------------------------------------------------------

PROPERTY_SIZE = 1 * MiB + 3 * 512
writes = st.lists(
    st.tuples(st.integers(0, PROPERTY_SIZE - 1), st.integers(1, 3 * SMALL_BLOCK), st.integers(0, 255),
              st.booleans()),
    max_size=12)


@settings(max_examples=100, deadline=None)
@given(ops=writes, differencing=st.booleans())
def test_random_writes_match_a_bytearray_model(ops, differencing):
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        model = bytearray(PROPERTY_SIZE)
        parent = None
        if differencing:
            parent = base / "p.vhd"
            with make(parent, "fixed", size=PROPERTY_SIZE) as disk:
                model[:] = pattern(1, PROPERTY_SIZE)
                disk.write(0, model)
        path = base / "d.vhd"
        disk = make(path, "dynamic" if parent is None else "differencing", size=PROPERTY_SIZE, parent=parent,
                    write_barriers=False)
        try:
            for offset, length, byte, reopen in ops:
                length = min(length, PROPERTY_SIZE - offset)
                disk.write(offset, bytes([byte]) * length)
                model[offset:offset + length] = bytes([byte]) * length
                if reopen:
                    disk.close()
                    disk = VirtualDisk.open(path, write_barriers=False)
                lo, hi = max(offset - 700, 0), min(offset + length + 700, PROPERTY_SIZE)
                assert disk.read(lo, hi - lo) == model[lo:hi]
            assert disk.read(0, PROPERTY_SIZE) == model
        finally:
            disk.close()


_FIELDS = [  # (region, offset in it, width): footer copy, dynamic header, BAT, locator data
    ("footer", 16, 8), ("footer", 40, 8), ("footer", 48, 8), ("footer", 56, 4), ("footer", 60, 4),
    ("header", 8, 8), ("header", 16, 8), ("header", 28, 4), ("header", 32, 4),
    ("header", 40, 4), ("header", 64, 4),
    ("header", 576, 4), ("header", 576 + 8, 4), ("header", 576 + 16, 8),
    ("bat", 0, 4), ("bat", 4, 4), ("bat", 8, 4), ("bat", 12, 4),
    ("locators", 0, 4), ("locators", 4, 4),
]


@settings(max_examples=300, deadline=None)
@given(edits=st.lists(st.tuples(st.sampled_from(_FIELDS), st.integers(0, 2**64 - 1)), min_size=1, max_size=3),
       reseal=st.booleans(), differencing=st.booleans())
def test_damaged_metadata_is_either_refused_or_harmless(edits, reseal, differencing):
    """Whatever fields are garbled (checksums fixed up or not), opening and reading the whole disk
    either works or raises VhdError: never another exception, never a read past the file."""
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        parent = base / "p.vhd"
        with make(parent, "dynamic", size=PROPERTY_SIZE) as disk:
            disk.write(1000, b"p" * 5000)
        path = base / "d.vhd"
        if differencing:
            make(path, "differencing", parent=parent).close()
        else:
            shutil.copy(parent, path)
        with VirtualDisk.open(path) as disk:
            disk.write(SMALL_BLOCK - 100, b"c" * 300)
        regions = {"footer": 0, "header": 512, "bat": _bat_offset(path), "locators": 1536}
        raw = bytearray(path.read_bytes())
        for (region, at, width), value in edits:
            at += regions[region]
            raw[at:at + width] = (value & ((1 << 8 * width) - 1)).to_bytes(width, "big")
        raw[-512:] = raw[:512]  # keep the copies identical so the edit reaches the parser
        path.write_bytes(raw)
        if reseal:
            _reseal(path)
        try:
            with VirtualDisk.open(path, read_only=True) as disk:
                disk.read(0, disk.size)
                disk.info()
        except VhdError:
            pass


@pytest.mark.parametrize("read_only", [True, False])
def test_a_fifo_is_refused_as_not_a_regular_file_without_waiting_for_a_writer(tmp_path, no_hang, read_only):
    fifo = tmp_path / "disk.vhd"
    os.mkfifo(fifo)
    with pytest.raises(VhdError, match=r"disk.vhd: not a regular file"):
        VirtualDisk.open(fifo, read_only=read_only)


def test_a_fifo_as_a_differencing_disks_parent_is_refused_without_waiting(tmp_path, no_hang):
    base = tmp_path / "base.vhd"
    VirtualDisk.create(base, 1 << 20, "dynamic").close()
    VirtualDisk.create(tmp_path / "child.vhd", None, "differencing", parent=base).close()
    base.unlink()
    os.mkfifo(base)
    with pytest.raises(VhdError, match="not a regular file"):
        VirtualDisk.open(tmp_path / "child.vhd")


def test_create_in_a_missing_directory_names_the_path_given(tmp_path):
    path = tmp_path / "missing" / "disk.vhd"
    with pytest.raises(FileNotFoundError) as caught:
        VirtualDisk.create(path, 1 << 20, "dynamic")
    assert caught.value.filename == str(path)
    assert ".tmp" not in str(caught.value)
