"""Wall time of what a training step waits for, measured side by side.

``eval_parallel_vs_sequential``: one evaluation of ``train.eval_episodes`` = 10 episodes per task on
MT10 with a paper-size agent (3 x 400 networks, untrained: its episodes run their full 500 steps,
``env.eval_terminate_on_success`` on as the configs have it), played the episode-parallel way
(``train.eval_mode: parallel``, ``mtrl.evaluate.evaluate_episodes`` on up to ``env.eval_envs``
instances) against today's sequential way (``mtrl.evaluate.evaluate``: each task plays its
episodes one after another, one lock-step of the K envs at a time), both on the same env: the
trainer's ``env.workers`` = 2 (this process steps a local shard, one worker process the other).
Pairs of evaluations alternate; the ratio is the median of the pairs' ratios. Target on the
2-core machine of docs/benchmarks.md: parallel <= 0.85 x sequential. The instances the parallel
mode adds are built before the timing (the trainer builds them once per run).

It also measures, on one core, the time of an env step of each task, of a reset, and of a policy
call at N rows, and from them predicts both modes' wall time for P processes (printed for P = 2
and 16 with the arithmetic): the sequential mode steps one env per task, so its lock-step cannot
be shorter than the costliest task's step, whatever the cores; the parallel mode spreads
``env.eval_envs`` instances over the processes. The prediction adds, per lock-step, the round
trip of an empty command to the env workers measured here (10th percentile; both modes talk to
them once a lock-step) and nothing for the further workers of 16 processes; what else the
measured wall time holds (waiting for a core the machine's other jobs hold, the Python around
the steps) is printed as the measured time minus the prediction.

    python -m mtrl.benchmarks.step [--episodes 10] [--eval-envs 100] [--workers 2] [--repeats 3] [--json FILE]
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

import numpy as np
import torch

from mtrl.benchmarks.common import print_table, write_json
from mtrl.benchmarks.collect import steal_share, _cpu_times
from mtrl.config import AgentConfig
from mtrl.envs.episodes import EpisodeRunner, plan_episodes, plan_slots
from mtrl.envs.metaworld import MultiTaskEnv
from mtrl.envs.task_costs import balance
from mtrl.envs.workers import ParallelMultiTaskEnv
from mtrl.evaluate import evaluate, evaluate_episodes
from mtrl.agents.mtsac import MTSAC

TARGET = 0.85  # parallel / sequential on the 2-core machine, env workers 2


def _policy(agent: MTSAC):
    def policy(obs: np.ndarray, task_ids: np.ndarray | None = None) -> np.ndarray:
        with torch.no_grad():
            return agent.act(torch.as_tensor(obs), deterministic=True, task_ids=task_ids).numpy()

    return policy


def _per_core(env: MultiTaskEnv, agent: MTSAC, rows: list[int], steps: int) -> dict[str, Any]:
    """One-core figures: ms per env step of each task (median over ``steps`` steps of each task
    stepped alone with the agent's actions), ms per reset, ms per policy call at each N of ``rows``."""
    policy = _policy(agent)
    obs = env.reset()
    seconds = np.empty((steps, env.num_tasks))
    for i in range(steps):
        actions = policy(obs)
        for k, task_env in enumerate(env._envs):
            t0 = time.perf_counter()
            obs[k] = task_env.step(actions[k])[0]
            seconds[i, k] = time.perf_counter() - t0
    resets = []
    for _ in range(3):
        t0 = time.perf_counter()
        env.reset()
        resets.append((time.perf_counter() - t0) / env.num_tasks)
    calls = {}
    generator = np.random.default_rng(0)
    for n in rows:
        o = generator.normal(size=(n, env.obs_dim)).astype(np.float32)
        ids = np.arange(n) % env.num_tasks
        samples = []
        for _ in range(30):
            t0 = time.perf_counter()
            policy(o, ids)
            samples.append(time.perf_counter() - t0)
        calls[n] = 1000 * float(np.median(samples))
    return {
        "task_step_ms": {name: 1000 * float(s) for name, s in zip(env.task_names, np.median(seconds, axis=0))},
        "reset_ms": 1000 * float(np.median(resets)),
        "policy_ms": calls,
    }


def _round_trip_ms(env: Any, repeats: int = 200) -> float:
    """ms of an empty command to every env worker process and back, 10th percentile of
    ``repeats`` in a row: the round trip when neither side waits for a core (on a busy VM the
    median is the wake-up of a sleeping process, milliseconds); 0 in process."""
    if not isinstance(env, ParallelMultiTaskEnv):
        return 0.0
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        env.episodes([("start", [])] * len(env.pids))
        samples.append(time.perf_counter() - t0)
    return 1000 * float(np.percentile(samples, 10))


def predict(per_core: dict[str, Any], processes: int, episodes: int, steps: int, eval_envs: int, round_trip_ms: float) -> dict[str, Any]:
    """Wall time (s) of a sequential and a parallel evaluation on ``processes`` processes whose
    episodes all run ``steps`` steps, from the one-core figures and one round trip per lock-step."""
    names = list(per_core["task_step_ms"])
    c = np.array([per_core["task_step_ms"][n] for n in names])  # ms per step of each task
    K = len(c)
    reset = per_core["reset_ms"]
    policy = per_core["policy_ms"]

    def policy_ms(n: int) -> float:  # linear between the measured row counts
        xs = sorted(policy)
        return float(np.interp(n, xs, [policy[x] for x in xs]))

    # sequential: the tasks dealt to min(P, K) processes; every lock-step waits for the slowest shard
    shards = balance(list(c), min(processes, K))
    seq_round = max(c[s].sum() for s in shards) + policy_ms(K) + round_trip_ms
    seq_resets = episodes * max(len(s) for s in shards) * reset
    sequential = (episodes * steps * seq_round + seq_resets) / 1000
    # parallel: the instances dealt to the processes; each plays ceil(K E / C) episodes in a row
    tasks = [k for k in range(K) for _ in range(episodes)]
    groups = plan_slots(tasks, list(c), eval_envs, processes)
    load = max(sum(c[k] * n for k, n, _ in shard) for shard in groups)  # ms per round of the busiest process
    in_row = max(-(-len(positions) // n) for shard in groups for _, n, positions in shard)
    instances = min(eval_envs, K * episodes)
    par_round = load + policy_ms(instances) + round_trip_ms
    par_resets = in_row * max(sum(n for _, n, _ in shard) for shard in groups) * reset
    parallel = (in_row * steps * par_round + par_resets) / 1000
    return {
        "processes": processes, "sequential_s": sequential, "parallel_s": parallel, "ratio": parallel / sequential,
        "sequential_round_ms": seq_round, "sequential_rounds": episodes * steps,
        "parallel_round_ms": par_round, "parallel_rounds": in_row * steps, "parallel_instances": instances,
    }


def eval_parallel_vs_sequential(
    benchmark: str = "MT10", episodes: int = 10, steps: int = 500, eval_envs: int = 100, workers: int = 2,
    hidden: int = 400, layers: int = 3, repeats: int = 3, seed: int = 0, per_core_steps: int = 100,
) -> dict[str, Any]:
    """The comparison (module docstring) as ``{"ratio", "better", "target", "pass", ...}``; prints a table."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # both modes alike, one core's worth of policy (the per-core figures)
    try:
        return _eval_parallel_vs_sequential(benchmark, episodes, steps, eval_envs, workers, hidden, layers, repeats, seed, per_core_steps)
    finally:
        torch.set_num_threads(threads)


def _eval_parallel_vs_sequential(
    benchmark: str, episodes: int, steps: int, eval_envs: int, workers: int, hidden: int, layers: int, repeats: int, seed: int,
    per_core_steps: int,
) -> dict[str, Any]:
    options = dict(seed=seed, max_episode_steps=steps, terminate_on_success=True)
    env = ParallelMultiTaskEnv(benchmark, workers=workers, local_shard=True, **options) if workers > 1 else MultiTaskEnv(benchmark, **options)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        agent = MTSAC(env.obs_dim, env.action_dim, env.num_tasks, AgentConfig(hidden_dim=hidden, num_layers=layers))
    policy = _policy(agent)
    runner = EpisodeRunner(env, eval_envs)
    t0 = time.perf_counter()
    runner.prepare(plan_episodes(seed, 0, runner.num_goals, episodes))  # builds the instances, as a run's first evaluation does
    build_s = time.perf_counter() - t0
    times: dict[str, list[float]] = {"sequential": [], "parallel": []}
    ended_early = []
    cpu_before, load_before = _cpu_times(), os.getloadavg()[0]
    for r in range(repeats):
        t0 = time.perf_counter()
        evaluate(policy, env, episodes)
        times["sequential"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        result = evaluate_episodes(policy, runner, seed, r, episodes)
        times["parallel"].append(time.perf_counter() - t0)
        ended_early.append(float(np.mean(result.episode_success)))
    steal = steal_share(cpu_before, _cpu_times())
    round_trip = _round_trip_ms(env)
    load = (load_before, os.getloadavg()[0])  # other jobs on the machine, before and after
    ratios = [p / s for p, s in zip(times["parallel"], times["sequential"])]
    ratio = float(np.median(ratios))
    env.close()
    per_core_env = MultiTaskEnv(benchmark, seed=seed, max_episode_steps=steps)
    instances = min(eval_envs, per_core_env.num_tasks * episodes)
    per_core = _per_core(per_core_env, agent, sorted({1, per_core_env.num_tasks, instances}), min(per_core_steps, steps))
    per_core_env.close()
    predicted = {str(p): predict(per_core, p, episodes, steps, eval_envs, round_trip) for p in (workers, 16)}
    here = predicted[str(workers)]
    unexplained = {  # per lock-step: the measured time minus the prediction for this machine's processes
        mode: 1000 * (float(np.median(times[mode])) - here[f"{mode}_s"]) / here[f"{mode}_rounds"] for mode in ("sequential", "parallel")
    }
    print(f"evaluation of {episodes} episodes per task on {benchmark} ({steps}-step episodes, {hidden} x {layers} agent), "
          f"env workers {workers}; {repeats} pairs, ratio = median of the pairs' ratios; instances built in {build_s:.1f} s")
    print_table(["mode", "median s", "all s", "rounds"], [
        ["sequential (today)", float(np.median(times["sequential"])), " ".join(f"{t:.1f}" for t in times["sequential"]), episodes * steps],
        [f"parallel ({instances} instances)", float(np.median(times["parallel"])), " ".join(f"{t:.1f}" for t in times["parallel"]), here["parallel_rounds"]],
    ])
    print(f"  {'PASS' if ratio <= TARGET else 'FAIL'}  parallel / sequential = {ratio:.3f} (target <= {TARGET}); "
          f"episodes that succeeded: {100 * float(np.mean(ended_early)):.1f}%; steal {'n/a' if steal is None else f'{100 * steal:.1f}%'}; "
          f"load average {load[0]:.1f} before, {load[1]:.1f} after")
    steps_ms = per_core["task_step_ms"]
    print(f"per core: env step {np.mean(list(steps_ms.values())):.3f} ms mean over the tasks "
          f"({min(steps_ms.values()):.3f} to {max(steps_ms.values()):.3f}), reset {per_core['reset_ms']:.1f} ms, policy call "
          + ", ".join(f"{n} rows {ms:.3f} ms" for n, ms in per_core["policy_ms"].items()))
    print(f"round trip to the env workers {round_trip:.3f} ms; measured minus predicted, per lock-step: "
          f"sequential {unexplained['sequential']:.3f} ms, parallel {unexplained['parallel']:.3f} ms")
    print_table(["processes", "sequential round ms", "x rounds", "= sequential s", "parallel round ms", "x rounds", "= parallel s", "ratio"], [
        [p["processes"], p["sequential_round_ms"], p["sequential_rounds"], p["sequential_s"], p["parallel_round_ms"],
         p["parallel_rounds"], p["parallel_s"], p["ratio"]] for p in predicted.values()
    ])
    return {
        "ratio": ratio, "better": "lower", "target": TARGET, "pass": ratio <= TARGET,
        "seconds": times, "ratios": ratios, "instances": instances, "build_s": build_s, "success_share": float(np.mean(ended_early)),
        "steal_share": steal, "load_average": load, "per_core": per_core, "round_trip_ms": round_trip, "unexplained_ms_per_round": unexplained, "predicted": predicted,
        "settings": {"benchmark": benchmark, "episodes": episodes, "steps": steps, "eval_envs": eval_envs, "workers": workers,
                     "hidden": hidden, "layers": layers, "threads": 1},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mtrl.benchmarks.step", description=__doc__.split("\n\n")[0])
    parser.add_argument("--benchmark", default="MT10")
    parser.add_argument("--episodes", type=int, default=10, help="episodes per task")
    parser.add_argument("--steps", type=int, default=500, help="episode length (env.max_episode_steps)")
    parser.add_argument("--eval-envs", type=int, default=100, help="env.eval_envs of the parallel mode")
    parser.add_argument("--workers", type=int, default=2, help="env.workers of both modes")
    parser.add_argument("--hidden", type=int, default=400)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3, help="pairs of evaluations")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    comparison = eval_parallel_vs_sequential(
        args.benchmark, args.episodes, args.steps, args.eval_envs, args.workers, args.hidden, args.layers, args.repeats,
    )
    write_json(args.json, {"benchmark": "step", "comparisons": {"eval_parallel_vs_sequential": comparison}})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
