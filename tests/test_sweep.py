"""mtrl sweep: parsing and validation, skipping finished runs, failures that do not stop the
others, and a real sweep killed mid-run, resumed, and reported."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from mtrl.checkpoint import list_checkpoints, load_latest
from mtrl.report import report
from mtrl.sweep import load_sweep, main
from tests.test_resume import ENV, POINT, _assert_same_tensors


def write_sweep(tmp_path: Path, methods: dict, seeds=(0, 1), extra_sets=()) -> Path:
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump({**POINT, "aggregator": {"name": "ls"}}))
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({
        "name": "t", "base": "base.yaml", "seeds": list(seeds), "out": str(tmp_path / "runs"),
        "set": ["train.total_steps=400", "train.eval_every=200", *extra_sets], "methods": methods,
    }, sort_keys=False))
    return sweep


def test_sweep_file_errors_name_the_problem(tmp_path):
    sweep = write_sweep(tmp_path, {"ls": {"aggregator": {"name": "ls"}}})
    data = yaml.safe_load(sweep.read_text())
    for change, message in [
        ({"seed": [0]}, "unknown key 'seed'"),
        ({"seeds": []}, "seeds must be a non-empty list"),
        ({"methods": {"bad": {"aggregator": {"name": "nope"}}}}, "unknown aggregator 'nope'"),
        ({"methods": {"bad": {"train": {"batchsize": 3}}}}, "unknown key 'train.batchsize'"),
        ({"base": "missing.yaml"}, "not found"),
    ]:
        (tmp_path / "bad.yaml").write_text(yaml.safe_dump({**data, **change}))
        with pytest.raises(ValueError, match=message):
            load_sweep(tmp_path / "bad.yaml")


def test_plan_has_one_run_directory_per_method_and_seed(tmp_path):
    sweep = load_sweep(write_sweep(tmp_path, {"ls": {"aggregator": {"name": "ls"}}, "nash": {"aggregator": {"name": "nashmtl", "options": {"update_every": 2}}}}))
    assert [(r.label, r.seed, r.run_dir.relative_to(tmp_path / "runs").as_posix()) for r in sweep.runs] == [
        ("ls", 0, "ls/seed0"), ("ls", 1, "ls/seed1"), ("nash", 0, "nash/seed0"), ("nash", 1, "nash/seed1")]
    assert "aggregator.options={update_every: 2}" in sweep.runs[2].overrides


def test_finished_runs_are_skipped_and_a_failing_run_does_not_stop_the_others(tmp_path, capsys):
    methods = {"ok": {"aggregator": {"name": "ls"}}, "broken": {"aggregator": {"name": "ls"}, "env": {"benchmark": "Point-3"}}}
    sweep_path = write_sweep(tmp_path, methods, seeds=(0,))
    sweep = load_sweep(sweep_path)
    runs = {run.label: run for run in sweep.runs}
    done = runs["ok"].run_dir
    done.mkdir(parents=True)
    (done / "status.json").write_text(json.dumps({"state": "finished", "step": 400, "total_steps": 400}))
    broken = runs["broken"].run_dir
    broken.mkdir(parents=True)
    (broken / "config.yaml").write_text(yaml.safe_dump({"seed": 99}))  # belongs to another run
    assert main([str(sweep_path), "--jobs", "1"]) == 1
    out = capsys.readouterr().out
    assert "skipped (finished) 1" in out and "FAILED broken seed 0" in out and "train.log" in out
    assert "belongs to a different run" in (broken / "train.log").read_text()


@pytest.mark.slow
def test_killed_sweep_resumes_and_a_second_call_does_no_work(tmp_path):
    methods = {"ls": {"aggregator": {"name": "ls"}}, "nashmtl": {"aggregator": {"name": "nashmtl", "options": {"update_every": 2}}}}
    sweep_path = write_sweep(tmp_path, methods, seeds=(0, 1))
    cmd = [sys.executable, "-m", "mtrl.cli", "sweep", str(sweep_path), "--jobs", "1"]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    first = tmp_path / "runs" / "ls" / "seed0"
    deadline = time.monotonic() + 240
    while not list_checkpoints(first) and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # the sweep and the run it is training
    proc.wait()
    status = json.loads((first / "status.json").read_text())
    assert status["state"] == "running"
    rerun = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout[-2000:]
    assert "resuming from" in (first / "train.log").read_text()
    stats = {s.label: s for s in report([tmp_path / "runs"], out=tmp_path / "report")}
    assert set(stats) == {"ls", "nashmtl"} and all(s.n_seeds == 2 for s in stats.values())
    again = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "skipped (finished) 4" in again.stdout


def test_population_sweep_writes_the_runs_and_report_of_the_plain_sweep(tmp_path, capsys, monkeypatch):
    """--population 2 over 2 methods x 2 seeds: two processes (one population per method) whose
    members are bit-exact with single runs (LS and FAMO, one thread), so eval.csv, the logged
    losses and the report's statistics are those of the plain sweep."""
    methods = {"ls": {"aggregator": {"name": "ls"}}, "famo": {"aggregator": {"name": "famo"}}}
    # four tasks: the shapes at which a member's matmuls are the single agent's (agents/population.py)
    sets = ("train.total_steps=200", "train.eval_every=100", "env.benchmark=Point-4")
    (tmp_path / "plain").mkdir()
    (tmp_path / "packed").mkdir()
    plain = write_sweep(tmp_path / "plain", methods, extra_sets=sets)
    packed = write_sweep(tmp_path / "packed", methods, extra_sets=sets)
    assert main([str(packed), "--population", "2", "--dry-run"]) == 0
    assert "population: ls seeds 0, 1" in capsys.readouterr().out
    # --jobs 2 of 2 cores: one torch thread per process on both sides (members are bit-exact with one thread)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert main([str(plain), "--jobs", "2"]) == 0
    assert main([str(packed), "--jobs", "2", "--population", "2"]) == 0
    assert "trained in a population with seeds 0, 1" in (tmp_path / "packed" / "runs" / "ls" / "seed1" / "train.log").read_text()
    for label in methods:
        for seed in (0, 1):
            a, b = tmp_path / "plain" / "runs" / label / f"seed{seed}", tmp_path / "packed" / "runs" / label / f"seed{seed}"
            assert (a / "eval.csv").read_text() == (b / "eval.csv").read_text()
            _assert_same_tensors(load_latest(a)[0]["agent"]["model"], load_latest(b)[0]["agent"]["model"])
    ours = {s.label: s for s in report([tmp_path / "packed" / "runs"], out=tmp_path / "packed" / "report")}
    theirs = {s.label: s for s in report([tmp_path / "plain" / "runs"], out=tmp_path / "plain" / "report")}
    assert set(ours) == set(theirs) == set(methods)
    for label in methods:
        assert ours[label].n_seeds == theirs[label].n_seeds == 2
        assert ours[label].final_mean == theirs[label].final_mean
    capsys.readouterr()
    again = main([str(packed), "--population", "2"])
    assert again == 0 and "skipped (finished) 4" in capsys.readouterr().out


