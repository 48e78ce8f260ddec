"""Per-task replay buffer on the training device (docs/design.md §2).

Storage is one tensor per field shaped [capacity, K, ...] (slot-major): every step adds one
transition per task, so all K ring buffers advance together, each add writes one contiguous row,
and the filled slots are always one contiguous prefix, which a checkpoint writes without copying
it (``state_dict``). Sampling is even over tasks: each call draws
``B`` indices per task, giving a ``Batch`` whose fields are [K, B, ...], with no Python loop over
samples or tasks. Indices come from the buffer's own CPU ``torch.Generator`` (then moved to the
device), so sampling is identical on CPU and CUDA and its state is part of ``state_dict``.

On a CUDA device ``add`` goes through pinned host memory with ``non_blocking`` copies: a copy from
pageable memory blocks the host until the device has run everything queued before it, which
with ``env.overlap`` is the update in flight. Two staging rows take turns, each reused only after
the device has read it (an event), so the host never waits for an update to store a transition.

``PopulationReplay`` holds the replays of a population's S members in one tensor per field,
[S, capacity, K, ...]: member s's ``MultiTaskReplay`` is a view of row s (its own generator,
``state_dict`` and ``load_state_dict`` exactly a single run's), and one ``add`` writes every
member's transition and one ``sample`` gathers every member's batch [S, K, B, ...] (each member's
indices from its own generator, as its ``sample`` draws them), whatever S.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

__all__ = ["Batch", "MultiTaskReplay", "PopulationReplay"]


@dataclass(frozen=True)
class Batch:
    """Transitions grouped by task: row k of every field belongs to task k.

    Attributes:
        obs: [K, B, obs_dim]
        action: [K, B, action_dim]
        reward: [K, B]
        next_obs: [K, B, obs_dim]
        done: [K, B] float, 1.0 where the transition terminated (not truncated)
    """

    obs: Tensor
    action: Tensor
    reward: Tensor
    next_obs: Tensor
    done: Tensor

    @property
    def num_tasks(self) -> int:
        return self.obs.shape[0]


_FIELDS = ("obs", "action", "reward", "next_obs", "done")


class _RowWriter:
    """Writes one row of values (numpy or tensors) into device storage: on CPU a cast and a copy;
    on CUDA through two pinned staging rows taking turns, non-blocking (module docstring)."""

    def __init__(self, shapes: dict[str, tuple[int, ...]], device: torch.device) -> None:
        self.device = device
        self._staging: list[tuple[dict[str, Tensor], torch.cuda.Event]] = []
        if device.type == "cuda":
            for _ in range(2):
                self._staging.append(({name: torch.empty(shape, pin_memory=True) for name, shape in shapes.items()}, torch.cuda.Event()))
        self._turn = 0

    def write(self, targets: dict[str, Tensor], values: dict[str, object]) -> None:
        if self.device.type != "cuda":
            for name, value in values.items():
                if isinstance(value, np.ndarray):
                    value = torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32))
                targets[name].copy_(value.to(self.device, torch.float32))
            return
        row, copied = self._staging[self._turn]
        self._turn = 1 - self._turn
        copied.synchronize()  # the copies out of this row, two adds ago, are done (at once, unless nothing synced since)
        for name, value in values.items():
            target = targets[name]
            if isinstance(value, Tensor) and value.device.type != "cpu":
                target.copy_(value)  # already on a device: a device-side copy
                continue
            if isinstance(value, Tensor):
                row[name].copy_(value)
            else:
                row[name].numpy()[...] = value  # numpy casts (bool done flags to 0.0 / 1.0)
            target.copy_(row[name], non_blocking=True)
        copied.record(torch.cuda.current_stream(self.device))  # the stream the copies above went to


class MultiTaskReplay:
    """K ring buffers of ``capacity_per_task`` transitions each, stored on ``device``."""

    def __init__(
        self,
        num_tasks: int,
        capacity_per_task: int,
        obs_dim: int,
        action_dim: int,
        device: torch.device | str = "cpu",
        seed: int = 0,
        holdout_every: int = 0,
        holdout_tasks: list[int] | None = None,
        storage: dict[str, Tensor] | None = None,
    ) -> None:
        """``storage``: the tensors to hold the fields ([capacity, K, ...] each, on ``device``;
        ``PopulationReplay`` passes views of its own), default new zero tensors."""
        if capacity_per_task < 1:
            raise ValueError(f"capacity_per_task must be >= 1, got {capacity_per_task}")
        if holdout_every and holdout_every < 2:
            raise ValueError(f"holdout_every must be 0 (no hold-out) or >= 2, got {holdout_every}")
        # Hold-out (AuxiLearn's auxiliary set): for the tasks in holdout_tasks, the ring slots
        # s with s % holdout_every == holdout_every - 1 are never sampled for training; they are
        # the validation data of sample_holdout. Other tasks use every slot.
        self.holdout_every = int(holdout_every)
        self.holdout_tasks = torch.as_tensor(
            list(range(num_tasks)) if holdout_tasks is None else list(holdout_tasks), dtype=torch.long
        ) if holdout_every else torch.zeros(0, dtype=torch.long)
        self.num_tasks, self.capacity = num_tasks, capacity_per_task
        self.device = torch.device(device)
        shapes = field_shapes(capacity_per_task, num_tasks, obs_dim, action_dim)  # slot-major, see the module docstring
        if storage is None:
            storage = {name: torch.zeros(shape, device=self.device) for name, shape in shapes.items()}
        elif {name: tuple(storage[name].shape) for name in _FIELDS} != shapes:
            raise ValueError(f"replay storage has shapes {({n: tuple(t.shape) for n, t in storage.items()})}, expected {shapes}")
        self._data = dict(storage)
        self.position = 0  # next slot to write (the same for every task)
        self.size = 0  # transitions stored per task
        self.generator = torch.Generator().manual_seed(seed)
        self._writer: _RowWriter | None = None  # made at the first add (CUDA: two pinned staging rows)

    def __len__(self) -> int:
        return self.size

    def add(self, obs, action, reward, next_obs, terminated) -> None:
        """Store one transition per task; every argument has leading dimension K."""
        values = {"obs": obs, "action": action, "reward": reward, "next_obs": next_obs, "done": terminated}
        if self._writer is None:
            self._writer = _RowWriter({name: tuple(self._data[name].shape[1:]) for name in _FIELDS}, self.device)
        self._writer.write({name: self._data[name][self.position] for name in _FIELDS}, values)
        self.advance()

    def advance(self) -> None:
        """Move past the slot just written (``add``; ``PopulationReplay.add`` writes it for all members)."""
        self.position = (self.position + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def draw(self, batch_per_task: int) -> Tensor:
        """The slots ``sample`` reads, [K, B] on the CPU, from the buffer's generator."""
        if self.size == 0:
            raise ValueError("cannot sample from an empty replay buffer")
        index = torch.randint(self.size, (self.num_tasks, batch_per_task), generator=self.generator)
        if len(self.holdout_tasks):
            n = self.size - self.size // self.holdout_every  # training slots among the filled ones
            r = torch.randint(n, (len(self.holdout_tasks), batch_per_task), generator=self.generator)
            index[self.holdout_tasks] = r + r // (self.holdout_every - 1)  # skip the held-out slots
        return index

    def sample(self, batch_per_task: int) -> Batch:
        """``batch_per_task`` transitions of every task, drawn uniformly with replacement."""
        index = self.draw(batch_per_task).to(self.device)  # [K, B]
        rows = torch.arange(self.num_tasks, device=self.device)[:, None]
        return Batch(**{name: self._data[name][index, rows] for name in _FIELDS})

    def holdout_size(self) -> int:
        """Held-out transitions per hold-out task."""
        return self.size // self.holdout_every if self.holdout_every else 0

    def sample_holdout(self, batch_per_task: int) -> Batch:
        """``batch_per_task`` held-out transitions of every hold-out task: fields [H, B, ...]."""
        n = self.holdout_size()
        if n == 0:
            raise ValueError("the replay buffer holds no held-out transitions yet")
        j = torch.randint(n, (len(self.holdout_tasks), batch_per_task), generator=self.generator)
        index = (j * self.holdout_every + self.holdout_every - 1).to(self.device)
        rows = self.holdout_tasks.to(self.device)[:, None]
        return Batch(**{name: self._data[name][index, rows] for name in _FIELDS})

    def state_dict(self) -> dict:
        """The filled part of the storage (each field [K, size, ...]), the write position and the
        sampling generator.

        On CPU the field tensors share memory with the live storage (no copy: a full 1M-transition
        buffer would otherwise double its memory at every checkpoint), so serialise the state
        before the next ``add``. On another device they are one copy of the filled part on the CPU.
        """
        return {
            **{name: _filled_prefix(self._data[name], self.size).transpose(0, 1) for name in _FIELDS},
            "position": self.position,
            "size": self.size,
            "capacity": self.capacity,
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        size = int(state["size"])
        if state["obs"].shape[0] != self.num_tasks or size > self.capacity:
            raise ValueError(
                f"replay state holds {state['obs'].shape[0]} tasks x {size} transitions; this buffer has "
                f"{self.num_tasks} tasks x capacity {self.capacity}"
            )
        position = int(state["position"])
        saved_capacity = state.get("capacity")  # absent in states written before it was stored
        consistent = position < self.capacity and (size == self.capacity or position == size)
        if (saved_capacity is not None and int(saved_capacity) != self.capacity) or not consistent:
            raise ValueError(
                f"replay state was written by a buffer of capacity {saved_capacity if saved_capacity is not None else 'unknown'} "
                f"per task (size {size}, position {position}); this buffer has capacity {self.capacity}: resume "
                f"with the same train.replay_capacity"
            )
        for name in _FIELDS:
            self._data[name][:size] = state[name].transpose(0, 1).to(self.device)
        self.position, self.size = position, size
        self.generator.set_state(state["generator"])


def field_shapes(capacity: int, num_tasks: int, obs_dim: int, action_dim: int) -> dict[str, tuple[int, ...]]:
    """The storage shape of each field: [capacity, K, ...]."""
    return {
        "obs": (capacity, num_tasks, obs_dim), "action": (capacity, num_tasks, action_dim), "reward": (capacity, num_tasks),
        "next_obs": (capacity, num_tasks, obs_dim), "done": (capacity, num_tasks),
    }


class PopulationReplay:
    """The replays of S members in one tensor per field [S, capacity, K, ...] (module docstring).

    ``replays[s]`` is member s's ``MultiTaskReplay`` (seeded ``seeds[s]``) over row s: a single
    run's replay in every respect (``state_dict``, ``load_state_dict``, ``sample``). ``add`` and
    ``sample`` serve a subset of members (``members``: indices, default all) with one write and one
    gather per field; the members' rows must be at one position (they always add together)."""

    def __init__(self, seeds: list[int], num_tasks: int, capacity_per_task: int, obs_dim: int, action_dim: int,
                 device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        shapes = field_shapes(capacity_per_task, num_tasks, obs_dim, action_dim)
        self._data = {name: torch.zeros((len(seeds), *shape), device=self.device) for name, shape in shapes.items()}
        self.replays = [
            MultiTaskReplay(num_tasks, capacity_per_task, obs_dim, action_dim, self.device, seed=seed,
                            storage={name: self._data[name][s] for name in _FIELDS})
            for s, seed in enumerate(seeds)
        ]
        self._writers: dict[int, _RowWriter] = {}  # per number of members written at once

    def _position(self, members: list[int]) -> int:
        positions = {self.replays[s].position for s in members}
        if len(positions) != 1:
            raise RuntimeError(f"population replays at different positions {sorted(positions)}")
        return positions.pop()

    def add(self, obs, action, reward, next_obs, terminated, members: list[int] | None = None) -> None:
        """One transition per task of each member of ``members``: every argument [S', K, ...]."""
        members = list(range(len(self.replays))) if members is None else list(members)
        position = self._position(members)
        values = {"obs": obs, "action": action, "reward": reward, "next_obs": next_obs, "done": terminated}
        writer = self._writers.get(len(members))
        if writer is None:
            shapes = {name: (len(members), *self._data[name].shape[2:]) for name in _FIELDS}
            writer = self._writers[len(members)] = _RowWriter(shapes, self.device)
        if members == list(range(len(self.replays))):
            targets = {name: self._data[name][:, position] for name in _FIELDS}
            writer.write(targets, values)
        else:  # some members left the population: write through a gathered row, then scatter it back
            index = torch.tensor(members, device=self.device)
            targets = {name: torch.empty((len(members), *self._data[name].shape[2:]), device=self.device) for name in _FIELDS}
            writer.write(targets, values)
            for name in _FIELDS:
                self._data[name][index, position] = targets[name]
        for s in members:
            self.replays[s].advance()

    def sample(self, batch_per_task: int, members: list[int] | None = None) -> Batch:
        """Each member's ``sample(batch_per_task)``, stacked: fields [S', K, B, ...]; member s's
        indices drawn from its own generator exactly as its ``sample`` draws them."""
        members = list(range(len(self.replays))) if members is None else list(members)
        index = torch.stack([self.replays[s].draw(batch_per_task) for s in members]).to(self.device)  # [S', K, B]
        who = torch.tensor(members, device=self.device)[:, None, None]
        rows = torch.arange(index.shape[1], device=self.device)[None, :, None]
        return Batch(**{name: self._data[name][who, index, rows] for name in _FIELDS})


def _filled_prefix(storage: Tensor, size: int) -> Tensor:
    """``storage[:size]`` ([size, K, ...]) as a CPU tensor whose own storage holds exactly those
    rows. ``torch.save`` writes the whole storage of a view, so a plain slice of a partly filled
    buffer would write its empty slots too; on CPU the result aliases the buffer's memory."""
    if storage.device.type != "cpu":
        return storage[:size].cpu()  # the one device-to-host copy, of the filled rows only
    if size == storage.shape[0] and storage.untyped_storage().nbytes() == storage.numel() * storage.element_size():
        return storage
    # a new storage over the contiguous prefix (also where the buffer is a view of a population's storage)
    return torch.from_numpy(storage.numpy()[:size])
