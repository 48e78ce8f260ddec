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

from mtrl.checkpoint import list_checkpoints
from mtrl.report import report
from mtrl.sweep import load_sweep, main
from tests.test_resume import ENV, POINT


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
