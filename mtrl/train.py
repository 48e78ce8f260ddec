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
import re
import signal
import sys
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from mtrl.agents.mtsac import MTSAC, HyperBatches
from mtrl.agents.population import PopulationSAC, member_metrics
from mtrl.envs.episodes import EpisodeRunner
from mtrl.envs.metaworld import MultiTaskEnv, describe_goal_set
from mtrl.envs.synthetic import PointMassEnv, is_point_benchmark
from mtrl.envs.population import PopulationEnv
from mtrl.envs.workers import ParallelMultiTaskEnv
from mtrl import checkpoint as ckpt
from mtrl.aggregators import REGISTRY, Aggregator, make
from mtrl.aggregators.performance import performance_weights, success_to_performance_drop
from mtrl import provenance
from mtrl.config import (
    ABSENT, RESUME_ALLOWED, Config, ConfigChange, ConfigError, config_changes, config_from_dict, config_to_dict,
    describe_legacy_values, keep_legacy_values, parse_seeds, save_config,
)
from mtrl.evaluate import EvalResult, evaluate, evaluate_episodes, evaluate_population
from mtrl.evaluator import EvaluationProcess, EvaluatorError, actor_state
from mtrl.jacobian import configure_allocator
from mtrl.metrics import MetricsLogger, ProgressLine, read_metrics, read_status, truncate_metric_files, write_status
from mtrl.replay import Batch, MultiTaskReplay, PopulationReplay
from mtrl.runs import CONFIG_HISTORY, PROVENANCE, append_jsonl, effective_config_dict
from mtrl.tracking import open_logger
from mtrl.video import TrainingVideos

