"""Full multi-task SAC update per aggregator, relative to LS, measured side by side.

One ``MTSAC.update`` (critic + actor + temperature + target update) of the paper configuration
(3 x 400 networks, 128 transitions per task, obs 39, action 4) on random batches, for K = 10
and K = 50. ``ls`` needs one backward per component; G-based methods build the per-task
Jacobian; ``nashmtl(T=100)`` is Nash-MTL-100 averaged over its schedule; ``auxinash`` /
``auxilearn`` include their outer step amortised over 25 / 50 updates, ``(inner)`` is without it,
and the difference gives the cost of one outer step. Every method uses the trainer's default
Jacobian engine ("auto": "linear" for these networks); ``name(engine)`` runs a registry method
with another engine (``cagrad(loop)``: the reference code's K backward passes). DESIGN §8
targets: Nash-MTL (T = 1) <= 1.3 x LS, CAGrad <= 1.3 x LS, CAGrad-Fast at K = 50 <= 0.5 x CAGrad.

    mtrl bench update [--sizes 10 50] [--methods ...] [--device auto] [--repeats 5] [--json FILE]
"""

from __future__ import annotations

import argparse

import torch

from agents.mtsac import MTSAC, HyperBatches
from benchmarks.common import print_table, time_interleaved, write_json
from mtrl.aggregators import REGISTRY, make
from mtrl.config import AgentConfig
from mtrl.jacobian import configure_allocator
from mtrl.replay import Batch
from mtrl.train import resolve_device

# label -> (registry name, options, schedule length): a labelled method is timed over whole
# schedules (one call runs that many updates) and reported per update, so periodic work is
# amortised: Nash-MTL-T's weight updates, AuxiNash's / AuxiLearn's outer steps (main task 0).
VARIANTS = {
    "nashmtl(T=100)": ("nashmtl", {"update_every": 100}, 100),
    "auxinash": ("auxinash", {}, 25),
    "auxinash(inner)": ("auxinash", {"learn_preferences": False}, 1),
    "auxilearn": ("auxilearn", {}, 50),
    "auxilearn(inner)": ("auxilearn", {"hyper_every": 10**9}, 1),
}
ENGINES = ("linear", "vmap", "loop")


def _engine_label(label: str) -> tuple[str, str] | None:
    """``"cagrad(loop)"`` -> ("cagrad", "loop"); None for a label without an engine."""
    name, _, rest = label.partition("(")
    engine = rest.rstrip(")")
    return (name, engine) if engine in ENGINES and name in REGISTRY else None


