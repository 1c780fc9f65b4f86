"""The guest's VMBus client driven by hand-written host messages through a recording notifier:
version fallback, offers and binding, open/close with GPADLs, rescind, unload; a hostile host's
unexpected or malformed messages change nothing and never raise."""
from __future__ import annotations

import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmbus import protocol as p
from vmbus.client import (
    FIRST_GPADL_ID,
    ClientChannelState,
    ClientEvent,
    ClientGpadlState,
    ClientState,
    EventKind,
    VmbusClient,
)
from vmbus.protocol import GpaRange, decode

V53, WIN10, WIN8 = p.VERSION_WIN10_V5_3, p.VERSION_WIN10, p.VERSION_WIN8
CLASS = uuid.UUID(int=0xC1A55)
FAIL = p.STATUS_UNSUCCESSFUL
G = FIRST_GPADL_ID


class RecordingClientNotifier:
    def __init__(self):
        self.sent: list[tuple[p.Message, int]] = []
        self.events: list[ClientEvent] = []
        self.logged: list[tuple[str, dict]] = []

    def send(self, message: bytes, connection_id: int) -> None:
        self.sent.append((decode(message), connection_id))

    def event(self, event: ClientEvent) -> None:
        self.events.append(event)

    def log(self, event: str, **fields) -> None:
        self.logged.append((event, fields))

    def take(self) -> list[p.Message]:
        sent, self.sent = self.sent, []
        return [m for m, _ in sent]

    def take_events(self) -> list[ClientEvent]:
        events, self.events = self.events, []
        return events


def offer(relid: int, instance: int | None = None, **kw) -> p.OfferChannel:
    return p.OfferChannel(CLASS, uuid.UUID(int=relid if instance is None else instance), relid, **kw)


class Guest:
    def __init__(self, **kw):
        self.n = RecordingClientNotifier()
        self.bound: list[p.OfferChannel] = []
        self.c = VmbusClient(self.n, self.bind, **kw)

    def bind(self, offer_msg: p.OfferChannel):
        self.bound.append(offer_msg)
        return f"driver{offer_msg.child_relid}"

    def host(self, *messages: p.Message) -> list[p.Message]:
        for message in messages:
            self.c.handle_message(message.encode())
        return self.n.take()

    def connected(self, *relids: int, version: int = V53) -> None:
        """Negotiate `version` (refusing newer ones) and deliver offers for `relids`."""
        self.c.connect()
        (contact,) = self.n.take()
        while contact.version_requested != version:
            (contact,) = self.host(p.VersionResponse(False))
        conn = 1 if version >= p.VERSION_WIN10_V5 else version
        self.host(p.VersionResponse(True, msg_conn_id=conn))
        self.host(*[offer(r) for r in relids], p.AllOffersDelivered())
        self.n.take_events()

    def opened(self, relid: int, pfns=range(0x100, 0x108), offset: int = 4) -> int:
        gpadl_id = self.c.open_channel(relid, list(pfns), offset)
        self.n.take()
        self.host(p.GpadlCreated(relid, gpadl_id, 0), p.OpenResult(relid, relid, 0))
        self.n.take_events()
        return gpadl_id

    def snapshot(self) -> str:
        c = self.c
        return repr((c.state, c.version, c.msg_conn_id, c._contact, sorted(c._channels.items()),
                     sorted(c._gpadls.items()), c._next_gpadl_id))


@pytest.fixture
def g() -> Guest:
    return Guest()


# -- connecting ----------------------------------------------------------------------------------


def test_connect_falls_back_newest_first_on_the_right_connection(g):
    g.c.connect(target_vcpu=1)
    tried = []
    while True:
        (msg, conn), = g.n.sent
        g.n.sent.clear()
        tried.append((msg.version_requested, conn, msg.target_vcpu, msg.msg_sint))
        if msg.version_requested == WIN10:
            break
        g.c.handle_message(p.VersionResponse(False).encode())
    assert tried == [(v, 4 if v >= p.VERSION_WIN10_V5 else 1, 1, 2) for v in p.SUPPORTED_VERSIONS[:6]]
    g.c.handle_message(p.VersionResponse(True, msg_conn_id=WIN10).encode())
    assert g.n.sent == [(p.RequestOffers(), 1)]
    assert g.n.take_events() == [ClientEvent(EventKind.CONNECTED)]
    assert (g.c.state, g.c.version) == (ClientState.REQUESTING_OFFERS, WIN10)


