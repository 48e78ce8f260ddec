"""Evaluations and videos of a saved run (``mtrl evaluate RUN_DIR --protocol metaworld | --video DIR``).

Both load the run's newest valid checkpoint and play its deterministic policy on MetaWorld's own
vector env for the run's benchmark, seed (so its training goal set) and episode length.
``--protocol mtrl`` (the default) is ``mtrl.train.evaluate_run``, the trainer's own evaluation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mtrl.envs.metaworld import benchmark_task_names
from mtrl.envs.synthetic import is_point_benchmark
from mtrl import checkpoint as ckpt
from mtrl.config import Config, ConfigError, config_from_dict
from mtrl.evaluate import MetaWorldResult, evaluate_metaworld, make_metaworld_envs, metaworld_obs_dim
from mtrl.train import checkpoint_policy
from mtrl.video import TaskVideo, VideoRecorder

__all__ = ["evaluate_run_metaworld", "record_run_videos"]


def _metaworld_run(run_dir: Path) -> tuple[dict[str, Any], Path, Config]:
    state, path = ckpt.load_latest(run_dir)
    cfg = config_from_dict(state["config"])
    if is_point_benchmark(cfg.env.benchmark):
        raise ConfigError(f"{run_dir} trained on {cfg.env.benchmark}, not a MetaWorld benchmark (MT10, MT50, MT1-<task>)")
    return state, path, cfg


def evaluate_run_metaworld(run_dir: Path, episodes: int = 50, device: str = "auto") -> MetaWorldResult:
    """Evaluate the newest valid checkpoint of ``run_dir`` with MetaWorld's own ``evaluation`` on
    MetaWorld's vector env of the run's benchmark, seed (its goal set) and episode length; print
    per-task success."""
    state, path, cfg = _metaworld_run(run_dir)
    envs = make_metaworld_envs(cfg.env.benchmark, cfg.seed, cfg.env.max_episode_steps)
    try:
        obs_dim = metaworld_obs_dim(envs, cfg.env.benchmark)
        task_names = benchmark_task_names(cfg.env.benchmark)
        policy = checkpoint_policy(state, obs_dim, int(envs.single_action_space.shape[0]), len(task_names), device)
        result = evaluate_metaworld(policy, envs, task_names, obs_dim, episodes)
    finally:
        envs.close()
    print(f"{path} (step {state['step']}), MetaWorld's evaluation, {episodes} episode(s) per task")
    for name, rate in zip(result.task_names, result.success_rate):
        print(f"  {name:32s} {rate:.3f}")
    print(f"  {'mean':32s} {result.mean_success:.3f}  (mean return {result.mean_return:.1f})")
    return result


def record_run_videos(run_dir: Path, out_dir: Path, episodes: int = 1, device: str = "auto") -> list[TaskVideo]:
    """Render ``episodes`` deterministic episodes per task of the newest valid checkpoint of
    ``run_dir`` into ``out_dir/<task>.mp4`` (or .gif); print what each scored."""
    state, path, cfg = _metaworld_run(run_dir)
    task_names = benchmark_task_names(cfg.env.benchmark)
    recorder = VideoRecorder.for_config(cfg, task_names)
    try:
        policy = checkpoint_policy(state, recorder.obs_dim, recorder.action_dim, len(task_names), device)
        videos = recorder.record(policy, Path(out_dir), episodes)
    finally:
        recorder.close()
    print(f"{path} (step {state['step']}), {episodes} episode(s) per task")
    for video in videos:
        scores = ", ".join(f"{'success' if s else 'failure'} (return {r:.0f})" for s, r in zip(video.success, video.returns))
        print(f"  {str(video.path):48s} {video.frames:4d} frames  {scores}")
    return videos
