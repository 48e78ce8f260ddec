"""Multi-task environments of ``envs/``: the MetaWorld v3 ``MultiTaskEnv`` and the synthetic
``PointMassEnv``.

Properties that belong to MetaWorld are checked against raw MetaWorld envs driven by hand: a
"raw twin" is a fresh MetaWorld env of the same task, set to the goal variation whose reset
observation equals the wrapper's, then stepped with the same actions. Benchmarks are kept small
(MT1-reach-v3, one MT10 build, short episodes); MT50 is built once, for its task names, in the
slow tests.
"""

from __future__ import annotations

import metaworld
import numpy as np
import pytest
from metaworld.env_dict import ALL_V3_ENVIRONMENTS

from envs.metaworld import MAX_PATH_LENGTH, MultiTaskEnv, benchmark_task_names
from envs.synthetic import PointMassEnv
from mtrl.evaluate import evaluate
from tests.helpers import reach_controller, through_torch_save

MT10_ORDER = [
    "reach-v3", "push-v3", "pick-place-v3", "door-open-v3", "drawer-open-v3", "drawer-close-v3",
    "button-press-topdown-v3", "peg-insert-side-v3", "window-open-v3", "window-close-v3",
]
STEP_FIELDS = ("obs", "next_obs", "reward", "terminated", "truncated", "success",
               "episode_done", "episode_success", "episode_return")


# ---- helpers ------------------------------------------------------------------------------------
def uniform_actions(env, steps: int, seed: int) -> np.ndarray:
    """[steps, K, A] float32 actions drawn uniformly from the env's action box."""
    rng = np.random.default_rng(seed)
    return rng.uniform(env.action_low, env.action_high, size=(steps, env.num_tasks, env.action_dim)).astype(np.float32)


def play(env, actions: np.ndarray) -> list:
    return [env.step(a) for a in actions]


def assert_same_steps(xs: list, ys: list) -> None:
    assert len(xs) == len(ys)
    for i, (x, y) in enumerate(zip(xs, ys)):
        for field in STEP_FIELDS:
            assert np.array_equal(getattr(x, field), getattr(y, field)), f"step {i}: {field} differs"


def raw_twin(name: str, tasks: list, first_obs: np.ndarray):
    """A fresh raw MetaWorld env of task ``name``, reset to the one goal variation among ``tasks``
    whose reset observation is ``first_obs`` (float32, 39 floats)."""
    probe = ALL_V3_ENVIRONMENTS[name]()
    match = None
    for task in tasks:
        probe.set_task(task)
        if np.array_equal(probe.reset()[0].astype(np.float32), first_obs):
            match = task
            break
    probe.close()
    assert match is not None, f"the {name} reset observation matches none of its MetaWorld goal variations"
    twin = ALL_V3_ENVIRONMENTS[name]()
    twin.set_task(match)
    twin.reset()
    return twin


@pytest.fixture(scope="module")
def reach_goals() -> list:
    """The 50 reach-v3 goal variations an MT1 env draws from (MetaWorld's MT1 set, seed 0)."""
    return metaworld.MT1("reach-v3", seed=0).train_tasks


@pytest.fixture(scope="module")
def mt10():
    env = MultiTaskEnv("MT10", seed=0, max_episode_steps=3)
    yield env
    env.close()


# ---- names --------------------------------------------------------------------------------------
def test_benchmark_task_names_of_mt10_and_mt1():
    assert benchmark_task_names("MT10") == MT10_ORDER
    assert benchmark_task_names("MT1-reach-v3") == ["reach-v3"]
    assert benchmark_task_names("MT1-window-close-v3") == ["window-close-v3"]


@pytest.mark.slow
def test_mt50_names_are_the_fifty_v3_tasks():  # builds MetaWorld's MT50 (about 20 s)
    names = benchmark_task_names("MT50")
    assert len(names) == 50 and set(names) == set(ALL_V3_ENVIRONMENTS)
    assert all(name.endswith("-v3") for name in names)


@pytest.mark.parametrize("make", [benchmark_task_names, lambda name: MultiTaskEnv(name, seed=0)],
                         ids=["benchmark_task_names", "MultiTaskEnv"])
@pytest.mark.parametrize("bad, shown", [
    ("MT11", ["'MT11'", "MT10", "MT50"]),
    ("mt10", ["'mt10'", "MT10", "MT50"]),
    ("MT1-reach-v2", ["'reach-v2'", "reach-v3", "push-v3"]),
    ("MT1-", ["''", "reach-v3"]),
])
def test_unknown_benchmark_or_task_is_a_value_error_naming_it_and_the_valid_ones(make, bad, shown):
    with pytest.raises(ValueError) as error:
        make(bad)
    for text in shown:
        assert text in str(error.value)


