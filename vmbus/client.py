"""The guest's VMBus client: a synchronous state machine that connects to the host's server,
collects offers and binds each to a driver, and opens and closes channels, acting only through a
notifier.

States (reference/hyperv-abi.md §3.5):

    connection  DISCONNECTED --connect--> CONTACTING (one version at a time, newest first)
                --VersionResponse(accepted)--> REQUESTING_OFFERS --AllOffersDelivered-->
                CONNECTED --unload--> UNLOADING --UnloadResponse--> DISCONNECTED
    channel     OFFERED --open--> CREATING_RING --GpadlCreated--> OPENING --OpenResult(0)--> OPEN
                OPEN --close--> CLOSING --GpadlTorndown(ring)--> OFFERED
                any --Rescind--> RESCINDED --all its GPADLs torn down--> (RelidReleased; gone)
    GPADL       CREATING --GpadlCreated(0)--> CREATED --teardown--> TEARING_DOWN --Torndown--> gone

The host is treated as hostile: every message is decoded and validated, and must answer
something this client asked for (GpadlCreated matched by relid and GPADL id, OpenResult by relid
and open id, GpadlTorndown by a teardown in flight); anything else is logged and dropped and
changes nothing. Calls from the guest's own code (open_channel, ...) raise ValueError when made
in the wrong state.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Callable, Mapping, Protocol, Sequence

from vmbus.channel import ring_layout_error
from vmbus.protocol import (
    H2G,
    STATUS_SUCCESS,
    SUPPORTED_VERSIONS,
    VERSION_WIN8_1,
    VERSION_WIN10_V5,
    VMBUS_MESSAGE_CONNECTION_ID,
    AllOffersDelivered,
    CloseChannel,
    GpadlCreated,
    GpadlTeardown,
    GpadlTorndown,
    GpaRange,
    InitiateContact,
    Message,
    ModifyChannelResponse,
    OfferChannel,
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
    split_gpadl,
)

FIRST_GPADL_ID = 0xE1E10  # what Linux hands out first


class ClientState(enum.Enum):
    DISCONNECTED = "disconnected"
    CONTACTING = "contacting"  # InitiateContact sent, waiting for VersionResponse
    REQUESTING_OFFERS = "requesting_offers"  # RequestOffers sent, offers arriving
    CONNECTED = "connected"  # all offers delivered; later offers are hot-adds
    UNLOADING = "unloading"


class ClientChannelState(enum.Enum):
    OFFERED = "offered"
    CREATING_RING = "creating_ring"  # ring GPADL sent, waiting for GpadlCreated
    OPENING = "opening"  # OpenChannel sent, waiting for OpenResult
    OPEN = "open"
    CLOSING = "closing"  # CloseChannel and ring teardown sent, waiting for GpadlTorndown
    RESCINDED = "rescinded"  # host withdrew it; tearing its GPADLs down before RelidReleased


class ClientGpadlState(enum.Enum):
    CREATING = "creating"
    CREATED = "created"
    TEARING_DOWN = "tearing_down"


class EventKind(enum.Enum):
    CONNECTED = "connected"
    CONNECT_FAILED = "connect_failed"  # every version refused
    OFFERS_DELIVERED = "offers_delivered"
    GPADL_CREATED = "gpadl_created"  # create_gpadl's GPADLs only; ring GPADLs are internal
    GPADL_FAILED = "gpadl_failed"
    GPADL_TORNDOWN = "gpadl_torndown"
    OPENED = "opened"
    OPEN_FAILED = "open_failed"
    CLOSED = "closed"  # ring GPADL torn down too; the channel can be opened again
    RESCINDED = "rescinded"
    RELEASED = "released"  # RelidReleased sent; the relid is gone
    UNLOADED = "unloaded"


@dataclass(frozen=True)
class ClientEvent:
    kind: EventKind
    relid: int | None = None
    gpadl_id: int | None = None
    status: int = STATUS_SUCCESS


class ClientNotifier(Protocol):
    """Everything the client does to the world; calls are synchronous and must not call back
    into the client."""

    def send(self, message: bytes, connection_id: int) -> None:
        """Post a message to the host (HvPostMessage, SynIC message type 1)."""

    def event(self, event: ClientEvent) -> None:
        """Something the guest's drivers wait for happened."""

    def log(self, event: str, **fields: Any) -> None:
        """A structured event: what was ignored and why, and each state change."""


