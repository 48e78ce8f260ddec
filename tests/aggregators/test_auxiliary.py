"""AuxiNash (ids A*), AuxiLearn (ids L*), the implicit hypergradient, and PI-integration [PV §4.4].

Property ids: docs/aggregators.md, "Checked properties".

The hypergradient tests use least-squares tasks, where the inner optimum theta*(h) has a closed
form, so d L_V(theta*(h)) / d h can be taken by central finite differences and compared with the
implementation (Neumann series with many terms, times eta: docs/aggregators.md, "Bilevel methods").
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mtrl.aggregators import AggContext, make
from mtrl.aggregators.hypergrad import HyperContext, implicit_hypergradient, neumann_inverse_hvp
from mtrl.aggregators.performance import performance_weights, success_to_performance_drop
from mtrl.aggregators.solvers import gram, positive_fixed_point, weights_derivative
from tests.aggregators.properties import context, random_G
from tests.helpers import through_torch_save


def auxinash(K, preference=None, **options):
    agg = make("auxinash", num_tasks=K, max_norm=None, **options)
    if preference is not None:
        agg.preference = torch.as_tensor(preference, dtype=torch.float64).clone()
    return agg


# ---- AuxiNash: the inner solution ------------------------------------------------------------------


@pytest.mark.parametrize("K", [2, 5, 10])
def test_auxinash_solves_weighted_nash_equation(K):  # A1
    G = random_G(K, P=80, seed=K)
    p = torch.linspace(0.3, 1.7, K, dtype=torch.float64)
    out = auxinash(K, p)(G, context(K))
    alpha = out.weights
    assert (alpha > 0).all()
    torch.testing.assert_close(alpha * (G @ G.T @ alpha), p, rtol=1e-8, atol=0)
    torch.testing.assert_close(G @ out.direction, p / alpha, rtol=1e-8, atol=0)  # u_i = p_i / alpha_i
    assert abs(float(out.direction.norm() ** 2) - float(p.sum())) < 1e-8 * K  # ||d||^2 = sum p


def test_auxinash_uniform_preferences_are_nash_mtl():  # A2 (and the "p = 1 equals Nash-MTL")
    G = random_G(6, P=50, seed=1)
    nash = make("nashmtl", num_tasks=6, max_norm=None)(G, context(6))
    ones = auxinash(6)(G, context(6))  # initial p = 1 (sum K), no outer step before hyper_every calls
    torch.testing.assert_close(ones.weights, nash.weights, rtol=0, atol=0)
    torch.testing.assert_close(ones.direction, nash.direction, rtol=0, atol=0)
    simplex = auxinash(6, torch.full((6,), 1 / 6))(G, context(6))  # p = 1/K: alpha_Nash / sqrt(K)
    torch.testing.assert_close(simplex.weights, nash.weights / 6**0.5, rtol=1e-7, atol=0)


def test_auxinash_preference_scale_and_per_task_scale():  # A3, A5
    G = random_G(4, P=30, seed=2)
    p = torch.tensor([0.5, 1.0, 1.5, 1.0], dtype=torch.float64)
    a = auxinash(4, p)(G, context(4)).weights
    torch.testing.assert_close(auxinash(4, 3.0 * p)(G, context(4)).weights, 3.0**0.5 * a, rtol=1e-9, atol=0)
    scales = torch.tensor([0.01, 1.0, 10.0, 1e3], dtype=torch.float64)
    d1 = auxinash(4, p)(G, context(4)).direction
    d2 = auxinash(4, p)(G * scales[:, None], context(4)).direction
    torch.testing.assert_close(d2, d1, rtol=1e-7, atol=1e-10)


def test_auxinash_orthogonal_gradients():  # A4
    Q, _ = torch.linalg.qr(torch.randn(12, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
    norms = torch.tensor([0.5, 2.0, 4.0], dtype=torch.float64)
    p = torch.tensor([0.2, 1.0, 1.8], dtype=torch.float64)
    out = auxinash(3, p)(Q.T * norms[:, None], context(3))
    torch.testing.assert_close(out.weights, p.sqrt() / norms)
    torch.testing.assert_close((Q.T * norms[:, None]) @ out.direction, p.sqrt() * norms)  # larger p, larger share


def test_prop_4_2_weights_derivative_matches_finite_differences():  # A6
    G = random_G(5, P=40, seed=3)
    M = gram(G)
    p = np.array([0.4, 1.2, 0.9, 1.5, 1.0])
    alpha = positive_fixed_point(M, p, 1.0).alpha
    J = weights_derivative(M, alpha, p)
    h = 1e-6
    for j in range(5):
        e = np.zeros(5)
        e[j] = h
        fd = (positive_fixed_point(M, p + e, 1.0).alpha - positive_fixed_point(M, p - e, 1.0).alpha) / (2 * h)
        assert np.max(np.abs(fd - J[:, j])) < 1e-5


# ---- the implicit hypergradient on least squares ---------------------------------------------------


def least_squares_tasks(K=3, d=4, n=30, seed=0):
    gen = torch.Generator().manual_seed(seed)
    X = [torch.randn(n, d, generator=gen, dtype=torch.float64) for _ in range(K + 1)]
    y = [torch.randn(n, generator=gen, dtype=torch.float64) for _ in range(K + 1)]
    A = [x.T @ x / n for x in X]  # Hessian of 1/2 mean (x theta - y)^2
    b = [x.T @ t / n for x, t in zip(X, y)]

    def loss(i, theta):
        return 0.5 * ((X[i] @ theta - y[i]) ** 2).mean()

    def theta_star(weights):  # argmin sum_i w_i loss_i (tasks 0..K-1)
        H = sum(w * A[i] for i, w in enumerate(weights))
        return torch.linalg.solve(H, sum(w * b[i] for i, w in enumerate(weights)))

    return loss, theta_star, A


def hyper_context(loss, theta, K, val_task):
    theta = theta.clone().requires_grad_(True)
    return HyperContext(
        params=(theta,),
        train_losses=lambda: torch.stack([loss(i, theta) for i in range(K)]),
        val_loss=lambda: loss(val_task, theta),
    ), theta


def test_neumann_recursion_equals_explicit_series():  # L3
    gen = torch.Generator().manual_seed(1)
    A = torch.randn(6, 6, generator=gen, dtype=torch.float64)
    H = A @ A.T + torch.eye(6, dtype=torch.float64)
    theta = torch.randn(6, generator=gen, dtype=torch.float64, requires_grad=True)
    grads = torch.autograd.grad(0.5 * theta @ H @ theta, theta, create_graph=True)
    v = torch.randn(6, generator=gen, dtype=torch.float64)
    eta, J = 0.05, 4
    (q,) = neumann_inverse_hvp(list(grads), [theta], [v], J, eta)
    B = torch.eye(6, dtype=torch.float64) - eta * H
    expected = sum(torch.linalg.matrix_power(B, j) @ v for j in range(J + 1))
    torch.testing.assert_close(q, expected, rtol=1e-12, atol=1e-12)


def test_hypergradient_matches_finite_differences_of_the_validation_loss():  # L4, A7 (exact chain)
    K = 3
    loss, theta_star, A = least_squares_tasks(K)
    weights = torch.tensor([1.0, 0.7, 1.3], dtype=torch.float64)
    H = sum(w * A[i] for i, w in enumerate(weights))
    eta = 1.0 / float(torch.linalg.eigvalsh(H).max())
    hyper, _ = hyper_context(loss, theta_star(weights), K, val_task=K)
    w_leaf = weights.clone().requires_grad_(True)
    (grad,), _ = implicit_hypergradient(hyper, lambda l: (w_leaf * l).sum(), [w_leaf], terms=3000, lr=eta)
    h = 1e-6
    fd = torch.zeros(K, dtype=torch.float64)
    for j in range(K):
        e = torch.zeros(K, dtype=torch.float64)
        e[j] = h
        fd[j] = (loss(K, theta_star(weights + e)) - loss(K, theta_star(weights - e))) / (2 * h)
    assert float((eta * grad - fd).norm() / fd.norm()) < 1e-3


def test_auxinash_preference_gradient_matches_finite_differences():  # A7
    """grad_p L_V(theta*(alpha(p))) with M fixed: the implementation's chain (IFT x Prop 4.2)."""
    K = 3
    loss, theta_star, A = least_squares_tasks(K, seed=4)
    G = random_G(K, P=10, seed=5)
    M = gram(G)
    p = np.array([0.8, 1.0, 1.2])

    def alpha_of(pref):
        return positive_fixed_point(M, pref, 1.0).alpha

    alpha = alpha_of(p)
    theta = theta_star(torch.from_numpy(alpha))
    H = sum(float(a) * A[i] for i, a in enumerate(alpha))
    eta = 1.0 / float(torch.linalg.eigvalsh(H).max())
    agg = auxinash(K, p, neumann_terms=3000, neumann_lr=eta)
    hyper, _ = hyper_context(loss, theta, K, val_task=K)
    grad_p, _ = agg.preference_gradient(M, alpha, AggContext(step=0, task_ids=torch.arange(K), hyper=hyper), torch.arange(K))
    h = 1e-6
    fd = np.zeros(K)
    for j in range(K):
        e = np.zeros(K)
        e[j] = h
        up = loss(K, theta_star(torch.from_numpy(alpha_of(p + e))))
        down = loss(K, theta_star(torch.from_numpy(alpha_of(p - e))))
        fd[j] = float(up - down) / (2 * h)
    assert np.linalg.norm(eta * grad_p.numpy() - fd) / np.linalg.norm(fd) < 1e-3
    # the released settings (J = 3, eta = 1e-4) approximate H^-1 by a multiple of I: same sign pattern here
    agg3 = auxinash(K, p)
    approx, _ = agg3.preference_gradient(M, alpha, AggContext(step=0, task_ids=torch.arange(K), hyper=hyper), torch.arange(K))
    assert float(np.dot(approx.numpy(), fd)) > 0


