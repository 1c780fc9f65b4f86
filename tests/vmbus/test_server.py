"""The VMBus server's channel manager driven through a recording notifier: version negotiation,
offers, GPADLs, open/close, teardown while open, rescind, unload, save/restore; every malformed
or out-of-state message changes nothing; a hypothesis state machine throws random valid and
invalid messages at it and checks its invariants after every step."""
from __future__ import annotations

import uuid

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from vmbus import protocol as p
from vmbus.channel import OfferSpec
from vmbus.protocol import GpaRange, decode, split_gpadl
from vmbus.server import ChannelManager, ChannelState, GpadlState, ServerState

V53, V5, WIN10, WIN8_1, WIN8 = (p.VERSION_WIN10_V5_3, p.VERSION_WIN10_V5, p.VERSION_WIN10,
                                p.VERSION_WIN8_1, p.VERSION_WIN8)
FAIL = p.STATUS_UNSUCCESSFUL


class RecordingNotifier:
    """Records every call; answers create_gpadl/open_channel/connect as configured."""

    def __init__(self):
        self.calls: list[tuple] = []  # everything but logs, in order
        self.logged: list[tuple] = []  # (event, fields)
        self.gpadl_status = 0
        self.open_status: int | None = 0
        self.connect_ok = True
        self.grants: dict[int, int] = {}  # gpadl id -> relid, as the core would hold them
        self.open: set[int] = set()  # relids the device side has open

    def send(self, message: bytes, target_vp: int, sint: int) -> None:
        self.calls.append(("send", decode(message), target_vp, sint))

    def connect(self, version, target_vp, sint, monitor_pages) -> bool:
        self.calls.append(("connect", version, target_vp, sint, monitor_pages))
        return self.connect_ok

    def disconnect(self) -> None:
        self.calls.append(("disconnect",))

    def create_gpadl(self, relid, gpadl_id, ranges) -> int:
        self.calls.append(("create_gpadl", relid, gpadl_id, ranges))
        if self.gpadl_status == 0:
            assert gpadl_id not in self.grants
            self.grants[gpadl_id] = relid
        return self.gpadl_status

    def teardown_gpadl(self, relid, gpadl_id) -> None:
        self.calls.append(("teardown_gpadl", relid, gpadl_id))
        assert self.grants.pop(gpadl_id) == relid

    def open_channel(self, request):
        self.calls.append(("open_channel", request))
        assert request.relid not in self.open
        self.open.add(request.relid)
        if self.open_status not in (0, None):
            self.open.discard(request.relid)
        return self.open_status

    def close_channel(self, relid) -> None:
        self.calls.append(("close_channel", relid))
        self.open.remove(relid)

    def log(self, event, **fields) -> None:
        self.logged.append((event, fields))

    # -- views for the tests --

    def take(self) -> list[tuple]:
        """Calls since the last take()."""
        calls, self.calls = self.calls, []
        return calls

    def sent(self) -> list[p.Message]:
        return [c[1] for c in self.take() if c[0] == "send"]


def spec(n: int = 1, **kw) -> OfferSpec:
    return OfferSpec(uuid.UUID(int=0xC1A55), uuid.UUID(int=n), **kw)


def pages(n: int, base: int = 0x100) -> GpaRange:
    return GpaRange.whole_pages(range(base, base + n))


class Harness:
    """A manager, its notifier, and the guest's side of the conversation as helpers."""

    def __init__(self, **kw):
        self.n = RecordingNotifier()
        self.m = ChannelManager(self.n, **kw)

    def msg(self, message: p.Message, connection_id: int | None = None) -> list[p.Message]:
        self.m.handle_message(message.encode(), connection_id)
        return self.n.sent()

    def connect(self, version: int = V53, **kw) -> None:
        reply = self.msg(p.InitiateContact.for_version(version, **kw))
        assert reply[0].version_supported

    def ready(self, *specs: OfferSpec, version: int = V53) -> list[int]:
        relids = [self.m.offer(s) for s in specs]
        self.connect(version)
        self.msg(p.RequestOffers())
        return relids

    def gpadl(self, relid: int, gpadl_id: int, *ranges: GpaRange) -> list[p.Message]:
        out = []
        for message in split_gpadl(relid, gpadl_id, ranges or (pages(8),)):
            out += self.msg(message)
        return out

    def open(self, relid: int, gpadl_id: int, offset: int = 4, open_id: int | None = None):
        return self.msg(p.OpenChannel(relid, relid if open_id is None else open_id, gpadl_id,
                                      0, offset))

    def open_channel(self, relid: int, gpadl_id: int = 0x100) -> None:
        assert self.gpadl(relid, gpadl_id) == [p.GpadlCreated(relid, gpadl_id, 0)]
        assert self.open(relid, gpadl_id) == [p.OpenResult(relid, relid, 0)]


@pytest.fixture
def hs() -> Harness:
    return Harness()


