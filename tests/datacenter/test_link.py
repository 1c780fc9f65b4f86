"""A link's FIFO serialisation: one message at a time each way at the link's bandwidth, arriving
the latency after its last bit; the two directions do not wait for each other."""
import pytest
from hypothesis import given
from hypothesis import strategies as st

from partitions.datacenter import Link, Message, transmission_ns

GBIT = 10**9


def message(src, dst, sent, size, seq=0):
    return Message(src, dst, "data", b"", size, sent, seq)


def test_transmission_time_is_size_over_bandwidth_rounded_up():
    assert transmission_ns(125_000, 10 * GBIT) == 100_000          # 1 Mbit at 10 Gbit/s: 100 us
    assert transmission_ns(1500, 10 * GBIT) == 1200                # a full frame: 1.2 us
    assert transmission_ns(1, 3 * GBIT) == 3                       # 8/3 ns: not there before its last bit
    assert transmission_ns(0, GBIT) == 0


def test_a_message_arrives_after_queueing_transmission_and_latency():
    link = Link("a", "b", bandwidth=10 * GBIT, latency=50_000)
    first = message("a", "b", 1_000, 125_000)
    assert link.transmit(first) == 1_000 + 100_000 + 50_000
    # Sent while the first is still on the wire: it waits until the first's last bit is out.
    second = message("a", "b", 30_000, 12_500, seq=1)
    assert link.transmit(second) == 101_000 + 10_000 + 50_000
    assert (second.start_ns, link.traffic["a"].queued_ns) == (101_000, 71_000)
    # Sent after the link went idle: no queueing.
    third = message("a", "b", 500_000, 1250, seq=2)
    assert link.transmit(third) == 500_000 + 1_000 + 50_000 and third.start_ns == 500_000
    # The other direction is free all along (full duplex).
    back = message("b", "a", 30_000, 125_000)
    assert link.transmit(back) == 30_000 + 100_000 + 50_000
    assert (link.traffic["a"].messages, link.traffic["a"].bytes, link.traffic["b"].messages) == (3, 138_750, 1)


def test_a_message_must_travel_on_its_link():
    link = Link("a", "b", GBIT, 1_000)
    with pytest.raises(ValueError):
        link.transmit(message("a", "c", 0, 1))
    with pytest.raises(KeyError):
        link.transmit(message("c", "a", 0, 1))
    with pytest.raises(ValueError):
        Link("a", "a", GBIT, 1_000)
    with pytest.raises(ValueError):
        Link("a", "b", GBIT, 0)


@given(bandwidth=st.integers(1000, 100 * GBIT), latency=st.integers(1, 10**8),
       sends=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 10**7)), min_size=1, max_size=40))
def test_fifo_serialisation(bandwidth, latency, sends):
    link = Link("a", "b", bandwidth, latency)
    sent, messages = 0, []
    for i, (gap, size) in enumerate(sends):
        sent += gap
        m = message("a", "b", sent, size, seq=i)
        link.transmit(m)
        messages.append(m)
    busy = 0
    for before, m in zip([None] + messages, messages):
        tx = transmission_ns(m.size, bandwidth)
        assert tx * bandwidth >= m.size * 8 * 10**9 > (tx - 1) * bandwidth or m.size == 0
        # Starts when sent or when the one before it has left, whichever is later: never both
        # on the wire at once, never idle while a message waits.
        previous_end = before.start_ns + transmission_ns(before.size, bandwidth) if before else 0
        assert m.start_ns == max(m.sent_ns, previous_end)
        assert m.arrival_ns == m.start_ns + tx + latency >= m.sent_ns + latency
        if before is not None:
            assert m.arrival_ns >= before.arrival_ns          # FIFO: no overtaking
        busy += tx
    way = link.traffic["a"]
    assert way.busy_ns == busy and way.busy_until == messages[-1].arrival_ns - latency
    assert way.queued_ns == sum(m.start_ns - m.sent_ns for m in messages)
    assert link.traffic["b"].messages == 0
