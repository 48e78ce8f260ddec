"""Per-task Jacobian G [K, P] of a loss vector w.r.t. one parameter group (DESIGN §5).

``loss_fn(params, *one_task_inputs) -> scalar`` is written for ONE task; every tensor in
``inputs`` has a leading task dimension K. ``torch.func.vmap(grad_and_value(loss_fn))`` over that
dimension gives all K gradients in about the time of one backward pass of the summed loss,
where K separate ``autograd.grad`` calls (the reference code) cost about K forward-backward
passes. The loop path is kept as a fallback for models vmap cannot handle, and the tests check
both agree.

Rows can also be grouped (CAGrad-Fast): ``groups`` is a list of LongTensors of task positions,
and row j is the gradient of the MEAN loss over ``groups[j]``.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import Tensor
from torch.func import grad, grad_and_value, vmap

__all__ = ["JacobianResult", "configure_allocator", "flatten", "per_task_jacobian", "grouped_jacobian", "unflatten"]


def configure_allocator() -> bool:
    """Keep large freed blocks in the process heap (glibc ``mallopt``) instead of unmapping them.

    G is K x P floats (27 MB for the MT10 critic) and is freed every update; by default glibc
    returns such blocks to the OS and the next update pays page faults to touch fresh memory
    again. Measured on the MT10 critic (2-core CPU): per-task G went from 1.71x to 1.26x one
    backward pass. Process-wide, so it is called by the trainer and the benchmarks, never on
    import. Returns False where glibc is not available (nothing changes).
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_mmap_threshold, 1 << 30)) and bool(libc.mallopt(m_trim_threshold, (1 << 31) - 1))
    except (OSError, AttributeError):
        return False

LossFn = Callable[..., Any]


class JacobianResult:
    """``G`` [rows, P] over the ``wrt`` parameters, the per-row ``losses`` [rows], the auxiliary
    outputs of ``loss_fn`` (when ``has_aux``) and the summed gradients of the ``other`` parameters
    (task-specific ones, which take the plain sum of the per-task gradients)."""

    __slots__ = ("G", "losses", "aux", "other_grads")

    def __init__(self, G: Tensor, losses: Tensor, aux: Any, other_grads: dict[str, Tensor]) -> None:
        self.G, self.losses, self.aux, self.other_grads = G, losses, aux, other_grads


def flatten(tensors: Sequence[Tensor], leading: int = 0) -> Tensor:
    """Concatenate tensors into one matrix [lead, P] (``leading`` > 0) or vector [P]."""
    if leading:
        return torch.cat([t.reshape(leading, -1) for t in tensors], dim=1)
    return torch.cat([t.reshape(-1) for t in tensors])


def unflatten(vector: Tensor, like: Sequence[Tensor]) -> list[Tensor]:
    """Split a flat vector [P] into tensors shaped like ``like``."""
    out, offset = [], 0
    for t in like:
        n = t.numel()
        out.append(vector[offset : offset + n].view_as(t))
        offset += n
    return out


def _split(grads: dict[str, Tensor], wrt: Sequence[str], leading: int) -> tuple[Tensor, dict[str, Tensor]]:
    G = flatten([grads[name] for name in wrt], leading)
    other = {name: g.sum(0) for name, g in grads.items() if name not in wrt}
    return G, other


def per_task_jacobian(
    loss_fn: LossFn,
    params: dict[str, Tensor],
    inputs: tuple[Tensor, ...],
    wrt: Sequence[str] | None = None,
    *,
    method: str = "vmap",
    has_aux: bool = False,
) -> JacobianResult:
    """G [K, P] with row k = d loss_fn(params, *[x[k] for x in inputs]) / d params[wrt].

    Args:
        loss_fn: per-task loss; returns a scalar, or ``(scalar, aux)`` when ``has_aux``.
        params: every parameter ``loss_fn`` differentiates (detached leaves are fine).
        inputs: per-task inputs, each with leading dimension K.
        wrt: names of the parameters that form the columns of G (default: all); the gradients of
            the others are summed over tasks and returned in ``other_grads``.
        method: "vmap" (torch.func) or "loop" (K autograd calls).
    """
    wrt = list(params) if wrt is None else list(wrt)
    K = inputs[0].shape[0]
    if method == "vmap":
        in_dims = (None,) + (0,) * len(inputs)
        grads, value = vmap(grad_and_value(loss_fn, has_aux=has_aux), in_dims=in_dims)(params, *inputs)
        losses, aux = value if has_aux else (value, None)
        G, other = _split(grads, wrt, K)
        return JacobianResult(G, losses.detach(), aux, other)
    if method == "loop":
        rows, losses, auxes = [], [], []
        leaves = {name: p.detach().requires_grad_(True) for name, p in params.items()}
        for k in range(K):
            out = loss_fn(leaves, *[x[k] for x in inputs])
            loss, aux = out if has_aux else (out, None)
            g = torch.autograd.grad(loss, list(leaves.values()))
            rows.append(dict(zip(leaves, g)))
            losses.append(loss.detach())
            auxes.append(aux)
        grads = {name: torch.stack([r[name] for r in rows]) for name in leaves}
        G, other = _split(grads, wrt, K)
        aux_out = torch.stack([a.detach() for a in auxes]) if has_aux else None
        return JacobianResult(G, torch.stack(losses), aux_out, other)
    raise ValueError(f"unknown Jacobian method {method!r}; allowed: vmap, loop")


def grouped_jacobian(
    loss_fn: LossFn,
    params: dict[str, Tensor],
    inputs: tuple[Tensor, ...],
    groups: Sequence[Tensor],
    wrt: Sequence[str] | None = None,
    *,
    has_aux: bool = False,
    method: str = "vmap",
) -> JacobianResult:
    """Rows for groups of tasks: singleton groups come from one vmapped pass, every larger group
    from one gradient of its mean loss. ``losses`` holds each group's mean loss; ``other_grads``
    the plain sum over all tasks in the groups (a group's mean gradient times its size)."""
    wrt = list(params) if wrt is None else list(wrt)
    singles = [int(g[0]) for g in groups if g.numel() == 1]
    rows: list[Tensor] = []
    losses: list[Tensor] = []
    other: dict[str, Tensor] = {}
    single_rows = {}
    if singles:
        index = torch.tensor(singles, device=inputs[0].device)
        part = per_task_jacobian(loss_fn, params, tuple(x[index] for x in inputs), wrt, method=method, has_aux=has_aux)
        single_rows = {task: (part.G[i], part.losses[i]) for i, task in enumerate(singles)}
        other = dict(part.other_grads)
    in_dims = (None,) + (0,) * len(inputs)
    for group in groups:
        if group.numel() == 1:
            row, loss = single_rows[int(group[0])]
        else:
            index = group.to(inputs[0].device)
            sub = tuple(x[index] for x in inputs)

            def mean_loss(p: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
                out = vmap(loss_fn, in_dims=in_dims)(p, *sub)
                value = (out[0] if has_aux else out).mean()
                return value, value

            g, loss = grad(mean_loss, has_aux=True)(params)
            row = flatten([g[name] for name in wrt])
            for name, value in g.items():
                if name not in wrt:
                    other[name] = other.get(name, 0) + value * group.numel()
        rows.append(row)
        losses.append(loss.detach())
    return JacobianResult(torch.stack(rows), torch.stack(losses), None, other)
