"""The K x K solvers shared by the aggregators, all in float64 on the CPU (numpy).

Every method that solves a small problem over the Gram matrix ``M = G G^T`` calls into this file;
no solver is copied between methods (DESIGN §3). The Gram matrix itself is one matmul in G's own
dtype on G's device, then cast to float64 and moved to the CPU (DESIGN §3 supersedes spec §1.5:
a float32 Gram is 5-10x faster on a CPU and changed Nash weights by at most 2e-7 relative).

Section A: positive fixed points ``M a = c * a^(-q)`` (Nash-MTL q=1, AuxiNash and PI-Nash-MTL
q=1 with c=p, PIVRG q=1/2 with c=sqrt(omega), FairGrad q=1/alpha) by damped Newton on a strictly
convex potential (spec §2.1.3, §2.5.2 [D]).
Section B: problems over the simplex (MGDA's min-norm point, the CAGrad dual, the 20-step RL
CAGrad solver of the MTRL code).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from mtrl.aggregators.base import raise_if_non_finite

__all__ = [
    "FixedPointResult",
    "cagrad_dual_exact",
    "cagrad_dual_sgd",
    "gram",
    "min_norm_simplex",
    "positive_fixed_point",
    "simplex_minimize",
    "weights_derivative",
]


#: profiler label of the deliberate device-to-host transfers of a training step (the K x K Gram
#: matrix); ``mtrl bench update --profile`` counts them as syncs (on a CPU they are invisible)
HOST_TRANSFER = "mtrl::to_host"


def gram(G: Tensor) -> np.ndarray:
    """``M = G G^T`` [K, K]: one matmul in G's dtype on its device, returned float64 numpy (CPU).

    Raises ``ValueError`` if G holds NaN or Inf (seen on the diagonal, the squared row norms)."""
    M = G @ G.T
    with torch.profiler.record_function(HOST_TRANSFER):  # the one sync of a G-based step (DESIGN §8)
        M = M.to(device="cpu", dtype=torch.float64).numpy()
    if not np.all(np.isfinite(np.diag(M))):
        raise_if_non_finite(G)
    return M


def zero_rows(M: np.ndarray, rel_tol: float = 1e-12) -> np.ndarray:
    """Boolean mask of rows whose norm is at most ``rel_tol`` times the largest row norm."""
    norms = np.sqrt(np.clip(np.diag(M), 0.0, None))
    return norms <= rel_tol * max(float(norms.max(initial=0.0)), 1e-300)


# =====================================================================================
# Section A: positive fixed-point solvers  M a = c * a^(-q)
# =====================================================================================


@dataclass(frozen=True)
class FixedPointResult:
    """Solution of ``M a = c a^(-q)`` on the non-zero rows (zero rows get ``a_i = 0``).

    Attributes:
        alpha: [K] float64, > 0 on active rows.
        ok: converged to ``residual < tol`` (False: 0 in conv{g_i}, or no convergence).
        iterations: Newton iterations used.
        residual: ``max_i |a_i^q (M a)_i / c_i - 1|`` over active rows (scale-free).
    """

    alpha: np.ndarray
    ok: bool
    iterations: int
    residual: float


def _potential(a: np.ndarray, M: np.ndarray, c: np.ndarray, q: float) -> float:
    quad = 0.5 * a @ M @ a
    if q == 1.0:
        return quad - float(c @ np.log(a))
    return quad - float(c @ a ** (1.0 - q)) / (1.0 - q)


def positive_fixed_point(
    M: np.ndarray,
    c: np.ndarray | None = None,
    q: float = 1.0,
    alpha0: np.ndarray | None = None,
    tol: float = 1e-10,
    max_iter: int = 50,
) -> FixedPointResult:
    """Solve ``M a = c * a^(-q)``, ``a > 0`` by Newton on the strictly convex potential

        f(a) = 1/2 a^T M a - sum_i c_i a_i^(1-q) / (1-q)      (- sum_i c_i log a_i for q = 1),

    whose gradient is ``M a - c a^(-q)`` and Hessian ``M + diag(q c a^(-q-1))`` (positive
    definite on a > 0). Backtracking keeps ``a > 0`` and enforces Armijo decrease. A unique
    solution exists iff 0 is not in the convex hull of the active rows; otherwise f is unbounded
    below, ``a`` grows without bound and the result has ``ok=False``. Rows with (numerically) zero
    gradient have no solution of their own equation and are excluded with ``a_i = 0``.
    """
    K = M.shape[0]
    c = np.ones(K) if c is None else np.asarray(c, dtype=np.float64)
    active = ~zero_rows(M)
    alpha = np.zeros(K)
    if not active.any():
        return FixedPointResult(alpha, True, 0, 0.0)
    Ma, ca = M[np.ix_(active, active)], c[active]
    # Default start: the exact solution for orthogonal rows, a_i = (c_i / M_ii)^(1/(1+q)).
    start = (ca / np.diag(Ma)) ** (1.0 / (1.0 + q))
    a = start
    if alpha0 is not None:
        warm = np.asarray(alpha0, dtype=np.float64)[active]
        if np.all(np.isfinite(warm)) and np.all(warm > 0):
            a = warm
    limit = 1e8 * float(start.max())
    f = _potential(a, Ma, ca, q)
    residual = np.inf
    iterations = 0
    for iterations in range(1, max_iter + 1):
        Maa = Ma @ a
        residual = float(np.max(np.abs(a**q * Maa / ca - 1.0)))
        if residual < tol:
            iterations -= 1
            break
        grad = Maa - ca * a ** (-q)
        hess = Ma + np.diag(q * ca * a ** (-q - 1.0))
        try:
            step = np.linalg.solve(hess, grad)
        except np.linalg.LinAlgError:
            break
        t = 1.0
        slope = float(grad @ step)
        while t > 1e-20:
            trial = a - t * step
            if np.all(trial > 0):
                f_trial = _potential(trial, Ma, ca, q)
                if f_trial <= f - 1e-4 * t * slope or abs(f_trial - f) <= 1e-15 * abs(f):
                    break
            t *= 0.5
        a, f = a - t * step, _potential(a - t * step, Ma, ca, q)
        if not np.all(np.isfinite(a)) or a.max() > limit:
            break
    else:
        Maa = Ma @ a
        residual = float(np.max(np.abs(a**q * Maa / ca - 1.0)))
    ok = bool(np.all(np.isfinite(a)) and a.max() <= limit and residual < max(tol, 1e-6))
    alpha[active] = a
    return FixedPointResult(alpha, ok, iterations, residual)


def weights_derivative(M: np.ndarray, alpha: np.ndarray, p: np.ndarray) -> np.ndarray:
    """d alpha / d p of the solution of ``M alpha = p / alpha`` (AuxiNash Prop 4.2 [AN Eq. 5]):
    ``(M + diag(p / alpha^2))^-1 diag(1 / alpha)`` [K, K]."""
    return np.linalg.solve(M + np.diag(p / alpha**2), np.diag(1.0 / alpha))


# =====================================================================================
# Section B: solvers over the simplex
# =====================================================================================


def _polish_simplex_qp(M: np.ndarray, q: np.ndarray, w: np.ndarray, support_tol: float = 1e-9) -> np.ndarray:
    """Solve the KKT system of ``min 1/2 w'Mw + q'w`` on the support of ``w`` exactly (active set
    refinement); returns the input if the refined point is not feasible."""
    support = w > support_tol
    for _ in range(len(w)):
        S = np.flatnonzero(support)
        n = len(S)
        kkt = np.zeros((n + 1, n + 1))
        kkt[:n, :n] = M[np.ix_(S, S)]
        kkt[:n, n] = 1.0
        kkt[n, :n] = 1.0
        rhs = np.concatenate([-q[S], [1.0]])
        sol = np.linalg.lstsq(kkt, rhs, rcond=None)[0]
        if np.all(sol[:n] >= -1e-14):
            out = np.zeros_like(w)
            out[S] = np.clip(sol[:n], 0.0, None)
            return out / out.sum()
        support[S[np.argmin(sol[:n])]] = False  # drop the most negative coordinate and retry
    return w


def min_norm_simplex(M: np.ndarray, q: np.ndarray | None = None, max_iter: int = 500) -> tuple[np.ndarray, int]:
    """``argmin_{w in simplex} 1/2 w'Mw + q'w`` (q = 0: MGDA's min-norm point).

    Projected Newton-free active-set method: Frank-Wolfe pair steps find the support quickly
    (exact line search on the quadratic), then the KKT system on that support is solved exactly.
    Returns the weights and the number of iterations.
    """
    K = M.shape[0]
    q = np.zeros(K) if q is None else q
    if K == 1:
        return np.ones(1), 0
    w = np.full(K, 1.0 / K)
    for it in range(1, max_iter + 1):
        grad = M @ w + q
        i_add = int(np.argmin(grad))
        support = np.flatnonzero(w > 0)
        i_away = int(support[np.argmax(grad[support])])
        gap = grad[i_away] - grad[i_add]
        if gap < 1e-12 * (abs(grad).max() + 1e-300):
            break
        # move mass from i_away to i_add: direction e_add - e_away, exact line search
        curvature = M[i_add, i_add] + M[i_away, i_away] - 2 * M[i_add, i_away]
        step = w[i_away] if curvature <= 0 else min(w[i_away], gap / curvature)
        w[i_add] += step
        w[i_away] -= step
    else:
        it = max_iter
    polished = _polish_simplex_qp(M, q, w)
    grad = M @ polished + q
    # accept the polished point only if it satisfies the KKT conditions at least as well
    value = lambda v: 0.5 * v @ M @ v + q @ v  # noqa: E731
    if value(polished) <= value(w) + 1e-15 * (abs(value(w)) + 1):
        w = polished
    return w, it


def simplex_minimize(fun, jac, K: int, x0: np.ndarray | None = None, ftol: float = 1e-15) -> np.ndarray:
    """Minimise a smooth convex function over the simplex with SLSQP (analytic gradient)."""
    from scipy.optimize import minimize

    x0 = np.full(K, 1.0 / K) if x0 is None else x0
    result = minimize(
        fun, x0, jac=jac, method="SLSQP", bounds=[(0.0, 1.0)] * K,
        constraints=({"type": "eq", "fun": lambda w: w.sum() - 1.0, "jac": lambda w: np.ones_like(w)},),
        options={"ftol": ftol, "maxiter": 500},
    )
    w = np.clip(result.x, 0.0, None)
    return w / w.sum()


def cagrad_dual_exact(M: np.ndarray, b: np.ndarray, c: float) -> tuple[np.ndarray, float]:
    """CAGrad dual [CA Lemma A.2, Eq. 11]: ``argmin_{w in simplex} w'Mb + c ||g0|| sqrt(w'Mw)``
    with ``g0 = G'b``. Returns ``(w*, F(w*))``.

    Active-set Newton: the 20-step RL solver's iterate (0.3 ms) gives the starting support; on the
    support, damped Newton steps with the constraint sum(w) = 1 (feasibility kept by the step
    length, coordinates that reach 0 leave the support); then the KKT conditions are checked off
    the support and the most violating coordinate enters. Ends at a KKT point (the problem is
    convex, so the minimum) to machine precision; SLSQP is the fallback if it does not.
    """
    K = M.shape[0]
    a = M @ b
    r = c * float(np.sqrt(max(b @ M @ b, 0.0)))

    def fun(w: np.ndarray) -> float:
        return float(w @ a + r * np.sqrt(max(w @ M @ w, 1e-300)))

    def jac(w: np.ndarray) -> np.ndarray:
        return a + r * (M @ w) / np.sqrt(max(w @ M @ w, 1e-300))

    w = _active_set_newton(M, a, r, cagrad_dual_sgd(M, b, c, 25.0 if K <= 10 else 50.0)[0])
    if w is None:
        scale = 1.0 / (float(np.abs(a).max()) + r * float(np.sqrt(max(np.trace(M) / K, 1e-300))) + 1e-300)
        starts = [np.full(K, 1.0 / K)] + ([min_norm_simplex(M)[0]] if c >= 1 else [])
        candidates = [simplex_minimize(lambda v: scale * fun(v), lambda v: scale * jac(v), K, x0) for x0 in starts]
        w = min(candidates, key=fun)
    return w, fun(w)


def _active_set_newton(M: np.ndarray, a: np.ndarray, r: float, w0: np.ndarray, max_iter: int = 200) -> np.ndarray | None:
    """Minimise ``w'a + r sqrt(w'Mw)`` over the simplex from ``w0``; None if it fails."""
    K = len(a)
    value = lambda v: float(v @ a + r * np.sqrt(max(v @ M @ v, 1e-300)))  # noqa: E731
    support = w0 >= 0.1 / K  # the softmax iterate is never exactly 0: keep clearly active tasks
    w = np.where(support, w0, 0.0)
    w /= w.sum()
    scale = float(np.abs(a).max()) + r * float(np.sqrt(max(np.trace(M) / K, 1e-300))) + 1e-300
    for _ in range(max_iter):
        S = np.flatnonzero(support)
        Mw = M @ w
        n2 = float(w @ Mw)
        if n2 <= 1e-300:
            return None
        norm = np.sqrt(n2)
        grad = a + r * Mw / norm
        if len(S) > 1:
            hess = r * (M[np.ix_(S, S)] / norm - np.outer(Mw[S], Mw[S]) / norm**3)
            n = len(S)
            kkt = np.zeros((n + 1, n + 1))
            kkt[:n, :n] = hess
            kkt[:n, n] = kkt[n, :n] = 1.0
            rhs = np.concatenate([-grad[S], [0.0]])
            try:
                step = np.linalg.solve(kkt, rhs)[:n]
            except np.linalg.LinAlgError:
                step = np.linalg.lstsq(kkt, rhs, rcond=None)[0][:n]
        else:
            step = np.zeros(1)
        if np.abs(step).max() > 1e-15:
            shrinking = step < 0
            t_max = float(np.min(-w[S][shrinking] / step[shrinking])) if shrinking.any() else np.inf
            t = min(1.0, t_max)
            f0 = value(w)
            while t > 1e-12:
                trial = w.copy()
                trial[S] = np.clip(w[S] + t * step, 0.0, None)
                if value(trial) <= f0 + 1e-14 * abs(f0):
                    break
                t *= 0.5
            else:  # no decrease along the Newton step: let the smallest weight leave the support
                trial = w.copy()
                trial[S[np.argmin(w[S])]] = 0.0
            w = trial / trial.sum()
            support = w > 0
            if t < min(1.0, t_max) or t == t_max:
                continue  # damped or blocked step: keep stepping on the new support
        # KKT: on the support grad_i = nu; off it grad_i >= nu (within tolerance)
        grad = a + r * (M @ w) / np.sqrt(max(w @ M @ w, 1e-300))
        nu = float(grad[support].mean())
        if np.abs(grad[support] - nu).max() > 1e-11 * scale:
            continue
        off = np.flatnonzero(~support)
        if len(off) == 0 or grad[off].min() >= nu - 1e-11 * scale:
            return w
        support[off[np.argmin(grad[off])]] = True
    return None


def cagrad_dual_sgd(
    M: np.ndarray, b: np.ndarray, c: float, lr: float, steps: int = 20, momentum: float = 0.5
) -> tuple[np.ndarray, float, float]:
    """The RL solver of the CAGrad MTRL code [CA App B.3; spec §2.4.2]: ``steps`` momentum-SGD
    steps on softmax logits over a Gram matrix normalised by the mean row norm, best-of-(steps+1).

    Returns ``(w, lambda, best objective)`` where the direction is ``(b + lambda * w) @ G``
    (before rescaling); lambda uses the code's epsilons.
    """
    K = M.shape[0]
    scale = float(np.mean(np.sqrt(np.diag(M) + 1e-4)))
    Mn = M / scale**2
    Mb = Mn @ b
    c_eff = c * np.sqrt(float(b @ Mn @ b) + 1e-4)
    logits = np.zeros(K)
    velocity = np.zeros(K)
    best_obj, best_logits = np.inf, logits.copy()
    for i in range(steps + 1):
        z = np.exp(logits - logits.max())
        w = z / z.sum()
        norm = np.sqrt(w @ Mn @ w + 1e-4)
        obj = float(w @ Mb + c_eff * norm)
        if obj < best_obj:
            best_obj, best_logits = obj, logits.copy()
        if i < steps:
            dobj_dw = Mb + c_eff * (Mn @ w) / norm
            grad = w * (dobj_dw - w @ dobj_dw)  # softmax Jacobian applied to dobj/dw
            velocity = momentum * velocity + grad  # torch SGD momentum, dampening 0
            logits = logits - lr * velocity
    z = np.exp(best_logits - best_logits.max())
    w = z / z.sum()
    lam = c_eff / (np.sqrt(w @ Mn @ w + 1e-4) + 1e-4)
    return w, float(lam), best_obj
