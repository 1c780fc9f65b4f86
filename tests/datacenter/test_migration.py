"""Live migration between two hosts (partitions/datacenter/migration.py): pre-copy and post-copy
move a running VM whose guest keeps counting in its pages, and QEMU's check holds afterwards; a
disk-io VM's I/O goes on; aborts leave the VM running on the source, unchanged; each stop rule ends
pre-copy; the same seed gives the same digest."""
import msgpack
import pytest
from hypothesis import given, settings, strategies as st

from partitions.config import loads
from partitions.datacenter import Datacenter
from partitions.datacenter.migration import (PROTOCOL_VERSION, MigrationError, ProtocolError, StopRules, decode,
                                             encode, runs, split_zero)

PAGE = 4096


def two_hosts(vm: str, *, link: str = 'bandwidth = "10Gbit/s"\nlatency = "50us"', host_b: str = "") -> str:
    """Hosts a and b joined by a link; `vm` is the body of a [[host.vm]] on a."""
    return f"""
[[host]]
name = "a"
logical_processors = 2
memory = "512MiB"

[[host.vm]]
{vm}

[[host]]
name = "b"
logical_processors = 2
memory = "512MiB"
{host_b}

[[link]]
hosts = ["a", "b"]
{link}
"""


WRITE_HEAVY = 'name = "counter"\nmemory = "64MiB"\nworkload = { kind = "memory-counter", pages = 2048, interval = "1ms" }'
READ_MOSTLY = 'name = "counter"\nmemory = "64MiB"\nworkload = { kind = "memory-counter", pages = 8, interval = "40ms" }'


def datacenter(tmp_path, vm: str, seed: int = 1, **kw) -> Datacenter:
    return Datacenter(loads(two_hosts(vm, **kw)), seed=seed, workdir=tmp_path)


def counters(vm, region) -> list[int]:
    return [int.from_bytes(vm.partition.read(page * PAGE, 8), "little") for page in region]


def qemu_check(values: list[int]) -> bool:
    """Every page's counter equals its neighbour's, or is one less at a single edge (the pages
    before the edge already hold the next round's value)."""
    edges = [i for i in range(1, len(values)) if values[i] != values[i - 1]]
    return not edges or (len(edges) == 1 and values[edges[0]] == values[edges[0] - 1] - 1)


# ---- the wire ---------------------------------------------------------------------------------------
def test_messages_are_versioned_msgpack_maps_of_plain_data():
    payload = encode("pages", "a/1", round=2, seq=5, zero=[[0, 3]], gpas=[7], data=b"x" * PAGE)
    m = msgpack.unpackb(payload)
    assert m["v"] == PROTOCOL_VERSION and m["op"] == "pages" and m["id"] == "a/1"
    assert decode(payload, "pages") == m
    with pytest.raises(ProtocolError, match="version"):
        decode(msgpack.packb({**m, "v": PROTOCOL_VERSION + 1}))
    with pytest.raises(ProtocolError, match="op"):
        decode(payload, "state")
    with pytest.raises(ProtocolError, match="4 KiB"):
        decode(encode("pages", "a/1", round=2, seq=5, zero=[], gpas=[7, 8], data=b"x" * PAGE))
    with pytest.raises(ProtocolError, match="'seq'"):
        decode(encode("ack", "a/1", seq=True))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_decode_of_any_bytes_returns_a_checked_message_or_raises_protocol_error(data):
    try:
        m = decode(data)
    except ProtocolError:
        return
    assert m["v"] == PROTOCOL_VERSION and isinstance(m["id"], str)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 200), st.booleans()), unique_by=lambda t: t[0]))
def test_zero_pages_travel_as_runs_and_the_rest_with_their_data(pages):
    pages = sorted(pages)
    gpas = [g for g, _ in pages]
    data = b"".join((bytes([g % 255 + 1]) * PAGE) if full else bytes(PAGE) for g, full in pages)
    zero, full, out = split_zero(gpas, data)
    assert [p for first, n in zero for p in range(first, first + n)] == [g for g, f in pages if not f]
    assert full == [g for g, f in pages if f] and out == b"".join(bytes([g % 255 + 1]) * PAGE for g in full)
    got = runs(gpas)
    assert [p for first, n in got for p in range(first, first + n)] == gpas and all(n > 0 for _, n in got)
    assert all(a + n < b for (a, n), (b, _) in zip(got, got[1:]))     # maximal: no two runs touch


