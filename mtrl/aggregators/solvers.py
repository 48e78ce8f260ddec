"""The K x K solvers shared by the aggregators, all in float64 on the CPU.

Every method that solves a small problem over the Gram matrix ``M = G G^T`` calls into this file;
no solver is copied between methods (DESIGN §3).

The Gram matrix itself is one matmul in G's own dtype on G's device, then cast to float64 and
moved to the CPU (DESIGN §3 supersedes spec §1.5: a float32 Gram is 5-10x faster on a CPU and
changed Nash weights by at most 2e-7 relative on random Jacobians).
"""

from __future__ import annotations

import torch
from torch import Tensor


def gram(G: Tensor) -> Tensor:
    """``M = G G^T`` [K, K]: computed in G's dtype on its device, returned float64 on the CPU."""
    return (G @ G.T).to(device="cpu", dtype=torch.float64)


# =====================================================================================
# Section A: positive fixed-point solvers  M a = c * a^(-q)  (Nash-MTL, AuxiNash, PIVRG,
# FairGrad). Owned by the Nash-family implementation.
# =====================================================================================


# =====================================================================================
# Section B: solvers over the simplex (MGDA min-norm point, CAGrad dual, ...).
# Owned by the CAGrad/MGDA implementation.
# =====================================================================================
