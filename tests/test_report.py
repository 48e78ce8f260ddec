"""mtrl report: every number checked against a hand computation on known eval.csv files."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from mtrl.report import report
from mtrl import stats as rstats
from tests.run_dirs import TASKS, make_run, write_diagnostics


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


# ---------------------------------------------------------------------------------------------
# rliable statistics (mtrl/stats.py), each against a hand computation
# ---------------------------------------------------------------------------------------------
def test_pooled_iqm_drops_a_quarter_of_all_run_task_scores_at_each_end():
    scores = np.array([[0.0, 0.6, 0.2, 1.0], [0.5, 0.1, 0.4, 0.3]])  # 8 scores: drop 2 at each end
    assert rstats.iqm(scores) == pytest.approx(np.mean([0.2, 0.3, 0.4, 0.5]))
    big = np.random.default_rng(0).uniform(size=(10, 10))  # 100 scores: the middle 50 once sorted
    assert rstats.iqm(big) == pytest.approx(np.sort(big.ravel())[25:75].mean())
    assert rstats.iqm(np.stack([scores, 2 * scores])).tolist() == pytest.approx([0.35, 0.7])  # batched


def test_interquartile_mean_equals_scipy_trim_mean():
    from scipy.stats import trim_mean

    rng = np.random.default_rng(0)
    for n in range(1, 14):
        values = rng.integers(0, 4, size=(3, n)).astype(float)  # ties included
        assert rstats.interquartile_mean(values).tolist() == pytest.approx(trim_mean(values, 0.25, axis=-1).tolist())


def test_stratified_bootstrap_redraws_runs_within_each_task():
    runs, tasks = 5, 3
    scores = 10.0 * np.arange(tasks)[None, :] + np.arange(runs)[:, None]  # scores[n, m] = 10 m + n
    samples = rstats.stratified_resample(scores, 400, np.random.default_rng(0))
    assert samples.shape == (400, runs, tasks)
    for m in range(tasks):  # a task's column only ever holds that task's scores
        assert set(np.unique(samples[:, :, m])) <= set(scores[:, m])
    run_of = samples - 10.0 * np.arange(tasks)
    assert np.any(run_of[:, :, 0] != run_of[:, :, 1])  # tasks are redrawn independently, not whole runs


def test_stratified_bootstrap_distribution_matches_exact_enumeration():
    # [[0, 0], [1, 1]]: each of the 4 resampled cells is 0 or 1 with probability 1/2 independently, so
    # the resampled mean is Binomial(4, 1/2) / 4 (a bootstrap over whole runs would give only 0, 1/2, 1)
    scores = np.array([[0.0, 0.0], [1.0, 1.0]])
    means = rstats.stratified_resample(scores, 40000, np.random.default_rng(1)).mean(axis=(1, 2))
    freq = [np.mean(means == v) for v in (0.0, 0.25, 0.5, 0.75, 1.0)]
    assert freq == pytest.approx([1 / 16, 4 / 16, 6 / 16, 4 / 16, 1 / 16], abs=0.01)
    # percentile CI of the IQM: with 2 x 2 scores the IQM is the mean of the middle two, in {0, 1/2, 1} with
    # P(0) = P(1) = 5/16: the 2.5% and 97.5% quantiles are 0 and 1, the 35% quantile already 1/2
    point, low, high = rstats.interval_estimate(scores, rstats.iqm, reps=4000)
    assert (float(point), float(low), float(high)) == (0.5, 0.0, 1.0)
    point, low, high = rstats.interval_estimate(scores, rstats.iqm, reps=4000, level=0.3)
    assert (float(low), float(high)) == (0.5, 0.5)


def test_probability_of_improvement_is_the_task_averaged_mann_whitney_u():
    from scipy.stats import mannwhitneyu

    x = np.array([[0.2, 0.0], [0.8, 0.0], [0.5, 1.0]])  # 3 runs x 2 tasks
    y = np.array([[0.5, 1.0], [0.1, 0.0]])  # 2 runs
    # task 0: (0.2: 0 + 1) + (0.8: 1 + 1) + (0.5: tie 1/2 + 1) = 4.5 of 6 pairs
    # task 1: (0: 0 + 1/2) + (0: 0 + 1/2) + (1: 1/2 + 1) = 2.5 of 6 pairs
    expected = (4.5 / 6 + 2.5 / 6) / 2
    assert rstats.probability_of_improvement(x, y) == pytest.approx(expected)
    assert rstats.probability_of_improvement(y, x) == pytest.approx(1 - expected)
    scipy_u = [mannwhitneyu(x[:, m], y[:, m], alternative="greater").statistic / 6 for m in range(2)]
    assert rstats.probability_of_improvement(x, y) == pytest.approx(np.mean(scipy_u))
    p, low, high = rstats.probability_of_improvement_interval(x, y)
    assert p == pytest.approx(expected) and 0.0 <= low <= p <= high <= 1.0
    assert rstats.probability_of_improvement_interval(np.ones((3, 2)), np.zeros((4, 2))) == (1.0, 1.0, 1.0)
    assert rstats.probability_of_improvement(x, x) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="same tasks; got 2 and 3"):
        rstats.probability_of_improvement_interval(x, np.zeros((2, 3)))


def test_performance_profile_counts_scores_strictly_above_each_threshold():
    scores = np.array([[0.0, 0.5], [1.0, 0.5]])
    taus = np.array([0.0, 0.4, 0.5, 0.99, 1.0])
    assert rstats.score_distribution(scores, taus).tolist() == [0.75, 0.75, 0.25, 0.25, 0.0]
    profile, low, high = rstats.performance_profile(scores, taus, reps=500)
    assert profile.tolist() == [0.75, 0.75, 0.25, 0.25, 0.0]
    assert np.all(low <= profile) and np.all(profile <= high) and low[-1] == high[-1] == 0.0
    # tau = 0.4: the task-1 column is always (0.5, 0.5), the task-0 column (0, 1) resampled: 2, 3 or 4 of 4
    assert low[1] == 0.5 and high[1] == 1.0


def test_statistics_name_bad_input():
    with pytest.raises(ValueError, match=r"\[runs, tasks\] matrix.*shape \(3,\)"):
        rstats.interval_estimate(np.zeros(3), rstats.iqm)
    with pytest.raises(ValueError, match=r"non-finite values at \(run, task\) \[\[0, 1\]\]"):
        rstats.interval_estimate(np.array([[0.0, np.nan]]), rstats.iqm)
    with pytest.raises(ValueError, match="confidence level must lie in"):
        rstats.interval_estimate(np.zeros((2, 2)), rstats.iqm, level=95)
    with pytest.raises(ValueError, match="taus must be"):
        rstats.performance_profile(np.zeros((2, 2)), [])


def test_report_adds_run_task_iqm_probability_of_improvement_and_profiles(runs, tmp_path):
    out = tmp_path / "out"
    stats = {s.label: s for s in report([runs], out=out)}
    # final success per run x task: ls [[.5, .5], [1, 1], [0, .5]], nashmtl [[1, 1], [.5, 1]]
    assert stats["ls"].scores.tolist() == [[0.5, 0.5], [1.0, 1.0], [0.0, 0.5]]
    assert stats["ls"].iqm_run_task == pytest.approx(np.mean([0.5, 0.5, 0.5, 1.0]))  # 6 scores, 1 dropped each end
    assert stats["nashmtl"].iqm_run_task == pytest.approx(1.0)
    lo, hi = stats["ls"].iqm_run_task_ci
    assert 0.0 <= lo <= stats["ls"].iqm_run_task <= hi <= 1.0
    # P(nashmtl > ls): reach 4 of 6 pairs ((1: 1, 1/2, 1), (.5: 1/2, 0, 1)), push 5 of 6 -> 0.75
    p, plo, phi = stats["nashmtl"].probability_of_improvement["ls"]
    assert p == pytest.approx(0.75)
    assert stats["ls"].probability_of_improvement["nashmtl"] == pytest.approx((0.25, 1 - phi, 1 - plo))
    data = json.loads((out / "report.json").read_text())
    assert data["nashmtl"]["probability_of_improvement"]["ls"]["p"] == pytest.approx(0.75)
    assert data["ls"]["iqm_run_task"] == pytest.approx(0.625) and len(data["ls"]["iqm_run_task_ci"]) == 2
    poi = (out / "poi.csv").read_text().splitlines()
    assert poi[0] == "x,y,p_x_better,ci_low,ci_high" and len(poi) == 3
    profiles = (out / "profiles.csv").read_text().splitlines()
    assert len(profiles) == 1 + 2 * 101
    row = next(line.split(",") for line in profiles if line.startswith("ls,0.5,"))
    assert float(row[2]) == pytest.approx(2 / 6)  # two of the six ls scores exceed 0.5
    summary = (out / "summary.csv").read_text().splitlines()[0].split(",")
    assert summary[:9] == ["method", "seeds", "best_mean", "best_sem", "final_mean", "final_sem", "iqm", "iqm_ci_low", "iqm_ci_high"]
    assert summary[9:] == ["iqm_run_task", "iqm_run_task_ci_low", "iqm_run_task_ci_high"]
    md = (out / "report.md").read_text()
    assert "![performance profiles](profiles.png)" in md and "| nashmtl | 0.75 [" in md
    assert (out / "profiles.png").stat().st_size > 0
    assert not (out / "diagnostics.json").exists() and "Gradient diagnostics" not in md  # these runs logged none


def test_methods_on_different_tasks_are_not_compared(tmp_path):
    make_run(tmp_path, "ls", 0, [(10, [0.5, 0.5])])
    make_run(tmp_path, "mt1", 0, [(10, [0.5])], tasks=["reach-v3"], label="other")
    stats = report([tmp_path], out=tmp_path / "out")
    assert all(not s.probability_of_improvement for s in stats)
    assert (tmp_path / "out" / "poi.csv").read_text().strip() == "x,y,p_x_better,ci_low,ci_high"


# ---------------------------------------------------------------------------------------------
# gradient diagnostics in the report: figures produced, numbers equal to the logs
# ---------------------------------------------------------------------------------------------
STEPS = [200, 400, 600, 800, 1000, 1200, 1400]  # 7 log steps: thirds are the first and last 3


@pytest.fixture
def diag_runs(tmp_path):
    logged = {}
    for method, weights in (("nashmtl", True), ("pcgrad", False)):
        for seed in (0, 1):
            path = make_run(tmp_path, method, seed, [(700, [0.0, 0.5]), (1400, [0.5 * seed, 1.0])])
            logged[method, seed] = write_diagnostics(path, STEPS, len(TASKS), seed=10 * seed + weights, weights=weights)
    make_run(tmp_path, "ls", 0, [(700, [0.0, 0.0]), (1400, [1.0, 0.0])])  # an older run: no diagnostics
    return tmp_path, logged


def test_report_diagnostics_equal_the_mean_of_the_logged_values(diag_runs):
    root, logged = diag_runs
    out = root / "out"
    report([root], out=out)
    data = json.loads((out / "diagnostics.json").read_text())
    assert set(data) == {"nashmtl", "pcgrad"}  # the run without diagnostics is left out
    for method in ("nashmtl", "pcgrad"):
        for c in ("critic", "actor"):
            got, seeds = data[method][c], [logged[method, s][c] for s in (0, 1)]
            assert got["seeds"] == 2 and got["steps"] == STEPS
            first = np.mean([s["cos"][:3].mean(0) for s in seeds], axis=0)
            last = np.mean([s["cos"][-3:].mean(0) for s in seeds], axis=0)
            np.testing.assert_allclose(got["cos_first_third"], first, atol=1e-6)
            np.testing.assert_allclose(got["cos_last_third"], last, atol=1e-6)
            np.testing.assert_allclose(got["conflict"], np.mean([s["conflict"] for s in seeds], axis=0))
            assert got["conflict_first_third"] == pytest.approx(np.mean([s["conflict"][:3].mean() for s in seeds]))
            assert got["conflict_last_third"] == pytest.approx(np.mean([s["conflict"][-3:].mean() for s in seeds]))
            served = np.mean([s["served"].mean(0) for s in seeds], axis=0)
            assert [got["served"][t] for t in TASKS] == pytest.approx(served.tolist())
            assert got["direction_norm"] == pytest.approx(np.mean([s["direction_norm"].mean() for s in seeds]))
            if method == "nashmtl":
                weights = np.mean([s["weights"] for s in seeds], axis=0)  # [S, K]
                for i, t in enumerate(TASKS):
                    assert got["weights"][t] == pytest.approx(weights[:, i].tolist())
            else:
                assert got["weights"] is None
    for name in ("conflict.png", "served.png", "cos_nashmtl.png", "cos_pcgrad.png", "weights_nashmtl.png", "curves.png"):
        assert (out / name).stat().st_size > 0, name
    assert not (out / "weights_pcgrad.png").exists()  # PCGrad is no weighting: nothing to plot
    md = (out / "report.md").read_text()
    assert "## Gradient diagnostics" in md and "![conflict fraction over training](conflict.png)" in md
    assert "[cosines](cos_nashmtl.png), [weights](weights_nashmtl.png)" in md and "[cosines](cos_pcgrad.png) |" in md
    nash = data["nashmtl"]["critic"]
    assert f"{nash['conflict_first_third']:.2f} → {nash['conflict_last_third']:.2f}" in md
    assert "| ls | 1 |" in md  # the older run is still in the success tables


# ---------------------------------------------------------------------------------------------
# warnings: pooled runs that differ, versions, CIs over few runs
# ---------------------------------------------------------------------------------------------
def _edit_config(path, **changes):
    import yaml

    config = yaml.safe_load((path / "config.yaml").read_text())
    for key, value in changes.items():
        node = config
        *sections, name = key.split(".")
        for section in sections:
            node = node.setdefault(section, {})
        node[name] = value
    (path / "config.yaml").write_text(yaml.safe_dump(config))


def test_report_warns_when_runs_of_one_method_differ_in_identity_keys(tmp_path, capsys):
    a = make_run(tmp_path, "ls", 0, [(10, [0.5, 0.5])])
    b = make_run(tmp_path, "ls", 1, [(10, [0.5, 1.0])])
    make_run(tmp_path, "nashmtl", 0, [(10, [0.5, 1.0])])
    _edit_config(a, **{"train.total_steps": 500, "train.log_every": 10})  # allowed keys: no warning
    report([tmp_path], out=tmp_path / "out")
    assert "pools runs whose configs differ" not in capsys.readouterr().err
    _edit_config(b, **{"agent.critic_lr": 0.001})
    (b / "config_history.jsonl").write_text(
        json.dumps({"step": 5, "key": "agent.discount", "old": 0.99, "new": 0.9, "change": "forced"}) + "\n")
    report([tmp_path], out=tmp_path / "out")
    err = capsys.readouterr().err
    line = next(line for line in err.splitlines() if "pools runs whose configs differ" in line)
    assert line.startswith("warning: method ls ") and "agent.critic_lr = 0.0003 (1 run" in line and "0.001 (1 run" in line
    assert "agent.discount = 0.99" in line  # the history counts: the run's config now
    assert "seed =" not in line and "nashmtl" not in line  # seeds differ by design; other methods are not pooled
    assert f"{b} was resumed with forced changes of agent.discount" in err
    md = (tmp_path / "out" / "report.md").read_text()
    assert "## Warnings" in md and "agent.critic_lr" in md


def test_report_says_when_runs_come_from_different_torch_metaworld_or_mujoco(tmp_path, capsys):
    for seed, torch_version in enumerate(["2.13.0", "2.13.0", "2.12.1"]):
        path = make_run(tmp_path, "ls", seed, [(10, [0.5, 0.5])])
        record = {"event": "start", "packages": {"torch": torch_version, "metaworld": "3.1.1", "mujoco": "3.3.0"}}
        (path / "provenance.jsonl").write_text(json.dumps(record) + "\n")
    report([tmp_path], out=tmp_path / "out")
    err = capsys.readouterr().err
    assert "different torch versions: 2.12.1 (1 run:" in err and "2.13.0 (2 runs:" in err
    assert "metaworld versions" not in err and "mujoco versions" not in err and "record no provenance" not in err
    older = make_run(tmp_path, "ls", 3, [(10, [0.5, 0.5])])  # a run from before provenance.jsonl
    report([tmp_path], out=tmp_path / "out")
    assert f"1 run: {older} record no provenance" in capsys.readouterr().err


def test_cis_over_fewer_than_five_runs_are_marked(tmp_path, capsys):
    for seed in range(5):
        make_run(tmp_path, "ls", seed, [(10, [0.1 * seed, 0.5])])
    for seed in range(4):
        make_run(tmp_path, "nashmtl", seed, [(10, [0.2 * seed, 0.5])])
    stats = {s.label: s for s in report([tmp_path], out=tmp_path / "out")}
    assert stats["nashmtl"].few_runs and not stats["ls"].few_runs
    printed = capsys.readouterr().out
    assert "nashmtl     4†" in printed and "ls          5 " in printed and "† fewer than 5 runs" in printed
    md = (tmp_path / "out" / "report.md").read_text()
    ls_row = next(line for line in md.splitlines() if line.startswith("| ls | 5 |"))
    nash_row = next(line for line in md.splitlines() if line.startswith("| nashmtl | 4 |"))
    assert "†" not in ls_row and nash_row.count("†") == 2
    assert "] †" not in md and "]†" in md and "† fewer than 5 runs" in md
    assert json.loads((tmp_path / "out" / "report.json").read_text())["nashmtl"]["ci_fewer_than_min_runs"] is True


def test_run_reading_flows_one_way_runs_then_inspection_then_report():
    """mtrl.runs reads run directories for both; inspection never imports report (no import circle)."""
    import ast
    from pathlib import Path

    def imported(module: str) -> set[str]:
        tree = ast.parse((Path(__file__).resolve().parents[1] / "mtrl" / f"{module}.py").read_text())
        names = set()
        for node in ast.walk(tree):  # lazy imports inside functions count too
            if isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module)
            elif isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
        return names

    assert "mtrl.report" not in imported("inspection") and "mtrl.runs" in imported("inspection")
    assert not {"mtrl.report", "mtrl.inspection"} & imported("runs")
    assert {"mtrl.runs", "mtrl.inspection"} <= imported("report")
