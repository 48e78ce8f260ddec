"""Small helpers shared by several test modules."""

from __future__ import annotations

import builtins
import errno
import io
import os
from pathlib import Path

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


_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def read_only_file_system(monkeypatch, root) -> None:
    """Make the file system under ``root`` read-only for the rest of the test (or of a
    ``monkeypatch.context()``), as a disk remounted read-only after an error is: opening a file
    there to write, and creating, renaming, removing or truncating anything there, raise
    ``OSError(EROFS)``; reading works, and creating what exists is still ``FileExistsError``, as
    on Linux. Emulated because CI runs as root, whom directory permissions do not stop."""
    root = Path(root).resolve()

    def inside(path) -> bool:
        return not isinstance(path, int) and Path(os.fspath(path)).resolve().is_relative_to(root)

    def refuse(path):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(path))

    real_open, real_os_open = builtins.open, os.open

    def open_(file, mode="r", *args, **kwargs):
        if inside(file) and any(c in mode for c in "wax+"):
            refuse(file)
        return real_open(file, mode, *args, **kwargs)

    def os_open(path, flags, *args, **kwargs):
        if flags & _WRITE_FLAGS and inside(path):
            refuse(path)
        return real_os_open(path, flags, *args, **kwargs)

    def guard(name: str, paths: int):
        real = getattr(os, name)

        def guarded(*args, **kwargs):
            hit = [p for p in args[:paths] if inside(p)]
            if hit and not (name == "mkdir" and os.path.lexists(hit[0])):
                refuse(hit[0])
            return real(*args, **kwargs)

        monkeypatch.setattr(os, name, guarded)

    monkeypatch.setattr(builtins, "open", open_)
    monkeypatch.setattr(io, "open", open_)  # pathlib's write_text and open
    monkeypatch.setattr(os, "open", os_open)
    for name, paths in (("replace", 2), ("rename", 2), ("remove", 1), ("unlink", 1), ("mkdir", 1), ("rmdir", 1), ("truncate", 1)):
        guard(name, paths)


def random_batch(num_tasks: int, batch: int, obs_dim: int, action_dim: int, seed: int):
    """A seeded replay batch [K, B, ...]: normal observations and rewards, uniform actions in
    [-1, 1], about a fifth of the transitions terminal."""
    from mtrl.replay import Batch

    gen = torch.Generator().manual_seed(seed)
    return Batch(
        obs=torch.randn(num_tasks, batch, obs_dim, generator=gen),
        action=torch.rand(num_tasks, batch, action_dim, generator=gen) * 2 - 1,
        reward=torch.randn(num_tasks, batch, generator=gen),
        next_obs=torch.randn(num_tasks, batch, obs_dim, generator=gen),
        done=(torch.rand(num_tasks, batch, generator=gen) < 0.2).float(),
    )


def tiny_mt10(name: str, **changes: dict) -> dict:
    """A config dict of a few dozen MT10 steps (30-step episodes, 2 x 32 networks, LS, one
    evaluation episode per task, no checkpoints); ``changes`` update its sections (``env={...}``,
    ``train={...}``) or set top-level keys."""
    data = {
        "name": name, "seed": 0, "device": "cpu",
        "env": {"benchmark": "MT10", "max_episode_steps": 30},
        "agent": {"hidden_dim": 32, "num_layers": 2},
        "aggregator": {"name": "ls"},
        "train": {"total_steps": 90, "warmup_steps": 30, "batch_size": 80, "replay_capacity": 2000, "eval_every": 90,
                  "eval_episodes": 1, "log_every": 30, "progress": False},
        "checkpoint": {"every": 0},
    }
    for key, value in changes.items():
        data[key] = {**data[key], **value} if isinstance(data.get(key), dict) else value
    return data

