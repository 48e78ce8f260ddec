"""`mtrl evaluate --protocol metaworld`: MetaWorld's own `evaluation` on MetaWorld's vector env,
with our policies behind the `MetaWorldAgent` adapter.

* stub policies through the real function: one that drives the reach hand to the goal always
  succeeds (1.0), one that never moves never does (0.0);
* a real MT10 quick agent: ten task rates over 50 episodes each, computed by MetaWorld's function;
* the MetaWorld env of a run's seed draws from the same goal set as our training env;
* the adapter hands each task its own observation and code, whatever MetaWorld's row order.
"""

from __future__ import annotations

import json
import pickle

import metaworld.evaluation
import numpy as np
import pytest

from mtrl.envs.metaworld import MultiTaskEnv, benchmark_task_names
from mtrl.config import apply_overrides, config_from_dict
from mtrl.evaluate import MetaWorldAgent, env_task_names, evaluate_metaworld, make_metaworld_envs, metaworld_obs_dim
from mtrl.rollouts import evaluate_run_metaworld
from mtrl.train import train
from tests.helpers import reach_controller

MT10 = benchmark_task_names("MT10")


def still(obs: np.ndarray) -> np.ndarray:
    return np.zeros((obs.shape[0], 4), dtype=np.float32)


@pytest.fixture(scope="module")
def reach_envs():
    envs = make_metaworld_envs("MT1-reach-v3", seed=0, max_episode_steps=100)
    yield envs
    envs.close()


@pytest.mark.parametrize("policy, expected", [(reach_controller, 1.0), (still, 0.0)], ids=["to-goal", "still"])
def test_stub_policies_score_one_and_zero_through_metaworlds_function(reach_envs, policy, expected):
    result = evaluate_metaworld(policy, reach_envs, ["reach-v3"], obs_dim=39, episodes_per_task=10)
    assert result.success_rate.tolist() == [expected] and result.mean_success == expected
    assert result.to_json()["success"] == {"reach-v3": expected} and result.mean_return > 0


def test_adapter_routes_each_metaworld_row_to_its_own_task_code():
    names = ["a-v3", "b-v3", "c-v3"]
    rows = ["c-v3", "a-v3", "b-v3"]  # MetaWorld's row order differs from ours
    seen = {}

    def policy(obs):  # row k must hold task k's observation: mark it in the action
        seen["obs"] = obs.copy()
        return np.arange(3, dtype=np.float32)[:, None] * np.ones((3, 4), dtype=np.float32)

    agent = MetaWorldAgent(policy, names, rows, obs_dim=2)
    raw = np.array([[20.0, 21.0], [0.0, 1.0], [10.0, 11.0]])  # row r carries task rows[r]
    one_hot = np.eye(3)  # row r is MetaWorld env r
    actions = agent.eval_action(np.concatenate([raw, one_hot], axis=1))
    assert seen["obs"].tolist() == [[0.0, 1.0], [10.0, 11.0], [20.0, 21.0]]  # in our order a, b, c
    assert actions[:, 0].tolist() == [2.0, 0.0, 1.0]  # c's action to row 0, a's to row 1, b's to row 2
    with pytest.raises(ValueError, match="expected 2 or 2 \\+ a 3-task one-hot"):
        agent.eval_action(np.zeros((3, 4)))
    with pytest.raises(ValueError, match="trained on"):
        MetaWorldAgent(policy, names, ["a-v3", "b-v3", "d-v3"], obs_dim=2)


def test_unknown_benchmark_and_autoreset_are_refused():
    with pytest.raises(ValueError, match="MT10, MT50 and MT1-<task>; got benchmark 'Point-4'"):
        make_metaworld_envs("Point-4", seed=0)
    with pytest.raises(ValueError, match="same_step, next_step"):
        make_metaworld_envs("MT10", seed=0, autoreset="never")


@pytest.fixture(scope="module")
def quick_mt10_run(tmp_path_factory):
    """An MT10 agent from configs/quick.yaml, shortened: 100 steps of 20-step episodes."""
    import yaml
    from pathlib import Path

    base = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs" / "quick.yaml").read_text())
    cfg = config_from_dict(apply_overrides(base, [
        "seed=4", "device=cpu", "env.max_episode_steps=20", "train.total_steps=100", "train.warmup_steps=60",
        "train.eval_every=100", "train.log_every=50", "train.progress=false", "checkpoint.every=0",
    ]))
    run_dir = tmp_path_factory.mktemp("quick_mt10")
    env = MultiTaskEnv("MT10", seed=cfg.seed, max_episode_steps=20)
    eval_env = MultiTaskEnv("MT10", seed=cfg.seed + 10_000, max_episode_steps=20, terminate_on_success=True)
    train(cfg, run_dir, envs=(env, eval_env))
    eval_env.close()
    yield run_dir, cfg, env
    env.close()


def test_quick_mt10_agent_gets_ten_rates_from_metaworlds_function_over_50_episodes(quick_mt10_run, monkeypatch):
    run_dir, _, _ = quick_mt10_run
    calls = []
    real = metaworld.evaluation.evaluation

    def spy(agent, envs, num_episodes):  # the real function, recording how it was called and what it said
        out = real(agent, envs, num_episodes)
        calls.append((num_episodes, envs.num_envs, out))
        return out

    monkeypatch.setattr(metaworld.evaluation, "evaluation", spy)
    result = evaluate_run_metaworld(run_dir, episodes=50, device="cpu")
    (num_episodes, num_envs, (mean_success, mean_return, per_task, returns)), = calls
    assert (num_episodes, num_envs) == (50, 10)
    assert all(len(returns[name]) == 50 for name in MT10)
    payload = result.to_json()
    assert list(payload) == ["protocol", "episodes_per_task", "mean_success", "success", "mean_return"]
    assert payload["protocol"] == "metaworld" and payload["episodes_per_task"] == 50
    assert list(payload["success"]) == MT10 and payload["success"] == per_task
    assert all(round(rate * 50) == rate * 50 for rate in payload["success"].values())  # k / 50
    assert payload["mean_success"] == pytest.approx(mean_success) and payload["mean_return"] == pytest.approx(mean_return)
    json.dumps(payload)


def test_metaworld_env_of_the_run_seed_has_the_training_goal_set(quick_mt10_run):
    """gymnasium.make_vec("Meta-World/MT10", seed=s) samples its goals with metaworld.MT10(seed=s),
    the call our training env makes: same 50 goal variations per task, in the same order."""
    _, cfg, env = quick_mt10_run
    envs = make_metaworld_envs("MT10", seed=cfg.seed, max_episode_steps=20)
    try:
        assert env_task_names(envs) == MT10 and metaworld_obs_dim(envs, "MT10") == 39
        for name, tasks, ours in zip(MT10, envs.get_attr("tasks"), env.goal_sets):
            theirs = np.array([pickle.loads(t.data)["rand_vec"] for t in tasks])
            mine = np.array([pickle.loads(t.data)["rand_vec"] for t in ours])
            assert theirs.shape == (50, mine.shape[1]) and np.array_equal(theirs, mine), name
    finally:
        envs.close()
