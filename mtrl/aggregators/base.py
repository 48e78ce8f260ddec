"""The aggregator contract (docs/design.md §3; the trainer, benchmarks and tests rely on it).

An aggregator turns the per-task gradient matrix ``G [K, P]`` (rows are task gradients of the
shared parameters) into one update direction ``d [P]``. The optimizer steps along ``-d``.

Two optional protocols let the trainer skip work:

* ``needs_jacobian(step)``: when False (Nash-MTL-T between weight updates, pure loss-weighting
  methods), the trainer calls ``weights_without_jacobian(ctx)`` and backpropagates
  ``sum_i w_i * loss_i`` once, then clips with ``max_norm``. No ``G`` is built.
* ``rows_needed(step, generator)``: CAGrad-Fast asks for a subset of rows. The trainer then builds
  one row per sampled task plus one row for the mean loss of the remaining tasks, and passes
  ``ctx.row_groups`` so the aggregator knows which row is which.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple, Sequence

import numpy as np
import torch
from torch import Tensor

from mtrl.aggregators.performance import pi_omega

__all__ = [
    "AggContext", "Aggregation", "Aggregator", "GramAggregation", "check_gradient_matrix", "check_gram", "clip_coefficients",
    "combine", "raise_if_non_finite",
]


@dataclass(frozen=True)
class AggContext:
    """What an aggregator may read besides ``G``.

    Attributes:
        step: global update step (0-based), the same counter across critic and actor.
        task_ids: global task ids of the rows of ``G`` (LongTensor [K]).
        losses: per-task losses [K] (FAMO, DWA, SI, UW, loss-weighting methods).
        perf: latest per-task success rates [num_tasks] in [0, 1] (PIVRG; NaN = not evaluated).
        main_task: global id of the main task (AuxiNash / AuxiLearn).
        generator: randomness for PCGrad, CAGrad-Fast, RLW (never the global RNG).
        row_groups: when the trainer built a reduced G after ``rows_needed``: for each row of ``G``
            the LongTensor of global task ids whose mean-loss gradient that row is.
        hyper: closures the bilevel methods need for their outer step (AuxiNash, AuxiLearn).
    """

    step: int
    task_ids: Tensor
    losses: Tensor | None = None
    perf: Tensor | None = None
    main_task: int | None = None
    generator: torch.Generator | None = None
    row_groups: tuple[Tensor, ...] | None = None
    hyper: Any = None


@dataclass
class Aggregation:
    """Result of one aggregation.

    Attributes:
        direction: [P], same dtype and device as ``G``; the optimizer steps along ``-direction``.
        weights: [K] float64 on the CPU when the method is a weighting of the rows of ``G``
            (``direction == weights @ G`` before clipping), else None.
        info: floats for logging: solver iterations, residual, ``fallback_used``, ...
        coefficients: [rows] float64 on the CPU with ``direction == coefficients @ G`` exactly as
            returned (clipping and any x K included), for every method whose direction is a
            combination of the rows of G (all of the registry); None otherwise. The trainer's
            gradient diagnostics read it: with ``gram`` they need no pass over G.
        gram: ``M = G G^T`` [rows, rows] float64 on the CPU when the method computed it, else None.
    """

    direction: Tensor
    weights: Tensor | None = None
    info: dict[str, float] = field(default_factory=dict)
    coefficients: Tensor | None = None
    gram: Tensor | None = None


def check_gradient_matrix(G: Tensor, values: bool = True) -> None:
    """Raise ``ValueError`` unless ``G`` is a finite floating-point matrix [K, P] with K >= 1.

    ``values=False`` checks only type and shape: methods whose first step is the Gram matrix
    (``checks_values_in_gram``) find non-finite entries on its diagonal instead (``solvers.gram``),
    which saves a pass over G."""
    if not isinstance(G, Tensor):
        raise ValueError(f"G must be a torch.Tensor, got {type(G).__name__}")
    if G.ndim != 2 or G.shape[0] < 1:
        raise ValueError(f"G must have shape [K, P] with K >= 1, got {tuple(G.shape)}")
    if not G.is_floating_point():
        raise ValueError(f"G must be floating point, got dtype {G.dtype}")
    # A row norm is NaN or Inf iff the row holds a NaN or Inf (or overflows): one cheap pass over G
    # (0.25 ms at K = 10, P = 343K on a 2-core CPU, against 5.8 ms for isfinite(G).all()).
    if values and not bool(torch.isfinite(torch.linalg.vector_norm(G, dim=1)).all()):
        raise_if_non_finite(G)


def raise_if_non_finite(G: Tensor) -> None:
    """The slow exact check, run once a cheap one (a row norm, the Gram diagonal) was not finite:
    a finite G whose squares overflow passes."""
    bad = (~torch.isfinite(G)).any(dim=1).nonzero().flatten().tolist()
    if bad:
        raise ValueError(f"G has non-finite entries (NaN or Inf) in rows {bad}")


class GramAggregation(NamedTuple):
    """Result of one aggregation computed from the Gram matrix alone (``coefficients_from_gram``).

    Attributes:
        coefficients: [rows] float64 with ``direction = coefficients @ G`` (clipping with
            ``max_norm`` and any x K included): what ``Aggregation.coefficients`` holds.
        weights: [rows] float64 as ``Aggregation.weights`` (None where that is None).
        info: floats for logging, as ``Aggregation.info``.
    """

    coefficients: np.ndarray
    weights: np.ndarray | None
    info: dict[str, float]


def check_gram(M: Any, rows: int | None = None) -> np.ndarray:
    """``M`` as a float64 numpy matrix [K, K] (a CPU tensor or array); ``ValueError`` unless it is
    square, K >= 1 (and K == ``rows`` when given) and every entry is finite."""
    M = np.asarray(M.detach().cpu().numpy() if isinstance(M, Tensor) else M, dtype=np.float64)
    if M.ndim != 2 or M.shape[0] != M.shape[1] or M.shape[0] < 1:
        raise ValueError(f"the Gram matrix must have shape [K, K] with K >= 1, got {tuple(M.shape)}")
    if rows is not None and M.shape[0] != rows:
        raise ValueError(f"the Gram matrix has {M.shape[0]} rows but the context describes {rows}")
    if not np.isfinite(M).all():
        bad = np.flatnonzero(~np.isfinite(M).all(1)).tolist()
        raise ValueError(f"the Gram matrix has non-finite entries (NaN or Inf) in rows {bad}")
    return M


def clip_coefficients(coefficients: np.ndarray, max_norm: float | None, M: np.ndarray) -> tuple[np.ndarray, float]:
    """``(c', norm)``: ``norm = sqrt(c^T M c)`` is the norm of ``c @ G``, and ``c'`` is ``c`` scaled
    down so that ``c' @ G`` has norm ``max_norm`` (``clip_grad_norm_``'s rule), else ``c``."""
    c = np.asarray(coefficients, dtype=np.float64)
    norm = float(np.sqrt(max(float(c @ M @ c), 0.0)))
    if max_norm is not None and norm > max_norm:
        c = c * (max_norm / (norm + 1e-12))
    return c, norm


def combine(
    G: Tensor, coefficients: Tensor | np.ndarray, max_norm: float | None, M: np.ndarray | None = None
) -> tuple[Tensor, float, Tensor]:
    """``d = c @ G`` scaled down to norm ``max_norm`` (like ``clip_grad_norm_``).

    Returns ``(direction, norm before clipping, c after clipping)``. With ``M`` (the Gram matrix of
    G's rows, float64 on the CPU) the norm is ``sqrt(c^T M c)`` and the clip scale is folded into
    the coefficients, so nothing is read back from G's device (docs/design.md §8: the only host transfer of
    a G-based step is the K x K Gram matrix). Without ``M`` the norm of ``c @ G`` is read from the
    device (one sync; only the loss-weighting methods, which the trainer never sends down the G
    path, take it)."""
    c = np.asarray(coefficients.numpy() if isinstance(coefficients, Tensor) else coefficients, dtype=np.float64)
    if M is not None:
        c, norm = clip_coefficients(c, max_norm, M)
        return torch.from_numpy(c).to(G) @ G, norm, torch.from_numpy(c)
    direction = torch.from_numpy(c).to(G) @ G
    norm = float(torch.linalg.vector_norm(direction))
    if max_norm is not None and norm > max_norm:
        scale = max_norm / (norm + 1e-12)
        direction, c = direction * scale, c * scale
    return direction, norm, torch.from_numpy(c)


class Aggregator:
    """Base class: option checking, default protocols and a ``state_dict`` of tensors.

    Subclasses declare every option as a keyword argument of ``__init__`` with a default, set
    ``name``, and implement ``aggregate(G, ctx)``. Stateful subclasses keep their state in tensors
    indexed by global task id and list attribute names in ``state_attributes``.
    """

    name: ClassVar[str] = ""
    #: attribute names saved by ``state_dict`` (tensors, ints, floats, bools or None)
    state_attributes: ClassVar[tuple[str, ...]] = ()
    #: True when ``direction`` is always a weighting of the rows of G
    is_weighting: ClassVar[bool] = True

    def __init__(self, num_tasks: int) -> None:
        if not isinstance(num_tasks, int) or isinstance(num_tasks, bool) or num_tasks < 1:
            raise ValueError(f"num_tasks must be a positive int, got {num_tasks!r}")
        self.num_tasks = num_tasks

    # ---- options -------------------------------------------------------------------------
    @classmethod
    def option_names(cls) -> list[str]:
        params = inspect.signature(cls.__init__).parameters
        return [p for p in params if p not in ("self", "num_tasks")]

    @classmethod
    def option_defaults(cls) -> dict[str, Any]:
        params = inspect.signature(cls.__init__).parameters
        return {n: p.default for n, p in params.items() if n not in ("self", "num_tasks")}

    # ---- protocols -----------------------------------------------------------------------
    #: True when ``aggregate`` always starts with ``solvers.gram(G)``, which checks the values
    checks_values_in_gram: ClassVar[bool] = False

    def __call__(self, G: Tensor, ctx: AggContext) -> Aggregation:
        check_gradient_matrix(G, values=not self.checks_values_in_gram)
        self.check_context(ctx, G.shape[0], "G")
        return self.aggregate(G, ctx)

    def check_context(self, ctx: AggContext, rows: int, what: str) -> None:
        """``ValueError`` unless ``ctx.task_ids`` fits ``rows`` rows of ``what`` and this method's tasks."""
        task_ids = torch.as_tensor(ctx.task_ids).long().cpu().numpy()  # host values: no device read
        if ctx.row_groups is None and task_ids.size != rows:
            raise ValueError(f"ctx.task_ids has {task_ids.size} entries but {what} has {rows} rows")
        if task_ids.size and (task_ids.min() < 0 or task_ids.max() >= self.num_tasks):
            raise ValueError(f"task ids must lie in [0, {self.num_tasks}), got {task_ids.tolist()}")

    def aggregate(self, G: Tensor, ctx: AggContext) -> Aggregation:  # pragma: no cover - abstract
        raise NotImplementedError

    # ---- the Gram-level entry points (a population's host work) ------------------------------
    def coefficients_from_gram(self, M: np.ndarray, ctx: AggContext, dtype: torch.dtype = torch.float32) -> GramAggregation:
        """One aggregation from ``M = G G^T`` [K, K] alone: ``(coefficients [K], weights [K] | None,
        info)`` with ``aggregate(G, ctx).direction == coefficients @ G``, and the same state change
        as ``aggregate``. ``dtype``: the dtype G and M were computed in (it sets the rounding level
        below which the solvers treat a quadratic form as 0, ``solvers.gram_tolerance``).

        Raises ``ValueError`` for a non-finite or ill-shaped M or a context that does not fit it."""
        M = check_gram(M)
        self.check_context(ctx, M.shape[0], "the Gram matrix")
        return self.aggregate_gram(M, ctx, dtype)

    def aggregate_gram(self, M: np.ndarray, ctx: AggContext, dtype: torch.dtype) -> GramAggregation:  # pragma: no cover
        """``coefficients_from_gram`` without the checks; every registered method implements it."""
        raise NotImplementedError(f"{self.name} has no Gram-level path")

    @classmethod
    def aggregate_population(
        cls, members: Sequence[Aggregator], M: np.ndarray, contexts: Sequence[AggContext], dtype: torch.dtype
    ) -> list[GramAggregation | Exception]:
        """``aggregate_gram`` of each member (instances of ``cls``) on its own ``M[s]`` [S, K, K]
        (already checked), one result or the exception it raised per member. This default loops;
        methods whose solver runs on all members at once override it, keeping member ``s``'s result
        and state independent of the other members."""
        out: list[GramAggregation | Exception] = []
        for member, M_s, ctx in zip(members, M, contexts):
            try:
                out.append(member.aggregate_gram(M_s, ctx, dtype))
            except Exception as error:  # noqa: BLE001 - reported for this member only
                out.append(error)
        return out

    def needs_jacobian(self, step: int) -> bool:
        """Whether the update at ``step`` needs the per-task gradient matrix G."""
        return True

    def weights_without_jacobian(self, ctx: AggContext) -> Tensor:
        """Weights [K] (by ``ctx.task_ids``) for a step where ``needs_jacobian`` is False."""
        raise NotImplementedError(f"{self.name} always needs the Jacobian")

    def rows_needed(self, step: int, generator: torch.Generator | None) -> Tensor | None:
        """Global task ids whose individual rows the method needs, or None for all rows."""
        return None

    #: post-aggregation clipping applied by the trainer on the no-Jacobian path
    max_norm: float | None = None

    # ---- state -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key in self.state_attributes:
            value = getattr(self, key)
            out[key] = value.clone() if isinstance(value, Tensor) else value
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        missing = [k for k in self.state_attributes if k not in state]
        unknown = [k for k in state if k not in self.state_attributes]
        if missing or unknown:
            raise ValueError(
                f"{self.name}: state_dict mismatch; missing {missing}, unexpected {unknown}; "
                f"expected keys {list(self.state_attributes)}"
            )
        for key in self.state_attributes:
            value = state[key]
            setattr(self, key, value.clone() if isinstance(value, Tensor) else value)

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={getattr(self, k, '?')!r}" for k in self.option_names())
        return f"{type(self).__name__}(num_tasks={self.num_tasks}{', ' if opts else ''}{opts})"


