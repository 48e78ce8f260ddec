"""The per-task replay buffer (mtrl/replay.py): storage [K, capacity, ...], even per-task
sampling into [K, B, ...], ring wrap-around, seeded sampling, AuxiLearn's held-out slots, and
exact state round trips."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mtrl.replay import MultiTaskReplay

K, OBS, ACT = 3, 4, 2


def fill(replay: MultiTaskReplay, steps: int, start: int = 0) -> None:
    """Transition t of task k carries reward 1000 k + t and obs / next_obs filled with k."""
    for t in range(start, start + steps):
        obs = np.repeat(np.arange(K, dtype=np.float32)[:, None], OBS, axis=1)
        reward = 1000.0 * np.arange(K) + t
        terminated = np.array([t % 7 == 0] * K)
        replay.add(obs, np.zeros((K, ACT)), reward, obs + 0.5, terminated)


def test_storage_and_even_per_task_sampling():
    replay = MultiTaskReplay(K, 50, OBS, ACT, seed=0)
    assert replay._data["obs"].shape == (K, 50, OBS)
    fill(replay, 30)
    assert len(replay) == 30
    batch = replay.sample(64)
    assert batch.obs.shape == (K, 64, OBS) and batch.action.shape == (K, 64, ACT)
    assert batch.reward.shape == batch.done.shape == (K, 64)
    task = torch.arange(K, dtype=torch.float32)[:, None]
    assert torch.equal(batch.obs[..., 0], task.expand(K, 64))  # row k holds task k only
    assert torch.equal((batch.reward // 1000), task.expand(K, 64))
    t = batch.reward % 1000
    assert bool(((t >= 0) & (t < 30)).all())
    assert torch.equal(batch.done, (t % 7 == 0).float())  # the stored terminal flag, per transition
    assert torch.equal(batch.next_obs, batch.obs + 0.5)


def test_ring_buffer_keeps_the_newest_capacity_transitions():
    replay = MultiTaskReplay(K, 10, OBS, ACT, seed=1)
    fill(replay, 25)
    assert len(replay) == 10
    t = replay.sample(500).reward % 1000
    assert set(t.unique().tolist()) == set(range(15, 25))


def test_sampling_is_seeded_and_uniform():
    a, b, c = (MultiTaskReplay(K, 20, OBS, ACT, seed=s) for s in (4, 4, 5))
    for r in (a, b, c):
        fill(r, 20)
    x, y, z = a.sample(32), b.sample(32), c.sample(32)
    assert torch.equal(x.reward, y.reward) and not torch.equal(x.reward, z.reward)
    counts = torch.bincount((a.sample(20_000).reward[0] % 1000).long(), minlength=20)
    assert counts.min() > 800 and counts.max() < 1200  # 1000 expected per slot


def test_holdout_slots_are_never_sampled_for_training():
    every = 4
    replay = MultiTaskReplay(K, 40, OBS, ACT, seed=2, holdout_every=every, holdout_tasks=[1])
    fill(replay, 40)
    assert replay.holdout_size() == 10
    slots = replay.sample(5_000).reward % 1000  # slot == t before wrap-around
    held = slots[1] % every == every - 1
    assert not bool(held.any())  # task 1: held-out slots never train
    assert set(slots[1].unique().tolist()) == {s for s in range(40) if s % every != every - 1}
    assert set(slots[0].unique().tolist()) == set(range(40))  # other tasks use every slot
    val = replay.sample_holdout(1_000)
    assert val.reward.shape == (1, 1_000)
    assert torch.equal(val.reward // 1000, torch.ones(1, 1_000))
    assert set((val.reward % 1000).unique().tolist()) == {s for s in range(40) if s % every == every - 1}


def test_state_round_trip_gives_identical_samples():
    replay = MultiTaskReplay(K, 16, OBS, ACT, seed=3)
    fill(replay, 20)  # wrapped around: position != size
    replay.sample(8)
    state = replay.state_dict()
    copy = MultiTaskReplay(K, 16, OBS, ACT, seed=99)
    copy.load_state_dict(state)
    for _ in range(3):
        assert torch.equal(copy.sample(8).reward, replay.sample(8).reward)
    fill(replay, 5, start=20)  # and the next writes land in the same slots
    fill(copy, 5, start=20)
    for name in ("obs", "reward", "done"):
        assert torch.equal(copy._data[name], replay._data[name])


def test_bad_arguments_and_empty_buffer_are_clear_errors():
    with pytest.raises(ValueError, match="capacity_per_task must be >= 1, got 0"):
        MultiTaskReplay(K, 0, OBS, ACT)
    with pytest.raises(ValueError, match="holdout_every must be 0 .* got 1"):
        MultiTaskReplay(K, 10, OBS, ACT, holdout_every=1)
    with pytest.raises(ValueError, match="empty"):
        MultiTaskReplay(K, 10, OBS, ACT).sample(4)
    small = MultiTaskReplay(2, 10, OBS, ACT)
    with pytest.raises(ValueError, match="3 tasks"):
        small.load_state_dict(MultiTaskReplay(K, 10, OBS, ACT).state_dict())
