"""The Chrome/Perfetto trace: one thread per LP whose slices never overlap and are all closed by
the end of the run, timestamps in order, VMBus messages as instants; impossible schedules are
refused."""
import io
import json
from collections import defaultdict

import pytest
from hypothesis import given
from hypothesis import strategies as st

from partitions import perfetto
from partitions.perfetto import RUN, STOP, Instant, Sched, TraceError


def ns(us: float) -> int:
    return round(us * 1000)


def check(trace: dict, end_ns: int) -> dict[tuple[int, int], list[tuple[int, int, str]]]:
    """Validate the document's structure; return each thread's slices as (start, end, name) in ns."""
    json.loads(json.dumps(trace))  # plain JSON all the way down
    events = trace["traceEvents"]
    named = {(e["pid"], e["tid"]) for e in events if e["ph"] == "M" and e["name"] == "thread_name"}
    slices: dict[tuple[int, int], list[tuple[int, int, str]]] = defaultdict(list)
    last_instant = -1
    for e in events:
        assert e["ph"] in ("M", "X", "i")
        assert isinstance(e["pid"], int) and isinstance(e["tid"], int) and e["name"]
        if e["ph"] == "X":
            assert (e["pid"], e["tid"]) in named
            assert e["dur"] >= 0
            slices[(e["pid"], e["tid"])].append((ns(e["ts"]), ns(e["ts"] + e["dur"]), e["name"]))
        elif e["ph"] == "i":
            assert e["s"] == "t" and (e["pid"], e["tid"]) in named
            assert ns(e["ts"]) >= last_instant
            last_instant = ns(e["ts"])
    for thread in slices.values():
        for (start, stop, _), (next_start, _, _) in zip(thread, thread[1:]):
            assert start <= next_start          # monotonic per thread
            assert stop <= next_start           # no overlap on one LP
        assert all(stop <= end_ns for _, stop, _ in thread)   # closed by the end of the run
    return slices


def test_a_small_schedule():
    records = [(0, 0, 1, 0, RUN), (0, 1, 1, 1, RUN), (1_500, 0, 1, 0, STOP), (2_000, 0, 2, 0, RUN),
               (3_000, 1, 1, 1, STOP)]
    trace = perfetto.build(records, [Instant(1_000, "post_message", {"port": 3})], end_ns=5_000,
                           partition_names={1: "vm1", 2: "vm2"}, logical_processors=3)
    slices = check(trace, 5_000)
    lp0, lp1 = slices[(perfetto.HOST_PID, 1)], slices[(perfetto.HOST_PID, 2)]
    assert lp0 == [(0, 1_500, "vm1/vp0"), (2_000, 5_000, "vm2/vp0")]
    assert lp1 == [(0, 3_000, "vm1/vp1")]
    threads = {e["args"]["name"] for e in trace["traceEvents"] if e["name"] == "thread_name"}
    assert threads == {"LP 0", "LP 1", "LP 2", "messages"}  # the idle LP 2 too
    (closed,) = [e for e in trace["traceEvents"] if e["args"].get("closed_at_end")]
    assert closed["name"] == "vm2/vp0" and closed["ts"] + closed["dur"] == 5.0
    (msg,) = [e for e in trace["traceEvents"] if e["ph"] == "i"]
    assert msg == {"ph": "i", "s": "t", "name": "post_message", "cat": "vmbus", "pid": perfetto.VMBUS_PID,
                   "tid": perfetto.VMBUS_TID, "ts": 1.0, "args": {"port": 3}}


def test_a_run_while_another_vp_runs_is_a_switch():
    trace = perfetto.build([Sched(0, 0, 1, 0, RUN), Sched(700, 0, 1, 1, RUN), Sched(900, 0, 1, 1, STOP)])
    assert check(trace, 900)[(perfetto.HOST_PID, 1)] == [(0, 700, "partition1/vp0"), (700, 900, "partition1/vp1")]


