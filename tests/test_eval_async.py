"""``train.eval_async``: evaluations in an evaluation process (``mtrl.evaluator``) log the rates an
in-process evaluation logs, at the same steps; a checkpoint with pending evaluations resumes
exactly; a dying evaluation process is a clear error, never a hang, and loses no training.

Point-K synthetic tasks (fast), one MetaWorld MT10 run. CPU, one torch thread (the evaluation
process gets the trainer's thread count)."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
import torch

import mtrl.evaluator as evaluator_module
from mtrl.checkpoint import checkpoint_steps, load_checkpoint, checkpoint_path, load_latest
from mtrl.config import ConfigError, config_from_dict
from mtrl.evaluator import EvaluationProcess, EvaluatorError
from mtrl.metrics import read_status
from mtrl.train import train, train_population
from tests.helpers import tiny_mt10

POINT = {
    "name": "async", "seed": 0, "device": "cpu",
    "env": {"benchmark": "Point-4", "max_episode_steps": 25},
    "agent": {"hidden_dim": 32, "num_layers": 2},
    "aggregator": {"name": "ls"},
    "train": {
        "total_steps": 240, "warmup_steps": 40, "batch_size": 48, "replay_capacity": 2000, "eval_every": 80,
        "eval_episodes": 3, "log_every": 20, "progress": False,
    },
    "checkpoint": {"every": 80, "keep": 3},
}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _config(data: dict = POINT, aggregator: dict | None = None, **train: object):
    return config_from_dict({**data, "aggregator": aggregator or data["aggregator"], "train": {**data["train"], **train}})


def _logged(run_dir: Path) -> list:
    """metrics.jsonl rows without wall-clock timings (``time/*``, ``*/time``, ``*/jacobian``), in file order."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if not k.startswith("time/") and not k.endswith(("/time", "/jacobian"))} for row in rows]


def _by_step(run_dir: Path) -> list:
    """``_logged`` ordered by step (an asynchronous evaluation's line comes when it arrives; within a
    step the rows are compared as a multiset)."""
    return sorted(_logged(run_dir), key=lambda row: (row["step"], json.dumps(row, sort_keys=True)))


def _assert_same_run(run: Path, reference: Path) -> None:
    assert (run / "eval.csv").read_text() == (reference / "eval.csv").read_text()
    assert _by_step(run) == _by_step(reference)
    assert read_status(run)["state"] == "finished"
    assert read_status(run)["last_success"] == read_status(reference)["last_success"]
    a, b = load_latest(run)[0]["agent"]["model"], load_latest(reference)[0]["agent"]["model"]
    for key in a:
        assert torch.equal(a[key], b[key]), key


def _eval_rows(run_dir: Path) -> list[dict]:
    return [row for row in _by_step(run_dir) if "eval/mean_return" in row]


# ---- the same numbers -------------------------------------------------------------------------------
def test_async_single_run_logs_what_a_synchronous_one_logs(tmp_path):
    train(_config(), tmp_path / "sync")
    train(_config(eval_async=True), tmp_path / "async")
    _assert_same_run(tmp_path / "async", tmp_path / "sync")
    rows = _eval_rows(tmp_path / "async")
    assert [row["step"] for row in rows] == [80, 160, 240]
    assert len({row["eval/mean_return"] for row in rows}) == 3  # the policies differ: a real comparison


def test_async_population_logs_what_a_synchronous_one_logs(tmp_path):
    train_population(_config(), [1, 4], tmp_path / "sync" / "seed{seed}")
    train_population(_config(eval_async=True), [1, 4], tmp_path / "async" / "seed{seed}")
    for seed in (1, 4):
        _assert_same_run(tmp_path / "async" / f"seed{seed}", tmp_path / "sync" / f"seed{seed}")


def test_metaworld_mt10_async_equals_sync(tmp_path):
    data = tiny_mt10("mt10async", env={"eval_envs": 10}, train={"total_steps": 60, "warmup_steps": 20, "eval_every": 30})
    train(config_from_dict(data), tmp_path / "sync")
    train(_config(data, eval_async=True), tmp_path / "async")
    _assert_same_run(tmp_path / "async", tmp_path / "sync")


