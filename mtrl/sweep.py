"""Run methods x seeds: ``mtrl sweep SWEEP.yaml [--jobs N] [--executor local|slurm|submitit-local] [--dry-run]``.

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
the exit status is 1 if any run failed.

``--population S`` packs each method's unfinished seeds into populations of at most S members,
each one process (``mtrl train BASE --seeds a,b,... --run-dir .../seed{seed} --resume auto``,
``agents/population.py``): the same run directories and files, so ``mtrl report`` reads them
unchanged; a population logs to its first member's ``train.log`` (the others' point there) and
is one job (one SLURM array task) that requeues as a whole. Members are named ``<name>-seed<N>``
in W&B (grouped by method) rather than ``<method>-seed<N>``.

``--executor slurm`` submits the unfinished runs as one SLURM job array through submitit
(``pip install -e '.[slurm]'``), at most ``--array-parallelism`` at a time. Each array task is a
``TrainJob``, submitit's Checkpointable protocol: ``--signal-delay`` seconds before the time limit
SLURM sends SIGUSR2; submitit calls ``TrainJob.checkpoint()``, which forwards SIGTERM to the
trainer, waits until it has written its checkpoint and exited, and returns a new submission of the
same run; submitit requeues the array task, which starts ``mtrl train ... --resume auto`` again.
After ``--max-requeues`` time-limit requeues of one run, the next time limit fails it (its
checkpoint stays; re-running the sweep resumes it); preemptions are not counted. ``--executor
submitit-local`` runs the same jobs on this machine through submitit's LocalExecutor, with real
time limits and requeues (every job at once; for trying a small sweep before a cluster).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mtrl.config import ConfigError, apply_overrides, config_from_dict, load_yaml
from mtrl.metrics import read_status

__all__ = ["RunSpec", "Sweep", "TrainJob", "load_sweep", "main", "plan_jobs"]

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
    data = load_yaml(path.read_text()) or {}
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
    base_data = load_yaml(base.read_text()) or {}
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


def _command(sweep: Sweep, job: tuple[RunSpec, ...], device: str | None) -> list[str]:
    """The ``mtrl train`` command of one job: a single run, or a population of one method's seeds."""
    run = job[0]
    if len(job) == 1:
        cmd = [sys.executable, "-m", "mtrl.cli", "train", str(sweep.base), "--run-dir", str(run.run_dir), "--resume", "auto"]
        overrides = list(run.overrides)
    else:
        template = run.run_dir.parent / "seed{seed}"
        seeds = ",".join(str(r.seed) for r in job)
        cmd = [sys.executable, "-m", "mtrl.cli", "train", str(sweep.base), "--seeds", seeds, "--run-dir", str(template),
               "--resume", "auto"]
        # the members share every override but their seed and W&B name (W&B names them <name>-seed<N>)
        overrides = [o for o in run.overrides if not o.startswith(("seed=", "train.wandb.name="))]
    for item in overrides:
        cmd += ["--set", item]
    if device:
        cmd += ["--device", device]
    return cmd


def _finished(run: RunSpec) -> bool:
    status = read_status(run.run_dir)
    return bool(status and status.get("state") == "finished")


def plan_jobs(sweep: Sweep, population: int = 1) -> list[tuple[RunSpec, ...]]:
    """The sweep's unfinished runs as jobs: one run each, or (``population`` S > 1) each method's
    unfinished seeds packed in order into populations of at most S members."""
    if population < 1:
        raise ValueError(f"--population must be >= 1, got {population}")
    pending = [run for run in sweep.runs if not _finished(run)]
    if population == 1:
        return [(run,) for run in pending]
    jobs: list[tuple[RunSpec, ...]] = []
    for label in dict.fromkeys(run.label for run in pending):
        runs = [run for run in pending if run.label == label]
        jobs += [tuple(runs[i:i + population]) for i in range(0, len(runs), population)]
    return jobs


