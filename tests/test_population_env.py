"""``PopulationEnv`` (``envs/population.py``): S members x K MetaWorld tasks, each member stepping
exactly like ``MultiTaskEnv(benchmark, seed)`` alone whatever the workers, the local shard and the
members beside it; a member's env state is a single run's and moves both ways; clear errors.

The single-env references (MT10, seeds 3, 5 and 8, episodes of 7 steps so that every task resets
three times) are played once per module; MetaWorld's goal sampling is cached per seed, so the
populations reuse the references' goal sets."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest

from mtrl.envs.metaworld import MultiTaskEnv, StepInFlightError, StepResult
from mtrl.envs.population import PopulationEnv
from mtrl.envs.task_costs import STEP_MS
from mtrl.envs.workers import EnvWorkerError, ParallelMultiTaskEnv
from tests.helpers import through_torch_save
from tests.test_envs import assert_same_steps
from tests.test_resume import _assert_same_tensors

SEEDS = [3, 5, 8]
EPISODE = 7
STEPS = 25
MID = 12  # mid-episode: the second episode's fifth step


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Each seed's single ``MultiTaskEnv`` played alone: first observations, steps, and its
    ``state_dict`` after ``MID`` and after ``STEPS`` steps; the actions [STEPS, S, K, A]."""
    out = {"obs": [], "steps": [], "mid": [], "end": []}
    for s, seed in enumerate(SEEDS):
        env = MultiTaskEnv("MT10", seed=seed, max_episode_steps=EPISODE)
        if s == 0:
            rng = np.random.default_rng(0)
            shape = (STEPS, len(SEEDS), env.num_tasks, env.action_dim)
            out["actions"] = rng.uniform(env.action_low, env.action_high, size=shape).astype(np.float32)
        out["obs"].append(env.reset())
        steps = [env.step(a) for a in out["actions"][:MID, s]]
        out["mid"].append(through_torch_save(env.state_dict()))
        steps += [env.step(a) for a in out["actions"][MID:, s]]
        out["end"].append(through_torch_save(env.state_dict()))
        out["steps"].append(steps)
        env.close()
    return out


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # worker processes keep this directory, where MuJoCo may write its log


