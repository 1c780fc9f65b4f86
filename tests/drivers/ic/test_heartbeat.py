"""The heartbeat IC: beats every period, status no contact -> ok -> lost contact and back."""
from drivers.ic import HEARTBEAT
from drivers.ic.heartbeat import protocol as p
from drivers.ic.heartbeat.vsp import HeartbeatStatus

from tests.drivers.ic.harness import MS, S, connect


def test_beats_every_period_and_the_guest_answers_sequence_plus_one():
    pair = connect(HEARTBEAT)
    assert pair.vsp.status is HeartbeatStatus.OK and pair.vsp.sequence == 1   # the first beat goes at once
    pair.ctx.advance(10 * S)
    assert pair.vsp.sequence == 6 == pair.vsc.beats
    assert pair.vsp.last_answer == 10 * S and pair.vsp.application_state == p.HEALTHY
    assert pair.vsp.rejected == pair.vsc.rejected == 0


def test_no_contact_until_the_first_answer():
    pair = connect(HEARTBEAT, open=False)
    assert pair.vsp.status is HeartbeatStatus.NO_CONTACT


def test_a_hung_guest_is_lost_after_lost_after_periods_then_found_again():
    pair = connect(HEARTBEAT, host={"period": "1s", "lost_after": 3})
    pair.ctx.advance(5 * S)
    pair.vsc.hang()
    pair.ctx.advance(3 * S)
    assert pair.vsp.status is HeartbeatStatus.OK          # exactly 3 periods: not yet
    pair.ctx.advance(1 * MS)
    assert pair.vsp.status is HeartbeatStatus.LOST_CONTACT
    pair.ctx.advance(10 * S)
    assert pair.vsc.ignored >= 10 and pair.vsp._inflight is not None   # one beat at a time, no backlog
    assert len(pair.vsp._queue) == 0
    pair.vsc.resume()
    pair.ctx.advance(1 * S)
    assert pair.vsp.status is HeartbeatStatus.OK
    changes = [e[2]["status"] for e in pair.ctx.events if e[1] == "status"]
    assert changes == ["ok", "lost contact", "ok"]


def test_a_guest_that_never_answers_stays_no_contact():
    pair = connect(HEARTBEAT, guest={"answer": False})
    pair.ctx.advance(30 * S)
    assert pair.vsp.status is HeartbeatStatus.NO_CONTACT


def test_the_guest_reports_its_application_state():
    pair = connect(HEARTBEAT, guest={"application_state": p.CRITICAL})
    assert pair.vsp.application_state == p.CRITICAL


def test_the_body_layout():
    # Linux's struct heartbeat_msg_data: seq_num u64 + reserved u32[8] = 40 bytes.
    assert p.message(7, p.HEALTHY) == (7).to_bytes(8, "little") + (1).to_bytes(4, "little") + bytes(28)
    assert p.parse((9).to_bytes(8, "little")) == (9, p.UNKNOWN)   # Linux reads only the sequence


def test_a_linux_style_short_heartbeat_is_answered_and_a_shorter_one_refused():
    """The guest's answer path reads the sequence itself: an 8-byte body (only the sequence, as
    Linux sends it) is answered with sequence + 1; a 7-byte one is malformed (E_FAIL)."""
    from drivers.ic import framing as f
    pair = connect(HEARTBEAT)
    vsc = pair.vsc
    status, body, _ = vsc.handle((2**64 - 1).to_bytes(8, "little"))
    assert status == f.HV_S_OK and p.parse(body) == (0, vsc.state)   # the sequence wraps
    try:
        vsc.handle(bytes(7))
    except f.IcError as exc:
        assert "8-byte sequence" in str(exc)
    else:
        raise AssertionError("a 7-byte heartbeat was answered")
