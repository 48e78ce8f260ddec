"""Small helpers shared by several test modules."""

from __future__ import annotations

import io

import numpy as np
import torch


def through_torch_save(state: dict) -> dict:
    """``state`` after a ``torch.save`` / ``torch.load(weights_only=True)`` round trip, as a
    checkpoint would hand it back."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def reach_controller(obs: np.ndarray) -> np.ndarray:
    """Move the reach hand (obs[:3]) straight to the goal (obs[36:39]); works row-wise on [K, 39]."""
    move = np.clip(10.0 * (obs[..., 36:39] - obs[..., :3]), -1.0, 1.0)
    return np.concatenate([move, np.zeros_like(move[..., :1])], axis=-1).astype(np.float32)
