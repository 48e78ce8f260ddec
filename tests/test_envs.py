"""Multi-task environments of ``envs/``: the MetaWorld v3 ``MultiTaskEnv`` and the synthetic
``PointMassEnv``.

Properties that belong to MetaWorld are checked against raw MetaWorld envs driven by hand: a
"raw twin" is a fresh MetaWorld env of the same task, set to the goal variation whose reset
observation equals the wrapper's, then stepped with the same actions. Checkpoint round trips are
checked against a twin env (see the checkpoints section). Benchmarks are kept small (MT1 envs,
two MT10 builds, short episodes); MT50 is built in the slow tests only.
"""

from __future__ import annotations

import io

import metaworld
import numpy as np
import pytest
import torch
from metaworld.env_dict import ALL_V3_ENVIRONMENTS
from metaworld.policies import ENV_POLICY_MAP

from mtrl.envs.metaworld import MAX_PATH_LENGTH, MultiTaskEnv, _plain_attributes, _same, _sim_state, benchmark_task_names
from mtrl.envs.synthetic import PointMassEnv
from mtrl.evaluate import evaluate
from tests.helpers import reach_controller, through_torch_save

MT10_ORDER = [
    "reach-v3", "push-v3", "pick-place-v3", "door-open-v3", "drawer-open-v3", "drawer-close-v3",
    "button-press-topdown-v3", "peg-insert-side-v3", "window-open-v3", "window-close-v3",
]
STEP_FIELDS = ("obs", "next_obs", "reward", "terminated", "truncated", "success",
               "episode_done", "episode_success", "episode_return", "unstable")


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


MT10_EPISODE = 60  # the experts of noisy_experts need about that long to succeed


@pytest.fixture(scope="module")
def mt10():
    env = MultiTaskEnv("MT10", seed=0, max_episode_steps=MT10_EPISODE)
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
def test_truncated_episode_hands_over_metaworlds_final_observation():
    length = 25
    env = MultiTaskEnv("MT1-reach-v3", seed=0, max_episode_steps=length)
    reach_goals = env.goal_sets[0]
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
def test_success_of_the_finished_episode_comes_from_its_last_step(terminate_on_success):
    """Episodes cut exactly at the first successful step (per raw MetaWorld) count as successes;
    cut one step earlier they do not."""
    probe = MultiTaskEnv("MT1-reach-v3", seed=3)
    twin = raw_twin("reach-v3", probe.goal_sets[0], probe.reset()[0])
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
# A state must carry everything the next step depends on. These tests find what that is rather
# than trust a list: a twin env (other RNG seeds, stepped elsewhere) loads the state and must then
# hold the same MetaWorld env objects (every plain attribute, MuJoCo's integration state, every
# MjModel array, the RNGs) and step bit-identically through the rest of the episode and the next.
def noisy_experts(env, seed: int):
    """MetaWorld's scripted expert of each task plus Gaussian noise: it reaches, grasps, pushes and
    succeeds now and then, so contacts and success flags occur (uniform actions touch little)."""
    policies = [ENV_POLICY_MAP[name]() for name in env.task_names]
    rng = np.random.default_rng(seed)

    def act(obs: np.ndarray) -> np.ndarray:
        actions = np.stack([p.get_action(o.astype(np.float64)) for p, o in zip(policies, obs)])
        return np.clip(actions + rng.normal(0.0, 0.3, actions.shape), -1.0, 1.0).astype(np.float32)

    return act


def model_arrays(model) -> dict[str, np.ndarray]:
    return {name: getattr(model, name) for name in dir(model)
            if not name.startswith("_") and isinstance(getattr(model, name, None), np.ndarray)}


def assert_same_metaworld_state(a: MultiTaskEnv, b: MultiTaskEnv) -> None:
    """The MetaWorld env objects of ``a`` and ``b`` agree in everything a step can read."""
    for k, name in enumerate(a.task_names):
        x, y = a._envs[k], b._envs[k]
        px, py = _plain_attributes(x), _plain_attributes(y)
        assert px.keys() == py.keys(), name
        for attribute in px:
            assert _same(px[attribute], py[attribute]), f"{name}: attribute {attribute} differs"
        assert np.array_equal(_sim_state(x), _sim_state(y)), f"{name}: MuJoCo integration state differs"
        mx, my = model_arrays(x.model), model_arrays(y.model)
        for field in mx:
            assert np.array_equal(mx[field], my[field], equal_nan=True), f"{name}: model.{field} differs"
        assert x.np_random.bit_generator.state == y.np_random.bit_generator.state, f"{name}: env RNG differs"
        assert a._task_rngs[k].bit_generator.state == b._task_rngs[k].bit_generator.state, f"{name}: goal RNG differs"


