"""Per-call time of every aggregator against the Gram matrix, measured side by side.

For K = 10 and 50 and P = 343,000 (the MT10 critic size), a float32 G with a common component:
the Gram matrix ``M = G G^T`` (float32 matmul, cast to float64: what every G-based method pays),
each method's full call, and the K x K Nash solve alone. Prints ms and ratios, and checks the
docs/design.md §8 targets: Nash solve <= 1 ms (K = 10) / 5 ms (K = 50), ``nashmtl`` <= 1.5 x Gram + 1 ms,
``cagrad`` <= 1.5 x Gram + 2 ms.

``--vs torchjd`` instead times each method that TorchJD 0.18 also has against TorchJD's
aggregator on the same G, interleaved in one run, and prints the ratio ours / TorchJD (docs/design.md §8:
every method <= 1.0 x; MGDA <= 0.5 x), then the same comparison on a K x K matrix with the same
Gram matrix, where the Gram matrix and ``w @ G`` (the same matmuls in both libraries) vanish and
only the solvers and overheads are compared. TorchJD is an optional dependency: ``pip install
'mtrl[bench]'``.

    mtrl bench aggregators [--sizes 10 50] [--params 343000] [--repeats 15] [--vs torchjd] [--json FILE]
"""

from __future__ import annotations

import argparse
import importlib.metadata

import torch

from mtrl.benchmarks.common import print_table, time_interleaved, write_json
from mtrl.aggregators import REGISTRY, AggContext, make
from mtrl.aggregators.solvers import gram, positive_fixed_point

TARGETS = {  # name: (multiple of the Gram time, extra ms)
    "nashmtl": (1.5, 1.0),
    "cagrad": (1.5, 2.0),
}
SOLVE_TARGET_MS = {10: 1.0, 50: 5.0}

# Our method (registry name, options) -> the TorchJD aggregator computing the same thing, with the
# same options. TorchJD's MGDA is Sener & Koltun's Frank-Wolfe with its default stopping rule
# (step < 1e-3, at most 100 iterations), ours is solved exactly; TorchJD's IMTLG is the
# pseudo-inverse form w ∝ M^+ sqrt(diag M), the same weights as our closed form for independent rows.
TORCHJD_PAIRS = {
    "nashmtl": ({}, lambda tj, K: tj.NashMTL(n_tasks=K, max_norm=1.0, update_weights_every=1, optim_niter=20)),
    "cagrad": ({"c": 0.4}, lambda tj, K: tj.CAGrad(c=0.4)),
    "mgda": ({}, lambda tj, K: tj.MGDA()),
    "pcgrad": ({}, lambda tj, K: tj.PCGrad()),
    "imtlg": ({}, lambda tj, K: tj.IMTLG()),
    "fairgrad": ({"alpha": 2.0}, lambda tj, K: tj.FairGrad(alpha=2.0)),
}
#: registered methods TorchJD 0.18 has no counterpart of (the loss weightings ls / mean / rlw have
#: one, Sum / Mean / Random, but the trainer never calls them with G: one backward of the weighted
#: loss replaces the Jacobian, so their per-call time on G is not a cost anybody pays)
TORCHJD_LACKS = ("auxilearn", "auxinash", "cagrad_fast", "dwa", "famo", "pivrg", "si", "uw")
VS_TORCHJD_TARGET = {"mgda": 0.5}  # every other method: 1.0


def gradient_matrix(K: int, P: int) -> torch.Tensor:
    """A float32 G [K, P] with a common component (not Pareto-stationary), seeded by K."""
    gen = torch.Generator().manual_seed(K)
    return 0.5 * torch.randn(P, generator=gen) + torch.randn(K, P, generator=gen)


def bench_size(K: int, P: int, repeats: int) -> dict:
    G = gradient_matrix(K, P)  # [K, P] float32
    losses = torch.linspace(0.5, 2.0, K)
    aggregators = {name: make(name, num_tasks=K) for name in sorted(REGISTRY)}
    aggregators["cagrad(sgd)"] = make("cagrad", num_tasks=K, solver="sgd")

    def call(name: str):
        agg = aggregators[name]
        step = call.steps[name] = call.steps.get(name, 0) + 1
        ctx = AggContext(step=step, task_ids=torch.arange(K), losses=losses, generator=torch.Generator().manual_seed(step))
        return agg(G, ctx)

    call.steps = {}
    M = gram(G)
    functions = {"gram": lambda: gram(G), "nash_solve": lambda: positive_fixed_point(M)}
    functions.update({name: (lambda n=name: call(n)) for name in aggregators})
    times = time_interleaved(functions, repeats)
    gram_ms = times["gram"] * 1e3
    rows, results = [], {"gram_ms": gram_ms, "methods": {}}
    for name, seconds in times.items():
        ms = seconds * 1e3
        results["methods"][name] = {"ms": ms, "ratio": ms / gram_ms}
        rows.append([name, ms, ms / gram_ms])
    print(f"\nK = {K}, P = {P:,} (float32 G); median of {repeats} interleaved calls")
    print_table(["method", "ms/call", "x Gram"], rows)
    checks = []
    solve_ms = times["nash_solve"] * 1e3
    checks.append({"target": f"Nash K x K solve <= {SOLVE_TARGET_MS.get(K, 5.0)} ms", "value_ms": solve_ms,
                   "ratio": solve_ms / SOLVE_TARGET_MS.get(K, 5.0), "pass": solve_ms <= SOLVE_TARGET_MS.get(K, 5.0)})
    for name, (factor, extra) in TARGETS.items():
        limit = factor * gram_ms + extra
        ms = times[name] * 1e3
        checks.append({"target": f"{name} <= {factor} x Gram + {extra} ms = {limit:.2f} ms", "value_ms": ms,
                       "ratio": ms / limit, "pass": ms <= limit})
    for check in checks:
        print(f"  {'PASS' if check['pass'] else 'FAIL'}  {check['target']}: {check['value_ms']:.3f} ms")
    results["targets"] = checks
    return results


