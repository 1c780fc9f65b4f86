"""The shipped isolation state machines, run as hvsim's own stateful tests: `HypervisorMachine`
(everything: partition and memory management, grants, ports and messages, raw hypercalls) and
`MessagingMachine` (its port, message and event rules without the memory churn, so most steps
carry messages); and, replayed step by step, sequences in which the machine's own model was once
wrong."""
import struct

from hypothesis import HealthCheck, settings

from hypervisor.abi import PAGE_SIZE, PARTITION_ID_SELF, CallCode, PartitionState, Register, control
from hypervisor.status import HvStatus
from hypervisor.synic import MESSAGE_SIZE, siefp_value, simp_value, sint_value
from hypervisor.testing.machine import HypervisorMachine, MessagingMachine

# Both together stay under ~20 s; a port mutation of the core (no 16-buffer limit, a message on
# the wrong connection, a purge left out, ...) fails the messaging machine within these budgets.
SLOW_OK = [HealthCheck.too_slow, HealthCheck.data_too_large]

TestHypervisorIsolation = HypervisorMachine.TestCase
TestHypervisorIsolation.settings = settings(max_examples=80, stateful_step_count=40, deadline=None,
                                            suppress_health_check=SLOW_OK)

TestMessagingIsolation = MessagingMachine.TestCase
TestMessagingIsolation.settings = settings(max_examples=170, stateful_step_count=50, deadline=None,
                                           suppress_health_check=SLOW_OK)


# ---- examples the machine once got wrong, replayed deterministically ----------------------------

def _spill_over_sim_page(machine: HypervisorMachine, vp, code: int, header: bytes, element: bytes,
                         sim_page: int) -> bytes:
    """Issue a raw rep call from `vp` whose input block is so long that the guest's own stores of
    it run from its input page onto `sim_page`; return the bytes those stores left on the page."""
    reps = (sim_page * PAGE_SIZE + 64 - vp.input_gpa - len(header)) // len(element) + 1
    block = header + element * reps
    assert vp.input_gpa + len(block) > sim_page * PAGE_SIZE + 64
    result = machine.issue(vp, control(code, rep_count=reps), block)
    assert result.status == HvStatus.INVALID_ALIGNMENT  # a block crossing a page: refused, nothing done
    page = machine.host.partition(vp.partition.id).read(sim_page * PAGE_SIZE, MESSAGE_SIZE)
    offset = sim_page * PAGE_SIZE - vp.input_gpa
    assert page == block[offset:offset + MESSAGE_SIZE].ljust(MESSAGE_SIZE, b"\0")  # the guest's bytes
    return page


def test_the_roots_oversized_input_block_stored_over_its_sim_page_is_the_guests_business():
    """Found by the machine: root VP 1 stores a 1024-rep MapGpaPages block (8 KiB) at its input
    page 18; the stores run over pages 19 and 20, and 20 is VP 0's SIM page. The call fails
    INVALID_ALIGNMENT and touches nothing, so SINT0's slot holds what the guest wrote there, not
    a message: INV-MSG must not judge it."""
    machine = HypervisorMachine()
    machine.start()
    root = machine.root
    simp, siefp = machine.root_synic_pages[0] = tuple(machine.host.root_memory.allocate(2))
    machine.untrusted[root.id].add(siefp)
    root.vp(0).set_registers({Register.SIMP: simp_value(simp), Register.SIEFP: siefp_value(siefp),
                              Register.SCONTROL: 1, Register.SINT2: sint_value(0x32)})
    machine.synic_vps.add((root.id, 0))
    machine.messages_hold()
    assert simp not in machine._scratch(root.id)
    page = _spill_over_sim_page(machine, root.vp(1), CallCode.MAP_GPA_PAGES,
                                struct.pack("<QQII", root.id, 0x24A, 0, 0), struct.pack("<Q", 0x1_0000_0123), simp)
    assert any(page[16:])  # a "message" of PayloadSize 0 with bytes after it, had the model trusted it
    machine.messages_hold()


def test_a_childs_oversized_input_block_stored_over_its_sim_page_is_the_guests_business():
    """The same for a child: VP 0 of a ready guest stores a SetVpRegisters block of 2048+ registers
    from its input page 0 up over its SIM page 16."""
    machine = HypervisorMachine()
    machine.start()
    machine.create_guest(None, vps=1, create_port=False, connect_port=False, no_post=False, no_signal=False)
    child = machine.children[0]
    simp, _ = machine.child_synic_pages[child.id, 0]
    element = struct.pack("<IIQQQ", Register.RAX, 0, 0, 0x0000_00F0_0000_0001, 0)  # type 1, size 0, then bytes
    page = _spill_over_sim_page(machine, child.vp(0), CallCode.SET_VP_REGISTERS,
                                struct.pack("<QIB3x", PARTITION_ID_SELF, 0, 0), element, simp)
    assert any(page[16:])
    machine.messages_hold()


def test_create_guest_after_the_roots_raw_deposit_took_pages_its_allocator_still_lists():
    """Found by the messaging machine: a raw DepositMemory from the root gives the hypervisor two
    of the root's pages its page allocator (a harness-side list) still counts free. create_guest
    must build its guest from pages the root still owns, not fail on the ones it gave away."""
    machine = MessagingMachine()
    machine.root_synic()
    machine.start()
    root = machine.root
    pages = machine.host.root_memory.allocate(2)
    machine.host.root_memory.release(pages)  # the next pages the allocator hands out
    deposit = machine.issue(root.vp(0), control(CallCode.DEPOSIT_MEMORY, rep_count=2),
                            struct.pack("<Q", root.id) + b"".join(struct.pack("<Q", p) for p in pages))
    assert deposit.ok
    machine.create_guest(None, vps=1, create_port=False, connect_port=False, no_post=False, no_signal=False)
    child = machine.children[0]
    assert child.state == PartitionState.INITIALIZED
    assert len(machine.host.introspect.reach(child)) == 32
    machine.isolation_holds()
    machine.messages_hold()
