"""VHD interoperability with qemu (qemu-img, qemu-io): each side reads what the other wrote."""
from __future__ import annotations

import pytest

from drivers.storage.vhd import VirtualDisk
from drivers.storage.vhd_format import Footer, geometry_for
from tests.drivers.storage.vhd_samples import ODD_SIZE, SMALL_BLOCK, WRITES, apply, make, pattern

MiB = 1024 * 1024
GiB = 1024 * MiB


@pytest.mark.parametrize("kind, size", [
    ("fixed", 512),
    ("fixed", 10_000_384),  # "10MB" rounded to a sector: no CHS geometry fits it exactly
    ("dynamic", ODD_SIZE),
    ("dynamic", 4 * GiB + 512),
    ("dynamic", 127 * GiB + 3 * 512),  # above the spec's CHS limit
    ("dynamic", 2040 * GiB),  # the largest VHD
])
def test_qemu_sees_exactly_the_requested_size(tmp_path, qemu, kind, size):
    path = tmp_path / "d.vhd"
    VirtualDisk.create(path, size, kind).close()
    assert qemu.info(path)["virtual-size"] == size


@pytest.mark.parametrize("kind, block_size", [("fixed", None), ("dynamic", SMALL_BLOCK), ("dynamic", 2 * MiB)])
def test_qemu_reads_what_hvsim_wrote(tmp_path, qemu, kind, block_size):
    path = tmp_path / "d.vhd"
    model = bytearray(ODD_SIZE)
    with VirtualDisk.create(path, ODD_SIZE, kind, block_size=block_size) as disk:
        apply(disk, model)
        disk.write(2 * MiB + 4096, b"\x5a" * 70_000)  # a constant run for qemu-io's pattern check
        model[2 * MiB + 4096:2 * MiB + 4096 + 70_000] = b"\x5a" * 70_000
        disk.flush()
    assert qemu.to_raw(path, tmp_path / "d.raw") == model
    qemu.io(path, f"read -P 0x5a {2 * MiB + 4096} 70000", f"read -P 0 {ODD_SIZE - 10 * 512} 512")


def test_qemu_reads_the_child_of_a_differencing_disk_by_itself(tmp_path, qemu):
    """qemu cannot create VHD differencing disks and opens them as plain dynamic disks: no parent,
    no sector bitmaps. Our file must still be laid out so that it reads the child's own data."""
    parent, child = tmp_path / "p.vhd", tmp_path / "c.vhd"
    with make(parent, "dynamic") as disk:
        disk.write(0, pattern(5, ODD_SIZE))
    own = bytearray(ODD_SIZE)
    with make(child, "differencing", parent=parent) as disk:
        apply(disk, own, [(SMALL_BLOCK * 2, SMALL_BLOCK), (SMALL_BLOCK * 9 + 512, 3 * 512)])
    info = qemu.info(child)
    assert info["virtual-size"] == ODD_SIZE and "backing-filename" not in info
    assert qemu.to_raw(child, tmp_path / "c.raw") == own


@pytest.mark.parametrize("subformat, options", [
    ("dynamic", ()),
    ("dynamic", ("force_size=on",)),
    ("fixed", ()),
    ("fixed", ("force_size=on",)),
])
def test_hvsim_reads_what_qemu_wrote_and_qemu_reads_it_back(tmp_path, qemu, subformat, options):
    path = tmp_path / "q.vhd"
    qemu.create(path, 6 * MiB + 512, subformat, *options)
    size = qemu.info(path)["virtual-size"]
    runs = [(0x11, 1, 700), (0x22, 2 * MiB - 300, 1000), (0x33, 4 * MiB + 4096, 65536)]
    qemu.io(path, *(f"write -P {byte:#x} {offset} {length}" for byte, offset, length in runs))
    model = bytearray(size)
    for byte, offset, length in runs:
        model[offset:offset + length] = bytes([byte]) * length
    with VirtualDisk.open(path) as disk:
        assert disk.size == size
        assert disk.kind == subformat
        assert disk.read(0, size) == model
        disk.write(3 * MiB + 5, b"\x44" * 9000)  # a block qemu left unallocated
        disk.write(1, b"\x55" * 100)  # a block qemu allocated
    qemu.io(path, "read -P 0x44 3145733 9000", "read -P 0x55 1 100", "read -P 0x11 101 600",
            f"read -P 0x33 {4 * MiB + 4096} 65536")


