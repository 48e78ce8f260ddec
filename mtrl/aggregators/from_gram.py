"""Aggregation from the Gram matrix alone.

Every registered method's direction is a combination of the rows of G, ``d = c @ G``. The host
part of an update, from ``M = G G^T`` to the coefficients c, is ``Aggregator.coefficients_from_gram``
(the hook subclasses implement is ``aggregate_gram``). ``GramAggregator.aggregate(G, ctx)`` is that
path plus the two device operations around it, ``M = gram(G)`` and ``c @ G``, so a method has one
code path whether it is called on G or on M.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mtrl.aggregators.base import AggContext, Aggregation, Aggregator
from mtrl.aggregators.solvers import gram

__all__ = ["GramAggregator"]


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
