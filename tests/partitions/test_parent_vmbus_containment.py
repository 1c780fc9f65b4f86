"""The parent's VMBus service contains what a child does to it: a child that turns its own SynIC
off, floods it with control messages or packets, or makes a parent-side call fail costs only its
own channels or VM; the service and the other VMs run on, with their throughput and latency."""
import pytest

from drivers.ic import HEARTBEAT
from drivers.registry import discover
from hypervisor import Host, Register
from partitions.vm import DeviceSlot, VirtualMachine, VmState
from partitions.vmbus_parent import ParentVmbus
from partitions.worker import VmSpec

MS, S = 1_000_000, 1_000_000_000


@pytest.fixture
def env():
    host = Host(logical_processors=2, memory="128MiB", seed=3)
    return host, ParentVmbus(host, vp_index=1), discover()


def _vm(env, name):
    host, vmbus, registry = env
    return VirtualMachine(host, vmbus, registry, VmSpec(name, memory="2MiB"), devices=[DeviceSlot(HEARTBEAT)])


@pytest.mark.parametrize("register", [Register.SCONTROL, Register.SIMP, Register.SIEFP])
def test_a_child_turning_its_synic_off_costs_only_itself_and_gets_its_signals_when_back(env, register):
    host, vmbus, _ = env
    bad, good = _vm(env, "bad"), _vm(env, "good")
    seen = []
    vmbus.on_log = lambda pid, event, fields, device: seen.append((pid, event))
    bad.start()
    good.start()
    host.run(1 * S)
    assert bad.heartbeat_status() == "OK"
    # What any guest kernel may do: an MSR write on its own VP.
    (before,) = bad.partition.get_vp_registers(None, 0, [register])
    bad.partition.set_vp_registers(None, 0, {register: 0})
    host.run(3 * S)                                     # nothing reaches the run
    assert good.state is VmState.RUNNING and good.heartbeat_status() == "OK"
    assert bad.state is VmState.RUNNING
    # Signals need the SIEF page and an enabled SynIC; a disabled SIM page only holds messages
    # in the core's queue (not an error).
    refuses = register != Register.SIMP
    assert ((bad.partition.id, "unreachable") in seen) == refuses   # logged, with the VM
    assert all(pid == bad.partition.id for pid, event in seen if event in ("unreachable", "channel broken"))
    assert vmbus.broken(bad.partition, 1) is None       # its channel is not its fault's victim
    # The guest turns its SynIC on again: the held signal reaches it, its heartbeat answers.
    bad.partition.set_vp_registers(None, 0, {register: before})
    host.run(6 * S)
    assert ((bad.partition.id, "reachable") in seen) == refuses
    assert bad.heartbeat_status() == "OK" and good.heartbeat_status() == "OK"


async def synic_off_at_1s(ctx):
    """A python workload whose kernel turns its VP's SynIC off at 1 s (an MSR write)."""
    await ctx.sleep("1s")
    ctx.partition.set_vp_registers(None, 0, {Register.SCONTROL: 0})


HOST = """
[host]
logical_processors = 2
memory = "1GiB"

[[vm]]
name = "bad"
memory = "64MiB"
workload = {{ kind = "python", target = "tests.partitions.test_parent_vmbus_containment:{workload}" }}

[[vm]]
name = "steady"
memory = "64MiB"
workload = {{ kind = "cpu-burn", duty = 0.5 }}
"""


def _managed(tmp_path, workload):
    from partitions.config import loads
    from partitions.eventlog import EventLog
    from partitions.management import ManagedHost
    built = []
    log = EventLog(None, lambda: built[0].host.now if built else 0)
    managed = ManagedHost(loads(HOST.format(workload=workload), base_dir=tmp_path), workdir=tmp_path, event_log=log)
    built.append(managed)
    return managed, log


def test_a_managed_guest_turning_its_synic_off_does_not_stop_the_host(tmp_path):
    managed, log = _managed(tmp_path, "synic_off_at_1s")
    steady_cpu = []
    managed.run("3s", on_progress=lambda m: steady_cpu.append(m.vms["steady"].run_time_ns()))
    rows = {r["Name"]: r for r in managed.get_vm()}
    assert rows["steady"]["State"] == "Running" and managed.vms["steady"].heartbeat_status() == "OK"
    assert all(b > a for a, b in zip(steady_cpu, steady_cpu[1:]))       # it kept running to the end
    assert rows["bad"]["State"] == "Running"                            # its own choice, not a crash
    unreachable = [e for e in log.records() if e["event"] == "vmbus.unreachable"]
    assert unreachable and all(e["vm"] == "bad" for e in unreachable)


