"""Episode-parallel evaluation (``envs/episodes.py``, ``train.eval_mode: parallel``): every episode a
pure function of (run seed, evaluation, task, episode), and the engine gives, episode for episode,
what playing the same episodes one after another gives, whatever the instance cap and processes.

The reference (``sequential``) plays each task's planned episodes one after another on one
instance per task, with a loop of its own. Policies here act on each row alone (a scripted
controller, or the agent on batches of fixed composition), so any difference is the engine's.
MetaWorld runs MT10 with 40-step episodes; the one test with env workers starts one worker.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from metaworld.policies import ENV_POLICY_MAP

from mtrl.agents.mtsac import MTSAC
from mtrl.config import (
    LEGACY_VALUES, RESUME_ALLOWED, AgentConfig, ConfigError, config_changes, config_from_dict, config_to_dict, identity_keys,
    keep_legacy_values,
)
from mtrl.envs.episodes import EpisodeRunner, MetaWorldInstance, episode_seed, plan_episodes, plan_slots
from mtrl.envs.metaworld import MultiTaskEnv, _plain_attributes, _same, _sim_state
from mtrl.envs.synthetic import PointMassEnv, PointMassInstance
from mtrl.envs.task_costs import step_cost
from mtrl.evaluate import evaluate, evaluate_episodes
from tests.helpers import reach_controller
from tests.test_envs import model_arrays

EPISODE = 40  # the reach controller succeeds on reach-v3 and drawer-close-v3 in 15 to 40 steps


def wobbly_reach(obs: np.ndarray, task_ids: np.ndarray | None = None) -> np.ndarray:
    """The reach controller plus a deterministic wobble of each row's own observation: some
    reach episodes succeed early, some late, some not at all; other tasks run to the limit."""
    return np.clip(reach_controller(obs) + 0.6 * np.sin(3000.0 * obs[:, :4]), -1.0, 1.0).astype(np.float32)


def point_policy(goals: np.ndarray):
    """Push each point mass towards its own task's goal, except task 1's (it never succeeds)."""
    def policy(obs: np.ndarray, task_ids: np.ndarray) -> np.ndarray:
        push = np.clip(5.0 * (goals[task_ids] - obs[:, :2]) - 5.0 * obs[:, 2:], -1.0, 1.0)
        return (push * (task_ids != 1)[:, None]).astype(np.float32)
    return policy


def sequential_reference(instances: list, goal_sets: list, plan, policy, max_steps: int, terminate_on_success: bool) -> dict:
    """(success, return, length) of every planned episode, each task's episodes played one after
    another on ``instances[task]``, one step of one episode at a time."""
    out = {}
    for episode in plan:
        instance = instances[episode.task]
        obs = instance.reset(goal_sets[episode.task][episode.goal], episode.seed)
        succeeded, total, t = False, np.float64(0.0), 0
        while True:
            obs, reward, success = instance.step(policy(obs[None], np.array([episode.task]))[0])
            t += 1
            succeeded |= success
            total += np.float32(reward)  # rewards are float32 (StepResult), returns float64
            if (terminate_on_success and success) or t == max_steps:
                break
        out[(episode.task, episode.index)] = (succeeded, total, t)
    return out


def outcomes_by_episode(plan, outcomes) -> dict:
    return {(e.task, e.index): (bool(outcomes.success[p]), float(outcomes.episode_return[p]), int(outcomes.length[p]))
            for p, e in enumerate(plan)}


@pytest.fixture(scope="module")
def mt10():
    env = MultiTaskEnv("MT10", seed=1, max_episode_steps=EPISODE, terminate_on_success=True)
    yield env
    env.close()


# ---- the plan -------------------------------------------------------------------------------------
def test_an_episode_is_a_function_of_seed_evaluation_task_and_episode_only():
    plan = plan_episodes(5, 20_000, [50, 50, 3], 60)
    again = plan_episodes(5, 20_000, [50, 50, 3], 60)
    assert plan == again
    assert plan_episodes(5, 20_000, [50, 50, 3], 7) == [e for e in plan if e.index < 7]  # not a function of E
    assert [(e.task, e.index) for e in plan] == [(k, i) for k in range(3) for i in range(60)]
    for k in range(3):
        goals = [e.goal for e in plan if e.task == k]
        n = [50, 50, 3][k]
        for start in range(0, 60 - n + 1, n):  # each block of n episodes visits every goal once
            assert sorted(goals[start:start + n]) == list(range(n))
    assert [e.goal for e in plan[:50]] != [e.goal for e in plan[60:110]]  # tasks draw their own orders
    seeds = [e.seed for e in plan]
    assert len(set(seeds)) == len(seeds)
    assert plan[61].seed == episode_seed(5, 20_000, 1, 1)
    other = plan_episodes(5, 30_000, [50, 50, 3], 60)  # another evaluation: other goals, other seeds
    assert [e.goal for e in other[:10]] != [e.goal for e in plan[:10]]
    assert not {e.seed for e in other} & set(seeds)
    assert not {e.seed for e in plan_episodes(6, 20_000, [50, 50, 3], 60)} & set(seeds)


@pytest.mark.parametrize("call, message", [
    (lambda: plan_episodes(-1, 0, [50], 1), "seed must be an int >= 0, got -1"),
    (lambda: plan_episodes(0, 1.5, [50], 1), "evaluation must be an int >= 0, got 1.5"),
    (lambda: plan_episodes(0, 0, [50], 0), "episodes per task must be an int >= 1, got 0"),
    (lambda: plan_episodes(0, 0, [50, 0], 1), "task 1 has 0 goals"),
    (lambda: plan_slots([0, 0, 1], [1.0, 1.0], 1, 1), "must be an int >= the number of tasks evaluated (2)"),
])
def test_bad_plans_are_refused_naming_the_value(call, message):
    with pytest.raises(ValueError) as error:
        call()
    assert message in str(error.value)


@pytest.mark.parametrize("tasks, episodes, cap, processes", [(10, 10, 100, 2), (10, 10, 37, 3), (50, 10, 100, 16), (50, 10, 50, 2), (3, 1, 9, 4)])
def test_instances_respect_the_cap_and_processes_are_balanced_over_episodes(tasks, episodes, cap, processes):
    costs = [1.0 + (k % 4) for k in range(tasks)]  # tasks of four costs
    plan_tasks = [k for k in range(tasks) for _ in range(episodes)]
    shards = plan_slots(plan_tasks, costs, cap, processes)
    assert len(shards) == processes
    groups = [g for shard in shards for g in shard]
    assert sum(n for _, n, _ in groups) == min(cap, len(plan_tasks))
    positions = sorted(p for _, _, ps in groups for p in ps)
    assert positions == list(range(len(plan_tasks)))  # every episode once
    per_task = {k: sum(n for t, n, _ in groups if t == k) for k in range(tasks)}
    assert min(per_task.values()) >= 1
    # lock-step rounds: the most episodes an instance plays, as few as the cap allows
    assert max(-(-len(ps) // n) for _, n, ps in groups) == -(-episodes // (min(cap, len(plan_tasks)) // tasks))
    loads = [sum(costs[t] * len(ps) for t, _, ps in shard) for shard in shards]
    heaviest_instance = max(costs[t] * -(-len(ps) // n) for t, n, ps in groups)
    assert max(loads) - min(loads) <= heaviest_instance + 1e-9  # balanced to within one instance's work
    assert loads == sorted(loads)  # the lightest first (a local shard's)


def test_a_cap_below_the_task_count_is_a_clear_error(mt10):
    with pytest.raises(ValueError, match=r"env.eval_envs must be an int >= the number of tasks \(10.*got 9"):
        EpisodeRunner(mt10, 9)


# ---- instances ---------------------------------------------------------------------------------------
def assert_same_instance_state(a: MetaWorldInstance, b: MetaWorldInstance, name: str) -> None:
    pa, pb = _plain_attributes(a.env), _plain_attributes(b.env)
    assert pa.keys() == pb.keys(), name
    for attribute in pa:
        assert _same(pa[attribute], pb[attribute]), f"{name}: attribute {attribute} differs"
    assert np.array_equal(_sim_state(a.env), _sim_state(b.env)), f"{name}: MuJoCo integration state (warm start included) differs"
    ma, mb = model_arrays(a.env.model), model_arrays(b.env.model)
    for field in ma:
        assert np.array_equal(ma[field], mb[field], equal_nan=True), f"{name}: model.{field} differs"
    assert a.env.np_random.bit_generator.state == b.env.np_random.bit_generator.state, f"{name}: env RNG differs"


def check_history_does_not_matter(names: list[str], goal_sets: list) -> None:
    """A fresh instance and one that played two other goals (stopped mid-episode, its warm start,
    step counter and previous frames set) hold the same after a reset and step alike."""
    rng = np.random.default_rng(0)
    for name, goals in zip(names, goal_sets):
        fresh, used = MetaWorldInstance.of_task(name), MetaWorldInstance.of_task(name)
        try:
            expert = ENV_POLICY_MAP[name]()  # reaches, grasps and pushes: contacts, a warm start to keep
            for goal, seed in ((goals[3], 11), (goals[17], 12)):
                obs = used.reset(goal, seed)
                for _ in range(45):
                    obs, _, _ = used.step(np.clip(expert.get_action(obs.astype(np.float64)) + rng.normal(0, 0.3, 4), -1, 1))
            assert used.env.curr_path_length == 45 and used.env._last_stable_obs is not None
            assert np.array_equal(fresh.reset(goals[5], 99), used.reset(goals[5], 99))
            assert_same_instance_state(fresh, used, name)
            for action in rng.uniform(-1, 1, (30, 4)).astype(np.float32):
                x, y = fresh.step(action), used.step(action)
                assert np.array_equal(x[0], y[0]) and x[1] == y[1] and x[2] == y[2], name
        finally:
            fresh.close()
            used.close()


@pytest.mark.filterwarnings("ignore:Constant")
def test_an_instance_that_played_other_episodes_resets_to_what_a_fresh_one_holds(mt10):
    """MT10 tasks with a free object, a joint and a button (all MT50 tasks: the slow test)."""
    sample = [1, 3, 6, 7]  # push, door-open, button-press-topdown, peg-insert-side
    check_history_does_not_matter([mt10.task_names[k] for k in sample], [mt10.goal_sets[k] for k in sample])


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Constant")
def test_every_mt50_instance_resets_to_what_a_fresh_one_holds():  # 100 env builds, about a minute
    from mtrl.envs.metaworld import benchmark_task_names, task_goal_sets

    check_history_does_not_matter(benchmark_task_names("MT50"), task_goal_sets("MT50", 0))


def test_point_instance_episodes_follow_their_seed_only():
    instance, other = PointMassInstance(np.array([1.0, 0.0])), PointMassInstance(np.array([1.0, 0.0]))
    other.reset(None, 5)
    other.step(np.ones(2))
    assert np.array_equal(instance.reset(None, 7), other.reset(None, 7))
    assert not np.array_equal(instance.reset(None, 7), instance.reset(None, 8))


# ---- the engine against the sequential reference -------------------------------------------------------
@pytest.mark.filterwarnings("ignore:Constant")
def test_episode_parallel_gives_the_sequential_episodes_in_process(mt10):
    plan = plan_episodes(4, 10_000, [len(g) for g in mt10.goal_sets], 2)
    instances = [MetaWorldInstance(env) for env in mt10._envs]
    expected = sequential_reference(instances, mt10.goal_sets, plan, wobbly_reach, EPISODE, True)
    lengths = {key: t for key, (_, _, t) in expected.items()}
    assert min(lengths.values()) < EPISODE and max(lengths.values()) == EPISODE  # early successes and full-length episodes
    assert {s for s, _, _ in expected.values()} == {True, False}
    rounds = {}
    for cap in (20, 13, 10):  # all at once; fewer instances than episodes; one instance per task
        outcomes = EpisodeRunner(mt10, cap).run([wobbly_reach], plan)
        assert outcomes_by_episode(plan, outcomes) == expected, f"cap {cap}"
        rounds[cap] = outcomes.rounds
    assert rounds[20] == EPISODE
    # one instance per task: an instance starts its next episode at the step that ended the last one
    assert rounds[10] == max(lengths[k, 0] + lengths[k, 1] for k in range(10))


@pytest.mark.filterwarnings("ignore:Constant")
def test_episode_parallel_across_two_env_workers_gives_the_sequential_episodes(mt10):
    from mtrl.envs.workers import ParallelMultiTaskEnv

    env = ParallelMultiTaskEnv("MT10", seed=1, workers=2, max_episode_steps=EPISODE, terminate_on_success=True, local_shard=True)
    try:
        plan = plan_episodes(4, 10_000, [len(g) for g in env.goal_sets], 2)
        expected = sequential_reference([MetaWorldInstance(e) for e in mt10._envs], mt10.goal_sets, plan, wobbly_reach, EPISODE, True)
        for cap in (10, 13):
            runner = EpisodeRunner(env, cap)
            assert runner.processes == 2
            assert outcomes_by_episode(plan, runner.run([wobbly_reach], plan)) == expected, f"cap {cap}"
    finally:
        env.close()


def test_episode_parallel_gives_the_sequential_episodes_on_point_tasks():
    env = PointMassEnv("Point-3", seed=0, max_episode_steps=20, terminate_on_success=True)
    policy = point_policy(env.goals)
    plan = plan_episodes(2, 300, [1, 1, 1], 4)
    instances = [PointMassInstance(goal) for goal in env.goals]
    expected = sequential_reference(instances, [[None]] * 3, plan, policy, 20, True)
    assert {s for s, _, _ in expected.values()} == {True, False}
    for cap in (3, 5, 12):
        outcomes = EpisodeRunner(env, cap).run([policy], plan)
        assert outcomes_by_episode(plan, outcomes) == expected, f"cap {cap}"
    assert outcomes.rounds == 20


def test_population_members_play_their_own_episodes_with_their_own_policy():
    """Two members' episodes in one run: each member's policy sees only its own rows, and each
    member's results are what it gets alone."""
    env = PointMassEnv("Point-3", seed=0, max_episode_steps=20, terminate_on_success=True)
    good, idle = point_policy(env.goals), (lambda obs, task_ids: np.zeros((len(obs), 2), dtype=np.float32))
    seen = {0: set(), 1: set()}

    def tracking(m, policy):
        def act(obs, task_ids):
            seen[m].add(len(obs))
            return policy(obs, task_ids)
        return act

    a, b = plan_episodes(2, 300, [1, 1, 1], 3, member=0), plan_episodes(7, 300, [1, 1, 1], 2, member=1)
    together = EpisodeRunner(env, 15).run([tracking(0, good), tracking(1, idle)], a + b)
    alone_a, alone_b = EpisodeRunner(env, 9).run([good], a), EpisodeRunner(env, 6).run([None, idle], b)
    assert outcomes_by_episode(a, alone_a) == outcomes_by_episode(a, together)
    assert np.array_equal(together.episode_return[len(a):], alone_b.episode_return)
    assert not together.success[len(a):].any() and together.success[: len(a)].any()
    assert max(seen[0]) == 9 and max(seen[1]) == 6  # one call per member per lock-step, its live rows only


