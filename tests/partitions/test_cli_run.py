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
    assert all("t_ns" in e for e in events) and any(e["event"] == "vm.state" for e in events)
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
    assert (tmp_path / ".hvsim" / "a.hvsav").exists()   # the run directory: --workdir, .hvsim by default


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
        with VirtualDisk.open(str(_run_disk(tmp_path / salt, "db")), read_only=True) as d:
            h = hashlib.blake2b()
            for off, n in d.own_ranges():
                h.update(off.to_bytes(8, "little") + d.read(off, n))
            disks.append(h.hexdigest())
    assert digests[0] == digests[1]
    assert disks[0] == disks[1]


# ---- the seed: the command line wins over the file ------------------------------------------------

SEEDED = '''[host]
logical_processors = 1
memory = "256MiB"
{seed}
[[vm]]
name = "a"
memory = "8MiB"
workload = {{ kind = "disk-io", queue_depth = 2 }}
disks = [ {{ path = "a.vhd", size = "4MiB" }} ]
'''


def test_seed_on_the_command_line_wins_over_the_files(tmp_path, capsys):
    def run_in(name, seed_line, *argv):
        (tmp_path / name).mkdir()
        cfg = tmp_path / name / "host.toml"
        cfg.write_text(SEEDED.format(seed=seed_line))
        return run_json(capsys, str(cfg), "--for", "300ms", "--workdir", str(tmp_path / name / "run"), *argv)

    file_42_cli_7 = run_in("a", "seed = 42", "--seed", "7")
    file_7 = run_in("b", "seed = 7")
    file_42 = run_in("c", "seed = 42")
    no_seed = run_in("d", "")
    assert file_42_cli_7["seed"] == 7 and file_7["seed"] == 7 and file_42["seed"] == 42 and no_seed["seed"] == 0
    # It really ran with 7: the disk-io workload wrote where the seed's generator chose (into the
    # VM's run disk: the configured a.vhd is its base, which a run never writes).
    assert _contents(_run_disk(tmp_path / "b", "a")) != _contents(_run_disk(tmp_path / "d", "a")), "no disk writes, or no seed"
    assert _contents(_run_disk(tmp_path / "a", "a")) == _contents(_run_disk(tmp_path / "b", "a"))
    assert _contents(_run_disk(tmp_path / "c", "a")) != _contents(_run_disk(tmp_path / "b", "a"))


def _run_disk(root, vm, index=0):
    """Disk `index` of `vm` as the run under `root` left it (<workdir>/<vm>/disk<i>.vhd)."""
    (path,) = root.rglob(f"{vm}/disk{index}.vhd")
    return path


def _contents(path):
    import hashlib

    from drivers.storage.vhd import VirtualDisk
    h = hashlib.blake2b()
    with VirtualDisk.open(str(path), read_only=True) as d:
        for off, n in d.own_ranges():
            h.update(off.to_bytes(8, "little") + d.read(off, n))
    return h.hexdigest()


# ---- command-line values get the file's checks ----------------------------------------------------

@pytest.mark.parametrize("argv, message", [
    (["--seed", "-5"], "--seed: expected an integer from 0 to 18446744073709551615, got -5"),
    (["--seed", str(2**64)], "--seed: expected an integer from 0 to 18446744073709551615"),
    (["--seed", "seven"], '--seed: expected an integer from 0 to 18446744073709551615, got "seven"'),
    (["--for", "5"], '--for: expected a duration with a unit, such as "1.5s" or "10ms", got "5"; did you mean "5s"?'),
    (["--for", "soon"], '--for: expected a duration such as "1.5s"'),
])
def test_bad_command_line_values_are_refused_before_anything_is_made(tmp_path, capsys, argv, message):
    work = tmp_path / "w"
    assert main(["run", "--workdir", str(work), *argv]) == 2
    err = capsys.readouterr().err
    assert err == f"hvsim run: {message}" + err[len(f"hvsim run: {message}"):] and err.count("\n") == 1
    assert not work.exists()


# ---- output paths are checked before the run ------------------------------------------------------

@pytest.mark.parametrize("option, where, message", [
    ("--log", "missing/log.jsonl", "no directory"),
    ("--trace", "a-file/trace.json", "not a directory"),
    ("--pcap", "a-dir", "is a directory"),
    ("--workdir", "a-file/work", "is not a directory"),
])
def test_unusable_output_paths_are_one_line_errors_before_the_run(tmp_path, capsys, option, where, message):
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "a-dir").mkdir()
    before = sorted(tmp_path.rglob("*"))
    argv = ["run", "--for", "100ms", option, str(tmp_path / where)]
    if option != "--workdir":
        argv += ["--workdir", str(tmp_path / "w")]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"hvsim run: {option} {tmp_path / where}: ") and message in captured.err
    assert captured.err.count("\n") == 1                 # one line, no traceback
    assert sorted(tmp_path.rglob("*")) == before         # nothing made: no work directory, no disks


