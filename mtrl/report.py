"""Compare runs: the papers' table with honest statistics, per-task tables and figures.

``mtrl report DIR [DIR ...] [--out DIR] [--json FILE]`` finds every run directory below the
given ones (a directory holding ``config.yaml`` and ``eval.csv``) and groups runs by method
label: the sweep's method label when the run was started by ``mtrl sweep`` (``label`` in
``sweep.json``), else the aggregator name. Runs of ``MT1-<task>`` benchmarks form the "STL" row.
A ``label`` key in ``config.yaml`` overrides both (``mtrl.sb3_baseline`` runs are "sb3_sac").

Statistics per method, over seeds (spec §4.1):

* **best**: per run, the maximum over evaluations of the task-averaged success (the papers'
  "best average"), then mean +- SEM over seeds (SEM with ddof = 1; 0 for one seed);
* **final**: the task-averaged success of each run's last evaluation, mean +- SEM;
* **IQM**: interquartile mean of the per-seed best scores (rliable's definition,
  ``scipy.stats.trim_mean(x, 0.25)``) with a 95% percentile bootstrap CI over seeds (2000
  resamples, fixed seed; one stratum per method since the per-seed score already averages the
  tasks).

STL: the MT1 runs of one seed are joined into one task-averaged curve at the evaluation steps
they share, then treated like any other run. Main-task runs (``main_task`` set) also report the
main task's best and final success.
"""

from __future__ import annotations

import argparse
import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

__all__ = ["Run", "MethodStats", "find_runs", "group_runs", "method_stats", "main"]

BOOTSTRAP_SAMPLES = 2000
BOOTSTRAP_SEED = 0


@dataclass
class Run:
    """One run directory: its label, seed, benchmark and evaluation curves."""

    path: Path
    label: str
    seed: int
    benchmark: str
    main_task: str | None
    steps: np.ndarray  # [E]
    per_task: dict[str, np.ndarray]  # task -> [E]

    @property
    def mean_curve(self) -> np.ndarray:
        return np.mean(np.stack(list(self.per_task.values())), axis=0)


@dataclass
class MethodStats:
    label: str
    n_seeds: int
    best_mean: float
    best_sem: float
    final_mean: float
    final_sem: float
    iqm: float
    iqm_ci: tuple[float, float]
    per_task_best: dict[str, float] = field(default_factory=dict)
    per_task_final: dict[str, float] = field(default_factory=dict)
    main_task: str | None = None
    main_best: float | None = None
    main_final: float | None = None

    def as_json(self) -> dict:
        out = {
            "best_mean": self.best_mean, "best_sem": self.best_sem, "final_mean": self.final_mean,
            "final_sem": self.final_sem, "iqm": self.iqm, "iqm_ci": list(self.iqm_ci), "n_seeds": self.n_seeds,
            "per_task_best": self.per_task_best, "per_task_final": self.per_task_final,
        }
        if self.main_task is not None:
            out.update(main_task=self.main_task, main_best=self.main_best, main_final=self.main_final)
        return out


def read_run(path: Path) -> Run | None:
    """Parse one run directory; None if it has no evaluation yet."""
    config = yaml.safe_load((path / "config.yaml").read_text()) or {}
    with open(path / "eval.csv") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        return None
    tasks = [c for c in rows[0] if c not in ("step", "mean_success")]
    label = (config.get("aggregator") or {}).get("name", "unknown")
    sweep = path / "sweep.json"
    if sweep.exists():
        label = json.loads(sweep.read_text()).get("label", label)
    benchmark = (config.get("env") or {}).get("benchmark", "")
    if benchmark.startswith("MT1-") and not sweep.exists():
        label = "STL"
    if config.get("label"):  # runs of other trainers (e.g. mtrl.sb3_baseline) name themselves
        label = str(config["label"])
    return Run(
        path=path,
        label=label,
        seed=int(config.get("seed", 0)),
        benchmark=benchmark,
        main_task=config.get("main_task"),
        steps=np.array([int(r["step"]) for r in rows]),
        per_task={t: np.array([float(r[t]) for r in rows]) for t in tasks},
    )


def find_runs(roots: list[Path]) -> list[Run]:
    runs = []
    for root in roots:
        root = Path(root)
        if not root.exists():
            raise ValueError(f"no such directory: {root}")
        candidates = [root] if (root / "eval.csv").exists() else []
        candidates += sorted(p.parent for p in root.rglob("eval.csv") if p.parent != root)
        for path in candidates:
            if (path / "config.yaml").exists():
                run = read_run(path)
                if run is not None:
                    runs.append(run)
    return runs