# ---- evaluations do not depend on each other -----------------------------------------------------------
def tiny_agent(seed: int, num_tasks: int) -> MTSAC:
    torch.manual_seed(seed)
    return MTSAC(39, 4, num_tasks, AgentConfig(hidden_dim=32, num_layers=2))


def agent_policy(agent: MTSAC):
    def policy(obs, task_ids):
        with torch.no_grad():
            return agent.act(torch.as_tensor(obs), deterministic=True, task_ids=task_ids).numpy()
    return policy


def test_act_takes_the_task_of_each_row():
    agent = tiny_agent(0, 5)
    obs = torch.randn(5, 39)
    by_row = agent.act(obs, deterministic=True)  # row k is task k
    order = torch.tensor([3, 0, 4, 1, 2])
    assert torch.allclose(agent.act(obs[order], deterministic=True, task_ids=order), by_row[order], atol=1e-6)
    assert not torch.allclose(agent.act(obs[order], deterministic=True), by_row[order], atol=1e-3)
    repeated = torch.tensor([2, 2, 2, 0])
    assert torch.allclose(agent.act(obs[repeated], deterministic=True, task_ids=repeated), by_row[repeated], atol=1e-6)


@pytest.mark.filterwarnings("ignore:Constant")
def test_an_evaluation_is_the_same_whatever_was_evaluated_before(mt10):
    """Evaluation 5 of agent A, then evaluations of another agent, then evaluation 5 of A again:
    the same episodes. The sequential mode's evaluation env carries its RNG over instead."""
    runner = EpisodeRunner(mt10, 10)
    a, b = agent_policy(tiny_agent(0, 10)), agent_policy(tiny_agent(1, 10))
    first = evaluate_episodes(a, runner, 3, 5, 1)
    evaluate_episodes(b, runner, 3, 6, 1)
    evaluate_episodes(b, runner, 3, 5, 1)
    again = evaluate_episodes(a, runner, 3, 5, 1)
    assert np.array_equal(first.episode_return, again.episode_return)
    assert np.array_equal(first.episode_success, again.episode_success)
    assert np.array_equal(first.success_rate, again.success_rate) and np.array_equal(first.mean_return, again.mean_return)
    assert not np.array_equal(evaluate_episodes(a, runner, 3, 6, 1).episode_return, first.episode_return)  # another evaluation
    # what the sequential mode does: the second evaluation of the same policy starts elsewhere
    sequential = [evaluate(lambda obs: a(obs, np.arange(10)), mt10, 1).mean_return for _ in range(2)]
    assert not np.array_equal(*sequential)


