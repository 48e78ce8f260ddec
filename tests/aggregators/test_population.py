"""The Gram-level entry point ``coefficients_from_gram`` against ``aggregate(G, ctx)``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mtrl.aggregators import REGISTRY, AggContext, make
from mtrl.aggregators.from_gram import GramAggregator
from mtrl.aggregators.solvers import gram
from tests.aggregators.properties import random_G


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
    for step in range(4):
        G = random_G(K, seed=step).to(dtype) * (1 + step)
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
