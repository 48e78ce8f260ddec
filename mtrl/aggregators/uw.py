"""UW: uncertainty weighting (Kendall et al., 2018) [NM §6 (6)].

Minimises ``sum_i 1/2 (exp(-s_i) loss_i + s_i)`` with learned log-variances ``s_i`` (the
released code's form [C]; docs/aggregators.md, readings table): the model gets weights ``1/2 exp(-s_i)`` and, each
step, ``s`` takes one Adam step (``lr``) on its own gradient ``1/2 (1 - exp(-s_i) loss_i)``.
``s`` and its Adam moments are kept by global task id and saved in ``state_dict``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mtrl.aggregators import register
from mtrl.aggregators.base import AggContext, LossWeighting, adam_update, check_option, is_number


@register
class UncertaintyWeighting(LossWeighting):
    name = "uw"
    state_attributes = ("log_variance", "adam_m", "adam_v", "adam_steps")

    def __init__(self, num_tasks: int, lr: float = 3e-4, max_norm: float | None = None, pi: bool = False) -> None:
        super().__init__(num_tasks, max_norm=max_norm, pi=pi)
        check_option("lr", lr, is_number(lr) and lr > 0, "a positive number")
        self.lr = float(lr)
        self.log_variance = torch.zeros(num_tasks, dtype=torch.float64)
        self.adam_m = torch.zeros(num_tasks, dtype=torch.float64)
        self.adam_v = torch.zeros(num_tasks, dtype=torch.float64)
        self.adam_steps = torch.zeros(num_tasks, dtype=torch.int64)

    def loss_weights(self, ctx: AggContext) -> Tensor:
        ids = torch.as_tensor(ctx.task_ids).long().cpu()
        losses = self.require_losses(ctx, self.name)
        s = self.log_variance[ids]
        weights = 0.5 * torch.exp(-s)
        grad = 0.5 * (1.0 - torch.exp(-s) * losses)
        step = int(self.adam_steps[ids].max())
        m, v = self.adam_m[ids], self.adam_v[ids]
        step = adam_update(s, grad, m, v, step, self.lr)
        self.log_variance[ids], self.adam_m[ids], self.adam_v[ids] = s, m, v
        self.adam_steps[ids] = step
        return weights