# ---- configuration and identity ---------------------------------------------------------------------------
@pytest.mark.parametrize("data, message", [
    ({"train": {"eval_mode": "async"}}, "train.eval_mode must be one of parallel, sequential; got 'async'"),
    ({"env": {"eval_envs": 0}}, "env.eval_envs must be a positive integer, got 0"),
])
def test_bad_evaluation_settings_name_the_allowed_values(data, message):
    with pytest.raises(ConfigError) as error:
        config_from_dict(data)
    assert message in str(error.value)


def test_runs_written_before_eval_mode_existed_keep_the_sequential_evaluation():
    """``LEGACY_VALUES``: a config without ``train.eval_mode`` (a run written before the key
    existed) means ``sequential``; a config read from it keeps that, and compares equal to it."""
    new = config_from_dict({})
    assert new.train.eval_mode == "parallel"
    saved = config_to_dict(new)
    del saved["train"]["eval_mode"]  # a config.yaml of a run written before the key existed
    assert LEGACY_VALUES["train.eval_mode"] == "sequential"
    kept, values = keep_legacy_values(new, saved)
    assert kept.train.eval_mode == "sequential" and values == {"train.eval_mode": "sequential"}
    assert keep_legacy_values(new, config_to_dict(new)) == (new, {})  # a run that has the key keeps its own value
    assert config_changes(saved, config_to_dict(kept)) == []
    (change,) = config_changes(saved, config_to_dict(new))  # a mode change is another run
    assert change.describe() == "train.eval_mode: 'sequential' -> 'parallel'" and not change.allowed
    # without a legacy value, an absent key compares at today's default
    del saved["train"]["eval_episodes"]
    assert config_changes(saved, config_to_dict(kept)) == []


