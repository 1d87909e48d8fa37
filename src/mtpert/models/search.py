"""Hyperparameter search spaces: what a model lets a tuner vary, and in which range.

Each model declares its own space (:meth:`mtpert.models.base.PerturbationModel.search_space`);
a user overrides or extends it with plain data, as a benchmark config or ``mtpert tune`` reads it::

    {"lr": {"low": 1e-4, "high": 1e-2, "log": True},    # a float range
     "latent_dim": {"choices": [16, 32, 64]},           # a choice
     "max_epochs": {"low": 20, "high": 200, "step": 20}, # integers (both ends written as integers)
     "dropout": 0.1}                                     # a fixed value: not tuned

Nothing here imports Optuna; :mod:`mtpert.benchmark.tuning` turns a space into its suggestions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mtpert.errors import ConfigError


@dataclass(frozen=True)
class FloatRange:
    """A float between ``low`` and ``high``, sampled on a log scale when ``log``."""

    low: float
    high: float
    log: bool = False

    def __post_init__(self) -> None:
        _check_range(self.low, self.high, self.log)


@dataclass(frozen=True)
class IntRange:
    """An integer between ``low`` and ``high`` (both included), in steps of ``step``, or on a log
    scale when ``log``."""

    low: int
    high: int
    log: bool = False
    step: int = 1

    def __post_init__(self) -> None:
        _check_range(self.low, self.high, self.log)
        if self.step < 1 or (self.log and self.step != 1):
            raise ConfigError(f"step must be a positive integer (and 1 on a log scale), got {self.step}.")


@dataclass(frozen=True)
class Choice:
    """One of ``values`` (numbers, text, booleans or lists such as layer widths)."""

    values: tuple[Any, ...]

    def __post_init__(self) -> None:
        if not self.values:
            raise ConfigError("A choice needs at least one value.")


Distribution = FloatRange | IntRange | Choice
Space = Mapping[str, Distribution]


def read_space(values: Mapping[str, Any], *, where: str = "space") -> tuple[dict[str, Distribution], dict[str, Any]]:
    """A user's space, as plain data (see the module docstring): the distributions to tune, and
    the fixed values (anything not a mapping) that override a model's declared ranges.

    Raises:
        ConfigError: a mapping that is neither a range (``low`` and ``high``) nor a choice
            (``choices``), or that has keys of neither.
    """
    tuned: dict[str, Distribution] = {}
    fixed: dict[str, Any] = {}
    for name, value in values.items():
        if not isinstance(value, Mapping):
            fixed[name] = value
            continue
        keys = set(value)
        if keys == {"choices"}:
            choices = value["choices"]
            if not isinstance(choices, Sequence) or isinstance(choices, str):
                raise ConfigError(f"{where}.{name}.choices must be a list, got {choices!r}.")
            tuned[name] = Choice(tuple(_hashable(c) for c in choices))
            continue
        if not {"low", "high"} <= keys <= {"low", "high", "log", "step"}:
            raise ConfigError(
                f"{where}.{name} must be a range {{low, high[, log][, step]}}, a list of {{choices}}, "
                f"or a fixed value; got the keys {sorted(keys)}."
            )
        try:
            low, high = _number(value["low"]), _number(value["high"])
            log = bool(value.get("log", False))
            if "step" in value or (isinstance(low, int) and isinstance(high, int)):
                tuned[name] = IntRange(int(low), int(high), log, int(value.get("step", 1)))
            else:
                tuned[name] = FloatRange(float(low), float(high), log)
        except (TypeError, ValueError) as error:
            raise ConfigError(f"{where}.{name}: low, high and step must be numbers ({error}).") from None
        except ConfigError as error:
            raise ConfigError(f"{where}.{name}: {error}") from None
    return tuned, fixed


def _check_range(low: float, high: float, log: bool) -> None:
    if not low < high:
        raise ConfigError(f"A range needs low < high, got low={low}, high={high}.")
    if log and low <= 0:
        raise ConfigError(f"A log-scale range needs low > 0, got {low}.")


def _number(value: Any) -> int | float:
    """A number, from a number or its text (YAML reads ``1e-4`` as text)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise TypeError(f"{value!r} is not a number")
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            return float(value)
    return value


def _hashable(value: Any) -> Any:
    """Lists (layer widths) as tuples, so that a choice's values compare and hash."""
    return tuple(_hashable(v) for v in value) if isinstance(value, list | tuple) else value
