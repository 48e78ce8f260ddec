"""AuxiLearn [AL], "learning to combine auxiliary tasks": a monotone network over the losses.

The training loss is ``L_T = loss_main + g(losses; phi)`` [AL §3.1-3.2]: a small network g maps
the vector of per-task losses (the main task first, then the others by task id; docs/aggregators.md, readings table) to
a scalar. Its gradient is an adaptive weighting of the task gradients,
``grad L_T = g_main + sum_j (dg / dloss_j) g_j`` [AL §3.2], so no G is needed: every step the
trainer backpropagates ``sum_i w_i loss_i`` once with ``w = e_main + dg/dloss``.

Every ``hyper_every`` calls, phi takes one step (SGD with momentum 0.9 and weight decay, the
code's ``MetaOptimizer``) along the implicit hypergradient of ``L_A``, the main task's loss on
held-out transitions that training never samples (``ctx.hyper.val_loss``; the trainer keeps
every ``holdout_every``-th replay slot of the main task out of training, 2.5% by default as the
paper's NYUv2 auxiliary set), through ``L_T`` on a fresh batch (``hypergrad.py``, Neumann series
with J = 3, eta = 1e-4 as the released code). The hypergradient is clipped to norm 25, and the
combiner's weights are clipped at 0 after every step so g stays monotone non-decreasing in
every loss [AL §3.2 "Monotonicity"].

Combiners (``combiner``): ``"nonlinear"`` (default): fully connected, Softplus activations,
``num_layers`` hidden layers of ``hidden_dim`` units, weights initialised uniformly in
``[0, init_upper]`` (drawn from ``seed``) and biases at 0 (the released code's uniform [0, 1]
initialisation); at
initialisation every auxiliary weight dg/dloss_j is then of the same order (about 10 for K = 10),
i.e. the combiner starts close to LS and learns to lower harmful auxiliaries. ``"linear"``:
``g = sum_j phi_j loss_j`` with phi initialised to ``init_upper``.

``seed``: None (the default) lets the trainer derive it from the run's seed and the component
(``mtrl.train.aggregator_seed``), so every seed of a sweep, and critic and actor, start from their
own combiner; an int fixes it (built outside the trainer, None means 0).

With no main task (``ctx.main_task`` None) the skip term is the mean loss and L_A the mean
held-out loss over all tasks: an extension, not the paper's setting (docs/aggregators.md, "Bilevel methods").
"""

from __future__ import annotations

import torch
from torch import Tensor

from mtrl.aggregators import register
from mtrl.aggregators.base import (
    AggContext, Aggregation, Aggregator, GramAggregation, check_int, check_option, check_positive_or_none, clip_coefficients, combine,
    is_int, is_number,
)
from mtrl.aggregators.hypergrad import implicit_hypergradient

__all__ = ["AuxiLearn"]


