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
