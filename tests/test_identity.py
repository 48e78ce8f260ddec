"""A resume cannot silently change a run (issue 21, part 2) and every run records what produced it
(part 3): keys outside the allow-list are refused on resume with their old and new values unless
forced; forced and allowed changes go into config_history.jsonl while config.yaml keeps the
run's start; older config.yaml files lacking a key resume; provenance.jsonl gets one record per
start and resume. Tiny Point-3 runs in process (a few seconds each)."""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from pathlib import Path

import pytest
import torch
import yaml

from mtrl import provenance
from mtrl.aggregators import REGISTRY
from mtrl.checkpoint import load_latest
from mtrl.config import (
    RESUME_ALLOWED, AgentConfig, Config, ConfigError, config_changes, config_from_dict, config_keys, config_to_dict,
    identity_keys, is_resume_allowed, with_values,
)
from mtrl.runs import effective_config_dict, load_run_config, read_config_history
from mtrl.train import train
from tests.test_resume import _assert_same_tensors

TINY = {
    "name": "identity",
    "seed": 5,
    "device": "cpu",
    "env": {"benchmark": "Point-2", "max_episode_steps": 20},
    "agent": {"hidden_dim": 16, "num_layers": 1},
    "aggregator": {"name": "nashmtl", "options": {"update_every": 2}},
    "train": {"total_steps": 120, "warmup_steps": 40, "batch_size": 16, "replay_capacity": 400, "eval_every": 60,
              "eval_episodes": 1, "log_every": 20, "progress": False},
    "checkpoint": {"every": 60, "keep": 2},
}


def cfg(**changes) -> Config:
    return config_from_dict(with_values(TINY, changes))


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished run of TINY (120 steps, checkpoints at 60 and 120)."""
    run = tmp_path_factory.mktemp("finished")
    train(cfg(), run)
    return run


def _snapshot(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


# ---- the rule -----------------------------------------------------------------------------------
def test_identity_is_every_config_key_but_the_allow_list():
    keys = config_keys()
    assert set(identity_keys()) == {k for k in keys if not is_resume_allowed(k)}
    for key in ("agent.critic_lr", "agent.discount", "agent.tau", "agent.init_temperature", "agent.target_entropy",
                "agent.log_std_min", "train.warmup_steps", "agent.actor_update_every", "train.eval_every",
                "train.eval_episodes", "env.eval_terminate_on_success", "aggregator.jacobian", "agent.compile"):
        assert key in identity_keys(), key
    for key in ("train.total_steps", "train.log_every", "env.workers", "checkpoint.every", "train.wandb.mode", "device", "name"):
        assert key not in identity_keys() and key in keys, key
    assert all(any(k == a or k.startswith(a + ".") for k in keys) for a in RESUME_ALLOWED)  # no stale allow-list entry


def test_a_key_added_later_joins_the_identity_by_itself():
    """The rule is derived from the dataclasses: a new option is part of the identity unless allowed."""
    Agent2 = dataclasses.make_dataclass("Agent2", [("overlap_collection", bool, False)], bases=(AgentConfig,), frozen=True)
    Config2 = dataclasses.make_dataclass("Config2", [("agent", Agent2, dataclasses.field(default_factory=Agent2))], bases=(Config,), frozen=True)
    assert "agent.overlap_collection" in identity_keys(Config2)
    assert "agent.overlap_collection" not in identity_keys(Config)


def test_config_changes_compare_meanings_not_spellings():
    base = config_to_dict(cfg())
    assert config_changes(base, config_to_dict(cfg())) == []
    # an option set explicitly at its default changes nothing; at another value it is named
    default = REGISTRY["nashmtl"].option_defaults()["max_norm"]
    assert config_changes(base, config_to_dict(cfg(**{"aggregator.options": {"update_every": 2, "max_norm": default}}))) == []
    (change,) = config_changes(base, config_to_dict(cfg(**{"aggregator.options": {"update_every": 3}})))
    assert (change.key, change.old, change.new, change.allowed) == ("aggregator.options.update_every", 2, 3, False)


# ---- refused, forced, allowed -----------------------------------------------------------------
def test_a_resume_that_changes_an_identity_key_is_refused_naming_key_old_and_new(finished, tmp_path):
    before = _snapshot(finished)
    with pytest.raises(ConfigError) as err:
        train(cfg(**{"agent.critic_lr": 1e-3, "agent.discount": 0.9, "train.total_steps": 180}), finished, resume="auto")
    message = str(err.value)
    assert "agent.critic_lr: 0.0003 -> 0.001" in message and "agent.discount: 0.99 -> 0.9" in message
    assert "train.total_steps" not in message.split("only")[0]  # the allowed change is not among the refused ones
    assert "--force" in message and "train.total_steps" in message  # says what may change and how to override
    assert _snapshot(finished) == before  # nothing written


def _copy_run(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_forced_and_allowed_changes_are_recorded_and_config_yaml_keeps_the_start(finished, tmp_path):
    run = _copy_run(finished, tmp_path / "run")
    original = (run / "config.yaml").read_bytes()
    result = train(cfg(**{"train.total_steps": 180, "train.log_every": 30}), run, resume="auto")
    assert result.steps_done == 180
    history = read_config_history(run)
    assert [(r["step"], r["key"], r["old"], r["new"], r["change"]) for r in history] == [
        (120, "train.log_every", 20, 30, "allowed"), (120, "train.total_steps", 120, 180, "allowed"),
    ]
    assert (run / "config.yaml").read_bytes() == original  # the start, not the resume's values
    # the config the run has now is config.yaml with the history: a plain --resume continues with it
    now = load_run_config(run)
    assert now.train.total_steps == 180 and now.train.log_every == 30 and now.agent.critic_lr == 3e-4
    assert load_latest(run)[0]["config"]["train"]["total_steps"] == 180

    forced = train(cfg(**{"train.total_steps": 240, "train.log_every": 30, "agent.critic_lr": 1e-3}), run, resume="auto", force=True)
    assert forced.steps_done == 240
    history = read_config_history(run)
    assert {(r["key"], r["old"], r["new"], r["change"]) for r in history[2:]} == {
        ("agent.critic_lr", 3e-4, 1e-3, "forced"), ("train.total_steps", 180, 240, "allowed"),
    }
    assert all(r["step"] == 180 for r in history[2:])
    assert (run / "config.yaml").read_bytes() == original
    assert effective_config_dict(run)["agent"]["critic_lr"] == 1e-3
    # the forced resume is not exact and says so
    last = provenance.read_provenance(run)[-1]
    assert last["event"] == "resume" and last["step"] == 180 and last["resume"]["exact"] is False
    assert any("agent.critic_lr" in note for note in last["resume"]["notes"])
    # resuming again with the now-current config is no change at all
    again = train(cfg(**{"train.total_steps": 240, "train.log_every": 30, "agent.critic_lr": 1e-3}), run, resume="auto")
    assert again.steps_done == 240 and len(read_config_history(run)) == 4


def test_an_older_config_yaml_without_a_key_resumes_as_that_key_s_default(finished, tmp_path):
    run = _copy_run(finished, tmp_path / "run")
    data = yaml.safe_load((run / "config.yaml").read_text())
    del data["agent"]["adam"], data["env"]["eval_goals"], data["train"]["video_every"]  # keys added after the run
    (run / "config.yaml").write_text(yaml.safe_dump(data))
    assert train(cfg(**{"train.total_steps": 140}), run, resume="auto").steps_done == 140
    assert [r["key"] for r in read_config_history(run)] == ["train.total_steps"]
    # an absent key stands for its default, not for any value
    with pytest.raises(ConfigError, match="agent.adam: 'fused' -> 'foreach'"):
        train(cfg(**{"train.total_steps": 160, "agent.adam": "foreach"}), run, resume="auto")


def test_resuming_with_every_allowed_change_gives_the_uninterrupted_run(finished, tmp_path):
    """The allow-list's promise: logging, checkpoint cadence and the label change no number."""
    run = tmp_path / "run"
    train(cfg(**{"train.total_steps": 60}), run)
    changed = {"train.log_every": 7, "checkpoint.every": 25, "checkpoint.keep": 1, "name": "renamed", "checkpoint.include_replay": False}
    train(cfg(**changed), run, resume="auto")
    assert (run / "eval.csv").read_text() == (finished / "eval.csv").read_text()
    _assert_same_tensors(load_latest(run)[0]["agent"], load_latest(finished)[0]["agent"])  # networks and optimizers
    assert sorted(r["key"] for r in read_config_history(run)) == sorted(changed) + ["train.total_steps"]


