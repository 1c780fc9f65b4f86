"""The executor of native guests: a VP whose guest is x86-64 machine code, run by unicorn over the
partition's own pages, with the hypervisor's interface (CPUID leaves, synthetic MSRs, `vmcall`,
interrupts through the guest's IDT) and port I/O and MMIO intercepts to emulated devices.

How it fits the simulator: a native guest is a guest coroutine like any other. Each step it runs
the emulator for at most SLICE_INSTRUCTIONS instructions (or until `hlt`, or until an instruction
that needs the scheduler), then spends the simulated time those instructions cost
(NS_PER_INSTRUCTION each, plus the exits it took) with `ctx.compute`, so the scheduler sees it as a
VP that computes; `hlt` becomes `ctx.halt()`. Every exit the emulator takes is decided here, in
one thread, from the guest's own state and simulated time: the same kernel and seed run the same
way twice.

Memory: the partition's RAM is mapped into the emulator through an own view of the core (the
child's pages, pinned, mapped contiguously by the core from the SPA memory file) with
uc.mem_map_ptr: no copy, and the emulator reaches exactly the GPA pages the core maps for the
partition. A range a device claims on the VM's intercept bus is mapped as MMIO (uc.mmio_map: each
load or store calls the bus, whose answer is what the guest loads); anything else (a GPA without a
page) is unmapped in the emulator, and an access there faults the guest's VP.

CPU mode: unicorn's x86-64 mode starts the CPU in 64-bit long mode with a flat address space
(guest-virtual = guest-physical, no page tables walked), the identity mapping the loader assumes.
The guest's own `lgdt`/`lidt` work; `iretq` from an interrupt handler is completed here (it pops
the frame this module pushed), so kernels need no GDT of their own.

Interrupts: a SINT's vector (its SINTx register) and an emulated device's (an interrupt line up on
the VM's intercept bus, IRQ n -> vector 0x20 + n, devices.py) are taken through the guest's IDT
when IF is set, the highest vector first. SINTs are AutoEOI (the guest SDK programs them so). A
device's line is level-triggered and its vector, once delivered, is in service until the guest
writes the x2APIC EOI MSR (0x80B): until then it is not delivered again, after it it is again if
the line is still up (the guest did not clear the cause). The EOI is an exit the hypervisor
handles (devices.EOI_NS, 1 us), the interrupt itself the core's interrupt cost (1 us).
"""
from __future__ import annotations

import ctypes
import re
import struct
from dataclasses import dataclass, field
from typing import Callable

from unicorn import (UC_ARCH_X86, UC_ERR_INSN_INVALID, UC_ERR_FETCH_UNMAPPED, UC_ERR_READ_UNMAPPED, UC_ERR_WRITE_UNMAPPED,
                     UC_ERR_WRITE_PROT, UC_HOOK_CODE, UC_HOOK_INSN, UC_HOOK_INTR, UC_MODE_64, UC_PROT_ALL,
                     UC_PROT_EXEC, UC_PROT_READ, Uc, UcError)
from unicorn import x86_const as X

from hypervisor import _binding
from hypervisor.abi import Register
from hypervisor.status import HvError
from partitions.native_guest.devices import DeviceFailed, IoBus, bus_of
from partitions.native_guest.loader import PAGE, ElfImage

#: Simulated cost of guest code: one instruction per simulated ns (a 1 GHz core retiring one
#: instruction a cycle), so a slice of SLICE_INSTRUCTIONS is 100 us of the VP's CPU time.
NS_PER_INSTRUCTION = 1
SLICE_INSTRUCTIONS = 100_000
SLICE_NS = SLICE_INSTRUCTIONS * NS_PER_INSTRUCTION  # a slice's whole cost, exits and hypercalls included
#: An emulated device's own time per access, on top of the exit to the parent (parent_exit_ns):
#: a 16550 register read or write.
UART_ACCESS_NS = 500
#: The exits' costs (cost-model.md): one handled in the hypervisor (CPUID), one that goes out to
#: the parent's VM worker (a port I/O intercept).
HYPERVISOR_EXIT_NS = 1000
PARENT_EXIT_NS = 4000
#: The hypervisor's CPUID vendor id (leaf 0x40000000 EBX:ECX:EDX) and interface id (0x40000001
#: EAX: "Hv#1", so guests written for the TLFS interface accept it).
VENDOR_ID = b"hvsimhvsimhv"
INTERFACE_ID = 0x31237648
MAX_LEAF = 0x40000006
UART_BASE = 0x3F8
#: The x2APIC EOI register's MSR: a write ends the highest device vector in service.
X2APIC_EOI_MSR = 0x80B

# Synthetic MSRs (hyperv-abi.md §SynIC and §hypercall) -> the register the core keeps for each.
MSRS: dict[int, int] = {0x40000000: Register.GUEST_OS_ID, 0x40000001: Register.HYPERCALL,
                        0x40000002: Register.VP_INDEX, 0x40000010: Register.VP_RUNTIME,
                        0x40000020: Register.TIME_REF_COUNT, 0x40000080: Register.SCONTROL,
                        0x40000081: Register.SVERSION, 0x40000082: Register.SIEFP, 0x40000083: Register.SIMP,
                        0x40000084: Register.EOM}
MSRS.update({0x40000090 + n: Register[f"SINT{n}"] for n in range(16)})
MSRS.update({0x400000B0 + 2 * n + k: Register[f"STIMER{n}_{kind}"] for n in range(4)
             for k, kind in enumerate(("CONFIG", "COUNT"))})

