"""Collection loop against the raw MetaWorld vector env, measured side by side.

Raw: ``gym.make_vec("Meta-World/<benchmark>", vector_strategy="sync")`` stepped with random
actions. Ours: ``envs.metaworld.MultiTaskEnv.step`` plus ``MultiTaskReplay.add`` (what the
training loop does per step, minus the policy). Blocks of ``--steps`` steps alternate between
the two. Target: ours >= 90% of the raw step rate.

    mtrl bench collect [--benchmark MT10] [--steps 200] [--repeats 5] [--json FILE]
"""

from __future__ import annotations

import argparse
import time

import gymnasium as gym
import metaworld  # noqa: F401  (registers the Meta-World/* ids)
import numpy as np

from benchmarks.common import print_table, write_json
from envs.metaworld import MultiTaskEnv
from mtrl.replay import MultiTaskReplay


def _raw_env(benchmark: str, seed: int):
    if benchmark.startswith("MT1-"):
        return gym.make_vec("Meta-World/MT1", env_name=benchmark[4:], num_envs=1, vector_strategy="sync", seed=seed)
    return gym.make_vec(f"Meta-World/{benchmark}", vector_strategy="sync", seed=seed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mtrl bench collect", description=__doc__.split("\n\n")[0])
    parser.add_argument("--benchmark", default="MT10")
    parser.add_argument("--steps", type=int, default=200, help="vector steps per timed block")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    raw = _raw_env(args.benchmark, 0)
    ours = MultiTaskEnv(args.benchmark, seed=0)
    K = ours.num_tasks
    replay = MultiTaskReplay(K, args.steps * (args.repeats + 1), ours.obs_dim, ours.action_dim)
    raw.reset(seed=0)
    obs = ours.reset()
    rates = {"raw vector env": [], "MultiTaskEnv + replay.add": []}
    for _ in range(args.repeats):
        actions = rng.uniform(-1, 1, size=(args.steps, K, ours.action_dim)).astype(np.float32)
        t0 = time.perf_counter()
        for a in actions:
            raw.step(a)
        rates["raw vector env"].append(args.steps / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        for a in actions:
            result = ours.step(a)
            replay.add(obs, a, result.reward, result.next_obs, result.terminated)
            obs = result.obs
        rates["MultiTaskEnv + replay.add"].append(args.steps / (time.perf_counter() - t0))
    raw.close()
    ours.close()
    median = {name: float(np.median(values)) for name, values in rates.items()}
    ratio = median["MultiTaskEnv + replay.add"] / median["raw vector env"]
    print(f"{args.benchmark}: K = {K}, median of {args.repeats} blocks of {args.steps} vector steps")
    print_table(["loop", "vector steps/s", "env steps/s"], [[n, r, r * K] for n, r in median.items()])
    print(f"  {'PASS' if ratio >= 0.9 else 'FAIL'}  ours >= 90% of the raw rate: {100 * ratio:.1f}%")
    write_json(args.json, {"benchmark": "collect", "env": args.benchmark, "steps_per_s": median, "ratio": ratio, "pass": ratio >= 0.9})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
