"""The learner side of a population (``agents/population.py``): one batched update of S members.

``mtrl bench population`` runs ``profile`` and ``throughput`` from here with the other parts and
writes the issue's comparisons; this command runs them alone, and ``--drift``.

Three measurements, each side by side in one run (the machines here are noisy: ratios only):

* ``--profile`` (default on): compute-like ops and host syncs per update (the counter of
  ``mtrl bench update --profile``, ``benchmarks/profiling.py``) for populations of S = 1 and 10,
  paper networks (3 x 400, 128 transitions per task) and quick networks (2 x 64, 32 per task),
  K = 10. ``ops`` counts every compute-like aten op; ``host ops`` are the ones inside the members'
  aggregator calls (host tensors: on a GPU they launch no kernel) and ``device ops`` the rest.
  Targets: device ops(S = 10) <= 1.3 x device ops(S = 1) for ls and nashmtl (the per-member
  random draws included), syncs(S = 10) == syncs(S = 1) (0 for ls, one Gram transfer per
  G-based component).
* ``--throughput``: member-updates per second, a population of 8 against 8 single ``MTSAC``
  updates (quick networks, fixed random batches, the replay left out), one thread by default.
* ``--drift``: a member's parameters against ``MTSAC.update``'s from the same state,
  ``||theta_pop - theta_single|| / ||theta_single||`` after 1 and after N updates.

    mtrl bench population_update [--sizes paper quick] [--methods ls nashmtl] [--profile]
        [--throughput] [--drift] [--updates 100] [--threads 1] [--json FILE]
"""

from __future__ import annotations

import argparse
import time

import torch

from mtrl.agents.mtsac import MTSAC
from mtrl.agents.population import HOST_STEP, PopulationSAC
from mtrl.aggregators import make
from mtrl.benchmarks.common import print_table, time_interleaved, write_json
from mtrl.benchmarks.profiling import count_step
from mtrl.config import AgentConfig
from mtrl.jacobian import configure_allocator
from mtrl.replay import Batch

#: name -> (hidden, layers, transitions per task); K = 10, obs 39, action 4 (MetaWorld MT10)
SIZES = {"quick": (64, 2, 32), "paper": (400, 3, 128), "tiny": (16, 2, 4)}  # tiny: the tests' size
K, OBS, ACT = 10, 39, 4
OPS_TARGET = 1.3


def _config(size: str) -> AgentConfig:
    hidden, layers, _ = SIZES[size]
    return AgentConfig(hidden_dim=hidden, num_layers=layers)


def _single(seed: int, cfg: AgentConfig, device: torch.device) -> MTSAC:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return MTSAC(OBS, ACT, K, cfg, device=device)


def _batch(seed: int, B: int, device: torch.device) -> Batch:
    gen = torch.Generator().manual_seed(seed)
    return Batch(
        obs=torch.randn(K, B, OBS, generator=gen).to(device),
        action=(torch.rand(K, B, ACT, generator=gen) * 2 - 1).to(device),
        reward=torch.randn(K, B, generator=gen).to(device),
        next_obs=torch.randn(K, B, OBS, generator=gen).to(device),
        done=(torch.rand(K, B, generator=gen) < 0.01).float().to(device),
    )


def _stack(batches: list[Batch]) -> Batch:
    return Batch(**{f: torch.stack([getattr(b, f) for b in batches]) for f in ("obs", "action", "reward", "next_obs", "done")})


class _Members:
    """S members' aggregators, generators and a fixed stacked batch, and one update of them all."""

    def __init__(self, size: str, method: str, S: int, device: torch.device) -> None:
        cfg = _config(size)
        B = SIZES[size][2]
        self.population = PopulationSAC.from_states([_single(s, cfg, device).training_state() for s in range(S)], OBS, ACT, K, cfg, device)
        self.aggs = [(make(method, K), make(method, K)) for _ in range(S)]
        self.generators = [torch.Generator(device=device).manual_seed(s) for s in range(S)]
        self.agg_generators = [torch.Generator().manual_seed(1000 + s) for s in range(S)]
        self.batch = _stack([_batch(s, B, device) for s in range(S)])
        self.step = 0

    def update(self, _i: int = 0) -> dict:
        out = self.population.update(
            self.batch, self.step, [c for c, _ in self.aggs], [a for _, a in self.aggs], self.generators,
            aggregator_generators=self.agg_generators,
        )
        self.step += 1
        return out


