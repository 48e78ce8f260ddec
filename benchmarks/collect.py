"""Collection speed, measured side by side.

Default: our loop against the raw MetaWorld vector env.
``gym.make_vec("Meta-World/<benchmark>", vector_strategy="sync")`` stepped with random actions
against ``mtrl.envs.metaworld.MultiTaskEnv.step`` plus ``MultiTaskReplay.add`` (what the training loop
does per step, minus the policy). Target: ours >= 90% of the raw step rate.

``--workers N``: env worker processes against the in-process env, for each of ``--benchmarks``
(default MT10 and MT50): ``mtrl.envs.workers.ParallelMultiTaskEnv(workers=N).step`` as the trainer
builds it (``env.local_shard``: this process steps one of the N shares, N - 1 worker processes
the rest) and with N worker processes, against ``MultiTaskEnv.step``, on the same random actions
(all give the same transitions). The ratio is the speed-up of the trainer's setting (> 1: faster);
targets on a 2-core machine with N = 2: MT10 >= 1.5, MT50 >= 1.6. It also prints the workers' start-up time and, from each task's own step time, the
compute-bound limit of the speed-up (the slowest worker's share of the tasks against all of
them) for N and for 16 workers; a real step adds the cost of talking to the workers, printed as
"overhead" (measured step time minus the slowest worker's compute).

Blocks of ``--steps`` steps alternate between the candidates; the median block is reported.
With ``--workers`` the blocks are short (20 steps, 25 pairs by default) and the speed-up is the
median of the ratios of blocks run back to back: on a shared VM the host takes CPU time away in
bursts of seconds (the same MT50 step measured 28 to 44 ms within a minute here), which long
blocks turn into noise of their own. The share of CPU time the hypervisor took during the
measurement (``steal`` in /proc/stat) is printed next to it.

    mtrl bench collect [--benchmark MT10] [--steps 200] [--repeats 5] [--json FILE]
    mtrl bench collect --workers N [--benchmarks MT10 MT50] [--start-method spawn] [--steps 20] [--repeats 25] [--json FILE]
    mtrl bench collect --task-costs [--benchmark MT50] [--steps 300] [--repeats 2]

``--task-costs`` measures every task's own step time (the tasks stepped in turn, median per
task, mean over ``--repeats`` fresh episodes) and prints it as ``envs/task_costs.py``'s table.
"""

from __future__ import annotations

import argparse
import time

import gymnasium as gym
import metaworld  # noqa: F401  (registers the Meta-World/* ids)
import numpy as np

from mtrl.benchmarks.common import print_table, write_json
from mtrl.envs.metaworld import MultiTaskEnv, task_goal_sets
from mtrl.envs.workers import START_METHODS, ParallelMultiTaskEnv, assign_tasks
from mtrl.replay import MultiTaskReplay

TARGETS = {"MT10": 1.5, "MT50": 1.6}  # workers vs in-process with N = 2 on 2 cores (issue 14)


def _raw_env(benchmark: str, seed: int):
    if benchmark.startswith("MT1-"):
        return gym.make_vec("Meta-World/MT1", env_name=benchmark[4:], num_envs=1, vector_strategy="sync", seed=seed)
    return gym.make_vec(f"Meta-World/{benchmark}", vector_strategy="sync", seed=seed)


def _rate(step, actions: np.ndarray) -> float:
    """Vector steps per second of ``step`` over ``actions`` [steps, K, A]."""
    t0 = time.perf_counter()
    for a in actions:
        step(a)
    return len(actions) / (time.perf_counter() - t0)


def raw_vs_ours(args: argparse.Namespace) -> int:
    rng = np.random.default_rng(0)
    raw = _raw_env(args.benchmark, 0)
    ours = MultiTaskEnv(args.benchmark, seed=0)
    K = ours.num_tasks
    replay = MultiTaskReplay(K, args.steps * (args.repeats + 1), ours.obs_dim, ours.action_dim)
    raw.reset(seed=0)
    obs = ours.reset()
    rates = {"raw vector env": [], "MultiTaskEnv + replay.add": []}

    def ours_step(a: np.ndarray) -> None:
        nonlocal obs
        result = ours.step(a)
        replay.add(obs, a, result.reward, result.next_obs, result.terminated)
        obs = result.obs

    for _ in range(args.repeats):
        actions = rng.uniform(-1, 1, size=(args.steps, K, ours.action_dim)).astype(np.float32)
        rates["raw vector env"].append(_rate(raw.step, actions))
        rates["MultiTaskEnv + replay.add"].append(_rate(ours_step, actions))
    raw.close()
    ours.close()
    median = {name: float(np.median(values)) for name, values in rates.items()}
    ratio = median["MultiTaskEnv + replay.add"] / median["raw vector env"]
    print(f"{args.benchmark}: K = {K}, median of {args.repeats} blocks of {args.steps} vector steps")
    print_table(["loop", "vector steps/s", "env steps/s"], [[n, r, r * K] for n, r in median.items()])
    print(f"  {'PASS' if ratio >= 0.9 else 'FAIL'}  ours >= 90% of the raw rate: {100 * ratio:.1f}%")
    write_json(args.json, {"benchmark": "collect", "env": args.benchmark, "steps_per_s": median, "ratio": ratio, "pass": ratio >= 0.9})
    return 0


