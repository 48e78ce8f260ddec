"""``mtrl bench population``: the learner side of a population (S seeds of one config trained as one
batched computation, ``agents/population.py``), every part in one run, ratios only (the machines
here are shared and noisy).

Parts (all by default; ``--host-only`` runs the first alone):

* host: aggregator host time of a population update, from all members' Gram matrices to their
  coefficients (``population_coefficients``), S = 1, 4, 10. Each member has its own aggregator and
  its own stream of realistic Gram matrices: a float32 G [K, P] with a common component and
  per-task scales, drifting a little from one update to the next (so warm starts help as in
  training), its Gram matrix in float32 cast to float64 as ``solvers.gram`` does. The calls for
  every (method, S) are interleaved round-robin and each figure is the median of the calling
  thread's CPU time (``time_interleaved_cpu``). Per method and K: ms per update for each S, the
  ratio S = 10 / S = 1 (``host_s10_vs_s1_<method>``, target <= 3 for nashmtl, cagrad and mgda),
  and for reference the single-member path (``coefficients_from_gram``): one member, the ratio of
  the population of 10 to it, and looped over 10 members.
* device ops and syncs per update (``benchmarks/population_update.py``, ``profile``), paper
  networks (3 x 400, K = 10, 128 transitions per task), S = 1 and 10:
  ``ops_s10_vs_s1_<method>`` = device ops S = 10 / S = 1 (target <= 1.3), and ``syncs``
  per method and S.
* learner throughput: member-updates per second, one population of 8 against 8 single ``MTSAC``
  updates, quick networks, the quick config's method (``member_updates_population_vs_single_quick``,
  higher is better; no target: the whole-step figure below carries one).
* memory per member: peak RSS of a process holding a population of S = 4 (paper networks, MT10,
  and a full replay each: ``train.replay_capacity`` 1,000,000 split over the K tasks, a
  ``MultiTaskReplay`` filled synthetically, and one update done) against S = 1, each in its own
  subprocess: ``memory_per_member_mb`` = (RSS(4) - RSS(1)) / 3.
* ``--whole-step`` (not by default: minutes of MetaWorld): whole training steps per second with
  MetaWorld, ``mtrl train configs/quick.yaml --seeds 0-7`` (one process, a population of 8)
  against 8 single runs ``--seed i`` two at a time with ``OMP_NUM_THREADS=1`` each, steady state
  from their ``metrics.jsonl`` (``time/steps_per_s``): ``member_steps_population_vs_single_quick``,
  target >= 2. Without the flag the entry is there with ``ratio`` None.

The JSON (``--json FILE``): ``{"comparisons": {NAME: {"ratio", "better", "target", "pass", ...}},
"syncs": {method: {"1": n, "10": n}}, "memory_per_member_mb": x, "host": ..., "profile": ...}``.

    mtrl bench population [--host-only] [--whole-step] [--tiny] [--json FILE]
    python -m mtrl.benchmarks.population

``--tiny``: every part at toy sizes (tiny networks, small replays; the names stay those of the
real sizes and each entry says its ``networks``), for the tests.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import numpy as np
import torch

from mtrl.aggregators import AggContext, make, population_coefficients
from mtrl.benchmarks.common import print_table, write_json

#: (label, registry name, options): the configs' settings (configs/mt10/*.yaml)
METHODS = [
    ("nashmtl", "nashmtl", {"update_every": 1, "max_norm": 1.0}),
    ("cagrad", "cagrad", {"c": 0.9, "solver": "sgd", "rescale": 1}),
    ("mgda", "mgda", {}),
    ("imtlg", "imtlg", {}),
    ("ls", "ls", {}),
]
TARGET = 3.0  # S = 10 costs at most this many times S = 1
TARGETED = ("nashmtl", "cagrad", "mgda")


def time_interleaved_cpu(functions: dict[str, Callable[[], object]], repeats: int, warmup: int = 3) -> tuple[dict, dict]:
    """Median CPU seconds of the calling thread per call of each function, and median wall seconds,
    measured round-robin. CPU time is the figure reported: on a machine shared with other jobs a
    call of 10 ms is preempted several times and one of 0.3 ms rarely, so wall-clock ratios between
    calls of different lengths measure the load (3x wall / CPU was seen at a load of 8 on 2 cores);
    the solvers here run in the calling thread (process CPU time equals thread CPU time)."""
    for _ in range(warmup):
        for fn in functions.values():
            fn()
    cpu: dict[str, list[float]] = {name: [] for name in functions}
    wall: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(repeats):
        for name, fn in functions.items():
            w0, c0 = time.perf_counter(), time.thread_time()
            fn()
            c1, w1 = time.thread_time(), time.perf_counter()
            cpu[name].append(c1 - c0)
            wall[name].append(w1 - w0)
    return ({name: statistics.median(v) for name, v in cpu.items()}, {name: statistics.median(v) for name, v in wall.items()})


def gram_stream(K: int, P: int, count: int, seed: int) -> np.ndarray:
    """``count`` successive Gram matrices [count, K, K] (float64) of one member: a float32 G with a
    common component and task scales in [0.1, 2.1], drifting by 5% noise per update, its Gram
    matrices as training computes them (``solvers.gram``: float32 product, float64 result).
    tests/aggregators/test_population.py draws its realistic streams from here too."""
    from mtrl.aggregators.solvers import gram

    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(P, generator=gen)
    scales = torch.rand(K, 1, generator=gen) * 2.0 + 0.1
    G = 0.5 * base + torch.randn(K, P, generator=gen) * scales
    out = []
    for _ in range(count):
        G = G + 0.05 * scales * torch.randn(K, P, generator=gen)
        out.append(gram(G))
    return np.stack(out)


def bench_size(K: int, P: int, populations: list[int], repeats: int, stream: int = 16, warmup: int = 3) -> dict:
    S_max = max(populations)
    grams = np.stack([gram_stream(K, P, stream, seed=1000 * K + s) for s in range(S_max)], axis=1)  # [T, S, K, K]
    losses = torch.linspace(0.5, 2.0, K, dtype=torch.float64)
    functions, state = {}, {}

    def add(label: str, name: str, options: dict, S: int, looped: bool) -> None:
        key = f"{label}/S={S}" + ("/looped" if looped else "")
        members = [make(name, K, **options) for _ in range(S)]
        state[key] = 0

        def call() -> None:
            t = state[key] = state[key] + 1
            M = grams[t % stream, :S]
            contexts = [AggContext(step=t, task_ids=torch.arange(K), losses=losses) for _ in range(S)]
            if looped:
                for member, M_s, ctx in zip(members, M, contexts):
                    member.coefficients_from_gram(M_s, ctx)
            else:
                out = population_coefficients(members, M, contexts)
                assert not out.failed.any(), out.errors

        functions[key] = call

    for label, name, options in METHODS:
        for S in populations:
            add(label, name, options, S, looped=False)
        add(label, name, options, 1, looped=True)
        add(label, name, options, S_max, looped=True)
    times, wall = time_interleaved_cpu(functions, repeats, warmup)
    rows, results = [], {}
    S_min = min(populations)
    for label, _, _ in METHODS:
        ms = {S: times[f"{label}/S={S}"] * 1e3 for S in populations}
        single, looped = times[f"{label}/S=1/looped"] * 1e3, times[f"{label}/S={S_max}/looped"] * 1e3
        ratio = ms[S_max] / ms[S_min]
        results[label] = {"ms": {str(S): v for S, v in ms.items()}, "ratio": ratio, "single_member_ms": single,
                          "ratio_vs_single_member": ms[S_max] / single, f"looped_s{S_max}_ms": looped,
                          "wall_ms": {str(S): wall[f"{label}/S={S}"] * 1e3 for S in populations}}
        verdict = ""
        if label in TARGETED:
            results[label].update(target=TARGET, **{"pass": ratio <= TARGET})
            verdict = "PASS" if ratio <= TARGET else "FAIL"
        rows.append([label, *[ms[S] for S in populations], ratio, f"<= {TARGET}" if label in TARGETED else "", verdict,
                     single, ms[S_max] / single, looped])
    print(f"\nK = {K}, Gram matrices of float32 G with P = {P:,}; CPU ms, median of {repeats} interleaved updates")
    print_table(["method", *[f"S={S} ms" for S in populations], f"S={S_max}/S={S_min}", "target", "",
                 "single ms", f"S={S_max}/single", f"looped S={S_max} ms"], rows)
    return results


def host_comparisons(sizes: dict) -> dict:
    """``host_s10_vs_s1_<method>`` entries (K = 10, when S = 1 and 10 were measured), in the shape
    of issue 22's ``mtrl bench population --json`` comparisons."""
    out = {}
    for label in TARGETED:
        ms = sizes.get("10", {}).get(label, {}).get("ms", {})
        if "1" in ms and "10" in ms:
            ratio = ms["10"] / ms["1"]
            out[f"host_s10_vs_s1_{label}"] = {"ratio": ratio, "better": "lower", "target": TARGET, "pass": ratio <= TARGET}
    return out


