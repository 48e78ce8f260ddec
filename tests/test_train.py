"""End-to-end training: every registry method trains a few hundred steps on real MT10.

One MetaWorld MT10 build (training + evaluation envs) is shared by all methods; each run gets
its own run directory and checks the outputs docs/design.md §7 lists.
"""

from __future__ import annotations

import csv
import json
import math

import pytest
import yaml

from mtrl.aggregators import REGISTRY
from mtrl.config import apply_overrides, config_from_dict
from mtrl.train import build_envs, train

TINY = [
    "env.max_episode_steps=50",
    "agent.hidden_dim=32",
    "agent.num_layers=2",
    "train.total_steps=160",
    "train.warmup_steps=100",
    "train.batch_size=80",
    "train.eval_every=80",
    "train.eval_episodes=1",
    "train.log_every=20",
    "train.progress=false",
    "checkpoint.every=0",
    "device=cpu",
]
MAIN_TASK_METHODS = {"auxinash", "auxilearn"}


def tiny_config(method: str, *extra: str):
    overrides = [*TINY, f"aggregator.name={method}", *extra]
    if method in MAIN_TASK_METHODS:
        overrides.append("main_task=reach-v3")
    return config_from_dict(apply_overrides({"env": {"benchmark": "MT10"}}, overrides))


@pytest.fixture(scope="module")
def mt10_envs():
    envs = build_envs(tiny_config("ls"))
    yield envs
    for env in envs:
        env.close()


@pytest.mark.parametrize("method", sorted(REGISTRY))
def test_every_method_trains_on_mt10_and_writes_all_outputs(method, mt10_envs, tmp_path):
    cfg = tiny_config(method)
    result = train(cfg, tmp_path / method, envs=mt10_envs)
    run = tmp_path / method
    assert result.steps_done == 160 and not result.interrupted
    assert yaml.safe_load((run / "config.yaml").read_text())["aggregator"]["name"] == method
    assert json.loads((run / "status.json").read_text())["state"] == "finished"
    with open(run / "eval.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["step"]) for r in rows] == [80, 160]
    assert list(rows[0])[:4] == ["step", "mean_success", "reach-v3", "push-v3"]
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    logged_means = {line["step"]: line["eval/mean_success"] for line in lines if "eval/mean_success" in line}
    for r in rows:  # one evaluation episode per task: a rate is 0 or 1, the mean is the tasks' mean
        rates = [float(r[name]) for name in list(r)[2:]]
        assert len(rates) == 10 and set(rates) <= {0.0, 1.0}, r
        assert float(r["mean_success"]) == pytest.approx(sum(rates) / 10) == logged_means[int(r["step"])]
    updates = [line for line in lines if "critic/loss" in line]
    assert [line["step"] for line in updates] == [120, 140, 160]  # an update every step after warm-up
    for line in updates:  # a non-finite value is logged as null
        assert math.isfinite(line["critic/loss"]) and line["critic/loss"] >= 0, line  # squared TD errors
        assert math.isfinite(line["actor/loss"]), line
    assert updates[-1]["train/skipped_critic"] == 0 and updates[-1]["train/skipped_actor"] == 0
    assert list((run / "checkpoints").glob("step_*.pt")), "no final checkpoint"
    if method in MAIN_TASK_METHODS:  # main-task mode: outer steps ran, main success is logged
        assert updates[-1]["critic/hypersteps"] >= 1 and updates[-1]["actor/hypersteps"] >= 1
        evals = [line for line in lines if "eval/main_success" in line]
        assert [line["step"] for line in evals] == [80, 160]
        assert evals[-1]["eval/main_success"] == float(rows[-1]["reach-v3"])


def _goal_data(env) -> list[list[bytes]]:
    return [[task.data for task in goals] for goals in env.goal_sets]


def test_evaluation_env_draws_from_the_training_goals(mt10_envs):
    """env.eval_goals: train (the default, MetaWorld's protocol): the same 50 goal variations per
    task as the training env, drawn in another order by the evaluation env's own RNG."""
    env, eval_env = mt10_envs
    assert _goal_data(eval_env) == _goal_data(env)
    assert all(len(goals) == 50 for goals in env.goal_sets)
    assert eval_env._task_rngs[0].bit_generator.state != env._task_rngs[0].bit_generator.state
