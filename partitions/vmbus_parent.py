"""The parent partition's VMBus service: one channel manager per child, wired to the hypervisor
(ports and connections for messages and events, grants for GPADLs) and run on a root VP, so that
serving VMBus costs the parent CPU time.

Per child it sets up, before the child runs:
  - two root message ports the child reaches on connections 1 and 4 (VMBus's message connection
    ids; which one a message came through is told by the port it arrives at);
  - a message port and an event port in the child (SINT 2 of its VP 0), with root connections to
    them: host->guest messages, and host->guest channel signals (flag = relid); a channel the guest
    opened or moved (ModifyChannel) to another of its VPs is signalled there instead, through an
    event port on SINT 2 of that VP made the first time a channel targets it;
  - per offered channel, a root event port (one flag of a SINT of the service's VP: SINT 2's
    flags first, then SINT 3's, ... up to SINT 15's; past those 28,671 flags channels share
    flags, a signal on one then readies each channel that has it) the child signals on the
    offer's connection id.

The service is interrupt-driven: on a pass it reads its SIM slot and a SINT's event flags only
if the core reported that SINT raised (or a message was left in the slot for a throttled
child), reads only the channels that were signalled, and retries or serves only the children
with something waiting (held signals, an outbox, an inbox, an unreachable SynIC). Its idle VP
halts until an interrupt or its next timer.

A child is quiesced while its VM is saved (quiesce/resume): its memory is wiped while the VM is
Saved, so from the VSPs' quiesce() hooks until their resume() nothing reaches it. The service
holds what would: the VSPs' timers (time stands still for them), the signals and messages for it
and the messages it sent; its channel ends refuse writes (DeviceQuiesced) and reads. On resume,
on the service's own VP, it replays them in order and reads every ring of the child.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

from drivers.device import DeviceContext, DeviceQuiesced, DeviceType, Vsp
from hypervisor import Host, Partition, Register, _binding
from hypervisor.grants import VisibleMemory
from hypervisor.status import HvError, HvStatus
from hypervisor.synic import (PortType, clear_message_slot, read_message_slot, simp_value, siefp_value,
                              sint_value)
from vmbus.channel import ChannelEnd, OfferSpec, OpenRequest
from partitions.device_context import EndpointContext
from vmbus.protocol import STATUS_SUCCESS, STATUS_UNSUCCESSFUL, VMBUS_MESSAGE_SINT, GpaRange
from vmbus.ring import RingError
from vmbus.server import ChannelManager
from hypervisor.guest import ALL_SINTS

MESSAGE_TYPE_VMBUS = 1
CHILD_MESSAGE_PORT = 1     # in each child: host->guest messages
CHILD_EVENT_PORT = 2       # in each child: host->guest channel signals
FLAGS_PER_SINT = 2048
FLAG_SINTS = tuple(range(VMBUS_MESSAGE_SINT, 16))  # the SINTs of the service's VP with channel flags

# Budgets: what one child may take of the service (docs/vmbus.md, "Budgets and backpressure").
PACKETS_PER_PASS = 64       # per channel per pass; a ring with more waits for the next pass
MESSAGE_BURST = 64          # control messages a child may have taken at once...
MESSAGE_REFILL_NS = 16_000  # ...and one more per 16 us of simulated time after that
OUTBOX_LIMIT = 64           # messages to a child not yet posted; at the limit its own are not handled
_NO_FLAGS = bytes(256)      # a SINT's event flags, all taken
INBOX_LIMIT = 64            # messages from a child waiting for room in its outbox; beyond: dropped
RETRY_NS = 50_000           # a message a child's full port refused is posted again after this,
RETRY_MAX_NS = 10_000_000   # ...doubling while refusals go on, up to this
LOG_LIMIT = 10_000          # entries kept in ParentVmbus.log (the event log bounds itself per VM)


@dataclass
class _Channel:
    device: DeviceType
    config: dict
    flag: tuple[int, int]         # (SINT, flag) of the service's VP the child signals
    port_id: int                  # the root event port behind it
    connection_id: int            # the child's connection to that port
    target_vp: int = 0            # the child's VP its signals go to (OpenChannel, ModifyChannel)
    end: ChannelEnd | None = None
    vsp: Vsp | None = None
    broken: str | None = None     # why the channel was broken (a hostile ring, a failing VSP)


@dataclass
class _Child:
    partition: Partition
    manager: ChannelManager | None = None
    msg_ports: dict[int, int] = field(default_factory=dict)   # root port id -> connection id
    to_child_msg: int = 0         # root connection id -> the child's message port
    to_child_evt: int = 0         # root connection id -> the child's event port (on its VP 0)
    vp_evt: dict[int, int] = field(default_factory=dict)      # VP > 0 -> root connection to its event port
    channels: dict[int, _Channel] = field(default_factory=dict)  # relid -> channel
    outbox: deque[bytes] = field(default_factory=deque)     # messages waiting for buffers (<= OUTBOX_LIMIT)
    inbox: deque[tuple[bytes, int]] = field(default_factory=deque)  # (message, connection) waiting for outbox room
    tokens: int = MESSAGE_BURST   # control messages it may still have taken now
    tokens_at: int = 0            # when tokens was last brought up to date
    dropped: int = 0              # its messages dropped (its inbox was full)
    context: EndpointContext | None = None                  # what this child's VSPs see
    quiesced: bool = False        # its VM is being saved or is Saved: nothing may reach its memory
    quiesced_at: int = 0          # when it was last quiesced
    held_in: list[tuple[bytes, int]] = field(default_factory=list)  # (message, connection) it sent meanwhile
    held_signals_out: dict[int, None] = field(default_factory=dict)  # relids to signal to it on resume
    stats: dict = field(default_factory=lambda: {"messages_in": 0, "messages_out": 0, "packets_in": 0})
    unreachable: bool = False     # its SynIC refuses the service's signals/messages (it turned it off)
    failed: str | None = None     # why the service stopped serving it (see ParentVmbus._fail_child)


class _Notifier:
    """The channel manager's effects for one child, carried out through the hypervisor."""

    def __init__(self, service: ParentVmbus, child: _Child):
        self.service, self.child = service, child

    def send(self, message: bytes, target_vp: int, sint: int) -> None:
        # N.B. never dropped: a host->guest control message lost would wedge the guest's VMBus.
        # The outbox stays bounded because the child's own messages (what makes replies) are
        # not handled while it is full (ParentVmbus._serve_inbox).
        self.child.outbox.append(message)
        self.service._flush(self.child)

    def modify_channel(self, relid: int, target_vp: int) -> int:
        # Refused (and nothing changed) for a VP the child does not have or when the port and
        # connection for that VP cannot be made (the pools are empty).
        ch = self.child.channels.get(relid)
        if ch is None or not self.service._target_vp_ready(self.child, target_vp):
            self.log("modify channel refused", relid=relid, target_vp=target_vp)
            return STATUS_UNSUCCESSFUL
        ch.target_vp = target_vp
        return STATUS_SUCCESS

    def connect(self, version: int, target_vp: int, sint: int, monitor_pages) -> bool:
        # The child's message port was made for VP 0, SINT 2.
        return target_vp == 0 and sint == VMBUS_MESSAGE_SINT

    def disconnect(self) -> None:
        pass

    def create_gpadl(self, relid: int, gpadl_id: int, ranges: tuple[GpaRange, ...]) -> int:
        if any(r.byte_offset for r in ranges):
            return STATUS_UNSUCCESSFUL  # hvsim's grants are whole pages
        pages = [pfn for r in ranges for pfn in r.pfns]
        try:
            self.service.host.grants.create(self.child.partition, gpadl_id, pages)
        except HvError as exc:
            self.log("gpadl refused by the core", relid=relid, gpadl=gpadl_id, status=str(exc))
            return STATUS_UNSUCCESSFUL
        return STATUS_SUCCESS

    def teardown_gpadl(self, relid: int, gpadl_id: int) -> None:
        grant = self.service.host.grants.get(self.child.partition, gpadl_id)
        if grant is not None:
            try:
                grant.revoke()
            except HvError as exc:  # the grant went with its partition already: nothing to give back
                self.log("gpadl revoke failed", relid=relid, gpadl=gpadl_id, status=str(exc))

    def open_channel(self, request: OpenRequest) -> int:
        ch = self.child.channels.get(request.relid)
        grant = self.service.host.grants.get(self.child.partition, request.ring_gpadl_id)
        if ch is None or grant is None:
            return STATUS_UNSUCCESSFUL
        service, child = self.service, self.child
        relid = request.relid
        if not service._target_vp_ready(child, request.target_vp):
            self.log("open refused: no such target VP", relid=relid, target_vp=request.target_vp)
            return STATUS_UNSUCCESSFUL
        ch.target_vp = request.target_vp

        def signal_guest() -> None:
            service._signal(child, relid)

        try:
            end = _HostEnd.host(grant.view, request.downstream_page_offset, signal_guest)
            end.child = child
        except ValueError as exc:
            self.log("ring gpadl unusable", relid=relid, error=str(exc))
            return STATUS_UNSUCCESSFUL
        config = dict(ch.config)
        # Buffers beyond the ring (receive/send buffers): GPADLs of this channel,
        # resolved to the parent's view of them and the guest PFNs they cover.
        config.setdefault("resolve_gpadl", lambda gid: self._gpadl(relid, request.ring_gpadl_id, gid))
        # Pages the child made host-visible, wherever they are (what GPA-direct ranges name).
        config.setdefault("guest_memory", VisibleMemory(service.host, child.partition))
        try:  # a VSP that fails to open fails this open only
            vsp = ch.device.vsp(end, config, _ChannelContext(service, child, relid))
            ch.end, ch.vsp = end, vsp
            end.on_signal = lambda: service._ready_channel(child, relid)
            vsp.on_open()
        except Exception as exc:
            ch.end = ch.vsp = None
            ch.broken = f"{ch.device.name} failed to open: {type(exc).__name__}: {exc}"
            service.record(child.partition.id, "device failed", {"relid": relid, "why": ch.broken},
                           device=ch.device.name)
            return STATUS_UNSUCCESSFUL
        return STATUS_SUCCESS

    def _gpadl(self, relid: int, ring_gpadl_id: int, gpadl_id: int):
        if gpadl_id == ring_gpadl_id:
            return None
        ranges = self.child.manager.gpadl_ranges(relid, gpadl_id)
        grant = self.service.host.grants.get(self.child.partition, gpadl_id)
        if ranges is None or grant is None:
            return None
        return grant.view, [pfn for r in ranges for pfn in r.pfns]

    def close_channel(self, relid: int) -> None:
        ch = self.child.channels.get(relid)
        if ch is not None and ch.vsp is not None:
            self.service._close_vsp(self.child, relid, ch)

    def log(self, event: str, **fields: Any) -> None:
        self.service.record(self.child.partition.id, event, fields)


