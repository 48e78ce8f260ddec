"""Per-call time of every aggregator against the Gram matrix, measured side by side.

For K = 10 and 50 and P = 343,000 (the MT10 critic size), a float32 G with a common component:
the Gram matrix ``M = G G^T`` (float32 matmul, cast to float64: what every G-based method pays),
each method's full call, and the K x K Nash solve alone. Prints ms and ratios, and checks the
DESIGN §8 targets: Nash solve <= 1 ms (K = 10) / 5 ms (K = 50), ``nashmtl`` <= 1.5 x Gram + 1 ms,
``cagrad`` <= 1.5 x Gram + 2 ms.

    mtrl bench aggregators [--sizes 10 50] [--params 343000] [--repeats 15] [--json FILE]
"""

from __future__ import annotations

import argparse

import torch

from benchmarks.common import print_table, time_interleaved, write_json
from mtrl.aggregators import REGISTRY, AggContext, make
from mtrl.aggregators.solvers import gram, positive_fixed_point

TARGETS = {  # name: (multiple of the Gram time, extra ms)
    "nashmtl": (1.5, 1.0),
    "cagrad": (1.5, 2.0),
}
SOLVE_TARGET_MS = {10: 1.0, 50: 5.0}


def bench_size(K: int, P: int, repeats: int) -> dict:
    gen = torch.Generator().manual_seed(K)
    G = 0.5 * torch.randn(P, generator=gen) + torch.randn(K, P, generator=gen)  # [K, P] float32
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mtrl bench aggregators", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 50], help="numbers of tasks K")
    parser.add_argument("--params", type=int, default=343_000, help="P, columns of G")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args(argv)
    payload = {"benchmark": "aggregators", "params": args.params, "sizes": {}}
    for K in args.sizes:
        payload["sizes"][str(K)] = bench_size(K, args.params, args.repeats)
    write_json(args.json, payload)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
