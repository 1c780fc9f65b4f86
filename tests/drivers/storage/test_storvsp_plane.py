"""storvsp's C data plane (native/storvsp.c) against its Python path, the reference: the same
packets, hostile ones included, through both give the same completions byte for byte, the same
guest memory, VHD files, counters, refusals, CPU charged and saved state; a whole host gives the
same trace digest."""
import shutil
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.device import ManualContext
from drivers.registry import discover
from drivers.storage import DEVICE
from drivers.storage import protocol as p
from drivers.storage.protocol import Operation
from drivers.storage.vhd import VirtualDisk
from drivers.storage.vsp import StorVsp
from hypervisor import Host
from hypervisor.abi import HostVisibility
from hypervisor.grants import VisibleMemory, modify_host_visibility
from partitions.vmbus_guest import GuestVmbus
from partitions.vmbus_parent import ParentVmbus
from partitions.worker import VmSpec, VmWorker
from tests.hypervisor.conftest import make_child, new_host
from vmbus.channel import connected_pair

US, MS = 1_000, 1_000_000
SIZE = 2 << 20                          # 4096 blocks
RW_PAGES = list(range(8, 48))           # host-visible read-write
RO_PAGES = list(range(48, 52))          # host-visible read-only
HIDDEN = list(range(52, 64))            # mapped, not host-visible
GPA_DIRECT = 9
MODES = ("python", "c")


@pytest.fixture(scope="module")
def templates(tmp_path_factory):
    """One file of each kind, copied for every run so that both paths start from the same bytes."""
    base = tmp_path_factory.mktemp("templates")
    with VirtualDisk.create(base / "fixed.vhd", SIZE, "fixed") as d:
        d.write(0, bytes(range(256)) * 64)
    with VirtualDisk.create(base / "dynamic.vhd", SIZE, "dynamic") as d:
        d.write(512 * 100, b"\x5a" * 4096)
    with VirtualDisk.create(base / "parent.vhd", SIZE, "dynamic") as d:
        d.write(0, b"\xa5" * 65536)
    VirtualDisk.create(base / "differencing.vhd", None, "differencing", parent=base / "parent.vhd").close()
    return base


class PlaneRig:
    """A storvsp over a child's host-visible pages (the core's VisibleMemory, so the C plane can
    serve it) and an in-process ring pair; the guest side sends raw packets."""

    def __init__(self, mode, templates, tmp, kind="dynamic", luns=1, **config):
        self.host = new_host(memory="32MiB")
        self.child = make_child(self.host, pool=8, map_pages=64)
        modify_host_visibility(self.child, RW_PAGES, HostVisibility.READ_WRITE)
        modify_host_visibility(self.child, RO_PAGES, HostVisibility.READ_ONLY)
        self.memory = VisibleMemory(self.host, self.child)
        for i, pfn in enumerate(RW_PAGES):   # something to write to the disk
            self.memory.write([pfn], 0, bytes([i]) * 4096)
        self.paths = []
        for lun in range(luns):
            path = tmp / f"disk-{lun}.vhd"
            shutil.copy(templates / f"{kind}.vhd", path)
            self.paths.append(path)
        self.ctx = ManualContext()
        self.host_end, self.guest_end = connected_pair(16)
        self.vsp = StorVsp(self.host_end, {"disks": [str(x) for x in self.paths], "guest_memory": self.memory,
                                           "data_plane": mode, **config}, self.ctx)
        assert (self.vsp._plane is not None) == (mode == "c")
        self.host_end.on_signal = self.deliver
        self.replies = []
        self.trans_id = 0x100
        for op, body in ((Operation.BEGIN_INITIALIZATION, b""),
                         (Operation.QUERY_PROTOCOL_VERSION, p.encode_version(p.VERSION_WIN10)),
                         (Operation.QUERY_PROPERTIES, b""), (Operation.END_INITIALIZATION, b"")):
            self.send(p.VstorPacket(op, 1, 0, body).encode())
        self.deliver()

    def deliver(self):
        """What the parent does on a signal: read what the ring holds, hand it over at once."""
        batch, _ = self.host_end.incoming.read_batch()
        if len(batch):
            self.vsp.on_packets(batch)

    def send(self, payload, *, header=b"", packet_type=6):
        self.trans_id += 1
        self.guest_end.outgoing.write_packet(payload, header=header, packet_type=packet_type,
                                             trans_id=self.trans_id, flags=1)

    def batch(self, packets):
        """Send `packets` [(payload, header, type)] as one ring's worth, then one signal."""
        for payload, header, kind in packets:
            self.send(payload, header=header, packet_type=kind)
        self.deliver()

    def run(self, ns):
        self.ctx.advance(ns)
        self.replies += [tuple(pk) for pk in self.guest_end.receive()]

    def outcome(self):
        """Everything the two paths must agree on."""
        self.run(0)
        pages = [self.memory.read([pfn], 0, 4096) if self.memory.check([pfn]) is None else None for pfn in RW_PAGES]
        vsp = self.vsp
        state = (self.replies, pages, vsp.counters(), vsp.refused, vsp.last_refusal, vsp.busy, vsp.dropped,
                 self.ctx.charged, [e[:2] for e in self.ctx.events], vsp.save(), vsp.state)
        state = _unrooted(state, str(self.paths[0].parent))   # each path runs in a directory of its own
        vsp.on_close()
        return state, [path.read_bytes() for path in self.paths]


