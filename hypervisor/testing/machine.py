"""A hypothesis state machine over the hypervisor: random partition management by the root,
random raw hypercalls (valid and malformed) from random partitions, unprivileged children
included, ports, connections, messages and events between them, and the isolation invariants
checked after every step.

Use it as it is (`TestHypervisor = HypervisorMachine.TestCase`) or subclass it to add rules of
your own; every rule you add is followed by the same invariant checks. Issue hypercalls of your own
through `HypervisorMachine.issue` to have them checked (INV-ATOMIC, INV-PRIV, the port-call status
oracle) and to keep the machine's port model up to date.
"""
from __future__ import annotations

import struct
from collections import defaultdict, deque
from dataclasses import dataclass, field

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from hypervisor import _binding
from hypervisor.abi import (MAP_RWX, PAGE_SIZE, PARTITION_ID_SELF, PRIVILEGES_GUEST_DEFAULT, CallCode, Control,
                            HostVisibility, MapFlags, PartitionProperty, PartitionState, Privilege, Register, VP_INDEX_SELF, control)
from hypervisor.host import Host
from hypervisor.partition import HypercallResult, Partition, VirtualProcessor
from hypervisor.status import HvError, HvStatus
from hypervisor.synic import (EVENT_FLAGS_BYTES, MESSAGE_FLAG_PENDING, MESSAGE_SIZE, PAYLOAD_MAX,
                              PORT_MESSAGE_BUFFERS, SINT_COUNT, SINT_MASKED, SCONTROL_ENABLE, siefp_value,
                              simp_value, sint_value)
from hypervisor.testing import strategies as hs
from hypervisor.testing.invariants import InvariantViolation, PortFacts, Tables, check_all, check_messages

MAX_CHILDREN = 4
MSG, EVT = hs.PORT_TYPE_MESSAGE, hs.PORT_TYPE_EVENT
PORT_CALLS = (CallCode.CREATE_PORT, CallCode.CONNECT_PORT, CallCode.DELETE_PORT, CallCode.DISCONNECT_PORT,
              CallCode.POST_MESSAGE, CallCode.SIGNAL_EVENT)
VMBUS_SINT = 2
_HEADER = struct.Struct("<IBBHQ")  # HV_MESSAGE header: type, size, flags, reserved, origin
_TYPE_HV = 0x80000000
_PAGE_ENABLE = 1
_RW = MapFlags.READABLE | MapFlags.WRITABLE


def well_formed(ctl_word: int) -> bool:
    """True if the control word passes the entry point's encoding checks (so a privilege check
    is the next thing that can fail)."""
    ctl = Control.decode(ctl_word)
    shape = _binding.hv_call_shape(ctl.code)
    if shape is None or ctl.reserved or ctl.nested or ctl.varhead_qwords:
        return False
    if shape["rep"]:
        return ctl.rep_count > 0 and ctl.rep_start < ctl.rep_count
    return ctl.rep_count == 0 and ctl.rep_start == 0


def _violation(name: str, message: str) -> InvariantViolation:
    return InvariantViolation(f"{name}: {message}")


def _expected_message(mtype: int, size: int, origin: int, payload: bytes) -> bytes:
    """The 256-byte HV_MESSAGE a post must produce: the header, PayloadSize bytes, zeros."""
    return _HEADER.pack(mtype, size, 0, 0, origin) + payload[:size].ljust(PAYLOAD_MAX, b"\0")


def _without_pending(slot: bytes) -> bytes:
    """A slot with MessagePending cleared (the hypervisor may set it at any time after delivery)."""
    return slot[:5] + bytes([slot[5] & ~MESSAGE_FLAG_PENDING & 0xFF]) + slot[6:]


# ---- the machine's model of ports and connections -----------------------------------------------

@dataclass(eq=False)
class ModelPort:
    """A port as the machine created it, and the messages posted to it not yet in a SIM slot."""

    owner: int
    id: int
    type: int
    vp: int
    sint: int
    base: int
    count: int
    connection_partition: int
    pending: deque = field(default_factory=deque)  # (sender id, expected 256-byte message), oldest first

    @property
    def facts(self) -> PortFacts:
        return PortFacts(self.type, self.vp, self.sint)


@dataclass(eq=False)
class ModelConnection:
    type: int
    port: ModelPort | None  # None once its port is gone: the connection dangles for good


