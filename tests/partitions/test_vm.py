"""VM lifecycle with Hyper-V's states: start, graceful stop through the shutdown integration
service, turn off, pause/resume, quick reset, and clear errors for invalid transitions."""
import pytest

from drivers.ic import HEARTBEAT, SHUTDOWN
from drivers.registry import discover
from hypervisor import Host
from hypervisor.testing.invariants import check_all
from partitions.vm import DeviceSlot, InvalidTransition, VirtualMachine, VmState
from partitions.worker import VmSpec
from partitions.vmbus_parent import ParentVmbus

MS, S = 1_000_000, 1_000_000_000


async def burn(ctx):
    while True:
        await ctx.compute("6ms")
        await ctx.sleep("4ms")


@pytest.fixture
def env():
    host = Host(logical_processors=2, memory="128MiB", seed=3)
    vmbus = ParentVmbus(host, vp_index=1)
    return host, vmbus, discover()


def make(env, name="vm", workload=burn, devices=(HEARTBEAT, SHUTDOWN), states=None):
    host, vmbus, registry = env
    return VirtualMachine(host, vmbus, registry, VmSpec(name, memory="2MiB", processors=1),
                          devices=[DeviceSlot(d) for d in devices], workload=workload,
                          on_state=(lambda vm, old, new: states.append((old.value, new.value))) if states is not None else None)


def test_start_runs_the_guest_and_heartbeats_come_back(env):
    host, vmbus, _ = env
    vm = make(env)
    vm.start()
    assert vm.state is VmState.RUNNING
    host.run(5 * S)
    assert vm.heartbeat_status() == "OK"
    # The workload is 60 % busy (plus the kernel's VMBus work).
    assert 0.55 < vm.run_time_ns() / host.now < 0.7
    check_all(host)


def test_graceful_stop_goes_through_the_guest(env):
    host, vmbus, _ = env
    states = []
    vm = make(env, states=states)
    vm.start()
    host.run(1 * S)
    vm.stop()
    assert vm.state is VmState.STOPPING
    host.run(2 * S)
    assert vm.state is VmState.OFF
    assert states == [("Off", "Starting"), ("Starting", "Running"), ("Running", "Stopping"), ("Stopping", "Off")]
    assert vm.partition is None
    assert len(host.introspect.partition_ids()) == 1   # only the root is left
    check_all(host)


def test_turn_off_pause_resume_and_reset(env):
    host, vmbus, _ = env
    vm = make(env)
    vm.start()
    host.run(100 * MS)
    vm.pause()
    before = vm.run_time_ns()
    host.run(300 * MS)
    assert vm.run_time_ns() == before            # paused: no CPU
    vm.resume()
    host.run(400 * MS)
    assert vm.run_time_ns() > before
    old_id = vm.partition.id
    vm.quick_reset()
    assert vm.state is VmState.RUNNING and vm.partition.id != old_id
    host.run(600 * MS)
    vm.turn_off()
    assert vm.state is VmState.OFF
    check_all(host)
    vm.start()                                  # and it can start again
    host.run(700 * MS)
    assert vm.state is VmState.RUNNING


def test_invalid_transitions_are_clear_errors(env):
    vm = make(env)
    with pytest.raises(InvalidTransition, match="vm 'vm' is Off: cannot pause"):
        vm.pause()
    vm.start()
    with pytest.raises(InvalidTransition, match="is Running: cannot start"):
        vm.start()
    with pytest.raises(InvalidTransition, match="resume"):
        vm.resume()


def test_stop_without_the_shutdown_service_is_refused(env):
    vm = make(env, devices=(HEARTBEAT,))
    vm.start()
    with pytest.raises(InvalidTransition, match="shutdown integration service"):
        vm.stop()
    vm.turn_off()


def test_a_vm_with_a_disk_does_io_that_costs_the_parent_cpu(env, tmp_path):
    from drivers.storage import DEVICE as STORAGE
    from drivers.storage.vhd import VirtualDisk
    from partitions.workloads import disk_io
    host, vmbus, registry = env
    path = tmp_path / "d.vhd"
    VirtualDisk.create(str(path), 8 * 2**20, "dynamic").close()
    vm = VirtualMachine(host, vmbus, registry, VmSpec("disk", memory="2MiB", processors=1),
                        devices=[DeviceSlot(STORAGE, {"path": str(path)})],
                        workload=disk_io(pattern="random", block_size="16KiB", queue_depth=4, read_fraction=0.5))
    vm.start()
    host.run(300 * MS)
    vsp = vm.device_vsp("storage")
    vsc = vm.device_vsc("storage")
    assert vsc.ready and vsc.capacity == 8 * 2**20 // 512
    assert len(vsc.completed) > 100 and all(r.ok for r in vsc.completed)
    assert host.introspect.run_time_ns(host.root) > 0   # storvsp's work is the parent's
    vm.turn_off()
    check_all(host)


def _disk_vm(env, tmp_path, devices=()):
    from drivers.storage import DEVICE as STORAGE
    from drivers.storage.vhd import VirtualDisk
    host, vmbus, registry = env
    path = tmp_path / "base.vhd"
    VirtualDisk.create(str(path), 4 * 2**20, "dynamic").close()
    vm = VirtualMachine(host, vmbus, registry, VmSpec("ck", memory="2MiB", processors=1),
                        devices=[DeviceSlot(d) for d in devices] + [DeviceSlot(STORAGE, {"path": str(path)})],
                        workload=None)
    return vm, path


