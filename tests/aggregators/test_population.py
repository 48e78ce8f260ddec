"""The Gram-level entry points: ``coefficients_from_gram`` (one member) and
``population_coefficients`` (S members, batched solvers), against ``aggregate(G, ctx)`` and against
each other."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from mtrl.aggregators import REGISTRY, AggContext, make, population_coefficients
from mtrl.aggregators import batched
from mtrl.aggregators.from_gram import GramAggregator, isolate_failures
from mtrl.aggregators.imtlg import imtlg_weights, imtlg_weights_batch
from mtrl.aggregators.solvers import cagrad_dual_sgd, gram, min_norm_simplex, positive_fixed_point
from mtrl.benchmarks.population import gram_stream
from tests.aggregators.properties import random_G, stationary_inputs

RTOL = 1e-12  # batched solvers against the single-member path (measured: at most 7e-15)


@pytest.fixture(autouse=True)
def one_thread():
    """The matrices here are tiny: with two threads each torch matmul spent ~7 ms of CPU in
    OpenMP's spin-waits on the loaded 2-core machine, with one ~0.01 ms. Restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def ctx_for(K: int, step: int, seed: int = 0, task_ids=None) -> AggContext:
    """A fresh context (its own generator): the same arguments give the same draws."""
    return AggContext(
        step=step,
        task_ids=torch.arange(K) if task_ids is None else task_ids,
        losses=torch.linspace(0.5, 2.0, K, dtype=torch.float64) * (1 + 0.3 * step) + 0.01 * seed,
        perf=torch.linspace(0.1, 0.9, K, dtype=torch.float64),
        generator=torch.Generator().manual_seed(1000 * seed + step),
    )


def assert_same_state(a, b, rtol: float = 0.0) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        x, y = sa[key], sb[key]
        if isinstance(x, torch.Tensor):
            if rtol:
                torch.testing.assert_close(x, y, rtol=rtol, atol=0.0, msg=f"state {key!r} differs")
            else:
                assert torch.equal(x, y), f"state {key!r} differs"
        else:
            assert x == y, f"state {key!r}: {x!r} != {y!r}"


def realistic_grams(K: int, steps: int, seed: int, P: int = 200) -> np.ndarray:
    """Gram matrices [steps, K, K] of a drifting float32 G, cast to float64 (as in training): the
    population benchmark's stream."""
    return gram_stream(K, P, steps, seed)


# ---- 1. aggregate(G, ctx) is c @ G with c = coefficients_from_gram(gram(G), ctx) ----------------

CASES = [(name, {}) for name in sorted(REGISTRY)] + [
    ("nashmtl", {"update_every": 2}),
    ("nashmtl", {"pi": True}),
    ("nashmtl", {"solver": "ccp", "optim_niter": 2}),
    ("cagrad", {"solver": "sgd", "c": 0.9}),
    ("mgda", {"pi": True}),
    ("ls", {"pi": True}),
]


@pytest.mark.parametrize("name, options", CASES, ids=[f"{n}{o or ''}" for n, o in CASES])
@pytest.mark.parametrize("clip", [False, True])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_aggregate_is_the_gram_path_bit_for_bit_with_the_same_state(name, options, clip, dtype):
    K = 5
    if clip and "max_norm" not in make(name, K).option_names():
        pytest.skip("no max_norm option")
    options = {**options, **({"max_norm": 0.5} if clip else {})}
    on_G, on_M = make(name, K, **options), make(name, K, **options)
    for step in range(5):
        G = random_G(K, seed=step).to(dtype) * (1 + step)
        if step == 4:  # nearly anti-parallel rows: 0 is in the hull of the unit rows up to ~1e-9, which
            G[1] = -G[0] + 1e-4 * G[1]  # float32's tolerance (1.2e-5) counts as 0 and float64's does not
        out = on_G(G, ctx_for(K, step))
        res = on_M.coefficients_from_gram(gram(G), ctx_for(K, step), G.dtype)
        direction = torch.from_numpy(res.coefficients).to(G) @ G
        assert isinstance(res.coefficients, np.ndarray) and res.coefficients.dtype == np.float64
        via_gram = isinstance(on_G, GramAggregator)
        if via_gram or not clip:  # the same arithmetic: bit for bit
            assert torch.equal(out.direction, direction), f"{name} step {step}"
            assert torch.equal(out.coefficients, torch.from_numpy(res.coefficients))
        else:  # a loss weighting clips on G's device (the norm of c @ G): equal to rounding
            tol = 1e-6 if dtype == torch.float32 else 1e-12  # the device's norm is in G's dtype
            torch.testing.assert_close(out.direction, direction, rtol=tol, atol=tol * float(direction.abs().max()))
        if out.weights is None:
            assert res.weights is None
        else:
            assert torch.equal(out.weights, torch.from_numpy(res.weights))
        assert out.info.keys() == res.info.keys()
        for key, value in out.info.items():
            if via_gram or key != "norm":
                assert value == res.info[key] or (np.isnan(value) and np.isnan(res.info[key])), key
            else:
                assert value == pytest.approx(res.info[key], rel=1e-6)
        assert_same_state(on_G, on_M)


