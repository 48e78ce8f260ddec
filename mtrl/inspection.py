"""Look inside runs: read the gradient diagnostics the trainer logged, summarise and plot them.

``mtrl inspect RUN_DIR [--out DIR]`` prints and plots one run (read with ``mtrl.runs``); ``mtrl
report`` uses the same readers and figures with every method's seeds averaged (``docs/diagnostics.md`` explains the
quantities and how to read each figure). The module is not named ``inspect``: that would shadow
the standard library's module whenever a file of ``mtrl/`` runs as a script.

What the trainer writes every ``log_every`` steps, per component ``c`` in {critic, actor}
(K = the tasks, in the order of the columns of ``eval.csv``):

* ``metrics.jsonl``: ``c/task_grad_norm`` [K] (‖g_i‖), ``c/conflict`` (fraction of the
  K(K-1)/2 task pairs with a negative cosine), ``c/served`` [K] (cos(d, g_i), 0 where g_i or d is
  zero), ``c/direction_norm`` (‖d‖ as written into ``.grad``, after clipping) and, for weighting
  methods, ``c/weights`` [K];
* ``diagnostics.jsonl``: ``{"step": s, "critic/cos": [[K] * K], "actor/cos": ...}``, the K x K
  cosine matrix of the task gradients.

Reading rules: a step logged twice (a run restarted without truncating its files) keeps its last
record; an unparsable *last* line (a run killed mid-write) is dropped, an unparsable line
elsewhere is an error. Runs written before diagnostics were logged have none of these keys; they
read as "no diagnostics" and every report of them is unchanged.

Thirds of training: of the S log steps that carry a quantity, the first ``ceil(S / 3)`` and the
last ``ceil(S / 3)`` (both are the single step when S = 1).
"""

from __future__ import annotations

import argparse
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mtrl.runs import read_run

__all__ = [
    "COMPONENTS",
    "ComponentDiagnostics",
    "RunDiagnostics",
    "ComponentSummary",
    "MethodDiagnostics",
    "read_jsonl",
    "read_diagnostics",
    "aggregate_diagnostics",
    "thirds",
    "file_label",
    "plot_conflict",
    "plot_cosines",
    "plot_weights",
    "plot_served",
    "inspect_run",
    "main",
]

COMPONENTS = ("critic", "actor")


# ---------------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------------
def read_jsonl(path: Path, convert=None) -> list[dict]:
    """Records of a JSONL log, sorted by step, one per step: lines of the same step are merged,
    a later value winning (the trainer writes an evaluation line at the step of a log line).

    Read line by line; ``convert`` (record -> record) is applied as each line is parsed, so that
    large values (the K x K matrices of diagnostics.jsonl at K = 50) become arrays at once instead
    of piling up as Python lists.
    """
    path = Path(path)
    if not path.exists():
        return []
    by_step: dict[int, dict] = {}
    broken: tuple[int, ValueError] | None = None  # an unparsable line: fine only if it is the last
    with open(path) as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            if broken is not None:
                raise ValueError(f"{path}: line {broken[0]} is not valid JSON ({broken[1]})")
            try:
                record = json.loads(line)
            except ValueError as err:
                broken = (number, err)  # a run killed while writing its last line, unless more follow
                continue
            if not isinstance(record, dict) or "step" not in record:
                raise ValueError(f"{path}: line {number} has no 'step' field")
            by_step.setdefault(int(record["step"]), {}).update(convert(record) if convert is not None else record)
    return [by_step[s] for s in sorted(by_step)]


def _matrices_as_arrays(record: dict) -> dict:
    """``*/cos`` lists as float arrays; a ragged one stays a list (``_component`` reports it)."""
    out = dict(record)
    for key, value in record.items():
        if key.endswith("/cos") and value is not None:
            try:
                out[key] = np.asarray(value, dtype=np.float64)
            except (TypeError, ValueError):
                pass
    return out


def thirds(count: int) -> tuple[slice, slice]:
    """Slices of the first and the last ``ceil(count / 3)`` of ``count`` log steps."""
    if count < 1:
        raise ValueError(f"thirds of training need at least one log step; got {count}")
    size = math.ceil(count / 3)
    return slice(0, size), slice(count - size, count)


