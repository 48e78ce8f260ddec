"""Wall time of what a training step waits for, measured side by side: collection overlapped with
the update (``env.overlap``) against the serial loop, and episode-parallel evaluation against the
sequential one. ``--json F`` holds every comparison of both.

**Overlap vs serial** (``overlap_vs_serial``). One training step as the trainer runs it, on
MetaWorld envs in ``--workers`` shards: the policy's action (an ``MTSAC`` actor of ``--hidden``
units on the CPU), the env step, ``replay.add``, and an update. Serial (today's loop and defaults:
``train.replay_delay: 0``, the local shard stepped by this process, N - 1 worker processes): act,
step, add, update. Overlapped (``env.overlap``, as the trainer builds it: every shard in a worker
process): act, ``step_async``, update, ``step_wait``, add.

The update is a GPU-bound update emulated on the CPU: its launch returns at once and the host
waits for its completion at t0 + U (``--update-ms U``; the host sleeps, leaving its core to the
env worker, as a host would while a GPU computes; the action of the next step waits for it, as
``agent.act(...).cpu()`` waits for the device). Next to it, the real LS update of quick networks
(``--real-hidden``, 32 transitions per task) on this CPU, which competes with the envs for the
cores. A third candidate overlaps with the local shard kept (stepped by this process in
``step_wait``, after the launch: with the emulated update while the "device" works, with the
real one after it): where the local shard is better stepped.

Blocks of ``--steps`` training steps alternate between the candidates (``--repeats`` rounds);
a ratio is the median over rounds of overlapped / serial seconds per step. Beside each, the
ideal ratio from the measured parts of a serial step (act a, env step e, add o):
``(a + max(U, e) + o) / (a + e + o + U)``. Target: MT10 at U = 3 ms <= 0.7 on a 2-core machine;
every other ratio <= 1 (overlap is never slower). The share of CPU time the hypervisor took
(``steal``) is printed too.

**Evaluation: parallel vs sequential** (``eval_parallel_vs_sequential``, comparison
``eval_parallel_vs_sequential``; ``--skip-eval`` leaves it out). One evaluation of
``train.eval_episodes`` = 10 episodes per task on MT10 with a paper-size agent (3 x 400
networks, untrained: its episodes run their full 500 steps,
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

**Training steps lost to an asynchronous evaluation** (``eval_async_steps_lost``, with
``--eval-async`` only). A quick training loop on ``--async-benchmark`` (MT10: its env in this
process, an LS update of ``--real-hidden`` x 2 networks on 32 transitions per task, one step =
act, env step, add, update) runs beside an ``mtrl.evaluator.EvaluationProcess`` (``train.eval_async``,
the same torch thread count, its own env). Each round submits an evaluation of the current actor
(``--async-episodes`` episodes per task of ``--async-steps`` steps) and trains until its result is
back, then trains as many steps with nothing pending. Steps lost = 1 - (steps/s while the
evaluation runs) / (steps/s without), the median over ``--async-repeats`` rounds; beside it the
seconds an in-process evaluation of the same actor blocks the loop (what ``eval_async: false``
costs per evaluation). Target <= 0.10 on a machine with a core free for the evaluation process;
on a 2-core machine the trainer and the evaluation process compete for the cores.

    mtrl bench step [--benchmarks MT10 MT50] [--update-ms 1 3 10] [--workers 2] [--steps 20]
                    [--repeats 15] [--skip-overlap] [--skip-eval] [--eval-benchmark MT10]
                    [--eval-episodes 10] [--eval-steps 500] [--eval-envs 100] [--eval-layers 3]
                    [--eval-repeats 3] [--eval-async] [--async-benchmark MT10] [--async-steps 150]
                    [--async-episodes 3] [--async-repeats 3] [--json FILE]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any, Callable

import numpy as np
import torch

from mtrl.agents.mtsac import MTSAC
from mtrl.aggregators import make
from mtrl.benchmarks.collect import _cpu_times, steal_share
from mtrl.benchmarks.common import print_table, write_json
from mtrl.config import AgentConfig
from mtrl.envs.episodes import EpisodeRunner, plan_episodes, plan_slots
from mtrl.envs.metaworld import MultiTaskEnv, task_goal_sets
from mtrl.envs.task_costs import balance
from mtrl.envs.workers import ParallelMultiTaskEnv
from mtrl.evaluate import evaluate, evaluate_episodes
from mtrl.replay import MultiTaskReplay

OVERLAP_TARGETS = {("MT10", 3.0): 0.7}  # issue 23, on a 2-core machine; every other ratio: <= 1.0
EVAL_TARGET = 0.85  # parallel / sequential on the 2-core machine, env workers 2
ASYNC_TARGET = 0.10  # steps lost during an asynchronous evaluation, on a machine with a free core


class EmulatedUpdate:
    """An update of fixed duration: ``launch`` returns at once, ``wait`` sleeps until t0 + U."""

    def __init__(self, ms: float) -> None:
        self.seconds = ms / 1000
        self._done_at = 0.0

    def launch(self) -> None:
        self._done_at = time.perf_counter() + self.seconds

    def wait(self) -> None:
        remaining = self._done_at - time.perf_counter()
        if remaining > 0:
            time.sleep(remaining)


class RealUpdate:
    """The LS update of ``agent`` on batches from ``replay``, run by ``launch`` on this CPU."""

    def __init__(self, agent: MTSAC, replay: MultiTaskReplay, batch_per_task: int) -> None:
        self.agent, self.replay, self.batch_per_task = agent, replay, batch_per_task
        K = replay.num_tasks
        self.critic, self.actor = make("ls", K), make("ls", K)
        self.generators = torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)
        self.step = 0

    def launch(self) -> None:
        batch = self.replay.sample(self.batch_per_task)
        self.agent.update(batch, self.step, self.critic, self.actor, generator=self.generators[0], aggregator_generator=self.generators[1])
        self.step += 1

    def wait(self) -> None:
        pass


class _Loop:
    """Training steps on one env: the policy, the replay and the latest observations."""

    def __init__(self, env: ParallelMultiTaskEnv, agent: MTSAC, replay: MultiTaskReplay) -> None:
        self.env, self.agent, self.replay = env, agent, replay
        self.generator = torch.Generator().manual_seed(0)
        self.obs = env.reset()
        self.parts = {"act": [], "env": [], "other": []}  # serial steps' parts, seconds

    def act(self) -> np.ndarray:
        with torch.no_grad():
            return self.agent.act(torch.as_tensor(self.obs), deterministic=False, generator=self.generator).cpu().numpy()

    def store(self, action: np.ndarray, result) -> None:
        self.replay.add(self.obs, action, result.reward, result.next_obs, result.terminated)
        self.obs = result.obs

    def serial(self, update, steps: int) -> float:
        """Seconds per step of today's loop: act, step, add, update."""
        start = time.perf_counter()
        for _ in range(steps):
            update.wait()  # the action reads the previous update's parameters
            t0 = time.perf_counter()
            action = self.act()
            t1 = time.perf_counter()
            result = self.env.step(action)
            t2 = time.perf_counter()
            self.store(action, result)
            t3 = time.perf_counter()
            update.launch()
            self.parts["act"].append(t1 - t0)
            self.parts["env"].append(t2 - t1)
            self.parts["other"].append(t3 - t2)
        update.wait()
        return (time.perf_counter() - start) / steps

    def overlapped(self, update, steps: int) -> float:
        """Seconds per step of ``env.overlap``: act, step_async, update, step_wait, add."""
        start = time.perf_counter()
        for _ in range(steps):
            update.wait()
            action = self.act()
            self.env.step_async(action)
            update.launch()
            self.store(action, self.env.step_wait())
        update.wait()
        return (time.perf_counter() - start) / steps

    def reset_parts(self) -> None:
        self.parts = {name: [] for name in self.parts}