# ---- AuxiNash: the outer step in the aggregator ----------------------------------------------------


class CountingHyper:
    """A HyperContext over a least-squares problem that counts how often it is used."""

    def __init__(self, K, seed=0):
        self.loss, self.theta_star, _ = least_squares_tasks(K, seed=seed)
        self.K, self.calls = K, 0
        self.theta = self.theta_star(torch.ones(K, dtype=torch.float64)).requires_grad_(True)

    def context(self):
        def val():
            self.calls += 1
            return self.loss(self.K, self.theta)

        return HyperContext((self.theta,), lambda: torch.stack([self.loss(i, self.theta) for i in range(self.K)]), val)


def test_auxinash_outer_step_every_n_calls_keeps_preferences_valid_and_theta_untouched():  # A8, A9
    K = 4
    G = random_G(K, P=4, seed=6)
    counting = CountingHyper(K)
    before = counting.theta.detach().clone()
    agg = make("auxinash", num_tasks=K, hyper_every=5, meta_lr=50.0, main_preference=None)
    for step in range(23):
        ctx = AggContext(step=step, task_ids=torch.arange(K), hyper=counting.context(), main_task=0)
        agg(G, ctx)
        assert counting.calls == step // 5  # outer steps follow calls 5, 10, 15, 20 (taken in calls 6, 11, ...)
        assert float(agg.preference.min()) >= 1e-4 - 1e-15  # floor (A8)
        assert abs(float(agg.preference.sum()) - K) < 1e-9  # sum p = K
    assert agg.hypersteps == 4
    assert torch.equal(counting.theta.detach(), before) and counting.theta.grad is None  # theta untouched
    assert not torch.equal(agg.preference, torch.ones(K, dtype=torch.float64))


