"""Save -> restore keeps every device of a VM alive, as on Hyper-V: the VSPs are quiesced before
the memory snapshot and resumed after the restore, nothing touches a Saved VM's memory
meanwhile, and heartbeats, disk I/O and network traffic carry on after the restore, whatever
the moment of the save and however long the VM stays Saved."""
from pathlib import Path

import pytest

from drivers.device import DeviceQuiesced, DeviceType, ManualContext, Vsc, Vsp
from hypervisor.testing.invariants import check_all
from partitions.config import loads
from partitions.management import ManagedHost
from partitions.savedstate import SavedStateReader
from partitions.vm import VmState

US, MS, S = 1_000, 1_000_000, 1_000_000_000

# "a" has every built-in device: the integration services, a disk under disk-io and an adapter
# under net-request-response; "b" asks "a" too, so frames reach "a" while it is Saved.
HOST = """
[host]
logical_processors = 2
memory = "128MiB"
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
"""


def build(tmp_path: Path, text: str = HOST, *, disk_latency: str = "1ms") -> ManagedHost:
    managed = ManagedHost(loads(text, base_dir=tmp_path), workdir=tmp_path)
    for vm in managed.vms.values():
        for slot in vm.devices:
            if slot.device.name == "heartbeat":
                slot.host_config["period"] = "50ms"    # several heartbeats in each short run
            if slot.device.name == "storage":
                slot.host_config["latency"] = disk_latency   # fewer, longer requests: a faster test
    return managed


def failures(managed: ManagedHost) -> list:
    """What the parent's VMBus service logged about channels or devices that failed."""
    return [entry for entry in managed.vmbus.log
            if entry[2] in ("channel broken", "device failed", "message failed") or "cannot" in entry[2]]


def answered(vm) -> int:
    return next(w for w in [vm.workload, *vm.more_workloads] if hasattr(w, "stats")).stats["answered"]


# Save moments spread over the traffic's phases (sub-millisecond offsets included), and Saved
# periods from none at all to longer than the heartbeat's "lost" threshold.
SWEEP = [(120 * MS + i * 6_700_011 + i * i * 7_919, gap)
         for i, gap in enumerate([0, 1, 37 * US, 3 * MS, 250 * MS, 450 * MS, 1 * S, 5 * S] * 3)]


@pytest.mark.parametrize("save_at, saved_for", SWEEP)
def test_every_device_carries_on_after_save_and_restore(tmp_path, save_at, saved_for):
    save_restore_and_check(tmp_path, save_at, saved_for, 150 * MS)


@pytest.mark.parametrize("save_at", [1 * MS, 16 * MS + 333, 45 * MS + 7_777])
def test_a_vm_saved_while_its_devices_are_still_being_offered_and_opened_carries_on(tmp_path, save_at):
    save_restore_and_check(tmp_path, save_at, 100 * MS, 400 * MS)   # the guest finishes booting after


def save_restore_and_check(tmp_path, save_at, saved_for, after):
    managed = build(tmp_path)
    managed.run(save_at)
    a, b = managed.vms["a"], managed.vms["b"]
    before = a.memory_digest()
    a.save(tmp_path / "a.hvsav")
    assert a.state is VmState.SAVED
    wiped = a.memory_digest()
    managed.run(save_at + saved_for)
    assert a.memory_digest() == wiped, "something wrote into the Saved VM's memory"
    a.restore()
    assert a.memory_digest() == before == SavedStateReader(tmp_path / "a.hvsav", kind="saved-state").meta[
        "memory_digest"]

    restored_at = managed.host.now
    disk = a.device_vsp("storage")
    completed = disk.completed if disk is not None else 0
    a_answered, b_answered = answered(a), answered(b)
    managed.run(restored_at + after)
    assert a.heartbeat_status() == "OK"
    assert a.device_vsp("heartbeat").last_answer > restored_at     # heartbeats are answered again
    assert a.device_vsp("storage").completed > completed            # disk I/O completes again
    assert answered(a) > a_answered and answered(b) > b_answered     # requests and responses flow
    assert failures(managed) == []
    assert all(a.device_vsp(slot.device.name) is not None for slot in a.devices)


