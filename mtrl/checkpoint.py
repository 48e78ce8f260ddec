"""Atomic checkpoints and their discovery (docs/design.md §6).

A checkpoint is one ``torch.save`` file ``checkpoints/step_<N>.pt`` holding only tensors and plain
Python containers, so it loads with ``weights_only=True``. ``torch.save`` streams it straight into a
temp file in the same directory (no serialised copy in memory: with a full replay buffer that copy
was as large as the buffer), which is flushed, fsynced, then ``os.replace``d over its final name,
and the directory entry is fsynced too: a SIGKILL or a full disk at any moment leaves either the old
set of checkpoints or the old set plus one complete new file, never a torn one under a final name.

Loading tries the newest checkpoint first; a truncated or corrupt file gives a warning naming it and
the loader falls back to the previous one.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Any, BinaryIO, Callable

import torch

__all__ = [
    "CheckpointError", "checkpoint_dir", "checkpoint_path", "checkpoint_steps", "list_checkpoints", "load_latest", "prune_checkpoints",
    "save_checkpoint",
]

FORMAT_VERSION = 1
_NAME = re.compile(r"^step_(\d+)\.pt$")


class CheckpointError(RuntimeError):
    """No valid checkpoint could be loaded, or one could not be written."""


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoint files of a run, oldest first (temp files are ignored)."""
    folder = checkpoint_dir(run_dir)
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        match = _NAME.match(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return [p for _, p in sorted(found)]


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


#: ``writer(path, save)`` writes the temp file ``path`` by calling ``save(handle)`` on a binary handle.
Writer = Callable[[Path, Callable[[BinaryIO], None]], None]


def _default_writer(path: Path, save: Callable[[BinaryIO], None]) -> None:
    with open(path, "wb") as handle:
        save(handle)
        handle.flush()
        os.fsync(handle.fileno())


def save_checkpoint(
    run_dir: Path,
    step: int,
    state: dict[str, Any],
    keep: int | None = 2,
    writer: Writer | None = None,
) -> Path:
    """Write ``state`` atomically as ``checkpoints/step_<step>.pt`` and keep the newest ``keep``.

    ``writer(path, save)`` writes the temp file: it opens ``path``, calls ``save(handle)`` (which
    streams ``torch.save`` into the handle), flushes and fsyncs (tests inject a failing one). On any
    error the temp file is removed, the existing checkpoints are untouched, and ``CheckpointError``
    is raised.
    """
    folder = checkpoint_dir(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    final = checkpoint_path(run_dir, step)
    tmp = folder / f".step_{int(step):09d}.pt.tmp"
    payload = {"format_version": FORMAT_VERSION, **state}
    try:
        (writer or _default_writer)(tmp, lambda handle: torch.save(payload, handle))
        os.replace(tmp, final)
        _fsync_dir(folder)
    except BaseException as err:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:  # e.g. a directory in the temp file's place: the write's error is the one to report
            pass
        if isinstance(err, (KeyboardInterrupt, SystemExit)):
            raise
        raise CheckpointError(f"could not write checkpoint {final}: {err}; the previous checkpoints are intact") from err
    if keep is not None:
        prune_checkpoints(run_dir, keep)
    return final


def checkpoint_steps(run_dir: Path) -> list[int]:
    """The steps of a run's checkpoint files, oldest first (a file exists only once completely
    written: ``save_checkpoint`` renames it into place)."""
    return [int(_NAME.match(path.name).group(1)) for path in list_checkpoints(run_dir)]


def checkpoint_path(run_dir: Path, step: int) -> Path:
    """Where ``save_checkpoint`` writes the checkpoint of ``step``."""
    return checkpoint_dir(run_dir) / f"step_{int(step):09d}.pt"


def prune_checkpoints(run_dir: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints of ``run_dir`` (``keep`` 0: none). A
    population calls it after every member has written its newest checkpoint (``keep=None`` to
    ``save_checkpoint``), so that a kill between two members' writes leaves a step that all have."""
    for old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        old.unlink(missing_ok=True)


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load one checkpoint with ``weights_only=True``; raise ``CheckpointError`` if it is unreadable."""
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # truncated zip, corrupt bytes, unpickling refusal
        raise CheckpointError(f"checkpoint {path} is unreadable ({type(err).__name__}: {err})") from err
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path} has an unknown format (expected format_version {FORMAT_VERSION})")
    return state


def load_latest(run_dir: Path, map_location: str | torch.device = "cpu") -> tuple[dict[str, Any], Path]:
    """Load the newest valid checkpoint of ``run_dir``, warning about and skipping broken ones."""
    candidates = list_checkpoints(run_dir)
    if not candidates:
        raise CheckpointError(f"no checkpoint found in {checkpoint_dir(run_dir)}")
    for path in reversed(candidates):
        try:
            return load_checkpoint(path, map_location), path
        except CheckpointError as err:
            warnings.warn(f"{err}; falling back to the previous checkpoint", stacklevel=2)
    raise CheckpointError(
        f"no valid checkpoint in {checkpoint_dir(run_dir)}: all {len(candidates)} file(s) are unreadable"
    )