__all__ = [
    "Member", "RunResult", "aggregator_seed", "checkpoint_policy", "eval_goal_set", "evaluate_run", "make_population_runner",
    "member_eval_goal_sets", "member_run_dir", "parse_seeds", "resolve_device", "train", "train_population",
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


def _prepare_run_dir(
    cfg: Config, run_dir: Path, resume: str | None, force: bool, step: int | None = None,
) -> tuple[dict[str, Any] | None, list[ConfigChange]]:
    """Create or validate the run directory; return the checkpoint to resume from (if any) and how
    ``cfg`` differs from the config the run has now (``config.yaml`` with its history applied).

    A difference in a key outside ``RESUME_ALLOWED`` is refused unless ``force``. ``step``: resume
    from the checkpoint of that step (a population's common step) instead of the newest; 0: start
    afresh although checkpoints exist (a population none of whose steps every member has)."""
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
    if resume is not None and has_checkpoint and step != 0:
        if step is not None:
            path = ckpt.checkpoint_path(run_dir, step)
            state = ckpt.load_checkpoint(path)
        else:
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


def member_run_dir(template: Path | str, seed: int) -> Path:
    """A member's run directory: ``template`` with ``{seed}`` replaced by its seed."""
    text = str(template)
    if "{seed}" not in text:
        raise ConfigError(f"--run-dir {text!r} of a population needs a {{seed}} placeholder (e.g. runs/mt10/seed{{seed}}), one directory per member")
    return Path(text.replace("{seed}", str(seed)))


class _Envs:
    """The members' training environments as one: ``reset`` / ``step`` / ``step_async`` /
    ``step_wait`` take and give [S, K, ...] arrays and a list of S ``StepResult``; member s's state
    is its env's ``state_dict`` (what a single run's checkpoint holds). Each member's env steps by
    itself here; ``mtrl.envs.population.PopulationEnv`` deals all members' tasks over shared worker
    processes and has the same interface."""

    def __init__(self, envs: Sequence[Any]) -> None:
        self.envs = list(envs)
        first = self.envs[0]
        self.members, self.num_tasks, self.task_names = len(self.envs), first.num_tasks, first.task_names
        self.obs_dim, self.action_dim, self.action_low, self.action_high = first.obs_dim, first.action_dim, first.action_low, first.action_high

    @property
    def last_step_s(self) -> float | None:
        """The envs' own stepping time in the latest step where they all report it (worker processes)."""
        values = [getattr(env, "last_step_s", None) for env in self.envs]
        return None if None in values else sum(values)

    def reset(self) -> np.ndarray:
        return np.stack([env.reset() for env in self.envs])

    def step(self, actions: np.ndarray) -> list[Any]:
        return [env.step(a) for env, a in zip(self.envs, actions)]

    def step_async(self, actions: np.ndarray) -> None:
        for env, a in zip(self.envs, actions):
            env.step_async(a)

    def step_wait(self) -> list[Any]:
        return [env.step_wait() for env in self.envs]

    def member_state_dict(self, s: int) -> dict:
        return self.envs[s].state_dict()

    def load_member_state_dict(self, s: int, state: dict) -> np.ndarray:
        return self.envs[s].load_state_dict(state)

    def close(self) -> None:
        for env in self.envs:
            env.close()


def _training_env(cfgs: Sequence[Config]) -> Any:
    """The members' training envs as one (``_Envs`` interface): a single run's env; a MetaWorld
    population's ``PopulationEnv`` (every member's tasks dealt over ``env.workers`` shared worker
    processes); synthetic tasks' envs side by side."""
    cfg = cfgs[0]
    if len(cfgs) == 1 or is_point_benchmark(cfg.env.benchmark):
        return _Envs([make_env(c, c.seed) for c in cfgs])
    # env.overlap: this process runs the update while the envs step, so no shard steps here
    return PopulationEnv(
        cfg.env.benchmark, [c.seed for c in cfgs], workers=cfg.env.workers, local_shard=cfg.env.local_shard and not cfg.env.overlap,
        spin_ms=cfg.env.spin_ms, max_episode_steps=cfg.env.max_episode_steps,
    )


def _deterministic_policy(agent: MTSAC) -> Any:
    """``agent``'s deterministic policy on numpy arrays: observations [N, obs_dim] (and the task of
    each row, default rows 0..N-1) -> actions [N, A]."""

    def policy(o: np.ndarray, task_ids: np.ndarray | None = None) -> np.ndarray:
        with torch.no_grad():
            return agent.act(torch.as_tensor(o, device=agent.device), deterministic=True, task_ids=task_ids).cpu().numpy()

    return policy


def _goal_record(cfg: Config, num_tasks: int) -> dict[str, Any]:
    """What a population member's checkpoint holds for its evaluation env in ``train.eval_mode:
    parallel``, where no env of its own exists (evaluations are pure functions of the seed, step,
    task and episode): the goal set it evaluates on, as an env state records it."""
    goals = eval_goal_set(cfg)
    return {
        "goal_seed": torch.full((num_tasks,), int(goals["goal_seed"]), dtype=torch.int64),
        "heldout_goals": torch.full((num_tasks,), bool(goals["heldout_goals"]), dtype=torch.bool),
    }


@dataclass
class Member:
    """Everything one run of a training process owns besides the learner's networks and the
    training env's simulators: its config (its seed), run directory, aggregators, replay,
    generators, evaluation env, counters, logger and videos. ``snapshot`` and ``restore`` are each
    other's inverse; a single run is a population of one member (``train``), a population of S
    has S (``train_population``), and member s's checkpoint is exactly a single run's."""

    index: int
    cfg: Config
    run_dir: Path
    changes: list[ConfigChange]
    aggregators: dict[str, Aggregator]
    temperature_agg: Aggregator | None
    replay: MultiTaskReplay
    hyper_batches: HyperBatches | None
    agent_gen: torch.Generator
    cpu_gen: torch.Generator
    eval_env: Any
    main_task: int | None
    update_step: int = 0
    episodes: int = 0
    unstable: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    perf: torch.Tensor | None = None
    last_success: float | None = None
    window_success: list[float] = field(default_factory=list)
    resume_notes: list[str] = field(default_factory=list)
    logger: Any = None
    videos: Any = None
    failed: str | None = None
    failed_step: int = 0

    @property
    def all_aggregators(self) -> dict[str, Aggregator]:
        return {**self.aggregators, **({"temperature": self.temperature_agg} if self.temperature_agg else {})}

    def snapshot(self, step: int, agent: dict[str, Any], env: dict[str, Any], obs: np.ndarray, skipped: dict[str, int]) -> dict[str, Any]:
        """This member's checkpoint at ``step``: ``agent`` / ``env`` / ``obs`` are its part of the
        learner and of the training env, ``skipped`` its running totals of skipped updates."""
        data = {
            "step": step,
            "update_step": self.update_step,
            "episodes": self.episodes,
            "skipped": skipped,
            "unstable": torch.from_numpy(self.unstable.copy()),
            "perf": self.perf,
            "last_success": self.last_success,
            "agent": agent,
            "aggregators": {key: agg.state_dict() for key, agg in self.all_aggregators.items()},
            "env": env,
            "eval_env": self.eval_env.state_dict() if self.eval_env is not None else _goal_record(self.cfg, len(self.unstable)),
            "obs": torch.as_tensor(obs),
            "generators": {"agent": self.agent_gen.get_state(), "cpu": self.cpu_gen.get_state()},
            "rng": _rng_state(),
            "config": config_to_dict(self.cfg),
            "metric_offsets": self.logger.offsets(),
        }
        if self.cfg.checkpoint.include_replay:
            data["replay"] = self.replay.state_dict()
        return data

    def restore(self, state: dict[str, Any]) -> None:
        """The inverse of ``snapshot`` for everything the member holds itself (the learner's and
        the training env's parts are restored by the caller from ``state["agent"]``,
        ``state["env"]`` and ``state["obs"]``)."""
        truncate_metric_files(self.run_dir, state["metric_offsets"])
        if state["config"]["aggregator"] == config_to_dict(self.cfg)["aggregator"]:
            for key, agg in self.all_aggregators.items():
                agg.load_state_dict(state["aggregators"][key])
        else:  # only reachable with --force: the new method starts from its initial state
            print(f"{self.run_dir}: the aggregator changed (--force): its state starts fresh", file=sys.stderr)
            self.resume_notes.append("the aggregator changed: its state started fresh")
        if "replay" in state:
            self.replay.load_state_dict(state["replay"])
        else:
            print(f"{self.run_dir}: checkpoint holds no replay buffer: resuming with an empty one (not exact)", file=sys.stderr)
            self.resume_notes.append("the checkpoint holds no replay buffer: resumed with an empty one")
        if self.cfg.train.eval_mode == "sequential":  # parallel evaluations depend on no env state
            self.eval_env.load_state_dict(state["eval_env"])
        self.agent_gen.set_state(state["generators"]["agent"])
        self.cpu_gen.set_state(state["generators"]["cpu"])
        _set_rng_state(state["rng"])
        self.update_step, self.episodes = state["update_step"], state["episodes"]
        if "unstable" in state:  # absent from checkpoints written before it was counted: from zero
            self.unstable = state["unstable"].numpy().astype(np.int64)
        self.perf = state.get("perf")
        self.last_success = state.get("last_success")

    def record(self, result: Any) -> None:
        """The episode bookkeeping of step t's result (its transition is in the replay already)."""
        np.add(self.unstable, result.unstable, out=self.unstable)
        if result.episode_done.any():
            self.episodes += int(result.episode_done.sum())
            self.window_success.extend(result.episode_success[result.episode_done].astype(float).tolist())

    def close(self, state: str, step: int, **extra: Any) -> None:
        """Close the member's outputs and write its ``status.json``."""
        for closable in (self.videos, self.logger):
            if closable is not None:
                closable.close()
        write_status(self.run_dir, state, step, self.cfg.train.total_steps, **extra)


def _build_member(index: int, cfg: Config, run_dir: Path, changes: list[ConfigChange], K: int, obs_dim: int, action_dim: int,
                  task_names: list[str], device: torch.device, eval_env: Any, replay: MultiTaskReplay | None = None) -> Member:
    """A member's own parts (``Member``) for ``cfg`` (its seed), before any checkpoint is loaded;
    ``replay``: its row of a ``PopulationReplay`` (a population; no held-out slots there, as the
    bilevel methods that use them are refused for populations), default its own buffer."""
    tcfg = cfg.train
    main_task = None
    if cfg.main_task is not None:
        if cfg.main_task not in task_names:
            raise ConfigError(f"main_task {cfg.main_task!r} is not a task of {cfg.env.benchmark}; tasks: {', '.join(task_names)}")
        main_task = task_names.index(cfg.main_task)
    aggregators = _build_aggregators(cfg, K)
    temperature_agg = aggregators.pop("temperature", None)
    # AuxiLearn trains its combiner on held-out main-task transitions that training never samples
    holdout_every = max((getattr(agg, "holdout_every", 0) for agg in aggregators.values()), default=0)
    validation_tasks = list(range(K)) if main_task is None else [main_task]
    if replay is None:
        replay = MultiTaskReplay(
            K, max(1, tcfg.replay_capacity // K), obs_dim, action_dim, device, seed=cfg.seed,
            holdout_every=holdout_every, holdout_tasks=validation_tasks,
        )
    hyper_batches = None  # fresh batches for the outer steps of AuxiNash / AuxiLearn
    if any(getattr(agg, "uses_hyper", False) for agg in aggregators.values()):
        hyper_batches = _hyper_batches(replay, tcfg.batch_size // K, validation_tasks, bool(holdout_every))
    return Member(
        index=index, cfg=cfg, run_dir=run_dir, changes=changes, aggregators=aggregators, temperature_agg=temperature_agg,
        replay=replay, hyper_batches=hyper_batches, agent_gen=torch.Generator(device=device).manual_seed(cfg.seed),
        cpu_gen=torch.Generator().manual_seed(cfg.seed + 1), eval_env=eval_env, main_task=main_task,
        unstable=np.zeros(K, dtype=np.int64),
    )


class _SingleLearner:
    """The learner of a single run: one ``MTSAC``, called exactly as before populations existed
    (a single run's numbers are unchanged by the population code path)."""

    def __init__(self, agent: MTSAC) -> None:
        self.agent = agent
        self.members = 1

    def act(self, obs: np.ndarray, generators: Sequence[torch.Generator]) -> np.ndarray:
        with torch.no_grad():
            action = self.agent.act(torch.as_tensor(obs[0], device=self.agent.device), deterministic=False, generator=generators[0])
        return action.cpu().numpy()[None]

    def update(self, members: Sequence[Member], batch_per_task: int, diagnostics: bool) -> dict[str, Any]:
        m = members[0]
        ready = not m.replay.holdout_every or m.replay.holdout_size() > 0  # held-out data exist
        return self.agent.update(
            m.replay.sample(batch_per_task), m.update_step, m.aggregators["critic"], m.aggregators["actor"],
            generator=m.agent_gen, perf=m.perf, main_task=m.main_task, aggregator_generator=m.cpu_gen,
            temperature_agg=m.temperature_agg, hyper_batches=m.hyper_batches if ready else None, diagnostics=diagnostics,
        )

    def member_values(self, values: dict[str, Any], s: int) -> dict[str, Any]:
        return values

    def member_state(self, s: int) -> dict[str, Any]:
        return self.agent.training_state()

    def load_member_state(self, s: int, state: dict[str, Any]) -> None:
        self.agent.load_training_state(state)

    def policy(self, s: int) -> MTSAC:
        return self.agent


class _PopulationLearner:
    """The learner of a population: one ``PopulationSAC`` holding every member's networks and
    optimizers, updated in one batched computation; member s's evaluation acts through a single
    ``MTSAC`` loaded with its weights, as its single run's evaluation would."""

    def __init__(self, population: PopulationSAC, obs_dim: int, action_dim: int, num_tasks: int, agent_cfg: Any,
                 replay: PopulationReplay) -> None:
        self.population, self.members, self.replay = population, population.members, replay
        self.shape = (obs_dim, action_dim, num_tasks, agent_cfg)
        self._policies: dict[int, MTSAC] = {}

    def act(self, obs: np.ndarray, generators: Sequence[torch.Generator]) -> np.ndarray:
        with torch.no_grad():
            action = self.population.act(torch.as_tensor(obs, device=self.population.device), deterministic=False, generators=generators)
        return action.cpu().numpy()

    def update(self, members: Sequence[Member], batch_per_task: int, diagnostics: bool) -> dict[str, Any]:
        batch = self.replay.sample(batch_per_task, [m.index for m in members])  # each member's own draws, one gather
        steps = {m.update_step for m in members}
        if len(steps) != 1:  # members always start and resume together
            raise RuntimeError(f"population members are at different update steps {sorted(steps)}")
        return self.population.update(
            batch, steps.pop(), [m.aggregators["critic"] for m in members], [m.aggregators["actor"] for m in members],
            generators=[m.agent_gen for m in members], perf=[m.perf for m in members], main_task=members[0].main_task,
            aggregator_generators=[m.cpu_gen for m in members], diagnostics=diagnostics,
        )

    def member_values(self, values: dict[str, Any], s: int) -> dict[str, Any]:
        return member_metrics(values, s)

    def member_state(self, s: int) -> dict[str, Any]:
        return self.population.member_state(s)

    def load_member_state(self, s: int, state: dict[str, Any]) -> None:
        self.population.load_member_state(s, state)

    def without(self, drop: Sequence[int]) -> "_PopulationLearner":
        """The population without the members ``drop`` (the others' states copied exactly)."""
        keep = [s for s in range(self.members) if s not in set(drop)]
        obs_dim, action_dim, num_tasks, agent_cfg = self.shape
        population = PopulationSAC.from_states([self.member_state(s) for s in keep], obs_dim, action_dim, num_tasks, agent_cfg, self.population.device)
        population.jacobian_method = self.population.jacobian_method
        return _PopulationLearner(population, *self.shape, self.replay)

    def policy(self, s: int) -> MTSAC:
        """An ``MTSAC`` with member s's current weights (one per member, kept between evaluations)."""
        obs_dim, action_dim, num_tasks, agent_cfg = self.shape
        if s not in self._policies:
            self._policies[s] = MTSAC(obs_dim, action_dim, num_tasks, agent_cfg, device=self.population.device)
        self._policies[s].load_state_dict(self.member_state(s)["model"])
        return self._policies[s]


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
    return _train([cfg], [Path(run_dir)], resume=resume, force=force, checkpoint_writer=checkpoint_writer, envs=envs)[0]


def train_population(
    cfg: Config,
    seeds: Sequence[int] | str,
    run_dirs: Sequence[Path | str] | Path | str,
    *,
    resume: str | None = None,
    force: bool = False,
    checkpoint_writer: Any = None,
) -> list[RunResult]:
    """Train the members ``seeds`` of ``cfg`` as one population (one process, one batched update:
    ``agents/population.py``); member s writes the ordinary run directory of its seed.

    Args:
        seeds: the members' seeds (``parse_seeds`` syntax: "0-9", "0,3,7", or a list).
        run_dirs: one directory per member, or one path with a ``{seed}`` placeholder.
        resume: None (fresh), ``"auto"`` or a path as for ``train``, for every member: the
            population continues from the newest step of which every unfinished member has a
            checkpoint; members already finished, and members that failed on their own and left
            the population (``status.json``: failed, ``left_population``), are left out (such a
            member is resumed alone with ``mtrl train --resume <its run dir>``). When the whole
            population stopped (a crash, a signal), every member resumes.
        force: as for ``train``, for every member.

    A population of one seed is a single run (``train``)."""
    seeds = parse_seeds(seeds)
    if isinstance(run_dirs, (str, Path)):
        run_dirs = [member_run_dir(run_dirs, seed) for seed in seeds]
    run_dirs = [Path(d) for d in run_dirs]
    if len(run_dirs) != len(seeds):
        raise ConfigError(f"{len(seeds)} seeds need {len(seeds)} run directories, got {len(run_dirs)}")
    if len({d.resolve() for d in run_dirs}) != len(run_dirs):
        raise ConfigError(f"members need distinct run directories, got {[str(d) for d in run_dirs]}")
    cfgs = [dataclasses.replace(cfg, seed=seed, seeds=None) for seed in seeds]
    return _train(cfgs, run_dirs, resume=resume, force=force, checkpoint_writer=checkpoint_writer)


def _resume_plan(cfgs: list[Config], run_dirs: list[Path], resume: str | None) -> tuple[list[int], list[RunResult], int | None]:
    """Which members a resume continues, the results of those it leaves out (finished; in a
    population also those that failed on their own), and the step every continued member of a
    population resumes from (None: the newest, or none to resume; 0: start afresh)."""
    active, done = [], []
    for i, (cfg, run_dir) in enumerate(zip(cfgs, run_dirs)):
        status = read_status(run_dir) or {}
        if resume is not None and status.get("state") == "finished" and status.get("total_steps") == cfg.train.total_steps:
            print(f"{run_dir} is already finished ({status['step']} steps); nothing to do", file=sys.stderr)
            done.append(RunResult(run_dir, int(status["step"]), False, status.get("last_success")))
        elif resume is not None and status.get("state") == "failed" and status.get("left_population") and len(cfgs) > 1:
            print(f"{run_dir} failed ({status.get('error', 'see its status.json')}): left out of the population; "
                  f"resume it alone with: mtrl train --resume {run_dir}", file=sys.stderr)
            done.append(RunResult(run_dir, int(status.get("step", 0)), False, status.get("last_success")))
        else:
            active.append(i)
    if resume is None or len(active) < 2:
        return active, done, None
    steps = [set(ckpt.checkpoint_steps(run_dirs[i])) for i in active]
    if not any(steps):
        return active, done, None
    if not all(steps):  # killed while the members wrote their first checkpoint: nothing to resume from
        print("some members have no checkpoint yet: the population starts afresh", file=sys.stderr)
        return active, done, 0
    common = set.intersection(*steps)
    if not common:
        listed = "; ".join(f"{run_dirs[i]}: {sorted(s) or 'none'}" for i, s in zip(active, steps))
        raise ckpt.CheckpointError(
            f"cannot resume the population: its members have no checkpoint step in common ({listed}). Resume each "
            f"member alone with mtrl train --resume <run dir>"
        )
    return active, done, max(common)


def _train(cfgs: list[Config], run_dirs: list[Path], *, resume: str | None, force: bool, checkpoint_writer: Any,
           envs: tuple[MultiTaskEnv, MultiTaskEnv] | None = None) -> list[RunResult]:
    """The training loop of S members (S = 1: a single run). Returns one result per member."""
    population = len(cfgs) > 1
    active, finished, common_step = _resume_plan(cfgs, run_dirs, resume)
    if not active:
        return finished
    cfgs, run_dirs = [cfgs[i] for i in active], [run_dirs[i] for i in active]
    cfgs = [_keep_legacy_values(c, d, resume) for c, d in zip(cfgs, run_dirs)]
    cfg = cfgs[0]  # what all members share (they differ in their seed alone)
    prepared = [_prepare_run_dir(c, d, resume, force, step=common_step) for c, d in zip(cfgs, run_dirs)]
    states = [state for state, _ in prepared]
    resumed = states[0] is not None
    goal_records = [_check_eval_goals(c, s, d, ch, force) if s is not None else None for c, d, (s, ch) in zip(cfgs, run_dirs, prepared)]
    device = resolve_device(cfg.device)
    configure_allocator()
    tcfg = cfg.train
    S = len(cfgs)

    # ---- build everything ------------------------------------------------------------------
    # evaluation: train.eval_mode parallel plays every member's episodes on one runner's pool (the
    # evaluation env's instances and more, up to env.eval_envs); sequential, each member's own env
    runner = None
    if envs is not None:
        env, eval_envs = _Envs([envs[0]]), [envs[1]]
    else:
        env = _training_env(cfgs)
        if tcfg.eval_mode == "sequential" or not population:
            eval_envs = [make_env(c, c.seed + 10_000, evaluation=True, **eval_goal_set(c)) for c in cfgs]
        else:  # a population's one evaluation env is its runner's; members keep a record of their goal set
            eval_envs = [None] * S
    K = env.num_tasks
    if tcfg.batch_size % K:
        raise ConfigError(f"train.batch_size ({tcfg.batch_size}) must be divisible by the number of tasks ({K})")
    # a population's replays: one tensor per field for all members (mtrl.replay.PopulationReplay)
    shared_replay = PopulationReplay([c.seed for c in cfgs], K, max(1, tcfg.replay_capacity // K), env.obs_dim, env.action_dim, device) if population else None
    members = [
        _build_member(i, c, d, ch, K, env.obs_dim, env.action_dim, env.task_names, device, e,
                      replay=shared_replay.replays[i] if shared_replay is not None else None)
        for i, (c, d, (_, ch), e) in enumerate(zip(cfgs, run_dirs, prepared, eval_envs))
    ]
    # train.eval_async: an evaluation process plays the evaluations (started below), unless the
    # method reads evaluation results at the step they are taken (PIVRG, PI-variants): in process
    in_process = _reads_evaluations(members)
    use_async = tcfg.eval_async and not in_process
    if tcfg.eval_async and in_process:
        print(f"train.eval_async: {cfg.aggregator.name} reads each evaluation's rates at its step: evaluating in process", file=sys.stderr)
    if tcfg.eval_mode == "parallel" and not use_async:
        runner = make_population_runner(cfgs) if population else EpisodeRunner(eval_envs[0], cfg.env.eval_envs)
    agents = []
    for c in cfgs:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(c.seed)
            agents.append(MTSAC(env.obs_dim, env.action_dim, K, c.agent, device=device))
    if population:
        learner: Any = _PopulationLearner(
            PopulationSAC.from_states([a.training_state() for a in agents], env.obs_dim, env.action_dim, K, cfg.agent, device),
            env.obs_dim, env.action_dim, K, cfg.agent, shared_replay,
        )
        learner.population.jacobian_method = cfg.aggregator.jacobian
        # what a population cannot run is refused before anything is written
        learner.population._check_supported(
            [m.aggregators["critic"] for m in members], [m.aggregators["actor"] for m in members],
            [m.temperature_agg for m in members], members[0].hyper_batches, False,
        )
        del agents
    else:
        learner = _SingleLearner(agents[0])
        learner.agent.jacobian_method = cfg.aggregator.jacobian
    action_low = torch.as_tensor(env.action_low, dtype=torch.float32)
    action_high = torch.as_tensor(env.action_high, dtype=torch.float32)

    start_step = 0
    skipped = {"critic": torch.zeros(S, device=device), "actor": torch.zeros(S, device=device)}  # running totals per member
    obs = env.reset()  # [S, K, obs_dim]
    restored_pending: dict[int, dict[int, dict[str, torch.Tensor]]] = {}  # step -> member -> actor weights
    if resumed:
        for s, (m, state) in enumerate(zip(members, states)):
            for record in state.get("pending_evaluations", []):
                restored_pending.setdefault(int(record["step"]), {})[m.index] = record["actor"]
            m.restore(state)
            learner.load_member_state(s, state["agent"])
            env.load_member_state_dict(s, state["env"])
            obs[s] = state["obs"].numpy()
            for key, n in state["skipped"].items():
                skipped[key][s] = float(n)
        start_step = states[0]["step"]
        states = prepared = None  # restored: free the loaded checkpoints (a replay alone is 0.34 GB on MT10)
    for m, goal_record in zip(members, goal_records):
        m.videos = TrainingVideos(m.cfg, env.task_names, m.run_dir)  # train.video_every; checks rendering works
        m.run_dir.mkdir(parents=True, exist_ok=True)  # only now: a config or env error leaves no directory behind
        started = time.perf_counter()
        entry = provenance.collect(device, event="resume" if resumed else "start", step=start_step)
        if population:
            entry["population"] = {"seeds": [c.seed for c in cfgs], "member": m.index}
        if resumed:  # config.yaml keeps what the run started as; what changed goes into config_history.jsonl
            _record_resume(m.run_dir, m.cfg, m.changes, entry, start_step, m.resume_notes, [goal_record] if goal_record else [])
            if not (m.run_dir / "config.yaml").exists():  # lost: the config the run has now is the best description left
                save_config(m.cfg, m.run_dir / "config.yaml")
        else:
            save_config(m.cfg, m.run_dir / "config.yaml")
        entry["provenance_s"] = round(time.perf_counter() - started, 4)  # what recording it cost
        provenance.record(m.run_dir, entry)
        m.logger = open_logger(MetricsLogger(m.run_dir, env.task_names, tensorboard=tcfg.tensorboard), m.cfg, m.run_dir)  # + W&B
        write_status(m.run_dir, "running", start_step, tcfg.total_steps)
    progress = ProgressLine(tcfg.total_steps, start_step, enabled=tcfg.progress)
    progress.last_success = _mean_success(members)

    def save(step: int) -> list[Path]:
        """Every live member's checkpoint of ``step``; old ones are pruned only once all are written.
        With an evaluation process, each holds the member's evaluations still pending (their step
        and the actor weights sent), which a resume submits again."""
        keep = cfg.checkpoint.keep
        paths = []
        for s, m in enumerate(live):
            totals = {key: int(total[s]) for key, total in skipped.items()}
            data = m.snapshot(step, learner.member_state(s), env.member_state_dict(m.index), obs[m.index], totals)
            if evaluator is not None:
                data["pending_evaluations"] = [
                    {"step": p.step, "actor": p.actors[p.members.index(m.index)]} for p in evaluator.pending() if m.index in p.members
                ]
            paths.append(ckpt.save_checkpoint(m.run_dir, step, data, keep=None if population else keep, writer=checkpoint_writer))
        if population:
            for m in live:
                ckpt.prune_checkpoints(m.run_dir, keep)
        return paths

    def log_finished(done: list[tuple[int, dict[int, EvalResult]]]) -> None:
        """Log evaluations the evaluation process finished, each at its own step."""
        for at, results in done:
            for index, result in results.items():
                m = members[index]
                if m.failed is None:  # a member that left the population logs nothing more
                    _log_evaluation(m, at, result)
            progress.last_success = _mean_success(live)

    def run_evaluation(step: int) -> None:
        """Evaluate every live member at ``step`` (its deterministic policy: a single run's agent,
        or an ``MTSAC`` holding the member's weights, as its single run would act). With an
        evaluation process, hand it the actors' weights and go on (videos are rendered here)."""
        agents = [learner.policy(s) for s in range(len(live))]
        policies = [_deterministic_policy(agent) for agent in agents]
        if evaluator is not None:
            for policy, m in zip(policies, live):
                m.videos.maybe_record(step, policy, m.logger)
            evaluator.submit(step, [actor_state(agent) for agent in agents], [m.index for m in live])
            return
        if runner is None:
            results = [evaluate(policy, m.eval_env, tcfg.eval_episodes) for policy, m in zip(policies, live)]
        elif population:
            results = evaluate_population(policies, runner, [m.cfg.seed for m in members], step, tcfg.eval_episodes, only=[m.index for m in live])
        else:
            results = [evaluate_episodes(policies[0], runner, cfg.seed, step, tcfg.eval_episodes)]
        for policy, m, result in zip(policies, live, results):
            _log_evaluation(m, step, result)
            m.videos.maybe_record(step, policy, m.logger)
        progress.last_success = _mean_success(live)

    # ---- the loop ----------------------------------------------------------------------------
    # env.overlap: the envs step transition t (step_async .. step_wait) while the update of step t
    # runs; train.replay_delay 1 is the same order run serially: transition t is stored after
    # step t's update in both, and before step t's log, evaluation and checkpoint.
    overlap, delayed = cfg.env.overlap, tcfg.replay_delay == 1
    stop = _StopFlag()
    timings = {"collect": 0.0, "update": 0.0, "wait": 0.0, "env": 0.0}
    live = list(members)  # members still training (a failed one leaves; the learner's row s is live[s])
    step = start_step
    batch_per_task = tcfg.batch_size // K

    def waited_for_env(seconds: float) -> None:
        """Account the loop's wait for a step of the envs and the envs' own stepping time
        (``last_step_s`` where they report it: worker processes step while this one updates)."""
        timings["wait"] += seconds
        own = env.last_step_s
        timings["env"] += seconds if own is None else own

    def store(action: np.ndarray, results: list[Any]) -> None:
        """Transition t of every live member into its replay (a population's: one write per field),
        the episode bookkeeping, the observations of step t + 1; ``action`` and ``results`` are
        the env's, one row per env member."""
        if shared_replay is None:
            for m in live:
                r = results[m.index]
                m.replay.add(obs[m.index], action[m.index], r.reward, r.next_obs, r.terminated)
        else:
            rows = [m.index for m in live]
            mine = [results[i] for i in rows]
            shared_replay.add(
                obs[rows], action[rows], np.stack([r.reward for r in mine]), np.stack([r.next_obs for r in mine]),
                np.stack([r.terminated for r in mine]), members=rows,
            )
        for m in live:
            m.record(results[m.index])
            obs[m.index] = results[m.index].obs

    def act(step: int) -> np.ndarray:
        """The actions [S, K, A] of every env member (a failed member's envs get zeros)."""
        if step < tcfg.warmup_steps:
            rows = [(action_low + (action_high - action_low) * torch.rand(K, env.action_dim, generator=m.cpu_gen)).numpy() for m in live]
            chosen = np.stack(rows)
        else:
            chosen = learner.act(obs[[m.index for m in live]] if len(live) < env.members else obs, [m.agent_gen for m in live])
        if len(live) == env.members:
            return chosen
        full = np.zeros((env.members, K, env.action_dim), dtype=np.float32)
        full[[m.index for m in live]] = chosen
        return full

    evaluator = None
    with _signals(stop):
        try:
            if use_async:  # built here: a failure to start is the loop's failure (status.json says so)
                evaluator = EvaluationProcess(cfgs, device, threads=torch.get_num_threads())
            for at in sorted(restored_pending):  # evaluations pending at the checkpoint: played again
                actors = restored_pending[at]
                indices = [m.index for m in live if m.index in actors]
                if evaluator is not None:
                    evaluator.submit(at, [actors[i] for i in indices], indices)
                else:
                    log_finished([(at, _evaluate_actors(members, actors, indices, runner, at, env.obs_dim, env.action_dim, device))])
            while step < tcfg.total_steps:
                # collect one transition per task and member
                t0 = time.perf_counter()
                action = act(step)
                if overlap:
                    env.step_async(action)  # the envs step while the update below runs
                else:
                    t1 = time.perf_counter()
                    results = env.step(action)
                    waited_for_env(time.perf_counter() - t1)
                    if not delayed:
                        store(action, results)
                timings["collect"] += time.perf_counter() - t0

                # one gradient update; its metrics stay on the device until the next log line
                update_metrics: dict[str, Any] = {}
                if step >= tcfg.warmup_steps and len(live[0].replay):  # delayed, step 0's replay is empty
                    t0 = time.perf_counter()
                    update_metrics = learner.update(live, batch_per_task, diagnostics=(step + 1) % tcfg.log_every == 0)
                    for key in skipped:
                        skipped[key] += update_metrics.get(f"skipped_{key}", 0.0)
                    for m in live:
                        m.update_step += 1
                    timings["update"] += time.perf_counter() - t0
                    failed = update_metrics.pop("failed", None)
                    if failed is not None and any(error is not None for error in failed):
                        learner, skipped = _drop_failed(live, failed, learner, skipped, step + 1)
                if delayed:  # transition t enters the replay after step t's update
                    t0 = time.perf_counter()
                    if overlap:
                        results = env.step_wait()
                        waited_for_env(time.perf_counter() - t0)
                    store(action, results)
                    timings["collect"] += time.perf_counter() - t0
                step += 1
                if not live:
                    break

                if step % tcfg.log_every == 0:
                    elapsed = timings["collect"] + timings["update"]
                    shared = {
                        "time/collect_s": timings["collect"],
                        "time/update_s": timings["update"],
                        "time/collect_wait_s": timings["wait"],
                        "time/env_s": timings["env"],
                        "time/collect_hidden": max(0.0, 1.0 - timings["wait"] / timings["env"]) if timings["env"] > 0 else None,
                        "time/step_s": elapsed / tcfg.log_every,
                        "time/steps_per_s": tcfg.log_every / max(elapsed, 1e-9),
                    }
                    # the one read of device values per log line: the last update's metrics and the skip totals
                    values = read_metrics({**update_metrics, **{f"train/skipped_{k}": n for k, n in skipped.items()}})
                    for s, m in enumerate(live):
                        own = learner.member_values({k: v for k, v in values.items() if not k.startswith("train/skipped_")}, s)
                        m.logger.log(step, {
                            **own,
                            **{f"train/skipped_{k}": int(values[f"train/skipped_{k}"][s]) for k in skipped},
                            "train/episodes": m.episodes,
                            "train/unstable": m.unstable.tolist(),
                            "train/success": float(np.mean(m.window_success)) if m.window_success else None,
                            **shared,
                        })
                        m.window_success.clear()
                    timings = {"collect": 0.0, "update": 0.0, "wait": 0.0, "env": 0.0}
                if step % tcfg.eval_every == 0 or step == tcfg.total_steps:
                    run_evaluation(step)
                if evaluator is not None:
                    log_finished(evaluator.poll())
                if cfg.checkpoint.every and step % cfg.checkpoint.every == 0 and step < tcfg.total_steps:
                    save(step)
                progress.update(step)
                if stop.signal is not None:
                    break
            if evaluator is not None:  # a signal leaves what is pending in the checkpoint
                log_finished(evaluator.wait() if stop.signal is None or step >= tcfg.total_steps else evaluator.poll())
        except BaseException as err:
            progress.close()
            if isinstance(err, EvaluatorError) and evaluator is not None and live:  # training's state is intact: keep it, pending evaluations too
                evaluator.close()
                paths = save(step)
                again = f"mtrl train --resume {run_dirs[0]}" if not population else "the same mtrl train command with --resume auto"
                err = EvaluatorError(
                    f"{err}. Training stopped after step {step}, checkpoint written to {', '.join(map(str, paths))}; "
                    f"continue with: {again}"
                )
                for m in live:
                    m.close("failed", step, error=f"{type(err).__name__}: {err}")
                raise err from None
            for m in live:
                m.close("failed", step, error=f"{type(err).__name__}: {err}")
            raise
        finally:
            if evaluator is not None:
                evaluator.close()

    interrupted = stop.signal is not None and step < tcfg.total_steps
    paths = save(step) if live else []
    progress.update(step, force=True)
    progress.close()
    if envs is None:
        env.close()
        for e in eval_envs:
            if e is not None:
                e.close()
        if population and runner is not None:
            runner.env.close()
    for m in members:
        if m.failed is not None:
            finished.append(RunResult(m.run_dir, m.failed_step, False, m.last_success))
            continue
        if interrupted:
            m.close("interrupted", step)
        else:
            m.close("finished", step, last_success=m.last_success)
        finished.append(RunResult(m.run_dir, step, interrupted, m.last_success))
    if interrupted:
        name = signal.Signals(stop.signal).name
        again = f"mtrl train --resume {run_dirs[0]}" if not population else "the same mtrl train command with --resume auto"
        print(
            f"\n{name} received: stopped after step {step}, checkpoint written to {', '.join(map(str, paths))}. "
            f"Continue with: {again}",
            file=sys.stderr,
        )
    order = {d.resolve(): i for i, d in enumerate(run_dirs)}
    return sorted(finished, key=lambda r: order.get(Path(r.run_dir).resolve(), -1))


def _mean_success(members: Sequence[Member]) -> float | None:
    rates = [m.last_success for m in members if m.last_success is not None]
    return float(np.mean(rates)) if rates else None


def _reads_evaluations(members: Sequence[Member]) -> bool:
    """Whether a member's method reads evaluation results (PIVRG, the PI-variants: their omega
    comes from the latest evaluation's rates, ``_log_evaluation``). ``train.eval_async`` evaluates
    such runs in process: an update after an evaluation step must see that evaluation's rates."""
    return any(agg.name == "pivrg" or getattr(agg, "pi", False) for m in members for agg in m.all_aggregators.values())


def _evaluate_actors(
    members: Sequence[Member], actors: dict[int, dict[str, torch.Tensor]], indices: Sequence[int], runner: EpisodeRunner,
    step: int, obs_dim: int, action_dim: int, device: torch.device,
) -> dict[int, EvalResult]:
    """The evaluation of ``step`` of members ``indices`` acting with the actor weights ``actors``
    (what an evaluation process was sent; a checkpoint's pending evaluations resumed without
    ``train.eval_async``), in this process: the rates the evaluation process would give."""
    policies = []
    for i in indices:
        cuda = [device.index or 0] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):  # the run's RNG streams are not touched
            agent = MTSAC(obs_dim, action_dim, runner.num_tasks, members[i].cfg.agent, device=device)
        agent.actor.load_state_dict(actors[i])
        policies.append(_deterministic_policy(agent))
    episodes = members[0].cfg.train.eval_episodes
    if len(members) > 1:
        results = evaluate_population(policies, runner, [m.cfg.seed for m in members], step, episodes, only=list(indices))
    else:
        results = [evaluate_episodes(policies[0], runner, members[0].cfg.seed, step, episodes)]
    return dict(zip(indices, results))


def _log_evaluation(m: Member, step: int, result: EvalResult) -> None:
    """Log one evaluation of member ``m`` and take its rates as the member's performance signal."""
    rates = [float(x) for x in result.success_rate]
    m.logger.log_eval(step, rates)
    m.perf = torch.tensor(rates, dtype=torch.float64)
    m.last_success = float(np.mean(rates))
    extra = {"eval/mean_success": m.last_success, "eval/mean_return": float(np.mean(result.mean_return))}
    if m.main_task is not None:
        extra["eval/main_success"] = rates[m.main_task]
    for key, agg in m.aggregators.items():  # PIVRG and PI-methods: the omega this evaluation sets
        if agg.name == "pivrg" or getattr(agg, "pi", False):
            settings = {k: getattr(agg, k) for k in ("bound", "min_temperature") if hasattr(agg, k)}  # PIVRG's own
            omega, tau = performance_weights(success_to_performance_drop(m.perf), **settings)
            extra[f"{key}/omega"] = [float(w) for w in omega]
            extra[f"{key}/tau"] = tau
    m.logger.log(step, extra)


def _drop_failed(live: list[Member], failed: Sequence[Any], learner: Any, skipped: dict[str, torch.Tensor], step: int) -> tuple[Any, dict[str, torch.Tensor]]:
    """Members whose update raised (``failed[s]`` an exception) are marked failed in their own
    ``status.json`` with the cause and leave the population; the others go on unchanged."""
    drop = [s for s, error in enumerate(failed) if error is not None]
    for s in drop:
        m, error = live[s], failed[s]
        m.failed, m.failed_step = f"{type(error).__name__}: {error}", step
        print(f"member seed {m.cfg.seed} ({m.run_dir}) failed at step {step}: {m.failed}; the other members go on", file=sys.stderr)
        m.close("failed", step, error=m.failed, left_population=True)
    keep = [s for s in range(len(live)) if s not in drop]
    live[:] = [live[s] for s in keep]
    if not live:
        return learner, skipped
    index = torch.tensor(keep, device=next(iter(skipped.values())).device)
    return learner.without(drop), {key: total[index] for key, total in skipped.items()}


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
