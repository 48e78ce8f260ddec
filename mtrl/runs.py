"""Run directories: reading what a run is and what it produced.

Both ``mtrl report`` and ``mtrl inspect`` read runs through this module (and the trainer writes
its records through it), so data flows one way: ``runs`` <- ``inspection`` <- ``report``.

What a run *is*: ``config.yaml`` holds the config the run started with and is never rewritten by
a resume; ``config_history.jsonl`` beside it lists every change a resume made (one JSON object per
changed key: ``step``, ``key``, ``old``, ``new``, ``change`` = ``allowed`` or ``forced``, ``time``;
``old`` or ``new`` is left out where that side had no such key). The config a run has now is
``config.yaml`` with the history's ``new`` values applied in order (``effective_config_dict``).
``provenance.jsonl`` holds one record per start and resume of what produced the run
(``mtrl.provenance``).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from mtrl.config import ConfigError, config_from_dict, apply_overrides, Config, load_yaml

__all__ = [
    "CONFIG_HISTORY",
    "PROVENANCE",
    "Run",
    "append_jsonl",
    "effective_config_dict",
    "find_runs",
    "load_run_config",
    "read_config_history",
    "read_jsonl_records",
    "read_run",
]

CONFIG_HISTORY = "config_history.jsonl"
PROVENANCE = "provenance.jsonl"


# ---------------------------------------------------------------------------------------------
# JSONL records, appended atomically
# ---------------------------------------------------------------------------------------------
def read_jsonl_records(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a JSONL file, in order ([] when it does not exist)."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as err:
            raise ValueError(f"{path}: line {number} is not valid JSON ({err})") from err
        if not isinstance(record, dict):
            raise ValueError(f"{path}: line {number} is not a JSON object")
        records.append(record)
    return records


def append_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    """Append ``records`` to a small JSONL file atomically: the whole file is rewritten through a
    temp file and renamed over it, so a crash leaves the old file or the old one plus every new line."""
    from mtrl.metrics import atomic_write_text

    if not records:
        return
    path = Path(path)
    old = path.read_text() if path.exists() else ""
    if old and not old.endswith("\n"):
        old += "\n"
    atomic_write_text(path, old + "".join(json.dumps(r, default=str) + "\n" for r in records))


# ---------------------------------------------------------------------------------------------
# what a run is: config.yaml and its history
# ---------------------------------------------------------------------------------------------
def read_config_history(run_dir: Path) -> list[dict[str, Any]]:
    return read_jsonl_records(Path(run_dir) / CONFIG_HISTORY)


def _set_key(data: dict[str, Any], key: str, value: Any, delete: bool) -> None:
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        nxt = node.get(part)
        if not isinstance(nxt, dict):
            nxt = node[part] = {}
        node = nxt
    if delete:
        node.pop(parts[-1], None)
    else:
        node[parts[-1]] = value


def effective_config_dict(run_dir: Path) -> dict[str, Any]:
    """The config a run has now: ``config.yaml`` (its start) with ``config_history.jsonl`` applied."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"{run_dir} holds no config.yaml")
    data = load_yaml(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    for record in read_config_history(run_dir):
        _set_key(data, str(record["key"]), record.get("new"), delete="new" not in record)
    return data


def load_run_config(run_dir: Path, overrides: list[str] | None = None) -> Config:
    """The config a run has now (``effective_config_dict``), with ``--set`` overrides, validated."""
    return config_from_dict(apply_overrides(effective_config_dict(run_dir), overrides or []))


# ---------------------------------------------------------------------------------------------
# what a run produced: evaluation curves
# ---------------------------------------------------------------------------------------------
@dataclass
class Run:
    """One run directory: its label, seed, benchmark and evaluation curves; ``config`` is its
    effective config dict (``config.yaml`` with its history applied)."""

    path: Path
    label: str
    seed: int
    benchmark: str
    main_task: str | None
    steps: np.ndarray  # [E]
    per_task: dict[str, np.ndarray]  # task -> [E]
    config: dict[str, Any] | None = None

    @property
    def mean_curve(self) -> np.ndarray:
        return np.mean(np.stack(list(self.per_task.values())), axis=0)


def read_run(path: Path) -> Run | None:
    """Parse one run directory; None if it has no evaluation yet.

    The label is the sweep's method label when the run was started by ``mtrl sweep`` (``label`` in
    ``sweep.json``), else the aggregator name; runs of ``MT1-<task>`` benchmarks outside a sweep are
    "STL"; a ``label`` key in the config overrides all (``mtrl.sb3_baseline`` runs are "sb3_sac")."""
    config = effective_config_dict(path)
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
        config=config,
    )


def find_runs(roots: list[Path]) -> list[Run]:
    """Every run directory (``config.yaml`` and ``eval.csv``) at or below ``roots`` that has evaluations."""
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
