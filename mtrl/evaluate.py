"""Deterministic-policy evaluation: per-task success rates (MetaWorld's protocol).

All K tasks run in lock-step; each task plays ``episodes_per_task`` episodes. An episode is a
success if any of its steps reported ``info["success"]``. With ``terminate_on_success`` on the
evaluation env (the default of ``env.eval_terminate_on_success``, as MetaWorld's own
``metaworld.evaluation`` does) an episode ends at its first success, which gives the same
success flag in fewer steps. Tasks that finished their episodes keep stepping until every task
has (their extra episodes are ignored), so the loop needs no per-task bookkeeping of actions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

__all__ = ["EvalResult", "evaluate"]


@dataclass(frozen=True)
class EvalResult:
    """Per-task evaluation results.

    Attributes:
        task_names: MetaWorld names of the tasks, in row order.
        success_rate: [K] fraction of successful episodes.
        mean_return: [K] mean undiscounted episode return.
    """

    task_names: list[str]
    success_rate: np.ndarray
    mean_return: np.ndarray

    @property
    def mean_success(self) -> float:
        return float(np.mean(self.success_rate))


def evaluate(policy: Callable[[np.ndarray], np.ndarray], env, episodes_per_task: int) -> EvalResult:
    """Run ``policy`` (observations [K, obs_dim] -> actions [K, A]) for ``episodes_per_task``
    episodes of every task of ``env`` (an ``envs`` multi-task environment)."""
    if episodes_per_task < 1:
        raise ValueError(f"episodes_per_task must be >= 1, got {episodes_per_task}")
    K = env.num_tasks
    successes = np.zeros(K)
    returns = np.zeros(K)
    finished = np.zeros(K, dtype=np.int64)
    obs = env.reset()
    while (finished < episodes_per_task).any():
        result = env.step(policy(obs))
        obs = result.obs
        counted = result.episode_done & (finished < episodes_per_task)
        successes += counted * result.episode_success
        returns += np.where(counted, result.episode_return, 0.0)
        finished += counted
    return EvalResult(list(env.task_names), successes / episodes_per_task, returns / episodes_per_task)