def test_an_existing_disk_of_another_size_is_refused_before_the_run(tmp_path, capsys):
    from drivers.storage.vhd import VirtualDisk
    VirtualDisk.create(str(tmp_path / "a.vhd"), 2 * 1024 * 1024, "dynamic").close()
    cfg = tmp_path / "host.toml"
    cfg.write_text(SEEDED.format(seed=""))
    assert main(["run", str(cfg), "--for", "100ms"]) == 2
    assert "vm[0].disks[0].size: expected the size of the existing" in capsys.readouterr().err


def test_a_timeline_that_cannot_run_is_refused_before_the_run(tmp_path, capsys):
    cfg = tmp_path / "host.toml"
    cfg.write_text(SEEDED.format(seed="") + '[[at]]\ntime = "1s"\naction = "restore"\nvm = "a"\n')
    assert main(["run", str(cfg), "--for", "2s"]) == 2
    err = capsys.readouterr().err
    assert f"{cfg}: at[0].action: expected an action VM \"a\" can take at 1s" in err and "a save first" in err
    assert not (tmp_path / "a.vhd").exists()


# ---- a run that stops early still gives its records -----------------------------------------------

def _records_are_whole(log, trace):
    events = [json.loads(line) for line in log.read_text().splitlines()]
    assert events and all("t_ns" in e for e in events)
    assert any(e.get("ph") == "X" for e in json.loads(trace.read_text())["traceEvents"])
    return events


def test_a_timeline_action_that_fails_in_the_run_gives_the_summary_so_far_and_exit_1(tmp_path, capsys):
    # Stopped at 500 ms, the VM is still Stopping (its guest is shutting down) when the file starts it
    # again: the file cannot know that, the run finds it out.
    cfg = tmp_path / "host.toml"
    cfg.write_text(SEEDED.format(seed="") + '[[at]]\ntime = "500ms"\naction = "stop"\nvm = "a"\n'
                                            '[[at]]\ntime = "500ms"\naction = "start"\nvm = "a"\n')
    log, trace = tmp_path / "log.jsonl", tmp_path / "trace.json"
    assert main(["run", str(cfg), "--for", "2s", "--json", "--log", str(log), "--trace", str(trace)]) == 1
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert summary["outcome"]["status"] == "failed" and summary["simulated_ns"] == 500_000_000
    assert "start of vm 'a' failed" in summary["outcome"]["reason"]
    assert captured.err.startswith("hvsim run: failed at 0.5 s: at 0.5s: start of vm 'a' failed")
    assert "Traceback" not in captured.err
    events = _records_are_whole(log, trace)
    assert events[-1]["event"] == "run.end" and events[-1]["status"] == "failed"


def test_an_error_from_the_run_is_reported_naming_the_vm(tmp_path, capsys, monkeypatch):
    """Whatever error reaches the command from the run (here, a guest's, as the run loop reports
    it: by partition id) is reported with the VM's name, after the summary and the records."""
    from hypervisor.guest import GuestError
    from partitions.management import ManagedHost

    real_run = ManagedHost.run

    def run_then_fail(self, until, **kw):
        real_run(self, "300ms", **kw)
        pid = self.vms["a"].partition.id
        raise GuestError(pid, 0, "RuntimeError: no", f"the guest on VP 0 of partition {pid} raised RuntimeError: no")
    monkeypatch.setattr(ManagedHost, "run", run_then_fail)
    cfg = tmp_path / "host.toml"
    cfg.write_text(SEEDED.format(seed=""))
    log, trace = tmp_path / "log.jsonl", tmp_path / "trace.json"
    assert main(["run", str(cfg), "--json", "--log", str(log), "--trace", str(trace)]) == 1
    captured = capsys.readouterr()
    outcome = json.loads(captured.out)["outcome"]
    assert outcome["status"] == "failed" and outcome["reason"].startswith("vm 'a': the guest on VP 0 of partition")
    assert captured.err.startswith("hvsim run: failed at 0.3 s: vm 'a': ") and "Traceback" not in captured.err
    _records_are_whole(log, trace)


def test_ctrl_c_stops_the_run_with_the_summary_so_far_and_exit_130(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    log, trace = tmp_path / "log.jsonl", tmp_path / "trace.json"
    proc = subprocess.Popen([sys.executable, "-m", "partitions.cli", "run", "--for", "60s", "--json",
                             "--log", str(log), "--trace", str(trace), "--workdir", str(tmp_path / "w")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        while not log.exists() and proc.poll() is None:   # the log is opened once Ctrl-C is handled
            time.sleep(0.02)
        assert proc.poll() is None
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err
    summary = json.loads(out)
    assert summary["outcome"] == {"status": "interrupted", "reason": "Ctrl-C"}
    assert summary["simulated_ns"] < 60_000_000_000 and {v["Name"] for v in summary["vms"]} == {"web", "db", "batch"}
    assert "hvsim run: interrupted at" in err and "Traceback" not in err
    events = [json.loads(line) for line in log.read_text().splitlines()]
    assert events[-1]["event"] == "run.end" and events[-1]["status"] == "interrupted"
    assert "traceEvents" in json.loads(trace.read_text())


def test_version(capsys):
    from importlib import metadata
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == f"hvsim {metadata.version('hvsim')} (core ABI 1)\n"
