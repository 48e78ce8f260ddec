"""The K x K solvers shared by the aggregators, all in float64 on the CPU (numpy).

Every method that solves a small problem over the Gram matrix ``M = G G^T`` calls into this file;
no solver is copied between methods (docs/design.md §3). The Gram matrix itself is one matmul in G's own
dtype on G's device, then cast to float64 and moved to the CPU (docs/design.md §3: on a 2-core
CPU a float32 Gram took 4 to 6x less time than casting G to float64 first, and changed the
Nash weights by at most 5e-6 relative).

Section A: positive fixed points ``M a = c * a^(-q)`` (Nash-MTL q=1, AuxiNash and PI-Nash-MTL
q=1 with c=p, PIVRG q=1/2 with c=sqrt(omega), FairGrad q=1/alpha) by damped Newton on a strictly
convex potential (derived in this project [D]; docs/aggregators.md, "Solvers").
Section B: problems over the simplex (MGDA's min-norm point, the CAGrad dual, the 20-step RL
CAGrad solver of the MTRL code).

Small dense solves go straight to LAPACK (``scipy.linalg.lapack.dgesv``): ``np.linalg.solve``
costs about 10 us of Python and gufunc overhead per call on a K x K system, several times the
solve itself at K <= 50, and these solvers call it once per iteration.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.linalg import lapack
from torch import Tensor

from mtrl.aggregators.base import raise_if_non_finite

__all__ = [
    "FixedPointResult",
    "MinNormResult",
    "cagrad_dual_exact",
    "cagrad_dual_sgd",
    "gram",
    "gram_tolerance",
    "is_pareto_stationary",
    "min_norm_simplex",
    "solve_small",
    "positive_fixed_point",
    "simplex_minimize",
    "weights_derivative",
]


#: profiler label of the deliberate device-to-host transfers of a training step (the K x K Gram
#: matrix); ``mtrl bench update --profile`` counts them as syncs (on a CPU they are invisible)
HOST_TRANSFER = "mtrl::to_host"


def gram(G: Tensor) -> np.ndarray:
    """``M = G G^T`` [K, K]: one matmul in G's dtype on its device, returned float64 numpy (CPU).

    Raises ``ValueError`` if G holds NaN or Inf (seen on the diagonal, the squared row norms).

    A G that carries its Gram matrix as ``G.known_gram`` (float64 numpy [K, K]) returns it instead:
    a population computes all members' Gram matrices in one matmul and one transfer and hands each
    member's aggregator a zero-column G of the same dtype (``agents/population.py``)."""
    known = getattr(G, "known_gram", None)
    if known is not None:
        if not np.isfinite(known.diagonal()).all():
            raise ValueError("G has non-finite entries (NaN or Inf): its Gram matrix has a non-finite diagonal")
        return known
    M = G @ G.T
    with torch.profiler.record_function(HOST_TRANSFER):  # the one sync of a G-based step (docs/design.md §8)
        M = M.to(device="cpu", dtype=torch.float64).numpy()
    if not np.isfinite(M.diagonal()).all():
        raise_if_non_finite(G)
    return M


def gram_tolerance(dtype: torch.dtype) -> float:
    """Relative size (to ``max_i M_ii``) below which a quadratic form ``w' M w`` of a Gram matrix
    computed in ``dtype`` is rounding noise: ``100 eps`` of the dtype (1.2e-5 for float32,
    2.2e-14 for float64), at most 1e-2. Measured at P = 343K: a float32 Gram of rows with 0
    exactly in their convex hull had ``w' M w = -7e-7 max_i M_ii`` at the vanishing combination
    and its smallest eigenvalue at ``-1.8e-6 max_i M_ii`` (float64: 8e-16 and 2e-15)."""
    return min(1e-2, 100.0 * torch.finfo(dtype).eps)


def solve_small(A: np.ndarray, b: np.ndarray) -> np.ndarray | None:
    """``A^-1 b`` for a small dense square A by LAPACK's LU (``dgesv``), or None when A is
    exactly singular (callers check the size of the result)."""
    _, _, x, info = lapack.dgesv(A, b)
    return x if info == 0 else None


def zero_rows(M: np.ndarray, rel_tol: float = 1e-12) -> np.ndarray:
    """Boolean mask of rows whose norm is at most ``rel_tol`` times the largest row norm."""
    norms = np.sqrt(np.clip(np.diag(M), 0.0, None))
    return norms <= rel_tol * max(float(norms.max(initial=0.0)), 1e-300)


