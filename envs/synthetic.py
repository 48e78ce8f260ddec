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


def _start_states(rng: np.random.Generator, n: int) -> np.ndarray:
    """[n, 4] float32: positions uniform in [-0.1, 0.1]^2, at rest."""
    state = np.zeros((n, 4), dtype=np.float32)
    state[:, :2] = rng.uniform(-0.1, 0.1, size=(n, 2)).astype(np.float32)
    return state


def _dynamics(state: np.ndarray, actions: np.ndarray, goals: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One step of point masses ``state`` [n, 4] under ``actions`` [n, 2] towards ``goals`` [n, 2]:
    the next state [n, 4] float32, the reward [n] float32 and the success flags [n]."""
    actions = np.clip(actions, -1.0, 1.0)
    velocity = 0.5 * state[:, 2:] + 0.1 * actions
    position = state[:, :2] + velocity
    distance = np.linalg.norm(position - goals, axis=1)
    return np.concatenate([position, velocity], axis=1).astype(np.float32), (-distance).astype(np.float32), distance < radius


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
        self._state[mask] = _start_states(self._rng, int(mask.sum()))
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
        self._state, reward, success = _dynamics(self._state, actions, self.goals, self.success_radius)
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



class PointMassInstance:
    """One task of ``Point-<K>`` that plays one episode at a time: the env instance of the
    episode engine (``mtrl.envs.episodes``). A reset starts from the episode's own seed, so an
    episode does not depend on what the instance played before."""

    def __init__(self, goal: np.ndarray, success_radius: float = PointMassEnv.success_radius) -> None:
        self.goal = np.asarray(goal, dtype=np.float32).reshape(1, 2)
        self.success_radius = success_radius
        self._state = np.zeros((1, 4), dtype=np.float32)

    def reset(self, goal: None, seed: int) -> np.ndarray:
        """``goal``: None (a point-mass task has one goal); returns the first observation [4]."""
        self._state = _start_states(np.random.default_rng(seed), 1)
        return self._state[0].copy()

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool]:
        """(observation [4], reward, success) of one step."""
        self._state, reward, success = _dynamics(self._state, np.asarray(action, dtype=np.float32).reshape(1, 2), self.goal, self.success_radius)
        return self._state[0].copy(), reward[0], bool(success[0])

    def close(self) -> None:
        pass
