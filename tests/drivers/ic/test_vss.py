"""The VSS IC: FREEZE -> point -> THAW; a refusing guest fails the backup; the guest never stays
frozen."""
from drivers.ic import VSS
from drivers.ic import framing as f

from tests.drivers.ic.harness import S, connect, hostile_guest


def steps(vsp):
    return [step for _, step in vsp.history]


def test_a_backup_freezes_takes_the_point_and_thaws():
    states = []
    pair = connect(VSS, guest={"freeze": lambda: states.append("freeze") or True,
                               "thaw": lambda: states.append("thaw")})
    backup = pair.vsp.backup(lambda: ("point", pair.vsc.frozen))
    assert backup.ok and backup.point == ("point", True) and not pair.vsc.frozen
    assert steps(pair.vsp) == ["freeze requested", "frozen", "point taken",
                               "thaw requested", "thawed", "backup done"]
    assert states == ["freeze", "thaw"] and [e for _, e in pair.vsc.events] == ["frozen", "thawed"]


def test_a_guest_that_refuses_to_freeze_fails_the_backup_and_no_point_is_taken():
    taken = []
    pair = connect(VSS, guest={"freeze": lambda: False})
    done = []
    backup = pair.vsp.backup(lambda: taken.append(1), on_done=done.append)
    assert not backup.ok and backup.state == "failed" and "E_FAIL" in backup.error and taken == []
    assert steps(pair.vsp) == ["freeze requested", "freeze refused: E_FAIL", "backup failed"]
    assert done == [backup] and not pair.vsc.frozen


def test_a_freeze_callback_that_raises_is_a_refusal():
    pair = connect(VSS, guest={"freeze": lambda: 1 / 0})
    assert not pair.vsp.backup(lambda: None).ok and not pair.vsc.frozen


def test_the_guest_is_thawed_even_if_taking_the_point_fails():
    pair = connect(VSS)

    def take_point():
        raise OSError("disk gone")

    backup = pair.vsp.backup(take_point)
    assert not backup.ok and "disk gone" in backup.error and not pair.vsc.frozen
    assert steps(pair.vsp)[-3:] == ["thaw requested", "thawed", "backup failed"]


def test_the_guest_thaws_by_itself_if_the_host_never_does():
    pair = connect(VSS, guest={"max_frozen": "3s"})
    assert pair.vsp.freeze().ok and pair.vsc.frozen
    pair.ctx.advance(3 * S)
    assert not pair.vsc.frozen and pair.vsc.events[-1] == (3 * S, "auto-thawed")
    assert pair.vsp.thaw().ok                                 # a late thaw is harmless


def test_an_early_freeze_timer_does_not_thaw_a_later_freeze():
    pair = connect(VSS, guest={"max_frozen": "3s"})
    pair.vsp.freeze(), pair.vsp.thaw()
    pair.ctx.advance(2 * S)
    pair.vsp.freeze()
    pair.ctx.advance(2 * S)                                   # the first freeze's timer fires here
    assert pair.vsc.frozen


def test_one_backup_at_a_time():
    vsp, guest_end, sent = hostile_guest(VSS)                 # nobody answers: the first stays pending
    first = vsp.backup(lambda: None)
    second = vsp.backup(lambda: None)
    assert not first.done and second.error == "a backup is already running"


def test_a_guest_without_freeze_support_fails_the_backup_without_asking():
    pair = connect(VSS, host={"versions": ["4.0"]}, guest={"versions": ["4.0"]})
    assert pair.vsp.version == f.Version(4, 0)
    backup = pair.vsp.backup(lambda: None)
    assert backup.error == "VSS 4.0 has no freeze" and not pair.vsc.frozen
