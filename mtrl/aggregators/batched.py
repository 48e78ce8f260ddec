"""The K x K solvers of ``solvers.py`` batched over the members of a population.

A population update hands the host one Gram matrix per member, ``M [S, K, K]``. The solvers here
run the same algorithms as their single-matrix counterparts in ``solvers.py`` on all members at
once: every iteration is a handful of numpy operations on ``[R, K, K]`` / ``[R, K]`` arrays (R the
members still iterating), so the Python overhead of an iteration is paid once for all members
instead of once per member. Each member keeps its own control flow (its own iteration count,
convergence test, line search, active set, early stop), implemented with per-member masks.

Member independence: every operation acts on one member's slice at a time (elementwise
arithmetic, reductions along a member's own last axis, stacked ``matmul`` and LAPACK solves,
which process one matrix at a time), so a member's result is bit-identical whatever other members
are passed with it. A solve that LAPACK finds exactly singular in a batch is redone member by
member with the same numpy routine, so one member's singular system does not change another's
bits.

Against the single-matrix solvers the arithmetic is the same algorithm but not the same
operations (a batched ``matmul`` instead of BLAS ``gemv`` / ``dot``, numpy's LAPACK solve
instead of scipy's ``dgesv``, Wolfe's corrals held as masks in index order instead of index
lists in insertion order), so results agree to rounding, not bit for bit (tested at a relative
1e-12 on the coefficients; ``tests/aggregators/test_population.py``).
"""

from __future__ import annotations

import numpy as np

from mtrl.aggregators.solvers import STATIONARY_TOL, FixedPointResult, MinNormResult, is_pareto_stationary

__all__ = ["cagrad_dual_sgd_batch", "min_norm_simplex_batch", "positive_fixed_point_batch", "solve_batch"]


