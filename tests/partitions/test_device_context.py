"""The timer queue behind every VMBus endpoint's device context: (due, arming) order, and groups
held while their VM is Saved (time stands still for them) and released with the time they had."""
from partitions.device_context import EndpointContext, TimerQueue


class Clock:
    def __init__(self):
        self.now = 0


def test_timers_run_in_due_then_arming_order():
    clock, ran = Clock(), []
    q = TimerQueue(clock)
    for name, delay in (("b", 5), ("a", 3), ("c", 5), ("d", 0)):
        q.add(delay, lambda name=name: ran.append(name))
    assert q.next_timeout() == 1          # due now: the loop comes back at once
    clock.now = 5
    assert q.run_due() and ran == ["d", "a", "b", "c"]
    assert q.next_timeout() is None and not q.run_due()


def test_a_held_group_stands_still_and_comes_back_with_the_time_it_had_left():
    clock, ran = Clock(), []
    q = TimerQueue(clock)
    q.add(10, lambda: ran.append(("vm", clock.now)), group="vm")
    q.add(20, lambda: ran.append(("other", clock.now)), group="other")
    clock.now = 4
    q.hold("vm")
    assert q.held("vm")
    q.add(3, lambda: ran.append(("vm armed while held", clock.now)), group="vm")
    clock.now = 100
    q.run_due()
    assert ran == [("other", 100)]         # the other group's time went on
    q.release("vm")
    assert q.next_timeout() == 3
    clock.now = 103
    q.run_due()
    clock.now = 106
    q.run_due()
    assert ran[1:] == [("vm armed while held", 103), ("vm", 106)]


def test_a_dropped_group_never_runs_held_or_not():
    clock, ran = Clock(), []
    q = TimerQueue(clock)
    q.add(1, lambda: ran.append(1), group="gone")
    q.hold("gone")
    q.add(1, lambda: ran.append(2), group="gone")
    q.release("gone")
    q.add(2, lambda: ran.append(3), group="gone")
    q.drop("gone")
    clock.now = 10
    assert not q.run_due() and ran == []


def test_contexts_sharing_a_queue_arm_in_their_own_group():
    clock, ran = Clock(), []
    q = TimerQueue(clock)
    a = EndpointContext(clock, lambda *_: None, timers=q, group="a")
    b = EndpointContext(clock, lambda *_: None, timers=q, group="b")
    a.call_later(1, lambda: ran.append("a"))
    b.call_later(1, lambda: ran.append("b"))
    q.hold("a")
    clock.now = 1
    assert b.run_due() and ran == ["b"]    # one queue: any context's loop runs what is due
    q.release("a")
    clock.now = 2
    a.run_due()
    assert ran == ["b", "a"]
