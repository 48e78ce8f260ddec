"""The training progress bar (tqdm): steps/s, ETA and the last mean success on a terminal, nothing otherwise."""

from __future__ import annotations

import io

from mtrl.metrics import ProgressLine


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_shows_rate_eta_and_last_success_on_a_terminal():
    stream = _Terminal()
    bar = ProgressLine(1000, start=100, every_s=0.0, file=stream)
    bar.update(300)
    assert "success n/a" in stream.getvalue()
    bar.last_success = 0.25
    bar.update(600, force=True)
    bar.close()
    last = stream.getvalue().strip().split("\r")[-1]
    assert "600/1000" in last and "steps/s" in last and "success 0.25" in last
    assert "<" in last  # elapsed<remaining: the ETA


def test_progress_bar_is_silent_when_stderr_is_not_a_terminal():
    stream = io.StringIO()
    bar = ProgressLine(10, file=stream)
    bar.update(5, force=True)
    bar.close()
    assert stream.getvalue() == "" and not bar.enabled
