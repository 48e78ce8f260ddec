"""FAMO: fast adaptive multitask optimisation (Liu et al., 2023) [PV App C.1].

Decreases every task loss at the same relative rate with one backward pass per step. The model
descends ``sum_i z_i log D_i`` normalised, i.e. weights ``w_i = (z_i / D_i) / sum_j (z_j / D_j)``
with ``z = softmax(xi)`` and ``D_i`` the (shifted) loss. At the next call the logits ``xi`` take
one Adam step (``lr`` 0.025, L2 ``weight_decay`` 1e-3, the FAMO code's defaults) along
``J_softmax^T delta`` with ``delta_i = log D_i(previous) - log D_i(current)`` (the observed
log-loss decrease).

RL adaptation: SAC actor losses are negative, where log is undefined. ``D_i = loss_i - m_i`` with
``m_i = min(0, 2 * running minimum of task i's loss)``: for non-negative losses (the critic's)
this is FAMO's default ``D = loss`` (min_loss = 0); for negative ones D stays at least
``|running minimum|``, so it never collapses to zero at a new minimum.
State (logits, Adam moments, previous D, minima) is kept by global task id.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mtrl.aggregators import register
from mtrl.aggregators.base import AggContext, LossWeighting, adam_update, check_option, is_number


@register
class FAMO(LossWeighting):
    name = "famo"
    state_attributes = ("logits", "adam_m", "adam_v", "adam_steps", "previous", "minimum", "seen")

    def __init__(self, num_tasks: int, lr: float = 0.025, weight_decay: float = 1e-3, max_norm: float | None = None) -> None:
        super().__init__(num_tasks, max_norm=max_norm)
        check_option("lr", lr, is_number(lr) and lr > 0, "a positive number")
        check_option("weight_decay", weight_decay, is_number(weight_decay) and weight_decay >= 0, "a number >= 0")
        self.lr, self.weight_decay = float(lr), float(weight_decay)
        self.logits = torch.zeros(num_tasks, dtype=torch.float64)
        self.adam_m = torch.zeros(num_tasks, dtype=torch.float64)
        self.adam_v = torch.zeros(num_tasks, dtype=torch.float64)
        self.adam_steps = 0
        self.previous = torch.zeros(num_tasks, dtype=torch.float64)
        self.minimum = torch.zeros(num_tasks, dtype=torch.float64)
        self.seen = torch.zeros(num_tasks, dtype=torch.bool)

    def loss_weights(self, ctx: AggContext) -> Tensor:
        ids = torch.as_tensor(ctx.task_ids).long().cpu()
        losses = self.require_losses(ctx, self.name)
        first = ~self.seen[ids]
        minimum = torch.where(first, losses, torch.minimum(self.minimum[ids], losses))
        self.minimum[ids], self.seen[ids] = minimum, True
        shift = torch.clamp(2.0 * minimum, max=0.0)
        current = (losses - shift).clamp_min(1e-12)  # [K] > 0
        if not bool(first.any()):  # logit update from the observed decrease since the last call
            delta = self.previous[ids].log() - current.log()
            z = torch.softmax(self.logits[ids], dim=0)
            grad = z * (delta - (z * delta).sum())  # J_softmax^T delta
            logits, m, v = self.logits[ids], self.adam_m[ids], self.adam_v[ids]
            self.adam_steps = adam_update(logits, grad, m, v, self.adam_steps, self.lr, self.weight_decay)
            self.logits[ids], self.adam_m[ids], self.adam_v[ids] = logits, m, v
        self.previous[ids] = current
        z = torch.softmax(self.logits[ids], dim=0)
        weights = z / current
        return weights / weights.sum()
