"""The per-child VMBus server's channel manager: a synchronous state machine that takes the
guest's channel-management messages and the host's offers, and acts only through a notifier.

States (reference/hyperv-abi.md §3.5):

    connection  DISCONNECTED --InitiateContact(supported version)--> CONNECTED
                CONNECTED --RequestOffers--> OFFERS_DELIVERED --Unload--> DISCONNECTED
    channel     OFFERED --OpenChannel--> OPENING --open status 0--> OPEN --CloseChannel--> OFFERED
                (OPENING --open failed--> OFFERED); rescind: any --> RESCINDED --RelidReleased-->
                gone (the relid is free again)
    GPADL       header [+ bodies] --complete, granted--> CREATED --GpadlTeardown--> gone
                (the ring GPADL of an OPENING/OPEN channel: --> TEARDOWN_PENDING until closed)

Invariants, checked by the tests after every step:
  * an OPENING or OPEN channel's ring GPADL is live (CREATED or TEARDOWN_PENDING) and its own;
  * every live or in-progress GPADL belongs to a channel the manager still holds;
  * a relid is never handed to a new offer until the guest released it (or never saw it);
  * DISCONNECTED means no GPADL and no open channel;
  * create_gpadl/teardown_gpadl and open_channel/close_channel calls on the notifier pair up.

Every message from the guest is decoded, then checked against the state; a message that fails
either is logged through the notifier and dropped, and changes nothing, except that a GPADL the
guest described inconsistently is answered with a failed GpadlCreated (so the guest does not
wait forever) and an unusable OpenChannel with a failed OpenResult. handle_message never raises
for anything the guest sends. Host-side calls (offer, rescind, open_complete) raise ValueError
for the host's own mistakes.
"""
from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass
from typing import Any, Protocol

from vmbus.channel import OfferSpec, OpenRequest, ring_layout_error
from vmbus.protocol import (
    G2H,
    MAX_RELID,
    PAGE_SIZE,
    STATUS_SUCCESS,
    STATUS_UNSUCCESSFUL,
    SUPPORTED_VERSIONS,
    VERSION_WIN8_1,
    VERSION_WIN10_V5,
    VERSION_WIN10_V5_3,
    VMBUS_MESSAGE_CONNECTION_ID,
    VMBUS_MESSAGE_SINT,
    AllOffersDelivered,
    CloseChannel,
    ConnectionState,
    GpadlAssembler,
    GpadlBody,
    GpadlCreated,
    GpadlError,
    GpadlHeader,
    GpadlTeardown,
    GpadlTorndown,
    GpaRange,
    InitiateContact,
    Message,
    ModifyChannel,
    ModifyChannelResponse,
    OpenChannel,
    OpenResult,
    ProtocolError,
    RelidReleased,
    RequestOffers,
    RescindChannelOffer,
    Unload,
    UnloadResponse,
    VersionResponse,
    decode,
    message_connection_id,
)

SAVED_STATE_VERSION = 1
CHANNEL_CONNECTION_BASE = 0x2000  # OpenVMM's relid | sint << 12 with SINT 2, VTL 0
DEFAULT_MAX_GPADLS = 1024  # live + in-progress GPADLs per connection; bounds a guest's claim


class Notifier(Protocol):
    """Everything the manager does to the world. Calls are made synchronously from
    handle_message and the host-side methods; none of them may call back into the manager."""

    def send(self, message: bytes, target_vp: int, sint: int) -> None:
        """Post a message to the guest (SynIC message type 1 on `sint` of `target_vp`)."""

    def connect(self, version: int, target_vp: int, sint: int,
                monitor_pages: tuple[int, int] | None) -> bool:
        """The guest asked to connect at a version the manager supports; False refuses it."""

    def disconnect(self) -> None:
        """The connection ended (Unload or reset); every channel was closed and GPADL torn
        down first."""

    def create_gpadl(self, relid: int, gpadl_id: int, ranges: tuple[GpaRange, ...]) -> int:
        """Record a grant of the child's pages; 0 on success, else an NTSTATUS for the guest."""

    def teardown_gpadl(self, relid: int, gpadl_id: int) -> None:
        """Revoke a grant made by create_gpadl."""

    def open_channel(self, request: OpenRequest) -> int | None:
        """Open the device side; an NTSTATUS (0 = opened), or None if the host will call
        ChannelManager.open_complete later."""

    def close_channel(self, relid: int) -> None:
        """Close the device side of an open (or opening) channel."""

    def modify_channel(self, relid: int, target_vp: int) -> int:
        """Optional: send an open channel's host->guest signals to VP `target_vp` from now on;
        an NTSTATUS (0 = done). A notifier without it leaves signalling as it was; the manager
        still records the channel's new target VP."""

    def log(self, event: str, **fields: Any) -> None:
        """A structured event: what was ignored and why, and each state change."""


