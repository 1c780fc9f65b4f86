"""A VM's whole state is data: a capture (and a saved-state file) rebuilds the VM on another host
or in a new Python process, where the guest resumes as from hibernation (its VMBus reconnects,
its devices open afresh) and each workload goes on from its `ctx.state`."""
from __future__ import annotations

from pathlib import Path

import pytest

from partitions.config import loads
from partitions.management import ManagedHost
from partitions.savedstate import SavedStateError
from partitions.vm import InvalidTransition, VmState

MS = 1_000_000

HOST = """
[host]
logical_processors = 2
memory = "256MiB"
[[vm]]
name = "counter"
memory = "16MiB"
workload = { kind = "memory-counter", pages = 16, interval = "1ms" }
[[vm]]
name = "disk"
memory = "16MiB"
workload = { kind = "disk-io", pattern = "random", queue_depth = 4 }
disks = [ { path = "disk.vhd", size = "8MiB" } ]
"""
EMPTY = """
[host]
logical_processors = 2
memory = "256MiB"
"""


def host(tmp_path: Path, text: str, name: str) -> ManagedHost:
    return ManagedHost(loads(text, base_dir=tmp_path), workdir=tmp_path / name)


def move(vm, target: ManagedHost):
    """The same-process move MIGRATE builds on: freeze, capture, incoming, pages, resume, release."""
    vm.freeze()
    image = vm.capture()
    digest = vm.memory_digest()
    pages = vm.memory_pages()
    arrived = target.incoming(image["config"])
    assert arrived.state is VmState.MIGRATING and target.vms[vm.name] is arrived
    arrived.write_pages(pages, b"".join(vm.partition.read(p * 4096, 4096) for p in pages))
    arrived.resume_from(image)
    assert arrived.memory_digest() == digest   # nothing of the guest has run yet
    vm.release("moved")
    return arrived, image


def records(image: dict) -> dict:
    return {k: image[k] for k in ("vps", "host_visibility", "guest", "devices", "measured", "config")}


def test_a_vm_moves_between_two_hosts_of_one_process_and_goes_on(tmp_path):
    from partitions.eventlog import EventLog
    from tests.partitions.test_eventlog import documented, undocumented
    hosts = []
    logs = [EventLog(None, lambda i=i: hosts[i].host.now if len(hosts) > i else 0) for i in range(2)]
    for i, (text, name) in enumerate(((HOST, "a"), (EMPTY, "b"))):
        hosts.append(ManagedHost(loads(text, base_dir=tmp_path), workdir=tmp_path / name, event_log=logs[i]))
    source, target = hosts
    source.run("200ms")
    target.run("200ms")
    before = {name: dict(vm.workload_states[0]) for name, vm in source.vms.items()}
    moved = {}
    for name in ("counter", "disk"):
        vm = source.vms[name]
        moved[name], image = move(vm, target)
        assert vm.state is VmState.OFF and name not in source.vms
        # The records round-trip through the live objects of the new shell: before its guest
        # runs, a capture gives back what came.
        moved[name].freeze()
        assert records(moved[name].capture()) == records(image)
        moved[name].thaw()
    counter = int.from_bytes(moved["counter"].partition.read(before["counter"]["region"][0] * 4096, 8), "little")
    target.run("400ms")
    c, d = moved["counter"], moved["disk"]
    assert c.workload_states[0]["region"] == before["counter"]["region"]   # the same pages
    assert min(c.workload.written) > counter > 0                          # counting on from memory
    assert d.workload_states[0]["issued"] > before["disk"]["issued"] > 0  # its sequence goes on
    assert [row["State"] for row in target.get_vm()] == ["Running", "Running"]
    assert d.measure()["disk_normalized_ios"] > 0
    assert not [e for e in target.vmbus.log if "broken" in e[2] or "failed" in e[2]]
    assert d.measure()["disk_normalized_ios"] > image["measured"]["disk_normalized_ios"] > 0   # folded in
    # What the move logged, on each side, is in docs/events.md.
    events = [{r["event"] for r in log.records()} for log in logs]
    assert {"vm.released", "vmbus.channel_rescinded"} <= events[0]
    assert {"vm.resumed_from_image", "guest.vmbus_resume"} <= events[1]
    assert not undocumented(events[0] | events[1], *documented())