def test_auxinash_outer_step_follows_the_parameter_update_of_the_Np_th_step():  # [AN Alg 1] order
    """Algorithm 1: N_p inner steps (solve, update theta), then the preference step at the updated
    theta with the N_p-th step's alpha and M; the next solve uses the new preferences."""
    K, N_p = 3, 3
    counting = CountingHyper(K, seed=3)
    seen = []  # theta at each evaluation of the validation loss
    agg = make("auxinash", num_tasks=K, hyper_every=N_p, meta_lr=5.0, grad_clip=None, max_norm=None)
    G = random_G(K, P=4, seed=9)
    history = []
    for step in range(2 * N_p + 1):
        hyper = counting.context()
        val = hyper.val_loss
        hyper = HyperContext(hyper.params, hyper.train_losses, lambda v=val: (seen.append(counting.theta.detach().clone()), v())[1])
        preference_before = agg.preference.clone()
        out = agg(G * (1.0 + 0.1 * step), AggContext(step=step, task_ids=torch.arange(K), hyper=hyper, main_task=0))
        history.append((preference_before, agg.preference.clone(), out, counting.theta.detach().clone()))
        with torch.no_grad():  # the trainer's parameter update with this call's direction
            counting.theta -= 0.05 * out.direction[:4].to(counting.theta)
    # the preferences change only in calls N_p + 1 and 2 N_p + 1, at their start
    changed = [i for i, (before, after, _, _) in enumerate(history) if not torch.equal(before, after)]
    assert changed == [N_p, 2 * N_p] and len(seen) == 2
    # ... at the parameters after the N_p-th update (the theta seen at the start of call N_p + 1)
    assert torch.equal(seen[0], history[N_p][3])
    # ... with the N_p-th call's alpha and M: the step equals the hypergradient computed from them
    third = history[N_p - 1][2]
    M = gram(G * (1.0 + 0.1 * (N_p - 1)))
    replay = make("auxinash", num_tasks=K, hyper_every=N_p, meta_lr=5.0, grad_clip=None, max_norm=None)
    with torch.no_grad():
        counting.theta.copy_(history[N_p][3])
    grad_p, _ = replay.preference_gradient(M, third.weights.numpy(), AggContext(step=0, task_ids=torch.arange(K), hyper=counting.context()), torch.arange(K))
    expected = torch.ones(K, dtype=torch.float64) - 5.0 * grad_p
    expected = expected.clamp_min(1e-4) * (K / expected.clamp_min(1e-4).sum())
    torch.testing.assert_close(history[N_p][1], expected, rtol=1e-10, atol=1e-12)
    # ... and the solve of call N_p + 1 already uses the new preferences: M alpha = p_new / alpha
    out = history[N_p][2]
    M_next = gram(G * (1.0 + 0.1 * N_p))
    alpha = out.weights.numpy()
    np.testing.assert_allclose(alpha * (M_next @ alpha), history[N_p][1].numpy(), rtol=1e-8)