def _join_stl(runs: list[Run]) -> Run:
    """Join single-task runs of one seed into a multi-task run on their common evaluation steps."""
    common = sorted(set.intersection(*(set(r.steps.tolist()) for r in runs)))
    per_task = {}
    for run in runs:
        index = [int(np.flatnonzero(run.steps == s)[0]) for s in common]
        for task, curve in run.per_task.items():
            per_task[task] = curve[index]
    return Run(runs[0].path.parent, "STL", runs[0].seed, "MT1", None, np.array(common), per_task)


def group_runs(runs: list[Run]) -> dict[str, list[Run]]:
    groups: dict[str, list[Run]] = {}
    stl: dict[int, list[Run]] = {}
    for run in runs:
        if run.label == "STL" or (run.benchmark.startswith("MT1-") and run.label.startswith("stl")):
            stl.setdefault(run.seed, []).append(run)
        else:
            groups.setdefault(run.label, []).append(run)
    if stl:
        groups["STL"] = [_join_stl(seed_runs) for _, seed_runs in sorted(stl.items()) if seed_runs]
    return groups


def sem(values: np.ndarray) -> float:
    return float(np.std(values, ddof=1) / np.sqrt(len(values))) if len(values) > 1 else 0.0


def iqm(values: np.ndarray) -> float:
    from scipy.stats import trim_mean

    return float(trim_mean(values, 0.25))