# -- version negotiation -------------------------------------------------------------------------


def test_connect_at_5_3_on_connection_4(hs):
    hs.m.handle_message(p.InitiateContact.for_version(V53, 1).encode(), 4)
    assert hs.n.take() == [("connect", V53, 1, 2, None),
                           ("send", p.VersionResponse(True, msg_conn_id=1), 1, 2)]
    assert hs.m.state is ServerState.CONNECTED and hs.m.version == V53
    assert (hs.m.target_vp, hs.m.sint, hs.m.msg_conn_id) == (1, 2, 1)


def test_connect_records_the_host_call_and_replies_to_the_requested_sint_and_vp():
    hs = Harness(message_connection_id=0x800074)
    hs.m.handle_message(p.InitiateContact.for_version(V53, 3, msg_sint=5, monitor_page1=0x10000,
                                                      monitor_page2=0x11000).encode(), 4)
    assert hs.n.take() == [
        ("connect", V53, 3, 5, (0x10000, 0x11000)),
        ("send", p.VersionResponse(True, msg_conn_id=0x800074), 3, 5),
    ]
    hs.m.handle_message(p.RequestOffers().encode(), 1)  # wrong connection from now on
    assert hs.n.take() == []
    hs.m.handle_message(p.RequestOffers().encode(), 0x800074)
    assert hs.n.take() == [("send", p.AllOffersDelivered(), 3, 5)]


def test_connect_before_5_0_reports_the_version_and_ignores_target_vp_before_8_1():
    hs = Harness()
    assert hs.msg(p.InitiateContact.for_version(WIN10, 2), connection_id=1) == [
        p.VersionResponse(True, msg_conn_id=WIN10)]
    assert (hs.m.target_vp, hs.m.msg_conn_id) == (2, 1)
    hs = Harness()
    hs.m.handle_message(p.InitiateContact.for_version(WIN8, 2).encode())
    assert [c[2:] for c in hs.n.take() if c[0] == "send"] == [(0, 2)]  # VP 0 before Win8.1


@pytest.mark.parametrize("version", [p.VERSION_WS2008, p.VERSION_WIN7, 0x00060000, 0x00050004, 0])
def test_unsupported_versions_are_refused_and_leave_the_server_disconnected(hs, version):
    before = hs.m.save()
    reply = hs.msg(p.InitiateContact.for_version(version))
    assert reply == [p.VersionResponse(False)]
    assert hs.m.save() == before


def test_guest_fallback_sequence_newest_first():
    hs = Harness(versions=[WIN10, WIN8_1, WIN8])
    answers = [hs.msg(p.InitiateContact.for_version(v))[0].version_supported
               for v in (V53, p.VERSION_WIN10_V5_2, p.VERSION_WIN10_V4_1)]
    assert answers == [False, False, False] and hs.m.state is ServerState.DISCONNECTED
    assert hs.msg(p.InitiateContact.for_version(WIN10)) == [p.VersionResponse(True, msg_conn_id=WIN10)]
    assert hs.m.version == WIN10


@pytest.mark.parametrize("version,conn", [(V53, 1), (V5, 1), (WIN10, 4), (WIN8, 4)])
def test_initiate_contact_on_the_wrong_connection_is_ignored(hs, version, conn):
    assert hs.msg(p.InitiateContact.for_version(version), connection_id=conn) == []
    assert hs.m.state is ServerState.DISCONNECTED


@pytest.mark.parametrize("contact", [
    p.InitiateContact.for_version(V53, monitor_page1=0x1000),  # one monitor page of two
    p.InitiateContact.for_version(WIN8, monitor_page2=0x1000),
    p.InitiateContact(V53, 0, 2 | 1 << 8),  # VTL 1
])
def test_inconsistent_contact_is_refused(hs, contact):
    assert hs.msg(contact) == [p.VersionResponse(False, p.ConnectionState.FAILED_UNKNOWN_FAILURE)]
    assert hs.m.state is ServerState.DISCONNECTED


def test_host_can_refuse_a_connection(hs):
    hs.n.connect_ok = False
    assert hs.msg(p.InitiateContact.for_version(V53)) == [
        p.VersionResponse(False, p.ConnectionState.FAILED_UNKNOWN_FAILURE)]
    assert hs.m.state is ServerState.DISCONNECTED


def test_second_initiate_contact_is_ignored(hs):
    hs.connect()
    before = hs.m.save()
    assert hs.msg(p.InitiateContact.for_version(WIN10)) == []
    assert hs.m.save() == before


# -- offers --------------------------------------------------------------------------------------