def test_frames_for_a_saved_vm_are_dropped_as_by_an_adapter_that_is_off(tmp_path):
    managed = build(tmp_path)
    managed.run(300 * MS)
    a = managed.vms["a"]
    nic = a.device_vsp("network")
    a.save(tmp_path / "a.hvsav")
    managed.run(500 * MS)
    assert nic.stats["rx_vm_saved"] > 0            # "b" kept asking; "a"'s adapter took nothing
    dropped = nic.stats["rx_vm_saved"]
    a.restore()
    managed.run(700 * MS)
    assert nic.stats["rx_vm_saved"] == dropped
    assert nic.stats["rx_frames"] > 0 and failures(managed) == []


def test_the_heartbeat_does_not_count_the_time_saved_as_lost(tmp_path):
    managed = build(tmp_path)
    managed.run(400 * MS)
    a = managed.vms["a"]
    a.save(tmp_path / "a.hvsav")
    managed.run(30 * S)             # far beyond lost_after x period
    a.restore()
    managed.run(managed.host.now + 1 * MS)
    assert a.heartbeat_status() == "OK"


def test_in_flight_disk_requests_complete_after_the_restore_as_long_after_it_as_they_had_left(tmp_path):
    managed = build(tmp_path, disk_latency="5ms")  # requests stay in service long enough to be caught
    managed.run(300 * MS)
    a = managed.vms["a"]
    disk = a.device_vsp("storage")
    assert disk.outstanding
    owed = {lun: entry.busy_until - managed.host.now for lun, entry in enumerate(disk.luns) if entry is not None}
    completed = disk.completed
    a.save(tmp_path / "a.hvsav")
    managed.run(2 * S)
    assert disk.completed == completed              # nothing completes while Saved
    # What each medium owes, taken as the VSP resumes (requests the guest sends after the
    # restore queue behind it, and may come within any time after it).
    at_resume, resume = {}, disk.resume
    disk.resume = lambda: (resume(), at_resume.update({lun: entry.busy_until - managed.host.now for lun, entry
                                                       in enumerate(disk.luns) if entry is not None}))
    a.restore()
    managed.run(managed.host.now + 1 * MS)
    assert at_resume == owed                        # the media stood still while the VM was Saved
    managed.run(managed.host.now + 20 * MS)
    assert disk.completed > completed and failures(managed) == []


def test_a_host_request_while_saved_is_answered_after_the_restore(tmp_path):
    managed = build(tmp_path)
    managed.run(300 * MS)
    a = managed.vms["a"]
    a.save(tmp_path / "a.hvsav")
    exchange = a.device_vsp("kvp").set(0, "asked-while", "saved")
    managed.run(1 * S)
    assert not exchange.done                         # waits: the guest cannot answer now
    a.restore()
    managed.run(1100 * MS)
    assert exchange.ok


def test_time_sync_sets_the_guest_clock_again_after_a_restore(tmp_path):
    managed = build(tmp_path)
    managed.run(300 * MS)
    a = managed.vms["a"]
    clock = a.device_vsc("timesync")
    steps = clock.steps                               # the SYNC after negotiation
    a.save(tmp_path / "a.hvsav")
    managed.run(2 * S)
    a.restore()
    managed.run(2010 * MS)
    assert clock.steps == steps + 1 and clock.error_ns() == 0


def test_the_scenario_of_a_host_file_save_then_restore_through_the_timeline(tmp_path):
    text = HOST + '[[at]]\ntime = "300ms"\naction = "save"\nvm = "a"\n' \
                  '[[at]]\ntime = "700ms"\naction = "restore"\nvm = "a"\n'
    managed = build(tmp_path, text)
    managed.run(1 * S)
    row = next(r for r in managed.get_vm() if r["Name"] == "a")
    assert (row["State"], row["Status"]) == ("Running", "Operating normally")
    assert failures(managed) == []
    quiesced, resumed = [(t, f) for t, pid, event, f in managed.vmbus.log
                         if event in ("devices quiesced", "devices resumed")]
    assert quiesced[0] == 300 * MS and quiesced[1] == {"channels": 7}
    assert resumed[0] >= 700 * MS and resumed[1]["quiesced_ns"] == resumed[0] - quiesced[0]


def test_a_saved_vm_can_be_turned_off_and_started_afresh(tmp_path):
    managed = build(tmp_path)
    managed.run(300 * MS)
    a = managed.vms["a"]
    a.save(tmp_path / "a.hvsav")
    managed.run(400 * MS)
    a.turn_off()
    assert a.state is VmState.OFF and a.partition is None
    check_all(managed.host)
    managed.run(500 * MS)
    asked = answered(a)
    a.start()
    managed.run(900 * MS)
    assert a.heartbeat_status() == "OK" and a.device_vsp("storage").completed > 0 and answered(a) > asked
    assert failures(managed) == []
    with pytest.raises(Exception, match="cannot restore"):
        a.restore()                                   # its saved state went with the turn-off


