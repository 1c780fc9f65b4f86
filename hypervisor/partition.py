"""Partitions and virtual processors as Python objects: the raw hypercall instruction on a VP and
typed wrappers for every hypercall the core implements.

Every wrapper encodes its TLFS input block, issues it through `VirtualProcessor.hypercall` (the
same entry point a guest uses; there is no side door) and decodes the output. Rep calls are split
so that each invocation's input fits in one page, and continued from the reps the hypervisor
reports as completed, the way Linux's `hv_do_rep_hypercall` does.
"""
from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Iterable, Mapping, NamedTuple, Sequence

from hypervisor import _binding
from hypervisor.abi import (PAGE_SIZE, MAX_REP_COUNT, PARTITION_ID_INVALID, PARTITION_ID_SELF,
                            MAP_RWX, CallCode, PartitionProperty, PartitionState, control)
from hypervisor.status import _BY_CODE as _STATUS_BY_CODE
from hypervisor.status import HvStatus, error_for, status_of
from hypervisor.synic import PAYLOAD_MAX, PortType

if TYPE_CHECKING:
    from hypervisor.host import Host


class HypercallResult(NamedTuple):
    """What the hypercall instruction returned (a named tuple: immutable, and cheap to make on
    the hypercall path)."""

    status: HvStatus | int
    reps_completed: int
    output: bytes

    @property
    def ok(self) -> bool:
        return self.status == HvStatus.SUCCESS

    def check(self, call: str | None = None) -> HypercallResult:
        """Return self, or raise the HvError subclass for the status."""
        if not self.ok:
            raise error_for(int(self.status), call)
        return self


class OverlayFault(MemoryError):
    """A store to a GPA page that a hypervisor-provided overlay page (the hypercall page) covers:
    the overlay is read and execute only, and the store changed nothing."""

    def __init__(self, partition_id: int, gpa: int, length: int, overlay_gpa: int):
        super().__init__(f"partition {partition_id}: the store to GPA {gpa:#x}+{length} faults: GPA "
                         f"{overlay_gpa:#x} is the hypercall page, a hypervisor overlay (read and execute only)")
        self.gpa, self.length, self.overlay_gpa = gpa, length, overlay_gpa


# VirtualProcessor.hypercall's hot path, bound once (each lookup costs as much as a small call).
_CTL_FAST = 1 << 16
_U64 = 0xFFFFFFFFFFFFFFFF
_hypercall_frame, _hypercall_frame_at = _binding.hv_hypercall_frame, _binding.hv_hypercall_frame_at
_FRAME_OUT_SHIFT, _FRAME_OUT_UNREAD, _FRAME_SAME = (_binding.FRAME_OUT_SHIFT, _binding.FRAME_OUT_UNREAD,
                                                     _binding.FRAME_SAME)
_status_get = _STATUS_BY_CODE.get
_SIGNAL_EVENT_FAST = control(CallCode.SIGNAL_EVENT, fast=True)
_new_tuple = tuple.__new__


#: Statuses of the bulk page calls that name a page (the one refused).
_PAGE_REFUSALS = (HvStatus.INVALID_PARAMETER, HvStatus.OBJECT_IN_USE)


def _round8(n: int) -> int:
    return (n + 7) & ~7


