"""`[[at]] action = "move"` and "quick-move" in a datacenter file: `to` and `kind` read and checked
ahead of the run (file, key, expected), the datacenter carrying out a timeline move at its time,
and `hvsim run` of the example showing the migration in its summary."""
import json
from pathlib import Path

import pytest

from partitions.config import dump, loads
from partitions.config_schema import ConfigError

EXAMPLE = str(Path(__file__).resolve().parents[2] / "examples" / "two-hosts.toml")

HOSTS = """
[[host]]
name = "a"
logical_processors = 1
memory = "256MiB"

[[host.vm]]
name = "v"
memory = "32MiB"
workload = { kind = "memory-counter", pages = 16, interval = "2ms" }

[[host]]
name = "b"
logical_processors = 1
memory = "256MiB"

[[host]]
name = "c"
logical_processors = 1
memory = "256MiB"

[[link]]
hosts = ["a", "b"]
bandwidth = "10Gbit/s"
latency = "50us"
"""


def at(**keys) -> str:
    return "\n[[at]]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in keys.items())


def test_a_move_is_read_with_its_host_and_kind_and_kept_out_of_the_hosts_timelines():
    config = loads(HOSTS + at(time="1s", action="move", vm="v", to="b", kind="post-copy")
                   + at(time="2s", action="move", vm="v", to="a"))
    first, back = config.timeline
    assert (first.action, first.to, first.kind) == ("move", "b", "post-copy") and back.kind is None
    assert all(h.config.timeline == () for h in config.hosts)   # moves are the datacenter's
    again = loads(dump(config))
    assert again.timeline == config.timeline


@pytest.mark.parametrize("entries, key, expected", [
    ([dict(action="move", vm="v")], "at[0].to", "the host a VM moves to"),
    ([dict(action="pause", vm="v", to="b")], "at[0].to", "on a move or quick-move action only"),
    ([dict(action="quick-move", vm="v", to="b", kind="live")], "at[0].kind", 'on a "move" action only'),
    ([dict(action="move", vm="v", to="b", kind="teleport")], "at[0].kind", 'one of "live", "post-copy"'),
    ([dict(action="move", vm="v", to="x")], "at[0].to", "the name of a [[host]]"),
    ([dict(action="move", vm="v", to="a")], "at[0].to", 'a [[host]] other than "a", where VM "v" is at 1s'),
    ([dict(action="move", vm="v", to="c")], "at[0].to", 'a host a [[link]] joins to "a"'),
    ([dict(action="move", vm="v", to="b"), dict(action="pause", vm="v")], "at[1].action",
     "before it moves to another host"),
])
def test_a_move_that_cannot_happen_is_refused_with_its_key(entries, key, expected):
    text = HOSTS + "".join(at(time=f"{i + 1}s", **e) for i, e in enumerate(entries))
    with pytest.raises(ConfigError) as caught:
        loads(text)
    assert caught.value.key == key and expected in caught.value.expected, str(caught.value)


def test_a_single_host_file_has_no_move():
    text = '[host]\nlogical_processors = 1\nmemory = "64MiB"\n[[vm]]\nname = "v"\nmemory = "16MiB"\n' + at(
        time="1s", action="move", vm="v", to="b")
    with pytest.raises(ConfigError) as caught:
        loads(text)
    assert caught.value.key == "at[0].action" and "datacenter file" in caught.value.expected


def test_the_datacenter_carries_out_a_timeline_move_at_its_time(tmp_path):
    from partitions.datacenter import Datacenter
    dc = Datacenter(loads(HOSTS + at(time="150ms", action="move", vm="v", to="b")), seed=1, workdir=tmp_path)
    dc.run("400ms")
    (record,) = dc.migrations()
    assert record.started_ns == 150_000_000 and record.outcome == "completed"
    assert "v" in dc.hosts["b"].managed.vms and "v" not in dc.hosts["a"].managed.vms


def test_a_timeline_move_that_cannot_start_is_logged_and_the_run_goes_on(tmp_path):
    from partitions.datacenter import Datacenter
    from partitions.eventlog import EventLog
    text = HOSTS.replace('name = "v"\n', 'name = "v"\nautostart = false\n')
    log_path = tmp_path / "log.jsonl"
    dc_holder = []
    log = EventLog(log_path, lambda: dc_holder[0].clock() if dc_holder else 0)
    dc = Datacenter(loads(text + at(time="100ms", action="move", vm="v", to="b")), seed=1, workdir=tmp_path,
                    event_log=log)
    dc_holder.append(dc)
    dc.run("200ms")
    log.close()
    events = [json.loads(line) for line in log_path.read_text().splitlines()]
    refused = [e for e in events if e["event"] in ("migration.refused", "migration.abort")]
    assert refused and refused[0]["vm"] == "v" and "Off" in (refused[0].get("error") or refused[0].get("reason"))
    assert dc.now == 200_000_000


