"""Hostile peers: a guest that answers garbage, a host that sends garbage. Each packet is refused
and counted; nothing raises; the exchange in flight and the service state are untouched."""
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.ic import DEVICES, HEARTBEAT, KVP, TIMESYNC
from drivers.ic import framing as f
from drivers.ic.kvp import protocol as kvp
from drivers.ic.vsp import Negotiation
from hypervisor.testing.vmbus_strategies import device_packets, fuzz_vsp
from vmbus.ring import PKT_COMP

from tests.drivers.ic.harness import S, answer, connect, hostile_guest, hostile_host, negotiate, request

V = f.Version
by_name = pytest.mark.parametrize("device", DEVICES, ids=lambda d: d.name)


def _good_negotiate_answer(payload: bytes) -> bytes:
    header, body = f.decode(payload)
    fws, vers = f.parse_negotiate(body)
    return answer(payload, f.negotiate_reply(body, fws[:1], vers[:1])[0])


def _lying_size(payload: bytes) -> bytes:
    raw = bytearray(_good_negotiate_answer(payload))
    struct.pack_into("<H", raw, 18, 0x3000)               # icmsgsize far past the packet
    return bytes(raw)


def _pipe(payload: bytes, pipe_flags: int = 1, msgsize: int | None = None) -> bytes:
    raw = bytearray(_good_negotiate_answer(payload))
    struct.pack_into("<II", raw, 0, pipe_flags, len(raw) - 8 if msgsize is None else msgsize)
    return bytes(raw)


# (what it is, the payload given the request's payload, ring trans_id offset, packet type)
BAD_ANSWERS = [
    ("short", lambda p: b"\x01" * 12, 0, None),
    ("bad pipe type", lambda p: _pipe(p, pipe_flags=0), 0, None),
    ("pipe size past the packet", lambda p: _pipe(p, msgsize=4000), 0, None),
    ("icmsgsize lying", _lying_size, 0, None),
    ("oversized", lambda p: _pipe(p, msgsize=12_000) + bytes(11_000), 0, None),
    ("unknown type", lambda p: answer(p, msgtype=9), 0, None),
    ("wrong transaction", lambda p: answer(p, trans_id=0x77), 0, None),
    ("unknown ring transaction", _good_negotiate_answer, 5, None),
    ("a request, not an answer", lambda p: answer(p, flags=f.TRANSACTION | f.REQUEST), 0, None),
    ("other versions", lambda p: answer(p, version=V(7, 7)), 0, None),
    ("completion packet", _good_negotiate_answer, 0, PKT_COMP),
    ("unoffered choice", lambda p: answer(p, struct.pack("<HHI4H", 1, 1, 0, 3, 0, 99, 0)), 0, None),
    ("counts 2/1", lambda p: answer(p, struct.pack("<HHI6H", 2, 1, 0, 3, 0, 1, 0, 3, 0)), 0, None),
]


@by_name
def test_malformed_negotiate_answers_are_refused_then_a_good_one_is_taken(device):
    vsp, guest_end, sent = hostile_guest(device)
    (req,) = sent
    for n, (what, make, offset, ptype) in enumerate(BAD_ANSWERS, start=1):
        kw = {"packet_type": ptype} if ptype is not None else {}
        guest_end.send(make(req.payload), trans_id=req.trans_id + offset, **kw)
        assert vsp.rejected == n, what
        assert vsp.negotiation is Negotiation.PENDING and vsp._inflight is not None, what
    guest_end.send(_good_negotiate_answer(req.payload), trans_id=req.trans_id)
    assert vsp.negotiation is Negotiation.DONE and vsp.rejected == len(BAD_ANSWERS)


def test_a_malformed_service_answer_leaves_the_exchange_waiting_until_its_timeout():
    vsp, guest_end, sent = hostile_guest(KVP, {"timeout": "1s"})
    guest_end.send(_good_negotiate_answer(sent[0].payload), trans_id=sent[0].trans_id)
    ex = vsp.get(kvp.POOL_AUTO, "OSName")
    req = sent[-1]
    body = bytearray(f.decode(req.payload)[1])
    struct.pack_into("<I", body, 12, 4000)                # value_size past the 2048-byte field
    guest_end.send(answer(req.payload, bytes(body)), trans_id=req.trans_id)
    struct.pack_into("<I", body, 8, 3)                    # a key size that is odd
    guest_end.send(answer(req.payload, bytes(body)), trans_id=req.trans_id)
    assert vsp.rejected == 2 and not ex.done
    vsp.context.advance(1 * S)
    assert ex.error == "timeout"
    again = vsp.set(0, "k", "v")                          # the VSP still works
    guest_end.send(answer(sent[-1].payload), trans_id=sent[-1].trans_id)
    assert again.ok


def test_a_heartbeat_answered_with_the_wrong_sequence_is_not_contact():
    vsp, guest_end, sent = hostile_guest(HEARTBEAT)
    guest_end.send(_good_negotiate_answer(sent[0].payload), trans_id=sent[0].trans_id)
    beat = sent[-1]
    guest_end.send(answer(beat.payload, struct.pack("<QI4x", 12345, 1)), trans_id=beat.trans_id)
    assert vsp.rejected == 1 and vsp.status.value == "no contact"