def assert_resumes_exactly(source, twin, policy, before: int, after: int) -> list:
    """Run ``source`` ``before`` steps, load its state into ``twin`` (first stepped somewhere else),
    then step both ``after`` steps with the same actions; every field of every step must agree."""
    obs = source.reset()
    for _ in range(before):
        obs = source.step(policy(obs)).obs
    twin.reset()
    play(twin, uniform_actions(twin, 5, seed=9))
    assert np.array_equal(twin.load_state_dict(through_torch_save(source.state_dict())), obs)
    assert_same_metaworld_state(source, twin)
    results = []
    for i in range(after):
        actions = policy(obs)
        x, y = source.step(actions), twin.step(actions)
        for field in STEP_FIELDS:
            assert np.array_equal(getattr(x, field), getattr(y, field)), f"step {i} after the load: {field} differs"
        results.append(x)
        obs = x.obs
    assert_same_metaworld_state(source, twin)
    return results


@pytest.fixture(scope="module")
def mt10_twin():
    """A second MT10 env on the same goal set with other RNG seeds."""
    env = MultiTaskEnv("MT10", seed=9, goal_seed=0, max_episode_steps=MT10_EPISODE)
    yield env
    env.close()


@pytest.mark.filterwarnings("ignore:Constant")
def test_every_mt10_task_resumes_bit_exactly_mid_episode(mt10, mt10_twin):
    """Saved 20 steps into the second episode; compared over the rest of it and the whole next one
    (whose goal the restored RNG draws)."""
    results = assert_resumes_exactly(mt10, mt10_twin, noisy_experts(mt10, seed=0), before=MT10_EPISODE + 20, after=2 * MT10_EPISODE - 20)
    assert any(r.success.any() for r in results) and sum(r.episode_done.sum() for r in results) == 2 * mt10.num_tasks


#: MT50 tasks outside MT10 that move objects, write the model on reset or grasp (built as MT1).
MT50_SAMPLE = ["assembly-v3", "bin-picking-v3", "coffee-pull-v3", "faucet-open-v3", "hammer-v3",
               "shelf-place-v3", "stick-pull-v3", "sweep-into-v3"]


@pytest.mark.filterwarnings("ignore:Constant")
@pytest.mark.parametrize("task", MT50_SAMPLE)
def test_mt50_sample_resumes_bit_exactly_mid_episode(task):
    source = MultiTaskEnv(f"MT1-{task}", seed=1, max_episode_steps=60)
    twin = MultiTaskEnv(f"MT1-{task}", seed=2, goal_seed=1, max_episode_steps=60)
    try:
        assert_resumes_exactly(source, twin, noisy_experts(source, seed=1), before=80, after=100)
    finally:
        source.close()
        twin.close()


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Constant")
def test_every_mt50_task_resumes_bit_exactly_mid_episode():  # two MT50 builds, about 2 minutes
    source = MultiTaskEnv("MT50", seed=0, max_episode_steps=60)
    twin = MultiTaskEnv("MT50", seed=3, goal_seed=0, max_episode_steps=60)
    try:
        results = assert_resumes_exactly(source, twin, noisy_experts(source, seed=0), before=80, after=100)
        assert sum(r.success.sum() for r in results) > 0
    finally:
        source.close()
        twin.close()


def test_evaluation_env_resumes_bit_exactly_across_terminations_on_success():
    """terminate_on_success (evaluation envs): episodes of irregular length, each ended by success."""
    source = MultiTaskEnv("MT1-reach-v3", seed=4, max_episode_steps=150, terminate_on_success=True)
    twin = MultiTaskEnv("MT1-reach-v3", seed=5, goal_seed=4, max_episode_steps=150, terminate_on_success=True)
    rng = np.random.default_rng(0)

    def policy(obs):
        return np.clip(reach_controller(obs) + rng.normal(0.0, 0.5, (1, 4)), -1, 1).astype(np.float32)

    try:
        results = assert_resumes_exactly(source, twin, policy, before=23, after=150)
        assert sum(bool(r.terminated[0]) for r in results) >= 2
    finally:
        source.close()
        twin.close()


def test_state_saved_at_an_episode_boundary_reproduces_the_trajectory():
    env = MultiTaskEnv("MT1-window-open-v3", seed=2, max_episode_steps=8)
    other = MultiTaskEnv("MT1-window-open-v3", seed=11, goal_seed=2, max_episode_steps=8)
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


