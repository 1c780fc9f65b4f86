"""Quick migration (partitions/datacenter/quick.py): a VM saved to shared storage, its disks'
ownership moved, restored on another host, its downtime what the storage links and the failover
time make it; a failed save leaves it running where it was, a failed restore fails it back."""
import pytest

from partitions.config import loads
from partitions.datacenter import Datacenter
from partitions.datacenter.link import Message
from partitions.datacenter.quick import FAILOVER_NS, QuickMigrationError, quick_move
from partitions.savedstate import SavedStateError
from partitions.vm import VmState

MIB = 1 << 20

DC = """
[[host]]
name = "a"
logical_processors = 2
memory = "1GiB"

[[host.switch]]
name = "lan"

[[host.vm]]
name = "counter"
memory = "64MiB"
workload = { kind = "memory-counter", pages = 16, interval = "1ms" }

[[host.vm]]
name = "disk"
memory = "32MiB"
disks = [ { path = "san/disk.vhd", size = "16MiB" } ]
workload = { kind = "disk-io", pattern = "random", block_size = 4096, queue_depth = 2, read_fraction = 0.5 }

[[host.vm]]
name = "web"
memory = "32MiB"
nics = [ { switch = "lan", ip = "10.0.0.2/24" } ]

[[host]]
name = "b"
logical_processors = 2
memory = "1GiB"

[[storage]]
name = "san"
kind = "fc"
directory = "san"

[[link]]
hosts = ["a", "san"]
bandwidth = "4Gbit/s"
latency = "20us"

[[link]]
hosts = ["b", "san"]
bandwidth = "2Gbit/s"
latency = "30us"
"""


