"""AuxiNash's illustrative example [AN §6.1, App. D.1] as a runnable study of its open readings.

The paper: a linear regression with shared weights ``W in R^2`` and no task-specific parameters;
a main task and a helpful auxiliary with optimum ``W* = (1, 1)``, a harmful auxiliary with optimum
``(-1, -4)``; main labels ``N(W*'x, sigma_main)`` with ``sigma_main = 20 sigma_h``, helpful labels
with noise ``sigma_h = 0.25``; 1000 training samples, Adam lr 1e-2, batch 256, 1000 epochs; the
preferences are updated every 25 steps by SGD with momentum 0.9, lr 5e-3 [AN App. D], L_V is the
main task's loss on "a separate batch from the training set" [AN §4.2]. Fig. 1 shows the harmful
task's preference decaying to 0 and the main task's solution ending near W*, far better than the
main task's training-set optimum.

Left open by the paper, and varied here (``READINGS``): the input distribution (N(0, I) or
U(-1, 1)^P), the harmful task's label noise (sigma_h or sigma_main), the number of parameters P
(with P = 2 and three tasks the Gram matrix is singular, and Pareto-stationary points, where no
Nash solution exists, form a 2-D region; with P = 10 the gradients are generically independent),
the data of L_V (a fresh training batch, the inner step's own batch, fresh samples from the data
distribution, or a large held-out set), the implicit-gradient accuracy (the paper's 3 Neumann
terms at lr 1e-4 or the exact inverse Hessian), and the meta learning rate.

Everything else is this project's AuxiNash (``make("auxinash")``, Algorithm 1's order, sum p = K
internally; reported as p / K, the paper's simplex) and its trainer's protocol: the direction is
written into ``W.grad`` and Adam steps. Per reading and seed the study reports the final and the
smallest preference of each task, how often the Nash solve fell back, and the main task's test
loss ``||W - W*||^2_E[xx']`` next to single-task learning (STL) and Nash-MTL (p fixed uniform).

    python -m mtrl.benchmarks.auxinash_toy [--readings paper ...] [--seeds 0 1 2] [--epochs 1000] [--json FILE]

Results and their discussion: docs/aggregators.md, "AuxiNash's illustrative example".
"""

from __future__ import annotations

import argparse
import math
from dataclasses import asdict, dataclass, replace

import torch
from torch import Tensor

from mtrl.benchmarks.common import print_table, write_json
from mtrl.aggregators import AggContext, make
from mtrl.aggregators.hypergrad import HyperContext

TASKS = ("main", "helpful", "harmful")
SIGMA_HELPFUL = 0.25
SIGMA_MAIN = 20 * SIGMA_HELPFUL
TRAIN_SAMPLES, BATCH, LR, NP = 1000, 256, 1e-2, 25


@dataclass(frozen=True)
class Reading:
    """One reading of the illustrative example (defaults: the paper's text, P = 2)."""

    name: str
    inputs: str = "normal"  # "normal": x ~ N(0, I_P); "uniform": x ~ U(-1, 1)^P
    dim: int = 2  # P, the number of shared weights
    harmful_noise: float = SIGMA_HELPFUL  # label noise of the harmful auxiliary (unstated; sigma_h)
    validation: str = "fresh"  # L_V on: "fresh" training batch | "same" batch as the inner step |
    #                            "sampled" fresh draws from the data distribution | "held_out" 10,000 draws
    hessian_batch: str = "fresh"  # L_T (its Hessian and the mixed term -G' q) on: "fresh" training
    #                               batch (the released code) | "same" batch as the inner step (G' = G of M)
    neumann: str = "paper"  # "paper": 3 terms at lr 1e-4 | "exact": H^-1 (closed form, small P)
    meta_lr: float = 5e-3
    init: float = 0.0  # the initial weights W_0 = init * 1 (unstated; 0 here unless varied)
    method: str = "auxinash"  # "auxinash" | "nashmtl" (p fixed uniform) | "stl" (the main task alone)


