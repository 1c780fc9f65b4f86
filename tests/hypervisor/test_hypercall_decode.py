"""The one hypercall entry point: control-word decode, the order of checks, the input/output
blocks, the result value, the status table and the exceptions (hyperv-abi.md §1)."""
from __future__ import annotations

import struct

import pytest

from hypervisor import CallCode, Control, HvError, HvStatus, MapFlags, PartitionState, Register, control
from hypervisor import _binding
from hypervisor.abi import PAGE_SIZE, PARTITION_ID_SELF, PRIVILEGES_GUEST_DEFAULT, VP_INDEX_SELF
from hypervisor.status import HvAccessDenied, HvInsufficientMemory, HvInvalidParameter, HvNotFound

from .conftest import (create_partition_in, create_vp_in, expect, get_property_in, get_regs_in, info,
                       make_child, new_host, pid_in, set_property_in)

GET_ID = control(CallCode.GET_PARTITION_ID)
PROP_CAP = 0x00020002  # HV_PARTITION_PROPERTY_CPU_CAP


def rsvd_bits():
    for lo, hi in ((27, 30), (44, 47), (60, 63)):
        yield from range(lo, hi + 1)


# ---- control word ---------------------------------------------------------------------------------

def test_plain_control_word_succeeds(root):
    r = expect(root.vp(0), GET_ID)
    assert struct.unpack("<Q", r.output)[0] == root.id == 1


@pytest.mark.parametrize("bit", list(rsvd_bits()))
def test_reserved_control_bit_is_invalid_input(root, bit):
    expect(root.vp(0), GET_ID | 1 << bit, status=HvStatus.INVALID_HYPERCALL_INPUT)


@pytest.mark.parametrize("bit", [28, 45, 61])
def test_reserved_bits_on_rep_call_are_invalid_input(host, root, bit):
    pages = host.root_memory.allocate(1)
    ctl = control(CallCode.DEPOSIT_MEMORY, rep_count=1) | 1 << bit
    expect(root.vp(0), ctl, pid_in(PARTITION_ID_SELF) + struct.pack("<Q", pages[0]),
           status=HvStatus.INVALID_HYPERCALL_INPUT)


def test_control_encoder_places_reserved_bits(root):
    # Control(reserved=...) keeps only the RsvdZ bits and the core refuses each of them.
    for bit in rsvd_bits():
        word = Control(CallCode.GET_PARTITION_ID, reserved=1 << bit).encode()
        assert word == GET_ID | 1 << bit
        assert Control.decode(word).reserved == 1 << bit
    assert Control(CallCode.GET_PARTITION_ID, reserved=1 << 16).encode() == GET_ID  # not RsvdZ


def test_nested_bit_is_invalid_input(root):
    word = Control(CallCode.GET_PARTITION_ID, nested=True).encode()
    assert word == GET_ID | 1 << 31
    expect(root.vp(0), word, status=HvStatus.INVALID_HYPERCALL_INPUT)


@pytest.mark.parametrize("code", [0x0000, 0x0001, 0x0052, 0x00FF, 0x7FFF, 0x8001, 0xFFFF])
def test_unknown_call_code(root, code):
    expect(root.vp(0), control(code), status=HvStatus.INVALID_HYPERCALL_CODE)


def test_reserved_bits_win_over_unknown_code(root):
    expect(root.vp(0), control(0xFFFF) | 1 << 63, status=HvStatus.INVALID_HYPERCALL_INPUT)


def test_unknown_code_wins_over_privilege(host, child):
    # A child lacks CreatePartitions, but an unknown code is reported as such.
    expect(child.vp(0), control(0x7FFF), status=HvStatus.INVALID_HYPERCALL_CODE)


@pytest.mark.parametrize("count,start", [(1, 0), (0, 1), (3, 1), (4095, 0)])
def test_simple_call_with_rep_fields_is_invalid_input(root, count, start):
    word = Control(CallCode.GET_PARTITION_ID, rep_count=count, rep_start=start).encode()
    expect(root.vp(0), word, status=HvStatus.INVALID_HYPERCALL_INPUT)