# =====================================================================================
# Section A: positive fixed-point solvers  M a = c * a^(-q)
# =====================================================================================


#: Pareto-stationarity threshold of the fixed-point solvers: 0 counts as in the convex hull of the
#: rows when the hull of the UNIT rows g_i / ||g_i|| has a point of squared norm <= this (scale-free,
#: as Nash-MTL is; 1e-5 is the resolution of a float32 Gram matrix, see ``gram_tolerance``).
STATIONARY_TOL = 1e-5


@dataclass(frozen=True)
class FixedPointResult:
    """Solution of ``M a = c a^(-q)`` on the non-zero rows (zero rows get ``a_i = 0``).

    Attributes:
        alpha: [K] float64, > 0 on active rows.
        ok: converged to ``residual < tol`` (False: 0 in conv{g_i}, or no convergence).
        iterations: Newton iterations used.
        residual: ``max_i |a_i^q (M a)_i / c_i - 1|`` over active rows (scale-free).
        stationary: the solver stopped because 0 is (within ``STATIONARY_TOL``) in the convex
            hull of the rows, where no positive solution exists (then ``ok`` is False).
    """

    alpha: np.ndarray
    ok: bool
    iterations: int
    residual: float
    stationary: bool = False


def _potential(a: np.ndarray, M: np.ndarray, c: np.ndarray, q: float) -> float:
    quad = 0.5 * a @ M @ a
    if q == 1.0:
        return quad - float(c @ np.log(a))
    return quad - float(c @ a ** (1.0 - q)) / (1.0 - q)


def is_pareto_stationary(M: np.ndarray, tol: float = STATIONARY_TOL) -> bool:
    """Whether 0 is in the convex hull of the non-zero rows up to ``tol``, scale-free: the
    min-norm point of the unit rows has squared norm <= tol (one exact ``min_norm_simplex``)."""
    norms = np.sqrt(np.diag(M))
    return min_norm_simplex(M / np.outer(norms, norms), tol=tol).stationary


def positive_fixed_point(
    M: np.ndarray,
    c: np.ndarray | None = None,
    q: float = 1.0,
    alpha0: np.ndarray | None = None,
    tol: float = 1e-10,
    max_iter: int = 50,
    stationary_tol: float = STATIONARY_TOL,
    probe_after: int = 4,
) -> FixedPointResult:
    """Solve ``M a = c * a^(-q)``, ``a > 0`` by Newton on the strictly convex potential

        f(a) = 1/2 a^T M a - sum_i c_i a_i^(1-q) / (1-q)      (- sum_i c_i log a_i for q = 1),

    whose gradient is ``M a - c a^(-q)`` and Hessian ``M + diag(q c a^(-q-1))`` (positive
    definite on a > 0). Backtracking keeps ``a > 0`` and enforces Armijo decrease. A unique
    solution exists iff 0 is not in the convex hull of the active rows; otherwise f is unbounded
    below and ``a`` grows without bound (it doubles per Newton step along the vanishing
    combination). Newton converges in a few steps from a warm start, so when it has not after
    ``probe_after`` iterations, or ``a`` has grown 1e4-fold, the solver asks once whether 0 is in
    the hull (``is_pareto_stationary``, an exact K x K min-norm solve, microseconds) and if so stops
    with ``ok=False, stationary=True`` instead of running on to ``max_iter``. Rows with
    (numerically) zero gradient have no solution of their own equation and are excluded with
    ``a_i = 0``.
    """
    K = M.shape[0]
    c = np.ones(K) if c is None else np.asarray(c, dtype=np.float64)
    active = ~zero_rows(M)
    alpha = np.zeros(K)
    if not active.any():
        return FixedPointResult(alpha, True, 0, 0.0)
    everything = bool(active.all())
    Ma, ca = (M, c) if everything else (M[np.ix_(active, active)], c[active])
    diagonal = np.diag(Ma)
    # Default start: the exact solution for orthogonal rows, a_i = (c_i / M_ii)^(1/(1+q)).
    start = (ca / diagonal) ** (1.0 / (1.0 + q))
    a = start
    if alpha0 is not None:
        warm = np.asarray(alpha0, dtype=np.float64)
        warm = warm if everything else warm[active]
        if np.all(np.isfinite(warm)) and np.all(warm > 0):
            a = warm
    limit = 1e8 * float(start.max())
    growth_probe = 1e4 * float(max(start.max(), a.max()))
    probed = stationary = False
    f = _potential(a, Ma, ca, q)
    magnitude = np.abs(Ma)
    iterations = 0
    for iterations in range(1, max_iter + 1):
        Maa = Ma @ a
        scaled = a**q / ca
        residual = float(np.max(np.abs(scaled * Maa - 1.0)))
        # Stop at the rounding floor of the residual too: with nearly opposite gradients M a is a
        # sum of cancelling terms, |M| a >> M a, and Newton cannot get below ~eps |M| a a^q / c
        # (then ``ok`` is decided by the 1e-6 acceptance below, without running to max_iter).
        if residual < max(tol, 1e-14 * float(np.max(scaled * (magnitude @ a)))):
            iterations -= 1
            break
        if not probed and (iterations > probe_after or a.max() > growth_probe):
            probed = True
            if is_pareto_stationary(Ma, stationary_tol):
                stationary = True
                break
        grad = Maa - ca * a ** (-q)
        step = solve_small(Ma + np.diag(q * ca * a ** (-q - 1.0)), grad)
        if step is None or not np.isfinite(step).all():
            break
        slope = float(grad @ step)
        growing = step > 0.0  # a - t step > 0 needs t < a_i / step_i there (fraction to the boundary)
        t = min(1.0, 0.995 * float(np.min(a[growing] / step[growing]))) if growing.any() else 1.0
        for halving in range(40):  # Armijo backtracking
            trial = a - t * step
            f_trial = _potential(trial, Ma, ca, q)
            if f_trial <= f - 1e-4 * t * slope:
                break
            # Near the solution f changes below its own rounding (its terms are large and cancel
            # when alpha is), so Armijo cannot see progress; a first step that halves the
            # residual is progress all the same.
            if halving == 0 and np.max(np.abs(trial**q / ca * (Ma @ trial) - 1.0)) < 0.5 * residual:
                break
            t *= 0.5
        else:
            break  # no decrease along a descent direction: the rounding floor, stop
        a, f = trial, f_trial
        if not np.all(np.isfinite(a)) or a.max() > limit:
            break
    else:
        Maa = Ma @ a
        residual = float(np.max(np.abs(a**q * Maa / ca - 1.0)))
    ok = bool(not stationary and np.all(np.isfinite(a)) and a.max() <= limit and residual < max(tol, 1e-6))
    alpha[active] = a
    return FixedPointResult(alpha, ok, iterations, residual, stationary)