# ---- QEMU's check: the counter across a move ------------------------------------------------------
@pytest.mark.parametrize("kind", ["live", "post-copy"])
@pytest.mark.parametrize("guest", [WRITE_HEAVY, READ_MOSTLY], ids=["write-heavy", "read-mostly"])
def test_the_counter_survives_a_move_and_counts_on(tmp_path, monkeypatch, kind, guest):
    """QEMU's check on the target as it starts (before its guest runs again; post-copy's pages
    are fetched for the look) and after it has counted on there."""
    from partitions.vm import VirtualMachine
    at_resume = []
    resume_from = VirtualMachine.resume_from

    def resuming(vm, image):
        at_resume[:] = counters(vm, source.workload.region)
        resume_from(vm, image)
    monkeypatch.setattr(VirtualMachine, "resume_from", resuming)
    dc = datacenter(tmp_path, guest)
    dc.run("300ms")
    source = dc.hosts["a"].managed.vms["counter"]
    record = source.move(to="b", kind=kind)
    dc.run("900ms")
    assert record.outcome == "completed", record.reason
    assert "counter" not in dc.hosts["a"].managed.vms and source.partition is None   # released
    target = dc.hosts["b"].managed.vms["counter"]
    assert target.state.value == "Running"
    region, written = list(source.workload.region), list(source.workload.written)   # as frozen
    assert written[0] > 0
    assert qemu_check(at_resume) and at_resume == written      # every write the VM made arrived
    values = counters(target, region)
    assert qemu_check(values), values
    assert min(values) > max(written)                          # and it counted on, on b
    assert record.downtime_ns > 0 and record.total_ns >= record.downtime_ns
    if kind == "live":
        assert record.summary()["rounds"] >= 1 and record.summary()["pages_per_round"][0] == 64 * 256   # all RAM
    else:
        assert record.fetches > 0 and record.summary()["rounds"] == 0


def test_during_pre_copy_the_guest_runs_and_its_counter_is_checked_at_every_round(tmp_path):
    """The check holds in the target's memory after each round's pages are written (not only at
    the end): what arrived is a state the guest's memory was in, page by page no older than the
    round's start."""
    dc = datacenter(tmp_path, WRITE_HEAVY)
    dc.run("300ms")
    source = dc.hosts["a"].managed.vms["counter"]
    record = source.move(to="b")
    progress = []
    while record.freeze_ns is None:
        dc.run(dc.now + 50_000)
        progress.append(source.workload.written[0])
    assert len(set(progress)) > 1     # the guest counted while its memory was copied


# ---- a disk-io VM ------------------------------------------------------------------------------------
def test_a_disk_io_vm_moves_and_its_io_goes_on_on_the_target(tmp_path):
    vm = ('name = "io"\nmemory = "64MiB"\ndisks = [ { path = "io.vhd", size = "16MiB" } ]\n'
          'workload = { kind = "disk-io", pattern = "random", block_size = "4KiB", queue_depth = 4 }')
    dc = datacenter(tmp_path, vm)
    dc.run("300ms")
    source = dc.hosts["a"].managed.vms["io"]
    before = source.measure()
    assert before["disk_normalized_ios"] > 0
    record = source.move(to="b")
    dc.run("400ms")
    assert record.outcome == "completed", record.reason
    target = dc.hosts["b"].managed.vms["io"]
    moved = target.measure()
    dc.run("600ms")
    after = target.measure()
    assert moved["disk_normalized_ios"] >= before["disk_normalized_ios"]   # the figures came along
    assert after["disk_normalized_ios"] > moved["disk_normalized_ios"]     # and completions go on, on b
    assert target.device_vsc("storage") is not None


# ---- determinism ------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["live", "post-copy"])
def test_the_same_seed_gives_the_same_digest_twice(tmp_path, kind):
    digests, reports = [], []
    for run in ("x", "y"):
        dc = datacenter(tmp_path / run, WRITE_HEAVY, seed=5)
        dc.run("100ms")
        record = dc.move("counter", to="b", kind=kind)
        dc.run("450ms")
        digests.append(dc.trace_digest())
        reports.append(record.summary())
        dc.close()
    assert digests[0] == digests[1] and reports[0] == reports[1]
    assert reports[0]["outcome"] == "completed"


