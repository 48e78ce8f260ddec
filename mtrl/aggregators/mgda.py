"""MGDA (Desideri, 2012; Sener & Koltun, 2018): the min-norm point of the convex hull of the task
gradients, ``w* = argmin_{w in simplex} ||G^T w||^2`` [CA App A.1, Eq. 6], on the shared
parameters (the "MGDA" rows of [NM], not MGDA-UB; spec §6 item 20). ``d = G^T w*`` satisfies
``g_i^T d >= ||d||^2`` with equality where ``w_i > 0`` (KKT); ``d = 0`` iff the point is
Pareto-stationary. Solved exactly (pairwise Frank-Wolfe for the support, then the KKT system).
``pi=True`` (PI-MGDA; [PV §4.4] does not say how omega enters MGDA): the min-norm point of the
rows scaled by omega, as the loss-weighting methods see ``omega * loss``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from mtrl.aggregators import register
from mtrl.aggregators.base import AggContext, Aggregation, Aggregator, check_bool, check_positive_or_none, combine
from mtrl.aggregators.performance import pi_omega
from mtrl.aggregators.solvers import gram, min_norm_simplex


@register
class MGDA(Aggregator):
    checks_values_in_gram = True  # aggregate() starts with solvers.gram(G)
    name = "mgda"

    def __init__(self, num_tasks: int, max_norm: float | None = None, pi: bool = False) -> None:
        super().__init__(num_tasks)
        check_positive_or_none("max_norm", max_norm)
        check_bool("pi", pi)
        self.max_norm, self.pi = max_norm, pi

    def aggregate(self, G: Tensor, ctx: AggContext) -> Aggregation:
        M = gram(G)
        if not self.pi:
            w, iterations = min_norm_simplex(M)
            weights = torch.from_numpy(w)
        else:  # PI-MGDA: the min-norm point of the omega-scaled gradients omega_i g_i
            omega, _ = pi_omega(ctx, torch.as_tensor(ctx.task_ids).long().cpu())
            w, iterations = min_norm_simplex(M * np.outer(omega.numpy(), omega.numpy()))
            weights = torch.from_numpy(w) * omega
        direction, norm, coefficients = combine(G, weights, self.max_norm, M)
        return Aggregation(direction, weights, {"iterations": float(iterations), "norm": norm}, coefficients, torch.from_numpy(M))
