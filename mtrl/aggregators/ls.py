"""Linear scalarisation (LS) and its mean variant.

LS minimises ``sum_i loss_i``; its direction is ``sum_i g_i`` (the scale convention of docs/design.md §3).
``mean`` returns ``(1/K) sum_i g_i`` (CAGrad's L0, PIVRG's LS). Both are pure loss weightings,
so the trainer never needs G for them: ``needs_jacobian`` is False and one backward of the
weighted loss gives the same direction.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from mtrl.aggregators import register
from mtrl.aggregators.base import (
    AggContext, Aggregation, Aggregator, GramAggregation, check_bool, check_positive_or_none, clip_coefficients, combine, pi_scaled,
)


@register
class LinearScalarization(Aggregator):
    """``d = sum_i g_i``. Options: ``max_norm`` (None = no clipping), ``pi`` (PI-LS: weights omega,
    see ``performance.py``)."""

    name = "ls"
    scale = "sum"

    def __init__(self, num_tasks: int, max_norm: float | None = None, pi: bool = False) -> None:
        super().__init__(num_tasks)
        check_positive_or_none("max_norm", max_norm)
        check_bool("pi", pi)
        self.max_norm, self.pi = max_norm, pi

    def _weights(self, ctx: AggContext) -> Tensor:
        k = len(ctx.task_ids)
        value = 1.0 if self.scale == "sum" else 1.0 / k
        weights = torch.full((k,), value, dtype=torch.float64)
        return pi_scaled(weights, ctx) if self.pi else weights

    def aggregate(self, G: Tensor, ctx: AggContext) -> Aggregation:
        w = self._weights(ctx)
        direction, norm, coefficients = combine(G, w, self.max_norm)
        return Aggregation(direction, w, {"norm": norm}, coefficients)

    def aggregate_gram(self, M: np.ndarray, ctx: AggContext, dtype: torch.dtype) -> GramAggregation:
        w = self._weights(ctx).numpy()
        coefficients, norm = clip_coefficients(w, self.max_norm, M)
        return GramAggregation(coefficients, w, {"norm": norm})

    def needs_jacobian(self, step: int) -> bool:
        return False

    def weights_without_jacobian(self, ctx: AggContext) -> Tensor:
        return self._weights(ctx)


@register
class Mean(LinearScalarization):
    """``d = (1/K) sum_i g_i`` (the average-loss gradient g0)."""

    name = "mean"
    scale = "mean"
