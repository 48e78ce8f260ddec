"""Property assertions written once and applied to every method that claims them (ids G1-G5: docs/aggregators.md, "Checked properties").

Inputs are float64 random matrices with a common component, so they are not Pareto-stationary;
degenerate inputs are built explicitly.
"""

from __future__ import annotations

import torch

from mtrl.aggregators import AggContext, make

TOL = 1e-8


def random_G(K: int, P: int = 40, seed: int = 0, common: float = 0.5) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(P, generator=gen, dtype=torch.float64)
    scales = torch.rand(K, 1, generator=gen, dtype=torch.float64) * 2.8 + 0.2
    return common * base + torch.randn(K, P, generator=gen, dtype=torch.float64) * scales


def context(K: int, step: int = 0, seed: int = 0, losses=None, perf=None, task_ids=None) -> AggContext:
    """A context with positive losses and a seeded generator (methods that need them get them)."""
    gen = torch.Generator().manual_seed(seed)
    if losses is None:
        losses = torch.linspace(0.5, 2.0, K, dtype=torch.float64)
    return AggContext(
        step=step,
        task_ids=torch.arange(K) if task_ids is None else task_ids,
        losses=losses,
        perf=perf,
        generator=gen,
    )


def run(name: str, G: torch.Tensor, ctx: AggContext | None = None, **options):
    agg = make(name, num_tasks=G.shape[0] if ctx is None else max(int(ctx.task_ids.max()) + 1, G.shape[0]), **options)
    return agg(G, ctx if ctx is not None else context(G.shape[0]))


def assert_well_formed(out, G: torch.Tensor) -> None:
    """G1: shape (P,), G's dtype, finite; the weights reproduce the direction before clipping."""
    assert out.direction.shape == (G.shape[1],)
    assert out.direction.dtype == G.dtype and out.direction.device == G.device
    assert torch.isfinite(out.direction).all()
    if out.weights is not None:
        assert out.weights.shape == (G.shape[0],)
        assert torch.isfinite(out.weights).all()
    assert all(isinstance(v, float) for v in out.info.values()), out.info


def assert_permutation_equivariant(name: str, G: torch.Tensor, **options) -> None:
    """G2: permuting the rows (and the per-task losses) leaves d unchanged and permutes w."""
    K = G.shape[0]
    perm = torch.randperm(K, generator=torch.Generator().manual_seed(1))
    ctx = context(K)
    out = run(name, G, ctx, **options)
    permuted = AggContext(step=0, task_ids=torch.arange(K), losses=ctx.losses[perm], generator=torch.Generator().manual_seed(0))
    out_p = run(name, G[perm], permuted, **options)
    torch.testing.assert_close(out_p.direction, out.direction, rtol=1e-6, atol=1e-9)
    if out.weights is not None:
        torch.testing.assert_close(out_p.weights, out.weights[perm], rtol=1e-6, atol=1e-9)


def assert_rotation_equivariant(name: str, G: torch.Tensor, **options) -> None:
    """G3: for orthogonal Q, w(GQ) = w(G) and d(GQ) = d(G) Q."""
    Q, _ = torch.linalg.qr(torch.randn(G.shape[1], G.shape[1], generator=torch.Generator().manual_seed(2), dtype=G.dtype))
    out = run(name, G, context(G.shape[0]), **options)
    out_q = run(name, G @ Q, context(G.shape[0]), **options)
    torch.testing.assert_close(out_q.direction, out.direction @ Q, rtol=1e-6, atol=1e-9)
    if out.weights is not None:
        torch.testing.assert_close(out_q.weights, out.weights, rtol=1e-6, atol=1e-9)


def assert_state_round_trip(name: str, G: torch.Tensor, steps: int = 4, **options) -> None:
    """G5: a state_dict taken mid-run and loaded into a fresh instance gives identical outputs."""
    K = G.shape[0]
    a = make(name, num_tasks=K, **options)
    for step in range(steps):
        a(G * (1 + 0.1 * step), context(K, step=step, seed=step, losses=torch.linspace(0.5, 2.0, K) * (1 + step)))
    b = make(name, num_tasks=K, **options)
    b.load_state_dict(a.state_dict())
    for step in range(steps, steps + 3):
        ctx = context(K, step=step, seed=step, losses=torch.linspace(0.5, 2.0, K) / (1 + step))
        out_a, out_b = a(G * (1 - 0.1 * step), ctx), b(G * (1 - 0.1 * step), context(K, step=step, seed=step, losses=ctx.losses))
        assert torch.equal(out_a.direction, out_b.direction), f"{name}: outputs differ after state round trip"


def degenerate_inputs(K: int = 4, P: int = 30) -> dict[str, torch.Tensor]:
    """Zero rows, duplicate rows, K = 1, rank-deficient G, one row 1e6 x larger, all zero."""
    G = random_G(K, P)
    zero_row = G.clone()
    zero_row[1] = 0.0
    duplicate = G.clone()
    duplicate[2] = duplicate[0]
    rank_deficient = random_G(2, P) .T @ torch.randn(2, K, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    large = G.clone()
    large[0] *= 1e6
    return {
        "zero_row": zero_row,
        "duplicate_rows": duplicate,
        "single_task": G[:1].clone(),
        "rank_deficient": rank_deficient.T.contiguous(),
        "one_row_1e6_larger": large,
        "all_zero": torch.zeros(K, P, dtype=torch.float64),
        "opposite_pair": torch.stack([G[0], -G[0]]),
    }


def stationary_inputs(P: int = 60, dtype: torch.dtype = torch.float64) -> dict[str, torch.Tensor]:
    """Exactly Pareto-stationary G (0 in the convex hull of the rows), where MGDA's min-norm point
    is 0 and no Nash solution exists: anti-parallel pairs and a row that is minus a combination."""
    gen = torch.Generator().manual_seed(11)
    g = torch.randn(P, generator=gen, dtype=dtype)
    hull = torch.randn(3, P, generator=gen, dtype=dtype)
    hull[2] = -(0.3 * hull[0] + 0.7 * hull[1])
    pair_in_10 = torch.randn(10, P, generator=gen, dtype=dtype)
    pair_in_10[4] = -2.5 * pair_in_10[1]
    pair_in_50 = torch.randn(50, P, generator=gen, dtype=dtype)
    pair_in_50[30] = -0.5 * pair_in_50[7]
    sum_zero = torch.randn(10, P, generator=gen, dtype=dtype)
    sum_zero[9] = -sum_zero[:9].sum(0)
    return {
        "anti_parallel_pair": torch.stack([g, -3.0 * g]),
        "minus_a_convex_combination": hull,
        "anti_parallel_pair_among_10": pair_in_10,
        "anti_parallel_pair_among_50": pair_in_50,
        "rows_summing_to_zero": sum_zero,
    }
