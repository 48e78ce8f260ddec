"""The per-task replay buffer ``mtrl.replay.MultiTaskReplay``.

Every stored transition is labelled: task k's transition number t has reward ``1000 k + t``,
observation ``[k, t, ...]``, action ``[t, -t]`` and next observation ``obs + 0.25``, so any
sampled row tells which task and which add it came from and whether its fields belong together.
"""

from __future__ import annotations

import io
import numpy as np
import pytest
import torch

from mtrl.envs.synthetic import PointMassEnv
from mtrl.replay import Batch, MultiTaskReplay
from tests.helpers import through_torch_save

K, OBS_DIM, ACT_DIM = 3, 5, 2


def transition(t: int, terminated: np.ndarray | None = None) -> dict:
    """The K labelled transitions of add number ``t`` (numpy, as the training loop passes them)."""
    tasks = np.arange(K, dtype=np.float32)
    obs = np.zeros((K, OBS_DIM), dtype=np.float32)
    obs[:, 0], obs[:, 1] = tasks, t
    return dict(
        obs=obs,
        action=np.tile(np.array([t, -t], dtype=np.float32), (K, 1)),
        reward=1000.0 * tasks + t,
        next_obs=obs + 0.25,
        terminated=np.zeros(K, dtype=bool) if terminated is None else terminated,
    )


def add_range(replay: MultiTaskReplay, start: int, stop: int) -> None:
    for t in range(start, stop):
        replay.add(**transition(t))