def _ceil(a, b):
    return -(-a // b)


def crossing(nbytes, bandwidth, latency):
    return _ceil(nbytes * 8 * 10**9, bandwidth) + latency


@pytest.fixture
def dc(tmp_path):
    d = Datacenter(loads(DC, base_dir=tmp_path), seed=3, workdir=tmp_path / "run")
    yield d
    d.close()


def counted(vm) -> int:
    """The lowest counter in the memory-counter's pages (a whole round), read from guest memory."""
    return min(int.from_bytes(vm.partition.read(p * 4096, 8), "little") for p in vm.workload_states[0]["region"])


def test_a_counting_vm_moves_and_counts_on_after_the_downtime_its_links_give(dc):
    a, b, san = dc.hosts["a"], dc.hosts["b"], dc.storage["san"]
    dc.run("300ms")
    before = counted(a.managed.vms["counter"])
    assert before > 0
    busy = san.links["a"].busy_until            # the disk VM's requests may still hold a's link
    move = quick_move(dc, "counter", "b")
    t0 = 300_000_000
    t1 = max(t0, busy) + crossing(64 * MIB, 4 * 10**9, 20_000)   # the whole memory onto the storage
    t3 = t1 + FAILOVER_NS + crossing(64 * MIB, 2 * 10**9, 30_000)  # and back over b's link
    assert (move.started_ns, move.saved_ns) == (t0, t1)
    assert "counter" not in a.managed.vms and "counter" not in b.managed.vms   # down: on no host
    assert move.file_bytes < 64 * MIB // 8     # the file keeps the pages that are not zero
    dc.run(t3 - 1)
    assert "counter" not in b.managed.vms and move.outcome == "pending"
    assert move.owned_ns == t1 + FAILOVER_NS and san.owner("counter.hvsav") == "b"
    dc.run(t3)
    vm = b.managed.vms["counter"]
    assert vm.state is VmState.RUNNING and move.outcome == "completed" and move.restored_on == "b"
    assert move.downtime_ns == t3 - t0
    at_restore = counted(vm)
    assert at_restore >= before
    dc.run(t3 + 100_000_000)
    assert counted(vm) > at_restore           # it counts on, on b, from where it stopped
    (record,) = dc.summary()["quick_migrations"]
    assert record["downtime_ns"] == t3 - t0 and record["outcome"] == "completed"
    assert [s["step"] for s in record["steps"]] == ["save", "read", "restored"]


def test_a_disk_io_vm_moves_with_its_disk_and_its_io_goes_on_over_the_targets_link(dc):
    a, b, san = dc.hosts["a"], dc.hosts["b"], dc.storage["san"]
    dc.run("300ms")
    issued = a.managed.vms["disk"].workload_states[0]["issued"]
    assert san.owner("disk.vhd") == "a" and issued > 0 and san.links["b"].requests == 0
    move = quick_move(dc, "disk", "b")
    assert move.disks == ["disk.vhd"]
    dc.run(move.saved_ns + FAILOVER_NS)
    assert san.owner("disk.vhd") == "b"
    assert [t["to"] for t in san.transfers] == ["b", "b"]   # the disk and the saved state
    dc.run("1.5s")
    vm = b.managed.vms["disk"]
    after = san.links["a"].requests
    dc.run("2s")
    assert vm.state is VmState.RUNNING and vm.workload_states[0]["issued"] > issued   # its sequence goes on
    assert san.links["b"].requests > 0 and san.links["a"].requests == after          # on b's link now
    assert vm.measure()["disk_normalized_ios"] > 0
    with pytest.raises(Exception, match="owned by host 'b'"):
        a.managed.storage.attach("disk", [san.path("disk.vhd")])


def test_a_save_that_fails_leaves_the_vm_running_on_the_source(dc):
    a, san = dc.hosts["a"], dc.storage["san"]
    dc.run("200ms")
    vm = a.managed.vms["counter"]
    vm.workload_states[0]["oops"] = object()   # not plain data: the save refuses it
    with pytest.raises(QuickMigrationError, match="the save failed, it runs on on host 'a'") as e:
        quick_move(dc, "counter", "b")
    assert isinstance(e.value.__cause__, SavedStateError)
    del vm.workload_states[0]["oops"]
    assert a.managed.vms["counter"] is vm and vm.state is VmState.RUNNING
    assert dc.quick_migrations == [] and san.transfers == [] and san.links["a"].bytes < 64 * MIB
    value = counted(vm)
    dc.run("400ms")
    assert counted(vm) > value


def test_a_restore_that_fails_on_the_target_fails_the_vm_back_to_the_source(dc):
    """web's adapter is on switch "lan", which host b lacks: b cannot build it. Nothing of it stays
    on b; after another failover the source reads the same file over its own link and restores it."""
    a, b, san = dc.hosts["a"], dc.hosts["b"], dc.storage["san"]
    dc.run("200ms")
    move = quick_move(dc, "web", "b")
    t1 = move.saved_ns
    read_b = crossing(32 * MIB, 2 * 10**9, 30_000)
    read_a = crossing(32 * MIB, 4 * 10**9, 20_000)
    failed_at = t1 + FAILOVER_NS + read_b
    back = failed_at + FAILOVER_NS + read_a
    dc.run(back)
    assert "web" not in b.managed.vms and a.managed.vms["web"].state is VmState.RUNNING
    assert move.outcome == "failed back" and move.restored_on == "a" and move.downtime_ns == back - move.started_ns
    assert "switch" in move.error
    assert san.owner("web.hvsav") == "a" and [t["to"] for t in san.transfers] == ["b", "a"]
    assert [s["step"] for s in move.steps] == ["save", "read", "restore failed", "read", "restored"]


def test_moves_that_cannot_start_are_refused_and_change_nothing(dc, tmp_path):
    dc.run("100ms")
    with pytest.raises(QuickMigrationError, match="on host 'a' already"):
        quick_move(dc, "counter", "a")
    with pytest.raises(QuickMigrationError, match="no host 'c'"):
        quick_move(dc, "counter", "c")
    with pytest.raises(QuickMigrationError, match="no host of the datacenter has a VM named 'nope'"):
        quick_move(dc, "nope", "b")
    dc.hosts["a"].managed.vms["counter"].turn_off()
    with pytest.raises(QuickMigrationError, match="it is Off"):
        quick_move(dc, "counter", "b")
    local = loads(DC.replace('path = "san/disk.vhd"', 'path = "local/disk.vhd"'), base_dir=tmp_path / "l")
    other = Datacenter(local, seed=3, workdir=tmp_path / "l" / "run")
    try:
        other.run("100ms")
        with pytest.raises(QuickMigrationError, match="its disk .* is on host 'a' alone"):
            quick_move(other, "disk", "b")
        assert other.hosts["a"].managed.vms["disk"].state is VmState.RUNNING
    finally:
        other.close()
    assert dc.quick_migrations == []


def _in_window_run(tmp_path, name):
    """A quick migration started inside a window (by a handler on host a, as a timeline's verb
    runs), then the datacenter to 1.2 s: (digest, the move's times)."""
    d = Datacenter(loads(DC, base_dir=tmp_path / name), seed=3, workdir=tmp_path / name / "run")
    try:
        a = d.hosts["a"]
        moves = []
        a.handle("go", lambda m: moves.append(quick_move(d, "counter", "b")))
        a.accept([Message("a", "a", "go", b"", 0, 0, 10**6, 0, 250_000_000)])
        d.run("1.2s")
        (move,) = moves
        assert move.started_ns == 250_000_000 and move.outcome == "completed"
        assert d.hosts["b"].managed.vms["counter"].state is VmState.RUNNING
        return d.trace_digest(), (move.saved_ns, move.owned_ns, move.restored_ns)
    finally:
        d.close()


def test_the_same_seed_gives_the_same_digest_twice_with_a_move_inside_a_window(tmp_path):
    one, two = _in_window_run(tmp_path, "one"), _in_window_run(tmp_path, "two")
    assert one == two
    saved, owned, restored = one[1]
    assert owned == saved + FAILOVER_NS        # not moved to the window's end: the failover outlasts a window
    assert restored == owned + crossing(64 * MIB, 2 * 10**9, 30_000)


def test_a_posted_hand_off_lands_at_its_arrival_or_at_the_end_of_the_window_it_was_posted_in(dc):
    """Datacenter.post: between windows a message is handed over at once and delivered at its
    arrival; inside a window, at the window's end, and an arrival before that end moves to it (so
    the outcome does not depend on the order hosts run in)."""
    a, b = dc.hosts["a"], dc.hosts["b"]
    seen = []
    b.handle("hand-off", lambda m: seen.append((m.payload, b.now)))

    def post(payload, arrival):
        dc.post(Message("a", "b", "hand-off", payload, len(payload), a.now, a.sent, a.now, arrival))
        a.sent += 1

    post(b"between", 30_000_000)                         # at 0, between windows
    a.handle("go", lambda m: post(b"inside", a.now + 1))  # at 50 ms, inside the first window
    a.accept([Message("a", "a", "go", b"", 0, 0, 10**6, 0, 50_000_000)])
    dc.run("200ms")
    assert seen == [(b"between", 30_000_000), (b"inside", 100_000_000)]
    with pytest.raises(ValueError, match="no earlier than it was sent"):
        dc.post(Message("a", "b", "hand-off", b"", 0, 5, 0, 5, 4))