def test_gram_path_checks_its_input():
    agg = make("nashmtl", 3)
    M = gram(random_G(3))
    bad = M.copy()
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match=r"non-finite .* rows \[1\]"):
        agg.coefficients_from_gram(bad, ctx_for(3, 0))
    with pytest.raises(ValueError, match="shape"):
        agg.coefficients_from_gram(M[:2], ctx_for(3, 0))
    with pytest.raises(ValueError, match="has 3 entries but the Gram matrix has 2 rows"):
        agg.coefficients_from_gram(M[:2, :2], ctx_for(3, 0))
    assert agg.step == 0 and not bool(agg.alpha.any())  # nothing was touched


# ---- 2. the batched kernels against the single-matrix solvers ----------------------------------


def diverse_grams(count: int, K: int, seed: int) -> np.ndarray:
    """Gram matrices of random G with varied task scales and a signed common component, and (one in
    three) of K + 1 columns with log-normal scales: many need Wolfe's major and minor cycles, some
    with several rows leaving the corral at once, and several Newton steps."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        if i % 3 == 2:
            G = rng.normal(size=(K, K + 1)) * np.exp(rng.normal(0.0, 1.0, size=(K, 1)))
        else:
            P = int(rng.choice([K + 2, 2 * K, 40]))
            G = rng.normal(size=(K, P)) * rng.uniform(0.05, 3.0, size=(K, 1)) + rng.uniform(-1, 1) * rng.normal(size=P)
        out.append(G @ G.T)
    return np.stack(out)


@pytest.mark.parametrize("q", [1.0, 0.5, 1.0 / 3.0])
@pytest.mark.parametrize("K", [3, 10])
def test_positive_fixed_point_batch_matches_the_single_solver(q, K):
    rng = np.random.default_rng(int(10 * q) + K)
    M = diverse_grams(24, K, seed=K)
    stationary = [m for m in stationary_inputs(P=60).values() if m.shape[0] == K]
    M = np.concatenate([M, np.stack([(g @ g.T).numpy() for g in stationary])]) if stationary else M
    c = rng.uniform(0.5, 2.0, size=(len(M), K))
    warm = np.where(rng.uniform(size=(len(M), 1)) < 0.5, rng.uniform(0.1, 1.0, size=(len(M), K)), np.nan)
    results = batched.positive_fixed_point_batch(M, c, q, warm, stationary_tol=1e-5)
    checked = 0
    for s, result in enumerate(results):
        ref = positive_fixed_point(M[s], c[s], q, alpha0=None if np.isnan(warm[s, 0]) else warm[s], stationary_tol=1e-5)
        assert (result.ok, result.stationary, result.iterations) == (ref.ok, ref.stationary, ref.iterations), s
        if ref.ok:
            np.testing.assert_allclose(result.alpha, ref.alpha, rtol=RTOL, atol=0.0)
            checked += 1
    assert checked >= 20 and any(r.stationary for r in results) == bool(stationary)


@pytest.mark.parametrize("tol", [1e-12, 1e-5])  # gram_tolerance of float64 and float32
@pytest.mark.parametrize("scale", [1e-6, 1.0, 1e6])
@pytest.mark.parametrize("K", [4, 6, 10])
def test_min_norm_simplex_batch_matches_wolfe(K, scale, tol):
    M = diverse_grams(60, K, seed=K + 5) * scale  # at K = 10: minor cycles where several rows leave at once
    results = batched.min_norm_simplex_batch(M, tol=tol)
    cycles = 0
    for s, result in enumerate(results):
        ref = min_norm_simplex(M[s], tol=tol)
        assert result.stationary == ref.stationary, s
        if not ref.stationary:  # 0 not in the hull: a unique min-norm point and the same path to it
            assert result.iterations == ref.iterations, s
            np.testing.assert_allclose(result.weights, ref.weights, rtol=0.0, atol=RTOL)
            np.testing.assert_allclose(result.gap, ref.gap, rtol=0.0, atol=RTOL)
            assert abs(result.weights.sum() - 1.0) < 1e-12 and result.weights.min() >= 0.0
            cycles += ref.iterations > 2
    assert cycles >= 3  # the inputs reach the major / minor cycles, not only the start


@pytest.mark.parametrize("scale", [1e-6, 1.0, 1e6])
def test_min_norm_simplex_batch_at_stationary_points_returns_a_vanishing_combination(scale):
    """There the weights are not unique; each path returns one of norm^2 <= tol max_i M_ii."""
    M = np.stack([(g @ g.T).numpy() for g in stationary_inputs().values() if g.shape[0] == 10]) * scale
    for s, result in enumerate(batched.min_norm_simplex_batch(M, tol=1e-5)):
        assert result.stationary and result.weights.min() >= 0.0 and abs(result.weights.sum() - 1.0) < 1e-12
        assert result.weights @ M[s] @ result.weights <= 1e-5 * M[s].diagonal().max()


def test_cagrad_sgd_and_imtlg_batches_match_the_single_solvers():
    M = realistic_grams(10, 8, seed=3)
    b = np.full((8, 10), 0.1)
    w, lam, obj = batched.cagrad_dual_sgd_batch(M, b, np.full(8, 0.9), np.full(8, 25.0))
    for s in range(8):
        w_ref, lam_ref, obj_ref = cagrad_dual_sgd(M[s], b[s], 0.9, 25.0)
        np.testing.assert_allclose(w[s], w_ref, rtol=RTOL, atol=0.0)
        assert lam[s] == pytest.approx(lam_ref, rel=RTOL) and obj[s] == pytest.approx(obj_ref, rel=RTOL)
    for s, weights in enumerate(imtlg_weights_batch(M)):
        np.testing.assert_allclose(weights, imtlg_weights(M[s]), rtol=RTOL, atol=0.0)


def test_batched_kernels_are_member_independent_bit_for_bit():
    """Every kernel on a stack equals the kernel on each member alone, including when another
    member's system is exactly singular (the stacked solve raises and is redone member by member)."""
    M = diverse_grams(6, 6, seed=9)
    M[0] *= 1e-8  # members of very different magnitudes: no tolerance may mix them
    M[5] *= 1e8
    dependent = M[2].copy()
    dependent[:, 4], dependent[4, :] = dependent[:, 1], dependent[1, :]  # rows 1 and 4 identical
    dependent[4, 4] = dependent[1, 1]
    M[2] = dependent
    bordered = np.ones((6, 7, 7))  # Wolfe's first solve, on all rows: [[0, 1'], [1, M]] [-lambda; u] = [1; 0]
    bordered[:, 0, 0] = 0.0
    bordered[:, 1:, 1:] = M
    with pytest.raises(np.linalg.LinAlgError):  # the singular member does fail that stacked solve
        np.linalg.solve(bordered, np.eye(7)[None, :, :1].repeat(6, 0))
    together = batched.min_norm_simplex_batch(M, tol=1e-5)
    for s in range(len(M)):
        alone = batched.min_norm_simplex_batch(M[s: s + 1], tol=1e-5)[0]
        assert np.array_equal(alone.weights, together[s].weights) and alone.iterations == together[s].iterations
        assert alone.stationary == together[s].stationary and alone.gap == together[s].gap
    c = np.ones((6, 6))
    together = batched.positive_fixed_point_batch(M, c, 1.0)
    for s in range(len(M)):
        alone = batched.positive_fixed_point_batch(M[s: s + 1], c[s: s + 1], 1.0)[0]
        assert np.array_equal(alone.alpha, together[s].alpha) and alone.iterations == together[s].iterations
        assert (alone.ok, alone.stationary, alone.residual) == (together[s].ok, together[s].stationary, together[s].residual)


