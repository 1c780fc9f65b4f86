"""The structured event log of one run (`hvsim run --log FILE`): JSON lines written through
structlog, each with the simulated time `t_ns`, the event name and its fields.

Each EventLog has its own structlog pipeline (`structlog.wrap_logger` with explicit processors):
structlog's global configuration is never touched, so two runs in one process — or a program
that configures structlog for itself — do not interfere. The output is deterministic: keys are
sorted, times are simulated nanoseconds, and nothing from the wall clock is written.

    log = EventLog("run.jsonl", host)          # or EventLog(file, clock), or EventLog(None, clock)
    log.event("vm.start", vm="web", vps=2)     # {"event": "vm.start", "t_ns": 0, "vm": "web", "vps": 2}
    vm_log = log.bind(vm="web")                # every event of vm_log carries vm="web"
    log.close()
"""
from __future__ import annotations

import enum
import io
import json
import os
import pathlib
import uuid
from typing import Any, Callable, TextIO

import structlog

# Keys every line has; an event's own fields may not use them.
RESERVED = frozenset({"event", "t_ns"})


class _Sink:
    """Where the lines go, shared by an EventLog and the logs bound from it. structlog calls
    `msg(line)` with each rendered line."""

    def __init__(self, file: TextIO, owned: bool):
        self.file = file
        self.owned = owned   # opened here from a path (or the in-memory buffer): closed here
        self.closed = False

    def msg(self, line: str) -> None:
        # N.B. no flush per line (structlog's WriteLogger flushes each one): close() flushes.
        self.file.write(line + "\n")


class EventLog:
    """A run's event log. `sink` is a path (created or truncated, closed by close()), an open text
    file (flushed but left open by close()), or None for an in-memory log whose lines stay
    readable after close(). `clock` is the simulated clock: a callable returning nanoseconds,
    or an object with a `now` attribute such as a Host."""

    def __init__(self, sink: str | os.PathLike | TextIO | None, clock: Callable[[], int] | Any):
        if sink is None:
            self._sink = _Sink(io.StringIO(), owned=False)
            self._memory = True
        elif isinstance(sink, (str, os.PathLike)):
            self._sink = _Sink(open(sink, "w", encoding="utf-8", newline="\n"), owned=True)
            self._memory = False
        else:
            self._sink = _Sink(sink, owned=False)
            self._memory = False
        self._clock = _as_clock(clock)
        self._logger = structlog.wrap_logger(
            self._sink,
            processors=[self._add_time, structlog.processors.JSONRenderer(sort_keys=True, default=_json_value)],
            wrapper_class=structlog.BoundLogger,
            context_class=dict,
            cache_logger_on_first_use=False,
        ).bind()  # a concrete BoundLogger now, rather than a proxy that would consult the global config

    def _add_time(self, _logger: Any, _method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
        event_dict["t_ns"] = int(self._clock())
        return event_dict

    def event(self, name: str, /, **fields: Any) -> None:
        """Write one event at the current simulated time."""
        if self._sink.closed:
            raise ValueError(f"event {name!r} logged after the event log was closed")
        clash = RESERVED.intersection(fields)
        if clash:
            raise ValueError(f"event {name!r}: field {sorted(clash)[0]!r} is reserved by the event log")
        self._logger.msg(name, **fields)

    def bind(self, **fields: Any) -> EventLog:
        """A log writing to the same place whose every event also carries `fields` (e.g. vm="web")."""
        clash = RESERVED.intersection(fields)
        if clash:
            raise ValueError(f"field {sorted(clash)[0]!r} is reserved by the event log")
        child = object.__new__(EventLog)
        child._sink, child._memory, child._clock = self._sink, self._memory, self._clock
        child._logger = self._logger.bind(**fields)
        return child

    # ---- the in-memory mode ------------------------------------------------------------------
    @property
    def lines(self) -> list[str]:
        """The lines written so far (in-memory logs only)."""
        if not self._memory:
            raise ValueError("only an in-memory event log (sink None) keeps its lines")
        return self._sink.file.getvalue().splitlines()

    def records(self) -> list[dict[str, Any]]:
        """The events written so far, parsed back (in-memory logs only)."""
        return [json.loads(line) for line in self.lines]

    # ---- closing -----------------------------------------------------------------------------
    def close(self) -> None:
        """Flush, and close the file if this log opened it. Closing twice is harmless."""
        if self._sink.closed:
            return
        self._sink.closed = True
        self._sink.file.flush()
        if self._sink.owned:
            self._sink.file.close()

    def __enter__(self) -> EventLog:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


def _as_clock(clock: Callable[[], int] | Any) -> Callable[[], int]:
    if callable(clock):
        return clock
    if hasattr(clock, "now"):
        return lambda: clock.now
    raise TypeError(f"clock must be a callable returning nanoseconds or have a `now`, not {type(clock).__name__}")


def _json_value(value: Any) -> Any:
    """Values json cannot write by itself, written deterministically. Anything else is an error
    rather than its repr(), which could carry a memory address and make two runs differ."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if isinstance(value, enum.Enum):  # N.B. json writes an IntEnum itself, as its number
        return value.name
    if isinstance(value, (uuid.UUID, pathlib.PurePath)):
        return str(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    raise TypeError(f"a {type(value).__name__} cannot be written to the event log (use str, int, float, bool, "
                    "None, list, dict, bytes, a UUID, a path or an enum)")