def test_request_offers_sends_every_offer_then_all_offers_delivered(hs):
    r1 = hs.m.offer(spec(1, user_def=b"abc", flags=4, mmio_megabytes=8))
    r2 = hs.m.offer(spec(2, connection_id=0x4242, is_dedicated_interrupt=True))
    assert (r1, r2) == (1, 2)
    hs.connect()
    assert hs.n.take() == []
    assert hs.msg(p.RequestOffers()) == [
        p.OfferChannel(uuid.UUID(int=0xC1A55), uuid.UUID(int=1), 1, flags=4, mmio_megabytes=8,
                       user_def=b"abc", connection_id=0x2001),
        p.OfferChannel(uuid.UUID(int=0xC1A55), uuid.UUID(int=2), 2, connection_id=0x4242,
                       is_dedicated_interrupt=True),
        p.AllOffersDelivered(),
    ]
    assert hs.m.state is ServerState.OFFERS_DELIVERED


def test_offer_after_delivery_is_sent_at_once(hs):
    hs.ready()
    relid = hs.m.offer(spec(5))
    assert hs.n.sent() == [spec(5).to_message(relid, 0x2000 + relid)]


def test_request_offers_out_of_state_is_ignored(hs):
    hs.m.offer(spec())
    assert hs.msg(p.RequestOffers()) == []  # not connected
    hs.connect()
    hs.msg(p.RequestOffers())
    before = hs.m.save()
    assert hs.msg(p.RequestOffers()) == []  # twice
    assert hs.m.save() == before


def test_host_offer_mistakes_raise(hs):
    hs.m.offer(spec(1))
    with pytest.raises(ValueError, match="already offered"):
        hs.m.offer(spec(1))
    assert hs.m.offer(spec(1, sub_channel_index=1)) == 2
    with pytest.raises(ValueError):
        hs.m.rescind(9)
    with pytest.raises(ValueError):
        hs.m.open_complete(1, 0)


def test_relids_run_out_at_2047():
    hs = Harness()
    for i in range(p.MAX_RELID):
        hs.m.offer(spec(i))
    with pytest.raises(ValueError, match="no free relid"):
        hs.m.offer(spec(99999))


# -- GPADLs --------------------------------------------------------------------------------------


def test_gpadl_in_the_header_alone(hs):
    (relid,) = hs.ready(spec())
    assert hs.msg(p.GpadlHeader(relid, 0x77, 24, 1, pages(2).words())) == [
        p.GpadlCreated(relid, 0x77, 0)]
    assert hs.n.grants == {0x77: relid}
    assert hs.m.gpadl_state(0x77) is GpadlState.CREATED


def test_gpadl_with_bodies_is_created_once_complete(hs):
    (relid,) = hs.ready(spec())
    ranges = (pages(60), GpaRange(100, 4000, (7, 8)))
    header, *bodies = split_gpadl(relid, 0x78, ranges)
    assert len(bodies) == 2
    hs.m.handle_message(header.encode())
    hs.m.handle_message(bodies[0].encode())
    assert hs.n.take() == []
    hs.m.handle_message(bodies[1].encode())
    assert hs.n.take() == [("create_gpadl", relid, 0x78, ranges),
                           ("send", p.GpadlCreated(relid, 0x78, 0), 0, 2)]


def test_gpadl_the_core_refuses_is_answered_with_its_status(hs):
    (relid,) = hs.ready(spec())
    hs.n.gpadl_status = 0xC0000022
    assert hs.gpadl(relid, 5) == [p.GpadlCreated(relid, 5, 0xC0000022)]
    assert hs.m.gpadl_state(5) is None
    hs.n.gpadl_status = 0
    assert hs.gpadl(relid, 5) == [p.GpadlCreated(relid, 5, 0)]  # the id is free again


@pytest.mark.parametrize("header,bodies", [
    (p.GpadlHeader(1, 5, 16, 0, (4096, 1)), []),  # rangecount 0
    (p.GpadlHeader(1, 5, 20, 1, (4096,)), []),  # range_buflen not whole words
    (p.GpadlHeader(1, 5, 32, 3, ()), []),  # three ranges cannot fit 32 bytes
    (p.GpadlHeader(1, 5, 16, 1, (8192, 1, 2)), []),  # header overflows its own buflen
    (p.GpadlHeader(1, 5, 24, 1, (8192, 1)), [p.GpadlBody(0, 5, (2, 3))]),  # body overflows
    (p.GpadlHeader(1, 5, 24, 1, (4096, 1)), [p.GpadlBody(0, 5, (2,))]),  # 1 page, 2 PFNs
    (p.GpadlHeader(1, 5, 32, 1, (4096, 1)), [p.GpadlBody(0, 5, (4096, 2))]),  # rangecount 1, 2 ranges
    (p.GpadlHeader(1, 5, 16, 1, (4096 | 4096 << 32, 1)), []),  # byte_offset 4096
])
def test_inconsistent_gpadls_are_refused_and_nothing_is_granted(hs, header, bodies):
    hs.ready(spec())
    replies = hs.msg(header)
    for body in bodies:
        replies += hs.msg(body)
    assert replies == [p.GpadlCreated(1, 5, FAIL)]
    assert hs.n.grants == {} and hs.m.save()["assembling"] == [] and hs.m.save()["gpadls"] == []


