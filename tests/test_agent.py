"""The multi-task SAC update (agents/mtsac.py, docs/design.md §3 and §4): the no-Jacobian path and the G path
write the same gradients, task-specific parameters take the plain sum, every engine gives the
same update, CAGrad-Fast's reduced G still feeds every task's temperature, max_norm clips, and a
non-finite loss skips the step without touching the parameters."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from mtrl.agents.mtsac import MTSAC
from mtrl.aggregators import make
from mtrl.aggregators.ls import LinearScalarization
from mtrl.config import AgentConfig
from mtrl.replay import Batch
from tests.helpers import random_batch

K, B, OBS, ACT = 3, 8, 6, 2


class LSThroughG(LinearScalarization):
    """LS that asks for G: its direction is the sum of the rows the engine built."""

    def needs_jacobian(self, step: int) -> bool:
        return True


class NoStep:
    """An optimizer stand-in that leaves the gradients in place for inspection."""

    def zero_grad(self, set_to_none: bool = True) -> None:
        pass

    def step(self) -> None:
        pass


def make_agent(variant: str = "mt") -> MTSAC:
    torch.manual_seed(0)
    return MTSAC(OBS, ACT, K, AgentConfig(hidden_dim=16, num_layers=2, variant=variant))


def make_batch(seed: int = 0) -> Batch:
    return random_batch(K, B, OBS, ACT, seed)


def component_grads(agent: MTSAC, agg, component: str, engine: str = "auto") -> dict[str, torch.Tensor]:
    """Gradients one component step writes, with the optimizer step left out."""
    agent.jacobian_method = engine
    batch = make_batch()
    rows = torch.arange(K)
    module = getattr(agent, component)
    for p in module.parameters():
        p.grad = None
    if component == "critic":
        inputs = (batch.obs, batch.action, agent._critic_target(batch, rows, torch.Generator().manual_seed(1)), agent.codes)
        loss_fn, constants, has_aux = agent._critic_loss, {}, False
    else:
        noise = torch.randn(K, B, ACT, generator=torch.Generator().manual_seed(2))
        inputs = (batch.obs, noise, agent.log_alpha.exp().detach()[:, None], agent.codes)
        constants = {"critic_params": {n: p.detach() for n, p in agent.critic.named_parameters()}}
        loss_fn, has_aux = agent._actor_loss, True
    context = dict(perf=None, main_task=None, generator=torch.Generator().manual_seed(3))
    agent._component_step(component, module, loss_fn, inputs, constants, agg, NoStep(), 0, context, {}, has_aux=has_aux)
    return {n: p.grad.clone() for n, p in module.named_parameters()}


@pytest.mark.parametrize("variant", ["mt", "te", "mh"])
@pytest.mark.parametrize("component", ["critic", "actor"])
def test_one_backward_path_and_G_path_write_the_same_gradients(variant, component):
    agent = make_agent(variant)
    plain = component_grads(agent, make("ls", K), component)
    for engine in ("linear", "vmap", "loop"):
        via_g = component_grads(agent, LSThroughG(K), component, engine)
        assert plain.keys() == via_g.keys()
        for name in plain:  # shared parameters: sum of G's rows; task-specific: plain sum
            torch.testing.assert_close(via_g[name], plain[name], rtol=1e-5, atol=1e-6, msg=f"{engine}: {name}")
    specific = getattr(agent, component).task_specific_names()
    assert bool(specific) == (variant != "mt")


@pytest.mark.parametrize("engine", ["linear", "vmap", "loop"])
def test_a_full_update_is_the_same_with_every_engine(engine):
    reference = make_agent()
    reference.jacobian_method = "loop"
    agent = make_agent()
    agent.jacobian_method = engine
    for a in (reference, agent):
        critic, actor = make("nashmtl", K), make("nashmtl", K)
        for step in range(3):
            a.update(make_batch(step), step, critic, actor, generator=torch.Generator().manual_seed(step))
    for (name, p), q in zip(agent.state_dict().items(), reference.state_dict().values()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5, msg=name)


def test_cagrad_fast_builds_reduced_rows_and_every_temperature_moves():
    agent = make_agent()
    before = agent.log_alpha.detach().clone()
    critic, actor = make("cagrad_fast", K, num_sampled=1), make("cagrad_fast", K, num_sampled=1)
    seen = []
    aggregate = critic.aggregate
    critic.aggregate = lambda G, ctx: (seen.append((G.shape[0], ctx.row_groups)), aggregate(G, ctx))[1]
    metrics = agent.update(
        make_batch(), 0, critic, actor, generator=torch.Generator().manual_seed(0),
        aggregator_generator=torch.Generator().manual_seed(0),
    )
    (rows, groups), = seen  # one sampled task + the mean row of the other two
    assert rows == 2 and [g.numel() for g in groups] == [1, 2]
    assert sorted(int(k) for g in groups for k in g) == list(range(K))
    assert float(metrics["skipped_critic"]) == 0 and float(metrics["skipped_actor"]) == 0
    assert bool((agent.log_alpha.detach() != before).all())  # the temperature saw every task's log-prob


def test_max_norm_clips_the_shared_direction():
    agent = make_agent()
    unclipped = component_grads(agent, make("ls", K), "critic")
    shared = [n for n, _ in agent.critic.named_parameters()]
    norm = torch.cat([unclipped[n].reshape(-1) for n in shared]).norm()
    clipped = component_grads(agent, make("ls", K, max_norm=float(norm) / 4), "critic")
    got = torch.cat([clipped[n].reshape(-1) for n in shared]).norm()
    torch.testing.assert_close(got, norm / 4, rtol=1e-4, atol=0)
    via_g = component_grads(agent, make("nashmtl", K, max_norm=1e-3), "critic")
    assert float(torch.cat([via_g[n].reshape(-1) for n in shared]).norm()) <= 1e-3 * (1 + 1e-4)


@pytest.mark.parametrize("adam", ["fused", "foreach"])
@pytest.mark.parametrize("method", ["ls", "nashmtl"])
def test_non_finite_loss_skips_the_step_and_leaves_the_critic_unchanged(method, adam):
    torch.manual_seed(0)
    agent = MTSAC(OBS, ACT, K, AgentConfig(hidden_dim=16, num_layers=2, adam=adam))
    assert bool(agent.critic_optimizer.defaults["fused"]) == (adam == "fused")
    critic, actor = make(method, K), make(method, K)
    agent.update(make_batch(1), 0, critic, actor, generator=torch.Generator().manual_seed(0))  # Adam state exists
    critic_before = copy.deepcopy(agent.critic.state_dict())
    optimizer_before = copy.deepcopy(agent.critic_optimizer.state_dict())
    actor_before = copy.deepcopy(agent.actor.state_dict())
    batch = make_batch()
    batch.reward[1, 0] = float("nan")
    metrics = agent.update(batch, 1, critic, actor, generator=torch.Generator().manual_seed(0))
    assert float(metrics["skipped_critic"]) == 1
    for name, value in agent.critic.state_dict().items():
        assert torch.equal(value, critic_before[name]), name
    for key, value in agent.critic_optimizer.state_dict()["state"].items():  # moments and step count too
        for field, tensor in value.items():
            assert torch.equal(tensor, optimizer_before["state"][key][field]), (key, field)
    # the actor's loss does not read the reward: its step still ran
    assert float(metrics["skipped_actor"]) == 0
    assert any(not torch.equal(v, actor_before[n]) for n, v in agent.actor.state_dict().items())


def test_acting_is_deterministic_without_noise_and_in_range():
    agent = make_agent()
    obs = torch.randn(K, OBS)
    a1, a2 = agent.act(obs, deterministic=True), agent.act(obs, deterministic=True)
    assert a1.shape == (K, ACT) and torch.equal(a1, a2)
    noisy = agent.act(obs, generator=torch.Generator().manual_seed(0))
    assert torch.equal(noisy, agent.act(obs, generator=torch.Generator().manual_seed(0)))
    assert not torch.equal(noisy, agent.act(obs, generator=torch.Generator().manual_seed(1)))
    # tanh(mu + sigma * eps), eps the generator's standard normal draw: with the log-std pinned to
    # log 0.5, atanh(noisy) - atanh(deterministic) = 0.5 eps (float32 actions: atol 1e-4)
    torch.manual_seed(0)
    pinned = MTSAC(OBS, ACT, K, AgentConfig(hidden_dim=16, num_layers=2, log_std_min=math.log(0.5) - 1e-7, log_std_max=math.log(0.5) + 1e-7))
    eps = torch.randn(K, ACT, generator=torch.Generator().manual_seed(0), dtype=torch.float32).double()
    mean = pinned.act(obs, deterministic=True).double()
    noisy = pinned.act(obs, generator=torch.Generator().manual_seed(0)).double()
    torch.testing.assert_close(torch.atanh(noisy) - torch.atanh(mean), 0.5 * eps, rtol=0, atol=1e-4)
