"""The training step is ready for a GPU (issue 12): no host syncs in ``MTSAC.update`` beyond the
K x K Gram transfers of G-based methods, fewer ops, and a compiled update (``agent.compile``)
that gives the eager update's parameters, never recompiles, and resumes bit-exactly.

Syncs and ops are counted with ``mtrl.benchmarks.profiling`` (the CPU proxy of ``mtrl bench update
--profile``). The compile tests share one tiny agent shape, so inductor compiles each piece once
per session (tens of seconds on two cores; the rest reuses it).
"""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from mtrl.agents.mtsac import MTSAC
from mtrl.benchmarks.profiling import count_step
from mtrl.benchmarks.update import random_batch
from mtrl.aggregators import make
from mtrl.config import AgentConfig
from mtrl.metrics import read_metrics
from tests.test_agent import ACT, K, OBS, NoStep, make_batch


def make_agent(**options) -> MTSAC:
    torch.manual_seed(0)
    return MTSAC(OBS, ACT, K, AgentConfig(hidden_dim=16, num_layers=2, **options))


def run_updates(agent: MTSAC, method: str, steps: int, diagnostics_at: int | None = None, **agg_options):
    critic, actor = make(method, K, **agg_options), make(method, K, **agg_options)
    agent_gen, agg_gen = torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)
    metrics = []
    for step in range(steps):
        metrics.append(agent.update(
            make_batch(step), step, critic, actor, generator=agent_gen, aggregator_generator=agg_gen,
            diagnostics=step == diagnostics_at,
        ))
    return metrics


# ---- syncs and ops ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "method, options, gram_transfers",
    [("ls", {}, 0), ("nashmtl", {}, 2), ("cagrad", {}, 2), ("cagrad_fast", {"num_sampled": 1}, 2), ("pcgrad", {}, 2)],
)
def test_an_update_reads_nothing_from_the_device_but_the_gram_matrices(method, options, gram_transfers):
    agent = make_agent()
    critic, actor = make(method, K, **options), make(method, K, **options)
    gens = torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)

    def step(i: int) -> None:
        agent.update(make_batch(i), i, critic, actor, generator=gens[0], aggregator_generator=gens[1])

    step(0)
    counts = count_step(step, 1, 3)
    assert counts["scalar_reads_per_update"] == 0, counts
    assert counts["host_transfers_per_update"] == gram_transfers


def test_the_metrics_of_an_update_are_device_tensors_read_in_one_place():
    (metrics,) = run_updates(make_agent(), "nashmtl", 1)
    for key in ("critic/loss", "actor/loss", "temperature/loss", "alpha", "skipped_critic", "skipped_actor"):
        assert isinstance(metrics[key], torch.Tensor) and metrics[key].dim() == 0, key
    values = read_metrics(metrics)
    assert isinstance(values["critic/loss"], float) and len(values["critic/weights"]) == K
    assert values["skipped_critic"] == 0.0
    json.dumps(values)  # plain numbers only


def _ops_per_update(method: str, num_tasks: int, num_layers: int, steps_only_networks: bool = False) -> float:
    """Compute-like ops of one update (a non-log step) on ``num_tasks`` tasks with ``num_layers``
    hidden layers. ``steps_only_networks``: the Adam steps and the Polyak update left out (optimizers
    that do nothing, and no target update in the counted steps): what remains are the network
    passes, the losses and the aggregation."""
    torch.manual_seed(0)
    every = 10**6 if steps_only_networks else 1  # step 0, the uncounted warm-up, still updates the targets
    config = AgentConfig(hidden_dim=16, num_layers=num_layers, target_update_every=every)
    agent = MTSAC(39, 4, num_tasks, config)  # random_batch's MetaWorld sizes
    if steps_only_networks:
        agent.actor_optimizer = agent.critic_optimizer = agent.alpha_optimizer = NoStep()
    critic, actor = make(method, num_tasks), make(method, num_tasks)
    batch = random_batch(num_tasks, 8, torch.device("cpu"))
    gens = torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)

    def step(i: int) -> None:
        agent.update(batch, i, critic, actor, generator=gens[0], aggregator_generator=gens[1])

    step(0)
    return count_step(step, 1, 2)["ops_per_update"]


@pytest.mark.parametrize("method", ["ls", "nashmtl"])
def test_an_update_issues_as_many_ops_for_ten_tasks_as_for_three(method):
    """The losses are batched over tasks and the default engine builds G in one pass: no op is
    issued per task (a per-task loss loop, or G by K autograd calls, grows the count with K)."""
    assert _ops_per_update(method, 10, 2) == _ops_per_update(method, 3, 2)


def test_adam_and_the_polyak_update_issue_no_op_per_parameter_tensor():
    """Two more hidden layers add 4 parameter tensors to each of the actor, the two Q networks and
    their targets. The update must grow by exactly what its network passes grow by: fused Adam and
    ``_foreach_lerp_`` are one op whatever the number of tensors (torch's per-parameter Adam issues
    8 ops per tensor, a per-tensor Polyak loop 1)."""
    grows = _ops_per_update("ls", K, 4) - _ops_per_update("ls", K, 2)
    networks_grow = _ops_per_update("ls", K, 4, steps_only_networks=True) - _ops_per_update("ls", K, 2, steps_only_networks=True)
    assert networks_grow > 0 and grows == networks_grow


# ---- the compiled update ------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["ls", "nashmtl", "cagrad", "cagrad_fast"])
def test_compiled_update_gives_the_eager_parameters(method):
    options = {"num_sampled": 1} if method == "cagrad_fast" else {}
    eager, compiled = make_agent(), make_agent(compile=True)
    run_updates(eager, method, 5, diagnostics_at=4, **options)
    metrics = run_updates(compiled, method, 5, diagnostics_at=4, **options)
    assert compiled.compile_fallbacks == {}
    for (name, p), q in zip(eager.state_dict().items(), compiled.state_dict().values()):
        torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-5, msg=name)
    assert 0.0 <= read_metrics(metrics[-1])["critic/conflict"] <= 1.0


@pytest.mark.parametrize("engine", ["linear", "loop"])
def test_engines_that_cannot_be_compiled_fall_back_with_a_reason(engine):
    eager, compiled = make_agent(), make_agent(compile=True)
    eager.jacobian_method = compiled.jacobian_method = engine
    run_updates(eager, "nashmtl", 3)
    with pytest.warns(RuntimeWarning, match=f"{engine!r} engine"):
        run_updates(compiled, "nashmtl", 3)
    assert engine in compiled.compile_fallbacks
    for p, q in zip(eager.parameters(), compiled.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-5)


def test_the_compiled_update_does_not_recompile():
    from torch._dynamo.utils import counters

    agent = make_agent(compile=True)
    run_updates(agent, "nashmtl", 2, diagnostics_at=1)
    frames = dict(counters["frames"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run_updates(agent, "nashmtl", 4, diagnostics_at=3)  # same shapes, a diagnostics step again
    assert dict(counters["frames"]) == frames


@pytest.mark.slow  # three CLI runs, each compiling its update (minutes on two cores)
def test_a_compiled_run_killed_and_resumed_is_bit_exact(tmp_path):
    from tests.test_resume import POINT, _write_config, kill_resume_and_compare

    base = {**POINT, "agent": {**POINT["agent"], "compile": True}, "train": {**POINT["train"], "total_steps": 400}}
    kill_resume_and_compare(_write_config(tmp_path / "config.yaml", base, {"name": "nashmtl"}), tmp_path)
