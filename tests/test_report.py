"""mtrl report: every number checked against a hand computation on known eval.csv files."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import yaml

from mtrl.report import report

TASKS = ["reach-v3", "push-v3"]


def make_run(root, method, seed, rows, benchmark="MT10", tasks=TASKS, main_task=None, label=None):
    path = root / method / f"seed{seed}"
    path.mkdir(parents=True)
    config = {"seed": seed, "env": {"benchmark": benchmark}, "aggregator": {"name": method}, "main_task": main_task}
    (path / "config.yaml").write_text(yaml.safe_dump(config))
    lines = ["step,mean_success," + ",".join(tasks)]
    for step, values in rows:
        lines.append(f"{step},{np.mean(values)},{','.join(str(v) for v in values)}")
    (path / "eval.csv").write_text("\n".join(lines) + "\n")
    if label:
        (path / "sweep.json").write_text(json.dumps({"label": label}))
    return path


@pytest.fixture
def runs(tmp_path):
    # method A, 3 seeds: task-averaged curves [0.25, 0.75, 0.5], [0.5, 0.5, 1.0], [0.0, 0.25, 0.25]
    make_run(tmp_path, "ls", 0, [(10, [0.0, 0.5]), (20, [1.0, 0.5]), (30, [0.5, 0.5])])
    make_run(tmp_path, "ls", 1, [(10, [0.5, 0.5]), (20, [0.0, 1.0]), (30, [1.0, 1.0])])
    make_run(tmp_path, "ls", 2, [(10, [0.0, 0.0]), (20, [0.5, 0.0]), (30, [0.0, 0.5])])
    # method B, 2 seeds
    make_run(tmp_path, "nashmtl", 0, [(10, [1.0, 0.0]), (20, [1.0, 1.0])])
    make_run(tmp_path, "nashmtl", 1, [(10, [0.0, 0.0]), (20, [0.5, 1.0])])
    return tmp_path


def test_best_final_sem_and_iqm_match_hand_computation(runs, tmp_path):
    out_json = tmp_path / "r.json"
    stats = {s.label: s for s in report([runs], out=tmp_path / "out", json_path=out_json)}
    ls = stats["ls"]
    best = np.array([0.75, 1.0, 0.25])
    assert ls.n_seeds == 3
    assert ls.best_mean == pytest.approx(2.0 / 3.0)
    assert ls.best_sem == pytest.approx(np.std(best, ddof=1) / math.sqrt(3))
    assert ls.final_mean == pytest.approx((0.5 + 1.0 + 0.25) / 3)
    # IQM of three values: trim_mean(x, 0.25) drops int(0.25 * 3) = 0 values -> the mean
    assert ls.iqm == pytest.approx(2.0 / 3.0)
    lo, hi = ls.iqm_ci
    assert 0.25 <= lo <= ls.iqm <= hi <= 1.0
    nash = stats["nashmtl"]
    assert nash.best_mean == pytest.approx((1.0 + 0.75) / 2)
    assert nash.best_sem == pytest.approx(0.125)
    assert nash.final_mean == pytest.approx(0.875)
    assert ls.per_task_best == {"reach-v3": pytest.approx((1.0 + 1.0 + 0.5) / 3), "push-v3": pytest.approx((0.5 + 1.0 + 0.5) / 3)}
    assert ls.per_task_final == {"reach-v3": pytest.approx(0.5), "push-v3": pytest.approx(2 / 3)}
    data = json.loads(out_json.read_text())
    assert set(data["ls"]) >= {"best_mean", "best_sem", "final_mean", "iqm", "iqm_ci", "n_seeds"}
    for name in ("report.md", "summary.csv", "per_task.csv", "runs.csv", "curves.png", "per_task.png"):
        assert (tmp_path / "out" / name).stat().st_size > 0, name


def test_iqm_trims_the_outer_quartiles(tmp_path):
    for seed, value in enumerate([0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 1.0, 1.0]):
        make_run(tmp_path, "ls", seed, [(10, [value, value])])
    (stats,) = report([tmp_path], out=tmp_path / "out")
    assert stats.iqm == pytest.approx(np.mean([0.4, 0.6, 0.8, 1.0]))
    again = report([tmp_path], out=tmp_path / "out2")[0]
    assert again.iqm_ci == stats.iqm_ci  # the bootstrap is seeded


def test_stl_runs_are_joined_per_seed_into_one_row(tmp_path):
    for seed in (0, 1):
        make_run(tmp_path, f"reach{seed}", seed, [(10, [0.5]), (20, [1.0])], benchmark="MT1-reach-v3", tasks=["reach-v3"])
        make_run(tmp_path, f"push{seed}", seed, [(10, [0.0]), (20, [0.5]), (30, [1.0])], benchmark="MT1-push-v3", tasks=["push-v3"])
    (stats,) = report([tmp_path], out=tmp_path / "out")
    assert stats.label == "STL" and stats.n_seeds == 2
    # common steps 10, 20: averaged curve [0.25, 0.75] -> best 0.75, final 0.75
    assert stats.best_mean == pytest.approx(0.75) and stats.final_mean == pytest.approx(0.75)
    assert set(stats.per_task_best) == {"reach-v3", "push-v3"}


def test_sweep_labels_and_main_task_view(tmp_path):
    make_run(tmp_path, "auxinash", 0, [(10, [0.5, 0.0]), (20, [1.0, 0.0])], main_task="reach-v3", label="auxinash_main")
    (stats,) = report([tmp_path], out=tmp_path / "out")
    assert stats.label == "auxinash_main"
    assert stats.main_task == "reach-v3" and stats.main_best == 1.0 and stats.main_final == 1.0
    assert "## Main task" in (tmp_path / "out" / "report.md").read_text()


def test_no_runs_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no run directories"):
        report([tmp_path])
