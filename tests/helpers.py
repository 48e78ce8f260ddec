"""Small helpers shared by several test modules."""

from __future__ import annotations

import io

import torch


def through_torch_save(state: dict) -> dict:
    """``state`` after a ``torch.save`` / ``torch.load(weights_only=True)`` round trip, as a
    checkpoint would hand it back."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)
