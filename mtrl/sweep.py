"""Run methods x seeds: ``mtrl sweep SWEEP.yaml [--jobs N] [--executor local|slurm] [--dry-run]``.

A sweep file::

    name: quick                    # runs go to runs/<name>/<method>/seed<N>/ (or `out:`)
    base: ../quick.yaml            # base config, relative to the sweep file
    seeds: [0, 1]
    set: [train.total_steps=3000]  # optional overrides for every run
    methods:                       # label -> overlay merged into the base config
      ls: {aggregator: {name: ls}}
      nashmtl: {aggregator: {name: nashmtl, options: {update_every: 1}}}

Every run is ``mtrl train BASE --seed N --run-dir DIR --resume auto --set ...`` in its own
process, logging to ``DIR/train.log``; ``DIR/sweep.json`` records the method label for
``mtrl report``. Re-running a sweep skips finished runs (``status.json``) and resumes unfinished
ones from their checkpoints. A failing run is reported with its log and does not stop the others;
the exit status is 1 if any run failed. ``--executor slurm`` submits each run as a SLURM job
through submitit (``pip install -e '.[slurm]'``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import yaml

from mtrl.config import ConfigError, apply_overrides, config_from_dict
from mtrl.metrics import read_status

__all__ = ["RunSpec", "Sweep", "load_sweep", "main"]

_SWEEP_KEYS = ("name", "base", "seeds", "methods", "set", "out")


@dataclass(frozen=True)
class RunSpec:
    label: str
    seed: int
    run_dir: Path
    overrides: tuple[str, ...]


@dataclass(frozen=True)
class Sweep:
    name: str
    base: Path
    out: Path
    runs: tuple[RunSpec, ...]


def _overlay_to_sets(overlay: dict, prefix: str = "") -> list[str]:
    """Flatten a nested overlay into dotted ``key=value`` overrides (option mappings stay whole)."""
    out = []
    for key, value in overlay.items():
        full = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict) and not key.endswith("options"):
            out.extend(_overlay_to_sets(value, full))
        else:
            out.append(f"{full}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}")
    return out


def load_sweep(path: str | Path, out: str | Path | None = None) -> Sweep:
    """Parse and validate a sweep file; every run's config is checked before anything runs."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"sweep file not found: {path}")
    data = yaml.safe_load(path.read_text()) or {}
    unknown = [k for k in data if k not in _SWEEP_KEYS]
    if unknown:
        raise ValueError(f"unknown key {unknown[0]!r} in sweep {path}; valid keys: {', '.join(_SWEEP_KEYS)}")
    for key in ("name", "base", "seeds", "methods"):
        if key not in data:
            raise ValueError(f"sweep {path} lacks {key!r} (required: name, base, seeds, methods)")
    seeds = data["seeds"]
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and s >= 0 for s in seeds):
        raise ValueError(f"seeds must be a non-empty list of non-negative ints, got {seeds!r}")
    methods = data["methods"]
    if not isinstance(methods, dict) or not methods:
        raise ValueError(f"methods must map labels to config overlays, got {methods!r}")
    base = (path.parent / data["base"]).resolve() if not Path(data["base"]).is_absolute() else Path(data["base"])
    if not base.is_file():
        raise ValueError(f"base config {base} (from {path}) not found")
    common = [str(s) for s in data.get("set") or []]
    root = Path(out or data.get("out") or Path("runs") / str(data["name"]))
    base_data = yaml.safe_load(base.read_text()) or {}
    runs = []
    for label, overlay in methods.items():
        if not isinstance(overlay, (dict, list)) and overlay is not None:
            raise ValueError(f"method {label!r}: the overlay must be a mapping or a list of key=value, got {overlay!r}")
        sets = _overlay_to_sets(overlay) if isinstance(overlay, dict) else [str(s) for s in overlay or []]
        for seed in seeds:
            # W&B (train.wandb, when on) groups a sweep's runs by method, one name per seed
            tracking = (f"train.wandb.group={json.dumps(str(label))}", f"train.wandb.name={json.dumps(f'{label}-seed{seed}')}")
            overrides = (*tracking, *common, *sets, f"seed={seed}")
            try:
                config_from_dict(apply_overrides(base_data, list(overrides)))
            except ConfigError as err:
                raise ValueError(f"method {label!r}, seed {seed}: {err}") from err
            runs.append(RunSpec(str(label), seed, root / str(label) / f"seed{seed}", overrides))
    return Sweep(str(data["name"]), base, root, tuple(runs))


def _command(sweep: Sweep, run: RunSpec, device: str | None) -> list[str]:
    cmd = [sys.executable, "-m", "mtrl.cli", "train", str(sweep.base), "--run-dir", str(run.run_dir), "--resume", "auto"]
    for item in run.overrides:
        cmd += ["--set", item]
    if device:
        cmd += ["--device", device]
    return cmd


def _finished(run: RunSpec) -> bool:
    status = read_status(run.run_dir)
    return bool(status and status.get("state") == "finished")