def _cpu_times() -> list[int] | None:
    """The machine's cumulative CPU times (the ``cpu`` line of /proc/stat), or None off Linux."""
    try:
        with open("/proc/stat") as f:
            return [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None


def steal_share(before: list[int] | None, after: list[int] | None) -> float | None:
    """The share of CPU time taken by the hypervisor between two ``_cpu_times`` readings."""
    if before is None or after is None or len(before) < 8:
        return None
    delta = [b - a for a, b in zip(before, after)]
    total = sum(delta[:8])  # user nice system idle iowait irq softirq steal (guest time is inside user)
    return delta[7] / total if total > 0 else None


def _task_step_seconds(env: MultiTaskEnv, actions: np.ndarray) -> np.ndarray:
    """Median seconds of one MetaWorld step of each task alone, [K] (episodes are long enough)."""
    seconds = np.empty((len(actions), env.num_tasks))
    for i, a in enumerate(actions):
        for k, task_env in enumerate(env._envs):
            t0 = time.perf_counter()
            task_env.step(a[k])
            seconds[i, k] = time.perf_counter() - t0
    return np.median(seconds, axis=0)


def compute_bound_speedup(task_seconds: np.ndarray, task_names: list[str], workers: int) -> float:
    """Speed-up of ``workers`` processes (tasks assigned as ``mtrl.envs.workers.assign_tasks`` does)
    over one if talking to them cost nothing: all tasks' step time over the slowest worker's."""
    return float(task_seconds.sum() / max(task_seconds[tasks].sum() for tasks in assign_tasks(task_names, workers)))


def task_costs(args: argparse.Namespace) -> int:
    """Print each task's step time in milliseconds as the ``STEP_MS`` table of envs/task_costs.py."""
    rng = np.random.default_rng(0)
    env = MultiTaskEnv(args.benchmark, seed=0)
    runs = []
    for _ in range(args.repeats):
        env.reset()  # a fresh episode each time: MetaWorld refuses to step a task past 500 steps
        runs.append(_task_step_seconds(env, rng.uniform(-1, 1, size=(min(args.steps, 400), env.num_tasks, env.action_dim)).astype(np.float32)))
    env.close()
    ms = 1000 * np.mean(runs, axis=0)
    if args.repeats > 1:
        print(f"# correlation of the first two runs: {np.corrcoef(runs[0], runs[1])[0, 1]:.3f}")
    print("STEP_MS = {")
    for name, value in zip(env.task_names, ms):
        print(f'    "{name}": {value:.3f},')
    print("}")
    return 0


def workers_vs_inprocess(args: argparse.Namespace) -> int:
    rng = np.random.default_rng(0)
    comparisons, rows = {}, []
    for benchmark in args.benchmarks:
        task_goal_sets(benchmark, 0)  # sampled once, before anything is timed
        t0 = time.perf_counter()
        workers = ParallelMultiTaskEnv(benchmark, seed=0, workers=args.workers, start_method=args.start_method, local_shard=True)
        startup = time.perf_counter() - t0
        separate = ParallelMultiTaskEnv(benchmark, seed=0, workers=args.workers, start_method=args.start_method)
        blocking = ParallelMultiTaskEnv(benchmark, seed=0, workers=args.workers, start_method=args.start_method, local_shard=True, spin_ms=0)
        inprocess = MultiTaskEnv(benchmark, seed=0)
        K = inprocess.num_tasks
        candidates = {"in-process": inprocess, "workers": workers, "all in worker processes": separate, "no spinning": blocking}
        rates: dict[str, list[float]] = {name: [] for name in candidates}
        for env in candidates.values():
            env.reset()
        cpu_before = _cpu_times()
        for _ in range(args.repeats):  # short blocks, back to back (module docstring)
            actions = rng.uniform(-1, 1, size=(args.steps, K, inprocess.action_dim)).astype(np.float32)
            for name, env in candidates.items():
                rates[name].append(_rate(env.step, actions))
        steal = steal_share(cpu_before, _cpu_times())
        separate.close()
        blocking.close()
        inprocess.reset()  # a fresh episode: MetaWorld refuses to step a task past 500 steps
        timed = min(args.steps, 400)
        task_seconds = _task_step_seconds(inprocess, rng.uniform(-1, 1, size=(timed, K, inprocess.action_dim)).astype(np.float32))
        workers.close()
        inprocess.close()
        median = {name: float(np.median(values)) for name, values in rates.items()}
        ratios = {name: float(np.median(np.asarray(rates[name]) / np.asarray(rates["in-process"]))) for name in rates}
        ratio = ratios["workers"]
        limit = compute_bound_speedup(task_seconds, inprocess.task_names, args.workers)
        overhead_ms = 1000 * (1 / median["workers"] - task_seconds.sum() / limit)
        key = f"{benchmark.lower()}_workers_vs_inprocess"
        comparisons[key] = {
            "ratio": ratio, "ratio_all_in_worker_processes": ratios["all in worker processes"],
            "ratio_without_spinning": ratios["no spinning"], "spin_ms": 1000 * workers.spin_s, "workers": workers.workers,
            "steps_per_s": median, "startup_s": startup, "steal_share": steal,
            "compute_bound_limit": limit, "overhead_ms_per_step": overhead_ms,
            "compute_bound_limit_16_workers": compute_bound_speedup(task_seconds, inprocess.task_names, 16),
            "task_step_ms": {name: 1000 * float(s) for name, s in zip(inprocess.task_names, task_seconds)},
        }
        target = TARGETS.get(benchmark) if args.workers == 2 else None
        verdict = "" if target is None else ("PASS" if ratio >= target else "FAIL") + f" (target >= {target})"
        rows.append([benchmark, K, workers.workers, median["in-process"], median["workers"], ratio, ratios["all in worker processes"],
                     ratios["no spinning"], limit,
                     overhead_ms, comparisons[key]["compute_bound_limit_16_workers"], startup,
                     "n/a" if steal is None else f"{100 * steal:.1f}%", verdict])
    print(f"env workers vs in-process: {args.repeats} pairs of blocks of {args.steps} vector steps; "
          "speed-up = median of the pairs' ratios")
    print(f"  speed-up: the trainer's env.workers (local shard + {args.workers - 1} processes, spinning up to "
          f"{1000 * workers.spin_s:g} ms before blocking); all in processes: {args.workers} worker processes; "
          "no spinning: the trainer's setting with env.spin_ms 0")
    print_table(["benchmark", "K", "workers", "in-process steps/s", "workers steps/s", "speed-up", "all in processes", "no spinning", "limit",
                 "overhead ms", "limit at 16", "start-up s", "steal", ""], rows)
    write_json(args.json, {"benchmark": "collect", "workers": args.workers, "start_method": args.start_method, "comparisons": comparisons})
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mtrl bench collect", description=__doc__.split("\n\n")[0])
    parser.add_argument("--benchmark", default="MT10", help="raw comparison: the benchmark")
    parser.add_argument("--workers", type=int, help="compare N env worker processes with the in-process env")
    parser.add_argument("--benchmarks", nargs="+", default=["MT10", "MT50"], help="with --workers: the benchmarks")
    parser.add_argument("--start-method", default="spawn", choices=START_METHODS, help="with --workers: how workers start")
    parser.add_argument("--steps", type=int, help="vector steps per timed block (default 200; 20 with --workers)")
    parser.add_argument("--repeats", type=int, help="timed blocks per candidate (default 5; 25 with --workers)")
    parser.add_argument("--task-costs", action="store_true", help="print every task's step time (envs/task_costs.py)")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    if args.task_costs:
        args.steps = 300 if args.steps is None else args.steps
        args.repeats = 2 if args.repeats is None else args.repeats
        return task_costs(args)
    if args.steps is None:
        args.steps = 200 if args.workers is None else 20
    if args.repeats is None:
        args.repeats = 5 if args.workers is None else 25
    if args.workers is not None:
        if args.workers < 1:
            parser.error(f"--workers must be >= 1, got {args.workers}")
        return workers_vs_inprocess(args)
    return raw_vs_ours(args)


if __name__ == "__main__":
    raise SystemExit(main())
