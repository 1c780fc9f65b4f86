"""The hypercall ABI in Python: call codes, privilege bits, register names, partition properties,
GPA map flags and the 64-bit control word. Every value is read from the compiled core, which has
them from native/hv_abi.h (the TLFS numbers).
"""
from __future__ import annotations

import enum
from dataclasses import dataclass

from hypervisor import _binding

PAGE_SIZE = _binding.constant("HV_PAGE_SIZE")
MAX_REP_COUNT = _binding.constant("HV_MAX_REP_COUNT")
PARTITION_ID_SELF = _binding.constant("HV_PARTITION_ID_SELF")
PARTITION_ID_INVALID = _binding.constant("HV_PARTITION_ID_INVALID")
VP_INDEX_SELF = _binding.constant("HV_VP_INDEX_SELF")
OWNER_FREE = _binding.constant("HV_OWNER_FREE")
OWNER_HV = _binding.constant("HV_OWNER_HV")
MAX_VPS = _binding.constant("HV_MAX_VPS")
MAX_GPA_PAGES = _binding.constant("HV_MAX_GPA_PAGES")
PARTITION_INIT_PAGES = _binding.constant("HV_PARTITION_INIT_PAGES")
VP_PAGES = _binding.constant("HV_VP_PAGES")


def _enum(cls_name: str, prefix: str, names: list[str], base=enum.IntEnum):
    return base(cls_name, [(n, _binding.constant(prefix + n)) for n in names], module=__name__)


CallCode = _enum("CallCode", "HVCALL_", [
    "CREATE_PARTITION", "INITIALIZE_PARTITION", "FINALIZE_PARTITION", "DELETE_PARTITION",
    "GET_PARTITION_PROPERTY", "SET_PARTITION_PROPERTY", "GET_PARTITION_ID",
    "GET_NEXT_CHILD_PARTITION", "DEPOSIT_MEMORY", "WITHDRAW_MEMORY", "GET_MEMORY_BALANCE",
    "MAP_GPA_PAGES", "UNMAP_GPA_PAGES", "CREATE_VP", "DELETE_VP", "GET_VP_REGISTERS",
    "SET_VP_REGISTERS", "CREATE_PORT", "CONNECT_PORT", "DELETE_PORT", "DISCONNECT_PORT",
    "POST_MESSAGE", "SIGNAL_EVENT", "MODIFY_SPARSE_GPA_PAGE_HOST_VISIBILITY",
    "GET_GPA_PAGES_ACCESS_STATES"])

#: HV_PARTITION_PRIVILEGE_MASK bit numbers.
Privilege = _enum("Privilege", "HV_PRIV_", [
    "ACCESS_VP_RUNTIME_REG", "ACCESS_PARTITION_REF_COUNTER", "ACCESS_SYNIC_REGS",
    "ACCESS_SYNTHETIC_TIMER_REGS", "ACCESS_INTR_CTRL_REGS", "ACCESS_HYPERCALL_MSRS",
    "ACCESS_VP_INDEX", "ACCESS_RESET_REG", "ACCESS_STATS_REG", "ACCESS_PARTITION_REF_TSC",
    "ACCESS_GUEST_IDLE_REG", "ACCESS_FREQUENCY_REGS", "CREATE_PARTITIONS", "ACCESS_PARTITION_ID",
    "ACCESS_MEMORY_POOL", "POST_MESSAGES", "SIGNAL_EVENTS", "CREATE_PORT", "CONNECT_PORT",
    "ACCESS_STATS", "DEBUGGING", "CPU_MANAGEMENT", "ACCESS_VSM", "ACCESS_VP_REGISTERS",
    "START_VIRTUAL_PROCESSOR"])

PRIVILEGES_GUEST_DEFAULT = _binding.constant("HV_PRIV_GUEST_DEFAULT")
PRIVILEGES_ROOT_ONLY = _binding.constant("HV_PRIV_ROOT_ONLY")
PRIVILEGES_ROOT = _binding.constant("HV_PRIV_ROOT")

