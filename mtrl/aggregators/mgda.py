"""MGDA (Desideri, 2012; Sener & Koltun, 2018): the min-norm point of the convex hull of the task
gradients, ``w* = argmin_{w in simplex} ||G^T w||^2`` [CA App A.1, Eq. 6], on the shared
parameters (the "MGDA" rows of [NM], not MGDA-UB; spec §6 item 20). ``d = G^T w*`` satisfies
``g_i^T d >= ||d||^2`` with equality where ``w_i > 0`` (KKT); ``d = 0`` iff the point is
Pareto-stationary. Solved exactly (pairwise Frank-Wolfe for the support, then the KKT system).
"""

from __future__ import annotations

import torch
from torch import Tensor

from mtrl.aggregators import register
from mtrl.aggregators.base import AggContext, Aggregation, Aggregator, check_option, clip_direction, is_number
from mtrl.aggregators.solvers import gram, min_norm_simplex


@register
class MGDA(Aggregator):
    name = "mgda"

    def __init__(self, num_tasks: int, max_norm: float | None = None) -> None:
        super().__init__(num_tasks)
        check_option("max_norm", max_norm, max_norm is None or (is_number(max_norm) and max_norm > 0), "None or a positive number")
        self.max_norm = max_norm

    def aggregate(self, G: Tensor, ctx: AggContext) -> Aggregation:
        w, iterations = min_norm_simplex(gram(G))
        weights = torch.from_numpy(w)
        direction, norm = clip_direction(weights.to(G) @ G, self.max_norm)
        return Aggregation(direction, weights, {"iterations": float(iterations), "norm": norm})
