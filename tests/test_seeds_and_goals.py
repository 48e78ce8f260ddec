"""Seeds and goal sets (issue 21, part 4): AuxiLearn's combiner follows the run's seed and the
component; the held-out evaluation goals are disjoint from the training goals by construction and
are no other nearby seed's training goals; an older run that evaluated 'heldout' on the earlier
set is not silently switched; `mtrl evaluate --goals heldout` is refused where it cannot apply."""

from __future__ import annotations

import pickle
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from mtrl.cli import main as cli_main
from mtrl.config import ConfigError, config_from_dict
from mtrl.envs.metaworld import describe_goal_set, disjoint_goal_sets, heldout_goal_sets, heldout_seed, task_goal_sets
from mtrl.train import _build_aggregators, _check_eval_goals, aggregator_seed, build_envs, eval_goal_set


# ---- AuxiLearn's combiner -------------------------------------------------------------------------
def _auxilearn(run_seed: int, **options):
    cfg = config_from_dict({"seed": run_seed, "env": {"benchmark": "Point-3"},
                            "aggregator": {"name": "auxilearn", "options": options, "aggregate_temperature": True}})
    return _build_aggregators(cfg, 3)


def test_auxilearn_combiner_starts_from_the_run_seed_and_the_component():
    a, b, again = _auxilearn(0), _auxilearn(1), _auxilearn(0)
    phis = {(seed, c): aggs[c].phi for seed, aggs in ((0, a), (1, b)) for c in ("critic", "actor", "temperature")}
    assert len({tuple(phi.tolist()) for phi in phis.values()}) == 6  # every seed and component its own
    for c in ("critic", "actor", "temperature"):
        assert torch.equal(a[c].phi, again[c].phi)  # and reproducible
        assert a[c].seed == aggregator_seed(0, c)
    fixed = _auxilearn(0, seed=7)
    assert torch.equal(fixed["critic"].phi, fixed["actor"].phi) and fixed["critic"].seed == 7  # an explicit seed wins
    with pytest.raises(ValueError, match="component must be one of critic, actor, temperature"):
        aggregator_seed(0, "value")


# ---- held-out goals -----------------------------------------------------------------------------
def _keys(goal_sets):
    return [[np.asarray(pickle.loads(t.data)["rand_vec"]).tobytes() for t in goals] for goals in goal_sets]


def _fake_task(value: float):
    return SimpleNamespace(env_name="x", data=pickle.dumps({"rand_vec": np.array([value, 0.0])}))


def test_disjoint_goal_sets_replace_excluded_and_repeated_goals_from_the_next_draw():
    train = [[_fake_task(v) for v in (1, 2, 3)]]
    draws = {0: [[_fake_task(v) for v in (2, 4, 4, 3)]], 1: [[_fake_task(v) for v in (1, 5, 6)]]}
    calls = []

    def draw(attempt):
        calls.append(attempt)
        return draws[attempt]

    (goals,) = disjoint_goal_sets(train, draw, per_task=3)
    assert [pickle.loads(t.data)["rand_vec"][0] for t in goals] == [4.0, 5.0, 6.0]
    assert calls == [0, 1]
    with pytest.raises(RuntimeError, match="disjoint"):
        disjoint_goal_sets(train, lambda attempt: [[_fake_task(1)]], per_task=1, max_draws=3)


def test_heldout_goals_are_disjoint_from_training_and_no_nearby_seed_s_training_goals():
    seed, bench = 7, "MT1-reach-v3"
    heldout = _keys(heldout_goal_sets(bench, seed))[0]
    assert len(heldout) == len(set(heldout)) == 50
    for other in (seed, seed + 1, seed + 10_000):  # seed + 10000: the earlier held-out set
        assert not set(heldout) & set(_keys(task_goal_sets(bench, other))[0]), other
    assert not set(heldout) & set(_keys(heldout_goal_sets(bench, seed + 1))[0])  # each seed its own held-out set
    assert heldout_seed(seed) != heldout_seed(seed, 1) and all(isinstance(w, int) for w in heldout_seed(seed))


def test_heldout_evaluation_env_draws_from_the_heldout_set():
    cfg = config_from_dict({"seed": 2, "env": {"benchmark": "MT1-reach-v3", "eval_goals": "heldout"}})
    env, eval_env = build_envs(cfg)
    try:
        assert eval_goal_set(cfg) == {"goal_seed": 2, "heldout_goals": True}
        assert _keys(eval_env.goal_sets) == _keys(heldout_goal_sets("MT1-reach-v3", 2))
        assert _keys(env.goal_sets) == _keys(task_goal_sets("MT1-reach-v3", 2))
        assert describe_goal_set(eval_env.state_dict()) == "held-out goal set of seed 2"
    finally:
        env.close()
        eval_env.close()
    assert eval_goal_set(cfg, "train") == {"goal_seed": 2, "heldout_goals": False}


def test_a_run_that_evaluated_on_the_earlier_heldout_goals_is_not_switched_silently(tmp_path):
    cfg = config_from_dict({"seed": 2, "env": {"benchmark": "MT1-reach-v3", "eval_goals": "heldout"}})
    legacy = {"eval_env": {"goal_seed": torch.tensor([10_002])}}  # what such a run's checkpoint holds
    with pytest.raises(ConfigError, match="training goal set of seed 10002.*held-out goal set of seed 2.*--force"):
        _check_eval_goals(cfg, legacy, tmp_path, [], force=False)
    record = _check_eval_goals(cfg, legacy, tmp_path, [], force=True)
    assert record["change"] == "forced" and "10002" in record["note"]
    current = {"eval_env": {"goal_seed": torch.tensor([2]), "heldout_goals": torch.tensor([True])}}
    assert _check_eval_goals(cfg, current, tmp_path, [], force=False) is None
    train_goals = config_from_dict({"seed": 2, "env": {"benchmark": "MT1-reach-v3"}})
    assert _check_eval_goals(train_goals, {"eval_env": {"goal_seed": torch.tensor([2])}}, tmp_path, [], force=False) is None


# ---- mtrl evaluate --goals ----------------------------------------------------------------------
@pytest.mark.parametrize("extra", [["--protocol", "metaworld"], ["--video", "videos"]])
def test_evaluate_refuses_heldout_goals_where_it_plays_the_training_goals(extra, tmp_path, capsys):
    assert cli_main(["evaluate", str(tmp_path / "run"), "--goals", "heldout", *extra]) == 2
    err = capsys.readouterr().err
    assert "--goals heldout needs --protocol mtrl" in err and extra[0] in err
    assert not (tmp_path / "videos").exists()
