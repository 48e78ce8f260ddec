"""IMTL-G (Liu et al., 2021, "Towards impartial multi-task learning").

``d = sum_i w_i g_i`` with ``sum_i w_i = 1`` and equal projections on every unit gradient,
``d . u_i = d . u_j`` (u_i = g_i / ||g_i||) [NM §6 (12), PV App C.2]. Closed form with
``D = [g_1 - g_k]_{k>=2}`` and ``U = [u_1 - u_k]_{k>=2}``: ``w_{2:K} = g_1^T U^T (D U^T)^-1`` and
``w_1 = 1 - sum w_{2:K}`` (a 1e-8 ridge where ``D U^T`` is singular). Everything is computed
from M. Zero gradients are left out (weight 0): their unit vector is undefined. Applied here to
the shared-parameter gradients (Nash-MTL used feature-level gradients for its IMTL-G rows).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from mtrl.aggregators import register
from mtrl.aggregators.base import AggContext, Aggregator, GramAggregation, check_positive_or_none, clip_coefficients
from mtrl.aggregators.batched import solve_batch
from mtrl.aggregators.from_gram import GramAggregator, finish_members, isolate_failures
from mtrl.aggregators.solvers import solve_small


def imtlg_weights(M: np.ndarray) -> np.ndarray:
    """IMTL-G weights [K] from the Gram matrix M (zero rows get weight 0).

    Written for the cost of a K x K problem: the closed form needs one (K-1) x (K-1) solve, so the
    call is kept to a dozen array operations with LAPACK called directly (``solvers.solve_small``;
    the previous version spent 5x the solve in ``np.ix_``, a second pass for the zero rows and
    ``np.linalg.solve``'s overhead, issue 13)."""
    K = M.shape[0]
    w = np.zeros(K)
    norms = np.sqrt(np.clip(np.diag(M), 0.0, None))
    active = norms > 1e-12 * max(float(norms.max()), 1e-300)  # as solvers.zero_rows
    count = int(active.sum())
    if count <= 1:
        w[active] = 1.0
        return w
    if count == K:
        Ma, na = M, norms
    else:
        index = np.flatnonzero(active)
        Ma, na = M.take(index, 0).take(index, 1), norms[index]
    gu = Ma / na  # gu[a, b] = g_a . u_b
    # (D U^T)[j, k] = (g_0 - g_j) . (u_0 - u_k), j, k >= 1
    DU = gu[0, 0] - gu[0, None, 1:] - gu[1:, 0, None] + gu[1:, 1:]
    rhs = gu[0, 0] - gu[0, 1:]  # g_0 . (u_0 - u_k)
    tail = solve_small(DU.T, rhs)
    if tail is None:  # singular: the 1e-8 ridge of the closed form
        tail = solve_small(DU.T + 1e-8 * np.eye(count - 1), rhs)
    if tail is None:
        return np.full(K, np.nan)
    w[active] = np.concatenate(([1.0 - tail.sum()], tail))
    return w


def imtlg_weights_batch(M: np.ndarray) -> list[np.ndarray]:
    """``imtlg_weights`` of every member of ``M [S, K, K]`` whose rows are all non-zero (the
    caller checks): the closed form's (K-1) x (K-1) systems in one stacked solve; a member whose
    system is exactly singular takes the single-member path (its 1e-8 ridge)."""
    S, K = M.shape[0], M.shape[1]
    if K == 1:
        return [np.ones(1) for _ in range(S)]
    norms = np.sqrt(np.clip(M.diagonal(axis1=1, axis2=2), 0.0, None))
    gu = M / norms[:, None, :]  # gu[s, a, b] = g_a . u_b
    DU = gu[:, 0, 0, None, None] - gu[:, 0, None, 1:] - gu[:, 1:, 0, None] + gu[:, 1:, 1:]
    rhs = gu[:, 0, 0, None] - gu[:, 0, 1:]
    tail, ok = solve_batch(np.ascontiguousarray(DU.transpose(0, 2, 1)), np.ascontiguousarray(rhs))
    w = np.concatenate([1.0 - tail.sum(1, keepdims=True), tail], axis=1)
    return [w[s] if ok[s] else imtlg_weights(M[s]) for s in range(S)]


@register
class IMTLG(GramAggregator):
    name = "imtlg"

    def __init__(self, num_tasks: int, max_norm: float | None = None) -> None:
        super().__init__(num_tasks)
        check_positive_or_none("max_norm", max_norm)
        self.max_norm = max_norm

    def finish_gram(self, M: np.ndarray, w: np.ndarray) -> GramAggregation:
        if not np.all(np.isfinite(w)):  # singular beyond the ridge: fall back to the mean
            w = np.full(M.shape[0], 1.0 / M.shape[0])
        coefficients, norm = clip_coefficients(w, self.max_norm, M)
        return GramAggregation(coefficients, w, {"norm": norm})

    def aggregate_gram(self, M: np.ndarray, ctx: AggContext, dtype: torch.dtype) -> GramAggregation:
        return self.finish_gram(M, imtlg_weights(M))

    @classmethod
    def aggregate_population(
        cls, members: Sequence[Aggregator], M: np.ndarray, contexts: Sequence[AggContext], dtype: torch.dtype
    ) -> list[GramAggregation | Exception]:
        """Members whose rows are all non-zero solve in one ``imtlg_weights_batch``; a member with a
        zero row (a smaller system) takes the single-member path."""
        norms = np.sqrt(np.clip(M.diagonal(axis1=1, axis2=2), 0.0, None))
        full = (norms > 1e-12 * np.maximum(norms.max(1, initial=0.0), 1e-300)[:, None]).all(1)
        batch = np.flatnonzero(full)
        solved = dict(zip(batch.tolist(), isolate_failures(lambda rows: imtlg_weights_batch(M[batch[rows]]), len(batch))))
        return finish_members(members, contexts, M, dtype, solved, lambda agg, M_s, result: agg.finish_gram(M_s, result))
