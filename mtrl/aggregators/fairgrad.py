"""FairGrad (Ban & Ji, 2024): alpha-fair utility maximisation over task improvement rates.

Maximises ``sum_i u_i^(1-alpha) / (1-alpha)`` (``sum log u_i`` for alpha = 1) over directions
``d`` with ``u_i = g_i^T d``; the optimality condition is ``M w = w^(-1/alpha)`` [D]. alpha = 1 is Nash-MTL, alpha = 2 is PIVRG with omega = 1 [PV App C.2], alpha -> 0 is
linear scalarisation and alpha -> infinity MGDA. Solved exactly by the shared Newton solver.

Default ``alpha=2.0`` (minimum potential delay fairness, the setting that PIVRG reduces to):
the seeds give no RL value for FairGrad's alpha; set it explicitly to reproduce a paper row.
"""

from __future__ import annotations

import numpy as np
from torch import Tensor

from mtrl.aggregators import register
from mtrl.aggregators.base import AggContext, check_option, is_number
from mtrl.aggregators.fixed_point import FixedPointWeighting


@register
class FairGrad(FixedPointWeighting):
    name = "fairgrad"

    def __init__(self, num_tasks: int, alpha: float = 2.0, max_norm: float | None = None, scale_by_K: bool = False) -> None:
        super().__init__(num_tasks, max_norm=max_norm, scale_by_K=scale_by_K)
        check_option("alpha", alpha, is_number(alpha) and alpha > 0, "a positive number")
        self.alpha_fair = float(alpha)

    def coefficients(self, ctx: AggContext, task_ids: Tensor) -> tuple[np.ndarray, float]:
        return np.ones(len(task_ids)), 1.0 / self.alpha_fair
