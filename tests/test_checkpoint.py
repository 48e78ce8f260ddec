"""Atomic checkpoint files: fall back past broken ones, never leave a torn file behind."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mtrl import checkpoint
from mtrl.checkpoint import CheckpointError, list_checkpoints, load_latest, save_checkpoint


def _state(step: int) -> dict:
    return {"step": step, "weights": torch.full((4,), float(step)), "nested": {"ids": [1, 2, 3], "name": "x"}}


def test_round_trip_loads_with_weights_only(tmp_path):
    save_checkpoint(tmp_path, 10, _state(10))
    state, path = load_latest(tmp_path)
    assert path.name == "step_000000010.pt"
    assert state["step"] == 10 and torch.equal(state["weights"], torch.full((4,), 10.0))
    assert state["nested"] == {"ids": [1, 2, 3], "name": "x"}


def test_keeps_only_the_newest_n(tmp_path):
    for step in (1, 2, 3, 4):
        save_checkpoint(tmp_path, step, _state(step), keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_000000003.pt", "step_000000004.pt"]


def test_truncated_newest_checkpoint_warns_and_falls_back(tmp_path):
    save_checkpoint(tmp_path, 1, _state(1))
    newest = save_checkpoint(tmp_path, 2, _state(2))
    size = newest.stat().st_size
    with open(newest, "r+b") as handle:
        handle.truncate(size // 2)
    with pytest.warns(UserWarning, match="step_000000002.pt"):
        state, path = load_latest(tmp_path)
    assert state["step"] == 1 and path.name == "step_000000001.pt"


def test_corrupt_bytes_warn_and_fall_back(tmp_path):
    save_checkpoint(tmp_path, 1, _state(1))
    newest = save_checkpoint(tmp_path, 2, _state(2))
    data = bytearray(newest.read_bytes())
    for i in range(0, len(data), 97):
        data[i] ^= 0xFF
    newest.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="unreadable"):
        state, _ = load_latest(tmp_path)
    assert state["step"] == 1


def test_no_valid_checkpoint_is_an_error_that_says_so(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint found"):
        load_latest(tmp_path)
    path = save_checkpoint(tmp_path, 1, _state(1))
    path.write_bytes(b"not a checkpoint")
    with pytest.warns(UserWarning), pytest.raises(CheckpointError, match="no valid checkpoint"):
        load_latest(tmp_path)


def test_failing_writer_leaves_previous_checkpoint_intact_and_no_temp_file(tmp_path):
    save_checkpoint(tmp_path, 1, _state(1))

    def full_disk(path, save):
        with open(path, "wb") as handle:
            save(handle)
            handle.truncate(handle.tell() // 3)
        raise OSError(28, "No space left on device")

    with pytest.raises(CheckpointError, match="No space left on device"):
        save_checkpoint(tmp_path, 2, _state(2), writer=full_disk)
    names = sorted(os.listdir(tmp_path / "checkpoints"))
    assert names == ["step_000000001.pt"]
    state, _ = load_latest(tmp_path)
    assert state["step"] == 1


FAULTS = {  # fault -> what the error says
    "read_only_directory": "Permission denied",
    "read_only_file_system_at_the_rename": "Read-only file system",
    "directory_in_the_temp_files_place": "Is a directory",
    "directory_in_the_checkpoints_place": "Is a directory",
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_a_write_the_file_system_refuses_is_a_clear_error_and_keeps_the_previous_checkpoint(fault, tmp_path, monkeypatch):
    """Faults that also reach root, as CI runs (root ignores directory permissions): the kernel's
    refusals root would not get are emulated (EACCES opening the temp file in a read-only
    directory; EROFS renaming the complete temp file), the directories in the way are real."""
    save_checkpoint(tmp_path, 1, _state(1))
    folder = tmp_path / "checkpoints"
    first = (folder / "step_000000001.pt").read_bytes()
    temp, final = folder / ".step_000000002.pt.tmp", folder / "step_000000002.pt"
    if fault == "read_only_directory":
        def refuse_open(path, *args, **kwargs):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))

        monkeypatch.setattr(checkpoint, "open", refuse_open, raising=False)  # the default writer's open
    elif fault == "read_only_file_system_at_the_rename":
        def refuse_rename(src, dst):
            assert Path(src) == temp and torch.load(src, weights_only=True)["step"] == 2  # written in full
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(dst))

        monkeypatch.setattr(os, "replace", refuse_rename)
    elif fault == "directory_in_the_temp_files_place":
        temp.mkdir()
    else:
        (final / "left").mkdir(parents=True)
    with pytest.raises(CheckpointError, match=f"{FAULTS[fault]}.*; the previous checkpoints are intact"):
        save_checkpoint(tmp_path, 2, _state(2))
    monkeypatch.undo()
    assert (folder / "step_000000001.pt").read_bytes() == first
    assert not any(p.is_file() and p.name.endswith(".tmp") for p in folder.iterdir())  # the temp file is gone
    if fault == "directory_in_the_checkpoints_place":
        with pytest.warns(UserWarning, match="step_000000002.pt"):
            assert load_latest(tmp_path)[0]["step"] == 1
    else:
        assert load_latest(tmp_path)[0]["step"] == 1


class Custom:
    """A class a weights-only load must refuse to rebuild."""


def test_objects_that_need_unsafe_unpickling_are_refused(tmp_path):
    save_checkpoint(tmp_path, 1, _state(1))
    newest = tmp_path / "checkpoints" / "step_000000002.pt"
    torch.save({"format_version": 1, "step": 2, "obj": Custom()}, newest)
    with pytest.warns(UserWarning, match="step_000000002.pt"):
        state, _ = load_latest(tmp_path)
    assert state["step"] == 1


def test_saving_streams_to_the_file_without_a_copy_in_memory(tmp_path):
    """Peak memory while saving 256 MiB of tensors grows by far less than their size (issue 14:
    serialising into a BytesIO first added one to two copies of a full replay buffer)."""
    script = f"""
import resource, torch
from mtrl.checkpoint import save_checkpoint
state = {{"replay": {{"obs": torch.ones(64, 1024, 1024)}}}}  # 256 MiB, pages touched
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
save_checkpoint({str(tmp_path)!r}, 1, state)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
"""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.strip()) < 64, f"peak RSS grew by {out.stdout.strip()} MiB while saving 256 MiB"
    assert (tmp_path / "checkpoints" / "step_000000001.pt").stat().st_size > 256 * 2**20
