"""The hypervisor interface as a native kernel sees it: CPUID leaves, synthetic MSRs, `vmcall`
through the hypercall page into the core's one entry point, and SynIC timer interrupts taken
through the guest's IDT."""
import pytest

from hypervisor.abi import Register
from hypervisor.guest import GuestError
from partitions.native_guest.cpu import VENDOR_ID
from tests.native.kernels import HALT_FOREVER, HYPERCALL_SETUP, Booted, build

MS = 1_000_000
OUT, RESULT = 0x201000, 0x202000


def test_get_partition_id_through_the_hypercall_page_returns_the_callers_id(tmp_path):
    elf = build(tmp_path, "pid", HYPERCALL_SETUP + f'''
  mov $0x46, %ecx            # HvCallGetPartitionId, a memory call: output at R8
  xor %edx, %edx
  mov ${OUT}, %r8
  call 0x300000              # the hypercall page: vmcall; ret
  mov %rax, {RESULT}
''' + HALT_FOREVER)
    b = Booted(elf).run(1 * MS)
    assert b.u64(RESULT) == 0                       # HV_STATUS_SUCCESS, no reps
    assert b.u64(OUT) == b.child.id != b.host.root.id
    assert b.cpu.exits["hypercall"] == 1
    assert b.child.read(0x300000, 4) == b"\x0f\x01\xc1\xc3"


def test_a_call_the_child_has_no_privilege_for_gets_access_denied(tmp_path):
    elf = build(tmp_path, "deny", HYPERCALL_SETUP + f'''
  mov $0x40, %ecx            # HvCallCreatePartition: the parent's privilege
  mov $0x203000, %rdx
  mov ${OUT}, %r8
  call 0x300000
  mov %rax, {RESULT}
''' + HALT_FOREVER)
    b = Booted(elf).run(1 * MS)
    assert b.u64(RESULT) & 0xFFFF == 0x0006        # HV_STATUS_ACCESS_DENIED
    assert b.host.introspect.partition_ids() == sorted(b.host.introspect.partition_ids())  # nothing made
    assert len(b.host.introspect.partition_ids()) == 2


def test_a_fast_call_passes_its_input_in_registers(tmp_path):
    # HvCallGetPartitionId is no fast call: the core refuses the fast bit with INVALID_HYPERCALL_INPUT,
    # which says the fast path decoded RCX as the caller put it there.
    elf = build(tmp_path, "fast", HYPERCALL_SETUP + f'''
  mov $0x10046, %ecx
  xor %edx, %edx
  xor %r8, %r8
  vmcall
  mov %rax, {RESULT}
''' + HALT_FOREVER)
    b = Booted(elf).run(1 * MS)
    assert b.u64(RESULT) & 0xFFFF in (0x0002, 0x0003, 0x0005)  # INVALID_HYPERCALL_CODE/INPUT, INVALID_PARAMETER


def test_cpuid_shows_the_hypervisor_leaves(tmp_path):
    elf = build(tmp_path, "cpuid", f'''
  mov $0x40000000, %eax
  cpuid
  mov %eax, {RESULT}
  mov %ebx, {RESULT + 8}
  mov %ecx, {RESULT + 12}
  mov %edx, {RESULT + 16}
  mov $0x40000001, %eax
  cpuid
  mov %eax, {RESULT + 20}
  mov $0x40000003, %eax
  cpuid
  mov %eax, {RESULT + 24}
  mov %ebx, {RESULT + 28}
''' + HALT_FOREVER)
    b = Booted(elf).run(1 * MS)
    assert b.u64(RESULT) & 0xFFFFFFFF == 0x40000006
    assert b.child.read(RESULT + 8, 12) == VENDOR_ID
    assert b.child.read(RESULT + 20, 4) == b"Hv#1"
    assert int.from_bytes(b.child.read(RESULT + 24, 8), "little") == b.child.privileges


def test_msrs_reach_the_vps_registers(tmp_path):
    elf = build(tmp_path, "msr", f'''
  mov $0x40000000, %ecx
  mov $0x1234, %eax
  mov $0x8000, %edx
  wrmsr
  mov $0x40000002, %ecx      # VP_INDEX
  rdmsr
  mov %eax, {RESULT}
  mov %edx, {RESULT + 4}
''' + HALT_FOREVER)
    b = Booted(elf).run(1 * MS)
    assert b.child.vp(0).get_registers([Register.GUEST_OS_ID]) == [0x8000_0000_1234]
    assert b.u64(RESULT) == 0


def test_enabling_the_hypercall_page_without_a_guest_os_id_faults_the_vp(tmp_path):
    elf = build(tmp_path, "noos", '''
  mov $0x40000001, %ecx
  mov $0x300001, %eax
  xor %edx, %edx
  wrmsr
''' + HALT_FOREVER)
    with pytest.raises(GuestError, match=r"MSR 0x40000001 \(HYPERCALL\).*refused it \(INVALID_PARAMETER"):
        Booted(elf).run(1 * MS)


TIMER = r'''
  lea idt(%rip), %rax
  lea handler(%rip), %rbx
  mov %bx, 0x400(%rax)          # gate 0x40 (16 bytes each)
  movw $0x08, 0x402(%rax)
  movb $0x8e, 0x405(%rax)       # present, interrupt gate
  shr $16, %rbx
  mov %bx, 0x406(%rax)
  shr $16, %rbx
  mov %ebx, 0x408(%rax)
  lidt idtr(%rip)
  mov $0x40000000, %ecx; mov $1, %eax; xor %edx, %edx; wrmsr
  mov $0x40000083, %ecx; mov $0x210001, %eax; wrmsr                # SIMP at GPA 0x210000
  mov $0x40000080, %ecx; mov $1, %eax; wrmsr                       # SCONTROL: enable
  mov $0x40000093, %ecx; mov $0x40, %eax; wrmsr                    # SINT3: vector 0x40
  mov $0x400000B1, %ecx; mov $1000, %eax; wrmsr                    # STIMER0_COUNT: 100 us
  mov $0x400000B0, %ecx; mov $0x30003, %eax; wrmsr                 # STIMER0_CONFIG: on, periodic, SINT 3
  sti
1: hlt
  jmp 1b
handler:
  push %rax; push %rcx; push %rdx
  incq 0x220000
  movl $0, 0x210000 + 3*256     # free SINT 3's message slot
  mov $0x40000084, %ecx; xor %eax, %eax; xor %edx, %edx; wrmsr     # EOM
  pop %rdx; pop %rcx; pop %rax
  iretq
.data
.balign 16
idtr: .word 4095
      .quad idt
.balign 4096
idt: .fill 4096, 1, 0
'''


def test_a_periodic_synic_timer_interrupts_through_the_idt(tmp_path):
    b = Booted(build(tmp_path, "timer", TIMER)).run(10 * MS)
    ticks = b.u64(0x220000)
    assert b.cpu.exits["interrupt"] == ticks
    assert 90 <= ticks <= 100          # a 100 us period over 10 ms of simulated time
    info = b.child.vp(0).info()
    assert info["run_time_ns"] < 2 * MS  # halted between ticks, not spinning


def test_interrupts_wait_while_the_guest_has_if_clear(tmp_path):
    b = Booted(build(tmp_path, "cli", TIMER.replace("  sti\n", "  cli\n"))).run(2 * MS)
    assert b.u64(0x220000) == 0 and b.cpu.exits["interrupt"] == 0
