"""Progress bars fit 80 columns with their whole postfix, and stay quiet: redrawn only when
something changed, and in a log file a line per 10% or per change of state."""

import io
import re
from types import SimpleNamespace
from typing import cast

import pytest

from ae_model.hooks import ProgressBar
from ae_model.progress import MIN_BAR, Progress
from ae_model.train import Trainer
from api.cli import _comparison_progress

ARMS, SEEDS, ITERATIONS, POLL = ("baseline", "ae-stride16"), (0, 1, 2), 1200, 4


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _comparison_polls() -> list[tuple[int, str]]:
    """What `aetrain quickstart` shows each poll: one worker trains 6 jobs seed by seed."""
    order = [(arm, seed) for seed in SEEDS for arm in ARMS]
    lengths = {index: ITERATIONS for index in range(len(order))}
    polls = []
    for running in range(len(order)):
        for iteration in range(0, ITERATIONS, POLL):
            jobs = [
                {"id": i, "arm": arm, "seed": seed, "iteration": iteration if i == running else 0,
                 "state": "succeeded" if i < running else "running" if i == running else "queued"}
                for i, (arm, seed) in enumerate(order)
            ]  # fmt: skip
            polls.append(_comparison_progress(jobs, lengths))
    return polls


def test_a_log_file_gets_a_line_per_ten_percent_or_change_of_state_each_within_80_columns() -> None:
    log = io.StringIO()
    bar = Progress(len(ARMS) * len(SEEDS) * ITERATIONS, "train", file=log, ncols=80)
    polls = _comparison_polls()
    for done, state in polls:
        bar.update(done, state)
    bar.close()
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue()
    assert max(len(line) for line in lines) <= 80, lines
    state_changes = len({state for _, state in polls})
    assert len(lines) <= 100 // 10 + state_changes + 1, lines
    for arm in ARMS:  # every running job is named whole, seed included
        for seed in SEEDS:
            assert any(line.endswith(f"{arm} s{seed}") for line in lines), lines


def test_a_terminal_bar_fits_80_columns_and_is_redrawn_only_when_something_changed() -> None:
    screen = Terminal()
    bar = Progress(100, "train", file=screen, ncols=80)
    numbers = "loss=12.3 ae=0.75 lr=1e-03"  # as ProgressBar shows them
    bar.update(1, state="seed 0", numbers=numbers)  # a new state is drawn at once
    drawn = screen.getvalue()
    for _ in range(50):  # a poll with nothing new draws nothing
        bar.update(1, state="seed 0", numbers=numbers)
    assert screen.getvalue() == drawn
    bar.update(2, state="a long state " * 10, numbers=numbers)
    bar.close()
    frames = [f.strip() for f in re.split(r"[\r\n]", screen.getvalue()) if f.strip()]
    assert frames and all(len(f) <= 80 for f in frames), frames
    assert frames[-1].endswith(f"...; {numbers}"), frames  # the state is cut, not the numbers
    for frame in frames:  # the bar keeps its room; a postfix too long is cut
        assert len(re.search(r"\|(.*)\|", frame).group(1)) >= MIN_BAR, frame  # type: ignore[union-attr]


def test_the_training_bar_logs_its_numbers_in_80_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")  # the width shutil reports for a terminal-less run
    log = io.StringIO()
    hook = ProgressBar(file=log)
    trainer = SimpleNamespace(
        iteration=0, resolved=SimpleNamespace(max_batches=ITERATIONS), ae_modules=lambda: {"16": 0}
    )
    hook.before_train(cast(Trainer, trainer))
    for step in range(1, ITERATIONS + 1):
        trainer.iteration = step
        metrics = {"loss": 1234.5 / step, "lr": 1e-3, "ae_alpha": 0.75, "images_per_s": 123.4,
                   "data_wait": 0.05}  # fmt: skip
        hook.after_step(cast(Trainer, trainer), metrics)
    hook.after_train(cast(Trainer, trainer))
    lines = log.getvalue().splitlines()
    assert len(lines) <= 100 // 10 + 1, lines  # a line per 10%, not per step
    assert all(len(line) <= 80 for line in lines), lines
    # Numbers are shown whole, the last ones (data=) left out where they do not fit.
    assert lines[-1].endswith(", loss=1.03 ae=0.75 lr=1e-03 img/s=123"), lines
