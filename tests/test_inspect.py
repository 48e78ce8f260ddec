"""mtrl inspect and the diagnostics readers: figures produced, numbers equal to what was logged,
reading rules for restarted and killed runs, older runs without diagnostics, clear errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mtrl.cli import main as cli_main
from mtrl.inspection import inspect_run, read_diagnostics, read_jsonl, thirds
from tests.run_dirs import make_run, write_diagnostics

TASKS = ["reach-v3", "push-v3", "pick-place-v3"]
STEPS = [100, 200, 300, 400, 500]  # thirds of 5 log steps: the first 2 and the last 2


@pytest.fixture
def run(tmp_path):
    path = make_run(tmp_path, "nashmtl", 0, [(250, [0.0, 0.5, 0.0]), (500, [1.0, 0.5, 0.0])], tasks=TASKS)
    logged = write_diagnostics(path, STEPS, len(TASKS), seed=3)
    return path, logged


@pytest.mark.parametrize("count, first, last", [(1, [0], [0]), (2, [0], [1]), (3, [0], [2]), (4, [0, 1], [2, 3]),
                                                (7, [0, 1, 2], [4, 5, 6]), (10, [0, 1, 2, 3], [6, 7, 8, 9])])
def test_thirds_are_the_first_and_last_ceil_count_over_3_log_steps(count, first, last):
    head, tail = thirds(count)
    assert list(range(count))[head] == first and list(range(count))[tail] == last


def test_inspect_prints_and_plots_one_run_with_the_logged_numbers(run, tmp_path, capsys):
    path, logged = run
    out = tmp_path / "look"
    payload = inspect_run(path, out)
    printed = capsys.readouterr().out
    for name in ("success.png", "conflict.png", "cosines.png", "weights.png", "served.png", "inspect.json"):
        assert (out / name).stat().st_size > 0, name
    assert payload == json.loads((out / "inspect.json").read_text())
    assert payload["final_success"] == {"reach-v3": 1.0, "push-v3": 0.5, "pick-place-v3": 0.0}
    for c in ("critic", "actor"):
        got, want = payload["diagnostics"][c], logged[c]
        assert got["seeds"] == 1 and got["steps"] == STEPS  # the warm-up line without diagnostics is skipped
        np.testing.assert_allclose(got["cos_first_third"], want["cos"][:2].mean(0), atol=1e-6)
        np.testing.assert_allclose(got["cos_last_third"], want["cos"][-2:].mean(0), atol=1e-6)
        assert got["conflict"] == pytest.approx(want["conflict"].tolist())
        assert [got["served"][t] for t in TASKS] == pytest.approx(want["served"].mean(0).tolist())
        assert [got["task_grad_norm"][t] for t in TASKS] == pytest.approx(want["task_grad_norm"].mean(0).tolist())
        assert [got["weights"][t][-1] for t in TASKS] == pytest.approx(want["weights"][-1].tolist())
        first, last = want["conflict"][:2].mean(), want["conflict"][-2:].mean()
        assert f"{c}: 5 log steps; conflict fraction first third {first:.3f}, last third {last:.3f}" in printed
    assert "pick-place-v3" in printed and "critic served" in printed


def test_inspect_through_the_cli_and_its_errors(run, tmp_path, capsys):
    path, _ = run
    assert cli_main(["inspect", str(path), "--out", str(tmp_path / "cli")]) == 0
    assert (tmp_path / "cli" / "inspect.json").exists()
    assert cli_main(["inspect", str(tmp_path)]) == 2  # a folder of runs, not one run
    assert "is not a run directory" in capsys.readouterr().err


def test_the_cli_file_runs_as_a_script_without_shadowing_the_standard_inspect_module():
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, str(root / "mtrl" / "cli.py"), "inspect", "-h"], cwd=root,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "usage: mtrl inspect" in proc.stdout, proc.stderr[-2000:]


def test_an_older_run_without_diagnostics_still_inspects(tmp_path, capsys):
    path = make_run(tmp_path, "ls", 0, [(10, [0.0, 1.0]), (20, [0.5, 1.0])])
    (path / "metrics.jsonl").write_text(json.dumps({"step": 10, "critic/loss": 1.0, "critic/weights": [1.0, 1.0]}) + "\n")
    payload = inspect_run(path)
    assert "no gradient diagnostics" in capsys.readouterr().out
    assert payload["diagnostics"] is None and payload["figures"] == ["success.png"]
    assert (path / "inspect" / "success.png").stat().st_size > 0
    assert read_diagnostics(path, ["reach-v3", "push-v3"]) is None


def test_missing_cosine_file_leaves_out_only_the_heatmaps(run, tmp_path):
    path, _ = run
    (path / "diagnostics.jsonl").unlink()
    payload = inspect_run(path, tmp_path / "look")
    assert "cosines.png" not in payload["figures"] and "conflict.png" in payload["figures"]
    assert payload["diagnostics"]["critic"]["cos_last_third"] is None


def test_lines_of_one_step_merge_and_a_cut_last_line_is_dropped(run):
    path, logged = run
    with open(path / "metrics.jsonl", "a") as handle:  # the evaluation line of step 500, then the run was killed
        handle.write(json.dumps({"step": 500, "eval/mean_success": 0.5, "critic/conflict": 1.0}) + "\n")
        handle.write('{"step": 600, "critic/confl')
    diagnostics = read_diagnostics(path, TASKS)
    critic = diagnostics.components["critic"]
    assert critic.steps.tolist() == STEPS
    assert critic.conflict.tolist() == pytest.approx(logged["critic"]["conflict"][:4].tolist() + [1.0])  # later wins
    np.testing.assert_allclose(critic.served[-1], logged["critic"]["served"][-1])  # earlier keys are kept
    assert [r["step"] for r in read_jsonl(path / "metrics.jsonl")] == [50, *STEPS]


def test_bad_logs_are_clear_errors(run):
    path, _ = run
    lines = (path / "metrics.jsonl").read_text().splitlines()
    (path / "metrics.jsonl").write_text("\n".join(lines[:2] + ["{not json"] + lines[2:]) + "\n")
    with pytest.raises(ValueError, match=r"metrics.jsonl: line 3 is not valid JSON"):
        read_diagnostics(path, TASKS)
    (path / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    (path / "diagnostics.jsonl").unlink()
    with pytest.raises(ValueError, match=r"step 100: 'critic/served' should hold 2 values \(one per task\); found 3"):
        read_diagnostics(path, TASKS[:2])
    record = {"step": 100, "critic/conflict": 0.0, "critic/served": [0.0, 0.0, 0.0]}
    (path / "metrics.jsonl").write_text(json.dumps(record) + "\n")
    (path / "diagnostics.jsonl").write_text(json.dumps({"step": 100, "critic/cos": [[1.0, 0.0], [0.0, 1.0]]}) + "\n")
    with pytest.raises(ValueError, match=r"step 100: 'critic/cos' should be 3 x 3; found shape \(2, 2\)"):
        read_diagnostics(path, TASKS)
    (path / "diagnostics.jsonl").write_text(json.dumps({"step": 100, "critic/cos": [[1.0, 0.0, 0.0], [0.0, 1.0]]}) + "\n")
    with pytest.raises(ValueError, match=r"step 100: 'critic/cos' should be 3 x 3; found rows of different lengths"):
        read_diagnostics(path, TASKS)