PartitionProperty = _enum("PartitionProperty", "HV_PARTITION_PROPERTY_", [
    "PRIVILEGE_FLAGS", "SUSPEND", "CPU_RESERVE", "CPU_CAP", "CPU_WEIGHT", "GPA_PAGE_ACCESS_TRACKING"])

MapFlags = _enum("MapFlags", "HV_MAP_GPA_", ["READABLE", "WRITABLE", "EXECUTABLE"], base=enum.IntFlag)
MAP_RWX = MapFlags.READABLE | MapFlags.WRITABLE | MapFlags.EXECUTABLE

#: What ModifySparseGpaPageHostVisibility makes of a child's page for its parent (2 is invalid).
HostVisibility = _enum("HostVisibility", "HV_HOST_VISIBILITY_", ["NONE", "READ_ONLY", "READ_WRITE"])

_GP = ["RAX", "RCX", "RDX", "RBX", "RSP", "RBP", "RSI", "RDI",
       "R8", "R9", "R10", "R11", "R12", "R13", "R14", "R15"]
_rax = _binding.constant("HV_X64_REGISTER_RAX")
_regs = [(n, _rax + i) for i, n in enumerate(_GP)]
_regs += [(n, _binding.constant("HV_X64_REGISTER_" + n)) for n in ("RIP", "RFLAGS", "CR0", "CR3", "CR4")]
_regs += [(n, _binding.constant("HV_REGISTER_" + n)) for n in
          ("VP_RUNTIME", "HYPERCALL", "GUEST_OS_ID", "VP_INDEX", "TIME_REF_COUNT", "SCONTROL", "SVERSION",
           "SIEFP", "SIMP", "EOM")]
_regs += [(f"SINT{i}", _binding.constant("HV_REGISTER_SINT0") + i) for i in range(16)]
_stimer0 = _binding.constant("HV_REGISTER_STIMER0_CONFIG")
_regs += [(f"STIMER{n}_{kind}", _stimer0 + 2 * n + k) for n in range(4) for k, kind in enumerate(("CONFIG", "COUNT"))]
#: HV_REGISTER_NAME values of the registers hvsim implements.
Register = enum.IntEnum("Register", _regs, module=__name__)


class PartitionState(enum.IntEnum):
    CREATED = 1
    INITIALIZED = 2
    FINALIZED = 3


@dataclass(frozen=True)
class Control:
    """The hypercall input value (TLFS layout), decoded."""

    code: int
    fast: bool = False
    varhead_qwords: int = 0
    rep_count: int = 0
    rep_start: int = 0
    nested: bool = False
    reserved: int = 0  # the RsvdZ bits 30:27, 47:44 and 63:60, in place

    def encode(self) -> int:
        return ((self.code & 0xFFFF) | (int(self.fast) << 16) | ((self.varhead_qwords & 0x3FF) << 17)
                | (int(self.nested) << 31) | ((self.rep_count & 0xFFF) << 32)
                | ((self.rep_start & 0xFFF) << 48) | (self.reserved & RESERVED_CONTROL_BITS))

    @classmethod
    def decode(cls, value: int) -> Control:
        return cls(code=value & 0xFFFF, fast=bool(value >> 16 & 1), varhead_qwords=value >> 17 & 0x3FF,
                   nested=bool(value >> 31 & 1), rep_count=value >> 32 & 0xFFF,
                   rep_start=value >> 48 & 0xFFF, reserved=value & RESERVED_CONTROL_BITS)


RESERVED_CONTROL_BITS = 0x78000000 | 0x0000F000_00000000 | 0xF0000000_00000000


def control(code: int, *, fast: bool = False, rep_count: int = 0, rep_start: int = 0) -> int:
    """Encode a control word."""
    return Control(code, fast=fast, rep_count=rep_count, rep_start=rep_start).encode()
