"""`hvsim run`: the boot summary of the default host."""
import json

from partitions.cli import main


def test_default_host_boots_runs_and_reports(capsys):
    assert main(["run", "--for", "200ms", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["host"]["logical_processors"] == 4
    assert out["simulated_ns"] == 200_000_000
    (vm,) = out["vms"]
    assert vm["state"] == "initialized" and vm["vps"] == 2
    # Two VPs 60 % busy on a 4-LP host: 30 % of the host.
    assert abs(vm["cpu_percent"] - 30.0) < 1.0


def test_same_seed_same_trace(capsys):
    main(["run", "--for", "100ms", "--json"])
    a = json.loads(capsys.readouterr().out)["trace_digest"]
    main(["run", "--for", "100ms", "--json"])
    assert json.loads(capsys.readouterr().out)["trace_digest"] == a


def test_bad_duration_is_a_clear_error(capsys):
    assert main(["run", "--for", "soon"]) == 2
    assert "--for" in capsys.readouterr().err