@pytest.mark.parametrize("size", [8 * MiB, 100 * MiB + 512, 3 * GiB])
def test_geometry_matches_qemus_for_sizes_qemu_picked(tmp_path, qemu, size):
    """qemu's own ("qemu" creator) disks round the size up to a CHS product using the spec's
    algorithm; ours must produce the same geometry for that size."""
    path = tmp_path / "q.vhd"
    qemu.create(path, size, "dynamic")
    footer = Footer.unpack(path.read_bytes()[:512], str(path))
    assert footer.creator_app == b"qemu"
    assert geometry_for(footer.current_size) == footer.geometry
    with VirtualDisk.open(path, read_only=True) as disk:
        assert disk.size == qemu.info(path)["virtual-size"] == footer.current_size


def test_hvsim_writes_interleaved_with_qemu_writes_stay_consistent(tmp_path, qemu):
    path = tmp_path / "d.vhd"
    model = bytearray(ODD_SIZE)
    with VirtualDisk.create(path, ODD_SIZE, "dynamic", block_size=SMALL_BLOCK) as disk:
        apply(disk, model, WRITES[:3])
    qemu.io(path, f"write -P 0x77 {SMALL_BLOCK * 20 + 100} 200000")  # qemu appends blocks after ours
    model[SMALL_BLOCK * 20 + 100:SMALL_BLOCK * 20 + 200100] = b"\x77" * 200000
    with VirtualDisk.open(path) as disk:
        assert disk.read(0, ODD_SIZE) == model
        apply(disk, model, WRITES[3:])
    assert qemu.to_raw(path, tmp_path / "d.raw") == model


@pytest.mark.parametrize("native", [True, False])
@pytest.mark.parametrize("kind", ["fixed", "dynamic"])
@pytest.mark.parametrize("seed", [1, 2])
def test_both_io_paths_and_qemu_agree_on_random_requests(tmp_path, qemu, native, kind, seed):
    """Seeded random reads and writes, sector-aligned (storvsp's, the C path when `native`) and
    ragged, interleaved with qemu-io's own writes: every side reads the same disk."""
    import random
    rng = random.Random(seed)
    path = tmp_path / "d.vhd"
    model = bytearray(ODD_SIZE)
    make(path, kind).close()
    for round_ in range(3):
        with VirtualDisk.open(path) as disk:
            disk.native_io = native
            for i in range(25):
                aligned = rng.random() < 0.7
                offset = rng.randrange(ODD_SIZE)
                length = rng.randrange(1, 3 * SMALL_BLOCK)
                if aligned:
                    offset, length = offset - offset % 512, -(-length // 512) * 512
                length = min(length, ODD_SIZE - offset)
                if rng.random() < 0.6:
                    data = pattern(seed * 1000 + round_ * 100 + i, length)
                    disk.write(offset, data)
                    model[offset:offset + length] = data
                else:
                    assert disk.read(offset, length) == model[offset:offset + length]
        assert qemu.to_raw(path, tmp_path / "d.raw") == model
        byte, offset, length = 0x30 + round_, rng.randrange(ODD_SIZE - 70_000), rng.randrange(1, 70_000)
        qemu.io(path, f"write -P {byte:#x} {offset} {length}")
        model[offset:offset + length] = bytes([byte]) * length
        with VirtualDisk.open(path, read_only=True) as disk:
            disk.native_io = native
            assert disk.read(0, ODD_SIZE) == model