def test_eval_mode_is_part_of_a_runs_identity_and_eval_envs_is_not():
    assert "train.eval_mode" in identity_keys() and "train.eval_mode" not in RESUME_ALLOWED
    assert "env.eval_envs" in RESUME_ALLOWED and "env.eval_envs" not in identity_keys()
    (change,) = config_changes(config_to_dict(config_from_dict({})), config_to_dict(config_from_dict({"env": {"eval_envs": 20}})))
    assert change.allowed


def test_step_costs_of_unknown_tasks_are_the_median():
    assert step_cost("push-v3") > step_cost("button-press-v3")
    assert step_cost("point-0") == step_cost("point-1") > 0


# ---- the trainer and `mtrl evaluate` ----------------------------------------------------------------------
def point_config(**train):
    from tests.test_resume import POINT

    data = {**POINT, "train": {**POINT["train"], "total_steps": 200, "eval_episodes": 3, **train}, "aggregator": {"name": "ls"}}
    return config_from_dict(data)


def logged_evaluations(run_dir) -> list[tuple[int, float]]:
    import json

    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(row["step"], row["eval/mean_return"]) for row in rows if "eval/mean_return" in row]


def test_mtrl_evaluate_replays_the_trainers_evaluation_at_the_checkpoints_step(tmp_path):
    from mtrl.train import evaluate_run, train

    cfg = point_config()
    assert cfg.train.eval_mode == "parallel"
    train(cfg, tmp_path / "run")
    last = (tmp_path / "run" / "eval.csv").read_text().splitlines()[-1].split(",")
    assert int(last[0]) == 200
    result = evaluate_run(tmp_path / "run", episodes=3, device="cpu")
    assert [float(x) for x in last[2:]] == result.success_rate.tolist()
    assert logged_evaluations(tmp_path / "run")[-1] == (200, float(np.mean(result.mean_return)))