class _HostEnd(ChannelEnd):
    """The parent's end of a channel: while its child is quiesced the ring is not there to be
    written or read (the child's memory is wiped while Saved)."""

    child: _Child

    def send(self, payload, **kw) -> None:
        if self.child.quiesced:
            raise DeviceQuiesced("the VM is saved: its rings cannot be written until it is restored")
        super().send(payload, **kw)

    def receive(self):
        return [] if self.child.quiesced else super().receive()

    def receive_some(self, limit: int):
        """Up to `limit` packets (the service's per-pass quantum); signals the writer if that
        freed the space it waits for."""
        if self.child.quiesced:
            return []
        packets, signal = self.incoming.read_batch(limit)
        if signal:
            self._signal()
        return packets


class _ChildContext(EndpointContext):
    """One child's VSPs' context: the service's timer queue (in this child's group, held while
    the child is quiesced) and CPU account, this child's GPADLs."""

    def __init__(self, service: ParentVmbus, child: Partition, log, *, gpadl_view):
        super().__init__(service.host, log, gpadl_view=gpadl_view, timers=service.context.timers, group=child.id)
        self._service = service

    def call_later(self, delay_ns: int, fn) -> None:
        super().call_later(delay_ns, fn)
        self._service._wake_for_timers()

    def charge(self, ns: int) -> None:
        self._service.context.charge(ns)