def weights_derivative(M: np.ndarray, alpha: np.ndarray, p: np.ndarray) -> np.ndarray:
    """d alpha / d p of the solution of ``M alpha = p / alpha`` (AuxiNash Prop 4.2 [AN Eq. 5]):
    ``(M + diag(p / alpha^2))^-1 diag(1 / alpha)`` [K, K]."""
    return np.linalg.solve(M + np.diag(p / alpha**2), np.diag(1.0 / alpha))


# =====================================================================================
# Section B: solvers over the simplex
# =====================================================================================


@dataclass(frozen=True)
class MinNormResult:
    """The min-norm point of the convex hull of the rows of G, from their Gram matrix M.

    Attributes:
        weights: [K] float64 on the simplex; ``d = G^T weights``.
        iterations: affine solves (K' x K' systems, K' <= K + 1) used: Wolfe's major plus minor cycles.
        gap: the KKT residual ``(w'Mw - min_j (Mw)_j) / max_i M_ii`` (the Frank-Wolfe gap; it
            bounds the suboptimality of ``1/2 ||d||^2`` from above). At most ``tol`` when solved.
        stationary: ``||d||^2 = w'Mw <= tol * max_i M_ii``: 0 is, up to ``tol``, in the convex hull
            (the point is Pareto-stationary) and d is the solver's (tiny) approximation of 0.
    """

    weights: np.ndarray
    iterations: int
    gap: float
    stationary: bool


def _affine_min_norm(bordered: np.ndarray, S: np.ndarray) -> np.ndarray | None:
    """Weights u (summing to 1) of the point of least norm in the AFFINE hull of the rows S.

    Stationarity of ``1/2 u' M_S u`` on ``sum u = 1`` is the bordered system
    ``[[0, 1'], [1, M_S]] [-lambda; u] = [1; 0]`` (lambda = the squared norm); ``bordered`` is
    that matrix for all rows, [K + 1, K + 1]. The system is non-singular iff the rows S are
    affinely independent: None when it is (numerically) singular. LU with partial pivoting is
    backward stable, so a solution of bounded size solves the system of a Gram matrix within
    rounding of M.
    """
    index = np.concatenate(([0], S + 1))
    rhs = np.zeros(len(index))
    rhs[0] = 1.0
    z = solve_small(bordered.take(index, 0).take(index, 1), rhs)
    if z is None or not abs(z).max() <= 1e8:  # (nearly) affinely dependent rows
        return None
    return z[1:]