def import_torchjd():
    try:
        import torchjd.aggregation as tj
    except ImportError as error:
        raise SystemExit(f"--vs torchjd needs TorchJD: pip install 'mtrl[bench]' ({error})") from None
    return tj


def gram_factor(G: torch.Tensor) -> torch.Tensor:
    """F [K, K] in G's dtype with ``F F^T = G G^T``: the same aggregation problem with P = K, so the
    Gram matrix and ``w @ G`` cost nothing and the time left is the K x K solve and the overhead."""
    values, vectors = torch.linalg.eigh(torch.from_numpy(gram(G)))
    return (vectors * values.clamp_min(0.0).sqrt()).to(G.dtype)


def _time_pairs(G: torch.Tensor, methods: list[str], repeats: int) -> tuple[dict, dict]:
    """Fresh instances of ours and TorchJD's per method, timed interleaved on G; (times, cosines)."""
    tj = import_torchjd()
    K = G.shape[0]
    ours = {name: make(name, num_tasks=K, **TORCHJD_PAIRS[name][0]) for name in methods}
    theirs = {name: TORCHJD_PAIRS[name][1](tj, K) for name in methods}
    steps = dict.fromkeys(methods, 0)

    def call_ours(name: str) -> torch.Tensor:
        steps[name] += 1
        ctx = AggContext(step=steps[name], task_ids=torch.arange(K), generator=torch.Generator().manual_seed(steps[name]))
        return ours[name](G, ctx).direction

    functions = {"gram": lambda: gram(G)}
    for name in methods:
        functions[name] = lambda n=name: call_ours(n)
        functions[f"torchjd:{name}"] = lambda n=name: theirs[n](G)
    times = time_interleaved(functions, repeats)
    cosines = {}
    for name in methods:
        d_ours, d_theirs = call_ours(name).double(), theirs[name](G).double()
        cosines[name] = float(d_ours @ d_theirs / (d_ours.norm() * d_theirs.norm()).clamp_min(1e-300))
    return times, cosines


def bench_vs_torchjd(K: int, P: int, repeats: int, methods: list[str]) -> dict:
    """ms per call of ours and TorchJD's aggregator on the same G, interleaved; ratio = ours / TorchJD.

    Two tables: the full call on G [K, P], and the same problem with P = K (``gram_factor``: rows
    with the same Gram matrix), where only the K x K work and the overhead of each library remain.
    Also reports the cosine between the two directions, a check that each pair computes the same
    method (PCGrad's random order differs between the two, so its cosine is only close to 1)."""
    G = gradient_matrix(K, P)  # [K, P] float32
    results = {}
    for label, matrix in [("full", G), ("k_by_k", gram_factor(G))]:
        times, cosines = _time_pairs(matrix, methods, repeats)
        part = {"gram_ms": times["gram"] * 1e3, "methods": {}}
        rows = []
        for name in methods:
            ms, ms_tj = times[name] * 1e3, times[f"torchjd:{name}"] * 1e3
            target = VS_TORCHJD_TARGET.get(name, 1.0)
            verdict = ms / ms_tj <= target
            part["methods"][name] = {"ms": ms, "torchjd_ms": ms_tj, "ratio": ms / ms_tj, "cosine": cosines[name]}
            if label == "full":
                part["methods"][name].update(target=target, **{"pass": verdict})
            rows.append([name, ms, ms_tj, ms / ms_tj] + ([f"<= {target}", "PASS" if verdict else "FAIL"] if label == "full" else [])
                        + [f"{cosines[name]:.6f}"])
        results[label] = part
        if label == "full":
            print(f"\nK = {K}, P = {P:,} (float32 G), vs TorchJD; median of {repeats} interleaved calls; Gram {part['gram_ms']:.3f} ms")
            print_table(["method", "ours ms", "TorchJD ms", "ours/TorchJD", "target", "", "cos(d, d_TorchJD)"], rows)
        else:
            print(f"K = {K}, the same Gram matrix with P = K (the K x K solve and overhead only)")
            print_table(["method", "ours ms", "TorchJD ms", "ours/TorchJD", "cos(d, d_TorchJD)"], rows)
    return {**results["full"], "k_by_k": results["k_by_k"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mtrl bench aggregators", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 50], help="numbers of tasks K")
    parser.add_argument("--params", type=int, default=343_000, help="P, columns of G")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--vs", choices=["torchjd"], help="compare with another library's aggregators instead")
    parser.add_argument("--methods", nargs="+", choices=sorted(TORCHJD_PAIRS), default=sorted(TORCHJD_PAIRS),
                        help="with --vs torchjd: the methods to compare")
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args(argv)
    payload = {"benchmark": "aggregators", "params": args.params, "sizes": {}}
    if args.vs == "torchjd":
        import_torchjd()
        version = importlib.metadata.version("torchjd")
        payload.update(benchmark="aggregators_vs_torchjd", torchjd=version, torchjd_lacks=list(TORCHJD_LACKS))
        for K in args.sizes:
            payload["sizes"][str(K)] = bench_vs_torchjd(K, args.params, args.repeats, args.methods)
        print(f"\nTorchJD {version} has no counterpart of: {', '.join(TORCHJD_LACKS)}")
    else:
        for K in args.sizes:
            payload["sizes"][str(K)] = bench_size(K, args.params, args.repeats)
    write_json(args.json, payload)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
