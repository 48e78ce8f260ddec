"""DWA: dynamic weight average (Liu et al., 2019) [NM §6 (5), PV App C.1].

``w_i = K exp(r_i / T) / sum_j exp(r_j / T)`` with ``r_i`` the ratio of task i's mean loss over
the last completed window to its mean over the window before (windows of ``window`` = 25 calls,
as the released code averages 25 iterations; docs/aggregators.md, readings table), T = ``temperature`` = 2. The weights
are 1 until two windows are complete. SAC losses can be negative: the ratio uses absolute window
means (floored at 1e-8), so a shrinking |loss| lowers the weight as for positive losses.
State is kept by global task id.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mtrl.aggregators import register
from mtrl.aggregators.base import AggContext, LossWeighting, check_int, check_option, is_number


@register
class DWA(LossWeighting):
    name = "dwa"
    state_attributes = ("window_sum", "window_count", "last_mean", "previous_mean", "completed")

    def __init__(self, num_tasks: int, temperature: float = 2.0, window: int = 25, max_norm: float | None = None, pi: bool = False) -> None:
        super().__init__(num_tasks, max_norm=max_norm, pi=pi)
        check_option("temperature", temperature, is_number(temperature) and temperature > 0, "a positive number")
        check_int("window", window, 1)
        self.temperature, self.window = float(temperature), window
        self.window_sum = torch.zeros(num_tasks, dtype=torch.float64)
        self.window_count = torch.zeros(num_tasks, dtype=torch.float64)
        self.last_mean = torch.zeros(num_tasks, dtype=torch.float64)
        self.previous_mean = torch.zeros(num_tasks, dtype=torch.float64)
        self.completed = torch.zeros(num_tasks, dtype=torch.int64)

    def loss_weights(self, ctx: AggContext) -> Tensor:
        ids = torch.as_tensor(ctx.task_ids).long().cpu()
        losses = self.require_losses(ctx, self.name)
        ready = self.completed[ids] >= 2
        if bool(ready.all()):
            ratio = self.last_mean[ids].abs().clamp_min(1e-8) / self.previous_mean[ids].abs().clamp_min(1e-8)
            weights = len(ids) * torch.softmax(ratio / self.temperature, dim=0)
        else:
            weights = torch.ones(len(ids), dtype=torch.float64)
        # account this step's losses into the current window of each task
        self.window_sum[ids] += losses
        self.window_count[ids] += 1
        full = ids[self.window_count[ids] >= self.window]
        if len(full):
            self.previous_mean[full] = self.last_mean[full]
            self.last_mean[full] = self.window_sum[full] / self.window_count[full]
            self.window_sum[full] = 0.0
            self.window_count[full] = 0.0
            self.completed[full] += 1
        return weights
