"""Multi-task SAC whose critic and actor updates go through gradient aggregators (docs/design.md §4).

Losses (``_critic_loss``, ``_actor_loss``) are batch-polymorphic: written for one task (inputs
[B, ...], per-task scalars shaped [1]) they also take the stacked inputs of all tasks ([K, B, ...],
[K, 1]) and then return the loss vector [K]. So the same function serves ``torch.func.vmap`` over
the task dimension (the "vmap" Jacobian engine, the hypergradient closures, the loss vector on
steps that need no G) and the "linear" engine, which gets G [K, P] from one ordinary backward pass
(``mtrl.jacobian``). Row k of every batch tensor belongs to global task k.

One ``update`` (one training step):

1. critic: soft TD targets under ``no_grad``; per-task losses aggregated by ``critic_agg``;
2. actor (every ``actor_update_every`` steps): per-task losses aggregated by ``actor_agg``;
   temperature: the plain per-task sum (each task's ``log_alpha`` only touches its own loss),
   or aggregated by ``temperature_agg`` when given (MTRL parity);
3. Polyak update of the target critics (every ``target_update_every`` steps).

Task-specific parameters (``te`` embeddings, ``mh`` heads) take the plain sum of the per-task
gradients; shared ones get the aggregated direction, written into ``.grad`` before Adam steps.
A non-finite loss or G skips that component's step; it is counted in the returned metrics.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad_and_value, vmap
from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

from mtrl.agents.networks import Actor, Critic
from mtrl.aggregators.base import AggContext, Aggregator
from mtrl.aggregators.hypergrad import HyperContext
from mtrl.diagnostics import gradient_diagnostics
from mtrl.jacobian import JacobianResult, flatten, group_rows, grouped_jacobian, per_task_jacobian, unflatten
from mtrl.replay import Batch

__all__ = ["HyperBatches", "MTSAC"]

#: agent.compile and reduced rows (CAGrad-Fast): up to this many shared parameters the rows are
#: group means of the compiled full G (small networks are dispatch-bound: the update at 2 x 64
#: took 0.71x eager this way, 0.96x with the eager grouped Jacobian); above it the eager grouped
#: Jacobian computes only the reduced rows (3 x 400, P = 685K: 0.92x, against 1.38x via the full G)
COMPILED_GROUPS_MAX_PARAMS = 100_000


@dataclass(frozen=True)
class HyperBatches:
    """Data for the outer step of the bilevel aggregators (AuxiNash, AuxiLearn).

    Attributes:
        train: returns a fresh training batch (fields [K, B, ...]) for the Hessian of L_T.
        val: returns the validation batch (fields [V, B, ...]); row v belongs to ``val_tasks[v]``.
        val_tasks: global task ids of the validation rows (the main task, or all tasks).
    """

    train: Callable[[], Batch]
    val: Callable[[], Batch]
    val_tasks: Tensor


@dataclass(frozen=True)
class ParamLayout:
    """A module's parameters split into shared and task-specific ones, computed once: the
    parameter objects live as long as the agent (loading a checkpoint copies into them), and
    walking the module tree on every update cost about 0.35 ms of host time per component."""

    named: dict[str, nn.Parameter]
    specific: frozenset[str]
    shared: tuple[str, ...]  # names, in G's column order
    shared_params: tuple[nn.Parameter, ...]
    shared_numel: int


class MTSAC(nn.Module):
    """Shared-backbone multi-task SAC with per-task temperatures."""

    def __init__(self, obs_dim: int, action_dim: int, num_tasks: int, cfg: Any, device: torch.device | str = "cpu") -> None:
        super().__init__()
        self.cfg, self.num_tasks, self.action_dim = cfg, num_tasks, action_dim
        net = dict(variant=cfg.variant, hidden_dim=cfg.hidden_dim, num_layers=cfg.num_layers, embedding_dim=cfg.task_embedding_dim)
        self.actor = Actor(obs_dim, action_dim, num_tasks, log_std_min=cfg.log_std_min, log_std_max=cfg.log_std_max, **net)
        self.critic = Critic(obs_dim, action_dim, num_tasks, **net)
        self.critic_target = Critic(obs_dim, action_dim, num_tasks, **net)
        self.critic_target.load_state_dict(self.critic.state_dict())
        self.critic_target.requires_grad_(False)
        self.log_alpha = nn.Parameter(torch.full((num_tasks,), math.log(cfg.init_temperature)))
        self.target_entropy = -float(action_dim) if cfg.target_entropy is None else float(cfg.target_entropy)
        self.register_buffer("codes", torch.eye(num_tasks))  # row k: one-hot code of task k
        self.to(device)
        self.device = torch.device(device)
        self.actor_optimizer = self._adam(self.actor.parameters(), cfg.actor_lr)
        self.critic_optimizer = self._adam(self.critic.parameters(), cfg.critic_lr)
        self.alpha_optimizer = self._adam([self.log_alpha], cfg.alpha_lr)
        self.jacobian_method = "auto"  # mtrl.jacobian.METHODS; "auto": "linear" for our MLPs
        self._compiled_fns: dict[str, Callable] = {}  # agent.compile: compiled pieces, built on first use
        self.compile_fallbacks: dict[str, str] = {}  # engine -> why it runs eager under agent.compile
        self._layouts: dict[int, ParamLayout] = {}  # id(module) -> its parameters, split once

    def _adam(self, params, lr: float) -> torch.optim.Optimizer:
        """Adam as ``cfg.adam`` says: "fused" (one kernel per step, and the non-finite skip stays on
        the device) where the device has the fused kernel, else "foreach" (bit-identical to the
        per-parameter loop of torch's default Adam on CPU)."""
        params = list(params)
        fused = self.cfg.adam == "fused" and self.device.type in _get_fused_kernels_supported_devices()
        return torch.optim.Adam(params, lr=lr, fused=True) if fused else torch.optim.Adam(params, lr=lr, foreach=True)

    def _layout(self, module: nn.Module) -> ParamLayout:
        layout = self._layouts.get(id(module))
        if layout is None:
            named = dict(module.named_parameters())
            specific = frozenset(module.task_specific_names())
            shared = tuple(n for n in named if n not in specific)
            layout = self._layouts[id(module)] = ParamLayout(
                named, specific, shared, tuple(named[n] for n in shared), sum(named[n].numel() for n in shared),
            )
        return layout

    # ---- acting -------------------------------------------------------------------------------
    def act(
        self, obs: Tensor, deterministic: bool = False, generator: torch.Generator | None = None, task_ids: Tensor | None = None
    ) -> Tensor:
        """Actions [N, A] for observations [N, obs_dim]: row n belongs to task ``task_ids[n]``
        (default: rows are tasks 0..N-1, one per task, as the training env steps them)."""
        obs = obs.to(self.device, torch.float32)
        noise = None
        if not deterministic:
            noise = torch.randn(obs.shape[0], self.action_dim, generator=generator, device=self.device)
        codes = self.codes[: obs.shape[0]] if task_ids is None else self.codes[torch.as_tensor(task_ids, device=self.device)]
        action, _ = self.actor(obs, codes, noise)
        return action

    # ---- per-task losses (batch-polymorphic: one task, or all K stacked) ------------------------
    def _critic_loss(self, params: dict[str, Tensor], obs: Tensor, action: Tensor, target: Tensor, code: Tensor) -> Tensor:
        """Critic TD loss of one task (obs [B, obs_dim], action [B, A], target [B], code [T]) or
        the loss vector [K] of stacked inputs ([K, B, ...], code [K, T])."""
        q1, q2 = functional_call(self.critic, params, (obs, action, code))
        return (q1 - target).pow(2).mean(-1) + (q2 - target).pow(2).mean(-1)

    def _actor_loss(
        self, params: dict[str, Tensor], obs: Tensor, noise: Tensor, alpha: Tensor, code: Tensor, critic_params: dict[str, Tensor]
    ) -> tuple[Tensor, Tensor]:
        """Actor loss (alpha * log pi - min Q) and, as aux, the mean log-probability: of one task
        (obs [B, obs_dim], noise [B, A], alpha [1], code [T]) or of each of K stacked tasks ([K])."""
        action, log_prob = functional_call(self.actor, params, (obs, code, noise))
        q1, q2 = functional_call(self.critic, critic_params, (obs, action, code))
        return (alpha * log_prob - torch.min(q1, q2)).mean(-1), log_prob.mean(-1).detach()

    # ---- the update -----------------------------------------------------------------------------
    def update(
        self,
        batch: Batch,
        step: int,
        critic_agg: Aggregator,
        actor_agg: Aggregator,
        generator: torch.Generator | None = None,
        perf: Tensor | None = None,
        main_task: int | None = None,
        aggregator_generator: torch.Generator | None = None,
        temperature_agg: Aggregator | None = None,
        hyper_batches: HyperBatches | None = None,
        diagnostics: bool = False,
    ) -> dict[str, Any]:
        """One SAC update on ``batch`` (fields [K, B, ...]); returns its metrics without reading
        anything back from the device: losses, alpha, grad norms and skip flags stay device
        tensors (0-d or [K]); weights are host tensors and solver info host floats, as the
        aggregators produce them. ``mtrl.metrics.read_metrics`` turns them into numbers in one
        transfer (the trainer does so every ``log_every`` steps).

        ``hyper_batches`` gives the bilevel methods (AuxiNash, AuxiLearn) fresh training and
        validation batches for their outer step; it is only sampled on the steps that use it.
        ``diagnostics`` adds the gradient diagnostics of ``mtrl.diagnostics`` for critic and
        actor (a log step: the trainer asks for them every ``log_every`` steps)."""
        K = batch.reward.shape[0]
        metrics: dict[str, Any] = {}
        context = dict(perf=perf, main_task=main_task, generator=aggregator_generator)
        alpha = self.log_alpha[:K].exp().detach()  # [K]

        def critic_inputs(b: Batch, rows: Tensor) -> tuple[Tensor, ...]:
            return (b.obs, b.action, self._critic_target(b, rows, generator), self.codes[rows])

        def actor_inputs(b: Batch, rows: Tensor) -> tuple[Tensor, ...]:
            noise = torch.randn(*b.reward.shape, self.action_dim, generator=generator, device=self.device)
            return (b.obs, noise, self.log_alpha[rows].exp().detach()[:, None], self.codes[rows])

        all_rows = torch.arange(K, device=self.device)
        self._component_step(
            "critic", self.critic, self._critic_loss, critic_inputs(batch, all_rows), {},
            critic_agg, self.critic_optimizer, step, context, metrics,
            hyper=self._hyper_context(self.critic, self._critic_loss, critic_inputs, {}, critic_agg, hyper_batches),
            diagnostics=diagnostics,
        )

        if step % self.cfg.actor_update_every == 0:
            critic_params = {n: p.detach() for n, p in self._layout(self.critic).named.items()}
            constants = {"critic_params": critic_params}
            log_prob_mean = self._component_step(
                "actor", self.actor, self._actor_loss, actor_inputs(batch, all_rows), constants,
                actor_agg, self.actor_optimizer, step, context, metrics, has_aux=True,
                hyper=self._hyper_context(self.actor, self._actor_loss, actor_inputs, constants, actor_agg, hyper_batches, has_aux=True),
                diagnostics=diagnostics,
            )
            if log_prob_mean is not None:
                self._temperature_step(log_prob_mean, metrics["skipped_actor"], step, temperature_agg, context, metrics)

        if step % self.cfg.target_update_every == 0:
            with torch.no_grad():
                target = list(self._layout(self.critic_target).named.values())
                torch._foreach_lerp_(target, list(self._layout(self.critic).named.values()), self.cfg.tau)
        metrics["alpha"] = alpha.mean()
        metrics["temperature/alpha"] = alpha  # [K]: every task's temperature, as this update used it
        return metrics

    def _critic_target(self, batch: Batch, rows: Tensor, generator: torch.Generator | None) -> Tensor:
        """Soft TD targets [R, B] under no_grad: r + gamma (1 - done) (min Q_target(s', a') - alpha log pi(a'|s'))
        for a batch whose row r belongs to global task ``rows[r]``."""
        noise = torch.randn(*batch.reward.shape, self.action_dim, generator=generator, device=self.device)
        target = self._compiled("target", lambda: self._soft_target) if self.cfg.compile else self._soft_target
        with torch.no_grad():
            return target(batch.next_obs, batch.reward, batch.done, self.codes[rows], self.log_alpha[rows].detach(), noise)

    def _soft_target(self, next_obs: Tensor, reward: Tensor, done: Tensor, codes: Tensor, log_alpha: Tensor, noise: Tensor) -> Tensor:
        """Batch-polymorphic like the losses: next_obs [K, B, obs_dim], log_alpha [K] (codes [K, T]),
        or a population's [S, K, B, obs_dim] and [S, K] (``agents/population.py``)."""
        next_action, next_log_prob = self.actor(next_obs, codes, noise)
        tq1, tq2 = self.critic_target(next_obs, next_action, codes)
        soft_value = torch.min(tq1, tq2) - log_alpha.exp()[..., None] * next_log_prob
        return reward + self.cfg.discount * (1.0 - done) * soft_value

    # ---- agent.compile: torch.compile'd pieces of the update --------------------------------------
    def _compiled(self, key: str, build: Callable[[], Callable]) -> Callable:
        """The compiled version of ``build()``, made once per key (static shapes: ``dynamic=False``,
        so a run compiles each piece once; the first update pays for it). On a CPU the forward
        and backward graphs are split as eager autograd splits them (``_eager_partition``)."""
        fn = self._compiled_fns.get(key)
        if fn is None:
            options = {"custom_partitioner_fn": _eager_partition()} if self.device.type == "cpu" else None
            fn = self._compiled_fns[key] = torch.compile(build(), dynamic=False, options=options)
        return fn

    def _compile_fallback(self, engine: str) -> None:
        reason = {
            "linear": "the 'linear' Jacobian engine takes gradients at the outputs of the Linear layers, which a "
            "compiled graph does not expose",
            "loop": "the 'loop' engine (one autograd.grad per task) is the reference fallback",
        }[engine]
        if engine not in self.compile_fallbacks:
            self.compile_fallbacks[engine] = reason
            warnings.warn(f"agent.compile: G is built eagerly with the {engine!r} engine: {reason}; "
                          "aggregator.jacobian: auto or vmap compiles it", RuntimeWarning, stacklevel=3)

    def _compiled_jacobian(self, name, loss_fn, params, inputs, constants, shared, has_aux) -> JacobianResult:
        """G [K, P] through one compiled ``vmap(grad_and_value(loss))`` over the task dimension
        (the "vmap" engine, compiled)."""
        keys = list(constants)

        def build() -> Callable:
            def one_task(p: dict[str, Tensor], *args: Tensor) -> Any:
                return loss_fn(p, *args[: len(inputs)], **dict(zip(keys, args[len(inputs):])))

            in_dims = (None,) + (0,) * len(inputs) + (None,) * len(keys)
            per_task = vmap(grad_and_value(one_task, has_aux=has_aux), in_dims=in_dims)

            def jacobian(*args: Any) -> tuple[Tensor, Any, dict[str, Tensor]]:
                grads, value = per_task(*args)
                # G assembled inside the graph: inductor writes the per-task products into it
                G = flatten([grads[n] for n in shared], args[1].shape[0])
                return G, value, {n: g.sum(0) for n, g in grads.items() if n not in set(shared)}

            return jacobian

        G, value, other = self._compiled(f"jacobian/{name}", build)(params, *inputs, *constants.values())
        losses, aux = value if has_aux else (value, None)
        return JacobianResult(G, losses.detach(), None if aux is None else aux.detach(), other)

    def _hyper_context(
        self, module: nn.Module, loss_fn, make_inputs, constants: dict[str, Any], agg: Aggregator,
        batches: HyperBatches | None, has_aux: bool = False,
    ) -> HyperContext | None:
        """Closures over fresh batches for an aggregator's outer step (None if it has none).

        ``train_losses``: per-task losses [K] on a fresh batch; ``val_loss``: the mean loss of the
        validation rows (the main task, or every task) on the validation batch. Both are
        differentiable in the module's live shared parameters, so Hessian-vector products work."""
        if batches is None or not getattr(agg, "uses_hyper", False):
            return None
        layout = self._layout(module)
        named, shared = layout.named, layout.shared_params

        def losses(b: Batch, rows: Tensor) -> Tensor:
            def one_task(params: dict[str, Tensor], *args: Tensor) -> Any:
                out = loss_fn(params, *args, **constants)
                return out[0] if has_aux else out

            inputs = make_inputs(b, rows)
            return vmap(one_task, in_dims=(None,) + (0,) * len(inputs))(named, *inputs)

        def train_losses() -> Tensor:
            b = batches.train()
            return losses(b, torch.arange(b.reward.shape[0], device=self.device))

        def val_loss() -> Tensor:
            return losses(batches.val(), batches.val_tasks.to(self.device)).mean()

        return HyperContext(params=shared, train_losses=train_losses, val_loss=val_loss)

    def _component_step(
        self,
        name: str,
        module: nn.Module,
        loss_fn,
        inputs: tuple[Tensor, ...],
        constants: dict[str, Any],
        agg: Aggregator,
        optimizer: torch.optim.Optimizer,
        step: int,
        context: dict[str, Any],
        metrics: dict[str, Any],
        has_aux: bool = False,
        hyper: Any = None,
        diagnostics: bool = False,
    ) -> Tensor | None:
        """Aggregate one component's per-task gradients and step its optimizer.

        Nothing is read back from the device. A non-finite loss skips the step on the device: the
        flag ``skipped_<name>`` (a 0-d tensor, 1.0 = skipped) gates the fused Adam step through
        its ``found_inf`` input (the mechanism of AMP's GradScaler), so parameters and optimizer
        state stay bit-identical. A non-finite G is seen on the host for free (on the diagonal of
        the Gram matrix the solvers receive) and skips the step there. Returns the auxiliary
        output [K] of ``loss_fn`` (None when the step was skipped on the host)."""
        K = inputs[0].shape[0]
        task_ids = torch.arange(K)
        layout = self._layout(module)
        named, specific, shared, shared_params = layout.named, layout.specific, layout.shared, layout.shared_params

        t0 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        aux = None
        if not agg.needs_jacobian(step):
            # one backward of sum_i w_i loss_i: the direction is w @ G without building G. The
            # losses are batch-polymorphic: the stacked call gives the loss vector [K] directly.
            forward = self._compiled(f"loss/{name}", lambda: loss_fn) if self.cfg.compile else loss_fn
            out = forward(named, *inputs, **constants)
            losses, aux = out if has_aux else (out, None)
            ctx = AggContext(step=step, task_ids=task_ids, losses=losses.detach(), hyper=hyper, **context)
            weights = agg.weights_without_jacobian(ctx)  # [K] float64, host
            grads = torch.autograd.grad((weights.to(losses) * losses).sum(), shared_params, retain_graph=bool(specific))
            for p, g in zip(shared_params, grads):
                p.grad = g
            if specific:
                spec_params = [named[n] for n in specific]
                for p, g in zip(spec_params, torch.autograd.grad(losses.sum(), spec_params)):
                    p.grad = g
            if agg.max_norm is not None:
                metrics[f"{name}/grad_norm"] = torch.nn.utils.clip_grad_norm_(shared_params, agg.max_norm, foreach=True)
            metrics[f"{name}/weights"] = weights
            if hasattr(agg, "log_info"):
                metrics.update({f"{name}/{k}": float(v) for k, v in agg.log_info().items()})
            metrics[f"{name}/jacobian"] = 0.0
            coefficients = gram = None
        else:
            params = {n: p.detach() for n, p in named.items()}
            groups = self._row_groups(agg, step, context["generator"], K)
            result = self._jacobian(name, loss_fn, params, inputs, constants, shared, module, has_aux, groups)
            losses, aux = result.losses, result.aux
            metrics[f"{name}/jacobian"] = time.perf_counter() - t0
            ctx = AggContext(
                step=step, task_ids=task_ids, losses=losses if groups is None else None,
                row_groups=groups, hyper=hyper, **context,
            )
            try:
                out = agg(result.G, ctx)
            except ValueError:
                # the exceptional path may read the device: a non-finite G or loss is a skip
                if bool(torch.isfinite(result.G).all()) and bool(torch.isfinite(losses).all()):
                    raise
                metrics[f"skipped_{name}"] = 1.0
                return None
            for p, g in zip(shared_params, unflatten(out.direction, shared_params)):
                p.grad = g  # views of the one direction tensor: no copy
            for n, g in result.other_grads.items():
                named[n].grad = g
            if out.weights is not None:
                metrics[f"{name}/weights"] = out.weights
            for key, value in out.info.items():
                metrics[f"{name}/{key}"] = float(value)
            coefficients = out.coefficients if groups is None else None
            gram = out.gram if groups is None else None
        metrics[f"{name}/loss"] = losses.detach().mean()
        if diagnostics:  # before the step: G and d at the parameters the direction was computed at
            direction = torch.cat([p.grad.reshape(-1) for p in shared_params])  # [P], as stepped
            G = None
            if gram is None or coefficients is None:  # no-G path or reduced rows: one extra pass
                params = {n: p.detach() for n, p in named.items()}
                G = self._jacobian(name, loss_fn, params, inputs, constants, shared, module, has_aux, None).G
            metrics.update({f"{name}/{k}": v for k, v in gradient_diagnostics(G, direction, gram, coefficients).items()})
        skipped = self._gated_step(optimizer, losses)
        metrics[f"skipped_{name}"] = skipped
        metrics[f"{name}/time"] = time.perf_counter() - t0
        return aux

    def _row_groups(self, agg: Aggregator, step: int, generator: torch.Generator | None, K: int) -> tuple[Tensor, ...] | None:
        """CAGrad-Fast's rows: one per sampled task plus the mean of the rest (None: all rows)."""
        rows = agg.rows_needed(step, generator)
        if rows is None:
            return None
        chosen = rows.tolist()  # host ids from the CPU generator
        rest = torch.tensor([k for k in range(K) if k not in set(chosen)], dtype=torch.long)
        return tuple(torch.tensor([r]) for r in chosen) + ((rest,) if rest.numel() else ())

    def _jacobian(self, name, loss_fn, params, inputs, constants, shared, module, has_aux, groups):
        if self.cfg.compile:
            if self.jacobian_method not in ("auto", "vmap"):
                self._compile_fallback(self.jacobian_method)
            elif groups is None:
                return self._compiled_jacobian(name, loss_fn, params, inputs, constants, shared, has_aux)
            elif self._layout(module).shared_numel <= COMPILED_GROUPS_MAX_PARAMS:
                return group_rows(self._compiled_jacobian(name, loss_fn, params, inputs, constants, shared, has_aux), groups)
            # else reduced rows (CAGrad-Fast) of a large network: the eager grouped Jacobian

        def one_task(p: dict[str, Tensor], *args: Tensor) -> Any:
            return loss_fn(p, *args, **constants)

        if groups is None:
            return per_task_jacobian(one_task, params, inputs, shared, method=self.jacobian_method, has_aux=has_aux, module=module)
        return grouped_jacobian(one_task, params, inputs, groups, shared, has_aux=has_aux, method=self.jacobian_method, module=module)

    def _gated_step(self, optimizer: torch.optim.Optimizer, losses: Tensor, skip: Tensor | None = None) -> Tensor | float:
        """Step ``optimizer`` unless ``losses`` (or ``skip``) flags a non-finite step; returns the
        skip flag. Fused Adam takes the flag on the device (no sync); other optimizers need a
        host read of it (one sync; used where fused Adam is not available)."""
        bad = ~torch.isfinite(losses.detach()).all()
        if skip is not None:
            bad = bad | (skip > 0)
        flag = bad.to(torch.float32)
        if getattr(optimizer, "defaults", {}).get("fused"):
            optimizer.found_inf = flag  # read by the fused kernel: a flagged step changes nothing
            optimizer.step()
            return flag
        if bool(bad):
            return flag
        optimizer.step()
        return flag

    def _temperature_step(
        self, log_prob_mean: Tensor, actor_skipped: Tensor | float, step: int, agg: Aggregator | None,
        context: dict[str, Any], metrics: dict[str, Any],
    ) -> None:
        """Per-task temperature loss -alpha_k (log pi + target entropy); plain sum unless ``agg``.
        Skipped with the actor's step (its log-probabilities come from that step)."""
        K = log_prob_mean.shape[0]
        losses = self._temperature_loss(self.log_alpha[:K], log_prob_mean)  # [K]
        self.alpha_optimizer.zero_grad(set_to_none=True)
        if agg is None:
            losses.sum().backward()
        else:
            # row k of G is d loss_k / d log_alpha: nonzero only in column k
            G = torch.diag(losses.detach())
            G = torch.cat([G, torch.zeros(K, self.num_tasks - K, device=G.device)], dim=1)
            try:
                out = agg(G, AggContext(step=step, task_ids=torch.arange(K), losses=losses.detach(), **context))
            except ValueError:
                if bool(torch.isfinite(losses).all()):
                    raise
                return
            self.log_alpha.grad = out.direction.clone()
        self._gated_step(self.alpha_optimizer, losses, torch.as_tensor(actor_skipped, device=losses.device))
        metrics["temperature/loss"] = losses.detach().mean()

    def _temperature_loss(self, log_alpha: Tensor, log_prob_mean: Tensor) -> Tensor:
        """Per-task temperature losses ``-alpha_k (log pi_k + target entropy)``: [K], or [S, K] for a
        population's log_alpha [S, K] and log-probabilities [S, K]."""
        return -(log_alpha.exp() * (log_prob_mean + self.target_entropy).detach())

    # ---- checkpoints ------------------------------------------------------------------------------
    def training_state(self) -> dict[str, Any]:
        """Networks, target networks, log-alphas and every optimizer state (tensors only)."""
        return {
            "model": {k: v.detach().clone() for k, v in self.state_dict().items()},
            "actor_optimizer": self.actor_optimizer.state_dict(),
            "critic_optimizer": self.critic_optimizer.state_dict(),
            "alpha_optimizer": self.alpha_optimizer.state_dict(),
        }

    def load_training_state(self, state: dict[str, Any]) -> None:
        self.load_state_dict(state["model"])
        self.actor_optimizer.load_state_dict(state["actor_optimizer"])
        self.critic_optimizer.load_state_dict(state["critic_optimizer"])
        self.alpha_optimizer.load_state_dict(state["alpha_optimizer"])


def _eager_partition():
    """The partitioner of ``agents/partition.py`` (imported on first use: it loads inductor)."""
    from mtrl.agents.partition import EagerPartition

    return EagerPartition()