# ---- provenance -------------------------------------------------------------------------------
def test_every_start_and_resume_records_its_provenance(finished, tmp_path):
    records = provenance.read_provenance(finished)
    assert [r["event"] for r in records] == ["start"]
    first = records[0]
    assert first["packages"]["torch"] == torch.__version__
    assert set(first["packages"]) >= {"torch", "numpy", "gymnasium", "metaworld", "mujoco", "mtrl"}
    assert first["device"] == "cpu" and first["cpu"]["count"] == os.cpu_count()
    assert first["torch"]["threads"] == torch.get_num_threads() and first["torch"]["cpu_capability"]
    assert first["python"]["version"] and first["host"] and first["time"].endswith("+00:00")
    run = _copy_run(finished, tmp_path / "run")
    train(cfg(**{"train.total_steps": 140}), run, resume="auto")
    records = provenance.read_provenance(run)
    assert [(r["event"], r["step"]) for r in records] == [("start", 0), ("resume", 120)]
    assert records[1]["resume"] == {"exact": True, "notes": []}


def test_a_resume_on_another_device_is_allowed_but_warned_and_recorded(finished, tmp_path):
    run = _copy_run(finished, tmp_path / "run")
    path = run / "provenance.jsonl"
    record = json.loads(path.read_text())
    record["device"] = "cuda:0"  # as if the run had started on a GPU machine
    path.write_text(json.dumps(record) + "\n")
    with pytest.warns(UserWarning, match="ran on cuda:0 and resumes on cpu.*not exact"):
        train(cfg(**{"train.total_steps": 140}), run, resume="auto")
    device = next(r for r in read_config_history(run) if r["key"] == "device")
    assert (device["old_resolved"], device["new_resolved"], device["change"]) == ("cuda:0", "cpu", "allowed")
    assert provenance.read_provenance(run)[-1]["resume"]["exact"] is False


def test_git_state_without_a_checkout_or_without_git(tmp_path, monkeypatch):
    assert provenance.git_state(tmp_path) == {"commit": None, "dirty": None, "git": "not a git checkout"}
    (tmp_path / ".git").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))
    state = provenance.git_state(tmp_path)
    assert state["commit"] is None and state["git"].startswith("git did not run")


def test_git_state_of_this_checkout_names_its_commit():
    root = Path(__file__).resolve().parents[1]
    if not (root / ".git").exists():
        pytest.skip("the tests do not run from a git checkout")
    state = provenance.git_state(root)
    if state["git"] != "ok":
        pytest.skip(f"git unusable here: {state['git']}")
    assert len(state["commit"]) == 40 and isinstance(state["dirty"], bool)
