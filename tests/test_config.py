"""Config loading: every shipped config is valid; bad keys, types and ranges are named."""

from __future__ import annotations

from pathlib import Path

import pytest

from mtrl.aggregators import REGISTRY, make
from mtrl.config import ConfigError, apply_overrides, config_from_dict, load_config

ROOT = Path(__file__).resolve().parents[1]
RUN_CONFIGS = sorted(p for p in (ROOT / "configs").rglob("*.yaml") if "sweeps" not in p.parts)


@pytest.mark.parametrize("path", RUN_CONFIGS, ids=lambda p: str(p.relative_to(ROOT / "configs")))
def test_shipped_config_is_valid_and_its_aggregator_builds(path):
    cfg = load_config(path)
    assert cfg.aggregator.name in REGISTRY, f"{path}: unknown aggregator {cfg.aggregator.name}"
    make(cfg.aggregator.name, 10, **{**cfg.aggregator.options, **cfg.aggregator.critic_options})


def test_every_registry_method_has_an_mt10_config():
    names = {load_config(p).aggregator.name for p in (ROOT / "configs" / "mt10").glob("*.yaml")}
    assert set(REGISTRY) - names == set()


@pytest.mark.parametrize(
    "data, message",
    [
        ({"train": {"batchsize": 3}}, "unknown key 'train.batchsize'; valid keys: total_steps, batch_size"),
        ({"trian": {}}, "unknown key 'trian'; valid keys: name, seed"),
        ({"train": {"total_steps": 1.5}}, "train.total_steps must be an int, got 1.5"),
        ({"train": {"total_steps": 0}}, "train.total_steps must be a positive integer, got 0"),
        ({"train": {"batch_size": -4}}, "train.batch_size must be a positive integer, got -4"),
        ({"agent": {"variant": "xx"}}, "agent.variant must be one of mt, te, mh; got 'xx'"),
        ({"agent": {"actor_lr": "fast"}}, "agent.actor_lr must be a number, got 'fast'"),
        ({"train": {"progress": "yes"}}, "train.progress must be a bool"),
        ({"device": "gpu"}, "device must be one of auto, cpu, cuda, cuda:N, mps; got 'gpu'"),
        ({"seed": -1}, "seed must be >= 0, got -1"),
        ({"env": {"eval_goals": "test"}}, "env.eval_goals must be one of train, heldout; got 'test'"),
        ({"aggregator": {"name": "nash"}}, "unknown aggregator 'nash'; registered: auxilearn, auxinash, cagrad"),
        ({"aggregator": {"name": "nashmtl", "options": {"T": 5}}}, "unknown option(s) ['T'] for aggregator 'nashmtl'; accepted: update_every"),
        ({"aggregator": {"name": "cagrad", "options": {"c": -1}}}, "invalid value -1 for option 'c'"),
        ({"train": {"wandb": {"mode": "on"}}}, "train.wandb.mode must be one of disabled, offline, online; got 'on'"),
        ({"train": {"wandb": {"mode": "offline"}}}, "train.wandb.project must be set when train.wandb.mode is 'offline'"),
        ({"train": {"wandb": {"projekt": "x"}}}, "unknown key 'train.wandb.projekt'; valid keys: mode, project"),
        ({"train": {"video_every": 15000}}, "train.video_every (15000) must be 0 or a multiple of train.eval_every (10000)"),
    ],
)
def test_bad_config_names_the_key_and_the_allowed_values(data, message):
    with pytest.raises(ConfigError) as err:
        config_from_dict(data)
    assert message in str(err.value)


def test_overrides_go_through_the_same_checks():
    data = apply_overrides({}, ["train.total_steps=500", "aggregator.name=cagrad", "aggregator.options.c=0.4", "seed=0"])
    cfg = config_from_dict(data)
    assert cfg.train.total_steps == 500 and cfg.aggregator.options == {"c": 0.4} and cfg.seed == 0
    with pytest.raises(ConfigError, match="unknown key 'train.totalsteps'"):
        config_from_dict(apply_overrides({}, ["train.totalsteps=5"]))
    with pytest.raises(ConfigError, match="must look like key=value"):
        apply_overrides({}, ["train.total_steps"])


def test_ints_are_accepted_where_floats_are_expected():
    cfg = config_from_dict({"agent": {"actor_lr": 1}})
    assert isinstance(cfg.agent.actor_lr, float)


def test_floats_in_exponent_notation_are_floats_in_files_and_overrides(tmp_path):
    """YAML 1.2's float syntax: ``1e-3`` is a float in a config file and in ``--set`` (PyYAML's
    YAML 1.1 alone reads it as the string "1e-3", which the type check then refused)."""
    from mtrl.config import load_config, load_yaml

    path = tmp_path / "c.yaml"
    path.write_text("agent:\n  critic_lr: 1e-3\n  actor_lr: 3E-4\n")
    cfg = load_config(path, ["agent.alpha_lr=2e-4", "aggregator.options={max_norm: 1e0}"])
    assert (cfg.agent.critic_lr, cfg.agent.actor_lr, cfg.agent.alpha_lr) == (0.001, 0.0003, 0.0002)
    assert cfg.aggregator.options == {"max_norm": 1.0}
    assert load_yaml("a: 1\nb: '1e-3'\nc: 0-9\nd: 1.5") == {"a": 1, "b": "1e-3", "c": "0-9", "d": 1.5}
