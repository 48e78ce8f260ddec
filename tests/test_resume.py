"""Exact resume (issues 5 and 14): a run killed with SIGKILL after a checkpoint, or stopped by
SIGTERM at any step, and resumed produces the same eval.csv, logged losses and bit-identical
final parameters as the uninterrupted run, also when the checkpoint falls in the middle of an
episode and when the environments run in worker processes.

Runs are subprocesses of the real CLI, but for one MetaWorld crash-and-resume in process. The
synthetic ``Point-3`` benchmark keeps each run to a few seconds; the MetaWorld tests run a
shortened ``configs/quick.yaml`` (MT10).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from mtrl.checkpoint import list_checkpoints, load_latest
from mtrl.config import config_from_dict
from mtrl.train import build_envs, train

POINT = {
    "name": "resume",
    "seed": 3,
    "device": "cpu",
    "env": {"benchmark": "Point-3", "max_episode_steps": 25},
    "agent": {"hidden_dim": 32, "num_layers": 2},
    "train": {
        "total_steps": 700,
        "warmup_steps": 100,
        "batch_size": 48,
        "replay_capacity": 3000,
        "eval_every": 100,
        "eval_episodes": 2,
        "log_every": 50,
        "progress": False,
    },
    "checkpoint": {"every": 100, "keep": 2},
}
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}


def _write_config(path: Path, base: dict, aggregator: dict) -> Path:
    path.write_text(yaml.safe_dump({**base, "aggregator": aggregator}))
    return path


def _train(config: Path, run_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "mtrl.cli", "train", str(config), "--run-dir", str(run_dir), *extra]
    return subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)


def _train_and_kill(config: Path, run_dir: Path, after_checkpoints: int) -> None:
    cmd = [sys.executable, "-m", "mtrl.cli", "train", str(config), "--run-dir", str(run_dir)]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 600
    while len(list_checkpoints(run_dir)) < after_checkpoints:
        if proc.poll() is not None:
            raise AssertionError(f"run ended before it could be killed: {proc.stderr.read().decode()[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("no checkpoint appeared")
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL


def _final_parameters(run_dir: Path) -> dict:
    state, _ = load_latest(run_dir)
    return state["agent"]


def _assert_same_tensors(a, b, path="agent"):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), f"{path} differs"
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for key in a:
            _assert_same_tensors(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same_tensors(x, y, f"{path}[{i}]")
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


AGGREGATORS = {
    "ls": {"name": "ls"},
    "nashmtl_t": {"name": "nashmtl", "options": {"update_every": 3}},
    "cagrad_fast": {"name": "cagrad_fast", "options": {"num_sampled": 1, "c": 0.5}},
    "pcgrad": {"name": "pcgrad"},
    "pivrg": {"name": "pivrg"},
    # bilevel methods in main-task mode, with outer steps before and after the kill
    "auxinash": {"name": "auxinash", "options": {"hyper_every": 7}},
    "auxilearn": {"name": "auxilearn", "options": {"hyper_every": 9}},
}
MAIN_TASK = {"auxinash": "point-1", "auxilearn": "point-1"}


#: in the default suite: a G-based method with state across the kill (Nash-MTL-T); the others
#: run with `pytest -m slow` (30 to 50 s each on 2 cores)
DEFAULT_RESUME = {"nashmtl_t"}


@pytest.mark.parametrize("label", [
    pytest.param(label, marks=() if label in DEFAULT_RESUME else pytest.mark.slow) for label in sorted(AGGREGATORS)
])
def test_sigkill_then_resume_is_bit_exact(label, tmp_path):
    base = {**POINT, "main_task": MAIN_TASK[label]} if label in MAIN_TASK else POINT
    kill_resume_and_compare(_write_config(tmp_path / "config.yaml", base, AGGREGATORS[label]), tmp_path)


def _logged(run_dir: Path) -> list:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(row["step"], {k: v for k, v in row.items() if "loss" in k}) for row in rows]


def test_sigkill_after_a_mid_episode_checkpoint_then_resume_is_bit_exact(tmp_path):
    """checkpoint.every = 70 with 25-step episodes: every checkpoint falls inside an episode."""
    base = {**POINT, "checkpoint": {"every": 70, "keep": 2}}
    kill_resume_and_compare(_write_config(tmp_path / "config.yaml", base, AGGREGATORS["ls"]), tmp_path)


def kill_resume_and_compare(config: Path, tmp_path: Path) -> None:
    """Train ``config`` straight and again killed (SIGKILL) after its second checkpoint, resume the
    killed run: the same eval.csv, the same logged losses (no duplicate or lost rows) and
    bit-identical final parameters."""
    straight = _train(config, tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr[-3000:]
    killed = tmp_path / "killed"
    _train_and_kill(config, killed, after_checkpoints=2)
    resumed = _train(config, killed, "--resume", str(killed))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stderr
    _assert_same_runs(killed, tmp_path / "straight")


def _assert_same_runs(run: Path, reference: Path) -> None:
    assert (run / "eval.csv").read_text() == (reference / "eval.csv").read_text()
    assert _logged(run) == _logged(reference)
    _assert_same_tensors(_final_parameters(run), _final_parameters(reference))


# ---- MetaWorld: configs/quick.yaml, shortened -----------------------------------------------------
QUICK_EPISODE = 40
QUICK_OVERRIDES = {  # checkpoint.every is no multiple of the episode length: mid-episode checkpoints
    "device": "cpu",
    "env": {"max_episode_steps": QUICK_EPISODE},
    "agent": {"hidden_dim": 32},
    "train": {"total_steps": 240, "warmup_steps": 60, "batch_size": 80, "replay_capacity": 4000,
              "eval_every": 120, "eval_episodes": 1, "log_every": 20, "progress": False},
    "checkpoint": {"every": 70, "keep": 2},
}


def _quick_config(path: Path, workers: int) -> Path:
    data = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs" / "quick.yaml").read_text())
    for section, values in QUICK_OVERRIDES.items():
        if isinstance(values, dict):
            data[section] = {**data[section], **values}
        else:
            data[section] = values
    data["env"]["workers"] = workers
    path.write_text(yaml.safe_dump(data))
    return path


def _start_in_own_group(config: Path, run_dir: Path, *extra: str) -> subprocess.Popen:
    """The CLI in a new session, so that a signal can go to its whole process group (workers
    included), as a terminal's Ctrl-C or a scheduler's SIGTERM would."""
    cmd = [sys.executable, "-m", "mtrl.cli", "train", str(config), "--run-dir", str(run_dir), *extra]
    return subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)


def _wait_for_checkpoint(proc: subprocess.Popen, run_dir: Path) -> None:
    deadline = time.monotonic() + 900
    while not list_checkpoints(run_dir):
        if proc.poll() is not None:
            raise AssertionError(f"run ended before its first checkpoint: {proc.stderr.read()[-3000:]}")
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            raise AssertionError("no checkpoint appeared")
        time.sleep(0.05)


def _group_gone(pgid: int, within: float = 30.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


@pytest.fixture(scope="module")
def quick_straight(tmp_path_factory) -> Path:
    """The uninterrupted reference run, in process (env.workers: 1)."""
    root = tmp_path_factory.mktemp("quick")
    result = _train(_quick_config(root / "config.yaml", workers=1), root / "straight")
    assert result.returncode == 0, result.stderr[-3000:]
    return root / "straight"


def test_metaworld_sigterm_to_the_process_group_mid_episode_with_two_workers_resumes_bit_exactly(quick_straight, tmp_path):
    """SIGTERM to the trainer and its env workers at an arbitrary step after the first (mid-episode)
    checkpoint: the workers outlive it, the trainer checkpoints at that step, and the run resumed
    with two workers ends like the uninterrupted in-process run."""
    config = _quick_config(tmp_path / "config.yaml", workers=2)
    run = tmp_path / "run"
    proc = _start_in_own_group(config, run)
    _wait_for_checkpoint(proc, run)
    os.killpg(proc.pid, signal.SIGTERM)
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 143, stderr[-3000:]
    assert "SIGTERM received" in stderr
    assert _group_gone(proc.pid), "env workers outlived the trainer"
    state, _ = load_latest(run)
    assert state["step"] < QUICK_OVERRIDES["train"]["total_steps"]
    resumed = _start_in_own_group(config, run, "--resume", str(run))
    _, stderr = resumed.communicate(timeout=900)
    assert resumed.returncode == 0, stderr[-3000:]
    assert _group_gone(resumed.pid)
    _assert_same_runs(run, quick_straight)


def test_metaworld_crash_after_a_mid_episode_checkpoint_resumes_bit_exactly(tmp_path):
    """A MetaWorld resume from a checkpoint inside an episode cheap enough for the default suite
    (about 20 s on one core): in process, on one MT10 build, a run that crashes while writing its
    second checkpoint (a KeyboardInterrupt from the checkpoint writer at step 140, after it logged
    the evaluation at step 80) resumes from its first, at step 70, where every task is 30 steps into
    its second 40-step episode, and ends like the uninterrupted run: the same eval.csv and logged
    losses, bit-identical parameters. The crashed run's envs are reused as it left them: only the
    checkpoint restores them."""
    data = yaml.safe_load(_quick_config(tmp_path / "config.yaml", workers=1).read_text())
    data["train"].update(total_steps=160, eval_every=80)
    cfg = config_from_dict(data)
    envs = build_envs(cfg)
    try:
        fresh = [env.state_dict() for env in envs]
        train(cfg, tmp_path / "straight", envs=envs)
        for env, state in zip(envs, fresh):
            env.load_state_dict(state)
        run = tmp_path / "run"

        def crash_at_the_second_checkpoint(path: Path, save) -> None:
            if list_checkpoints(run):
                raise KeyboardInterrupt
            with open(path, "wb") as handle:
                save(handle)

        with pytest.raises(KeyboardInterrupt):
            train(cfg, run, envs=envs, checkpoint_writer=crash_at_the_second_checkpoint)
        state, _ = load_latest(run)
        assert state["step"] == 70 and bool((state["env"]["episode_step"] == 70 % QUICK_EPISODE).all())
        assert "\n80," in (run / "eval.csv").read_text()  # logged after the checkpoint: the resume cuts it off
        train(cfg, run, resume=str(run), envs=envs)
    finally:
        for env in envs:
            env.close()
    _assert_same_runs(run, tmp_path / "straight")


@pytest.mark.slow
def test_metaworld_sigkill_after_a_mid_episode_checkpoint_resumes_bit_exactly(quick_straight, tmp_path):
    config = _quick_config(tmp_path / "config.yaml", workers=1)
    killed = tmp_path / "killed"
    _train_and_kill(config, killed, after_checkpoints=1)
    state, _ = load_latest(killed)
    assert state["step"] % QUICK_EPISODE != 0  # the checkpoint fell inside an episode
    resumed = _train(config, killed, "--resume", str(killed))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _assert_same_runs(killed, quick_straight)


@pytest.mark.slow
def test_metaworld_sigkill_with_two_workers_leaves_no_worker_and_resumes_bit_exactly(quick_straight, tmp_path):
    """SIGKILL of the trainer alone: its workers notice the closed pipe and exit."""
    config = _quick_config(tmp_path / "config.yaml", workers=2)
    run = tmp_path / "run"
    proc = _start_in_own_group(config, run)
    _wait_for_checkpoint(proc, run)
    proc.kill()
    proc.wait()
    assert _group_gone(proc.pid), "env workers outlived a SIGKILLed trainer"
    resumed = _train(config, run, "--resume", str(run))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _assert_same_runs(run, quick_straight)


@pytest.mark.slow
def test_metaworld_two_workers_and_in_process_give_identical_runs(quick_straight, tmp_path):
    result = _train(_quick_config(tmp_path / "config.yaml", workers=2), tmp_path / "two")
    assert result.returncode == 0, result.stderr[-3000:]
    _assert_same_runs(tmp_path / "two", quick_straight)
