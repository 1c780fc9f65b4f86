"""The management layer samples every VM's CPU time in one crossing (hv_partitions_run_time):
each sample, and so Get-VM's CPUUsage, equals the per-partition figure (VirtualMachine.run_time_ns),
for running, idle, reset, paused and stopped VMs."""
from hypervisor import _binding
from partitions.config import loads
from partitions.management import ManagedHost

MIXED = """
[host]
logical_processors = 2
memory = "1GiB"

[[vm]]
name = "burner"
memory = "64MiB"
workload = { kind = "cpu-burn", duty = 0.7, period = "30ms" }

[[vm]]
name = "half"
memory = "64MiB"
workload = { kind = "cpu-burn", duty = 0.5, period = "7ms" }

[[vm]]
name = "idle"
memory = "64MiB"
workload = { kind = "idle" }
"""


def test_every_sample_is_the_per_partition_figure(tmp_path):
    m = ManagedHost(loads(MIXED, base_dir=tmp_path), workdir=tmp_path)
    checked = []

    def check(m):
        for vm in m.vms.values():
            assert m._cpu_sample(vm, -1) == (m.host.now, vm.run_time_ns()), vm.name
        checked.append(m.host.now)

    m.run("600ms", step="33ms", on_progress=check)  # steps that end inside a burn period
    m.vms["half"].quick_reset()                      # CPU time of an earlier incarnation carries over
    m.vms["idle"].turn_off()                         # no partition: its figure stays
    m.vms["burner"].pause()
    m.run("1300ms", step="33ms", on_progress=check)
    assert len(checked) > 30
    assert m.vms["half"]._run_time_before > 0
    rows = {r["Name"]: r["CPUUsage(%)"] for r in m.get_vm()}
    for vm in m.vms.values():
        (t0, c0), (t1, c1) = m._cpu_sample(vm, 0), m._cpu_sample(vm, -1)
        assert (t1, c1) == (m.host.now, vm.run_time_ns())
        assert rows[vm.name] == round(100.0 * (c1 - c0) / (t1 - t0) / m.host.logical_processors, 1)
    assert rows["half"] > 0 and rows["idle"] == 0.0


def test_the_batch_equals_partition_info_and_names_unknown_ids(tmp_path):
    m = ManagedHost(loads(MIXED, base_dir=tmp_path), workdir=tmp_path)
    m.start()
    m.host.run(777_777_777)  # not a sampling step: the burners' VPs may be on an LP right now
    ids = [m.host.root.id] + [vm.partition.id for vm in m.vms.values()]
    asked = ids + [0, 12345, max(ids) + 1]
    got = _binding.hv_partitions_run_time(m.host._h, asked)
    assert got == [m.host.introspect.run_time_ns(i) for i in ids] + [None, None, None]
    assert all(t > 0 for t in got[1:3])  # the burners ran
    assert _binding.hv_partitions_run_time(m.host._h, []) == []


def test_a_sample_does_no_python_work_per_vm_while_no_vm_changes_state(tmp_path, monkeypatch):
    """An idle host of many VMs samples every 100 ms: between state changes a sample is one
    crossing, and looks at no VM from Python (the per-VM figures are worked out when shown)."""
    from partitions.vm import VirtualMachine
    m = ManagedHost(loads(MIXED, base_dir=tmp_path), workdir=tmp_path)
    m.run("300ms")
    looked = []
    real = VirtualMachine.partition

    def partition(vm):
        looked.append(vm.name)
        return real.fget(vm)

    monkeypatch.setattr(VirtualMachine, "partition", property(partition))
    m._sample_cpu()  # the sample at 300 ms was taken: nothing to do
    m.host.run(m.host.now + 50_000_000)
    m._sample_cpu()
    assert looked == []
    m.vms["idle"].turn_off()   # a state change: the next sample reads every VM's partition anew
    looked.clear()
    m.host.run(m.host.now + 50_000_000)
    m._sample_cpu()
    assert sorted(set(looked)) == sorted(m.vms)
    looked.clear()
    m.host.run(m.host.now + 50_000_000)
    m._sample_cpu()
    assert looked == []
    monkeypatch.undo()
    assert m._cpu_sample(m.vms["idle"], -1) == (m.host.now, m.vms["idle"].run_time_ns())