# ---- checkpoints with pending evaluations ---------------------------------------------------------
@pytest.mark.parametrize("resume_async", [True, False])
def test_a_checkpoint_with_a_pending_evaluation_resumes_exactly(tmp_path, monkeypatch, resume_async):
    """The evaluation process sleeps 1 s before each evaluation, so the checkpoint of step 80 holds
    the evaluation of step 80 pending; a crash while the checkpoint of step 160 is written, then a
    resume (with or without eval_async: the pending evaluation is played again in the evaluation
    process or in process) ends as the uninterrupted synchronous run."""
    train(_config(), tmp_path / "straight")
    monkeypatch.setattr(evaluator_module, "TEST_DELAY_S", 1.0)

    def crash_at_step_160(path: Path, save) -> None:
        if "step_000000160" in path.name:
            raise KeyboardInterrupt  # as a kill would: nothing after it runs
        with open(path, "wb") as handle:
            save(handle)

    run = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        train(_config(eval_async=True), run, checkpoint_writer=crash_at_step_160)
    assert checkpoint_steps(run) == [80]
    pending = load_checkpoint(checkpoint_path(run, 80))["pending_evaluations"]
    assert [p["step"] for p in pending] == [80] and pending[0]["actor"]
    monkeypatch.setattr(evaluator_module, "TEST_DELAY_S", 0.0)
    train(_config(eval_async=resume_async), run, resume="auto")
    _assert_same_run(run, tmp_path / "straight")


# ---- a dying evaluation process --------------------------------------------------------------------
def test_a_killed_evaluation_process_is_a_clear_error_with_a_checkpoint_and_the_run_resumes_exactly(tmp_path, monkeypatch):
    train(_config(), tmp_path / "straight")
    real = EvaluationProcess.submit
    killed = []

    def submit_then_kill(self, step, actors, members=None):
        real(self, step, actors, members)
        if step == 80:
            os.kill(self.pid, signal.SIGKILL)
            killed.append(self.pid)

    monkeypatch.setattr(EvaluationProcess, "submit", submit_then_kill)
    run = tmp_path / "run"
    started = time.monotonic()
    with pytest.raises(EvaluatorError) as caught:
        train(_config(eval_async=True), run)
    assert time.monotonic() - started < 60  # never a hang
    message = str(caught.value)
    assert f"evaluation process mtrl-evaluator (pid {killed[0]})" in message and "SIGKILL" in message
    (stopped,) = checkpoint_steps(run)[-1:]
    assert stopped >= 80 and f"step_{stopped:09d}" in message
    status = read_status(run)
    assert status["state"] == "failed" and "SIGKILL" in status["error"] and status["step"] == stopped
    assert [p["step"] for p in load_latest(run)[0]["pending_evaluations"]] == [80]
    monkeypatch.setattr(EvaluationProcess, "submit", real)
    train(_config(eval_async=True), run, resume="auto")
    _assert_same_run(run, tmp_path / "straight")


def test_an_evaluation_process_that_raises_reports_its_traceback(tmp_path):
    """A failure inside the process (here: weights of the wrong shape) names the process and
    carries the child's traceback; no hang."""
    cfg = _config()
    with EvaluationProcess([cfg], "cpu", threads=1) as process:
        process.submit(80, [{"mu.weight": torch.zeros(1)}])
        with pytest.raises(EvaluatorError, match=r"(?s)evaluation process mtrl-evaluator \(pid \d+\) exited with code 1.*evaluating step 80.*Traceback"):
            process.wait(timeout=120)


# ---- configuration ------------------------------------------------------------------------------------
def test_eval_async_needs_parallel_evaluations():
    with pytest.raises(ConfigError, match=r"(?s)train\.eval_async.*train\.eval_mode"):
        _config(eval_async=True, eval_mode="sequential")


def test_pivrg_evaluates_in_process_and_logs_its_omega_at_the_evaluation_step(tmp_path, capsys):
    pivrg = {"name": "pivrg"}
    train(_config(aggregator=pivrg, total_steps=160), tmp_path / "sync")
    train(_config(aggregator=pivrg, total_steps=160, eval_async=True), tmp_path / "async")
    assert "evaluating in process" in capsys.readouterr().err
    evaluations = [row for row in _logged(tmp_path / "async") if "eval/mean_success" in row]
    assert [row["step"] for row in evaluations] == [80, 160] and all("critic/omega" in row for row in evaluations)
    assert _logged(tmp_path / "async") == _logged(tmp_path / "sync")  # in process: even the line order is the same
    assert (tmp_path / "async" / "eval.csv").read_text() == (tmp_path / "sync" / "eval.csv").read_text()