class ServerState(enum.Enum):
    DISCONNECTED = "disconnected"
    CONNECTED = "connected"  # version agreed, offers not yet requested
    OFFERS_DELIVERED = "offers_delivered"


class ChannelState(enum.Enum):
    OFFERED = "offered"
    OPENING = "opening"  # open_channel returned None; waiting for open_complete
    OPEN = "open"
    RESCINDED = "rescinded"  # host closed and rescinded it; waiting for RelidReleased


class GpadlState(enum.Enum):
    CREATED = "created"
    TEARDOWN_PENDING = "teardown_pending"  # ring of an open channel: torn down at close


# N.B. There is no CLOSING channel state: CloseChannel has no reply and close_channel is
# synchronous, so a channel is OFFERED again as soon as the close is handled.


@dataclass
class _Channel:
    relid: int
    spec: OfferSpec
    connection_id: int
    state: ChannelState = ChannelState.OFFERED
    open_id: int = 0
    ring_gpadl_id: int | None = None
    target_vp: int = 0


@dataclass
class _Gpadl:
    relid: int
    ranges: tuple[GpaRange, ...]
    state: GpadlState = GpadlState.CREATED

    @property
    def page_count(self) -> int:
        return sum(len(r.pfns) for r in self.ranges)


class ChannelManager:
    """The VMBus server of one child partition."""

    def __init__(self, notifier: Notifier, *, versions=SUPPORTED_VERSIONS,
                 message_connection_id: int = VMBUS_MESSAGE_CONNECTION_ID,
                 max_gpadls: int = DEFAULT_MAX_GPADLS):
        self.notifier = notifier
        self.versions = frozenset(versions)  # what this server accepts
        self.message_connection_id = message_connection_id  # handed out to >= 5.0 guests
        self.max_gpadls = max_gpadls
        self.state = ServerState.DISCONNECTED
        self.version: int | None = None  # negotiated protocol version
        self.target_vp = 0  # where host->guest messages go
        self.sint = VMBUS_MESSAGE_SINT
        self.msg_conn_id = VMBUS_MESSAGE_CONNECTION_ID  # where the guest's messages arrive
        self._channels: dict[int, _Channel] = {}  # relid -> channel, until released
        self._gpadls: dict[int, _Gpadl] = {}  # gpadl id -> granted GPADL
        self._assembling: dict[int, GpadlAssembler] = {}  # gpadl id -> header seen, bodies due
        self._handlers = {  # InitiateContact also needs the connection id: see handle_message
            RequestOffers: self._on_request_offers,
            GpadlHeader: self._on_gpadl_header,
            GpadlBody: self._on_gpadl_body,
            GpadlTeardown: self._on_gpadl_teardown,
            OpenChannel: self._on_open_channel,
            CloseChannel: self._on_close_channel,
            RelidReleased: self._on_relid_released,
            ModifyChannel: self._on_modify_channel,
            Unload: self._on_unload,
        }

    # -- introspection -----------------------------------------------------------------------

    def gpadl_ranges(self, relid: int, gpadl_id: int) -> tuple[GpaRange, ...] | None:
        """The ranges of a GPADL the guest created on channel `relid`, or None."""
        g = self._gpadls.get(gpadl_id)
        return g.ranges if g is not None and g.relid == relid and g.state is GpadlState.CREATED else None

    def channel_state(self, relid: int) -> ChannelState | None:
        ch = self._channels.get(relid)
        return None if ch is None else ch.state

    def gpadl_state(self, gpadl_id: int) -> GpadlState | None:
        g = self._gpadls.get(gpadl_id)
        return None if g is None else g.state

    @property
    def relids(self) -> list[int]:
        return sorted(self._channels)

    # -- host side ---------------------------------------------------------------------------

    def offer(self, spec: OfferSpec) -> int:
        """Add a channel and return its relid; the guest sees it now if it has asked for
        offers, else on RequestOffers."""
        key = (spec.interface_id, spec.instance_id, spec.sub_channel_index)
        if any((c.spec.interface_id, c.spec.instance_id, c.spec.sub_channel_index) == key
               for c in self._channels.values()):
            raise ValueError(f"{key} is already offered")
        relid = next((r for r in range(1, MAX_RELID + 1) if r not in self._channels), None)
        if relid is None:
            raise ValueError("no free relid")
        conn = spec.connection_id if spec.connection_id is not None else CHANNEL_CONNECTION_BASE + relid
        ch = _Channel(relid, spec, conn)
        self._channels[relid] = ch
        self._log("offer", relid=relid, interface_id=str(spec.interface_id))
        if self.state is ServerState.OFFERS_DELIVERED:
            self._send(spec.to_message(relid, conn))
        return relid

    def rescind(self, relid: int) -> None:
        """Withdraw a channel: close it if open, tell the guest, hold the relid until the guest
        releases it."""
        ch = self._channels.get(relid)
        if ch is None or ch.state is ChannelState.RESCINDED:
            raise ValueError(f"relid {relid} is not offered")
        if ch.state in (ChannelState.OPENING, ChannelState.OPEN):
            self.notifier.close_channel(relid)
        self._drop_assembling(relid)
        self._log("rescind", relid=relid)
        if self.state is not ServerState.OFFERS_DELIVERED:
            del self._channels[relid]  # the guest never saw it; no GPADL can exist
            return
        ring = ch.ring_gpadl_id
        ch.state, ch.ring_gpadl_id = ChannelState.RESCINDED, None
        self._send(RescindChannelOffer(relid))
        self._teardown_if_pending(ring)

    def open_complete(self, relid: int, status: int) -> None:
        """Finish an open that open_channel left pending."""
        ch = self._channels.get(relid)
        if ch is None or ch.state is not ChannelState.OPENING:
            raise ValueError(f"relid {relid} is not opening")
        self._finish_open(ch, status)

    def reset(self) -> None:
        """The guest went away without unloading (VM reset): close and revoke everything,
        send nothing, keep the host's offers."""
        self._disconnect()

    # -- guest side --------------------------------------------------------------------------

    def handle_message(self, raw, connection_id: int | None = None) -> None:
        """Process one message from the guest. `connection_id`, if given, is the connection it
        was posted to, and must be the one the protocol version prescribes."""
        try:
            msg = decode(raw)
        except ProtocolError as exc:
            self._ignore(None, str(exc))
            return
        if msg.spec.direction is not G2H:
            self._ignore(msg, "host-to-guest message from the guest")
            return
        if self.version is not None and msg.spec.min_version > self.version:
            self._ignore(msg, f"needs version {msg.spec.min_version:#x}")
            return
        if connection_id is not None and not isinstance(msg, InitiateContact):
            if connection_id != self.msg_conn_id:
                self._ignore(msg, f"posted to connection {connection_id}")
                return
        if isinstance(msg, InitiateContact):
            self._on_initiate_contact(msg, connection_id)
        else:
            self._handlers[type(msg)](msg)

    # -- connection --------------------------------------------------------------------------

    def _on_initiate_contact(self, m: InitiateContact, connection_id: int | None = None) -> None:
        if self.state is not ServerState.DISCONNECTED:
            self._ignore(m, "already connected")
            return
        version = m.version_requested
        if connection_id is not None and connection_id != message_connection_id(version):
            self._ignore(m, f"version {version:#x} posted to connection {connection_id}")
            return
        target_vp = m.target_vcpu if version >= VERSION_WIN8_1 else 0
        sint = m.msg_sint
        if version not in self.versions:
            self._log("version_refused", version=version)
            self.notifier.send(VersionResponse(False).encode(), target_vp, sint)
            return
        monitors = (m.monitor_page1, m.monitor_page2)
        if (monitors[0] == 0) != (monitors[1] == 0) or m.msg_vtl != 0:
            self._log("contact_refused", version=version, monitor_pages=monitors, vtl=m.msg_vtl)
            self.notifier.send(
                VersionResponse(False, ConnectionState.FAILED_UNKNOWN_FAILURE).encode(),
                target_vp, sint)
            return
        if not self.notifier.connect(version, target_vp, sint, monitors if monitors[0] else None):
            self._log("contact_refused", version=version, by="host")
            self.notifier.send(
                VersionResponse(False, ConnectionState.FAILED_UNKNOWN_FAILURE).encode(),
                target_vp, sint)
            return
        self.state, self.version = ServerState.CONNECTED, version
        self.target_vp, self.sint = target_vp, sint
        if version >= VERSION_WIN10_V5:
            self.msg_conn_id = self.message_connection_id
            reply = VersionResponse(True, msg_conn_id=self.msg_conn_id)
        else:
            self.msg_conn_id = VMBUS_MESSAGE_CONNECTION_ID
            reply = VersionResponse(True, msg_conn_id=version)
        self._log("connected", version=version, target_vp=target_vp, sint=sint)
        self._send(reply)

    def _on_request_offers(self, m: RequestOffers) -> None:
        if self.state is not ServerState.CONNECTED:
            self._ignore(m, f"in state {self.state.value}")
            return
        for relid in sorted(self._channels):
            ch = self._channels[relid]
            self._send(ch.spec.to_message(relid, ch.connection_id))
        self.state = ServerState.OFFERS_DELIVERED
        self._send(AllOffersDelivered())

    def _on_unload(self, m: Unload) -> None:
        target = (self.target_vp, self.sint)
        self._disconnect()
        self.notifier.send(UnloadResponse().encode(), *target)

    def _disconnect(self) -> None:
        was_connected = self.state is not ServerState.DISCONNECTED
        for relid, ch in list(self._channels.items()):
            if ch.state in (ChannelState.OPENING, ChannelState.OPEN):
                self.notifier.close_channel(relid)
            if ch.state is ChannelState.RESCINDED:
                del self._channels[relid]
            else:
                ch.state, ch.ring_gpadl_id, ch.open_id, ch.target_vp = ChannelState.OFFERED, None, 0, 0
        for gpadl_id, g in list(self._gpadls.items()):
            self.notifier.teardown_gpadl(g.relid, gpadl_id)
        self._gpadls.clear()
        self._assembling.clear()
        self.state, self.version = ServerState.DISCONNECTED, None
        self.target_vp, self.sint = 0, VMBUS_MESSAGE_SINT
        self.msg_conn_id = VMBUS_MESSAGE_CONNECTION_ID
        if was_connected:
            self.notifier.disconnect()
        self._log("disconnected")

    # -- GPADLs ------------------------------------------------------------------------------

    def _on_gpadl_header(self, m: GpadlHeader) -> None:
        if not self._channel_usable(m, m.child_relid):
            return
        if m.gpadl_id in self._gpadls or m.gpadl_id in self._assembling:
            self._ignore(m, f"GPADL {m.gpadl_id:#x} already exists")
            return
        if len(self._gpadls) + len(self._assembling) >= self.max_gpadls:
            self._refuse_gpadl(m.child_relid, m.gpadl_id, f"more than {self.max_gpadls} GPADLs")
            return
        try:
            assembler = GpadlAssembler(m)
        except GpadlError as exc:
            self._refuse_gpadl(m.child_relid, m.gpadl_id, str(exc))
            return
        if assembler.complete:
            self._grant(assembler)
        else:
            self._assembling[m.gpadl_id] = assembler

    def _on_gpadl_body(self, m: GpadlBody) -> None:
        if self.state is not ServerState.OFFERS_DELIVERED:
            self._ignore(m, f"in state {self.state.value}")
            return
        assembler = self._assembling.get(m.gpadl_id)
        if assembler is None:
            self._ignore(m, f"no GPADL {m.gpadl_id:#x} in progress")
            return
        try:
            complete = assembler.add(m)
        except GpadlError as exc:
            del self._assembling[m.gpadl_id]
            self._refuse_gpadl(assembler.relid, m.gpadl_id, str(exc))
            return
        if complete:
            del self._assembling[m.gpadl_id]
            self._grant(assembler)

    def _grant(self, assembler: GpadlAssembler) -> None:
        relid, gpadl_id = assembler.relid, assembler.gpadl_id
        try:
            ranges = assembler.ranges()
        except GpadlError as exc:
            self._refuse_gpadl(relid, gpadl_id, str(exc))
            return
        status = self.notifier.create_gpadl(relid, gpadl_id, ranges)
        if status != STATUS_SUCCESS:
            self._refuse_gpadl(relid, gpadl_id, f"host refused with status {status!r}", status)
            return
        self._gpadls[gpadl_id] = _Gpadl(relid, ranges)
        self._log("gpadl_created", relid=relid, gpadl_id=gpadl_id, pages=self._gpadls[gpadl_id].page_count)
        self._send(GpadlCreated(relid, gpadl_id, STATUS_SUCCESS))

    def _refuse_gpadl(self, relid: int, gpadl_id: int, reason: str,
                      status: int = STATUS_UNSUCCESSFUL) -> None:
        if not (isinstance(status, int) and 0 < status < 1 << 32):
            status = STATUS_UNSUCCESSFUL
        self._log("gpadl_refused", relid=relid, gpadl_id=gpadl_id, reason=reason)
        self._send(GpadlCreated(relid, gpadl_id, status))

    def _on_gpadl_teardown(self, m: GpadlTeardown) -> None:
        if not self._channel_known(m, m.child_relid):
            return
        g = self._gpadls.get(m.gpadl_id)
        if g is None or g.relid != m.child_relid:
            self._ignore(m, f"relid {m.child_relid} has no GPADL {m.gpadl_id:#x}")
            return
        if g.state is GpadlState.TEARDOWN_PENDING:
            self._ignore(m, "teardown already pending")
            return
        ch = self._channels[m.child_relid]
        if ch.ring_gpadl_id == m.gpadl_id:  # only set while OPENING or OPEN
            g.state = GpadlState.TEARDOWN_PENDING
            self._log("gpadl_teardown_pending", relid=ch.relid, gpadl_id=m.gpadl_id)
            return
        self._teardown(m.gpadl_id)

    def _teardown(self, gpadl_id: int) -> None:
        g = self._gpadls.pop(gpadl_id)
        self.notifier.teardown_gpadl(g.relid, gpadl_id)
        self._log("gpadl_torndown", relid=g.relid, gpadl_id=gpadl_id)
        self._send(GpadlTorndown(gpadl_id))

    def _teardown_if_pending(self, gpadl_id: int | None) -> None:
        g = self._gpadls.get(gpadl_id) if gpadl_id is not None else None
        if g is not None and g.state is GpadlState.TEARDOWN_PENDING:
            self._teardown(gpadl_id)

    def _drop_assembling(self, relid: int) -> None:
        for gpadl_id in [i for i, a in self._assembling.items() if a.relid == relid]:
            del self._assembling[gpadl_id]

    # -- open and close ----------------------------------------------------------------------

    def _on_open_channel(self, m: OpenChannel) -> None:
        if not self._channel_usable(m, m.child_relid):
            return
        ch = self._channels[m.child_relid]
        if ch.state is not ChannelState.OFFERED:
            self._ignore(m, f"channel {ch.relid} is {ch.state.value}")
            return
        g = self._gpadls.get(m.ring_gpadl_id)
        problem = None
        if g is None or g.relid != ch.relid:
            problem = f"relid {ch.relid} has no GPADL {m.ring_gpadl_id:#x}"
        elif g.state is not GpadlState.CREATED:
            problem = f"GPADL {m.ring_gpadl_id:#x} is being torn down"
        elif any(r.byte_offset or r.byte_count % PAGE_SIZE for r in g.ranges):
            problem = "ring GPADL is not whole pages"
        else:
            problem = ring_layout_error(g.page_count, m.downstream_page_offset)
        if problem:
            self._log("open_refused", relid=ch.relid, reason=problem)
            self._send(OpenResult(ch.relid, m.open_id, STATUS_UNSUCCESSFUL))
            return
        ch.state, ch.open_id, ch.ring_gpadl_id, ch.target_vp = (
            ChannelState.OPENING, m.open_id, m.ring_gpadl_id, m.target_vp)
        request = OpenRequest(ch.relid, m.open_id, m.ring_gpadl_id, g.ranges,
                              m.downstream_page_offset, m.target_vp, m.user_data)
        status = self.notifier.open_channel(request)
        if status is not None:
            self._finish_open(ch, status)

    def _finish_open(self, ch: _Channel, status: int) -> None:
        if not (isinstance(status, int) and 0 <= status < 1 << 32):
            status = STATUS_UNSUCCESSFUL
        reply = OpenResult(ch.relid, ch.open_id, status)
        if status == STATUS_SUCCESS:
            ch.state = ChannelState.OPEN
            self._log("opened", relid=ch.relid, gpadl_id=ch.ring_gpadl_id)
            self._send(reply)
            return
        ring = ch.ring_gpadl_id
        ch.state, ch.ring_gpadl_id = ChannelState.OFFERED, None
        self._log("open_failed", relid=ch.relid, status=status)
        self._send(reply)
        self._teardown_if_pending(ring)

    def _on_close_channel(self, m: CloseChannel) -> None:
        if not self._channel_known(m, m.child_relid):
            return
        ch = self._channels[m.child_relid]
        if ch.state not in (ChannelState.OPENING, ChannelState.OPEN):
            self._ignore(m, f"channel {ch.relid} is {ch.state.value}")
            return
        # Closing an OPENING channel cancels the pending open; a later open_complete raises.
        self.notifier.close_channel(ch.relid)
        ring = ch.ring_gpadl_id
        ch.state, ch.ring_gpadl_id = ChannelState.OFFERED, None
        self._log("closed", relid=ch.relid)
        self._teardown_if_pending(ring)

    def _on_modify_channel(self, m: ModifyChannel) -> None:
        if not self._channel_usable(m, m.child_relid):
            return
        ch = self._channels[m.child_relid]
        if ch.state is not ChannelState.OPEN:
            status = STATUS_UNSUCCESSFUL
            self._ignore(m, f"channel {ch.relid} is {ch.state.value}")
        else:
            modify = getattr(self.notifier, "modify_channel", None)
            status = STATUS_SUCCESS if modify is None else modify(ch.relid, m.target_vp)
            if not (isinstance(status, int) and 0 <= status < 1 << 32):
                status = STATUS_UNSUCCESSFUL
            if status == STATUS_SUCCESS:
                ch.target_vp = m.target_vp
                self._log("modified", relid=ch.relid, target_vp=m.target_vp)
        # Before 5.3 there is no response message and the guest does not wait for one.
        if self.version is not None and self.version >= VERSION_WIN10_V5_3:
            self._send(ModifyChannelResponse(ch.relid, status))

    def channel_target_vp(self, relid: int) -> int | None:
        """The VP the guest wants an open channel's host->guest signals on (OpenChannel's
        target_vp, then each accepted ModifyChannel), or None for an unknown relid."""
        ch = self._channels.get(relid)
        return None if ch is None else ch.target_vp

    def _on_relid_released(self, m: RelidReleased) -> None:
        if not self._channel_known(m, m.child_relid):
            return
        ch = self._channels[m.child_relid]
        if ch.state is not ChannelState.RESCINDED:
            self._ignore(m, f"channel {ch.relid} is {ch.state.value}")
            return
        # GPADLs the guest did not tear down go silently: it has given up the relid.
        for gpadl_id in [i for i, g in self._gpadls.items() if g.relid == ch.relid]:
            del self._gpadls[gpadl_id]
            self.notifier.teardown_gpadl(ch.relid, gpadl_id)
        del self._channels[ch.relid]
        self._log("released", relid=ch.relid)

    # -- checks and output -------------------------------------------------------------------

    def _channel_known(self, m: Message, relid: int) -> bool:
        """The connection has offers out and holds `relid` (in any state)."""
        if self.state is not ServerState.OFFERS_DELIVERED:
            self._ignore(m, f"in state {self.state.value}")
            return False
        if relid not in self._channels:
            self._ignore(m, f"unknown relid {relid}")
            return False
        return True

    def _channel_usable(self, m: Message, relid: int) -> bool:
        """As _channel_known, and not rescinded."""
        if not self._channel_known(m, relid):
            return False
        if self._channels[relid].state is ChannelState.RESCINDED:
            self._ignore(m, f"relid {relid} is rescinded")
            return False
        return True

    def _send(self, msg: Message) -> None:
        self.notifier.send(msg.encode(), self.target_vp, self.sint)

    def _ignore(self, msg: Message | None, reason: str) -> None:
        self.notifier.log("ignored", message=type(msg).__name__ if msg else None, reason=reason)

    def _log(self, event: str, **fields: Any) -> None:
        self.notifier.log(event, **fields)

    # -- saved state -------------------------------------------------------------------------

    def save(self) -> dict:
        """The manager's whole state as plain data (for saved state and for comparing)."""
        return {
            "format": SAVED_STATE_VERSION,
            "state": self.state.value,
            "version": self.version,
            "target_vp": self.target_vp,
            "sint": self.sint,
            "msg_conn_id": self.msg_conn_id,
            "channels": [
                {
                    "relid": c.relid,
                    "interface_id": str(c.spec.interface_id),
                    "instance_id": str(c.spec.instance_id),
                    "user_def": bytes(c.spec.user_def),
                    "flags": c.spec.flags,
                    "mmio_megabytes": c.spec.mmio_megabytes,
                    "sub_channel_index": c.spec.sub_channel_index,
                    "is_dedicated_interrupt": c.spec.is_dedicated_interrupt,
                    "spec_connection_id": c.spec.connection_id,
                    "connection_id": c.connection_id,
                    "state": c.state.value,
                    "open_id": c.open_id,
                    "ring_gpadl_id": c.ring_gpadl_id,
                    "target_vp": c.target_vp,
                }
                for c in sorted(self._channels.values(), key=lambda c: c.relid)
            ],
            "gpadls": [
                {
                    "gpadl_id": i,
                    "relid": g.relid,
                    "state": g.state.value,
                    "ranges": [[r.byte_count, r.byte_offset, list(r.pfns)] for r in g.ranges],
                }
                for i, g in sorted(self._gpadls.items())
            ],
            "assembling": [
                {
                    "gpadl_id": i,
                    "relid": a.relid,
                    "rangecount": a.rangecount,
                    "expected": a.expected,
                    "words": list(a.words),
                }
                for i, a in sorted(self._assembling.items())
            ],
        }

    @classmethod
    def restore(cls, notifier: Notifier, state: dict, **kw) -> "ChannelManager":
        """A manager in the saved state; calls nothing on the notifier (the host restores its
        own grants and open channels from its own saved state)."""
        if state.get("format") != SAVED_STATE_VERSION:
            raise ValueError(f"saved state format {state.get('format')!r} is not supported")
        self = cls(notifier, **kw)
        self.state = ServerState(state["state"])
        self.version = state["version"]
        self.target_vp, self.sint, self.msg_conn_id = (
            state["target_vp"], state["sint"], state["msg_conn_id"])
        for c in state["channels"]:
            spec = OfferSpec(
                uuid.UUID(c["interface_id"]), uuid.UUID(c["instance_id"]), c["user_def"],
                c["flags"], c["mmio_megabytes"], c["sub_channel_index"],
                c["is_dedicated_interrupt"], c["spec_connection_id"])
            self._channels[c["relid"]] = _Channel(
                c["relid"], spec, c["connection_id"], ChannelState(c["state"]), c["open_id"],
                c["ring_gpadl_id"], c["target_vp"])
        for g in state["gpadls"]:
            ranges = tuple(GpaRange(n, off, tuple(pfns)) for n, off, pfns in g["ranges"])
            self._gpadls[g["gpadl_id"]] = _Gpadl(g["relid"], ranges, GpadlState(g["state"]))
        for a in state["assembling"]:
            header = GpadlHeader(a["relid"], a["gpadl_id"], a["expected"] * 8, a["rangecount"])
            assembler = GpadlAssembler(header)
            assembler.words.extend(a["words"])
            self._assembling[a["gpadl_id"]] = assembler
        return self
