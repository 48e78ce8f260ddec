"""The training loop: collect -> store -> update -> evaluate -> log -> checkpoint.

Read top to bottom. This is where env, replay, agent, aggregators, evaluation, logging and
checkpoints are put together (docs/design.md §2).

Randomness: every RNG derives from ``cfg.seed``: the agent's torch.Generator (policy sampling and
update noise), a CPU torch.Generator for warm-up actions and aggregator randomness, the replay
buffer's own generator, and the environments' seeds. Network initialisation runs under a forked,
seeded global RNG, so nothing outside the run is touched and nothing inside depends on it.
"""

from __future__ import annotations

import dataclasses
import random
import signal
import sys
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from mtrl.agents.mtsac import MTSAC, HyperBatches
from mtrl.envs.episodes import EpisodeRunner
from mtrl.envs.metaworld import MultiTaskEnv, describe_goal_set
from mtrl.envs.synthetic import PointMassEnv, is_point_benchmark
from mtrl.envs.workers import ParallelMultiTaskEnv
from mtrl import checkpoint as ckpt
from mtrl.aggregators import REGISTRY, Aggregator, make
from mtrl.aggregators.performance import performance_weights, success_to_performance_drop
from mtrl import provenance
from mtrl.config import (
    ABSENT, RESUME_ALLOWED, Config, ConfigChange, ConfigError, config_changes, config_from_dict, config_to_dict,
    describe_legacy_values, keep_legacy_values, save_config,
)
from mtrl.evaluate import EvalResult, evaluate, evaluate_episodes
from mtrl.jacobian import configure_allocator
from mtrl.metrics import MetricsLogger, ProgressLine, read_metrics, read_status, truncate_metric_files, write_status
from mtrl.replay import Batch, MultiTaskReplay
from mtrl.runs import CONFIG_HISTORY, PROVENANCE, append_jsonl, effective_config_dict
from mtrl.tracking import open_logger
from mtrl.video import TrainingVideos

__all__ = [
    "RunResult", "aggregator_seed", "checkpoint_policy", "eval_goal_set", "evaluate_run", "make_population_runner",
    "member_eval_goal_sets", "resolve_device", "train",
]


@dataclass(frozen=True)
class RunResult:
    run_dir: Path
    steps_done: int
    interrupted: bool
    last_success: float | None


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU. An unavailable CUDA request is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available; use device=auto or cpu")
    return device


#: Signals that stop a run with a checkpoint. SIGUSR2 is the time-limit signal submitit asks
#: SLURM for (``--signal=USR2@...``), which reaches every process of the job (mtrl/sweep.py).
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGINT", "SIGUSR2") if hasattr(signal, name))


class _StopFlag:
    """A stop signal sets a flag; the loop finishes its step, checkpoints and exits."""

    def __init__(self) -> None:
        self.signal: int | None = None

    def __call__(self, signum: int, frame: Any) -> None:
        self.signal = signum


@contextmanager
def _signals(flag: _StopFlag) -> Iterator[None]:
    previous = {}
    try:
        for sig in STOP_SIGNALS:
            previous[sig] = signal.signal(sig, flag)
    except ValueError:  # not the main thread: no handlers, signals keep their default action
        previous = {}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


#: Spawn key of the aggregators' seeds, and each component's index under it.
AGGREGATOR_SEED_KEY = 0x61676772  # "aggr"
_COMPONENTS = ("critic", "actor", "temperature")


def aggregator_seed(run_seed: int, component: str) -> int:
    """The seed of an aggregator's own initial randomness (AuxiLearn's combiner) for one component
    (``critic``, ``actor``, ``temperature``) of the run with seed ``run_seed``: a 32-bit word of
    ``SeedSequence(run_seed, spawn_key=(AGGREGATOR_SEED_KEY, component index))``, so each run seed
    and each component has its own."""
    if component not in _COMPONENTS:
        raise ValueError(f"component must be one of {', '.join(_COMPONENTS)}; got {component!r}")
    sequence = np.random.SeedSequence(int(run_seed), spawn_key=(AGGREGATOR_SEED_KEY, _COMPONENTS.index(component)))
    return int(sequence.generate_state(1)[0])