def _agent(K: int, obs_dim: int, action_dim: int, hidden: int, layers: int) -> MTSAC:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return MTSAC(obs_dim, action_dim, K, AgentConfig(hidden_dim=hidden, num_layers=layers))


def _rounds(candidates: dict[str, Callable[[], float]], repeats: int) -> dict[str, list[float]]:
    """Seconds per step of every candidate, one block each per round, the candidates in turn."""
    for run in candidates.values():  # warm-up: spin budgets, allocator, caches
        run()
    seconds: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, run in candidates.items():
            seconds[name].append(run())
    return seconds


def _median_ratio(seconds: dict[str, list[float]], name: str, reference: str) -> float:
    return float(np.median(np.asarray(seconds[name]) / np.asarray(seconds[reference])))


def overlap_vs_serial(args: argparse.Namespace) -> tuple[dict, bool]:
    """The comparisons ``{NAME: {"ratio", "better", "target", "pass", ...}}`` and whether every
    target was met (module docstring)."""
    comparisons: dict = {}
    rows = []
    all_pass = True
    for benchmark in args.benchmarks:
        task_goal_sets(benchmark, 0)  # sampled once, before anything is timed
        local = ParallelMultiTaskEnv(benchmark, seed=0, workers=args.workers, local_shard=True)
        processes = ParallelMultiTaskEnv(benchmark, seed=0, workers=args.workers, local_shard=False)
        K, obs_dim, action_dim = local.num_tasks, local.obs_dim, local.action_dim
        paper = _agent(K, obs_dim, action_dim, args.hidden, 3)
        quick = _agent(K, obs_dim, action_dim, args.real_hidden, 2)
        replays = {name: MultiTaskReplay(K, 2000, obs_dim, action_dim) for name in ("local", "processes")}
        cpu_before = _cpu_times()
        settings = [(f"u{ms:g}", EmulatedUpdate(ms), paper, ms) for ms in args.update_ms]
        settings.append(("real", None, quick, None))
        for label, update, agent, ms in settings:
            loops = {name: _Loop(env, agent, replays[name]) for name, env in (("local", local), ("processes", processes))}
            if update is None:  # the real update samples from each loop's replay: fill it first
                for loop in loops.values():
                    loop.serial(EmulatedUpdate(0), 40)
                updates = {name: RealUpdate(agent, loop.replay, 32) for name, loop in loops.items()}
            else:
                updates = {name: update for name in loops}
            candidates = {
                "serial": lambda: loops["local"].serial(updates["local"], args.steps),
                "overlap": lambda: loops["processes"].overlapped(updates["processes"], args.steps),
                "overlap, local shard": lambda: loops["local"].overlapped(updates["local"], args.steps),
            }
            loops["local"].reset_parts()
            seconds = _rounds(candidates, args.repeats)
            parts = {name: 1000 * statistics.median(values) for name, values in loops["local"].parts.items()}
            ratio = _median_ratio(seconds, "overlap", "serial")
            ratio_local = _median_ratio(seconds, "overlap, local shard", "serial")
            serial_ms = 1000 * statistics.median(seconds["serial"])
            if ms is None:  # the real update's time: the serial step less its collection parts
                u = max(0.0, serial_ms - sum(parts.values()))
            else:
                u = ms
            ideal = (parts["act"] + max(u, parts["env"]) + parts["other"]) / (parts["act"] + parts["env"] + parts["other"] + u)
            target = OVERLAP_TARGETS.get((benchmark, ms), 1.0)
            passed = bool(ratio <= target)
            all_pass &= passed
            key = f"{benchmark.lower()}_overlap_vs_serial_{label}"
            comparisons[key] = {
                "ratio": ratio, "better": "lower", "target": target, "pass": passed, "ideal_ratio": ideal,
                "ratio_local_shard": ratio_local,
                "update": "real LS update on this CPU" if ms is None else "emulated",
                "update_ms": u, "act_ms": parts["act"], "env_ms": parts["env"], "other_ms": parts["other"],
                "serial_step_ms": serial_ms, "overlap_step_ms": 1000 * statistics.median(seconds["overlap"]),
                "overlap_local_shard_step_ms": 1000 * statistics.median(seconds["overlap, local shard"]),
                "workers": local.workers, "policy_hidden": args.hidden if ms is not None else args.real_hidden,
            }
            rows.append([benchmark, label, u, parts["act"], parts["env"], parts["other"], serial_ms,
                         comparisons[key]["overlap_step_ms"], ratio, ideal, ratio_local,
                         f"{'PASS' if passed else 'FAIL'} (<= {target:g})"])
            print(f"  {key}: {ratio:.3f} (ideal {ideal:.3f}, with the local shard {ratio_local:.3f})", flush=True)
        steal = steal_share(cpu_before, _cpu_times())
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        for key in comparisons:
            if key.startswith(benchmark.lower() + "_"):
                comparisons[key]["steal_share"] = steal
                comparisons[key]["load_average_1min"] = load
        print(f"{benchmark}: steal {'n/a' if steal is None else f'{100 * steal:.1f}%'} during its measurement, "
              f"load average {'n/a' if load is None else f'{load:.1f}'} at its end (other processes share the cores)")
        local.close()
        processes.close()
    print(f"overlap vs serial: {args.repeats} rounds of blocks of {args.steps} training steps; ratio = median of the rounds' "
          f"overlapped / serial seconds per step; {args.workers} env shards: serial local shard + {args.workers - 1} worker "
          f"processes, overlapped {args.workers} worker processes (local shard: as serial); "
          "ideal = (act + max(U, env) + add) / (act + env + add + U), from the serial step's parts")
    print_table(["benchmark", "update", "U ms", "act ms", "env ms", "add ms", "serial ms", "overlap ms", "ratio", "ideal",
                 "local shard", ""], rows)
    return comparisons, all_pass


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
    print(f"  {'PASS' if ratio <= EVAL_TARGET else 'FAIL'}  parallel / sequential = {ratio:.3f} (target <= {EVAL_TARGET}); "
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
        "ratio": ratio, "better": "lower", "target": EVAL_TARGET, "pass": ratio <= EVAL_TARGET,
        "seconds": times, "ratios": ratios, "instances": instances, "build_s": build_s, "success_share": float(np.mean(ended_early)),
        "steal_share": steal, "load_average": load, "per_core": per_core, "round_trip_ms": round_trip, "unexplained_ms_per_round": unexplained, "predicted": predicted,
        "settings": {"benchmark": benchmark, "episodes": episodes, "steps": steps, "eval_envs": eval_envs, "workers": workers,
                     "hidden": hidden, "layers": layers, "threads": 1},
    }