class VirtualProcessor:
    """One VP of a partition. Its hypercall input and output blocks live in two pages of the
    partition's own memory (by default GPA pages 2i and 2i+1 for a child's VP i; the root's VPs
    get pages of their own at boot)."""

    def __init__(self, partition: Partition, index: int, input_gpa: int, output_gpa: int):
        self.partition = partition
        self.index = index
        self._frame = self._out = None  # struct hv_call_frame and its output buffer, made at the first call
        # The frame's last result and its value with HV_FRAME_SAME set: what the core returns
        # when the next call's result is equal to it.
        self._last = self._same = None
        self.input_gpa = input_gpa
        self.output_gpa = output_gpa

    def __repr__(self) -> str:
        return f"<VP {self.index} of partition {self.partition.id}>"

    # The VP's input and output pages; the frame keeps a copy (taken modulo 2**64) for the hot path.
    @property
    def input_gpa(self) -> int:
        return self._in_gpa

    @input_gpa.setter
    def input_gpa(self, gpa: int) -> None:
        self._in_gpa = gpa
        self._sync_frame()

    @property
    def output_gpa(self) -> int:
        return self._out_gpa

    @output_gpa.setter
    def output_gpa(self, gpa: int) -> None:
        self._out_gpa = gpa
        self._sync_frame()

    def _sync_frame(self) -> None:
        if self._frame is not None and hasattr(self, "_out_gpa"):
            self._frame.in_gpa, self._frame.out_gpa = self._in_gpa & _U64, self._out_gpa & _U64

    def set_hypercall_pages(self, input_gpa: int, output_gpa: int) -> None:
        self.input_gpa, self.output_gpa = input_gpa, output_gpa

    def hypercall(self, control_word: int, input: bytes = b"", *, input_gpa: int | None = None,
                  output_gpa: int | None = None) -> HypercallResult:
        """The raw TLFS hypercall: `control_word` as the 64-bit input value, `input` the input
        block (written to this VP's input page, or passed in registers for a fast call)."""
        if not control_word & _CTL_FAST:
            # The hot path: one crossing issues the call and copies its output block into this
            # VP's frame (allocated at the first call); the result is the one object made per
            # call. Arguments cffi refuses (negative, wider than 64 bits) take the slow path.
            if input:
                self.store_input(input, self.input_gpa if input_gpa is None else input_gpa)
            try:
                if input_gpa is None and output_gpa is None:
                    raw = _hypercall_frame(self._frame, control_word)
                else:
                    raw = _hypercall_frame_at(self._frame, control_word,
                                              self._in_gpa if input_gpa is None else input_gpa,
                                              self._out_gpa if output_gpa is None else output_gpa)
            except (TypeError, OverflowError):
                return self._hypercall_slow(control_word, input_gpa, output_gpa)
            if raw == self._same:
                return self._last  # the core found status, reps and output as last time: an equal value
            n = raw >> _FRAME_OUT_SHIFT & 0xFFFF
            code = raw & 0xFFFF
            result = _new_tuple(HypercallResult, (_status_get(code, code), raw >> 32 & 0xFFF,
                                                  (self._out[0:n] if n != _FRAME_OUT_UNREAD else
                                                   self._long_output(control_word, output_gpa)) if n else b""))
            self._last, self._same = result, raw | _FRAME_SAME
            return result
        # A fast call: the input block travels in registers and there is no output page.
        data = bytes(input).ljust(16, b"\0")
        rdx, r8 = struct.unpack_from("<QQ", data)
        raw = _binding.hv_hypercall(self.partition.host._h, self.partition.id, self.index, control_word, rdx, r8,
                                    data[16:112] if len(data) > 16 else None)
        return HypercallResult(status_of(raw & 0xFFFF), raw >> 32 & 0xFFF, b"")

    def _hypercall_slow(self, control_word: int, input_gpa: int | None, output_gpa: int | None) -> HypercallResult:
        """The hot path's first call (which makes the frame) and calls with arguments cffi
        refuses as they are (taken modulo 2**64, as the instruction would see them)."""
        if self._frame is None:
            self._frame, self._out = _binding.hv_call_frame(self.partition.host._h, self.partition.id, self.index)
            self._sync_frame()
        in_gpa = self.input_gpa if input_gpa is None else input_gpa
        out_gpa = self.output_gpa if output_gpa is None else output_gpa
        raw = _hypercall_frame_at(self._frame, control_word & _U64, in_gpa & _U64, out_gpa & _U64)
        raw &= ~_FRAME_SAME
        n = raw >> _FRAME_OUT_SHIFT & 0xFFFF
        output = (self._out[0:n] if n != _FRAME_OUT_UNREAD else self._long_output(control_word, out_gpa)) if n else b""
        self._last = HypercallResult(status_of(raw & 0xFFFF), raw >> 32 & 0xFFF, output)
        self._same = raw | _FRAME_SAME
        return self._last

    def _long_output(self, control_word: int, output_gpa: int | None) -> bytes:
        """An output block longer than the frame's buffer, read from the output page(s)."""
        out_gpa = self.output_gpa if output_gpa is None else output_gpa
        shape = _binding.hv_call_shape(control_word & 0xFFFF)
        out_len = _round8(shape["out_size"] + (control_word >> 32 & 0xFFF) * shape["out_elem_size"])
        return _binding.hv_partition_read(self.partition.host._h, self.partition.id, out_gpa & _U64, out_len) or b""

    def store_input(self, data: bytes, gpa: int | None = None) -> bool:
        """Store an input block the way a guest does, with ordinary writes to its own memory
        (this VP's input page unless `gpa` is given). If the writes fault, the hypercall that
        follows still goes ahead and the hypervisor reports what it finds there."""
        gpa = self.input_gpa if gpa is None else gpa
        return _binding.hv_partition_write(self.partition.host._h, self.partition.id, gpa, bytes(data))

    # ---- what runs on it ------------------------------------------------------------------------
    def run(self, guest) -> None:
        """Run `guest` (an async function taking a GuestContext) on this VP. It starts when the
        partition runs (at once for the root)."""
        self.partition.host._guests.attach(self, guest)

    def run_builtin(self, kind: str, *, work: int | str = "20us") -> None:
        """Run a guest that lives entirely in C: "idle" (halts, only takes interrupts), "burn"
        (computes forever) or "tick" (an idle kernel: on each interrupt computes `work`,
        acknowledges its SynIC messages and event flags, and halts again)."""
        from hypervisor import guest as g
        from hypervisor.quantities import parse_duration
        kinds = {"idle": g.GUEST_NONE, "burn": g.GUEST_BURN, "tick": g.GUEST_TICK}
        if kind not in kinds:
            raise ValueError(f"built-in guest: expected one of {', '.join(kinds)}, got {kind!r}")
        host = self.partition.host
        host._guests.detach(self.partition.id, self.index)
        _binding.hv_vp_set_guest(host._h, self.partition.id, self.index, kinds[kind], parse_duration(work))

    def info(self) -> dict:
        """Scheduling state: exec, lp, run_time_ns, work_ns, debt_ns, window_used_ns, ..."""
        return _binding.hv_vp_info(self.partition.host._h, self.partition.id, self.index)

    # Registers of this VP, through the partition's own Get/SetVpRegisters.
    def get_registers(self, names: Sequence[int]) -> list[int]:
        return self.partition.get_vp_registers(self.partition, self.index, names, via=self)

    def set_registers(self, values: Mapping[int, int]) -> None:
        self.partition.set_vp_registers(self.partition, self.index, values, via=self)


