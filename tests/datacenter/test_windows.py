"""The window protocol: windows never longer than the smallest link latency, every message
delivered exactly at its arrival time and never in its receiver's past, none lost, the same
outcome on every run; and the protocol's invariant is checked, not assumed."""
import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from partitions.config_schema import MIB, Config, DatacenterConfig, DatacenterHostConfig, HostConfig, LinkConfig
from partitions.datacenter import MAX_WINDOW_NS, Datacenter, Message, transmission_ns

US = 1_000


def datacenter(tmp_path, hosts, links, seed=0):
    config = DatacenterConfig(tuple(DatacenterHostConfig(n, Config(HostConfig(logical_processors=1, memory=64 * MIB)))
                                    for n in hosts), tuple(links), seed=seed)
    return Datacenter(config, workdir=tmp_path)


@st.composite
def scenarios(draw):
    names = [f"h{i}" for i in range(draw(st.integers(2, 4)))]
    pairs = draw(st.lists(st.sampled_from(list(itertools.combinations(names, 2))), min_size=1, unique=True))
    links = [LinkConfig(pair, draw(st.integers(10**8, 10**11)), draw(st.integers(20, 3000)) * US) for pair in pairs]
    # (when, link, direction, size, hops): a message sent between windows at `when`; its receiver
    # answers it `hops` times back and forth, from inside windows, at arrival times.
    sends = draw(st.lists(st.tuples(st.integers(0, 3000 * US), st.integers(0, len(links) - 1), st.booleans(),
                                    st.integers(0, 10**5), st.integers(0, 2)), max_size=10))
    return names, links, sorted(sends)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(scenario=scenarios())
def test_windows_are_short_enough_and_deliveries_exact(tmp_path, scenario):
    names, links, sends = scenario
    dc = datacenter(tmp_path, names, links)
    smallest = min(link.latency for link in links)
    assert dc.window_ns == min(smallest, MAX_WINDOW_NS)
    delivered: list[tuple[Message, int]] = []

    def receive(node):
        def handler(m: Message) -> None:
            delivered.append((m, node.now))
            hops = int.from_bytes(m.payload[:1] or b"\0", "little")
            if hops:
                node.send(m.src, "data", bytes([hops - 1]), size=m.size)   # answer from inside the window
        return handler

    for node in dc.hosts.values():
        node.handle("data", receive(node))
    ends = [0]
    sent = []

    def window(d):
        assert 0 < d.now - ends[-1] <= smallest            # never longer than the smallest latency
        ends.append(d.now)
        # Between windows every host stands at the window's end: the seam's synchronisation point.
        assert all(node.now == d.now for node in d.hosts.values())

    for when, index, backwards, size, hops in sends:
        dc.run(when, on_progress=window)
        a, b = links[index].hosts
        src, dst = (b, a) if backwards else (a, b)
        sent.append(dc.send(src, dst, "data", bytes([hops]), size=max(size, 1)))
    expected = sum(hops + 1 for *_, hops in sends)
    while len(delivered) < expected and dc.now < 1_000_000 * US:   # a second: far more than the sends need
        dc.run(dc.now + 1000 * US, on_progress=window)
    # Every message, and every answer, delivered once, exactly at its arrival, never before it
    # was sent plus the link's latency.
    assert len(delivered) == expected
    assert len({id(m) for m, _ in delivered}) == len(delivered)
    for m, at in delivered:
        link = dc.link(m.src, m.dst)
        assert at == m.arrival_ns == m.start_ns + transmission_ns(m.size, link.bandwidth) + link.latency
        assert m.start_ns >= m.sent_ns and m.arrival_ns >= m.sent_ns + link.latency
    assert all(node.pending() == 0 for node in dc.hosts.values())
    assert {id(m) for m in sent} <= {id(m) for m, _ in delivered}
    dc.close()


def test_a_message_in_the_receivers_past_is_refused(tmp_path):
    dc = datacenter(tmp_path, ["a", "b"], [LinkConfig(("a", "b"), 10**9, 100 * US)])
    dc.run(300 * US)
    late = Message("a", "b", "data", b"", 1, 0, 0, start_ns=0, arrival_ns=200 * US)
    with pytest.raises(AssertionError, match="window protocol broken"):
        dc.hosts["b"].accept([late])
    dc.close()


def test_a_window_longer_than_a_latency_would_deliver_in_the_past_and_is_caught(tmp_path):
    # What the window bound buys: with windows twice the latency, a message sent early in a
    # window arrives before the window's end, where its receiver already is.
    dc = datacenter(tmp_path, ["a", "b"], [LinkConfig(("a", "b"), 10**9, 100 * US)])
    dc.window_ns = 200 * US
    dc.hosts["b"].handle("data", lambda m: None)
    dc.send("a", "b", "data", b"x")
    with pytest.raises(AssertionError, match="window protocol broken"):
        dc.run(1000 * US)
    dc.close()


def test_messages_only_travel_on_links(tmp_path):
    dc = datacenter(tmp_path, ["a", "b", "c"], [LinkConfig(("a", "b"), 10**9, 100 * US)])
    with pytest.raises(LookupError, match="no link to 'c'"):
        dc.send("a", "c", "data")
    with pytest.raises(TypeError):
        dc.send("a", "b", "data", "text")
    with pytest.raises(ValueError):
        dc.send("a", "b", "data", b"1234", size=3)
    assert dc.window_ns == 100 * US
    dc.close()


def test_an_unhandled_message_is_counted(tmp_path):
    dc = datacenter(tmp_path, ["a", "b"], [LinkConfig(("a", "b"), 10**9, 100 * US)])
    dc.send("a", "b", "nobody", b"x")
    dc.run(1000 * US)
    s = dc.summary()
    assert s["hosts"]["b"]["messages"] == {"sent": 0, "delivered": 1, "unhandled": 1, "pending": 0}
    assert s["links"][0]["directions"][0]["messages"] == 1
    dc.close()


def test_without_links_a_window_is_the_progress_step(tmp_path):
    dc = datacenter(tmp_path, ["a", "b"], [])
    dc.run("1s")
    assert (dc.window_ns, dc.windows) == (MAX_WINDOW_NS, 10)
    dc.close()


def test_each_host_logs_with_its_name_and_its_own_time(tmp_path):
    from partitions.eventlog import EventLog
    built = []
    log = EventLog(None, lambda: built[0].clock() if built else 0)
    config = DatacenterConfig(tuple(DatacenterHostConfig(n, Config(HostConfig(logical_processors=1, memory=64 * MIB)))
                                    for n in ("a", "b")), (LinkConfig(("a", "b"), 10**9, 100 * US),))
    dc = Datacenter(config, workdir=tmp_path, event_log=log)
    built.append(dc)
    dc.hosts["b"].handle("ping", lambda m: None)
    dc.send("a", "b", "ping", b"x" * 125, size=125)          # 1 us at 1 Gbit/s
    dc.send("a", "b", "other", b"")
    dc.run(1000 * US)
    messages = [e for e in log.records() if e["event"] == "link.message"]
    assert messages == [
        {"event": "link.message", "host": "b", "t_ns": 101 * US, "src": "a", "kind": "ping", "size": 125,
         "sent_ns": 0, "handled": True},
        {"event": "link.message", "host": "b", "t_ns": 101 * US, "src": "a", "kind": "other", "size": 0,
         "sent_ns": 0, "handled": False}]
    dc.close()