def _unrooted(value, root):
    """`value` with the run's directory taken out of every string in it."""
    if isinstance(value, str):
        return value.replace(root, "<dir>")
    if isinstance(value, dict):
        return {k: _unrooted(v, root) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_unrooted(v, root) for v in value)
    return value


def srb_packet(cdb, data_in, transfer, *, lun=0, path_id=0, target_id=0, cdb_length=None, length=p.REQUEST_SIZE):
    body = struct.pack("<HBBBBBBBBBBI20sHBBIII", length, 0, 0, 0, path_id, target_id, lun,
                       len(cdb) if cdb_length is None else cdb_length, 20, data_in, 0, transfer,
                       bytes(cdb).ljust(20, b"\0")[:20], 0, 0, 0, 0, 60, 0)
    return p.VstorPacket(Operation.EXECUTE_SRB, 1, 0, body).encode()


def rw_cdb(write, lba, blocks, *, sixteen=False, fua=False):
    flags = 0x08 if fua else 0
    if sixteen:
        return struct.pack(">BBQIBB", 0x8A if write else 0x88, flags, lba, blocks, 0, 0)
    return struct.pack(">BBIBHB", 0x2A if write else 0x28, flags, lba, 0, blocks, 0)


def io(write, lba, blocks, pfns, *, offset=0, data_in=None, transfer=None, count=None, **kw):
    """A GPA-direct READ/WRITE as storvsc sends it, any field overridable."""
    n = blocks * 512
    data_in = (p.DATA_OUT if write else p.DATA_IN) if data_in is None else data_in
    header = p.encode_gpa_range(n if count is None else count, offset, pfns)
    cdb = kw.pop("cdb", None) or rw_cdb(write, lba, blocks, sixteen=kw.pop("sixteen", False), fua=kw.pop("fua", False))
    return srb_packet(cdb, data_in, n if transfer is None else transfer, **kw), header, GPA_DIRECT


def both(templates, tmp_path, script, **rig):
    """Run `script(rig)` on both paths; return the two outcomes."""
    results = []
    for mode in MODES:
        sub = tmp_path / mode
        sub.mkdir(exist_ok=True)
        r = PlaneRig(mode, templates, sub, **rig)
        script(r)
        results.append(r.outcome())
    return results


