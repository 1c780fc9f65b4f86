"""The VMBus strategies of the test kit, used the way a user fuzzes a device."""
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.example import DEVICE as ECHO
from hypervisor.testing.vmbus_strategies import (control_messages, device_packets, fuzz_vsp,
                                                 ring_images)
from vmbus import protocol
from vmbus.ring import IncomingRing, RingError
from vmbus.server import ChannelManager


@settings(max_examples=150, deadline=None)
@given(ring_images())
def test_a_reader_of_any_ring_state_raises_only_ring_errors(buf):
    ring = IncomingRing(buf)
    try:
        for _ in range(20):
            if ring.read() is None:
                break
        ring.commit()
    except RingError:
        pass


@settings(max_examples=150, deadline=None)
@given(st.lists(control_messages(), max_size=12))
def test_the_server_takes_any_message_sequence(raws):
    class Quiet:
        def __getattr__(self, name):
            return lambda *a, **k: 0 if name == "create_gpadl" else (True if name == "connect" else None)
    manager = ChannelManager(Quiet())
    for raw in raws:
        manager.handle_message(raw)  # never raises


@settings(max_examples=100, deadline=None)
@given(control_messages(valid_only=True))
def test_valid_only_messages_decode(raw):
    protocol.decode(raw)


@settings(max_examples=100, deadline=None)
@given(st.lists(device_packets(), max_size=10))
def test_the_echo_vsp_survives_hostile_packets(packets):
    vsp, replies = fuzz_vsp(ECHO, packets)
    assert vsp.echoed + vsp.rejected <= len(packets)
    assert len(replies) == len(packets)  # every request, good or bad, gets exactly one answer