def test_connection_id_from_the_version_response_is_used_from_5_0(g):
    g.c.connect()
    g.n.sent.clear()
    g.c.handle_message(p.VersionResponse(True, msg_conn_id=0x800074).encode())
    assert g.n.sent == [(p.RequestOffers(), 0x800074)]


def test_every_version_refused(g):
    g.c.connect()
    for _ in p.SUPPORTED_VERSIONS:
        g.host(p.VersionResponse(False))
    assert g.n.take_events() == [ClientEvent(EventKind.CONNECT_FAILED)]
    assert g.c.state is ClientState.DISCONNECTED
    g.c.connect()  # and it may try again
    assert g.n.take()[0].version_requested == V53


def test_message_connection_id_zero_fails_the_connection(g):
    g.c.connect()
    g.host(p.VersionResponse(True, msg_conn_id=0))
    assert g.n.take_events() == [ClientEvent(EventKind.CONNECT_FAILED)]


def test_only_the_versions_given_are_tried():
    g = Guest(versions=[WIN8, V53])
    g.c.connect()
    assert g.n.take() == [p.InitiateContact.for_version(V53)]
    assert g.host(p.VersionResponse(False)) == [p.InitiateContact.for_version(WIN8)]


# -- offers --------------------------------------------------------------------------------------


def test_offers_are_bound_and_delivery_completes(g):
    g.c.connect()
    g.host(p.VersionResponse(True, msg_conn_id=1))
    g.host(offer(1), offer(2, user_def=b"x"))
    assert [o.child_relid for o in g.bound] == [1, 2]
    assert g.c.channels[2].driver == "driver2" and g.c.channels[2].offer.user_def[:1] == b"x"
    g.host(p.AllOffersDelivered())
    assert g.c.state is ClientState.CONNECTED
    assert g.n.take_events()[-1] == ClientEvent(EventKind.OFFERS_DELIVERED)
    g.host(offer(7))  # hot add
    assert g.c.channels[7].driver == "driver7"


def test_unbound_offer_is_kept_without_a_driver():
    g = Guest()
    g.c.binder = lambda o: None
    g.connected(3)
    assert g.c.channels[3].driver is None


@pytest.mark.parametrize("bad", [offer(1, instance=9), offer(5, instance=1)])
def test_duplicate_offers_are_ignored(g, bad):
    g.connected(1)
    before = g.snapshot()
    assert g.host(bad) == [] and g.snapshot() == before and len(g.bound) == 1


# -- open and close ------------------------------------------------------------------------------


def test_open_sends_the_gpadl_then_open_channel(g):
    g.connected(1)
    gpadl_id = g.c.open_channel(1, range(0x100, 0x108), 4, target_vp=2, user_data=b"u")
    assert gpadl_id == G
    assert g.n.take() == [p.GpadlHeader(1, G, 72, 1, GpaRange.whole_pages(range(0x100, 0x108)).words())]
    assert g.c.channels[1].state is ClientChannelState.CREATING_RING
    # Answers that do not match what was asked are ignored.
    assert g.host(p.GpadlCreated(2, G, 0), p.GpadlCreated(1, G + 1, 0), p.OpenResult(1, 1, 0)) == []
    assert g.host(p.GpadlCreated(1, G, 0)) == [p.OpenChannel(1, 1, G, 2, 4, b"u")]
    assert g.host(p.GpadlCreated(1, G, 0), p.OpenResult(1, 2, 0)) == []
    g.host(p.OpenResult(1, 1, 0))
    assert g.c.channels[1].state is ClientChannelState.OPEN
    assert g.n.take_events() == [ClientEvent(EventKind.OPENED, 1, G)]


def test_open_with_a_large_ring_uses_body_messages(g):
    g.connected(1)
    g.c.open_channel(1, range(1000, 1060), 30)
    msgs = g.n.take()
    assert [type(m) for m in msgs] == [p.GpadlHeader, p.GpadlBody, p.GpadlBody]
    assert all(m.gpadl_id == G for m in msgs)


def test_ring_gpadl_refused(g):
    g.connected(1)
    g.c.open_channel(1, range(8), 4)
    g.host(p.GpadlCreated(1, G, 0xC0000022))
    assert g.n.take_events() == [ClientEvent(EventKind.OPEN_FAILED, 1, G, 0xC0000022)]
    assert g.c.channels[1].state is ClientChannelState.OFFERED and g.c.gpadls == {}


