"""The structured event log: JSON lines with the simulated time on every event, deterministic, and
its own structlog pipeline (the global configuration is neither used nor changed)."""
import enum
import io
import json
import uuid

import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st

from partitions.eventlog import RESERVED, EventLog


class Clock:
    def __init__(self):
        self.now = 0


def test_each_line_is_a_json_event_with_the_simulated_time():
    clock = Clock()
    log = EventLog(None, clock)
    log.event("vm.start", vm="web", vps=2)
    clock.now = 1_500_000
    log.event("heartbeat", vm="web", seq=1)
    assert log.records() == [{"event": "vm.start", "t_ns": 0, "vm": "web", "vps": 2},
                             {"event": "heartbeat", "t_ns": 1_500_000, "vm": "web", "seq": 1}]
    # Keys sorted, nothing else (no wall-clock timestamp, no level).
    assert log.lines[1] == '{"event": "heartbeat", "seq": 1, "t_ns": 1500000, "vm": "web"}'


def test_a_host_is_a_clock():
    from hypervisor import Host
    host = Host(logical_processors=1, memory="1MiB")
    host.run("2ms")
    log = EventLog(None, host)
    log.event("tick")
    assert log.records() == [{"event": "tick", "t_ns": 2_000_000}]


def test_two_logs_of_the_same_events_are_the_same_bytes(tmp_path):
    for name in ("a.jsonl", "b.jsonl"):
        with EventLog(tmp_path / name, lambda: 42) as log:
            log.event("disk.io", vm="db", lba=8, data=b"\x00\xff", dev=uuid.UUID(int=1), tags={"b", "a"})
    a, b = (tmp_path / "a.jsonl").read_bytes(), (tmp_path / "b.jsonl").read_bytes()
    assert a == b
    assert json.loads(a) == {"event": "disk.io", "t_ns": 42, "vm": "db", "lba": 8, "data": "00ff",
                             "dev": "00000000-0000-0000-0000-000000000001", "tags": ["a", "b"]}


def test_the_global_structlog_configuration_is_not_used_nor_changed():
    structlog.configure(processors=[lambda _l, _m, ev: {**ev, "global": True}, structlog.processors.KeyValueRenderer()])
    try:
        before = structlog.get_config()
        log = EventLog(None, lambda: 0)
        log.event("x")
        assert log.records() == [{"event": "x", "t_ns": 0}]
        assert structlog.get_config() == before
    finally:
        structlog.reset_defaults()


def test_a_file_it_is_given_is_flushed_and_left_open():
    buffer = io.StringIO()
    log = EventLog(buffer, lambda: 7)
    log.event("a", n=1)
    log.close()
    assert not buffer.closed
    assert json.loads(buffer.getvalue()) == {"event": "a", "n": 1, "t_ns": 7}


def test_a_path_it_opened_is_closed_and_events_after_close_are_refused(tmp_path):
    log = EventLog(tmp_path / "run.jsonl", lambda: 0)
    log.event("a")
    log.close()
    log.close()  # harmless
    with pytest.raises(ValueError, match="after the event log was closed"):
        log.event("b")
    assert (tmp_path / "run.jsonl").read_text() == '{"event": "a", "t_ns": 0}\n'


def test_bind_adds_fields_and_shares_the_sink():
    log = EventLog(None, lambda: 3)
    vm_log = log.bind(vm="web")
    vm_log.event("heartbeat", seq=1)
    log.event("host.tick")
    assert log.records() == [{"event": "heartbeat", "seq": 1, "t_ns": 3, "vm": "web"},
                             {"event": "host.tick", "t_ns": 3}]
    log.close()
    with pytest.raises(ValueError):
        vm_log.event("late")


@pytest.mark.parametrize("field", sorted(RESERVED))
def test_reserved_fields_are_refused(field):
    log = EventLog(None, lambda: 0)
    with pytest.raises(ValueError, match=field):
        log.event("x", **{field: 1})
    with pytest.raises(ValueError, match=field):
        log.bind(**{field: 1})
    assert log.lines == []


def test_values_without_a_deterministic_form_are_refused():
    class Colour(enum.Enum):
        RED = 1
    log = EventLog(None, lambda: 0)
    log.event("ok", colour=Colour.RED)
    assert log.records()[0]["colour"] == "RED"
    with pytest.raises(TypeError, match="object cannot be written"):
        log.event("bad", thing=object())


def test_only_an_in_memory_log_keeps_its_lines(tmp_path):
    with EventLog(tmp_path / "x.jsonl", lambda: 0) as log, pytest.raises(ValueError, match="in-memory"):
        log.lines


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
                    max_leaves=6)


@given(name=st.text(max_size=12), fields=st.dictionaries(st.text(min_size=1, max_size=8).filter(lambda k: k not in RESERVED),
                                                           JSON, max_size=5),
       t=st.integers(0, 2**63 - 1))
def test_any_json_fields_round_trip(name, fields, t):
    log = EventLog(None, lambda: t)
    log.event(name, **fields)
    (line,) = log.lines
    assert json.loads(line) == {**fields, "event": name, "t_ns": t}
    assert line == json.dumps(json.loads(line), sort_keys=True)