def test_body_after_a_refused_overflow_is_ignored(hs):
    hs.ready(spec())
    hs.msg(p.GpadlHeader(1, 5, 40, 1, (4 * 4096, 1)))
    assert hs.msg(p.GpadlBody(0, 5, (2, 3, 4, 5))) == [p.GpadlCreated(1, 5, FAIL)]
    assert hs.msg(p.GpadlBody(0, 5, (4,))) == []


def test_duplicate_gpadl_ids_are_ignored(hs):
    r1, r2 = hs.ready(spec(1), spec(2))
    hs.gpadl(r1, 5)
    hs.msg(p.GpadlHeader(r1, 6, 8 * 61, 1, pages(60).words()[:27]))  # in progress
    before = hs.m.save()
    for relid in (r1, r2):
        for gpadl_id in (5, 6):
            assert hs.gpadl(relid, gpadl_id) == []
    assert hs.m.save() == before


def test_gpadl_for_an_unknown_or_unoffered_relid_is_ignored(hs):
    hs.ready(spec())
    assert hs.gpadl(9, 5) == [] and hs.msg(p.GpadlBody(0, 12345, (1,))) == []
    assert hs.m.save()["gpadls"] == []


def test_gpadl_limit_refuses_rather_than_grows():
    hs = Harness(max_gpadls=3)
    (relid,) = hs.ready(spec())
    hs.gpadl(relid, 1), hs.gpadl(relid, 2)
    hs.msg(p.GpadlHeader(relid, 3, 8 * 40, 1, ()))
    assert hs.gpadl(relid, 4) == [p.GpadlCreated(relid, 4, FAIL)]


# -- open, close, teardown -----------------------------------------------------------------------


def test_open_and_close(hs):
    (relid,) = hs.ready(spec())
    hs.gpadl(relid, 0x10, pages(6))
    hs.m.handle_message(p.OpenChannel(relid, 77, 0x10, 1, 2, b"hi").encode())
    (call, send) = hs.n.take()
    assert call[0] == "open_channel"
    req = call[1]
    assert (req.relid, req.open_id, req.ring_gpadl_id, req.downstream_page_offset, req.target_vp,
            req.user_data) == (relid, 77, 0x10, 2, 1, b"hi" + bytes(118))
    assert req.ring_pfns == tuple(range(0x100, 0x106))
    assert send[1] == p.OpenResult(relid, 77, 0)
    assert hs.m.channel_state(relid) is ChannelState.OPEN
    assert hs.msg(p.CloseChannel(relid)) == []
    assert hs.n.open == set()
    assert hs.m.channel_state(relid) is ChannelState.OFFERED
    assert hs.m.gpadl_state(0x10) is GpadlState.CREATED  # closing does not revoke the ring
    hs.open_channel(relid, 0x11)  # and it can be opened again


@pytest.mark.parametrize("gpadl_id,ranges,offset,why", [
    (0x99, None, 4, "no GPADL"),
    (0x10, (pages(8),), 1, "upstream ring of 1 pages"),
    (0x10, (pages(8),), 7, "downstream ring of 1 pages"),
    (0x10, (pages(3),), 2, "downstream ring of 1 pages"),
    (0x10, (GpaRange(8 * 4096 - 1, 0, range(8)),), 4, "not whole pages"),
    (0x10, (GpaRange(7 * 4096, 16, range(8)),), 4, "not whole pages"),
])
def test_unusable_open_is_answered_with_failure(hs, gpadl_id, ranges, offset, why):
    (relid,) = hs.ready(spec())
    if ranges:
        hs.gpadl(relid, 0x10, *ranges)
    before = hs.m.save()
    assert hs.open(relid, gpadl_id, offset) == [p.OpenResult(relid, relid, FAIL)]
    assert hs.m.save() == before
    assert any(e == "open_refused" and why in f["reason"] for e, f in hs.n.logged)


def test_open_with_another_channels_gpadl_fails(hs):
    r1, r2 = hs.ready(spec(1), spec(2))
    hs.gpadl(r1, 0x10)
    assert hs.open(r2, 0x10) == [p.OpenResult(r2, r2, FAIL)]


def test_device_refusing_the_open(hs):
    (relid,) = hs.ready(spec())
    hs.gpadl(relid, 0x10)
    hs.n.open_status = 0xC000009A
    assert hs.open(relid, 0x10) == [p.OpenResult(relid, relid, 0xC000009A)]
    assert hs.m.channel_state(relid) is ChannelState.OFFERED


def test_pending_open_completes_later(hs):
    (relid,) = hs.ready(spec())
    hs.gpadl(relid, 0x10)
    hs.n.open_status = None
    assert hs.open(relid, 0x10, open_id=9) == []
    assert hs.m.channel_state(relid) is ChannelState.OPENING
    hs.m.open_complete(relid, 0)
    assert hs.n.sent() == [p.OpenResult(relid, 9, 0)]
    assert hs.m.channel_state(relid) is ChannelState.OPEN