def test_open_refused_tears_the_ring_down(g):
    g.connected(1)
    g.c.open_channel(1, range(8), 4)
    g.n.take()
    assert g.host(p.GpadlCreated(1, G, 0), p.OpenResult(1, 1, FAIL)) == [
        p.OpenChannel(1, 1, G, 0, 4), p.GpadlTeardown(1, G)]
    assert g.n.take_events() == [ClientEvent(EventKind.OPEN_FAILED, 1, G, FAIL)]
    assert g.c.channels[1].state is ClientChannelState.OFFERED
    g.host(p.GpadlTorndown(G))
    assert g.c.gpadls == {} and g.n.take_events() == []


def test_close_then_reopen(g):
    g.connected(1)
    g.opened(1)
    g.c.close_channel(1)
    assert g.n.take() == [p.CloseChannel(1), p.GpadlTeardown(1, G)]
    assert g.c.channels[1].state is ClientChannelState.CLOSING
    g.host(p.GpadlTorndown(G))
    assert g.n.take_events() == [ClientEvent(EventKind.CLOSED, 1, G)]
    assert g.c.channels[1].state is ClientChannelState.OFFERED
    assert g.opened(1) == G + 1


def test_extra_gpadls(g):
    g.connected(1)
    g.opened(1)
    gpadl_id = g.c.create_gpadl(1, [GpaRange(100, 10, (5,)), GpaRange.whole_pages([6, 7])])
    assert g.n.take() == [p.GpadlHeader(1, gpadl_id, 40, 2, (100 | 10 << 32, 5, 8192, 6, 7))]
    g.host(p.GpadlCreated(1, gpadl_id, 0))
    g.c.teardown_gpadl(1, gpadl_id)
    g.host(p.GpadlTorndown(gpadl_id))
    assert g.n.take_events() == [ClientEvent(EventKind.GPADL_CREATED, 1, gpadl_id),
                                 ClientEvent(EventKind.GPADL_TORNDOWN, 1, gpadl_id)]
    with pytest.raises(ValueError):
        g.c.teardown_gpadl(1, G)  # the ring goes with close_channel
    failed = g.c.create_gpadl(1, [GpaRange.whole_pages([9])])
    g.host(p.GpadlCreated(1, failed, FAIL))
    assert g.n.take_events() == [ClientEvent(EventKind.GPADL_FAILED, 1, failed, FAIL)]


@pytest.mark.parametrize("call", [
    lambda c: c.open_channel(9, range(8), 4),  # unknown relid
    lambda c: c.open_channel(1, range(8), 1),  # upstream ring too small
    lambda c: c.open_channel(1, range(8), 7),  # downstream ring too small
    lambda c: c.close_channel(1),  # not open
    lambda c: c.create_gpadl(1, []),
    lambda c: c.teardown_gpadl(1, 12345),
    lambda c: c.connect(),
])
def test_guest_misuse_raises_value_error(g, call):
    g.connected(1)
    with pytest.raises(ValueError):
        call(g.c)


def test_open_before_connecting_raises():
    with pytest.raises(ValueError):
        Guest().c.open_channel(1, range(8), 4)


# -- rescind -------------------------------------------------------------------------------------


def test_rescind_of_an_open_channel_tears_down_then_releases(g):
    g.connected(1)
    g.opened(1)
    extra = g.c.create_gpadl(1, [GpaRange.whole_pages([50])])
    g.host(p.GpadlCreated(1, extra, 0))
    pending = g.c.create_gpadl(1, [GpaRange.whole_pages([51])])  # never confirmed
    g.n.take(), g.n.take_events()
    assert g.host(p.RescindChannelOffer(1)) == [p.GpadlTeardown(1, G), p.GpadlTeardown(1, extra)]
    assert g.n.take_events() == [ClientEvent(EventKind.RESCINDED, 1)]
    assert pending not in g.c.gpadls
    assert g.host(p.GpadlTorndown(G)) == []
    assert g.host(p.GpadlTorndown(extra)) == [p.RelidReleased(1)]
    assert g.n.take_events() == [ClientEvent(EventKind.RELEASED, 1)]
    assert 1 not in g.c.channels
    assert g.host(p.GpadlCreated(1, pending, 0), p.RescindChannelOffer(1)) == []
    g.host(offer(1, instance=2))  # the relid may come back as a new device
    assert g.c.channels[1].state is ClientChannelState.OFFERED