# ---- aborts -----------------------------------------------------------------------------------------
def test_a_target_that_cannot_build_the_vm_aborts_and_the_vm_runs_on_unchanged(tmp_path):
    """The target has no switch "lan": it refuses at the start, before anything froze. The VM's
    memory is then what it is in a run that never tried to move it."""
    vm = ('name = "counter"\nmemory = "64MiB"\nnics = [ { switch = "lan", ip = "10.0.0.3/24" } ]\n'
          'workload = { kind = "memory-counter", pages = 64, interval = "1ms" }')
    host_switch = "[[host.switch]]\nname = \"lan\"\n"
    digests = []
    for tries in (True, False):
        config = two_hosts(vm).replace('memory = "512MiB"\n\n[[host.vm]]', 'memory = "512MiB"\n' + host_switch
                                       + '\n[[host.vm]]', 1)
        dc = Datacenter(loads(config), seed=3, workdir=tmp_path / str(tries))
        dc.run("200ms")
        record = dc.move("counter", to="b") if tries else None
        dc.run("400ms")
        vm_a = dc.hosts["a"].managed.vms["counter"]
        assert vm_a.state.value == "Running" and "counter" not in dc.hosts["b"].managed.vms
        digests.append(vm_a.memory_digest())
        if tries:
            assert record.outcome == "aborted" and "switch" in record.reason and record.freeze_ns is None
    assert digests[0] == digests[1]


@pytest.mark.parametrize("kind", ["live", "post-copy"])
def test_a_failure_after_the_freeze_thaws_the_vm_with_its_memory_as_it_was(tmp_path, monkeypatch, kind):
    from partitions.savedstate import SavedStateError
    from partitions.vm import VirtualMachine
    seen = {}
    freeze, thaw = VirtualMachine.freeze, VirtualMachine.thaw

    def freezing(vm):
        freeze(vm)
        seen["frozen"] = vm.memory_digest()

    def thawing(vm):
        seen["thawed"] = vm.memory_digest()
        thaw(vm)

    def refuse(vm, image):
        raise SavedStateError("refused for the test")
    monkeypatch.setattr(VirtualMachine, "freeze", freezing)
    monkeypatch.setattr(VirtualMachine, "thaw", thawing)
    monkeypatch.setattr(VirtualMachine, "resume_from", refuse)
    dc = datacenter(tmp_path, WRITE_HEAVY)
    dc.run("200ms")
    vm = dc.hosts["a"].managed.vms["counter"]
    record = vm.move(to="b", kind=kind)
    dc.run("600ms")
    assert record.outcome == "aborted" and "refused for the test" in record.reason
    assert not dc.hosts["b"].managed.host._pagers                 # the target's pager went with its VM
    assert record.freeze_ns is not None and record.resume_ns is None
    assert seen["frozen"] == seen["thawed"]
    assert vm.state.value == "Running" and "counter" not in dc.hosts["b"].managed.vms
    counted = vm.workload.written[0]
    dc.run("700ms")
    assert vm.workload.written[0] > counted                      # it counts on, on a


def test_a_move_that_cannot_start_raises_and_changes_nothing(tmp_path):
    dc = datacenter(tmp_path, WRITE_HEAVY)
    dc.run("100ms")
    with pytest.raises(MigrationError, match="no host named 'c'"):
        dc.move("counter", to="c")
    with pytest.raises(MigrationError, match="kind"):
        dc.move("counter", to="b", kind="teleport")
    dc.hosts["a"].managed.vms["counter"].pause()
    dc.hosts["a"].managed.vms["counter"].save(tmp_path / "counter.hvsav")
    with pytest.raises(MigrationError, match="it is Saved"):
        dc.move("counter", to="b")
    dc.hosts["a"].managed.vms["counter"].restore()
    record = dc.move("counter", to="b")
    with pytest.raises(MigrationError, match="already moving"):
        dc.move("counter", to="b")
    assert [r.id for r in dc.migrations()] == [record.id]


# ---- the stop rules ---------------------------------------------------------------------------------
@pytest.mark.parametrize("rules, rule, rounds", [
    (StopRules(), "fewer than min_pages dirty", None),
    (StopRules(min_pages=0, max_rounds=3), "max_rounds reached", 3),
    (StopRules(min_pages=0, max_factor=1.0), "max_factor of memory sent", 1),
])
def test_each_stop_rule_ends_pre_copy(tmp_path, rules, rule, rounds):
    guest = WRITE_HEAVY if rule != "fewer than min_pages dirty" else READ_MOSTLY
    dc = datacenter(tmp_path, guest)
    dc.run("200ms")
    record = dc.move("counter", to="b", rules=rules)
    dc.run("800ms")
    assert record.outcome == "completed" and record.stop_rule == rule
    if rounds is not None:
        assert record.summary()["rounds"] == rounds
    else:
        # the rounds before the blackout all had more dirty pages to send than the last one
        assert record.summary()["pages_per_round"][-1] < 50
    target = dc.hosts["b"].managed.vms["counter"]
    assert qemu_check(counters(target, dc.hosts["b"].managed.vms["counter"].workload.region))


