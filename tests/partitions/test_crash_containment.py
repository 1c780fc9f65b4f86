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


# ---- a guest that raises, in a managed host ------------------------------------------------------

async def crash_at_1s(ctx):
    """A python workload whose guest code divides by zero at 1 s."""
    await ctx.sleep("1s")
    return 1 // 0


HOST = """
[host]
logical_processors = 2
memory = "1GiB"

[[vm]]
name = "doomed"
memory = "64MiB"
workload = {{ kind = "python", target = "tests.partitions.test_crash_containment:crash_at_1s" }}

[[vm]]
name = "steady"
memory = "64MiB"
workload = {{ kind = "cpu-burn", duty = 0.5 }}
{extra}
"""


def _managed(tmp_path, extra=""):
    from partitions.config import loads
    from partitions.eventlog import EventLog
    from partitions.management import ManagedHost
    built = []
    log = EventLog(None, lambda: built[0].host.now if built else 0)
    managed = ManagedHost(loads(HOST.format(extra=extra), base_dir=tmp_path), workdir=tmp_path, event_log=log)
    built.append(managed)
    return managed, log


def test_a_guest_that_raises_takes_down_its_own_vm_and_the_others_run_on(tmp_path):
    managed, log = _managed(tmp_path)
    steady_cpu = []
    managed.run("3s", on_progress=lambda m: steady_cpu.append(m.vms["steady"].run_time_ns()))
    rows = {r["Name"]: r for r in managed.get_vm()}
    assert rows["doomed"]["State"] == "Off" and rows["doomed"]["Uptime"] == "00:00:00.000"
    assert rows["doomed"]["Status"] == "guest crashed: ZeroDivisionError: integer division or modulo by zero on VP 0"
    assert rows["steady"]["State"] == "Running" and rows["steady"]["Status"] == "Operating normally"
    assert all(b > a for a, b in zip(steady_cpu, steady_cpu[1:]))       # it kept running to the end
    assert managed.host.introspect.partition_ids() == [managed.host.root.id, managed.vms["steady"].partition.id]
    crashed = [e for e in log.records() if e["event"] == "vm.crashed"]
    assert [{k: v for k, v in e.items() if k != "t_ns"} for e in crashed] == [
        {"event": "vm.crashed", "vm": "doomed", "vp": 0, "error": "ZeroDivisionError: integer division or modulo by zero"}]
    assert 1_000_000_000 <= crashed[0]["t_ns"] < 1_001_000_000        # its sleep ended, give or take kernel work
    off = [e for e in log.records() if e["event"] == "vm.state" and e["vm"] == "doomed" and e["new"] == "Off"]
    assert off[0]["reason"].startswith("guest crashed: ZeroDivisionError") and "partition" not in off[0]["reason"]
    summary = managed.summary()
    assert summary["vms"][0]["Status"] == rows["doomed"]["Status"]


def test_a_crashed_vm_starts_again_afresh(tmp_path):
    managed, log = _managed(tmp_path)
    managed.run("2s")
    managed.vms["doomed"].start()
    managed.run("2.5s")
    row = next(r for r in managed.get_vm() if r["Name"] == "doomed")
    assert row["State"] == "Running" and row["Uptime"] == "00:00:00.500" and "crashed" not in row["Status"]
    managed.run("3.5s")                                                   # and it crashes again, on time
    assert [e["t_ns"] // 1_000_000 for e in log.records() if e["event"] == "vm.crashed"] == [1000, 3000]