@pytest.mark.parametrize("count,start", [(0, 0), (0, 1), (1, 1), (2, 2), (2, 3), (5, 4095)])
def test_rep_call_with_bad_count_or_start_is_invalid_input(host, root, count, start):
    pages = host.root_memory.allocate(max(count, 1))
    data = pid_in(PARTITION_ID_SELF) + struct.pack(f"<{len(pages)}Q", *pages)
    expect(root.vp(0), control(CallCode.DEPOSIT_MEMORY, rep_count=count, rep_start=start), data,
           status=HvStatus.INVALID_HYPERCALL_INPUT, reps=0)


@pytest.mark.parametrize("code", [CallCode.GET_PARTITION_ID, CallCode.CREATE_PARTITION])
@pytest.mark.parametrize("qwords", [1, 0x3FF])
def test_variable_header_size_is_invalid_input(root, code, qwords):
    data = create_partition_in() if code == CallCode.CREATE_PARTITION else b""
    word = Control(code, varhead_qwords=qwords).encode()
    expect(root.vp(0), word, data, status=HvStatus.INVALID_HYPERCALL_INPUT)
    assert root.children() == []


def test_variable_header_on_rep_call_is_invalid_input(host, root):
    pages = host.root_memory.allocate(2)
    word = Control(CallCode.DEPOSIT_MEMORY, rep_count=2, varhead_qwords=1).encode()
    expect(root.vp(0), word, pid_in(PARTITION_ID_SELF) + struct.pack("<2Q", *pages),
           status=HvStatus.INVALID_HYPERCALL_INPUT)


# ---- fast (register) calls --------------------------------------------------------------------------

@pytest.mark.parametrize("code,data", [
    (CallCode.GET_PARTITION_ID, b""),                                  # has output
    (CallCode.GET_PARTITION_PROPERTY, get_property_in(PARTITION_ID_SELF, PROP_CAP)),  # has output
    (CallCode.GET_NEXT_CHILD_PARTITION, struct.pack("<QQ", PARTITION_ID_SELF, 0)),    # has output
    (CallCode.CREATE_PARTITION, create_partition_in()),                # output, 56-byte input
])
def test_fast_call_with_output_is_invalid_input(root, code, data):
    expect(root.vp(0), control(code, fast=True), data, status=HvStatus.INVALID_HYPERCALL_INPUT)


def test_fast_rep_call_is_invalid_input(host, root):
    page = host.root_memory.allocate(1)[0]
    expect(root.vp(0), control(CallCode.DEPOSIT_MEMORY, fast=True, rep_count=1),
           pid_in(PARTITION_ID_SELF) + struct.pack("<Q", page), status=HvStatus.INVALID_HYPERCALL_INPUT)


def test_fast_initialize_partition_with_id_in_rdx(host, root):
    child = root.create_partition()
    root.deposit_memory(child, host.root_memory.allocate(2))
    expect(root.vp(0), control(CallCode.INITIALIZE_PARTITION, fast=True), pid_in(child.id))
    assert child.state == PartitionState.INITIALIZED
    assert info(host, child)["pool_used"] == 1
    # the same fast call again now fails on the state, changing nothing
    expect(root.vp(0), control(CallCode.INITIALIZE_PARTITION, fast=True), pid_in(child.id),
           status=HvStatus.INVALID_PARTITION_STATE)


def test_fast_call_input_too_big_for_registers(host, root):
    # CreateVp takes 32 input bytes: RDX and R8 hold only 16, so without XMM input it is refused.
    child = make_child(host, map_pages=0, vps=())
    raw = _binding.hv_hypercall(host._h, root.id, 0, control(CallCode.CREATE_VP, fast=True), child.id, 0, None)
    assert raw & 0xFFFF == HvStatus.INVALID_HYPERCALL_INPUT
    assert info(host, child)["vp_mask"] == 0
    # the same call with XMM input (the last 16 bytes in XMM0) creates VP 3
    expect(root.vp(0), control(CallCode.CREATE_VP, fast=True), create_vp_in(child.id, 3))
    assert info(host, child)["vp_mask"] == 1 << 3