def test_a_run_written_before_eval_mode_existed_resumes_with_its_sequential_evaluation(tmp_path, capsys):
    """The first half trained with the sequential evaluation and its config.yaml without the key
    (as such a run wrote it); resumed from that config.yaml, the run ends as a run that evaluated
    sequentially throughout."""
    import yaml

    from mtrl import checkpoint as ckpt
    from mtrl.config import load_config
    from mtrl.runs import read_config_history
    from mtrl.train import evaluate_run, train

    sequential = point_config(eval_mode="sequential")
    train(sequential, tmp_path / "straight")
    old = tmp_path / "old"
    train(point_config(eval_mode="sequential", total_steps=100), old)
    saved = yaml.safe_load((old / "config.yaml").read_text())
    del saved["train"]["eval_mode"]
    (old / "config.yaml").write_text(yaml.safe_dump(saved))
    train(load_config(old / "config.yaml", ["train.total_steps=200"]), old, resume=str(old))  # not refused
    assert "was written before train.eval_mode existed: it keeps what it had then, train.eval_mode: sequential" in capsys.readouterr().err
    assert "eval_mode" not in yaml.safe_load((old / "config.yaml").read_text())["train"]  # config.yaml is never rewritten
    assert [r["key"] for r in read_config_history(old)] == ["train.total_steps"]  # the mode did not change
    assert logged_evaluations(old) == logged_evaluations(tmp_path / "straight")
    assert (old / "eval.csv").read_text() == (tmp_path / "straight" / "eval.csv").read_text()
    # mtrl evaluate on it (a checkpoint whose config lacks the key) plays the sequential evaluation, said on stderr
    state, path = ckpt.load_latest(old)
    del state["config"]["train"]["eval_mode"]
    torch.save(state, path)
    result = evaluate_run(old, episodes=3, device="cpu")
    err = capsys.readouterr()
    assert f"{path} was written before train.eval_mode existed" in err.err and "sequential evaluation" in err.out
    assert result.episode_success is None  # evaluate's result, not evaluate_episodes'


def test_a_run_cannot_change_its_eval_mode_on_resume(tmp_path):
    from mtrl.train import train

    train(point_config(total_steps=100), tmp_path / "run")
    with pytest.raises(ConfigError, match="train.eval_mode: 'parallel' -> 'sequential'"):
        train(point_config(eval_mode="sequential"), tmp_path / "run", resume="auto")
    more = config_to_dict(point_config(total_steps=200))
    more["env"]["eval_envs"] = 5
    train(config_from_dict(more), tmp_path / "run", resume="auto")  # allowed: the cap never changes a result