def test_close_cancels_a_pending_open(hs):
    (relid,) = hs.ready(spec())
    hs.gpadl(relid, 0x10)
    hs.n.open_status = None
    hs.open(relid, 0x10)
    hs.msg(p.CloseChannel(relid))
    assert hs.m.channel_state(relid) is ChannelState.OFFERED and hs.n.open == set()
    with pytest.raises(ValueError):
        hs.m.open_complete(relid, 0)


def test_teardown_of_an_unused_gpadl_is_immediate(hs):
    (relid,) = hs.ready(spec())
    hs.open_channel(relid, 0x10)
    hs.gpadl(relid, 0x20)  # e.g. a receive buffer, not the ring
    hs.m.handle_message(p.GpadlTeardown(relid, 0x20).encode())
    assert hs.n.take() == [("teardown_gpadl", relid, 0x20), ("send", p.GpadlTorndown(0x20), 0, 2)]


def test_ring_teardown_while_open_waits_for_close(hs):
    (relid,) = hs.ready(spec())
    hs.open_channel(relid, 0x10)
    assert hs.msg(p.GpadlTeardown(relid, 0x10)) == []
    assert hs.m.gpadl_state(0x10) is GpadlState.TEARDOWN_PENDING and 0x10 in hs.n.grants
    assert hs.msg(p.GpadlTeardown(relid, 0x10)) == []  # twice: still one teardown
    assert hs.open(relid, 0x10) == []  # already open
    hs.m.handle_message(p.CloseChannel(relid).encode())
    assert hs.n.take() == [("close_channel", relid), ("teardown_gpadl", relid, 0x10),
                           ("send", p.GpadlTorndown(0x10), 0, 2)]


def test_ring_teardown_while_opening_completes_when_the_open_fails(hs):
    (relid,) = hs.ready(spec())
    hs.gpadl(relid, 0x10)
    hs.n.open_status = None
    hs.open(relid, 0x10)
    assert hs.msg(p.GpadlTeardown(relid, 0x10)) == []
    hs.n.open.discard(relid)  # the device gives up
    hs.m.open_complete(relid, FAIL)
    assert hs.n.sent() == [p.OpenResult(relid, relid, FAIL), p.GpadlTorndown(0x10)]


def test_teardown_abuse_is_ignored(hs):
    r1, r2 = hs.ready(spec(1), spec(2))
    hs.gpadl(r1, 0x10)
    hs.msg(p.GpadlHeader(r1, 0x11, 8 * 40, 1, ()))  # in progress
    before = hs.m.save()
    for message in (p.GpadlTeardown(r2, 0x10), p.GpadlTeardown(r1, 0x99),
                    p.GpadlTeardown(r1, 0x11), p.GpadlTeardown(5, 0x10)):
        assert hs.msg(message) == []
    assert hs.m.save() == before


# -- rescind -------------------------------------------------------------------------------------


def test_rescind_of_an_open_channel(hs):
    (relid,) = hs.ready(spec())
    hs.open_channel(relid, 0x10)
    hs.gpadl(relid, 0x20)
    hs.msg(p.GpadlTeardown(relid, 0x10))  # pending until close
    hs.m.rescind(relid)
    assert hs.n.take() == [
        ("close_channel", relid), ("send", p.RescindChannelOffer(relid), 0, 2),
        ("teardown_gpadl", relid, 0x10), ("send", p.GpadlTorndown(0x10), 0, 2)]
    assert hs.m.channel_state(relid) is ChannelState.RESCINDED
    # The guest may still tear its GPADLs down; it cannot do anything else with the channel.
    before = hs.m.save()
    for message in (p.OpenChannel(relid, 1, 0x20, 0, 2), p.CloseChannel(relid),
                    p.GpadlHeader(relid, 0x30, 16, 1, pages(1).words())):
        assert hs.msg(message) == []
    assert hs.m.save() == before
    assert hs.msg(p.GpadlTeardown(relid, 0x20)) == [p.GpadlTorndown(0x20)]
    hs.m.handle_message(p.RelidReleased(relid).encode())
    assert hs.m.relids == [] and hs.n.grants == {}


def test_released_relid_frees_gpadls_left_behind(hs):
    (relid,) = hs.ready(spec())
    hs.gpadl(relid, 0x20)
    hs.msg(p.GpadlHeader(relid, 0x21, 8 * 40, 1, ()))  # in progress: dropped at rescind
    hs.m.rescind(relid)
    assert hs.m.save()["assembling"] == []
    hs.n.take()
    hs.m.handle_message(p.RelidReleased(relid).encode())
    assert hs.n.take() == [("teardown_gpadl", relid, 0x20)]  # silently: no Torndown