PAPER = Reading("paper")
READINGS = {
    r.name: r
    for r in [
        PAPER,
        replace(PAPER, name="uniform_inputs", inputs="uniform"),
        replace(PAPER, name="harmful_noise_main", harmful_noise=SIGMA_MAIN),
        replace(PAPER, name="val_same_batch", validation="same"),
        replace(PAPER, name="val_sampled", validation="sampled"),
        replace(PAPER, name="val_held_out", validation="held_out"),
        replace(PAPER, name="exact_hessian", neumann="exact"),
        replace(PAPER, name="meta_lr_x10", meta_lr=5e-2),
        replace(PAPER, name="train_same_val_held_out", hessian_batch="same", validation="held_out"),
        replace(PAPER, name="train_same_val_held_out_exact", hessian_batch="same", validation="held_out", neumann="exact"),
        replace(PAPER, name="init_far", init=3.0),
        replace(PAPER, name="init_far_nashmtl", init=3.0, method="nashmtl"),
        replace(PAPER, name="init_far_stl", init=3.0, method="stl"),
        replace(PAPER, name="init_far_train_same_val_held_out_exact", init=3.0, hessian_batch="same", validation="held_out",
                neumann="exact"),
        replace(PAPER, name="P10", dim=10),
        replace(PAPER, name="P10_val_same_batch", dim=10, validation="same"),
        replace(PAPER, name="P10_val_held_out", dim=10, validation="held_out"),
        replace(PAPER, name="P10_val_held_out_exact", dim=10, validation="held_out", neumann="exact"),
        replace(PAPER, name="P10_val_held_out_exact_lr_x10", dim=10, validation="held_out", neumann="exact", meta_lr=5e-2),
        replace(PAPER, name="P10_train_same_val_held_out", dim=10, hessian_batch="same", validation="held_out"),
        replace(PAPER, name="P10_train_same_val_held_out_exact", dim=10, hessian_batch="same", validation="held_out", neumann="exact"),
        replace(PAPER, name="P10_train_same_val_held_out_exact_lr_x10", dim=10, hessian_batch="same", validation="held_out",
                neumann="exact", meta_lr=5e-2),
    ]
}
BASELINES = {"stl": replace(PAPER, name="stl", method="stl"), "nashmtl": replace(PAPER, name="nashmtl", method="nashmtl")}


def optima(dim: int) -> Tensor:
    """[3, P] the tasks' optimal weights: W* = 1 for main and helpful; the harmful auxiliary's
    (-1, -4) in the first two coordinates and -1 elsewhere."""
    harmful = torch.full((dim,), -1.0, dtype=torch.float64)
    harmful[1] = -4.0
    return torch.stack([torch.ones(dim, dtype=torch.float64), torch.ones(dim, dtype=torch.float64), harmful])


class Data:
    """Inputs and the three tasks' labels, drawn from the reading's distribution."""

    def __init__(self, reading: Reading, generator: torch.Generator) -> None:
        self.reading, self.generator = reading, generator
        self.W = optima(reading.dim)  # [3, P]
        self.noise = torch.tensor([SIGMA_MAIN, SIGMA_HELPFUL, reading.harmful_noise], dtype=torch.float64)
        self.x, self.y = self.draw(TRAIN_SAMPLES)  # the training set [N, P], [N, 3]

    def draw(self, n: int) -> tuple[Tensor, Tensor]:
        shape = (n, self.reading.dim)
        if self.reading.inputs == "normal":
            x = torch.randn(shape, generator=self.generator, dtype=torch.float64)
        else:
            x = 2.0 * torch.rand(shape, generator=self.generator, dtype=torch.float64) - 1.0
        y = x @ self.W.T + torch.randn(n, 3, generator=self.generator, dtype=torch.float64) * self.noise
        return x, y

    def batch(self) -> tuple[Tensor, Tensor]:
        index = torch.randint(TRAIN_SAMPLES, (BATCH,), generator=self.generator)
        return self.x[index], self.y[index]

    def second_moment(self) -> Tensor:
        """E[x x'] [P, P]: the test loss of the main task is ||W - W*||^2 under it (plus sigma^2)."""
        scale = 1.0 if self.reading.inputs == "normal" else 1.0 / 3.0
        return scale * torch.eye(self.reading.dim, dtype=torch.float64)


def per_task_losses(W: Tensor, x: Tensor, y: Tensor) -> Tensor:
    """[3] mean squared errors of the shared linear model on each task's labels."""
    return ((x @ W)[:, None] - y).pow(2).mean(0)