def profile(sizes: list[str], methods: list[str], members: tuple[int, ...], device: torch.device) -> dict:
    """Ops and syncs per update of populations of each size in ``members``."""
    out: dict = {}
    for size in sizes:
        rows = []
        for method in methods:
            for S in members:
                run = _Members(size, method, S, device)
                run.update()  # warm-up: optimizer and aggregator state
                counts = count_step(run.update, 1, 2, host_labels=(HOST_STEP,))
                counts.pop("ops")
                counts["device_ops_per_update"] = counts["ops_per_update"] - counts["host_ops_per_update"]
                out.setdefault(size, {}).setdefault(method, {})[str(S)] = counts
                rows.append([method, S, counts["ops_per_update"], counts["host_ops_per_update"], counts["device_ops_per_update"],
                             counts["syncs_per_update"], counts["host_transfers_per_update"]])
        hidden, layers, B = SIZES[size]
        print(f"\n{size} networks ({layers} x {hidden}, K = {K}, {B} transitions per task), device {device}; per update")
        print_table(["method", "S", "ops", "host ops", "device ops", "syncs", "(Gram transfers)"], rows)
    return out


def throughput(size: str, method: str, S: int, repeats: int, device: torch.device) -> dict:
    """Member-updates per second: one population update of S members against S single updates."""
    cfg, B = _config(size), SIZES[size][2]
    run = _Members(size, method, S, device)
    singles = [_single(s, cfg, device) for s in range(S)]
    single_aggs = [(make(method, K), make(method, K)) for _ in range(S)]
    single_gens = [torch.Generator(device=device).manual_seed(s) for s in range(S)]
    single_agg_gens = [torch.Generator().manual_seed(1000 + s) for s in range(S)]
    batches = [_batch(s, B, device) for s in range(S)]
    state = {"step": 0}

    def singles_update() -> None:
        for s, agent in enumerate(singles):
            agent.update(batches[s], state["step"], *single_aggs[s], generator=single_gens[s], aggregator_generator=single_agg_gens[s])
        state["step"] += 1

    times = time_interleaved({"population": run.update, "singles": singles_update}, repeats, warmup=2, device=device)
    rates = {name: S / t for name, t in times.items()}
    ratio = rates["population"] / rates["singles"]
    print(f"\n{size} networks, {method}, {S} members, device {device}, {torch.get_num_threads()} thread(s); "
          f"median of {repeats} interleaved rounds")
    print_table(["learner", "ms per round", "member-updates/s"], [[n, times[n] * 1e3, rates[n]] for n in times])
    print(f"  population / single: {ratio:.2f}x member-updates per second")
    return {"ms": {n: t * 1e3 for n, t in times.items()}, "member_updates_per_s": rates, "ratio": ratio}