def test_population_plan_packs_each_methods_unfinished_seeds(tmp_path):
    from mtrl.sweep import _command, plan_jobs

    methods = {"ls": {"aggregator": {"name": "ls"}}, "nash": {"aggregator": {"name": "nashmtl"}}}
    sweep = load_sweep(write_sweep(tmp_path, methods, seeds=(0, 1, 2, 3, 4)))
    done = sweep.runs[1].run_dir  # ls seed 1 finished
    done.mkdir(parents=True)
    (done / "status.json").write_text(json.dumps({"state": "finished", "step": 400, "total_steps": 400}))
    jobs = plan_jobs(sweep, population=2)
    assert [(job[0].label, [r.seed for r in job]) for job in jobs] == [
        ("ls", [0, 2]), ("ls", [3, 4]), ("nash", [0, 1]), ("nash", [2, 3]), ("nash", [4])]
    cmd = _command(sweep, jobs[0], None)
    assert cmd[cmd.index("--seeds") + 1] == "0,2" and cmd[cmd.index("--run-dir") + 1].endswith("ls/seed{seed}")
    assert "--resume" in cmd and not any(item.startswith(("seed=", "train.wandb.name=")) for item in cmd)
    single = _command(sweep, jobs[-1], None)
    assert "--seeds" not in single and "seed=4" in single
    with pytest.raises(ValueError, match="--population must be >= 1"):
        plan_jobs(sweep, population=0)


@pytest.mark.slow
def test_population_sweep_through_submitit_local_runs_one_job_per_population(tmp_path):
    """The SLURM path (submitit's LocalExecutor): one requeueable TrainJob per population, its log
    in the first member's train.log."""
    pytest.importorskip("submitit")
    sweep_path = write_sweep(tmp_path, {"ls": {"aggregator": {"name": "ls"}}}, seeds=(0, 1), extra_sets=["train.total_steps=200"])
    cmd = [sys.executable, "-m", "mtrl.cli", "sweep", str(sweep_path), "--cpus", "1", "--executor", "submitit-local",
           "--time", "10", "--signal-delay", "60", "--population", "2"]
    result = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "submitted 2 run(s) in 1 job(s)" in result.stdout
    for seed in (0, 1):
        assert json.loads((tmp_path / "runs" / "ls" / f"seed{seed}" / "status.json").read_text())["state"] == "finished"
    assert "done: " in (tmp_path / "runs" / "ls" / "seed0" / "train.log").read_text()


