"""A population trained in one process (``mtrl train --seeds``, ``mtrl.train.train_population``):
each member's outputs are those of its single run, and a member's numbers do not depend on which
other members train beside it (CPU, one thread: bit for bit).

Most tests use the synthetic point-mass tasks (fast); one trains MetaWorld MT10 members."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from mtrl.checkpoint import checkpoint_steps, list_checkpoints, load_latest
from mtrl.config import ConfigError, config_from_dict, load_config, parse_seeds
from mtrl.metrics import read_status
from mtrl.train import member_run_dir, train, train_population
from tests.helpers import tiny_mt10
from tests.test_resume import ENV, POINT as RESUME_POINT

#: test_resume's point-mass config on four tasks (the shapes at which members are bit-exact with
#: single runs, agents/population.py); 25-step episodes: checkpoints fall inside episodes
POINT = {
    **RESUME_POINT, "name": "pop", "seed": 0, "env": {"benchmark": "Point-4", "max_episode_steps": 25},
    "train": {**RESUME_POINT["train"], "total_steps": 160, "warmup_steps": 40, "replay_capacity": 2000, "eval_every": 80,
              "log_every": 20},
    "checkpoint": {"every": 70, "keep": 2},
}
METHODS = {
    "ls": {"name": "ls"},
    "nashmtl": {"name": "nashmtl", "options": {"update_every": 1}},
    "nashmtl_t": {"name": "nashmtl", "options": {"update_every": 3}},
    "cagrad_fast": {"name": "cagrad_fast", "options": {"num_sampled": 2, "c": 0.5}},
    "famo": {"name": "famo"},
}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _config(method: str, **train: object):
    data = {**POINT, "aggregator": METHODS[method], "train": {**POINT["train"], **train}}
    return config_from_dict(data)


def _logged(run_dir: Path, name: str = "metrics.jsonl") -> list:
    """Every row of ``name`` (metrics.jsonl, diagnostics.jsonl) without the wall-clock timings
    (``time/*``, ``<component>/time`` and ``<component>/jacobian``: seconds)."""
    rows = [json.loads(line) for line in (run_dir / name).read_text().splitlines()]
    timing = ("/time", "/jacobian")
    return [{k: v for k, v in row.items() if not k.startswith("time/") and not k.endswith(timing)} for row in rows]


#: the gradient diagnostics a run logs on log steps (a member's too: agents/population.py)
DIAGNOSTICS = {f"{c}/{k}" for c in ("critic", "actor") for k in ("conflict", "direction_norm", "served", "task_grad_norm")}


def _assert_same_run(run: Path, reference: Path) -> None:
    """eval.csv, metrics.jsonl and diagnostics.jsonl (timings aside) and the final parameters."""
    assert (run / "eval.csv").read_text() == (reference / "eval.csv").read_text()
    for name in ("metrics.jsonl", "diagnostics.jsonl"):
        ours, theirs = _logged(run, name), _logged(reference, name)
        assert len(ours) == len(theirs), name
        assert ours == theirs, name
    updated = [row for row in _logged(run) if "critic/loss" in row]  # log lines after warm-up
    assert updated and all(DIAGNOSTICS <= set(row) for row in updated), "a log line with an update has its diagnostics"
    assert len(_logged(run, "diagnostics.jsonl")) == len(updated)
    a, b = load_latest(run)[0]["agent"], load_latest(reference)[0]["agent"]
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key


# ---- member independence and equality with single runs ---------------------------------------------
@pytest.mark.parametrize("method", ["ls", "nashmtl", "cagrad_fast", "famo", "nashmtl_t"])
def test_member_equals_the_same_member_in_another_population(method, tmp_path):
    """Member 5 of {2, 5, 7} equals member 5 of {5, 9} bit for bit: eval.csv, every logged loss,
    weight and metric, and the final parameters."""
    cfg = _config(method)
    big = train_population(cfg, [2, 5, 7], tmp_path / "big" / "seed{seed}")
    small = train_population(cfg, [5, 9], tmp_path / "small" / "seed{seed}")
    assert [r.steps_done for r in big + small] == [160] * 5
    _assert_same_run(tmp_path / "big" / "seed5", tmp_path / "small" / "seed5")


@pytest.mark.parametrize("method", ["ls", "nashmtl", "famo", "nashmtl_t"])
def test_member_equals_its_single_run(method, tmp_path):
    """A member's run directory holds what ``mtrl train --seed N`` writes, bit for bit."""
    cfg = _config(method)
    train_population(cfg, [1, 4], tmp_path / "pop" / "seed{seed}")
    train(config_from_dict({**POINT, "seed": 4, "aggregator": METHODS[method]}), tmp_path / "single")
    _assert_same_run(tmp_path / "pop" / "seed4", tmp_path / "single")
    written = yaml.safe_load((tmp_path / "pop" / "seed4" / "config.yaml").read_text())
    assert written["seed"] == 4 and written.get("seeds") is None  # a member's config is its single run's


def test_cagrad_fast_member_stays_close_to_its_single_run(tmp_path):
    """CAGrad-Fast groups the sampled tasks' rows on the host in a population (the aggregator's own
    full-G path) and on the device in a single run: equal up to rounding (agents/population.py)."""
    cfg = _config("cagrad_fast")
    train_population(cfg, [1, 4], tmp_path / "pop" / "seed{seed}")
    train(config_from_dict({**POINT, "seed": 4, "aggregator": METHODS["cagrad_fast"]}), tmp_path / "single")
    a, b = load_latest(tmp_path / "pop" / "seed4")[0]["agent"]["model"], load_latest(tmp_path / "single")[0]["agent"]["model"]
    num = sum(float((a[k].double() - b[k].double()).pow(2).sum()) for k in a) ** 0.5
    den = sum(float(b[k].double().pow(2).sum()) for k in b) ** 0.5
    assert num / den <= 1e-6


# ---- checkpoints, resume, faults ---------------------------------------------------------------------
def test_population_stopped_at_a_checkpoint_resumes_exactly_and_a_member_resumes_alone(tmp_path):
    """A population interrupted after its mid-episode checkpoint at step 70 (a crash while the
    third member writes the checkpoint of step 140) resumes from step 70, the newest step all
    members have, and ends as the uninterrupted population; one member resumed alone as a single
    run from its own directory ends the same too."""
    cfg = _config("nashmtl_t")
    train_population(cfg, [0, 1, 2], tmp_path / "straight" / "seed{seed}")

    writes = []

    def crash_on_the_third_write_of_step_140(path: Path, save) -> None:
        if "step_000000140" in path.name:
            writes.append(path)
            if len(writes) == 3:
                raise KeyboardInterrupt  # as a kill would: nothing after it runs
        with open(path, "wb") as handle:
            save(handle)
            handle.flush()

    with pytest.raises(KeyboardInterrupt):
        train_population(cfg, [0, 1, 2], tmp_path / "killed" / "seed{seed}", checkpoint_writer=crash_on_the_third_write_of_step_140)
    killed = [tmp_path / "killed" / f"seed{s}" for s in (0, 1, 2)]
    assert [checkpoint_steps(d) for d in killed] == [[70, 140], [70, 140], [70]]  # nothing pruned before all wrote
    alone = tmp_path / "alone"
    import shutil

    shutil.copytree(killed[1], alone)
    results = train_population(cfg, [0, 1, 2], tmp_path / "killed" / "seed{seed}", resume="auto")
    assert [r.steps_done for r in results] == [160] * 3
    for s in (0, 1, 2):
        _assert_same_run(tmp_path / "killed" / f"seed{s}", tmp_path / "straight" / f"seed{s}")
    member = load_config(alone / "config.yaml")
    train(member, alone, resume=str(alone))  # resumes from its own newest checkpoint (step 140)
    _assert_same_run(alone, tmp_path / "straight" / "seed1")


def _start(config: Path, template: str, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "mtrl.cli", "train", str(config), "--seeds", "3,8", "--run-dir", template, *extra]
    return subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_killed_or_stopped_population_resumes_as_the_uninterrupted_one(stop, tmp_path):
    """SIGKILL after a mid-episode checkpoint, or SIGTERM (the population stops with a checkpoint
    of the step it reached, exit 143, status interrupted): resumed, every member ends as in the
    uninterrupted population."""
    config = tmp_path / "pop.yaml"
    config.write_text(yaml.safe_dump({**POINT, "aggregator": METHODS["ls"], "train": {**POINT["train"], "total_steps": 400}}))
    straight = _start(config, str(tmp_path / "straight" / "seed{seed}"))
    assert straight.wait(timeout=600) == 0, straight.stderr.read()[-3000:]
    proc = _start(config, str(tmp_path / "killed" / "seed{seed}"))
    deadline = time.monotonic() + 600
    while not all(len(list_checkpoints(tmp_path / "killed" / f"seed{s}")) >= 2 for s in (3, 8)):
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.02)
    proc.send_signal(stop)
    assert proc.wait() == (-signal.SIGKILL if stop == signal.SIGKILL else 143)
    if stop == signal.SIGTERM:
        for s in (3, 8):
            status = read_status(tmp_path / "killed" / f"seed{s}")
            assert status["state"] == "interrupted" and checkpoint_steps(tmp_path / "killed" / f"seed{s}")[-1] == status["step"]
    resumed = _start(config, str(tmp_path / "killed" / "seed{seed}"), "--resume", "auto")
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read()[-3000:]
    for s in (3, 8):
        _assert_same_run(tmp_path / "killed" / f"seed{s}", tmp_path / "straight" / f"seed{s}")
        assert read_status(tmp_path / "killed" / f"seed{s}")["state"] == "finished"


def test_a_finished_member_is_left_out_of_a_resume(tmp_path, capsys):
    cfg = _config("ls", total_steps=80)
    train_population(cfg, [0, 1], tmp_path / "seed{seed}")
    results = train_population(cfg, [0, 1], tmp_path / "seed{seed}", resume="auto")
    assert [r.steps_done for r in results] == [80, 80]
    assert capsys.readouterr().err.count("already finished") == 2


# ---- input ---------------------------------------------------------------------------------------------
def test_seeds_syntax_and_errors():
    assert parse_seeds("0-3,8") == [0, 1, 2, 3, 8]
    assert parse_seeds("0,3,7") == [0, 3, 7]
    assert parse_seeds(5) == [5]
    for bad, named in [("3-1", "'3-1'"), ("x", "'x'"), ("0,0", "[0]"), ("", "''")]:
        with pytest.raises(ConfigError, match=named.replace("[", r"\[").replace("]", r"\]")):
            parse_seeds(bad)
    with pytest.raises(ConfigError, match=r"\{seed\}"):
        member_run_dir("runs/pop", 3)
    assert member_run_dir("runs/x/seed{seed}", 3) == Path("runs/x/seed3")


def test_unsupported_population_settings_are_refused_before_anything_is_written(tmp_path):
    cfg = config_from_dict({**POINT, "aggregator": {"name": "auxinash", "options": {"hyper_every": 7}}, "main_task": "point-1"})
    with pytest.raises(ValueError, match="auxinash"):
        train_population(cfg, [0, 1], tmp_path / "seed{seed}")
    assert not (tmp_path / "seed0").exists()


def test_cli_seeds_and_seed_together_is_an_error(tmp_path):
    config = tmp_path / "pop.yaml"
    config.write_text(yaml.safe_dump({**POINT, "aggregator": METHODS["ls"]}))
    out = subprocess.run([sys.executable, "-m", "mtrl.cli", "train", str(config), "--seeds", "0-1", "--seed", "3"],
                         env=ENV, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode != 0 and "--seed" in out.stderr and "--seeds" in out.stderr


def test_a_failing_member_is_marked_failed_and_the_others_go_on_unchanged(tmp_path, monkeypatch):
    """Member 5's critic aggregator raises at its 31st call: its status.json says failed with the
    cause, its outputs stop there, and members 2 and 7 end exactly as in a population without a
    failure; a later --resume of the population leaves member 5 out."""
    import mtrl.train as train_module

    real = train_module._build_aggregators

    def build(cfg, num_tasks):
        aggregators = real(cfg, num_tasks)
        if cfg.seed == 5:
            agg, calls = aggregators["critic"], [0]
            weights = agg.weights_without_jacobian

            def failing(ctx):
                calls[0] += 1
                if calls[0] > 30:
                    raise RuntimeError("injected failure of member 5")
                return weights(ctx)

            agg.weights_without_jacobian = failing
        return aggregators

    cfg = _config("famo")
    train_population(cfg, [2, 7], tmp_path / "clean" / "seed{seed}")
    monkeypatch.setattr(train_module, "_build_aggregators", build)
    results = train_population(cfg, [2, 5, 7], tmp_path / "faulty" / "seed{seed}")
    status = read_status(tmp_path / "faulty" / "seed5")
    assert status["state"] == "failed" and "injected failure of member 5" in status["error"]
    assert status["step"] == 40 + 31 and results[1].steps_done == 71  # warm-up 40, then its 31st update
    for s in (2, 7):
        _assert_same_run(tmp_path / "faulty" / f"seed{s}", tmp_path / "clean" / f"seed{s}")
        assert read_status(tmp_path / "faulty" / f"seed{s}")["state"] == "finished"
    monkeypatch.setattr(train_module, "_build_aggregators", real)
    again = train_population(cfg, [2, 5, 7], tmp_path / "faulty" / "seed{seed}", resume="auto")
    assert [r.steps_done for r in again] == [160, 71, 160]


def test_metaworld_population_members_equal_their_single_runs(tmp_path):
    """MT10 members in one PopulationEnv over two env workers, episode-parallel evaluation: member
    1 of {0, 1} writes what ``mtrl train --seed 1`` writes (LS, bit for bit)."""
    data = tiny_mt10("mt10pop", env={"workers": 2})
    train_population(config_from_dict(data), [0, 1], tmp_path / "pop" / "seed{seed}")
    train(config_from_dict({**data, "seed": 1, "env": {**data["env"], "workers": 1}}), tmp_path / "single")
    _assert_same_run(tmp_path / "pop" / "seed1", tmp_path / "single")


def test_cli_population_run_directories_are_read_by_evaluate_inspect_and_report(tmp_path):
    """``mtrl train --seeds 0,1``: each member's directory works with mtrl evaluate, inspect and
    report as a single run's does; ``mtrl evaluate`` plays the logged evaluation of its last step."""
    config = tmp_path / "pop.yaml"
    config.write_text(yaml.safe_dump({**POINT, "aggregator": METHODS["nashmtl"]}))
    template = str(tmp_path / "runs" / "seed{seed}")

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "mtrl.cli", *args], env=ENV, capture_output=True, text=True, timeout=300, cwd=tmp_path)

    trained = cli("train", str(config), "--seeds", "0,1", "--run-dir", template)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert trained.stdout.count("done: ") == 2
    member = tmp_path / "runs" / "seed1"
    evaluated = cli("evaluate", str(member), "--episodes", "2", "--device", "cpu")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    last = (member / "eval.csv").read_text().splitlines()[-1].split(",")
    assert last[0] == "160" and f"{float(last[1]):.3f}" in evaluated.stdout  # the trainer's evaluation, replayed
    inspected = cli("inspect", str(member), "--out", str(tmp_path / "inspect"))
    assert inspected.returncode == 0, inspected.stderr[-3000:]
    reported = cli("report", str(tmp_path / "runs"), "--out", str(tmp_path / "report"))
    assert reported.returncode == 0, reported.stderr[-3000:]
    assert "nashmtl" in reported.stdout


def test_member_independence_with_two_threads_within_tolerance(tmp_path):
    """With two torch threads batched kernels may split work by shape (the population's S): a
    member of {2, 5, 7} and of {5, 9} then agree within float32 rounding, not bit for bit."""
    torch.set_num_threads(2)
    cfg = _config("nashmtl")
    train_population(cfg, [2, 5, 7], tmp_path / "big" / "seed{seed}")
    train_population(cfg, [5, 9], tmp_path / "small" / "seed{seed}")
    a = load_latest(tmp_path / "big" / "seed5")[0]["agent"]["model"]
    b = load_latest(tmp_path / "small" / "seed5")[0]["agent"]["model"]
    num = sum(float((a[k].double() - b[k].double()).pow(2).sum()) for k in a) ** 0.5
    den = sum(float(b[k].double().pow(2).sum()) for k in b) ** 0.5
    print(f"relative parameter difference after 120 updates, two threads: {num / den:.3g}")
    assert num / den <= 1e-4
