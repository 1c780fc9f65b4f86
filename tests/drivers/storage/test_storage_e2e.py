"""Synthetic SCSI storage on a simulated host: a child's storvsc negotiates with the parent's
storvsp over VMBus, grants its I/O pool, writes and reads a VHD-backed disk; the data is in the
file after a host restart; a hostile child's bad requests leave another child's I/O alone.

Two hooks the VMBus stacks do not provide yet are wired here by hand, as partitions/vmbus_guest.py and
partitions/vmbus_parent.py would: `grant_pages` for the VSC (PoolGrants below) and `resolve_gpadl` for the
VSP (`resolve` below: the server's record of the GPADL plus the core's view of its grant).
"""
import gc
import struct

from drivers.registry import discover
from drivers.storage import DEVICE
from drivers.storage import protocol as p
from drivers.storage.vhd import VirtualDisk
from drivers.storage.vsc import State
from hypervisor import Host
from hypervisor.grants import own_view
from hypervisor.testing.invariants import check_all
from partitions.worker import VmSpec, VmWorker
from vmbus.client import EventKind
from partitions.vmbus_guest import GuestVmbus
from partitions.vmbus_parent import ParentVmbus
from vmbus.protocol import GpaRange
from vmbus.server import GpadlState

MS = 1_000_000
POOL_VIEW = 0x8000_0000  # own-view ids of pools: apart from the ring views (id = relid)


class PoolGrants:
    """The guest stack's side of `grant_pages` (what GuestVmbus should offer every VSC): take
    pages from the stack's allocator, map them for the VSC, grant them to the host as a GPADL on
    the device's channel, and answer once the host says the GPADL is created."""

    def __init__(self, device: str = "storage"):
        self.device = device
        self.stack: GuestVmbus | None = None
        self.waiting: dict[int, tuple] = {}   # gpadl id -> (done, pages, view)
        self.seen = 0                          # stack.events already looked at

    def __call__(self, count, done):
        stack = self.stack
        relid = next(r for r, ch in stack.channels.items() if ch.device.name == self.device)
        pages = stack.pages.allocate(count)
        view = own_view(stack.partition, POOL_VIEW | relid, pages)
        gpadl_id = stack.client.create_gpadl(relid, [GpaRange.whole_pages(pages)])
        self.waiting[gpadl_id] = (done, pages, view)

    def poll(self, stack):
        for event in stack.events[self.seen:]:
            if event.gpadl_id in self.waiting and event.kind in (EventKind.GPADL_CREATED, EventKind.GPADL_FAILED):
                done, pages, view = self.waiting.pop(event.gpadl_id)
                if event.kind is EventKind.GPADL_CREATED:
                    done(event.gpadl_id, pages, view)
                else:
                    done(None, [], None)
        self.seen = len(stack.events)


def resolve(parent, child, gpadl_id):
    """`resolve_gpadl` as partitions/vmbus_parent.py would supply it to the storage VSP of `child`: a GPADL
    the server created on the storage channel -> (the core's view of it, its guest PFNs)."""
    c = parent.children[child.id]
    gpadl = c.manager._gpadls.get(gpadl_id)  # N.B. ChannelManager has no public accessor yet
    grant = parent.host.grants.get(child, gpadl_id)
    if gpadl is None or grant is None or gpadl.state is not GpadlState.CREATED:
        return None
    if c.channels.get(gpadl.relid) is None or c.channels[gpadl.relid].device is not DEVICE:
        return None  # only the GPADLs of this device's own channel
    return grant.view, [pfn for r in gpadl.ranges for pfn in r.pfns]


class Guest:
    """One child with the storage device, its VMBus stack and a workload run on every poll."""

    def __init__(self, host, parent, name, path, workload=None):
        self.child = child = VmWorker(host, VmSpec(name, memory="1MiB")).build()
        config = {"path": str(path), "resolve_gpadl": lambda gpadl_id: resolve(parent, child, gpadl_id)}
        self.manager = parent.attach(child, [(DEVICE, config)])
        self.pool = PoolGrants()
        self.workload = workload
        self.stack = GuestVmbus(child, discover(), configs={"storage": {"grant_pages": self.pool}},
                                on_poll=self.poll)
        self.pool.stack = self.stack
        child.vp(0).run(self.stack.run)
        host.root.resume_partition(child)

    def poll(self, stack):
        self.pool.poll(stack)
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
    # The ring and the I/O pool are the only pages of the child the parent reaches.
    assert len(host.grants.ids(guest.child)) == 2
    assert resolve(parent, guest.child, vsp.pool_gpadl)[1] == guest.vsc._pool[1]
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
        pool_pfn = vsc._pool[1][0]
        write1 = p.VstorPacket(p.Operation.EXECUTE_SRB, 1, 0, p.ScsiRequest.for_cdb(
            p.cdb_rw(True, 0, 1), p.DATA_OUT, 512).encode()).encode()
        bad = [   # (range list before offset8, payload, packet type)
            (p.encode_gpa_direct([GpaRange(512, 0, (0x10,))]), write1, 9),        # its own page, not pooled
            (p.encode_gpa_direct([GpaRange(512, 0, (1 << 30,))]), write1, 9),     # beyond its memory
            (p.encode_gpa_direct([GpaRange(100, 0, (pool_pfn,))]), write1, 9),    # range too short
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
