"""Progress in a log (no terminal): timed lines for long work, nothing for short work."""

from __future__ import annotations

from trustlab.train import progress


def _run(monkeypatch, capsys, seconds_per_step: float, steps: int) -> list[str]:
    clock = iter(range(0, 10_000))
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock) * seconds_per_step)
    with progress.progress_bar("training MLP", steps) as bar:
        for epoch in range(steps):
            bar.advance(f"val_loss={epoch}")
    return capsys.readouterr().err.splitlines()


def test_long_work_logs_a_line_every_interval_and_the_end(monkeypatch, capsys):
    lines = _run(monkeypatch, capsys, seconds_per_step=progress.LOG_EVERY_S / 2, steps=5)
    assert lines == ["training MLP: 2/5 (10 s) val_loss=1", "training MLP: 4/5 (20 s) val_loss=3",
                     "training MLP: 5/5 (25 s) val_loss=4"]


def test_short_work_is_silent_in_a_log(monkeypatch, capsys):
    assert _run(monkeypatch, capsys, seconds_per_step=0.01, steps=5) == []
