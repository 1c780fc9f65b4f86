"""The native executor's speed by construction: guest code runs inside the emulator with no Python
call per instruction; Python sees only the exits."""
from partitions.native_guest.cpu import NativeCpu
from tests.native.kernels import HYPERCALL_SETUP, Booted, build

MS = 1_000_000


def test_a_loop_without_exits_runs_without_a_python_call_per_instruction(tmp_path, monkeypatch):
    calls = []
    original = NativeCpu._on_code
    monkeypatch.setattr(NativeCpu, "_on_code", lambda self, *args: calls.append(args) or original(self, *args))
    b = Booted(build(tmp_path, "spin", "1: incq 0x220000\n  jmp 1b\n")).run(2 * MS)
    assert b.cpu.instructions > 1_000_000
    assert calls == []


def test_msr_sites_are_hooked_one_by_one_and_run_on_the_hypervisors_registers(tmp_path, monkeypatch):
    # The setup's two wrmsr reach the core (the hypercall page appears); the loop between them
    # costs no Python calls: only the two sites' hooks ran.
    calls = []
    original = NativeCpu._on_code
    monkeypatch.setattr(NativeCpu, "_on_code", lambda self, *args: calls.append(args[1]) or original(self, *args))
    b = Booted(build(tmp_path, "setup", HYPERCALL_SETUP + "1: incq 0x220000\n  jmp 1b\n")).run(2 * MS)
    assert b.cpu.exits["msr"] == 2
    assert len(calls) == 2
    # Seven setup instructions, then two a loop: the count stays exact across the hooked sites.
    assert abs(b.u64(0x220000) - (b.cpu.instructions - 7) // 2) <= 1
