"""Collection overlapped with the update (issue 23): ``env.overlap`` steps the envs while the
learner updates and equals the serial ``train.replay_delay: 1`` run bit for bit (metrics.jsonl
without its timings, eval.csv, final parameters, replay and env state), with the envs in process
and in worker processes; it is deterministic and resumes exactly after a SIGKILL mid-episode; an
env with a step in flight refuses every other request.

The synthetic ``Point-3`` benchmark covers what needs no MetaWorld (warm-up 0, AuxiLearn's held-out
slots); the MT10 runs reuse one build per env config (serial in process; overlapped with the
training env in one and in two worker processes), restored to its initial state before each run.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from mtrl.benchmarks import step as step_bench
from mtrl.checkpoint import load_latest
from mtrl.config import ConfigError, config_from_dict
from mtrl.envs.metaworld import MultiTaskEnv, StepInFlightError
from mtrl.envs.synthetic import PointMassEnv
from mtrl.envs.workers import ParallelMultiTaskEnv
from mtrl.evaluate import evaluate
from mtrl.replay import MultiTaskReplay
from mtrl.train import build_envs, train
from tests.helpers import through_torch_save, tiny_mt10
from tests.test_envs import STEP_FIELDS
from tests.test_resume import (
    POINT, QUICK_EPISODE, _assert_same_tensors, _quick_config, _train, _train_and_kill, _write_config,
)

SERIAL = {"train": {"replay_delay": 1}}
OVERLAP = {"env": {"overlap": True}, "train": {"replay_delay": 1}}


def _merge(base: dict, *changes: dict) -> dict:
    out = {key: dict(value) if isinstance(value, dict) else value for key, value in base.items()}
    for change in changes:
        for key, value in change.items():
            out[key] = {**out.get(key, {}), **value} if isinstance(value, dict) else value
    return out


def _logged(run_dir: Path) -> list[dict]:
    """metrics.jsonl without the timings (``time/...``, ``critic/time``, ``critic/jacobian``, ...)."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if not (k.startswith("time/") or k.endswith(("/time", "/jacobian")))} for row in rows]


def _final(run_dir: Path) -> dict:
    state, _ = load_latest(run_dir)
    return {key: state[key] for key in ("step", "update_step", "episodes", "agent", "replay", "env", "eval_env", "obs", "generators")}


def assert_same_runs(run: Path, reference: Path) -> None:
    assert _logged(run) == _logged(reference)
    assert (run / "eval.csv").read_text() == (reference / "eval.csv").read_text()
    _assert_same_tensors(_final(run), _final(reference), "checkpoint")