def pages_for(offset, nbytes, first):
    return RW_PAGES[first:first + (offset + nbytes + 4095) // 4096]


@pytest.mark.parametrize("kind", ["fixed", "dynamic", "differencing"])
def test_reads_and_writes_give_the_same_completions_memory_files_and_counters(templates, tmp_path, kind):
    taken = []

    def script(r):
        plan = [(True, 0, 8, 0, 0), (False, 0, 8, 0, 8), (True, 100, 16, 512, 4), (False, 96, 24, 0, 16),
                (True, 4088, 8, 0, 20), (False, 4000, 96, 0, 0), (True, 2048, 128, 0, 2), (False, 2040, 64, 0, 30)]
        r.batch([io(w, lba, n, pages_for(off, n * 512, first), offset=off) for w, lba, n, off, first in plan[:4]])
        r.run(150 * US)
        r.batch([io(w, lba, n, pages_for(off, n * 512, first), offset=off) for w, lba, n, off, first in plan[4:]])
        r.run(20 * MS)
        if r.vsp._plane is not None:
            taken.append(r.vsp._plane.completed)

    (python, python_files), (c, c_files) = both(templates, tmp_path, script, kind=kind)
    assert python == c and python_files == c_files
    assert len(python[0]) == 8 + 4 and python[2]["completed"] == 8 + 0   # 4 negotiation replies
    assert taken and taken[0] > 0     # the C plane did serve requests


def test_a_page_hidden_after_the_request_was_taken_fails_it_alone_on_both_paths(templates, tmp_path):
    def script(r):
        r.batch([io(False, 0, 8, RW_PAGES[0:1]), io(True, 8, 8, RW_PAGES[1:2]), io(False, 16, 8, RW_PAGES[2:3])])
        modify_host_visibility(r.child, [RW_PAGES[0], RW_PAGES[1]], HostVisibility.NONE)
        r.run(5 * MS)

    (python, _), (c, _) = both(templates, tmp_path, script)
    assert python == c
    replies = [p.decode_packet(pk[3]) for pk in python[0][4:]]
    assert [p.ScsiRequest.decode(vp.body).srb_status & 0x3F for vp in replies] == [4, 4, 1]   # ERROR, ERROR, SUCCESS
    assert python[3] == 2 and "no longer reachable" in python[4]


def test_requests_in_service_show_in_the_saved_state_and_a_forked_disk_takes_only_later_ones(templates, tmp_path):
    saved = []

    def script(r):
        r.batch([io(True, lba, 8, RW_PAGES[i:i + 1]) for i, lba in enumerate((0, 8, 16, 24))])
        saved.append(_unrooted(r.vsp.save(), str(r.paths[0].parent)))
        r.run(150 * US)
        fork = r.paths[0].with_name("fork.vhd")
        shutil.copy(templates / "dynamic.vhd", fork)
        old = r.vsp.replace_disk(VirtualDisk.open(fork))
        old.close()   # the in-flight writes were decoded against it: they fail as medium errors
        r.run(5 * MS)

    (python, _), (c, _) = both(templates, tmp_path, script)
    assert python == c and saved[0] == saved[1] and len(saved[0]["outstanding"]) == 4


def test_more_than_max_outstanding_is_answered_busy_on_both_paths(templates, tmp_path):
    def script(r):
        r.batch([io(False, 8 * i, 8, RW_PAGES[i:i + 1]) for i in range(6)])
        r.run(10 * MS)

    (python, _), (c, _) = both(templates, tmp_path, script, max_outstanding=3)
    assert python == c and python[5] == 3


def test_a_full_guest_ring_backlogs_completions_in_order_on_both_paths(templates, tmp_path):
    def script(r):
        r.batch([io(False, 8 * (i % 40), 8, RW_PAGES[i % 40:i % 40 + 1]) for i in range(60)])
        r.ctx.advance(20 * MS)   # the guest does not read meanwhile: its ring fills
        r.run(200 * MS)

    (python, _), (c, _) = both(templates, tmp_path, script, max_outstanding=64)
    assert python == c and len(python[0]) == 64


# -- hostile packets ---------------------------------------------------------------------------

_pages = st.sampled_from([RW_PAGES[0], RW_PAGES[5], RW_PAGES[39], RO_PAGES[0], HIDDEN[0], 0x10000, (1 << 40)])
_cdbs = st.one_of(
    st.builds(rw_cdb, st.booleans(), st.sampled_from([0, 1, 8, 4088, 4095, 4096, 1 << 31]),
              st.sampled_from([0, 1, 8, 9, 64]), sixteen=st.booleans(), fua=st.booleans()),
    st.sampled_from([p.cdb_inquiry(36), p.cdb_read_capacity_16(), p.cdb_synchronize_cache(),
                     p.cdb_test_unit_ready(), p.cdb_report_luns(64), b"\xff" * 6]),
    st.binary(min_size=1, max_size=16))


@st.composite
def hostile(draw):
    kind = draw(st.sampled_from(["io", "io", "io", "srb", "srb", "control", "garbage"]))
    if kind == "io":   # well formed, mostly: what the C plane takes, and its edges
        write, blocks = draw(st.booleans()), draw(st.sampled_from([1, 8, 16, 64]))
        lba = draw(st.sampled_from([0, 8, 100, 4096 - blocks, 4096 - blocks + 1]))
        offset = draw(st.sampled_from([0, 0, 512, 4095]))
        first = draw(st.integers(0, 20))
        pfns = RW_PAGES[first:first + (offset + blocks * 512 + 4095) // 4096]
        if draw(st.integers(0, 4)) == 0:
            pfns = [draw(_pages)] + pfns[1:]
        return io(write, lba, blocks, pfns, offset=offset, fua=draw(st.integers(0, 5)) == 0,
                  sixteen=draw(st.booleans()), lun=draw(st.sampled_from([0, 0, 0, 1, 2])),
                  data_in=draw(st.sampled_from([None, None, None, None, p.DATA_UNKNOWN, p.DATA_IN, p.DATA_OUT])))
    if kind == "garbage":
        return (draw(st.binary(max_size=80)), draw(st.sampled_from([b"", b"\0" * 8, b"\1" * 24])),
                draw(st.sampled_from([6, 9, 0xB, 7])))
    if kind == "control":
        op = draw(st.sampled_from(list(Operation) + [0x99]))
        return p.VstorPacket(op, 1, 0, b"").encode(), b"", 6
    cdb = draw(_cdbs)
    blocks_bytes = draw(st.sampled_from([0, 512, 4096, 4608, 32768]))
    transfer = draw(st.sampled_from([blocks_bytes, 0, 4096, 4097, 1 << 20]))
    offset = draw(st.sampled_from([0, 512, 4095]))
    count = draw(st.sampled_from([transfer, blocks_bytes, 1, 4096]))
    npages = max(1, (offset + max(count, 1) + 4095) // 4096)
    pfns = [draw(_pages) if draw(st.integers(0, 5)) == 0 else RW_PAGES[(i + 3) % 40] for i in range(npages)]
    body = srb_packet(cdb, draw(st.sampled_from([0, 1, 2, 3])), transfer,
                      lun=draw(st.sampled_from([0, 0, 0, 1, 7])), path_id=draw(st.sampled_from([0, 0, 0, 1])),
                      cdb_length=draw(st.sampled_from([None, None, 0, 6, 17])),
                      length=draw(st.sampled_from([p.REQUEST_SIZE] * 5 + [40])))
    if max(count, 1) and draw(st.integers(0, 9)) == 0:
        return body, b"", 6                          # no range
    header = struct.pack("<IIII", 0, 1, max(count, 1), offset) + struct.pack(f"<{len(pfns)}Q", *pfns)
    if draw(st.integers(0, 9)) == 0:
        header = header[:-8] if len(header) > 24 else header + header   # a short or doubled list
    return body, header, GPA_DIRECT


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=st.lists(st.tuples(st.lists(hostile(), min_size=1, max_size=8), st.sampled_from([0, 90 * US, 2 * MS])),
                        min_size=1, max_size=4),
       hide=st.sampled_from([None, RW_PAGES[3], RW_PAGES[0]]))
def test_hostile_packets_get_the_same_answers_on_both_paths(templates, tmp_path_factory, batches, hide):
    tmp = tmp_path_factory.mktemp("hostile")

    def script(r):
        for i, (packets, wait) in enumerate(batches):
            r.batch([(body, header + b"\0" * (-len(header) % 8), kind) for body, header, kind in packets])
            if i == 0 and hide is not None:
                modify_host_visibility(r.child, [hide], HostVisibility.NONE)
            r.run(wait)
        r.run(50 * MS)

    (python, python_files), (c, c_files) = both(templates, tmp, script, luns=2)
    assert python == c and python_files == c_files


# -- a whole host ------------------------------------------------------------------------------


def _host_run(tmp_path, templates, mode):
    """A child that writes and reads its disk through storvsc on a simulated host: the trace
    digest, what the guest read, the file."""
    path = tmp_path / mode / "disk.vhd"
    path.parent.mkdir()
    shutil.copy(templates / "dynamic.vhd", path)
    host = Host(logical_processors=2, memory="64MiB", seed=3)
    parent = ParentVmbus(host, vp_index=1)
    child = VmWorker(host, VmSpec("guest", memory="1MiB")).build()
    parent.attach(child, [(DEVICE, {"path": str(path), "data_plane": mode})])
    state = {}

    def poll(stack):
        vsc = stack.devices.get("storage")
        if vsc is None or not vsc.ready:
            return
        if "writes" not in state:
            state["writes"] = [vsc.write(lba, bytes([lba % 251]) * 512 * n) for lba, n in ((0, 8), (64, 16), (4000, 64))]
        elif "reads" not in state and all(w.done for w in state["writes"]):
            state["reads"] = [vsc.read(lba, n) for lba, n in ((0, 8), (60, 24), (4000, 64), (200, 8))]

    stack = GuestVmbus(child, discover(), on_poll=poll)
    child.vp(0).run(stack.run)
    host.root.resume_partition(child)
    host.run(40 * MS)
    vsp = parent.vsp(child, next(iter(parent.children[child.id].channels)))
    assert (vsp._plane is not None) == (mode == "c")
    counters = {**vsp.counters(), "luns": [{**lun, "path": None} for lun in vsp.counters()["luns"]]}
    result = (host.trace_digest(), [r.data for r in state["reads"]], counters)
    parent.detach(child)
    return result, path.read_bytes()


def test_a_host_gives_the_same_trace_digest_data_and_file_on_both_paths(templates, tmp_path):
    python, c = (_host_run(tmp_path, templates, mode) for mode in MODES)
    assert python == c
    assert python[0][2]["luns"][0]["read_ops"] == 4


def test_limits_past_what_the_plane_holds_leave_it_out_or_are_clamped(templates, tmp_path):
    rig = PlaneRig("c", templates, tmp_path)
    config = {"disk": rig.vsp.disk, "guest_memory": rig.memory}
    many = StorVsp(rig.host_end, {**config, "max_outstanding": 100_000}, ManualContext())
    wide = StorVsp(rig.host_end, {**config, "max_transfer_bytes": 1 << 40}, ManualContext())
    assert many._plane is None                  # a slot per request: the Python path's dict instead
    assert wide._plane is not None and wide.max_transfer == 1 << 40   # a u32 transfer is never longer


def test_a_disk_that_cannot_grow_fails_that_write_alone_on_both_paths(templates, tmp_path, monkeypatch):
    def full(self, block, in_block, src):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(VirtualDisk, "_allocate", full)

    def script(r):   # the differencing disk holds no block yet: a write must allocate one
        r.batch([io(True, 100, 8, RW_PAGES[0:1]), io(False, 100, 8, RW_PAGES[2:3])])
        r.run(5 * MS)

    (python, python_files), (c, c_files) = both(templates, tmp_path, script, kind="differencing")
    assert python == c and python_files == c_files
    replies = [p.ScsiRequest.decode(p.decode_packet(pk[3]).body) for pk in python[0][4:]]
    assert [r.srb_status & 0x3F for r in replies] == [4, 1]             # ERROR (medium), SUCCESS
    assert python[2]["luns"][0]["errors"] == 1 and python[2]["luns"][0]["read_ops"] == 1


def test_a_save_holds_the_planes_requests_and_they_complete_as_long_after_the_resume(templates, tmp_path):
    times = []

    def script(r):
        r.batch([io(i % 2 == 0, 8 * i, 16, RW_PAGES[i:i + 2]) for i in range(4)])
        r.run(150 * US)
        r.ctx.hold()
        r.vsp.quiesce()
        r.ctx.advance(7 * MS)                     # Saved: nothing completes meanwhile
        r.batch([io(False, 64, 8, RW_PAGES[10:11])])   # a request in while held: timed from the release
        r.ctx.release()
        r.vsp.resume()
        done = []
        for _ in range(1000):                     # 10 ms in steps of 10 us: when each arrives
            r.ctx.advance(10 * US)
            done += [(r.ctx.time, pk.trans_id) for pk in r.guest_end.receive()]
        times.append(done)
        r.run(5 * MS)

    (python, python_files), (c, c_files) = both(templates, tmp_path, script)
    assert python == c and python_files == c_files and times[0] == times[1]
    assert len(times[0]) == 4 and times[0][0][0] > 7 * MS   # the first was done before the save
