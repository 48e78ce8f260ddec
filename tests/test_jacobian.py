"""The per-task Jacobian engines (mtrl/jacobian.py): "linear", "vmap" and "loop" give the same G,
the rows sum to the gradient of the summed loss, grouped rows are the gradients of group means,
and the engines refuse what they cannot serve."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call

from mtrl.agents.mtsac import MTSAC
from mtrl.config import AgentConfig
from mtrl.jacobian import METHODS, flatten, group_rows, grouped_jacobian, linear_layers, per_task_jacobian, resolve_method

K, B = 4, 6
ENGINES = ("linear", "vmap", "loop")


def make_case(variant: str, component: str):
    """(module, loss_fn, params, inputs, shared names, has_aux) of a small MTSAC component."""
    torch.manual_seed(0)
    agent = MTSAC(5, 2, K, AgentConfig(hidden_dim=8, num_layers=2, variant=variant))
    gen = torch.Generator().manual_seed(1)
    obs = torch.randn(K, B, 5, generator=gen)
    if component == "critic":
        module, has_aux = agent.critic, False
        inputs = (obs, torch.rand(K, B, 2, generator=gen) * 2 - 1, torch.randn(K, B, generator=gen), agent.codes)
        loss_fn = agent._critic_loss
    else:
        module, has_aux = agent.actor, True
        inputs = (obs, torch.randn(K, B, 2, generator=gen), torch.rand(K, 1, generator=gen) + 0.1, agent.codes)
        critic_params = {n: p.detach() for n, p in agent.critic.named_parameters()}

        def loss_fn(params, *args):
            return agent._actor_loss(params, *args, critic_params=critic_params)

    named = dict(module.named_parameters())
    specific = set(module.task_specific_names())
    shared = [n for n in named if n not in specific]
    params = {n: p.detach() for n, p in named.items()}
    return module, loss_fn, params, inputs, shared, has_aux


CASES = [(v, c) for v in ("mt", "te", "mh") for c in ("critic", "actor")]


@pytest.mark.parametrize("variant,component", CASES)
def test_engines_agree_and_rows_sum_to_the_gradient_of_the_summed_loss(variant, component):
    module, loss_fn, params, inputs, shared, has_aux = make_case(variant, component)
    results = {
        m: per_task_jacobian(loss_fn, params, inputs, shared, method=m, has_aux=has_aux, module=module) for m in ENGINES
    }
    ref = results["loop"]
    assert ref.G.shape == (K, sum(params[n].numel() for n in shared))
    for m in ("linear", "vmap"):
        torch.testing.assert_close(results[m].G, ref.G, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(results[m].losses, ref.losses)
        assert sorted(results[m].other_grads) == sorted(ref.other_grads) == sorted(set(params) - set(shared))
        for n, g in ref.other_grads.items():
            torch.testing.assert_close(results[m].other_grads[n], g, rtol=1e-5, atol=1e-6)
        if has_aux:
            torch.testing.assert_close(results[m].aux, ref.aux)

    # the sum of the rows is the gradient of the summed loss (one ordinary backward)
    leaves = {n: p.detach().requires_grad_(True) for n, p in params.items()}
    out = loss_fn(leaves, *inputs)
    total = (out[0] if has_aux else out).sum()
    grads = dict(zip(leaves, torch.autograd.grad(total, list(leaves.values()))))
    torch.testing.assert_close(results["linear"].G.sum(0), flatten([grads[n] for n in shared]), rtol=1e-5, atol=1e-6)
    for n, g in results["linear"].other_grads.items():
        torch.testing.assert_close(g, grads[n], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("variant,component", [("mt", "critic"), ("mh", "actor")])
def test_grouped_rows_are_gradients_of_group_mean_losses(variant, component):
    module, loss_fn, params, inputs, shared, has_aux = make_case(variant, component)
    full = per_task_jacobian(loss_fn, params, inputs, shared, method="loop", has_aux=has_aux)
    groups = (torch.tensor([2]), torch.tensor([0]), torch.tensor([3, 1]))
    candidates = {m: grouped_jacobian(loss_fn, params, inputs, groups, shared, method=m, has_aux=has_aux, module=module) for m in ENGINES}
    candidates["group_rows of the full G"] = group_rows(full, groups)  # what agent.compile uses
    for res in candidates.values():
        assert res.G.shape == (3, full.G.shape[1])
        torch.testing.assert_close(res.G[0], full.G[2], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(res.G[1], full.G[0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(res.G[2], full.G[[1, 3]].mean(0), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(res.losses, torch.stack([full.losses[2], full.losses[0], full.losses[[1, 3]].mean()]))
        for n, g in full.other_grads.items():  # task-specific parameters: plain sum over all tasks
            torch.testing.assert_close(res.other_grads[n], g, rtol=1e-5, atol=1e-6)
        if has_aux:  # every task's aux, in task order
            torch.testing.assert_close(res.aux, full.aux)


def test_groups_must_partition_the_tasks():
    module, loss_fn, params, inputs, shared, _ = make_case("mt", "critic")
    with pytest.raises(ValueError, match="partition"):
        grouped_jacobian(loss_fn, params, inputs, (torch.tensor([0]), torch.tensor([1, 2])), shared, module=module)


def test_auto_picks_linear_for_linear_layers_and_vmap_otherwise():
    module, *_ = make_case("te", "critic")
    shared = [n for n, _ in module.named_parameters() if n not in module.task_specific_names()]
    assert linear_layers(module, shared) is not None
    assert resolve_method("auto", module, shared) == "linear"
    # the task embedding is not a Linear parameter: the linear engine cannot take it as a column
    assert linear_layers(module, [*shared, "q1.task_embedding"]) is None
    assert resolve_method("auto", module, [*shared, "q1.task_embedding"]) == "vmap"
    assert resolve_method("auto", None, shared) == "vmap"
    assert resolve_method("loop", module, shared) == "loop"
    with pytest.raises(ValueError, match="allowed: " + ", ".join(METHODS)):
        resolve_method("jacrev", module, shared)


def test_linear_engine_refuses_what_it_cannot_serve():
    module, loss_fn, params, inputs, shared, _ = make_case("te", "critic")
    with pytest.raises(ValueError, match="nn.Linear"):
        per_task_jacobian(loss_fn, params, inputs, list(params), method="linear", module=module)
    with pytest.raises(ValueError, match="module="):
        per_task_jacobian(loss_fn, params, inputs, shared, method="linear")

    def not_polymorphic(p, *args):  # a loss reduced over all tasks at once
        return loss_fn(p, *args).mean()

    with pytest.raises(ValueError, match=r"loss vector \[4\]"):
        per_task_jacobian(not_polymorphic, params, inputs, shared, method="linear", module=module)


def test_engines_agree_on_a_layer_called_twice_and_a_layer_not_called():
    """Shared Linear layers reused within one loss accumulate, a call under no_grad adds nothing,
    an unused layer has zero columns."""
    torch.manual_seed(0)
    net = nn.ModuleDict({"a": nn.Linear(3, 3), "b": nn.Linear(3, 1), "unused": nn.Linear(3, 2)})
    params = {n: p.detach() for n, p in net.named_parameters()}

    def loss_fn(p, x):
        with torch.no_grad():  # a call that carries no gradient (e.g. a target) is not a row term
            x = x + 0.1 * functional_call(net["a"], {"weight": p["a.weight"], "bias": p["a.bias"]}, (x,))
        h = functional_call(net["a"], {"weight": p["a.weight"], "bias": p["a.bias"]}, (x,))
        h = functional_call(net["a"], {"weight": p["a.weight"], "bias": p["a.bias"]}, (torch.tanh(h),))
        y = functional_call(net["b"], {"weight": p["b.weight"], "bias": p["b.bias"]}, (h,))
        return y.squeeze(-1).pow(2).mean(-1)

    x = torch.randn(K, B, 3)
    linear = per_task_jacobian(loss_fn, params, (x,), method="linear", module=net)
    loop = per_task_jacobian(loss_fn, params, (x,), method="loop")
    torch.testing.assert_close(linear.G, loop.G, rtol=1e-5, atol=1e-6)
    unused = 3 * 3 + 3 + 3 + 1  # a and b come first in the column order
    assert torch.equal(linear.G[:, unused:], torch.zeros(K, 3 * 2 + 2))
