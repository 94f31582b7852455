"""Progress bar (tqdm, only on a terminal) and periodic log lines with ETA (always)."""

from __future__ import annotations

import sys
import time

from tqdm.auto import tqdm


def format_seconds(seconds: float | None) -> str:
    if seconds is None or seconds != seconds:
        return "?"
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class Progress:
    """Tracks steps `initial..total`; the ETA rate excludes the session's first step (compilation)."""

    def __init__(self, total: int, initial: int = 0, *, enabled: bool = True, desc: str = "train"):
        self.total = total
        self._t_first: float | None = None  # wall time when the first step of this session finished
        self._n_first = initial
        self._bar = tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True, leave=False,
                         disable=not (enabled and sys.stderr.isatty()))

    def update(self, step: int) -> None:
        """Call after global step `step` completed."""
        if self._t_first is None:
            self._t_first, self._n_first = time.perf_counter(), step
        self._bar.update(step - self._bar.n)

    def eta_seconds(self, step: int) -> float | None:
        if self._t_first is None or step <= self._n_first:
            return None
        rate = (time.perf_counter() - self._t_first) / (step - self._n_first)
        return rate * max(self.total - step, 0)

    def set_postfix(self, **values: object) -> None:
        self._bar.set_postfix(values, refresh=False)

    def log(self, message: str) -> None:
        """A log line that does not break the bar (printed even when the bar is disabled)."""
        self._bar.write(message, file=sys.stdout)
        sys.stdout.flush()

    def close(self) -> None:
        self._bar.close()