@pytest.mark.parametrize("steps", [0, MAX_PATH_LENGTH + 1, 2.5])
def test_episode_length_outside_metaworlds_range_is_refused(steps):
    with pytest.raises(ValueError, match="max_episode_steps"):
        MultiTaskEnv("MT1-reach-v3", seed=0, max_episode_steps=steps)


# ---- shapes and task rows -----------------------------------------------------------------------
def test_mt10_row_k_is_task_k(mt10):
    """Observations are [K, 39] (no one-hot: the agent adds the task code from the row index), and
    row k, observed and acted on, is MetaWorld's env of task_names[k]."""
    assert mt10.task_names == MT10_ORDER and mt10.num_tasks == 10
    assert mt10.obs_dim == 39 and mt10.action_dim == 4
    assert np.array_equal(mt10.action_low, -np.ones(4)) and np.array_equal(mt10.action_high, np.ones(4))
    obs = mt10.reset()
    assert obs.shape == (10, 39) and obs.dtype == np.float32
    reference = metaworld.MT10(seed=0)
    twins = [raw_twin(name, [t for t in reference.train_tasks if t.env_name == name], obs[k])
             for k, name in enumerate(MT10_ORDER)]
    for actions in uniform_actions(mt10, 2, seed=0):
        result = mt10.step(actions)
        assert result.obs.shape == result.next_obs.shape == (10, 39)
        for field in STEP_FIELDS[2:]:
            assert getattr(result, field).shape == (10,), field
        for k, twin in enumerate(twins):  # action row k drives task k, next_obs row k comes from it
            raw_obs, raw_reward, _, _, info = twin.step(actions[k])
            assert np.array_equal(result.next_obs[k], raw_obs.astype(np.float32)), MT10_ORDER[k]
            assert result.reward[k] == np.float32(raw_reward) and result.success[k] == bool(info["success"])
    for twin in twins:
        twin.close()
    with pytest.raises(ValueError, match=r"shape \(10, 4\)"):
        mt10.step(np.zeros((1, 4)))


# ---- seeding ------------------------------------------------------------------------------------
def test_same_seed_same_trajectory_and_another_seed_differs():
    a, b, c = (MultiTaskEnv("MT1-reach-v3", seed=s, max_episode_steps=6) for s in (4, 4, 5))
    try:
        starts = {}
        steps = {}
        actions = uniform_actions(a, 24, seed=1)  # four episodes: three resets after the first
        for name, env in zip("abc", (a, b, c)):
            first = env.reset()
            steps[name] = play(env, actions)
            starts[name] = np.stack([first[0]] + [s.obs[0] for s in steps[name] if s.episode_done[0]])
        assert_same_steps(steps["a"], steps["b"])
        assert np.array_equal(starts["a"], starts["b"])
        assert not np.array_equal(starts["a"], starts["c"])
        # every reset draws a goal variation: the goal (last 3 floats) changes between episodes
        assert len({tuple(goal) for goal in starts["a"][:, 36:]}) > 1
    finally:
        for env in (a, b, c):
            env.close()


# ---- episode ends -------------------------------------------------------------------------------
def test_truncated_episode_hands_over_metaworlds_final_observation(reach_goals):
    length = 25
    env = MultiTaskEnv("MT1-reach-v3", seed=0, max_episode_steps=length)
    try:
        first = env.reset()
        twin = raw_twin("reach-v3", reach_goals, first[0])
        raw_success = []
        for t, actions in enumerate(uniform_actions(env, length, seed=2), start=1):
            result = env.step(actions)
            raw_obs, raw_reward, _, _, info = twin.step(actions[0])
            raw_success.append(bool(info["success"]))
            assert np.array_equal(result.next_obs[0], raw_obs.astype(np.float32))
            assert result.reward[0] == np.float32(raw_reward)
            assert bool(result.episode_done[0]) == (t == length)
        twin.close()
        # the step that ends the episode: a time limit, not a terminal state (SAC bootstraps)
        assert result.truncated[0] and not result.terminated[0]
        # next_obs is the finished episode's last observation (checked against raw MetaWorld above);
        # obs is the first one of the next episode: the hand is back at its start position
        assert not np.array_equal(result.obs, result.next_obs)
        assert np.allclose(result.obs[0, :3], first[0, :3], atol=1e-3)
        assert not np.allclose(result.next_obs[0, :3], first[0, :3], atol=1e-3)
        raw_twin("reach-v3", reach_goals, result.obs[0]).close()  # a genuine reset observation
        assert bool(result.episode_success[0]) == any(raw_success)
    finally:
        env.close()


