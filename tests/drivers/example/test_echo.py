"""The example device over an in-process channel: negotiation, echoes, hostile packets."""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.example import DEVICE
from drivers.example import protocol as p
from drivers.example.vsc import EchoVsc
from drivers.example.vsp import EchoVsp
from vmbus.channel import connected_pair


def pair():
    host_end, guest_end = connected_pair()
    vsp, vsc = EchoVsp(host_end), EchoVsc(guest_end)
    host_end.on_signal = lambda: vsp.on_packets(host_end.receive())
    guest_end.on_signal = lambda: vsc.on_packets(guest_end.receive())
    return vsp, vsc, host_end, guest_end


def test_negotiates_the_newest_version_and_echoes():
    vsp, vsc, _, _ = pair()
    vsc.on_open()
    assert vsc.version == p.VERSION_2 == vsp.version
    for i in range(20):
        vsc.echo(f"hello {i}".encode())
    assert vsc.replies == [f"hello {i}".encode() for i in range(20)]
    assert vsc.outstanding == {} and vsc.failed == []


def test_falls_back_when_the_newest_version_is_refused(monkeypatch):
    monkeypatch.setattr(p, "VERSIONS", (p.VERSION_1,))  # an older VSP
    vsp, vsc, _, _ = pair()
    vsc._offered = [p.VERSION_2, p.VERSION_1]
    vsc.on_open()
    assert vsc.version == p.VERSION_1


def test_close_fails_outstanding_requests():
    host_end, guest_end = connected_pair()
    vsc = EchoVsc(guest_end)
    vsc.version = p.VERSION_2            # negotiated, but nobody answers
    ids = [vsc.echo(b"x"), vsc.echo(b"y")]
    vsc.on_close()
    assert vsc.failed == [(ids[0], "channel closed"), (ids[1], "channel closed")]


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200), st.integers(0, 2**64 - 1))
def test_hostile_requests_are_refused_and_break_nothing(payload, trans_id):
    vsp, vsc, host_end, guest_end = pair()
    vsc.on_open()
    guest_end.send(payload, trans_id=trans_id)     # a hostile guest writes anything
    vsc.echo(b"still works")
    assert vsc.replies[-1] == b"still works"


def test_the_device_is_registered_through_the_entry_point_group():
    from drivers.registry import discover
    registry = discover()
    assert registry["echo"] is DEVICE
    assert registry.by_class(p.CLASS_ID) is DEVICE
    assert registry.errors == []
