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

import numpy as np
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
        # the arithmetic on these K numbers runs in numpy (0.11 ms a call against 0.31 ms in torch,
        # K = 10 on the loaded 2-core VM); the state stays in torch tensors (checkpoints) and is
        # updated through numpy views of them
        ids = torch.as_tensor(ctx.task_ids).long().cpu().numpy()
        if ids.tolist() == list(range(self.num_tasks)):  # the usual call: every task, in order
            ids = slice(None)  # views instead of copies
        losses = self.require_losses(ctx, self.name).numpy()
        state = (self.logits, self.adam_m, self.adam_v, self.previous, self.minimum, self.seen)
        logits, adam_m, adam_v, previous, minimum, seen = (t.numpy() for t in state)
        first = ~seen[ids]
        low = np.where(first, losses, np.minimum(minimum[ids], losses))
        minimum[ids], seen[ids] = low, True
        shift = np.minimum(2.0 * low, 0.0)
        current = np.maximum(losses - shift, 1e-12)  # [K] > 0
        if not first.any():  # logit update from the observed decrease since the last call
            delta = np.log(previous[ids]) - np.log(current)
            z = _softmax(logits[ids])
            grad = z * (delta - (z * delta).sum())  # J_softmax^T delta
            x, m, v = logits[ids], adam_m[ids], adam_v[ids]
            self.adam_steps = adam_update(x, grad, m, v, self.adam_steps, self.lr, self.weight_decay)
            logits[ids], adam_m[ids], adam_v[ids] = x, m, v  # written back (copies when ids is a subset)
        previous[ids] = current
        weights = _softmax(logits[ids]) / current
        return torch.from_numpy(weights / weights.sum())


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()
