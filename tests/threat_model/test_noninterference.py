"""Threat model case 39 (INV-NI, sampled): child A's observations do not depend on child B's
private memory nor on what B does with it. Two hosts are built the same way; in one, B's pages
hold drawn bytes and B issues drawn hypercalls (any call, valid or garbage, naming A, B, the root
or anything) and stores into its own memory between A's probes; in the other B does nothing. A
runs the same fixed probes in both — its own registers and memory balance, B's partition named in
calls it may not make, messages and events to and from the parent, its SIM and SIEF pages and its
whole memory — and must see exactly the same trace."""
from __future__ import annotations

import struct

from hypothesis import HealthCheck, given, settings, strategies as st

from hypervisor import CallCode, Host, PartitionProperty, Register, control
from hypervisor.abi import PAGE_SIZE, PARTITION_ID_SELF, PRIVILEGES_ROOT, PRIVILEGES_ROOT_ONLY
from hypervisor.synic import (MessageType, PortType, clear_message_slot, siefp_value, simp_value, sint_value)
from hypervisor.testing.strategies import (call_codes, call_inputs, connect_port_block, control_words,
                                           create_port_block, post_message_block)

PAGES = 32                       # each child's memory: GPA pages 0..31
SIMP, SIEFP, SINT = 16, 17, 2    # its SynIC pages and the SINT the parent uses
CHILD_PORT, CHILD_EVENT_PORT = 0x10, 0x11      # in each child: the parent's message and event ports
ROOT_PORT = {0: 0x40, 1: 0x41}                 # in the root: each child's message port
CHILD_CONN, CHILD_EVENT_CONN = 0x30, 0x31      # each child's connections to the root
ROOT_CONN = {0: 0x20, 1: 0x120}                # the root's connections to each child (messages; +1 events)


def _child(host: Host, n: int):
    root = host.root
    child = root.create_partition()
    if n == 1:  # B may do everything a root lets a child do: ports and connections of its own too
        root.set_partition_property(child, PartitionProperty.PRIVILEGE_FLAGS, PRIVILEGES_ROOT & ~PRIVILEGES_ROOT_ONLY)
    root.deposit_memory(child, host.root_memory.allocate(8))
    root.initialize_partition(child)
    root.create_vp(child, 0)
    root.map_gpa_pages(child, 0, host.root_memory.allocate(PAGES))
    child.vp(0).set_registers({Register.SIMP: simp_value(SIMP), Register.SIEFP: siefp_value(SIEFP),
                               Register.SCONTROL: 1, Register.SINT2: sint_value(0x32)})
    root.create_port(child, CHILD_PORT, port_type=PortType.MESSAGE, target_sint=SINT, target_vp=0,
                     connection_partition=root)
    root.connect_port(None, ROOT_CONN[n], child, CHILD_PORT)
    root.create_port(child, CHILD_EVENT_PORT, port_type=PortType.EVENT, target_sint=SINT, target_vp=0,
                     base_flag=8, flag_count=8, connection_partition=root)
    root.connect_port(None, ROOT_CONN[n] + 1, child, CHILD_EVENT_PORT, port_type=PortType.EVENT)
    root.create_port(None, ROOT_PORT[n], port_type=PortType.MESSAGE, target_sint=SINT, target_vp=0,
                     connection_partition=child)
    root.connect_port(child, CHILD_CONN, root, ROOT_PORT[n])
    return child


def build():
    host = Host(logical_processors=2, memory="16MiB", seed=7)
    root = host.root
    root.deposit_memory(root, host.root_memory.allocate(6))  # the root's port and two connections per child
    a, b = _child(host, 0), _child(host, 1)
    return host, a, b


def probe(host: Host, a, b, round_: int) -> list:
    """One round of A's fixed probes; returns what A saw."""
    root, vp = host.root, a.vp(0)
    seen = []

    def call(word: int, block: bytes):
        vp.store_input(block)
        a.write(vp.output_gpa, bytes(PAGE_SIZE))
        r = vp.hypercall(word, block)
        seen.append((r.status.name, r.reps_completed, a.read(vp.output_gpa, 64)))

    regs = [Register.RAX, Register.SIMP, Register.SIEFP, Register.SCONTROL, Register.SINT2]
    call(control(CallCode.GET_VP_REGISTERS, rep_count=len(regs)),
         struct.pack("<QIB3s", PARTITION_ID_SELF, 0, 0, bytes(3)) + struct.pack(f"<{len(regs)}I", *regs))
    call(control(CallCode.GET_PARTITION_ID), b"")
    call(control(CallCode.GET_MEMORY_BALANCE), struct.pack("<QQ", PARTITION_ID_SELF, 0))
    for pid in (b.id, root.id):
        call(control(CallCode.GET_VP_REGISTERS, rep_count=1), struct.pack("<QIB3sI", pid, 0, 0, bytes(3), int(Register.RAX)))
        call(control(CallCode.GET_PARTITION_PROPERTY), struct.pack("<QII", pid, int(PartitionProperty.CPU_CAP), 0))
    # to the parent: a message on A's own connection (the 17th unread one is refused, the same way
    # in both hosts), and one on B's connection id, which means nothing coming from A
    call(control(CallCode.POST_MESSAGE), post_message_block(CHILD_CONN, 1, b"probe %d" % round_))
    call(control(CallCode.POST_MESSAGE), post_message_block(ROOT_CONN[1], 1, b"not mine"))
    call(control(CallCode.SIGNAL_EVENT), struct.pack("<IHH", ROOT_CONN[1] + 1, 0, 0))
    # from the parent: a message and an event, then A's SynIC pages as it finds them; it takes the
    # message as Linux does (clear the slot, EOM if something is pending)
    root.post_message(ROOT_CONN[0], int(MessageType.VMBUS), b"to A %d" % round_)
    root.signal_event(ROOT_CONN[0] + 1, round_ % 8)
    seen.append(a.read(SIMP * PAGE_SIZE, PAGE_SIZE))
    seen.append(a.read(SIEFP * PAGE_SIZE, PAGE_SIZE))
    if clear_message_slot(a, SIMP, SINT):
        vp.set_registers({Register.EOM: 0})
    a.write(SIEFP * PAGE_SIZE, bytes(PAGE_SIZE))
    return seen