# ---- memory per member ------------------------------------------------------------------------------
PAPER_REPLAY = 1_000_000  # train.replay_capacity of the paper configs (configs/mt10), split over the tasks


def _peak_rss_kb() -> int | None:
    """This process's peak resident set (kB) since its ``exec``: ``VmHWM`` of /proc/self/status
    (Linux), None elsewhere."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def memory_child(members: int, size: str, capacity: int) -> dict:
    """In this process: a population of ``members`` (networks ``size``, MT10 shapes) and one
    ``MultiTaskReplay`` of ``capacity`` transitions (over all K tasks) per member, every buffer
    written (untouched pages would not count), one update on a batch sampled from the replays;
    returns the peak RSS in MB (``VmHWM``: ``ru_maxrss`` would start from the parent's peak, which a
    forked child inherits across ``exec``)."""
    import resource

    from mtrl.benchmarks import population_update as pu
    from mtrl.replay import MultiTaskReplay

    torch.set_num_threads(1)
    K, obs, act = pu.K, pu.OBS, pu.ACT
    run = pu._Members(size, "nashmtl", members, torch.device("cpu"))
    replays = []
    for s in range(members):
        replay = MultiTaskReplay(K, capacity // K, obs, act, seed=s)
        gen = torch.Generator().manual_seed(s)
        for tensor in replay._data.values():  # synthetic transitions, as if the ring were full
            tensor.uniform_(-1.0, 1.0, generator=gen)
        replay.position, replay.size = 0, replay.capacity
        replays.append(replay)
    B = pu.SIZES[size][2]
    run.batch = pu._stack([replay.sample(B) for replay in replays])
    run.update()
    run.update()
    peak_kb = _peak_rss_kb() or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    replay_mb = sum(t.numel() * t.element_size() for r in replays for t in r._data.values()) / 2**20
    return {"members": members, "peak_rss_mb": peak_kb / 1024, "replay_mb": replay_mb}


def memory_per_member(size: str, capacity: int, members: tuple[int, int] = (1, 4)) -> dict:
    """Peak RSS of ``memory_child`` for each population size, each in a fresh subprocess, and the
    MB per member ``(RSS(b) - RSS(a)) / (b - a)``."""
    import json
    import os
    import subprocess
    import sys

    rss = {}
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    children = {  # side by side: each process's own peak RSS is what is read
        S: subprocess.Popen([sys.executable, "-m", "mtrl.benchmarks.population", "--memory-child", str(S), "--memory-networks",
                             size, "--memory-capacity", str(capacity)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
        for S in members
    }
    for S, child in children.items():
        out, err = child.communicate()
        if child.returncode != 0:
            raise RuntimeError(f"memory child S={S} failed ({child.returncode}):\n{err[-2000:]}")
        rss[str(S)] = json.loads(out.strip().splitlines()[-1])
    a, b = members
    per_member = (rss[str(b)]["peak_rss_mb"] - rss[str(a)]["peak_rss_mb"]) / (b - a)
    print(f"\nmemory: {size} networks, replay {capacity:,} transitions per member; peak RSS "
          + ", ".join(f"S={S}: {v['peak_rss_mb']:.0f} MB" for S, v in rss.items())
          + f"; {per_member:.0f} MB per member (of which replay {rss[str(a)]['replay_mb'] / a:.0f} MB)")
    return {"mb": per_member, "networks": size, "replay_capacity": capacity, "runs": rss}


# ---- whole training steps with MetaWorld -------------------------------------------------------------
WHOLE_STEP_TARGET = 2.0  # population of 8 in one process >= 2x the member-steps/s of 8 singles two at a time


def _train_command(config: str, extra: list[str]) -> list[str]:
    import sys

    return [sys.executable, "-m", "mtrl.cli", "train", config, *extra]


def _steady(run_dir, after: int, key: str = "time/steps_per_s") -> float:
    """Median of ``key`` over the log lines after step ``after`` (the updates under way)."""
    import json
    from pathlib import Path

    values = []
    for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row.get("step", 0) > after and row.get(key) is not None:
            values.append(float(row[key]))
    if not values:
        raise RuntimeError(f"{run_dir}/metrics.jsonl has no {key} after step {after}: run more steps")
    return statistics.median(values)


def _steady_steps_per_s(run_dir, after: int) -> float:
    return _steady(run_dir, after)


def _split(run_dir, after: int, log_every: int) -> dict:
    """Seconds per step outside the update (act, env step, replay add) and in it, steady state."""
    return {"collect_s": _steady(run_dir, after, "time/collect_s") / log_every,
            "update_s": _steady(run_dir, after, "time/update_s") / log_every}


def whole_step(steps: int = 1400, members: int = 8, parallel: int = 2, config: str = "configs/quick.yaml",
               log_every: int = 200, warmup: int = 400, workdir: str | None = None, env_workers: int = 1,
               overlap: bool = False, spin_ms: float | None = None, population_threads: int | None = None) -> dict:
    """Member-steps per second of whole training steps (MetaWorld collection, replay, update): one
    population ``mtrl train CONFIG --seeds 0-(members-1)`` against ``members`` single runs
    ``--seed i``, ``parallel`` at a time, each with ``OMP_NUM_THREADS=1``. Both with ``--set
    train.total_steps=steps train.log_every=log_every train.warmup_steps=warmup
    checkpoint.every=0``, CPU. Steady state: the median ``time/steps_per_s`` of each run's
    ``metrics.jsonl`` after the warm-up's first full log window (collect + update time, start-up
    and evaluation excluded). The population's file (``<dir>/seed0``) counts one step per step of
    all its members: member-steps/s = members x that; the singles' = parallel x the mean of theirs.
    Wall clocks are reported beside. ``env_workers``: ``env.workers`` of both sides; ``overlap``:
    both sides with ``env.overlap`` (and ``train.replay_delay: 1``), the envs stepping in worker
    processes while the update runs; ``spin_ms``: ``env.spin_ms`` of both sides (default the
    config's); ``population_threads``: the population's torch threads (default torch's own).

    The bound MetaWorld puts on the ratio: with updates free, the population would do
    ``members / collect_pop`` member-steps per second against the singles' ``parallel /
    (collect_single + update_single)``; the measured seconds per step outside and inside the
    update (``time/collect_s``, ``time/update_s``) give it (``env_bound``). With both sides using
    every core fully, the ratio is at most the singles' CPU seconds per member-step over the
    population's, ``members (collect_single + update_single) / (collect_pop + update_pop)``
    (``cpu_bound``, from the serial split): MetaWorld costs the same per member-step on both sides,
    so only the update's share can shrink."""
    import os
    import subprocess
    import tempfile
    from pathlib import Path

    help_text = subprocess.run(_train_command("--help", []), capture_output=True, text=True, check=False).stdout
    if "--seeds" not in help_text:
        raise RuntimeError(
            "mtrl train has no --seeds option yet (the population trainer, issue 22): the whole-step comparison "
            "needs `mtrl train CONFIG --seeds 0-7`; run `mtrl bench population --whole-step` once it exists"
        )
    common = ["--device", "cpu", "--set", f"train.total_steps={steps}", "--set", f"train.log_every={log_every}",
              "--set", f"train.warmup_steps={warmup}", "--set", "checkpoint.every=0", "--set", f"env.workers={env_workers}",
              "--set", "train.progress=false"]
    if overlap:
        common += ["--set", "env.overlap=true", "--set", "train.replay_delay=1"]
    if spin_ms is not None:
        common += ["--set", f"env.spin_ms={spin_ms}"]
    after = warmup + log_every  # the first log window with updates all through it
    root = Path(workdir or tempfile.mkdtemp(prefix="mtrl-bench-population-"))
    env1 = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    # the population: one process, all members
    pop_dir = root / "population"
    t0 = time.perf_counter()
    threads = {} if population_threads is None else {"OMP_NUM_THREADS": str(population_threads), "MKL_NUM_THREADS": str(population_threads)}
    done = subprocess.run(_train_command(config, ["--seeds", f"0-{members - 1}", "--run-dir", str(pop_dir / "seed{seed}"), *common]),
                          capture_output=True, text=True, check=False, env={**os.environ, **threads})
    pop_wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"population run failed ({done.returncode}):\n{done.stderr[-3000:]}")
    pop_rate = _steady_steps_per_s(pop_dir / "seed0", after)
    # the singles: `parallel` processes at a time
    single_dirs, rates, waves = [], [], []
    t0 = time.perf_counter()
    for first in range(0, members, parallel):
        procs = []
        w0 = time.perf_counter()
        for seed in range(first, min(first + parallel, members)):
            run_dir = root / "singles" / f"seed{seed}"
            single_dirs.append(run_dir)
            procs.append((seed, subprocess.Popen(_train_command(config, ["--seed", str(seed), "--run-dir", str(run_dir), *common]),
                                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env1)))
        for seed, proc in procs:
            _, err = proc.communicate()
            if proc.returncode != 0:
                raise RuntimeError(f"single run seed {seed} failed ({proc.returncode}):\n{err[-3000:]}")
        waves.append(time.perf_counter() - w0)
    singles_wall = time.perf_counter() - t0
    rates = [_steady_steps_per_s(d, after) for d in single_dirs]
    population = members * pop_rate
    singles = parallel * statistics.mean(rates)
    ratio = population / singles
    pop_split = _split(pop_dir / "seed0", after, log_every)
    single_splits = [_split(d, after, log_every) for d in single_dirs]
    single_split = {k: statistics.mean(x[k] for x in single_splits) for k in pop_split}
    bound = (members / pop_split["collect_s"]) / (parallel / (single_split["collect_s"] + single_split["update_s"]))
    cpu_bound = members * (single_split["collect_s"] + single_split["update_s"]) / (pop_split["collect_s"] + pop_split["update_s"])
    print(f"per step: population collect {1e3 * pop_split['collect_s']:.1f} ms + update {1e3 * pop_split['update_s']:.1f} ms; "
          f"single collect {1e3 * single_split['collect_s']:.1f} ms + update {1e3 * single_split['update_s']:.1f} ms; "
          f"with free updates the ratio could reach {bound:.2f}; with every core busy on both sides at most {cpu_bound:.2f}")
    print(f"\nwhole steps ({config}, {steps} steps, MetaWorld): population of {members}: {pop_rate:.1f} steps/s "
          f"= {population:.1f} member-steps/s ({pop_wall:.0f} s wall); {members} singles {parallel} at a time: "
          f"{statistics.mean(rates):.1f} steps/s each = {singles:.1f} member-steps/s ({singles_wall:.0f} s wall); "
          f"ratio {ratio:.2f} (target >= {WHOLE_STEP_TARGET})")
    return {"ratio": ratio, "member_steps_per_s": {"population": population, "singles": singles},
            "population_steps_per_s": pop_rate, "single_steps_per_s": rates,
            "wall_s": {"population": pop_wall, "singles": singles_wall, "single_waves": waves},
            "wall_ratio": singles_wall / pop_wall, "steps": steps, "dir": str(root), "env_workers": env_workers,
            "seconds_per_step": {"population": pop_split, "single": single_split}, "env_bound": bound, "cpu_bound": cpu_bound,
            "overlap": overlap, "spin_ms": spin_ms, "population_threads": population_threads}


def _comparison(ratio, better: str, target, **extra) -> dict:
    ok = None if ratio is None or target is None else (ratio <= target if better == "lower" else ratio >= target)
    return {"ratio": ratio, "better": better, "target": target, "pass": ok, **extra}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mtrl bench population", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host-only", action="store_true", help="the aggregator host time only")
    parser.add_argument("--tiny", action="store_true", help="every part at toy sizes (for the tests; names unchanged)")
    parser.add_argument("--whole-step", action="store_true", help="also whole MetaWorld training steps (minutes; needs --seeds)")
    parser.add_argument("--whole-step-steps", type=int, default=1400, help="train.total_steps of each whole-step run")
    parser.add_argument("--whole-step-workers", type=int, default=1, help="env.workers of both sides of the whole-step runs")
    parser.add_argument("--whole-step-overlap", action="store_true", help="both sides with env.overlap (train.replay_delay 1)")
    parser.add_argument("--whole-step-spin-ms", type=float, help="env.spin_ms of both sides (default the config's)")
    parser.add_argument("--whole-step-threads", type=int, help="torch threads of the population (default torch's)")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory-per-member part")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 50], help="numbers of tasks K (host part)")
    parser.add_argument("--populations", type=int, nargs="+", default=[1, 4, 10], help="population sizes S (host part)")
    parser.add_argument("--params", type=int, default=1000, help="P, columns of the G the Gram matrices come from")
    parser.add_argument("--repeats", type=int, default=30, help="host part; the throughput part takes a quarter")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the device-side parts")
    parser.add_argument("--json", help="write the figures to this file")
    parser.add_argument("--memory-child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--memory-networks", default="paper", help=argparse.SUPPRESS)
    parser.add_argument("--memory-capacity", type=int, default=PAPER_REPLAY, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_child is not None:
        import json

        print(json.dumps(memory_child(args.memory_child, args.memory_networks, args.memory_capacity)))
        return 0
    if args.tiny:
        args.sizes, args.populations, args.params, args.repeats = [10], [1, 10], 50, 1
    warmup = 1 if args.tiny else 3
    sizes = {str(K): bench_size(K, args.params, sorted(args.populations), args.repeats, warmup=warmup) for K in args.sizes}
    comparisons = host_comparisons(sizes)
    payload: dict = {"benchmark": "population", "params": args.params, "host": sizes, "comparisons": comparisons}
    if not args.host_only:
        from mtrl.benchmarks import population_update as pu
        from mtrl.jacobian import configure_allocator

        configure_allocator()
        threads = torch.get_num_threads()
        torch.set_num_threads(args.threads)
        device = torch.device("cpu")
        networks, quick = ("tiny", "tiny") if args.tiny else ("paper", "quick")
        # device ops and syncs, S = 1, 4, 10 (the comparisons: paper networks, 10 against 1)
        sizes_profiled = [networks] if args.tiny else [networks, quick]
        profiled = pu.profile(sizes_profiled, ["ls", "nashmtl"], (1, 10) if args.tiny else (1, 4, 10), device)
        counts = profiled[networks]
        payload["profile"] = profiled
        payload["syncs"] = {}
        for method, by_S in counts.items():
            a, b = by_S["1"], by_S["10"]
            ratio = b["device_ops_per_update"] / a["device_ops_per_update"]
            comparisons[f"ops_s10_vs_s1_{method}"] = _comparison(
                ratio, "lower", pu.OPS_TARGET, networks=networks, counted="device ops (host ops of the aggregator calls apart)",
                raw_ratio=b["ops_per_update"] / a["ops_per_update"],
            )
            payload["syncs"][method] = {"1": a["syncs_per_update"], "10": b["syncs_per_update"]}
        # learner throughput: population of 8 vs 8 singles, the quick config's method
        members = 2 if args.tiny else 8
        row = pu.throughput(quick, "nashmtl", members, max(2, args.repeats // 4), device)
        comparisons["member_updates_population_vs_single_quick"] = _comparison(
            row["ratio"], "higher", None, networks=quick, members=members, method="nashmtl",
            member_updates_per_s=row["member_updates_per_s"],
        )
        torch.set_num_threads(threads)
        # memory per member
        if not args.no_memory:
            memory = memory_per_member(networks, 20_000 if args.tiny else PAPER_REPLAY, (1, 2) if args.tiny else (1, 4))
            payload["memory"] = memory
            payload["memory_per_member_mb"] = memory["mb"]
        # whole steps with MetaWorld
        if args.whole_step:
            result = whole_step(steps=args.whole_step_steps, env_workers=args.whole_step_workers, overlap=args.whole_step_overlap,
                                spin_ms=args.whole_step_spin_ms, population_threads=args.whole_step_threads)
            payload["whole_step"] = result
            comparisons["member_steps_population_vs_single_quick"] = _comparison(
                result["ratio"], "higher", WHOLE_STEP_TARGET, members=8, parallel=2,
                member_steps_per_s=result["member_steps_per_s"], env_bound=result["env_bound"], cpu_bound=result["cpu_bound"],
                env_workers=result["env_workers"], overlap=result["overlap"],
            )
        else:
            comparisons["member_steps_population_vs_single_quick"] = _comparison(
                None, "higher", WHOLE_STEP_TARGET, members=8, parallel=2, measured=False,
                note="not measured: run `mtrl bench population --whole-step` (needs `mtrl train --seeds`)",
            )
    print("\ncomparisons:")
    for name, entry in comparisons.items():
        verdict = {True: "PASS", False: "FAIL", None: "    "}[entry["pass"]]
        ratio = "-" if entry["ratio"] is None else f"{entry['ratio']:.3f}"
        target = "" if entry["target"] is None else f"({entry['better']}; target {entry['target']})"
        print(f"  {verdict}  {name}: {ratio} {target}")
    write_json(args.json, payload)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