def test_auxinash_outer_step_after_a_fallback_is_taken_unless_skipped():
    K = 2
    g = random_G(1, P=6, seed=10)[0]
    stationary = torch.stack([g, -g])  # no Nash solution: the call falls back
    for skip, expected_steps in [(False, 1), (True, 0)]:
        counting = CountingHyper(K, seed=4)
        agg = make("auxinash", num_tasks=K, hyper_every=2, skip_after_fallback=skip)
        agg(random_G(K, P=6, seed=11), AggContext(step=0, task_ids=torch.arange(K), hyper=counting.context(), main_task=0))
        fallback = agg(stationary, AggContext(step=1, task_ids=torch.arange(K), hyper=counting.context(), main_task=0))
        assert fallback.info["fallback_used"] == 1.0
        out = agg(random_G(K, P=6, seed=12), AggContext(step=2, task_ids=torch.arange(K), hyper=counting.context(), main_task=0))
        assert agg.hypersteps == expected_steps and agg.hyper_skipped == 1 - expected_steps
        if not skip:
            assert out.info["hyper_after_fallback"] == 1.0 and torch.isfinite(agg.preference).all()


def test_auxinash_resume_between_the_Np_th_call_and_its_outer_step():
    K = 4
    G = random_G(K, P=20, seed=13)
    learn = make("auxinash", num_tasks=K, hyper_every=3)
    hyper = CountingHyper(K)
    for step in range(3):
        learn(G * (1 + 0.1 * step), AggContext(step=step, task_ids=torch.arange(K), hyper=hyper.context(), main_task=0))
    assert learn.outer_pending  # the outer step is due at the start of the next call
    clone = make("auxinash", num_tasks=K, hyper_every=3)
    clone.load_state_dict(through_torch_save(learn.state_dict()))
    for step in range(3, 8):
        a = learn(G * (1 - 0.05 * step), AggContext(step=step, task_ids=torch.arange(K), hyper=hyper.context(), main_task=0))
        b = clone(G * (1 - 0.05 * step), AggContext(step=step, task_ids=torch.arange(K), hyper=hyper.context(), main_task=0))
        assert torch.equal(a.direction, b.direction) and torch.equal(learn.preference, clone.preference)
    assert learn.hypersteps == clone.hypersteps == 2