_IF = 1 << 9
_GPRS = [X.UC_X86_REG_RAX, X.UC_X86_REG_RCX, X.UC_X86_REG_RDX, X.UC_X86_REG_RBX, X.UC_X86_REG_RSP,
         X.UC_X86_REG_RBP, X.UC_X86_REG_RSI, X.UC_X86_REG_RDI, X.UC_X86_REG_R8, X.UC_X86_REG_R9,
         X.UC_X86_REG_R10, X.UC_X86_REG_R11, X.UC_X86_REG_R12, X.UC_X86_REG_R13, X.UC_X86_REG_R14,
         X.UC_X86_REG_R15, X.UC_X86_REG_RIP, X.UC_X86_REG_RFLAGS]
_GPR_NAMES = ["rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", "r8", "r9", "r10", "r11",
              "r12", "r13", "r14", "r15", "rip", "rflags"]
#: What a saved native CPU holds beside its general registers (NativeCpu.save_state).
STATE_FORMAT = 1
_SELECTORS = {"cs": X.UC_X86_REG_CS, "ss": X.UC_X86_REG_SS, "ds": X.UC_X86_REG_DS, "es": X.UC_X86_REG_ES,
              "fs": X.UC_X86_REG_FS, "gs": X.UC_X86_REG_GS}
_CONTROL = {"cr0": X.UC_X86_REG_CR0, "cr3": X.UC_X86_REG_CR3, "cr4": X.UC_X86_REG_CR4,
            "fs_base": X.UC_X86_REG_FS_BASE, "gs_base": X.UC_X86_REG_GS_BASE}
_EFER = 0xC0000080
_EXCEPTIONS = {0: "#DE divide error", 1: "#DB", 3: "#BP breakpoint", 4: "#OF", 5: "#BR", 6: "#UD invalid opcode",
               8: "#DF double fault", 13: "#GP general protection", 14: "#PF page fault"}


def _find_counter_offset() -> int:
    """Where unicorn keeps its instruction count of the current emu_start (uc_struct's
    emu_counter, beside emu_count): found once by running a scratch emulator for two counts. The
    executor reads it instead of counting in a Python hook on every instruction."""
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.mem_map(0, PAGE)
    uc.mem_write(0, b"\x90" * 64)
    found = None
    for count in (5, 11):
        uc.emu_start(0, PAGE, count=count)
        words = (ctypes.c_uint64 * 4096).from_address(uc._uch.value)
        hits = {i for i in range(4095) if words[i] == count + 1 and words[i + 1] == count}
        found = hits if found is None else found & hits
    if len(found or ()) != 1:
        raise RuntimeError("cannot find unicorn's instruction counter (a unicorn other than 2.1?)")
    return found.pop() * 8


_COUNTER_OFFSET: int | None = None
#: wrmsr, rdmsr, iretq: the instructions the executor takes over that unicorn has no exit for.
_SITE_BYTES = re.compile(rb"\x0f[\x30\x32]|\x48\xcf")


def _emu_counter(uc: Uc) -> ctypes.c_uint64:
    global _COUNTER_OFFSET
    if _COUNTER_OFFSET is None:
        _COUNTER_OFFSET = _find_counter_offset()
    return ctypes.c_uint64.from_address(uc._uch.value + _COUNTER_OFFSET)


def _hook_rdtsc(uc: Uc, callback) -> None:
    """An instruction hook on rdtsc (unicorn's C side has it; its Python binding lists only
    in/out/syscall/cpuid), with cpuid's signature: returning True skips the instruction."""
    from unicorn.unicorn_py3.arch import intel
    from unicorn.unicorn_py3.unicorn import uccallback

    @uccallback(uc, intel.HOOK_INSN_CPUID_CFUNC)
    def on_rdtsc(handle, key):
        return callback(uc, None)
    uc._Uc__do_hook_add(UC_HOOK_INSN, on_rdtsc, 1, 0, ctypes.c_int(X.UC_X86_INS_RDTSC))


class NativeFault(Exception):
    """The guest's VP took a fault it cannot go on from (an access outside its memory, a wild
    jump, an exception it has no handler for: a triple fault on hardware). Raised out of the
    guest coroutine, so the VP stops and its VM crashes like any guest that fails."""


@dataclass
class Uart16550:
    """The transmit side of a 16550 at UART_BASE: bytes written to THR make console lines; LSR
    always says the transmitter is empty. Other registers read 0 and ignore writes."""

    on_line: Callable[[str], None] | None = None
    partial: bytearray = field(default_factory=bytearray)
    lines: list[str] = field(default_factory=list)

    def write(self, offset: int, value: int) -> None:
        if offset != 0:
            return
        if value == 0x0A:
            line = self.partial.decode("latin-1")
            self.partial.clear()
            self.lines.append(line)
            if self.on_line is not None:
                self.on_line(line)
        elif value != 0x0D:
            self.partial.append(value & 0xFF)

    def read(self, offset: int) -> int:
        return 0x60 if offset == 5 else 0  # LSR: THR empty, transmitter empty

    def claims(self):
        """Its ports on an intercept bus (IoBus.attach): eight registers at UART_BASE."""
        yield ("uart", UART_BASE, 8, lambda off, _size: self.read(off),
               lambda off, _size, value: self.write(off, value), UART_ACCESS_NS)

    # Its state is the unfinished line: the model keeps no register contents (the registers it
    # answers are constant: LSR always ready, the others 0), so there is nothing else to carry.
    def save_state(self) -> dict:
        return {"partial": bytes(self.partial)}

    @staticmethod
    def check_state(state) -> str | None:
        """What is wrong with a save_state() record, or None."""
        if not (isinstance(state, dict) and set(state) == {"partial"} and isinstance(state["partial"], bytes)):
            return "expected a map with its unfinished line as bytes ('partial')"
        return None

    def load_state(self, state: dict) -> None:
        problem = self.check_state(state)
        if problem is not None:
            raise ValueError(f"16550 state: {problem}")
        self.partial[:] = state["partial"]


