"""CAGrad-Fast [CA §3.3, Eq. 4]: CAGrad on a random subset S of the tasks.

Each step samples |S| = ``num_sampled`` tasks uniformly (4 for MT10 and 8 for MT50 [CA §5.3] by
default: 4 when num_tasks <= 10, else 8). The trainer builds only |S| + 1 rows
(``rows_needed``): one per sampled task and one for the mean loss of the remaining tasks,
``g_rest``. The average gradient is exact, ``g0 = (sum_S g_i + (K - |S|) g_rest) / K``, and the
CAGrad dual is solved over the |S| + 1 pseudo-tasks with that g0 (Lemma A.2 applied to the
pseudo-tasks). The worst-case term only over-estimates the true one (the mean of a set is at least
its minimum), and the constraint is CAGrad's, so Thm 3.2 still holds [CA §3.3 Remark].

|S| counts sampled tasks exactly as Eq. 4 does (the released "fastN" code samples N - 1 tasks
plus one remainder group; docs/aggregators.md, readings table). Default ``rescale=2`` (divide by 1 + c), as the MTRL
``cagrad_fast`` code. With |S| >= K it is plain CAGrad.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from mtrl.aggregators import register
from mtrl.aggregators.base import AggContext, GramAggregation, check_option, check_positive_or_none, clip_coefficients, is_number
from mtrl.aggregators.cagrad import RESCALE, cagrad_weights
from mtrl.aggregators.from_gram import GramAggregator
from mtrl.aggregators.solvers import gram_tolerance


@register
class CAGradFast(GramAggregator):
    name = "cagrad_fast"

    def __init__(
        self,
        num_tasks: int,
        num_sampled: int | None = None,
        c: float = 0.4,
        solver: str = "exact",
        rescale: int = 2,
        max_norm: float | None = None,
    ) -> None:
        super().__init__(num_tasks)
        if num_sampled is None:
            num_sampled = 4 if num_tasks <= 10 else 8
        check_option("num_sampled", num_sampled, isinstance(num_sampled, int) and num_sampled >= 1, "None or an int >= 1")
        check_option("c", c, is_number(c) and c >= 0, "a number >= 0")
        check_option("solver", solver, solver in ("exact", "sgd"), "'exact' or 'sgd'")
        check_option("rescale", rescale, rescale in RESCALE and not isinstance(rescale, bool), "0, 1 or 2")
        check_positive_or_none("max_norm", max_norm)
        self.num_sampled, self.c, self.solver, self.rescale, self.max_norm = num_sampled, float(c), solver, rescale, max_norm

    def _sample(self, n: int, generator: torch.Generator | None) -> Tensor | None:
        if self.num_sampled >= n:
            return None
        return torch.randperm(n, generator=generator)[: self.num_sampled].sort().values

    def rows_needed(self, step: int, generator: torch.Generator | None) -> Tensor | None:
        """Sorted global ids of the sampled tasks, or None (all rows) when |S| >= K."""
        return self._sample(self.num_tasks, generator)

    def aggregate_gram(self, M: np.ndarray, ctx: AggContext, dtype: torch.dtype) -> GramAggregation:
        """``M`` is the Gram matrix of the rows of G: all K tasks' rows (the tasks are sampled here
        and the pseudo-rows are ``T @ G``, never formed), or the |S| + 1 rows of ``ctx.row_groups``."""
        K = len(ctx.task_ids) if ctx.row_groups is None else sum(len(g) for g in ctx.row_groups)
        M_rows = M
        if ctx.row_groups is None:  # a full G: sample here; pseudo-rows are T @ G, never copied
            sampled = self._sample(K, ctx.generator)  # positions of the present rows
            if sampled is None:
                groups = tuple(torch.tensor([i]) for i in range(K))
            else:
                chosen = sampled.tolist()
                rest = [i for i in range(K) if i not in chosen]
                groups = tuple(torch.tensor([i]) for i in chosen) + ((torch.tensor(rest),) if rest else ())
            T = np.zeros((len(groups), K))  # row j averages the rows of group j
            for j, group in enumerate(groups):
                T[j, group.numpy()] = 1.0 / len(group)
            M = T @ M_rows @ T.T
        else:
            groups = ctx.row_groups
        sizes = np.array([len(g) for g in groups], dtype=np.float64)
        b = sizes / K  # g0 = sum_j (|group_j| / K) row_j: exact mean gradient
        weights, info = cagrad_weights(M, b, self.c, self.solver, gram_tolerance(dtype))
        weights = weights / RESCALE[self.rescale](self.c)
        if ctx.row_groups is None:
            weights = weights @ T  # back to weights on the rows of G
        coefficients, norm = clip_coefficients(weights, self.max_norm, M_rows)
        info.update(norm=norm, num_rows=float(len(groups)))
        # with pseudo-rows in G there is no weighting of per-task rows to report
        return GramAggregation(coefficients, weights if ctx.row_groups is None else None, info)