def test_hvsim_run_of_the_example_moves_cache_and_shows_it(tmp_path, capsys, monkeypatch):
    from partitions.cli import main
    assert main(["run", EXAMPLE, "--for", "1.3s", "--workdir", str(tmp_path / "w"), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    (m,) = s["migrations"]
    assert (m["vm"], m["from"], m["to"], m["kind"], m["outcome"]) == ("cache", "host-a", "host-b", "live",
                                                                      "completed")
    assert m["rounds"] >= 1 and m["downtime_ns"] > 0 and m["pages_per_round"][0] == 512 * 256
    assert m["reconnect_ns"] > 0 and m["devices_away_ns"] == m["downtime_ns"] + m["reconnect_ns"]
    vms = {h: {v["Name"]: v["State"] for v in s["hosts"][h]["vms"]} for h in s["hosts"]}
    assert vms["host-b"]["cache"] == "Running" and "cache" not in vms["host-a"]
    monkeypatch.setenv("COLUMNS", "160")
    trace = tmp_path / "trace.json"
    assert main(["run", EXAMPLE, "--for", "1.1s", "--workdir", str(tmp_path / "t"), "--trace", str(trace)]) == 0
    out = capsys.readouterr().out
    assert "Migrations" in out and "host-a -> host-b" in out and "downtime (ms)" in out and "reconnect (ms)" in out
    work = {host: [e for e in json.loads((tmp_path / f"trace.json.{host}").read_text())["traceEvents"]
                   if e.get("cat") == "migration"] for host in ("host-a", "host-b")}
    assert [e["name"] for e in work["host-a"]][0] == "round 0" and "blackout" in [e["name"] for e in work["host-a"]]
    assert [e["name"] for e in work["host-b"]] == ["blackout"]


SAN = """
[[host]]
name = "a"
logical_processors = 1
memory = "512MiB"

[[host.vm]]
name = "db"
memory = "32MiB"
disks = [ { path = "san/db.vhd", size = "8MiB" } ]
workload = { kind = "disk-io", pattern = "random", block_size = 4096, queue_depth = 2 }

[[host]]
name = "b"
logical_processors = 1
memory = "512MiB"

[[storage]]
name = "san"
kind = "iscsi"
directory = "san"

[[link]]
hosts = ["a", "san"]
bandwidth = "4Gbit/s"
latency = "100us"

[[link]]
hosts = ["san", "b"]
bandwidth = "4Gbit/s"
latency = "100us"
"""


def test_a_timeline_quick_move_goes_through_shared_storage_without_a_host_link(tmp_path):
    from partitions.datacenter import Datacenter
    config = loads(SAN + at(time="100ms", action="quick-move", vm="db", to="b"), base_dir=str(tmp_path))
    dc = Datacenter(config, seed=1, workdir=tmp_path / "run")
    try:
        dc.run("600ms")
        (move,) = dc.quick_migrations
        assert move.started_ns == 100_000_000 and move.outcome == "completed"
        assert dc.hosts["b"].managed.vms["db"].state.value == "Running" and "db" not in dc.hosts["a"].managed.vms
        assert dc.summary()["quick_migrations"][0]["downtime_ns"] == move.downtime_ns > 0
        back = dc.hosts["b"].managed.vms["db"].move(to="a", kind="quick")   # Move-VM on the VM that arrived
        assert back.source == "b" and back.target == "a" and back is dc.quick_migrations[-1]
    finally:
        dc.close()


def test_the_stop_rules_come_from_the_datacenter_table(tmp_path):
    from partitions.config_schema import StopRules
    from partitions.datacenter import Datacenter
    text = '[datacenter]\nmigration = { min_pages = 0, max_rounds = 2 }\n' + HOSTS
    config = loads(text)
    assert config.migration == StopRules(min_pages=0, max_rounds=2, max_factor=3.0)
    assert loads(dump(config)).migration == config.migration and loads(HOSTS).migration == StopRules()
    dc = Datacenter(config, seed=1, workdir=tmp_path)
    dc.run("100ms")
    record = dc.move("v", to="b")
    dc.run("300ms")
    assert record.outcome == "completed" and record.stop_rule == "max_rounds reached"
    assert record.summary()["rounds"] == 2
    for bad, key in (("max_rounds = 0", "max_rounds"), ("max_factor = -1", "max_factor"), ("rounds = 3", "rounds")):
        with pytest.raises(ConfigError) as caught:
            loads(f"[datacenter]\nmigration = {{ {bad} }}\n" + HOSTS)
        assert caught.value.key == f"datacenter.migration.{key}", str(caught.value)
