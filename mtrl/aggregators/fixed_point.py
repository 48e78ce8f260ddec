"""Shared machinery of the methods whose weights solve ``M alpha = c * alpha^(-q)``.

Nash-MTL (q = 1, c = 1), FairGrad (q = 1/alpha_fair, c = 1), PIVRG (q = 1/2, c = sqrt(omega)) and
AuxiNash (q = 1, c = p) differ only in (c, q) and their defaults. This base class owns what they
share: the warm start indexed by global task id, the fallbacks (docs/aggregators.md, "Solvers"), the reuse of the
last weights for T - 1 steps (Nash-MTL-T), and the post-processing (optional x K, max-norm clip).
"""

from __future__ import annotations

from typing import ClassVar, NamedTuple, Sequence

import numpy as np
import torch
from torch import Tensor

from mtrl.aggregators.base import AggContext, Aggregator, GramAggregation, check_bool, check_int, check_positive_or_none, clip_coefficients
from mtrl.aggregators.batched import positive_fixed_point_batch
from mtrl.aggregators.from_gram import GramAggregator, isolate_failures
from mtrl.aggregators.solvers import STATIONARY_TOL, FixedPointResult, gram_tolerance, positive_fixed_point


class FixedPointWeighting(GramAggregator):
    """Base class: subclasses implement ``coefficients(ctx, task_ids) -> (c [K], q)``."""

    state_attributes = ("alpha", "step")
    #: a population's members solve in one ``positive_fixed_point_batch`` (False: one after another)
    batched_solver: ClassVar[bool] = True

    def __init__(
        self,
        num_tasks: int,
        update_every: int = 1,
        max_norm: float | None = 1.0,
        scale_by_K: bool = False,
        warm_start: bool = True,
    ) -> None:
        super().__init__(num_tasks)
        check_int("update_every", update_every, 1)
        check_positive_or_none("max_norm", max_norm)
        check_bool("scale_by_K", scale_by_K)
        check_bool("warm_start", warm_start)
        self.update_every, self.max_norm, self.scale_by_K, self.warm_start = update_every, max_norm, scale_by_K, warm_start
        self.alpha = torch.zeros(num_tasks, dtype=torch.float64)  # last weights by global id (0 = none yet)
        self.step = 0

    def coefficients(self, ctx: AggContext, task_ids: Tensor) -> tuple[np.ndarray, float]:  # pragma: no cover
        raise NotImplementedError

    # ---- Nash-MTL-T: reuse the stored weights between updates ------------------------------
    def needs_jacobian(self, step: int) -> bool:
        return self.update_every == 1 or self.step % self.update_every == 0 or not np.any(self.alpha.numpy() > 0)

    def weights_without_jacobian(self, ctx: AggContext) -> Tensor:
        self.step += 1
        weights = self.alpha[torch.as_tensor(ctx.task_ids).long().cpu()].clone()
        return weights * len(weights) if self.scale_by_K else weights

    # ---- one aggregation -----------------------------------------------------------------------
    def solve(
        self, M: np.ndarray, ctx: AggContext, task_ids: Tensor, stationary_tol: float = STATIONARY_TOL
    ) -> tuple[np.ndarray, dict[str, float]]:
        """Weights for the rows of M, with fallbacks; does not touch the state. ``stationary_tol``:
        the rounding level of M (``gram_tolerance`` of G's dtype), below which 0 counts as in the
        convex hull of the rows and the solver stops early (``info["stationary"] = 1``)."""
        c, q, previous, warm = self.solver_inputs(ctx, task_ids)
        result = positive_fixed_point(M, c, q, alpha0=warm, stationary_tol=stationary_tol)
        return self.accept(result, previous, M)

    def solver_inputs(self, ctx: AggContext, task_ids: Tensor) -> tuple[np.ndarray, float, np.ndarray, np.ndarray | None]:
        """``(c, q, previous weights, warm start or None)`` of one solve."""
        c, q = self.coefficients(ctx, task_ids)
        previous = self.alpha.numpy()[task_ids.numpy()]  # a copy (numpy indexing: a third of torch's cost)
        warm = previous if self.warm_start and np.all(previous > 0) else None
        return c, q, previous, warm

    def accept(self, result: FixedPointResult, previous: np.ndarray, M: np.ndarray) -> tuple[np.ndarray, dict[str, float]]:
        """The weights of a solve, or its fallback when it found none (docs/aggregators.md, "Solvers"), and its info."""
        info = {"iterations": float(result.iterations), "residual": result.residual, "fallback_used": 0.0,
                "stationary": float(result.stationary)}
        alpha = result.alpha
        if not result.ok:
            info["fallback_used"] = 1.0
            if np.all(np.isfinite(previous)) and np.all(previous > 0):
                alpha = previous.copy()  # (i) the previous weights, as the reference code does
            else:  # (ii) equal weights on normalised gradients: d = (1/K) sum g_i / ||g_i||
                norms = np.sqrt(np.clip(np.diag(M), 0.0, None))
                alpha = np.where(norms > 0, 1.0 / (len(norms) * np.maximum(norms, 1e-300)), 0.0)
        return alpha, info

    def aggregate_gram(self, M: np.ndarray, ctx: AggContext, dtype: torch.dtype) -> GramAggregation:
        task_ids = torch.as_tensor(ctx.task_ids).long().cpu()
        if not self.needs_jacobian(ctx.step):  # called on a reuse step: the stored weights (M gives the norm)
            self.step += 1
            return self.finish_gram(M, self.alpha[task_ids].numpy(), {"reused": 1.0}, ctx, task_ids)
        alpha, info = self.solve_and_store(M, ctx, task_ids, gram_tolerance(dtype))
        return self.finish_gram(M, alpha, info, ctx, task_ids)

    def solve_and_store(
        self, M: np.ndarray, ctx: AggContext, task_ids: Tensor, stationary_tol: float = STATIONARY_TOL
    ) -> tuple[np.ndarray, dict[str, float]]:
        """One weight update: solve, keep the weights unless they came from a fallback, count the call."""
        alpha, info = self.solve(M, ctx, task_ids, stationary_tol)
        self.store(alpha, info, task_ids)
        return alpha, info

    def store(self, alpha: np.ndarray, info: dict[str, float], task_ids: Tensor) -> None:
        if info["fallback_used"] == 0.0:
            self.alpha.numpy()[task_ids.numpy()] = alpha  # written into the state tensor's memory
        self.step += 1

    def finish_gram(self, M: np.ndarray, alpha: np.ndarray, info: dict[str, float], ctx: AggContext, task_ids: Tensor) -> GramAggregation:
        """Coefficients ``alpha`` (x K if ``scale_by_K``) clipped to ``max_norm`` by the norm from M."""
        scaled = alpha * len(alpha) if self.scale_by_K else alpha
        coefficients, info["norm"] = clip_coefficients(scaled, self.max_norm, M)
        info.update(self.extra_info(ctx, task_ids))
        return GramAggregation(coefficients, alpha, info)

    def extra_info(self, ctx: AggContext, task_ids: Tensor) -> dict[str, float]:
        """Method-specific floats to log after a call (none here)."""
        return {}

    # ---- a population ----------------------------------------------------------------------------
    def uses_batched_solver(self) -> bool:
        return self.batched_solver

    @classmethod
    def aggregate_population(
        cls, members: Sequence[Aggregator], M: np.ndarray, contexts: Sequence[AggContext], dtype: torch.dtype
    ) -> list[GramAggregation | Exception]:
        """The members that solve at this step (``needs_jacobian``) and whose rows are all non-zero
        solve in one ``positive_fixed_point_batch`` per exponent q; the others (reuse steps of
        Nash-MTL-T, zero rows, the CCP solver, AuxiNash) take the single-member path."""
        out: list[GramAggregation | Exception | None] = [None] * len(members)
        norms = np.sqrt(np.clip(M.diagonal(axis1=1, axis2=2), 0.0, None))  # solvers.zero_rows, all members
        has_zero_row = (norms <= 1e-12 * np.maximum(norms.max(1, initial=0.0), 1e-300)[:, None]).any(1)
        pending: list[_Solve] = []
        for s, (agg, ctx) in enumerate(zip(members, contexts)):
            try:
                if not agg.uses_batched_solver() or has_zero_row[s] or not agg.needs_jacobian(ctx.step):
                    out[s] = agg.aggregate_gram(M[s], ctx, dtype)
                    continue
                task_ids = torch.as_tensor(ctx.task_ids).long().cpu()
                pending.append(_Solve(s, task_ids, *agg.solver_inputs(ctx, task_ids)))
            except Exception as error:  # noqa: BLE001 - reported for this member only
                out[s] = error
        tolerance = gram_tolerance(dtype)
        for q in sorted({entry.q for entry in pending}):
            group = [entry for entry in pending if entry.q == q]
            index = np.array([entry.member for entry in group])
            c = np.stack([entry.c for entry in group])
            warm = np.stack([np.full(M.shape[1], np.nan) if entry.warm is None else entry.warm for entry in group])
            solved = isolate_failures(
                lambda rows: positive_fixed_point_batch(M[index[rows]], c[rows], q, warm[rows], stationary_tol=tolerance), len(group)
            )
            for entry, result in zip(group, solved):
                s, agg = entry.member, members[entry.member]
                if isinstance(result, Exception):
                    out[s] = result
                    continue
                try:
                    alpha, info = agg.accept(result, entry.previous, M[s])
                    agg.store(alpha, info, entry.task_ids)
                    out[s] = agg.finish_gram(M[s], alpha, info, contexts[s], entry.task_ids)
                except Exception as error:  # noqa: BLE001 - reported for this member only
                    out[s] = error
        return out  # type: ignore[return-value]


class _Solve(NamedTuple):
    """One member's inputs to the batched solve (``FixedPointWeighting.solver_inputs``)."""

    member: int
    task_ids: Tensor
    c: np.ndarray
    q: float
    previous: np.ndarray
    warm: np.ndarray | None
