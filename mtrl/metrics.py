"""Run outputs (docs/design.md §7): ``metrics.jsonl``, ``eval.csv``, ``status.json``, optional TensorBoard,
and a progress bar (tqdm).

Both metric files are append-only; their byte sizes are recorded in every checkpoint so that a
resumed run truncates them back to the checkpoint and never holds duplicate or lost rows.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any, TextIO

__all__ = ["MetricsLogger", "ProgressLine", "atomic_write_text", "read_metrics", "read_status", "write_status"]

#: metric keys written to ``diagnostics.jsonl`` instead of ``metrics.jsonl`` (K x K matrices:
#: 2,500 numbers per component at K = 50, too many for a line of the main log)
MATRIX_SUFFIXES = ("/cos",)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temp file, fsync and ``os.replace``."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def write_status(run_dir: Path, state: str, step: int, total_steps: int, **extra: Any) -> None:
    """``status.json``: ``{"state": running|finished|failed|interrupted, "step", "total_steps"}``."""
    payload = {"state": state, "step": int(step), "total_steps": int(total_steps), **extra}
    atomic_write_text(Path(run_dir) / "status.json", json.dumps(payload) + "\n")


def read_status(run_dir: Path) -> dict[str, Any] | None:
    path = Path(run_dir) / "status.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _clean(value: Any) -> Any:
    """JSON-safe floats (NaN/Inf become None) and plain Python types."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return _clean(value.item())
    return value


def read_metrics(values: dict[str, Any]) -> dict[str, Any]:
    """Plain numbers for a metrics dict whose values may be tensors or arrays.

    The training step hands its metrics over as device tensors (docs/design.md §8: nothing is read on
    the host in the hot loop); this is where they are read, once per log line: every tensor on an
    accelerator comes to the host in ONE transfer. 0-d tensors become floats, others (nested)
    lists; numpy arrays become lists; everything else passes through."""
    import numpy as np
    import torch

    remote = [(k, v) for k, v in values.items() if isinstance(v, torch.Tensor) and v.device.type != "cpu"]
    out = dict(values)
    if remote:
        flat = torch.cat([v.detach().reshape(-1).to(torch.float64) for _, v in remote]).cpu().tolist()
        offset = 0
        for key, value in remote:
            n = value.numel()
            chunk = flat[offset : offset + n]
            offset += n
            out[key] = chunk[0] if value.dim() == 0 else np.asarray(chunk).reshape(value.shape).tolist()
    for key, value in out.items():
        if isinstance(value, torch.Tensor):  # host tensors: no device involved
            out[key] = value.item() if value.dim() == 0 else value.detach().tolist()
        elif isinstance(value, np.ndarray):
            out[key] = value.tolist()
    return out


def _round(value: Any, digits: int = 4) -> Any:
    if isinstance(value, list):
        return [_round(v, digits) for v in value]
    return round(value, digits) if isinstance(value, float) else value


class MetricsLogger:
    """Append-only ``metrics.jsonl``, ``diagnostics.jsonl`` (the K x K cosine matrices, rounded to
    4 decimals) and ``eval.csv`` of one run directory."""

    def __init__(self, run_dir: Path, task_names: list[str], tensorboard: bool = False) -> None:
        self.run_dir = Path(run_dir)
        self.task_names = list(task_names)
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self.diagnostics_path = self.run_dir / "diagnostics.jsonl"
        self.eval_path = self.run_dir / "eval.csv"
        self._metrics: TextIO = open(self.metrics_path, "a")
        self._diagnostics: TextIO = open(self.diagnostics_path, "a")
        new_eval = not self.eval_path.exists() or self.eval_path.stat().st_size == 0
        self._eval: TextIO = open(self.eval_path, "a")
        if new_eval:
            self._eval.write(",".join(["step", "mean_success", *self.task_names]) + "\n")
            self._eval.flush()
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as err:  # pragma: no cover - optional extra
                raise ValueError("train.tensorboard=true needs the 'tensorboard' extra: pip install -e '.[tensorboard]'") from err
            self._tb = SummaryWriter(str(self.run_dir / "tb"))

    def offsets(self) -> dict[str, int]:
        """Byte sizes of the metric files (after flushing), stored in checkpoints."""
        for handle in self._handles():
            handle.flush()
        return {
            "metrics.jsonl": self.metrics_path.stat().st_size,
            "diagnostics.jsonl": self.diagnostics_path.stat().st_size,
            "eval.csv": self.eval_path.stat().st_size,
        }

    def _handles(self) -> tuple[TextIO, ...]:
        return (self._metrics, self._diagnostics, self._eval)

    def log(self, step: int, values: dict[str, Any]) -> None:
        """One line of ``metrics.jsonl`` (and of ``diagnostics.jsonl`` when ``values`` holds matrices).
        Tensors are read here (``read_metrics``)."""
        values = read_metrics(values)
        matrices = {k: _round(v) for k, v in values.items() if k.endswith(MATRIX_SUFFIXES)}
        values = {k: v for k, v in values.items() if k not in matrices}
        record = {"step": int(step), **_clean(values)}
        self._metrics.write(json.dumps(record) + "\n")
        self._metrics.flush()
        if matrices:
            self._diagnostics.write(json.dumps({"step": int(step), **_clean(matrices)}) + "\n")
            self._diagnostics.flush()
        if self._tb is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                    self._tb.add_scalar(key, value, step)

    def log_eval(self, step: int, success_rates: list[float]) -> None:
        mean = sum(success_rates) / len(success_rates)
        row = [str(int(step)), f"{mean:.6g}", *(f"{s:.6g}" for s in success_rates)]
        self._eval.write(",".join(row) + "\n")
        self._eval.flush()
        if self._tb is not None:
            self._tb.add_scalar("eval/mean_success", mean, step)

    def close(self) -> None:
        for handle in self._handles():
            handle.flush()
            os.fsync(handle.fileno())
            handle.close()
        if self._tb is not None:
            self._tb.close()


def truncate_metric_files(run_dir: Path, offsets: dict[str, int]) -> None:
    """Cut ``metrics.jsonl`` and ``eval.csv`` back to the sizes recorded in a checkpoint."""
    for name, size in offsets.items():
        path = Path(run_dir) / name
        if path.exists() and path.stat().st_size > size:
            with open(path, "r+b") as handle:
                handle.truncate(size)


class ProgressLine:
    """A tqdm progress bar on stderr: step of total, steps/s, ETA and the last evaluation's mean
    success. Off when the stream is not a terminal (logs of sweeps and SLURM jobs stay clean)."""

    def __init__(self, total: int, start: int = 0, enabled: bool = True, every_s: float = 1.0, file: TextIO | None = None) -> None:
        from tqdm import tqdm

        stream = sys.stderr if file is None else file
        self.enabled = enabled and stream.isatty()
        self._bar = tqdm(
            total=total, initial=start, unit="steps", file=stream, disable=not self.enabled, mininterval=every_s,
            dynamic_ncols=True, smoothing=0.05,
        )
        self._shown = ""
        self.last_success: float | None = None

    def update(self, step: int, force: bool = False) -> None:
        if not self.enabled:
            return
        shown = "success n/a" if self.last_success is None else f"success {self.last_success:.2f}"
        if shown != self._shown:
            self._shown = shown
            self._bar.set_postfix_str(shown, refresh=False)
        self._bar.update(step - self._bar.n)  # tqdm redraws at most every `every_s` seconds
        if force:
            self._bar.refresh()

    def close(self) -> None:
        self._bar.close()