def test_rescind_of_an_idle_channel_releases_at_once(g):
    g.connected(1)
    assert g.host(p.RescindChannelOffer(1)) == [p.RelidReleased(1)]


def test_rescind_while_creating_the_ring(g):
    g.connected(1)
    g.c.open_channel(1, range(8), 4)
    g.n.take()
    assert g.host(p.RescindChannelOffer(1)) == [p.RelidReleased(1)]
    assert g.host(p.GpadlCreated(1, G, 0), p.OpenResult(1, 1, 0)) == []


# -- unload --------------------------------------------------------------------------------------


def test_unload(g):
    g.connected(1)
    g.opened(1)
    g.c.unload()
    assert g.n.take() == [p.Unload()] and g.c.state is ClientState.UNLOADING
    g.host(p.UnloadResponse())
    assert g.n.take_events() == [ClientEvent(EventKind.UNLOADED)]
    assert (g.c.state, dict(g.c.channels), dict(g.c.gpadls)) == (ClientState.DISCONNECTED, {}, {})


def test_unload_before_win8_1_sends_nothing():
    g = Guest(versions=[WIN8])
    g.connected(1, version=WIN8)
    g.c.unload()
    assert g.n.take() == [] and g.c.state is ClientState.DISCONNECTED
    assert g.n.take_events() == [ClientEvent(EventKind.UNLOADED)]


# -- a hostile host ------------------------------------------------------------------------------

UNEXPECTED = [
    p.VersionResponse(True, msg_conn_id=1), p.AllOffersDelivered(), p.UnloadResponse(),
    p.GpadlCreated(1, G, 0), p.GpadlCreated(1, 0x999, 0), p.OpenResult(1, 1, 0),
    p.OpenResult(2, 2, 0), p.GpadlTorndown(G), p.GpadlTorndown(0x999), p.RescindChannelOffer(9),
    # guest-to-host messages
    p.RequestOffers(), p.OpenChannel(1, 1, G, 0, 4), p.InitiateContact.for_version(V53),
    p.RelidReleased(1), p.Unload(), p.GpadlHeader(1, 5, 16, 1, (4096, 1)),
]
MALFORMED = [b"", bytes(8), bytes(7), bytes(300), offer(1).encode()[:195],
             bytes.fromhex("02000000 00000000 00000000"),  # rescind relid 0
             bytes.fromhex("0f000000 00000000 01 07 0000 01000000"),  # connection_state 7
             bytes.fromhex("01000000 00000000") + bytes(176) + (3000).to_bytes(4, "little") + bytes(8)]


@pytest.mark.parametrize("raw", [m.encode() for m in UNEXPECTED] + MALFORMED)
def test_unexpected_or_malformed_host_messages_change_nothing(raw):
    g = Guest()
    g.connected(1)
    g.opened(1)
    g.n.logged.clear()
    before = g.snapshot()
    g.c.handle_message(raw)
    assert g.snapshot() == before and g.n.take() == [] and g.n.take_events() == []
    assert [e for e, _ in g.n.logged] == ["ignored"]


def test_offer_before_connecting_is_ignored():
    g = Guest()
    g.c.handle_message(offer(1).encode())
    assert g.c.channels == {} and g.bound == []


host_messages = st.one_of(
    st.builds(p.VersionResponse, st.booleans(), st.integers(0, 2), st.integers(0, 5)),
    st.builds(offer, st.integers(1, 4), st.integers(1, 4)),
    st.builds(p.AllOffersDelivered),
    st.builds(p.GpadlCreated, st.integers(1, 4), st.integers(G, G + 4), st.sampled_from([0, FAIL])),
    st.builds(p.OpenResult, st.integers(1, 4), st.integers(1, 4), st.sampled_from([0, FAIL])),
    st.builds(p.GpadlTorndown, st.integers(G, G + 4)),
    st.builds(p.RescindChannelOffer, st.integers(1, 4)),
    st.builds(p.UnloadResponse),
).map(lambda m: m.encode()) | st.binary(max_size=48)
guest_calls = st.sampled_from(["connect", "open", "close", "gpadl", "teardown", "unload"])


