"""Channels without a host: a connected pair of channel ends over one buffer, and a VMBus server
and client back to back through the Loopback, end to end (connect, offers, open with GPADLs,
data both ways, close, rescind, unload), and random host/guest operations after which both sides
must agree and neither ever had to ignore a message."""
from __future__ import annotations

import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmbus import protocol as p
from vmbus.channel import ChannelEnd, Loopback, OfferSpec, connected_pair, split_rings
from vmbus.client import ClientChannelState, ClientEvent, ClientState, EventKind, VmbusClient
from vmbus.protocol import GpaRange
from vmbus.ring import RingFull
from vmbus.server import ChannelManager, ChannelState, GpadlState, ServerState

CLASS = uuid.UUID("8c2eaf3d-32a7-4b09-ab99-bd1f1c86b501")


# -- a connected pair of channel ends ------------------------------------------------------------


def test_connected_pair_carries_packets_both_ways_and_signals_on_empty_to_non_empty():
    host, guest = connected_pair(ring_pages=2)
    woken = []
    guest.on_signal = lambda: woken.append("guest")
    host.on_signal = lambda: woken.append("host")
    host.send(b"one", trans_id=1)
    host.send(b"two", trans_id=2)
    assert woken == ["guest"]  # the second packet found the ring non-empty
    assert [(pk.trans_id, pk.payload[:3]) for pk in guest.receive()] == [(1, b"one"), (2, b"two")]
    guest.send(b"reply")
    assert woken == ["guest", "host"]
    assert host.receive()[0].payload[:5] == b"reply"
    assert host.receive() == []


def test_full_ring_raises_and_the_reader_signals_when_space_frees():
    host, guest = connected_pair(ring_pages=2)
    signals = []
    host.on_signal = lambda: signals.append(1)
    payload = bytes(1000)
    sent = 0
    with pytest.raises(RingFull):
        while True:
            host.send(payload, set_pending_send_sz=True)
            sent += 1
    assert sent == 3  # 4096-byte data area, 1024 + 8 bytes per packet, 8 always free
    assert len(guest.receive()) == 3 and signals == [1]


@pytest.mark.parametrize("size,offset,why", [
    (4 * 4096 + 1, 2, "not whole pages"),
    (4 * 4096, 1, "upstream ring of 1 pages"),
    (4 * 4096, 3, "downstream ring of 1 pages"),
])
def test_split_rings_checks_the_layout(size, offset, why):
    with pytest.raises(ValueError, match=why):
        split_rings(bytearray(size), offset)


def test_host_and_guest_ends_are_mirror_images():
    memory = bytearray(6 * 4096)
    up, down = split_rings(memory, 2)
    assert len(up) == 2 * 4096 and len(down) == 4 * 4096
    host = ChannelEnd.host(memory, 2, lambda: None)
    guest = ChannelEnd.guest(memory, 2, lambda: None)
    assert host.outgoing.data_size == guest.incoming.data_size == 3 * 4096
    assert host.incoming.data_size == guest.outgoing.data_size == 4096


def test_offer_spec_refuses_long_user_def():
    with pytest.raises(ValueError):
        OfferSpec(CLASS, uuid.uuid4(), user_def=bytes(121))


# -- the control plane back to back --------------------------------------------------------------


class Pair:
    def __init__(self, pages: int = 256, **client_kw):
        self.loop = Loopback(pages)
        self.server = ChannelManager(self.loop.host)
        self.bound: dict[int, str] = {}
        self.client = VmbusClient(self.loop.guest, self.bind, **client_kw)
        self.loop.attach(self.server, self.client)

    def bind(self, offer: p.OfferChannel):
        self.bound[offer.child_relid] = str(offer.instance_id)
        return "vsc"

    def events(self) -> list[ClientEvent]:
        return [e[1] for e in self.loop.events if e[0] == "guest_event"]

    def ignored(self) -> list:
        return [e for e in self.loop.events if e[0].endswith("_log") and e[1] == "ignored"]

    def open(self, relid: int, up: int = 2, down: int = 2) -> None:
        pfns, offset = self.loop.alloc_ring(up, down)
        self.client.open_channel(relid, pfns, offset)
        self.loop.run()


def test_end_to_end():
    pair = Pair()
    relids = [pair.server.offer(OfferSpec(CLASS, uuid.UUID(int=i))) for i in range(3)]
    pair.client.connect()
    pair.loop.run()
    assert pair.client.state is ClientState.CONNECTED and pair.client.version == p.VERSION_WIN10_V5_3
    assert sorted(pair.bound) == relids

    for relid in relids:
        pair.open(relid)
    assert all(pair.client.channels[r].state is ClientChannelState.OPEN for r in relids)
    assert all(pair.server.channel_state(r) is ChannelState.OPEN for r in relids)

    # Data both ways on each channel, through rings in the loopback's memory.
    for relid in relids:
        host, guest = pair.loop.host_ends[relid], pair.loop.guest_end(relid)
        host.send(f"to guest {relid}".encode())
        guest.send(f"to host {relid}".encode())
        assert guest.receive()[0].payload.rstrip(b"\0") == f"to guest {relid}".encode()
        assert host.receive()[0].payload.rstrip(b"\0") == f"to host {relid}".encode()

    pair.client.close_channel(relids[0])
    pair.loop.run()
    assert pair.server.channel_state(relids[0]) is ChannelState.OFFERED
    assert relids[0] not in pair.loop.host_ends

    pair.server.rescind(relids[1])  # while open
    pair.loop.run()
    assert relids[1] not in pair.client.channels and relids[1] not in pair.server.relids

    pair.client.unload()
    pair.loop.run()
    assert pair.server.state is ServerState.DISCONNECTED and pair.loop.grants == {}
    assert pair.loop.host_ends == {}

    pair.client.connect()  # the remaining offers come back
    pair.loop.run()
    assert sorted(pair.client.channels) == [relids[0], relids[2]]
    pair.open(relids[2])
    assert pair.client.channels[relids[2]].state is ClientChannelState.OPEN
    assert pair.ignored() == []