def test_auxinash_fixed_preferences_and_state_round_trip():
    K = 5
    G = random_G(K, P=20, seed=7)
    agg = make("auxinash", num_tasks=K, learn_preferences=False, main_preference=0.8, hyper_every=1)
    agg(G, AggContext(step=0, task_ids=torch.arange(K), main_task=2, hyper=CountingHyper(K).context()))
    expected = torch.full((K,), K * 0.2 / (K - 1), dtype=torch.float64)
    expected[2] = K * 0.8
    torch.testing.assert_close(agg.preference, expected)
    assert agg.hypersteps == 0
    with pytest.raises(ValueError, match="main_preference needs a main task"):
        make("auxinash", num_tasks=K, main_preference=0.8)(G, context(K))
    # state round trip (resume): a copy continues identically
    learn = make("auxinash", num_tasks=K, hyper_every=2)
    hyper = CountingHyper(K)
    for step in range(3):
        learn(G, AggContext(step=step, task_ids=torch.arange(K), hyper=hyper.context(), main_task=0))
    clone = make("auxinash", num_tasks=K, hyper_every=2)
    clone.load_state_dict(learn.state_dict())
    for step in range(3, 6):
        a = learn(G, AggContext(step=step, task_ids=torch.arange(K), hyper=hyper.context(), main_task=0))
        b = clone(G, AggContext(step=step, task_ids=torch.arange(K), hyper=hyper.context(), main_task=0))
        assert torch.equal(a.direction, b.direction) and torch.equal(learn.preference, clone.preference)


def test_auxinash_descent_on_quadratics():  # A11
    gen = torch.Generator().manual_seed(8)
    K, P = 3, 6
    centres = torch.randn(K, P, generator=gen, dtype=torch.float64)
    theta = torch.zeros(P, dtype=torch.float64) + 3.0
    p = torch.tensor([0.5, 1.0, 1.5], dtype=torch.float64) / 3.0  # the paper's sum p = 1 (Thm 5.4)
    L = 1.0  # losses 1/2 ||theta - c_i||^2 are 1-smooth
    checked = 0
    for _ in range(5):
        G = theta - centres
        out = auxinash(K, p)(G, context(K))
        if out.info["fallback_used"]:  # theta reached the Pareto set: no positive solution
            break
        checked += 1
        mu = float((p / out.weights).sum()) / (K * L)
        before = 0.5 * ((theta - centres) ** 2).sum(1).mean()
        theta = theta - mu * out.direction
        after = 0.5 * ((theta - centres) ** 2).sum(1).mean()
        # an equality here (1-smooth quadratics, sum p = 1): the slack is the rounding of losses of size `before`
        assert before - after >= L * mu**2 / 2 - 1e-12 * before
    assert checked >= 1


# ---- AuxiLearn ----------------------------------------------------------------------------------


