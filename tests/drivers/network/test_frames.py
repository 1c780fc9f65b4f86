"""Ethernet and 802.1Q frames: building, tagging, parsing."""
import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.network import frames

macs = st.binary(min_size=6, max_size=6)


def test_mac_addresses_parse_and_print():
    assert frames.mac_bytes("02:00:5E:10:00:01") == bytes.fromhex("02005e100001")
    assert frames.mac_bytes("02-00-5e-10-00-01") == bytes.fromhex("02005e100001")
    assert frames.mac_text(bytes.fromhex("02005e100001")) == "02:00:5e:10:00:01"
    for bad in ("02:00:5e:10:00", "02:00:5e:10:00:0g", "0200.5e10.0001", b"\x02" * 5):
        with pytest.raises(ValueError):
            frames.mac_bytes(bad)
    assert frames.is_group(frames.BROADCAST) and not frames.is_group(frames.mac_bytes("02:00:00:00:00:01"))


def test_short_frames_are_padded_before_tagging():
    frame = frames.build(frames.BROADCAST, b"\x02" * 6, 0x0806, b"x")
    assert len(frame) == frames.MIN_FRAME
    assert len(frames.build(frames.BROADCAST, b"\x02" * 6, 0x0806, b"x", vlan=5)) == frames.MIN_FRAME + 4
    with pytest.raises(ValueError):
        frames.tag(frame, 4095)


@given(macs, macs, st.integers(0x0600, 0xFFFF).filter(lambda t: t != frames.TPID_8021Q),
       st.binary(max_size=100), st.one_of(st.none(), st.integers(0, 4094)), st.integers(0, 15))
def test_build_then_parse_gives_the_fields_back(dst, src, ethertype, payload, vlan, priority):
    frame = frames.build(dst, src, ethertype, payload, vlan=vlan, priority=priority if vlan is not None else 0)
    parsed = frames.parse(frame)
    assert (parsed.dst, parsed.src, parsed.ethertype, parsed.vlan) == (dst, src, ethertype, vlan)
    assert parsed.payload[:len(payload)] == payload and set(parsed.payload[len(payload):]) <= {0}
    assert parsed.priority == (priority if vlan is not None else 0)
    untagged_vlan, untagged_priority, inner = frames.untag(frame)
    assert untagged_vlan == vlan and frames.parse(inner).vlan is None
    if vlan is not None:
        assert frames.tag(inner, vlan, priority) == frame


@given(st.binary(max_size=40))
def test_parse_takes_any_bytes_or_says_why_not(blob):
    try:
        parsed = frames.parse(blob)
    except frames.FrameError:
        assert len(blob) < 18
        return
    assert len(blob) >= 14 and parsed.dst == blob[:6]
