"""The command line as a user runs it: `mtrl train configs/quick.yaml` (shortened), then
`mtrl evaluate RUN_DIR`, and bad input answered with a clear error and exit status 2."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

from mtrl.envs.metaworld import benchmark_task_names

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def mtrl(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mtrl.cli", *args], env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def test_quick_config_trains_then_evaluate_reads_the_run(tmp_path):
    run = tmp_path / "quick"
    short = [
        "train.total_steps=400", "train.warmup_steps=200", "train.eval_every=200", "checkpoint.every=150",
        "env.max_episode_steps=100", "train.progress=false",
    ]
    proc = mtrl("train", "configs/quick.yaml", "--seed", "3", "--device", "cpu", "--run-dir", str(run),
                *[arg for kv in short for arg in ("--set", kv)])
    assert proc.returncode == 0, proc.stderr[-2000:]
    for name in ("config.yaml", "metrics.jsonl", "eval.csv"):
        assert (run / name).is_file(), name
    with open(run / "eval.csv") as handle:
        rows = list(csv.DictReader(handle))
    names = benchmark_task_names("MT10")
    assert [int(r["step"]) for r in rows] == [200, 400]
    assert list(rows[0]) == ["step", "mean_success", *names]
    assert "seed: 3" in (run / "config.yaml").read_text()

    proc = mtrl("evaluate", str(run), "--episodes", "1", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert "(step 400)" in lines[0] and "train goals" in lines[0]  # the run's env.eval_goals (default)
    rates = {line.split()[0]: float(line.split()[1]) for line in lines[1:]}
    assert list(rates) == [*names, "mean"]
    assert all(0.0 <= r <= 1.0 for r in rates.values())


def test_bad_input_is_a_clear_error_with_status_2(tmp_path):
    proc = mtrl("train", "configs/quick.yaml", "--set", "aggregator.jacobian=jacrev", "--run-dir", str(tmp_path / "a"))
    assert proc.returncode == 2
    assert "jacrev" in proc.stderr and "linear" in proc.stderr and "vmap" in proc.stderr
    proc = mtrl("train", "configs/quick.yaml", "--set", "env.benchmark=MT11", "--run-dir", str(tmp_path / "b"))
    assert proc.returncode == 2 and "MT11" in proc.stderr and "MT10" in proc.stderr
    proc = mtrl("evaluate", str(tmp_path / "nothing"))
    assert proc.returncode == 2 and "nothing" in proc.stderr
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()  # nothing written
