"""Synthetic run directories for the report and inspect tests: config.yaml, eval.csv and, when
asked, the gradient diagnostics the trainer logs (metrics.jsonl keys and diagnostics.jsonl,
as docs/diagnostics.md and mtrl/inspection.py describe them)."""

from __future__ import annotations

import json

import numpy as np
import yaml

TASKS = ["reach-v3", "push-v3"]


def make_run(root, method, seed, rows, benchmark="MT10", tasks=TASKS, main_task=None, label=None):
    """A run directory ``root/method/seed<seed>`` whose eval.csv holds ``rows``: (step, [success per task])."""
    path = root / method / f"seed{seed}"
    path.mkdir(parents=True)
    config = {"seed": seed, "env": {"benchmark": benchmark}, "aggregator": {"name": method}, "main_task": main_task}
    (path / "config.yaml").write_text(yaml.safe_dump(config))
    lines = ["step,mean_success," + ",".join(tasks)]
    for step, values in rows:
        lines.append(f"{step},{np.mean(values)},{','.join(str(v) for v in values)}")
    (path / "eval.csv").write_text("\n".join(lines) + "\n")
    if label:
        (path / "sweep.json").write_text(json.dumps({"label": label}))
    return path


def _cosines(G: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(G, axis=1)
    safe = np.where(norms > 0, norms, 1.0)
    cos = (G @ G.T) / np.outer(safe, safe)
    cos[norms == 0] = 0.0
    cos[:, norms == 0] = 0.0
    return cos


def write_diagnostics(path, steps, num_tasks, seed=0, weights=True, components=("critic", "actor"), warmup_line=True):
    """Append the trainer's diagnostics for ``steps`` to ``path``'s metrics.jsonl and diagnostics.jsonl.

    Each step draws a random G [K, 6] per component, with a growing bias so that conflict falls
    over training, and the direction d = w @ G (w the logged weights, or ones). Returns what was
    logged, per component: ``cos`` [S, K, K] (rounded as logged), ``conflict`` [S], ``served``
    [S, K], ``task_grad_norm`` [S, K], ``direction_norm`` [S], ``weights`` [S, K] or None.
    """
    rng = np.random.default_rng(seed)
    logged = {c: {"cos": [], "conflict": [], "served": [], "task_grad_norm": [], "direction_norm": [], "weights": []} for c in components}
    metric_lines, diag_lines = [], []
    if warmup_line:  # a log step before the first update: no diagnostics at all
        metric_lines.append({"step": int(steps[0]) // 2, "train/episodes": 0})
    for k, step in enumerate(steps):
        record, diag = {"step": int(step), "train/episodes": k}, {"step": int(step)}
        for c in components:
            G = rng.normal(size=(num_tasks, 6)) + (k / len(steps)) * 2.0  # [K, 6]
            w = rng.uniform(0.5, 1.5, size=num_tasks) if weights else np.ones(num_tasks)
            d = w @ G
            cos = np.round(_cosines(G), 4)
            pairs = cos[np.triu_indices(num_tasks, 1)]
            served = (G @ d) / (np.linalg.norm(G, axis=1) * np.linalg.norm(d))
            values = {
                "conflict": float(np.mean(pairs < 0)) if len(pairs) else 0.0,
                "served": served.tolist(),
                "task_grad_norm": np.linalg.norm(G, axis=1).tolist(),
                "direction_norm": float(np.linalg.norm(d)),
            }
            for key, value in values.items():
                record[f"{c}/{key}"] = value
                logged[c][key].append(value)
            if weights:
                record[f"{c}/weights"] = w.tolist()
                logged[c]["weights"].append(w.tolist())
            record[f"{c}/loss"] = 1.0
            diag[f"{c}/cos"] = cos.tolist()
            logged[c]["cos"].append(cos)
        metric_lines.append(record)
        diag_lines.append(diag)
    with open(path / "metrics.jsonl", "a") as handle:
        handle.writelines(json.dumps(r) + "\n" for r in metric_lines)
    with open(path / "diagnostics.jsonl", "a") as handle:
        handle.writelines(json.dumps(r) + "\n" for r in diag_lines)
    out = {}
    for c, values in logged.items():
        out[c] = {key: (np.array(v) if v else None) for key, v in values.items()}
    return out