# ---- 3. population_coefficients -----------------------------------------------------------------

POPULATION_CASES = [
    ("nashmtl", {}),
    ("nashmtl", {"update_every": 3}),
    ("nashmtl", {"pi": True}),
    ("pivrg", {}),
    ("fairgrad", {}),
    ("mgda", {}),
    ("mgda", {"pi": True}),
    ("imtlg", {}),
    ("cagrad", {"solver": "sgd", "c": 0.9}),
    ("cagrad", {"c": 0.4}),
    ("ls", {"max_norm": 1.0}),
    ("famo", {}),
    ("pcgrad", {}),
    ("cagrad_fast", {}),
    ("auxinash", {"hyper_every": 2}),
]
IDS = [f"{n}{o or ''}" for n, o in POPULATION_CASES]


@functools.lru_cache(maxsize=None)
def _member_inputs(K: int, steps: int) -> dict[str, np.ndarray]:
    streams = {key: realistic_grams(K, steps, seed=seed) for key, seed in (("a", 1), ("b", 2), ("c", 3))}
    streams["b"][2, 0, 1] = np.inf
    streams["c"][1, 2, :] = 0.0
    streams["c"][1, :, 2] = 0.0
    return streams


def member_inputs(K: int, steps: int) -> dict[str, np.ndarray]:
    """Three members' Gram streams: 'a' plain; 'b' non-finite at step 2; 'c' a zero row at step 1
    (the single-member path of the batched methods)."""
    return {key: value.copy() for key, value in _member_inputs(K, steps).items()}


