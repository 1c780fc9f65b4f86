"""The soak run's smoke version (`make soak` is the real one): a few hundred steps of the isolation
machines through the soak runner, and whole hosts where one VM commits every misbehaviour of the
campaign while the others must keep their heartbeats and lose no echo request."""
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