def _prepare(sweep: Sweep, job: tuple[RunSpec, ...]) -> Path:
    """Create the job's run directories with their ``sweep.json``; returns the job's log file (its
    first run's ``train.log``; the other members' ``train.log`` say where it is)."""
    log = job[0].run_dir / "train.log"
    for run in job:
        run.run_dir.mkdir(parents=True, exist_ok=True)
        (run.run_dir / "sweep.json").write_text(json.dumps({"sweep": sweep.name, "label": run.label, "seed": run.seed}) + "\n")
        if run is not job[0]:
            with open(run.run_dir / "train.log", "a") as handle:
                handle.write(f"[sweep] trained in a population with seeds {', '.join(str(r.seed) for r in job)}; log: {log}\n")
    return log


def _describe(job: tuple[RunSpec, ...]) -> str:
    seeds = ", ".join(str(run.seed) for run in job)
    return f"{job[0].label} seed{'s' if len(job) > 1 else ''} {seeds}"


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


def run_local(sweep: Sweep, jobs: int, device: str | None = None, population: int = 1) -> list[RunSpec]:
    """Run the unfinished runs on a local process pool (``population`` > 1: a method's seeds in
    populations of at most that many, one process each); returns the failed runs."""
    progress = _Progress(len(sweep.runs))
    planned = plan_jobs(sweep, population)
    progress.update(skipped=len(sweep.runs) - sum(len(job) for job in planned))
    threads = max(1, (os.cpu_count() or 1) // jobs)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    failed: list[RunSpec] = []

    def one(job: tuple[RunSpec, ...]) -> None:
        log_path = _prepare(sweep, job)
        progress.update(running=len(job))
        with open(log_path, "a") as log:
            code = subprocess.call(_command(sweep, job, device), stdout=log, stderr=subprocess.STDOUT, env=env)
        lost = [run for run in job if code != 0 and not _finished(run)]
        failed.extend(lost)
        progress.update(running=-len(job), done=len(job) - len(lost), failed=len(lost))
        if lost:
            print(f"[sweep] FAILED {_describe(tuple(lost))} (exit {code}); log: {log_path}", flush=True)

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        list(pool.map(one, planned))
    return failed


class TrainJob:
    """One run of a sweep as a submitit job that survives its time limit.

    A submitit Checkpointable (the protocol is a ``checkpoint`` method, so this module imports
    submitit only where it needs it): ``__call__`` runs ``mtrl train ... --resume auto`` as a child
    process, appending to the run's ``train.log``. When the job receives its time-limit or
    preemption signal, submitit calls ``checkpoint()`` in the job's main thread; it forwards
    SIGTERM to the trainer, which finishes its step, writes its checkpoint and exits, and returns a
    submission of a fresh ``TrainJob`` for the same run, which submitit requeues. The trainer also
    stops cleanly when the signal (SIGUSR2) reaches it directly, as it does under SLURM.
    """

    def __init__(self, command: list[str], run_dir: Path, threads: int, stop_timeout_s: float, log: Path | None = None) -> None:
        self.command = list(command)
        self.run_dir = Path(run_dir)
        self.threads = int(threads)
        self.stop_timeout_s = float(stop_timeout_s)
        self.log = Path(log) if log is not None else self.run_dir / "train.log"
        self._process: subprocess.Popen | None = None

    def _log(self, message: str) -> None:
        with open(self.log, "a") as log:
            log.write(f"[sweep] {message}\n")

    def __call__(self) -> str:
        env = {**os.environ, "OMP_NUM_THREADS": str(self.threads), "MKL_NUM_THREADS": str(self.threads)}
        with open(self.log, "a") as log:
            self._process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT, env=env)
        # Only a watcher thread waits on the child, so checkpoint(), which runs as a signal handler
        # in this thread, never contends for the lock of a Popen.wait() it interrupted.
        threading.Thread(target=self._process.wait, daemon=True).start()
        while self._process.returncode is None:
            time.sleep(0.5)
        code = self._process.returncode
        if code == 143:  # the trainer's "stopped by a signal, checkpoint written"
            raise RuntimeError(
                f"mtrl train for {self.run_dir} was stopped by a signal that did not come through submitit's "
                f"checkpoint (preempted or cancelled?); its checkpoint is kept: re-run the sweep to resume it"
            )
        if code != 0:
            raise RuntimeError(f"mtrl train exited with status {code}; log: {self.log}")
        return str(self.run_dir)

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """Stop the trainer with a checkpoint and return the submission that resumes it."""
        from submitit.helpers import DelayedSubmission

        process = self._process
        if process is not None and process.returncode is None:
            self._log("time limit or preemption signal: stopping the trainer (SIGTERM) for a requeue")
            process.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + self.stop_timeout_s
            while process.returncode is None and time.monotonic() < deadline:
                time.sleep(0.1)
            if process.returncode is None:  # no checkpoint in time: the last periodic one stands
                self._log(f"the trainer did not stop within {self.stop_timeout_s:.0f} s: killed it")
                process.kill()
            elif process.returncode != 143:  # e.g. -15: signalled before its loop began, nothing saved
                self._log(f"the trainer exited with status {process.returncode} (143 = stopped with a checkpoint)")
        return DelayedSubmission(TrainJob(self.command, self.run_dir, self.threads, self.stop_timeout_s, self.log))


