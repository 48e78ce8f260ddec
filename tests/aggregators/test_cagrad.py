"""CAGrad and CAGrad-Fast properties (ids C1-C14: docs/aggregators.md, "Checked properties"), with a cvxpy cross-check of the dual."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mtrl.aggregators import AggContext, make
from mtrl.aggregators.solvers import cagrad_dual_exact, min_norm_simplex
from tests.aggregators.properties import context, random_G


def cagrad(G, c=0.5, **options):
    options.setdefault("rescale", 0)
    return make("cagrad", num_tasks=G.shape[0], c=c, **options)(G, context(G.shape[0]))


def dual_value(G, c, w):
    M = G @ G.T
    g0 = G.mean(0)
    gw = w @ G
    return float(gw @ g0 + c * g0.norm() * gw.norm()), M


def test_c_zero_is_gradient_descent_on_the_mean():  # C1
    G = random_G(5)
    torch.testing.assert_close(cagrad(G, c=0.0).direction, G.mean(0))


def test_large_c_approaches_the_mgda_direction():  # C2
    G = random_G(5)
    w = min_norm_simplex((G @ G.T).numpy()).weights
    mgda = torch.from_numpy(w) @ G
    with pytest.warns(UserWarning, match="c = 10000"):
        d = cagrad(G, c=1e4).direction
    assert float(d @ mgda / (d.norm() * mgda.norm())) > 0.9999


@pytest.mark.parametrize("K", [2, 5, 10])
@pytest.mark.parametrize("c", [0.2, 0.5, 0.9])
def test_active_constraint_strong_duality_and_descent(K, c):  # C3, C4, C5, C6, C14
    G = random_G(K, seed=K)
    out = cagrad(G, c=c)
    d, g0 = out.direction, G.mean(0)
    assert abs(float((d - g0).norm()) - c * float(g0.norm())) < 1e-8 * float(g0.norm())
    M = (G @ G.T).numpy()
    w, F = cagrad_dual_exact(M, np.full(K, 1.0 / K), c)
    assert abs(w.sum() - 1) < 1e-9 and (w >= 0).all()
    worst = float((G @ d).min())
    assert abs(worst - F) <= 1e-6 * abs(F)
    assert worst >= float((G @ g0).min()) - 1e-10
    assert float(g0 @ d) >= (1 - c) * float(g0 @ g0) - 1e-10


@pytest.mark.parametrize("K", [3, 10])
def test_exact_dual_matches_cvxpy(K):
    import cvxpy as cp

    G = random_G(K, seed=10 + K)
    M = (G @ G.T).numpy()
    b = np.full(K, 1.0 / K)
    c = 0.7
    w = cp.Variable(K)
    L = np.linalg.cholesky(M + 1e-12 * np.eye(K))
    r = c * np.sqrt(b @ M @ b)
    problem = cp.Problem(cp.Minimize(w @ (M @ b) + r * cp.norm(L.T @ w)), [w >= 0, cp.sum(w) == 1])
    problem.solve(solver="CLARABEL")
    _, F = cagrad_dual_exact(M, b, c)
    assert abs(F - problem.value) <= 1e-6 * abs(problem.value)


@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e3])
@pytest.mark.parametrize("name", ["cagrad", "cagrad_fast"])
def test_gradients_cancelling_give_zero_direction_and_otherwise_nonzero(name, scale):  # C8
    """Relative to the scale of G: the rounding of G's Gram matrix depends on the BLAS (a 2-core
    AMD EPYC gave a mean-gradient norm of 2e-8 where an Intel Xeon gave 1e-15)."""
    for seed in range(5):
        G = scale * random_G(3, seed=seed)
        G[2] = -(G[0] + G[1])
        agg = make(name, 3, c=0.5) if name == "cagrad" else make(name, 3, c=0.5, num_sampled=3)
        direction = agg(G, AggContext(step=0, task_ids=torch.arange(3))).direction
        assert float(direction.norm()) <= 1e-12 * float(G.norm(dim=1).max())
        other = scale * random_G(3, seed=seed + 100)
        assert float(agg(other, AggContext(step=0, task_ids=torch.arange(3))).direction.norm()) > 1e-3 * float(other.norm(dim=1).max())


def test_single_task_and_rescale_flags():  # C9, C10
    g = torch.tensor([[1.0, 2.0, 2.0]], dtype=torch.float64)
    c = 0.5
    torch.testing.assert_close(cagrad(g, c=c).direction, (1 + c) * g[0])
    torch.testing.assert_close(cagrad(g, c=c, rescale=2).direction, g[0])
    G = random_G(4)
    base = cagrad(G, c=c).direction
    torch.testing.assert_close(cagrad(G, c=c, rescale=1).direction, base / (1 + c**2))
    torch.testing.assert_close(cagrad(G, c=c, rescale=2).direction, base / (1 + c))


def test_not_invariant_to_per_task_scaling():  # C11
    G = random_G(3)
    scaled = G.clone()
    scaled[0] *= 10
    d, d_scaled = cagrad(G).direction, cagrad(scaled).direction
    assert float(d @ d_scaled / (d.norm() * d_scaled.norm())) < 0.999


@pytest.mark.parametrize("K, c", [(10, 0.9), (50, 0.5)])
def test_rl_sgd_solver_is_close_to_the_exact_one(K, c):  # C12
    for seed in range(5):
        G = random_G(K, P=300, seed=seed)
        exact = cagrad(G, c=c).direction
        sgd = cagrad(G, c=c, solver="sgd").direction
        assert float(exact @ sgd / (exact.norm() * sgd.norm())) > 0.99


def test_cagrad_fast_with_all_tasks_sampled_is_cagrad():  # C13 (S = [K])
    G = random_G(4)
    fast = make("cagrad_fast", num_tasks=4, num_sampled=4, c=0.5, rescale=0)(G, context(4))
    torch.testing.assert_close(fast.direction, cagrad(G, c=0.5).direction)


def test_cagrad_fast_rows_g0_and_surrogate():  # C13
    K, S = 6, 2
    agg = make("cagrad_fast", num_tasks=K, num_sampled=S, c=0.5, rescale=0)
    rows = agg.rows_needed(0, torch.Generator().manual_seed(0))
    assert rows.numel() == S and len(set(rows.tolist())) == S  # |S| + 1 rows with the rest group
    G = random_G(K)
    rest = torch.tensor([k for k in range(K) if k not in rows.tolist()])
    pseudo = torch.cat([G[rows], G[rest].mean(0, keepdim=True)])
    groups = tuple(torch.tensor([int(r)]) for r in rows) + (rest,)
    out = agg(pseudo, AggContext(step=0, task_ids=torch.arange(K), row_groups=groups))
    g0 = (S * 0 + pseudo[:S].sum(0) + (K - S) * pseudo[S]) / K
    torch.testing.assert_close(g0, G.mean(0))
    d = out.direction
    assert abs(float((d - g0).norm()) - 0.5 * float(g0.norm())) < 1e-8 * float(g0.norm())
    for trial in range(20):  # surrogate worst case >= true worst case, for any d
        v = torch.randn(G.shape[1], dtype=torch.float64, generator=torch.Generator().manual_seed(trial))
        # equal when a sampled row is the minimum, through two products whose rounding scales with |G| |v|
        assert float(min((pseudo @ v).min(), 1e300)) >= float((G @ v).min()) - 1e-12 * float((G.abs() @ v.abs()).max())
    # the same choice through a full G gives the same direction
    full = make("cagrad_fast", num_tasks=K, num_sampled=S, c=0.5, rescale=0)
    out_full = full(G, AggContext(step=0, task_ids=torch.arange(K), generator=torch.Generator().manual_seed(0)))
    torch.testing.assert_close(out_full.direction, d)
    torch.testing.assert_close(out_full.weights @ G, d)


def test_cagrad_fast_default_subset_sizes():
    assert make("cagrad_fast", num_tasks=10).num_sampled == 4
    assert make("cagrad_fast", num_tasks=50).num_sampled == 8
