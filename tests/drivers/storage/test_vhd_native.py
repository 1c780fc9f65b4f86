"""The C path of VHD I/O (native/vhd_io.c) against the Python reference (drivers/storage/vhd.py):
the same requests give the same bytes read and the same files, for fixed, dynamic and
differencing disks; and requests the tables already place never reach the Python path."""
from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from drivers.storage.protocol import Op
from drivers.storage.scsi import ScsiDisk
from drivers.storage.vhd import VhdCorruptError, VirtualDisk
from tests.drivers.storage.vhd_samples import SMALL_BLOCK, make, pattern

MiB = 1024 * 1024
SIZE = 1 * MiB + 5 * 512   # not a whole number of blocks


def _chain(base: Path, kind: str) -> Path:
    """A disk of `kind` with some data already in it; differencing: a chain of three files with
    data at every level, over a fixed base. Reproducible (fixed ids and times)."""
    stamp = {"created_at": 1_700_000_000}
    ids = iter(uuid.UUID(int=i + 1) for i in range(3))
    if kind == "fixed":
        with make(base / "d.vhd", "fixed", size=SIZE, unique_id=next(ids), **stamp) as disk:
            disk.write(0, pattern(1, SIZE))
        return base / "d.vhd"
    if kind == "dynamic":
        with make(base / "d.vhd", "dynamic", size=SIZE, unique_id=next(ids), **stamp) as disk:
            disk.write(3 * SMALL_BLOCK + 700, pattern(1, 2 * SMALL_BLOCK))
        return base / "d.vhd"
    with make(base / "g.vhd", "fixed", size=SIZE, unique_id=next(ids), **stamp) as disk:
        disk.write(0, pattern(2, SIZE - 9 * 512))   # a fixed base: the C path reads it too
    with make(base / "p.vhd", "differencing", parent=base / "g.vhd", unique_id=next(ids), **stamp) as disk:
        for at in (512, SMALL_BLOCK + 4096, 7 * SMALL_BLOCK - 1000):
            disk.write(at, pattern(at, 3000))
    with make(base / "d.vhd", "differencing", parent=base / "p.vhd", unique_id=next(ids), **stamp) as disk:
        disk.write(2 * SMALL_BLOCK + 1024, pattern(3, 5000))
    return base / "d.vhd"


ops = st.lists(st.tuples(
    st.sampled_from(["read", "write"]),
    st.booleans(),                         # sector-aligned (the C path) or ragged
    st.integers(0, SIZE - 1),
    st.integers(1, 3 * SMALL_BLOCK),
    st.integers(0, 255),
    st.sampled_from([None, "flush", "reopen"]),
), max_size=14)


@settings(max_examples=60, deadline=None)
@given(kind=st.sampled_from(["fixed", "dynamic", "differencing"]), requests=ops)
def test_the_c_path_and_the_python_path_agree(kind, requests):
    with tempfile.TemporaryDirectory() as tmp:
        origin = Path(tmp) / "origin"
        origin.mkdir()
        _chain(origin, kind)
        dirs = {}
        for native in (True, False):
            dirs[native] = Path(tmp) / f"native{int(native)}"
            shutil.copytree(origin, dirs[native])   # the relative locator finds the copied parents
        disks = {native: VirtualDisk.open(dirs[native] / "d.vhd") for native in dirs}
        try:
            disks[False].native_io = False
            assert disks[True].native_io and not disks[False].native_io
            model = bytearray(disks[False].read(0, SIZE))
            assert disks[True].read(0, SIZE) == model
            for op, aligned, offset, length, byte, then in requests:
                if aligned:
                    offset -= offset % 512
                    length = -(-length // 512) * 512
                length = min(length, SIZE - offset)
                if op == "write":
                    data = bytes([byte]) * length
                    for disk in disks.values():
                        disk.write(offset, data)
                    model[offset:offset + length] = data
                else:
                    got = {native: bytearray(length) for native in disks}
                    for native, disk in disks.items():
                        disk.readinto(offset, got[native])
                    assert got[True] == got[False] == model[offset:offset + length]
                if then == "flush":
                    for disk in disks.values():
                        disk.flush()
                elif then == "reopen":
                    for native in disks:
                        disks[native].close()
                        disks[native] = VirtualDisk.open(dirs[native] / "d.vhd")
                        disks[native].native_io = native
            assert disks[True].read(0, SIZE) == disks[False].read(0, SIZE) == model
        finally:
            for disk in disks.values():
                disk.close()
        for name in os.listdir(origin):
            assert (dirs[True] / name).read_bytes() == (dirs[False] / name).read_bytes(), name


@pytest.mark.parametrize("kind", ["dynamic", "differencing"])   # a fixed disk's own: one pwrite in Python
def test_requests_the_tables_place_never_reach_the_python_path(tmp_path, kind, monkeypatch):
    path = _chain(tmp_path, kind)
    with VirtualDisk.open(path) as disk:
        disk.write(0, disk.read(0, SIZE))   # every sector present in this file now
        disk.read(0, SIZE)                  # and every bitmap loaded
        disk.flush()                        # nothing held back for the close to write

        def python_path(*args):
            raise AssertionError("the Python path ran")

        monkeypatch.setattr(VirtualDisk, "_read_into_py", python_path)
        monkeypatch.setattr(VirtualDisk, "_write_sectors", python_path)
        monkeypatch.setattr(VirtualDisk, "_pwrite", python_path)
        for at in (0, 4096, SMALL_BLOCK - 512, SIZE - 64 * 1024):
            disk.write(at, b"\x66" * 65536 if at + 65536 <= SIZE else b"\x66" * (SIZE - at))
            assert disk.read(at + 1, 100) == b"\x66" * 100
        target = ScsiDisk(disk)                # and so storvsp's requests
        cdb = bytes([Op.WRITE_10, 0, 0, 0, 0, 9, 0, 0, 8, 0])
        assert target.run(cdb, b"\x77" * 4096).ok
        buf = bytearray(4096)
        assert target.run(bytes([Op.READ_10]) + cdb[1:], buf).ok and buf == b"\x77" * 4096


@pytest.mark.parametrize("native", [True, False])
def test_data_cut_off_by_truncation_is_reported_by_either_path(tmp_path, native):
    path = tmp_path / "d.vhd"
    with make(path, "dynamic", size=SIZE) as disk:
        disk.write(5 * SMALL_BLOCK, b"t" * SMALL_BLOCK)
    with VirtualDisk.open(path) as disk:
        disk.native_io = native
        disk.read(5 * SMALL_BLOCK, 512)       # tables loaded while the file was whole
        os.truncate(path, os.path.getsize(path) - SMALL_BLOCK)
        with pytest.raises(VhdCorruptError, match="past the end of the file"):
            disk.read(5 * SMALL_BLOCK + SMALL_BLOCK - 1024, 1024)
