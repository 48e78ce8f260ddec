"""A learning check: multi-task SAC solves the synthetic point-mass tasks within a CPU budget.

``Point-3`` has three goals that the policy can only tell apart through the task id, so rising
success means the shared network learned task-conditioned behaviour from aggregated gradients.
"""

from __future__ import annotations

import csv

import pytest

from mtrl.config import config_from_dict
from mtrl.train import train


def point_config(method: str, **options) -> dict:
    return {
        "seed": 0,
        "device": "cpu",
        "env": {"benchmark": "Point-3", "max_episode_steps": 30},
        # a small task with rewards of order 1: a lower initial temperature and a larger learning
        # rate than the MetaWorld protocol let it learn within the CPU budget of the test suite
        "agent": {"hidden_dim": 64, "num_layers": 2, "init_temperature": 0.1, "actor_lr": 1e-3, "critic_lr": 1e-3, "alpha_lr": 1e-3},
        "aggregator": {"name": method, "options": options},
        "train": {
            "total_steps": 1500,
            "warmup_steps": 150,
            "batch_size": 192,
            "replay_capacity": 30000,
            "eval_every": 300,
            "eval_episodes": 5,
            "log_every": 300,
            "progress": False,
        },
        "checkpoint": {"every": 0},
    }


@pytest.mark.parametrize("method", ["ls", "nashmtl"])
def test_success_rises_on_synthetic_multitask_env(method, tmp_path):
    train(config_from_dict(point_config(method)), tmp_path)
    with open(tmp_path / "eval.csv") as handle:
        success = [float(row["mean_success"]) for row in csv.DictReader(handle)]
    assert success[0] <= 0.34, success  # the first evaluation is near chance level
    assert max(success[-2:]) >= 0.9, success


@pytest.mark.slow
@pytest.mark.parametrize("method", ["auxinash", "auxilearn"])
def test_main_task_methods_learn_the_main_task(method, tmp_path):
    """Main-task mode (point-1 main, two auxiliaries): the outer steps run during training and
    the main task is solved."""
    config = point_config(method, hyper_every=10)
    config["main_task"] = "point-1"
    train(config_from_dict(config), tmp_path)
    with open(tmp_path / "eval.csv") as handle:
        main = [float(row["point-1"]) for row in csv.DictReader(handle)]
    assert main[0] <= 0.5, main
    assert max(main[-2:]) >= 0.9, main


@pytest.mark.slow
def test_pivrg_learns_with_performance_weights(tmp_path):
    train(config_from_dict(point_config("pivrg")), tmp_path)
    with open(tmp_path / "eval.csv") as handle:
        success = [float(row["mean_success"]) for row in csv.DictReader(handle)]
    assert max(success[-2:]) >= 0.9, success
    import json

    omegas = [row["critic/omega"] for row in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines()) if "critic/omega" in row]
    assert len(omegas) == len(success)  # omega logged at every evaluation
    assert all(abs(sum(w) - 3) < 1e-9 and 0.5 <= min(w) and max(w) <= 2 for w in omegas)