def test_a_save_that_fails_resumes_the_devices(tmp_path):
    managed = build(tmp_path)
    managed.run(300 * MS)
    a = managed.vms["a"]
    with pytest.raises(OSError):
        a.save(tmp_path / "no such directory" / "a.hvsav")
    assert a.state is VmState.RUNNING
    managed.run(managed.host.now + 1 * MS)
    assert not managed.vmbus.quiesced(a.partition)
    disk, heartbeat = a.device_vsp("storage"), a.device_vsp("heartbeat")
    completed, answered_before = disk.completed, answered(a)
    managed.run(450 * MS)
    assert a.heartbeat_status() == "OK" and heartbeat.last_answer > 300 * MS
    assert disk.completed > completed and answered(a) > answered_before
    assert failures(managed) == []


def test_a_synthetic_timer_that_expires_while_saved_does_not_write_into_the_vm(tmp_path):
    from hypervisor import Register
    from hypervisor.synic import read_message_slot, sint_value, stimer_config_value
    managed = build(tmp_path)
    managed.run(100 * MS)
    a = managed.vms["a"]
    part = a.partition
    # A periodic 1 ms timer on SINT 3, which the guest kernel does not read: its first message
    # stays in the slot and every later expiry waits behind it.
    managed.host.root.set_vp_registers(part, 0, {Register.SINT0 + 3: sint_value(0x40),
                                                 Register.STIMER0_CONFIG: stimer_config_value(3, periodic=True),
                                                 Register.STIMER0_COUNT: 10_000})
    managed.run(110 * MS)
    simp = managed.host.root.get_vp_registers(part, 0, [Register.SIMP])[0] >> 12
    assert read_message_slot(part, simp, 3).message_type != 0
    before = a.memory_digest()
    a.save(tmp_path / "a.hvsav")
    wiped = a.memory_digest()
    managed.run(200 * MS)
    assert a.memory_digest() == wiped
    a.restore()
    assert a.memory_digest() == before
    managed.run(250 * MS)
    assert managed.host.root.get_vp_registers(part, 0, [Register.STIMER0_CONFIG])[0] == \
        stimer_config_value(3, periodic=True)
    assert read_message_slot(part, simp, 3).message_type != 0 and failures(managed) == []


# ---- plugin devices: what the parent's service guarantees to a VSP that does nothing special ----

TICK = 1 * MS


class TickerVsp(Vsp):
    """Sends the guest a numbered tick every millisecond from a timer; no quiesce/resume of its
    own, as a plugin written before they existed."""

    def on_open(self):
        self.sent, self.closed = 0, False
        self.context.call_later(TICK, self._tick)

    def on_close(self):
        self.closed = True

    def _tick(self):
        if self.closed:
            return
        self.sent += 1
        self.channel.send(self.sent.to_bytes(8, "little"), trans_id=self.sent)
        self.context.call_later(TICK, self._tick)

    def poke(self):
        """A host API call: writes into the ring on its own account."""
        self.channel.send(b"poke".ljust(8, b"\0"), trans_id=0)


class TickerVsc(Vsc):
    @property
    def ready(self):
        return True

    def on_open(self):
        self.ticks, self.pokes = [], 0

    def on_packets(self, packets):
        for packet in packets:
            if packet.trans_id == 0:
                self.pokes += 1
            else:
                self.ticks.append(int.from_bytes(packet.payload[:8], "little"))


class QuiesceFails(TickerVsp):
    def quiesce(self):
        raise RuntimeError("cannot quiesce")


class ResumeFails(TickerVsp):
    def resume(self):
        raise RuntimeError("cannot resume")


def plugin(name, vsp=TickerVsp, vsc=TickerVsc):
    import uuid
    return DeviceType(name=name, class_id=uuid.uuid5(uuid.NAMESPACE_URL, f"hvsim-test/save-restore/{name}"),
                      vsp=type(f"{name}Vsp", (vsp,), {}), vsc=type(f"{name}Vsc", (vsc,), {}))


@pytest.fixture
def small_host():
    from drivers.registry import discover
    from hypervisor import Host
    from partitions.vmbus_parent import ParentVmbus
    host = Host(logical_processors=2, memory="128MiB", seed=5)
    vmbus = ParentVmbus(host, vp_index=1)
    logged = []
    vmbus.on_log = lambda pid, event, fields, device: logged.append((event, device, fields))
    return host, vmbus, discover(), logged


