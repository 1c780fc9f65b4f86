"""The structured event log: JSON lines with the simulated time on every event, deterministic, and
its own structlog pipeline (the global configuration is neither used nor changed); and the events a
managed host writes, each documented in docs/events.md and each naming its VM."""
import enum
import io
import json
import pathlib
import re
import uuid

import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st

from drivers.example.vsp import EchoVsp
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


# ---- the events a managed host writes, against docs/events.md ----------------------------------

DOCS = pathlib.Path(__file__).resolve().parents[2] / "docs" / "events.md"
BUILT_IN_DEVICES = ("heartbeat", "shutdown", "timesync", "kvp", "vss", "storage", "network", "echo")


def documented():
    """(event names, {family: its documented <event> parts}) from docs/events.md's tables."""
    names, families, family = set(), {}, None
    for line in DOCS.read_text().splitlines():
        if line.startswith("#"):
            m = re.search(r"`([a-z]+(?:\.<[a-z]+>)*\.<event>)`", line)
            family = m.group(1) if m else None
            if family:
                families[family] = set()
            continue
        m = re.match(r"\|\s*`([^`]+)`\s*\|", line)
        if m:
            (families[family] if family else names).add(m.group(1))
    return names, families


def undocumented(events, names, families):
    """The events of `events` docs/events.md does not describe."""
    missing = set()
    for e in events:
        if e in names:
            continue
        family, _, part = e.rpartition(".")
        if family.startswith("device."):
            # A plugin's events are its own; the built-in devices' are listed.
            if family.split(".")[1] in BUILT_IN_DEVICES and part not in families["device.<device>.<event>"]:
                missing.add(e)
        elif f"{family}.<event>" not in families or part not in families[f"{family}.<event>"]:
            missing.add(e)
    return missing


def _family(event, families):
    for family in families:
        if re.fullmatch(re.escape(family).replace(re.escape("<device>"), r"[^.]+").replace(re.escape("<event>"),
                                                                                           r"[^.]+"), event):
            return family
    return None


class _TimerFails(EchoVsp):
    def on_open(self):
        self.context.call_later(1_000_000, lambda: 1 / 0)


class _OpenFails(EchoVsp):
    def on_open(self):
        raise RuntimeError("cannot open")


class _Chatty(EchoVsp):
    def on_open(self):
        for i in range(105):
            self.context.log("note", n=i, vm="mine")


async def misbehave(ctx):
    """A python workload: a hypercall the core refuses, then a crash at 0.5 s."""
    from hypervisor import HvError
    try:
        ctx.partition.post_message(connection_id=0x7777, message_type=1, payload=b"x")
    except HvError:
        pass
    await ctx.sleep("0.5s")
    raise RuntimeError("guest bug")


SCENARIO = """
[host]
logical_processors = 2
memory = "1GiB"

[[vm]]
name = "a"
memory = "64MiB"
workload = {{ kind = "python", target = "tests.partitions.test_eventlog:misbehave" }}

[[vm]]
name = "b"
memory = "64MiB"
disks = [ {{ path = "{dir}/b.vhd", size = "16MiB", type = "dynamic" }} ]

[[vm]]
name = "c"
memory = "64MiB"

[[vm]]
name = "e"
memory = "8MiB"
disks = [ {{ path = "{dir}/e.vhd", size = "4MiB" }} ]

[[at]]
time = "0.2s"
action = "checkpoint"
vm = "b"
name = "one"

[[at]]
time = "0.4s"
action = "save"
vm = "b"

[[at]]
time = "0.6s"
action = "restore"
vm = "b"

[[at]]
time = "0.8s"
action = "turn-off"
vm = "b"

[[at]]
time = "0.9s"
action = "apply-checkpoint"
vm = "b"
name = "one"

[[at]]
time = "1s"
action = "delete-checkpoint"
vm = "b"
name = "one"
"""


@pytest.fixture(scope="module")
def scenario(tmp_path_factory):
    with pytest.MonkeyPatch.context() as monkeypatch:
        return scenario_events(tmp_path_factory.mktemp("scenario"), monkeypatch)