def test_auxilearn_weights_are_the_gradient_of_the_training_loss():  # L1
    K = 4
    gen = torch.Generator().manual_seed(9)
    W = torch.randn(5, generator=gen, dtype=torch.float64, requires_grad=True)
    X = torch.randn(K, 5, generator=gen, dtype=torch.float64)
    losses = (X @ W) ** 2 + 0.1
    agg = make("auxilearn", num_tasks=K)
    for main in (None, 2):
        w = agg.loss_weights(AggContext(step=0, task_ids=torch.arange(K), losses=losses.detach(), main_task=main))
        direct = torch.autograd.grad(agg.training_objective(agg.phi, losses, main), W, retain_graph=True)[0]
        rows = torch.stack([torch.autograd.grad(losses[i], W, retain_graph=True)[0] for i in range(K)])
        torch.testing.assert_close(w @ rows, direct, rtol=1e-10, atol=1e-12)
    assert float(w[2]) > 1.0  # the main task's weight includes the skip connection


@pytest.mark.parametrize("combiner", ["nonlinear", "linear"])
def test_auxilearn_stays_monotone_after_outer_steps(combiner):  # L2
    K = 3
    counting = CountingHyper(K, seed=10)
    agg = make("auxilearn", num_tasks=K, combiner=combiner, hyper_every=1, meta_lr=5.0, grad_clip=None)
    losses = torch.tensor([0.3, 1.0, 2.0], dtype=torch.float64)
    for step in range(6):
        agg.weights_without_jacobian(AggContext(step=step, task_ids=torch.arange(K), losses=losses, hyper=counting.context(), main_task=0))
    assert agg.hypersteps == 6
    assert bool((agg.phi[agg._weight_mask()] >= 0).all())
    gen = torch.Generator().manual_seed(11)
    for _ in range(1000 if combiner == "linear" else 200):
        x = (torch.rand(K, generator=gen, dtype=torch.float64) * 10).requires_grad_(True)
        (g,) = torch.autograd.grad(agg.combine(agg.phi, x), x)
        assert bool((g >= 0).all())


def test_auxilearn_linear_hypergradient_matches_finite_differences():  # L4 through the aggregator
    """L_T = loss_main + sum_j phi_j loss_j (main = task 0): the combiner step moves phi along
    -eta^-1 dL_A/dphi; compare with finite differences of L_A(W*(phi))."""
    K = 3
    loss, theta_star, A = least_squares_tasks(K, seed=12)
    phi = torch.tensor([0.5, 0.8, 0.3], dtype=torch.float64)  # inputs ordered main first: task 0, 1, 2
    weights = torch.tensor([1.0 + phi[0], phi[1], phi[2]])
    H = sum(float(w) * A[i] for i, w in enumerate(weights))
    eta = 1.0 / float(torch.linalg.eigvalsh(H).max())
    agg = make("auxilearn", num_tasks=K, combiner="linear", neumann_terms=3000, neumann_lr=eta, hyper_every=1,
               meta_lr=1e-3, meta_momentum=0.0, meta_weight_decay=0.0, grad_clip=None)
    agg.phi = phi.clone()
    hyper, theta = hyper_context(loss, theta_star(weights), K, val_task=K)
    losses = torch.stack([loss(i, theta) for i in range(K)]).detach()
    agg.weights_without_jacobian(AggContext(step=0, task_ids=torch.arange(K), losses=losses, hyper=hyper, main_task=0))
    hyper_grad = (phi - agg.phi) / 1e-3  # the step taken: phi <- phi - lr * grad
    h = 1e-6
    fd = torch.zeros(K, dtype=torch.float64)
    for j in range(K):
        e = torch.zeros(K, dtype=torch.float64)
        e[j] = h
        plus, minus = phi + e, phi - e
        up = loss(K, theta_star(torch.stack([1 + plus[0], plus[1], plus[2]])))
        down = loss(K, theta_star(torch.stack([1 + minus[0], minus[1], minus[2]])))
        fd[j] = (up - down) / (2 * h)
    assert float((eta * hyper_grad - fd).norm() / fd.norm()) < 1e-3