def test_fast_set_partition_property_through_xmm(host, root):
    child = root.create_partition()
    expect(root.vp(0), control(CallCode.SET_PARTITION_PROPERTY, fast=True), set_property_in(child.id, PROP_CAP, 42))
    assert info(host, child)["cpu_cap"] == 42


def test_fast_call_ignores_memory_blocks(host, root):
    # A fast call reads nothing from memory: an unaligned, unowned "GPA" in RDX is just the value.
    child = root.create_partition()
    root.deposit_memory(child, host.root_memory.allocate(1))
    expect(root.vp(0), control(CallCode.FINALIZE_PARTITION, fast=True), pid_in(child.id),
           status=HvStatus.INVALID_PARTITION_STATE)
    expect(root.vp(0), control(CallCode.INITIALIZE_PARTITION, fast=True), pid_in(child.id),
           input_gpa=3, output_gpa=5)
    assert child.state == PartitionState.INITIALIZED


# ---- input/output blocks ------------------------------------------------------------------------------

def test_unaligned_input_gpa(root):
    vp = root.vp(0)
    for off in (1, 4, 7):
        expect(vp, control(CallCode.GET_PARTITION_PROPERTY), get_property_in(PARTITION_ID_SELF, PROP_CAP),
               status=HvStatus.INVALID_ALIGNMENT, input_gpa=vp.input_gpa + off)


def test_unaligned_output_gpa(root):
    vp = root.vp(0)
    expect(vp, GET_ID, status=HvStatus.INVALID_ALIGNMENT, output_gpa=vp.output_gpa + 4)


def test_input_block_crossing_a_page(root):
    vp = root.vp(0)
    # 16 bytes at offset 4088 cross into the next page; 8-aligned, and both pages are the root's.
    expect(vp, control(CallCode.GET_PARTITION_PROPERTY), get_property_in(PARTITION_ID_SELF, PROP_CAP),
           status=HvStatus.INVALID_ALIGNMENT, input_gpa=vp.input_gpa + PAGE_SIZE - 8)
    # the last 16 bytes of the page are fine
    r = expect(vp, control(CallCode.GET_PARTITION_PROPERTY), get_property_in(PARTITION_ID_SELF, PROP_CAP),
               input_gpa=vp.input_gpa + PAGE_SIZE - 16)
    assert struct.unpack("<Q", r.output)[0] == 100


def test_output_block_crossing_a_page(host, root):
    vp = root.vp(0)
    expect(vp, control(CallCode.GET_MEMORY_BALANCE), struct.pack("<QQ", PARTITION_ID_SELF, 0),
           status=HvStatus.INVALID_ALIGNMENT, output_gpa=vp.output_gpa + PAGE_SIZE - 8)


def test_rep_block_larger_than_a_page(host, root):
    # 8 + 600 * 8 bytes of DepositMemory input cannot fit in one page.
    pages = host.root_memory.allocate(600)
    data = pid_in(PARTITION_ID_SELF) + struct.pack("<600Q", *pages)
    root.write(root.vp(0).input_gpa, data[:PAGE_SIZE])  # what fits in the input page
    expect(root.vp(0), control(CallCode.DEPOSIT_MEMORY, rep_count=600), b"",
           status=HvStatus.INVALID_ALIGNMENT)


@pytest.mark.parametrize("where", ["reserved", "beyond", "deposited"])
def test_block_in_a_page_the_root_does_not_own(host, root, where):
    vp = root.vp(0)
    if where == "reserved":
        gpa = 0  # SPA page 0 belongs to the hypervisor
    elif where == "beyond":
        gpa = host.pages * PAGE_SIZE
    else:
        child = root.create_partition()
        page = host.root_memory.allocate(1)[0]
        root.deposit_memory(child, [page])
        gpa = page * PAGE_SIZE
    expect(vp, control(CallCode.GET_PARTITION_PROPERTY), get_property_in(PARTITION_ID_SELF, PROP_CAP),
           status=HvStatus.INVALID_ALIGNMENT, input_gpa=gpa)
    expect(vp, GET_ID, status=HvStatus.INVALID_ALIGNMENT, output_gpa=gpa)


