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

from mtrl.envs.metaworld import MultiTaskEnv, benchmark_task_names
from mtrl.envs.task_costs import STEP_MS
from mtrl.envs.workers import EnvWorkerError, ParallelMultiTaskEnv, _spin_limit, _Spin, assign_tasks
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
def two_workers(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:  # the workers keep this working directory, where
        patch.chdir(tmp_path_factory.mktemp("workers"))  # MuJoCo writes its warning log (MUJOCO_LOG.TXT)
        env = ParallelMultiTaskEnv("MT10", seed=1, workers=2, max_episode_steps=EPISODE)
    yield env
    env.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.parametrize("suite, workers", [("MT10", 2), ("MT10", 3), ("MT10", 4), ("MT50", 2), ("MT50", 7), ("MT50", 16)])
def test_shards_are_balanced_by_step_cost_lightest_first(suite, workers):
    # not named `benchmark`: pytest-benchmark, where installed, owns a fixture of that name
    names = benchmark_task_names(suite)
    shards = assign_tasks(names, workers)
    assert sorted(k for shard in shards for k in shard) == list(range(len(names)))  # every task once
    assert all(shard == sorted(shard) for shard in shards) and len(shards) == workers
    loads = [sum(STEP_MS[names[k]] for k in shard) for shard in shards]
    assert all(a <= b + 1e-9 for a, b in zip(loads, loads[1:]))  # the lightest first: the local shard's
    # longest-processing-time first: the heaviest shard got its last task while it was the
    # lightest, so no two shards differ by more than the costliest task
    assert max(loads) - min(loads) <= max(STEP_MS[name] for name in names)
    round_robin = max(sum(STEP_MS[names[k]] for k in range(w, len(names), workers)) for w in range(workers))
    assert max(loads) <= round_robin


def test_shards_are_at_most_one_per_task_and_unknown_tasks_cost_the_median():
    assert assign_tasks(benchmark_task_names("MT10"), 16) == [[k] for k in sorted(range(10), key=lambda k: STEP_MS[benchmark_task_names("MT10")[k]])]
    assert assign_tasks(["reach-v3"], 4) == [[0]]
    assert assign_tasks(["a-new-task", "another-one"], 2) == [[0], [1]]
    assert assign_tasks(["button-press-v3", "a-new-task", "coffee-pull-v3"], 2) == [[0, 1], [2]]


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
    """local_shard: this process steps the lighter shard and one worker process the other; the same
    steps as the in-process env, and its states load into the two-process env and back."""
    env = ParallelMultiTaskEnv("MT10", seed=1, workers=2, max_episode_steps=EPISODE, local_shard=True)
    inprocess = MultiTaskEnv("MT10", seed=1, max_episode_steps=EPISODE)  # fresh: the fixture's has moved on
    try:
        assert env.workers == 2 and len(env.pids) == 1
        assert env._local_tasks == assign_tasks(env.task_names, 2)[0]
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
        with pytest.raises(EnvWorkerError, match=r"env worker 0 \(pid \d+, tasks reach-v3, pick-place-v3, .*\) died \(signal SIGKILL\) during 'step'"):
            env.step(np.zeros((10, 4)))
    finally:
        env.close()
        inprocess.close()
    with pytest.raises(ValueError, match="local_shard must be a bool, got 1"):
        ParallelMultiTaskEnv("MT1-reach-v3", seed=0, workers=1, local_shard=1)


def poisoned(state: dict, task: int) -> dict:
    """``state`` with a NaN in the first qpos entry of ``task``'s MuJoCo state (the integration
    state starts with the time, then qpos): MuJoCo's next step reports BADQPOS and resets."""
    sim = [s.clone() for s in state["sim"]]
    sim[task][1] = float("nan")
    return {**state, "sim": sim}


def test_an_unstable_step_is_flagged_for_its_task_only_in_process_and_in_the_workers(inprocess, two_workers, tmp_path, monkeypatch):
    """MuJoCo's warning counters, read after each step, flag exactly the task whose simulation
    went bad, in the training process and in either worker process; the flag is that step's
    alone (the next step is clean)."""
    monkeypatch.chdir(tmp_path)  # MuJoCo's warning log of the in-process env lands here
    two_workers.reset()
    inprocess.load_state_dict(two_workers.state_dict())  # the same episodes in both
    actions = uniform_actions(inprocess, 6, seed=8)
    for a in actions[:2]:  # ordinary steps: nothing flagged
        x, y = inprocess.step(a), two_workers.step(a)
        assert not x.unstable.any() and not y.unstable.any()
    for i, shard in enumerate(two_workers._tasks):  # one task in each worker process
        task = shard[-1]
        state = poisoned(inprocess.state_dict(), task)
        inprocess.load_state_dict(state)
        two_workers.load_state_dict(state)
        for a, flagged in ((actions[2 + 2 * i], [task]), (actions[3 + 2 * i], [])):  # the poisoned step, then a clean one
            x, y = inprocess.step(a), two_workers.step(a)
            assert np.flatnonzero(x.unstable).tolist() == flagged, task
            assert_same_steps([y], [x])  # the workers carry the flag like every other field
    assert (tmp_path / "MUJOCO_LOG.TXT").exists()  # MuJoCo's own record of the in-process warnings


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
    with pytest.raises(ValueError, match="spin_ms must be a number >= 0, got -1"):
        ParallelMultiTaskEnv("MT1-reach-v3", seed=0, workers=1, spin_ms=-1)
    with pytest.raises(ConfigError, match="env.workers must be a positive integer, got 0"):
        config_from_dict({"env": {"workers": 0}})
    with pytest.raises(ConfigError, match="env.spin_ms must be a number >= 0, got -0.5"):
        config_from_dict({"env": {"spin_ms": -0.5}})
    with pytest.raises(ConfigError, match="env.workers: 2 needs a MetaWorld benchmark"):
        make_env(config_from_dict({"env": {"benchmark": "Point-3", "workers": 2}}), seed=0)


def test_more_workers_than_tasks_start_one_per_task():
    env = make_env(config_from_dict({"env": {"benchmark": "MT1-reach-v3", "workers": 3, "max_episode_steps": 10}}), seed=0)
    try:
        assert isinstance(env, ParallelMultiTaskEnv) and env.workers == 1
        assert env.reset().shape == (1, 39)
    finally:
        env.close()


@pytest.mark.parametrize("start_method, spin_ms", [("forkserver", 5.0), ("fork", 5.0), ("spawn", 0.0)])
def test_other_start_methods_and_no_spinning_give_the_same_steps(start_method, spin_ms):
    reference = MultiTaskEnv("MT1-reach-v3", seed=2, max_episode_steps=10)
    env = ParallelMultiTaskEnv("MT1-reach-v3", seed=2, workers=1, max_episode_steps=10, start_method=start_method, spin_ms=spin_ms)
    try:
        # one worker and this process waiting beside it: two stepping processes on the usable cores
        assert env.spin_s == (0.0 if spin_ms == 0 or _usable_cores() < 2 else spin_ms / 1000)
        assert np.array_equal(env.reset(), reference.reset())
        actions = uniform_actions(reference, 15, seed=0)
        for x, y in zip(play(env, actions), play(reference, actions)):
            for field in STEP_FIELDS:
                assert np.array_equal(getattr(x, field), getattr(y, field)), field
    finally:
        env.close()
        reference.close()


def test_spin_budget_adapts_like_guest_halt_polling():
    spin = _Spin(0.004, [])
    spin.learn(0.001)  # caught while spinning: the budget stays
    assert spin.budget_s == 0.004
    spin.learn(0.050)  # spun for nothing: halve, down to an eighth of the limit, then stop
    assert spin.budget_s == 0.002
    for expected in (0.001, 0.0005, 0.0):
        spin.learn(0.050)
        assert spin.budget_s == expected
    spin.learn(0.050)
    assert spin.budget_s == 0.0
    spin.learn(0.003)  # a wait the full budget would have caught: back to the limit
    assert spin.budget_s == 0.004


def test_spinning_finds_answers_and_closed_pipes_and_gives_up_after_its_budget():
    read_a, write_a = os.pipe()
    read_b, write_b = os.pipe()
    try:
        spin = _Spin(0.02, [read_a, read_b])
        start = time.perf_counter()
        assert spin.wait() == set()  # nothing to read: back after the budget
        assert time.perf_counter() - start >= 0.02
        os.write(write_a, b"x")
        assert spin.wait() == {read_a}
        os.close(write_b)  # a dead peer counts as readable: its reader then sees EOF
        write_b = None
        assert spin.wait() == {read_a, read_b}
        assert _Spin(0.0, [read_a]).wait() == set()  # no budget: no polling
    finally:
        for fd in (read_a, write_a, read_b, write_b):
            if fd is not None:
                os.close(fd)


def _usable_cores() -> int:
    """The cores this process may run on: its affinity mask (a container's cpuset or taskset can make
    it smaller than ``os.cpu_count()``), or the CPU count where there is no mask."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def test_spinning_is_off_when_stepping_processes_outnumber_the_cores(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 64)  # the machine's count: not what the process may use
    assert _spin_limit(5.0, 2) == 0.005  # a local shard and one worker on two cores
    assert _spin_limit(5.0, 3) == 0.0  # two workers and a waiting parent
    assert _spin_limit(0.0, 1) == 0.0
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    assert _spin_limit(5.0, 2) == 0.005


def test_an_env_confined_to_one_core_does_not_spin(monkeypatch):
    """A worker and this process on a one-core affinity mask of a 64-core machine: no spinning."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3}, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    env = ParallelMultiTaskEnv("MT1-reach-v3", seed=0, workers=1, max_episode_steps=10, start_method="fork", spin_ms=5.0)
    try:
        assert env.spin_s == 0.0
        assert env.reset().shape == (1, 39)
    finally:
        env.close()
