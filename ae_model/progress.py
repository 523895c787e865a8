"""A progress bar that fits its terminal and stays quiet in log files (torch-free).

On a terminal it is a tqdm bar of at most the terminal's width (80 columns when unknown),
redrawn only when its numbers change. Anywhere else (output redirected to a file) a redraw would
append a line, so it writes a line every ``log_percent`` percent and whenever its state changes.
"""

import shutil
import sys
import time
from typing import Any, TextIO

from tqdm import tqdm

# tqdm's default line less the percentage (n/total says it) and the rate (the postfix says what
# matters), so the bar and the postfix share 80 columns.
BAR_FORMAT = "{desc} {n_fmt}/{total_fmt} |{bar}| {elapsed}<{remaining}{postfix}"
MIN_BAR = 8


class Progress:
    """Progress over ``total`` steps, with a short ``desc``.

    ``update(n, state, numbers)`` sets the position ``n``; ``state`` (which jobs run, a phase)
    and ``numbers`` (loss, learning rate) follow the counter, cut to what fits beside a bar of
    ``MIN_BAR`` columns. A change of ``state`` is logged; ``numbers`` change every step and are
    shown, never logged on their own.
    """

    def __init__(
        self,
        total: int,
        desc: str,
        initial: int = 0,
        file: TextIO | None = None,
        ncols: int | None = None,
        log_percent: float = 10.0,
        disable: bool = False,
    ) -> None:
        self.file = file or sys.stderr
        self.ncols = ncols or shutil.get_terminal_size((80, 24)).columns
        self.total, self.desc, self.log_percent = max(1, total), desc, log_percent
        self.n, self.state, self.numbers = initial, "", ""
        self.disable = disable
        self._initial, self._start = initial, time.monotonic()  # a resumed run's rate: its own
        self._logged: tuple[int, int] | None = None  # (n, log step) of the last line written
        self.bar: tqdm[Any] | None = None
        if self.file.isatty() and not disable:
            self.bar = tqdm(
                total=self.total, initial=initial, desc=desc, file=self.file, ncols=self.ncols,
                bar_format=BAR_FORMAT, mininterval=0.5,
            )  # fmt: skip

    def update(self, n: int, state: str = "", numbers: str = "") -> None:
        """Move to step ``n`` with ``state`` and ``numbers``; draws only what changed."""
        if (n, state, numbers) == (self.n, self.state, self.numbers) or self.disable:
            return
        state_changed = state != self.state
        self.n, self.state, self.numbers = n, state, numbers
        if self.bar is not None:
            self.bar.set_postfix_str(self._postfix(), refresh=False)
            self.bar.update(n - self.bar.n)  # redraws at most every mininterval
            if state_changed:
                self.bar.refresh()
            return
        step = int(100 * n / self.total // self.log_percent)
        if self._logged is None or state_changed or step > self._logged[1]:
            self._log(step)

    def _log(self, step: int) -> None:
        self._logged = (self.n, step)
        print(self.line(), file=self.file, flush=True)

    def _postfix(self) -> str:
        """``state; numbers`` as fits beside the bar: the state gives way first, then the
        numbers' last words (``key=value``, most important first)."""
        line = self._meter("", bar_format=BAR_FORMAT.replace("{bar}", ""))
        # tqdm puts ", " before the postfix; 3 more for the time left growing (59:59 < 1:00:00).
        room = max(0, self.ncols - len(line) - MIN_BAR - 5)
        numbers = self.numbers
        if len(numbers) > room:
            numbers = numbers[: room + 1].rpartition(" ")[0]
        state_room = room - len(numbers) - 2 if numbers else room
        state = self.state
        if len(state) > state_room:
            state = state[: state_room - 3] + "..." if state_room > 3 else ""
        return "; ".join(part for part in (state, numbers) if part)

    def _meter(self, postfix: str, bar_format: str = BAR_FORMAT) -> str:
        return tqdm.format_meter(
            self.n, self.total, time.monotonic() - self._start, ncols=self.ncols,
            prefix=self.desc, postfix=postfix or None, bar_format=bar_format, initial=self._initial,
        )  # fmt: skip

    def line(self) -> str:
        """The bar as one line of at most ``ncols`` characters."""
        return self._meter(self._postfix())

    def write(self, text: str) -> None:
        """A line of its own above the bar."""
        if self.bar is not None:
            self.bar.write(text, file=self.file)
        elif not self.disable:
            print(text, file=self.file, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif not self.disable and (self._logged is None or self._logged[0] != self.n):
            self._log(int(100 * self.n / self.total // self.log_percent))  # where it stopped