def test_child_input_page_not_mapped(host):
    # VP 0's input page is GPA page 0: map only page 1 (its output page).
    child = make_child(host, map_pages=1, gpa_base=1)
    vp = child.vp(0)
    expect(vp, control(CallCode.GET_PARTITION_PROPERTY), get_property_in(PARTITION_ID_SELF, PROP_CAP),
           status=HvStatus.INVALID_ALIGNMENT)
    # a call without input works from the same VP
    r = expect(vp, GET_ID)
    assert struct.unpack("<Q", r.output)[0] == child.id


def test_child_output_page_not_mapped(host):
    child = make_child(host, map_pages=1)  # only GPA page 0
    expect(child.vp(0), GET_ID, status=HvStatus.INVALID_ALIGNMENT)


def test_child_output_page_read_only(host, root):
    child = make_child(host, map_pages=2)
    root.map_gpa_pages(child, 2, host.root_memory.allocate(1), MapFlags.READABLE)
    vp = child.vp(0)
    expect(vp, GET_ID, status=HvStatus.INVALID_ALIGNMENT, output_gpa=2 * PAGE_SIZE)
    # the read-only page does serve as an input block: it is read (all zeros: partition id 0)
    expect(vp, control(CallCode.GET_PARTITION_PROPERTY), b"", status=HvStatus.INVALID_PARTITION_ID,
           input_gpa=2 * PAGE_SIZE)


def test_child_input_page_write_only(host, root):
    child = make_child(host, map_pages=2)
    root.map_gpa_pages(child, 2, host.root_memory.allocate(1), MapFlags.WRITABLE)
    vp = child.vp(0)
    child.write(2 * PAGE_SIZE, get_property_in(PARTITION_ID_SELF, PROP_CAP))
    expect(vp, control(CallCode.GET_PARTITION_PROPERTY), b"", status=HvStatus.INVALID_ALIGNMENT,
           input_gpa=2 * PAGE_SIZE)
    # and as an output block it works
    expect(vp, GET_ID, output_gpa=2 * PAGE_SIZE)


@pytest.mark.parametrize("in_off,out_off", [(0, 0), (0, 8), (8, 16), (8, 8)])
def test_overlapping_input_and_output(root, in_off, out_off):
    # GetPartitionProperty: 16 input bytes, 8 output bytes, both in the root's input page
    vp = root.vp(0)
    base = vp.input_gpa
    expect(vp, control(CallCode.GET_PARTITION_PROPERTY), get_property_in(PARTITION_ID_SELF, PROP_CAP),
           status=HvStatus.INVALID_PARAMETER, input_gpa=base + in_off, output_gpa=base + out_off)


@pytest.mark.parametrize("in_off,out_off", [(0, 16), (8, 0), (0, 4088)])
def test_adjacent_input_and_output_do_not_overlap(root, in_off, out_off):
    vp = root.vp(0)
    base = vp.input_gpa
    r = expect(vp, control(CallCode.GET_PARTITION_PROPERTY), get_property_in(PARTITION_ID_SELF, PROP_CAP),
               input_gpa=base + in_off, output_gpa=base + out_off)
    assert struct.unpack("<Q", r.output)[0] == 100


# ---- order of checks ---------------------------------------------------------------------------------

def test_privilege_is_checked_before_memory(host, child):
    # An unprivileged child calling CreatePartition with an unaligned input GPA: ACCESS_DENIED,
    # not INVALID_ALIGNMENT (the least revealing status wins).
    expect(child.vp(0), control(CallCode.CREATE_PARTITION), b"", status=HvStatus.ACCESS_DENIED, input_gpa=3)
    expect(child.vp(0), control(CallCode.CREATE_PARTITION), b"", status=HvStatus.ACCESS_DENIED,
           input_gpa=1 << 40, output_gpa=1 << 41)


def test_decode_is_checked_before_privilege(child):
    expect(child.vp(0), control(CallCode.CREATE_PARTITION) | 1 << 27, create_partition_in(),
           status=HvStatus.INVALID_HYPERCALL_INPUT)
    expect(child.vp(0), control(CallCode.CREATE_PARTITION, rep_count=1), create_partition_in(),
           status=HvStatus.INVALID_HYPERCALL_INPUT)


