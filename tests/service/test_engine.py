"""The service's simulation thread (partitions/service/engine.py): commands apply between windows on
the sim thread, a step advances exactly what it was asked, a command that raises changes nothing,
a guest error crashes its own VM and the service goes on, created VMs come back after a restart."""
import threading
import time

import pytest

from partitions.config_schema import ConfigError
from partitions.service.engine import Conflict, Engine, NotFound, Unavailable
from partitions.vm import InvalidTransition

from tests.service.conftest import small_config


def wait_for(predicate, what: str, deadline: float = 30.0):
    """Poll `predicate` until it is true (a condition with a deadline, not a sleep to synchronise)."""
    end = time.monotonic() + deadline
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def states(engine) -> dict:
    return {r["Name"]: r["State"] for r in engine.snapshot()["vms"]}


def test_a_command_runs_on_the_sim_thread_between_windows(engine):
    seen = []
    engine.call(lambda: seen.append((threading.current_thread().name, engine._now())))
    assert seen == [("hvsim-sim", 0)]
    assert engine.call(lambda: 6 * 7) == 42
    assert engine.snapshot()["clock"] == {"now_ns": 0, "speed": "max", "paused": True, "windows": 0}


def test_a_step_advances_exactly_what_it_is_asked_then_stays_paused(engine):
    assert engine.step("100ms") == 100_000_000
    assert engine.snapshot()["clock"]["now_ns"] == 100_000_000
    assert engine.step("3ms") == 103_000_000     # not a multiple of the window: ends where asked
    assert engine.step("100ms") == 203_000_000
    clock = engine.snapshot()["clock"]
    assert clock["now_ns"] == 203_000_000 and clock["paused"] is True
    assert engine.call(engine._now) == 203_000_000   # and nothing ran after it
    assert states(engine) == {"steady": "Running", "idle": "Running"}


def test_vms_turned_off_before_the_first_window_stay_off(engine):
    engine.act("steady", "turn-off")
    engine.act("idle", "turn-off")
    engine.step("10ms")
    assert states(engine) == {"steady": "Off", "idle": "Off"}


def test_a_step_while_the_clock_runs_is_refused(make_engine):
    engine = make_engine(paused=False)
    with pytest.raises(Conflict, match="pause it before stepping"):
        engine.step("10ms")
    engine.pause()
    before = engine.snapshot()["clock"]["now_ns"]
    assert engine.step("10ms") == before + 10_000_000


def test_the_clock_runs_pauses_and_resumes(make_engine):
    engine = make_engine(paused=False)
    wait_for(lambda: engine.snapshot()["clock"]["now_ns"] >= 200_000_000, "200 ms of simulated time")
    engine.pause()
    paused_at = engine.snapshot()["clock"]["now_ns"]
    assert engine.call(engine._now) == paused_at
    assert engine.call(engine._now) == paused_at      # paused: a later command finds the same time
    engine.resume()
    wait_for(lambda: engine.snapshot()["clock"]["now_ns"] > paused_at, "the clock to move again")
    engine.set_speed(2.0)
    assert engine.snapshot()["clock"]["speed"] == 2.0
    with pytest.raises(ValueError, match="speed"):
        engine.set_speed(0)
    names = [e["event"] for e in engine.events(0) if e["event"].startswith("clock.")]
    assert names == ["clock.paused", "clock.resumed", "clock.speed"]


@pytest.mark.parametrize("speed", [1.0, 0.5])
def test_a_paced_clock_never_runs_ahead_of_the_wall_clock(make_engine, speed):
    started = time.monotonic()
    engine = make_engine(speed=speed)

    def check():
        now = engine.snapshot()["clock"]["now_ns"]
        assert now <= (time.monotonic() - started) * speed * 1e9
        return now >= 100_000_000
    wait_for(check, "100 ms of simulated time")


