"""Synthetic SCSI storage on a simulated host: a child's storvsc negotiates with the parent's
storvsp over VMBus, makes its bounce pages host-visible (HvCallModifySparseGpaPageHostVisibility,
through the guest stack's `share_pages`), writes and reads a VHD-backed disk through them; the
data is in the file after a host restart; a hostile child's bad requests leave another child's
I/O alone. The parent reaches the child's ring (a GPADL) and its host-visible pages, nothing else.
"""
import gc
import struct

from drivers.registry import discover
from drivers.storage import DEVICE
from drivers.storage import protocol as p
from drivers.storage.vhd import VirtualDisk
from drivers.storage.vsc import State
from hypervisor import Host
from hypervisor.abi import HostVisibility
from hypervisor.testing.invariants import check_all
from partitions.worker import VmSpec, VmWorker
from partitions.vmbus_guest import GuestVmbus
from partitions.vmbus_parent import ParentVmbus
from vmbus.protocol import GpaRange

MS = 1_000_000


class Guest:
    """One child with the storage device, its VMBus stack and a workload run on every poll."""

    def __init__(self, host, parent, name, path, workload=None):
        self.child = child = VmWorker(host, VmSpec(name, memory="1MiB")).build()
        self.manager = parent.attach(child, [(DEVICE, {"path": str(path)})])
        self.workload = workload
        self.stack = GuestVmbus(child, discover(), on_poll=self.poll)
        child.vp(0).run(self.stack.run)
        host.root.resume_partition(child)

    def poll(self, stack):
        vsc = stack.devices.get("storage")
        if self.workload is not None and vsc is not None and vsc.ready:
            self.workload(vsc)

    @property
    def vsc(self):
        return self.stack.devices["storage"]


def pattern(lba: int, blocks: int) -> bytes:
    return b"".join(struct.pack("<Q", lba + i) * 64 for i in range(blocks))


def writer(plan, state):
    """A workload: issue `plan` [(lba, blocks)] as writes, then a flush, then read it all back."""
    def step(vsc):
        if "writes" not in state:
            state["writes"] = [vsc.write(lba, pattern(lba, n)) for lba, n in plan]
        elif "flush" not in state:
            if all(w.done for w in state["writes"]):
                state["flush"] = vsc.flush()
        elif "reads" not in state and state["flush"].done:
            state["reads"] = [vsc.read(lba, n) for lba, n in plan]
    return step


PLAN = [(0, 1), (1, 7), (4096, 64), (8191, 1), (2048, 128)]


def test_a_guest_writes_and_reads_its_disk_and_the_data_survives_a_host_restart(tmp_path):
    path = tmp_path / "guest.vhd"
    VirtualDisk.create(path, 4 << 20, "dynamic").close()
    host = Host(logical_processors=2, memory="64MiB", seed=3)
    parent = ParentVmbus(host, vp_index=1)
    state = {}
    guest = Guest(host, parent, "guest", path, writer(PLAN, state))
    host.run(40 * MS)

    vsc = guest.vsc
    assert vsc.ready and vsc.version == p.VERSION_WIN10 and vsc.capacity == 8192
    assert all(w.ok for w in state["writes"]) and state["flush"].ok
    assert [r.data for r in state["reads"]] == [pattern(lba, n) for lba, n in PLAN]
    (relid,) = guest.manager.relids
    vsp = parent.vsp(guest.child, relid)
    assert vsp.completed >= len(PLAN) * 2 + 1 and vsp.refused == 0
    # The ring (a GPADL) and the bounce pages, shown read-write, are the only pages of the child
    # the parent reaches (check_all recounts the parent's reach exactly).
    assert len(host.grants.ids(guest.child)) == 1
    bounce = vsc._bounce[0]
    assert host.grants.host_visible(guest.child) == {pfn: HostVisibility.READ_WRITE for pfn in bounce}
    check_all(host)
    # Storage cost the parent CPU time (and simulated time passed for the I/O).
    assert host.introspect.run_time_ns(host.root) > 0

    # The host goes away without closing anything; a new one opens the same file.
    del host, parent, guest, vsc, vsp
    gc.collect()
    with VirtualDisk.open(path, read_only=True) as vd:
        assert all(vd.read(lba * 512, n * 512) == pattern(lba, n) for lba, n in PLAN)

    host = Host(logical_processors=2, memory="64MiB", seed=4)
    parent = ParentVmbus(host, vp_index=1)
    again = {}

    def reader(vsc):
        if "reads" not in again:
            again["reads"] = [vsc.read(lba, n) for lba, n in PLAN]

    guest = Guest(host, parent, "guest", path, reader)
    host.run(30 * MS)
    assert [r.data for r in again["reads"]] == [pattern(lba, n) for lba, n in PLAN]
    check_all(host)


