"""Running native kernels: instruction slices charged as the VP's CPU time, `hlt`, determinism,
and hostile kernels that crash only their own VM while the others run on."""
import pytest

from partitions.config import loads
from partitions.management import ManagedHost
from partitions.native_guest.cpu import NS_PER_INSTRUCTION, SLICE_INSTRUCTIONS
from tests.native.kernels import BESIDE_A_BURNER as CONFIG, HALT_FOREVER, HYPERCALL_SETUP, Booted, build

MS = 1_000_000


def test_a_spinning_kernel_runs_in_slices_and_uses_its_cpu(tmp_path):
    b = Booted(build(tmp_path, "spin", "1: incq 0x220000\n  jmp 1b\n")).run(10 * MS)
    info = b.child.vp(0).info()
    # Two instructions a loop, each NS_PER_INSTRUCTION: the counter is what the VP's run time bought.
    assert b.cpu.instructions >= 10 * MS // NS_PER_INSTRUCTION - SLICE_INSTRUCTIONS
    assert abs(b.u64(0x220000) - b.cpu.instructions // 2) <= 1
    assert info["run_time_ns"] >= 9 * MS


def test_a_halted_kernel_uses_no_cpu(tmp_path):
    b = Booted(build(tmp_path, "halt", HALT_FOREVER)).run(10 * MS)
    assert b.child.vp(0).info()["run_time_ns"] < 10_000
    assert b.cpu.instructions <= 3


def test_the_same_kernel_and_seed_give_the_same_trace_twice(tmp_path):
    from tests.native.test_hypercalls import TIMER
    elf = build(tmp_path, "timer", TIMER)
    digests = [Booted(elf, seed=5).run(5 * MS).host.trace_digest() for _ in range(2)]
    assert digests[0] == digests[1]



def _run(tmp_path, elf, duration=50 * MS):
    config = loads(CONFIG.format(kernel=elf.name), base_dir=tmp_path)
    m = ManagedHost(config, workdir=tmp_path / "work")
    m.run(duration)
    return m


@pytest.mark.parametrize("name, body, why", [
    ("wild-write", "  movq $1, 0x10000000\n", "write to a GPA outside its memory at rip 0x100000 (_start)"),
    ("wild-jump", "  mov $0x40000000, %rax\n  jmp *%rax\n", "jump to a GPA outside its memory"),
    ("triple-fault", "  ud2\n", "native guest took exception"),
    ("hypercall-page-store", HYPERCALL_SETUP + "  movq $0, 0x300000\n", "write to its hypercall page"),
])
def test_a_hostile_kernel_crashes_only_its_own_vm(tmp_path, name, body, why):
    m = _run(tmp_path, build(tmp_path, name, body + HALT_FOREVER))
    summary = m.summary()
    vms = {v["Name"]: v for v in summary["vms"]}
    assert vms["native"]["State"] == "Off"
    assert "guest crashed" in vms["native"]["Status"] and why in vms["native"]["Status"]
    assert vms["other"]["State"] == "Running"
    assert m.vms["other"].partition.vp(0).info()["run_time_ns"] > 10 * MS   # it ran on
    m.close()


def test_a_vmcall_storm_is_its_own_vms_cpu_time_only(tmp_path):
    storm = build(tmp_path, "storm", HYPERCALL_SETUP + "1: mov $0x46, %ecx\n  mov $0x201000, %r8\n  vmcall\n  jmp 1b\n")
    m = _run(tmp_path, storm, 100 * MS)
    vms = {v["Name"]: v for v in m.summary()["vms"]}
    assert vms["native"]["State"] == vms["other"]["State"] == "Running"
    other = m.vms["other"].partition.vp(0).info()["run_time_ns"]
    native = m.vms["native"].partition.vp(0).info()["run_time_ns"]
    assert other >= 40 * MS and native >= 40 * MS    # one LP, shared: neither starves the other
    m.close()


def test_a_native_vm_turns_off_starts_again_and_resets_from_its_entry(tmp_path):
    from tests.native.test_uart import _printer
    elf = build(tmp_path, "hello", _printer("up\n") + HALT_FOREVER)
    config = loads(f'[[vm]]\nname = "n"\nmemory = "4MiB"\nkernel = "{elf.name}"\n', base_dir=tmp_path)
    m = ManagedHost(config, workdir=tmp_path / "work")
    vm = m.vms["n"]
    m.run(10 * MS)
    assert vm.console == ["up"]
    vm.turn_off()
    assert m.host.introspect.partition_ids() == [m.host.root.id]   # its pages and view went with it
    vm.start()
    m.run(20 * MS)
    vm.quick_reset()
    m.run(30 * MS)
    assert vm.console == ["up", "up", "up"] and vm.state.value == "Running"
    m.close()