class Partition:
    """A partition of a Host. The methods are hypercalls this partition issues (from VP 0 unless
    `via=` names another of its VPs); most of them act on a child named as `target`."""

    def __init__(self, host: Host, partition_id: int):
        self.host = host
        self.id = partition_id
        self._vps: dict[int, VirtualProcessor] = {}

    def __repr__(self) -> str:
        return f"<Partition {self.id}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Partition) and other.host is self.host and other.id == self.id

    def __hash__(self) -> int:
        return hash((id(self.host), self.id))

    @property
    def is_root(self) -> bool:
        return self.id == self.host.root.id

    # ---- VPs -------------------------------------------------------------------------------
    def vp(self, index: int = 0) -> VirtualProcessor:
        """VP `index` of this partition (it must have been created, or be one of the root's)."""
        if index not in self._vps:
            info = self.host.introspect.partition_info(self)
            if not info or not (info["vp_mask"] >> index) & 1:
                raise LookupError(f"partition {self.id} has no VP {index}")
            self._vps[index] = VirtualProcessor(self, index, 2 * index * PAGE_SIZE,
                                                (2 * index + 1) * PAGE_SIZE)
        return self._vps[index]

    @property
    def vps(self) -> list[VirtualProcessor]:
        mask = self.host.introspect.partition_info(self)["vp_mask"]
        return [self.vp(i) for i in range(64) if mask >> i & 1]

    # ---- plumbing --------------------------------------------------------------------------
    def _call(self, code: int, header: bytes, *, via: VirtualProcessor | None, name: str) -> bytes:
        vp = via or self.vp(0)
        return vp.hypercall(control(code), header).check(name).output

    def _rep_call(self, code: int, header: bytes, elements: Sequence[bytes] | int, *, elem_size: int,
                  out_elem_size: int = 0, via: VirtualProcessor | None, name: str) -> bytes:
        """Issue a rep call over `elements` (packed byte strings, or a bare count for calls
        without input elements), splitting so each block fits in a page and continuing on
        partial completion. Returns the concatenated output elements."""
        vp = via or self.vp(0)
        total = elements if isinstance(elements, int) else len(elements)
        per_call = MAX_REP_COUNT
        if elem_size:
            per_call = min(per_call, (PAGE_SIZE - len(header)) // elem_size)
        if out_elem_size:
            per_call = min(per_call, PAGE_SIZE // out_elem_size)
        out = bytearray()
        done = 0
        while done < total:
            batch = min(per_call, total - done)
            block = header if isinstance(elements, int) else header + b"".join(elements[done:done + batch])
            start = 0
            while start < batch:
                r = vp.hypercall(control(code, rep_count=batch, rep_start=start), block)
                if not r.ok:
                    raise error_for(int(r.status), name, f"after {done + r.reps_completed} of {total} elements")
                if out_elem_size:
                    out += r.output[start * out_elem_size:r.reps_completed * out_elem_size]
                if r.reps_completed <= start:
                    raise error_for(int(HvStatus.OPERATION_FAILED), name, "no progress")
                start = r.reps_completed
            done += batch
        return bytes(out)

    @staticmethod
    def _target_id(target: Partition | int | None) -> int:
        if target is None:
            return PARTITION_ID_SELF
        return target if isinstance(target, int) else target.id

    # ---- partition lifecycle ----------------------------------------------------------------
    def create_partition(self, *, via: VirtualProcessor | None = None) -> Partition:
        out = self._call(CallCode.CREATE_PARTITION, bytes(56), via=via, name="CreatePartition")
        return self.host._partition(struct.unpack_from("<Q", out)[0])

    def initialize_partition(self, target: Partition | int, *, via=None) -> None:
        self._call(CallCode.INITIALIZE_PARTITION, struct.pack("<Q", self._target_id(target)), via=via,
                   name="InitializePartition")

    def finalize_partition(self, target: Partition | int, *, via=None) -> None:
        self._call(CallCode.FINALIZE_PARTITION, struct.pack("<Q", self._target_id(target)), via=via,
                   name="FinalizePartition")

    def delete_partition(self, target: Partition | int, *, via=None) -> None:
        tid = self._target_id(target)
        self._call(CallCode.DELETE_PARTITION, struct.pack("<Q", tid), via=via, name="DeletePartition")
        self.host._forget(tid)

    def get_partition_property(self, target: Partition | int | None, code: int, *, via=None) -> int:
        out = self._call(CallCode.GET_PARTITION_PROPERTY, struct.pack("<QII", self._target_id(target), code, 0),
                         via=via, name="GetPartitionProperty")
        return struct.unpack_from("<Q", out)[0]

    def set_partition_property(self, target: Partition | int, code: int, value: int, *, via=None) -> None:
        self._call(CallCode.SET_PARTITION_PROPERTY,
                   struct.pack("<QIIQ", self._target_id(target), code, 0, value), via=via,
                   name="SetPartitionProperty")

    def get_partition_id(self, *, via=None) -> int:
        out = self._call(CallCode.GET_PARTITION_ID, b"", via=via, name="GetPartitionId")
        return struct.unpack_from("<Q", out)[0]

    def get_next_child_partition(self, previous: Partition | int = PARTITION_ID_INVALID, *, via=None) -> int:
        prev = previous if isinstance(previous, int) else previous.id
        out = self._call(CallCode.GET_NEXT_CHILD_PARTITION, struct.pack("<QQ", PARTITION_ID_SELF, prev),
                         via=via, name="GetNextChildPartition")
        return struct.unpack_from("<Q", out)[0]

    def children(self, *, via=None) -> list[Partition]:
        """This partition's children, walked with GetNextChildPartition."""
        found, prev = [], PARTITION_ID_INVALID
        while (prev := self.get_next_child_partition(prev, via=via)) != PARTITION_ID_INVALID:
            found.append(self.host._partition(prev))
        return found

    def resume_partition(self, target: Partition | int, *, via=None) -> None:
        """Let the target's VPs run (SUSPEND property = 0); admission-controlled: a CPU reserve
        that cannot be met fails with NO_RESOURCES and the partition stays suspended."""
        self.set_partition_property(target, PartitionProperty.SUSPEND, 0, via=via)

    def suspend_partition(self, target: Partition | int, *, via=None) -> None:
        self.set_partition_property(target, PartitionProperty.SUSPEND, 1, via=via)

    # ---- memory pool ----------------------------------------------------------------------
    def deposit_memory(self, target: Partition | int | None, gpa_pages: Sequence[int], *, via=None) -> None:
        self._rep_call(CallCode.DEPOSIT_MEMORY, struct.pack("<Q", self._target_id(target)),
                       [struct.pack("<Q", p) for p in gpa_pages], elem_size=8, via=via, name="DepositMemory")

    def withdraw_memory(self, target: Partition | int | None, count: int, *, via=None) -> list[int]:
        out = self._rep_call(CallCode.WITHDRAW_MEMORY, struct.pack("<QQ", self._target_id(target), 0), count,
                             elem_size=0, out_elem_size=8, via=via, name="WithdrawMemory")
        return list(struct.unpack(f"<{count}Q", out))

    def get_memory_balance(self, target: Partition | int | None = None, *, via=None) -> tuple[int, int]:
        """(pages available, pages in use) in the target's pool."""
        out = self._call(CallCode.GET_MEMORY_BALANCE, struct.pack("<QQ", self._target_id(target), 0),
                         via=via, name="GetMemoryBalance")
        return struct.unpack_from("<QQ", out)

    # ---- GPA maps -----------------------------------------------------------------------------
    def map_gpa_pages(self, target: Partition | int, gpa_page_base: int, source_pages: Sequence[int],
                      flags: int = MAP_RWX, *, via=None) -> None:
        """Move `source_pages` (this partition's GPA pages) into the target, mapped at
        consecutive GPA pages from `gpa_page_base` with `flags` rights."""
        per_call = (PAGE_SIZE - 24) // 8
        for off in range(0, len(source_pages), per_call):
            chunk = source_pages[off:off + per_call]
            header = struct.pack("<QQII", self._target_id(target), gpa_page_base + off, int(flags), 0)
            self._rep_call(CallCode.MAP_GPA_PAGES, header, [struct.pack("<Q", p) for p in chunk],
                           elem_size=8, via=via, name="MapGpaPages")

    def unmap_gpa_pages(self, target: Partition | int, gpa_page_base: int, count: int, *, via=None) -> None:
        for off in range(0, count, MAX_REP_COUNT):
            n = min(MAX_REP_COUNT, count - off)
            header = struct.pack("<QQII", self._target_id(target), gpa_page_base + off, 0, 0)
            self._rep_call(CallCode.UNMAP_GPA_PAGES, header, n, elem_size=0, via=via, name="UnmapGpaPages")

    # ---- VPs of a child -----------------------------------------------------------------------
    def create_vp(self, target: Partition | int, vp_index: int, *, via=None) -> None:
        self._call(CallCode.CREATE_VP, struct.pack("<QIIQQ", self._target_id(target), vp_index, 0, 0, 0),
                   via=via, name="CreateVp")

    def delete_vp(self, target: Partition | int, vp_index: int, *, via=None) -> None:
        self._call(CallCode.DELETE_VP, struct.pack("<QII", self._target_id(target), vp_index, 0),
                   via=via, name="DeleteVp")

    def get_vp_registers(self, target: Partition | int | None, vp_index: int, names: Sequence[int],
                         *, via=None) -> list[int]:
        header = struct.pack("<QIB3x", self._target_id(target), vp_index, 0)
        elements = [struct.pack("<I", n) for n in names]
        out = self._rep_call(CallCode.GET_VP_REGISTERS, header, elements, elem_size=4, out_elem_size=16,
                             via=via, name="GetVpRegisters")
        return [struct.unpack_from("<Q", out, 16 * i)[0] for i in range(len(names))]

    def set_vp_registers(self, target: Partition | int | None, vp_index: int, values: Mapping[int, int],
                         *, via=None) -> None:
        header = struct.pack("<QIB3x", self._target_id(target), vp_index, 0)
        elements = [struct.pack("<IIQQQ", n, 0, 0, v & 0xFFFFFFFFFFFFFFFF, 0) for n, v in values.items()]
        self._rep_call(CallCode.SET_VP_REGISTERS, header, elements, elem_size=32, via=via, name="SetVpRegisters")

    def check_vp_registers(self, target: Partition | int | None, vp_index: int, values: Mapping[int, int]) -> None:
        """Raise the HvError `set_vp_registers(target, vp_index, values)` would raise now (issued by
        this partition's VP 0), changing nothing: a restore checks every VP before it applies any."""
        header = struct.pack("<QIB3x", self._target_id(target), vp_index, 0)
        elements = [struct.pack("<IIQQQ", n, 0, 0, v & 0xFFFFFFFFFFFFFFFF, 0) for n, v in values.items()]
        per_call = (PAGE_SIZE - len(header)) // 32
        for done in range(0, len(elements), per_call):
            batch = elements[done:done + per_call]
            status = _binding.hv_check_set_vp_registers(self.host._h, self.id, header + b"".join(batch), len(batch))
            if status != HvStatus.SUCCESS:
                raise error_for(status, "SetVpRegisters", f"checking elements {done}..{done + len(batch) - 1}")

    # ---- convenience views (introspection, not hypercalls) -----------------------------------
    @property
    def state(self) -> PartitionState | None:
        info = self.host.introspect.partition_info(self)
        return PartitionState(info["state"]) if info else None

    @property
    def privileges(self) -> int:
        return self.host.introspect.partition_info(self)["privileges"]

    def read(self, gpa: int, length: int) -> bytes:
        """A load from this partition's own memory, as its guest code would do it."""
        data = _binding.hv_partition_read(self.host._h, self.id, gpa, length)
        if data is None:
            raise MemoryError(f"partition {self.id}: GPA {gpa:#x}+{length} is not readable by it")
        return data

    def write(self, gpa: int, data: bytes) -> None:
        """A store to this partition's own memory, as its guest code would do it."""
        if not _binding.hv_partition_write(self.host._h, self.id, gpa, bytes(data)):
            overlay = _binding.hv_partition_overlay_gpa(self.host._h, self.id)
            if overlay is not None and gpa < overlay + PAGE_SIZE and overlay < gpa + len(data):
                raise OverlayFault(self.id, gpa, len(data), overlay)
            raise MemoryError(f"partition {self.id}: GPA {gpa:#x}+{len(data)} is not writable by it")

    # ---- a child's memory in bulk, for live migration (native/migration.c, native/pager.c) ------
    # The parent's copies of whole pages, many per crossing, by the child's GPA map (whatever rights
    # the child has on them). Each call checks every page before a byte moves: a page the child does
    # not map raises HvInvalidParameter naming it, and nothing changed. Only the child's parent may
    # call (HvNotFound otherwise). See docs/dirty-log.md.

    def _child_call(self, name: str, result: tuple) -> None:
        status, bad = result[0], result[-1]
        if status != HvStatus.SUCCESS:
            raise error_for(status, name, f"GPA page {bad:#x}" if status in _PAGE_REFUSALS else None)

    def read_pages(self, child: Partition | int, gpa_pages, *, out=None) -> bytes:
        """The child's GPA pages `gpa_pages` (a sequence of ints, or an array('Q') passed with no
        copy), 4096 bytes each, in order; into `out` (a writable buffer of that size) if given."""
        r = _binding.hv_child_read_pages(self.host._h, self.id, self._target_id(child), gpa_pages, out)
        self._child_call("ReadPages", r)
        return r[1] if out is not None else bytes(r[1])

    def read_range(self, child: Partition | int, first: int, count: int, *, out=None) -> bytes:
        """The child's GPA pages first .. first + count - 1, without a list of them."""
        r = _binding.hv_child_read_range(self.host._h, self.id, self._target_id(child), first, count, out)
        self._child_call("ReadPages", r)
        return r[1] if out is not None else bytes(r[1])

    def write_pages(self, child: Partition | int, gpa_pages, data) -> None:
        """Store `data` (4096 bytes per page) into the child's GPA pages `gpa_pages`: writes of the
        core, which set the child's dirty log, and which supply pages that were absent."""
        self._child_call("WritePages", _binding.hv_child_write_pages(self.host._h, self.id, self._target_id(child),
                                                                     gpa_pages, data))

    def write_range(self, child: Partition | int, first: int, data) -> None:
        """write_pages for the GPA pages from `first` on, as many as `data` holds."""
        self._child_call("WritePages", _binding.hv_child_write_range(self.host._h, self.id, self._target_id(child),
                                                                     first, data))

    def nonzero_pages(self, child: Partition | int, first: int, count: int) -> list[int]:
        """The GPA pages of first .. first + count - 1 that the child maps and that may hold a
        non-zero byte (absent pages among them); pages the core never wrote cost nothing."""
        status, pages = _binding.hv_child_nonzero_pages(self.host._h, self.id, self._target_id(child), first, count)
        if status != HvStatus.SUCCESS:
            raise error_for(status, "NonzeroPages")
        return pages

    def set_absent(self, child: Partition | int, first: int, count: int) -> None:
        """Mark the child's GPA pages first .. first + count - 1 absent (post-copy): the first
        access to each asks the host's pager for it (Host.set_pager). Each must be mapped
        (HvInvalidParameter) and neither granted, viewed nor host-visible (HvInvalidState)."""
        self._child_call("SetAbsent", _binding.hv_child_set_absent(self.host._h, self.id, self._target_id(child),
                                                                   first, count))

    def page_in(self, child: Partition | int, gpa_page: int, data) -> None:
        """Supply one page of the child (4096 bytes): it is no longer absent."""
        status = _binding.hv_child_page_in(self.host._h, self.id, self._target_id(child), gpa_page, data)
        self._child_call("PageIn", (status, gpa_page))

    def absent_pages(self, child: Partition | int, first: int, count: int) -> list[int]:
        """The GPA pages of first .. first + count - 1 that are absent now."""
        status, marks = _binding.hv_child_absent_map(self.host._h, self.id, self._target_id(child), first, count)
        if status != HvStatus.SUCCESS:
            raise error_for(status, "AbsentPages")
        out, at = [], marks.find(1)
        while at >= 0:
            out.append(first + at)
            at = marks.find(1, at + 1)
        return out

    # ---- ports, connections, messages and events (synic) ----
    def create_port(self, port_partition: Partition | int | None, port_id: int, *, port_type: int,
                    target_sint: int, target_vp: int, base_flag: int = 0, flag_count: int = 0,
                    connection_partition: Partition | int | None, via=None) -> None:
        """Create port `port_id` in `port_partition` (this partition or a child): what arrives is
        delivered to SINT `target_sint` of its VP `target_vp`; only `connection_partition` may
        connect to it. Event ports own flags base_flag .. base_flag + flag_count - 1."""
        info = struct.pack("<IIIIHHI", int(port_type), 0, target_sint, target_vp, base_flag, flag_count, 0)
        header = struct.pack("<QIBBHQ", self._target_id(port_partition), port_id, 0, 0, 0,
                             self._target_id(connection_partition)) + info + struct.pack("<Q", 0)
        self._call(CallCode.CREATE_PORT, header, via=via, name="CreatePort")

    def connect_port(self, connection_partition: Partition | int | None, connection_id: int,
                     port_partition: Partition | int | None, port_id: int, *,
                     port_type: int = PortType.MESSAGE, via=None) -> None:
        """Give `connection_partition` connection `connection_id` to port `port_id` of
        `port_partition`; `port_type` must be the port's type."""
        header = struct.pack("<QIB3xQII", self._target_id(connection_partition), connection_id, 0,
                             self._target_id(port_partition), port_id, 0)
        header += struct.pack("<II24x", int(port_type), 0) + struct.pack("<Q", 0)
        self._call(CallCode.CONNECT_PORT, header, via=via, name="ConnectPort")

    def delete_port(self, port_partition: Partition | int | None, port_id: int, *, via=None) -> None:
        self._call(CallCode.DELETE_PORT, struct.pack("<QII", self._target_id(port_partition), port_id, 0),
                   via=via, name="DeletePort")

    def disconnect_port(self, connection_partition: Partition | int | None, connection_id: int, *,
                        via=None) -> None:
        self._call(CallCode.DISCONNECT_PORT,
                   struct.pack("<QII", self._target_id(connection_partition), connection_id, 0),
                   via=via, name="DisconnectPort")

    def post_message(self, connection_id: int, message_type: int, payload: bytes = b"", *, via=None) -> None:
        """Post a message (at most 240 bytes) on one of this partition's connections."""
        if len(payload) > PAYLOAD_MAX:
            raise ValueError(f"a message payload holds at most {PAYLOAD_MAX} bytes, got {len(payload)}")
        header = struct.pack("<IIII", connection_id, 0, int(message_type), len(payload))
        self._call(CallCode.POST_MESSAGE, header + bytes(payload).ljust(PAYLOAD_MAX, b"\0"), via=via,
                   name="PostMessage")

    def signal_event(self, connection_id: int, flag_number: int = 0, fast: bool = True, *, via=None) -> None:
        """Signal event flag `flag_number` (relative to the port's base flag) on one of this
        partition's connections; as a fast call (the 8-byte input in RDX) unless fast=False."""
        vp = via or self.vp(0)
        if fast and 0 <= connection_id <= 0xFFFF_FFFF and 0 <= flag_number <= 0xFFFF:
            # Every VMBus ring signal comes here: vp.hypercall's fast path without its objects
            # (the control word made once, the input block straight into RDX, no result tuple).
            part = vp.partition
            code = _binding.hv_hypercall(part.host._h, part.id, vp.index, _SIGNAL_EVENT_FAST,
                                         connection_id | flag_number << 32, 0) & 0xFFFF
            if code != HvStatus.SUCCESS:
                raise error_for(code, "SignalEvent")
            return
        data = struct.pack("<IHH", connection_id, flag_number, 0)
        if not fast:
            self._call(CallCode.SIGNAL_EVENT, data, via=via, name="SignalEvent")
            return
        vp.hypercall(control(CallCode.SIGNAL_EVENT, fast=True), data).check("SignalEvent")


class RootMemory:
    """The root's own page allocator: which of the root's pages are free for it to deposit or
    map into children. A real root's memory manager knows this; the hypervisor does not help.
    Free pages are kept as runs (ranges), never one Python int per page, so a host of a thousand
    VMs does not carry (and collect) millions of page numbers; the VM worker takes and gives back
    runs (allocate_runs / release_runs). Pages given back are handed out again first, the last
    given back first."""

    def __init__(self, first_pfn: int, end_pfn: int):
        self._next = first_pfn
        self._end = end_pfn
        self._returned: list[range] = []   # runs of consecutive pages given back, in order
        self._returned_pages = 0

    @property
    def available(self) -> int:
        return self._end - self._next + self._returned_pages

    def allocate_runs(self, count: int) -> list[range]:
        """`count` free pages as runs of consecutive pages: the last ones given back, in the order
        they were given back, then pages never used."""
        if count > self.available:
            raise MemoryError(f"the root has {self.available} free pages, {count} were asked for")
        runs, need = [], count
        while need and self._returned:
            r = self._returned[-1]
            if len(r) <= need:
                runs.append(self._returned.pop())
            else:
                runs.append(r[len(r) - need:])
                self._returned[-1] = r[:len(r) - need]
            need -= len(runs[-1])
        runs.reverse()
        self._returned_pages -= count - need
        if need:
            runs.append(range(self._next, self._next + need))
            self._next += need
        return runs

    def allocate(self, count: int) -> list[int]:
        return [page for run in self.allocate_runs(count) for page in run]

    def release_runs(self, runs: Iterable[range]) -> None:
        for r in runs:
            if not r:
                continue
            if r.step != 1:
                self.release(list(r))
                continue
            if self._returned and self._returned[-1].stop == r.start:
                self._returned[-1] = range(self._returned[-1].start, r.stop)
            else:
                self._returned.append(r)
            self._returned_pages += len(r)

    def release(self, pages: Iterable[int]) -> None:
        run = None
        for page in pages:
            if run is not None and page == run.stop:
                run = range(run.start, page + 1)
                continue
            if run is not None:
                self.release_runs((run,))
            run = range(page, page + 1)
        if run is not None:
            self.release_runs((run,))
