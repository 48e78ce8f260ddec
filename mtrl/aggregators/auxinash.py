"""AuxiNash [AN]: asymmetric Nash bargaining with learned task preferences.

Inner step (every call): the weights solve ``M alpha = p / alpha`` [AN Claim 4.1], the same
Newton solver as Nash-MTL with c = p (``d = G^T alpha``, ``g_i^T d = p_i / alpha_i``,
``||d||^2 = sum p``). Preferences use the released code's convention ``sum p = K`` (uniform
p = 1 gives exactly Nash-MTL's alpha; the outer learning rate was tuned for it; docs/aggregators.md, readings table).

Outer step, in the order of Algorithm 1 [AN Alg 1]: after every ``hyper_every`` = N_p inner
steps, i.e. after the N_p-th call AND the parameter update the trainer makes with its direction,
the preferences take one step on the implicit hypergradient of the validation loss [AN Eqs. 4-6]

    grad_p L_V = (grad_alpha L_V)^T (M + diag(p / alpha^2))^-1 diag(1 / alpha),
    grad_alpha L_V = -G' q,   q = Neumann(H, grad_theta L_V)   (``hypergrad.py``)

with alpha and M of the N_p-th call (the last solve, as the released code does), ``G'`` and ``H``
from ``L_T = sum alpha_i loss_i`` on a fresh batch (``ctx.hyper.train_losses``) and ``L_V`` =
``ctx.hyper.val_loss`` (the main task's loss on another fresh batch, or, with no main task, the
mean loss: an extension of this project, docs/aggregators.md "Bilevel methods"), both at the updated parameters. Since the update
happens between two calls, the step is taken at the start of the next call, before its solve,
which then uses the new preferences; the alpha, M and task ids it needs are kept in the state
(``outer_*``), so a checkpoint between the two calls resumes exactly. Then the gradient is
clipped to norm ``grad_clip``, p takes one SGD step with momentum, is floored at ``pref_floor``
and renormalised to sum K (defaults: docs/aggregators.md). The step is taken every N_p steps
unconditionally, also when the N_p-th call's alpha came from the Nash fallback (see
docs/aggregators.md for what that does to the hypergradient; ``skip_after_fallback=True`` skips
those steps instead, an option of this project); it is skipped only when it cannot be computed: no
closures (``ctx.hyper`` None), other task rows than the N_p-th call's, or a non-finite
hypergradient (``hyper_skipped`` counts them). The outer step never touches the model
parameters: it only reads gradients.

``main_preference=s`` fixes the main task's share of the preferences to s (the paper's
fixed-preference ablation, p_main in {0.7, 0.8, 0.9} of the total, the rest split equally); with
``learn_preferences=False`` the preferences then stay there.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from mtrl.aggregators import register
from mtrl.aggregators.base import AggContext, GramAggregation, check_bool, check_int, check_option, check_positive_or_none, is_number
from mtrl.aggregators.fixed_point import FixedPointWeighting
from mtrl.aggregators.hypergrad import implicit_hypergradient
from mtrl.aggregators.solvers import gram_tolerance, weights_derivative

__all__ = ["AuxiNash"]


@register
class AuxiNash(FixedPointWeighting):
    name = "auxinash"
    uses_hyper = True
    batched_solver = False  # the outer step runs the closures of ctx.hyper: one member at a time
    state_attributes = (
        "alpha", "step", "preference", "momentum", "initialised", "hypersteps", "hyper_skipped", "last_hyper",
        "outer_pending", "outer_alpha", "outer_gram", "outer_task_ids", "outer_after_fallback",
    )

    def __init__(
        self,
        num_tasks: int,
        learn_preferences: bool = True,
        hyper_every: int = 25,
        meta_lr: float = 5e-3,
        meta_momentum: float = 0.9,
        neumann_terms: int = 3,
        neumann_lr: float = 1e-4,
        grad_clip: float = 1.0,
        pref_floor: float = 1e-4,
        main_preference: float | None = None,
        skip_after_fallback: bool = False,
        max_norm: float | None = 1.0,
        scale_by_K: bool = False,
    ) -> None:
        super().__init__(num_tasks, max_norm=max_norm, scale_by_K=scale_by_K)
        check_bool("learn_preferences", learn_preferences)
        check_bool("skip_after_fallback", skip_after_fallback)
        check_int("hyper_every", hyper_every, 1)
        check_option("meta_lr", meta_lr, is_number(meta_lr) and meta_lr > 0, "a positive number")
        check_option("meta_momentum", meta_momentum, is_number(meta_momentum) and 0 <= meta_momentum < 1, "a number in [0, 1)")
        check_int("neumann_terms", neumann_terms, 0)
        check_option("neumann_lr", neumann_lr, is_number(neumann_lr) and neumann_lr > 0, "a positive number")
        check_positive_or_none("grad_clip", grad_clip)
        check_option("pref_floor", pref_floor, is_number(pref_floor) and 0 < pref_floor < 1, "a number in (0, 1)")
        check_option("main_preference", main_preference, main_preference is None or (is_number(main_preference) and 0 < main_preference < 1), "None or a number in (0, 1)")
        self.learn_preferences, self.hyper_every = learn_preferences, hyper_every
        self.meta_lr, self.meta_momentum = float(meta_lr), float(meta_momentum)
        self.neumann_terms, self.neumann_lr = neumann_terms, float(neumann_lr)
        self.grad_clip, self.pref_floor, self.main_preference = grad_clip, float(pref_floor), main_preference
        self.skip_after_fallback = skip_after_fallback
        self.preference = torch.ones(num_tasks, dtype=torch.float64)  # sum K
        self.momentum = torch.zeros(num_tasks, dtype=torch.float64)
        self.initialised = False
        self.hypersteps = 0
        self.hyper_skipped = 0
        self.last_hyper: dict[str, float] = {}  # floats of the latest outer step, logged every step
        # what the outer step due after the N_p-th call needs (Algorithm 1: it follows that call's update)
        self.outer_pending = False
        self.outer_alpha: Tensor | None = None  # [rows] float64, the N_p-th call's weights
        self.outer_gram: Tensor | None = None  # [rows, rows] float64, its Gram matrix
        self.outer_task_ids: Tensor | None = None  # [rows] its global task ids
        self.outer_after_fallback = False  # its weights came from the Nash fallback

    # ---- preferences -------------------------------------------------------------------------
    def _initialise(self, ctx: AggContext) -> None:
        if self.main_preference is not None:
            if ctx.main_task is None:
                raise ValueError("auxinash: main_preference needs a main task (set main_task in the config)")
            K = self.num_tasks
            rest = K * (1.0 - self.main_preference) / max(K - 1, 1)
            self.preference = torch.full((K,), rest, dtype=torch.float64)
            self.preference[ctx.main_task] = K * self.main_preference if K > 1 else 1.0
        self.initialised = True

    def coefficients(self, ctx: AggContext, task_ids: Tensor) -> tuple[np.ndarray, float]:
        return self.preference[task_ids].numpy().copy(), 1.0

    def _set_preference(self, task_ids: Tensor, value: Tensor) -> None:
        p = self.preference.clone()
        p[task_ids] = value.clamp_min(self.pref_floor)
        self.preference = p * (self.num_tasks / p.sum())

    # ---- one call ------------------------------------------------------------------------------
    def aggregate_gram(self, M: np.ndarray, ctx: AggContext, dtype: torch.dtype) -> GramAggregation:
        if not self.initialised:
            self._initialise(ctx)
        task_ids = torch.as_tensor(ctx.task_ids).long().cpu()
        outer_info = self.outer_step(ctx) if self.outer_pending else {}
        alpha, info = self.solve_and_store(M, ctx, task_ids, gram_tolerance(dtype))
        out = self.finish_gram(M, alpha, info, ctx, task_ids)
        if self.learn_preferences and len(task_ids) > 1 and self.step % self.hyper_every == 0:
            self.outer_pending = True  # taken at the start of the next call, after the trainer's update
            self.outer_alpha, self.outer_gram = torch.from_numpy(alpha.copy()), torch.from_numpy(M.copy())
            self.outer_task_ids, self.outer_after_fallback = task_ids.clone(), bool(info["fallback_used"])
        p = self.preference[task_ids]
        out.info.update(self.last_hyper)
        out.info.update(outer_info)
        out.info.update(pref_min=float(p.min()), pref_max=float(p.max()), hypersteps=float(self.hypersteps))
        if ctx.main_task is not None:
            out.info["pref_main"] = float(self.preference[ctx.main_task])
        return out

    def outer_step(self, ctx: AggContext) -> dict[str, float]:
        """The preference update due after the last N_p-th call [AN Alg 1], with that call's alpha
        and M, at the current (updated) parameters; returns logging floats."""
        self.outer_pending = False
        task_ids = self.outer_task_ids
        current = torch.as_tensor(ctx.task_ids).long().cpu()
        cannot = ctx.hyper is None or not torch.equal(current, task_ids)  # the closures give the current rows
        if cannot or (self.skip_after_fallback and self.outer_after_fallback):
            self.hyper_skipped += 1
            return {"hyper_skipped": 1.0}
        info = self.hyperstep(self.outer_gram.numpy(), self.outer_alpha.numpy(), ctx, task_ids)
        info["hyper_after_fallback"] = float(self.outer_after_fallback)
        return info

    def preference_gradient(self, M: np.ndarray, alpha: np.ndarray, ctx: AggContext, task_ids: Tensor) -> tuple[Tensor, dict[str, float]]:
        """grad_p L_V [AN Eq. 6] for the rows ``task_ids``, with the Neumann convention of
        ``hypergrad.py`` (no eta factor). Prop 4.2 needs alpha to solve ``M alpha = p / alpha``;
        for fallback weights the same formula is evaluated at a point that is not a solution
        (finite, since ``M + diag(p / alpha^2)`` is positive definite for alpha > 0)."""
        hyper = ctx.hyper
        dtype = hyper.params[0].dtype
        alpha_leaf = torch.tensor(alpha, dtype=dtype, device=hyper.params[0].device, requires_grad=True)
        grads, info = implicit_hypergradient(
            hyper, lambda losses: (alpha_leaf * losses).sum(), [alpha_leaf], self.neumann_terms, self.neumann_lr
        )
        grad_alpha = grads[0].detach().double().cpu().numpy()  # = -G' q
        p = self.preference[task_ids].numpy()
        return torch.from_numpy(grad_alpha @ weights_derivative(M, alpha, p)), info

    def hyperstep(self, M: np.ndarray, alpha: np.ndarray, ctx: AggContext, task_ids: Tensor) -> dict[str, float]:
        """One preference update from the implicit hypergradient; returns logging floats."""
        grad_p, info = self.preference_gradient(M, alpha, ctx, task_ids)
        if not bool(torch.isfinite(grad_p).all()):
            self.hyper_skipped += 1
            return {"hyper_skipped": 1.0}
        norm = float(torch.linalg.vector_norm(grad_p))
        if self.grad_clip is not None and norm > self.grad_clip:
            grad_p = grad_p * (self.grad_clip / norm)
        buf = self.momentum[task_ids] * self.meta_momentum + grad_p  # torch.optim.SGD's momentum rule
        self.momentum[task_ids] = buf
        self._set_preference(task_ids, self.preference[task_ids] - self.meta_lr * buf)
        self.hypersteps += 1
        self.last_hyper = {**{f"hyper_{k}": v for k, v in info.items()}, "hyper_grad_norm": norm}
        return dict(self.last_hyper)
