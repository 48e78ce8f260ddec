"""Run configuration: frozen dataclasses loaded from YAML, validated before anything is built.

Every key, type and range is checked: an unknown key names the valid ones, a wrong type names the
expected one. ``--set key=value`` overrides go through the same check (values parsed as YAML).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "AgentConfig",
    "AggregatorConfig",
    "CheckpointConfig",
    "Config",
    "ConfigError",
    "EnvConfig",
    "TrainConfig",
    "WandbConfig",
    "apply_overrides",
    "config_from_dict",
    "config_to_dict",
    "load_config",
    "save_config",
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
            own RNG) or "heldout" (a disjoint set sampled from another seed, for generalisation
            studies; what evaluation used before this option existed).
        workers: run the MetaWorld tasks in this many worker processes (tasks split evenly, at
            most one worker per task; ``envs/workers.py``); 1 steps them in the training process.
            Any value gives the same trajectories; the evaluation env uses as many.
        local_shard: with ``workers`` N > 1, the training process steps one of the N shares of
            the tasks itself while N - 1 worker processes step the others (it would otherwise
            wait idle; measured faster, ``envs/workers.py``); false: N worker processes.
        spin_ms: with ``workers`` > 1, how long a waiting process polls its pipe before it
            sleeps (the budget adapts; 0: sleep at once). Waking a sleeping process costs up to
            milliseconds on a VM; off by itself when the stepping processes outnumber the cores
            (``envs/workers.py``). Never changes a result.
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
    eval_envs: int = 100


@dataclass(frozen=True)
class AgentConfig:
    """Multi-task SAC (defaults: the MTRL/CARE MT10 protocol, DESIGN §4).

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
        replay_capacity: total replay capacity over tasks (split evenly).
        eval_every: evaluate every N steps (and at the end).
        eval_episodes: evaluation episodes per task.
        eval_mode: how evaluations play their episodes (docs/evaluation.md): "parallel" (each
            episode a pure function of the run's seed, the evaluation's step, the task and the
            episode, all episodes in lock-step over up to ``env.eval_envs`` env instances) or
            "sequential" (each task plays its episodes one after another on the evaluation env,
            whose RNG carries over from one evaluation to the next: the evaluation of runs
            written before this key existed, which keep it when resumed).
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
    replay_capacity: int = 1_000_000
    eval_every: int = 10_000
    eval_episodes: int = 10
    eval_mode: str = "parallel"
    log_every: int = 1000
    tensorboard: bool = False
    progress: bool = True
    video_every: int = 0
    wandb: WandbConfig = field(default_factory=WandbConfig)


@dataclass(frozen=True)
class CheckpointConfig:
    """Checkpointing (DESIGN §6).

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
    """

    name: str = "run"
    seed: int = 0
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
    flat = _flatten(config_to_dict(cfg))
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
    if not 0.0 <= cfg.agent.discount <= 1.0:
        raise ConfigError(f"agent.discount must lie in [0, 1], got {cfg.agent.discount!r}")
    if not 0.0 < cfg.agent.tau <= 1.0:
        raise ConfigError(f"agent.tau must lie in (0, 1], got {cfg.agent.tau!r}")
    if cfg.agent.log_std_min >= cfg.agent.log_std_max:
        raise ConfigError(
            f"agent.log_std_min ({cfg.agent.log_std_min}) must be below agent.log_std_max ({cfg.agent.log_std_max})"
        )
    if cfg.train.video_every % cfg.train.eval_every:
        raise ConfigError(
            f"train.video_every ({cfg.train.video_every}) must be 0 or a multiple of train.eval_every ({cfg.train.eval_every}): "
            f"videos are recorded at evaluations"
        )
    if cfg.train.wandb.mode != "disabled" and not cfg.train.wandb.project:
        raise ConfigError(f"train.wandb.project must be set when train.wandb.mode is {cfg.train.wandb.mode!r}")
    _check_aggregator(cfg.aggregator)
    device = cfg.device
    if not (device in ("auto", "cpu", "cuda", "mps") or (device.startswith("cuda:") and device[5:].isdigit())):
        raise ConfigError(f"device must be one of auto, cpu, cuda, cuda:N, mps; got {device!r}")


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


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        full = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict) and key not in ("options", "critic_options", "actor_options"):
            out.update(_flatten(value, full))
        else:
            out[full] = value
    return out


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key=value`` overrides (dotted keys, YAML values) to a nested config dict."""
    import copy

    data = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value (e.g. train.total_steps=5000)")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw != "" else ""
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
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    return config_from_dict(apply_overrides(data, overrides or []))


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))


def replace(cfg: Config, **changes: Any) -> Config:
    """Return a validated copy of ``cfg`` with top-level fields replaced."""
    out = dataclasses.replace(cfg, **changes)
    _check_values(out)
    return out