def bootstrap_ci(values: np.ndarray, statistic=iqm, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of ``statistic`` over seeds (fixed seed: reproducible)."""
    if len(values) < 2:
        return float(statistic(values)), float(statistic(values))
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    draws = rng.integers(0, len(values), size=(BOOTSTRAP_SAMPLES, len(values)))
    stats = np.array([statistic(values[d]) for d in draws])
    lo, hi = np.quantile(stats, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def method_stats(label: str, runs: list[Run]) -> MethodStats:
    best = np.array([r.mean_curve.max() for r in runs])
    final = np.array([r.mean_curve[-1] for r in runs])
    tasks = sorted(set.intersection(*(set(r.per_task) for r in runs)), key=list(runs[0].per_task).index)
    stats = MethodStats(
        label=label, n_seeds=len(runs), best_mean=float(best.mean()), best_sem=sem(best),
        final_mean=float(final.mean()), final_sem=sem(final), iqm=iqm(best), iqm_ci=bootstrap_ci(best),
        per_task_best={t: float(np.mean([r.per_task[t].max() for r in runs])) for t in tasks},
        per_task_final={t: float(np.mean([r.per_task[t][-1] for r in runs])) for t in tasks},
    )
    main = runs[0].main_task
    if main is not None and main in tasks:
        stats.main_task = main
        stats.main_best = float(np.mean([r.per_task[main].max() for r in runs]))
        stats.main_final = float(np.mean([r.per_task[main][-1] for r in runs]))
    return stats


# ---------------------------------------------------------------------------------------------
# outputs
# ---------------------------------------------------------------------------------------------
def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def _main_table(stats: list[MethodStats]) -> tuple[list[str], list[list]]:
    header = ["method", "seeds", "best_mean", "best_sem", "final_mean", "final_sem", "iqm", "iqm_ci_low", "iqm_ci_high"]
    rows = [[s.label, s.n_seeds, s.best_mean, s.best_sem, s.final_mean, s.final_sem, s.iqm, *s.iqm_ci] for s in stats]
    return header, rows


def _plot_curves(groups: dict[str, list[Run]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, runs in sorted(groups.items()):
        common = sorted(set.intersection(*(set(r.steps.tolist()) for r in runs)))
        if not common:
            continue
        curves = np.stack([r.mean_curve[[int(np.flatnonzero(r.steps == s)[0]) for s in common]] for r in runs])
        mean = curves.mean(0)
        ax.plot(common, mean, label=f"{label} (n={len(runs)})")
        if len(runs) > 1:
            half = 1.96 * curves.std(0, ddof=1) / np.sqrt(len(runs))
            ax.fill_between(common, mean - half, mean + half, alpha=0.2)
    ax.set_xlabel("environment steps")
    ax.set_ylabel("mean success rate")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Success over training (mean and 95% CI over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_per_task(stats: list[MethodStats], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(t for s in stats for t in s.per_task_final))
    fig, ax = plt.subplots(figsize=(max(7, 0.8 * len(tasks)), 4.5))
    width = 0.8 / max(len(stats), 1)
    x = np.arange(len(tasks))
    for i, s in enumerate(stats):
        ax.bar(x + i * width, [s.per_task_final.get(t, np.nan) for t in tasks], width, label=s.label)
    ax.set_xticks(x + 0.4 - width / 2)
    ax.set_xticklabels(tasks, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("final success rate (mean over seeds)")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _markdown(stats: list[MethodStats]) -> str:
    lines = [
        "# Report",
        "",
        "Best = per seed, the maximum over evaluations of the task-averaged success (the papers' metric), "
        "then mean ± SEM over seeds. Final = the last evaluation. IQM of the per-seed best scores with a "
        "95% bootstrap CI.",
        "",
        "| method | seeds | best | final | IQM [95% CI] |",
        "|---|---|---|---|---|",
    ]
    for s in stats:
        lines.append(
            f"| {s.label} | {s.n_seeds} | {s.best_mean:.3f} ± {s.best_sem:.3f} | {s.final_mean:.3f} ± {s.final_sem:.3f} | "
            f"{s.iqm:.3f} [{s.iqm_ci[0]:.3f}, {s.iqm_ci[1]:.3f}] |"
        )
    mains = [s for s in stats if s.main_task is not None]
    if mains:
        lines += ["", "## Main task", "", "| method | main task | best | final |", "|---|---|---|---|"]
        lines += [f"| {s.label} | {s.main_task} | {s.main_best:.3f} | {s.main_final:.3f} |" for s in mains]
    tasks = list(dict.fromkeys(t for s in stats for t in s.per_task_best))
    lines += ["", "## Per task (best / final, mean over seeds)", "", "| task | " + " | ".join(s.label for s in stats) + " |",
              "|---|" + "---|" * len(stats)]
    for t in tasks:
        cells = [f"{s.per_task_best[t]:.2f} / {s.per_task_final[t]:.2f}" if t in s.per_task_best else "" for s in stats]
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    lines += ["", "![success curves](curves.png)", "", "![final success per task](per_task.png)", ""]
    return "\n".join(lines)


def report(roots: list[Path], out: Path | None = None, json_path: Path | None = None) -> list[MethodStats]:
    runs = find_runs(roots)
    if not runs:
        raise ValueError(f"no run directories with evaluations under {', '.join(map(str, roots))}")
    groups = group_runs(runs)
    stats = [method_stats(label, group) for label, group in sorted(groups.items())]
    header, rows = _main_table(stats)
    widths = [max(len(header[i]), 10) for i in range(len(header))]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    for row in rows:
        print("  ".join((f"{c:.3f}" if isinstance(c, float) else str(c)).ljust(w) for c, w in zip(row, widths)))
    out = Path(out) if out is not None else Path(roots[0]) / "report"
    out.mkdir(parents=True, exist_ok=True)
    _write_csv(out / "summary.csv", header, rows)
    tasks = list(dict.fromkeys(t for s in stats for t in s.per_task_best))
    _write_csv(out / "per_task.csv", ["method", "task", "best", "final"],
               [[s.label, t, s.per_task_best[t], s.per_task_final[t]] for s in stats for t in tasks if t in s.per_task_best])
    _write_csv(out / "runs.csv", ["method", "seed", "best", "final", "path"],
               [[label, r.seed, float(r.mean_curve.max()), float(r.mean_curve[-1]), str(r.path)] for label, g in sorted(groups.items()) for r in g])
    _plot_curves(groups, out / "curves.png")
    _plot_per_task(stats, out / "per_task.png")
    (out / "report.md").write_text(_markdown(stats))
    payload = {s.label: s.as_json() for s in stats}
    if json_path is not None:
        Path(json_path).write_text(json.dumps(payload, indent=2) + "\n")
    (out / "report.json").write_text(json.dumps(payload, indent=2) + "\n")
    print(f"report written to {out}")
    return stats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mtrl report", description="Tables and figures over run directories.")
    parser.add_argument("dirs", nargs="+", type=Path, help="run directories or folders holding them")
    parser.add_argument("--out", type=Path, help="output folder (default: FIRST_DIR/report)")
    parser.add_argument("--json", type=Path, help="also write per-method statistics to this file")
    args = parser.parse_args(argv)
    report(args.dirs, args.out, args.json)
    return 0
