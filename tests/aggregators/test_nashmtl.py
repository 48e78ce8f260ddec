"""Nash-MTL properties (ids N1-N14: docs/aggregators.md, "Checked properties") and a cvxpy cross-check."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mtrl.aggregators import AggContext, make
from mtrl.aggregators.solvers import positive_fixed_point
from tests.aggregators.properties import context, random_G, stationary_inputs


def nash(G, **options):
    agg = make("nashmtl", num_tasks=G.shape[0], max_norm=None, **options)
    return agg(G, context(G.shape[0]))


@pytest.mark.parametrize("K", [2, 3, 10, 50])
def test_solution_satisfies_M_alpha_equals_one_over_alpha(K):  # N1, N2, N3
    G = random_G(K, P=120)
    out = nash(G)
    M = G @ G.T
    alpha = out.weights
    assert (alpha > 0).all()
    assert torch.max(torch.abs(alpha * (M @ alpha) - 1)) < 1e-8
    utilities = G @ out.direction
    torch.testing.assert_close(utilities, 1 / alpha, rtol=1e-8, atol=0)
    assert abs(out.direction.norm() ** 2 - K) < 1e-8 * K


def test_orthogonal_gradients_give_sum_of_unit_vectors():  # N4
    Q, _ = torch.linalg.qr(torch.randn(20, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
    norms = torch.tensor([0.1, 1.0, 3.0, 7.0], dtype=torch.float64)
    G = Q.T * norms[:, None]
    out = nash(G)
    torch.testing.assert_close(out.weights, 1 / norms)
    torch.testing.assert_close(out.direction, Q.T.sum(0))


@pytest.mark.parametrize("cos", [0.9, 0.5, 0.0, -0.5, -0.9])
def test_two_tasks_closed_form_and_golden_values(cos):  # N5, N8
    g1 = torch.tensor([1.0, 0.0], dtype=torch.float64)
    g2 = torch.tensor([cos, math.sqrt(1 - cos**2)], dtype=torch.float64)
    out = nash(torch.stack([2.0 * g1, 0.5 * g2]))
    expected = 1 / math.sqrt(1 + cos)
    torch.testing.assert_close(out.weights, torch.tensor([expected / 2.0, expected / 0.5], dtype=torch.float64))
    golden = {0.9: 0.7255, 0.5: 0.8165, 0.0: 1.0, -0.5: 1.4142, -0.9: 3.1623}[cos]  # unit-norm weights
    assert abs(expected - golden) < 1e-4
    direction = out.direction / out.direction.norm()
    torch.testing.assert_close(direction, (g1 + g2) / (g1 + g2).norm())


def test_per_task_scaling_leaves_direction_unchanged():  # N6, N7
    G = random_G(4)
    scales = torch.tensor([0.1, 3.0, 7.0, 0.5], dtype=torch.float64)
    out, scaled = nash(G), nash(G * scales[:, None])
    torch.testing.assert_close(scaled.direction, out.direction, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(scaled.weights, out.weights / scales, rtol=1e-8, atol=1e-12)
    torch.testing.assert_close(nash(1e4 * G).direction, out.direction, rtol=1e-8, atol=1e-10)


def test_ccp_objective_is_non_increasing_and_iterates_feasible():  # N9
    from mtrl.aggregators.nashmtl import ccp_nash

    G = random_G(5)
    M = (G @ G.T).numpy()
    scale = np.linalg.norm(M)
    objective = []
    alpha = None
    for _ in range(6):
        alpha, _ = ccp_nash(M, alpha, steps=1)
        a = alpha * np.sqrt(scale)
        Mn = M / scale
        beta = Mn @ a
        assert np.all(a * beta >= 1 - 1e-6), "CCP iterate left the feasible set"
        objective.append(float(beta.sum() + np.sum(np.log(a) + np.log(beta))))
    assert all(b <= a + 1e-6 for a, b in zip(objective, objective[1:])), objective


@pytest.mark.parametrize("K", [3, 10])
def test_exact_solver_agrees_with_cvxpy_ccp(K):  # N10, cross-check against cvxpy
    G = random_G(K, P=60, seed=K)
    exact = nash(G).weights
    ccp = make("nashmtl", num_tasks=K, max_norm=None, solver="ccp", optim_niter=20)(G, context(K)).weights
    assert torch.max(torch.abs(ccp - exact) / exact) < 1e-3


def test_duplicate_tasks_have_a_finite_solution_and_opposite_tasks_fall_back():  # N11
    g = torch.tensor([3.0, 4.0, 0.0], dtype=torch.float64)
    out = nash(torch.stack([g, g]))
    torch.testing.assert_close(out.weights, torch.full((2,), 1 / math.sqrt(2 * 25.0), dtype=torch.float64))
    assert out.info["fallback_used"] == 0.0
    opposite = nash(torch.stack([g, -g]))
    assert opposite.info["fallback_used"] == 1.0 and torch.isfinite(opposite.direction).all()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("case", sorted(stationary_inputs()))
def test_stationary_G_stops_the_newton_solve_early_and_falls_back(case, dtype):
    """0 in the convex hull: no Nash solution exists; the solver sees it within 20 iterations
    (the probe after 4), and the fallback of a first call, equal weights on the unit gradients,
    gives ||d|| <= 1 (before clipping, here clipped to max_norm = 1 anyway)."""
    G = stationary_inputs(dtype=dtype)[case]
    out = nash(G)
    assert out.info["fallback_used"] == 1.0 and out.info["stationary"] == 1.0
    assert out.info["iterations"] <= 20
    assert torch.isfinite(out.direction).all() and float(out.direction.double().norm()) <= 1.0 + 1e-6
    norms = G.double().norm(dim=1)
    torch.testing.assert_close(out.weights, 1.0 / (len(norms) * norms), rtol=1e-6, atol=0)


def test_nearly_opposite_pair_is_solved_or_refused_in_a_few_newton_steps():
    """Nearly anti-parallel gradients (the end of the Nash-MTL toy's trajectories): Newton either
    converges or stops at the rounding floor of M alpha, never runs to the cap of 50 iterations
    (from a cold start alpha must grow ~1/angle-fold, one doubling per step: 22 steps at 1e-6)."""
    for angle in [1e-2, 1e-3, 1e-4, 1e-6, 1e-8]:
        G = torch.tensor([[1.0, 0.0], [0.1 * math.cos(math.pi - angle), 0.1 * math.sin(math.pi - angle)]], dtype=torch.float64)
        out = nash(G)
        assert out.info["iterations"] <= 30 and torch.isfinite(out.direction).all(), angle
        if out.info["fallback_used"] == 0.0:
            assert out.info["residual"] < 1e-6


def test_single_task_gives_unit_gradient():  # N12
    g = torch.tensor([[3.0, 4.0]], dtype=torch.float64)
    torch.testing.assert_close(nash(g).direction, torch.tensor([0.6, 0.8], dtype=torch.float64))


def test_nash_t_recomputes_weights_every_T_steps_and_reuses_them_between():  # N13
    K, T = 4, 3
    agg = make("nashmtl", num_tasks=K, update_every=T)
    plain = make("nashmtl", num_tasks=K)
    needed = []
    last = None
    for step in range(7):
        G = random_G(K, seed=step)
        needed.append(agg.needs_jacobian(step))
        if needed[-1]:
            out = agg(G, context(K, step=step))
            last = out.weights.clone()
            torch.testing.assert_close(out.weights, plain(G, context(K)).weights)
        else:
            torch.testing.assert_close(agg.weights_without_jacobian(context(K, step=step)), last)
    assert needed == [True, False, False, True, False, False, True]


def test_nash_t_with_G_on_a_reuse_step_uses_stale_weights_on_current_gradients():
    agg = make("nashmtl", num_tasks=3, update_every=2, max_norm=None)
    first = agg(random_G(3, seed=0), context(3, step=0))
    G1 = random_G(3, seed=1)
    second = agg(G1, context(3, step=1))
    torch.testing.assert_close(second.weights, first.weights)
    torch.testing.assert_close(second.direction, first.weights @ G1)


def test_max_norm_clips_to_unit_norm_and_scale_by_K_scales_first():
    G = random_G(4)
    out = make("nashmtl", num_tasks=4)(G, context(4))
    assert abs(float(out.direction.norm()) - 1.0) < 1e-9
    unclipped = make("nashmtl", num_tasks=4, max_norm=None, scale_by_K=True)(G, context(4))
    assert abs(float(unclipped.direction.norm()) - 4 * 2.0) < 1e-8


def test_descent_lemma_on_quadratics():  # N14
    rng = np.random.default_rng(0)
    K, P = 3, 6
    A = [np.diag(rng.uniform(0.5, 2.0, P)) for _ in range(K)]
    a = [rng.normal(size=P) for _ in range(K)]
    theta = rng.normal(size=P) * 3
    L = max(np.linalg.eigvalsh(Ai).max() for Ai in A)
    loss = lambda i, th: 0.5 * (th - a[i]) @ A[i] @ (th - a[i])  # noqa: E731
    G = np.stack([A[i] @ (theta - a[i]) for i in range(K)])
    alpha = positive_fixed_point(G @ G.T).alpha
    d = alpha @ G
    mu = min(1 / (L * K * alpha))
    for i in range(K):
        assert loss(i, theta - mu * d) <= loss(i, theta) - mu / (2 * alpha[i]) + 1e-12


def test_warm_start_is_by_global_task_id():
    agg = make("nashmtl", num_tasks=5)
    G = random_G(5)
    agg(G, context(5))
    sub = agg(G[[1, 3]], AggContext(step=1, task_ids=torch.tensor([1, 3])))
    assert sub.info["iterations"] <= 50 and sub.weights.shape == (2,)
    assert agg.alpha[1] == sub.weights[0] and agg.alpha[3] == sub.weights[1]