@pytest.mark.parametrize("workers, local_shard", [(1, True), (2, True), (2, False)])
def test_every_member_steps_exactly_like_its_seed_alone(reference, workers, local_shard, in_tmp):
    env = PopulationEnv("MT10", SEEDS, workers=workers, local_shard=local_shard, max_episode_steps=EPISODE)
    try:
        assert (env.members, env.seeds, env.num_tasks, env.obs_dim, env.action_dim) == (3, SEEDS, 10, 39, 4)
        assert env.workers == workers and len(env.pids) == workers - local_shard
        rows = sorted(r for shard in env._shards for r in shard)
        assert rows == list(range(30))  # every (member, task) row once
        if workers == 2:  # balanced by step cost over all rows, members mixed within a shard
            loads = [sum(STEP_MS[env.task_names[r % 10]] for r in shard) for shard in env._shards]
            assert max(loads) - min(loads) <= max(STEP_MS[name] for name in env.task_names)
            assert all(len({r // 10 for r in shard}) == 3 for shard in env._shards)
        assert np.array_equal(env.reset(), np.stack(reference["obs"]))
        for t, actions in enumerate(reference["actions"]):
            results = env.step(actions)
            assert isinstance(results, list) and len(results) == 3 and all(isinstance(r, StepResult) for r in results)
            for s in range(3):
                assert_same_steps([results[s]], [reference["steps"][s][t]])
            if t + 1 == MID:  # a member's state is its single env's, mid-episode
                for s in range(3):
                    _assert_same_tensors(through_torch_save(env.member_state_dict(s)), reference["mid"][s], f"member {s}")
    finally:
        env.close()


def test_member_states_and_single_run_states_move_both_ways(reference, in_tmp):
    """Single envs' states (mid-episode) load into members of a population of other members, in
    another order and another worker layout, which continue exactly; the members' states at the
    end are the single envs', and load into a single env (and a ParallelMultiTaskEnv) that continues
    like the population member."""
    env = PopulationEnv("MT10", [8, 3], workers=2, local_shard=False, max_episode_steps=EPISODE, spin_ms=0)
    single = MultiTaskEnv("MT10", seed=3, max_episode_steps=EPISODE)
    try:
        env.reset()
        for s, seed in enumerate([8, 3]):
            state = reference["mid"][SEEDS.index(seed)]
            assert np.array_equal(env.load_member_state_dict(s, state), state["obs"].numpy())
        for t in range(MID, STEPS):
            results = env.step(reference["actions"][t, [2, 0]])
            for s, i in enumerate([2, 0]):
                assert_same_steps([results[s]], [reference["steps"][i][t]])
        for s, i in enumerate([2, 0]):
            _assert_same_tensors(through_torch_save(env.member_state_dict(s)), reference["end"][i], f"member {s}")

        single.reset()
        state = through_torch_save(env.member_state_dict(1))  # seed 3's member resumed as a single run
        assert np.array_equal(single.load_state_dict(state), state["obs"].numpy())
        actions = np.random.default_rng(1).uniform(-1, 1, size=(9, 2, 10, 4)).astype(np.float32)
        population_steps = [env.step(a)[1] for a in actions]
        assert_same_steps([single.step(a[1]) for a in actions], population_steps)
        # and the same member state format as a ParallelMultiTaskEnv's: its state loads into a member
        parallel = ParallelMultiTaskEnv("MT10", seed=3, workers=1, local_shard=True, max_episode_steps=EPISODE)
        try:
            parallel.load_state_dict(single.state_dict())
            env.load_member_state_dict(1, parallel.state_dict())
            _assert_same_tensors(env.member_state_dict(1), parallel.state_dict(), "member 1")
            more = actions[::-1].copy()
            assert_same_steps([env.step(a)[1] for a in more], [parallel.step(a[1]) for a in more])
        finally:
            parallel.close()
    finally:
        env.close()
        single.close()


def test_bad_input_is_a_clear_error(in_tmp):
    with pytest.raises(ValueError, match=r"seeds must name at least one member, got \[\]"):
        PopulationEnv("MT1-reach-v3", [])
    with pytest.raises(ValueError, match=r"seeds must be distinct, got \[1, 2, 1\] \(1 repeated\)"):
        PopulationEnv("MT1-reach-v3", [1, 2, 1])
    with pytest.raises(ValueError, match=r"seeds must be ints >= 0, got 1.5"):
        PopulationEnv("MT1-reach-v3", [1, 1.5])
    with pytest.raises(ValueError, match=r"goal_seeds must have one entry per seed \(2\), got 1"):
        PopulationEnv("MT1-reach-v3", [1, 2], goal_seeds=[1])
    env = PopulationEnv("MT1-reach-v3", [0, 1], max_episode_steps=5)
    try:
        env.reset()
        with pytest.raises(ValueError, match=r"actions must have shape \(2, 1, 4\), got \(1, 4\)"):
            env.step(np.zeros((1, 4)))
        with pytest.raises(ValueError, match=r"actions must have shape \(2, 1, 4\), got \(3, 1, 4\)"):
            env.step_async(np.zeros((3, 1, 4)))
        with pytest.raises(ValueError, match=r"member must be an int in \[0, 2\), got 2"):
            env.member_state_dict(2)
        with pytest.raises(ValueError, match="environment state is for 10 tasks, this env has 1"):
            env.load_member_state_dict(0, {"task_rng": np.zeros((10, 10))})
        env.step_async(np.zeros((2, 1, 4)))  # in flight: a member's state belongs to no step
        for request in (lambda: env.member_state_dict(0), lambda: env.load_member_state_dict(0, {"task_rng": np.zeros((1, 10))}), env.reset):
            with pytest.raises(StepInFlightError, match="a step is in flight"):
                request()
        assert len(env.step_wait()) == 2
    finally:
        env.close()


def test_members_with_goal_seeds_and_heldout_goals_step_like_their_single_envs(in_tmp):
    """An evaluation population: own seeds, the goal sets of other seeds (or their own), held out."""
    env = PopulationEnv("MT1-reach-v3", [10, 11], goal_seeds=[0, None], heldout_goals=True, workers=2, max_episode_steps=5)
    singles = [MultiTaskEnv("MT1-reach-v3", seed, goal_seed=goal_seed, heldout_goals=True, max_episode_steps=5) for seed, goal_seed in ((10, 0), (11, 11))]
    try:
        assert env.goal_seeds == [0, 11] and len(env.pids) == 1
        assert np.array_equal(env.reset(), np.stack([single.reset() for single in singles]))
        actions = np.random.default_rng(2).uniform(-1, 1, size=(12, 2, 1, 4)).astype(np.float32)
        steps = [env.step(a) for a in actions]
        for s, single in enumerate(singles):
            assert_same_steps([step[s] for step in steps], [single.step(a[s]) for a in actions])
            _assert_same_tensors(env.member_state_dict(s), single.state_dict(), f"member {s}")
    finally:
        env.close()
        for single in singles:
            single.close()


def test_a_killed_worker_is_a_clear_error_naming_its_member_rows(in_tmp):
    # two rows of equal cost over two shards: member 0 in this process, member 1 in the worker
    env = PopulationEnv("MT1-reach-v3", [0, 1], workers=2, max_episode_steps=5)
    try:
        env.reset()
        env.step(np.zeros((2, 1, 4)))
        (pid,) = env.pids
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(EnvWorkerError, match=r"env worker 0 \(pid \d+, member 1 \(seed 1\) tasks reach-v3\) died \(signal SIGKILL\) during 'step'"):
            env.step(np.zeros((2, 1, 4)))
    finally:
        env.close()
