"""Env worker processes (``envs/workers.py``): the same trajectories and states as the in-process
env, clean shutdown, signals ignored, and clear errors instead of hangs.

One in-process MT10 env and one with two workers are built once and shared; the fault tests use
one-task MT1 envs, which start in a few seconds."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest

from envs.metaworld import MultiTaskEnv
from envs.workers import EnvWorkerError, ParallelMultiTaskEnv, assign_tasks
from mtrl.config import ConfigError, config_from_dict
from mtrl.train import make_env
from tests.helpers import through_torch_save
from tests.test_envs import STEP_FIELDS, assert_same_steps, play, uniform_actions

EPISODE = 25


@pytest.fixture(scope="module")
def inprocess():
    env = MultiTaskEnv("MT10", seed=1, max_episode_steps=EPISODE)
    yield env
    env.close()


@pytest.fixture(scope="module")
def two_workers():
    env = ParallelMultiTaskEnv("MT10", seed=1, workers=2, max_episode_steps=EPISODE)
    yield env
    env.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_tasks_are_dealt_round_robin_at_most_one_worker_each():
    assert assign_tasks(10, 2) == [[0, 2, 4, 6, 8], [1, 3, 5, 7, 9]]
    assert assign_tasks(5, 3) == [[0, 3], [1, 4], [2]]
    assert assign_tasks(2, 16) == [[0], [1]]


def test_two_workers_step_exactly_like_the_in_process_env(inprocess, two_workers):
    assert two_workers.workers == 2 and len(set(two_workers.pids)) == 2
    for name in ("task_names", "num_tasks", "obs_dim", "action_dim"):
        assert getattr(two_workers, name) == getattr(inprocess, name), name
    assert np.array_equal(two_workers.action_low, inprocess.action_low)
    assert np.array_equal(two_workers.action_high, inprocess.action_high)
    assert np.array_equal(two_workers.reset(), inprocess.reset())
    actions = uniform_actions(inprocess, 2 * EPISODE + 7, seed=0)  # across two resets of every task
    assert_same_steps(play(two_workers, actions), play(inprocess, actions))


def test_state_moves_between_workers_and_the_in_process_env(inprocess, two_workers):
    """The state format does not depend on the worker count: either env resumes the other's
    episodes (mid-episode here) exactly."""
    two_workers.reset()
    play(two_workers, uniform_actions(two_workers, 11, seed=1))
    state = through_torch_save(two_workers.state_dict())
    actions = uniform_actions(inprocess, EPISODE + 4, seed=2)
    expected = play(two_workers, actions)
    inprocess.reset()
    assert np.array_equal(inprocess.load_state_dict(state), state["obs"].numpy())
    assert_same_steps(play(inprocess, actions), expected)

    back = through_torch_save(inprocess.state_dict())  # and back into the workers
    play(two_workers, uniform_actions(two_workers, 3, seed=3))
    assert np.array_equal(two_workers.load_state_dict(back), back["obs"].numpy())
    actions = uniform_actions(inprocess, 9, seed=4)
    assert_same_steps(play(two_workers, actions), play(inprocess, actions))


def test_a_local_shard_steps_and_moves_state_like_the_workers(two_workers):
    """local_shard: this process steps tasks 0, 2, ... and one worker process the rest; the same
    steps as the in-process env, and its states load into the two-process env and back."""
    env = ParallelMultiTaskEnv("MT10", seed=1, workers=2, max_episode_steps=EPISODE, local_shard=True)
    inprocess = MultiTaskEnv("MT10", seed=1, max_episode_steps=EPISODE)  # fresh: the fixture's has moved on
    try:
        assert env.workers == 2 and len(env.pids) == 1
        assert np.array_equal(env.reset(), inprocess.reset())
        actions = uniform_actions(inprocess, EPISODE + 6, seed=5)  # across a reset of every task
        assert_same_steps(play(env, actions), play(inprocess, actions))
        state = through_torch_save(env.state_dict())
        actions = uniform_actions(inprocess, 8, seed=6)
        expected = play(env, actions)
        two_workers.load_state_dict(state)
        assert_same_steps(play(two_workers, actions), expected)
        assert np.array_equal(env.load_state_dict(through_torch_save(two_workers.state_dict())), two_workers.state_dict()["obs"].numpy())
        actions = uniform_actions(inprocess, 5, seed=7)
        assert_same_steps(play(env, actions), play(two_workers, actions))
        (pid,) = env.pids  # the worker process dies: a clear error, as without the local shard
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(EnvWorkerError, match=r"env worker 0 \(pid \d+, tasks push-v3, .*\) died \(signal SIGKILL\) during 'step'"):
            env.step(np.zeros((10, 4)))
    finally:
        env.close()
        inprocess.close()
    with pytest.raises(ValueError, match="local_shard must be a bool, got 1"):
        ParallelMultiTaskEnv("MT1-reach-v3", seed=0, workers=1, local_shard=1)


def test_workers_refuse_wrong_actions_and_states(two_workers):
    with pytest.raises(ValueError, match=r"actions must have shape \(10, 4\)"):
        two_workers.step(np.zeros((5, 4)))
    one = MultiTaskEnv("MT1-reach-v3", seed=0)
    with pytest.raises(ValueError, match="for 1 tasks, this env has 10"):
        two_workers.load_state_dict(one.state_dict())
    one.close()


def test_a_killed_worker_is_a_clear_error_naming_its_tasks():
    env = ParallelMultiTaskEnv("MT1-reach-v3", seed=0, workers=1, max_episode_steps=10)
    env.reset()
    (pid,) = env.pids
    os.kill(pid, signal.SIGKILL)
    start = time.monotonic()
    with pytest.raises(EnvWorkerError, match=r"env worker 0 \(pid \d+, tasks reach-v3\) died \(signal SIGKILL\) during 'step'"):
        env.step(np.zeros((1, 4)))
    assert time.monotonic() - start < 30  # found by its sentinel, not by a timeout
    with pytest.raises(EnvWorkerError, match="shut down after an earlier error"):
        env.reset()
    env.close()


def test_an_exception_in_a_worker_is_raised_with_its_tasks_and_traceback():
    env = ParallelMultiTaskEnv("MT1-reach-v3", seed=0, workers=1, max_episode_steps=10)
    env.reset()
    state = env.state_dict()
    state["sim"][0] = state["sim"][0][:5]  # a corrupt MuJoCo state
    with pytest.raises(EnvWorkerError, match=r"(?s)tasks reach-v3\) raised during 'load'.*ValueError: MuJoCo state of reach-v3 must have"):
        env.load_state_dict(state)
    (pid,) = env.pids
    assert not _alive(pid)  # the failed env shut its workers down
    env.close()


def test_workers_ignore_sigint_and_sigterm_and_end_on_close():
    """A terminal's Ctrl-C or a scheduler's SIGTERM reaches the whole process group; the trainer
    catches them and must still read the env state for its checkpoint."""
    env = ParallelMultiTaskEnv("MT1-reach-v3", seed=0, workers=1, max_episode_steps=10)
    (pid,) = env.pids
    env.reset()
    for sig in (signal.SIGINT, signal.SIGTERM):
        os.kill(pid, sig)
    time.sleep(0.5)
    env.step(np.zeros((1, 4)))
    assert env.state_dict()["episode_step"].tolist() == [1]
    env.close()
    assert not _alive(pid)
    with pytest.raises(EnvWorkerError, match="closed"):
        env.step(np.zeros((1, 4)))
    env.close()  # closing twice is fine


def test_bad_worker_settings_are_clear_errors():
    with pytest.raises(ValueError, match="workers must be a positive int, got 0"):
        ParallelMultiTaskEnv("MT1-reach-v3", seed=0, workers=0)
    with pytest.raises(ValueError, match="start_method must be one of spawn, forkserver, fork; got 'thread'"):
        ParallelMultiTaskEnv("MT1-reach-v3", seed=0, workers=1, start_method="thread")
    with pytest.raises(ConfigError, match="env.workers must be a positive integer, got 0"):
        config_from_dict({"env": {"workers": 0}})
    with pytest.raises(ConfigError, match="env.workers: 2 needs a MetaWorld benchmark"):
        make_env(config_from_dict({"env": {"benchmark": "Point-3", "workers": 2}}), seed=0)


def test_more_workers_than_tasks_start_one_per_task():
    env = make_env(config_from_dict({"env": {"benchmark": "MT1-reach-v3", "workers": 3, "max_episode_steps": 10}}), seed=0)
    try:
        assert isinstance(env, ParallelMultiTaskEnv) and env.workers == 1
        assert env.reset().shape == (1, 39)
    finally:
        env.close()


@pytest.mark.parametrize("start_method", ["forkserver", "fork"])
def test_other_start_methods_give_the_same_steps(start_method):
    reference = MultiTaskEnv("MT1-reach-v3", seed=2, max_episode_steps=10)
    env = ParallelMultiTaskEnv("MT1-reach-v3", seed=2, workers=1, max_episode_steps=10, start_method=start_method)
    try:
        assert np.array_equal(env.reset(), reference.reset())
        actions = uniform_actions(reference, 15, seed=0)
        for x, y in zip(play(env, actions), play(reference, actions)):
            for field in STEP_FIELDS:
                assert np.array_equal(getattr(x, field), getattr(y, field)), field
    finally:
        env.close()
        reference.close()