def first_success_actions(twin) -> list[np.ndarray]:
    """Drive a raw reach env to its goal; the actions up to and including the first success."""
    obs, _ = twin.reset()
    actions = []
    for _ in range(200):
        actions.append(reach_controller(obs.astype(np.float32)[None])[0])
        obs, _, _, _, info = twin.step(actions[-1])
        if info["success"]:
            return actions
    raise AssertionError("the reach controller never succeeded")


@pytest.mark.parametrize("terminate_on_success", [False, True])
def test_success_of_the_finished_episode_comes_from_its_last_step(reach_goals, terminate_on_success):
    """Episodes cut exactly at the first successful step (per raw MetaWorld) count as successes;
    cut one step earlier they do not."""
    probe = MultiTaskEnv("MT1-reach-v3", seed=3)
    twin = raw_twin("reach-v3", reach_goals, probe.reset()[0])
    probe.close()
    actions = first_success_actions(twin)
    twin.close()
    s = len(actions)
    assert s >= 2
    for length in (s - 1, s):
        env = MultiTaskEnv("MT1-reach-v3", seed=3, max_episode_steps=length, terminate_on_success=terminate_on_success)
        env.reset()
        results = play(env, np.stack(actions[:length])[:, None])
        env.close()
        last = results[-1]
        assert [bool(r.episode_done[0]) for r in results] == [False] * (length - 1) + [True]
        assert not any(bool(r.success[0]) for r in results[:-1])
        assert bool(last.success[0]) == bool(last.episode_success[0]) == (length == s)
        if terminate_on_success and length == s:
            assert last.terminated[0] and not last.truncated[0]
        else:
            assert last.truncated[0] and not last.terminated[0]


def test_default_episode_is_metaworlds_500_steps():
    env = MultiTaskEnv("MT1-reach-v3", seed=0)
    try:
        assert env.max_episode_steps == MAX_PATH_LENGTH == 500
        env.reset()
        done_at = [t for t, r in enumerate(play(env, np.zeros((MAX_PATH_LENGTH + 1, 1, 4), np.float32)), start=1)
                   if r.episode_done[0]]
        assert done_at == [500]  # and step 501, past raw MetaWorld's limit, runs in the new episode
    finally:
        env.close()


# ---- checkpoints --------------------------------------------------------------------------------
def test_state_saved_at_an_episode_boundary_reproduces_the_trajectory():
    env = MultiTaskEnv("MT1-window-open-v3", seed=2, max_episode_steps=8)
    other = MultiTaskEnv("MT1-window-open-v3", seed=11, max_episode_steps=8)
    try:
        env.reset()
        boundary = play(env, uniform_actions(env, 8, seed=0))[-1]
        assert boundary.episode_done[0]
        state = through_torch_save(env.state_dict())
        actions = uniform_actions(env, 20, seed=5)
        expected = play(env, actions)
        other.reset()
        play(other, uniform_actions(other, 3, seed=9))  # somewhere else entirely
        assert np.array_equal(other.load_state_dict(state), boundary.obs)
        assert_same_steps(play(other, actions), expected)
    finally:
        env.close()
        other.close()


def test_state_saved_mid_episode_restarts_that_episode():
    env = MultiTaskEnv("MT1-reach-v3", seed=6, max_episode_steps=10)
    try:
        first = env.reset()
        play(env, uniform_actions(env, 4, seed=0))
        state = env.state_dict()
        assert state["episode_step"].tolist() == [4]
        assert np.array_equal(env.load_state_dict(state), first)
        done = [bool(r.episode_done[0]) for r in play(env, uniform_actions(env, 10, seed=1))]
        assert done == [False] * 9 + [True]  # a whole episode after the restart
    finally:
        env.close()


def test_state_of_another_task_count_is_refused(mt10):
    env = MultiTaskEnv("MT1-reach-v3", seed=0)
    with pytest.raises(ValueError, match="1 tasks"):
        mt10.load_state_dict(env.state_dict())
    env.close()


# ---- the synthetic point-mass env ---------------------------------------------------------------
@pytest.mark.parametrize("bad", ["Point-0", "Point-x", "point-3", "MT10"])
def test_point_env_refuses_unknown_names(bad):
    with pytest.raises(ValueError, match=repr(bad)):
        PointMassEnv(bad, seed=0)


def test_point_env_shapes_and_seeding():
    a, b, c = (PointMassEnv("Point-3", seed=s, max_episode_steps=5) for s in (1, 1, 2))
    obs = a.reset()
    assert obs.shape == (3, a.obs_dim) == (3, 4) and obs.dtype == np.float32
    assert np.array_equal(obs, b.reset()) and not np.array_equal(obs, c.reset())
    actions = uniform_actions(a, 12, seed=0)
    xs, ys = play(a, actions), play(b, actions)
    assert_same_steps(xs, ys)
    assert xs[0].next_obs.shape == (3, 4) and xs[0].reward.shape == xs[0].episode_done.shape == (3,)
    assert not np.array_equal(np.stack([x.obs for x in xs]), np.stack([z.obs for z in play(c, actions)]))