def scenario_events(tmp_path, monkeypatch):
    """Every event of a run built to make each of the host's own events happen at least once."""
    import uuid as _uuid

    from drivers.device import DeviceType
    from drivers.example.vsc import EchoVsc
    from drivers.registry import LoadError, discover
    from partitions import management
    from partitions.config import AtConfig, loads
    from partitions.vm import DeviceSlot

    plugins = [DeviceType(name, _uuid.uuid5(_uuid.NAMESPACE_URL, f"hvsim-test/{name}"), type(vsp.__name__, (vsp,), {}),
                          type(f"{name}Vsc", (EchoVsc,), {}))
               for name, vsp in (("flaky", _TimerFails), ("stiff", _OpenFails), ("chatty", _Chatty))]

    def registry():
        r = discover()
        for d in plugins:
            r.add(d)
        r.errors.append(LoadError("broken = nowhere:DEVICE", "broken-plugin", "ModuleNotFoundError: nowhere"))
        return r

    monkeypatch.setattr(management, "discover", registry)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "disk0-ckpt7.vhd").write_bytes(b"left by an earlier run")   # -> disk.discarded
    built = []
    log = EventLog(None, lambda: built[0].host.now if built else 0)
    m = management.ManagedHost(loads(SCENARIO.format(dir=tmp_path), base_dir=tmp_path), workdir=tmp_path,
                               event_log=log)
    built.append(m)
    (tmp_path / "e" / "disk0.vhd").write_bytes(b"\0" * 4096)   # not a VHD any more: e cannot start
    m.vms["c"].devices += [DeviceSlot(d) for d in plugins]
    m.run("1.5s")
    with pytest.raises(management.ScenarioError):
        m._act(AtConfig(1_500_000_000, "resume", "b"))   # b is Off: the action fails at run time
    # a (crashed, Off) started again, restored into a new shell from its file
    # (vm.resumed_from_image), then leaving its host as the last step of a move does
    # (vm.released, vmbus.channel_rescinded); its workload would crash again only at 0.5 s.
    a = m.vms["a"]
    a.start()
    m.run("1.6s")
    a.save(tmp_path / "a.hvsav")
    a.turn_off()
    a.restore(tmp_path / "a.hvsav")
    m.run("1.7s")
    a.freeze()
    a.release("moved")
    # An emulated device whose close raises as its VM is turned off (emulated.close_failed).
    from partitions.vm import VmState

    class _CloseFails:
        def close(self):
            raise OSError("the disk file is gone")
    running = next(vm for vm in m.vms.values() if vm.state is VmState.RUNNING)
    running.emulated["broken"] = _CloseFails()
    running.turn_off()
    return log.records() + quick_migration_events(tmp_path / "dc") + live_migration_events(tmp_path / "live")


QUICK = """
[[host]]
name = "a"
logical_processors = 1
memory = "512MiB"

[[host.switch]]
name = "lan"

[[host.vm]]
name = "q"
memory = "16MiB"
disks = [ {{ path = "san/q.vhd", size = "1MiB" }} ]

[[host.vm]]
name = "w"
memory = "16MiB"
nics = [ {{ switch = "lan" }} ]

[[host]]
name = "b"
logical_processors = 1
memory = "512MiB"

[[storage]]
name = "san"
kind = "fc"

[[link]]
hosts = ["a", "san"]
bandwidth = "{bw}"
latency = "10us"

[[link]]
hosts = ["b", "san"]
bandwidth = "{bw}"
latency = "10us"
"""


def quick_migration_events(tmp_path):
    """A datacenter's quick migrations (docs/datacenter.md): one that completes (storage.transfer,
    migration.quick_saved, migration.quick), one whose save fails and one whose restore fails on
    both hosts (migration.quick_failed, migration.quick_restore_failed)."""
    from partitions.config import loads
    from partitions.datacenter import Datacenter
    from partitions.datacenter.quick import QuickMigrationError, quick_move
    tmp_path.mkdir()
    datacenter = []
    log = EventLog(None, lambda: datacenter[0].clock() if datacenter else 0)
    dc = Datacenter(loads(QUICK.format(bw="10Gbit/s"), base_dir=tmp_path), workdir=tmp_path / "run", event_log=log)
    datacenter.append(dc)
    try:
        dc.run("100ms")
        quick_move(dc, "q", "b")
        w = dc.hosts["a"].managed.vms["w"]
        w.workload_states[0]["oops"] = object()          # not plain data: the save fails
        with pytest.raises(QuickMigrationError):
            quick_move(dc, "w", "b")
        del w.workload_states[0]["oops"]
        move = quick_move(dc, "w", "b")                   # b lacks switch "lan": the restore fails there
        dc.run(move.saved_ns + 150_000_000)               # b failed; the source's restore is due later
        dc.hosts["a"].managed.switches.pop("lan")         # and now the source cannot build it either
        dc.run("1s")
        assert move.outcome == "failed"
    finally:
        dc.close()
    return log.records()


LIVE = """
[[host]]
name = "a"
logical_processors = 1
memory = "256MiB"

[[host.switch]]
name = "lan"

[[host.vm]]
name = "m"
memory = "16MiB"
workload = { kind = "memory-counter", pages = 8 }

[[host.vm]]
name = "n"
memory = "16MiB"
nics = [ { switch = "lan" } ]

[[host.vm]]
name = "o"
memory = "16MiB"
autostart = false

[[host]]
name = "b"
logical_processors = 1
memory = "256MiB"

[[link]]
hosts = ["a", "b"]
bandwidth = "10Gbit/s"
latency = "50us"

[[at]]
time = "50ms"
action = "move"
vm = "o"
to = "b"
"""


