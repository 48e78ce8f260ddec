"""Per-task replay buffer on the training device (DESIGN §2).

Storage is one tensor per field shaped [K, capacity, ...]; every step adds one transition per
task, so all K ring buffers advance together. Sampling is even over tasks: each call draws
``B`` indices per task, giving a ``Batch`` whose fields are [K, B, ...], with no Python loop over
samples or tasks. Indices come from the buffer's own CPU ``torch.Generator`` (then moved to the
device), so sampling is identical on CPU and CUDA and its state is part of ``state_dict``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

__all__ = ["Batch", "MultiTaskReplay"]


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
    ) -> None:
        if capacity_per_task < 1:
            raise ValueError(f"capacity_per_task must be >= 1, got {capacity_per_task}")
        self.num_tasks, self.capacity = num_tasks, capacity_per_task
        self.device = torch.device(device)
        shape = (num_tasks, capacity_per_task)
        self._data = {
            "obs": torch.zeros(*shape, obs_dim, device=self.device),
            "action": torch.zeros(*shape, action_dim, device=self.device),
            "reward": torch.zeros(*shape, device=self.device),
            "next_obs": torch.zeros(*shape, obs_dim, device=self.device),
            "done": torch.zeros(*shape, device=self.device),
        }
        self.position = 0  # next slot to write (the same for every task)
        self.size = 0  # transitions stored per task
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return self.size

    def add(self, obs, action, reward, next_obs, terminated) -> None:
        """Store one transition per task; every argument has leading dimension K."""
        values = {"obs": obs, "action": action, "reward": reward, "next_obs": next_obs, "done": terminated}
        for name, value in values.items():
            if isinstance(value, np.ndarray):
                value = torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32))
            self._data[name][:, self.position] = value.to(self.device, torch.float32)
        self.position = (self.position + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample(self, batch_per_task: int) -> Batch:
        """``batch_per_task`` transitions of every task, drawn uniformly with replacement."""
        if self.size == 0:
            raise ValueError("cannot sample from an empty replay buffer")
        index = torch.randint(self.size, (self.num_tasks, batch_per_task), generator=self.generator)
        index = index.to(self.device)  # [K, B]
        rows = torch.arange(self.num_tasks, device=self.device)[:, None]
        return Batch(**{name: self._data[name][rows, index] for name in _FIELDS})

    def state_dict(self) -> dict:
        """The filled part of the storage, the write position and the sampling generator."""
        return {
            **{name: self._data[name][:, : self.size].cpu().clone() for name in _FIELDS},
            "position": self.position,
            "size": self.size,
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        size = int(state["size"])
        if state["obs"].shape[0] != self.num_tasks or size > self.capacity:
            raise ValueError(
                f"replay state holds {state['obs'].shape[0]} tasks x {size} transitions; this buffer has "
                f"{self.num_tasks} tasks x capacity {self.capacity}"
            )
        for name in _FIELDS:
            self._data[name][:, :size] = state[name].to(self.device)
        self.position, self.size = int(state["position"]), size
        self.generator.set_state(state["generator"])
