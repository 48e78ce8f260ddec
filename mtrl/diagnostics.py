"""Gradient-conflict diagnostics of one aggregated step, from the Gram matrix ``M = G G^T``.

Everything a user needs to see *why* a method behaves as it does is in M and the direction ``d``
the optimizer stepped along (docs/design.md §2: computed next to the aggregator call, logged like any
metric, every ``log_every`` steps):

* ``task_grad_norm`` [K]: ``||g_i|| = sqrt(M_ii)``;
* ``cos`` [K, K]: ``M_ij / (||g_i|| ||g_j||)``, 1 on the diagonal; 0 in every entry of a zero row
  (an exactly zero gradient conflicts with nothing);
* ``conflict``: the fraction of the K (K - 1) / 2 task pairs with negative cosine (0 for K = 1);
* ``served`` [K]: ``cos(d, g_i) = g_i^T d / (||g_i|| ||d||)``; negative means the step increases
  task i's loss to first order; 0 where ``g_i`` or ``d`` is zero;
* ``direction_norm``: ``||d||`` of the direction as stepped (after clipping).

Methods whose aggregation reports its Gram matrix and the coefficients c of its direction
(``d = c @ G``, every G-based method of the registry) give all of it without touching G again:
``G d = M c`` and ``||d||^2 = c^T M c``. Otherwise (the one-backward path of LS and the
loss weightings, CAGrad-Fast's reduced rows) the caller passes the full G and d, and the K x K
matrix, ``G d`` and ``||d||^2`` come to the host in one transfer.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from mtrl.aggregators.solvers import HOST_TRANSFER

__all__ = ["gradient_diagnostics", "gram_diagnostics"]


def gram_diagnostics(M: np.ndarray, Gd: np.ndarray, dd: float) -> dict[str, Any]:
    """The diagnostics of the module docstring from ``M`` [K, K], ``G d`` [K] and ``||d||^2``."""
    M = np.asarray(M, dtype=np.float64)
    K = M.shape[0]
    norms = np.sqrt(np.clip(np.diag(M), 0.0, None))
    present = norms > 0
    scale = np.where(present, 1.0 / np.where(present, norms, 1.0), 0.0)
    cos = np.clip(M * scale[:, None] * scale[None, :], -1.0, 1.0)
    np.fill_diagonal(cos, present.astype(np.float64))
    upper = cos[np.triu_indices(K, k=1)]
    conflict = float(np.mean(upper < 0)) if upper.size else 0.0
    d_norm = float(np.sqrt(max(dd, 0.0)))
    served = np.clip(np.asarray(Gd, dtype=np.float64) * scale / d_norm, -1.0, 1.0) if d_norm > 0 else np.zeros(K)
    return {
        "cos": cos, "task_grad_norm": norms, "conflict": conflict, "served": served, "direction_norm": d_norm,
    }


def gradient_diagnostics(
    G: Tensor | None, direction: Tensor | None, gram: Tensor | None = None, coefficients: Tensor | None = None
) -> dict[str, Any]:
    """Diagnostics of one step: from the aggregator's ``gram`` and ``coefficients`` when both are
    given (no pass over G), else from ``G`` [K, P] and ``direction`` [P] (one transfer)."""
    if gram is not None and coefficients is not None:
        M = gram.numpy() if isinstance(gram, Tensor) else np.asarray(gram)
        c = coefficients.numpy() if isinstance(coefficients, Tensor) else np.asarray(coefficients)
        return gram_diagnostics(M, M @ c, float(c @ M @ c))
    if G is None or direction is None:
        raise ValueError("gradient_diagnostics needs gram and coefficients, or G and direction")
    K = G.shape[0]
    with torch.no_grad():
        d = direction.to(G.dtype)
        packed = torch.cat([(G @ G.T).reshape(-1), G @ d, (d @ d).reshape(1)])
        with torch.profiler.record_function(HOST_TRANSFER):
            packed = packed.to("cpu", torch.float64).numpy()
    return gram_diagnostics(packed[: K * K].reshape(K, K), packed[K * K : K * K + K], float(packed[-1]))
