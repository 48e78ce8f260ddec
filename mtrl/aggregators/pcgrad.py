"""PCGrad (Yu et al., 2020, "gradient surgery") [CA App A.2, Alg 2].

For each task i, in a random order over the other tasks j: if ``g_i^PC . g_j < 0``, project
``g_i^PC`` onto the normal plane of the ORIGINAL ``g_j``; return the mean (default, CAGrad's
Alg 2) or sum (Nash-MTL's code) of the projected gradients. Projections onto zero gradients are
skipped.

Every projected gradient stays a linear combination of the original rows, so the surgery runs on
K x K coefficients using only M = G G^T, and the direction is one matmul ``w @ G``: O(K^3) instead
of O(K^2 P). The random order comes from ``ctx.generator`` (a fixed-seed generator when None).
"""

from __future__ import annotations

import numpy as np
import torch

from mtrl.aggregators import register
from mtrl.aggregators.base import AggContext, GramAggregation, check_option, check_positive_or_none, clip_coefficients
from mtrl.aggregators.from_gram import GramAggregator


def pcgrad_coefficients(M: np.ndarray, orders: list[list[int]]) -> np.ndarray:
    """C [K, K] with ``g_i^PC = sum_j C[i, j] g_j`` after the projections in ``orders[i]``."""
    K = M.shape[0]
    C = np.eye(K)
    for i in range(K):
        row = C[i]
        for j in orders[i]:
            if M[j, j] <= 0:
                continue
            dot = float(row @ M[:, j])  # g_i^PC . g_j
            if dot < 0:
                row[j] -= dot / M[j, j]
    return C


@register
class PCGrad(GramAggregator):
    name = "pcgrad"

    def __init__(self, num_tasks: int, reduction: str = "mean", max_norm: float | None = None) -> None:
        super().__init__(num_tasks)
        check_option("reduction", reduction, reduction in ("mean", "sum"), "'mean' or 'sum'")
        check_positive_or_none("max_norm", max_norm)
        self.reduction, self.max_norm = reduction, max_norm

    def aggregate_gram(self, M: np.ndarray, ctx: AggContext, dtype: torch.dtype) -> GramAggregation:
        K = M.shape[0]
        generator = ctx.generator if ctx.generator is not None else torch.Generator().manual_seed(ctx.step)
        orders = []
        for i in range(K):
            others = [j for j in range(K) if j != i]
            orders.append([others[k] for k in torch.randperm(K - 1, generator=generator).tolist()])
        C = pcgrad_coefficients(M, orders)
        w = C.sum(0) / (K if self.reduction == "mean" else 1)
        coefficients, norm = clip_coefficients(w, self.max_norm, M)
        return GramAggregation(coefficients, w, {"norm": norm})
