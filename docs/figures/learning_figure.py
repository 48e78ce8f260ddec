"""The README's learning figure: evaluation success and return of our SAC and SB3's SAC on MT1 reach-v3.

    mtrl sweep configs/sweeps/mt1_reach.yaml --jobs 2 --out runs/mt1_reach           # our SAC, seeds 0 and 1
    python -m mtrl.sb3_baseline --task reach-v3 --seed 0 --steps 30000 --eval-every 5000 \\
        --run-dir runs/mt1_reach/sb3_sac/seed0                                       # and seed 1
    python docs/figures/learning_figure.py runs/mt1_reach docs/figures/reach_learning.png

Reads ``<root>/<method>/seed<N>/eval.csv`` (success) and ``metrics.jsonl`` (``eval/mean_return``)
of every run below ``root``; prints the numbers per method and evaluation step.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

LABELS = {"sac": "mtrl SAC (ours)", "sb3_sac": "Stable-Baselines3 SAC"}


def read_run(run_dir: Path) -> dict[int, tuple[float, float]]:
    """step -> (success, return) of every evaluation of one run."""
    with open(run_dir / "eval.csv") as handle:
        success = {int(row["step"]): float(row["mean_success"]) for row in csv.DictReader(handle)}
    returns = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if "eval/mean_return" in row:
            returns[int(row["step"])] = float(row["eval/mean_return"])
    return {step: (success[step], returns[step]) for step in sorted(success) if step in returns}


def main(root: str, out: str) -> None:
    methods: dict[str, list[dict[int, tuple[float, float]]]] = {}
    for eval_csv in sorted(Path(root).glob("*/seed*/eval.csv")):
        methods.setdefault(eval_csv.parent.parent.name, []).append(read_run(eval_csv.parent))
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.0), dpi=100)
    for (method, runs), color in zip(sorted(methods.items()), ("tab:blue", "tab:orange")):
        steps = sorted(set.intersection(*(set(run) for run in runs)))
        values = np.array([[run[s] for s in steps] for run in runs])  # [seeds, evaluations, 2]
        label = f"{LABELS.get(method, method)} ({len(runs)} seeds)"
        print(f"{label}: steps {steps}")
        for index, (axis, name) in enumerate(zip(axes, ("success rate", "return"))):
            for seed_values in values[:, :, index]:
                axis.plot(steps, seed_values, color=color, alpha=0.3, linewidth=1)
            mean = values[:, :, index].mean(axis=0)
            axis.plot(steps, mean, color=color, linewidth=2, marker="o", label=label if index == 0 else None)
            axis.set_xlabel("environment steps")
            axis.set_ylabel(f"evaluation {name}")
            print(f"  {name:12s} mean " + " ".join(f"{v:7.2f}" for v in mean)
                  + "   per seed " + "; ".join(" ".join(f"{v:.2f}" for v in run) for run in values[:, :, index]))
    axes[0].set_ylim(-0.03, 1.03)
    axes[0].legend(loc="upper left", fontsize=8)
    fig.suptitle("MT1 reach-v3: 3 x 400 SAC, batch 128, 500-step episodes, 10 evaluation episodes", fontsize=9)
    fig.tight_layout()
    fig.savefig(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