@dataclass
class ComponentDiagnostics:
    """One component's (critic or actor) diagnostics over a run's log steps."""

    steps: np.ndarray  # [S] log steps carrying this component's diagnostics
    conflict: np.ndarray  # [S] fraction of task pairs with a negative cosine
    served: np.ndarray  # [S, K] cos(d, g_i)
    task_grad_norm: np.ndarray  # [S, K] ||g_i||
    direction_norm: np.ndarray  # [S] ||d|| after clipping
    weights: np.ndarray | None  # [S, K] (NaN where a step logged none); None: never logged
    cos_steps: np.ndarray  # [C] steps of diagnostics.jsonl holding this component's matrix
    cos_first: np.ndarray | None  # [K, K] mean cosine matrix over the first third of cos_steps
    cos_last: np.ndarray | None  # [K, K] same over the last third

    def conflict_thirds(self) -> tuple[float, float]:
        first, last = thirds(len(self.steps))
        return float(np.nanmean(self.conflict[first])), float(np.nanmean(self.conflict[last]))


@dataclass
class RunDiagnostics:
    path: Path
    tasks: list[str]
    components: dict[str, ComponentDiagnostics]


def _number(value) -> float:
    return math.nan if value is None else float(value)


def _vector(record: dict, key: str, num_tasks: int, path: Path) -> np.ndarray:
    value = record.get(key)
    if value is None:
        return np.full(num_tasks, math.nan)
    if not isinstance(value, list) or len(value) != num_tasks:
        found = len(value) if isinstance(value, list) else type(value).__name__
        raise ValueError(f"{path}: step {record['step']}: '{key}' should hold {num_tasks} values (one per task); found {found}")
    return np.array([_number(v) for v in value])


def _component(name: str, metrics: list[dict], cosines: list[dict], num_tasks: int, run_dir: Path) -> ComponentDiagnostics | None:
    rows = [r for r in metrics if f"{name}/conflict" in r]
    if not rows:
        return None
    path = run_dir / "metrics.jsonl"
    has_weights = any(f"{name}/weights" in r for r in rows)
    matrices, cos_steps = [], []
    for record in cosines:
        value = record.get(f"{name}/cos")
        if value is None:
            continue
        try:
            matrix = np.asarray(value, dtype=np.float64)
            found = f"shape {matrix.shape}"
        except (TypeError, ValueError):
            matrix, found = None, "rows of different lengths or values that are not numbers"
        if matrix is None or matrix.shape != (num_tasks, num_tasks):
            raise ValueError(
                f"{run_dir / 'diagnostics.jsonl'}: step {record['step']}: '{name}/cos' should be {num_tasks} x {num_tasks}; "
                f"found {found}"
            )
        matrices.append(matrix)
        cos_steps.append(int(record["step"]))
    cos_first = cos_last = None
    if matrices:
        stack = np.stack(matrices)  # [C, K, K]
        first, last = thirds(len(stack))
        cos_first, cos_last = stack[first].mean(0), stack[last].mean(0)
    return ComponentDiagnostics(
        steps=np.array([int(r["step"]) for r in rows]),
        conflict=np.array([_number(r[f"{name}/conflict"]) for r in rows]),
        served=np.stack([_vector(r, f"{name}/served", num_tasks, path) for r in rows]),
        task_grad_norm=np.stack([_vector(r, f"{name}/task_grad_norm", num_tasks, path) for r in rows]),
        direction_norm=np.array([_number(r.get(f"{name}/direction_norm")) for r in rows]),
        weights=np.stack([_vector(r, f"{name}/weights", num_tasks, path) for r in rows]) if has_weights else None,
        cos_steps=np.array(cos_steps, dtype=np.int64),
        cos_first=cos_first,
        cos_last=cos_last,
    )


def read_diagnostics(run_dir: Path, tasks: list[str]) -> RunDiagnostics | None:
    """The diagnostics of one run directory, or None when it logged none (an older run)."""
    run_dir = Path(run_dir)
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    if not any(f"{c}/conflict" in r for r in metrics for c in COMPONENTS):
        return None
    cosines = read_jsonl(run_dir / "diagnostics.jsonl", convert=_matrices_as_arrays)
    components = {}
    for name in COMPONENTS:
        component = _component(name, metrics, cosines, len(tasks), run_dir)
        if component is not None:
            components[name] = component
    return RunDiagnostics(run_dir, list(tasks), components)


