"""Version negotiation, for each of the five ICs, over an in-process channel."""
import pytest

from drivers.ic import DEVICES, HEARTBEAT, KVP
from drivers.ic import framing as f
from drivers.ic.vsp import Negotiation
from drivers.registry import discover

from tests.drivers.ic.harness import S, answer, connect, hostile_guest, hostile_host, negotiate

V = f.Version
EXPECTED = {"heartbeat": (V(3, 0), V(3, 0)), "shutdown": (V(3, 0), V(3, 2)), "timesync": (V(3, 0), V(4, 0)),
            "kvp": (V(3, 0), V(4, 0)), "vss": (V(3, 0), V(5, 0))}
# One service request per IC, to see what happens to requests after a failed negotiation.
ASK = {"heartbeat": lambda vsp: vsp._submit(f.HEARTBEAT, bytes(16)),
       "shutdown": lambda vsp: vsp.request_shutdown(), "timesync": lambda vsp: vsp.resync(),
       "kvp": lambda vsp: vsp.get(0, "k"), "vss": lambda vsp: vsp.freeze()}
by_name = pytest.mark.parametrize("device", DEVICES, ids=lambda d: d.name)


def test_all_five_are_registered_with_their_hyperv_class_ids():
    registry = discover()
    ids = {"heartbeat": "57164f39-9115-4e78-ab55-382f3bd5422d",
           "shutdown": "0e0b6031-5213-4934-818b-38d90ced39db",
           "timesync": "9527e630-d0ae-497b-adce-e80ab0175caf",
           "kvp": "a9a0f4e7-5a45-4d96-b827-8a841e8c03e6",
           "vss": "35fa2e29-ea23-4236-96ae-3a6ebacba440"}
    for device in DEVICES:
        assert registry[device.name] is device and str(device.class_id) == ids[device.name]
    assert registry.errors == []


@by_name
def test_both_sides_agree_on_the_versions_linux_would_pick(device):
    pair = connect(device)
    assert pair.vsp.negotiation is Negotiation.DONE
    agreed = EXPECTED[device.name]
    assert (pair.vsp.framework, pair.vsp.version) == agreed == (pair.vsc.framework, pair.vsc.version)
    assert pair.vsp.rejected == pair.vsc.rejected == 0


@by_name
@pytest.mark.parametrize("guest", [{"versions": ["9.9"]}, {"frameworks": ["2.0"]}],
                         ids=["service", "framework"])
def test_no_common_version_fails_negotiation_and_every_request(device, guest):
    pair = connect(device, guest=guest)
    assert pair.vsp.negotiation is Negotiation.FAILED and pair.vsp.version is None
    assert pair.vsc.version is None and pair.vsc.framework is None
    ex = ASK[device.name](pair.vsp)
    assert ex.done and ex.error == "not negotiated"
    assert pair.vsp.rejected == pair.vsc.rejected == 0   # nothing reached the guest after that


@by_name
def test_a_guest_without_a_common_version_answers_counts_0_0(device):
    vsc, host_end, sent = hostile_host(device)
    header, body = negotiate(host_end, sent, ["3.0"], ["0.1"])
    assert header.flags == f.TRANSACTION | f.RESPONSE and header.status == f.HV_S_OK
    assert f.parse_negotiate(body) == ((), ())
    assert vsc.version is None


def test_the_guest_takes_the_old_framework_when_the_host_has_only_that():
    pair = connect(KVP, host={"frameworks": ["1.0"], "versions": ["3.0"]})
    assert (pair.vsp.framework, pair.vsp.version) == (V(1, 0), V(3, 0))
    assert pair.vsp.set(0, "k", "v").ok  # requests carry the negotiated versions


def test_an_unanswered_negotiation_times_out():
    pair = connect(HEARTBEAT, host={"timeout": "1s"}, guest={"answer": False})
    assert pair.vsp.negotiation is Negotiation.PENDING
    pair.ctx.advance(1 * S)
    assert pair.vsp.negotiation is Negotiation.FAILED and pair.vsc.ignored == 1
    assert pair.vsp.status.value == "no contact"


def test_requests_made_before_negotiation_finishes_wait_for_it():
    vsp, guest_end, sent = hostile_guest(KVP)
    first = vsp.set(0, "a", "1")
    second = vsp.get(0, "a")
    assert len(sent) == 1 and not first.done          # only the negotiation is on the wire
    reply, _ = f.negotiate_reply(f.decode(sent[0].payload)[1], f.FRAMEWORK_VERSIONS, (V(4, 0),))
    guest_end.send(answer(sent[0].payload, reply), trans_id=sent[0].trans_id)
    assert vsp.negotiation is Negotiation.DONE and len(sent) == 2   # one in flight at a time
    assert f.decode(sent[1].payload)[0].version == V(4, 0)


def test_closing_fails_what_is_in_flight_and_queued_and_stops_the_timers():
    vsp, guest_end, sent = hostile_guest(HEARTBEAT)        # the negotiation is never answered
    queued = vsp._submit(f.HEARTBEAT, bytes(16))
    vsp.on_close()
    assert vsp.negotiation is Negotiation.FAILED and queued.error == "channel closed"
    vsp.on_open()                                          # a reopened channel negotiates afresh
    assert vsp.negotiation is Negotiation.PENDING and len(sent) == 2
    pair = connect(HEARTBEAT)
    pair.ctx.advance(4 * S)
    beats = pair.vsc.beats
    pair.vsp.on_close()
    pair.ctx.advance(20 * S)
    assert pair.vsc.beats == beats and pair.vsp._inflight is None
    assert ASK["kvp"](connect(KVP, open=False).vsp).error == "channel not open"
