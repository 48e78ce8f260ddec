"""SI: scale-invariant loss, ``sum_i log loss_i`` [NM §6 (4), PV App C.1].

The gradient is ``sum_i g_i / loss_i``: weights ``1 / loss_i``. SAC actor losses can be negative,
where ``log`` is undefined and ``g_i / loss_i`` would ascend task i's loss; we use
``1 / max(|loss_i|, eps)``, the scale-invariant weighting that stays a descent direction for
every task (documented deviation; identical to SI for positive losses such as the critic's).
"""

from __future__ import annotations

from torch import Tensor

from mtrl.aggregators import register
from mtrl.aggregators.base import AggContext, LossWeighting, check_option, is_number


@register
class ScaleInvariant(LossWeighting):
    name = "si"

    def __init__(self, num_tasks: int, eps: float = 1e-8, max_norm: float | None = None) -> None:
        super().__init__(num_tasks, max_norm=max_norm)
        check_option("eps", eps, is_number(eps) and eps > 0, "a positive number")
        self.eps = float(eps)

    def loss_weights(self, ctx: AggContext) -> Tensor:
        return 1.0 / self.require_losses(ctx, self.name).abs().clamp_min(self.eps)
