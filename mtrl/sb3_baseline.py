"""Stable-Baselines3 SAC on one MetaWorld task: a cross-check of our single-task (STL) SAC.

    python -m mtrl.sb3_baseline --task reach-v3 --seed 0 --run-dir runs/sb3/reach-v3/seed0
    mtrl report runs/stl runs/sb3          # SB3's curve next to ours, label "sb3_sac"

The environment is the same ``MT1-<task>`` environment ``mtrl train`` uses (goals resampled from
the task's 50 variations on each reset, ``max_episode_steps`` steps per episode, truncation not
termination), wrapped as a plain gymnasium env. SAC uses the settings of our agent (docs/design.md §4):
3 x 400 ReLU networks, Adam 3e-4, batch 128, gamma 0.99, tau 0.005, automatic temperature from
1.0 with target entropy -|A|, 1500 random warm-up steps, one gradient step per env step.
Every ``eval_every`` steps the deterministic policy is evaluated with ``mtrl.evaluate`` on a
separately seeded env (success = any step reported success), and a row is appended to
``eval.csv`` in the format ``mtrl train`` writes, so ``mtrl report`` reads it like any run.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import yaml

from mtrl.envs.metaworld import MultiTaskEnv, benchmark_task_names
from mtrl.evaluate import evaluate
from mtrl.metrics import MetricsLogger, write_status

__all__ = ["SingleTaskGym", "main", "train_sb3"]


class SingleTaskGym(gym.Env):
    """One task of a ``MultiTaskEnv`` (K = 1) as a gymnasium env without auto-reset.

    Our env resets a finished episode inside ``step``; the returned step carries the episode's
    final observation and the reset observation is handed out by the next ``reset()``."""

    def __init__(self, env: MultiTaskEnv) -> None:
        if env.num_tasks != 1:
            raise ValueError(f"SingleTaskGym wraps a one-task env, got {env.num_tasks} tasks")
        self.env = env
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (env.obs_dim,), np.float32)
        self.action_space = gym.spaces.Box(env.action_low, env.action_high, dtype=np.float32)
        self._next_obs: np.ndarray | None = None

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        obs = self._next_obs if self._next_obs is not None else self.env.reset()[0]
        self._next_obs = None
        return obs.copy(), {}

    def step(self, action):
        result = self.env.step(np.asarray(action, dtype=np.float32)[None])
        if result.episode_done[0]:
            self._next_obs = result.obs[0]
        info = {"success": float(result.success[0])}
        return result.next_obs[0].copy(), float(result.reward[0]), bool(result.terminated[0]), bool(result.truncated[0]), info


def train_sb3(
    task: str, seed: int, run_dir: Path, total_steps: int, eval_every: int = 10_000, eval_episodes: int = 10,
    max_episode_steps: int = 500, warmup_steps: int = 1500, batch_size: int = 128, hidden_dim: int = 400,
    num_layers: int = 3, device: str = "auto",
) -> list[float]:
    """Train SB3 SAC on ``MT1-<task>``; returns the success rate of every evaluation."""
    from stable_baselines3 import SAC
    from stable_baselines3.common.callbacks import BaseCallback

    benchmark = f"MT1-{task}"
    benchmark_task_names(benchmark)  # a clear error for an unknown task
    run_dir = Path(run_dir)
    if (run_dir / "eval.csv").exists():
        raise ValueError(f"{run_dir} already holds a run; choose another --run-dir")
    run_dir.mkdir(parents=True, exist_ok=True)
    config = {
        "label": "sb3_sac", "seed": seed,
        "env": {"benchmark": benchmark, "max_episode_steps": max_episode_steps},
        "train": {"total_steps": total_steps, "eval_every": eval_every, "eval_episodes": eval_episodes,
                  "warmup_steps": warmup_steps, "batch_size": batch_size},
        "agent": {"hidden_dim": hidden_dim, "num_layers": num_layers},
    }
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    train_env = SingleTaskGym(MultiTaskEnv(benchmark, seed=seed, max_episode_steps=max_episode_steps))
    eval_env = MultiTaskEnv(  # the training goals, drawn in another order (env.eval_goals: train)
        benchmark, seed=seed + 10_000, goal_seed=seed, max_episode_steps=max_episode_steps, terminate_on_success=True,
    )
    logger = MetricsLogger(run_dir, [task])
    model = SAC(
        "MlpPolicy", train_env, learning_rate=3e-4, buffer_size=max(total_steps, 1), learning_starts=warmup_steps,
        batch_size=batch_size, tau=0.005, gamma=0.99, train_freq=1, gradient_steps=1, ent_coef="auto_1.0",
        target_entropy=-float(train_env.action_space.shape[0]), policy_kwargs={"net_arch": [hidden_dim] * num_layers},
        seed=seed, device=device, verbose=0,
    )
    rates: list[float] = []
    start = time.perf_counter()

    def run_eval(step: int) -> None:
        result = evaluate(lambda obs: model.predict(obs, deterministic=True)[0], eval_env, eval_episodes)
        rate = float(result.success_rate[0])
        rates.append(rate)
        logger.log_eval(step, [rate])
        logger.log(step, {"eval/mean_success": rate, "eval/mean_return": float(result.mean_return[0]),
                          "time/elapsed_s": time.perf_counter() - start})
        write_status(run_dir, "running", step, total_steps)

    class EvalCallback(BaseCallback):
        def _on_step(self) -> bool:
            if self.num_timesteps % eval_every == 0:
                run_eval(self.num_timesteps)
            return True

    write_status(run_dir, "running", 0, total_steps)
    try:
        model.learn(total_timesteps=total_steps, callback=EvalCallback())
        if total_steps % eval_every:
            run_eval(total_steps)
    except BaseException:
        write_status(run_dir, "failed", model.num_timesteps, total_steps)
        raise
    finally:
        logger.close()
        train_env.env.close()
        eval_env.close()
    write_status(run_dir, "finished", total_steps, total_steps, last_success=rates[-1] if rates else None)
    return rates


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mtrl.sb3_baseline", description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", required=True, help="a MetaWorld v3 task name, e.g. reach-v3")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--steps", type=int, default=2_000_000)
    parser.add_argument("--eval-every", type=int, default=10_000)
    parser.add_argument("--eval-episodes", type=int, default=10)
    parser.add_argument("--max-episode-steps", type=int, default=500)
    parser.add_argument("--warmup-steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--hidden-dim", type=int, default=400)
    parser.add_argument("--num-layers", type=int, default=3)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    rates = train_sb3(
        args.task, args.seed, Path(args.run_dir), args.steps, args.eval_every, args.eval_episodes, args.max_episode_steps,
        args.warmup_steps, args.batch_size, args.hidden_dim, args.num_layers, args.device,
    )
    print(f"done: {len(rates)} evaluations, last success {rates[-1] if rates else float('nan'):.3f}; outputs in {args.run_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
