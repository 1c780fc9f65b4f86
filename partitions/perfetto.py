"""The scheduling trace of a run (`hvsim run --trace FILE`) in the Chrome trace-event JSON format,
which Perfetto (ui.perfetto.dev) and chrome://tracing open.

Two processes: "hvsim host", with one thread per logical processor whose slices show which VP
ran there when (named "vm1/vp0"), and "VMBus", whose one thread carries an instant event per
message. The input is plain records, so the source of the records (the core's scheduling trace
buffer) is independent of this writer:

    Sched(time_ns, lp, partition_id, vp_index, kind)   kind "run": the VP starts running on the LP
                                                       kind "stop": it stops
    Instant(time_ns, name, args)                       args: a JSON-able dict, or None
    Slice(start_ns, end_ns, name, args, track)         a span of the host's own work (a migration's
                                                       rounds and blackout) on the thread `track`

Any tuple of those fields in that order will do. Records of one LP must come in time order
(those of different LPs may interleave freely). A "run" on an LP where another VP is running ends
that VP's slice first (a switch recorded without its "stop"); a "stop" of a VP that is not
running there is an error. Slices still open at the end of the run are closed at `end_ns` and
marked `closed_at_end`. Instants are written in time order (stably, so equal times keep the
order given).
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple, TextIO

RUN, STOP = "run", "stop"

HOST_PID, VMBUS_PID, WORK_PID = 1, 2, 3
VMBUS_TID = 1


class Sched(NamedTuple):
    time_ns: int
    lp: int
    partition_id: int
    vp_index: int
    kind: str  # RUN or STOP


class Instant(NamedTuple):
    time_ns: int
    name: str
    args: dict[str, Any] | None = None


class Slice(NamedTuple):
    start_ns: int
    end_ns: int
    name: str
    args: dict[str, Any] | None = None
    track: str = "work"


class TraceError(ValueError):
    """The records do not describe a possible schedule."""


def lp_tid(lp: int) -> int:
    # N.B. thread ids start at 1: some viewers treat tid 0 as "no thread".
    return lp + 1


def _us(ns: int) -> float:
    # The format's unit is the microsecond; fractions keep nanosecond precision.
    return ns / 1000


def build(records: Iterable[tuple], instants: Iterable[tuple] = (), *, end_ns: int | None = None,
          partition_names: Mapping[int, str] | None = None,
          logical_processors: int | None = None, spans: Iterable[tuple] = ()) -> dict[str, Any]:
    """The trace document. `end_ns` defaults to the last record's time; `partition_names` maps
    partition ids to the names slices use (default "partition<id>"); `logical_processors`, if
    given, gives every LP a thread (idle ones too) and rejects records of other LPs; `spans`
    (Slice records) go on the "host work" process, a thread per track (in order of first
    appearance), in time order: a track's slices must not overlap but by nesting."""
    names = dict(partition_names or {})
    scheds = [Sched(*r) for r in records]
    marks = sorted((Instant(*i) for i in instants), key=lambda i: i.time_ns)
    last = max([r.time_ns for r in scheds] + [i.time_ns for i in marks], default=0)
    end = last if end_ns is None else end_ns
    if end < last:
        raise TraceError(f"end_ns {end} is before the last record, at {last} ns")

    lps: set[int] = set(range(logical_processors)) if logical_processors is not None else set()
    open_slice: dict[int, Sched] = {}   # LP -> the "run" record of the VP on it now
    clock: dict[int, int] = {}          # LP -> time of its last record
    slices: dict[int, list[dict[str, Any]]] = {}

    def close(run: Sched, at: int, at_end: bool = False) -> None:
        args: dict[str, Any] = {"partition_id": run.partition_id, "vp_index": run.vp_index}
        if at_end:
            args["closed_at_end"] = True
        name = f"{names.get(run.partition_id, f'partition{run.partition_id}')}/vp{run.vp_index}"
        slices.setdefault(run.lp, []).append({
            "ph": "X", "name": name, "cat": "vp", "pid": HOST_PID, "tid": lp_tid(run.lp),
            "ts": _us(run.time_ns), "dur": _us(at - run.time_ns), "args": args})

    for r in scheds:
        if r.time_ns < 0 or r.lp < 0:
            raise TraceError(f"{r}: time and LP must not be negative")
        if logical_processors is not None and r.lp >= logical_processors:
            raise TraceError(f"{r}: the host has {logical_processors} logical processors")
        if r.time_ns < clock.get(r.lp, 0):
            raise TraceError(f"{r}: LP {r.lp}'s records go back in time (its last was at {clock[r.lp]} ns)")
        clock[r.lp] = r.time_ns
        lps.add(r.lp)
        running = open_slice.get(r.lp)
        if r.kind == RUN:
            if running is not None:
                if (running.partition_id, running.vp_index) == (r.partition_id, r.vp_index):
                    raise TraceError(f"{r}: that VP is already running on LP {r.lp}")
                close(running, r.time_ns)
            open_slice[r.lp] = r
        elif r.kind == STOP:
            if running is None or (running.partition_id, running.vp_index) != (r.partition_id, r.vp_index):
                raise TraceError(f"{r}: that VP is not running on LP {r.lp}")
            close(running, r.time_ns)
            del open_slice[r.lp]
        else:
            raise TraceError(f"{r}: kind must be {RUN!r} or {STOP!r}")
    for lp in sorted(open_slice):
        close(open_slice[lp], end, at_end=True)

    events: list[dict[str, Any]] = [
        _meta("process_name", HOST_PID, 0, name="hvsim host (logical processors)"),
        _meta("process_sort_index", HOST_PID, 0, sort_index=0),
        _meta("process_name", VMBUS_PID, 0, name="VMBus"),
        _meta("process_sort_index", VMBUS_PID, 0, sort_index=1),
        _meta("thread_name", VMBUS_PID, VMBUS_TID, name="messages"),
    ]
    for lp in sorted(lps):
        events.append(_meta("thread_name", HOST_PID, lp_tid(lp), name=f"LP {lp}"))
        events.append(_meta("thread_sort_index", HOST_PID, lp_tid(lp), sort_index=lp))
    for lp in sorted(slices):
        events.extend(slices[lp])
    work = sorted((Slice(*s) for s in spans), key=lambda s: s.start_ns)
    for s in work:
        if s.end_ns < s.start_ns:
            raise TraceError(f"{s}: a slice ends before it starts")
    tracks: dict[str, int] = {}
    for s in work:
        tracks.setdefault(s.track, len(tracks) + 1)
    if work:
        events += [_meta("process_name", WORK_PID, 0, name="host work (migrations)"),
                   _meta("process_sort_index", WORK_PID, 0, sort_index=2)]
        events += [_meta("thread_name", WORK_PID, tid, name=track) for track, tid in tracks.items()]
    for s in work:
        events.append({"ph": "X", "name": s.name, "cat": "migration", "pid": WORK_PID, "tid": tracks[s.track],
                       "ts": _us(s.start_ns), "dur": _us(s.end_ns - s.start_ns), "args": dict(s.args or {})})
    for i in marks:
        events.append({"ph": "i", "s": "t", "name": i.name, "cat": "vmbus", "pid": VMBUS_PID, "tid": VMBUS_TID,
                       "ts": _us(i.time_ns), "args": dict(i.args or {})})
    return {"traceEvents": events, "displayTimeUnit": "ns", "otherData": {"source": "hvsim", "end_ns": end}}


def _meta(what: str, pid: int, tid: int, **args: Any) -> dict[str, Any]:
    return {"ph": "M", "name": what, "pid": pid, "tid": tid, "args": args}


def write(target: str | os.PathLike | TextIO, trace: dict[str, Any]) -> None:
    """Write a trace built by build() to a path or an open text file."""
    if isinstance(target, (str, os.PathLike)):
        with open(target, "w", encoding="utf-8") as f:
            json.dump(trace, f, separators=(",", ":"))
            f.write("\n")
    else:
        json.dump(trace, target, separators=(",", ":"))
        target.write("\n")