def _write_and_wait(host, vm, lba, data):
    req = vm.device_vsc("storage").write(lba, data)
    host.run(host.now + 50 * MS)
    assert req.done and req.ok
    req = vm.device_vsc("storage").read(lba, len(data) // 512)
    host.run(host.now + 50 * MS)
    assert req.ok
    return req.data


def test_checkpoint_writes_apply_brings_the_old_data_back(env, tmp_path):
    from drivers.ic import VSS
    host, vmbus, _ = env
    vm, base = _disk_vm(env, tmp_path, devices=(VSS,))
    vm.start()
    host.run(200 * MS)
    assert _write_and_wait(host, vm, 0, b"A" * 512) == b"A" * 512
    vm.checkpoint("before")
    host.run(host.now + 200 * MS)                       # the VSS freeze/thaw exchange runs
    assert vm.checkpoint_log[-1][1:] == ("before", "consistent")
    assert vm.checkpoints.checkpoints["before"].disk == str(base)
    assert _write_and_wait(host, vm, 0, b"B" * 512) == b"B" * 512
    vm.turn_off()
    vm.apply_checkpoint("before")
    vm.start()
    host.run(host.now + 300 * MS)
    req = vm.device_vsc("storage").read(0, 1)
    host.run(host.now + 50 * MS)
    assert req.data == b"A" * 512                        # the old data is back
    check_all(host)


def test_delete_merges_the_checkpoint_disk(env, tmp_path):
    from drivers.storage.vhd import VirtualDisk
    host, vmbus, _ = env
    vm, base = _disk_vm(env, tmp_path)
    vm.start()
    host.run(200 * MS)
    _write_and_wait(host, vm, 8, b"1" * 1024)
    vm.checkpoint("c1")                                  # no VSS: crash-consistent at once
    assert vm.checkpoint_log[-1][2] == "crash-consistent"
    _write_and_wait(host, vm, 8, b"2" * 512)             # after the checkpoint, on the child disk
    live = vm.checkpoints.live_disk
    assert live != str(base)
    vm.delete_checkpoint("c1")
    assert vm.checkpoints.live_disk == str(base) and not (tmp_path / live).exists()
    # The VM keeps running on the merged disk and sees its latest data.
    assert _write_and_wait(host, vm, 16, b"3" * 512) == b"3" * 512
    vm.turn_off()
    with VirtualDisk.open(str(base), read_only=True) as d:
        assert d.read(8 * 512, 1024) == b"2" * 512 + b"1" * 512
        assert d.read(16 * 512, 512) == b"3" * 512
    with pytest.raises(Exception, match="no checkpoint named"):
        vm.apply_checkpoint("c1")


def test_save_restore_continues_with_identical_memory_and_devices(env, tmp_path):
    host, vmbus, _ = env
    steps = []

    async def counter(ctx):
        while True:
            steps.append(ctx.now)
            ctx.partition.write(0x9000, len(steps).to_bytes(8, "little"))  # state in guest memory
            await ctx.compute("1ms")
            await ctx.sleep("1ms")

    vm = make(env, workload=counter)
    vm.start()
    host.run(1 * S)
    before_mem = vm.memory_digest()
    before_hb = vm.device_vsp("heartbeat").save()
    n = len(steps)
    path = tmp_path / "vm.hvsav"
    vm.save(path)
    assert vm.state is VmState.SAVED
    assert vm.memory_digest() != before_mem                  # the memory lives in the file now
    host.run(2 * S)
    assert len(steps) == n                                  # nothing runs while Saved
    vm.restore(path)
    assert vm.state is VmState.RUNNING
    assert vm.memory_digest() == before_mem
    assert vm.device_vsp("heartbeat").save() == before_hb
    host.run(3 * S)
    assert len(steps) > n                                   # the guest just goes on
    assert int.from_bytes(vm.partition.read(0x9000, 8), "little") == len(steps)
    check_all(host)


def test_a_corrupt_or_truncated_saved_state_changes_nothing(env, tmp_path):
    from partitions.savedstate import SavedStateError
    host, vmbus, _ = env
    vm = make(env)
    vm.start()
    host.run(500 * MS)
    path = tmp_path / "vm.hvsav"
    vm.save(path)
    good = path.read_bytes()
    wiped = vm.memory_digest()
    for bad in (good[:len(good) // 2], good[:100] + bytes([good[100] ^ 1]) + good[101:]):
        path.write_bytes(bad)
        with pytest.raises(SavedStateError):
            vm.restore(path)
        assert vm.state is VmState.SAVED and vm.memory_digest() == wiped
    path.write_bytes(good)
    vm.restore(path)
    assert vm.state is VmState.RUNNING


def test_saved_state_covers_every_device_of_the_default_host(tmp_path):
    from partitions.config import default_config
    from partitions.management import ManagedHost
    from partitions.savedstate import SavedStateReader
    managed = ManagedHost(default_config(tmp_path), workdir=tmp_path)
    managed.run(1 * S)
    web = managed.vms["web"]
    records = {name: web.device_vsp(name).save() for name in ("storage", "network", "heartbeat", "kvp")}
    digest = web.memory_digest()
    web.save(tmp_path / "web.hvsav")
    devices = SavedStateReader(tmp_path / "web.hvsav", kind="saved-state").load("devices")
    for name in ("storage", "network", "heartbeat", "shutdown", "timesync", "kvp", "vss"):
        assert "saved" in devices[name], (name, devices[name])
    assert devices["storage"]["saved"]["disk"].endswith("web/disk0.vhd")   # its run disk, over web.vhd
    assert devices["network"]["saved"]["rndis"] == "INITIALIZED"
    web.restore()
    assert web.memory_digest() == digest
    assert {name: web.device_vsp(name).save() for name in records} == records
    managed.run(2 * S)
    assert web.heartbeat_status() == "OK"