Binder = Callable[[OfferChannel], Any]  # offer -> the driver that takes it, or None


@dataclass
class ClientChannel:
    """What the client knows of one offered channel."""

    offer: OfferChannel
    state: ClientChannelState = ClientChannelState.OFFERED
    driver: Any = None
    ring_gpadl_id: int | None = None
    downstream_page_offset: int = 0
    target_vp: int = 0
    user_data: bytes = b""

    @property
    def relid(self) -> int:
        return self.offer.child_relid


@dataclass
class ClientGpadl:
    relid: int
    ranges: tuple[GpaRange, ...]
    ring: bool  # a channel's ring GPADL, created by open_channel
    state: ClientGpadlState = ClientGpadlState.CREATING


@dataclass
class _Contact:
    versions: tuple[int, ...]
    target_vcpu: int
    interrupt_page: int
    monitor_pages: tuple[int, int]
    tried: int = 0  # index into versions of the request in flight


class VmbusClient:
    """The VMBus client of one guest."""

    def __init__(self, notifier: ClientNotifier, binder: Binder | None = None, *,
                 versions: Sequence[int] = SUPPORTED_VERSIONS):
        self.notifier = notifier
        self.binder = binder or (lambda offer: None)
        self.versions = tuple(sorted(versions, reverse=True))
        self.state = ClientState.DISCONNECTED
        self.version: int | None = None
        self.msg_conn_id = VMBUS_MESSAGE_CONNECTION_ID
        self._contact: _Contact | None = None
        self._channels: dict[int, ClientChannel] = {}
        self._gpadls: dict[int, ClientGpadl] = {}
        self._next_gpadl_id = FIRST_GPADL_ID
        self._handlers = {
            VersionResponse: self._on_version_response,
            OfferChannel: self._on_offer,
            AllOffersDelivered: self._on_all_offers_delivered,
            GpadlCreated: self._on_gpadl_created,
            OpenResult: self._on_open_result,
            GpadlTorndown: self._on_gpadl_torndown,
            RescindChannelOffer: self._on_rescind,
            UnloadResponse: self._on_unload_response,
            ModifyChannelResponse: self._on_modify_channel_response,
        }

    @property
    def channels(self) -> Mapping[int, ClientChannel]:
        return MappingProxyType(self._channels)

    @property
    def gpadls(self) -> Mapping[int, ClientGpadl]:
        return MappingProxyType(self._gpadls)

    # -- guest-side calls --------------------------------------------------------------------

    def connect(self, *, target_vcpu: int = 0, interrupt_page: int = 0,
                monitor_pages: tuple[int, int] = (0, 0)) -> None:
        """Start version negotiation; on success the client requests offers by itself."""
        self._require(self.state is ClientState.DISCONNECTED, "already connected")
        if not self.versions:
            raise ValueError("no versions to offer")
        self._contact = _Contact(self.versions, target_vcpu, interrupt_page, monitor_pages)
        self.state = ClientState.CONTACTING
        self._send_contact()

    def open_channel(self, relid: int, ring_pfns: Sequence[int], downstream_page_offset: int,
                     *, target_vp: int = 0, user_data: bytes = b"") -> int:
        """Grant the ring pages and open the channel; return the ring GPADL id. The guest must
        have initialised both rings first. Completion: an OPENED or OPEN_FAILED event."""
        ch = self._offered(relid)
        problem = ring_layout_error(len(ring_pfns), downstream_page_offset)
        self._require(problem is None, problem or "")
        ring = GpaRange.whole_pages(ring_pfns)
        gpadl_id = self._create(relid, (ring,), ring=True)
        ch.state, ch.ring_gpadl_id = ClientChannelState.CREATING_RING, gpadl_id
        ch.downstream_page_offset, ch.target_vp = downstream_page_offset, target_vp
        ch.user_data = bytes(user_data)
        return gpadl_id

    def close_channel(self, relid: int) -> None:
        """Close an open channel and tear its ring down; completion: a CLOSED event."""
        ch = self._channels.get(relid)
        self._require(ch is not None and ch.state is ClientChannelState.OPEN,
                      f"relid {relid} is not open")
        ch.state = ClientChannelState.CLOSING
        self._send(CloseChannel(relid))
        self._send_teardown(ch.ring_gpadl_id)

    def create_gpadl(self, relid: int, ranges: Sequence[GpaRange]) -> int:
        """Grant more of the guest's pages on a channel (e.g. a receive buffer); return the
        GPADL id. Completion: a GPADL_CREATED or GPADL_FAILED event."""
        self._offered(relid, any_live=True)
        return self._create(relid, tuple(ranges), ring=False)

    def teardown_gpadl(self, relid: int, gpadl_id: int) -> None:
        """Revoke a GPADL from create_gpadl; completion: a GPADL_TORNDOWN event."""
        g = self._gpadls.get(gpadl_id)
        self._require(g is not None and g.relid == relid and g.state is ClientGpadlState.CREATED
                      and not g.ring,
                      f"GPADL {gpadl_id:#x} of relid {relid} cannot be torn down")
        self._send_teardown(gpadl_id)

    def unload(self) -> None:
        """Disconnect; completion: an UNLOADED event. Before Win8.1 hosts cannot reconnect, so
        (as in Linux) nothing is sent and the client just forgets its state."""
        self._require(self.state in (ClientState.REQUESTING_OFFERS, ClientState.CONNECTED),
                      f"cannot unload while {self.state.value}")
        if self.version < VERSION_WIN8_1:
            self._forget()
            return
        self.state = ClientState.UNLOADING
        self._send(Unload())

    # -- host messages -----------------------------------------------------------------------

    def handle_message(self, raw) -> None:
        """Process one message from the host."""
        try:
            msg = decode(raw)
        except ProtocolError as exc:
            self._ignore(None, str(exc))
            return
        if msg.spec.direction is not H2G:
            self._ignore(msg, "guest-to-host message from the host")
            return
        if self.version is not None and msg.spec.min_version > self.version:
            self._ignore(msg, f"needs version {msg.spec.min_version:#x}")
            return
        handler = self._handlers.get(type(msg))
        if handler is None:  # a host-to-guest message this client has no use for: ignored, never fatal
            self._ignore(msg, "no use for it in this client")
            return
        handler(msg)

    def _on_modify_channel_response(self, m: ModifyChannelResponse) -> None:
        # The channel's target VP is the guest's own business; the answer is only reported.
        self._log("modify_channel_answered", relid=m.child_relid, status=m.status)

    def _on_version_response(self, m: VersionResponse) -> None:
        if self.state is not ClientState.CONTACTING:
            self._ignore(m, f"in state {self.state.value}")
            return
        contact = self._contact
        version = contact.versions[contact.tried]
        if m.version_supported and version >= VERSION_WIN10_V5 and m.msg_conn_id == 0:
            self._log("connect_failed", version=version, reason="message connection id 0")
            self._contact, self.state = None, ClientState.DISCONNECTED
            self._event(EventKind.CONNECT_FAILED)
            return
        if not m.version_supported:
            contact.tried += 1
            if contact.tried == len(contact.versions):
                self._log("connect_failed", reason="every version refused")
                self._contact, self.state = None, ClientState.DISCONNECTED
                self._event(EventKind.CONNECT_FAILED)
            else:
                self._send_contact()
            return
        self.version, self._contact = version, None
        self.msg_conn_id = m.msg_conn_id if version >= VERSION_WIN10_V5 else VMBUS_MESSAGE_CONNECTION_ID
        self.state = ClientState.REQUESTING_OFFERS
        self._log("connected", version=version, msg_conn_id=self.msg_conn_id)
        self._event(EventKind.CONNECTED)
        self._send(RequestOffers())

    def _on_offer(self, m: OfferChannel) -> None:
        if self.state not in (ClientState.REQUESTING_OFFERS, ClientState.CONNECTED):
            self._ignore(m, f"in state {self.state.value}")
            return
        if m.child_relid in self._channels:
            self._ignore(m, f"relid {m.child_relid} is already offered")
            return
        key = (m.interface_id, m.instance_id, m.sub_channel_index)
        if any((c.offer.interface_id, c.offer.instance_id, c.offer.sub_channel_index) == key
               for c in self._channels.values()):
            self._ignore(m, f"duplicate offer of {m.instance_id}")
            return
        ch = ClientChannel(m)
        self._channels[m.child_relid] = ch  # before binding: a failing binder leaves it unbound
        self._log("offer", relid=m.child_relid, interface_id=str(m.interface_id))
        ch.driver = self.binder(m)

    def _on_all_offers_delivered(self, m: AllOffersDelivered) -> None:
        if self.state is not ClientState.REQUESTING_OFFERS:
            self._ignore(m, f"in state {self.state.value}")
            return
        self.state = ClientState.CONNECTED
        self._event(EventKind.OFFERS_DELIVERED)

    def _on_gpadl_created(self, m: GpadlCreated) -> None:
        g = self._gpadls.get(m.gpadl_id)
        if g is None or g.relid != m.child_relid or g.state is not ClientGpadlState.CREATING:
            self._ignore(m, f"no GPADL {m.gpadl_id:#x} of relid {m.child_relid} being created")
            return
        ch = self._channels[g.relid]
        is_ring = g.ring
        if m.creation_status != STATUS_SUCCESS:
            del self._gpadls[m.gpadl_id]
            if is_ring:
                ch.state, ch.ring_gpadl_id = ClientChannelState.OFFERED, None
                self._event(EventKind.OPEN_FAILED, ch.relid, m.gpadl_id, m.creation_status)
            else:
                self._event(EventKind.GPADL_FAILED, ch.relid, m.gpadl_id, m.creation_status)
            return
        g.state = ClientGpadlState.CREATED
        if is_ring:
            ch.state = ClientChannelState.OPENING
            self._send(OpenChannel(ch.relid, ch.relid, m.gpadl_id, ch.target_vp,
                                   ch.downstream_page_offset, ch.user_data))
        else:
            self._event(EventKind.GPADL_CREATED, ch.relid, m.gpadl_id)

    def _on_open_result(self, m: OpenResult) -> None:
        ch = self._channels.get(m.child_relid)
        # The open id this client uses is the relid, as Linux does.
        if ch is None or ch.state is not ClientChannelState.OPENING or m.open_id != ch.relid:
            self._ignore(m, f"no open of relid {m.child_relid} (open id {m.open_id}) in flight")
            return
        if m.status == STATUS_SUCCESS:
            ch.state = ClientChannelState.OPEN
            self._event(EventKind.OPENED, ch.relid, ch.ring_gpadl_id)
            return
        ring, ch.ring_gpadl_id, ch.state = ch.ring_gpadl_id, None, ClientChannelState.OFFERED
        self._send_teardown(ring)
        self._event(EventKind.OPEN_FAILED, ch.relid, ring, m.status)

    def _on_gpadl_torndown(self, m: GpadlTorndown) -> None:
        g = self._gpadls.get(m.gpadl_id)
        if g is None or g.state is not ClientGpadlState.TEARING_DOWN:
            self._ignore(m, f"no teardown of GPADL {m.gpadl_id:#x} in flight")
            return
        del self._gpadls[m.gpadl_id]
        ch = self._channels[g.relid]
        if ch.state is ClientChannelState.RESCINDED:
            self._release_if_done(ch)
        elif not g.ring:
            self._event(EventKind.GPADL_TORNDOWN, ch.relid, m.gpadl_id)
        elif ch.state is ClientChannelState.CLOSING and ch.ring_gpadl_id == m.gpadl_id:
            ch.state, ch.ring_gpadl_id = ClientChannelState.OFFERED, None
            self._event(EventKind.CLOSED, ch.relid, m.gpadl_id)
        # else: the ring of a failed open, which needs no event

    def _on_rescind(self, m: RescindChannelOffer) -> None:
        ch = self._channels.get(m.child_relid)
        if ch is None or ch.state is ClientChannelState.RESCINDED:
            self._ignore(m, f"relid {m.child_relid} is not offered")
            return
        # The host has closed its side: no CloseChannel. GPADLs it never confirmed are
        # forgotten (the server frees them with the relid); confirmed ones are torn down.
        ch.state, ch.ring_gpadl_id = ClientChannelState.RESCINDED, None
        for gpadl_id, g in list(self._gpadls.items()):
            if g.relid != ch.relid:
                continue
            if g.state is ClientGpadlState.CREATING:
                del self._gpadls[gpadl_id]
            elif g.state is ClientGpadlState.CREATED:
                self._send_teardown(gpadl_id)
        self._event(EventKind.RESCINDED, ch.relid)
        self._release_if_done(ch)

    def _on_unload_response(self, m: UnloadResponse) -> None:
        if self.state is not ClientState.UNLOADING:
            self._ignore(m, f"in state {self.state.value}")
            return
        self._forget()

    # -- internals ---------------------------------------------------------------------------

    def _send_contact(self) -> None:
        c = self._contact
        version = c.versions[c.tried]
        msg = InitiateContact.for_version(
            version, c.target_vcpu, interrupt_page=c.interrupt_page,
            monitor_page1=c.monitor_pages[0], monitor_page2=c.monitor_pages[1])
        self._log("contact", version=version)
        self.notifier.send(msg.encode(), message_connection_id(version))

    def _offered(self, relid: int, any_live: bool = False) -> ClientChannel:
        self._require(self.state in (ClientState.REQUESTING_OFFERS, ClientState.CONNECTED),
                      f"not connected ({self.state.value})")
        ch = self._channels.get(relid)
        self._require(ch is not None, f"relid {relid} is not offered")
        if any_live:
            self._require(ch.state is not ClientChannelState.RESCINDED, f"relid {relid} is rescinded")
        else:
            self._require(ch.state is ClientChannelState.OFFERED, f"relid {relid} is {ch.state.value}")
        return ch

    def _create(self, relid: int, ranges: tuple[GpaRange, ...], ring: bool) -> int:
        gpadl_id = self._new_gpadl_id()
        messages = split_gpadl(relid, gpadl_id, ranges)  # GpadlError (a ValueError) if too big
        self._gpadls[gpadl_id] = ClientGpadl(relid, ranges, ring)
        for msg in messages:
            self._send(msg)
        return gpadl_id

    def _new_gpadl_id(self) -> int:
        while True:
            gpadl_id = self._next_gpadl_id
            self._next_gpadl_id = (gpadl_id + 1) & 0xFFFFFFFF or 1
            if gpadl_id not in self._gpadls:
                return gpadl_id

    def _send_teardown(self, gpadl_id: int) -> None:
        g = self._gpadls[gpadl_id]
        g.state = ClientGpadlState.TEARING_DOWN
        self._send(GpadlTeardown(g.relid, gpadl_id))

    def _release_if_done(self, ch: ClientChannel) -> None:
        if any(g.relid == ch.relid for g in self._gpadls.values()):
            return
        del self._channels[ch.relid]
        self._send(RelidReleased(ch.relid))
        self._event(EventKind.RELEASED, ch.relid)

    def _forget(self) -> None:
        self._channels.clear()
        self._gpadls.clear()
        self.state, self.version = ClientState.DISCONNECTED, None
        self.msg_conn_id = VMBUS_MESSAGE_CONNECTION_ID
        self._event(EventKind.UNLOADED)

    def _send(self, msg: Message) -> None:
        self.notifier.send(msg.encode(), self.msg_conn_id)

    def _event(self, kind: EventKind, relid: int | None = None, gpadl_id: int | None = None,
               status: int = STATUS_SUCCESS) -> None:
        self.notifier.event(ClientEvent(kind, relid, gpadl_id, status))

    def _ignore(self, msg: Message | None, reason: str) -> None:
        self.notifier.log("ignored", message=type(msg).__name__ if msg else None, reason=reason)

    def _log(self, event: str, **fields: Any) -> None:
        self.notifier.log(event, **fields)

    @staticmethod
    def _require(condition: bool, reason: str) -> None:
        if not condition:
            raise ValueError(reason)
