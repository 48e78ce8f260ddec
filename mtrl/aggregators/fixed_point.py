"""Shared machinery of the methods whose weights solve ``M alpha = c * alpha^(-q)``.

Nash-MTL (q = 1, c = 1), FairGrad (q = 1/alpha_fair, c = 1), PIVRG (q = 1/2, c = sqrt(omega)) and
AuxiNash (q = 1, c = p) differ only in (c, q) and their defaults. This base class owns what they
share: the warm start indexed by global task id, the fallbacks (docs/aggregators.md, "Solvers"), the reuse of the
last weights for T - 1 steps (Nash-MTL-T), and the post-processing (optional x K, max-norm clip).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from mtrl.aggregators.base import AggContext, Aggregation, Aggregator, check_bool, check_gradient_matrix, check_int, check_positive_or_none, combine
from mtrl.aggregators.solvers import STATIONARY_TOL, gram, gram_tolerance, positive_fixed_point


class FixedPointWeighting(Aggregator):
    """Base class: subclasses implement ``coefficients(ctx, task_ids) -> (c [K], q)``."""
    checks_values_in_gram = True  # aggregate() starts with solvers.gram(G)

    state_attributes = ("alpha", "step")

    def __init__(
        self,
        num_tasks: int,
        update_every: int = 1,
        max_norm: float | None = 1.0,
        scale_by_K: bool = False,
        warm_start: bool = True,
    ) -> None:
        super().__init__(num_tasks)
        check_int("update_every", update_every, 1)
        check_positive_or_none("max_norm", max_norm)
        check_bool("scale_by_K", scale_by_K)
        check_bool("warm_start", warm_start)
        self.update_every, self.max_norm, self.scale_by_K, self.warm_start = update_every, max_norm, scale_by_K, warm_start
        self.alpha = torch.zeros(num_tasks, dtype=torch.float64)  # last weights by global id (0 = none yet)
        self.step = 0

    def coefficients(self, ctx: AggContext, task_ids: Tensor) -> tuple[np.ndarray, float]:  # pragma: no cover
        raise NotImplementedError

    # ---- Nash-MTL-T: reuse the stored weights between updates ------------------------------
    def needs_jacobian(self, step: int) -> bool:
        return self.update_every == 1 or self.step % self.update_every == 0 or not np.any(self.alpha.numpy() > 0)

    def weights_without_jacobian(self, ctx: AggContext) -> Tensor:
        self.step += 1
        weights = self.alpha[torch.as_tensor(ctx.task_ids).long().cpu()].clone()
        return weights * len(weights) if self.scale_by_K else weights

    # ---- one aggregation -----------------------------------------------------------------------
    def solve(
        self, M: np.ndarray, ctx: AggContext, task_ids: Tensor, stationary_tol: float = STATIONARY_TOL
    ) -> tuple[np.ndarray, dict[str, float]]:
        """Weights for the rows of M, with fallbacks; does not touch the state. ``stationary_tol``:
        the rounding level of M (``gram_tolerance`` of G's dtype), below which 0 counts as in the
        convex hull of the rows and the solver stops early (``info["stationary"] = 1``)."""
        c, q = self.coefficients(ctx, task_ids)
        previous = self.alpha[task_ids].numpy()
        warm = previous if self.warm_start and np.all(previous > 0) else None
        result = positive_fixed_point(M, c, q, alpha0=warm, stationary_tol=stationary_tol)
        info = {"iterations": float(result.iterations), "residual": result.residual, "fallback_used": 0.0,
                "stationary": float(result.stationary)}
        alpha = result.alpha
        if not result.ok:
            info["fallback_used"] = 1.0
            if np.all(np.isfinite(previous)) and np.all(previous > 0):
                alpha = previous.copy()  # (i) the previous weights, as the reference code does
            else:  # (ii) equal weights on normalised gradients: d = (1/K) sum g_i / ||g_i||
                norms = np.sqrt(np.clip(np.diag(M), 0.0, None))
                alpha = np.where(norms > 0, 1.0 / (len(norms) * np.maximum(norms, 1e-300)), 0.0)
        return alpha, info

    def aggregate(self, G: Tensor, ctx: AggContext) -> Aggregation:
        task_ids = torch.as_tensor(ctx.task_ids).long().cpu()
        if not self.needs_jacobian(ctx.step):  # called with G on a reuse step: same direction
            check_gradient_matrix(G)  # no Gram matrix on this path to check the values
            self.step += 1
            alpha = self.alpha[task_ids].numpy()
            info = {"reused": 1.0}
        else:
            M = gram(G)
            alpha, info = self.solve_and_store(M, ctx, task_ids, gram_tolerance(G.dtype))
            return self.finish(G, torch.from_numpy(alpha), info, M)
        return self.finish(G, torch.from_numpy(alpha), info)

    def solve_and_store(
        self, M: np.ndarray, ctx: AggContext, task_ids: Tensor, stationary_tol: float = STATIONARY_TOL
    ) -> tuple[np.ndarray, dict[str, float]]:
        """One weight update: solve, keep the weights unless they came from a fallback, count the call."""
        alpha, info = self.solve(M, ctx, task_ids, stationary_tol)
        if info["fallback_used"] == 0.0:
            self.alpha[task_ids] = torch.from_numpy(alpha)
        self.step += 1
        return alpha, info

    def finish(self, G: Tensor, weights: Tensor, info: dict[str, float], M: np.ndarray | None = None) -> Aggregation:
        """``d = G^T alpha`` (x K if ``scale_by_K``), clipped to ``max_norm`` (the norm from ``M``
        when the step computed it)."""
        scaled = weights.numpy() * G.shape[0] if self.scale_by_K else weights
        direction, norm, coefficients = combine(G, scaled, self.max_norm, M)
        info["norm"] = norm
        return Aggregation(direction, weights, info, coefficients, None if M is None else torch.from_numpy(M))
