"""Implicit hypergradients for the bilevel methods (AuxiNash [AN §4.2], AuxiLearn [AL §3.4]).

Both methods tune hyperparameters ``h`` (AuxiNash: the bargaining weights alpha; AuxiLearn: the
parameters of the loss-combination network) of a training objective ``L_T(theta, h)`` so that a
validation loss ``L_V(theta)`` of the trained parameters decreases. The implicit function theorem
gives ``dL_V/dh = -grad_theta L_V^T H^-1 d^2 L_T / (d theta d h)`` with ``H`` the Hessian of
``L_T`` in theta [AN Eq. 4, AL Eq. 4]. ``H^-1`` is replaced by Lorraine et al.'s truncated Neumann
series ``q = sum_{j=0..J} (I - eta H)^j grad_theta L_V`` [AL Alg. 2], which tends to
``(eta H)^-1 grad_theta L_V`` as J grows. Like the released code, the result is NOT multiplied
by eta (the factor is absorbed by the outer learning rate and clipping).

The trainer describes the inner problem with a :class:`HyperContext` (``AggContext.hyper``):
the shared parameters, a closure giving the per-task training losses on a fresh batch, and one
giving the validation loss. Nothing here knows about SAC.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor

__all__ = ["HyperContext", "implicit_hypergradient", "neumann_inverse_hvp"]


@dataclass(frozen=True)
class HyperContext:
    """What an outer (preference / combiner) step needs from the trainer.

    Attributes:
        params: the shared parameters theta (tensors requiring grad), the same ones G is over.
        train_losses: closure returning per-task training losses [K] (rows in ``AggContext.task_ids``
            order) on a fresh batch, differentiable in ``params`` (a graph is built on each call).
        val_loss: closure returning the validation loss (a scalar) on data the inner step did not
            use, differentiable in ``params``.
    """

    params: tuple[Tensor, ...]
    train_losses: Callable[[], Tensor]
    val_loss: Callable[[], Tensor]


def neumann_inverse_hvp(
    grads: Sequence[Tensor], params: Sequence[Tensor], vector: Sequence[Tensor], terms: int, lr: float
) -> list[Tensor]:
    """``q = sum_{j=0..terms} (I - lr H)^j vector`` where ``grads`` = grad_theta L_T built with
    ``create_graph=True`` (so ``H v`` is one more backward through it)."""
    v = [x.detach() for x in vector]
    q = [x.clone() for x in v]
    for _ in range(terms):
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True, allow_unused=True)
        v = [vi - lr * (h if h is not None else torch.zeros_like(vi)) for vi, h in zip(v, hv)]
        q = [qi + vi for qi, vi in zip(q, v)]
    return q


def implicit_hypergradient(
    hyper: HyperContext,
    objective: Callable[[Tensor], Tensor],
    hparams: Sequence[Tensor],
    terms: int = 3,
    lr: float = 1e-4,
    val_grad: Sequence[Tensor] | None = None,
) -> tuple[list[Tensor], dict[str, float]]:
    """``-(d^2 L_T / d h d theta) q`` with q the Neumann approximation of ``H^-1 grad_theta L_V``.

    Args:
        objective: maps the per-task training losses [K] to the scalar ``L_T``; it must depend
            on ``hparams`` (leaf tensors requiring grad) so the mixed derivative exists.
        val_grad: grad_theta L_V if already computed (else it is computed from ``hyper.val_loss``).

    Returns the hypergradient (one tensor per entry of ``hparams``; zeros where ``L_T`` does not
    depend on it) and floats for logging (validation loss, gradient norms).
    """
    params = list(hyper.params)
    info: dict[str, float] = {}
    if val_grad is None:
        val = hyper.val_loss()
        info["val_loss"] = float(val.detach())
        val_grad = torch.autograd.grad(val, params, allow_unused=True)
        val_grad = [g if g is not None else torch.zeros_like(p) for g, p in zip(val_grad, params)]
    train = objective(hyper.train_losses())
    grads = torch.autograd.grad(train, params, create_graph=True, allow_unused=True)
    used = [i for i, g in enumerate(grads) if g is not None]
    grads = [grads[i] for i in used]
    q = neumann_inverse_hvp(grads, [params[i] for i in used], [val_grad[i] for i in used], terms, lr)
    mixed = torch.autograd.grad(grads, list(hparams), grad_outputs=q, allow_unused=True)
    out = [-(m.detach()) if m is not None else torch.zeros_like(h) for m, h in zip(mixed, hparams)]
    info["val_grad_norm"] = float(torch.sqrt(sum((g.double() ** 2).sum() for g in val_grad)))
    return out, info