# ---- Point-3: in process --------------------------------------------------------------------------
POINT_SHORT = _merge(POINT, {"train": {"total_steps": 300, "eval_every": 150}, "checkpoint": {"every": 0}})
CASES = {
    "ls": {"aggregator": {"name": "ls"}},
    "ls_no_warmup": {"aggregator": {"name": "ls"}, "train": {"warmup_steps": 0}},
    # AuxiLearn's held-out slots and outer steps (main-task mode)
    "auxilearn": {"aggregator": {"name": "auxilearn", "options": {"hyper_every": 9}}, "main_task": "point-1"},
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_overlap_equals_the_serial_replay_delay_1_run_on_point(case, tmp_path):
    base = _merge(POINT_SHORT, CASES[case])
    train(config_from_dict(_merge(base, SERIAL)), tmp_path / "serial")
    train(config_from_dict(_merge(base, OVERLAP)), tmp_path / "overlap")
    assert_same_runs(tmp_path / "overlap", tmp_path / "serial")
    final = _final(tmp_path / "overlap")
    warmup = base["train"]["warmup_steps"]
    # delayed, step 0 finds the replay empty: with warm-up 0 the first update is at step 1
    assert final["update_step"] == POINT_SHORT["train"]["total_steps"] - max(warmup, 1)
    if case == "ls":  # the delay is real: today's order (replay_delay 0) gives another run
        train(config_from_dict(base), tmp_path / "today")
        assert _logged(tmp_path / "today") != _logged(tmp_path / "serial")


def test_overlapped_run_resumes_exactly_after_a_sigkill_mid_episode(tmp_path):
    """checkpoint.every = 70 with 25-step episodes: the checkpoints fall inside episodes."""
    base = _merge(POINT, OVERLAP, {"train": {"total_steps": 400}, "checkpoint": {"every": 70, "keep": 2}})
    config = _write_config(tmp_path / "config.yaml", base, {"name": "ls"})
    straight = _train(config, tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr[-3000:]
    killed = tmp_path / "killed"
    _train_and_kill(config, killed, after_checkpoints=2)
    state, _ = load_latest(killed)
    assert state["step"] % POINT["env"]["max_episode_steps"] != 0
    resumed = _train(config, killed, "--resume", str(killed))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stderr
    assert_same_runs(killed, tmp_path / "straight")


# ---- MT10: in process and two workers -------------------------------------------------------------
MT10 = tiny_mt10("run", seed=1, train={"total_steps": 100, "warmup_steps": 40, "eval_every": 50, "log_every": 20})


class _Builds:
    """Prebuilt (training, evaluation) envs per config, each restored to its state at build time
    before a run, so that every run starts as a freshly built env would."""

    def __init__(self) -> None:
        self.envs: dict[str, tuple] = {}
        self.initial: dict[str, tuple] = {}

    def get(self, cfg) -> tuple:
        key = repr(cfg.env)
        if key not in self.envs:
            envs = build_envs(cfg)
            self.envs[key] = envs
            self.initial[key] = tuple(env.state_dict() for env in envs)
        for env, state in zip(self.envs[key], self.initial[key]):
            env.load_state_dict(state)
        return self.envs[key]

    def close(self) -> None:
        for envs in self.envs.values():
            for env in envs:
                env.close()


@pytest.fixture(scope="module")
def mt10_builds():
    builds = _Builds()
    yield builds
    builds.close()


@pytest.fixture(scope="module")
def mt10_serial(mt10_builds, tmp_path_factory) -> Path:
    """The reference: serial, replay_delay 1, in process."""
    run = tmp_path_factory.mktemp("mt10") / "serial"
    cfg = config_from_dict(_merge(MT10, SERIAL))
    envs = mt10_builds.get(cfg)
    assert isinstance(envs[0], MultiTaskEnv)
    train(cfg, run, envs=envs)
    return run


@pytest.mark.parametrize("workers", [1, 2])
def test_overlap_equals_the_serial_replay_delay_1_run_on_mt10(workers, mt10_builds, mt10_serial, tmp_path):
    cfg = config_from_dict(_merge(MT10, OVERLAP, {"env": {"workers": workers}}))
    envs = mt10_builds.get(cfg)
    # what the trainer builds: every shard of the training env in a worker process, also for one
    assert isinstance(envs[0], ParallelMultiTaskEnv) and len(envs[0].pids) == workers
    assert isinstance(envs[1], MultiTaskEnv if workers == 1 else ParallelMultiTaskEnv)
    train(cfg, tmp_path / "overlap", envs=envs)
    assert_same_runs(tmp_path / "overlap", mt10_serial)
    if workers == 2:  # deterministic: the same seed gives the same overlapped run
        train(cfg, tmp_path / "again", envs=mt10_builds.get(cfg))
        assert_same_runs(tmp_path / "again", tmp_path / "overlap")
        rows = [json.loads(line) for line in (tmp_path / "overlap" / "metrics.jsonl").read_text().splitlines()]
        timing = [row for row in rows if "time/env_s" in row][-1]
        assert timing["time/env_s"] > 0 and 0.0 <= timing["time/collect_hidden"] <= 1.0


@pytest.mark.slow
def test_overlapped_mt10_run_with_two_workers_resumes_exactly_after_a_sigkill_mid_episode(tmp_path):
    """Real worker steps in flight when the trainer dies: the resumed run ends like the straight one."""
    config = _quick_config(tmp_path / "config.yaml", workers=2)
    data = yaml.safe_load(config.read_text())
    data["env"]["overlap"], data["train"]["replay_delay"] = True, 1
    config.write_text(yaml.safe_dump(data))
    straight = _train(config, tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr[-3000:]
    killed = tmp_path / "killed"
    _train_and_kill(config, killed, after_checkpoints=1)
    state, _ = load_latest(killed)
    assert state["step"] % QUICK_EPISODE != 0
    resumed = _train(config, killed, "--resume", str(killed))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_runs(killed, tmp_path / "straight")


# ---- the async API --------------------------------------------------------------------------------
def _in_flight_requests(env, actions: np.ndarray, state: dict) -> dict:
    return {
        "step": lambda: env.step(actions),
        "step_async": lambda: env.step_async(actions),
        "reset": env.reset,
        "state_dict": env.state_dict,
        "load_state_dict": lambda: env.load_state_dict(state),
        "evaluate": lambda: evaluate(lambda obs: np.zeros((env.num_tasks, env.action_dim), np.float32), env, 1),
    }


@pytest.mark.parametrize("kind", ["point", "in_process", "worker", "local_shard"])
def test_a_step_in_flight_refuses_every_other_request_and_steps_like_step(kind):
    if kind == "point":
        env, twin = PointMassEnv("Point-3", seed=0), PointMassEnv("Point-3", seed=0)
    elif kind == "in_process":
        env, twin = MultiTaskEnv("MT1-reach-v3", seed=0), MultiTaskEnv("MT1-reach-v3", seed=0)
    else:
        env = ParallelMultiTaskEnv("MT1-reach-v3", seed=0, workers=1, local_shard=kind == "local_shard", spin_ms=0)
        twin = MultiTaskEnv("MT1-reach-v3", seed=0)
    try:
        assert np.array_equal(env.reset(), twin.reset())
        state = through_torch_save(twin.state_dict())
        rng = np.random.default_rng(0)
        with pytest.raises(StepInFlightError, match="no step in flight; call step_async"):
            env.step_wait()
        for i in range(3):
            actions = rng.uniform(-1, 1, size=(env.num_tasks, env.action_dim)).astype(np.float32)
            expected = twin.step(actions)
            env.step_async(actions)
            actions[:] = 7.0  # the caller's array is free once launched
            for request in _in_flight_requests(env, actions, state).values():
                with pytest.raises(StepInFlightError, match=r"a step is in flight \(step_async without step_wait\); call step_wait\(\) first"):
                    request()
            assert env.step_in_flight
            result = env.step_wait()
            assert not env.step_in_flight
            for field in STEP_FIELDS:
                assert np.array_equal(getattr(result, field), getattr(expected, field)), (i, field)
        # the refused requests changed nothing: the states agree, and the env goes on
        _assert_same_tensors(through_torch_save(env.state_dict()), through_torch_save(twin.state_dict()), "env")
        env.step_async(np.zeros((env.num_tasks, env.action_dim), np.float32))
        env.step_wait()
    finally:
        env.close()
        twin.close()


def test_overlap_and_replay_delay_settings_are_checked():
    with pytest.raises(ConfigError, match=r"env.overlap: true needs train.replay_delay: 1 .*got train.replay_delay: 0"):
        config_from_dict({"env": {"overlap": True}})
    with pytest.raises(ConfigError, match="train.replay_delay must be one of 0, 1; got 2"):
        config_from_dict({"train": {"replay_delay": 2}})
    assert config_from_dict(OVERLAP).env.overlap


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_replay_add_on_cuda_does_not_wait_for_queued_kernels_and_stores_what_the_cpu_replay_stores():
    cpu, gpu = MultiTaskReplay(3, 5, 4, 2, seed=0), MultiTaskReplay(3, 5, 4, 2, device="cuda", seed=0)
    rng = np.random.default_rng(0)
    for i in range(12):  # the ring wraps; the two staging rows are reused again and again
        values = (rng.normal(size=(3, 4)).astype(np.float32), rng.normal(size=(3, 2)).astype(np.float32),
                  rng.normal(size=3).astype(np.float32), rng.normal(size=(3, 4)).astype(np.float32), rng.random(3) < 0.5)
        torch.cuda.synchronize()  # as the trainer's next action does
        torch.cuda._sleep(50_000_000)  # a kernel in flight (tens of milliseconds), as an update would be
        start = time.perf_counter()
        gpu.add(*values)
        assert time.perf_counter() - start < 0.01, i
        cpu.add(*values)
    _assert_same_tensors(gpu.state_dict(), cpu.state_dict(), "replay")


# ---- the benchmark --------------------------------------------------------------------------------
def test_step_benchmark_writes_overlap_against_serial_ratios(tmp_path):
    out = tmp_path / "step.json"
    argv = ["--benchmarks", "MT1-reach-v3", "--workers", "1", "--update-ms", "1", "--steps", "3", "--repeats", "2",
            "--hidden", "16", "--real-hidden", "16", "--skip-eval", "--json", str(out)]
    assert step_bench.main(argv) in (0, 1)  # 1: a target missed
    data = json.loads(out.read_text())["comparisons"]
    row = data["mt1-reach-v3_overlap_vs_serial_u1"]
    assert row["better"] == "lower" and row["ratio"] > 0 and isinstance(row["pass"], bool)
    assert 0 < row["ideal_ratio"] <= 1
