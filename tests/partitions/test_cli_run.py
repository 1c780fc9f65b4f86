"""`hvsim run`: the default host end to end in a temporary directory, its records, determinism,
and bad input."""
import json

import pytest

from partitions.cli import main


def run_json(capsys, *argv):
    assert main(["run", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_the_default_host_shows_contention_disk_network_heartbeats_and_a_checkpoint(tmp_path, capsys):
    pcap, log, trace = tmp_path / "lan.pcap", tmp_path / "log.jsonl", tmp_path / "trace.json"
    out = run_json(capsys, "--for", "3s", "--workdir", str(tmp_path / "w"), "--pcap", str(pcap),
                   "--log", str(log), "--trace", str(trace))
    vms = {v["Name"]: v for v in out["vms"]}
    assert set(vms) == {"web", "db", "batch"}
    assert vms["web"]["Status"] == "Operating normally"            # heartbeats answered
    assert vms["batch"]["State"] == "Paused"                       # the timeline's pause at 3 s
    assert sum(v["CPUUsage(%)"] for v in vms.values()) > 20        # CPU is being shared
    parts = {p["name"]: p for p in out["partitions"]}
    assert parts["db"]["vmbus"]["packets_in"] > 1000               # disk I/O through storvsc
    assert out["switches"]["lan"]["forwarded"] > 100               # network traffic
    assert out["checkpoints"]["db"][0]["checkpoint"] == "before-pause"
    assert (tmp_path / "w").is_dir() and any((tmp_path / "w").glob("*.vhd"))
    assert pcap.stat().st_size > 24
    events = [json.loads(line) for line in log.read_text().splitlines()]
    assert all("t_ns" in e for e in events) and any(e["event"] == "vm_state" for e in events)
    doc = json.loads(trace.read_text())
    assert any(e.get("ph") == "X" for e in doc["traceEvents"])                       # VP slices per LP
    assert any(e.get("ph") == "i" and e["name"] == "OfferChannel" for e in doc["traceEvents"])  # VMBus


def test_the_default_run_is_deterministic(tmp_path, capsys):
    a = run_json(capsys, "--for", "1s", "--workdir", str(tmp_path / "a"))
    b = run_json(capsys, "--for", "1s", "--workdir", str(tmp_path / "b"))
    assert a["trace_digest"] == b["trace_digest"]
    c = run_json(capsys, "--for", "1s", "--workdir", str(tmp_path / "c"), "--seed", "1")
    assert c["seed"] == 1


def test_a_config_file(tmp_path, capsys):
    cfg = tmp_path / "host.toml"
    cfg.write_text('[host]\nlogical_processors = 1\nmemory = "256MiB"\n'
                   '[[vm]]\nname = "a"\nmemory = "8MiB"\nworkload = { kind = "cpu-burn", duty = 0.5 }\n')
    out = run_json(capsys, str(cfg), "--for", "1s")
    assert out["vms"][0]["Name"] == "a" and abs(out["vms"][0]["CPUUsage(%)"] - 50) < 3


@pytest.mark.parametrize("text, message", [
    ('[host]\nlogical_processors = 0\n', "host.logical_processors"),
    ('[[vm]]\nname = "a"\ncpu = { weight = 0 }\n', "vm[0].cpu.weight"),
    ('[[vm]]\nname = "a"\nnics = [ { switch = "nowhere" } ]\n', "vm[0].nics[0].switch"),
])
def test_bad_configuration_names_file_and_key(tmp_path, capsys, text, message):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    assert main(["run", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "bad.toml" in err and message in err


def test_bad_duration_is_a_clear_error(capsys):
    assert main(["run", "--for", "soon"]) == 2
    assert "--for" in capsys.readouterr().err


def test_a_timeline_with_save_restore_and_checkpoints(tmp_path, capsys):
    cfg = tmp_path / "life.toml"
    cfg.write_text('''
[host]
logical_processors = 2
memory = "512MiB"

[[vm]]
name = "a"
memory = "16MiB"
workload = { kind = "disk-io", queue_depth = 2 }
disks = [ { path = "a.vhd", size = "8MiB" } ]

[[at]]
time = "500ms"
action = "save"
vm = "a"

[[at]]
time = "800ms"
action = "restore"
vm = "a"

[[at]]
time = "1s"
action = "checkpoint"
vm = "a"
name = "one"

[[at]]
time = "1.5s"
action = "delete-checkpoint"
vm = "a"
name = "one"
''')
    out = run_json(capsys, str(cfg), "--for", "2s")
    assert out["vms"][0]["State"] == "Running"
    whats = [c["what"] for c in out["checkpoints"]["a"]]
    assert whats[0] in ("consistent", "crash-consistent") and whats[-1] == "deleted"
    assert (tmp_path / "a.hvsav").exists()


def test_the_digest_does_not_depend_on_the_process(tmp_path):
    """Two processes with different string-hash salts give the same trace: nothing in the
    simulation may depend on Python's per-process hash randomization."""
    import os
    import subprocess
    import sys
    import hashlib

    from drivers.storage.vhd import VirtualDisk
    digests, disks = [], []
    for salt in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": salt}
        out = subprocess.run([sys.executable, "-m", "partitions.cli", "run", "--for", "500ms", "--json",
                              "--workdir", str(tmp_path / salt)], capture_output=True, text=True, env=env,
                             timeout=300, check=True).stdout
        digests.append(json.loads(out)["trace_digest"])
        # db's random I/O wrote where its seeded generator chose: the disk's contents must match.
        with VirtualDisk.open(str(tmp_path / salt / "db.vhd"), read_only=True) as d:
            h = hashlib.blake2b()
            for off, n in d.own_ranges():
                h.update(off.to_bytes(8, "little") + d.read(off, n))
            disks.append(h.hexdigest())
    assert digests[0] == digests[1]
    assert disks[0] == disks[1]