def test_same_seed_same_trace(tmp_path):
    digests = []
    for run in range(2):
        path = tmp_path / f"run{run}.vhd"
        VirtualDisk.create(path, 4 << 20, "dynamic").close()
        host = Host(logical_processors=2, memory="64MiB", seed=7)
        parent = ParentVmbus(host, vp_index=1)
        state = {}
        guest = Guest(host, parent, "guest", path, writer(PLAN, state))
        host.run(15 * MS)
        assert guest.vsc.ready and "reads" in state    # the I/O is part of the trace
        digests.append(host.trace_digest())
    assert digests[0] == digests[1]


def test_a_hostile_guest_does_not_disturb_another_guests_io(tmp_path):
    for name in ("good", "evil"):
        VirtualDisk.create(tmp_path / f"{name}.vhd", 2 << 20, "dynamic").close()
    host = Host(logical_processors=2, memory="64MiB", seed=5)
    parent = ParentVmbus(host, vp_index=1)

    good_io = {"n": 0, "reqs": []}

    def steady(vsc):
        # One write and its read-back at a time, each block a different pattern.
        reqs = good_io["reqs"]
        if reqs and not all(r.done for r in reqs[-2:]):
            return
        lba = good_io["n"] % 4000
        reqs += [vsc.write(lba, pattern(1000 + good_io["n"], 1)), vsc.read(lba, 1)]
        good_io["n"] += 1

    attack = {"sent": 0}

    def hostile(vsc):
        """Bad requests straight onto its own channel, a few per poll, then normal I/O."""
        if attack["sent"] >= 60:
            if "after" not in attack:
                attack["after"] = (vsc.write(3, b"e" * 512), vsc.read(3, 1))
            return
        bounce_pfn = vsc._bounce[0][0]
        write1 = p.VstorPacket(p.Operation.EXECUTE_SRB, 1, 0, p.ScsiRequest.for_cdb(
            p.cdb_rw(True, 0, 1), p.DATA_OUT, 512).encode()).encode()
        bad = [   # (range list before offset8, payload, packet type)
            (p.encode_gpa_direct([GpaRange(512, 0, (0x10,))]), write1, 9),        # its own page, not visible
            (p.encode_gpa_direct([GpaRange(512, 0, (1 << 30,))]), write1, 9),     # beyond its memory
            (p.encode_gpa_direct([GpaRange(100, 0, (bounce_pfn,))]), write1, 9),  # range too short
            (b"", write1[:30], 6),                                                # truncated
            (b"", p.VstorPacket(0x4242, 1).encode(), 6),                          # unknown operation
            (b"\xff" * 64, write1, 9),                                            # garbage ranges
        ]
        for header, payload, kind in bad[attack["sent"] % len(bad):][:3]:
            vsc.channel.send(payload, packet_type=kind, trans_id=0xE000 + attack["sent"], flags=1,
                             header=header)
            attack["sent"] += 1

    good = Guest(host, parent, "good", tmp_path / "good.vhd", steady)
    evil = Guest(host, parent, "evil", tmp_path / "evil.vhd", hostile)
    host.run(60 * MS)

    done = [r for r in good_io["reqs"] if r.done]
    assert len(done) > 40 and all(r.ok for r in done)
    reads = done[1::2]
    assert all(r.data == pattern(1000 + i, 1) for i, r in enumerate(reads))
    (evil_relid,) = evil.manager.relids
    evil_vsp = parent.vsp(evil.child, evil_relid)
    assert attack["sent"] >= 60 and evil_vsp.refused >= 60
    assert parent.broken(evil.child, evil_relid) is None       # refused, not broken
    write, read = attack["after"]
    assert write.ok and read.data == b"e" * 512 and evil.vsc.state is State.READY
    assert evil_vsp.disk.read(0, 512) == bytes(512)           # no refused write reached the disk
    check_all(host)


def test_closing_the_channel_hides_the_bounce_pages_before_they_are_reused(tmp_path):
    path = tmp_path / "guest.vhd"
    VirtualDisk.create(path, 2 << 20, "dynamic").close()
    host = Host(logical_processors=2, memory="64MiB", seed=6)
    parent = ParentVmbus(host, vp_index=1)
    guest = Guest(host, parent, "guest", path)
    host.run(10 * MS)
    bounce = list(guest.vsc._bounce[0])
    assert host.grants.host_visible(guest.child) and guest.vsc.ready
    (relid,) = guest.manager.relids
    guest.manager.rescind(relid)                 # the host takes the disk away
    host.run(20 * MS)
    assert "storage" not in guest.stack.devices
    assert host.grants.host_visible(guest.child) == {}    # out of the parent's reach again
    assert host.grants.check_visible(guest.child, bounce) == bounce[0]
    assert set(bounce) <= set(guest.stack.pages._free)    # and free for the guest's next use
    check_all(host)