@by_name
@settings(max_examples=60, deadline=None)
@given(packets=st.lists(device_packets(max_size=300), max_size=8))
def test_fuzzed_guest_packets_never_raise(device, packets):
    vsp, _ = fuzz_vsp(device, packets)
    assert vsp.rejected <= len(packets)


@by_name
@settings(max_examples=60, deadline=None)
@given(body=st.binary(max_size=64), status=st.integers(0, 2**32 - 1))
def test_any_answer_to_the_negotiation_leaves_a_consistent_state(device, body, status):
    vsp, guest_end, sent = hostile_guest(device)
    guest_end.send(answer(sent[0].payload, body, status=status), trans_id=sent[0].trans_id)
    if vsp.negotiation is Negotiation.DONE:
        assert vsp.version in vsp.offered and vsp.framework in vsp.frameworks
    else:
        assert vsp.version is None
    assert vsp.negotiation is not Negotiation.PENDING or vsp.rejected == 1


# ---- a hostile host ------------------------------------------------------------------------------

def test_the_guest_refuses_requests_that_do_not_follow_the_negotiation():
    vsc, host_end, sent = hostile_host(KVP)
    body = kvp.request(kvp.KvpMessage(kvp.SET, 0, "k", "v"))
    host_end.send(request(f.KVP_EXCHANGE, body, version=(4, 0)), trans_id=1)    # before negotiating
    negotiate(host_end, sent, ["3.0"], ["4.0"], trans_id=2)
    host_end.send(request(f.KVP_EXCHANGE, body, version=(3, 0)), trans_id=3)    # other version
    host_end.send(request(f.KVP_EXCHANGE, body, version=(4, 0), flags=f.TRANSACTION | f.RESPONSE), trans_id=4)
    host_end.send(request(f.HEARTBEAT, bytes(16), version=(4, 0)), trans_id=5)  # another service's type
    host_end.send(b"\x01" * 7, trans_id=6)
    assert vsc.rejected == 5 and len(sent) == 1 and vsc.pools[0] == {}       # only the negotiation answered
    host_end.send(request(f.KVP_EXCHANGE, body, version=(4, 0)), trans_id=7)
    assert vsc.pools[0] == {"k": "v"} and f.decode(sent[-1].payload)[0].status == f.HV_S_OK


def test_a_well_framed_request_with_a_bad_body_is_answered_with_an_error():
    vsc, host_end, sent = hostile_host(TIMESYNC)
    negotiate(host_end, sent, ["3.0"], ["4.0"])
    clock = vsc.clock_ns()
    host_end.send(request(f.TIMESYNC, b"\x00" * 10, version=(4, 0), trans_id=9), trans_id=9)
    header, _ = f.decode(sent[-1].payload)
    assert header.status == f.HV_E_FAIL and header.trans_id == 9 and sent[-1].trans_id == 9
    assert vsc.rejected == 1 and vsc.clock_ns() == clock and vsc.error_ns() is None


@by_name
@settings(max_examples=60, deadline=None)
@given(bodies=st.lists(st.binary(max_size=3000), max_size=5), msgtype=st.integers(0, 6))
def test_fuzzed_host_requests_never_raise_and_are_answered_or_refused(device, bodies, msgtype):
    vsc, host_end, sent = hostile_host(device)
    header, body = negotiate(host_end, sent, ["3.0"], [str(v) for v in device.vsc.VERSIONS])
    version = f.parse_negotiate(body)[1][0]
    for n, body in enumerate(bodies, start=10):
        host_end.send(request(msgtype, body, version=version, trans_id=n), trans_id=n)
    assert vsc.rejected + len(sent) - 1 >= len(bodies)
    for packet in sent:
        assert f.decode(packet.payload)[0].flags == f.TRANSACTION | f.RESPONSE


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=3000))
def test_kvp_request_parser_raises_only_icerror(body):
    try:
        m = kvp.parse_request(body)
    except f.IcError as exc:
        assert exc.status in (f.HV_E_FAIL, f.HV_INVALIDARG, f.HV_ERROR_NOT_SUPPORTED)
        return
    assert m.pool in kvp.POOLS


def test_guest_answers_reuse_the_request_like_linux():
    """Same header (but flags and status), same body length, same ring transaction id."""
    pair = connect(KVP)
    wire = {"host": [], "guest": []}
    for side, end in (("host", pair.host_end), ("guest", pair.guest_end)):
        def spy(payload, _send=end.send, _log=wire[side], **kw):
            _log.append((f.decode(payload), kw["trans_id"]))
            _send(payload, **kw)
        end.send = spy
    pair.vsp.get(kvp.POOL_AUTO, "OSName")
    ((req, req_body), req_id), ((ans, ans_body), ans_id) = wire["host"][-1], wire["guest"][-1]
    assert ans.flags == f.TRANSACTION | f.RESPONSE and ans.status == f.HV_S_OK and ans_id == req_id
    assert ans._replace(flags=req.flags, status=req.status) == req
    assert len(ans_body) == len(req_body) == kvp.BODY_SIZE[kvp.GET]