def check_option(name: str, value: Any, ok: bool, allowed: str) -> None:
    """Raise a ValueError naming an option, its bad value and what is allowed."""
    if not ok:
        raise ValueError(f"invalid value {value!r} for option '{name}'; allowed: {allowed}")


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_int(name: str, value: Any, minimum: int) -> None:
    """An int option (bools refused) of at least ``minimum``."""
    check_option(name, value, is_int(value) and value >= minimum, f"an int >= {minimum}")


def check_bool(name: str, value: Any) -> None:
    check_option(name, value, isinstance(value, bool), "True or False")


def check_positive_or_none(name: str, value: Any) -> None:
    """``max_norm``-like options: None (off) or a finite positive number."""
    check_option(name, value, value is None or (is_number(value) and value > 0), "None or a positive number")


def adam_update(param, grad, m, v, t: int, lr: float, weight_decay: float = 0.0,
                betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> int:
    """One Adam step on a small state array, in place (torch.optim.Adam's rule with L2 weight
    decay); returns the new step count. Used by methods whose learned weights live in state.
    Works on torch tensors and on numpy arrays alike (in-place operators only): a method whose
    state is a few numbers does its host arithmetic in numpy, about 1 us an operation against
    torch's 5 to 10 us."""
    t += 1
    grad = grad + weight_decay * param
    m *= betas[0]
    m += (1 - betas[0]) * grad
    v *= betas[1]
    v += (1 - betas[1]) * (grad * grad)
    m_hat = m / (1 - betas[0] ** t)
    v_hat = v / (1 - betas[1] ** t)
    param -= lr * m_hat / (v_hat ** 0.5 + eps)
    return t


def pi_scaled(weights: Tensor, ctx: AggContext) -> Tensor:
    """``weights * omega``: the PI-integration of a loss weighting [PV §4.4] (``performance.py``)."""
    omega, _ = pi_omega(ctx.perf, torch.as_tensor(ctx.task_ids).long().cpu())
    return weights * omega


class LossWeighting(Aggregator):
    """Base of methods that weight the per-task losses (no G needed): ``loss_weights(ctx)`` gives
    the weights [K] for one step; ``aggregate`` returns ``weights @ G`` for the same state, so
    the Jacobian path and the one-backward path give the same direction."""

    def __init__(self, num_tasks: int, max_norm: float | None = None, pi: bool = False) -> None:
        super().__init__(num_tasks)
        check_positive_or_none("max_norm", max_norm)
        check_bool("pi", pi)
        self.max_norm, self.pi = max_norm, pi

    def loss_weights(self, ctx: AggContext) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def needs_jacobian(self, step: int) -> bool:
        return False

    def _weights(self, ctx: AggContext) -> Tensor:
        weights = self.loss_weights(ctx).double()
        return pi_scaled(weights, ctx) if self.pi else weights

    def weights_without_jacobian(self, ctx: AggContext) -> Tensor:
        return self._weights(ctx)

    def aggregate(self, G: Tensor, ctx: AggContext) -> Aggregation:
        weights = self._weights(ctx)
        direction, norm, coefficients = combine(G, weights, self.max_norm)
        return Aggregation(direction, weights, {"norm": norm}, coefficients)

    def aggregate_gram(self, M: np.ndarray, ctx: AggContext, dtype: torch.dtype) -> GramAggregation:
        weights = self._weights(ctx).numpy()
        coefficients, norm = clip_coefficients(weights, self.max_norm, M)
        return GramAggregation(coefficients, weights, {"norm": norm})

    @staticmethod
    def require_losses(ctx: AggContext, name: str) -> Tensor:
        if ctx.losses is None:
            raise ValueError(f"aggregator {name!r} needs the per-task losses in ctx.losses")
        losses = torch.as_tensor(ctx.losses).detach().double().cpu()
        if not bool(torch.isfinite(losses).all()):
            raise ValueError(f"ctx.losses has non-finite entries: {losses.tolist()}")
        return losses
