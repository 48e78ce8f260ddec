"""Actor and critic networks of multi-task SAC with three kinds of task conditioning.

Every network takes ``obs [..., obs_dim]`` and a task code ``code [..., num_tasks]`` (the task's
one-hot row); leading dimensions are free, so the same module serves a batched forward over
[K, B, ...] and a per-task forward inside ``torch.func.vmap`` (where ``code`` is [num_tasks]).

Variants (``AgentConfig.variant``):

* ``mt``: the one-hot code is concatenated to the observation (MTRL's multi-task SAC).
* ``te``: a learned task embedding ``code @ E`` is concatenated (MetaWorld's "+ task encoder").
* ``mh``: a shared trunk on the observation and task-specific output heads, selected by
  ``code`` (MetaWorld's multi-headed SAC).

``task_specific_names()`` lists the parameters that belong to single tasks (embedding table,
heads); they take the plain sum of the per-task gradients, everything else is shared and goes
through the aggregator (docs/design.md §4).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["Actor", "Critic", "TaskConditioned"]


def _mlp(in_dim: int, hidden_dim: int, num_layers: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(num_layers):
        layers += [nn.Linear(in_dim if i == 0 else hidden_dim, hidden_dim), nn.ReLU()]
    return nn.Sequential(*layers)


class TaskConditioned(nn.Module):
    """Trunk plus output layer with the task conditioning of ``variant``."""

    def __init__(
        self, in_dim: int, out_dim: int, num_tasks: int, variant: str, hidden_dim: int, num_layers: int, embedding_dim: int
    ) -> None:
        super().__init__()
        if variant not in ("mt", "te", "mh"):
            raise ValueError(f"unknown agent variant {variant!r}; allowed: mt, te, mh")
        self.variant, self.num_tasks, self.out_dim = variant, num_tasks, out_dim
        extra = {"mt": num_tasks, "te": embedding_dim, "mh": 0}[variant]
        if variant == "te":
            self.task_embedding = nn.Parameter(torch.empty(num_tasks, embedding_dim).uniform_(-1.0, 1.0))
        self.trunk = _mlp(in_dim + extra, hidden_dim, num_layers)
        if variant == "mh":
            bound = 1.0 / math.sqrt(hidden_dim)
            self.head_weight = nn.Parameter(torch.empty(num_tasks, hidden_dim, out_dim).uniform_(-bound, bound))
            self.head_bias = nn.Parameter(torch.empty(num_tasks, out_dim).uniform_(-bound, bound))
        else:
            self.head = nn.Linear(hidden_dim, out_dim)

    def task_specific_names(self) -> list[str]:
        return [n for n in ("task_embedding", "head_weight", "head_bias") if hasattr(self, n)]

    def forward(self, x: Tensor, code: Tensor) -> Tensor:
        if code.dim() < x.dim():  # one code per task row: code [K, T] for x [K, B, in], or [T] for x [B, in]
            code = code.unsqueeze(-2)
        code = code.expand(*x.shape[:-1], self.num_tasks)  # [..., T]
        if self.variant == "mt":
            x = torch.cat([x, code], dim=-1)
        elif self.variant == "te":
            x = torch.cat([x, code @ self.task_embedding], dim=-1)
        h = self.trunk(x)  # [..., H]
        if self.variant == "mh":
            weight = torch.einsum("...t,tho->...ho", code, self.head_weight)  # [..., H, out]
            return torch.einsum("...h,...ho->...o", h, weight) + code @ self.head_bias
        return self.head(h)


class Actor(nn.Module):
    """Tanh-squashed Gaussian policy; log-std bounded to [log_std_min, log_std_max] by a tanh."""

    def __init__(
        self, obs_dim: int, action_dim: int, num_tasks: int, variant: str, hidden_dim: int, num_layers: int,
        embedding_dim: int, log_std_min: float, log_std_max: float,
    ) -> None:
        super().__init__()
        self.net = TaskConditioned(obs_dim, 2 * action_dim, num_tasks, variant, hidden_dim, num_layers, embedding_dim)
        self.log_std_min, self.log_std_max = log_std_min, log_std_max

    def forward(self, obs: Tensor, code: Tensor, noise: Tensor | None) -> tuple[Tensor, Tensor]:
        """Action in [-1, 1] and its log-probability. ``noise`` (standard normal, same shape as the
        action) is drawn by the caller, so randomness stays explicit; None gives the mean action."""
        mu, log_std = self.net(obs, code).chunk(2, dim=-1)
        log_std = torch.tanh(log_std)
        log_std = self.log_std_min + 0.5 * (self.log_std_max - self.log_std_min) * (log_std + 1.0)
        if noise is None:
            return torch.tanh(mu), torch.zeros(mu.shape[:-1], device=mu.device)
        pre_tanh = mu + noise * log_std.exp()
        action = torch.tanh(pre_tanh)
        log_prob = (-0.5 * noise.pow(2) - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
        log_prob = log_prob - torch.log(torch.relu(1 - action.pow(2)) + 1e-6).sum(-1)  # tanh correction
        return action, log_prob

    def task_specific_names(self) -> list[str]:
        return [f"net.{n}" for n in self.net.task_specific_names()]


class Critic(nn.Module):
    """Two Q networks (clipped double Q)."""

    def __init__(
        self, obs_dim: int, action_dim: int, num_tasks: int, variant: str, hidden_dim: int, num_layers: int, embedding_dim: int
    ) -> None:
        super().__init__()
        self.q1 = TaskConditioned(obs_dim + action_dim, 1, num_tasks, variant, hidden_dim, num_layers, embedding_dim)
        self.q2 = TaskConditioned(obs_dim + action_dim, 1, num_tasks, variant, hidden_dim, num_layers, embedding_dim)

    def forward(self, obs: Tensor, action: Tensor, code: Tensor) -> tuple[Tensor, Tensor]:
        x = torch.cat([obs, action], dim=-1)
        return self.q1(x, code).squeeze(-1), self.q2(x, code).squeeze(-1)

    def task_specific_names(self) -> list[str]:
        return [f"{q}.{n}" for q in ("q1", "q2") for n in getattr(self, q).task_specific_names()]