def test_freeze_then_thaw_changes_nothing(tmp_path):
    managed = host(tmp_path, HOST, "a")
    managed.run("100ms")
    vm = managed.vms["counter"]
    vm.freeze()
    assert vm.state is VmState.MIGRATING and managed.get_vm()[0]["State"] == "Migrating"
    digest = vm.memory_digest()
    managed.run("150ms")                      # frozen: its memory stays as it was
    assert vm.memory_digest() == digest
    vm.thaw()
    assert vm.state is VmState.RUNNING
    value = max(vm.workload.written)
    managed.run("200ms")
    assert max(vm.workload.written) > value
    with pytest.raises(InvalidTransition):
        vm.thaw()


def test_a_bad_image_leaves_the_arriving_vm_migrating(tmp_path):
    source, target = host(tmp_path, HOST, "a"), host(tmp_path, EMPTY, "b")
    source.run("100ms")
    vm = source.vms["counter"]
    vm.freeze()
    image = vm.capture()
    arrived = target.incoming(image["config"])
    for bad in ({**image, "guest": {**image["guest"], "workloads": [object()]}},
                {**image, "guest": {**image["guest"], "workloads": []}},
                {k: v for k, v in image.items() if k != "guest"},
                {**image, "memory_bytes": image["memory_bytes"] * 2}):
        with pytest.raises(SavedStateError):
            arrived.resume_from(bad)
        assert arrived.state is VmState.MIGRATING
    arrived.resume_from(image)
    assert arrived.state is VmState.RUNNING


def test_an_incoming_vm_needs_its_switches_here(tmp_path):
    text = HOST + """
[[switch]]
name = "lan"
[[vm]]
name = "web"
memory = "8MiB"
nics = [ { switch = "lan", ip = "10.0.0.1/24" } ]
"""
    source, target = host(tmp_path, text, "a"), host(tmp_path, EMPTY, "b")
    source.run("50ms")
    vm = source.vms["web"]
    vm.freeze()
    with pytest.raises(SavedStateError, match=r"vm\[0\]\.nics\[0\]\.switch"):
        target.incoming(vm.capture()["config"])
    assert "web" not in target.vms
    vm.thaw()
    assert vm.state is VmState.RUNNING


# ---- a saved VM restored in a new Python process --------------------------------------------------

FILE = """
[host]
logical_processors = 2
memory = "256MiB"
[[vm]]
name = "counter"
memory = "16MiB"
workload = { kind = "memory-counter", pages = 16, interval = "1ms", page_work = "1us" }
[[vm]]
name = "disk"
memory = "16MiB"
workload = { kind = "disk-io", pattern = "random", queue_depth = 4 }
disks = [ { path = "disk.vhd", size = "8MiB" } ]
"""
T, D = 200 * MS, 300 * MS
PAGES, INTERVAL, PAGE_WORK, QUEUE_DEPTH = 16, 1 * MS, 1_000, 4

# Run in a fresh interpreter: build the host from the same file, restore each VM from its file,
# and report (msgpack) the digest and capture right after the restore, when every device of the
# VM is open again, and the workloads' progress at D/2 and D.
RESTORE = r"""
import sys
from pathlib import Path
import msgpack
from partitions.config import load
from partitions.management import ManagedHost

config, workdir, out = sys.argv[1:4]
names, D = sys.argv[4].split(","), int(sys.argv[5])
managed = ManagedHost(load(config), workdir=workdir)
report = {}
for name in names:
    vm = managed.restore_vm(Path(config).parent / f"{name}.hvsav")
    digest = vm.memory_digest()
    vm.freeze()
    image = vm.capture()
    vm.thaw()
    report[name] = {"digest": digest, "image": image, "state": vm.state.value}

def progress(vm):
    state = vm.workload_states[0]
    if "issued" in state:
        return state["issued"]
    return min(int.from_bytes(vm.partition.read(p * 4096, 8), "little") for p in state["region"])

def all_open(vm):
    return all(vm.device_vsc(s.name) is not None and getattr(vm.device_vsc(s.name), "ready", True)
               for s in vm.devices)

while managed.host.now < D:
    managed.run(managed.host.now + 100_000)
    for name in names:
        vm = managed.vms[name]
        if "reconnect_ns" not in report[name] and all_open(vm):
            report[name]["reconnect_ns"] = managed.host.now
    if managed.host.now == D // 2:
        for name in names:
            report[name]["half"] = progress(managed.vms[name])
for name in names:
    report[name]["end"] = progress(managed.vms[name])
    report[name]["states"] = [row["State"] for row in managed.get_vm()]
managed.close()
Path(out).write_bytes(msgpack.packb(report, use_bin_type=True))
"""