def run_population(name, options, order: str, streams, K: int, steps: int, start_steps: dict | None = None):
    """Members ``order`` (e.g. "bac") run ``steps`` population updates; returns per member the
    (coefficients, weights, info, error) of each step and its aggregator."""
    members = {key: make(name, K, **options) for key in order}
    for key, offset in (start_steps or {}).items():  # Nash-MTL-T: members at different phases
        if key in members:
            for _ in range(offset):
                members[key].coefficients_from_gram(streams[key][0], ctx_for(K, 0, seed=ord(key)))
    record = {key: [] for key in order}
    for step in range(steps):
        contexts = [ctx_for(K, step, seed=ord(key)) for key in order]
        out = population_coefficients([members[key] for key in order], np.stack([streams[key][step] for key in order]), contexts)
        for s, key in enumerate(order):
            res = out.results[s]
            record[key].append((out.coefficients[s].copy(), None if res is None else res.weights, None if res is None else res.info, out.errors[s]))
    return record, members


@pytest.mark.parametrize("name, options", POPULATION_CASES, ids=IDS)
def test_a_member_alone_equals_it_in_a_population_bit_for_bit(name, options):
    K, steps = 6, 5
    streams = member_inputs(K, steps)
    offsets = {"a": 1, "b": 0, "c": 2}  # Nash-MTL-T (update_every=3): the members solve at different steps
    alone, alone_members = run_population(name, options, "a", streams, K, steps, offsets)
    for order in ("abc", "cba", "bac"):
        together, members = run_population(name, options, order, streams, K, steps, offsets)
        for step in range(steps):
            c1, w1, i1, e1 = alone["a"][step]
            c2, w2, i2, e2 = together["a"][step]
            assert e1 is None and e2 is None
            assert np.array_equal(c1, c2), f"{name} {order} step {step}"
            assert (w1 is None and w2 is None) or np.array_equal(w1, w2)
            assert i1 == i2
        assert_same_state(alone_members["a"], members["a"])


@pytest.mark.parametrize("name, options", POPULATION_CASES, ids=IDS)
def test_population_equals_the_single_member_path(name, options):
    """Batched solvers within RTOL of ``coefficients_from_gram`` member by member (the same
    iteration counts and fallbacks); the looping methods bit for bit."""
    K, steps = 6, 5
    streams = member_inputs(K, steps)
    together, members = run_population(name, options, "abc", streams, K, steps)
    for key in "abc":
        single = make(name, K, **options)
        for step in range(steps):
            c, w, info, error = together[key][step]
            try:
                ref = single.coefficients_from_gram(streams[key][step], ctx_for(K, step, seed=ord(key)))
            except ValueError as ref_error:
                assert isinstance(error, ValueError) and str(error) == str(ref_error)
                assert np.isnan(c).all()
                continue
            assert error is None
            np.testing.assert_allclose(c, ref.coefficients, rtol=RTOL, atol=0.0)
            assert (w is None) == (ref.weights is None)
            if w is not None:
                np.testing.assert_allclose(w, ref.weights, rtol=RTOL, atol=0.0)
            assert info.keys() == ref.info.keys()
            for k in ("iterations", "fallback_used", "stationary", "reused", "lambda"):
                if k in info:
                    assert info[k] == pytest.approx(ref.info[k], rel=RTOL, abs=0.0), k
        assert_same_state(single, members[key], rtol=RTOL)