def a_memory(a) -> bytes:
    return b"".join(a.read(page * PAGE_SIZE, PAGE_SIZE) for page in range(PAGES))


@st.composite
def b_behaviour(draw):
    """B's private bytes, then a few rounds of what B does between A's probes: stores into its
    own pages and raw hypercalls of any kind."""
    fill = draw(st.lists(st.tuples(st.integers(0, PAGES * PAGE_SIZE - 1), st.binary(min_size=1, max_size=64)),
                         min_size=1, max_size=8))
    rounds = []
    for _ in range(draw(st.integers(1, 4))):
        steps = []
        for _ in range(draw(st.integers(0, 4))):
            kind = draw(st.sampled_from(["store", "own", "own", "any"]))
            if kind == "store":
                steps.append(("store", draw(st.integers(0, PAGES * PAGE_SIZE - 1)), draw(st.binary(min_size=1, max_size=64))))
            elif kind == "own":
                steps.append(("call", *draw(b_own_calls())))
            else:
                code = draw(st.one_of(st.sampled_from(list(CallCode)), call_codes()))
                word = draw(control_words(code))
                block = draw(call_inputs(code, partition_ids=[1, 2, 3], pages=list(range(PAGES)),
                                         rep_count=min(word >> 32 & 0xFFF, 64),
                                         port_ids=[CHILD_PORT, CHILD_EVENT_PORT, 0x40, 0x41],
                                         connection_ids=[CHILD_CONN, 0x20, 0x21, 0x120, 0x121]))
                steps.append(("call", word, block))
        rounds.append(steps)
    return fill, rounds


@st.composite
def b_own_calls(draw):
    """Well-formed calls B is allowed to make, on its own objects (so that most succeed)."""
    what = draw(st.sampled_from(["post", "signal", "registers", "port", "connect", "balance"]))
    if what == "post":
        payload = draw(st.binary(max_size=240))
        return control(CallCode.POST_MESSAGE), post_message_block(CHILD_CONN, draw(st.integers(1, 0x7FFF_FFFF)), payload)
    if what == "signal":
        return control(CallCode.SIGNAL_EVENT), struct.pack("<IHH", draw(st.sampled_from([CHILD_CONN, 0x50])),
                                                           draw(st.integers(0, 15)), 0)
    if what == "registers":
        values = draw(st.sampled_from([
            {Register.SINT2: sint_value(0x32, masked=True)}, {Register.SINT2: sint_value(0x32)},
            {Register.SCONTROL: 0}, {Register.SCONTROL: 1}, {Register.EOM: 0},
            {Register.SIMP: simp_value(draw(st.integers(2, PAGES - 1)))}, {Register.SIMP: simp_value(SIMP)},
            {Register.RAX: draw(st.integers(0, 2**64 - 1))}]))
        block = struct.pack("<QIB3s", PARTITION_ID_SELF, 0, 0, bytes(3)) + b"".join(
            struct.pack("<IIQQQ", int(k), 0, 0, v, 0) for k, v in values.items())
        return control(CallCode.SET_VP_REGISTERS, rep_count=len(values)), block
    if what == "port":
        event = draw(st.booleans())
        return control(CallCode.CREATE_PORT), create_port_block(
            PARTITION_ID_SELF, 0x50 + draw(st.integers(0, 3)), PARTITION_ID_SELF,
            port_type=int(PortType.EVENT if event else PortType.MESSAGE), sint=SINT, vp=0,
            base_flag=16 if event else 0, flag_count=8 if event else 0)
    if what == "connect":
        return control(CallCode.CONNECT_PORT), connect_port_block(
            PARTITION_ID_SELF, 0x50, PARTITION_ID_SELF, 0x50 + draw(st.integers(0, 3)),
            port_type=int(draw(st.sampled_from([PortType.MESSAGE, PortType.EVENT]))))
    return control(CallCode.GET_MEMORY_BALANCE), struct.pack("<QQ", PARTITION_ID_SELF, 0)


def trace(behaviour) -> tuple:
    host, a, b = build()
    assert (host.root.id, a.id, b.id) == (1, 2, 3)
    fill, rounds = behaviour
    for gpa, data in fill:
        b.write(gpa, data[:PAGES * PAGE_SIZE - gpa])
    seen = []
    for n, steps in enumerate(rounds):
        for step in steps:
            if step[0] == "store":
                _, gpa, data = step
                b.write(gpa, data[:PAGES * PAGE_SIZE - gpa])
            else:
                b.vp(0).hypercall(step[1], step[2])
        seen.append(probe(host, a, b, n))
    return seen, a_memory(a)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(b_behaviour())
def test_a_childs_observations_do_not_depend_on_another_childs_memory_or_calls(behaviour):
    fill, rounds = behaviour
    quiet = ([], [[] for _ in rounds])
    assert trace(behaviour) == trace(quiet)


def test_the_observations_can_tell_a_difference():
    """The trace is sharp: what the parent sends A shows in it."""
    host, a, b = build()
    first = probe(host, a, b, 0)
    host2, a2, b2 = build()
    host2.root.post_message(ROOT_CONN[0], int(MessageType.VMBUS), b"extra")
    assert probe(host2, a2, b2, 0) != first
