"""CAGrad [CA]: conflict-averse gradient descent.

Maximise the worst task's improvement ``min_i g_i^T d`` inside the ball ``||d - g0|| <= c ||g0||``
around the average gradient g0 [CA §3.1, Eq. 3]. Through the dual over the simplex
[CA Lemma A.2, Eq. 11], ``w* = argmin_w g_w^T g0 + c ||g0|| ||g_w||`` and
``d = g0 + (c ||g0|| / ||g_{w*}||) g_{w*}``, i.e. weights ``b + lambda w*`` on the rows of G with
``b = 1/K``. c = 0 is gradient descent on the mean loss; c -> infinity tends to MGDA.

Solvers: ``solver="exact"`` (tight dual solve: SLSQP then Newton on the support, within 1e-9 of
cvxpy) or ``solver="sgd"`` (the RL recipe of [CA App B.3] as in the MTRL code: 20 momentum-SGD
steps on softmax logits, lr 25 for K <= 10 else 50, momentum 0.5, best of 21 iterates; the rule
"K <= 10 -> 25" generalises the paper's MT10 / MT50 values).

``rescale`` (not in the paper, released-code variants [C]; docs/aggregators.md, readings table): 0 none, 1 divide by
(1 + c^2) (default, MTRL CAGrad), 2 divide by (1 + c). It changes the magnitude only.
Edge cases: c = 0 or g0 = 0 short-circuit to g0; if ``||g_{w*}|| ~ 0`` (the point
is Pareto-stationary) the direction is g0. c >= 1 is allowed with a warning (Thm 3.2 needs c < 1).
"""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
import torch

from mtrl.aggregators import register
from mtrl.aggregators.base import AggContext, Aggregator, GramAggregation, check_option, check_positive_or_none, clip_coefficients, is_number
from mtrl.aggregators.batched import cagrad_dual_sgd_batch
from mtrl.aggregators.from_gram import GramAggregator, finish_members, isolate_failures
from mtrl.aggregators.solvers import cagrad_dual_exact, cagrad_dual_sgd, gram_tolerance

RESCALE = {0: lambda c: 1.0, 1: lambda c: 1.0 + c**2, 2: lambda c: 1.0 + c}


def cagrad_weights(
    M: np.ndarray, b: np.ndarray, c: float, solver: str, tol: float, lr: float | None = None
) -> tuple[np.ndarray, dict[str, float]]:
    """Weights on the rows of G (before rescaling) for the CAGrad problem with ``g0 = G^T b``.

    ``tol`` is the rounding level of M relative to its largest diagonal entry
    (``solvers.gram_tolerance`` of G's dtype): a quadratic form ``v' M v`` at or below
    ``tol (sum_i |v_i|)^2 max_i M_ii`` cannot be told from 0. A mean gradient that small is 0
    (``d = g0``, exactly what G^T b gives), whatever BLAS summed M; a ``g_{w*}`` that small means
    the point is Pareto-stationary and the direction is g0 too."""
    scale = tol * max(float(np.diag(M).max(initial=0.0)), 1e-300)
    g0_sq = float(b @ M @ b)
    if c == 0.0 or g0_sq <= scale * float(np.abs(b).sum()) ** 2:
        return b.copy(), {"lambda": 0.0}
    if solver == "exact":
        w, dual = cagrad_dual_exact(M, b, c)
        gw_sq = float(w @ M @ w)
        if gw_sq <= scale:  # w is on the simplex: (sum_i |w_i|)^2 = 1
            return b.copy(), {"lambda": 0.0, "dual": float(dual)}
        lam = c * np.sqrt(g0_sq) / np.sqrt(gw_sq)
        return b + lam * w, {"lambda": float(lam), "dual": float(dual)}
    w, lam, obj = cagrad_dual_sgd(M, b, c, lr if lr is not None else (25.0 if len(b) <= 10 else 50.0))
    return b + lam * w, {"lambda": float(lam), "dual": float(obj)}


