"""Rollout videos (`mtrl evaluate --video`, `train.video_every`) and Weights & Biases offline logging.

* a recorded episode is a decodable MP4 (and GIF) with one frame for its first state, every
  4th step and its last step;
* `mtrl evaluate RUN --video DIR` renders the run's policy into DIR/<task>.mp4;
* a short MT1 run with `train.video_every` and `train.wandb.mode=offline` writes its videos under
  the run, logs their paths, and leaves W&B's offline run files (metrics, success, config) there.

Rendering is offscreen (tests/conftest.py picks EGL or OSMesa before MuJoCo is imported).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from mtrl.config import config_from_dict
from mtrl.rollouts import record_run_videos
from mtrl.train import train
from mtrl.video import VideoRecorder, expected_frames, read_frame_count, video_format
from tests.helpers import reach_controller

STEPS = 12


def still(obs: np.ndarray) -> np.ndarray:
    return np.zeros((obs.shape[0], 4), dtype=np.float32)


@pytest.fixture(scope="module")
def recorder():
    rec = VideoRecorder("MT1-reach-v3", 0, ["reach-v3"], max_episode_steps=STEPS, size=64)
    yield rec
    rec.close()


@pytest.mark.parametrize("fmt", ["mp4", "gif"])
def test_video_of_one_episode_decodes_with_the_expected_frame_count(recorder, tmp_path, fmt):
    (video,) = recorder.record(still, tmp_path, fmt=fmt)  # never moves: the episode runs its 12 steps
    assert video.path == tmp_path / f"reach-v3.{fmt}" and video.success == [False]
    assert video.frames == expected_frames(STEPS, 4) == 4
    assert read_frame_count(video.path) == 4


def test_episodes_end_at_success_and_play_back_to_back(tmp_path):
    rec = VideoRecorder("MT1-reach-v3", 0, ["reach-v3"], max_episode_steps=100, size=32, frame_every=4)
    try:
        (video,) = rec.record(reach_controller, tmp_path, episodes=2, fmt="gif")
    finally:
        rec.close()
    assert video.success == [True, True] and len(video.returns) == 2
    assert video.frames < 2 * expected_frames(100, 4)  # both ended before the time limit
    assert read_frame_count(video.path) == video.frames


def test_mp4_is_the_format_when_the_video_extra_is_installed():
    pytest.importorskip("imageio_ffmpeg")
    assert video_format() == "mp4"


def tiny_mt1_with_videos_and_wandb(name: str, eval_every: int):
    """80 steps of MT1 reach-v3 with videos at step 80 and offline W&B."""
    return config_from_dict({
        "seed": 0, "device": "cpu", "name": name,
        "env": {"benchmark": "MT1-reach-v3", "max_episode_steps": 20},
        "agent": {"hidden_dim": 16, "num_layers": 1},
        "train": {"total_steps": 80, "warmup_steps": 40, "batch_size": 16, "replay_capacity": 1000, "eval_every": eval_every,
                  "eval_episodes": 1, "log_every": 20, "progress": False, "video_every": 80,
                  "wandb": {"mode": "offline", "project": "mtrl-tests", "group": "ls"}},
        "checkpoint": {"every": 0},
    })


@pytest.fixture(scope="module")
def run_with_videos_and_wandb(tmp_path_factory):
    pytest.importorskip("wandb")
    run_dir = tmp_path_factory.mktemp("mt1_run")
    cfg = tiny_mt1_with_videos_and_wandb("tiny", eval_every=40)
    train(cfg, run_dir)
    return run_dir


def test_video_every_records_the_evaluation_videos_into_the_run(run_with_videos_and_wandb):
    run_dir = run_with_videos_and_wandb
    fmt = video_format()
    assert sorted(p.name for p in (run_dir / "videos").iterdir()) == ["step80"]  # 80 is due, 40 is not
    path = run_dir / "videos" / "step80" / f"reach-v3.{fmt}"
    assert read_frame_count(path) >= 2
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [row["video/reach-v3"] for row in rows if "video/reach-v3" in row] == [str(path)]


def test_wandb_offline_writes_its_run_files_under_the_run(run_with_videos_and_wandb):
    run_dir = run_with_videos_and_wandb
    run_id = (run_dir / "wandb_run_id").read_text().strip()
    (offline,) = (run_dir / "wandb").glob(f"offline-run-*-{run_id}")
    data = (offline / f"run-{run_id}.wandb").read_bytes()  # W&B's record log: the keys it was sent
    for key in (b"critic/loss", b"eval/mean_success", b"eval/success/reach-v3", b"video/reach-v3", b"hidden_dim"):
        assert key in data, key


def test_evaluate_video_renders_the_runs_policy(run_with_videos_and_wandb, tmp_path):
    (video,) = record_run_videos(run_with_videos_and_wandb, tmp_path / "videos", device="cpu")
    assert video.path.parent == tmp_path / "videos" and video.task == "reach-v3"
    assert read_frame_count(video.path) == video.frames
    assert video.frames == expected_frames(20, 4) or video.success == [True]


def test_sweep_groups_wandb_runs_by_method_and_names_them_by_seed():
    from pathlib import Path

    from mtrl.config import apply_overrides, load_config
    from mtrl.sweep import load_sweep

    sweep = load_sweep(Path(__file__).resolve().parents[1] / "configs" / "sweeps" / "quick.yaml")
    run = next(r for r in sweep.runs if r.label == "nashmtl" and r.seed == 1)
    cfg = load_config(sweep.base, list(run.overrides))
    assert (cfg.train.wandb.group, cfg.train.wandb.name) == ("nashmtl", "nashmtl-seed1")
    assert apply_overrides({}, ["train.wandb.group=\"123\""])["train"]["wandb"]["group"] == "123"  # labels stay strings


def test_population_members_have_their_own_wandb_runs_and_videos(tmp_path):
    """Two members trained in one process: two W&B runs, each under its own run directory with its
    own metrics, and each member's evaluation videos."""
    pytest.importorskip("wandb")
    from mtrl.train import train_population

    cfg = tiny_mt1_with_videos_and_wandb("tinypop", eval_every=80)
    train_population(cfg, [3, 4], tmp_path / "seed{seed}")
    ids = []
    for seed in (3, 4):
        run_dir = tmp_path / f"seed{seed}"
        run_id = (run_dir / "wandb_run_id").read_text().strip()
        ids.append(run_id)
        (offline,) = (run_dir / "wandb").glob(f"offline-run-*-{run_id}")
        data = (offline / f"run-{run_id}.wandb").read_bytes()
        for key in (b"critic/loss", b"eval/mean_success", b"video/reach-v3", f"tinypop-seed{seed}".encode()):
            assert key in data, (seed, key)
        assert read_frame_count(run_dir / "videos" / "step80" / f"reach-v3.{video_format()}") >= 2
    assert ids[0] != ids[1]