def task_and_time(batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(task, add number) of every sampled transition, each [rows, B]; checks that all fields of a
    sampled transition come from the same add."""
    task, t = batch.reward // 1000, batch.reward % 1000
    assert torch.equal(batch.obs[..., 0], task) and torch.equal(batch.obs[..., 1], t)
    assert torch.equal(batch.action, torch.stack([t, -t], dim=-1))
    assert torch.equal(batch.next_obs, batch.obs + 0.25)
    return task, t


# ---- layout ------------------------------------------------------------------------------------
def test_storage_is_per_task_and_batches_are_k_by_b():
    replay = MultiTaskReplay(K, 12, OBS_DIM, ACT_DIM, seed=0)
    add_range(replay, 0, 12)
    state = replay.state_dict()
    assert state["obs"].shape == state["next_obs"].shape == (K, 12, OBS_DIM)
    assert state["action"].shape == (K, 12, ACT_DIM)
    assert state["reward"].shape == state["done"].shape == (K, 12)
    assert torch.equal(state["reward"], 1000.0 * torch.arange(K)[:, None] + torch.arange(12.0))  # slot t of task k

    batch = replay.sample(40)
    assert batch.num_tasks == K
    assert batch.obs.shape == batch.next_obs.shape == (K, 40, OBS_DIM)
    assert batch.action.shape == (K, 40, ACT_DIM) and batch.reward.shape == batch.done.shape == (K, 40)
    assert all(getattr(batch, f).dtype == torch.float32 for f in ("obs", "action", "reward", "next_obs", "done"))
    task, t = task_and_time(batch)
    assert torch.equal(task, torch.arange(K, dtype=torch.float32)[:, None].expand(K, 40))  # row k: task k only
    assert bool(((t >= 0) & (t < 12)).all())


def test_torch_inputs_are_stored_like_numpy_ones():
    a, b = (MultiTaskReplay(K, 6, OBS_DIM, ACT_DIM, seed=1) for _ in range(2))
    for t in range(4):
        values = transition(t, terminated=np.array([t % 2 == 0, False, True]))
        a.add(**values)
        b.add(**{name: torch.from_numpy(np.asarray(v)) for name, v in values.items()})
    for name, value in a.state_dict().items():
        if isinstance(value, torch.Tensor) and value.dtype == torch.float32:
            assert torch.equal(value, b.state_dict()[name]), name


# ---- ring buffer -------------------------------------------------------------------------------
def test_len_grows_to_capacity_and_the_oldest_transitions_are_overwritten():
    capacity = 8
    replay = MultiTaskReplay(K, capacity, OBS_DIM, ACT_DIM, seed=2)
    assert len(replay) == 0
    for t in range(21):
        replay.add(**transition(t))
        assert len(replay) == min(t + 1, capacity)
        _, sampled = task_and_time(replay.sample(400))
        newest = set(range(max(0, t + 1 - capacity), t + 1))
        assert set(sampled.unique().tolist()) == newest  # all of the newest, nothing older


def test_empty_buffer_and_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="empty"):
        MultiTaskReplay(K, 4, OBS_DIM, ACT_DIM).sample(2)
    with pytest.raises(ValueError, match="capacity_per_task"):
        MultiTaskReplay(K, 0, OBS_DIM, ACT_DIM)
    with pytest.raises(ValueError, match="holdout_every"):
        MultiTaskReplay(K, 4, OBS_DIM, ACT_DIM, holdout_every=1)


# ---- randomness --------------------------------------------------------------------------------
def test_sampling_follows_the_buffers_own_seed_only():
    buffers = [MultiTaskReplay(K, 30, OBS_DIM, ACT_DIM, seed=s) for s in (7, 7, 8)]
    for replay in buffers:
        add_range(replay, 0, 30)
    torch.manual_seed(0)  # the global RNG must not matter
    first = [buffers[0].sample(16).reward for _ in range(3)]
    torch.manual_seed(123)
    second = [buffers[1].sample(16).reward for _ in range(3)]
    assert all(torch.equal(x, y) for x, y in zip(first, second))
    assert not torch.equal(first[0], buffers[2].sample(16).reward)
    assert not torch.equal(first[0], first[1])  # successive draws move on


def test_sampling_is_uniform_over_the_stored_slots():
    size, draws = 25, 20_000
    replay = MultiTaskReplay(K, 40, OBS_DIM, ACT_DIM, seed=3)
    add_range(replay, 0, size)
    _, t = task_and_time(replay.sample(draws))
    expected = draws / size  # 800 per slot and task; the standard deviation is about 28
    for row in t.long():
        counts = torch.bincount(row, minlength=size)
        assert len(counts) == size and int(counts.min()) > expected - 150 and int(counts.max()) < expected + 150
    assert not torch.equal(t[0], t[1])  # tasks draw their indices independently


# ---- hold-out ----------------------------------------------------------------------------------
def held(slot: int, every: int) -> bool:
    """The hold-out rule of replay.py: ring slot s is held out when s % every == every - 1."""
    return slot % every == every - 1


@pytest.mark.parametrize("adds", [2, 10, 19, 30, 47])  # partly filled, full, wrapped around
def test_held_out_slots_are_never_trained_on_and_are_the_validation_data(adds):
    every, capacity, holdout_tasks = 3, 30, [0, 2]
    replay = MultiTaskReplay(K, capacity, OBS_DIM, ACT_DIM, seed=4, holdout_every=every, holdout_tasks=holdout_tasks)
    add_range(replay, 0, adds)
    size = min(adds, capacity)
    stored = {t % capacity: t for t in range(adds - size, adds)}  # ring slot -> add number it holds
    held_slots = {s for s in stored if held(s, every)}
    assert replay.holdout_size() == len(held_slots) == size // every

    task, t = task_and_time(replay.sample(3_000))
    for k in range(K):
        assert bool((task[k] == k).all())
        slots = {int(x) % capacity for x in t[k].unique()}
        if k in holdout_tasks:
            assert slots == set(stored) - held_slots  # every training slot, never a held-out one
        else:
            assert slots == set(stored)  # tasks without hold-out train on everything
        assert {int(x) for x in t[k].unique()} == {stored[s] for s in slots}

    if not held_slots:
        with pytest.raises(ValueError, match="held-out"):
            replay.sample_holdout(4)
        return
    validation = replay.sample_holdout(2_000)
    assert validation.reward.shape == (len(holdout_tasks), 2_000) and validation.obs.shape[:2] == (2, 2_000)
    task, t = task_and_time(validation)
    assert torch.equal(task, torch.tensor(holdout_tasks, dtype=torch.float32)[:, None].expand(2, 2_000))
    for row in t:
        assert {int(x) for x in row.unique()} == {stored[s] for s in held_slots}


def test_held_out_training_draws_stay_uniform():
    every, size = 4, 40
    replay = MultiTaskReplay(K, size, OBS_DIM, ACT_DIM, seed=5, holdout_every=every, holdout_tasks=[1])
    add_range(replay, 0, size)
    _, t = task_and_time(replay.sample(15_000))
    counts = torch.bincount(t[1].long(), minlength=size)
    training = torch.tensor([not held(s, every) for s in range(size)])
    assert int(counts[~training].sum()) == 0
    expected = 15_000 / int(training.sum())  # 500 per training slot
    assert int(counts[training].min()) > expected - 110 and int(counts[training].max()) < expected + 110


def test_no_holdout_by_default():
    replay = MultiTaskReplay(K, 10, OBS_DIM, ACT_DIM)
    add_range(replay, 0, 10)
    assert replay.holdout_size() == 0
    with pytest.raises(ValueError):
        replay.sample_holdout(1)


# ---- checkpoints -------------------------------------------------------------------------------
@pytest.mark.parametrize("adds", [5, 23])  # before and after wrap-around (position != size)
def test_state_round_trip_gives_identical_samples_and_writes(adds):
    kwargs = dict(holdout_every=3, holdout_tasks=[1])
    replay = MultiTaskReplay(K, 16, OBS_DIM, ACT_DIM, seed=6, **kwargs)
    add_range(replay, 0, adds)
    replay.sample(4)  # the generator has moved on from its seed
    copy = MultiTaskReplay(K, 16, OBS_DIM, ACT_DIM, seed=60, **kwargs)
    add_range(copy, 500, 503)  # stale contents must not survive the load
    copy.load_state_dict(through_torch_save(replay.state_dict()))
    assert len(copy) == len(replay)
    for _ in range(3):
        x, y = replay.sample(32), copy.sample(32)
        assert all(torch.equal(getattr(x, f), getattr(y, f)) for f in ("obs", "action", "reward", "next_obs", "done"))
        assert torch.equal(replay.sample_holdout(8).reward, copy.sample_holdout(8).reward)
    add_range(replay, adds, adds + 11)  # later adds overwrite the same slots in both
    add_range(copy, adds, adds + 11)
    for _ in range(3):
        assert torch.equal(replay.sample(32).reward, copy.sample(32).reward)


@pytest.mark.parametrize("adds", [5, 23])
def test_state_in_the_earlier_contiguous_layout_loads_the_same(adds):
    """Checkpoints written before the slot-major storage hold contiguous [K, size, ...] fields."""
    replay = MultiTaskReplay(K, 16, OBS_DIM, ACT_DIM, seed=6)
    add_range(replay, 0, adds)
    state = {k: v.contiguous().clone() if isinstance(v, torch.Tensor) else v for k, v in replay.state_dict().items()}
    copy = MultiTaskReplay(K, 16, OBS_DIM, ACT_DIM, seed=60)
    copy.load_state_dict(through_torch_save(state))
    for _ in range(3):
        x, y = replay.sample(32), copy.sample(32)
        assert all(torch.equal(getattr(x, f), getattr(y, f)) for f in ("obs", "action", "reward", "next_obs", "done"))


def test_state_holds_the_filled_slots_only_and_no_copy_of_them():
    """A checkpoint of a partly filled buffer is as large as one of a buffer of exactly that size,
    and the state shares the buffer's memory instead of cloning it (issue 14: the clone doubled the
    memory of a full 1M-transition buffer at every checkpoint)."""
    sizes = {}
    for capacity in (10, 1000):
        replay = MultiTaskReplay(K, capacity, OBS_DIM, ACT_DIM, seed=0)
        add_range(replay, 0, 10)
        state = replay.state_dict()
        for name in ("obs", "action", "reward", "next_obs", "done"):
            assert state[name].shape[:2] == (K, 10)
            assert state[name].untyped_storage().data_ptr() == replay._data[name].untyped_storage().data_ptr()
        buffer = io.BytesIO()
        torch.save(state, buffer)
        sizes[capacity] = len(buffer.getvalue())
    assert abs(sizes[1000] - sizes[10]) < 64, sizes  # the same tensors; only the capacity's digits differ


def test_state_of_another_task_count_is_refused():
    replay = MultiTaskReplay(K, 8, OBS_DIM, ACT_DIM)
    add_range(replay, 0, 3)
    with pytest.raises(ValueError, match=f"{K} tasks"):
        MultiTaskReplay(K + 1, 8, OBS_DIM, ACT_DIM).load_state_dict(replay.state_dict())


@pytest.mark.parametrize("saved_capacity, adds, new_capacity", [(4, 6, 8), (8, 4, 4)])
def test_state_loaded_into_another_capacity_is_refused_or_consistent(saved_capacity, adds, new_capacity):
    """load_state_dict accepts any state whose size fits the new capacity; the buffer must then
    sample only what was stored and keep accepting adds (or refuse the state up front)."""
    saved = MultiTaskReplay(K, saved_capacity, OBS_DIM, ACT_DIM)
    add_range(saved, 0, adds)
    replay = MultiTaskReplay(K, new_capacity, OBS_DIM, ACT_DIM)
    try:
        replay.load_state_dict(saved.state_dict())
    except ValueError:
        return  # refusing a state of another capacity is fine
    replay.add(**transition(adds))
    _, t = task_and_time(replay.sample(500))
    stored_before = set(range(max(0, adds - saved_capacity), adds))
    assert set(t.unique().tolist()) <= stored_before | {adds}


# ---- what the training loop stores -------------------------------------------------------------
def test_done_is_the_added_terminated_flag():
    replay = MultiTaskReplay(K, 20, OBS_DIM, ACT_DIM, seed=8)
    flags = {}
    for t in range(20):
        flags[t] = np.array([t % 5 == 0, t % 2 == 1, False])
        replay.add(**transition(t, terminated=flags[t]))
    batch = replay.sample(200)
    _, t = task_and_time(batch)
    expected = torch.tensor([[float(flags[int(x)][k]) for x in t[k]] for k in range(K)])
    assert torch.equal(batch.done, expected)


def test_truncated_episode_ends_are_stored_as_not_done_with_their_final_observation():
    """Transitions from an env whose episodes end by the time limit: done stays 0, and the stored
    next_obs of the last step is the finished episode's final observation, not the reset one."""
    env = PointMassEnv("Point-2", seed=0, max_episode_steps=3)
    replay = MultiTaskReplay(2, 6, env.obs_dim, env.action_dim, seed=9)
    rng = np.random.default_rng(0)
    obs = env.reset()
    ends = []
    for _ in range(6):  # two whole episodes fill the buffer exactly
        action = rng.uniform(-1, 1, size=(2, 2)).astype(np.float32)
        result = env.step(action)
        replay.add(obs, action, result.reward, result.next_obs, result.terminated)
        if result.episode_done.any():
            assert result.truncated.all() and not result.terminated.any()
            ends.append((result.next_obs, result.obs))
        obs = result.obs
    stored = replay.state_dict()
    assert not stored["done"].any()
    for slot, (final, reset) in zip((2, 5), ends):
        assert torch.equal(stored["next_obs"][:, slot], torch.from_numpy(final))
        assert not torch.equal(stored["next_obs"][:, slot], torch.from_numpy(reset))
    assert torch.equal(stored["obs"][:, 3], torch.from_numpy(ends[0][1]))  # the second episode starts there


