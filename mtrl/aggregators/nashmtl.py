"""Nash-MTL [NM]: the Nash bargaining solution of the tasks, and Nash-MTL-T.

The weights solve ``M alpha = 1 / alpha`` (M = G G^T) [NM Claim 3.1, Eq. 2]; the direction is
``d = G^T alpha``, along which every task improves at rate ``g_i^T d = 1 / alpha_i`` and
``||d||^2 = K`` [NM App A]. It is invariant to the scale of each task's gradient.

Solvers:
* ``solver="exact"`` (default): damped Newton on the convex potential
  ``1/2 a'Ma - sum log a`` (docs/aggregators.md, "Solvers"), warm-started from the previous weights by global task
  id; converges to a relative residual of 1e-10 in a handful of iterations.
* ``solver="ccp"``: the paper's concave-convex procedure on Eq. 5 [NM §3.2] with cvxpy
  (imported only here), on the Frobenius-normalised Gram matrix as the reference code does,
  ``optim_niter`` CCP steps (the paper used 1 step for MT10, 20 elsewhere).

Options: ``update_every=T`` recomputes the weights every T calls and reuses them in between
(Nash-MTL-T [NM §3.3]; ``needs_jacobian`` is False on reuse steps so the trainer backpropagates
``sum_i alpha_i loss_i`` once); ``max_norm`` (1.0, the reference code's clipping; since
``||d|| = sqrt(K) >= 1`` the shared update then always has unit norm); ``scale_by_K``;
``pi=True`` (PI-Nash-MTL [PV §4.4]: bargaining powers omega from ``ctx.perf``).
Fallbacks (docs/aggregators.md, "Solvers"): zero rows get weight 0; if no positive solution exists (0 in the
convex hull of the gradients) the previous weights are reused, else equal weights on
normalised gradients (then ``||d|| <= 1``), and ``info["fallback_used"] = 1``. The solver sees
such a Pareto-stationary G after 5 Newton iterations (a min-norm probe on the unit gradients,
``info["stationary"] = 1``) and stops at the rounding floor of nearly opposite gradients, so a
fallback costs about as much as a solve (``solvers.positive_fixed_point``).
"""

from __future__ import annotations

import numpy as np
from torch import Tensor

from mtrl.aggregators import register
from mtrl.aggregators.base import AggContext, check_int, check_option
from mtrl.aggregators.fixed_point import FixedPointWeighting
from mtrl.aggregators.performance import pi_omega
from mtrl.aggregators.solvers import STATIONARY_TOL, zero_rows


@register
class NashMTL(FixedPointWeighting):
    name = "nashmtl"

    def __init__(
        self,
        num_tasks: int,
        update_every: int = 1,
        max_norm: float | None = 1.0,
        scale_by_K: bool = False,
        solver: str = "exact",
        optim_niter: int = 20,
        pi: bool = False,
    ) -> None:
        super().__init__(num_tasks, update_every=update_every, max_norm=max_norm, scale_by_K=scale_by_K)
        check_option("pi", pi, isinstance(pi, bool) and not (pi and solver == "ccp"), "True or False (False with solver='ccp')")
        self.pi = pi
        check_option("solver", solver, solver in ("exact", "ccp"), "'exact' or 'ccp'")
        check_int("optim_niter", optim_niter, 1)
        self.solver, self.optim_niter = solver, optim_niter

    def coefficients(self, ctx: AggContext, task_ids: Tensor) -> tuple[np.ndarray, float]:
        if self.pi:  # PI-Nash-MTL: bargaining powers omega (M alpha = omega / alpha)
            return pi_omega(ctx.perf, task_ids)[0].numpy(), 1.0
        return np.ones(len(task_ids)), 1.0

    def uses_batched_solver(self) -> bool:
        return self.solver == "exact"  # cvxpy's CCP solves one member at a time

    def solve(
        self, M: np.ndarray, ctx: AggContext, task_ids: Tensor, stationary_tol: float = STATIONARY_TOL
    ) -> tuple[np.ndarray, dict[str, float]]:
        if self.solver == "exact":
            return super().solve(M, ctx, task_ids, stationary_tol)
        previous = self.alpha[task_ids].numpy()
        alpha, iterations = ccp_nash(M, previous if np.all(previous > 0) else None, self.optim_niter)
        ok = alpha is not None and np.all(np.isfinite(alpha))
        if not ok:
            alpha = previous if np.all(previous > 0) else super().solve(M, ctx, task_ids, stationary_tol)[0]
        active = alpha > 0
        Ma = M @ alpha
        residual = float(np.max(np.abs(alpha[active] * Ma[active] - 1.0))) if active.any() else 0.0
        return alpha, {"iterations": float(iterations), "residual": residual, "fallback_used": float(not ok)}


def ccp_nash(M: np.ndarray, alpha0: np.ndarray | None, steps: int) -> tuple[np.ndarray | None, int]:
    """The paper's CCP [NM §3.2, Eq. 5] on ``M_n = M / ||M||_F``, rescaled back to M's units.

    Each step solves ``min sum_i beta_i(a) + grad_phi(a_t)' a`` subject to
    ``log a_i + log beta_i(a) >= 0`` (i.e. ``a_i (M_n a)_i >= 1``), ``a >= 0``, with
    ``beta(a) = M_n a``, ``phi(a) = sum log a_i + log beta_i(a)`` linearised at the previous
    iterate (``grad phi(a) = 1/a + M_n^T (1 / (M_n a))``). Stops early like the reference code:
    residual ``||M_n a - 1/a|| < 1e-3`` or a step smaller than 1e-6.
    """
    import cvxpy as cp

    K = M.shape[0]
    active = ~zero_rows(M)
    out = np.zeros(K)
    if not active.any():
        return out, 0
    Ma = M[np.ix_(active, active)]
    scale = float(np.linalg.norm(Ma))
    Mn = Ma / scale
    n = int(active.sum())
    a_t = np.ones(n) if alpha0 is None else np.asarray(alpha0)[active] * np.sqrt(scale)
    a = cp.Variable(n, nonneg=True)
    linear = cp.Parameter(n)
    beta = Mn @ a
    problem = cp.Problem(cp.Minimize(cp.sum(beta) + linear @ a), [cp.log(a) + cp.log(beta) >= 0])
    steps_done = 0
    for steps_done in range(1, steps + 1):
        linear.value = 1.0 / a_t + Mn.T @ (1.0 / (Mn @ a_t))
        try:
            problem.solve(solver=cp.CLARABEL, warm_start=True)
        except cp.error.SolverError:
            return None, steps_done
        if a.value is None:
            return None, steps_done
        a_new = np.maximum(a.value, 1e-12)
        done = np.linalg.norm(Mn @ a_new - 1.0 / (a_new + 1e-10)) < 1e-3 or np.linalg.norm(a_new - a_t) < 1e-6
        a_t = a_new
        if done:
            break
    out[active] = a_t / np.sqrt(scale)
    return out, steps_done
