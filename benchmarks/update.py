"""Full multi-task SAC update per aggregator, relative to LS, measured side by side.

One ``MTSAC.update`` (critic + actor + temperature + target update) of the paper configuration
(3 x 400 networks, 128 transitions per task, obs 39, action 4) on random batches, for K = 10
and K = 50. ``ls`` needs one backward per component; G-based methods build the per-task
Jacobian; ``nashmtl(T=100)`` is Nash-MTL-100 averaged over its schedule; ``auxinash`` /
``auxilearn`` include their outer step amortised over 25 / 50 updates, ``(inner)`` is without it,
and the difference gives the cost of one outer step. Every method uses the trainer's default
Jacobian engine ("auto": "linear" for these networks); ``name(engine)`` runs a registry method
with another engine (``cagrad(loop)``: the reference code's K backward passes). docs/design.md §8
targets: Nash-MTL (T = 1) <= 1.3 x LS, CAGrad <= 1.3 x LS, CAGrad-Fast at K = 50 <= 0.5 x CAGrad.

    mtrl bench update [--sizes 10 50] [--methods ...] [--device auto] [--repeats 5] [--json FILE]
    mtrl bench update --profile [--json FILE]    # host syncs and ops per update (benchmarks/profiling.py)
    mtrl bench update --compile [--json FILE]    # agent.compile vs eager, quick and paper sizes

Every run also prints the cost of the gradient diagnostics of a log step (``diagnostics=True``:
for LS an extra Jacobian pass, for G-based methods only K x K algebra), amortised over
``log_every`` = 1000 updates and given as a fraction of an LS update (target < 1%).
"""

from __future__ import annotations

import argparse
import time

import torch

from mtrl.agents.mtsac import MTSAC, HyperBatches
from mtrl.benchmarks.common import print_table, time_interleaved, write_json
from mtrl.benchmarks.profiling import count_step
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


def random_batch(K: int, B: int, device: torch.device) -> Batch:
    gen = torch.Generator().manual_seed(K)
    return Batch(
        obs=torch.randn(K, B, 39, generator=gen).to(device),
        action=(torch.rand(K, B, 4, generator=gen) * 2 - 1).to(device),
        reward=torch.randn(K, B, generator=gen).to(device),
        next_obs=torch.randn(K, B, 39, generator=gen).to(device),
        done=torch.zeros(K, B).to(device),
    )


def make_agent(K: int, hidden: int, device: torch.device, num_layers: int = 3, compile: bool = False) -> MTSAC:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return MTSAC(39, 4, K, AgentConfig(hidden_dim=hidden, num_layers=num_layers, compile=compile), device=device)


def updater(agent: MTSAC, label: str, K: int, batch: Batch, device: torch.device, hyper_batches=None, diagnostics: bool = False):
    """A function running one update of ``label`` (a whole schedule for the labelled variants)."""
    name, engine = _engine_label(label) or (label, "auto")
    name, options, period = VARIANTS.get(label, (name, {}, 1))
    critic, actor = make(name, K, **options), make(name, K, **options)
    state = {"step": 0}
    agent_gen = torch.Generator(device=device).manual_seed(0)
    cpu_gen = torch.Generator().manual_seed(0)

    def update():
        agent.jacobian_method = engine
        for _ in range(period):
            agent.update(
                batch, state["step"], critic, actor, generator=agent_gen, aggregator_generator=cpu_gen,
                main_task=0, hyper_batches=hyper_batches, diagnostics=diagnostics,
            )
            state["step"] += 1

    return update


def bench_size(K: int, B: int, hidden: int, methods: list[str], repeats: int, device: torch.device) -> dict:
    batch = random_batch(K, B, device)
    agent = make_agent(K, hidden, device)
    initial = agent.training_state()
    # the bilevel methods' outer step samples fresh batches; here: the same random batch, main task 0
    hyper_batches = HyperBatches(
        train=lambda: batch, val=lambda: Batch(**{k: v[:1] for k, v in vars(batch).items()}), val_tasks=torch.tensor([0])
    )
    functions = {label: updater(agent, label, K, batch, device, hyper_batches) for label in methods}
    for label in ("ls", "nashmtl"):  # a log step: the same update plus the gradient diagnostics
        if label in methods:
            functions[f"{label}+diagnostics"] = updater(agent, label, K, batch, device, hyper_batches, diagnostics=True)
    times = time_interleaved(functions, repeats, warmup=1, device=device)
    for label, (_, _, period) in VARIANTS.items():
        if label in times:
            times[label] /= period
    agent.load_training_state(initial)
    base = times["ls"]
    diagnostics = {}
    for label in ("ls", "nashmtl"):
        if f"{label}+diagnostics" in times:
            extra = times.pop(f"{label}+diagnostics") - times[label]
            diagnostics[label] = {"extra_ms_per_log_step": extra * 1e3, "amortised_fraction_of_ls": extra / LOG_EVERY / base}
    results = {label: {"ms": t * 1e3, "ratio": t / base} for label, t in times.items()}
    print(f"\nK = {K}, batch {K} x {B}, hidden {hidden}, device {device}; median of {repeats} interleaved updates")
    print_table(["method", "ms/update", "x LS"], [[label, t * 1e3, t / base] for label, t in times.items()])
    checks = []
    for label, cost in diagnostics.items():
        fraction = cost["amortised_fraction_of_ls"]
        print(f"  diagnostics of a log step, {label}: +{cost['extra_ms_per_log_step']:.1f} ms, amortised over "
              f"log_every = {LOG_EVERY}: {100 * fraction:.3f}% of an LS update")
        checks.append({"target": f"{label} diagnostics amortised < 1% of an LS update", "ratio": fraction, "pass": fraction < 0.01})
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
    return {"methods": results, "targets": checks, "diagnostics": diagnostics}


