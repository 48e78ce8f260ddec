"""Run configuration: frozen dataclasses loaded from YAML, validated before anything is built.

Every key, type and range is checked: an unknown key names the valid ones, a wrong type names the
expected one. ``--set key=value`` overrides go through the same check (values parsed as YAML).
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import yaml

__all__ = [
    "ABSENT",
    "AgentConfig",
    "AggregatorConfig",
    "CheckpointConfig",
    "Config",
    "ConfigError",
    "EnvConfig",
    "TrainConfig",
    "WandbConfig",
    "ConfigChange",
    "LEGACY_VALUES",
    "RESUME_ALLOWED",
    "apply_overrides",
    "config_changes",
    "config_from_dict",
    "config_keys",
    "config_to_dict",
    "flatten_config",
    "identity_keys",
    "is_resume_allowed",
    "keep_legacy_values",
    "legacy_values",
    "load_config",
    "load_yaml",
    "parse_seeds",
    "resolved_flat_config",
    "save_config",
    "with_values",
]


class ConfigError(ValueError):
    """A configuration value, key or type is invalid."""


@dataclass(frozen=True)
class EnvConfig:
    """Environment settings.

    Attributes:
        benchmark: "MT10", "MT50" or "MT1-<task>" (e.g. "MT1-reach-v3").
        max_episode_steps: episode length (MetaWorld v3: 500).
        eval_terminate_on_success: end evaluation episodes at the first success (MetaWorld's
            own evaluation does this; success is "any step succeeded" either way).
        eval_goals: goal variations of the evaluation env: "train" (the training env's 50 per
            task, MetaWorld's protocol; the evaluation env draws which one comes next with its
            own RNG) or "heldout" (50 other goals per task, disjoint from the training goals by
            construction, ``mtrl.envs.metaworld.heldout_goal_sets``; for generalisation studies).
        workers: run the MetaWorld tasks in this many worker processes (tasks dealt into shares
            balanced by each task's step cost as measured once in ``envs/task_costs.py``, not by
            count; at most one share per task; ``envs/workers.py``); 1 steps them in the
            training process.
            Any value gives the same trajectories; the evaluation env uses as many.
        local_shard: with ``workers`` N > 1, the training process steps one of the N shares of
            the tasks itself while N - 1 worker processes step the others (it would otherwise
            wait idle; measured faster, ``envs/workers.py``); false: N worker processes. Not for
            the training env with ``overlap``.
        spin_ms: with ``workers`` > 1, how long a waiting process polls its pipe before it
            sleeps (the budget adapts; 0: sleep at once). Waking a sleeping process costs up to
            milliseconds on a VM; off by itself when the stepping processes outnumber the cores
            (``envs/workers.py``). Never changes a result.
        overlap: step the environments while the learner updates: the action of step t comes
            from the current policy, the envs step it (``step_async``) while the update of step t
            samples and trains, and transition t enters the replay when the envs answer
            (``step_wait``), before step t's log, evaluation and checkpoint. Needs
            ``train.replay_delay: 1`` (the update of step t cannot sample transition t, which is
            still being collected); with it, a run gives the same results bit for bit with or
            without overlap, and its checkpoints resume either way. The training env then steps
            every shard in a worker process (``workers`` of them, at least one; ``local_shard``
            applies to the evaluation env only): this process is busy with the update meanwhile,
            on a CPU with its arithmetic, on a GPU with launching its kernels
            (``docs/benchmarks.md``).
        eval_envs: with ``train.eval_mode: parallel``, the most env instances an evaluation
            opens (the evaluation env's own included; ``mtrl.envs.episodes``): its K x
            ``train.eval_episodes`` episodes run in lock-step on up to this many, an instance
            playing several of its task's episodes one after another when they are fewer. At
            least the number of tasks. A MetaWorld instance holds about 21 MB. Never changes a
            result.
    """

    benchmark: str = "MT10"
    max_episode_steps: int = 500
    eval_terminate_on_success: bool = True
    eval_goals: str = "train"
    workers: int = 1
    local_shard: bool = True
    spin_ms: float = 5.0
    overlap: bool = False
    eval_envs: int = 100


@dataclass(frozen=True)
class AgentConfig:
    """Multi-task SAC (defaults: the MTRL/CARE MT10 protocol, docs/design.md §4).

    Attributes:
        variant: "mt" (one-hot task id input), "te" (learned task embedding), "mh" (shared
            trunk, task-specific output heads).
        hidden_dim: width of every hidden layer of actor and critic.
        num_layers: number of hidden layers.
        task_embedding_dim: size of the learned task embedding (variant "te").
        actor_lr, critic_lr, alpha_lr: Adam learning rates.
        discount: gamma.
        tau: Polyak coefficient of the target critics.
        init_temperature: initial entropy temperature alpha (per task).
        target_entropy: None means -action_dim.
        log_std_min, log_std_max: bounds of the actor's log standard deviation.
        actor_update_every: actor and temperature update every N training steps.
        target_update_every: target critic update every N training steps.
        adam: "fused" (default: one kernel per optimizer step, and a non-finite loss skips the
            step on the device without a host sync; falls back to "foreach" on devices without
            the fused kernel) or "foreach" (bit-identical to torch's default Adam on CPU; the skip
            then reads one flag from the device per component).
        compile: run the update's forward and backward passes through ``torch.compile``
            (inductor; C++ on a CPU): the TD targets, the batched losses of the one-backward path
            and, for G-based methods, one compiled ``vmap(grad)`` over the tasks (the "vmap"
            engine; ``aggregator.jacobian: linear`` or ``loop`` then run eager, with a warning).
            The first update compiles (tens of seconds); shapes are static, so nothing recompiles.
    """

    variant: str = "mt"
    hidden_dim: int = 400
    num_layers: int = 3
    task_embedding_dim: int = 50
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    alpha_lr: float = 3e-4
    discount: float = 0.99
    tau: float = 0.005
    init_temperature: float = 1.0
    target_entropy: float | None = None
    log_std_min: float = -20.0
    log_std_max: float = 2.0
    actor_update_every: int = 1
    target_update_every: int = 1
    adam: str = "fused"
    compile: bool = False


@dataclass(frozen=True)
class AggregatorConfig:
    """How per-task gradients are combined.

    Attributes:
        name: registry name (``mtrl.aggregators.REGISTRY``).
        options: keyword options of that aggregator (checked by ``mtrl.aggregators.make``).
        critic_options, actor_options: per-component overrides merged over ``options``.
        aggregate_temperature: aggregate the temperature loss too (MTRL parity); default is the
            plain per-task sum, since each task's temperature only touches its own loss.
        jacobian: engine of the per-task Jacobian (``mtrl.jacobian``): "auto" ("linear" when the
            shared parameters are all Linear layers, as in our networks, else "vmap"), "linear"
            (one backward pass, per-task products written into G), "vmap" (torch.func) or "loop"
            (one autograd.grad per task, the reference code's way).
    """

    name: str = "ls"
    options: dict[str, Any] = field(default_factory=dict)
    critic_options: dict[str, Any] = field(default_factory=dict)
    actor_options: dict[str, Any] = field(default_factory=dict)
    aggregate_temperature: bool = False
    jacobian: str = "auto"


@dataclass(frozen=True)
class WandbConfig:
    """Weights & Biases logging (``pip install -e '.[wandb]'``); off unless ``mode`` says otherwise.

    Attributes:
        mode: "disabled" (default), "offline" (files under the run directory, no account;
            ``wandb sync`` uploads them later) or "online".
        project: W&B project; required when mode is not "disabled".
        entity: W&B team or user (None: the account's default).
        group: runs shown together (``mtrl sweep`` sets the method label).
        name: the run's display name (``mtrl sweep`` sets ``<method>-seed<N>``; None: the run directory's name).
    """

    mode: str = "disabled"
    project: str | None = None
    entity: str | None = None
    group: str | None = None
    name: str | None = None


@dataclass(frozen=True)
class TrainConfig:
    """The training loop.

    Attributes:
        total_steps: training steps; one step = one vector-env step (one transition per task)
            plus one gradient update (after warm-up).
        batch_size: total batch over tasks (1280 = 128 per task on MT10); must be divisible by
            the number of tasks.
        warmup_steps: steps with uniform random actions and no updates.
        replay_delay: 0 (default) or 1. 0: the transition of step t is stored before step t's
            update, which may sample it. 1: it is stored after that update (a one-step delay of
            the replay's content; the policy is never stale), which ``env.overlap`` needs and which
            changes results against 0. With 1 and ``warmup_steps: 0`` the first update comes at
            step 1, when the replay holds a transition.
        replay_capacity: total replay capacity over tasks (split evenly).
        eval_every: evaluate every N steps (and at the end).
        eval_episodes: evaluation episodes per task.
        eval_mode: how evaluations play their episodes (docs/evaluation.md): "parallel" (each
            episode a pure function of the run's seed, the evaluation's step, the task and the
            episode, all episodes in lock-step over up to ``env.eval_envs`` env instances) or
            "sequential" (each task plays its episodes one after another on the evaluation env,
            whose RNG carries over from one evaluation to the next: the evaluation of runs
            written before this key existed, which keep it when resumed).
        eval_async: play the evaluations in a separate evaluation process while training goes on
            (``mtrl.evaluator``; needs ``eval_mode: parallel``): the trainer hands it the actor
            weights of the evaluation's step and logs its rates at that step when they arrive,
            the same rates as an in-process evaluation. Methods that read evaluation results
            (PIVRG, the PI-variants) evaluate in process, as without it. A checkpoint holds the
            evaluations still pending, and a resume plays them again; a dying evaluation process
            stops training with a checkpoint and an error naming it and its cause.
        log_every: write a metrics.jsonl line every N steps.
        tensorboard: also write TensorBoard events (needs the ``tensorboard`` extra).
        progress: show a progress bar on stderr.
        video_every: at the evaluations of every N-th step, also render one episode per task into
            ``<run>/videos/step<N>/<task>.mp4`` (``mtrl.video``); 0 (default) records none. A
            multiple of ``eval_every``.
        wandb: Weights & Biases logging (``WandbConfig``).
    """

    total_steps: int = 2_000_000
    batch_size: int = 1280
    warmup_steps: int = 1500
    replay_delay: int = 0
    replay_capacity: int = 1_000_000
    eval_every: int = 10_000
    eval_episodes: int = 10
    eval_mode: str = "parallel"
    eval_async: bool = False
    log_every: int = 1000
    tensorboard: bool = False
    progress: bool = True
    video_every: int = 0
    wandb: WandbConfig = field(default_factory=WandbConfig)


@dataclass(frozen=True)
class CheckpointConfig:
    """Checkpointing (docs/design.md §6).

    Attributes:
        every: write a checkpoint every N steps (and at the end); 0 disables periodic ones.
        keep: number of most recent checkpoints kept.
        include_replay: save the replay buffer (needed for exact resume).
    """

    every: int = 100_000
    keep: int = 2
    include_replay: bool = True


@dataclass(frozen=True)
class Config:
    """A whole run.

    Attributes:
        name: a label for the run (used in default run directory names and reports).
        seed: the run's seed; every RNG of the run derives from it.
        device: "auto" (CUDA when available), "cpu", "cuda" or "cuda:N".
        main_task: name of the main task for auxiliary-learning methods (None: all tasks).
        seeds: train a population (``mtrl train --seeds``): the members' seeds as "0-9", "0,3,7"
            or "0-3,8" (``parse_seeds``), every member a run of this config with its own seed,
            all in one process (``agents/population.py``); None: the single run of ``seed``.
            Each member's own ``config.yaml`` holds its ``seed`` and no ``seeds``.
    """

    name: str = "run"
    seed: int = 0
    seeds: str | int | None = None
    device: str = "auto"
    main_task: str | None = None
    env: EnvConfig = field(default_factory=EnvConfig)
    agent: AgentConfig = field(default_factory=AgentConfig)
    aggregator: AggregatorConfig = field(default_factory=AggregatorConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)


# ---------------------------------------------------------------------------------------------
# Validation of values (ranges and choices); types are checked generically below.
# ---------------------------------------------------------------------------------------------
_POSITIVE_INTS = {
    "env.max_episode_steps",
    "env.workers",
    "env.eval_envs",
    "agent.hidden_dim",
    "agent.num_layers",
    "agent.task_embedding_dim",
    "agent.actor_update_every",
    "agent.target_update_every",
    "train.total_steps",
    "train.batch_size",
    "train.replay_capacity",
    "train.eval_every",
    "train.eval_episodes",
    "train.log_every",
    "checkpoint.keep",
}
_NON_NEGATIVE_INTS = {"seed", "train.warmup_steps", "train.video_every", "checkpoint.every"}
_POSITIVE_FLOATS = {"agent.actor_lr", "agent.critic_lr", "agent.alpha_lr", "agent.init_temperature"}
_CHOICES = {
    "env.eval_goals": ("train", "heldout"),
    "train.eval_mode": ("parallel", "sequential"),
    "agent.variant": ("mt", "te", "mh"),
    "agent.adam": ("fused", "foreach"),
    "aggregator.jacobian": ("auto", "linear", "vmap", "loop"),
    "train.wandb.mode": ("disabled", "offline", "online"),
}


def _check_values(cfg: Config) -> None:
    flat = flatten_config(config_to_dict(cfg))
    for key in _POSITIVE_INTS:
        if flat[key] <= 0:
            raise ConfigError(f"{key} must be a positive integer, got {flat[key]!r}")
    for key in _NON_NEGATIVE_INTS:
        if flat[key] < 0:
            raise ConfigError(f"{key} must be >= 0, got {flat[key]!r}")
    for key in _POSITIVE_FLOATS:
        if not (flat[key] > 0 and math.isfinite(flat[key])):
            raise ConfigError(f"{key} must be a positive number, got {flat[key]!r}")
    for key, allowed in _CHOICES.items():
        if flat[key] not in allowed:
            raise ConfigError(f"{key} must be one of {', '.join(allowed)}; got {flat[key]!r}")
    if not (0.0 <= cfg.env.spin_ms and math.isfinite(cfg.env.spin_ms)):
        raise ConfigError(f"env.spin_ms must be a number >= 0, got {cfg.env.spin_ms!r}")
    if cfg.train.replay_delay not in (0, 1):
        raise ConfigError(f"train.replay_delay must be one of 0, 1; got {cfg.train.replay_delay!r}")
    if cfg.env.overlap and cfg.train.replay_delay != 1:
        raise ConfigError(
            f"env.overlap: true needs train.replay_delay: 1 (the update of step t runs while transition t is being "
            f"collected, so it cannot sample it); got train.replay_delay: {cfg.train.replay_delay}"
        )
    if not 0.0 <= cfg.agent.discount <= 1.0:
        raise ConfigError(f"agent.discount must lie in [0, 1], got {cfg.agent.discount!r}")
    if not 0.0 < cfg.agent.tau <= 1.0:
        raise ConfigError(f"agent.tau must lie in (0, 1], got {cfg.agent.tau!r}")
    if cfg.agent.log_std_min >= cfg.agent.log_std_max:
        raise ConfigError(
            f"agent.log_std_min ({cfg.agent.log_std_min}) must be below agent.log_std_max ({cfg.agent.log_std_max})"
        )
    if cfg.train.eval_async and cfg.train.eval_mode != "parallel":
        raise ConfigError(
            f"train.eval_async: true needs train.eval_mode: parallel (a sequential evaluation depends on the evaluation "
            f"env's RNG carried from one evaluation to the next, which an evaluation process cannot share); got "
            f"train.eval_mode: {cfg.train.eval_mode}"
        )
    if cfg.train.video_every % cfg.train.eval_every:
        raise ConfigError(
            f"train.video_every ({cfg.train.video_every}) must be 0 or a multiple of train.eval_every ({cfg.train.eval_every}): "
            f"videos are recorded at evaluations"
        )
    if cfg.train.wandb.mode != "disabled" and not cfg.train.wandb.project:
        raise ConfigError(f"train.wandb.project must be set when train.wandb.mode is {cfg.train.wandb.mode!r}")
    if cfg.seeds is not None:
        parse_seeds(cfg.seeds)
    _check_aggregator(cfg.aggregator)
    device = cfg.device
    if not (device in ("auto", "cpu", "cuda", "mps") or (device.startswith("cuda:") and device[5:].isdigit())):
        raise ConfigError(f"device must be one of auto, cpu, cuda, cuda:N, mps; got {device!r}")


def parse_seeds(text: str | int | Sequence[int]) -> list[int]:
    """Seeds of a population from ``"0-9"``, ``"0,3,7"``, ``"0-3,8"``, an int or a list of ints;
    distinct, in the order given. A clear error names the bad part."""
    if isinstance(text, int) and not isinstance(text, bool):
        parts: list[Any] = [text]
    elif isinstance(text, (list, tuple)):
        parts = list(text)
    else:
        parts = [p.strip() for p in str(text).split(",")]
    seeds: list[int] = []
    for part in parts:
        if isinstance(part, int) and not isinstance(part, bool):
            chunk = [part]
        else:
            match = re.fullmatch(r"(\d+)(?:-(\d+))?", str(part))
            if match is None or (match.group(2) is not None and int(match.group(2)) < int(match.group(1))):
                raise ConfigError(f"seeds: {part!r} is neither a seed (0, 1, ...) nor a range a-b with a <= b; e.g. 0-9 or 0,3,7")
            first = int(match.group(1))
            chunk = list(range(first, int(match.group(2) or first) + 1))
        if any(s < 0 for s in chunk):
            raise ConfigError(f"seeds: {part!r} is negative; seeds are integers >= 0")
        seeds += chunk
    if not seeds:
        raise ConfigError(f"seeds: {text!r} names no seed; e.g. 0-9 or 0,3,7")
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise ConfigError(f"seeds: {text!r} names seed(s) {repeated} more than once; each member needs its own seed")
    return seeds


def _check_aggregator(agg: AggregatorConfig) -> None:
    """The aggregator name and its options, checked by building it (errors name the valid ones)."""
    from mtrl.aggregators import make

    for field_name in ("options", "critic_options", "actor_options"):
        options = {**agg.options, **getattr(agg, field_name)} if field_name != "options" else agg.options
        try:
            make(agg.name, 1, **options)
        except ValueError as err:
            raise ConfigError(f"aggregator: {err}") from err


# ---------------------------------------------------------------------------------------------
# Generic dict <-> dataclass conversion with type checks.
# ---------------------------------------------------------------------------------------------
def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Check ``value`` against the annotation ``tp``; return it (ints accepted for floats)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(key, value, arg)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(f"{key} must be {' or '.join(_type_name(a) for a in args)}, got {value!r}")
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be a bool (true/false), got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an int, got {value!r} ({type(value).__name__})")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} must be a number, got {value!r} ({type(value).__name__})")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {value!r} ({type(value).__name__})")
        return value
    if dataclasses.is_dataclass(tp):
        return _from_dict(tp, value, key)
    raise ConfigError(f"{key}: unsupported type {tp!r}")  # pragma: no cover


def _from_dict(cls: type, data: Any, prefix: str = "") -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in names]
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(f"unknown key '{where}{unknown[0]}'; valid keys: {', '.join(names)}")
    kwargs = {k: _coerce(f"{prefix}.{k}" if prefix else k, v, hints[k]) for k, v in data.items()}
    return cls(**kwargs)


def config_from_dict(data: dict[str, Any]) -> Config:
    """Build and validate a ``Config`` from a nested dict (e.g. parsed YAML)."""
    cfg = _from_dict(Config, data)
    _check_values(cfg)
    return cfg


def config_to_dict(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2's float syntax: ``1e-3`` and ``3E+4`` are floats (PyYAML
    follows YAML 1.1, which needs a dot, ``1.0e-3``, and reads ``1e-3`` as the string "1e-3")."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


def load_yaml(text: str) -> Any:
    """Parse config YAML (``yaml.safe_load`` with YAML 1.2 floats: ``critic_lr: 1e-3`` is a float)."""
    return yaml.load(text, Loader=_Loader)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key=value`` overrides (dotted keys, YAML values) to a nested config dict."""
    import copy

    data = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value (e.g. train.total_steps=5000)")
        key, raw = item.split("=", 1)
        value = load_yaml(raw) if raw != "" else ""
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            nxt = node.setdefault(part, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"cannot set {key!r}: {part!r} is not a section")
            node = nxt
        node[parts[-1]] = value
    return data


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Load a YAML config, apply ``--set`` overrides, validate."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    data = load_yaml(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    return config_from_dict(apply_overrides(data, overrides or []))


def save_config(cfg: Config, path: str | Path) -> None:
    """Write ``cfg`` as YAML, atomically (temp file, fsync, rename): a crash leaves the old file or the new one."""
    from mtrl.metrics import atomic_write_text

    atomic_write_text(Path(path), yaml.safe_dump(config_to_dict(cfg), sort_keys=False))


def replace(cfg: Config, **changes: Any) -> Config:
    """Return a validated copy of ``cfg`` with top-level fields replaced."""
    out = dataclasses.replace(cfg, **changes)
    _check_values(out)
    return out


# ---------------------------------------------------------------------------------------------
# Flat keys and a run's identity: which keys may change when a run is resumed.
# ---------------------------------------------------------------------------------------------
#: Keys that may change on ``--resume``: none of them changes the numbers a run produces (logging,
#: the progress bar, env worker processes, where evaluations run, checkpoint cadence, W&B, videos, the run's label), except
#: ``train.total_steps``, which only says where the run stops. ``device`` may change too (runs move
#: between machines), but results then differ in their last bits: the trainer warns and records it.
#: A section name (``train.wandb``) covers every key below it. Every other key, including every key
#: added later, is part of the run's identity: ``config_changes`` marks a change of it as not allowed.
RESUME_ALLOWED = (
    "name",
    "seeds",
    "device",
    "train.total_steps",
    "train.log_every",
    "train.tensorboard",
    "train.progress",
    "train.video_every",
    "train.eval_async",
    "train.wandb",
    "env.workers",
    "env.local_shard",
    "env.spin_ms",
    "env.eval_envs",
    "checkpoint.every",
    "checkpoint.keep",
    "checkpoint.include_replay",
)

#: The value a key had in runs written before the key existed, where that is not today's default:
#: a config dict without the key means this value (``config_changes``, ``resolved_flat_config``),
#: and such a run keeps it when resumed or evaluated (``keep_legacy_values``). A key without an
#: entry here meant its default. Only identity keys need one (an allowed key changes nothing).
LEGACY_VALUES: dict[str, Any] = {
    # runs before episode-parallel evaluation played each task's episodes one after another on
    # the evaluation env (mtrl.evaluate.evaluate)
    "train.eval_mode": "sequential",
}

#: The mapping-valued fields whose entries are aggregator options (``flatten_config(options=True)``).
_OPTION_FIELDS = ("aggregator.options", "aggregator.critic_options", "aggregator.actor_options")


def _is_section(tp: Any) -> bool:
    return dataclasses.is_dataclass(tp)


def config_keys(cls: type = Config, prefix: str = "") -> list[str]:
    """Dotted names of every leaf key of the config dataclass ``cls`` (sections expanded; a mapping
    such as ``aggregator.options`` is one key), derived from the dataclasses themselves."""
    hints = typing.get_type_hints(cls)
    out: list[str] = []
    for f in dataclasses.fields(cls):
        full = f"{prefix}.{f.name}" if prefix else f.name
        out += config_keys(hints[f.name], full) if _is_section(hints[f.name]) else [full]
    return out


def flatten_config(data: dict[str, Any], prefix: str = "", options: bool = False, cls: Any = Config) -> dict[str, Any]:
    """A nested config dict as ``{dotted key: value}``: sections of ``Config`` are expanded, mapping-
    valued keys (the aggregator options) stay one value unless ``options``, which expands them into
    ``aggregator.options.<name>`` keys. Keys ``Config`` does not know (configs of other trainers)
    are expanded when they hold mappings."""
    hints = typing.get_type_hints(cls) if _is_section(cls) else {}
    out: dict[str, Any] = {}
    for key, value in data.items():
        full = f"{prefix}.{key}" if prefix else key
        tp = hints.get(key)
        if isinstance(value, dict) and (_is_section(tp) or tp is None or (options and full in _OPTION_FIELDS)):
            out.update(flatten_config(value, full, options, tp if _is_section(tp) else None))
        else:
            out[full] = value
    return out


def is_resume_allowed(key: str) -> bool:
    """True when ``key`` may change on resume (``RESUME_ALLOWED``, sections included)."""
    return any(key == allowed or key.startswith(allowed + ".") for allowed in RESUME_ALLOWED)


def identity_keys(cls: type = Config) -> list[str]:
    """Every config key that is part of a run's identity: all keys of ``cls`` but ``RESUME_ALLOWED``."""
    return [key for key in config_keys(cls) if not is_resume_allowed(key)]


def resolved_flat_config(data: dict[str, Any]) -> dict[str, Any]:
    """What a config dict means, as flat keys: validated, absent keys at their ``LEGACY_VALUES``
    where they have one, else at their defaults (a key missing from an older run's config.yaml
    meant the behaviour it had before the key existed: its default, unless the default changed
    when the key came), and the aggregator
    options expanded, ``aggregator.options.<name>`` with every option of the aggregator at its
    default unless set (``critic_options`` and ``actor_options`` hold only their overrides)."""
    missing = legacy_values(data)
    cfg = config_from_dict(with_values(data, missing))
    flat = flatten_config(config_to_dict(cfg), options=True)
    from mtrl.aggregators import REGISTRY

    for name, default in REGISTRY[cfg.aggregator.name].option_defaults().items():
        flat.setdefault(f"aggregator.options.{name}", default)
    return flat


@dataclass(frozen=True)
class ConfigChange:
    """One flat key whose value differs between two configs (``ABSENT`` where one lacks it)."""

    key: str
    old: Any
    new: Any

    @property
    def allowed(self) -> bool:
        return is_resume_allowed(self.key)

    def describe(self) -> str:
        return f"{self.key}: {_show(self.old)} -> {_show(self.new)}"


class _Absent:
    def __repr__(self) -> str:
        return "(absent)"


#: The value of a key one config does not have (an option of another aggregator).
ABSENT: Any = _Absent()


def _show(value: Any) -> str:
    return repr(value) if value is not ABSENT else "(absent)"


def config_changes(old: dict[str, Any], new: dict[str, Any]) -> list[ConfigChange]:
    """Every flat key whose meaning differs between the config dicts ``old`` and ``new`` (both
    resolved with ``resolved_flat_config``: absent keys at their legacy values or defaults), in
    key order."""
    a, b = resolved_flat_config(old), resolved_flat_config(new)
    return [ConfigChange(key, a.get(key, ABSENT), b.get(key, ABSENT)) for key in sorted(set(a) | set(b))
            if a.get(key, ABSENT) != b.get(key, ABSENT)]


# ---------------------------------------------------------------------------------------------
# Legacy values: what a run written before a key existed keeps.
# ---------------------------------------------------------------------------------------------
def with_values(data: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """A copy of the nested config dict ``data`` with the flat ``values`` set."""
    import copy

    data = copy.deepcopy(data)
    for key, value in values.items():
        *sections, name = key.split(".")
        node = data
        for section in sections:
            node = node.setdefault(section, {})
        node[name] = value
    return data


def legacy_values(data: dict[str, Any]) -> dict[str, Any]:
    """The ``LEGACY_VALUES`` of the keys the config dict ``data`` lacks (a run written before they existed)."""
    flat = flatten_config(data)
    return {key: value for key, value in LEGACY_VALUES.items() if key not in flat}


def keep_legacy_values(cfg: Config, saved: dict[str, Any]) -> tuple[Config, dict[str, Any]]:
    """``cfg`` for a run whose config as written is ``saved`` (a config dict): every key ``saved``
    lacks that has a legacy value takes it where ``cfg`` holds today's default (which is all a
    config read from such a run can hold; another value is a change, for ``config_changes`` to
    judge). Returns the config and the values it kept, ``{key: legacy value}`` (empty: ``cfg``)."""
    flat = flatten_config(config_to_dict(cfg))
    defaults = flatten_config(config_to_dict(Config()))
    kept = {key: value for key, value in legacy_values(saved).items() if flat.get(key) == defaults.get(key) != value}
    if not kept:
        return cfg, {}
    return config_from_dict(with_values(config_to_dict(cfg), kept)), kept


def describe_legacy_values(source: Any, kept: dict[str, Any]) -> str:
    """The line that says which legacy values ``source`` (a run directory or checkpoint) keeps."""
    keys = ", ".join(kept)
    values = ", ".join(f"{key}: {value}" for key, value in kept.items())
    return f"{source} was written before {keys} existed: it keeps what it had then, {values}"
