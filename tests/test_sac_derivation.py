"""The SAC quantities of ``MTSAC`` (agents/mtsac.py, agents/networks.py) derived by hand.

Every other agent test compares the agent with itself (engines, compiled against eager, the
no-G path against the G path), so a sign error in the TD target or the temperature loss would
pass them all. Here each quantity is recomputed in float64, independently of the agent's code:
the networks by a plain forward pass over the agent's parameter tensors (``hand_mlp``), the
squashed Gaussian by ``torch.distributions`` (``TransformedDistribution(Normal, TanhTransform)``,
whose log-determinant is the exact ``2 (log 2 - u - softplus(-2u))``), the losses and the
Polyak step by their textbook formulas. ``docs/sac.md`` states each formula with its test.

The 1e-6 guard: the agent's log-probability subtracts ``log(1 - tanh(u)^2 + 1e-6)`` where the
exact density subtracts ``log(1 - tanh(u)^2)``; since ``1 / (1 - tanh(u)^2) = cosh(u)^2`` the
difference is exactly ``log1p(1e-6 cosh(u)^2)`` per action dimension (at most 1.0e-4 for
|u| <= 3). The log-probability test compares with the exact distribution within that bound
(``guard_bound``); the TD-target and actor tests take the exact log-probability minus that
identity (``hand_policy(..., guarded=True)``), so that values and gradients can be compared to
float64 rounding (1e-10) rather than to the guard's size.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.distributions import Independent, Normal, TanhTransform, TransformedDistribution

from mtrl.agents.mtsac import MTSAC
from mtrl.aggregators import make
from mtrl.config import AgentConfig, apply_overrides, config_from_dict
from mtrl.replay import Batch

K, B, OBS, ACT = 3, 16, 5, 2
LAYERS = 2
GAMMA, TAU = 0.9, 0.1  # not the defaults, so that a hard-coded 0.99 or 0.005 shows
LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0
LOG_ALPHA = (-1.5, 0.0, 0.7)  # one temperature per task, all different
ROUNDING = 1e-10


@pytest.fixture(autouse=True)
def float64():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # the agent is built, and updates, in float64
    yield
    torch.set_default_dtype(previous)


class NoStep:
    """An optimizer stand-in that leaves the gradients in place for inspection."""

    def zero_grad(self, set_to_none: bool = True) -> None:
        pass

    def step(self) -> None:
        pass


def make_agent(**options) -> MTSAC:
    """A tiny agent with seeded weights, distinct per-task temperatures and target critics that
    differ from the online ones (so that using the wrong critic shows)."""
    torch.manual_seed(0)
    settings = dict(hidden_dim=8, num_layers=LAYERS, discount=GAMMA, tau=TAU, log_std_min=LOG_STD_MIN, log_std_max=LOG_STD_MAX)
    agent = MTSAC(OBS, ACT, K, AgentConfig(**{**settings, **options}))
    with torch.no_grad():
        agent.log_alpha.copy_(torch.tensor(LOG_ALPHA))
        for p in agent.critic_target.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return agent


def make_batch(seed: int) -> Batch:
    gen = torch.Generator().manual_seed(seed)
    done = torch.zeros(K, B)
    done[:, ::3] = 1.0  # terminal and non-terminal transitions in every task
    return Batch(
        obs=torch.randn(K, B, OBS, generator=gen),
        action=torch.rand(K, B, ACT, generator=gen) * 2 - 1,
        reward=torch.randn(K, B, generator=gen),
        next_obs=torch.randn(K, B, OBS, generator=gen),
        done=done,
    )


# ---- the networks and the policy, by hand -------------------------------------------------------
def hand_mlp(params: dict[str, torch.Tensor], prefix: str, x: torch.Tensor) -> torch.Tensor:
    """ReLU MLP with LAYERS hidden layers and a linear head (``prefix.trunk.{0,2,..}``, ``prefix.head``)."""
    for i in range(LAYERS):
        x = torch.relu(x @ params[f"{prefix}.trunk.{2 * i}.weight"].T + params[f"{prefix}.trunk.{2 * i}.bias"])
    return x @ params[f"{prefix}.head.weight"].T + params[f"{prefix}.head.bias"]


def with_task(x: torch.Tensor, task: int) -> torch.Tensor:
    """``x [B, n]`` with task ``task``'s one-hot code appended (the ``mt`` variant's input)."""
    return torch.cat([x, torch.eye(K)[task].expand(x.shape[0], K)], dim=-1)


def hand_policy(actor: dict[str, torch.Tensor], obs: torch.Tensor, task: int, noise: torch.Tensor, guarded: bool = False):
    """Action, log-probability and pre-tanh value of task ``task``'s tanh-squashed Gaussian for
    ``obs [B, OBS]`` and standard normal ``noise [B, ACT]``: the exact log-probability
    (torch.distributions), less ``sum log1p(1e-6 cosh(u)^2)`` with ``guarded`` (module docstring)."""
    out = hand_mlp(actor, "net", with_task(obs, task))
    mu, raw = out[:, :ACT], out[:, ACT:]
    log_std = LOG_STD_MIN + (LOG_STD_MAX - LOG_STD_MIN) * (torch.tanh(raw) + 1) / 2  # the documented bound
    std = log_std.exp()
    u = mu + std * noise
    action = torch.tanh(u)
    squashed = TransformedDistribution(Independent(Normal(mu, std), 1), [TanhTransform()])
    log_prob = squashed.log_prob(action)
    if guarded:
        log_prob = log_prob - torch.log1p(1e-6 * torch.cosh(u).pow(2)).sum(-1)
    return action, log_prob, u


def hand_q(critic: dict[str, torch.Tensor], obs: torch.Tensor, action: torch.Tensor, task: int):
    x = with_task(torch.cat([obs, action], dim=-1), task)
    return hand_mlp(critic, "q1", x).squeeze(-1), hand_mlp(critic, "q2", x).squeeze(-1)


def guard_bound(u: torch.Tensor) -> torch.Tensor:
    """Upper bound of (exact - agent) log-probability per sample: sum over dims of 1e-6 cosh(u)^2."""
    return (1e-6 * torch.cosh(u).pow(2)).sum(-1)


def named(module: torch.nn.Module, detach: bool = False) -> dict[str, torch.Tensor]:
    return {n: (p.detach() if detach else p) for n, p in module.named_parameters()}


# ---- the soft TD target -------------------------------------------------------------------------
def test_soft_td_target_is_reward_plus_discounted_soft_value_of_the_target_critics_per_task():
    """y = r + gamma (1 - terminated) (min(Q1', Q2')(s', a') - alpha_k log pi(a'|s')), a' ~ pi(.|s'),
    with each task's own temperature; and the critic loss sum_i mean_b (Q_i(s, a) - y)^2."""
    agent = make_agent()
    batch = make_batch(0)
    rows = torch.arange(K)
    target = agent._critic_target(batch, rows, torch.Generator().manual_seed(5))
    noise = torch.randn(K, B, ACT, generator=torch.Generator().manual_seed(5))  # the draw _critic_target makes
    actor, target_critic = named(agent.actor, True), named(agent.critic_target, True)
    alpha = torch.exp(torch.tensor(LOG_ALPHA))
    assert torch.equal(alpha, agent.log_alpha.detach().exp())
    for k in range(K):
        next_action, log_prob, _ = hand_policy(actor, batch.next_obs[k], k, noise[k], guarded=True)
        q1, q2 = hand_q(target_critic, batch.next_obs[k], next_action, k)
        soft_value = torch.minimum(q1, q2) - alpha[k] * log_prob
        expected = batch.reward[k] + GAMMA * (1.0 - batch.done[k]) * soft_value
        torch.testing.assert_close(target[k], expected, rtol=1e-12, atol=ROUNDING, msg=f"task {k}")
        terminal = batch.done[k] == 1  # no bootstrap at a terminal transition: exactly the reward
        assert torch.equal(target[k][terminal], batch.reward[k][terminal])

    # the critic regresses both online Q networks on the same target
    critic = named(agent.critic, True)
    losses = agent._critic_loss(named(agent.critic), batch.obs, batch.action, target, agent.codes)
    for k in range(K):
        q1, q2 = hand_q(critic, batch.obs[k], batch.action[k], k)
        expected = ((q1 - target[k]) ** 2).mean() + ((q2 - target[k]) ** 2).mean()
        torch.testing.assert_close(losses[k], expected, rtol=1e-12, atol=ROUNDING)


