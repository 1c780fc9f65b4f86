"""A child's VMBus driver: the client state machine wired to its SynIC, run on its VP 0 as part of
the guest kernel. It negotiates a version, requests offers, binds each offer to the VSC the driver
registry has for its class, builds the channel's rings in the guest's own pages, opens it, and
from then on hands each signal's packets to the VSC.

Each open channel is one of the guest's devices, by name (`stack.devices[name]`): the name the
VM gave the offer's instance id (`names`, so that a VM's second network adapter is "network1",
say), else the device type's name, with 1, 2, ... after it for a second, third channel of the
same type. A device's config (`configs[name]`) goes by the same name.

A channel's host->guest signals arrive on the VP the guest asked for (`target_vps` at open, by
device type name; `modify_channel` later): the flag is set in that VP's SIEF page and its SINT 2
raised, so a guest that targets VP n > 0 runs `run_vp` on VP n, which turns that VP's SynIC on
(SIMP/SIEFP at simp_gpfn + 2n, siefp_gpfn + 2n) and takes the signals there; without it the VP's
SynIC stays off and the parent holds the channel's signals as for any guest with its SynIC off.

The stack is interrupt-driven: it reads a VP's SIM slot and SIEF flags only when the core reported
SINT 2 raised on that VP (GuestContext.take_sint), and once more after anything that can leave a
message or a flag there without a new interrupt the stack would see: its own SynIC set up (boot,
run_vp) and a restore (resume). A message queued behind a full slot needs nothing more: the slot is
read until it is empty, and the EOM written for it raises the SINT again. An idle guest's stack
costs nothing; a busy one costs per interrupt."""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

from drivers.device import DeviceType, Vsc
from drivers.registry import Registry
from hypervisor import HvError, Partition, Register
from hypervisor.abi import HostVisibility
from hypervisor.grants import modify_host_visibility, own_view, release_view, view as own_view_ptr
from hypervisor.status import HvStatus
from hypervisor.synic import clear_message_slot, read_message_slot, simp_value, siefp_value, sint_value
from vmbus.channel import ChannelEnd, init_ring_gpadl
from partitions.device_context import EndpointContext
from vmbus.client import ClientEvent, EventKind, VmbusClient
from vmbus.protocol import ModifyChannel, OfferChannel, VMBUS_MESSAGE_SINT
from vmbus.ring import RingError

MESSAGE_TYPE_VMBUS = 1
RETRY_NS = 50_000   # a message the host's full port refused is posted again after this
MAX_VPS = 30   # SynIC pages of VP n are simp_gpfn + 2n, siefp_gpfn + 2n, all below page 64
_NO_FLAGS = bytes(256)   # a SINT's event flags, all taken
_SINT_BIT = 1 << VMBUS_MESSAGE_SINT   # VMBus's SINT in GuestContext.raised_sints


class GuestPages:
    """The guest kernel's allocator of its own pages (GPA page numbers), for ring buffers."""

    def __init__(self, first: int, count: int):
        self._next, self._end = first, first + count
        self._free: list[int] = []

    def allocate(self, n: int) -> list[int]:
        if n <= len(self._free):
            pages, self._free = self._free[:n], self._free[n:]
            return pages
        if self._next + n > self._end:
            raise MemoryError(f"the guest has no {n} free pages for rings")
        pages = list(range(self._next, self._next + n))
        self._next += n
        return pages

    def release(self, pages: list[int]) -> None:
        self._free.extend(pages)

    def save(self) -> dict:
        """The allocator as plain data: the range it hands out, how far it got, what was given back."""
        return {"next": self._next, "end": self._end, "free": list(self._free)}

    @classmethod
    def restore(cls, state: dict) -> GuestPages:
        pages = cls(0, 0)
        pages._next, pages._end, pages._free = state["next"], state["end"], list(state["free"])
        return pages


@dataclass
class _Open:
    device: DeviceType
    pages: list[int]
    name: str = ""                # the device's name in `devices`
    end: ChannelEnd | None = None
    vsc: Vsc | None = None
    buffers: list = field(default_factory=list)  # (gpadl id, pages) granted beyond the ring
    shared: list = field(default_factory=list)   # (own view id, pages) made host-visible
    held: list = field(default_factory=list)     # other pages it took from the allocator (buffer_pages)