def test_state_before_the_first_reset_gives_the_same_first_episodes():
    """An evaluation env is checkpointed before its first evaluation: its RNGs are all there is."""
    env = MultiTaskEnv("MT1-reach-v3", seed=6, max_episode_steps=10)
    other = MultiTaskEnv("MT1-reach-v3", seed=7, goal_seed=6, max_episode_steps=10)
    try:
        state = through_torch_save(env.state_dict())
        assert state["started"].tolist() == [False]
        other.reset()
        other.load_state_dict(state)
        assert np.array_equal(other.reset(), env.reset())
        actions = uniform_actions(env, 25, seed=1)
        assert_same_steps(play(other, actions), play(env, actions))
    finally:
        env.close()
        other.close()


def test_state_of_the_earlier_format_restarts_the_episodes_in_progress():
    """Checkpoints written before environment states were complete held only the RNG snapshots
    of the latest resets: they still load, replaying those resets (with a warning mid-episode)."""
    env = MultiTaskEnv("MT1-reach-v3", seed=6, max_episode_steps=10)
    try:
        first = env.reset()
        play(env, uniform_actions(env, 4, seed=0))
        state = env.state_dict()
        legacy = {"task_rng": state["reset_task_rng"], "env_rng": state["reset_env_rng"], "episode_step": state["episode_step"]}
        with pytest.warns(UserWarning, match="restart"):
            assert np.array_equal(env.load_state_dict(legacy), first)
        done = [bool(r.episode_done[0]) for r in play(env, uniform_actions(env, 10, seed=1))]
        assert done == [False] * 9 + [True]  # a whole episode after the restart
    finally:
        env.close()


def test_state_is_small_and_loads_with_weights_only(mt10):
    mt10.reset()
    play(mt10, uniform_actions(mt10, 5, seed=0))
    buffer = io.BytesIO()
    torch.save(mt10.state_dict(), buffer)
    assert buffer.tell() < 80_000  # MT10: about 52 KB (docs/checkpoints.md)
    buffer.seek(0)
    torch.load(buffer, weights_only=True)


def test_state_of_another_task_count_is_refused(mt10):
    env = MultiTaskEnv("MT1-reach-v3", seed=0)
    with pytest.raises(ValueError, match="1 tasks"):
        mt10.load_state_dict(env.state_dict())
    env.close()


def test_state_of_another_goal_set_is_flagged():
    env = MultiTaskEnv("MT1-reach-v3", seed=0, max_episode_steps=10)
    other = MultiTaskEnv("MT1-reach-v3", seed=1, max_episode_steps=10)
    try:
        env.reset()
        with pytest.warns(UserWarning, match="goal set"):
            other.load_state_dict(env.state_dict())
    finally:
        env.close()
        other.close()


# ---- goal sets ----------------------------------------------------------------------------------
def test_goal_set_follows_the_seed_like_metaworlds_make_vec():
    """``gym.make_vec("Meta-World/MT1", seed=s)`` samples its goals with metaworld.MT1(task, seed=s);
    so does this env (with goal_seed defaulting to seed), and goal_seed overrides it."""
    import gymnasium as gym

    vec = gym.make_vec("Meta-World/MT1", env_name="reach-v3", seed=4, vector_strategy="sync")
    theirs = [task.data for task in vec.get_attr("tasks")[0]]
    vec.close()
    assert [task.data for task in MultiTaskEnv("MT1-reach-v3", seed=4).goal_sets[0]] == theirs
    assert [task.data for task in MultiTaskEnv("MT1-reach-v3", seed=9, goal_seed=4).goal_sets[0]] == theirs
    assert not set(theirs) & {task.data for task in MultiTaskEnv("MT1-reach-v3", seed=5).goal_sets[0]}


def test_a_task_steps_the_same_in_any_slice_of_tasks():
    """What env workers rely on: a task is seeded by its benchmark index, not by its row."""
    part = MultiTaskEnv("MT10", seed=0, max_episode_steps=20, tasks=[3, 4, 5])
    alone = MultiTaskEnv("MT10", seed=0, max_episode_steps=20, tasks=[4])
    try:
        assert part.task_names == MT10_ORDER[3:6] and alone.task_names == [MT10_ORDER[4]]
        assert np.array_equal(part.reset()[1:2], alone.reset())
        actions = uniform_actions(part, 45, seed=4)
        for x, y in zip(play(part, actions), play(alone, actions[:, 1:2])):
            for field in STEP_FIELDS:
                assert np.array_equal(getattr(x, field)[1:2], getattr(y, field)), field
    finally:
        part.close()
        alone.close()
    with pytest.raises(ValueError, match=r"distinct indices in \[0, 10\)"):
        MultiTaskEnv("MT10", seed=0, tasks=[3, 10])


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