def test_relid_is_not_reused_until_released(hs):
    r1, r2 = hs.ready(spec(1), spec(2))
    hs.m.rescind(r1)
    r3 = hs.m.offer(spec(3))
    assert r3 == 3
    assert [type(m) for m in hs.n.sent()] == [p.RescindChannelOffer, p.OfferChannel]
    assert hs.msg(p.RelidReleased(r2)) == []  # not rescinded: ignored
    hs.msg(p.RelidReleased(r1))
    assert hs.m.offer(spec(4)) == r1
    hs.n.take()
    assert hs.msg(p.RelidReleased(r1)) == []  # released twice / a live channel


def test_rescind_before_offers_were_delivered_is_silent(hs):
    relid = hs.m.offer(spec())
    hs.connect()
    hs.m.rescind(relid)
    assert hs.n.take() == [] and hs.m.relids == []
    assert hs.msg(p.RequestOffers()) == [p.AllOffersDelivered()]


# -- unload and reset ----------------------------------------------------------------------------


def test_unload_closes_and_revokes_everything(hs):
    r1, r2, r3 = hs.ready(spec(1), spec(2), spec(3))
    hs.open_channel(r1, 0x10)
    hs.gpadl(r2, 0x20)
    hs.msg(p.GpadlHeader(r2, 0x21, 8 * 40, 1, ()))
    hs.m.rescind(r3)
    hs.n.take()
    hs.m.handle_message(p.Unload().encode())
    calls = hs.n.take()
    assert calls[-1] == ("send", p.UnloadResponse(), 0, 2)
    assert sorted(calls[:-1], key=str) == sorted([
        ("close_channel", r1), ("teardown_gpadl", r1, 0x10), ("teardown_gpadl", r2, 0x20),
        ("disconnect",)], key=str)
    assert hs.m.state is ServerState.DISCONNECTED and hs.m.relids == [r1, r2]
    assert hs.n.grants == {} and hs.n.open == set()
    # The offers survive for the next connection.
    hs.connect()
    assert [type(m).__name__ for m in hs.msg(p.RequestOffers())] == [
        "OfferChannel", "OfferChannel", "AllOffersDelivered"]


def test_unload_when_disconnected_still_answers(hs):
    assert hs.msg(p.Unload()) == [p.UnloadResponse()]
    assert ("disconnect",) not in hs.n.calls


def test_reset_sends_nothing_and_keeps_offers(hs):
    (relid,) = hs.ready(spec())
    hs.open_channel(relid)
    hs.m.reset()
    assert [c for c in hs.n.take() if c[0] == "send"] == []
    assert hs.m.state is ServerState.DISCONNECTED and hs.n.grants == {} and hs.n.open == set()
    assert hs.m.channel_state(relid) is ChannelState.OFFERED


# -- malformed and out-of-state messages ----------------------------------------------------------

OUT_OF_STATE_BEFORE_CONNECT = [
    p.RequestOffers(), p.GpadlHeader(1, 5, 16, 1, pages(1).words()), p.GpadlBody(0, 5, (1,)),
    p.GpadlTeardown(1, 5), p.OpenChannel(1, 1, 5, 0, 2), p.CloseChannel(1), p.RelidReleased(1),
]
HOST_TO_GUEST = [
    p.OfferChannel(uuid.UUID(int=1), uuid.UUID(int=2), 1), p.RescindChannelOffer(1),
    p.AllOffersDelivered(), p.OpenResult(1, 1, 0), p.GpadlCreated(1, 5, 0), p.GpadlTorndown(5),
    p.VersionResponse(True), p.UnloadResponse(),
]
GARBAGE = [b"", b"\x01", bytes(8), bytes.fromhex("12000000 00000000"), bytes(300),
           p.OpenChannel(1, 1, 5, 0, 2).encode()[:100], p.InitiateContact(V53, 0).encode()[:39],
           bytes.fromhex("07000000 00000000 00000000"), bytes.fromhex("0d000000 00000000 00100000")]


@pytest.mark.parametrize("message", OUT_OF_STATE_BEFORE_CONNECT + HOST_TO_GUEST)
def test_out_of_state_before_connect_changes_nothing(message):
    hs = Harness()
    hs.m.offer(spec())
    before = hs.m.save()
    hs.m.handle_message(message.encode())
    assert hs.m.save() == before and hs.n.calls == []
    assert hs.n.logged[-1][0] == "ignored"


@pytest.mark.parametrize("message", [p.GpadlHeader(1, 5, 16, 1, pages(1).words()),
                                     p.OpenChannel(1, 1, 5, 0, 2), p.CloseChannel(1)])
def test_channel_messages_before_request_offers_change_nothing(message):
    hs = Harness()
    hs.m.offer(spec())
    hs.connect()
    before = hs.m.save()
    assert hs.msg(message) == [] and hs.m.save() == before


