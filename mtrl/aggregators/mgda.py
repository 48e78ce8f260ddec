"""MGDA (Desideri, 2012; Sener & Koltun, 2018): the min-norm point of the convex hull of the task
gradients, ``w* = argmin_{w in simplex} ||G^T w||^2`` [CA App A.1, Eq. 6], on the shared
parameters (the "MGDA" rows of [NM], not MGDA-UB; docs/aggregators.md, readings table). ``d = G^T w*`` satisfies
``g_i^T d >= ||d||^2`` with equality where ``w_i > 0`` (KKT); ``d = 0`` iff the point is
Pareto-stationary.

Solved exactly on the K x K Gram matrix by Wolfe's active-set method (``solvers.min_norm_simplex``):
a few bordered K' x K' solves, stopped by the KKT conditions up to the rounding of M
(``solvers.gram_tolerance(G.dtype)``: 1.2e-5 for float32, 2.2e-14 for float64, relative to the
largest squared gradient norm). So a call costs the Gram matrix, microseconds, and ``w @ G``.

At a Pareto-stationary point (0 in the convex hull: anti-parallel gradients, a gradient that is
minus a convex combination of others, a zero gradient) the min-norm point is 0. The solver stops
there as soon as ``||d||^2 <= tol max_i ||g_i||^2`` (one or two solves for an anti-parallel pair)
and returns ``info["stationary"] = 1``, the weights of the vanishing combination and their
direction as computed: ``||d|| <= sqrt(tol) max_i ||g_i||`` (3.5e-3 x for a float32 G, 1.5e-7 x
for float64) plus the rounding of ``w @ G`` in G's dtype. ``info`` also has ``iterations`` (affine
solves) and ``gap``, the KKT residual relative to ``max_i ||g_i||^2``.

``pi=True`` (PI-MGDA; [PV §4.4] does not say how omega enters MGDA): the min-norm point of the
rows scaled by omega, as the loss-weighting methods see ``omega * loss``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from mtrl.aggregators import register
from mtrl.aggregators.base import AggContext, Aggregator, GramAggregation, check_bool, check_positive_or_none, clip_coefficients
from mtrl.aggregators.batched import min_norm_simplex_batch
from mtrl.aggregators.from_gram import GramAggregator, isolate_failures
from mtrl.aggregators.performance import pi_omega
from mtrl.aggregators.solvers import MinNormResult, gram_tolerance, min_norm_simplex


@register
class MGDA(GramAggregator):
    name = "mgda"

    def __init__(self, num_tasks: int, max_norm: float | None = None, pi: bool = False) -> None:
        super().__init__(num_tasks)
        check_positive_or_none("max_norm", max_norm)
        check_bool("pi", pi)
        self.max_norm, self.pi = max_norm, pi

    def scaled_gram(self, M: np.ndarray, ctx: AggContext) -> tuple[np.ndarray, np.ndarray | None]:
        """The Gram matrix the min-norm point is taken of, and omega (None without ``pi``)."""
        if not self.pi:
            return M, None
        # PI-MGDA: the min-norm point of the omega-scaled gradients omega_i g_i
        omega = pi_omega(ctx.perf, torch.as_tensor(ctx.task_ids).long().cpu())[0].numpy()
        return M * np.outer(omega, omega), omega

    def finish_gram(self, M: np.ndarray, result: MinNormResult, omega: np.ndarray | None) -> GramAggregation:
        weights = result.weights if omega is None else result.weights * omega
        info = {"iterations": float(result.iterations), "gap": result.gap, "stationary": float(result.stationary)}
        coefficients, info["norm"] = clip_coefficients(weights, self.max_norm, M)
        return GramAggregation(coefficients, weights, info)

    def aggregate_gram(self, M: np.ndarray, ctx: AggContext, dtype: torch.dtype) -> GramAggregation:
        target, omega = self.scaled_gram(M, ctx)
        return self.finish_gram(M, min_norm_simplex(target, tol=gram_tolerance(dtype)), omega)

    @classmethod
    def aggregate_population(
        cls, members: Sequence[Aggregator], M: np.ndarray, contexts: Sequence[AggContext], dtype: torch.dtype
    ) -> list[GramAggregation | Exception]:
        """All members' min-norm points in one ``min_norm_simplex_batch`` (Wolfe's method in lock-step)."""
        out: list[GramAggregation | Exception | None] = [None] * len(members)
        targets, omegas, index = [], [], []
        for s, (agg, ctx) in enumerate(zip(members, contexts)):
            try:
                target, omega = agg.scaled_gram(M[s], ctx)
            except Exception as error:  # noqa: BLE001 - reported for this member only
                out[s] = error
                continue
            targets.append(target)
            omegas.append(omega)
            index.append(s)
        if index:
            stacked, tol = np.stack(targets), gram_tolerance(dtype)
            solved = isolate_failures(lambda rows: min_norm_simplex_batch(stacked[rows], tol=tol), len(index))
            for s, omega, result in zip(index, omegas, solved):
                try:
                    out[s] = result if isinstance(result, Exception) else members[s].finish_gram(M[s], result, omega)
                except Exception as error:  # noqa: BLE001 - reported for this member only
                    out[s] = error
        return out  # type: ignore[return-value]