def cagrad_weights_batch(
    M: np.ndarray, b: np.ndarray, c: np.ndarray, tol: float, lr: np.ndarray
) -> list[tuple[np.ndarray, dict[str, float]]]:
    """``cagrad_weights`` with ``solver="sgd"`` for every member of ``M [S, K, K]``, ``b [S, K]``,
    ``c [S]``, ``lr [S]``: the 20-step RL solver on all members at once."""
    S = M.shape[0]
    diagonal = M.diagonal(axis1=1, axis2=2)
    scale = tol * np.maximum(diagonal.max(1, initial=0.0), 1e-300)
    bM = np.matmul(b[:, None, :], M)[:, 0, :]
    g0_sq = (bM * b).sum(1)
    plain = (c == 0.0) | (g0_sq <= scale * np.abs(b).sum(1) ** 2)
    out: list[tuple[np.ndarray, dict[str, float]] | None] = [None] * S
    for s in np.flatnonzero(plain):
        out[s] = (b[s].copy(), {"lambda": 0.0})
    solve = np.flatnonzero(~plain)
    if solve.size:
        w, lam, obj = cagrad_dual_sgd_batch(M[solve], b[solve], c[solve], lr[solve])
        for r, s in enumerate(solve):
            out[s] = (b[s] + lam[r] * w[r], {"lambda": float(lam[r]), "dual": float(obj[r])})
    return out  # type: ignore[return-value]


@register
class CAGrad(GramAggregator):
    name = "cagrad"

    def __init__(
        self, num_tasks: int, c: float = 0.4, solver: str = "exact", rescale: int = 1, max_norm: float | None = None
    ) -> None:
        super().__init__(num_tasks)
        check_option("c", c, is_number(c) and c >= 0, "a number >= 0")
        check_option("solver", solver, solver in ("exact", "sgd"), "'exact' or 'sgd'")
        check_option("rescale", rescale, rescale in RESCALE and not isinstance(rescale, bool), "0, 1 or 2")
        check_positive_or_none("max_norm", max_norm)
        if c >= 1:
            warnings.warn(f"CAGrad with c = {c} >= 1: the convergence guarantee of [CA Thm 3.2] needs c < 1", stacklevel=2)
        self.c, self.solver, self.rescale, self.max_norm = float(c), solver, rescale, max_norm

    def finish_gram(self, M: np.ndarray, weights: np.ndarray, info: dict[str, float]) -> GramAggregation:
        weights = weights / RESCALE[self.rescale](self.c)
        coefficients, info["norm"] = clip_coefficients(weights, self.max_norm, M)
        return GramAggregation(coefficients, weights, info)

    def aggregate_gram(self, M: np.ndarray, ctx: AggContext, dtype: torch.dtype) -> GramAggregation:
        K = M.shape[0]
        weights, info = cagrad_weights(M, np.full(K, 1.0 / K), self.c, self.solver, gram_tolerance(dtype))
        return self.finish_gram(M, weights, info)

    @classmethod
    def aggregate_population(
        cls, members: Sequence[Aggregator], M: np.ndarray, contexts: Sequence[AggContext], dtype: torch.dtype
    ) -> list[GramAggregation | Exception]:
        """Members with ``solver="sgd"`` (the RL solver of the configs) solve in one
        ``cagrad_weights_batch``; the exact solver (an active-set Newton per member) loops."""
        S, K = M.shape[0], M.shape[1]
        sgd = np.array([agg.solver == "sgd" for agg in members], dtype=bool)
        batch = np.flatnonzero(sgd)
        b = np.full((S, K), 1.0 / K)
        c = np.array([agg.c for agg in members])
        lr = np.full(S, 25.0 if K <= 10 else 50.0)
        tol = gram_tolerance(dtype)
        solved = dict(zip(batch.tolist(), isolate_failures(
            lambda rows: cagrad_weights_batch(M[batch[rows]], b[batch[rows]], c[batch[rows]], tol, lr[batch[rows]]), len(batch))))
        return finish_members(members, contexts, M, dtype, solved, lambda agg, M_s, result: agg.finish_gram(M_s, *result))
