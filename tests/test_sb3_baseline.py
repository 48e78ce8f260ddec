"""The Stable-Baselines3 SAC cross-check writes the eval.csv format `mtrl report` reads."""

from __future__ import annotations

import csv
import json

import numpy as np

from mtrl.envs.metaworld import MultiTaskEnv
from mtrl.report import find_runs, group_runs
from mtrl.sb3_baseline import SingleTaskGym, train_sb3


def test_single_task_wrapper_hands_out_final_then_reset_observation():
    env = SingleTaskGym(MultiTaskEnv("MT1-reach-v3", seed=0, max_episode_steps=5))
    obs, _ = env.reset()
    assert obs.shape == (39,)
    for t in range(5):
        obs, reward, terminated, truncated, info = env.step(np.zeros(4, dtype=np.float32))
    assert truncated and not terminated and "success" in info
    final = obs
    reset_obs, _ = env.reset()
    assert not np.array_equal(final, reset_obs)  # a new episode (new goal and hand position)
    env.env.close()


def test_sb3_sac_writes_an_eval_csv_that_report_reads(tmp_path):
    run = tmp_path / "sb3" / "seed0"
    rates = train_sb3("reach-v3", 0, run, total_steps=300, eval_every=150, eval_episodes=1,
                      max_episode_steps=50, warmup_steps=100, batch_size=32, hidden_dim=32, num_layers=2, device="cpu")
    assert len(rates) == 2
    with open(run / "eval.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["step"]) for r in rows] == [150, 300]
    assert list(rows[0]) == ["step", "mean_success", "reach-v3"]
    assert json.loads((run / "status.json").read_text())["state"] == "finished"
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in logged if "eval/mean_return" in row] == [150, 300]  # like mtrl train
    groups = group_runs(find_runs([tmp_path]))
    assert list(groups) == ["sb3_sac"] and groups["sb3_sac"][0].seed == 0