def answer(request: p.Message, ok: bool) -> list[p.Message]:
    """What a host would say to `request` (or, with ok False, a refusal where there is one)."""
    status = 0 if ok else FAIL
    if isinstance(request, p.InitiateContact):
        return [p.VersionResponse(ok, msg_conn_id=1)]
    if isinstance(request, p.RequestOffers):
        return [offer(1), offer(2), offer(3), p.AllOffersDelivered()]
    if isinstance(request, p.GpadlHeader):
        return [p.GpadlCreated(request.child_relid, request.gpadl_id, status)]
    if isinstance(request, p.OpenChannel):
        return [p.OpenResult(request.child_relid, request.open_id, status)]
    if isinstance(request, p.GpadlTeardown):
        return [p.GpadlTorndown(request.gpadl_id)]
    if isinstance(request, p.Unload):
        return [p.UnloadResponse()]
    return []  # bodies, CloseChannel, RelidReleased: no answer


def guest_call(c: VmbusClient, call: str, relid: int) -> None:
    try:
        if call == "connect":
            c.connect()
        elif call == "open":
            c.open_channel(relid, range(8 * relid, 8 * relid + 40), 20)
        elif call == "close":
            c.close_channel(relid)
        elif call == "gpadl":
            c.create_gpadl(relid, [GpaRange.whole_pages([relid])])
        elif call == "teardown":
            extra = [i for i, x in c.gpadls.items() if x.relid == relid and not x.ring]
            c.teardown_gpadl(relid, extra[0] if extra else 0)
        else:
            c.unload()
    except ValueError:
        pass  # a call the client refuses in this state


def check_client_invariants(c: VmbusClient) -> None:
    """Every GPADL belongs to a channel; a channel past OFFERED holds its ring GPADL, which is
    being torn down exactly when the channel is closing."""
    for gpadl in c.gpadls.values():
        assert gpadl.relid in c.channels
    for ch in c.channels.values():
        if ch.state in (ClientChannelState.CREATING_RING, ClientChannelState.OPENING,
                        ClientChannelState.OPEN, ClientChannelState.CLOSING):
            ring = c.gpadls[ch.ring_gpadl_id]
            assert ring.ring and ring.relid == ch.relid
            assert (ring.state is ClientGpadlState.TEARING_DOWN) == (
                ch.state is ClientChannelState.CLOSING)
        else:
            assert ch.ring_gpadl_id is None
    if c.state is ClientState.DISCONNECTED:
        assert not c.channels and not c.gpadls


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_random_host_behaviour_never_breaks_the_client(data):
    """A host that mostly answers the oldest open request (accepting or refusing), and otherwise
    sends noise, rescinds, or lets the guest make a call."""
    g = Guest()
    g.c.connect()
    pending: list[p.Message] = []
    for _ in range(data.draw(st.integers(0, 60))):
        pending += g.n.take()
        step = data.draw(st.sampled_from(["answer"] * 4 + ["noise", "rescind", "call", "call"]))
        if step == "answer" and pending:
            for reply in answer(pending.pop(0), data.draw(st.booleans() | st.just(True))):
                g.c.handle_message(reply.encode())
        elif step == "noise":
            g.c.handle_message(data.draw(host_messages))
        elif step == "rescind":
            g.c.handle_message(p.RescindChannelOffer(data.draw(st.integers(1, 4))).encode())
        elif step == "call":
            call = data.draw(st.sampled_from(["open", "open", "close", "gpadl", "teardown"])
                             | guest_calls)  # unload (which resets everything) less often
            guest_call(g.c, call, data.draw(st.integers(1, 3)))
        check_client_invariants(g.c)


def test_a_modify_channel_answer_is_reported_and_a_message_without_a_handler_is_ignored(g):
    """ModifyChannelResponse (5.3) is logged, and a host-to-guest message the client has no
    handler for is ignored, never an exception out of handle_message."""
    g.connected(1)
    before = g.snapshot()
    g.n.logged.clear()
    assert g.host(p.ModifyChannelResponse(1, 0)) == []
    assert g.n.logged == [("modify_channel_answered", {"relid": 1, "status": 0})]
    del g.c._handlers[p.ModifyChannelResponse]        # as a client without that handler would be
    g.n.logged.clear()
    assert g.host(p.ModifyChannelResponse(1, 0)) == []
    assert [e for e, _ in g.n.logged] == ["ignored"]
    assert g.snapshot() == before
