"""Native guests' speed: guest instructions per CPU second under hvsim against the same code under
bare unicorn in the same run, and hypercalls per CPU second from a native kernel looping on a fast
`vmcall`.

The compute kernel is a register-only loop (no memory, no exits), assembled here with the system
gcc. Under hvsim it runs on a child's VP as the simulator runs every native guest
(partitions/native_guest/cpu.py: slices counted by unicorn itself, Python only at exits, simulated
time); the baseline is a bare unicorn with the same ELF's segments mapped, no hooks, run for the
same number of instructions. Both are timed in CPU seconds (time.process_time), alternating, best
of the rounds. The same loop is measured again with as many `wrmsr` sites after it (never run) as
a kernel built with the guest SDK has: the executor hooks each such address, and every hook costs
every instruction a bound check inside unicorn.

The hypercall kernel calls HvCallSignalEvent as a fast call (connection id in RDX, flag in R8) in a
loop, straight from `vmcall` into the core's entry point; the connection does not exist, so each
call decodes, checks the caller and fails with INVALID_CONNECTION_ID: the whole path but the
signal itself.
"""
from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from bench.timing import Figure, Goal

MS = 1_000_000
BASE = 0x100000
RESULT = 0x210000
GOAL = Goal(">=", 0.8, "ratio", "native guest code under hvsim: >= 80 % of bare unicorn's instructions per second")
US = 1_000
# (simulated us the compute kernel runs, rounds, simulated us of the hypercall loop). Under hvsim the
# loop runs at bare unicorn's speed, tens of millions of instructions per CPU second.
PLAN = {"tiny": (2_000, 1, 500), "default": (50_000, 2, 20_000), "long": (200_000, 3, 50_000)}

_COMPUTE = """
  mov $1, %rax
  xor %rbx, %rbx
1:
  add %rax, %rbx
  xor %rbx, %rcx
  rol $3, %rcx
  inc %rdx
  jmp 1b
"""
#: wrmsr/rdmsr/iretq sites of the C kernels built with the guest SDK (native/guest/build/*.elf).
SDK_SITES = 13
# The guest OS id and the hypercall page (as the SDK's start code does), then fast SignalEvent
# calls forever, the last status kept at RESULT.
_HYPERCALLS = f"""
  mov $0x40000000, %ecx
  mov $1, %eax
  xor %edx, %edx
  wrmsr
  mov $0x40000001, %ecx
  mov $0x300001, %eax
  wrmsr
1:
  mov $0x1005d, %ecx
  mov $0x7777, %edx
  xor %r8, %r8
  vmcall
  mov %rax, {RESULT}
  jmp 1b
"""


def _build(tmp: Path, name: str, body: str) -> Path:
    if shutil.which("gcc") is None or shutil.which("ld") is None:
        raise RuntimeError("the native bench assembles its kernels with the system gcc and ld")
    src, obj, elf = tmp / f"{name}.S", tmp / f"{name}.o", tmp / f"{name}.elf"
    src.write_text(".globl _start\n.text\n_start:\n" + body)
    subprocess.run(["gcc", "-c", str(src), "-o", str(obj)], check=True)
    subprocess.run(["ld", "-static", "-nostdlib", f"-Ttext={BASE:#x}", "-e", "_start", str(obj), "-o", str(elf)],
                   check=True)
    return elf


def _under_hvsim(elf: Path, span_us: int):
    """(instructions retired, CPU seconds, the CPU, the child) of the kernel on a child VP for span_us."""
    from hypervisor.host import Host
    from partitions.native_guest.cpu import native_guest
    from partitions.native_guest.loader import load_elf
    from partitions.worker import VmSpec, VmWorker
    host = Host(logical_processors=2, memory="256MiB", seed=7)
    child = VmWorker(host, VmSpec("bench", memory="4MiB")).build()
    cpus = []
    child.vp(0).run(native_guest(load_elf(elf), on_start=cpus.append))
    host.root.resume_partition(child)
    host.run(until=MS // 10)       # the emulator made and the first slice run: not timed
    if not cpus:
        raise RuntimeError("the native guest did not start")
    before = cpus[0].instructions
    start = time.process_time()
    host.run(until=MS // 10 + span_us * US)
    seconds = time.process_time() - start
    return cpus[0].instructions - before, seconds, cpus[0], child


def _bare(elf: Path, count: int, *, code_hook: bool = False) -> float:
    """CPU seconds bare unicorn takes to run `count` instructions of the kernel (with an empty
    Python code hook if asked: the floor of any executor that sees every instruction in Python)."""
    from unicorn import UC_ARCH_X86, UC_HOOK_CODE, UC_MODE_64, Uc
    from unicorn import x86_const as X

    from partitions.native_guest.loader import load_elf
    image = load_elf(elf)
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.mem_map(0, 4 << 20)
    for seg in image.segments:
        uc.mem_write(seg.gpa, seg.data)
    uc.reg_write(X.UC_X86_REG_RSP, (4 << 20) - 8)
    if code_hook:
        uc.hook_add(UC_HOOK_CODE, lambda *_: None)
    start = time.process_time()
    uc.emu_start(image.entry, 0xFFFF_FFFF_FFFF_FFFF, count=count)
    return time.process_time() - start


def run(size: str = "default") -> list[Figure]:
    span_us, rounds, call_us = PLAN[size]
    best_hv = best_bare = best_hooked = best_sites = 0.0
    with tempfile.TemporaryDirectory(prefix="hvsim-bench-native-") as tmp:
        tmp = Path(tmp)
        compute, calls = _build(tmp, "compute", _COMPUTE), _build(tmp, "hypercalls", _HYPERCALLS)
        sites = _build(tmp, "sites", _COMPUTE + "  wrmsr\n" * SDK_SITES)
        for _ in range(rounds):
            n, seconds, _cpu, _child = _under_hvsim(compute, span_us)
            best_hv = max(best_hv, n / seconds)
            best_bare = max(best_bare, n / _bare(compute, n))
            best_hooked = max(best_hooked, n / _bare(compute, n // 20, code_hook=True) / 20)
            n, seconds, _cpu, _child = _under_hvsim(sites, span_us)
            best_sites = max(best_sites, n / seconds)
        made, seconds, cpu, child = _under_hvsim(calls, call_us)
        made = cpu.exits["hypercall"]
        status = int.from_bytes(child.read(RESULT, 8), "little") & 0xFFFF
    bare_name = "bare unicorn: the same loop, no hooks"
    return [
        Figure(bare_name, best_bare / 1e6, "M instr/s", bare_name, 1.0),
        Figure("native guest under hvsim: a register-only loop", best_hv / 1e6, "M instr/s", bare_name,
               best_hv / best_bare, GOAL, note=f"CPU seconds, best of {rounds}; {span_us} us of simulated time each"),
        Figure(f"native guest under hvsim: the same loop, {SDK_SITES} wrmsr sites in memory", best_sites / 1e6,
               "M instr/s", bare_name, best_sites / best_bare,
               note="as many exit sites as an SDK kernel has; each costs every instruction a bound check"),
        Figure("bare unicorn with an empty Python code hook", best_hooked / 1e6, "M instr/s", bare_name,
               best_hooked / best_bare, note="the ceiling of an executor that sees every instruction in Python, "
               "as hvsim's did before it let unicorn count (0.5 % of bare unicorn)"),
        Figure("native guest: fast hypercalls (vmcall -> the core's entry point)", made / seconds / 1e3,
               "k calls/s", note=f"HvCallSignalEvent, fast; status {status:#06x}; {made} calls in {call_us} us "
               "of simulated time"),
    ]
