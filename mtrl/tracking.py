"""Weights & Biases logging (``train.wandb``), beside ``metrics.jsonl``, ``eval.csv`` and TensorBoard.

``open_logger`` wraps the run's ``MetricsLogger`` when ``train.wandb.mode`` is ``offline`` or
``online``: every row written to ``metrics.jsonl`` goes to W&B too (numbers as they are, per-task
lists of K numbers as ``<key>/<task>``), every evaluation row as ``eval/success/<task>``, the
resolved config as the run's config, and the videos that ``train.video_every`` records (rows
under ``video/<task>`` hold their paths) as W&B videos. Values are logged against our own
``step`` (``define_metric``), so a resumed run may log a step again without W&B dropping it.

Offline runs need no account: their files go to ``<run>/wandb/offline-run-*/``; ``wandb sync``
uploads them later. The W&B run id is kept in ``<run>/wandb_run_id`` so a resumed run continues
the same W&B run.
"""

from __future__ import annotations

import math
import secrets
from pathlib import Path
from typing import Any

from mtrl.config import Config, config_to_dict

__all__ = ["WandbLogger", "open_logger"]


def open_logger(metrics: Any, cfg: Config, run_dir: Path) -> Any:
    """``metrics`` itself, or a ``WandbLogger`` around it when ``cfg.train.wandb`` is on."""
    if cfg.train.wandb.mode == "disabled":
        return metrics
    return WandbLogger(metrics, cfg, run_dir)


class WandbLogger:
    """A ``MetricsLogger`` that also logs to a W&B run (see the module docstring).

    Every method of the wrapped logger stays available; ``log``, ``log_eval`` and ``close`` also
    reach W&B."""

    def __init__(self, metrics: Any, cfg: Config, run_dir: Path) -> None:
        try:
            import wandb
        except ImportError as err:
            raise ValueError(
                f"train.wandb.mode={cfg.train.wandb.mode} needs the 'wandb' extra: pip install -e '.[wandb]'"
            ) from err
        self.metrics, self._wandb = metrics, wandb
        self.task_names = list(metrics.task_names)
        run_dir = Path(run_dir)
        id_file = run_dir / "wandb_run_id"
        run_id = id_file.read_text().strip() if id_file.exists() else secrets.token_hex(4)  # W&B ids: [a-z0-9]
        id_file.write_text(run_id + "\n")
        options = cfg.train.wandb
        self.run = wandb.init(
            project=options.project, entity=options.entity, group=options.group,
            name=options.name or f"{cfg.name}-seed{cfg.seed}", mode=options.mode, dir=str(run_dir),
            id=run_id, resume="allow", config=config_to_dict(cfg), settings=wandb.Settings(console="off"),
            reinit="create_new",  # a population opens one run per member in this process, all active at once
        )
        self.run.define_metric("step")
        self.run.define_metric("*", step_metric="step")

    def __getattr__(self, name: str) -> Any:  # offsets() and anything else of the wrapped logger
        return getattr(self.metrics, name)

    def _row(self, values: dict[str, Any]) -> dict[str, Any]:
        row: dict[str, Any] = {}
        for key, value in values.items():
            if key.startswith("video/") and isinstance(value, str):
                path = Path(value)
                if path.suffix in (".mp4", ".gif") and path.is_file():
                    row[key] = self._wandb.Video(str(path), format=path.suffix[1:])
            elif isinstance(value, bool):
                row[key] = int(value)
            elif isinstance(value, (int, float)):
                if math.isfinite(value):
                    row[key] = value
            elif isinstance(value, (list, tuple)) and len(value) == len(self.task_names):
                for task, item in zip(self.task_names, value):
                    if isinstance(item, (int, float)) and not isinstance(item, bool) and math.isfinite(item):
                        row[f"{key}/{task}"] = item
        return row

    def log(self, step: int, values: dict[str, Any]) -> None:
        self.metrics.log(step, values)
        self.run.log({"step": int(step), **self._row(values)})

    def log_eval(self, step: int, success_rates: list[float]) -> None:
        self.metrics.log_eval(step, success_rates)
        row = {f"eval/success/{task}": float(rate) for task, rate in zip(self.task_names, success_rates)}
        self.run.log({"step": int(step), **row})

    def close(self) -> None:
        self.metrics.close()
        self.run.finish()