def test_memory_is_checked_before_arguments(root):
    # A bad property code in an unaligned block: the block is refused first.
    vp = root.vp(0)
    expect(vp, control(CallCode.GET_PARTITION_PROPERTY), get_property_in(PARTITION_ID_SELF, 0xDEAD),
           status=HvStatus.INVALID_ALIGNMENT, input_gpa=vp.input_gpa + 4)
    expect(vp, control(CallCode.GET_PARTITION_PROPERTY), get_property_in(PARTITION_ID_SELF, 0xDEAD),
           status=HvStatus.UNKNOWN_PROPERTY)


# ---- the caller --------------------------------------------------------------------------------------

def test_unknown_caller_or_vp(host, root):
    assert _binding.hv_hypercall(host._h, 999, 0, GET_ID, 0, 0) & 0xFFFF == HvStatus.INVALID_VP_INDEX
    assert _binding.hv_hypercall(host._h, root.id, 2, GET_ID, 0, 0) & 0xFFFF == HvStatus.INVALID_VP_INDEX
    assert _binding.hv_hypercall(host._h, root.id, 64, GET_ID, 0, 0) & 0xFFFF == HvStatus.INVALID_VP_INDEX


def test_vp_of_a_finalized_partition_never_runs(host, root, child):
    vp = child.vp(0)
    expect(vp, GET_ID)
    root.finalize_partition(child)
    expect(vp, GET_ID, status=HvStatus.INVALID_VP_STATE)


# ---- the result value --------------------------------------------------------------------------------

def test_result_value_layout(host, root):
    vp = root.vp(0)
    pages = host.root_memory.allocate(3)
    root.write(vp.input_gpa, pid_in(PARTITION_ID_SELF) + struct.pack("<3Q", *pages))
    raw = _binding.hv_hypercall(host._h, root.id, 0, control(CallCode.DEPOSIT_MEMORY, rep_count=3),
                                vp.input_gpa, vp.output_gpa)
    assert raw == HvStatus.SUCCESS | 3 << 32  # status 15:0, reps 43:32, everything else zero
    raw = _binding.hv_hypercall(host._h, root.id, 0, GET_ID, 0, vp.output_gpa)
    assert raw == HvStatus.SUCCESS
    raw = _binding.hv_hypercall(host._h, root.id, 0, GET_ID | 1 << 30, 0, vp.output_gpa)
    assert raw == HvStatus.INVALID_HYPERCALL_INPUT


def test_reps_completed_is_absolute(host, root):
    child = root.create_partition()
    pages = host.root_memory.allocate(10)
    r = expect(root.vp(0), control(CallCode.DEPOSIT_MEMORY, rep_count=10, rep_start=5),
               pid_in(child.id) + struct.pack("<10Q", *pages), reps=10)
    assert r.ok
    # only elements 5..9 were processed
    assert sorted(host.introspect.pool_pages(child)) == sorted(pages[5:])


def test_failed_rep_call_reports_its_start(host, root):
    child = root.create_partition()
    pages = host.root_memory.allocate(4)
    bad = pages[:3] + [0]  # page 0 is the hypervisor's
    expect(root.vp(0), control(CallCode.DEPOSIT_MEMORY, rep_count=4, rep_start=2),
           pid_in(child.id) + struct.pack("<4Q", *bad), status=HvStatus.INVALID_PARAMETER, reps=2)


def test_output_is_undefined_but_unwritten_on_failure(root):
    vp = root.vp(0)
    root.write(vp.output_gpa, b"\xAA" * 8)
    expect(vp, control(CallCode.GET_PARTITION_PROPERTY), get_property_in(PARTITION_ID_SELF, 0xDEAD),
           status=HvStatus.UNKNOWN_PROPERTY)
    assert root.read(vp.output_gpa, 8) == b"\xAA" * 8


def test_counters_count_calls_but_are_not_state(host, root):
    before = host.introspect.counters(root)
    d = host.introspect.digest()
    vp = root.vp(0)
    raw = [_binding.hv_hypercall(host._h, root.id, 0, word, vp.input_gpa, vp.output_gpa)
           for word in (control(0x7FFF), GET_ID | 1 << 63)]
    assert raw == [HvStatus.INVALID_HYPERCALL_CODE, HvStatus.INVALID_HYPERCALL_INPUT]
    after = host.introspect.counters(root)
    assert after["hypercalls"] == before["hypercalls"] + 2
    assert after["hypercalls_failed"] == before["hypercalls_failed"] + 2
    assert host.introspect.digest() == d