def matvec(M: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``M[r] @ x[r]`` for every member r: [R, K, K] x [R, K] -> [R, K]."""
    return np.matmul(M, x[:, :, None])[:, :, 0]


def quadratic(M: np.ndarray, x: np.ndarray, y: np.ndarray | None = None) -> np.ndarray:
    """``x[r] @ M[r] @ y[r]`` (y = x when None) for every member: [R]."""
    xM = np.matmul(x[:, None, :], M)[:, 0, :]
    return (xM * (x if y is None else y)).sum(1)


def solve_batch(A: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``A[r]^-1 b[r]`` for every member by LAPACK's LU (numpy's stacked solve): ``(x [R, n], ok
    [R])``, ``ok`` False (and x NaN) where ``A[r]`` is exactly singular. When one system is
    singular the batch is redone member by member with the same routine, so the others keep the
    bits they would have had alone."""
    try:
        return np.linalg.solve(A, b[:, :, None])[:, :, 0], np.ones(A.shape[0], dtype=bool)
    except np.linalg.LinAlgError:
        x = np.full(b.shape, np.nan)
        ok = np.zeros(A.shape[0], dtype=bool)
        for r in range(A.shape[0]):
            try:
                x[r] = np.linalg.solve(A[r: r + 1], b[r: r + 1, :, None])[0, :, 0]
                ok[r] = True
            except np.linalg.LinAlgError:
                pass
        return x, ok


# =====================================================================================
# Positive fixed points  M a = c * a^(-q)  (solvers.positive_fixed_point, batched)
# =====================================================================================


def _potential(a: np.ndarray, M: np.ndarray, c: np.ndarray, q: float) -> np.ndarray:
    quad = quadratic(M, 0.5 * a, a)
    if q == 1.0:
        return quad - (c * np.log(a)).sum(1)
    return quad - (c * a ** (1.0 - q)).sum(1) / (1.0 - q)


def positive_fixed_point_batch(
    M: np.ndarray,
    c: np.ndarray,
    q: float,
    alpha0: np.ndarray | None = None,
    tol: float = 1e-10,
    max_iter: int = 50,
    stationary_tol: np.ndarray | float = STATIONARY_TOL,
    probe_after: int = 4,
) -> list[FixedPointResult]:
    """``solvers.positive_fixed_point`` for ``M [S, K, K]``, ``c [S, K]``, one ``q``; returns one
    ``FixedPointResult`` per member, with the same iterations, early stops and fallbacks.

    Every row of every member must be non-zero (the single-matrix solver's zero rows, which change
    the size of the system, are left to it: callers check with ``solvers.zero_rows``).
    ``alpha0 [S, K]``: warm starts (a row that is not finite and positive means none).
    ``stationary_tol``: one value or one per member. The members still iterating are held in
    compact working arrays, compressed when one stops."""
    S, K = c.shape
    M = np.ascontiguousarray(M, dtype=np.float64)
    c = np.ascontiguousarray(c, dtype=np.float64)
    stationary_tol = np.broadcast_to(np.asarray(stationary_tol, dtype=np.float64), (S,))
    diagonal = np.ascontiguousarray(M.diagonal(axis1=1, axis2=2))
    start = (c / diagonal) ** (1.0 / (1.0 + q))
    a = start.copy()
    if alpha0 is not None:
        warm = np.asarray(alpha0, dtype=np.float64)
        usable = np.isfinite(warm).all(1) & (warm > 0).all(1)
        a[usable] = warm[usable]
    limit = 1e8 * start.max(1)
    growth_probe = 1e4 * np.maximum(start.max(1), a.max(1))
    # outputs, by member
    alpha = a.copy()
    iterations = np.full(S, max_iter, dtype=np.int64)
    residual = np.zeros(S)
    stationary = np.zeros(S, dtype=bool)
    # working arrays of the members still iterating (row r is member ids[r])
    ids, Mr, magnitude, cr, ar = np.arange(S), M, np.abs(M), c, a
    fr, limit_r, growth_r, probed = _potential(a, M, c, q), limit, growth_probe, np.zeros(S, dtype=bool)

    def stop(rows: np.ndarray, count: int, res: np.ndarray) -> None:
        """Members at ``rows`` leave with their current iterate, ``count`` iterations."""
        nonlocal ids, Mr, magnitude, cr, ar, fr, limit_r, growth_r, probed
        members = ids[rows]
        alpha[members], iterations[members], residual[members] = ar[rows], count, res[rows]
        keep = np.ones(len(ids), dtype=bool)
        keep[rows] = False
        ids, Mr, magnitude, cr, ar = ids[keep], Mr[keep], magnitude[keep], cr[keep], ar[keep]
        fr, limit_r, growth_r, probed = fr[keep], limit_r[keep], growth_r[keep], probed[keep]

    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for it in range(1, max_iter + 1):
            if ids.size == 0:
                break
            Maa = matvec(Mr, ar)
            scaled = ar**q / cr
            res = np.abs(scaled * Maa - 1.0).max(1)
            floor = 1e-14 * (scaled * matvec(magnitude, ar)).max(1)
            done = res < np.maximum(tol, floor)  # converged, at the residual's rounding floor at worst
            if it > probe_after or (ar.max(1) > growth_r).any():
                probe = ~done & ~probed & ((it > probe_after) | (ar.max(1) > growth_r))
                found = np.zeros(len(ids), dtype=bool)
                for r in np.flatnonzero(probe):  # rare: at most once per member, an exact K x K solve
                    probed[r] = True
                    found[r] = is_pareto_stationary(Mr[r], float(stationary_tol[ids[r]]))
                if found.any():  # 0 in the convex hull: no solution, stop
                    stationary[ids[found]] = True
                    stop(np.flatnonzero(found), it, res)
                    Maa, res, done = Maa[~found], res[~found], done[~found]
            if done.any():
                rows = np.flatnonzero(done)
                stop(rows, it - 1, res)
                Maa, res = Maa[~done], res[~done]
                if ids.size == 0:
                    break
            grad = Maa - cr * ar ** (-q)
            hessian = Mr.copy()
            hessian.reshape(len(ids), K * K)[:, :: K + 1] += q * cr * ar ** (-q - 1.0)
            step, solved = solve_batch(hessian, grad)
            solved &= np.isfinite(step).all(1)
            if not solved.all():  # a singular or non-finite Newton step: that member stops
                stop(np.flatnonzero(~solved), it, res)
                res, grad, step = res[solved], grad[solved], step[solved]
                if ids.size == 0:
                    break
            slope = (grad * step).sum(1)
            growing = step > 0.0  # fraction to the boundary, as in the single solver
            bound = np.where(growing, ar / np.where(growing, step, 1.0), np.inf).min(1)
            t = np.where(growing.any(1), np.minimum(1.0, 0.995 * bound), 1.0)
            trial = ar - t[:, None] * step
            f_trial = _potential(trial, Mr, cr, q)
            accept = f_trial <= fr - 1e-4 * t * slope
            accept |= np.abs(trial**q / cr * matvec(Mr, trial) - 1.0).max(1) < 0.5 * res  # halves the residual
            for _ in range(39):  # Armijo backtracking of the members that did not accept t
                if accept.all():
                    break
                rows = np.flatnonzero(~accept)
                t[rows] *= 0.5
                trial[rows] = ar[rows] - t[rows, None] * step[rows]
                f_trial[rows] = _potential(trial[rows], Mr[rows], cr[rows], q)
                accept[rows] = f_trial[rows] <= fr[rows] - 1e-4 * t[rows] * slope[rows]
            if not accept.all():  # no decrease along a descent direction (the rounding floor): stop
                stop(np.flatnonzero(~accept), it, res)
                res, trial, f_trial = res[accept], trial[accept], f_trial[accept]
            ar, fr = trial, f_trial
            bad = ~np.isfinite(ar).all(1) | (ar.max(1) > limit_r)
            if bad.any():  # diverging: stop, with the residual of the previous iterate
                stop(np.flatnonzero(bad), it, res)
        if ids.size:  # max_iter reached: the residual of the last iterate
            alpha[ids] = ar
            residual[ids] = np.abs(ar**q * matvec(Mr, ar) / cr - 1.0).max(1)
    finite = np.isfinite(alpha).all(1)
    ok = ~stationary & finite & (alpha.max(1) <= limit) & (residual < max(tol, 1e-6))
    return [
        FixedPointResult(alpha[s].copy(), bool(ok[s]), int(iterations[s]), float(residual[s]), bool(stationary[s]))
        for s in range(S)
    ]


# =====================================================================================
# MGDA's min-norm point (solvers.min_norm_simplex, batched)
# =====================================================================================

_MAJOR, _MINOR, _DONE = 1, 2, 3


def _affine_min_norm_batch(bordered: np.ndarray, support: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``solvers._affine_min_norm`` for every member, the corral given as a mask [R, K]: rows and
    columns outside it are replaced by those of the identity, which decouples them (their weight
    is 0) and leaves the bordered system of the corral. Returns ``(u [R, K], ok [R])``, ok False
    where the system is (numerically) singular."""
    R, n = bordered.shape[0], bordered.shape[1]
    inside = np.concatenate([np.ones((R, 1), dtype=bool), support], axis=1)  # [R, K + 1]
    A = bordered * (inside[:, :, None] & inside[:, None, :])
    A.reshape(R, n * n)[:, :: n + 1] += ~inside
    rhs = np.zeros((R, n))
    rhs[:, 0] = 1.0
    z, ok = solve_batch(A, rhs)
    ok &= np.abs(z).max(1) <= 1e8  # (nearly) affinely dependent rows
    return z[:, 1:], ok


def min_norm_simplex_batch(M: np.ndarray, tol: np.ndarray | float = 1e-12, max_iter: int | None = None) -> list[MinNormResult]:
    """``solvers.min_norm_simplex`` (Wolfe's nearest-point algorithm) for ``M [S, K, K]``.

    First the start of every member (the affine min-norm point of all rows, dropping the rows of
    negative weight until it lies in the hull) in one loop of stacked solves; then, for the members
    whose start violates the KKT conditions, Wolfe's major and minor cycles in lock-step: every
    round each of them takes one step of its own, as array operations with per-member masks, and
    the solves of a round in one stacked call. ``tol``: one value or one per member."""
    S, K = M.shape[0], M.shape[1]
    M = np.ascontiguousarray(M, dtype=np.float64)
    tol = np.broadcast_to(np.asarray(tol, dtype=np.float64), (S,))
    diagonal = np.ascontiguousarray(M.diagonal(axis1=1, axis2=2))
    scale = diagonal.max(1)
    if K == 1:
        return [MinNormResult(np.full(K, 1.0 / K), 0, 0.0, not scale[s] > 0.0) for s in range(S)]
    eps = tol * scale
    max_iter = 5 * K + 20 if max_iter is None else max_iter
    bordered = np.ones((S, K + 1, K + 1))
    bordered[:, 0, 0] = 0.0
    bordered[:, 1:, 1:] = M
    zero = ~(scale > 0.0)  # all rows zero: uniform weights, d = 0
    support = np.ones((S, K), dtype=bool)
    w = np.zeros((S, K))
    iterations = np.zeros(S, dtype=np.int64)
    with np.errstate(divide="ignore", invalid="ignore"):
        starting = np.flatnonzero(~zero)
        while starting.size:  # the start: the affine min-norm point of all rows, pulled into the hull
            u, ok = _affine_min_norm_batch(bordered[starting], support[starting])
            iterations[starting] += 1
            inside = support[starting]
            positive = ok & (np.where(inside, u, np.inf).min(1) > 0.0)
            w[starting[positive]] = np.where(inside[positive], u[positive], 0.0)
            for s in starting[~ok]:  # affinely dependent rows: Wolfe's start, the row of least norm
                j = int(diagonal[s].argmin())
                support[s] = False
                support[s, j] = True
                w[s, j] = 1.0
            drop = ok & ~positive  # keep the rows with positive weight and solve again
            starting = starting[drop]
            support[starting] &= u[drop] > 0.0
        Mw = matvec(M, w)
        norm2 = (w * Mw).sum(1)
        phase = np.where(zero, _DONE, _MAJOR)
        added = np.zeros(S, dtype=np.int64)  # the row the last major cycle added
        while True:
            major = np.flatnonzero(phase == _MAJOR)
            if major.size:  # a major cycle: add the row violating the KKT conditions most, if any
                j = Mw[major].argmin(1)
                go = (iterations[major] < max_iter) & (norm2[major] > eps[major])
                go &= ~((Mw[major, j] >= norm2[major] - eps[major]) | (w[major, j] > 0.0))  # KKT holds
                phase[major[~go]] = _DONE
                entering = major[go]
                support[entering, j[go]] = True
                added[entering] = j[go]
                phase[entering] = _MINOR
            minor = np.flatnonzero(phase == _MINOR)
            if minor.size == 0:
                break
            u, ok = _affine_min_norm_batch(bordered[minor], support[minor])  # a minor cycle
            iterations[minor] += 1
            inside = support[minor]
            positive = ok & (np.where(inside, u, np.inf).min(1) > 0.0)
            w[minor[positive]] = np.where(inside[positive], u[positive], 0.0)
            settle = [minor[positive]]
            singular = minor[~ok]  # the corral became affinely dependent: drop the added row
            support[singular, added[singular]] = False
            settle.append(singular)
            move = ok & ~positive  # the affine point left the hull: move back, a row leaves
            if move.any():
                rows, current, target = minor[move], w[minor[move]], u[move]
                leaving = inside[move] & (target <= 0.0)
                ratios = np.where(leaving, current / (current - target), np.inf)
                theta = ratios.min(1)
                moved = np.where(inside[move], current + theta[:, None] * (target - current), 0.0)
                moved[np.arange(len(rows)), ratios.argmin(1)] = 0.0
                keep = inside[move] & (moved > 0.0)
                support[rows] = keep
                kept = np.where(keep, moved, 0.0)
                w[rows] = kept / kept.sum(1, keepdims=True)
                settle.append(rows[iterations[rows] >= max_iter])
            settled = np.concatenate(settle)
            if settled.size:  # the end of a major cycle: the new point, or no progress (rounding)
                Mw[settled] = matvec(M[settled], w[settled])
                value = (w[settled] * Mw[settled]).sum(1)
                phase[settled] = np.where(value < norm2[settled], _MAJOR, _DONE)
                norm2[settled] = value
    gap = (norm2 - Mw.min(1)) / np.where(zero, 1.0, scale)
    return [
        MinNormResult(np.full(K, 1.0 / K), 0, 0.0, True) if zero[s]
        else MinNormResult(w[s].copy(), int(iterations[s]), max(float(gap[s]), 0.0), bool(norm2[s] <= eps[s]))
        for s in range(S)
    ]


# =====================================================================================
# CAGrad's RL dual solver (solvers.cagrad_dual_sgd, batched)
# =====================================================================================


def cagrad_dual_sgd_batch(
    M: np.ndarray, b: np.ndarray, c: np.ndarray, lr: np.ndarray, steps: int = 20, momentum: float = 0.5
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``solvers.cagrad_dual_sgd`` for ``M [S, K, K]``, ``b [S, K]``, ``c [S]``, ``lr [S]``:
    returns ``(w [S, K], lambda [S], best objective [S])``. Fixed step count, no branches: every
    member takes the same ``steps`` momentum-SGD steps on its own softmax logits."""
    S, K = b.shape
    diagonal = np.ascontiguousarray(M.diagonal(axis1=1, axis2=2))
    scale = np.sqrt(diagonal + 1e-4).mean(1)
    Mn = M / (scale**2)[:, None, None]
    Mb = matvec(Mn, b)
    c_eff = c * np.sqrt(quadratic(Mn, b) + 1e-4)
    logits = np.zeros((S, K))
    velocity = np.zeros((S, K))
    best_obj = np.full(S, np.inf)
    best_logits = logits.copy()
    for i in range(steps + 1):
        z = np.exp(logits - logits.max(1, keepdims=True))
        w = z / z.sum(1, keepdims=True)
        Mnw = matvec(Mn, w)
        norm = np.sqrt((w * Mnw).sum(1) + 1e-4)
        obj = (w * Mb).sum(1) + c_eff * norm
        better = obj < best_obj
        best_obj = np.where(better, obj, best_obj)
        best_logits[better] = logits[better]
        if i < steps:
            dobj_dw = Mb + c_eff[:, None] * Mnw / norm[:, None]
            grad = w * (dobj_dw - (w * dobj_dw).sum(1, keepdims=True))
            velocity = momentum * velocity + grad
            logits = logits - lr[:, None] * velocity
    z = np.exp(best_logits - best_logits.max(1, keepdims=True))
    w = z / z.sum(1, keepdims=True)
    lam = c_eff / (np.sqrt(quadratic(Mn, w) + 1e-4) + 1e-4)
    return w, lam, best_obj
