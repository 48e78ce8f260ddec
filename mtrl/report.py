"""Compare runs: the papers' table with honest statistics, per-task tables and figures.

``mtrl report DIR [DIR ...] [--out DIR] [--json FILE]`` finds every run directory below the
given ones (a directory holding ``config.yaml`` and ``eval.csv``) and groups runs by method
label: the sweep's method label when the run was started by ``mtrl sweep`` (``label`` in
``sweep.json``), else the aggregator name. Runs of ``MT1-<task>`` benchmarks form the "STL" row.
A ``label`` key in ``config.yaml`` overrides both (``mtrl.sb3_baseline`` runs are "sb3_sac").

Statistics per method, over seeds (the papers' protocol: docs/design.md §4):

* **best**: per run, the maximum over evaluations of the task-averaged success (the papers'
  "best average"), then mean +- SEM over seeds (SEM with ddof = 1; 0 for one seed);
* **final**: the task-averaged success of each run's last evaluation, mean +- SEM;
* **IQM** (of seed best): interquartile mean of the per-seed best scores (the 25% trimmed mean,
  ``scipy.stats.trim_mean(x, 0.25)``) with a 95% percentile bootstrap CI over seeds (2000
  resamples, fixed seed): ``stats.iqm`` and ``stats.interval_estimate`` on the ``[N, 1]`` matrix of
  per-seed scores (one stratum, since the per-seed score already averages the tasks).

rliable's statistics on run x task scores (``mtrl/stats.py`` gives the definitions and
citations): the score of run n on task m is the task's success at the run's final evaluation, an
``[N, K]`` matrix per method (100 scores for 10 seeds on MT10).

* **IQM (run x task)**: the IQM of the ``N * K`` pooled scores with a 95% percentile CI from a
  bootstrap stratified over runs within each task (JSON ``iqm_run_task``, ``iqm_run_task_ci``);
* **probability of improvement** P(X > Y) for every pair of methods scoring the same tasks, with
  its CI (``poi.csv``, JSON ``probability_of_improvement``);
* **performance profiles**: the fraction of run x task scores above each threshold tau in [0, 1],
  with bootstrap bands (``profiles.png``, ``profiles.csv``).

Gradient diagnostics (``mtrl/inspection.py``, ``docs/diagnostics.md``), per method over the seeds
that logged them: conflict fraction over training (``conflict.png``), cosine heatmaps of the first
and last third (``cos_<method>.png``), weight trajectories (``weights_<method>.png``), each task's
served cosine against its final success (``served.png``); the numbers behind them in
``diagnostics.json``. Runs without diagnostics (older runs) are reported as before.

STL: the MT1 runs of one seed are joined into one task-averaged curve at the evaluation steps
they share, then treated like any other run. Main-task runs (``main_task`` set) also report the
main task's best and final success.

Warnings (printed and at the top of ``report.md``): runs pooled under one method whose configs
differ in keys of a run's identity (every key but ``mtrl.config.RESUME_ALLOWED`` and the seed;
the benchmark too for STL), runs continued with forced changes (``config_history.jsonl``), and
runs produced by different versions of torch, MetaWorld or MuJoCo (``provenance.jsonl``). A CI
over fewer than ``MIN_CI_RUNS`` runs is marked † in the tables.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from mtrl import stats as rstats
from mtrl.config import ConfigError, flatten_config, is_resume_allowed, resolved_flat_config
from mtrl.provenance import COMPARED_PACKAGES, read_provenance
from mtrl.runs import Run, find_runs, read_config_history, read_run
from mtrl.inspection import (
    MethodDiagnostics,
    aggregate_diagnostics,
    file_label,
    plot_conflict,
    plot_cosines,
    plot_served,
    plot_weights,
    read_diagnostics,
)

__all__ = ["Run", "MethodStats", "MIN_CI_RUNS", "find_runs", "group_runs", "method_stats", "read_run", "run_warnings", "main"]

PROFILE_TAUS = np.linspace(0.0, 1.0, 101)
#: A bootstrap CI over fewer runs than this is marked in the tables: with so few, the resamples
#: take few distinct values and the interval says little.
MIN_CI_RUNS = 5


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
    tasks: list[str] = field(default_factory=list)
    scores: np.ndarray | None = None  # [N, K] final success of each run (seed) on each task
    iqm_run_task: float = math.nan
    iqm_run_task_ci: tuple[float, float] = (math.nan, math.nan)
    probability_of_improvement: dict[str, tuple[float, float, float]] = field(default_factory=dict)  # other -> (p, lo, hi)

    @property
    def few_runs(self) -> bool:
        """Its CIs rest on fewer than ``MIN_CI_RUNS`` runs."""
        return self.n_seeds < MIN_CI_RUNS

    def as_json(self) -> dict:
        out = {
            "best_mean": self.best_mean, "best_sem": self.best_sem, "final_mean": self.final_mean,
            "final_sem": self.final_sem, "iqm": self.iqm, "iqm_ci": list(self.iqm_ci), "n_seeds": self.n_seeds,
            "ci_fewer_than_min_runs": self.few_runs,
            "per_task_best": self.per_task_best, "per_task_final": self.per_task_final,
            "iqm_run_task": self.iqm_run_task, "iqm_run_task_ci": list(self.iqm_run_task_ci),
            "probability_of_improvement": {
                other: {"p": p, "ci": [lo, hi]} for other, (p, lo, hi) in self.probability_of_improvement.items()
            },
        }
        if self.main_task is not None:
            out.update(main_task=self.main_task, main_best=self.main_best, main_final=self.main_final)
        return out


def _join_stl(runs: list[Run]) -> Run:
    """Join single-task runs of one seed into a multi-task run on their common evaluation steps."""
    common = sorted(set.intersection(*(set(r.steps.tolist()) for r in runs)))
    per_task = {}
    for run in runs:
        index = [int(np.flatnonzero(run.steps == s)[0]) for s in common]
        for task, curve in run.per_task.items():
            per_task[task] = curve[index]
    return Run(runs[0].path.parent, "STL", runs[0].seed, "MT1", None, np.array(common), per_task)


def _is_stl(run: Run) -> bool:
    return run.label == "STL" or (run.benchmark.startswith("MT1-") and run.label.startswith("stl"))


def _members(runs: list[Run]) -> dict[str, list[Run]]:
    """The run directories pooled under each method label (STL: every MT1 run of the STL row)."""
    members: dict[str, list[Run]] = {}
    for run in runs:
        members.setdefault("STL" if _is_stl(run) else run.label, []).append(run)
    return members


def group_runs(runs: list[Run]) -> dict[str, list[Run]]:
    groups: dict[str, list[Run]] = {}
    for label, pooled in _members(runs).items():
        if label != "STL":
            groups[label] = pooled
            continue
        stl: dict[int, list[Run]] = {}
        for run in pooled:
            stl.setdefault(run.seed, []).append(run)
        groups["STL"] = [_join_stl(seed_runs) for _, seed_runs in sorted(stl.items())]
    return groups


def sem(values: np.ndarray) -> float:
    return float(np.std(values, ddof=1) / np.sqrt(len(values))) if len(values) > 1 else 0.0


def method_stats(label: str, runs: list[Run]) -> MethodStats:
    best = np.array([r.mean_curve.max() for r in runs])
    final = np.array([r.mean_curve[-1] for r in runs])
    tasks = sorted(set.intersection(*(set(r.per_task) for r in runs)), key=list(runs[0].per_task).index)
    scores = np.array([[r.per_task[t][-1] for t in tasks] for r in runs])  # [N, K]
    point, low, high = rstats.interval_estimate(scores, rstats.iqm)
    # the per-seed best as a one-task score matrix [N, 1]: its pooled IQM is the IQM over seeds and
    # the stratified bootstrap (one stratum) the plain percentile bootstrap over seeds
    best_iqm, best_low, best_high = rstats.interval_estimate(best[:, None], rstats.iqm)
    stats = MethodStats(
        label=label, n_seeds=len(runs), best_mean=float(best.mean()), best_sem=sem(best),
        final_mean=float(final.mean()), final_sem=sem(final), iqm=float(best_iqm), iqm_ci=(float(best_low), float(best_high)),
        per_task_best={t: float(np.mean([r.per_task[t].max() for r in runs])) for t in tasks},
        per_task_final={t: float(np.mean([r.per_task[t][-1] for r in runs])) for t in tasks},
        tasks=tasks, scores=scores, iqm_run_task=float(point), iqm_run_task_ci=(float(low), float(high)),
    )
    main = runs[0].main_task
    if main is not None and main in tasks:
        stats.main_task = main
        stats.main_best = float(np.mean([r.per_task[main].max() for r in runs]))
        stats.main_final = float(np.mean([r.per_task[main][-1] for r in runs]))
    return stats


def compare_methods(stats: list[MethodStats]) -> list[tuple[str, str, float, float, float]]:
    """P(X > Y) with its 95% CI for every ordered pair of methods that score the same tasks.

    Each unordered pair is bootstrapped once; P(Y > X) = 1 - P(X > Y) with the mirrored interval
    (exact per resample, ties count one half). Fills ``MethodStats.probability_of_improvement``.
    """
    rows = []
    for i, x in enumerate(stats):
        for y in stats[i + 1:]:
            if set(x.tasks) != set(y.tasks):
                continue
            y_scores = y.scores[:, [y.tasks.index(t) for t in x.tasks]]  # Y's columns in X's task order
            p, low, high = rstats.probability_of_improvement_interval(x.scores, y_scores)
            x.probability_of_improvement[y.label] = (p, low, high)
            y.probability_of_improvement[x.label] = (1.0 - p, 1.0 - high, 1.0 - low)
    for x in stats:
        for y in stats:
            if y.label in x.probability_of_improvement:
                rows.append((x.label, y.label, *x.probability_of_improvement[y.label]))
    return rows


# ---------------------------------------------------------------------------------------------
# warnings: what the pooled runs do not share
# ---------------------------------------------------------------------------------------------
def _identity(run: Run) -> dict:
    """The run's identity keys with their values: its effective config (config.yaml and its
    history), absent keys at their defaults, every key but ``RESUME_ALLOWED``."""
    config = run.config or {}
    try:
        flat = resolved_flat_config(config)
    except ConfigError:  # another trainer's config (mtrl.sb3_baseline): the keys as written
        flat = flatten_config(config, options=True)
    return {key: value for key, value in flat.items() if not is_resume_allowed(key)}


def _named(runs: list[Run], limit: int = 3) -> str:
    names = [str(r.path) for r in runs[:limit]]
    more = f" and {len(runs) - limit} more" if len(runs) > limit else ""
    return f"{len(runs)} run{'s' * (len(runs) != 1)}: {', '.join(names)}{more}"


_MISSING = object()


def _absent_repr(value) -> str:
    return "(absent)" if value is _MISSING else repr(value)


def run_warnings(runs: list[Run]) -> list[str]:
    """What the runs of a report do not share: identity keys within a method (the seed aside; the
    benchmark too for STL), forced changes on resume, and torch, MetaWorld or MuJoCo versions
    across all runs. One sentence each."""
    out = []
    for label, pooled in sorted(_members(runs).items()):
        ignore = {"seed"} | ({"env.benchmark"} if label == "STL" else set())
        identities = [_identity(run) for run in pooled]
        differing = []
        for key in sorted(set().union(*identities) - ignore):
            values: dict[str, list[Run]] = {}
            for run, identity in zip(pooled, identities):
                values.setdefault(_absent_repr(identity.get(key, _MISSING)), []).append(run)
            if len(values) > 1:
                differing.append(f"{key} = " + " / ".join(f"{value} ({_named(rs)})" for value, rs in values.items()))
        if differing:
            out.append(f"method {label} pools runs whose configs differ in keys that change results: {'; '.join(differing)}")
        for run in pooled:
            forced = list(dict.fromkeys(r["key"] for r in read_config_history(run.path) if r.get("change") == "forced"))
            if forced:
                out.append(f"method {label}: {run.path} was resumed with forced changes of {', '.join(forced)} (its config_history.jsonl)")
    records = {run.path: read_provenance(run.path) for run in runs}
    recorded = [run for run in runs if records[run.path]]
    for package in COMPARED_PACKAGES:
        versions: dict[str, list[Run]] = {}
        for run in recorded:
            seen = list(dict.fromkeys(str((r.get("packages") or {}).get(package)) for r in records[run.path]))
            versions.setdefault(" then ".join(seen), []).append(run)
        if len(versions) > 1:
            out.append(f"the runs were produced by different {package} versions: "
                       + "; ".join(f"{version} ({_named(rs)})" for version, rs in sorted(versions.items())))
    missing = [run for run in runs if not records[run.path]]
    if missing:
        out.append(f"{_named(missing)} record no provenance (provenance.jsonl: written by runs started since it exists), "
                   f"so the versions of torch, MetaWorld and MuJoCo that produced them are unknown")
    return out


# ---------------------------------------------------------------------------------------------
# outputs
# ---------------------------------------------------------------------------------------------
def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def _main_table(stats: list[MethodStats]) -> tuple[list[str], list[list]]:
    header = ["method", "seeds", "best_mean", "best_sem", "final_mean", "final_sem", "iqm", "iqm_ci_low", "iqm_ci_high",
              "iqm_run_task", "iqm_run_task_ci_low", "iqm_run_task_ci_high"]
    rows = [[s.label, s.n_seeds, s.best_mean, s.best_sem, s.final_mean, s.final_sem, s.iqm, *s.iqm_ci,
             s.iqm_run_task, *s.iqm_run_task_ci] for s in stats]
    return header, rows


def _profiles(stats: list[MethodStats]) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Score-distribution performance profile of every method at ``PROFILE_TAUS`` (stats.py)."""
    return {s.label: rstats.performance_profile(s.scores, PROFILE_TAUS) for s in stats}