class _ChannelContext(DeviceContext):
    """One channel's VSP's context: its child's, except that what it logs names the device and
    channel, and its timers are guarded: a VSP that raises in a timer breaks its own channel,
    not the parent's VMBus service (whose VP runs every child's timers)."""

    def __init__(self, service: ParentVmbus, child: _Child, relid: int):
        self._service, self._child, self._relid = service, child, relid
        self._device = child.channels[relid].device.name

    def now(self) -> int:
        return self._child.context.now()

    def call_later(self, delay_ns: int, fn) -> None:
        # What the child's context's call_later does, without its two calls (a VSP arms a timer
        # per request): armed in the child's group, then the service's VP woken if it sleeps past it.
        service, child = self._service, self._child
        service.context.timers.add(delay_ns, lambda: service._guard(child, self._relid, fn), child.partition.id)
        if service._asleep_until is not False:
            service._wake_for_timers()

    def charge(self, ns: int) -> None:
        self._service.context.charge(ns)   # what the child's context's charge does

    def log(self, event: str, **fields: Any) -> None:
        self._service.record(self._child.partition.id, event, {**fields, "relid": self._relid},
                             device=self._device)

    def gpadl_view(self, gpadl_id: int):
        return self._child.context.gpadl_view(gpadl_id)


class ParentVmbus:
    """The VMBus server side of the parent, for all its children, on root VP `vp_index`."""

    def __init__(self, host: Host, vp_index: int = 0, *, packet_cost: int | str = "2us"):
        from hypervisor.quantities import parse_duration
        self.host = host
        self.vp = host.root.vp(vp_index)
        self.packet_cost = parse_duration(packet_cost, "packet_cost")
        self.children: dict[int, _Child] = {}
        # (time, partition id, event, fields): the last LOG_LIMIT entries record() was told
        self.log: deque[tuple] = deque(maxlen=LOG_LIMIT)
        #: on_log(partition_id, event, fields, device): told of every entry as it is recorded
        #: (device: the name of the device whose VSP logged it, None for the service's own).
        self.on_log: Callable[[int, str, dict, str | None], None] | None = None
        #: on_child_failed(partition_id, why): the service stopped serving a child (see
        #: _fail_child); the management crashes its VM. Called from the service's VP, so it must
        #: not tear the partition down there and then (the management defers it).
        self.on_child_failed: Callable[[int, str], None] | None = None
        self._port_owner: dict[int, _Child] = {}      # root message port id -> child
        # (SINT, flag) -> the channels (child, relid) it stands for: one each until the flags run out
        self._flag_owner: dict[tuple[int, int], list[tuple[_Child, int]]] = {}
        self._next_id = 0x1000
        # per SINT of FLAG_SINTS, its free flags (popped from the end: lowest first); flag 0 of
        # SINT 2 is the doorbell. A SINT is turned on when its first flag is taken.
        self._free_flags: dict[int, list[int]] = {
            sint: list(range(FLAGS_PER_SINT - 1, 0 if sint == VMBUS_MESSAGE_SINT else -1, -1)) for sint in FLAG_SINTS}
        self._flag_sints = {VMBUS_MESSAGE_SINT}   # SINTs of the service's VP turned on
        self._shared_next = 0    # the next flag to share once every flag is taken
        self.slot_reads = 0      # reads of the service's SIM slot
        self.flag_scans = 0      # reads of a SINT's 256 bytes of event flags
        self._ctx = None         # the service VP's guest context (its raised SINTs)
        self._look_slot = True   # read the SIM slot on the next pass even without an interrupt
        self._attention: dict[int, _Child] = {}   # children with something held or waiting
        self._pending_work = 0
        self.message_trace: list[tuple[int, str, dict]] | None = None  # (time, name, args) when recording
        self.context = EndpointContext(host, lambda event, fields: self.record(0, event, fields))
        root = host.root
        self.simp, self.siefp = host.root_memory.allocate(2)
        # Its SIM slot's type and its SINTs' flags, looked at in one crossing per pass (not a read
        # of the slot and a read and a write per SINT).
        self._taker = _binding.ServiceTake(host._h, root.id, self.simp * 4096 + VMBUS_MESSAGE_SINT * 256,
                                           self.siefp * 4096)
        self._flag_mask = 1 << VMBUS_MESSAGE_SINT   # _flag_sints as a mask (bit n: SINT n)
        root.set_vp_registers(root, vp_index, {
            Register.SIMP: simp_value(self.simp), Register.SIEFP: siefp_value(self.siefp),
            Register.SCONTROL: 1, Register.SINT0 + VMBUS_MESSAGE_SINT: sint_value(0x32)})
        # The service's own doorbell: flag 0 of its SINT (no channel has it). Signalling it wakes
        # the service's VP when work for it comes from outside its loop (timers a resumed VM's
        # devices get back, timers armed by a management call) earlier than the VP meant to wake.
        doorbell_port, self._doorbell = self._new_id(), self._new_id()
        self._root_pool(2)   # the doorbell's port and connection
        root.create_port(None, doorbell_port, port_type=PortType.EVENT, target_sint=VMBUS_MESSAGE_SINT,
                         target_vp=vp_index, base_flag=0, flag_count=1, connection_partition=root)
        root.connect_port(None, self._doorbell, None, doorbell_port, port_type=PortType.EVENT)
        self._asleep_until: int | None | bool = False   # False: not halted; None: halted with no timeout
        self._resuming: dict[int, _Child] = {}   # children restored whose devices resume on the next pass
        self._ready: dict[tuple[int, int], None] = {}  # (child, relid) signalled and not yet read empty, in turn
        self._served: dict[tuple[int, int], int] = {}  # packets each channel had in the current pass
        self._refill_armed = False   # a timer wakes the service when a throttled child has a message again
        self._retry_armed = False    # a timer wakes the service to post messages a full port refused
        self._retry_ns = RETRY_NS
        self.vp.run(self._serve)

    def _root_pool(self, pages: int) -> None:
        """Make sure the root's pool holds `pages` free pages, depositing only what it lacks (the
        pages of ports and connections a detach deleted come back to the pool and are used again)."""
        short = pages - self.host.introspect.partition_info(self.host.root.id)["pool_free"]
        if short > 0:
            self.host.root.deposit_memory(None, self.host.root_memory.allocate(short))

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def _target_vp_ready(self, c: _Child, vp: int) -> bool:
        """Whether the child's channels can be signalled on its VP `vp`: VP 0's event port is made
        at attach; another VP's the first time a channel targets it (a page of the child's pool
        for the port, one of the root's for the connection). False for a VP the child lacks."""
        if vp == 0 or vp in c.vp_evt:
            return True
        info = self.host.introspect.partition_info(c.partition)
        if not isinstance(vp, int) or not 0 < vp < 64 or not info or not (info["vp_mask"] >> vp) & 1:
            return False
        root, port, conn = self.host.root, CHILD_EVENT_PORT + 0x100 * vp, self._new_id()
        try:
            self._root_pool(1)
            root.deposit_memory(c.partition, self.host.root_memory.allocate(1), via=self.vp)
            root.create_port(c.partition, port, port_type=PortType.EVENT, target_sint=VMBUS_MESSAGE_SINT,
                             target_vp=vp, base_flag=0, flag_count=FLAGS_PER_SINT, connection_partition=root,
                             via=self.vp)
        except (HvError, MemoryError) as exc:
            self.record(c.partition.id, "event port refused", {"target_vp": vp, "status": str(exc)})
            return False
        try:
            root.connect_port(None, conn, c.partition, port, port_type=PortType.EVENT, via=self.vp)
        except HvError as exc:
            self.record(c.partition.id, "event port refused", {"target_vp": vp, "status": str(exc)})
            try:  # the port without a connection is of no use: its page goes back to the pool
                root.delete_port(c.partition, port, via=self.vp)
            except HvError as again:
                self.record(c.partition.id, "teardown failed", {"call": "delete_port", "id": port,
                                                                "status": str(again)})
            return False
        c.vp_evt[vp] = conn
        return True

    # ---- setting a child up --------------------------------------------------------------------
    def attach(self, child: Partition, devices: list[tuple[DeviceType, dict]] = ()) -> ChannelManager:
        """Give `child` (initialized, not yet running) its VMBus: ports, connections and a channel
        manager offering `devices` [(device type, config)]."""
        root, host = self.host.root, self.host
        c = _Child(child)
        # Every port costs a page of its owner's pool, every connection one of its sender's: the
        # root's two message ports and two connections, the child's two ports and two connections.
        self._root_pool(4)
        root.deposit_memory(child, host.root_memory.allocate(4))
        for conn in (1, 4):
            port = self._new_id()
            root.create_port(None, port, port_type=PortType.MESSAGE, target_sint=VMBUS_MESSAGE_SINT,
                             target_vp=self.vp.index, connection_partition=child)
            root.connect_port(child, conn, None, port)
            c.msg_ports[port] = conn
            self._port_owner[port] = c
        root.create_port(child, CHILD_MESSAGE_PORT, port_type=PortType.MESSAGE, target_sint=VMBUS_MESSAGE_SINT,
                         target_vp=0, connection_partition=root)
        root.create_port(child, CHILD_EVENT_PORT, port_type=PortType.EVENT, target_sint=VMBUS_MESSAGE_SINT,
                         target_vp=0, base_flag=0, flag_count=FLAGS_PER_SINT, connection_partition=root)
        c.to_child_msg, c.to_child_evt = self._new_id(), self._new_id()
        root.connect_port(None, c.to_child_msg, child, CHILD_MESSAGE_PORT)
        root.connect_port(None, c.to_child_evt, child, CHILD_EVENT_PORT, port_type=PortType.EVENT)
        c.manager = ChannelManager(_Notifier(self, c))

        def gpadl_view(gpadl_id: int, child=child):
            grant = host.grants.get(child, gpadl_id)
            return grant.view if grant is not None else None

        c.context = _ChildContext(self, child, lambda e, f: self.record(child.id, e, f),
                                  gpadl_view=gpadl_view)
        self.children[child.id] = c
        for device, config in devices:
            self.offer(child, device, config)
        return c.manager

    def offer(self, child: Partition, device: DeviceType, config: dict | None = None, *,
              instance_id=None) -> int:
        """Offer a device to a child; returns its relid."""
        import uuid
        c = self.children[child.id]
        spec = OfferSpec(device.class_id, instance_id or uuid.UUID(int=(child.id << 64) | (len(c.channels) + 1)))
        relid = c.manager.offer(spec)
        sint, flag = key = self._take_flag()
        port, conn = self._new_id(), 0x2000 + relid
        # The channel's event port (the root's pool) and the child's connection to it (its own).
        self._root_pool(1)
        self.host.root.deposit_memory(child, self.host.root_memory.allocate(1))
        self.host.root.create_port(None, port, port_type=PortType.EVENT, target_sint=sint,
                                   target_vp=self.vp.index, base_flag=flag, flag_count=1, connection_partition=child)
        self.host.root.connect_port(child, conn, None, port, port_type=PortType.EVENT)
        c.channels[relid] = _Channel(device, dict(config or device.defaults), key, port, conn)
        self._flag_owner.setdefault(key, []).append((c, relid))
        return relid

    def _take_flag(self) -> tuple[int, int]:
        """A (SINT, flag) of the service's VP for a new channel: a free one, lowest SINT first (its
        SINT turned on the first time); with none free, one shared with other channels, in turn."""
        for sint in FLAG_SINTS:
            free = self._free_flags[sint]
            if free:
                if sint not in self._flag_sints:
                    self.host.root.set_vp_registers(self.host.root, self.vp.index,
                                                    {Register.SINT0 + sint: sint_value(0x30 + sint)})
                    self._flag_sints.add(sint)
                    self._flag_mask |= 1 << sint
                return sint, free.pop()
        n = len(FLAG_SINTS) * FLAGS_PER_SINT
        while True:
            i, self._shared_next = self._shared_next, (self._shared_next + 1) % n
            key = (FLAG_SINTS[i // FLAGS_PER_SINT], i % FLAGS_PER_SINT)
            if key != (VMBUS_MESSAGE_SINT, 0):   # not the doorbell
                return key

    def _drop_flag(self, key: tuple[int, int], c: _Child, relid: int) -> None:
        owners = [o for o in self._flag_owner.get(key, ()) if not (o[0] is c and o[1] == relid)]
        if owners:
            self._flag_owner[key] = owners
        elif self._flag_owner.pop(key, None) is not None:
            self._free_flags[key[0]].append(key[1])

    def detach(self, child: Partition | int) -> None:
        """Forget a child (turned off or deleted): close its VSPs, delete the root's ports and
        connections for it, free its event flags. The child's own ports go with the child."""
        cid = child if isinstance(child, int) else child.id
        c = self.children.pop(cid, None)
        if c is None:
            return
        self._resuming.pop(cid, None)
        self._attention.pop(cid, None)
        root = self.host.root
        alive = cid in self.host.introspect.partition_ids()
        self.context.timers.drop(cid)   # its VSPs' timers (held ones too) go with it
        for relid, ch in c.channels.items():
            if ch.vsp is not None:
                self._close_vsp(c, relid, ch)
            self._drop_flag(ch.flag, c, relid)
            self._teardown_call(c, alive, root.delete_port, ch.port_id)
        c.quiesced = True   # a VSP object kept by someone can no longer reach the child's memory
        for port in c.msg_ports:
            self._port_owner.pop(port, None)
            self._teardown_call(c, alive, root.delete_port, port)
        for conn in (c.to_child_msg, c.to_child_evt, *c.vp_evt.values()):
            self._teardown_call(c, alive, root.disconnect_port, conn)

    def _teardown_call(self, c: _Child, alive: bool, call, object_id: int) -> None:
        """One of detach's hypercalls: the root's ports and connections are its own, so these
        do not fail on the child's account; if one does all the same (or went with the deleted
        child already) it is logged and the rest of the teardown goes on."""
        try:
            call(None, object_id, via=self.vp)
        except HvError as exc:
            if alive:
                self.record(c.partition.id, "teardown failed", {"call": call.__name__, "id": object_id,
                                                                "status": str(exc)})

    def traffic(self, child: Partition | int) -> dict:
        """VMBus traffic of one child: control messages in and out, data packets to its VSPs."""
        c = self.children.get(child if isinstance(child, int) else child.id)
        return dict(c.stats) if c else {"messages_in": 0, "messages_out": 0, "packets_in": 0}

    def vsp(self, child: Partition, relid: int) -> Vsp | None:
        ch = self.children[child.id].channels.get(relid)
        return ch.vsp if ch else None

    # ---- a child saved and restored ----------------------------------------------------------
    def quiesce(self, child: Partition) -> None:
        """The child's VM is about to be saved. Each open VSP's quiesce() runs first, while it
        can still complete work into its ring (before the memory snapshot); from then on until
        resume() nothing of the service or its VSPs reaches the child's memory."""
        c = self.children[child.id]
        if self._resuming.pop(child.id, None) is not None:  # restored and saved again before the service got to it
            return
        if c.quiesced:
            return
        for relid in sorted(c.channels):
            self._lifecycle(c, relid, "quiesce")
        c.quiesced, c.quiesced_at = True, self.host.now
        self.context.timers.hold(child.id)
        self.record(child.id, "devices quiesced", {"channels": sum(ch.vsp is not None for ch in c.channels.values())})

    def resume(self, child: Partition) -> None:
        """The child's memory and VP state are back (restored, or a save failed). Its devices
        resume on the service's VP, on its next pass (so a restore leaves memory exactly as it
        was saved): timers run again, each VSP's resume() runs, then what waited meanwhile, in
        the order it came: messages from the child, its channels' packets (every ring is read),
        signals and messages to it."""
        c = self.children.get(child.id)
        if c is None or not c.quiesced or child.id in self._resuming:
            return
        self._resuming[child.id] = c
        self._ring()

    def _resume_now(self, c: _Child) -> None:
        c.quiesced = False
        self.context.timers.release(c.partition.id)
        self.record(c.partition.id, "devices resumed", {"quiesced_ns": self.host.now - c.quiesced_at})
        for relid in sorted(c.channels):
            self._lifecycle(c, relid, "resume")
        held_in, c.held_in = c.held_in, []
        for payload, connection_id in held_in:
            self._handle_message(c, payload, connection_id)
        for relid in sorted(c.channels):  # every ring, whether or not its signal came meanwhile
            self._ready_channel(c, relid)
        self._retry(c)
        self._attend(c)   # what it sent or was sent meanwhile: served from the next pass on

    def quiesced(self, child: Partition) -> bool:
        """Whether nothing reaches the child now (from quiesce() until its devices resumed)."""
        c = self.children.get(child.id)
        return c is not None and c.quiesced

    def _lifecycle(self, c: _Child, relid: int, hook: str) -> None:
        """Call an open VSP's quiesce or resume. One that raises breaks its own channel (logged
        with the device); the save or restore and the other channels go on."""
        ch = c.channels.get(relid)
        if ch is None or ch.vsp is None:
            return
        try:
            getattr(ch.vsp, hook)()
        except Exception as exc:
            self._break(c, relid, f"{type(ch.vsp).__name__} failed to {hook}: {type(exc).__name__}: {exc}")

    # ---- serving ----------------------------------------------------------------------------------
    # Every hypercall the service makes on a child's behalf can fail because of what the child
    # did to its own SynIC (SCONTROL, SIMP, SIEFP, a SINT masked: INVALID_SYNIC_STATE) or to its
    # own ports. Such a failure is that child's alone: signals to it are held (one per channel,
    # coalesced, as a ring signal means only "look at this ring") and messages stay in its
    # outbox; both are retried on the service's next passes, so a guest that turns its SynIC on
    # again gets them. Any other failure ends the service's work for that child (_fail_child).
    def _signal(self, c: _Child, relid: int) -> None:
        """Signal one of a child's channels (its VSP wrote to the ring)."""
        if c.quiesced or c.unreachable or c.failed is not None:
            if c.failed is None:
                c.held_signals_out[relid] = None
                self._attend(c)
            return
        ch = c.channels.get(relid)
        conn = c.vp_evt.get(ch.target_vp, c.to_child_evt) if ch is not None else c.to_child_evt
        try:
            self.host.root.signal_event(conn, relid, via=self.vp)
        except HvError as exc:
            self._refused(c, exc, "SignalEvent")
            if c.failed is None:
                c.held_signals_out[relid] = None
                self._attend(c)

    def _refused(self, c: _Child, exc: HvError, call: str) -> None:
        """A signal or message to `c` failed: held for a retry if the child's SynIC refused it,
        the child failed otherwise."""
        if exc.status not in (HvStatus.INVALID_SYNIC_STATE, HvStatus.INSUFFICIENT_BUFFERS):
            self._fail_child(c, f"{call} to the guest failed: {exc}")
            return
        if exc.status is HvStatus.INVALID_SYNIC_STATE and not c.unreachable:
            c.unreachable = True
            self.record(c.partition.id, "unreachable", {"call": call, "status": exc.status.name})

    def _retry(self, c: _Child) -> None:
        """Send a child what waits for it: held signals, then its outbox."""
        if c.quiesced or c.failed is not None:
            return
        was = c.unreachable
        c.unreachable = False
        held, c.held_signals_out = list(c.held_signals_out), {}
        for relid in held:
            ch = c.channels.get(relid)
            if ch is not None and ch.end is not None:
                self._signal(c, relid)
        self._flush(c)
        if was and not c.unreachable and c.failed is None:
            self.record(c.partition.id, "reachable", {})

    def _fail_child(self, c: _Child, why: str) -> None:
        """The service cannot go on serving `c` (a parent-side call failed on its account, or
        serving it raised): its open channels are closed on the parent's side, nothing of it is
        served any more, and `on_child_failed` (the management's: the VM crashes) is told. The
        service and the other children go on."""
        if c.failed is not None:
            return
        c.failed = why
        self.record(c.partition.id, "child failed", {"why": why})
        for relid, ch in sorted(c.channels.items()):
            if ch.vsp is not None:
                self._close_vsp(c, relid, ch)
            if ch.broken is None:
                ch.broken = why
        c.outbox.clear()
        c.held_in.clear()
        c.held_signals_out.clear()
        if self.on_child_failed is not None:
            self.on_child_failed(c.partition.id, why)

    def _flush(self, c: _Child) -> None:
        while c.outbox and not c.quiesced and c.failed is None:
            try:
                self.host.root.post_message(c.to_child_msg, MESSAGE_TYPE_VMBUS, c.outbox[0], via=self.vp)
            except HvError as exc:
                self._refused(c, exc, "PostMessage")
                self._attend(c)
                if exc.status is HvStatus.INSUFFICIENT_BUFFERS:
                    # Its port's buffers free as the child takes its messages, which tells the
                    # service nothing: a timer brings the retry (a child out of the
                    # service's reach for good costs one pass per RETRY_MAX_NS).
                    self._arm_retry()
                return  # held: retried on the next pass
            self._retry_ns = RETRY_NS
            message = c.outbox.popleft()
            c.stats["messages_out"] += 1
            if self.message_trace is not None:
                self.message_trace.append((self.host.now, _message_name(message), {"to": c.partition.id}))

    def _deliver(self, c: _Child, relid: int, limit: int = PACKETS_PER_PASS) -> None:
        """Hand a signalled channel's packets to its VSP. A ring the guest corrupted, or a VSP
        that fails on what it was sent, breaks that channel only: it is rescinded."""
        ch = c.channels.get(relid)
        if ch is None or ch.end is None or ch.vsp is None:
            return
        if c.quiesced or c.failed is not None:  # its ring is not there now: every ring is read once the child is resumed
            return
        try:
            packets = ch.end.receive_some(limit)
            key = (c.partition.id, relid)
            self._served[key] = self._served.get(key, 0) + len(packets)
            self._pending_work += len(packets)
            c.stats["packets_in"] += len(packets)
            if packets:
                ch.vsp.on_packets(packets)
        except RingError as exc:
            self._break(c, relid, f"ring: {exc}")
            return
        except Exception as exc:  # a VSP bug or a packet it could not take: this channel only
            self._break(c, relid, f"{type(ch.vsp).__name__} failed: {type(exc).__name__}: {exc}")
            return
        if len(packets) == limit:  # maybe more: its turn comes again
            self._ready[key] = None

    def _ready_channel(self, c: _Child, relid: int) -> None:
        """A channel was signalled: its ring is read in turn (_serve_ready)."""
        self._ready[(c.partition.id, relid)] = None

    def _serve_ready(self) -> bool:
        """Read each ready channel once, up to what is left of its PACKETS_PER_PASS in this
        pass, in the order they became ready (round-robin: one with more is ready again, at the
        end; one that had its quantum waits for the next pass)."""
        did = False
        for key in list(self._ready):
            left = PACKETS_PER_PASS - self._served.get(key, 0)
            if left <= 0:
                continue
            del self._ready[key]
            c = self.children.get(key[0])
            if c is None:
                continue
            did = True
            self._contained(c, self._deliver, c, key[1], left)
        return did

    def _break(self, c: _Child, relid: int, why: str) -> None:
        ch = c.channels.get(relid)
        self.record(c.partition.id, "channel broken", {"relid": relid, "why": why},
                    device=ch.device.name if ch is not None else None)
        if ch is None or ch.broken is not None or self.children.get(c.partition.id) is not c:
            return  # broken already, or its child is gone: nothing left to rescind
        ch.broken = why
        c.manager.rescind(relid)

    def _guard(self, c: _Child, relid: int, fn) -> None:
        """Run a VSP's timer: if it raises, its channel breaks (the service and the other
        channels go on)."""
        try:
            fn()
        except Exception as exc:
            ch = c.channels.get(relid)
            name = type(ch.vsp).__name__ if ch is not None and ch.vsp is not None else "the VSP"
            self._break(c, relid, f"{name} failed in a timer: {type(exc).__name__}: {exc}")

    def _close_vsp(self, c: _Child, relid: int, ch: _Channel) -> None:
        """Tell a VSP its channel closes; one that raises is logged, and closed all the same."""
        vsp, ch.vsp, ch.end = ch.vsp, None, None
        try:
            vsp.on_close()
        except Exception as exc:
            self.record(c.partition.id, "device failed", {"relid": relid, "why": f"{type(vsp).__name__} failed "
                                                           f"to close: {type(exc).__name__}: {exc}"},
                        device=ch.device.name)

    def record(self, partition_id: int, event: str, fields: dict, *, device: str | None = None) -> None:
        """The service's one way to log: kept in `log` (the last LOG_LIMIT entries) and handed
        to `on_log`."""
        self.log.append((self.host.now, partition_id, event, fields))
        if self.on_log is not None:
            self.on_log(partition_id, event, fields, device)

    def broken(self, child: Partition, relid: int) -> str | None:
        """Why a channel was broken, or None."""
        ch = self.children[child.id].channels.get(relid)
        return ch.broken if ch else None

    def _drain(self) -> bool:
        """One pass: take the messages each child may have taken (its budget), every event
        flag, then read each signalled channel once (its quantum); True if there was any work."""
        self._served.clear()
        did = bool(self._resuming)
        while self._resuming:
            c = self._resuming.pop(next(iter(self._resuming)))
            self._contained(c, self._resume_now, c)
        raised = self._take_raised()
        if raised >> VMBUS_MESSAGE_SINT & 1 or self._look_slot:
            self._look_slot = False
            slot, flags = self._take_signals(raised)
            if slot:
                did |= self._take_messages()
            else:
                self.slot_reads += 1   # looked at, empty
            did |= self._signalled(flags)
        elif raised & self._flag_mask:
            did |= self._signalled(self._take_signals(raised)[1])
        if self._ready:
            did |= self._serve_ready()
        for c in list(self._attention.values()) if self._attention else ():
            self._contained(c, self._retry, c)
            self._contained(c, self._serve_inbox, c)
            if not self._needs_attention(c):
                self._attention.pop(c.partition.id, None)
        return did

    def _take_raised(self) -> int:
        """The SINTs raised on the service's VP since it last looked (bit n: SINT n), taken now.
        Without a guest context (before its VP first ran) every SINT counts as raised."""
        ctx = self._ctx
        if ctx is None:
            return ALL_SINTS
        raised, ctx.raised_sints = ctx.raised_sints, 0
        return raised

    @staticmethod
    def _needs_attention(c: _Child) -> bool:
        # A quiesced child is left alone: its resume retries and serves it (_resume_now).
        return bool(c.held_signals_out or c.outbox or c.inbox or c.unreachable) and c.failed is None \
            and not c.quiesced

    def _attend(self, c: _Child) -> None:
        """`c` has something held or waiting: it is retried and served on every pass until not."""
        if self._needs_attention(c) and self.children.get(c.partition.id) is c:
            self._attention[c.partition.id] = c

    def _take_messages(self) -> bool:
        """Take the messages in the service's SIM slot while their senders have budget left.
        A message from a child out of budget stays in the slot: the core delivers nothing more
        on the SINT until it is taken, so a flooder's messages cost the service (1 us each to
        deliver) only at its budget's rate, and its posts fail with INSUFFICIENT_BUFFERS once
        its ports' 16 buffers are in the queue. A timer takes it when the sender's budget allows."""
        root, did = self.host.root, False
        while True:
            self.slot_reads += 1
            msg = read_message_slot(root, self.simp, VMBUS_MESSAGE_SINT)
            if msg.empty:
                return did
            c = self._port_owner.get(msg.origin)
            if c is not None and not self._take_token(c):
                return did   # left in the slot: read again when the refill timer comes
            did = True
            clear_message_slot(root, self.simp, VMBUS_MESSAGE_SINT)
            if msg.pending:
                self.vp.set_registers({Register.EOM: 0})
            if c is not None and msg.message_type == MESSAGE_TYPE_VMBUS and c.failed is None:
                c.stats["messages_in"] += 1
                if self.message_trace is not None:
                    self.message_trace.append((self.host.now, _message_name(msg.payload),
                                               {"from": c.partition.id}))
                if c.quiesced:  # sent before its VM was saved: handled once it is resumed
                    c.held_in.append((msg.payload, c.msg_ports[msg.origin]))
                elif len(c.inbox) >= INBOX_LIMIT:
                    c.dropped += 1
                    if c.dropped == 1 or c.dropped % 1000 == 0:
                        self.record(c.partition.id, "messages dropped", {"dropped": c.dropped,
                                                                          "outbox": len(c.outbox)})
                else:
                    c.inbox.append((msg.payload, c.msg_ports[msg.origin]))
                    self._contained(c, self._serve_inbox, c)
                    if c.inbox:
                        self._attend(c)

    def _take_token(self, c: _Child) -> bool:
        """Spend one of `c`'s message budget; False (and a wake-up armed) if it has none now."""
        now = self.host.now
        gained = (now - c.tokens_at) // MESSAGE_REFILL_NS
        if gained:
            c.tokens = min(MESSAGE_BURST, c.tokens + gained)
            c.tokens_at = now if c.tokens == MESSAGE_BURST else c.tokens_at + gained * MESSAGE_REFILL_NS
        if c.tokens > 0:
            c.tokens -= 1
            return True
        if not self._refill_armed:
            self._refill_armed = True
            self.context.timers.add(c.tokens_at + MESSAGE_REFILL_NS - now, self._refilled)
        return False

    def _arm_retry(self) -> None:
        if not self._retry_armed:
            self._retry_armed = True
            self.context.timers.add(self._retry_ns, self._retry_fired)
            self._retry_ns = min(2 * self._retry_ns, RETRY_MAX_NS)
            self._wake_for_timers()

    def _retry_fired(self) -> None:
        self._retry_armed = False   # the pass this timer makes retries the children held

    def _refilled(self) -> None:
        self._refill_armed = False   # the pass this timer makes takes the waiting message
        self._look_slot = True

    def _serve_inbox(self, c: _Child) -> None:
        """Handle a child's messages while its outbox has room: a child that does not take the
        service's messages (its SIM page full or off) gets none of its own handled meanwhile,
        so what it makes the service send stays bounded (backpressure)."""
        while c.inbox and len(c.outbox) < OUTBOX_LIMIT and not c.quiesced and c.failed is None:
            payload, connection_id = c.inbox.popleft()
            self._handle_message(c, payload, connection_id)

    def _take_signals(self, raised: int) -> tuple[int, list[int]]:
        """In one crossing: the service's SIM slot's MessageType (0: empty; the message is left
        in it) and the event flags of each of its SINTs in `raised` (bit n: SINT n), each SINT's
        taken at once, as sint * FLAGS_PER_SINT + flag in order. The flags are taken before the
        messages of the same pass are handled; no flag of the service's can be set meanwhile
        (only the children's VPs set them, and the doorbell rings only while the service halts)."""
        sints = raised & self._flag_mask
        self.flag_scans += sints.bit_count()
        return self._taker.take(sints)

    def _signalled(self, flags: list[int]) -> bool:
        """Mark ready each channel with one of `flags` (a shared flag: each of its channels);
        True if any flag was set."""
        owners, ready = self._flag_owner, self._ready
        for flag in flags:
            for c, relid in owners.get(divmod(flag, FLAGS_PER_SINT), ()):
                ch = c.channels.get(relid)
                if ch is not None and ch.end is not None:
                    ready[(c.partition.id, relid)] = None   # what its end's on_signal does (_ready_channel)
        return bool(flags)

    def _contained(self, c: _Child, fn, *args) -> None:
        """Serve one child: whatever raises while doing so is that child's failure, never the
        end of the service's VP (which serves every child)."""
        try:
            fn(*args)
        except Exception as exc:
            self._fail_child(c, f"serving it raised {type(exc).__name__}: {exc}")

    def _handle_message(self, c: _Child, payload: bytes, connection_id: int) -> None:
        try:
            c.manager.handle_message(payload, connection_id=connection_id)
        except Exception as exc:  # a bug met by this child's message: that child's failure only
            self.record(c.partition.id, "message failed", {"error": f"{type(exc).__name__}: {exc}"})

    def _wake_for_timers(self) -> None:
        """Ring the doorbell if the service's VP is halted past its next timer (one armed or
        released from outside its loop)."""
        until = self._asleep_until
        if until is False:
            return  # running: it looks at its timers before it halts again
        timeout = self.context.next_timeout()
        if timeout is not None and (until is None or self.host.now + timeout < until):
            self._ring()

    def _ring(self) -> None:
        """Wake the service's VP if it is halted."""
        if self._asleep_until is not False:
            self._asleep_until = False
            self.host.root.signal_event(self._doorbell, 0, via=self.vp)

    async def _serve(self, ctx) -> None:
        self._ctx = ctx
        timers = self.context.timers
        while True:
            # A pass after a computation often finds nothing (no SINT raised meanwhile, nothing
            # held or ready): then _drain would only forget the last pass's quanta.
            if ctx.raised_sints or self._look_slot or self._resuming or self._ready or self._attention:
                did = self._drain()
            else:
                did = False
                self._served.clear()
            did |= timers.run_due()
            work, self._pending_work = self._pending_work, 0
            cpu = work * self.packet_cost + self.context.take_pending()
            if did or cpu:
                await self._spend(ctx, max(1, cpu))
            else:
                timeout = self.context.next_timeout()
                self._asleep_until = None if timeout is None else self.host.now + timeout
                await ctx.halt(timeout)
                self._asleep_until = False


    async def _spend(self, ctx, cpu: int) -> None:
        """Spend a pass's CPU time as one computation that an interrupt ends early: then the
        channels signalled meanwhile that have not had their quantum in this pass are served at
        once (and their cost added), so that a channel signalled while a flooder's quantum is
        being paid for waits for its interrupt, not the whole quantum. Messages that came
        meanwhile wait for the next pass."""
        while cpu > 0:
            wake = await ctx.compute_interruptible(cpu)
            cpu = wake.work_left if wake.reason in ("interrupt", "start") else 0
            if cpu > 0:
                raised = self._take_raised()
                if raised >> VMBUS_MESSAGE_SINT & 1:
                    self._look_slot = True
                if (raised & self._flag_mask and self._signalled(self._take_signals(raised)[1])) \
                        | bool(self._ready):
                    self._serve_ready()
                    work, self._pending_work = self._pending_work, 0
                    cpu += work * self.packet_cost + self.context.take_pending()


def _message_name(raw: bytes) -> str:
    """The channel-management message's name, for traces (no validation: names only)."""
    import struct

    from vmbus.protocol import MESSAGES
    if len(raw) < 4:
        return "short message"
    msgtype = struct.unpack_from("<I", raw)[0]
    return next((spec.name for spec in MESSAGES if spec.id == msgtype), f"message type {msgtype}")
