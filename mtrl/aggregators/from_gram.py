"""Aggregation from the Gram matrix alone: the single-member path and the population entry point.

Every registered method's direction is a combination of the rows of G, ``d = c @ G``. The host
part of an update, from ``M = G G^T`` to the coefficients c, is ``Aggregator.coefficients_from_gram``
(the hook subclasses implement is ``aggregate_gram``). ``GramAggregator.aggregate(G, ctx)`` is that
path plus the two device operations around it, ``M = gram(G)`` and ``c @ G``, so a method has one
code path whether it is called on G or on M.

A population of S members (S seeds of one config) hands the host all members' Gram matrices in
one array ``M [S, K, K]``; ``population_coefficients`` returns all coefficients ``[S, K]`` in one
array. Each member is its own aggregator object with its own state; the methods whose solver
batches (``aggregate_population``) solve all members at once.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence, TypeVar

import numpy as np
import torch
from torch import Tensor

from mtrl.aggregators.base import AggContext, Aggregation, Aggregator, GramAggregation, check_gram
from mtrl.aggregators.solvers import gram

__all__ = ["GramAggregator", "PopulationAggregation", "finish_members", "isolate_failures", "population_coefficients"]

R = TypeVar("R")


class GramAggregator(Aggregator):
    """Base of the methods computed from M alone: ``aggregate(G, ctx)`` is ``M = gram(G)``, then
    ``aggregate_gram(M, ctx, G.dtype)``, then ``d = c @ G``. So ``aggregate(G, ctx).direction`` is
    ``coefficients_from_gram(gram(G), ctx, G.dtype).coefficients @ G`` bit for bit, with the same
    state change."""

    checks_values_in_gram = True  # aggregate() starts with solvers.gram(G)

    def aggregate(self, G: Tensor, ctx: AggContext) -> Aggregation:
        M = gram(G)
        out = self.aggregate_gram(M, ctx, G.dtype)
        coefficients = torch.from_numpy(out.coefficients)
        weights = None if out.weights is None else torch.from_numpy(out.weights)
        return Aggregation(coefficients.to(G) @ G, weights, out.info, coefficients, torch.from_numpy(M))


def isolate_failures(kernel: Callable[[np.ndarray], list[R]], count: int) -> list[R | Exception]:
    """``kernel(rows)`` solves the members ``rows`` (an index array) in one batch and returns their
    results in order. Called on all ``count`` members at once; if that raises, each member is
    solved alone by the same kernel and gets its own result or exception, so one member's failure
    does not fail the others (batched kernels are pure: a retry changes no state)."""
    try:
        return list(kernel(np.arange(count)))
    except Exception:  # noqa: BLE001 - attributed member by member below
        out: list[R | Exception] = []
        for r in range(count):
            try:
                out.append(kernel(np.array([r]))[0])
            except Exception as error:  # noqa: BLE001 - reported for this member only
                out.append(error)
        return out


def finish_members(
    members: Sequence[Any], contexts: Sequence[AggContext], M: np.ndarray, dtype: torch.dtype,
    solved: dict[int, Any], finish: Callable[[Any, np.ndarray, Any], GramAggregation],
) -> list[GramAggregation | Exception]:
    """Each member's result of an ``aggregate_population``: ``finish(agg, M[s], solved[s])`` for the
    members a batched kernel solved (``solved``, by member position; an exception stays that
    member's), the single-member ``aggregate_gram`` for the others; an exception is reported in the
    member's own slot."""
    out: list[GramAggregation | Exception] = []
    for s, (agg, ctx) in enumerate(zip(members, contexts)):
        try:
            if s not in solved:
                out.append(agg.aggregate_gram(M[s], ctx, dtype))
            else:
                out.append(solved[s] if isinstance(solved[s], Exception) else finish(agg, M[s], solved[s]))
        except Exception as error:  # noqa: BLE001 - reported for this member only
            out.append(error)
    return out


class PopulationAggregation(NamedTuple):
    """Result of ``population_coefficients`` for S members.

    Attributes:
        coefficients: [S, K] float64; row s gives member s's direction ``coefficients[s] @ G[s]``.
            The row of a failed member is NaN (a trainer that forgot to check ``errors`` gets a
            non-finite direction for that member, not a silent zero step).
        results: per member its ``GramAggregation`` (weights, info), None where it failed.
        errors: per member None, or the exception its aggregation raised (a non-finite M, a
            context that does not fit, a failure inside its method). The trainer skips that
            member's step and marks it failed; the other members are unaffected.
    """

    coefficients: np.ndarray
    results: list[GramAggregation | None]
    errors: list[Exception | None]

    @property
    def failed(self) -> np.ndarray:
        """[S] bool: the members whose aggregation raised."""
        return np.array([error is not None for error in self.errors], dtype=bool)


def population_coefficients(
    aggregators: Sequence[Aggregator],
    M: np.ndarray | Tensor,
    contexts: Sequence[AggContext],
    dtype: torch.dtype = torch.float32,
) -> PopulationAggregation:
    """The coefficients of all S members of a population from their Gram matrices ``M [S, K, K]``.

    Member s is ``aggregators[s]`` (its own object and state) with context ``contexts[s]``;
    ``dtype`` is the dtype the Gram matrices were computed in. Each member gets exactly what
    ``coefficients_from_gram(M[s], contexts[s], dtype)`` would give it and the same state change,
    up to the rounding of a batched solver (see ``docs/aggregators.md``: bit-identical for the
    methods that loop, within 1e-12 relative for the batched solvers). A member's result and state
    do not depend on which other members are passed with it, bit for bit.

    Members are grouped by class; a class's ``aggregate_population`` serves its group (batched
    where the method allows, else one member after another). A member whose M is not finite, whose
    context does not fit, or whose method raises gets its exception in ``errors`` and a NaN row; the
    others go on. Raises ``ValueError`` only for a call that is malformed as a whole (M not
    [S, K, K], sequences of other lengths, one aggregator object passed twice).
    """
    M = np.asarray(M.detach().cpu().numpy() if isinstance(M, Tensor) else M, dtype=np.float64)
    S = len(aggregators)
    if M.ndim != 3 or M.shape[1] != M.shape[2] or M.shape[0] != S or len(contexts) != S:
        raise ValueError(
            f"population_coefficients needs M [S, K, K] for S = {S} aggregators and {len(contexts)} contexts, "
            f"got M of shape {tuple(M.shape)}"
        )
    if len({id(agg) for agg in aggregators}) != S:
        raise ValueError("population_coefficients: each member needs its own aggregator object (one was passed twice)")
    K = M.shape[1]
    coefficients = np.full((S, K), np.nan)
    results: list[GramAggregation | None] = [None] * S
    errors: list[Exception | None] = [None] * S
    groups: dict[type, list[int]] = {}
    finite = np.isfinite(M).all(axis=(1, 2))
    for s, (agg, ctx) in enumerate(zip(aggregators, contexts)):
        try:
            if not finite[s]:
                check_gram(M[s])  # raises, naming the rows
            agg.check_context(ctx, K, "the Gram matrix")
        except ValueError as error:
            errors[s] = error
            continue
        groups.setdefault(type(agg), []).append(s)
    for cls, members in groups.items():
        outs = cls.aggregate_population([aggregators[s] for s in members], M[members], [contexts[s] for s in members], dtype)
        for s, out in zip(members, outs):
            if isinstance(out, Exception):
                errors[s] = out
            else:
                results[s] = out
                coefficients[s] = out.coefficients
    return PopulationAggregation(coefficients, results, errors)
