"""The benchmark scripts run end to end at tiny sizes (no timing is asserted: speed goals live in
the benchmarks' own output, never in tests)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mtrl.benchmarks import aggregators, collect, jacobian, update
from mtrl.envs.metaworld import benchmark_task_names


def test_aggregator_benchmark_runs_and_writes_ratios(tmp_path):
    out = tmp_path / "agg.json"
    assert aggregators.main(["--sizes", "3", "--params", "500", "--repeats", "1", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    methods = data["sizes"]["3"]["methods"]
    assert {"gram", "nashmtl", "cagrad", "ls"} <= set(methods)
    assert all("ratio" in m for m in methods.values())
    assert all("ratio" in t for t in data["sizes"]["3"]["targets"])


def test_aggregator_benchmark_vs_torchjd_writes_ratios_and_agrees_with_it(tmp_path):
    pytest.importorskip("torchjd")
    pytest.importorskip("ecos")  # TorchJD's NashMTL solver (the `bench` extra installs it)
    out = tmp_path / "vs.json"
    assert aggregators.main(["--vs", "torchjd", "--sizes", "3", "--params", "500", "--repeats", "1", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    methods = data["sizes"]["3"]["methods"]
    assert set(methods) == set(aggregators.TORCHJD_PAIRS) and "pivrg" in data["torchjd_lacks"]
    assert all(m["ratio"] > 0 and m["torchjd_ms"] > 0 for m in methods.values())
    # each pair computes the same method (PCGrad's random orders differ between the libraries)
    assert all(m["cosine"] > 0.999 for name, m in methods.items() if name != "pcgrad")


def test_jacobian_benchmark_runs(tmp_path):
    out = tmp_path / "jac.json"
    assert jacobian.main(["--num-tasks", "3", "--batch", "8", "--hidden", "16", "--repeats", "1", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["default_engine"] == "linear"
    assert {"default_vs_backward", "linear_vs_backward", "vmap_vs_backward", "loop_vs_backward"} <= set(data["comparisons"])
    assert all(c["ratio"] > 0 for c in data["comparisons"].values())


def test_update_benchmark_runs(tmp_path):
    out = tmp_path / "update.json"
    argv = ["--sizes", "3", "--batch", "8", "--hidden", "16", "--repeats", "1", "--methods", "ls", "nashmtl", "cagrad", "cagrad_fast", "cagrad(loop)", "--json", str(out)]
    assert update.main(argv) == 0
    data = json.loads(out.read_text())
    methods = data["sizes"]["3"]["methods"]
    assert methods["nashmtl"]["ratio"] > 0 and methods["cagrad(loop)"]["ratio"] > 0
    diagnostics = data["sizes"]["3"]["diagnostics"]  # the cost of a log step's gradient diagnostics
    assert set(diagnostics) == {"ls", "nashmtl"} and all("amortised_fraction_of_ls" in d for d in diagnostics.values())


def test_update_profile_counts_syncs_and_ops(tmp_path):
    out = tmp_path / "profile.json"
    argv = ["--profile", "--sizes", "3", "--batch", "8", "--hidden", "16", "--methods", "ls", "nashmtl", "--json", str(out)]
    assert update.main(argv) == 0
    profile = json.loads(out.read_text())["profile"]
    assert profile["ls"]["syncs_per_update"] == 0 and profile["nashmtl"]["syncs_per_update"] == 2  # the two Gram matrices
    assert profile["nashmtl"]["ops_per_update"] > profile["ls"]["ops_per_update"] > 0


def test_update_compile_writes_compiled_over_eager_per_size_and_method(tmp_path, monkeypatch):
    """`--compile`'s JSON, with one tiny size standing in for quick and paper (compiling the paper
    networks takes minutes on two cores; the second size reuses the first one's compiled code)."""
    monkeypatch.setattr(update, "SIZES", {"quick": (16, 2, 8), "paper": (16, 2, 8)})
    out = tmp_path / "compile.json"
    assert update.main(["--compile", "--methods", "ls", "--repeats", "1", "--json", str(out)]) in (0, 1)  # 1: a target missed
    data = json.loads(out.read_text())["compiled_vs_eager"]
    assert set(data) == {"quick", "paper"}
    for size in data.values():
        assert set(size) == {"ls"}
        assert all(row["ratio"] == pytest.approx(row["compiled_ms"] / row["eager_ms"]) for row in size.values())


def test_collect_benchmark_runs(tmp_path):
    out = tmp_path / "collect.json"
    assert collect.main(["--benchmark", "MT1-reach-v3", "--steps", "20", "--repeats", "1", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["ratio"] > 0


def test_collect_benchmark_compares_workers_with_in_process(tmp_path):
    out = tmp_path / "workers.json"
    argv = ["--workers", "1", "--benchmarks", "MT1-reach-v3", "--steps", "10", "--repeats", "1", "--json", str(out)]
    assert collect.main(argv) == 0
    comparison = json.loads(out.read_text())["comparisons"]["mt1-reach-v3_workers_vs_inprocess"]
    assert comparison["ratio"] > 0 and comparison["compute_bound_limit"] == 1.0
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


def test_eval_parallel_vs_sequential_runs_at_a_tiny_size(tmp_path):
    from mtrl.benchmarks import step

    out = tmp_path / "step.json"
    argv = ["--benchmark", "MT1-reach-v3", "--workers", "1", "--episodes", "3", "--steps", "5", "--eval-envs", "2",
            "--hidden", "16", "--layers", "1", "--repeats", "1", "--json", str(out)]
    assert step.main(argv) == 0
    data = json.loads(out.read_text())["comparisons"]["eval_parallel_vs_sequential"]
    assert data["better"] == "lower" and data["target"] == 0.85 and data["ratio"] > 0 and isinstance(data["pass"], bool)
    assert data["instances"] == 2 and set(data["predicted"]) == {"1", "16"}
    assert data["predicted"]["1"]["parallel_rounds"] == 2 * 5  # 3 episodes on 2 instances: two in a row