def plugin_vm(small_host, *devices):
    from drivers.example import DEVICE as ECHO
    from drivers.ic import HEARTBEAT
    from partitions.vm import DeviceSlot, VirtualMachine
    from partitions.worker import VmSpec
    host, vmbus, registry, _ = small_host
    for device in devices:
        registry.add(device)

    async def echo_forever(ctx):
        await ctx.wait_for(lambda: ctx.devices.get("echo") is not None and ctx.devices["echo"].ready)
        while True:
            ctx.devices["echo"].echo(b"over and over")
            await ctx.sleep(TICK)

    return VirtualMachine(host, vmbus, registry, VmSpec("p", memory="4MiB"), workload=echo_forever,
                          devices=[DeviceSlot(HEARTBEAT, {"period": "50ms"}), DeviceSlot(ECHO)]
                          + [DeviceSlot(d) for d in devices])


@pytest.mark.parametrize("saved_for", [0, 13 * US, 500 * MS])
def test_a_plugin_device_without_quiesce_or_resume_survives_save_and_restore(small_host, tmp_path, saved_for):
    host = small_host[0]
    vm = plugin_vm(small_host, plugin("ticker"))
    vm.start()
    host.run(100 * MS + 333_333)
    ticker, echo = vm.device_vsc("ticker"), vm.device_vsc("echo")
    before = vm.memory_digest()
    vm.save(tmp_path / "p.hvsav")
    wiped = vm.memory_digest()
    host.run(host.now + saved_for)
    assert vm.memory_digest() == wiped
    vm.restore()
    assert vm.memory_digest() == before
    ticks, replies = len(ticker.ticks), len(echo.replies)
    host.run(host.now + 100 * MS)
    assert len(ticker.ticks) > ticks + 50 and len(echo.replies) > replies + 50
    assert ticker.ticks == list(range(1, len(ticker.ticks) + 1))   # none lost, none twice
    assert echo.failed == [] and vm.heartbeat_status() == "OK"
    assert [entry for entry in small_host[3] if entry[0] in ("channel broken", "device failed")] == []


@pytest.mark.parametrize("vsp, hook", [(QuiesceFails, "quiesce"), (ResumeFails, "resume")])
def test_a_plugin_whose_hook_raises_breaks_its_own_channel_only(small_host, tmp_path, vsp, hook):
    host, vmbus, _, logged = small_host
    vm = plugin_vm(small_host, plugin("flaky", vsp))
    vm.start()
    host.run(100 * MS)
    vm.save(tmp_path / "p.hvsav")                     # the save goes on
    assert vm.state is VmState.SAVED
    host.run(300 * MS)
    vm.restore()
    echo = vm.device_vsc("echo")
    replies = len(echo.replies)
    host.run(400 * MS)
    broken = [(device, fields["why"]) for event, device, fields in logged if event == "channel broken"]
    assert broken == [("flaky", f"flakyVsp failed to {hook}: RuntimeError: cannot {hook}")]
    assert vmbus.broken(vm.partition, vm._relids["flaky"]) is not None
    assert len(echo.replies) > replies and vm.heartbeat_status() == "OK"   # the other devices go on


def test_a_vsp_writing_on_its_own_account_while_saved_is_refused(small_host, tmp_path):
    host = small_host[0]
    vm = plugin_vm(small_host, plugin("ticker"))
    vm.start()
    host.run(100 * MS)
    vsp = vm.device_vsp("ticker")
    vm.save(tmp_path / "p.hvsav")
    wiped = vm.memory_digest()
    with pytest.raises(DeviceQuiesced):
        vsp.poke()
    assert vm.memory_digest() == wiped
    vm.restore()
    host.run(host.now + 1 * MS)
    vsp.poke()
    host.run(host.now + 1 * MS)
    assert vm.device_vsc("ticker").pokes == 1


def test_a_manual_context_holds_timers_as_the_parent_does():
    ctx, fired = ManualContext(), []
    ctx.call_later(10, lambda: fired.append(ctx.now()))
    ctx.advance(4)
    ctx.hold()
    ctx.call_later(3, lambda: fired.append(ctx.now()))   # armed while held: counts from the release
    ctx.advance(100)
    assert fired == []
    ctx.release()
    ctx.advance(10)
    assert fired == [107, 110]