class HypervisorMachine(RuleBasedStateMachine):
    """Random hypercalls against a small host, checking after every step INV-OWN, INV-REACH,
    INV-HV, INV-QUEUE, INV-TEARDOWN, INV-ACCOUNT and INV-MSG, and after every hypercall INV-PRIV,
    INV-ATOMIC (a failed hypercall leaves the state digest unchanged) and, for the six port calls,
    the status the model predicts (which includes A10: a connection id the caller does not own
    gives INVALID_CONNECTION_ID, whoever owns it)."""

    #: Host settings; a small rep budget makes rep calls continue often.
    host_memory = "2MiB"
    reps_per_call = 5

    def __init__(self) -> None:
        super().__init__()
        self.host = Host(logical_processors=2, memory=self.host_memory, seed=0,
                         reps_per_call=self.reps_per_call)
        self.root = self.host.root
        self.children: list[Partition] = []
        # the port model
        self.ports: dict[tuple[int, int], ModelPort] = {}
        self.connections: dict[tuple[int, int], ModelConnection] = {}
        self.slots: dict[tuple[int, int, int], bytes] = {}  # (pid, SIM GPA page, SINT) -> last delivery
        self.occupied: dict[tuple[int, int, int], int] = {}  # slots holding an untaken message -> SPA frame
        self.simp_before: dict[tuple[int, int], int] = {}    # SIMP of VPs whose registers this step set
        self.known: set[int] = {self.root.id}                # partitions the model has seen alive
        self.vp_masks: dict[int, int] = {}
        self.vp_ever: dict[int, set[int]] = defaultdict(set)
        self.synic_vps: set[tuple[int, int]] = set()         # VPs that may hold messages: scanned
        self.untrusted: dict[int, set[int]] = defaultdict(set)  # GPA pages guest code wrote / SIEF pages
        self.root_synic_pages: dict[int, tuple[int, int]] = {}
        self.child_synic_pages: dict[tuple[int, int], tuple[int, int]] = {}
        self.sequence = 0
        self._tables: Tables | None = None  # the core's tables while the invariants read them

    # ---- helpers ------------------------------------------------------------------------------
    def _live(self) -> list[Partition]:
        ids = set(self.host.introspect.partition_ids())
        self.children = [c for c in self.children if c.id in ids]
        return self.children

    def _try(self, fn, *args, **kw):
        """Run a typed wrapper; an HvError is a legitimate outcome of a random operation."""
        try:
            return fn(*args, **kw)
        except HvError:
            return None

    def _info(self, p: Partition | int) -> dict | None:
        if self._tables is not None:
            return self._tables.info(p if isinstance(p, int) else p.id)
        return self.host.introspect.partition_info(p)

    def _reach(self, pid: int) -> dict[int, tuple[int, int]]:
        if self._tables is not None:
            return self._tables.reach_map(pid)
        return self.host.introspect.reach(pid)

    def _callers(self) -> list[Partition]:
        """Partitions whose VPs can issue hypercalls: the root and initialized children with VPs."""
        out = [self.root]
        for c in self._live():
            info = self._info(c)
            if info["vp_mask"] and info["state"] == PartitionState.INITIALIZED:
                out.append(c)
        return out

    def _everyone(self) -> list[Partition]:
        return [self.root] + self._live()

    # ---- issuing a checked hypercall ----------------------------------------------------------
    def issue(self, vp: VirtualProcessor, ctl: int, inp: bytes) -> HypercallResult:
        """Issue one raw hypercall the way a guest does (store the input block, then call), and
        check it: a failure leaves the digest unchanged (INV-ATOMIC), a missing privilege gives
        ACCESS_DENIED (INV-PRIV), a port call returns what the model predicts; a successful port
        call updates the model."""
        caller = vp.partition
        decoded = Control.decode(ctl)
        if not decoded.fast:
            vp.store_input(inp)  # the guest's own stores: not part of the hypercall
            # A block longer than the rest of its page runs on over the next pages, a SIM page
            # perhaps: slots there hold guest bytes now (the call itself fails INVALID_ALIGNMENT).
            first, last = vp.input_gpa // PAGE_SIZE, (vp.input_gpa + max(len(inp), 1) - 1) // PAGE_SIZE
            self.untrusted[caller.id].update(range(first + 1, last + 1))
        predicted = self._predict(vp, ctl, inp) if decoded.code in PORT_CALLS else None
        if decoded.code == CallCode.SET_VP_REGISTERS and len(inp) >= 16:
            # An EOM may deliver into the SIM page and a later element of the batch move it: the
            # delivery check must look where the SIM page was before the call.
            pid, index = struct.unpack_from("<QI", inp)
            pid = caller.id if pid == PARTITION_ID_SELF else pid
            index = vp.index if index == VP_INDEX_SELF and pid == caller.id else index
            if self._has_vp(pid, index) and (pid, index) not in self.simp_before:
                regs = self._registers(pid, index, [Register.SIMP])
                if regs is not None:
                    self.simp_before[pid, index] = regs[0]
        if not decoded.fast:
            vp.store_input(inp)  # again: the root's register reads for the prediction use its VP 0 page
        before = self.host.introspect.digest()
        result = vp.hypercall(ctl, inp if decoded.fast else b"")
        if not result.ok:
            assert self.host.introspect.digest() == before, (
                f"INV-ATOMIC: a failed hypercall ({result.status!r}) changed the state")
        shape = _binding.hv_call_shape(decoded.code)
        if well_formed(ctl) and shape["privilege"] and not caller.privileges & shape["privilege"]:
            assert result.status == HvStatus.ACCESS_DENIED, (
                f"INV-PRIV: a call without its privilege returned {result.status!r}")
        if decoded.code in PORT_CALLS:
            if predicted is None:
                assert not result.ok, f"a malformed {CallCode(decoded.code).name} control word {ctl:#x} succeeded"
            else:
                allowed, apply = predicted
                if result.status not in allowed:
                    S = HvStatus
                    messaging = decoded.code in (CallCode.POST_MESSAGE, CallCode.SIGNAL_EVENT)
                    name = ("A10" if messaging and allowed == {S.INVALID_CONNECTION_ID} else
                            "INV-QUEUE" if S.INSUFFICIENT_BUFFERS in allowed | {result.status} else "ORACLE")
                    raise _violation(name, f"{CallCode(decoded.code).name} from partition {caller.id} VP "
                                           f"{vp.index} returned {result.status!r}, the model allows "
                                           f"{sorted(S(s).name for s in allowed)}")
                if result.ok and apply is not None:
                    apply()
        return result

    # ---- the status oracle for port calls -----------------------------------------------------
    def _target(self, caller_id: int, pid: int) -> int | None:
        """The partition a port call names: the caller itself (SELF or its id) or a child of it."""
        if pid in (PARTITION_ID_SELF, caller_id):
            return caller_id
        info = self._info(pid)
        return pid if info and info["parent_id"] == caller_id else None

    def _state(self, pid: int) -> int:
        return self._info(pid)["state"]

    def _has_vp(self, pid: int, vp: int) -> bool:
        info = self._info(pid)
        return bool(info) and vp < 64 and bool(info["vp_mask"] >> vp & 1)

    def _registers(self, pid: int, vp: int, names: list[int]) -> list[int] | None:
        """A VP's registers as the root reads them (None if the root cannot now)."""
        try:
            return self.root.get_vp_registers(None if pid == self.root.id else pid, vp, names)
        except HvError:
            return None

    def _page_rw(self, pid: int, gpfn: int) -> bool:
        """Whether GPA page `gpfn` is mapped readable and writable in partition `pid` (what the
        SynIC needs of its pages)."""
        if pid == self.root.id:
            if gpfn >= self.host.pages:
                return False
            if self.host.introspect.owner_codes(gpfn, 1)[0] == self._info(pid)["slot"]:
                return True
            children = [c for c in self.host.introspect.partition_ids() if c != pid]
            # A child's page is the root's if granted, or shown read-write (host visibility).
            return (any(gpfn in self.host.grants.granted_pages(c) for c in children)
                    or any(self.host.introspect.reach(c).get(gpa, (None,))[0] == gpfn
                           for c in children for gpa, vis in self.host.grants.host_visible(c).items()
                           if vis == HostVisibility.READ_WRITE))
        entry = self._reach(pid).get(gpfn)
        return entry is not None and entry[1] & _RW == _RW

    def _synic_ok(self, port: ModelPort, event: bool) -> bool | None:
        """hv_synic_check_target as the model sees it: SynIC enabled, SINT unmasked and, for an
        event, the SIEF page enabled and mapped read/write. None: the registers are unreadable."""
        regs = self._registers(port.owner, port.vp, [Register.SCONTROL, Register.SINT0 + port.sint, Register.SIEFP])
        if regs is None:
            return None
        scontrol, sint, siefp = regs
        if not scontrol & SCONTROL_ENABLE or sint & SINT_MASKED:
            return False
        if event:
            return bool(siefp & _PAGE_ENABLE) and self._page_rw(port.owner, siefp >> 12)
        return True

    def _predict(self, vp: VirtualProcessor, ctl: int, inp: bytes):
        """(statuses the call may return, what to do to the model if it succeeds), or None for a
        malformed control word (the entry point's own checks, covered by the other oracles)."""
        if not well_formed(ctl):
            return None
        caller = vp.partition
        decoded = Control.decode(ctl)
        shape = _binding.hv_call_shape(decoded.code)
        S = HvStatus
        if shape["privilege"] and not caller.privileges & shape["privilege"]:
            return {S.ACCESS_DENIED}, None
        if decoded.fast and not shape["fast_ok"]:
            return {S.INVALID_HYPERCALL_INPUT}, None
        size = (shape["header_size"] + 7) & ~7
        if decoded.fast:
            b = bytes(inp).ljust(16, b"\0")[:16].ljust(size, b"\0")
        else:
            try:
                b = caller.read(vp.input_gpa, size)  # what the hypervisor will find there
            except MemoryError:
                return {S.INVALID_ALIGNMENT}, None
        handler = {CallCode.CREATE_PORT: self._predict_create, CallCode.CONNECT_PORT: self._predict_connect,
                   CallCode.DELETE_PORT: self._predict_delete, CallCode.DISCONNECT_PORT: self._predict_disconnect,
                   CallCode.POST_MESSAGE: self._predict_post, CallCode.SIGNAL_EVENT: self._predict_signal}
        return handler[decoded.code](caller.id, b)

    def _predict_create(self, caller: int, b: bytes):
        S = HvStatus
        port_pid, port_id, vtl, min_vtl, rsvdz, conn_pid = struct.unpack_from("<QIBBHQ", b, 0)
        ptype, info_rsvd, sint, vp, base, count, info_rsvdz = struct.unpack_from("<IIIIHHI", b, 24)
        (proximity,) = struct.unpack_from("<Q", b, 48)
        if vtl or min_vtl or rsvdz or info_rsvd or info_rsvdz:
            return {S.INVALID_PARAMETER}, None
        if ptype == MSG:
            if base or count:
                return {S.INVALID_PARAMETER}, None
        elif ptype == EVT:
            if count == 0 or base + count > hs.EVENT_FLAGS_COUNT:
                return {S.INVALID_PARAMETER}, None
        else:
            return {S.INVALID_PARAMETER}, None
        if sint >= SINT_COUNT:
            return {S.INVALID_PARAMETER}, None
        if proximity:
            return {S.INVALID_PROXIMITY_DOMAIN_INFO}, None
        owner, cp = self._target(caller, port_pid), self._target(caller, conn_pid)
        if owner is None or cp is None:
            return {S.INVALID_PARTITION_ID}, None
        if self._state(owner) != PartitionState.INITIALIZED:
            return {S.INVALID_PARTITION_STATE}, None
        if not self._has_vp(owner, vp):
            return {S.INVALID_VP_INDEX}, None
        if port_id & ~hs.PORT_ID_MASK or (owner, port_id) in self.ports:
            return {S.INVALID_PORT_ID}, None
        if self._info(owner)["pool_free"] < 1:
            return {S.INSUFFICIENT_MEMORY}, None  # every port costs a page of its owner's pool

        def apply() -> None:
            self.ports[owner, port_id] = ModelPort(owner, port_id, ptype, vp, sint, base if ptype == EVT else 0,
                                                   count if ptype == EVT else 0, cp)
            self.synic_vps.add((owner, vp))
        return {S.SUCCESS}, apply

    def _predict_connect(self, caller: int, b: bytes):
        S = HvStatus
        conn_pid, conn_id, vtl, rsvdz, port_pid, port_id, rsvdz2 = struct.unpack_from("<QIB3sQII", b, 0)
        ptype, info_rsvd, monitor, t0, t1 = struct.unpack_from("<IIQQQ", b, 32)
        (proximity,) = struct.unpack_from("<Q", b, 64)
        if vtl or any(rsvdz) or rsvdz2 or info_rsvd or monitor or t0 or t1:
            return {S.INVALID_PARAMETER}, None
        if proximity:
            return {S.INVALID_PROXIMITY_DOMAIN_INFO}, None
        cp, owner = self._target(caller, conn_pid), self._target(caller, port_pid)
        if cp is None or owner is None:
            return {S.INVALID_PARTITION_ID}, None
        if self._state(cp) != PartitionState.INITIALIZED or self._state(owner) != PartitionState.INITIALIZED:
            return {S.INVALID_PARTITION_STATE}, None
        if conn_id & ~hs.PORT_ID_MASK or (cp, conn_id) in self.connections:
            return {S.INVALID_CONNECTION_ID}, None
        port = self.ports.get((owner, port_id))
        if port is None:
            return {S.INVALID_PORT_ID}, None
        if port.connection_partition != cp:
            return {S.ACCESS_DENIED}, None
        if ptype != port.type:
            return {S.INVALID_PARAMETER}, None
        if self._info(cp)["pool_free"] < 1:
            return {S.INSUFFICIENT_MEMORY}, None  # a connection costs a page of the sender's pool

        def apply() -> None:
            self.connections[cp, conn_id] = ModelConnection(port.type, port)
        return {S.SUCCESS}, apply

    def _predict_delete(self, caller: int, b: bytes):
        S = HvStatus
        port_pid, port_id, padding = struct.unpack_from("<QII", b, 0)
        if padding:
            return {S.INVALID_PARAMETER}, None
        owner = self._target(caller, port_pid)
        if owner is None:
            return {S.INVALID_PARTITION_ID}, None
        if self._state(owner) != PartitionState.INITIALIZED:
            return {S.INVALID_PARTITION_STATE}, None
        port = self.ports.get((owner, port_id))
        if port is None:
            return {S.INVALID_PORT_ID}, None

        def apply() -> None:
            del self.ports[owner, port_id]
            port.pending.clear()  # its queued messages go with it
            for conn in self.connections.values():
                if conn.port is port:
                    conn.port = None
        return {S.SUCCESS}, apply

    def _predict_disconnect(self, caller: int, b: bytes):
        S = HvStatus
        conn_pid, conn_id, padding = struct.unpack_from("<QII", b, 0)
        if padding:
            return {S.INVALID_PARAMETER}, None
        cp = self._target(caller, conn_pid)
        if cp is None:
            return {S.INVALID_PARTITION_ID}, None
        if self._state(cp) != PartitionState.INITIALIZED:
            return {S.INVALID_PARTITION_STATE}, None
        if (cp, conn_id) not in self.connections:
            return {S.INVALID_CONNECTION_ID}, None

        def apply() -> None:
            del self.connections[cp, conn_id]  # messages it posted stay queued (TLFS)
        return {S.SUCCESS}, apply

    def _resolve(self, caller: int, conn_id: int, ptype: int):
        """The connection lookup PostMessage and SignalEvent share: (status, port)."""
        conn = self.connections.get((caller, conn_id))
        if conn is None or conn.type != ptype:
            # A10: the same answer whether or not another partition owns this id
            return HvStatus.INVALID_CONNECTION_ID, None
        if conn.port is None or self._state(conn.port.owner) != PartitionState.INITIALIZED:
            return HvStatus.INVALID_PORT_ID, None  # gone, or its partition finalized: it takes nothing
        if not self._has_vp(conn.port.owner, conn.port.vp):
            return HvStatus.INVALID_VP_INDEX, None
        return None, conn.port

    def _predict_post(self, caller: int, b: bytes):
        S = HvStatus
        conn_id, rsvdz, mtype, size = struct.unpack_from("<IIII", b, 0)
        if rsvdz or mtype == 0 or mtype & _TYPE_HV or size > PAYLOAD_MAX:
            return {S.INVALID_PARAMETER}, None
        status, port = self._resolve(caller, conn_id, MSG)
        if status is not None:
            return {status}, None
        ok = self._synic_ok(port, event=False)
        try:
            undelivered = _binding.hv_port_undelivered(self.host._h, port.owner, port.id)
        except LookupError:
            raise _violation("INV-ACCOUNT", f"partition {port.owner} has no port {port.id:#x}, which it was given "
                                            f"and never lost") from None
        if ok is False:
            return {S.INVALID_SYNIC_STATE}, None
        if undelivered >= PORT_MESSAGE_BUFFERS:
            allowed = {S.INSUFFICIENT_BUFFERS}  # INV-QUEUE: never a 17th undelivered message
        else:
            allowed = {S.SUCCESS}
        if ok is None:
            allowed |= {S.INVALID_SYNIC_STATE}
        message = _expected_message(mtype, size, port.id, b[16:16 + size])

        def apply() -> None:
            port.pending.append((caller, message))
            self._check_posted(port)
        return allowed, apply

    def _check_posted(self, port: ModelPort) -> None:
        """Right after a successful post with the receiver's SIM page usable, its slot holds a
        message (this one, or an earlier one that kept it busy), and if anything is still queued
        behind it, MessagePending is set, so a Linux guest knows to write EOM."""
        regs = self._registers(port.owner, port.vp, [Register.SIMP])
        if regs is None or not regs[0] & _PAGE_ENABLE or not self._page_rw(port.owner, regs[0] >> 12):
            return
        slot = self._slot_bytes(port.owner, regs[0] >> 12, port.sint)
        queued = _binding.hv_synic_queue_length(self.host._h, port.owner, port.vp, port.sint)
        where = f"partition {port.owner} VP {port.vp} SINT {port.sint}"
        if slot is None or not any(slot[:4]):
            raise _violation("INV-QUEUE", f"{where}: a message was posted, the SIM page is usable, its slot is empty")
        if queued and not slot[5] & MESSAGE_FLAG_PENDING:
            raise _violation("INV-QUEUE", f"{where}: {queued} messages queued behind a full slot, MessagePending "
                                          f"is clear")

    def _predict_signal(self, caller: int, b: bytes):
        S = HvStatus
        conn_id, flag, rsvdz = struct.unpack_from("<IHH", b, 0)
        if rsvdz:
            return {S.INVALID_PARAMETER}, None
        status, port = self._resolve(caller, conn_id, EVT)
        if status is not None:
            return {status}, None
        if flag >= port.count:
            return {S.INVALID_PARAMETER}, None
        ok = self._synic_ok(port, event=True)
        if ok is False:
            return {S.INVALID_SYNIC_STATE}, None
        allowed = {S.SUCCESS} | ({S.INVALID_SYNIC_STATE} if ok is None else set())
        regs = self._registers(port.owner, port.vp, [Register.SIEFP])
        if regs is None:
            return allowed, None
        gpfn = regs[0] >> 12
        owner = self.host.partition(port.owner)
        area = gpfn * PAGE_SIZE + port.sint * EVENT_FLAGS_BYTES
        try:
            before = owner.read(area, EVENT_FLAGS_BYTES)
        except MemoryError:
            return allowed, None
        bit = port.base + flag

        def apply() -> None:
            self.untrusted[port.owner].add(gpfn)  # flags live there now: no SIM page to check
            after = owner.read(area, EVENT_FLAGS_BYTES)
            want = bytearray(before)
            want[bit // 8] |= 1 << bit % 8
            if after != bytes(want):
                raise _violation("INV-MSG", f"SignalEvent on connection {conn_id:#x} of partition {caller} should "
                                            f"set flag {bit} of SINT {port.sint} of partition {port.owner} VP "
                                            f"{port.vp} and nothing else")
        return allowed, apply

    # ---- root-side management -------------------------------------------------------------------
    @initialize()
    def start(self) -> None:
        check_all(self.host)

    @precondition(lambda self: len(self._live()) < MAX_CHILDREN)
    @rule()
    def create_child(self) -> None:
        self.children.append(self.root.create_partition())

    @precondition(lambda self: self._live())
    @rule(data=st.data(), n=st.integers(1, 12))
    def deposit(self, data, n: int) -> None:
        child = data.draw(st.sampled_from(self.children))
        if self.host.root_memory.available >= n:
            # Pages a refused deposit leaves with the root are simply not handed out again.
            self._try(self.root.deposit_memory, child, self.host.root_memory.allocate(n))

    @precondition(lambda self: self._live())
    @rule(data=st.data())
    def initialize_child(self, data) -> None:
        self._try(self.root.initialize_partition, data.draw(st.sampled_from(self.children)))

    @precondition(lambda self: self._live())
    @rule(data=st.data(), index=st.integers(0, 3))
    def create_vp(self, data, index: int) -> None:
        self._try(self.root.create_vp, data.draw(st.sampled_from(self.children)), index)

    @precondition(lambda self: self._live())
    @rule(data=st.data(), gpa=st.integers(0, 1100), n=st.integers(1, 24),
          flags=st.sampled_from([MAP_RWX, MapFlags.READABLE, MapFlags.READABLE | MapFlags.WRITABLE]))
    def map_pages(self, data, gpa: int, n: int, flags: int) -> None:
        child = data.draw(st.sampled_from(self.children))
        if self.host.root_memory.available >= n:
            self._try(self.root.map_gpa_pages, child, gpa, self.host.root_memory.allocate(n), flags)

    @precondition(lambda self: self._live())
    @rule(data=st.data())
    def unmap_pages(self, data) -> None:
        child = data.draw(st.sampled_from(self.children))
        reach = sorted(self.host.introspect.reach(child))
        if reach:
            start = data.draw(st.sampled_from(reach))
            self._try(self.root.unmap_gpa_pages, child, start, data.draw(st.integers(1, 8)))

    @precondition(lambda self: self._live())
    @rule(data=st.data(), n=st.integers(1, 4))
    def withdraw(self, data, n: int) -> None:
        pages = self._try(self.root.withdraw_memory, data.draw(st.sampled_from(self.children)), n)
        if pages:
            self.host.root_memory.release(pages)

    @precondition(lambda self: self._live())
    @rule(data=st.data(), finalize_first=st.booleans())
    def delete_child(self, data, finalize_first: bool) -> None:
        child = data.draw(st.sampled_from(self.children))
        if finalize_first:
            self._try(self.root.finalize_partition, child)
        self._try(self.root.delete_partition, child)

    @precondition(lambda self: self._live())
    @rule(data=st.data(), prop=st.sampled_from(list(PartitionProperty)), value=st.integers(0, 12000))
    def set_property(self, data, prop: int, value: int) -> None:
        self._try(self.root.set_partition_property, data.draw(st.sampled_from(self.children)), prop, value)

    @precondition(lambda self: self._live())
    @rule(data=st.data(), gpa=st.integers(0, 1100), payload=st.binary(min_size=1, max_size=64))
    def child_writes_memory(self, data, gpa: int, payload: bytes) -> None:
        child = data.draw(st.sampled_from(self.children))
        try:
            child.write(gpa * 4096 + 8, payload)
        except MemoryError:
            pass
        else:
            self.untrusted[child.id].add(gpa)  # guest bytes: a SIM slot there proves nothing

    # ---- grants (the core's half of VMBus GPADLs) --------------------------------------------------
    @precondition(lambda self: self._live())
    @rule(data=st.data(), grant_id=st.integers(0, 5), n=st.integers(1, 6))
    def grant_pages(self, data, grant_id: int, n: int) -> None:
        child = data.draw(st.sampled_from(self.children))
        mapped = sorted(self.host.introspect.reach(child))
        pool = mapped + [data.draw(st.integers(0, 2000))]  # sometimes a page it does not have
        pages = data.draw(st.lists(st.sampled_from(pool), min_size=1, max_size=n))
        before = self.host.introspect.digest()
        try:
            self.host.grants.create(child, grant_id, pages)
        except HvError:
            assert self.host.introspect.digest() == before, "INV-ATOMIC: a refused grant changed the state"

    @precondition(lambda self: self._live())
    @rule(data=st.data())
    def revoke_grant(self, data) -> None:
        child = data.draw(st.sampled_from(self.children))
        ids = self.host.grants.ids(child)
        if ids:
            self.host.grants.get(child, data.draw(st.sampled_from(ids))).revoke()

    # ---- host visibility (HvCallModifySparseGpaPageHostVisibility) ----------------------------------
    @rule(data=st.data(), n=st.integers(1, 8), start=hs.rarely(4))
    def host_visibility(self, data, n: int, start: bool) -> None:
        """A partition shows or hides pages of its own, with valid and invalid inputs; the model
        predicts the status and, on success, what becomes visible. The parent's reach (own + live
        grants + host-visible pages) is recounted by the invariants after the step."""
        caller = data.draw(st.sampled_from(self._callers()), label="caller")
        vp = data.draw(st.sampled_from(caller.vps), label="vp")
        ids = [p.id for p in self.host.partitions()]
        pid = data.draw(st.one_of(st.just(PARTITION_ID_SELF), st.just(caller.id), st.sampled_from(ids),
                                  st.integers(0, 2**64 - 1)), label="partition id")
        vis = data.draw(st.one_of(st.sampled_from([0, 1, 3]), st.sampled_from([2, 1 << 2 | 1, 1 << 31 | 3])),
                        label="visibility")
        reserved = data.draw(st.sampled_from([0, 0, 0, 1]), label="reserved")
        mapped = sorted(self.host.introspect.reach(caller.id)) if caller.id != self.root.id else []
        page = st.one_of(st.sampled_from(mapped), st.integers(0, 2000)) if mapped else st.integers(0, 2000)
        pages = data.draw(st.lists(page, min_size=n, max_size=n), label="pages")
        first = data.draw(st.integers(0, n - 1), label="rep start") if start else 0
        inp = struct.pack(f"<QII{n}Q", pid, vis, reserved, *pages)
        vp.store_input(inp)
        try:  # the block as the hypervisor will find it in the caller's memory
            seen = caller.read(vp.input_gpa, len(inp)) if vp.input_gpa % PAGE_SIZE + len(inp) <= PAGE_SIZE else None
        except MemoryError:
            seen = None
        end = min(n, first + self.reps_per_call)
        S = HvStatus
        reach = self.host.introspect.reach(caller.id) if caller.id != self.root.id else None
        if seen is None or (reach is not None and not reach.get(vp.input_gpa // PAGE_SIZE, (0, 0))[1] & 1):
            expected = S.INVALID_ALIGNMENT
        else:
            pid, vis, reserved, *pages = struct.unpack(f"<QII{n}Q", seen)
            own = pid in (PARTITION_ID_SELF, caller.id)
            child_of_caller = (self._info(pid) or {}).get("parent_id") == caller.id and pid != caller.id
            if not own:
                expected = S.ACCESS_DENIED if child_of_caller else S.INVALID_PARTITION_ID
            elif caller.id == self.root.id:
                expected = S.ACCESS_DENIED
            elif vis & ~3 or vis == 2 or reserved:
                expected = S.INVALID_PARAMETER
            elif any(g not in reach for g in pages[first:end]):
                expected = S.INVALID_PARAMETER
            else:
                expected = S.SUCCESS
        before = self.host.grants.host_visible(caller.id) if caller.id != self.root.id else {}
        ctl = control(CallCode.MODIFY_SPARSE_GPA_PAGE_HOST_VISIBILITY, rep_count=n, rep_start=first)
        result = self.issue(vp, ctl, inp)
        if result.status != expected or (result.ok and result.reps_completed != end):
            raise _violation("ORACLE", f"ModifySparseGpaPageHostVisibility from partition {caller.id} returned "
                                       f"{result.status!r} after {result.reps_completed} reps, the model expects "
                                       f"{expected.name} after {end}")
        if result.ok:
            want = dict(before)
            for g in pages[first:end]:
                if vis:
                    want[g] = vis
                else:
                    want.pop(g, None)
            if self.host.grants.host_visible(caller.id) != want:
                raise _violation("ORACLE", f"partition {caller.id} shows {self.host.grants.host_visible(caller.id)} "
                                           f"after the call, the model expects {want}")

    # ---- raw hypercalls from anyone ---------------------------------------------------------------
    @rule(data=st.data())
    def raw_hypercall(self, data) -> None:
        caller = data.draw(st.sampled_from(self._callers()), label="caller")
        vp = data.draw(st.sampled_from(caller.vps), label="vp")
        ctl = data.draw(hs.control_words(), label="control")
        decoded = Control.decode(ctl)
        ids = [p.id for p in self.host.partitions()]
        pages = list(range(0, self.host.pages, 7))
        conn_ids = sorted({cid for _, cid in self.connections} | set(hs.PORT_IDS))
        inp = data.draw(hs.call_inputs(decoded.code, partition_ids=ids, pages=pages, rep_count=decoded.rep_count,
                                       connection_ids=conn_ids), label="input")
        self.issue(vp, ctl, inp)

    # ---- ports and connections ------------------------------------------------------------------------
    def _pid_field(self, data, caller: Partition, pid: int) -> int:
        """How a call names partition `pid`: by id, or as SELF when it is the caller."""
        return PARTITION_ID_SELF if pid == caller.id and data.draw(st.booleans(), label="as SELF") else pid

    def _managers(self, privilege: int) -> list[Partition]:
        """Partitions that may manage ports: the root, and children holding `privilege`."""
        return [p for p in self._callers() if p.privileges >> privilege & 1]

    @rule(data=st.data())
    def create_port(self, data) -> None:
        caller = data.draw(st.sampled_from(self._managers(Privilege.CREATE_PORT)), label="caller")
        owner = data.draw(st.sampled_from(self._everyone() if caller.is_root else [caller]), label="owner")
        if owner.is_root and self._info(owner)["pool_free"] == 0 and self.host.root_memory.available >= 2:
            self._try(self.root.deposit_memory, None, self.host.root_memory.allocate(2))
        conn_partition = data.draw(st.sampled_from([p.id for p in self._everyone()] + [0x7777]), label="for")
        vps = [vp.index for vp in owner.vps] if self._info(owner) and self._info(owner)["vp_mask"] else [0]
        ptype = data.draw(st.sampled_from([MSG, MSG, EVT]), label="type")
        count = data.draw(st.integers(1, 16)) if ptype == EVT else 0
        base = data.draw(st.integers(0, hs.EVENT_FLAGS_COUNT - count)) if ptype == EVT else 0
        sint = data.draw(st.integers(0, SINT_COUNT - 1)) if data.draw(hs.rarely(3)) else VMBUS_SINT
        vp = data.draw(st.integers(0, 3)) if data.draw(hs.rarely(4)) else data.draw(st.sampled_from(vps))
        inp = hs.create_port_block(self._pid_field(data, caller, owner.id), data.draw(hs.port_ids(), label="port"),
                                   self._pid_field(data, caller, conn_partition), port_type=ptype, sint=sint, vp=vp,
                                   base_flag=base, flag_count=count)
        self.issue(data.draw(st.sampled_from(caller.vps)), control(CallCode.CREATE_PORT), inp)

    @precondition(lambda self: self.ports)
    @rule(data=st.data())
    def connect_port(self, data) -> None:
        caller = data.draw(st.sampled_from(self._managers(Privilege.CONNECT_PORT)), label="caller")
        port = data.draw(st.sampled_from(sorted(self.ports.values(), key=lambda p: (p.owner, p.id))), label="port")
        cp = data.draw(st.one_of(st.just(port.connection_partition),
                                 st.sampled_from([p.id for p in self._everyone()])), label="connection partition")
        ptype = MSG + EVT - port.type if data.draw(hs.rarely(8), label="wrong type") else port.type
        if cp == self.root.id and self._info(self.root)["pool_free"] == 0 and self.host.root_memory.available >= 2:
            self._try(self.root.deposit_memory, None, self.host.root_memory.allocate(2))
        free = [i for i in hs.PORT_IDS if (cp, i) not in self.connections]
        conn_id = data.draw(hs.port_ids() if not free or data.draw(hs.rarely(4)) else st.sampled_from(free),
                            label="connection")
        inp = hs.connect_port_block(self._pid_field(data, caller, cp), conn_id,
                                    self._pid_field(data, caller, port.owner), port.id, port_type=ptype)
        self.issue(data.draw(st.sampled_from(caller.vps)), control(CallCode.CONNECT_PORT), inp)

    @precondition(lambda self: self.ports)
    @rule(data=st.data(), fast=st.booleans())
    def delete_port(self, data, fast: bool) -> None:
        """Delete a port, often one with messages still queued (they must go with it)."""
        caller = data.draw(st.sampled_from(self._managers(Privilege.CREATE_PORT)), label="caller")
        ports = sorted(self.ports.values(), key=lambda p: (p.owner, p.id))
        busy = [p for p in ports if p.pending]
        port = data.draw(st.sampled_from(busy if busy and data.draw(st.booleans()) else ports), label="port")
        inp = hs.delete_port_block(self._pid_field(data, caller, port.owner), port.id)
        self.issue(data.draw(st.sampled_from(caller.vps)), control(CallCode.DELETE_PORT, fast=fast), inp)

    @precondition(lambda self: self.connections)
    @rule(data=st.data(), fast=st.booleans())
    def disconnect_port(self, data, fast: bool) -> None:
        caller = data.draw(st.sampled_from(self._managers(Privilege.CONNECT_PORT)), label="caller")
        owner, conn_id = data.draw(st.sampled_from(sorted(self.connections)), label="connection")
        inp = hs.disconnect_port_block(self._pid_field(data, caller, owner), conn_id)
        self.issue(data.draw(st.sampled_from(caller.vps)), control(CallCode.DISCONNECT_PORT, fast=fast), inp)

    @rule(data=st.data(), ptype=st.sampled_from([MSG, EVT]), uses=st.integers(0, 3))
    def wire(self, data, ptype: int, uses: int) -> None:
        """The root gives partition B a connection to a new port of partition A (the root or an
        initialized child with VPs; A may be B): CreatePort, then ConnectPort, valid inputs; then
        B uses it `uses` times (posts, or signals a flag at or around the edges of the port's)."""
        ready = [p for p in self._everyone()
                 if self._info(p)["state"] == PartitionState.INITIALIZED and self._info(p)["vp_mask"]]
        owner = data.draw(st.sampled_from(ready), label="port partition")
        peer = data.draw(st.sampled_from(ready), label="connection partition")
        # The port costs a page of the owner's pool and the connection one of the peer's.
        if (owner.is_root or peer.is_root) and self._info(self.root)["pool_free"] < 2 \
                and self.host.root_memory.available >= 2:
            self._try(self.root.deposit_memory, None, self.host.root_memory.allocate(2))
        free_ports = [i for i in hs.PORT_IDS if (owner.id, i) not in self.ports]
        free_conns = [i for i in hs.PORT_IDS if (peer.id, i) not in self.connections]
        if not free_ports or not free_conns:
            return
        port_id = data.draw(st.sampled_from(free_ports), label="port id")
        count = data.draw(st.integers(1, 16)) if ptype == EVT else 0
        base = data.draw(st.integers(0, hs.EVENT_FLAGS_COUNT - count)) if ptype == EVT else 0
        sint = data.draw(st.integers(0, SINT_COUNT - 1)) if data.draw(hs.rarely(4)) else VMBUS_SINT
        vp = data.draw(st.sampled_from([v.index for v in owner.vps]), label="target vp")
        created = self.issue(self.root.vp(0), control(CallCode.CREATE_PORT),
                             hs.create_port_block(owner.id, port_id, peer.id, port_type=ptype, sint=sint, vp=vp,
                                                  base_flag=base, flag_count=count))
        if not created.ok:
            return
        conn_id = data.draw(st.sampled_from(free_conns), label="connection id")
        connected = self.issue(self.root.vp(0), control(CallCode.CONNECT_PORT),
                               hs.connect_port_block(peer.id, conn_id, owner.id, port_id, port_type=ptype))
        if not connected.ok or peer not in self._callers():
            return
        for _ in range(uses):
            vp = data.draw(st.sampled_from(peer.vps), label="vp")
            if ptype == MSG:
                self.issue(vp, control(CallCode.POST_MESSAGE),
                           hs.post_message_block(conn_id, hs.MESSAGE_TYPE_VMBUS, self._next_payload(data, 24)))
            else:
                flag = data.draw(st.sampled_from(sorted({0, count - 1, count, count + 1})), label="flag")
                self.issue(vp, control(CallCode.SIGNAL_EVENT, fast=True), hs.signal_event_block(conn_id, flag))

    # ---- messages and events ----------------------------------------------------------------------------
    def _connection_id(self, data, caller: Partition, ptype: int) -> int:
        """Mostly one of the caller's own connections of that type; else one of another
        partition's (the A10 case), or any id."""
        own = sorted(cid for (pid, cid), c in self.connections.items() if pid == caller.id and c.type == ptype)
        others = sorted(cid for (pid, cid) in self.connections if pid != caller.id)
        kind = data.draw(st.integers(0, 6), label="whose connection")
        if own and kind <= 3:
            return data.draw(st.sampled_from(own), label="own connection")
        if others and kind <= 5:
            return data.draw(st.sampled_from(others), label="another's connection")
        return data.draw(hs.port_ids(), label="connection id")

    def _next_payload(self, data, max_size: int = PAYLOAD_MAX) -> bytes:
        """A payload that starts with a sequence number, so every message is told apart."""
        self.sequence += 1
        return struct.pack("<I", self.sequence) + data.draw(st.binary(max_size=max_size - 4), label="payload")

    def _sender(self, data, ptype: int) -> Partition:
        """A caller, most often one that owns a connection of that type."""
        callers = self._callers()
        senders = [p for p in callers
                   if any(pid == p.id and c.type == ptype for (pid, _), c in self.connections.items())]
        return data.draw(st.sampled_from(senders if senders and not data.draw(hs.rarely(3)) else callers),
                         label="caller")

    @rule(data=st.data())
    def post_message(self, data) -> None:
        caller = self._sender(data, MSG)
        payload = self._next_payload(data)
        inp = hs.post_message_block(self._connection_id(data, caller, MSG), data.draw(hs.message_types()), payload,
                                    size=data.draw(hs.payload_sizes(payload)),
                                    tail=data.draw(st.binary(max_size=8)))
        self.issue(data.draw(st.sampled_from(caller.vps)), control(CallCode.POST_MESSAGE), inp)

    @precondition(lambda self: self.connections)
    @rule(data=st.data(), fast=st.booleans())
    def use_foreign_connection(self, data, fast: bool) -> None:
        """A10: a partition posts or signals on a connection id another partition owns (and it
        does not): INVALID_CONNECTION_ID, exactly as for an id nobody owns."""
        owner, conn_id = data.draw(st.sampled_from(sorted(self.connections)), label="connection")
        conn = self.connections[owner, conn_id]
        strangers = [p for p in self._callers() if (p.id, conn_id) not in self.connections]
        if not strangers:
            return
        caller = data.draw(st.sampled_from(strangers), label="caller")
        vp = data.draw(st.sampled_from(caller.vps), label="vp")
        if conn.type == MSG:
            self.issue(vp, control(CallCode.POST_MESSAGE),
                       hs.post_message_block(conn_id, hs.MESSAGE_TYPE_VMBUS, self._next_payload(data, 24)))
        else:
            self.issue(vp, control(CallCode.SIGNAL_EVENT, fast=fast), hs.signal_event_block(conn_id))

    @rule(data=st.data(), n=st.integers(1, 6))
    def sender_dies(self, data, n: int) -> None:
        """A child that just posted `n` messages to another partition's port (most of them still
        queued behind a busy slot) is deleted: its messages must leave every queue with it."""
        senders = [p for p in self._callers() if not p.is_root]
        if not senders:
            return
        sender = data.draw(st.sampled_from(senders), label="sender")
        ports = sorted((p for p in self.ports.values() if p.type == MSG and p.connection_partition == sender.id
                        and p.owner != sender.id), key=lambda p: (p.owner, p.id))
        conns = {c.port: cid for (pid, cid), c in self.connections.items() if pid == sender.id and c.port in ports}
        if not conns:
            return
        port = data.draw(st.sampled_from([p for p in ports if p in conns]), label="port")
        vp = data.draw(st.sampled_from(sender.vps), label="vp")
        for _ in range(n):
            self.issue(vp, control(CallCode.POST_MESSAGE),
                       hs.post_message_block(conns[port], hs.MESSAGE_TYPE_VMBUS, self._next_payload(data, 24)))
        self._check_deliveries()  # the first may be in its slot already
        self._try(self.root.finalize_partition, sender)
        self._try(self.root.delete_partition, sender)

    @precondition(lambda self: any(c.type == MSG for c in self.connections.values()))
    @rule(data=st.data(), n=st.integers(2, 20))
    def post_burst(self, data, n: int) -> None:
        """Valid posts on one connection, enough to fill a port's 16 buffers."""
        (pid, conn_id) = data.draw(st.sampled_from(sorted(k for k, c in self.connections.items() if c.type == MSG)))
        caller = self.host.partition(pid)
        if caller not in self._callers():
            return
        vp = data.draw(st.sampled_from(caller.vps))
        for _ in range(n):
            payload = self._next_payload(data, 24)
            self.issue(vp, control(CallCode.POST_MESSAGE),
                       hs.post_message_block(conn_id, hs.MESSAGE_TYPE_VMBUS, payload))

    @rule(data=st.data(), fast=st.booleans())
    def signal_event(self, data, fast: bool) -> None:
        caller = self._sender(data, EVT)
        conn_id = self._connection_id(data, caller, EVT)
        conn = self.connections.get((caller.id, conn_id))
        count = conn.port.count if conn is not None and conn.port is not None else 4
        edges = sorted({f for f in (0, count - 1, count, count + 1, 0xFFFF) if f >= 0})  # a port may own no flags
        flag = data.draw(st.sampled_from(edges), label="flag") \
            if data.draw(hs.rarely(3)) else data.draw(st.integers(0, max(count - 1, 0)), label="flag")
        inp = hs.signal_event_block(conn_id, flag, int(data.draw(hs.rarely(16), label="rsvdz")))
        self.issue(data.draw(st.sampled_from(caller.vps)), control(CallCode.SIGNAL_EVENT, fast=fast), inp)

    # ---- guests: their SynIC, taking messages ------------------------------------------------------------
    def _scratch(self, pid: int) -> set[int]:
        """GPA pages a partition's own hypercalls write (input blocks) or the hypervisor writes
        (output blocks): slots there hold guest bytes."""
        if pid == self.root.id:
            return {g // PAGE_SIZE for vp in self.root.vps for g in (vp.input_gpa, vp.output_gpa)}
        return set(range(8)) | {2 * i + k for i in self.vp_ever[pid] for k in (0, 1)}

    def _synic_targets(self) -> list[tuple[Partition, int]]:
        """(partition, VP) pairs whose guest can program its own SynIC now."""
        return [(p, vp.index) for p in self._callers() for vp in p.vps]

    def _repick(self, pid: int, pages: tuple[int, int] | None) -> bool:
        """Whether a VP's SynIC wants new pages: it has none, one is no longer mapped read/write,
        or the guest has written over its SIM page (its slots can no longer be checked there)."""
        return pages is None or pages[0] in self.untrusted[pid] or any(not self._page_rw(pid, g) for g in pages)

    @rule(data=st.data(), scontrol_off=hs.rarely(8), simp_off=hs.rarely(8), masked=hs.rarely(8))
    def enable_synic(self, data, scontrol_off: bool, simp_off: bool, masked: bool) -> None:
        """A guest enables its SynIC: SIM and SIEF pages on two of its pages, SCONTROL, SINT2
        unmasked (and now and then the SynIC, the SIM page or SINT2 left off)."""
        part, vp = data.draw(st.sampled_from(self._synic_targets()), label="vp")
        if part.is_root:
            pages = self.root_synic_pages.get(vp)
            fresh = self._root_pages(2) if self._repick(part.id, pages) else None
            if fresh is not None:
                pages = self.root_synic_pages[vp] = tuple(fresh)
        else:
            pages = self.child_synic_pages.get((part.id, vp))
            if self._repick(part.id, pages):
                taken = {g for (pid, _), ps in self.child_synic_pages.items() if pid == part.id for g in ps}
                free = [g for g in sorted(self.host.introspect.reach(part)) if g not in taken
                        and g not in self._scratch(part.id) and g not in self.untrusted[part.id]
                        and self._page_rw(part.id, g)]
                if len(free) >= 2:
                    pages = tuple(data.draw(st.lists(st.sampled_from(free), min_size=2, max_size=2, unique=True)))
                    self.child_synic_pages[part.id, vp] = pages
        if pages is None or any(not self._page_rw(part.id, g) for g in pages):
            return  # no pages to put the SynIC on (the old ones, if any, are kept when they still work)
        simp, siefp = pages
        self.untrusted[part.id].add(siefp)
        sint = data.draw(st.integers(0, SINT_COUNT - 1), label="sint") if data.draw(hs.rarely(3)) else VMBUS_SINT
        regs = {Register.SIMP: simp_value(simp, not simp_off), Register.SIEFP: siefp_value(siefp),
                Register.SCONTROL: int(not scontrol_off),
                Register.SINT0 + sint: sint_value(0x30 + sint, masked=masked)}
        self._try(part.vp(vp).set_registers, regs)
        self.synic_vps.add((part.id, vp))

    @precondition(lambda self: self.synic_vps)
    @rule(data=st.data(), always_eom=st.booleans(), n=st.integers(1, 4))
    def guest_takes_messages(self, data, always_eom: bool, n: int) -> None:
        """A guest takes up to `n` messages in turn from one of its slots (most often one that a
        port has messages waiting for): clears MessageType, then writes EOM if MessagePending
        was set (Linux), or always."""
        waiting = sorted({(p.owner, p.vp, p.sint) for p in self.ports.values() if p.pending})
        if waiting and not data.draw(hs.rarely(4)):
            pid, vp, sint = data.draw(st.sampled_from(waiting), label="slot")
        else:
            pid, vp = data.draw(st.sampled_from(sorted(self.synic_vps)), label="vp")
            sints = sorted({p.sint for p in self.ports.values() if (p.owner, p.vp) == (pid, vp)} | {VMBUS_SINT})
            sint = data.draw(st.sampled_from(sints), label="sint")
        for i in range(n):
            if i:
                self._check_deliveries()  # what the last EOM brought into the slot, before it is taken
            if not self.take_message(pid, vp, sint, always_eom):
                return

    def take_message(self, pid: int, vp: int, sint: int, always_eom: bool = False) -> bool:
        """The guest of VP `vp` of partition `pid` takes the message in its SINT `sint` slot, the
        Linux way. False if it cannot (not running, no SIM page)."""
        part = self.host.partition(pid) if pid in self.host.introspect.partition_ids() else None
        if part is None or part not in self._callers() or not self._has_vp(pid, vp):
            return False
        regs = self._registers(pid, vp, [Register.SIMP])
        if regs is None or not regs[0] & _PAGE_ENABLE:
            return False
        gpfn = regs[0] >> 12
        gpa = gpfn * PAGE_SIZE + sint * MESSAGE_SIZE
        try:
            part.write(gpa, bytes(4))  # MessageType = None
            pending = part.read(gpa + 5, 1)[0] & MESSAGE_FLAG_PENDING
        except MemoryError:
            return False
        self.occupied.pop((pid, gpfn, sint), None)
        if pending or always_eom:
            queued = _binding.hv_synic_queue_length(self.host._h, pid, vp, sint)
            result = self.issue(part.vp(vp), control(CallCode.SET_VP_REGISTERS, rep_count=1),
                                struct.pack("<QIB3x", PARTITION_ID_SELF, vp, 0)
                                + struct.pack("<IIQQQ", Register.EOM, 0, 0, 0, 0))
            scontrol = self._registers(pid, vp, [Register.SCONTROL])
            if (result.ok and queued and scontrol and scontrol[0] & SCONTROL_ENABLE and self._page_rw(pid, gpfn)
                    and _binding.hv_synic_queue_length(self.host._h, pid, vp, sint) != queued - 1):
                raise _violation("INV-QUEUE", f"partition {pid} VP {vp} SINT {sint}: the guest emptied its slot and "
                                              f"wrote EOM with {queued} messages queued, none was delivered")
        return True

    @precondition(lambda self: self._live())
    @rule(data=st.data())
    def finalize_child(self, data) -> None:
        """Finalize a child and keep it: its ports still receive, but the root can no longer
        delete one of them, nor disconnect one of its connections (INVALID_PARTITION_STATE)."""
        child = data.draw(st.sampled_from(self.children))
        if self._try(self.root.finalize_partition, child) is None and child.state != PartitionState.FINALIZED:
            return
        ports = sorted(pid for owner, pid in self.ports if owner == child.id)
        conns = sorted(cid for owner, cid in self.connections if owner == child.id)
        if ports:
            self.issue(self.root.vp(0), control(CallCode.DELETE_PORT),
                       hs.delete_port_block(child.id, data.draw(st.sampled_from(ports), label="port")))
        if conns:
            self.issue(self.root.vp(0), control(CallCode.DISCONNECT_PORT),
                       hs.disconnect_port_block(child.id, data.draw(st.sampled_from(conns), label="connection")))

    @precondition(lambda self: self._live())
    @rule(data=st.data())
    def delete_vp(self, data) -> None:
        child = data.draw(st.sampled_from(self.children))
        vps = [vp.index for vp in child.vps] if self._info(child)["vp_mask"] else []
        if vps:
            self._try(self.root.delete_vp, child, data.draw(st.sampled_from(vps)))

    def _root_pages(self, n: int) -> list[int] | None:
        """`n` pages from the root's allocator that the root still owns, or None. The allocator is
        the harness's list; the root's raw DepositMemory/MapGpaPages calls give pages away behind
        its back, and those are dropped here, never handed out again."""
        owned: list[int] = []
        slot = self._info(self.root.id)["slot"]
        while len(owned) < n:
            if self.host.root_memory.available < n - len(owned):
                self.host.root_memory.release(owned)
                return None
            owned += [g for g in self.host.root_memory.allocate(n - len(owned))
                      if self.host.introspect.owner_codes(g, 1)[0] == slot]
        return owned

    @precondition(lambda self: len(self._live()) < MAX_CHILDREN and self.host.root_memory.available >= 48)
    @rule(data=st.data(), vps=st.integers(1, 2), create_port=st.booleans(), connect_port=st.booleans(),
          no_post=hs.rarely(8), no_signal=hs.rarely(8))
    def create_guest(self, data, vps: int, create_port: bool, connect_port: bool, no_post: bool,
                     no_signal: bool) -> None:
        """A ready guest in one step: created (sometimes with CreatePort/ConnectPort, rarely
        without PostMessages/SignalEvents), 10 pool pages, initialized, VPs, 32 pages at GPA 0,
        and each VP's SynIC on (SIM page 16 + 2i, SIEF page 17 + 2i, SINT2 unmasked)."""
        pool = self._root_pages(10)
        memory = self._root_pages(32) if pool is not None else None
        if memory is None:
            self.host.root_memory.release(pool or [])
            return
        child = self.root.create_partition()
        self.children.append(child)
        privileges = PRIVILEGES_GUEST_DEFAULT | create_port << Privilege.CREATE_PORT \
            | connect_port << Privilege.CONNECT_PORT
        privileges &= ~(no_post << Privilege.POST_MESSAGES | no_signal << Privilege.SIGNAL_EVENTS)
        self.root.set_partition_property(child, PartitionProperty.PRIVILEGE_FLAGS, privileges)
        self.root.deposit_memory(child, pool)
        self.root.initialize_partition(child)
        for i in range(vps):
            self.root.create_vp(child, i)
            self.vp_ever[child.id].add(i)
        self.root.map_gpa_pages(child, 0, memory)
        for i in range(vps):
            simp, siefp = 16 + 2 * i, 17 + 2 * i
            self.child_synic_pages[child.id, i] = (simp, siefp)
            self.untrusted[child.id].add(siefp)
            child.vp(i).set_registers({Register.SIMP: simp_value(simp), Register.SIEFP: siefp_value(siefp),
                                       Register.SCONTROL: 1, Register.SINT2: sint_value(0x32)})
            self.synic_vps.add((child.id, i))

    @precondition(lambda self: any(p.owner != self.root.id for p in self.ports.values())
                  or any(pid != self.root.id for pid, _ in self.connections))
    @rule(data=st.data())
    def delete_busy_child(self, data) -> None:
        """Delete a child that owns ports or connections (often with messages still queued)."""
        busy = sorted(({p.owner for p in self.ports.values()} | {pid for pid, _ in self.connections})
                      - {self.root.id})
        senders = sorted({sender for p in self.ports.values() for sender, _ in p.pending} - {self.root.id})
        receivers = sorted({p.owner for p in self.ports.values() if p.pending} - {self.root.id})
        kind = data.draw(st.integers(0, 3), label="which")
        pick = senders if senders and kind < 2 else receivers if receivers and kind < 3 else busy
        child = self.host.partition(data.draw(st.sampled_from(pick), label="child"))
        self._try(self.root.finalize_partition, child)
        self._try(self.root.delete_partition, child)

    # ---- after every step ---------------------------------------------------------------------------
    @invariant()
    def isolation_holds(self) -> None:
        check_all(self.host)

    @invariant()
    def messages_hold(self) -> None:
        """Bring the model up to date with deletions, account for every message that left a
        queue (it must be in its SIM slot, whole and in posting order), check every slot, then
        recount queues, connections and pools against the model (`check_messages`). The core's
        tables are read once for all of it: these checks read memory and registers, never change
        a partition, a map or an owner."""
        self._tables = Tables(self.host)
        try:
            self._sync_teardown()
            self._check_deliveries()
            self._check_slots()
            check_messages(self.host, ports={k: p.facts for k, p in self.ports.items()},
                           connections={k: (None if c.port is None else (c.port.owner, c.port.id))
                                        for k, c in self.connections.items()}, tables=self._tables)
        finally:
            self._tables = None

    def _sync_teardown(self) -> None:
        live = set(self.host.introspect.partition_ids())
        for pid in self.known - live:  # deleted: ports, connections and messages it posted go
            for key in [k for k, p in self.ports.items() if p.owner == pid]:
                self.ports.pop(key).pending.clear()
            for conn in self.connections.values():
                if conn.port is not None and conn.port.owner == pid:
                    conn.port = None
            for key in [k for k in self.connections if k[0] == pid]:
                del self.connections[key]
            for port in self.ports.values():
                port.pending = deque(m for m in port.pending if m[0] != pid)
            for key in [k for k in self.slots if k[0] == pid]:
                del self.slots[key]
            self.synic_vps = {(p, v) for p, v in self.synic_vps if p != pid}
            self.vp_masks.pop(pid, None)
        self.known = live
        for pid in live:
            mask = self._info(pid)["vp_mask"]
            gone = self.vp_masks.get(pid, 0) & ~mask
            for port in self.ports.values():
                if port.owner == pid and gone >> port.vp & 1:
                    port.pending.clear()  # a deleted VP takes its queues along
            self.vp_masks[pid] = mask
            self.vp_ever[pid] |= {i for i in range(64) if mask >> i & 1}

    def _trusted(self, pid: int, gpfn: int) -> bool:
        """Whether a SIM slot on that page holds only what the hypervisor put there."""
        if gpfn in self._scratch(pid) or gpfn in self.untrusted[pid]:
            return False
        if pid == self.root.id:  # the root's own page, not one a child granted it
            return gpfn < self.host.pages and self.host.introspect.owner_codes(gpfn, 1)[0] == self._info(pid)["slot"]
        return True

    def _slot_bytes(self, pid: int, gpfn: int, sint: int) -> bytes | None:
        try:
            return self.host.partition(pid).read(gpfn * PAGE_SIZE + sint * MESSAGE_SIZE, MESSAGE_SIZE)
        except MemoryError:
            return None

    def _check_deliveries(self) -> None:
        delivered: dict[tuple[int, int, int], list[tuple[ModelPort, bytes]]] = defaultdict(list)
        for port in self.ports.values():
            if not self._has_vp(port.owner, port.vp):
                continue
            try:
                n = _binding.hv_port_undelivered(self.host._h, port.owner, port.id)
            except LookupError:
                raise _violation("INV-ACCOUNT", f"partition {port.owner} has no port {port.id:#x}, which it was "
                                                f"given and never lost") from None
            gone = len(port.pending) - n
            if gone < 0:
                raise _violation("INV-QUEUE", f"port {port.id:#x} of partition {port.owner} holds {n} undelivered "
                                              f"messages, only {len(port.pending)} were posted and not delivered")
            for _ in range(gone):
                delivered[port.owner, port.vp, port.sint].append((port, port.pending.popleft()[1]))
        for (pid, vp, sint), messages in delivered.items():
            if len(messages) > 1:
                raise _violation("INV-QUEUE", f"{len(messages)} messages left the queue of partition {pid} VP {vp} "
                                              f"SINT {sint} in one step; its slot takes one at a time")
            port, message = messages[0]
            regs = [self.simp_before[pid, vp]] if (pid, vp) in self.simp_before else \
                self._registers(pid, vp, [Register.SIMP])
            if regs is None:
                continue
            if not regs[0] & _PAGE_ENABLE:
                raise _violation("INV-QUEUE", f"a message of port {port.id:#x} left the queue of partition {pid} VP "
                                              f"{vp} SINT {sint}, whose SIM page is disabled")
            gpfn = regs[0] >> 12
            self.slots[pid, gpfn, sint] = message
            if not self._trusted(pid, gpfn):
                continue
            frame = self._frame(pid, gpfn)
            if frame is not None and self.occupied.get((pid, gpfn, sint)) == frame:
                raise _violation("INV-QUEUE", f"partition {pid} VP {vp} SINT {sint}: a message of port {port.id:#x} "
                                              f"was delivered over one the guest had not taken (a lost message)")
            slot = self._slot_bytes(pid, gpfn, sint)
            if slot is None or _without_pending(slot) != message:
                raise _violation("INV-MSG", f"partition {pid} VP {vp} SINT {sint}: port {port.id:#x}'s oldest message "
                                            f"left the queue, its slot holds "
                                            f"{None if slot is None else slot[:24].hex()}..., expected "
                                            f"{message[:24].hex()}...")
        self.simp_before.clear()

    def _frame(self, pid: int, gpfn: int) -> int | None:
        """The SPA frame behind GPA page `gpfn` of partition `pid` (None if it has none)."""
        if pid == self.root.id:
            return gpfn if gpfn < self.host.pages else None
        entry = self._reach(pid).get(gpfn)
        return None if entry is None else entry[0]

    def _check_slots(self) -> None:
        """INV-MSG for every message in every SIM slot the machine can trust: a valid type (or a
        timer's), at most 240 bytes with nothing behind them, exactly the last message delivered
        there, which a port of this partition targeting this VP and SINT received through a
        connection its sender owned."""
        for key, frame in list(self.occupied.items()):  # forget slots whose page changed under them
            pid, gpfn, sint = key
            slot = self._slot_bytes(pid, gpfn, sint) if pid in self.known else None
            if slot is None or self._frame(pid, gpfn) != frame or not any(slot[:4]):
                del self.occupied[key]
        for pid, vp in sorted(self.synic_vps):
            if not self._has_vp(pid, vp):
                continue
            regs = self._registers(pid, vp, [Register.SIMP])
            if regs is None or not regs[0] & _PAGE_ENABLE:
                continue
            gpfn = regs[0] >> 12
            if not self._trusted(pid, gpfn):
                continue
            try:
                page = self.host.partition(pid).read(gpfn * PAGE_SIZE, PAGE_SIZE)
            except MemoryError:
                continue
            frame = self._frame(pid, gpfn)
            for sint in range(SINT_COUNT):
                slot = page[sint * MESSAGE_SIZE:(sint + 1) * MESSAGE_SIZE]
                mtype, size, flags, reserved, origin = _HEADER.unpack_from(slot)
                if mtype == 0:
                    continue
                self.occupied[pid, gpfn, sint] = frame
                where = f"partition {pid} VP {vp} SINT {sint} (GPA page {gpfn})"
                if mtype & _TYPE_HV:
                    if mtype != hs.MESSAGE_TYPE_TIMER_EXPIRED or origin != 0:
                        raise _violation("INV-MSG", f"{where} holds hypervisor message type {mtype:#x} "
                                                    f"from {origin:#x}")
                    continue
                if size > PAYLOAD_MAX or flags & ~MESSAGE_FLAG_PENDING or reserved:
                    raise _violation("INV-MSG", f"{where}: malformed header {slot[:16].hex()}")
                if any(slot[16 + size:]):
                    raise _violation("INV-MSG", f"{where}: bytes past PayloadSize {size} are not zero")
                expected = self.slots.get((pid, gpfn, sint))
                if expected is None:
                    raise _violation("INV-MSG", f"{where} holds a message (type {mtype:#x}, origin {origin:#x}) "
                                                f"no port of the partition delivered there")
                if _without_pending(slot) != expected:
                    raise _violation("INV-MSG", f"{where} holds {slot[:24].hex()}..., the last message delivered there "
                                                f"was {expected[:24].hex()}...")


class MessagingMachine(HypervisorMachine):
    """`HypervisorMachine` without its memory-management rules (children come ready from
    `create_guest`), so nearly every step creates, connects, deletes or disconnects ports, posts,
    signals, takes messages, or deletes a VP or a partition with its ports, connections and
    queued messages; raw hypercalls stay."""

    host_memory = "4MiB"
    create_child = deposit = initialize_child = create_vp = map_pages = withdraw = None
    set_property = grant_pages = revoke_grant = child_writes_memory = None

    @initialize()
    def root_synic(self) -> None:
        """The root's VPs take messages from the start (SIM and SIEF pages of its own, SINT2),
        and its pool has pages for ports and connections."""
        self.root.deposit_memory(None, self.host.root_memory.allocate(4))
        for vp in self.root.vps:
            simp, siefp = self.root_synic_pages[vp.index] = tuple(self.host.root_memory.allocate(2))
            self.untrusted[self.root.id].add(siefp)
            vp.set_registers({Register.SIMP: simp_value(simp), Register.SIEFP: siefp_value(siefp),
                              Register.SCONTROL: 1, Register.SINT2: sint_value(0x32)})
            self.synic_vps.add((self.root.id, vp.index))