@pytest.mark.parametrize("raw", GARBAGE + [m.encode() for m in HOST_TO_GUEST])
def test_malformed_or_misdirected_messages_when_open_change_nothing(raw):
    hs = Harness()
    (relid,) = hs.ready(spec())
    hs.open_channel(relid)
    hs.n.calls.clear(), hs.n.logged.clear()
    before = hs.m.save()
    hs.m.handle_message(raw)
    assert hs.m.save() == before and hs.n.calls == []
    assert [e for e, _ in hs.n.logged] == ["ignored"]


# -- saved state ---------------------------------------------------------------------------------


def test_save_restore_round_trip_and_continue(hs):
    r1, r2 = hs.ready(spec(1, user_def=b"x"), spec(2))
    hs.open_channel(r1, 0x10)
    hs.msg(p.GpadlTeardown(r1, 0x10))
    header, body = split_gpadl(r2, 0x21, [pages(39)])
    hs.msg(header)
    saved = hs.m.save()
    restored = ChannelManager.restore(hs.n, saved)
    assert restored.save() == saved
    assert hs.n.take() == []  # restoring calls nothing
    hs.m = restored
    assert hs.msg(p.CloseChannel(r1)) == [p.GpadlTorndown(0x10)]
    assert hs.msg(body) == [p.GpadlCreated(r2, 0x21, 0)]


def test_restore_refuses_unknown_format(hs):
    with pytest.raises(ValueError, match="format"):
        ChannelManager.restore(hs.n, {"format": 99})


# -- random message sequences --------------------------------------------------------------------

GPADL_IDS = st.integers(1, 6)
RELIDS = st.integers(1, 5)