def min_norm_simplex(M: np.ndarray, tol: float = 1e-12, max_iter: int | None = None) -> MinNormResult:
    """``argmin_{w in simplex} w'Mw``: MGDA's min-norm point of the convex hull of the rows of G.

    Wolfe's nearest-point algorithm (Wolfe 1976) on the Gram matrix, an exact active-set method:
    a "corral" S of affinely independent rows whose affine min-norm point (one bordered K' x K'
    solve, ``_affine_min_norm``) lies inside their convex hull. A major cycle adds the row j that
    violates the KKT conditions most (``g_j . d < ||d||^2``); minor cycles move back into the hull
    and drop the rows whose weight reaches 0 when the new affine point leaves it. ``||d||``
    decreases strictly, so no corral repeats and the method ends after finitely many solves, at a
    point that satisfies the KKT conditions ``g_j . d >= ||d||^2 - tol max_i ||g_i||^2`` for all
    j (with equality on the support).

    Start: the affine min-norm point of ALL rows, keeping the rows with positive weight until the
    point is inside the hull (one solve when every task is in the support, as for similar
    gradients); when the rows are affinely dependent (K > P + 1, duplicate or rank-deficient rows),
    Wolfe's own start, the row of least norm.

    Stops early, ``stationary=True``, once ``||d||^2 <= tol max_i ||g_i||^2``: 0 is then in the hull
    up to tol (anti-parallel pairs, a row that is minus a convex combination of others) and the
    min-norm point there is 0; d is returned as computed (its squared norm is at most tol times
    the largest squared row norm, plus the rounding of ``w @ G``). ``tol`` should cover the rounding
    of M (``gram_tolerance``). All zero rows (or M = 0) give uniform weights and d = 0.
    """
    K = M.shape[0]
    scale = float(M.diagonal().max()) if K else 0.0
    if K == 1 or not scale > 0.0:
        return MinNormResult(np.full(K, 1.0 / K), 0, 0.0, not scale > 0.0)
    eps = tol * scale
    max_iter = 5 * K + 20 if max_iter is None else max_iter
    bordered = np.ones((K + 1, K + 1))
    bordered[0, 0] = 0.0
    bordered[1:, 1:] = M
    iterations = 0
    w = np.zeros(K)
    S = np.arange(K)
    while True:  # start from the affine min-norm point of all rows (see the docstring)
        u = _affine_min_norm(bordered, S)
        iterations += 1
        if u is None:
            j = int(M.diagonal().argmin())  # affinely dependent rows: Wolfe's start instead
            S, w[j] = np.array([j]), 1.0
            break
        if u.min() > 0.0:
            w[S] = u
            break
        S = S[u > 0.0]  # at least one weight is positive: they sum to 1
    Mw = M @ w
    norm2 = float(w @ Mw)
    while iterations < max_iter and norm2 > eps:
        j = int(Mw.argmin())
        if Mw[j] >= norm2 - eps or w[j] > 0.0:  # KKT holds (j in the support: numerical limit)
            break
        S = np.append(S, j)
        while iterations < max_iter:  # minor cycles: the affine point of S, pulled into the hull
            u = _affine_min_norm(bordered, S)
            iterations += 1
            if u is None:
                S = S[:-1] if S[-1] == j else S
                break
            if u.min() > 0.0:
                w[:] = 0.0
                w[S] = u
                break
            current = w[S]
            leaving = u <= 0.0
            ratios = current[leaving] / (current[leaving] - u[leaving])
            theta = float(ratios.min())
            moved = current + theta * (u - current)
            moved[np.flatnonzero(leaving)[np.argmin(ratios)]] = 0.0
            keep = moved > 0.0
            S, w[:] = S[keep], 0.0
            w[S] = moved[keep] / moved[keep].sum()
        Mw = M @ w
        norm2_new = float(w @ Mw)
        if not norm2_new < norm2:  # no progress (rounding): the current point is the answer
            norm2 = norm2_new
            break
        norm2 = norm2_new
    gap = (norm2 - float(Mw.min())) / scale
    return MinNormResult(w, iterations, max(gap, 0.0), norm2 <= eps)


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
        starts = [np.full(K, 1.0 / K)] + ([min_norm_simplex(M).weights] if c >= 1 else [])
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
    """The RL solver of the CAGrad MTRL code [CA App B.3]: ``steps`` momentum-SGD
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