def test_large_ring_gpadl_goes_through_bodies():
    pair = Pair()
    relid = pair.server.offer(OfferSpec(CLASS, uuid.uuid4()))
    pair.client.connect()
    pair.loop.run()
    pair.open(relid, 30, 34)
    assert pair.server.channel_state(relid) is ChannelState.OPEN
    gpadl_id = pair.client.channels[relid].ring_gpadl_id
    assert pair.server.gpadl_state(gpadl_id) is GpadlState.CREATED
    assert len(pair.loop.grants[gpadl_id].ranges[0].pfns) == 64
    assert sum(1 for e in pair.loop.events if e[0] == "to_host" and e[1][0] == 9) == 2  # bodies


def test_pages_the_child_does_not_own_are_refused_by_the_core():
    pair = Pair(pages=8)
    relid = pair.server.offer(OfferSpec(CLASS, uuid.uuid4()))
    pair.client.connect()
    pair.loop.run()
    pair.client.open_channel(relid, [4, 5, 6, 7, 8, 9], 3)  # 8 and 9 are not the child's
    pair.loop.run()
    event = pair.events()[-1]
    assert (event.kind, event.relid, event.status) == (EventKind.OPEN_FAILED, relid,
                                                       p.STATUS_UNSUCCESSFUL)
    assert pair.loop.grants == {} and pair.server.channel_state(relid) is ChannelState.OFFERED


def test_device_refusing_a_scattered_ring_fails_the_open_and_frees_the_gpadl():
    pair = Pair()
    relid = pair.server.offer(OfferSpec(CLASS, uuid.uuid4()))
    pair.client.connect()
    pair.loop.run()
    pair.client.open_channel(relid, [1, 2, 3, 7], 2)  # not contiguous: the loopback cannot map it
    pair.loop.run()
    assert pair.events()[-1].kind is EventKind.OPEN_FAILED
    assert pair.loop.grants == {} and pair.client.gpadls == {}
    assert pair.ignored() == []


def test_older_version_negotiated_when_the_server_is_older():
    pair = Pair()
    pair.server.versions = frozenset([p.VERSION_WIN8_1])
    pair.client.connect()
    pair.loop.run()
    assert pair.client.version == pair.server.version == p.VERSION_WIN8_1
    sent = [p.decode(e[1]) for e in pair.loop.events if e[0] == "to_host"]
    assert [m.version_requested for m in sent if isinstance(m, p.InitiateContact)] == list(
        p.SUPPORTED_VERSIONS[:7])


# -- random operations on both sides -------------------------------------------------------------

ops = st.lists(st.tuples(
    st.sampled_from(["offer", "rescind", "open", "close", "gpadl", "teardown", "unload",
                     "connect", "send"]),
    st.integers(1, 3)), min_size=10, max_size=40)


@settings(max_examples=150, deadline=None)
@given(ops)
def test_random_operations_keep_both_sides_in_agreement(steps):
    pair = Pair(pages=512)
    for instances in (1, 2):
        pair.server.offer(OfferSpec(CLASS, uuid.UUID(int=instances)))
    pair.client.connect()
    pair.loop.run()
    for op, relid in steps:
        try:
            if op == "offer":
                instances += 1
                pair.server.offer(OfferSpec(CLASS, uuid.UUID(int=instances)))
            elif op == "rescind":
                pair.server.rescind(relid)
            elif op == "open":
                if pair.client.channels.get(relid) and pair.client.channels[relid].state is ClientChannelState.OFFERED:
                    pfns, offset = pair.loop.alloc_ring(2, 2)
                    pair.client.open_channel(relid, pfns, offset)
            elif op == "close":
                pair.client.close_channel(relid)
            elif op == "gpadl":
                pair.client.create_gpadl(relid, [GpaRange(5000, 100, (relid, relid + 1))])
            elif op == "teardown":
                extra = [i for i, g in pair.client.gpadls.items() if g.relid == relid and not g.ring]
                if extra:
                    pair.client.teardown_gpadl(relid, extra[0])
            elif op == "unload":
                pair.client.unload()
            elif op == "connect":
                pair.client.connect()
            elif relid in pair.loop.host_ends:
                pair.loop.host_ends[relid].send(b"ping")
                assert pair.loop.guest_end(relid).receive()[0].payload[:4] == b"ping"
        except (ValueError, MemoryError):
            continue  # a call this side refuses in its current state
        pair.loop.run()
        agree(pair)
    assert pair.ignored() == []


def agree(pair: Pair) -> None:
    c, s = pair.client, pair.server
    expected = {ClientState.DISCONNECTED: ServerState.DISCONNECTED,
                ClientState.CONNECTED: ServerState.OFFERS_DELIVERED}
    assert expected[c.state] is s.state
    if c.state is ClientState.CONNECTED:
        assert sorted(c.channels) == s.relids
    for relid, ch in c.channels.items():
        assert ch.state.value == s.channel_state(relid).value  # offered / open
    assert set(c.gpadls) == set(pair.loop.grants) == {i for i in pair.loop.grants
                                                      if s.gpadl_state(i) is GpadlState.CREATED}
    assert set(pair.loop.host_ends) == {r for r in s.relids if s.channel_state(r) is ChannelState.OPEN}