def test_population_replay_is_each_members_own_replay():
    """PopulationReplay: one write and one gather per field for all members, and member s's
    replay is exactly a standalone MultiTaskReplay of its seed (samples, state_dict, its size on
    disk), also after a member stopped adding (a failed member leaves the population)."""
    import io

    from mtrl.replay import PopulationReplay

    seeds, K, cap, obs_dim, act_dim = [3, 5, 8], 4, 6, 5, 2
    population = PopulationReplay(seeds, K, cap, obs_dim, act_dim)
    alone = [MultiTaskReplay(K, cap, obs_dim, act_dim, seed=s) for s in seeds]
    rng = np.random.default_rng(0)

    def transition(n):
        return (rng.normal(size=(n, K, obs_dim)).astype(np.float32), rng.normal(size=(n, K, act_dim)).astype(np.float32),
                rng.normal(size=(n, K)).astype(np.float32), rng.normal(size=(n, K, obs_dim)).astype(np.float32),
                rng.random((n, K)) < 0.2)

    def check(members):
        batch = population.sample(3, members)
        for i, s in enumerate(members):
            own = alone[s].sample(3)
            for name in ("obs", "action", "reward", "next_obs", "done"):
                assert torch.equal(getattr(batch, name)[i], getattr(own, name)), (s, name)

    for step in range(9):  # wraps around the ring (capacity 6)
        values = transition(3)
        population.add(*values)
        for s in range(3):
            alone[s].add(*(v[s] for v in values))
        check([0, 1, 2])
    for step in range(4):  # member 1 left: the others go on
        values = transition(2)
        population.add(*values, members=[0, 2])
        for i, s in enumerate([0, 2]):
            alone[s].add(*(v[i] for v in values))
        check([0, 2])
    for s in range(3):
        mine, own = population.replays[s].state_dict(), alone[s].state_dict()
        for key in own:
            assert torch.equal(mine[key], own[key]) if isinstance(own[key], torch.Tensor) else mine[key] == own[key], (s, key)
        sizes = []
        for state in (mine, own):
            buffer = io.BytesIO()
            torch.save(state, buffer)
            sizes.append(len(buffer.getvalue()))
        assert sizes[0] == sizes[1]  # a member's checkpoint holds its own rows, not the population's
    fresh = PopulationReplay(seeds, K, cap, obs_dim, act_dim)
    for s in range(3):
        fresh.replays[s].load_state_dict(alone[s].state_dict())
    batch = fresh.sample(4, [0, 2])  # members 0 and 2 are at one position
    for i, s in enumerate([0, 2]):
        assert torch.equal(batch.obs[i], alone[s].sample(4).obs)
