"""RLW: random loss weighting (Lin et al., 2021).

Every step draws ``z ~ N(0, I)`` from ``ctx.generator`` and weights the losses by
``softmax(z)`` (the Nash-MTL code's convention [C]; docs/aggregators.md, readings table), so the weights are positive
and sum to 1. No G is needed.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mtrl.aggregators import register
from mtrl.aggregators.base import AggContext, LossWeighting


@register
class RLW(LossWeighting):
    name = "rlw"

    def loss_weights(self, ctx: AggContext) -> Tensor:
        z = torch.randn(len(ctx.task_ids), generator=ctx.generator, dtype=torch.float64)
        return torch.softmax(z, dim=0)