def bench_size(K: int, B: int, hidden: int, methods: list[str], repeats: int, device: torch.device) -> dict:
    gen = torch.Generator().manual_seed(K)
    batch = Batch(
        obs=torch.randn(K, B, 39, generator=gen).to(device),
        action=(torch.rand(K, B, 4, generator=gen) * 2 - 1).to(device),
        reward=torch.randn(K, B, generator=gen).to(device),
        next_obs=torch.randn(K, B, 39, generator=gen).to(device),
        done=torch.zeros(K, B).to(device),
    )
    cfg = AgentConfig(hidden_dim=hidden)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        agent = MTSAC(39, 4, K, cfg, device=device)
    initial = agent.training_state()
    # the bilevel methods' outer step samples fresh batches; here: the same random batch, main task 0
    hyper_batches = HyperBatches(
        train=lambda: batch, val=lambda: Batch(**{k: v[:1] for k, v in vars(batch).items()}), val_tasks=torch.tensor([0])
    )
    functions = {}
    for label in methods:
        name, engine = _engine_label(label) or (label, "auto")
        name, options, period = VARIANTS.get(label, (name, {}, 1))
        critic, actor = make(name, K, **options), make(name, K, **options)
        state = {"step": 0}
        agent_gen = torch.Generator(device=device).manual_seed(0)
        cpu_gen = torch.Generator().manual_seed(0)

        def update(critic=critic, actor=actor, state=state, agent_gen=agent_gen, cpu_gen=cpu_gen, engine=engine, period=period):
            agent.jacobian_method = engine
            for _ in range(period):
                agent.update(
                    batch, state["step"], critic, actor, generator=agent_gen, aggregator_generator=cpu_gen,
                    main_task=0, hyper_batches=hyper_batches,
                )
                state["step"] += 1

        functions[label] = update
    times = time_interleaved(functions, repeats, warmup=1, device=device)
    for label, (_, _, period) in VARIANTS.items():
        if label in times:
            times[label] /= period
    agent.load_training_state(initial)
    base = times["ls"]
    results = {label: {"ms": t * 1e3, "ratio": t / base} for label, t in times.items()}
    print(f"\nK = {K}, batch {K} x {B}, hidden {hidden}, device {device}; median of {repeats} interleaved updates")
    print_table(["method", "ms/update", "x LS"], [[label, t * 1e3, t / base] for label, t in times.items()])
    checks = []
    for label, limit in (("nashmtl", 1.3), ("cagrad", 1.3)):
        if label in times:
            ratio = times[label] / base
            checks.append({"target": f"{label} <= {limit} x LS", "ratio": ratio, "pass": ratio <= limit})
    # CAGrad-Fast saves |S| + 1 gradients instead of K [CA §3.3]: a saving of engines that pay per
    # gradient (the reference code's loop). With a one-pass engine both need every task's forward
    # and backward, so an LS update (ls / cagrad) bounds the ratio from below.
    for suffix in ("", *(f"({e})" for e in ENGINES)):
        fast, full = f"cagrad_fast{suffix}", f"cagrad{suffix}"
        if K >= 50 and fast in times and full in times:
            ratio = times[fast] / times[full]
            engine = suffix.strip("()") or "default"
            checks.append({
                "target": f"cagrad_fast <= 0.5 x cagrad ({engine} engine)", "ratio": ratio, "pass": ratio <= 0.5,
                "floor": base / times[full],
            })
    for label, inner, period in (("auxinash", "auxinash(inner)", 25), ("auxilearn", "auxilearn(inner)", 50)):
        if label in times and inner in times:  # one outer step, from the amortised and the inner cost
            results[f"{label}: one outer step"] = {"ms": (times[label] - times[inner]) * period * 1e3, "ratio": (times[label] - times[inner]) * period / base}
            print(f"  {label}: one outer step ~ {(times[label] - times[inner]) * period * 1e3:.1f} ms = {(times[label] - times[inner]) * period / base:.2f} x LS update")
    for check in checks:
        floor = f" (an LS update is {check['floor']:.2f} x cagrad)" if "floor" in check else ""
        print(f"  {'PASS' if check['pass'] else 'FAIL'}  {check['target']}: {check['ratio']:.2f}{floor}")
    return {"methods": results, "targets": checks}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mtrl bench update", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 50])
    parser.add_argument("--methods", nargs="+", default=None, help="registry names, the labelled variants, or name(engine) with engine linear|vmap|loop, e.g. cagrad(loop) (default: all registry methods and the variants)")
    parser.add_argument("--batch", type=int, default=128, help="transitions per task")
    parser.add_argument("--hidden", type=int, default=400)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    configure_allocator()
    device = resolve_device(args.device)
    methods = args.methods or list(dict.fromkeys([*sorted(REGISTRY), *VARIANTS]))
    if "ls" not in methods:
        methods = ["ls", *methods]
    unknown = [m for m in methods if m not in REGISTRY and m not in VARIANTS and _engine_label(m) is None]
    if unknown:
        raise ValueError(
            f"unknown method(s) {unknown}; choose from {', '.join([*sorted(REGISTRY), *VARIANTS])} "
            f"or name(engine) with engine one of {', '.join(ENGINES)}"
        )
    payload = {"benchmark": "update", "device": str(device), "sizes": {}}
    for K in args.sizes:
        payload["sizes"][str(K)] = bench_size(K, args.batch, args.hidden, methods, args.repeats, device)
    write_json(args.json, payload)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