# ---------------------------------------------------------------------------------------------
# mean over seeds
# ---------------------------------------------------------------------------------------------
@dataclass
class ComponentSummary:
    """One component of one method: per-seed summaries, then the mean over seeds."""

    n_runs: int
    steps: np.ndarray  # [S] log steps common to every seed
    conflict_mean: np.ndarray  # [S]
    conflict_sem: np.ndarray  # [S] (0 for one seed)
    conflict_first: float  # mean over seeds of each seed's first-third mean
    conflict_last: float
    served: np.ndarray  # [K] mean over seeds of each seed's mean over log steps
    task_grad_norm: np.ndarray  # [K] same
    direction_norm: float  # same
    weights: np.ndarray | None  # [S, K] mean over seeds, at the common steps
    cos_first: np.ndarray | None  # [K, K] mean over seeds of each seed's first-third mean
    cos_last: np.ndarray | None

    def as_json(self, tasks: list[str]) -> dict:
        def matrix(m):
            return None if m is None else [[round(float(v), 6) for v in row] for row in m]

        return {
            "seeds": self.n_runs,
            "steps": self.steps.tolist(),
            "conflict": [_json_float(v) for v in self.conflict_mean],
            "conflict_sem": [_json_float(v) for v in self.conflict_sem],
            "conflict_first_third": _json_float(self.conflict_first),
            "conflict_last_third": _json_float(self.conflict_last),
            "served": {t: _json_float(v) for t, v in zip(tasks, self.served)},
            "task_grad_norm": {t: _json_float(v) for t, v in zip(tasks, self.task_grad_norm)},
            "direction_norm": _json_float(self.direction_norm),
            "weights": None if self.weights is None else {t: [_json_float(v) for v in self.weights[:, i]] for i, t in enumerate(tasks)},
            "cos_first_third": matrix(self.cos_first),
            "cos_last_third": matrix(self.cos_last),
        }


@dataclass
class MethodDiagnostics:
    label: str
    tasks: list[str]
    components: dict[str, ComponentSummary] = field(default_factory=dict)

    @property
    def n_runs(self) -> int:
        return max((c.n_runs for c in self.components.values()), default=0)

    def as_json(self) -> dict:
        return {"tasks": self.tasks, **{name: c.as_json(self.tasks) for name, c in self.components.items()}}