def test_a_command_that_raises_reaches_its_caller_and_changes_nothing(engine):
    engine.step("50ms")
    before = engine.snapshot()
    with pytest.raises(ZeroDivisionError):
        engine.call(lambda: 1 // 0)
    with pytest.raises(InvalidTransition, match="vm 'idle' is Running: cannot resume"):
        engine.act("idle", "resume")
    with pytest.raises(NotFound, match="no VM named 'nope'"):
        engine.act("nope", "start")
    with pytest.raises(ConfigError, match="memory"):
        engine.create_vm('name = "x"\nmemory = "lots"')
    with pytest.raises(Conflict, match="exists already"):
        engine.create_vm('name = "idle"')
    with pytest.raises(Conflict, match="single host"):
        engine.act("idle", "move", to="b")
    assert engine.snapshot()["vms"] == before["vms"]
    assert engine.call(lambda: sorted(engine._hosts["host"].vms)) == ["idle", "steady"]
    assert engine.running


def test_lifecycle_actions_answer_the_row_after_them(engine):
    assert engine.act("idle", "pause")["State"] == "Paused"
    assert engine.act("idle", "resume")["State"] == "Running"
    row = engine.act("idle", "turn-off")
    assert row["State"] == "Off" and row["Host"] == "host" and row["Owner"] is None
    assert states(engine)["idle"] == "Off"
    events = [(e["event"], e.get("action")) for e in engine.events(0, vms={"idle"}) if e["event"] == "vm.action"]
    assert events == [("vm.action", "pause"), ("vm.action", "resume"), ("vm.action", "turn-off")]


CRASHING_HOST = """
[host]
logical_processors = 2
memory = "1GiB"

[[vm]]
name = "doomed"
memory = "64MiB"
workload = { kind = "python", target = "tests.partitions.test_crash_containment:crash_at_1s" }

[[vm]]
name = "steady"
memory = "64MiB"
workload = { kind = "cpu-burn", duty = 0.5 }
"""


def test_a_guest_error_crashes_its_own_vm_and_the_service_runs_on(make_engine):
    engine = make_engine(CRASHING_HOST, paused=True)
    engine.step("1500ms")
    rows = {r["Name"]: r for r in engine.snapshot()["vms"]}
    assert rows["doomed"]["State"] == "Off" and rows["doomed"]["Status"].startswith("guest crashed: ZeroDivisionError")
    assert rows["steady"]["State"] == "Running"
    assert [e["vm"] for e in engine.events(0) if e["event"] == "vm.crashed"] == ["doomed"]
    cpu = engine.call(lambda: engine._hosts["host"].vms["steady"].run_time_ns())
    engine.step("100ms")
    assert engine.call(lambda: engine._hosts["host"].vms["steady"].run_time_ns()) > cpu
    assert engine.act("doomed", "start")["State"] == "Running"    # it can be started again


def test_an_error_escaping_a_window_crashes_the_vm_it_names_only(engine):
    from hypervisor.guest import GuestError
    managed = engine._hosts["host"]

    def arm():   # the next window raises, as an error no handler caught would, naming idle's partition
        pid = managed.vms["idle"].partition.id

        def boom(until):
            del managed.host.run
            raise GuestError(pid, 0, "RuntimeError: device model", f"partition {pid} VP 0: RuntimeError: device model")
        managed.host.run = boom
    engine.call(arm)
    engine.step("20ms")
    assert states(engine) == {"steady": "Running", "idle": "Off"}
    row = next(r for r in engine.snapshot()["vms"] if r["Name"] == "idle")
    assert "vm 'idle'" in row["Status"] and "device model" in row["Status"]
    assert engine.running and engine.failed is None
    assert engine.step("20ms") == 40_000_000


def test_an_error_that_names_no_vm_stops_the_simulation_but_not_the_view(engine):
    managed = engine._hosts["host"]

    def arm():
        def boom(until):
            del managed.host.run
            raise RuntimeError("the host's own service broke")
        managed.host.run = boom
    engine.call(arm)
    with pytest.raises(Unavailable):
        engine.step("20ms")
    assert "the host's own service broke" in engine.failed
    with pytest.raises(Unavailable, match="stopped"):
        engine.call(lambda: None)
    assert {r["Name"] for r in engine.snapshot()["vms"]} == {"steady", "idle"}
    assert engine.snapshot()["failed"] == engine.failed


def test_events_carry_a_sequence_and_the_simulated_time_and_can_be_waited_for(engine):
    last = engine.last_seq
    assert engine.events(last) == []
    assert engine.wait_events(last, timeout=0.01) is False
    got = []
    waiter = threading.Thread(target=lambda: got.append(engine.wait_events(last, timeout=30)))
    waiter.start()
    engine.step("10ms")
    engine.act("idle", "pause")
    waiter.join()
    assert got == [True]
    new = engine.events(last)
    assert [e["seq"] for e in new] == list(range(last + 1, last + 1 + len(new)))
    paused = next(e for e in new if e["event"] == "vm.state" and e["vm"] == "idle")
    assert paused["time_ns"] == 10_000_000 and paused["new"] == "Paused"
    steady = engine.events(last, vms={"steady"})
    assert steady and {e["vm"] for e in steady} == {"steady"}
    assert len(engine.events(0, limit=2)) == 2


def test_cpu_history_has_a_sample_per_100ms_of_simulated_time(engine):
    engine.step("1s")
    history = engine.cpu_history("steady")
    assert [t for t, _ in history] == [n * 100_000_000 for n in range(1, 11)]
    assert all(20 <= pct <= 30 for _, pct in history[1:])   # half a VP of two LPs: about 25 %
    assert all(pct < 5 for _, pct in engine.cpu_history("idle"))
    assert engine.cpu_history("nope") == []


def test_created_vms_and_their_owners_come_back_with_the_state_directory(make_engine, tmp_path):
    state = tmp_path / "kept"
    first = make_engine(paused=True, workdir=state)
    row = first.create_vm('memory = "32MiB"\nprocessors = 1', name="mine", owner="alice")
    assert row == {**row, "Name": "mine", "State": "Off", "Owner": "alice"}
    assert first.owner("mine") == "alice" and first.owner("idle") is None
    assert first.act("mine", "start")["State"] == "Running"
    first.step("50ms")
    first.act("mine", "save")
    first.stop()
    assert first.snapshot()["vms"][-1]["State"] == "Saved"
    second = make_engine(paused=True, workdir=state)
    row = next(r for r in second.snapshot()["vms"] if r["Name"] == "mine")
    assert row["State"] == "Saved" and row["Owner"] == "alice"
    assert second.act("mine", "restore")["State"] == "Running"
    assert not (state / "mine.hvsav").exists()
    second.act("mine", "turn-off")
    second.delete_vm("mine")
    assert "mine" not in states(second)
    second.stop()
    third = make_engine(paused=True, workdir=state)
    assert set(states(third)) == {"steady", "idle"}


def test_delete_refuses_a_running_vm(engine):
    with pytest.raises(InvalidTransition, match="cannot delete"):
        engine.delete_vm("idle")
    assert states(engine)["idle"] == "Running"


def test_stop_turns_every_vm_off_and_saves_nothing(make_engine, tmp_path):
    engine = make_engine(paused=False)
    wait_for(lambda: engine.snapshot()["clock"]["now_ns"] > 0, "a window")
    engine.stop()
    assert not engine.running
    assert not any(p.suffix == ".hvsav" for p in (tmp_path / "state").iterdir())
    assert not any(t.name == "hvsim-sim" for t in threading.enumerate())
    with pytest.raises(Unavailable):
        engine.call(lambda: None)


def test_a_host_that_cannot_be_built_raises_in_start_and_leaves_no_thread(tmp_path):
    (tmp_path / "junk.vhd").write_bytes(b"not a virtual disk")
    config = small_config(tmp_path, SMALL_HOST_BAD_DISK)
    engine = Engine(config, workdir=tmp_path / "state")
    with pytest.raises(ConfigError, match="junk.vhd"):
        engine.start()
    assert not any(t.name == "hvsim-sim" for t in threading.enumerate())


SMALL_HOST_BAD_DISK = """
[[vm]]
name = "a"
memory = "64MiB"
disks = [ { path = "junk.vhd" } ]
"""

TWO_HOSTS = """
[[host]]
name = "a"
logical_processors = 2
memory = "512MiB"

[[host.vm]]
name = "mover"
memory = "64MiB"

[[host]]
name = "b"
logical_processors = 2
memory = "512MiB"

[[link]]
hosts = ["a", "b"]
bandwidth = "10Gbit/s"
latency = "50us"
"""


def test_a_datacenter_engine_shows_its_hosts_and_moves_a_vm(make_engine):
    engine = make_engine(TWO_HOSTS, paused=True)
    hosts = engine.snapshot()["hosts"]
    assert [(h["name"], h["vms"]) for h in hosts] == [("a", ["mover"]), ("b", [])]
    engine.step("10ms")
    assert engine.act("mover", "move", to="b")["Host"] == "a"   # started: it runs on a meanwhile
    with pytest.raises(NotFound, match="no host named 'c'"):
        engine.act("mover", "move", to="c")
    engine.step("1s")
    row = next(r for r in engine.snapshot()["vms"] if r["Name"] == "mover")
    assert row["Host"] == "b" and row["State"] == "Running"
    assert engine.create_vm('name = "late"\nmemory = "32MiB"', host="b")["Host"] == "b"


def test_managed_host_autostarts_once_so_vms_turned_off_at_time_0_stay_off(tmp_path):
    """ManagedHost.run autostarts a host at time 0 whose VMs are all Off, unless start() ran
    already (ManagedHost.started): VMs turned off between the two stay Off."""
    from partitions.management import ManagedHost

    from tests.service.conftest import small_config
    managed = ManagedHost(small_config(tmp_path), workdir=tmp_path / "run")
    try:
        assert managed.started is False
        managed.start()
        assert managed.started is True
        for vm in managed.vms.values():
            vm.turn_off()
        managed.run("10ms", step="5ms")
        assert {vm.state.value for vm in managed.vms.values()} == {"Off"}
    finally:
        managed.close()