def drift(size: str, method: str, updates: int, device: torch.device) -> dict:
    """||theta_member - theta_single|| / ||theta_single|| after 1 and ``updates`` updates (model)."""
    cfg, B = _config(size), SIZES[size][2]
    agent = _single(0, cfg, device)
    population = PopulationSAC.from_states([agent.training_state()], OBS, ACT, K, cfg, device)
    aggs = [(make(method, K), make(method, K)) for _ in range(2)]
    gens = [torch.Generator(device=device).manual_seed(0) for _ in range(2)]
    agg_gens = [torch.Generator().manual_seed(1) for _ in range(2)]

    def relative() -> float:
        a, b = agent.training_state()["model"], population.member_state(0)["model"]
        num = sum(float((a[k] - b[k]).double().norm() ** 2) for k in a)
        return (num / sum(float(a[k].double().norm() ** 2) for k in a)) ** 0.5

    out = {}
    for step in range(updates):
        batch = _batch(step, B, device)
        agent.update(batch, step, *aggs[0], generator=gens[0], aggregator_generator=agg_gens[0])
        population.update(_stack([batch]), step, [aggs[1][0]], [aggs[1][1]], [gens[1]], aggregator_generators=[agg_gens[1]])
        if step + 1 in (1, updates):
            out[str(step + 1)] = relative()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mtrl bench population_update", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["quick", "paper"], choices=list(SIZES))
    parser.add_argument("--methods", nargs="+", default=["ls", "nashmtl"])
    parser.add_argument("--members", type=int, nargs=2, default=[1, 10], help="the two population sizes profiled")
    parser.add_argument("--profile", action="store_true", help="ops and syncs (the default when nothing else is asked)")
    parser.add_argument("--throughput", action="store_true", help="member-updates per second, population vs singles")
    parser.add_argument("--throughput-members", type=int, default=8)
    parser.add_argument("--throughput-size", default="quick", choices=list(SIZES))
    parser.add_argument("--drift", action="store_true", help="a member against MTSAC.update from the same state")
    parser.add_argument("--drift-methods", nargs="+", default=["ls", "nashmtl", "cagrad_fast"])
    parser.add_argument("--updates", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    configure_allocator()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if not (args.profile or args.throughput or args.drift):
        args.profile = True
    payload: dict = {"benchmark": "population_update", "device": str(device), "comparisons": {}}
    small, large = args.members
    if args.profile:
        payload["profile"] = counts = profile(args.sizes, args.methods, (small, large), device)
        payload["syncs"] = {}
        for size, by_method in counts.items():
            suffix = "" if size == "paper" else f"_{size}"
            for method, by_S in by_method.items():
                a, b = by_S[str(small)], by_S[str(large)]
                ratio = b["device_ops_per_update"] / a["device_ops_per_update"]
                payload["comparisons"][f"ops_s{large}_vs_s{small}_{method}{suffix}"] = {
                    "ratio": ratio, "better": "lower", "target": OPS_TARGET, "pass": ratio <= OPS_TARGET,
                    "counted": "device ops (host ops of the aggregator calls apart)",
                    "raw_ratio": b["ops_per_update"] / a["ops_per_update"],
                }
                payload["syncs"].setdefault(f"{method}{suffix}", {})[str(small)] = a["syncs_per_update"]
                payload["syncs"][f"{method}{suffix}"][str(large)] = b["syncs_per_update"]
                same = a["syncs_per_update"] == b["syncs_per_update"]
                print(f"  {'PASS' if ratio <= OPS_TARGET else 'FAIL'}  {size} {method}: device ops S={large} / S={small} = "
                      f"{ratio:.3f} (all ops {b['ops_per_update'] / a['ops_per_update']:.3f}); "
                      f"{'PASS' if same else 'FAIL'}  syncs {a['syncs_per_update']:g} -> {b['syncs_per_update']:g}")
    if args.throughput:
        payload["throughput"] = {}
        for method in args.methods:
            row = throughput(args.throughput_size, method, args.throughput_members, args.repeats, device)
            payload["throughput"][method] = row
            payload["comparisons"][f"member_updates_population_vs_single_{args.throughput_size}_{method}"] = {
                "ratio": row["ratio"], "better": "higher", "target": None, "pass": None,
            }
    if args.drift:
        payload["drift"] = {}
        for size in args.sizes:
            for method in args.drift_methods:
                t0 = time.perf_counter()
                payload["drift"].setdefault(size, {})[method] = row = drift(size, method, args.updates, device)
                print(f"  drift {size} {method}: " + ", ".join(f"after {n}: {v:.2e}" for n, v in row.items())
                      + f"  ({time.perf_counter() - t0:.0f} s)")
    write_json(args.json, payload)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
