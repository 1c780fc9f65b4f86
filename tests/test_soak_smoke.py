"""The soak run's smoke version (`make soak` is the real one): a few hundred steps of the isolation
machines through the soak runner, and whole hosts where one VM commits every misbehaviour of the
campaign while the others must keep their heartbeats and lose no echo request; and a run stopped
early still prints what it ran."""
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bench import soak


@pytest.mark.parametrize("machine", soak.MACHINES)
def test_machines_run_through_the_soak_runner_and_count_their_steps(machine):
    result = soak.run_machine(machine, 60, seed=7, step_count=20)
    assert result["violations"] == []
    assert result["steps"] >= 60 and result["runs"] >= 1


@pytest.mark.parametrize("callback", soak.CALLBACKS)
def test_one_vm_doing_everything_wrong_costs_the_others_nothing(callback):
    campaign = soak.Campaign(seed=11, rounds=3, faults=list(soak.FAULTS), callback=callback)
    result = campaign.run()
    assert result["problems"] == []
    assert result["actions"] > 50                      # it did misbehave
    assert result["echoes"] > 0                        # and the others worked through it


def test_the_campaign_notices_a_well_behaved_vm_that_stops_answering():
    campaign = soak.Campaign(seed=5, rounds=0, faults=["synic_off"])
    for vm in campaign.vms:
        vm.start()
    campaign.host.run(campaign.host.now + 1_000_000_000)
    assert campaign.check({}, 0) == []
    victim = campaign.good()[0]
    before = campaign.send_echoes()
    victim.turn_off()
    campaign.host.run(campaign.host.now + 500_000_000)
    problems = campaign.check(before, 1)
    assert any(victim.name in p and "OFF" in p for p in problems)


@pytest.mark.parametrize("how", ["SIGTERM to the runner", "SIGINT to its process group"])
def test_a_soak_stopped_early_prints_the_steps_it_ran(how):
    """The run is far too long to finish: once a process has reported steps, the soak is stopped
    as a deadline or Ctrl-C would stop it; it must print the machine's table with at least the
    steps reported, say that it was stopped, and exit 130."""
    repo = Path(__file__).resolve().parent.parent
    proc = subprocess.Popen([sys.executable, "-m", "bench.soak", "--only", "machines", "--machines", "vmbus",
                             "--steps", str(10**9), "--jobs", "1", "--seed", "5", "--progress-every", "0"],
                            cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        seen = []
        for line in proc.stdout:
            seen.append(line)
            progress = re.match(r"soak: vmbus .*: ([\d,]+) steps", line)
            if progress:
                break
        assert progress, "".join(seen)
        if how.startswith("SIGTERM"):
            proc.send_signal(signal.SIGTERM)
        else:
            os.killpg(proc.pid, signal.SIGINT)
        rest = proc.stdout.read()
        code = proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    row = re.search(r"^vmbus\s+([\d,]+)\s+\d+\s", rest, re.M)
    assert row, rest
    assert int(row.group(1).replace(",", "")) >= int(progress.group(1).replace(",", ""))
    assert f"stopped early by {how.split()[0]}" in rest
    assert "Traceback" not in rest
    assert code == 130