@register
class AuxiLearn(Aggregator):
    name = "auxilearn"
    uses_hyper = True
    state_attributes = ("phi", "momentum", "step", "last_losses", "hypersteps", "hyper_skipped", "last_hyper")

    def __init__(
        self,
        num_tasks: int,
        combiner: str = "nonlinear",
        hidden_dim: int = 10,
        num_layers: int = 2,
        init_upper: float = 1.0,
        hyper_every: int = 50,
        meta_lr: float = 1e-3,
        meta_momentum: float = 0.9,
        meta_weight_decay: float = 1e-4,
        neumann_terms: int = 3,
        neumann_lr: float = 1e-4,
        grad_clip: float | None = 25.0,
        holdout_every: int = 40,
        seed: int | None = None,
        max_norm: float | None = None,
    ) -> None:
        super().__init__(num_tasks)
        check_option("combiner", combiner, combiner in ("nonlinear", "linear"), "'nonlinear' or 'linear'")
        for key, value in (("hidden_dim", hidden_dim), ("num_layers", num_layers), ("hyper_every", hyper_every)):
            check_int(key, value, 1)
        check_int("neumann_terms", neumann_terms, 0)
        check_int("holdout_every", holdout_every, 2)
        check_option("seed", seed, seed is None or is_int(seed), "an int or None (derived from the run's seed)")
        for key, value in (("init_upper", init_upper), ("meta_lr", meta_lr), ("neumann_lr", neumann_lr)):
            check_option(key, value, is_number(value) and value > 0, "a positive number")
        check_option("meta_momentum", meta_momentum, is_number(meta_momentum) and 0 <= meta_momentum < 1, "a number in [0, 1)")
        check_option("meta_weight_decay", meta_weight_decay, is_number(meta_weight_decay) and meta_weight_decay >= 0, "a number >= 0")
        check_positive_or_none("grad_clip", grad_clip)
        check_positive_or_none("max_norm", max_norm)
        self.combiner, self.hidden_dim, self.num_layers, self.init_upper = combiner, hidden_dim, num_layers, float(init_upper)
        self.hyper_every, self.meta_lr, self.meta_momentum = hyper_every, float(meta_lr), float(meta_momentum)
        self.meta_weight_decay, self.neumann_terms, self.neumann_lr = float(meta_weight_decay), neumann_terms, float(neumann_lr)
        self.grad_clip, self.holdout_every, self.seed, self.max_norm = grad_clip, holdout_every, seed, max_norm
        self.phi = self._initial_phi()
        self.momentum = torch.zeros_like(self.phi)
        self.step = 0
        self.last_losses = torch.zeros(num_tasks, dtype=torch.float64)
        self.hypersteps = 0
        self.hyper_skipped = 0
        self.last_hyper: dict[str, float] = {}  # floats of the latest outer step, logged every step

    # ---- the combination network, on a flat parameter vector phi ---------------------------------
    def _shapes(self) -> list[tuple[str, tuple[int, ...]]]:
        """(kind, shape) of each parameter block: kind 'w' (clipped at 0) or 'b' (free)."""
        if self.combiner == "linear":
            return [("w", (self.num_tasks,))]
        sizes = [self.num_tasks] + [self.hidden_dim] * self.num_layers + [1]
        out = []
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
            out += [("w", (fan_out, fan_in)), ("b", (fan_out,))]
        return out

    def _initial_phi(self) -> Tensor:
        gen = torch.Generator().manual_seed(0 if self.seed is None else self.seed)
        blocks = []
        for kind, shape in self._shapes():
            if self.combiner == "linear":
                blocks.append(torch.full(shape, self.init_upper, dtype=torch.float64))
            elif kind == "w":
                blocks.append(torch.rand(shape, generator=gen, dtype=torch.float64) * self.init_upper)
            else:
                blocks.append(torch.zeros(shape, dtype=torch.float64))
        return torch.cat([b.flatten() for b in blocks])

    def _weight_mask(self) -> Tensor:
        return torch.cat([torch.full((int(torch.Size(s).numel()),), kind == "w") for kind, s in self._shapes()])

    def combine(self, phi: Tensor, x: Tensor) -> Tensor:
        """g(x; phi) for losses x [K] ordered main task first (or by task id without a main task)."""
        if self.combiner == "linear":
            return phi @ x
        offset, h = 0, x
        blocks = self._shapes()
        for i in range(0, len(blocks), 2):
            (_, ws), (_, bs) = blocks[i], blocks[i + 1]
            W = phi[offset: offset + ws[0] * ws[1]].view(ws)
            offset += ws[0] * ws[1]
            b = phi[offset: offset + bs[0]]
            offset += bs[0]
            h = W @ h + b
            if i + 2 < len(blocks):
                h = torch.nn.functional.softplus(h)
        return h.squeeze(0)

    def _order(self, main_task: int | None) -> Tensor:
        ids = torch.arange(self.num_tasks)
        if main_task is None:
            return ids
        return torch.cat([ids[main_task: main_task + 1], ids[ids != main_task]])

    def _skip_weights(self, main_task: int | None, dtype=torch.float64) -> Tensor:
        if main_task is None:
            return torch.full((self.num_tasks,), 1.0 / self.num_tasks, dtype=dtype)
        e = torch.zeros(self.num_tasks, dtype=dtype)
        e[main_task] = 1.0
        return e

    def training_objective(self, phi: Tensor, losses_all: Tensor, main_task: int | None) -> Tensor:
        """``L_T = skip(losses) + g(losses)`` for losses of all tasks [num_tasks] (by task id)."""
        skip = self._skip_weights(main_task, losses_all.dtype).to(losses_all.device) @ losses_all
        return skip + self.combine(phi.to(losses_all), losses_all[self._order(main_task).to(losses_all.device)])

    # ---- the aggregator protocol ------------------------------------------------------------------
    def needs_jacobian(self, step: int) -> bool:
        return False

    def loss_weights(self, ctx: AggContext) -> Tensor:
        """w = dL_T / d loss at the current losses (rows of ``ctx.task_ids``)."""
        if ctx.losses is None:
            raise ValueError("aggregator 'auxilearn' needs the per-task losses in ctx.losses")
        ids = torch.as_tensor(ctx.task_ids).long().cpu()
        losses = torch.as_tensor(ctx.losses).detach().double().cpu()
        if not bool(torch.isfinite(losses).all()):
            raise ValueError(f"ctx.losses has non-finite entries: {losses.tolist()}")
        self.last_losses[ids] = losses  # tasks missing from a batch keep their last loss as input
        x = self.last_losses.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(self.training_objective(self.phi, x, ctx.main_task), x)
        return grad[ids]

    def weights_without_jacobian(self, ctx: AggContext) -> Tensor:
        weights = self.loss_weights(ctx)
        self.step += 1
        self._maybe_hyperstep(ctx)
        return weights

    def aggregate(self, G: Tensor, ctx: AggContext) -> Aggregation:
        weights = self.weights_without_jacobian(ctx)
        direction, norm, coefficients = combine(G, weights, self.max_norm)
        return Aggregation(direction, weights, {**self.log_info(), "norm": norm}, coefficients)

    def aggregate_gram(self, M, ctx: AggContext, dtype: torch.dtype) -> GramAggregation:
        weights = self.weights_without_jacobian(ctx).numpy()  # the outer step, when due, runs ctx.hyper
        coefficients, norm = clip_coefficients(weights, self.max_norm, M)
        return GramAggregation(coefficients, weights, {**self.log_info(), "norm": norm})

    def log_info(self) -> dict[str, float]:
        """Floats to log every step: counters and the latest outer step's figures."""
        return {**self.last_hyper, "hypersteps": float(self.hypersteps), "hyper_skipped": float(self.hyper_skipped)}

    def _maybe_hyperstep(self, ctx: AggContext) -> None:
        if self.step % self.hyper_every:
            return
        if ctx.hyper is None or self.num_tasks == 1:
            self.hyper_skipped += 1
            return
        self.hyperstep(ctx)

    def hyperstep(self, ctx: AggContext) -> None:
        """One step of phi along the implicit hypergradient of the held-out main-task loss."""
        hyper = ctx.hyper
        ids = torch.as_tensor(ctx.task_ids).long().cpu()
        phi = self.phi.clone().requires_grad_(True)

        def objective(losses: Tensor) -> Tensor:
            full = self.last_losses.to(losses.device, losses.dtype).index_put((ids.to(losses.device),), losses)
            return self.training_objective(phi, full, ctx.main_task)

        grads, info = implicit_hypergradient(hyper, objective, [phi], self.neumann_terms, self.neumann_lr)
        grad = grads[0].detach().double().cpu()
        if not bool(torch.isfinite(grad).all()):
            self.hyper_skipped += 1
            return
        norm = float(torch.linalg.vector_norm(grad))
        if self.grad_clip is not None and norm > self.grad_clip:
            grad = grad * (self.grad_clip / norm)
        grad = grad + self.meta_weight_decay * self.phi  # torch.optim.SGD: weight decay, then momentum
        self.momentum = self.meta_momentum * self.momentum + grad
        phi_new = self.phi - self.meta_lr * self.momentum
        mask = self._weight_mask()
        phi_new[mask] = phi_new[mask].clamp_min(0.0)  # monotone in every loss
        self.phi = phi_new
        self.hypersteps += 1
        self.last_hyper = {**{f"hyper_{k}": v for k, v in info.items()}, "hyper_grad_norm": norm}
