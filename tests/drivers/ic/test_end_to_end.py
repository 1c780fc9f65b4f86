"""All five integration services on a simulated host: one child, its VMBus stack binding each IC
through the driver registry, the parent's VSPs on a root VP."""
from drivers.ic import DEVICES, TIMESYNC
from drivers.ic.kvp import protocol as kvp
from drivers.registry import discover
from hypervisor import Host
from hypervisor.testing.invariants import check_all
from partitions.worker import VmSpec, VmWorker
from partitions.vmbus_guest import GuestVmbus
from partitions.vmbus_parent import ParentVmbus

S = 1_000_000_000
MS = 1_000_000


def boot(guest_configs=None, host_configs=None, name="guest", host=None, parent=None):
    host = host or Host(logical_processors=2, memory="64MiB", seed=5)
    parent = parent or ParentVmbus(host, vp_index=1)
    child = VmWorker(host, VmSpec(name, memory="2MiB")).build()
    parent.attach(child)
    vsps = {}
    for device in DEVICES:
        relid = parent.offer(child, device, (host_configs or {}).get(device.name, {}))
        vsps[device.name] = lambda relid=relid: parent.vsp(child, relid)   # built when the guest opens
    stack = GuestVmbus(child, discover(), configs=guest_configs or {})
    child.vp(0).run(stack.run)
    host.root.resume_partition(child)
    return host, parent, child, stack, vsps


def test_all_five_open_and_negotiate_through_the_registry():
    host, parent, child, stack, vsps = boot()
    host.run_for(100 * MS)
    assert sorted(stack.devices) == sorted(d.name for d in DEVICES)
    for name, vsp in vsps.items():
        assert vsp().negotiation.value == "done" and vsp().version == stack.devices[name].version
    check_all(host)


def test_heartbeat_goes_ok_then_lost_when_the_guest_hangs():
    host, parent, child, stack, vsps = boot()
    host.run_for(5 * S)
    heartbeat = vsps["heartbeat"]()
    assert heartbeat.status.value == "ok" and heartbeat.sequence == 3
    stack.devices["heartbeat"].hang()                   # the last answer came at about 4 s
    host.run_for(2900 * MS)
    assert heartbeat.status.value == "ok"               # not yet two periods without one
    host.run_for(2 * S)
    assert heartbeat.status.value == "lost contact"
    stack.devices["heartbeat"].resume()
    host.run_for(2 * S)
    assert heartbeat.status.value == "ok"


def test_timesync_bounds_the_clock_error_that_grows_without_it():
    host = Host(logical_processors=2, memory="64MiB", seed=5)
    parent = ParentVmbus(host, vp_index=1)
    guest = {"timesync": {"drift_ppm": 100}}
    _, _, _, synced, _ = boot(guest, host=host, parent=parent, name="synced")
    no_samples = {"timesync": {"sample_period": 0}}
    _, _, _, adrift, _ = boot(guest, no_samples, host=host, parent=parent, name="adrift")
    worst = 0
    for _ in range(60):
        host.run_for(1 * S)
        worst = max(worst, abs(synced.devices["timesync"].error_ns()))
    assert worst <= 5 * S * 100 // 1_000_000 + 20_000           # drift x period (+ delivery slop)
    assert abs(adrift.devices["timesync"].error_ns() - 6 * MS) < 20_000   # 100 ppm of 60 s
    assert TIMESYNC.vsc is type(synced.devices["timesync"])


def test_a_kvp_round_trip():
    host, parent, child, stack, vsps = boot({"kvp": {"pools": {kvp.POOL_AUTO: {"OSName": "hvsim-linux"}}}})
    host.run_for(10 * MS)
    vsp = vsps["kvp"]()
    done = []
    vsp.set(kvp.POOL_EXTERNAL, "VirtualMachineName", "web-01", on_done=done.append)
    vsp.get(kvp.POOL_AUTO, "OSName", on_done=done.append)
    vsp.get(kvp.POOL_EXTERNAL, "VirtualMachineName", on_done=done.append)
    host.run_for(10 * MS)
    assert [ex.ok for ex in done] == [True] * 3
    assert [done[1].reply, done[2].reply] == ["hvsim-linux", "web-01"]
    assert stack.devices["kvp"].pools[kvp.POOL_EXTERNAL] == {"VirtualMachineName": "web-01"}


def test_a_shutdown_request_reaches_the_guest_callback():
    calls = []
    host, parent, child, stack, vsps = boot(
        {"shutdown": {"on_shutdown": lambda restart: calls.append((host.now, restart))}})
    host.run_for(10 * MS)
    ex = vsps["shutdown"]().request_shutdown(message="bye")
    asked = host.now
    host.run_for(10 * MS)
    assert ex.ok and len(calls) == 1 and calls[0][1] is False and calls[0][0] > asked
    assert stack.devices["shutdown"].requests[0].message == "bye"


def test_a_backup_freezes_the_guest_around_the_point():
    frozen_at_point = []
    host, parent, child, stack, vsps = boot()
    host.run_for(10 * MS)
    backup = vsps["vss"]().backup(lambda: frozen_at_point.append(stack.devices["vss"].frozen) or host.now)
    host.run_for(10 * MS)
    assert backup.ok and frozen_at_point == [True] and not stack.devices["vss"].frozen
    check_all(host)


def test_same_seed_same_trace():
    a, b = boot(), boot()
    a[0].run_for(6 * S)
    b[0].run_for(6 * S)
    assert a[0].trace_digest() == b[0].trace_digest()
