"""Surviving faults (issue 5): SIGTERM, failing checkpoint writes, corrupt checkpoints during a
run, mismatched configs and foreign run directories. Every case leaves a consistent run
directory that resumes to the same result as an uninterrupted run."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mtrl.checkpoint import CheckpointError, list_checkpoints, load_latest
from mtrl.config import ConfigError, config_from_dict, with_values
from mtrl.train import train
from tests.helpers import read_only_file_system
from tests.test_resume import ENV, POINT, _assert_same_tensors, _write_config


def cfg(**changes):
    return config_from_dict(with_values({**POINT, "aggregator": {"name": "nashmtl", "options": {"update_every": 2}}}, changes))


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    run = tmp_path_factory.mktemp("straight")
    train(cfg(), run)
    return run


def test_failed_checkpoint_write_keeps_the_run_consistent_and_resumable(straight, tmp_path):
    calls = {"n": 0}

    def flaky_writer(path: Path, save) -> None:
        calls["n"] += 1
        with open(path, "wb") as handle:
            save(handle)
            if calls["n"] == 3:
                handle.truncate(100)
                raise OSError(28, "No space left on device")

    with pytest.raises(CheckpointError, match="No space left on device"):
        train(cfg(), tmp_path, checkpoint_writer=flaky_writer)
    assert json.loads((tmp_path / "status.json").read_text())["state"] == "failed"
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_000000100.pt", "step_000000200.pt"]
    assert not any(p.name.endswith(".tmp") for p in (tmp_path / "checkpoints").iterdir())
    train(cfg(), tmp_path, resume="auto")
    assert (tmp_path / "eval.csv").read_text() == (straight / "eval.csv").read_text()
    _assert_same_tensors(load_latest(tmp_path)[0]["agent"], load_latest(straight)[0]["agent"])


def test_corrupt_newest_checkpoint_falls_back_to_the_previous_one(straight, tmp_path):
    with pytest.raises(KeyboardInterrupt):
        def stop_after_three(path: Path, save) -> None:
            with open(path, "wb") as handle:
                save(handle)
            if len(list_checkpoints(tmp_path)) == 2:
                raise KeyboardInterrupt
        train(cfg(), tmp_path, checkpoint_writer=stop_after_three)
    newest = list_checkpoints(tmp_path)[-1]
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 3])
    with pytest.warns(UserWarning, match=newest.name):
        train(cfg(), tmp_path, resume=str(tmp_path))
    assert (tmp_path / "eval.csv").read_text() == (straight / "eval.csv").read_text()


def test_resume_with_a_config_that_changes_the_run_is_refused_unless_forced(straight, tmp_path):
    train(cfg(**{"train.total_steps": 200}), tmp_path)
    with pytest.raises(ConfigError) as err:
        train(cfg(**{"train.total_steps": 300, "seed": 4, "aggregator": {"name": "ls"}}), tmp_path, resume="auto")
    assert "seed" in str(err.value) and "aggregator.name" in str(err.value)
    # settings that do not change the run's meaning are fine: extend the run
    result = train(cfg(**{"train.total_steps": 300}), tmp_path, resume="auto")
    assert result.steps_done == 300
    forced = train(cfg(**{"train.total_steps": 400, "aggregator": {"name": "ls"}}), tmp_path, resume="auto", force=True)
    assert forced.steps_done == 400


def test_fresh_run_in_a_directory_holding_another_run_is_refused(straight):
    before = {p.name: p.stat().st_mtime_ns for p in straight.iterdir()}
    with pytest.raises(ConfigError, match="already holds a run"):
        train(cfg(), straight)
    assert {p.name: p.stat().st_mtime_ns for p in straight.iterdir()} == before


def test_resume_without_a_checkpoint_says_so(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        train(cfg(), tmp_path, resume=str(tmp_path))


def test_resume_auto_on_a_finished_run_does_no_work(straight):
    before = (straight / "eval.csv").read_text()
    result = train(cfg(), straight, resume="auto")
    assert result.steps_done == POINT["train"]["total_steps"]
    assert (straight / "eval.csv").read_text() == before


def test_sigterm_finishes_the_step_checkpoints_and_exits_cleanly(straight, tmp_path):
    config = _write_config(tmp_path / "config.yaml", POINT, {"name": "nashmtl", "options": {"update_every": 2}})
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "mtrl.cli", "train", str(config), "--run-dir", str(run)]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list_checkpoints(run) and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr
    assert "SIGTERM received" in stderr and "--resume" in stderr
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "interrupted"
    state, _ = load_latest(run)
    assert state["step"] == status["step"]
    resumed = subprocess.run(cmd[:-2] + ["--run-dir", str(run), "--resume", str(run)], env=ENV, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((run / "status.json").read_text())["state"] == "finished"
    # the checkpoint fell at whatever step the signal arrived, mostly inside an episode: exact anyway
    assert (run / "eval.csv").read_text() == (straight / "eval.csv").read_text()
    _assert_same_tensors(load_latest(run)[0]["agent"], load_latest(straight)[0]["agent"])


@pytest.mark.skipif(not hasattr(signal, "SIGUSR2"), reason="no SIGUSR2 on this platform")
def test_the_slurm_time_limit_signal_stops_with_a_checkpoint_like_sigterm(straight, tmp_path):
    """SIGUSR2 (submitit's time-limit signal, which SLURM sends to every process of the job) must
    end in a checkpoint, not in its default action of killing the trainer."""
    def signal_during_first_checkpoint(path: Path, save) -> None:
        with open(path, "wb") as handle:
            save(handle)
        if not list_checkpoints(tmp_path):
            os.kill(os.getpid(), signal.SIGUSR2)

    result = train(cfg(), tmp_path, checkpoint_writer=signal_during_first_checkpoint)
    assert result.interrupted and result.steps_done == 100
    assert json.loads((tmp_path / "status.json").read_text())["state"] == "interrupted"
    train(cfg(), tmp_path, resume="auto")
    assert (tmp_path / "eval.csv").read_text() == (straight / "eval.csv").read_text()


def test_a_read_only_run_directory_is_a_clear_error_that_changes_nothing(straight, tmp_path, monkeypatch):
    """A fresh run and the resume of an interrupted one in a directory that has turned read-only (a
    disk remounted after an error; emulated, as CI runs as root) stop with the file system's error
    before they change a byte there; once it is writable again the run resumes exactly."""
    fresh, run = tmp_path / "fresh", tmp_path / "run"
    fresh.mkdir()

    def stop_at_the_third_checkpoint(path: Path, save) -> None:
        if len(list_checkpoints(run)) == 2:
            raise KeyboardInterrupt
        with open(path, "wb") as handle:
            save(handle)

    with pytest.raises(KeyboardInterrupt):
        train(cfg(), run, checkpoint_writer=stop_at_the_third_checkpoint)  # logged up to step 300, checkpoint at 200
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    with monkeypatch.context() as patch:
        read_only_file_system(patch, tmp_path)
        for directory, resume in ((fresh, None), (run, "auto")):
            with pytest.raises(OSError) as err:
                train(cfg(), directory, resume=resume)
            assert err.value.errno == errno.EROFS and Path(err.value.filename).parent == directory
    assert list(fresh.iterdir()) == []
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
    train(cfg(), run, resume="auto")
    assert (run / "eval.csv").read_text() == (straight / "eval.csv").read_text()
    _assert_same_tensors(load_latest(run)[0]["agent"], load_latest(straight)[0]["agent"])


def test_checkpoint_holds_what_exact_resume_needs(straight):
    state, _ = load_latest(straight)
    for key in ("agent", "aggregators", "replay", "env", "eval_env", "obs", "generators", "rng", "step",
                "update_step", "episodes", "skipped", "unstable", "config", "metric_offsets", "perf"):
        assert key in state, key
    assert set(state["agent"]) == {"model", "actor_optimizer", "critic_optimizer", "alpha_optimizer"}
    assert state["aggregators"]["critic"]["step"] > 0
    assert isinstance(state["replay"]["obs"], torch.Tensor)