def test_a_failing_member_gets_an_error_slot_and_the_others_go_on():
    K = 5
    M = np.stack([gram(random_G(K, seed=s)) for s in range(3)])
    M[1, 3, 3] = np.nan
    members = [make("nashmtl", K) for _ in range(3)]
    before = members[1].state_dict()
    out = population_coefficients(members, M, [ctx_for(K, 0, seed=s) for s in range(3)])
    assert out.failed.tolist() == [False, True, False]
    assert isinstance(out.errors[1], ValueError) and "non-finite" in str(out.errors[1]) and out.results[1] is None
    assert np.isnan(out.coefficients[1]).all() and np.isfinite(out.coefficients[[0, 2]]).all()
    assert_same_state(members[1], type(members[1])(K)) and before["step"] == members[1].step == 0
    # a method raising for one member (FAMO without losses) fails that member only
    famo = [make("famo", K) for _ in range(2)]
    no_losses = AggContext(step=0, task_ids=torch.arange(K))
    out = population_coefficients(famo, M[[0, 2]], [no_losses, ctx_for(K, 0)])
    assert out.failed.tolist() == [True, False] and "losses" in str(out.errors[0])


def test_a_failing_batched_solve_is_redone_member_by_member(monkeypatch):
    """If the batched kernel raises, each member is solved alone by it: the member that raises gets
    the error, the others their own results, bit for bit as without that member."""
    K = 5
    M = np.stack([gram(random_G(K, seed=s)) for s in range(3)])
    kernel = batched.positive_fixed_point_batch

    def fragile(M_batch, *args, **kwargs):
        if np.any(M_batch[:, 0, 0] == M[1, 0, 0]):
            raise RuntimeError("solver bug")
        return kernel(M_batch, *args, **kwargs)

    monkeypatch.setattr("mtrl.aggregators.fixed_point.positive_fixed_point_batch", fragile)
    members = [make("nashmtl", K) for _ in range(3)]
    out = population_coefficients(members, M, [ctx_for(K, 0) for _ in range(3)])
    assert out.failed.tolist() == [False, True, False] and "solver bug" in str(out.errors[1])
    assert members[1].step == 0  # the failed member's state is untouched
    pair = population_coefficients([make("nashmtl", K) for _ in range(2)], M[[0, 2]], [ctx_for(K, 0) for _ in range(2)])
    assert np.array_equal(out.coefficients[[0, 2]], pair.coefficients)
    assert isolate_failures(lambda rows: [int(r) for r in rows], 3) == [0, 1, 2]


def test_nash_t_members_on_different_paths_in_one_call():
    """One member solves at this step, the other reuses its weights (with M for the clipping)."""
    K = 4
    M = np.stack([gram(random_G(K, seed=s)) for s in range(2)])
    a, b = make("nashmtl", K, update_every=2), make("nashmtl", K, update_every=2)
    b.coefficients_from_gram(M[1], ctx_for(K, 0))  # b solved last step: it reuses now
    stored = b.alpha.clone()
    out = population_coefficients([a, b], M, [ctx_for(K, 1), ctx_for(K, 1)])
    assert out.results[0].info["fallback_used"] == 0.0 and out.results[1].info == {"reused": 1.0, "norm": pytest.approx(out.results[1].info["norm"])}
    assert torch.equal(b.alpha, stored) and (a.step, b.step) == (1, 2)
    np.testing.assert_array_equal(out.results[1].weights, stored.numpy())


def test_malformed_population_calls_raise():
    K = 3
    M = np.stack([gram(random_G(K))] * 2)
    agg = make("nashmtl", K)
    with pytest.raises(ValueError, match="its own aggregator object"):
        population_coefficients([agg, agg], M, [ctx_for(K, 0)] * 2)
    with pytest.raises(ValueError, match=r"M \[S, K, K\]"):
        population_coefficients([agg], M, [ctx_for(K, 0)])