def live_migration_events(tmp_path):
    """A datacenter's live migrations (docs/migration.md): one that completes (migration.begin,
    .incoming, .round, .blackout, .resumed_here, .resumed, .end), one the target refuses (it has
    no switch "lan": migration.target_failed, migration.abort), a timeline move of a VM that is
    Off (migration.refused) and a message of no migration (migration.message_dropped)."""
    from partitions.config import loads
    from partitions.datacenter import Datacenter
    tmp_path.mkdir()
    datacenter = []
    log = EventLog(None, lambda: datacenter[0].clock() if datacenter else 0)
    dc = Datacenter(loads(LIVE, base_dir=tmp_path), workdir=tmp_path / "run", event_log=log)
    datacenter.append(dc)
    try:
        dc.run("100ms")
        done, refused = dc.move("m", to="b"), dc.move("n", to="b")
        dc.hosts["b"].send("a", "migration.ack", b"not msgpack")
        dc.run("200ms")
        assert done.outcome == "completed" and refused.outcome == "aborted"
    finally:
        dc.close()
    return log.records()


def test_every_documented_event_happens_and_every_event_is_documented(tmp_path, scenario, capsys):
    from partitions.cli import main
    names, families = documented()
    assert {"vm.state", "vm.crashed", "channel.broken", "hypercall.failed"} <= names
    assert set(families) == {"vmbus.<event>", "device.<device>.<event>", "guest.<event>"}
    # The default host for 5 s, as `hvsim run --log` writes it.
    log_path = tmp_path / "default.jsonl"
    assert main(["run", "--for", "5s", "--workdir", str(tmp_path / "w"), "--log", str(log_path), "--json"]) == 0
    capsys.readouterr()
    default = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert undocumented({e["event"] for e in default}, names, families) == set()
    produced = {e["event"] for e in default + scenario}
    assert undocumented(produced, names, families) == set()
    assert names - produced == set()                                   # each one happens somewhere
    assert {f for f in families if any(_family(e, [f]) for e in produced)} == set(families)
    # Every line about a VM names it; none names a partition without its VM.
    for e in default + scenario:
        if "partition" in e and e["partition"] != 1:
            assert e.get("vm")
        if e["event"].startswith(("vm.", "checkpoint.", "savedstate.", "channel.", "device.", "guest.", "vmbus.")):
            assert e.get("vm"), e


def test_what_a_plugin_device_logs_names_its_vm_and_device_and_is_bounded(scenario):
    events = scenario
    notes = [e for e in events if e["event"] == "device.chatty.note"]
    assert len(notes) == 100 and notes[0]["vm"] == "c" and notes[0]["device"] == "chatty" and notes[0]["n"] == 0
    assert notes[0]["_vm"] == "mine"                                # its own field, kept apart from ours
    assert [e for e in events if e["event"] == "log.suppressed"] == [
        {"event": "log.suppressed", "t_ns": notes[-1]["t_ns"], "vm": "c", "name": "device.chatty.note", "after": 100}]
    broken = next(e for e in events if e["event"] == "channel.broken")
    assert (broken["vm"], broken["device"]) == ("c", "flaky") and "ZeroDivisionError" in broken["why"]
    failed = next(e for e in events if e["event"] == "device.failed")
    assert (failed["vm"], failed["device"]) == ("c", "stiff") and "cannot open" in failed["why"]
    crashed = next(e for e in events if e["event"] == "vm.crashed")
    assert (crashed["vm"], crashed["error"]) == ("a", "RuntimeError: guest bug")
    hypercalls = [e for e in events if e["event"] == "hypercall.failed"]
    assert hypercalls[0]["vm"] == "a" and hypercalls[0]["count"] >= 1
    # The single host's own (a datacenter's events, the quick migrations' saves among them, name their host).
    kinds = [(e["event"], e.get("checkpoint")) for e in events
             if e["event"].startswith(("checkpoint.", "savedstate.")) and "host" not in e]
    assert kinds == [("checkpoint.created", "one"), ("savedstate.written", None), ("checkpoint.applied", "one"),
                     ("checkpoint.deleted", "one"), ("savedstate.written", None)]   # the last one: a's


def test_a_field_may_be_called_name():
    log = EventLog(None, lambda: 0)
    log.event("log.suppressed", name="device.x.y", after=100)
    assert log.records() == [{"event": "log.suppressed", "t_ns": 0, "name": "device.x.y", "after": 100}]
