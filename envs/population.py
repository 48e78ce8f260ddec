"""S members (seeds) of one config, each stepping the K MetaWorld tasks of its benchmark: S x K
environments behind one lock-step (docs/design.md §9, populations of seeds).

``PopulationEnv(benchmark, seeds, workers=N)`` is the population case of the env workers of
``envs/workers.py`` (``ShardedEnv``; ``ParallelMultiTaskEnv`` is its one-member case): the S x K
(member, task) rows are dealt into N shards balanced by step cost (each row costs its task's cost
in ``envs/task_costs.py``), a worker process hosts the rows of possibly several members (one
``MultiTaskEnv`` per member with rows there, over its tasks of that shard), results travel in
shared memory, and with ``local_shard`` this process steps the lightest shard itself. With
``workers=1`` and ``local_shard`` (the default) every row steps in this process, as S
``MultiTaskEnv`` objects; ``workers=1`` without ``local_shard`` steps them all in one worker
process (what ``env.overlap`` needs: this process runs the update meanwhile).

Every task of member s is seeded by ``seeds[s]`` and its benchmark index, and each member's goal
sets are sampled once here (per goal seed) and sent to the workers, so member s steps exactly
like ``MultiTaskEnv(benchmark, seeds[s], goal_seed=goal_seeds[s], ...)`` alone, bit for bit,
whatever the workers, the local shard and the other members. ``member_state_dict(s)`` is exactly
that env's ``state_dict()`` (also the format of a ``ParallelMultiTaskEnv``), so a member resumes
as a single run and a single run's env state loads into a member.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from mtrl.envs.metaworld import StepResult, benchmark_task_names, from_tensors, to_tensors
from mtrl.envs.workers import ShardedEnv

__all__ = ["PopulationEnv"]


class PopulationEnv(ShardedEnv):
    """S members x K MetaWorld tasks stepped in lock-step (module docstring); ``step_async`` /
    ``step_wait`` as ``AsyncStepping``.

    Args:
        benchmark, max_episode_steps, terminate_on_success, heldout_goals: as ``MultiTaskEnv``.
        seeds: the members' seeds, distinct ints (member s is ``MultiTaskEnv(benchmark, seeds[s])``).
        workers: number of shards the S x K rows are dealt into (at most one per row).
        local_shard: step the lightest shard in this process (``workers - 1`` worker processes).
        spin_ms, start_method, timeout_s: as ``ParallelMultiTaskEnv``.
        goal_seeds: each member's goal seed (None or an entry None: the member's seed), e.g. an
            evaluation population built with the training seeds.

    Observations are [S, K, obs_dim], actions [S, K, A]; ``step`` returns one ``StepResult`` per
    member (fields [K, ...]).
    """

    def __init__(
        self, benchmark: str, seeds: Sequence[int], *, workers: int = 1, local_shard: bool = True, spin_ms: float = 5.0,
        max_episode_steps: int = 500, terminate_on_success: bool = False, goal_seeds: Sequence[int | None] | None = None,
        heldout_goals: bool = False, start_method: str = "spawn", timeout_s: float = 600.0,
    ) -> None:
        seeds = _check_seeds(seeds)
        if goal_seeds is None:
            goal_seeds = [None] * len(seeds)
        goal_seeds = list(goal_seeds)
        if len(goal_seeds) != len(seeds):
            raise ValueError(f"goal_seeds must have one entry per seed ({len(seeds)}), got {len(goal_seeds)}: {goal_seeds}")
        for goal_seed in goal_seeds:
            if goal_seed is not None and (isinstance(goal_seed, bool) or not isinstance(goal_seed, (int, np.integer))):
                raise ValueError(f"goal_seeds must be ints or None, got {goal_seed!r}")
        self.members = len(seeds)
        self.seeds = seeds
        self.goal_seeds = [seed if goal_seed is None else int(goal_seed) for seed, goal_seed in zip(seeds, goal_seeds)]
        super().__init__(
            benchmark, seeds, self.goal_seeds, workers=workers, max_episode_steps=max_episode_steps,
            terminate_on_success=terminate_on_success, local_shard=local_shard, start_method=start_method,
            timeout_s=timeout_s, spin_ms=spin_ms, heldout_goals=heldout_goals,
            lead=(len(seeds), len(benchmark_task_names(benchmark))),
        )

    @property
    def member_goal_sets(self) -> list[list[list]]:
        """Each member's goal variations per task (``MultiTaskEnv.goal_sets`` of that member)."""
        return self._goal_sets

    def _describe_rows(self, rows: list[int]) -> str:
        """``member 0 (seed 3) tasks reach-v3, push-v3; member 1 (seed 5) tasks ...``"""
        K = self.num_tasks
        out = []
        for s in sorted({r // K for r in rows}):
            names = ", ".join(self.task_names[r % K] for r in rows if r // K == s)
            out.append(f"member {s} (seed {self.seeds[s]}) tasks {names}")
        return "; ".join(out)

    def _result(self, fields: dict[str, np.ndarray]) -> list[StepResult]:
        return [StepResult(**{name: value[s] for name, value in fields.items()}) for s in range(self.members)]

    def member_state_dict(self, s: int) -> dict:
        """Member ``s``'s env state: exactly ``MultiTaskEnv(benchmark, seeds[s], ...).state_dict()``
        at the same point (tensors; loads into a single run's env and back)."""
        return to_tensors(self._member_state(s))

    def load_member_state_dict(self, s: int, state: dict) -> np.ndarray:
        """Restore member ``s`` from a ``member_state_dict`` or a single run's env ``state_dict``;
        the next step continues exactly. Returns its observations [K, obs_dim]."""
        return self._load_member(s, from_tensors(state))


def _check_seeds(seeds: Sequence[int]) -> list[int]:
    try:
        values = list(seeds)
    except TypeError:
        raise ValueError(f"seeds must be a sequence of ints, got {seeds!r}") from None
    if not values:
        raise ValueError(f"seeds must name at least one member, got {values!r}")
    for seed in values:
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seeds must be ints >= 0, got {seed!r}")
    values = [int(seed) for seed in values]
    repeated = sorted({seed for seed in values if values.count(seed) > 1})
    if repeated:
        raise ValueError(f"seeds must be distinct, got {values} ({', '.join(map(str, repeated))} repeated)")
    return values