def _json_float(value) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def _nanmean(values: np.ndarray, axis=None):
    """Mean ignoring NaN; NaN (without a warning) where everything is NaN."""
    values = np.asarray(values, dtype=np.float64)
    count = np.sum(~np.isnan(values), axis=axis)
    total = np.nansum(values, axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        return total / count


def _summarise(parts: list[ComponentDiagnostics]) -> ComponentSummary:
    common = sorted(set.intersection(*(set(p.steps.tolist()) for p in parts)))
    index = [np.searchsorted(p.steps, common) for p in parts]
    conflict = np.stack([p.conflict[i] for p, i in zip(parts, index)]) if common else np.zeros((len(parts), 0))  # [n, S]
    sem = conflict.std(0, ddof=1) / np.sqrt(len(parts)) if len(parts) > 1 else np.zeros(conflict.shape[1])
    thirds_ = np.array([p.conflict_thirds() for p in parts])  # [n, 2]
    weights = None
    if all(p.weights is not None for p in parts) and common:
        weights = np.mean(np.stack([p.weights[i] for p, i in zip(parts, index)]), axis=0)  # [S, K]
    with_cos = [p for p in parts if p.cos_first is not None]
    return ComponentSummary(
        n_runs=len(parts),
        steps=np.array(common, dtype=np.int64),
        conflict_mean=conflict.mean(0),
        conflict_sem=sem,
        conflict_first=float(np.mean(thirds_[:, 0])),
        conflict_last=float(np.mean(thirds_[:, 1])),
        served=np.mean([_nanmean(p.served, axis=0) for p in parts], axis=0),
        task_grad_norm=np.mean([_nanmean(p.task_grad_norm, axis=0) for p in parts], axis=0),
        direction_norm=float(np.mean([_nanmean(p.direction_norm) for p in parts])),
        weights=weights,
        cos_first=np.mean([p.cos_first for p in with_cos], axis=0) if with_cos else None,
        cos_last=np.mean([p.cos_last for p in with_cos], axis=0) if with_cos else None,
    )


def aggregate_diagnostics(label: str, runs: list[RunDiagnostics]) -> MethodDiagnostics:
    """Mean over seeds (runs) of one method's diagnostics; every run must list the same tasks."""
    if not runs:
        raise ValueError(f"method '{label}': no runs with diagnostics to aggregate")
    tasks = runs[0].tasks
    for run in runs[1:]:
        if run.tasks != tasks:
            raise ValueError(f"method '{label}': {run.path} has tasks {run.tasks}, {runs[0].path} has {tasks}")
    out = MethodDiagnostics(label, list(tasks))
    for name in COMPONENTS:
        parts = [r.components[name] for r in runs if name in r.components]
        if parts:
            out.components[name] = _summarise(parts)
    return out


# ---------------------------------------------------------------------------------------------
# figures (matplotlib, Agg backend)
# ---------------------------------------------------------------------------------------------
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _short(task: str) -> str:
    return re.sub(r"-v\d+$", "", task)


def file_label(label: str) -> str:
    """A method label made safe for a file name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", label) or "method"


def _components_present(diags: dict[str, MethodDiagnostics]) -> list[str]:
    return [c for c in COMPONENTS if any(c in d.components for d in diags.values())]


def plot_conflict(diags: dict[str, MethodDiagnostics], path: Path) -> None:
    """Conflict fraction over training, one panel per component, one line per method (± SEM)."""
    plt = _pyplot()
    names = _components_present(diags)
    fig, axes = plt.subplots(1, len(names), figsize=(5.5 * len(names), 4), squeeze=False)
    for ax, name in zip(axes[0], names):
        for label, d in sorted(diags.items()):
            c = d.components.get(name)
            if c is None or not len(c.steps):
                continue
            ax.plot(c.steps, c.conflict_mean, label=f"{label} (n={c.n_runs})")
            if c.n_runs > 1:
                ax.fill_between(c.steps, c.conflict_mean - c.conflict_sem, c.conflict_mean + c.conflict_sem, alpha=0.2)
        ax.set_title(f"{name}: fraction of task pairs in conflict (cos < 0)")
        ax.set_xlabel("environment steps")
        ax.set_ylabel("conflict fraction")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_cosines(d: MethodDiagnostics, path: Path) -> bool:
    """Heatmaps of the mean cosine matrix, first and last third of training, per component."""
    names = [n for n in COMPONENTS if n in d.components and d.components[n].cos_first is not None]
    if not names:
        return False
    plt = _pyplot()
    K = len(d.tasks)
    side = max(3.5, 0.42 * K)
    fig, axes = plt.subplots(len(names), 2, figsize=(2 * side + 2.5, side * len(names) + 0.8), squeeze=False,
                             constrained_layout=True)
    for row, name in zip(axes, names):
        c = d.components[name]
        for column, (ax, matrix, when) in enumerate(((row[0], c.cos_first, "first"), (row[1], c.cos_last, "last"))):
            image = ax.imshow(matrix, vmin=-1, vmax=1, cmap="RdBu")
            ax.set_title(f"{name}, {when} third of training", fontsize=10)
            if K <= 20:
                ax.set_xticks(range(K))
                ax.set_xticklabels([_short(t) for t in d.tasks], rotation=60, ha="right", fontsize=7)
                ax.set_yticks(range(K))
                ax.set_yticklabels([_short(t) for t in d.tasks] if column == 0 else [], fontsize=7)
            if K <= 10:
                for i in range(K):
                    for j in range(K):
                        colour = "white" if abs(matrix[i, j]) > 0.6 else "black"
                        ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=6, color=colour)
        fig.colorbar(image, ax=list(row), shrink=0.8, label="cos(g_i, g_j)")
    fig.suptitle(f"{d.label}: task-gradient cosines (mean over {d.n_runs} run{'s' * (d.n_runs != 1)})")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_weights(d: MethodDiagnostics, path: Path) -> bool:
    """Each task's weight over training, per component (methods that are weightings only)."""
    names = [n for n in COMPONENTS if n in d.components and d.components[n].weights is not None]
    if not names:
        return False
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(names), figsize=(5.5 * len(names), 4), squeeze=False)
    for ax, name in zip(axes[0], names):
        c = d.components[name]
        for i, task in enumerate(d.tasks):
            ax.plot(c.steps, c.weights[:, i], label=_short(task), color=plt.cm.tab20(i % 20))
        ax.set_title(f"{d.label}, {name}: task weights")
        ax.set_xlabel("environment steps")
        ax.set_ylabel("weight w_i")
        ax.grid(alpha=0.3)
        if len(d.tasks) <= 12:
            ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_served(diags: dict[str, MethodDiagnostics], final_success: dict[str, dict[str, float]], path: Path) -> None:
    """Per method, each task's mean cos(d, g_i) (x) against its final success (y), both components."""
    plt = _pyplot()
    labels = sorted(diags)
    ncols = min(4, len(labels))
    nrows = math.ceil(len(labels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.8 * nrows), squeeze=False, sharey=True)
    markers = {"critic": "o", "actor": "^"}
    for ax, label in zip(axes.flat, labels):
        d = diags[label]
        success = np.array([final_success.get(label, {}).get(t, math.nan) for t in d.tasks])  # [K]
        served = {name: c.served for name, c in d.components.items()}  # name -> [K]
        for name, x in served.items():
            ax.scatter(x, success, marker=markers[name], label=name, alpha=0.8)
        if len(served) == 2:  # join each task's critic and actor points
            for i in range(len(d.tasks)):
                ax.plot([served["critic"][i], served["actor"][i]], [success[i]] * 2, color="grey", lw=0.6, alpha=0.6)
        if len(d.tasks) <= 12:
            anchor = served.get("critic", next(iter(served.values())))
            for x, y, task in zip(anchor, success, d.tasks):
                if np.isfinite(x) and np.isfinite(y):
                    ax.annotate(_short(task), (x, y), fontsize=6, alpha=0.7, xytext=(3, 3), textcoords="offset points")
        values = np.concatenate([x[np.isfinite(x)] for x in served.values()] + [np.zeros(1)])
        ax.set_xlim(max(-1.05, min(-0.1, values.min() - 0.1)), min(1.05, max(0.1, values.max() + 0.1)))
        ax.axvline(0.0, color="grey", lw=0.8)
        ax.set_ylim(-0.05, 1.05)
        ax.set_title(f"{label} (n={d.n_runs})", fontsize=10)
        ax.set_xlabel("served: mean cos(d, g_i) over training")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in axes[:, 0]:
        ax.set_ylabel("final success of the task")
    for ax in list(axes.flat)[len(labels):]:
        ax.set_visible(False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_task_success(steps: np.ndarray, per_task: dict[str, np.ndarray], title: str, path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (task, curve) in enumerate(per_task.items()):
        ax.plot(steps, curve, label=_short(task), color=plt.cm.tab20(i % 20))
    ax.plot(steps, np.mean(np.stack(list(per_task.values())), axis=0), color="black", lw=2, label="mean")
    ax.set_xlabel("environment steps")
    ax.set_ylabel("success rate")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    if len(per_task) <= 12:
        ax.legend(fontsize=7, ncol=2)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# mtrl inspect
# ---------------------------------------------------------------------------------------------
def _table(header: list[str], rows: list[list]) -> str:
    cells = [[f"{c:.3f}" if isinstance(c, float) else ("-" if c is None else str(c)) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def _most_conflicting(matrix: np.ndarray, tasks: list[str], count: int = 3) -> list[tuple[str, str, float]]:
    K = len(tasks)
    pairs = [(float(matrix[i, j]), tasks[i], tasks[j]) for i in range(K) for j in range(i + 1, K)]
    return [(a, b, v) for v, a, b in sorted(pairs)[:count] if v < 0]


def inspect_run(run_dir: Path, out: Path | None = None) -> dict:
    """Print and plot one run's success and diagnostics; returns what ``inspect.json`` holds."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").exists() or not (run_dir / "eval.csv").exists():
        raise ValueError(
            f"{run_dir} is not a run directory (it needs config.yaml and eval.csv); for a folder of runs use `mtrl report`"
        )
    run = read_run(run_dir)
    out = Path(out) if out is not None else run_dir / "inspect"
    out.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "eval.csv") as handle:
        tasks = [c for c in handle.readline().strip().split(",") if c not in ("step", "mean_success")]
    payload: dict = {"run": str(run_dir), "tasks": tasks, "figures": []}
    print(f"run {run_dir}")
    final: dict[str, float] = {}
    if run is None:
        print("no evaluation in eval.csv yet")
    else:
        final = {t: float(c[-1]) for t, c in run.per_task.items()}
        best = {t: float(c.max()) for t, c in run.per_task.items()}
        payload.update(label=run.label, seed=run.seed, benchmark=run.benchmark, last_eval_step=int(run.steps[-1]),
                       final_success=final, best_success=best,
                       mean_success_final=float(run.mean_curve[-1]), mean_success_best=float(run.mean_curve.max()))
        print(f"{run.label}, seed {run.seed}, {run.benchmark}: {len(run.steps)} evaluations, last at step {run.steps[-1]}; "
              f"mean success final {run.mean_curve[-1]:.3f}, best {run.mean_curve.max():.3f}")
        _plot_task_success(run.steps, run.per_task, f"{run.label}, seed {run.seed}: success per task", out / "success.png")
        payload["figures"].append("success.png")
    diagnostics = read_diagnostics(run_dir, tasks)
    if diagnostics is None or not diagnostics.components:
        print("no gradient diagnostics in metrics.jsonl (a run written before they were logged)")
        if run is not None:
            print(_table(["task", "final", "best"], [[t, final[t], best[t]] for t in tasks]))
        payload["diagnostics"] = None
    else:
        label = run.label if run is not None else run_dir.name
        method = aggregate_diagnostics(label, [diagnostics])
        payload["diagnostics"] = method.as_json()
        names = list(method.components)
        header, rows = ["task", "final"], []
        for name in names:
            header += [f"{name} served", f"{name} |g|"] + ([f"{name} w_last"] if method.components[name].weights is not None else [])
        for i, task in enumerate(tasks):
            row = [task, final.get(task)]
            for name in names:
                c = method.components[name]
                row += [float(c.served[i]), float(c.task_grad_norm[i])]
                if c.weights is not None:
                    row.append(float(c.weights[-1, i]) if len(c.weights) else None)
            rows.append(row)
        for name in names:
            c = method.components[name]
            print(f"{name}: {len(diagnostics.components[name].steps)} log steps; conflict fraction first third "
                  f"{c.conflict_first:.3f}, last third {c.conflict_last:.3f}; mean direction norm {c.direction_norm:.4g}")
            if c.cos_last is not None:
                pairs = _most_conflicting(c.cos_last, tasks)
                if pairs:
                    print("  most conflicting pairs (last third): " + ", ".join(f"{a} / {b} {v:.2f}" for a, b, v in pairs))
        print("served = mean cos(d, g_i) over training (negative: the update raised the task's loss to first order)")
        print(_table(header, rows))
        diags = {method.label: method}
        plot_conflict(diags, out / "conflict.png")
        payload["figures"].append("conflict.png")
        if plot_cosines(method, out / "cosines.png"):
            payload["figures"].append("cosines.png")
        if plot_weights(method, out / "weights.png"):
            payload["figures"].append("weights.png")
        if final:
            plot_served(diags, {method.label: final}, out / "served.png")
            payload["figures"].append("served.png")
    (out / "inspect.json").write_text(json.dumps(payload, indent=2) + "\n")
    print(f"figures and inspect.json written to {out}")
    return payload


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mtrl inspect", description="Success and gradient diagnostics of one run.")
    parser.add_argument("run_dir", type=Path, help="one run directory (holding config.yaml and eval.csv)")
    parser.add_argument("--out", type=Path, help="output folder (default: RUN_DIR/inspect)")
    args = parser.parse_args(argv)
    inspect_run(args.run_dir, args.out)
    return 0