def _slurm_parameters(args: argparse.Namespace, name: str) -> dict[str, Any]:
    """SLURM parameters of the sweep's job array, checked (see submitit's SlurmExecutor)."""
    if args.time != int(args.time):
        raise ValueError(f"SLURM time limits are whole minutes, got --time {args.time}")
    parameters: dict[str, Any] = {
        "job_name": f"mtrl-{name}",
        "time": int(args.time),
        "partition": args.partition,
        "gpus_per_node": args.gpus or None,
        "cpus_per_task": args.cpus,
        "signal_delay_s": args.signal_delay,
        "array_parallelism": args.array_parallelism,
    }
    for item in args.slurm_param or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--slurm-param takes KEY=VALUE (a submitit SlurmExecutor parameter), got {item!r}")
        parameters[key.strip()] = yaml.safe_load(value)
    return {k: v for k, v in parameters.items() if v is not None}


def _check_cluster_args(args: argparse.Namespace) -> None:
    if args.time <= 0:
        raise ValueError(f"--time must be > 0 minutes, got {args.time}")
    if args.max_requeues < 0:
        raise ValueError(f"--max-requeues must be >= 0, got {args.max_requeues}")
    if args.array_parallelism is not None and args.array_parallelism < 1:
        raise ValueError(f"--array-parallelism must be >= 1, got {args.array_parallelism}")
    if not 1 <= args.signal_delay < args.time * 60:
        raise ValueError(
            f"--signal-delay must be at least 1 s and shorter than the time limit ({args.time * 60:.0f} s), "
            f"got {args.signal_delay}"
        )


