"""Unstable simulation is counted per task, not passed over in silence: the trainer logs per-task
running totals (``train/unstable`` in ``metrics.jsonl``) that a checkpoint carries across a
resume, next to every task's temperature (``temperature/alpha``).

The env side (MuJoCo's warning counters read after each MetaWorld step, the flag carried through
the env workers' shared memory) is tested in ``tests/test_workers.py``
(``test_an_unstable_step_is_flagged_for_its_task_only_in_process_and_in_the_workers``); here a
synthetic env reports instabilities on a fixed pattern.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from mtrl.checkpoint import load_latest
from mtrl.config import apply_overrides, config_from_dict
from mtrl.envs.synthetic import PointMassEnv
from mtrl.train import train

class ShakyPoint(PointMassEnv):
    """Point-3 whose task 1 reports an unstable step at steps 3 and 6 of every episode (its step
    counter is part of the env's state, so a resumed run continues the pattern)."""

    def step(self, actions):
        step_in_episode = self._t + 1  # the step about to be taken, before a reset clears it
        result = super().step(actions)
        unstable = np.zeros(self.num_tasks, dtype=bool)
        unstable[1] = step_in_episode[1] % 3 == 0
        return dataclasses.replace(result, unstable=unstable)


def expected_totals(steps: int, length: int) -> list[int]:
    """Task 1's unstable steps among the first ``steps`` steps of ShakyPoint: per episode of
    ``length`` steps, those whose number within the episode is a multiple of 3."""
    shaky = sum(1 for s in range(steps) if (s % length + 1) % 3 == 0)
    return [0, shaky, 0]


def point_run(run_dir, total_steps: int, resume: str | None = None) -> None:
    length = 7
    overrides = [
        "env.benchmark=Point-3", f"env.max_episode_steps={length}", f"train.total_steps={total_steps}", "train.warmup_steps=5",
        "train.batch_size=6", "train.replay_capacity=300", "train.log_every=10", "train.eval_every=1000",
        "train.eval_episodes=1", "train.progress=false", "checkpoint.every=0", "agent.hidden_dim=8", "agent.num_layers=1",
        "device=cpu",
    ]
    envs = (ShakyPoint("Point-3", seed=0, max_episode_steps=length), PointMassEnv("Point-3", seed=1, max_episode_steps=length))
    train(config_from_dict(apply_overrides({}, overrides)), run_dir, envs=envs, resume=resume)


def logged(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if "train/unstable" in line]


def test_unstable_totals_per_task_are_logged_and_survive_a_resume(tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    point_run(straight, 40)
    point_run(resumed, 20)  # stops after step 20 with a checkpoint ...
    point_run(resumed, 40, resume=str(resumed))  # ... and continues from it
    lines = logged(straight)
    assert [line["step"] for line in lines] == [10, 20, 30, 40]
    for line in lines:
        assert line["train/unstable"] == expected_totals(line["step"], 7), line["step"]
        alphas = line["temperature/alpha"]  # every task's temperature, beside their mean
        assert len(alphas) == 3 and line["alpha"] == pytest.approx(np.mean(alphas), rel=1e-6)
    assert [line["train/unstable"] for line in logged(resumed)] == [line["train/unstable"] for line in lines]
    state, _ = load_latest(straight)
    assert torch.equal(state["unstable"], torch.tensor(expected_totals(40, 7)))