def test_resumed_rep_output_never_carries_other_partitions_data():
    """A resumed GetVpRegisters into a write-only output page: the elements before rep_start are
    not produced by this invocation, so they must not hold whatever the hypervisor's stack held
    (here: another partition's register, read by the root just before). Two hosts that differ only
    in that other partition's old register value must end in the same state."""
    def run(secret: int) -> bytes:
        host = new_host()
        root = host.root
        a = make_child(host, map_pages=1)
        root.map_gpa_pages(a, 1, host.root_memory.allocate(1), MapFlags.WRITABLE)  # VP 0's output page
        b = make_child(host)
        root.set_vp_registers(b, 0, {Register.RAX: secret})
        root.get_vp_registers(b, 0, [Register.RAX] * 200)
        root.set_vp_registers(b, 0, {Register.RAX: 0})
        root.write(root.vp(0).output_gpa, bytes(PAGE_SIZE))
        root.write(root.vp(0).input_gpa, bytes(PAGE_SIZE))
        n = 200
        r = a.vp(0).hypercall(control(CallCode.GET_VP_REGISTERS, rep_count=n, rep_start=n - 1),
                              get_regs_in(PARTITION_ID_SELF, VP_INDEX_SELF, [Register.RCX] * n))
        assert r.status in (HvStatus.SUCCESS, HvStatus.INVALID_ALIGNMENT)
        return host.introspect.digest()

    assert run(0x1111111111111111) == run(0x2222222222222222)


# ---- HvStatus and HvError ----------------------------------------------------------------------------

#: hyperv-abi.md §1.3, transcribed from the reference (not from the core).
REFERENCE_STATUSES = [
    (0x0000, "SUCCESS"), (0x0002, "INVALID_HYPERCALL_CODE"), (0x0003, "INVALID_HYPERCALL_INPUT"),
    (0x0004, "INVALID_ALIGNMENT"), (0x0005, "INVALID_PARAMETER"), (0x0006, "ACCESS_DENIED"),
    (0x0007, "INVALID_PARTITION_STATE"), (0x0008, "OPERATION_DENIED"), (0x0009, "UNKNOWN_PROPERTY"),
    (0x000A, "PROPERTY_VALUE_OUT_OF_RANGE"), (0x000B, "INSUFFICIENT_MEMORY"), (0x000C, "PARTITION_TOO_DEEP"),
    (0x000D, "INVALID_PARTITION_ID"), (0x000E, "INVALID_VP_INDEX"), (0x0010, "NOT_FOUND"),
    (0x0011, "INVALID_PORT_ID"), (0x0012, "INVALID_CONNECTION_ID"), (0x0013, "INSUFFICIENT_BUFFERS"),
    (0x0014, "NOT_ACKNOWLEDGED"), (0x0015, "INVALID_VP_STATE"), (0x0016, "ACKNOWLEDGED"),
    (0x0017, "INVALID_SAVE_RESTORE_STATE"), (0x0018, "INVALID_SYNIC_STATE"), (0x0019, "OBJECT_IN_USE"),
    (0x001A, "INVALID_PROXIMITY_DOMAIN_INFO"), (0x001B, "NO_DATA"), (0x001C, "INACTIVE"),
    (0x001D, "NO_RESOURCES"), (0x001E, "FEATURE_UNAVAILABLE"), (0x001F, "PARTIAL_PACKET"),
    (0x0020, "PROCESSOR_FEATURE_NOT_SUPPORTED"), (0x0030, "PROCESSOR_CACHE_LINE_FLUSH_SIZE_INCOMPATIBLE"),
    (0x0033, "INSUFFICIENT_BUFFER"), (0x0037, "INCOMPATIBLE_PROCESSOR"), (0x0038, "INSUFFICIENT_DEVICE_DOMAINS"),
    (0x003C, "CPUID_FEATURE_VALIDATION_ERROR"), (0x003D, "CPUID_XSAVE_FEATURE_VALIDATION_ERROR"),
    (0x003E, "PROCESSOR_STARTUP_TIMEOUT"), (0x003F, "SMX_ENABLED"), (0x0041, "INVALID_LP_INDEX"),
    (0x0050, "INVALID_REGISTER_VALUE"), (0x0051, "INVALID_VTL_STATE"), (0x0055, "NX_NOT_DETECTED"),
    (0x0057, "INVALID_DEVICE_ID"), (0x0058, "INVALID_DEVICE_STATE"), (0x0059, "PENDING_PAGE_REQUESTS"),
    (0x0060, "PAGE_REQUEST_INVALID"), (0x0065, "KEY_ALREADY_EXISTS"), (0x0066, "DEVICE_ALREADY_IN_DOMAIN"),
    (0x006F, "INVALID_CPU_GROUP_ID"), (0x0070, "INVALID_CPU_GROUP_STATE"), (0x0071, "OPERATION_FAILED"),
    (0x0072, "NOT_ALLOWED_WITH_NESTED_VIRT_ACTIVE"), (0x0073, "INSUFFICIENT_ROOT_MEMORY"),
    (0x0074, "EVENT_BUFFER_ALREADY_FREED"), (0x0078, "TIME_OUT"), (0x0079, "CALL_PENDING"),
    (0x0086, "VTL_ALREADY_ENABLED"), (0x0087, "UNKNOWN_REGISTER_NAME"),
]