def test_a_child_whose_serving_raises_crashes_alone(tmp_path):
    """Whatever raises while the service serves one child (here: a fault put into its retry of
    what waits for that child) is that child's: the service stops serving it and its VM
    crashes, named in the log; the service's VP and the other VM run on."""
    managed, log = _managed(tmp_path, "synic_off_at_1s")
    managed.run("1500ms")
    bad = managed.vms["bad"].partition.id
    service = managed.vmbus
    retry = service._retry

    def faulty(c):
        if c.partition.id == bad:
            raise RuntimeError("injected")
        retry(c)

    service._retry = faulty
    steady_cpu = []
    managed.run("3s", on_progress=lambda m: steady_cpu.append(m.vms["steady"].run_time_ns()))
    rows = {r["Name"]: r for r in managed.get_vm()}
    assert rows["bad"]["State"] == "Off"
    assert rows["bad"]["Status"] == "VMBus failed: serving it raised RuntimeError: injected"
    assert rows["steady"]["State"] == "Running" and managed.vms["steady"].heartbeat_status() == "OK"
    assert all(b > a for a, b in zip(steady_cpu, steady_cpu[1:]))
    failed = [e for e in log.records() if e["event"] == "vmbus.child_failed"]
    assert len(failed) == 1 and failed[0]["vm"] == "bad" and "injected" in failed[0]["why"]


def _contact_flood(ms: int, synic: bool):
    """One raw child floods the service with InitiateContact messages (each answered with a
    VersionResponse) for `ms` simulated ms; with synic=False its SynIC is off, so no answer can
    be posted to it. Returns (service, child)."""
    from hypervisor.status import HvError
    from partitions.worker import VmWorker
    from vmbus.protocol import InitiateContact

    host = Host(logical_processors=2, memory="64MiB", seed=5)
    vmbus = ParentVmbus(host, vp_index=1)
    child = VmWorker(host, VmSpec("flood", memory="1MiB")).build()
    vmbus.attach(child, [])
    contact = InitiateContact(0x7FFF_0000, 0).encode()      # a version nobody speaks

    async def flood(ctx):
        if not synic:
            child.set_vp_registers(None, 0, {Register.SCONTROL: 0})
        while True:
            for _ in range(16):
                try:
                    child.post_message(4, 1, contact)
                except HvError:
                    break
            await ctx.compute(1_000)

    child.vp(0).run(flood)
    host.root.resume_partition(child)
    host.run(ms * MS)
    return vmbus, child


def test_what_the_service_keeps_for_a_child_that_does_not_take_its_answers_is_bounded():
    """Its outbox stops at OUTBOX_LIMIT: its own messages are then not handled (they wait in a
    bounded inbox, then are dropped, logged), so no answer is ever lost or grows without end."""
    from partitions.vmbus_parent import INBOX_LIMIT, OUTBOX_LIMIT
    vmbus, child = _contact_flood(50, synic=False)
    c = vmbus.children[child.id]
    assert vmbus.traffic(child)["messages_in"] > 2 * (OUTBOX_LIMIT + INBOX_LIMIT)
    assert len(c.outbox) == OUTBOX_LIMIT and len(c.inbox) == INBOX_LIMIT
    assert c.dropped > 0 and any(e[2] == "messages dropped" for e in vmbus.log)


def test_the_service_log_keeps_its_last_entries_under_a_flood(monkeypatch):
    import partitions.vmbus_parent
    monkeypatch.setattr(partitions.vmbus_parent, "LOG_LIMIT", 300)   # 10,000 in use: a shorter flood here
    vmbus, child = _contact_flood(30, synic=True)
    assert vmbus.traffic(child)["messages_in"] > 1_000          # one log entry each, at least
    assert len(vmbus.log) == 300
    assert vmbus.log[-1][0] > 29 * MS                           # the newest are the ones kept