def progress(vm) -> int:
    """disk-io: requests issued; memory-counter: the lowest value in its pages (a whole round)."""
    state = vm.workload_states[0]
    if "issued" in state:
        return state["issued"]
    return min(int.from_bytes(vm.partition.read(p * 4096, 8), "little") for p in state["region"])


def test_a_saved_vm_restores_in_a_new_process_and_goes_on(tmp_path):
    import subprocess
    import sys

    import msgpack

    from partitions.config import load
    from partitions.savedstate import SavedStateReader
    config = tmp_path / "host.toml"
    config.write_text(FILE)
    names = ["counter", "disk"]

    saver = ManagedHost(load(config), workdir=tmp_path / "saver")
    saver.run(T)
    saved = {}
    for name in names:
        saver.vms[name].save(tmp_path / f"{name}.hvsav")
        with SavedStateReader(tmp_path / f"{name}.hvsav") as r:
            saved[name] = {"digest": r.meta["memory_digest"], **{s: r.load(s) for s in
                           ("vps", "devices", "host_visibility", "config", "guest", "measured")}}
    saver.close()   # its VSPs let go of the disk files; the saved states stay

    # The run that was never saved, to T + D.
    never = ManagedHost(load(config), workdir=tmp_path / "never")
    never.run(T)
    at_t = {name: progress(never.vms[name]) for name in names}
    never.run(T + D)
    at_end = {name: progress(never.vms[name]) for name in names}
    never.close()

    out = tmp_path / "report.msgpack"
    subprocess.run([sys.executable, "-c", RESTORE, str(config), str(tmp_path / "restorer"), str(out),
                    ",".join(names), str(D)], check=True, timeout=600)
    report = msgpack.unpackb(out.read_bytes(), raw=False, strict_map_key=False)

    for name in names:
        got = report[name]
        assert got["state"] == "Running" and got["states"] == ["Running", "Running"]
        # Memory right after the restore is the memory at the save, and the records came through
        # the new process's live objects unchanged.
        assert got["digest"] == saved[name]["digest"]
        for section in ("vps", "devices", "host_visibility", "config", "guest", "measured"):
            assert got["image"][section] == saved[name][section], section
    # The guest goes on from where it was saved, and keeps going.
    state = {name: saved[name]["guest"]["workloads"][0] for name in names}
    assert state["disk"]["issued"] == at_t["disk"] and state["disk"]["inflight"]
    assert at_t["disk"] < report["disk"]["half"] < report["disk"]["end"]
    assert at_t["counter"] <= report["counter"]["half"] < report["counter"]["end"]

    # Against the run never saved, the restored one is behind only by its reconnect: until every
    # device is open again (R) the guest serves its VMBus, at most R of its time; a round of the
    # counter takes at least INTERVAL + (PAGES - 1) * PAGE_WORK; the round cut by the save starts
    # over (one round either way). disk-io issues nothing while its disk is away and issues its
    # QUEUE_DEPTH requests in flight again, not counted twice; after that it issues the same
    # sequence at the rate of the run never saved (measured over D).
    r_counter, r_disk = report["counter"]["reconnect_ns"], report["disk"]["reconnect_ns"]
    round_ns = INTERVAL + (PAGES - 1) * PAGE_WORK
    assert abs(at_end["counter"] - report["counter"]["end"]) <= -(-r_counter // round_ns) + 1
    rate = (at_end["disk"] - at_t["disk"]) / D
    behind = at_end["disk"] - report["disk"]["end"]
    assert 0 <= behind <= -(-r_disk * rate // 1) + QUEUE_DEPTH + 1


def rewrite(src: Path, dst: Path, change) -> None:
    """A copy of saved-state file `src` with its sections (name -> object) as change(sections) has them."""
    from partitions.savedstate import SavedStateReader, SavedStateWriter
    with SavedStateReader(src) as r:
        sections = {name: r.load(name) for name in r.sections() if name != "memory"}
        memory = list(r.records("memory"))
        meta, kind = r.meta, r.kind
    sections = change(sections)
    with SavedStateWriter(dst, kind, meta) as w:
        for name, obj in sections.items():
            w.section(name, obj)
        stream = w.stream("memory")
        for record in memory:
            stream.write_record(record)


@pytest.fixture
def saved_counter(tmp_path):
    config = tmp_path / "host.toml"
    config.write_text(FILE)
    from partitions.config import load
    saver = ManagedHost(load(config), workdir=tmp_path / "saver")
    saver.run("50ms")
    saver.vms["counter"].save(tmp_path / "counter.hvsav")
    saver.close()
    return tmp_path / "counter.hvsav"


def _guest(change):
    def apply(sections):
        sections["guest"] = change(sections["guest"])
        return sections
    return apply


@pytest.mark.parametrize("what, change", [
    ("no guest section", lambda s: {k: v for k, v in s.items() if k != "guest"}),
    ("no config section", lambda s: {k: v for k, v in s.items() if k != "config"}),
    ("a workload state that is not a map", _guest(lambda g: {**g, "workloads": [[1, 2]]})),
    ("a workload state for a VP it lacks", _guest(lambda g: {**g, "workloads": g["workloads"] * 2})),
    ("a kernel record without its allocator", _guest(lambda g: {**g, "kernel": {**g["kernel"], "pages": None}})),
    ("a page of the image outside the VM", lambda s: {**s, "host_visibility": [[1 << 30, 3]]}),
    ("Measure-VM figures that are not counts", lambda s: {**s, "measured": {"disk_read_bytes": -1}}),
])
def test_a_bad_image_leaves_the_vm_off(saved_counter, tmp_path, what, change):
    bad = tmp_path / "bad.hvsav"
    rewrite(saved_counter, bad, change)
    managed = host(tmp_path, FILE, "restorer")
    vm = managed.vms["counter"]
    with pytest.raises(SavedStateError):
        managed.restore_vm(bad)
    assert vm.state is VmState.OFF and vm.partition is None and vm.off_reason is None
    managed.restore_vm(saved_counter)    # the good file still restores
    assert vm.state is VmState.RUNNING


def test_an_image_of_another_configuration_is_refused(saved_counter, tmp_path):
    managed = host(tmp_path, FILE.replace("pages = 16", "pages = 8"), "restorer")
    with pytest.raises(SavedStateError, match=r"vm\.workload"):
        managed.restore_vm(saved_counter)
    assert managed.vms["counter"].state is VmState.OFF and managed.vms["counter"].partition is None


def test_a_workload_state_that_is_not_plain_data_refuses_the_save(tmp_path):
    managed = host(tmp_path, FILE, "a")
    managed.run("50ms")
    vm = managed.vms["counter"]
    vm.workload_states[0]["oops"] = object()
    with pytest.raises(SavedStateError, match=r"guest\.workloads\[0\]"):
        vm.save(tmp_path / "x.hvsav")
    assert vm.state is VmState.RUNNING and not (tmp_path / "x.hvsav").exists()
    del vm.workload_states[0]["oops"]
    value = max(vm.workload.written)
    managed.run("100ms")
    assert max(vm.workload.written) > value


NETWORK = """
[host]
logical_processors = 2
memory = "256MiB"
[[switch]]
name = "lan"
[[vm]]
name = "a"
processors = 2
memory = "16MiB"
workload = [ { kind = "disk-io", queue_depth = 2 },
             { kind = "net-request-response", peer = "b", interval = "10ms" } ]
disks = [ { path = "a.vhd", size = "8MiB" } ]
nics = [ { switch = "lan", ip = "10.0.0.1/24" } ]
[[vm]]
name = "b"
memory = "16MiB"
workload = { kind = "net-request-response", peer = "a", interval = "10ms" }
nics = [ { switch = "lan", ip = "10.0.0.2/24" } ]
[[vm]]
name = "burn"
processors = 2
memory = "8MiB"
workload = { kind = "cpu-burn", duty = 0.3 }
"""


def test_every_device_and_every_vp_carries_on_in_a_new_shell(tmp_path):
    first = host(tmp_path, NETWORK, "first")
    first.run("200ms")
    saved = {}
    for name, vm in first.vms.items():
        vm.save(tmp_path / f"{name}.hvsav")
        saved[name] = ([dict(s) for s in vm.workload_states], vm.measure())
    first.close()

    second = host(tmp_path, NETWORK, "second")
    for name in ("a", "b", "burn"):
        second.restore_vm(tmp_path / f"{name}.hvsav")
    second.run("200ms")
    a, b, burn = (second.vms[n] for n in ("a", "b", "burn"))
    assert [row["State"] for row in second.get_vm()] == ["Running"] * 3
    # disk-io on VP 0 and net-request-response on VP 1 of "a"; its peer "b" answers on the network.
    assert a.workload_states[0]["issued"] > saved["a"][0][0]["issued"] > 0
    assert a.workload_states[1]["answered"] > saved["a"][0][1]["answered"] > 0
    assert b.workload_states[0]["answered"] > saved["b"][0][0]["answered"] > 0
    # Measure-VM goes on from the saved figures.
    for key in ("disk_normalized_ios", "network_in_bytes", "network_out_bytes"):
        assert a.measure()[key] > saved["a"][1][key] > 0
    # The burner keeps both its VPs at its duty cycle.
    assert burn.run_time_ns() > 2 * 0.25 * 200 * MS
    assert not [e for e in second.vmbus.log if "broken" in e[2] or "failed" in e[2]]


def qemu_check(values: list[int]) -> bool:
    """QEMU's migration check over the counter's pages in the order it writes them: each page
    equals the one before it, or is one less at a single edge."""
    edges = sum(1 for x, y in zip(values, values[1:]) if x != y)
    return all(x == y or x == y + 1 for x, y in zip(values, values[1:])) and edges <= 1


def test_the_counter_finishes_the_round_a_save_cut_when_it_resumes_in_a_new_shell(tmp_path):
    text = FILE.replace('page_work = "1us"', 'page_work = "100us"')
    first = host(tmp_path, text, "first")
    first.run(T)
    vm = first.vms["counter"]
    region = list(vm.workload_states[0]["region"])

    def values(vm):
        return [int.from_bytes(vm.partition.read(p * 4096, 8), "little") for p in region]
    while len(set(values(vm))) == 1:     # run on until the save falls inside a round
        first.run(first.host.now + 50_000)
    vm.save(tmp_path / "counter.hvsav")
    first.close()

    second = host(tmp_path, text, "second")
    restored = second.restore_vm(tmp_path / "counter.hvsav")
    seen = []
    while second.host.now < 5 * MS:      # a few rounds, looked at every 50 us
        second.run(second.host.now + 50_000)
        seen.append(values(restored))
        assert qemu_check(seen[-1]), seen[-1]
    assert seen[-1][0] > seen[0][0]


def test_checkpoints_of_a_vm_restored_in_a_new_shell_fork_the_disk_it_runs_on(tmp_path):
    first = host(tmp_path, FILE, "first")
    first.run("50ms")
    first.vms["disk"].save(tmp_path / "disk.hvsav")
    served = first.vms["disk"]._storage_files()
    first.close()
    second = host(tmp_path, FILE, "second")
    vm = second.restore_vm(tmp_path / "disk.hvsav")
    assert vm._storage_files() == served and vm.checkpoints.live_disk == served[0]
    second.run("100ms")
    vm.checkpoint("after")
    second.run("150ms")
    assert vm.checkpoints.checkpoints["after"].disk == served[0]   # the file it ran on is frozen
    assert vm.state is VmState.RUNNING and vm.device_vsp("storage").completed > 0


async def steps(ctx):
    """A user workload keeping its count in ctx.state (as docs/guest-state.md shows)."""
    n = ctx.state.get("step", 0)
    while True:
        await ctx.compute("10us")
        n += 1
        ctx.state["step"] = n
        await ctx.sleep("1ms")


def test_a_vm_built_without_a_configuration_restores_in_another_host_object(tmp_path):
    from drivers.ic import HEARTBEAT
    from drivers.registry import discover
    from hypervisor import Host
    from partitions.vm import DeviceSlot, VirtualMachine
    from partitions.vmbus_parent import ParentVmbus
    from partitions.worker import VmSpec

    def make():
        h = Host(logical_processors=2, memory="128MiB", seed=3)
        vm = VirtualMachine(h, ParentVmbus(h, vp_index=1), discover(), VmSpec("vm", memory="2MiB"),
                            devices=[DeviceSlot(HEARTBEAT)], workload=steps)
        return h, vm

    h1, vm1 = make()
    vm1.start()
    h1.run("50ms")
    vm1.save(tmp_path / "vm.hvsav")
    step = vm1.workload_states[0]["step"]
    assert step > 10
    h2, vm2 = make()
    vm2.restore(tmp_path / "vm.hvsav")
    assert vm2.workload_states[0] == {"step": step}
    h2.run("20ms")
    assert vm2.state is VmState.RUNNING and vm2.workload_states[0]["step"] > step
    assert vm2.device_vsp("heartbeat") is not None and vm2.heartbeat_status() in ("OK", "No Contact")
