"""Per-task Jacobian G [K, P] of a loss vector w.r.t. one parameter group (docs/design.md §5).

``loss_fn(params, *one_task_inputs) -> scalar`` is written for ONE task; every tensor in
``inputs`` has a leading task dimension K. Three engines compute the same G:

* ``"vmap"``: ``torch.func.vmap(grad_and_value(loss_fn))`` over the task dimension, for any model
  ``torch.func`` can trace. All K gradients in about the time of one backward pass of the summed
  loss, plus one copy of the K x P result into G.
* ``"linear"``: for parameter groups made of ``nn.Linear`` weights and biases (every shared
  parameter of our actor and critic). One ordinary backward of the summed loss to the outputs of
  the Linear layers, then per task ``dW_k = dZ_kᵀ A_k`` (one batched matmul per layer) written
  straight into G: no per-parameter gradient tensors, no concatenation. It needs ``loss_fn`` to be
  *batch-polymorphic*: called with the stacked inputs (leading dimension K) it returns the loss
  vector [K] (reduce with ``mean(-1)`` and shape per-task scalars as [K, 1]), and the tasks must not
  interact in the forward pass (no batch norm across tasks).
* ``"loop"``: K separate ``autograd.grad`` calls (the reference code's way), the fallback for
  models neither engine handles; the tests check that all three agree.

Rows can also be grouped (CAGrad-Fast): ``groups`` is a list of LongTensors of task positions,
and row j is the gradient of the MEAN loss over ``groups[j]``.

Populations (S members trained as one computation, ``agents/population.py``): ``member_gradients``
is the "linear" engine for member-aware Linear layers (``MemberLinear``: weight [S, out, in]) and a
loss returning [S, K]: one backward pass for all members, then G [S, K, P] from one batched matmul
per layer over the S * K (member, task) rows, or, with per-member loss weights, each member's
weighted-sum gradient [S, P] (the one-backward path of steps that need no G).
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Sequence

import torch
from torch import Tensor, nn
from torch.func import grad, grad_and_value, vmap

__all__ = [
    "METHODS", "JacobianResult", "configure_allocator", "flatten", "group_rows", "grouped_jacobian", "linear_layers",
    "GEMM_ALIGN", "member_gradients", "per_task_jacobian", "resolve_method", "unflatten",
]

METHODS = ("auto", "linear", "vmap", "loop")


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


def linear_layers(
    module: nn.Module, wrt: Sequence[str], members: bool = False
) -> dict[str, tuple[nn.Linear, str | None, str | None]] | None:
    """``{layer name: (layer, weight name, bias name)}`` for the ``nn.Linear`` layers of ``module``
    that hold the ``wrt`` parameters (a name is None when that parameter is not in ``wrt``), or
    None when some ``wrt`` parameter is not a Linear weight or bias (the "linear" engine cannot
    serve that group). ``members=True``: the member-aware Linear layers of a population instead
    (modules whose class sets ``member_linear = True``, weight [S, out, in], bias [S, out])."""
    wanted = set(wrt)
    layers: dict[str, tuple[nn.Linear, str | None, str | None]] = {}
    for name, layer in module.named_modules():
        if not (getattr(type(layer), "member_linear", False) if members else isinstance(layer, nn.Linear)):
            continue
        prefix = f"{name}." if name else ""
        weight = prefix + "weight" if prefix + "weight" in wanted else None
        bias = prefix + "bias" if layer.bias is not None and prefix + "bias" in wanted else None
        if weight or bias:
            layers[name] = (layer, weight, bias)
    covered = {n for _, w, b in layers.values() for n in (w, b) if n}
    return layers if covered == wanted else None


def resolve_method(method: str, module: nn.Module | None, wrt: Sequence[str]) -> str:
    """The engine ``method`` names; "auto" is "linear" when ``module``'s ``wrt`` parameters are all
    Linear weights and biases, else "vmap"."""
    return _engine(method, module, wrt)[0]


def _engine(method: str, module: nn.Module | None, wrt: Sequence[str]) -> tuple[str, dict | None]:
    """``resolve_method`` plus, for "linear", the layers of ``linear_layers`` (found once per call)."""
    if method not in METHODS:
        raise ValueError(f"unknown Jacobian method {method!r}; allowed: {', '.join(METHODS)}")
    if method not in ("auto", "linear"):
        return method, None
    layers = None if module is None else linear_layers(module, wrt)
    if method == "auto":
        return ("vmap", None) if layers is None else ("linear", layers)
    if module is None:
        raise ValueError("the 'linear' Jacobian engine needs the module that owns the parameters (module=...)")
    if layers is None:
        raise ValueError(
            "the 'linear' Jacobian engine needs every wrt parameter to be an nn.Linear weight or bias; "
            "use method='vmap' or 'loop'"
        )
    return method, layers


def _blocks(sizes: Sequence[int]) -> list[tuple[int, int, int, bool]]:
    """Rows of G as blocks ``(first row, first task, tasks, per_task)`` over tasks ordered group by
    group: runs of singleton groups form one per-task block (row r + i is task t + i), every larger
    group one mean row."""
    blocks: list[tuple[int, int, int, bool]] = []
    row = task = 0
    for n in sizes:
        if n == 1 and blocks and blocks[-1][3]:
            r, t, m, _ = blocks[-1]
            blocks[-1] = (r, t, m + 1, True)
        else:
            blocks.append((row, task, n, n == 1))
        row, task = row + 1, task + n
    return blocks


def _linear_engine(
    loss_fn: LossFn,
    params: dict[str, Tensor],
    inputs: tuple[Tensor, ...],
    wrt: list[str],
    layers: dict[str, tuple[nn.Linear, str | None, str | None]],
    groups: Sequence[Tensor] | None,
    has_aux: bool,
) -> JacobianResult:
    """Rows of G from one backward pass to the outputs of the Linear layers (see the module doc).

    Per task, row k of a layer's weight block is ``dZ_kᵀ A_k``, with A_k [n, in] the layer's inputs
    and dZ_k [n, out] the gradient of the summed loss w.r.t. its outputs on task k's samples (only
    task k's loss reaches them); the bias block is the column sum of dZ_k. The tasks are put in
    group order first, so that a group's row, the same product over all its samples divided by
    its size, is one matmul over a contiguous slice."""
    order = None
    if groups is not None:
        order = torch.cat([g.reshape(-1) for g in groups]).to(inputs[0].device)
        inputs = tuple(x[order] for x in inputs)
    K = inputs[0].shape[0]
    blocks = _blocks([1] * K if groups is None else [g.numel() for g in groups])
    leaves = {name: p.detach().requires_grad_(True) for name, p in params.items()}
    out, taps = _tapped_call(loss_fn, leaves, inputs, layers)
    losses, aux = out if has_aux else (out, None)
    if losses.shape != (K,):
        raise ValueError(
            f"the 'linear' Jacobian engine needs loss_fn to return the loss vector [{K}] when called with "
            f"the stacked inputs (a batch-polymorphic loss); got shape {tuple(losses.shape)}"
        )
    for name, a, _ in taps:
        if a.shape[0] != K:
            raise ValueError(f"layer {name!r} saw an input of shape {tuple(a.shape)}: its leading dimension must be the task dimension {K}")
    columns = set(wrt)
    others = [name for name in params if name not in columns]
    grads = torch.autograd.grad(losses.sum(), [z for _, _, z in taps] + [leaves[n] for n in others], allow_unused=True)
    output_grads, other_grads = grads[: len(taps)], grads[len(taps) :]

    offsets, offset = {}, 0
    for name in wrt:
        offsets[name] = offset
        offset += params[name].numel()
    first = params[wrt[0]]
    G = torch.empty(len(groups) if groups is not None else K, offset, dtype=first.dtype, device=first.device)
    written: set[str] = set()
    with torch.no_grad():
        for pname, is_weight, layer, a, dz, fresh in _layer_terms(taps, output_grads, layers, K, G.dtype, written):
            columns = slice(offsets[pname], offsets[pname] + params[pname].numel())
            for row, task, n, per_task in blocks:
                dz_b, a_b = dz[task : task + n], a[task : task + n]
                if per_task:
                    _write_rows(G[row : row + n, columns], dz_b, a_b, layer, is_weight, fresh)
                else:
                    view = G[row, columns]
                    dz_b = dz_b.reshape(-1, dz_b.shape[-1])
                    if is_weight:
                        view.view(layer.out_features, layer.in_features).addmm_(
                            dz_b.T, a_b.reshape(-1, a_b.shape[-1]), beta=0.0 if fresh else 1.0, alpha=1.0 / n
                        )
                    else:
                        view.copy_(dz_b.sum(0) / n) if fresh else view.add_(dz_b.sum(0) / n)
        for name in wrt:  # a layer never called: its gradient is zero
            if name not in written:
                G[:, offsets[name] : offsets[name] + params[name].numel()] = 0.0
    other = {name: torch.zeros_like(params[name]) if g is None else g for name, g in zip(others, other_grads)}
    losses = losses.detach()
    aux = None if aux is None else aux.detach()
    if order is not None:
        sizes = [g.numel() for g in groups]
        losses = torch.stack([part.mean() for part in losses.split(sizes)])
        if aux is not None:  # back to task order
            aux = torch.empty_like(aux).index_copy_(0, order, aux)
    return JacobianResult(G, losses, aux, other)


def _layer_terms(
    taps: list[tuple[str, Tensor, Tensor]], output_grads: Sequence[Tensor | None], layers: dict[str, tuple[nn.Module, Any, Any]],
    rows: int, dtype: torch.dtype, written: set[str],
) -> Iterator[tuple[str, bool, nn.Module, Tensor, Tensor, bool]]:
    """For every tapped layer call with a gradient and each of its parameters (weight, then bias):
    ``(parameter name, is_weight, layer, a [rows, N, in], dz [rows, N, out], fresh)`` in ``dtype``;
    ``fresh`` is False where an earlier call of the layer wrote that parameter already (its names
    are added to ``written``)."""
    for (name, a, _), dz in zip(taps, output_grads):
        if dz is None:
            continue
        layer, weight, bias = layers[name]
        a = a.reshape(rows, -1, a.shape[-1]).to(dtype)
        dz = dz.reshape(rows, -1, dz.shape[-1]).to(dtype)
        for pname, is_weight in ((weight, True), (bias, False)):
            if pname is None:
                continue
            fresh = pname not in written
            written.add(pname)
            yield pname, is_weight, layer, a, dz, fresh


def _write_rows(view: Tensor, dz: Tensor, a: Tensor, layer: nn.Module, is_weight: bool, fresh: bool) -> None:
    """One gradient row per leading index r of ``dz`` [R, N, out] and ``a`` [R, N, in] into
    ``view`` [R, numel]: a weight's ``dz_r^T a_r`` (one batched matmul), a bias's ``sum_n dz_r``;
    written when ``fresh``, else added (a layer called more than once)."""
    rows = dz.shape[0]
    if is_weight:
        view = view.view(rows, layer.out_features, layer.in_features)
        torch.bmm(dz.mT, a, out=view) if fresh else view.baddbmm_(dz.mT, a)
    else:
        torch.sum(dz, 1, out=view) if fresh else view.add_(dz.sum(1))


def _tapped_call(
    loss_fn: LossFn, leaves: dict[str, Tensor], inputs: tuple[Tensor, ...], layers: dict[str, tuple[nn.Module, Any, Any]]
) -> tuple[Any, list[tuple[str, Tensor, Tensor]]]:
    """``loss_fn(leaves, *inputs)`` with the (layer name, input, output) of every call of a layer of
    ``layers`` that carries a gradient (calls under no_grad, e.g. a target, are left out)."""
    taps: list[tuple[str, Tensor, Tensor]] = []
    handles = [
        layer.register_forward_hook(lambda _m, args, out, name=name: taps.append((name, args[0], out)))
        for name, (layer, _, _) in layers.items()
    ]
    try:
        with torch.enable_grad():
            out = loss_fn(leaves, *inputs)
    finally:
        for handle in handles:
            handle.remove()
    return out, [tap for tap in taps if tap[2].requires_grad]


#: GEMM outputs of a population are placed so that each member's output starts at the same
#: 16-byte alignment as the single agent's: MKL's sgemm results (plain and batched) depend on the
#: alignment of the output matrix at that granularity (measured: a [10, 15362] x [15362, 10] Gram
#: product differed in the last bit at offsets that are not multiples of 4 floats; the operands'
#: alignment did not matter)
GEMM_ALIGN = 4


def member_gradients(
    loss_fn: LossFn,
    params: dict[str, Tensor],
    inputs: tuple[Tensor, ...],
    wrt: Sequence[str],
    *,
    module: nn.Module,
    has_aux: bool = False,
    weights: Tensor | Callable[[Tensor], Tensor] | None = None,
    out: dict[str, Tensor] | None = None,
) -> JacobianResult:
    """The "linear" engine for a population of S members (see the module doc).

    ``params`` hold S members' parameters stacked ([S, ...]; the ``wrt`` ones are weights and biases
    of member-aware Linear layers of ``module``) and ``loss_fn(params, *inputs)`` returns the losses
    [S, K] (and, with ``has_aux``, an auxiliary output [S, K]); member s's losses must depend on
    member s's parameters and inputs only. The columns of G are ONE member's ``wrt`` parameters in
    ``wrt`` order (P = their numel / S).

    Without ``weights``: G [S, K, P], row (s, k) the gradient of member s's task-k loss; per layer
    ``dW_{s,k} = dZ_{s,k}^T A_{s,k}`` is one ``bmm`` over the S * K rows, as the single-agent
    engine's is over K. Member s's block ``G[s]`` has the single-agent G's layout ([K, P], row
    stride P) and starts at the same ``GEMM_ALIGN`` alignment whenever K * P is a multiple of it
    (else the row stride is padded: members stay independent of each other, but a member's G may
    then differ from the single agent's in the last bits).

    With ``weights`` [S, K]: no G; the gradient of ``sum_k w_{s,k} loss_{s,k}`` of each member,
    ``dW_s = dZ_s^T A_s`` over all of member s's rows, the products autograd's ``nn.Linear``
    backward computes for the single agent's one-backward path. They are returned in
    ``other_grads`` with the other parameters' ([S, ...] each), written into ``out[name]`` where
    given (e.g. views of an optimizer's gradient buffer). ``weights`` may be a function of the
    (detached) losses [S, K], called between the forward and the backward pass (loss weightings
    that read this step's losses).

    ``other_grads`` also holds the plain per-member sums ([S, ...]) of the gradients of the
    parameters not in ``wrt`` (task-specific ones), from a backward of ``losses.sum()``, as in the
    single-agent paths."""
    wrt = list(wrt)
    layers = linear_layers(module, wrt, members=True)
    if layers is None:
        raise ValueError("member_gradients needs every wrt parameter to be a weight or bias of a member-aware Linear layer")
    leaves = {name: p.detach().requires_grad_(True) for name, p in params.items()}
    result, taps = _tapped_call(loss_fn, leaves, inputs, layers)
    losses, aux = result if has_aux else (result, None)
    if losses.dim() != 2:
        raise ValueError(f"member_gradients needs loss_fn to return the losses [S, K]; got shape {tuple(losses.shape)}")
    S, K = losses.shape
    for name, a, _ in taps:
        if tuple(a.shape[:2]) != (S, K):
            raise ValueError(f"layer {name!r} saw an input of shape {tuple(a.shape)}: its leading dimensions must be [S, K] = [{S}, {K}]")
    columns = set(wrt)
    others = [name for name in params if name not in columns]
    outputs = [z for _, _, z in taps]
    other_leaves = [leaves[n] for n in others]
    if weights is None:
        grads = torch.autograd.grad(losses.sum(), outputs + other_leaves, allow_unused=True)
        output_grads, other_grads = grads[: len(taps)], grads[len(taps) :]
    else:
        if callable(weights):
            weights = weights(losses.detach())
        output_grads = torch.autograd.grad(
            (weights.to(losses) * losses).sum(), outputs, allow_unused=True, retain_graph=bool(others)
        )
        other_grads = torch.autograd.grad(losses.sum(), other_leaves, allow_unused=True) if others else ()
    other = {name: torch.zeros_like(params[name]) if g is None else g for name, g in zip(others, other_grads)}
    first = params[wrt[0]]

    if weights is None:  # G [S, K, P] in rows of stride Q
        sizes = {name: params[name][0].numel() for name in wrt}
        P = sum(sizes.values())
        Q = P if (K * P) % GEMM_ALIGN == 0 else -(-P // GEMM_ALIGN) * GEMM_ALIGN
        storage = torch.empty(S * K, Q, dtype=first.dtype, device=first.device)
        blocks, offset = {}, 0
        for name in wrt:
            blocks[name] = storage[:, offset : offset + sizes[name]]
            offset += sizes[name]
        rows = S * K
    else:  # one gradient per member and parameter
        blocks = {}
        for name in wrt:
            target = None if out is None else out.get(name)
            if target is None:
                target = torch.empty_like(params[name], memory_format=torch.contiguous_format)
            blocks[name] = target.view(S, -1)
        rows = S
    written: set[str] = set()
    with torch.no_grad():
        for pname, is_weight, layer, a, dz, fresh in _layer_terms(taps, output_grads, layers, rows, first.dtype, written):
            _write_rows(blocks[pname], dz, a, layer, is_weight, fresh)
        for name in wrt:  # a layer never called: its gradient is zero
            if name not in written:
                blocks[name].zero_()
    losses = losses.detach()
    aux = None if aux is None else aux.detach()
    if weights is None:
        return JacobianResult(storage.view(S, K, Q)[:, :, :P], losses, aux, other)
    other.update({name: blocks[name].view(params[name].shape) for name in wrt})
    return JacobianResult(None, losses, aux, other)


def per_task_jacobian(
    loss_fn: LossFn,
    params: dict[str, Tensor],
    inputs: tuple[Tensor, ...],
    wrt: Sequence[str] | None = None,
    *,
    method: str = "vmap",
    has_aux: bool = False,
    module: nn.Module | None = None,
) -> JacobianResult:
    """G [K, P] with row k = d loss_fn(params, *[x[k] for x in inputs]) / d params[wrt].

    Args:
        loss_fn: per-task loss; returns a scalar, or ``(scalar, aux)`` when ``has_aux``.
        params: every parameter ``loss_fn`` differentiates (detached leaves are fine).
        inputs: per-task inputs, each with leading dimension K.
        wrt: names of the parameters that form the columns of G (default: all); the gradients of
            the others are summed over tasks and returned in ``other_grads``.
        method: "linear", "vmap", "loop" or "auto" (see the module doc).
        module: the module whose parameters ``params`` are (needed by "linear" and "auto").
    """
    wrt = list(params) if wrt is None else list(wrt)
    method, layers = _engine(method, module, wrt)
    K = inputs[0].shape[0]
    if method == "linear":
        return _linear_engine(loss_fn, params, inputs, wrt, layers, None, has_aux)
    if method == "vmap":
        in_dims = (None,) + (0,) * len(inputs)
        grads, value = vmap(grad_and_value(loss_fn, has_aux=has_aux), in_dims=in_dims)(params, *inputs)
        losses, aux = value if has_aux else (value, None)
        G, other = _split(grads, wrt, K)
        return JacobianResult(G, losses.detach(), aux, other)
    rows, losses, auxes = [], [], []
    leaves = {name: p.detach().requires_grad_(True) for name, p in params.items()}
    for k in range(K):
        out = loss_fn(leaves, *[x[k] for x in inputs])
        loss, aux = out if has_aux else (out, None)
        g = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
        rows.append({name: torch.zeros_like(p) if gk is None else gk for (name, p), gk in zip(leaves.items(), g)})
        losses.append(loss.detach())
        auxes.append(aux)
    grads = {name: torch.stack([r[name] for r in rows]) for name in leaves}
    G, other = _split(grads, wrt, K)
    aux_out = torch.stack([a.detach() for a in auxes]) if has_aux else None
    return JacobianResult(G, torch.stack(losses), aux_out, other)


def group_rows(result: JacobianResult, groups: Sequence[Tensor]) -> JacobianResult:
    """``grouped_jacobian``'s rows and losses from a full per-task result: row j and loss j are the
    means over ``groups[j]`` (the gradient of a group's mean loss is the mean of its rows);
    ``aux`` and ``other_grads`` are the full result's."""
    index = [g.to(result.G.device) for g in groups]
    return JacobianResult(
        torch.stack([result.G[i].mean(0) for i in index]),
        torch.stack([result.losses[i].mean() for i in index]), result.aux, result.other_grads,
    )


def grouped_jacobian(
    loss_fn: LossFn,
    params: dict[str, Tensor],
    inputs: tuple[Tensor, ...],
    groups: Sequence[Tensor],
    wrt: Sequence[str] | None = None,
    *,
    has_aux: bool = False,
    method: str = "vmap",
    module: nn.Module | None = None,
) -> JacobianResult:
    """Rows for ``groups``, a partition of the K tasks; ``losses`` holds each group's mean loss,
    ``other_grads`` the plain sum over all tasks, ``aux`` (when ``has_aux``) the auxiliary output of every one
    of the K tasks.

    With "linear" all rows come from one backward pass. With "vmap"/"loop", singleton groups come
    from one per-task pass over their tasks and every larger group from one gradient of its mean
    loss (the reference code's |S| + 1 backward passes)."""
    wrt = list(params) if wrt is None else list(wrt)
    K = inputs[0].shape[0]
    covered = sorted(k for g in groups for k in g.reshape(-1).tolist())  # host ids: no item() per id
    if covered != list(range(K)):
        raise ValueError(f"groups must partition the tasks 0..{K - 1}; got {[g.tolist() for g in groups]}")
    method, layers = _engine(method, module, wrt)
    if method == "linear":
        return _linear_engine(loss_fn, params, inputs, wrt, layers, groups, has_aux)
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
    aux = None
    if has_aux:  # every task's auxiliary output (the temperature needs all log-probabilities)
        with torch.no_grad():
            aux = vmap(loss_fn, in_dims=in_dims)(params, *inputs)[1]
    return JacobianResult(torch.stack(rows), torch.stack(losses), aux, other)