def profile_size(K: int, B: int, hidden: int, methods: list[str], device: torch.device) -> dict:
    """Syncs and ops per update (a non-log step) of each method, from ``mtrl.benchmarks.profiling``."""
    batch = random_batch(K, B, device)
    out = {}
    for label in methods:
        agent = make_agent(K, hidden, device)
        update = updater(agent, label, K, batch, device)
        update()  # warm-up: optimizer state, aggregator state
        counts = count_step(lambda _i: update(), 0, 3)
        t0 = time.perf_counter()
        update()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        counts["ms"] = (time.perf_counter() - t0) * 1e3
        counts.pop("ops")
        out[label] = counts
    print(f"\nK = {K}, batch {K} x {B}, hidden {hidden}, device {device}; per update, a non-log step")
    print_table(
        ["method", "syncs", "(scalar reads", "Gram transfers)", "ops", "raw syncs", "raw ops", "ms"],
        [[label, c["syncs_per_update"], c["scalar_reads_per_update"], c["host_transfers_per_update"], c["ops_per_update"],
          c["raw_syncs_per_update"], c["raw_ops_per_update"], c["ms"]] for label, c in out.items()],
    )
    return out


PROFILE_TARGETS = {"ls": 1, "nashmtl": 3, "cagrad": 3}
SIZES = {"quick": (64, 2, 32), "paper": (400, 3, 128)}  # hidden, layers, transitions per task (K = 10)


def compile_size(size: str, methods: list[str], repeats: int, device: torch.device) -> dict:
    """agent.compile vs eager per method, interleaved; the first (compiling) updates are warm-up."""
    hidden, layers, B = SIZES[size]
    K = 10
    batch = random_batch(K, B, device)
    eager, compiled = make_agent(K, hidden, device, layers), make_agent(K, hidden, device, layers, compile=True)
    functions = {}
    t0 = time.perf_counter()
    for label in methods:
        functions[f"{label}|eager"] = updater(eager, label, K, batch, device)
        functions[f"{label}|compiled"] = updater(compiled, label, K, batch, device)
        functions[f"{label}|compiled"]()  # compiles (each piece once for all methods)
    print(f"\n{size} size ({layers} x {hidden}, batch {K} x {B}): compiled in {time.perf_counter() - t0:.0f} s")
    times = time_interleaved(functions, repeats, warmup=2, device=device)
    out = {}
    for label in methods:
        e, c = times[f"{label}|eager"], times[f"{label}|compiled"]
        out[label] = {"eager_ms": e * 1e3, "compiled_ms": c * 1e3, "ratio": c / e}
    print_table(["method", "eager ms", "compiled ms", "compiled / eager"],
                [[label, r["eager_ms"], r["compiled_ms"], r["ratio"]] for label, r in out.items()])
    if compiled.compile_fallbacks:
        print(f"  eager fallbacks: {compiled.compile_fallbacks}")
    return out


COMPILE_TARGETS = {"quick": 0.8, "paper": 1.0}
COMPILE_METHODS = ["ls", "nashmtl", "cagrad", "cagrad_fast", "pcgrad", "mgda", "imtlg", "fairgrad", "famo"]
LOG_EVERY = 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mtrl bench update", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 50])
    parser.add_argument("--methods", nargs="+", default=None, help="registry names, the labelled variants, or name(engine) with engine linear|vmap|loop, e.g. cagrad(loop) (default: all registry methods and the variants)")
    parser.add_argument("--batch", type=int, default=128, help="transitions per task")
    parser.add_argument("--hidden", type=int, default=400)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json")
    parser.add_argument("--profile", action="store_true", help="count host syncs and ops per update instead of timing methods against LS")
    parser.add_argument("--compile", action="store_true", help="time agent.compile against eager at the quick and paper sizes")
    args = parser.parse_args(argv)
    configure_allocator()
    device = resolve_device(args.device)
    if args.profile or args.compile:
        return _profile_or_compile(args, device)
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


def _profile_or_compile(args: argparse.Namespace, device: torch.device) -> int:
    payload: dict = {"benchmark": "update", "device": str(device)}
    checks = []
    if args.profile:
        methods = args.methods or ["ls", "nashmtl", "cagrad", "cagrad_fast", "pcgrad", "mgda", "fairgrad"]
        by_size = {str(K): profile_size(K, args.batch, args.hidden, methods, device) for K in args.sizes}
        payload["profile"] = {
            label: {
                "syncs_per_update": max(by_size[k][label]["syncs_per_update"] for k in by_size),
                "ops_per_update": max(by_size[k][label]["ops_per_update"] for k in by_size),
                "by_size": {k: by_size[k][label] for k in by_size},
            }
            for label in methods
        }
        for label, limit in PROFILE_TARGETS.items():
            if label in payload["profile"]:
                syncs = payload["profile"][label]["syncs_per_update"]
                checks.append({"target": f"{label} syncs per update <= {limit} (K = {', '.join(by_size)})", "value": syncs, "pass": syncs <= limit})
    if args.compile:
        methods = args.methods or COMPILE_METHODS
        payload["compiled_vs_eager"] = {size: compile_size(size, methods, args.repeats, device) for size in SIZES}
        for size, limit in COMPILE_TARGETS.items():
            for label, row in payload["compiled_vs_eager"][size].items():
                checks.append({"target": f"{size}: {label} compiled <= {limit} x eager", "value": row["ratio"], "pass": row["ratio"] <= limit})
    for check in checks:
        print(f"  {'PASS' if check['pass'] else 'FAIL'}  {check['target']}: {check['value']:.2f}")
    payload["targets"] = checks
    write_json(args.json, payload)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