def test_the_end_defaults_to_the_last_record():
    trace = perfetto.build([Sched(10, 0, 1, 0, RUN)], [Instant(250, "signal_event")])
    assert check(trace, 250)[(perfetto.HOST_PID, 1)] == [(10, 250, "partition1/vp0")]
    assert trace["otherData"]["end_ns"] == 250


@pytest.mark.parametrize("records, kwargs, message", [
    ([Sched(0, 0, 1, 0, STOP)], {}, "not running"),
    ([Sched(0, 0, 1, 0, RUN), Sched(5, 0, 1, 1, STOP)], {}, "not running"),
    ([Sched(0, 0, 1, 0, RUN), Sched(5, 0, 1, 0, RUN)], {}, "already running"),
    ([Sched(9, 0, 1, 0, RUN), Sched(5, 0, 1, 0, STOP)], {}, "back in time"),
    ([Sched(0, 0, 1, 0, "sleep")], {}, "kind"),
    ([Sched(0, 4, 1, 0, RUN)], {"logical_processors": 4}, "4 logical processors"),
    ([Sched(-1, 0, 1, 0, RUN)], {}, "negative"),
    ([Sched(100, 0, 1, 0, RUN)], {"end_ns": 50}, "before the last record"),
])
def test_impossible_schedules_are_refused(records, kwargs, message):
    with pytest.raises(TraceError, match=message):
        perfetto.build(records, **kwargs)


def test_write_to_a_path_or_a_file(tmp_path):
    trace = perfetto.build([Sched(0, 0, 1, 0, RUN)], end_ns=1_000)
    perfetto.write(tmp_path / "trace.json", trace)
    assert json.loads((tmp_path / "trace.json").read_text()) == trace
    buffer = io.StringIO()
    perfetto.write(buffer, trace)
    assert json.loads(buffer.getvalue()) == trace


# A schedule per LP: (idle gap, VP, run time, whether the stop is recorded) steps. A step without
# its stop runs until the next step's run (a switch) or, for the last, until the end of the run.
STEPS = st.lists(st.tuples(st.integers(0, 5_000), st.integers(0, 3), st.integers(0, 5_000), st.booleans()),
                 max_size=12)
NAMES = {1: "vm1", 2: "vm2"}


def _name(vp: int) -> str:
    return f"{NAMES[1 + vp % 2]}/vp{vp}"


@given(schedules=st.lists(STEPS, min_size=1, max_size=4), tail=st.integers(0, 1_000))
def test_any_schedule_becomes_closed_non_overlapping_slices(schedules, tail):
    records, expected, still_running = [], {}, {}
    for lp, steps in enumerate(schedules):
        t, running, model = 0, None, []   # running: (start, vp) of a VP whose stop is not recorded
        for gap, vp, length, stopped in steps:
            if running is not None and running[1] == vp:
                vp = (vp + 1) % 4  # a VP cannot start again on the LP it is still running on
            start = t + gap
            if running is not None:
                model.append((running[0], start, _name(running[1])))
            records.append(Sched(start, lp, 1 + vp % 2, vp, RUN))
            t = start + length
            if stopped:
                records.append(Sched(t, lp, 1 + vp % 2, vp, STOP))
                model.append((start, t, _name(vp)))
                running = None
            else:
                running = (start, vp)
        expected[lp], still_running[lp] = model, running
    records.sort(key=lambda r: r.time_ns)  # interleave the LPs (stable: each LP keeps its order)
    end = max((r.time_ns for r in records), default=0) + tail
    for lp, running in still_running.items():
        if running is not None:
            expected[lp].append((running[0], end, _name(running[1])))

    trace = perfetto.build(records, end_ns=end, partition_names=NAMES, logical_processors=len(schedules))
    slices = check(trace, end)
    for lp in range(len(schedules)):
        assert slices.get((perfetto.HOST_PID, perfetto.lp_tid(lp)), []) == expected[lp]