def test_reference_table_transcription():
    codes = [c for c, _ in REFERENCE_STATUSES]
    assert len(codes) == len(set(codes)) == 59
    assert 0x000F not in codes


@pytest.mark.parametrize("code,name", REFERENCE_STATUSES)
def test_status_matches_reference(code, name):
    member = HvStatus[name]
    assert int(member) == code
    assert HvStatus(code).name == name
    assert isinstance(member.message, str) and member.message.strip()


def test_status_table_has_nothing_else():
    assert {(int(s), s.name) for s in HvStatus} == set(REFERENCE_STATUSES)
    assert len({s.message for s in HvStatus}) == len(HvStatus)  # every message says something of its own


@pytest.mark.parametrize("status,builtin,cls", [
    (HvStatus.ACCESS_DENIED, PermissionError, HvAccessDenied),
    (HvStatus.INVALID_PARAMETER, ValueError, HvInvalidParameter),
    (HvStatus.INSUFFICIENT_MEMORY, MemoryError, HvInsufficientMemory),
    (HvStatus.INVALID_PARTITION_ID, LookupError, HvNotFound),
])
def test_error_subclasses_from_real_failures(host, status, builtin, cls):
    root = host.root
    if status == HvStatus.ACCESS_DENIED:
        c = make_child(host)
        call = lambda: c.create_partition()  # noqa: E731
    elif status == HvStatus.INVALID_PARAMETER:
        call = lambda: root.deposit_memory(None, [0])  # noqa: E731
    elif status == HvStatus.INSUFFICIENT_MEMORY:
        c = root.create_partition()
        call = lambda: root.initialize_partition(c)  # noqa: E731
    else:
        call = lambda: root.finalize_partition(12345)  # noqa: E731
    with pytest.raises(builtin) as exc:
        call()
    err = exc.value
    assert isinstance(err, HvError) and isinstance(err, cls)
    assert err.status is status
    assert status.name in str(err)
    assert err.call  # the call's name


def test_error_for_unclassified_status_is_plain_hverror():
    from hypervisor.status import error_for
    err = error_for(HvStatus.PARTITION_TOO_DEEP, "CreatePartition")
    assert type(err) is HvError and err.status is HvStatus.PARTITION_TOO_DEEP
    assert "PARTITION_TOO_DEEP" in str(err) and "CreatePartition" in str(err)


def test_privilege_default_constant_matches_reference_bits():
    # GUEST_DEFAULT (hv_abi.h) as TLFS bit numbers: 0-6, 9, 33, 36, 37.
    bits = {0, 1, 2, 3, 4, 5, 6, 9, 33, 36, 37}
    assert PRIVILEGES_GUEST_DEFAULT == sum(1 << b for b in bits)
