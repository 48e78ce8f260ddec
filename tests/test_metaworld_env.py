"""The MetaWorld v3 multi-task env (envs/metaworld.py) and the synthetic Point-K env: names,
shapes, seeding, what an episode end hands the replay (final observation, truncation is not
termination, success of the finished episode), and exact state round trips."""

from __future__ import annotations

import numpy as np
import pytest

from envs.metaworld import MultiTaskEnv, benchmark_task_names
from envs.synthetic import PointMassEnv

MT10 = ["reach-v3", "push-v3", "pick-place-v3", "door-open-v3", "drawer-open-v3", "drawer-close-v3",
        "button-press-topdown-v3", "peg-insert-side-v3", "window-open-v3", "window-close-v3"]


def test_benchmark_names():
    assert benchmark_task_names("MT10") == MT10
    assert benchmark_task_names("MT1-reach-v3") == ["reach-v3"]


@pytest.mark.slow
def test_mt50_names():  # building MT50 takes about 25 s
    names = benchmark_task_names("MT50")
    assert len(names) == 50 == len(set(names)) and set(MT10) <= set(names)


@pytest.mark.parametrize("bad,shown", [("MT11", "MT10, MT50, MT1-<task>"), ("MT1-reach-v2", "reach-v3"), ("mt10", "MT50")])
def test_unknown_benchmark_or_task_names_the_value_and_the_valid_ones(bad, shown):
    with pytest.raises(ValueError) as err:
        MultiTaskEnv(bad, seed=0)
    message = str(err.value)
    assert repr(bad[4:] if bad.startswith("MT1-") else bad) in message and shown in message


def rollout(env, steps: int, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(steps):
        action = rng.uniform(env.action_low, env.action_high, size=(env.num_tasks, env.action_dim))
        out.append(env.step(action))
    return out


@pytest.fixture(scope="module")
def reach():
    env = MultiTaskEnv("MT1-reach-v3", seed=3, max_episode_steps=20)
    yield env
    env.close()


def test_shapes_and_seeding():
    a = MultiTaskEnv("MT1-push-v3", seed=1, max_episode_steps=10)
    b = MultiTaskEnv("MT1-push-v3", seed=1, max_episode_steps=10)
    c = MultiTaskEnv("MT1-push-v3", seed=2, max_episode_steps=10)
    try:
        obs = a.reset()
        assert obs.shape == (1, 39) and obs.dtype == np.float32 and a.action_dim == 4
        assert np.array_equal(obs, b.reset())
        assert not np.array_equal(obs, c.reset())  # another seed: another goal / start
        for x, y in zip(rollout(a, 15), rollout(b, 15)):
            assert np.array_equal(x.next_obs, y.next_obs) and np.array_equal(x.reward, y.reward)
    finally:
        for env in (a, b, c):
            env.close()


def test_episode_end_hands_over_the_final_observation_and_truncates(reach):
    reach.reset()
    steps = rollout(reach, 20)
    last = steps[-1]
    assert [bool(s.episode_done[0]) for s in steps] == [False] * 19 + [True]
    assert last.truncated[0] and not last.terminated[0]  # time limit: SAC bootstraps through it
    # next_obs is the end of the finished episode: it continues the trajectory ...
    assert np.array_equal(steps[-2].obs, steps[-2].next_obs)
    hand_dist = np.linalg.norm(last.next_obs[0, :3] - steps[-2].next_obs[0, :3])
    assert hand_dist < 0.1
    # ... while obs is the first observation of the next episode (a fresh reset)
    assert not np.array_equal(last.obs, last.next_obs)
    assert float(last.episode_return[0]) == pytest.approx(float(sum(s.reward[0] for s in steps)), rel=1e-5)
    assert bool(last.episode_success[0]) == any(bool(s.success[0]) for s in steps)
    # the new episode starts counting again
    more = rollout(reach, 20, seed=1)
    assert [bool(s.episode_done[0]) for s in more] == [False] * 19 + [True]


def test_success_of_the_finished_episode_comes_from_its_own_steps():
    """Drive the reach hand to its goal: success shows up in the step info, the episode's success
    flag stays set through the end, and with terminate_on_success the success ends the episode."""
    for terminate in (False, True):
        env = MultiTaskEnv("MT1-reach-v3", seed=0, max_episode_steps=200, terminate_on_success=terminate)
        try:
            obs = env.reset()
            goal = env._envs[0]._target_pos
            for _ in range(200):
                action = np.clip(np.append((goal - obs[0, :3]) * 10.0, 0.0), -1, 1)[None]
                result = env.step(action)
                obs = result.obs
                if result.episode_done[0]:
                    break
            assert result.episode_done[0] and result.episode_success[0]
            if terminate:
                assert result.terminated[0] and not result.truncated[0] and result.success[0]
            else:
                assert result.truncated[0] and not result.terminated[0]
        finally:
            env.close()


def test_state_round_trip_at_an_episode_boundary_is_exact():
    a = MultiTaskEnv("MT1-window-open-v3", seed=5, max_episode_steps=10)
    try:
        a.reset()
        rollout(a, 10)  # one whole episode: the next step starts a fresh one
        state = a.state_dict()
        expected = rollout(a, 25, seed=7)
        b = MultiTaskEnv("MT1-window-open-v3", seed=99, max_episode_steps=10)
        b.load_state_dict(state)
        got = rollout(b, 25, seed=7)
        b.close()
        for x, y in zip(expected, got):
            assert np.array_equal(x.next_obs, y.next_obs) and np.array_equal(x.reward, y.reward)
            assert np.array_equal(x.episode_done, y.episode_done)
    finally:
        a.close()


def test_wrong_action_shape_is_refused(reach):
    with pytest.raises(ValueError, match=r"actions must have shape \(1, 4\)"):
        reach.step(np.zeros((2, 4)))


def test_point_env_follows_the_same_interface():
    env = PointMassEnv("Point-3", seed=0, max_episode_steps=5)
    twin = PointMassEnv("Point-3", seed=0, max_episode_steps=5)
    obs = env.reset()
    assert obs.shape == (3, env.obs_dim) and np.array_equal(obs, twin.reset())
    steps, twins = rollout(env, 5), rollout(twin, 5)
    for x, y in zip(steps, twins):
        assert np.array_equal(x.next_obs, y.next_obs)
    assert steps[-1].episode_done.all() and steps[-1].truncated.all() and not steps[-1].terminated.any()
    assert not np.array_equal(steps[-1].obs, steps[-1].next_obs)  # reset obs vs final obs
    state = env.state_dict()
    after = rollout(env, 7, seed=3)
    twin.load_state_dict(state)
    for x, y in zip(after, rollout(twin, 7, seed=3)):
        assert np.array_equal(x.next_obs, y.next_obs) and np.array_equal(x.reward, y.reward)
