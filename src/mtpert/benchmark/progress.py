"""How long a benchmark has left, from what its finished runs took.

Runs of different models differ a hundredfold in cost (a mean shift in a second, a GAN in
minutes), so a count of runs says nothing about time: the estimate for each remaining run is the
mean duration of the finished runs of the same model, this invocation's or earlier ones'.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence


class Eta:
    """Time left for the runs still to do, run ``jobs`` at a time.

    ``remaining``: the model of every run still to do; ``earlier``: durations (seconds) of runs
    finished before, by model (e.g. from the benchmark directory on resume).
    """

    def __init__(self, remaining: Iterable[str], jobs: int = 1, earlier: Mapping[str, Sequence[float]] | None = None) -> None:
        self.remaining = Counter(remaining)
        self.jobs = max(1, jobs)
        self.durations: dict[str, list[float]] = defaultdict(list, {m: list(s) for m, s in (earlier or {}).items()})

    def finished(self, model: str, seconds: float) -> None:
        """A run of ``model`` finished after ``seconds``."""
        self.durations[model].append(seconds)
        self._done(model)

    def failed(self, model: str) -> None:
        """A run of ``model`` failed: it no longer counts, and its time says nothing."""
        self._done(model)

    def unknown(self) -> list[str]:
        """Models with runs left but no finished run to time them by."""
        return sorted(m for m, n in self.remaining.items() if n and not self.durations.get(m))

    def seconds(self) -> float:
        """Wall-clock seconds left for the runs of models with a known duration."""
        work = sum(n * _mean(self.durations[m]) for m, n in self.remaining.items() if n and self.durations.get(m))
        return work / self.jobs

    def text(self) -> str:
        """``'0:12:30'``; ``'>= 0:12:30 (no mtae run timed yet)'`` while some model is untimed."""
        left = str(dt.timedelta(seconds=round(self.seconds())))
        unknown = self.unknown()
        if not unknown:
            return left
        names = ", ".join(unknown[:3]) + (f" and {len(unknown) - 3} more" if len(unknown) > 3 else "")
        return f">= {left} (no {names} run timed yet)"

    def _done(self, model: str) -> None:
        if self.remaining[model] > 0:
            self.remaining[model] -= 1


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)
