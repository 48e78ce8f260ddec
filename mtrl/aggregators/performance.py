"""Performance weights of PIVRG [PV §3.2] and the PI-integration of other methods [PV §4.4].

``omega = K softmax(dm / tau)`` with ``tau = max((dm_max - dm_min) / log s, tau*)`` [PV Eq. 5,
App A.1], so ``sum omega = K`` and ``omega_i in [1/s, s]`` (Prop 1). In RL the performance drop of
task i comes from its latest evaluation success rate, ``dm_i = 100 (1 - SR_i)`` (docs/aggregators.md, readings table).

``pi=True`` on ``ls``, ``mean``, ``rlw``, ``dwa``, ``uw``, ``mgda`` multiplies the method's task
weights by omega (PI-LS etc.: ``loss -> omega * loss`` as seen by the model [PV §4.4]; the
methods' own state, e.g. UW's log-variances, keeps seeing the raw losses, otherwise UW's
equilibrium ``exp(s) = omega * loss`` would cancel omega). For ``nashmtl`` omega replaces the
equal bargaining powers (``M alpha = omega / alpha``, the AuxiNash solver with p = omega).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

# This module imports nothing from the rest of mtrl.aggregators: ``base.py`` (the loss weightings'
# ``pi=True``) and the methods import it, never the other way round.

__all__ = ["performance_weights", "pi_omega", "success_to_performance_drop"]


def success_to_performance_drop(success_rate: Tensor) -> Tensor:
    """dm_i = 100 (1 - SR_i): Eq. 3 with perfect success as the baseline, in percent."""
    return 100.0 * (1.0 - success_rate.double())


def performance_weights(dm: Tensor, bound: float = 2.0, min_temperature: float = 10.0) -> tuple[Tensor, float]:
    """omega = K softmax(dm / tau) with the tau rule of [PV App A.1]; returns (omega [K], tau).

    NaN entries get the mean of the finite ones (a neutral weight); all-NaN gives omega = 1."""
    dm = dm.double().clone()
    finite = torch.isfinite(dm)
    if not finite.any():
        return torch.ones_like(dm), float(min_temperature)
    dm[~finite] = dm[finite].mean()
    spread = float(dm.max() - dm.min())
    tau = max(spread / math.log(bound), min_temperature)
    z = torch.exp((dm - dm.max()) / tau)
    return len(dm) * z / z.sum(), tau


def pi_omega(perf: Tensor | None, task_ids: Tensor, bound: float = 2.0, min_temperature: float = 10.0) -> tuple[Tensor, float]:
    """omega of the tasks present (renormalised to sum to their number, so absent tasks take no
    weight away) from the success rates ``perf`` [num_tasks] (an ``AggContext``'s ``perf``), and
    tau; omega = 1 before the first evaluation (``perf`` None)."""
    if perf is None:
        return torch.ones(len(task_ids), dtype=torch.float64), float(min_temperature)
    omega_all, tau = performance_weights(success_to_performance_drop(torch.as_tensor(perf)), bound, min_temperature)
    omega = omega_all[task_ids]
    return omega * len(omega) / omega.sum(), tau