class GuestVmbus:
    """The VMBus stack of one guest: call `run` as (part of) its VP 0's guest coroutine."""

    def __init__(self, partition: Partition, registry: Registry, *, simp_gpfn: int = 2, siefp_gpfn: int = 3,
                 ring_pages: tuple[int, int] | None = None, configs: dict[str, dict] | None = None,
                 on_poll: Callable[[GuestVmbus], None] | None = None, names: dict | None = None,
                 target_vps: dict[str, int] | None = None):
        self.partition = partition
        self.registry = registry
        self.simp, self.siefp = simp_gpfn, siefp_gpfn
        if ring_pages is None:
            # Pages 0-63 are the kernel's own (hypercall pages, SynIC pages); device buffers come
            # from the rest of the first 16 MiB the guest has.
            mapped = partition.host.introspect.partition_info(partition)["gpa_mapped"]
            ring_pages = (64, max(0, min(mapped, 4096) - 64))
        self.pages = GuestPages(*ring_pages)
        self.configs = configs or {}
        self.names = dict(names or {})   # offer instance id -> the device's name in this guest
        self.target_vps = dict(target_vps or {})  # device type name -> VP its channel is opened on
        self.signals: dict[int, int] = {}  # VP -> channel signals taken from its SIEF page
        self.slot_reads = 0   # reads of a SIM slot (each message, and each look at an empty slot)
        self.flag_scans = 0   # reads of a VP's 256 bytes of SINT 2 event flags
        self._contexts: dict[int, Any] = {}  # VP index -> its guest context (boot, run_vp)
        self._rescan: set[int] = set()       # VPs whose slot and flags are read on their next pass
        self.on_poll = on_poll  # called after every pass over messages and signals
        self.client = VmbusClient(self, self._bind)
        self.channels: dict[int, _Open] = {}
        self.devices: dict[str, Vsc] = {}
        self.events: list[ClientEvent] = []
        self.log_entries: list[tuple] = []
        self.on_log: Callable[[str, dict], None] | None = None
        self._pending: list[ClientEvent] = []
        self._outbox: deque[tuple[bytes, int]] = deque()   # (message, connection) the host's port refused, in order
        self._retry_armed = False
        self._gpadl_done: dict[int, Callable[[int, bool], None]] = {}
        self._views = 0x40000000  # own-view ids for buffers (ring views use the relid)
        self._stale: list[dict] = []       # channels of the shell a restored stack ran on (load)
        self._carried: dict[str, dict] = {}  # VSC records of devices not yet open again (load)
        self.context = EndpointContext(partition.host, lambda event, fields: self.log(event, **fields),
                                       create_gpadl=self._create_gpadl, own_view=self._own_buffer_view)

    # ---- the client's notifier ------------------------------------------------------------------
    def send(self, message: bytes, connection_id: int) -> None:
        # In order: behind any held message. The host's message ports have 16 buffers each; a
        # guest opening many channels at once fills them, and what they refuse is posted again
        # from a timer (the host taking its messages tells the guest nothing).
        self._outbox.append((message, connection_id))
        self._flush_outbox()

    def _flush_outbox(self) -> None:
        while self._outbox:
            message, connection_id = self._outbox[0]
            try:
                self.partition.post_message(connection_id, MESSAGE_TYPE_VMBUS, message)
            except HvError as exc:
                if exc.status is not HvStatus.INSUFFICIENT_BUFFERS:
                    raise
                if not self._retry_armed:
                    self._retry_armed = True
                    self.context.call_later(RETRY_NS, self._retry_outbox)
                return
            self._outbox.popleft()

    def _retry_outbox(self) -> None:
        self._retry_armed = False
        self._flush_outbox()

    def event(self, event: ClientEvent) -> None:
        self._pending.append(event)

    def log(self, event: str, **fields: Any) -> None:
        self.log_entries.append((self.partition.host.now, event, fields))
        if self.on_log is not None:  # the host's event log (the management sets it)
            self.on_log(event, fields)

    def _bind(self, offer: OfferChannel) -> DeviceType | None:
        return self.registry.by_class(offer.interface_id)

    # ---- GPADLs and buffers the devices ask for ---------------------------------------------------
    def _create_gpadl(self, relid: int, pages: list[int], done: Callable[[int, bool], None]) -> int:
        from vmbus.protocol import GpaRange
        gpadl_id = self.client.create_gpadl(relid, [GpaRange(len(pages) * 4096, 0, tuple(pages))])
        self._gpadl_done[gpadl_id] = done
        return gpadl_id

    def _grant_pages(self, relid: int, count: int, done) -> None:
        """For a VSC: `count` of the guest's pages, mapped for it and granted to the host as a
        GPADL of its channel; done(gpadl_id, pages, view) once created, done(None, [], None) if not."""
        pages = self.pages.allocate(count)
        view = self._own_buffer_view(pages)

        def created(gpadl_id: int, ok: bool) -> None:
            if ok:
                self.channels[relid].buffers.append((gpadl_id, pages))
                done(gpadl_id, pages, view)
            else:
                done(None, [], None)

        self._create_gpadl(relid, pages, created)

    def _share_pages(self, relid: int, count: int):
        """For a VSC: `count` of the guest's pages, mapped for it and made host-visible read-write
        (HvCallModifySparseGpaPageHostVisibility, as an isolated guest shares its bounce buffers);
        returns (pages, view). They are hidden and freed when the channel closes."""
        pages = self.pages.allocate(count)
        self._views += 1
        view_id = self._views
        view = own_view(self.partition, view_id, pages)
        try:
            modify_host_visibility(self.partition, pages, HostVisibility.READ_WRITE)
        except Exception:
            release_view(self.partition, view_id)
            self.pages.release(pages)
            raise
        self.channels[relid].shared.append((view_id, pages))
        return pages, view

    def _own_buffer_view(self, pages: list[int]):
        self._views += 1
        return own_view(self.partition, self._views, pages)

    # ---- channels ------------------------------------------------------------------------------------
    def _open(self, relid: int, device: DeviceType) -> None:
        n = device.ring_pages
        pages = self.pages.allocate(2 * n)
        view = own_view(self.partition, relid, pages)
        init_ring_gpadl(view, n)
        self.channels[relid] = _Open(device, pages)
        self.client.open_channel(relid, pages, n, target_vp=self.target_vps.get(device.name, 0))

    def modify_channel(self, relid: int, target_vp: int) -> None:
        """Ask the host to signal open channel `relid` on VP `target_vp` from now on (the host
        may refuse: a VP this guest lacks); that VP must run `run_vp`."""
        self.send(ModifyChannel(relid, target_vp).encode(), self.client.msg_conn_id)

    def _opened(self, relid: int) -> None:
        ch = self.channels[relid]
        offer = self.client.channels[relid].offer
        view = own_view_ptr(self.partition, relid)
        part = self.partition

        def signal_host() -> None:
            part.signal_event(offer.connection_id)

        end = ChannelEnd.guest(view, ch.device.ring_pages, signal_host)
        ch.name = self._name_for(offer, ch.device)
        config = dict(self.configs.get(ch.name) or {})
        config.setdefault("grant_pages", lambda n, done: self._grant_pages(relid, n, done))
        config.setdefault("share_pages", lambda n: self._share_pages(relid, n))
        config.setdefault("relid", relid)
        if ch.device.guest_buffer_pages and "buffer_pages" not in config:
            # Pages the VSC shares through GPADLs of its own (netvsc's receive and send buffers).
            config["buffer_pages"] = self.pages.allocate(ch.device.guest_buffer_pages)
            ch.held.extend(config["buffer_pages"])
        vsc = ch.device.vsc(end, config, self.context)
        self._carried.pop(ch.name, None)   # the device is open again: its own record from now on

        def deliver() -> None:
            # The host is not trusted: a ring it corrupted breaks this channel only.
            try:
                packets = end.receive()
            except RingError as exc:
                self.log("channel broken", relid=relid, why=str(exc))
                self.client.close_channel(relid)
                return
            vsc.on_packets(packets)

        end.on_signal = deliver
        ch.end, ch.vsc = end, vsc
        self.devices[ch.name] = vsc
        vsc.on_open()

    def _name_for(self, offer: OfferChannel, device: DeviceType) -> str:
        name = self.names.get(offer.instance_id)
        if name is not None:
            return name
        taken = {c.name for c in self.channels.values()} | set(self.devices) | set(self.names.values())
        name, n = device.name, 0
        while name in taken:
            n += 1
            name = f"{device.name}{n}"
        return name

    def _closed(self, relid: int) -> None:
        ch = self.channels.pop(relid, None)
        if ch is None:
            return
        if ch.vsc is not None:
            ch.vsc.on_close()
            self.devices.pop(ch.name, None)
        release_view(self.partition, relid)
        self.pages.release(ch.pages)
        for view_id, pages in ch.shared:  # the host sees them no more before they are reused
            release_view(self.partition, view_id)
            try:
                modify_host_visibility(self.partition, pages, HostVisibility.NONE)
            except HvError as exc:  # still visible: never reuse them for anything private
                self.log("cannot hide shared pages", relid=relid, error=str(exc))
                continue
            self.pages.release(pages)

    def _handle_events(self) -> None:
        while self._pending:
            ev = self._pending.pop(0)
            self.events.append(ev)
            if ev.kind is EventKind.OFFERS_DELIVERED:
                for relid, ch in sorted(self.client.channels.items()):
                    if ch.driver is not None and relid not in self.channels:
                        self._open(relid, ch.driver)
            elif ev.kind is EventKind.OPENED:
                self._opened(ev.relid)
            elif ev.kind in (EventKind.GPADL_CREATED, EventKind.GPADL_FAILED) and ev.gpadl_id in self._gpadl_done:
                self._gpadl_done.pop(ev.gpadl_id)(ev.gpadl_id, ev.kind is EventKind.GPADL_CREATED)
            elif ev.kind in (EventKind.CLOSED, EventKind.RESCINDED, EventKind.OPEN_FAILED):
                self._closed(ev.relid)

    # ---- the loop ------------------------------------------------------------------------------------
    def _raised(self, vp: int) -> bool:
        """Whether VP `vp`'s slot and flags must be read now: its SINT 2 was raised (taken here), or
        a rescan is due. A stack driven by no guest context (a test calling service()) reads always."""
        ctx = self._contexts.get(vp)
        raised = ctx is None or ctx.take_sint(VMBUS_MESSAGE_SINT)
        if vp in self._rescan:
            self._rescan.discard(vp)
            return True
        return raised

    def pending(self) -> bool:
        """Whether VP 0's slot and flags wait to be read: its SINT 2 raised and not yet taken, or
        a rescan due. (Device timers are not counted: the caller's next halt or computation ends
        by next_timeout(), so a timer that re-arms itself at once cannot spin it in zero time.)"""
        ctx = self._contexts.get(0)
        return ctx is None or bool(ctx.raised_sints >> VMBUS_MESSAGE_SINT & 1) or 0 in self._rescan

    def quiet(self) -> bool:
        """Whether service() would do nothing now but run the timers due: no SINT 2 raised on VP 0
        and not taken, no rescan, no client event, no poll hook, no CPU time charged. (While it
        holds, the guest kernel lets the core take a cpu-burn's steps: partitions/kernel.py.)"""
        ctx = self._contexts.get(0)
        return (ctx is not None and not ctx.raised_sints >> VMBUS_MESSAGE_SINT & 1 and not self._rescan
                and not self._pending and self.on_poll is None and not self.context.pending_ns)

    def _drain(self) -> None:
        # _raised(0), inline: this runs on every pass of VP 0's kernel (every wake of its guest)
        ctx = self._contexts.get(0)
        if ctx is None:
            raised = True
        else:
            raised = ctx.raised_sints & _SINT_BIT
            if raised:
                ctx.raised_sints &= ~_SINT_BIT
        if self._rescan and 0 in self._rescan:
            self._rescan.discard(0)
            raised = True
        if raised:
            self._take_messages()
            self._take_flags(0)
        self._handle_events()
        if self.on_poll is not None:
            self.on_poll(self)

    def _take_messages(self) -> None:
        part = self.partition
        while True:
            self.slot_reads += 1
            msg = read_message_slot(part, self.simp, VMBUS_MESSAGE_SINT)
            if msg.empty:
                break
            clear_message_slot(part, self.simp, VMBUS_MESSAGE_SINT)
            if msg.pending:
                part.vp(0).set_registers({Register.EOM: 0})
            if msg.message_type == MESSAGE_TYPE_VMBUS:
                self.client.handle_message(msg.payload)
            self._handle_events()

    def _take_flags(self, vp: int) -> None:
        """Hand the channels whose flags are set in VP `vp`'s SIEF page their signals."""
        part = self.partition
        base = (self.siefp + 2 * vp) * 4096 + VMBUS_MESSAGE_SINT * 256
        self.flag_scans += 1
        flags = int.from_bytes(part.read(base, 256), "little")
        if flags:
            part.write(base, _NO_FLAGS)
            while flags:
                relid = (flags & -flags).bit_length() - 1
                flags &= flags - 1
                self.signals[vp] = self.signals.get(vp, 0) + 1
                ch = self.channels.get(relid)
                if ch is not None and ch.end is not None:
                    ch.end.signalled()

    # ---- the VM saved and restored ------------------------------------------------------------
    def quiesce(self) -> None:
        """The VM is being saved (its VPs are suspended already). The devices' timers stop with
        the guest's time: each runs after the restore as long after it as it had left. Nothing
        else of the stack runs but on VP 0, and the rings and SynIC pages come back with memory."""
        self.context.timers.hold(None)

    def resume(self) -> None:
        """The VM was restored: its devices' timers run again, and every VP's slot and flags are
        read on its next pass (what the restored pages hold came with no interrupt the stack saw)."""
        self.context.timers.release(None)
        self._rescan.update(self._contexts)

    # ---- the kernel's state as data (a restore into a new shell) ------------------------------
    def save(self) -> dict:
        """The stack's state as plain data: its page allocator, the pages each open channel holds
        (rings, buffers, host-visible pages) and each VSC's record where it has one. A stack
        restored and not yet booted gives back what it was restored from (its channels wait to
        be let go at boot; a device not yet open again keeps its VSC record)."""
        channels = [dict(c) for c in self._stale]
        vscs = dict(self._carried)
        for relid, ch in sorted(self.channels.items()):
            channels.append({"name": ch.name, "device": ch.device.name, "rings": list(ch.pages),
                             "buffers": [list(pages) for _, pages in ch.buffers],
                             "shared": [list(pages) for _, pages in ch.shared], "held": list(ch.held)})
            if ch.vsc is not None:
                try:
                    vscs[ch.name] = {"saved": ch.vsc.save()}
                except Exception as exc:  # SaveUnsupported and friends: named, not fatal
                    vscs[ch.name] = {"not_saved": f"{type(exc).__name__}: {exc}"}
        return {"format": 1, "pages": self.pages.save(), "channels": channels, "vscs": vscs}

    @staticmethod
    def check_record(record, where: str) -> None:
        """Raise ValueError (saying what, under `where`) unless `record` is what save() gives."""
        def pages_ok(x):
            return isinstance(x, list) and all(isinstance(p, int) and not isinstance(p, bool) and p >= 0 for p in x)
        if not isinstance(record, dict) or record.get("format") != 1:
            raise ValueError(f"{where}: expected a map with format 1")
        alloc = record.get("pages")
        if not (isinstance(alloc, dict) and pages_ok([alloc.get("next"), alloc.get("end")])
                and pages_ok(alloc.get("free")) and alloc["next"] <= alloc["end"]):
            raise ValueError(f"{where}.pages: expected the allocator's next, end and free pages")
        channels = record.get("channels")
        if not isinstance(channels, list):
            raise ValueError(f"{where}.channels: expected a list")
        for n, c in enumerate(channels):
            if not (isinstance(c, dict) and isinstance(c.get("name"), str) and isinstance(c.get("device"), str)
                    and pages_ok(c.get("rings")) and pages_ok(c.get("held"))
                    and all(isinstance(c.get(k), list) and all(pages_ok(p) for p in c[k])
                            for k in ("buffers", "shared"))):
                raise ValueError(f"{where}.channels[{n}]: expected name, device, rings, buffers, shared, held")
        vscs = record.get("vscs")
        if not isinstance(vscs, dict) or not all(
                isinstance(v, dict) and len(v) == 1 and ("saved" in v or isinstance(v.get("not_saved"), str))
                for v in vscs.values()):
            raise ValueError(f"{where}.vscs: expected {{name: {{'saved': record}} or {{'not_saved': reason}}}}")

    def load(self, record: dict) -> None:
        """Take the state of a stack saved elsewhere (check_record first), before boot(resume=True):
        its allocator, and the channels of the shell it ran on, which boot lets go."""
        self.pages = GuestPages.restore(record["pages"])
        self._stale = [dict(c) for c in record["channels"]]
        self._carried = dict(record["vscs"])

    def _let_go_stale(self, ctx) -> None:
        """Resuming in a new shell: the channels of the old one are gone with it. What the hypervisor
        of the old shell left in the SynIC pages is dropped (it was meant for the old host), the
        pages the old channels made host-visible are hidden, and all their pages go back to the
        allocator, to be rings and buffers again when the devices open anew."""
        part = self.partition
        clear_message_slot(part, self.simp, VMBUS_MESSAGE_SINT)
        part.write((self.siefp * 4096) + VMBUS_MESSAGE_SINT * 256, _NO_FLAGS)
        stale, self._stale = self._stale, []
        for c in stale:
            for pages in c["shared"]:
                try:
                    modify_host_visibility(part, pages, HostVisibility.NONE)
                except HvError as exc:  # still visible: never reuse them for anything private
                    self.log("cannot hide shared pages", device=c["name"], error=str(exc))
                    continue
                self.pages.release(pages)
            self.pages.release(c["rings"])
            for pages in c["buffers"]:
                self.pages.release(pages)
            self.pages.release(c["held"])
        self.log("vmbus resume", channels=len(stale))

    def boot(self, ctx, *, resume: bool = False) -> None:
        """What the guest kernel does once: SynIC on (message and flag pages, SINT 2), then
        contact the host; negotiation, offers and opens follow as messages arrive. With `resume`
        the guest resumes from a saved state in a new shell (load() gave its record), as Linux's
        VMBus driver does after hibernation: the old shell's channels are let go first, then it
        connects again and its devices open afresh."""
        if resume:
            self._let_go_stale(ctx)
        ctx.vp.set_registers({Register.SIMP: simp_value(self.simp), Register.SIEFP: siefp_value(self.siefp),
                              Register.SCONTROL: 1, Register.SINT0 + VMBUS_MESSAGE_SINT: sint_value(0x32)})
        self._contexts[0] = ctx
        self._rescan.add(0)
        self.client.connect()

    def service(self) -> int:
        """Take every message and signal waiting and run due timers; returns the CPU time the
        device sides charged meanwhile (the caller spends it)."""
        self._drain()
        self.context.run_due()
        return self.context.take_pending()

    async def run_vp(self, ctx) -> None:
        """Serve the channels that target this VP (not VP 0) for ever: its SynIC on, then take the
        signals its SIEF page gets. Control messages and timers stay with VP 0."""
        vp = ctx.vp.index
        if not 0 < vp < MAX_VPS:
            raise ValueError(f"run_vp: expected a VP 1..{MAX_VPS - 1} of {self.partition!r}, got VP {vp}")
        ctx.vp.set_registers({Register.SIMP: simp_value(self.simp + 2 * vp),
                              Register.SIEFP: siefp_value(self.siefp + 2 * vp),
                              Register.SCONTROL: 1, Register.SINT0 + VMBUS_MESSAGE_SINT: sint_value(0x32)})
        self._contexts[vp] = ctx
        self._rescan.add(vp)
        while True:
            if self._raised(vp):
                self._take_flags(vp)
            self._handle_events()
            if self.on_poll is not None:
                self.on_poll(self)
            cpu = self.context.take_pending()
            if cpu:
                await ctx.compute(cpu)
            elif not ctx.raised_sints >> VMBUS_MESSAGE_SINT & 1:
                await ctx.halt()

    async def run(self, ctx) -> None:
        """Boot the stack, then serve it for ever (a VP that does nothing else)."""
        self.boot(ctx)
        while True:
            cpu = self.service()
            if cpu:
                await ctx.compute(cpu)
            elif not self.pending():
                await ctx.halt(self.context.next_timeout())