def eval_async_steps_lost(
    benchmark: str = "MT10", hidden: int = 64, episodes: int = 3, steps: int = 150, eval_envs: int = 100, repeats: int = 3,
    seed: int = 0,
) -> dict[str, Any]:
    """Steps lost to an asynchronous evaluation (module docstring) as ``{"ratio", "better", "target", "pass", ...}``."""
    from mtrl.config import config_from_dict
    from mtrl.evaluator import EvaluationProcess, actor_state

    cfg = config_from_dict({
        "name": "bench-async", "seed": seed, "device": "cpu",
        "env": {"benchmark": benchmark, "max_episode_steps": steps, "eval_envs": eval_envs},
        "agent": {"hidden_dim": hidden, "num_layers": 2},
        "train": {"eval_episodes": episodes, "eval_async": True, "batch_size": 32 * 10, "progress": False},
    })
    env = MultiTaskEnv(benchmark, seed=seed, max_episode_steps=steps)
    agent = _agent(env.num_tasks, env.obs_dim, env.action_dim, hidden, 2)
    replay = MultiTaskReplay(env.num_tasks, 1000, env.obs_dim, env.action_dim, torch.device("cpu"), seed=seed)
    loop, update = _Loop(env, agent, replay), RealUpdate(agent, replay, 32)
    for _ in range(64):  # a replay to sample from
        action = loop.act()
        loop.store(action, env.step(action))
    process = EvaluationProcess([cfg], "cpu")
    try:
        t0 = time.perf_counter()
        process.submit(0, [actor_state(agent)])
        process.wait()  # started, its instances built (as after a run's first evaluation)
        start_s = time.perf_counter() - t0
        eval_env = MultiTaskEnv(benchmark, seed=seed + 10_000, max_episode_steps=steps, terminate_on_success=True)
        runner = EpisodeRunner(eval_env, eval_envs)
        runner.prepare(plan_episodes(seed, 0, runner.num_goals, episodes))
        rates: dict[str, list[float]] = {"during": [], "without": []}
        eval_s, in_process_s = [], []
        for r in range(1, repeats + 1):
            process.submit(r, [actor_state(agent)])
            t0, n = time.perf_counter(), 0
            while not process.poll():
                loop.serial(update, 1)
                n += 1
            during = time.perf_counter() - t0
            eval_s.append(during)
            rates["during"].append(n / during)
            t0 = time.perf_counter()
            loop.serial(update, n)
            rates["without"].append(n / (time.perf_counter() - t0))
            t0 = time.perf_counter()
            evaluate_episodes(_policy(agent), runner, seed, r, episodes)
            in_process_s.append(time.perf_counter() - t0)
        eval_env.close()
    finally:
        process.close()
        env.close()
    lost = [1.0 - d / w for d, w in zip(rates["during"], rates["without"])]
    ratio = float(np.median(lost))
    print(f"asynchronous evaluation on {benchmark}: {episodes} episodes per task of {steps} steps, {hidden} x 2 agent, "
          f"torch threads {torch.get_num_threads()}, {os.cpu_count()} cores; evaluation process started in {start_s:.1f} s")
    print_table(["round", "evaluation s", "steps/s during", "steps/s without", "lost", "in-process evaluation s"], [
        [r + 1, eval_s[r], rates["during"][r], rates["without"][r], lost[r], in_process_s[r]] for r in range(repeats)
    ])
    print(f"  {'PASS' if ratio <= ASYNC_TARGET else 'FAIL'}  training steps lost during an asynchronous evaluation = {ratio:.3f} "
          f"(target <= {ASYNC_TARGET} with a free core); an in-process evaluation stops training for "
          f"{float(np.median(in_process_s)):.2f} s ({float(np.median(in_process_s) * np.median(rates['without'])):.0f} steps)")
    return {
        "ratio": ratio, "better": "lower", "target": ASYNC_TARGET, "pass": ratio <= ASYNC_TARGET, "lost": lost,
        "steps_per_s": rates, "evaluation_s": eval_s, "in_process_evaluation_s": in_process_s, "start_s": start_s,
        "settings": {"benchmark": benchmark, "episodes": episodes, "steps": steps, "eval_envs": eval_envs, "hidden": hidden,
                     "layers": 2, "threads": torch.get_num_threads(), "cores": os.cpu_count()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mtrl bench step", description=__doc__.split("\n\n")[0])
    parser.add_argument("--benchmarks", nargs="+", default=["MT10", "MT50"], help="benchmarks of the overlap comparisons")
    parser.add_argument("--update-ms", type=float, nargs="+", default=[1.0, 3.0, 10.0], help="durations U of the emulated update")
    parser.add_argument("--workers", type=int, default=2, help="env shards (env.workers), of both parts")
    parser.add_argument("--hidden", type=int, default=400, help="the policy's width with the emulated update and in the evaluation")
    parser.add_argument("--real-hidden", type=int, default=64, help="the width of the real update's networks (2 layers)")
    parser.add_argument("--steps", type=int, default=20, help="training steps per timed block")
    parser.add_argument("--repeats", type=int, default=15, help="rounds of blocks")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of this process (the policy, the real update)")
    parser.add_argument("--skip-overlap", action="store_true", help="leave out the overlap comparisons")
    parser.add_argument("--skip-eval", action="store_true", help="leave out the evaluation comparison (minutes on MT10)")
    parser.add_argument("--eval-benchmark", default="MT10", help="benchmark of the evaluation comparison")
    parser.add_argument("--eval-episodes", type=int, default=10, help="evaluation episodes per task")
    parser.add_argument("--eval-steps", type=int, default=500, help="evaluation episode length (env.max_episode_steps)")
    parser.add_argument("--eval-envs", type=int, default=100, help="env.eval_envs of the parallel mode")
    parser.add_argument("--eval-layers", type=int, default=3, help="layers of the evaluated agent (width --hidden)")
    parser.add_argument("--eval-repeats", type=int, default=3, help="pairs of evaluations")
    parser.add_argument("--eval-async", action="store_true", help="also measure the training steps lost during an asynchronous evaluation")
    parser.add_argument("--async-benchmark", default="MT10", help="benchmark of the asynchronous evaluation measurement")
    parser.add_argument("--async-steps", type=int, default=150, help="its evaluation episodes' length")
    parser.add_argument("--async-episodes", type=int, default=3, help="its evaluation episodes per task")
    parser.add_argument("--async-repeats", type=int, default=3, help="its rounds (one evaluation each)")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error(f"--workers must be >= 1, got {args.workers}")
    if args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    comparisons: dict = {}
    all_pass = True
    if not args.skip_overlap:
        comparisons, all_pass = overlap_vs_serial(args)
    if not args.skip_eval:
        comparison = eval_parallel_vs_sequential(
            args.eval_benchmark, args.eval_episodes, args.eval_steps, args.eval_envs, args.workers, args.hidden,
            args.eval_layers, args.eval_repeats,
        )
        comparisons["eval_parallel_vs_sequential"] = comparison
        all_pass &= bool(comparison["pass"])
    if args.eval_async:
        comparison = eval_async_steps_lost(
            args.async_benchmark, args.real_hidden, args.async_episodes, args.async_steps, args.eval_envs, args.async_repeats,
        )
        comparisons["eval_async_steps_lost"] = comparison
        all_pass &= bool(comparison["pass"])
    write_json(args.json, {"benchmark": "step", "comparisons": comparisons})
    return 0 if all_pass else 1


if __name__ == "__main__":
    raise SystemExit(main())
