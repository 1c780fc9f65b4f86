"""The IC framing: pipe + icmsg headers, the negotiate message, version choice."""
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.ic import framing as f

V = f.Version

versions_st = st.builds(V, st.integers(0, 0xFFFF), st.integers(0, 0xFFFF))
headers_st = st.builds(f.IcHeader, st.integers(0, 0xFFFF), versions_st, versions_st, st.integers(0, 0xFF),
                       st.sampled_from([1, 3, 5, 0, 2, 4, 7]), st.integers(0, 2**32 - 1))


def test_header_is_28_bytes_laid_out_as_linux():
    header = f.IcHeader(f.KVP_EXCHANGE, V(3, 0), V(4, 0), 7, f.TRANSACTION | f.REQUEST, f.HV_E_FAIL)
    raw = f.encode(header, b"abc")
    assert f.HEADER_SIZE == 28 and len(raw) == 31
    assert struct.unpack_from("<II", raw) == (1, 20 + 3)           # pipe: data, msgsize
    assert struct.unpack_from("<HHHHHHIBBH", raw, 8) == (3, 0, 2, 4, 0, 3, 0x80004005, 7, 3, 0)


@settings(max_examples=200, deadline=None)
@given(headers_st, st.binary(max_size=300), st.integers(0, 7))
def test_encode_decode_round_trip_even_when_padded(header, body, pad):
    raw = f.encode(header, body) + bytes(pad)   # ring payloads come padded with zeros
    assert f.decode(raw) == (header, body)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_decode_raises_only_icerror(data):
    try:
        header, body = f.decode(data)
    except f.IcError:
        return
    assert header.flags & 0xF8 == 0 and len(body) <= len(data) - f.HEADER_SIZE


def _raw(pipe_flags=1, msgsize=None, icmsgsize=4, flags=1, body=b"abcd"):
    msgsize = 20 + len(body) if msgsize is None else msgsize
    return (struct.pack("<II", pipe_flags, msgsize)
            + struct.pack("<HHHHHHIBBH", 3, 0, 1, 3, 0, icmsgsize, 0, 0, flags, 0) + body)


@pytest.mark.parametrize("raw, why", [
    (b"\x01" * 27, "28-byte header"),
    (_raw(pipe_flags=2), "pipe message type"),
    (_raw(msgsize=19), "pipe msgsize"),
    (_raw(msgsize=100), "pipe msgsize"),                 # claims more than the packet holds
    (_raw(icmsgsize=5), "icmsgsize"),                    # icmsgsize lying
    (_raw(icmsgsize=0xFFFF), "icmsgsize"),
    (_raw(flags=0x10), "reserved icflags"),
    (_raw(body=bytes(13312)), "13312"),                  # oversized
])
def test_decode_refuses_malformed_messages(raw, why):
    with pytest.raises(f.IcError, match=why):
        f.decode(raw)


def test_an_icerror_is_a_valueerror_with_a_status():
    assert issubclass(f.IcError, ValueError)
    assert f.IcError("x").status == f.HV_E_FAIL and f.IcError("x", f.HV_INVALIDARG).status == f.HV_INVALIDARG


def test_version_parsing():
    assert V.of("3.0") == V(3, 0) == V.of((3, 0)) and str(V(4, 1)) == "4.1"
    for bad in ("3", "a.b", (70000, 0), "3.0.1"):
        with pytest.raises(ValueError):
            V.of(bad)
    with pytest.raises(ValueError):
        f.versions([])


def test_negotiate_body_layout():
    body = f.negotiate_body((V(3, 0), V(1, 0)), (V(4, 0),))
    assert body == struct.pack("<HHI", 2, 1, 0) + struct.pack("<6H", 3, 0, 1, 0, 4, 0)
    assert f.parse_negotiate(body) == ((V(3, 0), V(1, 0)), (V(4, 0),))


def test_the_guest_preference_order_wins_as_in_linux():
    # The host lists 1.0 first; Linux walks its own list (3.0 first) and takes 3.0.
    chosen = f.choose((V(1, 0), V(3, 0)), (V(3, 0), V(4, 0)), (V(3, 0), V(1, 0)), (V(4, 0), V(3, 0)))
    assert chosen == (V(3, 0), V(4, 0))
    assert f.choose((V(1, 0),), (V(4, 0),), (V(3, 0),), (V(4, 0),)) is None     # no framework
    assert f.choose((V(3, 0),), (V(5, 0),), (V(3, 0),), (V(4, 0),)) is None     # no service version


def test_negotiate_reply_is_counts_1_1_or_0_0_in_16_bytes():
    offer = f.negotiate_body((V(3, 0), V(1, 0)), (V(4, 0), V(3, 0)))
    reply, chosen = f.negotiate_reply(offer, (V(3, 0),), (V(3, 0),))
    assert chosen == (V(3, 0), V(3, 0)) and len(reply) == 16
    assert f.parse_negotiate(reply) == ((V(3, 0),), (V(3, 0),))
    assert f.parse_negotiate_reply(reply, (V(3, 0), V(1, 0)), (V(4, 0), V(3, 0))) == chosen
    reply, chosen = f.negotiate_reply(offer, (V(9, 0),), (V(3, 0),))
    assert chosen is None and len(reply) == 16 and struct.unpack_from("<HH", reply) == (0, 0)
    assert f.parse_negotiate_reply(reply, (V(3, 0),), (V(3, 0),)) is None


@pytest.mark.parametrize("body, why", [
    (b"\x01\x00", "8-byte header"),
    (struct.pack("<HHI", 2, 2, 0) + bytes(12), "do not fit"),
])
def test_parse_negotiate_refuses_short_or_lying_counts(body, why):
    with pytest.raises(f.IcError, match=why):
        f.parse_negotiate(body)


def test_a_negotiate_answer_must_pick_what_was_offered():
    unoffered = struct.pack("<HHI", 1, 1, 0) + struct.pack("<4H", 3, 0, 9, 9)
    with pytest.raises(f.IcError, match="not offered"):
        f.parse_negotiate_reply(unoffered, (V(3, 0),), (V(3, 0),))
    two = f.negotiate_body((V(3, 0), V(1, 0)), (V(3, 0),))
    with pytest.raises(f.IcError, match="counts"):
        f.parse_negotiate_reply(two, (V(3, 0), V(1, 0)), (V(3, 0),))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=80), st.lists(versions_st, min_size=1, max_size=3),
       st.lists(versions_st, min_size=1, max_size=3))
def test_negotiate_parsers_raise_only_icerror(body, fw, ver):
    for parse in (f.parse_negotiate, lambda b: f.negotiate_reply(b, fw, ver),
                  lambda b: f.parse_negotiate_reply(b, fw, ver)):
        try:
            parse(body)
        except f.IcError:
            pass


def test_version_lists_share_the_defaults_and_still_check_what_they_are_given():
    assert f.versions(f.FRAMEWORK_VERSIONS) is f.FRAMEWORK_VERSIONS   # one tuple for every channel
    assert f.versions([(3, 0), "1.0"]) == (V(3, 0), V(1, 0))
    assert all(type(v) is V for v in f.versions(((3, 0), (1, 0))))
    with pytest.raises(ValueError):
        f.versions((V(70000, 0),))
    with pytest.raises(ValueError):
        f.versions(())