class ServerMachine(RuleBasedStateMachine):
    """Random host calls and guest messages (valid, malicious and garbage) against one manager;
    invariants after every step. Recorded grants and open channels are the host's view and must
    match the manager's."""

    @initialize(channels=st.integers(0, 4), connected=st.booleans())
    def setup(self, channels, connected):
        self.n = RecordingNotifier()
        self.m = ChannelManager(self.n, max_gpadls=5)
        self.next_instance = channels
        for i in range(1, channels + 1):
            self.m.offer(spec(i))
        if connected:  # most interesting states need a connection: start from one often
            self.send(p.InitiateContact.for_version(V53))
            self.send(p.RequestOffers())

    def send(self, message) -> None:
        self.m.handle_message(message.encode() if isinstance(message, p.Message) else message)

    @rule()
    def host_offer(self):
        rescinded = {r for r in self.m.relids if self.m.channel_state(r) is ChannelState.RESCINDED}
        if len(self.m.relids) < 5:
            self.next_instance += 1
            relid = self.m.offer(spec(self.next_instance))
            assert relid not in rescinded

    @rule(relid=RELIDS)
    def host_rescind(self, relid):
        state = self.m.channel_state(relid)
        if state not in (None, ChannelState.RESCINDED):
            self.m.rescind(relid)

    @rule(relid=RELIDS, status=st.sampled_from([0, FAIL]))
    def host_open_complete(self, relid, status):
        if self.m.channel_state(relid) is ChannelState.OPENING:
            if status:
                self.n.open.discard(relid)
            self.m.open_complete(relid, status)

    @rule(version=st.sampled_from([V53, V5, WIN10, WIN8, p.VERSION_WIN7, "unload"]))
    def contact_or_unload(self, version):
        # One rule for both, so that unloads (which undo most of the state) stay rare.
        if version == "unload":
            self.send(p.Unload())
        else:
            self.send(p.InitiateContact.for_version(version))

    @rule()
    def request_offers(self):
        self.send(p.RequestOffers())

    @rule(relid=RELIDS, gpadl_id=GPADL_IDS, n=st.integers(1, 12) | st.integers(13, 60),
          base=st.integers(0, 3))
    def gpadl(self, relid, gpadl_id, n, base):
        for message in split_gpadl(relid, gpadl_id, [pages(n, base)]):
            self.send(message)

    @rule(relid=RELIDS, gpadl_id=GPADL_IDS, buflen=st.integers(0, 300).map(lambda x: x * 8),
          count=st.integers(0, 3), data=st.lists(st.integers(0, 2**13), max_size=27))
    def gpadl_header_raw(self, relid, gpadl_id, buflen, count, data):
        self.send(p.GpadlHeader(relid, gpadl_id, buflen, count, data))

    @rule(gpadl_id=GPADL_IDS, data=st.lists(st.integers(0, 2**13), max_size=28))
    def gpadl_body_raw(self, gpadl_id, data):
        self.send(p.GpadlBody(0, gpadl_id, data))

    def pick_gpadl(self, data) -> tuple[int, int]:
        """Mostly a live GPADL and its relid, so that opens and teardowns get somewhere."""
        live = self.m.save()["gpadls"]
        if live and data.draw(st.integers(0, 3)):
            g = data.draw(st.sampled_from(live))
            return g["relid"], g["gpadl_id"]
        return data.draw(RELIDS), data.draw(GPADL_IDS)

    @rule(data=st.data())
    def gpadl_teardown(self, data):
        self.send(p.GpadlTeardown(*self.pick_gpadl(data)))

    @rule(data=st.data(), offset=st.integers(0, 8), status=st.sampled_from([0, 0, None, FAIL]))
    def open(self, data, offset, status):
        relid, gpadl_id = self.pick_gpadl(data)
        self.n.open_status = status
        self.send(p.OpenChannel(relid, relid, gpadl_id, 0, offset))

    # Directed rules: valid steps on what exists, so that deep states are reached often.

    def live_channels(self, *states: str) -> list[int]:
        return [c["relid"] for c in self.m.save()["channels"] if c["state"] in states]

    def openable(self) -> list[tuple[int, int, int]]:
        s = self.m.save()
        offered = {c["relid"] for c in s["channels"] if c["state"] == "offered"}
        return [(g["relid"], g["gpadl_id"], sum(len(r[2]) for r in g["ranges"]))
                for g in s["gpadls"] if g["relid"] in offered and g["state"] == "created"]

    @precondition(lambda self: self.m.state is ServerState.OFFERS_DELIVERED
                  and self.live_channels("offered", "open", "opening"))
    @rule(data=st.data(), n=st.integers(1, 12) | st.integers(13, 60))
    def gpadl_on_a_live_channel(self, data, n):
        relid = data.draw(st.sampled_from(self.live_channels("offered", "open", "opening")))
        self.gpadl(relid, data.draw(GPADL_IDS), n, 0)

    @precondition(lambda self: self.openable())
    @rule(data=st.data(), status=st.sampled_from([0, 0, None, FAIL]))
    def open_a_live_ring(self, data, status):
        relid, gpadl_id, n = data.draw(st.sampled_from(self.openable()))
        offset = data.draw(st.integers(2, max(2, n - 2)) | st.integers(0, n))
        self.n.open_status = status
        self.send(p.OpenChannel(relid, relid, gpadl_id, 0, offset))

    @precondition(lambda self: self.live_channels("open", "opening"))
    @rule(data=st.data())
    def close_an_open_channel(self, data):
        self.send(p.CloseChannel(data.draw(st.sampled_from(self.live_channels("open", "opening")))))

    @precondition(lambda self: self.live_channels("rescinded"))
    @rule(data=st.data())
    def release_a_rescinded_relid(self, data):
        self.send(p.RelidReleased(data.draw(st.sampled_from(self.live_channels("rescinded")))))

    @rule(relid=RELIDS)
    def close(self, relid):
        self.send(p.CloseChannel(relid))

    @rule(relid=RELIDS)
    def release(self, relid):
        self.send(p.RelidReleased(relid))

    @rule(status=st.sampled_from([0, FAIL]))
    def core_mood(self, status):
        self.n.gpadl_status = status

    @rule(raw=st.binary(max_size=64) | st.sampled_from(GARBAGE))
    def garbage(self, raw):
        self.send(raw)

    @rule(msgtype=st.integers(0, 20).filter(lambda t: t != 16), body=st.binary(max_size=40))
    def typed_garbage(self, msgtype, body):
        self.send(msgtype.to_bytes(4, "little") + bytes(4) + body)

    @rule()
    def save_restore(self):
        saved = self.m.save()
        self.m = ChannelManager.restore(self.n, saved, max_gpadls=5)
        assert self.m.save() == saved

    @invariant()
    def consistent(self):
        s = self.m.save()
        channels = {c["relid"]: c for c in s["channels"]}
        gpadls = {g["gpadl_id"]: g for g in s["gpadls"]}
        live = {(c["relid"]) for c in s["channels"] if c["state"] in ("opening", "open")}
        for c in s["channels"]:
            if c["state"] in ("opening", "open"):
                g = gpadls[c["ring_gpadl_id"]]  # every open channel has a live ring GPADL
                assert g["relid"] == c["relid"]
            else:
                assert c["ring_gpadl_id"] is None
        for i, g in gpadls.items():
            assert g["relid"] in channels
            if g["state"] == "teardown_pending":
                assert channels[g["relid"]]["ring_gpadl_id"] == i
        for a in s["assembling"]:
            assert channels[a["relid"]]["state"] != "rescinded"
            assert a["gpadl_id"] not in gpadls
        assert len(gpadls) + len(s["assembling"]) <= 5
        if s["state"] == "disconnected":
            assert not gpadls and not s["assembling"] and not live
            assert all(c["state"] == "offered" for c in s["channels"])
        # The host's view matches: grants made and not revoked, channels opened and not closed.
        assert self.n.grants == {i: g["relid"] for i, g in gpadls.items()}
        assert self.n.open == live
        self.n.calls.clear(), self.n.logged.clear()


ServerMachine.TestCase.settings = settings(max_examples=300, stateful_step_count=50, deadline=None)
TestServerMachine = ServerMachine.TestCase