# ---- SLURM through submitit (skipped without the [slurm] extra) -------------------------------
def test_slurm_job_array_asks_for_the_time_limit_signal_and_checks_its_settings(tmp_path):
    pytest.importorskip("submitit")
    from submitit.slurm.slurm import _make_sbatch_string

    from mtrl.sweep import _parser, _slurm_parameters

    sweep_path = write_sweep(tmp_path, {"ls": {"aggregator": {"name": "ls"}}})
    args = _parser().parse_args([str(sweep_path), "--executor", "slurm", "--time", "240", "--signal-delay", "300",
                                 "--array-parallelism", "2", "--gpus", "1", "--slurm-param", "account=abc"])
    sbatch = _make_sbatch_string(command="true", folder=tmp_path, map_count=4, **_slurm_parameters(args, "t"))
    for line in ("--signal=USR2@300", "--array=0-3%2", "--time=240", "--account=abc", "--gpus-per-node=1", "--job-name=mtrl-t"):
        assert f"#SBATCH {line}\n" in sbatch, line
    for extra, message in [
        (["--time", "90.5"], "whole minutes"),
        (["--slurm-param", "account"], "KEY=VALUE"),
        (["--max-requeues", "-1"], "--max-requeues must be >= 0"),
        (["--signal-delay", "99999"], "shorter than the time limit"),
        (["--array-parallelism", "0"], "--array-parallelism must be >= 1"),
        ([], "needs a SLURM cluster"),  # this machine has no srun
    ]:
        with pytest.raises(ValueError, match=message):
            main([str(sweep_path), "--executor", "slurm", "--time", "60", *extra])


def _run_and_step_seconds(run_dir: Path) -> tuple[float, float]:
    """(seconds from sweep.json, written just before the run starts, to its end; seconds of its
    training steps from metrics.jsonl) of a finished run."""
    wall = (run_dir / "status.json").stat().st_mtime - (run_dir / "sweep.json").stat().st_mtime
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return wall, sum(m.get("time/collect_s", 0) + m.get("time/update_s", 0) for m in lines)


def test_run_longer_than_its_time_limit_requeues_itself_and_ends_like_an_uninterrupted_one(tmp_path):
    """submitit's LocalExecutor gives each job a real time limit: SIGUSR2 `--signal-delay` seconds
    before it, then a kill. The run needs several such jobs; each stops with a checkpoint, requeues
    and resumes with --resume auto. Point-3 envs resume exactly at any step, so wherever the
    interruptions fall the run ends with the uninterrupted run's eval.csv and parameters."""
    pytest.importorskip("submitit")
    sweep_path = write_sweep(tmp_path, {"ls": {"aggregator": {"name": "ls"}}}, seeds=(0,), extra_sets=["train.total_steps=800"])
    cmd = [sys.executable, "-m", "mtrl.cli", "sweep", str(sweep_path), "--cpus", "1"]
    straight = subprocess.run([*cmd, "--out", str(tmp_path / "straight")], env=ENV, capture_output=True, text=True, timeout=600)
    assert straight.returncode == 0, straight.stdout[-2000:]
    reference = tmp_path / "straight" / "ls" / "seed0"
    wall, steps = _run_and_step_seconds(reference)
    delay = 20  # the trainer gets this long to stop; it needs one step and a checkpoint
    fraction = 0.5
    for attempt in range(3):
        # SIGUSR2 once the start-up (imports, env build: wall - steps) and `fraction` of the steps
        # are done: a second job, which starts up again, can then finish the run
        limit_min = (round(wall - (1 - fraction) * steps) + delay) / 60
        out = tmp_path / f"requeued{attempt}"
        for _ in range(3):  # a run may use up its requeues on a loaded machine: re-running the sweep resumes it
            command = [*cmd, "--out", str(out), "--executor", "submitit-local", "--time", str(limit_min),
                       "--signal-delay", str(delay), "--max-requeues", "5"]
            result = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=900)
            if result.returncode == 0:
                break
            assert "timed-out too many times" in result.stdout, result.stdout[-2000:]
            limit_min *= 1.5  # the machine got slower than during the straight run: longer jobs
        run = out / "ls" / "seed0"
        log = (run / "train.log").read_text()
        assert result.returncode == 0, result.stdout[-2000:] + log[-3000:]
        if "resuming from" in log:
            break
        # never interrupted, or signalled only after its last step (the requeued job then finds the
        # run finished and does nothing): the first run started up slower than this one; try earlier
        wall, steps = _run_and_step_seconds(run)
        fraction *= 0.6
    else:
        raise AssertionError(f"three runs were never interrupted mid-run (the last limit was {limit_min * 60:.0f} s)")
    assert "stopping the trainer (SIGTERM) for a requeue" in log
    assert json.loads((run / "status.json").read_text())["state"] == "finished"
    assert (run / "eval.csv").read_text() == (reference / "eval.csv").read_text()
    _assert_same_tensors(load_latest(run)[0]["agent"], load_latest(reference)[0]["agent"])
