"""Failures stay where they start: a VSP that raises (in a timer, opening, closing) breaks its own
channel and the parent's VMBus service goes on; a guest that raises takes down its own VM (Off,
with the reason in Get-VM and the event log), and the other VMs run on."""
import uuid

import pytest

from drivers.device import DeviceType
from drivers.example.vsc import EchoVsc
from drivers.example.vsp import EchoVsp
from drivers.ic import HEARTBEAT
from drivers.registry import discover
from hypervisor import Host
from partitions.vm import DeviceSlot, VirtualMachine, VmState
from partitions.vmbus_parent import ParentVmbus
from partitions.worker import VmSpec

MS, S = 1_000_000, 1_000_000_000


class _TimerFails(EchoVsp):
    def on_open(self):
        self.context.call_later(MS, lambda: 1 / 0)


class _OpenFails(EchoVsp):
    def on_open(self):
        raise RuntimeError("cannot open")


class _CloseFails(EchoVsp):
    def on_close(self):
        raise RuntimeError("cannot close")


def _device(name, vsp):
    return DeviceType(name=name, class_id=uuid.uuid5(uuid.NAMESPACE_URL, f"hvsim-test/{name}"),
                      vsp=type(vsp.__name__, (vsp,), {}), vsc=type(f"{name}Vsc", (EchoVsc,), {}))


@pytest.fixture
def env():
    host = Host(logical_processors=2, memory="128MiB", seed=3)
    return host, ParentVmbus(host, vp_index=1), discover()


def _vm(env, name, *devices):
    host, vmbus, registry = env
    for d in devices:
        registry.add(d)
    return VirtualMachine(host, vmbus, registry, VmSpec(name, memory="2MiB"),
                          devices=[DeviceSlot(HEARTBEAT)] + [DeviceSlot(d) for d in devices])


@pytest.mark.parametrize("vsp, where", [(_TimerFails, "failed in a timer: ZeroDivisionError"),
                                        (_OpenFails, "failed to open: RuntimeError: cannot open")])
def test_a_vsp_that_raises_breaks_its_own_channel_and_the_service_goes_on(env, vsp, where):
    host, vmbus, _ = env
    bad = _vm(env, "bad", _device("flaky", vsp))
    good = _vm(env, "good")
    seen = []
    vmbus.on_log = lambda pid, event, fields, device: seen.append((pid, event, device, fields.get("why", "")))
    bad.start()
    good.start()
    host.run(5 * S)                                    # no exception reaches the run
    failures = [s for s in seen if where in s[3]]
    assert failures and all(pid == bad.partition.id and device == "flaky" for pid, _, device, _ in failures)
    assert bad.state is VmState.RUNNING and bad.heartbeat_status() == "OK"     # its other channels work
    assert good.heartbeat_status() == "OK"
    assert any(entry[1:3] == (bad.partition.id, failures[0][1]) for entry in vmbus.log)   # kept in memory too


def test_a_vsp_that_raises_on_close_is_logged_and_the_vm_still_turns_off(env):
    host, vmbus, _ = env
    vm = _vm(env, "vm", _device("sticky", _CloseFails))
    seen = []
    vmbus.on_log = lambda pid, event, fields, device: seen.append((event, device, fields.get("why", "")))
    vm.start()
    host.run(1 * S)
    vm.turn_off()
    assert vm.state is VmState.OFF and host.introspect.partition_ids() == [host.root.id]
    assert ("device failed", "sticky") in [(e, d) for e, d, why in seen if "cannot close" in why]
    host.run(2 * S)
