"""Slow checks, deselected by default (``pytest -q -m slow``; 10 to 20 minutes on a 2-core CPU).

* SAC learns on a real MetaWorld task (``MT1-reach-v3``, 20K steps): evaluation return rises;
* the methods with MT50-specific settings train on real MT50 (50 tasks, batch 50 x 8).
"""

from __future__ import annotations

import csv
import json

import pytest

from mtrl.config import apply_overrides, config_from_dict
from mtrl.train import build_envs, train

pytestmark = pytest.mark.slow


def _success(run_dir) -> list[float]:
    with open(run_dir / "eval.csv") as handle:
        return [float(row["mean_success"]) for row in csv.DictReader(handle)]


def test_sac_learns_reach_v3(tmp_path):
    cfg = config_from_dict({
        "seed": 0,
        "device": "cpu",
        "env": {"benchmark": "MT1-reach-v3", "max_episode_steps": 200},
        "agent": {"hidden_dim": 256, "num_layers": 2},
        "aggregator": {"name": "ls"},
        "train": {"total_steps": 20000, "warmup_steps": 1500, "batch_size": 256, "replay_capacity": 100000,
                  "eval_every": 5000, "eval_episodes": 10, "log_every": 1000, "progress": False},
        "checkpoint": {"every": 0},
    })
    train(cfg, tmp_path)
    success = _success(tmp_path)
    returns = [row["eval/mean_return"] for row in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines())
               if "eval/mean_return" in row]
    # measured on a 2-core CPU: returns 433, 570, 837, 1008 and success 0, 0, 0.1, 0.2 at 5K..20K
    # steps (reach-v3 with goals resampled every episode needs well over 20K steps to be solved)
    assert returns[-1] >= 1.5 * returns[0], returns
    assert max(success[-2:]) >= 0.1, success


@pytest.mark.parametrize("method", ["ls", "nashmtl", "cagrad_fast", "pcgrad"])
def test_mt50_methods_train(method, tmp_path, mt50_envs):
    cfg = config_from_dict(apply_overrides({"env": {"benchmark": "MT50"}}, [
        "env.max_episode_steps=50", "agent.hidden_dim=64", "agent.num_layers=2", f"aggregator.name={method}",
        "train.total_steps=200", "train.warmup_steps=100", "train.batch_size=400", "train.eval_every=200",
        "train.eval_episodes=1", "train.log_every=50", "train.progress=false", "checkpoint.every=0", "device=cpu",
    ]))
    result = train(cfg, tmp_path, envs=mt50_envs)
    assert result.steps_done == 200
    with open(tmp_path / "eval.csv") as handle:
        header = next(csv.reader(handle))
    assert len(header) == 52


@pytest.fixture(scope="module")
def mt50_envs():
    cfg = config_from_dict({"env": {"benchmark": "MT50", "max_episode_steps": 50}, "device": "cpu"})
    envs = build_envs(cfg)
    yield envs
    for env in envs:
        env.close()
