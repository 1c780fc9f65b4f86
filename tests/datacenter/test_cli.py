"""`hvsim run` and `hvsim check` with a datacenter file: per-host summaries, the links and the
digest; --for, --seed, --log naming hosts; a bad file is one line and exit status 2."""
import json
from pathlib import Path

import pytest

from partitions.cli import main

EXAMPLE = str(Path(__file__).resolve().parents[2] / "examples" / "two-hosts.toml")


def run_json(capsys, *argv):
    assert main(["run", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_the_example_runs_with_per_host_summaries_links_and_a_digest(tmp_path, capsys):
    log = tmp_path / "log.jsonl"
    s = run_json(capsys, EXAMPLE, "--for", "2.2s", "--workdir", str(tmp_path / "w"), "--log", str(log))
    assert s["simulated_ns"] == 2_200_000_000 and s["outcome"] == {"status": "completed"}
    assert set(s["hosts"]) == {"host-a", "host-b"}
    vms = {h: {v["Name"]: v for v in s["hosts"][h]["vms"]} for h in s["hosts"]}
    # cache moved to host-b at 1 s (a live migration)
    assert set(vms["host-a"]) == {"web", "kv"} and set(vms["host-b"]) == {"batch", "cache"}
    assert vms["host-b"]["batch"]["State"] == "Paused"             # the timeline's pause at 2 s, on host-b
    assert vms["host-a"]["web"]["State"] == "Running" and vms["host-a"]["web"]["CPUUsage(%)"] > 5
    assert all(h["simulated_ns"] == s["simulated_ns"] for h in s["hosts"].values())
    assert s["hosts"]["host-a"]["switches"]["lan"]["forwarded"] > 100   # web's requests to kv
    (link,) = s["links"]
    assert link["hosts"] == ["host-a", "host-b"] and link["bandwidth_bps"] == 10**10 and link["latency_ns"] == 50_000
    assert s["window_ns"] == 50_000 and s["windows"] == 2_200_000_000 // 50_000
    assert len(s["trace_digest"]) == 32
    events = [json.loads(line) for line in log.read_text().splitlines()]
    assert events[-1]["event"] == "run.end" and events[-1]["status"] == "completed"
    assert all(e.get("host") in ("host-a", "host-b") for e in events[:-1])
    pause = next(e for e in events if e["event"] == "vm.action")
    assert (pause["host"], pause["vm"], pause["t_ns"]) == ("host-b", "batch", 2_000_000_000)


def test_seed_and_duration_from_the_command_line(tmp_path, capsys):
    from tests.datacenter.test_determinism import WITH_DISK   # the example with random disk I/O
    cfg = tmp_path / "dc.toml"
    cfg.write_text(WITH_DISK)
    a = run_json(capsys, str(cfg), "--for", "200ms", "--workdir", str(tmp_path / "a"), "--seed", "9")
    b = run_json(capsys, str(cfg), "--for", "200ms", "--workdir", str(tmp_path / "b"), "--seed", "9")
    c = run_json(capsys, str(cfg), "--for", "200ms", "--workdir", str(tmp_path / "c"))
    assert a["seed"] == 9 and c["seed"] == 0 and a["simulated_ns"] == 200_000_000
    assert a["trace_digest"] == b["trace_digest"] != c["trace_digest"]


def test_the_text_summary_shows_each_host_and_the_link(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "120")   # no wrapped cells
    assert main(["run", EXAMPLE, "--for", "100ms", "--workdir", str(tmp_path / "w")]) == 0
    out = capsys.readouterr().out
    assert "Get-VM on host-a" in out and "Get-VM on host-b" in out and "batch" in out
    assert "host-a -> host-b" in out and "trace digest" in out


@pytest.mark.parametrize("edit, message", [
    (('hosts = ["host-a", "host-b"]', 'hosts = ["host-a", "host-c"]'),
     'link[0].hosts[1]: expected the name of a [[host]] (one of "host-a", "host-b"), got "host-c"'),
    (('latency = "50us"', 'latency = "0s"'), "link[0].latency: expected a positive duration"),
    (('name = "batch"', 'name = "web"'), "host[1].vm[0].name: expected a VM name"),
    (('memory = "2GiB"', 'memory = "32GiB"'), "host[1].vm[0].memory: expected VM memory that fits"),
])
def test_a_bad_datacenter_file_is_one_line_and_exit_2(tmp_path, capsys, edit, message):
    bad = tmp_path / "bad.toml"
    text = Path(EXAMPLE).read_text()
    assert edit[0] in text
    bad.write_text(text.replace(*edit))
    for command in ("run", "check"):
        assert main([command, str(bad), "--workdir", str(tmp_path / "w")]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"hvsim {command}: {bad}: {message}") and err.count("\n") == 1, err
    assert not (tmp_path / "w").exists()


def test_check_describes_a_datacenter_file(capsys):
    assert main(["check", EXAMPLE]) == 0
    assert capsys.readouterr().out == (f"{EXAMPLE}: ok — a datacenter of 2 hosts, 1 link, 4 VMs, 1 switch, "
                                       "3 timeline actions\n")


def test_a_trace_and_a_capture_per_host(tmp_path, capsys):
    trace, pcap = tmp_path / "t.json", tmp_path / "p.pcap"
    run_json(capsys, EXAMPLE, "--for", "300ms", "--trace", str(trace), "--pcap", str(pcap),
             "--workdir", str(tmp_path / "w"))
    for host, vms in (("host-a", {"web", "kv", "cache"}), ("host-b", {"batch"})):
        doc = json.loads((tmp_path / f"t.json.{host}").read_text())
        slices = [e for e in doc["traceEvents"] if e.get("ph") == "X"]
        assert slices and max(e["ts"] + e["dur"] for e in slices) > 250_000       # us: the whole run
        running = {e["name"].split("/")[0] for e in slices}                       # "web/vp0": VM and VP
        assert vms <= running and not ({"web", "kv", "cache", "batch"} - vms) & running
    assert (tmp_path / "p.pcap.host-a").stat().st_size > 24 and not (tmp_path / "p.pcap.host-b").exists()
    assert not trace.exists()
    # An unwritable one is refused before anything is made.
    assert main(["run", EXAMPLE, "--trace", str(tmp_path / "no" / "t.json"), "--workdir", str(tmp_path / "x")]) == 2
    assert "--trace" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_an_action_that_fails_on_one_host_gives_the_summary_so_far_and_exit_1(tmp_path, capsys):
    # Stopped at 500 ms, batch is still Stopping (its guest is shutting down) when the file starts
    # it again: the run finds that out, on host-b.
    cfg = tmp_path / "dc.toml"
    cfg.write_text(Path(EXAMPLE).read_text() + '[[at]]\ntime = "500ms"\naction = "stop"\nvm = "batch"\n'
                                               '[[at]]\ntime = "500ms"\naction = "start"\nvm = "batch"\n')
    log = tmp_path / "log.jsonl"
    assert main(["run", str(cfg), "--for", "2s", "--json", "--log", str(log), "--workdir", str(tmp_path / "w")]) == 1
    captured = capsys.readouterr()
    s = json.loads(captured.out)
    assert s["outcome"]["status"] == "failed"
    assert s["outcome"]["reason"].startswith("host 'host-b': at 0.5s: start of vm 'batch' failed")
    assert s["hosts"]["host-b"]["simulated_ns"] == 500_000_000 and set(s["hosts"]) == {"host-a", "host-b"}
    assert captured.err.startswith("hvsim run: failed at 0.5 s: host 'host-b': at 0.5s: start of vm 'batch'")
    assert "Traceback" not in captured.err
    events = [json.loads(line) for line in log.read_text().splitlines()]
    assert events[-1]["event"] == "run.end" and events[-1]["status"] == "failed"


def test_ctrl_c_stops_a_datacenter_with_the_summary_so_far_and_exit_130(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    log = tmp_path / "log.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "partitions.cli", "run", EXAMPLE, "--for", "600s", "--json",
                             "--log", str(log), "--workdir", str(tmp_path / "w")],
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
    s = json.loads(out)
    assert s["outcome"] == {"status": "interrupted", "reason": "Ctrl-C"}
    assert s["simulated_ns"] < 600_000_000_000 and set(s["hosts"]) == {"host-a", "host-b"}
    # Ctrl-C is heard between windows: every host stands where the datacenter does.
    assert all(h["simulated_ns"] == s["simulated_ns"] for h in s["hosts"].values())
    assert "hvsim run: interrupted at" in err and "Traceback" not in err
    events = [json.loads(line) for line in log.read_text().splitlines()]
    assert events[-1]["event"] == "run.end" and events[-1]["status"] == "interrupted"


def test_a_single_host_file_runs_as_before(tmp_path, capsys):
    # The default host as a file goes through the reader and the command's single-host path,
    # which now also read datacenter files; the built-in default (default_config) and a
    # ManagedHost made directly do not: all three give one digest and one summary shape.
    from partitions.config import DEFAULT_TOML, default_config
    from partitions.management import ManagedHost
    host = tmp_path / "host.toml"
    host.write_text(DEFAULT_TOML)
    from_file = run_json(capsys, str(host), "--for", "1s", "--seed", "7", "--workdir", str(tmp_path / "a"))
    built_in = run_json(capsys, "--for", "1s", "--seed", "7", "--workdir", str(tmp_path / "b"))
    direct = ManagedHost(default_config(tmp_path / "c"), seed=7, workdir=tmp_path / "c")
    direct.run("1s")
    assert from_file["trace_digest"] == built_in["trace_digest"] == direct.host.trace_digest().hex()
    direct.close()
    assert set(from_file) == set(built_in) and "hosts" not in from_file and "links" not in from_file