def run_submitit(sweep: Sweep, args: argparse.Namespace) -> list[RunSpec]:
    """Submit every unfinished run as one job array of requeueing ``TrainJob`` s (SLURM, or
    submitit's LocalExecutor for ``--executor submitit-local``) and wait for them."""
    try:
        import submitit
    except ImportError as err:
        raise ValueError(f"--executor {args.executor} needs submitit: pip install -e '.[slurm]'") from err
    _check_cluster_args(args)
    folder = sweep.out / "slurm"
    if args.executor == "slurm":
        parameters = _slurm_parameters(args, sweep.name)
        try:
            executor = submitit.SlurmExecutor(folder, max_num_timeout=args.max_requeues)
        except RuntimeError as err:  # submitit found no srun
            raise ValueError(
                f"--executor slurm needs a SLURM cluster ({err}); use --executor local, or submitit-local to try "
                f"the requeueing jobs on this machine"
            ) from err
        executor.update_parameters(**parameters)
    else:
        if args.slurm_param:
            raise ValueError(f"--slurm-param applies to --executor slurm only, got {args.slurm_param!r}")
        executor = submitit.LocalExecutor(folder, max_num_timeout=args.max_requeues)
        executor.update_parameters(timeout_min=args.time, signal_delay_s=args.signal_delay, gpus_per_node=args.gpus)
    # the trainer must stop before the hard kill; keep a few seconds for submitit's requeue
    stop_timeout_s = max(1.0, args.signal_delay - min(15.0, args.signal_delay / 2))
    planned = plan_jobs(sweep, args.population)
    trainers = []
    for job in planned:
        log = _prepare(sweep, job)
        trainers.append(TrainJob(_command(sweep, job, args.device), job[0].run_dir, args.cpus, stop_timeout_s, log=log))
    jobs = executor.submit_array(trainers) if trainers else []
    ids = sorted({str(job.job_id).split("_")[0] for job in jobs})
    pending = sum(len(job) for job in planned)
    print(f"[sweep] submitted {pending} run(s) in {len(jobs)} job(s) (job {', '.join(ids) or '-'}; logs in {folder}), "
          f"{len(sweep.runs) - pending} already finished", flush=True)
    failed = []
    for runs, job in zip(planned, jobs):
        try:
            job.result()
        except Exception as err:  # a failed job is reported, the others go on
            lost = [run for run in runs if not _finished(run)]
            failed.extend(lost)
            reason = next((line for line in reversed(str(err).splitlines()) if "Error:" in line), type(err).__name__)
            if lost:
                print(f"[sweep] FAILED {_describe(tuple(lost))}: {reason.strip()}; log: {runs[0].run_dir / 'train.log'}", flush=True)
    return failed


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mtrl sweep", description="Run methods x seeds, resumably.")
    parser.add_argument("sweep", help="sweep YAML file")
    parser.add_argument("--jobs", type=int, default=None, help="parallel runs (default: cores // 2, at least 1)")
    parser.add_argument("--executor", choices=("local", "slurm", "submitit-local"), default="local",
                        help="local process pool; SLURM job array; submitit's LocalExecutor (requeues on this machine)")
    parser.add_argument("--out", help="root of the run directories (default: runs/<name>)")
    parser.add_argument("--device", help="device for every run (auto, cpu, cuda)")
    parser.add_argument("--population", type=int, default=1, metavar="S",
                        help="train each method's seeds in populations of at most S, one process each (default 1: one run per process)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    parser.add_argument("--partition", help="SLURM partition")
    parser.add_argument("--time", type=float, default=24 * 60,
                        help="time limit of one job, minutes (whole minutes on SLURM); a longer run is requeued")
    parser.add_argument("--gpus", type=int, default=0, help="SLURM GPUs per run")
    parser.add_argument("--cpus", type=int, default=4, help="SLURM CPUs per run (and the trainer's torch threads)")
    parser.add_argument("--max-requeues", type=int, default=10,
                        help="time-limit requeues per run before it fails (default 10; preemptions do not count)")
    parser.add_argument("--signal-delay", type=int, default=120,
                        help="seconds before the time limit when the trainer is told to checkpoint (default 120)")
    parser.add_argument("--array-parallelism", type=int, default=None,
                        help="runs of the SLURM job array running at once (default: submitit's, 256)")
    parser.add_argument("--slurm-param", action="append", metavar="KEY=VALUE",
                        help="any other submitit SlurmExecutor parameter, e.g. account=abc, qos=high, mem=16GB (repeatable)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    sweep = load_sweep(args.sweep, args.out)
    jobs = args.jobs or max(1, (os.cpu_count() or 1) // 2)
    if args.jobs is not None and args.jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {args.jobs}")
    if args.population < 1:
        raise ValueError(f"--population must be >= 1, got {args.population}")
    if args.dry_run:
        for run in sweep.runs:
            state = "finished" if _finished(run) else "to run"
            print(f"{run.label:20s} seed {run.seed:3d}  {run.run_dir}  [{state}]")
        if args.population > 1:
            for job in plan_jobs(sweep, args.population):
                print(f"population: {_describe(job)}")
        return 0
    start = time.perf_counter()
    failed = run_local(sweep, jobs, args.device, args.population) if args.executor == "local" else run_submitit(sweep, args)
    print(f"[sweep] {sweep.name}: {len(sweep.runs) - len(failed)} of {len(sweep.runs)} runs finished "
          f"in {time.perf_counter() - start:.0f} s; report with: mtrl report {sweep.out}")
    return 1 if failed else 0