def _plot_profiles(profiles: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for label, (profile, low, high) in sorted(profiles.items()):
        line, = ax.step(PROFILE_TAUS, profile, where="post", label=label)
        ax.fill_between(PROFILE_TAUS, low, high, step="post", alpha=0.2, color=line.get_color())
    ax.set_xlabel(r"success threshold $\tau$")
    ax.set_ylabel(r"fraction of run x task scores > $\tau$")
    ax.set_xlim(0, 1)
    _finish_rate_plot(fig, ax, "Performance profiles (final success; 95% stratified bootstrap CI)", path)


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
    _finish_rate_plot(fig, ax, "Success over training (mean and 95% CI over seeds)", path)


def _finish_rate_plot(fig, ax, title: str, path: Path) -> None:
    """Axes of a plot of rates in [0, 1]: limits, grid, legend, title; saved and closed."""
    import matplotlib.pyplot as plt

    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title)
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


_FEW = "†"
_FEW_NOTE = (
    f"fewer than {MIN_CI_RUNS} runs: a bootstrap over so few runs takes few distinct values, so this CI "
    f"says little about the spread over seeds; read the numbers as indicative."
)


def _f(value: float) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.2f}"


def _markdown(
    stats: list[MethodStats],
    poi_rows: list[tuple[str, str, float, float, float]] | None = None,
    diags: dict[str, MethodDiagnostics] | None = None,
    figures: dict[str, dict[str, str]] | None = None,
    warnings: list[str] | None = None,
) -> str:
    lines = ["# Report", ""]
    if warnings:
        lines += ["## Warnings", ""] + [f"* {warning}" for warning in warnings] + [""]
    lines += [
        "Best = per seed, the maximum over evaluations of the task-averaged success (the papers' metric), "
        "then mean ± SEM over seeds. Final = the last evaluation. IQM of seed best = IQM of the per-seed best "
        "scores with a 95% bootstrap CI over seeds. IQM run × task = rliable's IQM of the pooled final success "
        "of every run on every task, 95% CI from a bootstrap stratified over runs within each task.",
        "",
        "| method | seeds | best | final | IQM of seed best [95% CI] | IQM run × task, final [95% CI] |",
        "|---|---|---|---|---|---|",
    ]
    for s in stats:
        mark = _FEW if s.few_runs else ""
        lines.append(
            f"| {s.label} | {s.n_seeds} | {s.best_mean:.3f} ± {s.best_sem:.3f} | {s.final_mean:.3f} ± {s.final_sem:.3f} | "
            f"{s.iqm:.3f} [{s.iqm_ci[0]:.3f}, {s.iqm_ci[1]:.3f}]{mark} | "
            f"{s.iqm_run_task:.3f} [{s.iqm_run_task_ci[0]:.3f}, {s.iqm_run_task_ci[1]:.3f}]{mark} |"
        )
    if any(s.few_runs for s in stats):
        lines += ["", f"{_FEW} {_FEW_NOTE}"]
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

    lines += [
        "## Comparisons (rliable's statistics on run × task final success)",
        "",
        "Performance profile: the fraction of run × task scores above each threshold τ, with 95% stratified "
        "bootstrap bands; a curve above another everywhere dominates it. Data: `profiles.csv`.",
        "",
        "![performance profiles](profiles.png)",
        "",
    ]
    if poi_rows:
        compared = [s.label for s in stats if s.probability_of_improvement]
        lookup = {(x, y): (p, lo, hi) for x, y, p, lo, hi in poi_rows}
        by_label = {s.label: s for s in stats}
        lines += [
            "Probability of improvement P(row > column): the chance that a random run of the row method beats a "
            "random run of the column method on a random task (ties count ½), with its 95% CI; 0.5 means no "
            "difference; a 95% CI wholly above 0.5 means the row method is better beyond the seed-to-seed noise. "
            "Data: `poi.csv`.",
            "",
            "| P(row > column) | " + " | ".join(compared) + " |",
            "|---|" + "---|" * len(compared),
        ]
        for x in compared:
            cells = []
            for y in compared:
                if (x, y) in lookup:
                    p, lo, hi = lookup[(x, y)]
                    few = _FEW if (by_label[x].few_runs or by_label[y].few_runs) else ""
                    cells.append(f"{p:.2f} [{lo:.2f}, {hi:.2f}]{few}")
                else:
                    cells.append("")
            lines.append(f"| {x} | " + " | ".join(cells) + " |")
        if any(by_label[x].few_runs for x in compared):
            lines += ["", f"{_FEW} {_FEW_NOTE}"]
        lines.append("")
    if diags:
        figures = figures or {}
        lines += [
            "## Gradient diagnostics (mean over the seeds that logged them)",
            "",
            "Conflict = fraction of task pairs whose gradients have a negative cosine, averaged over the first and the "
            "last third of training; ‖d‖ = mean norm of the update direction. See docs/diagnostics.md. "
            "Data: `diagnostics.json`.",
            "",
            "| method | seeds | critic conflict first → last | actor conflict first → last | critic ‖d‖ | actor ‖d‖ | figures |",
            "|---|---|---|---|---|---|---|",
        ]
        for label, d in sorted(diags.items()):
            cells = [label, str(d.n_runs)]
            for name in ("critic", "actor"):
                c = d.components.get(name)
                cells.append("-" if c is None else f"{_f(c.conflict_first)} → {_f(c.conflict_last)}")
            for name in ("critic", "actor"):
                c = d.components.get(name)
                cells.append("-" if c is None else f"{c.direction_norm:.3g}")
            links = [f"[{kind}]({name})" for kind, name in figures.get(label, {}).items()]
            cells.append(", ".join(links) or "-")
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", "![conflict fraction over training](conflict.png)", "", "![served cosine against final success](served.png)", ""]
        labels = sorted(diags)
        by_label = {s.label: s for s in stats}
        lines += [
            "### Served per task: mean cos(d, g_i) over training, critic / actor (final success)",
            "",
            "A negative served value means the updates, on average, increased that task's loss to first order.",
            "",
            "| task | " + " | ".join(labels) + " |",
            "|---|" + "---|" * len(labels),
        ]
        for t in dict.fromkeys(t for d in diags.values() for t in d.tasks):
            cells = []
            for label in labels:
                d = diags[label]
                if t not in d.tasks:
                    cells.append("")
                    continue
                i = d.tasks.index(t)
                served = " / ".join(_f(d.components[n].served[i]) if n in d.components else "-" for n in ("critic", "actor"))
                final = by_label[label].per_task_final.get(t) if label in by_label else None
                cells.append(f"{served} ({_f(final)})")
            lines.append(f"| {t} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def _diagnostics(groups: dict[str, list[Run]]) -> dict[str, MethodDiagnostics]:
    """Per method, the mean over its seeds of the diagnostics they logged (methods without any left out)."""
    out = {}
    for label, runs in sorted(groups.items()):
        logged = [d for d in (read_diagnostics(r.path, list(r.per_task)) for r in runs) if d is not None and d.components]
        if logged:
            out[label] = aggregate_diagnostics(label, logged)
    return out


def report(roots: list[Path], out: Path | None = None, json_path: Path | None = None) -> list[MethodStats]:
    runs = find_runs(roots)
    if not runs:
        raise ValueError(f"no run directories with evaluations under {', '.join(map(str, roots))}")
    groups = group_runs(runs)
    stats = [method_stats(label, group) for label, group in sorted(groups.items())]
    poi_rows = compare_methods(stats)
    warnings = run_warnings(runs)
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    header, rows = _main_table(stats)
    widths = [max(len(header[i]), 10) for i in range(len(header))]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    for s, row in zip(stats, rows):
        cells = [f"{c:.3f}" if isinstance(c, float) else str(c) for c in row]
        if s.few_runs:
            cells[1] += _FEW  # the seeds column
        print("  ".join(c.ljust(w) for c, w in zip(cells, widths)))
    if any(s.few_runs for s in stats):
        print(f"{_FEW} {_FEW_NOTE}")
    out = Path(out) if out is not None else Path(roots[0]) / "report"
    out.mkdir(parents=True, exist_ok=True)
    _write_csv(out / "summary.csv", header, rows)
    tasks = list(dict.fromkeys(t for s in stats for t in s.per_task_best))
    _write_csv(out / "per_task.csv", ["method", "task", "best", "final"],
               [[s.label, t, s.per_task_best[t], s.per_task_final[t]] for s in stats for t in tasks if t in s.per_task_best])
    _write_csv(out / "runs.csv", ["method", "seed", "best", "final", "path"],
               [[label, r.seed, float(r.mean_curve.max()), float(r.mean_curve[-1]), str(r.path)] for label, g in sorted(groups.items()) for r in g])
    _write_csv(out / "poi.csv", ["x", "y", "p_x_better", "ci_low", "ci_high"], [list(r) for r in poi_rows])
    profiles = _profiles(stats)
    _write_csv(out / "profiles.csv", ["method", "tau", "fraction_above", "ci_low", "ci_high"],
               [[label, float(tau), float(p[i]), float(lo[i]), float(hi[i])]
                for label, (p, lo, hi) in sorted(profiles.items()) for i, tau in enumerate(PROFILE_TAUS)])
    _plot_curves(groups, out / "curves.png")
    _plot_per_task(stats, out / "per_task.png")
    _plot_profiles(profiles, out / "profiles.png")
    diags = _diagnostics(groups)
    figures: dict[str, dict[str, str]] = {}
    if diags:
        plot_conflict(diags, out / "conflict.png")
        plot_served(diags, {s.label: s.per_task_final for s in stats}, out / "served.png")
        for label, d in diags.items():
            figures[label] = {}
            if plot_cosines(d, out / f"cos_{file_label(label)}.png"):
                figures[label]["cosines"] = f"cos_{file_label(label)}.png"
            if plot_weights(d, out / f"weights_{file_label(label)}.png"):
                figures[label]["weights"] = f"weights_{file_label(label)}.png"
        (out / "diagnostics.json").write_text(json.dumps({label: d.as_json() for label, d in diags.items()}, indent=2) + "\n")
        print(f"gradient diagnostics from {sum(d.n_runs for d in diags.values())} runs of {len(diags)} methods")
    (out / "report.md").write_text(_markdown(stats, poi_rows, diags, figures, warnings))
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
