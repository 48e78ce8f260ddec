"""PIVRG [PV]: performance-informed variance-reduction gradient aggregation.

Minimises the omega-weighted mean inverse improvement rate ``(1/K) sum_i omega_i / (g_i^T d)``
over a ball [PV §3.3, Eq. 4]; its KKT conditions give ``d = G^T alpha`` with
``M alpha = sqrt(omega / alpha)`` [PV Eqs. 6-8], solved exactly by the shared Newton solver
(q = 1/2, c = sqrt(omega)) where the paper uses scipy's least squares.

Performance weights [PV §3.2, Eq. 5, App A.1]: ``omega = K softmax(dm / tau)`` with
``tau = max((dm_max - dm_min) / log s, tau*)``, so that ``sum omega = K`` and every
``omega_i in [1/s, s]`` (Prop 1). In RL the performance drop of task i is read from its latest
evaluation success rate (docs/aggregators.md, readings table): ``dm_i = 100 (1 - SR_i)``, i.e. perfect success is the
reference; ``ctx.perf`` carries the success rates of all tasks (omega = 1 before the first
evaluation; a NaN entry, a task not evaluated yet, gets the mean of the others' dm).

Defaults follow the released code [C]: ``bound`` s = 2, ``min_temperature`` tau* = 10,
``scale_by_K=True``, ``max_norm=1.0``. The weights are warm-started by global task id (the
released code restarts least squares from 1/K each step; the solution is the same).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from mtrl.aggregators import register
from mtrl.aggregators.base import AggContext, check_option, is_number
from mtrl.aggregators.fixed_point import FixedPointWeighting
from mtrl.aggregators.performance import performance_weights, pi_omega, success_to_performance_drop

__all__ = ["PIVRG", "performance_weights", "pi_omega", "success_to_performance_drop"]


@register
class PIVRG(FixedPointWeighting):
    name = "pivrg"
    state_attributes = ("alpha", "step", "last_omega")

    def __init__(
        self,
        num_tasks: int,
        bound: float = 2.0,
        min_temperature: float = 10.0,
        max_norm: float | None = 1.0,
        scale_by_K: bool = True,
        warm_start: bool = True,
    ) -> None:
        super().__init__(num_tasks, max_norm=max_norm, scale_by_K=scale_by_K, warm_start=warm_start)
        check_option("bound", bound, is_number(bound) and bound > 1, "a number > 1")
        check_option("min_temperature", min_temperature, is_number(min_temperature) and min_temperature > 0, "a positive number")
        self.bound, self.min_temperature = float(bound), float(min_temperature)
        self.last_omega = torch.ones(num_tasks, dtype=torch.float64)
        self._last_tau = self.min_temperature

    def coefficients(self, ctx: AggContext, task_ids: Tensor) -> tuple[np.ndarray, float]:
        omega, tau = pi_omega(ctx.perf, task_ids, self.bound, self.min_temperature)
        self.last_omega[task_ids] = omega
        self._last_tau = tau
        return np.sqrt(omega.numpy()), 0.5

    def extra_info(self, ctx: AggContext, task_ids: Tensor) -> dict[str, float]:
        present = self.last_omega[task_ids]
        return {"omega_min": float(present.min()), "omega_max": float(present.max()), "tau": float(self._last_tau)}
