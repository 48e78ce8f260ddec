"""The benchmark scripts run end to end at tiny sizes (no timing is asserted: speed goals live in
the benchmarks' own output, never in tests)."""

from __future__ import annotations

import json

import numpy as np

from benchmarks import aggregators, collect, jacobian, update


def test_aggregator_benchmark_runs_and_writes_ratios(tmp_path):
    out = tmp_path / "agg.json"
    assert aggregators.main(["--sizes", "3", "--params", "500", "--repeats", "1", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    methods = data["sizes"]["3"]["methods"]
    assert {"gram", "nashmtl", "cagrad", "ls"} <= set(methods)
    assert all("ratio" in m for m in methods.values())
    assert all("ratio" in t for t in data["sizes"]["3"]["targets"])


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
    assert collect.compute_bound_speedup(np.ones(10), 2) == 2.0
    assert collect.compute_bound_speedup(np.ones(10), 16) == 10.0  # at most one worker per task
    assert collect.compute_bound_speedup(np.array([3.0, 1.0, 1.0, 1.0]), 2) == 1.5  # tasks 0, 2 | 1, 3
