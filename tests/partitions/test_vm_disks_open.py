"""A VM starts only with every disk it is given: a disk its storage device cannot open (held by
another VM, not a regular file, not a VHD) refuses the start with an error naming the VM, the
disk and the file, and the VM stays Off with the reason; nothing runs with a LUN silently missing.
A run directory another run is using is refused when the host is built."""
import os

import pytest

from drivers.registry import discover
from drivers.storage import DEVICE as STORAGE
from drivers.storage.vhd import VirtualDisk
from hypervisor import Host
from partitions.config import load
from partitions.config_schema import ConfigError
from partitions.management import ManagedHost
from partitions.vm import DeviceSlot, DiskUnavailable, VirtualMachine, VmState
from partitions.vmbus_parent import ParentVmbus
from partitions.worker import VmSpec

MS = 1_000_000


@pytest.fixture
def env():
    host = Host(logical_processors=2, memory="128MiB", seed=3)
    return host, ParentVmbus(host, vp_index=1), discover()


def disk_vm(env, name, disks):
    host, vmbus, registry = env
    return VirtualMachine(host, vmbus, registry, VmSpec(name, memory="2MiB", processors=1),
                          devices=[DeviceSlot(STORAGE, {"disks": [str(d) for d in disks]})], workload=None)


def vhd(path, size=1 << 20):
    VirtualDisk.create(str(path), size, "dynamic").close()
    return path


def test_a_disk_another_vm_holds_refuses_the_start_and_the_vm_stays_off(env, tmp_path):
    host = env[0]
    shared = vhd(tmp_path / "shared.vhd")
    a = disk_vm(env, "a", [shared])
    b = disk_vm(env, "b", [vhd(tmp_path / "own.vhd", 2 << 20), shared])
    a.start()
    host.run(100 * MS)
    assert a.device_vsc("storage").ready
    with pytest.raises(DiskUnavailable) as caught:
        b.start()
    message = str(caught.value)
    assert message.startswith("vm 'b' cannot start: storage.disks[1] ")
    assert str(shared) in message and "cannot be opened read-write" in message and "VhdInUseError" in message
    assert "disks[0]" not in message                      # its own disk is fine
    assert caught.value.vm == "b"
    assert b.state is VmState.OFF and b.partition is None
    assert "storage.disks[1]" in b.off_reason
    host.run(200 * MS)
    assert a.device_vsc("storage").ready                  # the VM that has the disk runs on
    a.turn_off()
    b.start()                                             # the disk is free: both LUNs are there
    host.run(host.now + 100 * MS)
    vsp = b.device_vsp("storage")
    assert b.state is VmState.RUNNING and b.off_reason is None
    assert [lun is not None for lun in vsp.luns] == [True, True]


@pytest.mark.parametrize("kind", ["fifo", "directory", "not a vhd", "missing"])
def test_a_disk_that_stopped_being_an_openable_vhd_refuses_the_start(env, tmp_path, kind):
    # Made with a good disk (the VM's checkpoint tree reads it then), which is replaced before the start.
    path = vhd(tmp_path / "disk.vhd")
    vm = disk_vm(env, "c", [path])
    path.unlink()
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
    elif kind == "not a vhd":
        path.write_bytes(b"\0" * 4096)
    with pytest.raises(DiskUnavailable, match=rf"vm 'c' cannot start: storage.disks\[0\] {path}: cannot be opened"):
        vm.start()
    assert vm.state is VmState.OFF and vm.partition is None and "storage.disks[0]" in vm.off_reason


HOST = '''
[host]
logical_processors = 1
memory = "128MiB"

[[vm]]
name = "a"
memory = "8MiB"
disks = [ { path = "a.vhd", size = "1MiB" } ]
'''


def test_a_run_directory_another_run_is_using_is_refused_when_the_host_is_built(tmp_path):
    config = tmp_path / "host.toml"
    config.write_text(HOST)
    work = tmp_path / "work"
    first = ManagedHost(load(config), workdir=work)
    first.run("50ms")                                     # its VM has a/disk0.vhd open
    with pytest.raises(ConfigError, match=r"vm\[0\]: expected a run directory no other run is using .*"
                                          r"a/disk0.vhd, which an open disk holds"):
        ManagedHost(load(config), workdir=work)
    assert first.vms["a"].device_vsp("storage").luns[0] is not None
    first.close()
    second = ManagedHost(load(config), workdir=work)      # free again: the next run goes ahead
    second.run("50ms")
    assert second.vms["a"].device_vsc("storage").ready
    second.close()


def test_a_base_disk_another_writer_holds_is_refused_when_the_host_is_built(tmp_path):
    config = tmp_path / "host.toml"
    config.write_text(HOST)
    with VirtualDisk.create(str(tmp_path / "a.vhd"), 1 << 20, "dynamic"):   # held read-write
        with pytest.raises(ConfigError, match=r"vm\[0\].disks\[0\].path: expected a VHD file hvsim can open.*in use"):
            ManagedHost(load(config), workdir=tmp_path / "work")


def test_an_autostart_vm_that_cannot_start_stays_off_and_the_host_runs_on(tmp_path):
    """Between the check of the host file and the start, a's disk stops being a VHD: the run
    goes on with b, a is Off with the reason, and the event log says so."""
    from partitions.eventlog import EventLog
    cfg = tmp_path / "host.toml"
    cfg.write_text('[[vm]]\nname = "a"\nmemory = "8MiB"\ndisks = [ { path = "a.vhd", size = "4MiB" } ]\n'
                   '[[vm]]\nname = "b"\nmemory = "8MiB"\n')
    log = EventLog(None, lambda: 0)
    managed = ManagedHost(load(cfg), workdir=tmp_path / "run", event_log=log)
    run_disk = tmp_path / "run" / "a" / "disk0.vhd"
    run_disk.unlink()
    run_disk.write_bytes(b"\0" * 4096)
    managed.run(200 * MS)
    rows = {r["Name"]: r for r in managed.get_vm()}
    assert rows["a"]["State"] == "Off" and "disk" in managed.vms["a"].off_reason
    assert rows["b"]["State"] == "Running" and managed.vms["b"].device_vsp("heartbeat").status == "ok"
    failed = [e for e in log.records() if e["event"] == "vm.start_failed"]
    assert len(failed) == 1 and failed[0]["vm"] == "a" and str(run_disk) in failed[0]["error"]
    managed.close()
