"""MGDA, PCGrad, IMTL-G, PIVRG, FairGrad and the loss weightings (property ids: docs/aggregators.md, "Checked properties")."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mtrl.aggregators import AggContext, make
from mtrl.aggregators.pcgrad import pcgrad_coefficients
from mtrl.aggregators.pivrg import performance_weights, success_to_performance_drop
from tests.aggregators.properties import context, random_G, stationary_inputs


def call(name, G, ctx=None, **options):
    return make(name, num_tasks=G.shape[0], **options)(G, ctx or context(G.shape[0]))


# ---- MGDA (M1, M2) --------------------------------------------------------------------------------
@pytest.mark.parametrize("K", [2, 5, 10, 50])
def test_mgda_min_norm_kkt(K):
    G = random_G(K, P=80, seed=K)
    out = call("mgda", G)
    w, d = out.weights, out.direction
    assert abs(float(w.sum()) - 1) < 1e-12 and (w >= 0).all()
    utilities = G @ d
    assert (utilities >= d @ d - 1e-9).all()
    active = w > 1e-9
    torch.testing.assert_close(utilities[active], (d @ d).expand(int(active.sum())), rtol=1e-8, atol=1e-9)


@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e3])
def test_mgda_is_zero_when_zero_is_in_the_convex_hull(scale):
    """Zero up to the solver's stop, relative to G's scale (the module's bound, sqrt(tol) max ||g_i||):
    an absolute bound held only where G's Gram matrix rounded as on the machine that set it."""
    from mtrl.aggregators.solvers import gram_tolerance

    for seed in range(3):
        G = scale * random_G(3, seed=seed)
        G[2] = -(0.3 * G[0] + 0.7 * G[1])
        out = call("mgda", G)
        assert out.info["stationary"] == 1.0
        assert float(out.direction.norm()) <= math.sqrt(gram_tolerance(G.dtype)) * float(G.norm(dim=1).max())


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("case", sorted(stationary_inputs()))
def test_mgda_at_a_stationary_point_stops_within_20_iterations_with_a_tiny_direction(case, dtype):
    """M2 at exactly stationary G: the KKT stop ends the solve at once and the direction is the
    documented size, ||d|| <= sqrt(tol) max ||g_i|| with tol = gram_tolerance(dtype)."""
    from mtrl.aggregators.solvers import gram_tolerance

    G = stationary_inputs(dtype=dtype)[case]
    out = call("mgda", G)
    assert out.info["iterations"] <= 20 and out.info["stationary"] == 1.0
    assert torch.isfinite(out.direction).all()
    bound = math.sqrt(gram_tolerance(dtype)) * float(G.double().norm(dim=1).max())
    assert float(out.direction.double().norm()) <= bound
    assert abs(float(out.weights.sum()) - 1) < 1e-12 and (out.weights >= 0).all()


@pytest.mark.parametrize("K", [2, 3, 10, 50])
def test_mgda_solver_matches_cvxpy_on_random_and_degenerate_gram_matrices(K):
    """Wolfe's active-set solve against a conic solver: same minimum, KKT gap at tolerance."""
    import cvxpy as cp

    from mtrl.aggregators.solvers import min_norm_simplex

    rng = np.random.default_rng(K)
    for P, duplicate in [(200, False), (3, False), (200, True)]:
        G = rng.standard_normal((K, P)) * rng.uniform(0.1, 3.0, (K, 1))
        if duplicate and K > 2:
            G[2] = G[0]
        M = G @ G.T
        result = min_norm_simplex(M)
        w = cp.Variable(K, nonneg=True)
        cp.Problem(cp.Minimize(cp.sum_squares(G.T @ w)), [cp.sum(w) == 1]).solve(solver=cp.CLARABEL)
        scale = float(M.diagonal().max())
        assert (result.weights @ M @ result.weights - w.value @ M @ w.value) / scale < 1e-8
        assert result.gap <= 1e-11 and result.iterations <= 5 * K + 20


# ---- PCGrad (P1-P5) ----------------------------------------------------------------------------
def test_pcgrad_without_conflict_is_the_mean():
    G = random_G(4, common=5.0).abs()
    torch.testing.assert_close(call("pcgrad", G).direction, G.mean(0))
    torch.testing.assert_close(call("pcgrad", G, reduction="sum").direction, G.sum(0))


def test_pcgrad_two_tasks_removes_the_conflict_deterministically():
    g1 = torch.tensor([1.0, 0.2, 0.0], dtype=torch.float64)
    g2 = torch.tensor([-0.8, 1.0, 0.3], dtype=torch.float64)
    G = torch.stack([g1, g2])
    outs = [call("pcgrad", G, context(2, seed=s)).direction for s in range(4)]
    for d in outs[1:]:
        torch.testing.assert_close(d, outs[0])
    cos2 = float((g1 @ g2) ** 2 / (g1 @ g1) / (g2 @ g2))
    for g in (g1, g2):
        assert abs(float(g @ outs[0]) - 0.5 * float(g @ g) * (1 - cos2)) < 1e-12


def test_pcgrad_each_projection_is_orthogonal_and_skips_non_conflicts():
    G = random_G(4, P=3, seed=5)
    M = (G @ G.T).numpy()
    for i in range(4):
        order = [j for j in range(4) if j != i]
        row = np.eye(4)[i]
        for j in order:
            before = float(row @ M[:, j])
            C = pcgrad_coefficients(M, [order if k == i else [] for k in range(4)])
            row_after = np.eye(4)[i].copy()
            for jj in order[: order.index(j) + 1]:
                dot = float(row_after @ M[:, jj])
                if dot < 0:
                    row_after[jj] -= dot / M[jj, jj]
            if before < 0:
                assert abs(float(row_after @ M[:, j])) < 1e-12
            else:
                np.testing.assert_allclose(row_after, row)
            row = row_after
        np.testing.assert_allclose(C[i], row)


def test_pcgrad_skips_zero_gradients():
    G = random_G(3)
    G[1] = 0
    assert torch.isfinite(call("pcgrad", G).direction).all()


# ---- IMTL-G (I1) -------------------------------------------------------------------------------
@pytest.mark.parametrize("K", [2, 4, 10])
def test_imtlg_equal_projections_and_weights_sum_to_one(K):
    G = random_G(K, seed=K)
    out = call("imtlg", G)
    projections = (G / G.norm(dim=1, keepdim=True)) @ out.direction
    torch.testing.assert_close(projections, projections.mean().expand(K), rtol=1e-8, atol=1e-10)
    assert abs(float(out.weights.sum()) - 1) < 1e-10


# ---- PIVRG (V1-V9, V11) and FairGrad (F1) --------------------------------------------------------
def test_omega_properties():  # V1
    dm = torch.tensor([100.0, 0.0, 10.0, 40.0])
    omega, tau = performance_weights(dm)
    assert abs(tau - 100 / math.log(2)) < 1e-9 and abs(tau - 144.27) < 0.01
    assert abs(float(omega.sum()) - 4) < 1e-12
    assert (omega >= 0.5 - 1e-12).all() and (omega <= 2 + 1e-12).all()
    order = torch.argsort(dm)
    assert (torch.diff(omega[order]) > 0).all()
    torch.testing.assert_close(performance_weights(torch.full((5,), 7.0))[0], torch.ones(5, dtype=torch.float64))
    for spread in (1.0, 1e3, 1e6):
        omega, _ = performance_weights(torch.tensor([0.0, spread, spread / 3]))
        assert (omega >= 0.5 - 1e-12).all() and (omega <= 2 + 1e-12).all()


def test_omega_variance_approximation_for_small_spreads():  # V2
    gen = torch.Generator().manual_seed(0)
    errors = []
    for _ in range(200):
        dm = 50 + 0.5 * torch.randn(10, generator=gen, dtype=torch.float64)
        omega, tau = performance_weights(dm)
        approx = tau**2 * (float(omega @ omega) / 10 - 1)
        errors.append(abs(approx - float(dm.var(unbiased=False))) / float(dm.var(unbiased=False)))
    assert np.mean(errors) < 0.1


def test_success_rate_mapping():  # V11
    sr = torch.tensor([0.2, 0.9, 0.5])
    omega, _ = performance_weights(success_to_performance_drop(sr))
    assert omega[0] > omega[2] > omega[1]
    torch.testing.assert_close(performance_weights(-100 * sr.double())[0], omega)
    torch.testing.assert_close(performance_weights(success_to_performance_drop(torch.full((3,), 0.4)))[0], torch.ones(3, dtype=torch.float64))


@pytest.mark.parametrize("K", [2, 5, 10])
def test_pivrg_solution_utilities_and_kkt(K):  # V3, V4, V5
    G = random_G(K, seed=K)
    perf = torch.linspace(0.1, 0.9, K)
    out = call("pivrg", G, AggContext(step=0, task_ids=torch.arange(K), perf=perf), max_norm=None, scale_by_K=False)
    omega, _ = performance_weights(success_to_performance_drop(perf))
    alpha, d = out.weights, out.direction
    M = G @ G.T
    assert torch.max(torch.abs((M @ alpha) / torch.sqrt(omega / alpha) - 1)) < 1e-6
    torch.testing.assert_close(G @ d, torch.sqrt(omega / alpha), rtol=1e-8, atol=0)
    assert abs(float(d @ d) - float(torch.sqrt(omega * alpha).sum())) < 1e-8
    kkt = ((omega / (G @ d) ** 2)[:, None] * G).sum(0)
    assert abs(float(kkt @ d / (kkt.norm() * d.norm())) - 1) < 1e-8


def test_pivrg_matches_scipy_least_squares():  # V3
    from scipy.optimize import least_squares

    G = random_G(5)
    M = (G @ G.T).numpy()
    omega = np.array([0.6, 1.4, 1.0, 0.8, 1.2])
    reference = least_squares(lambda a: M @ a - np.sqrt(omega / a), np.full(5, 0.2), bounds=(1e-12, np.inf), xtol=1e-15, ftol=1e-15, gtol=1e-15).x
    from mtrl.aggregators.solvers import positive_fixed_point

    ours = positive_fixed_point(M, np.sqrt(omega), 0.5).alpha
    np.testing.assert_allclose(ours, reference, rtol=1e-6)


def test_pivrg_scaling_and_orthogonal_and_single_task():  # V7, V8, V9
    G = random_G(4)
    d = call("pivrg", G, max_norm=None, scale_by_K=False).direction
    d3 = call("pivrg", 8.0 * G, max_norm=None, scale_by_K=False).direction
    torch.testing.assert_close(d3, d * 8.0 ** (-1 / 3))
    scaled = G.clone()
    scaled[0] *= 10
    d_scaled = call("pivrg", scaled, max_norm=None, scale_by_K=False).direction
    assert float(d @ d_scaled / (d.norm() * d_scaled.norm())) < 0.9999
    Q, _ = torch.linalg.qr(torch.randn(10, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
    norms = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
    out = call("pivrg", Q.T * norms[:, None], max_norm=None, scale_by_K=False)
    torch.testing.assert_close(out.weights, norms ** (-4 / 3))
    g = torch.tensor([[3.0, 4.0]], dtype=torch.float64)
    torch.testing.assert_close(call("pivrg", g, max_norm=None, scale_by_K=False).direction, 5 ** (-1 / 3) * g[0] / 5)


def test_pivrg_equal_performance_equals_unweighted_form_and_fairgrad_alpha_2():  # V6, F1
    G = random_G(5)
    equal = call("pivrg", G, AggContext(step=0, task_ids=torch.arange(5), perf=torch.full((5,), 0.3)), max_norm=None, scale_by_K=False)
    unweighted = call("pivrg", G, max_norm=None, scale_by_K=False)
    fair = call("fairgrad", G, alpha=2.0)
    torch.testing.assert_close(equal.direction, unweighted.direction)
    torch.testing.assert_close(fair.direction, unweighted.direction)
    torch.testing.assert_close(call("fairgrad", G, alpha=1.0).weights, call("nashmtl", G).weights)


def test_pivrg_descent_on_quadratics():  # V10
    rng = np.random.default_rng(1)
    K, P = 3, 5
    A = [np.diag(rng.uniform(0.5, 2.0, P)) for _ in range(K)]
    a = [rng.normal(size=P) for _ in range(K)]
    theta = rng.normal(size=P) * 3
    L = max(np.linalg.eigvalsh(Ai).max() for Ai in A)
    avg = lambda th: np.mean([0.5 * (th - a[i]) @ A[i] @ (th - a[i]) for i in range(K)])  # noqa: E731
    G = torch.from_numpy(np.stack([A[i] @ (theta - a[i]) for i in range(K)]))
    perf = torch.tensor([0.2, 0.5, 0.9])
    out = call("pivrg", G, AggContext(step=0, task_ids=torch.arange(K), perf=perf), max_norm=None, scale_by_K=False)
    omega, _ = performance_weights(success_to_performance_drop(perf))
    alpha, d = out.weights.numpy(), out.direction.numpy()
    w = omega.numpy()
    eta = np.sum(np.sqrt(w / alpha)) / (K * L * np.sum(np.sqrt(w * alpha)))
    assert avg(theta - eta * d) <= avg(theta) - L * eta**2 / 2 * np.sum(np.sqrt(w * alpha)) + 1e-12


# ---- loss weightings (S1, D1, R1, UW, FAMO) ------------------------------------------------------
def test_si_gradient_and_scale_invariance():
    G = random_G(3)
    losses = torch.tensor([0.5, 2.0, 4.0], dtype=torch.float64)
    ctx = AggContext(step=0, task_ids=torch.arange(3), losses=losses)
    d = call("si", G, ctx).direction
    torch.testing.assert_close(d, (G / losses[:, None]).sum(0))
    scaled = AggContext(step=0, task_ids=torch.arange(3), losses=losses * torch.tensor([3.0, 1.0, 0.1], dtype=torch.float64))
    G_scaled = G * torch.tensor([3.0, 1.0, 0.1], dtype=torch.float64)[:, None]
    torch.testing.assert_close(call("si", G_scaled, scaled).direction, d)


def test_dwa_weights_sum_to_K_and_equal_ratios_give_equal_weights():
    K = 3
    agg = make("dwa", num_tasks=K, window=2)
    for step in range(4):
        weights = agg.weights_without_jacobian(AggContext(step=step, task_ids=torch.arange(K), losses=torch.tensor([1.0, 2.0, 3.0]) / (step // 2 + 1)))
    torch.testing.assert_close(weights, torch.ones(K, dtype=torch.float64))
    agg2 = make("dwa", num_tasks=K, window=1)
    for step, losses in enumerate([[1.0, 1.0, 1.0], [0.5, 1.0, 2.0], [0.5, 1.0, 2.0]]):
        weights = agg2.weights_without_jacobian(AggContext(step=step, task_ids=torch.arange(K), losses=torch.tensor(losses)))
    assert abs(float(weights.sum()) - K) < 1e-12 and weights[2] > weights[1] > weights[0]
    assert agg2.temperature == 2.0


def test_rlw_weights_positive_sum_to_one_and_change_across_steps():
    gen = torch.Generator().manual_seed(0)
    agg = make("rlw", num_tasks=4)
    draws = [agg.weights_without_jacobian(AggContext(step=s, task_ids=torch.arange(4), generator=gen)) for s in range(3)]
    for w in draws:
        assert (w > 0).all() and abs(float(w.sum()) - 1) < 1e-12
    assert not torch.equal(draws[0], draws[1])


def test_uw_learns_higher_weight_for_smaller_losses():
    agg = make("uw", num_tasks=2, lr=0.05)
    for step in range(300):
        weights = agg.weights_without_jacobian(AggContext(step=step, task_ids=torch.arange(2), losses=torch.tensor([0.1, 10.0])))
    assert weights[0] > weights[1]
    # the stationary point of 1/2 (exp(-s) l + s) is s = log l
    torch.testing.assert_close(agg.log_variance, torch.log(torch.tensor([0.1, 10.0], dtype=torch.float64)), atol=0.3, rtol=0)


def test_famo_raises_weight_of_the_task_that_improves_slower():
    agg = make("famo", num_tasks=2)
    losses = torch.tensor([1.0, 1.0], dtype=torch.float64)
    for step in range(50):
        weights = agg.weights_without_jacobian(AggContext(step=step, task_ids=torch.arange(2), losses=losses.clone()))
        losses = losses * torch.tensor([0.9, 0.99], dtype=torch.float64)  # task 0 improves faster
    assert agg.logits[1] > agg.logits[0]
    assert abs(float(weights.sum()) - 1) < 1e-12


def test_famo_follows_its_update_rule_on_all_tasks_and_on_subsets():
    """Weights and logits against the rule of the module docstring, written out in torch: the
    shifted loss D, Adam (lr 0.025, L2 1e-3) on the logits along J_softmax^T (log D_prev - log D)."""
    K = 4
    agg = make("famo", num_tasks=K)
    logits, m, v, steps = torch.zeros(K, dtype=torch.float64), torch.zeros(K, dtype=torch.float64), torch.zeros(K, dtype=torch.float64), 0
    previous, low, seen = torch.zeros(K, dtype=torch.float64), torch.zeros(K, dtype=torch.float64), torch.zeros(K, dtype=torch.bool)
    gen = torch.Generator().manual_seed(0)
    for step in range(12):
        ids = torch.arange(K) if step % 3 else torch.tensor([3, 1])  # every task, or a subset out of order
        losses = torch.randn(len(ids), generator=gen, dtype=torch.float64)  # negative ones too (actor losses)
        w = agg.weights_without_jacobian(AggContext(step=step, task_ids=ids, losses=losses))
        first = ~seen[ids]
        low[ids] = torch.where(first, losses, torch.minimum(low[ids], losses))
        seen[ids] = True
        D = (losses - torch.clamp(2 * low[ids], max=0.0)).clamp_min(1e-12)
        if not first.any():
            z = torch.softmax(logits[ids], 0)
            delta = previous[ids].log() - D.log()
            g = z * (delta - (z * delta).sum()) + 1e-3 * logits[ids]
            steps += 1
            m[ids] = 0.9 * m[ids] + 0.1 * g
            v[ids] = 0.999 * v[ids] + 0.001 * g * g
            logits[ids] = logits[ids] - 0.025 * (m[ids] / (1 - 0.9**steps)) / ((v[ids] / (1 - 0.999**steps)).sqrt() + 1e-8)
        previous[ids] = D
        expected = torch.softmax(logits[ids], 0) / D
        torch.testing.assert_close(w, expected / expected.sum(), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(agg.logits, logits, rtol=1e-12, atol=1e-14)
    assert steps > 0 and agg.adam_steps == steps


@pytest.mark.parametrize("name", ["ls", "mean", "rlw", "dwa", "uw", "si", "famo"])
def test_loss_weightings_need_no_jacobian_and_both_paths_agree(name):
    G = random_G(3)
    a, b = make(name, num_tasks=3), make(name, num_tasks=3)
    assert not a.needs_jacobian(0)
    for step in range(3):
        ctx = context(3, step=step, seed=step, losses=torch.tensor([0.5, 1.0, 2.0]) * (step + 1))
        w = a.weights_without_jacobian(ctx)
        torch.testing.assert_close(b(G, context(3, step=step, seed=step, losses=ctx.losses)).direction, w @ G)
