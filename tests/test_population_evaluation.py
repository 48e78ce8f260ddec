"""Population evaluation (``mtrl.evaluate.evaluate_population``, ``mtrl.train.make_population_runner``):
member s of a population plays, episode for episode, its single run's evaluation (``evaluate_episodes``
on the evaluation env its own run builds: its seed, its goal sets), all members in one lock-step.

MT10 with 6-step episodes, 2 episodes per task, a fixed linear policy whose weights depend on the
member and the task; each row's action is computed from that row alone (an elementwise product and
a sum, no BLAS), so batch composition cannot change a bit.
"""

from __future__ import annotations

import numpy as np
import pytest

from mtrl.config import ConfigError, config_from_dict
from mtrl.envs.episodes import EpisodeRunner
from mtrl.evaluate import evaluate_episodes, evaluate_population
from mtrl.train import eval_goal_set, make_env, make_population_runner

SEEDS = [2, 5]
EVALUATION = 7  # the training step an evaluation is taken at
EPISODES = 2


def config(seed: int, **env):
    return config_from_dict({
        "seed": seed, "device": "cpu",
        "env": {"benchmark": "MT10", "max_episode_steps": 6, "eval_envs": 16, **env},
        "train": {"eval_episodes": EPISODES},
    })


def linear_policy(members: int, tasks: int = 10, obs_dim: int = 39, action_dim: int = 4):
    """``policy(obs, member_ids, task_ids)``: tanh of a seeded linear map of member ``m`` plus a bias of (m, task)."""
    rng = np.random.default_rng(0)
    weight = rng.normal(scale=2.0, size=(members, action_dim, obs_dim))
    bias = rng.normal(size=(members, tasks, action_dim))

    def policy(obs: np.ndarray, member_ids: np.ndarray, task_ids: np.ndarray) -> np.ndarray:
        pre = (obs.astype(np.float64)[:, None, :] * weight[member_ids]).sum(axis=-1) + bias[member_ids, task_ids]
        return np.tanh(pre).astype(np.float32)

    return policy


POLICY = linear_policy(len(SEEDS))


def member_policy(m: int):
    """Member ``m``'s policy as its single run has it: ``policy(obs, task_ids)``."""
    return lambda obs, task_ids: POLICY(obs, np.full(len(obs), m), task_ids)


@pytest.fixture(scope="module")
def single_runs():
    """Each seed's evaluation as its own run's trainer plays it (``mtrl.train.train``'s runner)."""
    results = []
    for m, seed in enumerate(SEEDS):
        cfg = config(seed)
        env = make_env(cfg, cfg.seed + 10_000, evaluation=True, **eval_goal_set(cfg))
        try:
            results.append(evaluate_episodes(member_policy(m), EpisodeRunner(env, cfg.env.eval_envs), seed, EVALUATION, EPISODES))
        finally:
            env.close()
    return results


def assert_same(population, single_runs):
    assert len(population) == len(single_runs)
    for got, want in zip(population, single_runs):
        assert got.task_names == want.task_names
        assert got.episode_return.shape == (10, EPISODES)
        np.testing.assert_array_equal(got.episode_success, want.episode_success)
        np.testing.assert_array_equal(got.episode_return, want.episode_return)
        np.testing.assert_array_equal(got.success_rate, want.success_rate)
        np.testing.assert_array_equal(got.mean_return, want.mean_return)


def test_each_member_plays_its_single_runs_evaluation(single_runs):
    runner = make_population_runner([config(seed) for seed in SEEDS])
    try:
        assert runner.members == 2 and runner.goal_sets_of(0) is not runner.goal_sets_of(1)
        joint = evaluate_population(POLICY, runner, SEEDS, EVALUATION, EPISODES)  # one policy call per lock-step
        assert_same(joint, single_runs)
        per_member = evaluate_population([member_policy(m) for m in range(len(SEEDS))], runner, SEEDS, EVALUATION, EPISODES)
        assert_same(per_member, single_runs)
        # the members' goal sets matter: member 1 on member 0's goals is not member 1's evaluation
        shared = EpisodeRunner(runner.env, runner.max_envs)
        wrong = evaluate_population(POLICY, shared, SEEDS, EVALUATION, EPISODES)
        np.testing.assert_array_equal(wrong[0].episode_return, single_runs[0].episode_return)
        assert not np.array_equal(wrong[1].episode_return, single_runs[1].episode_return)
        with pytest.raises(ValueError, match="goal sets for 2 members, got 3 seeds"):
            evaluate_population(POLICY, runner, [2, 5, 6], EVALUATION, EPISODES)
    finally:
        runner.env.close()


def test_members_in_env_worker_processes_play_their_single_runs_evaluation(single_runs):
    """``env.workers: 2`` (the local shard and one worker process) and another instance cap:
    the same episodes as the single runs in process."""
    runner = make_population_runner([config(seed, workers=2, eval_envs=30) for seed in SEEDS])
    try:
        assert runner.processes == 2
        assert_same(evaluate_population(POLICY, runner, SEEDS, EVALUATION, EPISODES), single_runs)
    finally:
        runner.env.close()


def test_population_members_must_share_their_env_settings():
    with pytest.raises(ConfigError, match="member 1's env settings differ"):
        make_population_runner([config(2), config(5, max_episode_steps=7)])
