"""The benchmark scripts run end to end at tiny sizes (no timing is asserted: speed goals live in
the benchmarks' own output, never in tests). What is asserted is what their output means: each
ratio is the quotient of the two times reported beside it, in the direction the benchmark names
(a swapped or mismatched quotient fails), and each PASS/FAIL verdict follows from its ratio."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from mtrl.benchmarks import aggregators, collect, jacobian, population, step, update
from mtrl.envs.metaworld import benchmark_task_names


def test_aggregator_benchmark_runs_and_writes_ratios(tmp_path):
    out = tmp_path / "agg.json"
    assert aggregators.main(["--sizes", "3", "--params", "500", "--repeats", "1", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    size = data["sizes"]["3"]
    methods = size["methods"]
    assert {"gram", "nashmtl", "cagrad", "ls"} <= set(methods)
    assert all(m["ratio"] == pytest.approx(m["ms"] / size["gram_ms"]) for m in methods.values())  # x Gram
    assert all(t["pass"] == (t["ratio"] <= 1) for t in size["targets"])  # ratio: time over the target's limit


def test_population_host_benchmark_runs_and_writes_ratios(tmp_path):
    out = tmp_path / "population.json"
    args = ["--host-only", "--sizes", "3", "--populations", "1", "2", "--params", "50", "--repeats", "1", "--json", str(out)]
    assert population.main(args) == 0
    data = json.loads(out.read_text())
    host = data["host"]["3"]
    assert set(host) == {label for label, _, _ in population.METHODS}
    assert all(m["ratio"] > 0 and set(m["ms"]) == {"1", "2"} for m in host.values())
    assert all("pass" in host[label] for label in population.TARGETED)


def test_population_benchmark_tiny_writes_every_part_with_the_issue_s_names(tmp_path):
    """``mtrl bench population --tiny``: every learner-side part at toy sizes (two memory
    subprocesses included); the JSON has the issue's structure and names, and each verdict follows
    from its ratio in the direction named."""
    out = tmp_path / "population.json"
    assert population.main(["--tiny", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    comparisons = data["comparisons"]
    names = {"ops_s10_vs_s1_ls", "ops_s10_vs_s1_nashmtl", "host_s10_vs_s1_nashmtl", "host_s10_vs_s1_cagrad",
             "host_s10_vs_s1_mgda", "member_steps_population_vs_single_quick", "member_updates_population_vs_single_quick"}
    assert names <= set(comparisons)
    for name, entry in comparisons.items():
        assert {"ratio", "better", "target", "pass"} <= set(entry) and entry["better"] in ("lower", "higher"), name
        if entry["ratio"] is None or entry["target"] is None:
            assert entry["pass"] is None, name
        else:
            assert entry["pass"] == (entry["ratio"] <= entry["target"] if entry["better"] == "lower" else entry["ratio"] >= entry["target"])
    assert comparisons["member_steps_population_vs_single_quick"]["ratio"] is None  # --whole-step not asked
    assert comparisons["member_steps_population_vs_single_quick"]["target"] == 2
    assert all(comparisons[f"ops_s10_vs_s1_{m}"]["target"] == 1.3 for m in ("ls", "nashmtl"))
    assert all(comparisons[f"host_s10_vs_s1_{m}"]["target"] == 3 for m in population.TARGETED)
    counts = data["profile"]["tiny"]
    for method in ("ls", "nashmtl"):
        assert comparisons[f"ops_s10_vs_s1_{method}"]["ratio"] == pytest.approx(
            counts[method]["10"]["device_ops_per_update"] / counts[method]["1"]["device_ops_per_update"])
    assert data["syncs"] == {"ls": {"1": 0.0, "10": 0.0}, "nashmtl": {"1": 2.0, "10": 2.0}}  # one Gram transfer per component
    assert comparisons["member_updates_population_vs_single_quick"]["ratio"] > 0
    assert isinstance(data["memory_per_member_mb"], float) and set(data["memory"]["runs"]) == {"1", "2"}
    assert all(run["peak_rss_mb"] > 0 for run in data["memory"]["runs"].values())


def test_population_whole_step_says_clearly_what_it_needs(monkeypatch):
    """Until ``mtrl train --seeds`` exists the whole-step comparison stops with a clear message."""
    import subprocess

    class Help:
        stdout = "usage: mtrl train [--seed SEED] [--run-dir RUN_DIR]"

    monkeypatch.setattr(subprocess, "run", lambda *a, **k: Help())
    with pytest.raises(RuntimeError, match="--seeds"):
        population.whole_step()


def test_aggregator_benchmark_vs_torchjd_writes_ratios_and_agrees_with_it(tmp_path):
    pytest.importorskip("torchjd")
    pytest.importorskip("ecos")  # TorchJD's NashMTL solver (the `bench` extra installs it)
    out = tmp_path / "vs.json"
    assert aggregators.main(["--vs", "torchjd", "--sizes", "3", "--params", "500", "--repeats", "1", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    methods = data["sizes"]["3"]["methods"]
    assert set(methods) == set(aggregators.TORCHJD_PAIRS) and "pivrg" in data["torchjd_lacks"]
    assert all(m["ratio"] == pytest.approx(m["ms"] / m["torchjd_ms"]) for m in methods.values())  # ours / TorchJD
    assert all(m["pass"] == (m["ratio"] <= m["target"]) for m in methods.values())
    # each pair computes the same method (PCGrad's random orders differ between the libraries)
    assert all(m["cosine"] > 0.999 for name, m in methods.items() if name != "pcgrad")


def test_jacobian_benchmark_runs(tmp_path):
    out = tmp_path / "jac.json"
    assert jacobian.main(["--num-tasks", "3", "--batch", "8", "--hidden", "16", "--repeats", "1", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["default_engine"] == "linear"
    comparisons, ms = data["comparisons"], data["ms"]
    assert {"default_vs_backward", "linear_vs_backward", "vmap_vs_backward", "loop_vs_backward"} <= set(comparisons)
    backward = ms["backward (summed loss)"]
    for engine, label in [("linear", "G by linear taps"), ("vmap", "G by vmap"), ("loop", "G by K autograd calls")]:
        assert comparisons[f"{engine}_vs_backward"]["ratio"] == pytest.approx(ms[label] / backward)
    default = comparisons["default_vs_backward"]
    assert default["ratio"] == comparisons["linear_vs_backward"]["ratio"] and default["pass"] == (default["ratio"] <= 1.2)


def test_update_benchmark_runs(tmp_path):
    out = tmp_path / "update.json"
    argv = ["--sizes", "3", "--batch", "8", "--hidden", "16", "--repeats", "1", "--methods", "ls", "nashmtl", "cagrad", "cagrad_fast", "cagrad(loop)", "--json", str(out)]
    assert update.main(argv) == 0
    data = json.loads(out.read_text())
    methods = data["sizes"]["3"]["methods"]
    assert set(methods) == {"ls", "nashmtl", "cagrad", "cagrad_fast", "cagrad(loop)"}
    assert all(m["ratio"] == pytest.approx(m["ms"] / methods["ls"]["ms"]) for m in methods.values())  # x LS
    targets = {t["target"]: t for t in data["sizes"]["3"]["targets"]}
    for label in ("nashmtl", "cagrad"):
        target = targets[f"{label} <= 1.3 x LS"]
        assert target["ratio"] == pytest.approx(methods[label]["ratio"]) and target["pass"] == (target["ratio"] <= 1.3)
    diagnostics = data["sizes"]["3"]["diagnostics"]  # the cost of a log step's gradient diagnostics
    assert set(diagnostics) == {"ls", "nashmtl"} and all("amortised_fraction_of_ls" in d for d in diagnostics.values())


def test_update_profile_counts_syncs_and_ops(tmp_path):
    out = tmp_path / "profile.json"
    argv = ["--profile", "--sizes", "3", "--batch", "8", "--hidden", "16", "--methods", "ls", "nashmtl", "--json", str(out)]
    assert update.main(argv) == 0
    profile = json.loads(out.read_text())["profile"]
    assert profile["ls"]["syncs_per_update"] == 0 and profile["nashmtl"]["syncs_per_update"] == 2  # the two Gram matrices
    assert profile["nashmtl"]["ops_per_update"] > profile["ls"]["ops_per_update"] > 0


def test_update_compile_writes_compiled_over_eager_per_size_and_method(tmp_path, monkeypatch, capsys):
    """`--compile` with one tiny size standing in for quick and paper (compiling the paper networks
    takes minutes on two cores; two different tiny sizes cost this test 50% more CPU time, as the
    second is compiled again), and targets that quick cannot miss and paper cannot meet: each
    size's verdict comes from its own row and its own target, and a missed target is a FAIL in the
    output and the JSON, not an exit status (the benchmark exits 0)."""
    monkeypatch.setattr(update, "SIZES", {"quick": (16, 2, 8), "paper": (16, 2, 8)})
    monkeypatch.setattr(update, "COMPILE_TARGETS", {"quick": math.inf, "paper": 0.0})
    out = tmp_path / "compile.json"
    assert update.main(["--compile", "--methods", "ls", "--repeats", "1", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "quick size (2 x 16, batch 10 x 8)" in printed and "paper size (2 x 16, batch 10 x 8)" in printed
    assert "PASS  quick: ls compiled <= inf x eager" in printed and "FAIL  paper: ls compiled <= 0.0 x eager" in printed
    payload = json.loads(out.read_text())
    data = payload["compiled_vs_eager"]
    assert set(data) == {"quick", "paper"}
    for size in data.values():
        assert set(size) == {"ls"}
        assert all(row["ratio"] == pytest.approx(row["compiled_ms"] / row["eager_ms"]) for row in size.values())
    verdicts = {t["target"]: (t["value"], t["pass"]) for t in payload["targets"]}
    assert verdicts == {
        "quick: ls compiled <= inf x eager": (data["quick"]["ls"]["ratio"], True),
        "paper: ls compiled <= 0.0 x eager": (data["paper"]["ls"]["ratio"], False),
    }


def test_collect_benchmark_runs(tmp_path):
    out = tmp_path / "collect.json"
    assert collect.main(["--benchmark", "MT1-reach-v3", "--steps", "20", "--repeats", "1", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    rates = data["steps_per_s"]  # ratio: ours over the raw vector env's rate (> 1: ours faster)
    assert data["ratio"] == pytest.approx(rates["MultiTaskEnv + replay.add"] / rates["raw vector env"])
    assert data["pass"] == (data["ratio"] >= 0.9)


def test_collect_benchmark_compares_workers_with_in_process(tmp_path):
    out = tmp_path / "workers.json"
    argv = ["--workers", "1", "--benchmarks", "MT1-reach-v3", "--steps", "10", "--repeats", "1", "--json", str(out)]
    assert collect.main(argv) == 0
    comparison = json.loads(out.read_text())["comparisons"]["mt1-reach-v3_workers_vs_inprocess"]
    rates = comparison["steps_per_s"]  # one pair of blocks: the median ratio is its ratio, workers over in-process
    assert comparison["ratio"] == pytest.approx(rates["workers"] / rates["in-process"])
    assert comparison["ratio_without_spinning"] == pytest.approx(rates["no spinning"] / rates["in-process"])
    assert comparison["compute_bound_limit"] == 1.0
    assert list(comparison["task_step_ms"]) == ["reach-v3"]


def test_compute_bound_speedup_is_set_by_the_slowest_worker():
    mt10 = benchmark_task_names("MT10")
    assert collect.compute_bound_speedup(np.ones(10), mt10, 16) == 10.0  # at most one worker per task
    # the costly task alone in one shard, the three cheap ones in the other (envs/task_costs.py)
    names = ["coffee-pull-v3", "button-press-v3", "button-press-wall-v3", "handle-press-v3"]
    assert collect.compute_bound_speedup(np.array([3.0, 1.0, 1.0, 1.0]), names, 2) == 2.0
    assert collect.compute_bound_speedup(np.array([1.0, 1.0, 1.0, 1.0]), names, 2) == 4 / 3


def test_auxinash_toy_study_runs_each_kind_of_reading():
    from mtrl.benchmarks import auxinash_toy

    for name in ["paper", "train_same_val_held_out_exact", "P10_val_same_batch", "init_far_stl"]:
        result = auxinash_toy.run(auxinash_toy.READINGS[name], seed=0, epochs=2)
        assert result["main_test_excess"] >= 0 and 0 <= result["fallback_fraction"] <= 1
        if auxinash_toy.READINGS[name].method == "auxinash":
            assert abs(sum(result["final_p"]) - 1) < 1e-9 and result["hypersteps"] + result["hyper_skipped"] == 0


@pytest.mark.slow
def test_auxinash_toy_harmful_preference_decays_in_the_reading_that_reproduces_it():
    """[AN §6.1, Fig. 1] in the one reading of App. D.1 where the decay reproduces in every seed
    (docs/aggregators.md): L_T of the hypergradient on the inner step's own batch, L_V on a large
    held-out set, the exact inverse Hessian. The harmful task ends at the floor, below both others."""
    from mtrl.benchmarks import auxinash_toy

    result = auxinash_toy.run(auxinash_toy.READINGS["train_same_val_held_out_exact"], seed=1, epochs=1000)
    assert auxinash_toy.decays(result), result["final_p"]
    assert result["final_p"][2] < 1e-3 and result["hypersteps"] >= 150


def test_steal_share_reads_the_hypervisors_column():
    before = [100, 0, 10, 80, 0, 0, 0, 10, 0, 0]
    after = [160, 0, 20, 90, 0, 0, 0, 30, 0, 0]  # 60 user + 10 system + 10 idle + 20 steal
    assert collect.steal_share(before, after) == pytest.approx(0.2)
    assert collect.steal_share(None, after) is None


def test_task_costs_print_a_table_in_the_format_of_envs_task_costs(capsys):
    assert collect.main(["--task-costs", "--benchmark", "MT1-reach-v3", "--steps", "5", "--repeats", "1"]) == 0
    namespace: dict = {}
    exec(capsys.readouterr().out, namespace)
    assert list(namespace["STEP_MS"]) == ["reach-v3"] and namespace["STEP_MS"]["reach-v3"] > 0


def test_step_benchmark_writes_the_overlap_and_the_evaluation_comparisons_at_a_tiny_size(tmp_path):
    """``mtrl bench step --json F``: one file with the overlap comparisons (``mtrl.benchmarks.step.
    overlap_vs_serial``) and the evaluation one (``eval_parallel_vs_sequential``)."""
    from mtrl.benchmarks import step

    out = tmp_path / "step.json"
    argv = ["--benchmarks", "MT1-reach-v3", "--workers", "1", "--update-ms", "1", "--steps", "3", "--repeats", "1",
            "--hidden", "16", "--real-hidden", "16", "--eval-benchmark", "MT1-reach-v3", "--eval-episodes", "3",
            "--eval-steps", "5", "--eval-envs", "2", "--eval-layers", "1", "--eval-repeats", "1", "--json", str(out)]
    assert step.main(argv) in (0, 1)  # 1: a target missed (timings at this size mean nothing)
    data = json.loads(out.read_text())["comparisons"]
    assert set(data) == {"mt1-reach-v3_overlap_vs_serial_u1", "mt1-reach-v3_overlap_vs_serial_real", "eval_parallel_vs_sequential"}
    overlap = data["mt1-reach-v3_overlap_vs_serial_u1"]
    assert overlap["better"] == "lower" and overlap["ratio"] > 0 and isinstance(overlap["pass"], bool)
    evaluation = data["eval_parallel_vs_sequential"]
    assert evaluation["better"] == "lower" and evaluation["target"] == 0.85 and evaluation["ratio"] > 0
    assert isinstance(evaluation["pass"], bool)
    assert evaluation["instances"] == 2 and set(evaluation["predicted"]) == {"1", "16"}
    assert evaluation["predicted"]["1"]["parallel_rounds"] == 2 * 5  # 3 episodes on 2 instances: two in a row


def test_step_benchmark_can_skip_either_part(tmp_path):
    from mtrl.benchmarks import step

    out = tmp_path / "step.json"
    argv = ["--skip-overlap", "--skip-eval", "--json", str(out)]
    assert step.main(argv) == 0
    assert json.loads(out.read_text())["comparisons"] == {}


def test_step_benchmark_measures_the_steps_lost_to_an_asynchronous_evaluation(tmp_path):
    out = tmp_path / "async.json"
    argv = ["--skip-overlap", "--skip-eval", "--eval-async", "--async-benchmark", "MT1-reach-v3", "--async-steps", "20",
            "--async-episodes", "1", "--async-repeats", "1", "--json", str(out)]
    code = step.main(argv)
    comparison = json.loads(out.read_text())["comparisons"]["eval_async_steps_lost"]
    assert code == (0 if comparison["pass"] else 1) and comparison["target"] == 0.1 and comparison["better"] == "lower"
    rates = comparison["steps_per_s"]
    assert comparison["ratio"] == pytest.approx(1 - rates["during"][0] / rates["without"][0])
    assert len(comparison["in_process_evaluation_s"]) == 1
