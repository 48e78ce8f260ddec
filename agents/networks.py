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

Populations (``members=S``, ``agents/population.py``): S independent networks in one module. Every
parameter gets a leading member dimension (Linear layers become ``MemberLinear``: weight
[S, out, in]) and every input a leading [S, ...]; member s's rows only ever meet member s's
parameters, so each member computes what a single network with its parameters computes.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["Actor", "Critic", "MemberLinear", "TaskConditioned"]


class MemberLinear(nn.Module):
    """``members`` independent ``nn.Linear`` layers in one: weight [S, out, in], bias [S, out].

    The input is [S, ..., in]; member s's rows are multiplied by member s's weights in one batched
    matmul. Each member is initialised as ``nn.Linear`` initialises itself. The products are the
    ones ``nn.Linear`` computes for a 2-D input, batched: ``baddbmm`` where ``nn.Linear`` calls
    ``addmm``, and for one output feature (``addmm`` then runs a matrix-vector product) the
    transposed product ``w @ x^T``; on a CPU with one thread each member's output is then bit for
    bit ``nn.Linear``'s, whatever S (measured with MKL: a ``bmm`` with one output column was not
    even independent of the batch size), for products of at least 400 multiply-adds per member
    (below that ATen's ``bmm`` sums in its own loop, where ``nn.Linear`` calls BLAS).

    Autograd's weight gradient of this layer is correct but not ``nn.Linear``'s bit for bit at
    small widths (it multiplies ``x^T dy`` where ``nn.Linear``'s backward multiplies ``dy^T x``); a
    population takes its parameter gradients from the layer outputs instead, as the "linear"
    Jacobian engine does (``mtrl.jacobian.member_gradients``)."""

    member_linear = True  # what mtrl.jacobian.linear_layers(..., members=True) looks for

    def __init__(self, members: int, in_features: int, out_features: int) -> None:
        super().__init__()
        self.members, self.in_features, self.out_features = members, in_features, out_features
        self.weight = nn.Parameter(torch.empty(members, out_features, in_features))
        self.bias = nn.Parameter(torch.empty(members, out_features))
        bound = 1.0 / math.sqrt(in_features) if in_features > 0 else 0.0
        with torch.no_grad():
            for s in range(members):  # nn.Linear.reset_parameters, member by member
                nn.init.kaiming_uniform_(self.weight[s], a=math.sqrt(5))
                self.bias[s].uniform_(-bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        S = x.shape[0]
        rows = x.reshape(S, -1, self.in_features)
        if self.out_features == 1:
            y = _OneOutput.apply(rows, self.weight, self.bias)
        else:
            y = torch.baddbmm(self.bias[:, None, :], rows, self.weight.mT)
        return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"members={self.members}, in_features={self.in_features}, out_features={self.out_features}"


class _OneOutput(torch.autograd.Function):
    """``rows [S, N, in] @ weight[s]^T + bias`` for one output feature, as ``w @ rows^T`` (the
    product ``nn.Linear`` computes then). Its own backward gives the input gradient in the input's
    layout: autograd's, through the transposes, came back transposed, and the elementwise
    backward ops that follow ran about 4x slower on it."""

    generate_vmap_rule = True

    @staticmethod
    def forward(rows: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        return torch.bmm(weight, rows.mT).mT + bias[:, None, :]

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        rows, weight, _ = inputs
        ctx.save_for_backward(rows, weight)

    @staticmethod
    def backward(ctx, grad: Tensor):
        rows, weight = ctx.saved_tensors
        need_rows, need_weight, need_bias = ctx.needs_input_grad
        return (
            torch.bmm(grad, weight) if need_rows else None,  # [S, N, in], one product per entry
            torch.bmm(grad.mT, rows) if need_weight else None,
            grad.sum(1) if need_bias else None,
        )


def _mlp(in_dim: int, hidden_dim: int, num_layers: int, members: int | None = None) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(num_layers):
        layers += [_linear(in_dim if i == 0 else hidden_dim, hidden_dim, members), nn.ReLU()]
    return nn.Sequential(*layers)


def _linear(in_dim: int, out_dim: int, members: int | None) -> nn.Module:
    return nn.Linear(in_dim, out_dim) if members is None else MemberLinear(members, in_dim, out_dim)


def _member_matmul(x: Tensor, weight: Tensor) -> Tensor:
    """``x [S, ..., a] @ weight [S, a, b]`` as one ``bmm`` over the rows of each member."""
    S = x.shape[0]
    return torch.bmm(x.reshape(S, -1, x.shape[-1]), weight).reshape(*x.shape[:-1], weight.shape[-1])


class TaskConditioned(nn.Module):
    """Trunk plus output layer with the task conditioning of ``variant``."""

    def __init__(
        self, in_dim: int, out_dim: int, num_tasks: int, variant: str, hidden_dim: int, num_layers: int, embedding_dim: int,
        members: int | None = None,
    ) -> None:
        super().__init__()
        if variant not in ("mt", "te", "mh"):
            raise ValueError(f"unknown agent variant {variant!r}; allowed: mt, te, mh")
        self.variant, self.num_tasks, self.out_dim, self.members = variant, num_tasks, out_dim, members
        lead = () if members is None else (members,)
        extra = {"mt": num_tasks, "te": embedding_dim, "mh": 0}[variant]
        if variant == "te":
            self.task_embedding = nn.Parameter(torch.empty(*lead, num_tasks, embedding_dim).uniform_(-1.0, 1.0))
        self.trunk = _mlp(in_dim + extra, hidden_dim, num_layers, members)
        if variant == "mh":
            bound = 1.0 / math.sqrt(hidden_dim)
            self.head_weight = nn.Parameter(torch.empty(*lead, num_tasks, hidden_dim, out_dim).uniform_(-bound, bound))
            self.head_bias = nn.Parameter(torch.empty(*lead, num_tasks, out_dim).uniform_(-bound, bound))
        else:
            self.head = _linear(hidden_dim, out_dim, members)

    def task_specific_names(self) -> list[str]:
        return [n for n in ("task_embedding", "head_weight", "head_bias") if hasattr(self, n)]

    def forward(self, x: Tensor, code: Tensor) -> Tensor:
        if code.dim() < x.dim():  # one code per task row: code [K, T] for x [K, B, in], or [T] for x [B, in]
            code = code.unsqueeze(-2)
        code = code.expand(*x.shape[:-1], self.num_tasks)  # [..., T]
        if self.members is not None:
            return self._member_forward(x, code)
        if self.variant == "mt":
            x = torch.cat([x, code], dim=-1)
        elif self.variant == "te":
            x = torch.cat([x, code @ self.task_embedding], dim=-1)
        h = self.trunk(x)  # [..., H]
        if self.variant == "mh":
            weight = torch.einsum("...t,tho->...ho", code, self.head_weight)  # [..., H, out]
            return torch.einsum("...h,...ho->...o", h, weight) + code @ self.head_bias
        return self.head(h)

    def _member_forward(self, x: Tensor, code: Tensor) -> Tensor:
        """``forward`` of a population (x [S, ..., in], code [S, ..., T]): the task-specific tables
        are contracted per member."""
        if self.variant == "mt":
            x = torch.cat([x, code], dim=-1)
        elif self.variant == "te":
            x = torch.cat([x, _member_matmul(code, self.task_embedding)], dim=-1)
        h = self.trunk(x)  # [S, ..., H]
        if self.variant == "mh":
            table = self.head_weight.reshape(h.shape[0], self.num_tasks, -1)  # [S, T, H * out]
            weight = _member_matmul(code, table).reshape(*h.shape, self.out_dim)  # [S, ..., H, out]
            return torch.einsum("...h,...ho->...o", h, weight) + _member_matmul(code, self.head_bias)
        return self.head(h)


class Actor(nn.Module):
    """Tanh-squashed Gaussian policy; log-std bounded to [log_std_min, log_std_max] by a tanh."""

    def __init__(
        self, obs_dim: int, action_dim: int, num_tasks: int, variant: str, hidden_dim: int, num_layers: int,
        embedding_dim: int, log_std_min: float, log_std_max: float, members: int | None = None,
    ) -> None:
        super().__init__()
        self.net = TaskConditioned(obs_dim, 2 * action_dim, num_tasks, variant, hidden_dim, num_layers, embedding_dim, members)
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
        self, obs_dim: int, action_dim: int, num_tasks: int, variant: str, hidden_dim: int, num_layers: int, embedding_dim: int,
        members: int | None = None,
    ) -> None:
        super().__init__()
        self.q1 = TaskConditioned(obs_dim + action_dim, 1, num_tasks, variant, hidden_dim, num_layers, embedding_dim, members)
        self.q2 = TaskConditioned(obs_dim + action_dim, 1, num_tasks, variant, hidden_dim, num_layers, embedding_dim, members)

    def forward(self, obs: Tensor, action: Tensor, code: Tensor) -> tuple[Tensor, Tensor]:
        x = torch.cat([obs, action], dim=-1)
        return self.q1(x, code).squeeze(-1), self.q2(x, code).squeeze(-1)

    def task_specific_names(self) -> list[str]:
        return [f"{q}.{n}" for q in ("q1", "q2") for n in getattr(self, q).task_specific_names()]
