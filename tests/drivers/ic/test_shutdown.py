"""The shutdown IC: the host's request reaches the guest's callback; refusals and limits."""
import pytest

from drivers.ic import SHUTDOWN
from drivers.ic import framing as f
from drivers.ic.shutdown import protocol as p

from tests.drivers.ic.harness import connect, hostile_host, negotiate, request


def test_a_shutdown_request_reaches_the_guest_callback_once():
    calls = []
    pair = connect(SHUTDOWN, guest={"on_shutdown": calls.append})
    ex = pair.vsp.request_shutdown(restart=True, message="maintenance ☃", timeout_s=60)
    assert ex.ok and pair.vsp.shutdown_result is ex and calls == [True]
    (req,) = pair.vsc.requests
    assert (req.reason, req.timeout_s, req.restart, req.force, req.message) == \
        (p.REASON_PLANNED, 60, True, False, "maintenance ☃")
    assert pair.vsp.request_shutdown().ok and calls == [True]    # already going down
    assert pair.vsc.stopping == "restart"


def test_a_refusing_guest_answers_e_fail_unless_forced():
    calls = []
    pair = connect(SHUTDOWN, guest={"refuse": True, "on_shutdown": calls.append})
    ex = pair.vsp.request_shutdown()
    assert ex.status == f.HV_E_FAIL and not ex.ok and calls == []
    assert pair.vsp.request_shutdown(force=True).ok and calls == [False]


def test_a_failing_guest_callback_is_logged_not_raised():
    def boom(restart):
        raise RuntimeError("no")

    pair = connect(SHUTDOWN, guest={"on_shutdown": boom})
    assert pair.vsp.request_shutdown().ok
    assert any(e[1] == "ic guest callback failed" for e in pair.ctx.events)


def test_a_message_too_long_is_refused_not_truncated():
    pair = connect(SHUTDOWN)
    pair.vsp.request_shutdown(message="x" * 1023)             # 2046 + 2 bytes: fits exactly
    with pytest.raises(ValueError, match="2048"):
        pair.vsp.request_shutdown(message="x" * 1024)
    assert len(pair.vsc.requests) == 1


@pytest.mark.parametrize("flags, status", [(p.HIBERNATE, f.HV_ERROR_NOT_SUPPORTED), (0x10, f.HV_INVALIDARG)])
def test_hibernation_and_unknown_flags(flags, status):
    vsc, host_end, sent = hostile_host(SHUTDOWN)
    negotiate(host_end, sent, ["3.0"], ["3.2"])
    body = bytearray(p.encode(p.ShutdownRequest(0, 0, False, False, False, "")))
    body[8] = flags
    host_end.send(request(f.SHUTDOWN, bytes(body), version=(3, 2), trans_id=2), trans_id=2)
    assert f.decode(sent[-1].payload)[0].status == status and vsc.stopping is None


def test_an_unterminated_message_is_malformed():
    body = p.encode(p.ShutdownRequest(0, 0, False, False, False, ""))[:12] + b"a\0" * 1024
    with pytest.raises(f.IcError, match="NUL"):
        p.parse(body)
