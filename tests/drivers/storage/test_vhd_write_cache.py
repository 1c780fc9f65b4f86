"""The VHD write cache as storvsp uses it: a VM's save (the VSP's quiesce) and its shutdown (the
channel's close) make what the guest wrote durable; a write alone does not sync."""
from __future__ import annotations

from drivers.storage.vhd import VirtualDisk
from drivers.storage.vsp import StorVsp

SIZE = 4 << 20


def test_saving_and_closing_flush_the_disks(tmp_path):
    paths = [tmp_path / "a.vhd", tmp_path / "b.vhd"]
    for path in paths:
        VirtualDisk.create(path, SIZE, "dynamic").close()
    vsp = StorVsp(None, {"disks": [str(p) for p in paths]})
    disks = [vsp.lun_disk(0), vsp.lun_disk(1)]
    for disk in disks:
        disk.write(4096, b"s" * 512)            # what a WRITE from the guest does
    syncs = [d.syncs for d in disks]
    for disk in disks:
        disk.write(8192, b"t" * 512)
    assert [d.syncs for d in disks] == syncs     # written, not yet durable
    vsp.quiesce()                                # the VM is being saved
    assert all(d.syncs > s for d, s in zip(disks, syncs))
    vsp.resume()
    for disk in disks:
        disk.write(3 << 20, b"u" * 512)
    syncs = [d.syncs for d in disks]
    vsp.on_close()                               # the VM shuts down
    assert all(d.closed and d.syncs > s for d, s in zip(disks, syncs))
    for path in paths:
        with VirtualDisk.open(path, read_only=True) as disk:
            assert disk.read(8192, 512) == b"t" * 512 and disk.read(3 << 20, 512) == b"u" * 512


def test_a_checkpoint_makes_the_frozen_disk_durable_first(tmp_path, monkeypatch):
    from partitions.checkpoints import _fork
    path, child = tmp_path / "a.vhd", tmp_path / "a-ckpt1.vhd"
    VirtualDisk.create(path, SIZE, "dynamic").close()
    vsp = StorVsp(None, {"disks": [str(path)]})
    vsp.lun_disk(0).write(2 << 20, b"c" * 512)   # a new block: its BAT entry is held back
    synced: list = []
    real = __import__("os").fdatasync
    monkeypatch.setattr("os.fdatasync", lambda fd: (synced.append(fd), real(fd)))
    _fork(str(path), str(child), vsp, 0)
    assert synced                                 # the frozen disk was flushed before the fork
    assert vsp.lun_disk(0).kind == "differencing"
    with VirtualDisk.open(path, read_only=True) as frozen:   # the write is in the file itself
        assert frozen.allocated_blocks == 1 and frozen.read(2 << 20, 512) == b"c" * 512
    vsp.on_close()