def test_auxilearn_state_round_trip_and_missing_tasks():
    K = 4
    agg = make("auxilearn", num_tasks=K, hyper_every=2)
    hyper = CountingHyper(K, seed=13)
    for step in range(3):
        agg.weights_without_jacobian(AggContext(step=step, task_ids=torch.arange(K), losses=torch.rand(K, dtype=torch.float64) + 0.1, hyper=hyper.context(), main_task=1))
    clone = make("auxilearn", num_tasks=K, hyper_every=2)
    clone.load_state_dict(agg.state_dict())
    for step in range(3, 6):
        losses = torch.rand(K, dtype=torch.float64, generator=torch.Generator().manual_seed(step)) + 0.1
        a = agg.weights_without_jacobian(AggContext(step=step, task_ids=torch.arange(K), losses=losses, hyper=hyper.context(), main_task=1))
        b = clone.weights_without_jacobian(AggContext(step=step, task_ids=torch.arange(K), losses=losses, hyper=hyper.context(), main_task=1))
        assert torch.equal(a, b)
    assert torch.equal(agg.phi, clone.phi)
    # a batch holding two of the four tasks: weights for those rows, the others' last losses as inputs
    w = agg.loss_weights(AggContext(step=6, task_ids=torch.tensor([1, 3]), losses=torch.tensor([0.5, 0.7]), main_task=1))
    assert w.shape == (2,) and bool((w > 0).all())


# ---- PI-integration [PV §4.4] -----------------------------------------------------------------------


PERF = torch.tensor([0.0, 0.3, 0.6, 0.9, 1.0], dtype=torch.float64)


@pytest.mark.parametrize("name", ["ls", "mean", "rlw", "dwa", "uw", "mgda", "nashmtl"])
def test_pi_option_is_neutral_without_or_with_equal_performance(name):
    G = random_G(5, P=30, seed=14)
    for perf in (None, torch.full((5,), 0.4, dtype=torch.float64)):
        plain = make(name, num_tasks=5)(G, context(5, perf=perf))
        pi = make(name, num_tasks=5, pi=True)(G, context(5, perf=perf))
        torch.testing.assert_close(pi.direction, plain.direction, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", ["ls", "rlw", "dwa", "uw"])
def test_pi_loss_weightings_multiply_their_weights_by_omega(name):
    G = random_G(5, P=30, seed=15)
    omega, _ = performance_weights(success_to_performance_drop(PERF))
    plain = make(name, num_tasks=5)(G, context(5, perf=PERF))
    pi = make(name, num_tasks=5, pi=True)(G, context(5, perf=PERF))
    torch.testing.assert_close(pi.weights, plain.weights * omega)
    assert float(pi.weights[0] / plain.weights[0]) > float(pi.weights[-1] / plain.weights[-1])  # lagging task up


def test_pi_nash_mtl_is_the_weighted_nash_solution_with_p_omega():
    G = random_G(5, P=30, seed=16)
    omega, _ = performance_weights(success_to_performance_drop(PERF))
    pi = make("nashmtl", num_tasks=5, pi=True, max_norm=None)(G, context(5, perf=PERF))
    weighted = auxinash(5, omega)(G, context(5))
    torch.testing.assert_close(pi.weights, weighted.weights, rtol=1e-9, atol=0)


def test_pi_mgda_is_min_norm_of_omega_scaled_rows():
    G = random_G(5, P=30, seed=17)
    omega, _ = performance_weights(success_to_performance_drop(PERF))
    pi = make("mgda", num_tasks=5, pi=True)(G, context(5, perf=PERF))
    scaled = make("mgda", num_tasks=5)(G * omega[:, None], context(5))
    torch.testing.assert_close(pi.direction, scaled.direction, rtol=1e-8, atol=1e-10)


def test_pi_option_is_checked():
    with pytest.raises(ValueError, match="'pi'"):
        make("ls", num_tasks=3, pi="yes")
    with pytest.raises(ValueError, match="'pi'"):
        make("nashmtl", num_tasks=3, pi=True, solver="ccp")