class NativeCpu:
    """One VP's x86-64 CPU: the emulator, its mapping of the partition's memory, and the exits."""

    _next_view = 0x4E470000  # own-view ids of native CPUs ("NG" + a counter), apart from the kernel's

    def __init__(self, vp, image: ElfImage, *, uart: Uart16550 | None = None, stack_top: int | None = None,
                 parent_exit_ns: int = PARENT_EXIT_NS, hypercall_ns: int = HYPERVISOR_EXIT_NS,
                 bus: IoBus | None = None):
        self.hypercall_ns = hypercall_ns
        self.vp, self.partition, self.image = vp, vp.partition, image
        self.host = self.partition.host
        self.uart = uart if uart is not None else Uart16550()
        # Port I/O goes to the VM's intercept bus (devices.py), shared with its Python guests'
        # intercept calls; the 16550 is on it unless the VM put another device at its ports.
        self.bus = bus if bus is not None else bus_of(self.partition, exit_ns=parent_exit_ns)
        if not self.bus.claimed(UART_BASE):   # the VM worker attaches the VM's own (vm.py)
            self.bus.attach(self.uart)
        self.parent_exit_ns = parent_exit_ns
        self.instructions = 0       # retired, in all
        self.exits = {"hypercall": 0, "msr": 0, "cpuid": 0, "io": 0, "interrupt": 0}
        self.uc = Uc(UC_ARCH_X86, UC_MODE_64)
        self._map_memory()
        self._halted = False
        self._extra_ns = 0          # exit time of the current slice
        self._fault: str | None = None
        self._failed: DeviceFailed | None = None  # a device that failed in this slice's access (raised after it)
        self._now0 = 0              # simulated time at the slice's start (rdtsc)
        self._slice_start = 0
        self._calls = 0             # hypercalls of the current slice
        self.pending: list[int] = []  # vectors raised and not yet taken (IF was clear)
        self.in_service: list[int] = []  # device vectors taken and not yet ended by an EOI
        self._irq_seen = self.bus.irq_seq  # the bus's line rises this CPU has looked at
        self.ctx = None             # the guest context running it (native_guest): its raised SINTs are state
        self._counter = _emu_counter(self.uc)  # unicorn's own count of the current emu_start
        self._run_base = 0          # self.instructions when the current emu_start began
        self._run_count = 0         # its count
        self._sites: dict[int, int] = {}  # address -> hook of each wrmsr/rdmsr/iretq the guest may run
        self._mmio_mapped: set[int] = set()  # bases of the bus's MMIO claims mapped in the emulator
        self.uc.hook_add(UC_HOOK_INSN, self._on_cpuid, None, 1, 0, X.UC_X86_INS_CPUID)
        _hook_rdtsc(self.uc, self._on_rdtsc)
        self.uc.hook_add(UC_HOOK_INSN, self._on_in, None, 1, 0, X.UC_X86_INS_IN)
        self.uc.hook_add(UC_HOOK_INSN, self._on_out, None, 1, 0, X.UC_X86_INS_OUT)
        self.uc.hook_add(UC_HOOK_INTR, self._on_intr)
        self._scan()
        self.uc.reg_write(X.UC_X86_REG_RIP, image.entry)
        top = stack_top if stack_top is not None else self._ram_end
        self.uc.reg_write(X.UC_X86_REG_RSP, top - 8)
        self.uc.reg_write(X.UC_X86_REG_RFLAGS, 0x2)  # interrupts off until the guest's sti

    # ---- memory ----------------------------------------------------------------------------------
    def _map_memory(self) -> None:
        """Map the partition's RAM (every GPA page it reaches) through one own view of the core."""
        pages = sorted(self.host.introspect.reach(self.partition))
        if not pages:
            raise NativeFault(f"partition {self.partition.id} has no memory to run a native guest in")
        NativeCpu._next_view += 1
        self._view_id = NativeCpu._next_view
        h = self.host._h
        status = _binding.hv_view_create(h, self.partition.id, self._view_id, pages)
        if status != 0:
            raise NativeFault(f"the core refused a view of partition {self.partition.id}'s memory "
                              f"(status {status:#x})")
        self._view = _binding.hv_view_ptr(h, self.partition.id, self._view_id)
        base = self._base = ctypes.addressof(ctypes.c_char.from_buffer(self._view))
        self._view_index = {gpa: i for i, gpa in enumerate(pages)}
        self._overlay: int | None = None  # the GPA page the hypercall page covers in the emulator
        # Consecutive GPA pages are consecutive in the view: one emulator region per run.
        start = prev = pages[0]
        offset = 0
        for gpa in pages[1:] + [None]:
            if gpa is not None and gpa == prev + 1:
                prev = gpa
                continue
            n = prev - start + 1
            self.uc.mem_map_ptr(start * PAGE, n * PAGE, UC_PROT_ALL, base + offset * PAGE)
            offset += n
            if gpa is not None:
                start = prev = gpa
        self._ram_end = (pages[-1] + 1) * PAGE if pages[-1] - pages[0] + 1 == len(pages) else (start + n) * PAGE

    def sync_overlay(self) -> None:
        """Show the core's hypercall page where the partition has it enabled (overlay.c): the
        emulator maps the core's image there, readable and executable, never writable (a store
        there faults, as in the core); the partition's own page comes back when it moves away."""
        gpa = _binding.hv_partition_overlay_gpa(self.host._h, self.partition.id)
        page = None if gpa is None else gpa // PAGE
        if page == self._overlay:
            return
        if self._overlay is not None:
            self.uc.mem_unmap(self._overlay * PAGE, PAGE)
            self.uc.mem_map_ptr(self._overlay * PAGE, PAGE, UC_PROT_ALL,
                                self._base + self._view_index[self._overlay] * PAGE)
            self._overlay = None
        if page is not None and page in self._view_index:
            image = self.partition.read(page * PAGE, PAGE)
            self.uc.mem_unmap(page * PAGE, PAGE)
            self.uc.mem_map(page * PAGE, PAGE, UC_PROT_READ | UC_PROT_EXEC)
            self.uc.mem_protect(page * PAGE, PAGE, UC_PROT_ALL)
            self.uc.mem_write(page * PAGE, image)
            self.uc.mem_protect(page * PAGE, PAGE, UC_PROT_READ | UC_PROT_EXEC)
            self._overlay = page

    # ---- registers -------------------------------------------------------------------------------
    def registers(self) -> dict[str, int]:
        return {n: self.uc.reg_read(r) for n, r in zip(_GPR_NAMES, _GPRS)}

    # ---- the CPU's state as data (save, restore, migration) ---------------------------------------
    def save_state(self) -> dict:
        """Everything that is this VP's and not in memory or the core, as plain data (msgpack):
        registers, the halted flag, interrupts raised and not yet taken, counters, the UART's
        unfinished line and where the hypercall page overlay stands. Taken between slices (the
        VP is suspended at an await), so nothing of a slice is in flight: the slice-local fields
        (_now0, _extra_ns, _calls) are reset by the next run_slice and are not state."""
        uc = self.uc
        _, gdt_base, gdt_limit, _ = uc.reg_read(X.UC_X86_REG_GDTR)
        _, idt_base, idt_limit, _ = uc.reg_read(X.UC_X86_REG_IDTR)
        return {"format": STATE_FORMAT, "registers": self.registers(),
                "segments": {n: uc.reg_read(r) for n, r in _SELECTORS.items()},
                "control": {n: uc.reg_read(r) for n, r in _CONTROL.items()} | {"efer": uc.msr_read(_EFER)},
                "gdtr": [gdt_base, gdt_limit], "idtr": [idt_base, idt_limit],
                "halted": self._halted, "pending": list(self.pending), "in_service": list(self.in_service),
                "raised_sints": self.ctx.raised_sints if self.ctx is not None else 0,
                "instructions": self.instructions, "exits": dict(self.exits),
                "overlay": self._overlay, "uart": {"partial": bytes(self.uart.partial)}}

    @classmethod
    def from_state(cls, vp, state: dict, image: ElfImage | None = None, **kwargs) -> "NativeCpu":
        """A CPU for `vp` that goes on from `state` (save_state's record, which check_state
        accepts): the partition's memory already holds the kernel and its data, so nothing is
        loaded; `image` only names functions in fault messages."""
        problem = check_state(state)
        if problem is not None:
            raise ValueError(f"native CPU state: {problem}")
        regs = state["registers"]
        if image is None:
            image = ElfImage(path="(restored native CPU)", entry=regs["rip"], segments=())
        cpu = cls(vp, image, **kwargs)
        uc = cpu.uc
        control = state["control"]
        for name, reg in _CONTROL.items():
            if name not in ("fs_base", "gs_base") and uc.reg_read(reg) != control[name]:
                uc.reg_write(reg, control[name])
        if uc.msr_read(_EFER) != control["efer"]:
            uc.msr_write(_EFER, control["efer"])
        uc.reg_write(X.UC_X86_REG_GDTR, (0, *state["gdtr"], 0))
        uc.reg_write(X.UC_X86_REG_IDTR, (0, *state["idtr"], 0))
        # A selector write loads its descriptor from the GDT (in 64-bit mode too), so only the
        # ones the guest changed are written, after the GDTR; the FS/GS bases after them (a
        # selector load sets the base from its descriptor).
        for name, reg in _SELECTORS.items():
            if uc.reg_read(reg) != state["segments"][name]:
                uc.reg_write(reg, state["segments"][name])
        for name in ("fs_base", "gs_base"):
            uc.reg_write(_CONTROL[name], control[name])
        for reg, name in zip(_GPRS, _GPR_NAMES):
            uc.reg_write(reg, regs[name])
        cpu._halted = state["halted"]
        cpu.pending[:] = state["pending"]
        cpu.in_service[:] = state.get("in_service", [])
        cpu.instructions = state["instructions"]
        cpu.exits.update(state["exits"])
        cpu.uart.partial[:] = state["uart"]["partial"]
        # The overlay follows the core's HV_X64_MSR_HYPERCALL (a VP register the image restored
        # already), not the record: the record's overlay is the same page unless it was altered.
        cpu.sync_overlay()
        return cpu

    def _where(self, rip: int | None = None) -> str:
        rip = self.uc.reg_read(X.UC_X86_REG_RIP) if rip is None else rip
        sym = self.image.symbol_at(rip)
        return f"rip {rip:#x}" + (f" ({sym})" if sym else "")

    # ---- running ---------------------------------------------------------------------------------
    def run_slice(self, now: int, budget: int = SLICE_INSTRUCTIONS) -> tuple[int, bool]:
        """Run up to `budget` instructions; returns (simulated ns they cost, halted). Raises
        NativeFault if the guest faulted."""
        self._halted, self._extra_ns, self._fault, self._calls = False, 0, None, 0
        self._now0, self._slice_start = now, self.instructions
        self.sync_overlay()
        self.sync_mmio()
        uc = self.uc
        while True:
            left = min(budget - (self.instructions - self._slice_start),
                       (SLICE_NS - self._spent()) // NS_PER_INSTRUCTION)
            if left <= 0:
                break
            rip = uc.reg_read(X.UC_X86_REG_RIP)
            self._run_base, self._run_count, self._hook_stopped = self.instructions, left, False
            try:
                uc.emu_start(rip, 0xFFFF_FFFF_FFFF_FFFF, count=left)
            except UcError as exc:
                self._retire()
                # The emulator refuses `vmcall` itself (it has no VMX): it stops on it with an
                # invalid-instruction error, the instruction counted. That is the hypercall. A
                # vmcall is charged as two instructions, as it always has been (the simulated
                # times and trace digests stay those of earlier versions).
                if self._fault is None and exc.errno == UC_ERR_INSN_INVALID and self._is_vmcall(rip := uc.reg_read(X.UC_X86_REG_RIP)):
                    self.instructions += 1
                    uc.reg_write(X.UC_X86_REG_RIP, rip + 3)
                    if self._hypercall(uc):
                        continue
                    break
                if self._fault is None:
                    self._fault = self._describe(exc)
                break
            # The emulator stops by itself before its count only on `hlt` (it has run it: RIP is
            # past it); every other early stop is a hook's.
            if (self._counter.value <= left and not self._hook_stopped and self._fault is None
                    and self._byte_before(uc.reg_read(X.UC_X86_REG_RIP)) == 0xF4):
                self._halted = True
            self._retire()
            break
        if self._failed is not None:
            # An emulated device's bug, not the guest's fault: raised as the device's failure.
            failed, self._failed = self._failed, None
            raise failed
        if self._fault is not None:
            raise NativeFault(self._fault)
        ran = self.instructions - self._slice_start
        return ran * NS_PER_INSTRUCTION + self._extra_ns, self._halted

    def _retire(self) -> None:
        """Bring self.instructions up to date inside or after an emu_start: unicorn counts each
        instruction as it starts it (the one a hook runs in, or a fault stops, included) and,
        when the count runs out, the one it stopped before as well."""
        self.instructions = self._run_base + min(self._counter.value, self._run_count)

    def _scan(self) -> None:
        """Put a code hook on every `wrmsr`, `rdmsr` and `iretq` in the partition's memory as the
        CPU starts (the kernel is loaded by then): the emulator gives no exit for them (it keeps
        MSRs itself and would run iretq on the guest's missing GDT). A hook costs every
        instruction a bound check, so there is one at each address where the bytes are, no
        range; where the bytes are not an instruction's start the hook never runs."""
        pages = sorted(self._view_index, key=self._view_index.get)
        memory = (ctypes.c_char * (len(pages) * PAGE)).from_address(self._base)
        for found in _SITE_BYTES.finditer(memory):
            gpa = pages[found.start() // PAGE] * PAGE + found.start() % PAGE
            if gpa not in self._sites:
                self._sites[gpa] = self.uc.hook_add(UC_HOOK_CODE, self._on_code, None, gpa, gpa)

    def _byte_before(self, rip: int) -> int | None:
        try:
            return bytes(self.uc.mem_read(rip - 1, 1))[0]
        except UcError:
            return None

    def _is_vmcall(self, rip: int) -> bool:
        try:
            return bytes(self.uc.mem_read(rip, 3)) == b"\x0f\x01\xc1"
        except UcError:
            return False

    def _describe(self, exc: UcError) -> str:
        kinds = {UC_ERR_READ_UNMAPPED: "read from a GPA outside its memory",
                 UC_ERR_WRITE_UNMAPPED: "write to a GPA outside its memory",
                 UC_ERR_FETCH_UNMAPPED: "jump to a GPA outside its memory",
                 UC_ERR_WRITE_PROT: "write to its hypercall page"}
        if exc.errno == UC_ERR_INSN_INVALID:
            return f"native guest took exception #UD invalid opcode at {self._where()} (unhandled: triple fault)"
        what = kinds.get(exc.errno, f"CPU fault ({exc})")
        return f"native guest {what} at {self._where()}"

    def _stop(self, fault: str) -> None:
        self._fault = fault
        self._hook_stopped = True
        self.uc.emu_stop()

    def _on_intr(self, uc, intno, _ud) -> None:
        # A CPU exception: hvsim's native guests take none (no exception vectors are delivered),
        # so each is fatal, as a triple fault is on hardware.
        name = _EXCEPTIONS.get(intno, f"vector {intno}")
        self._stop(f"native guest took exception {name} at {self._where()} (unhandled: triple fault)")

    def _on_code(self, uc, address, size, _ud) -> None:
        # Only at the addresses _scan found: the instruction there may be another one (the bytes
        # were inside an instruction or data) and then runs as it is.
        if size != 2:
            return
        self._retire()
        b = bytes(uc.mem_read(address, size))
        if b == b"\x0f\x30" or b == b"\x0f\x32":          # wrmsr, rdmsr
            self._msr(uc, address, write=b == b"\x0f\x30")
        elif b == b"\x48\xcf":                            # iretq
            self._iretq(uc)

    def _on_cpuid(self, uc, _ud) -> bool:
        self._retire()
        return self._cpuid(uc)      # True: the hook answered, the emulator skips the instruction

    def _on_rdtsc(self, uc, _ud) -> bool:
        # Simulated time, 1 GHz, the rdtsc itself counted; never the emulator's host-derived TSC.
        self._retire()
        tsc = self._now0 + (self.instructions - self._slice_start) * NS_PER_INSTRUCTION + self._extra_ns
        uc.reg_write(X.UC_X86_REG_RAX, tsc & 0xFFFFFFFF)
        uc.reg_write(X.UC_X86_REG_RDX, tsc >> 32 & 0xFFFFFFFF)
        return True

    def _spent(self) -> int:
        """Simulated ns the current slice has cost so far: its instructions, its exits, and its
        hypercalls (which the core charges the VP itself, hypercall_ns each)."""
        return ((self.instructions - self._slice_start) * NS_PER_INSTRUCTION + self._extra_ns
                + self._calls * self.hypercall_ns)

    def _hypercall(self, uc) -> bool:
        """`vmcall`: RCX control, RDX/R8 input/output GPAs (or values for a fast call) into the
        core's one hypercall entry point; RAX gets the result. False when the slice is spent: a
        guest that does nothing but hypercalls still yields to the scheduler every SLICE_NS."""
        self.exits["hypercall"] += 1
        self._calls += 1
        control = uc.reg_read(X.UC_X86_REG_RCX)
        rdx, r8 = uc.reg_read(X.UC_X86_REG_RDX), uc.reg_read(X.UC_X86_REG_R8)
        raw = _binding.hv_hypercall(self.host._h, self.partition.id, self.vp.index, control, rdx, r8)
        uc.reg_write(X.UC_X86_REG_RAX, raw)
        if self._spent() >= SLICE_NS:
            return False
        return True

    def _cpuid(self, uc) -> bool:
        leaf = uc.reg_read(X.UC_X86_REG_RAX) & 0xFFFFFFFF
        if not 0x40000000 <= leaf <= 0x400000FF:
            return False  # the emulator's own CPU answers
        self.exits["cpuid"] += 1
        eax = ebx = ecx = edx = 0
        if leaf == 0x40000000:
            eax = MAX_LEAF
            ebx, ecx, edx = struct.unpack("<III", VENDOR_ID)
        elif leaf == 0x40000001:
            eax = INTERFACE_ID
        elif leaf == 0x40000003:
            mask = self.partition.privileges
            eax, ebx = mask & 0xFFFFFFFF, mask >> 32 & 0xFFFFFFFF
        elif leaf == 0x40000005:
            eax = len(self.partition.vps()) if hasattr(self.partition, "vps") else 1
        for reg, value in ((X.UC_X86_REG_RAX, eax), (X.UC_X86_REG_RBX, ebx), (X.UC_X86_REG_RCX, ecx),
                           (X.UC_X86_REG_RDX, edx)):
            uc.reg_write(reg, value)
        self._extra_ns += HYPERVISOR_EXIT_NS
        return True

    def _msr(self, uc, address: int, *, write: bool) -> None:
        msr = uc.reg_read(X.UC_X86_REG_RCX) & 0xFFFFFFFF
        if msr == X2APIC_EOI_MSR and write:
            self.eoi()
            uc.reg_write(X.UC_X86_REG_RIP, address + 2)
            return
        reg = MSRS.get(msr)
        if reg is None:
            if 0x40000000 <= msr <= 0x4000FFFF:
                self._stop(f"native guest {'wrote' if write else 'read'} unknown synthetic MSR {msr:#x} "
                           f"at {self._where(address)} (#GP, unhandled: triple fault)")
                return
            # An architectural MSR: the emulator's own CPU keeps it.
            if write:
                uc.msr_write(msr, (uc.reg_read(X.UC_X86_REG_RDX) & 0xFFFFFFFF) << 32
                             | uc.reg_read(X.UC_X86_REG_RAX) & 0xFFFFFFFF)
            else:
                value = uc.msr_read(msr)
                uc.reg_write(X.UC_X86_REG_RAX, value & 0xFFFFFFFF)
                uc.reg_write(X.UC_X86_REG_RDX, value >> 32)
            uc.reg_write(X.UC_X86_REG_RIP, address + 2)
            return
        self.exits["msr"] += 1
        try:
            if write:
                value = (uc.reg_read(X.UC_X86_REG_RDX) & 0xFFFFFFFF) << 32 | uc.reg_read(X.UC_X86_REG_RAX) & 0xFFFFFFFF
                self.vp.set_registers({reg: value})
                if reg == Register.HYPERCALL:
                    self.sync_overlay()
            else:
                value = self.vp.get_registers([reg])[0]
                uc.reg_write(X.UC_X86_REG_RAX, value & 0xFFFFFFFF)
                uc.reg_write(X.UC_X86_REG_RDX, value >> 32 & 0xFFFFFFFF)
        except HvError as exc:
            self._stop(f"native guest {'wrote' if write else 'read'} MSR {msr:#x} ({reg.name}) at "
                       f"{self._where(address)}: the hypervisor refused it ({exc.status.name}: #GP, unhandled: "
                       "triple fault)")
            return
        uc.reg_write(X.UC_X86_REG_RIP, address + 2)

    def sync_mmio(self) -> None:
        """Map each MMIO claim of the bus the emulator does not map yet (a device may be attached
        after the CPU starts). Claims are never removed from a bus, so nothing is unmapped."""
        for claim in self.bus.mmio_claims():
            if claim.base not in self._mmio_mapped:
                self.uc.mmio_map(claim.base, claim.count, self._on_mmio_read, claim.base,
                                 self._on_mmio_write, claim.base)
                self._mmio_mapped.add(claim.base)

    # ---- MMIO intercepts -------------------------------------------------------------------------
    def _device_failed(self, exc: DeviceFailed) -> None:
        # Raised out of run_slice once the emulator has stopped: a hook that raised would leave
        # unicorn a return value it cannot convert (an `in` or an MMIO load).
        self._failed = exc
        self._hook_stopped = True
        self.uc.emu_stop()

    def _on_mmio_read(self, uc, offset, size, base) -> int:
        self._retire()
        self.exits["mmio"] = self.exits.get("mmio", 0) + 1
        try:
            value, ns = self.bus.mmio_read(base + offset, size)
        except DeviceFailed as exc:
            self._device_failed(exc)
            return 0
        self._extra_ns += ns
        if self._spent() >= SLICE_NS:
            self._hook_stopped = True
            uc.emu_stop()
        return value

    def _on_mmio_write(self, uc, offset, size, value, base) -> None:
        self._retire()
        self.exits["mmio"] = self.exits.get("mmio", 0) + 1
        try:
            self._extra_ns += self.bus.mmio_write(base + offset, size, value)
        except DeviceFailed as exc:
            self._device_failed(exc)
            return
        self._irq_news(uc)
        if self._spent() >= SLICE_NS:
            self._hook_stopped = True
            uc.emu_stop()

    # ---- port I/O intercepts ---------------------------------------------------------------------
    def _on_out(self, uc, port, size, value, _ud) -> None:
        self._retire()
        self.exits["io"] += 1
        try:
            self._extra_ns += self.bus.port_out(port, size, value)
        except DeviceFailed as exc:
            self._device_failed(exc)
            return
        self._irq_news(uc)
        if self._spent() >= SLICE_NS:
            self._hook_stopped = True
            uc.emu_stop()

    def _on_in(self, uc, port, size, _ud) -> int:
        self._retire()
        self.exits["io"] += 1
        try:
            value, ns = self.bus.port_in(port, size)   # no device: the bus floats high
        except DeviceFailed as exc:
            self._device_failed(exc)
            return (1 << 8 * size) - 1
        self._extra_ns += ns
        self._irq_news(uc)
        if self._spent() >= SLICE_NS:
            self._hook_stopped = True
            uc.emu_stop()
        return value

    # ---- interrupts ------------------------------------------------------------------------------
    def interrupts_enabled(self) -> bool:
        return bool(self.uc.reg_read(X.UC_X86_REG_RFLAGS) & _IF)

    def device_vectors(self) -> list[int]:
        """The vectors of the device lines that are up and not in service (deliverable)."""
        return [v for v in map(self.bus.vector, self.bus.asserted_lines()) if v not in self.in_service]

    def next_interrupt(self) -> int | None:
        """Take the highest vector waiting (a SINT's or a device's), or None; a device's goes in
        service. Only when IF is set."""
        devices = self.device_vectors()
        if not (self.pending or devices) or not self.interrupts_enabled():
            return None
        vector = max(self.pending + devices)
        if vector in self.pending:
            self.pending.remove(vector)
        else:
            self.in_service.append(vector)
        return vector

    def eoi(self) -> None:
        """The guest's APIC EOI: the highest device vector in service ends (none: nothing ends,
        the exit is still taken). Costs the hypervisor's exit, counted on the bus."""
        self.exits["eoi"] = self.exits.get("eoi", 0) + 1
        line = None
        if self.in_service:
            vector = max(self.in_service)
            self.in_service.remove(vector)
            line = self.bus.line_of(vector)
        self._extra_ns += self.bus.eoi(line)

    def _irq_news(self, uc) -> None:
        # A device line went up during this access: end the slice so it is taken before the next
        # instruction, as an interrupt is (if IF lets it).
        if self.bus.irq_seq != self._irq_seen:
            self._irq_seen = self.bus.irq_seq
            if uc.reg_read(X.UC_X86_REG_RFLAGS) & _IF:
                self._hook_stopped = True
                uc.emu_stop()

    def deliver(self, vector: int) -> None:
        """Take interrupt `vector` through the guest's IDT (the guest has IF set): push the 64-bit
        interrupt frame (SS, RSP, RFLAGS, CS, RIP) on a 16-byte aligned stack, clear IF, jump to the
        gate's handler. A gate that is not present, or an IDT that does not hold it, faults."""
        uc = self.uc
        _, base, limit, _ = uc.reg_read(X.UC_X86_REG_IDTR)
        if vector * 16 + 15 > limit:
            raise NativeFault(f"native guest got interrupt vector {vector} beyond its IDT (limit {limit:#x}) "
                              f"at {self._where()}")
        try:
            gate = bytes(uc.mem_read(base + vector * 16, 16))
        except UcError:
            raise NativeFault(f"native guest's IDT at {base:#x} is outside its memory") from None
        lo, sel, _ist, attr, mid, hi = struct.unpack("<HHBBHI", gate[:12])
        if not attr & 0x80:
            raise NativeFault(f"native guest's IDT gate {vector} is not present (at {self._where()})")
        handler = lo | mid << 16 | hi << 32
        rsp = uc.reg_read(X.UC_X86_REG_RSP)
        flags = uc.reg_read(X.UC_X86_REG_RFLAGS)
        frame = struct.pack("<QQQQQ", uc.reg_read(X.UC_X86_REG_RIP), uc.reg_read(X.UC_X86_REG_CS), flags, rsp,
                            uc.reg_read(X.UC_X86_REG_SS))
        new_rsp = (rsp & ~0xF) - len(frame)
        try:
            uc.mem_write(new_rsp, frame)
        except UcError:
            raise NativeFault(f"native guest's stack {rsp:#x} is outside its memory taking vector {vector}") from None
        uc.reg_write(X.UC_X86_REG_RSP, new_rsp)
        if attr & 0xF == 0xE:  # an interrupt gate (a trap gate, 0xF, leaves IF as it was)
            uc.reg_write(X.UC_X86_REG_RFLAGS, flags & ~_IF)
        uc.reg_write(X.UC_X86_REG_RIP, handler)
        self.exits["interrupt"] += 1
        self._halted = False

    def _iretq(self, uc) -> None:
        """Pop the frame deliver() pushed (RIP, CS, RFLAGS, RSP, SS) and go back; the slice ends so
        an interrupt that waited for IF is taken at once."""
        rsp = uc.reg_read(X.UC_X86_REG_RSP)
        try:
            rip, _cs, flags, old_rsp, _ss = struct.unpack("<QQQQQ", bytes(uc.mem_read(rsp, 40)))
        except UcError:
            self._stop(f"native guest's iretq stack {rsp:#x} is outside its memory at {self._where()}")
            return
        uc.reg_write(X.UC_X86_REG_RFLAGS, flags | 0x2)
        uc.reg_write(X.UC_X86_REG_RSP, old_rsp)
        uc.reg_write(X.UC_X86_REG_RIP, rip)
        self._hook_stopped = True
        uc.emu_stop()


def check_state(state) -> str | None:
    """What is wrong with a native CPU record (NativeCpu.save_state's shape), or None: checked
    before a restore changes anything."""
    def u64(x) -> bool:
        return isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 1 << 64

    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        return f"expected a map with format {STATE_FORMAT}"
    for key, names in (("registers", _GPR_NAMES), ("segments", list(_SELECTORS)),
                       ("control", [*_CONTROL, "efer"])):
        part = state.get(key)
        if not isinstance(part, dict) or set(part) != set(names) or not all(map(u64, part.values())):
            return f"{key}: expected {', '.join(names)} as unsigned 64-bit integers"
    if any(v >= 1 << 16 for v in state["segments"].values()):
        return "segments: a selector is 16 bits"
    for key in ("gdtr", "idtr"):
        t = state.get(key)
        if not (isinstance(t, list) and len(t) == 2 and u64(t[0]) and u64(t[1]) and t[1] < 1 << 16):
            return f"{key}: expected [base, 16-bit limit]"
    if not isinstance(state.get("halted"), bool):
        return "halted: expected a boolean"
    if not (isinstance(state.get("pending"), list) and all(isinstance(v, int) and 0 <= v < 256
                                                           for v in state["pending"])):
        return "pending: expected a list of vectors (0-255)"
    # (a record from before device interrupts has no "in_service": nothing in service)
    in_service = state.get("in_service", [])
    if not (isinstance(in_service, list) and len(set(in_service)) == len(in_service)
            and all(isinstance(v, int) and not isinstance(v, bool) and IoBus.line_of(v) is not None
                    for v in in_service)):
        return "in_service: expected distinct device vectors (0x20-0x2F)"
    if not (isinstance(state.get("raised_sints"), int) and 0 <= state["raised_sints"] < 1 << 16):
        return "raised_sints: expected a 16-bit mask"
    if not u64(state.get("instructions")):
        return "instructions: expected a count"
    exits = state.get("exits")
    if not (isinstance(exits, dict) and all(isinstance(k, str) and u64(v) for k, v in exits.items())):
        return "exits: expected a map of counts"
    if not (state.get("overlay") is None or u64(state["overlay"])):
        return "overlay: expected a GPA page or None"
    uart = state.get("uart")
    if not (isinstance(uart, dict) and isinstance(uart.get("partial"), bytes)):
        return "uart: expected a map with its unfinished line as bytes"
    return None


def sint_vector(vp, sint: int) -> int | None:
    """The vector SINT `sint` of `vp` raises (its SINTx register), None while it is masked."""
    value = vp.get_registers([Register[f"SINT{sint}"]])[0]
    if value >> 16 & 1:
        return None
    return value & 0xFF


def native_guest(image: ElfImage, *, uart: Uart16550 | None = None, write: bool = True,
                 on_start: Callable[[NativeCpu], None] | None = None, parent_exit_ns: int = PARENT_EXIT_NS,
                 bus: IoBus | None = None, state: dict | None = None):
    """The guest function (for vp.run) that runs `image` on a VP: loads it (unless `write` is
    False: it is in memory already), then runs slices, halts on `hlt`, and takes the SINTs raised
    meanwhile through the guest's IDT. With `state` (a NativeCpu.save_state() record, checked by
    check_state) it loads nothing: memory holds the kernel, and the CPU goes on from the record
    (`image` then only names functions in fault messages; None is fine)."""
    from partitions.native_guest.loader import write_image

    async def main(ctx) -> None:
        if write and state is None:
            write_image(ctx.partition, image)
        if state is None:
            cpu = NativeCpu(ctx.vp, image, uart=uart, parent_exit_ns=parent_exit_ns, bus=bus)
        else:
            cpu = NativeCpu.from_state(ctx.vp, state, image, uart=uart, parent_exit_ns=parent_exit_ns, bus=bus)
            ctx.raised_sints |= state["raised_sints"]
        cpu.ctx = ctx
        if on_start is not None:
            on_start(cpu)
        pending = cpu.pending
        if state is not None and state["halted"]:   # it was saved in `hlt`: it waits there again
            if not ctx.raised_sints and not ((pending or cpu.device_vectors()) and cpu.interrupts_enabled()):
                await ctx.halt()
        # No cleanup when the coroutine ends: it may be closed by the garbage collector after the
        # emulator (or the host) is gone. The core's view ends with the partition's teardown, and
        # the emulator maps nothing of its own but the hypercall page.
        while True:
            raised, ctx.raised_sints = ctx.raised_sints, 0
            for sint in range(16):
                if raised >> sint & 1:
                    vector = sint_vector(ctx.vp, sint)
                    if vector is not None and vector not in pending:
                        pending.append(vector)
            vector = cpu.next_interrupt()   # the highest vector first, as the APIC does
            if vector is not None:
                cpu.deliver(vector)
            ns, halted = cpu.run_slice(ctx.now)
            if ns:
                await ctx.compute(ns)
            if halted and not ctx.raised_sints and not ((pending or cpu.device_vectors())
                                                        and cpu.interrupts_enabled()):
                await ctx.halt()

    main.native_image = image
    return main