def run(reading: Reading, seed: int, epochs: int) -> dict:
    generator = torch.Generator().manual_seed(seed)
    data = Data(reading, generator)
    W = torch.full((reading.dim,), reading.init, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.Adam([W], lr=LR)
    K = 3
    if reading.method == "stl":
        agg = None
    else:
        options = {} if reading.method == "auxinash" else {"learn_preferences": False}
        if reading.neumann == "exact":
            options.update(neumann_terms=0)
        agg = make("auxinash", num_tasks=K, meta_lr=reading.meta_lr, **options)
    held_out = data.draw(10_000) if reading.validation == "held_out" else None
    batches: list[tuple[Tensor, Tensor]] = []  # the previous and the current inner step's batch

    def validation_batch() -> tuple[Tensor, Tensor]:
        if reading.validation == "fresh":
            return data.batch()
        if reading.validation == "same":  # the batch of the N_p-th inner step, which the outer step follows
            return batches[0]
        if reading.validation == "sampled":
            return data.draw(BATCH)
        return held_out

    def hyper_context() -> HyperContext:
        def train_losses() -> Tensor:
            same = reading.validation == "same" or reading.hessian_batch == "same"
            x, y = batches[0] if same else data.batch()
            return per_task_losses(W, x, y)

        def val_loss() -> Tensor:
            x, y = validation_batch()
            loss = per_task_losses(W, x, y)[0]
            if reading.neumann != "exact":
                return loss
            # The exact implicit gradient: hand the aggregator's zero-term Neumann series
            # (q = grad L_V) the limit of its own series instead, (eta H)^-1 grad L_V (the
            # aggregator's convention leaves out the factor eta), with H the Hessian of
            # L_T = sum alpha_i loss_i on the training set, 2 sum(alpha) X'X / N for squared errors.
            # (The paper's 3 terms at lr 1e-4 give q = 4 grad L_V: eta H << 1 on this problem, so
            # they carry no Hessian information; the exact q is then clipped to norm 1 like theirs.)
            hessian = 2.0 * float(agg.outer_alpha.sum()) * (data.x.T @ data.x) / TRAIN_SAMPLES
            q = torch.linalg.solve(agg.neumann_lr * hessian, torch.autograd.grad(loss, W)[0])
            return loss.detach() + (W * q).sum() - (W.detach() * q).sum()  # its gradient in W is q

        return HyperContext(params=(W,), train_losses=train_losses, val_loss=val_loss)

    steps_per_epoch = math.ceil(TRAIN_SAMPLES / BATCH)
    steps = epochs * steps_per_epoch
    trace, fallbacks, stationary = [], 0, 0
    for step in range(steps):
        x, y = data.batch()
        batches[:] = batches[-1:] + [(x, y)]
        residual = (x @ W.detach())[:, None] - y  # [B, 3]
        G = 2.0 * residual.T @ x / len(x)  # [3, P] per-task gradients of the mean squared errors
        if agg is None:
            direction = G[0]
        else:
            out = agg(G, AggContext(step=step, task_ids=torch.arange(K), main_task=0, hyper=hyper_context()))
            direction = out.direction
            fallbacks += int(out.info["fallback_used"])
            stationary += int(out.info.get("stationary", 0.0))
        W.grad = direction.clone()
        optimizer.step()
        if agg is not None and step % NP == 0:
            trace.append((agg.preference / K).tolist())
    error = (W.detach() - data.W[0]).double()
    result = {
        "reading": reading.name,
        "seed": seed,
        "main_test_excess": float(error @ data.second_moment() @ error),
        "W": W.detach().tolist(),
        "fallback_fraction": fallbacks / steps,
        "stationary_fraction": stationary / steps,
    }
    if agg is not None:
        trace.append((agg.preference / K).tolist())
        prefs = torch.tensor(trace, dtype=torch.float64)  # [T, 3]
        result.update(final_p=prefs[-1].tolist(), min_p=prefs.min(0).values.tolist(), trace=trace,
                      hypersteps=agg.hypersteps, hyper_skipped=agg.hyper_skipped)
    return result


def decays(result: dict) -> bool:
    """The paper's claim for one run: the harmful task's final preference is below 0.05 (from 1/3)
    and below both others."""
    p = result["final_p"]
    return p[2] < 0.05 and p[2] < p[0] and p[2] < p[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mtrl.benchmarks.auxinash_toy", description=__doc__.split("\n\n")[0])
    parser.add_argument("--readings", nargs="+", choices=sorted(READINGS), default=list(READINGS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=1000)
    parser.add_argument("--no-baselines", action="store_true", help="skip the STL and Nash-MTL runs")
    parser.add_argument("--json", help="write every run (with its preference trace) to this file")
    args = parser.parse_args(argv)
    runs = {}
    rows = []
    for name in [] if args.no_baselines else ["stl", "nashmtl"]:
        results = [run(BASELINES[name], seed, args.epochs) for seed in args.seeds]
        runs[name] = results
        excess = sum(r["main_test_excess"] for r in results) / len(results)
        rows.append([name, "-", "-", "-", "-", excess, sum(r["fallback_fraction"] for r in results) / len(results)])
    for name in args.readings:
        results = [run(READINGS[name], seed, args.epochs) for seed in args.seeds]
        runs[name] = results
        if "final_p" not in results[0] or READINGS[name].method != "auxinash":
            rows.append([name, "-", "-", "-", "-", sum(r["main_test_excess"] for r in results) / len(results),
                         sum(r["fallback_fraction"] for r in results) / len(results)])
            continue
        mean = lambda key, i: sum(r[key][i] for r in results) / len(results)  # noqa: E731
        finals = " ".join(f"{r['final_p'][2]:.3f}" for r in results)
        rows.append([
            name, f"{mean('final_p', 0):.3f} / {mean('final_p', 1):.3f} / {mean('final_p', 2):.3f}", finals,
            f"{sum(decays(r) for r in results)}/{len(results)}", f"{mean('min_p', 2):.3f}",
            sum(r["main_test_excess"] for r in results) / len(results),
            sum(r["fallback_fraction"] for r in results) / len(results),
        ])
    print(f"\nAuxiNash illustrative example [AN App. D.1]: {args.epochs} epochs, seeds {args.seeds}; p / K per task")
    print_table(["reading", "final p main / helpful / harmful (mean)", "final p harmful per seed", "decays",
                 "min p harmful", "main test excess", "fallback fraction"], rows)
    write_json(args.json, {"benchmark": "auxinash_toy", "epochs": args.epochs, "seeds": args.seeds,
                           "readings": {n: asdict(r) for n, r in {**BASELINES, **READINGS}.items()}, "runs": runs})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
