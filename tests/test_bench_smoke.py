"""Every benchmark runs at its tiny size and reports figures of the expected shape; a failing
benchmark is reported and the others go on. Structure only: no timing is asserted."""
from __future__ import annotations

import json
import sys
import types

import pytest

from bench import __main__ as runner
from bench.timing import Figure, Goal, failed


@pytest.fixture(scope="module")
def tiny():
    return runner.measure(runner.BENCHES, 1, "tiny")


def test_every_bench_reports_figures_without_error(tiny):
    assert list(tiny) == list(runner.BENCHES)
    for name, entry in tiny.items():
        assert entry["error"] is None, (name, entry["error"])
        assert entry["runs"] == 1 and entry["figures"], name
        for f in entry["figures"]:
            assert f["error"] is None, (name, f)
            assert f["value"]["min"] == f["value"]["median"] == f["value"]["max"] > 0, (name, f)
            assert f["unit"], (name, f)
            if f["baseline"] is not None:
                assert f["ratio"]["median"] > 0, (name, f)
            assert (f["goal"] is None) == (f["goal_met"] is None), (name, f)


def test_every_target_of_the_issue_has_a_figure_with_its_goal(tiny):
    goals = {f["goal"] for entry in tiny.values() for f in entry["figures"] if f["goal"]}
    for bench, module_goals in (
            ("hypercalls", ["GOAL_PYTHON", "GOAL_BATCH"]), ("storage", ["GOAL"]), ("memory", ["GOAL"]),
            ("simulation", ["GOAL_TIMERS", "GOAL_PYTHON"]), ("quick_migration", ["GOAL"]),
            ("migration", ["GOAL_DOWNTIME"]), ("emulated", ["IOPS_GOAL", "CPU_GOAL", "PPS_GOAL", "NET_CPU_GOAL"]), ("native", ["GOAL"]),
            ("api", ["GOAL", "GOAL_FLAT", "GOAL_PACE"])):
        module = sys.modules[f"bench.{bench}"]
        for g in module_goals:
            assert getattr(module, g).text in goals, (bench, g)
    for g in list(sys.modules["bench.channel"].GOALS.values()) + list(sys.modules["bench.host"].GOALS.values()):
        assert g.text in goals, g.text


def test_baselines_are_figures_of_the_same_run(tiny):
    for name, entry in tiny.items():
        names = {f["name"] for f in entry["figures"]}
        for f in entry["figures"]:
            if f["baseline"] not in (None, "real time", "host with no VMs", "1 GiB written", "published (Microsoft 2006)"):
                assert f["baseline"] in names, (name, f["baseline"])


def test_repeats_give_min_median_max(monkeypatch):
    values = iter([3.0, 1.0, 2.0])
    fake = types.ModuleType("bench.fake_ok")
    fake.__doc__ = "A fake benchmark."
    fake.run = lambda size: [Figure("x", next(values), "ops/s", "x", 1.0, Goal(">=", 2.5, "value", ">= 2.5"))]
    monkeypatch.setitem(sys.modules, "bench.fake_ok", fake)
    (entry,) = runner.measure(["fake_ok"], 3, "tiny").values()
    (f,) = entry["figures"]
    assert f["value"] == {"min": 1.0, "median": 2.0, "max": 3.0}
    assert f["runs"] == 3 and f["goal"] == ">= 2.5" and f["goal_met"] is False


def test_a_failing_bench_says_why_and_the_others_go_on(monkeypatch, capsys):
    broken = types.ModuleType("bench.fake_broken")
    broken.__doc__ = "Raises."
    calls = []

    def boom(size):
        calls.append(size)
        raise RuntimeError("no such device")

    broken.run = boom
    unbuildable = types.ModuleType("bench.fake_unbuildable")
    unbuildable.__doc__ = "Cannot be built."
    unbuildable.run = lambda size: [failed("big host", "cannot be built: out of flags", Goal(">=", 1, "value", "builds"))]
    monkeypatch.setitem(sys.modules, "bench.fake_broken", broken)
    monkeypatch.setitem(sys.modules, "bench.fake_unbuildable", unbuildable)
    results = runner.measure(["fake_broken", "fake_unbuildable", "ring"], 3, "tiny")
    assert "RuntimeError: no such device" in results["fake_broken"]["error"]
    assert calls == ["tiny"]  # a failure is not repeated
    (f,) = results["fake_unbuildable"]["figures"]
    assert f["error"] == "cannot be built: out of flags" and f["goal_met"] is False and f["runs"] == 1
    assert results["ring"]["error"] is None and results["ring"]["runs"] == 3
    runner.render(results, 3, "tiny")
    out = capsys.readouterr().out
    assert "no such device" in out and "cannot be built: out of flags" in out


def test_command_line_picks_benches_and_prints_json(capsys):
    assert runner.main(["ring", "--repeat", "1", "--size", "tiny", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert list(out) == ["ring"]
    with pytest.raises(SystemExit):
        runner.main(["no-such-bench"])
    assert runner.main(["--list"]) == 0
    assert capsys.readouterr().out.split() == list(runner.BENCHES)


def test_a_figure_that_fails_does_not_stop_the_others_being_repeated(monkeypatch):
    mixed = types.ModuleType("bench.fake_mixed")
    mixed.__doc__ = "One figure measured, one not."
    mixed.run = lambda size: [Figure("ok", 1.0, "ops/s"), failed("big", "cannot be built: no")]
    monkeypatch.setitem(sys.modules, "bench.fake_mixed", mixed)
    (entry,) = runner.measure(["fake_mixed"], 3, "tiny").values()
    ok, big = entry["figures"]
    assert entry["runs"] == 3 and ok["runs"] == 3 and ok["error"] is None
    assert big["error"] == "cannot be built: no" and big["goal_met"] is False


def test_a_host_that_cannot_be_built_says_why_and_is_built_once(monkeypatch):
    from bench import host
    monkeypatch.setattr(host, "_UNBUILDABLE", {})
    builds = []

    def build():
        builds.append(1)
        raise RuntimeError("no event flag left")

    goal = Goal(">=", 20, "value", "builds")
    for _ in range(2):
        (f,) = host.steady("huge host", build, 10, 10, goal, "note")
        assert f.error == "cannot be built: RuntimeError: no event flag left" and f.goal is goal
    assert builds == [1]


def test_a_goal_within_a_tolerance_judges_both_sides():
    goal = Goal("within", 0.10, "ratio", "within 10%")
    assert [goal.met(None, r) for r in (0.89, 0.9, 1.0, 1.1, 1.11)] == [False, True, True, True, False]
    assert goal.met(None, None) is None


def test_the_quick_migration_table_has_every_published_cell(tiny):
    from bench import quick_migration as qm
    assert len(qm.CELLS["default"]) == 15 and {m for m, _ in qm.CELLS["default"]} == set(qm.PUBLISHED)
    (figure,) = tiny["quick_migration"]["figures"]   # tiny: 512 MiB over 4 Gb FC, published 2 s
    assert figure["baseline"] == qm.BASELINE and "published 2 s" in figure["note"]