def test_point_env_episode_end_bookkeeping():
    env = PointMassEnv("Point-2", seed=0, max_episode_steps=4)
    state = env.reset()
    actions = uniform_actions(env, 8, seed=3)
    results = play(env, actions)
    rewards = []
    for t, (action, result) in enumerate(zip(actions, results), start=1):
        velocity = 0.5 * state[:, 2:] + 0.1 * action  # the documented dynamics continue to next_obs
        assert np.allclose(result.next_obs, np.concatenate([state[:, :2] + velocity, velocity], 1), atol=1e-6)
        rewards.append(result.reward)
        assert result.episode_done.tolist() == [t % 4 == 0] * 2
        if t % 4 == 0:
            assert result.truncated.all() and not result.terminated.any()
            assert np.allclose(result.episode_return, np.sum(rewards[-4:], axis=0), atol=1e-5)
            assert np.array_equal(result.obs[:, 2:], np.zeros((2, 2)))  # a fresh start at rest ...
            assert (np.abs(result.obs[:, :2]) <= 0.1).all()  # ... near the origin
            assert not np.array_equal(result.obs, result.next_obs)
        else:
            assert np.array_equal(result.obs, result.next_obs)
        state = result.obs


def point_controller(env):
    """Push every point mass towards its own goal (a damped controller that reaches it)."""
    return lambda obs: np.clip(5.0 * (env.goals - obs[:, :2]) - 5.0 * obs[:, 2:], -1.0, 1.0)


def test_point_env_success_and_termination():
    env = PointMassEnv("Point-3", seed=0, max_episode_steps=30, terminate_on_success=True)
    policy = point_controller(env)
    obs = env.reset()
    for _ in range(30):
        result = env.step(policy(obs))
        obs = result.obs
        assert np.array_equal(result.terminated, result.success) and not result.truncated.any()
        assert np.array_equal(result.episode_success, result.success)  # terminated at its first success
        if result.terminated.any():
            break
    assert result.terminated.any()


def test_point_env_state_round_trip_mid_episode_is_exact():
    env = PointMassEnv("Point-3", seed=4, max_episode_steps=7)
    twin = PointMassEnv("Point-3", seed=8, max_episode_steps=7)
    env.reset()
    play(env, uniform_actions(env, 10, seed=0))  # three steps into the second episode
    state = through_torch_save(env.state_dict())
    actions = uniform_actions(env, 12, seed=1)
    expected = play(env, actions)
    twin.reset()
    twin.load_state_dict(state)
    assert_same_steps(play(twin, actions), expected)


# ---- evaluation on these envs -------------------------------------------------------------------
def test_evaluate_counts_the_first_episodes_of_each_task():
    """Task 0 reaches its goal and terminates early, task 1 stands still until the time limit:
    task 0 plays more episodes than asked for meanwhile, and only its first ones count."""
    env = PointMassEnv("Point-2", seed=0, max_episode_steps=20, terminate_on_success=True)
    controller = point_controller(env)

    def policy(obs):
        return controller(obs) * np.array([[1.0], [0.0]], dtype=np.float32)

    result = evaluate(policy, env, episodes_per_task=2)
    assert result.task_names == ["point-0", "point-1"]
    assert result.success_rate.tolist() == [1.0, 0.0] and result.mean_success == 0.5
    twin = PointMassEnv("Point-2", seed=0, max_episode_steps=20, terminate_on_success=True)
    obs = twin.reset()
    idle_returns = []
    while len(idle_returns) < 2:
        step = twin.step(policy(obs))
        obs = step.obs
        if step.episode_done[1]:
            idle_returns.append(step.episode_return[1])
    assert result.mean_return[1] == pytest.approx(np.mean(idle_returns))
    assert result.mean_return[0] > result.mean_return[1]  # shorter and closer to the goal


def test_evaluate_reach_controller_succeeds_on_metaworld():
    env = MultiTaskEnv("MT1-reach-v3", seed=1, max_episode_steps=150, terminate_on_success=True)
    try:
        assert evaluate(reach_controller, env, episodes_per_task=2).success_rate.tolist() == [1.0]
    finally:
        env.close()


def test_point_env_refuses_a_wrong_action_shape_and_another_task_count():
    env = PointMassEnv("Point-3", seed=0)
    env.reset()
    with pytest.raises(ValueError, match=r"actions must have shape \(3, 2\), got \(2,\)"):
        env.step(np.zeros(2))
    with pytest.raises(ValueError, match="for 3 tasks, this env has 4"):
        PointMassEnv("Point-4", seed=0).load_state_dict(env.state_dict())