# ---- the squashed Gaussian ----------------------------------------------------------------------
class FixedHead(torch.nn.Module):
    """Stands in for the actor's network: returns the given (mean, raw log-std) whatever the input."""

    def __init__(self, mu: torch.Tensor, raw_log_std: torch.Tensor) -> None:
        super().__init__()
        self.out = torch.cat([mu, raw_log_std], dim=-1)

    def forward(self, obs: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        return self.out


def squashed_log_prob(pre_tanh: torch.Tensor, mu: torch.Tensor, raw_log_std: torch.Tensor):
    """The agent's (action, log-probability) for the given pre-tanh values, and the exact ones."""
    agent = make_agent()
    agent.actor.net = FixedHead(mu, raw_log_std)
    log_std = LOG_STD_MIN + (LOG_STD_MAX - LOG_STD_MIN) * (torch.tanh(raw_log_std) + 1) / 2
    std = log_std.exp()
    noise = (pre_tanh - mu) / std
    action, log_prob = agent.actor(torch.zeros(pre_tanh.shape[0], OBS), torch.zeros(K), noise)
    exact = TransformedDistribution(Independent(Normal(mu, std), 1), [TanhTransform()])
    return action, log_prob, exact, std


def test_log_probability_is_the_tanh_squashed_gaussians_within_the_guard_bound():
    """Against torch.distributions for pre-tanh values over [-3, 3]: the agent's log-probability
    is lower than the exact one by at most guard_bound(u) (1e-6 cosh(u)^2 per dimension, at most
    2.0e-4 here), and never higher."""
    gen = torch.Generator().manual_seed(3)
    n = 200
    u = torch.linspace(-3.0, 3.0, n * ACT).reshape(n, ACT)[torch.randperm(n, generator=gen)]
    mu = 0.5 * torch.randn(n, ACT, generator=gen)
    raw = torch.randn(n, ACT, generator=gen)
    action, log_prob, exact, _ = squashed_log_prob(u, mu, raw)
    torch.testing.assert_close(action, torch.tanh(u), rtol=0, atol=1e-15)
    gap = exact.log_prob(action) - log_prob
    assert bool((gap >= -ROUNDING).all())
    assert bool((gap <= guard_bound(u) + ROUNDING).all()), float((gap - guard_bound(u)).max())
    # without the tanh correction the gap would be -sum log(1 - tanh(u)^2), up to 2 x 4.6 here
    assert float(guard_bound(u).max()) < 2.1e-4


@pytest.mark.parametrize("u", [4.0, 6.0, 8.0, 10.0, 12.0])
def test_the_guard_near_saturation_lowers_the_log_probability_by_log1p_of_1e6_cosh_squared(u):
    """Near saturation the 1e-6 guard dominates 1 - tanh(u)^2 = 1/cosh(u)^2: in float64 the
    agent's log-probability falls short of the exact one by log1p(1e-6 cosh(u)^2) per dimension
    (7.4e-4 at u = 4, 0.040 at 6, 1.17 at 8, 4.8 at 10, 8.8 at 12; docs/sac.md), and the
    correction it subtracts never exceeds -log(1e-6) = 13.8 per dimension."""
    pre_tanh = torch.full((1, ACT), u)
    mu, raw = torch.zeros(1, ACT), torch.zeros(1, ACT)
    action, log_prob, exact, std = squashed_log_prob(pre_tanh, mu, raw)
    # the exact log-probability from u itself (the action rounds towards 1 at large u)
    base = Independent(Normal(mu, std), 1).log_prob(pre_tanh)
    exact_value = base - TanhTransform().log_abs_det_jacobian(pre_tanh, torch.tanh(pre_tanh)).sum(-1)
    expected_gap = ACT * math.log1p(1e-6 * math.cosh(u) ** 2)
    torch.testing.assert_close(exact_value - log_prob, torch.tensor([expected_gap]), rtol=1e-6, atol=1e-9)
    assert float(log_prob - base) <= -ACT * math.log(1e-6) + ROUNDING  # the correction the agent adds


# ---- the actor loss -----------------------------------------------------------------------------
def actor_gradients(agent: MTSAC, batch: Batch, noise: torch.Tensor) -> dict[str, torch.Tensor]:
    """The gradient the actor's component step writes with LS (the sum of the task losses)."""
    for p in agent.actor.parameters():
        p.grad = None
    alpha = agent.log_alpha.exp().detach()[:, None]
    inputs = (batch.obs, noise, alpha, agent.codes)
    constants = {"critic_params": named(agent.critic, True)}
    context = dict(perf=None, main_task=None, generator=torch.Generator().manual_seed(0))
    agent._component_step("actor", agent.actor, agent._actor_loss, inputs, constants, make("ls", K), NoStep(), 0, context, {}, has_aux=True)
    return {n: p.grad.clone() for n, p in agent.actor.named_parameters()}


def hand_actor_losses(agent: MTSAC, actor: dict[str, torch.Tensor], batch: Batch, noise: torch.Tensor):
    """Per task: mean_b (alpha_k log pi(a|s) - min(Q1, Q2)(s, a)), a = tanh(mu + sigma noise), the
    critic held fixed (the log-probability with the guard's identity, module docstring)."""
    critic = named(agent.critic, True)
    alpha = torch.exp(torch.tensor(LOG_ALPHA))
    losses = []
    for k in range(K):
        action, log_prob, _ = hand_policy(actor, batch.obs[k], k, noise[k], guarded=True)
        q1, q2 = hand_q(critic, batch.obs[k], action, k)
        losses.append((alpha[k] * log_prob - torch.minimum(q1, q2)).mean())
    return torch.stack(losses)


def test_actor_loss_per_task_and_its_gradient_descends():
    agent = make_agent()
    batch = make_batch(1)
    noise = torch.randn(K, B, ACT, generator=torch.Generator().manual_seed(7))
    alpha = agent.log_alpha.exp().detach()[:, None]
    losses, mean_log_prob = agent._actor_loss(named(agent.actor), batch.obs, noise, alpha, agent.codes, named(agent.critic, True))
    actor = named(agent.actor)
    expected = hand_actor_losses(agent, actor, batch, noise)
    torch.testing.assert_close(losses, expected.detach(), rtol=1e-12, atol=ROUNDING)

    # the gradient the agent steps with is the gradient of the hand loss (sum over tasks, as LS)
    grads = actor_gradients(agent, batch, noise)
    hand_grads = dict(zip(actor, torch.autograd.grad(expected.sum(), list(actor.values()))))
    for name, g in grads.items():
        torch.testing.assert_close(g, hand_grads[name], rtol=1e-9, atol=ROUNDING, msg=name)
    assert all(p.grad is None for p in agent.critic.parameters())  # the critic is held fixed

    # and its sign: a small step against it lowers the (hand) loss, a step along it raises it
    norm = math.sqrt(sum(float(g.pow(2).sum()) for g in grads.values()))
    eta = 1e-3 / norm
    with torch.no_grad():
        down = {n: p - eta * grads[n] for n, p in actor.items()}
        up = {n: p + eta * grads[n] for n, p in actor.items()}
    before = float(expected.detach().sum())
    after_down = float(hand_actor_losses(agent, down, batch, noise).sum())
    after_up = float(hand_actor_losses(agent, up, batch, noise).sum())
    assert after_down < before < after_up
    # first order: the change is -eta |g|^2
    assert after_down - before == pytest.approx(-eta * norm**2, rel=1e-2)


# ---- the temperature ----------------------------------------------------------------------------
def test_temperature_loss_value_and_its_gradient_is_alpha_times_the_log_alpha_forms():
    """Loss_k = -alpha_k (mean log pi_k + target entropy), with target entropy -|A| by default;
    d Loss_k / d log alpha_k = -alpha_k (log pi_k + H) is alpha_k times the gradient of SB3's
    form -log alpha_k (log pi_k + H)."""
    agent = make_agent()
    assert agent.target_entropy == -ACT
    agent.alpha_optimizer = NoStep()
    log_prob = torch.tensor([-1.0, 3.0, 0.5])
    metrics: dict = {}
    agent._temperature_step(log_prob, 0.0, 0, None, {}, metrics)
    log_alpha = torch.tensor(LOG_ALPHA, requires_grad=True)
    mtrl_form = -(log_alpha.exp() * (log_prob - ACT))
    (mtrl_grad,) = torch.autograd.grad(mtrl_form.sum(), log_alpha)
    (sb3_grad,) = torch.autograd.grad(-(log_alpha * (log_prob - ACT)).sum(), log_alpha)
    torch.testing.assert_close(metrics["temperature/loss"], mtrl_form.mean().detach(), rtol=1e-12, atol=ROUNDING)
    torch.testing.assert_close(agent.log_alpha.grad, mtrl_grad, rtol=1e-12, atol=ROUNDING)
    torch.testing.assert_close(agent.log_alpha.grad, log_alpha.detach().exp() * sb3_grad, rtol=1e-12, atol=ROUNDING)
    assert make_agent(target_entropy=-0.5).target_entropy == -0.5


def test_temperature_grows_when_entropy_is_below_target_and_shrinks_above():
    agent = make_agent()  # target entropy -2
    before = agent.log_alpha.detach().clone()
    # task 0: entropy estimate -log pi = -3 < -2 (below target); tasks 1 and 2: 4 and -1 (above)
    agent._temperature_step(torch.tensor([3.0, -4.0, 1.0]), 0.0, 0, None, {}, {})
    change = agent.log_alpha.detach() - before
    assert change[0] > 0 and change[1] < 0 and change[2] < 0


def independent_update(temperature_agg, changed_task: int) -> tuple[torch.Tensor, torch.Tensor]:
    """log-temperature gradients of one update on a batch, and on the same batch with the rows
    of ``changed_task`` replaced."""
    grads, values = [], []
    for swap in (False, True):
        agent = make_agent()
        batch = make_batch(2)
        if swap:
            other = make_batch(3)
            batch = Batch(**{f: torch.where(torch.arange(K).reshape(K, *[1] * (getattr(batch, f).dim() - 1)) == changed_task,
                                            getattr(other, f), getattr(batch, f)) for f in ("obs", "action", "reward", "next_obs", "done")})
        agent.update(batch, 0, make("ls", K), make("ls", K), generator=torch.Generator().manual_seed(11), temperature_agg=temperature_agg)
        grads.append(agent.log_alpha.grad.clone())
        values.append(agent.log_alpha.detach().clone())
    return torch.stack(grads), torch.stack(values)


def test_without_aggregate_temperature_each_task_temperature_moves_only_with_its_own_entropy():
    j = 1
    grads, values = independent_update(None, j)
    others = [k for k in range(K) if k != j]
    assert torch.equal(grads[0, others], grads[1, others]) and torch.equal(values[0, others], values[1, others])
    assert grads[0, j] != grads[1, j]
    # aggregated (MTRL parity) through MGDA, the other tasks' gradients do move: the check can see coupling
    coupled, _ = independent_update(make("mgda", K), j)
    assert not torch.equal(coupled[0, others], coupled[1, others])


def test_every_tasks_temperature_is_in_the_update_metrics():
    agent = make_agent()
    alpha = agent.log_alpha.detach().exp()
    metrics = agent.update(make_batch(4), 0, make("ls", K), make("ls", K), generator=torch.Generator().manual_seed(0))
    assert isinstance(metrics["temperature/alpha"], torch.Tensor)  # read once per log line, not here
    torch.testing.assert_close(metrics["temperature/alpha"], alpha, rtol=0, atol=0)  # the ones this update used
    torch.testing.assert_close(metrics["alpha"], alpha.mean(), rtol=1e-15, atol=0)


# ---- the Polyak step ----------------------------------------------------------------------------
def test_polyak_step_moves_the_target_a_fraction_tau_towards_the_online_critic_at_its_interval():
    every = 3
    agent = make_agent(target_update_every=every)
    critic, actor = make("ls", K), make("ls", K)
    moved = []
    for step in range(7):
        before = [p.detach().clone() for p in agent.critic_target.parameters()]
        agent.update(make_batch(10 + step), step, critic, actor, generator=torch.Generator().manual_seed(step))
        online = [p.detach() for p in agent.critic.parameters()]  # after this update's critic step
        after = [p.detach() for p in agent.critic_target.parameters()]
        if step % every == 0:
            for b, o, a in zip(before, online, after):
                torch.testing.assert_close(a, (1 - TAU) * b + TAU * o, rtol=1e-12, atol=1e-15)
            moved.append(step)
        else:
            assert all(torch.equal(a, b) for a, b in zip(after, before)), step
    assert moved == [0, 3, 6]


# ---- what the replay stores at the end of an episode ----------------------------------------------
def _train_warmup_only(tmp_path, benchmark: str, steps: int, envs, **env_options):
    """Run ``mtrl.train.train`` for ``steps`` warm-up steps (no updates) on prebuilt envs and return
    the replay buffer of its final checkpoint (fields [K, steps, ...])."""
    from mtrl.checkpoint import load_latest
    from mtrl.train import train

    overrides = [
        f"env.benchmark={benchmark}", f"train.total_steps={steps}", f"train.warmup_steps={steps}",
        f"train.replay_capacity={steps * envs[0].num_tasks}", f"train.batch_size={envs[0].num_tasks}", "train.eval_episodes=1",
        "train.eval_every=100000", "train.progress=false", "checkpoint.every=0", "agent.hidden_dim=8", "agent.num_layers=1",
        "device=cpu", *[f"env.{k}={v}" for k, v in env_options.items()],
    ]
    torch.set_default_dtype(torch.float32)  # the trainer's dtype
    train(config_from_dict(apply_overrides({}, overrides)), tmp_path / "run", envs=envs)
    state, _ = load_latest(tmp_path / "run")
    replay = state["replay"]
    assert int(replay["size"]) == steps
    return {f: replay[f].numpy() for f in ("obs", "action", "reward", "next_obs", "done")}


def test_an_episode_cut_by_metaworlds_500_step_limit_is_stored_unterminated_with_its_true_last_observation(tmp_path):
    from mtrl.envs.metaworld import MAX_PATH_LENGTH, MultiTaskEnv
    from tests.test_envs import raw_twin

    env = MultiTaskEnv("MT1-reach-v3", seed=0)
    eval_env = MultiTaskEnv("MT1-reach-v3", seed=10_000, goal_seed=0, terminate_on_success=True)
    try:
        data = _train_warmup_only(tmp_path, "MT1-reach-v3", MAX_PATH_LENGTH + 2, (env, eval_env))
        last = MAX_PATH_LENGTH - 1  # slot of the episode's 500th step
        twin = raw_twin("reach-v3", env.goal_sets[0], data["obs"][0, 0])
        for t in range(MAX_PATH_LENGTH):  # raw MetaWorld, stepped with the stored actions
            raw_obs, raw_reward, _, _, _ = twin.step(data["action"][0, t])
            assert np.array_equal(data["next_obs"][0, t], raw_obs.astype(np.float32)), t
            assert data["reward"][0, t] == np.float32(raw_reward), t
        twin.close()
    finally:
        env.close()
        eval_env.close()
    assert not data["done"][0, : MAX_PATH_LENGTH + 2].any()  # time limit: bootstrap, never terminal
    # the next slot starts the next episode: a reset observation, not the stored last one
    assert not np.array_equal(data["obs"][0, last + 1], data["next_obs"][0, last])
    raw_twin("reach-v3", env.goal_sets[0], data["obs"][0, last + 1]).close()  # a genuine reset observation
    assert np.array_equal(data["obs"][0, last + 2], data["next_obs"][0, last + 1])


def test_a_terminal_step_is_stored_terminated_and_a_time_limit_is_not(tmp_path):
    """The synthetic point env ending episodes on success (a terminating env; MetaWorld training
    never terminates), goals near the start so that some episodes end by success and others by
    the 4-step limit; every stored transition is checked against the point-mass dynamics."""
    from mtrl.envs.synthetic import PointMassEnv

    length, steps = 4, 60
    env = PointMassEnv("Point-2", seed=0, max_episode_steps=length, terminate_on_success=True)
    env.goals[:] = np.array([[0.12, 0.0], [0.0, -0.12]], dtype=np.float32)
    eval_env = PointMassEnv("Point-2", seed=1, max_episode_steps=length)
    data = _train_warmup_only(tmp_path, "Point-2", steps, (env, eval_env), max_episode_steps=length)
    kinds = {"terminated": 0, "truncated": 0}
    for k in range(2):
        t_in_episode = 0
        for t in range(steps):
            obs, action, next_obs = data["obs"][k, t], np.clip(data["action"][k, t], -1, 1), data["next_obs"][k, t]
            velocity = 0.5 * obs[2:] + 0.1 * action  # the stored next_obs follows from obs and action
            np.testing.assert_allclose(next_obs, np.concatenate([obs[:2] + velocity, velocity]), rtol=0, atol=1e-6)
            t_in_episode += 1
            success = float(np.linalg.norm(next_obs[:2].astype(np.float64) - env.goals[k])) < env.success_radius
            assert data["done"][k, t] == float(success), (k, t)
            ended = success or t_in_episode == length
            if ended:
                kinds["terminated" if success else "truncated"] += 1
                t_in_episode = 0
            if t + 1 < steps:  # after an episode end, the next slot holds a fresh start (velocity 0)
                following = data["obs"][k, t + 1]
                if ended:
                    assert not following[2:].any() and np.abs(following[:2]).max() <= 0.1
                else:
                    assert np.array_equal(following, next_obs)
    assert kinds["terminated"] >= 3 and kinds["truncated"] >= 3, kinds