def _aggregator_options(cfg: Config, component: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """``options`` with the component's overrides; an aggregator that takes a ``seed`` option gets
    ``aggregator_seed(cfg.seed, component)`` unless the config sets one."""
    options = {**cfg.aggregator.options, **overrides}
    if "seed" in REGISTRY[cfg.aggregator.name].option_names() and options.get("seed") is None:
        options["seed"] = aggregator_seed(cfg.seed, component)
    return options


def _build_aggregators(cfg: Config, num_tasks: int) -> dict[str, Aggregator]:
    agg = cfg.aggregator
    out = {
        "critic": make(agg.name, num_tasks, **_aggregator_options(cfg, "critic", agg.critic_options)),
        "actor": make(agg.name, num_tasks, **_aggregator_options(cfg, "actor", agg.actor_options)),
    }
    if agg.aggregate_temperature:  # MTRL parity: the temperature loss aggregated too
        out["temperature"] = make(agg.name, num_tasks, **_aggregator_options(cfg, "temperature", agg.actor_options))
    return out


def _rng_state() -> dict[str, Any]:
    state = {
        "torch": torch.get_rng_state(),
        "numpy": torch.from_numpy(np.random.get_state()[1].astype(np.int64)),
        "numpy_pos": int(np.random.get_state()[2]),
        "python": list(random.getstate()[1]),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    random.setstate((3, tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _hyper_batches(replay: MultiTaskReplay, batch_per_task: int, validation_tasks: list[int], holdout: bool) -> HyperBatches:
    """Fresh batches for the outer step of AuxiNash / AuxiLearn: training batches from the replay,
    validation rows from the held-out slots (AuxiLearn) or a fresh training batch (AuxiNash [AN §4.2])."""
    rows = torch.tensor(validation_tasks, dtype=torch.long)

    def val() -> Batch:
        if holdout:
            return replay.sample_holdout(batch_per_task)
        b = replay.sample(batch_per_task)
        index = rows.to(b.obs.device)
        return Batch(**{f.name: getattr(b, f.name)[index] for f in dataclasses.fields(Batch)})

    return HyperBatches(train=lambda: replay.sample(batch_per_task), val=val, val_tasks=rows)


def make_env(cfg: Config, seed: int, evaluation: bool = False, goal_seed: int | None = None, heldout_goals: bool = False) -> MultiTaskEnv:
    """One environment of ``cfg.env``: ``Point-<K>`` benchmarks are the synthetic point-mass tasks
    of ``mtrl.envs.synthetic``, everything else is MetaWorld (in ``env.workers`` processes when > 1).
    Evaluation envs may end on success; ``goal_seed`` picks the MetaWorld goal set (default ``seed``),
    ``heldout_goals`` the held-out set of that seed instead of its training set."""
    terminate = evaluation and cfg.env.eval_terminate_on_success
    if is_point_benchmark(cfg.env.benchmark):
        if cfg.env.workers > 1:
            raise ConfigError(f"env.workers: {cfg.env.workers} needs a MetaWorld benchmark; {cfg.env.benchmark} runs in process (env.workers: 1)")
        return PointMassEnv(cfg.env.benchmark, seed=seed, max_episode_steps=cfg.env.max_episode_steps, terminate_on_success=terminate)
    options = dict(
        seed=seed, max_episode_steps=cfg.env.max_episode_steps, terminate_on_success=terminate, goal_seed=goal_seed,
        heldout_goals=heldout_goals,
    )
    # env.overlap: this process runs the update while the training env steps, so every shard of that
    # env steps in a worker process (env.workers of them, at least one; docs/benchmarks.md)
    all_in_workers = cfg.env.overlap and not evaluation
    if cfg.env.workers > 1 or all_in_workers:
        return ParallelMultiTaskEnv(
            cfg.env.benchmark, workers=cfg.env.workers, local_shard=cfg.env.local_shard and not all_in_workers,
            spin_ms=cfg.env.spin_ms, **options,
        )
    return MultiTaskEnv(cfg.env.benchmark, **options)


def eval_goal_set(cfg: Config, goals: str | None = None) -> dict[str, Any]:
    """``make_env`` arguments of the evaluation goal set: the training env's for ``train`` (the
    default ``env.eval_goals``), the held-out set of the run's seed for ``heldout`` (disjoint from
    the training goals by construction, ``mtrl.envs.metaworld.heldout_goal_sets``)."""
    goals = cfg.env.eval_goals if goals is None else goals
    if goals not in ("train", "heldout"):
        raise ConfigError(f"evaluation goals must be one of train, heldout; got {goals!r}")
    return {"goal_seed": cfg.seed, "heldout_goals": goals == "heldout"}


def member_eval_goal_sets(cfg: Config) -> list[list[Any]]:
    """The evaluation goal sets (per task) of the run ``cfg``: what its evaluation env
    (``build_envs``) holds, without building one. ``Point-<K>`` tasks have one goal each (None)."""
    if is_point_benchmark(cfg.env.benchmark):
        return [[None] for _ in range(PointMassEnv(cfg.env.benchmark, seed=0).num_tasks)]
    from mtrl.envs.metaworld import heldout_goal_sets, task_goal_sets

    goals = eval_goal_set(cfg)
    return (heldout_goal_sets if goals["heldout_goals"] else task_goal_sets)(cfg.env.benchmark, goals["goal_seed"])


def make_population_runner(members: Sequence[Config]) -> EpisodeRunner:
    """The episode runner of a population's evaluations: ``members[m]`` is member ``m``'s config
    (one config, its own ``seed``). One evaluation env, member 0's (in ``env.workers`` processes
    when > 1, as the trainer builds it), with up to ``env.eval_envs`` instances for all members
    together; member ``m`` plays on its own run's evaluation goal sets (``eval_goal_set`` of its
    config), so ``mtrl.evaluate.evaluate_population`` gives each member its single run's
    evaluation. The members must agree on every ``env`` key but ``eval_goals``. The caller closes
    the env (``runner.env.close()``)."""
    members = list(members)
    if not members:
        raise ConfigError("a population needs at least one member")
    shared = [dataclasses.replace(m.env, eval_goals="train") for m in members]
    for m, env_cfg in enumerate(shared[1:], start=1):
        if env_cfg != shared[0]:
            raise ConfigError(f"population member {m}'s env settings differ from member 0's: {env_cfg} against {shared[0]}")
    first = members[0]
    env = make_env(first, first.seed + 10_000, evaluation=True, **eval_goal_set(first))
    try:
        own = getattr(env, "goal_sets", None)  # member 0's, sampled already (MetaWorld)
        goal_sets = [own if m == 0 and own is not None else member_eval_goal_sets(cfg) for m, cfg in enumerate(members)]
        return EpisodeRunner.for_members(env, first.env.eval_envs, goal_sets)
    except BaseException:
        env.close()
        raise


def build_envs(cfg: Config) -> tuple[MultiTaskEnv, MultiTaskEnv]:
    """The training environment and a separately seeded evaluation environment on the goal set
    ``env.eval_goals`` names."""
    return make_env(cfg, cfg.seed), make_env(cfg, cfg.seed + 10_000, evaluation=True, **eval_goal_set(cfg))


def _check_eval_goals(cfg: Config, state: dict[str, Any], run_dir: Path, changes: list[ConfigChange], force: bool) -> dict[str, Any] | None:
    """A resumed run must evaluate on the goal set it evaluated on before. Runs started before
    held-out goals were built disjoint evaluated ``heldout`` on the training goals of seed + 10000;
    this version's held-out set is another one: refused unless ``force`` (returns the history
    record to write then)."""
    if is_point_benchmark(cfg.env.benchmark) or any(c.key in ("seed", "env.eval_goals", "env.benchmark") for c in changes):
        return None  # no goal sets, or the change is already refused or recorded as forced
    written = describe_goal_set(state["eval_env"])
    goals = eval_goal_set(cfg)
    expected = describe_goal_set({"goal_seed": [goals["goal_seed"]], "heldout_goals": [goals["heldout_goals"]]})
    if written is None or written == expected:
        return None
    message = (
        f"{run_dir}: its checkpoint's evaluation env drew goals from the {written}, this config's evaluation env "
        f"(env.eval_goals: {cfg.env.eval_goals}) draws from the {expected}"
    )
    if cfg.env.eval_goals == "heldout":
        message += (
            f" (runs started before held-out goals were built disjoint from the training goals evaluated 'heldout' on the "
            f"training goals of seed + 10000)"
        )
    if not force:
        raise ConfigError(
            f"{message}; evaluations after the resume would use other goals than those before. Start a new run, or "
            f"--force to continue on the new goal set (recorded in {CONFIG_HISTORY})"
        )
    print(f"{message}; --force: evaluations continue on the {expected}", file=sys.stderr)
    return {"key": "env.eval_goals", "old": cfg.env.eval_goals, "new": cfg.env.eval_goals, "change": "forced",
            "note": f"evaluation goals: {written} -> {expected}"}


def _keep_legacy_values(cfg: Config, run_dir: Path, resume: str | None) -> Config:
    """On resume, the run keeps the ``LEGACY_VALUES`` of keys its config lacks (written before they
    existed; ``mtrl.config.keep_legacy_values``), said on stderr."""
    if resume is None or not (run_dir / "config.yaml").exists():
        return cfg
    cfg, kept = keep_legacy_values(cfg, effective_config_dict(run_dir))
    if kept:
        print(describe_legacy_values(run_dir, kept), file=sys.stderr)
    return cfg


def _refusal(run_dir: Path, refused: list[ConfigChange]) -> str:
    listed = "; ".join(change.describe() for change in refused)
    return (
        f"run directory {run_dir} belongs to a different run: this config would change {listed}. These keys change the numbers "
        f"a run produces; only {', '.join(RESUME_ALLOWED)} may change on resume. Use another --run-dir, or --force "
        f"to continue with the new values anyway (recorded in {CONFIG_HISTORY})"
    )


def _prepare_run_dir(cfg: Config, run_dir: Path, resume: str | None, force: bool) -> tuple[dict[str, Any] | None, list[ConfigChange]]:
    """Create or validate the run directory; return the checkpoint to resume from (if any) and how
    ``cfg`` differs from the config the run has now (``config.yaml`` with its history applied).

    A difference in a key outside ``RESUME_ALLOWED`` is refused unless ``force``."""
    saved_config = run_dir / "config.yaml"
    has_checkpoint = bool(ckpt.list_checkpoints(run_dir))
    if resume is None and saved_config.exists():
        raise ConfigError(
            f"run directory {run_dir} already holds a run; pass --resume {run_dir} (or --resume auto) to "
            f"continue it, or choose another --run-dir"
        )
    if resume not in (None, "auto") and not has_checkpoint:
        raise ckpt.CheckpointError(f"cannot resume: no checkpoint in {ckpt.checkpoint_dir(run_dir)}")
    changes: list[ConfigChange] = []
    if saved_config.exists():
        changes = config_changes(effective_config_dict(run_dir), config_to_dict(cfg))
        refused = [change for change in changes if not change.allowed]
        if refused and not force:
            raise ConfigError(_refusal(run_dir, refused))
    if resume is not None and has_checkpoint:
        state, path = ckpt.load_latest(run_dir)
        print(f"resuming from {path} (step {state['step']})", file=sys.stderr)
        return state, changes
    # a run killed before its first checkpoint restarts clean, as the config it is started with now
    for name in ("metrics.jsonl", "diagnostics.jsonl", "eval.csv", CONFIG_HISTORY, PROVENANCE):
        (run_dir / name).unlink(missing_ok=True)
    return None, []


def _record_resume(
    run_dir: Path, cfg: Config, changes: list[ConfigChange], entry: dict[str, Any], step: int, notes: list[str],
    extra: list[dict[str, Any]],
) -> None:
    """Record a resume: every changed key in ``config_history.jsonl`` (allowed or forced), and in the
    provenance ``entry`` whether the continuation is exact (``notes`` says why it may not be). A
    change of device, or of the machine or software since the run's previous start, is warned about."""
    previous = provenance.read_provenance(run_dir)
    last = previous[-1] if previous else None
    records = []
    for change in changes:
        record: dict[str, Any] = {"step": step, "key": change.key, "change": "allowed" if change.allowed else "forced", "time": entry["time"]}
        if change.old is not ABSENT:
            record["old"] = change.old
        if change.new is not ABSENT:
            record["new"] = change.new
        records.append(record)
    records += [{"step": step, **record, "time": entry["time"]} for record in extra]
    forced = [r["key"] for r in records if r["change"] == "forced"]
    if forced:
        notes.append(f"forced changes: {', '.join(forced)}")
    old_device = last.get("device") if last else None
    if old_device is not None and old_device != entry["device"]:
        device_record = next((r for r in records if r["key"] == "device"), None)
        if device_record is None:  # the same setting (e.g. auto) resolved to another device
            device_record = {"step": step, "key": "device", "old": cfg.device, "new": cfg.device, "change": "allowed", "time": entry["time"]}
            records.append(device_record)
        device_record.update(old_resolved=old_device, new_resolved=entry["device"])
        warnings.warn(
            f"{run_dir} ran on {old_device} and resumes on {entry['device']}: results differ between devices in "
            f"their last bits, so this resume is not exact (recorded in {CONFIG_HISTORY} and {PROVENANCE})", stacklevel=3,
        )
    differ = [d for d in provenance.differences(last, entry) if not d.startswith("device:")] if last else []
    if differ:
        warnings.warn(
            f"{run_dir} resumes with other software or hardware than its previous start ({'; '.join(differ)}): the "
            f"continuation may differ in its last bits from an uninterrupted run (recorded in {PROVENANCE})", stacklevel=3,
        )
    if old_device is not None and old_device != entry["device"]:
        notes.append(f"device: {old_device} -> {entry['device']}")
    notes += differ
    entry["resume"] = {"exact": not notes, "notes": notes}
    append_jsonl(run_dir / CONFIG_HISTORY, records)


def train(
    cfg: Config,
    run_dir: Path | str,
    *,
    resume: str | None = None,
    force: bool = False,
    checkpoint_writer: Any = None,
    envs: tuple[MultiTaskEnv, MultiTaskEnv] | None = None,
) -> RunResult:
    """Train one multi-task SAC agent as ``cfg`` says, writing outputs to ``run_dir``.

    Args:
        resume: None (fresh run; the directory must not hold one), ``"auto"`` (resume when a
            checkpoint exists, else start fresh) or a path (resume, error if no checkpoint).
        force: resume even if the config changes a key of the run's identity (any key outside
            ``mtrl.config.RESUME_ALLOWED``); the change is recorded in ``config_history.jsonl``.
        checkpoint_writer: test hook passed to ``save_checkpoint``.
        envs: prebuilt (training, evaluation) environments matching ``cfg.env`` (tests share
            one MetaWorld build across runs); they are reset here and left open.
    """
    run_dir = Path(run_dir)
    status = read_status(run_dir)
    if resume is not None and status and status.get("state") == "finished":
        if status.get("total_steps") == cfg.train.total_steps:
            print(f"{run_dir} is already finished ({status['step']} steps); nothing to do", file=sys.stderr)
            return RunResult(run_dir, int(status["step"]), False, status.get("last_success"))
    cfg = _keep_legacy_values(cfg, run_dir, resume)
    state, changes = _prepare_run_dir(cfg, run_dir, resume, force)
    resumed = state is not None
    resume_notes: list[str] = []  # why the continuation may not be exact
    goal_record = _check_eval_goals(cfg, state, run_dir, changes, force) if resumed else None
    device = resolve_device(cfg.device)
    configure_allocator()
    tcfg = cfg.train

    # ---- build everything ------------------------------------------------------------------
    env, eval_env = envs if envs is not None else build_envs(cfg)
    runner = EpisodeRunner(eval_env, cfg.env.eval_envs) if tcfg.eval_mode == "parallel" else None
    K = env.num_tasks
    if tcfg.batch_size % K:
        raise ConfigError(f"train.batch_size ({tcfg.batch_size}) must be divisible by the number of tasks ({K})")
    main_task = None
    if cfg.main_task is not None:
        if cfg.main_task not in env.task_names:
            raise ConfigError(f"main_task {cfg.main_task!r} is not a task of {cfg.env.benchmark}; tasks: {', '.join(env.task_names)}")
        main_task = env.task_names.index(cfg.main_task)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        agent = MTSAC(env.obs_dim, env.action_dim, K, cfg.agent, device=device)
    agent.jacobian_method = cfg.aggregator.jacobian
    aggregators = _build_aggregators(cfg, K)
    temperature_agg = aggregators.pop("temperature", None)
    # AuxiLearn trains its combiner on held-out main-task transitions that training never samples
    holdout_every = max((getattr(agg, "holdout_every", 0) for agg in aggregators.values()), default=0)
    validation_tasks = list(range(K)) if main_task is None else [main_task]
    replay = MultiTaskReplay(
        K, max(1, tcfg.replay_capacity // K), env.obs_dim, env.action_dim, device, seed=cfg.seed,
        holdout_every=holdout_every, holdout_tasks=validation_tasks,
    )
    hyper_batches = None  # fresh batches for the outer steps of AuxiNash / AuxiLearn
    if any(getattr(agg, "uses_hyper", False) for agg in aggregators.values()):
        hyper_batches = _hyper_batches(replay, tcfg.batch_size // K, validation_tasks, bool(holdout_every))
    agent_gen = torch.Generator(device=device).manual_seed(cfg.seed)
    cpu_gen = torch.Generator().manual_seed(cfg.seed + 1)
    action_low = torch.as_tensor(env.action_low, dtype=torch.float32)
    action_high = torch.as_tensor(env.action_high, dtype=torch.float32)

    start_step, update_step, episodes = 0, 0, 0
    skipped = {"critic": torch.zeros((), device=device), "actor": torch.zeros((), device=device)}  # running totals
    unstable = np.zeros(K, dtype=np.int64)  # per task: training steps whose simulation MuJoCo flagged unstable
    perf: torch.Tensor | None = None
    last_success: float | None = None
    obs = env.reset()
    if state is not None:
        truncate_metric_files(run_dir, state["metric_offsets"])
        agent.load_training_state(state["agent"])
        saved_aggregator = state["config"]["aggregator"]
        if saved_aggregator == config_to_dict(cfg)["aggregator"]:
            for key, agg in {**aggregators, **({"temperature": temperature_agg} if temperature_agg else {})}.items():
                agg.load_state_dict(state["aggregators"][key])
        else:  # only reachable with --force: the new method starts from its initial state
            print("the aggregator changed (--force): its state starts fresh", file=sys.stderr)
            resume_notes.append("the aggregator changed: its state started fresh")
        if "replay" in state:
            replay.load_state_dict(state["replay"])
        else:
            print("checkpoint holds no replay buffer: resuming with an empty one (not exact)", file=sys.stderr)
            resume_notes.append("the checkpoint holds no replay buffer: resumed with an empty one")
        env.load_state_dict(state["env"])
        eval_env.load_state_dict(state["eval_env"])
        obs = state["obs"].numpy()
        agent_gen.set_state(state["generators"]["agent"])
        cpu_gen.set_state(state["generators"]["cpu"])
        _set_rng_state(state["rng"])
        start_step, update_step, episodes = state["step"], state["update_step"], state["episodes"]
        skipped = {key: torch.tensor(float(n), device=device) for key, n in state["skipped"].items()}
        if "unstable" in state:  # absent from checkpoints written before it was counted: from zero
            unstable = state["unstable"].numpy().astype(np.int64)
        perf = state.get("perf")
        last_success = state.get("last_success")
        state = None  # restored: free the loaded checkpoint (its replay alone is 0.34 GB on MT10)
    videos = TrainingVideos(cfg, env.task_names, run_dir)  # train.video_every; checks rendering works
    run_dir.mkdir(parents=True, exist_ok=True)  # only now: a config or env error leaves no directory behind
    started = time.perf_counter()
    entry = provenance.collect(device, event="resume" if resumed else "start", step=start_step)
    if resumed:  # config.yaml keeps what the run started as; what changed goes into config_history.jsonl
        _record_resume(run_dir, cfg, changes, entry, start_step, resume_notes, [goal_record] if goal_record else [])
        if not (run_dir / "config.yaml").exists():  # lost: the config the run has now is the best description left
            save_config(cfg, run_dir / "config.yaml")
    else:
        save_config(cfg, run_dir / "config.yaml")
    entry["provenance_s"] = round(time.perf_counter() - started, 4)  # what recording it cost
    provenance.record(run_dir, entry)
    logger = open_logger(MetricsLogger(run_dir, env.task_names, tensorboard=tcfg.tensorboard), cfg, run_dir)  # + W&B
    progress = ProgressLine(tcfg.total_steps, start_step, enabled=tcfg.progress)
    progress.last_success = last_success
    write_status(run_dir, "running", start_step, tcfg.total_steps)

    def snapshot(step: int) -> dict[str, Any]:
        data = {
            "step": step,
            "update_step": update_step,
            "episodes": episodes,
            "skipped": {key: int(total) for key, total in skipped.items()},
            "unstable": torch.from_numpy(unstable.copy()),
            "perf": perf,
            "last_success": last_success,
            "agent": agent.training_state(),
            "aggregators": {
                key: agg.state_dict()
                for key, agg in {**aggregators, **({"temperature": temperature_agg} if temperature_agg else {})}.items()
            },
            "env": env.state_dict(),
            "eval_env": eval_env.state_dict(),
            "obs": torch.as_tensor(obs),
            "generators": {"agent": agent_gen.get_state(), "cpu": cpu_gen.get_state()},
            "rng": _rng_state(),
            "config": config_to_dict(cfg),
            "metric_offsets": logger.offsets(),
        }
        if cfg.checkpoint.include_replay:
            data["replay"] = replay.state_dict()
        return data

    def save(step: int) -> Path:
        return ckpt.save_checkpoint(run_dir, step, snapshot(step), keep=cfg.checkpoint.keep, writer=checkpoint_writer)

    def run_evaluation(step: int) -> None:
        nonlocal perf, last_success

        def policy(o: np.ndarray, task_ids: np.ndarray | None = None) -> np.ndarray:
            with torch.no_grad():
                return agent.act(torch.as_tensor(o, device=device), deterministic=True, task_ids=task_ids).cpu().numpy()

        if runner is None:
            result = evaluate(policy, eval_env, tcfg.eval_episodes)
        else:
            result = evaluate_episodes(policy, runner, cfg.seed, step, tcfg.eval_episodes)
        rates = [float(x) for x in result.success_rate]
        logger.log_eval(step, rates)
        perf = torch.tensor(rates, dtype=torch.float64)
        last_success = float(np.mean(rates))
        progress.last_success = last_success
        extra = {"eval/mean_success": last_success, "eval/mean_return": float(np.mean(result.mean_return))}
        if main_task is not None:
            extra["eval/main_success"] = rates[main_task]
        for key, agg in aggregators.items():  # PIVRG and PI-methods: the omega this evaluation sets
            if agg.name == "pivrg" or getattr(agg, "pi", False):
                settings = {k: getattr(agg, k) for k in ("bound", "min_temperature") if hasattr(agg, k)}  # PIVRG's own
                omega, tau = performance_weights(success_to_performance_drop(perf), **settings)
                extra[f"{key}/omega"] = [float(w) for w in omega]
                extra[f"{key}/tau"] = tau
        logger.log(step, extra)
        videos.maybe_record(step, policy, logger)

    # ---- the loop ----------------------------------------------------------------------------
    # env.overlap: the envs step transition t (step_async .. step_wait) while the update of step t
    # runs; train.replay_delay 1 is the same order run serially: transition t is stored after
    # step t's update in both, and before step t's log, evaluation and checkpoint.
    overlap, delayed = cfg.env.overlap, tcfg.replay_delay == 1
    stop = _StopFlag()
    timings = {"collect": 0.0, "update": 0.0, "wait": 0.0, "env": 0.0}
    window_success: list[float] = []
    step = start_step

    def waited_for_env(seconds: float) -> None:
        """Account the loop's wait for a step of the envs and the envs' own stepping time
        (``last_step_s`` where they report it: worker processes step while this one updates)."""
        timings["wait"] += seconds
        timings["env"] += getattr(env, "last_step_s", seconds)

    def store(action: np.ndarray, result: Any) -> None:
        """Transition t into the replay, the observations of step t + 1, episode bookkeeping."""
        nonlocal obs, episodes
        replay.add(obs, action, result.reward, result.next_obs, result.terminated)
        obs = result.obs
        np.add(unstable, result.unstable, out=unstable)
        if result.episode_done.any():
            episodes += int(result.episode_done.sum())
            window_success.extend(result.episode_success[result.episode_done].astype(float).tolist())

    with _signals(stop):
        try:
            while step < tcfg.total_steps:
                # collect one transition per task
                t0 = time.perf_counter()
                if step < tcfg.warmup_steps:
                    action = action_low + (action_high - action_low) * torch.rand(K, env.action_dim, generator=cpu_gen)
                    action = action.numpy()
                else:
                    with torch.no_grad():
                        action = agent.act(torch.as_tensor(obs, device=device), deterministic=False, generator=agent_gen)
                    action = action.cpu().numpy()
                if overlap:
                    env.step_async(action)  # the envs step while the update below runs
                else:
                    t1 = time.perf_counter()
                    result = env.step(action)
                    waited_for_env(time.perf_counter() - t1)
                    if not delayed:
                        store(action, result)
                timings["collect"] += time.perf_counter() - t0

                # one gradient update; its metrics stay on the device until the next log line
                update_metrics: dict[str, Any] = {}
                if step >= tcfg.warmup_steps and len(replay):  # delayed, step 0's replay is empty
                    t0 = time.perf_counter()
                    batch = replay.sample(tcfg.batch_size // K)
                    ready = not holdout_every or replay.holdout_size() > 0  # held-out data exist
                    update_metrics = agent.update(
                        batch,
                        update_step,
                        aggregators["critic"],
                        aggregators["actor"],
                        generator=agent_gen,
                        perf=perf,
                        main_task=main_task,
                        aggregator_generator=cpu_gen,
                        temperature_agg=temperature_agg,
                        hyper_batches=hyper_batches if ready else None,
                        diagnostics=(step + 1) % tcfg.log_every == 0,  # gradient diagnostics on log steps
                    )
                    for key in skipped:
                        skipped[key] = skipped[key] + update_metrics.get(f"skipped_{key}", 0.0)
                    update_step += 1
                    timings["update"] += time.perf_counter() - t0
                if delayed:  # transition t enters the replay after step t's update
                    t0 = time.perf_counter()
                    if overlap:
                        result = env.step_wait()
                        waited_for_env(time.perf_counter() - t0)
                    store(action, result)
                    timings["collect"] += time.perf_counter() - t0
                step += 1

                if step % tcfg.log_every == 0:
                    elapsed = timings["collect"] + timings["update"]
                    # the one read of device values per log line: the last update's metrics and the skip totals
                    values = read_metrics({**update_metrics, **{f"train/skipped_{k}": n for k, n in skipped.items()}})
                    logger.log(
                        step,
                        {
                            **values,
                            **{f"train/skipped_{k}": int(values[f"train/skipped_{k}"]) for k in skipped},
                            "train/episodes": episodes,
                            "train/unstable": unstable.tolist(),
                            "train/success": float(np.mean(window_success)) if window_success else None,
                            "time/collect_s": timings["collect"],
                            "time/update_s": timings["update"],
                            "time/collect_wait_s": timings["wait"],
                            "time/env_s": timings["env"],
                            "time/collect_hidden": max(0.0, 1.0 - timings["wait"] / timings["env"]) if timings["env"] > 0 else None,
                            "time/step_s": elapsed / tcfg.log_every,
                            "time/steps_per_s": tcfg.log_every / max(elapsed, 1e-9),
                        },
                    )
                    window_success.clear()
                    timings = {"collect": 0.0, "update": 0.0, "wait": 0.0, "env": 0.0}
                if step % tcfg.eval_every == 0 or step == tcfg.total_steps:
                    run_evaluation(step)
                if cfg.checkpoint.every and step % cfg.checkpoint.every == 0 and step < tcfg.total_steps:
                    save(step)
                progress.update(step)
                if stop.signal is not None:
                    break
        except BaseException:
            progress.close()
            videos.close()
            logger.close()
            write_status(run_dir, "failed", step, tcfg.total_steps)
            raise

    interrupted = stop.signal is not None and step < tcfg.total_steps
    path = save(step)
    progress.update(step, force=True)
    progress.close()
    videos.close()
    logger.close()
    if envs is None:
        env.close()
        eval_env.close()
    if interrupted:
        name = signal.Signals(stop.signal).name
        write_status(run_dir, "interrupted", step, tcfg.total_steps)
        print(
            f"\n{name} received: stopped after step {step}, checkpoint written to {path}. "
            f"Continue with: mtrl train --resume {run_dir}",
            file=sys.stderr,
        )
    else:
        write_status(run_dir, "finished", step, tcfg.total_steps, last_success=last_success)
    return RunResult(run_dir, step, interrupted, last_success)


def checkpoint_policy(state: dict[str, Any], obs_dim: int, action_dim: int, num_tasks: int, device: str) -> Any:
    """The deterministic policy of a loaded checkpoint: observations [K, obs_dim] -> actions [K, A] (numpy)."""
    cfg = config_from_dict(state["config"])
    torch_device = resolve_device(device)
    agent = MTSAC(obs_dim, action_dim, num_tasks, cfg.agent, device=torch_device)
    agent.load_training_state(state["agent"])

    def policy(o: np.ndarray, task_ids: np.ndarray | None = None) -> np.ndarray:
        with torch.no_grad():
            return agent.act(torch.as_tensor(o, device=torch_device), deterministic=True, task_ids=task_ids).cpu().numpy()

    return policy


def evaluate_run(run_dir: Path, episodes: int = 10, device: str = "auto", goals: str | None = None) -> EvalResult:
    """Evaluate the newest valid checkpoint of ``run_dir``; print per-task success and return the result.

    ``goals``: "train" or "heldout" (as ``env.eval_goals``); default the run's ``env.eval_goals``
    ("train" for runs written before that key existed: the training goals). The run's
    ``train.eval_mode`` applies; in mode ``parallel`` this plays the episodes of the trainer's
    evaluation at the checkpoint's step (the first ``episodes`` of each task), so with the run's
    ``train.eval_episodes`` it gives the success rates logged at that step."""
    state, path = ckpt.load_latest(run_dir)
    cfg, kept = keep_legacy_values(config_from_dict(state["config"]), state["config"])
    if kept:
        print(describe_legacy_values(path, kept), file=sys.stderr)
    goals = cfg.env.eval_goals if goals is None else goals
    env = make_env(cfg, cfg.seed + 20_000, evaluation=True, **eval_goal_set(cfg, goals))
    policy = checkpoint_policy(state, env.obs_dim, env.action_dim, env.num_tasks, device)
    if cfg.train.eval_mode == "parallel":  # the episodes of the trainer's evaluation at the checkpoint's step
        result = evaluate_episodes(policy, EpisodeRunner(env, cfg.env.eval_envs), cfg.seed, state["step"], episodes)
    else:
        result = evaluate(policy, env, episodes)
    env.close()
    rates = [float(x) for x in result.success_rate]
    print(f"{path} (step {state['step']}), {episodes} episode(s) per task, {goals} goals, {cfg.train.eval_mode} evaluation")
    for name, rate in zip(env.task_names, rates):
        print(f"  {name:32s} {rate:.3f}")
    print(f"  {'mean':32s} {float(np.mean(rates)):.3f}")
    return result