# ---- what a migration reports -----------------------------------------------------------------------
def test_the_report_events_and_trace_slices(tmp_path):
    from partitions.eventlog import EventLog
    path = tmp_path / "events.jsonl"
    holder = []
    log = EventLog(path, lambda: holder[0].clock() if holder else 0)
    dc = Datacenter(loads(two_hosts(WRITE_HEAVY)), seed=1, workdir=tmp_path, event_log=log)
    holder.append(dc)
    dc.run("200ms")
    record = dc.move("counter", to="b")
    dc.run("500ms")
    log.close()
    s = dc.summary()["migrations"]
    assert len(s) == 1 and s[0]["vm"] == "counter" and s[0]["from"] == "a" and s[0]["to"] == "b"
    r = s[0]
    assert r["bytes"] == record.bytes > 0 and r["downtime_ns"] == record.resume_ns - record.freeze_ns
    assert len(r["pages_per_round"]) == r["rounds"] + 1          # the rounds, then the blackout's pages
    import json
    events = [json.loads(line) for line in path.read_text().splitlines()]
    rounds = [e for e in events if e["event"] == "migration.round"]
    assert [e["round"] for e in rounds] == list(range(r["rounds"]))
    assert [e["event"] for e in events if e["event"] in ("migration.begin", "migration.end")] == \
        ["migration.begin", "migration.end"]
    assert all(e["host"] == "a" and e["vm"] == "counter" for e in rounds)
    from tests.partitions.test_eventlog import documented
    names, _ = documented()
    assert {e["event"] for e in events if e["event"].startswith("migration.")} <= names   # docs/events.md
    slices = record.slices()
    assert [name for _, _, name, _, _ in slices] == [f"round {i}" for i in range(r["rounds"])] + [
        "blackout pages", "blackout"]
    assert slices[-1][:2] == (record.freeze_ns, record.resume_ns)
    from partitions import perfetto
    trace = perfetto.build([], spans=slices)
    spans = [e for e in trace["traceEvents"] if e.get("cat") == "migration"]
    assert len(spans) == len(slices) and len({e["tid"] for e in spans}) == 2


@pytest.mark.parametrize("guest", [WRITE_HEAVY, READ_MOSTLY, 'name = "counter"\nmemory = "64MiB"\nworkload = { kind = '
                                   '"python", target = "bench.migration:writer", args = { first = 8192, pages = 800 } }'],
                         ids=["write-heavy", "read-mostly", "steady-writer"])
def test_pre_copy_brings_the_memory_the_vm_had_when_it_froze_page_for_page(tmp_path, monkeypatch, guest):
    """The target's memory when it resumes is the source's at the freeze, every page: the pages
    the last read of the dirty log found (the one that decided to stop) are sent too."""
    from partitions.vm import VirtualMachine
    seen = {}
    freeze, resume_from = VirtualMachine.freeze, VirtualMachine.resume_from

    def freezing(vm):
        freeze(vm)
        seen["source"] = vm.memory_digest()

    def resuming(vm, image):
        seen["target"] = vm.memory_digest()
        resume_from(vm, image)
    monkeypatch.setattr(VirtualMachine, "freeze", freezing)
    monkeypatch.setattr(VirtualMachine, "resume_from", resuming)
    dc = datacenter(tmp_path, guest)
    dc.run("200ms")
    record = dc.move("counter", to="b")
    dc.run("600ms")
    assert record.outcome == "completed" and seen["source"] == seen["target"]


def test_a_sender_knows_when_its_messages_leave_the_link_and_wakes_itself_then(tmp_path):
    """HostNode.link_free is what Link.transmit then does with the host's messages (queue, then
    transmission), and HostNode.at calls back at that time, before a message arriving then."""
    dc = Datacenter(loads(two_hosts('name = "idle"\nmemory = "16MiB"')), seed=1, workdir=tmp_path)
    a = dc.hosts["a"]
    dc.run("1ms")
    sent = [a.send("b", "x", b"", size=125_000), a.send("b", "x", b"", size=250)]   # 100 us, then 0.2 us
    assert a.link_free["b"] == 1_000_000 + 100_000 + 200
    woke = []
    a.at(a.link_free["b"], lambda: woke.append(a.now))
    dc.run("2ms")
    assert [m.start_ns + 8 * m.size * 10**9 // 10**10 for m in sent][-1] == a.link_free["b"]
    assert woke == [1_100_200]
    with pytest.raises(ValueError, match="past"):
        a.at(a.now - 1, lambda: None)