class _Progress:
    def __init__(self, total: int) -> None:
        self.counts = {"done": 0, "running": 0, "failed": 0, "skipped": 0}
        self.total = total
        self.lock = threading.Lock()

    def update(self, **delta: int) -> None:
        with self.lock:
            for key, value in delta.items():
                self.counts[key] += value
            c = self.counts
            pending = self.total - c["done"] - c["running"] - c["failed"] - c["skipped"]
            print(f"[sweep] done {c['done']}, skipped (finished) {c['skipped']}, running {c['running']}, "
                  f"failed {c['failed']}, pending {pending} of {self.total}", flush=True)


def run_local(sweep: Sweep, jobs: int, device: str | None = None) -> list[RunSpec]:
    """Run the unfinished runs on a local process pool; returns the failed ones."""
    progress = _Progress(len(sweep.runs))
    threads = max(1, (os.cpu_count() or 1) // jobs)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    failed: list[RunSpec] = []

    def one(run: RunSpec) -> None:
        if _finished(run):
            progress.update(skipped=1)
            return
        run.run_dir.mkdir(parents=True, exist_ok=True)
        (run.run_dir / "sweep.json").write_text(json.dumps({"sweep": sweep.name, "label": run.label, "seed": run.seed}) + "\n")
        progress.update(running=1)
        with open(run.run_dir / "train.log", "a") as log:
            code = subprocess.call(_command(sweep, run, device), stdout=log, stderr=subprocess.STDOUT, env=env)
        if code == 0:
            progress.update(running=-1, done=1)
        else:
            failed.append(run)
            progress.update(running=-1, failed=1)
            print(f"[sweep] FAILED {run.label} seed {run.seed} (exit {code}); log: {run.run_dir / 'train.log'}", flush=True)

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        list(pool.map(one, sweep.runs))
    return failed


def run_slurm(sweep: Sweep, args: argparse.Namespace) -> list[RunSpec]:
    """Submit every unfinished run as a SLURM job through submitit and wait for them."""
    try:
        import submitit
    except ImportError as err:
        raise ValueError("--executor slurm needs submitit: pip install -e '.[slurm]'") from err
    executor = submitit.AutoExecutor(folder=str(sweep.out / "slurm"))
    executor.update_parameters(
        timeout_min=args.time, slurm_partition=args.partition, gpus_per_node=args.gpus, cpus_per_task=args.cpus,
    )
    pending = [run for run in sweep.runs if not _finished(run)]
    jobs = []
    for run in pending:
        run.run_dir.mkdir(parents=True, exist_ok=True)
        (run.run_dir / "sweep.json").write_text(json.dumps({"sweep": sweep.name, "label": run.label, "seed": run.seed}) + "\n")
        jobs.append((run, executor.submit(submitit.helpers.CommandFunction(_command(sweep, run, args.device)))))
    print(f"[sweep] submitted {len(jobs)} job(s), {len(sweep.runs) - len(pending)} already finished", flush=True)
    failed = []
    for run, job in jobs:
        try:
            job.result()
        except Exception as err:  # a failed job is reported, the others go on
            failed.append(run)
            print(f"[sweep] FAILED {run.label} seed {run.seed}: {err}", flush=True)
    return failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mtrl sweep", description="Run methods x seeds, resumably.")
    parser.add_argument("sweep", help="sweep YAML file")
    parser.add_argument("--jobs", type=int, default=None, help="parallel runs (default: cores // 2, at least 1)")
    parser.add_argument("--executor", choices=("local", "slurm"), default="local")
    parser.add_argument("--out", help="root of the run directories (default: runs/<name>)")
    parser.add_argument("--device", help="device for every run (auto, cpu, cuda)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    parser.add_argument("--partition", help="SLURM partition")
    parser.add_argument("--time", type=int, default=24 * 60, help="SLURM time limit per run, minutes")
    parser.add_argument("--gpus", type=int, default=0, help="SLURM GPUs per run")
    parser.add_argument("--cpus", type=int, default=4, help="SLURM CPUs per run")
    args = parser.parse_args(argv)
    sweep = load_sweep(args.sweep, args.out)
    jobs = args.jobs or max(1, (os.cpu_count() or 1) // 2)
    if args.jobs is not None and args.jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {args.jobs}")
    if args.dry_run:
        for run in sweep.runs:
            state = "finished" if _finished(run) else "to run"
            print(f"{run.label:20s} seed {run.seed:3d}  {run.run_dir}  [{state}]")
        return 0
    start = time.perf_counter()
    failed = run_slurm(sweep, args) if args.executor == "slurm" else run_local(sweep, jobs, args.device)
    print(f"[sweep] {sweep.name}: {len(sweep.runs) - len(failed)} of {len(sweep.runs)} runs finished "
          f"in {time.perf_counter() - start:.0f} s; report with: mtrl report {sweep.out}")
    return 1 if failed else 0
