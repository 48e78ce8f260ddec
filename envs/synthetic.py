"""A tiny synthetic multi-task environment for fast learning checks (no physics simulator).

Its dynamics are a few lines of numpy, but the module imports ``mtrl.envs.metaworld`` for the
step result and its bookkeeping, and that imports ``metaworld`` and ``mujoco``: both must be
installed (they are dependencies of the package) even for ``Point-<K>`` runs.

``Point-<K>``: K tasks, each a point mass in the plane that must reach its own goal. Task k's
goal lies at angle 2*pi*k/K on the unit circle; the goal is NOT in the observation, so one
shared policy can only solve all tasks by using the task id. The observation is the position
plus the velocity (4 floats), the action a force in [-1, 1]^2, the reward the negative distance
to the goal, success a distance below 0.15. Episodes end by truncation after
``max_episode_steps`` (default 30) steps, like MetaWorld's. SAC learns it in about a thousand
steps on a CPU, which makes it the learning check of the test suite.

It follows the same interface as ``mtrl.envs.metaworld.MultiTaskEnv`` (``step_async`` / ``step_wait``
included).
"""

from __future__ import annotations

import math
import re

import numpy as np
import torch

from mtrl.envs.metaworld import AsyncStepping, StepResult, end_of_step, rng_state_from_tensor, rng_state_to_tensor

__all__ = ["PointMassEnv", "is_point_benchmark"]

_PATTERN = re.compile(r"^Point-(\d+)$")


def is_point_benchmark(benchmark: str) -> bool:
    return bool(_PATTERN.match(benchmark))


class PointMassEnv(AsyncStepping):
    """K point-mass reaching tasks stepped in lock-step; see the module docstring."""

    obs_dim = 4
    action_dim = 2
    success_radius = 0.15

    def __init__(
        self, benchmark: str, seed: int, *, max_episode_steps: int = 30, terminate_on_success: bool = False
    ) -> None:
        match = _PATTERN.match(benchmark)
        if not match or int(match.group(1)) < 1:
            raise ValueError(f"unknown synthetic benchmark {benchmark!r}; expected 'Point-<K>' with K >= 1, e.g. 'Point-3'")
        self.num_tasks = int(match.group(1))
        self.task_names = [f"point-{k}" for k in range(self.num_tasks)]
        self.max_episode_steps = max_episode_steps
        self.terminate_on_success = terminate_on_success
        self.action_low = -np.ones(self.action_dim, dtype=np.float32)
        self.action_high = np.ones(self.action_dim, dtype=np.float32)
        angles = 2 * math.pi * np.arange(self.num_tasks) / self.num_tasks
        self.goals = np.stack([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32)  # [K, 2]
        self._rng = np.random.default_rng(seed)
        self._state = np.zeros((self.num_tasks, 4), dtype=np.float32)
        self._t = np.zeros(self.num_tasks, dtype=np.int64)
        self._succeeded = np.zeros(self.num_tasks, dtype=bool)
        self._return = np.zeros(self.num_tasks, dtype=np.float64)

    def _reset_tasks(self, mask: np.ndarray) -> None:
        n = int(mask.sum())
        self._state[mask, :2] = self._rng.uniform(-0.1, 0.1, size=(n, 2)).astype(np.float32)
        self._state[mask, 2:] = 0.0
        self._t[mask] = 0
        self._succeeded[mask] = False
        self._return[mask] = 0.0

    def reset(self) -> np.ndarray:
        self._idle("reset")
        self._reset_tasks(np.ones(self.num_tasks, dtype=bool))
        return self._state.copy()

    def step(self, actions: np.ndarray) -> StepResult:
        self._idle("step")
        actions = np.asarray(actions, dtype=np.float32)
        if actions.shape != (self.num_tasks, self.action_dim):
            raise ValueError(f"actions must have shape {(self.num_tasks, self.action_dim)}, got {actions.shape}")
        actions = np.clip(actions, -1.0, 1.0)  # [K, 2]
        velocity = 0.5 * self._state[:, 2:] + 0.1 * actions
        position = self._state[:, :2] + velocity
        self._state = np.concatenate([position, velocity], axis=1).astype(np.float32)
        distance = np.linalg.norm(position - self.goals, axis=1)
        reward = (-distance).astype(np.float32)
        success = distance < self.success_radius
        next_obs = self._state.copy()
        ends = end_of_step(self._t, self._succeeded, self._return, reward, success, self.max_episode_steps, self.terminate_on_success)
        if ends["episode_done"].any():
            self._reset_tasks(ends["episode_done"])
        unstable = np.zeros(self.num_tasks, dtype=bool)  # no simulator that could blow up
        return StepResult(obs=self._state.copy(), next_obs=next_obs, reward=reward, success=success, unstable=unstable, **ends)

    def state_dict(self) -> dict:
        self._idle("state_dict")
        return {
            "rng": rng_state_to_tensor(self._rng.bit_generator.state),
            "sim": torch.from_numpy(self._state.copy()),
            "t": torch.from_numpy(self._t.copy()),
            "succeeded": torch.from_numpy(self._succeeded.copy()),
            "return": torch.from_numpy(self._return.copy()),
        }

    def load_state_dict(self, state: dict) -> None:
        self._idle("load_state_dict")
        if state["sim"].shape[0] != self.num_tasks:
            raise ValueError(f"environment state is for {state['sim'].shape[0]} tasks, this env has {self.num_tasks}")
        self._rng.bit_generator.state = rng_state_from_tensor(state["rng"])
        self._state = state["sim"].numpy().copy()
        self._t = state["t"].numpy().copy()
        self._succeeded = state["succeeded"].numpy().copy()
        self._return = state["return"].numpy().copy()

    def close(self) -> None:
        pass

